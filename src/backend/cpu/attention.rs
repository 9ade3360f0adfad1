//! Scaled dot-product attention with grouped-query heads, the CPU reference.
//!
//! q[Tq, H*D], k[Tk, Hkv*D], v[Tk, Hkv*D] -> out[Tq, H*D]; query head h reads kv head h / (H/Hkv).
//! Query row i sits at absolute position `q_start + i`, key row j at position j, so the same
//! function serves prefill (q_start = 0, Tq = Tk), chunked prefill and decode over a KV cache.
//! Masks: bidirectional (CLIP), causal, or causal with a sliding window of W keys (Mistral: key j is
//! visible from position p when p - W < j <= p). Scores are scaled by 1/sqrt(D); the softmax runs in
//! f32 with the row max subtracted and the sum accumulated in f64.
//! Nothing is saved for a backward pass here; training recomputes.

use rayon::prelude::*;

use super::matmul::gemm_strided;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnMask {
    Bidirectional,
    Causal { window: Option<usize> },
}

impl AttnMask {
    /// Visible key range [lo, hi) for a query at absolute position `p` over `tk` keys.
    fn range(self, p: usize, tk: usize) -> (usize, usize) {
        match self {
            AttnMask::Bidirectional => (0, tk),
            AttnMask::Causal { window } => {
                let hi = (p + 1).min(tk);
                let lo = window.map(|w| (p + 1).saturating_sub(w)).unwrap_or(0);
                (lo.min(hi), hi)
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    tq: usize,
    tk: usize,
    n_heads: usize,
    n_kv: usize,
    d: usize,
    q_start: usize,
    mask: AttnMask,
) -> Vec<f32> {
    let (qw, kw) = (n_heads * d, n_kv * d);
    assert_eq!(q.len(), tq * qw, "attention: q is not [Tq={tq}, H*D={qw}]");
    assert_eq!(k.len(), tk * kw, "attention: k is not [Tk={tk}, Hkv*D={kw}]");
    assert_eq!(v.len(), tk * kw, "attention: v is not [Tk={tk}, Hkv*D={kw}]");
    assert!(n_kv > 0 && n_heads % n_kv == 0, "attention: H={n_heads} is not a multiple of Hkv={n_kv}");
    let group = n_heads / n_kv;
    let scale = 1.0 / (d as f32).sqrt();

    let heads: Vec<Vec<f32>> = (0..n_heads)
        .into_par_iter()
        .map(|h| {
            let g = h / group;
            let mut s = vec![0f32; tq * tk];
            // S[Tq, Tk] = q_h[Tq, D] @ k_g[Tk, D]^T
            gemm_strided(tq, tk, d, &mut s, tk, &q[h * d..], qw, 1, &k[g * d..], 1, kw);
            for (i, row) in s.chunks_mut(tk).enumerate() {
                let (lo, hi) = mask.range(q_start + i, tk);
                let mut m = f32::NEG_INFINITY;
                for x in &row[lo..hi] {
                    m = m.max(*x * scale);
                }
                let mut sum = 0f64;
                for (j, x) in row.iter_mut().enumerate() {
                    if j < lo || j >= hi {
                        *x = 0.0;
                    } else {
                        *x = (*x * scale - m).exp();
                        sum += *x as f64;
                    }
                }
                let inv = (1.0 / sum) as f32;
                row[lo..hi].iter_mut().for_each(|x| *x *= inv);
            }
            // O_h[Tq, D] = P[Tq, Tk] @ v_g[Tk, D]
            let mut o = vec![0f32; tq * d];
            gemm_strided(tq, d, tk, &mut o, d, &s, tk, 1, &v[g * d..], kw, 1);
            o
        })
        .collect();

    let mut out = vec![0f32; tq * qw];
    for (h, o) in heads.iter().enumerate() {
        for i in 0..tq {
            out[i * qw + h * d..i * qw + (h + 1) * d].copy_from_slice(&o[i * d..(i + 1) * d]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f64 attention, one query at a time.
    fn reference(q: &[f32], k: &[f32], v: &[f32], tq: usize, tk: usize, h: usize, hkv: usize, d: usize, q0: usize, mask: AttnMask) -> Vec<f64> {
        let mut out = vec![0f64; tq * h * d];
        for i in 0..tq {
            for hh in 0..h {
                let g = hh / (h / hkv);
                let (lo, hi) = mask.range(q0 + i, tk);
                let sc: Vec<f64> = (lo..hi)
                    .map(|j| (0..d).map(|c| q[i * h * d + hh * d + c] as f64 * k[j * hkv * d + g * d + c] as f64).sum::<f64>() / (d as f64).sqrt())
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
                for (jj, j) in (lo..hi).enumerate() {
                    let p = (sc[jj] - m).exp() / z;
                    for c in 0..d {
                        out[i * h * d + hh * d + c] += p * v[j * hkv * d + g * d + c] as f64;
                    }
                }
            }
        }
        out
    }

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_f64_reference_for_every_mask() {
        let (h, hkv, d) = (6, 2, 8);
        for &(tq, tk, q0, mask) in &[
            (9, 9, 0, AttnMask::Bidirectional),
            (9, 9, 0, AttnMask::Causal { window: None }),
            (9, 9, 0, AttnMask::Causal { window: Some(3) }),
            (1, 12, 11, AttnMask::Causal { window: None }),
            (4, 12, 8, AttnMask::Causal { window: Some(5) }),
        ] {
            let q = rand_vec(tq * h * d, 1);
            let k = rand_vec(tk * hkv * d, 2);
            let v = rand_vec(tk * hkv * d, 3);
            let o = attention(&q, &k, &v, tq, tk, h, hkv, d, q0, mask);
            let r = reference(&q, &k, &v, tq, tk, h, hkv, d, q0, mask);
            for (a, b) in o.iter().zip(&r) {
                assert!((*a as f64 - b).abs() < 1e-5, "{mask:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn window_range() {
        let m = AttnMask::Causal { window: Some(4) };
        assert_eq!(m.range(10, 20), (7, 11));
        assert_eq!(m.range(2, 20), (0, 3));
    }
}
