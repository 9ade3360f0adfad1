//! `stic world train-clip`: a tiny CLIP trained contrastively on a world's captions (issue #17
//! item 6: CSR's relevance reward in the world, and the vision tower the world LLaVA starts from).
//!
//! Data: the train split's (image, caption) pairs of captions.json. Model: an HF `CLIPModel`
//! (`model::clip_params`) with vision image_size = the world's (world.json), patch 8, and both
//! towers `width` wide and `layers` deep (heads of 16, MLP 4x), projection = width, quick_gelu,
//! initialised as transformers does. Training: `model::clip_grad::clip_loss_grads` per batch,
//! AdamW (torch's arithmetic, `optim`) with HF's decay groups (no decay on biases, LayerNorm
//! weights and logit_scale), linear warmup over the first 10% of steps then cosine to 0; batch order
//! seeded per epoch; one JSON line per step in `train_log.jsonl`. A checkpoint (parameters, AdamW
//! state, position) closes every epoch, so a killed run resumes at the last finished epoch with the
//! same result as an unbroken one.
//!
//! Output (`--out`): config.json, model.safetensors, tokenizer.json (a copy), preprocessor_config.json
//! (CLIPImageProcessor at the world's size), every file written to a temporary name and renamed;
//! `model::ClipModel` and `stic clip-score` load the folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use crate::config::{read_json, VisionConfig};
use crate::error::{Error, Result};
use crate::image::{load_image, preprocess_clip, ImageProcessorConfig};
use crate::model::clip_grad::clip_loss_grads;
use crate::model::clip_model::{ClipConfig, ClipModel, ClipTokenizer};
use crate::model::clip_params::ClipParams;
use crate::weights::{f32_safetensors, write_atomic};
use crate::model::clip_text::ClipTextConfig;
use crate::optim::{AdamWConfig, AdamWState};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::world::scene::{Scene, Shape, COLOURS};
use crate::world::{item_rng, read_scenes, text};

/// What `train-clip` does.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainClipArgs {
    pub data: PathBuf,
    pub out: PathBuf,
    pub tokenizer: PathBuf,
    pub seed: u64,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub weight_decay: f32,
    /// Width of both towers (and the projection).
    pub width: usize,
    /// Depth of both towers.
    pub layers: usize,
    pub patch: usize,
    pub quiet: bool,
    /// Add to every batch, for each caption, the caption with one of its shapes swapped for a shape
    /// the image does not have, as an extra negative (`swap_shape`): without them the contrastive
    /// loss is met by colour and background alone and the CLIP ignores shape.
    pub hard_negatives: bool,
    /// Return after this many epochs (checkpoint written, no final model): what a kill right after
    /// a checkpoint leaves, for the resume tests.
    pub stop_after: Option<usize>,
}

impl TrainClipArgs {
    /// `train-clip`'s defaults (the CLI's): the repository's CLIP BPE tokenizer, seed 0, 20 epochs,
    /// batches of 64, lr 1e-3, weight decay 0.1, 64 wide, 2 layers, patch 8, no hard negatives.
    pub fn defaults(data: &Path, out: &Path) -> Self {
        TrainClipArgs {
            data: data.to_path_buf(),
            out: out.to_path_buf(),
            tokenizer: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip_tokenizer/tokenizer.json")),
            seed: 0,
            epochs: 20,
            batch: 64,
            lr: 1e-3,
            weight_decay: 0.1,
            width: 64,
            layers: 2,
            patch: 8,
            quiet: false,
            hard_negatives: false,
            stop_after: None,
        }
    }
}

/// A checkpoint's position and the arguments it was made with.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct State {
    epochs_done: usize,
    step: usize,
    seed: u64,
    batch: usize,
    width: usize,
    layers: usize,
}

const CKPT: &str = "checkpoint";
const CKPT_NEW: &str = "checkpoint.new";
const LOG: &str = "train_log.jsonl";

