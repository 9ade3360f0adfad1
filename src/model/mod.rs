//! Models. One file per component; the decoder serves both Mistral and LLaMA (they differ only
//! in config), and every projection is an `nn::Linear`.

pub mod clip;
pub mod decoder;
pub mod llava;
pub mod projector;

pub use decoder::{Decoder, KvCache};
pub use llava::Llava;
