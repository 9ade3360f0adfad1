//! The CUDA host engine's bookkeeping (issue #15 Part 2), shown with counters on whatever device
//! there is (the emulated one under `STIC_CUDA_EMU=1`). Built only with `--features cuda`; without
//! a device each test prints `skipped: no CUDA device` and passes (`STIC_REQUIRE_CUDA=1`: fails).
//!
//! - (d) `STIC_CUDA_SYNC=1`: one stream synchronisation after every kernel launch and every
//!   engine op, and none without the mode.
//! - (a) the cuBLASLt plan cache: a long run of distinct GEMM shapes keeps it at its capacity
//!   (least recently used plans evicted), and a shape still cached makes no new plan.
//! - (b) allocations: decoding more tokens after warm-up makes no new scratch buffers, and the
//!   device allocations per decode step (`CudaDevice::alloc_count`) are counted and bounded.
//! - (c) the device's ops run on a created stream, not the legacy NULL stream.
//! - (e) the Hopper attention's host work: the dynamic shared-memory attribute is set once per
//!   kernel and the three tensor maps are encoded once per (buffer, shape). Needs the emulated
//!   device at `STIC_CUDA_EMU_ARCH=90` (or an H100); elsewhere the test says so and passes.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use stic::backend::cuda::{AttnFwdKernel, AttnTrainMask, Cuda, VarlenAttn, MATMUL_PLAN_CACHE_CAPACITY};
use stic::backend::Backend;
use stic::tensor::Tensor;

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * scale).collect()
}

/// (d) With the sync mode on, an engine op (rmsnorm: one kernel) is followed by two
/// synchronisations (after its launch, after the op); with it off, by none. Under emulation the
/// kernel's launch count shows it ran.
#[test]
fn sync_mode_synchronises_after_every_launch_and_op() {
    let Some(be) = cuda(Cuda::new) else { return };
    let dev = be.device().clone();
    let (t, c) = (3, 64);
    let x = be.upload(&Tensor::new(ramp(t * c, 0.01), &[t, c]).unwrap()).unwrap();
    let norm = be.rmsnorm_from(Tensor::new(ramp(c, 0.02), &[c]).unwrap(), 1e-6).unwrap();

    dev.set_sync_each_op(false);
    let before = dev.op_sync_count();
    be.rmsnorm(&x, &norm).unwrap();
    assert_eq!(dev.op_sync_count(), before, "no STIC_CUDA_SYNC: no synchronisation per op");

    dev.set_sync_each_op(true);
    // (The emulator's launch counter is per process, shared with the tests running beside this
    // one, so it cannot tell how many kernels this op launched; the per-device count can.)
    let before = dev.op_sync_count();
    let y = be.rmsnorm(&x, &norm).unwrap();
    assert_eq!(dev.op_sync_count() - before, 2, "STIC_CUDA_SYNC: one sync after the launch, one after the op");
    dev.set_sync_each_op(false);
    assert_eq!(be.download(&y).unwrap().shape(), &[t, c]);
}

