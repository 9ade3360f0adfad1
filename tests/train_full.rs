//! Full-parameter training (`--train decoder,projector`, issue #17): every trained parameter's
//! gradient and one AdamW step against torch autograd (expected/full_{model}.safetensors, from
//! scripts/gen_full_grads.py), and the CLI end to end: the model directory it writes, stage-1
//! projector training, bit-identical resume, sharding, and the errors of bad options.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;
use stic::generate::Pipeline;
use stic::image::load_image;
use stic::model::decoder::StepOpts;
use stic::model::grads::DecoderGrads;
use stic::optim::AdamWConfig;
use stic::train::data::read_pairs;
use stic::train::{dpo_pair_grads_packed_full, reference_logps, sft_grads_full, sft_ids, TrainAdamW};

type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Gradients vs torch autograd, f32 on both sides: max |a - b| over the tensor's max |b|
/// (docs/TOLERANCES.md, "full-parameter gradients").
const GRAD_TOL: f32 = 1e-4;
/// Parameters after one AdamW step vs torch: |a - b| <= tol (1 + |b|) (docs/TOLERANCES.md).
const STEP_TOL: f32 = 2e-6;

fn turns() -> Vec<(String, String)> {
    vec![
        ("<image>\nWhat is shown in this image?".into(), "A red square and a blue circle.".into()),
        ("What colour is the circle?".into(), "It is blue.".into()),
    ]
}

fn meta(rel: &str) -> HashMap<String, String> {
    let bytes = std::fs::read(fixtures().join(rel)).unwrap();
    safetensors::SafeTensors::read_metadata(&bytes).unwrap().1.metadata().clone().unwrap()
}

/// Compare `got` (a whole tensor of `shape`) with the expected `{prefix}{name}` (whole, or in
/// part: `@index` rows, `@rows`, `@colsq`). `zero_elsewhere`: rows outside `@index` must be 0.
/// Returns max |a - b| / max |b|.
fn compare(want: &Tensors, prefix: &str, name: &str, got: &[f32], zero_elsewhere: bool, err: impl Fn(&[f32], &[f32]) -> f32) -> f32 {
    let key = format!("{prefix}{name}");
    if let Some((_, w)) = want.get(&key) {
        assert_eq!(got.len(), w.len(), "{key}");
        return err(got, w);
    }
    let (_, index) = want.get(&format!("{key}@index")).unwrap_or_else(|| panic!("{key}: not in the expected file"));
    let (shape, rows) = &want[&format!("{key}@rows")];
    let c = shape[1];
    let picked: Vec<f32> = index.iter().flat_map(|&r| got[r as usize * c..(r as usize + 1) * c].iter().copied()).collect();
    let mut e = err(&picked, rows);
    // The whole tensor: its per-column sums of squares.
    let colsq: Vec<f32> = (0..c).map(|j| got.chunks_exact(c).map(|r| r[j] as f64 * r[j] as f64).sum::<f64>() as f32).collect();
    e = e.max(err(&colsq, &want[&format!("{key}@colsq")].1));
    if zero_elsewhere {
        let kept: std::collections::HashSet<usize> = index.iter().map(|&r| r as usize).collect();
        for (r, row) in got.chunks_exact(c).enumerate() {
            assert!(kept.contains(&r) || row.iter().all(|&v| v == 0.0), "{key}: row {r} has a gradient torch does not");
        }
    }
    e
}

fn grad_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max).max(f32::MIN_POSITIVE);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale
}

fn step_err(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0f32, f32::max)
}

/// Check every decoder and projector gradient against `{prefix}*`; returns the worst error.
fn check_grads(want: &Tensors, prefix: &str, dec: &DecoderGrads, proj: &[(String, Vec<f32>)]) -> f32 {
    let mut worst = 0f32;
    let mut n = 0;
    for (name, g) in dec.named() {
        let e = compare(want, prefix, &format!("decoder.{name}"), g, name == "embed_tokens.weight", grad_err);
        assert!(e < GRAD_TOL, "{prefix}decoder.{name}: max error {e} of the tensor's max |grad|");
        worst = worst.max(e);
        n += 1;
    }
    for (name, g) in proj {
        let e = compare(want, prefix, &format!("projector.{name}"), g, false, grad_err);
        assert!(e < GRAD_TOL, "{prefix}projector.{name}: max error {e}");
        worst = worst.max(e);
        n += 1;
    }
    // Every expected tensor was compared.
    let expected: std::collections::HashSet<&str> = want.keys().filter_map(|k| k.strip_prefix(prefix)).map(|k| k.split('@').next().unwrap()).collect();
    assert_eq!(expected.len(), n, "{prefix}: {} expected tensors, {n} compared", expected.len());
    worst
}

