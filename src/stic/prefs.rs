//! `stic build-prefs`: STIC stage-1 self-constructed preference data (Algorithm 1), as
//! stic/generate_pref.py makes it.
//!
//! For each image (per-image stream `item_rng(seed, name)`, drawn in the official order):
//! 1. the training prompt: one of `DESCRIPTION_PROMPTS`, uniformly;
//! 2. `uniform() > 0.5` (odds 1:1): the rejected answer is the model's answer to one of
//!    `HALLUCINATION_PROMPTS` (uniform) on the original image; otherwise it is the model's answer to
//!    the training prompt on a corrupted copy of the image (`Corruption::sample_stic`: low
//!    resolution or colour jitter, 1:1);
//! 3. the chosen answer is the model's answer to `GOOD_PROMPT` on the original image.
//!
//! The pair is (image, training prompt, chosen, rejected), one JSON line in the format
//! `train-dpo` reads, with what made the rejected answer:
//! `{"image", "prompt", "chosen", "rejected", "rejected_kind": "hallu_prompt" | "low_resolution" |
//! "color_jitter", "hallu_prompt"?, "corruption"?}`; `image` is relative to the output file's
//! folder. Answers are trimmed, as the official `batch_decode(...)[0].strip()`.
//!
//! Note: the official script, as published, never applies the corruption it draws
//! (generate_pref.py:222 calls `eval_model(args)` without `image_corruption=True`, so the
//! "corrupted" answer describes the clean image); this implements the paper's intent and feeds the
//! corrupted image (docs/STIC.md).
//!
//! Generation: `batch_size` images per `generate` call, their chosen and rejected requests together
//! (2 x batch_size sequences); the vision tower encodes each distinct image once. Each answer
//! samples from its own seed (from the image's stream), so results do not depend on batch position.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::generate::{Pipeline, SamplingParams};
use crate::image::corrupt::Corruption;
use crate::image::{load_image, preprocess, RgbImage};
use crate::rng::Rng;
use crate::backend::Backend;

use super::jsonl::{sidecar, JsonlLog};
use super::prompts::{DESCRIPTION_PROMPTS, GOOD_PROMPT, HALLUCINATION_PROMPTS};
use super::{item_rng, sample_indices, stic_sampling, Sink, Summary};
use crate::progress::Progress;

/// Options of `build_prefs` (`stic build-prefs`).
#[derive(Clone, Debug)]
pub struct BuildPrefsArgs {
    /// Folder of unlabeled images (searched recursively for .jpg, .jpeg, .png; sorted by path).
    pub images: PathBuf,
    /// The preference JSONL (appended to; resumed when it exists).
    pub out: PathBuf,
    /// Use `n` images sampled (from `seed`) out of those found; all when `None`.
    pub n: Option<usize>,
    pub seed: u64,
    /// Images per generation call.
    pub batch_size: usize,
    /// max_new_tokens, temperature, top_k, top_p (its `seed` is unused: every answer has its own).
    pub sampling: SamplingParams,
    /// No progress bar.
    pub quiet: bool,
    /// Stop after writing this many pairs in this run (tests of resume).
    pub stop_after: Option<usize>,
}

impl BuildPrefsArgs {
    /// The official settings (`stic_sampling`), seed 0, batch size 8, all images.
    pub fn new(images: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        BuildPrefsArgs {
            images: images.into(),
            out: out.into(),
            n: None,
            seed: 0,
            batch_size: 8,
            sampling: stic_sampling(),
            quiet: false,
            stop_after: None,
        }
    }
}

/// How one image's rejected answer is made.
#[derive(Clone, Debug, PartialEq)]
pub enum Rejection {
    /// Index into `HALLUCINATION_PROMPTS`; original image.
    HalluPrompt(usize),
    /// The training prompt on the corrupted image.
    Corrupt(Corruption),
}

/// The random choices for one image.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefPlan {
    /// Index into `DESCRIPTION_PROMPTS`.
    pub prompt: usize,
    pub rejection: Rejection,
    pub chosen_seed: u64,
    pub rejected_seed: u64,
}

impl PrefPlan {
    /// Draw the choices in the official order (generate_pref.py:211-222): prompt, then
    /// `random() > 0.5` for a hallucination prompt, else the corruption (generate_pref.py:49).
    pub fn draw(rng: &mut Rng) -> Self {
        let prompt = rng.below(DESCRIPTION_PROMPTS.len());
        let rejection = if rng.uniform() > 0.5 {
            Rejection::HalluPrompt(rng.below(HALLUCINATION_PROMPTS.len()))
        } else {
            Rejection::Corrupt(Corruption::sample_stic(rng))
        };
        PrefPlan { prompt, rejection, chosen_seed: rng.next_u64(), rejected_seed: rng.next_u64() }
    }

