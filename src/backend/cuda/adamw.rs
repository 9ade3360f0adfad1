//! One fused AdamW step over many tensors: `kernels/adamw.cu`.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::CudaDevice;
use crate::error::{Error, Result};
use crate::optim::AdamWConfig;

const BLOCK: u32 = 256;

/// One tensor of a fused step: its element count, scheduled learning rate and weight decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWTensor {
    pub len: usize,
    pub lr: f32,
    pub weight_decay: f32,
}

impl CudaDevice {
    /// AdamW step `step` (1-based, the same for every tensor) over tensors stored back to back
    /// in p, g, m, v (f32, p/m/v updated in place), tensor i taking `tensors[i].len` elements
    /// with its own learning rate and decay (the projector's own lr; no decay on biases).
    /// `cfg`'s betas and eps are shared (its lr and weight_decay are not used). Bit-identical with
    /// [`crate::optim::AdamWState::step`] per tensor on the gradients g * `gscale` (clipping and
    /// the accumulation factor folded in; the CPU multiplies its f32 gradients by the same f32
    /// factor first, so the bits still agree; 1.0 leaves g as it is).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &self,
        p: &mut CudaViewMut<'_, f32>,
        g: &CudaView<'_, f32>,
        m: &mut CudaViewMut<'_, f32>,
        v: &mut CudaViewMut<'_, f32>,
        tensors: &[AdamWTensor],
        cfg: &AdamWConfig,
        step: u64,
        gscale: f32,
    ) -> Result<()> {
        let op = "adamw";
        let n: usize = tensors.iter().map(|t| t.len).sum();
        if p.len() != n || g.len() != n || m.len() != n || v.len() != n || step == 0 || step > i32::MAX as u64 || tensors.len() > u32::MAX as usize {
            return Err(Error::shape(
                op,
                format!("p [{}], g [{}], m [{}], v [{}] for {} tensors of {n} elements, step {step} (>= 1)", p.len(), g.len(), m.len(), v.len(), tensors.len()),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        // The host side of AdamWState::step, in the same f32 operations.
        let t = step as i32;
        let bc1 = 1.0 - cfg.beta1.powi(t);
        let bc2_sqrt = (1.0 - cfg.beta2.powi(t)).sqrt();
        let mut end = 0u64;
        let seg_end: Vec<u64> = tensors.iter().map(|t| {
            end += t.len as u64;
            end
        }).collect();
        let decay: Vec<f32> = tensors.iter().map(|t| 1.0 - t.lr * t.weight_decay).collect();
        let step_size: Vec<f32> = tensors.iter().map(|t| t.lr / bc1).collect();
        let (seg_d, decay_d, step_d) = (self.htod(&seg_end)?, self.htod(&decay)?, self.htod(&step_size)?);
        let f = self.function("adamw", op)?;
        let cfg_launch = self.grid_stride_config(n, BLOCK);
        let (n64, s32) = (n as u64, tensors.len() as u32);
        let (omb1, omb2) = (1.0 - cfg.beta1, 1.0 - cfg.beta2);
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(p).arg(g).arg(m).arg(v).arg(&n64).arg(&seg_d).arg(&decay_d).arg(&step_d).arg(&s32);
        launch.arg(&cfg.beta1).arg(&omb1).arg(&cfg.beta2).arg(&omb2).arg(&bc2_sqrt).arg(&cfg.eps).arg(&gscale);
        // SAFETY: adamw(float* p, const float* g, float* m, float* v, u64 n, const u64* seg_end,
        // const float* decay, const float* step_size, u32 S, float x7) touches p, g, m, v at
        // [0, n) (their lengths, checked) and the three S-element tables; p, m, v are distinct
        // &mut views.
        self.launched(op, format!("{} tensors, {n} elements", tensors.len()), unsafe { launch.launch(cfg_launch) })?;
        Ok(())
    }
}

/// Threads per block of `grad_sumsq` (`GS_THREADS`).
const GS_THREADS: u32 = 256;

impl CudaDevice {
    /// The sum of squares of g (f64; per-block partials added on the host in block order, so the
    /// result is deterministic): the squared global L2 norm that gradient clipping needs. Waits
    /// for the device. Reference: [`crate::train::Grads::norm`] (squared).
    pub fn grad_sumsq(&self, g: &CudaView<'_, f32>) -> Result<f64> {
        let op = "grad_sumsq";
        let n = g.len();
        if n == 0 {
            return Ok(0.0);
        }
        let blocks = n.div_ceil(GS_THREADS as usize).min(4 * self.num_sms().max(1) as usize) as u32;
        // SAFETY: every one of the `blocks` partials is written by its block before the copy.
        let mut partial = unsafe { self.scratch::<f64>("grad_sumsq.partial", blocks as usize) }?;
        let f = self.function("adamw", op)?;
        let cfg = cudarc::driver::LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (GS_THREADS, 1, 1), shared_mem_bytes: 0 };
        let n64 = n as u64;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(g).arg(&n64).arg(&mut *partial);
        // SAFETY: grad_sumsq(const float* g, u64 n, double* partial) reads g[0, n) (its length)
        // and block b writes partial[b], b < blocks (allocated); block size GS_THREADS as the
        // kernel's shared array assumes.
        self.launched(op, format!("[{n}]"), unsafe { launch.launch(cfg) })?;
        Ok(self.dtoh(&partial.view())?.iter().sum())
    }
}
