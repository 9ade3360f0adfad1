//! `stic eval`: the paper's benchmarks, read from their usual local files, answered with
//! `generate::Pipeline` and scored with ports of the official scoring code.
//!
//! One file per benchmark, each with (1) a loader for the official local files (laid out as LLaVA's
//! `playground/data/eval/<bench>`), (2) the prompt of each item (LLaVA's eval suffixes, MMBench's
//! rotated option orders), (3) a pure scoring function from predictions to metrics that follows the
//! official scoring code (the source is cited at the top of each file). LLaVA-Bench and MM-Vet
//! are judged by GPT-4 outside: their runners write the answers in the judges' input formats.
//!
//! The runner (`run`) writes `OUT/predictions.jsonl`, one JSON line per answered item, flushed as
//! it goes; a second run with the same OUT skips the items already there (resume). A line is
//! LLaVA's answer-file record (`question_id`, `prompt`, `text`, `answer_id`, `model_id`, `metadata`)
//! plus `key` (the item's unique id in this benchmark) and per-benchmark fields (MMBench's
//! `round_id`, `options`, `option_char`; POPE's `category`). `OUT/metrics.json` holds the metrics.
//! All rates are fractions in [0, 1]. Metrics cover the items that have a prediction (`answered`
//! of `items`), so a `--limit` run scores what it answered.

pub mod chartqa;
pub mod llava_bench;
pub mod mathvista;
pub mod mmbench;
pub mod mmvet;
pub mod pope;
pub mod py;
pub mod scienceqa;
pub mod textvqa;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::progress::Progress;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::generate::{Pipeline, Request, SamplingParams};
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
}

impl Bench {
    pub const ALL: [Bench; 8] =
        [Bench::ScienceQa, Bench::TextVqa, Bench::ChartQa, Bench::MmBench, Bench::Pope, Bench::MathVista, Bench::LlavaBench, Bench::MmVet];
    /// The `--bench` names, in `ALL`'s order.
    pub const NAMES: [&'static str; 8] = ["scienceqa", "textvqa", "chartqa", "mmbench", "pope", "mathvista", "llava-bench", "mm-vet"];

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
            Bench::ScienceQa | Bench::TextVqa | Bench::ChartQa | Bench::MmBench | Bench::Pope => 128,
            Bench::MathVista | Bench::LlavaBench | Bench::MmVet => 1024,
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

/// The lines of a predictions file, one per key (a later line replaces an earlier one with the
/// same key, as a Python dict built from the lines would).
#[derive(Clone, Debug)]
pub struct Predictions {
    pub path: PathBuf,
    pub records: Vec<Record>,
}

impl Predictions {
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

/// Load `bench` from `data` (its file or folder, see each module); `image_folder` overrides where
/// the images are looked up.
pub fn load(bench: Bench, data: &Path, image_folder: Option<&Path>) -> Result<Box<dyn Benchmark>> {
    if !data.exists() {
        return Err(Error::Input(format!("--data {}: no such file or folder", data.display())));
    }
    Ok(match bench {
        Bench::ScienceQa => Box::new(scienceqa::ScienceQa::load(data, image_folder)?),
        Bench::TextVqa => Box::new(textvqa::TextVqa::load(data, image_folder)?),
        Bench::ChartQa => Box::new(chartqa::ChartQa::load(data, image_folder)?),
        Bench::MmBench => Box::new(mmbench::MmBench::load(data)?),
        Bench::Pope => Box::new(pope::Pope::load(data, image_folder)?),
        Bench::MathVista => Box::new(mathvista::MathVista::load(data, image_folder)?),
        Bench::LlavaBench => Box::new(llava_bench::LlavaBench::load(data, image_folder)?),
        Bench::MmVet => Box::new(mmvet::MmVet::load(data, image_folder)?),
    })
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

/// Read a predictions file. With `torn_tail_ok`, a last line without its newline that does not
/// parse (a run killed mid-write) is dropped and reported in the second value.
pub fn read_predictions(path: &Path, bench: &dyn Benchmark, torn_tail_ok: bool) -> Result<(Predictions, bool)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut records: Vec<Record> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut torn = false;
    let n_lines = text.lines().count();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Map<String, Value> = match serde_json::from_str(line) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(Error::config(path, format!("line {}", i + 1), "expected a JSON object")),
            Err(e) => {
                if torn_tail_ok && i + 1 == n_lines && !text.ends_with('\n') {
                    torn = true;
                    break;
                }
                return Err(Error::config(path, format!("line {}", i + 1), format!("invalid JSON: {e}")));
            }
        };
        let key = bench
            .record_key(&fields)
            .ok_or_else(|| Error::config(path, format!("line {}: key", i + 1), "no `key` and no `question_id`"))?;
        let text = fields
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::config(path, format!("line {}: text", i + 1), "missing or not a string"))?
            .to_string();
        let rec = Record { line: i + 1, key: key.clone(), text, fields };
        match seen.get(&key) {
            Some(&j) => records[j] = rec,
            None => {
                seen.insert(key, records.len());
                records.push(rec);
            }
        }
    }
    Ok((Predictions { path: path.to_path_buf(), records }, torn))
}

