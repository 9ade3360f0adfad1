//! Full-parameter training (`--train decoder,projector`, issue #17): which parts train, HF's
//! weight-decay grouping, and the model directory it writes.
//!
//! - [`TrainParts`] parses `--train`: `decoder` (every weight of the language model: embeddings,
//!   norms, every projection and lm_head), `projector` (in full; alone it is LLaVA's stage-1
//!   alignment), `vision` (the vision tower's weights up to the feature layer, through
//!   `model::clip_grad`: `Llava::train_vision`; later layers and post_layernorm get no gradient).
//! - [`hf_decays`]: which parameters get weight decay, as transformers 5.23's
//!   `Trainer.get_decay_parameter_names` decides (no decay for biases, norms and nn.LayerNorm).
//! - [`save_model`]: `out/` (and `out/checkpoint/`) as a complete HF model directory: every tensor
//!   of the base checkpoint under its own name and shape, in f32, the trained ones with their
//!   current values; sharded above `shard_bytes`; every other file of the base copied.
//!   [`load_trained`] reads the trained tensors back (resume).

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::weights::write_atomic;
use crate::model::llava::{locate_lm, locate_lm_head, locate_projector, locate_vision, vision_named};
use crate::model::Llava;
use crate::tensor::Tensor;
use crate::weights::WeightStore;

/// The parts `--train` names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrainParts {
    pub decoder: bool,
    pub projector: bool,
    pub vision: bool,
}

/// What `--train` accepts.
pub const TRAIN_PARTS: &str = "decoder, projector, vision";

impl std::str::FromStr for TrainParts {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut p = TrainParts::default();
        for part in s.split(',').map(str::trim) {
            match part {
                "decoder" => p.decoder = true,
                "projector" => p.projector = true,
                "vision" => p.vision = true,
                other => return Err(format!("--train: unknown part `{other}`; accepted parts: {TRAIN_PARTS} (comma-separated)")),
            }
        }
        Ok(p)
    }
}

/// Whether HF's Trainer decays the parameter `name` (its full module path): transformers 5.23's
/// `get_decay_parameter_names` drops names matching (lower-cased) `bias`, `layernorm`,
/// `rmsnorm`, `(^|.)norm($|.)`, `_norm($|.)`, and every parameter of an `nn.LayerNorm` (CLIP's
/// `layer_norm1/2`, `pre_layrnorm`, `post_layernorm`). Embeddings and lm_head decay.
pub fn hf_decays(name: &str) -> bool {
    let n = name.to_lowercase();
    if n.contains("bias") || n.contains("layernorm") || n.contains("rmsnorm") {
        return false;
    }
    let parts: Vec<&str> = n.split('.').collect();
    // `(^|\.)norm($|\.)` and `_norm($|\.)`: a component equal to `norm` or ending in `_norm`.
    if parts.iter().any(|p| *p == "norm" || p.ends_with("_norm")) {
        return false;
    }
    // nn.LayerNorm modules by type: CLIP's layer_norm1 / layer_norm2 and pre_layrnorm.
    !parts.iter().any(|p| p.starts_with("layer_norm") || *p == "pre_layrnorm")
}

/// Where the trained parts live in a checkpoint: the language model's prefix, lm_head's name
/// (HF's default when the file has none: a tied head) and the projector's prefix.
pub struct CheckpointNames {
    lm: &'static str,
    head: &'static str,
    projector: &'static str,
}

impl CheckpointNames {
    pub fn of(ws: &WeightStore) -> Result<Self> {
        Ok(CheckpointNames { lm: locate_lm(ws)?, head: locate_lm_head(ws).unwrap_or("lm_head.weight"), projector: locate_projector(ws)? })
    }

    /// The checkpoint name of a decoder weight named as in `Decoder::params_mut`.
    pub fn decoder(&self, rel: &str) -> String {
        if rel == "lm_head.weight" { self.head.to_string() } else { format!("{}.{rel}", self.lm) }
    }

    /// The checkpoint name of a projector parameter (`linear_1.weight`, ...).
    pub fn projector(&self, rel: &str) -> String {
        format!("{}.{rel}", self.projector)
    }
}

