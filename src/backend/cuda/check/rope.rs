//! The RoPE checks (kernels/rope.cu): `rope`, `rope_qk` and its transpose `rope_backward_qk`.

use super::io::{download_bf16, upload, widen, Inputs};
use super::metric::{Case, Expected, GUARD, POISON_BF16};
use crate::backend::cpu;
use crate::rng::Rng;

#[derive(Clone, Copy)]
pub(super) enum Positions {
    /// p0, p0 + 1, ... (a prefill chunk that does not start at 0)
    From(u32),
    /// uniform below the bound (a decode batch of sequences at different lengths)
    Random(u32),
}

#[allow(clippy::too_many_arguments)]
pub(super) fn rope_case(t: usize, h: usize, hkv: usize, d: usize, theta: f64, positions: Positions, with_k: bool, seed: u64) -> Case {
    rope_case_dir(t, h, hkv, d, theta, positions, with_k, false, seed)
}

/// `rope_qk`, or with `backward` its transpose `rope_backward_qk` (reference: the rotation by the
/// negated f32 angle in f64; CPU: `cpu::rope_backward`).
#[allow(clippy::too_many_arguments)]
pub(super) fn rope_case_dir(t: usize, h: usize, hkv: usize, d: usize, theta: f64, positions: Positions, with_k: bool, backward: bool, seed: u64) -> Case {
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
    let q_ref = cpu::rope_f64(&qc, h, &pos, &freq);
    cpu_op(&mut qc, h);
    expect.push(Expected::Close { name: "q", reference: q_ref, cpu: qc });
    if with_k {
        let mut kc = widen(&k);
        let k_ref = cpu::rope_f64(&kc, hkv, &pos, &freq);
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
