//! TextVQA: VQA accuracy with EvalAI's answer normalisation.
//!
//! Files (LLaVA's `playground/data/eval/textvqa`, scripts/v1_5/eval/textvqa.sh): `--data` is the
//! folder holding `TextVQA_0.5.1_val.json` (the official annotations: `{"data": [{"image_id",
//! "question", "answers": [10 strings], ...}]}`) and, usually, `llava_textvqa_val_v051_ocr.jsonl`
//! (LLaVA's questions: `{"question_id", "image", "text"}` with the OCR tokens and the short-answer
//! suffix in `text`); images in `train_images/` (`--image-folder` overrides). `--data` may name
//! either file. Without LLaVA's question file the questions come from the annotations, prompted
//! as "{question}\nAnswer the question using a single word or phrase." (no OCR tokens).
//!
//! Scoring: LLaVA `llava/eval/eval_textvqa.py` + `llava/eval/m4c_evaluator.py`
//! (`TextVQAAccuracyEvaluator`, `EvalAIAnswerProcessor`, copied there from facebookresearch/mmf):
//! each prediction is matched to its annotation by `(question_id, question)`, the question being
//! recovered from the recorded prompt (`prompt_processor`); answers are normalised (lower case,
//! punctuation, number words to digits, articles dropped, contractions restored), and a prediction
//! scores the mean over the 10 leave-one-out subsets of the human answers of
//! min(#matching answers / 3, 1).
//!
//! LLaVA answer files (lines without `key`, as model_vqa_loader writes them): eval_textvqa.py
//! (LLaVA c121f04) reads every line into a list (line 40) and scores each one (lines 43-48), so a
//! question answered twice counts twice, an unanswered question is not counted, and a line for a
//! question outside LLaVA's question file still counts if the annotations hold it. The join is the
//! annotations' dict by `(image_id, question.lower())` (line 39: a later annotation wins) looked up
//! with `(question_id, prompt_processor(prompt))` (line 44); a line that names no annotation is a
//! KeyError there and an error naming the file and line here. stic's own files (with `key`) keep
//! one line per key (resume), which is the same on its files (unique keys).

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::{json, Map, Value};

use super::bench::{folder_of, id_field, id_text, image_root, read_json, read_jsonl, str_field, Bench, Benchmark, ImageRef, Item, Predictions, SHORT_SUFFIX};
use super::py;
use crate::error::{Error, Result};

// ---------------------------------------------------------------------------------------------
// EvalAI answer normalisation (m4c_evaluator.py, EvalAIAnswerProcessor).

/// Spellings without apostrophes -> the contraction (the table of EvalAIAnswerProcessor,
/// including its reversed "somebody'd" entry).
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

const NUMBERS: &[(&str, &str)] = &[
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

const PUNCTUATIONS: [char; 21] = [';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!'];

fn process_punctuation(in_text: &str) -> String {
    // COMMA_STRIP = (?<=\d)(\,)+(?=\d): a digit, commas, a digit.
    static COMMA: OnceLock<Regex> = OnceLock::new();
    let comma_strip = COMMA.get_or_init(|| Regex::new(r"\d,+\d").expect("regex")).is_match(in_text);
    let mut out = in_text.to_string();
    for p in PUNCTUATIONS {
        // The test looks at the input text, the replacement works on the output so far.
        if in_text.contains(&format!("{p} ")) || in_text.contains(&format!(" {p}")) || comma_strip {
            out = out.replace(p, "");
        } else {
            out = out.replace(p, " ");
        }
    }
    // PERIOD_STRIP = (?!<=\d)(\.)(?!\d): the first group is a negative *lookahead* for "<=\d",
    // always true before a '.', so this removes each '.' not followed by a digit. The script calls
    // `PERIOD_STRIP.sub("", out_text, re.UNICODE)`, whose third argument is the count: re.UNICODE
    // is 32, so only the first 32 such periods go.
    let chars: Vec<char> = out.chars().collect();
    let mut kept = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        if c == '.' && removed < 32 && !chars.get(i + 1).is_some_and(|&n| py::is_decimal(n)) {
            removed += 1;
            continue;
        }
        kept.push(c);
    }
    kept
}

fn process_digit_article(in_text: &str) -> String {
    let lower = in_text.to_lowercase();
    let mut words: Vec<&str> = Vec::new();
    for w in py::split_ws(&lower) {
        let w = NUMBERS.iter().find(|(k, _)| *k == w).map_or(w, |(_, v)| v);
        if !ARTICLES.contains(&w) {
            words.push(w);
        }
    }
    let words: Vec<&str> = words.into_iter().map(|w| CONTRACTIONS.iter().find(|(k, _)| *k == w).map_or(w, |(_, v)| v)).collect();
    words.join(" ")
}

