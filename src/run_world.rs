//! `stic run` on the synthetic world (`method = "world"`; the embedded default, examples/world.toml):
//! self-training on unlabeled world images, starting from the bundled world model, with the world's
//! metrics before and after each stage, a table, `summary.json` and a chart. STIC by default; CSR
//! when the config has a `[csr]` section (examples/world-csr.toml).
//!
//! ```text
//! 0-world/world      `world make` (seed and size of the world the model was trained on): its
//!                    held-out split is the evaluation, its train split's instructions stage 2's data
//! 0-world/unlabeled  `world make` with another seed: only the images are used (the unlabeled images)
//! STIC: stic run's stages (run.rs) with `eval_each_stage`: 0-base/eval, 1-prefs, 2-dpo, 2-dpo/eval,
//!       3-dif, 4-sft, 5-eval; each [[eval]] is `bench = "world"`.
//! CSR:  0-world/prompts.json (one description prompt per unlabeled image), 0-clip (the world CLIP,
//!       `world train-clip` on the world's train split, unless `csr.clip` names one), then
//!       run_csr's iterations: 0-base/eval, iter-t/{1-prefs, 2-dpo, 3-merge, 4-eval}.
//! summary.json       {"stages": [...], "metrics": {"base", "stic_stage1", "stic_stage2"} or
//!                    {"base", "csr_iter1", ...}, "table"}
//! chart.png          the five metrics per model, and the training losses
//! ```
//! Every stage is skipped once done, so a re-run only redraws the table and the chart.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::run::{parse_toml, DataSection, DifSection, EvalSection, RunConfig, TrainSection};
use crate::run_csr::{CsrRunConfig, SearchSection};
use crate::stage::{stage, write_atomic, StageSummary};

/// The world a run uses (`[world]`): the one the model was trained on.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldSection {
    pub seed: u64,
    /// Images of that world (train and held-out).
    pub n: usize,
    #[serde(default = "default_size")]
    pub size: usize,
    #[serde(default = "default_heldout")]
    pub heldout: f64,
    /// Unlabeled images for STIC's stage 1 (a world of another seed; only its pixels are used).
    pub unlabeled: usize,
}

fn default_size() -> usize {
    crate::world::MakeArgs::default().size
}
fn default_heldout() -> f64 {
    crate::world::MakeArgs::default().heldout
}

/// `[eval]` of a world run.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldEvalSection {
    /// Only the first N held-out images (with all their questions and probes).
    pub limit: Option<usize>,
    pub batch_size: Option<usize>,
    pub max_new_tokens: Option<usize>,
}

/// A world run's config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldRunConfig {
    pub method: String,
    /// The world model (`stic world train`).
    pub model: PathBuf,
    pub out: PathBuf,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub quiet: bool,
    #[serde(default)]
    pub device: Option<String>,
    pub world: WorldSection,
    /// STIC's stage 1 (not with `[csr]`).
    pub prefs: Option<DataSection>,
    /// The DPO of STIC's stage 1, or of each CSR iteration.
    #[serde(default)]
    pub dpo: TrainSection,
    /// `n`: instruction examples of the world's train split infused with descriptions (STIC's
    /// stage 2; not with `[csr]`).
    pub dif: Option<DataSection>,
    pub sft: Option<TrainSection>,
    #[serde(default)]
    pub eval: WorldEvalSection,
    /// Run CSR instead of STIC.
    pub csr: Option<WorldCsrSection>,
}

/// `[csr]` of a world run: CSR's iterations on the unlabeled images.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldCsrSection {
    /// A CLIP of the world (HF CLIPModel folder), relative to the config; default: stage `0-clip`
    /// trains one on the world's train split (`[csr.clip_train]`).
    pub clip: Option<PathBuf>,
    #[serde(default)]
    pub clip_train: ClipTrainSection,
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    /// Unlabeled images that get a prompt (default: all).
    pub prompts: Option<usize>,
    #[serde(default)]
    pub search: SearchSection,
}

