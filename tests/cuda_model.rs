//! The whole model on the CUDA backend (bf16) against the CPU backend (f32, itself checked
//! against transformers in tests/llava_parity.rs). Built only with `--features cuda`; without a
//! device each test prints `skipped: no CUDA device` and passes
//! (with `STIC_REQUIRE_CUDA=1` it fails: `common::cuda`).
//!
//! What is compared (tolerances in docs/TOLERANCES.md, "model on CUDA"):
//! - image features and the logits at the last prompt position: max |gpu - cpu| <= 5e-2 of the
//!   CPU tensor's rms (bf16 storage between ops: each op rounds to 2^-9 relative; a few layers of
//!   that, plus f32-vs-tensor-core summation order);
//! - greedy ids, batched: the same number of sequences, each equal, except that a sequence may
//!   part ways with the CPU at a near-tie, where the CPU logit of the GPU's token is within
//!   `NEAR_TIE` x rms of the CPU's best (twice the logit tolerance: two logits each within it can
//!   swap order there, and nowhere else); after that point the sequences are no longer comparable.
//!   The bound is fixed: it does not grow with the error the run measures.
//!
//! Under emulation (`STIC_CUDA_EMU=1`) the 7B-shaped model keeps the attention shapes (H 32 /
//! Hkv 8, D 128) with narrower layers and shorter prompts, and `attention_packed` runs on shorter
//! sequences (`stic::backend::cuda::emulated`).
#![cfg(feature = "cuda")]

mod common;

use common::*;
use stic::backend::cuda::Cuda;
use stic::backend::cpu::Bf16Cpu;
use stic::backend::{Backend, Cpu};
use stic::generate::{Pipeline, SamplingParams};


fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt() as f32
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The wiring tolerance of `attention_packed_cuda_matches_cpu`: max |gpu - cpu| <= TOL x rms(cpu)
/// (docs/TOLERANCES.md).
const TOL: f32 = 5e-2;
/// The whole-model rule (`assert_model_close`, docs/TOLERANCES.md).
const MODEL_FACTOR: f32 = 2.0;
const MODEL_SLACK: f32 = 1e-2;

/// Where greedy decoding may part ways: a CPU logit margin of at most NEAR_TIE x rms(CPU logits)
/// between the CPU's token and the GPU's, i.e. 2 x TOL: each of the two logits may be off by
/// TOL x rms on the GPU, so only a margin below twice that can reverse their order.
const NEAR_TIE: f32 = 2.0 * TOL;

/// The whole-model rule (flash-attention's): the CUDA engine's max error against the f32 CPU
/// backend at most `MODEL_FACTOR` x that of the plain same-precision implementation, the CPU
/// backend with bf16 storage (`cpu::Bf16Cpu`), plus `MODEL_SLACK` x rms for the roundings inside
/// fused kernels that the plain implementation does not make (FA2's bf16 P) and for the luck of
/// the draw between two rounding sequences. Returns the max error.
fn assert_model_close(what: &str, gpu: &[f32], bf16_cpu: &[f32], cpu: &[f32]) -> f32 {
    let err = max_abs_diff(gpu, cpu);
    let err_ref = max_abs_diff(bf16_cpu, cpu);
    let tol = MODEL_FACTOR * err_ref + MODEL_SLACK * rms(cpu);
    eprintln!("{what}: max |gpu - cpu| = {err:.4e}, bf16 CPU {err_ref:.4e} ({:.2}x), rms {:.4e}", err / err_ref.max(f32::MIN_POSITIVE), rms(cpu));
    assert!(err <= tol, "{what}: max |gpu - cpu| = {err} > {tol} = {MODEL_FACTOR} x {err_ref} (the bf16-storage CPU's error) + {MODEL_SLACK} x rms {}", rms(cpu));
    err
}

/// Asserts |gpu - cpu| <= TOL rms(cpu) and returns the max error.
fn assert_close(what: &str, gpu: &[f32], cpu: &[f32]) -> f32 {
    let err = max_abs_diff(gpu, cpu);
    let tol = TOL * rms(cpu);
    assert!(err <= tol, "{what}: max |gpu - cpu| = {err} > {tol} ({TOL} of rms {})", rms(cpu));
    err
}

