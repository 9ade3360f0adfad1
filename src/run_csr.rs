//! `stic run --config csr.toml` with `method = "csr"`: CSR's iterations (docs/CSR.md), one folder
//! per iteration under `out`, one per stage inside it.
//!
//! ```text
//! 0-base/eval/<bench>           each [[eval]] on the starting model (the baseline)
//! iter-t/1-prefs/prefs.jsonl    csr-prefs with model_t (sentence-level search, CLIP ranks)
//! iter-t/2-dpo/                 train-dpo from model_t (CSR's defaults: plain DPO, beta 0.1)
//! iter-t/3-merge/               model_t + the adapter, merged: model_{t+1}
//! iter-t/4-eval/<bench>         each [[eval]] on model_{t+1}
//! ```
//! model_1 is `model`; t = 1..=`iterations` (default 3, as CSR's README). Every stage is a
//! `stage::stage`: skipped once its `stage.json` exists, resumed where it stopped otherwise
//! (csr-prefs skips the prompts already in its JSONL, training continues from its checkpoint,
//! evaluation skips answered questions; a merge that did not finish is redone). The end:
//! `out/summary.json` and the table of `stage::format_summary`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::adapter::{LoraSpec, MergeDtype};
use crate::csr::prefs::{CsrPrefsArgs, CsrPrefsWork};
use crate::error::{Error, Result};
use crate::run::{data_counts, eval_stage, parse_toml, resolve_evals, stic_dpo_defaults, EvalSection, TrainSection};
use crate::stage::{stage, train_counts, write_atomic, StageSummary};
use crate::train::run_loop::TrainArgs;

/// `csr.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrRunConfig {
    /// Must be "csr".
    pub method: String,
    /// The starting LLaVA checkpoint (HF format; its weights are read by the merges).
    pub model: PathBuf,
    /// The CLIP checkpoint that scores sentences (openai/clip-vit-large-patch14-336 in CSR).
    pub clip: PathBuf,
    /// The prompt file ({id, image, input} entries: CSR-Prompt-Dataset-12k.json).
    pub data: PathBuf,
    /// The folder of the prompts' images.
    pub images: PathBuf,
    pub out: PathBuf,
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub quiet: bool,
    /// `cpu` (the default), `cuda` or `cuda:N`.
    #[serde(default)]
    pub device: Option<String>,
    /// Evaluate the starting model too (`0-base`), so that every iteration has its baseline.
    #[serde(default = "yes")]
    pub eval_base: bool,
    #[serde(default)]
    pub search: SearchSection,
    #[serde(default)]
    pub dpo: TrainSection,
    #[serde(default)]
    pub eval: Vec<EvalSection>,
}

fn default_iterations() -> usize {
    3
}
fn yes() -> bool {
    true
}

/// Overrides of csr-prefs' official defaults (the `stic csr-prefs` options of the same names).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSection {
    /// Prepended to each entry's `image` (official: "COCO_train2014_").
    pub image_prefix: Option<String>,
    /// The token id that ends a sentence (default: the tokenizer's ".").
    pub sentence_end: Option<u32>,
    pub num_beams: Option<usize>,
    pub num_beam_groups: Option<usize>,
    pub diversity_penalty: Option<f32>,
    pub candidates: Option<usize>,
    pub max_new_tokens: Option<usize>,
    pub max_chars: Option<usize>,
    /// "code" (ranks, the default) or "paper" (raw scores).
    pub reward: Option<String>,
    pub alpha: Option<f64>,
    /// Only the first N prompts.
    pub limit: Option<usize>,
    pub batch_size: Option<usize>,
    /// Reuse the parent node's KV cache (default true).
    pub kv_reuse: Option<bool>,
    /// The system line before `USER:` (default: Vicuna v1's, as CSR; "" for none).
    pub system: Option<String>,
}

/// CSR's DPO settings (scripts/run_train.sh, train_dpo_lora.py; docs/CSR.md "Iterations"): STIC's
/// stage-1 settings where the two agree (LoRA r 128 / alpha 256 on every projection of the
/// language model, beta 0.1, lr 1e-7, projector lr 2e-5, 1 epoch, cosine with 3% warmup, no weight
/// decay), with LoRA dropout 0.05, no likelihood term (plain sigmoid DPO) and one pair per step.
pub fn csr_dpo_defaults(seed: u64, quiet: bool) -> TrainArgs {
    let base = stic_dpo_defaults(seed, quiet);
    TrainArgs { lora: LoraSpec { dropout: 0.05, ..base.lora.clone() }, sft_weight: 0.0, grad_accum: 1, ..base }
}

