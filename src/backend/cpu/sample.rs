//! Token selection from logits. `argmax`: the index of the largest value of a row, the first one
//! on ties and the first NaN if there is any (torch.argmax treats NaN as the maximum).
//! `sample_row`: temperature / top-k / top-p sampling with one uniform, the reference of the CUDA
//! `sample_f32` kernel (and what `generate::sample` runs).

/// The index of the maximum of `row` (first on ties; NaN counts as larger than everything).
/// Panics on an empty row.
pub fn argmax(row: &[f32]) -> usize {
    assert!(!row.is_empty(), "argmax: empty row");
    if let Some(i) = row.iter().position(|v| v.is_nan()) {
        return i;
    }
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Sample one token from a row of logits [V] with the uniform `u` in [0, 1), in HF's order of
/// logits processors: divide by `temperature`, top-k (keep the values at least the k-th largest;
/// 0 or at least V is off), top-p (HF `TopPLogitsWarper`; 1.0 and above, or NaN, is off), then
/// softmax and inverse-CDF sampling in index order. `temperature <= 0` is greedy: the
/// [`argmax`] (u unused).
pub fn sample_row(logits: &[f32], temperature: f32, top_k: usize, top_p: f32, u: f64) -> u32 {
    if temperature <= 0.0 {
        return argmax(logits) as u32;
    }
    invert_cdf(&softmax_f64(&warp_scores(logits, temperature, top_k, top_p, None)), u)
}

/// The scores that `sample_row` takes the softmax of: logits / temperature, with the entries that
/// top-k and top-p remove set to -inf. Top-p (HF `TopPLogitsWarper`): a STABLE ascending sort by
/// `total_cmp` (ties in index order), the low tail dropped while the ascending cumulative
/// probability (f64, in that order) is <= 1 - top_p, the most likely token always kept. When
/// `cums` is given it receives those cumulative probabilities, one per rank (empty when top-p
/// is off): the values that were compared with 1 - top_p.
pub fn warp_scores(logits: &[f32], temperature: f32, top_k: usize, top_p: f32, cums: Option<&mut Vec<f64>>) -> Vec<f32> {
    let mut scores: Vec<f32> = logits.iter().map(|&v| v / temperature).collect();
    if top_k > 0 && top_k < scores.len() {
        let mut sorted = scores.clone();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let kth = sorted[top_k - 1];
        scores.iter_mut().filter(|v| **v < kth).for_each(|v| *v = f32::NEG_INFINITY);
    }
    if top_p < 1.0 {
        // HF TopPLogitsWarper: sort ascending, drop the low tail whose cumulative probability is
        // <= 1 - top_p, always keeping the most likely token.
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let probs = softmax_f64(&scores);
        let mut cum = 0f64;
        let last = order.len() - 1;
        let mut trace = Vec::new();
        for (rank, &i) in order.iter().enumerate() {
            cum += probs[i];
            trace.push(cum);
            if cum <= 1.0 - top_p as f64 && rank != last {
                scores[i] = f32::NEG_INFINITY;
            }
        }
        if let Some(c) = cums {
            *c = trace;
        }
    } else if let Some(c) = cums {
        c.clear();
    }
    scores
}

/// Softmax in f64 of f32 scores: max-subtracted, -inf entries exactly 0, the sum in index order.
pub fn softmax_f64(x: &[f32]) -> Vec<f64> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x.iter().map(|&v| if v == f32::NEG_INFINITY { 0.0 } else { (v as f64 - m).exp() }).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

/// Inverse-CDF sampling in index order: the first index with a positive probability at which the
/// running f64 sum exceeds `u`; the last positive one when rounding leaves the total <= u.
pub fn invert_cdf(probs: &[f64], u: f64) -> u32 {
    let mut cum = 0f64;
    let mut last_nonzero = 0;
    for (i, &q) in probs.iter().enumerate() {
        if q > 0.0 {
            cum += q;
            last_nonzero = i;
            if u < cum {
                return i as u32;
            }
        }
    }
    last_nonzero as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_max_and_nan() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
        assert_eq!(argmax(&[1.0, f32::NAN, 5.0, f32::NAN]), 1);
        assert_eq!(argmax(&[-0.0, 0.0]), 0);
    }

    #[test]
    fn sample_row_ties_follow_the_stable_sort() {
        // Equal scores: ascending cumulative 0.25, 0.5 (<= 1 - 0.5: dropped), 0.75: the stable
        // sort drops the lowest indices, so 2 and 3 remain, each with probability 1/2.
        let x = [1.0f32; 4];
        assert_eq!(sample_row(&x, 1.0, 0, 0.5, 0.1), 2);
        assert_eq!(sample_row(&x, 1.0, 0, 0.5, 0.9), 3);
        // top_p = 0 keeps only the last element of the ascending order: the highest tied index.
        assert_eq!(sample_row(&x, 1.0, 0, 0.0, 0.0), 3);
        // top_k = 1 keeps every value equal to the maximum.
        assert_eq!(sample_row(&[0.0, 2.0, 2.0, 1.0], 0.5, 1, 1.0, 0.75), 2);
        // Greedy ignores u.
        assert_eq!(sample_row(&[0.0, 2.0, 2.0, 1.0], 0.0, 0, 1.0, 0.99), 1);
    }
}
