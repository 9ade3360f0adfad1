//! `--train ...,vision` (issue #17): the vision tower's gradients and one AdamW step against
//! torch autograd (expected/vision_{model}.safetensors, from scripts/gen_vision_grads.py), the
//! inference tower rebuilt from the trained weights, and the CLI end to end: the vision weights up
//! to the feature layer move (the last layer and post_layernorm do not), the model directory
//! loads, and resume is bit-identical.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;
use stic::generate::Pipeline;
use stic::image::{load_image, preprocess};
use stic::model::decoder::StepOpts;
use stic::optim::AdamWConfig;
use stic::train::{sft_grads_full, sft_ids, TrainAdamW};

/// Gradients vs torch, f32 on both sides: max |a - b| over the tensor's max |b|
/// (docs/TOLERANCES.md, "full-parameter gradients").
const GRAD_TOL: f32 = 1e-4;
/// Parameters after one AdamW step (lr 1e-3) vs torch: |a - b| <= tol (1 + |b|). Looser than the
/// decoder's 2e-6: Adam's first step is lr g / (|g| + 1e-8), and patch-embedding gradients of
/// near-constant (padded) pixels are small enough that f32 rounding in g moves that ratio.
const STEP_TOL: f32 = 1e-5;

fn turns() -> Vec<(String, String)> {
    vec![
        ("<image>\nWhat is shown in this image?".into(), "A red square and a blue circle.".into()),
        ("What colour is the circle?".into(), "It is blue.".into()),
    ]
}

fn grad_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max).max(f32::MIN_POSITIVE);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale
}

fn step_err(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0f32, f32::max)
}

fn vision_gradients_and_adamw_match_torch(fixture: &str) {
    let rel = format!("expected/vision_{fixture}.safetensors");
    let want = read_tensors(&rel);
    let bytes = std::fs::read(fixtures().join(&rel)).unwrap();
    let meta: HashMap<String, String> = safetensors::SafeTensors::read_metadata(&bytes).unwrap().1.metadata().clone().unwrap();
    let mut pipe = Pipeline::load(&fixtures().join(fixture)).unwrap();
    pipe.model.train_vision().unwrap();
    let (ids, _) = sft_ids(&pipe, &turns(), 1).unwrap();
    assert_eq!(ids, serde_json::from_str::<Vec<u32>>(&meta["sft_ids"]).unwrap());
    let img = load_image(&fixtures().join("images/wide.jpg")).unwrap();
    // Only the tower trains: no projector gradients, the decoder's not accumulated.
    let (loss, g, _) = sft_grads_full(&pipe, &turns(), std::slice::from_ref(&img), StepOpts::default(), None).unwrap();
    let want_loss: f64 = meta["sft_loss"].parse().unwrap();
    assert!((loss - want_loss).abs() <= 1e-4 * (1.0 + want_loss.abs()), "SFT loss {loss} vs {want_loss}");
    assert!(g.projector.is_empty() && g.lora.is_empty());
    let got: Vec<String> = g.vision.keys().map(|n| n.replacen("vision_model.", "vision.", 1)).collect();
    let mut expected: Vec<String> = want.keys().filter_map(|k| k.strip_prefix("sft.")).map(str::to_string).collect();
    expected.sort();
    assert_eq!(got, expected, "the parameters with a gradient differ from torch's");
    // The last layer and post_layernorm: unreached (torch's grad None), none here either.
    let unreached: Vec<String> = serde_json::from_str(&meta["unreached"]).unwrap();
    assert!(unreached.iter().any(|n| n.contains("layers.2.")) && unreached.iter().any(|n| n.contains("post_layernorm")));
    let max_abs = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let global = g.vision.values().map(|v| max_abs(v)).fold(0f32, f32::max);
    let mut worst = 0f32;
    for (name, v) in &g.vision {
        let key = format!("sft.{}", name.replacen("vision_model.", "vision.", 1));
        if name.ends_with("k_proj.bias") {
            // Exactly zero (the softmax cancels q . b on every score of a row): rounding noise on
            // both sides, which must be small on the scale of all the gradients.
            assert!(max_abs(v) < 1e-6 * global && max_abs(&want[&key].1) < 1e-6 * global, "{key}: {} / {} vs {global}", max_abs(v), max_abs(&want[&key].1));
            continue;
        }
        let e = grad_err(v, &want[&key].1);
        assert!(e < GRAD_TOL, "{key}: max error {e} of the tensor's max |grad|");
        worst = worst.max(e);
    }
    // HF's decay grouping, then one AdamW step.
    let no_decay: Vec<String> = serde_json::from_str(&meta["no_decay"]).unwrap();
    for name in g.vision.keys() {
        let rel = name.strip_prefix("vision_model.").unwrap();
        assert_eq!(!stic::train::full::hf_decays(&format!("model.vision_tower.{rel}")), no_decay.contains(&format!("vision.{rel}")), "{name}");
    }
    let mut opt = TrainAdamW::new(AdamWConfig { lr: 1e-3, weight_decay: 0.1, ..Default::default() });
    opt.step(&mut pipe, &g, 1e-3, 1e-3).unwrap();
    let mut e_step = 0f32;
    for (name, t) in &pipe.model.vision_params().unwrap().tensors {
        let key = format!("adamw.{}", name.replacen("vision_model.", "vision.", 1));
        if name.ends_with("k_proj.bias") {
            // Adam normalises its noise gradient to a step of about lr in either direction.
            assert!(step_err(t.data(), &want[&key].1) < 2.5e-3, "{key}");
            continue;
        }
        let e = step_err(t.data(), &want[&key].1);
        assert!(e < STEP_TOL, "{key}: max error {e}");
        e_step = e_step.max(e);
    }
    // The inference tower was rebuilt from the stepped weights: its features are the training
    // path's.
    let image = preprocess(&img, &pipe.processor).unwrap();
    let (train_feats, _) = pipe.model.image_features_train(&image).unwrap();
    let feats = pipe.model.image_features(&image).unwrap();
    assert!(max_rel_err(feats.data(), train_feats.data()) < 1e-5, "inference tower out of date: {}", max_rel_err(feats.data(), train_feats.data()));
    eprintln!("{fixture}: worst vision gradient error {worst:e} (of max |grad|); AdamW step {e_step:e}");
}

