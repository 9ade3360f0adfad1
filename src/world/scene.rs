//! The world's ground truth: its objects (`Shape`), colours, sizes, positions, backgrounds, the
//! co-occurrence pairs, one image's `Scene`, the seeded per-item streams and the object sampler.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// The objects of the world: one shape each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Cross,
    Diamond,
    Ring,
    Moon,
}

impl Shape {
    pub const ALL: [Shape; 8] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star, Shape::Cross, Shape::Diamond, Shape::Ring, Shape::Moon];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Cross => "cross",
            Shape::Diamond => "diamond",
            Shape::Ring => "ring",
            Shape::Moon => "moon",
        }
    }

    /// Other words for the object (the name first), as CHAIR's synonyms list has for COCO.
    pub fn synonyms(self) -> &'static [&'static str] {
        match self {
            Shape::Circle => &["circle", "disc", "disk", "dot", "ball"],
            Shape::Square => &["square", "box", "block"],
            Shape::Triangle => &["triangle", "wedge"],
            Shape::Star => &["star", "pentagram"],
            Shape::Cross => &["cross", "plus", "plus sign"],
            Shape::Diamond => &["diamond", "rhombus", "lozenge"],
            Shape::Ring => &["ring", "donut", "doughnut", "hoop"],
            Shape::Moon => &["moon", "crescent"],
        }
    }

    pub fn from_name(s: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|o| o.name() == s)
    }
}

/// Object colours (name, RGB).
pub const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [235, 210, 40]),
    ("purple", [140, 60, 190]),
    ("orange", [245, 140, 30]),
    ("white", [245, 245, 245]),
    ("black", [20, 20, 20]),
];

/// Background colours (name, RGB); each image adds a gradient and noise.
pub const BACKGROUNDS: [(&str, [u8; 3]); 6] =
    [("grey", [128, 128, 128]), ("beige", [215, 200, 165]), ("sky blue", [150, 185, 215]), ("dark slate", [50, 60, 75]), ("pale green", [175, 210, 170]), ("brown", [110, 75, 50])];

/// Sizes (name, radius as a fraction of a grid cell).
pub const SIZES: [(&str, f64); 2] = [("small", 0.24), ("large", 0.4)];

/// The 3x3 grid of positions, row by row.
pub const POSITIONS: [&str; 9] = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"];

/// The co-occurrence table: when one of a pair is placed, the other is added with probability p
/// (if there is room). Circle and moon have no companion.
pub const PAIRS: [(Shape, Shape, f64); 3] = [(Shape::Star, Shape::Ring, 0.8), (Shape::Square, Shape::Triangle, 0.75), (Shape::Cross, Shape::Diamond, 0.7)];

/// The probability that a new object repeats the shape of one already placed (for counting).
pub const REPEAT_P: f64 = 0.2;

/// The usual companion of a shape and the pair's probability.
pub fn companion(s: Shape) -> Option<(Shape, f64)> {
    PAIRS.iter().find_map(|&(a, b, p)| if a == s { Some((b, p)) } else if b == s { Some((a, p)) } else { None })
}

/// One object of an image: what it is, and where it is drawn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub shape: Shape,
    pub colour: String,
    pub size: String,
    /// One of [`POSITIONS`].
    pub position: String,
    /// Centre and radius in pixels.
    pub x: f64,
    pub y: f64,
    pub r: f64,
}

/// One image's ground truth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub id: String,
    pub image: String,
    pub split: String,
    pub background: String,
    pub objects: Vec<Object>,
}

impl Scene {
    /// The distinct shapes present, in [`Shape::ALL`] order.
    pub fn shapes(&self) -> Vec<Shape> {
        Shape::ALL.into_iter().filter(|s| self.objects.iter().any(|o| o.shape == *s)).collect()
    }
    pub fn count(&self, s: Shape) -> usize {
        self.objects.iter().filter(|o| o.shape == s).count()
    }
}


/// The seed of item `i`'s own stream (SplitMix of the world seed and the index), so that an item
/// does not depend on how many came before it.
pub fn item_rng(seed: u64, i: usize, salt: u64) -> Rng {
    let mut r = Rng::new(seed ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ salt.wrapping_mul(0xA076_1D64_78BD_642F));
    Rng::new(r.next_u64())
}

/// The shapes of one image: 1 to 4 objects; each new object repeats a placed shape with
/// [`REPEAT_P`], else is a shape not yet placed, followed by its companion with the pair's
/// probability when there is room.
pub fn sample_shapes(rng: &mut Rng) -> Vec<Shape> {
    let n = 1 + rng.below(4);
    let mut out: Vec<Shape> = Vec::new();
    while out.len() < n {
        if !out.is_empty() && rng.uniform() < REPEAT_P {
            out.push(out[rng.below(out.len())]);
            continue;
        }
        let unused: Vec<Shape> = Shape::ALL.into_iter().filter(|s| !out.contains(s)).collect();
        let s = unused[rng.below(unused.len())];
        out.push(s);
        if let Some((c, p)) = companion(s) {
            let draw = rng.uniform();
            if out.len() < n && !out.contains(&c) && draw < p {
                out.push(c);
            }
        }
    }
    out
}


/// Read a world's ground truth (objects.json).
pub fn read_scenes(dir: &Path) -> Result<Vec<Scene>> {
    let p = dir.join("objects.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json { path: p, source: e })
}
