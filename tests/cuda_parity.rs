//! CUDA kernels against the CPU reference. Built only with `--features cuda`; on a machine
//! without a CUDA device a test that needs one prints `skipped: no CUDA device` and passes
//! (with `STIC_REQUIRE_CUDA=1` it fails: `common::cuda`).
//!
//! One test per op, `<op>_cuda_matches_cpu`, runs that op's checks from the registry in
//! `stic::backend::cuda::check` (the same checks `stic check` runs; tolerances in
//! docs/TOLERANCES.md). `check_harness_*` validates the registry's host side without a GPU.
#![cfg(feature = "cuda")]

mod common;

use common::cuda;
use half::bf16;
use stic::backend::cuda::check::{checks, Check};
use stic::backend::cuda::CudaDevice;


use stic::rng::Rng;

/// Awkward lengths: around block (256) and vector boundaries, primes, and ones longer than the
/// grid-stride grid covers in one pass (32 blocks of 256 per SM: 1.1M elements on an H100,
/// 0.9M on the emulated A100).
const SIZES: &[usize] = &[1, 2, 3, 7, 255, 257, 1000, 4097, 65_537, 1_000_003, 5_000_011];

/// `SIZES`, without the 5M one on the emulated device (1_000_003 already takes two passes of its
/// grid there).
fn sizes() -> impl Iterator<Item = usize> {
    SIZES.iter().copied().filter(|&n| !stic::backend::cuda::emulated() || n <= 1_000_003)
}

/// f32 bit patterns that exercise the rounding: ties to even both ways, carries into the exponent,
/// overflow to inf, subnormals, infinities, signalling and quiet NaNs with payloads, signed zeros.
const SPECIAL_F32: &[u32] = &[
    0x3F80_8000, // 1.00390625: tie, kept lsb even -> down
    0x3F81_8000, // tie, kept lsb odd -> up
    0x3F80_8001, // just above the tie -> up
    0x3F80_7FFF, // just below the tie -> down
    0x3FFF_FFFF, // carry through the mantissa into the exponent
    0x7F7F_FFFF, // f32::MAX -> rounds to +inf
    0xFF7F_FFFF, // -f32::MAX -> -inf
    0x7F7F_7FFF, // largest that stays finite
    0x0000_0001, // smallest subnormal -> +0
    0x0000_8000, // subnormal tie -> even (down)
    0x0001_8000, // subnormal tie -> up
    0x007F_FFFF, // largest subnormal -> rounds up to the smallest normal
    0x8000_0001, // negative subnormal
    0x7F80_0000, // +inf
    0xFF80_0000, // -inf
    0x7F80_0001, // signalling NaN, payload only in the dropped bits
    0x7FC0_0000, // quiet NaN
    0xFFBF_FFFF, // negative signalling NaN with a full payload
    0x7FFF_FFFF, // NaN, all ones
    0x0000_0000, // +0
    0x8000_0000, // -0
];

fn random_f32_bits(rng: &mut Rng, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| {
            if i % 97 == 0 {
                return SPECIAL_F32[(i / 97) % SPECIAL_F32.len()];
            }
            let r = rng.next_u32();
            match i % 4 {
                // Values of ordinary magnitude (activations, weights): exponent around 2^-8..2^8.
                0 | 1 => (r & 0x807F_FFFF) | ((119 + (r >> 23) % 18) << 23),
                // Exactly on a rounding tie (lower 16 bits 0x8000), both parities.
                2 => (r & 0xFFFF_0000) | 0x8000,
                // Any bit pattern at all (includes NaNs, infs, subnormals).
                _ => r,
            }
        })
        .map(|b| if b == 0 { 0x3F80_0001 } else { b }) // non-zero, so a missed write shows
        .collect()
}