/// The train split's (image path, caption) pairs of captions.json.
pub fn read_captions(world: &Path) -> Result<Vec<(PathBuf, String)>> {
    let path = world.join("captions.json");
    let v = read_json(&path)?;
    let items = v.as_array().ok_or_else(|| Error::config(&path, "", "expected a list of LLaVA examples"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            let image = ex["image"].as_str().ok_or_else(|| Error::config(&path, format!("[{i}].image"), "missing"))?;
            let caption = ex["conversations"][1]["value"].as_str().ok_or_else(|| Error::config(&path, format!("[{i}].conversations[1]"), "no gpt turn"))?;
            Ok((world.join(image), caption.to_string()))
        })
        .collect()
}

/// CLIPImageProcessor's config at the world's image size (resize to it, center crop, CLIP mean/std).
pub fn processor_json(size: usize) -> serde_json::Value {
    json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true, "size": {"shortest_edge": size}, "resample": 3,
        "do_center_crop": true, "crop_size": {"height": size, "width": size},
        "do_rescale": true, "rescale_factor": 1.0 / 255.0,
        "do_normalize": true, "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": true,
    })
}

/// The model `train-clip` creates for a world of `size` px and a tokenizer of `vocab` ids.
pub fn clip_config(a: &TrainClipArgs, size: usize, vocab: usize, eos: u32) -> Result<ClipConfig> {
    let (w, l) = (a.width, a.layers);
    if w == 0 || !w.is_multiple_of(16) || l == 0 || a.patch == 0 || !size.is_multiple_of(a.patch) {
        return Err(Error::Input(format!("train-clip: width {w} must be a multiple of 16, layers {l} >= 1, patch {} must divide the image size {size}", a.patch)));
    }
    let text = ClipTextConfig { vocab_size: vocab, hidden_size: w, intermediate_size: 4 * w, num_hidden_layers: l, num_attention_heads: w / 16, eos_token_id: eos, ..Default::default() };
    let vision = VisionConfig {
        hidden_size: w,
        intermediate_size: 4 * w,
        num_hidden_layers: l,
        num_attention_heads: w / 16,
        num_channels: 3,
        image_size: size,
        patch_size: a.patch,
        layer_norm_eps: 1e-5,
        hidden_act: "quick_gelu".into(),
    };
    Ok(ClipConfig { text, vision, projection_dim: w, logit_scale_init_value: 2.6592 })
}

/// HF Trainer's decay groups: no weight decay on biases and LayerNorm weights (nor logit_scale).
fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("layer_norm") || name.contains("layrnorm") || name.contains("layernorm") || name == "logit_scale")
}

/// Linear warmup over the first 10% of steps, then cosine to 0 (HF's cosine schedule).
fn lr_at(base: f32, step: usize, total: usize) -> f32 {
    let warm = (total / 10).max(1);
    if step < warm {
        return base * (step + 1) as f32 / warm as f32;
    }
    let prog = (step - warm) as f64 / (total - warm).max(1) as f64;
    (base as f64 * 0.5 * (1.0 + (std::f64::consts::PI * prog).cos())) as f32
}

/// The batches of an epoch: a seeded permutation cut into `batch`-sized pieces; an incomplete last
/// piece is dropped (as `drop_last`: the loss of a smaller batch, with fewer negatives, is not
/// comparable), unless it is the only one.
fn epoch_batches(n: usize, batch: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed ^ (0x9E37_79B9u64.wrapping_mul(epoch as u64 + 1)));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    if n < batch {
        return vec![order];
    }
    order.chunks_exact(batch).map(<[usize]>::to_vec).collect()
}

fn save_checkpoint(out: &Path, params: &ClipParams, opt: &Optim, state: &State) -> Result<()> {
    let new = out.join(CKPT_NEW);
    let _ = std::fs::remove_dir_all(&new);
    params.save(&new)?;
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, s) in opt {
        t.push((format!("m.{name}"), vec![s.m.len()], s.m.clone()));
        t.push((format!("v.{name}"), vec![s.v.len()], s.v.clone()));
        t.push((format!("step.{name}"), vec![1], vec![s.step as f32]));
    }
    let bytes = f32_safetensors(t.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())), &new)?;
    write_atomic(&new.join("optimizer.safetensors"), &bytes)?;
    write_atomic(&new.join("state.json"), serde_json::to_string_pretty(state).expect("json").as_bytes())?;
    let old = out.join(CKPT);
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    std::fs::rename(&new, &old).map_err(|e| Error::io(&old, e))
}