/// Score an existing predictions file (no model).
pub fn score_file(bench: &dyn Benchmark, predictions: &Path) -> Result<Value> {
    let (preds, _) = read_predictions(predictions, bench, false)?;
    summarize(bench, &preds)
}

/// The metrics object: `bench`, `items`, `answered`, then the benchmark's own metrics.
pub fn summarize(bench: &dyn Benchmark, preds: &Predictions) -> Result<Value> {
    let m = bench.score(preds)?;
    let mut out = Map::new();
    out.insert("bench".into(), json!(bench.bench().name()));
    out.insert("items".into(), json!(bench.items().len()));
    out.insert("answered".into(), json!(preds.records.len()));
    if let Value::Object(m) = m {
        out.extend(m);
    }
    Ok(Value::Object(out))
}

/// Write `metrics.json` (and the judge's submission file, when the benchmark has one) into `out`.
pub fn write_outputs(bench: &dyn Benchmark, preds: &Predictions, metrics: &mut Value, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    if let Some(sub) = bench.write_submission(preds, out)? {
        metrics["submission"] = json!(sub.display().to_string());
    }
    let p = out.join("metrics.json");
    std::fs::write(&p, serde_json::to_string_pretty(metrics).expect("json") + "\n").map_err(|e| Error::io(&p, e))
}

// ---------------------------------------------------------------------------------------------
// The runner.

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Sampling (greedy by default); `max_new_tokens` as given.
    pub sampling: SamplingParams,
    /// Items per `Pipeline::generate` call.
    pub batch_size: usize,
    /// Only the first N questions.
    pub limit: Option<usize>,
    pub quiet: bool,
    /// Written as each prediction's `model_id`.
    pub model_id: String,
}

/// LLaVA's `get_model_name_from_path`: the folder's name, or `parent_checkpoint-N` for a
/// `checkpoint-N` folder.
pub fn model_id(model: &Path, adapter: Option<&Path>) -> String {
    let name = |p: &Path| {
        let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let last = p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match p.parent().and_then(Path::file_name) {
            Some(parent) if last.starts_with("checkpoint-") => format!("{}_{last}", parent.to_string_lossy()),
            _ => last,
        }
    };
    match adapter {
        Some(a) => format!("{}+{}", name(model), name(a)),
        None => name(model),
    }
}

/// An id in the shape of LLaVA's `shortuuid.uuid()` (22 characters of base57), derived from the
/// key and the answer so that reruns write the same file.
fn answer_id(key: &str, model_id: &str, text: &str) -> String {
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    // FNV-1a over the inputs seeds the crate's generator.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0]).chain(model_id.bytes()).chain([0]).chain(text.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut rng = crate::rng::Rng::new(h);
    (0..22).map(|_| ALPHABET[rng.below(ALPHABET.len())] as char).collect()
}

/// The predictions line of an answered item.
pub fn record_for(item: &Item, text: &str, model_id: &str) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), json!(item.key));
    m.insert("question_id".into(), item.question_id.clone());
    m.insert("prompt".into(), json!(item.record_prompt));
    m.insert("text".into(), json!(text));
    m.insert("answer_id".into(), json!(answer_id(&item.key, model_id, text)));
    m.insert("model_id".into(), json!(model_id));
    m.insert("metadata".into(), json!({}));
    for (k, v) in &item.extra {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

/// Answer every item (skipping those already in `out/predictions.jsonl`), then score them all.
/// Returns the metrics (also written to `out/metrics.json`).
pub fn run<B: crate::backend::Backend>(bench: &dyn Benchmark, pipe: &Pipeline<B>, out: &Path, opts: &RunOptions) -> Result<Value> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let pred_path = out.join("predictions.jsonl");
    let done: HashSet<String> = if pred_path.exists() {
        let (p, torn) = read_predictions(&pred_path, bench, true)?;
        if torn {
            // Drop the half-written last line so that appending starts on a fresh line.
            let text = std::fs::read_to_string(&pred_path).map_err(|e| Error::io(&pred_path, e))?;
            let keep = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            std::fs::write(&pred_path, keep).map_err(|e| Error::io(&pred_path, e))?;
        }
        p.records.into_iter().map(|r| r.key).collect()
    } else {
        HashSet::new()
    };
    let items: Vec<&Item> = bench
        .items()
        .iter()
        .filter(|it| opts.limit.is_none_or(|n| it.group < n))
        .filter(|it| !done.contains(&it.key))
        .collect();
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&pred_path).map_err(|e| Error::io(&pred_path, e))?;
    let pb = Progress::new(items.len(), 0, "questions", opts.quiet);
    let t0 = std::time::Instant::now();
    let mut tokens = 0usize;
    for chunk in items.chunks(opts.batch_size.max(1)) {
        let mut reqs = Vec::with_capacity(chunk.len());
        for it in chunk {
            let images = match &it.image {
                Some(img) => vec![img.load()?],
                None => vec![],
            };
            reqs.push(Request { prompt: pipe.format_prompt(&it.prompt, images.len(), false), images });
        }
        let gens = pipe.generate(&reqs, &opts.sampling)?;
        tokens += gens.iter().map(|g| g.output_ids.len()).sum::<usize>();
        for (it, g) in chunk.iter().zip(&gens) {
            // LLaVA: `tokenizer.batch_decode(..., skip_special_tokens=True)[0].strip()`.
            let text = py::strip(&g.text);
            let line = serde_json::to_string(&record_for(it, text, &opts.model_id)).expect("json");
            writeln!(file, "{line}").and_then(|_| file.flush()).map_err(|e| Error::io(&pred_path, e))?;
            pb.inc();
        }
    }
    pb.finish();
    drop(file);
    let (preds, _) = read_predictions(&pred_path, bench, false)?;
    let mut metrics = summarize(bench, &preds)?;
    // Throughput of this invocation (answers resumed from an earlier one are not counted).
    metrics["generated_tokens"] = serde_json::json!(tokens);
    metrics["generation_seconds"] = serde_json::json!(t0.elapsed().as_secs_f64());
    write_outputs(bench, &preds, &mut metrics, out)?;
    Ok(metrics)
}

