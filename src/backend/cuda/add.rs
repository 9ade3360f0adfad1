//! x += y with y repeating: `kernels/add.cu`.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::CudaDevice;
use crate::error::{Error, Result};

const BLOCK: u32 = 256;

impl CudaDevice {
    /// x[i] += y[i % len(y)] in bf16 with f32 arithmetic (y's rows repeating over x's: residual
    /// adds, position embeddings). Reference: [`crate::backend::cpu::add`].
    pub fn add(&self, x: &mut CudaViewMut<'_, u16>, y: &CudaView<'_, u16>) -> Result<()> {
        let op = "add";
        let (n, p) = (x.len(), y.len());
        if p == 0 || n % p != 0 {
            return Err(Error::shape(op, format!("x [{n}] is not a whole number of y [{p}]")));
        }
        if n == 0 {
            return Ok(());
        }
        let f = self.function("add", op)?;
        let cfg = self.grid_stride_config(n, BLOCK);
        let (n64, p64) = (n as u64, p as u64);
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(x).arg(y).arg(&n64).arg(&p64);
        // SAFETY: add(u16* x, const u16* y, u64 n, u64 period) touches x[0, n) and y[0, period)
        // only (grid-stride loop bounded by n, index modulo period), the views' lengths.
        self.launched(op, format!("x [{n}] += y [{p}]"), unsafe { launch.launch(cfg) })?;
        Ok(())
    }
}
