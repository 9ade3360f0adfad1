//! CSR's sentence-level search (`stic csr-prefs`'s tree, CLIP excluded): one prompt's whole tree
//! with the official settings, with the parent's KV cache reused across its children
//! (`csr_search/kv_reuse`) and with every expansion re-prefilling image + context, as the official
//! code does (`csr_search/no_kv_reuse`). Throughput: elements = candidate sentences made.
//!
//!   cargo bench --bench csr_search                                  # CPU, tiny fixture checkpoint
//!   STIC_CSR_BENCH_DEVICE=cuda cargo bench --features cuda --bench csr_search
//!   STIC_CSR_BENCH_MODEL=DIR [STIC_CSR_BENCH_RANDOM=SEED] ...       # another checkpoint (random
//!                                                                   # weights of its config.json)
//! Settings: STIC_CSR_BENCH_MAX_NEW (default 70), STIC_CSR_BENCH_MAX_CHARS (default 1024),
//! STIC_CSR_BENCH_SENTENCE_END (default: the tokenizer's "." id).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stic::backend::{Backend, Device};
use stic::csr::tree::{search, TreeParams};
use stic::generate::{with_pipeline, Pipeline, WithPipeline};

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

struct Bench<'a>(&'a mut Criterion);

impl WithPipeline for Bench<'_> {
    type Out = ();
    fn run<B: Backend>(self, pipe: Pipeline<B>) -> stic::Result<()> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let img = stic::image::load_image(&root.join("images/wide.jpg"))?;
        let ids = pipe.prompt_ids(&pipe.format_prompt("Describe the following image.", 1, false), 1)?;
        let end = match std::env::var("STIC_CSR_BENCH_SENTENCE_END").ok().and_then(|v| v.parse().ok()) {
            Some(t) => t,
            None => pipe.tokenizer.token_id(".").unwrap_or(2),
        };
        let mut p = TreeParams::csr(end, pipe.model.cfg.pad_token_id.unwrap_or(0), pipe.eos.clone());
        p.beam.max_new_tokens = env_usize("STIC_CSR_BENCH_MAX_NEW", 70);
        p.max_chars = env_usize("STIC_CSR_BENCH_MAX_CHARS", 1024);
        let mut g = self.0.benchmark_group("csr_search");
        g.sample_size(10).measurement_time(Duration::from_secs(20));
        for reuse in [true, false] {
            p.kv_reuse = reuse;
            let tree = search(&pipe, &ids, pipe.embed(&ids, std::slice::from_ref(&img))?.0, &p)?;
            println!(
                "csr_search/{}: {} candidates in {} beam searches, {} beam-tokens decoded per tree",
                if reuse { "kv_reuse" } else { "no_kv_reuse" },
                tree.candidates,
                tree.calls,
                tree.decoded
            );
            g.throughput(Throughput::Elements(tree.candidates as u64));
            g.bench_function(if reuse { "kv_reuse" } else { "no_kv_reuse" }, |b| {
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        let x = pipe.embed(&ids, std::slice::from_ref(&img)).expect("embed").0;
                        std::hint::black_box(search(&pipe, &ids, x, &p).expect("search"));
                    }
                    t.elapsed()
                })
            });
        }
        g.finish();
        Ok(())
    }
}

fn bench(c: &mut Criterion) {
    let model = std::env::var("STIC_CSR_BENCH_MODEL").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava15_tiny"));
    let device: Device = std::env::var("STIC_CSR_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into()).parse().expect("STIC_CSR_BENCH_DEVICE: cpu or cuda[:N]");
    let random = std::env::var("STIC_CSR_BENCH_RANDOM").ok().and_then(|v| v.parse().ok());
    with_pipeline(device, &model, random, None, Bench(c)).expect("csr_search bench");
}

criterion_group!(benches, bench);
criterion_main!(benches);
