//! Token embedding with image features scattered in: out[T, C] from a table[V, C] and image
//! feature rows features[K, C].
//!
//! Row sources (the scheme shared with the CUDA kernel `kernels/embedding.cu`): row t of the
//! output is a copy of
//!   table[s]        when s = sources[t] < V          (a text token),
//!   features[s - V] when V <= s < V + K               (an image feature row),
//! and anything else is out of range. [`embedding_sources`] builds the sources from token ids in
//! which every image position holds the image token (the prompt with `<image>` already expanded to
//! one token per feature row): the i-th image token, in order, takes feature row i.

use crate::error::{Error, Result};

/// The source index of every row: `ids[t]` for a text token, `V + i` for the i-th occurrence of
/// `image_token`. Errors when a text id is not below `vocab`, or when the number of image tokens
/// is not exactly `n_features` (`image_token: None` means no images: then `n_features` must be 0).
pub fn embedding_sources(ids: &[u32], vocab: usize, image_token: Option<u32>, n_features: usize) -> Result<Vec<u32>> {
    if vocab.checked_add(n_features).is_none_or(|n| n > u32::MAX as usize) {
        return Err(Error::shape("embedding", format!("V={vocab} + K={n_features} rows do not fit u32 source indices")));
    }
    let mut next = 0usize;
    let mut src = Vec::with_capacity(ids.len());
    for (t, &id) in ids.iter().enumerate() {
        if Some(id) == image_token {
            if next == n_features {
                return Err(Error::Input(format!(
                    "embedding: more than {n_features} image tokens (id {id}) in the ids; the {}th is at position {t}",
                    n_features + 1
                )));
            }
            src.push((vocab + next) as u32);
            next += 1;
        } else if (id as usize) < vocab {
            src.push(id);
        } else {
            return Err(Error::Input(format!("embedding: token id {id} at position {t} is outside the vocabulary of {vocab}")));
        }
    }
    if next != n_features {
        return Err(Error::Input(format!("embedding: {next} image tokens in the ids for {n_features} image feature rows")));
    }
    Ok(src)
}

/// out[T, C]: row t is `table[sources[t]]` or `features[sources[t] - V]` (see the module doc).
/// Generic over the element, so the same gather serves f32 and bf16 bits. Panics on an
/// out-of-range source or inconsistent lengths (a caller's bug: `embedding_sources` checks ids).
pub fn embedding<E: Copy + Send + Sync>(table: &[E], features: &[E], c: usize, sources: &[u32]) -> Vec<E> {
    assert!(c > 0, "embedding: C must be > 0");
    assert_eq!(table.len() % c, 0, "embedding: table length {} is not [V, C={c}]", table.len());
    assert_eq!(features.len() % c, 0, "embedding: features length {} is not [K, C={c}]", features.len());
    let (v, k) = (table.len() / c, features.len() / c);
    let mut out = Vec::with_capacity(sources.len() * c);
    for (t, &s) in sources.iter().enumerate() {
        let s = s as usize;
        let row = if s < v {
            &table[s * c..(s + 1) * c]
        } else if s - v < k {
            &features[(s - v) * c..(s - v + 1) * c]
        } else {
            panic!("embedding: source {s} of row {t} is outside V={v} + K={k}");
        };
        out.extend_from_slice(row);
    }
    out
}

/// The embedding table's gradient: `dw[ids[t]] += scale * dx[t]` for every row t whose id is below
/// V (`dw` [V, C]; rows with id >= V, image feature rows, get nothing), rows added in order.
/// The CPU learner's scatter-add and the reference of the CUDA `embedding_backward`.
pub fn embedding_backward(dx: &[f32], ids: &[u32], c: usize, dw: &mut [f32], scale: f32) {
    assert_eq!(dx.len(), ids.len() * c, "embedding_backward: dx has {} elements for {} rows of C={c}", dx.len(), ids.len());
    let v = dw.len() / c;
    for (row, &id) in ids.iter().enumerate() {
        if (id as usize) < v {
            let id = id as usize;
            dw[id * c..(id + 1) * c].iter_mut().zip(&dx[row * c..(row + 1) * c]).for_each(|(a, &b)| *a += scale * b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_gather() {
        // V = 4 (image token 3 is in the vocabulary but never read), K = 2, C = 2.
        let table = [0., 1., 10., 11., 20., 21., 30., 31.];
        let feats = [100., 101., 110., 111.];
        let ids = [1, 3, 3, 0];
        let src = embedding_sources(&ids, 4, Some(3), 2).unwrap();
        assert_eq!(src, vec![1, 4, 5, 0]);
        assert_eq!(embedding(&table, &feats, 2, &src), vec![10., 11., 100., 101., 110., 111., 0., 1.]);
        assert!(embedding_sources(&ids, 4, Some(3), 1).is_err());
        assert!(embedding_sources(&ids, 4, Some(3), 3).is_err());
        assert!(embedding_sources(&[4], 4, None, 0).is_err());
        assert_eq!(embedding_sources(&[3, 2], 4, None, 0).unwrap(), vec![3, 2]);
    }
}