    /// The value of the `rejected_kind` field.
    pub fn kind(&self) -> &'static str {
        match &self.rejection {
            Rejection::HalluPrompt(_) => "hallu_prompt",
            Rejection::Corrupt(Corruption::LowResolution { .. }) => "low_resolution",
            Rejection::Corrupt(Corruption::ColorJitter(_)) => "color_jitter",
        }
    }
}

/// One line of the output.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PrefRecord {
    pub image: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub rejected_kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hallu_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub corruption: Option<Corruption>,
}

/// Image files under `dir` (recursively), as paths relative to it, sorted.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let e = e.map_err(|e| Error::io(dir, e))?;
            let (path, name) = (e.path(), rel.join(e.file_name()));
            if path.is_dir() {
                walk(&path, &name, out)?;
            } else if path
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
            {
                out.push(name);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out)?;
    out.sort();
    Ok(out)
}

/// `target` relative to the directory `base` (both made absolute and resolved first), with `/`.
pub fn relative_path(base: &Path, target: &Path) -> Result<String> {
    let base = std::fs::canonicalize(base).map_err(|e| Error::io(base, e))?;
    let target = std::fs::canonicalize(target).map_err(|e| Error::io(target, e))?;
    let b: Vec<Component> = base.components().collect();
    let t: Vec<Component> = target.components().collect();
    let common = b.iter().zip(&t).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = vec!["..".to_string(); b.len() - common];
    parts.extend(t[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    Ok(parts.join("/"))
}

/// One selected image.
struct Item {
    /// Name under `--images` (the item's seed key).
    name: String,
    path: PathBuf,
    /// The `image` field: relative to the output's folder (the resume key).
    key: String,
}

/// A generated pair before writing, or why the image was skipped.
type Outcome = std::result::Result<PrefRecord, String>;

/// Build (or resume) the preference file. See the module doc.
pub fn build_prefs<B: Backend>(pipe: &Pipeline<B>, args: &BuildPrefsArgs) -> Result<Summary> {
    if args.batch_size == 0 {
        return Err(Error::Input("--batch-size must be at least 1".into()));
    }
    let names = list_images(&args.images)?;
    if names.is_empty() {
        return Err(Error::Input(format!("{}: no .jpg, .jpeg or .png images found", args.images.display())));
    }
    let picked = sample_indices(names.len(), args.n.unwrap_or(names.len()), args.seed);
    let (mut log, done_lines) = JsonlLog::open(&args.out)?;
    let skipped_path = sidecar(&args.out, ".skipped");
    let (mut skip_log, skipped_lines) = JsonlLog::open(&skipped_path)?;
    let out_dir = args.out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let items: Vec<Item> = picked
        .iter()
        .map(|&i| {
            let path = args.images.join(&names[i]);
            Ok(Item { name: names[i].to_string_lossy().replace('\\', "/"), key: relative_path(out_dir, &path)?, path })
        })
        .collect::<Result<_>>()?;
    let field = |v: &serde_json::Value| v.get("image").and_then(|s| s.as_str()).map(str::to_string);
    let written: HashSet<String> = done_lines.iter().filter_map(field).collect();
    let skipped: HashSet<String> = skipped_lines.iter().filter_map(field).collect();
    let finished = |it: &Item| written.contains(&it.key) || skipped.contains(&it.key);
    let resumed = items.iter().filter(|it| finished(it)).count();

    let mut summary = Summary { selected: items.len(), resumed, ..Default::default() };
    let progress = Progress::new(items.len(), resumed, "images", args.quiet);
    let t0 = Instant::now();
    'batches: for batch in items.chunks(args.batch_size) {
        if batch.iter().all(finished) {
            continue;
        }
        // The whole batch is generated (also its already written images, after a restart), so
        // that every sequence runs in the same batch as in an uninterrupted run.
        let todo: Vec<&Item> = batch.iter().filter(|it| !skipped.contains(&it.key)).collect();
        let (outcomes, tokens) = generate_batch(pipe, &todo, args)?;
        summary.tokens += tokens;
        let mut sink = Sink { log: &mut log, skip_log: &mut skip_log, skipped_path: &skipped_path, progress: &progress, summary: &mut summary, stop_after: args.stop_after };
        for (it, outcome) in todo.iter().zip(outcomes) {
            if written.contains(&it.key) {
                continue;
            }
            let what = it.path.display().to_string();
            if sink.record(outcome, &what, |msg| serde_json::json!({"image": it.key, "error": msg}))?.1 {
                break 'batches;
            }
        }
        log.sync()?;
    }
    log.sync()?;
    progress.finish();
    summary.elapsed = t0.elapsed();
    Ok(summary)
}

/// Load, corrupt and generate for a batch of images: one `generate` call with every image's chosen
/// and rejected request. An image that cannot be read gets `Err(reason)`.
fn generate_batch<B: Backend>(pipe: &Pipeline<B>, items: &[&Item], args: &BuildPrefsArgs) -> Result<(Vec<Outcome>, usize)> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; items.len()];
    let mut inputs: Vec<B::Tensor> = Vec::new();
    let mut seeds: Vec<u64> = Vec::new();
    let mut slots: Vec<(usize, PrefPlan)> = Vec::new();
    for (k, it) in items.iter().enumerate() {
        let plan = PrefPlan::draw(&mut item_rng(args.seed, &it.name));
        // Anything wrong with one image (unreadable, undecodable, unusable) skips that image only.
        match prepare(pipe, &it.path, &plan) {
            Ok((chosen, rejected)) => {
                inputs.extend([chosen, rejected]);
                seeds.extend([plan.chosen_seed, plan.rejected_seed]);
                slots.push((k, plan));
            }
            Err(e) => outcomes[k] = Some(Err(e.to_string())),
        }
    }
    let outputs = pipe.generate_from_embeds_seeded(inputs, &args.sampling, &seeds)?;
    let tokens = outputs.iter().map(|o| o.len()).sum();
    for ((k, plan), pair) in slots.into_iter().zip(outputs.chunks(2)) {
        let chosen = pipe.tokenizer.decode(&pair[0], true)?.trim().to_string();
        let rejected = pipe.tokenizer.decode(&pair[1], true)?.trim().to_string();
        outcomes[k] = Some(if chosen.is_empty() || rejected.is_empty() {
            Err(format!("empty {} answer", if chosen.is_empty() { "chosen" } else { "rejected" }))
        } else {
            let (hallu_prompt, corruption) = match &plan.rejection {
                Rejection::HalluPrompt(h) => (Some(HALLUCINATION_PROMPTS[*h].to_string()), None),
                Rejection::Corrupt(c) => (None, Some(c.clone())),
            };
            Ok(PrefRecord {
                image: items[k].key.clone(),
                prompt: DESCRIPTION_PROMPTS[plan.prompt].to_string(),
                chosen,
                rejected,
                rejected_kind: plan.kind().to_string(),
                hallu_prompt,
                corruption,
            })
        });
    }
    Ok((outcomes.into_iter().map(|o| o.expect("every item has an outcome")).collect(), tokens))
}