fn default_iterations() -> usize {
    2
}

/// The world CLIP that stage `0-clip` trains (`stic world train-clip`'s options; its defaults). As
/// CSR's CLIP is trained on other data than the LVLM's, it is trained on a world of its own
/// (`0-clip/world`: `images` images, another seed than the model's world and the unlabeled images).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipTrainSection {
    /// Images of the CLIP's world (default: as many as the model's world).
    pub images: Option<usize>,
    /// Seed of the CLIP's initialisation and batch order (default 0: the same CLIP for every run seed).
    #[serde(default)]
    pub seed: u64,
    pub epochs: Option<usize>,
    pub width: Option<usize>,
    pub layers: Option<usize>,
    pub batch: Option<usize>,
    pub lr: Option<f32>,
    pub hard_negatives: Option<bool>,
}

/// The embedded default of `stic run` (examples/world.toml).
pub const WORLD_CONFIG: &str = include_str!("../examples/world.toml");

impl WorldRunConfig {
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self> {
        let mut c: WorldRunConfig = parse_toml(text, path)?;
        if c.method != "world" {
            return Err(Error::config(path, "method", format!("expected \"world\", got \"{}\"", c.method)));
        }
        c.model = base.join(&c.model);
        c.out = base.join(&c.out);
        if let Some(csr) = &mut c.csr {
            for (key, set) in [("prefs", c.prefs.is_some()), ("dif", c.dif.is_some()), ("sft", c.sft.is_some())] {
                if set {
                    return Err(Error::config(path, key, "a STIC stage's section; this run has [csr] (CSR's iterations)".to_string()));
                }
            }
            if csr.iterations == 0 {
                return Err(Error::config(path, "csr.iterations", "must be at least 1".to_string()));
            }
            if let Some(clip) = &mut csr.clip {
                *clip = base.join(&*clip);
            }
        }
        Ok(c)
    }

    /// The embedded default, paths relative to the repository the binary was built from.
    pub fn default_run() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        Self::parse(WORLD_CONFIG, &root.join("examples/world.toml"), root)
    }
}

/// Mixed into the world's seed for the unlabeled images' world (another stream of scenes).
const UNLABELED_SEED: u64 = 0x5eed_5eed;
/// Mixed into the world's seed for the world the CSR run's CLIP is trained on.
const CLIP_SEED: u64 = 0xc11b_5eed;

/// A row of the table: the model's key in summary.json, its label, the folder of its metrics.json.
#[derive(Clone, Debug)]
pub struct Row {
    pub key: String,
    pub label: String,
    pub dir: String,
}

impl WorldRunConfig {
    /// The models the run evaluates, in order.
    pub fn rows(&self) -> Vec<Row> {
        let row = |k: &str, l: &str, d: &str| Row { key: k.into(), label: l.into(), dir: d.into() };
        let mut rows = vec![row("base", "base model", "0-base/eval/world")];
        match &self.csr {
            None => rows.extend([row("stic_stage1", "after STIC DPO", "2-dpo/eval/world"), row("stic_stage2", "after STIC SFT", "5-eval/world")]),
            Some(c) => rows.extend((1..=c.iterations).map(|t| row(&format!("csr_iter{t}"), &format!("after CSR iter {t}"), &format!("iter-{t}/4-eval/world")))),
        }
        rows
    }
}

