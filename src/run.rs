//! `stic run --config stic.toml`: the whole STIC pipeline, one folder per stage under `out`.
//!
//! ```text
//! images/ ──1-prefs (build-prefs: base model)──► 1-prefs/prefs.jsonl
//!          ──2-dpo   (train-dpo, STIC's loss)───► 2-dpo/ (PEFT adapter, stage 1)
//! sft.json ──3-dif   (build-dif: base + 2-dpo)──► 3-dif/dif.json
//!          ──4-sft   (train-sft from 2-dpo)─────► 4-sft/ (PEFT adapter: the result)
//!          ──5-eval  (each [[eval]] bench)──────► 5-eval/<bench>/{predictions.jsonl, metrics.json}
//! ```
//! - A stage that finished wrote `<stage>/stage.json` (its summary, atomically, last); a re-run
//!   skips it. An interrupted stage resumes: the data stages skip the items already in their
//!   JSONL, training continues from its checkpoint, evaluation skips answered questions.
//! - Defaults are STIC's (docs/STIC.md): stage 1 LoRA r 128 / alpha 256 on every projection of
//!   the language model, lr 1e-7, projector lr 2e-5, beta 0.1, likelihood weight 1/1024, cosine
//!   with 3% warmup, one epoch, 4 pairs per step; stage 2 continues the stage-1 adapter at lr 2e-5
//!   (projector 2e-5), 16 examples per step. Every key of a section overrides its default.
//! - Paths in the config are relative to the config file's folder.
//! - The end: `summary.json` and a table with counts, seconds and tokens/s per stage.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::adapter::LoraSpec;
use crate::error::{Error, Result};
use crate::train::run_loop::{Schedule, TrainArgs};
pub use crate::stage::{format_summary, stage, train_counts, write_atomic, StageSummary};

/// `stic.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// "stic" (the default); `method = "csr"` files are `run_csr::CsrRunConfig`s (`stic run`
    /// dispatches on this key).
    #[serde(default)]
    pub method: Option<String>,
    /// The LLaVA checkpoint (HF format).
    pub model: PathBuf,
    /// Unlabeled images for stage 1.
    pub images: PathBuf,
    /// The run's folder (one subfolder per stage).
    pub out: PathBuf,
    #[serde(default)]
    pub seed: u64,
    /// No progress bars.
    #[serde(default)]
    pub quiet: bool,
    /// Build the model with random weights from `model`'s config (smoke runs, tests).
    #[serde(default)]
    pub random_weights: Option<u64>,
    /// Where every stage runs: `cpu` (the default), `cuda` or `cuda:N` (a build with
    /// `--features cuda`: generation in bf16 with adapters merged at load, training on the GPU
    /// learner).
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub prefs: DataSection,
    #[serde(default)]
    pub dpo: TrainSection,
    pub dif: DifSection,
    #[serde(default)]
    pub sft: TrainSection,
    #[serde(default)]
    pub eval: Vec<EvalSection>,
    /// Also evaluate every `[[eval]]` on the starting model (`0-base/eval`) and after stage 1
    /// (`2-dpo/eval`), so that each stage's effect shows.
    #[serde(default)]
    pub eval_each_stage: bool,
}

/// Generation settings of a data stage (`[prefs]`; `[dif]` adds its inputs).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Items to use (all images / the paper's 5000 examples when absent).
    pub n: Option<usize>,
    pub batch_size: Option<usize>,
    pub max_new_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DifSection {
    /// LLaVA instruction-tuning JSON (llava_v1_5_mix665k.json).
    pub sft: PathBuf,
    /// The folder its image paths are relative to.
    pub images: PathBuf,
    #[serde(flatten)]
    pub gen: DataSection,
}

