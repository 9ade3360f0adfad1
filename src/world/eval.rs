//! The world's scorer (`stic world eval`): object hallucination in descriptions (CHAIR_i, CHAIR_s),
//! object recall, POPE F1 on the yes/no probes, counting accuracy.
//!
//! Predictions: JSON lines `{"question_id", "text"}` (LLaVA's answers format; other fields are
//! ignored), keyed by the question ids of the world's `questions.jsonl` and `probes.jsonl`. A line
//! whose id is not a question of the world is an error; questions without a line are left out of
//! the metrics and counted as `missing`.
//!
//! - descriptions (`questions.jsonl`, kind "describe"): objects parsed by `text::mentions` (CHAIR's
//!   reading with the world's synonyms and plurals). A mention whose object is not in the image is a
//!   hallucination. `chair_i` = hallucinated mentions / mentions; `chair_s` = descriptions with at
//!   least one hallucination / descriptions; empty answers are dropped from both, as LURE's
//!   to_chair.py drops them. `recall` = ground-truth objects mentioned / ground-truth objects (each
//!   image's distinct objects; empty answers count, with nothing recalled).
//! - probes: `eval::pope::says_yes` (LLaVA's eval_pope.py reading), `pope_f1` the F1 of "yes" over
//!   all probes pooled; the rates of "yes" on the adversarial (absent companion) and random absent
//!   probes are reported beside it.
//! - counts (kind "count"): `text::parse_count` equals the reference.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::text::{mentions, parse_count, Probe, Question};
use super::scene::{companion, read_scenes, Shape};
use crate::error::{Error, Result};
use crate::eval::pope::{says_yes, Counts};

/// The world's metrics and the counts behind them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WorldMetrics {
    pub chair_i: f64,
    pub chair_s: f64,
    pub recall: f64,
    pub pope_f1: f64,
    pub count_acc: f64,
    pub descriptions: usize,
    pub empty_descriptions: usize,
    pub hallucinated_descriptions: usize,
    pub mentions: usize,
    pub hallucinated_mentions: usize,
    pub gt_objects: usize,
    pub recalled_objects: usize,
    /// Hallucinated mentions that are the usual companion of an object in the image.
    pub hallucinated_companions: usize,
    pub probes: usize,
    pub pope_precision: f64,
    pub pope_recall: f64,
    /// The fraction of "yes" on absent-companion probes and on random absent probes.
    pub adversarial_yes_rate: f64,
    pub random_yes_rate: f64,
    pub counts: usize,
    pub counts_right: usize,
    /// Questions of the world with no prediction.
    pub missing: usize,
}

fn ratio(n: f64, d: f64) -> f64 {
    if d == 0.0 {
        0.0
    } else {
        n / d
    }
}

/// The names of the five headline metrics, in [`Headline`]'s order.
pub const HEADLINE: [&str; 5] = ["chair_i", "chair_s", "recall", "pope_f1", "count_acc"];

/// The five headline metrics (`stic world eval --json`), in this order.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Headline {
    pub chair_i: f64,
    pub chair_s: f64,
    pub recall: f64,
    pub pope_f1: f64,
    pub count_acc: f64,
}

impl WorldMetrics {
    pub fn headline(&self) -> Headline {
        Headline { chair_i: self.chair_i, chair_s: self.chair_s, recall: self.recall, pope_f1: self.pope_f1, count_acc: self.count_acc }
    }
}

/// A world's evaluation items: its ground truth, questions and probes.
pub struct WorldData {
    /// Image path (as in the files) -> distinct objects.
    pub truth: HashMap<String, BTreeSet<Shape>>,
    pub questions: Vec<Question>,
    pub probes: Vec<Probe>,
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(k, l)| serde_json::from_str(l).map_err(|e| Error::config(path, format!("line {}", k + 1), e.to_string())))
        .collect()
}

impl WorldData {
    pub fn load(dir: &Path) -> Result<Self> {
        let truth = read_scenes(dir)?.into_iter().map(|s| (s.image.clone(), s.shapes().into_iter().collect())).collect();
        Ok(WorldData { truth, questions: read_jsonl(&dir.join("questions.jsonl"))?, probes: read_jsonl(&dir.join("probes.jsonl"))? })
    }

    fn objects_of(&self, image: &str) -> Result<&BTreeSet<Shape>> {
        self.truth.get(image).ok_or_else(|| Error::Input(format!("world data: image `{image}` is not in objects.json")))
    }

