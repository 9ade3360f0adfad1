//! MME (Fu et al. 2023): yes/no questions, two per image, in 10 perception and 4 cognition subtasks.
//!
//! Scoring: the MME eval tool `eval_tool/calculation.py` (BradyFU/Awesome-Multimodal-Large-Language-
//! Models, branch Evaluation, tools/eval_tool.zip @ 1c1d69e). Per subtask: the answer is lowercased;
//! it is "yes" or "no" if it is exactly that, else "yes" if its first 4 characters contain "yes",
//! else "no" if they contain "no", else "other" (always wrong). acc = correct answers / answers;
//! acc+ = images with both answers correct / images; score = 100 × (acc + acc+). Perception is the
//! sum of its subtasks' scores, cognition of its subtasks'. The tool pairs consecutive lines of each
//! subtask file; here the two questions of an image are paired by the image, and an image with only
//! one answered question is left out (counted in `incomplete_images`; the tool would stop on it).
//! A subtask absent from the data is absent from the sums (the tool needs all 14).
//!
//! Files: `--data` is the `MME_Benchmark_release_version` folder: one folder per subtask, holding
//! either `questions_answers_YN/NAME.txt` with `images/NAME.{jpg,png}`, or `NAME.txt` beside
//! `NAME.{jpg,png}`. Each text file has two lines `question<TAB>yes|no`. Prompt: the question, then
//! "\nAnswer the question using a single word or phrase." (LLaVA's `llava_mme.jsonl`).
//! Keys: `SUBTASK/IMAGE_FILE/N` with N = 0, 1 the line.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::bench::{ratio, Bench, Benchmark, ImageRef, Item, Predictions, SHORT_SUFFIX};
use crate::error::{Error, Result};

pub const PERCEPTION: [&str; 10] = ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR"];
pub const COGNITION: [&str; 4] = ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"];

/// calculation.py's `parse_pred_ans` on the lowercased answer.
pub fn parse_answer(text: &str) -> &'static str {
    let t = text.to_lowercase();
    match t.as_str() {
        "yes" => "yes",
        "no" => "no",
        _ => {
            let prefix: String = t.chars().take(4).collect();
            if prefix.contains("yes") {
                "yes"
            } else if prefix.contains("no") {
                "no"
            } else {
                "other"
            }
        }
    }
}

/// The verdicts (correct, "other") of an image's answered questions, with its subtask and index.
type ImageAnswers = (String, usize, Vec<(bool, bool)>);

pub struct Mme {
    items: Vec<Item>,
    /// Per item: (subtask, image index within the benchmark, ground truth "yes"/"no").
    truth: Vec<(String, usize, String)>,
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    v.sort();
    v
}

impl Mme {
    pub fn load(data: &Path, image_folder: Option<&Path>) -> Result<Self> {
        if !data.is_dir() {
            return Err(Error::Input(format!("{}: MME expects the MME_Benchmark_release_version folder", data.display())));
        }
        let root = image_folder.unwrap_or(data);
        let mut items = Vec::new();
        let mut truth = Vec::new();
        let mut n_images = 0usize;
        for task in PERCEPTION.iter().chain(&COGNITION) {
            let tdir = data.join(task);
            if !tdir.is_dir() {
                continue;
            }
            let (qdir, idir) = if tdir.join("questions_answers_YN").is_dir() {
                (tdir.join("questions_answers_YN"), root.join(task).join("images"))
            } else {
                (tdir.clone(), root.join(task))
            };
            for qf in list(&qdir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "txt")) {
                let stem = qf.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let image = ["jpg", "png", "jpeg"]
                    .iter()
                    .map(|e| format!("{stem}.{e}"))
                    .find(|n| idir.join(n).is_file())
                    .unwrap_or_else(|| format!("{stem}.jpg"));
                let text = std::fs::read_to_string(&qf).map_err(|e| Error::io(&qf, e))?;
                for (n, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
                    let at = format!("line {}", n + 1);
                    let (q, a) = line.split_once('\t').ok_or_else(|| Error::config(&qf, &at, "expected `question<TAB>answer`"))?;
                    let a = a.trim().to_lowercase();
                    if a != "yes" && a != "no" {
                        return Err(Error::config(&qf, &at, format!("the answer must be yes or no, got `{a}`")));
                    }
                    let prompt = format!("{q}\n{SHORT_SUFFIX}");
                    let mut extra = Map::new();
                    extra.insert("category".into(), json!(task));
                    let key = format!("{task}/{image}/{n}");
                    items.push(Item {
                        question_id: json!(format!("{task}/{image}")),
                        key,
                        record_prompt: prompt.clone(),
                        prompt,
                        image: Some(ImageRef::File(idir.join(&image))),
                        extra,
                        group: n_images,
                    });
                    truth.push((task.to_string(), n_images, a));
                }
                n_images += 1;
            }
        }
        if items.is_empty() {
            return Err(Error::Input(format!("{}: no MME subtask folders (existence/, count/, ...) with question files", data.display())));
        }
        Ok(Mme { items, truth })
    }
}

