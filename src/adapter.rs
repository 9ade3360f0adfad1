//! LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`, with
//! PEFT's key names, so adapters move freely between stic, PEFT, transformers and vLLM.
//!
//! Keys: `base_model.model.<module path in the transformers model>.lora_{A,B}.weight`, where the
//! module path of a decoder projection is `model.language_model.layers.{i}.{self_attn,mlp}.{proj}`
//! (transformers >= 4.52) or `language_model.model.layers.{i}...` (older). lora_A is [r, in],
//! lora_B is [out, r]; scale = lora_alpha / r, or lora_alpha / sqrt(r) with `use_rslora`.
//! Supported: LoRA on the decoder's linear layers (what STIC trains). Adapters on other modules
//! (vision tower, projector), DoRA, biases and `modules_to_save` are refused with a clear error.

use std::path::Path;

use crate::config::read_json;
use crate::error::{Error, Result};
use crate::model::Llava;
use crate::nn::Lora;
use crate::weights::WeightStore;

const LM_PREFIXES: [&str; 2] = ["model.language_model.layers.", "language_model.model.layers."];

#[derive(Clone, Debug, PartialEq)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
}

impl AdapterConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        let field = |k: &str| v.get(k).filter(|x| !x.is_null());
        let peft_type = field("peft_type").and_then(|x| x.as_str()).unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(Error::config(path, "peft_type", format!("unsupported adapter type `{peft_type}` (expected LORA)")));
        }
        let r = field("r").and_then(|x| x.as_u64()).ok_or_else(|| Error::config(path, "r", "missing or not a positive integer"))? as usize;
        if r == 0 {
            return Err(Error::config(path, "r", "must be positive"));
        }
        let lora_alpha = field("lora_alpha").and_then(|x| x.as_f64()).unwrap_or(8.0);
        for (k, ok) in [
            ("use_dora", field("use_dora").map_or(true, |x| x == false)),
            ("bias", field("bias").map_or(true, |x| x == "none")),
            ("fan_in_fan_out", field("fan_in_fan_out").map_or(true, |x| x == false)),
            ("modules_to_save", field("modules_to_save").map_or(true, |x| x.as_array().is_some_and(|a| a.is_empty()))),
        ] {
            if !ok {
                return Err(Error::config(path, k, format!("unsupported setting {}", v[k])));
            }
        }
        if field("rank_pattern").and_then(|x| x.as_object()).is_some_and(|o| !o.is_empty())
            || field("alpha_pattern").and_then(|x| x.as_object()).is_some_and(|o| !o.is_empty())
        {
            return Err(Error::config(path, "rank_pattern", "per-module ranks or alphas are not supported"));
        }
        Ok(AdapterConfig { r, lora_alpha, use_rslora: field("use_rslora").and_then(|x| x.as_bool()).unwrap_or(false) })
    }

    pub fn scale(&self) -> f32 {
        let r = self.r as f64;
        (if self.use_rslora { self.lora_alpha / r.sqrt() } else { self.lora_alpha / r }) as f32
    }
}

/// (layer, projection) of a PEFT key, or None when it is not a decoder projection.
fn parse_key(key: &str) -> Option<(usize, String, char)> {
    let rest = key.strip_prefix("base_model.model.")?;
    let rest = LM_PREFIXES.iter().find_map(|p| rest.strip_prefix(p))?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let rest = rest.strip_prefix("self_attn.").or_else(|| rest.strip_prefix("mlp."))?;
    let (proj, ab) = rest.split_once(".lora_")?;
    let which = match ab {
        "A.weight" => 'A',
        "B.weight" => 'B',
        _ => return None,
    };
    Some((layer, proj.to_string(), which))
}

/// Attach the adapter in `dir` to `model`'s decoder. Returns the number of adapted projections.
pub fn load_adapter(model: &mut Llava, dir: &Path) -> Result<usize> {
    let cfg = AdapterConfig::from_file(&dir.join("adapter_config.json"))?;
    let file = dir.join("adapter_model.safetensors");
    let ws = WeightStore::from_files(dir, &[file.clone()])?;
    let names: Vec<String> = ws.names().map(str::to_string).collect();
    let mut count = 0;
    for name in &names {
        let (layer, proj, which) = parse_key(name).ok_or_else(|| {
            Error::weights(&file, format!("`{name}` is not a LoRA weight of a decoder projection (only those are supported)"))
        })?;
        if which == 'B' {
            continue; // handled with its A
        }
        let b_name = name.replace(".lora_A.weight", ".lora_B.weight");
        let lin = model
            .decoder
            .linear_mut(layer, &proj)
            .ok_or_else(|| Error::weights(&file, format!("`{name}`: the model has no layer {layer} projection `{proj}`")))?;
        let (n, k) = (lin.out_features(), lin.in_features());
        let a = ws.get(name, &[cfg.r, k])?;
        let b = ws.get(&b_name, &[n, cfg.r])?;
        lin.lora = Some(Lora { a, b, scale: cfg.scale() });
        count += 1;
    }
    ws.finish()?;
    if count == 0 {
        return Err(Error::weights(&file, "the adapter holds no LoRA weights"));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_key_names() {
        assert_eq!(
            parse_key("base_model.model.model.language_model.layers.3.self_attn.q_proj.lora_A.weight"),
            Some((3, "q_proj".into(), 'A'))
        );
        assert_eq!(
            parse_key("base_model.model.language_model.model.layers.12.mlp.down_proj.lora_B.weight"),
            Some((12, "down_proj".into(), 'B'))
        );
        assert_eq!(parse_key("base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_A.weight"), None);
    }
}