/// Run it; returns the stages' summaries and each model's metrics (`collect`).
pub fn run_world(cfg: &WorldRunConfig, config_path: &Path) -> Result<(Vec<StageSummary>, Value)> {
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let w = &cfg.world;
    let (world, unlabeled) = (out.join("0-world/world"), out.join("0-world/unlabeled"));
    let prompts = out.join("0-world/prompts.json");
    let mut summary = vec![stage(&out.join("0-world"), "0-world", cfg.quiet, || {
        let a = crate::world::MakeArgs { n: w.n, seed: w.seed, size: w.size, heldout: w.heldout };
        let scenes = crate::world::make(&a, &world)?;
        let u = crate::world::MakeArgs { n: w.unlabeled, seed: w.seed ^ UNLABELED_SEED, size: w.size, heldout: 0.0 };
        let unl = crate::world::make(&u, &unlabeled)?;
        let mut counts = json!({"images": scenes.len(), "heldout": scenes.iter().filter(|s| s.split == "heldout").count(), "unlabeled": w.unlabeled});
        if let Some(c) = &cfg.csr {
            let n = c.prompts.unwrap_or(unl.len()).min(unl.len());
            write_atomic(&prompts, serde_json::to_string_pretty(&csr_prompts(&unl[..n], u.seed)).expect("json"))?;
            counts["prompts"] = n.into();
        }
        Ok((counts, None))
    })?];
    let eval = EvalSection {
        bench: "world".into(),
        data: world.clone(),
        image_folder: None,
        max_new_tokens: cfg.eval.max_new_tokens,
        batch_size: cfg.eval.batch_size,
        limit: cfg.eval.limit,
    };
    match &cfg.csr {
        None => {
            let rc = RunConfig {
                method: None,
                model: cfg.model.clone(),
                images: unlabeled.join("images"),
                out: out.clone(),
                seed: cfg.seed,
                quiet: cfg.quiet,
                random_weights: None,
                device: cfg.device.clone(),
                prefs: cfg.prefs.clone().unwrap_or_default(),
                dpo: cfg.dpo.clone(),
                dif: DifSection { sft: world.join("instruct.json"), images: world.clone(), gen: cfg.dif.clone().unwrap_or_default() },
                sft: cfg.sft.clone().unwrap_or_default(),
                eval: vec![eval],
                eval_each_stage: true,
            };
            summary.extend(crate::run::run(&rc, config_path, None)?);
        }
        Some(c) => {
            let clip = match &c.clip {
                Some(p) => p.clone(),
                None => {
                    let dir = out.join("0-clip");
                    summary.push(stage(&dir, "0-clip", cfg.quiet, || {
                        let t = &c.clip_train;
                        let clip_world = dir.join("world");
                        let m = crate::world::MakeArgs { n: t.images.unwrap_or(w.n), seed: w.seed ^ CLIP_SEED, size: w.size, heldout: w.heldout };
                        crate::world::make(&m, &clip_world)?;
                        let d = crate::world::clip::TrainClipArgs::defaults(&clip_world, &dir.join("model"));
                        let args = crate::world::clip::TrainClipArgs {
                            seed: t.seed,
                            epochs: t.epochs.unwrap_or(d.epochs),
                            width: t.width.unwrap_or(d.width),
                            layers: t.layers.unwrap_or(d.layers),
                            batch: t.batch.unwrap_or(d.batch),
                            lr: t.lr.unwrap_or(d.lr),
                            hard_negatives: t.hard_negatives.unwrap_or(d.hard_negatives),
                            quiet: cfg.quiet,
                            ..d
                        };
                        let s = crate::world::clip::train_clip(&args)?;
                        // Measured on the model's world's held-out images (the CLIP has not seen them).
                        let r = crate::world::clip::heldout_retrieval(&args.out, &world)?;
                        Ok((json!({"images": m.n, "steps": s.steps, "last_epoch_loss": s.last_epoch_loss, "heldout_retrieval": r}), None))
                    })?);
                    dir.join("model")
                }
            };
            let rc = CsrRunConfig {
                method: "csr".into(),
                model: cfg.model.clone(),
                clip,
                data: prompts.clone(),
                images: unlabeled.clone(),
                out: out.clone(),
                iterations: c.iterations,
                seed: cfg.seed,
                quiet: cfg.quiet,
                device: cfg.device.clone(),
                eval_base: true,
                // The world's images are named in full; the world model was trained without a system line.
                search: SearchSection {
                    image_prefix: Some(c.search.image_prefix.clone().unwrap_or_default()),
                    system: Some(c.search.system.clone().unwrap_or_default()),
                    ..c.search.clone()
                },
                dpo: cfg.dpo.clone(),
                eval: vec![eval],
            };
            summary.extend(crate::run_csr::run_csr(&rc, config_path)?);
        }
    }
    let rows = cfg.rows();
    let metrics = collect(out, &rows)?;
    let table = table(&rows, &metrics);
    write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&json!({"stages": summary, "metrics": metrics, "table": table})).expect("json"))?;
    chart(cfg, &rows, &metrics)?;
    Ok((summary, metrics))
}

