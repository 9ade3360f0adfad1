//! The synthetic world (docs/WORLD.md): small seeded images of 1 to 4 shapes with their ground
//! truth, captions whose objects co-occur by a known pairs table, LLaVA instruction data, POPE-style
//! probes and held-out questions; `make` writes a world folder (`stic world make`), `eval` scores
//! predictions against it (`stic world eval`).
//!
//! - `scene`: the ground truth's types, the vocabulary's constants, the object sampler
//! - `draw`: the rasteriser (shapes, backgrounds, PNG)
//! - `text`: vocabulary, synonyms, captions, questions, the parser of objects in free text
//! - `eval`: the world's metrics (CHAIR_i, CHAIR_s, recall, POPE F1, counting accuracy)
//! - `tokenizer`: the world's word-level tokenizer.json, built from its texts
//! - `model`: a fresh tiny LLaVA for the world (configs, tokenizer, initialised weights)
//! - `train`: `stic world train`, the model trained from scratch in LLaVA's two stages
//! - `clip`: `train-clip`, a tiny CLIP trained contrastively on the captions; held-out retrieval

pub mod clip;
pub mod draw;
pub mod eval;
pub mod model;
pub mod scene;
pub mod text;
pub mod tokenizer;
pub mod train;

pub use scene::{companion, item_rng, read_scenes, sample_shapes, Object, Scene, Shape, BACKGROUNDS, COLOURS, PAIRS, POSITIONS, REPEAT_P, SIZES};

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// What `make` builds.
#[derive(Clone, Debug)]
pub struct MakeArgs {
    pub n: usize,
    pub seed: u64,
    /// Image side in pixels.
    pub size: usize,
    /// The fraction of images held out (taken from the end).
    pub heldout: f64,
}

impl Default for MakeArgs {
    fn default() -> Self {
        MakeArgs { n: 1000, seed: 0, size: 64, heldout: 0.2 }
    }
}

/// Draw scene `i`: its ground truth and its pixels.
pub fn make_scene(a: &MakeArgs, i: usize, split: &str) -> (Scene, crate::image::RgbImage) {
    let mut rng = item_rng(a.seed, i, 1);
    let shapes = sample_shapes(&mut rng);
    let (bg_name, bg) = BACKGROUNDS[rng.below(BACKGROUNDS.len())];
    // The texture has its own stream, so that the scene does not depend on the image size.
    let mut img = draw::background(a.size, bg, &mut item_rng(a.seed, i, 5));
    let mut cells: Vec<usize> = (0..9).collect();
    let cell = a.size as f64 / 3.0;
    let mut objects = Vec::new();
    for shape in shapes {
        let c = cells.remove(rng.below(cells.len()));
        // A colour far enough from the background to be seen.
        let visible: Vec<usize> = (0..COLOURS.len())
            .filter(|&k| COLOURS[k].1.iter().zip(bg).map(|(&x, y)| (x as f64 - y as f64).powi(2)).sum::<f64>().sqrt() > 110.0)
            .collect();
        let (colour, rgb) = COLOURS[visible[rng.below(visible.len())]];
        let (size, frac) = SIZES[rng.below(SIZES.len())];
        let r = frac * cell;
        let slack = (cell / 2.0 - 1.15 * r).max(0.0);
        let x = (c % 3) as f64 * cell + cell / 2.0 + (rng.uniform() * 2.0 - 1.0) * slack;
        let y = (c / 3) as f64 * cell + cell / 2.0 + (rng.uniform() * 2.0 - 1.0) * slack;
        draw::draw(&mut img, shape, x, y, r, rgb);
        let round = |v: f64| (v * 100.0).round() / 100.0;
        objects.push(Object { shape, colour: colour.into(), size: size.into(), position: POSITIONS[c].into(), x: round(x), y: round(y), r: round(r) });
    }
    // Objects listed in reading order (by cell), as the captions name them.
    objects.sort_by_key(|o| POSITIONS.iter().position(|p| *p == o.position));
    let id = format!("{i:06}");
    (Scene { image: format!("images/{id}.png"), id, split: split.into(), background: bg_name.into(), objects }, img)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn json_bytes(v: &impl Serialize) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).expect("serialisable");
    s.push(b'\n');
    s
}

fn jsonl_bytes(v: &[Value]) -> Vec<u8> {
    v.iter().flat_map(|l| serde_json::to_string(l).expect("serialisable").into_bytes().into_iter().chain([b'\n'])).collect()
}

/// The number of held-out images of a world of `n`.
pub fn heldout_count(n: usize, frac: f64) -> usize {
    ((n as f64 * frac).round() as usize).min(n)
}

