//! CPU reference ops at model shapes, with achieved GFLOP/s or GB/s printed next to this machine's
//! peak estimate (cores x clock x SIMD FMA width, from /proc/cpuinfo). The CPU backend is the
//! reference, not the fast path; these numbers say how long the reference tests take to run.
//!
//!   cargo bench --bench cpu_ops

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use stic::backend::cpu;

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Peak f32 GFLOP/s estimate: cores x GHz x flops/cycle (2 FMA units x lanes x 2).
fn peak_gflops() -> f64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mhz = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(2000.0);
    let lanes = if info.contains("avx512f") { 16.0 } else if info.contains("avx2") { 8.0 } else { 4.0 };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    cores * mhz / 1000.0 * 2.0 * lanes * 2.0
}

/// Time `f` over `iters` runs and print the rate once.
fn report(name: &str, work: f64, unit: &str, elapsed: Duration, iters: u64, roof: &str) {
    let per = elapsed.as_secs_f64() / iters as f64;
    println!("{name}: {:.3} ms, {:.1} {unit} ({roof})", per * 1e3, work / per / 1e9);
}

fn bench_matmul(c: &mut Criterion) {
    let peak = peak_gflops();
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10);
    for &(m, k, n) in &[(64usize, 4096usize, 4096usize), (577, 1024, 4096)] {
        let x = rand_vec(m * k, 1);
        let w = rand_vec(n * k, 2);
        let flops = 2.0 * (m * k * n) as f64;
        g.bench_function(format!("{m}x{k}x{n}"), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(cpu::matmul_t(&x, &w, m, k, n));
                }
                let e = t.elapsed();
                report(&format!("matmul/{m}x{k}x{n}"), flops, "GFLOP/s", e, iters, &format!("peak est. {peak:.0} GFLOP/s"));
                e
            })
        });
    }
    g.finish();
}

fn bench_rmsnorm(c: &mut Criterion) {
    let (t, ch) = (512usize, 4096usize);
    let x = rand_vec(t * ch, 3);
    let w = rand_vec(ch, 4);
    let bytes = (2 * t * ch * 4) as f64;
    let mut g = c.benchmark_group("rmsnorm");
    g.sample_size(20);
    g.bench_function(format!("{t}x{ch}"), |b| {
        b.iter_custom(|iters| {
            let s = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(cpu::rmsnorm(&x, &w, 1e-5));
            }
            let e = s.elapsed();
            report(&format!("rmsnorm/{t}x{ch}"), bytes, "GB/s", e, iters, "DRAM bandwidth roof");
            e
        })
    });
    g.finish();
}

fn bench_attention(c: &mut Criterion) {
    let peak = peak_gflops();
    // One CLIP ViT-L tile: T = 577, H = 16, D = 64, bidirectional.
    let (t, h, d) = (577usize, 16usize, 64usize);
    let q = rand_vec(t * h * d, 5);
    let k = rand_vec(t * h * d, 6);
    let v = rand_vec(t * h * d, 7);
    let flops = 4.0 * (t * t * h * d) as f64;
    let mut g = c.benchmark_group("attention");
    g.sample_size(10);
    g.bench_function(format!("clip_tile_T{t}_H{h}_D{d}"), |b| {
        b.iter_custom(|iters| {
            let s = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(cpu::attention(&q, &k, &v, t, t, h, h, d, 0, cpu::AttnMask::Bidirectional));
            }
            let e = s.elapsed();
            report(&format!("attention/T{t}"), flops, "GFLOP/s", e, iters, &format!("peak est. {peak:.0} GFLOP/s"));
            e
        })
    });
    g.finish();
}

criterion_group!(benches, bench_matmul, bench_rmsnorm, bench_attention);
criterion_main!(benches);