/// CSR's prompt file for the unlabeled images: `{id, image, input}`, the input a description prompt
/// (`world::text::describe_prompts`, STIC's and the world's) drawn per image from the world's seed.
fn csr_prompts(scenes: &[crate::world::Scene], seed: u64) -> Value {
    let p = crate::world::text::describe_prompts();
    let items: Vec<Value> = scenes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let q = p[crate::world::item_rng(seed, i, 11).below(p.len())];
            json!({"id": s.id, "image": s.image, "input": format!("<image>\n{q}")})
        })
        .collect();
    Value::Array(items)
}

/// Each model's world metrics (from its evaluation's metrics.json).
fn collect(out: &Path, rows: &[Row]) -> Result<Value> {
    let mut m = serde_json::Map::new();
    for Row { key, dir, .. } in rows {
        let p = out.join(dir).join("metrics.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Json { path: p.clone(), source: e })?;
        m.insert(key.clone(), v);
    }
    Ok(Value::Object(m))
}

/// The before/after table (the five headline metrics per model).
pub fn table(rows: &[Row], metrics: &Value) -> String {
    let heads = crate::world::eval::HEADLINE;
    let mut s = format!("{:<18}", "model");
    heads.iter().for_each(|h| s += &format!(" {h:>10}"));
    s += "\n";
    for Row { key, label, .. } in rows {
        s += &format!("{label:<18}");
        for h in heads {
            s += &format!(" {:>10.4}", metrics[key.as_str()][h].as_f64().unwrap_or(f64::NAN));
        }
        s += "\n";
    }
    s
}

/// chart.png: the metrics per model; the training losses (STIC: DPO and SFT; CSR: each
/// iteration's DPO).
fn chart(cfg: &WorldRunConfig, rows: &[Row], metrics: &Value) -> Result<()> {
    use crate::chart::{draw, Bars, Curves};
    let out = &cfg.out;
    let heads = crate::world::eval::HEADLINE;
    let bars = Bars {
        title: "World metrics (chair: lower is better; recall, pope_f1, count_acc: higher)".into(),
        metrics: heads.iter().map(|s| s.to_string()).collect(),
        series: rows.iter().map(|r| (r.label.clone(), heads.iter().map(|h| metrics[r.key.as_str()][*h].as_f64().unwrap_or(0.0)).collect())).collect(),
    };
    let losses = |file: String| crate::world::train::losses(&out.join(file));
    let panel = |title: &str, curves: Vec<(String, Vec<(f64, f64)>)>| Curves { title: title.into(), x_label: "step".into(), y_label: "loss".into(), curves };
    let panels = match &cfg.csr {
        None => vec![
            panel("STIC stage 1: DPO loss", vec![("loss".into(), losses("2-dpo/train_log.jsonl".into()))]),
            panel("STIC stage 2: SFT loss", vec![("loss".into(), losses("4-sft/train_log.jsonl".into()))]),
        ],
        Some(c) => vec![panel("CSR: DPO loss per iteration", (1..=c.iterations).map(|t| (format!("iteration {t}"), losses(format!("iter-{t}/2-dpo/train_log.jsonl")))).collect())],
    };
    draw(&out.join("chart.png"), 1200, 800, &bars, &panels)
}
