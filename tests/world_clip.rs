//! `stic world train-clip` (issue #17 item 6): on a tiny world it runs, the loss falls, the same
//! seed gives the same weights, a run stopped after an epoch resumes to the same weights, and the
//! output is a CLIP folder that `model::ClipModel` and `stic clip-score` load; a CLIP trained a little
//! longer retrieves held-out captions well above chance.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stic-world-clip-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn make_world(dir: &Path, n: usize, seed: u64) {
    let (ok, _, err) = stic(&["world", "make", "--out", dir.to_str().unwrap(), "--n", &n.to_string(), "--seed", &seed.to_string()]);
    assert!(ok, "world make: {err}");
}

fn train(world: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["world", "train-clip", "--data", world.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    stic(&args)
}

fn losses(out: &Path) -> Vec<(usize, f64)> {
    std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["epoch"].as_u64().unwrap() as usize, v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn train_clip_learns_is_deterministic_resumes_and_loads() {
    let world = tmp("w64");
    make_world(&world, 64, 0);
    let small = ["--epochs", "2", "--batch", "8", "--seed", "0"];
    let (a, b, c, d) = (tmp("a"), tmp("b"), tmp("c"), tmp("d"));
    let (ok, _, err) = train(&world, &a, &small);
    assert!(ok, "train-clip: {err}");
    // 51 train pairs, batches of 8: 6 steps per epoch; the loss falls from the first epoch to the second
    let log = losses(&a);
    assert_eq!(log.len(), 12);
    let mean = |e: usize| log.iter().filter(|l| l.0 == e).map(|l| l.1).sum::<f64>() / 6.0;
    assert!(mean(1) < mean(0) - 0.1, "epoch losses {} -> {}", mean(0), mean(1));
    // the same seed, the same weights; another seed, others
    assert!(train(&world, &b, &small).0);
    let weights = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(weights(&a), weights(&b), "same seed, different weights");
    assert!(train(&world, &c, &["--epochs", "2", "--batch", "8", "--seed", "1"]).0);
    assert_ne!(weights(&a), weights(&c));
    // stopped after epoch 1 (as a kill right after the checkpoint), then run again: the same model
    let (ok, _, err) = train(&world, &d, &[&small[..], &["--stop-after-epoch", "1"]].concat());
    assert!(!ok && err.contains("stopped after epoch 1"), "{err}");
    assert!(!d.join("model.safetensors").exists() && d.join("checkpoint/state.json").is_file());
    let (ok, _, err) = train(&world, &d, &small);
    assert!(ok, "resume: {err}");
    assert_eq!(weights(&a), weights(&d), "resumed run differs from the unbroken one");
    assert_eq!(losses(&a), losses(&d));
    // an HF CLIPModel folder: the scorer loads it and scores an image of the world
    let m = stic::model::ClipModel::load(&a).unwrap();
    assert_eq!(m.cfg.vision.image_size, 64);
    let params = stic::model::clip_params::ClipParams::load(&a).unwrap();
    assert_eq!(params.get("logit_scale").data()[0], m.logit_scale);
    let img = world.join("images/000000.png");
    let (ok, out, err) = stic(&["clip-score", "--clip", a.to_str().unwrap(), "--image", img.to_str().unwrap(), "--text", "a red circle", "--text", "two stars", "--json"]);
    assert!(ok, "clip-score: {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["scores"].as_array().map(Vec::len), Some(2), "{out}");
    for dir in [world, a, b, c, d] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn trained_clip_retrieves_heldout_captions_above_chance() {
    // 200 images: 160 train pairs, 40 held out (chance: top-1 1/40, top-5 5/40). Measured with
    // seeds 0, 1, 2 (10 epochs, batch 32): top-1 0.125, 0.10, 0.125; top-5 0.425, 0.30, 0.55.
    let world = tmp("w200");
    make_world(&world, 200, 1);
    let out = tmp("r200");
    let (ok, json, err) = train(&world, &out, &["--epochs", "10", "--batch", "32", "--seed", "0", "--eval"]);
    assert!(ok, "train-clip: {err}");
    let r: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(r["images"], 40);
    let (top1, top5) = (r["top1"].as_f64().unwrap(), r["top5"].as_f64().unwrap());
    assert!(top1 >= 3.0 * r["chance_top1"].as_f64().unwrap() && top5 >= 2.0 * r["chance_top5"].as_f64().unwrap(), "{r}");
    for dir in [world, out] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn hard_negatives_make_the_loss_harder_and_train() {
    let world = tmp("hard");
    make_world(&world, 64, 2);
    let small = ["--epochs", "2", "--batch", "8", "--seed", "0"];
    let (plain, hard) = (tmp("plain"), tmp("hardneg"));
    assert!(train(&world, &plain, &small).0);
    let (ok, _, err) = train(&world, &hard, &[&small[..], &["--hard-negatives"]].concat());
    assert!(ok, "{err}");
    let (p, h) = (losses(&plain), losses(&hard));
    assert_eq!(p.len(), h.len());
    // The first step (same initial weights and batch): 8 more negative texts per image raise the loss.
    assert!(h[0].1 > p[0].1 + 0.1, "first loss: plain {} hard {}", p[0].1, h[0].1);
    let mean = |l: &[(usize, f64)], e: usize| l.iter().filter(|x| x.0 == e).map(|x| x.1).sum::<f64>() / 6.0;
    assert!(mean(&h, 1) < mean(&h, 0), "with hard negatives the loss falls: {:?}", h);
    std::fs::remove_dir_all(&world).ok();
    for d in [plain, hard] {
        std::fs::remove_dir_all(&d).ok();
    }
}
