//! `stic run` on the synthetic world (`method = "world"`; the embedded default, examples/world.toml):
//! STIC on unlabeled world images, starting from the bundled world model, with the world's metrics
//! before and after each stage, a table, `summary.json` and a chart.
//!
//! ```text
//! 0-world/world      `world make` (seed and size of the world the model was trained on): its
//!                    held-out split is the evaluation, its train split's instructions stage 2's data
//! 0-world/unlabeled  `world make` with another seed: only the images are used (STIC's unlabeled images)
//! then stic run's stages (run.rs) with `eval_each_stage`: 0-base/eval, 1-prefs, 2-dpo, 2-dpo/eval,
//! 3-dif, 4-sft, 5-eval; each [[eval]] is `bench = "world"`.
//! summary.json       {"stages": [...], "metrics": {"base", "stic_stage1", "stic_stage2"}, "table"}
//! chart.png          the five metrics per model, and the DPO and SFT loss curves
//! ```
//! Every stage is skipped once done, so a re-run only redraws the table and the chart.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::run::{parse_toml, DataSection, DifSection, EvalSection, RunConfig, TrainSection};
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
    #[serde(default)]
    pub prefs: DataSection,
    #[serde(default)]
    pub dpo: TrainSection,
    /// `n`: instruction examples of the world's train split infused with descriptions.
    #[serde(default)]
    pub dif: DataSection,
    #[serde(default)]
    pub sft: TrainSection,
    #[serde(default)]
    pub eval: WorldEvalSection,
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

/// The rows of the table: (label, the stage folder whose `eval/world` or `world` holds the metrics).
const MODELS: [(&str, &str, &str); 3] = [("base", "base model", "0-base/eval/world"), ("stic_stage1", "after STIC DPO", "2-dpo/eval/world"), ("stic_stage2", "after STIC SFT", "5-eval/world")];

/// Run it; returns the stages' summaries and each model's metrics (`collect`).
pub fn run_world(cfg: &WorldRunConfig, config_path: &Path) -> Result<(Vec<StageSummary>, Value)> {
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let w = &cfg.world;
    let (world, unlabeled) = (out.join("0-world/world"), out.join("0-world/unlabeled"));
    let mut summary = vec![stage(&out.join("0-world"), "0-world", cfg.quiet, || {
        let a = crate::world::MakeArgs { n: w.n, seed: w.seed, size: w.size, heldout: w.heldout };
        let scenes = crate::world::make(&a, &world)?;
        let u = crate::world::MakeArgs { n: w.unlabeled, seed: w.seed ^ UNLABELED_SEED, size: w.size, heldout: 0.0 };
        crate::world::make(&u, &unlabeled)?;
        let held = scenes.iter().filter(|s| s.split == "heldout").count();
        Ok((json!({"images": scenes.len(), "heldout": held, "unlabeled": w.unlabeled}), None))
    })?];
    let eval = EvalSection {
        bench: "world".into(),
        data: world.clone(),
        image_folder: None,
        max_new_tokens: cfg.eval.max_new_tokens,
        batch_size: cfg.eval.batch_size,
        limit: cfg.eval.limit,
    };
    let rc = RunConfig {
        method: None,
        model: cfg.model.clone(),
        images: unlabeled.join("images"),
        out: out.clone(),
        seed: cfg.seed,
        quiet: cfg.quiet,
        random_weights: None,
        device: cfg.device.clone(),
        prefs: cfg.prefs.clone(),
        dpo: cfg.dpo.clone(),
        dif: DifSection { sft: world.join("instruct.json"), images: world.clone(), gen: cfg.dif.clone() },
        sft: cfg.sft.clone(),
        eval: vec![eval],
        eval_each_stage: true,
    };
    summary.extend(crate::run::run(&rc, config_path, None)?);
    let metrics = collect(out)?;
    let table = table(&metrics);
    write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&json!({"stages": summary, "metrics": metrics, "table": table})).expect("json"))?;
    chart(out, &metrics)?;
    Ok((summary, metrics))
}

/// Each model's world metrics (from its evaluation's metrics.json).
fn collect(out: &Path) -> Result<Value> {
    let mut m = serde_json::Map::new();
    for (key, _, dir) in MODELS {
        let p = out.join(dir).join("metrics.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Json { path: p.clone(), source: e })?;
        m.insert(key.into(), v);
    }
    Ok(Value::Object(m))
}

/// The before/after table (the five headline metrics per model).
pub fn table(metrics: &Value) -> String {
    let heads = crate::world::eval::HEADLINE;
    let mut s = format!("{:<18}", "model");
    heads.iter().for_each(|h| s += &format!(" {h:>10}"));
    s += "\n";
    for (key, label, _) in MODELS {
        s += &format!("{label:<18}");
        for h in heads {
            s += &format!(" {:>10.4}", metrics[key][h].as_f64().unwrap_or(f64::NAN));
        }
        s += "\n";
    }
    s
}

/// chart.png: the metrics per model, the DPO and SFT losses.
fn chart(out: &Path, metrics: &Value) -> Result<()> {
    use crate::chart::{draw, Bars, Curves};
    let heads = crate::world::eval::HEADLINE;
    let bars = Bars {
        title: "World metrics (chair: lower is better; recall, pope_f1, count_acc: higher)".into(),
        metrics: heads.iter().map(|s| s.to_string()).collect(),
        series: MODELS.iter().map(|(k, label, _)| (label.to_string(), heads.iter().map(|h| metrics[*k][*h].as_f64().unwrap_or(0.0)).collect())).collect(),
    };
    let panel = |title: &str, file: &str| Curves {
        title: title.into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        curves: vec![("loss".into(), crate::world::train::losses(&out.join(file)))],
    };
    draw(&out.join("chart.png"), 1200, 800, &bars, &[panel("STIC stage 1: DPO loss", "2-dpo/train_log.jsonl"), panel("STIC stage 2: SFT loss", "4-sft/train_log.jsonl")])
}
