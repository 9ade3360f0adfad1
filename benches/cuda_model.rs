//! The whole model on the GPU, llava-v1.6-mistral-7b shaped with random bf16 weights (no download):
//! - `prefill/anyres+64`: one AnyRes image (a 672x672 picture: base tile + 2x2 grid, about 2,900
//!   feature rows through CLIP ViT-L/14-336, the projector and the merge) plus a 64-token prompt,
//!   in tokens/s of the decoder's prefill; the vision tower is timed separately
//!   (`prefill/vision`), in images/s.
//! - `decode/B=1,8,64`: greedy decode steps after a 128-token prompt, in tokens/s against the
//!   weight-streaming roofline: one step reads every decoder weight once (14.2 GB in bf16 for this
//!   config) plus the KV cache, at the HBM bandwidth measured here (1 GiB device copy).
//!
//! Criterion times each sample with `iter_custom` (a sync at the end of each timed phase); the
//! summary table (achieved vs roofline) goes to stdout and to `target/cuda-model-bench.md`.
//! Without a CUDA device it prints `skipped: no CUDA device` and exits 0.
//! Run: `cargo bench --features cuda --bench cuda_model`.

mod common;

use std::time::Duration;

use criterion::Criterion;
use stic::backend::cuda::{cuda_available, Cuda};
use stic::backend::Backend;
use stic::generate::Pipeline;
use stic::perf::{prepare, run, Workload};

/// bf16 bytes of every decoder weight a decode step reads (the lm_head included, the embedding
/// table not: a step reads B of its rows).
fn decoder_weight_bytes(cfg: &stic::config::TextConfig) -> f64 {
    let (c, f, v) = (cfg.hidden_size as f64, cfg.intermediate_size as f64, cfg.vocab_size as f64);
    let (qd, kvd) = ((cfg.num_attention_heads * cfg.head_dim) as f64, (cfg.num_key_value_heads * cfg.head_dim) as f64);
    let layer = c * (qd + 2.0 * kvd) + qd * c + 3.0 * c * f + 2.0 * c;
    2.0 * (cfg.num_hidden_layers as f64 * layer + v * c + c)
}

fn main() {
    if !cuda_available() {
        println!("skipped: no CUDA device");
        return;
    }
    let be = Cuda::new(0).expect("opening GPU 0");
    let dev = be.device().clone();
    let bw = dev.measure_bandwidth().expect("measuring the HBM bandwidth");
    let dir = common::model_dir("model");
    let t0 = std::time::Instant::now();
    let pipe = Pipeline::load_on(&be, &dir, Some(0), None).expect("building the random 7B model");
    println!("device: {}; HBM {:.0} GB/s measured; model built in {:.1} s", be.describe(), bw / 1e9, t0.elapsed().as_secs_f64());
    let cfg = pipe.model.cfg.text.clone();
    let wbytes = decoder_weight_bytes(&cfg);
    let kv_row_bytes = (2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2) as f64;

    let mut c = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(10)).configure_from_args();
    let mut rows: Vec<String> = Vec::new();

    // Prefill: one AnyRes image + 64 tokens.
    let image = common::anyres_image();
    let w = Workload { batch: 1, prompt_len: 64, decode_steps: 0, image: Some(image.clone()), seed: 1 };
    let prep = prepare(&pipe, &w).expect("preparing the prefill");
    let n_rows = prep.rows_per_prompt();
    let mut prefill_s = Vec::new();
    c.bench_function(&format!("prefill/anyres+64 ({n_rows} rows)"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (p, _) = run(&pipe, &prep, 0, false).expect("prefill");
                total += Duration::from_secs_f64(p.ms / 1e3);
            }
            prefill_s.push(total.as_secs_f64() / iters as f64);
            total
        })
    });
    prefill_s.sort_by(f64::total_cmp);
    let p = prefill_s[prefill_s.len() / 2];
    // 2 x params x tokens (the attention's T^2 terms are small next to it at T ~ 3000).
    let flops = 2.0 * (wbytes / 2.0) * n_rows as f64;
    let peak = dev.peak_bf16_tflops();
    rows.push(format!(
        "| prefill, 1 AnyRes image + 64 tokens ({n_rows} rows) | {:.1} ms | {:.0} tokens/s, {:.0} TFLOP/s | {} | {} |",
        p * 1e3,
        n_rows as f64 / p,
        flops / p / 1e12,
        peak.map_or("n/a".into(), |t| format!("{t:.0} TFLOP/s")),
        peak.map_or("n/a".into(), |t| format!("{:.0}%", 100.0 * flops / p / 1e12 / t)),
    ));

    // The vision tower + projector + merge of that image, on its own.
    let mut vision_s = Vec::new();
    let px = stic::image::preprocess(&image, &pipe.processor).expect("preprocessing");
    c.bench_function("prefill/vision (5 tiles)", |b| {
        b.iter_custom(|iters| {
            let t = std::time::Instant::now();
            for _ in 0..iters {
                let f = pipe.model.image_features(&px).expect("image features");
                be.download(&f).expect("sync");
            }
            let d = t.elapsed();
            vision_s.push(d.as_secs_f64() / iters as f64);
            d
        })
    });
    vision_s.sort_by(f64::total_cmp);
    rows.push(format!("| vision tower + projector + merge, 5 tiles | {:.1} ms | {:.1} images/s | | |", vision_s[vision_s.len() / 2] * 1e3, 1.0 / vision_s[vision_s.len() / 2]));

    // Decode at batch 1, 8, 64 after 128-token prompts.
    for batch in [1usize, 8, 64] {
        let w = Workload { batch, prompt_len: 128, decode_steps: 0, image: None, seed: 2 };
        let prep = prepare(&pipe, &w).expect("preparing the decode");
        let mut step_s = Vec::new();
        c.bench_function(&format!("decode/B={batch}"), |b| {
            b.iter_custom(|iters| {
                // Chunks of at most 64 steps, each after a fresh prefill (not timed), so the KV
                // cache stays small whatever criterion asks for.
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let n = left.min(64);
                    let (_, d) = run(&pipe, &prep, n, false).expect("decode");
                    total += Duration::from_secs_f64(d.ms / 1e3);
                    left -= n;
                }
                step_s.push(total.as_secs_f64() / iters as f64);
                total
            })
        });
        step_s.sort_by(f64::total_cmp);
        let s = step_s[step_s.len() / 2];
        // Bytes per step: the weights once, the KV cache of every sequence (~160 positions).
        let bytes = wbytes + batch as f64 * 160.0 * kv_row_bytes;
        let roof = batch as f64 * bw / bytes;
        rows.push(format!(
            "| decode, batch {batch}, 128-token prompts | {:.2} ms/step | {:.1} tokens/s | {:.1} tokens/s ({:.1} GB/step at {:.0} GB/s) | {:.0}% |",
            s * 1e3,
            batch as f64 / s,
            roof,
            bytes / 1e9,
            bw / 1e9,
            100.0 * (batch as f64 / s) / roof
        ));
    }

    let table = format!(
        "# CUDA model benchmarks\n\n{}; random llava-v1.6-mistral-7b weights (bf16), HBM {:.0} GB/s measured.\n\n| run | time | achieved | roofline | % |\n|---|---|---|---|---|\n{}\n",
        be.describe(),
        bw / 1e9,
        rows.join("\n")
    );
    println!("\n{table}");
    common::write_summary("cuda-model-bench.md", &table);
    let _ = std::fs::remove_dir_all(&dir);
}
