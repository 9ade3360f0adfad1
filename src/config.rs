//! Model configs read from a Hugging Face `config.json`, with HF's defaults for missing keys.
//!
//! HF configs are sparse: the hub file of llava-v1.6-mistral-7b-hf leaves hidden_size, layers and
//! heads out of `text_config`, and transformers fills them from `MistralConfig`'s defaults. So the
//! defaults depend on the sub-config's `model_type`, and a key that is absent differs from one that is
//! `null` (Mistral's `sliding_window`: absent means 4096, null means none). That is why these are
//! parsed from `serde_json::Value` with explicit defaults rather than with `#[serde(default)]`.
//!
//! Both rope key styles are accepted: `rope_theta` (transformers 4) and
//! `rope_parameters: {rope_theta, rope_type}` (transformers 5).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Which decoder family a text config describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextArch {
    Mistral,
    Llama,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub arch: TextArch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub sliding_window: Option<usize>,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// Patches per side of one tile (24 for ViT-L/14-336).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlavaKind {
    /// LLaVA-1.5 (`llava`): one 336x336 image per `<image>`.
    Llava,
    /// LLaVA-1.6 / NeXT (`llava_next`): AnyRes tiles, unpadding and `image_newline`.
    LlavaNext,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureSelect {
    /// Drop the class token.
    Default,
    /// Keep it.
    Full,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LlavaConfig {
    pub kind: LlavaKind,
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_index: u32,
    pub pad_token_id: Option<u32>,
    pub projector_hidden_act: String,
    pub multimodal_projector_bias: bool,
    /// Vision hidden-state indices to take (HF `vision_feature_layer`: an int or a list). Negative
    /// values count from the end of `hidden_states`, which has `num_hidden_layers + 1` entries.
    pub vision_feature_layers: Vec<i64>,
    pub vision_feature_select_strategy: FeatureSelect,
    /// (height, width) pairs; LLaVA-NeXT only.
    pub image_grid_pinpoints: Vec<[usize; 2]>,
}

/// Reads fields of one JSON object, naming `path` and the dotted field in every error.
struct Fields<'a> {
    path: &'a Path,
    prefix: &'a str,
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn name(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.prefix, key)
        }
    }
    fn err(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::config(self.path, self.name(key), msg)
    }
    /// `None` when the key is absent or null.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.err(key, format!("expected a non-negative integer, got {v}"))),
        }
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|_| self.usize_or(key, 0)).transpose()
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.err(key, format!("expected a number, got {v}"))),
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, format!("expected true/false, got {v}"))),
        }
    }
    fn str_or(&self, key: &str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| self.err(key, format!("expected a string, got {v}"))),
        }
    }
    /// An int or a list of ints (HF's `eos_token_id`, `vision_feature_layer`).
    fn int_list(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_i64().ok_or_else(|| self.err(key, format!("expected integers, got {x}"))))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => v
                .as_i64()
                .map(|x| Some(vec![x]))
                .ok_or_else(|| self.err(key, format!("expected an integer or a list, got {v}"))),
        }
    }
    /// A `present` key, absent -> `default`, null -> None (Mistral's `sliding_window`).
    fn nullable_usize(&self, key: &str, default: Option<usize>) -> Result<Option<usize>> {
        match self.obj.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(_) => self.opt_usize(key),
        }
    }
}

fn as_object<'a>(v: &'a Value, path: &Path, field: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| Error::config(path, if field.is_empty() { "<root>" } else { field }, "expected a JSON object"))
}

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), source: e })
}

