//! The GEMM checks (cuBLASLt): `matmul` (x w^T, + bias, + y, bf16 or f32 out), `matmul_nn`
//! (w [K, N]) and `matmul_tn` (x [K, M] transposed: weight gradients), against
//! `cpu::matmul_t_f64`.

use super::io::{download_bf16, download_f32, poisoned, upload, widen, Inputs};
use super::metric::{Case, Expected, GUARD, POISON_BF16, POISON_U32};
use crate::backend::cpu;
use crate::rng::Rng;

/// One `matmul` check: y[M, N] = x[M, K] @ w[N, K]^T (+ bias) (+ y), output bf16 or f32, every
/// buffer at offset `off` (8: 16-byte aligned sub-views; odd: 2-byte aligned ones).
#[derive(Clone, Copy)]
pub(super) struct Gemm {
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
pub(super) const MATMUL_SHAPES: &[Gemm] = &[
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

/// `MATMUL_SHAPES` on the emulated device (its cuBLASLt is a CPU GEMM, and the f64 reference
/// runs beside it): the same layouts, epilogues and alignments, K and N cut to at most 1024 and
/// 2048, except the lm_head's full vocabulary.
pub(super) const MATMUL_SHAPES_EMU: &[Gemm] = &[
    gemm(1, 1024, 1024, "decode"),
    gemm(8, 1024, 512, "decode batch 8"),
    gemm(65, 512, 1536, "prefill gate/up"),
    Gemm { f32_out: true, ..gemm(2, 512, 32064, "lm_head") },
    Gemm { bias: true, ..gemm(65, 256, 1024, "CLIP fc1") },
    Gemm { bias: true, ..gemm(3, 77, 33, "odd K") },
    Gemm { off: 1, ..gemm(3, 77, 33, "odd K") },
    Gemm { f32_out: true, bias: true, off: 3, ..gemm(5, 33, 7, "tiny") },
    Gemm { bias: true, accumulate: true, ..gemm(7, 1024, 1024, "o_proj + residual") },
    Gemm { f32_out: true, bias: true, accumulate: true, ..gemm(17, 1024, 1024, "f32 residual") },
];

impl Gemm {
    pub(super) fn shape(&self) -> String {
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

pub(super) fn matmul_case(g: Gemm, seed: u64) -> Case {
    let Gemm { m, k, n, bias, accumulate, f32_out, off, .. } = g;
    let mut rng = Rng::new(seed);
    // Outputs ~ sqrt(K) * 1.2 * 0.07, i.e. O(1..10); bias and the old y on the same scale.
    let x = rng.bf16s(m * k, 0.01, 2.0);
    let w = rng.bf16s(n * k, 1.0 / 256.0, 0.125);
    let b = if bias { rng.bf16s(n, 0.01, 4.0) } else { Vec::new() };
    let y0: Vec<u16> = if accumulate { rng.bf16s(m * n, 0.01, 4.0) } else { Vec::new() };
    let (bf, y0f) = (widen(&b), widen(&y0));

    let mut reference = cpu::matmul_t_f64(&x, &w, m, k, n);
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

pub(super) fn matmul_nn_case(m: usize, k: usize, n: usize, f32_out: bool, accumulate: bool, off: usize, seed: u64) -> Case {
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
    let mut reference = cpu::matmul_t_f64(&x, &wt, m, k, n);
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
pub(super) fn matmul_tn_case(m: usize, k: usize, n: usize, accumulate: bool, off: usize, seed: u64) -> Case {
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
    let mut reference = cpu::matmul_t_f64(&xt, &wt, m, k, n);
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
