//! The LoRA path of a linear layer, forward and backward: `kernels/lora.cu` plus cuBLASLt for the
//! frozen base weight.
//!
//! Forward, x [M, K], W [N, K] (frozen), A [r, K], B [N, r], s = alpha / r:
//! 1. u = x A^T [M, r] in f32 (`lora_gemm_bb_f32`, split over K when M x r gives too few tiles to
//!    fill the GPU; the splits are summed in order by `lora_splitk_reduce`, so the bits are
//!    deterministic). u is written to the caller's buffer: the backward takes it back.
//! 2. base = x W^T [M, N] through cuBLASLt into an f32 scratch (`matmul`, f32 out);
//! 3. y = bf16(base + s u B^T): the epilogue kernel (`lora_gemm_fb_bf16`) stages u's rows and B's
//!    rows in shared memory and rounds once.
//!
//! Backward given dy [M, N] (bf16):
//! 1. v = dy B [M, r] in f32 (`lora_gemm_bb_f32`, a scratch);
//! 2. base = dy W [M, K] through cuBLASLt (`matmul_nn`, f32 out, a scratch);
//! 3. dx = bf16(base + s v A) (the same epilogue kernel, with A read column-wise);
//! 4. dB = s dy^T u [N, r] (`lora_gemm_bf_f32`, split over M);
//! 5. dA = s v^T x [r, K] (`lora_gemm_fb_f32`, split over M).
//!
//! The f32 scratch of the base GEMM (M x N or M x K floats) keeps y and dx to one bf16 rounding:
//! a bf16 base plus the LoRA term would round twice, which is not within the bf16 rule where the
//! two terms cancel. Scratch buffers are stream-ordered allocations freed after the call's work
//! is queued. Why the low-rank GEMMs are not cuBLASLt's: they mix bf16 operands (x, dy, A, B) with
//! f32 ones (u, v) that must stay f32 (dA and dB are f32 gradients judged at f32 precision), which
//! cuBLASLt only takes after casting copies; and r <= 128 is too thin for tensor cores to matter.
//!
//! References: [`crate::backend::cpu::lora_fwd`], [`crate::backend::cpu::lora_bwd`].

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{cuda_err, CudaDevice};
use crate::error::{Error, Result};

/// The largest LoRA rank the API accepts.
pub const LORA_MAX_RANK: usize = 128;
const TILE: usize = 64;
/// Each split of a split-K GEMM sums at least this many k (a multiple of the kernel's 16-step).
const MIN_SPLIT_K: usize = 256;

/// An operand of the strided GEMM: element (row or k, col) at `row * s0 + col * s1`.
struct Strides(u64, u64);

impl CudaDevice {
    /// The forward of a LoRA linear layer: y[M, N] = bf16(x W^T + s (x' A^T) B^T), and u = x' A^T
    /// [M, r] (f32), which [`Self::lora_bwd`] takes back, where x' = x, or under LoRA dropout
    /// `x_drop` = x * mask (from [`Self::dropout`]; the base product still takes x). x [M, K], w
    /// [N, K], a [r, K], b [N, r] bf16; 1 <= r <= 128; `scale` is s = alpha / r. f32 accumulation
    /// throughout, one rounding of y. M = 0 is a no-op. Asynchronous on the device's stream.
    /// References: [`crate::backend::cpu::lora_fwd`], [`crate::backend::cpu::lora::lora_fwd_masked`].
    #[allow(clippy::too_many_arguments)]
    pub fn lora_fwd(
        &self,
        x: &CudaView<'_, u16>,
        x_drop: Option<&CudaView<'_, u16>>,
        w: &CudaView<'_, u16>,
        a: &CudaView<'_, u16>,
        b: &CudaView<'_, u16>,
        scale: f32,
        y: &mut CudaViewMut<'_, u16>,
        u: &mut CudaViewMut<'_, f32>,
        m: usize,
        k: usize,
        n: usize,
        r: usize,
    ) -> Result<()> {
        let op = "lora_fwd";
        let x_lora = x_drop.unwrap_or(x);
        let shapes = || format!("x [{m}, {k}], w [{n}, {k}], a [{r}, {k}], b [{n}, {r}] -> y [{m}, {n}], u [{m}, {r}]");
        check_dims(op, &shapes, m, k, n, r)?;
        let want = [("x", x.len(), m * k), ("x_lora", x_lora.len(), m * k), ("w", w.len(), n * k), ("a", a.len(), r * k), ("b", b.len(), n * r), ("y", y.len(), m * n), ("u", u.len(), m * r)];
        check_lens(op, &shapes, &want)?;
        if m == 0 {
            return Ok(());
        }
        // 1. u = x A^T (the LoRA path's x): A_mat = x (i = row of x, k), B_mat[k, j] = a[j * K + k].
        self.lora_gemm_f32(op, &shapes, "lora_gemm_bb_f32", x_lora, Strides(k as u64, 1), a, Strides(1, k as u64), u, m, r, k, 1.0, false)?;
        // 2. base = x W^T (f32).
        // SAFETY: `matmul` writes all M x N elements before the epilogue reads them (same stream).
        let mut base = unsafe { self.scratch::<f32>("lora_fwd.base", m * n) }?;
        self.matmul(x, w, None, &mut base.view_mut(), m, n, k, false)?;
        // 3. y = bf16(base + s u B^T): B_mat[k, j] = b[j * r + k].
        self.lora_epilogue(op, &shapes, &u.as_view(), Strides(r as u64, 1), b, Strides(1, r as u64), y, &base.view(), m, n, r, scale)
    }

