//! LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`, with
//! PEFT's key names, so adapters move freely between stic, PEFT, transformers and vLLM.
//!
//! Keys: `base_model.model.<module path in the transformers model>.lora_{A,B}.weight`, where the
//! module path of a decoder projection is `model.language_model.layers.{i}.{self_attn,mlp}.{proj}`
//! (transformers >= 4.52) or `language_model.model.layers.{i}...` (older). lora_A is [r, in],
//! lora_B is [out, r]; scale = lora_alpha / r, or lora_alpha / sqrt(r) with `use_rslora`.
//! Supported: LoRA on the decoder's linear layers (what STIC trains), and the projector trained in
//! full as PEFT's `modules_to_save: ["multi_modal_projector"]` (keys
//! `base_model.model.model.multi_modal_projector.linear_1.weight`, ...). LoRA on other modules
//! (vision tower, projector), DoRA, biases and other `modules_to_save` are refused with a clear
//! error.
//!
//! PEFT cannot express a projector without LoRA, so a projector-only run (LLaVA's alignment stage)
//! writes `multi_modal_projector.safetensors` instead (keys `multi_modal_projector.linear_1.weight`,
//! ..., the hub checkpoints' names); `--adapter` and `stic merge` take either kind of folder.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::read_json;
use crate::error::{Error, Result};
use crate::weights::write_atomic;
use crate::model::Llava;
use crate::nn::Lora;
use crate::tensor::Tensor;
use crate::weights::{WeightSource, WeightStore};

const LM_PREFIXES: [&str; 2] = ["model.language_model.layers.", "language_model.model.layers."];
const PROJECTOR_PREFIXES: [&str; 2] = ["base_model.model.model.multi_modal_projector.", "base_model.model.multi_modal_projector."];
/// The file of a projector-only run.
pub const PROJECTOR_FILE: &str = "multi_modal_projector.safetensors";
/// The key prefix of the projector-only file's tensors.
pub const PROJECTOR_KEY: &str = "multi_modal_projector.";

#[derive(Clone, Debug, PartialEq)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    pub lora_dropout: f64,
    /// `modules_to_save: ["multi_modal_projector"]`: the adapter carries the whole projector.
    pub projector: bool,
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
            ("use_dora", field("use_dora").is_none_or(|x| x == false)),
            ("bias", field("bias").is_none_or(|x| x == "none")),
            ("fan_in_fan_out", field("fan_in_fan_out").is_none_or(|x| x == false)),
            (
                "modules_to_save",
                field("modules_to_save").is_none_or(|x| x.as_array().is_some_and(|a| a.iter().all(|m| m == "multi_modal_projector"))),
            ),
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
        Ok(AdapterConfig {
            r,
            lora_alpha,
            use_rslora: field("use_rslora").and_then(|x| x.as_bool()).unwrap_or(false),
            lora_dropout: field("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0),
            projector: field("modules_to_save").and_then(|x| x.as_array()).is_some_and(|a| !a.is_empty()),
        })
    }

    pub fn scale(&self) -> f32 {
        let r = self.r as f64;
        (if self.use_rslora { self.lora_alpha / r.sqrt() } else { self.lora_alpha / r }) as f32
    }
}

