//! Tensor-core FlashAttention-2 forward and backward over a packed variable-length batch, for
//! training and prefill: `kernels/attention_train.cu`.
//!
//! Layout (flash-attention's varlen convention): the B sequences of a batch are packed row after
//! row, `cu_seqlens: u32[B + 1]` giving sequence b the rows `cu_seqlens[b]..cu_seqlens[b + 1]`;
//! q, out, dout, dq are `[Ttot, H, D]`, k, v, dk, dv `[Ttot, Hkv, D]` (bf16 bits), and the row
//! log-sum-exp `lse` is f32 `[H, Ttot]` (natural log of the sum of exp of the *scaled* scores),
//! written by the forward and read by the backward. Query head h reads kv head h / (H / Hkv);
//! head dims 64 and 128. Masks are per sequence, on sequence-local positions ([`AttnTrainMask`]).
//!
//! Precision: bf16 tensor-core products with f32 accumulation; the softmax probabilities P (and
//! in the backward dS) are rounded to bf16 before they enter a product, as in flash-attention;
//! everything else is f32 (see the kernel file). dq is accumulated in f32 with atomics (so its
//! last bits are not deterministic) and rounded to bf16 once; dk, dv are sums over the query
//! heads of their kv group, rounded once.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::CudaDevice;
use crate::error::{Error, Result};

/// Threads per block of the forward and backward kernels (`AT_THREADS`).
const BLOCK: u32 = 128;
/// Query rows per forward block and keys per backward block (`AT_BM`, `AT_BN`).
const TILE: usize = 64;
/// Query rows per backward step (`AT_BQ64`, `AT_BQ128`).
const BQ: usize = 32;

/// The mask of every sequence of a packed batch, on sequence-local positions (i = query row,
/// j = key row, both counted from the sequence's first row). Every mask lets a row see itself.
#[derive(Clone, Copy)]
pub enum AttnTrainMask<'a> {
    /// Every key of the sequence (the vision tower).
    Bidirectional,
    /// Key j is visible from query i when j <= i, and i - j < W for a sliding window of W >= 1
    /// keys (Mistral), as [`crate::backend::cpu::AttnMask::Causal`].
    Causal { window: Option<usize> },
    /// DPO pairs packed as [prefix | chosen | rejected]: `pairs` is u32[B, 2], (prefix, chosen)
    /// lengths per sequence ((0, 0) = plain causal); semantics of
    /// [`crate::backend::cpu::AttnMask::SharedPrefix`]. The lengths live on the device, so they are
    /// not checked against the sequence lengths: the mask is evaluated as written for any values.
    SharedPrefix { pairs: &'a CudaView<'a, u32> },
}

/// The batch description shared by [`CudaDevice::attention_fwd`] and
/// [`CudaDevice::attention_bwd`].
#[derive(Clone, Copy)]
pub struct VarlenAttn<'a> {
    /// u32[B + 1], nondecreasing row offsets, `cu_seqlens[B] == Ttot` (rows that no sequence
    /// covers are left unwritten). Values are clamped to Ttot on the device, so bad offsets never
    /// access memory outside the buffers.
    pub cu_seqlens: &'a CudaView<'a, u32>,
    /// The longest sequence (sizes the grid; any value >= 1 is correct, a smaller one only
    /// makes blocks loop over more tiles).
    pub max_seqlen: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// 64 or 128.
    pub head_dim: usize,
    /// Score scale, usually 1/sqrt(head_dim).
    pub scale: f32,
    pub mask: AttnTrainMask<'a>,
}

/// Whether the training kernels support head dim `d` (64 and 128).
pub(crate) fn attention_train_head_dim_supported(d: usize) -> bool {
    d == 64 || d == 128
}

/// Checked sizes of one call: (Ttot, B, the mask's (causal, window, has_sp)).
pub(super) struct Dims {
    pub(super) t: usize,
    pub(super) b: usize,
    pub(super) causal: u32,
    pub(super) window: u32,
    pub(super) has_sp: u32,
}

