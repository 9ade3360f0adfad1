//! Row reductions over the vocabulary for log-probabilities.
//! logsumexp(x[V]) and log_softmax(x[V]) in f64 accumulation.

pub fn logsumexp(x: &[f32]) -> f64 {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

pub fn log_softmax_row(x: &[f32]) -> Vec<f64> {
    let l = logsumexp(x);
    x.iter().map(|&v| v as f64 - l).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        let x = [1000.0f32, 1001.0, 999.5, -3.0];
        let s: f64 = log_softmax_row(&x).iter().map(|v| v.exp()).sum();
        assert!((s - 1.0).abs() < 1e-12);
    }
}
