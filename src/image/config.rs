//! `ImageProcessorConfig`: the fields of a Hugging Face `preprocessor_config.json` that the
//! CLIP / LLaVA-NeXT image processors use, with transformers' defaults for missing keys.
//!
//! Key names and defaults follow `CLIPImageProcessor` / `LlavaNextImageProcessor` (transformers
//! 5): `size` {"shortest_edge": 224}, `crop_size` {"height": 224, "width": 224}, `resample` 3
//! (bicubic), `rescale_factor` 1/255, OpenAI CLIP mean/std, every `do_*` flag true. `size` may
//! also be an int (the shortest edge), {"height", "width"} (a fixed square resize) or a [h, w]
//! list; `crop_size` an int (square), {"height", "width"} or a [h, w] list.
//! `image_grid_pinpoints` holds (height, width) pairs; a `LlavaNextImageProcessor` config without
//! it gets transformers' default pinpoints.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::image::resize::{check_resample, resample, PillowCompat};

/// OpenAI CLIP normalisation constants (transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`),
/// written as in transformers; they are rounded to f32 like numpy's `np.array(mean, float32)`.
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// transformers' default `image_grid_pinpoints` for `LlavaNextImageProcessor`, (height, width).
pub const LLAVA_NEXT_DEFAULT_PINPOINTS: [[usize; 2]; 5] =
    [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];

#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessorConfig {
    pub do_resize: bool,
    /// `size.shortest_edge`; for a `size` given as {"height": s, "width": s} this is `s` and
    /// `resize_to_square` is set.
    pub shortest_edge: usize,
    /// True when `size` was {"height", "width"} (or a [h, w] list): HF then resizes every image
    /// straight to (shortest_edge, shortest_edge) instead of matching its shortest edge.
    pub resize_to_square: bool,
    pub do_center_crop: bool,
    pub crop_height: usize,
    pub crop_width: usize,
    pub do_rescale: bool,
    /// Kept in f64: HF multiplies the uint8 pixels by this Python float in float64 and only then
    /// casts to float32; an f32 factor would change about half of the 256 rescaled values by 1 ulp.
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub do_convert_rgb: bool,
    /// PIL filter id: 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming (0 nearest is rejected).
    pub resample: u32,
    /// (height, width) candidate resolutions for AnyRes; `Some` for LLaVA-NeXT.
    pub image_grid_pinpoints: Option<Vec<[usize; 2]>>,
    /// Which Pillow's resize pass order to reproduce (not a JSON key; default Pillow >= 13).
    pub pillow_compat: PillowCompat,
}

impl Default for ImageProcessorConfig {
    /// transformers' `CLIPImageProcessor` defaults (224 px).
    fn default() -> Self {
        ImageProcessorConfig {
            do_resize: true,
            shortest_edge: 224,
            resize_to_square: false,
            do_center_crop: true,
            crop_height: 224,
            crop_width: 224,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            do_convert_rgb: true,
            resample: resample::BICUBIC,
            image_grid_pinpoints: None,
            pillow_compat: PillowCompat::default(),
        }
    }
}

impl ImageProcessorConfig {
    /// llava-hf/llava-1.5-7b-hf's preprocessor: CLIP ViT-L/14-336 (shortest edge 336, crop 336).
    pub fn clip_336() -> Self {
        ImageProcessorConfig {
            shortest_edge: 336,
            crop_height: 336,
            crop_width: 336,
            ..Default::default()
        }
    }

    /// llava-hf/llava-v1.6-mistral-7b-hf's preprocessor: `clip_336` plus the default pinpoints.
    pub fn llava_next_336() -> Self {
        ImageProcessorConfig {
            image_grid_pinpoints: Some(LLAVA_NEXT_DEFAULT_PINPOINTS.to_vec()),
            ..Self::clip_336()
        }
    }

    /// The same config with rescale and normalisation switched off: `preprocess` then returns the
    /// uint8 pixel values (0..=255) as f32, like HF with `do_rescale=False, do_normalize=False`.
    pub fn without_normalization(&self) -> Self {
        ImageProcessorConfig { do_rescale: false, do_normalize: false, ..self.clone() }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Json { path: path.into(), source: e })?;
        Self::from_json(&v, path)
    }

    /// Parse a preprocessor config; `path` only names the source in errors.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let obj =
            v.as_object().ok_or_else(|| Error::config(path, "<root>", "expected a JSON object"))?;
        let p = Parser { obj, path };
        let d = Self::default();
        let (shortest_edge, resize_to_square) = p.size("size")?.unwrap_or((d.shortest_edge, false));
        let (crop_height, crop_width) =
            p.crop_size("crop_size")?.unwrap_or((d.crop_height, d.crop_width));
        let processor_type = p.string("image_processor_type")?.unwrap_or_default();
        let pinpoints = match p.pinpoints("image_grid_pinpoints")? {
            Some(pp) => Some(pp),
            None if processor_type.starts_with("LlavaNext") => {
                Some(LLAVA_NEXT_DEFAULT_PINPOINTS.to_vec())
            }
            None => None,
        };
        let cfg = ImageProcessorConfig {
            do_resize: p.bool("do_resize")?.unwrap_or(d.do_resize),
            shortest_edge,
            resize_to_square,
            do_center_crop: p.bool("do_center_crop")?.unwrap_or(d.do_center_crop),
            crop_height,
            crop_width,
            do_rescale: p.bool("do_rescale")?.unwrap_or(d.do_rescale),
            rescale_factor: p.f64("rescale_factor")?.unwrap_or(d.rescale_factor),
            do_normalize: p.bool("do_normalize")?.unwrap_or(d.do_normalize),
            image_mean: p.triple("image_mean")?.unwrap_or(d.image_mean),
            image_std: p.triple("image_std")?.unwrap_or(d.image_std),
            do_convert_rgb: p.bool("do_convert_rgb")?.unwrap_or(d.do_convert_rgb),
            resample: p.resample("resample")?.unwrap_or(d.resample),
            image_grid_pinpoints: pinpoints,
            pillow_compat: d.pillow_compat,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Check values that would make preprocessing fail or divide by zero.
    pub fn validate(&self, path: &Path) -> Result<()> {
        if self.shortest_edge == 0 {
            return Err(Error::config(path, "size", "must be positive"));
        }
        if self.crop_height == 0 || self.crop_width == 0 {
            return Err(Error::config(path, "crop_size", "must be positive"));
        }
        if self.image_std.contains(&0.0) {
            return Err(Error::config(path, "image_std", "must not contain 0"));
        }
        check_resample(self.resample)
            .map_err(|msg| Error::config(path, "resample", msg))?;
        if let Some(pp) = &self.image_grid_pinpoints {
            if pp.is_empty() {
                return Err(Error::config(path, "image_grid_pinpoints", "is empty"));
            }
            if pp.iter().any(|r| r[0] == 0 || r[1] == 0) {
                return Err(Error::config(path, "image_grid_pinpoints", "has a zero side"));
            }
        }
        Ok(())
    }
}

