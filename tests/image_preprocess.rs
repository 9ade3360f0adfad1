//! Image preprocessing against references produced by Pillow and transformers (not by this crate).
//!
//! Layers:
//! 1. `resize_pil` vs Pillow `Image.resize` (tests/fixtures/pixels/resize_refs.safetensors, made by
//!    scripts/gen_resize_refs.py): bit-exact. The same file holds the test images as PIL + HF
//!    `convert_to_rgb` see them, which checks `load_image`.
//! 2. Whole processors vs HF's slow `LlavaNextImageProcessor` / `CLIPImageProcessor`:
//!    tests/fixtures/pixels/<stem>.safetensors (uint8 `next336` [tiles,3,336,336] and `clip336`
//!    [1,3,336,336], no rescale/normalise) and tests/fixtures/expected/{llava_next,llava15}_tiny
//!    .safetensors (f32 `case{i}.pixel_values`, normalised, tiny configs).
//! 3. Unit checks: best-resolution selection on the real 336 pinpoints, config parsing, errors.
//!
//! Pixel tensors are NCHW: [N, 3, H, W]; images HWC uint8.
//!
//! `#[ignore]`d `dev_*` tests read larger references from $STIC_DEV_REFS (a directory written by
//! scripts/gen_pixel_refs_dev.py); run them with `cargo test --test image_preprocess -- --ignored`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use stic::image::{
    anyres_grid_shape, decode_image, load_image, preprocess, preprocess_anyres, preprocess_clip,
    resize_pil, resize_pil_compat, select_best_resolution, ImageProcessorConfig, PillowCompat,
    RgbImage,
};
use stic::Error;

const PINPOINTS_336: [[usize; 2]; 5] =
    [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];
const TEST_IMAGES: [&str; 3] = ["wide.jpg", "tall.png", "gray.png"];

/// `tests/fixtures/<rel>`, or under `$STIC_FIXTURES` when set (binaries run on another machine).
fn fixture(rel: &str) -> PathBuf {
    match std::env::var_os("STIC_FIXTURES") {
        Some(p) => PathBuf::from(p).join(rel),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel),
    }
}

/// A safetensors file held in memory, with typed accessors.
struct Refs {
    bytes: Vec<u8>,
}

impl Refs {
    fn open(path: &Path) -> Refs {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Refs { bytes }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("valid safetensors")
    }
    fn metadata(&self) -> HashMap<String, String> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).expect("valid safetensors");
        meta.metadata().clone().unwrap_or_default()
    }
    fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.st().names().into_iter().map(String::from).collect();
        n.sort();
        n
    }
    fn has(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }
    fn u8(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("missing tensor {name}"));
        assert_eq!(t.dtype(), Dtype::U8, "{name}");
        (t.shape().to_vec(), t.data().to_vec())
    }
    fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("missing tensor {name}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let v =
            t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        (t.shape().to_vec(), v)
    }
    fn i64(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("missing tensor {name}"));
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        let v =
            t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
        (t.shape().to_vec(), v)
    }
    /// An HWC uint8 tensor as an image; a single channel is replicated to RGB.
    fn image(&self, name: &str) -> RgbImage {
        let (shape, data) = self.u8(name);
        assert_eq!(shape.len(), 3, "{name}: {shape:?}");
        let data = match shape[2] {
            3 => data,
            1 => data.iter().flat_map(|&g| [g, g, g]).collect(),
            c => panic!("{name}: {c} channels"),
        };
        RgbImage::new(shape[1], shape[0], data).unwrap()
    }
    fn pillow_compat(&self) -> PillowCompat {
        let v = self.metadata().get("pillow").cloned().unwrap_or_default();
        PillowCompat::from_version(&v)
            .unwrap_or_else(|| panic!("no Pillow version in metadata: {v:?}"))
    }
}

/// (max |a - b|, number of differing elements).
fn diff_u8(a: &[u8], b: &[u8]) -> (u8, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0, 0), |(m, n), (&x, &y)| (m.max(x.abs_diff(y)), n + (x != y) as usize))
}

fn diff_f32(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0.0, 0), |(m, n), (&x, &y)| (m.max((x - y).abs()), n + (x != y) as usize))
}

