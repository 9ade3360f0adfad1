//! LoRA dropout with the CPU's masks: `kernels/dropout.cu`.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::CudaDevice;
use crate::error::{Error, Result};

const BLOCK: u32 = 256;

/// One layer input's dropout: the mask's seed (`decoder::mask_seed` of the step's seed, the
/// layer and the projection) and the probability p in (0, 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub seed: u64,
    pub p: f32,
}

impl Dropout {
    /// The kept elements' factor, 1 / (1 - p) in f32 as the CPU computes it.
    pub fn keep(&self) -> f32 {
        1.0 / (1.0 - self.p)
    }
}

impl CudaDevice {
    /// y = bf16(x * mask) for the mask of `d` over x's elements (row-major [M, K]), the mask
    /// [`crate::nn::Linear::dropout_mask`] draws. Reference: that mask times x.
    pub fn dropout(&self, x: &CudaView<'_, u16>, y: &mut CudaViewMut<'_, u16>, d: Dropout) -> Result<()> {
        let op = "dropout";
        let n = x.len();
        if y.len() != n || !(d.p > 0.0 && d.p < 1.0) {
            return Err(Error::shape(op, format!("x [{n}], y [{}], p {} (in (0, 1))", y.len(), d.p)));
        }
        if n == 0 {
            return Ok(());
        }
        let f = self.function("dropout", op)?;
        let (n64, p64, keep) = (n as u64, d.p as f64, d.keep());
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(x).arg(y).arg(&n64).arg(&d.seed).arg(&p64).arg(&keep);
        // SAFETY: dropout(const u16* x, u16* y, u64 n, u64 seed, double p, float keep) touches
        // x[0, n) and y[0, n) (both of length n, checked); y is a distinct &mut view.
        self.launched(op, format!("x, y [{n}]"), unsafe { launch.launch(self.grid_stride_config(n, BLOCK)) })?;
        Ok(())
    }

    /// y = bf16(base + mask * t) for the mask of `d` (the LoRA path's dx under dropout: base =
    /// dy W, t = s v A, both f32).
    pub fn dropout_add(&self, base: &CudaView<'_, f32>, t: &CudaView<'_, f32>, y: &mut CudaViewMut<'_, u16>, d: Dropout) -> Result<()> {
        let op = "dropout_add";
        let n = base.len();
        if t.len() != n || y.len() != n || !(d.p > 0.0 && d.p < 1.0) {
            return Err(Error::shape(op, format!("base [{n}], t [{}], y [{}], p {} (in (0, 1))", t.len(), y.len(), d.p)));
        }
        if n == 0 {
            return Ok(());
        }
        let f = self.function("dropout", op)?;
        let (n64, p64, keep) = (n as u64, d.p as f64, d.keep());
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(base).arg(t).arg(y).arg(&n64).arg(&d.seed).arg(&p64).arg(&keep);
        // SAFETY: dropout_add(const float* base, const float* t, u16* y, u64 n, u64 seed, double p,
        // float keep) touches [0, n) of each (their lengths, checked); y is a distinct &mut view.
        self.launched(op, format!("[{n}]"), unsafe { launch.launch(self.grid_stride_config(n, BLOCK)) })?;
        Ok(())
    }
}
