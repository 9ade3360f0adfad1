//! `stic world make` and `stic world eval` (docs/WORLD.md): the same seed writes the same bytes, and
//! `world eval --json` prints exactly the five metrics, perfect for the reference answers and not
//! for answers that add the usual companion.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stic-world-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn make(out: &Path, seed: &str) {
    let (ok, _, err) = stic(&["world", "make", "--out", out.to_str().unwrap(), "--n", "24", "--seed", seed, "--size", "40", "--heldout", "0.5"]);
    assert!(ok, "{err}");
}

fn read_lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn eval(data: &Path, preds: &[serde_json::Value]) -> serde_json::Value {
    let file = data.join("preds.jsonl");
    std::fs::write(&file, preds.iter().map(|v| format!("{v}\n")).collect::<String>()).unwrap();
    let (ok, out, err) = stic(&["world", "eval", "--predictions", file.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str(out.trim()).unwrap()
}

#[test]
fn world_make_is_reproducible_and_world_eval_scores_it() {
    let (a, b) = (tmp("a"), tmp("b"));
    make(&a, "5");
    make(&b, "5");
    for f in ["objects.json", "captions.json", "instruct.json", "probes.jsonl", "questions.jsonl", "world.json", "train.txt", "heldout.txt", "images/000023.png"] {
        assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f}");
    }
    let questions = read_lines(&a.join("questions.jsonl"));
    let probes = read_lines(&a.join("probes.jsonl"));
    let reference: Vec<serde_json::Value> = questions
        .iter()
        .map(|q| serde_json::json!({"question_id": q["question_id"], "text": q["answer"]}))
        .chain(probes.iter().map(|p| serde_json::json!({"question_id": p["question_id"], "text": if p["label"] == "yes" { "Yes" } else { "No" }})))
        .collect();
    let m = eval(&a, &reference);
    assert_eq!(m, serde_json::json!({"chair_i": 0.0, "chair_s": 0.0, "recall": 1.0, "pope_f1": 1.0, "count_acc": 1.0}));
    // Every description adds "a ring", every probe says yes: ring hallucinated where absent.
    let ringy: Vec<serde_json::Value> = questions
        .iter()
        .filter(|q| q["kind"] == "describe")
        .map(|q| serde_json::json!({"question_id": q["question_id"], "text": format!("{} There is a ring.", q["answer"].as_str().unwrap())}))
        .chain(probes.iter().map(|p| serde_json::json!({"question_id": p["question_id"], "text": "Yes"})))
        .collect();
    let m = eval(&a, &ringy);
    assert!(m["chair_i"].as_f64().unwrap() > 0.0 && m["chair_s"].as_f64().unwrap() > 0.0, "{m}");
    assert_eq!(m["recall"], 1.0);
    assert!(m["pope_f1"].as_f64().unwrap() < 0.7, "{m}");
    assert_eq!(m["count_acc"], 0.0);
    for d in [a, b] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
