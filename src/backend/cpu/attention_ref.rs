//! The f64 references and the f32 precision models (CPU stand-ins) of the CUDA attention kernels,
//! for the parity checks (`backend::cuda::check`): `attention_rows_f64` (kernels/attention.cu,
//! inference and split-KV), `attention_train_fwd_host` and `attention_train_bwd_emulated`
//! (kernels/attention_train.cu and the Hopper forward, which round P and dS to bf16 before their
//! tensor-core products) over a packed [`VarlenBatch`].

use half::bf16;
use rayon::prelude::*;

use super::attention::{cu_seqlens, AttnMask, AttnRow};

/// A packed variable-length batch as the training attention takes it: the sequences of `lens`
/// row after row (offsets [`cu_seqlens`]), sequence b under `masks[b]`; H query heads over Hkv kv
/// heads of dim D.
#[derive(Clone, Copy, Debug)]
pub struct VarlenBatch<'a> {
    pub lens: &'a [usize],
    pub masks: &'a [AttnMask],
    pub h: usize,
    pub hkv: usize,
    pub d: usize,
}

/// [`super::attention::attention_rows`] evaluated in f64 on the same (f32-widened bf16) inputs, with the f32
/// scale the kernel gets: the reference of kernels/attention.cu (`attention`, `attention_split`).
#[allow(clippy::too_many_arguments)]
pub fn attention_rows_f64(q: &[f32], k: &[f32], v: &[f32], rows: &[AttnRow], h: usize, hkv: usize, d: usize, cap: usize, scale: f32) -> Vec<f64> {
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

/// The host side of the forward on the (global) rows `rows`: (f64 reference out [rows, H*D],
/// the kernel's precision model in f32 out [rows, H*D], f64 lse [H, rows], f32 lse [H, rows]).
/// The reference: scores as exact products summed in f64 with the f32 scale, softmax in f64.
/// The precision model (the CPU stand-in that mimics kernels/attention_train.cu's forward, as
/// flash-attention's bf16 reference): scores summed in f32, P = exp(s - max) in f32, rounded to
/// bf16 before P V (f32 sums), divided by the f32 sum of the unrounded P; lse = max + ln(sum) in
/// f32.
#[allow(clippy::type_complexity)]
pub fn attention_train_fwd_host(q: &[f32], k: &[f32], v: &[f32], batch: VarlenBatch, rows: &[usize], scale: f32) -> (Vec<f64>, Vec<f32>, Vec<f64>, Vec<f32>) {
    let VarlenBatch { lens, masks, h, hkv, d } = batch;
    let (qw, kw, group) = (h * d, hkv * d, h / hkv);
    let cu = cu_seqlens(lens);
    let per_row: Vec<(Vec<f64>, Vec<f32>, Vec<f64>, Vec<f32>)> = rows
        .par_iter()
        .map(|&i| {
            let b = (0..lens.len()).find(|&b| (cu[b] as usize..cu[b + 1] as usize).contains(&i)).expect("row in a sequence");
            let (s0, len) = (cu[b] as usize, lens[b]);
            let mask = masks[b];
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

/// kernels/attention_train.cu's backward precision model in f32 (the CPU stand-in that mimics its
/// roundings): P = exp(s scale - lse) from the given f32 lse, dP = dout V^T and
/// delta = rowsum(dout * out) (the bf16 out) in f32, dS = P (dP - delta); P and dS rounded to bf16
/// before dv += P dout, dk += dS q, dq += dS k (f32 sums); dq and dk times scale. Returns
/// (dq, dk, dv) in the packed layout.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn attention_train_bwd_emulated(q: &[f32], k: &[f32], v: &[f32], out: &[f32], dout: &[f32], lse: &[f32], batch: VarlenBatch, scale: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let VarlenBatch { lens, masks, h, hkv, d } = batch;
    let (qw, kw, group) = (h * d, hkv * d, h / hkv);
    let cu = cu_seqlens(lens);
    let t = *cu.last().unwrap() as usize;
    let r = |x: f32| bf16::from_f32(x).to_f32();
    let mut dq = vec![0f32; t * qw];
    let mut dk = vec![0f32; t * kw];
    let mut dv = vec![0f32; t * kw];
    for (b, &len) in lens.iter().enumerate() {
        let s0 = cu[b] as usize;
        let mask = masks[b];
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