fn full_gradients_and_adamw_match_torch(fixture: &str) {
    let rel = format!("expected/full_{fixture}.safetensors");
    let want = read_tensors(&rel);
    let meta = meta(&rel);
    let mut pipe = Pipeline::load(&fixtures().join(fixture)).unwrap();
    let opts = StepOpts { projector: true, ..Default::default() };

    // SFT: the conversation's ids are those torch saw.
    let (ids, _) = sft_ids(&pipe, &turns(), 1).unwrap();
    assert_eq!(ids, serde_json::from_str::<Vec<u32>>(&meta["sft_ids"]).unwrap(), "the SFT ids differ from the script's");
    let img = load_image(&fixtures().join("images/wide.jpg")).unwrap();
    let mut sft = DecoderGrads::zeros(&pipe.model.decoder.cfg);
    let (loss, sft_proj, _) = sft_grads_full(&pipe, &turns(), std::slice::from_ref(&img), opts, Some((&mut sft, 1.0))).unwrap();
    let want_loss: f64 = meta["sft_loss"].parse().unwrap();
    assert!((loss - want_loss).abs() <= 1e-4 * (1.0 + want_loss.abs()), "SFT loss {loss} vs {want_loss}");
    let e_sft = check_grads(&want, "sft.", &sft, &sft_proj.projector);

    // DPO on the first pair, packed (the training path), the reference being the model itself.
    let (pairs, _) = read_pairs(&pipe, &fixtures().join("prefs/prefs.jsonl")).unwrap();
    assert_eq!(pipe.prompt_ids(&pairs[0].prompt, 1).unwrap(), serde_json::from_str::<Vec<u32>>(&meta["dpo_prompt_ids"]).unwrap());
    let reference = reference_logps(&mut pipe, &pairs[0]).unwrap();
    let mut dpo = DecoderGrads::zeros(&pipe.model.decoder.cfg);
    let (o, dpo_proj, _) = dpo_pair_grads_packed_full(&pipe, &pairs[0], reference, 0.1, 0.0, opts, Some((&mut dpo, 1.0))).unwrap();
    assert!((o.loss - std::f64::consts::LN_2).abs() < 1e-5, "DPO loss {}", o.loss);
    let e_dpo = check_grads(&want, "dpo.", &dpo, &dpo_proj.projector);

    // One AdamW step on the SFT gradients, HF's decay grouping.
    let no_decay: Vec<String> = serde_json::from_str(&meta["no_decay"]).unwrap();
    for (name, _) in sft.named() {
        let n = format!("decoder.{name}");
        assert_eq!(!stic::train::full::hf_decays(&format!("model.language_model.{name}")), no_decay.contains(&n), "{n}: decay group differs from HF's");
    }
    for (name, _) in &sft_proj.projector {
        // TrainAdamW::step decays projector weights, not biases.
        assert_eq!(name.ends_with("bias"), no_decay.contains(&format!("projector.{name}")), "projector.{name}");
        assert_eq!(!stic::train::full::hf_decays(&format!("model.multi_modal_projector.{name}")), name.ends_with("bias"));
    }
    let mut opt = TrainAdamW::new(AdamWConfig { lr: 1e-3, weight_decay: 0.1, ..Default::default() });
    opt.step(&mut pipe, &sft_proj, 1e-3, 1e-3).unwrap();
    opt.step_decoder(&mut pipe, &sft, 1e-3).unwrap();
    let mut e_step = 0f32;
    for (name, p) in pipe.model.decoder.params_mut() {
        let e = compare(&want, "adamw.", &format!("decoder.{name}"), p.data(), false, step_err);
        assert!(e < STEP_TOL, "adamw.decoder.{name}: max error {e}");
        e_step = e_step.max(e);
    }
    for (name, p) in pipe.model.projector.params_mut() {
        let e = compare(&want, "adamw.", &format!("projector.{name}"), p.data(), false, step_err);
        assert!(e < STEP_TOL, "adamw.projector.{name}: max error {e}");
        e_step = e_step.max(e);
    }
    eprintln!("{fixture}: worst gradient error SFT {e_sft:e}, DPO {e_dpo:e} (of max |grad|); AdamW step {e_step:e}");
}

#[test]
fn llava15_full_gradients_and_adamw_match_torch() {
    full_gradients_and_adamw_match_torch("llava15_tiny");
}

