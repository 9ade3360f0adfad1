//! STIC data stages (issue #7): the image corruptions (against Pillow, determinism, pixel
//! statistics), `stic build-prefs` (output readable by train-dpo, a corrupt image skipped, resume
//! after a kill gives the uninterrupted file) and `stic build-dif` (LLaVA JSON for train-sft, resume).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use common::*;
use stic::image::corrupt::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, apply_jitter, low_resolution, Corruption, JitterParams, STIC_JITTER,
};
use stic::image::{resize_pil, RgbImage};
use stic::rng::Rng;

// ---------------------------------------------------------------- corruptions

fn refs() -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    read_tensors("stic/corrupt_refs.safetensors")
}

fn to_image((shape, data): &(Vec<usize>, Vec<f32>)) -> RgbImage {
    RgbImage::new(shape[1], shape[0], data.iter().map(|&v| v as u8).collect()).unwrap()
}

fn assert_same(name: &str, got: &RgbImage, want: &RgbImage) {
    assert_eq!((got.width, got.height), (want.width, want.height), "{name}: size");
    let diff = got.data.iter().zip(&want.data).filter(|(a, b)| a != b).count();
    let maxd = got.data.iter().zip(&want.data).map(|(&a, &b)| (a as i32 - b as i32).abs()).max().unwrap_or(0);
    assert_eq!(diff, 0, "{name}: {diff} bytes differ from Pillow (max difference {maxd})");
}

#[test]
fn adjustments_match_pillow_bit_for_bit() {
    let r = refs();
    let input = to_image(&r["input"]);
    let mut n = 0;
    for (name, t) in &r {
        let Some((op, f)) = name.split_once('/') else { continue };
        let got = match op {
            "brightness" => adjust_brightness(&input, f.parse().unwrap()),
            "contrast" => adjust_contrast(&input, f.parse().unwrap()),
            "saturation" => adjust_saturation(&input, f.parse().unwrap()),
            "hue" => adjust_hue(&input, f.parse().unwrap()),
            "lowres" => low_resolution(&input, f.parse().unwrap()),
            "jitter" => {
                // The composed cases of scripts/gen_stic_corrupt_refs.py.
                let p = match f {
                    "hue_then_brightness" => JitterParams { order: [3, 0, 1, 2], brightness: Some(1.31), contrast: None, saturation: None, hue: Some(-0.17) },
                    "brightness_then_hue" => JitterParams { order: [2, 0, 3, 1], brightness: Some(0.62), contrast: None, saturation: None, hue: Some(0.23) },
                    "all_four" => JitterParams { order: [2, 3, 1, 0], brightness: Some(1.2), contrast: Some(0.8), saturation: Some(1.4), hue: Some(0.11) },
                    other => panic!("unknown case {other}"),
                };
                apply_jitter(&input, &p)
            }
            other => panic!("unknown op {other}"),
        };
        assert_same(name, &got, &to_image(t));
        n += 1;
    }
    assert_eq!(n, 23);
}

/// A smooth test image with detail: gradients plus a checkerboard.
fn test_image() -> RgbImage {
    let (w, h) = (64, 48);
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let check = if (x / 2 + y / 2) % 2 == 0 { 30 } else { 0 };
            data.extend([(40 + x * 2 + check) as u8, (60 + y * 2 + check) as u8, (90 + (x + y) + check) as u8]);
        }
    }
    RgbImage::new(w, h, data).unwrap()
}

fn mean(v: impl Iterator<Item = f64> + Clone) -> f64 {
    let n = v.clone().count() as f64;
    v.sum::<f64>() / n
}

fn std(v: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = mean(v.clone());
    mean(v.map(|x| (x - m) * (x - m))).sqrt()
}

fn bytes(img: &RgbImage) -> impl Iterator<Item = f64> + Clone + '_ {
    img.data.iter().map(|&b| b as f64)
}

/// Mean over pixels of |channel - pixel mean|: how coloured the image is.
fn spread(img: &RgbImage) -> f64 {
    mean(img.data.chunks_exact(3).map(|p| {
        let m = (p[0] as f64 + p[1] as f64 + p[2] as f64) / 3.0;
        p.iter().map(|&c| (c as f64 - m).abs()).sum::<f64>() / 3.0
    }))
}

