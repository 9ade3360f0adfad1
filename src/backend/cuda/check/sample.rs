//! The sampling checks (kernels/sample.cu): `argmax_f32` / `argmax_bf16` with ties and NaNs, and
//! `sample_f32` (temperature / top-k / top-p) exact against `cpu::sample_row` with uniforms drawn
//! away from the CDF's boundaries.

use super::io::{download_u32, poisoned, widen, Inputs};
use super::metric::{bf16_bits, Case, Expected, GUARD, POISON_U32};
use crate::backend::cpu;
use crate::rng::Rng;

pub(super) fn argmax_case(b: usize, v: usize, bf: bool, seed: u64) -> Case {
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
pub(super) enum SampleRows {
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
    pub(super) fn name(self) -> &'static str {
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
pub(super) const SAMPLE_SHAPES: &[(usize, usize, f32, usize, f32, SampleRows)] = &[
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

pub(super) fn sample_case(b: usize, v: usize, t: f32, k: usize, p: f32, kind: SampleRows, seed: u64) -> Case {
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
