//! The CUDA ops at LLaVA-7B (Mistral/Vicuna: C 4096, F 14336, 32 heads, 8 KV heads, D 128,
//! V 32064) and CLIP ViT-L/14-336 (C 1024, F 4096, T 577 per tile) shapes.
//!
//!   cargo bench --features cuda --bench cuda_ops            (prints `skipped: no CUDA device`
//!                                                            and exits 0 on a machine without one)
//!
//! Bench names are `op/shape`. Each sample times N back-to-back launches on the device's stream
//! and one synchronize (criterion's `iter_custom`), so launch overhead is included but host syncs
//! are amortised. Each bench reports its achieved rate next to its roofline:
//! - memory-bound ops: bytes read + written per second vs the HBM bandwidth measured at start
//!   (a 1 GiB device-to-device copy, read + write);
//! - matmul, attention prefill / vision: TFLOP/s vs min(peak bf16 dense TFLOP/s of the device,
//!   arithmetic intensity x the measured bandwidth). The peak comes from a table by device name
//!   (n/a when unknown). Attention decode is memory-bound: GB/s of K and V read plus q and out.
//!
//! At the end a summary table `op | shape | time | achieved | roofline | % of roofline` goes to
//! stdout and, as markdown, to `target/cuda-bench.md` (`$CARGO_TARGET_DIR` if set).
//!
//! Adding an op is one entry in [`OPS`]: a name and a function that allocates its inputs and
//! returns one [`Bench`] per shape.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use cudarc::driver::ValidAsZeroBits;
use stic::backend::cuda::{cuda_available, CudaDevice, DevBuf, MatmulOut};
use stic::Result;

/// What one launch does, for the achieved rate.
#[derive(Clone, Copy)]
enum Work {
    /// A memory-bound op: bytes read + written.
    Bytes(u64),
    /// A GEMM: floating-point operations, and the bytes it must move at least once.
    Flops { flops: u64, bytes: u64 },
}

/// One benchmark: `op/shape`, its work per launch and a closure that enqueues one launch.
struct Bench {
    op: &'static str,
    shape: String,
    work: Work,
    launch: Box<dyn FnMut() -> Result<()>>,
}

