//! `stic build-dif`: STIC stage-2 description-infused instruction data (Algorithm 2), as
//! stic/generate_des_stage2.py and stic/add_des_to_data.py make it.
//!
//! From LLaVA's instruction-tuning JSON (`[{"id", "image", "conversations": [...]}, ...]`), `n`
//! examples with an image are sampled (from `seed`; kept in file order). For each, the model (with
//! its stage-1 adapter, loaded by the caller) describes the image under one of
//! `STAGE2_DESCRIPTION_PROMPTS` (uniform, from the example's own stream), and the description goes
//! into the first human turn in the official format (`prompts::infuse_description`). The output is
//! the sampled examples, otherwise unchanged (ids, image paths relative to the same image folder,
//! other turns and keys), as LLaVA JSON for `train-sft --image-folder DIR`, written atomically at
//! the end with four-space indentation like the official `json.dump(..., indent=4)`.
//!
//! Resume: the descriptions are appended to `<out>.descriptions.jsonl` (`{"index", "id", "image",
//! "prompt", "description"}`, `index` = position in the input JSON) and flushed per example; a
//! restart reuses them. A description is cleaned of `<image>` (so the turn keeps exactly one image
//! token) and trimmed, as the official `.strip()`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::generate::{Pipeline, SamplingParams};
use crate::image::{load_image, preprocess};
use crate::backend::Backend;
use crate::text::IMAGE_TOKEN;

use super::jsonl::{sidecar, JsonlLog};
use super::prompts::{infuse_description, STAGE2_DESCRIPTION_PROMPTS};
use super::{item_rng, sample_indices, stic_sampling, Sink, Summary};
use crate::progress::Progress;

/// Options of `build_dif` (`stic build-dif`).
#[derive(Clone, Debug)]
pub struct BuildDifArgs {
    /// LLaVA instruction-tuning JSON.
    pub sft: PathBuf,
    /// The folder its `image` paths are relative to.
    pub images: PathBuf,
    /// The output LLaVA JSON.
    pub out: PathBuf,
    /// Examples to sample (among those with an image); the paper uses 5000.
    pub n: usize,
    pub seed: u64,
    /// Images per generation call.
    pub batch_size: usize,
    /// max_new_tokens, temperature, top_k, top_p (its `seed` is unused: every example has its own).
    pub sampling: SamplingParams,
    pub quiet: bool,
    /// Stop after describing this many examples in this run (tests of resume); the JSON is then
    /// not written.
    pub stop_after: Option<usize>,
}

impl BuildDifArgs {
    /// The paper's settings: 5000 examples, `stic_sampling`, seed 0, batch size 8.
    pub fn new(sft: impl Into<PathBuf>, images: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        BuildDifArgs {
            sft: sft.into(),
            images: images.into(),
            out: out.into(),
            n: 5000,
            seed: 0,
            batch_size: 8,
            sampling: stic_sampling(),
            quiet: false,
            stop_after: None,
        }
    }
}

/// One line of `<out>.descriptions.jsonl`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DescriptionRecord {
    pub index: usize,
    pub id: serde_json::Value,
    pub image: String,
    pub prompt: String,
    pub description: String,
}

struct Example {
    index: usize,
    id: serde_json::Value,
    image: String,
}

/// The examples of `data` that have an image and a first human turn.
fn candidates(path: &Path, data: &[serde_json::Value]) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (index, ex) in data.iter().enumerate() {
        let Some(image) = ex.get("image").and_then(|v| v.as_str()) else { continue };
        let first = ex.get("conversations").and_then(|c| c.get(0));
        let ok = first.is_some_and(|t| t.get("from").and_then(|f| f.as_str()) == Some("human") && t.get("value").is_some_and(|v| v.is_string()));
        if !ok {
            return Err(Error::config(path, format!("[{index}].conversations"), "the first turn must be {\"from\": \"human\", \"value\": TEXT}"));
        }
        out.push(Example { index, id: ex.get("id").cloned().unwrap_or(serde_json::Value::Null), image: image.to_string() });
    }
    Ok(out)
}