/// Mean squared difference between horizontal and vertical neighbours.
fn high_freq(img: &RgbImage) -> f64 {
    let (w, h) = (img.width, img.height);
    let px = |x: usize, y: usize, c: usize| img.data[(y * w + x) * 3 + c] as f64;
    let mut s = 0.0;
    let mut n = 0.0;
    for y in 0..h - 1 {
        for x in 0..w - 1 {
            for c in 0..3 {
                s += (px(x + 1, y, c) - px(x, y, c)).powi(2) + (px(x, y + 1, c) - px(x, y, c)).powi(2);
                n += 2.0;
            }
        }
    }
    s / n
}

#[test]
fn truncated_jpegs_are_errors_as_in_pil() {
    let wide = std::fs::read(fixtures().join("images/wide.jpg")).unwrap();
    assert!(stic::image::decode_image(&wide, Path::new("wide.jpg")).is_ok());
    // Cut in the scan data, or only the EOI marker missing: PIL says "image file is truncated".
    for cut in [wide.len() / 3, wide.len() - 2] {
        let e = stic::image::decode_image(&wide[..cut], Path::new("cut.jpg")).unwrap_err().to_string();
        assert!(e.contains("cut.jpg") && e.contains("truncated"), "{e}");
    }
}

#[test]
fn corruptions_are_deterministic_for_a_seed() {
    let img = test_image();
    let draw = |seed: u64| {
        let mut rng = Rng::new(seed);
        (0..8).map(|_| Corruption::sample_stic(&mut rng)).collect::<Vec<_>>()
    };
    assert_eq!(draw(5), draw(5));
    assert_ne!(draw(5), draw(6));
    let a = draw(11);
    assert!(a.iter().any(|c| matches!(c, Corruption::LowResolution { size: 20 })), "{a:?}");
    assert!(a.iter().any(|c| matches!(c, Corruption::ColorJitter(_))), "{a:?}");
    for c in &a {
        assert_eq!(c.apply(&img), c.apply(&img));
    }
    // Different jitter draws give different images.
    let j1 = STIC_JITTER.sample(&mut Rng::new(1));
    let j2 = STIC_JITTER.sample(&mut Rng::new(2));
    assert_ne!(j1, j2);
    assert_ne!(apply_jitter(&img, &j1), apply_jitter(&img, &j2));
}

#[test]
fn brightness_scales_the_mean() {
    let img = test_image();
    let m0 = mean(bytes(&img));
    for f in [0.5f32, 0.8, 1.2] {
        let m = mean(bytes(&adjust_brightness(&img, f)));
        // Truncation loses half a level on average.
        assert!((m - (f as f64 * m0 - 0.5)).abs() < 0.6, "factor {f}: mean {m} vs {m0}");
    }
    assert_eq!(adjust_brightness(&img, 1.0), img);
}

#[test]
fn contrast_scales_the_spread_around_the_mean() {
    let img = test_image();
    let s0 = std(bytes(&img));
    for f in [0.5f32, 1.3] {
        let s = std(bytes(&adjust_contrast(&img, f)));
        assert!((s / s0 - f as f64).abs() < 0.03, "factor {f}: std {s} vs {s0}");
    }
    let flat = adjust_contrast(&img, 0.0);
    assert!(flat.data.iter().all(|&b| b == flat.data[0]));
}

#[test]
fn saturation_scales_the_channel_spread() {
    let img = test_image();
    let s0 = spread(&img);
    for f in [0.0f32, 0.5, 1.5] {
        let s = spread(&adjust_saturation(&img, f));
        assert!((s - f as f64 * s0).abs() < 0.6 + 0.02 * s0, "factor {f}: spread {s} vs {s0}");
    }
}

