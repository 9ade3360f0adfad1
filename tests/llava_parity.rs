//! The CPU engine against transformers on the tiny random checkpoints (tests/fixtures, made by
//! scripts/gen_fixtures.py with transformers 5.23 / torch 2.9.1 in float32):
//! pixels, image features, per-token log-probs of a response, last-position logits, and greedy ids
//! (one at a time and batched).

mod common;

use std::sync::OnceLock;

use common::*;
use stic::generate::{Pipeline, Request, SamplingParams};
use stic::image::{load_image, preprocess};

/// Tolerances (docs/TOLERANCES.md): f32 engine vs f32 transformers on the same weights. Both round
/// differently (GEMM blocking, f64 vs f32 reductions), and tiny models with std-0.2 / std-1 weights
/// have logits of magnitude ~30, so errors are relative to 1 + |value|.
const LOGPROB_TOL: f64 = 1e-4;
const FEATURE_TOL: f32 = 1e-4;
const PIXEL_TOL: f32 = 1e-5;

fn pipeline(name: &str) -> &'static Pipeline {
    static NEXT: OnceLock<Pipeline> = OnceLock::new();
    static V15: OnceLock<Pipeline> = OnceLock::new();
    let cell = if name == "llava_next_tiny" { &NEXT } else { &V15 };
    cell.get_or_init(|| Pipeline::load(&fixtures().join(name)).unwrap_or_else(|e| panic!("loading {name}: {e}")))
}

fn check_model(name: &str) {
    let exp = read_json(&format!("expected/{name}.json"));
    let tensors = read_tensors(&format!("expected/{name}.safetensors"));
    let pipe = pipeline(name);
    for (i, case) in exp["cases"].as_array().unwrap().iter().enumerate() {
        let img_path = fixtures().join(case["image"].as_str().unwrap());
        let img = load_image(&img_path).unwrap();
        let what = format!("{name} case {i} ({})", case["image"]);

        // Prompt and its ids before <image> expansion.
        let prompt = pipe.format_prompt(case["prompt"].as_str().unwrap(), 1, false);
        assert_eq!(prompt, case["templated"].as_str().unwrap(), "{what}: template");
        let prompt_ids = pipe.prompt_ids(&prompt, 1).unwrap();
        assert_eq!(prompt_ids, ids(&case["prompt_ids"]), "{what}: prompt ids");

        // Pixels.
        let px = preprocess(&img, &pipe.processor).unwrap();
        let (shape, want) = &tensors[&format!("case{i}.pixel_values")];
        assert_eq!(px.pixel_values.shape(), &shape[..], "{what}: pixel shape");
        let err = px.pixel_values.data().iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(err <= PIXEL_TOL, "{what}: pixels differ by {err}");
        let ih = case["image_size"].as_array().unwrap();
        assert_eq!(px.image_size, (ih[0].as_u64().unwrap() as usize, ih[1].as_u64().unwrap() as usize));

        // Image features (what replaces <image>).
        let feats = pipe.model.image_features(&px).unwrap();
        let (fshape, fwant) = &tensors[&format!("case{i}.image_features")];
        assert_eq!(feats.shape(), &fshape[..], "{what}: feature shape");
        assert_eq!(feats.dim(0), case["n_image_tokens"].as_u64().unwrap() as usize);
        let err = max_rel_err(feats.data(), fwant);
        assert!(err < FEATURE_TOL, "{what}: image features differ by {err}");

        // Response log-probs.
        let s = pipe.score(&prompt, std::slice::from_ref(&img), case["response"].as_str().unwrap()).unwrap();
        assert_eq!(s.response_ids, ids(&case["response_ids"]), "{what}: response ids");
        let want = floats(&case["logprobs"]);
        for (j, (a, b)) in s.logprobs.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= LOGPROB_TOL * (1.0 + b.abs()), "{what}: logprob {j}: {a} vs {b}");
        }
        assert!((s.sum - want.iter().sum::<f64>()).abs() < LOGPROB_TOL * 10.0 * (1.0 + s.sum.abs()));

        // Logits at the last prompt position.
        let (x, _) = pipe.embed(&prompt_ids, std::slice::from_ref(&img)).unwrap();
        let t = x.dim(0);
        let mut cache = stic::model::KvCache::new(&stic::backend::Cpu, &pipe.model.decoder.cfg, 1, t).unwrap();
        let h = pipe.model.decoder.forward(x, &[0], &[t], &mut cache).unwrap();
        let logits = pipe.model.decoder.logits(&h.rows(t - 1, t)).unwrap();
        let (_, lwant) = &tensors[&format!("case{i}.last_logits")];
        let err = max_rel_err(logits.data(), lwant);
        assert!(err < FEATURE_TOL, "{what}: last logits differ by {err}");
    }
}

