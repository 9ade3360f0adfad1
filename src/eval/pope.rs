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
//! negative, anything else positive. Metrics per category, plus their mean (`average`). On stic's
//! own predictions files (lines with `key` = `category/question_id`) answers and labels are paired
//! by key, which is what the script's pairing gives on complete files.
//!
//! LLaVA answer files (lines without `key`: model_vqa_loader writes `question_id`, `prompt`,
//! `text`, no category) follow eval_pope.py (LLaVA c121f04) exactly:
//! - the category of an answer comes from LLaVA's question file, `llava_pope_test.jsonl` (looked
//!   for beside the `coco_pope_*.json` files and one folder up, LLaVA's `pope/` layout), as a dict
//!   by `question_id` (lines 71-72); an answer whose `question_id` is not in it is a KeyError there
//!   (line 78) and an error naming the answer file and line here;
//! - per annotation file, the answers of its category are taken in file order (line 78), all of
//!   them: an answer given twice counts twice, an unanswered question is simply absent;
//! - they are paired with the file's labels *by position* (`zip`, line 40): a missing or repeated
//!   answer shifts the pairs after it, and the pairs stop at the shorter list;
//! - `yes_ratio` is over all the category's answers (line 37), the counts over the pairs;
//!   `samples` is the number of answers (line 79), `total` the number of pairs;
//! - answers whose category has no annotation file are not scored (the loop is over the files,
//!   line 74); a category without answers is left out (the script would divide by zero).

use std::collections::HashMap;
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
    /// The category files, in load order.
    categories: Vec<String>,
    /// LLaVA's question file, when there is one: its path, and `question_id` (as JSON) -> category.
    questions: Option<(PathBuf, HashMap<String, String>)>,
}

/// LLaVA's POPE question file.
const QUESTIONS: &str = "llava_pope_test.jsonl";

fn read_questions(dir: &Path) -> Result<Option<(PathBuf, HashMap<String, String>)>> {
    let Some(path) = [dir.join(QUESTIONS), dir.join("..").join(QUESTIONS)].into_iter().find(|p| p.is_file()) else {
        return Ok(None);
    };
    let mut map = HashMap::new();
    for (line, q) in read_jsonl(&path)? {
        let at = format!("line {line}");
        let qid = id_field(&q, &path, &at, "question_id")?;
        let category = str_field(&q, &path, &at, "category")?;
        // A dict built from the lines: a later line wins.
        map.insert(qid.to_string(), category.to_string());
    }
    Ok(Some((path, map)))
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
        let mut categories = Vec::new();
        for path in &files {
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let category = name.strip_prefix("coco_pope_").unwrap_or(&name).to_string();
            categories.push(category.clone());
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
        let questions = read_questions(&dir)?;
        Ok(Pope { items, truth, categories, questions })
    }

    /// eval_pope.py on an answer file in LLaVA's format (see the top of this file).
    fn score_llava(&self, preds: &Predictions) -> Result<Map<String, Value>> {
        let (qpath, questions) = self.questions.as_ref().ok_or_else(|| {
            Error::config(
                &preds.path,
                "line 1: question_id",
                format!("an answer file in LLaVA's format (no `key`) names questions of LLaVA's {QUESTIONS}, which eval_pope.py needs for the categories: put it next to coco/"),
            )
        })?;
        let mut cat_of = Vec::with_capacity(preds.records.len());
        for r in &preds.records {
            let qid = r.fields.get("question_id").ok_or_else(|| preds.line_error(r, "question_id", "missing"))?;
            let c = questions
                .get(&qid.to_string())
                .ok_or_else(|| preds.line_error(r, "question_id", format!("`{qid}` names no question of {}", qpath.display())))?;
            cat_of.push(c.as_str());
        }
        let mut per = Map::new();
        for cat in &self.categories {
            let answers: Vec<bool> = preds.records.iter().zip(&cat_of).filter(|(_, c)| **c == cat).map(|(r, _)| says_yes(&r.text)).collect();
            if answers.is_empty() {
                continue;
            }
            let labels = self.truth.iter().filter(|(c, _)| c == cat).map(|(_, l)| *l);
            let mut counts = Counts::default();
            for (p, l) in answers.iter().zip(labels) {
                counts.add(*p, l);
            }
            let mut m = counts.metrics();
            m["yes_ratio"] = json!(answers.iter().filter(|&&y| y).count() as f64 / answers.len() as f64);
            m["samples"] = json!(answers.len());
            per.insert(cat.clone(), m);
        }
        Ok(per)
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
        let per = if preds.llava {
            self.score_llava(preds)?
        } else {
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
            cats.iter().map(|(c, counts)| (c.clone(), counts.metrics())).collect()
        };
        let mut avg = Map::new();
        for k in ["accuracy", "precision", "recall", "f1", "yes_ratio"] {
            let sum: f64 = per.values().map(|m| m[k].as_f64().unwrap_or(0.0)).sum();
            avg.insert(k.to_string(), json!(super::bench::ratio(sum, per.len() as f64)));
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
