//! The backend boundary: one small set of ops that every model's inference path is written
//! against ([`Backend`]), implemented on the CPU ([`Cpu`], f32, the reference) and on CUDA
//! (`cuda::Cuda`, feature `cuda`: bf16 weights and activations, f32 accumulation). Model code
//! calls these ops and never matches on the device.
//!
//! `cpu` also holds the reference ops themselves (plain functions on slices) that the CPU backend
//! and the training code call and that every CUDA kernel is tested against; `cuda` holds the GPU
//! kernels' launch wrappers. One name per op everywhere: `backend::cpu::rmsnorm`,
//! `kernels/rmsnorm.cu`, `backend::cuda::rmsnorm`.
//!
//! Shapes: activations are matrices [R, C] (rows = tokens of every sequence stacked). Weights are
//! loaded through a [`WeightSource`] as f32 and converted once to the backend's storage.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod profile;
pub mod shapes;

pub use cpu::engine::Cpu;
pub use cpu::AttnRow;
pub use cpu::PackedMask;

use crate::error::Result;
use crate::tensor::Tensor;
use crate::weights::WeightSource;

/// Where a command runs: `cpu`, or `cuda` / `cuda:N` (GPU N; needs a build with `--features
/// cuda`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device `{s}`: expected cpu, cuda or cuda:N")),
        }
    }
}

/// A matrix view of a backend tensor.
pub trait Rows {
    /// R: rows (the leading dimensions folded).
    fn n_rows(&self) -> usize;
    /// C: elements per row.
    fn n_cols(&self) -> usize;
}

impl Rows for Tensor {
    fn n_rows(&self) -> usize {
        self.rows_cols().0
    }
    fn n_cols(&self) -> usize {
        self.rows_cols().1
    }
}