fn greedy(name: &str) {
    let exp = read_json(&format!("expected/{name}.json"));
    let pipe = pipeline(name);
    let cases = exp["cases"].as_array().unwrap();
    let reqs = case_requests(cases);
    let params = SamplingParams { max_new_tokens: 8, ..Default::default() };
    // One at a time.
    for (c, r) in cases.iter().zip(&reqs) {
        let g = pipe.generate(std::slice::from_ref(r), &params).unwrap();
        assert_eq!(g[0].output_ids, ids(&c["greedy_ids"]), "{name} {}: greedy ids", c["image"]);
        assert_eq!(g[0].text, c["greedy_text"].as_str().unwrap());
        assert_eq!(g[0].n_image_tokens, c["n_image_tokens"].as_u64().unwrap() as usize);
    }
    // All at once: prompts of different lengths share prefill and decode calls.
    let g = pipe.generate(&reqs, &params).unwrap();
    for (c, out) in cases.iter().zip(&g) {
        assert_eq!(out.output_ids, ids(&c["greedy_ids"]), "{name} {}: batched greedy ids", c["image"]);
    }
}

#[test]
fn llava_next_matches_transformers() {
    check_model("llava_next_tiny");
}

#[test]
fn llava15_matches_transformers() {
    check_model("llava15_tiny");
}

#[test]
fn llava_next_greedy_matches_transformers() {
    greedy("llava_next_tiny");
}

#[test]
fn llava15_greedy_matches_transformers() {
    greedy("llava15_tiny");
}

#[test]
fn sampling_is_seeded_and_stops_at_max_tokens() {
    let pipe = pipeline("llava15_tiny");
    let img = load_image(&fixtures().join("images/wide.jpg")).unwrap();
    let req = Request { prompt: pipe.format_prompt("Describe it.", 1, false), images: vec![img] };
    let p = SamplingParams { max_new_tokens: 6, temperature: 1.0, top_p: 0.9, top_k: 50, seed: 7 };
    let a = pipe.generate(std::slice::from_ref(&req), &p).unwrap();
    let b = pipe.generate(std::slice::from_ref(&req), &p).unwrap();
    assert_eq!(a[0].output_ids, b[0].output_ids, "same seed, same tokens");
    assert_eq!(a[0].output_ids.len(), 6);
    let c = pipe.generate(std::slice::from_ref(&req), &SamplingParams { seed: 8, ..p.clone() }).unwrap();
    let d = pipe.generate(std::slice::from_ref(&req), &SamplingParams { seed: 9, ..p }).unwrap();
    assert!(a[0].output_ids != c[0].output_ids || a[0].output_ids != d[0].output_ids, "seeds change samples");
}

#[test]
fn mistral_sliding_window_matches_transformers() {
    // Same checkpoint with text_config.sliding_window = 16 (transformers' eager mask, recorded by
    // gen_fixtures.py); the sequences are ~170 tokens, so the window cuts most of the attention.
    let exp = read_json("expected/llava_next_tiny.json");
    let dir = scratch_copy("llava_next_tiny", "window");
    let window = exp["cases"][0]["sliding_window"].as_u64().unwrap();
    edit_config(&dir, |cfg| cfg["text_config"]["sliding_window"] = serde_json::json!(window));
    let pipe = Pipeline::load(&dir).unwrap();
    assert_eq!(pipe.model.cfg.text.sliding_window, Some(window as usize));
    for case in exp["cases"].as_array().unwrap() {
        let img = load_image(&fixtures().join(case["image"].as_str().unwrap())).unwrap();
        let s = pipe.score(case["templated"].as_str().unwrap(), &[img], case["response"].as_str().unwrap()).unwrap();
        let want = floats(&case["logprobs_sliding_window"]);
        for (a, b) in s.logprobs.iter().zip(&want) {
            assert!((a - b).abs() <= LOGPROB_TOL * (1.0 + b.abs()), "{}: {a} vs {b}", case["image"]);
        }
    }
}

