//! The uint8 image operations of HF's slow CLIP processor (`transformers.image_transforms`) and
//! the final rescale/normalise into a float tensor.
//!
//! Images here are `RgbImage` (HWC uint8); the output tensor is NCHW f32, [N, 3, H, W]. Every
//! step before `to_tensor` stays in uint8 exactly like HF, which round-trips numpy -> PIL -> numpy
//! around each resize.

use super::resize::resize_pil_compat;
use super::config::ImageProcessorConfig;
use super::types::RgbImage;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// HF `get_resize_output_image_size(size=shortest_edge, default_to_square=False)`: the short
/// side becomes `shortest_edge`, the long side `int(shortest_edge * long / short)`. (h, w).
pub fn shortest_edge_size(orig_hw: (usize, usize), shortest_edge: usize) -> (usize, usize) {
    let (h, w) = orig_hw;
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    // Python: int(size * long / short), a float division truncated toward zero.
    let new_long = ((shortest_edge * long) as f64 / short as f64) as usize;
    if w <= h {
        (new_long, shortest_edge)
    } else {
        (shortest_edge, new_long)
    }
}

/// HF `resize` with the config's `size`: shortest-edge (aspect kept) or a fixed square.
pub fn resize_to_size(img: &RgbImage, cfg: &ImageProcessorConfig) -> RgbImage {
    let (h, w) = if cfg.resize_to_square {
        (cfg.shortest_edge, cfg.shortest_edge)
    } else {
        shortest_edge_size((img.height, img.width), cfg.shortest_edge)
    };
    resize_pil_compat(img, w, h, cfg.resample, cfg.pillow_compat)
}

/// Copy the window rows `top..top+h`, columns `left..left+w` (clipped to the image).
pub fn crop(img: &RgbImage, top: usize, left: usize, h: usize, w: usize) -> RgbImage {
    let h = h.min(img.height.saturating_sub(top));
    let w = w.min(img.width.saturating_sub(left));
    let mut data = Vec::with_capacity(h * w * 3);
    for y in top..top + h {
        let row = (y * img.width + left) * 3;
        data.extend_from_slice(&img.data[row..row + w * 3]);
    }
    RgbImage { width: w, height: h, data }
}

/// Place `img` at (top, left) on a zero (black) canvas of `h x w`; parts outside are dropped.
fn paste_on_zeros(img: &RgbImage, h: usize, w: usize, top: usize, left: usize) -> RgbImage {
    let mut data = vec![0u8; h * w * 3];
    let rows = img.height.min(h.saturating_sub(top));
    let cols = img.width.min(w.saturating_sub(left));
    for y in 0..rows {
        let src = &img.data[y * img.width * 3..][..cols * 3];
        data[((top + y) * w + left) * 3..][..cols * 3].copy_from_slice(src);
    }
    RgbImage { width: w, height: h, data }
}

/// HF `center_crop`: top = (H - crop_h) // 2, left = (W - crop_w) // 2 (floor division); an image
/// smaller than the crop is first zero-padded to at least the crop size with the image placed at
/// ceil(pad / 2), and the crop window shifted by the same amount.
pub fn center_crop(img: &RgbImage, crop_h: usize, crop_w: usize) -> RgbImage {
    let (h, w) = (img.height as i64, img.width as i64);
    let (ch, cw) = (crop_h as i64, crop_w as i64);
    let top = (h - ch).div_euclid(2);
    let left = (w - cw).div_euclid(2);
    if top >= 0 && left >= 0 && top + ch <= h && left + cw <= w {
        return crop(img, top as usize, left as usize, crop_h, crop_w);
    }
    let (nh, nw) = (ch.max(h), cw.max(w));
    let top_pad = (nh - h + 1) / 2; // ceil((nh - h) / 2)
    let left_pad = (nw - w + 1) / 2;
    let padded = paste_on_zeros(img, nh as usize, nw as usize, top_pad as usize, left_pad as usize);
    let (t, l) = (top + top_pad, left + left_pad);
    let (y0, x0) = (t.max(0), l.max(0));
    let (y1, x1) = ((t + ch).min(nh), (l + cw).min(nw));
    crop(&padded, y0 as usize, x0 as usize, (y1 - y0) as usize, (x1 - x0) as usize)
}