/// `EvalAIAnswerProcessor.__call__`.
pub fn normalize_answer(answer: &str) -> String {
    // word_tokenize
    let t = answer.to_lowercase().replace([',', '?'], "").replace("'s", " 's");
    let t = py::strip(&t).replace(['\n', '\t'], " ");
    let t = py::strip(&t).to_string();
    process_digit_article(&process_punctuation(&t))
}

/// `TextVQAAccuracyEvaluator`: the soft accuracy of one prediction against the 10 human answers
/// (fewer or more than 10 is an error there, an assertion).
pub fn vqa_accuracy(pred: &str, gt_answers: &[String]) -> f64 {
    let answers: Vec<String> = gt_answers.iter().map(|a| normalize_answer(a)).collect();
    let p = normalize_answer(pred);
    if !answers.contains(&p) {
        return 0.0;
    }
    // For each held-out human answer, the matches among the other nine.
    let accs: Vec<f64> = (0..answers.len())
        .map(|held| {
            let matching = answers.iter().enumerate().filter(|&(j, a)| j != held && *a == p).count();
            f64::min(1.0, matching as f64 / 3.0)
        })
        .collect();
    accs.iter().sum::<f64>() / accs.len() as f64
}

/// eval_textvqa.py `prompt_processor`: the question in a recorded prompt, lower-cased.
pub fn prompt_question(prompt: &str) -> Option<String> {
    let lines: Vec<&str> = prompt.split('\n').collect();
    let q = if prompt.starts_with("OCR tokens: ") {
        static RE: OnceLock<Regex> = OnceLock::new();
        let re = RE.get_or_init(|| Regex::new(r"(?s)Question: (.*?) Short answer:").expect("regex"));
        re.captures(prompt)?.get(1)?.as_str().to_string()
    } else if prompt.contains("Reference OCR token: ") && lines.len() == 3 {
        if prompt.starts_with("Reference OCR token:") {
            lines[1].to_string()
        } else {
            lines[0].to_string()
        }
    } else if lines.len() == 2 {
        lines[0].to_string()
    } else {
        return None;
    };
    Some(q.to_lowercase())
}

pub struct TextVqa {
    items: Vec<Item>,
    ann_path: std::path::PathBuf,
    /// (image_id, lower-cased question) -> human answers (a later annotation wins, as the dict).
    answers: HashMap<(String, String), Vec<String>>,
}

const ANNOTATIONS: &str = "TextVQA_0.5.1_val.json";
const QUESTIONS: &str = "llava_textvqa_val_v051_ocr.jsonl";

impl TextVqa {
    pub fn load(data: &Path, image_folder: Option<&Path>) -> Result<Self> {
        let base = folder_of(data);
        let (ann_path, q_path) = if data.is_file() {
            if data.extension().is_some_and(|e| e == "jsonl") {
                (base.join(ANNOTATIONS), Some(data.to_path_buf()))
            } else {
                (data.to_path_buf(), Some(base.join(QUESTIONS)).filter(|p| p.is_file()))
            }
        } else {
            (base.join(ANNOTATIONS), Some(base.join(QUESTIONS)).filter(|p| p.is_file()))
        };
        let ann = read_json(&ann_path)?;
        let entries = ann.get("data").and_then(Value::as_array).ok_or_else(|| Error::config(&ann_path, "data", "missing or not a list"))?;
        let images = image_root(&base, image_folder, &["train_images"]);
        let mut answers = HashMap::new();
        let mut from_ann = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let at = format!("data[{i}]");
            let image_id = str_field(e, &ann_path, &at, "image_id")?;
            let question = str_field(e, &ann_path, &at, "question")?;
            let list = e.get("answers").and_then(Value::as_array).ok_or_else(|| Error::config(&ann_path, format!("{at}: answers"), "missing or not a list"))?;
            let list: Vec<String> = list
                .iter()
                .map(|a| a.as_str().map(str::to_string).ok_or_else(|| Error::config(&ann_path, format!("{at}: answers"), "not a list of strings")))
                .collect::<Result<_>>()?;
            if list.len() != 10 {
                return Err(Error::config(&ann_path, format!("{at}: answers"), format!("expected 10 human answers, got {}", list.len())));
            }
            answers.insert((image_id.to_string(), question.to_lowercase()), list);
            from_ann.push((image_id.to_string(), question.to_string()));
        }
        let mut items = Vec::new();
        match q_path {
            Some(qp) => {
                for (line, q) in read_jsonl(&qp)? {
                    let at = format!("line {line}");
                    let qid = id_field(&q, &qp, &at, "question_id")?;
                    let image = str_field(&q, &qp, &at, "image")?;
                    let text = str_field(&q, &qp, &at, "text")?;
                    items.push(Item {
                        key: format!("{}/{line}", id_text(&qid)),
                        question_id: qid,
                        prompt: text.to_string(),
                        record_prompt: text.to_string(),
                        image: Some(ImageRef::File(images.join(image))),
                        extra: Map::new(),
                        group: items.len(),
                    });
                }
            }
            None => {
                for (i, (image_id, question)) in from_ann.into_iter().enumerate() {
                    let prompt = format!("{question}\n{SHORT_SUFFIX}");
                    items.push(Item {
                        key: format!("{image_id}/{i}"),
                        question_id: json!(image_id),
                        record_prompt: prompt.clone(),
                        prompt,
                        image: Some(ImageRef::File(images.join(format!("{image_id}.jpg")))),
                        extra: Map::new(),
                        group: i,
                    });
                }
            }
        }
        Ok(TextVqa { items, ann_path, answers })
    }
}

