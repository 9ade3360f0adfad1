//! The LoRA checks (kernels/lora.cu + cuBLASLt): `lora_fwd` + `lora_bwd` together, the LoRA
//! dropout masks (kernels/dropout.cu, exact) and the layer under dropout.

use super::io::{download_bf16, download_f32, poisoned, upload, widen, widen64, Inputs};
use super::metric::{Case, Expected, Output, GUARD, POISON_BF16, POISON_U32};
use crate::backend::cpu;
use crate::backend::cuda::{self, CudaDevice};
use crate::error::Result;
use crate::rng::Rng;

/// One LoRA check: forward and backward of y = x W^T + s (x A^T) B^T, x [M, K], W [N, K],
/// A [r, K], B [N, r], s = 16 / r, every buffer at offset `off`.
#[derive(Clone, Copy)]
pub(super) struct LoraShape {
    m: usize,
    k: usize,
    n: usize,
    r: usize,
    off: usize,
    what: &'static str,
}

pub(super) const LORA_SHAPES: &[LoraShape] = &[
    LoraShape { m: 1, k: 4096, n: 4096, r: 8, off: GUARD, what: "7B q_proj decode" },
    LoraShape { m: 1, k: 4096, n: 4096, r: 128, off: GUARD, what: "7B q_proj decode" },
    LoraShape { m: 300, k: 4096, n: 4096, r: 8, off: GUARD, what: "7B q_proj" },
    LoraShape { m: 300, k: 4096, n: 4096, r: 128, off: GUARD, what: "7B q_proj" },
    LoraShape { m: 64, k: 4096, n: 14336, r: 16, off: GUARD, what: "7B gate_proj" },
    LoraShape { m: 3, k: 77, n: 33, r: 1, off: 1, what: "odd" },
    LoraShape { m: 70, k: 130, n: 200, r: 40, off: 3, what: "tile edges" },
];

/// `LORA_SHAPES` on the emulated device, where the LoRA GEMMs run at ~10^7 multiply-adds per
/// second: the split-K path (K >= 512 with few output tiles), several 64-row tiles (M 65, 70),
/// the largest rank (128), odd and misaligned shapes.
pub(super) const LORA_SHAPES_EMU: &[LoraShape] = &[
    LoraShape { m: 1, k: 1024, n: 1024, r: 8, off: GUARD, what: "decode, split K" },
    LoraShape { m: 1, k: 512, n: 512, r: 128, off: GUARD, what: "decode, largest rank" },
    LoraShape { m: 65, k: 1024, n: 512, r: 8, off: GUARD, what: "2 row tiles, split K" },
    LoraShape { m: 65, k: 256, n: 256, r: 128, off: GUARD, what: "2 row tiles, largest rank" },
    LoraShape { m: 64, k: 512, n: 1536, r: 16, off: GUARD, what: "gate_proj-like" },
    LoraShape { m: 3, k: 77, n: 33, r: 1, off: 1, what: "odd" },
    LoraShape { m: 70, k: 130, n: 200, r: 40, off: 3, what: "tile edges" },
];

impl LoraShape {
    pub(super) fn shape(&self) -> String {
        format!("M={} K={} N={} r={}{} ({})", self.m, self.k, self.n, self.r, if !self.off.is_multiple_of(8) { " misaligned" } else { "" }, self.what)
    }
}

