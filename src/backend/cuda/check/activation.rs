//! The activation checks (kernels/activation.cu): `silu` / `gelu` / `quick_gelu`, `swiglu`,
//! `swiglu_fused`, and the backward kernels `swiglu_backward`, `activation_backward`.

use super::io::{download_bf16, poisoned, upload, widen, Inputs};
use super::metric::{Case, Expected, POISON_BF16};
use crate::backend::cpu;
use crate::rng::Rng;

#[derive(Clone, Copy)]
pub(super) enum Act {
    Silu,
    Gelu,
    QuickGelu,
}

impl Act {
    pub(super) fn name(self) -> &'static str {
        match self {
            Act::Silu => "silu",
            Act::Gelu => "gelu",
            Act::QuickGelu => "quick_gelu",
        }
    }
    fn f64(self, x: f64) -> f64 {
        match self {
            Act::Silu => x / (1.0 + (-x).exp()),
            Act::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Act::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        }
    }
}

fn silu_f64(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

pub(super) fn activation_case(act: Act, n: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    // |x| <= 4: far enough from the identity for large x that an element left unwritten (the
    // in-place input) is visibly wrong for silu and quick_gelu.
    let x = rng.bf16s(n, 1.0 / 64.0, 4.0);
    let mut cpu_out = widen(&x);
    let reference = cpu_out.iter().map(|&v| act.f64(v as f64)).collect();
    cpu::activation::by_name(act.name(), &mut cpu_out);
    let expect = vec![Expected::Close { name: "x", reference, cpu: cpu_out }];
    Case {
        expect,
        device: Box::new(move |dev| {
            let mut dx = upload(dev, &x, off, POISON_BF16)?;
            dev.activation(act.name(), &mut dx.slice_mut(off..off + n))?;
            Ok(vec![download_bf16(dev, &dx, off, n)?])
        }),
    }
}

pub(super) fn swiglu_case(n: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let gate = rng.bf16s(n, 1.0 / 64.0, 4.0);
    let up = rng.bf16s(n, 1.0 / 64.0, 4.0);
    let (mut g, u) = (widen(&gate), widen(&up));
    let reference = g.iter().zip(&u).map(|(&a, &b)| silu_f64(a as f64) * b as f64).collect();
    cpu::swiglu(&mut g, &u);
    let expect = vec![Expected::Close { name: "out", reference, cpu: g }];
    Case {
        expect,
        device: Box::new(move |dev| {
            let dg = upload(dev, &gate, off, POISON_BF16)?;
            let du = upload(dev, &up, off, POISON_BF16)?;
            let mut dout = poisoned(dev, n, off, POISON_BF16)?;
            dev.swiglu(&dg.slice(off..off + n), &du.slice(off..off + n), &mut dout.slice_mut(off..off + n))?;
            Ok(vec![download_bf16(dev, &dout, off, n)?])
        }),
    }
}

pub(super) fn swiglu_fused_case(t: usize, f: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let gu = rng.bf16s(t * 2 * f, 1.0 / 64.0, 4.0);
    let guf = widen(&gu);
    let mut reference = Vec::with_capacity(t * f);
    for row in guf.chunks(2 * f) {
        reference.extend((0..f).map(|j| silu_f64(row[j] as f64) * row[f + j] as f64));
    }
    let expect = vec![Expected::Close { name: "out", reference, cpu: cpu::swiglu_fused(&guf, f) }];
    Case {
        expect,
        device: Box::new(move |dev| {
            let dgu = upload(dev, &gu, off, POISON_BF16)?;
            let mut dout = poisoned(dev, t * f, off, POISON_BF16)?;
            dev.swiglu_fused(&dgu.slice(off..off + 2 * t * f), f, &mut dout.slice_mut(off..off + t * f))?;
            Ok(vec![download_bf16(dev, &dout, off, t * f)?])
        }),
    }
}

pub(super) fn swiglu_backward_case(n: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let gate = rng.bf16s(n, 1.0 / 64.0, 4.0);
    let up = rng.bf16s(n, 1.0 / 64.0, 4.0);
    let dout = rng.bf16s(n, 1.0 / 64.0, 1.0);
    let (g, u, d) = (widen(&gate), widen(&up), widen(&dout));
    let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (rg, ru) = cpu::swiglu_backward(&f64s(&g), &f64s(&u), &f64s(&d));
    let (cg, cu) = cpu::swiglu_backward(&g, &u, &d);
    Case {
        expect: vec![Expected::Close { name: "dgate", reference: rg, cpu: cg }, Expected::Close { name: "dup", reference: ru, cpu: cu }],
        device: Box::new(move |dev| {
            let (dg, du, dd) = (upload(dev, &gate, off, POISON_BF16)?, upload(dev, &up, off, POISON_BF16)?, upload(dev, &dout, off, POISON_BF16)?);
            let (mut og, mut ou) = (poisoned(dev, n, off, POISON_BF16)?, poisoned(dev, n, off, POISON_BF16)?);
            let r = off..off + n;
            dev.swiglu_backward(&dg.slice(r.clone()), &du.slice(r.clone()), &dd.slice(r.clone()), &mut og.slice_mut(r.clone()), &mut ou.slice_mut(r))?;
            Ok(vec![download_bf16(dev, &og, off, n)?, download_bf16(dev, &ou, off, n)?])
        }),
    }
}

/// `activation_backward`: dy <- dy * act'(x) in place.
pub(super) fn activation_backward_case(act: &'static str, n: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = rng.bf16s(n, 1.0 / 64.0, 6.0);
    let dy = rng.bf16s(n, 1.0 / 64.0, 1.0);
    let (xf, dyf) = (widen(&x), widen(&dy));
    // f64 reference: the CPU formula in f64 (backward_by_name evaluates act' in f64 already).
    let mut g = dyf.clone();
    cpu::activation::backward_by_name(act, &xf, &mut g);
    let reference: Vec<f64> = g.iter().map(|&v| v as f64).collect();
    Case {
        expect: vec![Expected::Close { name: "dx", reference, cpu: g }],
        device: Box::new(move |dev| {
            let dx = upload(dev, &x, off, POISON_BF16)?;
            let mut dd = upload(dev, &dy, off, POISON_BF16)?;
            dev.activation_backward(act, &dx.slice(off..off + n), &mut dd.slice_mut(off..off + n))?;
            Ok(vec![download_bf16(dev, &dd, off, n)?])
        }),
    }
}
