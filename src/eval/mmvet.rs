//! MM-Vet: answers for the GPT-4 grader, no score here.
//!
//! Files (yuweihao/MM-Vet's `mm-vet.zip`): `--data` is the folder holding `mm-vet.json`
//! (`{"v1_0": {"imagename", "question", "answer", "capability"}, ...}`) and `images/`
//! (`--image-folder` overrides), or `mm-vet.json` itself.
//!
//! Prompt: the question as is (LLaVA scripts/v1_5/eval/mmvet.sh runs `model_vqa.py` on it).
//!
//! Output: `OUT/mmvet_results.json`, the grader's input: one JSON object `{"v1_0": answer, ...}`
//! (the keys of mm-vet.json, which LLaVA's `scripts/convert_mmvet_for_eval.py` rebuilds as
//! `v1_{question_id}`). The metrics are counts per capability.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::bench::{file_in, folder_of, image_root, read_json, str_field, Bench, Benchmark, ImageRef, Item, Predictions};
use crate::error::{Error, Result};

pub struct MmVet {
    items: Vec<Item>,
    capabilities: Vec<Vec<String>>,
}

impl MmVet {
    pub fn load(data: &Path, image_folder: Option<&Path>) -> Result<Self> {
        let path = file_in(data, "mm-vet.json")?;
        let images = image_root(&folder_of(&path), image_folder, &["images"]);
        let v = read_json(&path)?;
        let m = v.as_object().ok_or_else(|| Error::config(&path, "<file>", "expected an object {id: question}"))?;
        let mut ids: Vec<&String> = m.keys().collect();
        // v1_0, v1_1, ..., v1_10: numeric order where the ids end in a number.
        ids.sort_by_key(|k| (k.rsplit('_').next().and_then(|n| n.parse::<u64>().ok()), k.to_string()));
        let mut items = Vec::new();
        let mut capabilities = Vec::new();
        for id in ids {
            let q = &m[id];
            let image = str_field(q, &path, id, "imagename")?;
            let question = str_field(q, &path, id, "question")?;
            let caps = q.get("capability").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default();
            capabilities.push(caps);
            items.push(Item {
                key: id.clone(),
                question_id: json!(id),
                prompt: question.to_string(),
                record_prompt: question.to_string(),
                image: Some(ImageRef::File(images.join(image))),
                extra: Map::new(),
                group: items.len(),
            });
        }
        Ok(MmVet { items, capabilities })
    }
}

impl Benchmark for MmVet {
    fn bench(&self) -> Bench {
        Bench::MmVet
    }
    fn items(&self) -> &[Item] {
        &self.items
    }
    fn score(&self, preds: &Predictions) -> Result<Value> {
        let mut by: Map<String, Value> = Map::new();
        for (i, _) in preds.matched(&self.items)? {
            for c in &self.capabilities[i] {
                let e = by.entry(c.clone()).or_insert(json!(0));
                *e = json!(e.as_u64().unwrap_or(0) + 1);
            }
        }
        Ok(json!({ "capabilities": by }))
    }
    fn write_submission(&self, preds: &Predictions, out: &Path) -> Result<Option<PathBuf>> {
        let path = out.join("mmvet_results.json");
        let answers: Map<String, Value> = preds.matched(&self.items)?.into_iter().map(|(i, r)| (self.items[i].key.clone(), json!(r.text))).collect();
        std::fs::write(&path, serde_json::to_string_pretty(&Value::Object(answers)).expect("json") + "\n").map_err(|e| Error::io(&path, e))?;
        Ok(Some(path))
    }
}
