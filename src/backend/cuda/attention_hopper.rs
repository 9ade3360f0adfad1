//! The Hopper forward of the training / prefill attention (`kernels/attention_hopper.cu`): the
//! semantics and outputs of [`CudaDevice::attention_fwd`] (out bf16 `[Ttot, H, D]`, lse f32
//! `[H, Ttot]`, every mask of [`AttnTrainMask`], GQA, D 64 and 128) on wgmma tensor cores, with
//! K/V tiles copied by the TMA engine into a shared-memory ring and warp specialisation (one
//! producer warp, two consumer warpgroups). sm_90a only.
//!
//! Which kernel [`CudaDevice::attention_fwd`] runs is [`AttnFwdKernel`]: the environment variable
//! `STIC_ATTENTION=mma|hopper|auto` (read once per process; `auto` when unset), or an explicit
//! choice through [`CudaDevice::attention_fwd_kernel`] (the checks and benches run both).
//! `auto` takes the Hopper kernel on compute capability 9.x when q, k and v start on 16-byte
//! boundaries (the TMA needs it) and Ttot + 128 fits an i32 (TMA coordinates); otherwise the
//! sm_80 kernel. `hopper` is an error where those conditions do not hold.

use std::sync::OnceLock;

use cudarc::driver::sys;
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};

use super::attention_train::{AttnTrainMask, VarlenAttn};
use super::{cuda_err, CudaDevice};
use crate::error::{Error, Result};

/// The forward kernel of [`CudaDevice::attention_fwd_kernel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnFwdKernel {
    /// The Hopper kernel where it can run (compute capability 9.x, aligned inputs), else `Mma`.
    Auto,
    /// The sm_80 mma.sync kernel (`kernels/attention_train.cu`), on any supported GPU.
    Mma,
    /// The Hopper kernel (`kernels/attention_hopper.cu`); an error where it cannot run.
    Hopper,
}

impl AttnFwdKernel {
    /// `mma`, `hopper` or `auto` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Some(AttnFwdKernel::Auto),
            "mma" => Some(AttnFwdKernel::Mma),
            "hopper" => Some(AttnFwdKernel::Hopper),
            _ => None,
        }
    }

    /// The choice of `STIC_ATTENTION` (read once per process), `Auto` when it is unset; an
    /// error naming the variable when it holds anything but `mma`, `hopper` or `auto`.
    pub fn from_env() -> Result<Self> {
        static CHOICE: OnceLock<std::result::Result<AttnFwdKernel, String>> = OnceLock::new();
        CHOICE
            .get_or_init(|| match std::env::var("STIC_ATTENTION") {
                Err(std::env::VarError::NotPresent) => Ok(AttnFwdKernel::Auto),
                Err(std::env::VarError::NotUnicode(v)) => Err(format!("{v:?}")),
                Ok(v) => AttnFwdKernel::parse(&v).ok_or(v),
            })
            .clone()
            .map_err(|v| Error::Input(format!("STIC_ATTENTION={v}: expected mma, hopper or auto")))
    }
}

/// Threads per block of the Hopper kernel (`HP_THREADS`: a producer and two consumer warpgroups).
const HP_THREADS: u32 = 384;
/// Query rows per block and keys per tile (`HP_BM`, `HP_BN`); also the TMA box's rows.
const HP_TILE: usize = 128;
/// Columns of one TMA box (64 bf16 = 128 bytes, the 128-byte swizzle's row).
const HP_BOX_COLS: usize = 64;

/// K/V ring depth of the kernel for head dim `d` (the template argument in the .cu file).
fn hopper_stages(d: usize) -> usize {
    if d == 128 {
        2
    } else {
        3
    }
}

/// Dynamic shared memory of the Hopper kernel for head dim `d` (`HopperSmem<D, STAGES>::BYTES`):
/// alignment slack, Q and STAGES x (K, V) tiles of 128 rows x D bf16, 2 STAGES + 2 mbarriers.
/// 164,912 bytes at D = 128, 115,776 at D = 64 (H100 allows 227 KiB per block).
fn hopper_smem_bytes(d: usize) -> usize {
    let s = hopper_stages(d);
    1024 + (1 + 2 * s) * HP_TILE * d * 2 + 8 * (2 * s + 2)
}

/// A `CUtensorMap` (128 bytes, 128-byte aligned) passed by value as a `__grid_constant__` kernel
/// parameter.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct TensorMap(sys::CUtensorMap);

// SAFETY: plain bytes, the exact layout of the kernel's `const __grid_constant__ CUtensorMap`
// parameter (cudarc's CUtensorMap_st mirrors cuda.h's: 16 u64, 128-byte aligned).
unsafe impl DeviceRepr for TensorMap {}

