//! MathVista (testmini): answer extraction for multiple-choice and numeric questions, accuracy.
//!
//! Files (lupantech/MathVista `data/`): `--data` is `testmini.json` (`{pid: {"question", "image",
//! "choices", "unit", "precision", "answer", "question_type", "answer_type", "metadata"}}`; a JSON
//! list of such problems, e.g. the Hugging Face split exported, also works) or the folder holding
//! it. `image` paths are relative to that folder (`--image-folder` overrides the base).
//!
//! Prompt: the problem's `query` field when it has one, else `query.json` next to the data
//! (`{pid: query}`), else the same text built as `evaluation/build_query.py` does for zero-shot
//! "solution" queries in `query.json`'s order: the hint for the answer type, "Question: ..." with
//! " (Unit: ...)", and "Choices:\n(A) ...".
//!
//! Scoring: `evaluation/extract_answer.py` then `evaluation/calculate_score.py`. Extraction takes,
//! in order: the response itself when it is one of the choices (multi_choice), `str(int(response))`
//! (integer), `str(float(response))` (float), the quick rule `The answer is "(.*)"\.`. Where the
//! official pipeline then asks GPT-4 to extract the answer, this runner uses rules instead:
//! VLMEvalKit's `can_infer` letter matching for multi_choice (its MathVista prefetch,
//! `vlmeval/dataset/utils/mathvista.py`), and the last number in the response for integer / float
//! (counted in `fallback_extractions`); anything else passes through unchanged. Normalisation as
//! `normalize_extracted_answer`: multi_choice maps "(X)" or a letter to its choice, else the choice
//! nearest in Levenshtein distance; integer is `str(int(float(x)))`; float is
//! `str(round(float(x), precision))`; list is the text. Correct iff the normalised string equals
//! the answer string.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::{json, Map, Value};

use super::bench::{folder_of, image_root, read_json, Bench, Benchmark, ImageRef, Item, Predictions};
use super::py;
use crate::error::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct Problem {
    pub question_type: String,
    pub answer_type: String,
    pub choices: Vec<String>,
    pub precision: Option<f64>,
    pub answer: String,
    /// (field, value) pairs the accuracy is broken down by: question_type, answer_type and
    /// metadata's language, source, category, task, context, grade, skills.
    pub groups: Vec<(String, String)>,
}

/// How an extraction was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extraction {
    /// One of extract_answer.py's rules.
    Official,
    /// A rule standing in for the GPT-4 extractor.
    Fallback,
    /// No rule applied: the response as is.
    Raw,
}

/// The answer text extracted from a response, and which kind of rule found it.
pub fn extract_answer(response: &str, p: &Problem) -> (String, Extraction) {
    if response.is_empty() {
        return (String::new(), Extraction::Official);
    }
    if p.question_type == "multi_choice" && p.choices.iter().any(|c| c == response) {
        return (response.to_string(), Extraction::Official);
    }
    if p.answer_type == "integer" {
        if let Some(i) = py::parse_int(response) {
            return (i, Extraction::Official);
        }
    }
    if p.answer_type == "float" {
        if let Some(f) = py::parse_float(response) {
            return (py::float_repr(f), Extraction::Official);
        }
    }
    static QUICK: OnceLock<Regex> = OnceLock::new();
    if let Some(c) = QUICK.get_or_init(|| Regex::new(r#"The answer is "(.*)"\."#).expect("regex")).captures(response) {
        return (c[1].to_string(), Extraction::Official);
    }
    if p.question_type == "multi_choice" {
        let choices: Vec<(char, String)> = p.choices.iter().enumerate().map(|(i, c)| ((b'A' + i as u8) as char, c.clone())).collect();
        if let Some(l) = super::mmbench::can_infer(response, &choices) {
            if l != 'Z' {
                return (l.to_string(), Extraction::Fallback);
            }
        }
    } else if p.answer_type == "integer" || p.answer_type == "float" {
        static NUM: OnceLock<Regex> = OnceLock::new();
        let re = NUM.get_or_init(|| Regex::new(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+").expect("regex"));
        if let Some(m) = re.find_iter(response).last() {
            return (m.as_str().replace(',', ""), Extraction::Fallback);
        }
    }
    (response.to_string(), Extraction::Raw)
}

/// calculate_score.py `normalize_extracted_answer` (ignore_empty_extractions off): None where
/// Python gets None.
pub fn normalize_extracted(extraction: &str, p: &Problem) -> Option<String> {
    match (p.question_type.as_str(), p.answer_type.as_str()) {
        ("multi_choice", _) => {
            let mut e = py::strip(extraction).to_string();
            static LETTER: OnceLock<Regex> = OnceLock::new();
            if let Some(c) = LETTER.get_or_init(|| Regex::new(r"\(([a-zA-Z])\)").expect("regex")).captures(&e) {
                e = c[1].to_uppercase();
            }
            let idx = (0..p.choices.len()).find(|&i| e.len() == 1 && e.as_bytes()[0] == b'A' + i as u8);
            match idx {
                Some(i) => Some(p.choices[i].clone()),
                // get_most_similar: the first choice at the least edit distance.
                None => p.choices.iter().min_by_key(|c| py::levenshtein(&e, c)).cloned(),
            }
        }
        (_, "integer") => py::parse_float(extraction).and_then(py::float_to_int_string),
        (_, "float") => {
            let prec = p.precision?;
            if !prec.is_finite() || prec < 0.0 {
                return None;
            }
            py::parse_float(extraction).map(|x| py::float_repr(py::round(x, prec as usize)))
        }
        (_, "list") => Some(extraction.to_string()),
        _ => None,
    }
}

/// Whether a response is right, with the normalised prediction and how it was extracted.
pub fn judge(response: &str, p: &Problem) -> (bool, Option<String>, Extraction) {
    let (ext, how) = extract_answer(response, p);
    let pred = normalize_extracted(&ext, p);
    (pred.as_deref() == Some(p.answer.as_str()), pred, how)
}

/// The zero-shot query of build_query.py, in query.json's order (hint first).
pub fn build_query(question: &str, unit: Option<&str>, p: &Problem) -> String {
    let hint = if p.question_type == "multi_choice" {
        "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.".to_string()
    } else {
        match (p.answer_type.as_str(), p.precision.map(|x| x as i64)) {
            ("integer", _) => "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.".into(),
            ("float", Some(1)) => "Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.".into(),
            ("float", Some(2)) => "Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.".into(),
            ("float", Some(n)) => format!("Hint: Please answer the question requiring a floating-point number with {n} decimal places and provide the final value at the end."),
            ("list", _) => "Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.".into(),
            _ => String::new(),
        }
    };
    let mut q = format!("Question: {question}");
    if let Some(u) = unit.filter(|u| !u.is_empty()) {
        q.push_str(&format!(" (Unit: {u})"));
    }
    let mut parts = vec![hint, q];
    if !p.choices.is_empty() {
        let mut c = vec!["Choices:".to_string()];
        c.extend(p.choices.iter().enumerate().map(|(i, x)| format!("({}) {x}", (b'A' + i as u8) as char)));
        parts.push(c.join("\n"));
    }
    parts.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join("\n")
}

/// A JSON value as Python's `str` prints it, for answers and choices.
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => i.to_string(),
            None => py::float_repr(n.as_f64()?),
        }),
        _ => None,
    }
}