/// One subtask's counts.
#[derive(Default)]
struct Task {
    answers: usize,
    correct: usize,
    other: usize,
    images: usize,
    both: usize,
    incomplete: usize,
}

impl Benchmark for Mme {
    fn bench(&self) -> Bench {
        Bench::Mme
    }
    fn items(&self) -> &[Item] {
        &self.items
    }
    fn score(&self, preds: &Predictions) -> Result<Value> {
        // (subtask, image) -> verdicts of its answered questions, in item order.
        let mut per_image: Vec<ImageAnswers> = Vec::new();
        for (i, r) in preds.matched(&self.items)? {
            let (task, img, gt) = &self.truth[i];
            let p = parse_answer(&r.text);
            let v = (p == gt, p == "other");
            match per_image.last_mut() {
                Some((_, last, vs)) if last == img => vs.push(v),
                _ => per_image.push((task.clone(), *img, vec![v])),
            }
        }
        let n_questions = |img: usize| self.truth.iter().filter(|t| t.1 == img).count();
        let mut tasks: Vec<(String, Task)> = Vec::new();
        for (task, img, vs) in &per_image {
            let k = match tasks.iter().position(|(t, _)| t == task) {
                Some(k) => k,
                None => {
                    tasks.push((task.clone(), Task::default()));
                    tasks.len() - 1
                }
            };
            let t = &mut tasks[k].1;
            if vs.len() != n_questions(*img) {
                t.incomplete += 1;
                continue;
            }
            t.images += 1;
            t.answers += vs.len();
            t.correct += vs.iter().filter(|v| v.0).count();
            t.other += vs.iter().filter(|v| v.1).count();
            if vs.iter().all(|v| v.0) {
                t.both += 1;
            }
        }
        let mut out = Map::new();
        let mut incomplete = 0;
        for (group, names) in [("perception", &PERCEPTION[..]), ("cognition", &COGNITION[..])] {
            let mut sum = 0.0;
            let mut subtasks = Map::new();
            for name in names {
                let Some((_, t)) = tasks.iter().find(|(n, _)| n == name) else { continue };
                incomplete += t.incomplete;
                if t.images == 0 {
                    continue;
                }
                let acc = ratio(t.correct as f64, t.answers as f64);
                let acc_plus = ratio(t.both as f64, t.images as f64);
                let score = acc * 100.0 + acc_plus * 100.0;
                sum += score;
                subtasks.insert(
                    name.to_string(),
                    json!({"score": score, "acc": acc, "acc_plus": acc_plus, "images": t.images, "answers": t.answers, "other": t.other}),
                );
            }
            out.insert(group.to_string(), json!(sum));
            out.insert(format!("{group}_subtasks"), Value::Object(subtasks));
        }
        out.insert("incomplete_images".into(), json!(incomplete));
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_parsing_of_calculation_py() {
        assert_eq!(parse_answer("Yes"), "yes");
        assert_eq!(parse_answer("No"), "no");
        assert_eq!(parse_answer("Yes, it is."), "yes");
        assert_eq!(parse_answer("Not really"), "no");
        assert_eq!(parse_answer("The answer is yes"), "other");
        assert_eq!(parse_answer("nyes"), "yes");
        assert_eq!(parse_answer("I don't know"), "other");
    }
}