#[test]
fn cast_cuda_matches_cpu() {
    let Some(dev) = cuda(CudaDevice::new) else { return };
    eprintln!("device: {dev:?}");
    let mut rng = Rng::new(0x5715_C0DA);

    // bf16 -> f32: every one of the 65536 bit patterns, then random ones at each awkward size.
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let mut inputs: Vec<Vec<u16>> = vec![all];
    for n in sizes() {
        inputs.push((0..n).map(|_| (rng.next_u32() as u16).max(1)).collect());
    }
    for x in &inputs {
        let want: Vec<u32> = x.iter().map(|&b| bf16::from_bits(b).to_f32().to_bits()).collect();
        let dx = dev.htod(x).unwrap();
        let got: Vec<u32> = dev.dtoh(&dev.cast_bf16_to_f32(&dx).unwrap()).unwrap().iter().map(|v| v.to_bits()).collect();
        assert_eq!(got.len(), want.len());
        if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
            panic!("cast_bf16_to_f32 n={}: [{i}] bf16 {:#06x}: got {:#010x}, want {:#010x}", x.len(), x[i], got[i], want[i]);
        }
    }

    // f32 -> bf16 at each awkward size, plus the special values alone.
    let mut inputs: Vec<Vec<u32>> = vec![SPECIAL_F32.to_vec()];
    for n in sizes() {
        inputs.push(random_f32_bits(&mut rng, n));
    }
    for bits in &inputs {
        let x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let want: Vec<u16> = x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
        let dx = dev.htod(&x).unwrap();
        let got = dev.dtoh(&dev.cast_f32_to_bf16(&dx).unwrap()).unwrap();
        assert_eq!(got.len(), want.len());
        if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
            panic!("cast_f32_to_bf16 n={}: [{i}] f32 {:#010x}: got {:#06x}, want {:#06x}", x.len(), bits[i], got[i], want[i]);
        }
    }

    // The `_into` forms on sub-views at odd offsets (2- and 4-byte aligned, not 16), leaving the
    // elements around the view untouched.
    let n = 10_007;
    let x: Vec<f32> = random_f32_bits(&mut rng, n + 3).into_iter().map(f32::from_bits).collect();
    let dx = dev.htod(&x).unwrap();
    let sentinel = 0xABCDu16;
    let mut dy = dev.htod(&vec![sentinel; n + 5]).unwrap();
    {
        let xv = dx.slice(3..n + 3);
        let mut yv = dy.slice_mut(1..n + 1);
        dev.cast_f32_to_bf16_into(&xv, &mut yv).unwrap();
    }
    let got = dev.dtoh(&dy).unwrap();
    assert_eq!(got[0], sentinel);
    assert!(got[n + 1..].iter().all(|&v| v == sentinel));
    for i in 0..n {
        assert_eq!(got[i + 1], bf16::from_f32(x[i + 3]).to_bits(), "cast_f32_to_bf16_into [{i}]");
    }

    // A shape mismatch is an error, not a launch.
    let mut small = dev.htod(&[0u16; 4]).unwrap();
    let err = dev.cast_f32_to_bf16_into(&dx.slice(0..5), &mut small.slice_mut(..)).unwrap_err();
    assert!(err.to_string().contains("cast_f32_to_bf16"), "{err}");

    // Empty input.
    let e = dev.htod::<u16>(&[]).unwrap();
    assert!(dev.dtoh(&dev.cast_bf16_to_f32(&e).unwrap()).unwrap().is_empty());
}

#[test]
fn cuda_device_error_is_not_a_panic() {
    // Without a device, opening one is an error naming the op; with one, an absent ordinal is.
    let err = CudaDevice::new(1 << 20).unwrap_err();
    assert!(err.to_string().contains("CudaDevice::new"), "{err}");
    eprintln!("{err}");
}

const SEED: u64 = 0x5715_C4EC;

/// Runs every registry check of `op` (the kernel file's name) on the device.
fn run_op(op: &str) {
    run_selected(&format!("op `{op}`"), |c| c.op == op);
}

/// Runs every registry check of one kernel (`Check::kernel`) on the device.
fn run_kernel(kernel: &str) {
    run_selected(&format!("kernel `{kernel}`"), |c| c.kernel == kernel);
}