/// (a) Capacity + 44 distinct prefill lengths M (y[M, 16] = x[M, 32] @ w[16, 32]^T): every new
/// shape makes a plan, the cache never holds more than its capacity, the oldest ones are evicted,
/// the newest stays cached (no new plan when it repeats) and the oldest does not.
#[test]
fn matmul_plan_cache_stays_bounded() {
    let Some(be) = cuda(Cuda::new) else { return };
    let dev = be.device().clone();
    let (n, k) = (16, 32);
    let extra = 44;
    let lengths: Vec<usize> = (1..=MATMUL_PLAN_CACHE_CAPACITY + extra).collect();
    let w = dev.zeros::<u16>(n * k).unwrap();
    let x = dev.zeros::<u16>(lengths.len() * k).unwrap();
    let mut y = dev.zeros::<u16>(lengths.len() * n).unwrap();
    let mm = |m: usize, y: &mut stic::backend::cuda::CudaSlice<u16>| {
        dev.matmul(&x.slice(..m * k), &w.as_view(), None, &mut y.slice_mut(..m * n), m, n, k, false).unwrap();
    };
    mm(1, &mut y);
    let start = dev.matmul_plan_stats();
    for &m in &lengths {
        mm(m, &mut y);
        let s = dev.matmul_plan_stats();
        assert!(s.cached <= MATMUL_PLAN_CACHE_CAPACITY, "M={m}: {} plans cached, capacity {MATMUL_PLAN_CACHE_CAPACITY}", s.cached);
    }
    let s = dev.matmul_plan_stats();
    eprintln!("plan cache after {} shapes: {s:?}", lengths.len());
    let new = lengths.len() as u64 - 1; // M = 1 was planned before `start`
    assert_eq!(s.created - start.created, new, "one plan per new shape");
    assert_eq!(s.cached, MATMUL_PLAN_CACHE_CAPACITY, "full, not beyond");
    assert_eq!(s.created - s.evicted, s.cached as u64, "every plan created is cached or evicted");
    mm(*lengths.last().unwrap(), &mut y);
    assert_eq!(dev.matmul_plan_stats().created, s.created, "the most recent shape is still cached");
    mm(2, &mut y);
    assert_eq!(dev.matmul_plan_stats().created, s.created + 1, "the least recently used shape was evicted");
    assert_eq!(dev.matmul_plan_stats().cached, MATMUL_PLAN_CACHE_CAPACITY);
}

/// Device allocations and scratch allocations of a greedy generation of `new` tokens (a batch of
/// two prompts of 9 and 5 random ids) on the llava_next_tiny fixture.
fn decode_allocs(be: &Cuda, pipe: &stic::generate::Pipeline<Cuda>, new: usize) -> (u64, u64, usize) {
    let mut rng = stic::rng::Rng::new(3);
    let inputs = [9usize, 5].iter().map(|&n| {
        let ids: Vec<u32> = (0..n).map(|_| 1 + rng.below(200) as u32).collect();
        pipe.model.decoder.embed(&ids).unwrap()
    });
    let dev = be.device();
    let (a0, s0) = (dev.alloc_count(), dev.scratch_alloc_count());
    let params = stic::generate::SamplingParams { max_new_tokens: new, ..Default::default() };
    let out = pipe.generate_from_embeds(inputs.collect(), &params).unwrap();
    (dev.alloc_count() - a0, dev.scratch_alloc_count() - s0, out.iter().map(|o| o.len()).min().unwrap_or(0))
}

/// (b) After warm-up (one generation of the longest length), generating `long` tokens instead
/// of `short` adds `long - short` decode steps: they must make no scratch allocation, and the
/// per-step device allocations are printed and must not grow with the number of steps.
#[test]
fn decode_steps_reuse_scratch() {
    let Some(be) = cuda(Cuda::new) else { return };
    let pipe = stic::generate::Pipeline::load_on(&be, &fixtures().join("llava_next_tiny"), Some(1), None).unwrap();
    let (short, long) = (3, 9);
    let (_, s_warm, _) = decode_allocs(&be, &pipe, long);
    assert!(s_warm > 0, "the warm-up generation takes its scratch buffers (argmax output at least)");
    let (a_short, s_short, n_short) = decode_allocs(&be, &pipe, short);
    let (a_long, s_long, n_long) = decode_allocs(&be, &pipe, long);
    let (a_longer, _, n_longer) = decode_allocs(&be, &pipe, 2 * long);
    eprintln!("allocations: {short} tokens {a_short} ({s_short} scratch), {long} tokens {a_long} ({s_long} scratch), {} tokens {a_longer}", 2 * long);
    assert_eq!((n_short, n_long, n_longer), (short, long, 2 * long), "every sequence ran its max_new_tokens (no early EOS)");
    assert_eq!(s_long, 0, "no scratch allocation once warm");
    let per_step = (a_long - a_short) as f64 / (long - short) as f64;
    let per_step_longer = (a_longer - a_long) as f64 / long as f64;
    eprintln!("device allocations per decode step after warm-up: {per_step:.1} ({per_step_longer:.1} over the next {long} steps)");
    assert_eq!(per_step, per_step_longer, "the per-step allocations do not grow with the step");
}

