//! Bad input gets a clear error naming the file, the field, the tensor or the shape.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use safetensors::SafeTensors;
use stic::generate::Pipeline;
use stic::image::load_image;
use stic::model::Llava;

fn load_err(dir: &Path) -> String {
    match Llava::load(dir) {
        Ok(_) => panic!("{} loaded but should not have", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrite `file` with `edit` applied to its tensor list.
fn rewrite(file: &Path, edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>)) {
    let bytes = std::fs::read(file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut ts: Vec<_> = st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut ts);
    let views: Vec<(String, safetensors::tensor::TensorView)> = ts
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let out = safetensors::serialize(views, None::<HashMap<String, String>>).unwrap();
    std::fs::write(file, out).unwrap();
}

#[test]
fn truncated_safetensors_names_the_file() {
    let dir = scratch_copy("llava15_tiny", "trunc");
    let f = dir.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(len / 2).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");
}

#[test]
fn missing_shard_names_the_shard() {
    let dir = scratch_copy("llava_next_tiny", "noshard");
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model-00002-of-00002.safetensors") && e.contains("does not exist"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = scratch_copy("llava15_tiny", "missing");
    let victim = "language_model.model.layers.1.mlp.up_proj.weight";
    rewrite(&dir.join("model.safetensors"), |ts| ts.retain(|t| t.0 != victim));
    let e = load_err(&dir);
    assert!(e.contains(victim) && e.contains("missing"), "{e}");
}

#[test]
fn extra_tensor_is_named() {
    let dir = scratch_copy("llava15_tiny", "extra");
    rewrite(&dir.join("model.safetensors"), |ts| {
        ts.push(("language_model.model.layers.7.mlp.up_proj.weight".into(), safetensors::Dtype::F32, vec![2], vec![0; 8]))
    });
    let e = load_err(&dir);
    assert!(e.contains("language_model.model.layers.7.mlp.up_proj.weight") && e.contains("model.safetensors"), "{e}");
}

#[test]
fn shape_mismatch_names_tensor_and_shapes() {
    let dir = scratch_copy("llava15_tiny", "shape");
    edit_config(&dir, |cfg| cfg["text_config"]["intermediate_size"] = serde_json::json!(48));
    let e = load_err(&dir);
    assert!(e.contains("gate_proj.weight") && e.contains("[64, 32]") && e.contains("[48, 32]"), "{e}");
}

#[test]
fn bad_head_count_names_the_field() {
    let dir = scratch_copy("llava_next_tiny", "heads");
    edit_config(&dir, |cfg| {
        cfg["text_config"]["num_attention_heads"] = serde_json::json!(3);
        cfg["text_config"].as_object_mut().unwrap().remove("head_dim");
    });
    let e = load_err(&dir);
    assert!(e.contains("config.json") && e.contains("text_config.num_attention_heads"), "{e}");
}

#[test]
fn corrupt_image_names_the_file() {
    let p = std::env::temp_dir().join(format!("stic-corrupt-{}.jpg", std::process::id()));
    std::fs::write(&p, b"\xff\xd8\xff\xe0 this is not really a jpeg").unwrap();
    let e = load_image(&p).unwrap_err().to_string();
    assert!(e.contains(&p.display().to_string()), "{e}");
    let missing = load_image(Path::new("/nonexistent/cat.png")).unwrap_err().to_string();
    assert!(missing.contains("/nonexistent/cat.png"), "{missing}");
}

#[test]
fn prompt_without_image_token_is_rejected() {
    let pipe = Pipeline::load(&fixtures().join("llava15_tiny")).unwrap();
    let e = pipe.prompt_ids("USER: describe the picture ASSISTANT:", 1).unwrap_err().to_string();
    assert!(e.contains("<image>") && e.contains("0") && e.contains("1 image"), "{e}");
    // Two <image> for one image is also wrong.
    assert!(pipe.prompt_ids("<image><image> hi", 1).is_err());
}

#[test]
fn adapter_for_another_module_is_refused_by_name() {
    let dir = scratch_copy("adapter_next_tiny", "badadapter");
    rewrite(&dir.join("adapter_model.safetensors"), |ts| {
        ts.push(("base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_A.weight".into(), safetensors::Dtype::F32, vec![4, 32], vec![0; 512]))
    });
    let e = match Pipeline::load_with(&fixtures().join("llava_next_tiny"), None, Some(&dir)) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("vision_tower.encoder.layers.0.self_attn.q_proj.lora_A.weight") && e.contains("adapter_model.safetensors"), "{e}");
}

#[test]
fn adapter_projector_errors_name_the_setting_or_tensor() {
    let load = |dir: &Path| match Pipeline::load_with(&fixtures().join("llava_next_tiny"), None, Some(dir)) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    // modules_to_save other than the projector is refused by field.
    let dir = scratch_copy("stic_dpo_projector_adapter", "badmts");
    let cfg = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("\"multi_modal_projector\"", "\"lm_head\"");
    std::fs::write(&cfg, text).unwrap();
    let e = load(&dir);
    assert!(e.contains("modules_to_save") && e.contains("adapter_config.json"), "{e}");
    // A projector tensor of the wrong shape is named with its shape.
    let dir = scratch_copy("stic_dpo_projector_adapter", "badproj");
    rewrite(&dir.join("adapter_model.safetensors"), |ts| {
        let t = ts.iter_mut().find(|t| t.0.ends_with("multi_modal_projector.linear_2.bias")).unwrap();
        t.2 = vec![t.2[0] / 2];
        t.3.truncate(t.3.len() / 2);
    });
    let e = load(&dir);
    assert!(e.contains("multi_modal_projector.linear_2.bias") && e.contains("adapter_model.safetensors"), "{e}");
    // Projector weights without modules_to_save in the config.
    let dir = scratch_copy("stic_dpo_projector_adapter", "nomts");
    let cfg = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("[\n    \"multi_modal_projector\"\n  ]", "null");
    std::fs::write(&cfg, text).unwrap();
    let e = load(&dir);
    assert!(e.contains("modules_to_save") && e.contains("linear_1"), "{e}");
}
