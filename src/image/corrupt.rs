//! STIC's image corruptions (the dispreferred answer describes a corrupted copy of the image), as
//! the official code makes them with torchvision on PIL images (stic/generate_pref.py:48-53):
//!
//! ```text
//! if random.random() > 0.5:  image = T.Resize(size=20)(image)
//! else:                      image = T.ColorJitter(brightness=.5, hue=.3)(image)
//! ```
//!
//! - `low_resolution(img, 20)`: torchvision `Resize(20)` on a PIL image: the shorter side becomes
//!   20, the longer `int(20 * long / short)`, resampled with PIL's bilinear filter (antialiased,
//!   Pillow's `Image.resize`); an image whose shorter side is already 20 is returned unchanged.
//! - `ColorJitter`: torchvision's semantics: the four adjustments run in a random order
//!   (`torch.randperm(4)`: 0 brightness, 1 contrast, 2 saturation, 3 hue), each with a factor drawn
//!   uniformly (as float32) from its range; a range that is the identity is off. STIC uses
//!   brightness in [0.5, 1.5] and hue in [-0.3, 0.3] only. The adjustments are torchvision's PIL
//!   paths, reproduced bit for bit (checked against Pillow in `tests/stic_data.rs`):
//!   - brightness, contrast, saturation: `ImageEnhance` = `Image.blend(degenerate, img, factor)`
//!     with degenerate black, the mean grey (`int(mean(L) + 0.5)`), and the image's own grey
//!     (`convert("L")`, ITU-R 601 in Pillow's fixed point); Pillow's blend computes
//!     `in1 + alpha * (in2 - in1)` in float32, clips to 0..=255 and truncates;
//!   - hue: `convert("HSV")` (Pillow's `rgb2hsv`), `h += uint8(hue_factor * 255)` with uint8
//!     wrap-around (a negative factor truncates toward zero, then wraps), `convert("RGB")`
//!     (Pillow's `hsv2rgb`), with the float/double mix of Pillow's C code.
//!
//! Randomness comes only from the `Rng` passed in (the crate's SplitMix64), so a seed gives the
//! same corruption everywhere; torch's generator is not reproduced.

use super::resize::{resample, resize_pil};
use super::transforms::shortest_edge_size;
use super::types::RgbImage;
use crate::rng::Rng;

/// STIC's low-resolution size: `T.Resize(size=20)` (stic/generate_pref.py:50).
pub const STIC_LOW_RES: usize = 20;

/// STIC's colour jitter: `T.ColorJitter(brightness=.5, hue=.3)` (stic/generate_pref.py:52).
pub const STIC_JITTER: ColorJitter =
    ColorJitter { brightness: Some((0.5, 1.5)), contrast: None, saturation: None, hue: Some((-0.3, 0.3)) };

/// torchvision's `ColorJitter`: a (min, max) factor range per adjustment, `None` = off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColorJitter {
    pub brightness: Option<(f64, f64)>,
    pub contrast: Option<(f64, f64)>,
    pub saturation: Option<(f64, f64)>,
    pub hue: Option<(f64, f64)>,
}

impl ColorJitter {
    /// The ranges torchvision derives from scalar arguments: [max(0, 1 - x), 1 + x] for brightness,
    /// contrast and saturation, [-x, x] for hue (x <= 0.5); 0 turns an adjustment off.
    pub fn new(brightness: f64, contrast: f64, saturation: f64, hue: f64) -> Self {
        let around1 = |x: f64| (x > 0.0).then(|| ((1.0 - x).max(0.0), 1.0 + x));
        assert!((0.0..=0.5).contains(&hue), "ColorJitter: hue must be in [0, 0.5], got {hue}");
        ColorJitter {
            brightness: around1(brightness),
            contrast: around1(contrast),
            saturation: around1(saturation),
            hue: (hue > 0.0).then_some((-hue, hue)),
        }
    }

    /// Draw the order and the factors (torchvision's `get_params`: the permutation first, then
    /// brightness, contrast, saturation, hue, each drawn only when enabled).
    pub fn sample(&self, rng: &mut Rng) -> JitterParams {
        let mut order = [0u8, 1, 2, 3];
        for i in (1..4).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut draw = |r: Option<(f64, f64)>| r.map(|(lo, hi)| (lo + (hi - lo) * rng.uniform()) as f32);
        let brightness = draw(self.brightness);
        let contrast = draw(self.contrast);
        let saturation = draw(self.saturation);
        let hue = draw(self.hue);
        JitterParams { order, brightness, contrast, saturation, hue }
    }
}

