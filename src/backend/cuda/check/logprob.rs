//! The log-prob check (kernels/logprob.cu + cuBLASLt): the chunked forward (logp, lse) and
//! backward (dh), against `cpu::logprob_f64` / `cpu::logprob_backward_host` and `cpu::logprob`.

use super::io::{download_f32, pick_rows, poisoned, upload, widen, widen64, Inputs};
use super::metric::{Case, Expected, GUARD, POISON_BF16, POISON_U32};
use crate::backend::cpu;
use crate::backend::cuda;
use crate::rng::Rng;

/// One log-prob check: forward (logp, lse) and backward (dh) over h [T, C], w [V, C], `chunk`
/// vocabulary rows per GEMM; the host reference covers `rows` (all rows when empty).
#[derive(Clone)]
pub(super) struct LogprobShape {
    t: usize,
    c: usize,
    v: usize,
    chunk: usize,
    off: usize,
    rows: Vec<usize>,
    what: &'static str,
}

pub(super) fn logprob_shapes() -> Vec<LogprobShape> {
    let d = cuda::LOGPROB_CHUNK;
    // Emulated: the full vocabulary (4 chunks, the last ragged) over fewer rows and a narrower C.
    let realistic = super::io::sized(
        LogprobShape { t: 300, c: 4096, v: 32064, chunk: d, off: GUARD, rows: vec![0, 299], what: "7B lm_head, rows 0, 299 checked" },
        LogprobShape { t: 17, c: 256, v: 32064, chunk: d, off: GUARD, rows: vec![0, 16], what: "full vocabulary, rows 0, 16 checked" },
    );
    vec![
        realistic,
        LogprobShape { t: 5, c: 256, v: 32064, chunk: d, off: GUARD, rows: vec![], what: "V not a multiple of the chunk" },
        LogprobShape { t: 1, c: 64, v: 1000, chunk: d, off: GUARD, rows: vec![], what: "T=1, one chunk" },
        LogprobShape { t: 9, c: 33, v: 517, chunk: 64, off: 1, rows: vec![], what: "9 chunks, ragged, misaligned" },
        LogprobShape { t: 4, c: 40, v: 128, chunk: 64, off: GUARD, rows: vec![], what: "2 full chunks" },
    ]
}

impl LogprobShape {
    pub(super) fn shape(&self) -> String {
        format!("T={} C={} V={} chunk {} ({})", self.t, self.c, self.v, self.chunk, self.what)
    }
}

/// Outputs logp, lse (f32, against `cpu::logprob` in f32 and the f64 log-softmax) and dh (f32).
/// dh's CPU result is the f32 emulation of the kernel's arithmetic including the hi/lo bf16
/// split of the logit gradients that the dh GEMMs take (see docs/TOLERANCES.md); its reference the
/// exact f64 gradient. The device's backward takes the lse of its own forward.
pub(super) fn logprob_case(g: &LogprobShape, seed: u64) -> Case {
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
    let (lp_ref, lse_ref) = cpu::logprob_f64(&h64, &w, &ts, c);
    let dh_ref = cpu::logprob_backward_host(&h64, &w, &ts, &lse_ref, &gs, c, false);
    let (lp_cpu, lse_cpu) = {
        let wf = widen(&w);
        cpu::logprob(&widen(&hs), &wf, &ts, c)
    };
    let lse_cpu64: Vec<f64> = lse_cpu.iter().map(|&v| v as f64).collect();
    let dh_emul: Vec<f32> = cpu::logprob_backward_host(&h64, &w, &ts, &lse_cpu64, &gs, c, true).iter().map(|&v| v as f32).collect();
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
            dev.logprob_backward_chunked(&hv, &wv, &dt.as_view(), &lse.slice(off..off + t), &dg.as_view(), &mut dh.slice_mut(off..off + t * c), None, t, c, v, false, chunk)?;
            Ok(vec![
                pick_rows(download_f32(dev, &lp, off, t)?, &rows, 1),
                pick_rows(download_f32(dev, &lse, off, t)?, &rows, 1),
                pick_rows(download_f32(dev, &dh, off, t * c)?, &rows, c),
            ])
        }),
    }
}

