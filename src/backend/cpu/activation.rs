//! Elementwise activations, in place over any shape.
//!
//! silu(x) = x * sigmoid(x); gelu (exact, erf): 0.5 x (1 + erf(x / sqrt 2));
//! quick_gelu (CLIP): x * sigmoid(1.702 x); swiglu (Mistral MLP): silu(gate) * up, with gate and
//! up separate or fused as gate_up[T, 2F] (`swiglu_fused`).

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

fn map_inplace(x: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    x.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
}

pub fn silu(x: &mut [f32]) {
    map_inplace(x, |v| v / (1.0 + (-v).exp()));
}

pub fn gelu(x: &mut [f32]) {
    map_inplace(x, |v| (0.5 * v as f64 * (1.0 + libm::erf(v as f64 / std::f64::consts::SQRT_2))) as f32);
}

pub fn quick_gelu(x: &mut [f32]) {
    map_inplace(x, |v| v / (1.0 + (-1.702 * v).exp()));
}

/// gate <- silu(gate) * up, elementwise.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu: gate and up differ in length");
    gate.par_chunks_mut(CHUNK).zip(up.par_chunks(CHUNK)).for_each(|(g, u)| {
        for (a, &b) in g.iter_mut().zip(u) {
            *a = *a / (1.0 + (-*a).exp()) * b;
        }
    });
}

/// Backward of `swiglu`: given gate, up and dout, returns (dgate, dup).
/// silu'(a) = sigmoid(a) (1 + a (1 - sigmoid(a))).
pub fn swiglu_backward<F: num_traits::Float>(gate: &[F], up: &[F], dout: &[F]) -> (Vec<F>, Vec<F>) {
    assert!(gate.len() == up.len() && up.len() == dout.len(), "swiglu_backward: lengths differ");
    let one = F::one();
    gate.iter()
        .zip(up)
        .zip(dout)
        .map(|((&a, &b), &g)| {
            let s = one / (one + (-a).exp());
            (g * b * s * (one + a * (one - s)), g * a * s)
        })
        .unzip()
}

/// out[T, F] = silu(gate) * up for the fused layout gate_up[T, 2F] (row t: gate then up).
pub fn swiglu_fused(gate_up: &[f32], f: usize) -> Vec<f32> {
    assert!(f > 0 && gate_up.len().is_multiple_of(2 * f), "swiglu_fused: gate_up length {} is not [T, 2*{f}]", gate_up.len());
    let mut out = vec![0f32; gate_up.len() / 2];
    out.par_chunks_mut(f).zip(gate_up.par_chunks(2 * f)).for_each(|(o, gu)| {
        o.copy_from_slice(&gu[..f]);
        for (a, &b) in o.iter_mut().zip(&gu[f..]) {
            *a = *a / (1.0 + (-*a).exp()) * b;
        }
    });
    out
}

/// Apply an activation by its HF name.
pub fn by_name(name: &str, x: &mut [f32]) {
    match name {
        "gelu" => gelu(x),
        "quick_gelu" => quick_gelu(x),
        "silu" => silu(x),
        other => panic!("activation `{other}` should have been rejected when the config was read"),
    }
}

/// Backward of `by_name`: dy <- dy * act'(x), where x is the activation's input.
/// gelu' = Phi(x) + x phi(x); quick_gelu' = s + 1.702 x s (1 - s) with s = sigmoid(1.702 x);
/// silu' = s (1 + x (1 - s)) with s = sigmoid(x).
pub fn backward_by_name(name: &str, x: &[f32], dy: &mut [f32]) {
    assert_eq!(x.len(), dy.len(), "activation backward: x and dy differ in length");
    let d: fn(f64) -> f64 = match name {
        "gelu" => |v| 0.5 * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)) + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt(),
        "quick_gelu" => |v| {
            let s = 1.0 / (1.0 + (-1.702 * v).exp());
            s + 1.702 * v * s * (1.0 - s)
        },
        "silu" => |v| {
            let s = 1.0 / (1.0 + (-v).exp());
            s * (1.0 + v * (1.0 - s))
        },
        other => panic!("activation `{other}` should have been rejected when the config was read"),
    };
    dy.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(g, xs)| {
        g.iter_mut().zip(xs).for_each(|(g, &v)| *g = (*g as f64 * d(v as f64)) as f32);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_backward_matches_finite_differences() {
        let x: Vec<f32> = (0..13).map(|i| i as f32 * 0.5 - 3.0).collect();
        for name in ["gelu", "quick_gelu", "silu"] {
            let mut g = vec![1f32; x.len()];
            backward_by_name(name, &x, &mut g);
            let h = 1e-2f32;
            for i in 0..x.len() {
                let (mut p, mut m) = ([x[i] + h], [x[i] - h]);
                by_name(name, &mut p);
                by_name(name, &mut m);
                let fd = (p[0] as f64 - m[0] as f64) / (2.0 * h as f64);
                assert!((fd - g[i] as f64).abs() < 2e-4, "{name} at {}: fd {fd} vs {}", x[i], g[i]);
            }
        }
    }

    #[test]
    fn swiglu_backward_matches_finite_differences() {
        let a: Vec<f64> = (0..9).map(|i| i as f64 * 0.7 - 3.0).collect();
        let b: Vec<f64> = (0..9).map(|i| 1.5 - i as f64 * 0.3).collect();
        let g: Vec<f64> = (0..9).map(|i| (i as f64 * 1.3).sin()).collect();
        let f = |a: f64, b: f64| a / (1.0 + (-a).exp()) * b;
        let (da, db) = swiglu_backward(&a, &b, &g);
        let h = 1e-6;
        for i in 0..9 {
            let fa = (f(a[i] + h, b[i]) - f(a[i] - h, b[i])) / (2.0 * h) * g[i];
            let fb = (f(a[i], b[i] + h) - f(a[i], b[i] - h)) / (2.0 * h) * g[i];
            assert!((fa - da[i]).abs() < 1e-8 && (fb - db[i]).abs() < 1e-8, "{i}");
        }
        // and the f32 forward agrees with the formula
        let (mut ga, ub): (Vec<f32>, Vec<f32>) = (a.iter().map(|&x| x as f32).collect(), b.iter().map(|&x| x as f32).collect());
        swiglu(&mut ga, &ub);
        for i in 0..9 {
            assert!((ga[i] as f64 - f(a[i], b[i])).abs() < 1e-5);
        }
    }

    #[test]
    fn known_values() {
        let mut g = vec![1.0f32, -1.0, 0.0];
        gelu(&mut g);
        // torch.nn.functional.gelu(torch.tensor([1., -1., 0.]))
        assert!((g[0] - 0.841_344_7).abs() < 1e-6 && (g[1] + 0.158_655_26).abs() < 1e-6 && g[2] == 0.0);
        let mut s = vec![2.0f32];
        silu(&mut s);
        assert!((s[0] - 1.761_594_2).abs() < 1e-6);
        let mut q = vec![1.0f32];
        quick_gelu(&mut q);
        assert!((q[0] - 0.845_795_77).abs() < 1e-6); // 1 / (1 + exp(-1.702))
    }
}