/// One drawn colour jitter: the order of the adjustments (0 brightness, 1 contrast, 2 saturation,
/// 3 hue) and the factor of each enabled one.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JitterParams {
    pub order: [u8; 4],
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub brightness: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub contrast: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub saturation: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hue: Option<f32>,
}

/// A drawn corruption, recorded in the preference data (`{"kind": "low_resolution", "size": 20}`
/// or `{"kind": "color_jitter", "order": [...], "brightness": ..., "hue": ...}`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Corruption {
    LowResolution { size: usize },
    ColorJitter(JitterParams),
}

impl Corruption {
    /// STIC's draw (stic/generate_pref.py:49): `random() > 0.5` picks the low resolution, else
    /// the colour jitter, whose parameters are drawn next from the same stream.
    pub fn sample_stic(rng: &mut Rng) -> Self {
        if rng.uniform() > 0.5 {
            Corruption::LowResolution { size: STIC_LOW_RES }
        } else {
            Corruption::ColorJitter(STIC_JITTER.sample(rng))
        }
    }

    pub fn apply(&self, img: &RgbImage) -> RgbImage {
        match self {
            Corruption::LowResolution { size } => low_resolution(img, *size),
            Corruption::ColorJitter(p) => apply_jitter(img, p),
        }
    }
}

/// torchvision `Resize(size)` on a PIL image (bilinear): shorter side `size`, aspect kept.
pub fn low_resolution(img: &RgbImage, size: usize) -> RgbImage {
    let (h, w) = shortest_edge_size((img.height, img.width), size);
    if (h, w) == (img.height, img.width) {
        return img.clone();
    }
    resize_pil(img, w.max(1), h.max(1), resample::BILINEAR)
}

/// Apply a drawn colour jitter (adjustments in `p.order`, the disabled ones skipped).
pub fn apply_jitter(img: &RgbImage, p: &JitterParams) -> RgbImage {
    let mut out = img.clone();
    for &op in &p.order {
        out = match (op, p.brightness, p.contrast, p.saturation, p.hue) {
            (0, Some(f), ..) => adjust_brightness(&out, f),
            (1, _, Some(f), ..) => adjust_contrast(&out, f),
            (2, _, _, Some(f), _) => adjust_saturation(&out, f),
            (3, .., Some(f)) => adjust_hue(&out, f),
            _ => out,
        };
    }
    out
}

/// Pillow's `ImagingBlend(im1, im2, alpha)` on uint8 bytes: `in1 + alpha * (in2 - in1)` in float32,
/// clipped to 0..=255 and truncated.
fn blend(in1: &[u8], in2: &[u8], alpha: f32) -> Vec<u8> {
    in1.iter()
        .zip(in2)
        .map(|(&a, &b)| {
            let t = a as i32 as f32 + alpha * (b as i32 - a as i32) as f32;
            if t <= 0.0 {
                0
            } else if t >= 255.0 {
                255
            } else {
                t as u8
            }
        })
        .collect()
}