/// `logprob_backward_dw`'s weight gradient (lm_head trained in full): dw [V, C] (f32, onto an
/// earlier gradient) += g^T h with g = dlogp (onehot(target) - softmax(h w^T)), over every row
/// and several vocabulary chunks. Reference in f64; the CPU result is the f32 emulation of the
/// kernel's hi/lo split (the dh row of docs/TOLERANCES.md).
pub(super) fn logprob_dw_case(t: usize, c: usize, v: usize, chunk: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let h = rng.bf16s(t * c, 1.0 / 64.0, 2.0);
    let wmax = 4.5 / (c as f64).sqrt();
    let w = rng.bf16s(v * c, wmax / 64.0, wmax);
    let targets: Vec<u32> = (0..t).map(|_| rng.below(v) as u32).collect();
    let dlogp: Vec<f32> = (0..t).map(|_| ((rng.uniform() * 2.0 - 1.0) * 1.5) as f32).collect();
    let dw0: Vec<f32> = widen(&rng.bf16s(v * c, 1.0 / 256.0, 1.0 / 16.0));
    let (h64, w64) = (widen64(&h), widen64(&w));
    let mut reference: Vec<f64> = dw0.iter().map(|&a| a as f64).collect();
    for r in 0..t {
        let z: Vec<f64> = (0..v).map(|j| (0..c).map(|i| h64[r * c + i] * w64[j * c + i]).sum()).collect();
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|&x| (x - m).exp()).sum::<f64>().ln();
        for j in 0..v {
            let g = dlogp[r] as f64 * ((j == targets[r] as usize) as u8 as f64 - (z[j] - lse).exp());
            (0..c).for_each(|i| reference[j * c + i] += g * h64[r * c + i]);
        }
    }
    // The stand-in: the f32 emulation of the kernel (as `logprob_backward_host`'s for dh): f32
    // logits and p with the CPU's f32 lse, g split into hi = bf16(g) and lo = bf16(g - hi), f32
    // sums of (hi + lo) h.
    let (hf, wf) = (widen(&h), widen(&w));
    let (_, lse_cpu) = cpu::logprob(&hf, &wf, &targets, c);
    let mut cpu_dw = dw0.clone();
    for r in 0..t {
        let hr = &hf[r * c..(r + 1) * c];
        for j in 0..v {
            let z = wf[j * c..(j + 1) * c].iter().zip(hr).fold(0f32, |s, (&a, &b)| s + a * b);
            let g = dlogp[r] * ((j == targets[r] as usize) as u8 as f32 - (z - lse_cpu[r]).exp());
            let hi = half::bf16::from_f32(g).to_f32();
            let coef = hi + half::bf16::from_f32(g - hi).to_f32();
            cpu_dw[j * c..(j + 1) * c].iter_mut().zip(hr).for_each(|(o, &x)| *o += coef * x);
        }
    }
    Case {
        expect: vec![Expected::CloseF32 { name: "dw", reference, cpu: cpu_dw }],
        device: Box::new(move |dev| {
            let (dh_in, dwt) = (upload(dev, &h, off, POISON_BF16)?, upload(dev, &w, off, POISON_BF16)?);
            let (dt, dg) = (dev.htod(&targets)?, dev.htod(&dlogp)?);
            let (mut lp, mut lse, mut dh) = (dev.zeros::<f32>(t)?, dev.zeros::<f32>(t)?, dev.zeros::<f32>(t * c)?);
            let mut dw = upload(dev, &dw0, off, f32::from_bits(POISON_U32))?;
            let (hv, wv) = (dh_in.slice(off..off + t * c), dwt.slice(off..off + v * c));
            dev.logprob_chunked(&hv, &wv, &dt.as_view(), &mut lp.as_view_mut(), &mut lse.as_view_mut(), t, c, v, chunk)?;
            let mut dwv = dw.slice_mut(off..off + v * c);
            dev.logprob_backward_chunked(&hv, &wv, &dt.as_view(), &lse.as_view(), &dg.as_view(), &mut dh.as_view_mut(), Some(&mut dwv), t, c, v, false, chunk)?;
            Ok(vec![download_f32(dev, &dw, off, v * c)?])
        }),
    }
}
