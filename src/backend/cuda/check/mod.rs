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
//! Attention's f64 reference is `cpu::attention_rows` evaluated in f64 (`cpu::attention_rows_f64`);
//! its checks cover batched decode, causal and sliding-window prefill, chunked prefill over a
//! cache, the bidirectional vision tower (Mistral-7B and CLIP ViT-L shapes), head dims 64, 80, 96
//! and 128, GQA groups of 1, 3, 4 and 16, an empty key range and rows outside the cache.
//! The `attention_split` checks (kernel name; op `attention`) run the split-KV path (decode over
//! long caches) with forced and heuristic split counts, see `attention_split_shapes`.
//!
//! The training attention (`attention_train`: `attention_fwd`, `attention_bwd`) rounds P and dS to
//! bf16 before its tensor-core products, so its bf16 outputs are judged as `CloseRms`: the same
//! rule with the error floor at rms(ref) (flash-attention's own rule is absolute), against a CPU
//! stand-in that makes the same roundings (as flash-attention's bf16 PyTorch reference:
//! `cpu::attention_train_fwd_host`, `cpu::attention_train_bwd_emulated`); lse (f32)
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
//!
//! Layout: `metric.rs` holds what a check compares and how (`Case`, `Expected`, `Output`, the
//! tolerance rules, the guard and poison logic), `io.rs` the seeded inputs and the guarded device
//! buffers, and one file per kernel family its shapes and cases (`norm`, `rope`, `activation`,
//! `embedding`, `sample`, `attention`, `attention_train` (+ Hopper), `matmul`, `lora` (+
//! dropout), `logprob`, `dpo`, `adamw`, `copy` (+ add, cast)). The f64 references and the CPU
//! stand-ins that mimic a kernel's roundings live in `backend::cpu` beside the references they
//! extend.

use std::io::Write;

use super::CudaDevice;
use crate::error::Result;

mod activation;
mod adamw;
mod attention;
mod attention_train;
mod copy;
mod dpo;
mod embedding;
mod io;
mod logprob;
mod lora;
mod matmul;
mod metric;
mod norm;
mod rope;
mod sample;

use activation::{activation_backward_case, activation_case, swiglu_backward_case, swiglu_case, swiglu_fused_case, Act};
use adamw::adamw_case;
use attention::{attention_case, attention_shapes, attention_split_shapes};
use attention_train::{attention_hopper_shapes, attention_train_case, attention_train_case_with, attention_train_shapes};
use copy::{add_case, cast_bf16_to_f32_case, cast_f32_to_bf16_case, concat_cols_case, scatter_rows_case};
use dpo::dpo_case;
use embedding::{embedding_backward_case, embedding_case};
use io::{shape1, shape2, sized};
use logprob::{logprob_case, logprob_dw_case, logprob_shapes};
use lora::{dropout_case, lora_case, lora_dropout_case, LORA_SHAPES, LORA_SHAPES_EMU};
use matmul::{matmul_case, matmul_nn_case, matmul_tn_case, MATMUL_SHAPES, MATMUL_SHAPES_EMU};
use metric::{evaluate, Case, Corruption, Expected, Output, MEAN_RULE_MIN};
use norm::{layernorm_backward_case, layernorm_case, rmsnorm_backward_case, rmsnorm_case, rmsnorm_residual_case};
use rope::{rope_case, rope_case_dir, Positions};
use sample::{argmax_case, sample_case, SAMPLE_SHAPES};