    /// Score predictions (question id -> answer text).
    pub fn score(&self, preds: &HashMap<String, String>) -> Result<WorldMetrics> {
        let known: BTreeSet<&str> = self.questions.iter().map(|q| q.question_id.as_str()).chain(self.probes.iter().map(|p| p.question_id.as_str())).collect();
        if let Some(k) = preds.keys().find(|k| !known.contains(k.as_str())) {
            return Err(Error::Input(format!("predictions: `{k}` is not a question of this world")));
        }
        let mut m = WorldMetrics::default();
        for q in &self.questions {
            let Some(text) = preds.get(&q.question_id) else {
                m.missing += 1;
                continue;
            };
            match q.kind.as_str() {
                "describe" => {
                    let gt = self.objects_of(&q.image)?;
                    let said = mentions(text);
                    m.gt_objects += gt.len();
                    m.recalled_objects += gt.iter().filter(|o| said.iter().any(|(_, s)| s == *o)).count();
                    if text.trim().is_empty() {
                        m.empty_descriptions += 1;
                        continue;
                    }
                    m.descriptions += 1;
                    m.mentions += said.len();
                    let hall: Vec<Shape> = said.iter().map(|(_, s)| *s).filter(|s| !gt.contains(s)).collect();
                    m.hallucinated_mentions += hall.len();
                    m.hallucinated_companions += hall.iter().filter(|h| gt.iter().any(|g| companion(*g).map(|c| c.0) == Some(**h))).count();
                    m.hallucinated_descriptions += !hall.is_empty() as usize;
                }
                "count" => {
                    m.counts += 1;
                    let want: usize = q.answer.parse().map_err(|_| Error::Input(format!("questions.jsonl: {}: answer `{}` is not a number", q.question_id, q.answer)))?;
                    m.counts_right += (parse_count(text) == Some(want)) as usize;
                }
                _ => {}
            }
        }
        let mut all = Counts::default();
        let (mut adv, mut adv_yes, mut rnd, mut rnd_yes) = (0usize, 0usize, 0usize, 0usize);
        for p in &self.probes {
            let Some(text) = preds.get(&p.question_id) else {
                m.missing += 1;
                continue;
            };
            let yes = says_yes(text);
            all.add(yes, p.label == "yes");
            match p.category.as_str() {
                "adversarial" => (adv, adv_yes) = (adv + 1, adv_yes + yes as usize),
                "random" => (rnd, rnd_yes) = (rnd + 1, rnd_yes + yes as usize),
                _ => {}
            }
        }
        m.probes = all.tp + all.fp + all.tn + all.fn_;
        m.pope_precision = ratio(all.tp as f64, (all.tp + all.fp) as f64);
        m.pope_recall = ratio(all.tp as f64, (all.tp + all.fn_) as f64);
        m.pope_f1 = ratio(2.0 * m.pope_precision * m.pope_recall, m.pope_precision + m.pope_recall);
        m.adversarial_yes_rate = ratio(adv_yes as f64, adv as f64);
        m.random_yes_rate = ratio(rnd_yes as f64, rnd as f64);
        m.chair_i = ratio(m.hallucinated_mentions as f64, m.mentions as f64);
        m.chair_s = ratio(m.hallucinated_descriptions as f64, m.descriptions as f64);
        m.recall = ratio(m.recalled_objects as f64, m.gt_objects as f64);
        m.count_acc = ratio(m.counts_right as f64, m.counts as f64);
        Ok(m)
    }
}

/// Read a predictions file: JSON lines with `question_id` (string or number) and `text`.
pub fn read_predictions(path: &Path) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    for (k, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = format!("line {}", k + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| Error::config(path, &at, e.to_string()))?;
        let id = v.get("question_id").map(crate::eval::bench::id_text).ok_or_else(|| Error::config(path, &at, "no question_id"))?;
        let answer = v.get("text").and_then(Value::as_str).ok_or_else(|| Error::config(path, &at, "no text string"))?;
        if out.insert(id.clone(), answer.to_string()).is_some() {
            return Err(Error::config(path, &at, format!("question `{id}` answered twice")));
        }
    }
    Ok(out)
}

