//! Issue #18: `stic eval --predictions` on answer files in LLaVA's own format (no `key`), each with a
//! question answered twice, an unanswered question and an extra line, against the numbers LLaVA's
//! official scripts computed on the same files (tests/fixtures/eval/llava_answers/<bench>/
//! expected.json, written by scripts/gen_llava_answer_fixtures.py at a pinned LLaVA commit).
//! Every number must be equal, not close.

mod common;

use std::path::PathBuf;

use serde_json::{json, Value};
use stic::eval::{self, Bench, Benchmark};

use common::*;

fn dir(bench: &str) -> PathBuf {
    fixtures().join("eval").join("llava_answers").join(bench)
}

fn expected(bench: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir(bench).join("expected.json")).unwrap()).unwrap()
}

fn load(bench: Bench, name: &str) -> Box<dyn Benchmark> {
    eval::load(bench, &dir(name), None).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn score(bench: Bench, name: &str, file: &str) -> stic::Result<Value> {
    let b = load(bench, name);
    eval::score_file(b.as_ref(), &dir(name).join(file))
}

fn lines(bench: &str, file: &str) -> usize {
    std::fs::read_to_string(dir(bench).join(file)).unwrap().lines().count()
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stic-eval-llava-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A wrong join: the official script's error (recorded), and stic's naming the file and line.
fn wrong_join(bench: Bench, name: &str, needle: &str) {
    let want = &expected(name)["bad_answers"];
    assert_eq!(want["error"], json!("KeyError"), "the official script fails on this file");
    let e = score(bench, name, "bad_answers.jsonl").unwrap_err().to_string();
    let line = format!("line {}", want["line"]);
    assert!(e.contains("bad_answers.jsonl") && e.contains(&line) && e.contains(needle), "{e}");
}

#[test]
fn textvqa_scores_every_line_as_eval_textvqa() {
    let want = &expected("textvqa")["answers"];
    let m = score(Bench::TextVqa, "textvqa", "answers.jsonl").unwrap();
    // Every line, the repeated question twice: 7 lines, as the script's `Samples`.
    assert_eq!(m["answered"], json!(lines("textvqa", "answers.jsonl")));
    assert_eq!(m["total"], want["total"]);
    assert_eq!(m["accuracy"], want["accuracy"]);
    wrong_join(Bench::TextVqa, "textvqa", "ffffffffffffffff");
}

#[test]
fn stic_files_keep_one_line_per_key() {
    // The same answers with keys (stic's own format): a repeated key is a resumed item, the later
    // line replaces the earlier one.
    let b = load(Bench::TextVqa, "textvqa");
    let d = scratch("keys");
    let p = d.join("predictions.jsonl");
    let q = |key: &str, text: &str| {
        json!({"key": key, "question_id": "0a1b2c3d4e5f6a7b", "prompt": "what animal is this?\nAnswer the question using a single word or phrase.", "text": text})
            .to_string()
    };
    std::fs::write(&p, [q("0a1b2c3d4e5f6a7b/2", "cat"), q("0a1b2c3d4e5f6a7b/2", "dog")].join("\n") + "\n").unwrap();
    let m = eval::score_file(b.as_ref(), &p).unwrap();
    assert_eq!((m["answered"].clone(), m["total"].clone()), (json!(1), json!(1)));
    // The later annotation of the repeated question has ten "dog"s.
    assert_eq!(m["accuracy"], json!(1.0));
    // Without keys the two lines are two answers: "cat" scores 0.
    let q = |text: &str| {
        json!({"question_id": "0a1b2c3d4e5f6a7b", "prompt": "what animal is this?\nAnswer the question using a single word or phrase.", "text": text})
            .to_string()
    };
    std::fs::write(&p, [q("cat"), q("dog")].join("\n") + "\n").unwrap();
    let m = eval::score_file(b.as_ref(), &p).unwrap();
    assert_eq!((m["answered"].clone(), m["total"].clone(), m["accuracy"].clone()), (json!(2), json!(2), json!(0.5)));
}

#[test]
fn pope_joins_by_question_file_and_pairs_by_position_as_eval_pope() {
    let want = &expected("pope")["answers"]["categories"];
    let m = score(Bench::Pope, "pope", "answers.jsonl").unwrap();
    let got = &m["categories"];
    // The "popular" answer has no annotation file: not scored.
    assert_eq!(got.as_object().unwrap().keys().collect::<Vec<_>>(), want.as_object().unwrap().keys().collect::<Vec<_>>());
    for (cat, w) in want.as_object().unwrap() {
        for k in ["samples", "tp", "fp", "tn", "fn", "accuracy", "precision", "recall", "f1", "yes_ratio"] {
            assert_eq!(got[cat][k], w[k], "{cat} {k}");
        }
    }
    assert_eq!(m["answered"], json!(lines("pope", "answers.jsonl")));
    wrong_join(Bench::Pope, "pope", "999");
}

#[test]
fn pope_llava_answers_need_the_question_file() {
    let d = scratch("pope-noq");
    std::fs::create_dir_all(d.join("coco")).unwrap();
    for c in ["adversarial", "random"] {
        let f = format!("coco_pope_{c}.json");
        std::fs::copy(dir("pope").join("coco").join(&f), d.join("coco").join(&f)).unwrap();
    }
    let b = eval::load(Bench::Pope, &d, None).unwrap();
    let e = eval::score_file(b.as_ref(), &dir("pope").join("answers.jsonl")).unwrap_err().to_string();
    assert!(e.contains("answers.jsonl") && e.contains("llava_pope_test.jsonl"), "{e}");
}

#[test]
fn scienceqa_walks_the_split_as_eval_science_qa() {
    let want = &expected("scienceqa")["answers"];
    let m = score(Bench::ScienceQa, "scienceqa", "answers.jsonl").unwrap();
    for k in ["accuracy", "correct", "total", "img_accuracy", "img_correct", "img_total", "failed_parses"] {
        assert_eq!(m[k], want[k], "{k}");
    }
    assert!(m["split"].as_str().unwrap().ends_with("pid_splits.json"));
    // No official failure here (the script walks the split and never looks the id up), but an id
    // that names no problem at all is answers for another data set.
    let e = score(Bench::ScienceQa, "scienceqa", "bad_answers.jsonl").unwrap_err().to_string();
    assert!(e.contains("bad_answers.jsonl") && e.contains("line 3") && e.contains("`99`"), "{e}");
}

#[test]
fn cli_scores_llava_answer_files() {
    let d = dir("pope");
    let (ok, out, err) = stic(&["eval", "--bench", "pope", "--data", d.to_str().unwrap(), "--predictions", d.join("answers.jsonl").to_str().unwrap()]);
    assert!(ok, "{err}");
    let m: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["categories"]["random"]["yes_ratio"], expected("pope")["answers"]["categories"]["random"]["yes_ratio"]);
    let (ok, _, err) = stic(&["eval", "--bench", "pope", "--data", d.to_str().unwrap(), "--predictions", d.join("bad_answers.jsonl").to_str().unwrap()]);
    assert!(!ok && err.contains("bad_answers.jsonl") && err.contains("line 4"), "{err}");
}

/// MMBench's submission file (issue #18): the sheet stic writes from the TSV and an answer file in
/// LLaVA's format equals, cell by cell (value and type), the .xlsx that LLaVA's own
/// scripts/convert_mmbench_for_submission.py wrote from the same files
/// (scripts/gen_mmbench_submission_fixture.py: pandas 2.3.3 + openpyxl 3.1.5). The answers include
/// two rounds of one index, a repeated index, an unanswered row, a line naming no row and a string
/// id; the TSV has columns pandas reads as int64, float64 with NaN, bool and strings with NA words
/// and a leading "=". The .xlsx itself is read back with calamine.
#[test]
fn mmbench_submission_matches_the_official_conversion() {
    use stic::eval::mmbench_submission::{submission_table, write_submission, Cell};
    let d = fixtures().join("eval/llava_answers/mmbench");
    let exp: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("expected.json")).unwrap()).unwrap();
    let sheet = submission_table(&d.join("mmbench_sub.tsv"), &d.join("answers.jsonl")).unwrap();
    let want = exp["cells"].as_array().unwrap();
    assert_eq!(sheet.len(), want.len(), "rows");
    for (r, (got, want)) in sheet.iter().zip(want).enumerate() {
        let want = want.as_array().unwrap();
        assert_eq!(got.len(), want.len(), "row {r}: columns");
        for (c, (g, w)) in got.iter().zip(want).enumerate() {
            let ok = match (g, w["type"].as_str().unwrap(), &w["value"]) {
                (Cell::Empty, _, serde_json::Value::Null) => true,
                (Cell::Number(x), "n", v) => v.as_f64() == Some(*x),
                (Cell::Bool(b), "b", v) => v.as_bool() == Some(*b),
                (Cell::Str(s), "s", v) => v.as_str() == Some(s.as_str()),
                (Cell::Formula(f), "f", v) => v.as_str() == Some(f.as_str()),
                _ => false,
            };
            assert!(ok, "row {r} column {c}: stic {g:?}, official {w}");
        }
    }
    // The file: written atomically, and its cells read back as the sheet says.
    let out = std::env::temp_dir().join(format!("stic-mmbench-sub-{}.xlsx", std::process::id()));
    let n = write_submission(&d.join("mmbench_sub.tsv"), &d.join("answers.jsonl"), &out).unwrap();
    assert_eq!(n, 3, "indexes 0, 1 and 3 have a prediction");
    use calamine::{open_workbook, Data, Reader, Xlsx};
    let mut wb: Xlsx<_> = open_workbook(&out).unwrap();
    let range = wb.worksheet_range("Sheet1").unwrap();
    for (r, row) in sheet.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let got = range.get_value((r as u32, c as u32)).cloned().unwrap_or(Data::Empty);
            let ok = match cell {
                Cell::Empty => matches!(got, Data::Empty),
                Cell::Number(x) => matches!(got, Data::Float(v) if v == *x) || matches!(got, Data::Int(v) if v as f64 == *x),
                Cell::Bool(b) => got == Data::Bool(*b),
                Cell::Str(s) => got == Data::String(s.clone()),
                // calamine reads a formula cell's cached value (none written): the formula is checked
                // in the sheet above.
                Cell::Formula(_) => true,
            };
            assert!(ok, "xlsx row {r} column {c}: {got:?}, want {cell:?}");
        }
    }
    let _ = std::fs::remove_file(&out);
    // The CLI writes it too, and names a wrong bench.
    let out = std::env::temp_dir().join(format!("stic-mmbench-sub-cli-{}.xlsx", std::process::id()));
    let (tsv, ans) = (d.join("mmbench_sub.tsv"), d.join("answers.jsonl"));
    let (ok, _, err) = stic(&["eval", "--bench", "mmbench", "--data", tsv.to_str().unwrap(), "--predictions", ans.to_str().unwrap(), "--submission", out.to_str().unwrap()]);
    assert!(out.exists(), "the CLI wrote the submission ({ok}): {err}");
    let _ = std::fs::remove_file(&out);
    let (ok, _, err) = stic(&["eval", "--bench", "pope", "--data", tsv.to_str().unwrap(), "--predictions", ans.to_str().unwrap(), "--submission", out.to_str().unwrap()]);
    assert!(!ok && err.contains("--submission"), "{err}");
}
