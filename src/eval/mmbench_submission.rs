//! The MMBench submission file (issue #18): what LLaVA's scripts/convert_mmbench_for_submission.py
//! (haotian-liu/LLaVA c121f04) writes from the benchmark TSV and an answer file in LLaVA's format.
//! MMBench's test answers are scored by its server, so this file is the official local output.
//!
//! The script (lines 18-27): `df = pd.read_table(tsv)`; drop the columns hint, category, source,
//! image, comment, l2-category; insert an empty `prediction` column at position 6; for each answer
//! line in file order, `cur_df.loc[df['index'] == pred['question_id'], 'prediction'] = pred['text']`
//! (so the last line naming an index wins, over rounds and repeats alike; a line naming no row, or
//! whose `question_id` has another type than the column, changes nothing; an unanswered row stays
//! empty); `to_excel(index=False, engine='openpyxl')`. What that makes of the cells, reproduced
//! here:
//! - pandas' type inference per column (`read_table`, C parser defaults): its NA words (`None`,
//!   `NA`, `n/a`, `nan`, empty...) are missing; a column whose present cells are all integers is
//!   int64 (float64 when some are missing), all numbers float64, all `True`/`False` words bool;
//!   anything else strings. Missing cells are written empty.
//! - openpyxl: numbers and booleans as such; a string that starts with "=" becomes a formula cell.
//!
//! Checked against the official script's own output, cell by cell (value and type):
//! `tests/eval_llava_answers.rs`, fixture from `scripts/gen_mmbench_submission_fixture.py`.

use std::path::Path;

use serde_json::Value;

use super::mmbench::{parse_tsv, PANDAS_NA};
use crate::error::{Error, Result};

/// One cell of the submission sheet.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Empty,
    Number(f64),
    Bool(bool),
    Str(String),
    /// A string starting with "=", which openpyxl stores as a formula.
    Formula(String),
}

const DROPPED: [&str; 6] = ["hint", "category", "source", "image", "comment", "l2-category"];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Float,
    Bool,
    Str,
}

fn is_int(s: &str) -> bool {
    let d = s.strip_prefix(['+', '-']).unwrap_or(s);
    !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
}
fn as_bool(s: &str) -> Option<bool> {
    match s {
        "True" | "TRUE" | "true" => Some(true),
        "False" | "FALSE" | "false" => Some(false),
        _ => None,
    }
}

/// The column's dtype as pandas infers it from its cells.
fn kind(cells: &[&str]) -> Kind {
    let present: Vec<&str> = cells.iter().copied().filter(|c| !PANDAS_NA.contains(c)).collect();
    if present.is_empty() {
        return Kind::Float; // all NaN
    }
    if present.iter().all(|c| is_int(c)) {
        return if present.len() == cells.len() { Kind::Int } else { Kind::Float };
    }
    if present.iter().all(|c| c.parse::<f64>().is_ok() && !c.chars().any(|ch| ch.is_alphabetic() && !matches!(ch, 'e' | 'E'))) {
        return Kind::Float;
    }
    if present.iter().all(|c| as_bool(c).is_some()) {
        return Kind::Bool;
    }
    Kind::Str
}

fn cell(kind: Kind, s: &str) -> Cell {
    if PANDAS_NA.contains(&s) {
        return Cell::Empty;
    }
    match kind {
        Kind::Int | Kind::Float => Cell::Number(s.parse::<f64>().expect("checked by kind")),
        Kind::Bool => Cell::Bool(as_bool(s).expect("checked by kind")),
        Kind::Str if s.starts_with('=') => Cell::Formula(s.to_string()),
        Kind::Str => Cell::Str(s.to_string()),
    }
}

