//! Scaled dot-product attention with grouped-query heads, the CPU reference.
//!
//! q[Tq, H*D], k[Tk, Hkv*D], v[Tk, Hkv*D] -> out[Tq, H*D]; query head h reads kv head h / (H/Hkv).
//! Query row i sits at absolute position `q_start + i`, key row j at position j, so the same
//! function serves prefill (q_start = 0, Tq = Tk), chunked prefill and decode over a KV cache.
//! Masks: bidirectional (CLIP), causal, or causal with a sliding window of W keys (Mistral: key j is
//! visible from position p when p - W < j <= p), and the shared-prefix mask of DPO pairs packed as
//! [prefix | chosen | rejected] (each response sees the prefix and itself, never the other one).
//! Scores are scaled by 1/sqrt(D); the softmax runs in f32 with the row max subtracted and the sum
//! accumulated in f64.
//!
//! Backward (`attention_backward`): dq, dk, dv from q, k, v and dout, recomputing P (nothing is
//! saved: the reference trades time for simplicity; the CUDA kernel saves the row log-sum-exp).
//! dk and dv are summed over the query heads of each kv group. Plain loops over any float type,
//! so the finite-difference test runs it in f64.

use num_traits::Float;
use rayon::prelude::*;

use super::matmul::gemm_strided;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnMask {
    Bidirectional,
    Causal { window: Option<usize> },
    /// One sequence packed as [prefix | chosen | rejected] (rows and keys in packed order):
    /// causal within the prefix; a chosen row sees the prefix and the chosen rows up to itself; a
    /// rejected row sees the prefix and the rejected rows up to itself.
    SharedPrefix { prefix: usize, chosen: usize },
}

impl AttnMask {
    /// Whether the query at packed index `i` sees key `j`.
    pub fn visible(self, i: usize, j: usize) -> bool {
        match self {
            AttnMask::Bidirectional => true,
            AttnMask::Causal { window } => j <= i && window.is_none_or(|w| i - j < w),
            AttnMask::SharedPrefix { prefix, chosen } => {
                j <= i && (j < prefix || i < prefix + chosen || j >= prefix + chosen)
            }
        }
    }