#[test]
fn llava15_vision_gradients_and_adamw_match_torch() {
    vision_gradients_and_adamw_match_torch("llava15_tiny");
}

#[test]
fn llava_next_vision_gradients_and_adamw_match_torch() {
    vision_gradients_and_adamw_match_torch("llava_next_tiny");
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stic-vision-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn names_shapes(dir: &Path) -> Vec<(String, Vec<usize>)> {
    let ws = stic::weights::WeightStore::open(dir).unwrap();
    ws.names().map(|n| (n.to_string(), ws.shape_of(n).unwrap())).collect()
}

#[test]
fn train_sft_vision_moves_the_tower_and_resumes_bit_identically() {
    let model = fixtures().join("llava15_tiny");
    let (a, b) = (tmp("a"), tmp("b"));
    let common = ["--train", "decoder,projector,vision", "--max-steps", "4", "--save-every", "2", "--weight-decay", "0.1", "--grad-accum", "2", "--lr", "1e-3"];
    let (ok, err) = train_sft_fixture(&model, &a, &common);
    assert!(ok, "{err}");
    assert_eq!(names_shapes(&a), names_shapes(&model));
    // Every weight moved except the vision layers after the feature layer (-2: layer 2 of 3)
    // and post_layernorm.
    let (base, got) = (stic::weights::WeightStore::open(&model).unwrap(), stic::weights::WeightStore::open(&a).unwrap());
    let mut moved_vision = 0;
    for name in base.names() {
        let shape = base.shape_of(name).unwrap();
        let moved = base.get(name, &shape).unwrap().data() != got.get(name, &shape).unwrap().data();
        let frozen = name.contains("encoder.layers.2.") || name.contains("post_layernorm") || name.ends_with("position_ids");
        assert_eq!(moved, !frozen, "{name}: moved {moved}");
        moved_vision += (moved && name.contains("vision_tower")) as usize;
    }
    assert_eq!(moved_vision, 37);
    // The written model loads and generates; its tower is the trained one.
    let image = fixtures().join("images/wide.jpg");
    let (ok, so, err) = stic(&["generate", "--model", s(&a), "--image", s(&image), "--prompt", "What is shown?", "--max-new-tokens", "3", "--json"]);
    assert!(ok && so.contains("output_ids"), "{err}");
    // Crash after step 2, resume: the same losses and bits.
    let mut first: Vec<&str> = common.to_vec();
    first.extend(["--stop-after", "2"]);
    let (ok, err) = train_sft_fixture(&model, &b, &first);
    assert!(ok, "{err}");
    let mut again: Vec<&str> = common.to_vec();
    again.push("--resume");
    let (ok, err) = train_sft_fixture(&model, &b, &again);
    assert!(ok, "{err}");
    let log = |d: &Path| std::fs::read_to_string(d.join("train_log.jsonl")).unwrap();
    assert_eq!(log(&a).lines().count(), 4);
    for f in ["model.safetensors", "checkpoint/model.safetensors", "checkpoint/optimizer.safetensors"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs after resuming");
    }
}

#[test]
fn train_vision_alone_keeps_decoder_and_projector() {
    let model = fixtures().join("llava15_tiny");
    let out = tmp("alone");
    let (ok, err) = train_sft_fixture(&model, &out, &["--train", "vision", "--max-steps", "1", "--lr", "1e-3"]);
    assert!(ok, "{err}");
    let (base, got) = (stic::weights::WeightStore::open(&model).unwrap(), stic::weights::WeightStore::open(&out).unwrap());
    for name in base.names() {
        let shape = base.shape_of(name).unwrap();
        let moved = base.get(name, &shape).unwrap().data() != got.get(name, &shape).unwrap().data();
        let trains = name.contains("vision_tower") && !name.contains("encoder.layers.2.") && !name.contains("post_layernorm");
        assert_eq!(moved, trains, "{name}");
    }
    // DPO (packed pairs) trains the tower too.
    let prefs = fixtures().join("prefs/prefs.jsonl");
    let dpo = tmp("dpo");
    let (ok, _, err) = stic(&["train-dpo", "--model", s(&model), "--data", s(&prefs), "--out", s(&dpo), "--train", "projector,vision", "--max-steps", "2", "--lr", "1e-3", "--quiet"]);
    assert!(ok, "{err}");
    let got = stic::weights::WeightStore::open(&dpo).unwrap();
    let name = "vision_tower.embeddings.patch_embedding.weight";
    let shape = base.shape_of(name).unwrap();
    assert_ne!(base.get(name, &shape).unwrap().data(), got.get(name, &shape).unwrap().data());
}
