//! Gradients of a language model trained in full (`--train decoder`): one f32 buffer per weight,
//! shaped and named as the weight (`Decoder::params_mut`, names relative to the language
//! model's prefix: `embed_tokens.weight`, `layers.{i}.self_attn.q_proj.weight`, ...,
//! `norm.weight`, and `lm_head.weight` unless tied). Buffers are allocated once per training run
//! and accumulated into in place (`Decoder::backward_into`, the lm_head and embedding gradients
//! in `train`), then zeroed after each optimiser step.

use rayon::prelude::*;

use crate::config::TextConfig;

/// A projection's weight gradient [out, in] and its bias gradient when it has one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinearGrad {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
}

/// One decoder layer's gradients; `proj` in PEFT order (q, k, v, o, gate, up, down).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerGrads {
    pub input_layernorm: Vec<f32>,
    pub proj: [LinearGrad; 7],
    pub post_attention_layernorm: Vec<f32>,
}

/// Every weight gradient of the language model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecoderGrads {
    pub embed_tokens: Vec<f32>,
    pub layers: Vec<LayerGrads>,
    pub norm: Vec<f32>,
    /// None when lm_head is tied to the embedding (its gradient adds into `embed_tokens`).
    pub lm_head: Option<Vec<f32>>,
}

/// The module path of projection `p` (PEFT order) inside a layer.
pub const PROJ_PATHS: [&str; 7] = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];

impl DecoderGrads {
    /// Zeroed buffers for the decoder of `cfg`.
    pub fn zeros(cfg: &TextConfig) -> Self {
        let (c, v) = (cfg.hidden_size, cfg.vocab_size);
        let f = cfg.intermediate_size;
        let (qd, kvd) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
        let shapes = [(c, qd), (c, kvd), (c, kvd), (qd, c), (c, f), (c, f), (f, c)];
        let layer = || LayerGrads {
            input_layernorm: vec![0.0; c],
            proj: std::array::from_fn(|p| {
                let (i, o) = shapes[p];
                let bias = if p < 4 { cfg.attention_bias } else { cfg.mlp_bias };
                LinearGrad { w: vec![0.0; i * o], b: bias.then(|| vec![0.0; o]) }
            }),
            post_attention_layernorm: vec![0.0; c],
        };
        DecoderGrads {
            embed_tokens: vec![0.0; v * c],
            layers: (0..cfg.num_hidden_layers).map(|_| layer()).collect(),
            norm: vec![0.0; c],
            lm_head: (!cfg.tie_word_embeddings).then(|| vec![0.0; v * c]),
        }
    }

    /// Every buffer with its weight's name, in `Decoder::params_mut` order.
    pub fn named(&self) -> Vec<(String, &Vec<f32>)> {
        let mut out = vec![("embed_tokens.weight".to_string(), &self.embed_tokens)];
        for (i, l) in self.layers.iter().enumerate() {
            out.push((format!("layers.{i}.input_layernorm.weight"), &l.input_layernorm));
            for (p, g) in PROJ_PATHS.iter().zip(&l.proj) {
                out.push((format!("layers.{i}.{p}.weight"), &g.w));
                if let Some(b) = &g.b {
                    out.push((format!("layers.{i}.{p}.bias"), b));
                }
            }
            out.push((format!("layers.{i}.post_attention_layernorm.weight"), &l.post_attention_layernorm));
        }
        out.push(("norm.weight".to_string(), &self.norm));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h));
        }
        out
    }

    /// Every buffer, mutable, in `named` order.
    pub fn bufs_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let mut out = vec![&mut self.embed_tokens];
        for l in &mut self.layers {
            out.push(&mut l.input_layernorm);
            for g in &mut l.proj {
                out.push(&mut g.w);
                if let Some(b) = &mut g.b {
                    out.push(b);
                }
            }
            out.push(&mut l.post_attention_layernorm);
        }
        out.push(&mut self.norm);
        if let Some(h) = &mut self.lm_head {
            out.push(h);
        }
        out
    }

    /// Set every buffer to zero (after an optimiser step).
    pub fn zero(&mut self) {
        self.bufs_mut().into_iter().for_each(|b| b.par_chunks_mut(CHUNK).for_each(|c| c.fill(0.0)));
    }

    /// Sum of squares of every gradient (f64). Partial sums over fixed chunks (in parallel),
    /// added in order: the same bits on every run, whatever the thread count.
    pub fn sum_sq(&self) -> f64 {
        let mut total = 0f64;
        for (_, b) in self.named() {
            let parts: Vec<f64> = b.par_chunks(CHUNK).map(|c| c.iter().map(|&v| v as f64 * v as f64).sum::<f64>()).collect();
            total += parts.iter().sum::<f64>();
        }
        total
    }

    /// Multiply every gradient by `f`.
    pub fn scale(&mut self, f: f32) {
        self.bufs_mut().into_iter().for_each(|b| b.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= f)));
    }
}

/// Elements per parallel chunk of the whole-buffer passes.
const CHUNK: usize = 1 << 15;

/// `acc += s * g`, elementwise.
pub fn add_scaled(acc: &mut [f32], g: &[f32], s: f32) {
    acc.iter_mut().zip(g).for_each(|(a, &b)| *a += s * b);
}