    /// Keys outside [lo, hi) are never visible from query `i` (a bound, not the exact set).
    fn range(self, i: usize, tk: usize) -> (usize, usize) {
        match self {
            AttnMask::Bidirectional => (0, tk),
            AttnMask::Causal { window } => {
                let hi = (i + 1).min(tk);
                let lo = window.map(|w| (i + 1).saturating_sub(w)).unwrap_or(0);
                (lo.min(hi), hi)
            }
            AttnMask::SharedPrefix { .. } => (0, (i + 1).min(tk)),
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
    assert!(n_kv > 0 && n_heads.is_multiple_of(n_kv), "attention: H={n_heads} is not a multiple of Hkv={n_kv}");
    let group = n_heads / n_kv;

    let heads: Vec<Vec<f32>> = (0..n_heads)
        .into_par_iter()
        .map(|h| {
            let g = h / group;
            let s = head_probs(q, k, h, g, tq, tk, d, q_start, mask);
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

/// P[Tq, Tk] of head `h` (kv head `g`): softmax over the visible keys of scale * q_h k_g^T,
/// masked entries exactly 0 (the probabilities `attention` and `attention_backward_gemm` share).
#[allow(clippy::too_many_arguments)]
fn head_probs(q: &[f32], k: &[f32], h: usize, g: usize, tq: usize, tk: usize, d: usize, q_start: usize, mask: AttnMask) -> Vec<f32> {
    let n_heads_d = q.len() / tq.max(1);
    let kw = k.len() / tk.max(1);
    let scale = 1.0 / (d as f32).sqrt();
    let mut s = vec![0f32; tq * tk];
    // S[Tq, Tk] = q_h[Tq, D] @ k_g[Tk, D]^T
    gemm_strided(tq, tk, d, &mut s, tk, &q[h * d..], n_heads_d, 1, &k[g * d..], 1, kw);
    for (i, row) in s.chunks_mut(tk).enumerate() {
        let qi = q_start + i;
        let (lo, hi) = mask.range(qi, tk);
        let mut m = f32::NEG_INFINITY;
        for (j, x) in row.iter().enumerate().take(hi).skip(lo) {
            if mask.visible(qi, j) {
                m = m.max(*x * scale);
            }
        }
        let mut sum = 0f64;
        for (j, x) in row.iter_mut().enumerate() {
            if j < lo || j >= hi || !mask.visible(qi, j) {
                *x = 0.0;
            } else {
                *x = (*x * scale - m).exp();
                sum += *x as f64;
            }
        }
        let inv = (1.0 / sum) as f32;
        row[lo..hi].iter_mut().for_each(|x| *x *= inv);
    }
    s
}

/// `attention_backward` in f32 with GEMMs, one head per task (the training backward of the CPU
/// learner; `attention_backward` stays the plain reference it is tested against):
/// dP = dout_h v_g^T, dS = P * (dP - rowsum(P * dP)) * scale, dq_h = dS k_g, dk_g += dS^T q_h,
/// dv_g += P^T dout_h.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_gemm(
    q: &[f32], k: &[f32], v: &[f32], dout: &[f32], tq: usize, tk: usize, n_heads: usize, n_kv: usize, d: usize, q_start: usize, mask: AttnMask,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qw, kw, group) = (n_heads * d, n_kv * d, n_heads / n_kv);
    assert_eq!(dout.len(), tq * qw, "attention_backward: dout is not [Tq={tq}, H*D={qw}]");
    assert!(q.len() == tq * qw && k.len() == tk * kw && v.len() == tk * kw, "attention_backward: q, k, v are not [Tq, H*D], [Tk, Hkv*D]");
    let scale = 1.0 / (d as f32).sqrt();
    let heads: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..n_heads)
        .into_par_iter()
        .map(|h| {
            let g = h / group;
            let p = head_probs(q, k, h, g, tq, tk, d, q_start, mask);
            let mut ds = vec![0f32; tq * tk];
            gemm_strided(tq, tk, d, &mut ds, tk, &dout[h * d..], qw, 1, &v[g * d..], 1, kw);
            for (prow, drow) in p.chunks(tk).zip(ds.chunks_mut(tk)) {
                let delta = prow.iter().zip(drow.iter()).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
                prow.iter().zip(drow.iter_mut()).for_each(|(&pj, x)| *x = pj * (*x - delta) * scale);
            }
            let (mut dq, mut dk, mut dv) = (vec![0f32; tq * d], vec![0f32; tk * d], vec![0f32; tk * d]);
            gemm_strided(tq, d, tk, &mut dq, d, &ds, tk, 1, &k[g * d..], kw, 1);
            gemm_strided(tk, d, tq, &mut dk, d, &ds, 1, tk, &q[h * d..], qw, 1);
            gemm_strided(tk, d, tq, &mut dv, d, &p, 1, tk, &dout[h * d..], qw, 1);
            (dq, dk, dv)
        })
        .collect();
    let (mut dq, mut dk, mut dv) = (vec![0f32; tq * qw], vec![0f32; tk * kw], vec![0f32; tk * kw]);
    for (h, (hq, hk, hv)) in heads.iter().enumerate() {
        let g = h / group;
        for i in 0..tq {
            dq[i * qw + h * d..i * qw + (h + 1) * d].copy_from_slice(&hq[i * d..(i + 1) * d]);
        }
        for j in 0..tk {
            let (o, r) = (j * kw + g * d, j * d);
            dk[o..o + d].iter_mut().zip(&hk[r..r + d]).for_each(|(a, b)| *a += b);
            dv[o..o + d].iter_mut().zip(&hv[r..r + d]).for_each(|(a, b)| *a += b);
        }
    }
    (dq, dk, dv)
}

/// One query row of a batched attention call over a KV cache laid out as S slots of `cap` rows:
/// the row reads keys [kv_start, kv_end) of slot `slot`. This layout serves every inference case
/// with one launch: prefill and decode of a batch (each sequence in its own slot, causal: the
/// row at position p sees [0, p + 1), or [p + 1 - W, p + 1) with a sliding window of W) and the
/// bidirectional vision tower (each image a slot, every row sees [0, T)). `#[repr(C)]` so the
/// rows go to the device as a u32[N, 3] array. An empty range gives a zero output row.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AttnRow {
    pub slot: u32,
    pub kv_start: u32,
    pub kv_end: u32,
}

impl AttnRow {
    /// The row of the query at absolute position `pos` in slot `slot` under `mask`, the slot
    /// holding `len` keys (positions 0..len). `SharedPrefix` is not a key range: it is a training
    /// mask, and asking for it here panics.
    pub fn for_mask(mask: AttnMask, slot: usize, pos: usize, len: usize) -> AttnRow {
        assert!(!matches!(mask, AttnMask::SharedPrefix { .. }), "AttnRow: the shared-prefix mask is not a key range");
        let (lo, hi) = mask.range(pos, len);
        AttnRow { slot: slot as u32, kv_start: lo as u32, kv_end: hi as u32 }
    }
}

/// Attention of N query rows over a KV cache, each row with its own slot and key range (see
/// [`AttnRow`]). q[N, H*D]; k, v[S, cap, Hkv*D]; -> out[N, H*D]. Scores scaled by `scale`
/// (1/sqrt(D) for the decoder and CLIP); softmax in f32 with the max subtracted, the sum in f64,
/// as [`attention`]. Query head h reads kv head h / (H/Hkv).
#[allow(clippy::too_many_arguments)]
pub fn attention_rows(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rows: &[AttnRow],
    n_heads: usize,
    n_kv: usize,
    d: usize,
    cap: usize,
    scale: f32,
) -> Vec<f32> {
    let (qw, kw) = (n_heads * d, n_kv * d);
    assert!(n_kv > 0 && n_heads.is_multiple_of(n_kv), "attention_rows: H={n_heads} is not a multiple of Hkv={n_kv}");
    assert_eq!(q.len(), rows.len() * qw, "attention_rows: q is not [N={}, H*D={qw}]", rows.len());
    assert!(cap > 0 && k.len().is_multiple_of(cap * kw) && k.len() == v.len(), "attention_rows: k/v are not [S, cap={cap}, Hkv*D={kw}]");
    let slots = k.len() / (cap * kw);
    for (i, r) in rows.iter().enumerate() {
        assert!(
            (r.slot as usize) < slots && r.kv_start <= r.kv_end && r.kv_end as usize <= cap,
            "attention_rows: row {i} {r:?} is outside the cache [S={slots}, cap={cap}]"
        );
    }
    let group = n_heads / n_kv;
    let mut out = vec![0f32; rows.len() * qw];
    out.par_chunks_mut(qw).zip(q.par_chunks(qw)).zip(rows.par_iter()).for_each(|((o, qr), r)| {
        let base = r.slot as usize * cap;
        let (lo, hi) = (r.kv_start as usize, r.kv_end as usize);
        if lo == hi {
            return;
        }
        let mut s = vec![0f32; hi - lo];
        for h in 0..n_heads {
            let g = h / group;
            let qh = &qr[h * d..(h + 1) * d];
            let mut m = f32::NEG_INFINITY;
            for (j, sj) in s.iter_mut().enumerate() {
                let kr = &k[(base + lo + j) * kw + g * d..][..d];
                *sj = qh.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale;
                m = m.max(*sj);
            }
            let mut sum = 0f64;
            for sj in s.iter_mut() {
                *sj = (*sj - m).exp();
                sum += *sj as f64;
            }
            let inv = (1.0 / sum) as f32;
            let oh = &mut o[h * d..(h + 1) * d];
            for (j, &p) in s.iter().enumerate() {
                let vr = &v[(base + lo + j) * kw + g * d..][..d];
                let p = p * inv;
                oh.iter_mut().zip(vr).for_each(|(a, b)| *a += p * b);
            }
        }
    });
    out
}

/// The mask of self-attention over packed sequences ([`attention_packed`],
/// `Backend::attention_packed`): applied per sequence, on sequence-local positions (the first row
/// of every sequence is position 0). Inference's two cases: the decoder's fresh prefill (causal,
/// Mistral's sliding window) and the vision tower (bidirectional tiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedMask {
    Bidirectional,
    /// Key j is visible from query i when j <= i (and i - j < W with a window of W >= 1 keys).
    Causal { window: Option<usize> },
}