#[test]
fn hue_rotates_colours_and_keeps_value() {
    let img = test_image();
    let out = adjust_hue(&img, 0.3);
    assert_ne!(out, img);
    // HSV value (max channel) is kept up to rounding; the mean colour changes.
    for (p, q) in img.data.chunks_exact(3).zip(out.data.chunks_exact(3)) {
        let (v0, v1) = (*p.iter().max().unwrap() as i32, *q.iter().max().unwrap() as i32);
        assert!((v0 - v1).abs() <= 1, "{p:?} -> {q:?}");
    }
    let channel_mean = |im: &RgbImage, c: usize| mean(im.data.chunks_exact(3).map(|p| p[c] as f64));
    assert!((0..3).any(|c| (channel_mean(&img, c) - channel_mean(&out, c)).abs() > 10.0));
    // Greys have no hue.
    let grey = RgbImage::new(2, 1, vec![7, 7, 7, 200, 200, 200]).unwrap();
    assert_eq!(adjust_hue(&grey, -0.3), grey);
}

#[test]
fn low_resolution_is_a_bilinear_downscale_to_20_pixels() {
    let img = test_image();
    let small = low_resolution(&img, 20);
    // Shorter side 20, longer int(20 * 64 / 48) = 26.
    assert_eq!((small.width, small.height), (26, 20));
    assert_eq!(small, resize_pil(&img, 26, 20, 2));
    // Once the model's processor scales it back up, the fine detail is gone.
    let up = resize_pil(&small, 64, 48, 2);
    assert!(high_freq(&up) < 0.25 * high_freq(&img), "{} vs {}", high_freq(&up), high_freq(&img));
    // Already 20 on the short side: unchanged.
    assert_eq!(low_resolution(&small, 20), small);
}

// ---------------------------------------------------------------- build-prefs / build-dif


fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stic-data-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Four fixture images (one in a subfolder), a JPEG of garbage and a truncated JPEG.
fn image_folder(root: &Path) -> PathBuf {
    let dir = root.join("images");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let img = fixtures().join("images");
    for (src, dst) in [("wide.jpg", "a_wide.jpg"), ("tall.png", "b_tall.png"), ("gray.png", "c_gray.png"), ("wide.jpg", "sub/d_wide.jpg")] {
        std::fs::copy(img.join(src), dir.join(dst)).unwrap();
    }
    // A JPEG header followed by garbage.
    let mut bad = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    bad.extend((0..300u32).map(|i| (i * 37 % 251) as u8));
    std::fs::write(dir.join("broken.jpg"), bad).unwrap();
    // A JPEG cut short (PIL: "image file is truncated").
    let wide = std::fs::read(img.join("wide.jpg")).unwrap();
    std::fs::write(dir.join("e_trunc.jpg"), &wide[..wide.len() / 3]).unwrap();
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    dir
}

fn model() -> String {
    fixtures().join("llava_next_tiny").to_str().unwrap().to_string()
}