/// Processed pixels (0..=255 as f32) back to bytes, checking they are integers in range.
fn as_bytes(pixels: &[f32]) -> Vec<u8> {
    pixels
        .iter()
        .map(|&v| {
            assert!(v.fract() == 0.0 && (0.0..=255.0).contains(&v), "not a byte value: {v}");
            v as u8
        })
        .collect()
}

fn resize_refs() -> Refs {
    Refs::open(&fixture("pixels/resize_refs.safetensors"))
}

// ---------------------------------------------------------------- layer 1: Pillow resize, decoding

#[test]
fn load_image_matches_pil_and_hf_convert_to_rgb() {
    let refs = resize_refs();
    for (file, key) in
        [("wide.jpg", "src/wide"), ("tall.png", "src/tall"), ("gray.png", "src/gray")]
    {
        let ours = load_image(&fixture(&format!("images/{file}"))).unwrap();
        let want = refs.image(key);
        assert_eq!((ours.width, ours.height), (want.width, want.height), "{file}");
        let (max, n) = diff_u8(&ours.data, &want.data);
        assert_eq!(max, 0, "{file}: {n} bytes differ from PIL (max {max})");
    }
}

#[test]
fn jpeg_variants_decode_like_pil() {
    // Progressive, restart markers, 4:2:2 / 4:4:4 / 4:2:0, greyscale, Adobe CMYK, RGB without the
    // YCbCr transform: libjpeg-turbo's output through PIL, bit for bit.
    let refs = resize_refs();
    let mut checked = 0;
    for name in refs.names().iter().filter(|n| n.starts_with("jpeg/") && n.ends_with("/file")) {
        let variant = name.trim_start_matches("jpeg/").trim_end_matches("/file");
        let (_, bytes) = refs.u8(name);
        let ours = decode_image(&bytes, Path::new(variant)).unwrap();
        let want = refs.image(&format!("jpeg/{variant}/pil"));
        assert_eq!((ours.width, ours.height), (want.width, want.height), "{variant}");
        let (max, n) = diff_u8(&ours.data, &want.data);
        assert_eq!(max, 0, "{variant}: {n} bytes differ from PIL (max {max})");
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} JPEG variants");
}

#[test]
fn resize_matches_pillow_bit_exact() {
    let refs = resize_refs();
    let compat = refs.pillow_compat();
    let mut checked = 0;
    for name in refs.names().iter().filter(|n| n.starts_with("resize/")) {
        // resize/<src>/<filter>/<W>x<H>
        let parts: Vec<&str> = name.split('/').collect();
        let src = refs.image(&format!("src/{}", parts[1]));
        let filter: u32 = parts[2].parse().unwrap();
        let (w, h) = parts[3].split_once('x').unwrap();
        let (w, h): (usize, usize) = (w.parse().unwrap(), h.parse().unwrap());
        let ours = resize_pil_compat(&src, w, h, filter, compat);
        let want = refs.image(name);
        assert_eq!((ours.width, ours.height), (want.width, want.height), "{name}");
        let (max, n) = diff_u8(&ours.data, &want.data);
        assert_eq!(max, 0, "{name} ({compat:?}): {n} bytes differ, max {max}");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} resize references");
}

#[test]
fn resize_to_same_size_is_a_copy() {
    let img = resize_refs().image("src/wcrop");
    for f in [1, 2, 3, 4, 5] {
        assert_eq!(resize_pil(&img, img.width, img.height, f), img);
    }
}

// ---------------------------------------------------------------- AnyRes geometry