/// LLaVA-NeXT `_pad_for_patching`: centre `img` on a zero canvas of `target_hw`, the extra pixel
/// of an odd padding going to the bottom / right (divmod by 2).
pub fn pad_to_center(img: &RgbImage, target_hw: (usize, usize)) -> RgbImage {
    let (th, tw) = target_hw;
    let top = th.saturating_sub(img.height) / 2;
    let left = tw.saturating_sub(img.width) / 2;
    paste_on_zeros(img, th, tw, top, left)
}

/// The CLIP pipeline's uint8 part: resize (if `do_resize`), then center crop (if `do_center_crop`).
pub fn clip_resize_crop(img: &RgbImage, cfg: &ImageProcessorConfig) -> RgbImage {
    let resized = if cfg.do_resize { resize_to_size(img, cfg) } else { img.clone() };
    if cfg.do_center_crop {
        center_crop(&resized, cfg.crop_height, cfg.crop_width)
    } else {
        resized
    }
}

/// Stack uint8 images into an [N, 3, H, W] f32 tensor, applying HF's `rescale` (u8 * factor in
/// f64, then cast to f32) and `normalize` ((x - mean) / std in f32) when enabled.
pub fn to_tensor(images: &[RgbImage], cfg: &ImageProcessorConfig) -> Result<Tensor> {
    let first = images.first().ok_or_else(|| Error::Input("no image to convert".into()))?;
    let (h, w) = (first.height, first.width);
    if let Some(bad) = images.iter().find(|im| (im.height, im.width) != (h, w)) {
        return Err(Error::shape(
            "image::to_tensor",
            format!("images differ in size: {}x{} vs {}x{} (h x w)", h, w, bad.height, bad.width),
        ));
    }
    let lut = value_table(cfg);
    let plane = h * w;
    let mut data = vec![0f32; images.len() * 3 * plane];
    for (img, out) in images.iter().zip(data.chunks_exact_mut(3 * plane)) {
        for (i, px) in img.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = lut[c][px[c] as usize];
            }
        }
    }
    Tensor::new(data, &[images.len(), 3, h, w])
}

/// The f32 value of each byte per channel: rescale and normalise depend only on (channel, byte).
fn value_table(cfg: &ImageProcessorConfig) -> [[f32; 256]; 3] {
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, out) in table.iter_mut().enumerate() {
            let mut x =
                if cfg.do_rescale { (v as f64 * cfg.rescale_factor) as f32 } else { v as f32 };
            if cfg.do_normalize {
                x = (x - cfg.image_mean[c]) / cfg.image_std[c];
            }
            *out = x;
        }
    }
    lut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> RgbImage {
        RgbImage {
            width: w,
            height: h,
            data: (0..w * h * 3).map(|i| (i % 251) as u8 + 1).collect(),
        }
    }

    #[test]
    fn shortest_edge_matches_hf_rule() {
        assert_eq!(shortest_edge_size((120, 200), 336), (336, 560));
        assert_eq!(shortest_edge_size((250, 90), 336), (933, 336)); // int(336*250/90) = 933
        assert_eq!(shortest_edge_size((150, 150), 84), (84, 84));
        assert_eq!(shortest_edge_size((480, 640), 336), (336, 448));
    }

    #[test]
    fn center_crop_inside_and_padded() {
        let img = ramp(5, 4);
        let c = center_crop(&img, 2, 3);
        assert_eq!((c.height, c.width), (2, 3));
        assert_eq!(&c.data[..3], &img.data[(5 + 1) * 3..][..3]);
        // Larger than the image: 4x5 inside 7x8, image at top ceil(3/2)=2, left ceil(3/2)=2.
        let p = center_crop(&img, 7, 8);
        assert_eq!((p.height, p.width), (7, 8));
        assert_eq!(&p.data[(2 * 8 + 2) * 3..][..3], &img.data[..3]);
        assert_eq!(&p.data[..3], &[0, 0, 0]);
    }

    #[test]
    fn pad_puts_odd_pixel_after() {
        let img = ramp(3, 2);
        let p = pad_to_center(&img, (5, 6));
        // top = (5-2)//2 = 1, left = (6-3)//2 = 1
        assert_eq!(&p.data[(6 + 1) * 3..][..3], &img.data[..3]);
    }
}