fn build_prefs(images: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "build-prefs", "--model", &model(), "--images", images.to_str().unwrap(), "--out", out.to_str().unwrap(),
        "--seed", "3", "--batch-size", "3", "--max-new-tokens", "6", "--quiet",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    let (ok, _, err) = stic(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    (ok, err)
}

fn lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn build_prefs_writes_pairs_and_skips_a_corrupt_image() {
    let root = scratch("prefs");
    let images = image_folder(&root);
    let out = root.join("out").join("prefs.jsonl");
    let (ok, err) = build_prefs(&images, &out, &[]);
    assert!(ok, "{err}");
    assert!(err.contains("broken.jpg") && err.contains("e_trunc.jpg"), "the corrupt images are reported: {err}");
    assert!(err.contains("images/s"), "{err}");
    let recs = lines(&out);
    assert_eq!(recs.len(), 4, "{recs:?}");
    let skipped = lines(&root.join("out").join("prefs.jsonl.skipped"));
    assert_eq!(skipped.len(), 2);
    assert_eq!(skipped[0]["image"], "../images/broken.jpg");
    assert_eq!(skipped[1]["image"], "../images/e_trunc.jpg");
    assert!(skipped[1]["error"].as_str().unwrap().contains("truncated"), "{}", skipped[1]);
    let prompts = &stic::stic::prompts::DESCRIPTION_PROMPTS;
    let hallu = &stic::stic::prompts::HALLUCINATION_PROMPTS;
    for r in &recs {
        assert!(prompts.contains(&r["prompt"].as_str().unwrap()), "{r}");
        assert!(!r["chosen"].as_str().unwrap().is_empty() && !r["rejected"].as_str().unwrap().is_empty());
        match r["rejected_kind"].as_str().unwrap() {
            "hallu_prompt" => assert!(hallu.contains(&r["hallu_prompt"].as_str().unwrap()), "{r}"),
            "low_resolution" => assert_eq!(r["corruption"], serde_json::json!({"kind": "low_resolution", "size": 20})),
            "color_jitter" => assert_eq!(r["corruption"]["kind"], "color_jitter"),
            k => panic!("rejected_kind {k}"),
        }
    }
    // train-dpo's reader takes it, and the images resolve.
    let pairs = stic::train::data::read_prefs(&out).unwrap();
    assert_eq!(pairs.len(), 4);
    for (path, _) in &pairs {
        assert!(path.exists(), "{}", path.display());
    }
    // ... and train-dpo trains on it.
    let run = root.join("dpo");
    let (ok, _, err) = stic(&["train-dpo", "--model", &model(), "--data", out.to_str().unwrap(), "--out", run.to_str().unwrap(), "--max-steps", "1", "--lora-r", "2"]);
    assert!(ok, "{err}");
    assert!(run.join("adapter_model.safetensors").exists());
    let names: Vec<&str> = recs.iter().map(|r| r["image"].as_str().unwrap()).collect();
    assert_eq!(names, ["../images/a_wide.jpg", "../images/b_tall.png", "../images/c_gray.png", "../images/sub/d_wide.jpg"]);
    // Seeded: the same command again in a fresh file gives the same bytes.
    let again = root.join("out2").join("prefs.jsonl");
    let (ok, err) = build_prefs(&images, &again, &[]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), std::fs::read_to_string(&again).unwrap());
    // --n 2 takes two of the four readable-or-not images.
    let two = root.join("out3").join("prefs.jsonl");
    let (ok, err) = build_prefs(&images, &two, &["--n", "2"]);
    assert!(ok, "{err}");
    assert!(lines(&two).len() <= 2);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn build_prefs_killed_and_restarted_gives_the_same_file() {
    let root = scratch("resume");
    let images = image_folder(&root);
    let full = root.join("full").join("prefs.jsonl");
    let (ok, err) = build_prefs(&images, &full, &[]);
    assert!(ok, "{err}");

    // Sorted: a_wide b_tall broken | c_gray e_trunc sub/d_wide (batches of three). Killed after
    // three pairs, inside the second batch (e_trunc not yet recorded, d_wide not yet written),
    // and mid-way through writing a line.
    let part = root.join("part").join("prefs.jsonl");
    let (ok, err) = build_prefs(&images, &part, &["--stop-after", "3"]);
    assert!(ok, "{err}");
    assert_eq!(lines(&part).len(), 3);
    assert_eq!(lines(&root.join("part").join("prefs.jsonl.skipped")).len(), 1);
    let mut torn = std::fs::read(&part).unwrap();
    torn.extend_from_slice(b"{\"image\": \"../images/sub/d_wi");
    std::fs::write(&part, torn).unwrap();
    let (ok, err) = build_prefs(&images, &part, &[]);
    assert!(ok, "{err}");
    assert!(err.contains("4 already done"), "3 pairs and 1 skip: {err}");

    let (a, b) = (std::fs::read_to_string(&full).unwrap(), std::fs::read_to_string(&part).unwrap());
    assert_eq!(a, b, "the resumed file differs from the uninterrupted one");
    let recs = lines(&part);
    let unique: HashSet<&str> = recs.iter().map(|r| r["image"].as_str().unwrap()).collect();
    assert_eq!(unique.len(), recs.len(), "duplicates");
    // A finished file is left alone.
    let (ok, err) = build_prefs(&images, &part, &[]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&part).unwrap(), a);
    assert_eq!(lines(&root.join("part").join("prefs.jsonl.skipped")).len(), 2, "each corrupt image is recorded once");
    let _ = std::fs::remove_dir_all(&root);
}

