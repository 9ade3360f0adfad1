//! Parity checks of the CUDA kernels against the CPU reference: one registry, run by
//! `tests/cuda_parity.rs` (one `#[test]` per op, `<op>_cuda_matches_cpu`) and by `stic check`.
//!
//! A check makes seeded random inputs (bf16 values, never zero), computes on the host what the
//! kernel must produce, runs the kernel on the device and compares:
//! - **close** (bf16 outputs of arithmetic): flash-attention's rule. With `ref` the op evaluated in
//!   f64 on the same bf16 inputs (widened exactly to f32/f64) and `cpu` the crate's f32 CPU
//!   reference (`crate::backend::cpu::<op>`) rounded to bf16, the kernel passes when
//!   `err(kernel) <= 2 * err(cpu) + 2^-8`: at most twice the error of the plain f32
//!   implementation, plus one bf16 output rounding (2^-8 relative). The error is the largest
//!   elementwise relative error `|got - ref| / max(|ref|, floor)`, with `floor = 1e-2 * rms(ref)`
//!   so that outputs which cancel to nearly zero (rope, layernorm's bias) are judged against the
//!   scale of the tensor rather than against themselves. The same rule is applied to the mean
//!   error of outputs of at least 256 elements, `mean(kernel) <= 2 * mean(cpu) + 2^-12`: the max
//!   rule alone lets a systematic bias of up to ~1% through, the mean rule catches ~0.5%.
//!   f32 outputs (GEMMs into f32 logits or residuals) take the same rule with the CPU result used
//!   as it is and f32's rounding in place of bf16's: `2 * err(cpu) + 2^-24` and
//!   `2 * mean(cpu) + 2^-28`.
//! - **exact** (copies and selections: embedding rows, the stored residual sum, argmax indices,
//!   sampled tokens, casts, attention's NaN rows for key ranges outside the cache): bit-for-bit.
//!   The sampling checks draw their uniforms at least 1e-9 away from every CDF value of the row
//!   (computed in f64 on the host) and redraw rows whose top-p cumulative sums come within 1e-9
//!   of 1 - top_p, so that summation order (the only difference from `cpu::sample_row`) cannot
//!   decide the token.
//!
//! Attention's f64 reference is `cpu::attention_rows` evaluated in f64 (`attention_rows_f64`);
//! its checks cover batched decode, causal and sliding-window prefill, chunked prefill over a
//! cache, the bidirectional vision tower (Mistral-7B and CLIP ViT-L shapes), head dims 64, 80, 96
//! and 128, GQA groups of 1, 3, 4 and 16, an empty key range and rows outside the cache.
//! The `attention_split` checks (kernel name; op `attention`) run the split-KV path (decode over
//! long caches) with forced and heuristic split counts, see `attention_split_shapes`.
//!
//! The training attention (`attention_train`: `attention_fwd`, `attention_bwd`) rounds P and dS to
//! bf16 before its tensor-core products, so its bf16 outputs are judged as `CloseRms`: the same
//! rule with the error floor at rms(ref) (flash-attention's own rule is absolute), against a CPU
//! stand-in that makes the same roundings (as flash-attention's bf16 PyTorch reference); lse (f32)
//! takes the f32 rule. References: f64 loops with `AttnMask::visible` (forward, lse) and
//! `cpu::attention_backward` in f64 per sequence (gradients). See docs/TOLERANCES.md.
//!
//! The training checks run forward and backward together: `lora` (y, u, dx, dA, dB against
//! `cpu::lora_fwd` / `cpu::lora_bwd` in f64 and f32) and `logprob` (logp, lse against the f64
//! log-softmax and `cpu::logprob`; dh against the f64 gradient, with the f32 emulation of the
//! kernel's hi/lo bf16 split of the logit gradients as the CPU result). The realistic lm_head shape
//! runs every row on the device and compares a few (`pick_rows`, the buffer's guards kept).
//!
//! Outputs are poisoned before the launch (bf16 NaN 0x7FFF, u32 0xFFFF_FFFF): an element the
//! kernel did not write shows up as NaN (infinite error) or as a mismatch. Every device buffer has
//! poisoned guard elements on both sides, checked untouched afterwards (no out-of-bounds writes).
//! In-place kernels (rope, silu, ...) cannot be poisoned; their guards are still checked. Guard
//! offsets are 8 elements (16 bytes, so the vector paths run) or, in the `misaligned` checks, an
//! odd number (so the scalar fallback runs on shapes that would otherwise take the vector path).
//!
//! [`Check::self_test`] runs a check's host side with the CPU result standing in for the kernel,
//! and with deliberately wrong outputs: it validates the references, the metric and the poison /
//! guard detection on machines without a GPU.

use std::io::Write;

use half::bf16;

use super::{CudaDevice, CudaSlice, CudaView, DeviceRepr};
use crate::backend::cpu;
use crate::error::Result;

/// The outcome of one check.
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// The largest error over the outputs (for exact outputs: 0 when identical, else 1).
    pub max_rel_err: f64,
    /// The smallest tolerance of the outputs (0 for exact ones).
    pub tolerance: f64,
    pub pass: bool,
    /// Per output: its error and tolerance, or what went wrong first.
    pub detail: String,
}

/// One registered check: the op family (`kernels/<op>.cu`), the kernel or entry point, the shape.
pub struct Check {
    pub op: &'static str,
    pub kernel: &'static str,
    pub shape: String,
    make: Box<dyn Fn(u64) -> Case + Send + Sync>,
}

impl Check {
    /// Runs the check on `dev` with inputs from `seed` (each check mixes its own name into it).
    pub fn run(&self, dev: &CudaDevice, seed: u64) -> Result<CheckResult> {
        let case = (self.make)(self.seed(seed));
        let got = (case.device)(dev)?;
        Ok(evaluate(&case.expect, &got))
    }

    /// Validates the host side without a device: the CPU result (rounded to bf16) standing in for
    /// the kernel must pass, and each corruption (one element 10% off or flipped, one element left
    /// poisoned, one guard overwritten) must fail. Returns what went wrong.
    pub fn self_test(&self, seed: u64) -> std::result::Result<CheckResult, String> {
        let case = (self.make)(self.seed(seed));
        let good: Vec<Output> = case.expect.iter().map(Output::emulate).collect();
        let r = evaluate(&case.expect, &good);
        if !r.pass {
            return Err(format!("the CPU stand-in fails: {}", r.detail));
        }
        for (o, e) in case.expect.iter().enumerate() {
            for corruption in [Corruption::Value, Corruption::Unwritten, Corruption::Guard, Corruption::Bias] {
                if matches!(corruption, Corruption::Bias) && !matches!(e, Expected::Close { reference, .. } | Expected::CloseRms { reference, .. } | Expected::CloseF32 { reference, .. } if reference.len() >= MEAN_RULE_MIN) {
                    continue;
                }
                let mut bad = good.clone();
                bad[o].corrupt(e, corruption);
                let rb = evaluate(&case.expect, &bad);
                if rb.pass {
                    return Err(format!("output {} with {corruption:?} passes: {}", e.name(), rb.detail));
                }
            }
        }
        Ok(r)
    }

    /// Why this check cannot run on `dev` (printed as a skip), or `None`: the Hopper attention
    /// needs compute capability 9.x.
    pub fn skip_reason(&self, dev: &CudaDevice) -> Option<String> {
        if self.op == "attention_hopper" && !dev.attention_hopper_available() {
            let (major, minor) = dev.compute_capability();
            return Some(format!("skipped: attention_hopper needs an sm_90 GPU (compute capability 9.x), this is sm_{major}{minor}"));
        }
        None
    }

    fn seed(&self, seed: u64) -> u64 {
        // FNV-1a of the kernel name and shape, so that checks get different inputs.
        let mut h = 0xCBF2_9CE4_8422_2325u64;
        for b in self.kernel.bytes().chain(self.shape.bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
        }
        seed ^ h
    }
}

/// Every check, in a fixed order (op families in `kernels/` file order is not implied).
pub fn checks() -> Vec<Check> {
    let mut v = Vec::new();
    let mut add = |op: &'static str, kernel: &'static str, shape: String, make: Box<dyn Fn(u64) -> Case + Send + Sync>| {
        v.push(Check { op, kernel, shape, make });
    };

    for &(t, c, eps, off) in &[(1, 4096, 1e-5, 8), (7, 4096, 1e-5, 8), (3, 1024, 1e-6, 8), (5, 33, 1e-5, 8), (2, 8192, 1e-5, 8), (3, 1024, 1e-6, 1)] {
        add("rmsnorm", "rmsnorm", shape2(t, c, off, &format!("eps {eps:e}")), Box::new(move |s| rmsnorm_case(t, c, eps, off, s)));
    }
    for &(t, c, off) in &[(1, 4096, 8), (7, 4096, 8), (5, 33, 8), (3, 1024, 3)] {
        add("rmsnorm", "rmsnorm_residual", shape2(t, c, off, "eps 1e-5"), Box::new(move |s| rmsnorm_residual_case(t, c, 1e-5, off, s)));
    }
    for &(t, c, off) in &[(1, 1024, 8), (577, 1024, 8), (3, 4096, 8), (5, 33, 8), (2, 1024, 1)] {
        add("layernorm", "layernorm", shape2(t, c, off, "eps 1e-5"), Box::new(move |s| layernorm_case(t, c, 1e-5, off, s)));
    }

    for &(h, hkv, d, theta) in &[(32, 8, 128, 1e6), (16, 16, 64, 1e4), (4, 2, 8, 1e4)] {
        for &(t, p0) in &[(1, 4095), (17, 1000), (577, 3)] {
            let shape = format!("T={t} H={h} Hkv={hkv} D={d} pos {p0}.. theta {theta:e}");
            add("rope", "rope_qk", shape, Box::new(move |s| rope_case(t, h, hkv, d, theta, Positions::From(p0), true, s)));
        }
    }
    add("rope", "rope_qk", "T=8 H=32 Hkv=8 D=128 random pos < 32768 theta 1e6".into(), Box::new(|s| rope_case(8, 32, 8, 128, 1e6, Positions::Random(32768), true, s)));
    add("rope", "rope", "T=17 H=16 D=64 pos 5.. theta 1e4 (q only)".into(), Box::new(|s| rope_case(17, 16, 0, 64, 1e4, Positions::From(5), false, s)));

    for act in [Act::Silu, Act::Gelu, Act::QuickGelu] {
        for &(n, off) in &[(1, 8), (1000, 8), (14336 * 3 + 5, 8), (1000, 3)] {
            add("activation", act.name(), shape1(n, off), Box::new(move |s| activation_case(act, n, off, s)));
        }
    }
    for &(n, off) in &[(1, 8), (1000, 8), (14336 * 3 + 5, 8), (14336 * 2, 8), (1000, 1)] {
        add("activation", "swiglu", shape1(n, off), Box::new(move |s| swiglu_case(n, off, s)));
    }
    for &(t, f, off) in &[(1, 1, 8), (3, 14336, 8), (5, 1000, 8), (2, 5, 8), (4, 64, 1)] {
        add("activation", "swiglu_fused", shape2(t, 2 * f, off, ""), Box::new(move |s| swiglu_fused_case(t, f, off, s)));
    }

    add("embedding", "embedding", "V=32064 C=4096 T=40, image span [7, 31) of K=24".into(), Box::new(|s| embedding_case(32064, 4096, 40, 7, 24, 8, false, s)));
    add("embedding", "embedding", "V=32064 C=4096 T=5, text only".into(), Box::new(|s| embedding_case(32064, 4096, 5, 0, 0, 8, false, s)));
    add("embedding", "embedding", "V=17 C=33 T=9, image span [2, 5) of K=3 (misaligned)".into(), Box::new(|s| embedding_case(17, 33, 9, 2, 3, 1, false, s)));
    add("embedding", "embedding", "V=100 C=64 T=6, image span [1, 3) of K=2, one source out of range".into(), Box::new(|s| embedding_case(100, 64, 6, 1, 2, 8, true, s)));

    for bf in [false, true] {
        for &(b, v) in &[(1, 32064), (8, 32064), (3, 17)] {
            let kernel = if bf { "argmax_bf16" } else { "argmax_f32" };
            add("sample", kernel, format!("[{b}, {v}] with ties"), Box::new(move |s| argmax_case(b, v, bf, s)));
        }
    }

    // Temperature / top-k / top-p sampling: exact against cpu::sample_row with the same uniforms
    // (drawn away from CDF boundaries, rows redrawn when a top-p cut is within 1e-9 of 1 - top_p).
    for &(b, v, t, k, p, rows) in SAMPLE_SHAPES {
        add("sample", "sample_f32", format!("[{b}, {v}] T={t} top_k={k} top_p={p} {}", rows.name()), Box::new(move |s| sample_case(b, v, t, k, p, rows, s)));
    }

    for a in attention_shapes() {
        add("attention", "attention", a.name.clone(), Box::new(move |s| attention_case(&a, s)));
    }
    // Split-KV (flash-decoding): the same op through attention_split + attention_combine.
    for a in attention_split_shapes() {
        add("attention", "attention_split", a.name.clone(), Box::new(move |s| attention_case(&a, s)));
    }

    for a in attention_train_shapes() {
        let kernel = if a.backward { "attention_bwd" } else { "attention_fwd" };
        add("attention_train", kernel, a.name.clone(), Box::new(move |s| attention_train_case(&a, s)));
    }

    // The Hopper forward (kernels/attention_hopper.cu, sm_90a) on the same forward cases as the
    // sm_80 kernel (the TMA needs 16-byte aligned q, k, v, so not the misaligned one) and a few
    // that cross its 128-row tiles; skipped on other GPUs (`Check::skip_reason`).
    for a in attention_train_shapes().into_iter().chain(attention_hopper_shapes()).filter(|a| !a.backward && a.off.is_multiple_of(8)) {
        add("attention_hopper", "attention_fwd_hopper", a.name.clone(), Box::new(move |s| attention_train_case_with(&a, super::AttnFwdKernel::Hopper, s)));
    }

    for &g in MATMUL_SHAPES {
        add("matmul", "matmul", g.shape(), Box::new(move |s| matmul_case(g, s)));
    }

    // matmul_nn: dx = dy W of a Linear's backward (w [K, N] as stored).
    for &(m, k, n, f32_out, acc, off) in &[(300, 4096, 4096, true, false, 8), (7, 14336, 4096, false, false, 8), (5, 33, 77, true, true, 3), (3, 77, 33, false, false, 1)] {
        let shape = format!("M={m} K={k} N={n}{} -> {}{}", if acc { " +=y" } else { "" }, if f32_out { "f32" } else { "bf16" }, if off % 8 != 0 { " misaligned" } else { "" });
        add("matmul", "matmul_nn", shape, Box::new(move |s| matmul_nn_case(m, k, n, f32_out, acc, off, s)));
    }

    // matmul_tn: the weight gradient dW = dy^T x of a Linear (x [K, M] used transposed), f32
    // accumulated over examples, and the bias gradient (w a column of ones).
    for &(m, k, n, acc, off) in &[(4096, 2928, 1024, true, 8), (4096, 300, 1, false, 8), (33, 7, 77, true, 3), (5, 1, 9, false, 1)] {
        let shape = format!("M={m} K={k} N={n}{} -> f32{}", if acc { " +=y" } else { "" }, if off % 8 != 0 { " misaligned" } else { "" });
        add("matmul", "matmul_tn", shape, Box::new(move |s| matmul_tn_case(m, k, n, acc, off, s)));
    }
    for act in ["gelu", "quick_gelu", "silu"] {
        for &(n, off) in &[(2928 * 4096, 8), (1000, 3)] {
            add("activation", "activation_backward", format!("{act} {}", shape1(n, off)), Box::new(move |s| activation_backward_case(act, n, off, s)));
        }
    }

    // Training: the LoRA linear layer (forward + backward) and the chunked log-prob (forward + backward).
    for &g in LORA_SHAPES {
        add("lora", "lora_fwd_bwd", g.shape(), Box::new(move |s| lora_case(g, s)));
    }
    // LoRA dropout: the masks (exact), and the LoRA layer with a dropped input.
    for &(n, pr, off) in &[(3300 * 4096, 0.05f32, 8), (1000, 0.5, 3), (7, 0.1, 1)] {
        add("dropout", "dropout", format!("[{n}] p {pr}{}", if off % 8 != 0 { " misaligned" } else { "" }), Box::new(move |s| dropout_case(n, pr, off, s)));
    }
    for &(m, k, n, r, off) in &[(300, 4096, 4096, 16, 8), (70, 130, 200, 40, 3)] {
        add("lora", "lora_dropout_fwd_bwd", format!("M={m} K={k} N={n} r={r} p 0.1{}", if off % 8 != 0 { " misaligned" } else { "" }), Box::new(move |s| lora_dropout_case(m, k, n, r, off, s)));
    }
    for g in logprob_shapes() {
        add("logprob", "logprob_fwd_bwd", g.shape(), Box::new(move |s| logprob_case(&g, s)));
    }

    // Row moves and the broadcast add: exact (copies; one f32 add of two bf16 values, rounded once).
    for &(n, r, w, off) in &[(1, 2 * 4096, 1024, 8), (64, 64 * 64, 1024, 8), (5, 9, 33, 8), (7, 20, 96, 3)] {
        add("copy", "scatter_rows", format!("src [{n}, {w}] into dst [{r}, {w}] at +{off}"), Box::new(move |s| scatter_rows_case(n, r, w, off, s)));
    }
    for &(r, c1, c2, off) in &[(2880, 1024, 1024, 8), (7, 33, 5, 8), (5, 16, 24, 1)] {
        add("copy", "concat_cols", format!("[{r}, {c1}] | [{r}, {c2}] at +{off}"), Box::new(move |s| concat_cols_case(r, c1, c2, off, s)));
    }
    for &(rows, period, c, off) in &[(2 * 577, 577, 1024, 8), (7, 7, 4096, 8), (9, 3, 33, 1), (1, 1, 5, 8)] {
        add("add", "add", format!("[{rows}, {c}] += [{period}, {c}] at +{off}"), Box::new(move |s| add_case(rows, period, c, off, s)));
    }

    // Backward kernels of training (LoRA: no weight gradients for the frozen norms).
    for &(t, c, off) in &[(1, 4096, 8), (7, 4096, 8), (5, 33, 3)] {
        add("rmsnorm", "rmsnorm_backward", shape2(t, c, off, "eps 1e-5"), Box::new(move |s| rmsnorm_backward_case(t, c, 1e-5, off, s)));
    }
    for &(t, p0) in &[(17usize, 1000u32), (300, 0)] {
        let shape = format!("T={t} H=32 Hkv=8 D=128 pos {p0}.. theta 1e6");
        add("rope", "rope_backward_qk", shape, Box::new(move |s| rope_case_dir(t, 32, 8, 128, 1e6, Positions::From(p0), true, true, s)));
    }
    for &(n, off) in &[(14336, 8), (1000, 3)] {
        add("activation", "swiglu_backward", shape1(n, off), Box::new(move |s| swiglu_backward_case(n, off, s)));
    }

    // The DPO / STIC loss over a batch of pairs.
    for &(b, alpha) in &[(1usize, 0.0f64), (4, 1.0 / 1024.0), (64, 1.0 / 1024.0)] {
        add("dpo", "dpo", format!("{b} pairs, beta 0.1, alpha {alpha}"), Box::new(move |s| dpo_case(b, 0.1, alpha, s)));
    }

    // AdamW over many tensors: exact (the same f32 operations, none contracted).
    for &(tensors, step, off) in &[(448usize, 1u64, 8usize), (448, 1000, 8), (3, 7, 1), (1, 1, 8)] {
        add("adamw", "adamw", format!("{tensors} tensors, step {step} at +{off}"), Box::new(move |s| adamw_case(tensors, step, off, s)));
    }

    add("cast", "cast_bf16_to_f32", "all 65536 bf16 bit patterns".into(), Box::new(cast_bf16_to_f32_case));
    add("cast", "cast_f32_to_bf16", "[100003] random f32 bits".into(), Box::new(|s| cast_f32_to_bf16_case(100_003, s)));
    v
}