impl PackedMask {
    /// The same mask as an [`AttnMask`] over one sequence.
    pub fn attn_mask(self) -> AttnMask {
        match self {
            PackedMask::Bidirectional => AttnMask::Bidirectional,
            PackedMask::Causal { window } => AttnMask::Causal { window },
        }
    }
}

/// The [`AttnRow`]s that compute [`attention_packed`] with [`attention_rows`], the packed k, v
/// [Ttot, Hkv*D] taken as one slot of `cap` = Ttot rows: the row at packed index r of a sequence
/// starting at s0 with n rows reads keys [s0, s0 + n) (bidirectional) or [max(s0, r + 1 - W), r + 1)
/// (causal, window W). The CUDA backend's fallback for head dims the tensor-core kernel lacks.
pub fn packed_rows(lens: &[usize], mask: PackedMask) -> Vec<AttnRow> {
    let mut rows = Vec::with_capacity(lens.iter().sum());
    let mut s0 = 0usize;
    for &n in lens {
        for i in 0..n {
            let (lo, hi) = mask.attn_mask().range(i, n);
            rows.push(AttnRow { slot: 0, kv_start: (s0 + lo) as u32, kv_end: (s0 + hi) as u32 });
        }
        s0 += n;
    }
    rows
}

/// The row offsets of sequences of `lens` packed row after row (FlashAttention's cu_seqlens):
/// B + 1 entries, 0 first and the total row count last.
pub fn cu_seqlens(lens: &[usize]) -> Vec<u32> {
    std::iter::once(0).chain(lens.iter().scan(0, |s, &l| {
        *s += l;
        Some(*s as u32)
    }))
    .collect()
}