#[test]
fn select_best_resolution_on_llava_336_pinpoints() {
    // Worked by hand from the rule (scale = min(W/w, H/h); effective = min(int(w*s)*int(h*s), w*h);
    // most effective wins, then least waste). Candidates are (height, width).
    let cases = [
        // 200 wide x 120 high: 336x672 -> s=2.8, 560x336, eff 24000 (capped at the original);
        // every candidate reaches 24000, least waste is 336*672 = 225792 - 24000.
        ((120, 200), (336, 672)),
        // 90 wide x 250 high: every candidate covers all 22500 pixels (336x672: s = 1.344,
        // 120x336). 336x672 and 672x336 tie on the least waste (225792 - 22500), and the first
        // in the list wins: a portrait image gets a landscape 1x2 grid.
        ((250, 90), (336, 672)),
        // Square 150: every candidate covers it; the 336x672 / 672x336 ones waste the least; the
        // first in the list wins the tie.
        ((150, 150), (336, 672)),
        // 1000x1000: 336x672 -> s=0.336, 336x336 = 112896; 672x672 -> s=0.672, 672*672 = 451584.
        ((1000, 1000), (672, 672)),
        // 640 wide x 480 high: 336x672 -> s=0.7, 448x336 = 150528; 672x336 -> s=0.525, 336x252 =
        // 84672; 672x672 -> s=1.05, capped 307200; 1008x336 -> s=.525; 336x1008 -> s=.7 -> 150528.
        ((480, 640), (672, 672)),
        // 2000 wide x 500 high: 336x1008 -> s=0.504, 1008x252 = 254016; 672x672 -> s=0.336,
        // 672x168 = 112896; 336x672 -> s=0.336 -> 112896. Best 336x1008.
        ((500, 2000), (336, 1008)),
        // 300 wide x 1500 high: 1008x336 -> s=0.672, 201x1008 = 202608; 672x672 -> s=.448,
        // 134x672 = 90048. Best 1008x336.
        ((1500, 300), (1008, 336)),
        // Exactly a pinpoint: 672 wide x 336 high -> 336x672 covers all with no waste.
        ((336, 672), (336, 672)),
    ];
    for (orig, want) in cases {
        assert_eq!(select_best_resolution(orig, &PINPOINTS_336), want, "image (h, w) = {orig:?}");
    }
}

#[test]
fn anyres_grid_shapes() {
    assert_eq!(anyres_grid_shape((120, 200), &PINPOINTS_336, 336), (1, 2));
    assert_eq!(anyres_grid_shape((250, 90), &PINPOINTS_336, 336), (1, 2));
    assert_eq!(anyres_grid_shape((1000, 1000), &PINPOINTS_336, 336), (2, 2));
    assert_eq!(anyres_grid_shape((500, 2000), &PINPOINTS_336, 336), (1, 3));
    assert_eq!(anyres_grid_shape((1500, 300), &PINPOINTS_336, 336), (3, 1));
}

#[test]
fn anyres_output_layout() {
    let img = load_image(&fixture("images/wide.jpg")).unwrap();
    let cfg = ImageProcessorConfig::llava_next_336();
    let p = preprocess(&img, &cfg).unwrap();
    assert_eq!(p.pixel_values.shape(), &[3, 3, 336, 336]); // base + 1x2 grid
    assert_eq!(p.image_size, (120, 200));
    let c = preprocess(&img, &ImageProcessorConfig::clip_336()).unwrap();
    assert_eq!(c.pixel_values.shape(), &[1, 3, 336, 336]);
    // The wide image fills the 336x672 grid only in its middle rows: zero padding (black before
    // normalisation) at the top of the first tile normalises to -mean/std.
    let raw = preprocess_anyres(&img, &cfg.without_normalization()).unwrap();
    assert_eq!(raw.pixel_values.data()[336 * 336 * 3], 0.0); // tile 0, channel 0, row 0, col 0
    let want = -cfg.image_mean[0] / cfg.image_std[0];
    assert_eq!(p.pixel_values.data()[336 * 336 * 3], want);
}

// ---------------------------------------------------------------- config and errors

#[test]
fn config_from_json_llava_files() {
    let v: serde_json::Value = serde_json::from_str(
        r#"{"crop_size": {"height": 336, "width": 336}, "do_center_crop": true,
            "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_processor_type": "CLIPImageProcessor",
            "image_std": [0.26862954, 0.26130258, 0.27577711], "processor_class": "LlavaProcessor",
            "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336}}"#,
    )
    .unwrap();
    let cfg = ImageProcessorConfig::from_json(&v, Path::new("p.json")).unwrap();
    assert_eq!(cfg, ImageProcessorConfig::clip_336());
    assert_eq!(cfg.rescale_factor, 1.0 / 255.0, "rescale_factor must parse to Python's 1/255");

    let v: serde_json::Value = serde_json::from_str(
        r#"{"image_processor_type": "LlavaNextImageProcessor", "size": {"shortest_edge": 336},
            "crop_size": {"height": 336, "width": 336}}"#,
    )
    .unwrap();
    let cfg = ImageProcessorConfig::from_json(&v, Path::new("p.json")).unwrap();
    assert_eq!(cfg, ImageProcessorConfig::llava_next_336(), "LlavaNext default pinpoints");

    // Old-style ints: size -> shortest edge, crop_size -> square.
    let v =
        serde_json::json!({"size": 224, "crop_size": 224, "image_grid_pinpoints": [[224, 448]]});
    let cfg = ImageProcessorConfig::from_json(&v, Path::new("p.json")).unwrap();
    assert_eq!(
        (cfg.shortest_edge, cfg.resize_to_square, cfg.crop_height, cfg.crop_width),
        (224, false, 224, 224)
    );
    assert_eq!(cfg.image_grid_pinpoints, Some(vec![[224, 448]]));
}

