//! The parameters of an HF `CLIPModel` as plain host tensors, for training (`model::clip_grad`,
//! `stic world train-clip`): every tensor under its checkpoint name, initialised as transformers'
//! `CLIPPreTrainedModel._init_weights` does, loaded from and saved to an HF directory that
//! `model::ClipModel` (and transformers) load.
//!
//! Initialisation (factor f = `initializer_factor`, r = `initializer_range`, C the tower's width,
//! L its depth): token and text position embeddings N(0, 0.02 f); class embedding N(0, C^-1/2 f);
//! patch conv and vision position embeddings N(0, r f); q, k, v N(0, C^-1/2 (2L)^-1/2 f), out_proj
//! N(0, C^-1/2 f); fc1 N(0, (2C)^-1/2 f), fc2 N(0, C^-1/2 (2L)^-1/2 f); text and visual projections
//! N(0, C^-1/2 f); every bias 0; LayerNorm weight 1, bias 0; logit_scale = logit_scale_init_value.
//! Normal draws: Box-Muller over `rng::Rng` (the distribution of torch's `normal_`, not its stream).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use crate::config::{read_json, VisionConfig};
use crate::error::{Error, Result};
use crate::weights::write_atomic;
use crate::model::clip_model::ClipConfig;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::weights::WeightStore;

/// The weight file of a saved model.
pub const MODEL_FILE: &str = "model.safetensors";

/// A `CLIPModel`'s parameters by HF name.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipParams {
    pub cfg: ClipConfig,
    /// The text config's `bos_token_id` (written to config.json; the tower does not use it).
    pub bos_token_id: u32,
    pub tensors: BTreeMap<String, Tensor>,
}

/// The eight sub-layers of a `CLIPEncoderLayer` with their [out, in] shapes (None: a LayerNorm).
fn layer_params(lp: &str, c: usize, f: usize) -> Vec<(String, Vec<usize>)> {
    let mut v = Vec::new();
    for (name, shape) in [
        ("self_attn.q_proj", Some([c, c])),
        ("self_attn.k_proj", Some([c, c])),
        ("self_attn.v_proj", Some([c, c])),
        ("self_attn.out_proj", Some([c, c])),
        ("layer_norm1", None),
        ("mlp.fc1", Some([f, c])),
        ("mlp.fc2", Some([c, f])),
        ("layer_norm2", None),
    ] {
        match shape {
            Some([o, i]) => {
                v.push((format!("{lp}.{name}.weight"), vec![o, i]));
                v.push((format!("{lp}.{name}.bias"), vec![o]));
            }
            None => {
                v.push((format!("{lp}.{name}.weight"), vec![c]));
                v.push((format!("{lp}.{name}.bias"), vec![c]));
            }
        }
    }
    v
}

/// Every parameter of a `CLIPModel` of `cfg` with its shape, in a fixed order (the init order).
pub fn param_shapes(cfg: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    let (t, v) = (&cfg.text, &cfg.vision);
    let (ct, cv) = (t.hidden_size, v.hidden_size);
    let mut out = vec![
        ("text_model.embeddings.token_embedding.weight".to_string(), vec![t.vocab_size, ct]),
        ("text_model.embeddings.position_embedding.weight".to_string(), vec![t.max_position_embeddings, ct]),
    ];
    for i in 0..t.num_hidden_layers {
        out.extend(layer_params(&format!("text_model.encoder.layers.{i}"), ct, t.intermediate_size));
    }
    out.push(("text_model.final_layer_norm.weight".into(), vec![ct]));
    out.push(("text_model.final_layer_norm.bias".into(), vec![ct]));
    out.push(("vision_model.embeddings.class_embedding".into(), vec![cv]));
    out.push(("vision_model.embeddings.patch_embedding.weight".into(), vec![cv, v.num_channels, v.patch_size, v.patch_size]));
    out.push(("vision_model.embeddings.position_embedding.weight".into(), vec![v.num_patches() + 1, cv]));
    out.push(("vision_model.pre_layrnorm.weight".into(), vec![cv]));
    out.push(("vision_model.pre_layrnorm.bias".into(), vec![cv]));
    for i in 0..v.num_hidden_layers {
        out.extend(layer_params(&format!("vision_model.encoder.layers.{i}"), cv, v.intermediate_size));
    }
    out.push(("vision_model.post_layernorm.weight".into(), vec![cv]));
    out.push(("vision_model.post_layernorm.bias".into(), vec![cv]));
    out.push(("visual_projection.weight".into(), vec![cfg.projection_dim, cv]));
    out.push(("text_projection.weight".into(), vec![cfg.projection_dim, ct]));
    out.push(("logit_scale".into(), vec![]));
    out
}

