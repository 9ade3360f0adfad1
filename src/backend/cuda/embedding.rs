//! Token embedding gather with image feature rows scattered in: `kernels/embedding.cu`.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{rows_of, CudaDevice};
use crate::error::{Error, Result};

const BLOCK: u32 = 128;

impl CudaDevice {
    /// out[T, C] (C = `hidden`): row t is a bit-exact copy of `table[s]` when s = `sources[t]` < V,
    /// or of `features[s - V]` when V <= s < V + K, where table is [V, C] and features [K, C]
    /// (`None`: K = 0). Build `sources` from token ids with
    /// [`crate::backend::cpu::embedding_sources`] (it checks the ids on the host). A source out of
    /// range fills its row with bf16 NaN and, when `oob` is given (a u32 on the device), sets
    /// `oob[0] = 1`; the kernel never clears it. Reference: [`crate::backend::cpu::embedding`].
    pub fn embedding(
        &self,
        table: &CudaView<'_, u16>,
        hidden: usize,
        features: Option<&CudaView<'_, u16>>,
        sources: &CudaView<'_, u32>,
        out: &mut CudaViewMut<'_, u16>,
        oob: Option<&mut CudaViewMut<'_, u32>>,
    ) -> Result<()> {
        let op = "embedding";
        let v = rows_of(op, "table", table.len(), hidden)?;
        let k = match features {
            Some(f) => rows_of(op, "features", f.len(), hidden)?,
            None => 0,
        };
        let t = sources.len();
        let c = hidden;
        if t.checked_mul(c) != Some(out.len()) || t > i32::MAX as usize {
            return Err(Error::shape(op, format!("{t} sources, C={c}, but out has {} elements", out.len())));
        }
        if oob.as_ref().is_some_and(|o| o.is_empty()) {
            return Err(Error::shape(op, "the oob flag buffer is empty".to_string()));
        }
        if t == 0 {
            return Ok(());
        }
        let f = self.function("embedding", op)?;
        let cfg = LaunchConfig { grid_dim: (t as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let (v64, k64, c32) = (v as u64, k as u64, c as u32);
        let null = 0u64;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(table).arg(&v64);
        match features {
            Some(fe) => launch.arg(fe),
            None => launch.arg(&null),
        };
        launch.arg(&k64).arg(sources).arg(out).arg(&c32);
        match oob {
            Some(o) => launch.arg(o),
            None => launch.arg(&null),
        };
        // SAFETY: embedding(const u16* table, u64 V, const u16* features, u64 K, const u32* sources,
        // u16* out, u32 C, u32* oob) reads sources[0, T) (T = grid size), copies rows of C from
        // table[0, V*C) or features[0, K*C) (features null only when K = 0; out-of-range sources
        // are not read from), writes out[0, T*C) and oob[0] (null when absent): all within the
        // views (checked above). out and oob are distinct &mut views.
        self.launched(op, format!("table [{v}, {c}], features [{k}, {c}], {t} sources"), unsafe { launch.launch(cfg) })?;
        Ok(())
    }

    /// The embedding table's gradient: dw[ids[t]] += dx[t] (dw f32 [V, C], dx bf16 [T, C]) for every
    /// row t whose id is below V; rows with an id >= V (image feature rows) get nothing. The rows
    /// are grouped by id on the host (`ids` is the host's), so that each table row is summed by
    /// one block in row order: no atomics, the same bits on every run.
    /// Reference: [`crate::backend::cpu::embedding_backward`].
    pub fn embedding_backward(&self, dx: &CudaView<'_, u16>, ids: &[u32], dw: &mut CudaViewMut<'_, f32>, hidden: usize) -> Result<()> {
        let op = "embedding_backward";
        let c = hidden;
        let t = rows_of(op, "dx", dx.len(), c)?;
        let v = rows_of(op, "dw", dw.len(), c)?;
        if ids.len() != t {
            return Err(Error::shape(op, format!("dx [{t}, {c}] but {} ids", ids.len())));
        }
        let mut by_id: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
        for (row, &id) in ids.iter().enumerate() {
            if (id as usize) < v {
                by_id.entry(id).or_default().push(row as u32);
            }
        }
        if by_id.is_empty() {
            return Ok(());
        }
        let (mut rows, mut starts, mut uniq) = (Vec::with_capacity(t), vec![0u32], Vec::with_capacity(by_id.len()));
        for (id, r) in by_id {
            uniq.push(id);
            rows.extend(r);
            starts.push(rows.len() as u32);
        }
        let (rows_d, starts_d, ids_d) = (self.htod(&rows)?, self.htod(&starts)?, self.htod(&uniq)?);
        let f = self.function("embedding", op)?;
        let cfg = LaunchConfig { grid_dim: (uniq.len() as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let c32 = c as u32;
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(dx).arg(&*rows_d).arg(&*starts_d).arg(&*ids_d).arg(dw).arg(&c32);
        // SAFETY: embedding_backward(const u16* dx, const u32* rows, const u32* starts, const u32*
        // ids, float* dw, u32 C): block u < U (grid size) reads starts[u], starts[u + 1] (U + 1
        // uploaded), rows[starts[u], starts[u + 1]) (< T, rows of dx [T, C]), ids[u] (< V, rows
        // of dw [V, C]), and adds to dw's row ids[u] (distinct per block); dw is a &mut view.
        self.launched(op, format!("dx [{t}, {c}] -> dw [{v}, {c}] f32, {} ids", uniq.len()), unsafe { launch.launch(cfg) })?;
        Ok(())
    }
}