impl TextConfig {
    /// Parse a text (decoder) config object; `prefix` is its dotted name, for errors.
    pub fn from_json(v: &Value, path: &Path, prefix: &str) -> Result<Self> {
        let f = Fields { path, prefix, obj: as_object(v, path, prefix)? };
        let model_type = f.str_or("model_type", "llama")?;
        let arch = match model_type.as_str() {
            "mistral" => TextArch::Mistral,
            "llama" => TextArch::Llama,
            other => {
                return Err(f.err("model_type", format!("unsupported decoder `{other}` (expected mistral or llama)")))
            }
        };
        // HF defaults: MistralConfig and LlamaConfig.
        let (inter, window) = match arch {
            TextArch::Mistral => (14336, Some(4096)),
            TextArch::Llama => (11008, None),
        };
        let hidden_size = f.usize_or("hidden_size", 4096)?;
        let num_attention_heads = f.usize_or("num_attention_heads", 32)?;
        let kv_default = match arch {
            TextArch::Mistral => 8,
            TextArch::Llama => num_attention_heads,
        };
        let num_key_value_heads = f.usize_or("num_key_value_heads", kv_default)?;
        if num_attention_heads == 0 {
            return Err(f.err("num_attention_heads", "must be positive"));
        }
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(f.err(
                        "num_attention_heads",
                        format!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}"),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!("num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(f.err("head_dim", format!("RoPE needs an even head dim, got {head_dim}")));
        }
        let rope_theta = match f.get("rope_parameters") {
            Some(rp) => {
                let rpf = Fields { path, prefix: &f.name("rope_parameters"), obj: as_object(rp, path, "rope_parameters")? };
                let ty = rpf.str_or("rope_type", "default")?;
                if ty != "default" {
                    return Err(rpf.err("rope_type", format!("unsupported rope type `{ty}`")));
                }
                rpf.f64_or("rope_theta", 10000.0)?
            }
            None => f.f64_or("rope_theta", 10000.0)?,
        };
        if let Some(rs) = f.get("rope_scaling") {
            let ty = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Value::as_str).unwrap_or("?");
            if ty != "default" {
                return Err(f.err("rope_scaling", format!("unsupported rope scaling `{ty}`")));
            }
        }
        let hidden_act = f.str_or("hidden_act", "silu")?;
        if hidden_act != "silu" {
            return Err(f.err("hidden_act", format!("unsupported decoder activation `{hidden_act}`")));
        }
        let eos = f.int_list("eos_token_id")?.unwrap_or_else(|| vec![2]);
        let sliding_window = match arch {
            TextArch::Mistral => f.nullable_usize("sliding_window", window)?,
            TextArch::Llama => None,
        };
        let cfg = TextConfig {
            arch,
            vocab_size: f.usize_or("vocab_size", 32000)?,
            hidden_size,
            intermediate_size: f.usize_or("intermediate_size", inter)?,
            num_hidden_layers: f.usize_or("num_hidden_layers", 32)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta,
            sliding_window,
            max_position_embeddings: f.usize_or(
                "max_position_embeddings",
                if arch == TextArch::Mistral { 4096 * 32 } else { 2048 },
            )?,
            hidden_act,
            attention_bias: f.bool_or("attention_bias", false)?,
            mlp_bias: f.bool_or("mlp_bias", false)?,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            bos_token_id: f.opt_usize("bos_token_id")?.map(|x| x as u32).or(Some(1)),
            eos_token_ids: eos.into_iter().map(|x| x as u32).collect(),
        };
        for (field, v) in [("hidden_size", cfg.hidden_size), ("num_hidden_layers", cfg.num_hidden_layers), ("vocab_size", cfg.vocab_size), ("intermediate_size", cfg.intermediate_size)] {
            if v == 0 {
                return Err(f.err(field, "must be positive"));
            }
        }
        Ok(cfg)
    }
}

impl VisionConfig {
    pub fn from_json(v: &Value, path: &Path, prefix: &str) -> Result<Self> {
        let f = Fields { path, prefix, obj: as_object(v, path, prefix)? };
        let mt = f.str_or("model_type", "clip_vision_model")?;
        if mt != "clip_vision_model" {
            return Err(f.err("model_type", format!("unsupported vision tower `{mt}` (expected clip_vision_model)")));
        }
        // HF CLIPVisionConfig defaults.
        let cfg = VisionConfig {
            hidden_size: f.usize_or("hidden_size", 768)?,
            intermediate_size: f.usize_or("intermediate_size", 3072)?,
            num_hidden_layers: f.usize_or("num_hidden_layers", 12)?,
            num_attention_heads: f.usize_or("num_attention_heads", 12)?,
            num_channels: f.usize_or("num_channels", 3)?,
            image_size: f.usize_or("image_size", 224)?,
            patch_size: f.usize_or("patch_size", 32)?,
            layer_norm_eps: f.f64_or("layer_norm_eps", 1e-5)?,
            hidden_act: f.str_or("hidden_act", "quick_gelu")?,
        };
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(f.err(
                "num_attention_heads",
                format!("hidden_size {} is not divisible by num_attention_heads {}", cfg.hidden_size, cfg.num_attention_heads),
            ));
        }
        if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
            return Err(f.err("patch_size", format!("image_size {} is not a multiple of patch_size {}", cfg.image_size, cfg.patch_size)));
        }
        if cfg.num_channels != 3 {
            return Err(f.err("num_channels", format!("expected 3 (RGB), got {}", cfg.num_channels)));
        }
        if !matches!(cfg.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(f.err("hidden_act", format!("unsupported activation `{}`", cfg.hidden_act)));
        }
        Ok(cfg)
    }

    /// HF LlavaConfig's vision default when `vision_config` is absent: CLIP ViT-L/14-336.
    fn llava_default() -> Self {
        VisionConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 336,
            patch_size: 14,
            layer_norm_eps: 1e-5,
            hidden_act: "quick_gelu".into(),
        }
    }
}