/// Self-attention of sequences packed row after row, each over itself only: q[Ttot, H*D],
/// k, v[Ttot, Hkv*D], sequence b the `lens[b]` rows after those of sequences 0..b; -> [Ttot, H*D].
/// [`attention`] per sequence (q_start 0) under `mask`.
#[allow(clippy::too_many_arguments)]
pub fn attention_packed(q: &[f32], k: &[f32], v: &[f32], lens: &[usize], n_heads: usize, n_kv: usize, d: usize, mask: PackedMask) -> Vec<f32> {
    let (qw, kw) = (n_heads * d, n_kv * d);
    let total: usize = lens.iter().sum();
    assert_eq!(q.len(), total * qw, "attention_packed: q is not [Ttot={total}, H*D={qw}]");
    let mut out = Vec::with_capacity(total * qw);
    let mut row = 0;
    for &n in lens.iter().filter(|&&n| n > 0) {
        let (qs, ks) = (row * qw..(row + n) * qw, row * kw..(row + n) * kw);
        out.extend(attention(&q[qs], &k[ks.clone()], &v[ks], n, n, n_heads, n_kv, d, 0, mask.attn_mask()));
        row += n;
    }
    out
}

/// Gradients of [`attention_packed`] given dout[Ttot, H*D]: (dq, dk, dv), each sequence by
/// [`attention_backward`] (the sequences in parallel).
#[allow(clippy::too_many_arguments)]
pub fn attention_packed_backward(
    q: &[f32], k: &[f32], v: &[f32], dout: &[f32], lens: &[usize], n_heads: usize, n_kv: usize, d: usize, mask: PackedMask,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qw, kw) = (n_heads * d, n_kv * d);
    let total: usize = lens.iter().sum();
    assert!(q.len() == total * qw && dout.len() == total * qw, "attention_packed_backward: q or dout is not [Ttot={total}, H*D={qw}]");
    let starts: Vec<usize> = lens.iter().scan(0, |s, &n| {
        let r = *s;
        *s += n;
        Some(r)
    }).collect();
    let parts: Vec<_> = starts
        .par_iter()
        .zip(lens.par_iter())
        .map(|(&r, &n)| {
            let (qs, ks) = (r * qw..(r + n) * qw, r * kw..(r + n) * kw);
            attention_backward(&q[qs.clone()], &k[ks.clone()], &v[ks], &dout[qs], n, n, n_heads, n_kv, d, 0, mask.attn_mask())
        })
        .collect();
    let (mut dq, mut dk, mut dv) = (Vec::with_capacity(q.len()), Vec::with_capacity(k.len()), Vec::with_capacity(v.len()));
    for (a, b, c) in parts {
        dq.extend(a);
        dk.extend(b);
        dv.extend(c);
    }
    (dq, dk, dv)
}

