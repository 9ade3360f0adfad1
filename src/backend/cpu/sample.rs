//! Token selection from logits. `argmax`: the index of the largest value of a row, the first one
//! on ties and the first NaN if there is any (torch.argmax treats NaN as the maximum).

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
}