/// Every trained tensor of `model` under its name in the checkpoint of `ws`: the decoder's
/// (when `parts.decoder`; a tied lm_head is written under the checkpoint's lm_head name when the
/// file has one), the projector's (when `parts.projector`) and the vision tower's (when
/// `parts.vision`: those that train, under the checkpoint's tower prefix).
fn trained_names<'a>(model: &'a mut Llava, ws: &WeightStore, parts: TrainParts) -> Result<Vec<(String, &'a mut Tensor)>> {
    let names = CheckpointNames::of(ws)?;
    let mut out = Vec::new();
    if parts.vision {
        model.train_vision()?;
    }
    if parts.decoder {
        for (n, t) in model.decoder.params_mut() {
            out.push((names.decoder(&n), t));
        }
    }
    if parts.projector {
        for (n, t) in model.projector.params_mut() {
            out.push((names.projector(&n), t));
        }
    }
    if parts.vision {
        let tower = locate_vision(ws)?;
        for (n, t) in vision_named(model.vision_train.as_mut().expect("train_vision set it")) {
            out.push((format!("{tower}.{n}"), t));
        }
    }
    Ok(out)
}

/// Write `model` as an HF model directory in `dir` (created): the tensors of the base checkpoint
/// in `base` under their names and shapes, in f32, the trained ones (`parts`) from `model`; one
/// `model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`
/// when the whole is above `shard_bytes`; every other file of `base` copied except a run's own
/// (`*.jsonl` logs, `stage.json`, `trainer_state.json`, ...). Each file is written
/// to a temporary name and renamed; weight files of an earlier save that this one does not
/// write are removed.
pub fn save_model(model: &mut Llava, base: &Path, dir: &Path, parts: TrainParts, shard_bytes: u64) -> Result<()> {
    let ws = WeightStore::open(base)?;
    let tied = model.cfg.text.tie_word_embeddings;
    let trained: HashMap<String, &[f32]> = trained_names(model, &ws, parts)?.into_iter().map(|(n, t)| (n, t.data())).collect();
    save_tensors(&ws, base, dir, trained, tied, shard_bytes)
}

/// [`save_model`] from the trained tensors by checkpoint name (`trained`; any learner's: the GPU
/// learner downloads its f32 masters): the base checkpoint `ws` (opened from `base`) gives every
/// other tensor, the names, shapes and order. `tied`: a tied lm_head stored in the file takes the
/// embedding's value.
pub fn save_tensors(ws: &WeightStore, base: &Path, dir: &Path, mut trained: HashMap<String, &[f32]>, tied: bool, shard_bytes: u64) -> Result<()> {
    let head = locate_lm_head(ws);
    let embed_name = CheckpointNames::of(ws)?.decoder("embed_tokens.weight");
    if let (true, Some(h), Some(e)) = (tied, head, trained.get(&embed_name).copied()) {
        trained.insert(h.to_string(), e);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Group the tensors (in the checkpoint's name order) into shards.
    let names: Vec<String> = ws.names().map(str::to_string).collect();
    let mut shards: Vec<Vec<String>> = vec![Vec::new()];
    let (mut size, mut total) = (0u64, 0u64);
    for n in &names {
        let numel: usize = ws.shape_of(n).unwrap_or_default().iter().product();
        let bytes = 4 * numel as u64;
        if size > 0 && size + bytes > shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        total += bytes;
        shards.last_mut().expect("one shard").push(n.clone());
    }
    let k = shards.len();
    let file_name = |i: usize| if k == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{k:05}.safetensors", i + 1) };
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(shard.len());
        for n in shard {
            let (dt, shape, raw) = ws.raw(n)?;
            let bytes = match trained.get(n) {
                Some(t) => t.iter().flat_map(|v| v.to_le_bytes()).collect(),
                None => crate::weights::narrow(&crate::weights::widen(raw, dt).map_err(|e| Error::weights(ws.file_of(n), format!("`{n}`: {e}")))?, safetensors::Dtype::F32)
                    .map_err(|e| Error::weights(dir, e))?,
            };
            bufs.push((n.clone(), shape, bytes));
            weight_map.insert(n.clone(), serde_json::Value::String(file_name(i)));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
            .iter()
            .map(|(n, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).map_err(|e| Error::weights(dir, format!("`{n}`: {e}")))?)))
            .collect::<Result<_>>()?;
        let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::weights(dir, e.to_string()))?;
        write_atomic(&dir.join(file_name(i)), &bytes)?;
    }
    let index = dir.join("model.safetensors.index.json");
    if k > 1 {
        let json = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        write_atomic(&index, serde_json::to_string_pretty(&json).expect("json").as_bytes())?;
    }
    // Weight files this save did not write (an earlier save sharded differently).
    let written: Vec<String> = (0..k).map(file_name).collect();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        let stale = (name.starts_with("model") && name.ends_with(".safetensors") && !written.contains(&name)) || (k == 1 && p == index);
        if stale {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    // Everything else of the base: config, tokenizer, processor, generation config, ...
    for e in std::fs::read_dir(base).map_err(|e| Error::io(base, e))? {
        let p = e.map_err(|e| Error::io(base, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_file() && !name.ends_with(".safetensors") && name != "model.safetensors.index.json" && !RUN_FILES.contains(&name) && !name.ends_with(".jsonl") {
            let mut bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            if name == "config.json" {
                bytes = f32_config(&bytes).map_err(|e| Error::Json { path: p.clone(), source: e })?;
            }
            write_atomic(&dir.join(name), &bytes)?;
        }
    }
    Ok(())
}

/// Files a training run or a pipeline stage writes next to a model (the base may be an earlier
/// run's output): never copied, or the earlier run's log and `stage.json` would pass for this one's.
const RUN_FILES: [&str; 4] = ["stage.json", "trainer_state.json", "world_train.json", "summary.json"];

/// The base's config.json with its dtype fields (`dtype`, `torch_dtype`, at the top level and in
/// the sub-configs) saying float32, as the weights are now stored.
fn f32_config(bytes: &[u8]) -> std::result::Result<Vec<u8>, serde_json::Error> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes)?;
    let set = |o: &mut serde_json::Value| {
        for k in ["dtype", "torch_dtype"] {
            if let Some(d) = o.get_mut(k) {
                *d = "float32".into();
            }
        }
    };
    set(&mut v);
    for sub in ["text_config", "vision_config"] {
        if let Some(o) = v.get_mut(sub) {
            set(o);
        }
    }
    Ok(serde_json::to_vec_pretty(&v)?.into_iter().chain(*b"\n").collect())
}