#[test]
fn llava_next_full_gradients_and_adamw_match_torch() {
    full_gradients_and_adamw_match_torch("llava_next_tiny");
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stic-full-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("train_log.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect()
}

/// The tensor names and shapes of a model directory.
fn names_shapes(dir: &Path) -> Vec<(String, Vec<usize>)> {
    let ws = stic::weights::WeightStore::open(dir).unwrap();
    ws.names().map(|n| (n.to_string(), ws.shape_of(n).unwrap())).collect()
}

#[test]
fn train_sft_full_writes_a_model_that_generate_loads() {
    let model = fixtures().join("llava15_tiny");
    let out = tmp("sft");
    let (ok, err) = train_sft_fixture(&model, &out, &["--train", "decoder,projector", "--epochs", "4", "--lr", "3e-3"]);
    assert!(ok, "{err}");
    let l = losses(&out);
    assert_eq!(l.len(), 8);
    assert!(l[6] + l[7] < 0.8 * (l[0] + l[1]), "full SFT loss {l:?}");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "generation_config.json", "model.safetensors"] {
        assert!(out.join(f).exists(), "{f} missing from out/");
        assert!(out.join("checkpoint").join(f).exists(), "{f} missing from out/checkpoint/");
    }
    assert!(out.join("checkpoint/optimizer.safetensors").exists() && out.join("checkpoint/trainer_state.json").exists());
    assert!(!out.join("adapter_config.json").exists());
    assert_eq!(names_shapes(&out), names_shapes(&model), "the saved tensors are not the base's names and shapes");
    // Every tensor is f32; the decoder and projector moved, the vision tower did not.
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.tensors().iter().all(|(_, v)| v.dtype() == safetensors::Dtype::F32));
    let (base, got) = (stic::weights::WeightStore::open(&model).unwrap(), stic::weights::WeightStore::open(&out).unwrap());
    for name in base.names() {
        let shape = base.shape_of(name).unwrap();
        let moved = base.get(name, &shape).unwrap().data() != got.get(name, &shape).unwrap().data();
        let trained = !name.contains("vision_tower");
        assert_eq!(moved, trained, "{name}: moved {moved}, trained {trained}");
    }
    let image = fixtures().join("images/wide.jpg");
    let (ok, so, err) = stic(&["generate", "--model", s(&out), "--image", s(&image), "--prompt", "What is shown in this image?", "--max-new-tokens", "4", "--json"]);
    assert!(ok, "generate on the trained model: {err}");
    assert!(so.contains("output_ids"), "{so}");
}

#[test]
fn train_projector_alone_keeps_the_decoder() {
    let model = fixtures().join("llava_next_tiny");
    let out = tmp("proj");
    let (ok, err) = train_sft_fixture(&model, &out, &["--train", "projector", "--max-steps", "2", "--projector-lr", "1e-2", "--lr", "1e-3"]);
    assert!(ok, "{err}");
    assert!(out.join("model.safetensors.index.json").exists() || out.join("model.safetensors").exists());
    assert_eq!(names_shapes(&out), names_shapes(&model));
    let base = stic::weights::WeightStore::open(&model).unwrap();
    let got = stic::weights::WeightStore::open(&out).unwrap();
    for name in base.names() {
        let shape = base.shape_of(name).unwrap();
        let moved = base.get(name, &shape).unwrap().data() != got.get(name, &shape).unwrap().data();
        assert_eq!(moved, name.contains("multi_modal_projector"), "{name}");
    }
}

#[test]
fn full_training_resumes_bit_identically() {
    let model = fixtures().join("llava15_tiny");
    let (a, b) = (tmp("resume-a"), tmp("resume-b"));
    let common = ["--train", "decoder,projector", "--max-steps", "4", "--save-every", "2", "--weight-decay", "0.1", "--grad-accum", "2", "--lr", "1e-3"];
    let (ok, err) = train_sft_fixture(&model, &a, &common);
    assert!(ok, "{err}");
    let mut first: Vec<&str> = common.to_vec();
    first.extend(["--stop-after", "2"]);
    let (ok, err) = train_sft_fixture(&model, &b, &first);
    assert!(ok, "{err}");
    assert_eq!(losses(&b).len(), 2);
    let mut again: Vec<&str> = common.to_vec();
    again.push("--resume");
    let (ok, err) = train_sft_fixture(&model, &b, &again);
    assert!(ok, "{err}");
    assert_eq!(losses(&a), losses(&b));
    for f in ["model.safetensors", "checkpoint/model.safetensors", "checkpoint/optimizer.safetensors"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs after resuming");
    }
}