impl Benchmark for TextVqa {
    fn bench(&self) -> Bench {
        Bench::TextVqa
    }
    fn items(&self) -> &[Item] {
        &self.items
    }
    /// A LLaVA answers file names a question by image id and question text (several questions
    /// share an image): `{question_id}/{question}`.
    fn record_key(&self, fields: &Map<String, Value>) -> Option<String> {
        if let Some(Value::String(k)) = fields.get("key") {
            return Some(k.clone());
        }
        let qid = id_text(fields.get("question_id")?);
        // A prompt without a question is reported by `score`, with its line.
        match fields.get("prompt").and_then(Value::as_str).and_then(prompt_question) {
            Some(q) => Some(format!("{qid}/{q}")),
            None => Some(qid),
        }
    }
    fn score(&self, preds: &Predictions) -> Result<Value> {
        let mut sum = 0.0;
        for r in &preds.records {
            let err = |field: &str, msg: String| Error::config(&preds.path, format!("line {}: {field}", r.line), msg);
            let qid = r.fields.get("question_id").map(id_text).ok_or_else(|| err("question_id", "missing".into()))?;
            let prompt = r.fields.get("prompt").and_then(Value::as_str).ok_or_else(|| err("prompt", "missing or not a string".into()))?;
            let question = prompt_question(prompt).ok_or_else(|| err("prompt", "no question in it (prompt_processor's formats)".into()))?;
            let gts = self.answers.get(&(qid.clone(), question.clone())).ok_or_else(|| {
                err("question_id", format!("no annotation in {} for image `{qid}` and question `{question}`", self.ann_path.display()))
            })?;
            sum += vqa_accuracy(&r.text, gts);
        }
        let n = preds.records.len();
        Ok(json!({ "accuracy": super::bench::ratio(sum, n as f64), "total": n }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evalai_normalisation() {
        assert_eq!(normalize_answer("Two"), "2");
        assert_eq!(normalize_answer("a dog"), "dog");
        assert_eq!(normalize_answer("The Dog."), "dog");
        assert_eq!(normalize_answer("dont"), "don't");
        assert_eq!(normalize_answer("yes!"), "yes");
        assert_eq!(normalize_answer("yes !"), "yes");
        assert_eq!(normalize_answer("3.5"), "3.5");
        assert_eq!(normalize_answer("1,000"), "1000");
        assert_eq!(normalize_answer("coca-cola"), "coca cola");
        assert_eq!(normalize_answer("man's"), "man 's");
        assert_eq!(normalize_answer("  Ten\tcats\n"), "10 cats");
        assert_eq!(normalize_answer("e.g"), "eg");
    }

    #[test]
    fn period_strip_stops_after_32() {
        let s = "a.".repeat(33);
        assert_eq!(normalize_answer(&s), format!("{}a.", "a".repeat(32)));
    }

    #[test]
    fn soft_accuracy() {
        let gts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ten = gts(&["2", "2", "two", "2", "3", "3", "3", "3", "3", "3"]);
        // "2" x4: held out one of them leaves 3 -> 1; held out another leaves 4 -> 1.
        assert_eq!(vqa_accuracy("Two", &ten), 1.0);
        let ten = gts(&["dog", "dog", "cat", "cat", "cat", "cat", "cat", "cat", "cat", "cat"]);
        // 2 matches: held out a "dog" -> 1/3 (2 times), held out a "cat" -> 2/3 (8 times).
        assert!((vqa_accuracy("a dog", &ten) - (2.0 / 3.0 * 8.0 + 1.0 / 3.0 * 2.0) / 10.0).abs() < 1e-15);
        assert_eq!(vqa_accuracy("bird", &ten), 0.0);
    }

    #[test]
    fn prompt_processor_formats() {
        assert_eq!(prompt_question("What is it?\nReference OCR token: A, B\nAnswer the question using a single word or phrase.").unwrap(), "what is it?");
        assert_eq!(prompt_question("Reference OCR token: A\nWhat is it?\nAnswer.").unwrap(), "what is it?");
        assert_eq!(prompt_question("What?\nAnswer the question using a single word or phrase.").unwrap(), "what?");
        assert_eq!(prompt_question("OCR tokens: a b. Question: Why\nnot? Short answer:").unwrap(), "why\nnot?");
        assert!(prompt_question("one line").is_none());
    }
}
