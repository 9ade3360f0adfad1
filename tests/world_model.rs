//! `stic world train` (a tiny LLaVA from scratch in two stages), `stic world eval --model`, and
//! `stic run` on the world (`method = "world"`): the same seed gives the same model byte for byte,
//! the model loads everywhere, the run writes its table, summary.json and chart, and a re-run skips
//! every stage. Tiny settings (a 24-image world, a 2-layer 32-wide model): seconds.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stic-world-model-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn make(out: &Path) {
    let (ok, _, err) = stic(&["world", "make", "--out", s(out), "--n", "24", "--seed", "3", "--size", "32", "--heldout", "0.25"]);
    assert!(ok, "{err}");
}

fn train(data: &Path, out: &Path) -> (bool, String) {
    let (ok, _, err) = stic(&[
        "world", "train", "--data", s(data), "--out", s(out), "--seed", "7", "--hidden", "32", "--layers", "2", "--heads", "2", "--intermediate", "64",
        "--vision-hidden", "32", "--vision-layers", "2", "--patch", "8", "--batch-size", "4", "--instruct-epochs", "1", "--clip-epochs", "2", "--quiet",
    ]);
    (ok, err)
}

#[test]
fn world_train_is_deterministic_and_its_model_answers_the_world() {
    let root = tmp("train");
    let data = root.join("world");
    make(&data);
    let (a, b) = (root.join("a"), root.join("b"));
    for m in [&a, &b] {
        let (ok, err) = train(&data, m);
        assert!(ok, "{err}");
    }
    for f in ["model.safetensors", "tokenizer.json", "config.json"] {
        assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f} differs between two runs with the same seed");
    }
    // The report has both stages' curves, and the losses went down over stage 2.
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("world_train.json")).unwrap()).unwrap();
    let curve = |k: &str| report["curves"][k].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).collect::<Vec<f64>>();
    let (align, instruct) = (curve("align"), curve("instruct"));
    assert_eq!(align.len(), 18 / 4 + 1, "one loss per step of stage 1 (18 train images, 4 per step)");
    assert!(instruct.first().unwrap() > instruct.last().unwrap(), "{instruct:?}");
    // A re-run skips every stage.
    let (ok, err) = train(&data, &a);
    assert!(ok && err.matches("skipped").count() == 4, "{err}");
    // `world eval --model` answers the held-out questions and prints the five metrics.
    let (ok, out, err) = stic(&["world", "eval", "--model", s(&a), "--data", s(&data), "--out", s(&root.join("eval")), "--json", "--quiet", "--limit", "3"]);
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let keys: Vec<&String> = m.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5, "{m}");
    for k in ["chair_i", "chair_s", "recall", "pope_f1", "count_acc"] {
        let v = m[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k} = {v}");
    }
    let preds = std::fs::read_to_string(root.join("eval/predictions.jsonl")).unwrap();
    let images: std::collections::BTreeSet<String> =
        preds.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["question_id"].as_str().unwrap().split('/').nth(1).unwrap().to_string()).collect();
    assert_eq!(images.len(), 3, "--limit 3 answers the questions of 3 images: {images:?}");

    // `stic run` on this world from this model: every stage, the table, summary.json, chart.png.
    let cfg = root.join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "method = \"world\"\nmodel = \"{}\"\nout = \"{}\"\n[world]\nseed = 3\nn = 24\nsize = 32\nheldout = 0.25\nunlabeled = 4\n\
             [prefs]\nmax_new_tokens = 12\n[dpo]\nlora_r = 4\nlr = 1e-3\n[dif]\nn = 3\nmax_new_tokens = 12\n[sft]\nlr = 1e-3\nbatch_size = 2\n[eval]\nlimit = 2\nmax_new_tokens = 16\n",
            s(&a),
            s(&root.join("run"))
        ),
    )
    .unwrap();
    let (ok, table, err) = stic(&["run", "--config", s(&cfg), "--quiet"]);
    assert!(ok, "{err}");
    for row in ["base model", "after STIC DPO", "after STIC SFT"] {
        assert!(table.contains(row), "{table}");
    }
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("run/summary.json")).unwrap()).unwrap();
    for k in ["base", "stic_stage1", "stic_stage2"] {
        assert!(summary["metrics"][k]["chair_i"].is_number(), "{k}: {summary}");
    }
    let png = image::open(root.join("run/chart.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1200, 800));
    let (ok, _, err) = stic(&["run", "--config", s(&cfg)]);
    assert!(ok, "{err}");
    assert_eq!(err.matches("done before; skipped").count(), 8, "every stage is skipped on a re-run: {err}");

    // CSR instead of STIC (`[csr]`): the prompts, the world CLIP on a world of its own, an iteration.
    let csr = root.join("csr.toml");
    let head = format!("method = \"world\"\nmodel = \"{}\"\nout = \"{}\"\n[world]\nseed = 3\nn = 24\nsize = 32\nheldout = 0.25\nunlabeled = 4\n", s(&a), s(&root.join("csr")));
    let body = "[csr]\niterations = 1\nprompts = 3\n[csr.clip_train]\nimages = 20\nepochs = 1\nlayers = 1\nbatch = 8\n\
                [csr.search]\nmax_new_tokens = 8\nmax_chars = 60\nbatch_size = 3\n[dpo]\nlora_r = 4\nlr = 1e-3\n[eval]\nlimit = 2\nmax_new_tokens = 16\n";
    std::fs::write(&csr, format!("{head}{body}")).unwrap();
    let (ok, table, err) = stic(&["run", "--config", s(&csr), "--quiet"]);
    assert!(ok, "{err}");
    for row in ["base model", "after CSR iter 1"] {
        assert!(table.contains(row), "{table}");
    }
    assert!(!table.contains("STIC"), "{table}");
    let prompts: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("csr/0-world/prompts.json")).unwrap()).unwrap();
    assert_eq!(prompts.as_array().unwrap().len(), 3, "{prompts}");
    assert!(prompts[0]["input"].as_str().unwrap().starts_with("<image>\n"), "{prompts}");
    let clip: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("csr/0-clip/stage.json")).unwrap()).unwrap();
    assert_eq!(clip["counts"]["images"], 20, "the CLIP's own world: {clip}");
    assert!(root.join("csr/iter-1/3-merge/model.safetensors").exists());
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("csr/summary.json")).unwrap()).unwrap();
    for k in ["base", "csr_iter1"] {
        assert!(summary["metrics"][k]["chair_i"].is_number(), "{k}: {summary}");
    }
    assert!(image::open(root.join("csr/chart.png")).is_ok());
    // STIC's sections do not go with [csr].
    std::fs::write(&csr, format!("{head}[sft]\nlr = 1e-3\n{body}")).unwrap();
    let (ok, _, err) = stic(&["run", "--config", s(&csr), "--quiet"]);
    assert!(!ok && err.contains("sft") && err.contains("[csr]"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn world_train_refuses_a_model_that_does_not_fit_the_world() {
    let root = tmp("bad");
    let data = root.join("world");
    make(&data);
    let (ok, _, err) = stic(&["world", "train", "--data", s(&data), "--out", s(&root.join("m")), "--patch", "7", "--quiet"]);
    assert!(!ok && err.contains("not a multiple of the patch"), "{err}");
    let (ok, _, err) = stic(&["world", "train", "--data", s(&data), "--out", s(&root.join("m")), "--align-train", "decoder,lm", "--quiet"]);
    assert!(!ok && err.contains("--align-train") && err.contains("`lm`"), "{err}");
    let (ok, _, err) = stic(&["world", "train", "--data", s(&data), "--out", s(&root.join("m")), "--instruct-train", "visio", "--quiet"]);
    assert!(!ok && err.contains("--instruct-train"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn world_train_instruct_can_train_the_vision_tower() {
    // `--instruct-train decoder,projector,vision`: stage 2 moves the tower's weights up to the
    // feature layer; the model loads and answers (`world eval`), and the report names the parts.
    let root = tmp("vision");
    let data = root.join("world");
    make(&data);
    let out = root.join("m");
    let (ok, _, err) = stic(&[
        "world", "train", "--data", s(&data), "--out", s(&out), "--seed", "7", "--hidden", "32", "--layers", "2", "--heads", "2", "--intermediate", "64",
        "--vision-hidden", "32", "--vision-layers", "2", "--patch", "8", "--batch-size", "4", "--instruct-epochs", "1", "--instruct-train",
        "decoder,projector,vision", "--quiet",
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("world_train.json")).unwrap()).unwrap();
    assert_eq!(report["settings"]["instruct"]["parts"], "decoder,projector,vision", "{report}");
    // Stage 2's own curve (saving a model once copied stage 1's train_log.jsonl and stage.json).
    assert_ne!(report["curves"]["instruct"], report["curves"]["align"], "{report}");
    let marker: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("stages/2-instruct/stage.json")).unwrap()).unwrap();
    assert_eq!(marker["stage"], "2-instruct");
    assert!(!out.join("stages/2-instruct/checkpoint/stage.json").exists() && !out.join("stages/2-instruct/checkpoint/train_log.jsonl").exists());
    let (before, after) = (stic::weights::WeightStore::open(&out.join("stages/1-align")).unwrap(), stic::weights::WeightStore::open(&out).unwrap());
    let mut moved = 0;
    for name in before.names().filter(|n| n.contains("vision_tower") && n.contains("embeddings")) {
        let shape = before.shape_of(name).unwrap();
        moved += (before.get(name, &shape).unwrap().data() != after.get(name, &shape).unwrap().data()) as usize;
    }
    assert!(moved >= 3, "the tower's embeddings did not move in stage 2 ({moved})");
    let (ok, _, err) = stic(&["world", "eval", "--model", s(&out), "--data", s(&data), "--out", s(&root.join("eval")), "--json", "--quiet", "--limit", "2"]);
    assert!(ok, "{err}");
    std::fs::remove_dir_all(&root).ok();
}
