//! The real Mistral tokenizer (mistral-common's tokenizer.model.v1 converted to tokenizer.json by
//! scripts/convert_tokenizer.py) through our `text::Tokenizer`, against ids recorded from HF
//! tokenizers and, for texts without `<image>`, checked against sentencepiece itself.

mod common;

use common::*;
use stic::text::Tokenizer;

#[test]
fn mistral_tokenizer_matches_reference_ids() {
    let tok = Tokenizer::from_file(&fixtures().join("tokenizer/tokenizer.json")).unwrap();
    let exp = read_json("tokenizer/expected.json");
    let cases = exp["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let got = tok.encode(text, c["add_special_tokens"].as_bool().unwrap()).unwrap();
        assert_eq!(got, ids(&c["ids"]), "text {text:?}");
    }
    assert_eq!(tok.token_id("<image>"), Some(32000));
    assert_eq!(tok.token_id("<pad>"), Some(32001));
}

#[test]
fn llava_next_prompt_ids() {
    // shared/reference/llava.md: [INST] <image>\n{prompt} [/INST] -> [1, 733, 16289, 28793, 28705, 32000, 28705, 13, ...]
    let tok = Tokenizer::from_file(&fixtures().join("tokenizer/tokenizer.json")).unwrap();
    let ids = tok.encode("[INST] <image>\nWhat is shown in this image? [/INST]", true).unwrap();
    assert_eq!(&ids[..8], &[1, 733, 16289, 28793, 28705, 32000, 28705, 13]);
}

#[test]
fn decode_round_trips_plain_text() {
    let tok = Tokenizer::from_file(&fixtures().join("tokenizer/tokenizer.json")).unwrap();
    for text in ["Hello world", "Numbers 12345 and ünïcödé ✓", "two\nlines"] {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(tok.decode(&ids, true).unwrap(), text);
    }
}
