//! The CUDA host engine's bookkeeping (issue #15 Part 2), shown with counters on whatever device
//! there is (the emulated one under `STIC_CUDA_EMU=1`). Built only with `--features cuda`; without
//! a device each test prints `skipped: no CUDA device` and passes (`STIC_REQUIRE_CUDA=1`: fails).
//!
//! - (d) `STIC_CUDA_SYNC=1`: one stream synchronisation after every kernel launch and every
//!   engine op, and none without the mode; an asynchronous fault (the emulated device's
//!   asynchronous-fault mode) is reported by the op that caused it with the mode, by a later sync
//!   without it.
//! - (a) the cuBLASLt plan cache: a long run of distinct GEMM shapes keeps it at its capacity
//!   (least recently used plans evicted), and a shape still cached makes no new plan.
//! - (b) allocations: once warm, a generation (prefill and every decode step) makes no device
//!   allocation (`CudaDevice::alloc_count`) and no scratch allocation: the buffer cache
//!   (`pool.rs`) and the scratch cache give every buffer back (training steps: tests/cuda_train.rs).
//! - (c) the device's ops run on a created stream, not the legacy NULL stream; the decode loop's
//!   host-device copies all go through the pinned staging ring (`staging.rs`; training: tests/cuda_train.rs).
//! - (e) the Hopper attention's host work: the dynamic shared-memory attribute is set once per
//!   kernel and the three tensor maps are encoded once per (buffer, shape). Needs the emulated
//!   device at `STIC_CUDA_EMU_ARCH=90` (or an H100); elsewhere the test says so and passes.
//! - (f) a non-finite value in the next sequence's K/V rows (which the Hopper kernel's TMA tiles
//!   load past a sequence's end) leaves the sequence's own outputs unchanged: every forward kernel
//!   the device can run (the sm_80 one everywhere, the Hopper one at 9.x).
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

