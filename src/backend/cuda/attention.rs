//! Fused attention forward over a slotted KV cache (inference): `kernels/attention.cu`.
//!
//! Two paths with the same results up to f32 rounding: the single-pass kernel `attention` (one
//! block per query row and group of query heads) and split-KV (flash-decoding):
//! `attention_split` cuts every row's key range into `splits` chunks, each block writing its
//! chunk's partial softmax state into an f32 workspace, and `attention_combine` merges them in
//! split order. [`attention_splits`] picks the count from the longest key range, the number of
//! (row, head group) blocks and the SM count; splits = 1 is the single-pass kernel.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::CudaDevice;
use crate::error::{Error, Result};

/// Threads per block of the kernel (`ATTN_THREADS`; it requires exactly this many).
const BLOCK: u32 = 128;
/// The largest head dim the kernel stages (`ATTN_D_MAX`); D must also be a multiple of 8.
const D_MAX: usize = 128;
/// The most query heads one block handles (`ATTN_HB_MAX`).
const HB_MAX: usize = 8;
/// Keys per tile of `attention_split` (`ATTS_TILE`): chunks are whole tiles.
const SPLIT_TILE: usize = 32;
/// The most splits one launch takes (grid z; the workspace is N * H * splits * (D + 2) f32).
pub const ATTENTION_SPLITS_MAX: usize = 1024;
/// The fewest keys per split the heuristic makes (4 tiles): below that the combine's workspace
/// traffic (2 * HB * D * 4 bytes per split) and the fixed cost of a block (q, the first tile's
/// latency) outweigh the extra parallelism.
const MIN_SPLIT_KEYS: usize = 128;
/// Blocks per SM the heuristic aims at: 4 resident blocks (of the 5 that fit an H100 SM) keep
/// about 64 KiB of K/V copies in flight per SM, and the block count is 2-4 waves of one block
/// per SM, so the last partial wave costs little.
const BLOCKS_PER_SM: usize = 4;

/// Keys per split of a row of `len` keys cut into `splits`: ceil(len / splits) rounded up to
/// whole tiles of 32 (the kernels' `split_chunk`). Splits at and after ceil(len / chunk) are
/// empty. `splits` must be positive.
pub fn attention_split_chunk(len: usize, splits: usize) -> usize {
    len.div_ceil(splits).div_ceil(SPLIT_TILE) * SPLIT_TILE
}

/// The split count for rows whose longest key range is `max_len`, `blocks` (row, head group)
/// blocks of the single-pass kernel and `sms` SMs: enough splits for about [`BLOCKS_PER_SM`]
/// blocks per SM, each split at least [`MIN_SPLIT_KEYS`] keys, at most
/// [`ATTENTION_SPLITS_MAX`], and no split of the longest row empty (the count is reduced to
/// ceil(max_len / chunk)). 1 (the single-pass kernel) when the blocks already fill the GPU or
/// the rows are short. Only speed depends on it: the kernels cut each row by its own length.
pub fn attention_splits(max_len: usize, blocks: usize, sms: usize) -> usize {
    let want = (BLOCKS_PER_SM * sms.max(1)).div_ceil(blocks.max(1));
    let s = want.min(max_len / MIN_SPLIT_KEYS).clamp(1, ATTENTION_SPLITS_MAX);
    if s == 1 {
        return 1;
    }
    max_len.div_ceil(attention_split_chunk(max_len, s))
}