impl VarlenAttn<'_> {
    /// The arguments of a forward call, for error messages.
    pub(super) fn fwd_shapes(&self, q: usize, k: usize, v: usize, out: usize, lse: usize) -> String {
        format!(
            "q [{q}], k [{k}], v [{v}], out [{out}], lse [{lse}], cu_seqlens [{}] with H={} Hkv={} D={} max_seqlen={}",
            self.cu_seqlens.len(),
            self.n_heads,
            self.n_kv_heads,
            self.head_dim,
            self.max_seqlen
        )
    }

    /// The checks of every forward kernel (element counts of q, k, v, out and lse).
    pub(super) fn check_fwd(&self, op: &'static str, q: usize, k: usize, v: usize, out: usize, lse: usize) -> Result<Dims> {
        let shapes = || self.fwd_shapes(q, k, v, out, lse);
        let dims = self.check(op, q, k, v, &shapes)?;
        if out != q || lse != dims.t * self.n_heads {
            return Err(Error::shape(op, format!("{}: out must be [Ttot={}, H, D] and lse [H, Ttot]", shapes(), dims.t)));
        }
        Ok(dims)
    }
    pub(super) fn check(&self, op: &'static str, q_len: usize, k_len: usize, v_len: usize, shapes: &dyn Fn() -> String) -> Result<Dims> {
        let (h, hkv, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let err = |what: String| Err(Error::shape(op, format!("{}: {what}", shapes())));
        if h == 0 || hkv == 0 || h % hkv != 0 || h > 65_535 {
            return err(format!("H={h} must be a positive multiple of Hkv={hkv} (and at most 65535)"));
        }
        if !attention_train_head_dim_supported(d) {
            return err(format!("head dim D={d} is not supported (64 or 128)"));
        }
        let (qw, kw) = (h * d, hkv * d);
        if !q_len.is_multiple_of(qw) {
            return err(format!("q is not [Ttot, H={h}, D={d}]"));
        }
        let t = q_len / qw;
        if t.checked_mul(kw) != Some(k_len) || k_len != v_len {
            return err(format!("k and v must be [Ttot={t}, Hkv={hkv}, D={d}]"));
        }
        if t >= u32::MAX as usize || t.checked_mul(qw).is_none_or(|n| n > isize::MAX as usize / 4) {
            return err(format!("Ttot={t} rows are too many"));
        }
        let n = self.cu_seqlens.len();
        if n < 1 || n - 1 > 65_535 {
            return err(format!("cu_seqlens has {n} elements: it must be u32[B + 1] with 0 <= B <= 65535"));
        }
        if self.max_seqlen == 0 || self.max_seqlen > t.max(1) {
            return err(format!("max_seqlen={} must be in 1..=max(Ttot, 1)", self.max_seqlen));
        }
        if !(self.scale.is_finite()) {
            return err(format!("scale {} is not finite", self.scale));
        }
        let b = n - 1;
        let (causal, window, has_sp) = match self.mask {
            AttnTrainMask::Bidirectional => (0, 0, 0),
            AttnTrainMask::Causal { window: None } => (1, 0, 0),
            AttnTrainMask::Causal { window: Some(w) } => {
                if w == 0 {
                    return err("a sliding window must be at least 1 key".into());
                }
                (1, w.min(u32::MAX as usize) as u32, 0)
            }
            AttnTrainMask::SharedPrefix { pairs } => {
                if pairs.len() != 2 * b {
                    return err(format!("shared-prefix pairs has {} elements, expected u32[B={b}, 2]", pairs.len()));
                }
                (1, 0, 1)
            }
        };
        Ok(Dims { t, b, causal, window, has_sp })
    }

    fn grid(&self, y: usize, b: usize) -> (u32, u32, u32) {
        (self.max_seqlen.div_ceil(TILE).min(i32::MAX as usize) as u32, y as u32, b as u32)
    }

    /// The device array of the shared-prefix pairs, or cu_seqlens as a never-read stand-in.
    pub(super) fn sp(&self) -> &CudaView<'_, u32> {
        match self.mask {
            AttnTrainMask::SharedPrefix { pairs } => pairs,
            _ => self.cu_seqlens,
        }
    }
}

/// Dynamic shared memory of the forward: Q [64] + K, V [2][64] rows of D + 8 bf16.
fn fwd_smem(d: usize) -> usize {
    5 * TILE * (d + 8) * 2
}

/// Dynamic shared memory of the backward: K, V [64] + Q, dO [32] rows of D + 8 bf16, dS
/// [32][72] bf16, lse and delta [32] f32.
fn bwd_smem(d: usize) -> usize {
    (2 * TILE + 2 * BQ) * (d + 8) * 2 + BQ * (TILE + 8) * 2 + 2 * BQ * 4
}

impl CudaDevice {
    fn attention_train_function(&self, func: &'static str, op: &'static str, smem: usize) -> Result<cudarc::driver::CudaFunction> {
        self.function_with_smem(op, "attention_train", func, smem)
    }