/// Pillow's RGB -> L: (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16.
fn luma(p: &[u8]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

fn with_data(img: &RgbImage, data: Vec<u8>) -> RgbImage {
    RgbImage { width: img.width, height: img.height, data }
}

/// torchvision `adjust_brightness` (PIL `ImageEnhance.Brightness`): blend with black.
pub fn adjust_brightness(img: &RgbImage, factor: f32) -> RgbImage {
    with_data(img, blend(&vec![0; img.data.len()], &img.data, factor))
}

/// torchvision `adjust_contrast` (PIL `ImageEnhance.Contrast`): blend with the mean grey level
/// `int(mean(convert("L")) + 0.5)`.
pub fn adjust_contrast(img: &RgbImage, factor: f32) -> RgbImage {
    let n = img.width * img.height;
    let sum: u64 = img.data.chunks_exact(3).map(|p| luma(p) as u64).sum();
    let mean = (sum as f64 / n as f64 + 0.5) as u8;
    with_data(img, blend(&vec![mean; img.data.len()], &img.data, factor))
}

/// torchvision `adjust_saturation` (PIL `ImageEnhance.Color`): blend with the image's grey version.
pub fn adjust_saturation(img: &RgbImage, factor: f32) -> RgbImage {
    let grey: Vec<u8> = img.data.chunks_exact(3).flat_map(|p| [luma(p); 3]).collect();
    with_data(img, blend(&grey, &img.data, factor))
}

/// torchvision `adjust_hue` on a PIL image: rotate the hue channel of Pillow's HSV by
/// `uint8(hue_factor * 255)` (wrapping). `hue_factor` must be in [-0.5, 0.5].
pub fn adjust_hue(img: &RgbImage, hue_factor: f32) -> RgbImage {
    assert!((-0.5..=0.5).contains(&hue_factor), "adjust_hue: hue_factor {hue_factor} is not in [-0.5, 0.5]");
    // numpy's float64 -> uint8 cast: truncate toward zero, keep the low byte.
    let shift = ((hue_factor as f64 * 255.0).trunc() as i64).rem_euclid(256) as u8;
    let data = img
        .data
        .chunks_exact(3)
        .flat_map(|p| {
            let [h, s, v] = rgb_to_hsv_pil([p[0], p[1], p[2]]);
            hsv_to_rgb_pil([h.wrapping_add(shift), s, v])
        })
        .collect();
    with_data(img, data)
}

/// Pillow's `rgb2hsv_row` (Convert.c), with its float and double steps.
pub fn rgb_to_hsv_pil([r, g, b]: [u8; 3]) -> [u8; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return [0, 0, maxc];
    }
    let cr = (maxc - minc) as f32;
    let s = cr / maxc as f32;
    let rc = (maxc - r) as f32 / cr;
    let gc = (maxc - g) as f32 / cr;
    let bc = (maxc - b) as f32 / cr;
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + rc as f64 - bc as f64) as f32
    } else {
        (4.0 + gc as f64 - rc as f64) as f32
    };
    let h = ((h as f64 / 6.0 + 1.0) % 1.0) as f32;
    let clip8 = |x: f64| (x as i32).clamp(0, 255) as u8;
    [clip8(h as f64 * 255.0), clip8(s as f64 * 255.0), maxc]
}

/// Pillow's `hsv2rgb` (Convert.c), with its float and double steps and C `round` (half away
/// from zero).
pub fn hsv_to_rgb_pil([h, s, v]: [u8; 3]) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let h6 = h as f32 as f64 * 6.0 / 255.0;
    let i = h6.floor() as i32;
    let f = (h6 - i as f32 as f64) as f32;
    let fs = (s as f32 as f64 / 255.0) as f32;
    let vf = v as f32 as f64;
    let clip8 = |x: f64| (x.round() as i32).clamp(0, 255) as u8;
    let p = clip8(vf * (1.0 - fs as f64));
    let q = clip8(vf * (1.0 - (fs * f) as f64));
    let t = clip8(vf * (1.0 - fs as f64 * (1.0 - f as f64)));
    match i % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_round_trip_of_greys_and_primaries() {
        for v in [0u8, 1, 128, 255] {
            assert_eq!(rgb_to_hsv_pil([v, v, v]), [0, 0, v]);
            assert_eq!(hsv_to_rgb_pil([0, 0, v]), [v, v, v]);
        }
        assert_eq!(rgb_to_hsv_pil([255, 0, 0]), [0, 255, 255]);
        assert_eq!(hsv_to_rgb_pil([0, 255, 255]), [255, 0, 0]);
        assert_eq!(rgb_to_hsv_pil([0, 0, 255]), [170, 255, 255]);
    }

    #[test]
    fn jitter_draws_are_in_range_and_a_permutation() {
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            let p = STIC_JITTER.sample(&mut rng);
            let mut o = p.order;
            o.sort();
            assert_eq!(o, [0, 1, 2, 3]);
            let b = p.brightness.unwrap();
            let h = p.hue.unwrap();
            assert!((0.5..=1.5).contains(&b) && (-0.3..=0.3).contains(&h));
            assert!(p.contrast.is_none() && p.saturation.is_none());
        }
        assert_eq!(ColorJitter::new(0.5, 0.0, 0.0, 0.3), STIC_JITTER);
    }

    #[test]
    fn corruption_serialises_with_its_kind() {
        let c = Corruption::LowResolution { size: 20 };
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"kind":"low_resolution","size":20}"#);
        let j = Corruption::ColorJitter(JitterParams { order: [3, 0, 1, 2], brightness: Some(0.75), contrast: None, saturation: None, hue: Some(-0.25) });
        let s = serde_json::to_string(&j).unwrap();
        assert_eq!(s, r#"{"kind":"color_jitter","order":[3,0,1,2],"brightness":0.75,"hue":-0.25}"#);
        assert_eq!(serde_json::from_str::<Corruption>(&s).unwrap(), j);
    }
}
