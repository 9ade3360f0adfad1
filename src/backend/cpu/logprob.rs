//! Fused lm_head + log-softmax + target gather, chunked over the vocabulary: the per-token
//! log-probabilities that DPO and SFT need, without ever holding the [T, V] logits.
//!
//! Forward:  h[T, C], w[V, C] (lm_head), targets[T] -> logp[T] = z[t, y_t] - lse_t, lse[T]
//!           where z = h w^T is produced CHUNK rows of w at a time and folded into an online
//!           log-sum-exp (running max and rescaled sum), like the CUDA kernel will.
//! Saved for backward: lse[T] (and the inputs).
//! Backward: dlogp[T] -> dh[t] = dlogp_t * (w[y_t] - sum_v softmax(z_t)_v w[v]), recomputing z chunk by
//!           chunk from lse. The lm_head is frozen in LoRA training, so no dw.
//! The CPU reference for kernels/logprob.cu (issue #6); generic over the float type so the
//! finite-difference test runs in f64. `logprob_f64` / `logprob_backward_host`: the f64
//! reference on bf16 weights and the f32 model of the kernel's backward, for the CUDA parity checks.

use half::bf16;
use num_traits::Float;
use rayon::prelude::*;

/// Vocabulary rows per chunk: [T, CHUNK] scores at a time.
pub const CHUNK: usize = 4096;

fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    a.iter().zip(b).fold(F::zero(), |s, (&x, &y)| s + x * y)
}

/// (logp[T], lse[T]).
pub fn logprob<F: Float + Send + Sync>(h: &[F], w: &[F], targets: &[u32], c: usize) -> (Vec<F>, Vec<F>) {
    let v = w.len() / c;
    assert_eq!(h.len(), targets.len() * c, "logprob: h is not [T={}, C={c}]", targets.len());
    assert_eq!(w.len(), v * c, "logprob: w is not [V, C={c}]");
    targets
        .par_iter()
        .enumerate()
        .map(|(t, &y)| {
            assert!((y as usize) < v, "logprob: target {y} outside the vocabulary ({v})");
            let ht = &h[t * c..(t + 1) * c];
            let (mut m, mut s) = (F::neg_infinity(), F::zero());
            for chunk in w.chunks(CHUNK * c) {
                let z: Vec<F> = chunk.chunks_exact(c).map(|wr| dot(ht, wr)).collect();
                let cm = z.iter().copied().fold(F::neg_infinity(), F::max);
                let nm = m.max(cm);
                s = s * (m - nm).exp() + z.iter().fold(F::zero(), |a, &x| a + (x - nm).exp());
                m = nm;
            }
            let lse = m + s.ln();
            (dot(ht, &w[y as usize * c..(y as usize + 1) * c]) - lse, lse)
        })
        .unzip()
}

/// dh[T, C] given dlogp[T] and the saved lse[T].
pub fn logprob_backward<F: Float + Send + Sync>(h: &[F], w: &[F], targets: &[u32], lse: &[F], dlogp: &[F], c: usize) -> Vec<F> {
    let mut dh = vec![F::zero(); h.len()];
    dh.par_chunks_mut(c).enumerate().for_each(|(t, dht)| {
        let ht = &h[t * c..(t + 1) * c];
        let g = dlogp[t];
        let y = targets[t] as usize;
        for (vi, wr) in w.chunks_exact(c).enumerate() {
            let p = (dot(ht, wr) - lse[t]).exp();
            let coef = g * ((if vi == y { F::one() } else { F::zero() }) - p);
            for (d, &x) in dht.iter_mut().zip(wr) {
                *d = *d + coef * x;
            }
        }
    });
    dh
}

