//! dtype casts between bf16 (raw `u16` bits) and f32: `kernels/cast.cu`.

use crate::backend::cuda::DevBuf;
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::CudaDevice;
use crate::error::{Error, Result};

const BLOCK: u32 = 256;

impl CudaDevice {
    /// `y[i] = f32(x[i])` for bf16 bits `x` (exact; NaNs are quieted as `half::bf16::to_f32` does).
    pub fn cast_bf16_to_f32(&self, x: &DevBuf<u16>) -> Result<DevBuf<f32>> {
        // SAFETY: the cast writes all of y.
        let mut y = unsafe { self.alloc_uninit::<f32>(x.len())? };
        self.cast_bf16_to_f32_into(&x.as_view(), &mut y.as_view_mut())?;
        Ok(y)
    }

    /// `y[i] = bf16(x[i])`, rounded to nearest even, bit-exact with `half::bf16::from_f32`.
    pub fn cast_f32_to_bf16(&self, x: &DevBuf<f32>) -> Result<DevBuf<u16>> {
        // SAFETY: the cast writes all of y.
        let mut y = unsafe { self.alloc_uninit::<u16>(x.len())? };
        self.cast_f32_to_bf16_into(&x.as_view(), &mut y.as_view_mut())?;
        Ok(y)
    }

    /// [`Self::cast_bf16_to_f32`] into an existing buffer of the same length.
    pub fn cast_bf16_to_f32_into(&self, x: &CudaView<'_, u16>, y: &mut CudaViewMut<'_, f32>) -> Result<()> {
        self.launch_cast("cast_bf16_to_f32", x, y)
    }

    /// [`Self::cast_f32_to_bf16`] into an existing buffer of the same length.
    pub fn cast_f32_to_bf16_into(&self, x: &CudaView<'_, f32>, y: &mut CudaViewMut<'_, u16>) -> Result<()> {
        self.launch_cast("cast_f32_to_bf16", x, y)
    }

    fn launch_cast<A, B>(&self, op: &'static str, x: &CudaView<'_, A>, y: &mut CudaViewMut<'_, B>) -> Result<()> {
        let n = x.len();
        if y.len() != n {
            return Err(Error::shape(op, format!("input [{n}] but output [{}]", y.len())));
        }
        if n == 0 {
            return Ok(());
        }
        let f = self.function("cast", op)?;
        let cfg = self.grid_stride_config(n, BLOCK);
        let n64 = n as u64;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(x).arg(y).arg(&n64);
        // SAFETY: the kernel takes (const in*, out*, u64 n) and touches elements [0, n) of each,
        // both of which hold n elements (checked above).
        self.launched(op, format!("[{n}] -> [{n}]"), unsafe { launch.launch(cfg) })?;
        Ok(())
    }
}