/// Overrides of a training stage's defaults (the `train-dpo` / `train-sft` options).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub lora_r: Option<usize>,
    pub lora_alpha: Option<f64>,
    pub lora_dropout: Option<f64>,
    pub lora_targets: Option<Vec<String>>,
    pub lr: Option<f32>,
    /// 0 freezes the projector.
    pub projector_lr: Option<f32>,
    pub weight_decay: Option<f32>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub grad_accum: Option<usize>,
    pub max_steps: Option<usize>,
    pub warmup_ratio: Option<f64>,
    /// "cosine" or "linear".
    pub schedule: Option<String>,
    pub max_grad_norm: Option<f64>,
    pub save_every: Option<usize>,
    pub recompute: Option<bool>,
    pub beta: Option<f64>,
    pub sft_weight: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// scienceqa, textvqa, chartqa, mmbench, pope, mathvista, llava-bench, mm-vet.
    pub bench: String,
    pub data: PathBuf,
    pub image_folder: Option<PathBuf>,
    pub max_new_tokens: Option<usize>,
    pub batch_size: Option<usize>,
    pub limit: Option<usize>,
}

const ALL_PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// STIC's stage-1 DPO settings (scripts/dpo_finetune.sh; docs/STIC.md).
pub fn stic_dpo_defaults(seed: u64, quiet: bool) -> TrainArgs {
    TrainArgs {
        lora: LoraSpec { r: 128, alpha: 256.0, dropout: 0.0, targets: ALL_PROJECTIONS.iter().map(|s| s.to_string()).collect() },
        projector_lr: Some(2e-5),
        init_adapter: None,
        beta: 0.1,
        sft_weight: 1.0 / 1024.0,
        lr: 1e-7,
        weight_decay: 0.0,
        epochs: 1,
        batch_size: 1,
        grad_accum: 4, // 1 per device x 2 accumulation x 2 GPUs
        max_steps: None,
        warmup_ratio: 0.03,
        schedule: Schedule::Cosine,
        max_grad_norm: 1.0,
        seed,
        save_every: Some(50),
        recompute: false,
        quiet,
        train: None,
        shard_mib: crate::train::run_loop::DEFAULT_SHARD_MIB,
    }
}

/// STIC's stage-2 SFT settings (scripts/finetune_lora.sh): the stage-1 adapter trained on.
pub fn stic_sft_defaults(seed: u64, quiet: bool, stage1: &Path) -> TrainArgs {
    TrainArgs {
        init_adapter: Some(stage1.to_path_buf()),
        lr: 2e-5,
        projector_lr: Some(2e-5),
        sft_weight: 0.0,
        batch_size: 16,
        grad_accum: 1,
        ..stic_dpo_defaults(seed, quiet)
    }
}

impl TrainSection {
    pub(crate) fn apply(&self, mut a: TrainArgs, file: &Path, section: &str) -> Result<TrainArgs> {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { a.$f = v.clone(); } )* };
        }
        set!(lr, weight_decay, epochs, batch_size, grad_accum, warmup_ratio, max_grad_norm, beta, sft_weight);
        if let Some(v) = self.lora_r {
            a.lora.r = v;
        }
        if let Some(v) = self.lora_alpha {
            a.lora.alpha = v;
        }
        if let Some(v) = self.lora_dropout {
            a.lora.dropout = v;
        }
        if let Some(v) = &self.lora_targets {
            a.lora.targets = v.clone();
        }
        if let Some(v) = self.projector_lr {
            a.projector_lr = (v > 0.0).then_some(v);
        }
        if self.max_steps.is_some() {
            a.max_steps = self.max_steps;
        }
        if self.save_every.is_some() {
            a.save_every = self.save_every;
        }
        if let Some(v) = self.recompute {
            a.recompute = v;
        }
        if let Some(s) = &self.schedule {
            a.schedule = match s.as_str() {
                "cosine" => Schedule::Cosine,
                "linear" => Schedule::Linear,
                other => return Err(Error::config(file, format!("{section}.schedule"), format!("expected cosine or linear, got `{other}`"))),
            };
        }
        Ok(a)
    }
}

/// The embedded default of `stic run` (examples/demo.toml), with paths relative to the
/// repository the binary was built from.
pub const DEMO_CONFIG: &str = include_str!("../examples/demo.toml");