#[test]
fn vision_tower_hidden_state_matches_transformers() {
    // hidden_states[-2] with the class token dropped, from HF's own pixel values.
    for name in ["llava_next_tiny", "llava15_tiny"] {
        let tensors = read_tensors(&format!("expected/{name}.safetensors"));
        let pipe = pipeline(name);
        for i in 0..3 {
            let (ps, px) = &tensors[&format!("case{i}.pixel_values")];
            let pixels = stic::Tensor::new(px.clone(), ps).unwrap();
            let ours = pipe.model.vision_features(&pixels).unwrap();
            let (vs, want) = &tensors[&format!("case{i}.vision_hidden")];
            // [N*P, Cv]: the tiles stacked.
            assert_eq!(ours.shape(), &[vs[0] * vs[1], vs[2]], "{name} case {i}");
            let err = max_rel_err(ours.data(), want);
            assert!(err < FEATURE_TOL, "{name} case {i}: vision hidden differs by {err}");
        }
    }
}

#[test]
fn linear_projector_checkpoint() {
    // LLaVA-1.0's single-Linear projector: rewrite the llava15 fixture with one
    // `multi_modal_projector.{weight,bias}` and check features = vision_hidden @ W^T + b, with
    // vision_hidden from transformers and the product in f64.
    use safetensors::tensor::TensorView;
    let dir = scratch_copy("llava15_tiny", "linearproj");
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (c, cv) = (32usize, 32usize);
    let w: Vec<f32> = (0..c * cv).map(|i| ((i * 37 % 101) as f32 - 50.0) / 200.0).collect();
    let b: Vec<f32> = (0..c).map(|i| (i as f32 - 16.0) / 40.0).collect();
    let wb: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let bb: Vec<u8> = b.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut views: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("multi_modal_projector."))
        .collect();
    views.push(("multi_modal_projector.weight".into(), TensorView::new(safetensors::Dtype::F32, vec![c, cv], &wb).unwrap()));
    views.push(("multi_modal_projector.bias".into(), TensorView::new(safetensors::Dtype::F32, vec![c], &bb).unwrap()));
    let out = safetensors::serialize(views, None::<std::collections::HashMap<String, String>>).unwrap();
    std::fs::write(&file, out).unwrap();

    let model = stic::model::Llava::load(&dir).unwrap();
    let tensors = read_tensors("expected/llava15_tiny.safetensors");
    let (ps, px) = &tensors["case0.pixel_values"];
    let (_, vh) = &tensors["case0.vision_hidden"];
    let feats = model.tile_features(&stic::Tensor::new(px.clone(), ps).unwrap()).unwrap();
    assert_eq!(feats.shape(), &[36, c]);
    let mut want = vec![0f32; 36 * c];
    for t in 0..36 {
        for o in 0..c {
            want[t * c + o] = (b[o] as f64 + (0..cv).map(|k| vh[t * cv + k] as f64 * w[o * cv + k] as f64).sum::<f64>()) as f32;
        }
    }
    let err = max_rel_err(feats.data(), &want);
    assert!(err < FEATURE_TOL, "linear projector features differ by {err}");
}

#[test]
fn generation_stops_at_eos_per_sequence() {
    // With the EOS set to a token that transformers' greedy run emits, each sequence must stop
    // right after its first occurrence of it (and include it, as HF's generate does), while the
    // other sequences of the batch go on.
    let exp = read_json("expected/llava_next_tiny.json");
    let cases = exp["cases"].as_array().unwrap();
    let mut pipe = Pipeline::load(&fixtures().join("llava_next_tiny")).unwrap();
    let eos = ids(&cases[0]["greedy_ids"])[2];
    pipe.eos = vec![eos];
    let reqs = case_requests(cases);
    let out = pipe.generate(&reqs, &SamplingParams { max_new_tokens: 8, ..Default::default() }).unwrap();
    let mut stopped_early = 0;
    for (c, g) in cases.iter().zip(&out) {
        let full = ids(&c["greedy_ids"]);
        let want = match full.iter().position(|&t| t == eos) {
            Some(i) => full[..=i].to_vec(),
            None => full,
        };
        stopped_early += (want.len() < 8) as usize;
        assert_eq!(g.output_ids, want, "{}", c["image"]);
    }
    assert!(stopped_early >= 1);
}

#[test]
fn peft_adapter_matches_transformers_with_peft() {
    // tests/fixtures/adapter_next_tiny: a LoRA adapter saved by PEFT (random A and B on every
    // decoder projection); expected outputs from PeftModel.from_pretrained on transformers.
    // Both ways of running an adapter: attached (LoRA kept apart, trainable) and merged into the
    // weights as they load (what the CUDA backend does).
    let exp = read_json("expected/adapter_next_tiny.json");
    let (model, adapter) = (fixtures().join("llava_next_tiny"), fixtures().join("adapter_next_tiny"));
    for pipe in [
        Pipeline::load_with(&model, None, Some(&adapter)).unwrap(),
        Pipeline::load_on(&stic::backend::Cpu, &model, None, Some(&adapter)).unwrap(),
    ] {
        peft_adapter_case(&exp, &pipe);
    }
}

