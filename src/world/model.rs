//! The world's model: a tiny LLaVA-1.5 (CLIP vision tower, 2-layer MLP projector, LLaMA decoder)
//! written from scratch as a Hugging Face checkpoint folder (config.json, preprocessor_config.json,
//! generation_config.json, the world tokenizer, model.safetensors in f32), initialised as
//! transformers' `_init_weights` does, from a seed.
//!
//! Tensor names follow `tests/fixtures/llava15_tiny` (`language_model.model.*`, `lm_head`,
//! `multi_modal_projector.*`, `vision_tower.*`), the layout every stic loader reads.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// The sizes of the world's model (`stic world train --hidden ...`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vision_hidden: usize,
    pub vision_layers: usize,
    pub vision_heads: usize,
    pub vision_intermediate: usize,
    pub patch: usize,
    /// The image side the processor resizes to (the world's image size).
    pub image_size: usize,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec { hidden: 128, layers: 4, heads: 4, intermediate: 384, vision_hidden: 64, vision_layers: 3, vision_heads: 4, vision_intermediate: 256, patch: 8, image_size: 64 }
    }
}

impl ModelSpec {
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(format!("world model: {m}")));
        if !self.hidden.is_multiple_of(self.heads) || !self.vision_hidden.is_multiple_of(self.vision_heads) {
            return bad(format!("hidden {} / heads {} and vision {} / {} must divide", self.hidden, self.heads, self.vision_hidden, self.vision_heads));
        }
        if !self.image_size.is_multiple_of(self.patch) {
            return bad(format!("image size {} is not a multiple of the patch {}", self.image_size, self.patch));
        }
        if self.vision_layers < 2 {
            return bad("LLaVA reads the vision tower's second-to-last layer: at least 2 vision layers".into());
        }
        Ok(())
    }

    /// Image feature rows per image (CLS dropped).
    pub fn image_tokens(&self) -> usize {
        (self.image_size / self.patch).pow(2)
    }
}

/// config.json of the model (LlavaForConditionalGeneration with a LLaMA decoder).
pub fn config_json(s: &ModelSpec, vocab: usize) -> Value {
    json!({
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "dtype": "float32",
        "image_token_index": super::tokenizer::IMAGE,
        "image_seq_length": s.image_tokens(),
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": true,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": false,
        "text_config": {
            "model_type": "llama",
            "vocab_size": vocab,
            "hidden_size": s.hidden,
            "intermediate_size": s.intermediate,
            "num_hidden_layers": s.layers,
            "num_attention_heads": s.heads,
            "num_key_value_heads": s.heads,
            "head_dim": s.hidden / s.heads,
            "hidden_act": "silu",
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
            "attention_bias": false,
            "mlp_bias": false,
            "tie_word_embeddings": false,
            "initializer_range": 0.02,
            "bos_token_id": super::tokenizer::BOS,
            "eos_token_id": super::tokenizer::EOS,
            "pad_token_id": super::tokenizer::PAD
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": s.vision_hidden,
            "intermediate_size": s.vision_intermediate,
            "num_hidden_layers": s.vision_layers,
            "num_attention_heads": s.vision_heads,
            "num_channels": 3,
            "image_size": s.image_size,
            "patch_size": s.patch,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "projection_dim": s.vision_hidden,
            "initializer_range": 0.02,
            "initializer_factor": 1.0
        }
    })
}

/// preprocessor_config.json: CLIP's processor at the world's image size (a resize to the same
/// size and a full-image crop: the pixels are only rescaled and normalised).
pub fn preprocessor_json(s: &ModelSpec) -> Value {
    json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true,
        "size": {"shortest_edge": s.image_size},
        "resample": 3,
        "do_center_crop": true,
        "crop_size": {"height": s.image_size, "width": s.image_size},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": true
    })
}