/// The last complete checkpoint: `checkpoint/`, or `checkpoint.new/` when a kill fell between
/// removing the old one and renaming the new one.
/// AdamW's state per parameter name.
type Optim = BTreeMap<String, AdamWState>;

fn load_checkpoint(out: &Path) -> Result<Option<(ClipParams, Optim, State)>> {
    let dir = [CKPT, CKPT_NEW].iter().map(|d| out.join(d)).find(|d| d.join("state.json").is_file());
    let Some(dir) = dir else { return Ok(None) };
    let state: State = serde_json::from_value(read_json(&dir.join("state.json"))?).map_err(|e| Error::config(dir.join("state.json"), "", e.to_string()))?;
    let params = ClipParams::load(&dir)?;
    let path = dir.join("optimizer.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::weights(&dir, e.to_string()))?;
    let f32s = |name: &str| -> Result<Vec<f32>> {
        let v = st.tensor(name).map_err(|e| Error::weights(&dir, format!("{name}: {e}")))?;
        Ok(v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    };
    let mut opt = BTreeMap::new();
    for name in params.tensors.keys() {
        opt.insert(name.clone(), AdamWState { step: f32s(&format!("step.{name}"))?[0] as u64, m: f32s(&format!("m.{name}"))?, v: f32s(&format!("v.{name}"))? });
    }
    Ok(Some((params, opt, state)))
}

/// Keep the first `steps` lines of the log (a resumed run rewrites the steps after its checkpoint).
fn trim_log(path: &Path, steps: usize) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: String = text.lines().take(steps).map(|l| format!("{l}\n")).collect();
    std::fs::write(path, kept).map_err(|e| Error::io(path, e))
}

/// What a finished run reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainClipSummary {
    pub pairs: usize,
    pub params: usize,
    pub steps: usize,
    pub first_loss: f64,
    pub last_epoch_loss: f64,
    pub seconds: f64,
}