/// The projector parameter (`linear_1.weight`, ...) of a PEFT `modules_to_save` key.
fn projector_param(key: &str) -> Option<&str> {
    PROJECTOR_PREFIXES.iter().find_map(|p| key.strip_prefix(p))
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

/// Replace the projector's parameters with `name -> key` tensors of `ws` (shapes checked).
fn load_projector(model: &mut Llava, ws: &WeightStore, key: impl Fn(&str) -> String) -> Result<()> {
    for (name, p) in model.projector.params_mut() {
        let shape = p.shape().to_vec();
        *p = ws.get(&key(&name), &shape)?;
    }
    Ok(())
}

/// Attach the adapter in `dir` to `model`: PEFT LoRA on the decoder (with the projector when the
/// adapter saves it), or a projector-only folder. Returns the number of adapted projections.
pub fn load_adapter(model: &mut Llava, dir: &Path) -> Result<usize> {
    let pfile = dir.join(PROJECTOR_FILE);
    if !dir.join("adapter_config.json").exists() && pfile.exists() {
        let ws = WeightStore::from_files(dir, &[pfile])?;
        load_projector(model, &ws, |n| format!("{PROJECTOR_KEY}{n}"))?;
        ws.finish()?;
        return Ok(0);
    }
    let n_layers = model.decoder.n_layers();
    let shapes = crate::model::decoder::Decoder::<crate::backend::Cpu>::projection_shapes(&model.cfg.text);
    let (loras, projector) = read_loras(dir, |layer, proj| if layer < n_layers { proj_index(proj).map(|i| shapes[i]) } else { None })?;
    let count = loras.len();
    for (layer, proj, lora) in loras {
        *model.decoder.linear_mut(layer, proj).map(|l| &mut l.lora).expect("read_loras checked the projection") = Some(lora);
    }
    if let Some((ws, prefix)) = projector {
        load_projector(model, &ws, |n| format!("{prefix}{n}"))?;
        ws.finish()?;
    }
    Ok(count)
}

/// The index of a projection name in [`crate::model::decoder::PROJECTIONS`].
pub fn proj_index(name: &str) -> Option<usize> {
    crate::model::decoder::PROJECTIONS.iter().position(|p| *p == name)
}

/// The PEFT LoRA weights in `dir` as (layer, projection, adapter), in file order, for a model
/// whose projection `(layer, name)` has (in, out) features `shape(layer, name)` (None: the model
/// has no such projection, an error naming the key). When the adapter also saves the projector,
/// the open file and the key prefix of its parameters are returned for the caller to take them;
/// the caller then calls `finish` on it. Errors name the file and the key.
#[allow(clippy::type_complexity)]
pub fn read_loras(dir: &Path, shape: impl Fn(usize, &str) -> Option<(usize, usize)>) -> Result<(Vec<(usize, &'static str, Lora)>, Option<(WeightStore, String)>)> {
    let cfg = AdapterConfig::from_file(&dir.join("adapter_config.json"))?;
    let file = dir.join("adapter_model.safetensors");
    let ws = WeightStore::from_files(dir, std::slice::from_ref(&file))?;
    let names: Vec<String> = ws.names().map(str::to_string).collect();
    let mut loras = Vec::new();
    let mut projector_prefix = None;
    for name in &names {
        if let Some(param) = projector_param(name) {
            if !cfg.projector {
                return Err(Error::weights(&file, format!("`{name}`: projector weights, but adapter_config.json's modules_to_save does not list multi_modal_projector")));
            }
            projector_prefix = Some(name[..name.len() - param.len()].to_string());
            continue;
        }
        let (layer, proj, which) = parse_key(name).ok_or_else(|| {
            Error::weights(&file, format!("`{name}` is not a LoRA weight of a decoder projection or a projector weight (only those are supported)"))
        })?;
        if which == 'B' {
            continue; // handled with its A
        }
        let b_name = name.replace(".lora_A.weight", ".lora_B.weight");
        let (k, n) = proj_index(&proj)
            .and_then(|_| shape(layer, &proj))
            .ok_or_else(|| Error::weights(&file, format!("`{name}`: the model has no layer {layer} projection `{proj}`")))?;
        let a = ws.get(name, &[cfg.r, k])?;
        let b = ws.get(&b_name, &[n, cfg.r])?;
        let proj = crate::model::decoder::PROJECTIONS[proj_index(&proj).expect("checked")];
        loras.push((layer, proj, Lora { a, b, scale: cfg.scale(), dropout: cfg.lora_dropout as f32 }));
    }
    let projector = match projector_prefix {
        Some(prefix) => Some((ws, prefix)),
        None if cfg.projector => return Err(Error::weights(&file, "adapter_config.json lists multi_modal_projector in modules_to_save but the file has no projector weights")),
        None => {
            ws.finish()?;
            None
        }
    };
    if loras.is_empty() {
        return Err(Error::weights(&file, "the adapter holds no LoRA weights"));
    }
    Ok((loras, projector))
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

/// What a new adapter looks like.
#[derive(Clone, Debug)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    /// LoRA dropout on the adapter's input during training (PEFT's lora_dropout).
    pub dropout: f64,
    /// Projection names (q_proj, ..., down_proj) to adapt in every decoder layer.
    pub targets: Vec<String>,
}

impl LoraSpec {
    pub fn scale(&self) -> f32 {
        (self.alpha / self.r as f64) as f32
    }
}

/// Attach fresh adapters as PEFT initialises them: A ~ kaiming_uniform(a = sqrt 5), which is
/// U(-1/sqrt(in), 1/sqrt(in)), and B = 0, so the adapted model starts equal to the base model.
pub fn init_lora(model: &mut Llava, spec: &LoraSpec, seed: u64) -> Result<usize> {
    let shapes: Vec<(usize, &'static str, usize, usize)> =
        model.decoder.projections_mut().map(|(layer, name, lin)| (layer, name, lin.in_features(), lin.out_features())).collect();
    let loras = init_loras(&shapes, spec, seed)?;
    let n = loras.len();
    for (layer, name, lora) in loras {
        model.decoder.linear_mut(layer, name).expect("a projection of this model").lora = Some(lora);
    }
    Ok(n)
}

/// Fresh adapters (see [`init_lora`]) for the targeted projections among `shapes` (layer, name,
/// in, out), drawn in that order from one generator seeded with `seed`: a model's projections in
/// PEFT order give the same adapters on every backend.
pub fn init_loras(shapes: &[(usize, &'static str, usize, usize)], spec: &LoraSpec, seed: u64) -> Result<Vec<(usize, &'static str, Lora)>> {
    if spec.r == 0 {
        return Err(Error::Input("LoRA rank must be positive".into()));
    }
    if !(0.0..1.0).contains(&spec.dropout) {
        return Err(Error::Input(format!("LoRA dropout must be in [0, 1), got {}", spec.dropout)));
    }
    for t in &spec.targets {
        if proj_index(t).is_none() {
            return Err(Error::Input(format!("unknown LoRA target `{t}` (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj)")));
        }
    }
    let mut rng = crate::rng::Rng::new(seed);
    let mut out = Vec::new();
    for &(layer, name, inp, outf) in shapes {
        if !spec.targets.iter().any(|t| t == name) {
            continue;
        }
        let bound = 1.0 / (inp as f64).sqrt();
        let a: Vec<f32> = (0..spec.r * inp).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect();
        out.push((
            layer,
            name,
            Lora { a: crate::Tensor::new(a, &[spec.r, inp])?, b: crate::Tensor::zeros(&[outf, spec.r]), scale: spec.scale(), dropout: spec.dropout as f32 },
        ));
    }
    Ok(out)
}

/// Write the model's adapters in PEFT's format into `dir` (created if needed), with the projector
/// as `modules_to_save` when `projector`; with no adapters and `projector`, the projector-only
/// file. Files are written to temporary names and renamed, so a crash never leaves a half-written
/// adapter.
pub fn save_adapter(model: &mut Llava, dir: &Path, spec: &LoraSpec, projector: bool) -> Result<()> {
    let mut loras: Vec<(usize, &'static str, Lora)> = Vec::new();
    for (layer, name, lin) in model.decoder.projections_mut() {
        if let Some(l) = &lin.lora {
            loras.push((layer, name, l.clone()));
        }
    }
    let params: Vec<(String, Tensor)> = if projector { model.projector.params_mut().into_iter().map(|(n, p)| (n, p.clone())).collect() } else { Vec::new() };
    save_loras(dir, spec, &loras, projector.then_some(params.as_slice()))
}

/// [`save_adapter`] from host tensors: the adapters (layer, name, adapter) and, when `projector`
/// is given, the projector's parameters by name (`linear_1.weight`, ...).
pub fn save_loras(dir: &Path, spec: &LoraSpec, loras: &[(usize, &'static str, Lora)], projector: Option<&[(String, Tensor)]>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let has_lora = !loras.is_empty();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    if let Some(params) = projector {
        let prefix = if has_lora { PROJECTOR_PREFIXES[0] } else { PROJECTOR_KEY };
        for (name, p) in params {
            tensors.push((format!("{prefix}{name}"), p.shape().to_vec(), p.data().iter().flat_map(|v| v.to_le_bytes()).collect()));
        }
    }
    for (layer, name, l) in loras {
        let part = if ["q_proj", "k_proj", "v_proj", "o_proj"].contains(name) { "self_attn" } else { "mlp" };
        let key = format!("base_model.model.model.language_model.layers.{layer}.{part}.{name}");
        for (ab, t) in [("A", &l.a), ("B", &l.b)] {
            tensors.push((format!("{key}.lora_{ab}.weight"), t.shape().to_vec(), t.data().iter().flat_map(|v| v.to_le_bytes()).collect()));
        }
    }
    if tensors.is_empty() {
        return Err(Error::Input("the model has no adapters to save".into()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).map_err(|e| Error::weights(dir, e.to_string()))?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, None::<std::collections::HashMap<String, String>>).map_err(|e| Error::weights(dir, e.to_string()))?;
    if !has_lora {
        return write_atomic(&dir.join(PROJECTOR_FILE), &bytes);
    }
    let pattern = format!(r".*language_model.*\.({})", spec.targets.join("|"));
    let config = serde_json::json!({
        "peft_type": "LORA",
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": pattern,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": if projector.is_some() { serde_json::json!(["multi_modal_projector"]) } else { serde_json::Value::Null },
        "init_lora_weights": true,
        "inference_mode": true,
        "task_type": null,
        "base_model_name_or_path": null,
    });
    write_atomic(&dir.join("adapter_model.safetensors"), &bytes)?;
    write_atomic(&dir.join("adapter_config.json"), serde_json::to_string_pretty(&config).expect("json").as_bytes())
}

/// How to store merged weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeDtype {
    /// The base weight's dtype (what PEFT's merge_and_unload keeps).
    Keep,
    F32,
}

/// What an adapter does to a checkpoint's tensors: the decoder projections that become
/// W + scale B A, and the projector tensors that the adapter replaces.
struct MergePlan {
    scale: f32,
    r: usize,
    ads: WeightStore,
    afile: PathBuf,
    /// weight name -> (lora_A name, lora_B name)
    targets: HashMap<String, (String, String)>,
    /// base projector tensor name -> its replacement in the adapter
    replaced: HashMap<String, String>,
}

impl MergePlan {
    fn new(base: &dyn WeightSource, adapter: &Path) -> Result<Self> {
        let projector_only = !adapter.join("adapter_config.json").exists() && adapter.join(PROJECTOR_FILE).exists();
        let (cfg, afile) = if projector_only {
            (None, adapter.join(PROJECTOR_FILE))
        } else {
            (Some(AdapterConfig::from_file(&adapter.join("adapter_config.json"))?), adapter.join("adapter_model.safetensors"))
        };
        let ads = WeightStore::from_files(adapter, std::slice::from_ref(&afile))?;
        let lm = crate::model::llava::locate_lm(base)?;
        let proj = crate::model::llava::locate_projector(base)?;
        let mut targets = HashMap::new();
        let mut replaced = HashMap::new();
        for name in ads.names() {
            let param = if projector_only { name.strip_prefix(PROJECTOR_KEY) } else { projector_param(name) };
            if let Some(param) = param {
                replaced.insert(format!("{proj}.{param}"), name.to_string());
                continue;
            }
            let (layer, proj, which) = parse_key(name).ok_or_else(|| {
                Error::weights(&afile, format!("`{name}` is not a LoRA weight of a decoder projection or a projector weight (only those are supported)"))
            })?;
            if which == 'A' {
                let part = if ["q_proj", "k_proj", "v_proj", "o_proj"].contains(&proj.as_str()) { "self_attn" } else { "mlp" };
                targets.insert(format!("{lm}.layers.{layer}.{part}.{proj}.weight"), (name.to_string(), name.replace(".lora_A.", ".lora_B.")));
            }
        }
        let (scale, r) = cfg.map(|c| (c.scale(), c.r)).unwrap_or((0.0, 0));
        Ok(MergePlan { scale, r, ads, afile, targets, replaced })
    }

    /// The merged tensor `name` [shape], reading the base weight from `base`; None when the
    /// adapter leaves it alone.
    fn apply(&self, name: &str, shape: &[usize], base: &dyn WeightSource) -> Option<Result<Tensor>> {
        if let Some(src) = self.replaced.get(name) {
            base.skip(name);
            return Some(self.ads.get(src, shape));
        }
        let (an, bn) = self.targets.get(name)?;
        Some((|| {
            if shape.len() != 2 {
                return Err(Error::weights(&self.afile, format!("`{an}` adapts `{name}` of shape {shape:?}, not a matrix")));
            }
            let (o, i) = (shape[0], shape[1]);
            let w = base.get(name, shape)?;
            let a = self.ads.get(an, &[self.r, i])?;
            let b = self.ads.get(bn, &[o, self.r])?;
            let ba = crate::backend::cpu::matmul(b.data(), a.data(), o, self.r, i);
            let m: Vec<f32> = w.data().iter().zip(&ba).map(|(&x, &d)| x + self.scale * d).collect();
            Tensor::new(m, shape)
        })())
    }
}

/// A checkpoint seen through an adapter: every tensor as `stic merge` would write it (W + scale
/// B A for the adapted projections, the adapter's projector when it carries one), computed as the
/// model loads. This is how a non-CPU backend runs an adapter: merged once, at load time.
pub struct MergedWeights<'a> {
    base: &'a dyn WeightSource,
    plan: MergePlan,
    used: Mutex<HashSet<String>>,
}

impl<'a> MergedWeights<'a> {
    pub fn new(base: &'a dyn WeightSource, adapter: &Path) -> Result<Self> {
        Ok(MergedWeights { base, plan: MergePlan::new(base, adapter)?, used: Mutex::new(HashSet::new()) })
    }

    /// Errors unless every tensor of the adapter went into the model.
    pub fn finish(&self) -> Result<()> {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let missing = self.plan.targets.keys().chain(self.plan.replaced.keys()).find(|n| !used.contains(*n));
        if let Some(n) = missing {
            return Err(Error::weights(&self.plan.afile, format!("adapts `{n}`, which the model in {} does not load", self.base.dir().display())));
        }
        Ok(())
    }
}

impl WeightSource for MergedWeights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match self.plan.apply(name, shape, self.base) {
            Some(t) => {
                self.used.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string());
                t
            }
            None => self.base.get(name, shape),
        }
    }
    fn contains(&self, name: &str) -> bool {
        self.base.contains(name)
    }
    fn skip(&self, name: &str) {
        self.base.skip(name)
    }
    fn dir(&self) -> &Path {
        self.base.dir()
    }
}

/// `stic merge`: write the checkpoint in `model` with the adapter in `adapter` folded into its
/// weights (W + scale B A) to `out`, shard by shard (never the whole model in memory). Every other
/// tensor is copied byte for byte, and the non-weight files (config, tokenizer, processor) are
/// copied. The projector weights of an adapter that carries them replace the base ones. Returns
/// the number of merged projections.
pub fn merge(model: &Path, adapter: &Path, out: &Path, dtype: MergeDtype) -> Result<usize> {
    let base = WeightStore::open(model)?;
    let plan = MergePlan::new(&base, adapter)?;
    let afile = plan.afile.clone();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let (mut merged, mut merged_projector) = (0, 0);
    for file in base.files() {
        let names: Vec<String> = base.names().filter(|n| base.file_of(n) == file).map(str::to_string).collect();
        let mut bufs: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for n in &names {
            let (dt, shape, bytes) = base.raw(n)?;
            let odt = if dtype == MergeDtype::F32 { safetensors::Dtype::F32 } else { dt };
            match plan.apply(n, &shape, &base) {
                Some(t) => {
                    let bytes = crate::weights::narrow(t?.data(), odt).map_err(|e| Error::weights(&file, format!("`{n}`: {e}")))?;
                    bufs.push((n.clone(), odt, shape, bytes));
                    if plan.replaced.contains_key(n) {
                        merged_projector += 1;
                    } else {
                        merged += 1;
                    }
                }
                None => bufs.push((n.clone(), dt, shape, bytes.to_vec())),
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
            .iter()
            .map(|(n, d, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).map_err(|e| Error::weights(&file, e.to_string()))?)))
            .collect::<Result<_>>()?;
        let meta: std::collections::HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::weights(&file, e.to_string()))?;
        write_atomic(&out.join(file.file_name().expect("file name")), &bytes)?;
    }
    if merged_projector != plan.replaced.len() {
        return Err(Error::weights(&afile, format!("{} projector weights but {merged_projector} matching weights in {}", plan.replaced.len(), model.display())));
    }
    if merged != plan.targets.len() {
        return Err(Error::weights(&afile, format!("{} adapted projections but {merged} matching weights in {}", plan.targets.len(), model.display())));
    }
    for e in std::fs::read_dir(model).map_err(|e| Error::io(model, e))? {
        let p = e.map_err(|e| Error::io(model, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_file() && !name.ends_with(".safetensors") {
            std::fs::copy(&p, out.join(name)).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(merged)
}