    /// The backward of [`Self::lora_fwd`] given dy [M, N] (bf16) and the forward's u [M, r]:
    /// dx [M, K] = bf16(dy W + s (dy B) A) (bf16, overwritten), dA [r, K] = s (dy B)^T x and
    /// dB [N, r] = s dy^T u (f32; overwritten, or added to when `accumulate`, for gradient
    /// accumulation over micro-batches). W is frozen: no dW. M = 0 leaves dA and dB as they are
    /// when accumulating, and zeroes them otherwise.
    ///
    /// Under LoRA `dropout`, x is the forward's x_drop (x * mask) and dx's LoRA term is masked:
    /// dx = bf16(dy W + mask * (s (dy B) A)), the mask regenerated from the same [`super::Dropout`].
    /// References: [`crate::backend::cpu::lora_bwd`], [`crate::backend::cpu::lora::lora_bwd_masked`].
    #[allow(clippy::too_many_arguments)]
    pub fn lora_bwd(
        &self,
        x: &CudaView<'_, u16>,
        w: &CudaView<'_, u16>,
        a: &CudaView<'_, u16>,
        b: &CudaView<'_, u16>,
        scale: f32,
        u: &CudaView<'_, f32>,
        dy: &CudaView<'_, u16>,
        dx: &mut CudaViewMut<'_, u16>,
        da: &mut CudaViewMut<'_, f32>,
        db: &mut CudaViewMut<'_, f32>,
        m: usize,
        k: usize,
        n: usize,
        r: usize,
        accumulate: bool,
        dropout: Option<super::Dropout>,
    ) -> Result<()> {
        let op = "lora_bwd";
        let shapes = || {
            format!("x [{m}, {k}], w [{n}, {k}], a [{r}, {k}], b [{n}, {r}], u [{m}, {r}], dy [{m}, {n}] -> dx [{m}, {k}], da [{r}, {k}], db [{n}, {r}]")
        };
        check_dims(op, &shapes, m, k, n, r)?;
        let want = [
            ("x", x.len(), m * k),
            ("w", w.len(), n * k),
            ("a", a.len(), r * k),
            ("b", b.len(), n * r),
            ("u", u.len(), m * r),
            ("dy", dy.len(), m * n),
            ("dx", dx.len(), m * k),
            ("da", da.len(), r * k),
            ("db", db.len(), n * r),
        ];
        check_lens(op, &shapes, &want)?;
        if m == 0 {
            if !accumulate {
                self.stream().memset_zeros(da).map_err(|e| cuda_err(op, shapes(), e))?;
                self.stream().memset_zeros(db).map_err(|e| cuda_err(op, shapes(), e))?;
            }
            return Ok(());
        }
        let (k64, n64, r64) = (k as u64, n as u64, r as u64);
        // 1. v = dy B [M, r]: A_mat = dy (row i, k = n), B_mat[k = n, j] = b[n * r + j].
        // SAFETY: the GEMM writes all M x r elements before anything reads them (same stream).
        let mut v = unsafe { self.scratch::<f32>("lora_bwd.v", m * r) }?;
        self.lora_gemm_f32(op, &shapes, "lora_gemm_bb_f32", dy, Strides(n64, 1), b, Strides(r64, 1), &mut v.view_mut(), m, r, n, 1.0, false)?;
        // 2. base = dy W [M, K] (f32).
        // SAFETY: `matmul_nn` writes all M x K elements before the epilogue reads them.
        let mut base = unsafe { self.scratch::<f32>("lora_bwd.base", m * k) }?;
        self.matmul_nn(dy, w, &mut base.view_mut(), m, k, n, false)?;
        // 3. dx = bf16(base + s v A): B_mat[k = rank, j = col] = a[rank * K + col]. Under
        // dropout the LoRA term is masked: t = s v A (f32), then dx = bf16(base + mask * t).
        match dropout {
            None => self.lora_epilogue(op, &shapes, &v.view(), Strides(r64, 1), a, Strides(k64, 1), dx, &base.view(), m, k, r, scale)?,
            Some(d) => {
                // SAFETY: the GEMM writes all M x K elements of t before dropout_add reads them.
                let mut t = unsafe { self.scratch::<f32>("lora_bwd.t", m * k) }?;
                self.lora_gemm_f32(op, &shapes, "lora_gemm_fb_f32", &v.view(), Strides(r64, 1), a, Strides(k64, 1), &mut t.view_mut(), m, k, r, scale, false)?;
                self.dropout_add(&base.view(), &t.view(), dx, d)?;
            }
        }
        // 4. dB [N, r] = s dy^T u: A_mat[i = n, k = m] = dy[m * N + n], B_mat[k = m, j] = u[m * r + j].
        self.lora_gemm_f32(op, &shapes, "lora_gemm_bf_f32", dy, Strides(1, n64), u, Strides(r64, 1), db, n, r, m, scale, accumulate)?;
        // 5. dA [r, K] = s v^T x: A_mat[i = rank, k = m] = v[m * r + rank], B_mat[k = m, j] = x[m * K + j].
        self.lora_gemm_f32(op, &shapes, "lora_gemm_fb_f32", &v.view(), Strides(1, r64), x, Strides(k64, 1), da, r, k, m, scale, accumulate)
    }

