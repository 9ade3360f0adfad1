//! The CUDA backend (feature `cuda`): hand-written kernels from `kernels/*.cu`, compiled by
//! `build.rs` with nvcc into fatbins (SASS for sm_80 and sm_90a, compute_90 PTX) that are
//! embedded in the binary and loaded at run time through cudarc's driver API.
//!
//! The CUDA driver (`libcuda.so`) is loaded dynamically, so a `cuda` build links and runs on a
//! machine without a GPU or a driver: [`cuda_available`] is then false and [`CudaDevice::new`]
//! returns an error instead of panicking.
//!
//! Layout: `device.rs` owns the context, the stream and the loaded modules; one file per kernel
//! family adds the typed launch methods on [`CudaDevice`], each checking its shapes (an
//! [`crate::Error::Shape`] naming the op and the shapes) and turning driver errors into
//! [`crate::Error::Cuda`] with the op name and the shapes:
//!
//! | file | methods | kernel file |
//! |---|---|---|
//! | `cast.rs` | `cast_bf16_to_f32(_into)`, `cast_f32_to_bf16(_into)` | `kernels/cast.cu` |
//! | `rmsnorm.rs` | `rmsnorm`, `rmsnorm_residual`, `rmsnorm_backward` (dx; + dw by `rmsnorm_dw` when the norm trains) | `kernels/rmsnorm.cu` |
//! | `layernorm.rs` | `layernorm`, `layernorm_backward` (dx; + dw, db by `layernorm_dwdb` when the norm trains) | `kernels/layernorm.cu` |
//! | `rope.rs` | `rope_inv_freq`, `rope`, `rope_qk` | `kernels/rope.cu` |
//! | `activation.rs` | `silu`, `gelu`, `quick_gelu`, `activation`, `swiglu`, `swiglu_fused` | `kernels/activation.cu` |
//! | `embedding.rs` | `embedding`, `embedding_backward` (the table's gradient, rows grouped by id on the host) | `kernels/embedding.cu` |
//! | `sample.rs` | `argmax_f32`, `argmax_bf16`, `sample` (kernel `sample_f32`: temperature, top-k, top-p) | `kernels/sample.cu` |
//! | `attention.rs` | `attention`, `attention_with_max_len` (fused forward over a slotted KV cache, GQA, a key range per row; split-KV flash-decoding `attention_split` + `attention_combine` when few rows have long ranges) | `kernels/attention.cu` |
//! | `attention_train.rs` | `attention_fwd`, `attention_bwd` (tensor-core FlashAttention-2 over a packed varlen batch: causal / window / DPO shared-prefix masks, GQA, D 64 and 128, lse) | `kernels/attention_train.cu` |
//! | `attention_hopper.rs` | `attention_fwd_kernel` (picks the forward kernel: `STIC_ATTENTION=mma\|hopper\|auto`), `attention_hopper_available`; the Hopper forward (wgmma + TMA, warp-specialised, sm_90a) | `kernels/attention_hopper.cu` |
//! | `matmul.rs` | `matmul` (bf16 x bf16 -> bf16 or f32, + bias, + y), `matmul_nn` (w [K, N], no transpose), `matmul_tn` (x [K, M] transposed: weight gradients) | cuBLASLt (`libcublasLt`, loaded on first use) |
//! | `lora.rs` | `lora_fwd`, `lora_bwd` (LoRA linear layer, optionally under LoRA dropout: strided f32 GEMMs `lora_gemm_*`, the rounding epilogue, split-K reduce; the base GEMM is cuBLASLt's) | `kernels/lora.cu` |
//! | `logprob.rs` | `logprob(_chunked)`, `logprob_backward(_chunked)`, `logprob_backward_dw` (+ lm_head's dW) (lm_head + log-softmax + target gather over vocabulary chunks: `logprob_fold`, `logprob_dlogits`, GEMMs by cuBLASLt) | `kernels/logprob.cu` |
//! | `copy.rs` | `scatter_rows`, `concat_cols` | `kernels/copy.cu` |
//! | `add.rs` | `add` | `kernels/add.cu` |
//! | `adamw.rs` | `adamw` (one fused step over every trainable tensor, with a gradient scale), `grad_sumsq` (the clipping norm) | `kernels/adamw.cu` |
//! | `dpo.rs` | `dpo` (DPO / STIC loss, rewards and d loss / d logp per token, over a batch of pairs) | `kernels/dpo.cu` |
//! | `dropout.rs` | `dropout`, `dropout_add` (LoRA dropout with the CPU's SplitMix64 masks) | `kernels/dropout.cu` |
//!
//! `engine.rs` is [`Cuda`], the [`crate::backend::Backend`] built from these methods: the model
//! code runs on it unchanged.
//!
//! `check/` holds the parity checks against the CPU reference that both `tests/cuda_parity.rs`
//! and `stic check` run. Every tensor argument is a view (`&CudaView` in, `&mut CudaViewMut` out
//! or in place), so ops work on parts of larger buffers; bf16 is `u16` bits.

