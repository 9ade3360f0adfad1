//! Image preprocessing identical to Hugging Face's slow (PIL-based) `CLIPImageProcessor`
//! (LLaVA-1.5) and `LlavaNextImageProcessor` (LLaVA-1.6 AnyRes).
//!
//! Conventions: an `RgbImage` is HWC uint8 (height rows of width RGB pixels). Processed pixels
//! are a `Tensor` [N, 3, H, W] (NCHW, f32): N = 1 for CLIP, N = 1 + tiles for AnyRes with the
//! base (whole-image) view first and the tiles row-major after it. `image_size` is the original
//! image's (height, width), as HF's `image_sizes`.
//!
//! Pipeline (all uint8 until the last step, as in HF):
//!   `load_image` (decode + HF `convert_to_rgb`)
//!   -> [AnyRes: best pinpoint, aspect-fit resize, centred zero pad, tiles; base = square resize]
//!   -> per image: `resize_pil` to the shortest edge, center crop
//!   -> rescale (x * 1/255 in f64 -> f32) and normalise ((x - mean) / std in f32).
//!
//! Submodules: `config` (preprocessor_config.json), `corrupt` (STIC's colour jitter and low
//! resolution, torchvision/PIL semantics), `load` (file decoding + RGB conversion; JPEG
//! through libjpeg, which PIL uses), `resize` (Pillow's
//! resampler), `transforms` (crop/pad/normalise), `anyres` (LLaVA-NeXT tiling).

pub mod anyres;
pub mod config;
pub mod corrupt;
pub mod load;
pub mod resize;
pub mod transforms;

pub use anyres::{anyres_grid_shape, patch_output_size, preprocess_anyres, select_best_resolution};
pub use config::{
    ImageProcessorConfig, LLAVA_NEXT_DEFAULT_PINPOINTS, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};
pub use load::{decode_image, load_image};
pub use resize::{resize_pil, resize_pil_compat, PillowCompat};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// An 8-bit RGB image, HWC: pixel (y, x) channel c is `data[(y * width + x) * 3 + c]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Wrap an HWC RGB buffer, checking its length.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != width * height * 3 || width == 0 || height == 0 {
            return Err(Error::shape(
                "RgbImage::new",
                format!(
                    "{width}x{height} RGB needs {} bytes, got {}",
                    width * height * 3,
                    data.len()
                ),
            ));
        }
        Ok(RgbImage { width, height, data })
    }
}

/// The model-ready pixels of one image.
#[derive(Clone, Debug)]
pub struct ProcessedImage {
    /// [N, 3, H, W] f32, base view first for AnyRes.
    pub pixel_values: Tensor,
    /// The original image's (height, width), before any resizing.
    pub image_size: (usize, usize),
}

/// CLIP preprocessing (LLaVA-1.5): resize shortest edge, center crop, rescale, normalise.
/// pixel_values [1, 3, crop_h, crop_w].
pub fn preprocess_clip(img: &RgbImage, cfg: &ImageProcessorConfig) -> Result<ProcessedImage> {
    let out = transforms::clip_resize_crop(img, cfg);
    Ok(ProcessedImage {
        pixel_values: transforms::to_tensor(std::slice::from_ref(&out), cfg)?,
        image_size: (img.height, img.width),
    })
}

/// AnyRes when the config has `image_grid_pinpoints`, else CLIP. For the raw 0..=255 values
/// (as f32) pass `cfg.without_normalization()`.
pub fn preprocess(img: &RgbImage, cfg: &ImageProcessorConfig) -> Result<ProcessedImage> {
    if cfg.image_grid_pinpoints.is_some() {
        preprocess_anyres(img, cfg)
    } else {
        preprocess_clip(img, cfg)
    }
}
