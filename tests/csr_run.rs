//! `stic run --config examples/csr-demo.toml` (issue #16 item 3): CSR's iterations end to end on
//! the tiny checkpoints: for each of two iterations, csr-prefs with the current model, DPO, the
//! merge that becomes the next model, and CHAIR + MMBench; a second invocation skips every stage.

mod common;

use common::*;

#[test]
fn csr_demo_runs_two_iterations_and_resumes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("stic-csr-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    // The demo config with its output redirected to a scratch folder.
    let text = std::fs::read_to_string(root.join("examples/csr-demo.toml")).unwrap();
    let cfg = out.join("csr.toml");
    std::fs::create_dir_all(&out).unwrap();
    let examples = root.join("examples");
    let text = text.replace("\"../", &format!("\"{}/../", examples.display())).replace(&format!("\"{}/../target/csr-demo\"", examples.display()), &format!("\"{}\"", out.join("run").display()));
    std::fs::write(&cfg, text).unwrap();

    let (ok, _, err) = stic(&["run", "--config", cfg.to_str().unwrap(), "--quiet"]);
    assert!(ok, "csr run failed: {err}");
    let run = out.join("run");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let stages: Vec<&str> = summary.as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(
        stages,
        [
            "0-base/eval/chair", "0-base/eval/mmbench",
            "iter-1/1-prefs", "iter-1/2-dpo", "iter-1/3-merge", "iter-1/4-eval/chair", "iter-1/4-eval/mmbench",
            "iter-2/1-prefs", "iter-2/2-dpo", "iter-2/3-merge", "iter-2/4-eval/chair", "iter-2/4-eval/mmbench",
        ]
    );
    for s in summary.as_array().unwrap() {
        assert_eq!(s["status"], "ran", "{s}");
    }
    // Each iteration wrote pairs and trained on them; the merge is a loadable checkpoint that the
    // next iteration searched with, and that differs from the model it came from.
    for t in [1, 2] {
        let it = run.join(format!("iter-{t}"));
        let pairs = std::fs::read_to_string(it.join("1-prefs/prefs.jsonl")).unwrap();
        assert_eq!(pairs.lines().count(), 3, "iteration {t}: one pair per prompt");
        assert!(it.join("2-dpo/adapter_model.safetensors").exists(), "iteration {t}: the adapter");
        assert!(it.join("3-merge/config.json").exists() && it.join("3-merge/tokenizer.json").exists(), "iteration {t}: the merged checkpoint");
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(it.join("4-eval/chair/metrics.json")).unwrap()).unwrap();
        assert_eq!(m["answered"], 2, "iteration {t}: CHAIR on 2 images: {m}");
    }
    let weights = |dir: &std::path::Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert_ne!(weights(&run.join("iter-1/3-merge")), weights(&root.join("tests/fixtures/llava15_tiny")), "the first merge changed the weights");
    assert_ne!(weights(&run.join("iter-2/3-merge")), weights(&run.join("iter-1/3-merge")), "the second iteration trained from the first's merge");

    // A second invocation finds every stage done.
    let (ok, _, err) = stic(&["run", "--config", cfg.to_str().unwrap(), "--quiet"]);
    assert!(ok, "{err}");
    let again: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert!(again.as_array().unwrap().iter().all(|s| s["status"] == "skipped"), "{again}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn csr_config_errors_name_the_field() {
    let dir = std::env::temp_dir().join(format!("stic-csr-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "method = \"csr\"\nmodel = \"m\"\nclip = \"c\"\ndata = \"d\"\nimages = \"i\"\nout = \"o\"\niterations = 0\n").unwrap();
    let (ok, _, err) = stic(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(!ok && err.contains("bad.toml") && err.contains("iterations"), "{err}");
    std::fs::write(&cfg, "method = \"csr\"\nmodel = \"m\"\nclip = \"c\"\ndata = \"d\"\nimages = \"i\"\nout = \"o\"\n[search]\nbeams = 3\n").unwrap();
    let (ok, _, err) = stic(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(!ok && err.contains("bad.toml") && err.contains("beams"), "{err}");
    std::fs::write(&cfg, "method = \"dpo\"\n").unwrap();
    let (ok, _, err) = stic(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(!ok && err.contains("method") && err.contains("dpo"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// CSR's DPO settings as the reference gives them (../shared/reference/csr.md §5: run_train.sh,
/// train_dpo_lora.py, TRL's beta default).
#[test]
fn csr_dpo_defaults_are_the_official_ones() {
    let a = stic::run_csr::csr_dpo_defaults(0, true);
    assert_eq!((a.lora.r, a.lora.alpha, a.lora.dropout), (128, 256.0, 0.05));
    let mut t = a.lora.targets.clone();
    t.sort();
    assert_eq!(t, ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]);
    assert_eq!((a.beta, a.sft_weight, a.lr, a.projector_lr), (0.1, 0.0, 1e-7, Some(2e-5)));
    assert_eq!((a.epochs, a.batch_size, a.grad_accum, a.weight_decay, a.warmup_ratio), (1, 1, 1, 0.0, 0.03));
    assert!(matches!(a.schedule, stic::train::run_loop::Schedule::Cosine));
}