mod activation;
mod adamw;
mod add;
mod attention;
mod attention_hopper;
mod attention_train;
mod cast;
pub mod check;
mod copy;
mod dpo;
mod dropout;
mod device;
mod embedding;
mod emu;
pub mod nvtx;
mod engine;
mod layernorm;
mod logprob;
mod lora;
mod matmul;
mod pool;
mod rmsnorm;
mod rope;
mod sample;
mod staging;
mod workspace;

pub use attention::{attention_split_chunk, attention_splits, ATTENTION_SPLITS_MAX};
pub use attention_train::{AttnTrainMask, VarlenAttn};
pub use attention_hopper::AttnFwdKernel;
pub use adamw::AdamWTensor;
pub use dpo::DpoSpans;
pub use dropout::Dropout;
pub use device::{cuda_available, emulated, CudaDevice};
pub use emu::{launch_count as emulated_launch_count, set_async_faults as emulated_async_faults};
pub use engine::{Cuda, CudaLinear, CudaLogits, CudaTensor};
pub use logprob::LOGPROB_CHUNK;
pub use lora::LORA_MAX_RANK;
pub use matmul::{MatmulOut, MatmulPlanStats, MATMUL_PLAN_CACHE_CAPACITY};
pub use pool::DevBuf;

/// Device buffers and related cudarc types, re-exported so that callers need no direct
/// dependency on cudarc. bf16 data lives in `CudaSlice<u16>` (the raw bits, as `half::bf16::to_bits`).
pub use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr};

/// The embedded kernel images, generated by `build.rs` into `$OUT_DIR/kernels.rs`.
pub mod kernels {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

    /// The fatbin of the kernel file `kernels/<name>.cu`, if there is one.
    pub fn fatbin(name: &str) -> Option<&'static [u8]> {
        KERNELS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }
}

use crate::error::{Error, Result};

/// A driver (or launch) error in `op`, with the shapes involved in `shapes`.
pub(crate) fn cuda_err(op: &str, shapes: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Cuda { op: op.to_string(), msg: format!("{shapes}: {e}") }
}

/// The row count T of a tensor of `len` elements made of rows of `c` (the leading dims folded),
/// for the one-block-per-row kernels: `c` must be positive and fit a u32, `len` a multiple of it,
/// and T a grid dimension (< 2^31).
pub(crate) fn rows_of(op: &'static str, what: &str, len: usize, c: usize) -> Result<usize> {
    if c == 0 || c > u32::MAX as usize {
        return Err(Error::shape(op, format!("{what}: row length C={c} must be in 1..=2^32-1")));
    }
    if !len.is_multiple_of(c) {
        return Err(Error::shape(op, format!("{what} has {len} elements, not a multiple of C={c}")));
    }
    let rows = len / c;
    if rows > i32::MAX as usize {
        return Err(Error::shape(op, format!("{what} [{rows}, {c}]: more than 2^31-1 rows")));
    }
    Ok(rows)
}

/// Launch config of the one-block-per-row kernels (rmsnorm, layernorm): `rows` blocks of
/// min(256, max(32, per-row work items rounded up to 32)) threads, where a thread's work item is a
/// 16-byte vector (8 bf16) when C % 8 == 0, else one element. The kernels accept any block size
/// that is a multiple of 32 up to 1024, and take the scalar path if the data is not aligned.
pub(crate) fn row_config(rows: usize, c: usize) -> cudarc::driver::LaunchConfig {
    let items = if c.is_multiple_of(8) { c / 8 } else { c };
    let block = (items.div_ceil(32) * 32).clamp(32, 256) as u32;
    cudarc::driver::LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}