/// Typed, optional field access that names the file and field in every error.
struct Parser<'a> {
    obj: &'a serde_json::Map<String, Value>,
    path: &'a Path,
}

impl Parser<'_> {
    fn err(&self, field: &str, msg: impl Into<String>) -> Error {
        Error::config(self.path, field, msg)
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.err(key, format!("expected a bool, got {v}"))))
            .transpose()
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| self.err(key, format!("expected a string, got {v}")))
            })
            .transpose()
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.err(key, format!("expected a number, got {v}"))))
            .transpose()
    }

    fn usize_of(&self, key: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| self.err(key, format!("expected a non-negative integer, got {v}")))
    }

    /// `image_mean` / `image_std`: three numbers, or one number for all channels.
    fn triple(&self, key: &str) -> Result<Option<[f32; 3]>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        if let Some(x) = v.as_f64() {
            return Ok(Some([x as f32; 3]));
        }
        let arr = v.as_array().filter(|a| a.len() == 3).ok_or_else(|| {
            self.err(key, format!("expected a list of 3 numbers (one per RGB channel), got {v}"))
        })?;
        let mut out = [0f32; 3];
        for (o, x) in out.iter_mut().zip(arr) {
            *o = x.as_f64().ok_or_else(|| self.err(key, format!("expected a number, got {x}")))?
                as f32;
        }
        Ok(Some(out))
    }

    /// `size`: returns (edge, resize_to_square).
    fn size(&self, key: &str) -> Result<Option<(usize, bool)>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        if v.is_number() {
            // HF: an int size with default_to_square=False means the shortest edge.
            return Ok(Some((self.usize_of(key, v)?, false)));
        }
        let (h, w) = if let Some(m) = v.as_object() {
            if m.contains_key("longest_edge") || m.contains_key("max_height") {
                return Err(self.err(
                    key,
                    format!("unsupported size keys {v}: use shortest_edge or height/width"),
                ));
            }
            if let Some(se) = m.get("shortest_edge") {
                return Ok(Some((self.usize_of(key, se)?, false)));
            }
            match (m.get("height"), m.get("width")) {
                (Some(h), Some(w)) => (self.usize_of(key, h)?, self.usize_of(key, w)?),
                _ => {
                    return Err(self
                        .err(key, format!("expected shortest_edge or height and width, got {v}")))
                }
            }
        } else {
            self.pair(key, v)?
        };
        if h != w {
            return Err(self.err(key, format!("non-square fixed size {h}x{w} is not supported")));
        }
        Ok(Some((h, true)))
    }

    /// `crop_size`: returns (height, width).
    fn crop_size(&self, key: &str) -> Result<Option<(usize, usize)>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        if v.is_number() {
            let s = self.usize_of(key, v)?;
            return Ok(Some((s, s)));
        }
        if let Some(m) = v.as_object() {
            return match (m.get("height"), m.get("width")) {
                (Some(h), Some(w)) => Ok(Some((self.usize_of(key, h)?, self.usize_of(key, w)?))),
                _ => Err(self.err(key, format!("expected height and width, got {v}"))),
            };
        }
        self.pair(key, v).map(Some)
    }

    fn pair(&self, key: &str, v: &Value) -> Result<(usize, usize)> {
        match v.as_array().map(Vec::as_slice) {
            Some([h, w]) => Ok((self.usize_of(key, h)?, self.usize_of(key, w)?)),
            _ => Err(self
                .err(key, format!("expected an int, a dict or a [height, width] list, got {v}"))),
        }
    }

    fn resample(&self, key: &str) -> Result<Option<u32>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let r = self.usize_of(key, v)? as u32;
        check_resample(r).map_err(|msg| self.err(key, msg))?;
        Ok(Some(r))
    }

    fn pinpoints(&self, key: &str) -> Result<Option<Vec<[usize; 2]>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let arr = v.as_array().ok_or_else(|| {
            self.err(key, format!("expected a list of [height, width] pairs, got {v}"))
        })?;
        arr.iter()
            .map(|p| self.pair(key, p).map(|(h, w)| [h, w]))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}
