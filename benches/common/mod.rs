//! What the model benches share: the random llava-v1.6-mistral-7b model folder and a test image.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A model folder: the hub's 7B config and preprocessor config, the fixture tokenizer (weights
/// come from `--random-weights`' generator). `tag` keeps concurrent benches apart.
pub fn model_dir(tag: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fx = std::env::var_os("STIC_FIXTURES").map(PathBuf::from).unwrap_or_else(|| root.join("tests/fixtures"));
    let dir = std::env::temp_dir().join(format!("stic-bench-7b-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = |from: &Path, to: &str| std::fs::copy(from, dir.join(to)).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    copy(&fx.join("configs/llava-v1.6-mistral-7b-hf.json"), "config.json");
    copy(&fx.join("configs/llava-v1.6-mistral-7b-hf.preprocessor_config.json"), "preprocessor_config.json");
    copy(&fx.join("tokenizer/tokenizer.json"), "tokenizer.json");
    copy(&fx.join("tokenizer/tokenizer_config.json"), "tokenizer_config.json");
    dir
}

/// A 672x672 picture (AnyRes: the base tile plus a 2x2 grid, about 2,900 feature rows for the 7B
/// config) with a smooth deterministic pattern.
pub fn anyres_image() -> stic::image::RgbImage {
    let pixels: Vec<u8> = (0..672 * 672)
        .flat_map(|i| {
            let (x, y) = (i % 672, i / 672);
            [(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8]
        })
        .collect();
    stic::image::RgbImage::new(672, 672, pixels).expect("a 672x672 RGB image")
}

/// Writes a bench's markdown summary to target/NAME (or the working directory when target/ is
/// not writable), and into $OUT when set (the device run's folder that comes back).
pub fn write_summary(name: &str, table: &str) {
    if let Some(out) = std::env::var_os("OUT") {
        let _ = std::fs::write(PathBuf::from(out).join(name), table);
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join(name);
    if std::fs::create_dir_all(out.parent().unwrap()).and_then(|_| std::fs::write(&out, table)).is_err() {
        let _ = std::fs::write(name, table);
    }
}
