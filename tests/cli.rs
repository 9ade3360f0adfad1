//! The `stic` binary's contract (issue #2): `generate --json` and `score --json` on the fixtures
//! print exactly the JSON fields scripts depend on, with transformers' values.

mod common;

use std::process::Command;

use common::*;

fn stic(args: &[&str]) -> (bool, String, String) {
    // $STIC_BIN: the binary carried next to the test binaries to another machine (gpu-run.sh).
    let bin = std::env::var("STIC_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_stic").to_string());
    let out = Command::new(bin).args(args).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

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
