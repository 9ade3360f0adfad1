//! The AdamW check (kernels/adamw.cu): one fused step over many tensors, exact against
//! `optim::AdamWState` (the same f32 operations), and `grad_sumsq` against the host's f64 sum.

use crate::backend::cuda::DevBuf;
use super::io::upload;
use super::metric::{f32_bits, Case, Expected, Output, POISON_U32};
use crate::backend::cuda;
use crate::error::Result;
use crate::rng::Rng;

pub(super) fn adamw_case(n_tensors: usize, step: u64, off: usize, seed: u64) -> Case {
    use cuda::AdamWTensor;
    use crate::optim::{AdamWConfig, AdamWState};
    let mut rng = Rng::new(seed);
    // LoRA-like sizes (r x K and N x r at small r), one empty tensor, no decay on every 5th
    // (biases), a second learning rate on every 7th (the projector's).
    let tensors: Vec<AdamWTensor> = (0..n_tensors)
        .map(|i| AdamWTensor {
            len: if i == 1 { 0 } else { 1 + rng.below(3000) },
            lr: if i % 7 == 3 { 2e-5 } else { 1e-4 },
            weight_decay: if i % 5 == 4 { 0.0 } else { 0.01 },
        })
        .collect();
    let n: usize = tensors.iter().map(|t| t.len).sum();
    let f32s = |rng: &mut Rng, scale: f64| -> Vec<f32> { (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * scale) as f32).collect() };
    let p = f32s(&mut rng, 0.1);
    let g = f32s(&mut rng, 1e-2);
    let m = if step == 1 { vec![0f32; n] } else { f32s(&mut rng, 1e-3) };
    let v = if step == 1 { vec![0f32; n] } else { f32s(&mut rng, 1e-5).into_iter().map(f32::abs).collect() };
    let cfg = AdamWConfig::default();
    // Odd steps fold a clipping factor into the step (the CPU scales its f32 gradients first).
    let gscale: f32 = if step % 2 == 1 { 0.37 } else { 1.0 };
    let gs: Vec<f32> = g.iter().map(|&x| x * gscale).collect();
    let sumsq_ref: f64 = g.iter().map(|&x| x as f64 * x as f64).sum();
    let (mut pw, mut mw, mut vw) = (p.clone(), m.clone(), v.clone());
    let mut at = 0;
    for t in &tensors {
        let r = at..at + t.len;
        let mut st = AdamWState { step: step - 1, m: mw[r.clone()].to_vec(), v: vw[r.clone()].to_vec() };
        st.step(&AdamWConfig { weight_decay: t.weight_decay, ..cfg }, t.lr, &mut pw[r.clone()], &gs[r.clone()]);
        mw[r.clone()].copy_from_slice(&st.m);
        vw[r].copy_from_slice(&st.v);
        at += t.len;
    }
    let poison = f32::from_bits(POISON_U32);
    let expect = vec![
        Expected::U32 { name: "p", values: f32_bits(&pw) },
        Expected::U32 { name: "m", values: f32_bits(&mw) },
        Expected::U32 { name: "v", values: f32_bits(&vw) },
        Expected::U32 { name: "sumsq (|rel err| < 1e-12)", values: vec![1] },
    ];
    Case {
        expect,
        device: Box::new(move |dev| {
            let mut dp = upload(dev, &p, off, poison)?;
            let dg = upload(dev, &g, off, poison)?;
            let mut dm = upload(dev, &m, off, poison)?;
            let mut dv = upload(dev, &v, off, poison)?;
            let r = off..off + n;
            dev.adamw(&mut dp.slice_mut(r.clone()), &dg.slice(r.clone()), &mut dm.slice_mut(r.clone()), &mut dv.slice_mut(r.clone()), &tensors, &cfg, step, gscale)?;
            // The clipping norm of the same gradients (unscaled), f64 against the host's sum.
            let sumsq = dev.grad_sumsq(&dg.slice(r))?;
            let bits = |b: &DevBuf<f32>| -> Result<Output> { Ok(Output::U32 { all: f32_bits(&dev.dtoh(b)?), lo: off, n }) };
            let close = (sumsq - sumsq_ref).abs() <= 1e-12 * sumsq_ref.max(f64::MIN_POSITIVE);
            Ok(vec![bits(&dp)?, bits(&dm)?, bits(&dv)?, Output::U32 { all: vec![close as u32], lo: 0, n: 1 }])
        }),
    }
}
