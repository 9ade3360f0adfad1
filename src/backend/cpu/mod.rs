//! The CPU reference backend. Shapes use fixed letters: T tokens, C channels, H query heads,
//! Hkv key/value heads, D head dim, V vocabulary, N output features, K input features.

pub mod activation;
pub mod attention;
pub mod attention_ref;
pub mod bf16;
pub mod copy;
pub mod embedding;
pub mod engine;
pub mod logprob;
pub mod lora;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod sample;
pub mod softmax;

pub use activation::{gelu, quick_gelu, silu, swiglu, swiglu_backward, swiglu_fused};
pub use copy::{add, concat_cols, scatter_rows};
pub use attention::{attention, attention_backward, attention_backward_gemm, attention_packed, attention_packed_backward, attention_rows, cu_seqlens, packed_rows, AttnMask, AttnRow, PackedMask};
pub use bf16::Bf16Cpu;
pub use attention_ref::{attention_rows_f64, attention_train_bwd_emulated, attention_train_fwd_host, VarlenBatch};
pub use embedding::{embedding, embedding_backward, embedding_sources};
pub use logprob::{logprob, logprob_backward, logprob_backward_host, logprob_f64};
pub use lora::{lora_bwd, lora_fwd};
pub use matmul::{matmul, matmul_t, matmul_t_f64, matmul_tn};
pub use norm::{layernorm, layernorm_backward, rmsnorm, rmsnorm_backward, rmsnorm_f64, rmsnorm_residual};
pub use rope::{rope, rope_backward, rope_f64, RopeTable};
pub use sample::{argmax, sample_row};
pub use softmax::{log_softmax_row, logsumexp};

/// Deterministic test inputs in [-1, 1) (an LCG), shared by the unit tests of the ops.
#[cfg(test)]
pub(crate) fn test_vec(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
        })
        .collect()
}
