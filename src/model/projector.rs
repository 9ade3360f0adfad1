//! The multimodal projector: vision features [T, Cv*L] -> text embeddings [T, C].
//! - `mlp2x_gelu` (HF `LlavaMultiModalProjector`): linear_1 -> act -> linear_2.
//! - `linear` (LLaVA-1.0): one Linear, stored as `{prefix}.weight` / `{prefix}.bias`.
//! The type is read off the checkpoint: `linear_1` present means the MLP.

use crate::backend::cpu;
use crate::error::Result;
use crate::nn::Linear;
use crate::tensor::Tensor;
use crate::weights::WeightSource;

pub enum Projector {
    Mlp { linear_1: Linear, act: String, linear_2: Linear },
    Linear(Linear),
}

impl Projector {
    pub fn load(ws: &dyn WeightSource, prefix: &str, vision_dim: usize, text_dim: usize, act: &str, bias: bool) -> Result<Self> {
        if !ws.contains(&format!("{prefix}.linear_1.weight")) && ws.contains(&format!("{prefix}.weight")) {
            return Ok(Projector::Linear(Linear::load(ws, prefix, vision_dim, text_dim, bias)?));
        }
        Ok(Projector::Mlp {
            linear_1: Linear::load(ws, &format!("{prefix}.linear_1"), vision_dim, text_dim, bias)?,
            act: act.to_string(),
            linear_2: Linear::load(ws, &format!("{prefix}.linear_2"), text_dim, text_dim, bias)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Projector::Mlp { linear_1, act, linear_2 } => {
                let mut h = linear_1.forward(x)?;
                cpu::activation::by_name(act, h.data_mut());
                linear_2.forward(&h)
            }
            Projector::Linear(l) => l.forward(x),
        }
    }
}
