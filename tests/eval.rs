//! `stic eval` (issue #7): each benchmark's loader, prompts and scorer on a small hand-written
//! sample in the official format (`tests/fixtures/eval/<bench>/`, with `predictions.jsonl` whose
//! scores were worked out by hand and checked against the official Python scripts), plus one run of
//! the binary with the tiny checkpoint.

mod common;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use stic::eval::{self, Bench, Benchmark};

use common::*;

fn data(dir: &str) -> PathBuf {
    fixtures().join("eval").join(dir)
}

fn load(bench: Bench, dir: &str) -> Box<dyn Benchmark> {
    eval::load(bench, &data(dir), None).unwrap_or_else(|e| panic!("{dir}: {e}"))
}

/// Load the sample and score its predictions.jsonl.
fn score(bench: Bench, dir: &str) -> (Box<dyn Benchmark>, Value) {
    let b = load(bench, dir);
    let m = eval::score_file(b.as_ref(), &data(dir).join("predictions.jsonl")).unwrap_or_else(|e| panic!("{dir}: {e}"));
    (b, m)
}

fn close(v: &Value, want: f64) {
    let got = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stic-eval-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn scienceqa_letter_parsing_and_img_subset() {
    let (b, m) = score(Bench::ScienceQa, "scienceqa");
    // Items: the six questions with an image; the seventh (id 5) has none.
    assert_eq!(b.items().len(), 6);
    let it = &b.items()[0];
    assert_eq!(it.key, "1");
    assert_eq!(
        it.prompt,
        "Context: N/A\nQuestion: Which animal's feet are also adapted for sticking to smooth surfaces?\nOptions: (A) tiger (B) gecko (C) cow\n\
         Answer with the option's letter from the given choices directly."
    );
    assert_eq!(it.record_prompt, format!("<image>\n{}", it.prompt));
    assert!(matches!(&it.image, Some(eval::ImageRef::File(p)) if p.ends_with("images/test/1/image.png")));
    // "B" right; "A. the sun" right; "I think the answer is C." FAILED (lower-case "the");
    // "C" beyond the 2 choices; "... The answer is D." right; two "The answer is" FAILED;
    // id 5 (no image) "A" right. LLaVA's eval_science_qa.py: 4/7, IMG 3/6.
    assert_eq!(m["answered"], json!(7));
    assert_eq!((m["correct"].clone(), m["total"].clone()), (json!(4), json!(7)));
    close(&m["accuracy"], 4.0 / 7.0);
    assert_eq!((m["img_correct"].clone(), m["img_total"].clone()), (json!(3), json!(6)));
    close(&m["img_accuracy"], 0.5);
    assert_eq!(m["failed_parses"], json!(2));
}

#[test]
fn textvqa_soft_accuracy_with_normalisation() {
    let (b, m) = score(Bench::TextVqa, "textvqa");
    assert_eq!(b.items().len(), 6);
    assert_eq!(b.items()[0].question_id, json!("0a1b2c3d4e5f6a7b"));
    assert!(b.items()[0].prompt.ends_with("\nReference OCR token: cats, 2\nAnswer the question using a single word or phrase."));
    // "Two" vs 10 x "2"/"two": 1; "a dog" vs dog, dog, "a dog", 7 x cat: (3 x 2/3 + 7 x 1) / 10 = 0.9;
    // "Coca-Cola" vs "coca-cola", "coca cola", 8 x pepsi: (2 x 1/3 + 8 x 2/3) / 10 = 0.6;
    // "go" vs 10 x stop: 0; "dont walk" -> "don't walk" (6 of 10): 1; "3.5." -> "3.5": 1.
    // The annotation of the first question is lower case, LLaVA's prompt is not (matched lower-cased).
    assert_eq!(m["total"], json!(6));
    close(&m["accuracy"], (1.0 + 0.9 + 0.6 + 0.0 + 1.0 + 1.0) / 6.0);
}

#[test]
fn textvqa_without_llava_question_file_builds_prompts_from_annotations() {
    let b = eval::load(Bench::TextVqa, &data("textvqa").join("TextVQA_0.5.1_val.json"), None).unwrap();
    assert_eq!(b.items().len(), 6);
    let it = &b.items()[1];
    assert_eq!(it.prompt, "what animal is this?\nAnswer the question using a single word or phrase.");
    assert!(matches!(&it.image, Some(eval::ImageRef::File(p)) if p.ends_with("train_images/0a1b2c3d4e5f6a7b.jpg")));
}

#[test]
fn chartqa_relaxed_accuracy_per_split() {
    let (b, m) = score(Bench::ChartQa, "chartqa");
    assert_eq!(b.items().len(), 7);
    assert_eq!(b.items()[0].prompt, "What is the value of the tallest bar?\nAnswer the question using a single word or phrase.");
    assert!(matches!(&b.items()[0].image, Some(eval::ImageRef::File(p)) if p.ends_with("png/bar_01.png")));
    // human: 105 vs 100 (exactly 5%) right, 105.1 wrong, "yes" vs "Yes" right, "0.0" vs "0" wrong
    // (a zero target is compared as text); augmented: 19 vs 20 (5%) right, "45%" vs 0.45 right,
    // "Brazil." vs "Brazil" wrong.
    let s = &m["splits"];
    assert_eq!((s["test_human"]["correct"].clone(), s["test_human"]["total"].clone()), (json!(2), json!(4)));
    assert_eq!((s["test_augmented"]["correct"].clone(), s["test_augmented"]["total"].clone()), (json!(2), json!(3)));
    close(&m["relaxed_accuracy"], 4.0 / 7.0);
    close(&m["average"], (0.5 + 2.0 / 3.0) / 2.0);
}

#[test]
fn mmbench_circular_evaluation() {
    let (b, m) = score(Bench::MmBench, "mmbench");
    // 4 + 3 + 2 + 4 + 4 rotations.
    assert_eq!(b.items().len(), 17);
    let round1 = &b.items()[1];
    assert_eq!(round1.key, "0/1");
    assert_eq!(round1.question_id, json!(0));
    assert_eq!(
        round1.prompt,
        "Look at the picture.\nThen answer.\nWhat animal is shown?\nA. dog\nB. bird\nC. fish\nD. cat\n\
         Answer with the option's letter from the given choices directly."
    );
    assert_eq!(round1.extra["option_char"], json!(["B", "C", "D", "A"]));
    // Question 1 has no D (stops at the first missing option), question 2 has hint "nan" (none)
    // and its image refers to row 0's.
    let q1 = &b.items()[4];
    assert_eq!(q1.prompt, "Which colour dominates the image?\nA. red\nB. green\nC. blue\nAnswer with the option's letter from the given choices directly.");
    let q2 = &b.items()[7];
    assert!(q2.prompt.starts_with("Is the image in colour?\nA. yes\nB. no\n"));
    match (&b.items()[0].image, &q2.image) {
        (Some(eval::ImageRef::Bytes { data: a, .. }), Some(eval::ImageRef::Bytes { data: c, .. })) => {
            assert_eq!(a, c);
            assert!(a.starts_with(&[0xFF, 0xD8]), "row 0's image is the JPEG");
            stic::image::decode_image(c, Path::new("q2")).unwrap();
        }
        _ => panic!("MMBench images are bytes"),
    }
    assert!(b.items()[9].prompt.starts_with("Which \"shape\" is it?\n"));
    // q0: B, A, "The answer is D", "dog" (text match, C) = every rotation right; q1 fails its third
    // rotation; q2 right; q3 has two of four rotations (incomplete); q4 unanswered.
    assert_eq!((m["correct"].clone(), m["total"].clone(), m["incomplete"].clone()), (json!(2), json!(3), json!(1)));
    close(&m["accuracy"], 2.0 / 3.0);
    assert_eq!((m["vanilla_correct"].clone(), m["vanilla_total"].clone()), (json!(4), json!(4)));
    assert_eq!(m["categories"]["color"], json!({"accuracy": 0.5, "correct": 1, "total": 2}));
    assert_eq!(m["categories"]["attribute_recognition"]["correct"], json!(1));
    assert_eq!(m["l2_categories"]["coarse_perception"]["total"], json!(2));
}

#[test]
fn pope_metrics_per_category() {
    let (b, m) = score(Bench::Pope, "pope");
    assert_eq!(b.items().len(), 8);
    let it = &b.items()[0];
    assert_eq!((it.key.as_str(), it.extra["category"].clone()), ("adversarial/1", json!("adversarial")));
    assert_eq!(it.prompt, "Is there a snowboard in the image?\nAnswer the question using a single word or phrase.");
    // adversarial: TP "Yes, ...", FN "No.", TN "There is not a cat.", FP "Yes".
    let a = &m["categories"]["adversarial"];
    assert_eq!((a["tp"].clone(), a["fp"].clone(), a["tn"].clone(), a["fn"].clone()), (json!(1), json!(1), json!(1), json!(1)));
    for k in ["accuracy", "precision", "recall", "f1", "yes_ratio"] {
        close(&a[k], 0.5);
    }
    // random: TP "Yes", FP "NO" (only "No", "no", "not" count), TP "yes. no." (first sentence),
    // TN "no, there isn't".
    let r = &m["categories"]["random"];
    assert_eq!((r["tp"].clone(), r["fp"].clone(), r["tn"].clone(), r["fn"].clone()), (json!(2), json!(1), json!(1), json!(0)));
    close(&r["accuracy"], 0.75);
    close(&r["precision"], 2.0 / 3.0);
    close(&r["recall"], 1.0);
    close(&r["f1"], 0.8);
    close(&r["yes_ratio"], 0.75);
    close(&m["average"]["f1"], 0.65);
    close(&m["average"]["accuracy"], 0.625);
}

#[test]
fn mathvista_extraction_and_precision() {
    let (b, m) = score(Bench::MathVista, "mathvista");
    assert_eq!(b.items().len(), 10);
    let it = b.items().iter().find(|i| i.key == "1").unwrap();
    assert_eq!(
        it.prompt,
        "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n\
         Question: If the angle A is 110°, what is the angle BOC?\nChoices:\n(A) 135°\n(B) 140°\n(C) 145°\n(D) 150°"
    );
    assert!(matches!(&it.image, Some(eval::ImageRef::File(p)) if p.ends_with("mathvista/images/1.jpg")));
    let unit = b.items().iter().find(|i| i.key == "3").unwrap();
    assert!(unit.prompt.ends_with("Question: What is the total volume of the measuring cup? (Unit: g)"));
    // Right: "C" (letter), "The correct answer is (B) 8/11." (letter by can_infer), "1000",
    // "1.25" (round(1.25, 1) = 1.2, tie to even), "47.65" (47.649999... -> 47.6),
    // 'The answer is "14".', "[2014, 2016]", "Tokyo" (text match). Wrong: "The sum is 18.26."
    // (18.26 != 18.27), "" (no integer).
    assert_eq!((m["correct"].clone(), m["total"].clone()), (json!(8), json!(10)));
    close(&m["accuracy"], 0.8);
    assert_eq!(m["fallback_extractions"], json!(4));
    assert_eq!(m["by"]["question_type"]["multi_choice"]["correct"], json!(3));
    assert_eq!(m["by"]["answer_type"]["float"], json!({"accuracy": 2.0 / 3.0, "correct": 2, "total": 3}));
    assert_eq!(m["by"]["answer_type"]["integer"]["correct"], json!(2));
}

#[test]
fn llava_bench_writes_the_judges_answer_file() {
    let (b, mut m) = score(Bench::LlavaBench, "llava_bench");
    assert_eq!(b.items().len(), 3);
    assert_eq!(b.items()[1].prompt, "Describe this photo in detail.");
    assert_eq!((m["items"].clone(), m["answered"].clone()), (json!(3), json!(2)));
    assert_eq!(m["categories"], json!({"conv": 1, "complex": 1}));
    let out = scratch("llava-bench");
    let (preds, _) = eval::read_predictions(&data("llava_bench").join("predictions.jsonl"), b.as_ref(), false).unwrap();
    eval::write_outputs(b.as_ref(), &preds, &mut m, &out).unwrap();
    let text = std::fs::read_to_string(out.join("llava_bench_answers.jsonl")).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[1],
        json!({"question_id": 2, "prompt": "What might be the purpose of this artwork?", "text": "It is meant to be a playful ad.",
               "answer_id": "fixture2", "model_id": "llava-v1.5-13b", "metadata": {}})
    );
    let written: Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(written["answered"], json!(2));
    assert!(written["submission"].as_str().unwrap().ends_with("llava_bench_answers.jsonl"));
}