#[test]
fn full_training_shards_above_shard_mib() {
    let model = fixtures().join("llava15_tiny");
    let out = tmp("shard");
    let (ok, err) = train_sft_fixture(&model, &out, &["--train", "decoder", "--max-steps", "1", "--shard-mib", "3", "--lr", "1e-3"]);
    assert!(ok, "{err}");
    assert!(out.join("model.safetensors.index.json").exists() && !out.join("model.safetensors").exists());
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    let mut files: Vec<&str> = index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    files.sort();
    files.dedup();
    let k = files.len();
    assert!(k >= 2, "{files:?}");
    for (i, f) in files.iter().enumerate() {
        assert_eq!(*f, format!("model-{:05}-of-{k:05}.safetensors", i + 1));
        // 3 MiB shards, except a single tensor larger than that.
        let len = std::fs::metadata(out.join(f)).unwrap().len();
        assert!(len <= 3 << 20 || names_in(&index, f) == 1, "{f}: {len} bytes");
    }
    assert_eq!(names_shapes(&out), names_shapes(&model));
    let image = fixtures().join("images/wide.jpg");
    let (ok, _, err) = stic(&["generate", "--model", s(&out), "--image", s(&image), "--prompt", "Hi", "--max-new-tokens", "2"]);
    assert!(ok, "{err}");
}

fn names_in(index: &serde_json::Value, file: &str) -> usize {
    index["weight_map"].as_object().unwrap().values().filter(|v| v.as_str() == Some(file)).count()
}

#[test]
fn bad_train_options_are_refused_clearly() {
    let model = fixtures().join("llava15_tiny");
    let out = tmp("bad");
    let (ok, err) = train_sft_fixture(&model, &out, &["--train", "decoder,lm"]);
    assert!(!ok && err.contains("--train") && err.contains("`lm`") && err.contains("decoder, projector, vision"), "{err}");
    let (ok, err) = train_sft_fixture(&model, &out, &["--train", "decoder", "--lora-r", "8"]);
    assert!(!ok && err.contains("--lora-r") && err.contains("--train"), "{err}");
}

