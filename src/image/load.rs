//! Decoding image files into `RgbImage` (HWC uint8, 3 channels) the way HF sees them: what
//! `PIL.Image.open(path)` yields, passed through transformers' `convert_to_rgb`.
//!
//! JPEGs are decoded by libjpeg itself (the `mozjpeg` crate, built from source with PIL's settings:
//! accurate integer IDCT, fancy upsampling), so their pixels are the bytes PIL gets from
//! libjpeg-turbo; the `image` crate's own JPEG decoder differs by up to 7 levels. PNG is lossless.
//! `convert_to_rgb` (transformers 5, PIL input): an image with an alpha band or a `transparency`
//! entry is converted to RGBA and alpha-composited onto opaque white (`Image.alpha_composite`),
//! anything else goes through `Image.convert("RGB")` (grey replicated to R = G = B). The `image`
//! crate expands palettes and tRNS chunks into RGB(A) / grey+alpha, which matches PIL's
//! convert-then-composite. 16-bit PNGs follow PIL's modes: RGB(A)/LA keep the high byte, and
//! 16-bit grey (PIL "I;16") clamps to 0..=255 on conversion, as PIL does. No EXIF rotation is
//! applied (neither `Image.open` nor the HF processors apply one). A JPEG whose data ends early
//! (truncated, or no EOI marker) is an error, as in PIL ("image file is truncated"), not an image
//! padded with grey as libjpeg would make it.

use std::path::Path;

use image::DynamicImage;

use super::types::RgbImage;
use crate::error::{Error, Result};

/// Decode a JPEG or PNG file (format sniffed from the content) into RGB.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Image { path: path.into(), msg: format!("cannot read: {e}") })?;
    decode_image(&bytes, path)
}

/// Decode an in-memory JPEG or PNG; `name` labels errors (e.g. the file path or a URL).
///
/// JPEGs go through libjpeg (see the module doc); PNGs through the `image` crate.
pub fn decode_image(bytes: &[u8], name: &Path) -> Result<RgbImage> {
    let img_err = |msg: String| Error::Image { path: name.into(), msg };
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return decode_jpeg(bytes).map_err(|e| img_err(format!("cannot decode JPEG: {e}")));
    }
    let decoded = image::load_from_memory(bytes).map_err(|e| img_err(format!("cannot decode: {e}")))?;
    to_rgb(decoded, is_png_gray16(bytes)).map_err(img_err)
}

/// Decode a JPEG with libjpeg configured as PIL configures it, then convert as PIL's
/// `convert("RGB")` would: grey is replicated; CMYK (libjpeg turns YCCK into CMYK) goes through
/// PIL's `cmyk2rgb`, on inverted bytes when the file has an Adobe marker (PIL's "CMYK;I").
fn decode_jpeg(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    use mozjpeg::{ColorSpace, DctMethod};
    // libjpeg reports fatal errors by unwinding out of its error handler.
    let run = std::panic::catch_unwind(|| -> std::io::Result<RgbImage> {
        let mut d = mozjpeg::Decompress::with_err(jpeg_error_mgr()).with_markers(mozjpeg::ALL_MARKERS).from_mem(bytes)?;
        d.dct_method(DctMethod::IntegerSlow);
        d.do_fancy_upsampling(true);
        let (width, height) = d.size();
        let adobe = d.markers().any(|m| m.marker == mozjpeg::Marker::APP(14) && m.data.starts_with(b"Adobe"));
        let data = match d.color_space() {
            ColorSpace::JCS_GRAYSCALE => {
                let mut s = d.grayscale()?;
                let g: Vec<u8> = s.read_scanlines()?;
                s.finish()?;
                g.iter().flat_map(|&v| [v, v, v]).collect()
            }
            ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
                let mut s = d.to_colorspace(ColorSpace::JCS_CMYK)?;
                let px: Vec<[u8; 4]> = s.read_scanlines()?;
                s.finish()?;
                cmyk_to_rgb_pil(&px, adobe)
            }
            _ => {
                let mut s = d.rgb()?;
                let px: Vec<[u8; 3]> = s.read_scanlines()?;
                s.finish()?;
                px.into_iter().flatten().collect()
            }
        };
        Ok(RgbImage { width, height, data })
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

/// libjpeg's error manager for `decode_jpeg`: a fatal error unwinds with libjpeg's message (as the
/// mozjpeg crate's own manager does), and so does the warning that the data ended early
/// (`JWRN_JPEG_EOF`, also a missing EOI marker): libjpeg would pad the image with grey, but PIL
/// refuses such a file ("image file is truncated"), so the file is an error here too. Other
/// warnings are ignored, as PIL ignores them.
fn jpeg_error_mgr() -> mozjpeg_sys::jpeg_error_mgr {
    use mozjpeg_sys::{jpeg_common_struct, JWRN_JPEG_EOF};
    use std::os::raw::c_int;

    unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
        // SAFETY: libjpeg calls this with its valid error manager installed in `cinfo.err`.
        let msg = unsafe { libjpeg_message(cinfo) };
        std::panic::resume_unwind(Box::new(msg));
    }
    unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
        // SAFETY: as above.
        if level < 0 && unsafe { (*cinfo.err).msg_code } == JWRN_JPEG_EOF {
            std::panic::resume_unwind(Box::new("image file is truncated (premature end of JPEG data)".to_string()));
        }
    }
    unsafe fn libjpeg_message(cinfo: &mut jpeg_common_struct) -> String {
        let (format, code) = unsafe { ((*cinfo.err).format_message, (*cinfo.err).msg_code) };
        match format {
            Some(f) => {
                // SAFETY: libjpeg's format_message writes at most JMSG_LENGTH_MAX (80) bytes into
                // the buffer (the binding declares it `&[u8; 80]`, the C side takes `char *`).
                let f: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &mut [u8; 80]) = unsafe { std::mem::transmute(f) };
                let mut buf = [0u8; 80];
                unsafe { f(cinfo, &mut buf) };
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                format!("libjpeg: {}", String::from_utf8_lossy(&buf[..end]))
            }
            None => format!("libjpeg error {code}"),
        }
    }
    // SAFETY: `jpeg_std_error` fills every field of a zeroed manager with libjpeg's defaults.
    let mut err: mozjpeg_sys::jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { mozjpeg_sys::jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    err
}