pub struct MathVista {
    items: Vec<Item>,
    problems: Vec<Problem>,
}

impl MathVista {
    pub fn load(data: &Path, image_folder: Option<&Path>) -> Result<Self> {
        let path = super::bench::file_in(data, "testmini.json")?;
        let base = folder_of(&path);
        let images = image_folder.map(Path::to_path_buf).unwrap_or_else(|| image_root(&base, None, &[]));
        let v = read_json(&path)?;
        let list: Vec<(String, &Value)> = match &v {
            Value::Object(m) => m.iter().map(|(k, p)| (k.clone(), p)).collect(),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, p)| Ok((p.get("pid").and_then(text_of).ok_or_else(|| Error::config(&path, format!("entry {i}: pid"), "missing"))?, p)))
                .collect::<Result<_>>()?,
            _ => return Err(Error::config(&path, "<file>", "expected {pid: problem} or a list of problems")),
        };
        let queries_path = base.join("query.json");
        let queries: HashMap<String, String> = if queries_path.is_file() {
            serde_json::from_value(read_json(&queries_path)?).map_err(|e| Error::Json { path: queries_path.clone(), source: e })?
        } else {
            HashMap::new()
        };
        let mut items = Vec::new();
        let mut problems = Vec::new();
        for (pid, v) in list {
            let at = format!("problem {pid}");
            let s = |f: &str| super::bench::str_field(v, &path, &at, f);
            let question = s("question")?;
            let image = s("image")?;
            let question_type = s("question_type")?.to_string();
            let answer_type = s("answer_type")?.to_string();
            let answer = v.get("answer").and_then(text_of).ok_or_else(|| Error::config(&path, format!("{at}: answer"), "missing or not a string"))?;
            let choices: Vec<String> = match v.get("choices") {
                None | Some(Value::Null) => vec![],
                Some(Value::Array(a)) => a.iter().map(|c| text_of(c).ok_or_else(|| Error::config(&path, format!("{at}: choices"), "not a list of strings"))).collect::<Result<_>>()?,
                Some(_) => return Err(Error::config(&path, format!("{at}: choices"), "not a list")),
            };
            if question_type == "multi_choice" && choices.is_empty() {
                return Err(Error::config(&path, format!("{at}: choices"), "a multi_choice problem without choices"));
            }
            let precision = v.get("precision").and_then(Value::as_f64);
            let mut groups = vec![("question_type".to_string(), question_type.clone()), ("answer_type".to_string(), answer_type.clone())];
            if let Some(Value::Object(meta)) = v.get("metadata") {
                for k in ["language", "source", "category", "task", "context", "grade"] {
                    if let Some(Value::String(x)) = meta.get(k) {
                        groups.push((k.to_string(), x.clone()));
                    }
                }
                if let Some(Value::Array(skills)) = meta.get("skills") {
                    groups.extend(skills.iter().filter_map(Value::as_str).map(|x| ("skills".to_string(), x.to_string())));
                }
            }
            let p = Problem { question_type, answer_type, choices, precision, answer, groups };
            let query = match v.get("query").and_then(Value::as_str) {
                Some(q) => q.to_string(),
                None => match queries.get(&pid) {
                    Some(q) => q.clone(),
                    None => build_query(question, v.get("unit").and_then(Value::as_str), &p),
                },
            };
            items.push(Item {
                key: pid.clone(),
                question_id: json!(pid),
                record_prompt: query.clone(),
                prompt: query,
                image: Some(ImageRef::File(images.join(image))),
                extra: Map::new(),
                group: items.len(),
            });
            problems.push(p);
        }
        Ok(MathVista { items, problems })
    }
}

