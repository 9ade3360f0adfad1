//! Rotary position embedding, HF's rotate_half (non-interleaved) form, in place on x[T, H*D].
//!
//! For pair i < D/2: (x_i, x_{i+D/2}) -> (x_i cos - x_{i+D/2} sin, x_{i+D/2} cos + x_i sin),
//! angle = pos * inv_freq_i, inv_freq_i = 1 / theta^(2i/D).
//! The table mirrors transformers' arithmetic: inv_freq in f32, angle = f32(pos) * inv_freq in f32,
//! cos/sin of that f32 angle, so positions in the thousands round the way torch's do.
//! `rope_f64`: the rotation in f64 (by those f32 angles), the reference of the CUDA parity checks.

pub struct RopeTable {
    pub head_dim: usize,
    inv_freq: Vec<f32>,
}

impl RopeTable {
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| {
                let p = theta.powf((2 * i) as f64 / head_dim as f64) as f32;
                1.0f32 / p
            })
            .collect();
        RopeTable { head_dim, inv_freq }
    }

    /// inv_freq_i = 1 / theta^(2i/D) for i < D/2, in f32 (what the CUDA `rope` kernel takes).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// (cos, sin) for one absolute position, each D/2 long.
    pub fn cos_sin(&self, pos: usize) -> (Vec<f32>, Vec<f32>) {
        let p = pos as f32;
        self.inv_freq
            .iter()
            .map(|&f| {
                let a = (p * f) as f64;
                (a.cos() as f32, a.sin() as f32)
            })
            .unzip()
    }
}

/// Rotate x[T, n_heads * D] in place; row t has absolute position `positions[t]`.
pub fn rope(x: &mut [f32], n_heads: usize, positions: &[usize], table: &RopeTable) {
    let d = table.head_dim;
    let half = d / 2;
    assert_eq!(x.len(), positions.len() * n_heads * d, "rope: x is not [T={}, {n_heads}*{d}]", positions.len());
    for (t, row) in x.chunks_mut(n_heads * d).enumerate() {
        let (cos, sin) = table.cos_sin(positions[t]);
        for h in row.chunks_mut(d) {
            for i in 0..half {
                let (a, b) = (h[i], h[i + half]);
                h[i] = a * cos[i] - b * sin[i];
                h[i + half] = b * cos[i] + a * sin[i];
            }
        }
    }
}

/// Backward of `rope`: the rotation is orthogonal, so dx = R^T dy, the rotation by -angle, in place.
pub fn rope_backward(dy: &mut [f32], n_heads: usize, positions: &[usize], table: &RopeTable) {
    let d = table.head_dim;
    let half = d / 2;
    assert_eq!(dy.len(), positions.len() * n_heads * d, "rope_backward: dy is not [T={}, {n_heads}*{d}]", positions.len());
    for (t, row) in dy.chunks_mut(n_heads * d).enumerate() {
        let (cos, sin) = table.cos_sin(positions[t]);
        for h in row.chunks_mut(d) {
            for i in 0..half {
                let (a, b) = (h[i], h[i + half]);
                h[i] = a * cos[i] + b * sin[i];
                h[i + half] = b * cos[i] - a * sin[i];
            }
        }
    }
}

/// The rotation of x[T, heads * D] in f64 by the f32 angles f32(pos) * inv_freq (negated
/// frequencies: the backward): the reference of kernels/rope.cu in the CUDA parity checks.
pub fn rope_f64(x: &[f32], heads: usize, pos: &[u32], inv_freq: &[f32]) -> Vec<f64> {
    let half = inv_freq.len();
    let d = 2 * half;
    let mut out = vec![0f64; x.len()];
    for (t, &p) in pos.iter().enumerate() {
        for i in 0..half {
            // The op's definition: the angle is an f32 product, as in torch.
            let a = (p as f32 * inv_freq[i]) as f64;
            let (s, c) = a.sin_cos();
            for h in 0..heads {
                let base = (t * heads + h) * d;
                let (x0, x1) = (x[base + i] as f64, x[base + i + half] as f64);
                out[base + i] = x0 * c - x1 * s;
                out[base + i + half] = x1 * c + x0 * s;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_is_the_adjoint() {
        // For a linear map R, the backward must satisfy <R x, y> = <x, R^T y> for all x, y.
        let t = RopeTable::new(16, 1e6);
        let pos = [0usize, 5, 4095];
        let x: Vec<f32> = (0..3 * 2 * 16).map(|i| ((i * 29 % 31) as f32 - 15.0) / 8.0).collect();
        let y: Vec<f32> = (0..3 * 2 * 16).map(|i| ((i * 17 % 13) as f32 - 6.0) / 3.0).collect();
        let mut rx = x.clone();
        rope(&mut rx, 2, &pos, &t);
        let mut rty = y.clone();
        rope_backward(&mut rty, 2, &pos, &t);
        let lhs: f64 = rx.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
        let rhs: f64 = x.iter().zip(&rty).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()), "{lhs} vs {rhs}");
        // and it inverts the forward
        rope_backward(&mut rx, 2, &pos, &t);
        for (a, b) in rx.iter().zip(&x) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn rotation_preserves_norm_and_relative_angle() {
        let t = RopeTable::new(8, 10000.0);
        let mut q: Vec<f32> = (0..8).map(|i| i as f32 * 0.3 - 1.0).collect();
        let mut k = q.clone();
        let n0: f32 = q.iter().map(|v| v * v).sum();
        rope(&mut q, 1, &[7], &t);
        rope(&mut k, 1, &[3], &t);
        let n1: f32 = q.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
        // <R(7)x, R(3)x> == <R(4)x, x>
        let mut q2: Vec<f32> = (0..8).map(|i| i as f32 * 0.3 - 1.0).collect();
        let base = q2.clone();
        rope(&mut q2, 1, &[4], &t);
        let d1: f32 = q.iter().zip(&k).map(|(a, b)| a * b).sum();
        let d2: f32 = q2.iter().zip(&base).map(|(a, b)| a * b).sum();
        assert!((d1 - d2).abs() < 1e-4);
    }
}
