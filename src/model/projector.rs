//! The multimodal projector: vision features [T, Cv*L] -> text embeddings [T, C].
//! `mlp2x_gelu` (HF `LlavaMultiModalProjector`): linear_1 -> act -> linear_2.

use crate::backend::cpu;
use crate::error::Result;
use crate::nn::Linear;
use crate::tensor::Tensor;
use crate::weights::WeightStore;

pub struct Projector {
    linear_1: Linear,
    act: String,
    linear_2: Linear,
}

impl Projector {
    pub fn load(ws: &WeightStore, prefix: &str, vision_dim: usize, text_dim: usize, act: &str, bias: bool) -> Result<Self> {
        Ok(Projector {
            linear_1: Linear::load(ws, &format!("{prefix}.linear_1"), vision_dim, text_dim, bias)?,
            act: act.to_string(),
            linear_2: Linear::load(ws, &format!("{prefix}.linear_2"), text_dim, text_dim, bias)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.linear_1.forward(x)?;
        cpu::activation::by_name(&self.act, h.data_mut());
        self.linear_2.forward(&h)
    }
}