/// The 2-D tensor map of a bf16 matrix [rows][cols] at device address `ptr` (row-major, rows
/// `cols * 2` bytes apart) read in boxes of 128 rows x 64 columns with the 128-byte swizzle,
/// rows past the end zero-filled. Preconditions (checked by the caller): `ptr` 16-byte aligned,
/// `cols` a multiple of 64, 1 <= rows < 2^31.
fn bf16_tensor_map(op: &'static str, what: &str, ptr: sys::CUdeviceptr, rows: usize, cols: usize) -> Result<TensorMap> {
    let dims: [u64; 2] = [cols as u64, rows as u64];
    let strides: [u64; 1] = [(cols * 2) as u64];
    let boxes: [u32; 2] = [HP_BOX_COLS as u32, HP_TILE as u32];
    let elem: [u32; 2] = [1, 1];
    // SAFETY: CUtensorMap is plain bytes; zeroed is a valid (if meaningless) value that the call
    // overwrites.
    let mut map: sys::CUtensorMap = unsafe { std::mem::zeroed() };
    // SAFETY: every pointer refers to a live local array of the length the rank (2) implies
    // (globalStrides has rank - 1 entries); the encoding only reads them and writes `map`.
    // cudarc panics when the driver lacks the symbol (a driver before CUDA 12): an error instead.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }))
    .map_err(|_| cuda_err(op, format!("{what} [{rows}, {cols}] bf16"), "the CUDA driver has no cuTensorMapEncodeTiled"))?;
    r.result().map_err(|e| cuda_err(op, format!("cuTensorMapEncodeTiled of {what} [{rows}, {cols}] bf16"), e))?;
    Ok(TensorMap(map))
}

/// The most tensor maps a device keeps; beyond it the cache starts over (a training run sees a
/// few buffers per layer and packed length, so this is rarely reached).
const TENSOR_MAP_CACHE: usize = 1024;

impl CudaDevice {
    /// [`bf16_tensor_map`], encoded once per (address, rows, cols) and then taken from the
    /// device's cache (`CudaDevice::tensor_maps`).
    fn bf16_tensor_map(&self, op: &'static str, what: &str, ptr: sys::CUdeviceptr, rows: usize, cols: usize) -> Result<TensorMap> {
        let key = (ptr, rows, cols);
        let mut cache = self.tensor_maps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = cache.get(&key) {
            return Ok(TensorMap(*m));
        }
        let m = bf16_tensor_map(op, what, ptr, rows, cols)?;
        self.tensor_map_encodes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if cache.len() >= TENSOR_MAP_CACHE {
            cache.clear();
        }
        cache.insert(key, m.0);
        Ok(m)
    }

    /// Whether this device can run the Hopper attention kernel (compute capability 9.x: H100,
    /// H200; the kernel file carries sm_90a code).
    pub fn attention_hopper_available(&self) -> bool {
        self.compute_capability().0 == 9
    }

    /// Why the Hopper kernel cannot run these inputs, or `None` when it can.
    fn attention_hopper_unfit(&self, q: &CudaView<'_, u16>, k: &CudaView<'_, u16>, v: &CudaView<'_, u16>, batch: &VarlenAttn<'_>) -> Option<String> {
        let (major, minor) = self.compute_capability();
        if major != 9 {
            return Some(format!("the Hopper kernel needs compute capability 9.x (this device is sm_{major}{minor})"));
        }
        if !super::attention_train::attention_train_head_dim_supported(batch.head_dim) {
            return Some(format!("head dim D={} (the Hopper kernel takes 64 and 128)", batch.head_dim));
        }
        let stream = self.stream();
        let (pq, _sq) = q.device_ptr(stream);
        let (pk, _sk) = k.device_ptr(stream);
        let (pv, _sv) = v.device_ptr(stream);
        if (pq | pk | pv) % 16 != 0 {
            return Some("q, k and v must start on 16-byte boundaries for the TMA".into());
        }
        let rows = q.len().checked_div(batch.n_heads * batch.head_dim).unwrap_or(0);
        if rows + HP_TILE >= i32::MAX as usize {
            return Some(format!("Ttot={rows} rows exceed the TMA's i32 coordinates"));
        }
        None
    }

