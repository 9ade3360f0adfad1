//! `stic csr-prefs`: CSR's preference pairs (official inference_csr step1-3: sample.py, score.py,
//! construct.py) over a prompt file, one JSON line per prompt, appended and flushed, resumable.
//!
//! For each entry `{id, image, input}` of `--data` (CSR-Prompt-Dataset-12k.json's format): the
//! image `--images/<prefix><image>`, the question with `<image>` removed (sample.py L108), the
//! prompt `<system> USER: <image>\n<question> ASSISTANT:` (conv v1), the sentence tree
//! (`tree::search_many`: `batch_size` prompts' trees together), cleaning, one CLIP score per kept sentence alone (batched per prompt), sibling
//! ranks, path values and the pair. A line carries what `train-dpo` reads (`image` relative to the
//! output's folder, `prompt` = the bare question, `chosen`, `rejected`) plus `id`, the values of
//! both paths, the number of complete paths and the whole tree (`tree`: every node's tokens, text,
//! scores, ranks, flags) for inspection. An unreadable image, or a tree without a complete path,
//! is recorded in `OUT.skipped` and the run goes on.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::generate::Pipeline;
use crate::image::load_image;
use crate::model::ClipModel;
use crate::progress::Progress;
use crate::stic::jsonl::{sidecar, JsonlLog};
use crate::stic::prefs::relative_path;
use crate::stic::{Sink, Summary};

use super::tree::{clean, path_tokens, paths, pick, rank, search_many, Node, Reward, TreeParams};

/// The Vicuna v1 system line of CSR's prompts (utils.py conv `v1`).
pub const V1_SYSTEM: &str =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// Options of `csr_prefs` (`stic csr-prefs`).
#[derive(Clone, Debug)]
pub struct CsrPrefsArgs {
    pub data: PathBuf,
    pub images: PathBuf,
    /// Prepended to each entry's `image` (sample.py: `COCO_train2014_`).
    pub image_prefix: String,
    pub clip: PathBuf,
    pub out: PathBuf,
    pub tree: TreeParams,
    pub reward: Reward,
    /// score.py: children whose cleaned text is shorter are skipped.
    pub min_chars: usize,
    /// utils.py `exceeds_newline_limit`.
    pub max_newlines: usize,
    /// Put before ` USER: ...` (empty: none).
    pub system: String,
    /// Only the first N entries of the file.
    pub limit: Option<usize>,
    /// Prompts whose trees are searched together (fixed chunks of the file, so a resumed run
    /// builds every tree in the same batch as an uninterrupted one).
    pub batch_size: usize,
    pub quiet: bool,
    /// Stop after writing this many lines in this run (resume tests).
    pub stop_after: Option<usize>,
}

impl CsrPrefsArgs {
    /// The official settings (sample.py, score.py, construct.py and their step scripts; docs/CSR.md)
    /// for the LVLM in `model`: sentences end at the tokenizer's "." unless `sentence_end` is given,
    /// the pad and final (EOS) ids come from its config; the Vicuna v1 system line; prompts batched
    /// by 4.
    pub fn official(model: &Path, clip: &Path, data: &Path, images: &Path, out: &Path, sentence_end: Option<u32>) -> Result<Self> {
        let paths = crate::config::CheckpointPaths::new(model);
        let sentence_end = match sentence_end {
            Some(id) => id,
            None => {
                let tok = crate::text::Tokenizer::from_file(&paths.tokenizer)?;
                tok.token_id(".").ok_or_else(|| Error::Input(format!("{}: the tokenizer has no \".\" token; give the sentence end's id", paths.tokenizer.display())))?
            }
        };
        let cfg = crate::config::LlavaConfig::from_file(&model.join("config.json"))?;
        let tree = TreeParams::csr(sentence_end, cfg.pad_token_id.unwrap_or(0), cfg.text.eos_token_ids.clone());
        Ok(CsrPrefsArgs {
            data: data.to_path_buf(),
            images: images.to_path_buf(),
            image_prefix: "COCO_train2014_".into(),
            clip: clip.to_path_buf(),
            out: out.to_path_buf(),
            tree,
            reward: Reward::Code { alpha: 0.9 },
            min_chars: 4,
            max_newlines: 5,
            system: V1_SYSTEM.into(),
            limit: None,
            batch_size: 4,
            quiet: false,
            stop_after: None,
        })
    }
}

/// What a run did, with the search's work.
#[derive(Clone, Debug, Default)]
pub struct CsrSummary {
    pub items: Summary,
    /// Children (candidate sentences) generated in this run.
    pub candidates: usize,
    /// Beam-tokens decoded in this run.
    pub decoded: usize,
}