impl RunConfig {
    /// Read `stic.toml`; relative paths are resolved against its folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path, path.parent().unwrap_or(Path::new(".")))
    }

    /// The embedded demo configuration.
    pub fn demo() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        Self::parse(DEMO_CONFIG, &root.join("examples/demo.toml"), root)
    }

    /// Parse config `text` (named `path` in errors), relative paths resolved against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self> {
        let mut c: RunConfig = parse_toml(text, path)?;
        for p in [&mut c.model, &mut c.images, &mut c.out, &mut c.dif.sft, &mut c.dif.images] {
            *p = base.join(&*p);
        }
        resolve_evals(&mut c.eval, base);
        Ok(c)
    }
}

/// A run config's TOML, an error naming `path` and the line.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let field = e.span().map(|s| format!("line {}", text[..s.start].matches('\n').count() + 1)).unwrap_or_else(|| "<file>".into());
        Error::config(path, field, e.message().to_string())
    })
}

/// The `[[eval]]` sections' paths, resolved against the config's folder.
pub(crate) fn resolve_evals(evals: &mut [EvalSection], base: &Path) {
    for e in evals {
        e.data = base.join(&e.data);
        if let Some(f) = &mut e.image_folder {
            *f = base.join(&*f);
        }
    }
}

pub(crate) fn data_counts(s: &crate::stic::Summary) -> (serde_json::Value, Option<f64>) {
    let secs = s.elapsed.as_secs_f64();
    let counts = serde_json::json!({
        "selected": s.selected,
        "resumed": s.resumed,
        "written": s.written,
        "skipped": s.skipped,
        "images_per_s": s.images_per_sec(),
        "generated_tokens": s.tokens,
    });
    (counts, (secs > 0.0).then(|| s.tokens as f64 / secs))
}

fn sampling(base: crate::generate::SamplingParams, d: &DataSection) -> crate::generate::SamplingParams {
    crate::generate::SamplingParams {
        max_new_tokens: d.max_new_tokens.unwrap_or(base.max_new_tokens),
        temperature: d.temperature.unwrap_or(base.temperature),
        top_p: d.top_p.unwrap_or(base.top_p),
        ..base
    }
}