impl CsrRunConfig {
    /// Parse config `text` (named `path` in errors), relative paths resolved against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self> {
        let mut c: CsrRunConfig = parse_toml(text, path)?;
        if c.method != "csr" {
            return Err(Error::config(path, "method", format!("expected \"csr\", got \"{}\"", c.method)));
        }
        if c.iterations == 0 {
            return Err(Error::config(path, "iterations", "must be at least 1".to_string()));
        }
        for p in [&mut c.model, &mut c.clip, &mut c.data, &mut c.images, &mut c.out] {
            *p = base.join(&*p);
        }
        resolve_evals(&mut c.eval, base);
        Ok(c)
    }

    /// The csr-prefs options of one iteration: the official defaults for `model`, then `[search]`.
    fn prefs_args(&self, model: &Path, out: &Path) -> Result<CsrPrefsArgs> {
        let s = &self.search;
        let mut a = CsrPrefsArgs::official(model, &self.clip, &self.data, &self.images, out, s.sentence_end)?;
        macro_rules! set {
            ($($f:ident => $($path:ident).+),* $(,)?) => { $( if let Some(v) = &s.$f { a.$($path).+ = v.clone(); } )* };
        }
        set!(image_prefix => image_prefix, num_beams => tree.beam.num_beams, num_beam_groups => tree.beam.num_beam_groups,
             diversity_penalty => tree.beam.diversity_penalty, candidates => tree.beam.num_return_sequences,
             max_new_tokens => tree.beam.max_new_tokens, max_chars => tree.max_chars, batch_size => batch_size, system => system);
        if let Some(r) = &s.reward {
            a.reward = crate::csr::tree::Reward::parse(r, s.alpha.unwrap_or(0.9)).map_err(|e| Error::config(&self.out, "search.reward", e))?;
        } else if let Some(alpha) = s.alpha {
            a.reward = crate::csr::tree::Reward::Code { alpha };
        }
        if let Some(k) = s.kv_reuse {
            a.tree.kv_reuse = k;
        }
        a.limit = s.limit;
        a.quiet = self.quiet;
        Ok(a)
    }
}

/// Run every iteration of `cfg` (skipping finished stages); returns the per-stage summary, also
/// written to `out/summary.json`.
pub fn run_csr(cfg: &CsrRunConfig, config_path: &Path) -> Result<Vec<StageSummary>> {
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let device: crate::backend::Device =
        cfg.device.as_deref().unwrap_or("cpu").parse().map_err(|e: String| Error::config(config_path, "device", e))?;
    let dpo_args = cfg.dpo.apply(csr_dpo_defaults(cfg.seed, cfg.quiet), config_path, "dpo")?;
    let mut summary = Vec::new();
    if cfg.eval_base {
        for e in &cfg.eval {
            summary.push(eval_stage(e, &out.join("0-base/eval"), "0-base/eval", &cfg.model, None, device, cfg.seed, cfg.quiet)?);
        }
    }
    let mut model = cfg.model.clone();
    for t in 1..=cfg.iterations {
        let it = out.join(format!("iter-{t}"));
        let (d1, d2, d3, d4) = (it.join("1-prefs"), it.join("2-dpo"), it.join("3-merge"), it.join("4-eval"));
        let prefs = d1.join("prefs.jsonl");
        summary.push(stage(&d1, &format!("iter-{t}/1-prefs"), cfg.quiet, || {
            let a = cfg.prefs_args(&model, &prefs)?;
            let s = crate::generate::with_pipeline(device, &model, None, None, CsrPrefsWork(a))?;
            let (mut counts, _) = data_counts(&s.items);
            // The search's tokens: every beam's decoded token (the stage's generation work).
            counts["generated_tokens"] = s.decoded.into();
            counts["candidates"] = s.candidates.into();
            counts["candidates_per_s"] = s.candidates_per_sec().into();
            let secs = s.items.elapsed.as_secs_f64();
            Ok((counts, (secs > 0.0).then(|| s.decoded as f64 / secs)))
        })?);
        summary.push(stage(&d2, &format!("iter-{t}/2-dpo"), cfg.quiet, || {
            let resume = d2.join("checkpoint").exists() || d2.join("checkpoint.old").exists();
            let log = crate::train::device::train_on(device, &model, None, crate::train::device::TrainJob::Dpo { prefs: &prefs }, &d2, &dpo_args, resume, None)?;
            Ok(train_counts(&log))
        })?);
        summary.push(stage(&d3, &format!("iter-{t}/3-merge"), cfg.quiet, || {
            let merged = crate::adapter::merge(&model, &d2, &d3, MergeDtype::Keep)?;
            Ok((serde_json::json!({ "merged_projections": merged }), None))
        })?);
        model = d3;
        for e in &cfg.eval {
            summary.push(eval_stage(e, &d4, &format!("iter-{t}/4-eval"), &model, None, device, cfg.seed, cfg.quiet)?);
        }
    }
    write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&summary).expect("json"))?;
    Ok(summary)
}
