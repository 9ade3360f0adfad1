//! The synthetic world (`stic world make`, docs/WORLD.md) as a benchmark: `stic eval --bench world
//! --data WORLD` answers the held-out `questions.jsonl` (descriptions, counts) and `probes.jsonl`
//! (POPE-style yes/no) with a model and scores them with `world::eval::WorldData::score` (CHAIR_i,
//! CHAIR_s, object recall, POPE F1, counting accuracy). `stic world eval --model` and `stic run`'s
//! world stages run through here.
//!
//! Items are keyed by the world's `question_id`s and grouped by image (`--limit` counts images); the prompt is the question's `prompt` (the probes'
//! carries LLaVA's short-answer suffix), the image the world's PNG.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::bench::{Bench, Benchmark, ImageRef, Item, Predictions};
use crate::error::Result;
use crate::world::eval::WorldData;

pub struct World {
    data: WorldData,
    items: Vec<Item>,
}

impl World {
    /// The world folder `dir` (`objects.json`, `questions.jsonl`, `probes.jsonl`, `images/`).
    pub fn load(dir: &Path) -> Result<Self> {
        let data = WorldData::load(dir)?;
        let mut items = Vec::new();
        let qs = data.questions.iter().map(|q| (&q.question_id, &q.prompt, &q.image, "question"));
        let ps = data.probes.iter().map(|p| (&p.question_id, &p.prompt, &p.image, "probe"));
        // `--limit N` takes the first N images with all their questions and probes.
        let mut images: HashMap<&str, usize> = HashMap::new();
        for q in &data.questions {
            let k = images.len();
            images.entry(q.image.as_str()).or_insert(k);
        }
        for (id, prompt, image, kind) in qs.chain(ps) {
            let k = images.len();
            let group = *images.entry(image.as_str()).or_insert(k);
            let mut extra = Map::new();
            extra.insert("kind".into(), json!(kind));
            items.push(Item {
                key: id.clone(),
                question_id: json!(id),
                prompt: prompt.clone(),
                record_prompt: prompt.clone(),
                image: Some(ImageRef::File(dir.join(image))),
                extra,
                group,
            });
        }
        Ok(World { data, items })
    }
}

impl Benchmark for World {
    fn bench(&self) -> Bench {
        Bench::World
    }
    fn items(&self) -> &[Item] {
        &self.items
    }
    fn score(&self, preds: &Predictions) -> Result<Value> {
        let answers: HashMap<String, String> = preds.records.iter().map(|r| (r.key.clone(), r.text.clone())).collect();
        let m = self.data.score(&answers)?;
        Ok(serde_json::to_value(m).expect("serialisable"))
    }
}
