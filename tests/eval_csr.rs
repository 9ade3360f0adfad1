//! CSR's benchmarks in `stic eval` (issue #16 item 4): CHAIR and MME, against the official Python
//! run on the fixtures (scripts/gen_chair_fixtures.py, scripts/gen_mme_fixtures.py).

mod common;

use std::path::PathBuf;

use serde_json::{json, Value};
use stic::eval::{self, chair, mme, Bench};

use common::*;

fn data(dir: &str) -> PathBuf {
    fixtures().join("eval").join(dir)
}

fn read(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stic-eval-csr-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn chair_matches_the_official_code() {
    let d = data("chair");
    let b = eval::load(Bench::Chair, &d, None).unwrap();
    assert_eq!(b.items().len(), 12);
    assert_eq!(b.items()[0].key, "139");
    assert!(b.items()[0].image.is_some());
    let m = eval::score_file(b.as_ref(), &d.join("predictions.jsonl")).unwrap();
    let want = read(d.join("expected.json"));
    // Exact: the same integer counts divided the same way.
    assert_eq!(m["chair_s"], want["chair_s"], "{m}");
    assert_eq!(m["chair_i"], want["chair_i"], "{m}");
    // One empty answer, dropped as LURE's to_chair.py drops it.
    assert_eq!(m["empty_answers"], json!(1));
    let got = m["sentences"].as_array().unwrap();
    let want_s = want["sentences"].as_array().unwrap();
    assert_eq!(got.len(), want_s.len());
    for (g, w) in got.iter().zip(want_s) {
        assert_eq!(g["image_id"], w["image_id"]);
        assert_eq!(g["generated"], w["generated"], "image {}", w["image_id"]);
        assert_eq!(g["hallucinated"], w["hallucinated"], "image {}", w["image_id"]);
    }
    // The fixture is not trivial: some captions are clean, some hallucinate.
    let s = want["chair_s"].as_f64().unwrap();
    assert!(s > 0.0 && s < 1.0);
}

#[test]
fn chair_tokens_singulars_and_words_match_the_official_code() {
    let probes = read(data("chair").join("probes.json"));
    let vocab = chair::Vocab::official();
    let caps = probes["captions"].as_array().unwrap();
    assert!(caps.len() > 30);
    for p in caps {
        let c = p["caption"].as_str().unwrap();
        assert_eq!(chair::word_tokenize(&c.to_lowercase()), strings(&p["tokens"]), "tokens of {c:?}");
        let w = vocab.caption_to_words(c);
        assert_eq!(w.words, strings(&p["words"]), "words of {c:?}");
        assert_eq!(w.node_words, strings(&p["node_words"]), "node words of {c:?}");
        assert_eq!(w.double_words, strings(&p["double_words"]), "double words of {c:?}");
    }
    let sing = probes["singularize"].as_object().unwrap();
    assert!(sing.len() > 500);
    let bad: Vec<String> = sing
        .iter()
        .filter(|(w, s)| chair::singularize(w) != s.as_str().unwrap())
        .map(|(w, s)| format!("{w} -> {} (official {s})", chair::singularize(w)))
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn chair_bad_data_names_the_file_and_field() {
    let dir = scratch("chair-bad");
    std::fs::write(
        dir.join("instances_val2014.json"),
        r#"{"categories": [{"id": 1, "name": "unicorn"}], "images": [], "annotations": []}"#,
    )
    .unwrap();
    let e = eval::load(Bench::Chair, &dir, None).err().unwrap().to_string();
    assert!(e.contains("instances_val2014.json") && e.contains("categories[0]: name") && e.contains("unicorn"), "{e}");
    std::fs::write(
        dir.join("instances_val2014.json"),
        r#"{"categories": [{"id": 1, "name": "dog"}], "images": [{"id": 5, "file_name": "a.jpg"}], "annotations": [{"image_id": 5}]}"#,
    )
    .unwrap();
    let e = eval::load(Bench::Chair, &dir, None).err().unwrap().to_string();
    assert!(e.contains("annotations[0]: category_id"), "{e}");
    let empty = scratch("chair-none");
    let e = eval::load(Bench::Chair, &empty, None).err().unwrap().to_string();
    assert!(e.contains("instances_"), "{e}");
}

#[test]
fn chair_bad_predictions_name_the_file_and_line() {
    let d = data("chair");
    let b = eval::load(Bench::Chair, &d, None).unwrap();
    let dir = scratch("chair-preds");
    let p = dir.join("p.jsonl");
    std::fs::write(&p, "{\"key\": \"139\", \"text\": \"a dog\"}\n{\"key\": \"4242\", \"text\": \"a cat\"}\n").unwrap();
    let e = eval::score_file(b.as_ref(), &p).unwrap_err().to_string();
    assert!(e.contains("p.jsonl") && e.contains("line 2") && e.contains("4242"), "{e}");
    // A line keyed by `image_id` alone is read too.
    std::fs::write(&p, "{\"image_id\": 139, \"text\": \"a cat\"}\n").unwrap();
    let m = eval::score_file(b.as_ref(), &p).unwrap();
    assert_eq!(m["chair_s"], json!(1.0));
}

#[test]
fn cli_scores_chair_and_mme() {
    let d = data("chair");
    let (ok, out, err) = stic(&["eval", "--bench", "chair", "--data", d.to_str().unwrap(), "--predictions", d.join("predictions.jsonl").to_str().unwrap()]);
    assert!(ok, "{err}");
    let m: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["bench"], json!("chair"));
    assert_eq!(m["chair_i"], read(d.join("expected.json"))["chair_i"]);
    let d = data("mme");
    let (ok, out, err) = stic(&["eval", "--bench", "mme", "--data", d.join("MME_Benchmark_release_version").to_str().unwrap(), "--predictions", d.join("predictions.jsonl").to_str().unwrap()]);
    assert!(ok, "{err}");
    let m: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["bench"], json!("mme"));
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-9, "{a} vs {b}");
}

