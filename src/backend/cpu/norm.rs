//! Normalisations over the last dimension C of x[T, C].
//!
//! rmsnorm (LLaMA/Mistral, HF `MistralRMSNorm`): y = w * x / sqrt(mean(x^2) + eps), in f32.
//! layernorm (CLIP, torch `layer_norm`): y = (x - mean) / sqrt(var + eps) * w + b, biased var.
//! Statistics are accumulated in f64: the reference should be at least as accurate as torch's
//! f32 reductions, never less.

use rayon::prelude::*;

pub fn rmsnorm(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let c = w.len();
    assert_eq!(x.len() % c, 0, "rmsnorm: x length {} is not a multiple of C={c}", x.len());
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(c).zip(x.par_chunks(c)).for_each(|(yr, xr)| {
        let ms = xr.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / c as f64;
        let inv = (1.0 / (ms + eps).sqrt()) as f32;
        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
            *o = g * (v * inv);
        }
    });
    y
}

pub fn layernorm(x: &[f32], w: &[f32], b: &[f32], eps: f64) -> Vec<f32> {
    let c = w.len();
    assert_eq!(b.len(), c, "layernorm: bias length {} != C={c}", b.len());
    assert_eq!(x.len() % c, 0, "layernorm: x length {} is not a multiple of C={c}", x.len());
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(c).zip(x.par_chunks(c)).for_each(|(yr, xr)| {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for i in 0..c {
            yr[i] = (((xr[i] as f64 - mean) * inv) as f32) * w[i] + b[i];
        }
    });
    y
}

#[cfg(test)]
mod tests {
    use super::*;

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
