//! LLaVA-Bench (In-the-Wild): answers for the GPT-4 judge, no score here.
//!
//! Files (liuhaotian/llava-bench-in-the-wild, LLaVA's
//! `playground/data/eval/llava-bench-in-the-wild`): `--data` is the folder holding
//! `questions.jsonl` (`{"question_id", "image", "text", "category"}` per line) and `images/`
//! (`--image-folder` overrides), or the questions file itself.
//!
//! Prompt: the question as is (LLaVA `llava/eval/model_vqa.py`, scripts/v1_5/eval/llavabench.sh).
//!
//! Output: `OUT/llava_bench_answers.jsonl`, LLaVA's answer file (`question_id`, `prompt`, `text`,
//! `answer_id`, `model_id`, `metadata`), in question order: the `--answer-list` input of
//! `llava/eval/eval_gpt_review_bench.py`. The metrics are counts per category.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::bench::{file_in, folder_of, id_field, id_text, image_root, read_jsonl, str_field, Bench, Benchmark, ImageRef, Item, Predictions};
use crate::error::{Error, Result};

pub struct LlavaBench {
    items: Vec<Item>,
    categories: Vec<String>,
}

impl LlavaBench {
    pub fn load(data: &Path, image_folder: Option<&Path>) -> Result<Self> {
        let path = file_in(data, "questions.jsonl")?;
        let images = image_root(&folder_of(&path), image_folder, &["images"]);
        let mut items = Vec::new();
        let mut categories = Vec::new();
        for (line, q) in read_jsonl(&path)? {
            let at = format!("line {line}");
            let qid = id_field(&q, &path, &at, "question_id")?;
            let image = str_field(&q, &path, &at, "image")?;
            let text = str_field(&q, &path, &at, "text")?;
            categories.push(q.get("category").and_then(Value::as_str).unwrap_or("").to_string());
            items.push(Item {
                key: id_text(&qid),
                question_id: qid,
                prompt: text.to_string(),
                record_prompt: text.to_string(),
                image: Some(ImageRef::File(images.join(image))),
                extra: Map::new(),
                group: items.len(),
            });
        }
        Ok(LlavaBench { items, categories })
    }
}

/// Counts of answered items per category.
pub(crate) fn count_by(preds: &Predictions, items: &[Item], cats: &[String]) -> Result<Value> {
    let mut by: Map<String, Value> = Map::new();
    for (i, _) in preds.matched(items)? {
        let e = by.entry(cats[i].clone()).or_insert(json!(0));
        *e = json!(e.as_u64().unwrap_or(0) + 1);
    }
    Ok(json!({ "categories": by }))
}

impl Benchmark for LlavaBench {
    fn bench(&self) -> Bench {
        Bench::LlavaBench
    }
    fn items(&self) -> &[Item] {
        &self.items
    }
    fn score(&self, preds: &Predictions) -> Result<Value> {
        count_by(preds, &self.items, &self.categories)
    }
    fn write_submission(&self, preds: &Predictions, out: &Path) -> Result<Option<PathBuf>> {
        let path = out.join("llava_bench_answers.jsonl");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?);
        for (_, r) in preds.matched(&self.items)? {
            let mut m = Map::new();
            for k in ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"] {
                m.insert(k.to_string(), r.fields.get(k).cloned().unwrap_or_else(|| if k == "metadata" { json!({}) } else { Value::Null }));
            }
            writeln!(f, "{}", Value::Object(m)).map_err(|e| Error::io(&path, e))?;
        }
        f.flush().map_err(|e| Error::io(&path, e))?;
        Ok(Some(path))
    }
}
