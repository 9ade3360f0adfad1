//! CPU reference ops at model shapes. Criterion's throughput line is the achieved rate: for
//! FLOP-bound ops one "element" is one FLOP (so Gelem/s = GFLOP/s), for bandwidth-bound ops it is
//! bytes (GB/s). Each bench first prints its roof: this machine's peak estimate (cores x clock x
//! SIMD FMA width, from /proc/cpuinfo) for FLOPs, a measured large-copy bandwidth for bytes. The
//! CPU backend is the reference, not the fast path; these numbers say how long reference runs take.
//!
//!   cargo bench --bench cpu_ops

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stic::backend::cpu;

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut r = stic::rng::Rng::new(seed);
    (0..n).map(|_| r.uniform() as f32 - 0.5).collect()
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

/// Measured copy bandwidth (bytes read + written per second) of a 256 MiB buffer.
fn copy_gbps() -> f64 {
    let src = vec![1u8; 256 << 20];
    let mut dst = vec![0u8; 256 << 20];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * src.len() as f64 / best / 1e9
}

/// Time `iters` runs of `f` (criterion's iter_custom: no per-iteration overhead).
fn timed(iters: u64, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed()
}

fn bench_matmul(c: &mut Criterion) {
    let peak = peak_gflops();
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10);
    println!("matmul roof: peak est. {peak:.0} GFLOP/s at the reported clock (boost exceeds it; thrpt below: Gelem/s = GFLOP/s)");
    for &(m, k, n) in &[(64usize, 4096usize, 4096usize), (577, 1024, 4096)] {
        let x = rand_vec(m * k, 1);
        let w = rand_vec(n * k, 2);
        g.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        g.bench_function(format!("{m}x{k}x{n}"), |b| {
            b.iter_custom(|iters| timed(iters, || drop(std::hint::black_box(cpu::matmul_t(&x, &w, m, k, n)))))
        });
    }
    g.finish();
}

fn bench_rmsnorm(c: &mut Criterion) {
    let (t, ch) = (512usize, 4096usize);
    let x = rand_vec(t * ch, 3);
    let w = rand_vec(ch, 4);
    println!("rmsnorm roof: measured copy bandwidth {:.1} GB/s (thrpt below: bytes read + written)", copy_gbps());
    let mut g = c.benchmark_group("rmsnorm");
    g.sample_size(20);
    g.throughput(Throughput::Bytes((2 * t * ch * 4) as u64));
    g.bench_function(format!("{t}x{ch}"), |b| {
        b.iter_custom(|iters| timed(iters, || drop(std::hint::black_box(cpu::rmsnorm(&x, &w, 1e-5)))))
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
    println!("attention roof: peak est. {peak:.0} GFLOP/s (thrpt below: Gelem/s = GFLOP/s)");
    let mut g = c.benchmark_group("attention");
    g.sample_size(10);
    g.throughput(Throughput::Elements(4 * (t * t * h * d) as u64));
    g.bench_function(format!("clip_tile_T{t}_H{h}_D{d}"), |b| {
        b.iter_custom(|iters| {
            timed(iters, || drop(std::hint::black_box(cpu::attention(&q, &k, &v, t, t, h, h, d, 0, cpu::AttnMask::Bidirectional))))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_matmul, bench_rmsnorm, bench_attention);
criterion_main!(benches);