/// Greedy ids of both backends for the same prompts (as token ids: `prompts[b]`, with `images`
/// features already in the embeddings made by `embed`), compared as the module doc says.
fn compare_greedy<B: Backend>(
    what: &str,
    cpu: &Pipeline<Cpu>,
    gpu: &Pipeline<B>,
    cpu_inputs: Vec<stic::Tensor>,
    gpu_inputs: Vec<B::Tensor>,
    max_new_tokens: usize,
) {
    let params = SamplingParams { max_new_tokens, ..Default::default() };
    let n = cpu_inputs.len();
    let want = cpu.generate_from_embeds(cpu_inputs.clone(), &params).unwrap();
    let got = gpu.generate_from_embeds(gpu_inputs, &params).unwrap();
    assert_eq!(want.len(), n, "{what}: the CPU returned {} sequences for {n} prompts", want.len());
    assert_eq!(got.len(), n, "{what}: the GPU returned {} sequences for {n} prompts", got.len());
    for (b, (w, g)) in want.iter().zip(&got).enumerate() {
        let Some(j) = w.iter().zip(g).position(|(a, c)| a != c) else {
            assert_eq!(w.len(), g.len(), "{what} sequence {b}: {w:?} vs {g:?}");
            continue;
        };
        // The CPU's logits at the step where they part: prompt + the common prefix.
        let prefix: Vec<u32> = w[..j].to_vec();
        let x = if prefix.is_empty() {
            cpu_inputs[b].clone()
        } else {
            stic::Tensor::cat_rows(&[&cpu_inputs[b], &cpu.model.decoder.embed(&prefix).unwrap()]).unwrap()
        };
        let logits = last_logits(cpu, x);
        let margin = logits[w[j] as usize] - logits[g[j] as usize];
        let bound = NEAR_TIE * rms(&logits);
        assert!(
            margin <= bound,
            "{what} sequence {b} parts at token {j}: cpu {} vs gpu {}, a CPU logit margin of {margin} > {bound} ({NEAR_TIE} x rms: not a near-tie)\ncpu {w:?}\ngpu {g:?}",
            w[j],
            g[j]
        );
        eprintln!("{what} sequence {b}: parts at token {j} at a near-tie (margin {margin} <= {bound})");
    }
}

fn tiny_model_matches_cpu(name: &str) {
    let Some(be) = cuda(Cuda::new) else { return };
    let dir = fixtures().join(name);
    let cpu = Pipeline::load(&dir).unwrap();
    let gpu = Pipeline::load_on(&be, &dir, None, None).unwrap();
    let half = Pipeline::load_on(&Bf16Cpu, &dir, None, None).unwrap();
    let exp = read_json(&format!("expected/{name}.json"));
    let reqs = case_requests(exp["cases"].as_array().unwrap());
    let (mut cpu_inputs, mut gpu_inputs) = (Vec::new(), Vec::new());
    for (i, r) in reqs.iter().enumerate() {
        let ids = cpu.prompt_ids(&r.prompt, r.images.len()).unwrap();
        let px = stic::image::preprocess(&r.images[0], &cpu.processor).unwrap();
        let fc = cpu.model.image_features(&px).unwrap();
        let fg = gpu.model.image_features(&px).unwrap();
        let fh = half.model.image_features(&px).unwrap();
        assert_model_close(&format!("{name} case {i}: image features"), be.download(&fg).unwrap().data(), fh.data(), fc.data());
        let (xc, _) = cpu.embed(&ids, &r.images).unwrap();
        let (xg, _) = gpu.embed(&ids, &r.images).unwrap();
        let (xh, _) = half.embed(&ids, &r.images).unwrap();
        assert_model_close(&format!("{name} case {i}: last logits"), &last_logits(&gpu, xg.clone()), &last_logits(&half, xh), &last_logits(&cpu, xc.clone()));
        cpu_inputs.push(xc);
        gpu_inputs.push(xg);
    }
    compare_greedy(name, &cpu, &gpu, cpu_inputs, gpu_inputs, 8);
}

