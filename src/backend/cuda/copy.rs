//! Row moves between bf16 matrices: `kernels/copy.cu`.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{rows_of, CudaDevice};
use crate::error::{Error, Result};

const BLOCK: u32 = 128;

impl CudaDevice {
    /// dst[idx[i]] = src[i] for every row i of src [N, W] (dst [R, W], idx u32[N] on the device,
    /// every index < R: the caller checks them, as it builds them). Reference:
    /// [`crate::backend::cpu::scatter_rows`].
    pub fn scatter_rows(&self, src: &CudaView<'_, u16>, dst: &mut CudaViewMut<'_, u16>, idx: &CudaView<'_, u32>, width: usize) -> Result<()> {
        let op = "scatter_rows";
        let n = rows_of(op, "src", src.len(), width)?;
        let r = rows_of(op, "dst", dst.len(), width)?;
        if idx.len() != n {
            return Err(Error::shape(op, format!("src [{n}, {width}] with {} indices", idx.len())));
        }
        if n == 0 {
            return Ok(());
        }
        let f = self.function("copy", op)?;
        let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let (w32, r64) = (width as u32, r as u64);
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(src).arg(dst).arg(idx).arg(&w32).arg(&r64);
        // SAFETY: scatter_rows(const u16* src, u16* dst, const u32* idx, u32 W, u64 R) reads
        // idx[0, N) (N = grid) and src[0, N*W), and writes dst rows idx[i] < R only (others are
        // skipped): all within the views checked above; src and dst are distinct borrows.
        self.launched(op, format!("src [{n}, {width}] into dst [{r}, {width}]"), unsafe { launch.launch(cfg) })?;
        Ok(())
    }

    /// dst[r, offset..offset + Cs] = src[r, ..] for src [R, Cs] and dst [R, Cd]: one part of a
    /// column concatenation. Reference: [`crate::backend::cpu::concat_cols`].
    pub fn concat_cols(&self, src: &CudaView<'_, u16>, src_cols: usize, dst: &mut CudaViewMut<'_, u16>, dst_cols: usize, offset: usize) -> Result<()> {
        let op = "concat_cols";
        let r = rows_of(op, "src", src.len(), src_cols)?;
        let rd = rows_of(op, "dst", dst.len(), dst_cols)?;
        if r != rd || offset + src_cols > dst_cols {
            return Err(Error::shape(op, format!("src [{r}, {src_cols}] at column {offset} of dst [{rd}, {dst_cols}]")));
        }
        if r == 0 {
            return Ok(());
        }
        let f = self.function("copy", op)?;
        let cfg = LaunchConfig { grid_dim: (r as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let (cs, cd, off) = (src_cols as u32, dst_cols as u32, offset as u32);
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(src).arg(&cs).arg(dst).arg(&cd).arg(&off);
        // SAFETY: concat_cols(const u16* src, u32 Cs, u16* dst, u32 Cd, u32 offset) copies row r
        // (r < R = grid) of Cs elements to dst[r*Cd + offset, +Cs), inside dst because
        // offset + Cs <= Cd (checked); src and dst are distinct borrows.
        self.launched(op, format!("src [{r}, {src_cols}] into dst [{r}, {dst_cols}] at {offset}"), unsafe { launch.launch(cfg) })?;
        Ok(())
    }
}