impl Benchmark for MathVista {
    fn bench(&self) -> Bench {
        Bench::MathVista
    }
    fn items(&self) -> &[Item] {
        &self.items
    }
    fn score(&self, preds: &Predictions) -> Result<Value> {
        let (mut correct, mut total, mut fallback) = (0usize, 0usize, 0usize);
        // field -> value -> (correct, total)
        let mut by: Map<String, Value> = Map::new();
        let mut tally: Vec<((String, String), (usize, usize))> = Vec::new();
        for (i, r) in preds.matched(&self.items)? {
            let p = &self.problems[i];
            let (hit, _, how) = judge(&r.text, p);
            total += 1;
            correct += usize::from(hit);
            fallback += usize::from(how == Extraction::Fallback);
            for g in &p.groups {
                match tally.iter_mut().find(|(k, _)| k == g) {
                    Some((_, t)) => {
                        t.0 += usize::from(hit);
                        t.1 += 1;
                    }
                    None => tally.push((g.clone(), (usize::from(hit), 1))),
                }
            }
        }
        for ((field, value), (c, t)) in tally {
            let e = by.entry(field).or_insert_with(|| json!({}));
            e[value] = json!({ "accuracy": super::bench::ratio(c as f64, t as f64), "correct": c, "total": t });
        }
        Ok(json!({
            "accuracy": super::bench::ratio(correct as f64, total as f64),
            "correct": correct,
            "total": total,
            "fallback_extractions": fallback,
            "by": by,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prob(qt: &str, at: &str, choices: &[&str], precision: Option<f64>, answer: &str) -> Problem {
        Problem {
            question_type: qt.into(),
            answer_type: at.into(),
            choices: choices.iter().map(|s| s.to_string()).collect(),
            precision,
            answer: answer.into(),
            groups: vec![],
        }
    }

    #[test]
    fn extraction_and_normalisation() {
        let mc = prob("multi_choice", "text", &["135°", "140°", "145°", "150°"], None, "145°");
        assert!(judge("145°", &mc).0);
        assert!(judge("C", &mc).0);
        assert!(judge("(C) 145°", &mc).0);
        assert!(judge("The answer is \"C\".", &mc).0);
        assert_eq!(judge("The correct answer is C.", &mc).2, Extraction::Fallback);
        assert!(judge("The correct answer is C.", &mc).0);
        // Nothing to match: the nearest choice by edit distance ("145" is one edit from "145°").
        assert!(judge("145", &mc).0);
        assert!(!judge("B", &mc).0);
        // An empty response picks the nearest choice to "" (the first of the shortest).
        assert_eq!(judge("", &mc).1.as_deref(), Some("135°"));

        let int = prob("free_form", "integer", &[], None, "1000");
        assert!(judge("1000", &int).0);
        assert!(judge("1000.0", &int).0); // fallback: the last number, int(float(x))
        assert!(judge("The volume is 1,000 ml, so 1000", &int).0);
        assert!(!judge("999.9", &int).0);

        let f1 = prob("free_form", "float", &[], Some(1.0), "1.2");
        assert!(judge("1.2", &f1).0);
        assert!(judge("1.24", &f1).0);
        // Python's round on the binary value: 1.15 is 1.1499999..., 1.25 an exact tie (to even).
        assert!(!judge("1.15", &f1).0);
        assert!(judge("1.25", &f1).0);
        assert!(judge("1.16", &f1).0);
        let f2 = prob("free_form", "float", &[], Some(2.0), "18.27");
        assert!(judge("18.27", &f2).0);
        assert!(judge("18.265", &f2).0); // 18.26500000000000056...
        assert!(!judge("18.2", &f2).0);
        // Not a float for Python; the fallback reads the number in it.
        assert_eq!(judge("18.27%", &f2).2, Extraction::Fallback);
        let list = prob("free_form", "list", &[], None, "[2014, 2016]");
        assert!(judge("[2014, 2016]", &list).0);
        assert!(!judge("[2014,2016]", &list).0);
    }
}