    /// [`Self::attention_fwd`] on the kernel `kernel` ([`AttnFwdKernel::Auto`]: as
    /// `STIC_ATTENTION=auto`). [`AttnFwdKernel::Hopper`] returns an error where the Hopper kernel
    /// cannot run (not compute capability 9.x, q/k/v not 16-byte aligned).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_fwd_kernel(
        &self,
        kernel: AttnFwdKernel,
        q: &CudaView<'_, u16>,
        k: &CudaView<'_, u16>,
        v: &CudaView<'_, u16>,
        batch: &VarlenAttn<'_>,
        out: &mut CudaViewMut<'_, u16>,
        lse: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        match kernel {
            AttnFwdKernel::Mma => self.attention_fwd_mma(q, k, v, batch, out, lse),
            AttnFwdKernel::Hopper => self.attention_fwd_hopper(q, k, v, batch, out, lse),
            AttnFwdKernel::Auto => {
                if self.attention_hopper_unfit(q, k, v, batch).is_none() {
                    self.attention_fwd_hopper(q, k, v, batch, out, lse)
                } else {
                    self.attention_fwd_mma(q, k, v, batch, out, lse)
                }
            }
        }
    }

    /// [`Self::attention_fwd`] on the Hopper kernel (`kernels/attention_hopper.cu`).
    pub(crate) fn attention_fwd_hopper(
        &self,
        q: &CudaView<'_, u16>,
        k: &CudaView<'_, u16>,
        v: &CudaView<'_, u16>,
        batch: &VarlenAttn<'_>,
        out: &mut CudaViewMut<'_, u16>,
        lse: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let op = "attention_fwd_hopper";
        let shapes = || batch.fwd_shapes(q.len(), k.len(), v.len(), out.len(), lse.len());
        let dims = batch.check_fwd(op, q.len(), k.len(), v.len(), out.len(), lse.len())?;
        if let Some(why) = self.attention_hopper_unfit(q, k, v, batch) {
            return Err(cuda_err(op, shapes(), why));
        }
        if dims.t == 0 || dims.b == 0 {
            return Ok(());
        }
        let (h, hkv, d) = (batch.n_heads, batch.n_kv_heads, batch.head_dim);
        let msg = shapes();
        let stream = self.stream();
        let (pq, _sq) = q.device_ptr(stream);
        let (pk, _sk) = k.device_ptr(stream);
        let (pv, _sv) = v.device_ptr(stream);
        let tm_q = self.bf16_tensor_map(op, "q", pq, dims.t, h * d)?;
        let tm_k = self.bf16_tensor_map(op, "k", pk, dims.t, hkv * d)?;
        let tm_v = self.bf16_tensor_map(op, "v", pv, dims.t, hkv * d)?;

        let (func, smem) = (if d == 64 { "attention_fwd_hopper_d64" } else { "attention_fwd_hopper_d128" }, hopper_smem_bytes(d));
        let f = self.function_with_smem(op, "attention_hopper", func, smem)?;
        let grid = (batch.max_seqlen.div_ceil(HP_TILE).min(i32::MAX as usize) as u32, h as u32, dims.b as u32);
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (HP_THREADS, 1, 1), shared_mem_bytes: smem as u32 };
        let (t32, h32, hkv32) = (dims.t as u32, h as u32, hkv as u32);
        let sp = match batch.mask {
            AttnTrainMask::SharedPrefix { pairs } => pairs,
            _ => batch.cu_seqlens,
        };
        let mut launch = stream.launch_builder(&f);
        launch.arg(&tm_q).arg(&tm_k).arg(&tm_v).arg(batch.cu_seqlens).arg(sp).arg(out).arg(lse);
        launch.arg(&t32).arg(&h32).arg(&hkv32).arg(&dims.causal).arg(&dims.window).arg(&dims.has_sp).arg(&batch.scale);
        // SAFETY: attention_fwd_hopper_d{64,128}(CUtensorMap tm_q, tm_k, tm_v (by value), const
        // u32* cu, const u32* sp, u16* out, float* lse, u32 T, u32 H, u32 Hkv, u32 causal, u32
        // window, u32 has_sp, float scale), grid (ceil(max_seqlen/128), H, B), block 384, the
        // dynamic shared memory it checks for (attribute raised above). The tensor maps cover
        // exactly q [T, H*D] and k, v [T, Hkv*D] (T*H*D and T*Hkv*D elements, checked), whose
        // device pointers are held (`_sq`, `_sk`, `_sv`) until the launch is enqueued; the TMA
        // never reads outside them (out-of-bound rows are zero-filled). Block (x, h, b) reads
        // cu[b], cu[b + 1] (B + 1 elements checked), sp[2b], sp[2b + 1] only when has_sp (2B
        // checked), and writes rows of sequence b clamped to [0, T) of out (T*H*D) and lse (H*T).
        // out and lse are distinct &mut views, overlapping no input.
        self.launched(op, msg, unsafe { launch.launch(cfg) })?;
        Ok(())
    }
}
