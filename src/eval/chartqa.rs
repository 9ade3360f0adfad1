//! ChartQA: relaxed accuracy (5% on numbers, exact match otherwise).
//!
//! Files (the ChartQA dataset's `test/` folder): `--data` is the folder holding `test_human.json`
//! and/or `test_augmented.json` (`[{"imgname", "query", "label"}]`) with the charts in `png/`
//! (`--image-folder` overrides), or one of the two files. Each split is scored on its own and
//! pooled (`relaxed_accuracy`); the paper's number is usually the mean of the two splits
//! (`average`).
//!
//! Prompt: the query, then LLaVA's short-answer suffix "\nAnswer the question using a single word
//! or phrase." (docs/Evaluation.md of haotian-liu/LLaVA).
//!
//! Scoring: `relaxed_correctness` of google-research/pix2struct `pix2struct/metrics.py` (the metric
//! ChartQA's paper defines, end of its section 5.1): when the prediction parses as a float
//! (Python's `float`, a trailing `%` divides by 100) and the target parses as a non-zero float,
//! correct iff |pred - target| / |target| <= 0.05; otherwise case-insensitive exact match.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::bench::{image_root, read_json, str_field, Bench, Benchmark, ImageRef, Item, Predictions, SHORT_SUFFIX};
use super::py;
use crate::error::{Error, Result};

const SPLITS: [&str; 2] = ["test_human", "test_augmented"];

/// pix2struct's `_to_float`.
fn to_float(text: &str) -> Option<f64> {
    match text.strip_suffix('%') {
        // `text.rstrip("%")`: every trailing '%'.
        Some(_) => py::parse_float(text.trim_end_matches('%')).map(|v| v / 100.0),
        None => py::parse_float(text),
    }
}

/// pix2struct's `relaxed_correctness(target, prediction, max_relative_change=0.05)`.
pub fn relaxed_correctness(target: &str, prediction: &str) -> bool {
    match (to_float(prediction), to_float(target)) {
        // `if prediction_float is not None and target_float:` (a zero target falls through; a NaN
        // target is truthy and its relative change NaN, so false, as here).
        (Some(p), Some(t)) if t != 0.0 => (p - t).abs() / t.abs() <= 0.05,
        _ => prediction.to_lowercase() == target.to_lowercase(),
    }
}

pub struct ChartQa {
    items: Vec<Item>,
    /// Per item: (split, label).
    truth: Vec<(String, String)>,
}

/// A label as text: ChartQA writes strings, but a number is read as Python's `str` would print it.
fn label_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => i.to_string(),
            None => py::float_repr(n.as_f64()?),
        }),
        _ => None,
    }
}

impl ChartQa {
    pub fn load(data: &Path, image_folder: Option<&Path>) -> Result<Self> {
        let files: Vec<(String, PathBuf)> = if data.is_file() {
            let stem = data.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            vec![(stem, data.to_path_buf())]
        } else {
            let found: Vec<_> = SPLITS.iter().map(|s| (s.to_string(), data.join(format!("{s}.json")))).filter(|(_, p)| p.is_file()).collect();
            if found.is_empty() {
                return Err(Error::Input(format!("{}: no test_human.json or test_augmented.json in this folder", data.display())));
            }
            found
        };
        let base = super::bench::folder_of(data);
        let images = image_root(&base, image_folder, &["png"]);
        let mut items = Vec::new();
        let mut truth = Vec::new();
        for (split, path) in files {
            let v = read_json(&path)?;
            let list = v.as_array().ok_or_else(|| Error::config(&path, "<file>", "expected a list of {imgname, query, label}"))?;
            for (i, e) in list.iter().enumerate() {
                let at = format!("entry {i}");
                let img = str_field(e, &path, &at, "imgname")?;
                let query = str_field(e, &path, &at, "query")?;
                let label = e.get("label").and_then(label_text).ok_or_else(|| Error::config(&path, format!("{at}: label"), "missing or not a string"))?;
                let key = format!("{split}/{i}");
                let prompt = format!("{query}\n{SHORT_SUFFIX}");
                let mut extra = Map::new();
                extra.insert("split".into(), json!(split));
                items.push(Item {
                    question_id: json!(key),
                    key,
                    record_prompt: prompt.clone(),
                    prompt,
                    image: Some(ImageRef::File(images.join(img))),
                    extra,
                    group: items.len(),
                });
                truth.push((split.clone(), label));
            }
        }
        Ok(ChartQa { items, truth })
    }
}

impl Benchmark for ChartQa {
    fn bench(&self) -> Bench {
        Bench::ChartQa
    }
    fn items(&self) -> &[Item] {
        &self.items
    }
    fn score(&self, preds: &Predictions) -> Result<Value> {
        let mut per: Vec<(String, usize, usize)> = Vec::new();
        let (mut correct, mut total) = (0, 0);
        for (i, r) in preds.matched(&self.items)? {
            let (split, label) = &self.truth[i];
            let hit = relaxed_correctness(label, &r.text);
            let k = match per.iter().position(|(s, _, _)| s == split) {
                Some(k) => k,
                None => {
                    per.push((split.clone(), 0, 0));
                    per.len() - 1
                }
            };
            per[k].1 += usize::from(hit);
            per[k].2 += 1;
            correct += usize::from(hit);
            total += 1;
        }
        let mut splits = Map::new();
        for (s, c, t) in &per {
            splits.insert(s.clone(), json!({ "relaxed_accuracy": super::bench::ratio(*c as f64, *t as f64), "correct": c, "total": t }));
        }
        let average = if per.is_empty() { 0.0 } else { per.iter().map(|(_, c, t)| super::bench::ratio(*c as f64, *t as f64)).sum::<f64>() / per.len() as f64 };
        Ok(json!({
            "relaxed_accuracy": super::bench::ratio(correct as f64, total as f64),
            "correct": correct,
            "total": total,
            "average": average,
            "splits": splits,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_correctness_like_pix2struct() {
        assert!(relaxed_correctness("100", "105"));
        assert!(relaxed_correctness("100", "95"));
        assert!(!relaxed_correctness("100", "105.1"));
        assert!(relaxed_correctness("20", "21"));
        assert!(relaxed_correctness("50%", "0.5"));
        assert!(relaxed_correctness("0.5", "50%"));
        assert!(relaxed_correctness("12", " 12.4 "));
        // A zero target is compared as text.
        assert!(!relaxed_correctness("0", "0.0"));
        assert!(relaxed_correctness("0", "0"));
        assert!(relaxed_correctness("Yes", "yes"));
        assert!(!relaxed_correctness("Yes", "yes."));
        // "1,000" is not a float: text comparison.
        assert!(!relaxed_correctness("1000", "1,000"));
    }
}
