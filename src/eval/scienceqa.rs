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
        Ok(ScienceQa { items, truth })
    }
}

impl Benchmark for ScienceQa {
    fn bench(&self) -> Bench {
        Bench::ScienceQa
    }
    fn items(&self) -> &[Item] {
        &self.items
    }
    fn score(&self, preds: &Predictions) -> Result<Value> {
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
        Ok(json!({
            "img_accuracy": super::bench::ratio(img_correct as f64, img_total as f64),
            "img_correct": img_correct,
            "img_total": img_total,
            "accuracy": super::bench::ratio(correct as f64, total as f64),
            "correct": correct,
            "total": total,
            "failed_parses": failed,
        }))
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
