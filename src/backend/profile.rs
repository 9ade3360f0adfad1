//! Per-op timing for `stic profile`: each backend op, when profiling is on, records its time
//! under its name (CUDA: a pair of events around the launch, read after one sync at the end;
//! CPU: wall time). [`table`] prints the totals.

use std::collections::HashMap;

/// The time spent in one op over a profiled run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OpTime {
    pub op: String,
    pub calls: usize,
    pub ms: f64,
}

/// Sums samples (op, ms) per op, largest total first.
pub fn summarize(samples: impl IntoIterator<Item = (&'static str, f64)>) -> Vec<OpTime> {
    let mut by_op: HashMap<&'static str, (usize, f64)> = HashMap::new();
    for (op, ms) in samples {
        let e = by_op.entry(op).or_default();
        e.0 += 1;
        e.1 += ms;
    }
    let mut rows: Vec<OpTime> = by_op.into_iter().map(|(op, (calls, ms))| OpTime { op: op.to_string(), calls, ms }).collect();
    rows.sort_by(|a, b| b.ms.total_cmp(&a.ms).then(a.op.cmp(&b.op)));
    rows
}

/// The table `op | calls | total ms | mean us | % of ops`.
pub fn table(rows: &[OpTime]) -> String {
    let total: f64 = rows.iter().map(|r| r.ms).sum();
    let mut s = format!("{:<18} {:>8} {:>12} {:>12} {:>7}\n", "op", "calls", "total ms", "mean us", "%");
    for r in rows {
        s += &format!(
            "{:<18} {:>8} {:>12.3} {:>12.1} {:>6.1}%\n",
            r.op,
            r.calls,
            r.ms,
            1e3 * r.ms / r.calls.max(1) as f64,
            if total > 0.0 { 100.0 * r.ms / total } else { 0.0 }
        );
    }
    s += &format!("{:<18} {:>8} {:>12.3}\n", "all ops", rows.iter().map(|r| r.calls).sum::<usize>(), total);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_per_op_largest_first() {
        let rows = summarize([("matmul", 2.0), ("rmsnorm", 0.5), ("matmul", 3.0)]);
        assert_eq!(rows[0], OpTime { op: "matmul".into(), calls: 2, ms: 5.0 });
        assert_eq!(rows[1], OpTime { op: "rmsnorm".into(), calls: 1, ms: 0.5 });
        let t = table(&rows);
        assert!(t.contains("matmul") && t.contains("90.9%") && t.contains("all ops"), "{t}");
    }
}