/// Build (or resume) the description-infused data. See the module doc.
pub fn build_dif<B: Backend>(pipe: &Pipeline<B>, args: &BuildDifArgs) -> Result<Summary> {
    if args.batch_size == 0 {
        return Err(Error::Input("--batch-size must be at least 1".into()));
    }
    let text = std::fs::read_to_string(&args.sft).map_err(|e| Error::io(&args.sft, e))?;
    let data: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| Error::Json { path: args.sft.clone(), source: e })?;
    let all = candidates(&args.sft, &data)?;
    if all.is_empty() {
        return Err(Error::Input(format!("{}: no example has an image", args.sft.display())));
    }
    let picked: Vec<&Example> = sample_indices(all.len(), args.n, args.seed).into_iter().map(|i| &all[i]).collect();

    let desc_path = sidecar(&args.out, ".descriptions.jsonl");
    let skipped_path = sidecar(&args.out, ".skipped");
    let (mut log, done_lines) = JsonlLog::open(&desc_path)?;
    let (mut skip_log, skipped_lines) = JsonlLog::open(&skipped_path)?;
    let mut described: HashMap<usize, DescriptionRecord> = HashMap::new();
    for v in done_lines {
        let r: DescriptionRecord = serde_json::from_value(v)
            .map_err(|e| Error::config(&desc_path, "<line>", format!("expected {{index, id, image, prompt, description}}: {e}")))?;
        described.insert(r.index, r);
    }
    let skipped: HashSet<usize> = skipped_lines.iter().filter_map(|v| v.get("index").and_then(|i| i.as_u64())).map(|i| i as usize).collect();
    let finished = |ex: &&Example| described.contains_key(&ex.index) || skipped.contains(&ex.index);
    let resumed = picked.iter().filter(|ex| finished(ex)).count();

    let mut summary = Summary { selected: picked.len(), resumed, ..Default::default() };
    let progress = Progress::new(picked.len(), resumed, "images", args.quiet);
    let t0 = Instant::now();
    let mut new: Vec<DescriptionRecord> = Vec::new();
    'batches: for batch in picked.chunks(args.batch_size) {
        if batch.iter().all(finished) {
            continue;
        }
        // As in build-prefs: a partly described batch is generated again as a whole.
        let todo: Vec<&Example> = batch.iter().copied().filter(|ex| !skipped.contains(&ex.index)).collect();
        let (outcomes, tokens) = describe_batch(pipe, &todo, args)?;
        summary.tokens += tokens;
        let mut sink = Sink { log: &mut log, skip_log: &mut skip_log, skipped_path: &skipped_path, progress: &progress, summary: &mut summary, stop_after: args.stop_after };
        for (ex, outcome) in todo.iter().zip(outcomes) {
            if described.contains_key(&ex.index) {
                continue;
            }
            let what = args.images.join(&ex.image).display().to_string();
            let outcome = outcome.map_err(|msg| format!("example {}: {msg}", ex.index));
            let (rec, stop) = sink.record(outcome, &what, |msg| serde_json::json!({"index": ex.index, "image": ex.image, "error": msg}))?;
            new.extend(rec);
            if stop {
                break 'batches;
            }
        }
        log.sync()?;
    }
    log.sync()?;
    progress.finish();
    summary.elapsed = t0.elapsed();
    if summary.stopped {
        return Ok(summary);
    }
    described.extend(new.into_iter().map(|r| (r.index, r)));
    let mut out = Vec::new();
    for ex in &picked {
        if let Some(r) = described.get(&ex.index) {
            let mut item = data[ex.index].clone();
            let turn = &mut item["conversations"][0]["value"];
            *turn = serde_json::Value::String(infuse_description(turn.as_str().expect("checked"), &r.description));
            out.push(item);
        }
    }
    write_json_atomic(&args.out, &out)?;
    Ok(summary)
}

/// Describe a batch of examples' images in one generation call. An unusable image gets
/// `Err(reason)`.
fn describe_batch<B: Backend>(pipe: &Pipeline<B>, todo: &[&Example], args: &BuildDifArgs) -> Result<(Vec<std::result::Result<DescriptionRecord, String>>, usize)> {
    let mut outcomes: Vec<Option<std::result::Result<DescriptionRecord, String>>> = vec![None; todo.len()];
    let (mut inputs, mut seeds, mut slots) = (Vec::new(), Vec::new(), Vec::new());
    for (k, ex) in todo.iter().enumerate() {
        let mut rng = item_rng(args.seed, &format!("{}:{}", ex.index, ex.image));
        let prompt = STAGE2_DESCRIPTION_PROMPTS[rng.below(STAGE2_DESCRIPTION_PROMPTS.len())];
        let prepared = (|| -> Result<B::Tensor> {
            let img = load_image(&args.images.join(&ex.image))?;
            let feat = pipe.model.image_features(&preprocess(&img, &pipe.processor)?)?;
            let ids = pipe.prompt_ids(&pipe.format_prompt(prompt, 1, false), 1)?;
            pipe.model.embed_with_images(&ids, std::slice::from_ref(&feat))
        })();
        match prepared {
            Ok(x) => {
                inputs.push(x);
                seeds.push(rng.next_u64());
                slots.push((k, prompt));
            }
            Err(e) => outcomes[k] = Some(Err(e.to_string())),
        }
    }
    let outputs = pipe.generate_from_embeds_seeded(inputs, &args.sampling, &seeds)?;
    let tokens = outputs.iter().map(|o| o.len()).sum();
    for ((k, prompt), ids) in slots.into_iter().zip(outputs) {
        let text = pipe.tokenizer.decode(&ids, true)?;
        let ex = todo[k];
        outcomes[k] = Some(Ok(DescriptionRecord {
            index: ex.index,
            id: ex.id.clone(),
            image: ex.image.clone(),
            prompt: prompt.to_string(),
            description: text.replace(IMAGE_TOKEN, "").trim().to_string(),
        }));
    }
    Ok((outcomes.into_iter().map(|o| o.expect("every example has an outcome")).collect(), tokens))
}

/// Write `value` as JSON with four-space indentation to `path` through a temporary file and a
/// rename, so the file is either the old one or the complete new one.
fn write_json_atomic(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, serde_json::ser::PrettyFormatter::with_indent(b"    "));
    value.serialize(&mut ser).map_err(|e| Error::Input(format!("{}: cannot serialise: {e}", path.display())))?;
    buf.push(b'\n');
    let tmp = sidecar(path, ".tmp");
    std::fs::write(&tmp, &buf).map_err(|e| Error::io(&tmp, e))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
