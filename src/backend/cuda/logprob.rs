//! Fused lm_head + log-softmax + target gather over a chunked vocabulary: `kernels/logprob.cu`
//! plus cuBLASLt. The [T, V] logits never exist: memory is O(T x chunk).
//!
//! Forward, h [T, C] (bf16), the lm_head w [V, C] (bf16), targets u32[T]: for each chunk of
//! `chunk` vocabulary rows, z = h w_chunk^T [T, n] through `matmul` (f32 out, into a scratch),
//! then `logprob_fold` folds z into each row's running (max, sum) (the online log-sum-exp of
//! [`crate::backend::cpu::logprob`], chunk for chunk) and picks the target's logit when it lies in
//! the chunk; the last fold writes lse[T] = max + ln(sum) and logp[T] = z[t, target] - lse (f32).
//!
//! Backward given dlogp f32[T] and the saved lse: per chunk, z is recomputed (the same GEMM),
//! `logprob_dlogits` computes the logit gradients g = dlogp (onehot(target) - exp(z - lse)) in
//! f32 and splits them into two bf16 matrices, hi = bf16(g) and lo = bf16(g - hi) [T, n]; then
//! dh[T, C] (f32) += hi @ w_chunk + lo @ w_chunk through two `matmul_nn` (bf16 operands, f32
//! accumulation, f32 out, accumulated over the chunks with cuBLASLt's beta = 1). Why the split:
//! cuBLASLt's tensor-core GEMM takes bf16 operands, and g rounded to bf16 alone (2^-9 relative)
//! costs dh up to ~10% relative error at elements where the target row and the softmax average
//! of w cancel; hi + lo keeps ~16 bits (2^-17), for twice the (tensor-core) GEMM work. dh is f32
//! so that the chunks accumulate without a rounding each. Under LoRA the lm_head is frozen (no dw);
//! trained in full, `logprob_backward_dw` also adds dw [V, C] += hi^T h + lo^T h per chunk (`matmul_tn`).
//!
//! A target >= V gives logp = NaN (forward) and no one-hot term (backward); the caller owns the
//! targets. Reference: [`crate::backend::cpu::logprob`], [`crate::backend::cpu::logprob_backward`].

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::CudaDevice;
use crate::error::{Error, Result};

/// Vocabulary rows per chunk of [`CudaDevice::logprob`] and [`CudaDevice::logprob_backward`]:
/// the f32 scratch is T x 8192 floats (the backward adds 2 x T x 8192 bf16).
pub const LOGPROB_CHUNK: usize = 8192;
const BLOCK: u32 = 256;

fn check(op: &'static str, shapes: &dyn Fn() -> String, t: usize, c: usize, v: usize, chunk: usize, lens: &[(&str, usize, usize)]) -> Result<()> {
    if c == 0 || v == 0 || chunk == 0 {
        return Err(Error::shape(op, format!("{}: C, V and the chunk must be positive", shapes())));
    }
    if t > i32::MAX as usize || v > u32::MAX as usize || c > i32::MAX as usize || chunk > i32::MAX as usize {
        return Err(Error::shape(op, format!("{}: a dimension is too large", shapes())));
    }
    if t.checked_mul(c.max(chunk)).is_none() || v.checked_mul(c).is_none() {
        return Err(Error::shape(op, format!("{}: element count overflows", shapes())));
    }
    for &(name, got, need) in lens {
        if got != need {
            return Err(Error::shape(op, format!("{}: but {name} has {got} elements, not {need}", shapes())));
        }
    }
    Ok(())
}

impl CudaDevice {
    /// logp[t] = z[t, targets[t]] - lse[t] and lse[t] = logsumexp_v z[t, v] for z = h w^T, with
    /// h [T, C] and w [V, C] bf16, targets u32[T], logp and lse f32[T], chunks of
    /// [`LOGPROB_CHUNK`] vocabulary rows. T = 0 is a no-op. Asynchronous on the device's stream.
    #[allow(clippy::too_many_arguments)]
    pub fn logprob(
        &self,
        h: &CudaView<'_, u16>,
        w: &CudaView<'_, u16>,
        targets: &CudaView<'_, u32>,
        logp: &mut CudaViewMut<'_, f32>,
        lse: &mut CudaViewMut<'_, f32>,
        t: usize,
        c: usize,
        v: usize,
    ) -> Result<()> {
        self.logprob_chunked(h, w, targets, logp, lse, t, c, v, LOGPROB_CHUNK)
    }

