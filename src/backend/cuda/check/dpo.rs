//! The DPO check (kernels/dpo.cu): loss, rewards and d loss / d logp over a batch of pairs,
//! against `loss::dpo` in f64.

use super::io::{download_f32, poisoned, upload};
use super::metric::{f32_bits, Case, Expected, Output, GUARD, POISON_U32};
use crate::backend::cuda;
use crate::rng::Rng;

pub(super) fn dpo_case(b: usize, beta: f64, alpha: f64, seed: u64) -> Case {
    use cuda::DpoSpans;
    let mut rng = Rng::new(seed);
    // Pairs packed back to back, chosen then rejected, responses of 1..300 tokens.
    let mut spans = Vec::with_capacity(b);
    let mut t = 0u32;
    for _ in 0..b {
        let (cn, rn) = (1 + rng.below(300) as u32, 1 + rng.below(300) as u32);
        spans.push(DpoSpans { chosen_start: t, chosen_len: cn, rejected_start: t + cn, rejected_len: rn });
        t += cn + rn;
    }
    let t = t as usize;
    let logp: Vec<f32> = (0..t).map(|_| -(rng.uniform() * 5.0) as f32).collect();
    let reference: Vec<f64> = (0..2 * b).map(|_| -(rng.uniform() * 600.0)).collect();
    let sum = |start: u32, len: u32| logp[start as usize..(start + len) as usize].iter().map(|&v| v as f64).sum::<f64>();
    let (mut out_ref, mut d_ref) = (Vec::with_capacity(7 * b), vec![0f64; t]);
    for (i, sp) in spans.iter().enumerate() {
        let (pc, pr) = (sum(sp.chosen_start, sp.chosen_len), sum(sp.rejected_start, sp.rejected_len));
        let o = crate::loss::dpo(pc, pr, reference[2 * i], reference[2 * i + 1], beta, alpha);
        out_ref.extend([o.loss, o.d_chosen, o.d_rejected, o.chosen_reward, o.rejected_reward, pc, pr]);
        d_ref[sp.chosen_start as usize..(sp.chosen_start + sp.chosen_len) as usize].fill(o.d_chosen);
        d_ref[sp.rejected_start as usize..(sp.rejected_start + sp.rejected_len) as usize].fill(o.d_rejected);
    }
    let to_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let expect = vec![
        Expected::CloseF32 { name: "out", reference: out_ref.clone(), cpu: to_f32(&out_ref) },
        Expected::CloseF32 { name: "dlogp", reference: d_ref.clone(), cpu: to_f32(&d_ref) },
    ];
    let flat: Vec<u32> = bytemuck::cast_slice(&spans).to_vec();
    Case {
        expect,
        device: Box::new(move |dev| {
            let poison = f32::from_bits(POISON_U32);
            let dl = upload(dev, &logp, GUARD, poison)?;
            let dsp = dev.htod(&flat)?;
            let dref = dev.htod(&reference)?;
            let mut dout = dev.htod(&vec![f64::NAN; 7 * b + 2 * GUARD])?;
            let mut dd = poisoned(dev, t, GUARD, poison)?;
            dev.dpo(&dl.slice(GUARD..GUARD + t), &dsp.as_view(), &dref.as_view(), beta, alpha, &mut dout.slice_mut(GUARD..GUARD + 7 * b), &mut dd.slice_mut(GUARD..GUARD + t))?;
            // The f64 outputs compared as f32 (the rule's f32 rounding term), guards as NaN bits.
            let o64 = dev.dtoh(&dout)?;
            let o32: Vec<f32> = o64.iter().map(|&x| if x.is_nan() { poison } else { x as f32 }).collect();
            Ok(vec![Output::F32 { all: f32_bits(&o32), lo: GUARD, n: 7 * b }, download_f32(dev, &dd, GUARD, t)?])
        }),
    }
}