/// N(0, 1) by Box-Muller (both values of a pair used).
struct Normal {
    rng: Rng,
    spare: Option<f64>,
}

impl Normal {
    fn sample(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.rng.uniform(); // (0, 1]
        let u2 = self.rng.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * th.sin());
        r * th.cos()
    }
}

/// The init std of parameter `name` (None: a constant: 0 for biases, 1 for LayerNorm weights).
fn init_std(cfg: &ClipConfig, name: &str, range: f64, f: f64) -> Option<f64> {
    let text = name.starts_with("text_model.");
    let (c, l) = if text { (cfg.text.hidden_size, cfg.text.num_hidden_layers) } else { (cfg.vision.hidden_size, cfg.vision.num_hidden_layers) };
    let (c, l) = (c as f64, l as f64);
    if name.ends_with(".bias") || name.contains("layer_norm") || name.contains("layrnorm") || name.contains("layernorm") || name == "logit_scale" {
        return None;
    }
    Some(match name {
        n if n.contains("token_embedding") => 0.02 * f,
        n if n.contains("position_embedding") => if text { 0.02 * f } else { range * f },
        n if n.contains("class_embedding") => c.powf(-0.5) * f,
        n if n.contains("patch_embedding") => range * f,
        n if n.contains("q_proj") || n.contains("k_proj") || n.contains("v_proj") => c.powf(-0.5) * (2.0 * l).powf(-0.5) * f,
        n if n.contains("out_proj") => c.powf(-0.5) * f,
        n if n.contains("fc1") => (2.0 * c).powf(-0.5) * f,
        n if n.contains("fc2") => c.powf(-0.5) * (2.0 * l).powf(-0.5) * f,
        "visual_projection.weight" => (cfg.vision.hidden_size as f64).powf(-0.5) * f,
        "text_projection.weight" => (cfg.text.hidden_size as f64).powf(-0.5) * f,
        other => unreachable!("no init rule for {other}"),
    })
}

impl ClipParams {
    /// A fresh model of `cfg` initialised from `seed` (`initializer_range` r, `initializer_factor` f).
    pub fn init(cfg: &ClipConfig, bos_token_id: u32, seed: u64, range: f64, factor: f64) -> Self {
        let mut normal = Normal { rng: Rng::new(seed), spare: None };
        let mut tensors = BTreeMap::new();
        for (name, shape) in param_shapes(cfg) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = match init_std(cfg, &name, range, factor) {
                Some(std) => (0..n).map(|_| (normal.sample() * std) as f32).collect(),
                None if name == "logit_scale" => vec![cfg.logit_scale_init_value as f32],
                None if name.ends_with(".weight") => vec![1.0; n],
                None => vec![0.0; n],
            };
            tensors.insert(name, Tensor::new(data, &shape).expect("shape of the init"));
        }
        ClipParams { cfg: cfg.clone(), bos_token_id, tensors }
    }

    /// Read an HF `CLIPModel` directory (config.json and safetensors; every tensor must be used).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let cfg = ClipConfig::from_file(&path)?;
        let raw = read_json(&path)?;
        let bos_token_id = raw["text_config"]["bos_token_id"].as_u64().unwrap_or(49406) as u32;
        let ws = WeightStore::open(dir)?;
        let mut tensors = BTreeMap::new();
        for (name, shape) in param_shapes(&cfg) {
            let t = ws.get(&name, &shape)?;
            tensors.insert(name, t);
        }
        ws.skip("text_model.embeddings.position_ids");
        ws.skip("vision_model.embeddings.position_ids");
        ws.finish()?;
        Ok(ClipParams { cfg, bos_token_id, tensors })
    }

    /// The tensor `name` (a parameter of this config: a missing one is a bug).
    pub fn get(&self, name: &str) -> &Tensor {
        self.tensors.get(name).unwrap_or_else(|| panic!("CLIP parameter `{name}` does not exist"))
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn n_params(&self) -> usize {
        self.tensors.values().map(Tensor::len).sum()
    }

    /// HF's config.json of this model.
    pub fn config_json(&self) -> serde_json::Value {
        let (t, v) = (&self.cfg.text, &self.cfg.vision);
        json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "dtype": "float32",
            "initializer_factor": 1.0,
            "logit_scale_init_value": self.cfg.logit_scale_init_value,
            "projection_dim": self.cfg.projection_dim,
            "text_config": {
                "model_type": "clip_text_model",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "max_position_embeddings": t.max_position_embeddings,
                "hidden_act": t.hidden_act,
                "layer_norm_eps": t.layer_norm_eps,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": t.eos_token_id,
                "pad_token_id": t.eos_token_id,
                "projection_dim": self.cfg.projection_dim,
                "attention_dropout": 0.0,
            },
            "vision_config": vision_json(v, self.cfg.projection_dim),
        })
    }

    /// Write config.json and model.safetensors (f32) into `dir` (created), each to a temporary
    /// name first and renamed, so an interrupted save never leaves a half-written file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let bytes = crate::weights::f32_safetensors(self.tensors.iter().map(|(n, t)| (n.as_str(), t.shape(), t.data())), dir)?;
        write_atomic(&dir.join(MODEL_FILE), &bytes)?;
        write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&self.config_json()).expect("json").as_bytes())
    }
}

