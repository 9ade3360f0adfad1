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

pub(crate) mod bench;
pub mod chair;
pub mod chartqa;
pub mod llava_bench;
pub mod mathvista;
pub mod mmbench;
pub mod mmbench_submission;
pub mod mme;
pub mod mmvet;
pub mod pope;
pub mod py;
pub mod scienceqa;
pub mod textvqa;
pub mod world;

pub use bench::{id_text, record_key, Bench, Benchmark, ImageRef, Item, Predictions, Record, MC_SUFFIX, SHORT_SUFFIX};

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::progress::Progress;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::generate::{Pipeline, Request, SamplingParams};

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
        Bench::Chair => Box::new(chair::Chair::load(data, image_folder)?),
        Bench::Mme => Box::new(mme::Mme::load(data, image_folder)?),
        Bench::World => Box::new(world::World::load(data)?),
    })
}

/// Read a predictions file. With `torn_tail_ok`, a last line without its newline that does not
/// parse (a run killed mid-write) is dropped and reported in the second value.
///
/// stic's own files carry a unique `key` per line, and a later line with the same key replaces an
/// earlier one (resume). A file whose first line has no `key` is an answer file in LLaVA's format:
/// every line is kept, in order, and the benchmark's scorer joins them to its questions exactly as
/// the official script does (see "LLaVA answer files" at the top of each benchmark's file).
pub fn read_predictions(path: &Path, bench: &dyn Benchmark, torn_tail_ok: bool) -> Result<(Predictions, bool)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut records: Vec<Record> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut torn = false;
    let mut llava: Option<bool> = None;
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
        let is_llava = *llava.get_or_insert(!fields.contains_key("key"));
        let rec = Record { line: i + 1, key: key.clone(), text, fields };
        match seen.get(&key) {
            Some(&j) if !is_llava => records[j] = rec,
            _ => {
                seen.insert(key, records.len());
                records.push(rec);
            }
        }
    }
    Ok((Predictions { path: path.to_path_buf(), records, llava: llava.unwrap_or(false) }, torn))
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
