//! The embedding check (kernels/embedding.cu): token rows and image feature rows gathered into
//! one output, with the out-of-range flag; and `embedding_backward` (the table's gradient).

use super::io::{download_bf16, download_u32, poisoned, upload, Inputs};
use super::metric::{Case, Expected, GUARD, POISON_BF16, POISON_U32};
use crate::backend::cpu;
use crate::rng::Rng;

#[allow(clippy::too_many_arguments)]
pub(super) fn embedding_case(v: usize, c: usize, t: usize, span: usize, k: usize, off: usize, with_oob: bool, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let image_token = (v - 1).min(32000) as u32;
    let table = rng.bf16s(v * c, 1.0 / 64.0, 2.0);
    let feats = rng.bf16s(k * c, 1.0 / 64.0, 2.0);
    let mut ids: Vec<u32> = (0..t)
        .map(|_| loop {
            let id = rng.below(v) as u32;
            if id != image_token {
                break id;
            }
        })
        .collect();
    ids[span..span + k].iter_mut().for_each(|id| *id = image_token);
    let image = (k > 0).then_some(image_token);
    let mut sources = cpu::embedding_sources(&ids, v, image, k).expect("valid ids");
    let mut want = cpu::embedding(&table, &feats, c, &sources);
    let bad_row = t - 1;
    if with_oob {
        sources[bad_row] = (v + k + 5) as u32;
        want[bad_row * c..(bad_row + 1) * c].fill(0x7FC0);
    }
    let expect = vec![Expected::Bf16 { name: "out", bits: want }, Expected::U32 { name: "oob", values: vec![with_oob as u32] }];
    Case {
        expect,
        device: Box::new(move |dev| {
            let dt = upload(dev, &table, off, POISON_BF16)?;
            let df = upload(dev, &feats, off, POISON_BF16)?;
            let ds = dev.htod(&sources)?;
            let mut dout = poisoned(dev, t * c, off, POISON_BF16)?;
            // The flag starts at 0 (the kernel only ever sets it), inside poisoned guards.
            let mut doob = upload(dev, &[0u32], GUARD, POISON_U32)?;
            let fv = df.slice(off..off + k * c);
            dev.embedding(
                &dt.slice(off..off + v * c),
                c,
                if k > 0 { Some(&fv) } else { None },
                &ds.as_view(),
                &mut dout.slice_mut(off..off + t * c),
                Some(&mut doob.slice_mut(GUARD..GUARD + 1)),
            )?;
            Ok(vec![download_bf16(dev, &dout, off, t * c)?, download_u32(dev, &doob, GUARD, 1)?])
        }),
    }
}

/// `embedding_backward`: dw [V, C] (f32, accumulated onto an earlier gradient) += the rows of dx
/// [T, C] at their token ids; ids repeat (several rows into one table row) and some are >= V
/// (image rows: skipped).
pub(super) fn embedding_backward_case(v: usize, c: usize, t: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let dx = rng.bf16s(t * c, 1.0 / 64.0, 2.0);
    let ids: Vec<u32> = (0..t).map(|i| if i % 5 == 3 { u32::MAX } else { rng.below(v.min(1 + t / 3)) as u32 }).collect();
    let dw0: Vec<f32> = super::io::widen(&rng.bf16s(v * c, 1.0 / 64.0, 1.0));
    let dxf = super::io::widen(&dx);
    let mut reference: Vec<f64> = dw0.iter().map(|&a| a as f64).collect();
    for (r, &id) in ids.iter().enumerate() {
        if (id as usize) < v {
            (0..c).for_each(|i| reference[id as usize * c + i] += dxf[r * c + i] as f64);
        }
    }
    let mut cpu_dw = dw0.clone();
    cpu::embedding_backward(&dxf, &ids, c, &mut cpu_dw, 1.0);
    Case {
        expect: vec![Expected::CloseF32 { name: "dw", reference, cpu: cpu_dw }],
        device: Box::new(move |dev| {
            let ddx = upload(dev, &dx, off, POISON_BF16)?;
            let mut dw = upload(dev, &dw0, off, f32::from_bits(POISON_U32))?;
            dev.embedding_backward(&ddx.slice(off..off + t * c), &ids, &mut dw.slice_mut(off..off + v * c), c)?;
            Ok(vec![super::io::download_f32(dev, &dw, off, v * c)?])
        }),
    }
}