type Setup = fn(&'static CudaDevice) -> Result<Vec<Bench>>;

/// Every benched op: (name, setup). The name selects it on the command line like criterion's
/// filter does (`cargo bench --features cuda --bench cuda_ops -- rmsnorm`).
const OPS: &[(&str, Setup)] = &[
    ("cast", cast),
    ("rmsnorm", rmsnorm),
    ("rmsnorm_residual", rmsnorm_residual),
    ("layernorm", layernorm),
    ("rope_qk", rope_qk),
    ("swiglu", swiglu),
    ("activation", activation),
    ("embedding", embedding),
    ("argmax", argmax),
    ("sample", sample),
    ("attention", attention),
    ("attention_decode", attention_decode),
    ("attention_train", attention_train),
    ("attention_hopper", attention_hopper),
    ("matmul", matmul),
];

// ---------------------------------------------------------------------------------------------
// Inputs.

/// n bf16 values in [-2, 2] (never NaN/inf), from a seeded stream.
fn bf16s(n: usize, seed: u64) -> Vec<u16> {
    let mut r = stic::rng::Rng::new(seed);
    (0..n).map(|_| half::bf16::from_f64(r.uniform() * 4.0 - 2.0).to_bits()).collect()
}

fn up(dev: &CudaDevice, n: usize, seed: u64) -> Result<DevBuf<u16>> {
    dev.htod(&bf16s(n, seed))
}

/// A zeroed device buffer (outputs; contents are overwritten by every launch).
fn out<T: stic::backend::cuda::DeviceRepr + ValidAsZeroBits>(dev: &CudaDevice, n: usize) -> Result<DevBuf<T>> {
    dev.zeros::<T>(n)
}

fn bench(op: &'static str, shape: String, work: Work, launch: impl FnMut() -> Result<()> + 'static) -> Bench {
    Bench { op, shape, work, launch: Box::new(launch) }
}

// ---------------------------------------------------------------------------------------------
// The ops.

fn cast(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    let mut v = Vec::new();
    for n in [32064usize, 4096 * 4096] {
        let x = up(dev, n, 1)?;
        let mut y = out::<f32>(dev, n)?;
        v.push(bench("cast_bf16_to_f32", format!("n={n}"), Work::Bytes(6 * n as u64), move || dev.cast_bf16_to_f32_into(&x.as_view(), &mut y.as_view_mut())));
        let xf = out::<f32>(dev, n)?;
        let mut yb = out::<u16>(dev, n)?;
        v.push(bench("cast_f32_to_bf16", format!("n={n}"), Work::Bytes(6 * n as u64), move || dev.cast_f32_to_bf16_into(&xf.as_view(), &mut yb.as_view_mut())));
    }
    Ok(v)
}

fn rmsnorm(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    let mut v = Vec::new();
    for (t, c) in [(1usize, 4096usize), (64, 4096), (2048, 4096)] {
        let (x, w) = (up(dev, t * c, 2)?, up(dev, c, 3)?);
        let mut y = out::<u16>(dev, t * c)?;
        let bytes = (4 * t * c + 2 * c) as u64;
        v.push(bench("rmsnorm", format!("T={t},C={c}"), Work::Bytes(bytes), move || dev.rmsnorm(&x.as_view(), &w.as_view(), 1e-5, &mut y.as_view_mut())));
    }
    Ok(v)
}

fn rmsnorm_residual(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    let mut v = Vec::new();
    for (t, c) in [(1usize, 4096usize), (64, 4096), (2048, 4096)] {
        let (x, w) = (up(dev, t * c, 4)?, up(dev, c, 5)?);
        // The residual grows by x every launch; with |x| <= 2 it stays finite for the bench's runs.
        let mut r = dev.zeros::<u16>(t * c)?;
        let mut y = out::<u16>(dev, t * c)?;
        let bytes = (8 * t * c + 2 * c) as u64; // x, residual in and out, y
        v.push(bench("rmsnorm_residual", format!("T={t},C={c}"), Work::Bytes(bytes), move || {
            dev.rmsnorm_residual(&x.as_view(), &mut r.as_view_mut(), &w.as_view(), 1e-5, &mut y.as_view_mut())
        }));
    }
    Ok(v)
}

fn layernorm(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    let mut v = Vec::new();
    // One CLIP-L tile, and the 5 tiles of an AnyRes image.
    for (t, c) in [(577usize, 1024usize), (5 * 577, 1024)] {
        let (x, w, b) = (up(dev, t * c, 6)?, up(dev, c, 7)?, up(dev, c, 8)?);
        let mut y = out::<u16>(dev, t * c)?;
        let bytes = (4 * t * c + 4 * c) as u64;
        v.push(bench("layernorm", format!("T={t},C={c}"), Work::Bytes(bytes), move || dev.layernorm(&x.as_view(), &w.as_view(), &b.as_view(), 1e-5, &mut y.as_view_mut())));
    }
    Ok(v)
}

fn rope_qk(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    let mut v = Vec::new();
    let (h, hkv, d) = (32usize, 8usize, 128usize);
    let inv_freq = std::sync::Arc::new(dev.rope_inv_freq(d, 1e6)?);
    for t in [1usize, 64, 2048] {
        let mut q = up(dev, t * h * d, 9)?;
        let mut k = up(dev, t * hkv * d, 10)?;
        let pos = dev.htod(&(0..t as u32).map(|i| 1000 + i).collect::<Vec<_>>())?;
        let inv = inv_freq.clone();
        let bytes = (4 * t * (h + hkv) * d + 4 * t + 2 * d) as u64;
        v.push(bench("rope_qk", format!("T={t},H={h},Hkv={hkv},D={d}"), Work::Bytes(bytes), move || {
            dev.rope_qk(&mut q.as_view_mut(), h, &mut k.as_view_mut(), hkv, &pos.as_view(), &inv.as_view())
        }));
    }
    Ok(v)
}

fn swiglu(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    let mut v = Vec::new();
    let f = 14336usize;
    for t in [1usize, 64, 2048] {
        let gu = up(dev, t * 2 * f, 11)?;
        let mut y = out::<u16>(dev, t * f)?;
        v.push(bench("swiglu_fused", format!("T={t},F={f}"), Work::Bytes(6 * (t * f) as u64), move || dev.swiglu_fused(&gu.as_view(), f, &mut y.as_view_mut())));
    }
    let n = 2048 * f;
    let (g, u) = (up(dev, n, 12)?, up(dev, n, 13)?);
    let mut y = out::<u16>(dev, n)?;
    v.push(bench("swiglu", format!("T=2048,F={f}"), Work::Bytes(6 * n as u64), move || dev.swiglu(&g.as_view(), &u.as_view(), &mut y.as_view_mut())));
    Ok(v)
}

fn activation(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    let mut v = Vec::new();
    // In place; x stays bounded under repeated application of each of these.
    for (name, t, f) in [("quick_gelu", 577usize, 4096usize), ("quick_gelu", 5 * 577, 4096), ("gelu", 577, 4096), ("silu", 64, 14336)] {
        let n = t * f;
        let mut x = up(dev, n, 14)?;
        v.push(bench(name, format!("T={t},F={f}"), Work::Bytes(4 * n as u64), move || dev.activation(name, &mut x.as_view_mut())));
    }
    Ok(v)
}

fn embedding(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    let mut v = Vec::new();
    let (vocab, c) = (32064usize, 4096usize);
    let table = std::sync::Arc::new(up(dev, vocab * c, 15)?);
    for t in [1usize, 64, 2048] {
        let sources = dev.htod(&(0..t as u32).map(|i| (i * 7919) % vocab as u32).collect::<Vec<_>>())?;
        let mut y = out::<u16>(dev, t * c)?;
        let tab = table.clone();
        let bytes = (4 * t * c + 4 * t) as u64;
        v.push(bench("embedding", format!("T={t},C={c},V={vocab}"), Work::Bytes(bytes), move || {
            dev.embedding(&tab.as_view(), c, None, &sources.as_view(), &mut y.as_view_mut(), None)
        }));
    }
    Ok(v)
}

fn argmax(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    let mut v = Vec::new();
    let vocab = 32064usize;
    for b in [1usize, 8] {
        let lf = out::<f32>(dev, b * vocab)?;
        let mut idx = out::<u32>(dev, b)?;
        v.push(bench("argmax_f32", format!("B={b},V={vocab}"), Work::Bytes((4 * b * vocab + 4 * b) as u64), move || {
            dev.argmax_f32(&lf.as_view(), vocab, &mut idx.as_view_mut())
        }));
        let lb = up(dev, b * vocab, 16)?;
        let mut idx = out::<u32>(dev, b)?;
        v.push(bench("argmax_bf16", format!("B={b},V={vocab}"), Work::Bytes((2 * b * vocab + 4 * b) as u64), move || {
            dev.argmax_bf16(&lb.as_view(), vocab, &mut idx.as_view_mut())
        }));
    }
    Ok(v)
}

fn sample(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    let mut v = Vec::new();
    let vocab = 32064usize;
    for b in [1usize, 64] {
        // Logits in about [-8, 8] (distinct values, few ties); T 0.7, top-k 50, top-p 0.9.
        let host: Vec<f32> = bf16s(b * vocab, 20).iter().map(|&h| half::bf16::from_bits(h).to_f32() * 4.0).collect();
        let logits = dev.htod(&host)?;
        let uniforms = dev.htod(&(0..b).map(|i| (i as f64 * 0.618_033_988_75).fract()).collect::<Vec<f64>>())?;
        let mut idx = out::<u32>(dev, b)?;
        v.push(bench("sample_f32", format!("B={b},V={vocab},T=0.7,k=50,p=0.9"), Work::Bytes((4 * b * vocab + 12 * b) as u64), move || {
            dev.sample(&logits.as_view(), vocab, 0.7, 50, 0.9, &uniforms.as_view(), &mut idx.as_view_mut())
        }));
    }
    Ok(v)
}

/// Attention (`CudaDevice::attention`) at Mistral-7B and CLIP-L shapes: decode over a cache of
/// 3000 keys per sequence (memory-bound: GB/s), a causal prefill of 2880 tokens and two
/// bidirectional CLIP-L tiles of 577 (TFLOP/s: 4 flops per (query, key, head, dim) visited).
fn attention(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    use stic::backend::cpu::AttnRow;
    #[allow(clippy::too_many_arguments)]
    fn one(dev: &'static CudaDevice, what: String, h: usize, hkv: usize, d: usize, slots: usize, cap: usize, rows: Vec<AttnRow>, decode: bool) -> Result<Bench> {
        let n = rows.len();
        let (q, k, vv) = (up(dev, n * h * d, 21)?, up(dev, slots * cap * hkv * d, 22)?, up(dev, slots * cap * hkv * d, 23)?);
        let keys: u64 = rows.iter().map(|r| (r.kv_end - r.kv_start) as u64).sum();
        let flat: Vec<u32> = rows.iter().flat_map(|r| [r.slot, r.kv_start, r.kv_end]).collect();
        let drows = dev.htod(&flat)?;
        let mut o = out::<u16>(dev, n * h * d)?;
        let qo = (2 * 2 * n * h * d) as u64;
        let work = if decode {
            // Each sequence's K and V rows are read once (its H/Hkv query heads share them).
            let kv: u64 = rows.iter().map(|r| 2 * 2 * (r.kv_end - r.kv_start) as u64 * (hkv * d) as u64).sum();
            Work::Bytes(kv + qo)
        } else {
            Work::Flops { flops: 4 * keys * (h * d) as u64, bytes: qo + (2 * 2 * slots * cap * hkv * d) as u64 }
        };
        let scale = 1.0 / (d as f32).sqrt();
        Ok(bench("attention", what, work, move || {
            dev.attention(&q.as_view(), &k.as_view(), &vv.as_view(), &drows.as_view(), &mut o.as_view_mut(), h, hkv, d, cap, scale)
        }))
    }
    let mut v = Vec::new();
    let (h, hkv, d) = (32usize, 8usize, 128usize);
    let ctx = 3000usize;
    for b in [1usize, 8, 64] {
        let rows = (0..b as u32).map(|s| AttnRow { slot: s, kv_start: 0, kv_end: ctx as u32 }).collect();
        v.push(one(dev, format!("decode B={b},ctx={ctx},H={h},Hkv={hkv},D={d}"), h, hkv, d, b, ctx, rows, true)?);
    }
    // Issue #4's decode targets: one sequence at 4k and 32k keys.
    for ctx in [4096usize, 32768] {
        let rows = vec![AttnRow { slot: 0, kv_start: 0, kv_end: ctx as u32 }];
        v.push(one(dev, format!("decode B=1,ctx={ctx},H={h},Hkv={hkv},D={d}"), h, hkv, d, 1, ctx, rows, true)?);
    }
    // ... and batch 8 at the same contexts: the decode shapes of the SDPA baseline
    // (scripts/baselines/attention_sdpa.py), for the side-by-side table in docs/PERF.md.
    for ctx in [4096usize, 32768] {
        let b = 8usize;
        let rows = (0..b as u32).map(|s| AttnRow { slot: s, kv_start: 0, kv_end: ctx as u32 }).collect();
        v.push(one(dev, format!("decode B={b},ctx={ctx},H={h},Hkv={hkv},D={d}"), h, hkv, d, b, ctx, rows, true)?);
    }
    let t = 2880usize;
    let rows = (0..t as u32).map(|i| AttnRow { slot: 0, kv_start: 0, kv_end: i + 1 }).collect();
    v.push(one(dev, format!("prefill causal T={t},H={h},Hkv={hkv},D={d}"), h, hkv, d, 1, t, rows, false)?);
    let (tiles, tv, hv, dv) = (2usize, 577usize, 16usize, 64usize);
    let rows = (0..tiles as u32).flat_map(|s| (0..tv).map(move |_| AttnRow { slot: s, kv_start: 0, kv_end: tv as u32 })).collect();
    v.push(one(dev, format!("CLIP-L {tiles}x{tv} bidirectional,H={hv},D={dv}"), hv, hv, dv, tiles, tv, rows, false)?);
    Ok(v)
}

/// Decode attention over long caches (issue #4, flash-decoding): one query row per sequence over
/// its whole context, Mistral-7B heads (H=32, Hkv=8, D=128), through
/// `CudaDevice::attention_with_max_len` as the engine calls it (split-KV from the context length,
/// SM count and batch). GB/s over the K and V bytes read, B * ctx * Hkv * D * 2 bytes * 2, against
/// the measured HBM bandwidth (issue #4's target: >= 80% at ctx=32768). About 2.4 GB of caches.
fn attention_decode(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    let (h, hkv, d) = (32usize, 8usize, 128usize);
    let mut v = Vec::new();
    for (ctx, b) in [(4096usize, 1usize), (4096, 8), (4096, 64), (32768, 1), (32768, 8)] {
        let (q, k, vv) = (up(dev, b * h * d, 31)?, up(dev, b * ctx * hkv * d, 32)?, up(dev, b * ctx * hkv * d, 33)?);
        let flat: Vec<u32> = (0..b as u32).flat_map(|s| [s, 0, ctx as u32]).collect();
        let drows = dev.htod(&flat)?;
        let mut o = out::<u16>(dev, b * h * d)?;
        let kv_bytes = (b * ctx * hkv * d * 2 * 2) as u64;
        let scale = 1.0 / (d as f32).sqrt();
        v.push(bench("attention_decode", format!("ctx={ctx}/B={b}"), Work::Bytes(kv_bytes), move || {
            dev.attention_with_max_len(&q.as_view(), &k.as_view(), &vv.as_view(), &drows.as_view(), &mut o.as_view_mut(), h, hkv, d, ctx, scale, ctx)
        }));
    }
    Ok(v)
}

/// The training attention (`kernels/attention_train.cu`), forward and backward, at issue #4's
/// (B, H, T, D) shapes, causal and not. FLOPs as flash-attention counts them: forward
/// 4 T^2 H D per sequence (half of it causal), backward 2.5 x the forward.
fn attention_train(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    use stic::backend::cuda::{AttnFwdKernel, AttnTrainMask, VarlenAttn};
    let mut v = Vec::new();
    for &(b, h, t, d) in &[(1usize, 32usize, 4096usize, 128usize), (4, 32, 2048, 128), (1, 16, 577, 64)] {
        for causal in [true, false] {
            let n = b * t;
            let cu = stic::backend::cpu::cu_seqlens(&vec![t; b]);
            let fwd_flops = (4 * b * t * t * h * d) as u64 / if causal { 2 } else { 1 };
            let bytes = (2 * 4 * n * h * d) as u64;
            let name = format!("B={b},H={h},T={t},D={d}{}", if causal { ",causal" } else { "" });
            for bwd in [false, true] {
                let (q, k, vv, o, dout) = (up(dev, n * h * d, 31)?, up(dev, n * h * d, 32)?, up(dev, n * h * d, 33)?, up(dev, n * h * d, 34)?, up(dev, n * h * d, 35)?);
                let (mut dq, mut dk, mut dvv) = (out::<u16>(dev, n * h * d)?, out::<u16>(dev, n * h * d)?, out::<u16>(dev, n * h * d)?);
                let mut oo = out::<u16>(dev, n * h * d)?;
                let mut lse = out::<f32>(dev, n * h)?;
                let cu_d = dev.htod(&cu)?;
                let mask = if causal { AttnTrainMask::Causal { window: None } } else { AttnTrainMask::Bidirectional };
                let scale = 1.0 / (d as f32).sqrt();
                // The backward reads the forward's lse: run the forward once first.
                {
                    let cu_v = cu_d.as_view();
                    let batch = VarlenAttn { cu_seqlens: &cu_v, max_seqlen: t, n_heads: h, n_kv_heads: h, head_dim: d, scale, mask };
                    dev.attention_fwd(&q.as_view(), &k.as_view(), &vv.as_view(), &batch, &mut oo.as_view_mut(), &mut lse.as_view_mut())?;
                }
                let flops = if bwd { fwd_flops * 5 / 2 } else { fwd_flops };
                let what = format!("{} {name}", if bwd { "bwd" } else { "fwd" });
                v.push(bench("attention_train", what, Work::Flops { flops, bytes }, move || {
                    let cu_v = cu_d.as_view();
                    let mask = if causal { AttnTrainMask::Causal { window: None } } else { AttnTrainMask::Bidirectional };
                    let batch = VarlenAttn { cu_seqlens: &cu_v, max_seqlen: t, n_heads: h, n_kv_heads: h, head_dim: d, scale, mask };
                    if bwd {
                        dev.attention_bwd(
                            &q.as_view(), &k.as_view(), &vv.as_view(), &o.as_view(), &dout.as_view(), &lse.as_view(), &batch,
                            &mut dq.as_view_mut(), &mut dk.as_view_mut(), &mut dvv.as_view_mut(),
                        )
                    } else {
                        // The sm_80 kernel explicitly (attention_fwd would pick the Hopper one on
                        // an H100): `attention_hopper` below benches that one at the same shapes.
                        dev.attention_fwd_kernel(AttnFwdKernel::Mma, &q.as_view(), &k.as_view(), &vv.as_view(), &batch, &mut oo.as_view_mut(), &mut lse.as_view_mut())
                    }
                }));
            }
        }
    }
    Ok(v)
}

/// The Hopper forward of the training attention (`kernels/attention_hopper.cu`: wgmma + TMA,
/// warp-specialised) at the `attention_train` shapes, FLOPs counted the same way (4 T^2 H D per
/// sequence, half of it causal). Only on compute capability 9.x (a skip line elsewhere).
fn attention_hopper(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    use stic::backend::cuda::{AttnFwdKernel, AttnTrainMask, VarlenAttn};
    if !dev.attention_hopper_available() {
        let (major, minor) = dev.compute_capability();
        println!("attention_hopper: skipped (needs compute capability 9.x, this is sm_{major}{minor})");
        return Ok(Vec::new());
    }
    let mut v = Vec::new();
    for &(b, h, t, d) in &[(1usize, 32usize, 4096usize, 128usize), (4, 32, 2048, 128), (1, 16, 577, 64)] {
        for causal in [true, false] {
            let n = b * t;
            let cu = stic::backend::cpu::cu_seqlens(&vec![t; b]);
            let flops = (4 * b * t * t * h * d) as u64 / if causal { 2 } else { 1 };
            let bytes = (2 * 4 * n * h * d) as u64;
            let name = format!("fwd B={b},H={h},T={t},D={d}{}", if causal { ",causal" } else { "" });
            let (q, k, vv) = (up(dev, n * h * d, 31)?, up(dev, n * h * d, 32)?, up(dev, n * h * d, 33)?);
            let mut oo = out::<u16>(dev, n * h * d)?;
            let mut lse = out::<f32>(dev, n * h)?;
            let cu_d = dev.htod(&cu)?;
            let scale = 1.0 / (d as f32).sqrt();
            v.push(bench("attention_hopper", name, Work::Flops { flops, bytes }, move || {
                let cu_v = cu_d.as_view();
                let mask = if causal { AttnTrainMask::Causal { window: None } } else { AttnTrainMask::Bidirectional };
                let batch = VarlenAttn { cu_seqlens: &cu_v, max_seqlen: t, n_heads: h, n_kv_heads: h, head_dim: d, scale, mask };
                dev.attention_fwd_kernel(AttnFwdKernel::Hopper, &q.as_view(), &k.as_view(), &vv.as_view(), &batch, &mut oo.as_view_mut(), &mut lse.as_view_mut())
            }));
        }
    }
    Ok(v)
}

/// One GEMM shape: (M, K, N, bias, accumulate, f32 output, what).
const GEMMS: &[(usize, usize, usize, bool, bool, bool, &str)] = &[
    (1, 4096, 4096, false, false, false, "decode q/o_proj"),
    (8, 4096, 4096, false, false, false, "decode batch 8"),
    (64, 4096, 4096, false, true, false, "o_proj + residual"),
    (64, 4096, 14336, false, false, false, "prefill chunk gate/up"),
    (2048, 4096, 14336, false, false, false, "prefill gate/up"),
    (2048, 14336, 4096, false, true, false, "prefill down + residual"),
    (1, 4096, 32064, false, false, true, "lm_head decode"),
    (8, 4096, 32064, false, false, true, "lm_head batch 8"),
    (577, 1024, 4096, true, false, false, "CLIP-L fc1"),
    (577, 4096, 1024, true, true, false, "CLIP-L fc2 + residual"),
];

fn matmul(dev: &'static CudaDevice) -> Result<Vec<Bench>> {
    fn one<Y: MatmulOut + ValidAsZeroBits + 'static>(dev: &'static CudaDevice, g: (usize, usize, usize, bool, bool, bool, &str)) -> Result<Bench> {
        let (m, k, n, bias, acc, _, what) = g;
        let (x, w, b) = (up(dev, m * k, 17)?, up(dev, n * k, 18)?, up(dev, n, 19)?);
        let mut y = out::<Y>(dev, m * n)?;
        let ysize = std::mem::size_of::<Y>();
        let bytes = (2 * m * k + 2 * n * k + ysize * m * n * if acc { 2 } else { 1 } + if bias { 2 * n } else { 0 }) as u64;
        let shape = format!(
            "M={m},K={k},N={n}{}{},{} ({what})",
            if bias { ",+bias" } else { "" },
            if acc { ",+=y" } else { "" },
            if ysize == 4 { "f32" } else { "bf16" }
        );
        Ok(bench("matmul", shape, Work::Flops { flops: 2 * (m * n * k) as u64, bytes }, move || {
            let bv = b.as_view();
            dev.matmul(&x.as_view(), &w.as_view(), bias.then_some(&bv), &mut y.as_view_mut(), m, n, k, acc)
        }))
    }
    GEMMS.iter().map(|&g| if g.5 { one::<f32>(dev, g) } else { one::<u16>(dev, g) }).collect()
}

