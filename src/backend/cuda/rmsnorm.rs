//! RMS normalisation and the fused residual add + RMS normalisation: `kernels/rmsnorm.cu`.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::{row_config, rows_of, CudaDevice};
use crate::error::{Error, Result};

impl CudaDevice {
    /// `y = w * x / sqrt(mean(x^2) + eps)` over each row of x[T, C] (C = `w.len()`), bf16 bits in
    /// and out, f32 arithmetic, one RNE rounding. Reference: [`crate::backend::cpu::rmsnorm`].
    /// `y` must have the length of `x`.
    pub fn rmsnorm(&self, x: &CudaView<'_, u16>, w: &CudaView<'_, u16>, eps: f32, y: &mut CudaViewMut<'_, u16>) -> Result<()> {
        let op = "rmsnorm";
        let c = w.len();
        let rows = rows_of(op, "x", x.len(), c)?;
        if y.len() != x.len() {
            return Err(Error::shape(op, format!("x [{rows}, {c}] but y has {} elements", y.len())));
        }
        if rows == 0 {
            return Ok(());
        }
        let f = self.function("rmsnorm", op)?;
        let c32 = c as u32;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(x).arg(w).arg(y).arg(&c32).arg(&eps);
        // SAFETY: rmsnorm(const u16* x, const u16* w, u16* y, u32 C, float eps) reads x and writes y
        // in rows [0, T) of C elements (T = grid size), and reads w[0, C): all in bounds (checked
        // above). y is a distinct &mut view, so it does not overlap x or w.
        self.launched(op, format!("x [{rows}, {c}]"), unsafe { launch.launch(row_config(rows, c)) })?;
        Ok(())
    }

    /// The decoder's "add then norm": `residual <- bf16(x + residual)`, then
    /// `y = rmsnorm(residual)` of that stored, rounded sum (as HF in bf16). x, residual and y are
    /// [T, C] with C = `w.len()`. Reference: [`crate::backend::cpu::rmsnorm_residual`].
    pub fn rmsnorm_residual(
        &self,
        x: &CudaView<'_, u16>,
        residual: &mut CudaViewMut<'_, u16>,
        w: &CudaView<'_, u16>,
        eps: f32,
        y: &mut CudaViewMut<'_, u16>,
    ) -> Result<()> {
        let op = "rmsnorm_residual";
        let c = w.len();
        let rows = rows_of(op, "x", x.len(), c)?;
        if residual.len() != x.len() || y.len() != x.len() {
            return Err(Error::shape(op, format!("x [{rows}, {c}] but residual has {} and y {} elements", residual.len(), y.len())));
        }
        if rows == 0 {
            return Ok(());
        }
        let f = self.function("rmsnorm", op)?;
        let c32 = c as u32;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(x).arg(residual).arg(w).arg(y).arg(&c32).arg(&eps);
        // SAFETY: rmsnorm_residual(const u16* x, u16* residual, const u16* w, u16* y, u32 C,
        // float eps) touches rows [0, T) of C elements of x, residual and y and w[0, C), all in
        // bounds (checked above); residual and y are distinct &mut views, x a shared one, so none
        // of the written buffers overlaps another argument.
        self.launched(op, format!("x [{rows}, {c}]"), unsafe { launch.launch(row_config(rows, c)) })?;
        Ok(())
    }

    /// dx [T, C] of `rmsnorm` given x, w and dy; with `dw` (f32 [C], a norm weight that trains in
    /// full) also dw += the weight's gradient (`rmsnorm_dw`: one thread per column, the rows summed
    /// in order, no atomics). Under LoRA the norm is frozen: `dw` None.
    /// Reference: [`crate::backend::cpu::rmsnorm_backward`].
    pub fn rmsnorm_backward(
        &self,
        x: &CudaView<'_, u16>,
        w: &CudaView<'_, u16>,
        dy: &CudaView<'_, u16>,
        eps: f32,
        dx: &mut CudaViewMut<'_, u16>,
        dw: Option<&mut CudaViewMut<'_, f32>>,
    ) -> Result<()> {
        let op = "rmsnorm_backward";
        let c = w.len();
        let rows = rows_of(op, "x", x.len(), c)?;
        if dy.len() != x.len() || dx.len() != x.len() {
            return Err(Error::shape(op, format!("x [{rows}, {c}] but dy has {} and dx {} elements", dy.len(), dx.len())));
        }
        if let Some(dw) = dw.as_ref().filter(|d| d.len() != c) {
            return Err(Error::shape(op, format!("x [{rows}, {c}] but dw has {} elements", dw.len())));
        }
        if rows == 0 {
            return Ok(());
        }
        let f = self.function("rmsnorm", op)?;
        let c32 = c as u32;
        // SAFETY: rmsnorm_backward writes inv[0, T) (one per block) before rmsnorm_dw reads it.
        let mut inv = match dw {
            Some(_) => Some(unsafe { self.scratch::<f32>("rmsnorm_backward.inv", rows) }?),
            None => None,
        };
        let null = 0u64;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(x).arg(w).arg(dy).arg(&mut *dx).arg(&c32).arg(&eps);
        match inv.as_mut() {
            Some(i) => launch.arg(&mut **i),
            None => launch.arg(&null),
        };
        // SAFETY: rmsnorm_backward(const u16* x, const u16* w, const u16* dy, u16* dx, u32 C,
        // float eps, float* inv) reads x and dy and writes dx in rows [0, T) of C (T = grid size),
        // reads w[0, C), writes inv[0, T) when not null (a scratch of T): in bounds (checked
        // above); dx and inv are distinct &mut views.
        self.launched(op, format!("x [{rows}, {c}]"), unsafe { launch.launch(row_config(rows, c)) })?;
        if let (Some(dw), Some(inv)) = (dw, inv.as_ref()) {
            let f = self.function("rmsnorm", "rmsnorm_dw")?;
            let t32 = rows as u32;
            let cfg = cudarc::driver::LaunchConfig { grid_dim: (c.div_ceil(128) as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            let mut launch = self.stream().launch_builder(&f);
            launch.arg(x).arg(dy).arg(&**inv).arg(dw).arg(&t32).arg(&c32);
            // SAFETY: rmsnorm_dw(const u16* x, const u16* dy, const float* inv, float* dw, u32 T,
            // u32 C) reads x and dy [0, T*C), inv [0, T), and adds to dw[0, C) (threads c >= C
            // return): the checked lengths; dw is a distinct &mut view.
            self.launched("rmsnorm_dw", format!("x [{rows}, {c}] -> dw [{c}] f32"), unsafe { launch.launch(cfg) })?;
        }
        Ok(())
    }
}
