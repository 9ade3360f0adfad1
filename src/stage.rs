//! What every multi-stage job shares (`stic run`, CSR's iterations, `stic world train`): a stage
//! runs in its own folder and closes with an atomic `stage.json` ([`StageSummary`]); a re-run
//! skips a finished stage; the summary table.

use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
pub use crate::weights::write_atomic;

/// One stage's line of the summary.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StageSummary {
    pub stage: String,
    /// "ran" in this invocation, or "skipped" (finished before).
    #[serde(default)]
    pub status: String,
    pub seconds: f64,
    /// What the stage counts (pairs written, steps, questions...).
    pub counts: serde_json::Value,
    /// Tokens per second (generated for data and eval stages, trained for training stages).
    pub tokens_per_s: Option<f64>,
}


/// Run the stage in folder `dir` unless its `stage.json` says it finished.
pub fn stage(dir: &Path, name: &str, quiet: bool, body: impl FnOnce() -> Result<(serde_json::Value, Option<f64>)>) -> Result<StageSummary> {
    let marker = dir.join("stage.json");
    if let Ok(text) = std::fs::read_to_string(&marker) {
        if let Ok(mut s) = serde_json::from_str::<StageSummary>(&text) {
            s.status = "skipped".into();
            if !quiet {
                eprintln!("[{name}] done before; skipped ({})", marker.display());
            }
            return Ok(s);
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    if !quiet {
        eprintln!("[{name}] running in {}", dir.display());
    }
    let t0 = Instant::now();
    let (counts, tokens_per_s) = body()?;
    let s = StageSummary { stage: name.into(), status: "ran".into(), seconds: t0.elapsed().as_secs_f64(), counts, tokens_per_s };
    write_atomic(&marker, serde_json::to_string_pretty(&s).expect("json"))?;
    Ok(s)
}

pub fn train_counts(log: &[crate::train::run_loop::LogLine]) -> (serde_json::Value, Option<f64>) {
    let (tokens, secs) = log.iter().fold((0usize, 0f64), |(t, s), l| (t + l.tokens, s + l.seconds));
    let last = log.last();
    let counts = serde_json::json!({
        "steps_this_run": log.len(),
        "final_loss": last.map(|l| l.loss),
        "final_reward_margin": last.and_then(|l| l.reward_margin),
        "tokens": tokens,
    });
    (counts, (secs > 0.0).then(|| tokens as f64 / secs))
}

/// The summary as a table for the terminal.
pub fn format_summary(summary: &[StageSummary]) -> String {
    let mut s = format!("{:<22} {:>8} {:>10} {:>10}  counts\n", "stage", "status", "seconds", "tokens/s");
    for st in summary {
        let tps = st.tokens_per_s.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
        // Scalars only (per-category tables stay in summary.json and metrics.json).
        let counts: serde_json::Map<String, serde_json::Value> = match &st.counts {
            serde_json::Value::Object(m) => m.iter().filter(|(_, v)| !v.is_object() && !v.is_array()).map(|(k, v)| (k.clone(), v.clone())).collect(),
            _ => Default::default(),
        };
        s += &format!("{:<22} {:>8} {:>10.1} {:>10}  {}\n", st.stage, st.status, st.seconds, tps, serde_json::Value::Object(counts));
    }
    s
}