/// (d) What the sync mode is for: a kernel that faults while running (here it reads a token-id
/// buffer nobody wrote: the emulated initcheck's report) is asynchronous on a GPU, so without the
/// mode its op returns Ok and the fault surfaces at the next synchronisation, which names only
/// itself; with `STIC_CUDA_SYNC=1` the faulting op returns the error, naming the op and its shapes.
/// Needs the emulated device's asynchronous-fault mode (on a GPU a real fault would leave the
/// context unusable); elsewhere the test says so and passes.
#[test]
fn sync_mode_names_the_op_of_an_asynchronous_fault() {
    let Some(be) = cuda(Cuda::new) else { return };
    if !stic::backend::cuda::emulated_async_faults(true) {
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), "skipped: needs the emulated device (STIC_CUDA_EMU=1) to fault a kernel safely");
        return;
    }
    let dev = be.device().clone();
    let (v, c, t) = (16usize, 64usize, 4usize);
    let table = dev.htod(&vec![0u16; v * c]).unwrap();
    // The planted bug: the token ids are never written.
    // SAFETY: only the emulated device reads it, which reports the read instead of using garbage.
    let sources = unsafe { dev.alloc_uninit::<u32>(t) }.unwrap();
    let mut out = dev.zeros::<u16>(t * c).unwrap();
    let mut embed = || dev.embedding(&table.as_view(), c, None, &sources.as_view(), &mut out.as_view_mut(), None);

    dev.set_sync_each_op(false);
    let r = embed();
    let late = dev.synchronize();
    dev.set_sync_each_op(true);
    let named = embed();
    dev.set_sync_each_op(false);
    stic::backend::cuda::emulated_async_faults(false);

    assert!(r.is_ok(), "without STIC_CUDA_SYNC the launch succeeds (the fault is asynchronous): {r:?}");
    let late = late.expect_err("the next synchronisation reports the fault").to_string();
    assert!(late.starts_with("cuda: synchronize:") && late.contains("initcheck"), "the fault surfaces at the sync, which names only itself: {late}");
    let named = named.expect_err("with STIC_CUDA_SYNC the op fails").to_string();
    assert!(named.starts_with("cuda: embedding: table [16, 64], features [0, 64], 4 sources:") && named.contains("STIC_CUDA_SYNC") && named.contains("initcheck"), "the op names itself and its shapes: {named}");
    assert!(dev.synchronize().is_ok(), "the fault was reported once; the device stays usable");
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
    let mm = |m: usize, y: &mut stic::backend::cuda::DevBuf<u16>| {
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

/// (b) Once one generation of a shape has run (the warm-up: it allocates the op outputs, the
/// KV cache, the scratch buffers), a second generation of that shape makes no device allocation
/// at all, in its prefill or in any of its decode steps: every buffer comes back from the buffer
/// cache (`pool.rs`) or the scratch cache. The warm-up itself allocates (the counter works).
#[test]
fn decode_steps_allocate_nothing_once_warm() {
    let Some(be) = cuda(Cuda::new) else { return };
    let pipe = stic::generate::Pipeline::load_on(&be, &fixtures().join("llava_next_tiny"), Some(1), None).unwrap();
    let steps = 9;
    let (a_warm, s_warm, _) = decode_allocs(&be, &pipe, steps);
    assert!(a_warm > 0 && s_warm > 0, "the warm-up allocates (outputs, scratch): {a_warm} device, {s_warm} scratch");
    let reuse0 = be.device().alloc_reuse_count();
    let (staged0, pageable0) = be.device().copy_counts();
    let (a, s, n) = decode_allocs(&be, &pipe, steps);
    let reused = be.device().alloc_reuse_count() - reuse0;
    let (staged, pageable) = (be.device().copy_counts().0 - staged0, be.device().copy_counts().1 - pageable0);
    eprintln!("generation of {steps} tokens: warm-up {a_warm} device allocations ({s_warm} scratch); then {a} ({s} scratch), {reused} buffers reused; {staged} host-device copies through the pinned ring, {pageable} pageable");
    assert!(staged as usize >= steps, "(c) every decode step's host-device copies (at least the sampled tokens) go through the pinned ring");
    assert_eq!(pageable, 0, "(c) no pageable copy in the decode loop");
    assert_eq!(n, steps, "every sequence ran its max_new_tokens (no early EOS)");
    assert_eq!((a, s), (0, 0), "no device or scratch allocation once warm (prefill and {steps} decode steps)");
    assert!(reused as usize >= steps, "each decode step reuses cached buffers ({reused} reuses)");
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

/// (f) Two packed sequences of lengths 70 and 60 (D = 64, 2 heads, 1 KV head). The first
/// sequence's key tile [0, 128) holds the second sequence's rows 70..128, which the Hopper
/// kernel's TMA loads (the sm_80 kernel zero-fills past a sequence). With the second sequence's K
/// and V set to NaN (and then to +inf), the first sequence's outputs and lse must be bitwise those
/// of the finite run, for the causal and the bidirectional mask. Before the fix, the Hopper kernel
/// gave NaN there: P = 0 times a NaN V row is NaN in the P V product.
#[test]
fn attention_fwd_ignores_non_finite_rows_of_the_next_sequence() {
    let Some(be) = cuda(Cuda::new) else { return };
    let dev = be.device().clone();
    let (h, hkv, d) = (2usize, 1usize, 64usize);
    let lens = [70usize, 60];
    let t = lens[0] + lens[1];
    let bf = |x: f32| half::bf16::from_f32(x).to_bits();
    let q: Vec<u16> = ramp(t * h * d, 0.013).into_iter().map(bf).collect();
    let k: Vec<u16> = ramp(t * hkv * d, 0.011).into_iter().rev().map(bf).collect();
    let v: Vec<u16> = ramp(t * hkv * d, 0.017).into_iter().map(bf).collect();
    let cu = dev.htod(&[0u32, lens[0] as u32, t as u32]).unwrap();
    let mut kernels = vec![AttnFwdKernel::Mma];
    if dev.attention_hopper_available() {
        kernels.push(AttnFwdKernel::Hopper);
    } else {
        let (ma, mi) = dev.compute_capability();
        eprintln!("the Hopper kernel is not checked here: the device is sm_{ma}{mi} (run under STIC_CUDA_EMU_ARCH=90)");
    }
    let run = |kernel: AttnFwdKernel, mask: AttnTrainMask<'_>, k: &[u16], v: &[u16]| -> (Vec<u16>, Vec<f32>) {
        let (qd, kd, vd) = (dev.htod(&q).unwrap(), dev.htod(k).unwrap(), dev.htod(v).unwrap());
        let mut out = dev.zeros::<u16>(t * h * d).unwrap();
        let mut lse = dev.zeros::<f32>(t * h).unwrap();
        let cu_view = cu.as_view();
        let batch = VarlenAttn { cu_seqlens: &cu_view, max_seqlen: lens[0], n_heads: h, n_kv_heads: hkv, head_dim: d, scale: 0.125, mask };
        dev.attention_fwd_kernel(kernel, &qd.as_view(), &kd.as_view(), &vd.as_view(), &batch, &mut out.as_view_mut(), &mut lse.as_view_mut())
            .unwrap_or_else(|e| panic!("{kernel:?}: {e}"));
        (dev.dtoh(&out).unwrap(), dev.dtoh(&lse).unwrap())
    };
    let first = lens[0] * hkv * d;
    for poison in [f32::NAN, f32::INFINITY] {
        let poisoned = |x: &[u16]| -> Vec<u16> { x.iter().enumerate().map(|(i, &b)| if i >= first { bf(poison) } else { b }).collect() };
        let (kp, vp) = (poisoned(&k), poisoned(&v));
        for &kernel in &kernels {
            for (name, mask) in [("causal", AttnTrainMask::Causal { window: None }), ("bidirectional", AttnTrainMask::Bidirectional)] {
                let (o_ref, l_ref) = run(kernel, mask, &k, &v);
                let (o, l) = run(kernel, mask, &kp, &vp);
                let rows = lens[0] * h;
                let bad = (0..rows * d).filter(|&i| o[i] != o_ref[i]).count();
                assert_eq!(bad, 0, "{kernel:?} {name}, next sequence's K/V = {poison}: {bad} of {} outputs of sequence 0 changed (first: {:?})", rows * d, (0..rows * d).find(|&i| o[i] != o_ref[i]).map(|i| (i / (h * d), half::bf16::from_bits(o[i]))));
                assert!(o_ref[..rows * d].iter().all(|&b| half::bf16::from_bits(b).is_finite()), "{kernel:?} {name}: finite inputs give finite outputs");
                // lse is [H, T]: sequence 0's rows of each head.
                for hh in 0..h {
                    let s0 = hh * t..hh * t + lens[0];
                    assert_eq!(&l[s0.clone()], &l_ref[s0], "{kernel:?} {name}, next sequence = {poison}: lse of sequence 0, head {hh}, changed");
                }
            }
        }
    }
}