/// Runs the selected registry checks on the device (under `STIC_CUDA_EMU=1`, the reduced shapes
/// the registry gives the emulated device). A check that cannot run here (the Hopper kernel off
/// sm_90 or under emulation) prints its `not run: <why>` line and is counted; a selection that
/// ran nothing fails.
fn run_selected(what: &str, select: impl Fn(&Check) -> bool) {
    let selected: Vec<Check> = checks().into_iter().filter(|c| select(c)).collect();
    assert!(!selected.is_empty(), "no checks registered for {what}");
    let Some(dev) = cuda(CudaDevice::new) else { return };
    let (mut failures, mut not_run) = (Vec::new(), 0);
    for c in &selected {
        if let Some(why) = c.not_run_reason(&dev) {
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{} {}: {why}", c.kernel, c.shape);
            not_run += 1;
            continue;
        }
        let t0 = std::time::Instant::now();
        match c.run(&dev, SEED) {
            Ok(r) => {
                let secs = t0.elapsed().as_secs_f64();
                eprintln!("{:<18} {:<58} {:.3e} <= {:.3e} {} ({secs:.2} s)", c.kernel, c.shape, r.max_rel_err, r.tolerance, if r.pass { "ok" } else { "FAIL" });
                if !r.pass {
                    failures.push(format!("{} {}: {}", c.kernel, c.shape, r.detail));
                }
            }
            Err(e) => failures.push(format!("{} {}: error: {e}", c.kernel, c.shape)),
        }
    }
    eprintln!("{what}: {} run, {} failed, {not_run} not run", selected.len() - not_run, failures.len());
    assert!(failures.is_empty(), "{} of {} checks failed:\n{}", failures.len(), selected.len(), failures.join("\n"));
}

#[test]
fn rmsnorm_cuda_matches_cpu() {
    run_op("rmsnorm");
}

#[test]
fn layernorm_cuda_matches_cpu() {
    run_op("layernorm");
}

#[test]
fn rope_cuda_matches_cpu() {
    run_op("rope");
}

#[test]
fn activation_cuda_matches_cpu() {
    run_op("activation");
}

#[test]
fn embedding_cuda_matches_cpu() {
    run_op("embedding");
}

#[test]
fn sample_cuda_matches_cpu() {
    run_op("sample");
}

#[test]
fn attention_cuda_matches_cpu() {
    run_op("attention");
}

/// The split-KV (flash-decoding) checks alone: `attention_split` + `attention_combine` (they also
/// run in `attention_cuda_matches_cpu`, being checks of the `attention` op).
#[test]
fn attention_split_cuda_matches_cpu() {
    run_kernel("attention_split");
}

/// Without a device: the split plan covers every key of a row exactly once in whole 32-key
/// tiles, for any split count (empty splits only at the end), and the heuristic makes enough
/// (row, head group, split) blocks for the GPU without splits shorter than 128 keys.
#[test]
fn attention_split_plan() {
    use stic::backend::cuda::{attention_split_chunk, attention_splits, ATTENTION_SPLITS_MAX};
    for len in (1..=1100).chain([4095, 4096, 4097, 32767, 32768, 1 << 30]) {
        for splits in (1..=70).chain([255, 1000, ATTENTION_SPLITS_MAX]) {
            let chunk = attention_split_chunk(len, splits);
            assert!(chunk > 0 && chunk.is_multiple_of(32), "len {len} splits {splits}: chunk {chunk}");
            let nz = len.div_ceil(chunk);
            // Splits [0, nz) are non-empty and cover [0, len); the rest are empty.
            assert!(nz <= splits && (nz - 1) * chunk < len && len <= nz * chunk, "len {len} splits {splits}: chunk {chunk}");
            // No more than one tile's worth of imbalance per split against an even cut.
            assert!(chunk < len.div_ceil(splits) + 32, "len {len} splits {splits}: chunk {chunk}");
        }
    }
    let sms = 132; // H100 SXM
    // Issue #4's decode shapes (Mistral-7B: 8 head groups of 4 per sequence).
    assert_eq!(attention_splits(32768, 8, sms), 64); // 512 blocks of 512 keys
    assert_eq!(attention_splits(4096, 8, sms), 32); // 256 blocks of 128 keys
    assert_eq!(attention_splits(32768, 64, sms), 9); // B=8: 576 blocks
    assert_eq!(attention_splits(4096, 512, sms), 2); // B=64: 1024 blocks
    // Enough blocks already, or rows too short to split: the single-pass kernel.
    assert_eq!(attention_splits(4096, 2880 * 8, sms), 1);
    assert_eq!(attention_splits(255, 8, sms), 1);
    assert_eq!(attention_splits(0, 8, sms), 1);
    for max_len in [1usize, 100, 128, 256, 1000, 4096, 32768, 1 << 20, 1 << 30] {
        for blocks in [1usize, 8, 64, 512, 4096] {
            let s = attention_splits(max_len, blocks, sms);
            assert!((1..=ATTENTION_SPLITS_MAX).contains(&s), "{max_len} {blocks}: {s}");
            if s > 1 {
                let chunk = attention_split_chunk(max_len, s);
                // Every split of the longest row holds keys, at least 128 of them but the last.
                assert_eq!(max_len.div_ceil(chunk), s, "{max_len} {blocks}: {s}");
                assert!(chunk >= 128, "{max_len} {blocks}: {s} splits of {chunk}");
                // Not past the block target (4 per SM) by more than one split's worth.
                assert!(blocks * (s - 1) < 4 * sms, "{max_len} {blocks}: {s}");
            }
        }
    }
}

