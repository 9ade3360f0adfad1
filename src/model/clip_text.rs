//! CLIP text tower (HF `CLIPTextTransformer`), as CLIP's image-text score uses it.
//!
//! ids (one sequence per text, packed row after row, no padding) -> token embedding + learned
//! absolute position embedding [max_position_embeddings, C] -> L pre-LN encoder layers with a
//! **causal** mask (`model::clip::ClipLayer`, the vision tower's layer) -> final LayerNorm ->
//! pooled at the EOS position (see [`pool_index`]) -> [B, C].
//!
//! Texts are packed as separate sequences (`Backend::attention_packed`), so no text sees
//! another's rows and there is no padding at all. transformers pads to the longest text and masks;
//! with its causal mask and EOS pooling the padding never reaches the pooled row, so the two agree.

use serde::Deserialize;

use crate::backend::{Backend, Cpu, PackedMask};
use crate::error::{Error, Result};
use crate::model::clip::ClipLayer;
use crate::weights::WeightSource;

/// HF `CLIPTextConfig` (the keys this tower reads; defaults as transformers').
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    /// 2 in the legacy OpenAI configs: transformers then pools at the argmax of the ids.
    pub eos_token_id: u32,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

impl ClipTextConfig {
    /// Consistency checks; `field` names the config object in errors (`text_config`).
    pub fn validate(&self, path: &std::path::Path, field: &str) -> Result<()> {
        let err = |k: &str, m: String| Err(Error::config(path, format!("{field}.{k}"), m));
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return err(
                "num_attention_heads",
                format!("hidden_size {} is not divisible by num_attention_heads {}", self.hidden_size, self.num_attention_heads),
            );
        }
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return err("hidden_act", format!("unsupported activation `{}`", self.hidden_act));
        }
        if self.max_position_embeddings < 2 {
            return err("max_position_embeddings", format!("{} leaves no room for BOS and EOS", self.max_position_embeddings));
        }
        Ok(())
    }
}

/// The row of a sequence that transformers pools: with the legacy `eos_token_id == 2` the first
/// maximum of the ids (EOT is the largest id of CLIP's vocabulary), otherwise the first position
/// holding `eos_token_id` (0 when there is none: torch's argmax of an all-zero row).
pub fn pool_index(ids: &[u32], eos_token_id: u32) -> usize {
    if eos_token_id == 2 {
        let max = ids.iter().copied().max().unwrap_or(0);
        ids.iter().position(|&t| t == max).unwrap_or(0)
    } else {
        ids.iter().position(|&t| t == eos_token_id).unwrap_or(0)
    }
}

pub struct ClipText<B: Backend = Cpu> {
    cfg: ClipTextConfig,
    be: B,
    token_embedding: B::Tensor,    // [V, C]
    position_embedding: B::Tensor, // [P, C]
    layers: Vec<ClipLayer<B>>,
    final_ln: B::LayerNorm,
}

impl<B: Backend> ClipText<B> {
    /// The tower under `prefix` (`text_model` in a `CLIPModel`).
    pub fn load(be: &B, ws: &dyn WeightSource, prefix: &str, cfg: &ClipTextConfig) -> Result<Self> {
        let c = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let token_embedding = be.tensor(ws, &format!("{prefix}.embeddings.token_embedding.weight"), &[cfg.vocab_size, c])?;
        let position_embedding =
            be.tensor(ws, &format!("{prefix}.embeddings.position_embedding.weight"), &[cfg.max_position_embeddings, c])?;
        ws.skip(&format!("{prefix}.embeddings.position_ids"));
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipLayer::load(be, ws, &format!("{prefix}.encoder.layers.{i}"), c, cfg.intermediate_size, eps))
            .collect::<Result<Vec<_>>>()?;
        let final_ln = be.layernorm_weights(ws, &format!("{prefix}.final_layer_norm"), c, eps)?;
        Ok(ClipText { cfg: cfg.clone(), be: be.clone(), token_embedding, position_embedding, layers, final_ln })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }

    /// The pooled output [B, C] (after the final LayerNorm, before `text_projection`) of each id
    /// sequence (with BOS and EOS, at most `max_position_embeddings` long).
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<B::Tensor> {
        let be = &self.be;
        let cfg = &self.cfg;
        if ids.is_empty() {
            return Err(Error::Input("clip text: no texts".into()));
        }
        for (i, s) in ids.iter().enumerate() {
            if s.is_empty() || s.len() > cfg.max_position_embeddings {
                return Err(Error::Input(format!(
                    "clip text {i}: {} tokens, expected 1..={} (max_position_embeddings)",
                    s.len(),
                    cfg.max_position_embeddings
                )));
            }
            if let Some(&t) = s.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(Error::Input(format!("clip text {i}: token id {t} is outside the vocabulary ({})", cfg.vocab_size)));
            }
        }
        let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
        let flat: Vec<u32> = ids.concat();
        let positions: Vec<u32> = lens.iter().flat_map(|&n| 0..n as u32).collect();
        be.range_push("clip text");
        let mut x = be.embedding(&self.token_embedding, None, &flat)?;
        be.add(&mut x, &be.embedding(&self.position_embedding, None, &positions)?)?;
        let mask = PackedMask::Causal { window: None };
        for layer in &self.layers {
            layer.forward(be, &mut x, &lens, mask, cfg.num_attention_heads, &cfg.hidden_act)?;
        }
        let x = be.layernorm(&x, &self.final_ln)?;
        let mut start = 0;
        let rows: Vec<u32> = ids
            .iter()
            .map(|s| {
                let r = start + pool_index(s, cfg.eos_token_id);
                start += s.len();
                r as u32
            })
            .collect();
        let pooled = be.embedding(&x, None, &rows);
        be.range_pop();
        pooled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_follows_transformers() {
        // legacy config: argmax of the ids (first maximum)
        assert_eq!(pool_index(&[49406, 320, 49407, 49407], 2), 2);
        // new configs: the first EOS
        assert_eq!(pool_index(&[49406, 320, 49407, 49407], 49407), 2);
        assert_eq!(pool_index(&[5, 9, 7, 9], 7), 2);
        assert_eq!(pool_index(&[5, 9, 7, 9], 2), 1);
        assert_eq!(pool_index(&[5, 9], 7), 0);
    }
}