/// The input embeddings of one image's chosen and rejected requests.
fn prepare<B: Backend>(pipe: &Pipeline<B>, path: &Path, plan: &PrefPlan) -> Result<(B::Tensor, B::Tensor)> {
    let img = load_image(path)?;
    let features = |img: &RgbImage| pipe.model.image_features(&preprocess(img, &pipe.processor)?);
    let embed = |text: &str, feat: &B::Tensor| -> Result<B::Tensor> {
        let ids = pipe.prompt_ids(&pipe.format_prompt(text, 1, false), 1)?;
        pipe.model.embed_with_images(&ids, std::slice::from_ref(feat))
    };
    let original = features(&img)?;
    let chosen = embed(GOOD_PROMPT, &original)?;
    let rejected = match &plan.rejection {
        Rejection::HalluPrompt(h) => embed(HALLUCINATION_PROMPTS[*h], &original)?,
        Rejection::Corrupt(c) => embed(DESCRIPTION_PROMPTS[plan.prompt], &features(&c.apply(&img))?)?,
    };
    Ok((chosen, rejected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_odds_follow_the_official_code() {
        let (mut hallu, mut low, mut jitter) = (0, 0, 0);
        let mut prompts = [0usize; 8];
        for i in 0..20_000 {
            let p = PrefPlan::draw(&mut item_rng(0, &format!("img{i}.jpg")));
            prompts[p.prompt] += 1;
            match p.kind() {
                "hallu_prompt" => hallu += 1,
                "low_resolution" => low += 1,
                _ => jitter += 1,
            }
        }
        // 1/2 hallucination prompt, 1/4 low resolution, 1/4 colour jitter; prompts uniform.
        assert!((hallu as f64 / 20_000.0 - 0.5).abs() < 0.015, "{hallu}");
        assert!((low as f64 / 20_000.0 - 0.25).abs() < 0.015, "{low}");
        assert!((jitter as f64 / 20_000.0 - 0.25).abs() < 0.015, "{jitter}");
        assert!(prompts.iter().all(|&c| (c as f64 / 20_000.0 - 0.125).abs() < 0.015), "{prompts:?}");
    }
}
