//! What every benchmark shares: the `Bench` names, an `Item` to answer, a predictions `Record`,
//! the `Benchmark` trait each `eval::<bench>` implements, and the loaders' file helpers (paths,
//! JSON/JSONL reading, typed fields, ids, ratios, the predictions line key).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::image::{decode_image, load_image, RgbImage};

/// LLaVA's suffix for multiple-choice questions (`model_vqa_science.py`, `model_vqa_mmbench.py`).
pub const MC_SUFFIX: &str = "Answer with the option's letter from the given choices directly.";
/// LLaVA's suffix for short-answer questions (docs/Evaluation.md, the TextVQA / POPE question files).
pub const SHORT_SUFFIX: &str = "Answer the question using a single word or phrase.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bench {
    ScienceQa,
    TextVqa,
    ChartQa,
    MmBench,
    Pope,
    MathVista,
    LlavaBench,
    MmVet,
    Chair,
    Mme,
    World,
}

impl Bench {
    pub const ALL: [Bench; 11] = [
        Bench::ScienceQa,
        Bench::TextVqa,
        Bench::ChartQa,
        Bench::MmBench,
        Bench::Pope,
        Bench::MathVista,
        Bench::LlavaBench,
        Bench::MmVet,
        Bench::Chair,
        Bench::Mme,
        Bench::World,
    ];
    /// The `--bench` names, in `ALL`'s order.
    pub const NAMES: [&'static str; 11] =
        ["scienceqa", "textvqa", "chartqa", "mmbench", "pope", "mathvista", "llava-bench", "mm-vet", "chair", "mme", "world"];

    pub fn name(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|&b| b == self).expect("listed")]
    }

    pub fn from_name(s: &str) -> Result<Bench> {
        Self::NAMES
            .iter()
            .position(|&n| n == s)
            .map(|i| Self::ALL[i])
            .ok_or_else(|| Error::Input(format!("unknown benchmark `{s}`; one of: {}", Self::NAMES.join(", "))))
    }

    /// LLaVA generates up to 1024 tokens everywhere; the short-answer benchmarks stop at EOS long
    /// before 128 unless the model rambles, which the scoring would reject anyway.
    pub fn default_max_new_tokens(self) -> usize {
        match self {
            Bench::ScienceQa | Bench::TextVqa | Bench::ChartQa | Bench::MmBench | Bench::Pope | Bench::Mme | Bench::World => 128,
            Bench::MathVista | Bench::LlavaBench | Bench::MmVet | Bench::Chair => 1024,
        }
    }
}

/// An image to show with an item: a file, or bytes held in the data file (MMBench's base64 column).
#[derive(Clone, Debug)]
pub enum ImageRef {
    File(PathBuf),
    Bytes { name: String, data: Arc<Vec<u8>> },
}

impl ImageRef {
    pub fn load(&self) -> Result<RgbImage> {
        match self {
            ImageRef::File(p) => load_image(p),
            ImageRef::Bytes { name, data } => decode_image(data, Path::new(name)),
        }
    }
}

/// One question to answer.
#[derive(Clone, Debug)]
pub struct Item {
    /// Unique within the benchmark: the resume key and the `key` field of its prediction.
    pub key: String,
    /// The id as the official files write it (a number or a string).
    pub question_id: Value,
    /// The user turn given to the chat template (which puts the image placeholder first).
    pub prompt: String,
    /// The `prompt` written with the prediction (LLaVA's `cur_prompt`).
    pub record_prompt: String,
    pub image: Option<ImageRef>,
    /// Extra fields written with the prediction.
    pub extra: Map<String, Value>,
    /// The question this item belongs to (`--limit` counts questions: MMBench's rotations of one
    /// question are one question).
    pub group: usize,
}

/// One line of a predictions file.
#[derive(Clone, Debug)]
pub struct Record {
    /// 1-based line number in the file (for error messages).
    pub line: usize,
    pub key: String,
    pub text: String,
    pub fields: Map<String, Value>,
}

/// The lines of a predictions file. In stic's own files (lines with a `key`), one per key: a later
/// line replaces an earlier one with the same key (the resume rule; stic writes unique keys). In an
/// answer file in LLaVA's format (its first line has no `key`: what model_vqa_loader,
/// model_vqa_science and model_vqa_mmbench write), every line in file order, duplicates included:
/// each benchmark's scorer then joins them to the questions as its official script does (`llava`).
#[derive(Clone, Debug)]
pub struct Predictions {
    pub path: PathBuf,
    pub records: Vec<Record>,
    /// An answer file in LLaVA's format (no `key` on its first line): all lines kept.
    pub llava: bool,
}

impl Predictions {
    /// An error about line `r` of this file.
    pub fn line_error(&self, r: &Record, field: &str, msg: impl Into<String>) -> Error {
        Error::config(&self.path, format!("line {}: {field}", r.line), msg)
    }

