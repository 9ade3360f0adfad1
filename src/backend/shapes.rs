//! The shape contracts of the [`super::Backend`] ops, checked once here for every backend (on
//! the matrix view: rows x cols). Each returns an [`Error::Shape`] naming the op and the shapes.

use super::{AttnRow, PackedMask, Rows};
use crate::error::{Error, Result};

fn dims<T: Rows>(t: &T) -> String {
    format!("[{}, {}]", t.n_rows(), t.n_cols())
}

/// `a` and `b` of the same shape (`op`'s elementwise inputs).
pub fn same<T: Rows>(op: &'static str, a: &T, b: &T) -> Result<()> {
    if a.n_rows() != b.n_rows() || a.n_cols() != b.n_cols() {
        return Err(Error::shape(op, format!("{} and {} differ", dims(a), dims(b))));
    }
    Ok(())
}

/// `a` and `b` with the same row length.
pub fn same_cols<T: Rows>(op: &'static str, a: &T, b: &T) -> Result<()> {
    if a.n_cols() != b.n_cols() {
        return Err(Error::shape(op, format!("{} and {} differ in columns", dims(a), dims(b))));
    }
    Ok(())
}

/// q [R, H*D] and k [R, Hkv*D] for R positions.
pub fn rope<T: Rows>(q: &T, k: &T, n_heads: usize, n_kv_heads: usize, head_dim: usize, positions: usize) -> Result<()> {
    if q.n_rows() != positions || k.n_rows() != positions || q.n_cols() != n_heads * head_dim || k.n_cols() != n_kv_heads * head_dim {
        return Err(Error::shape(
            "rope",
            format!("q {}, k {} for {positions} positions, H={n_heads}, Hkv={n_kv_heads}, D={head_dim}", dims(q), dims(k)),
        ));
    }
    Ok(())
}

