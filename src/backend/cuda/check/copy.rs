//! The copy checks, all exact: row moves (kernels/copy.cu: `scatter_rows`, `concat_cols`), the
//! broadcast add (kernels/add.cu) and the casts (kernels/cast.cu; tests/cuda_parity.rs has their
//! exhaustive edge cases).

use half::bf16;

use super::io::{download_bf16, poisoned, upload, widen, Inputs};
use super::metric::{bf16_bits, Case, Expected, Output, GUARD, POISON_BF16, POISON_U32};
use crate::backend::cpu;
use crate::rng::Rng;

pub(super) fn scatter_rows_case(n: usize, r: usize, w: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let src = rng.bf16s(n * w, 1.0 / 64.0, 2.0);
    // dst starts with data (untouched rows must stay), the indices are distinct and scattered.
    let dst0 = rng.bf16s(r * w, 1.0 / 64.0, 2.0);
    let mut idx: Vec<u32> = Vec::with_capacity(n);
    while idx.len() < n {
        let i = rng.below(r) as u32;
        if !idx.contains(&i) {
            idx.push(i);
        }
    }
    let mut want = dst0.clone();
    cpu::scatter_rows(&src, &mut want, &idx, w);
    Case {
        expect: vec![Expected::Bf16 { name: "dst", bits: want }],
        device: Box::new(move |dev| {
            let ds = upload(dev, &src, off, POISON_BF16)?;
            let mut dd = upload(dev, &dst0, off, POISON_BF16)?;
            let di = dev.htod(&idx)?;
            dev.scatter_rows(&ds.slice(off..off + n * w), &mut dd.slice_mut(off..off + r * w), &di.as_view(), w)?;
            Ok(vec![download_bf16(dev, &dd, off, r * w)?])
        }),
    }
}

pub(super) fn concat_cols_case(r: usize, c1: usize, c2: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let a = rng.bf16s(r * c1, 1.0 / 64.0, 2.0);
    let b = rng.bf16s(r * c2, 1.0 / 64.0, 2.0);
    let c = c1 + c2;
    let want = cpu::concat_cols(&[(&a[..], c1), (&b[..], c2)], r);
    Case {
        expect: vec![Expected::Bf16 { name: "out", bits: want }],
        device: Box::new(move |dev| {
            let da = upload(dev, &a, off, POISON_BF16)?;
            let db = upload(dev, &b, off, POISON_BF16)?;
            let mut dout = poisoned(dev, r * c, off, POISON_BF16)?;
            dev.concat_cols(&da.slice(off..off + r * c1), c1, &mut dout.slice_mut(off..off + r * c), c, 0)?;
            dev.concat_cols(&db.slice(off..off + r * c2), c2, &mut dout.slice_mut(off..off + r * c), c, c1)?;
            Ok(vec![download_bf16(dev, &dout, off, r * c)?])
        }),
    }
}

pub(super) fn add_case(rows: usize, period: usize, c: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = rng.bf16s(rows * c, 1.0 / 64.0, 4.0);
    let y = rng.bf16s(period * c, 1.0 / 64.0, 4.0);
    let mut sum = widen(&x);
    cpu::add(&mut sum, &widen(&y));
    let want = bf16_bits(&sum);
    Case {
        expect: vec![Expected::Bf16 { name: "x", bits: want }],
        device: Box::new(move |dev| {
            let mut dx = upload(dev, &x, off, POISON_BF16)?;
            let dy = upload(dev, &y, off, POISON_BF16)?;
            dev.add(&mut dx.slice_mut(off..off + rows * c), &dy.slice(off..off + period * c))?;
            Ok(vec![download_bf16(dev, &dx, off, rows * c)?])
        }),
    }
}

pub(super) fn cast_bf16_to_f32_case(_seed: u64) -> Case {
    let x: Vec<u16> = (0..=u16::MAX).collect();
    let want: Vec<u32> = x.iter().map(|&b| bf16::from_bits(b).to_f32().to_bits()).collect();
    let n = x.len();
    Case {
        expect: vec![Expected::U32 { name: "y (f32 bits)", values: want }],
        device: Box::new(move |dev| {
            let dx = dev.htod(&x)?;
            let lo = GUARD;
            let mut dy = poisoned(dev, n, lo, f32::from_bits(POISON_U32))?;
            dev.cast_bf16_to_f32_into(&dx.as_view(), &mut dy.slice_mut(lo..lo + n))?;
            let all = dev.dtoh(&dy)?.iter().map(|v| v.to_bits()).collect();
            Ok(vec![Output::U32 { all, lo, n }])
        }),
    }
}

pub(super) fn cast_f32_to_bf16_case(n: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    // Any bit pattern (NaNs, infinities, subnormals, ties) except those that round to the poison.
    let x: Vec<f32> = (0..n)
        .map(|_| loop {
            let v = f32::from_bits(rng.next_u64() as u32);
            if bf16::from_f32(v).to_bits() != POISON_BF16 && v != 0.0 {
                break v;
            }
        })
        .collect();
    let want = x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
    Case {
        expect: vec![Expected::Bf16 { name: "y", bits: want }],
        device: Box::new(move |dev| {
            let dx = dev.htod(&x)?;
            let lo = GUARD;
            let mut dy = poisoned(dev, n, lo, POISON_BF16)?;
            dev.cast_f32_to_bf16_into(&dx.as_view(), &mut dy.slice_mut(lo..lo + n))?;
            Ok(vec![download_bf16(dev, &dy, lo, n)?])
        }),
    }
}
