//! Fused attention forward over a slotted KV cache (inference): `kernels/attention.cu`.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{cuda_err, CudaDevice};
use crate::error::{Error, Result};

/// Threads per block of the kernel (`ATTN_THREADS`; it requires exactly this many).
const BLOCK: u32 = 128;
/// The largest head dim the kernel stages (`ATTN_D_MAX`); D must also be a multiple of 8.
const D_MAX: usize = 128;
/// The most query heads one block handles (`ATTN_HB_MAX`).
const HB_MAX: usize = 8;

/// Whether the kernel supports head dim `d`: a multiple of 8 in 8..=128 (64, 80, 96, 128 among
/// them).
pub(crate) fn attention_head_dim_supported(d: usize) -> bool {
    d.is_multiple_of(8) && (8..=D_MAX).contains(&d)
}

impl CudaDevice {
    /// out[N, H*D] = attention of q[N, H*D] over k, v [S, cap, Hkv*D]; `rows` is the u32[N*3] image of N AttnRow.
    ///
    /// Query row i reads keys [kv_start, kv_end) of slot `slot` (`rows[3i..3i + 3]`, see
    /// [`crate::backend::cpu::AttnRow`]; `bytemuck::cast_slice` gives the image); query head h
    /// reads kv head h / (H/Hkv); scores are scaled by `scale`, softmax in f32 (online), bf16 bits
    /// in and out. An empty range gives a zero row. The rows live on the device, so they are
    /// checked there: a row outside the cache (slot >= S, kv_start > kv_end or kv_end > cap)
    /// reads nothing and its output row is bf16 NaN (0x7FC0). Supported head dims: multiples of 8
    /// up to 128. Reference: [`crate::backend::cpu::attention_rows`].
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        q: &CudaView<'_, u16>,
        k: &CudaView<'_, u16>,
        v: &CudaView<'_, u16>,
        rows: &CudaView<'_, u32>,
        out: &mut CudaViewMut<'_, u16>,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        cap: usize,
        scale: f32,
    ) -> Result<()> {
        let op = "attention";
        let (h, hkv, d) = (n_heads, n_kv_heads, head_dim);
        let shapes = || {
            format!(
                "q [{}], k [{}], v [{}], rows [{}], out [{}] with H={h} Hkv={hkv} D={d} cap={cap}",
                q.len(),
                k.len(),
                v.len(),
                rows.len(),
                out.len()
            )
        };
        if h == 0 || hkv == 0 || h % hkv != 0 {
            return Err(Error::shape(op, format!("{}: H must be a positive multiple of Hkv", shapes())));
        }
        if !attention_head_dim_supported(d) {
            return Err(Error::shape(op, format!("{}: head dim D={d} is not supported (a multiple of 8 in 8..={D_MAX}, e.g. 64, 80, 96, 128)", shapes())));
        }
        if rows.len() % 3 != 0 {
            return Err(Error::shape(op, format!("{}: rows is not u32[N, 3] (N AttnRow)", shapes())));
        }
        let n = rows.len() / 3;
        if n > i32::MAX as usize || h > u32::MAX as usize {
            return Err(Error::shape(op, format!("{}: N={n} must be below 2^31 and H fit u32", shapes())));
        }
        let qn = n.checked_mul(h).and_then(|x| x.checked_mul(d));
        if qn != Some(q.len()) || qn != Some(out.len()) {
            return Err(Error::shape(op, format!("{}: q and out must be [N={n}, H*D]", shapes())));
        }
        if cap == 0 || cap > i32::MAX as usize {
            return Err(Error::shape(op, format!("{}: cap must be in 1..2^31", shapes())));
        }
        let slot_len = cap.checked_mul(hkv * d).ok_or_else(|| Error::shape(op, format!("{}: cap*Hkv*D overflows", shapes())))?;
        if k.len() % slot_len != 0 || v.len() != k.len() {
            return Err(Error::shape(op, format!("{}: k and v must both be [S, cap, Hkv*D]", shapes())));
        }
        let s = k.len() / slot_len;
        if s > u32::MAX as usize {
            return Err(Error::shape(op, format!("{}: S={s} slots must fit u32", shapes())));
        }
        // Heads per block: the largest divisor of the group size H/Hkv that is at most HB_MAX,
        // so that a block's heads share one kv head.
        let group = h / hkv;
        let hb = (1..=HB_MAX.min(group)).rev().find(|b| group % b == 0).unwrap_or(1);
        let blocks_y = h / hb;
        if blocks_y > 65_535 {
            return Err(Error::shape(op, format!("{}: H/{hb}={blocks_y} head blocks exceed the grid's y limit", shapes())));
        }
        if n == 0 {
            return Ok(());
        }
        let msg = shapes();
        let f = self.function("attention", op)?;
        let cfg = LaunchConfig { grid_dim: (n as u32, blocks_y as u32, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        let (h32, hkv32, d32, cap32, s32, hb32) = (h as u32, hkv as u32, d as u32, cap as u32, s as u32, hb as u32);
        let mut launch = self.stream().launch_builder(&f);
        launch.arg(q).arg(k).arg(v).arg(rows).arg(out).arg(&h32).arg(&hkv32).arg(&d32).arg(&cap32).arg(&s32).arg(&hb32).arg(&scale);
        // SAFETY: attention(const u16* q, const u16* k, const u16* v, const u32* rows, u16* out,
        // u32 H, u32 Hkv, u32 D, u32 cap, u32 S, u32 HB, float scale), grid (N, H/HB), block 128:
        // block (i, y) reads rows[3i, 3i + 3), q and writes out in [i*H*D + y*HB*D, + HB*D)
        // (within N*H*D, checked above), and reads k and v only in rows [kv_start, kv_end) of slot
        // `slot`, after checking on the device that slot < S and kv_start <= kv_end <= cap, i.e.
        // within S*cap*Hkv*D = k.len() = v.len(). HB divides H/Hkv and is <= 8, D % 8 == 0 and
        // D <= 128 as the kernel requires. out is a distinct &mut view, so it overlaps no input.
        unsafe { launch.launch(cfg) }.map_err(|e| cuda_err(op, msg, e))?;
        Ok(())
    }
}
