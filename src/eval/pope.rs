//! POPE: yes/no object hallucination; accuracy, precision, recall, F1 and yes-ratio per category.
//!
//! Files (POPE's `output/coco`, which LLaVA puts in `playground/data/eval/pope/coco`): `--data` is a
//! folder holding `coco_pope_{adversarial,popular,random}.json` (directly or in `coco/`), or one
//! such file. Each line of those files is `{"question_id", "image", "text", "label"}` (JSON lines,
//! despite the extension); the category is the file name's `coco_pope_` suffix. Images are COCO
//! val2014: `val2014/` next to the files or one folder up (LLaVA's layout), `--image-folder`
//! overrides.
//!
//! Prompt: the question, then "\nAnswer the question using a single word or phrase." (as in
//! LLaVA's `llava_pope_test.jsonl`, scripts/v1_5/eval/pope.sh).
//!
//! Scoring: LLaVA `llava/eval/eval_pope.py`: keep the text before the first '.', drop ',', split on
//! ' '; the answer is "no" if one of the words is "No", "not" or "no", else "yes". Labels "no" are
//! negative, anything else positive. Metrics per category, plus their mean (`average`). (The script
//! pairs answers and labels by position; here by key, which is the same on complete files.)

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::bench::{id_field, id_text, image_root, read_jsonl, str_field, Bench, Benchmark, ImageRef, Item, Predictions, SHORT_SUFFIX};
use crate::error::{Error, Result};

/// eval_pope.py's reading of an answer: true for "yes".
pub fn says_yes(text: &str) -> bool {
    let first = match text.find('.') {
        Some(i) => &text[..i],
        None => text,
    };
    let t = first.replace(',', "");
    !t.split(' ').any(|w| w == "No" || w == "not" || w == "no")
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    pub fn_: usize,
}

impl Counts {
    pub fn add(&mut self, pred_yes: bool, label_yes: bool) {
        match (pred_yes, label_yes) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, false) => self.tn += 1,
            (false, true) => self.fn_ += 1,
        }
    }

    /// The metrics eval_pope.py prints (0 where it would divide by zero).
    pub fn metrics(&self) -> Value {
        let (tp, fp, tn, fn_) = (self.tp as f64, self.fp as f64, self.tn as f64, self.fn_ as f64);
        let n = tp + fp + tn + fn_;
        let precision = super::bench::ratio(tp, tp + fp);
        let recall = super::bench::ratio(tp, tp + fn_);
        let f1 = super::bench::ratio(2.0 * precision * recall, precision + recall);
        json!({
            "accuracy": super::bench::ratio(tp + tn, n),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "yes_ratio": super::bench::ratio(tp + fp, n),
            "tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn_,
            "total": self.tp + self.fp + self.tn + self.fn_,
        })
    }
}

pub struct Pope {
    items: Vec<Item>,
    /// Per item: (category, label is yes).
    truth: Vec<(String, bool)>,
}

fn pope_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("coco_pope_") && n.ends_with(".json")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Pope {
    pub fn load(data: &Path, image_folder: Option<&Path>) -> Result<Self> {
        let files = if data.is_file() {
            vec![data.to_path_buf()]
        } else {
            let mut f = pope_files(data);
            if f.is_empty() {
                f = pope_files(&data.join("coco"));
            }
            if f.is_empty() {
                return Err(Error::Input(format!("{}: no coco_pope_*.json files here or in coco/", data.display())));
            }
            f
        };
        let dir = super::bench::folder_of(&files[0]);
        let images = image_root(&dir, image_folder, &["val2014", "../val2014", "images"]);
        let mut items = Vec::new();
        let mut truth = Vec::new();
        for path in &files {
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let category = name.strip_prefix("coco_pope_").unwrap_or(&name).to_string();
            for (line, q) in read_jsonl(path)? {
                let at = format!("line {line}");
                let qid = id_field(&q, path, &at, "question_id")?;
                let image = str_field(&q, path, &at, "image")?;
                let text = str_field(&q, path, &at, "text")?;
                let label = str_field(&q, path, &at, "label")?;
                let prompt = format!("{text}\n{SHORT_SUFFIX}");
                let mut extra = Map::new();
                extra.insert("category".into(), json!(category));
                items.push(Item {
                    key: format!("{category}/{}", id_text(&qid)),
                    question_id: qid,
                    record_prompt: prompt.clone(),
                    prompt,
                    image: Some(ImageRef::File(images.join(image))),
                    extra,
                    group: items.len(),
                });
                truth.push((category.clone(), label != "no"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for it in &items {
            if !seen.insert(it.key.as_str()) {
                return Err(Error::Input(format!("POPE data: question `{}` appears twice", it.key)));
            }
        }
        Ok(Pope { items, truth })
    }
}

impl Benchmark for Pope {
    fn bench(&self) -> Bench {
        Bench::Pope
    }
    fn items(&self) -> &[Item] {
        &self.items
    }
    fn score(&self, preds: &Predictions) -> Result<Value> {
        let mut cats: Vec<(String, Counts)> = Vec::new();
        for (i, r) in preds.matched(&self.items)? {
            let (cat, label) = &self.truth[i];
            let k = match cats.iter().position(|(c, _)| c == cat) {
                Some(k) => k,
                None => {
                    cats.push((cat.clone(), Counts::default()));
                    cats.len() - 1
                }
            };
            cats[k].1.add(says_yes(&r.text), *label);
        }
        let per: Map<String, Value> = cats.iter().map(|(c, counts)| (c.clone(), counts.metrics())).collect();
        let mut avg = Map::new();
        for k in ["accuracy", "precision", "recall", "f1", "yes_ratio"] {
            let sum: f64 = cats.iter().map(|(c, _)| per[c][k].as_f64().unwrap_or(0.0)).sum();
            avg.insert(k.to_string(), json!(super::bench::ratio(sum, cats.len() as f64)));
        }
        Ok(json!({ "categories": per, "average": avg }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_reading_of_eval_pope() {
        assert!(says_yes("Yes"));
        assert!(says_yes("Yes, there is a dog."));
        assert!(!says_yes("No"));
        assert!(!says_yes("No, there is not."));
        assert!(!says_yes("There is not a dog"));
        // Only the first sentence counts, and "No." is "No" before the period.
        assert!(says_yes("Yes. There is no cat."));
        assert!(!says_yes("No."));
        // "NO" and "None" are not in the list; a comma is dropped before splitting.
        assert!(says_yes("NO"));
        assert!(says_yes("None"));
        assert!(!says_yes("no,"));
        // Words are split on single spaces only.
        assert!(says_yes("there is\nno dog"));
    }

    #[test]
    fn metrics_by_hand() {
        let mut c = Counts::default();
        for (p, l) in [(true, true), (true, true), (true, false), (false, false), (false, true)] {
            c.add(p, l);
        }
        let m = c.metrics();
        assert_eq!(m["accuracy"], json!(3.0 / 5.0));
        assert_eq!(m["precision"], json!(2.0 / 3.0));
        assert_eq!(m["recall"], json!(2.0 / 3.0));
        assert_eq!(m["yes_ratio"], json!(3.0 / 5.0));
    }
}
