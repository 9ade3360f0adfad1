//! Normalisations over the last dimension C of x[T, C].
//!
//! rmsnorm (LLaMA/Mistral, HF `MistralRMSNorm`): y = w * x / sqrt(mean(x^2) + eps), in f32.
//! rmsnorm_residual (the decoder's "add then norm"): residual += x, y = rmsnorm(residual).
//! layernorm (CLIP, torch `layer_norm`): y = (x - mean) / sqrt(var + eps) * w + b, biased var.
//! Statistics are accumulated in f64: the reference should be at least as accurate as torch's
//! f32 reductions, never less.
//!
//! rmsnorm_backward: saves nothing but x; with g = w * dy and r = 1/sqrt(mean(x^2) + eps),
//! dx = r g - x r^3 mean(g x), dw = sum over rows of dy x r.
//! layernorm_backward: saves nothing but x (see the function).
//! rmsnorm, layernorm and their backward passes are generic over the float type (f32 in the engine, f64 for the
//! finite-difference tests). `rmsnorm_f64`: the f64 reference of the CUDA parity checks.

use num_traits::Float;
use rayon::prelude::*;

fn inv_rms<F: Float>(xr: &[F], eps: f64) -> F {
    let ms = xr.iter().map(|&v| v.to_f64().unwrap().powi(2)).sum::<f64>() / xr.len() as f64;
    F::from(1.0 / (ms + eps).sqrt()).unwrap()
}

pub fn rmsnorm<F: Float + Send + Sync>(x: &[F], w: &[F], eps: f64) -> Vec<F> {
    let c = w.len();
    assert_eq!(x.len() % c, 0, "rmsnorm: x length {} is not a multiple of C={c}", x.len());
    let mut y = vec![F::zero(); x.len()];
    y.par_chunks_mut(c).zip(x.par_chunks(c)).for_each(|(yr, xr)| {
        let inv = inv_rms(xr, eps);
        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
            *o = g * (v * inv);
        }
    });
    y
}

/// (dx[T, C], dw[C]) of `rmsnorm` given dy[T, C].
pub fn rmsnorm_backward<F: Float + Send + Sync>(x: &[F], w: &[F], dy: &[F], eps: f64) -> (Vec<F>, Vec<F>) {
    let c = w.len();
    assert_eq!(dy.len(), x.len(), "rmsnorm_backward: dy and x differ in length");
    let mut dx = vec![F::zero(); x.len()];
    let mut dw = vec![F::zero(); c];
    for ((dxr, xr), dyr) in dx.chunks_mut(c).zip(x.chunks(c)).zip(dy.chunks(c)) {
        let r = inv_rms(xr, eps);
        let gx = (0..c).fold(F::zero(), |a, i| a + w[i] * dyr[i] * xr[i]) / F::from(c).unwrap();
        for i in 0..c {
            dxr[i] = r * w[i] * dyr[i] - xr[i] * r * r * r * gx;
            dw[i] = dw[i] + dyr[i] * xr[i] * r;
        }
    }
    (dx, dw)
}

/// The decoder's "add then norm": `residual <- residual + x`, then `rmsnorm(residual)`.
/// (The CUDA kernel stores the sum in bf16 and normalises the stored, rounded sum, as HF does in
/// bf16; here everything stays f32.)
pub fn rmsnorm_residual(x: &[f32], residual: &mut [f32], w: &[f32], eps: f64) -> Vec<f32> {
    assert_eq!(x.len(), residual.len(), "rmsnorm_residual: x [{}] and residual [{}] differ", x.len(), residual.len());
    residual.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(r, x)| {
        r.iter_mut().zip(x).for_each(|(r, &x)| *r += x);
    });
    rmsnorm(residual, w, eps)
}

/// Generic over the float type (f32 in the engine, f64 for the finite-difference tests); the
/// statistics are f64 either way.
pub fn layernorm<F: Float + Send + Sync>(x: &[F], w: &[F], b: &[F], eps: f64) -> Vec<F> {
    let c = w.len();
    assert_eq!(b.len(), c, "layernorm: bias length {} != C={c}", b.len());
    assert_eq!(x.len() % c, 0, "layernorm: x length {} is not a multiple of C={c}", x.len());
    let mut y = vec![F::zero(); x.len()];
    y.par_chunks_mut(c).zip(x.par_chunks(c)).for_each(|(yr, xr)| {
        let (mean, inv) = ln_stats(xr, eps);
        for i in 0..c {
            yr[i] = F::from((xr[i].to_f64().unwrap() - mean) * inv).unwrap() * w[i] + b[i];
        }
    });
    y
}

/// (mean, 1 / sqrt(biased var + eps)) of a row, in f64.
fn ln_stats<F: Float>(xr: &[F], eps: f64) -> (f64, f64) {
    let c = xr.len() as f64;
    let mean = xr.iter().map(|v| v.to_f64().unwrap()).sum::<f64>() / c;
    let var = xr.iter().map(|v| (v.to_f64().unwrap() - mean).powi(2)).sum::<f64>() / c;
    (mean, 1.0 / (var + eps).sqrt())
}