/// Plain-loop forward over any float type: the f64 reference of the tests and of the backward.
#[allow(clippy::too_many_arguments)]
pub fn attention_reference<F: Float>(
    q: &[F], k: &[F], v: &[F], tq: usize, tk: usize, n_heads: usize, n_kv: usize, d: usize, q_start: usize, mask: AttnMask,
) -> Vec<F> {
    let (qw, kw, group) = (n_heads * d, n_kv * d, n_heads / n_kv);
    let scale = F::one() / F::from(d).unwrap().sqrt();
    let mut out = vec![F::zero(); tq * qw];
    for h in 0..n_heads {
        let g = h / group;
        for i in 0..tq {
            let p = probs_row(q, k, i, h, g, tk, d, qw, kw, scale, q_start, mask);
            for (j, &pj) in p.iter().enumerate() {
                if pj != F::zero() {
                    for c in 0..d {
                        out[i * qw + h * d + c] = out[i * qw + h * d + c] + pj * v[j * kw + g * d + c];
                    }
                }
            }
        }
    }
    out
}

/// Softmax row P[i, :] of head h (zeros where masked).
#[allow(clippy::too_many_arguments)]
fn probs_row<F: Float>(
    q: &[F], k: &[F], i: usize, h: usize, g: usize, tk: usize, d: usize, qw: usize, kw: usize, scale: F, q_start: usize, mask: AttnMask,
) -> Vec<F> {
    let qi = q_start + i;
    let mut s: Vec<F> = (0..tk)
        .map(|j| {
            if mask.visible(qi, j) {
                (0..d).fold(F::zero(), |a, c| a + q[i * qw + h * d + c] * k[j * kw + g * d + c]) * scale
            } else {
                F::neg_infinity()
            }
        })
        .collect();
    let m = s.iter().copied().fold(F::neg_infinity(), F::max);
    let mut z = F::zero();
    for x in s.iter_mut() {
        *x = if *x == F::neg_infinity() { F::zero() } else { (*x - m).exp() };
        z = z + *x;
    }
    s.iter_mut().for_each(|x| *x = *x / z);
    s
}

