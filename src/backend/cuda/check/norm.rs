//! The norm checks: `rmsnorm`, `rmsnorm_residual` (kernels/rmsnorm.cu), `layernorm`
//! (kernels/layernorm.cu), `rmsnorm_backward` (kernels/rmsnorm.cu: dx, and dw += by `rmsnorm_dw`)
//! and `layernorm_backward` (kernels/layernorm.cu: dx, and dw, db += by `layernorm_dwdb`).

use half::bf16;

use super::io::{download_bf16, download_f32, poisoned, upload, widen, Inputs};
use super::metric::{bf16_bits, Case, Expected, POISON_BF16, POISON_U32};
use crate::backend::cpu;
use crate::rng::Rng;

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

pub(super) fn rmsnorm_case(t: usize, c: usize, eps: f64, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = norm_input(&mut rng, t, c, 0.0);
    let w = rng.bf16s(c, 0.25, 2.0);
    let eps32 = eps as f32;
    let (xf, wf) = (widen(&x), widen(&w));
    let expect = vec![Expected::Close { name: "y", reference: cpu::rmsnorm_f64(&xf, &wf, eps32 as f64), cpu: cpu::rmsnorm(&xf, &wf, eps32 as f64) }];
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

pub(super) fn rmsnorm_residual_case(t: usize, c: usize, eps: f64, off: usize, seed: u64) -> Case {
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
        Expected::Close { name: "y", reference: cpu::rmsnorm_f64(&r, &wf, eps32 as f64), cpu: cpu::rmsnorm(&r, &wf, eps32 as f64) },
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

pub(super) fn layernorm_case(t: usize, c: usize, eps: f64, off: usize, seed: u64) -> Case {
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

pub(super) fn rmsnorm_backward_case(t: usize, c: usize, eps: f64, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = norm_input(&mut rng, t, c, 0.0);
    let w = rng.bf16s(c, 0.5, 1.5);
    let dy = rng.bf16s(t * c, 1.0 / 64.0, 1.0);
    // dw accumulates (+=) onto an earlier gradient (full-parameter training).
    let dw0: Vec<f32> = widen(&rng.bf16s(c, 1.0 / 64.0, 1.0));
    let (xf, wf, dyf) = (widen(&x), widen(&w), widen(&dy));
    let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (reference, ref_dw) = cpu::rmsnorm_backward(&f64s(&xf), &f64s(&wf), &f64s(&dyf), eps);
    let (cpu_dx, cpu_dw) = cpu::rmsnorm_backward(&xf, &wf, &dyf, eps);
    let ref_dw: Vec<f64> = ref_dw.iter().zip(&dw0).map(|(a, &b)| a + b as f64).collect();
    let cpu_dw: Vec<f32> = cpu_dw.iter().zip(&dw0).map(|(a, b)| a + b).collect();
    Case {
        expect: vec![Expected::Close { name: "dx", reference, cpu: cpu_dx }, Expected::CloseF32 { name: "dw", reference: ref_dw, cpu: cpu_dw }],
        device: Box::new(move |dev| {
            let (dxx, dw, ddy) = (upload(dev, &x, off, POISON_BF16)?, upload(dev, &w, off, POISON_BF16)?, upload(dev, &dy, off, POISON_BF16)?);
            let mut ddx = poisoned(dev, t * c, off, POISON_BF16)?;
            let mut gw = upload(dev, &dw0, off, f32::from_bits(POISON_U32))?;
            dev.rmsnorm_backward(
                &dxx.slice(off..off + t * c),
                &dw.slice(off..off + c),
                &ddy.slice(off..off + t * c),
                eps as f32,
                &mut ddx.slice_mut(off..off + t * c),
                Some(&mut gw.slice_mut(off..off + c)),
            )?;
            Ok(vec![download_bf16(dev, &ddx, off, t * c)?, download_f32(dev, &gw, off, c)?])
        }),
    }
}

pub(super) fn layernorm_backward_case(t: usize, c: usize, eps: f64, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    // Shifted rows: a mean well away from 0, as the tower's residual stream has.
    let x = norm_input(&mut rng, t, c, 0.75);
    let w = rng.bf16s(c, 0.5, 1.5);
    let dy = rng.bf16s(t * c, 1.0 / 64.0, 1.0);
    // dw and db accumulate (+=) onto earlier gradients (the tower trained in full).
    let dw0: Vec<f32> = widen(&rng.bf16s(c, 1.0 / 64.0, 1.0));
    let db0: Vec<f32> = widen(&rng.bf16s(c, 1.0 / 64.0, 1.0));
    let (xf, wf, dyf) = (widen(&x), widen(&w), widen(&dy));
    let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let eps32 = eps as f32;
    let (reference, ref_dw, ref_db) = cpu::layernorm_backward(&f64s(&xf), &f64s(&wf), &f64s(&dyf), eps32 as f64);
    let (cpu_dx, _, cpu_db) = cpu::layernorm_backward(&xf, &wf, &dyf, eps32 as f64);
    // The dw stand-in in the kernel's f32 arithmetic (each row's mean and inv in f32, the rows
    // summed in order): cpu::layernorm_backward keeps f64 row statistics, far tighter than f32.
    let stats: Vec<(f32, f32)> = xf
        .chunks(c)
        .map(|r| {
            let mean = r.iter().sum::<f32>() / c as f32;
            let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
            (mean, 1.0 / (var + eps32).sqrt())
        })
        .collect();
    let cpu_dw: Vec<f32> = (0..c).map(|j| (0..t).fold(0f32, |acc, r| acc + dyf[r * c + j] * (xf[r * c + j] - stats[r].0) * stats[r].1)).collect();
    let plus64 = |g: Vec<f64>, g0: &[f32]| -> Vec<f64> { g.iter().zip(g0).map(|(a, &b)| a + b as f64).collect() };
    let plus32 = |g: Vec<f32>, g0: &[f32]| -> Vec<f32> { g.iter().zip(g0).map(|(a, b)| a + b).collect() };
    Case {
        expect: vec![
            Expected::Close { name: "dx", reference, cpu: cpu_dx },
            Expected::CloseF32 { name: "dw", reference: plus64(ref_dw, &dw0), cpu: plus32(cpu_dw, &dw0) },
            Expected::CloseF32 { name: "db", reference: plus64(ref_db, &db0), cpu: plus32(cpu_db, &db0) },
        ],
        device: Box::new(move |dev| {
            let (dxx, dw, ddy) = (upload(dev, &x, off, POISON_BF16)?, upload(dev, &w, off, POISON_BF16)?, upload(dev, &dy, off, POISON_BF16)?);
            let mut ddx = poisoned(dev, t * c, off, POISON_BF16)?;
            let mut gw = upload(dev, &dw0, off, f32::from_bits(POISON_U32))?;
            let mut gb = upload(dev, &db0, off, f32::from_bits(POISON_U32))?;
            dev.layernorm_backward(
                &dxx.slice(off..off + t * c),
                &dw.slice(off..off + c),
                &ddy.slice(off..off + t * c),
                eps32,
                &mut ddx.slice_mut(off..off + t * c),
                Some((&mut gw.slice_mut(off..off + c), &mut gb.slice_mut(off..off + c))),
            )?;
            Ok(vec![download_bf16(dev, &ddx, off, t * c)?, download_f32(dev, &gw, off, c)?, download_f32(dev, &gb, off, c)?])
        }),
    }
}