#[test]
fn mmvet_writes_the_graders_json() {
    let (b, mut m) = score(Bench::MmVet, "mmvet");
    let keys: Vec<&str> = b.items().iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["v1_0", "v1_1", "v1_10"]);
    assert_eq!(b.items()[0].prompt, "What is x in the equation?");
    assert_eq!(m["capabilities"], json!({"ocr": 2, "math": 1, "rec": 1}));
    let out = scratch("mmvet");
    let (preds, _) = eval::read_predictions(&data("mmvet").join("predictions.jsonl"), b.as_ref(), false).unwrap();
    eval::write_outputs(b.as_ref(), &preds, &mut m, &out).unwrap();
    let v: Value = serde_json::from_str(&std::fs::read_to_string(out.join("mmvet_results.json")).unwrap()).unwrap();
    assert_eq!(v, json!({"v1_0": "x = -1 or x = -5", "v1_10": "$2.50"}));
}

#[test]
fn bad_predictions_name_the_file_and_line() {
    let b = load(Bench::Pope, "pope");
    let dir = scratch("bad-preds");
    let p = dir.join("p.jsonl");
    std::fs::write(&p, "{\"key\": \"random/1\", \"text\": \"Yes\"}\n{\"key\": \"random/2\", \"text\": \n").unwrap();
    let e = eval::score_file(b.as_ref(), &p).unwrap_err().to_string();
    assert!(e.contains("p.jsonl") && e.contains("line 2") && e.contains("invalid JSON"), "{e}");
    std::fs::write(&p, "{\"key\": \"random/9\", \"text\": \"Yes\"}\n").unwrap();
    let e = eval::score_file(b.as_ref(), &p).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("random/9"), "{e}");
    std::fs::write(&p, "{\"key\": \"random/1\"}\n").unwrap();
    let e = eval::score_file(b.as_ref(), &p).unwrap_err().to_string();
    assert!(e.contains("line 1: text"), "{e}");
}