/// Everything `stic eval` does, from arguments to metrics.
#[derive(Clone, Debug)]
pub struct EvalArgs {
    pub bench: Bench,
    pub data: PathBuf,
    pub image_folder: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub adapter: Option<PathBuf>,
    /// Score this file instead of generating.
    pub predictions: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub max_new_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    pub batch_size: usize,
    pub limit: Option<usize>,
    pub quiet: bool,
    /// Where the model runs (`cpu`, `cuda`, `cuda:N`).
    pub device: crate::backend::Device,
}

pub fn eval(a: &EvalArgs) -> Result<Value> {
    let sp = crate::progress::spinner(&format!("loading {} from {}", a.bench.name(), a.data.display()), a.quiet);
    let bench = load(a.bench, &a.data, a.image_folder.as_deref())?;
    sp.finish_and_clear();
    if let Some(p) = &a.predictions {
        let (preds, _) = read_predictions(p, bench.as_ref(), false)?;
        let mut metrics = summarize(bench.as_ref(), &preds)?;
        if let Some(out) = &a.out {
            write_outputs(bench.as_ref(), &preds, &mut metrics, out)?;
        }
        return Ok(metrics);
    }
    let model = a.model.as_ref().ok_or_else(|| Error::Input("--model is required unless --predictions is given".into()))?;
    let out = a.out.as_ref().ok_or_else(|| Error::Input("--out is required unless --predictions is given".into()))?;
    if a.batch_size == 0 {
        return Err(Error::Input("--batch-size must be at least 1".into()));
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        return Err(Error::Input(format!("--top-p must be in (0, 1], got {}", a.top_p)));
    }
    if a.temperature < 0.0 {
        return Err(Error::Input(format!("--temperature must be >= 0, got {}", a.temperature)));
    }
    let sp = crate::progress::spinner(&format!("loading model {}", model.display()), a.quiet);
    let opts = RunOptions {
        sampling: SamplingParams {
            max_new_tokens: a.max_new_tokens.unwrap_or_else(|| a.bench.default_max_new_tokens()),
            temperature: a.temperature,
            top_k: 0,
            top_p: a.top_p,
            seed: a.seed,
        },
        batch_size: a.batch_size,
        limit: a.limit,
        quiet: a.quiet,
        model_id: model_id(model, a.adapter.as_deref()),
    };
    struct Answer<'a> {
        bench: &'a dyn Benchmark,
        out: &'a Path,
        opts: RunOptions,
        spinner: indicatif::ProgressBar,
    }
    impl crate::generate::WithPipeline for Answer<'_> {
        type Out = Value;
        fn run<B: crate::backend::Backend>(self, pipe: Pipeline<B>) -> Result<Value> {
            self.spinner.finish_and_clear();
            run(self.bench, &pipe, self.out, &self.opts)
        }
    }
    crate::generate::with_pipeline(a.device, model, None, a.adapter.as_deref(), Answer { bench: bench.as_ref(), out, opts, spinner: sp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_names_round_trip() {
        for b in Bench::ALL {
            assert_eq!(Bench::from_name(b.name()).unwrap(), b);
        }
        assert!(Bench::from_name("vqav2").unwrap_err().to_string().contains("scienceqa"));
    }

    #[test]
    fn record_keys() {
        let m = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(record_key(&m(json!({"key": "a/1", "question_id": 3}))).unwrap(), "a/1");
        assert_eq!(record_key(&m(json!({"question_id": 3, "round_id": 2}))).unwrap(), "3/2");
        assert_eq!(record_key(&m(json!({"question_id": "x"}))).unwrap(), "x");
        assert!(record_key(&m(json!({"text": "x"}))).is_none());
    }

    #[test]
    fn answer_ids_look_like_shortuuid() {
        let a = answer_id("k", "m", "t");
        assert_eq!(a.len(), 22);
        assert_eq!(a, answer_id("k", "m", "t"));
        assert_ne!(a, answer_id("k", "m", "u"));
    }
}
