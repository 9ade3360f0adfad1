//! `resize_pil`: Pillow's `Image.resize(size, resample)` for 8-bit RGB images, bit for bit.
//!
//! Images are HWC uint8 (`RgbImage`, 3 channels). Pillow (src/libImaging/Resample.c) resamples
//! with a separable convolution: for each output column (then row) it precomputes filter weights
//! over a window of input pixels, the filter's support widened by the downscale factor; the
//! weights are normalised to sum 1 in f64, then turned into fixed-point integers with
//! `PRECISION_BITS = 32 - 8 - 2`. Each pass accumulates `pixel * weight` in i32 starting from
//! half an output unit, shifts right and clamps to 0..=255. The intermediate image between the
//! two passes is uint8, so the pass order changes results (by up to a few levels):
//! - Pillow <= 12.x always runs the horizontal pass first (only on the rows the vertical pass
//!   will read);
//! - Pillow >= 13.0 runs the vertical pass first when the height shrinks by more than twice as
//!   many pixels as the width: `(H - h) > 0 && (H - h) > 2 * (W - w)`.
//!
//! `resize_pil` follows Pillow 13 (the Pillow of the reference transformers environment);
//! `resize_pil_compat` picks either. A pass whose dimension is unchanged is skipped, and an
//! unchanged size is a plain copy (Pillow's crop shortcut).

use rayon::prelude::*;

use super::types::RgbImage;

/// PIL resampling filter ids (`PIL.Image.Resampling`), as stored in `resample`.
pub mod resample {
    pub const NEAREST: u32 = 0;
    pub const LANCZOS: u32 = 1;
    pub const BILINEAR: u32 = 2;
    pub const BICUBIC: u32 = 3;
    pub const BOX: u32 = 4;
    pub const HAMMING: u32 = 5;
}

const PRECISION_BITS: u32 = 32 - 8 - 2;
const CHANNELS: usize = 3;

/// Below this many output values a pass runs on one thread (rayon's overhead would dominate).
const PARALLEL_MIN_OUTPUTS: usize = 1 << 16;

/// Ok when `resample` is a filter `resize_pil` implements; else a message for a config error.
pub fn check_resample(r: u32) -> std::result::Result<(), String> {
    use resample::*;
    match r {
        LANCZOS | BILINEAR | BICUBIC | BOX | HAMMING => Ok(()),
        NEAREST => Err("resample 0 (nearest) is not supported; use 1-5".into()),
        _ => Err(format!(
            "unknown PIL resampling filter {r}; \
             supported: 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming"
        )),
    }
}

/// A PIL filter: its kernel and support radius (in input pixels at scale 1).
#[derive(Clone, Copy)]
struct Filter {
    kernel: fn(f64) -> f64,
    support: f64,
}

fn filter_for(resample: u32) -> Filter {
    match resample {
        resample::BOX => Filter { kernel: box_kernel, support: 0.5 },
        resample::BILINEAR => Filter { kernel: bilinear_kernel, support: 1.0 },
        resample::HAMMING => Filter { kernel: hamming_kernel, support: 1.0 },
        resample::BICUBIC => Filter { kernel: bicubic_kernel, support: 2.0 },
        resample::LANCZOS => Filter { kernel: lanczos_kernel, support: 3.0 },
        r => panic!("resize_pil: unsupported resample {r} ({})", check_resample(r).unwrap_err()),
    }
}

fn box_kernel(x: f64) -> f64 {
    if x > -0.5 && x <= 0.5 {
        1.0
    } else {
        0.0
    }
}

