//! The world's slow tests (minutes; CI runs them with `cargo test --release --test world_slow --
//! --ignored`):
//! - the bundled world model (examples/world-model) is what `scripts/make-world-model.sh` rebuilds
//!   from its seed: the same settings, and the same metrics on 100 held-out images;
//! - STIC on the world, from the bundled model, over several seeds: the direction of its effect on
//!   the world's metrics, as measured and reported in docs/WORLD.md. With `STIC_WORLD_RUN_SEED0=DIR`
//!   seed 0's run is DIR (CI: the main command's `target/world-run`), whose finished stages are
//!   skipped.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// `world_train.json`'s settings without the paths of the machine that ran it.
fn settings(p: &Path) -> serde_json::Value {
    let mut v = read(p)["settings"].clone();
    for k in ["data", "out"] {
        v.as_object_mut().unwrap().remove(k);
    }
    if let Some(c) = v["clip"].as_object_mut() {
        for k in ["data", "out", "tokenizer"] {
            c.remove(k);
        }
    }
    v
}

#[test]
#[ignore = "minutes: CI runs it (--ignored)"]
fn the_bundled_world_model_is_rebuilt_from_its_seed() {
    let out = std::env::temp_dir().join(format!("stic-world-rebuild-{}", std::process::id()));
    let build = out.join("build");
    let status = std::process::Command::new("bash")
        .arg(root().join("scripts/make-world-model.sh"))
        .arg(&out)
        .env("STIC", env!("CARGO_BIN_EXE_stic"))
        .env("BUILD", &build)
        .status()
        .unwrap();
    assert!(status.success());
    let bundled = root().join("examples/world-model");
    assert_eq!(settings(&out.join("world_train.json")), settings(&bundled.join("world_train.json")), "the script's settings are not the bundled model's");
    let (a, b) = (read(&out.join("heldout_metrics.json")), read(&bundled.join("heldout_metrics.json")));
    let same_bytes = std::fs::read(out.join("model.safetensors")).unwrap() == std::fs::read(bundled.join("model.safetensors")).unwrap();
    eprintln!("rebuilt: {a}\nbundled: {b}\nsame weights byte for byte: {same_bytes}");
    for k in ["chair_i", "chair_s", "recall", "pope_f1", "count_acc"] {
        let (x, y) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
        assert!((x - y).abs() <= 0.02, "{k}: rebuilt {x}, bundled {y}");
    }
    std::fs::remove_dir_all(&out).ok();
}

#[test]
#[ignore = "minutes: CI runs it (--ignored)"]
fn stic_on_the_world_moves_the_metrics_as_measured_over_seeds() {
    let base = std::env::temp_dir().join(format!("stic-world-effect-{}", std::process::id()));
    let mut deltas: Vec<serde_json::Value> = Vec::new();
    for seed in 0..3 {
        // CI has run the main command (seed 0, target/world-run) just before: its stages are reused.
        let out = match std::env::var_os("STIC_WORLD_RUN_SEED0") {
            Some(p) if seed == 0 => PathBuf::from(p),
            _ => base.join(format!("seed-{seed}")),
        };
        let (ok, _, err) = stic(&["run", "--seed", &seed.to_string(), "--out", out.to_str().unwrap(), "--quiet"]);
        assert!(ok, "{err}");
        let m = read(&out.join("summary.json"))["metrics"].clone();
        let d: serde_json::Map<String, serde_json::Value> = ["chair_i", "chair_s", "recall", "pope_f1", "count_acc"]
            .iter()
            .map(|k| (k.to_string(), serde_json::json!(m["stic_stage2"][*k].as_f64().unwrap() - m["base"][*k].as_f64().unwrap())))
            .collect();
        eprintln!("seed {seed}: after STIC - before: {}", serde_json::Value::Object(d.clone()));
        deltas.push(serde_json::Value::Object(d));
    }
    let mean = |k: &str| deltas.iter().map(|d| d[k].as_f64().unwrap()).sum::<f64>() / deltas.len() as f64;
    // The direction measured over seeds 0-2 (docs/WORLD.md, "STIC in the world", 2026-12-07):
    // STIC made this model hallucinate more (CHAIR_i 0.618 -> 0.654 ± 0.027, up for every seed) and
    // answer "no" to almost every probe (POPE F1 0.267 -> 0.026 ± 0.016). A change that makes STIC
    // help here is welcome; it should update the document and this test with the new measurement.
    assert!(mean("chair_i") > 0.0, "CHAIR_i no longer rises under STIC: {deltas:?}");
    assert!(mean("pope_f1") < -0.1, "POPE F1 no longer collapses under STIC: {deltas:?}");
    std::fs::remove_dir_all(&base).ok();
}