#[test]
fn config_errors_name_file_and_field() {
    let path = Path::new("/models/x/preprocessor_config.json");
    for (json, field) in [
        (serde_json::json!({"resample": 0}), "resample"),
        (serde_json::json!({"resample": 9}), "resample"),
        (serde_json::json!({"image_mean": [0.5, 0.5]}), "image_mean"),
        (serde_json::json!({"size": {"longest_edge": 5}}), "size"),
        (serde_json::json!({"do_resize": "yes"}), "do_resize"),
        (serde_json::json!({"image_grid_pinpoints": [[336]]}), "image_grid_pinpoints"),
    ] {
        match ImageProcessorConfig::from_json(&json, path) {
            Err(e @ Error::Config { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("preprocessor_config.json") && msg.contains(field), "{msg}");
            }
            other => panic!("{json}: expected a config error on {field}, got {other:?}"),
        }
    }
}

#[test]
fn corrupt_image_is_an_image_error_naming_the_path() {
    let path = std::env::temp_dir().join(format!("stic_corrupt_{}.jpg", std::process::id()));
    std::fs::write(&path, b"\xff\xd8\xff\xe0 definitely not a jpeg body \x00\x01\x02").unwrap();
    let res = load_image(&path);
    std::fs::remove_file(&path).ok();
    match res {
        Err(e @ Error::Image { .. }) => {
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        other => panic!("expected Error::Image, got {other:?}"),
    }
    let missing = Path::new("/nonexistent/stic/missing.png");
    match load_image(missing) {
        Err(e) => assert!(e.to_string().contains("missing.png"), "{e}"),
        Ok(_) => panic!("loading a missing file succeeded"),
    }
}

// ---------------------------------------------------------------- layer 2: HF processors

/// The committed test image with this file stem.
fn image_for_stem(stem: &str) -> PathBuf {
    TEST_IMAGES
        .iter()
        .map(|f| fixture(&format!("images/{f}")))
        .find(|p| p.file_stem().unwrap() == stem)
        .unwrap_or_else(|| panic!("no test image {stem}"))
}

/// The committed fixtures must be there: a missing one is a failure, never a skip.
fn present(path: &Path) -> bool {
    assert!(path.exists(), "fixture {} is missing (scripts/gen_fixtures.py writes it)", path.display());
    true
}

#[test]
fn uint8_pixels_match_hf_slow_processors() {
    let mut checked = 0;
    for file in TEST_IMAGES {
        let stem = Path::new(file).file_stem().unwrap().to_str().unwrap();
        let path = fixture(&format!("pixels/{stem}.safetensors"));
        if !present(&path) {
            continue;
        }
        let refs = Refs::open(&path);
        let img = load_image(&image_for_stem(stem)).unwrap();
        if let Ok(text) = std::fs::read_to_string(fixture("pixels/index.json")) {
            let index: serde_json::Value = serde_json::from_str(&text).unwrap();
            let entry = &index["images"][format!("images/{file}")];
            let pair = |v: &serde_json::Value| {
                (v[0].as_u64().unwrap() as usize, v[1].as_u64().unwrap() as usize)
            };
            assert_eq!((img.height, img.width), pair(&entry["image_size"]), "{file} image_size");
            let best = select_best_resolution((img.height, img.width), &PINPOINTS_336);
            assert_eq!(best, pair(&entry["best_resolution"]), "{file} best_resolution");
        }
        for (key, cfg) in [
            ("next336", ImageProcessorConfig::llava_next_336()),
            ("clip336", ImageProcessorConfig::clip_336()),
        ] {
            let (shape, want) = refs.u8(key);
            let ours = preprocess(&img, &cfg.without_normalization()).unwrap();
            assert_eq!(ours.pixel_values.shape(), &shape[..], "{stem} {key}");
            let (max, n) = diff_u8(&as_bytes(ours.pixel_values.data()), &want);
            eprintln!("{stem} {key} {shape:?}: max diff {max}, {n} of {} bytes differ", want.len());
            // Bit-exact is what we get (and the tolerance the brief allows is 1 level); anything
            // else means a behaviour change, e.g. fixtures regenerated with Pillow <= 12.
            assert_eq!(max, 0, "{stem} {key}: max diff {max} ({n} bytes)");
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * TEST_IMAGES.len(), "every image checked against both processors");
}

#[test]
fn normalised_pixels_match_hf_tiny_processors() {
    for (name, dir) in [("llava_next_tiny", "llava_next_tiny"), ("llava15_tiny", "llava15_tiny")] {
        let refs_path = fixture(&format!("expected/{name}.safetensors"));
        let cfg_path = fixture(&format!("{dir}/preprocessor_config.json"));
        if !present(&refs_path) || !present(&cfg_path) {
            continue;
        }
        let refs = Refs::open(&refs_path);
        let cfg = ImageProcessorConfig::from_file(&cfg_path).unwrap();
        let meta_path = fixture(&format!("expected/{name}.json"));
        let meta: Option<serde_json::Value> =
            std::fs::read_to_string(&meta_path).ok().map(|t| serde_json::from_str(&t).unwrap());
        for (i, file) in TEST_IMAGES.iter().enumerate() {
            let key = format!("case{i}.pixel_values");
            assert!(refs.has(&key), "{name}: {key} missing");
            let (shape, want) = refs.f32(&key);
            let img = load_image(&fixture(&format!("images/{file}"))).unwrap();
            let ours = preprocess(&img, &cfg).unwrap();
            if let Some(case) = meta.as_ref().map(|m| &m["cases"][i]) {
                check_case_geometry(case, file, &ours, &cfg);
            }
            // HF may return [1, N, 3, H, W] (batch of one) or [N, 3, H, W].
            let want_shape: Vec<usize> =
                if shape.len() == 5 { shape[1..].to_vec() } else { shape.clone() };
            assert_eq!(ours.pixel_values.shape(), &want_shape[..], "{name} {file}");
            let (max, n) = diff_f32(ours.pixel_values.data(), &want);
            eprintln!("{name} {file} {shape:?}: max diff {max:e}, {n} values differ");
            assert!(max <= 1e-5, "{name} {file}: max diff {max} ({n} values)");
            assert_eq!(
                n, 0,
                "{name} {file}: normalised pixels are not bit-exact (max diff {max:e})"
            );
        }
    }
}

/// image_size, tile count and best resolution against expected/<model>.json's case entry.
fn check_case_geometry(
    case: &serde_json::Value,
    file: &str,
    ours: &stic::image::ProcessedImage,
    cfg: &ImageProcessorConfig,
) {
    let pair =
        |v: &serde_json::Value| (v[0].as_u64().unwrap() as usize, v[1].as_u64().unwrap() as usize);
    assert!(
        case["image"].as_str().unwrap().ends_with(file),
        "case order: {} vs {file}",
        case["image"]
    );
    assert_eq!(ours.image_size, pair(&case["image_size"]), "{file} image_size (h, w)");
    assert_eq!(
        ours.pixel_values.shape()[0] as u64,
        case["n_tiles"].as_u64().unwrap(),
        "{file} n_tiles"
    );
    if let (Some(best), Some(pp)) = (case.get("best_resolution"), &cfg.image_grid_pinpoints) {
        assert_eq!(
            select_best_resolution(ours.image_size, pp),
            pair(best),
            "{file} best_resolution"
        );
    }
}

#[test]
fn clip_path_is_one_tile() {
    let img = load_image(&fixture("images/tall.png")).unwrap();
    let p = preprocess_clip(&img, &ImageProcessorConfig::clip_336()).unwrap();
    assert_eq!(p.pixel_values.shape(), &[1, 3, 336, 336]);
    assert_eq!(p.image_size, (250, 90));
}

// ---------------------------------------------------------------- dev-only sweeps ($STIC_DEV_REFS)

fn dev_dir() -> Option<PathBuf> {
    std::env::var_os("STIC_DEV_REFS").map(PathBuf::from)
}

#[test]
#[ignore]
fn dev_resize_sweep_vs_pillow() {
    let dir = dev_dir().expect("set STIC_DEV_REFS");
    for major in [12, 13] {
        let path = dir.join(format!("resize_sweep_pillow{major}.safetensors"));
        if !present(&path) {
            continue;
        }
        let refs = Refs::open(&path);
        let compat = refs.pillow_compat();
        let cases: Vec<[usize; 3]> = serde_json::from_str(&refs.metadata()["cases"]).unwrap();
        let mut bad = 0;
        for (i, &[w, h, f]) in cases.iter().enumerate() {
            let src = refs.image(&format!("case{i}/src"));
            let want = refs.image(&format!("case{i}/out"));
            let ours = resize_pil_compat(&src, w, h, f as u32, compat);
            let (max, n) = diff_u8(&ours.data, &want.data);
            if max != 0 {
                bad += 1;
                eprintln!(
                    "case{i}: {}x{} -> {w}x{h} filter {f}: {n} differ, max {max}",
                    src.width, src.height
                );
            }
        }
        eprintln!("Pillow {major}: {} cases, {bad} mismatching", cases.len());
        assert_eq!(bad, 0);
    }
}

#[test]
#[ignore]
fn dev_hf_processors_sweep() {
    let dir = dev_dir().expect("set STIC_DEV_REFS");
    let refs = Refs::open(&dir.join("hf_refs.safetensors"));
    let compat = refs.pillow_compat();
    let with = |c: ImageProcessorConfig| ImageProcessorConfig { pillow_compat: compat, ..c };
    let next = with(ImageProcessorConfig::llava_next_336());
    let clip = with(ImageProcessorConfig::clip_336());
    let tiny = with(ImageProcessorConfig {
        shortest_edge: 84,
        crop_height: 84,
        crop_width: 84,
        image_grid_pinpoints: Some(vec![[84, 168], [168, 84], [168, 168], [252, 84], [84, 252]]),
        ..ImageProcessorConfig::clip_336()
    });
    let names: Vec<String> =
        refs.names().iter().filter_map(|n| n.strip_prefix("next336/").map(String::from)).collect();
    let mut worst = (0u8, 0f32);
    for name in &names {
        let img = if refs.has(&format!("src/{name}")) {
            refs.image(&format!("src/{name}"))
        } else {
            load_image(&image_for_stem(name)).unwrap()
        };
        let (_, size) = refs.i64(&format!("sizes/{name}"));
        for (key, cfg) in [("next336", &next), ("clip336", &clip)] {
            let (shape, want) = refs.u8(&format!("{key}/{name}"));
            let ours = preprocess(&img, &cfg.without_normalization()).unwrap();
            assert_eq!(ours.pixel_values.shape(), &shape[..], "{key}/{name}");
            let (max, n) = diff_u8(&as_bytes(ours.pixel_values.data()), &want);
            eprintln!("{key}/{name} {shape:?}: uint8 max diff {max} ({n} differ)");
            worst.0 = worst.0.max(max);
            if key == "next336" {
                assert_eq!(
                    ours.image_size,
                    (size[0] as usize, size[1] as usize),
                    "{name} image_sizes"
                );
            }
        }
        for (key, cfg) in [("next336n", &next), ("clip336n", &clip), ("nexttiny", &tiny)] {
            let (shape, want) = refs.f32(&format!("{key}/{name}"));
            let ours = preprocess(&img, cfg).unwrap();
            assert_eq!(ours.pixel_values.shape(), &shape[..], "{key}/{name}");
            let (max, n) = diff_f32(ours.pixel_values.data(), &want);
            eprintln!("{key}/{name} {shape:?}: f32 max diff {max:e} ({n} differ)");
            worst.1 = worst.1.max(max);
        }
    }
    assert_eq!(worst, (0, 0.0), "worst (uint8, f32) differences");

    let (_, sizes) = refs.i64("best/in");
    let (_, best) = refs.i64("best/out336");
    let (_, best_tiny) = refs.i64("best/outtiny");
    let (_, patch) = refs.i64("patch/out336");
    let (_, short) = refs.i64("short/out");
    let tiny_pp = tiny.image_grid_pinpoints.clone().unwrap();
    for i in 0..sizes.len() / 2 {
        let hw = (sizes[2 * i] as usize, sizes[2 * i + 1] as usize);
        let b = select_best_resolution(hw, &PINPOINTS_336);
        assert_eq!(b, (best[2 * i] as usize, best[2 * i + 1] as usize), "best {hw:?}");
        let bt = select_best_resolution(hw, &tiny_pp);
        assert_eq!(
            bt,
            (best_tiny[2 * i] as usize, best_tiny[2 * i + 1] as usize),
            "best tiny {hw:?}"
        );
        let p = stic::image::patch_output_size(hw, b);
        assert_eq!(p, (patch[2 * i] as usize, patch[2 * i + 1] as usize), "patch {hw:?}");
        let s = stic::image::transforms::shortest_edge_size(hw, 336);
        assert_eq!(s, (short[2 * i] as usize, short[2 * i + 1] as usize), "short {hw:?}");
    }
}

#[test]
#[ignore]
fn dev_decode_vs_pil() {
    let dir = dev_dir().expect("set STIC_DEV_REFS");
    let refs = Refs::open(&dir.join("decode_refs.safetensors"));
    let files: Vec<(String, Option<String>)> =
        serde_json::from_str(&refs.metadata()["files"]).unwrap();
    let (mut exact, mut bad, mut pil_fails_we_decode) = (0, Vec::<String>::new(), Vec::new());
    for (path, key) in &files {
        let ours = load_image(Path::new(path));
        match (key, ours) {
            (Some(key), Ok(img)) => {
                let want = refs.image(key);
                if (img.width, img.height) != (want.width, want.height) {
                    bad.push(format!(
                        "{path}: size {}x{} vs PIL {}x{}",
                        img.width, img.height, want.width, want.height
                    ));
                    continue;
                }
                let (max, n) = diff_u8(&img.data, &want.data);
                if max == 0 {
                    exact += 1;
                } else {
                    bad.push(format!("{path}: max diff {max}, {n} of {} bytes", want.data.len()));
                }
            }
            (Some(_), Err(e)) => bad.push(format!("{path}: we fail, PIL reads it: {e}")),
            (None, Ok(_)) => pil_fails_we_decode.push(path.clone()),
            (None, Err(_)) => {}
        }
    }
    for b in &bad {
        eprintln!("MISMATCH {b}");
    }
    eprintln!(
        "{exact} exact, {} mismatching; PIL fails but we decode: {pil_fails_we_decode:?}",
        bad.len()
    );
    // Pillow's deliberately corrupt hopper_bad_exif.jpg decodes to coefficients (checked equal to
    // libjpeg's) that overflow the 16-bit lanes of libjpeg-turbo's SIMD IDCT; we match its C IDCT
    // (JSIMD_FORCENONE=1) exactly, PIL's SIMD output only outside those blocks.
    bad.retain(|b| !b.contains("hopper_bad_exif.jpg"));
    assert!(bad.is_empty());
}

#[test]
#[ignore]
fn dev_jpeg_fuzz_never_panics() {
    // Corrupt the committed JPEG variants at random (bytes flipped, truncated, spliced) and check
    // that decoding returns Ok or Err but never panics.
    let refs = resize_refs();
    let mut files: Vec<Vec<u8>> =
        refs.names().iter().filter(|n| n.ends_with("/file")).map(|n| refs.u8(n).1).collect();
    files.push(std::fs::read(fixture("images/wide.jpg")).unwrap());
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut rnd = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n.max(1) as u64) as usize
    };
    let (mut ok, mut err) = (0, 0);
    for iter in 0..20000 {
        let mut data = files[iter % files.len()].clone();
        match rnd(4) {
            0 => data.truncate(rnd(data.len())),
            1 => {
                for _ in 0..1 + rnd(8) {
                    let i = rnd(data.len());
                    data[i] = rnd(256) as u8;
                }
            }
            2 => {
                let i = rnd(data.len());
                data[i] ^= 1 << rnd(8);
            }
            _ => {
                let (a, b) = (rnd(data.len()), rnd(data.len()));
                let chunk: Vec<u8> = data[a.min(b)..a.max(b)].to_vec();
                let at = rnd(data.len());
                data.splice(at..at, chunk);
            }
        }
        match decode_image(&data, Path::new("fuzz.jpg")) {
            Ok(img) => {
                assert_eq!(img.data.len(), img.width * img.height * 3);
                ok += 1
            }
            Err(_) => err += 1,
        }
    }
    eprintln!("fuzz: {ok} decoded, {err} rejected, no panic");
}