/// The sheet (header row first) that the official conversion writes for `tsv` and `answers`.
pub fn submission_table(tsv: &Path, answers: &Path) -> Result<Vec<Vec<Cell>>> {
    let text = std::fs::read_to_string(tsv).map_err(|e| Error::io(tsv, e))?;
    let rows = parse_tsv(&text);
    let Some((header, body)) = rows.split_first() else { return Err(Error::Input(format!("{}: empty TSV", tsv.display()))) };
    if let Some((i, r)) = body.iter().enumerate().find(|(_, r)| r.len() != header.len()) {
        return Err(Error::Input(format!("{}: row {} has {} cells, the header {}", tsv.display(), i + 2, r.len(), header.len())));
    }
    let Some(index_col) = header.iter().position(|h| h == "index") else { return Err(Error::Input(format!("{}: no `index` column", tsv.display()))) };
    let kinds: Vec<Kind> = (0..header.len()).map(|c| kind(&body.iter().map(|r| r[c].as_str()).collect::<Vec<_>>())).collect();
    let typed: Vec<Vec<Cell>> = body.iter().map(|r| r.iter().zip(&kinds).map(|(s, &k)| cell(k, s)).collect()).collect();

    // The predictions: each line, in order, sets the rows whose index equals its question_id.
    let mut prediction = vec![Cell::Empty; body.len()];
    let text = std::fs::read_to_string(answers).map_err(|e| Error::io(answers, e))?;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| Error::Input(format!("{}: line {}: {e}", answers.display(), n + 1)))?;
        let qid = &v["question_id"];
        let Some(pred) = v["text"].as_str() else { return Err(Error::Input(format!("{}: line {}: no string `text`", answers.display(), n + 1))) };
        for (r, row) in typed.iter().enumerate() {
            let hit = match (&row[index_col], qid) {
                (Cell::Number(x), Value::Number(q)) => q.as_f64() == Some(*x),
                (Cell::Str(x), Value::String(q)) => x == q,
                (Cell::Bool(x), Value::Bool(q)) => x == q,
                _ => false,
            };
            if hit {
                prediction[r] = if pred.starts_with('=') { Cell::Formula(pred.to_string()) } else { Cell::Str(pred.to_string()) };
            }
        }
    }

    let keep: Vec<usize> = (0..header.len()).filter(|&c| !DROPPED.contains(&header[c].as_str())).collect();
    if keep.len() < 6 {
        return Err(Error::Input(format!("{}: {} columns after dropping {:?}: the script inserts `prediction` at position 6", tsv.display(), keep.len(), DROPPED)));
    }
    let assemble = |cells: Vec<Cell>, pred: Cell| -> Vec<Cell> {
        let mut out: Vec<Cell> = keep.iter().map(|&c| cells[c].clone()).collect();
        out.insert(6, pred);
        out
    };
    let mut sheet = vec![assemble(header.iter().map(|h| Cell::Str(h.clone())).collect(), Cell::Str("prediction".into()))];
    for (row, pred) in typed.into_iter().zip(prediction) {
        sheet.push(assemble(row, pred));
    }
    Ok(sheet)
}

/// Writes the submission .xlsx for `tsv` and `answers` to `out` (atomically); returns the number
/// of rows with a prediction.
pub fn write_submission(tsv: &Path, answers: &Path, out: &Path) -> Result<usize> {
    let sheet = submission_table(tsv, answers)?;
    let xerr = |e: rust_xlsxwriter::XlsxError| Error::Input(format!("{}: {e}", out.display()));
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    ws.set_name("Sheet1").map_err(xerr)?;
    for (r, row) in sheet.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let (r, c) = (r as u32, c as u16);
            match cell {
                Cell::Empty => {}
                Cell::Number(x) => {
                    ws.write_number(r, c, *x).map_err(xerr)?;
                }
                Cell::Bool(b) => {
                    ws.write_boolean(r, c, *b).map_err(xerr)?;
                }
                Cell::Str(s) => {
                    ws.write_string(r, c, s).map_err(xerr)?;
                }
                Cell::Formula(f) => {
                    ws.write_formula(r, c, f.as_str()).map_err(xerr)?;
                }
            }
        }
    }
    let tmp = out.with_extension("xlsx.tmp");
    wb.save(&tmp).map_err(xerr)?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    let pred_col = 6;
    Ok(sheet.iter().skip(1).filter(|r| r[pred_col] != Cell::Empty).count())
}