#[test]
fn train_dpo_full_takes_its_reference_from_the_base_model() {
    // The reference log-probs are cached from the base model before any weight trains: step 1
    // (policy = base) has zero rewards, the cache equals the base model's scores, and later steps
    // move the policy away from that fixed reference.
    let model = fixtures().join("llava15_tiny");
    let prefs = fixtures().join("prefs/prefs.jsonl");
    let out = tmp("dpo");
    let (ok, _, err) = stic(&[
        "train-dpo", "--model", s(&model), "--data", s(&prefs), "--out", s(&out), "--train", "decoder,projector", "--max-steps", "3",
        "--lr", "1e-3", "--warmup-ratio", "0", "--quiet",
    ]);
    assert!(ok, "{err}");
    let log: Vec<serde_json::Value> = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(log.len(), 3);
    let r = |i: usize, k: &str| log[i][k].as_f64().unwrap();
    assert!(r(0, "chosen_reward").abs() < 1e-4 && r(0, "rejected_reward").abs() < 1e-4, "{:?}", log[0]);
    assert!(r(2, "reward_margin").abs() > 1e-3, "{:?}", log[2]);
    let mut pipe = Pipeline::load(&model).unwrap();
    let (pairs, _) = read_pairs(&pipe, &prefs).unwrap();
    let cached: Vec<serde_json::Value> = std::fs::read_to_string(out.join("reference_logps.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(cached.len(), pairs.len());
    for c in &cached {
        let (ch, rj) = reference_logps(&mut pipe, &pairs[c["i"].as_u64().unwrap() as usize]).unwrap();
        assert!((c["chosen"].as_f64().unwrap() - ch).abs() < 1e-9 && (c["rejected"].as_f64().unwrap() - rj).abs() < 1e-9, "{c} vs ({ch}, {rj})");
    }
    assert_eq!(names_shapes(&out), names_shapes(&model));
}

/// A scratch copy of llava15_tiny whose lm_head holds the embedding's values; `tied`: the config
/// ties them (tie_word_embeddings, top level and text_config).
fn head_is_embedding(tag: &str, tied: bool) -> PathBuf {
    let dir = scratch_copy("llava15_tiny", tag);
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let embed = st.tensor("language_model.model.embed_tokens.weight").unwrap().data().to_vec();
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let data: &[u8] = if n == "language_model.lm_head.weight" { &embed } else { v.data() };
            let view = safetensors::tensor::TensorView::new(v.dtype(), v.shape().to_vec(), data).unwrap();
            (n, view)
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(tensors, None::<HashMap<String, String>>).unwrap()).unwrap();
    if tied {
        edit_config(&dir, |c| {
            c["tie_word_embeddings"] = true.into();
            c["text_config"]["tie_word_embeddings"] = true.into();
        });
    }
    dir
}

#[test]
fn tied_embeddings_add_the_gradients_of_both_uses() {
    // With lm_head = embed_tokens in value, the tied model's embedding gradient is the untied
    // one's embedding plus lm_head gradients, and every other gradient is the same.
    let (untied, tied) = (head_is_embedding("untied", false), head_is_embedding("tied", true));
    let img = load_image(&fixtures().join("images/wide.jpg")).unwrap();
    let grads = |dir: &Path| {
        let pipe = Pipeline::load(dir).unwrap();
        let mut g = DecoderGrads::zeros(&pipe.model.decoder.cfg);
        let (_, p, _) = sft_grads_full(&pipe, &turns(), std::slice::from_ref(&img), StepOpts { projector: true, ..Default::default() }, Some((&mut g, 1.0))).unwrap();
        (g, p.projector)
    };
    let ((gu, pu), (gt, pt)) = (grads(&untied), grads(&tied));
    assert!(gt.lm_head.is_none() && gu.lm_head.is_some());
    let sum: Vec<f32> = gu.embed_tokens.iter().zip(gu.lm_head.as_ref().unwrap()).map(|(a, b)| a + b).collect();
    assert!(grad_err(&gt.embed_tokens, &sum) < 1e-5, "tied embedding gradient: {}", grad_err(&gt.embed_tokens, &sum));
    for ((n, a), (_, b)) in gt.named().into_iter().zip(gu.named()).skip(1) {
        assert!(grad_err(a, b) < 1e-5, "{n}");
    }
    for ((n, a), (_, b)) in pt.iter().zip(&pu) {
        assert!(grad_err(a, b) < 1e-5, "projector {n}");
    }
    // The saved model keeps the file's lm_head tensor, holding the trained embedding.
    let out = tmp("tied");
    let (ok, err) = train_sft_fixture(&tied, &out, &["--train", "decoder", "--max-steps", "1", "--lr", "1e-2"]);
    assert!(ok, "{err}");
    assert_eq!(names_shapes(&out), names_shapes(&tied));
    let ws = stic::weights::WeightStore::open(&out).unwrap();
    let shape = ws.shape_of("language_model.lm_head.weight").unwrap();
    let (head, emb) = (ws.get("language_model.lm_head.weight", &shape).unwrap(), ws.get("language_model.model.embed_tokens.weight", &shape).unwrap());
    assert_eq!(head.data(), emb.data());
    let base = stic::weights::WeightStore::open(&tied).unwrap().get("language_model.model.embed_tokens.weight", &shape).unwrap();
    assert_ne!(emb.data(), base.data());
}

#[test]
fn full_gradients_accumulate_in_place_and_survive_recomputation() {
    // Two examples accumulated into one set of buffers with weights 0.5 and 0.25 equal the sum of
    // their separate gradients so weighted; per-layer recomputation gives the same bits.
    let pipe = Pipeline::load(&fixtures().join("llava15_tiny")).unwrap();
    let (pairs, _) = read_pairs(&pipe, &fixtures().join("prefs/prefs.jsonl")).unwrap();
    let img = load_image(&fixtures().join("images/wide.jpg")).unwrap();
    let cfg = &pipe.model.decoder.cfg;
    let opts = StepOpts { projector: true, ..Default::default() };
    let sft = |g: &mut DecoderGrads, w: f32, opts: StepOpts| {
        sft_grads_full(&pipe, &turns(), std::slice::from_ref(&img), opts, Some((g, w))).unwrap();
    };
    let dpo = |g: &mut DecoderGrads, w: f32| {
        dpo_pair_grads_packed_full(&pipe, &pairs[1], (-40.0, -60.0), 0.1, 0.0, opts, Some((g, w))).unwrap();
    };
    let (mut both, mut a, mut b, mut r) = (DecoderGrads::zeros(cfg), DecoderGrads::zeros(cfg), DecoderGrads::zeros(cfg), DecoderGrads::zeros(cfg));
    sft(&mut both, 0.5, opts);
    dpo(&mut both, 0.25);
    sft(&mut a, 1.0, opts);
    dpo(&mut b, 1.0);
    for (((n, s), (_, x)), (_, y)) in both.named().into_iter().zip(a.named()).zip(b.named()) {
        let want: Vec<f32> = x.iter().zip(y).map(|(x, y)| 0.5 * x + 0.25 * y).collect();
        assert!(grad_err(s, &want) < 1e-6, "{n}: {}", grad_err(s, &want));
    }
    sft(&mut r, 1.0, StepOpts { recompute: true, ..opts });
    assert!(r == a, "recomputation changed the gradients");
}