#[test]
fn mme_matches_the_official_tool() {
    let d = data("mme");
    let b = eval::load(Bench::Mme, &d.join("MME_Benchmark_release_version"), None).unwrap();
    assert_eq!(b.items().len() % 2, 0);
    let m = eval::score_file(b.as_ref(), &d.join("predictions.jsonl")).unwrap();
    let want = read(d.join("expected.json"));
    close(m["perception"].as_f64().unwrap(), want["perception"].as_f64().unwrap());
    close(m["cognition"].as_f64().unwrap(), want["cognition"].as_f64().unwrap());
    let subs = want["subtasks"].as_object().unwrap();
    assert_eq!(subs.len(), 14);
    for (name, w) in subs {
        let group = if mme::PERCEPTION.contains(&name.as_str()) { "perception_subtasks" } else { "cognition_subtasks" };
        let g = &m[group][name];
        close(g["score"].as_f64().unwrap_or_else(|| panic!("{name}: {m}")), w["score"].as_f64().unwrap());
        close(g["acc"].as_f64().unwrap(), w["acc"].as_f64().unwrap());
        close(g["acc_plus"].as_f64().unwrap(), w["acc_plus"].as_f64().unwrap());
        assert_eq!(g["other"], w["other_num"], "{name}");
    }
    assert_eq!(m["incomplete_images"], json!(0));
}

#[test]
fn mme_leaves_out_half_answered_images_and_names_bad_files() {
    let d = data("mme");
    let b = eval::load(Bench::Mme, &d.join("MME_Benchmark_release_version"), None).unwrap();
    let dir = scratch("mme");
    let p = dir.join("p.jsonl");
    let k0 = &b.items()[0].key;
    let k1 = &b.items()[1].key;
    let k2 = &b.items()[2].key;
    std::fs::write(
        &p,
        format!("{{\"key\": \"{k0}\", \"text\": \"yes\"}}\n{{\"key\": \"{k1}\", \"text\": \"no\"}}\n{{\"key\": \"{k2}\", \"text\": \"yes\"}}\n"),
    )
    .unwrap();
    let m = eval::score_file(b.as_ref(), &p).unwrap();
    assert_eq!(m["incomplete_images"], json!(1));
    assert_eq!(m["perception_subtasks"]["existence"]["images"], json!(1));
    let bad = scratch("mme-bad");
    std::fs::create_dir_all(bad.join("existence")).unwrap();
    std::fs::write(bad.join("existence/1.txt"), "Is there a dog?\tYes\nIs there a cat?\tmaybe\n").unwrap();
    let e = eval::load(Bench::Mme, &bad, None).err().unwrap().to_string();
    assert!(e.contains("1.txt") && e.contains("line 2") && e.contains("maybe"), "{e}");
}

#[test]
fn both_run_end_to_end_with_the_tiny_model() {
    let model = fixtures().join("llava_next_tiny");
    let img = fixtures().join("images").join("wide.jpg");
    let run = |bench: &str, data: &std::path::Path, out: &std::path::Path, limit: &str| {
        let (ok, stdout, err) = stic(&[
            "eval", "--model", model.to_str().unwrap(), "--bench", bench, "--data", data.to_str().unwrap(),
            "--out", out.to_str().unwrap(), "--limit", limit, "--max-new-tokens", "4", "--quiet",
        ]);
        assert!(ok, "{err}");
        let lines: Vec<Value> = std::fs::read_to_string(out.join("predictions.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (serde_json::from_str::<Value>(&stdout).unwrap(), lines)
    };

    // CHAIR: the first two images (by id) of the fixture, their pictures in val2014/.
    let d = scratch("chair-e2e");
    for f in ["instances_val2014.json", "captions_val2014.json"] {
        std::fs::copy(data("chair").join(f), d.join(f)).unwrap();
    }
    std::fs::create_dir_all(d.join("val2014")).unwrap();
    for id in [139, 285] {
        std::fs::copy(&img, d.join("val2014").join(format!("COCO_val2014_{id:012}.jpg"))).unwrap();
    }
    let (m, lines) = run("chair", &d, &d.join("out"), "2");
    let keys: Vec<&str> = lines.iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["139", "285"]);
    assert_eq!(lines[0]["prompt"], json!(chair::PROMPT));
    assert_eq!((m["bench"].clone(), m["items"].clone(), m["answered"].clone()), (json!("chair"), json!(12), json!(2)));
    let s = m["chair_s"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&s));
    assert_eq!(m["captions"].as_u64().unwrap() + m["empty_answers"].as_u64().unwrap(), 2);

    // MME: the first image (two questions).
    let d = scratch("mme-e2e");
    let rel = data("mme").join("MME_Benchmark_release_version");
    let b = eval::load(Bench::Mme, &rel, None).unwrap();
    let first = b.items()[0].key.clone();
    let (task, rest) = first.split_once('/').unwrap();
    let image = rest.rsplit_once('/').unwrap().0;
    std::fs::create_dir_all(d.join(task)).unwrap();
    for f in std::fs::read_dir(rel.join(task)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, d.join(task).join(f.file_name().unwrap())).unwrap();
    }
    std::fs::copy(&img, d.join(task).join(image)).unwrap();
    let (m, lines) = run("mme", &d, &d.join("out"), "1");
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["prompt"].as_str().unwrap().ends_with("Answer the question using a single word or phrase."));
    assert_eq!(m["incomplete_images"], json!(0));
    assert_eq!(m[format!("{}_subtasks", if mme::PERCEPTION.contains(&task) { "perception" } else { "cognition" })][task]["images"], json!(1));
}
