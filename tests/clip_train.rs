//! CLIP training gradients (issue #17 item 6) against torch autograd through transformers'
//! `CLIPModel` (scripts/gen_clip_grads.py, tests/fixtures/expected/clip_tiny_grads.safetensors):
//! the contrastive loss and the gradient of every parameter; the vision tower's backward from
//! d(hidden_states[-2]) (LLaVA's image features). Tolerance: docs/TOLERANCES.md.

mod common;

use common::*;
use stic::image::{load_image, preprocess_clip, ImageProcessorConfig};
use stic::model::clip_grad::{clip_loss_grads, vision_backward_hidden, vision_hidden, Grads};
use stic::model::clip_params::ClipParams;
use stic::tensor::Tensor;

const IMAGES: [&str; 3] = ["images/wide.jpg", "images/tall.png", "images/gray.png"];
/// max |ours - torch| / max |torch| per tensor (docs/TOLERANCES.md).
const TOL: f32 = 1e-4;

type Expected = std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>;

fn inputs(exp: &Expected) -> (ClipParams, Tensor, Vec<Vec<u32>>) {
    let dir = fixtures().join("clip_tiny");
    let params = ClipParams::load(&dir).unwrap();
    let proc = ImageProcessorConfig::from_file(&dir.join("preprocessor_config.json")).unwrap();
    let mut px = Vec::new();
    for f in IMAGES {
        let img = load_image(&fixtures().join(f)).unwrap();
        px.extend_from_slice(preprocess_clip(&img, &proc).unwrap().pixel_values.data());
    }
    let s = params.cfg.vision.image_size;
    let pixels = Tensor::new(px, &[IMAGES.len(), 3, s, s]).unwrap();
    let (shape, ids) = &exp["input_ids"];
    let lens = &exp["lengths"].1;
    let ids: Vec<Vec<u32>> = (0..shape[0]).map(|b| ids[b * shape[1]..][..lens[b] as usize].iter().map(|&v| v as u32).collect()).collect();
    (params, pixels, ids)
}

/// Compare every `prefix` tensor of `exp` with `ours` (the same names, no more); the worst error.
fn compare(exp: &Expected, prefix: &str, ours: &Grads) -> f32 {
    let mut names: Vec<&String> = exp.keys().filter(|k| k.starts_with(prefix)).collect();
    names.sort();
    let mut ours_names: Vec<String> = ours.keys().map(|k| format!("{prefix}{k}")).collect();
    ours_names.sort();
    assert_eq!(names.iter().map(|s| s.as_str()).collect::<Vec<_>>(), ours_names.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let mut worst = (0f32, String::new());
    let max_abs = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let global = exp.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| max_abs(&v.1)).fold(0f32, f32::max);
    for name in names {
        let want = &exp[name].1;
        let got = &ours[&name[prefix.len()..]];
        assert_eq!(got.len(), want.len(), "{name}");
        if name.ends_with("k_proj.bias") {
            // Exactly zero: a key bias adds q . b to every score of a row, which the softmax cancels.
            // Both sides hold only rounding noise; it must be noise on the scale of all gradients.
            assert!(max_abs(got) < 1e-6 * global && max_abs(want) < 1e-6 * global, "{name}: {} / {} vs {global}", max_abs(got), max_abs(want));
            continue;
        }
        let scale = max_abs(want);
        assert!(scale > 0.0, "{name}: torch's gradient is zero, the comparison would prove nothing");
        let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err < TOL, "{name}: max |ours - torch| / max |torch| = {err} (scale {scale})");
        if err > worst.0 {
            worst = (err, name.clone());
        }
    }
    println!("{prefix}*: worst relative error {:.2e} ({})", worst.0, worst.1);
    worst.0
}

#[test]
fn clip_loss_and_every_gradient_match_torch() {
    let exp = read_tensors("expected/clip_tiny_grads.safetensors");
    let (params, pixels, ids) = inputs(&exp);
    let (loss, grads) = clip_loss_grads(&params, &pixels, &ids).unwrap();
    let want = exp["loss"].1[0] as f64;
    assert!((loss - want).abs() < 1e-5 * (1.0 + want.abs()), "loss {loss} vs torch {want}");
    assert_eq!(grads.len(), params.tensors.len(), "a gradient for every parameter");
    compare(&exp, "grad.", &grads);
}

#[test]
fn vision_backward_from_hidden_states_matches_torch() {
    let exp = read_tensors("expected/clip_tiny_grads.safetensors");
    let (params, pixels, _) = inputs(&exp);
    let k = params.cfg.vision.num_hidden_layers - 1; // hidden_states[-2]
    let (h, tape) = vision_hidden(&params, &pixels, k).unwrap();
    let sumsq: f64 = h.iter().map(|&v| v as f64 * v as f64).sum();
    let want = exp["vision_sumsq"].1[0] as f64;
    assert!((sumsq - want).abs() < 1e-5 * want, "sum of squares {sumsq} vs torch {want}");
    let mut grads = Grads::new();
    vision_backward_hidden(&params, &tape, h.iter().map(|v| 2.0 * v).collect(), &mut grads);
    compare(&exp, "vgrad.", &grads);
}