#[test]
fn bad_data_names_the_file_and_field() {
    let dir = scratch("bad-data");
    std::fs::create_dir_all(dir.join("coco")).unwrap();
    std::fs::write(dir.join("coco/coco_pope_random.json"), "{\"question_id\": 1, \"image\": \"a.jpg\", \"text\": \"Is there a cat?\"}\n").unwrap();
    let e = eval::load(Bench::Pope, &dir, None).err().unwrap().to_string();
    assert!(e.contains("coco_pope_random.json") && e.contains("line 1: label"), "{e}");
    let e = eval::load(Bench::ScienceQa, &dir, None).err().unwrap().to_string();
    assert!(e.contains("llava_test_CQM-A.json"), "{e}");
}


#[test]
fn cli_scores_a_predictions_file() {
    let d = data("pope");
    let (ok, out, err) = stic(&["eval", "--bench", "pope", "--data", d.to_str().unwrap(), "--predictions", d.join("predictions.jsonl").to_str().unwrap()]);
    assert!(ok, "{err}");
    let m: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["bench"], json!("pope"));
    close(&m["average"]["f1"], 0.65);
}

#[test]
fn end_to_end_with_the_tiny_model_and_resume() {
    let model = fixtures().join("llava_next_tiny");
    let d = data("mmbench");
    let out = scratch("e2e");
    let run = |limit: &str| {
        let (ok, stdout, err) = stic(&[
            "eval", "--model", model.to_str().unwrap(), "--bench", "mmbench", "--data", d.to_str().unwrap(),
            "--out", out.to_str().unwrap(), "--limit", limit, "--max-new-tokens", "4", "--batch-size", "3", "--quiet",
        ]);
        assert!(ok, "{err}");
        assert!(err.is_empty(), "--quiet prints nothing on stderr: {err}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    let read_lines = || -> Vec<Value> {
        std::fs::read_to_string(out.join("predictions.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    // Two questions: 4 + 3 rotations.
    let m = run("2");
    let lines = read_lines();
    assert_eq!(lines.len(), 7);
    let keys: Vec<&str> = lines.iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["0/0", "0/1", "0/2", "0/3", "1/0", "1/1", "1/2"]);
    for l in &lines {
        for f in ["question_id", "prompt", "text", "answer_id", "model_id", "metadata", "round_id", "options", "option_char"] {
            assert!(l.get(f).is_some(), "{f} missing in {l}");
        }
        assert_eq!(l["model_id"], json!("llava_next_tiny"));
        assert_eq!(l["answer_id"].as_str().unwrap().len(), 22);
    }
    assert_eq!(lines[5]["options"], json!(["green", "blue", "red"]));
    let written: Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(written, m);
    assert_eq!((m["bench"].clone(), m["items"].clone(), m["answered"].clone()), (json!("mmbench"), json!(17), json!(7)));
    assert_eq!(m["total"], json!(2));
    let acc = m["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));

    // A run killed mid-line leaves a torn last line: dropped on resume. A third question: the
    // seven answers are kept as they were, two more appended.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(out.join("predictions.jsonl")).unwrap();
    write!(f, "{{\"key\": \"2/0\", \"te").unwrap();
    drop(f);
    let m = run("3");
    let again = read_lines();
    assert_eq!(again.len(), 9);
    assert_eq!(&again[..7], &lines[..]);
    assert_eq!(again[8]["key"], json!("2/1"));
    assert_eq!(m["answered"], json!(9));
}