fn sft_json(root: &Path) -> PathBuf {
    let data = serde_json::json!([
        {"id": "e0", "image": "a_wide.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "Shapes."},
            {"from": "human", "value": "Which colour?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "e1", "conversations": [
            {"from": "human", "value": "Text only?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "e2", "image": "b_tall.png", "conversations": [
            {"from": "human", "value": "What is this?\n<image>"}, {"from": "gpt", "value": "Stripes."}]},
        {"id": "e3", "image": "broken.jpg", "conversations": [
            {"from": "human", "value": "<image>\nAnything?"}, {"from": "gpt", "value": "No."}]},
        {"id": "e4", "image": "sub/d_wide.jpg", "conversations": [
            {"from": "human", "value": "Describe it."}, {"from": "gpt", "value": "A picture."}]}
    ]);
    let p = root.join("llava.json");
    std::fs::write(&p, serde_json::to_string_pretty(&data).unwrap()).unwrap();
    p
}

fn build_dif(sft: &Path, images: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let adapter = fixtures().join("adapter_next_tiny");
    let mut args: Vec<String> = [
        "build-dif", "--model", &model(), "--adapter", adapter.to_str().unwrap(), "--sft", sft.to_str().unwrap(),
        "--images", images.to_str().unwrap(), "--out", out.to_str().unwrap(), "--n", "10", "--seed", "5",
        "--batch-size", "2", "--max-new-tokens", "6", "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let (ok, _, err) = stic(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    (ok, err)
}

#[test]
fn build_dif_writes_llava_json_and_resumes() {
    let root = scratch("dif");
    let images = image_folder(&root);
    let sft = sft_json(&root);
    let out = root.join("full").join("dif.json");
    let (ok, err) = build_dif(&sft, &images, &out, &[]);
    assert!(ok, "{err}");
    assert!(err.contains("broken.jpg"), "{err}");
    let v: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let ids: Vec<&str> = v.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["e0", "e2", "e4"], "the text-only example is not sampled, the broken image is skipped");
    let descs = lines(&stic::stic::jsonl::sidecar(&out, ".descriptions.jsonl"));
    assert_eq!(descs.len(), 3);
    for (e, d) in v.iter().zip(&descs) {
        let first = e["conversations"][0]["value"].as_str().unwrap();
        let desc = d["description"].as_str().unwrap();
        assert!(stic::stic::prompts::STAGE2_DESCRIPTION_PROMPTS.contains(&d["prompt"].as_str().unwrap()));
        assert!(first.matches("<image>").count() <= 1, "{first}");
        assert!(first.contains(&format!("Image description:\n{desc}\n\n")), "{first}");
    }
    let turn = |i: usize| v[i]["conversations"][0]["value"].as_str().unwrap().to_string();
    assert!(turn(0).starts_with("<image>\nImage description:\n") && turn(0).ends_with("\n\nWhat is shown?"), "{}", turn(0));
    assert!(turn(1).starts_with("Image description:\n") && turn(1).ends_with("\n\nWhat is this?\n<image>"), "{}", turn(1));
    assert!(turn(2).starts_with("Image description:\n") && turn(2).ends_with("\n\nDescribe it."), "{}", turn(2));
    // Other turns are kept.
    assert_eq!(v[0]["conversations"][3]["value"], "Red.");
    // train-sft's reader takes it, and the images resolve against the image folder.
    let ex = stic::train::data::read_llava_json(&out, &images).unwrap();
    assert_eq!(ex.len(), 3);
    assert!(ex.iter().all(|(p, _)| p.as_ref().unwrap().exists()));
    let run = root.join("sft");
    let (ok, _, err) = stic(&[
        "train-sft", "--model", &model(), "--data", out.to_str().unwrap(), "--image-folder", images.to_str().unwrap(),
        "--out", run.to_str().unwrap(), "--max-steps", "1", "--lora-r", "2",
    ]);
    assert!(ok, "{err}");
    assert!(run.join("adapter_model.safetensors").exists());

    // Stopped after one description, then resumed: the same JSON.
    let part = root.join("part").join("dif.json");
    let (ok, err) = build_dif(&sft, &images, &part, &["--stop-after", "1"]);
    assert!(ok, "{err}");
    assert!(!part.exists(), "no JSON before the end");
    let (ok, err) = build_dif(&sft, &images, &part, &[]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), std::fs::read_to_string(&part).unwrap());
    let _ = std::fs::remove_dir_all(&root);
}
