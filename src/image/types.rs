//! The image types every stage shares: `RgbImage` (8-bit HWC RGB) and `ProcessedImage` (the
//! model-ready pixels).

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