impl LlavaConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json(&read_json(path)?, path)
    }

    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let f = Fields { path, prefix: "", obj: as_object(v, path, "")? };
        let mt = f.str_or("model_type", "")?;
        let kind = match mt.as_str() {
            "llava" => LlavaKind::Llava,
            "llava_next" => LlavaKind::LlavaNext,
            "" => return Err(f.err("model_type", "missing (expected llava or llava_next)")),
            other => return Err(f.err("model_type", format!("unsupported model `{other}` (expected llava or llava_next)"))),
        };
        let text = match f.get("text_config") {
            Some(t) => TextConfig::from_json(t, path, "text_config")?,
            None => TextConfig::from_json(&Value::Object(Map::new()), path, "text_config")?,
        };
        let vision = match f.get("vision_config") {
            Some(t) => VisionConfig::from_json(t, path, "vision_config")?,
            None => VisionConfig::llava_default(),
        };
        let mut text = text;
        // transformers 5 may put tie_word_embeddings at the top level.
        if let Some(t) = f.get("tie_word_embeddings") {
            text.tie_word_embeddings = t.as_bool().ok_or_else(|| f.err("tie_word_embeddings", "expected true/false"))?;
        }

        let layers = f.int_list("vision_feature_layer")?.unwrap_or_else(|| vec![-2]);
        let n_states = vision.num_hidden_layers as i64 + 1;
        for &l in &layers {
            if l >= n_states || l < -n_states {
                return Err(f.err(
                    "vision_feature_layer",
                    format!("{l} is out of range for a vision tower with {} layers", vision.num_hidden_layers),
                ));
            }
        }
        let strategy = match f.str_or("vision_feature_select_strategy", "default")?.as_str() {
            "default" => FeatureSelect::Default,
            "full" => FeatureSelect::Full,
            other => return Err(f.err("vision_feature_select_strategy", format!("unknown strategy `{other}`"))),
        };
        let act = f.str_or("projector_hidden_act", "gelu")?;
        if !matches!(act.as_str(), "gelu" | "quick_gelu" | "silu") {
            return Err(f.err("projector_hidden_act", format!("unsupported activation `{act}`")));
        }
        let pinpoints = match f.get("image_grid_pinpoints") {
            None => {
                if kind == LlavaKind::LlavaNext {
                    // HF LlavaNextConfig default.
                    vec![[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
                } else {
                    vec![]
                }
            }
            Some(p) => parse_pinpoints(p).ok_or_else(|| f.err("image_grid_pinpoints", format!("expected a list of [height, width] pairs, got {p}")))?,
        };
        if kind == LlavaKind::LlavaNext {
            for p in &pinpoints {
                if p[0] == 0 || p[1] == 0 || p[0] % vision.image_size != 0 || p[1] % vision.image_size != 0 {
                    return Err(f.err(
                        "image_grid_pinpoints",
                        format!("{p:?} is not a multiple of the vision image_size {}", vision.image_size),
                    ));
                }
            }
        }
        let image_token_index = f.usize_or("image_token_index", f.usize_or("image_token_id", 32000)?)? as u32;
        Ok(LlavaConfig {
            kind,
            text,
            vision,
            image_token_index,
            pad_token_id: f.opt_usize("pad_token_id")?.map(|x| x as u32),
            projector_hidden_act: act,
            multimodal_projector_bias: f.bool_or("multimodal_projector_bias", true)?,
            vision_feature_layers: layers,
            vision_feature_select_strategy: strategy,
            image_grid_pinpoints: pinpoints,
        })
    }

    /// Index into `hidden_states` (0 = embeddings after pre-LN) of each selected layer.
    pub fn feature_state_indices(&self) -> Vec<usize> {
        let n = self.vision.num_hidden_layers as i64 + 1;
        self.vision_feature_layers.iter().map(|&l| if l < 0 { (n + l) as usize } else { l as usize }).collect()
    }
}

fn parse_pinpoints(v: &Value) -> Option<Vec<[usize; 2]>> {
    v.as_array()?
        .iter()
        .map(|p| {
            let a = p.as_array()?;
            if a.len() != 2 {
                return None;
            }
            Some([a[0].as_u64()? as usize, a[1].as_u64()? as usize])
        })
        .collect()
}

/// The files of a checkpoint directory.
#[derive(Clone, Debug)]
pub struct CheckpointPaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub preprocessor: PathBuf,
    pub tokenizer: PathBuf,
    pub generation: PathBuf,
}

impl CheckpointPaths {
    pub fn new(dir: &Path) -> Self {
        CheckpointPaths {
            dir: dir.to_path_buf(),
            config: dir.join("config.json"),
            preprocessor: dir.join("preprocessor_config.json"),
            tokenizer: dir.join("tokenizer.json"),
            generation: dir.join("generation_config.json"),
        }
    }
}

/// EOS ids from `generation_config.json` when present (it wins in HF's `generate`).
pub fn generation_eos(path: &Path) -> Result<Option<Vec<u32>>> {
    if !path.exists() {
        return Ok(None);
    }
    let v = read_json(path)?;
    let f = Fields { path, prefix: "", obj: as_object(&v, path, "")? };
    Ok(f.int_list("eos_token_id")?.map(|l| l.into_iter().map(|x| x as u32).collect()))
}
