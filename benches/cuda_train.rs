//! LoRA DPO training on the GPU at the real shape: llava-v1.6-mistral-7b with random bf16 weights
//! (no download), STIC's adapters (r = 128, alpha = 256 on every projection of the decoder).
//! - `dpo_step/anyres+200+200/{lora,lora+projector}`: one pair per optimiser step (LoRA only, as
//!   TRL's baseline; then with the projector trained too, as STIC's stage 1), packed as [image + prompt | chosen
//!   | rejected] (one 672x672 AnyRes image, ~2,900 feature rows; ~200 tokens per response):
//!   forward, per-layer recomputation, backward, clipping norm and the fused AdamW. Reported:
//!   pairs/s, tokens/s, MFU (model FLOPs over the dense bf16 peak, 989 TFLOP/s on H100 SXM) and
//!   the peak memory of a step (the default memory pool's high-water mark).
//!   Model FLOPs of a pair of T tokens through N decoder parameters (frozen base, LoRA):
//!   forward 2NT + backward through the frozen weights (dX only) 2NT + attention (forward
//!   4 T_q T_k H D over the visible pairs, backward 2.5x that) + the LoRA GEMMs (6 r (K + N) T
//!   per projection) + the lm_head on the response rows (2 x 3 x R V C); the recomputed forward
//!   is not counted (hardware FLOPs are ~4/3 of these). The vision tower's forward (frozen, once
//!   per pair) is not counted either.
//! - `logprob/T=4096,V=32064,C=4096` forward and backward against the tensor-core peak (the
//!   backward runs 2 GEMMs per chunk for dh (hi/lo split) and recomputes the logits: 3 GEMMs).
//! - `lora_fwd`, `lora_bwd` at q_proj (4096 x 4096, r = 128) and gate_proj (14336 x 4096)
//!   shapes for T = 3,300 rows.
//!
//! TRL's DPOTrainer with PEFT, the side-by-side baseline, runs from scripts/baselines (see
//! docs/PERF.md). Without a CUDA device this prints `skipped: no CUDA device` and exits 0.
//! Run: `cargo bench --features cuda --bench cuda_train`.

mod common;

use std::time::{Duration, Instant};

use criterion::Criterion;
use stic::backend::cuda::{cuda_available, Cuda, CudaDevice};
use stic::backend::Backend;
use stic::generate::Pipeline;
use stic::train::cuda::CudaLearner;
use stic::train::Pair;
use stic::train::run_loop::{Learner, TrainArgs};

/// STIC's stage-1 settings (`stic run`'s DPO defaults: r 128, alpha 256 on every projection,
/// beta 0.1, the 1/1024 likelihood term, mm_projector_lr 2e-5).
fn stic_args() -> TrainArgs {
    stic::run::stic_dpo_defaults(0, true)
}