/// Statistics measured on the train split: object frequencies, P(b | a) in the captions, the
/// number of objects per image.
pub fn statistics(scenes: &[Scene]) -> Value {
    let train: Vec<&Scene> = scenes.iter().filter(|s| s.split == "train").collect();
    let mut freq: BTreeMap<&str, f64> = BTreeMap::new();
    let mut joint: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    let mut per_image: BTreeMap<String, usize> = BTreeMap::new();
    for s in &train {
        let shapes = s.shapes();
        *per_image.entry(s.objects.len().to_string()).or_default() += 1;
        for a in &shapes {
            *freq.entry(a.name()).or_default() += 1.0;
            for b in &shapes {
                if a != b {
                    *joint.entry(a.name()).or_default().entry(b.name()).or_default() += 1.0;
                }
            }
        }
    }
    let round = |v: f64| (v * 1e4).round() / 1e4;
    let cond: BTreeMap<&str, BTreeMap<&str, f64>> =
        joint.iter().map(|(a, m)| (*a, m.iter().map(|(b, c)| (*b, round(c / freq[a]))).collect())).collect();
    let n = train.len().max(1) as f64;
    json!({
        "train_images": train.len(),
        "object_frequency": freq.iter().map(|(k, v)| (*k, round(v / n))).collect::<BTreeMap<_, _>>(),
        "p_b_given_a": cond,
        "objects_per_image": per_image,
    })
}

/// The description of the world (world.json): vocabulary, synonyms, plurals, the generator's
/// parameters and the measured statistics.
pub fn world_json(a: &MakeArgs, scenes: &[Scene]) -> Value {
    json!({
        "format": "stic-world-1",
        "seed": a.seed,
        "n": a.n,
        "image_size": a.size,
        "heldout": heldout_count(a.n, a.heldout),
        "objects": Shape::ALL.iter().map(|s| json!({
            "name": s.name(),
            "synonyms": s.synonyms(),
            "plurals": s.synonyms().iter().map(|w| text::plural(w)).collect::<Vec<_>>(),
            "companion": companion(*s).map(|(c, _)| c.name()),
        })).collect::<Vec<_>>(),
        "colours": COLOURS.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "backgrounds": BACKGROUNDS.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "sizes": SIZES.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "positions": POSITIONS,
        "pairs": PAIRS.iter().map(|(a, b, p)| json!({"a": a.name(), "b": b.name(), "p": p})).collect::<Vec<_>>(),
        "repeat_p": REPEAT_P,
        "statistics": statistics(scenes),
    })
}

/// `stic world make`: write a world of `a.n` images into `out` (see docs/WORLD.md for the files).
/// The same arguments give byte-identical files.
pub fn make(a: &MakeArgs, out: &Path) -> Result<Vec<Scene>> {
    if a.n == 0 || a.size < 24 {
        return Err(Error::Input(format!("world make: need n >= 1 and size >= 24 (got n {}, size {})", a.n, a.size)));
    }
    let images = out.join("images");
    std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    let held = heldout_count(a.n, a.heldout);
    let scenes: Vec<Scene> = (0..a.n)
        .map(|i| {
            let (scene, img) = make_scene(a, i, if i >= a.n - held { "heldout" } else { "train" });
            write(&out.join(&scene.image), &draw::png(&img))?;
            Ok(scene)
        })
        .collect::<Result<_>>()?;
    let (train, heldout): (Vec<&Scene>, Vec<&Scene>) = scenes.iter().partition(|s| s.split == "train");
    let list = |v: &[&Scene]| v.iter().map(|s| format!("{}\n", s.image)).collect::<String>();
    write(&out.join("train.txt"), list(&train).as_bytes())?;
    write(&out.join("heldout.txt"), list(&heldout).as_bytes())?;
    write(&out.join("objects.json"), &json_bytes(&scenes))?;
    let captions: Vec<Value> = train.iter().map(|s| text::caption_example(s, &mut item_rng(a.seed, s.id.parse().unwrap_or(0), 2))).collect();
    write(&out.join("captions.json"), &json_bytes(&captions))?;
    let instruct: Vec<Value> = train.iter().map(|s| text::instruct_example(s, &mut item_rng(a.seed, s.id.parse().unwrap_or(0), 3))).collect();
    write(&out.join("instruct.json"), &json_bytes(&instruct))?;
    let mut probes = Vec::new();
    let mut questions = Vec::new();
    for s in &heldout {
        let mut rng = item_rng(a.seed, s.id.parse().unwrap_or(0), 4);
        probes.extend(text::probes(s, &mut rng).iter().map(|p| serde_json::to_value(p).expect("serialisable")));
        questions.extend(text::questions(s, &mut rng).iter().map(|q| serde_json::to_value(q).expect("serialisable")));
    }
    write(&out.join("probes.jsonl"), &jsonl_bytes(&probes))?;
    write(&out.join("questions.jsonl"), &jsonl_bytes(&questions))?;
    write(&out.join("world.json"), &json_bytes(&world_json(a, &scenes)))?;
    Ok(scenes)
}

