//! LLaVA-NeXT "AnyRes" preprocessing (HF `LlavaNextImageProcessor`, slow/PIL path).
//!
//! For an image of original size (h, w):
//! 1. pick the best pinpoint (H, W) (`select_best_resolution`);
//! 2. resize the image to fit inside (H, W) keeping its aspect ratio (`patch_output_size`:
//!    the constrained side takes the target, the other `min(ceil(side * scale), target)`);
//! 3. pad it to (H, W), centred, with zeros (uint8 0, i.e. black before normalisation);
//! 4. cut the padded image into tiles of crop_height x crop_height, row-major (left to right,
//!    then top to bottom): rows = H / tile, cols = W / tile;
//! 5. the base image: the original resized straight to (shortest_edge, shortest_edge), ignoring
//!    the aspect ratio;
//! 6. every image of [base, tile_0, tile_1, ...] then goes through the CLIP steps (resize to the
//!    shortest edge, center crop, rescale, normalise).
//!
//! Output: pixel_values [1 + rows * cols, 3, crop_h, crop_w], base first.

use super::resize::resize_pil_compat;
use super::transforms::{clip_resize_crop, crop, pad_to_center, to_tensor};
use super::config::ImageProcessorConfig;
use super::types::{ProcessedImage, RgbImage};
use crate::error::{Error, Result};

/// HF `select_best_resolution`: among (height, width) candidates, the one that keeps the most
/// original pixels when the image is scaled to fit it (`int` truncation of the scaled sides,
/// capped at the original pixel count); ties go to the candidate with the least wasted area.
/// The first candidate wins exact ties. Returns (height, width).
pub fn select_best_resolution(orig_hw: (usize, usize), pinpoints: &[[usize; 2]]) -> (usize, usize) {
    let (oh, ow) = (orig_hw.0 as f64, orig_hw.1 as f64);
    let orig_area = orig_hw.0 * orig_hw.1;
    let mut best = (pinpoints[0][0], pinpoints[0][1]);
    let mut max_effective = 0usize;
    let mut min_wasted = usize::MAX;
    for &[h, w] in pinpoints {
        let scale = (w as f64 / ow).min(h as f64 / oh);
        let dw = (ow * scale) as usize;
        let dh = (oh * scale) as usize;
        let effective = (dw * dh).min(orig_area);
        let wasted = w * h - effective;
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            max_effective = effective;
            min_wasted = wasted;
            best = (h, w);
        }
    }
    best
}

/// HF `get_patch_output_size`: the size (h, w) the image is resized to before padding to
/// `target_hw`.
pub fn patch_output_size(orig_hw: (usize, usize), target_hw: (usize, usize)) -> (usize, usize) {
    let (oh, ow) = orig_hw;
    let (th, tw) = target_hw;
    let scale_w = tw as f64 / ow as f64;
    let scale_h = th as f64 / oh as f64;
    if scale_w < scale_h {
        (((oh as f64 * scale_w).ceil() as usize).min(th), tw)
    } else {
        (th, ((ow as f64 * scale_h).ceil() as usize).min(tw))
    }
}

/// The tile grid (rows, cols) that AnyRes produces for an image of `orig_hw`, as HF's
/// `get_anyres_image_grid_shape`: best resolution divided by the tile size (floor).
pub fn anyres_grid_shape(
    orig_hw: (usize, usize),
    pinpoints: &[[usize; 2]],
    tile: usize,
) -> (usize, usize) {
    let (h, w) = select_best_resolution(orig_hw, pinpoints);
    (h / tile, w / tile)
}

/// HF `divide_to_patches`: tiles of `tile x tile` in row-major order; edge tiles are cut short
/// when the size is not a multiple of `tile`.
fn divide_to_tiles(img: &RgbImage, tile: usize) -> Vec<RgbImage> {
    let mut tiles = Vec::new();
    for top in (0..img.height).step_by(tile) {
        for left in (0..img.width).step_by(tile) {
            tiles.push(crop(img, top, left, tile, tile));
        }
    }
    tiles
}

/// The uint8 images LLaVA-NeXT feeds to the CLIP steps: [base, tiles...].
pub fn anyres_images(img: &RgbImage, cfg: &ImageProcessorConfig) -> Result<Vec<RgbImage>> {
    let pinpoints =
        cfg.image_grid_pinpoints.as_deref().filter(|p| !p.is_empty()).ok_or_else(|| {
            Error::Input("AnyRes preprocessing needs image_grid_pinpoints".into())
        })?;
    let orig_hw = (img.height, img.width);
    let best = select_best_resolution(orig_hw, pinpoints);
    let (nh, nw) = patch_output_size(orig_hw, best);
    let resized = resize_pil_compat(img, nw, nh, cfg.resample, cfg.pillow_compat);
    let padded = pad_to_center(&resized, best);
    // HF's patch size: crop_size.height (LLaVA configs always have a crop size).
    let tiles = divide_to_tiles(&padded, cfg.crop_height);

    // HF: size {"shortest_edge": s} (or {"height": s, "width": s}) -> a straight (s, s) resize.
    let base_side = cfg.shortest_edge;
    let base = resize_pil_compat(img, base_side, base_side, cfg.resample, cfg.pillow_compat);

    let mut out = Vec::with_capacity(1 + tiles.len());
    out.push(base);
    out.extend(tiles);
    Ok(out)
}

/// LLaVA-NeXT preprocessing: pixel_values [1 + tiles, 3, H, W] (base first), image_size the
/// original (height, width).
pub fn preprocess_anyres(img: &RgbImage, cfg: &ImageProcessorConfig) -> Result<ProcessedImage> {
    let images: Vec<RgbImage> =
        anyres_images(img, cfg)?.iter().map(|im| clip_resize_crop(im, cfg)).collect();
    Ok(ProcessedImage {
        pixel_values: to_tensor(&images, cfg)?,
        image_size: (img.height, img.width),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PP: [[usize; 2]; 5] = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];

    #[test]
    fn patch_output_size_examples() {
        // 120x200 into 336x672: scale_w = 3.36, scale_h = 2.8 -> height-bound, ceil(200*2.8) = 560
        assert_eq!(patch_output_size((120, 200), (336, 672)), (336, 560));
        assert_eq!(patch_output_size((250, 90), (1008, 336)), (934, 336));
    }

    #[test]
    fn grid_shape() {
        assert_eq!(anyres_grid_shape((120, 200), &PP, 336), (1, 2));
        assert_eq!(anyres_grid_shape((250, 90), &PP, 336), (1, 2)); // tie: first wins
        assert_eq!(anyres_grid_shape((150, 150), &PP, 336), (1, 2)); // small: all tie on area
    }
}