/// A normal draw (Box-Muller on the crate's generator).
fn normal(rng: &mut Rng) -> f32 {
    let u1 = rng.uniform().max(1e-300);
    let u2 = rng.uniform();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// One named tensor of the checkpoint.
pub type Named = (String, Vec<usize>, Vec<f32>);

/// Every tensor of the model, initialised as transformers does: LLaMA and the projector
/// N(0, initializer_range) weights, zero biases, unit RMSNorm scales; CLIP as
/// `CLIPPreTrainedModel._init_weights` (class embedding N(0, C^-1/2), patch and position embeddings
/// N(0, 0.02), q/k/v N(0, C^-1/2 (2L)^-1/2), out_proj N(0, C^-1/2), fc1 N(0, (2C)^-1/2), fc2 like
/// q/k/v, LayerNorm 1 and 0). Each tensor draws from its own stream (seed, name).
pub fn init_weights(s: &ModelSpec, vocab: usize, seed: u64) -> Vec<Named> {
    const ONE: f32 = -1.0;
    let mut out: Vec<Named> = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, std: f32| {
        let n = shape.iter().product();
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        let mut rng = Rng::new(seed ^ h);
        // std ONE: a scale of ones; 0: zeros; else N(0, std).
        let data = if std == ONE {
            vec![1.0; n]
        } else if std == 0.0 {
            vec![0.0; n]
        } else {
            (0..n).map(|_| std * normal(&mut rng)).collect()
        };
        out.push((name, shape, data));
    };
    let (c, f, v) = (s.hidden, s.intermediate, vocab);
    let lm = "language_model.model";
    put(format!("{lm}.embed_tokens.weight"), vec![v, c], 0.02);
    for l in 0..s.layers {
        let p = format!("{lm}.layers.{l}");
        for w in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            put(format!("{p}.self_attn.{w}.weight"), vec![c, c], 0.02);
        }
        put(format!("{p}.mlp.gate_proj.weight"), vec![f, c], 0.02);
        put(format!("{p}.mlp.up_proj.weight"), vec![f, c], 0.02);
        put(format!("{p}.mlp.down_proj.weight"), vec![c, f], 0.02);
        put(format!("{p}.input_layernorm.weight"), vec![c], ONE);
        put(format!("{p}.post_attention_layernorm.weight"), vec![c], ONE);
    }
    put(format!("{lm}.norm.weight"), vec![c], ONE);
    put("language_model.lm_head.weight".into(), vec![v, c], 0.02);
    let cv = s.vision_hidden;
    put("multi_modal_projector.linear_1.weight".into(), vec![c, cv], 0.02);
    put("multi_modal_projector.linear_1.bias".into(), vec![c], 0.0);
    put("multi_modal_projector.linear_2.weight".into(), vec![c, c], 0.02);
    put("multi_modal_projector.linear_2.bias".into(), vec![c], 0.0);
    let vt = "vision_tower";
    let inv = (cv as f32).powf(-0.5);
    let in_std = inv * (2.0 * s.vision_layers as f32).powf(-0.5);
    put(format!("{vt}.embeddings.class_embedding"), vec![cv], inv);
    put(format!("{vt}.embeddings.patch_embedding.weight"), vec![cv, 3, s.patch, s.patch], 0.02);
    put(format!("{vt}.embeddings.position_embedding.weight"), vec![s.image_tokens() + 1, cv], 0.02);
    put(format!("{vt}.pre_layrnorm.weight"), vec![cv], ONE);
    put(format!("{vt}.pre_layrnorm.bias"), vec![cv], 0.0);
    for l in 0..s.vision_layers {
        let p = format!("{vt}.encoder.layers.{l}");
        for (w, std) in [("q_proj", in_std), ("k_proj", in_std), ("v_proj", in_std), ("out_proj", inv)] {
            put(format!("{p}.self_attn.{w}.weight"), vec![cv, cv], std);
            put(format!("{p}.self_attn.{w}.bias"), vec![cv], 0.0);
        }
        put(format!("{p}.mlp.fc1.weight"), vec![s.vision_intermediate, cv], (2.0 * cv as f32).powf(-0.5));
        put(format!("{p}.mlp.fc1.bias"), vec![s.vision_intermediate], 0.0);
        put(format!("{p}.mlp.fc2.weight"), vec![cv, s.vision_intermediate], in_std);
        put(format!("{p}.mlp.fc2.bias"), vec![cv], 0.0);
        for n in ["layer_norm1", "layer_norm2"] {
            put(format!("{p}.{n}.weight"), vec![cv], ONE);
            put(format!("{p}.{n}.bias"), vec![cv], 0.0);
        }
    }
    put(format!("{vt}.post_layernorm.weight"), vec![cv], ONE);
    put(format!("{vt}.post_layernorm.bias"), vec![cv], 0.0);
    out
}