fn bilinear_kernel(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn hamming_kernel(x: f64) -> f64 {
    let x = x.abs();
    if x == 0.0 {
        return 1.0;
    }
    if x >= 1.0 {
        return 0.0;
    }
    let x = x * std::f64::consts::PI;
    // Pillow writes the window constants as C float literals (0.54f, 0.46f).
    x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
}

/// Keys' cubic convolution with a = -0.5, evaluated in Pillow's operation order.
fn bicubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

fn lanczos_kernel(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Fixed-point weights of one resampling pass: output `i` reads input `start[i]..start[i]+len[i]`
/// with weights `weights[i * ksize..][..len[i]]`.
struct Coeffs {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>,
}

impl Coeffs {
    /// Pillow's `precompute_coeffs` (box = the whole input) followed by `normalize_coeffs_8bpc`.
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
        // Pillow computes the box extent `in1 - in0` in f32; exact for any real image size.
        let scale = (in_size as f32) as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;

        let mut start = Vec::with_capacity(out_size);
        let mut len = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut w = vec![0f64; ksize];
        for (xx, k_out) in weights.chunks_exact_mut(ksize).enumerate() {
            // Pillow adds the box start in0 (0 here). C's (int) cast truncates toward zero;
            // negative window starts clamp to 0 either way.
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let n = xmax.max(0) as usize;
            let mut total = 0.0;
            for (x, wx) in w[..n].iter_mut().enumerate() {
                *wx = (filter.kernel)(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                total += *wx;
            }
            for (k, &wx) in k_out.iter_mut().zip(&w[..n]) {
                let wx = if total != 0.0 { wx / total } else { wx };
                *k = to_fixed(wx);
            }
            start.push(xmin as usize);
            len.push(n);
        }
        Coeffs { ksize, start, len, weights }
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        (self.start[i], &self.weights[i * self.ksize..i * self.ksize + self.len[i]])
    }
}

/// `normalize_coeffs_8bpc`: round half away from zero, then truncate to int.
fn to_fixed(w: f64) -> i32 {
    let scaled = w * (1u32 << PRECISION_BITS) as f64;
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// `clip8`: drop the fraction bits and clamp to a byte.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over input rows `row0..row0 + rows`: out is `rows x out_w` RGB.
fn resample_horizontal(
    img: &RgbImage,
    row0: usize,
    rows: usize,
    c: &Coeffs,
    out_w: usize,
) -> Vec<u8> {
    let in_stride = img.width * CHANNELS;
    let out_stride = out_w * CHANNELS;
    let mut out = vec![0u8; rows * out_stride];
    let do_row = |(y, out_row): (usize, &mut [u8])| {
        let in_row = &img.data[(row0 + y) * in_stride..(row0 + y + 1) * in_stride];
        for xx in 0..out_w {
            let (x0, k) = c.taps(xx);
            let mut acc = [ROUNDING; CHANNELS];
            for (j, &kj) in k.iter().enumerate() {
                let px = &in_row[(x0 + j) * CHANNELS..(x0 + j + 1) * CHANNELS];
                for ch in 0..CHANNELS {
                    acc[ch] += px[ch] as i32 * kj;
                }
            }
            for ch in 0..CHANNELS {
                out_row[xx * CHANNELS + ch] = clip8(acc[ch]);
            }
        }
    };
    if out.len() >= PARALLEL_MIN_OUTPUTS {
        out.par_chunks_mut(out_stride).enumerate().for_each(do_row);
    } else {
        out.chunks_mut(out_stride).enumerate().for_each(do_row);
    }
    out
}

/// Vertical pass: `src` is `width` wide; output row `yy` reads rows `c.start[yy] - row0 ..`.
fn resample_vertical(src: &[u8], width: usize, row0: usize, c: &Coeffs, out_h: usize) -> Vec<u8> {
    let stride = width * CHANNELS;
    let mut out = vec![0u8; out_h * stride];
    let do_row = |(yy, out_row): (usize, &mut [u8])| {
        let (y0, k) = c.taps(yy);
        let y0 = y0 - row0;
        for (i, o) in out_row.iter_mut().enumerate() {
            let mut acc = ROUNDING;
            for (j, &kj) in k.iter().enumerate() {
                acc += src[(y0 + j) * stride + i] as i32 * kj;
            }
            *o = clip8(acc);
        }
    };
    if out.len() >= PARALLEL_MIN_OUTPUTS {
        out.par_chunks_mut(stride).enumerate().for_each(do_row);
    } else {
        out.chunks_mut(stride).enumerate().for_each(do_row);
    }
    out
}

/// Which Pillow release's pass order to reproduce (the only 8-bit resize difference between them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PillowCompat {
    /// Pillow >= 13.0: vertical pass first when the height shrinks much more than the width.
    #[default]
    Pillow13,
    /// Pillow <= 12.x: horizontal pass always first.
    Pillow12,
}

impl PillowCompat {
    /// Parse a Pillow version string such as "12.0.0" or "13.0.0".
    pub fn from_version(v: &str) -> Option<Self> {
        let major: u32 = v.split('.').next()?.trim().parse().ok()?;
        Some(if major >= 13 { PillowCompat::Pillow13 } else { PillowCompat::Pillow12 })
    }

    fn vertical_first(self, in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
        let (dw, dh) = (in_w as i64 - out_w as i64, in_h as i64 - out_h as i64);
        self == PillowCompat::Pillow13 && dh > 0 && dh > dw * 2
    }
}

/// Pillow's `Image.resize((width, height), resample)` on an RGB image, as Pillow >= 13 does it.
///
/// `resample` is a PIL filter id: 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming.
/// Panics on another filter id or a zero output size (configs are validated before this).
pub fn resize_pil(img: &RgbImage, width: usize, height: usize, resample: u32) -> RgbImage {
    resize_pil_compat(img, width, height, resample, PillowCompat::default())
}

/// `resize_pil` with the pass order of the given Pillow release.
pub fn resize_pil_compat(
    img: &RgbImage,
    width: usize,
    height: usize,
    resample: u32,
    compat: PillowCompat,
) -> RgbImage {
    assert!(width > 0 && height > 0, "resize_pil: output size {width}x{height} must be positive");
    assert_eq!(
        img.data.len(),
        img.width * img.height * CHANNELS,
        "resize_pil: bad RgbImage buffer"
    );
    if width == img.width && height == img.height {
        return img.clone();
    }
    let filter = filter_for(resample);
    let need_h = width != img.width;
    let need_v = height != img.height;
    let horizontal = |src: &RgbImage, row0: usize, rows: usize| {
        resample_horizontal(src, row0, rows, &Coeffs::new(img.width, width, filter), width)
    };

    if !need_v {
        let data = horizontal(img, 0, img.height);
        return RgbImage { width, height, data };
    }
    let vert = Coeffs::new(img.height, height, filter);
    if !need_h {
        let data = resample_vertical(&img.data, img.width, 0, &vert, height);
        return RgbImage { width, height, data };
    }
    if compat.vertical_first(img.width, img.height, width, height) {
        let tmp = RgbImage {
            width: img.width,
            height,
            data: resample_vertical(&img.data, img.width, 0, &vert, height),
        };
        let data = horizontal(&tmp, 0, height);
        return RgbImage { width, height, data };
    }
    // Horizontal first, only on the input rows the vertical pass reads.
    let row_first = vert.start[0];
    let row_last = vert.start[height - 1] + vert.len[height - 1];
    let tmp = horizontal(img, row_first, row_last - row_first);
    let data = resample_vertical(&tmp, width, row_first, &vert, height);
    RgbImage { width, height, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_about_one() {
        for (i, o) in [(200, 84), (84, 200), (7, 3), (3, 7), (336, 336)] {
            for r in [1, 2, 3, 4, 5] {
                let c = Coeffs::new(i, o, filter_for(r));
                for xx in 0..o {
                    let s: i64 = c.taps(xx).1.iter().map(|&k| k as i64).sum();
                    assert!(
                        (s - (1 << PRECISION_BITS)).abs() <= c.len[xx] as i64,
                        "{i}->{o} r{r} x{xx}: {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage { width: 13, height: 7, data: [10u8, 200, 77].repeat(13 * 7) };
        for (w, h) in [(5, 3), (29, 17), (13, 20), (4, 7)] {
            let out = resize_pil(&img, w, h, 3);
            assert!(out.data.chunks(3).all(|p| p == [10, 200, 77]), "{w}x{h}");
        }
    }
}