#[test]
fn llava_next_tiny_cuda_matches_cpu() {
    tiny_model_matches_cpu("llava_next_tiny");
}

#[test]
fn llava15_tiny_cuda_matches_cpu() {
    tiny_model_matches_cpu("llava15_tiny");
}

/// A random model of the real llava-v1.6-mistral-7b config with 2 decoder layers: every 7B
/// shape (C 4096, H 32 / Hkv 8, D 128, F 14336, V 32064), text only, 3 prompts of different
/// lengths batched. Emulated: C 512 and F 1024 (the attention keeps H 32 / Hkv 8 / D 128 through
/// an explicit head_dim), prompts of 5, 77 and 130 tokens (3 query tiles), 8 new tokens.
#[test]
fn random_7b_shaped_model_cuda_matches_cpu() {
    let Some(be) = cuda(Cuda::new) else { return };
    let dir = std::env::temp_dir().join(format!("stic-cuda-7b-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = read_json("configs/llava-v1.6-mistral-7b-hf.json");
    cfg["text_config"]["num_hidden_layers"] = 2.into();
    let emu = stic::backend::cuda::emulated();
    if emu {
        let t = &mut cfg["text_config"];
        t["hidden_size"] = 512.into();
        t["head_dim"] = 128.into();
        t["intermediate_size"] = 1024.into();
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "generation_config.json"] {
        let src = fixtures().join("llava_next_tiny").join(f);
        if src.exists() {
            std::fs::copy(&src, dir.join(f)).unwrap();
        }
    }
    let cpu = Pipeline::load_on(&Cpu, &dir, Some(7), None).unwrap();
    let gpu = Pipeline::load_on(&be, &dir, Some(7), None).unwrap();
    let half = Pipeline::load_on(&Bf16Cpu, &dir, Some(7), None).unwrap();
    let mut rng = stic::rng::Rng::new(11);
    let (lens, new_tokens): (&[usize], usize) = if emu { (&[5, 77, 130], 8) } else { (&[5, 77, 300], 16) };
    let prompts: Vec<Vec<u32>> = lens.iter().map(|&n| (0..n).map(|_| 1 + rng.below(31_999) as u32).collect()).collect();
    let (mut cpu_inputs, mut gpu_inputs) = (Vec::new(), Vec::new());
    for (i, ids) in prompts.iter().enumerate() {
        let xc = cpu.model.decoder.embed(ids).unwrap();
        let xg = gpu.model.decoder.embed(ids).unwrap();
        let xh = half.model.decoder.embed(ids).unwrap();
        assert_model_close(&format!("random 7B prompt {i}: last logits"), &last_logits(&gpu, xg.clone()), &last_logits(&half, xh), &last_logits(&cpu, xc.clone()));
        cpu_inputs.push(xc);
        gpu_inputs.push(xg);
    }
    compare_greedy("random 7B", &cpu, &gpu, cpu_inputs, gpu_inputs, new_tokens);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `Backend::attention_packed` on CUDA (the tensor-core FlashAttention-2 forward for D 64 and 128,
/// the slotted-cache kernel with per-row key ranges for other head dims) against the CPU backend on
/// the same bf16 inputs, and against CUDA `attention` over `cpu::packed_rows` (the decoder's cache
/// path over the same keys). Tolerance: the model rule, 5e-2 of the CPU output's rms (each kernel
/// is checked against its f64 reference in `cuda_parity`; this checks the wiring: sequence
/// offsets, masks, head layout, the fallback's rows).
#[test]
fn attention_packed_cuda_matches_cpu() {
    use stic::backend::{cpu, PackedMask};
    let Some(be) = cuda(Cuda::new) else { return };
    let causal = PackedMask::Causal { window: None };
    // Emulated: the first three with 8 heads (groups of 4; MHA) and at most 150 rows a sequence.
    let emu = stic::backend::cuda::emulated();
    let big: [(usize, usize, usize, &[usize], PackedMask); 3] = if emu {
        [(8, 2, 128, &[1, 17, 150], causal), (8, 2, 128, &[130, 77], PackedMask::Causal { window: Some(64) }), (4, 4, 64, &[129, 129], PackedMask::Bidirectional)]
    } else {
        [(32, 8, 128, &[1, 17, 300], causal), (32, 8, 128, &[200, 77], PackedMask::Causal { window: Some(64) }), (16, 16, 64, &[577, 577], PackedMask::Bidirectional)]
    };
    let cases: &[(usize, usize, usize, &[usize], PackedMask)] = &[
        big[0],
        big[1],
        big[2],
        (4, 1, 64, &[130, 0, 65], causal),
        (4, 2, 8, &[5, 0, 9], causal),
        (4, 4, 80, &[33, 20], PackedMask::Bidirectional),
        (4, 2, 96, &[40, 3], PackedMask::Causal { window: Some(7) }),
    ];
    let mut rng = stic::rng::Rng::new(41);
    for &(h, hkv, d, lens, mask) in cases {
        let t: usize = lens.iter().sum();
        let mut rand = |n: usize, a: f64| stic::Tensor::new((0..n).map(|_| (a * (2.0 * rng.uniform() - 1.0)) as f32).collect(), &[t, n / t]).unwrap();
        let (qg, kg, vg) = (be.upload(&rand(t * h * d, 2.0)).unwrap(), be.upload(&rand(t * hkv * d, 2.0)).unwrap(), be.upload(&rand(t * hkv * d, 1.0)).unwrap());
        // The CPU sees the bf16 values the GPU holds.
        let (qc, kc, vc) = (be.download(&qg).unwrap(), be.download(&kg).unwrap(), be.download(&vg).unwrap());
        let want = Cpu.attention_packed(&qc, &kc, &vc, lens, mask, h, hkv, d).unwrap();
        let got = be.download(&be.attention_packed(&qg, &kg, &vg, lens, mask, h, hkv, d).unwrap()).unwrap();
        let what = format!("attention_packed lens {lens:?} {mask:?} H={h} Hkv={hkv} D={d}");
        let err = assert_close(&what, got.data(), want.data());
        let rows = cpu::packed_rows(lens, mask);
        let via_cache = be.download(&be.attention(&qg, &kg, &vg, &rows, h, hkv, d, t).unwrap()).unwrap();
        let err_cache = assert_close(&format!("{what}, cache kernel over the same rows"), via_cache.data(), want.data());
        eprintln!("{what}: max |gpu - cpu| {err:e} (cache kernel {err_cache:e}), rms {}", rms(want.data()));
    }
}

/// A checkpoint with head dim 64 in both towers (the tiny LLaVA-NeXT fixture's layout, random
/// weights): the vision tower's bidirectional attention and the decoder's causal prefill both run
/// the tensor-core FlashAttention-2 forward (`attention_fwd_d64`), and the image features and
/// logits agree with the CPU by the whole-model rule. Under emulation the fake driver's launch
/// counter shows that kernel ran for each tower (on a GPU the head dim alone selects it:
/// `attention_train_head_dim_supported`).
#[test]
fn head_dim_64_towers_use_flash_attention_2() {
    let Some(be) = cuda(Cuda::new) else { return };
    let dir = std::env::temp_dir().join(format!("stic-cuda-d64-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixtures().join("llava_next_tiny");
    let mut cfg = read_json("llava_next_tiny/config.json");
    let v = &mut cfg["vision_config"];
    v["hidden_size"] = 128.into();
    v["num_attention_heads"] = 2.into();
    v["intermediate_size"] = 256.into();
    let t = &mut cfg["text_config"];
    t["hidden_size"] = 128.into();
    t["num_attention_heads"] = 2.into();
    t["num_key_value_heads"] = 1.into();
    t["head_dim"] = 64.into();
    t["intermediate_size"] = 256.into();
    std::fs::write(dir.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    for f in std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()) {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        if name != "config.json" && !name.contains("safetensors") && f.is_file() {
            std::fs::copy(&f, dir.join(&name)).unwrap();
        }
    }
    let cpu = Pipeline::load_on(&Cpu, &dir, Some(5), None).unwrap();
    let gpu = Pipeline::load_on(&be, &dir, Some(5), None).unwrap();
    let half = Pipeline::load_on(&Bf16Cpu, &dir, Some(5), None).unwrap();
    // FA2's kernel: the sm_80 one, or on 9.x the Hopper one (`attention_fwd` picks it there).
    let fa2 = if be.device().compute_capability().0 == 9 { "attention_fwd_hopper_d64" } else { "attention_fwd_d64" };
    let count = || stic::backend::cuda::emulated_launch_count(fa2);
    let exp = read_json("expected/llava_next_tiny.json");
    let r = &case_requests(exp["cases"].as_array().unwrap())[0];
    let px = stic::image::preprocess(&r.images[0], &cpu.processor).unwrap();
    let c0 = count();
    let fg = gpu.model.image_features(&px).unwrap();
    let fg = be.download(&fg).unwrap();
    let c1 = count();
    assert_model_close("d64 image features", fg.data(), half.model.image_features(&px).unwrap().data(), cpu.model.image_features(&px).unwrap().data());
    let ids = cpu.prompt_ids(&r.prompt, r.images.len()).unwrap();
    let (xc, _) = cpu.embed(&ids, &r.images).unwrap();
    let (xh, _) = half.embed(&ids, &r.images).unwrap();
    let c2 = count();
    let (xg, _) = gpu.embed(&ids, &r.images).unwrap();
    let c3 = count();
    let lg = last_logits(&gpu, xg);
    let c4 = count();
    assert_model_close("d64 last logits", &lg, &last_logits(&half, xh), &last_logits(&cpu, xc));
    if let (Some(c0), Some(c1), Some(c2), Some(c3), Some(c4)) = (c0, c1, c2, c3, c4) {
        assert!(c1 > c0, "the vision tower did not launch {fa2} ({c0} -> {c1})");
        assert!(c3 > c2, "embedding the image did not launch {fa2} ({c2} -> {c3})");
        assert!(c4 > c3, "the decoder's prefill did not launch {fa2} ({c3} -> {c4})");
    } else {
        assert!(!stic::backend::cuda::emulated(), "the emulated device's launch counter is missing");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CLIP scorer (`model::clip_model`, issue #16) on CUDA: image and text embeddings and the
/// scores against the CPU's (which match transformers within 1e-4: tests/clip_score.rs), by the
/// whole-model rule against the bf16 CPU backend. The text tower is causal and EOS-pooled, the
/// vision tower bidirectional and CLS-pooled, both through the CUDA attention kernels.
#[test]
fn clip_scorer_cuda_matches_cpu() {
    use stic::model::clip_model::ClipModel;
    let Some(be) = cuda(Cuda::new) else { return };
    let dir = fixtures().join("clip_tiny");
    let cpu = ClipModel::load(&dir).unwrap();
    let half = ClipModel::load_on(&Bf16Cpu, &dir).unwrap();
    let gpu = ClipModel::load_on(&be, &dir).unwrap();
    let img = stic::image::load_image(&fixtures().join("images/tall.png")).unwrap();
    let texts: Vec<String> = ["a red square.", "two dogs playing in the snow under a large tree", "x"].iter().map(|s| s.to_string()).collect();
    let e = |m: &ClipModel<_>| -> (Vec<f32>, Vec<f32>) { (m.image_embeds(&img).unwrap().data().to_vec(), m.text_embeds(&texts).unwrap().data().to_vec()) };
    let (ic, tc) = e(&cpu);
    let (ih, th) = (half.image_embeds(&img).unwrap().data().to_vec(), half.text_embeds(&texts).unwrap().data().to_vec());
    let (ig, tg) = (gpu.image_embeds(&img).unwrap().data().to_vec(), gpu.text_embeds(&texts).unwrap().data().to_vec());
    assert_model_close("clip image embeds", &ig, &ih, &ic);
    assert_model_close("clip text embeds", &tg, &th, &tc);
    let (sc, sh, sg) = (cpu.scores(&img, &texts).unwrap(), half.scores(&img, &texts).unwrap(), gpu.scores(&img, &texts).unwrap());
    assert_model_close("clip scores", &sg, &sh, &sc);
}
