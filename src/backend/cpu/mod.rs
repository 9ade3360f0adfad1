//! The CPU reference backend. Shapes use fixed letters: T tokens, C channels, H query heads,
//! Hkv key/value heads, D head dim, V vocabulary, N output features, K input features.

pub mod activation;
pub mod attention;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod softmax;

pub use activation::{gelu, quick_gelu, silu, swiglu};
pub use attention::{attention, AttnMask};
pub use matmul::{matmul, matmul_t};
pub use norm::{layernorm, rmsnorm};
pub use rope::{rope, RopeTable};
pub use softmax::{log_softmax_row, logsumexp};