/// Read the trained tensors (`parts`) of `model` back from the model directory `dir` that
/// [`save_model`] wrote (bit for bit: it stores f32).
pub fn load_trained(model: &mut Llava, dir: &Path, parts: TrainParts) -> Result<()> {
    let ws = WeightStore::open(dir)?;
    for (n, t) in trained_names(model, &ws, parts)? {
        let v = ws.get(&n, t.shape())?;
        t.data_mut().copy_from_slice(v.data());
    }
    model.sync_vision()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_follows_hf_names() {
        for n in [
            "model.language_model.embed_tokens.weight",
            "lm_head.weight",
            "model.language_model.layers.0.self_attn.q_proj.weight",
            "model.multi_modal_projector.linear_1.weight",
        ] {
            assert!(hf_decays(n), "{n}");
        }
        for n in [
            "model.language_model.layers.0.input_layernorm.weight",
            "model.language_model.layers.1.post_attention_layernorm.weight",
            "model.language_model.norm.weight",
            "model.multi_modal_projector.linear_2.bias",
            "model.vision_tower.vision_model.encoder.layers.0.layer_norm1.weight",
            "model.vision_tower.vision_model.pre_layrnorm.weight",
            "model.language_model.layers.0.self_attn.q_norm.weight",
        ] {
            assert!(!hf_decays(n), "{n}");
        }
    }

    #[test]
    fn train_parts_parse_and_refuse() {
        assert_eq!("decoder,projector".parse::<TrainParts>().unwrap(), TrainParts { decoder: true, projector: true, vision: false });
        assert_eq!("projector".parse::<TrainParts>().unwrap(), TrainParts { decoder: false, projector: true, vision: false });
        assert_eq!("decoder, vision".parse::<TrainParts>().unwrap(), TrainParts { decoder: true, projector: false, vision: true });
        let e = "decodr".parse::<TrainParts>().unwrap_err();
        assert!(e.contains("--train") && e.contains("decodr") && e.contains(TRAIN_PARTS), "{e}");
    }
}
