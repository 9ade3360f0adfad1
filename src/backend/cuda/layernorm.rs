//! Layer normalisation (CLIP) and its backward: `kernels/layernorm.cu`.

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

    /// dx [T, C] of `layernorm` given x, w and dy; with `dwdb` (f32 [C] each, a norm that trains
    /// in full) also dw += sum_t dy * xhat and db += sum_t dy (`layernorm_dwdb`: one thread per
    /// column, the rows summed in order, no atomics). The bias does not enter dx.
    /// Reference: [`crate::backend::cpu::layernorm_backward`].
    pub fn layernorm_backward(
        &self,
        x: &CudaView<'_, u16>,
        w: &CudaView<'_, u16>,
        dy: &CudaView<'_, u16>,
        eps: f32,
        dx: &mut CudaViewMut<'_, u16>,
        dwdb: Option<(&mut CudaViewMut<'_, f32>, &mut CudaViewMut<'_, f32>)>,
    ) -> Result<()> {
        let op = "layernorm_backward";
        let c = w.len();
        let rows = rows_of(op, "x", x.len(), c)?;
        if dy.len() != x.len() || dx.len() != x.len() {
            return Err(Error::shape(op, format!("x [{rows}, {c}] but dy has {} and dx {} elements", dy.len(), dx.len())));
        }
        if let Some((dw, db)) = dwdb.as_ref().filter(|(dw, db)| dw.len() != c || db.len() != c) {
            return Err(Error::shape(op, format!("x [{rows}, {c}] but dw has {} and db {} elements", dw.len(), db.len())));
        }
        if rows == 0 {
            return Ok(());
        }
        let f = self.function("layernorm", op)?;
        let c32 = c as u32;
        // SAFETY: layernorm_backward writes stats[0, 2T) (two per block) before layernorm_dwdb
        // reads them.
        let mut stats = match dwdb {
            Some(_) => Some(unsafe { self.scratch::<f32>("layernorm_backward.stats", 2 * rows) }?),
            None => None,
        };
        let null = 0u64;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(x).arg(w).arg(dy).arg(&mut *dx).arg(&c32).arg(&eps);
        match stats.as_mut() {
            Some(s) => launch.arg(&mut **s),
            None => launch.arg(&null),
        };
        // SAFETY: layernorm_backward(const u16* x, const u16* w, const u16* dy, u16* dx, u32 C,
        // float eps, float* stats) reads x and dy and writes dx in rows [0, T) of C (T = grid
        // size), reads w[0, C), writes stats[0, 2T) when not null (a scratch of 2T): in bounds
        // (checked above); dx and stats are distinct &mut views.
        self.launched(op, format!("x [{rows}, {c}]"), unsafe { launch.launch(row_config(rows, c)) })?;
        if let (Some((dw, db)), Some(stats)) = (dwdb, stats.as_ref()) {
            let f = self.function("layernorm", "layernorm_dwdb")?;
            let t32 = rows as u32;
            let cfg = cudarc::driver::LaunchConfig { grid_dim: (c.div_ceil(128) as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            let mut launch = self.stream().launch_builder(&f);
            launch.arg(x).arg(dy).arg(&**stats).arg(dw).arg(db).arg(&t32).arg(&c32);
            // SAFETY: layernorm_dwdb(const u16* x, const u16* dy, const float* stats, float* dw,
            // float* db, u32 T, u32 C) reads x and dy [0, T*C), stats [0, 2T), and adds to dw and
            // db [0, C) (threads c >= C return): the checked lengths; dw and db are distinct &mut
            // views.
            self.launched("layernorm_dwdb", format!("x [{rows}, {c}] -> dw, db [{c}] f32"), unsafe { launch.launch(cfg) })?;
        }
        Ok(())
    }
}
