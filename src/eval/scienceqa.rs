//! ScienceQA-IMG: multiple-choice accuracy.
//!
//! Files (LLaVA's `playground/data/eval/scienceqa`, docs/Evaluation.md): `--data` is the folder
//! holding `llava_test_CQM-A.json` (LLaVA's conversion of the test split: `[{"id", "image",
//! "conversations": [{"from": "human", "value"}, ...]}]`) and `problems.json` (ScienceQA's
//! `{pid: {"choices", "answer", ...}}`), with the images in `images/test/` (`--image-folder`
//! overrides); `--data` may also name the question file itself. The items are the questions with an
//! image (the IMG subset); predictions for the other questions of the file are still scored into
//! `accuracy`, as LLaVA's script does.
//!
//! Prompt (LLaVA `llava/eval/model_vqa_science.py`, `--single-pred-prompt`): the human turn without
//! `<image>`, stripped, then "\nAnswer with the option's letter from the given choices directly.";
//! the recorded prompt starts with "<image>\n" as LLaVA's `cur_prompt`.
//!
//! Scoring: LLaVA `llava/eval/eval_science_qa.py`: the prediction is a letter when it is exactly one
//! of A-E, or starts with "X. ", or contains exactly one match of `The answer is ([A-Z]).`;
//! otherwise FAILED. The letter counts only if it is within the question's choices and equals the
//! answer. `img_accuracy` is over predictions whose prompt contains `<image>` (the paper's
//! ScienceQA-IMG number).
//!
//! LLaVA answer files (lines without `key`, as model_vqa_science writes them) follow
//! eval_science_qa.py (LLaVA c121f04) exactly:
//! - the answers become a dict by `question_id` (line 46): of a question answered twice the later
//!   line counts; the ids are compared with the problem ids, which are strings, so a `question_id`
//!   that is not a string is an error here (it could never match there);
//! - the questions scored are the split's, `pid_splits.json`'s "test" list (lines 43, 47, 57; read
//!   from the `--data` folder when it is there, else the questions of `llava_test_CQM-A.json`, which
//!   is LLaVA's conversion of that split), each once, in that order;
//! - an unanswered question counts as wrong (text "FAILED", prompt "Unknown", lines 58-60), and so
//!   it is not multimodal: it is in `total` but not in `img_total` (line 85);
//! - an answer to a problem outside the split is ignored (the loop is over the split, line 57);
//!   an answer whose `question_id` names no problem of `problems.json` at all is an error naming
//!   the file and line (answers for another data set; the script would silently ignore it).

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::{json, Map, Value};

use super::bench::{file_in, folder_of, id_field, image_root, read_json, Bench, Benchmark, ImageRef, Item, Predictions, MC_SUFFIX};
use super::py;
use crate::error::{Error, Result};

const OPTIONS: [&str; 5] = ["A", "B", "C", "D", "E"];

/// The letter eval_science_qa.py reads from a prediction, or None (its "FAILED").
pub fn parse_letter(pred: &str) -> Option<char> {
    if OPTIONS.contains(&pred) {
        return pred.chars().next();
    }
    let chars: Vec<char> = pred.chars().collect();
    if chars.len() >= 3 && OPTIONS.iter().any(|o| o.starts_with(chars[0])) && chars[1] == '.' && chars[2] == ' ' {
        return Some(chars[0]);
    }
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"The answer is ([A-Z]).").expect("regex"));
    let found: Vec<char> = re.captures_iter(pred).map(|c| c[1].chars().next().expect("one letter")).collect();
    match found.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// `get_pred_idx`: the choice index of a letter, if within the first `n_choices` options.
pub fn pred_index(letter: Option<char>, n_choices: usize) -> Option<usize> {
    let l = letter?;
    OPTIONS.iter().take(n_choices).position(|o| o.starts_with(l))
}

struct Truth {
    answer: usize,
    n_choices: usize,
}

pub struct ScienceQa {
    items: Vec<Item>,
    truth: HashMap<String, Truth>,
    /// The problems of `problems.json` outside the question file (answers to them are ignored).
    other_problems: std::collections::HashSet<String>,
    /// The split scored for LLaVA answer files: its path (pid_splits.json or the question file) and ids.
    split: (std::path::PathBuf, Vec<String>),
}

