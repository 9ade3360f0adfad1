//! The emulated CUDA device's own speed (issue #14): how fast the CPU runs the kernels under
//! `STIC_CUDA_EMU=1`, with the sanitizers on (the default) and off (`STIC_CUDA_EMU_SANITIZE=0`).
//!
//!   STIC_CUDA_EMU=1 cargo bench --features cuda --bench emu
//!
//! Without the emulated device it prints `skipped: STIC_CUDA_EMU=1 is not set` and exits 0 (on a
//! GPU, benches/cuda_ops.rs measures the same kernels). Bench names are `op/shape`; each reports
//! emulated GFLOP/s (the FA2 forward: 4 T^2 H D FLOPs per sequence, half of it causal) or GB/s
//! (rmsnorm: bytes read + written), as criterion's throughput.

use std::time::Duration;

use criterion::{Criterion, Throughput};
use stic::backend::cuda::{emulated, AttnFwdKernel, AttnTrainMask, CudaDevice, VarlenAttn};

fn bf16s(n: usize, seed: u64) -> Vec<u16> {
    let mut rng = stic::rng::Rng::new(seed);
    (0..n).map(|_| half::bf16::from_f32((2.0 * rng.uniform() - 1.0) as f32).to_bits()).collect()
}

fn main() {
    if !emulated() {
        println!("skipped: STIC_CUDA_EMU=1 is not set");
        return;
    }
    let dev = CudaDevice::new(0).expect("the emulated CUDA device");
    let sanitize = std::env::var("STIC_CUDA_EMU_SANITIZE").map_or(true, |v| v != "0");
    println!("device: {}; sanitizers {}", dev.name(), if sanitize { "on" } else { "off (STIC_CUDA_EMU_SANITIZE=0)" });
    let mut c = Criterion::default().warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_secs(3)).sample_size(10).configure_from_args();

    // The FA2 forward (attention_fwd_d64, the sm_80 tensor-core kernel): B=1, H=4, T=256, D=64.
    let (h, t, d) = (4usize, 256usize, 64usize);
    let (q, k, v) = (dev.htod(&bf16s(t * h * d, 1)).unwrap(), dev.htod(&bf16s(t * h * d, 2)).unwrap(), dev.htod(&bf16s(t * h * d, 3)).unwrap());
    let mut o = dev.zeros::<u16>(t * h * d).unwrap();
    let mut lse = dev.zeros::<f32>(t * h).unwrap();
    let cu = dev.htod(&stic::backend::cpu::cu_seqlens(&[t])).unwrap();
    for causal in [false, true] {
        let mask = if causal { AttnTrainMask::Causal { window: None } } else { AttnTrainMask::Bidirectional };
        let flops = (4 * t * t * h * d / if causal { 2 } else { 1 }) as u64;
        let mut g = c.benchmark_group("attention_fwd");
        g.throughput(Throughput::Elements(flops));
        g.bench_function(format!("B=1,H={h},T={t},D={d}{}", if causal { ",causal" } else { "" }), |b| {
            b.iter(|| {
                let cu_v = cu.as_view();
                let batch = VarlenAttn { cu_seqlens: &cu_v, max_seqlen: t, n_heads: h, n_kv_heads: h, head_dim: d, scale: 0.125, mask };
                dev.attention_fwd_kernel(AttnFwdKernel::Mma, &q.as_view(), &k.as_view(), &v.as_view(), &batch, &mut o.as_view_mut(), &mut lse.as_view_mut()).unwrap();
                dev.synchronize().unwrap();
            })
        });
        g.finish();
    }

    // rmsnorm [64, 4096]: memory-bound, one block per row.
    let (r, cols) = (64usize, 4096usize);
    let (x, w) = (dev.htod(&bf16s(r * cols, 4)).unwrap(), dev.htod(&bf16s(cols, 5)).unwrap());
    let mut y = dev.zeros::<u16>(r * cols).unwrap();
    let mut g = c.benchmark_group("rmsnorm");
    g.throughput(Throughput::Bytes((2 * (2 * r * cols + cols)) as u64));
    g.bench_function(format!("[{r}, {cols}]"), |b| {
        b.iter(|| {
            dev.rmsnorm(&x.as_view(), &w.as_view(), 1e-5, &mut y.as_view_mut()).unwrap();
            dev.synchronize().unwrap();
        })
    });
    g.finish();
    c.final_summary();
}
