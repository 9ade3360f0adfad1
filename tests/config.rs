//! config.json parsing against transformers' own resolution of the real hub configs
//! (tests/fixtures/configs/*.resolved.json, from scripts/resolve_configs.py): the hub file of
//! llava-v1.6-mistral-7b-hf omits hidden_size/layers/heads, and transformers 5 re-saves it with
//! `rope_parameters`. Both spellings must resolve to what transformers resolves.

mod common;

use common::*;
use stic::config::{FeatureSelect, LlavaConfig, LlavaKind, TextArch};

fn check(file: &str, resolved: &str) {
    let path = fixtures().join("configs").join(file);
    let cfg = LlavaConfig::from_file(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let r = read_json(&format!("configs/{resolved}"));
    let t = &r["text"];
    let u = |v: &serde_json::Value| v.as_u64().unwrap() as usize;
    assert_eq!(cfg.kind, if r["model_type"] == "llava_next" { LlavaKind::LlavaNext } else { LlavaKind::Llava });
    assert_eq!(cfg.text.arch, if t["model_type"] == "mistral" { TextArch::Mistral } else { TextArch::Llama });
    assert_eq!(cfg.text.vocab_size, u(&t["vocab_size"]), "{file}");
    assert_eq!(cfg.text.hidden_size, u(&t["hidden_size"]), "{file}");
    assert_eq!(cfg.text.intermediate_size, u(&t["intermediate_size"]), "{file}");
    assert_eq!(cfg.text.num_hidden_layers, u(&t["num_hidden_layers"]), "{file}");
    assert_eq!(cfg.text.num_attention_heads, u(&t["num_attention_heads"]), "{file}");
    assert_eq!(cfg.text.num_key_value_heads, u(&t["num_key_value_heads"]), "{file}");
    assert_eq!(cfg.text.head_dim, u(&t["head_dim"]), "{file}");
    assert_eq!(cfg.text.rms_norm_eps, t["rms_norm_eps"].as_f64().unwrap(), "{file}");
    assert_eq!(cfg.text.rope_theta, t["rope_theta"].as_f64().unwrap(), "{file}");
    assert_eq!(cfg.text.sliding_window, t["sliding_window"].as_u64().map(|x| x as usize), "{file}");
    assert_eq!(cfg.text.max_position_embeddings, u(&t["max_position_embeddings"]), "{file}");
    assert_eq!(cfg.text.tie_word_embeddings, t["tie_word_embeddings"].as_bool().unwrap(), "{file}");
    let v = &r["vision"];
    assert_eq!(cfg.vision.hidden_size, u(&v["hidden_size"]));
    assert_eq!(cfg.vision.intermediate_size, u(&v["intermediate_size"]));
    assert_eq!(cfg.vision.num_hidden_layers, u(&v["num_hidden_layers"]));
    assert_eq!(cfg.vision.num_attention_heads, u(&v["num_attention_heads"]));
    assert_eq!(cfg.vision.image_size, u(&v["image_size"]));
    assert_eq!(cfg.vision.patch_size, u(&v["patch_size"]));
    assert_eq!(cfg.vision.layer_norm_eps, v["layer_norm_eps"].as_f64().unwrap());
    assert_eq!(cfg.vision.hidden_act, v["hidden_act"].as_str().unwrap());
    assert_eq!(cfg.image_token_index as u64, r["image_token_index"].as_u64().unwrap());
    assert_eq!(cfg.vision_feature_layers, vec![r["vision_feature_layer"].as_i64().unwrap()]);
    assert_eq!(cfg.vision_feature_select_strategy, FeatureSelect::Default);
    let pins: Vec<[usize; 2]> = r["image_grid_pinpoints"]
        .as_array()
        .map(|a| a.iter().map(|p| [u(&p[0]), u(&p[1])]).collect())
        .unwrap_or_default();
    assert_eq!(cfg.image_grid_pinpoints, pins);
    // hidden_states has 25 entries; -2 is the output of layer 23.
    assert_eq!(cfg.feature_state_indices(), vec![23]);
}

#[test]
fn hub_llava_next_mistral_config_resolves_like_transformers() {
    check("llava-v1.6-mistral-7b-hf.json", "llava-v1.6-mistral-7b-hf.resolved.json");
}

#[test]
fn transformers5_llava_next_config_resolves_like_transformers() {
    check("llava-v1.6-mistral-7b-hf.v5.json", "llava-v1.6-mistral-7b-hf.resolved.json");
}

#[test]
fn hub_llava15_config_resolves_like_transformers() {
    check("llava-1.5-7b-hf.json", "llava-1.5-7b-hf.resolved.json");
    check("llava-1.5-7b-hf.v5.json", "llava-1.5-7b-hf.resolved.json");
}

#[test]
fn mistral_sliding_window_absent_means_default_null_means_none() {
    let p = std::path::Path::new("inline.json");
    let base = |tc: serde_json::Value| serde_json::json!({"model_type": "llava_next", "text_config": tc});
    let c = LlavaConfig::from_json(&base(serde_json::json!({"model_type": "mistral"})), p).unwrap();
    assert_eq!(c.text.sliding_window, Some(4096));
    assert_eq!(c.text.rms_norm_eps, 1e-6);
    let c = LlavaConfig::from_json(&base(serde_json::json!({"model_type": "mistral", "sliding_window": null})), p).unwrap();
    assert_eq!(c.text.sliding_window, None);
    let c = LlavaConfig::from_json(&base(serde_json::json!({"model_type": "mistral", "sliding_window": 64})), p).unwrap();
    assert_eq!(c.text.sliding_window, Some(64));
}

#[test]
fn bad_configs_name_the_field() {
    let p = std::path::Path::new("/x/config.json");
    let cases = [
        (serde_json::json!({"model_type": "llava", "text_config": {"model_type": "llama", "hidden_size": 100, "num_attention_heads": 7}}), "text_config.num_attention_heads"),
        (serde_json::json!({"model_type": "llava", "text_config": {"model_type": "mistral", "num_attention_heads": 32, "num_key_value_heads": 5}}), "text_config.num_key_value_heads"),
        (serde_json::json!({"model_type": "llava", "vision_config": {"hidden_size": 30, "num_attention_heads": 4}}), "vision_config.num_attention_heads"),
        (serde_json::json!({"model_type": "llava", "text_config": {"model_type": "gpt2"}}), "text_config.model_type"),
        (serde_json::json!({"model_type": "bert"}), "model_type"),
        (serde_json::json!({"model_type": "llava", "text_config": {"hidden_size": "big"}}), "text_config.hidden_size"),
        (serde_json::json!({"model_type": "llava", "vision_feature_layer": -40}), "vision_feature_layer"),
        (serde_json::json!({"model_type": "llava_next", "image_grid_pinpoints": [[336, 500]]}), "image_grid_pinpoints"),
    ];
    for (json, field) in cases {
        let e = LlavaConfig::from_json(&json, p).unwrap_err().to_string();
        assert!(e.contains("/x/config.json") && e.contains(&format!("`{field}`")), "{json}: {e}");
    }
}

/// The 7B preprocessor config the CUDA model bench uses: 336 px tiles with the checkpoint's
/// AnyRes pinpoints, and a 672x672 picture becomes the base tile + a 2x2 grid.
#[test]
fn llava_next_7b_preprocessor_config_reads() {
    let p = stic::image::ImageProcessorConfig::from_file(&fixtures().join("configs/llava-v1.6-mistral-7b-hf.preprocessor_config.json")).unwrap();
    assert_eq!((p.shortest_edge, p.crop_height, p.crop_width), (336, 336, 336));
    let img = stic::image::RgbImage::new(672, 672, vec![128; 672 * 672 * 3]).unwrap();
    let px = stic::image::preprocess(&img, &p).unwrap();
    assert_eq!(px.pixel_values.shape(), &[5, 3, 336, 336]);
}