impl CsrSummary {
    pub fn candidates_per_sec(&self) -> f64 {
        self.candidates as f64 / self.items.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One entry of the prompt file.
#[derive(Clone, Debug, serde::Deserialize)]
struct Entry {
    id: serde_json::Value,
    image: String,
    input: String,
}

/// One output line.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CsrRecord {
    pub id: serde_json::Value,
    pub image: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub reward: &'static str,
    pub chosen_value: f64,
    pub rejected_value: f64,
    pub chosen_path: Vec<usize>,
    pub rejected_path: Vec<usize>,
    pub n_paths: usize,
    pub tree: Vec<Node>,
}

/// The resume key of an entry: its id as JSON text.
fn key(id: &serde_json::Value) -> String {
    id.to_string()
}

/// Build (or resume) the CSR preference file. See the module doc.
pub fn csr_prefs<B: Backend>(pipe: &Pipeline<B>, clip: &ClipModel<B>, args: &CsrPrefsArgs) -> Result<CsrSummary> {
    let text = std::fs::read_to_string(&args.data).map_err(|e| Error::io(&args.data, e))?;
    let mut entries: Vec<Entry> = serde_json::from_str(&text).map_err(|e| Error::config(&args.data, "entries", format!("expected a list of {{id, image, input}}: {e}")))?;
    if let Some(n) = args.limit {
        entries.truncate(n);
    }
    let (mut log, done) = JsonlLog::open(&args.out)?;
    let skipped_path = sidecar(&args.out, ".skipped");
    let (mut skip_log, skipped) = JsonlLog::open(&skipped_path)?;
    let ids = |v: &[serde_json::Value]| -> HashSet<String> { v.iter().filter_map(|l| l.get("id").map(key)).collect() };
    let (done, skipped) = (ids(&done), ids(&skipped));
    let finished = |e: &Entry| done.contains(&key(&e.id)) || skipped.contains(&key(&e.id));
    let resumed = entries.iter().filter(|e| finished(e)).count();
    let mut summary = CsrSummary { items: Summary { selected: entries.len(), resumed, ..Default::default() }, ..Default::default() };
    let progress = Progress::new(entries.len(), resumed, "prompts", args.quiet);
    let out_dir = args.out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let t0 = Instant::now();
    'chunks: for chunk in entries.chunks(args.batch_size.max(1)) {
        if chunk.iter().all(finished) {
            continue;
        }
        // The whole chunk is searched (also its already written prompts, after a restart), so that
        // every tree is built in the same batch as in an uninterrupted run.
        let todo: Vec<&Entry> = chunk.iter().filter(|e| !skipped.contains(&key(&e.id))).collect();
        let outcomes = run_chunk(pipe, clip, args, &todo, out_dir, &mut summary)?;
        let mut sink = Sink { log: &mut log, skip_log: &mut skip_log, skipped_path: &skipped_path, progress: &progress, summary: &mut summary.items, stop_after: args.stop_after };
        for (e, outcome) in todo.iter().zip(outcomes) {
            if done.contains(&key(&e.id)) {
                continue;
            }
            let what = image_path(args, e).display().to_string();
            let (_, stop) = sink.record(outcome, &what, |msg| serde_json::json!({"id": e.id, "image": e.image, "error": msg}))?;
            if stop {
                break 'chunks;
            }
        }
        log.sync()?;
    }
    log.sync()?;
    progress.finish();
    summary.items.elapsed = t0.elapsed();
    Ok(summary)
}

fn image_path(args: &CsrPrefsArgs, e: &Entry) -> PathBuf {
    args.images.join(format!("{}{}", args.image_prefix, e.image))
}

/// A prompt ready to search: its image, question, prompt ids and input embeddings.
struct Prepared<B: Backend> {
    img: crate::image::RgbImage,
    question: String,
    prompt_ids: Vec<u32>,
    x: B::Tensor,
}

/// Load and embed one prompt; an image that cannot be read is `Ok(Err(reason))`.
fn prepare<B: Backend>(pipe: &Pipeline<B>, args: &CsrPrefsArgs, e: &Entry) -> Result<std::result::Result<Prepared<B>, String>> {
    let img = match load_image(&image_path(args, e)) {
        Ok(img) => img,
        Err(err @ (Error::Io { .. } | Error::Image { .. })) => return Ok(Err(err.to_string())),
        Err(err) => return Err(err),
    };
    let question = e.input.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "");
    let body = pipe.format_prompt(&question, 1, false);
    let templated = if args.system.is_empty() { body } else { format!("{} {body}", args.system) };
    let prompt_ids = pipe.prompt_ids(&templated, 1)?;
    let (x, _) = pipe.embed(&prompt_ids, std::slice::from_ref(&img))?;
    Ok(Ok(Prepared { img, question, prompt_ids, x }))
}