/// (dx[T, C], dw[C], db[C]) of `layernorm` given dy[T, C]; saves nothing but x. With
/// xh = (x - mean) r and g = w dy: dx = r (g - mean(g) - xh mean(g xh)), dw = sum dy xh, db = sum dy
/// (row sums in f64).
pub fn layernorm_backward<F: Float + Send + Sync>(x: &[F], w: &[F], dy: &[F], eps: f64) -> (Vec<F>, Vec<F>, Vec<F>) {
    let c = w.len();
    assert_eq!(dy.len(), x.len(), "layernorm_backward: dy and x differ in length");
    assert_eq!(x.len() % c, 0, "layernorm_backward: x length {} is not a multiple of C={c}", x.len());
    let mut dx = vec![F::zero(); x.len()];
    let (mut dw, mut db) = (vec![0f64; c], vec![0f64; c]);
    let mut xh = vec![0f64; c];
    for ((dxr, xr), dyr) in dx.chunks_mut(c).zip(x.chunks(c)).zip(dy.chunks(c)) {
        let (mean, r) = ln_stats(xr, eps);
        let (mut mg, mut mgx) = (0f64, 0f64);
        for i in 0..c {
            xh[i] = (xr[i].to_f64().unwrap() - mean) * r;
            let d = dyr[i].to_f64().unwrap();
            let g = w[i].to_f64().unwrap() * d;
            mg += g;
            mgx += g * xh[i];
            dw[i] += d * xh[i];
            db[i] += d;
        }
        let (mg, mgx) = (mg / c as f64, mgx / c as f64);
        for i in 0..c {
            let g = w[i].to_f64().unwrap() * dyr[i].to_f64().unwrap();
            dxr[i] = F::from(r * (g - mg - xh[i] * mgx)).unwrap();
        }
    }
    let cast = |v: Vec<f64>| v.into_iter().map(|a| F::from(a).unwrap()).collect();
    (dx, cast(dw), cast(db))
}

/// `rmsnorm` in f64 on f32 inputs (bf16 values widened): the reference of kernels/rmsnorm.cu
/// (`rmsnorm`, `rmsnorm_residual`) in the CUDA parity checks.
pub fn rmsnorm_f64(x: &[f32], w: &[f32], eps: f64) -> Vec<f64> {
    let c = w.len();
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(c) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / c as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        y.extend(row.iter().zip(w).map(|(&v, &g)| g as f64 * v as f64 * inv));
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_backward_matches_finite_differences() {
        let (t, c) = (3, 7);
        let x: Vec<f64> = (0..t * c).map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0).collect();
        let w: Vec<f64> = (0..c).map(|i| 0.5 + i as f64 / 9.0).collect();
        let g: Vec<f64> = (0..t * c).map(|i| ((i * 13 % 17) as f64 - 8.0) / 5.0).collect();
        let eps = 1e-5;
        let loss = |x: &[f64], w: &[f64]| rmsnorm(x, w, eps).iter().zip(&g).map(|(a, b)| a * b).sum::<f64>();
        let (dx, dw) = rmsnorm_backward(&x, &w, &g, eps);
        let h = 1e-6;
        for i in 0..x.len() {
            let (mut p, mut m) = (x.clone(), x.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (loss(&p, &w) - loss(&m, &w)) / (2.0 * h);
            assert!((fd - dx[i]).abs() < 1e-7 * (1.0 + fd.abs()), "dx[{i}]: {fd} vs {}", dx[i]);
        }
        for i in 0..c {
            let (mut p, mut m) = (w.clone(), w.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (loss(&x, &p) - loss(&x, &m)) / (2.0 * h);
            assert!((fd - dw[i]).abs() < 1e-7 * (1.0 + fd.abs()), "dw[{i}]: {fd} vs {}", dw[i]);
        }
    }

    #[test]
    fn layernorm_backward_matches_finite_differences() {
        let (t, c) = (3, 7);
        let x: Vec<f64> = (0..t * c).map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0).collect();
        let w: Vec<f64> = (0..c).map(|i| 0.5 + i as f64 / 9.0).collect();
        let b: Vec<f64> = (0..c).map(|i| i as f64 / 5.0 - 0.6).collect();
        let g: Vec<f64> = (0..t * c).map(|i| ((i * 13 % 17) as f64 - 8.0) / 5.0).collect();
        let eps = 1e-5;
        let loss = |x: &[f64], w: &[f64], b: &[f64]| layernorm(x, w, b, eps).iter().zip(&g).map(|(a, b)| a * b).sum::<f64>();
        let (dx, dw, db) = layernorm_backward(&x, &w, &g, eps);
        let h = 1e-6;
        let fd = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
        let close = |fd: f64, an: f64, what: &str| assert!((fd - an).abs() < 1e-7 * (1.0 + fd.abs()), "{what}: {fd} vs {an}");
        for i in 0..x.len() {
            let d = fd(&|e| {
                let mut p = x.clone();
                p[i] += e;
                loss(&p, &w, &b)
            });
            close(d, dx[i], &format!("dx[{i}]"));
        }
        for i in 0..c {
            let d = fd(&|e| {
                let mut p = w.clone();
                p[i] += e;
                loss(&x, &p, &b)
            });
            close(d, dw[i], &format!("dw[{i}]"));
            let d = fd(&|e| {
                let mut p = b.clone();
                p[i] += e;
                loss(&x, &w, &p)
            });
            close(d, db[i], &format!("db[{i}]"));
        }
    }

    #[test]
    fn rmsnorm_unit_rms_output() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 3.0 + 0.5).collect();
        let w = vec![1.0f32; 32];
        let y = rmsnorm(&x, &w, 0.0);
        for r in y.chunks(32) {
            let ms: f32 = r.iter().map(|v| v * v).sum::<f32>() / 32.0;
            assert!((ms - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn layernorm_zero_mean_unit_var() {
        let x: Vec<f32> = (0..96).map(|i| (i as f32 * 0.71).cos() * 2.0 + 4.0).collect();
        let y = layernorm(&x, &[1.0; 48], &[0.0; 48], 0.0);
        for r in y.chunks(48) {
            let m: f32 = r.iter().sum::<f32>() / 48.0;
            let v: f32 = r.iter().map(|a| (a - m) * (a - m)).sum::<f32>() / 48.0;
            assert!(m.abs() < 1e-5 && (v - 1.0).abs() < 1e-4);
        }
    }
}
