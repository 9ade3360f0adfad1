//! `stic run` (issue #7): the whole STIC pipeline on the tiny fixture model with 6 images and a
//! corrupt JPEG. Every stage runs and writes its artefacts; a run stopped in the middle of
//! build-prefs and restarted ends with the same preference file (no duplicates) and the same final
//! adapter as an uninterrupted run; a second invocation skips every finished stage.

mod common;

use std::path::{Path, PathBuf};

use common::*;


/// Six readable images and one JPEG of garbage.
fn images(root: &Path) -> PathBuf {
    let dir = root.join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let img = fixtures().join("images");
    for (src, dst) in [("wide.jpg", "a.jpg"), ("tall.png", "b.png"), ("gray.png", "c.png"), ("wide.jpg", "d.jpg"), ("tall.png", "e.png"), ("gray.png", "f.png")] {
        std::fs::copy(img.join(src), dir.join(dst)).unwrap();
    }
    let mut bad = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    bad.extend((0..200u32).map(|i| (i * 31 % 251) as u8));
    std::fs::write(dir.join("broken.jpg"), bad).unwrap();
    dir
}

fn config(root: &Path, name: &str, images: &Path) -> PathBuf {
    let f = fixtures();
    let text = format!(
        r#"
model = "{model}"
images = "{images}"
out = "{name}"
seed = 5
quiet = true

[prefs]
batch_size = 2
max_new_tokens = 6

[dpo]
lora_r = 2
lora_alpha = 4
lr = 1e-3
projector_lr = 1e-3
grad_accum = 2
save_every = 1

[dif]
sft = "{sft}"
images = "{sft_images}"
n = 2
batch_size = 2
max_new_tokens = 6

[sft]
lr = 1e-3
batch_size = 1
max_steps = 2

[[eval]]
bench = "mmbench"
data = "{mmbench}"
limit = 2
max_new_tokens = 4
"#,
        model = f.join("llava_next_tiny").display(),
        images = images.display(),
        sft = f.join("sft/llava.json").display(),
        sft_images = f.join("sft").display(),
        mmbench = f.join("eval/mmbench/mmbench_dev_20230712.tsv").display(),
    );
    let p = root.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn summary(out: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap().as_array().unwrap().clone()
}

#[test]
fn stic_run_runs_every_stage_resumes_and_skips() {
    let root = std::env::temp_dir().join(format!("stic-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let imgs = images(&root);

    // Uninterrupted.
    let cfg = config(&root, "full", &imgs);
    let (ok, _, err) = stic(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{err}");
    let full = root.join("full");
    for f in [
        "1-prefs/prefs.jsonl",
        "1-prefs/stage.json",
        "2-dpo/adapter_model.safetensors",
        "2-dpo/adapter_config.json",
        "2-dpo/train_log.jsonl",
        "2-dpo/reference_logps.jsonl",
        "3-dif/dif.json",
        "4-sft/adapter_model.safetensors",
        "4-sft/train_log.jsonl",
        "5-eval/mmbench/predictions.jsonl",
        "5-eval/mmbench/metrics.json",
        "summary.json",
    ] {
        assert!(full.join(f).is_file(), "missing {f}");
    }
    let prefs = std::fs::read_to_string(full.join("1-prefs/prefs.jsonl")).unwrap();
    assert_eq!(prefs.lines().count(), 6, "one pair per readable image");
    // The corrupt JPEG was reported and recorded, not fatal.
    let skipped = std::fs::read_to_string(full.join("1-prefs/prefs.jsonl.skipped")).unwrap();
    assert!(skipped.contains("broken.jpg"), "{skipped}");
    let dif: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(full.join("3-dif/dif.json")).unwrap()).unwrap();
    assert_eq!(dif.as_array().unwrap().len(), 2);
    assert!(dif[0]["conversations"][0]["value"].as_str().unwrap().contains("Image description:"), "{dif}");
    let s = summary(&full);
    let names: Vec<&str> = s.iter().map(|v| v["stage"].as_str().unwrap()).collect();
    assert_eq!(names, ["1-prefs", "2-dpo", "3-dif", "4-sft", "5-eval/mmbench"]);
    assert!(s.iter().all(|v| v["status"] == "ran" && v["seconds"].as_f64().unwrap() >= 0.0));
    assert!(s[0]["tokens_per_s"].as_f64().unwrap() > 0.0 && s[1]["tokens_per_s"].as_f64().unwrap() > 0.0, "{s:?}");
    assert_eq!(s[0]["counts"]["written"], 6);
    assert_eq!(s[0]["counts"]["skipped"], 1);
    // The final adapter carries the projector trained in both stages, as STIC's defaults do.
    let cfg_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(full.join("4-sft/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["modules_to_save"][0], "multi_modal_projector");

    // Stopped after 2 pairs of stage 1 (as a crash), then restarted.
    let cfg = config(&root, "crashed", &imgs);
    let (ok, _, err) = stic(&["run", "--config", cfg.to_str().unwrap(), "--stop-after", "2"]);
    assert!(!ok, "a stopped run must fail");
    let crashed = root.join("crashed");
    assert!(!crashed.join("1-prefs/stage.json").exists() && !crashed.join("2-dpo").exists(), "{err}");
    assert_eq!(std::fs::read_to_string(crashed.join("1-prefs/prefs.jsonl")).unwrap().lines().count(), 2);
    let (ok, _, err) = stic(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{err}");
    let again = std::fs::read_to_string(crashed.join("1-prefs/prefs.jsonl")).unwrap();
    assert_eq!(again, prefs, "the resumed preference file differs from the uninterrupted one");
    let keys: std::collections::HashSet<String> =
        again.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["image"].as_str().unwrap().to_string()).collect();
    assert_eq!(keys.len(), 6, "duplicate pairs");
    for f in ["2-dpo/adapter_model.safetensors", "3-dif/dif.json", "4-sft/adapter_model.safetensors", "5-eval/mmbench/predictions.jsonl"] {
        assert_eq!(std::fs::read(full.join(f)).unwrap(), std::fs::read(crashed.join(f)).unwrap(), "{f} differs after the restart");
    }

    // Everything finished: a third invocation skips every stage.
    let (ok, _, err) = stic(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(summary(&crashed).iter().all(|v| v["status"] == "skipped"), "{:?}", summary(&crashed));
}

#[test]
fn the_example_config_parses_with_stic_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/stic.toml");
    let cfg = stic::run::RunConfig::from_file(&path).unwrap();
    assert_eq!(cfg.prefs.n, Some(6000));
    assert_eq!(cfg.dif.gen.n, Some(5000));
    assert_eq!(cfg.eval.len(), 3);
    let dpo = stic::run::stic_dpo_defaults(0, true);
    assert_eq!((dpo.lora.r, dpo.lora.alpha, dpo.lr, dpo.beta, dpo.sft_weight), (128, 256.0, 1e-7, 0.1, 1.0 / 1024.0));
    // An unknown key is refused with the file and the line.
    let bad = std::env::temp_dir().join(format!("stic-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, std::fs::read_to_string(&path).unwrap() + "learning_rate = 1\n").unwrap();
    let e = stic::run::RunConfig::from_file(&bad).unwrap_err().to_string();
    assert!(e.contains("learning_rate") && e.contains(&bad.display().to_string()) && e.contains("line"), "{e}");
}