/// Runs the checks whose op or kernel is `filter` (all when `None`) and prints one table row per
/// check to `out`. Returns whether every selected check passed (false also when none matched).
pub fn run_checks(dev: &CudaDevice, seed: u64, filter: Option<&str>, out: &mut dyn Write) -> std::io::Result<bool> {
    let selected: Vec<Check> = checks().into_iter().filter(|c| filter.is_none_or(|f| c.op == f || c.kernel == f)).collect();
    if selected.is_empty() {
        writeln!(out, "no check matches `{}`", filter.unwrap_or(""))?;
        return Ok(false);
    }
    writeln!(out, "device: {} (sm_{}{}), seed {seed}", dev.name(), dev.compute_capability().0, dev.compute_capability().1)?;
    writeln!(out, "{:<18} {:<58} {:>11} {:>11}  pass", "op", "shape", "max rel err", "tolerance")?;
    let (mut passed, mut failed) = (0, 0);
    for c in &selected {
        if let Some(why) = c.skip_reason(dev) {
            writeln!(out, "{:<18} {:<58} {why}", c.kernel, c.shape)?;
            continue;
        }
        let r = c.run(dev, seed);
        let ok = matches!(&r, Ok(r) if r.pass);
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
        match r {
            Ok(r) => {
                writeln!(out, "{:<18} {:<58} {:>11.3e} {:>11.3e}  {}", c.kernel, c.shape, r.max_rel_err, r.tolerance, if r.pass { "ok" } else { "FAIL" })?;
                if !r.pass {
                    writeln!(out, "    {}", r.detail)?;
                }
            }
            Err(e) => writeln!(out, "{:<18} {:<58} {:>11} {:>11}  FAIL\n    error: {e}", c.kernel, c.shape, "-", "-")?,
        }
    }
    writeln!(out, "{passed} passed, {failed} failed")?;
    Ok(failed == 0)
}

// ---------------------------------------------------------------------------------------------
// Cases: host-side expectations plus the device run.

/// What one check compares: the expected outputs, and a closure that runs the kernel(s) on a
/// device and returns the outputs in the same order.
struct Case {
    expect: Vec<Expected>,
    #[allow(clippy::type_complexity)]
    device: Box<dyn FnOnce(&CudaDevice) -> Result<Vec<Output>>>,
}

/// Guard elements after every device buffer (before it: the case's offset).
const GUARD: usize = 8;
const POISON_BF16: u16 = 0x7FFF;
const POISON_U32: u32 = 0xFFFF_FFFF;
/// The error floor of the tolerance rule, in units of rms(ref) (`CloseRms`: 1).
const REL_FLOOR: f64 = 1e-2;
/// One bf16 rounding, relative: the `+ 2^-8` of the tolerance rule.
const BF16_ROUNDING: f64 = 1.0 / 256.0;
/// The mean-error rule applies to outputs of at least this many elements ...
const MEAN_RULE_MIN: usize = 256;
/// ... with this additive slack (the mean of many roundings is stable; 2x is the real headroom).
const MEAN_SLACK: f64 = 1.0 / 4096.0;
/// One f32 rounding, relative (2^-24): the output-rounding term for f32 outputs ...
const F32_ROUNDING: f64 = 1.0 / 16_777_216.0;
/// ... and the mean rule's slack for them (2^-28, as 2^-12 is to bf16's 2^-8).
const F32_MEAN_SLACK: f64 = 1.0 / 268_435_456.0;