#[test]
fn attention_train_cuda_matches_cpu() {
    run_op("attention_train");
}

/// The Hopper forward (wgmma + TMA) against the same references as `attention_train`; every
/// case prints a `not run: <why>` line on a GPU that is not compute capability 9.x and on the
/// emulated device (issue #15).
#[test]
fn attention_hopper_cuda_matches_cpu() {
    run_op("attention_hopper");
}

#[test]
fn matmul_cuda_matches_cpu() {
    run_op("matmul");
}

#[test]
fn lora_cuda_matches_cpu() {
    run_op("lora");
}

#[test]
fn logprob_cuda_matches_cpu() {
    run_op("logprob");
}

#[test]
fn copy_cuda_matches_cpu() {
    run_op("copy");
}

#[test]
fn add_cuda_matches_cpu() {
    run_op("add");
}

#[test]
fn adamw_cuda_matches_cpu() {
    run_op("adamw");
}

#[test]
fn dpo_cuda_matches_cpu() {
    run_op("dpo");
}

#[test]
fn dropout_cuda_matches_cpu() {
    run_op("dropout");
}

/// Without a device: every check's references agree with the CPU result (which then passes the
/// tolerance rule), and a wrong, unwritten or out-of-bounds output fails it.
#[test]
fn check_harness_accepts_cpu_and_rejects_bad_outputs() {
    let all = checks();
    for op in ["cast", "rmsnorm", "layernorm", "rope", "activation", "embedding", "sample", "attention", "attention_train", "matmul", "copy", "add", "adamw", "lora", "logprob", "dpo", "dropout"] {
        assert!(all.iter().any(|c| c.op == op), "no checks registered for op `{op}`");
    }
    let mut failures = Vec::new();
    for c in &all {
        let t0 = std::time::Instant::now();
        match c.self_test(SEED) {
            Ok(r) => eprintln!("{:<18} {:<58} ({:.2} s) cpu stand-in: {}", c.kernel, c.shape, t0.elapsed().as_secs_f64(), r.detail),
            Err(e) => failures.push(format!("{} {}: {e}", c.kernel, c.shape)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Shape errors are `Error::Shape` naming the op, raised before any launch.
#[test]
fn cuda_shape_errors_name_the_op() {
    let Some(dev) = cuda(CudaDevice::new) else { return };
    let x = dev.htod(&[0x3F80u16; 12]).unwrap();
    let w = dev.htod(&[0x3F80u16; 5]).unwrap();
    let mut y = dev.htod(&[0u16; 12]).unwrap();
    let mut r = dev.htod(&[0u16; 10]).unwrap();
    let expect = |e: stic::Error, op: &str| {
        assert!(matches!(e, stic::Error::Shape { .. }), "{e}");
        assert!(e.to_string().contains(op), "{e}");
    };
    expect(dev.rmsnorm(&x.as_view(), &w.as_view(), 1e-5, &mut y.as_view_mut()).unwrap_err(), "rmsnorm");
    expect(dev.rmsnorm_residual(&x.slice(0..10), &mut r.as_view_mut(), &w.slice(0..5), 1e-5, &mut y.as_view_mut()).unwrap_err(), "rmsnorm_residual");
    expect(dev.layernorm(&x.as_view(), &w.slice(0..4), &w.as_view(), 1e-5, &mut y.as_view_mut()).unwrap_err(), "layernorm");
    let inv = dev.rope_inv_freq(4, 1e4).unwrap();
    let pos = dev.htod(&[1u32, 2]).unwrap();
    let mut k = dev.htod(&[0x3F80u16; 8]).unwrap();
    // q [2, 1*4] would be 8 elements; 12 is wrong.
    expect(dev.rope(&mut y.as_view_mut(), 1, &pos.as_view(), &inv.as_view()).unwrap_err(), "rope");
    expect(dev.rope_qk(&mut y.slice_mut(0..8), 1, &mut k.slice_mut(0..6), 1, &pos.as_view(), &inv.as_view()).unwrap_err(), "rope_qk");
    expect(dev.swiglu(&x.as_view(), &x.slice(0..11), &mut y.as_view_mut()).unwrap_err(), "swiglu");
    expect(dev.swiglu_fused(&x.as_view(), 4, &mut y.slice_mut(0..6)).unwrap_err(), "swiglu_fused");
    let src = dev.htod(&[0u32, 1]).unwrap();
    expect(dev.embedding(&x.as_view(), 5, None, &src.as_view(), &mut y.as_view_mut(), None).unwrap_err(), "embedding");
    let mut idx = dev.htod(&[0u32; 3]).unwrap();
    expect(dev.argmax_bf16(&x.as_view(), 5, &mut idx.as_view_mut()).unwrap_err(), "argmax_bf16");
    let xf = dev.htod(&[1.0f32; 12]).unwrap();
    expect(dev.argmax_f32(&xf.as_view(), 4, &mut idx.slice_mut(0..2)).unwrap_err(), "argmax_f32");
    // sample: logits [3, 4]; out [2], uniforms [2], V=5 (12 is not a multiple); temperature 0 is
    // not a sampling temperature (greedy is argmax).
    let uni = dev.htod(&[0.5f64; 3]).unwrap();
    expect(dev.sample(&xf.as_view(), 4, 1.0, 0, 0.9, &uni.as_view(), &mut idx.slice_mut(0..2)).unwrap_err(), "sample");
    expect(dev.sample(&xf.as_view(), 4, 1.0, 0, 0.9, &uni.slice(0..2), &mut idx.as_view_mut()).unwrap_err(), "sample");
    expect(dev.sample(&xf.as_view(), 5, 1.0, 0, 0.9, &uni.as_view(), &mut idx.as_view_mut()).unwrap_err(), "sample");
    let e = dev.sample(&xf.as_view(), 4, 0.0, 0, 0.9, &uni.as_view(), &mut idx.as_view_mut()).unwrap_err();
    assert!(matches!(e, stic::Error::Input(_)) && e.to_string().contains("temperature"), "{e}");
    assert!(matches!(dev.activation("relu", &mut y.as_view_mut()).unwrap_err(), stic::Error::Input(_)));
    // attention: q and out [N=1, H=2, D=8] are 16 elements; k, v [S=1, cap=2, Hkv=1, D=8] 16 each.
    let a = dev.htod(&[0x3F80u16; 32]).unwrap();
    let rows = dev.htod(&[0u32, 0, 2]).unwrap();
    let mut o = dev.htod(&[0u16; 32]).unwrap();
    let (q16, kv16, kv8, r3) = (a.slice(0..16), a.slice(16..32), a.slice(16..24), rows.as_view());
    let mut attn = |q: &stic::backend::cuda::CudaView<'_, u16>, k, v, rows: &stic::backend::cuda::CudaView<'_, u32>, n_out: usize, h, hkv, d, cap| {
        dev.attention(q, k, v, rows, &mut o.slice_mut(0..n_out), h, hkv, d, cap, 0.5).unwrap_err()
    };
    expect(attn(&q16, &kv16, &kv16, &r3, 16, 3, 2, 8, 2), "attention"); // H % Hkv != 0
    expect(attn(&q16, &kv16, &kv16, &r3, 16, 2, 1, 4, 4), "attention"); // D=4 unsupported
    expect(attn(&q16, &kv16, &kv16, &r3, 15, 2, 1, 8, 2), "attention"); // out is not [N, H*D]
    expect(attn(&q16, &kv16, &kv16, &rows.slice(0..2), 16, 2, 1, 8, 2), "attention"); // rows not [N, 3]
    expect(attn(&q16, &kv16, &kv16, &r3, 16, 2, 1, 8, 3), "attention"); // k not [S, cap, Hkv*D]
    expect(attn(&q16, &kv16, &kv8, &r3, 16, 2, 1, 8, 2), "attention"); // v not the length of k

    // matmul: x [2, 6] @ w [2, 6]^T -> y [2, 2]; wrong y, wrong w, wrong bias, K = 0.
    expect(dev.matmul(&x.as_view(), &x.as_view(), None, &mut y.slice_mut(0..5), 2, 2, 6, false).unwrap_err(), "matmul");
    expect(dev.matmul(&x.as_view(), &x.slice(0..11), None, &mut y.slice_mut(0..4), 2, 2, 6, false).unwrap_err(), "matmul");
    expect(dev.matmul(&x.as_view(), &x.as_view(), Some(&w.slice(0..3)), &mut y.slice_mut(0..4), 2, 2, 6, false).unwrap_err(), "matmul");
    let mut yf = dev.htod(&[0f32; 4]).unwrap();
    expect(dev.matmul(&x.slice(0..0), &x.slice(0..0), None, &mut yf.as_view_mut(), 2, 2, 0, true).unwrap_err(), "matmul");
    // matmul_nn: x [2, 6] @ w [6, 2] -> y [2, 2]; wrong w.
    expect(dev.matmul_nn(&x.as_view(), &x.slice(0..11), &mut y.slice_mut(0..4), 2, 2, 6, false).unwrap_err(), "matmul_nn");

    // lora: x [2, 3], w [2, 3], a [r=1, 3], b [2, 1] -> y [2, 2], u [2, 1].
    let xs = x.slice(0..6);
    let (a3, b2) = (x.slice(0..3), x.slice(0..2));
    let mut u2 = dev.htod(&[0f32; 2]).unwrap();
    expect(dev.lora_fwd(&xs, None, &xs, &a3, &b2, 1.0, &mut y.slice_mut(0..3), &mut u2.as_view_mut(), 2, 3, 2, 1).unwrap_err(), "lora_fwd"); // y not [M, N]
    expect(dev.lora_fwd(&xs, None, &xs, &x.slice(0..0), &x.slice(0..0), 1.0, &mut y.slice_mut(0..4), &mut u2.slice_mut(0..0), 2, 3, 2, 0).unwrap_err(), "lora_fwd"); // r = 0
    expect(dev.lora_fwd(&xs, None, &xs, &a3, &b2, 1.0, &mut y.slice_mut(0..4), &mut u2.as_view_mut(), 2, 3, 2, 129).unwrap_err(), "lora_fwd"); // r > 128
    let mut g3 = dev.htod(&[0f32; 3]).unwrap();
    let mut g2 = dev.htod(&[0f32; 2]).unwrap();
    let mut dxs = dev.htod(&[0u16; 6]).unwrap();
    expect(
        dev.lora_bwd(&xs, &xs, &a3, &b2, 1.0, &u2.as_view(), &x.slice(0..4), &mut dxs.as_view_mut(), &mut g3.slice_mut(0..2), &mut g2.as_view_mut(), 2, 3, 2, 1, false, None).unwrap_err(),
        "lora_bwd",
    ); // dA not [r, K]
    expect(
        dev.lora_bwd(&xs, &xs, &a3, &b2, 1.0, &u2.as_view(), &x.slice(0..5), &mut dxs.as_view_mut(), &mut g3.as_view_mut(), &mut g2.as_view_mut(), 2, 3, 2, 1, false, None).unwrap_err(),
        "lora_bwd",
    ); // dy not [M, N]
    // logprob: h [2, 3], w [4, 3], targets [2] -> logp, lse [2]; dh [2, 3].
    let tg = dev.htod(&[0u32, 1]).unwrap();
    expect(dev.logprob(&xs, &x.slice(0..12), &tg.as_view(), &mut g2.as_view_mut(), &mut g3.slice_mut(0..1), 2, 3, 4).unwrap_err(), "logprob"); // lse not [T]
    expect(dev.logprob(&xs, &x.slice(0..11), &tg.as_view(), &mut g2.as_view_mut(), &mut u2.as_view_mut(), 2, 3, 4).unwrap_err(), "logprob"); // w not [V, C]
    let mut dh = dev.htod(&[0f32; 6]).unwrap();
    expect(dev.logprob_backward(&xs, &x.slice(0..12), &tg.as_view(), &g2.as_view(), &u2.as_view(), &mut dh.slice_mut(0..5), 2, 3, 4, false).unwrap_err(), "logprob_backward"); // dh not [T, C]
    expect(dev.logprob_chunked(&xs, &x.slice(0..12), &tg.as_view(), &mut g2.as_view_mut(), &mut u2.as_view_mut(), 2, 3, 4, 0).unwrap_err(), "logprob"); // chunk 0

    // M = 0 is a no-op.
    dev.matmul(&x.slice(0..0), &x.as_view(), None, &mut yf.slice_mut(0..0), 0, 2, 6, false).unwrap();
    // Empty inputs are no-ops, not errors.
    dev.silu(&mut y.slice_mut(0..0)).unwrap();
    dev.argmax_f32(&xf.slice(0..0), 4, &mut idx.slice_mut(0..0)).unwrap();
    dev.sample(&xf.slice(0..0), 4, 1.0, 0, 0.9, &uni.slice(0..0), &mut idx.slice_mut(0..0)).unwrap();
}

/// Launches are checked against the device limits and the kernel's attributes before they run,
/// on a GPU and on the emulated device alike: 2048 threads per block fail; 64 KiB of dynamic
/// shared memory fail until the kernel's MAX_DYNAMIC_SHARED_SIZE_BYTES attribute allows them,
/// then succeed. (The `add` kernel with valid arguments, so that nothing else can go wrong.)
#[test]
fn launches_are_checked_against_the_limits_and_attributes() {
    use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    let Some(dev) = cuda(CudaDevice::new) else { return };
    let n = 64usize;
    let mut x = dev.htod(&vec![bf16::from_f32(1.0).to_bits(); n]).unwrap();
    let y = dev.htod(&vec![bf16::from_f32(2.0).to_bits(); n]).unwrap();
    let f = dev.function("add", "add").unwrap();
    let (n64, period) = (n as u64, n as u64);
    let mut launch = |block: u32, smem: u32| {
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: smem };
        let mut b = dev.stream().launch_builder(&f);
        b.arg(&mut x).arg(&y).arg(&n64).arg(&period);
        // SAFETY: add(u16* x, const u16* y, u64 n, u64 period) with n elements in x and y.
        unsafe { b.launch(cfg) }.map(|_| ()).and_then(|_| dev.stream().synchronize())
    };
    let emu = stic::backend::cuda::emulated();
    let e = launch(2048, 0).expect_err("a block of 2048 threads must fail");
    assert!(!emu || e.to_string().contains("exceeds the device limits"), "{e}");
    let e = launch(64, 64 * 1024).expect_err("64 KiB of dynamic shared memory without the attribute must fail");
    assert!(!emu || e.to_string().contains("MAX_DYNAMIC_SHARED_SIZE_BYTES"), "{e}");
    f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 64 * 1024).unwrap();
    launch(64, 64 * 1024).expect("64 KiB once the attribute allows them");
    let out: Vec<u16> = dev.dtoh(&x).unwrap();
    assert!(out.iter().all(|&v| bf16::from_bits(v).to_f32() == 3.0), "x + y");
}