/// (b) The default pool keeps its memory across syncs: release threshold u64::MAX (the driver's
/// default 0 trims the pool at every sync).
#[test]
fn pool_keeps_memory_across_syncs() {
    let Some(be) = cuda(Cuda::new) else { return };
    match be.device().pool_release_threshold().unwrap() {
        Some(t) => assert_eq!(t, u64::MAX, "release threshold"),
        None => eprintln!("no memory pools on this driver: nothing to check"),
    }
}

/// (e) Two Hopper forwards over the same q, k, v buffers: the first sets the attribute once and
/// encodes 3 tensor maps, the second neither; a third over a new shape (fewer rows of the same
/// buffers) encodes 3 more. The counters are checked whether or not the launch itself succeeds
/// (the host work precedes it); the launch's outcome is printed.
#[test]
fn hopper_attention_host_work_done_once() {
    let Some(be) = cuda(Cuda::new) else { return };
    let dev = be.device().clone();
    if !dev.attention_hopper_available() {
        use std::io::Write;
        let (ma, mi) = dev.compute_capability();
        let _ = writeln!(std::io::stdout().lock(), "skipped: the Hopper kernel could not run: the device is sm_{ma}{mi} (run under STIC_CUDA_EMU_ARCH=90)");
        return;
    }
    let (h, hkv, d) = (2, 1, 64);
    let t_max = 130;
    let q = dev.zeros::<u16>(t_max * h * d).unwrap();
    let k = dev.zeros::<u16>(t_max * hkv * d).unwrap();
    let v = dev.zeros::<u16>(t_max * hkv * d).unwrap();
    let mut out = dev.zeros::<u16>(t_max * h * d).unwrap();
    let mut lse = dev.zeros::<f32>(t_max * h).unwrap();
    let mut run = |t: usize| {
        let cu = dev.htod(&[0u32, t as u32]).unwrap();
        let cu_view = cu.as_view();
        let batch = VarlenAttn { cu_seqlens: &cu_view, max_seqlen: t, n_heads: h, n_kv_heads: hkv, head_dim: d, scale: 0.125, mask: AttnTrainMask::Causal { window: None } };
        let (a0, e0) = (dev.dyn_smem_attribute_sets(), dev.tensor_map_encodes());
        let r = dev.attention_fwd_kernel(
            AttnFwdKernel::Hopper,
            &q.slice(..t * h * d),
            &k.slice(..t * hkv * d),
            &v.slice(..t * hkv * d),
            &batch,
            &mut out.slice_mut(..t * h * d),
            &mut lse.slice_mut(..t * h),
        );
        let encode_missing = matches!(&r, Err(e) if e.to_string().contains("no cuTensorMapEncodeTiled"));
        if let Err(e) = &r {
            eprintln!("T={t}: the Hopper kernel could not run: {e}");
        }
        (dev.dyn_smem_attribute_sets() - a0, dev.tensor_map_encodes() - e0, encode_missing)
    };
    let (sets, encodes, encode_missing) = run(t_max);
    if encode_missing {
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), "skipped: the Hopper kernel could not run: the driver has no cuTensorMapEncodeTiled (the emulated one gains it with the TMA emulation)");
        return;
    }
    let first = (sets, encodes);
    let mut run = |t| {
        let (a, e, _) = run(t);
        (a, e)
    };
    assert!(first.0 <= 1, "first call: the attribute set at most once (once unless an earlier test set it), got {}", first.0);
    assert_eq!(first.1, 3, "first call: q, k and v tensor maps encoded");
    assert_eq!(run(t_max), (0, 0), "second call, same buffers and shape: no attribute set, no encoding");
    assert_eq!(run(t_max - 2), (0, 3), "a new shape: three new tensor maps, no attribute set");
}

/// (c) The device's stream is a created one (the legacy NULL stream is the null handle).
#[test]
fn ops_run_on_a_created_stream() {
    let Some(be) = cuda(Cuda::new) else { return };
    assert!(!be.device().stream().cu_stream().is_null(), "the device's stream is the legacy NULL stream");
}