fn peft_adapter_case(exp: &serde_json::Value, pipe: &Pipeline) {
    let cases = exp["cases"].as_array().unwrap();
    for c in cases {
        let img = load_image(&fixtures().join(c["image"].as_str().unwrap())).unwrap();
        let s = pipe.score(c["templated"].as_str().unwrap(), &[img], c["response"].as_str().unwrap()).unwrap();
        for (a, b) in s.logprobs.iter().zip(&floats(&c["logprobs"])) {
            assert!((a - b).abs() <= LOGPROB_TOL * (1.0 + b.abs()), "{}: {a} vs {b}", c["image"]);
        }
    }
    let g = pipe.generate(&case_requests(cases), &SamplingParams { max_new_tokens: 8, ..Default::default() }).unwrap();
    for (c, out) in cases.iter().zip(&g) {
        assert_eq!(out.output_ids, ids(&c["greedy_ids"]), "{}", c["image"]);
    }
}

#[test]
fn lora_gradients_match_peft_autograd() {
    // d sum(response log-probs) / d (every LoRA A and B) for case 0, against torch autograd through
    // transformers + PEFT (expected/adapter_next_tiny_grads.safetensors, gen_adapter_fixture.py).
    let exp = read_json("expected/adapter_next_tiny.json");
    let want = read_tensors("expected/adapter_next_tiny_grads.safetensors");
    let pipe = Pipeline::load_with(&fixtures().join("llava_next_tiny"), None, Some(&fixtures().join("adapter_next_tiny"))).unwrap();
    let c = &exp["cases"][0];
    let img = load_image(&fixtures().join(c["image"].as_str().unwrap())).unwrap();
    let (lp, grads) = stic::train::response_logprob_grads(&pipe, c["templated"].as_str().unwrap(), &[img], c["response"].as_str().unwrap(), Default::default(), |l| vec![1.0; l.len()]).unwrap();
    for (a, b) in lp.iter().zip(&floats(&c["logprobs"])) {
        assert!((a - b).abs() <= LOGPROB_TOL * (1.0 + b.abs()));
    }
    assert_lora_grads_match(&grads.lora, &want);
}

/// Every (dA, dB) against PEFT's gradients (keyed by PEFT names), relative to each tensor's
/// largest |grad|.
fn assert_lora_grads_match(grads: &[stic::model::decoder::LoraGrad], want: &std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>) {
    assert_eq!(grads.len() * 2, want.len(), "one (dA, dB) per adapted projection");
    let mut worst = 0f32;
    for (layer, proj, da, db) in grads {
        let part = if proj.starts_with(['q', 'k', 'v', 'o']) { "self_attn" } else { "mlp" };
        for (ab, got) in [("A", da), ("B", db)] {
            let key = format!("base_model.model.model.language_model.layers.{layer}.{part}.{proj}.lora_{ab}.weight");
            let (_, w) = &want[&key];
            let scale = w.iter().map(|v| v.abs()).fold(0f32, f32::max);
            let err = got.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
            worst = worst.max(err);
            assert!(err < GRAD_TOL, "{key}: max error {err} of the tensor's max |grad| {scale}");
        }
    }
    eprintln!("worst relative LoRA gradient error {worst:e}");
}

/// f32 backward vs f32 autograd through a 2-layer model: summation orders differ everywhere.
const GRAD_TOL: f32 = 1e-4;

#[test]
fn adapter_trained_by_stic_loads_in_peft_with_the_same_logprobs() {
    // tests/fixtures/stic_dpo_adapter was trained by `stic train-dpo`; PEFT loaded it onto the
    // transformers model (scripts/check_stic_adapter_with_peft.py) and recorded these log-probs.
    check_stic_adapter("stic_dpo_adapter");
}

#[test]
fn adapter_with_projector_trained_by_stic_loads_in_peft_with_the_same_logprobs() {
    // The same with `--projector-lr`: the projector is saved as PEFT's modules_to_save.
    check_stic_adapter("stic_dpo_projector_adapter");
}