impl ScienceQa {
    pub fn load(data: &Path, image_folder: Option<&Path>) -> Result<Self> {
        let qfile = file_in(data, "llava_test_CQM-A.json")?;
        let base = folder_of(data);
        let pfile = base.join("problems.json");
        let problems = read_json(&pfile)?;
        let problems = problems.as_object().ok_or_else(|| Error::config(&pfile, "<file>", "expected an object {pid: problem}"))?;
        let images = image_root(&base, image_folder, &["images/test"]);
        let qs = read_json(&qfile)?;
        let qs = qs.as_array().ok_or_else(|| Error::config(&qfile, "<file>", "expected a list of questions"))?;
        let mut items = Vec::new();
        let mut truth = HashMap::new();
        let mut ids = Vec::new();
        for (i, q) in qs.iter().enumerate() {
            let at = format!("entry {i}");
            let id = super::bench::id_text(&id_field(q, &qfile, &at, "id")?);
            let value = q
                .get("conversations")
                .and_then(|c| c.get(0))
                .and_then(|t| t.get("value"))
                .and_then(Value::as_str)
                .ok_or_else(|| Error::config(&qfile, format!("{at} (id {id}): conversations[0].value"), "missing or not a string"))?;
            let prob = problems.get(&id).ok_or_else(|| Error::config(&pfile, &id, "no such problem (the question file's id)"))?;
            let answer = prob.get("answer").and_then(Value::as_u64).ok_or_else(|| Error::config(&pfile, format!("{id}: answer"), "missing or not an index"))?;
            let n_choices = prob.get("choices").and_then(Value::as_array).map(Vec::len).ok_or_else(|| Error::config(&pfile, format!("{id}: choices"), "missing or not a list"))?;
            truth.insert(id.clone(), Truth { answer: answer as usize, n_choices });
            ids.push(id.clone());
            let Some(image) = q.get("image").and_then(Value::as_str) else { continue };
            let qs = py::strip(&value.replace("<image>", "")).to_string();
            let prompt = format!("{qs}\n{MC_SUFFIX}");
            items.push(Item {
                key: id.clone(),
                question_id: json!(id),
                record_prompt: format!("<image>\n{prompt}"),
                prompt,
                image: Some(ImageRef::File(images.join(image))),
                extra: Map::new(),
                group: items.len(),
            });
        }
        let split_path = base.join("pid_splits.json");
        let split = if split_path.is_file() {
            let v = read_json(&split_path)?;
            let test = v.get("test").and_then(Value::as_array).ok_or_else(|| Error::config(&split_path, "test", "missing or not a list"))?;
            let mut pids = Vec::with_capacity(test.len());
            for (i, p) in test.iter().enumerate() {
                let p = p.as_str().ok_or_else(|| Error::config(&split_path, format!("test[{i}]"), "not a string"))?;
                if !truth.contains_key(p) {
                    let prob = problems.get(p).ok_or_else(|| Error::config(&pfile, p, "no such problem (pid_splits.json's test split)"))?;
                    let answer = prob.get("answer").and_then(Value::as_u64).ok_or_else(|| Error::config(&pfile, format!("{p}: answer"), "missing or not an index"))?;
                    let n_choices = prob.get("choices").and_then(Value::as_array).map(Vec::len).ok_or_else(|| Error::config(&pfile, format!("{p}: choices"), "missing or not a list"))?;
                    truth.insert(p.to_string(), Truth { answer: answer as usize, n_choices });
                }
                pids.push(p.to_string());
            }
            (split_path, pids)
        } else {
            (qfile.clone(), ids)
        };
        let other_problems = problems.keys().filter(|k| !truth.contains_key(*k)).cloned().collect();
        Ok(ScienceQa { items, truth, other_problems, split })
    }