/// The ops of the inference path. All methods check shapes and name the op in their errors.
/// Ops are issued in order; a backend may run them asynchronously (CUDA), in which case only the
/// methods that return host data (`argmax`, `download`, `logits_host`) wait.
pub trait Backend: Clone + Send + Sync + 'static {
    /// Activations and non-matrix parameters, [R, C] (or [C]).
    type Tensor: Rows + Clone;
    /// A linear layer: weight [N, K] (HF's [out, in]) and an optional bias [N]. On the CPU this is
    /// [`crate::nn::Linear`], which may carry a LoRA adapter.
    type Linear;
    type RmsNorm;
    type LayerNorm;
    /// The rotary embedding's frequencies for one head dim and theta.
    type Rope;
    /// f32 logits [B, V].
    type Logits: Rows;

    /// A short description for logs ("cpu", "cuda:0 NVIDIA H100 80GB HBM3").
    fn describe(&self) -> String;

    // ---- weights and transfers

    /// A host tensor on this backend.
    fn upload(&self, x: &Tensor) -> Result<Self::Tensor>;
    /// Back to the host as f32, with shape [R, C].
    fn download(&self, x: &Self::Tensor) -> Result<Tensor>;
    /// A [rows, cols] tensor of zeros.
    fn zeros(&self, rows: usize, cols: usize) -> Result<Self::Tensor>;
    fn linear_from(&self, weight: Tensor, bias: Option<Tensor>) -> Result<Self::Linear>;
    fn rmsnorm_from(&self, weight: Tensor, eps: f64) -> Result<Self::RmsNorm>;
    fn layernorm_from(&self, weight: Tensor, bias: Tensor, eps: f64) -> Result<Self::LayerNorm>;
    fn rope_table(&self, head_dim: usize, theta: f64) -> Result<Self::Rope>;

    /// `name` [shape...] from the checkpoint.
    fn tensor(&self, ws: &dyn WeightSource, name: &str, shape: &[usize]) -> Result<Self::Tensor> {
        self.upload(&ws.get(name, shape)?)
    }
    /// `{prefix}.weight` [out, in] and, if `bias`, `{prefix}.bias` [out].
    fn linear(&self, ws: &dyn WeightSource, prefix: &str, in_features: usize, out_features: usize, bias: bool) -> Result<Self::Linear> {
        let w = ws.get(&format!("{prefix}.weight"), &[out_features, in_features])?;
        let b = if bias { Some(ws.get(&format!("{prefix}.bias"), &[out_features])?) } else { None };
        self.linear_from(w, b)
    }
    fn rmsnorm_weights(&self, ws: &dyn WeightSource, name: &str, c: usize, eps: f64) -> Result<Self::RmsNorm> {
        self.rmsnorm_from(ws.get(&format!("{name}.weight"), &[c])?, eps)
    }
    fn layernorm_weights(&self, ws: &dyn WeightSource, name: &str, c: usize, eps: f64) -> Result<Self::LayerNorm> {
        self.layernorm_from(ws.get(&format!("{name}.weight"), &[c])?, ws.get(&format!("{name}.bias"), &[c])?, eps)
    }

    // ---- ops

    /// y[R, N] = x[R, K] W^T (+ bias).
    fn matmul(&self, x: &Self::Tensor, l: &Self::Linear) -> Result<Self::Tensor>;
    /// acc[R, N] += x[R, K] W^T (+ bias): the residual add fused into the product.
    fn matmul_add(&self, x: &Self::Tensor, l: &Self::Linear, acc: &mut Self::Tensor) -> Result<()>;
    fn rmsnorm(&self, x: &Self::Tensor, n: &Self::RmsNorm) -> Result<Self::Tensor>;
    fn layernorm(&self, x: &Self::Tensor, n: &Self::LayerNorm) -> Result<Self::Tensor>;
    /// RoPE in place on q[R, H*D] and k[R, Hkv*D]; row r at absolute position `positions[r]`.
    fn rope(&self, q: &mut Self::Tensor, k: &mut Self::Tensor, n_heads: usize, n_kv_heads: usize, positions: &[u32], rope: &Self::Rope) -> Result<()>;
    /// Attention of q[N, H*D] over the caches k, v [S*cap, Hkv*D] (S slots of `cap` rows), each
    /// query row with its slot and key range (see [`AttnRow`]). -> [N, H*D].
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        rows: &[AttnRow],
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        cap: usize,
    ) -> Result<Self::Tensor>;
    /// Self-attention of packed sequences, each over itself only (no cache): q[Ttot, H*D],
    /// k, v[Ttot, Hkv*D] hold the sequences row after row (sequence b: `lens[b]` rows, Ttot their
    /// sum), `mask` applies per sequence on sequence-local positions (see [`PackedMask`]). -> [Ttot,
    /// H*D]. The decoder's fresh prefill (causal) and the vision tower (bidirectional) use it; on
    /// CUDA it is the tensor-core FlashAttention-2 forward (head dims 64, 128; the slotted-cache
    /// kernel for others). Scores scaled by 1/sqrt(D), as [`Backend::attention`].
    #[allow(clippy::too_many_arguments)]
    fn attention_packed(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        lens: &[usize],
        mask: PackedMask,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<Self::Tensor>;
    /// dst[idx[i]] = src[i] for every row i of src (rows of equal width).
    fn scatter_rows(&self, src: &Self::Tensor, dst: &mut Self::Tensor, idx: &[u32]) -> Result<()>;
    /// out[T, C]: row t = table[s] when s = sources[t] < V, else features[s - V] (the embedding
    /// kernel's scheme; see `cpu::embedding`). Also the general row gather (features `None`).
    fn embedding(&self, table: &Self::Tensor, features: Option<&Self::Tensor>, sources: &[u32]) -> Result<Self::Tensor>;
    /// silu(gate) * up.
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;
    /// `gelu`, `quick_gelu` or `silu`, in place.
    fn activation(&self, name: &str, x: &mut Self::Tensor) -> Result<()>;
    /// x[R, C] += y[P, C], y's rows repeating over x's (R a multiple of P).
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// Rows stacked: [sum R_i, C].
    fn concat_rows(&self, parts: &[&Self::Tensor]) -> Result<Self::Tensor>;
    /// Columns side by side: [R, sum C_i].
    fn concat_cols(&self, parts: &[&Self::Tensor]) -> Result<Self::Tensor>;
    /// f32 logits [R, V] = hidden[R, C] W^T for the lm_head (or tied embedding) W [V, C].
    fn logits(&self, hidden: &Self::Tensor, weight: &Self::Tensor) -> Result<Self::Logits>;
    /// The first maximum of every row (torch.argmax), on the host.
    fn argmax(&self, logits: &Self::Logits) -> Result<Vec<u32>>;
    /// One token per row, sampled as HF's `generate` does (temperature > 0, then top-k (0: off),
    /// then top-p (1: off)), row b inverting its CDF at `uniforms[b]` in [0, 1) (see
    /// `cpu::sample_row`); on the host.
    fn sample(&self, logits: &Self::Logits, temperature: f32, top_k: usize, top_p: f32, uniforms: &[f64]) -> Result<Vec<u32>>;
    fn logits_host(&self, logits: &Self::Logits) -> Result<Tensor>;

    // ---- profiling

    /// Start (or stop) timing every op; starting clears what was recorded.
    fn set_profiling(&self, _on: bool) {}
    /// The time per op since profiling started (waits for the device).
    fn take_profile(&self) -> Result<Vec<profile::OpTime>> {
        Ok(Vec::new())
    }
    /// Open a named range around a group of ops (NVTX on CUDA, so Nsight shows the structure:
    /// each layer, the vision tower, prefill, each decode step). Ranges nest; close with
    /// [`Backend::range_pop`].
    fn range_push(&self, _name: &str) {}
    fn range_pop(&self) {}
}