/// The image side of the world in `dir` (its world.json's `image_size`).
pub fn image_size(dir: &Path) -> Result<usize> {
    let p = dir.join("world.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::Json { path: p.clone(), source: e })?;
    v.get("image_size")
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| Error::config(&p, "image_size", "missing or not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("stic-world-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for sub in ["", "images"] {
            let mut v: Vec<_> = std::fs::read_dir(dir.join(sub)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
            v.sort();
            out.extend(v.into_iter().map(|p| (format!("{sub}/{}", p.file_name().unwrap().to_string_lossy()), std::fs::read(&p).unwrap())));
        }
        out
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_world() {
        let a = MakeArgs { n: 10, seed: 7, size: 48, heldout: 0.3 };
        let (d1, d2, d3) = (tmp("a"), tmp("b"), tmp("c"));
        make(&a, &d1).unwrap();
        make(&a, &d2).unwrap();
        make(&MakeArgs { seed: 8, ..a.clone() }, &d3).unwrap();
        let (f1, f2, f3) = (files(&d1), files(&d2), files(&d3));
        let names: Vec<&str> = f1.iter().map(|(n, _)| n.as_str()).collect();
        for want in ["/captions.json", "/instruct.json", "/probes.jsonl", "/questions.jsonl", "/objects.json", "/world.json", "/train.txt", "/heldout.txt", "images/000009.png"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert_eq!(f1, f2);
        let differ = f1.iter().zip(&f3).filter(|(a, b)| a.1 != b.1).count();
        assert!(differ >= 10, "seed 8 changed only {differ} files");
        let scenes = read_scenes(&d1).unwrap();
        assert_eq!(scenes.iter().filter(|s| s.split == "heldout").count(), 3);
        assert_eq!(std::fs::read_to_string(d1.join("heldout.txt")).unwrap().lines().count(), 3);
        // captions.json and instruct.json are LLaVA JSON that train-sft reads, one example per train
        // image, the image token in the first turn.
        for f in ["captions.json", "instruct.json"] {
            let ex = crate::train::data::read_llava_json(&d1.join(f), &d1).unwrap();
            assert_eq!(ex.len(), 7, "{f}");
            for (img, turns) in &ex {
                assert!(img.as_ref().unwrap().is_file());
                assert!(turns[0].0.starts_with("<image>\n") && turns.iter().skip(1).all(|t| !t.0.contains("<image>")), "{f}: {turns:?}");
            }
        }
        // The PNGs decode to the size asked for.
        let img = crate::image::load_image(&d1.join("images/000000.png")).unwrap();
        assert_eq!((img.width, img.height), (48, 48));
        for d in [d1, d2, d3] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn companions_follow_the_pairs_table() {
        // Over many draws, P(ring | star) is far above P(ring | circle), and no image has more than 4.
        let (mut star, mut star_ring, mut circle, mut circle_ring) = (0.0, 0.0, 0.0, 0.0);
        for i in 0..4000 {
            let s = sample_shapes(&mut item_rng(3, i, 1));
            assert!((1..=4).contains(&s.len()));
            if s.contains(&Shape::Star) {
                star += 1.0;
                star_ring += s.contains(&Shape::Ring) as u8 as f64;
            }
            if s.contains(&Shape::Circle) {
                circle += 1.0;
                circle_ring += s.contains(&Shape::Ring) as u8 as f64;
            }
        }
        let (p_star, p_circle) = (star_ring / star, circle_ring / circle);
        assert!(p_star > 0.55 && p_circle < 0.35, "P(ring|star) {p_star}, P(ring|circle) {p_circle}");
    }

    #[test]
    fn objects_are_inside_the_image_and_apart() {
        let a = MakeArgs { n: 50, seed: 1, size: 64, heldout: 0.2 };
        for i in 0..a.n {
            let (s, img) = make_scene(&a, i, "train");
            assert_eq!(img.data.len(), 64 * 64 * 3);
            for (k, o) in s.objects.iter().enumerate() {
                assert!(o.x - 1.1 * o.r >= 0.0 && o.x + 1.1 * o.r <= 64.0 && o.y - 1.1 * o.r >= 0.0 && o.y + 1.1 * o.r <= 64.0, "{o:?}");
                assert!(s.objects[k + 1..].iter().all(|p| p.position != o.position));
            }
        }
    }
}
