//! CLIP as a scorer (issue #16 item 1) against transformers: the CLIP BPE tokenizer built from
//! open_clip's merges (`tests/fixtures/clip_tokenizer`, scripts/make_clip_tokenizer.py) and a tiny
//! random `CLIPModel` (`tests/fixtures/clip_tiny`, scripts/gen_clip_fixtures.py): image and text
//! embeddings and scores within 1e-4 (docs/TOLERANCES.md), the `stic clip-score` CLI, batching and
//! bad input.

mod common;

use common::*;
use stic::image::load_image;
use stic::model::clip_model::{ClipModel, ClipTokenizer};

fn texts(exp: &serde_json::Value) -> Vec<String> {
    exp["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    floats(v).into_iter().map(|x| x as f32).collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn tokenizer_matches_transformers_clip_tokenizer_fast() {
    let exp = read_json("clip_tokenizer/expected.json");
    let path = fixtures().join("clip_tokenizer/tokenizer.json");
    let raw = stic::text::Tokenizer::from_file(&path).unwrap();
    let tok = ClipTokenizer::from_file(&path, exp["max_length"].as_u64().unwrap() as usize).unwrap();
    let cases = exp["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut truncated = 0;
    for c in cases {
        let text = c["text"].as_str().unwrap();
        assert_eq!(raw.encode(text, true).unwrap(), ids(&c["ids"]), "untruncated ids of {text:?}");
        let ours = tok.encode(&[text.to_string()]).unwrap().remove(0);
        assert_eq!(ours, ids(&c["ids_truncated"]), "truncated ids of {text:?}");
        if c["ids"].as_array().unwrap().len() > 77 {
            truncated += 1;
            assert_eq!(ours.len(), 77);
            assert_eq!(*ours.last().unwrap(), 49407, "EOT stays last");
        }
    }
    assert!(truncated >= 2, "the cases must include texts over 77 tokens");
    assert_eq!(raw.token_id("<|startoftext|>"), Some(49406));
    assert_eq!(raw.token_id("<|endoftext|>"), Some(49407));
}

#[test]
fn tiny_clip_matches_transformers() {
    let exp = read_json("clip_tiny/expected.json");
    let model = ClipModel::load(&fixtures().join("clip_tiny")).unwrap();
    let texts = texts(&exp);
    assert!((model.logit_scale - exp["logit_scale"].as_f64().unwrap() as f32).abs() < 1e-6);
    // token ids (one text truncated to 77)
    let got_ids = model.tokenizer().encode(&texts).unwrap();
    let want_ids: Vec<Vec<u32>> = exp["input_ids"].as_array().unwrap().iter().map(ids).collect();
    assert_eq!(got_ids, want_ids);
    assert!(want_ids.iter().any(|i| i.len() == 77));
    // text embeddings, all texts in one batch
    let te = model.text_embeds(&texts).unwrap();
    let want_te: Vec<f32> = exp["text_embeds"].as_array().unwrap().iter().flat_map(f32s).collect();
    assert_eq!(te.shape(), &[texts.len(), 24]);
    let e = max_abs(te.data(), &want_te);
    assert!(e < 1e-4, "text_embeds: max abs err {e}");
    for im in exp["images"].as_array().unwrap() {
        let img = load_image(&fixtures().join(im["file"].as_str().unwrap())).unwrap();
        let ie = model.image_embeds(&img).unwrap();
        let e = max_abs(ie.data(), &f32s(&im["image_embeds"]));
        assert!(e < 1e-4, "{}: image_embeds: max abs err {e}", im["file"]);
        let scores = model.scores(&img, &texts).unwrap();
        let want = f32s(&im["scores"]);
        let e = max_abs(&scores, &want);
        assert!(e < 1e-4, "{}: scores {scores:?} vs {want:?}: max abs err {e}", im["file"]);
    }
}

#[test]
fn batched_scores_equal_one_at_a_time() {
    let exp = read_json("clip_tiny/expected.json");
    let model = ClipModel::load(&fixtures().join("clip_tiny")).unwrap();
    let texts = texts(&exp);
    let img = load_image(&fixtures().join("images/wide.jpg")).unwrap();
    let batched = model.scores(&img, &texts).unwrap();
    let single: Vec<f32> = texts.iter().map(|t| model.scores(&img, std::slice::from_ref(t)).unwrap()[0]).collect();
    let e = max_abs(&batched, &single);
    assert!(e < 1e-5, "batched {batched:?} vs single {single:?}");
    // reversed order: each text's score moves with it
    let rev: Vec<String> = texts.iter().rev().cloned().collect();
    let mut r = model.scores(&img, &rev).unwrap();
    r.reverse();
    assert!(max_abs(&r, &batched) < 1e-5);
}

#[test]
fn legacy_eos_token_id_pools_at_the_argmax() {
    // openai/clip-* configs carry eos_token_id 2: transformers then pools at argmax(ids), which is
    // the first EOT as EOT is the largest id.
    let exp = read_json("clip_tiny/expected.json");
    let dir = scratch_copy("clip_tiny", "clip-legacy-eos");
    edit_config(&dir, |c| c["text_config"]["eos_token_id"] = 2.into());
    let model = ClipModel::load(&dir).unwrap();
    assert_eq!(model.cfg.text.eos_token_id, 2);
    let img = load_image(&fixtures().join("images/wide.jpg")).unwrap();
    let scores = model.scores(&img, &texts(&exp)).unwrap();
    let e = max_abs(&scores, &f32s(&exp["images"][0]["scores"]));
    assert!(e < 1e-4, "max abs err {e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_checkpoints_name_the_file_and_field() {
    let err = |dir: &std::path::Path| ClipModel::load(dir).err().expect("load must fail").to_string();
    let dir = scratch_copy("clip_tiny", "clip-bad-proj");
    edit_config(&dir, |c| c["projection_dim"] = 16.into());
    let e = err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("visual_projection.weight") && e.contains("[24, 32]") && e.contains("[16, 32]"), "{e}");
    edit_config(&dir, |c| {
        c["projection_dim"] = 24.into();
        c["text_config"]["hidden_size"] = "wide".into();
    });
    let e = err(&dir);
    assert!(e.contains("config.json") && e.contains("hidden_size"), "{e}");
    edit_config(&dir, |c| {
        c["text_config"]["hidden_size"] = 32.into();
        c["text_config"]["num_attention_heads"] = 3.into();
    });
    let e = err(&dir);
    assert!(e.contains("text_config.num_attention_heads"), "{e}");
    edit_config(&dir, |c| c["text_config"]["num_attention_heads"] = 2.into());
    let pp = dir.join("preprocessor_config.json");
    let good = std::fs::read_to_string(&pp).unwrap();
    let mut p: serde_json::Value = serde_json::from_str(&good).unwrap();
    p["crop_size"] = serde_json::json!({"height": 224, "width": 224});
    std::fs::write(&pp, p.to_string()).unwrap();
    let e = err(&dir);
    assert!(e.contains("preprocessor_config.json") && e.contains("crop_size") && e.contains("336"), "{e}");
    std::fs::write(&pp, good).unwrap();
    ClipModel::load(&dir).expect("the repaired copy loads");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let e = err(&dir);
    assert!(e.contains("tokenizer.json") && e.contains("not found"), "{e}");
    std::fs::remove_dir_all(dir).ok();
    let dir = scratch_copy("llava15_tiny", "clip-not-clip");
    let e = err(&dir);
    assert!(e.contains("model_type") && e.contains("clip"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn cli_clip_score_json() {
    let exp = read_json("clip_tiny/expected.json");
    let texts = texts(&exp);
    let dir = fixtures().join("clip_tiny");
    let image = fixtures().join("images/tall.png");
    let mut args = vec!["clip-score", "--clip", dir.to_str().unwrap(), "--image", image.to_str().unwrap(), "--json"];
    for t in &texts {
        args.extend(["--text", t.as_str()]);
    }
    let (ok, out, err) = stic(&args);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    let got = f32s(&v["scores"]);
    let im = exp["images"].as_array().unwrap().iter().find(|i| i["file"] == "images/tall.png").unwrap();
    let e = max_abs(&got, &f32s(&im["scores"]));
    assert!(e < 1e-4, "{got:?}: max abs err {e}");
    // without --text: a usage error
    let (ok, _, err) = stic(&["clip-score", "--clip", dir.to_str().unwrap(), "--image", image.to_str().unwrap()]);
    assert!(!ok && err.contains("--text"), "{err}");
}
