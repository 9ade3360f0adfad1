//! The LoRA-augmented linear layer, forward and backward (the CPU reference of kernels/lora.cu).
//!
//! Forward:  y[M, N] = x[M, K] W[N, K]^T + s (x A^T) B^T,   A [r, K], B [N, r], s = alpha / r.
//! Saved for backward: x (u = x A^T is recomputed: r is small).
//! Backward: v = dy B [M, r];  dx = dy W + s v A;  dA = s v^T x [r, K];  dB = s dy^T u [N, r].
//! W is frozen: no dW. Generic over f32 (the engine) and f64 (finite differences).
//! LoRA dropout (training, as PEFT: B A dropout(x)): the `_masked` forms take a mask [M, K] of 0
//! and 1/(1-p) that multiplies the LoRA path's input; the backward multiplies that path's dx by it.

use super::matmul::{matmul, matmul_t, matmul_tn, Scalar};

/// A LoRA pair borrowed for one call: (A [r, K], B [N, r], scale).
pub type LoraRef<'a, T> = (&'a [T], &'a [T], T);

/// y = x W^T (+ s (x A^T) B^T).
pub fn lora_fwd<T: Scalar + std::ops::Mul<Output = T> + std::ops::AddAssign>(
    x: &[T], w: &[T], lora: Option<LoraRef<T>>, m: usize, k: usize, n: usize,
) -> Vec<T> {
    lora_fwd_masked(x, w, lora, None, m, k, n)
}

fn masked<'a, T: Scalar + std::ops::Mul<Output = T>>(x: &'a [T], mask: Option<&[T]>) -> std::borrow::Cow<'a, [T]> {
    match mask {
        None => std::borrow::Cow::Borrowed(x),
        Some(mk) => {
            assert_eq!(mk.len(), x.len(), "lora: the dropout mask does not match x");
            std::borrow::Cow::Owned(x.iter().zip(mk).map(|(&a, &b)| a * b).collect())
        }
    }
}

/// `lora_fwd` with LoRA dropout: the LoRA path sees x * mask.
pub fn lora_fwd_masked<T: Scalar + std::ops::Mul<Output = T> + std::ops::AddAssign>(
    x: &[T], w: &[T], lora: Option<LoraRef<T>>, mask: Option<&[T]>, m: usize, k: usize, n: usize,
) -> Vec<T> {
    let mut y = matmul_t(x, w, m, k, n);
    if let Some((a, b, s)) = lora {
        let r = a.len() / k;
        let x = masked(x, mask);
        let u = matmul_t(&x, a, m, k, r);
        let d = matmul_t(&u, b, m, r, n);
        y.iter_mut().zip(&d).for_each(|(o, &v)| *o += s * v);
    }
    y
}

/// (dx [M, K], Some((dA [r, K], dB [N, r])) when a LoRA pair is given).
#[allow(clippy::type_complexity)]
pub fn lora_bwd<T: Scalar + std::ops::Mul<Output = T> + std::ops::AddAssign>(
    x: &[T], w: &[T], lora: Option<LoraRef<T>>, dy: &[T], m: usize, k: usize, n: usize,
) -> (Vec<T>, Option<(Vec<T>, Vec<T>)>) {
    lora_bwd_masked(x, w, lora, None, dy, m, k, n)
}

/// `lora_bwd` with the dropout mask of the forward.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn lora_bwd_masked<T: Scalar + std::ops::Mul<Output = T> + std::ops::AddAssign>(
    x: &[T], w: &[T], lora: Option<LoraRef<T>>, mask: Option<&[T]>, dy: &[T], m: usize, k: usize, n: usize,
) -> (Vec<T>, Option<(Vec<T>, Vec<T>)>) {
    assert_eq!(dy.len(), m * n, "lora_bwd: dy is not [{m}, {n}]");
    let mut dx = matmul(dy, w, m, n, k);
    let grads = lora.map(|(a, b, s)| {
        let r = a.len() / k;
        let x = masked(x, mask);
        let v = matmul(dy, b, m, n, r);
        let va = masked(&matmul(&v, a, m, r, k), mask).into_owned();
        dx.iter_mut().zip(&va).for_each(|(o, &t)| *o += s * t);
        let mut da = matmul_tn(&v, &x, m, r, k);
        da.iter_mut().for_each(|t| *t = s * *t);
        let u = matmul_t(&x, a, m, k, r);
        let mut db = matmul_tn(dy, &u, m, n, r);
        db.iter_mut().for_each(|t| *t = s * *t);
        (da, db)
    });
    (dx, grads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_vec;

    #[test]
    fn backward_matches_finite_differences() {
        let (m, k, n, r) = (5, 7, 6, 3);
        let (x, w, a, b) = (test_vec(m * k, 1), test_vec(n * k, 2), test_vec(r * k, 3), test_vec(n * r, 4));
        let g = test_vec(m * n, 5);
        let s = 1.7;
        let loss = |x: &[f64], a: &[f64], b: &[f64]| -> f64 {
            lora_fwd(x, &w, Some((a, b, s)), m, k, n).iter().zip(&g).map(|(p, q)| p * q).sum()
        };
        let (dx, grads) = lora_bwd(&x, &w, Some((&a[..], &b[..], s)), &g, m, k, n);
        let (da, db) = grads.unwrap();
        let h = 1e-6;
        let fd = |which: usize, i: usize| {
            let mut p = [x.clone(), a.clone(), b.clone()];
            let mut q = [x.clone(), a.clone(), b.clone()];
            p[which][i] += h;
            q[which][i] -= h;
            (loss(&p[0], &p[1], &p[2]) - loss(&q[0], &q[1], &q[2])) / (2.0 * h)
        };
        for (which, grad) in [(0, &dx), (1, &da), (2, &db)] {
            for (i, &g) in grad.iter().enumerate() {
                let f = fd(which, i);
                assert!((f - g).abs() < 1e-7 * (1.0 + f.abs()), "input {which}[{i}]: fd {f} vs {g}");
            }
        }
        // With a dropout mask (zeros and 1/(1-p)), the gradients of the masked forward.
        let mk: Vec<f64> = test_vec(m * k, 9).iter().map(|&u| if u > 0.0 { 1.0 / 0.7 } else { 0.0 }).collect();
        let lossm = |x: &[f64], a: &[f64], b: &[f64]| -> f64 {
            lora_fwd_masked(x, &w, Some((a, b, s)), Some(&mk), m, k, n).iter().zip(&g).map(|(p, q)| p * q).sum()
        };
        let (dxm, gm) = lora_bwd_masked(&x, &w, Some((&a[..], &b[..], s)), Some(&mk), &g, m, k, n);
        let (dam, dbm) = gm.unwrap();
        for (which, grad) in [(0, &dxm), (1, &dam), (2, &dbm)] {
            for i in 0..grad.len() {
                let mut p = [x.clone(), a.clone(), b.clone()];
                let mut q = [x.clone(), a.clone(), b.clone()];
                p[which][i] += h;
                q[which][i] -= h;
                let f = (lossm(&p[0], &p[1], &p[2]) - lossm(&q[0], &q[1], &q[2])) / (2.0 * h);
                assert!((f - grad[i]).abs() < 1e-7 * (1.0 + f.abs()), "masked input {which}[{i}]: fd {f} vs {}", grad[i]);
            }
        }
        // Without LoRA the forward is the plain product and dx = dy W.
        let (dx0, none) = lora_bwd(&x, &w, None, &g, m, k, n);
        assert!(none.is_none());
        let want = matmul(&g, &w, m, n, k);
        assert_eq!(dx0, want);
    }
}