/// Outputs y (bf16), u (f32), dx (bf16), dA, dB (f32). The reference is `cpu::lora_fwd` /
/// `cpu::lora_bwd` in f64 on the bf16 inputs; the CPU result the same functions in f32. The
/// device's backward takes the u of its own forward.
pub(super) fn lora_case(g: LoraShape, seed: u64) -> Case {
    let LoraShape { m, k, n, r, off, .. } = g;
    let mut rng = Rng::new(seed);
    // x W^T ~ O(1..10) as in the matmul checks; u ~ O(1), and the LoRA term about as large as the
    // base product (so that a wrong LoRA path shows).
    let x = rng.bf16s(m * k, 0.01, 2.0);
    let w = rng.bf16s(n * k, 1.0 / 256.0, 0.125);
    let a = rng.bf16s(r * k, 1.0 / 256.0, 0.06);
    let b = rng.bf16s(n * r, 1.0 / 256.0, 0.5 / (r as f64).sqrt());
    let dy = rng.bf16s(m * n, 0.01, 1.0);
    let scale = 16.0f32 / r as f32;

    let (x64, w64, a64, b64, dy64) = (widen64(&x), widen64(&w), widen64(&a), widen64(&b), widen64(&dy));
    let s64 = scale as f64;
    let y_ref = cpu::lora_fwd(&x64, &w64, Some((&a64[..], &b64[..], s64)), m, k, n);
    let u_ref = cpu::matmul_t(&x64, &a64, m, k, r);
    let (dx_ref, g64) = cpu::lora_bwd(&x64, &w64, Some((&a64[..], &b64[..], s64)), &dy64, m, k, n);
    let (da_ref, db_ref) = g64.expect("lora grads");
    drop((x64, w64, a64, b64, dy64));
    let (xf, wf, af, bf, dyf) = (widen(&x), widen(&w), widen(&a), widen(&b), widen(&dy));
    let y_cpu = cpu::lora_fwd(&xf, &wf, Some((&af[..], &bf[..], scale)), m, k, n);
    let u_cpu = cpu::matmul_t(&xf, &af, m, k, r);
    let (dx_cpu, g32) = cpu::lora_bwd(&xf, &wf, Some((&af[..], &bf[..], scale)), &dyf, m, k, n);
    let (da_cpu, db_cpu) = g32.expect("lora grads");
    let expect = vec![
        Expected::Close { name: "y", reference: y_ref, cpu: y_cpu },
        Expected::CloseF32 { name: "u", reference: u_ref, cpu: u_cpu },
        Expected::Close { name: "dx", reference: dx_ref, cpu: dx_cpu },
        Expected::CloseF32 { name: "dA", reference: da_ref, cpu: da_cpu },
        Expected::CloseF32 { name: "dB", reference: db_ref, cpu: db_cpu },
    ];
    Case {
        expect,
        device: Box::new(move |dev| lora_device(dev, [&x, &w, &a, &b, &dy], (m, k, n, r), scale, off, None)),
    }
}

/// `lora_fwd` then `lora_bwd` (with the forward's u) on poisoned buffers at offset `off`, under
/// `dropout` when given (x_drop from the `dropout` kernel): y, u, dx, dA, dB.
fn lora_device(dev: &CudaDevice, [x, w, a, b, dy]: [&[u16]; 5], (m, k, n, r): (usize, usize, usize, usize), scale: f32, off: usize, dropout: Option<cuda::Dropout>) -> Result<Vec<Output>> {
    let poison_f32 = f32::from_bits(POISON_U32);
    let (dxi, dw, da_in, db_in, ddy) = (upload(dev, x, off, POISON_BF16)?, upload(dev, w, off, POISON_BF16)?, upload(dev, a, off, POISON_BF16)?, upload(dev, b, off, POISON_BF16)?, upload(dev, dy, off, POISON_BF16)?);
    let (xv, wv, av, bv) = (dxi.slice(off..off + m * k), dw.slice(off..off + n * k), da_in.slice(off..off + r * k), db_in.slice(off..off + n * r));
    let mut xdrop = poisoned(dev, m * k, off, POISON_BF16)?;
    if let Some(d) = dropout {
        dev.dropout(&xv, &mut xdrop.slice_mut(off..off + m * k), d)?;
    }
    let xdv = xdrop.slice(off..off + m * k);
    let x_lora = if dropout.is_some() { &xdv } else { &xv };
    let mut y = poisoned(dev, m * n, off, POISON_BF16)?;
    let mut u = poisoned(dev, m * r, off, poison_f32)?;
    dev.lora_fwd(&xv, dropout.map(|_| &xdv), &wv, &av, &bv, scale, &mut y.slice_mut(off..off + m * n), &mut u.slice_mut(off..off + m * r), m, k, n, r)?;
    let mut dx = poisoned(dev, m * k, off, POISON_BF16)?;
    let mut da = poisoned(dev, r * k, off, poison_f32)?;
    let mut db = poisoned(dev, n * r, off, poison_f32)?;
    let (uv, dyv) = (u.slice(off..off + m * r), ddy.slice(off..off + m * n));
    dev.lora_bwd(x_lora, &wv, &av, &bv, scale, &uv, &dyv, &mut dx.slice_mut(off..off + m * k), &mut da.slice_mut(off..off + r * k), &mut db.slice_mut(off..off + n * r), m, k, n, r, false, dropout)?;
    Ok(vec![
        download_bf16(dev, &y, off, m * n)?,
        download_f32(dev, &u, off, m * r)?,
        download_bf16(dev, &dx, off, m * k)?,
        download_f32(dev, &da, off, r * k)?,
        download_f32(dev, &db, off, n * r)?,
    ])
}