/// How [`CudaDevice::attention_impl`] picks the split count.
#[derive(Clone, Copy, Debug)]
enum Splits {
    /// [`attention_splits`] for this longest key range.
    Auto { max_len: usize },
    /// Exactly this many (checks: the multi-split path on short ranges, empty splits).
    Forced(usize),
}

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
    ///
    /// Without a bound on the key ranges this takes `cap` (every valid range is within it) for
    /// the split heuristic; [`CudaDevice::attention_with_max_len`] takes the real longest range.
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
        self.attention_impl(q, k, v, rows, out, n_heads, n_kv_heads, head_dim, cap, scale, Splits::Auto { max_len: cap })
    }

    /// [`CudaDevice::attention`] with `max_len`, the longest key range (kv_end - kv_start) among
    /// the rows, known on the host: it sets the split-KV count (see [`attention_splits`]). Only
    /// the speed depends on it: a wrong bound gives the same results.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_with_max_len(
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
        max_len: usize,
    ) -> Result<()> {
        self.attention_impl(q, k, v, rows, out, n_heads, n_kv_heads, head_dim, cap, scale, Splits::Auto { max_len })
    }

    /// [`CudaDevice::attention`] with exactly `splits` key-range splits (1..=1024; 1 is the
    /// single-pass kernel), for the checks: the split path on short ranges, empty splits.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_forced_splits(
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
        splits: usize,
    ) -> Result<()> {
        self.attention_impl(q, k, v, rows, out, n_heads, n_kv_heads, head_dim, cap, scale, Splits::Forced(splits))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_impl(
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
        splits: Splits,
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
        let splits = match splits {
            Splits::Auto { max_len } => attention_splits(max_len, n * blocks_y, self.num_sms() as usize),
            Splits::Forced(s) if (1..=ATTENTION_SPLITS_MAX).contains(&s) => s,
            Splits::Forced(s) => return Err(Error::shape(op, format!("{}: {s} splits (1..={ATTENTION_SPLITS_MAX})", shapes()))),
        };
        if n == 0 {
            return Ok(());
        }
        let msg = shapes();
        if splits > 1 {
            return self.attention_split(q, k, v, rows, out, (n, h, hkv, d, cap, s, hb), scale, splits, msg);
        }
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
        self.launched(op, msg, unsafe { launch.launch(cfg) })?;
        Ok(())
    }

    /// The split-KV path: `attention_split` into a stream-ordered f32 workspace, then
    /// `attention_combine` into `out`. `dims` = (N, H, Hkv, D, cap, S, HB), checked by the caller.
    #[allow(clippy::too_many_arguments)]
    fn attention_split(
        &self,
        q: &CudaView<'_, u16>,
        k: &CudaView<'_, u16>,
        v: &CudaView<'_, u16>,
        rows: &CudaView<'_, u32>,
        out: &mut CudaViewMut<'_, u16>,
        dims: (usize, usize, usize, usize, usize, usize, usize),
        scale: f32,
        splits: usize,
        msg: String,
    ) -> Result<()> {
        let (n, h, hkv, d, cap, s, hb) = dims;
        let heads = n * h; // = q.len() / D, so it does not overflow
        let ws_len = |per: usize| heads.checked_mul(splits).and_then(|x| x.checked_mul(per));
        let (Some(acc_len), Some(ml_len)) = (ws_len(d), ws_len(2)) else {
            return Err(Error::shape("attention", format!("{msg}: workspace N*H*{splits}*D overflows")));
        };
        // SAFETY (both): attention_split writes, for every valid row with a non-empty range, the
        // entries (i, h, z) of every head h and every non-empty split z < ceil(len / chunk);
        // attention_combine reads exactly those (same rows, same chunk formula) and nothing else.
        let mut ws_acc = unsafe { self.scratch::<f32>("attention_split.acc", acc_len) }?;
        let mut ws_ml = unsafe { self.scratch::<f32>("attention_split.ml", ml_len) }?;
        let (h32, hkv32, d32, cap32, s32, hb32, sp32) = (h as u32, hkv as u32, d as u32, cap as u32, s as u32, hb as u32, splits as u32);
        {
            let f = self.function("attention", "attention_split")?;
            let cfg = LaunchConfig { grid_dim: (n as u32, (h / hb) as u32, sp32), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
            let mut launch = self.stream().launch_builder(&f);
            let (mut acc_v, mut ml_v) = (ws_acc.view_mut(), ws_ml.view_mut());
            launch.arg(q).arg(k).arg(v).arg(rows).arg(&mut acc_v).arg(&mut ml_v);
            launch.arg(&h32).arg(&hkv32).arg(&d32).arg(&cap32).arg(&s32).arg(&hb32).arg(&sp32).arg(&scale);
            // SAFETY: attention_split(const u16* q, const u16* k, const u16* v, const u32* rows,
            // float* ws_acc, float* ws_ml, u32 H, u32 Hkv, u32 D, u32 cap, u32 S, u32 HB,
            // u32 splits, float scale), grid (N, H/HB, splits), block 128: block (i, y, z) reads
            // rows[3i, 3i + 3) and q in [i*H*D + y*HB*D, + HB*D) (N*H*D = q.len(), checked), k and
            // v only in rows [kv_start, kv_end) of slot `slot` after checking on the device that
            // slot < S and kv_start <= kv_end <= cap (within S*cap*Hkv*D = k.len() = v.len()), and
            // writes ws_acc[((i*H + h)*splits + z)*D, + D) and ws_ml[((i*H + h)*splits + z)*2, + 2)
            // for its heads h, within N*H*splits*D and N*H*splits*2 (their lengths). HB divides
            // H/Hkv and is <= 8, D % 8 == 0, D <= 128, splits <= 1024, as the kernel requires.
            self.launched("attention_split", &msg, unsafe { launch.launch(cfg) })?;
        }
        let f = self.function("attention", "attention_combine")?;
        let total = heads * d;
        let n32 = n as u32;
        let mut launch = self.stream().launch_builder(&f);
        let (acc_v, ml_v) = (ws_acc.view(), ws_ml.view());
        launch.arg(rows).arg(&acc_v).arg(&ml_v).arg(out).arg(&n32).arg(&h32).arg(&d32).arg(&cap32).arg(&s32).arg(&sp32);
        // SAFETY: attention_combine(const u32* rows, const float* ws_acc, const float* ws_ml,
        // u16* out, u32 N, u32 H, u32 D, u32 cap, u32 S, u32 splits), grid-stride over the
        // N*H*D = out.len() outputs: element (i, h, d) reads rows[3i, 3i + 3), and for a valid
        // non-empty row ws_ml[((i*H + h)*splits + z)*2, + 2) and ws_acc[((i*H + h)*splits + z)*D + d]
        // for z < ceil(len / chunk) <= splits (written by attention_split, stream-ordered before).
        // out is a distinct &mut view; the workspace is this call's (scratch on loan).
        self.launched("attention_combine", msg, unsafe { launch.launch(self.grid_stride_config(total, 256)) })?;
        Ok(())
    }
}