/// About `n` tokens of plain English-like text (the tokenizer makes ~1 token per word here).
fn text(n: usize, seed: usize) -> String {
    const WORDS: [&str; 16] = ["the", "image", "shows", "a", "red", "square", "next", "to", "blue", "circle", "on", "white", "background", "with", "soft", "light"];
    (0..n).map(|i| WORDS[(i * 7 + seed * 3 + i / 5) % WORDS.len()]).collect::<Vec<_>>().join(" ")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if !cuda_available() {
        println!("skipped: no CUDA device");
        return;
    }
    let be = Cuda::new(0).expect("opening GPU 0");
    let dev = be.device().clone();
    let peak = dev.peak_bf16_tflops();
    let mut c = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(20)).configure_from_args();
    let mut rows: Vec<String> = Vec::new();
    let pct = |tflops: f64| peak.map_or("n/a".to_string(), |p| format!("{:.0}%", 100.0 * tflops / p));
    let peak_s = peak.map_or("n/a".to_string(), |p| format!("{p:.0} TFLOP/s"));

    kernel_benches(&mut c, &dev, &mut rows, &pct, &peak_s);

    let dir = common::model_dir("train");
    let t0 = Instant::now();
    let pipe = Pipeline::load_on(&be, &dir, Some(0), None).expect("building the random 7B model");
    let cfg = pipe.model.cfg.text.clone();
    println!("device: {}; model built in {:.1} s", be.describe(), t0.elapsed().as_secs_f64());
    let pair = Pair {
        prompt: pipe.format_prompt("Describe the image in detail, step by step.", 1, false),
        images: vec![common::anyres_image()],
        chosen: text(200, 1),
        rejected: text(200, 2),
    };
    let args = stic_args();
    // The projector's training is switched on and off per bench below.
    let mut learner = CudaLearner::new(pipe, &TrainArgs { projector_lr: None, ..args.clone() }).expect("the GPU learner");
    learner.init_lora(&args.lora, 0).expect("fresh adapters");
    let reference = learner.reference_logps(&pair).expect("reference log-probs");
    let step = |learner: &mut CudaLearner, projector_lr: f32| -> usize {
        let (_, tokens) = learner.dpo_pair(&pair, reference, args.beta, args.sft_weight, 1.0, None).expect("DPO pair");
        let norm = learner.grad_norm().expect("norm");
        let coef = args.max_grad_norm / (norm + 1e-6);
        learner.step(if coef < 1.0 { coef as f32 } else { 1.0 }, args.lr, projector_lr).expect("AdamW");
        tokens
    };
    // LoRA only (as TRL's baseline), then with the projector trained as well (STIC's stage 1,
    // mm_projector_lr 2e-5).
    for projector in [false, true] {
        learner.train_projector(projector).expect("projector state");
        let what = if projector { "LoRA + projector" } else { "LoRA" };
        dev.reset_peak_memory().expect("memory pool");
        let t = step(&mut learner, args.projector_lr.unwrap_or(2e-5));
        dev.synchronize().expect("sync");
        let peak_mem = dev.peak_memory().expect("memory pool");
        let mut secs = Vec::new();
        c.bench_function(&format!("dpo_step/anyres+200+200/{}", if projector { "lora+projector" } else { "lora" }), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    step(&mut learner, args.projector_lr.unwrap_or(2e-5));
                }
                dev.synchronize().expect("sync");
                let d = start.elapsed();
                secs.push(d.as_secs_f64() / iters as f64);
                d
            })
        });
        let s = median(secs);
        // Model FLOPs (see the module docs).
        let (cdim, f, v) = (cfg.hidden_size as f64, cfg.intermediate_size as f64, cfg.vocab_size as f64);
        let (h, d) = (cfg.num_attention_heads as f64, cfg.head_dim as f64);
        let kvd = (cfg.num_key_value_heads * cfg.head_dim) as f64;
        let qd = h * d;
        let layer_params = cdim * (qd + 2.0 * kvd) + qd * cdim + 3.0 * cdim * f;
        let n_params = cfg.num_hidden_layers as f64 * layer_params;
        let tf = t as f64;
        let (resp, prefix) = (400.0f64, tf - 400.0);
        // Visible (query, key) pairs under the shared-prefix mask: the causal prefix, then each
        // response over the prefix and its own causal part.
        let visible = prefix * prefix / 2.0 + 2.0 * (200.0 * prefix + 200.0 * 200.0 / 2.0);
        let attn = cfg.num_hidden_layers as f64 * 4.0 * visible * h * d * (1.0 + 2.5);
        let r = args.lora.r as f64;
        let lora = cfg.num_hidden_layers as f64 * 6.0 * r * ((cdim + qd) + 2.0 * (cdim + kvd) + (qd + cdim) + 3.0 * (cdim + f)) * tf;
        let flops = 4.0 * n_params * tf + attn + lora + 6.0 * resp * v * cdim;
        let tflops = flops / s / 1e12;
        rows.push(format!(
            "| DPO step ({what}), 1 pair ({t} tokens: AnyRes image + prompt, 2 x ~200-token responses), r = 128 | {:.0} ms | {:.2} pairs/s, {:.0} tokens/s, {tflops:.0} TFLOP/s | {peak_s} | {} MFU |",
            s * 1e3,
            1.0 / s,
            tf / s,
            pct(tflops)
        ));
        rows.push(format!(
            "| DPO step ({what}), peak memory (stream-ordered pool high-water mark, weights included) | {} | | 40 GB target | |",
            peak_mem.map_or("n/a (no memory pools)".to_string(), |b| format!("{:.1} GB", b as f64 / 1e9))
        ));
    }

    let table = format!(
        "# CUDA training benchmarks\n\n{}; random llava-v1.6-mistral-7b weights (bf16); STIC's LoRA (r 128, alpha 256, all projections).\n\n| run | time | achieved | roofline | % |\n|---|---|---|---|---|\n{}\n",
        be.describe(),
        rows.join("\n")
    );
    println!("\n{table}");
    common::write_summary("cuda-train-bench.md", &table);
    let _ = std::fs::remove_dir_all(&dir);
}