    /// eval_science_qa.py on an answer file in LLaVA's format (see the top of this file).
    fn score_llava(&self, preds: &Predictions) -> Result<Value> {
        let mut by_id: HashMap<&str, &super::bench::Record> = HashMap::new();
        for r in &preds.records {
            let id = match r.fields.get("question_id") {
                Some(Value::String(s)) => s.as_str(),
                other => return Err(preds.line_error(r, "question_id", format!("{} is not a string (the problem ids are)", other.map_or("missing".into(), Value::to_string)))),
            };
            if !self.truth.contains_key(id) && !self.other_problems.contains(id) {
                return Err(preds.line_error(r, "question_id", format!("`{id}` names no problem of problems.json")));
            }
            by_id.insert(id, r);
        }
        let (mut correct, mut img_correct, mut img_total, mut failed) = (0usize, 0usize, 0usize, 0usize);
        for pid in &self.split.1 {
            let t = &self.truth[pid];
            let (text, prompt) = match by_id.get(pid.as_str()) {
                Some(r) => (r.text.as_str(), r.fields.get("prompt").and_then(Value::as_str).ok_or_else(|| preds.line_error(r, "prompt", "missing or not a string"))?),
                None => ("FAILED", "Unknown"),
            };
            let letter = parse_letter(text);
            failed += usize::from(letter.is_none());
            let hit = pred_index(letter, t.n_choices) == Some(t.answer);
            correct += usize::from(hit);
            if prompt.contains("<image>") {
                img_total += 1;
                img_correct += usize::from(hit);
            }
        }
        let mut m = metrics(img_correct, img_total, correct, self.split.1.len(), failed);
        m["split"] = json!(self.split.0.display().to_string());
        Ok(m)
    }
}

/// The scorer's numbers (eval_science_qa.py's printout, as counts and ratios).
fn metrics(img_correct: usize, img_total: usize, correct: usize, total: usize, failed: usize) -> Value {
    json!({
        "img_accuracy": super::bench::ratio(img_correct as f64, img_total as f64),
        "img_correct": img_correct,
        "img_total": img_total,
        "accuracy": super::bench::ratio(correct as f64, total as f64),
        "correct": correct,
        "total": total,
        "failed_parses": failed,
    })
}

impl Benchmark for ScienceQa {
    fn bench(&self) -> Bench {
        Bench::ScienceQa
    }
    fn items(&self) -> &[Item] {
        &self.items
    }
    fn score(&self, preds: &Predictions) -> Result<Value> {
        if preds.llava {
            return self.score_llava(preds);
        }
        let (mut correct, mut total, mut img_correct, mut img_total, mut failed) = (0usize, 0usize, 0usize, 0usize, 0usize);
        for r in &preds.records {
            let t = self.truth.get(&r.key).ok_or_else(|| {
                Error::config(&preds.path, format!("line {}: key", r.line), format!("`{}` is not a question of the ScienceQA file", r.key))
            })?;
            let letter = parse_letter(&r.text);
            failed += usize::from(letter.is_none());
            let hit = pred_index(letter, t.n_choices) == Some(t.answer);
            let multimodal = r.fields.get("prompt").and_then(Value::as_str).is_some_and(|p| p.contains("<image>"));
            total += 1;
            correct += usize::from(hit);
            if multimodal {
                img_total += 1;
                img_correct += usize::from(hit);
            }
        }
        Ok(metrics(img_correct, img_total, correct, total, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letter_rules_of_eval_science_qa() {
        assert_eq!(parse_letter("B"), Some('B'));
        assert_eq!(parse_letter("C. a cat"), Some('C'));
        assert_eq!(parse_letter("C.a cat"), None);
        assert_eq!(parse_letter("F. x"), None);
        assert_eq!(parse_letter("Because ... The answer is D."), Some('D'));
        // Any character may follow the letter (the pattern's `.` is unescaped).
        assert_eq!(parse_letter("The answer is A!"), Some('A'));
        // Two matches: FAILED.
        assert_eq!(parse_letter("The answer is A. The answer is B."), None);
        assert_eq!(parse_letter("b"), None);
        assert_eq!(parse_letter(""), None);
        assert_eq!(pred_index(Some('C'), 2), None);
        assert_eq!(pred_index(Some('B'), 2), Some(1));
    }
}