enum Expected {
    /// A bf16 output judged by the tolerance rule.
    Close { name: &'static str, reference: Vec<f64>, cpu: Vec<f32> },
    /// A bf16 output judged by the same rule with the error floor at rms(ref) instead of
    /// 1e-2 rms(ref), i.e. relative for large elements and absolute (in units of the rms) for the
    /// rest: flash-attention's own absolute rule. For kernels that round intermediate products to
    /// bf16 (P and dS of the tensor-core attention), where an element that cancels to near zero
    /// carries an absolute error set by its summands; `cpu` then models those roundings.
    CloseRms { name: &'static str, reference: Vec<f64>, cpu: Vec<f32> },
    /// An f32 output judged by the same rule, with the f32 output rounding (2^-24) in place of
    /// bf16's (`cpu` is then used as it is, not rounded to bf16).
    CloseF32 { name: &'static str, reference: Vec<f64>, cpu: Vec<f32> },
    /// A bf16 output that must match bit for bit.
    Bf16 { name: &'static str, bits: Vec<u16> },
    /// A u32 output (indices, flags, f32 bits) that must match exactly.
    U32 { name: &'static str, values: Vec<u32> },
}

impl Expected {
    fn name(&self) -> &'static str {
        match self {
            Expected::Close { name, .. } | Expected::CloseRms { name, .. } | Expected::CloseF32 { name, .. } | Expected::Bf16 { name, .. } | Expected::U32 { name, .. } => name,
        }
    }
}

/// A downloaded device buffer: `all` is the whole allocation, the output is `all[lo..lo + n]`,
/// the rest are guards that must still hold the poison.
#[derive(Clone)]
enum Output {
    Bf16 { all: Vec<u16>, lo: usize, n: usize },
    U32 { all: Vec<u32>, lo: usize, n: usize },
    /// f32 values as their bits (so that the NaN poison compares equal to itself).
    F32 { all: Vec<u32>, lo: usize, n: usize },
}

#[derive(Clone, Copy, Debug)]
enum Corruption {
    /// One element 10% off (close) or one bit flipped (exact).
    Value,
    /// One element left poisoned.
    Unwritten,
    /// One guard element overwritten.
    Guard,
    /// Every element 0.8% too large (close outputs of at least MEAN_RULE_MIN elements; 1.6% for
    /// `CloseRms` ones).
    Bias,
}

impl Output {
    /// What a correct kernel would return, from the host expectation (the CPU result for `Close`).
    fn emulate(e: &Expected) -> Output {
        let lo = GUARD;
        match e {
            Expected::Close { cpu, .. } | Expected::CloseRms { cpu, .. } => Output::Bf16 { all: guarded(&bf16_bits(cpu), lo, POISON_BF16), lo, n: cpu.len() },
            Expected::CloseF32 { cpu, .. } => Output::F32 { all: guarded(&f32_bits(cpu), lo, POISON_U32), lo, n: cpu.len() },
            Expected::Bf16 { bits, .. } => Output::Bf16 { all: guarded(bits, lo, POISON_BF16), lo, n: bits.len() },
            Expected::U32 { values, .. } => Output::U32 { all: guarded(values, lo, POISON_U32), lo, n: values.len() },
        }
    }

    fn corrupt(&mut self, e: &Expected, how: Corruption) {
        match self {
            Output::Bf16 { all, lo, n } => {
                // The element with the largest expected magnitude (always judged relative to itself).
                let i = match e {
                    Expected::Close { reference, .. } | Expected::CloseRms { reference, .. } => (0..*n).max_by(|&a, &b| reference[a].abs().total_cmp(&reference[b].abs())).unwrap_or(0),
                    _ => *n / 2,
                };
                match how {
                    Corruption::Value => {
                        let v = bf16::from_bits(all[*lo + i]).to_f32();
                        all[*lo + i] = if matches!(e, Expected::Close { .. } | Expected::CloseRms { .. }) { bf16::from_f32(v * 1.1).to_bits() } else { all[*lo + i] ^ 1 };
                    }
                    Corruption::Unwritten => all[*lo + i] = POISON_BF16,
                    Corruption::Guard => all[*lo + *n] = 0x3F80,
                    Corruption::Bias => {
                        if let Expected::Close { reference, .. } | Expected::CloseRms { reference, .. } = e {
                            // CloseRms outputs carry ~1e-3 mean noise from their bf16
                            // intermediates: the mean rule resolves a 1.6% bias there, 0.8% else.
                            let bias = if matches!(e, Expected::CloseRms { .. }) { 1.0 / 64.0 } else { 1.0 / 128.0 };
                            for (j, r) in reference.iter().enumerate() {
                                all[*lo + j] = bf16::from_f64(r * (1.0 + bias)).to_bits();
                            }
                        }
                    }
                }
            }
            Output::F32 { all, lo, n } => {
                let reference: &[f64] = match e {
                    Expected::CloseF32 { reference, .. } => reference,
                    _ => &[],
                };
                let i = (0..*n).max_by(|&a, &b| reference[a].abs().total_cmp(&reference[b].abs())).unwrap_or(0);
                match how {
                    Corruption::Value => all[*lo + i] = (f32::from_bits(all[*lo + i]) * 1.1).to_bits(),
                    Corruption::Unwritten => all[*lo + i] = POISON_U32,
                    Corruption::Guard => all[*lo + *n] = 1f32.to_bits(),
                    Corruption::Bias => {
                        for (j, r) in reference.iter().enumerate() {
                            all[*lo + j] = ((r * (1.0 + 1.0 / 128.0)) as f32).to_bits();
                        }
                    }
                }
            }
            Output::U32 { all, lo, n } => match how {
                Corruption::Value => all[*lo + *n / 2] ^= 1,
                Corruption::Unwritten => all[*lo + *n / 2] = POISON_U32,
                Corruption::Guard => all[*lo - 1] = 0,
                Corruption::Bias => {}
            },
        }
    }
}

fn guarded<T: Copy>(data: &[T], lo: usize, poison: T) -> Vec<T> {
    let mut v = vec![poison; lo + data.len() + GUARD];
    v[lo..lo + data.len()].copy_from_slice(data);
    v
}

/// Compares every output with its expectation.
fn evaluate(expect: &[Expected], got: &[Output]) -> CheckResult {
    let mut r = CheckResult { max_rel_err: 0.0, tolerance: f64::INFINITY, pass: true, detail: String::new() };
    let mut any_close = false;
    if expect.len() != got.len() {
        r.pass = false;
        r.detail = format!("{} outputs, expected {}", got.len(), expect.len());
        return r;
    }
    for (e, g) in expect.iter().zip(got) {
        let name = e.name();
        let (err, tol, ok, what) = match (e, g) {
            (Expected::Close { reference, cpu, .. } | Expected::CloseRms { reference, cpu, .. }, Output::Bf16 { all, lo, n }) => {
                if let Some(bad) = guard_breach(all, *lo, *n, POISON_BF16) {
                    (f64::INFINITY, 0.0, false, bad)
                } else if *n != reference.len() {
                    (f64::INFINITY, 0.0, false, format!("{n} elements, expected {}", reference.len()))
                } else {
                    any_close = true;
                    let out = &all[*lo..*lo + *n];
                    close_rule(
                        reference,
                        cpu.iter().map(|&v| bf16::from_f32(v).to_f32() as f64),
                        out.iter().map(|&b| bf16::from_bits(b).to_f32() as f64),
                        |i| out[i] == POISON_BF16,
                        (BF16_ROUNDING, MEAN_SLACK),
                        if matches!(e, Expected::CloseRms { .. }) { 1.0 } else { REL_FLOOR },
                    )
                }
            }
            (Expected::CloseF32 { reference, cpu, .. }, Output::F32 { all, lo, n }) => {
                if let Some(bad) = guard_breach(all, *lo, *n, POISON_U32) {
                    (f64::INFINITY, 0.0, false, bad)
                } else if *n != reference.len() {
                    (f64::INFINITY, 0.0, false, format!("{n} elements, expected {}", reference.len()))
                } else {
                    any_close = true;
                    let out = &all[*lo..*lo + *n];
                    close_rule(
                        reference,
                        cpu.iter().map(|&v| v as f64),
                        out.iter().map(|&b| f32::from_bits(b) as f64),
                        |i| out[i] == POISON_U32,
                        (F32_ROUNDING, F32_MEAN_SLACK),
                        REL_FLOOR,
                    )
                }
            }
            (Expected::Bf16 { bits, .. }, Output::Bf16 { all, lo, n }) => exact(all, *lo, *n, bits, POISON_BF16, |b| format!("{b:#06x} ({})", bf16::from_bits(b))),
            (Expected::U32 { values, .. }, Output::U32 { all, lo, n }) => exact(all, *lo, *n, values, POISON_U32, |v| format!("{v} ({v:#010x})")),
            _ => (f64::INFINITY, 0.0, false, "output of the wrong type".to_string()),
        };
        r.max_rel_err = r.max_rel_err.max(err);
        if matches!(e, Expected::Close { .. } | Expected::CloseRms { .. } | Expected::CloseF32 { .. }) {
            r.tolerance = r.tolerance.min(tol);
        }
        r.pass &= ok;
        if !r.detail.is_empty() {
            r.detail.push_str("; ");
        }
        r.detail.push_str(&format!("{name}: {what}"));
    }
    if !any_close {
        r.tolerance = 0.0;
    }
    r
}

/// The tolerance rule on one output (see the module docs): `cpu` is the CPU reference already
/// rounded to the output type, `got` the output, `unwritten(i)` whether element i still holds the
/// poison; `(rounding, mean_slack)` are the output type's one-rounding and mean-rule slack;
/// `floor_rms` the error floor in units of rms(ref).
/// Returns (max error, tolerance, pass, what).
fn close_rule(
    reference: &[f64],
    cpu: impl Iterator<Item = f64>,
    got: impl Iterator<Item = f64> + Clone,
    unwritten: impl Fn(usize) -> bool,
    (rounding, mean_slack): (f64, f64),
    floor_rms: f64,
) -> (f64, f64, bool, String) {
    let n = reference.len();
    let floor = floor_rms * rms(reference);
    let (err_cpu, _, mean_cpu) = rel_err(cpu, reference, floor);
    let (err, at, mean) = rel_err(got.clone(), reference, floor);
    let tol = 2.0 * err_cpu + rounding;
    let mean_tol = 2.0 * mean_cpu + mean_slack;
    let mean_ok = n < MEAN_RULE_MIN || mean <= mean_tol;
    let got_v = got.clone().nth(at).unwrap_or(f64::NAN);
    let note = if n > 0 && unwritten(at) { " (never written)" } else { "" };
    let what = format!(
        "max {err:.3e} <= {tol:.3e}? (cpu {err_cpu:.3e}), mean {mean:.3e} <= {mean_tol:.3e}? (cpu {mean_cpu:.3e}{}), worst [{at}]: got {got_v}{note}, want {}",
        if n < MEAN_RULE_MIN { ", not applied" } else { "" },
        reference.get(at).copied().unwrap_or(f64::NAN)
    );
    (err, tol, err <= tol && mean_ok, what)
}

fn exact<T: Copy + PartialEq>(all: &[T], lo: usize, n: usize, want: &[T], poison: T, show: impl Fn(T) -> String) -> (f64, f64, bool, String) {
    if let Some(bad) = guard_breach(all, lo, n, poison) {
        return (1.0, 0.0, false, bad);
    }
    if n != want.len() {
        return (1.0, 0.0, false, format!("{n} elements, expected {}", want.len()));
    }
    let got = &all[lo..lo + n];
    let wrong = (0..n).filter(|&i| got[i] != want[i]).count();
    match (0..n).find(|&i| got[i] != want[i]) {
        None => (0.0, 0.0, true, "exact".to_string()),
        Some(i) => {
            let note = if got[i] == poison { " (never written)" } else { "" };
            (1.0, 0.0, false, format!("{wrong} of {n} differ; first [{i}]: got {}{note}, want {}", show(got[i]), show(want[i])))
        }
    }
}

/// The first guard element that no longer holds the poison.
fn guard_breach<T: Copy + PartialEq>(all: &[T], lo: usize, n: usize, poison: T) -> Option<String> {
    let bad = (0..lo).chain(lo + n..all.len()).find(|&i| all[i] != poison)?;
    let side = if bad < lo { format!("{} before", lo - bad) } else { format!("{} after", bad - (lo + n) + 1) };
    Some(format!("wrote outside its output: the guard element {side} the output was overwritten"))
}

fn rms(x: &[f64]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
}

/// The relative errors e_i = |got_i - ref_i| / max(|ref_i|, floor): (max, where, mean). Any NaN
/// or infinity counts as an infinite error (a poisoned, never-written element is NaN).
fn rel_err(got: impl Iterator<Item = f64>, reference: &[f64], floor: f64) -> (f64, usize, f64) {
    let (mut worst, mut at, mut sum, mut n) = (0.0f64, 0usize, 0.0f64, 0usize);
    for (i, (g, &r)) in got.zip(reference).enumerate() {
        let e = if g.is_finite() { (g - r).abs() / r.abs().max(floor).max(f64::MIN_POSITIVE) } else { f64::INFINITY };
        // e is never NaN: g and r are finite and the denominator is positive.
        if e > worst {
            (worst, at) = (e, i);
        }
        sum += e;
        n += 1;
    }
    (worst, at, if n == 0 { 0.0 } else { sum / n as f64 })
}

// ---------------------------------------------------------------------------------------------
// Inputs.

use crate::rng::Rng;

/// Test inputs drawn from the shared seeded generator.
trait Inputs {
    fn bf16s(&mut self, n: usize, lo: f64, hi: f64) -> Vec<u16>;
}

impl Inputs for Rng {
    /// bf16 values with magnitude uniform in [lo, hi) (lo > 0, so never zero) and a random sign.
    fn bf16s(&mut self, n: usize, lo: f64, hi: f64) -> Vec<u16> {
        (0..n)
            .map(|_| {
                let m = lo + (hi - lo) * self.uniform();
                let v = if self.next_u64() & 1 == 0 { m } else { -m };
                bf16::from_f64(v).to_bits()
            })
            .collect()
    }
}

fn widen(bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|&b| bf16::from_bits(b).to_f32()).collect()
}

fn bf16_bits(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect()
}

fn f32_bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn shape1(n: usize, off: usize) -> String {
    format!("[{n}]{}", if !off.is_multiple_of(8) { " misaligned" } else { "" })
}

fn shape2(t: usize, c: usize, off: usize, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { " " };
    format!("[{t}, {c}]{sep}{extra}{}", if !off.is_multiple_of(8) { " misaligned" } else { "" })
}

/// `data` at offset `lo` of a new device buffer, poisoned guards around it.
fn upload<T: DeviceRepr + Copy>(dev: &CudaDevice, data: &[T], lo: usize, poison: T) -> Result<CudaSlice<T>> {
    dev.htod(&guarded(data, lo, poison))
}

/// A poisoned device buffer for an output of `n` elements at offset `lo`.
fn poisoned<T: DeviceRepr + Copy>(dev: &CudaDevice, n: usize, lo: usize, poison: T) -> Result<CudaSlice<T>> {
    dev.htod(&vec![poison; lo + n + GUARD])
}

fn download_bf16(dev: &CudaDevice, buf: &CudaSlice<u16>, lo: usize, n: usize) -> Result<Output> {
    Ok(Output::Bf16 { all: dev.dtoh(buf)?, lo, n })
}

fn download_u32(dev: &CudaDevice, buf: &CudaSlice<u32>, lo: usize, n: usize) -> Result<Output> {
    Ok(Output::U32 { all: dev.dtoh(buf)?, lo, n })
}

fn download_f32(dev: &CudaDevice, buf: &CudaSlice<f32>, lo: usize, n: usize) -> Result<Output> {
    Ok(Output::F32 { all: f32_bits(&dev.dtoh(buf)?), lo, n })
}

// ---------------------------------------------------------------------------------------------
// Norms.

/// Rows of x scaled by 2^(t mod 5 - 2), so rows differ in magnitude.
fn norm_input(rng: &mut Rng, t: usize, c: usize, shift: f64) -> Vec<u16> {
    let mut x = Vec::with_capacity(t * c);
    for r in 0..t {
        let scale = 2f64.powi((r % 5) as i32 - 2);
        for b in rng.bf16s(c, 0.01, 3.0) {
            x.push(bf16::from_f64(bf16::from_bits(b).to_f64() * scale + shift * scale).to_bits());
        }
    }
    x.iter().map(|&b| if bf16::from_bits(b).to_f32() == 0.0 { bf16::from_f32(0.5).to_bits() } else { b }).collect()
}

fn rmsnorm_f64(x: &[f32], w: &[f32], eps: f64) -> Vec<f64> {
    let c = w.len();
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(c) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / c as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        y.extend(row.iter().zip(w).map(|(&v, &g)| g as f64 * v as f64 * inv));
    }
    y
}

fn rmsnorm_case(t: usize, c: usize, eps: f64, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = norm_input(&mut rng, t, c, 0.0);
    let w = rng.bf16s(c, 0.25, 2.0);
    let eps32 = eps as f32;
    let (xf, wf) = (widen(&x), widen(&w));
    let expect = vec![Expected::Close { name: "y", reference: rmsnorm_f64(&xf, &wf, eps32 as f64), cpu: cpu::rmsnorm(&xf, &wf, eps32 as f64) }];
    let n = t * c;
    Case {
        expect,
        device: Box::new(move |dev| {
            let dx = upload(dev, &x, off, POISON_BF16)?;
            let dw = upload(dev, &w, off, POISON_BF16)?;
            let mut dy = poisoned(dev, n, off, POISON_BF16)?;
            dev.rmsnorm(&dx.slice(off..off + n), &dw.slice(off..off + c), eps32, &mut dy.slice_mut(off..off + n))?;
            Ok(vec![download_bf16(dev, &dy, off, n)?])
        }),
    }
}

fn rmsnorm_residual_case(t: usize, c: usize, eps: f64, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = norm_input(&mut rng, t, c, 0.0);
    let res = norm_input(&mut rng, t, c, 0.0);
    let w = rng.bf16s(c, 0.25, 2.0);
    let eps32 = eps as f32;
    let (xf, wf) = (widen(&x), widen(&w));
    // The kernel stores r = bf16(x + residual) (an f32 sum, rounded once) and normalises that r.
    let mut rf = widen(&res);
    cpu::rmsnorm_residual(&xf, &mut rf, &wf, eps32 as f64);
    let r_bits = bf16_bits(&rf);
    let r = widen(&r_bits);
    let expect = vec![
        Expected::Bf16 { name: "residual", bits: r_bits },
        Expected::Close { name: "y", reference: rmsnorm_f64(&r, &wf, eps32 as f64), cpu: cpu::rmsnorm(&r, &wf, eps32 as f64) },
    ];
    let n = t * c;
    Case {
        expect,
        device: Box::new(move |dev| {
            let dx = upload(dev, &x, off, POISON_BF16)?;
            let mut dr = upload(dev, &res, off, POISON_BF16)?;
            let dw = upload(dev, &w, off, POISON_BF16)?;
            let mut dy = poisoned(dev, n, off, POISON_BF16)?;
            dev.rmsnorm_residual(&dx.slice(off..off + n), &mut dr.slice_mut(off..off + n), &dw.slice(off..off + c), eps32, &mut dy.slice_mut(off..off + n))?;
            Ok(vec![download_bf16(dev, &dr, off, n)?, download_bf16(dev, &dy, off, n)?])
        }),
    }
}

fn layernorm_case(t: usize, c: usize, eps: f64, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    // A common offset (CLIP activations are not centred) exercises the mean subtraction.
    let x = norm_input(&mut rng, t, c, 1.5);
    let w = rng.bf16s(c, 0.25, 2.0);
    let b = rng.bf16s(c, 0.01, 1.0);
    let eps32 = eps as f32;
    let (xf, wf, bf) = (widen(&x), widen(&w), widen(&b));
    let mut reference = Vec::with_capacity(t * c);
    for row in xf.chunks(c) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let inv = 1.0 / (var + eps32 as f64).sqrt();
        reference.extend((0..c).map(|i| (row[i] as f64 - mean) * inv * wf[i] as f64 + bf[i] as f64));
    }
    let expect = vec![Expected::Close { name: "y", reference, cpu: cpu::layernorm(&xf, &wf, &bf, eps32 as f64) }];
    let n = t * c;
    Case {
        expect,
        device: Box::new(move |dev| {
            let dx = upload(dev, &x, off, POISON_BF16)?;
            let dw = upload(dev, &w, off, POISON_BF16)?;
            let db = upload(dev, &b, off, POISON_BF16)?;
            let mut dy = poisoned(dev, n, off, POISON_BF16)?;
            dev.layernorm(&dx.slice(off..off + n), &dw.slice(off..off + c), &db.slice(off..off + c), eps32, &mut dy.slice_mut(off..off + n))?;
            Ok(vec![download_bf16(dev, &dy, off, n)?])
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE.

#[derive(Clone, Copy)]
enum Positions {
    /// p0, p0 + 1, ... (a prefill chunk that does not start at 0)
    From(u32),
    /// uniform below the bound (a decode batch of sequences at different lengths)
    Random(u32),
}

fn rope_f64(x: &[f32], heads: usize, pos: &[u32], inv_freq: &[f32]) -> Vec<f64> {
    let half = inv_freq.len();
    let d = 2 * half;
    let mut out = vec![0f64; x.len()];
    for (t, &p) in pos.iter().enumerate() {
        for i in 0..half {
            // The op's definition: the angle is an f32 product, as in torch.
            let a = (p as f32 * inv_freq[i]) as f64;
            let (s, c) = a.sin_cos();
            for h in 0..heads {
                let base = (t * heads + h) * d;
                let (x0, x1) = (x[base + i] as f64, x[base + i + half] as f64);
                out[base + i] = x0 * c - x1 * s;
                out[base + i + half] = x1 * c + x0 * s;
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn rope_case(t: usize, h: usize, hkv: usize, d: usize, theta: f64, positions: Positions, with_k: bool, seed: u64) -> Case {
    rope_case_dir(t, h, hkv, d, theta, positions, with_k, false, seed)
}

/// `rope_qk`, or with `backward` its transpose `rope_backward_qk` (reference: the rotation by the
/// negated f32 angle in f64; CPU: `cpu::rope_backward`).
#[allow(clippy::too_many_arguments)]
fn rope_case_dir(t: usize, h: usize, hkv: usize, d: usize, theta: f64, positions: Positions, with_k: bool, backward: bool, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let pos: Vec<u32> = match positions {
        Positions::From(p0) => (0..t as u32).map(|i| p0 + i).collect(),
        Positions::Random(bound) => (0..t).map(|_| rng.below(bound as usize) as u32).collect(),
    };
    let q = rng.bf16s(t * h * d, 0.01, 2.0);
    let k = rng.bf16s(t * hkv * d, 0.01, 2.0);
    let table = cpu::RopeTable::new(d, theta);
    let pos_usize: Vec<usize> = pos.iter().map(|&p| p as usize).collect();
    let mut expect = Vec::new();
    let freq: Vec<f32> = table.inv_freq().iter().map(|&f| if backward { -f } else { f }).collect();
    let cpu_op = |x: &mut [f32], heads: usize| if backward { cpu::rope_backward(x, heads, &pos_usize, &table) } else { cpu::rope(x, heads, &pos_usize, &table) };
    let mut qc = widen(&q);
    let q_ref = rope_f64(&qc, h, &pos, &freq);
    cpu_op(&mut qc, h);
    expect.push(Expected::Close { name: "q", reference: q_ref, cpu: qc });
    if with_k {
        let mut kc = widen(&k);
        let k_ref = rope_f64(&kc, hkv, &pos, &freq);
        cpu_op(&mut kc, hkv);
        expect.push(Expected::Close { name: "k", reference: k_ref, cpu: kc });
    }
    let off = GUARD;
    Case {
        expect,
        device: Box::new(move |dev| {
            let inv_freq = if backward { dev.rope_inv_freq_backward(d, theta)? } else { dev.rope_inv_freq(d, theta)? };
            let dpos = dev.htod(&pos)?;
            let mut dq = upload(dev, &q, off, POISON_BF16)?;
            let mut dk = upload(dev, &k, off, POISON_BF16)?;
            let (nq, nk) = (q.len(), k.len());
            if backward {
                dev.rope_backward_qk(&mut dq.slice_mut(off..off + nq), h, &mut dk.slice_mut(off..off + nk), hkv, &dpos.as_view(), &inv_freq.as_view())?;
                Ok(vec![download_bf16(dev, &dq, off, nq)?, download_bf16(dev, &dk, off, nk)?])
            } else if with_k {
                dev.rope_qk(&mut dq.slice_mut(off..off + nq), h, &mut dk.slice_mut(off..off + nk), hkv, &dpos.as_view(), &inv_freq.as_view())?;
                Ok(vec![download_bf16(dev, &dq, off, nq)?, download_bf16(dev, &dk, off, nk)?])
            } else {
                dev.rope(&mut dq.slice_mut(off..off + nq), h, &dpos.as_view(), &inv_freq.as_view())?;
                Ok(vec![download_bf16(dev, &dq, off, nq)?])
            }
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Activations.

#[derive(Clone, Copy)]
enum Act {
    Silu,
    Gelu,
    QuickGelu,
}

impl Act {
    fn name(self) -> &'static str {
        match self {
            Act::Silu => "silu",
            Act::Gelu => "gelu",
            Act::QuickGelu => "quick_gelu",
        }
    }
    fn f64(self, x: f64) -> f64 {
        match self {
            Act::Silu => x / (1.0 + (-x).exp()),
            Act::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Act::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        }
    }
}

fn silu_f64(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn activation_case(act: Act, n: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    // |x| <= 4: far enough from the identity for large x that an element left unwritten (the
    // in-place input) is visibly wrong for silu and quick_gelu.
    let x = rng.bf16s(n, 1.0 / 64.0, 4.0);
    let mut cpu_out = widen(&x);
    let reference = cpu_out.iter().map(|&v| act.f64(v as f64)).collect();
    cpu::activation::by_name(act.name(), &mut cpu_out);
    let expect = vec![Expected::Close { name: "x", reference, cpu: cpu_out }];
    Case {
        expect,
        device: Box::new(move |dev| {
            let mut dx = upload(dev, &x, off, POISON_BF16)?;
            dev.activation(act.name(), &mut dx.slice_mut(off..off + n))?;
            Ok(vec![download_bf16(dev, &dx, off, n)?])
        }),
    }
}

fn swiglu_case(n: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let gate = rng.bf16s(n, 1.0 / 64.0, 4.0);
    let up = rng.bf16s(n, 1.0 / 64.0, 4.0);
    let (mut g, u) = (widen(&gate), widen(&up));
    let reference = g.iter().zip(&u).map(|(&a, &b)| silu_f64(a as f64) * b as f64).collect();
    cpu::swiglu(&mut g, &u);
    let expect = vec![Expected::Close { name: "out", reference, cpu: g }];
    Case {
        expect,
        device: Box::new(move |dev| {
            let dg = upload(dev, &gate, off, POISON_BF16)?;
            let du = upload(dev, &up, off, POISON_BF16)?;
            let mut dout = poisoned(dev, n, off, POISON_BF16)?;
            dev.swiglu(&dg.slice(off..off + n), &du.slice(off..off + n), &mut dout.slice_mut(off..off + n))?;
            Ok(vec![download_bf16(dev, &dout, off, n)?])
        }),
    }
}

fn swiglu_fused_case(t: usize, f: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let gu = rng.bf16s(t * 2 * f, 1.0 / 64.0, 4.0);
    let guf = widen(&gu);
    let mut reference = Vec::with_capacity(t * f);
    for row in guf.chunks(2 * f) {
        reference.extend((0..f).map(|j| silu_f64(row[j] as f64) * row[f + j] as f64));
    }
    let expect = vec![Expected::Close { name: "out", reference, cpu: cpu::swiglu_fused(&guf, f) }];
    Case {
        expect,
        device: Box::new(move |dev| {
            let dgu = upload(dev, &gu, off, POISON_BF16)?;
            let mut dout = poisoned(dev, t * f, off, POISON_BF16)?;
            dev.swiglu_fused(&dgu.slice(off..off + 2 * t * f), f, &mut dout.slice_mut(off..off + t * f))?;
            Ok(vec![download_bf16(dev, &dout, off, t * f)?])
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Embedding.

#[allow(clippy::too_many_arguments)]
fn embedding_case(v: usize, c: usize, t: usize, span: usize, k: usize, off: usize, with_oob: bool, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let image_token = (v - 1).min(32000) as u32;
    let table = rng.bf16s(v * c, 1.0 / 64.0, 2.0);
    let feats = rng.bf16s(k * c, 1.0 / 64.0, 2.0);
    let mut ids: Vec<u32> = (0..t)
        .map(|_| loop {
            let id = rng.below(v) as u32;
            if id != image_token {
                break id;
            }
        })
        .collect();
    ids[span..span + k].iter_mut().for_each(|id| *id = image_token);
    let image = (k > 0).then_some(image_token);
    let mut sources = cpu::embedding_sources(&ids, v, image, k).expect("valid ids");
    let mut want = cpu::embedding(&table, &feats, c, &sources);
    let bad_row = t - 1;
    if with_oob {
        sources[bad_row] = (v + k + 5) as u32;
        want[bad_row * c..(bad_row + 1) * c].fill(0x7FC0);
    }
    let expect = vec![Expected::Bf16 { name: "out", bits: want }, Expected::U32 { name: "oob", values: vec![with_oob as u32] }];
    Case {
        expect,
        device: Box::new(move |dev| {
            let dt = upload(dev, &table, off, POISON_BF16)?;
            let df = upload(dev, &feats, off, POISON_BF16)?;
            let ds = dev.htod(&sources)?;
            let mut dout = poisoned(dev, t * c, off, POISON_BF16)?;
            // The flag starts at 0 (the kernel only ever sets it), inside poisoned guards.
            let mut doob = upload(dev, &[0u32], GUARD, POISON_U32)?;
            let fv = df.slice(off..off + k * c);
            dev.embedding(
                &dt.slice(off..off + v * c),
                c,
                if k > 0 { Some(&fv) } else { None },
                &ds.as_view(),
                &mut dout.slice_mut(off..off + t * c),
                Some(&mut doob.slice_mut(GUARD..GUARD + 1)),
            )?;
            Ok(vec![download_bf16(dev, &dout, off, t * c)?, download_u32(dev, &doob, GUARD, 1)?])
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Sampling.

fn argmax_case(b: usize, v: usize, bf: bool, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    // Values below 20 in magnitude; the deliberate maxima are 32 (exact in bf16).
    let mut logits: Vec<f32> = widen(&rng.bf16s(b * v, 0.01, 20.0));
    if !bf {
        // Full f32 precision for the f32 kernel (ties then come only from the planted maxima).
        logits.iter_mut().for_each(|x| *x += (rng.uniform() as f32 - 0.5) * 1e-3);
    }
    for r in 0..b {
        let row = &mut logits[r * v..(r + 1) * v];
        let mut plant = |i: usize| row[i % v] = 32.0;
        match r % 5 {
            // Ties one apart, one block stride (512) apart, and at the end.
            0 => {
                let p = rng.below(v);
                for i in [p, p + 1, p + 512, v - 1] {
                    plant(i);
                }
            }
            1 => plant(v - 1),
            2 => (0..v).for_each(&mut plant),
            3 => {
                plant(0);
                plant(v / 2);
            }
            _ => {
                plant(rng.below(v));
                plant(rng.below(v));
                plant(rng.below(v));
            }
        }
    }
    if !bf && b >= 8 {
        // torch.argmax: the first NaN wins.
        let row = &mut logits[7 * v..8 * v];
        row[v / 3] = f32::NAN;
        row[v / 2] = f32::NAN;
    }
    let want: Vec<u32> = logits.chunks(v).map(|row| cpu::argmax(row) as u32).collect();
    let expect = vec![Expected::U32 { name: "index", values: want }];
    let lo = GUARD;
    Case {
        expect,
        device: Box::new(move |dev| {
            let mut dout = poisoned(dev, b, lo, POISON_U32)?;
            if bf {
                let dl = dev.htod(&bf16_bits(&logits))?;
                dev.argmax_bf16(&dl.as_view(), v, &mut dout.slice_mut(lo..lo + b))?;
            } else {
                let dl = dev.htod(&logits)?;
                dev.argmax_f32(&dl.as_view(), v, &mut dout.slice_mut(lo..lo + b))?;
            }
            Ok(vec![download_u32(dev, &dout, lo, b)?])
        }),
    }
}

/// The kinds of rows of the sampling checks.
#[derive(Clone, Copy, Debug)]
enum SampleRows {
    /// ~N(0, 2.5^2) logits with 1-20 likely tokens at 8-12.
    Realistic,
    /// Realistic rounded to multiples of 1/4: large tie groups at the top-k threshold and at the
    /// top-p boundary (resolved in index order, sequentially: groups <= 4096).
    Quantized,
    /// Every logit 0, 0.5 or 1: three tie groups of ~V/3 (the closed-form tie path beyond 4096).
    Levels,
    /// Realistic plus the maximum planted at 4 indices (ties at the top: top_k=1 keeps them all).
    TopTies,
    /// One logit at 200 (at T < 1 every other exp underflows to 0), or, at T >= 1, at 37: 25
    /// above the likely tokens (their probabilities ~1e-11, the others' far below).
    Peaked,
    /// Realistic with ~10% of the logits -inf (masked vocabulary).
    NegInf,
}

impl SampleRows {
    fn name(self) -> &'static str {
        match self {
            SampleRows::Realistic => "realistic",
            SampleRows::Quantized => "quantized (ties at the boundaries)",
            SampleRows::Levels => "3 levels (tie groups > 4096)",
            SampleRows::TopTies => "max tied at 4 indices",
            SampleRows::Peaked => "very peaked",
            SampleRows::NegInf => "10% -inf",
        }
    }

    fn row(self, rng: &mut Rng, v: usize, t: f32) -> Vec<f32> {
        let normal = |rng: &mut Rng| (0..4).map(|_| rng.uniform()).sum::<f64>() - 2.0; // var 1/3
        let mut x: Vec<f32> = (0..v).map(|_| (normal(rng) * 2.5 * 3f64.sqrt()) as f32).collect();
        let likely = 1 + rng.below(20);
        for _ in 0..likely {
            let i = rng.below(v);
            x[i] = (8.0 + 4.0 * rng.uniform()) as f32;
        }
        match self {
            SampleRows::Realistic => {}
            SampleRows::Quantized => x.iter_mut().for_each(|a| *a = (*a * 4.0).round() / 4.0),
            SampleRows::Levels => x.iter_mut().for_each(|a| *a = rng.below(3) as f32 * 0.5),
            SampleRows::TopTies => {
                for _ in 0..4 {
                    let i = rng.below(v);
                    x[i] = 13.0;
                }
            }
            SampleRows::Peaked => {
                let i = rng.below(v);
                x[i] = if t < 1.0 { 200.0 } else { 25.0 + 12.0 };
            }
            SampleRows::NegInf => {
                for a in x.iter_mut() {
                    if rng.below(10) == 0 {
                        *a = f32::NEG_INFINITY;
                    }
                }
            }
        }
        x
    }
}

/// (B, V, temperature, top_k, top_p, rows).
const SAMPLE_SHAPES: &[(usize, usize, f32, usize, f32, SampleRows)] = &[
    // Realistic: decode batches over the LLaVA-1.5/Mistral vocabulary and Qwen2's.
    (1, 32064, 0.7, 50, 0.9, SampleRows::Realistic),
    (8, 32064, 1.0, 0, 0.95, SampleRows::Realistic),
    (64, 32064, 0.8, 40, 0.9, SampleRows::Realistic),
    (2, 151_936, 0.6, 20, 0.8, SampleRows::Realistic),
    (2, 151_936, 1.0, 0, 0.9, SampleRows::Realistic),
    // Awkward.
    (5, 7, 1.0, 3, 0.8, SampleRows::Realistic),
    (3, 7, 1.7, 0, 0.5, SampleRows::Quantized),
    (3, 1, 1.0, 0, 0.5, SampleRows::Realistic),
    (4, 32064, 1.0, 0, 0.9, SampleRows::Quantized),
    (4, 32064, 1.0, 50, 0.6, SampleRows::Quantized),
    (2, 32064, 1.0, 0, 0.7, SampleRows::Levels),
    (4, 32064, 1.0, 1, 1.0, SampleRows::TopTies),
    (2, 32064, 1.0, 0, 0.01, SampleRows::TopTies),
    (2, 1000, 1.0, 1000, 0.9, SampleRows::Realistic),
    (8, 32064, 1.0, 0, 1.0, SampleRows::Realistic),
    (4, 32064, 0.2, 0, 0.9, SampleRows::Peaked),
    (4, 32064, 1.0, 10, 1.0, SampleRows::Peaked),
    (4, 32064, 0.2, 0, 0.95, SampleRows::Realistic),
    (4, 32064, 1.7, 100, 0.95, SampleRows::Realistic),
    (4, 32064, 1.0, 30, 0.9, SampleRows::NegInf),
];

/// How close an exact comparison may let a uniform or a top-p cumulative sum come to a boundary.
const SAMPLE_MARGIN: f64 = 1e-9;

/// The smallest distance between an ascending cumulative probability of the top-p pass and
/// 1 - top_p (infinite when top-p is off).
fn top_p_margin(row: &[f32], t: f32, k: usize, p: f32) -> f64 {
    let mut cums = Vec::new();
    cpu::sample::warp_scores(row, t, k, p, Some(&mut cums));
    let thr = 1.0 - p as f64;
    cums.iter().map(|c| (c - thr).abs()).fold(f64::INFINITY, f64::min)
}

/// A uniform in [0, 1) at least SAMPLE_MARGIN away from every value of the CDF (in f64, index
/// order, as the CPU sums it) of the final distribution of `row`.
fn fair_uniform(rng: &mut Rng, row: &[f32], t: f32, k: usize, p: f32) -> f64 {
    let probs = cpu::sample::softmax_f64(&cpu::sample::warp_scores(row, t, k, p, None));
    let mut cdf = Vec::new();
    let mut c = 0f64;
    for &q in probs.iter().filter(|&&q| q > 0.0) {
        c += q;
        cdf.push(c);
    }
    for _ in 0..1000 {
        let u = rng.uniform();
        let j = cdf.partition_point(|&x| x <= u);
        let near = (j < cdf.len() && cdf[j] - u < SAMPLE_MARGIN) || (j > 0 && u - cdf[j - 1] < SAMPLE_MARGIN);
        if !near {
            return u;
        }
    }
    panic!("sample check: no uniform away from the CDF boundaries");
}

fn sample_case(b: usize, v: usize, t: f32, k: usize, p: f32, kind: SampleRows, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let mut logits = Vec::with_capacity(b * v);
    let mut uniforms = Vec::with_capacity(b);
    let mut want = Vec::with_capacity(b);
    for _ in 0..b {
        let row = (0..50)
            .map(|_| kind.row(&mut rng, v, t))
            .find(|row| top_p_margin(row, t, k, p) >= SAMPLE_MARGIN)
            .unwrap_or_else(|| panic!("sample check: every row drawn has a top-p cut within {SAMPLE_MARGIN:e} of 1 - top_p"));
        let u = fair_uniform(&mut rng, &row, t, k, p);
        want.push(cpu::sample_row(&row, t, k, p, u));
        uniforms.push(u);
        logits.extend_from_slice(&row);
    }
    let expect = vec![Expected::U32 { name: "token", values: want }];
    let lo = GUARD;
    Case {
        expect,
        device: Box::new(move |dev| {
            let dl = dev.htod(&logits)?;
            let du = dev.htod(&uniforms)?;
            let mut dout = poisoned(dev, b, lo, POISON_U32)?;
            dev.sample(&dl.as_view(), v, t, k, p, &du.as_view(), &mut dout.slice_mut(lo..lo + b))?;
            Ok(vec![download_u32(dev, &dout, lo, b)?])
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Attention.

/// One attention check: H query heads over Hkv kv heads of dim D, a KV cache of `slots` slots of
/// `cap` rows, the query rows (valid key ranges), and `bad` rows outside the cache appended after
/// them (the kernel must write those as NaN rows). Buffers start at offset `off` (odd: the scalar
/// load path).
#[derive(Clone)]
struct AttnShape {
    name: String,
    h: usize,
    hkv: usize,
    d: usize,
    cap: usize,
    slots: usize,
    rows: Vec<cpu::AttnRow>,
    bad: Vec<cpu::AttnRow>,
    off: usize,
    /// How the op is launched (the split-KV count).
    launch: AttnLaunch,
}

/// How an attention check calls the op: `attention` (split count from cap),
/// `attention_with_max_len` (from the longest valid range), or a forced split count.
#[derive(Clone, Copy, Debug)]
enum AttnLaunch {
    Cap,
    MaxLen,
    Splits(usize),
}

fn attention_shapes() -> Vec<AttnShape> {
    use cpu::{AttnMask, AttnRow};
    let row = |slot: u32, kv_start: u32, kv_end: u32| AttnRow { slot, kv_start, kv_end };
    let causal = AttnMask::Causal { window: None };
    let shape = |name: String, (h, hkv, d): (usize, usize, usize), cap: usize, slots: usize, rows: Vec<AttnRow>| AttnShape {
        name: format!("{name} H={h} Hkv={hkv} D={d}"),
        h,
        hkv,
        d,
        cap,
        slots,
        rows,
        bad: Vec::new(),
        off: GUARD,
        launch: AttnLaunch::Cap,
    };
    let mistral = (32, 8, 128);
    let clip = (16, 16, 64);
    let mut v = Vec::new();
    // Batched decode: 4 sequences of lengths 1, 17, 300, 1000 in 4 slots (not in slot order), one
    // query row each (the newest position, which sees the whole sequence).
    let lens = [(2u32, 1u32), (0, 17), (3, 300), (1, 1000)];
    v.push(shape("decode lens 1,17,300,1000 in 4 slots cap 1024".into(), mistral, 1024, 4, lens.iter().map(|&(s, n)| row(s, 0, n)).collect()));
    // Prefill of T=333, causal; the second half of the rows with a sliding window of 64 keys.
    let t = 333;
    let rows = (0..t).map(|p| AttnRow::for_mask(if p < 167 { causal } else { AttnMask::Causal { window: Some(64) } }, 0, p, t)).collect();
    v.push(shape(format!("prefill T={t} causal, rows 167.. window 64, cap 400"), mistral, 400, 1, rows));
    // Chunked prefill: positions 100..140 of a sequence in slot 1 whose cache holds 140 keys.
    let rows = (100..140).map(|p| AttnRow::for_mask(causal, 1, p, 140)).collect();
    v.push(shape("chunked prefill pos 100..140 of 140, slot 1 of 2, cap 256".into(), mistral, 256, 2, rows));
    // CLIP ViT-L/14-336: 2 images of 577 tokens as 2 slots, bidirectional, every key of its
    // image for each row. At T=577 only every 3rd token's query row (alternating offsets per
    // image) keeps the host references fast (rows are independent in the kernel); T=97 has all.
    for (t, cap, step) in [(577u32, 577usize, 3usize), (97, 100, 1)] {
        let rows = (0..2u32).flat_map(|s| (s % step as u32..t).step_by(step).map(move |_| row(s, 0, t))).collect();
        let every = if step > 1 { format!(", 1 in {step} query rows") } else { String::new() };
        v.push(shape(format!("vision 2 images T={t} bidirectional{every}, cap {cap}"), clip, cap, 2, rows));
    }
    // Awkward head dims: D=80 with H=Hkv causal; D=96 with groups of 3 (3 heads per block) over
    // lengths around the 64-key tile.
    let rows = (0..45).map(|p| AttnRow::for_mask(causal, 0, p, 45)).collect();
    v.push(shape("causal T=45, cap 64".into(), (12, 12, 80), 64, 1, rows));
    let rows = vec![row(0, 0, 5), row(1, 0, 64), row(2, 0, 65), row(3, 0, 129), row(1, 1, 64), row(3, 63, 129)];
    v.push(shape("ranges 5,64,65,129 in 4 slots, cap 130".into(), (12, 4, 96), 130, 4, rows));
    // An empty range (zero row), a single key, the last key of a slot, and three rows outside the
    // cache (slot >= S, kv_end > cap, kv_start > kv_end): NaN rows.
    let mut a = shape("empty range + 3 rows outside the cache, 3 slots cap 50".into(), (8, 2, 64), 50, 3, vec![row(0, 0, 50), row(1, 10, 10), row(2, 49, 50), row(1, 3, 20), row(2, 0, 0)]);
    a.bad = vec![row(3, 0, 5), row(0, 0, 51), row(0, 7, 6)];
    v.push(a);
    // Multi-query (groups of 16: two blocks of 8 heads per kv head) on misaligned buffers.
    let mut a = shape("MQA ranges in 2 slots, cap 70".into(), (16, 1, 64), 70, 2, vec![row(0, 0, 70), row(1, 0, 33), row(0, 5, 69), row(1, 0, 1)]);
    a.off = 1;
    a.name.push_str(" misaligned");
    v.push(a);
    v
}

/// The split-KV checks (`attention_split` + `attention_combine`, or the heuristic's choice):
/// decode-shaped rows (one query row per sequence, batch 1 to 64) at context lengths 1, 17, 128,
/// 1000, 4096 and 32768, GQA groups 1, 4 and 8, D 8, 24, 64 and 128, forced split counts 1, 2,
/// 7 and the maximum (far more splits than key tiles: empty splits), the heuristic's count from
/// cap and from the longest range, a prefill-shaped case, empty ranges and rows outside the cache,
/// and misaligned buffers (plain loads instead of cp.async). Long contexts use few heads so that
/// the host references stay fast.
fn attention_split_shapes() -> Vec<AttnShape> {
    use super::ATTENTION_SPLITS_MAX as MAX;
    use cpu::{AttnMask, AttnRow};
    let row = |slot: u32, kv_start: u32, kv_end: u32| AttnRow { slot, kv_start, kv_end };
    let shape = |name: &str, (h, hkv, d): (usize, usize, usize), cap: usize, slots: usize, rows: Vec<AttnRow>, launch: AttnLaunch| {
        let how = match launch {
            AttnLaunch::Cap => "splits from cap".to_string(),
            AttnLaunch::MaxLen => "splits from the longest range".to_string(),
            AttnLaunch::Splits(n) => format!("splits {n}"),
        };
        AttnShape { name: format!("{name} H={h} Hkv={hkv} D={d}, {how}"), h, hkv, d, cap, slots, rows, bad: Vec::new(), off: GUARD, launch }
    };
    let mut v = Vec::new();
    // Batched decode in 5 slots (not in slot order): lengths 1, 17, 128, 1000 and an empty range,
    // Mistral-7B heads (groups of 4), plus three rows outside the cache (NaN rows).
    for n in [1, 2, 7, MAX] {
        let rows = vec![row(3, 0, 1), row(0, 0, 17), row(4, 0, 128), row(1, 0, 1000), row(2, 0, 0)];
        let mut a = shape("decode lens 1,17,128,1000,0 + 3 bad rows, cap 1024", (32, 8, 128), 1024, 5, rows, AttnLaunch::Splits(n));
        a.bad = vec![row(5, 0, 1), row(0, 0, 1025), row(1, 9, 8)];
        v.push(a);
    }
    // One sequence of 4096 keys, groups of 8 (one block of 8 heads per kv head).
    for l in [AttnLaunch::MaxLen, AttnLaunch::Splits(7), AttnLaunch::Splits(MAX)] {
        v.push(shape("decode B=1 ctx 4096", (8, 1, 128), 4096, 1, vec![row(0, 0, 4096)], l));
    }
    // One sequence of 32768 keys (issue #4's long context), groups of 4 over 2 kv heads.
    for l in [AttnLaunch::MaxLen, AttnLaunch::Splits(2)] {
        v.push(shape("decode B=1 ctx 32768", (8, 2, 128), 32768, 1, vec![row(0, 0, 32768)], l));
    }
    // No grouping (H = Hkv), D=64: two sequences of 4096, one seen through a window [1000, 4096).
    for l in [AttnLaunch::Cap, AttnLaunch::Splits(7)] {
        v.push(shape("decode B=2 ctx 4096, one range [1000, 4096)", (4, 4, 64), 4096, 2, vec![row(1, 0, 4096), row(0, 1000, 4096)], l));
    }
    // Batch 8 of ragged lengths up to 4096, groups of 4, D=128.
    let lens: Vec<u32> = vec![4096, 1, 3000, 17, 129, 2048, 64, 4000];
    for l in [AttnLaunch::MaxLen, AttnLaunch::Splits(7)] {
        let rows = lens.iter().enumerate().map(|(s, &n)| row(s as u32, 0, n)).collect();
        v.push(shape("decode B=8 ragged lens <= 4096, cap 4096", (8, 2, 128), 4096, 8, rows, l));
    }
    // Batch 64 (slots in reverse order), lengths 1..=1000, groups of 8, D=128.
    for l in [AttnLaunch::MaxLen, AttnLaunch::Splits(2)] {
        let rows = (0..64u32).map(|i| row(63 - i, 0, 1 + (i * i * 37 + 11 * i) % 1000)).collect();
        v.push(shape("decode B=64 lens 1..=1000, cap 1000", (8, 1, 128), 1000, 64, rows, l));
    }
    // Prefill-shaped: T=200 causal, rows 100.. with a window of 48 keys, Mistral-7B heads.
    let t = 200;
    let causal = AttnMask::Causal { window: None };
    for n in [3, MAX] {
        let rows = (0..t).map(|p| AttnRow::for_mask(if p < 100 { causal } else { AttnMask::Causal { window: Some(48) } }, 0, p, t)).collect();
        v.push(shape("prefill T=200 causal, rows 100.. window 48, cap 256", (32, 8, 128), 256, 1, rows, AttnLaunch::Splits(n)));
    }
    // Multi-query (groups of 16: two blocks of 8 heads) on misaligned buffers (plain loads), and
    // the smallest head dims (D=8: 32 key lanes in P.V; D=24: an odd number of 16-byte chunks).
    let mut a = shape("MQA ranges in 2 slots, cap 700", (16, 1, 64), 700, 2, vec![row(0, 0, 700), row(1, 0, 33), row(0, 5, 669), row(1, 0, 1)], AttnLaunch::Splits(5));
    a.off = 1;
    a.name.push_str(" misaligned");
    v.push(a);
    for (dims, n) in [((4, 2, 8), 3), ((6, 2, 24), MAX)] {
        v.push(shape("ranges 1,31,32,33,500 in 3 slots, cap 500", dims, 500, 3, vec![row(0, 0, 1), row(1, 0, 31), row(2, 0, 32), row(0, 467, 500), row(1, 0, 500)], AttnLaunch::Splits(n)));
    }
    v
}

/// `cpu::attention_rows` evaluated in f64 on the same (f32-widened bf16) inputs, with the f32
/// scale the kernel gets.
#[allow(clippy::too_many_arguments)]
fn attention_rows_f64(q: &[f32], k: &[f32], v: &[f32], rows: &[cpu::AttnRow], h: usize, hkv: usize, d: usize, cap: usize, scale: f32) -> Vec<f64> {
    use rayon::prelude::*;
    let (qw, kw, group) = (h * d, hkv * d, h / hkv);
    let mut out = vec![0f64; rows.len() * qw];
    out.par_chunks_mut(qw).zip(q.par_chunks(qw)).zip(rows.par_iter()).for_each(|((o, qr), r)| {
        let (lo, hi) = (r.kv_start as usize, r.kv_end as usize);
        let key = |j: usize, g: usize| (r.slot as usize * cap + j) * kw + g * d;
        let mut s = vec![0f64; hi - lo];
        for head in 0..h {
            let g = head / group;
            let qh = &qr[head * d..(head + 1) * d];
            for (j, sj) in s.iter_mut().enumerate() {
                let kr = &k[key(lo + j, g)..][..d];
                *sj = qh.iter().zip(kr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale as f64;
            }
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            s.iter_mut().for_each(|x| *x = (*x - m).exp());
            let z: f64 = s.iter().sum();
            let oh = &mut o[head * d..(head + 1) * d];
            for (j, &p) in s.iter().enumerate() {
                let vr = &v[key(lo + j, g)..][..d];
                oh.iter_mut().zip(vr).for_each(|(a, &b)| *a += p / z * b as f64);
            }
        }
    });
    out
}

fn attention_case(a: &AttnShape, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let AttnShape { h, hkv, d, cap, slots, off, launch, .. } = *a;
    let max_len = a.rows.iter().map(|r| (r.kv_end - r.kv_start) as usize).max().unwrap_or(0);
    let (qw, kw) = (h * d, hkv * d);
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    let all_rows: Vec<cpu::AttnRow> = a.rows.iter().chain(&a.bad).copied().collect();
    // Queries up to 3 in magnitude: scores of std ~1-3, softmax rows from flat to peaked. The
    // whole cache is random, so a key read outside a row's range changes its output.
    let q = rng.bf16s(all_rows.len() * qw, 0.01, 3.0);
    let k = rng.bf16s(slots * cap * kw, 0.01, 2.0);
    let v = rng.bf16s(slots * cap * kw, 0.01, 2.0);
    let good = a.rows.len() * qw;
    let (qf, kf, vf) = (widen(&q[..good]), widen(&k), widen(&v));
    let mut expect = vec![Expected::Close {
        name: "out",
        reference: attention_rows_f64(&qf, &kf, &vf, &a.rows, h, hkv, d, cap, scale),
        cpu: cpu::attention_rows(&qf, &kf, &vf, &a.rows, h, hkv, d, cap, scale),
    }];
    if !a.bad.is_empty() {
        expect.push(Expected::Bf16 { name: "out (rows outside the cache)", bits: vec![0x7FC0; a.bad.len() * qw] });
    }
    let (nq, nk) = (q.len(), k.len());
    Case {
        expect,
        device: Box::new(move |dev| {
            let dq = upload(dev, &q, off, POISON_BF16)?;
            let dk = upload(dev, &k, off, POISON_BF16)?;
            let dv = upload(dev, &v, off, POISON_BF16)?;
            let drows = dev.htod(bytemuck::cast_slice::<cpu::AttnRow, u32>(&all_rows))?;
            let mut dout = poisoned(dev, nq, off, POISON_BF16)?;
            let (q_, k_, v_, r_, mut o_) = (dq.slice(off..off + nq), dk.slice(off..off + nk), dv.slice(off..off + nk), drows.as_view(), dout.slice_mut(off..off + nq));
            match launch {
                AttnLaunch::Cap => dev.attention(&q_, &k_, &v_, &r_, &mut o_, h, hkv, d, cap, scale)?,
                AttnLaunch::MaxLen => dev.attention_with_max_len(&q_, &k_, &v_, &r_, &mut o_, h, hkv, d, cap, scale, max_len)?,
                AttnLaunch::Splits(n) => dev.attention_forced_splits(&q_, &k_, &v_, &r_, &mut o_, h, hkv, d, cap, scale, n)?,
            }
            let all = dev.dtoh(&dout)?;
            if good == nq {
                return Ok(vec![Output::Bf16 { all, lo: off, n: nq }]);
            }
            // Two outputs of one buffer: each keeps the real guard on its outer side and gets a
            // synthetic (poisoned) one where the other part continues.
            let split = off + good;
            let mut first = all[..split].to_vec();
            first.extend(std::iter::repeat_n(POISON_BF16, GUARD));
            let mut second = vec![POISON_BF16; GUARD];
            second.extend_from_slice(&all[split..]);
            Ok(vec![Output::Bf16 { all: first, lo: off, n: good }, Output::Bf16 { all: second, lo: GUARD, n: nq - good }])
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Row moves (kernels/copy.cu) and the broadcast add (kernels/add.cu).

fn scatter_rows_case(n: usize, r: usize, w: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let src = rng.bf16s(n * w, 1.0 / 64.0, 2.0);
    // dst starts with data (untouched rows must stay), the indices are distinct and scattered.
    let dst0 = rng.bf16s(r * w, 1.0 / 64.0, 2.0);
    let mut idx: Vec<u32> = Vec::with_capacity(n);
    while idx.len() < n {
        let i = rng.below(r) as u32;
        if !idx.contains(&i) {
            idx.push(i);
        }
    }
    let mut want = dst0.clone();
    cpu::scatter_rows(&src, &mut want, &idx, w);
    Case {
        expect: vec![Expected::Bf16 { name: "dst", bits: want }],
        device: Box::new(move |dev| {
            let ds = upload(dev, &src, off, POISON_BF16)?;
            let mut dd = upload(dev, &dst0, off, POISON_BF16)?;
            let di = dev.htod(&idx)?;
            dev.scatter_rows(&ds.slice(off..off + n * w), &mut dd.slice_mut(off..off + r * w), &di.as_view(), w)?;
            Ok(vec![download_bf16(dev, &dd, off, r * w)?])
        }),
    }
}

fn concat_cols_case(r: usize, c1: usize, c2: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let a = rng.bf16s(r * c1, 1.0 / 64.0, 2.0);
    let b = rng.bf16s(r * c2, 1.0 / 64.0, 2.0);
    let c = c1 + c2;
    let want = cpu::concat_cols(&[(&a[..], c1), (&b[..], c2)], r);
    Case {
        expect: vec![Expected::Bf16 { name: "out", bits: want }],
        device: Box::new(move |dev| {
            let da = upload(dev, &a, off, POISON_BF16)?;
            let db = upload(dev, &b, off, POISON_BF16)?;
            let mut dout = poisoned(dev, r * c, off, POISON_BF16)?;
            dev.concat_cols(&da.slice(off..off + r * c1), c1, &mut dout.slice_mut(off..off + r * c), c, 0)?;
            dev.concat_cols(&db.slice(off..off + r * c2), c2, &mut dout.slice_mut(off..off + r * c), c, c1)?;
            Ok(vec![download_bf16(dev, &dout, off, r * c)?])
        }),
    }
}

fn add_case(rows: usize, period: usize, c: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = rng.bf16s(rows * c, 1.0 / 64.0, 4.0);
    let y = rng.bf16s(period * c, 1.0 / 64.0, 4.0);
    let mut sum = widen(&x);
    cpu::add(&mut sum, &widen(&y));
    let want = bf16_bits(&sum);
    Case {
        expect: vec![Expected::Bf16 { name: "x", bits: want }],
        device: Box::new(move |dev| {
            let mut dx = upload(dev, &x, off, POISON_BF16)?;
            let dy = upload(dev, &y, off, POISON_BF16)?;
            dev.add(&mut dx.slice_mut(off..off + rows * c), &dy.slice(off..off + period * c))?;
            Ok(vec![download_bf16(dev, &dx, off, rows * c)?])
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// AdamW (kernels/adamw.cu).

fn adamw_case(n_tensors: usize, step: u64, off: usize, seed: u64) -> Case {
    use super::AdamWTensor;
    use crate::optim::{AdamWConfig, AdamWState};
    let mut rng = Rng::new(seed);
    // LoRA-like sizes (r x K and N x r at small r), one empty tensor, no decay on every 5th
    // (biases), a second learning rate on every 7th (the projector's).
    let tensors: Vec<AdamWTensor> = (0..n_tensors)
        .map(|i| AdamWTensor {
            len: if i == 1 { 0 } else { 1 + rng.below(3000) },
            lr: if i % 7 == 3 { 2e-5 } else { 1e-4 },
            weight_decay: if i % 5 == 4 { 0.0 } else { 0.01 },
        })
        .collect();
    let n: usize = tensors.iter().map(|t| t.len).sum();
    let f32s = |rng: &mut Rng, scale: f64| -> Vec<f32> { (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * scale) as f32).collect() };
    let p = f32s(&mut rng, 0.1);
    let g = f32s(&mut rng, 1e-2);
    let m = if step == 1 { vec![0f32; n] } else { f32s(&mut rng, 1e-3) };
    let v = if step == 1 { vec![0f32; n] } else { f32s(&mut rng, 1e-5).into_iter().map(f32::abs).collect() };
    let cfg = AdamWConfig::default();
    // Odd steps fold a clipping factor into the step (the CPU scales its f32 gradients first).
    let gscale: f32 = if step % 2 == 1 { 0.37 } else { 1.0 };
    let gs: Vec<f32> = g.iter().map(|&x| x * gscale).collect();
    let sumsq_ref: f64 = g.iter().map(|&x| x as f64 * x as f64).sum();
    let (mut pw, mut mw, mut vw) = (p.clone(), m.clone(), v.clone());
    let mut at = 0;
    for t in &tensors {
        let r = at..at + t.len;
        let mut st = AdamWState { step: step - 1, m: mw[r.clone()].to_vec(), v: vw[r.clone()].to_vec() };
        st.step(&AdamWConfig { weight_decay: t.weight_decay, ..cfg }, t.lr, &mut pw[r.clone()], &gs[r.clone()]);
        mw[r.clone()].copy_from_slice(&st.m);
        vw[r].copy_from_slice(&st.v);
        at += t.len;
    }
    let poison = f32::from_bits(POISON_U32);
    let expect = vec![
        Expected::U32 { name: "p", values: f32_bits(&pw) },
        Expected::U32 { name: "m", values: f32_bits(&mw) },
        Expected::U32 { name: "v", values: f32_bits(&vw) },
        Expected::U32 { name: "sumsq (|rel err| < 1e-12)", values: vec![1] },
    ];
    Case {
        expect,
        device: Box::new(move |dev| {
            let mut dp = upload(dev, &p, off, poison)?;
            let dg = upload(dev, &g, off, poison)?;
            let mut dm = upload(dev, &m, off, poison)?;
            let mut dv = upload(dev, &v, off, poison)?;
            let r = off..off + n;
            dev.adamw(&mut dp.slice_mut(r.clone()), &dg.slice(r.clone()), &mut dm.slice_mut(r.clone()), &mut dv.slice_mut(r.clone()), &tensors, &cfg, step, gscale)?;
            // The clipping norm of the same gradients (unscaled), f64 against the host's sum.
            let sumsq = dev.grad_sumsq(&dg.slice(r))?;
            let bits = |b: &CudaSlice<f32>| -> Result<Output> { Ok(Output::U32 { all: f32_bits(&dev.dtoh(b)?), lo: off, n }) };
            let close = (sumsq - sumsq_ref).abs() <= 1e-12 * sumsq_ref.max(f64::MIN_POSITIVE);
            Ok(vec![bits(&dp)?, bits(&dm)?, bits(&dv)?, Output::U32 { all: vec![close as u32], lo: 0, n: 1 }])
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Backward kernels (rmsnorm_backward in kernels/rmsnorm.cu, swiglu_backward in activation.cu).

fn rmsnorm_backward_case(t: usize, c: usize, eps: f64, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = norm_input(&mut rng, t, c, 0.0);
    let w = rng.bf16s(c, 0.5, 1.5);
    let dy = rng.bf16s(t * c, 1.0 / 64.0, 1.0);
    let (xf, wf, dyf) = (widen(&x), widen(&w), widen(&dy));
    let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (reference, _) = cpu::rmsnorm_backward(&f64s(&xf), &f64s(&wf), &f64s(&dyf), eps);
    let (cpu_dx, _) = cpu::rmsnorm_backward(&xf, &wf, &dyf, eps);
    Case {
        expect: vec![Expected::Close { name: "dx", reference, cpu: cpu_dx }],
        device: Box::new(move |dev| {
            let (dxx, dw, ddy) = (upload(dev, &x, off, POISON_BF16)?, upload(dev, &w, off, POISON_BF16)?, upload(dev, &dy, off, POISON_BF16)?);
            let mut ddx = poisoned(dev, t * c, off, POISON_BF16)?;
            dev.rmsnorm_backward(&dxx.slice(off..off + t * c), &dw.slice(off..off + c), &ddy.slice(off..off + t * c), eps as f32, &mut ddx.slice_mut(off..off + t * c))?;
            Ok(vec![download_bf16(dev, &ddx, off, t * c)?])
        }),
    }
}

fn swiglu_backward_case(n: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let gate = rng.bf16s(n, 1.0 / 64.0, 4.0);
    let up = rng.bf16s(n, 1.0 / 64.0, 4.0);
    let dout = rng.bf16s(n, 1.0 / 64.0, 1.0);
    let (g, u, d) = (widen(&gate), widen(&up), widen(&dout));
    let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (rg, ru) = cpu::swiglu_backward(&f64s(&g), &f64s(&u), &f64s(&d));
    let (cg, cu) = cpu::swiglu_backward(&g, &u, &d);
    Case {
        expect: vec![Expected::Close { name: "dgate", reference: rg, cpu: cg }, Expected::Close { name: "dup", reference: ru, cpu: cu }],
        device: Box::new(move |dev| {
            let (dg, du, dd) = (upload(dev, &gate, off, POISON_BF16)?, upload(dev, &up, off, POISON_BF16)?, upload(dev, &dout, off, POISON_BF16)?);
            let (mut og, mut ou) = (poisoned(dev, n, off, POISON_BF16)?, poisoned(dev, n, off, POISON_BF16)?);
            let r = off..off + n;
            dev.swiglu_backward(&dg.slice(r.clone()), &du.slice(r.clone()), &dd.slice(r.clone()), &mut og.slice_mut(r.clone()), &mut ou.slice_mut(r))?;
            Ok(vec![download_bf16(dev, &og, off, n)?, download_bf16(dev, &ou, off, n)?])
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// DPO loss (kernels/dpo.cu).

fn dpo_case(b: usize, beta: f64, alpha: f64, seed: u64) -> Case {
    use super::DpoSpans;
    let mut rng = Rng::new(seed);
    // Pairs packed back to back, chosen then rejected, responses of 1..300 tokens.
    let mut spans = Vec::with_capacity(b);
    let mut t = 0u32;
    for _ in 0..b {
        let (cn, rn) = (1 + rng.below(300) as u32, 1 + rng.below(300) as u32);
        spans.push(DpoSpans { chosen_start: t, chosen_len: cn, rejected_start: t + cn, rejected_len: rn });
        t += cn + rn;
    }
    let t = t as usize;
    let logp: Vec<f32> = (0..t).map(|_| -(rng.uniform() * 5.0) as f32).collect();
    let reference: Vec<f64> = (0..2 * b).map(|_| -(rng.uniform() * 600.0)).collect();
    let sum = |start: u32, len: u32| logp[start as usize..(start + len) as usize].iter().map(|&v| v as f64).sum::<f64>();
    let (mut out_ref, mut d_ref) = (Vec::with_capacity(7 * b), vec![0f64; t]);
    for (i, sp) in spans.iter().enumerate() {
        let (pc, pr) = (sum(sp.chosen_start, sp.chosen_len), sum(sp.rejected_start, sp.rejected_len));
        let o = crate::loss::dpo(pc, pr, reference[2 * i], reference[2 * i + 1], beta, alpha);
        out_ref.extend([o.loss, o.d_chosen, o.d_rejected, o.chosen_reward, o.rejected_reward, pc, pr]);
        d_ref[sp.chosen_start as usize..(sp.chosen_start + sp.chosen_len) as usize].fill(o.d_chosen);
        d_ref[sp.rejected_start as usize..(sp.rejected_start + sp.rejected_len) as usize].fill(o.d_rejected);
    }
    let to_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let expect = vec![
        Expected::CloseF32 { name: "out", reference: out_ref.clone(), cpu: to_f32(&out_ref) },
        Expected::CloseF32 { name: "dlogp", reference: d_ref.clone(), cpu: to_f32(&d_ref) },
    ];
    let flat: Vec<u32> = bytemuck::cast_slice(&spans).to_vec();
    Case {
        expect,
        device: Box::new(move |dev| {
            let poison = f32::from_bits(POISON_U32);
            let dl = upload(dev, &logp, GUARD, poison)?;
            let dsp = dev.htod(&flat)?;
            let dref = dev.htod(&reference)?;
            let mut dout = dev.htod(&vec![f64::NAN; 7 * b + 2 * GUARD])?;
            let mut dd = poisoned(dev, t, GUARD, poison)?;
            dev.dpo(&dl.slice(GUARD..GUARD + t), &dsp.as_view(), &dref.as_view(), beta, alpha, &mut dout.slice_mut(GUARD..GUARD + 7 * b), &mut dd.slice_mut(GUARD..GUARD + t))?;
            // The f64 outputs compared as f32 (the rule's f32 rounding term), guards as NaN bits.
            let o64 = dev.dtoh(&dout)?;
            let o32: Vec<f32> = o64.iter().map(|&x| if x.is_nan() { poison } else { x as f32 }).collect();
            Ok(vec![Output::F32 { all: f32_bits(&o32), lo: GUARD, n: 7 * b }, download_f32(dev, &dd, GUARD, t)?])
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Casts (tests/cuda_parity.rs has the exhaustive edge cases; these are the registry's entries).

fn cast_bf16_to_f32_case(_seed: u64) -> Case {
    let x: Vec<u16> = (0..=u16::MAX).collect();
    let want: Vec<u32> = x.iter().map(|&b| bf16::from_bits(b).to_f32().to_bits()).collect();
    let n = x.len();
    Case {
        expect: vec![Expected::U32 { name: "y (f32 bits)", values: want }],
        device: Box::new(move |dev| {
            let dx = dev.htod(&x)?;
            let lo = GUARD;
            let mut dy = poisoned(dev, n, lo, f32::from_bits(POISON_U32))?;
            dev.cast_bf16_to_f32_into(&dx.as_view(), &mut dy.slice_mut(lo..lo + n))?;
            let all = dev.dtoh(&dy)?.iter().map(|v| v.to_bits()).collect();
            Ok(vec![Output::U32 { all, lo, n }])
        }),
    }
}

fn cast_f32_to_bf16_case(n: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    // Any bit pattern (NaNs, infinities, subnormals, ties) except those that round to the poison.
    let x: Vec<f32> = (0..n)
        .map(|_| loop {
            let v = f32::from_bits(rng.next_u64() as u32);
            if bf16::from_f32(v).to_bits() != POISON_BF16 && v != 0.0 {
                break v;
            }
        })
        .collect();
    let want = x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
    Case {
        expect: vec![Expected::Bf16 { name: "y", bits: want }],
        device: Box::new(move |dev| {
            let dx = dev.htod(&x)?;
            let lo = GUARD;
            let mut dy = poisoned(dev, n, lo, POISON_BF16)?;
            dev.cast_f32_to_bf16_into(&dx.as_view(), &mut dy.slice_mut(lo..lo + n))?;
            Ok(vec![download_bf16(dev, &dy, lo, n)?])
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM (cuBLASLt).

/// One `matmul` check: y[M, N] = x[M, K] @ w[N, K]^T (+ bias) (+ y), output bf16 or f32, every
/// buffer at offset `off` (8: 16-byte aligned sub-views; odd: 2-byte aligned ones).
#[derive(Clone, Copy)]
struct Gemm {
    m: usize,
    k: usize,
    n: usize,
    bias: bool,
    accumulate: bool,
    f32_out: bool,
    off: usize,
    what: &'static str,
}

const fn gemm(m: usize, k: usize, n: usize, what: &'static str) -> Gemm {
    Gemm { m, k, n, bias: false, accumulate: false, f32_out: false, off: GUARD, what }
}

/// 7B decode (M=1, 8) and prefill (M=64) projections, the lm_head (f32 logits), CLIP-L's fc1
/// with its bias, odd sizes, misaligned views, and the fused residual add (accumulate).
const MATMUL_SHAPES: &[Gemm] = &[
    gemm(1, 4096, 4096, "7B decode q/o_proj"),
    gemm(8, 4096, 4096, "7B decode batch 8"),
    gemm(64, 4096, 14336, "7B prefill gate/up"),
    Gemm { f32_out: true, ..gemm(2, 4096, 32064, "7B lm_head") },
    Gemm { bias: true, ..gemm(577, 1024, 4096, "CLIP-L fc1") },
    Gemm { bias: true, ..gemm(3, 77, 33, "odd K") },
    Gemm { off: 1, ..gemm(3, 77, 33, "odd K") },
    Gemm { f32_out: true, bias: true, off: 3, ..gemm(5, 33, 7, "tiny") },
    Gemm { bias: true, accumulate: true, ..gemm(7, 4096, 4096, "o_proj + residual") },
    Gemm { f32_out: true, bias: true, accumulate: true, ..gemm(17, 1024, 1024, "f32 residual") },
];

impl Gemm {
    fn shape(&self) -> String {
        format!(
            "M={} K={} N={}{}{} -> {}{} ({})",
            self.m,
            self.k,
            self.n,
            if self.bias { " +bias" } else { "" },
            if self.accumulate { " +=y" } else { "" },
            if self.f32_out { "f32" } else { "bf16" },
            if !self.off.is_multiple_of(8) { " misaligned" } else { "" },
            self.what
        )
    }
}

/// x[M, K] @ w[N, K]^T in f64 (exact products of the bf16 inputs, f64 sums) through the gemm
/// crate, a block of w's rows at a time (no f64 copy of a whole lm_head).
fn matmul_t_f64(x: &[u16], w: &[u16], m: usize, k: usize, n: usize) -> Vec<f64> {
    let x64: Vec<f64> = x.iter().map(|&b| bf16::from_bits(b).to_f64()).collect();
    let mut y = vec![0f64; m * n];
    const ROWS: usize = 2048;
    for j0 in (0..n).step_by(ROWS) {
        let nb = ROWS.min(n - j0);
        let w64: Vec<f64> = w[j0 * k..(j0 + nb) * k].iter().map(|&b| bf16::from_bits(b).to_f64()).collect();
        cpu::matmul::gemm_strided(m, nb, k, &mut y[j0..], n, &x64, k, 1, &w64, 1, k);
    }
    y
}

fn matmul_case(g: Gemm, seed: u64) -> Case {
    let Gemm { m, k, n, bias, accumulate, f32_out, off, .. } = g;
    let mut rng = Rng::new(seed);
    // Outputs ~ sqrt(K) * 1.2 * 0.07, i.e. O(1..10); bias and the old y on the same scale.
    let x = rng.bf16s(m * k, 0.01, 2.0);
    let w = rng.bf16s(n * k, 1.0 / 256.0, 0.125);
    let b = if bias { rng.bf16s(n, 0.01, 4.0) } else { Vec::new() };
    let y0: Vec<u16> = if accumulate { rng.bf16s(m * n, 0.01, 4.0) } else { Vec::new() };
    let (bf, y0f) = (widen(&b), widen(&y0));

    let mut reference = matmul_t_f64(&x, &w, m, k, n);
    let mut cpu_y = cpu::matmul_t(&widen(&x), &widen(&w), m, k, n);
    for (at, (r, c)) in reference.iter_mut().zip(&mut cpu_y).enumerate() {
        if accumulate {
            *r += y0f[at] as f64;
            *c += y0f[at];
        }
        if bias {
            *r += bf[at % n] as f64;
            *c += bf[at % n];
        }
    }
    let expect = vec![if f32_out {
        Expected::CloseF32 { name: "y", reference, cpu: cpu_y }
    } else {
        Expected::Close { name: "y", reference, cpu: cpu_y }
    }];
    let poison_f32 = f32::from_bits(POISON_U32);
    Case {
        expect,
        device: Box::new(move |dev| {
            let dx = upload(dev, &x, off, POISON_BF16)?;
            let dw = upload(dev, &w, off, POISON_BF16)?;
            let db = upload(dev, &b, off, POISON_BF16)?;
            let (xv, wv, bv) = (dx.slice(off..off + m * k), dw.slice(off..off + n * k), db.slice(off..off + b.len()));
            let bias_view = if bias { Some(&bv) } else { None };
            let mn = m * n;
            if f32_out {
                // The old y of an accumulating f32 GEMM is the bf16 values widened (exact).
                let mut dy = if accumulate { upload(dev, &y0f, off, poison_f32)? } else { poisoned(dev, mn, off, poison_f32)? };
                dev.matmul(&xv, &wv, bias_view, &mut dy.slice_mut(off..off + mn), m, n, k, accumulate)?;
                Ok(vec![download_f32(dev, &dy, off, mn)?])
            } else {
                let mut dy = if accumulate { upload(dev, &y0, off, POISON_BF16)? } else { poisoned(dev, mn, off, POISON_BF16)? };
                dev.matmul(&xv, &wv, bias_view, &mut dy.slice_mut(off..off + mn), m, n, k, accumulate)?;
                Ok(vec![download_bf16(dev, &dy, off, mn)?])
            }
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Training kernels: the LoRA linear layer (kernels/lora.cu + cuBLASLt) and the chunked
// log-prob (kernels/logprob.cu + cuBLASLt).

/// Rows `rows` (each `width` wide) of a downloaded output, keeping the buffer's real guards: for
/// checks whose host reference covers only some rows of a realistic shape.
fn pick_rows(out: Output, rows: &[usize], width: usize) -> Output {
    fn pick<T: Copy>(all: &[T], lo: usize, n: usize, rows: &[usize], width: usize) -> Vec<T> {
        let mut v = all[..lo].to_vec();
        for &r in rows {
            v.extend_from_slice(&all[lo + r * width..lo + (r + 1) * width]);
        }
        v.extend_from_slice(&all[lo + n..]);
        v
    }
    let n2 = rows.len() * width;
    match out {
        Output::Bf16 { all, lo, n } => Output::Bf16 { all: pick(&all, lo, n, rows, width), lo, n: n2 },
        Output::U32 { all, lo, n } => Output::U32 { all: pick(&all, lo, n, rows, width), lo, n: n2 },
        Output::F32 { all, lo, n } => Output::F32 { all: pick(&all, lo, n, rows, width), lo, n: n2 },
    }
}

fn widen64(bits: &[u16]) -> Vec<f64> {
    bits.iter().map(|&b| bf16::from_bits(b).to_f64()).collect()
}

/// One LoRA check: forward and backward of y = x W^T + s (x A^T) B^T, x [M, K], W [N, K],
/// A [r, K], B [N, r], s = 16 / r, every buffer at offset `off`.
#[derive(Clone, Copy)]
struct LoraShape {
    m: usize,
    k: usize,
    n: usize,
    r: usize,
    off: usize,
    what: &'static str,
}

const LORA_SHAPES: &[LoraShape] = &[
    LoraShape { m: 1, k: 4096, n: 4096, r: 8, off: GUARD, what: "7B q_proj decode" },
    LoraShape { m: 1, k: 4096, n: 4096, r: 128, off: GUARD, what: "7B q_proj decode" },
    LoraShape { m: 300, k: 4096, n: 4096, r: 8, off: GUARD, what: "7B q_proj" },
    LoraShape { m: 300, k: 4096, n: 4096, r: 128, off: GUARD, what: "7B q_proj" },
    LoraShape { m: 64, k: 4096, n: 14336, r: 16, off: GUARD, what: "7B gate_proj" },
    LoraShape { m: 3, k: 77, n: 33, r: 1, off: 1, what: "odd" },
    LoraShape { m: 70, k: 130, n: 200, r: 40, off: 3, what: "tile edges" },
];

impl LoraShape {
    fn shape(&self) -> String {
        format!("M={} K={} N={} r={}{} ({})", self.m, self.k, self.n, self.r, if !self.off.is_multiple_of(8) { " misaligned" } else { "" }, self.what)
    }
}

/// Outputs y (bf16), u (f32), dx (bf16), dA, dB (f32). The reference is `cpu::lora_fwd` /
/// `cpu::lora_bwd` in f64 on the bf16 inputs; the CPU result the same functions in f32. The
/// device's backward takes the u of its own forward.
fn lora_case(g: LoraShape, seed: u64) -> Case {
    let LoraShape { m, k, n, r, off, .. } = g;
    let mut rng = Rng::new(seed);
    // x W^T ~ O(1..10) as in the matmul checks; u ~ O(1), and the LoRA term about as large as the
    // base product (so that a wrong LoRA path shows).
    let x = rng.bf16s(m * k, 0.01, 2.0);
    let w = rng.bf16s(n * k, 1.0 / 256.0, 0.125);
    let a = rng.bf16s(r * k, 1.0 / 256.0, 0.06);
    let b = rng.bf16s(n * r, 1.0 / 256.0, 0.5 / (r as f64).sqrt());
    let dy = rng.bf16s(m * n, 0.01, 1.0);
    let scale = 16.0f32 / r as f32;

    let (x64, w64, a64, b64, dy64) = (widen64(&x), widen64(&w), widen64(&a), widen64(&b), widen64(&dy));
    let s64 = scale as f64;
    let y_ref = cpu::lora_fwd(&x64, &w64, Some((&a64[..], &b64[..], s64)), m, k, n);
    let u_ref = cpu::matmul_t(&x64, &a64, m, k, r);
    let (dx_ref, g64) = cpu::lora_bwd(&x64, &w64, Some((&a64[..], &b64[..], s64)), &dy64, m, k, n);
    let (da_ref, db_ref) = g64.expect("lora grads");
    drop((x64, w64, a64, b64, dy64));
    let (xf, wf, af, bf, dyf) = (widen(&x), widen(&w), widen(&a), widen(&b), widen(&dy));
    let y_cpu = cpu::lora_fwd(&xf, &wf, Some((&af[..], &bf[..], scale)), m, k, n);
    let u_cpu = cpu::matmul_t(&xf, &af, m, k, r);
    let (dx_cpu, g32) = cpu::lora_bwd(&xf, &wf, Some((&af[..], &bf[..], scale)), &dyf, m, k, n);
    let (da_cpu, db_cpu) = g32.expect("lora grads");
    let expect = vec![
        Expected::Close { name: "y", reference: y_ref, cpu: y_cpu },
        Expected::CloseF32 { name: "u", reference: u_ref, cpu: u_cpu },
        Expected::Close { name: "dx", reference: dx_ref, cpu: dx_cpu },
        Expected::CloseF32 { name: "dA", reference: da_ref, cpu: da_cpu },
        Expected::CloseF32 { name: "dB", reference: db_ref, cpu: db_cpu },
    ];
    Case {
        expect,
        device: Box::new(move |dev| lora_device(dev, [&x, &w, &a, &b, &dy], (m, k, n, r), scale, off, None)),
    }
}

/// `lora_fwd` then `lora_bwd` (with the forward's u) on poisoned buffers at offset `off`, under
/// `dropout` when given (x_drop from the `dropout` kernel): y, u, dx, dA, dB.
fn lora_device(dev: &CudaDevice, [x, w, a, b, dy]: [&[u16]; 5], (m, k, n, r): (usize, usize, usize, usize), scale: f32, off: usize, dropout: Option<super::Dropout>) -> Result<Vec<Output>> {
    let poison_f32 = f32::from_bits(POISON_U32);
    let (dxi, dw, da_in, db_in, ddy) = (upload(dev, x, off, POISON_BF16)?, upload(dev, w, off, POISON_BF16)?, upload(dev, a, off, POISON_BF16)?, upload(dev, b, off, POISON_BF16)?, upload(dev, dy, off, POISON_BF16)?);
    let (xv, wv, av, bv) = (dxi.slice(off..off + m * k), dw.slice(off..off + n * k), da_in.slice(off..off + r * k), db_in.slice(off..off + n * r));
    let mut xdrop = poisoned(dev, m * k, off, POISON_BF16)?;
    if let Some(d) = dropout {
        dev.dropout(&xv, &mut xdrop.slice_mut(off..off + m * k), d)?;
    }
    let xdv = xdrop.slice(off..off + m * k);
    let x_lora = if dropout.is_some() { &xdv } else { &xv };
    let mut y = poisoned(dev, m * n, off, POISON_BF16)?;
    let mut u = poisoned(dev, m * r, off, poison_f32)?;
    dev.lora_fwd(&xv, dropout.map(|_| &xdv), &wv, &av, &bv, scale, &mut y.slice_mut(off..off + m * n), &mut u.slice_mut(off..off + m * r), m, k, n, r)?;
    let mut dx = poisoned(dev, m * k, off, POISON_BF16)?;
    let mut da = poisoned(dev, r * k, off, poison_f32)?;
    let mut db = poisoned(dev, n * r, off, poison_f32)?;
    let (uv, dyv) = (u.slice(off..off + m * r), ddy.slice(off..off + m * n));
    dev.lora_bwd(x_lora, &wv, &av, &bv, scale, &uv, &dyv, &mut dx.slice_mut(off..off + m * k), &mut da.slice_mut(off..off + r * k), &mut db.slice_mut(off..off + n * r), m, k, n, r, false, dropout)?;
    Ok(vec![
        download_bf16(dev, &y, off, m * n)?,
        download_f32(dev, &u, off, m * r)?,
        download_bf16(dev, &dx, off, m * k)?,
        download_f32(dev, &da, off, r * k)?,
        download_f32(dev, &db, off, n * r)?,
    ])
}

/// `dropout`: y = bf16(x * mask) with the CPU's mask (`nn::dropout_mask`), exactly.
fn dropout_case(n: usize, p: f32, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = rng.bf16s(n, 0.01, 4.0);
    let mseed = rng.next_u64();
    let mask = crate::nn::dropout_mask(n, p, mseed);
    let want: Vec<u16> = x.iter().zip(&mask).map(|(&v, &mk)| half::bf16::from_f32(half::bf16::from_bits(v).to_f32() * mk).to_bits()).collect();
    Case {
        expect: vec![Expected::Bf16 { name: "y", bits: want }],
        device: Box::new(move |dev| {
            let dx = upload(dev, &x, off, POISON_BF16)?;
            let mut y = poisoned(dev, n, off, POISON_BF16)?;
            dev.dropout(&dx.slice(off..off + n), &mut y.slice_mut(off..off + n), super::Dropout { seed: mseed, p })?;
            Ok(vec![download_bf16(dev, &y, off, n)?])
        }),
    }
}

/// `lora_fwd` + `lora_bwd` under LoRA dropout (p 0.1): the base product on x, the LoRA path on
/// x_drop = bf16(x * mask) (the `dropout` kernel's output, checked exactly above), dx's LoRA
/// term masked. References: the CPU LoRA functions on x_drop with a zero base weight for the
/// LoRA terms, `matmul_t` / `matmul` for the base ones (f64 on the bf16 inputs, and f32).
fn lora_dropout_case(m: usize, k: usize, n: usize, r: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = rng.bf16s(m * k, 0.01, 2.0);
    let w = rng.bf16s(n * k, 1.0 / 256.0, 0.125);
    let a = rng.bf16s(r * k, 1.0 / 256.0, 0.06);
    let b = rng.bf16s(n * r, 1.0 / 256.0, 0.5 / (r as f64).sqrt());
    let dy = rng.bf16s(m * n, 0.01, 1.0);
    let scale = 16.0f32 / r as f32;
    let d = super::Dropout { seed: rng.next_u64(), p: 0.1 };
    let mask = crate::nn::dropout_mask(m * k, d.p, d.seed);
    let xd: Vec<u16> = x.iter().zip(&mask).map(|(&v, &mk)| half::bf16::from_f32(half::bf16::from_bits(v).to_f32() * mk).to_bits()).collect();
    // y = x W^T + [0 + s (xd A^T) B^T]; dx = dy W + mask * [s (dy B) A]; dA, dB from xd.
    #[allow(clippy::too_many_arguments)]
    fn refs<T: crate::backend::cpu::matmul::Scalar + std::ops::Mul<Output = T> + std::ops::AddAssign>(
        x: &[T], xd: &[T], w: &[T], a: &[T], b: &[T], dy: &[T], mask: &[T], s: T, (m, k, n, r): (usize, usize, usize, usize),
    ) -> [Vec<T>; 5] {
        let zero = vec![T::zero(); n * k];
        let mut y = cpu::matmul_t(x, w, m, k, n);
        y.iter_mut().zip(cpu::lora_fwd(xd, &zero, Some((a, b, s)), m, k, n)).for_each(|(o, v)| *o += v);
        let u = cpu::matmul_t(xd, a, m, k, r);
        let (lx, g) = cpu::lora_bwd(xd, &zero, Some((a, b, s)), dy, m, k, n);
        let mut dx = cpu::matmul(dy, w, m, n, k);
        dx.iter_mut().zip(lx.iter().zip(mask)).for_each(|(o, (&v, &mk))| *o += v * mk);
        let (da, db) = g.expect("lora grads");
        [y, u, dx, da, db]
    }
    let dims = (m, k, n, r);
    let mask64: Vec<f64> = mask.iter().map(|&v| v as f64).collect();
    let [y_ref, u_ref, dx_ref, da_ref, db_ref] = refs(&widen64(&x), &widen64(&xd), &widen64(&w), &widen64(&a), &widen64(&b), &widen64(&dy), &mask64, scale as f64, dims);
    let [y_cpu, u_cpu, dx_cpu, da_cpu, db_cpu] = refs(&widen(&x), &widen(&xd), &widen(&w), &widen(&a), &widen(&b), &widen(&dy), &mask, scale, dims);
    let expect = vec![
        Expected::Close { name: "y", reference: y_ref, cpu: y_cpu },
        Expected::CloseF32 { name: "u", reference: u_ref, cpu: u_cpu },
        Expected::Close { name: "dx", reference: dx_ref, cpu: dx_cpu },
        Expected::CloseF32 { name: "dA", reference: da_ref, cpu: da_cpu },
        Expected::CloseF32 { name: "dB", reference: db_ref, cpu: db_cpu },
    ];
    Case {
        expect,
        device: Box::new(move |dev| lora_device(dev, [&x, &w, &a, &b, &dy], (m, k, n, r), scale, off, Some(d))),
    }
}

/// One log-prob check: forward (logp, lse) and backward (dh) over h [T, C], w [V, C], `chunk`
/// vocabulary rows per GEMM; the host reference covers `rows` (all rows when empty).
#[derive(Clone)]
struct LogprobShape {
    t: usize,
    c: usize,
    v: usize,
    chunk: usize,
    off: usize,
    rows: Vec<usize>,
    what: &'static str,
}

fn logprob_shapes() -> Vec<LogprobShape> {
    let d = super::LOGPROB_CHUNK;
    vec![
        LogprobShape { t: 300, c: 4096, v: 32064, chunk: d, off: GUARD, rows: vec![0, 299], what: "7B lm_head, rows 0, 299 checked" },
        LogprobShape { t: 5, c: 256, v: 32064, chunk: d, off: GUARD, rows: vec![], what: "V not a multiple of the chunk" },
        LogprobShape { t: 1, c: 64, v: 1000, chunk: d, off: GUARD, rows: vec![], what: "T=1, one chunk" },
        LogprobShape { t: 9, c: 33, v: 517, chunk: 64, off: 1, rows: vec![], what: "9 chunks, ragged, misaligned" },
        LogprobShape { t: 4, c: 40, v: 128, chunk: 64, off: GUARD, rows: vec![], what: "2 full chunks" },
    ]
}

impl LogprobShape {
    fn shape(&self) -> String {
        format!("T={} C={} V={} chunk {} ({})", self.t, self.c, self.v, self.chunk, self.what)
    }
}

/// f64 log-probs and lse of the rows of h (widened bf16) against w (bf16 bits, widened row by row).
fn logprob_f64(h: &[f64], w: &[u16], targets: &[u32], c: usize) -> (Vec<f64>, Vec<f64>) {
    use rayon::prelude::*;
    targets
        .par_iter()
        .enumerate()
        .map(|(t, &y)| {
            let ht = &h[t * c..(t + 1) * c];
            let z: Vec<f64> = w.chunks_exact(c).map(|wr| wr.iter().zip(ht).map(|(&b, &x)| bf16::from_bits(b).to_f64() * x).sum()).collect();
            let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = mx + z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            (z[y as usize] - lse, lse)
        })
        .unzip()
}

/// f64 dh of the rows of h: dlogp (w[y] - sum_v softmax_v w[v]); with `coef_bf16`, the f32
/// emulation of the kernel instead: f32 logits, p = exp(z - lse) in f32 with the given (f32)
/// lse, each coefficient g = dlogp (onehot - p) split into hi = bf16(g) and lo = bf16(g - hi),
/// f32 sums of (hi + lo) w.
fn logprob_backward_host(h: &[f64], w: &[u16], targets: &[u32], lse: &[f64], dlogp: &[f64], c: usize, coef_bf16: bool) -> Vec<f64> {
    use rayon::prelude::*;
    let mut dh = vec![0f64; h.len()];
    dh.par_chunks_mut(c).enumerate().for_each(|(t, d)| {
        let ht = &h[t * c..(t + 1) * c];
        if coef_bf16 {
            let h32: Vec<f32> = ht.iter().map(|&v| v as f32).collect();
            let mut acc = vec![0f32; c];
            let (l, g) = (lse[t] as f32, dlogp[t] as f32);
            for (vi, wr) in w.chunks_exact(c).enumerate() {
                let wf: Vec<f32> = wr.iter().map(|&b| bf16::from_bits(b).to_f32()).collect();
                let z = wf.iter().zip(&h32).fold(0f32, |s, (&a, &b)| s + a * b);
                let onehot = if vi == targets[t] as usize { 1.0 } else { 0.0 };
                let gv = g * (onehot - (z - l).exp());
                let hi = bf16::from_f32(gv).to_f32();
                let coef = hi + bf16::from_f32(gv - hi).to_f32();
                acc.iter_mut().zip(&wf).for_each(|(o, &x)| *o += coef * x);
            }
            d.iter_mut().zip(&acc).for_each(|(o, &a)| *o = a as f64);
        } else {
            for (vi, wr) in w.chunks_exact(c).enumerate() {
                let z: f64 = wr.iter().zip(ht).map(|(&b, &x)| bf16::from_bits(b).to_f64() * x).sum();
                let onehot = if vi == targets[t] as usize { 1.0 } else { 0.0 };
                let coef = dlogp[t] * (onehot - (z - lse[t]).exp());
                d.iter_mut().zip(wr).for_each(|(o, &b)| *o += coef * bf16::from_bits(b).to_f64());
            }
        }
    });
    dh
}

/// Outputs logp, lse (f32, against `cpu::logprob` in f32 and the f64 log-softmax) and dh (f32).
/// dh's CPU result is the f32 emulation of the kernel's arithmetic including the hi/lo bf16
/// split of the logit gradients that the dh GEMMs take (see docs/TOLERANCES.md); its reference the
/// exact f64 gradient. The device's backward takes the lse of its own forward.
fn logprob_case(g: &LogprobShape, seed: u64) -> Case {
    let LogprobShape { t, c, v, chunk, off, .. } = *g;
    let rows: Vec<usize> = if g.rows.is_empty() { (0..t).collect() } else { g.rows.clone() };
    let mut rng = Rng::new(seed);
    // Logits of std ~ 2-3 (sqrt(C) * 1.15 * rms(w) with rms(w) ~ 2.6 / sqrt(C)).
    let h = rng.bf16s(t * c, 0.01, 2.0);
    let wmax = 4.5 / (c as f64).sqrt();
    let w = rng.bf16s(v * c, wmax / 64.0, wmax);
    // Targets: random, plus the first and last ids and ids around chunk boundaries.
    let mut targets: Vec<u32> = (0..t).map(|_| rng.below(v) as u32).collect();
    let special = [0, v - 1, chunk.min(v) - 1, chunk.min(v - 1), v / 2];
    for (i, &s) in special.iter().enumerate() {
        if i < t {
            targets[(i * 7919) % t] = s as u32;
        }
    }
    let dlogp: Vec<f32> = (0..t).map(|_| ((rng.uniform() * 2.0 - 1.0) * 1.5) as f32).map(|g| if g.abs() < 0.05 { 0.5 } else { g }).collect();

    let hs: Vec<u16> = rows.iter().flat_map(|&r| h[r * c..(r + 1) * c].iter().copied()).collect();
    let ts: Vec<u32> = rows.iter().map(|&r| targets[r]).collect();
    let gs: Vec<f64> = rows.iter().map(|&r| dlogp[r] as f64).collect();
    let h64 = widen64(&hs);
    let (lp_ref, lse_ref) = logprob_f64(&h64, &w, &ts, c);
    let dh_ref = logprob_backward_host(&h64, &w, &ts, &lse_ref, &gs, c, false);
    let (lp_cpu, lse_cpu) = {
        let wf = widen(&w);
        cpu::logprob(&widen(&hs), &wf, &ts, c)
    };
    let lse_cpu64: Vec<f64> = lse_cpu.iter().map(|&v| v as f64).collect();
    let dh_emul: Vec<f32> = logprob_backward_host(&h64, &w, &ts, &lse_cpu64, &gs, c, true).iter().map(|&v| v as f32).collect();
    let expect = vec![
        Expected::CloseF32 { name: "logp", reference: lp_ref, cpu: lp_cpu },
        Expected::CloseF32 { name: "lse", reference: lse_ref, cpu: lse_cpu },
        Expected::CloseF32 { name: "dh", reference: dh_ref, cpu: dh_emul },
    ];
    let poison_f32 = f32::from_bits(POISON_U32);
    Case {
        expect,
        device: Box::new(move |dev| {
            let dh_in = upload(dev, &h, off, POISON_BF16)?;
            let dw = upload(dev, &w, off, POISON_BF16)?;
            let dt = dev.htod(&targets)?;
            let dg = dev.htod(&dlogp)?;
            let mut lp = poisoned(dev, t, off, poison_f32)?;
            let mut lse = poisoned(dev, t, off, poison_f32)?;
            let mut dh = poisoned(dev, t * c, off, poison_f32)?;
            let (hv, wv) = (dh_in.slice(off..off + t * c), dw.slice(off..off + v * c));
            dev.logprob_chunked(&hv, &wv, &dt.as_view(), &mut lp.slice_mut(off..off + t), &mut lse.slice_mut(off..off + t), t, c, v, chunk)?;
            dev.logprob_backward_chunked(&hv, &wv, &dt.as_view(), &lse.slice(off..off + t), &dg.as_view(), &mut dh.slice_mut(off..off + t * c), t, c, v, false, chunk)?;
            Ok(vec![
                pick_rows(download_f32(dev, &lp, off, t)?, &rows, 1),
                pick_rows(download_f32(dev, &lse, off, t)?, &rows, 1),
                pick_rows(download_f32(dev, &dh, off, t * c)?, &rows, c),
            ])
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// matmul_nn (cuBLASLt, w [K, N]): y = x @ w.

fn matmul_nn_case(m: usize, k: usize, n: usize, f32_out: bool, accumulate: bool, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = rng.bf16s(m * k, 0.01, 2.0);
    let w = rng.bf16s(k * n, 1.0 / 256.0, 0.125);
    let y0: Vec<u16> = if accumulate { rng.bf16s(m * n, 0.01, 4.0) } else { Vec::new() };
    let y0f = widen(&y0);
    // The reference through the transposed weight: x @ w = x @ (w^T)^T.
    let mut wt = vec![0u16; k * n];
    for i in 0..k {
        for j in 0..n {
            wt[j * k + i] = w[i * n + j];
        }
    }
    let mut reference = matmul_t_f64(&x, &wt, m, k, n);
    let mut cpu_y = cpu::matmul(&widen(&x), &widen(&w), m, k, n);
    if accumulate {
        reference.iter_mut().zip(&y0f).for_each(|(r, &v)| *r += v as f64);
        cpu_y.iter_mut().zip(&y0f).for_each(|(r, &v)| *r += v);
    }
    let expect = vec![if f32_out { Expected::CloseF32 { name: "y", reference, cpu: cpu_y } } else { Expected::Close { name: "y", reference, cpu: cpu_y } }];
    let poison_f32 = f32::from_bits(POISON_U32);
    Case {
        expect,
        device: Box::new(move |dev| {
            let dx = upload(dev, &x, off, POISON_BF16)?;
            let dw = upload(dev, &w, off, POISON_BF16)?;
            let (xv, wv) = (dx.slice(off..off + m * k), dw.slice(off..off + k * n));
            let mn = m * n;
            if f32_out {
                let mut dy = if accumulate { upload(dev, &y0f, off, poison_f32)? } else { poisoned(dev, mn, off, poison_f32)? };
                dev.matmul_nn(&xv, &wv, &mut dy.slice_mut(off..off + mn), m, n, k, accumulate)?;
                Ok(vec![download_f32(dev, &dy, off, mn)?])
            } else {
                let mut dy = if accumulate { upload(dev, &y0, off, POISON_BF16)? } else { poisoned(dev, mn, off, POISON_BF16)? };
                dev.matmul_nn(&xv, &wv, &mut dy.slice_mut(off..off + mn), m, n, k, accumulate)?;
                Ok(vec![download_bf16(dev, &dy, off, mn)?])
            }
        }),
    }
}

/// `matmul_tn`: y[M, N] (f32, optionally += y0) = x[K, M]^T @ w[K, N].
fn matmul_tn_case(m: usize, k: usize, n: usize, accumulate: bool, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = rng.bf16s(k * m, 0.01, 2.0);
    let w = rng.bf16s(k * n, 1.0 / 256.0, 0.125);
    let y0: Vec<f32> = if accumulate { (0..m * n).map(|_| ((rng.uniform() * 2.0 - 1.0) * 4.0) as f32).collect() } else { Vec::new() };
    // The reference as x^T (row-major [M, K]) @ (w^T)^T.
    let mut xt = vec![0u16; m * k];
    let mut wt = vec![0u16; k * n];
    for i in 0..k {
        for j in 0..m {
            xt[j * k + i] = x[i * m + j];
        }
        for j in 0..n {
            wt[j * k + i] = w[i * n + j];
        }
    }
    let mut reference = matmul_t_f64(&xt, &wt, m, k, n);
    let mut cpu_y = cpu::matmul(&widen(&xt), &widen(&w), m, k, n);
    if accumulate {
        reference.iter_mut().zip(&y0).for_each(|(r, &v)| *r += v as f64);
        cpu_y.iter_mut().zip(&y0).for_each(|(r, &v)| *r += v);
    }
    let poison_f32 = f32::from_bits(POISON_U32);
    Case {
        expect: vec![Expected::CloseF32 { name: "y", reference, cpu: cpu_y }],
        device: Box::new(move |dev| {
            let dx = upload(dev, &x, off, POISON_BF16)?;
            let dw = upload(dev, &w, off, POISON_BF16)?;
            let mn = m * n;
            let mut dy = if accumulate { upload(dev, &y0, off, poison_f32)? } else { poisoned(dev, mn, off, poison_f32)? };
            dev.matmul_tn(&dx.slice(off..off + k * m), &dw.slice(off..off + k * n), &mut dy.slice_mut(off..off + mn), m, n, k, accumulate)?;
            Ok(vec![download_f32(dev, &dy, off, mn)?])
        }),
    }
}

/// `activation_backward`: dy <- dy * act'(x) in place.
fn activation_backward_case(act: &'static str, n: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = rng.bf16s(n, 1.0 / 64.0, 6.0);
    let dy = rng.bf16s(n, 1.0 / 64.0, 1.0);
    let (xf, dyf) = (widen(&x), widen(&dy));
    // f64 reference: the CPU formula in f64 (backward_by_name evaluates act' in f64 already).
    let mut g = dyf.clone();
    cpu::activation::backward_by_name(act, &xf, &mut g);
    let reference: Vec<f64> = g.iter().map(|&v| v as f64).collect();
    Case {
        expect: vec![Expected::Close { name: "dx", reference, cpu: g }],
        device: Box::new(move |dev| {
            let dx = upload(dev, &x, off, POISON_BF16)?;
            let mut dd = upload(dev, &dy, off, POISON_BF16)?;
            dev.activation_backward(act, &dx.slice(off..off + n), &mut dd.slice_mut(off..off + n))?;
            Ok(vec![download_bf16(dev, &dd, off, n)?])
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Training attention (kernels/attention_train.cu): FlashAttention-2 forward and backward over a
// packed variable-length batch.

/// The mask of an `attention_train` check; shared-prefix pairs are per sequence.
#[derive(Clone)]
enum TrainMask {
    Bidirectional,
    Causal(Option<usize>),
    SharedPrefix(Vec<(usize, usize)>),
}

impl TrainMask {
    fn cpu(&self, b: usize) -> cpu::AttnMask {
        match self {
            TrainMask::Bidirectional => cpu::AttnMask::Bidirectional,
            TrainMask::Causal(window) => cpu::AttnMask::Causal { window: *window },
            TrainMask::SharedPrefix(pairs) => cpu::AttnMask::SharedPrefix { prefix: pairs[b].0, chosen: pairs[b].1 },
        }
    }
}

/// One `attention_train` check: sequences of `lens` packed, H query heads over Hkv kv heads of dim
/// D, forward (out, lse on every `step`-th row of each sequence and its last row) or backward
/// (dq, dk, dv on every row); buffers at offset `off` (odd: the kernels' unaligned paths).
#[derive(Clone)]
struct AttnTrainShape {
    name: String,
    h: usize,
    hkv: usize,
    d: usize,
    lens: Vec<usize>,
    mask: TrainMask,
    backward: bool,
    step: usize,
    off: usize,
}

fn attention_train_shapes() -> Vec<AttnTrainShape> {
    let mut v = Vec::new();
    let mut add = |backward: bool, (h, hkv, d): (usize, usize, usize), lens: &[usize], mask: TrainMask, step: usize, off: usize| {
        let m = match &mask {
            TrainMask::Bidirectional => "bidirectional".to_string(),
            TrainMask::Causal(None) => "causal".to_string(),
            TrainMask::Causal(Some(w)) => format!("causal window {w}"),
            TrainMask::SharedPrefix(p) => format!("shared prefix {p:?}"),
        };
        let rows = if step > 1 { format!(", 1 in {step} rows checked") } else { String::new() };
        let mis = if !off.is_multiple_of(8) { " misaligned" } else { "" };
        let name = format!("lens {lens:?} {m} H={h} Hkv={hkv} D={d}{rows}{mis}");
        v.push(AttnTrainShape { name, h, hkv, d, lens: lens.to_vec(), mask, backward, step, off });
    };
    let causal = TrainMask::Causal(None);
    for backward in [false, true] {
        // Mistral-7B heads (GQA 4) on short sequences; CLIP-like D=64 bidirectional; MQA.
        // (The backward of a lone 1-row sequence is dq = dk = 0 exactly: packed with another.)
        add(backward, (32, 8, 128), if backward { &[1, 17] } else { &[1] }, causal.clone(), 1, GUARD);
        add(backward, (32, 8, 128), &[17], causal.clone(), 1, GUARD);
        add(backward, (16, 16, 64), &[128], TrainMask::Bidirectional, 1, GUARD);
        add(backward, (4, 1, 128), &[128], TrainMask::Causal(Some(40)), 1, GUARD);
        // T = 1000: partial tiles, window, MQA (the backward's f64 reference is O(T^2 H D)).
        add(backward, (2, 1, 128), &[1000], causal.clone(), 1, GUARD);
        add(backward, (4, 2, 64), &[1000], TrainMask::Causal(Some(100)), 1, GUARD);
        // A packed batch of 3 sequences: plain, and DPO shared prefix (one pair (0, 0) = causal).
        add(backward, (8, 2, 64), &[100, 37, 300], causal.clone(), 1, GUARD);
        add(backward, (8, 2, 64), &[100, 37, 300], TrainMask::SharedPrefix(vec![(40, 30), (0, 0), (100, 120)]), 1, GUARD);
        add(backward, (4, 4, 128), &[70, 200], TrainMask::SharedPrefix(vec![(20, 25), (10, 130)]), 1, GUARD);
        add(backward, (4, 2, 64), &[70, 33], TrainMask::Bidirectional, 1, 1);
    }
    // A long forward: T = 4096 causal, the reference on every 64th row.
    add(false, (4, 1, 128), &[4096], causal.clone(), 64, GUARD);
    add(false, (2, 2, 64), &[4096, 1000], TrainMask::Bidirectional, 64, GUARD);
    v
}

/// The sequences' row offsets (cu_seqlens, B + 1 entries).
fn cu_seqlens(lens: &[usize]) -> Vec<u32> {
    std::iter::once(0).chain(lens.iter().scan(0, |s, &l| {
        *s += l;
        Some(*s as u32)
    }))
    .collect()
}

/// The host side of the forward on the (global) rows `rows`: (f64 reference out [rows, H*D],
/// the kernel's precision model in f32 out [rows, H*D], f64 lse [H, rows], f32 lse [H, rows]).
/// The reference: scores as exact products summed in f64 with the f32 scale, softmax in f64.
/// The precision model (the CPU stand-in, as flash-attention's bf16 reference): scores summed in
/// f32, P = exp(s - max) in f32, rounded to bf16 before P V (f32 sums), divided by the f32 sum of
/// the unrounded P; lse = max + ln(sum) in f32.
#[allow(clippy::type_complexity)]
fn attention_train_fwd_host(q: &[f32], k: &[f32], v: &[f32], a: &AttnTrainShape, rows: &[usize], scale: f32) -> (Vec<f64>, Vec<f32>, Vec<f64>, Vec<f32>) {
    use rayon::prelude::*;
    let AttnTrainShape { h, hkv, d, .. } = *a;
    let (qw, kw, group) = (h * d, hkv * d, h / hkv);
    let cu = cu_seqlens(&a.lens);
    let per_row: Vec<(Vec<f64>, Vec<f32>, Vec<f64>, Vec<f32>)> = rows
        .par_iter()
        .map(|&i| {
            let b = (0..a.lens.len()).find(|&b| (cu[b] as usize..cu[b + 1] as usize).contains(&i)).expect("row in a sequence");
            let (s0, len) = (cu[b] as usize, a.lens[b]);
            let mask = a.mask.cpu(b);
            let li = i - s0;
            let keys: Vec<usize> = (0..len).filter(|&j| mask.visible(li, j)).collect();
            let (mut o64, mut o32) = (vec![0f64; qw], vec![0f32; qw]);
            let (mut l64, mut l32) = (vec![0f64; h], vec![0f32; h]);
            for head in 0..h {
                let g = head / group;
                let qh = &q[i * qw + head * d..][..d];
                let (mut s64, mut s32) = (Vec::with_capacity(keys.len()), Vec::with_capacity(keys.len()));
                for &j in &keys {
                    let kr = &k[(s0 + j) * kw + g * d..][..d];
                    s64.push(qh.iter().zip(kr).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>() * scale as f64);
                    s32.push(qh.iter().zip(kr).fold(0f32, |acc, (&x, &y)| acc + x * y) * scale);
                }
                let m64 = s64.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let m32 = s32.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e64: Vec<f64> = s64.iter().map(|x| (x - m64).exp()).collect();
                let e32: Vec<f32> = s32.iter().map(|x| (x - m32).exp()).collect();
                let z64: f64 = e64.iter().sum();
                let z32: f32 = e32.iter().sum();
                let (oh64, oh32) = (&mut o64[head * d..(head + 1) * d], &mut o32[head * d..(head + 1) * d]);
                for (n, &j) in keys.iter().enumerate() {
                    let vr = &v[(s0 + j) * kw + g * d..][..d];
                    let (p64, p32) = (e64[n] / z64, bf16::from_f32(e32[n]).to_f32());
                    for c in 0..d {
                        oh64[c] += p64 * vr[c] as f64;
                        oh32[c] += p32 * vr[c];
                    }
                }
                oh32.iter_mut().for_each(|x| *x /= z32);
                l64[head] = m64 + z64.ln();
                l32[head] = m32 + z32.ln();
            }
            (o64, o32, l64, l32)
        })
        .collect();
    let n = rows.len();
    let (mut o64, mut o32) = (Vec::with_capacity(n * qw), Vec::with_capacity(n * qw));
    let (mut l64, mut l32) = (vec![0f64; h * n], vec![0f32; h * n]);
    for (r, (a64, a32, b64, b32)) in per_row.into_iter().enumerate() {
        o64.extend(a64);
        o32.extend(a32);
        for head in 0..h {
            l64[head * n + r] = b64[head];
            l32[head * n + r] = b32[head];
        }
    }
    (o64, o32, l64, l32)
}

/// The kernel's backward precision model in f32 (the CPU stand-in): P = exp(s scale - lse) from
/// the given f32 lse, dP = dout V^T and delta = rowsum(dout * out) (the bf16 out) in f32,
/// dS = P (dP - delta); P and dS rounded to bf16 before dv += P dout, dk += dS q, dq += dS k
/// (f32 sums); dq and dk times scale. Returns (dq, dk, dv) in the packed layout.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn attention_train_bwd_emulated(q: &[f32], k: &[f32], v: &[f32], out: &[f32], dout: &[f32], lse: &[f32], a: &AttnTrainShape, scale: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    use rayon::prelude::*;
    let AttnTrainShape { h, hkv, d, .. } = *a;
    let (qw, kw, group) = (h * d, hkv * d, h / hkv);
    let cu = cu_seqlens(&a.lens);
    let t = *cu.last().unwrap() as usize;
    let r = |x: f32| bf16::from_f32(x).to_f32();
    let mut dq = vec![0f32; t * qw];
    let mut dk = vec![0f32; t * kw];
    let mut dv = vec![0f32; t * kw];
    for (b, &len) in a.lens.iter().enumerate() {
        let s0 = cu[b] as usize;
        let mask = a.mask.cpu(b);
        // Per kv head g: (dq of its query heads [len][group][d], dk [len][d], dv [len][d]).
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..hkv)
            .into_par_iter()
            .map(|g| {
                let (mut pq, mut pk, mut pv) = (vec![0f32; len * group * d], vec![0f32; len * d], vec![0f32; len * d]);
                for hh in 0..group {
                    let head = g * group + hh;
                    for li in 0..len {
                        let i = s0 + li;
                        let qh = &q[i * qw + head * d..][..d];
                        let gh = &dout[i * qw + head * d..][..d];
                        let oh = &out[i * qw + head * d..][..d];
                        let delta = oh.iter().zip(gh).fold(0f32, |acc, (&x, &y)| acc + x * y);
                        for lj in 0..len {
                            if !mask.visible(li, lj) {
                                continue;
                            }
                            let kr = &k[(s0 + lj) * kw + g * d..][..d];
                            let vr = &v[(s0 + lj) * kw + g * d..][..d];
                            let s = qh.iter().zip(kr).fold(0f32, |acc, (&x, &y)| acc + x * y);
                            let p = (s * scale - lse[head * t + i]).exp();
                            let dp = gh.iter().zip(vr).fold(0f32, |acc, (&x, &y)| acc + x * y);
                            let (pb, dsb) = (r(p), r(p * (dp - delta)));
                            for c in 0..d {
                                pv[lj * d + c] += pb * gh[c];
                                pk[lj * d + c] += dsb * qh[c];
                                pq[(li * group + hh) * d + c] += dsb * kr[c];
                            }
                        }
                    }
                }
                (pq, pk, pv)
            })
            .collect();
        for (g, (pq, pk, pv)) in parts.into_iter().enumerate() {
            for li in 0..len {
                let i = s0 + li;
                for c in 0..d {
                    dk[i * kw + g * d + c] = pk[li * d + c] * scale;
                    dv[i * kw + g * d + c] = pv[li * d + c];
                }
                for hh in 0..group {
                    for c in 0..d {
                        dq[i * qw + (g * group + hh) * d + c] = pq[(li * group + hh) * d + c] * scale;
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

/// The output elements `idx` of a downloaded buffer (output at `lo..lo + n`), keeping its real
/// guards around them.
fn select_guarded<T: Copy>(all: &[T], lo: usize, n: usize, idx: &[usize]) -> Vec<T> {
    let mut v = all[..lo].to_vec();
    v.extend(idx.iter().map(|&i| all[lo + i]));
    v.extend_from_slice(&all[lo + n..]);
    v
}

/// Forward shapes for the Hopper kernel only, around its 128-row query and key tiles: a causal
/// window that spans tile edges, a GQA 16:1 batch, the shared-prefix mask across tiles.
fn attention_hopper_shapes() -> Vec<AttnTrainShape> {
    let shape = |(h, hkv, d): (usize, usize, usize), lens: &[usize], mask: TrainMask, m: String| AttnTrainShape {
        name: format!("lens {lens:?} {m} H={h} Hkv={hkv} D={d}"),
        h,
        hkv,
        d,
        lens: lens.to_vec(),
        mask,
        backward: false,
        step: 1,
        off: GUARD,
    };
    vec![
        shape((8, 8, 128), &[129, 256, 383], TrainMask::Causal(Some(130)), "causal window 130".into()),
        shape((32, 2, 64), &[300, 513], TrainMask::Causal(None), "causal".into()),
        shape((4, 2, 128), &[255, 385], TrainMask::SharedPrefix(vec![(100, 60), (120, 140)]), "shared prefix [(100, 60), (120, 140)]".into()),
        shape((4, 4, 64), &[127, 1, 129], TrainMask::Bidirectional, "bidirectional".into()),
    ]
}

/// The `attention_train` case on the forward's sm_80 kernel (the backward has one kernel).
fn attention_train_case(a: &AttnTrainShape, seed: u64) -> Case {
    attention_train_case_with(a, super::AttnFwdKernel::Mma, seed)
}

/// An `attention_train` case whose forward runs on `kernel`.
fn attention_train_case_with(a: &AttnTrainShape, kernel: super::AttnFwdKernel, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let AttnTrainShape { h, hkv, d, off, .. } = *a;
    let (qw, kw) = (h * d, hkv * d);
    let cu = cu_seqlens(&a.lens);
    let t = *cu.last().unwrap() as usize;
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    // Scores of std ~1-3 (softmax rows from flat to peaked), as the inference attention checks.
    let q = rng.bf16s(t * qw, 0.01, 3.0);
    let k = rng.bf16s(t * kw, 0.01, 2.0);
    let v = rng.bf16s(t * kw, 0.01, 2.0);
    let (qf, kf, vf) = (widen(&q), widen(&k), widen(&v));
    let sp: Vec<u32> = match &a.mask {
        TrainMask::SharedPrefix(p) => p.iter().flat_map(|&(x, y)| [x as u32, y as u32]).collect(),
        _ => Vec::new(),
    };
    let max_seqlen = a.lens.iter().copied().max().unwrap_or(1).max(1);
    let (window, shared) = match &a.mask {
        TrainMask::Causal(w) => (*w, false),
        TrainMask::SharedPrefix(_) => (None, true),
        TrainMask::Bidirectional => (None, false),
    };
    let causal = !matches!(a.mask, TrainMask::Bidirectional);

    if !a.backward {
        // Rows checked: every `step`-th row of each sequence and its last row.
        let rows: Vec<usize> = a
            .lens
            .iter()
            .enumerate()
            .flat_map(|(b, &len)| {
                let s0 = cu[b] as usize;
                (0..len).filter(move |&j| j % a.step == 0 || j + 1 == len).map(move |j| s0 + j)
            })
            .collect();
        let (o64, o32, l64, l32) = attention_train_fwd_host(&qf, &kf, &vf, a, &rows, scale);
        let expect = vec![
            Expected::CloseRms { name: "out", reference: o64, cpu: o32 },
            Expected::CloseF32 { name: "lse", reference: l64, cpu: l32 },
        ];
        let out_idx: Vec<usize> = rows.iter().flat_map(|&i| (0..qw).map(move |c| i * qw + c)).collect();
        let lse_idx: Vec<usize> = (0..h).flat_map(|head| rows.iter().map(move |&i| head * t + i)).collect();
        let (nq, nk) = (q.len(), k.len());
        return Case {
            expect,
            device: Box::new(move |dev| {
                let dq = upload(dev, &q, off, POISON_BF16)?;
                let dk = upload(dev, &k, off, POISON_BF16)?;
                let dv = upload(dev, &v, off, POISON_BF16)?;
                let dcu = dev.htod(&cu)?;
                let dsp = dev.htod(&sp)?;
                let mut dout = poisoned(dev, nq, off, POISON_BF16)?;
                let mut dlse = poisoned(dev, h * t, off, f32::from_bits(POISON_U32))?;
                let (cuv, spv) = (dcu.as_view(), dsp.as_view());
                let mask = train_mask(causal, window, shared, &spv);
                let batch = super::VarlenAttn { cu_seqlens: &cuv, max_seqlen, n_heads: h, n_kv_heads: hkv, head_dim: d, scale, mask };
                dev.attention_fwd_kernel(kernel, &dq.slice(off..off + nq), &dk.slice(off..off + nk), &dv.slice(off..off + nk), &batch, &mut dout.slice_mut(off..off + nq), &mut dlse.slice_mut(off..off + h * t))?;
                let o = dev.dtoh(&dout)?;
                let l = f32_bits(&dev.dtoh(&dlse)?);
                Ok(vec![
                    Output::Bf16 { all: select_guarded(&o, off, nq, &out_idx), lo: off, n: out_idx.len() },
                    Output::F32 { all: select_guarded(&l, off, h * t, &lse_idx), lo: off, n: lse_idx.len() },
                ])
            }),
        };
    }

    // Backward: out and lse are the f64 forward's, rounded to bf16 / f32 (independent of the
    // forward kernel); dout random.
    let dout = rng.bf16s(t * qw, 0.01, 2.0);
    let doutf = widen(&dout);
    let all_rows: Vec<usize> = (0..t).collect();
    let (o64, _, l64, _) = attention_train_fwd_host(&qf, &kf, &vf, a, &all_rows, scale);
    let out_bits: Vec<u16> = o64.iter().map(|&x| bf16::from_f64(x).to_bits()).collect();
    let lse: Vec<f32> = l64.iter().map(|&x| x as f32).collect();
    let (mut rq, mut rk, mut rv) = (vec![0f64; t * qw], vec![0f64; t * kw], vec![0f64; t * kw]);
    let f64s = |x: &[f32]| -> Vec<f64> { x.iter().map(|&y| y as f64).collect() };
    for (b, &len) in a.lens.iter().enumerate() {
        let s0 = cu[b] as usize;
        let (gq, gk, gv) = cpu::attention_backward(
            &f64s(&qf[s0 * qw..(s0 + len) * qw]),
            &f64s(&kf[s0 * kw..(s0 + len) * kw]),
            &f64s(&vf[s0 * kw..(s0 + len) * kw]),
            &f64s(&doutf[s0 * qw..(s0 + len) * qw]),
            len,
            len,
            h,
            hkv,
            d,
            0,
            a.mask.cpu(b),
        );
        rq[s0 * qw..(s0 + len) * qw].copy_from_slice(&gq);
        rk[s0 * kw..(s0 + len) * kw].copy_from_slice(&gk);
        rv[s0 * kw..(s0 + len) * kw].copy_from_slice(&gv);
    }
    let (eq, ek, ev) = attention_train_bwd_emulated(&qf, &kf, &vf, &widen(&out_bits), &doutf, &lse, a, scale);
    let expect = vec![
        Expected::CloseRms { name: "dq", reference: rq, cpu: eq },
        Expected::CloseRms { name: "dk", reference: rk, cpu: ek },
        Expected::CloseRms { name: "dv", reference: rv, cpu: ev },
    ];
    let (nq, nk) = (q.len(), k.len());
    Case {
        expect,
        device: Box::new(move |dev| {
            let dq_in = upload(dev, &q, off, POISON_BF16)?;
            let dk_in = upload(dev, &k, off, POISON_BF16)?;
            let dv_in = upload(dev, &v, off, POISON_BF16)?;
            let dout_in = upload(dev, &out_bits, off, POISON_BF16)?;
            let ddo_in = upload(dev, &dout, off, POISON_BF16)?;
            let dlse = upload(dev, &lse, off, f32::from_bits(POISON_U32))?;
            let dcu = dev.htod(&cu)?;
            let dsp = dev.htod(&sp)?;
            let mut gq = poisoned(dev, nq, off, POISON_BF16)?;
            let mut gk = poisoned(dev, nk, off, POISON_BF16)?;
            let mut gv = poisoned(dev, nk, off, POISON_BF16)?;
            let (cuv, spv) = (dcu.as_view(), dsp.as_view());
            let mask = train_mask(causal, window, shared, &spv);
            let batch = super::VarlenAttn { cu_seqlens: &cuv, max_seqlen, n_heads: h, n_kv_heads: hkv, head_dim: d, scale, mask };
            dev.attention_bwd(
                &dq_in.slice(off..off + nq),
                &dk_in.slice(off..off + nk),
                &dv_in.slice(off..off + nk),
                &dout_in.slice(off..off + nq),
                &ddo_in.slice(off..off + nq),
                &dlse.slice(off..off + h * t),
                &batch,
                &mut gq.slice_mut(off..off + nq),
                &mut gk.slice_mut(off..off + nk),
                &mut gv.slice_mut(off..off + nk),
            )?;
            Ok(vec![download_bf16(dev, &gq, off, nq)?, download_bf16(dev, &gk, off, nk)?, download_bf16(dev, &gv, off, nk)?])
        }),
    }
}

fn train_mask<'a>(causal: bool, window: Option<usize>, shared: bool, sp: &'a CudaView<'a, u32>) -> super::AttnTrainMask<'a> {
    if shared {
        super::AttnTrainMask::SharedPrefix { pairs: sp }
    } else if causal {
        super::AttnTrainMask::Causal { window }
    } else {
        super::AttnTrainMask::Bidirectional
    }
}
