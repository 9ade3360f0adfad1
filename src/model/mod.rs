//! Models. One file per component; the decoder serves both Mistral and LLaMA (they differ only
//! in config), and every projection is an `nn::Linear`. `clip_text` + `clip_model`: CLIP as an
//! image-text scorer (the vision side reuses `clip`); `clip_params` + `clip_grad`: CLIP training on
//! the CPU (parameters by HF name, forward with a tape, backward, contrastive loss).

pub mod clip;
pub mod clip_grad;
pub mod clip_model;
pub mod clip_params;
pub mod clip_text;
pub mod decoder;
pub mod grads;
pub mod llava;
pub mod projector;

pub use clip_model::ClipModel;
pub use decoder::{Decoder, KvCache};
pub use llava::Llava;