/// Search the trees of a chunk of prompts together, then score and pair each. A prompt whose
/// image cannot be read, or whose tree has no complete path, gets `Err(reason)`.
fn run_chunk<B: Backend>(
    pipe: &Pipeline<B>,
    clip: &ClipModel<B>,
    args: &CsrPrefsArgs,
    todo: &[&Entry],
    out_dir: &Path,
    summary: &mut CsrSummary,
) -> Result<Vec<std::result::Result<CsrRecord, String>>> {
    let mut ready = Vec::new();
    let mut outcomes: Vec<Option<std::result::Result<CsrRecord, String>>> = Vec::new();
    for e in todo {
        match prepare(pipe, args, e)? {
            Ok(p) => {
                ready.push(p);
                outcomes.push(None);
            }
            Err(msg) => outcomes.push(Some(Err(msg))),
        }
    }
    let mut metas = Vec::new();
    let mut inputs = Vec::new();
    for p in ready {
        metas.push((p.img, p.question, p.prompt_ids.clone()));
        inputs.push((p.prompt_ids, p.x));
    }
    let trees = search_many(pipe, inputs, &args.tree)?;
    let mut results = metas.into_iter().zip(trees);
    for (e, slot) in todo.iter().zip(outcomes.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        let ((img, question, _), tree) = results.next().expect("a tree per prepared prompt");
        summary.candidates += tree.candidates;
        summary.decoded += tree.decoded;
        *slot = Some(pair(pipe, clip, args, e, &img, question, tree.nodes, out_dir)?);
    }
    Ok(outcomes.into_iter().map(|o| o.expect("every prompt has an outcome")).collect())
}

/// Clean, score, rank and pick one tree's pair.
#[allow(clippy::too_many_arguments)]
fn pair<B: Backend>(
    pipe: &Pipeline<B>,
    clip: &ClipModel<B>,
    args: &CsrPrefsArgs,
    e: &Entry,
    img: &crate::image::RgbImage,
    question: String,
    mut nodes: Vec<Node>,
    out_dir: &Path,
) -> Result<std::result::Result<CsrRecord, String>> {
    let kept = clean(&mut nodes, args.max_newlines, args.min_chars);
    if !kept.is_empty() {
        let texts: Vec<String> = kept.iter().map(|&n| nodes[n].text.clone()).collect();
        for (&n, s) in kept.iter().zip(clip.scores(img, &texts)?) {
            nodes[n].clip = Some(s);
        }
    }
    rank(&mut nodes);
    let ps = paths(&nodes, args.reward, args.tree.beam.length_penalty);
    let Some((c, r)) = pick(&ps, args.reward) else {
        return Ok(Err(format!("no complete path among {} sentences ({} kept)", nodes.len() - 1, kept.len())));
    };
    let answer = |i: usize| -> Result<String> {
        let last = *ps[i].nodes.last().expect("a path has a sentence");
        Ok(pipe.tokenizer.decode(&path_tokens(&nodes, last), true)?.trim().to_string())
    };
    Ok(Ok(CsrRecord {
        id: e.id.clone(),
        image: relative_path(out_dir, &image_path(args, e))?,
        prompt: question,
        chosen: answer(c)?,
        rejected: answer(r)?,
        reward: match args.reward {
            Reward::Code { .. } => "code",
            Reward::Paper { .. } => "paper",
        },
        chosen_value: ps[c].value,
        rejected_value: ps[r].value,
        chosen_path: ps[c].nodes.clone(),
        rejected_path: ps[r].nodes.clone(),
        n_paths: ps.len(),
        tree: nodes,
    }))
}

/// `csr_prefs` as work for [`crate::generate::with_pipeline`]: the CLIP model goes on the same
/// backend as the LVLM.
pub struct CsrPrefsWork(pub CsrPrefsArgs);

impl crate::generate::WithPipeline for CsrPrefsWork {
    type Out = CsrSummary;
    fn run<B: Backend>(self, pipe: Pipeline<B>) -> Result<CsrSummary> {
        let clip = ClipModel::load_on(pipe.model.backend(), &self.0.clip)?;
        csr_prefs(&pipe, &clip, &self.0)
    }
}
