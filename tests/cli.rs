//! The `stic` binary's contract (issue #2): `generate --json` and `score --json` on the fixtures
//! print exactly the JSON fields scripts depend on, with transformers' values.

mod common;

use std::process::Command;

use common::*;


#[test]
fn generate_json_matches_transformers() {
    let exp = read_json("expected/llava_next_tiny.json");
    let case = &exp["cases"][1];
    let model = fixtures().join("llava_next_tiny");
    let image = fixtures().join(case["image"].as_str().unwrap());
    let (ok, out, err) = stic(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        case["prompt"].as_str().unwrap(),
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(ids(&v["prompt_ids"]), ids(&case["prompt_ids"]));
    assert_eq!(v["n_image_tokens"], case["n_image_tokens"]);
    assert_eq!(ids(&v["output_ids"]), ids(&case["greedy_ids"]));
    assert_eq!(v["text"], case["greedy_text"]);
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
}

#[test]
fn score_json_matches_transformers() {
    let exp = read_json("expected/llava15_tiny.json");
    let case = &exp["cases"][0];
    let model = fixtures().join("llava15_tiny");
    let image = fixtures().join(case["image"].as_str().unwrap());
    let (ok, out, err) = stic(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        case["prompt"].as_str().unwrap(),
        "--response",
        case["response"].as_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(ids(&v["response_ids"]), ids(&case["response_ids"]));
    let (got, want) = (floats(&v["logprobs"]), floats(&case["logprobs"]));
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
    assert!((v["sum"].as_f64().unwrap() - got.iter().sum::<f64>()).abs() < 1e-9);
}

#[test]
fn raw_prompt_without_image_token_fails_clearly() {
    let model = fixtures().join("llava15_tiny");
    let image = fixtures().join("images/wide.jpg");
    let (ok, _, err) = stic(&[
        "generate", "--model", model.to_str().unwrap(), "--image", image.to_str().unwrap(),
        "--prompt", "USER: hello ASSISTANT:", "--raw-prompt",
    ]);
    assert!(!ok);
    assert!(err.contains("<image>"), "{err}");
}

#[test]
fn random_weights_build_any_config_deterministically() {
    // The tiny config with random weights: runs, is seeded, and differs from the real weights.
    let model = fixtures().join("llava_next_tiny");
    let image = fixtures().join("images/tall.png");
    let run = |seed: &str| {
        let (ok, out, err) = stic(&[
            "generate", "--model", model.to_str().unwrap(), "--image", image.to_str().unwrap(),
            "--prompt", "Hi", "--max-new-tokens", "5", "--random-weights", "--weights-seed", seed, "--json",
        ]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        ids(&v["output_ids"])
    };
    let (a, b, c) = (run("1"), run("1"), run("2"));
    assert_eq!(a.len(), 5);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn score_with_peft_adapter_matches_transformers() {
    let exp = read_json("expected/adapter_next_tiny.json");
    let case = &exp["cases"][2];
    let (ok, out, err) = stic(&[
        "score",
        "--model", fixtures().join("llava_next_tiny").to_str().unwrap(),
        "--adapter", fixtures().join("adapter_next_tiny").to_str().unwrap(),
        "--image", fixtures().join(case["image"].as_str().unwrap()).to_str().unwrap(),
        "--prompt", "What is shown in this image?",
        "--response", case["response"].as_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for (a, b) in floats(&v["logprobs"]).iter().zip(&floats(&case["logprobs"])) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

/// `stic check`: exit 3 without CUDA support built in, 2 (with the skip line) without a device,
/// and on a GPU machine 0 with one table row per check of the selected op.
#[test]
fn check_exit_status_tells_skips_from_failures() {
    let bin = std::env::var("STIC_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_stic").to_string());
    let out = Command::new(bin).args(["check", "--op", "sample"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    #[cfg(not(feature = "cuda"))]
    {
        assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
        assert!(stderr.contains("--features cuda"), "{stderr}");
    }
    #[cfg(feature = "cuda")]
    {
        if stic::backend::cuda::cuda_available() {
            assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
            assert_eq!(stdout.lines().filter(|l| l.starts_with("argmax_") && l.ends_with(" ok")).count(), 6, "{stdout}");
        } else {
            assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
            assert_eq!(stdout.trim(), "skipped: no CUDA device");
        }
    }
}

/// `stic train-dpo`: the log has the contract's fields; a run stopped after step 2 and resumed
/// ends with the same adapter, optimiser state, reference log-probs and log as an uninterrupted
/// run; with LoRA only and with the projector trained too.
#[test]
fn train_dpo_resume_equals_uninterrupted_run() {
    resume_equals_uninterrupted(&[], "lora");
    resume_equals_uninterrupted(&["--projector-lr", "1e-2"], "projector");
}

fn resume_equals_uninterrupted(extra_args: &[&str], tag: &str) {
    let model = fixtures().join("llava_next_tiny");
    let data = fixtures().join("prefs/prefs.jsonl");
    let base = std::env::temp_dir().join(format!("stic-train-{tag}-{}", std::process::id()));
    let (full, crashed) = (base.join("full"), base.join("crashed"));
    let _ = std::fs::remove_dir_all(&base);
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "train-dpo", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(),
            "--lora-r", "2", "--lora-alpha", "4", "--lr", "1e-2", "--epochs", "2", "--batch-size", "1", "--grad-accum", "2",
            "--warmup-ratio", "0.34", "--save-every", "1", "--seed", "3", "--sft-weight", "0.0009765625",
        ]
        .iter()
        .chain(extra_args)
        .map(|s| s.to_string())
        .collect()
    };
    let run = |extra: &[&str], out: &std::path::Path| {
        let mut a = args(out);
        a.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        let (ok, _, err) = stic(&a);
        assert!(ok, "{err}");
    };
    run(&[], &full);
    run(&["--stop-after", "2"], &crashed);
    assert!(!crashed.join("adapter_model.safetensors").exists(), "a crashed run has no final adapter");
    run(&["--resume"], &crashed);
    for f in ["adapter_model.safetensors", "checkpoint/optimizer.safetensors", "train_log.jsonl", "reference_logps.jsonl"] {
        assert_eq!(std::fs::read(full.join(f)).unwrap(), std::fs::read(crashed.join(f)).unwrap(), "{f} differs");
    }
    let log = std::fs::read_to_string(full.join("train_log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "3 pairs x 2 epochs / (batch 1 x accum 2)");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["step"], i + 1);
        for k in ["loss", "chosen_reward", "rejected_reward", "reward_margin", "lr"] {
            assert!(l[k].is_number(), "{k} in {l}");
        }
    }
    // HF's cosine schedule with ceil(0.34 * 3) = 2 warmup steps: 0, 5e-3, then 1e-2 (progress 0).
    let lr: Vec<f64> = lines.iter().map(|l| l["lr"].as_f64().unwrap()).collect();
    assert!(lr[0] == 0.0 && (lr[1] - 5e-3).abs() < 1e-9 && (lr[2] - 1e-2).abs() < 1e-9, "{lr:?}");
    let st = safetensors::SafeTensors::deserialize(&std::fs::read(full.join("adapter_model.safetensors")).unwrap()).unwrap().names().len();
    assert_eq!(st, if extra_args.is_empty() { 28 } else { 32 }, "14 adapters (+ 4 projector tensors)");
}

/// `stic merge`: the merged checkpoint, loaded without an adapter, scores like base + adapter.
#[test]
fn merged_checkpoint_scores_like_the_adapter() {
    let model = fixtures().join("llava_next_tiny");
    let adapter = fixtures().join("adapter_next_tiny");
    let base = std::env::temp_dir().join(format!("stic-merge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let exp = read_json("expected/adapter_next_tiny.json");
    let case = &exp["cases"][1];
    let image = fixtures().join(case["image"].as_str().unwrap());
    for (dtype, tol) in [("f32", 1e-4), ("keep", 3e-2)] {
        let out = base.join(dtype);
        let (ok, _, err) = stic(&["merge", "--model", model.to_str().unwrap(), "--adapter", adapter.to_str().unwrap(), "--out", out.to_str().unwrap(), "--dtype", dtype]);
        assert!(ok, "{err}");
        let (ok, stdout, err) = stic(&[
            "score", "--model", out.to_str().unwrap(), "--image", image.to_str().unwrap(),
            "--prompt", "What is shown in this image?", "--response", case["response"].as_str().unwrap(), "--json",
        ]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        // transformers + PEFT's log-probs of the adapted model. With --dtype keep the merged
        // weights are rounded to the base's bf16 (relative 2^-9), hence the looser tolerance.
        for (a, b) in floats(&v["logprobs"]).iter().zip(&floats(&case["logprobs"])) {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{dtype}: {a} vs {b}");
        }
    }
    // An adapter that carries the projector (modules_to_save): the merged checkpoint scores as
    // PEFT scored the adapter (expected/stic_dpo_projector_adapter.json).
    let exp = read_json("expected/stic_dpo_projector_adapter.json");
    let case = &exp["cases"][0];
    let out = base.join("projector");
    let adapter = fixtures().join("stic_dpo_projector_adapter");
    let (ok, _, err) = stic(&["merge", "--model", model.to_str().unwrap(), "--adapter", adapter.to_str().unwrap(), "--out", out.to_str().unwrap(), "--dtype", "f32"]);
    assert!(ok, "{err}");
    let image = fixtures().join(case["image"].as_str().unwrap());
    let (ok, stdout, err) = stic(&[
        "score", "--model", out.to_str().unwrap(), "--image", image.to_str().unwrap(),
        "--prompt", case["prompt"].as_str().unwrap(), "--response", case["response"].as_str().unwrap(), "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for (a, b) in floats(&v["logprobs"]).iter().zip(&floats(&case["logprobs"])) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "projector merge: {a} vs {b}");
    }
    // --dtype keep writes the base's dtype (bf16 for the language model of this fixture).
    let bytes = std::fs::read(base.join("keep/model-00002-of-00002.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("language_model.model.layers.0.self_attn.q_proj.weight").unwrap().dtype(), safetensors::Dtype::BF16);
}

/// `stic train-sft` on LLaVA's JSON: the loss (answers only) falls, and the log has no rewards.
#[test]
fn train_sft_learns_on_llava_json() {
    let model = fixtures().join("llava_next_tiny");
    let data = fixtures().join("sft/llava.json");
    let out = std::env::temp_dir().join(format!("stic-sft-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (ok, _, err) = stic(&[
        "train-sft", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(),
        "--lora-r", "4", "--lora-alpha", "8", "--lr", "1e-2", "--epochs", "8", "--warmup-ratio", "0", "--seed", "1",
    ]);
    assert!(ok, "{err}");
    let log: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("train_log.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(log.len(), 16);
    assert!(log[0].get("reward_margin").is_none() && log[0]["lr"].is_number());
    let first: f64 = log[..2].iter().map(|l| l["loss"].as_f64().unwrap()).sum();
    let last: f64 = log[14..].iter().map(|l| l["loss"].as_f64().unwrap()).sum();
    assert!(last < 0.75 * first, "SFT loss {first} -> {last}");
    assert!(out.join("adapter_model.safetensors").exists() && out.join("adapter_config.json").exists());
}

/// Projector-only training (LLaVA's alignment stage): `--lora-r 0 --projector-lr`. The loss falls,
/// the projector is saved on its own, and `--adapter` on it scores like the merged checkpoint.
#[test]
fn projector_only_sft_learns_and_saves_the_projector() {
    let model = fixtures().join("llava_next_tiny");
    let data = fixtures().join("sft/llava.json");
    let base = std::env::temp_dir().join(format!("stic-align-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let out = base.join("train");
    let (ok, _, err) = stic(&[
        "train-sft", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(),
        "--lora-r", "0", "--projector-lr", "1e-2", "--epochs", "8", "--warmup-ratio", "0", "--seed", "1",
    ]);
    assert!(ok, "{err}");
    let log: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("train_log.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first: f64 = log[..2].iter().map(|l| l["loss"].as_f64().unwrap()).sum();
    let n = log.len();
    let last: f64 = log[n - 2..].iter().map(|l| l["loss"].as_f64().unwrap()).sum();
    assert!(last < 0.9 * first, "projector-only SFT loss {first} -> {last}");
    assert!(out.join("multi_modal_projector.safetensors").exists() && !out.join("adapter_config.json").exists());
    let merged = base.join("merged");
    let (ok, _, err) = stic(&["merge", "--model", model.to_str().unwrap(), "--adapter", out.to_str().unwrap(), "--out", merged.to_str().unwrap(), "--dtype", "f32"]);
    assert!(ok, "{err}");
    let image = fixtures().join("images/wide.jpg");
    let score = |m: &std::path::Path, adapter: Option<&std::path::Path>| -> Vec<f64> {
        let mut a = vec!["score", "--model", m.to_str().unwrap(), "--image", image.to_str().unwrap(), "--prompt", "What is shown?", "--response", "A red square.", "--json"];
        if let Some(ad) = adapter {
            a.extend(["--adapter", ad.to_str().unwrap()]);
        }
        let (ok, stdout, err) = stic(&a);
        assert!(ok, "{err}");
        floats(&serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap()["logprobs"])
    };
    let (with_adapter, from_merged, base_lp) = (score(&model, Some(&out)), score(&merged, None), score(&model, None));
    for (a, b) in with_adapter.iter().zip(&from_merged) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
    assert!(with_adapter.iter().zip(&base_lp).any(|(a, b)| (a - b).abs() > 1e-3), "the projector did not change");
}

/// `--init-adapter` (STIC stage 2 continues the stage-1 adapter): training starts from that
/// adapter (the first loss is the adapted model's, not the base's) and saves one adapter of the
/// same rank, targets and projector.
#[test]
fn train_sft_continues_an_adapter() {
    let model = fixtures().join("llava_next_tiny");
    let data = fixtures().join("sft/llava.json");
    let base = std::env::temp_dir().join(format!("stic-continue-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let run = |out: &std::path::Path, extra: &[&str]| -> Vec<f64> {
        let mut a = vec![
            "train-sft", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(),
            "--lora-r", "2", "--lr", "1e-3", "--max-steps", "2", "--warmup-ratio", "0", "--seed", "1",
        ];
        a.extend(extra);
        let (ok, _, err) = stic(&a);
        assert!(ok, "{err}");
        std::fs::read_to_string(out.join("train_log.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect()
    };
    let init = fixtures().join("stic_dpo_projector_adapter");
    let fresh = run(&base.join("fresh"), &[]);
    let cont = run(&base.join("cont"), &["--init-adapter", init.to_str().unwrap(), "--projector-lr", "1e-3"]);
    assert!((fresh[0] - cont[0]).abs() > 1e-3, "the first loss ignores the initial adapter: {fresh:?} vs {cont:?}");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(base.join("cont/adapter_config.json")).unwrap()).unwrap();
    assert_eq!((cfg["r"].as_u64(), cfg["lora_alpha"].as_f64()), (Some(4), Some(8.0)), "rank and alpha of the initial adapter");
    assert_eq!(cfg["modules_to_save"][0], "multi_modal_projector");
    let st = std::fs::read(base.join("cont/adapter_model.safetensors")).unwrap();
    assert_eq!(safetensors::SafeTensors::deserialize(&st).unwrap().names().len(), 32);
}

/// `stic profile` on the CPU: both phases timed, the per-op rows add up to the ops run, and the
/// token counts follow the workload (2 prompts of the image's rows + 20 tokens, 5 steps).
#[test]
fn profile_reports_phases_and_ops() {
    let (ok, out, err) = stic(&[
        "profile", "--model", fixtures().join("llava_next_tiny").to_str().unwrap(),
        "--image", fixtures().join("images/wide.jpg").to_str().unwrap(),
        "--batch", "2", "--prompt-len", "20", "--decode-steps", "5", "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let rows = v["prompt_rows"].as_u64().unwrap();
    assert_eq!(rows, v["image_rows"].as_u64().unwrap() + 20, "the image's feature rows + 20 text tokens");
    assert_eq!(v["prefill"]["tokens"].as_u64().unwrap(), 2 * rows);
    assert_eq!(v["decode"]["tokens"].as_u64().unwrap(), 10);
    let layers = 2; // llava_next_tiny's decoder
    for phase in ["prefill", "decode"] {
        let ops = v[phase]["ops"].as_array().unwrap();
        let calls = |op: &str| ops.iter().find(|o| o["op"] == op).map(|o| o["calls"].as_u64().unwrap()).unwrap_or(0);
        let steps = if phase == "prefill" { 1 } else { 5 };
        // The prefill (every slot empty) attends over its own rows, the decode steps over the cache.
        let (packed, cached) = if phase == "prefill" { (layers, 0) } else { (0, layers * steps) };
        assert_eq!((calls("attention_packed"), calls("attention")), (packed, cached), "{phase}: {ops:?}");
        assert_eq!(calls("matmul_add"), 2 * layers * steps, "{phase}");
        assert_eq!(calls("logits"), steps, "{phase}");
        assert!(v[phase]["ms"].as_f64().unwrap() > 0.0);
    }
}

/// `--device`: a bad name is refused by the parser; `cuda` is a clear error without CUDA support
/// or without a device (and runs where there is one).
#[test]
fn device_flag_errors_are_clear() {
    let model = fixtures().join("llava_next_tiny");
    let args = |dev: &'static str| -> Vec<String> {
        ["score", "--model", model.to_str().unwrap(), "--prompt", "Hi", "--response", "there", "--raw-prompt", "--device", dev]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let run = |dev| {
        let a = args(dev);
        stic(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>())
    };
    let (ok, _, err) = run("tpu");
    assert!(!ok && err.contains("unknown device `tpu`"), "{err}");
    let (ok, out, err) = run("cuda");
    #[cfg(not(feature = "cuda"))]
    assert!(!ok && err.contains("built without --features cuda"), "{err}");
    #[cfg(feature = "cuda")]
    if stic::backend::cuda::cuda_available() {
        assert!(ok, "{err}");
        assert!(out.contains("sum"), "{out}");
    } else {
        assert!(!ok && err.contains("CudaDevice::new"), "{err}");
    }
    let _ = out;
}

/// Every command that loads a model takes `--device`; without CUDA (a build without the feature,
/// or no device) a cuda device fails with a clear error before any work, and `stic run` reads
/// `device` from its config (an unknown value names the field).
#[test]
fn device_flag_on_data_training_and_eval_commands() {
    let tmp = std::env::temp_dir().join(format!("stic-device-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let out = tmp.join("out");
    let f = |rel: &str| fixtures().join(rel).to_str().unwrap().to_string();
    let (m, o) = (f("llava_next_tiny"), out.to_str().unwrap().to_string());
    let cmds: Vec<Vec<String>> = [
        vec!["build-prefs", "--model", &m, "--images", &f("images"), "--out", &o, "--n", "1"],
        vec!["train-dpo", "--model", &m, "--data", &f("prefs/prefs.jsonl"), "--out", &o, "--max-steps", "1"],
        vec!["train-sft", "--model", &m, "--data", &f("sft/llava.json"), "--out", &o, "--max-steps", "1"],
        vec!["eval", "--bench", "pope", "--model", &m, "--data", &f("eval/pope"), "--out", &o, "--limit", "1"],
    ]
    .iter()
    .map(|c| c.iter().map(|s| s.to_string()).collect())
    .collect();
    let has_gpu = cfg!(feature = "cuda") && {
        #[cfg(feature = "cuda")]
        let g = stic::backend::cuda::cuda_available();
        #[cfg(not(feature = "cuda"))]
        let g = false;
        g
    };
    for c in &cmds {
        let with = |dev: &'static str| -> Vec<&str> { c.iter().map(|s| s.as_str()).chain(["--device", dev]).collect() };
        let (ok, _, err) = stic(&with("tpu"));
        assert!(!ok && err.contains("unknown device `tpu`"), "{}: {err}", c[0]);
        if !has_gpu {
            let (ok, _, err) = stic(&with("cuda"));
            assert!(!ok && (err.contains("built without --features cuda") || err.contains("CudaDevice::new")), "{}: {err}", c[0]);
            assert!(!out.join("adapter_model.safetensors").exists(), "{}: nothing trained", c[0]);
        }
    }
    // stic run: `device` in the config.
    let cfg = tmp.join("stic.toml");
    let demo = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.toml")).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let demo = demo.replace("\"tests/", &format!("\"{root}/tests/")).replace("\"target/", &format!("\"{}/", tmp.display()));
    std::fs::write(&cfg, format!("device = \"gpu\"\n{demo}")).unwrap();
    let (ok, _, err) = stic(&["run", "--config", cfg.to_str().unwrap(), "--quiet"]);
    assert!(!ok && err.contains("device") && err.contains("unknown device `gpu`"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
}
