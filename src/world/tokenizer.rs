//! The world's tokenizer: one token per word or run of punctuation, over a vocabulary read off the
//! world's own texts, written as a Hugging Face `tokenizer.json` that `text::Tokenizer` (the
//! `tokenizers` crate) and transformers' `PreTrainedTokenizerFast` load.
//!
//! - model `WordLevel`, unknown words -> `<unk>`; pre-tokenizer `Whitespace` (`\w+|[^\w\s]+`), case
//!   kept; post-processor `<s> $A` (BOS, as LLaMA's); decoder `WordPiece` with clean-up, which joins
//!   words with spaces and glues punctuation back (`red circle .` -> `red circle.`).
//! - ids: `<unk>` 0, `<s>` 1, `</s>` 2, `<pad>` 3, `<image>` 4, then the words in byte order.
//! - the words: every text of the world's files (captions, instructions, questions, probes), the
//!   object names with their synonyms and plurals, the number words, STIC's prompts (so that a
//!   STIC run's prompts are words the model has an embedding for, if not seen in training), and the
//!   chat template's.
//!
//! The same world folder gives the same file, byte for byte.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

use super::scene::Shape;
use super::text::{plural, NUMBERS};
use crate::error::{Error, Result};

/// The special tokens, in id order.
pub const SPECIALS: [&str; 5] = ["<unk>", "<s>", "</s>", "<pad>", "<image>"];
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
pub const PAD: u32 = 3;
pub const IMAGE: u32 = 4;

/// The words of `text` as the tokenizer's pre-tokenizer splits it.
pub fn words(text: &str) -> Vec<String> {
    let mut pts = PreTokenizedString::from(text);
    tokenizers::pre_tokenizers::whitespace::Whitespace.pre_tokenize(&mut pts).expect("the whitespace split cannot fail");
    pts.get_splits(OffsetReferential::Original, OffsetType::Byte).into_iter().map(|(s, _, _)| s.to_string()).collect()
}

/// Every string inside a JSON value.
fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.iter().filter(|(k, _)| !matches!(k.as_str(), "id" | "image" | "question_id")).for_each(|(_, x)| strings(x, out)),
        _ => {}
    }
}

/// The vocabulary of the world in `dir` (without the special tokens), sorted.
pub fn vocabulary(dir: &Path) -> Result<Vec<String>> {
    let mut texts: Vec<String> = Vec::new();
    for name in ["captions.json", "instruct.json", "questions.jsonl", "probes.jsonl"] {
        let p = dir.join(name);
        let raw = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let values: Vec<Value> = if name.ends_with(".jsonl") {
            raw.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect::<std::result::Result<_, _>>()
        } else {
            serde_json::from_str(&raw)
        }
        .map_err(|e| Error::Json { path: p.clone(), source: e })?;
        let mut out = Vec::new();
        values.iter().for_each(|v| strings(v, &mut out));
        texts.extend(out.into_iter().map(str::to_string));
    }
    for s in Shape::ALL {
        for w in s.synonyms() {
            texts.push(w.to_string());
            texts.push(plural(w));
        }
    }
    texts.extend(NUMBERS.iter().map(|s| s.to_string()));
    let p = &crate::stic::prompts::GOOD_PROMPT;
    texts.push(p.to_string());
    texts.extend(crate::stic::prompts::DESCRIPTION_PROMPTS.iter().chain(&crate::stic::prompts::HALLUCINATION_PROMPTS).map(|s| s.to_string()));
    texts.push(crate::stic::prompts::infuse_description("<image>\n", "x"));
    texts.push(crate::text::ChatTemplate::Vicuna.apply("x", false));
    let mut set = BTreeSet::new();
    for t in &texts {
        for w in words(t) {
            if !SPECIALS.contains(&w.as_str()) {
                set.insert(w);
            }
        }
    }
    set.remove("<");
    Ok(set.into_iter().collect())
}

/// `tokenizer.json` for `vocab` (the words after the special tokens).
pub fn tokenizer_json(vocab: &[String]) -> Value {
    let mut map = serde_json::Map::new();
    for (i, w) in SPECIALS.iter().map(|s| s.to_string()).chain(vocab.iter().cloned()).enumerate() {
        map.insert(w, json!(i));
    }
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let bos = |type_id: u32| json!({"SpecialToken": {"id": "<s>", "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos(0), seq("A", 0)],
            "pair": [bos(0), seq("A", 0), bos(1), seq("B", 1)],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [BOS], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordLevel", "vocab": Value::Object(map), "unk_token": "<unk>"}
    })
}

/// Write `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` for the world in
/// `data` into `out`; returns the vocabulary size (special tokens included).
pub fn write(data: &Path, out: &Path) -> Result<usize> {
    let vocab = vocabulary(data)?;
    let put = |name: &str, v: &Value| -> Result<()> {
        let p = out.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v).expect("json") + "\n").map_err(|e| Error::io(&p, e))
    };
    put("tokenizer.json", &tokenizer_json(&vocab))?;
    let specials = json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"});
    let mut cfg = specials.clone();
    cfg["tokenizer_class"] = json!("PreTrainedTokenizerFast");
    cfg["model_max_length"] = json!(1024);
    cfg["clean_up_tokenization_spaces"] = json!(true);
    put("tokenizer_config.json", &cfg)?;
    put("special_tokens_map.json", &specials)?;
    Ok(SPECIALS.len() + vocab.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_as_the_pre_tokenizer_does() {
        assert_eq!(words("A red circle, at the top left.\nYes."), ["A", "red", "circle", ",", "at", "the", "top", "left", ".", "Yes", "."]);
        assert_eq!(words("image's"), ["image", "'", "s"]);
    }

    #[test]
    fn round_trip_through_the_tokenizers_crate() {
        let vocab: Vec<String> = ["A", "red", "circle", "on", "a", "grey", "background", ".", ",", "USER", ":", "ASSISTANT", "Describe"].iter().map(|s| s.to_string()).collect();
        let dir = std::env::temp_dir().join(format!("stic-world-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tokenizer.json");
        std::fs::write(&p, serde_json::to_string(&tokenizer_json(&vocab)).unwrap()).unwrap();
        let t = crate::text::Tokenizer::from_file(&p).unwrap();
        let ids = t.encode("USER: <image>\nDescribe ASSISTANT: A red circle on a grey background.", true).unwrap();
        assert_eq!(ids[0], BOS);
        assert_eq!(ids[3], IMAGE);
        assert_eq!(t.token_id("red"), Some(SPECIALS.len() as u32 + 1));
        let text = t.decode(&ids[5..], true).unwrap();
        assert_eq!(text, "ASSISTANT : A red circle on a grey background.");
        // An unknown word is <unk>.
        assert_eq!(t.encode("blue", false).unwrap(), [0]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