fn check_stic_adapter(name: &str) {
    let (model, adapter) = (fixtures().join("llava_next_tiny"), fixtures().join(name));
    check_stic_adapter_on(name, &Pipeline::load_with(&model, None, Some(&adapter)).unwrap());
    check_stic_adapter_on(name, &Pipeline::load_on(&stic::backend::Cpu, &model, None, Some(&adapter)).unwrap());
}

fn check_stic_adapter_on(name: &str, pipe: &Pipeline) {
    let exp = read_json(&format!("expected/{name}.json"));
    let cases = exp["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for c in cases {
        let img = load_image(&fixtures().join(c["image"].as_str().unwrap())).unwrap();
        let prompt = pipe.format_prompt(c["prompt"].as_str().unwrap(), 1, false);
        let s = pipe.score(&prompt, &[img], c["response"].as_str().unwrap()).unwrap();
        for (a, b) in s.logprobs.iter().zip(&floats(&c["logprobs"])) {
            assert!((a - b).abs() <= LOGPROB_TOL * (1.0 + b.abs()), "{}: {a} vs {b}", c["response"]);
        }
    }
}

#[test]
fn sft_loss_and_lora_gradients_match_transformers_and_peft() {
    // expected/adapter_next_tiny_sft_grads.safetensors: HF's mean cross-entropy over the answer
    // tokens of a two-turn conversation and its LoRA gradients (gen_adapter_fixture.py).
    let bytes = std::fs::read(fixtures().join("expected/adapter_next_tiny_sft_grads.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let want_loss: f64 = meta["loss"].parse().unwrap();
    let want_ids: Vec<u32> = serde_json::from_str(&meta["ids"]).unwrap();
    let turns: Vec<(String, String)> = serde_json::from_str(&meta["turns"]).unwrap();
    let want = read_tensors("expected/adapter_next_tiny_sft_grads.safetensors");
    let pipe = Pipeline::load_with(&fixtures().join("llava_next_tiny"), None, Some(&fixtures().join("adapter_next_tiny"))).unwrap();
    let (ids, _) = stic::train::sft_ids(&pipe, &turns, 1).unwrap();
    assert_eq!(ids, want_ids, "conversation token ids");
    let img = load_image(&fixtures().join("images/wide.jpg")).unwrap();
    let (loss, grads, _) = stic::train::sft_grads(&pipe, &turns, &[img], Default::default()).unwrap();
    assert!((loss - want_loss).abs() <= LOGPROB_TOL * (1.0 + want_loss.abs()), "{loss} vs {want_loss}");
    assert_lora_grads_match(&grads.lora, &want);
}

#[test]
fn projector_gradients_match_transformers() {
    // expected/projector_sft_grads.safetensors (scripts/gen_projector_grads.py): the SFT loss of
    // the two-turn conversation above, back-propagated by autograd into the projector through the
    // AnyRes unpad and grid layout. stic: sft_grads with StepOpts::projector.
    let bytes = std::fs::read(fixtures().join("expected/projector_sft_grads.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let want_loss: f64 = meta.metadata().as_ref().unwrap()["loss"].parse().unwrap();
    let want = read_tensors("expected/projector_sft_grads.safetensors");
    let sft = safetensors::SafeTensors::read_metadata(&std::fs::read(fixtures().join("expected/adapter_next_tiny_sft_grads.safetensors")).unwrap()).unwrap().1;
    let turns: Vec<(String, String)> = serde_json::from_str(&sft.metadata().as_ref().unwrap()["turns"]).unwrap();
    let pipe = Pipeline::load_with(&fixtures().join("llava_next_tiny"), None, Some(&fixtures().join("adapter_next_tiny"))).unwrap();
    let img = load_image(&fixtures().join("images/wide.jpg")).unwrap();
    let opts = stic::model::decoder::StepOpts { projector: true, ..Default::default() };
    let (loss, grads, _) = stic::train::sft_grads(&pipe, &turns, &[img], opts).unwrap();
    assert!((loss - want_loss).abs() <= LOGPROB_TOL * (1.0 + want_loss.abs()), "{loss} vs {want_loss}");
    assert_eq!(grads.projector.len(), want.len());
    for (name, got) in &grads.projector {
        let (_, w) = &want[name];
        assert_eq!(got.len(), w.len(), "{name}");
        let scale = w.iter().map(|v| v.abs()).fold(0f32, f32::max);
        let err = got.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
        eprintln!("{name}: max error {err:e} of max |grad| {scale}");
        assert!(err < GRAD_TOL, "{name}: max error {err} of the tensor's max |grad| {scale}");
    }
}