/// `stic world eval --predictions FILE --data DIR`.
pub fn eval_predictions(predictions: &Path, data: &Path) -> Result<WorldMetrics> {
    let preds = read_predictions(predictions)?;
    let m = WorldData::load(data)?.score(&preds)?;
    if m.probes + m.counts + m.descriptions + m.empty_descriptions == 0 {
        return Err(Error::Input(format!("{}: no prediction matches a question of {}", predictions.display(), data.display())));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{text, MakeArgs, Object, Scene};
    use serde_json::json;

    fn obj(shape: Shape, colour: &str, position: &str) -> Object {
        Object { shape, colour: colour.into(), size: "small".into(), position: position.into(), x: 10.0, y: 10.0, r: 4.0 }
    }

    fn probe(id: &str, image: &str, object: Shape, label: &str, category: &str) -> Probe {
        let t = text::probe_question(object);
        Probe { question_id: id.into(), image: image.into(), prompt: t.clone(), text: t, object, label: label.into(), category: category.into() }
    }

    fn question(id: &str, image: &str, kind: &str, answer: &str) -> Question {
        Question { question_id: id.into(), image: image.into(), kind: kind.into(), prompt: String::new(), answer: answer.into() }
    }

    /// Two images: A holds a red circle and a star (whose companion, the ring, is absent); B two squares.
    fn hand_world() -> WorldData {
        let a = Scene { id: "a".into(), image: "a.png".into(), split: "heldout".into(), background: "grey".into(), objects: vec![obj(Shape::Circle, "red", "top"), obj(Shape::Star, "blue", "left")] };
        let b = Scene { id: "b".into(), image: "b.png".into(), split: "heldout".into(), background: "grey".into(), objects: vec![obj(Shape::Square, "red", "top"), obj(Shape::Square, "blue", "left")] };
        WorldData {
            truth: [a, b].iter().map(|s| (s.image.clone(), s.shapes().into_iter().collect())).collect(),
            questions: vec![question("d/a", "a.png", "describe", ""), question("d/b", "b.png", "describe", ""), question("c/a", "a.png", "count", "2"), question("c/b", "b.png", "count", "2")],
            probes: vec![
                probe("p/a/circle", "a.png", Shape::Circle, "yes", "present"),
                probe("p/a/star", "a.png", Shape::Star, "yes", "present"),
                probe("p/a/ring", "a.png", Shape::Ring, "no", "adversarial"),
                probe("p/a/moon", "a.png", Shape::Moon, "no", "random"),
                probe("p/b/square", "b.png", Shape::Square, "yes", "present"),
                probe("p/b/triangle", "b.png", Shape::Triangle, "no", "adversarial"),
            ],
        }
    }

    fn preds(v: &[(&str, &str)]) -> HashMap<String, String> {
        v.iter().map(|(k, t)| (k.to_string(), t.to_string())).collect()
    }

    #[test]
    fn hand_written_predictions() {
        let w = hand_world();
        let p = preds(&[
            // A synonym, a plural and the hallucinated companion: 3 mentions, 1 hallucinated.
            ("d/a", "A red disc and two stars next to a ring."),
            // Nothing named: no hallucination, nothing recalled.
            ("d/b", "Some empty background."),
            ("c/a", "Two objects."),
            ("c/b", "3"),
            ("p/a/circle", "Yes"),
            ("p/a/star", "No, there is not."),
            ("p/a/ring", "Yes"),
            ("p/a/moon", "No"),
            ("p/b/square", "yes, two"),
            ("p/b/triangle", "No."),
        ]);
        let m = w.score(&p).unwrap();
        assert_eq!((m.mentions, m.hallucinated_mentions, m.hallucinated_companions), (3, 1, 1));
        assert_eq!(m.chair_i, 1.0 / 3.0);
        assert_eq!(m.chair_s, 0.5);
        assert_eq!(m.recall, 2.0 / 3.0);
        // TP 2 (circle, square), FP 1 (ring), FN 1 (star): P = R = F1 = 2/3.
        assert!((m.pope_f1 - 2.0 / 3.0).abs() < 1e-12, "{m:?}");
        assert_eq!((m.adversarial_yes_rate, m.random_yes_rate), (0.5, 0.0));
        assert_eq!(m.count_acc, 0.5);
        assert_eq!(m.missing, 0);
        let h = serde_json::to_string(&m.headline()).unwrap();
        assert!(h.starts_with(r#"{"chair_i":0.3333"#) && h.contains(r#""chair_s":0.5,"recall":0.6666"#) && h.ends_with(r#","count_acc":0.5}"#), "{h}");
    }

    #[test]
    fn missing_unknown_and_empty_answers() {
        let w = hand_world();
        let m = w.score(&preds(&[("d/a", ""), ("d/b", "two boxes and a plus sign")])).unwrap();
        // The empty description is dropped from CHAIR but recalls nothing; "plus sign" is one mention.
        assert_eq!((m.descriptions, m.empty_descriptions, m.mentions, m.hallucinated_mentions), (1, 1, 2, 1));
        assert_eq!((m.chair_i, m.chair_s, m.recall), (0.5, 1.0, 1.0 / 3.0));
        assert_eq!(m.missing, 2 + 6);
        assert!(w.score(&preds(&[("d/zzz", "a circle")])).is_err());
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("stic-world-eval-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn reference_answers_score_perfectly_and_always_yes_does_not() {
        let dir = tmp("ref");
        crate::world::make(&MakeArgs { n: 30, seed: 11, size: 48, heldout: 0.5 }, &dir).unwrap();
        let w = WorldData::load(&dir).unwrap();
        let mut lines = String::new();
        let mut yes = HashMap::new();
        for q in &w.questions {
            lines.push_str(&format!("{}\n", json!({"question_id": q.question_id, "text": q.answer})));
        }
        for p in &w.probes {
            lines.push_str(&format!("{}\n", json!({"question_id": p.question_id, "text": if p.label == "yes" { "Yes." } else { "No." }})));
            yes.insert(p.question_id.clone(), "Yes".to_string());
        }
        let file = dir.join("preds.jsonl");
        std::fs::write(&file, lines).unwrap();
        let m = eval_predictions(&file, &dir).unwrap();
        assert_eq!((m.chair_i, m.chair_s, m.recall, m.pope_f1, m.count_acc), (0.0, 0.0, 1.0, 1.0, 1.0), "{m:?}");
        assert_eq!(m.missing, 0);
        assert_eq!(m.descriptions, 15);
        let always = w.score(&yes).unwrap();
        assert_eq!(always.adversarial_yes_rate, 1.0);
        assert!(always.pope_f1 < 0.75 && always.pope_recall == 1.0, "{always:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