/// f64 log-probs and lse of the rows of h (widened bf16) against w (bf16 bits, widened row by row):
/// the reference of kernels/logprob.cu's forward in the CUDA parity checks.
pub fn logprob_f64(h: &[f64], w: &[u16], targets: &[u32], c: usize) -> (Vec<f64>, Vec<f64>) {
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
/// f32 sums of (hi + lo) w: the CPU stand-in that mimics the roundings of kernels/logprob.cu's
/// backward (`logprob_dlogits` + the dh GEMMs).
pub fn logprob_backward_host(h: &[f64], w: &[u16], targets: &[u32], lse: &[f64], dlogp: &[f64], c: usize, coef_bf16: bool) -> Vec<f64> {
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

/// `logprob` (f32) with the scores of each vocabulary chunk from one GEMM [T, C] x [C, CHUNK]
/// instead of T x CHUNK dot products: the forward of [`logprob_backward_full`]'s training path.
/// The same online log-sum-exp per row; only the dot products' summation order differs.
pub fn logprob_gemm(h: &[f32], w: &[f32], targets: &[u32], c: usize) -> (Vec<f32>, Vec<f32>) {
    let t = targets.len();
    let v = w.len() / c;
    assert_eq!(h.len(), t * c, "logprob_gemm: h is not [T={t}, C={c}]");
    let mut state = vec![(f32::NEG_INFINITY, 0f32, 0f32); t]; // (running max, rescaled sum, z at the target)
    for v0 in (0..v).step_by(CHUNK) {
        let n = CHUNK.min(v - v0);
        let z = super::matmul::matmul_t(h, &w[v0 * c..(v0 + n) * c], t, c, n);
        state.par_iter_mut().zip(z.par_chunks(n)).enumerate().for_each(|(i, ((m, s, zy), row))| {
            let y = targets[i] as usize;
            assert!(y < v, "logprob_gemm: target {y} outside the vocabulary ({v})");
            if (v0..v0 + n).contains(&y) {
                *zy = row[y - v0];
            }
            let cm = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let nm = m.max(cm);
            *s = *s * (*m - nm).exp() + row.iter().fold(0f32, |a, &x| a + (x - nm).exp());
            *m = nm;
        });
    }
    state.iter().map(|&(m, s, zy)| (zy - (m + s.ln()), m + s.ln())).unzip()
}

/// `logprob_backward` when the lm_head trains too (f32): returns dh[T, C] and adds
/// s * dW[V, C] into `dw`. Chunked over the vocabulary: per CHUNK rows of w, the scores
/// z = h w_c^T [T, CHUNK] are recomputed, turned into d loss / d z = dlogp_t (1[v = y_t] -
/// softmax_v) with the saved lse, and two GEMMs give dh += dz w_c and dw_c += s dz^T h. Never
/// [T, V].
#[allow(clippy::too_many_arguments)]
pub fn logprob_backward_full(h: &[f32], w: &[f32], targets: &[u32], lse: &[f32], dlogp: &[f32], c: usize, dw: &mut [f32], s: f32) -> Vec<f32> {
    use super::matmul::{gemm_strided, matmul_t, matmul_tn_acc};
    let t = targets.len();
    let v = w.len() / c;
    assert_eq!(h.len(), t * c, "logprob_backward_full: h is not [T={t}, C={c}]");
    assert_eq!(dw.len(), w.len(), "logprob_backward_full: dw is not [V, C]");
    let mut dh = vec![0f32; t * c];
    for v0 in (0..v).step_by(CHUNK) {
        let n = CHUNK.min(v - v0);
        let wc = &w[v0 * c..(v0 + n) * c];
        let mut dz = matmul_t(h, wc, t, c, n);
        dz.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            let y = targets[i] as usize;
            for (j, z) in row.iter_mut().enumerate() {
                let p = (*z - lse[i]).exp();
                *z = dlogp[i] * (if v0 + j == y { 1.0 } else { 0.0 } - p);
            }
        });
        // dh[T, C] += dz[T, n] @ wc[n, C]: accumulate through a temporary product.
        let mut prod = vec![0f32; t * c];
        gemm_strided(t, c, n, &mut prod, c, &dz, n, 1, wc, c, 1);
        dh.iter_mut().zip(&prod).for_each(|(a, b)| *a += b);
        matmul_tn_acc(&dz, h, t, n, c, &mut dw[v0 * c..(v0 + n) * c], s);
    }
    dh
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_vec as rand_vec;

    #[test]
    fn matches_full_log_softmax_across_chunks() {
        // V spans several chunks (and a ragged last one); compare with the unchunked formula.
        let (t, c, v) = (3, 5, 2 * CHUNK + 17);
        let h = rand_vec(t * c, 1);
        let w: Vec<f64> = rand_vec(v * c, 2).iter().map(|x| x * 3.0).collect();
        let targets = [0u32, (CHUNK + 3) as u32, (v - 1) as u32];
        let (lp, lse) = logprob(&h, &w, &targets, c);
        for i in 0..t {
            let z: Vec<f64> = w.chunks(c).map(|wr| dot(&h[i * c..(i + 1) * c], wr)).collect();
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let want_lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            assert!((lse[i] - want_lse).abs() < 1e-12);
            assert!((lp[i] - (z[targets[i] as usize] - want_lse)).abs() < 1e-12);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (t, c, v) = (4, 6, 50);
        let h = rand_vec(t * c, 3);
        let w = rand_vec(v * c, 4);
        let targets = [3u32, 0, 49, 17];
        let g = rand_vec(t, 5);
        let loss = |h: &[f64]| logprob(h, &w, &targets, c).0.iter().zip(&g).map(|(a, b)| a * b).sum::<f64>();
        let (_, lse) = logprob(&h, &w, &targets, c);
        let dh = logprob_backward(&h, &w, &targets, &lse, &g, c);
        let eps = 1e-6;
        for i in 0..h.len() {
            let (mut p, mut m) = (h.clone(), h.clone());
            p[i] += eps;
            m[i] -= eps;
            let fd = (loss(&p) - loss(&m)) / (2.0 * eps);
            assert!((fd - dh[i]).abs() < 1e-7 * (1.0 + fd.abs()), "dh[{i}]: fd {fd} vs {}", dh[i]);
        }
    }
}