    /// [`Self::logprob`] with `chunk` vocabulary rows per GEMM (the checks use small chunks to
    /// cover many chunks on small shapes).
    #[allow(clippy::too_many_arguments)]
    pub fn logprob_chunked(
        &self,
        h: &CudaView<'_, u16>,
        w: &CudaView<'_, u16>,
        targets: &CudaView<'_, u32>,
        logp: &mut CudaViewMut<'_, f32>,
        lse: &mut CudaViewMut<'_, f32>,
        t: usize,
        c: usize,
        v: usize,
        chunk: usize,
    ) -> Result<()> {
        let op = "logprob";
        let shapes = || format!("h [{t}, {c}], w [{v}, {c}], targets [{t}] -> logp [{t}], lse [{t}], chunk {chunk}");
        check(op, &shapes, t, c, v, chunk, &[("h", h.len(), t * c), ("w", w.len(), v * c), ("targets", targets.len(), t), ("logp", logp.len(), t), ("lse", lse.len(), t)])?;
        if t == 0 {
            return Ok(());
        }
        let chunk = chunk.min(v);
        // SAFETY: each chunk's GEMM writes z[0, T * n) before the fold reads it; the fold of the
        // first chunk writes run_max, run_sum and zt for every row before any later fold reads them.
        let mut z = unsafe { self.scratch::<f32>("logprob.z", t * chunk) }?;
        let mut state = unsafe { self.scratch::<f32>("logprob.state", 3 * t) }?;
        let f = self.function("logprob", "logprob_fold")?;
        let cfg = LaunchConfig { grid_dim: (t as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let (t32, v32) = (t as u32, v as u32);
        let mut c0 = 0;
        while c0 < v {
            let n = chunk.min(v - c0);
            self.matmul(h, &w.slice(c0 * c..(c0 + n) * c), None, &mut z.slice_mut(0..t * n), t, n, c, false)?;
            let (n32, c032, first, last) = (n as u32, c0 as u32, (c0 == 0) as u32, (c0 + n == v) as u32);
            let (mut rm, mut rest) = state.split_at_mut(t);
            let (mut rs, mut zt) = rest.split_at_mut(t);
            let mut launch = self.stream().launch_builder(&f);
            launch.arg(&*z).arg(&t32).arg(&n32).arg(&c032).arg(targets).arg(&v32).arg(&mut rm).arg(&mut rs).arg(&mut zt).arg(&first).arg(&last).arg(&mut *logp).arg(&mut *lse);
            // SAFETY: logprob_fold reads z[0, T * n) (written by the GEMM, within z's T * chunk),
            // targets[0, T), and reads/writes run_max, run_sum, zt [0, T) (the three disjoint
            // thirds of `state`) and, on the last chunk, logp and lse [0, T) (checked lengths).
            self.launched("logprob_fold", shapes(), unsafe { launch.launch(cfg) })?;
            c0 += n;
        }
        Ok(())
    }

    /// dh[T, C] (f32) = the gradient of sum_t dlogp[t] logp[t] with respect to h, given the
    /// forward's lse: dh[t] = dlogp[t] (w[targets[t]] - sum_v softmax(z[t])_v w[v]) (see the module
    /// docs for the bf16 rounding of the logit gradients). Overwrites dh, or adds to it when
    /// `accumulate`. T = 0 is a no-op.
    #[allow(clippy::too_many_arguments)]
    pub fn logprob_backward(
        &self,
        h: &CudaView<'_, u16>,
        w: &CudaView<'_, u16>,
        targets: &CudaView<'_, u32>,
        lse: &CudaView<'_, f32>,
        dlogp: &CudaView<'_, f32>,
        dh: &mut CudaViewMut<'_, f32>,
        t: usize,
        c: usize,
        v: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.logprob_backward_chunked(h, w, targets, lse, dlogp, dh, None, t, c, v, accumulate, LOGPROB_CHUNK)
    }

    /// [`Self::logprob_backward`] of an lm_head that trains in full: also dw [V, C] (f32) += the
    /// weight's gradient g^T h, chunk by chunk from the same hi / lo logit gradients
    /// (`matmul_tn`, f32 accumulation). Reference: `cpu::logprob::logprob_backward_full`.
    #[allow(clippy::too_many_arguments)]
    pub fn logprob_backward_dw(
        &self,
        h: &CudaView<'_, u16>,
        w: &CudaView<'_, u16>,
        targets: &CudaView<'_, u32>,
        lse: &CudaView<'_, f32>,
        dlogp: &CudaView<'_, f32>,
        dh: &mut CudaViewMut<'_, f32>,
        dw: &mut CudaViewMut<'_, f32>,
        t: usize,
        c: usize,
        v: usize,
    ) -> Result<()> {
        self.logprob_backward_chunked(h, w, targets, lse, dlogp, dh, Some(dw), t, c, v, false, LOGPROB_CHUNK)
    }

    /// [`Self::logprob_backward`] with `chunk` vocabulary rows per GEMM, and the lm_head's own
    /// gradient added to `dw` when given ([`Self::logprob_backward_dw`]).
    #[allow(clippy::too_many_arguments)]
    pub fn logprob_backward_chunked(
        &self,
        h: &CudaView<'_, u16>,
        w: &CudaView<'_, u16>,
        targets: &CudaView<'_, u32>,
        lse: &CudaView<'_, f32>,
        dlogp: &CudaView<'_, f32>,
        dh: &mut CudaViewMut<'_, f32>,
        mut dw: Option<&mut CudaViewMut<'_, f32>>,
        t: usize,
        c: usize,
        v: usize,
        accumulate: bool,
        chunk: usize,
    ) -> Result<()> {
        let op = "logprob_backward";
        let shapes = || format!("h [{t}, {c}], w [{v}, {c}], targets [{t}], lse [{t}], dlogp [{t}] -> dh [{t}, {c}] f32, chunk {chunk}");
        check(
            op,
            &shapes,
            t,
            c,
            v,
            chunk,
            &[("h", h.len(), t * c), ("w", w.len(), v * c), ("targets", targets.len(), t), ("lse", lse.len(), t), ("dlogp", dlogp.len(), t), ("dh", dh.len(), t * c)],
        )?;
        if let Some(dw) = dw.as_ref().filter(|d| d.len() != v * c) {
            return Err(Error::shape(op, format!("{}: but dw has {} elements, not {}", shapes(), dw.len(), v * c)));
        }
        if t == 0 {
            return Ok(());
        }
        let chunk = chunk.min(v);
        // SAFETY: per chunk the GEMM writes z[0, T * n) and the kernel hi, lo [0, T * n) before
        // they are read.
        let mut z = unsafe { self.scratch::<f32>("logprob_backward.z", t * chunk) }?;
        let mut hi = unsafe { self.scratch::<u16>("logprob_backward.hi", t * chunk) }?;
        let mut lo = unsafe { self.scratch::<u16>("logprob_backward.lo", t * chunk) }?;
        let f = self.function("logprob", "logprob_dlogits")?;
        let cfg = LaunchConfig { grid_dim: (t as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let t32 = t as u32;
        let mut c0 = 0;
        while c0 < v {
            let n = chunk.min(v - c0);
            let wc = w.slice(c0 * c..(c0 + n) * c);
            self.matmul(h, &wc, None, &mut z.slice_mut(0..t * n), t, n, c, false)?;
            let (n32, c032) = (n as u32, c0 as u32);
            let mut launch = self.stream().launch_builder(&f);
            launch.arg(&*z).arg(&t32).arg(&n32).arg(&c032).arg(targets).arg(lse).arg(dlogp).arg(&mut *hi).arg(&mut *lo);
            // SAFETY: logprob_dlogits reads z[0, T * n), targets, lse and dlogp [0, T) (checked
            // lengths) and writes hi and lo [0, T * n) (within their T * chunk), fresh scratches.
            self.launched("logprob_dlogits", shapes(), unsafe { launch.launch(cfg) })?;
            // dh [T, C] (+)= hi [T, n] @ w_chunk [n, C] + lo [T, n] @ w_chunk.
            self.matmul_nn(&hi.slice(0..t * n), &wc, dh, t, c, n, accumulate || c0 > 0)?;
            self.matmul_nn(&lo.slice(0..t * n), &wc, dh, t, c, n, true)?;
            if let Some(dw) = dw.as_mut() {
                // dw_chunk [n, C] += hi^T h + lo^T h.
                let mut dwc = dw.slice_mut(c0 * c..(c0 + n) * c);
                self.matmul_tn(&hi.slice(0..t * n), h, &mut dwc, n, c, t, true)?;
                self.matmul_tn(&lo.slice(0..t * n), h, &mut dwc, n, c, t, true)?;
            }
            c0 += n;
        }
        Ok(())
    }
}
