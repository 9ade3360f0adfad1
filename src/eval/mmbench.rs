//! MMBench: multiple choice with circular evaluation.
//!
//! Files: `--data` is the TSV (`mmbench_dev_20230712.tsv`, as LLaVA's
//! `playground/data/eval/mmbench`), or a folder holding it (or holding exactly one `.tsv`). Columns
//! by header name: `index`, `question`, `hint`, `A`..`D`, `answer`, `image` (base64 JPEG/PNG; a
//! short number instead refers to another row's image, as in VLMEvalKit's TSVs), optionally
//! `category` and `l2-category`. Cells follow pandas' `read_table`: double-quoted cells may hold
//! tabs and newlines, and pandas' default NA strings (empty, "NaN", "None", "N/A", ...) are missing.
//!
//! Prompts: LLaVA `llava/eval/model_vqa_mmbench.py` with `--all-rounds --single-pred-prompt`: the
//! options are those up to the first missing one; "{hint}\n" (when present) + question + one
//! "\n{L}. {option}" per option, then "\nAnswer with the option's letter from the given choices
//! directly."; a question with N options is asked N times, the option texts rotated by one place
//! each round (round r shows original option (j + r) mod N as letter j).
//!
//! Scoring: circular evaluation of open-compass/VLMEvalKit (`vlmeval/dataset/utils/multiple_choice.py`
//! `mcq_circular_eval`, with the `exact_matching` policy, i.e. no LLM to match answers): each
//! round's answer is read with `can_infer` (`vlmeval/utils/matching_util.py` at commit e8e78f05:
//! `can_infer_option`, then `can_infer_text`), and a question counts as correct only if every
//! round's letter equals that round's answer. `vanilla_accuracy` scores round 0 alone (the options
//! in their original order). Questions with only some rounds answered are not scored
//! (`incomplete`).
//!
//! LLaVA answer files (lines without `key`, as model_vqa_mmbench writes them: `question_id` = the
//! row's `index`, `round_id`, ...): LLaVA has no local scorer for MMBench; its
//! scripts/convert_mmbench_for_submission.py (LLaVA c121f04, lines 23-25) writes each line's
//! `text` into the `prediction` cell of the rows whose `index` equals `question_id`, so for an
//! index answered twice (or in several rounds) the later line wins, an unanswered row stays empty,
//! and a line naming no row changes nothing. `stic eval --submission OUT.xlsx` writes that file
//! (`mmbench_submission.rs`, checked cell by cell against the script's own output). The circular score here joins lines by (`question_id`, `round_id`): a later
//! line for the same round wins (as the conversion's overwrite), an unanswered round makes its
//! question `incomplete`, and a line that names no row and round is an error naming the file and
//! line (answers for another TSV).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use regex::Regex;
use serde_json::{json, Map, Value};

use super::bench::{Bench, Benchmark, ImageRef, Item, Predictions, MC_SUFFIX};
use super::py;
use crate::error::{Error, Result};

const LETTERS: [char; 4] = ['A', 'B', 'C', 'D'];

// ---------------------------------------------------------------------------------------------
// TSV and base64.

/// Rows of a tab-separated file, with pandas' (C parser) quoting: a cell that starts with '"' runs
/// to the next lone '"' ("" inside is a quote) and may span tabs and lines; blank lines are skipped.
pub fn parse_tsv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row: Vec<String> = Vec::new();
    let mut cell = String::new();
    let mut chars = text.chars().peekable();
    let mut at_cell_start = true;
    let mut in_quotes = false;
    let end_row = |row: &mut Vec<String>, cell: &mut String, rows: &mut Vec<Vec<String>>| {
        row.push(std::mem::take(cell));
        let r = std::mem::take(row);
        if !(r.len() == 1 && r[0].is_empty()) {
            rows.push(r);
        }
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cell.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                cell.push(c);
            }
            continue;
        }
        match c {
            '"' if at_cell_start => {
                in_quotes = true;
                at_cell_start = false;
            }
            '\t' => {
                row.push(std::mem::take(&mut cell));
                at_cell_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                end_row(&mut row, &mut cell, &mut rows);
                at_cell_start = true;
            }
            _ => {
                cell.push(c);
                at_cell_start = false;
            }
        }
    }
    if !cell.is_empty() || !row.is_empty() {
        end_row(&mut row, &mut cell, &mut rows);
    }
    rows
}

/// Missing as the runner sees it: pandas' default NA strings, plus LLaVA's `is_none` ('nan' and
/// 'none' in any case).
pub fn is_missing(cell: &str) -> bool {
    PANDAS_NA.contains(&cell) || cell.eq_ignore_ascii_case("nan") || cell.eq_ignore_ascii_case("none")
}