/// Pillow's `cmyk2rgb` (Convert.c): channel = clip(nk - nk * c / 255) with nk = 255 - k and
/// Pillow's rounded MULDIV255; `inverted` reads the bytes as Adobe's inverted CMYK.
fn cmyk_to_rgb_pil(px: &[[u8; 4]], inverted: bool) -> Vec<u8> {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let mut out = Vec::with_capacity(px.len() * 3);
    for p in px {
        let v = |i: usize| if inverted { 255 - p[i] as i32 } else { p[i] as i32 };
        let nk = 255 - v(3);
        for i in 0..3 {
            out.push((nk - muldiv255(v(i), nk)).clamp(0, 255) as u8);
        }
    }
    out
}

/// A 16-bit greyscale PNG (colour type 0): PIL opens it as mode "I;16", whose conversion to
/// L/RGB clamps values to 255 (it does not scale), also when a tRNS chunk adds transparency.
fn is_png_gray16(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
        && bytes.len() > 25
        && &bytes[12..16] == b"IHDR"
        && bytes[24] == 16
        && bytes[25] == 0
}

/// HF `convert_to_rgb` on a decoded image (`gray16`: see `is_png_gray16`).
fn to_rgb(img: DynamicImage, gray16: bool) -> std::result::Result<RgbImage, String> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let hi = |v: u16| (v >> 8) as u8;
    let data = match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => {
            composite_on_white(b.as_raw(), 4, |p| (p[0], p[1], p[2], p[3]))
        }
        DynamicImage::ImageLuma8(b) => b.as_raw().iter().flat_map(|&g| [g, g, g]).collect(),
        DynamicImage::ImageLumaA8(b) => {
            composite_on_white(b.as_raw(), 2, |p| (p[0], p[0], p[0], p[1]))
        }
        // PIL reads 16-bit RGB(A) / LA PNGs keeping the high byte of each sample.
        DynamicImage::ImageRgb16(b) => b.as_raw().iter().map(|&v| hi(v)).collect(),
        DynamicImage::ImageRgba16(b) => {
            let bytes: Vec<u8> = b.as_raw().iter().map(|&v| hi(v)).collect();
            composite_on_white(&bytes, 4, |p| (p[0], p[1], p[2], p[3]))
        }
        DynamicImage::ImageLuma16(b) => {
            b.as_raw().iter().flat_map(|&v| [v.min(255) as u8; 3]).collect()
        }
        DynamicImage::ImageLumaA16(b) => {
            // Grey + tRNS of a colour-type-0 PNG ("I;16" + transparency) clamps the grey; a true
            // grey+alpha PNG ("LA") keeps high bytes.
            let grey = |v: u16| if gray16 { v.min(255) as u8 } else { hi(v) };
            let bytes: Vec<u8> =
                b.as_raw().chunks_exact(2).flat_map(|p| [grey(p[0]), hi(p[1])]).collect();
            composite_on_white(&bytes, 2, |p| (p[0], p[0], p[0], p[1]))
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
