//! Row moves and the broadcast add: the references of `kernels/copy.cu` and `kernels/add.cu`.
//! Generic over the element, so the same code serves f32 and bf16 bits.

/// dst[idx[i]] = src[i] for every row i of src[N, W] (dst [R, W]). Panics on an index >= R.
pub fn scatter_rows<E: Copy>(src: &[E], dst: &mut [E], idx: &[u32], w: usize) {
    assert_eq!(src.len(), idx.len() * w, "scatter_rows: src is not [N={}, W={w}]", idx.len());
    for (i, &to) in idx.iter().enumerate() {
        dst[to as usize * w..][..w].copy_from_slice(&src[i * w..][..w]);
    }
}

/// [R, sum C_i] from parts [R, C_i], row by row.
pub fn concat_cols<E: Copy>(parts: &[(&[E], usize)], rows: usize) -> Vec<E> {
    let c: usize = parts.iter().map(|p| p.1).sum();
    let mut out = Vec::with_capacity(rows * c);
    for r in 0..rows {
        for (p, pc) in parts {
            out.extend_from_slice(&p[r * pc..][..*pc]);
        }
    }
    out
}

/// x[i] += y[i % y.len()] (y's rows repeating over x's).
pub fn add(x: &mut [f32], y: &[f32]) {
    assert!(!y.is_empty() && x.len().is_multiple_of(y.len()), "add: x [{}] is not a whole number of y [{}]", x.len(), y.len());
    for chunk in x.chunks_mut(y.len()) {
        chunk.iter_mut().zip(y).for_each(|(a, b)| *a += b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_concat_add() {
        let mut dst = [0u16; 8];
        scatter_rows(&[1, 2, 3, 4], &mut dst, &[3, 1], 2);
        assert_eq!(dst, [0, 0, 3, 4, 0, 0, 1, 2]);
        assert_eq!(concat_cols(&[(&[1, 2, 3, 4][..], 2), (&[9, 8][..], 1)], 2), vec![1, 2, 9, 3, 4, 8]);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        add(&mut x, &[10.0, 20.0]);
        assert_eq!(x, [11.0, 22.0, 13.0, 24.0]);
    }
}