/// Gradients of `attention` given dout[Tq, H*D]: (dq[Tq, H*D], dk[Tk, Hkv*D], dv[Tk, Hkv*D]).
/// dS = P * (dP - rowsum(P * dP)), dP = dout V^T, dq = scale dS K, dk = scale dS^T q, dv = P^T dout.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<F: Float>(
    q: &[F], k: &[F], v: &[F], dout: &[F], tq: usize, tk: usize, n_heads: usize, n_kv: usize, d: usize, q_start: usize, mask: AttnMask,
) -> (Vec<F>, Vec<F>, Vec<F>) {
    let (qw, kw, group) = (n_heads * d, n_kv * d, n_heads / n_kv);
    assert_eq!(dout.len(), tq * qw, "attention_backward: dout is not [Tq={tq}, H*D={qw}]");
    let scale = F::one() / F::from(d).unwrap().sqrt();
    let (mut dq, mut dk, mut dv) = (vec![F::zero(); tq * qw], vec![F::zero(); tk * kw], vec![F::zero(); tk * kw]);
    for h in 0..n_heads {
        let g = h / group;
        for i in 0..tq {
            let p = probs_row(q, k, i, h, g, tk, d, qw, kw, scale, q_start, mask);
            let dp: Vec<F> = (0..tk)
                .map(|j| (0..d).fold(F::zero(), |a, c| a + dout[i * qw + h * d + c] * v[j * kw + g * d + c]))
                .collect();
            let delta = p.iter().zip(&dp).fold(F::zero(), |a, (&pj, &dpj)| a + pj * dpj);
            for j in 0..tk {
                if p[j] == F::zero() {
                    continue;
                }
                let ds = p[j] * (dp[j] - delta) * scale;
                for c in 0..d {
                    dq[i * qw + h * d + c] = dq[i * qw + h * d + c] + ds * k[j * kw + g * d + c];
                    dk[j * kw + g * d + c] = dk[j * kw + g * d + c] + ds * q[i * qw + h * d + c];
                    dv[j * kw + g * d + c] = dv[j * kw + g * d + c] + p[j] * dout[i * qw + h * d + c];
                }
            }
        }
    }
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        crate::backend::cpu::test_vec(n, seed).into_iter().map(|v| v as f32).collect()
    }
    fn f64s(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&v| v as f64).collect()
    }

    const MASKS: [(usize, usize, usize, AttnMask); 6] = [
        (9, 9, 0, AttnMask::Bidirectional),
        (9, 9, 0, AttnMask::Causal { window: None }),
        (9, 9, 0, AttnMask::Causal { window: Some(3) }),
        (1, 12, 11, AttnMask::Causal { window: None }),
        (4, 12, 8, AttnMask::Causal { window: Some(5) }),
        (11, 11, 0, AttnMask::SharedPrefix { prefix: 4, chosen: 3 }),
    ];

    #[test]
    fn cu_seqlens_are_the_prefix_sums() {
        assert_eq!(cu_seqlens(&[3, 0, 2]), vec![0, 3, 3, 5]);
        assert_eq!(cu_seqlens(&[]), vec![0]);
    }

    #[test]
    fn matches_f64_reference_for_every_mask() {
        let (h, hkv, d) = (6, 2, 8);
        for &(tq, tk, q0, mask) in &MASKS {
            let q = rand_vec(tq * h * d, 1);
            let k = rand_vec(tk * hkv * d, 2);
            let v = rand_vec(tk * hkv * d, 3);
            let o = attention(&q, &k, &v, tq, tk, h, hkv, d, q0, mask);
            let r = attention_reference(&f64s(&q), &f64s(&k), &f64s(&v), tq, tk, h, hkv, d, q0, mask);
            for (a, b) in o.iter().zip(&r) {
                assert!((*a as f64 - b).abs() < 1e-5, "{mask:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn gemm_backward_matches_the_plain_backward_in_f64() {
        let (h, hkv, d) = (6, 2, 8);
        for &(tq, tk, q0, mask) in &MASKS {
            let q = rand_vec(tq * h * d, 11);
            let k = rand_vec(tk * hkv * d, 12);
            let v = rand_vec(tk * hkv * d, 13);
            let dout = rand_vec(tq * h * d, 14);
            let fast = attention_backward_gemm(&q, &k, &v, &dout, tq, tk, h, hkv, d, q0, mask);
            let r = attention_backward(&f64s(&q), &f64s(&k), &f64s(&v), &f64s(&dout), tq, tk, h, hkv, d, q0, mask);
            for (what, a, b) in [("dq", &fast.0, &r.0), ("dk", &fast.1, &r.1), ("dv", &fast.2, &r.2)] {
                assert_eq!(a.len(), b.len());
                for (x, y) in a.iter().zip(b.iter()) {
                    assert!((*x as f64 - y).abs() < 2e-5, "{mask:?} {what}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn rows_layout_matches_attention() {
        // Two sequences in slots 1 and 0 of a 3-slot cache of capacity 14: prefill-like and
        // decode-like queries under each key-range mask.
        let (h, hkv, d, cap) = (6, 2, 8, 14);
        let kw = hkv * d;
        for &(tq, tk, q0, mask) in MASKS.iter().filter(|m| !matches!(m.3, AttnMask::SharedPrefix { .. })) {
            let q = rand_vec(tq * h * d, 4);
            let k = rand_vec(tk * kw, 5);
            let v = rand_vec(tk * kw, 6);
            let want = attention(&q, &k, &v, tq, tk, h, hkv, d, q0, mask);
            let slot = 1;
            let mut kc = rand_vec(3 * cap * kw, 7);
            let mut vc = rand_vec(3 * cap * kw, 8);
            kc[slot * cap * kw..][..tk * kw].copy_from_slice(&k);
            vc[slot * cap * kw..][..tk * kw].copy_from_slice(&v);
            let rows: Vec<AttnRow> = (0..tq).map(|i| AttnRow::for_mask(mask, slot, q0 + i, tk)).collect();
            let got = attention_rows(&q, &kc, &vc, &rows, h, hkv, d, cap, 1.0 / (d as f32).sqrt());
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{mask:?}: {a} vs {b}");
            }
        }
        // An empty key range gives zeros.
        let rows = [AttnRow { slot: 0, kv_start: 3, kv_end: 3 }];
        let got = attention_rows(&rand_vec(h * d, 9), &rand_vec(cap * kw, 1), &rand_vec(cap * kw, 2), &rows, h, hkv, d, cap, 0.5);
        assert!(got.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn packed_matches_per_sequence_and_rows_layout() {
        // Three sequences (one empty) packed: attention_packed equals attention on each sequence
        // alone, and attention_rows over packed_rows (the CUDA fallback's rows, the packed k, v as
        // one slot) equals both.
        let (h, hkv, d) = (6, 2, 8);
        let (qw, kw) = (h * d, hkv * d);
        let lens = [7usize, 0, 12, 1];
        let total: usize = lens.iter().sum();
        for mask in [PackedMask::Bidirectional, PackedMask::Causal { window: None }, PackedMask::Causal { window: Some(4) }] {
            let q = rand_vec(total * qw, 31);
            let k = rand_vec(total * kw, 32);
            let v = rand_vec(total * kw, 33);
            let got = attention_packed(&q, &k, &v, &lens, h, hkv, d, mask);
            let mut row = 0;
            for &n in lens.iter().filter(|&&n| n > 0) {
                let (qs, ks) = (row * qw..(row + n) * qw, row * kw..(row + n) * kw);
                let want = attention(&q[qs.clone()], &k[ks.clone()], &v[ks], n, n, h, hkv, d, 0, mask.attn_mask());
                assert_eq!(&got[qs], &want[..], "{mask:?}: a sequence of {n} rows");
                row += n;
            }
            let rows = packed_rows(&lens, mask);
            assert_eq!(rows.len(), total);
            let via_rows = attention_rows(&q, &k, &v, &rows, h, hkv, d, total, 1.0 / (d as f32).sqrt());
            for (a, b) in via_rows.iter().zip(&got) {
                assert!((a - b).abs() < 1e-5, "{mask:?}: rows {a} vs packed {b}");
            }
        }
        // The rows themselves: the window clips at the sequence start, never reaching the previous one.
        let rows = packed_rows(&[2, 3], PackedMask::Causal { window: Some(2) });
        let ranges: Vec<(u32, u32)> = rows.iter().map(|r| (r.kv_start, r.kv_end)).collect();
        assert_eq!(ranges, [(0, 1), (0, 2), (2, 3), (2, 4), (3, 5)]);
        let rows = packed_rows(&[2, 3], PackedMask::Bidirectional);
        let ranges: Vec<(u32, u32)> = rows.iter().map(|r| (r.kv_start, r.kv_end)).collect();
        assert_eq!(ranges, [(0, 2), (0, 2), (2, 5), (2, 5), (2, 5)]);
    }

    #[test]
    fn window_range() {
        let m = AttnMask::Causal { window: Some(4) };
        assert_eq!(m.range(10, 20), (7, 11));
        assert_eq!(m.range(2, 20), (0, 3));
        let sp = AttnMask::SharedPrefix { prefix: 2, chosen: 2 };
        // rows 0-1 prefix, 2-3 chosen, 4-5 rejected
        assert!(sp.visible(3, 2) && sp.visible(3, 1) && !sp.visible(4, 2) && !sp.visible(5, 3));
        assert!(sp.visible(5, 4) && sp.visible(5, 0) && !sp.visible(1, 2));
    }

    #[test]
    fn backward_matches_finite_differences() {
        // L = sum(out * g); dL/dx by central differences in f64, for every input element.
        let (h, hkv, d) = (4, 2, 3);
        for &(tq, tk, q0, mask) in &MASKS {
            let q = f64s(&rand_vec(tq * h * d, 11));
            let k = f64s(&rand_vec(tk * hkv * d, 12));
            let v = f64s(&rand_vec(tk * hkv * d, 13));
            let g = f64s(&rand_vec(tq * h * d, 14));
            let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
                attention_reference(q, k, v, tq, tk, h, hkv, d, q0, mask).iter().zip(&g).map(|(a, b)| a * b).sum()
            };
            let (dq, dk, dv) = attention_backward(&q, &k, &v, &g, tq, tk, h, hkv, d, q0, mask);
            let eps = 1e-6;
            for (which, grad) in [(0, &dq), (1, &dk), (2, &dv)] {
                let base = [&q, &k, &v][which];
                for idx in 0..base.len() {
                    let mut plus = [q.clone(), k.clone(), v.clone()];
                    let mut minus = [q.clone(), k.clone(), v.clone()];
                    plus[which][idx] += eps;
                    minus[which][idx] -= eps;
                    let fd = (loss(&plus[0], &plus[1], &plus[2]) - loss(&minus[0], &minus[1], &minus[2])) / (2.0 * eps);
                    assert!((fd - grad[idx]).abs() < 1e-7 * (1.0 + fd.abs()), "{mask:?} input {which}[{idx}]: fd {fd} vs {}", grad[idx]);
                }
            }
        }
    }

    #[test]
    fn shared_prefix_equals_two_separate_sequences() {
        // [prefix | chosen | rejected] packed with the shared-prefix mask gives, row for row, the
        // outputs of (prefix + chosen) and (prefix + rejected) run causally on their own, and the
        // prefix's dk/dv are the sums of the two separate runs' (what DPO's encode-once relies on).
        let (h, hkv, d) = (4, 2, 5);
        let (p, c, r) = (5usize, 3usize, 4usize);
        let t = p + c + r;
        let (qw, kw) = (h * d, hkv * d);
        let q = f64s(&rand_vec(t * qw, 21));
        let k = f64s(&rand_vec(t * kw, 22));
        let v = f64s(&rand_vec(t * kw, 23));
        let g = f64s(&rand_vec(t * qw, 24));
        let mask = AttnMask::SharedPrefix { prefix: p, chosen: c };
        let packed = attention_reference(&q, &k, &v, t, t, h, hkv, d, 0, mask);
        let (dq, dk, dv) = attention_backward(&q, &k, &v, &g, t, t, h, hkv, d, 0, mask);
        let causal = AttnMask::Causal { window: None };
        let pick = |x: &[f64], w: usize, rows: &[std::ops::Range<usize>]| -> Vec<f64> {
            rows.iter().flat_map(|rg| x[rg.start * w..rg.end * w].to_vec()).collect()
        };
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        let mut dk_prefix = vec![0f64; p * kw];
        let mut dv_prefix = vec![0f64; p * kw];
        for (lo, n) in [(p, c), (p + c, r)] {
            let rows = [0..p, lo..lo + n];
            let (qs, ks, vs, gs) = (pick(&q, qw, &rows), pick(&k, kw, &rows), pick(&v, kw, &rows), pick(&g, qw, &rows));
            let o = attention_reference(&qs, &ks, &vs, p + n, p + n, h, hkv, d, 0, causal);
            assert!(close(&o[p * qw..], &packed[lo * qw..(lo + n) * qw]), "outputs of the response rows");
            assert!(close(&o[..p * qw], &packed[..p * qw]), "outputs of the prefix rows");
            let (sdq, sdk, sdv) = attention_backward(&qs, &ks, &vs, &gs, p + n, p + n, h, hkv, d, 0, causal);
            assert!(close(&sdq[p * qw..], &dq[lo * qw..(lo + n) * qw]), "dq of the response rows");
            assert!(close(&sdk[p * kw..], &dk[lo * kw..(lo + n) * kw]) && close(&sdv[p * kw..], &dv[lo * kw..(lo + n) * kw]));
            for i in 0..p * kw {
                dk_prefix[i] += sdk[i];
                dv_prefix[i] += sdv[i];
            }
        }
        // The prefix rows' own queries see only the prefix; the separate runs each count their
        // dout once, the packed run once, so compare dk/dv of the prefix keys after removing the
        // prefix-query contribution counted twice in the sum.
        let prefix_rows = 0..p;
        let rows = std::slice::from_ref(&prefix_rows);
        let (qs, ks, vs, gs) = (pick(&q, qw, rows), pick(&k, kw, rows), pick(&v, kw, rows), pick(&g, qw, rows));
        let (_, pdk, pdv) = attention_backward(&qs, &ks, &vs, &gs, p, p, h, hkv, d, 0, causal);
        for i in 0..p * kw {
            assert!((dk_prefix[i] - pdk[i] - dk[i]).abs() < 1e-12 && (dv_prefix[i] - pdv[i] - dv[i]).abs() < 1e-12);
        }
    }
}
