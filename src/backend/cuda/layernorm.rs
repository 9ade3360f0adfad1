//! Layer normalisation (CLIP): `kernels/layernorm.cu`.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::{row_config, rows_of, CudaDevice};
use crate::error::{Error, Result};

impl CudaDevice {
    /// `y = (x - mean) / sqrt(var + eps) * w + b` over each row of x[T, C] (C = `w.len()`,
    /// biased variance), bf16 bits in and out, f32 arithmetic, one RNE rounding.
    /// Reference: [`crate::backend::cpu::layernorm`]. `y` must have the length of `x`.
    pub fn layernorm(
        &self,
        x: &CudaView<'_, u16>,
        w: &CudaView<'_, u16>,
        b: &CudaView<'_, u16>,
        eps: f32,
        y: &mut CudaViewMut<'_, u16>,
    ) -> Result<()> {
        let op = "layernorm";
        let c = w.len();
        let rows = rows_of(op, "x", x.len(), c)?;
        if b.len() != c {
            return Err(Error::shape(op, format!("w [{c}] but b [{}]", b.len())));
        }
        if y.len() != x.len() {
            return Err(Error::shape(op, format!("x [{rows}, {c}] but y has {} elements", y.len())));
        }
        if rows == 0 {
            return Ok(());
        }
        let f = self.function("layernorm", op)?;
        let c32 = c as u32;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(x).arg(w).arg(b).arg(y).arg(&c32).arg(&eps);
        // SAFETY: layernorm(const u16* x, const u16* w, const u16* b, u16* y, u32 C, float eps)
        // touches rows [0, T) of C elements of x and y and [0, C) of w and b, all in bounds
        // (checked above); y is a distinct &mut view.
        self.launched(op, format!("x [{rows}, {c}]"), unsafe { launch.launch(row_config(rows, c)) })?;
        Ok(())
    }
}