/// Run every stage of `cfg` (skipping finished ones); returns the per-stage summary, also written
/// to `out/summary.json`. `stop_prefs_after`: end the process's work after that many new pairs of
/// stage 1, as a crash would (tests of resume).
pub fn run(cfg: &RunConfig, config_path: &Path, stop_prefs_after: Option<usize>) -> Result<Vec<StageSummary>> {
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let device: crate::backend::Device =
        cfg.device.as_deref().unwrap_or("cpu").parse().map_err(|e: String| Error::config(config_path, "device", e))?;
    let (d1, d2, d3, d4, d5) = (out.join("1-prefs"), out.join("2-dpo"), out.join("3-dif"), out.join("4-sft"), out.join("5-eval"));
    let prefs = d1.join("prefs.jsonl");
    let dif = d3.join("dif.json");
    let mut summary = Vec::new();
    if cfg.eval_each_stage {
        for e in &cfg.eval {
            summary.push(eval_stage(e, &out.join("0-base/eval"), "0-base/eval", &cfg.model, None, device, cfg.seed, cfg.quiet)?);
        }
    }

    summary.push(stage(&d1, "1-prefs", cfg.quiet, || {
        let mut a = crate::stic::BuildPrefsArgs::new(&cfg.images, &prefs);
        a.n = cfg.prefs.n;
        a.seed = cfg.seed;
        a.batch_size = cfg.prefs.batch_size.unwrap_or(a.batch_size);
        a.sampling = sampling(a.sampling, &cfg.prefs);
        a.quiet = cfg.quiet;
        a.stop_after = stop_prefs_after;
        let s = crate::generate::with_pipeline(device, &cfg.model, cfg.random_weights, None, crate::stic::BuildPrefsWork(a))?;
        if s.stopped {
            return Err(Error::Input(format!("stopped after {} new pairs (--stop-after)", s.written)));
        }
        Ok(data_counts(&s))
    })?);

    summary.push(stage(&d2, "2-dpo", cfg.quiet, || {
        let args = cfg.dpo.apply(stic_dpo_defaults(cfg.seed, cfg.quiet), config_path, "dpo")?;
        let resume = d2.join("checkpoint").exists() || d2.join("checkpoint.old").exists();
        let log = crate::train::device::train_on(device, &cfg.model, cfg.random_weights, crate::train::device::TrainJob::Dpo { prefs: &prefs }, &d2, &args, resume, None)?;
        Ok(train_counts(&log))
    })?);
    if cfg.eval_each_stage {
        for e in &cfg.eval {
            summary.push(eval_stage(e, &d2.join("eval"), "2-dpo/eval", &cfg.model, Some(&d2), device, cfg.seed, cfg.quiet)?);
        }
    }

    summary.push(stage(&d3, "3-dif", cfg.quiet, || {
        let mut a = crate::stic::BuildDifArgs::new(&cfg.dif.sft, &cfg.dif.images, &dif);
        if let Some(n) = cfg.dif.gen.n {
            a.n = n;
        }
        a.seed = cfg.seed;
        a.batch_size = cfg.dif.gen.batch_size.unwrap_or(a.batch_size);
        a.sampling = sampling(a.sampling, &cfg.dif.gen);
        a.quiet = cfg.quiet;
        let s = crate::generate::with_pipeline(device, &cfg.model, cfg.random_weights, Some(&d2), crate::stic::BuildDifWork(a))?;
        Ok(data_counts(&s))
    })?);

    summary.push(stage(&d4, "4-sft", cfg.quiet, || {
        let args = cfg.sft.apply(stic_sft_defaults(cfg.seed, cfg.quiet, &d2), config_path, "sft")?;
        let resume = d4.join("checkpoint").exists() || d4.join("checkpoint.old").exists();
        let folder = cfg.dif.images.clone();
        let log = crate::train::device::train_on(device, &cfg.model, cfg.random_weights, crate::train::device::TrainJob::Sft { data: &dif, image_folder: &folder }, &d4, &args, resume, None)?;
        Ok(train_counts(&log))
    })?);

    for e in &cfg.eval {
        summary.push(eval_stage(e, &d5, "5-eval", &cfg.model, Some(&d4), device, cfg.seed, cfg.quiet)?);
    }

    write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&summary).expect("json"))?;
    Ok(summary)
}

/// The evaluation stage of `e` in `root/<bench>` (named `label/<bench>`) on `model` with an
/// optional adapter; skipped when it finished before.
#[allow(clippy::too_many_arguments)]
pub(crate) fn eval_stage(e: &EvalSection, root: &Path, label: &str, model: &Path, adapter: Option<&Path>, device: crate::backend::Device, seed: u64, quiet: bool) -> Result<StageSummary> {
    let bench = crate::eval::Bench::from_name(&e.bench)?;
    let dir = root.join(bench.name());
    stage(&dir, &format!("{label}/{}", bench.name()), quiet, || {
        let args = crate::eval::EvalArgs {
            bench,
            data: e.data.clone(),
            image_folder: e.image_folder.clone(),
            model: Some(model.to_path_buf()),
            adapter: adapter.map(Path::to_path_buf),
            predictions: None,
            out: Some(dir.clone()),
            max_new_tokens: e.max_new_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed,
            batch_size: e.batch_size.unwrap_or(8),
            limit: e.limit,
            quiet,
            device,
        };
        let metrics = crate::eval::eval(&args)?;
        let tps = match (metrics["generated_tokens"].as_f64(), metrics["generation_seconds"].as_f64()) {
            (Some(t), Some(s)) if s > 0.0 => Some(t / s),
            _ => None,
        };
        Ok((metrics, tps))
    })
}
