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
//! through libjpeg, which PIL uses), `types` (`RgbImage`, `ProcessedImage`), `resize` (Pillow's
//! resampler), `transforms` (crop/pad/normalise), `anyres` (LLaVA-NeXT tiling).

pub mod anyres;
pub mod config;
pub mod corrupt;
pub mod load;
pub mod resize;
pub mod transforms;
mod types;

pub use anyres::{anyres_grid_shape, patch_output_size, preprocess_anyres, select_best_resolution};
pub use config::{
    ImageProcessorConfig, LLAVA_NEXT_DEFAULT_PINPOINTS, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};
pub use load::{decode_image, load_image};
pub use resize::{resize_pil, resize_pil_compat, PillowCompat};
pub use types::{ProcessedImage, RgbImage};

use crate::error::Result;

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