/// pandas' default NA words (`pandas._libs.parsers.STR_NA_VALUES`): `read_table` reads them as NaN.
pub const PANDAS_NA: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

/// Python's `base64.b64decode` (non-validating: characters outside the alphabet are skipped;
/// decoding stops at padding).
pub fn b64decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut nbits, mut n) = (0u32, 0u32, 0usize);
    for &c in s.as_bytes() {
        if c == b'=' {
            break;
        }
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v as u32;
        nbits += 6;
        n += 1;
        if nbits >= 8 {
            nbits -= 8;
            out.push((acc >> nbits) as u8);
            acc &= (1 << nbits) - 1;
        }
    }
    if n % 4 == 1 {
        return Err("invalid base64 (truncated)".into());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// VLMEvalKit's answer matching.

/// `can_infer_option`: Some(letter), Some('Z') for a refusal, None for "cannot tell".
pub fn can_infer_option(answer: &str, choices: &[(char, String)]) -> Option<char> {
    if answer.contains("Failed to obtain answer via API") {
        return None;
    }
    const REJECT: [&str; 4] = [
        "Sorry, I can't help with images of people yet.",
        "I can't process this file.",
        "I'm sorry, but without the image provided",
        "Cannot determine the answer",
    ];
    if REJECT.iter().any(|r| answer.contains(r)) {
        return Some('Z');
    }
    let answer_mod: String = answer.chars().map(|c| if ".()[],:;!*#{}".contains(c) { ' ' } else { c }).collect();
    let splits: Vec<&str> = py::split_ws(&answer_mod);
    let letter = |c: char| c.to_string();
    let count = choices.iter().filter(|(c, _)| splits.contains(&letter(*c).as_str())).count();
    if count == 1 {
        for (c, _) in choices {
            let l = letter(*c);
            if let Some(pos) = splits.iter().position(|w| *w == l) {
                if pos as i64 > splits.len() as i64 - 5 {
                    return Some(*c);
                }
            }
        }
    } else if count == 0 && splits.contains(&"Z") {
        return Some('Z');
    }
    static RE: OnceLock<Regex> = OnceLock::new();
    // Python's `\s` (str.isspace) also takes U+001C..U+001F, which Unicode White_Space does not.
    let re = RE.get_or_init(|| Regex::new(r"(?i)(?:correct[\s\x1C-\x1F]+)?answer[\s\x1C-\x1F]+is[\s\x1C-\x1F]+\**([ABCD])\**").expect("regex"));
    if let Some(m) = re.captures(answer) {
        let l = m[1].to_uppercase().chars().next().expect("one letter");
        if choices.iter().any(|(c, _)| *c == l) {
            return Some(l);
        }
    }
    None
}

/// `can_infer_text`: the one option whose text appears in the answer (case-insensitive), unless the
/// answer is over twice as long as all the options together.
pub fn can_infer_text(answer: &str, choices: &[(char, String)]) -> Option<char> {
    let answer = answer.to_lowercase();
    let total: usize = choices.iter().map(|(_, v)| v.chars().count()).sum();
    if answer.chars().count() > 2 * total {
        return None;
    }
    let cands: Vec<char> = choices.iter().filter(|(_, v)| answer.contains(&v.to_lowercase())).map(|(c, _)| *c).collect();
    match cands.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// `can_infer`.
pub fn can_infer(answer: &str, choices: &[(char, String)]) -> Option<char> {
    can_infer_option(answer, choices).or_else(|| can_infer_text(answer, choices))
}

// ---------------------------------------------------------------------------------------------

struct Question {
    /// The options in their original order.
    options: Vec<String>,
    /// Index of the answer among `options` (None: the file has no answer column).
    answer: Option<usize>,
    category: Option<String>,
    l2: Option<String>,
}

pub struct MmBench {
    path: PathBuf,
    items: Vec<Item>,
    questions: Vec<Question>,
}

pub fn find_tsv(data: &Path) -> Result<PathBuf> {
    if data.is_file() {
        return Ok(data.to_path_buf());
    }
    let named = data.join("mmbench_dev_20230712.tsv");
    if named.is_file() {
        return Ok(named);
    }
    let tsvs: Vec<PathBuf> = std::fs::read_dir(data)
        .map_err(|e| Error::io(data, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tsv"))
        .collect();
    match tsvs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::Input(format!("{}: no .tsv file in this folder", data.display()))),
        _ => Err(Error::Input(format!("{}: several .tsv files; give --data the one to use", data.display()))),
    }
}

impl MmBench {
    pub fn load(data: &Path) -> Result<Self> {
        let path = find_tsv(data)?;
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let rows = parse_tsv(&text);
        let (header, rows) = rows.split_first().ok_or_else(|| Error::config(&path, "<file>", "empty TSV"))?;
        let col = |name: &str| header.iter().position(|h| h == name);
        let need = |name: &str| col(name).ok_or_else(|| Error::config(&path, name, "no such column in the header"));
        let (c_index, c_question, c_image) = (need("index")?, need("question")?, need("image")?);
        let (c_hint, c_answer, c_cat, c_l2) = (col("hint"), col("answer"), col("category"), col("l2-category"));
        let c_opts: Vec<Option<usize>> = LETTERS.iter().map(|l| col(&l.to_string())).collect();
        let cell = |r: &[String], c: Option<usize>| -> Option<String> { c.and_then(|c| r.get(c)).filter(|s| !is_missing(s)).cloned() };

        // Images by row index, for rows that refer to another row's image.
        let mut images: HashMap<String, Arc<Vec<u8>>> = HashMap::new();
        let mut parsed = Vec::new();
        for (n, r) in rows.iter().enumerate() {
            let line = format!("row {}", n + 1);
            let index = cell(r, Some(c_index)).ok_or_else(|| Error::config(&path, format!("{line}: index"), "missing"))?;
            let image = cell(r, Some(c_image)).ok_or_else(|| Error::config(&path, format!("{line} (index {index}): image"), "missing"))?;
            if image.len() > 64 {
                let bytes = b64decode(&image).map_err(|e| Error::config(&path, format!("{line} (index {index}): image"), e))?;
                images.insert(index.clone(), Arc::new(bytes));
            }
            parsed.push((line, index, image));
        }
        let mut items = Vec::new();
        let mut questions = Vec::new();
        for ((line, index, image), r) in parsed.into_iter().zip(rows) {
            let bytes = (if image.len() > 64 { images.get(&index) } else { images.get(&image) })
                .cloned()
                .ok_or_else(|| Error::config(&path, format!("{line} (index {index}): image"), format!("refers to row index `{image}`, which has no image")))?;
            let question = cell(r, Some(c_question)).ok_or_else(|| Error::config(&path, format!("{line} (index {index}): question"), "missing"))?;
            let options: Vec<String> = c_opts.iter().map_while(|&c| cell(r, c)).collect();
            if options.is_empty() {
                return Err(Error::config(&path, format!("{line} (index {index}): A"), "no options"));
            }
            let answer = match cell(r, c_answer) {
                Some(a) => Some(
                    LETTERS[..options.len()]
                        .iter()
                        .position(|l| a == l.to_string())
                        .ok_or_else(|| Error::config(&path, format!("{line} (index {index}): answer"), format!("`{a}` is not one of the {} options", options.len())))?,
                ),
                None => None,
            };
            let qid = match index.parse::<i64>() {
                Ok(i) => json!(i),
                Err(_) => json!(index),
            };
            let hint = cell(r, c_hint);
            let n = options.len();
            let group = questions.len();
            for round in 0..n {
                let rotated: Vec<String> = (0..n).map(|j| options[(j + round) % n].clone()).collect();
                let chars: Vec<String> = (0..n).map(|j| LETTERS[(j + round) % n].to_string()).collect();
                let mut q = match &hint {
                    Some(h) => format!("{h}\n{question}"),
                    None => question.clone(),
                };
                for (l, o) in LETTERS.iter().zip(&rotated) {
                    q.push_str(&format!("\n{l}. {o}"));
                }
                let mut extra = Map::new();
                extra.insert("round_id".into(), json!(round));
                extra.insert("options".into(), json!(rotated));
                extra.insert("option_char".into(), json!(chars));
                items.push(Item {
                    key: format!("{index}/{round}"),
                    question_id: qid.clone(),
                    prompt: format!("{q}\n{MC_SUFFIX}"),
                    record_prompt: q,
                    image: Some(ImageRef::Bytes { name: format!("{}#index={index}", path.display()), data: bytes.clone() }),
                    extra,
                    group,
                });
            }
            questions.push(Question { options, answer, category: cell(r, c_cat), l2: cell(r, c_l2) });
        }
        Ok(MmBench { path, items, questions })
    }
}

#[derive(Default)]
struct Tally {
    hit: usize,
    total: usize,
}

impl Tally {
    fn json(&self) -> Value {
        json!({ "accuracy": super::bench::ratio(self.hit as f64, self.total as f64), "correct": self.hit, "total": self.total })
    }
}

impl Benchmark for MmBench {
    fn bench(&self) -> Bench {
        Bench::MmBench
    }
    fn items(&self) -> &[Item] {
        &self.items
    }
    fn score(&self, preds: &Predictions) -> Result<Value> {
        // Round texts per question.
        let mut answers: Vec<Vec<Option<&str>>> = self.questions.iter().map(|q| vec![None; q.options.len()]).collect();
        for (i, r) in preds.matched(&self.items)? {
            let it = &self.items[i];
            let round = it.extra["round_id"].as_u64().expect("set at load") as usize;
            answers[it.group][round] = Some(r.text.as_str());
        }
        let (mut circular, mut vanilla) = (Tally::default(), Tally::default());
        let mut cats: Vec<(String, Tally)> = Vec::new();
        let mut l2s: Vec<(String, Tally)> = Vec::new();
        let mut incomplete = 0;
        let add = |v: &mut Vec<(String, Tally)>, k: &Option<String>, hit: bool| {
            if let Some(k) = k {
                let i = v.iter().position(|(c, _)| c == k).unwrap_or_else(|| {
                    v.push((k.clone(), Tally::default()));
                    v.len() - 1
                });
                v[i].1.hit += usize::from(hit);
                v[i].1.total += 1;
            }
        };
        for (q, rounds) in self.questions.iter().zip(&answers) {
            if rounds.iter().all(Option::is_none) {
                continue;
            }
            let a = q.answer.ok_or_else(|| {
                Error::config(&self.path, "answer", "no answers in this TSV (a test split?): submit the predictions to the MMBench server instead")
            })?;
            let n = q.options.len();
            let right = |round: usize, text: &str| {
                let choices: Vec<(char, String)> = (0..n).map(|j| (LETTERS[j], q.options[(j + round) % n].clone())).collect();
                can_infer(text, &choices) == Some(LETTERS[(a + n - round) % n])
            };
            if let Some(t0) = rounds[0] {
                vanilla.total += 1;
                vanilla.hit += usize::from(right(0, t0));
            }
            if rounds.iter().any(Option::is_none) {
                incomplete += 1;
                continue;
            }
            let hit = rounds.iter().enumerate().all(|(r, t)| right(r, t.expect("complete")));
            circular.total += 1;
            circular.hit += usize::from(hit);
            add(&mut cats, &q.category, hit);
            add(&mut l2s, &q.l2, hit);
        }
        let to_map = |v: Vec<(String, Tally)>| -> Map<String, Value> { v.into_iter().map(|(k, t)| (k, t.json())).collect() };
        Ok(json!({
            "accuracy": super::bench::ratio(circular.hit as f64, circular.total as f64),
            "correct": circular.hit,
            "total": circular.total,
            "incomplete": incomplete,
            "vanilla_accuracy": super::bench::ratio(vanilla.hit as f64, vanilla.total as f64),
            "vanilla_correct": vanilla.hit,
            "vanilla_total": vanilla.total,
            "categories": to_map(cats),
            "l2_categories": to_map(l2s),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(opts: &[&str]) -> Vec<(char, String)> {
        opts.iter().enumerate().map(|(i, o)| (LETTERS[i], o.to_string())).collect()
    }

    #[test]
    fn tsv_quoting_like_pandas() {
        let rows = parse_tsv("a\tb\tc\r\n1\t\"x\ty\n\"\"z\"\"\"\t3\n\n4\t\t\"\"\n");
        assert_eq!(rows, vec![vec!["a", "b", "c"], vec!["1", "x\ty\n\"z\"", "3"], vec!["4", "", ""]]);
        assert!(is_missing("") && is_missing("NaN") && is_missing("none") && is_missing("N/A"));
        assert!(!is_missing("0") && !is_missing("No"));
    }

    #[test]
    fn base64_like_python() {
        assert_eq!(b64decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(b64decode("aGVs\nbG8").unwrap(), b"hello");
        assert_eq!(b64decode("").unwrap(), b"");
        assert!(b64decode("a").is_err());
    }

    #[test]
    fn can_infer_rules() {
        let c = ch(&["cat", "dog", "bird", "fish"]);
        assert_eq!(can_infer("B", &c), Some('B'));
        assert_eq!(can_infer("(C) bird", &c), Some('C'));
        assert_eq!(can_infer("B.", &c), Some('B'));
        // Two letters: no option; "dog" is not in the text either.
        assert_eq!(can_infer("A or B", &c), None);
        // A single letter but too early in a long answer: falls to the text rule, too long there.
        assert_eq!(can_infer("B is my guess because the picture shows many things", &c), None);
        assert_eq!(can_infer("The correct answer is **D**, a fish swimming in a big blue tank today", &c), Some('D'));
        // Text match: exactly one option's text, short answer.
        assert_eq!(can_infer("a dog", &c), Some('B'));
        assert_eq!(can_infer("cat dog", &c), None);
        assert_eq!(can_infer("Z", &c), Some('Z'));
        assert_eq!(can_infer("Cannot determine the answer", &c), Some('Z'));
        assert_eq!(can_infer("E", &c), None);
    }
}