    /// C[I, J] = alpha * sum_k A[i, k] B[k, j] (+ C when `accumulate`) with `lora.cu`'s strided
    /// GEMM `func`; `sa` = (stride over i, over k), `sb` = (stride over k, over j). Splits K when
    /// the I x J tiles are too few to fill the SMs, summing the splits in order.
    #[allow(clippy::too_many_arguments)]
    fn lora_gemm_f32<TA: cudarc::driver::DeviceRepr, TB: cudarc::driver::DeviceRepr>(
        &self,
        op: &'static str,
        shapes: &dyn Fn() -> String,
        func: &'static str,
        a: &CudaView<'_, TA>,
        sa: Strides,
        b: &CudaView<'_, TB>,
        sb: Strides,
        c: &mut CudaViewMut<'_, f32>,
        i: usize,
        j: usize,
        kd: usize,
        alpha: f32,
        accumulate: bool,
    ) -> Result<()> {
        let tiles = i.div_ceil(TILE) * j.div_ceil(TILE);
        let want = (2 * self.num_sms() as usize).div_ceil(tiles.max(1));
        let splits = want.clamp(1, kd.div_ceil(MIN_SPLIT_K).max(1)).min(65_535);
        let kchunk = kd.div_ceil(splits).div_ceil(16) * 16;
        let splits = kd.div_ceil(kchunk).max(1);
        let f = self.function("lora", func)?;
        let cfg = LaunchConfig { grid_dim: (j.div_ceil(TILE) as u32, i.div_ceil(TILE) as u32, splits as u32), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (i32_, j32, k32, kc32, acc) = (i as u32, j as u32, kd as u32, kchunk as u32, accumulate as u32);
        let what = || format!("{op}: {}", shapes());
        if splits == 1 {
            let mut launch = self.stream().launch_builder(&f);
            launch.arg(a).arg(&sa.0).arg(&sa.1).arg(b).arg(&sb.0).arg(&sb.1).arg(c).arg(&i32_).arg(&j32).arg(&k32).arg(&kc32).arg(&alpha).arg(&acc);
            // SAFETY: the kernel reads A at i * sa.0 + k * sa.1 for i < I, k < Kd and B at
            // k * sb.0 + j * sb.1 for k < Kd, j < J (the callers pass the strides of row-major
            // operands whose lengths they checked), and writes C[0, I * J) (c's length, checked by
            // the callers). c is a distinct &mut view.
            self.launched(func, what(), unsafe { launch.launch(cfg) })?;
            return Ok(());
        }
        let n = i * j;
        // SAFETY: every split writes its whole I x J partial before the reduce reads it.
        let mut partial = unsafe { self.scratch::<f32>("lora_gemm.partial", splits * n) }?;
        {
            let mut launch = self.stream().launch_builder(&f);
            launch.arg(a).arg(&sa.0).arg(&sa.1).arg(b).arg(&sb.0).arg(&sb.1).arg(&mut *partial).arg(&i32_).arg(&j32).arg(&k32).arg(&kc32).arg(&alpha).arg(&acc);
            // SAFETY: as above; with gridDim.z = splits > 1 split z writes partial[z * I * J, (z + 1) * I * J),
            // within its splits * I * J elements. splits * kchunk >= Kd, so every k is summed once.
            self.launched(func, what(), unsafe { launch.launch(cfg) })?;
        }
        let rf = self.function("lora", "lora_splitk_reduce")?;
        let (s32, n64) = (splits as u32, n as u64);
        let mut launch = self.stream().launch_builder(&rf);
        launch.arg(&*partial).arg(&s32).arg(&n64).arg(c).arg(&alpha).arg(&acc);
        // SAFETY: reads partial[0, splits * n) and reads/writes c[0, n) (its length, checked by the
        // callers); c does not overlap the fresh scratch.
        self.launched("lora_splitk_reduce", format!("{op}: {}", shapes()), unsafe { launch.launch(self.grid_stride_config(n, 256)) })?;
        Ok(())
    }

    /// y[I, J] = bf16(base + alpha * uu[I, r] B_mat[r, J]) with `lora_gemm_fb_bf16`.
    #[allow(clippy::too_many_arguments)]
    fn lora_epilogue(
        &self,
        op: &'static str,
        shapes: &dyn Fn() -> String,
        uu: &CudaView<'_, f32>,
        sa: Strides,
        bm: &CudaView<'_, u16>,
        sb: Strides,
        y: &mut CudaViewMut<'_, u16>,
        base: &CudaView<'_, f32>,
        i: usize,
        j: usize,
        r: usize,
        alpha: f32,
    ) -> Result<()> {
        let func = "lora_gemm_fb_bf16";
        let f = self.function("lora", func)?;
        let cfg = LaunchConfig { grid_dim: (j.div_ceil(TILE) as u32, i.div_ceil(TILE) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (i32_, j32, r32) = (i as u32, j as u32, r as u32);
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(uu).arg(&sa.0).arg(&sa.1).arg(bm).arg(&sb.0).arg(&sb.1).arg(y).arg(base).arg(&i32_).arg(&j32).arg(&r32).arg(&alpha);
        // SAFETY: reads uu at i * sa.0 + k * sa.1 (i < I, k < r), bm at k * sb.0 + j * sb.1
        // (k < r, j < J) and base[0, I * J); writes y[0, I * J). The callers checked every length;
        // y is a distinct &mut view and base a fresh scratch.
        self.launched(func, format!("{op}: {}", shapes()), unsafe { launch.launch(cfg) })?;
        Ok(())
    }
}

fn check_dims(op: &'static str, shapes: &dyn Fn() -> String, m: usize, k: usize, n: usize, r: usize) -> Result<()> {
    if r == 0 || r > LORA_MAX_RANK {
        return Err(Error::shape(op, format!("{}: the rank r={r} must be in 1..={LORA_MAX_RANK}", shapes())));
    }
    if k == 0 || n == 0 {
        return Err(Error::shape(op, format!("{}: K and N must be positive", shapes())));
    }
    // Tile indices and the kernels' u32 extents; cuBLASLt's i32 dimensions.
    if [m, k, n].iter().any(|&d| d > i32::MAX as usize) {
        return Err(Error::shape(op, format!("{}: a dimension exceeds 2^31-1", shapes())));
    }
    if m.checked_mul(n.max(k)).is_none_or(|e| e > isize::MAX as usize / 8) || n.checked_mul(k).is_none() {
        return Err(Error::shape(op, format!("{}: element count overflows", shapes())));
    }
    if m.div_ceil(TILE).max(n.div_ceil(TILE)).max(k.div_ceil(TILE)) > 65_535 {
        return Err(Error::shape(op, format!("{}: more than 65535 row tiles of 64 (grid y)", shapes())));
    }
    Ok(())
}

fn check_lens(op: &'static str, shapes: &dyn Fn() -> String, want: &[(&str, usize, usize)]) -> Result<()> {
    for &(name, got, need) in want {
        if got != need {
            return Err(Error::shape(op, format!("{}: but {name} has {got} elements, not {need}", shapes())));
        }
    }
    Ok(())
}