/// logprob and LoRA kernels at the 7B training shapes.
fn kernel_benches(c: &mut Criterion, dev: &std::sync::Arc<CudaDevice>, rows: &mut Vec<String>, pct: &dyn Fn(f64) -> String, peak_s: &str) {
    let bf16 = |n: usize, seed: u64| -> stic::backend::cuda::DevBuf<u16> {
        let mut rng = stic::rng::Rng::new(seed);
        let host: Vec<u16> = (0..n).map(|_| half::bf16::from_f32(((rng.uniform() * 2.0 - 1.0) * 0.05) as f32).to_bits()).collect();
        dev.htod(&host).expect("upload")
    };
    let time = |c: &mut Criterion, name: &str, f: &mut dyn FnMut()| -> f64 {
        let mut secs = Vec::new();
        c.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    f();
                }
                dev.synchronize().expect("sync");
                let d = start.elapsed();
                secs.push(d.as_secs_f64() / iters as f64);
                d
            })
        });
        median(secs)
    };

    // logprob at (T, V, C) = (4096, 32064, 4096).
    let (t, v, cdim) = (4096usize, 32064usize, 4096usize);
    let (h, w) = (bf16(t * cdim, 1), bf16(v * cdim, 2));
    let targets = dev.htod(&(0..t).map(|i| ((i * 7919) % v) as u32).collect::<Vec<_>>()).expect("upload");
    let mut logp = dev.zeros::<f32>(t).expect("alloc");
    let mut lse = dev.zeros::<f32>(t).expect("alloc");
    let s = time(c, "logprob/fwd T=4096,V=32064,C=4096", &mut || {
        dev.logprob(&h.as_view(), &w.as_view(), &targets.as_view(), &mut logp.as_view_mut(), &mut lse.as_view_mut(), t, cdim, v).expect("logprob");
    });
    let gemm = 2.0 * (t * v * cdim) as f64;
    rows.push(format!("| logprob forward, T=4096 V=32064 C=4096 (memory O(T x 8192)) | {:.2} ms | {:.0} TFLOP/s | {peak_s} | {} |", s * 1e3, gemm / s / 1e12, pct(gemm / s / 1e12)));
    let dlogp = dev.htod(&vec![1.0f32 / t as f32; t]).expect("upload");
    let mut dh = dev.zeros::<f32>(t * cdim).expect("alloc");
    let s = time(c, "logprob/bwd T=4096,V=32064,C=4096", &mut || {
        dev.logprob_backward(&h.as_view(), &w.as_view(), &targets.as_view(), &lse.as_view(), &dlogp.as_view(), &mut dh.as_view_mut(), t, cdim, v, false).expect("logprob_backward");
    });
    rows.push(format!("| logprob backward (logits recomputed + hi/lo dh GEMMs: 3 GEMMs) | {:.2} ms | {:.0} TFLOP/s | {peak_s} | {} |", s * 1e3, 3.0 * gemm / s / 1e12, pct(3.0 * gemm / s / 1e12)));
    drop((h, w, dh));

    // LoRA at 7B shapes, T = 3300 rows, r = 128.
    for (name, k, n) in [("q_proj", 4096usize, 4096usize), ("gate_proj", 4096, 14336)] {
        let (m, r) = (3300usize, 128usize);
        let (x, wt, a, b) = (bf16(m * k, 3), bf16(n * k, 4), bf16(r * k, 5), bf16(n * r, 6));
        let mut y = dev.zeros::<u16>(m * n).expect("alloc");
        let mut u = dev.zeros::<f32>(m * r).expect("alloc");
        let s = time(c, &format!("lora_fwd/{name} M={m},K={k},N={n},r={r}"), &mut || {
            dev.lora_fwd(&x.as_view(), None, &wt.as_view(), &a.as_view(), &b.as_view(), 2.0, &mut y.as_view_mut(), &mut u.as_view_mut(), m, k, n, r).expect("lora_fwd");
        });
        let fl = 2.0 * (m * n * k) as f64 + 2.0 * (m * r * (k + n)) as f64;
        rows.push(format!("| lora_fwd {name} (M={m}, r={r}) | {:.3} ms | {:.0} TFLOP/s | {peak_s} | {} |", s * 1e3, fl / s / 1e12, pct(fl / s / 1e12)));
        let dy = bf16(m * n, 7);
        let mut dx = dev.zeros::<u16>(m * k).expect("alloc");
        let mut da = dev.zeros::<f32>(r * k).expect("alloc");
        let mut db = dev.zeros::<f32>(n * r).expect("alloc");
        let s = time(c, &format!("lora_bwd/{name} M={m},K={k},N={n},r={r}"), &mut || {
            dev.lora_bwd(&x.as_view(), &wt.as_view(), &a.as_view(), &b.as_view(), 2.0, &u.as_view(), &dy.as_view(), &mut dx.as_view_mut(), &mut da.as_view_mut(), &mut db.as_view_mut(), m, k, n, r, true, None)
                .expect("lora_bwd");
        });
        let fl = 2.0 * (m * n * k) as f64 + 2.0 * (m * r * (2 * k + 2 * n)) as f64;
        rows.push(format!("| lora_bwd {name} (dX, dA, dB) | {:.3} ms | {:.0} TFLOP/s | {peak_s} | {} |", s * 1e3, fl / s / 1e12, pct(fl / s / 1e12)));
    }
}