    /// FlashAttention-2 forward: out[Ttot, H, D] (bf16) and lse[H, Ttot] (f32, natural log of the
    /// scaled scores' sum of exponentials) from q[Ttot, H, D], k, v[Ttot, Hkv, D] under
    /// `batch` (see [`VarlenAttn`], [`AttnTrainMask`]). Reference: per sequence,
    /// [`crate::backend::cpu::attention`] with the matching [`crate::backend::cpu::AttnMask`].
    ///
    /// The kernel is chosen by `STIC_ATTENTION` (`auto` when unset; see
    /// [`super::AttnFwdKernel`]): on compute capability 9.x the Hopper kernel
    /// (`kernels/attention_hopper.cu`, wgmma + TMA) when the inputs allow it, else the sm_80
    /// mma.sync kernel. Both give the same outputs up to the order of f32 sums.
    pub fn attention_fwd(
        &self,
        q: &CudaView<'_, u16>,
        k: &CudaView<'_, u16>,
        v: &CudaView<'_, u16>,
        batch: &VarlenAttn<'_>,
        out: &mut CudaViewMut<'_, u16>,
        lse: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        self.attention_fwd_kernel(super::AttnFwdKernel::from_env()?, q, k, v, batch, out, lse)
    }

    /// [`Self::attention_fwd`] on the sm_80 kernel (`kernels/attention_train.cu`, mma.sync), on
    /// any GPU.
    pub(crate) fn attention_fwd_mma(
        &self,
        q: &CudaView<'_, u16>,
        k: &CudaView<'_, u16>,
        v: &CudaView<'_, u16>,
        batch: &VarlenAttn<'_>,
        out: &mut CudaViewMut<'_, u16>,
        lse: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let op = "attention_fwd";
        let shapes = || batch.fwd_shapes(q.len(), k.len(), v.len(), out.len(), lse.len());
        let dims = batch.check_fwd(op, q.len(), k.len(), v.len(), out.len(), lse.len())?;
        if dims.t == 0 || dims.b == 0 {
            return Ok(());
        }
        let d = batch.head_dim;
        let (func, smem) = (if d == 64 { "attention_fwd_d64" } else { "attention_fwd_d128" }, fwd_smem(d));
        let f = self.attention_train_function(func, op, smem)?;
        let cfg = LaunchConfig { grid_dim: batch.grid(batch.n_heads, dims.b), block_dim: (BLOCK, 1, 1), shared_mem_bytes: smem as u32 };
        let (t32, h32, hkv32) = (dims.t as u32, batch.n_heads as u32, batch.n_kv_heads as u32);
        let msg = shapes();
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(q).arg(k).arg(v).arg(batch.cu_seqlens).arg(batch.sp()).arg(out).arg(lse);
        launch.arg(&t32).arg(&h32).arg(&hkv32).arg(&dims.causal).arg(&dims.window).arg(&dims.has_sp).arg(&batch.scale);
        // SAFETY: attention_fwd_d{64,128}(const u16* q, const u16* k, const u16* v, const u32* cu,
        // const u32* sp, u16* out, float* lse, u32 T, u32 H, u32 Hkv, u32 causal, u32 window,
        // u32 has_sp, float scale), grid (ceil(max_seqlen/64), H, B), block 128, the dynamic shared
        // memory it needs (attribute raised above 48 KiB). Block (x, h, b) reads cu[b], cu[b + 1]
        // (B + 1 elements checked), sp[2b], sp[2b + 1] only when has_sp (2B elements checked), and
        // rows of sequence b clamped to [0, T): q, out within T*H*D, k, v within T*Hkv*D, lse within
        // H*T (all checked above). out and lse are distinct &mut views, overlapping no input.
        self.launched(op, msg, unsafe { launch.launch(cfg) })?;
        Ok(())
    }