/// q [N, H*D] for N rows; k, v [S*cap, Hkv*D]; H a multiple of Hkv; every row inside the cache.
#[allow(clippy::too_many_arguments)]
pub fn attention<T: Rows>(q: &T, k: &T, v: &T, rows: &[AttnRow], n_heads: usize, n_kv_heads: usize, head_dim: usize, cap: usize) -> Result<()> {
    let kw = n_kv_heads * head_dim;
    let slots = k.n_rows().checked_div(cap).unwrap_or(0);
    let bad_row = rows.iter().position(|r| r.slot as usize >= slots || r.kv_start > r.kv_end || r.kv_end as usize > cap);
    if q.n_rows() != rows.len()
        || q.n_cols() != n_heads * head_dim
        || k.n_cols() != kw
        || v.n_cols() != kw
        || k.n_rows() != v.n_rows()
        || cap == 0
        || !k.n_rows().is_multiple_of(cap)
        || n_kv_heads == 0
        || !n_heads.is_multiple_of(n_kv_heads)
        || bad_row.is_some()
    {
        return Err(Error::shape(
            "attention",
            format!(
                "q {} for {} rows, k {}, v {}, H={n_heads}, Hkv={n_kv_heads}, D={head_dim}, cap={cap}{}",
                dims(q),
                rows.len(),
                dims(k),
                dims(v),
                bad_row.map(|i| format!("; row {i} {:?} outside the cache", rows[i])).unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

/// q [Ttot, H*D] and k, v [Ttot, Hkv*D] with Ttot = sum of `lens`; H a positive multiple of Hkv;
/// D > 0; a sliding window of at least one key.
#[allow(clippy::too_many_arguments)]
pub fn attention_packed<T: Rows>(q: &T, k: &T, v: &T, lens: &[usize], mask: PackedMask, n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Result<()> {
    let total: usize = lens.iter().sum();
    let kw = n_kv_heads * head_dim;
    if q.n_rows() != total
        || k.n_rows() != total
        || v.n_rows() != total
        || q.n_cols() != n_heads * head_dim
        || k.n_cols() != kw
        || v.n_cols() != kw
        || head_dim == 0
        || n_kv_heads == 0
        || !n_heads.is_multiple_of(n_kv_heads)
        || mask == (PackedMask::Causal { window: Some(0) })
    {
        return Err(Error::shape(
            "attention_packed",
            format!(
                "q {}, k {}, v {} for sequences of lengths {lens:?} (Ttot={total}), H={n_heads}, Hkv={n_kv_heads}, D={head_dim}, {mask:?}",
                dims(q),
                dims(k),
                dims(v)
            ),
        ));
    }
    Ok(())
}

/// src [N, W] into dst [R, W] at N indices, each < R.
pub fn scatter_rows<T: Rows>(src: &T, dst: &T, idx: &[u32]) -> Result<()> {
    if src.n_cols() != dst.n_cols() || src.n_rows() != idx.len() || idx.iter().any(|&i| i as usize >= dst.n_rows()) {
        return Err(Error::shape("scatter_rows", format!("src {} to {} indices of dst {}", dims(src), idx.len(), dims(dst))));
    }
    Ok(())
}

/// Every source below V + K for table [V, C] and features [K, C].
pub fn embedding<T: Rows>(table: &T, features: Option<&T>, sources: &[u32]) -> Result<()> {
    let (v, c) = (table.n_rows(), table.n_cols());
    if let Some(f) = features {
        same_cols("embedding", table, f)?;
    }
    let k = features.map(|f| f.n_rows()).unwrap_or(0);
    if let Some(t) = sources.iter().position(|&s| s as usize >= v + k) {
        return Err(Error::shape("embedding", format!("source {} of row {t} is outside table [{v}, {c}] + features [{k}, {c}]", sources[t])));
    }
    Ok(())
}

/// x [R, C] += y [P, C] with R a multiple of P > 0.
pub fn add<T: Rows>(x: &T, y: &T) -> Result<()> {
    same_cols("add", x, y)?;
    if y.n_rows() == 0 || !x.n_rows().is_multiple_of(y.n_rows()) {
        return Err(Error::shape("add", format!("{} += {}: rows do not repeat evenly", dims(x), dims(y))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    fn t(r: usize, c: usize) -> Tensor {
        Tensor::zeros(&[r, c])
    }
    fn row(slot: u32, kv_start: u32, kv_end: u32) -> AttnRow {
        AttnRow { slot, kv_start, kv_end }
    }

    #[test]
    fn attention_contract() {
        // H=4, Hkv=2, D=8, 2 slots of cap 5: k, v [10, 16].
        let (q, kv) = (t(2, 32), t(10, 16));
        assert!(attention(&q, &kv, &kv, &[row(0, 0, 5), row(1, 2, 3)], 4, 2, 8, 5).is_ok());
        let err = |rows: &[AttnRow], h, cap| attention(&t(rows.len(), h * 8), &kv, &kv, rows, h, 2, 8, cap).unwrap_err().to_string();
        assert!(err(&[row(2, 0, 1)], 4, 5).contains("row 0"), "slot outside");
        assert!(err(&[row(0, 3, 2)], 4, 5).contains("row 0"), "start after end");
        assert!(err(&[row(0, 0, 1), row(1, 0, 6)], 4, 5).contains("row 1"), "end past cap");
        assert!(err(&[row(0, 0, 1)], 3, 5).contains("H=3"), "H not a multiple of Hkv");
        assert!(err(&[row(0, 0, 1)], 4, 3).contains("cap=3"), "cache rows not whole slots");
        assert!(attention(&q, &kv, &t(10, 8), &[row(0, 0, 1), row(0, 0, 1)], 4, 2, 8, 5).is_err(), "v width");
    }

    #[test]
    fn attention_packed_contract() {
        // H=4, Hkv=2, D=8; sequences of 3 and 2 rows: q [5, 32], k, v [5, 16].
        let causal = PackedMask::Causal { window: None };
        let (q, kv) = (t(5, 32), t(5, 16));
        assert!(attention_packed(&q, &kv, &kv, &[3, 2], causal, 4, 2, 8).is_ok());
        assert!(attention_packed(&q, &kv, &kv, &[3, 0, 2], PackedMask::Bidirectional, 4, 2, 8).is_ok());
        assert!(attention_packed(&t(0, 32), &t(0, 16), &t(0, 16), &[], causal, 4, 2, 8).is_ok());
        let err = |lens: &[usize], q: &Tensor, k: &Tensor, v: &Tensor, mask, h, hkv| attention_packed(q, k, v, lens, mask, h, hkv, 8).unwrap_err().to_string();
        assert!(err(&[3, 3], &q, &kv, &kv, causal, 4, 2).contains("Ttot=6"), "lengths do not cover the rows");
        assert!(err(&[3, 2], &q, &t(4, 16), &kv, causal, 4, 2).contains("k [4, 16]"), "k rows");
        assert!(err(&[3, 2], &q, &kv, &t(5, 8), causal, 4, 2).contains("v [5, 8]"), "v width");
        assert!(err(&[3, 2], &t(5, 24), &kv, &kv, causal, 3, 2).contains("H=3"), "H not a multiple of Hkv");
        assert!(err(&[3, 2], &q, &t(5, 0), &t(5, 0), causal, 4, 0).contains("Hkv=0"), "no kv heads");
        assert!(err(&[3, 2], &q, &kv, &kv, PackedMask::Causal { window: Some(0) }, 4, 2).contains("Some(0)"), "empty window");
        assert!(attention_packed(&t(5, 0), &t(5, 0), &t(5, 0), &[5], causal, 4, 2, 0).is_err(), "D=0");
    }

    #[test]
    fn row_contracts() {
        assert!(add(&t(6, 3), &t(2, 3)).is_ok());
        assert!(add(&t(5, 3), &t(2, 3)).is_err());
        assert!(add(&t(4, 3), &t(2, 4)).is_err());
        assert!(scatter_rows(&t(2, 3), &t(4, 3), &[3, 0]).is_ok());
        assert!(scatter_rows(&t(2, 3), &t(4, 3), &[4, 0]).is_err());
        assert!(embedding(&t(5, 3), Some(&t(2, 3)), &[0, 6]).is_ok());
        assert!(embedding(&t(5, 3), Some(&t(2, 3)), &[7]).is_err());
        assert!(embedding(&t(5, 3), None, &[5]).is_err());
        assert!(rope(&t(3, 16), &t(3, 8), 2, 1, 8, 3).is_ok());
        assert!(rope(&t(3, 16), &t(3, 8), 2, 1, 8, 2).is_err());
    }
}
