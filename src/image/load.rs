//! Decoding image files into `RgbImage` (HWC uint8, 3 channels) the way HF sees them: what
//! `PIL.Image.open(path)` yields, passed through transformers' `convert_to_rgb`.
//!
//! `convert_to_rgb` (transformers 5, PIL input): an image with an alpha band or a `transparency`
//! entry is converted to RGBA and alpha-composited onto opaque white (`Image.alpha_composite`),
//! anything else goes through `Image.convert("RGB")` (grey replicated to R = G = B). The `image`
//! crate expands palettes and tRNS chunks into RGB(A) / grey+alpha, which matches PIL's
//! convert-then-composite. JPEGs are decoded by libjpeg (the `mozjpeg` crate, built from source,
//! accurate integer IDCT and fancy upsampling: PIL's settings), so their pixels are the bytes PIL
//! gets from libjpeg-turbo; the `image` crate's own JPEG decoder differs by up to 7 levels.
//! CMYK/YCCK JPEGs, which PIL converts with its own formulas, go through the `image` crate.
//! 16-bit PNGs follow PIL's modes: RGB(A)/LA keep the high byte, and
//! 16-bit grey (PIL "I;16") clamps to 0..=255 on conversion, as PIL does. No EXIF rotation is
//! applied (neither `Image.open` nor the HF processors apply one).

use std::path::Path;

use image::DynamicImage;

use super::RgbImage;
use crate::error::{Error, Result};

/// Decode a JPEG or PNG file (format sniffed from the content) into RGB.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let img_err = |msg: String| Error::Image { path: path.into(), msg };
    let bytes = std::fs::read(path).map_err(|e| img_err(format!("cannot open: {e}")))?;
    decode_image(&bytes, path)
}

/// Decode an in-memory JPEG or PNG; `name` labels errors (e.g. a URL or "<stdin>").
pub fn decode_image(bytes: &[u8], name: &Path) -> Result<RgbImage> {
    let img_err = |msg: String| Error::Image { path: name.into(), msg };
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        if let Some(img) = decode_jpeg_libjpeg(bytes).map_err(|e| img_err(format!("cannot decode JPEG: {e}")))? {
            return Ok(img);
        }
    }
    let decoded = image::load_from_memory(bytes).map_err(|e| img_err(format!("cannot decode: {e}")))?;
    to_rgb(decoded).map_err(img_err)
}

/// Decode a JPEG with libjpeg as PIL configures it. `Ok(None)` for colour spaces PIL converts
/// itself (CMYK, YCCK).
fn decode_jpeg_libjpeg(bytes: &[u8]) -> std::result::Result<Option<RgbImage>, String> {
    use mozjpeg::{ColorSpace, DctMethod};
    // libjpeg reports fatal errors by unwinding out of its error handler.
    let run = std::panic::catch_unwind(|| -> std::io::Result<Option<RgbImage>> {
        let mut d = mozjpeg::Decompress::new_mem(bytes)?;
        d.dct_method(DctMethod::IntegerSlow);
        d.do_fancy_upsampling(true);
        let (width, height) = d.size();
        let data = match d.color_space() {
            ColorSpace::JCS_GRAYSCALE => {
                let mut s = d.grayscale()?;
                let g: Vec<u8> = s.read_scanlines()?;
                s.finish()?;
                g.iter().flat_map(|&v| [v, v, v]).collect()
            }
            ColorSpace::JCS_YCbCr | ColorSpace::JCS_RGB => {
                let mut s = d.rgb()?;
                let px: Vec<[u8; 3]> = s.read_scanlines()?;
                s.finish()?;
                px.into_iter().flatten().collect()
            }
            _ => return Ok(None),
        };
        Ok(Some(RgbImage { width, height, data }))
    });
    match run {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libjpeg error".into())),
    }
}

/// HF `convert_to_rgb` on a decoded image.
fn to_rgb(img: DynamicImage) -> std::result::Result<RgbImage, String> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => composite_on_white(b.as_raw(), 4, |p| (p[0], p[1], p[2], p[3])),
        DynamicImage::ImageLuma8(b) => b.as_raw().iter().flat_map(|&g| [g, g, g]).collect(),
        DynamicImage::ImageLumaA8(b) => composite_on_white(b.as_raw(), 2, |p| (p[0], p[0], p[0], p[1])),
        DynamicImage::ImageRgb16(b) => b.as_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(b) => {
            let hi: Vec<u8> = b.as_raw().iter().map(|&v| (v >> 8) as u8).collect();
            composite_on_white(&hi, 4, |p| (p[0], p[1], p[2], p[3]))
        }
        DynamicImage::ImageLuma16(b) => {
            b.as_raw().iter().flat_map(|&v| [v.min(255) as u8; 3]).collect()
        }
        DynamicImage::ImageLumaA16(b) => {
            let hi: Vec<u8> = b.as_raw().iter().map(|&v| (v >> 8) as u8).collect();
            composite_on_white(&hi, 2, |p| (p[0], p[0], p[0], p[1]))
        }
        other => return Err(format!("unsupported pixel format {:?}", other.color())),
    };
    Ok(RgbImage { width, height, data })
}

/// `Image.alpha_composite(white, img).convert("RGB")`; `px` maps one source pixel of `step`
/// bytes to (r, g, b, a).
fn composite_on_white(src: &[u8], step: usize, px: impl Fn(&[u8]) -> (u8, u8, u8, u8)) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() / step * 3);
    for p in src.chunks_exact(step) {
        let (r, g, b, a) = px(p);
        out.extend_from_slice(&[over_white(r, a), over_white(g, a), over_white(b, a)]);
    }
    out
}

/// One channel of Pillow's `ImagingAlphaComposite` with an opaque white destination:
/// round(c * a / 255 + 255 - a) in its integer form (checked against Pillow for all 65536 pairs).
#[inline]
pub(crate) fn over_white(c: u8, a: u8) -> u8 {
    let (c, a) = (c as u32, a as u32);
    let v = c * a + 255 * (255 - a) + 128;
    ((v + (v >> 8)) >> 8) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_white_limits() {
        for c in 0..=255u8 {
            assert_eq!(over_white(c, 255), c);
            assert_eq!(over_white(c, 0), 255);
        }
        assert_eq!(over_white(0, 128), 127);
    }
}