/// `dropout`: y = bf16(x * mask) with the CPU's mask (`nn::dropout_mask`), exactly.
pub(super) fn dropout_case(n: usize, p: f32, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = rng.bf16s(n, 0.01, 4.0);
    let mseed = rng.next_u64();
    let mask = crate::nn::dropout_mask(n, p, mseed);
    let want: Vec<u16> = x.iter().zip(&mask).map(|(&v, &mk)| half::bf16::from_f32(half::bf16::from_bits(v).to_f32() * mk).to_bits()).collect();
    Case {
        expect: vec![Expected::Bf16 { name: "y", bits: want }],
        device: Box::new(move |dev| {
            let dx = upload(dev, &x, off, POISON_BF16)?;
            let mut y = poisoned(dev, n, off, POISON_BF16)?;
            dev.dropout(&dx.slice(off..off + n), &mut y.slice_mut(off..off + n), cuda::Dropout { seed: mseed, p })?;
            Ok(vec![download_bf16(dev, &y, off, n)?])
        }),
    }
}

/// `lora_fwd` + `lora_bwd` under LoRA dropout (p 0.1): the base product on x, the LoRA path on
/// x_drop = bf16(x * mask) (the `dropout` kernel's output, checked exactly above), dx's LoRA
/// term masked. References: the CPU LoRA functions on x_drop with a zero base weight for the
/// LoRA terms, `matmul_t` / `matmul` for the base ones (f64 on the bf16 inputs, and f32).
pub(super) fn lora_dropout_case(m: usize, k: usize, n: usize, r: usize, off: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let x = rng.bf16s(m * k, 0.01, 2.0);
    let w = rng.bf16s(n * k, 1.0 / 256.0, 0.125);
    let a = rng.bf16s(r * k, 1.0 / 256.0, 0.06);
    let b = rng.bf16s(n * r, 1.0 / 256.0, 0.5 / (r as f64).sqrt());
    let dy = rng.bf16s(m * n, 0.01, 1.0);
    let scale = 16.0f32 / r as f32;
    let d = cuda::Dropout { seed: rng.next_u64(), p: 0.1 };
    let mask = crate::nn::dropout_mask(m * k, d.p, d.seed);
    let xd: Vec<u16> = x.iter().zip(&mask).map(|(&v, &mk)| half::bf16::from_f32(half::bf16::from_bits(v).to_f32() * mk).to_bits()).collect();
    // y = x W^T + [0 + s (xd A^T) B^T]; dx = dy W + mask * [s (dy B) A]; dA, dB from xd.
    #[allow(clippy::too_many_arguments)]
    fn refs<T: crate::backend::cpu::matmul::Scalar + std::ops::Mul<Output = T> + std::ops::AddAssign>(
        x: &[T], xd: &[T], w: &[T], a: &[T], b: &[T], dy: &[T], mask: &[T], s: T, (m, k, n, r): (usize, usize, usize, usize),
    ) -> [Vec<T>; 5] {
        let zero = vec![T::zero(); n * k];
        let mut y = cpu::matmul_t(x, w, m, k, n);
        y.iter_mut().zip(cpu::lora_fwd(xd, &zero, Some((a, b, s)), m, k, n)).for_each(|(o, v)| *o += v);
        let u = cpu::matmul_t(xd, a, m, k, r);
        let (lx, g) = cpu::lora_bwd(xd, &zero, Some((a, b, s)), dy, m, k, n);
        let mut dx = cpu::matmul(dy, w, m, n, k);
        dx.iter_mut().zip(lx.iter().zip(mask)).for_each(|(o, (&v, &mk))| *o += v * mk);
        let (da, db) = g.expect("lora grads");
        [y, u, dx, da, db]
    }
    let dims = (m, k, n, r);
    let mask64: Vec<f64> = mask.iter().map(|&v| v as f64).collect();
    let [y_ref, u_ref, dx_ref, da_ref, db_ref] = refs(&widen64(&x), &widen64(&xd), &widen64(&w), &widen64(&a), &widen64(&b), &widen64(&dy), &mask64, scale as f64, dims);
    let [y_cpu, u_cpu, dx_cpu, da_cpu, db_cpu] = refs(&widen(&x), &widen(&xd), &widen(&w), &widen(&a), &widen(&b), &widen(&dy), &mask, scale, dims);
    let expect = vec![
        Expected::Close { name: "y", reference: y_ref, cpu: y_cpu },
        Expected::CloseF32 { name: "u", reference: u_ref, cpu: u_cpu },
        Expected::Close { name: "dx", reference: dx_ref, cpu: dx_cpu },
        Expected::CloseF32 { name: "dA", reference: da_ref, cpu: da_cpu },
        Expected::CloseF32 { name: "dB", reference: db_ref, cpu: db_cpu },
    ];
    Case {
        expect,
        device: Box::new(move |dev| lora_device(dev, [&x, &w, &a, &b, &dy], (m, k, n, r), scale, off, Some(d))),
    }
}
