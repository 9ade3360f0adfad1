//! Dense matrix products through the `gemm` crate (multi-threaded, SIMD).
//!
//! matmul_t:  y[M, N] = x[M, K] @ w[N, K]^T   (the `Linear` layout: HF stores weights [out, in])
//! matmul:    y[M, N] = a[M, K] @ b[K, N]
//! matmul_tn: y[M, N] = a[K, M]^T @ b[K, N]   (weight gradients: dW = dy^T x)
//! Generic over f32 (the engine) and f64 (finite-difference tests). `matmul_t_f64`: the f64
//! reference on bf16 inputs of the CUDA parity checks.

use gemm::Parallelism;
use half::bf16;
use num_traits::{One, Zero};

/// Element types the GEMMs take.
pub trait Scalar: Copy + Send + Sync + Zero + One + 'static {}
impl Scalar for f32 {}
impl Scalar for f64 {}

/// Threads for one GEMM: rayon's pool when the product is large enough to pay for it.
fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    if m * n * k >= 1 << 18 && rayon::current_num_threads() > 1 && rayon::current_thread_index().is_none() {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// General strided product, out[i, j] = sum_k a[i, k] * b[k, j], overwriting `out`.
/// Strides are in elements: (row stride, column stride).
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided<T: Scalar>(
    m: usize,
    n: usize,
    k: usize,
    out: &mut [T],
    out_rs: usize,
    a: &[T],
    a_rs: usize,
    a_cs: usize,
    b: &[T],
    b_rs: usize,
    b_cs: usize,
) {
    gemm_acc(m, n, k, out, out_rs, a, (a_rs, a_cs), b, (b_rs, b_cs), None)
}

/// `gemm_strided`, or with `acc = Some(s)`: out += s * a b (weight gradients accumulated in
/// place).
#[allow(clippy::too_many_arguments)]
fn gemm_acc<T: Scalar>(m: usize, n: usize, k: usize, out: &mut [T], out_rs: usize, a: &[T], (a_rs, a_cs): (usize, usize), b: &[T], (b_rs, b_cs): (usize, usize), acc: Option<T>) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds: the last element each operand touches must be inside its slice.
    assert!(out.len() >= (m - 1) * out_rs + n, "gemm: out too small");
    if k > 0 {
        assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs, "gemm: lhs too small");
        assert!(b.len() > (k - 1) * b_rs + (n - 1) * b_cs, "gemm: rhs too small");
    }
    // SAFETY: the asserts above keep every access of the m x k, k x n and m x n views inside the
    // slices; `out` does not alias `a` or `b` (it is a distinct &mut).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_rs as isize,
            acc.is_some(),
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            if acc.is_some() { T::one() } else { T::zero() },
            acc.unwrap_or(T::one()),
            false,
            false,
            false,
            parallelism(m, n, k),
        );
    }
}

/// y[M, N] = x[M, K] @ w[N, K]^T.
pub fn matmul_t<T: Scalar>(x: &[T], w: &[T], m: usize, k: usize, n: usize) -> Vec<T> {
    assert_eq!(x.len(), m * k, "matmul_t: x is not [{m}, {k}]");
    assert_eq!(w.len(), n * k, "matmul_t: w is not [{n}, {k}]");
    let mut y = vec![T::zero(); m * n];
    gemm_strided(m, n, k, &mut y, n, x, k, 1, w, 1, k);
    y
}

/// y[M, N] = a[M, K] @ b[K, N].
pub fn matmul<T: Scalar>(a: &[T], b: &[T], m: usize, k: usize, n: usize) -> Vec<T> {
    assert_eq!(a.len(), m * k, "matmul: a is not [{m}, {k}]");
    assert_eq!(b.len(), k * n, "matmul: b is not [{k}, {n}]");
    let mut y = vec![T::zero(); m * n];
    gemm_strided(m, n, k, &mut y, n, a, k, 1, b, n, 1);
    y
}

/// y[M, N] = a[K, M]^T @ b[K, N].
pub fn matmul_tn<T: Scalar>(a: &[T], b: &[T], k: usize, m: usize, n: usize) -> Vec<T> {
    assert_eq!(a.len(), k * m, "matmul_tn: a is not [{k}, {m}]");
    assert_eq!(b.len(), k * n, "matmul_tn: b is not [{k}, {n}]");
    let mut y = vec![T::zero(); m * n];
    gemm_strided(m, n, k, &mut y, n, a, 1, m, b, n, 1);
    y
}

/// out[M, N] += s * a[K, M]^T @ b[K, N] (dW += s dy^T x, in place).
pub fn matmul_tn_acc(a: &[f32], b: &[f32], k: usize, m: usize, n: usize, out: &mut [f32], s: f32) {
    assert_eq!(a.len(), k * m, "matmul_tn_acc: a is not [{k}, {m}]");
    assert_eq!(b.len(), k * n, "matmul_tn_acc: b is not [{k}, {n}]");
    assert_eq!(out.len(), m * n, "matmul_tn_acc: out is not [{m}, {n}]");
    gemm_acc(m, n, k, out, n, a, (1, m), b, (n, 1), Some(s));
}

/// x[M, K] @ w[N, K]^T in f64 (exact products of the bf16 inputs, f64 sums) through the gemm
/// crate, a block of w's rows at a time (no f64 copy of a whole lm_head): the reference of the
/// cuBLASLt GEMMs (`matmul`, `matmul_nn`, `matmul_tn`) in the CUDA parity checks.
pub fn matmul_t_f64(x: &[u16], w: &[u16], m: usize, k: usize, n: usize) -> Vec<f64> {
    let x64: Vec<f64> = x.iter().map(|&b| bf16::from_bits(b).to_f64()).collect();
    let mut y = vec![0f64; m * n];
    const ROWS: usize = 2048;
    for j0 in (0..n).step_by(ROWS) {
        let nb = ROWS.min(n - j0);
        let w64: Vec<f64> = w[j0 * k..(j0 + nb) * k].iter().map(|&b| bf16::from_bits(b).to_f64()).collect();
        gemm_strided(m, nb, k, &mut y[j0..], n, &x64, k, 1, &w64, 1, k);
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_t(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k).map(|l| x[i * k + l] as f64 * w[j * k + l] as f64).sum();
            }
        }
        y
    }

    #[test]
    fn matmul_t_matches_f64_reference() {
        let (m, k, n) = (37, 129, 65);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 104729 % 997) as f32 / 498.0) - 1.0).collect();
        let y = matmul_t(&x, &w, m, k, n);
        let r = naive_t(&x, &w, m, k, n);
        for (a, b) in y.iter().zip(&r) {
            assert!((*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
        // matmul with b = w^T gives the same product.
        let mut wt = vec![0f32; k * n];
        for j in 0..n {
            for l in 0..k {
                wt[l * n + j] = w[j * k + l];
            }
        }
        let y2 = matmul(&x, &wt, m, k, n);
        for (a, b) in y2.iter().zip(&r) {
            assert!((*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()));
        }
    }
}