/// `stic world train-clip`.
pub fn train_clip(a: &TrainClipArgs) -> Result<TrainClipSummary> {
    let t0 = Instant::now();
    let world = read_json(&a.data.join("world.json"))?;
    let size = world["image_size"].as_u64().ok_or_else(|| Error::config(a.data.join("world.json"), "image_size", "missing"))? as usize;
    let pairs = read_captions(&a.data)?;
    if pairs.len() < 2 || a.batch < 2 || a.epochs == 0 {
        // (a batch of fewer than 2 pairs has no negatives)
        return Err(Error::Input(format!("train-clip: {} pairs, batch {}, epochs {}: need at least 2 pairs, a batch of 2 and 1 epoch", pairs.len(), a.batch, a.epochs)));
    }
    let raw_tok = tokenizers::Tokenizer::from_file(&a.tokenizer).map_err(|e| Error::Tokenizer { path: a.tokenizer.clone(), msg: e.to_string() })?;
    let vocab = raw_tok.get_vocab_size(true);
    let tok = ClipTokenizer::from_file(&a.tokenizer, 77)?;
    let empty = tok.encode(&[String::new()])?.remove(0);
    let (bos, eos) = (empty[0], *empty.last().expect("BOS and EOS"));
    let cfg = clip_config(a, size, vocab, eos)?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let proc_path = a.out.join("preprocessor_config.json");
    write_atomic(&proc_path, serde_json::to_string_pretty(&processor_json(size)).expect("json").as_bytes())?;
    let tok_bytes = std::fs::read(&a.tokenizer).map_err(|e| Error::io(&a.tokenizer, e))?;
    write_atomic(&a.out.join("tokenizer.json"), &tok_bytes)?;
    let proc = ImageProcessorConfig::from_file(&proc_path)?;

    let ids = tok.encode(&pairs.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>())?;
    let plane = 3 * size * size;
    let mut pixels = Vec::with_capacity(pairs.len() * plane);
    for (img, _) in &pairs {
        pixels.extend_from_slice(preprocess_clip(&load_image(img)?, &proc)?.pixel_values.data());
    }

    let per_epoch = epoch_batches(pairs.len(), a.batch, a.seed, 0).len();
    let total = per_epoch * a.epochs;
    let adam = AdamWConfig { lr: a.lr, weight_decay: a.weight_decay, ..Default::default() };
    let log_path = a.out.join(LOG);
    let (mut params, mut opt, mut epoch0, mut step) = match load_checkpoint(&a.out)? {
        Some((p, o, s)) => {
            if (s.seed, s.batch, s.width, s.layers) != (a.seed, a.batch, a.width, a.layers) || p.cfg != cfg {
                return Err(Error::Input(format!("{}: a checkpoint of other settings ({s:?}); use another --out", a.out.display())));
            }
            trim_log(&log_path, s.step)?;
            if !a.quiet {
                eprintln!("train-clip: resuming after epoch {} (step {})", s.epochs_done, s.step);
            }
            (p, o, s.epochs_done, s.step)
        }
        None => {
            trim_log(&log_path, 0)?;
            let p = ClipParams::init(&cfg, bos, a.seed, 0.02, 1.0);
            let o = p.tensors.iter().map(|(n, t)| (n.clone(), AdamWState::new(t.len()))).collect();
            (p, o, 0, 0)
        }
    };
    if !a.quiet {
        eprintln!("train-clip: {} pairs, {} parameters, {per_epoch} steps per epoch, {} epochs", pairs.len(), params.n_params(), a.epochs);
    }
    let mut log = std::fs::OpenOptions::new().append(true).create(true).open(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let (mut first_loss, mut last_epoch_loss) = (f64::NAN, f64::NAN);
    while epoch0 < a.epochs {
        let mut sum = 0.0;
        let batches = epoch_batches(pairs.len(), a.batch, a.seed, epoch0);
        for batch in &batches {
            let px: Vec<f32> = batch.iter().flat_map(|&i| pixels[i * plane..][..plane].iter().copied()).collect();
            let px = Tensor::new(px, &[batch.len(), 3, size, size])?;
            let mut bids: Vec<Vec<u32>> = batch.iter().map(|&i| ids[i].clone()).collect();
            if a.hard_negatives {
                let mut rng = crate::rng::Rng::new(a.seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let swapped: Vec<String> = batch.iter().filter_map(|&i| swap_shape(&pairs[i].1, &mut rng)).collect();
                bids.extend(tok.encode(&swapped)?);
            }
            let (loss, grads) = clip_loss_grads(&params, &px, &bids)?;
            let lr = lr_at(a.lr, step, total);
            for (name, t) in params.tensors.iter_mut() {
                let g = &grads[name];
                let cfg = AdamWConfig { weight_decay: if decays(name) { adam.weight_decay } else { 0.0 }, ..adam };
                opt.get_mut(name).expect("state of every parameter").step(&cfg, lr, t.data_mut(), g);
            }
            step += 1;
            sum += loss;
            if first_loss.is_nan() {
                first_loss = loss;
            }
            let line = json!({"epoch": epoch0, "step": step, "loss": loss, "lr": lr, "logit_scale": params.get("logit_scale").data()[0], "secs": t0.elapsed().as_secs_f64()});
            use std::io::Write;
            writeln!(log, "{line}").map_err(|e| Error::io(&log_path, e))?;
        }
        last_epoch_loss = sum / batches.len() as f64;
        epoch0 += 1;
        save_checkpoint(&a.out, &params, &opt, &State { epochs_done: epoch0, step, seed: a.seed, batch: a.batch, width: a.width, layers: a.layers })?;
        if !a.quiet {
            eprintln!("train-clip: epoch {epoch0}/{}: mean loss {last_epoch_loss:.4} ({:.1}s)", a.epochs, t0.elapsed().as_secs_f64());
        }
        if a.stop_after == Some(epoch0) && epoch0 < a.epochs {
            return Err(Error::Input(format!("train-clip: stopped after epoch {epoch0} (--stop-after-epoch)")));
        }
    }
    params.save(&a.out)?;
    let summary = TrainClipSummary { pairs: pairs.len(), params: params.n_params(), steps: step, first_loss, last_epoch_loss, seconds: t0.elapsed().as_secs_f64() };
    write_atomic(&a.out.join("train_summary.json"), serde_json::to_string_pretty(&summary).expect("json").as_bytes())?;
    Ok(summary)
}

/// `caption` with one of the shapes it names (a whole word, singular) replaced by a shape it does
/// not name, both drawn from `rng`; None when it names no shape.
pub fn swap_shape(caption: &str, rng: &mut crate::rng::Rng) -> Option<String> {
    use super::scene::Shape;
    let words: Vec<&str> = caption.split(|c: char| !c.is_alphanumeric()).collect();
    let named: Vec<Shape> = Shape::ALL.into_iter().filter(|s| words.contains(&s.name())).collect();
    let others: Vec<Shape> = Shape::ALL.into_iter().filter(|s| !named.contains(s)).collect();
    if named.is_empty() || others.is_empty() {
        return None;
    }
    let (from, to) = (named[rng.below(named.len())].name(), others[rng.below(others.len())].name());
    // The first whole-word occurrence of `from`.
    let bytes = caption.as_bytes();
    let at = caption.match_indices(from).map(|(k, _)| k).find(|&k| {
        let before = k == 0 || !bytes[k - 1].is_ascii_alphanumeric();
        let after = k + from.len() == bytes.len() || !bytes[k + from.len()].is_ascii_alphanumeric();
        before && after
    })?;
    Some(format!("{}{to}{}", &caption[..at], &caption[at + from.len()..]))
}

/// Caption retrieval on the held-out images of a world: every held-out image against the captions
/// of all held-out images (one caption each, drawn as captions.json draws them).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Retrieval {
    pub images: usize,
    /// Fraction of images whose own caption scores highest.
    pub top1: f64,
    pub top5: f64,
    /// 1 / images and 5 / images.
    pub chance_top1: f64,
    pub chance_top5: f64,
    /// Fraction of images whose own caption outscores the same caption with one object's shape
    /// replaced by a shape the image does not have (chance 0.5): does the CLIP see shape?
    pub shape_swap: f64,
    /// The same with one object's colour replaced by another colour: does it see colour?
    pub colour_swap: f64,
}

/// `s` with one object's shape (`colour` false) or colour changed to one the image does not have,
/// drawn from `rng`.
pub fn swapped_scene(s: &Scene, colour: bool, rng: &mut Rng) -> Scene {
    let mut t = s.clone();
    let k = rng.below(t.objects.len());
    if colour {
        let others: Vec<&str> = COLOURS.iter().map(|c| c.0).filter(|c| *c != t.objects[k].colour).collect();
        t.objects[k].colour = others[rng.below(others.len())].to_string();
    } else {
        let present = s.shapes();
        let others: Vec<Shape> = Shape::ALL.into_iter().filter(|x| !present.contains(x)).collect();
        t.objects[k].shape = others[rng.below(others.len())];
    }
    t
}

/// Image -> caption retrieval of the CLIP in `model` on the held-out split of `world`.
pub fn heldout_retrieval(model: &Path, world: &Path) -> Result<Retrieval> {
    let m = ClipModel::load(model)?;
    let seed = read_json(&world.join("world.json"))?["seed"].as_u64().unwrap_or(0);
    let scenes: Vec<_> = read_scenes(world)?.into_iter().filter(|s| s.split == "heldout").collect();
    if scenes.len() < 2 {
        return Err(Error::Input(format!("{}: fewer than 2 held-out images", world.display())));
    }
    // Each caption with the same template draw (the stream cloned) for the scene and its swaps.
    let caption_of = |s: &Scene, t: &Scene| text::caption(t, &mut item_rng(seed, s.id.parse().unwrap_or(0), 2));
    let captions: Vec<String> = scenes.iter().map(|s| caption_of(s, s)).collect();
    let swaps = |colour: bool| -> Vec<String> {
        scenes.iter().map(|s| caption_of(s, &swapped_scene(s, colour, &mut item_rng(seed, s.id.parse().unwrap_or(0), 7 + colour as u64)))).collect()
    };
    let texts = m.text_embeds(&captions)?;
    let (shape_texts, colour_texts) = (m.text_embeds(&swaps(false))?, m.text_embeds(&swaps(true))?);
    let (mut top1, mut top5, mut shape_ok, mut colour_ok) = (0usize, 0usize, 0usize, 0usize);
    for (i, s) in scenes.iter().enumerate() {
        let img = m.image_embeds(&load_image(&world.join(&s.image))?)?;
        let scores = crate::model::clip_model::scores_from_embeds(img.data(), &texts, m.logit_scale);
        let better = scores.iter().filter(|&&x| x > scores[i]).count();
        top1 += (better == 0) as usize;
        top5 += (better < 5) as usize;
        let one = |t: &Tensor| crate::model::clip_model::scores_from_embeds(img.data(), t, m.logit_scale)[i];
        shape_ok += (scores[i] > one(&shape_texts)) as usize;
        colour_ok += (scores[i] > one(&colour_texts)) as usize;
    }
    let n = scenes.len() as f64;
    Ok(Retrieval {
        images: scenes.len(),
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
        chance_top1: 1.0 / n,
        chance_top5: (5.0 / n).min(1.0),
        shape_swap: shape_ok as f64 / n,
        colour_swap: colour_ok as f64 / n,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn swap_shape_replaces_one_named_shape_by_an_absent_one() {
        let c = "A large red star, a small blue starfish and a ring on a grey background.";
        for seed in 0..20 {
            let out = swap_shape(c, &mut crate::rng::Rng::new(seed)).unwrap();
            let diff: Vec<(&str, &str)> = c.split(' ').zip(out.split(' ')).filter(|(a, b)| a != b).collect();
            assert_eq!(diff.len(), 1, "{out}");
            let (from, to) = (diff[0].0.trim_end_matches(','), diff[0].1.trim_end_matches(','));
            assert!(["star", "ring"].contains(&from) && !["star", "ring"].contains(&to), "{out}");
        }
        assert_eq!(swap_shape("a grey background", &mut crate::rng::Rng::new(0)), None);
    }

    use super::*;

    #[test]
    fn swapped_scene_changes_one_object_to_a_shape_or_colour_the_image_lacks() {
        let a = crate::world::MakeArgs { n: 40, seed: 9, size: 32, heldout: 0.0 };
        for i in 0..40 {
            let (s, _) = crate::world::make_scene(&a, i, "train");
            for colour in [false, true] {
                let t = swapped_scene(&s, colour, &mut Rng::new(i as u64));
                let changed: Vec<(&crate::world::Object, &crate::world::Object)> = s.objects.iter().zip(&t.objects).filter(|(x, y)| x != y).collect();
                assert_eq!(changed.len(), 1, "{s:?} -> {t:?}");
                let (x, y) = changed[0];
                if colour {
                    assert!(x.colour != y.colour && x.shape == y.shape, "{x:?} -> {y:?}");
                } else {
                    assert!(x.colour == y.colour && !s.shapes().contains(&y.shape), "{x:?} -> {y:?}");
                }
            }
        }
    }

    #[test]
    fn schedule_and_batches() {
        assert!((lr_at(1.0, 0, 100) - 0.1).abs() < 1e-6);
        assert!((lr_at(1.0, 9, 100) - 1.0).abs() < 1e-6);
        assert!(lr_at(1.0, 99, 100) < 1e-3);
        let b = epoch_batches(11, 4, 5, 0);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4], "the incomplete last batch is dropped");
        let mut all: Vec<usize> = b.concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 8);
        assert_ne!(epoch_batches(11, 4, 5, 1), b);
        assert_eq!(epoch_batches(3, 4, 5, 0).len(), 1, "fewer pairs than a batch: one batch of all");
    }
}