pub use metric::CheckResult;

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

    /// Why this check cannot run on `dev`, as the row to print (`not run: <why>`), or `None`. The
    /// Hopper attention (wgmma, TMA, mbarrier) needs compute capability 9.x: a GPU, or the
    /// emulated device with `STIC_CUDA_EMU_ARCH=90`. Such a row is printed and counted by
    /// `run_checks` and `tests/cuda_parity.rs`, never dropped.
    pub fn not_run_reason(&self, dev: &CudaDevice) -> Option<String> {
        if self.op == "attention_hopper" && !dev.attention_hopper_available() {
            let (major, minor) = dev.compute_capability();
            let emu = if super::emulated() { " (the emulated device: STIC_CUDA_EMU_ARCH=90 emulates one)" } else { "" };
            return Some(format!("not run: attention_hopper needs an sm_90 GPU (compute capability 9.x), this is sm_{major}{minor}{emu}"));
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

/// Every check, in a fixed order (op families in `kernels/` file order is not implied). Under
/// emulation the large shapes are replaced by reduced ones (`sized`).
pub fn checks() -> Vec<Check> {
    let mut v = Vec::new();
    let mut add = |op: &'static str, kernel: &'static str, shape: String, make: Box<dyn Fn(u64) -> Case + Send + Sync>| {
        v.push(Check { op, kernel, shape, make });
    };

    // (Row-per-block kernels: the GPU shapes are already small enough to emulate.)
    for &(t, c, eps, off) in &[(1, 4096, 1e-5, 8), (7, 4096, 1e-5, 8), (3, 1024, 1e-6, 8), (5, 33, 1e-5, 8), (2, 8192, 1e-5, 8), (3, 1024, 1e-6, 1)] {
        add("rmsnorm", "rmsnorm", shape2(t, c, off, &format!("eps {eps:e}")), Box::new(move |s| rmsnorm_case(t, c, eps, off, s)));
    }
    for &(t, c, off) in &[(1, 4096, 8), (7, 4096, 8), (5, 33, 8), (3, 1024, 3)] {
        add("rmsnorm", "rmsnorm_residual", shape2(t, c, off, "eps 1e-5"), Box::new(move |s| rmsnorm_residual_case(t, c, 1e-5, off, s)));
    }
    for &(t, c, off) in sized(&[(1, 1024, 8), (577, 1024, 8), (3, 4096, 8), (5, 33, 8), (2, 1024, 1)], &[(1, 1024, 8), (65, 1024, 8), (3, 4096, 8), (5, 33, 8), (2, 1024, 1)]) {
        add("layernorm", "layernorm", shape2(t, c, off, "eps 1e-5"), Box::new(move |s| layernorm_case(t, c, 1e-5, off, s)));
    }

    for &(h, hkv, d, theta) in &[(32, 8, 128, 1e6), (16, 16, 64, 1e4), (4, 2, 8, 1e4)] {
        for &(t, p0) in sized(&[(1, 4095), (17, 1000), (577, 3)], &[(1, 4095), (17, 1000), (65, 3)]) {
            let shape = format!("T={t} H={h} Hkv={hkv} D={d} pos {p0}.. theta {theta:e}");
            add("rope", "rope_qk", shape, Box::new(move |s| rope_case(t, h, hkv, d, theta, Positions::From(p0), true, s)));
        }
    }
    add("rope", "rope_qk", "T=8 H=32 Hkv=8 D=128 random pos < 32768 theta 1e6".into(), Box::new(|s| rope_case(8, 32, 8, 128, 1e6, Positions::Random(32768), true, s)));
    add("rope", "rope", "T=17 H=16 D=64 pos 5.. theta 1e4 (q only)".into(), Box::new(|s| rope_case(17, 16, 0, 64, 1e4, Positions::From(5), false, s)));

    // Elementwise (grid-stride) kernels: 43013 elements already make several blocks.
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

    // Emulated: the full vocabulary with narrower rows (the table is 256 MB at C=4096).
    let c = sized(4096, 512);
    add("embedding", "embedding", format!("V=32064 C={c} T=40, image span [7, 31) of K=24"), Box::new(move |s| embedding_case(32064, c, 40, 7, 24, 8, false, s)));
    add("embedding", "embedding", format!("V=32064 C={c} T=5, text only"), Box::new(move |s| embedding_case(32064, c, 5, 0, 0, 8, false, s)));
    add("embedding", "embedding", "V=17 C=33 T=9, image span [2, 5) of K=3 (misaligned)".into(), Box::new(|s| embedding_case(17, 33, 9, 2, 3, 1, false, s)));
    add("embedding", "embedding", "V=100 C=64 T=6, image span [1, 3) of K=2, one source out of range".into(), Box::new(|s| embedding_case(100, 64, 6, 1, 2, 8, true, s)));

    for bf in [false, true] {
        for &(b, v) in sized(&[(1, 32064), (8, 32064), (3, 17)], &[(1, 32064), (2, 32064), (3, 17)]) {
            let kernel = if bf { "argmax_bf16" } else { "argmax_f32" };
            add("sample", kernel, format!("[{b}, {v}] with ties"), Box::new(move |s| argmax_case(b, v, bf, s)));
        }
    }

    // Temperature / top-k / top-p sampling: exact against cpu::sample_row with the same uniforms
    // (drawn away from CDF boundaries, rows redrawn when a top-p cut is within 1e-9 of 1 - top_p).
    for &(b, v, t, k, p, rows) in SAMPLE_SHAPES {
        // One block per row: two rows keep the multi-row grid under emulation.
        let b = sized(b, b.min(2));
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
    // that cross its 128-row tiles; listed as not run on other GPUs and on the emulated device
    // (`Check::not_run_reason`).
    for a in attention_train_shapes().into_iter().chain(attention_hopper_shapes()).filter(|a| !a.backward && a.off.is_multiple_of(8)) {
        add("attention_hopper", "attention_fwd_hopper", a.name.clone(), Box::new(move |s| attention_train_case_with(&a, super::AttnFwdKernel::Hopper, s)));
    }

    for &g in sized(MATMUL_SHAPES, MATMUL_SHAPES_EMU) {
        add("matmul", "matmul", g.shape(), Box::new(move |s| matmul_case(g, s)));
    }

    // matmul_nn: dx = dy W of a Linear's backward (w [K, N] as stored).
    let nn: &[(usize, usize, usize, bool, bool, usize)] = sized(
        &[(300, 4096, 4096, true, false, 8), (7, 14336, 4096, false, false, 8), (5, 33, 77, true, true, 3), (3, 77, 33, false, false, 1)],
        &[(65, 1024, 512, true, false, 8), (7, 2048, 512, false, false, 8), (5, 33, 77, true, true, 3), (3, 77, 33, false, false, 1)],
    );
    for &(m, k, n, f32_out, acc, off) in nn {
        let shape = format!("M={m} K={k} N={n}{} -> {}{}", if acc { " +=y" } else { "" }, if f32_out { "f32" } else { "bf16" }, if off % 8 != 0 { " misaligned" } else { "" });
        add("matmul", "matmul_nn", shape, Box::new(move |s| matmul_nn_case(m, k, n, f32_out, acc, off, s)));
    }

    // matmul_tn: the weight gradient dW = dy^T x of a Linear (x [K, M] used transposed), f32
    // accumulated over examples, and the bias gradient (w a column of ones).
    let tn: &[(usize, usize, usize, bool, usize)] =
        sized(&[(4096, 2928, 1024, true, 8), (4096, 300, 1, false, 8), (33, 7, 77, true, 3), (5, 1, 9, false, 1)], &[(512, 300, 256, true, 8), (1024, 300, 1, false, 8), (33, 7, 77, true, 3), (5, 1, 9, false, 1)]);
    for &(m, k, n, acc, off) in tn {
        let shape = format!("M={m} K={k} N={n}{} -> f32{}", if acc { " +=y" } else { "" }, if off % 8 != 0 { " misaligned" } else { "" });
        add("matmul", "matmul_tn", shape, Box::new(move |s| matmul_tn_case(m, k, n, acc, off, s)));
    }
    for act in ["gelu", "quick_gelu", "silu"] {
        for &(n, off) in sized(&[(2928 * 4096, 8), (1000, 3)], &[(3 * 4096 + 5, 8), (1000, 3)]) {
            add("activation", "activation_backward", format!("{act} {}", shape1(n, off)), Box::new(move |s| activation_backward_case(act, n, off, s)));
        }
    }

    // Training: the LoRA linear layer (forward + backward) and the chunked log-prob (forward + backward).
    for &g in sized(LORA_SHAPES, LORA_SHAPES_EMU) {
        add("lora", "lora_fwd_bwd", g.shape(), Box::new(move |s| lora_case(g, s)));
    }
    // LoRA dropout: the masks (exact), and the LoRA layer with a dropped input.
    for &(n, pr, off) in sized(&[(3300 * 4096, 0.05f32, 8), (1000, 0.5, 3), (7, 0.1, 1)], &[(100_003, 0.05f32, 8), (1000, 0.5, 3), (7, 0.1, 1)]) {
        add("dropout", "dropout", format!("[{n}] p {pr}{}", if off % 8 != 0 { " misaligned" } else { "" }), Box::new(move |s| dropout_case(n, pr, off, s)));
    }
    for &(m, k, n, r, off) in sized(&[(300, 4096, 4096, 16, 8), (70, 130, 200, 40, 3)], &[(70, 512, 512, 16, 8), (70, 130, 200, 40, 3)]) {
        add("lora", "lora_dropout_fwd_bwd", format!("M={m} K={k} N={n} r={r} p 0.1{}", if off % 8 != 0 { " misaligned" } else { "" }), Box::new(move |s| lora_dropout_case(m, k, n, r, off, s)));
    }
    for g in logprob_shapes() {
        add("logprob", "logprob_fwd_bwd", g.shape(), Box::new(move |s| logprob_case(&g, s)));
    }
    for &(t, c, v, chunk, off) in &[(5, 64, 300, 128, 8), (3, 33, 17, 5, 1)] {
        add("logprob", "logprob_backward_dw", format!("T={t} C={c} V={v} chunk {chunk} at +{off}: lm_head dw"), Box::new(move |s| logprob_dw_case(t, c, v, chunk, off, s)));
    }

    // Row moves and the broadcast add: exact (copies; one f32 add of two bf16 values, rounded once).
    for &(n, r, w, off) in sized(&[(1, 2 * 4096, 1024, 8), (64, 64 * 64, 1024, 8), (5, 9, 33, 8), (7, 20, 96, 3)], &[(1, 2 * 4096, 256, 8), (64, 16 * 64, 1024, 8), (5, 9, 33, 8), (7, 20, 96, 3)]) {
        add("copy", "scatter_rows", format!("src [{n}, {w}] into dst [{r}, {w}] at +{off}"), Box::new(move |s| scatter_rows_case(n, r, w, off, s)));
    }
    for &(r, c1, c2, off) in sized(&[(2880, 1024, 1024, 8), (7, 33, 5, 8), (5, 16, 24, 1)], &[(130, 1024, 1024, 8), (7, 33, 5, 8), (5, 16, 24, 1)]) {
        add("copy", "concat_cols", format!("[{r}, {c1}] | [{r}, {c2}] at +{off}"), Box::new(move |s| concat_cols_case(r, c1, c2, off, s)));
    }
    for &(rows, period, c, off) in sized(&[(2 * 577, 577, 1024, 8), (7, 7, 4096, 8), (9, 3, 33, 1), (1, 1, 5, 8)], &[(2 * 65, 65, 1024, 8), (7, 7, 4096, 8), (9, 3, 33, 1), (1, 1, 5, 8)]) {
        add("add", "add", format!("[{rows}, {c}] += [{period}, {c}] at +{off}"), Box::new(move |s| add_case(rows, period, c, off, s)));
    }

    // Backward kernels of training (the norm weight's dw for full-parameter training).
    for &(t, c, off) in &[(1, 4096, 8), (7, 4096, 8), (5, 33, 3)] {
        add("rmsnorm", "rmsnorm_backward", shape2(t, c, off, "eps 1e-5, dx and dw"), Box::new(move |s| rmsnorm_backward_case(t, c, 1e-5, off, s)));
    }
    for &(t, c, off) in &[(1, 1024, 8), (7, 1024, 8), (5, 33, 3)] {
        add("layernorm", "layernorm_backward", shape2(t, c, off, "eps 1e-5, dx, dw and db"), Box::new(move |s| layernorm_backward_case(t, c, 1e-5, off, s)));
    }
    for &(v, c, t, off) in &[(100, 64, 12, 8), (17, 33, 9, 1)] {
        add("embedding", "embedding_backward", format!("V={v} C={c} T={t} at +{off}, repeated ids, image rows skipped"), Box::new(move |s| embedding_backward_case(v, c, t, off, s)));
    }
    for &(t, p0) in sized(&[(17usize, 1000u32), (300, 0)], &[(17, 1000), (65, 0)]) {
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
    let (mut passed, mut failed, mut not_run) = (0, 0, 0);
    for c in &selected {
        if let Some(why) = c.not_run_reason(dev) {
            writeln!(out, "{:<18} {:<58} {why}", c.kernel, c.shape)?;
            not_run += 1;
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
    writeln!(out, "{passed} passed, {failed} failed, {not_run} not run")?;
    // Rows that cannot run here are listed and counted, not failures; a selection of nothing but
    // such rows (`stic check attention_hopper` on another GPU) has not checked anything.
    Ok(failed == 0 && passed > 0)
}