    /// FlashAttention-2 backward: dq[Ttot, H, D], dk, dv[Ttot, Hkv, D] (bf16; dk and dv summed
    /// over the query heads of each kv group) from q, k, v, the forward's out and lse, and
    /// dout[Ttot, H, D], under the same `batch` as the forward. Allocates an f32 workspace of
    /// Ttot * H * (D + 1) elements (dq accumulator and delta = rowsum(dout * out)) per call.
    /// Reference: [`crate::backend::cpu::attention_backward`] per sequence.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_bwd(
        &self,
        q: &CudaView<'_, u16>,
        k: &CudaView<'_, u16>,
        v: &CudaView<'_, u16>,
        out: &CudaView<'_, u16>,
        dout: &CudaView<'_, u16>,
        lse: &CudaView<'_, f32>,
        batch: &VarlenAttn<'_>,
        dq: &mut CudaViewMut<'_, u16>,
        dk: &mut CudaViewMut<'_, u16>,
        dv: &mut CudaViewMut<'_, u16>,
    ) -> Result<()> {
        let op = "attention_bwd";
        let shapes = || {
            format!(
                "q [{}], k [{}], v [{}], out [{}], dout [{}], lse [{}], dq [{}], dk [{}], dv [{}], cu_seqlens [{}] with H={} Hkv={} D={} max_seqlen={}",
                q.len(),
                k.len(),
                v.len(),
                out.len(),
                dout.len(),
                lse.len(),
                dq.len(),
                dk.len(),
                dv.len(),
                batch.cu_seqlens.len(),
                batch.n_heads,
                batch.n_kv_heads,
                batch.head_dim,
                batch.max_seqlen
            )
        };
        let dims = batch.check(op, q.len(), k.len(), v.len(), &shapes)?;
        let (h, d) = (batch.n_heads, batch.head_dim);
        if out.len() != q.len() || dout.len() != q.len() || dq.len() != q.len() || lse.len() != dims.t * h {
            return Err(Error::shape(op, format!("{}: out, dout and dq must be [Ttot={}, H, D] and lse [H, Ttot]", shapes(), dims.t)));
        }
        if dk.len() != k.len() || dv.len() != k.len() {
            return Err(Error::shape(op, format!("{}: dk and dv must be [Ttot={}, Hkv, D]", shapes(), dims.t)));
        }
        if dims.t == 0 || dims.b == 0 {
            return Ok(());
        }
        let msg = shapes();
        let n = q.len();
        let mut dq_acc = self.zeros::<f32>(n)?;
        // SAFETY: every element of delta is written by attention_bwd_preprocess before it is read.
        let mut delta = unsafe { self.alloc_uninit::<f32>(dims.t * h) }?;
        let (t32, h32, hkv32, d32) = (dims.t as u32, h as u32, batch.n_kv_heads as u32, d as u32);

        // delta[h, i] = rowsum(dout * out): one warp per (row, head).
        let f = self.function("attention_train", "attention_bwd_preprocess")?;
        let warps = dims.t * h;
        let cfg = LaunchConfig { grid_dim: (warps.div_ceil(4) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(out).arg(dout).arg(&mut delta).arg(&t32).arg(&h32).arg(&d32);
        // SAFETY: attention_bwd_preprocess(const u16* out, const u16* dout, float* delta, u32 T,
        // u32 H, u32 D), grid ceil(T*H/4) of 128 threads: warp w < T*H reads out and dout
        // [w*D, w*D + D) (T*H*D elements, checked) and writes delta[h*T + i] (T*H elements).
        self.launched(op, &msg, unsafe { launch.launch(cfg) })?;

        let (func, smem) = (if d == 64 { "attention_bwd_d64" } else { "attention_bwd_d128" }, bwd_smem(d));
        let f = self.attention_train_function(func, op, smem)?;
        let cfg = LaunchConfig { grid_dim: batch.grid(batch.n_kv_heads, dims.b), block_dim: (BLOCK, 1, 1), shared_mem_bytes: smem as u32 };
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(q).arg(k).arg(v).arg(dout).arg(lse).arg(&delta).arg(batch.cu_seqlens).arg(batch.sp()).arg(&mut dq_acc).arg(dk).arg(dv);
        launch.arg(&t32).arg(&h32).arg(&hkv32).arg(&dims.causal).arg(&dims.window).arg(&dims.has_sp).arg(&batch.scale);
        // SAFETY: attention_bwd_d{64,128}(const u16* q, const u16* k, const u16* v, const u16*
        // dout, const float* lse, const float* delta, const u32* cu, const u32* sp, float* dq_acc,
        // u16* dk, u16* dv, u32 T, u32 H, u32 Hkv, u32 causal, u32 window, u32 has_sp, float
        // scale), grid (ceil(max_seqlen/64), Hkv, B), block 128, its dynamic shared memory. Block
        // (x, g, b) touches only rows of sequence b clamped to [0, T): q, dout, dq_acc within
        // T*H*D, k, v, dk, dv within T*Hkv*D, lse and delta within H*T (checked / allocated above);
        // cu and sp as in the forward. dk and dv are distinct &mut views; dq_acc and delta are
        // private.
        self.launched(op, &msg, unsafe { launch.launch(cfg) })?;

        let f = self.function("attention_train", "attention_bwd_dq")?;
        let cfg = self.grid_stride_config(n, 256);
        let n64 = n as u64;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(&dq_acc).arg(dq).arg(&n64);
        // SAFETY: attention_bwd_dq(const float* acc, u16* dq, u64 n): grid-stride over e < n,
        // reads acc[e] (n elements allocated) and writes dq[e] (dq.len() == n, checked).
        self.launched(op, &msg, unsafe { launch.launch(cfg) })?;
        Ok(())
    }
}