impl ClipParams {
    /// A vision tower's parameters alone (`vision_model.*`; LLaVA's `--train vision`): the
    /// text config is the default and unused.
    pub fn vision_only(vision: VisionConfig, tensors: BTreeMap<String, Tensor>) -> Self {
        let cfg = ClipConfig { text: Default::default(), vision, projection_dim: 0, logit_scale_init_value: 0.0 };
        ClipParams { cfg, bos_token_id: 0, tensors }
    }
}

/// The parameters as a weight source (HF names, checkpoint shapes): `model::clip::ClipVision`
/// is rebuilt from them after a training step.
impl crate::weights::WeightSource for ClipParams {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::weights(Path::new("<clip params>"), format!("no tensor `{name}`")))?;
        if t.shape() != shape {
            return Err(Error::weights(Path::new("<clip params>"), format!("`{name}` is {:?}, expected {shape:?}", t.shape())));
        }
        Ok(t.clone())
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn skip(&self, _: &str) {}
    fn dir(&self) -> &Path {
        Path::new("<clip params>")
    }
}

fn vision_json(v: &VisionConfig, projection_dim: usize) -> serde_json::Value {
    json!({
        "model_type": "clip_vision_model",
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_hidden_layers": v.num_hidden_layers,
        "num_attention_heads": v.num_attention_heads,
        "num_channels": v.num_channels,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "layer_norm_eps": v.layer_norm_eps,
        "hidden_act": v.hidden_act,
        "projection_dim": projection_dim,
        "attention_dropout": 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::clip_text::ClipTextConfig;

    fn tiny() -> ClipConfig {
        let text = ClipTextConfig { vocab_size: 50, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 2, num_attention_heads: 2, eos_token_id: 49, ..Default::default() };
        let vision = VisionConfig {
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_channels: 3,
            image_size: 16,
            patch_size: 8,
            layer_norm_eps: 1e-5,
            hidden_act: "quick_gelu".into(),
        };
        ClipConfig { text, vision, projection_dim: 8, logit_scale_init_value: 2.6592 }
    }

    #[test]
    fn init_follows_the_rules_and_round_trips() {
        let cfg = tiny();
        let p = ClipParams::init(&cfg, 48, 3, 0.02, 1.0);
        assert_eq!(p, ClipParams::init(&cfg, 48, 3, 0.02, 1.0));
        assert_ne!(p, ClipParams::init(&cfg, 48, 4, 0.02, 1.0));
        let std = |n: &str| {
            let d = p.get(n).data();
            (d.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d.len() as f64).sqrt()
        };
        // fc1 of width 16: (2 * 16)^-1/2 = 0.177 over 512 draws
        assert!((std("text_model.encoder.layers.0.mlp.fc1.weight") / 0.1768 - 1.0).abs() < 0.1);
        assert!((std("text_model.embeddings.token_embedding.weight") / 0.02 - 1.0).abs() < 0.15);
        assert!(p.get("vision_model.encoder.layers.1.layer_norm2.weight").data().iter().all(|&v| v == 1.0));
        assert!(p.get("vision_model.encoder.layers.1.mlp.fc2.bias").data().iter().all(|&v| v == 0.0));
        assert_eq!(p.get("logit_scale").data(), &[2.6592f32]);
        let dir = std::env::temp_dir().join(format!("stic-clip-params-{}", std::process::id()));
        p.save(&dir).unwrap();
        assert_eq!(ClipParams::load(&dir).unwrap(), p);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