// ---------------------------------------------------------------------------------------------
// Rooflines.

struct Row {
    op: &'static str,
    shape: String,
    time: f64,
    achieved: String,
    roofline: String,
    percent: String,
}

fn row(b: &Bench, time: f64, bw: f64, peak: Option<f64>) -> Row {
    let (achieved, roofline, percent) = match b.work {
        Work::Bytes(bytes) => {
            let a = bytes as f64 / time / 1e9;
            let r = bw / 1e9;
            (format!("{a:.0} GB/s"), format!("{r:.0} GB/s (HBM)"), format!("{:.0}%", 100.0 * a / r))
        }
        Work::Flops { flops, bytes } => {
            let a = flops as f64 / time / 1e12;
            match peak {
                Some(p) => {
                    let mem = flops as f64 / bytes as f64 * bw / 1e12;
                    let (r, what) = if mem < p { (mem, "HBM") } else { (p, "peak") };
                    (format!("{a:.1} TFLOP/s"), format!("{r:.0} TFLOP/s ({what})"), format!("{:.0}%", 100.0 * a / r))
                }
                None => (format!("{a:.1} TFLOP/s"), "n/a".to_string(), "n/a".to_string()),
            }
        }
    };
    Row { op: b.op, shape: b.shape.clone(), time, achieved, roofline, percent }
}