    /// The item index of each record, in item order; a key that names no item is an error.
    pub fn matched<'a>(&'a self, items: &[Item]) -> Result<Vec<(usize, &'a Record)>> {
        let index: HashMap<&str, usize> = items.iter().enumerate().map(|(i, it)| (it.key.as_str(), i)).collect();
        let mut out = Vec::with_capacity(self.records.len());
        for r in &self.records {
            match index.get(r.key.as_str()) {
                Some(&i) => out.push((i, r)),
                None => {
                    return Err(Error::config(
                        &self.path,
                        format!("line {}: key", r.line),
                        format!("`{}` names no item of the benchmark data (predictions for another benchmark or data file?)", r.key),
                    ))
                }
            }
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out)
    }
}

/// A loaded benchmark: its items and the ground truth its scorer needs.
pub trait Benchmark {
    fn bench(&self) -> Bench;
    fn items(&self) -> &[Item];
    /// Metrics of the predictions (a JSON object); pure: no model, no files but the data's.
    fn score(&self, preds: &Predictions) -> Result<Value>;
    /// The key of a predictions line: its `key` field, else one derived from the line (a LLaVA
    /// answers file has none).
    fn record_key(&self, fields: &Map<String, Value>) -> Option<String> {
        record_key(fields)
    }
    /// Write the answers in the external judge's input format; returns the file written.
    fn write_submission(&self, _preds: &Predictions, _out: &Path) -> Result<Option<PathBuf>> {
        Ok(None)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared file helpers for the loaders.

/// `data` if it is a folder, else its parent.
pub(crate) fn folder_of(data: &Path) -> PathBuf {
    if data.is_dir() {
        data.to_path_buf()
    } else {
        data.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
    }
}

/// The file named `name` in `data` (a folder), or `data` itself when it is a file.
pub(crate) fn file_in(data: &Path, name: &str) -> Result<PathBuf> {
    if data.is_file() {
        return Ok(data.to_path_buf());
    }
    let p = data.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::Input(format!("{}: no {name} in this folder", data.display())))
    }
}

/// `image_folder` if given, else the first of `candidates` (relative to `base`) that exists, else
/// the first candidate (so that a missing image names the usual place), else `base`.
pub(crate) fn image_root(base: &Path, image_folder: Option<&Path>, candidates: &[&str]) -> PathBuf {
    if let Some(f) = image_folder {
        return f.to_path_buf();
    }
    let mut paths = candidates.iter().map(|c| base.join(c));
    candidates
        .iter()
        .map(|c| base.join(c))
        .find(|p| p.is_dir())
        .or_else(|| paths.next())
        .unwrap_or_else(|| base.to_path_buf())
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), source: e })
}

/// The non-blank lines of a JSONL file, parsed, with their 1-based line numbers.
pub(crate) fn read_jsonl(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line)
            .map_err(|e| Error::config(path, format!("line {}", i + 1), format!("invalid JSON: {e}")))?;
        out.push((i + 1, v));
    }
    Ok(out)
}

/// A required string field of a JSON object; the error names the file, the entry and the field.
pub(crate) fn str_field<'a>(v: &'a Value, path: &Path, at: &str, field: &str) -> Result<&'a str> {
    v.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::config(path, format!("{at}: {field}"), "missing or not a string"))
}

/// A required id field (number or string).
pub(crate) fn id_field(v: &Value, path: &Path, at: &str, field: &str) -> Result<Value> {
    match v.get(field) {
        Some(x @ (Value::String(_) | Value::Number(_))) => Ok(x.clone()),
        _ => Err(Error::config(path, format!("{at}: {field}"), "missing or not a number or string")),
    }
}

/// An id as text: a string as is, a number as JSON writes it.
pub fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `n / d`, 0 when `d` is 0 (the official scripts would divide by zero; a metrics file cannot hold
/// NaN).
pub(crate) fn ratio(n: f64, d: f64) -> f64 {
    if d == 0.0 {
        0.0
    } else {
        n / d
    }
}

// ---------------------------------------------------------------------------------------------
// Predictions files.

/// The key of a predictions line: its `key`, else (a LLaVA answers file) its `question_id`,
/// followed by `/round_id` when there is one (MMBench).
pub fn record_key(fields: &Map<String, Value>) -> Option<String> {
    if let Some(Value::String(k)) = fields.get("key") {
        return Some(k.clone());
    }
    let qid = match fields.get("question_id")? {
        v @ (Value::String(_) | Value::Number(_)) => id_text(v),
        _ => return None,
    };
    Some(match fields.get("round_id") {
        Some(r @ Value::Number(_)) => format!("{qid}/{r}"),
        _ => qid,
    })
}