/// The vision sizes of a CLIP folder (`stic world train-clip`): `spec` with its vision tower's
/// width, depth, heads, MLP width and patch, checked against the world's image size.
pub fn spec_with_vision_of(spec: &ModelSpec, clip: &Path) -> Result<ModelSpec> {
    let p = clip.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::Json { path: p.clone(), source: e })?;
    let field = |k: &str| -> Result<usize> {
        v["vision_config"][k].as_u64().map(|n| n as usize).ok_or_else(|| Error::config(&p, format!("vision_config.{k}"), "missing or not a number"))
    };
    let image = field("image_size")?;
    if image != spec.image_size {
        return Err(Error::config(&p, "vision_config.image_size", format!("{image}, but the world's images are {} pixels", spec.image_size)));
    }
    if v["vision_config"]["hidden_act"].as_str().unwrap_or("quick_gelu") != "quick_gelu" {
        return Err(Error::config(&p, "vision_config.hidden_act", "the world model's vision tower uses quick_gelu"));
    }
    Ok(ModelSpec {
        vision_hidden: field("hidden_size")?,
        vision_layers: field("num_hidden_layers")?,
        vision_heads: field("num_attention_heads")?,
        vision_intermediate: field("intermediate_size")?,
        patch: field("patch_size")?,
        ..spec.clone()
    })
}

/// Replace the vision tower's initial weights with the CLIP's (`vision_model.*`, as LLaVA starts
/// from a pretrained CLIP); every tensor must be there with the same shape.
pub fn take_vision(tensors: &mut [Named], clip: &Path) -> Result<usize> {
    let ws = crate::weights::WeightStore::open(clip)?;
    let mut n = 0;
    for (name, shape, data) in tensors.iter_mut() {
        if let Some(rest) = name.strip_prefix("vision_tower.") {
            *data = ws.get(&format!("vision_model.{rest}"), shape)?.into_data();
            n += 1;
        }
    }
    Ok(n)
}

fn put_json(dir: &Path, name: &str, v: &Value) -> Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).expect("json") + "\n").map_err(|e| Error::io(&p, e))
}

/// Write a fresh model for the world in `data` into `out`: tokenizer, configs and weights from
/// `seed`, the vision tower from the CLIP folder `vision` when given (its sizes must be `s`'s, see
/// [`spec_with_vision_of`]). Returns the vocabulary size.
pub fn create(data: &Path, out: &Path, s: &ModelSpec, seed: u64, vision: Option<&Path>) -> Result<usize> {
    s.check()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let vocab = super::tokenizer::write(data, out)?;
    put_json(out, "config.json", &config_json(s, vocab))?;
    put_json(out, "preprocessor_config.json", &preprocessor_json(s))?;
    put_json(out, "generation_config.json", &json!({"bos_token_id": super::tokenizer::BOS, "eos_token_id": super::tokenizer::EOS, "pad_token_id": super::tokenizer::PAD}))?;
    let mut tensors = init_weights(s, vocab, seed);
    if let Some(clip) = vision {
        take_vision(&mut tensors, clip)?;
    }
    let path = out.join("model.safetensors");
    let bytes = crate::weights::f32_safetensors(tensors.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())), &path)?;
    crate::weights::write_atomic(&path, bytes)?;
    Ok(vocab)
}