fn fmt_time(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.2} us", s * 1e6)
    } else {
        format!("{:.3} ms", s * 1e3)
    }
}

fn main() {
    if !cuda_available() {
        println!("skipped: no CUDA device");
        return;
    }
    let dev: &'static CudaDevice = Box::leak(Box::new(CudaDevice::new(0).expect("a CUDA device is present but could not be opened")));
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let bw = dev.measure_bandwidth().expect("measuring the HBM bandwidth");
    let peak = dev.peak_bf16_tflops();
    println!(
        "device: {} (sm_{}{}, {} SMs); HBM {:.0} GB/s measured (1 GiB device copy, read + write); bf16 dense peak {}",
        dev.name(),
        dev.compute_capability().0,
        dev.compute_capability().1,
        dev.num_sms(),
        bw / 1e9,
        peak.map_or("n/a (unknown device)".to_string(), |p| format!("{p:.0} TFLOP/s (table by name)"))
    );

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    let mut rows = Vec::new();
    for &(name, setup) in OPS {
        let benches = setup(dev).unwrap_or_else(|e| panic!("setting up {name}: {e}"));
        for mut b in benches {
            // Check it runs at all (a clear error, not a criterion panic mid-measurement).
            (b.launch)().and_then(|_| dev.synchronize()).unwrap_or_else(|e| panic!("{}/{}: {e}", b.op, b.shape));
            let samples: Rc<RefCell<Vec<f64>>> = Rc::default();
            let mut g = c.benchmark_group(b.op);
            g.throughput(match b.work {
                Work::Bytes(bytes) => Throughput::Bytes(bytes),
                Work::Flops { flops, .. } => Throughput::Elements(flops),
            });
            let s = samples.clone();
            let launch = &mut b.launch;
            g.bench_function(b.shape.clone(), |bencher| {
                bencher.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        launch().expect("launch");
                    }
                    dev.synchronize().expect("synchronize");
                    let d = t.elapsed();
                    s.borrow_mut().push(d.as_secs_f64() / iters.max(1) as f64);
                    d
                })
            });
            g.finish();
            let mut t = samples.borrow().clone();
            if t.is_empty() {
                continue; // filtered out on the command line
            }
            t.sort_by(f64::total_cmp);
            rows.push(row(&b, t[t.len() / 2], bw, peak));
        }
    }
    c.final_summary();
    if rows.is_empty() {
        return;
    }

    let header = ["op", "shape", "time", "achieved", "roofline", "% of roofline"];
    let cells: Vec<[String; 6]> = rows.iter().map(|r| [r.op.to_string(), r.shape.clone(), fmt_time(r.time), r.achieved.clone(), r.roofline.clone(), r.percent.clone()]).collect();
    let widths: Vec<usize> = (0..6).map(|i| cells.iter().map(|c| c[i].len()).chain([header[i].len()]).max().unwrap_or(0)).collect();
    println!("\nsummary (median time per launch, {} HBM {:.0} GB/s):", dev.name(), bw / 1e9);
    println!("{}", (0..6).map(|i| format!("{:<w$}", header[i], w = widths[i])).collect::<Vec<_>>().join(" | "));
    for c in &cells {
        println!("{}", (0..6).map(|i| format!("{:<w$}", c[i], w = widths[i])).collect::<Vec<_>>().join(" | "));
    }
    if !bench_mode {
        return; // test mode (`cargo test --benches`): one launch each, no report
    }
    let mut md = format!(
        "# CUDA op benchmarks\n\n{} (sm_{}{}), HBM {:.0} GB/s measured (1 GiB device copy, read + write), bf16 dense peak {}. \
         Median time per launch over criterion's samples (N launches + one synchronize each).\n\n",
        dev.name(),
        dev.compute_capability().0,
        dev.compute_capability().1,
        bw / 1e9,
        peak.map_or("n/a".to_string(), |p| format!("{p:.0} TFLOP/s"))
    );
    md.push_str("| op | shape | time | achieved | roofline | % of roofline |\n|---|---|---|---|---|---|\n");
    for c in &cells {
        md.push_str(&format!("| {} |\n", c.join(" | ")));
    }
    let dir = std::path::PathBuf::from(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()));
    let path = dir.join("cuda-bench.md");
    match std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, md)) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
