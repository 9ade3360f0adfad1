//! The world's rasteriser: shapes as inside-tests, drawn with 4x4 supersampling (anti-aliased
//! edges) over a textured background. Pure arithmetic on `RgbImage`, so the pixels depend on the
//! seed only.

use crate::image::RgbImage;
use crate::rng::Rng;

use super::scene::Shape;

/// Even-odd point-in-polygon test.
fn in_polygon(px: f64, py: f64, pts: &[(f64, f64)]) -> bool {
    let mut inside = false;
    let mut j = pts.len() - 1;
    for i in 0..pts.len() {
        let (xi, yi) = pts[i];
        let (xj, yj) = pts[j];
        if (yi > py) != (yj > py) && px < (xj - xi) * (py - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// The vertices of a regular polygon (or a star when `inner` is set) of radius `r` around 0.
fn polygon(n: usize, r: f64, inner: Option<f64>, phase: f64) -> Vec<(f64, f64)> {
    let steps = if inner.is_some() { 2 * n } else { n };
    (0..steps)
        .map(|k| {
            let a = phase + std::f64::consts::TAU * k as f64 / steps as f64;
            let rad = match inner {
                Some(ir) if k % 2 == 1 => ir,
                _ => r,
            };
            (rad * a.cos(), rad * a.sin())
        })
        .collect()
}

/// Whether the offset (dx, dy) from a shape's centre is inside a shape of radius `r`.
pub fn inside(shape: Shape, dx: f64, dy: f64, r: f64) -> bool {
    let up = -std::f64::consts::FRAC_PI_2;
    match shape {
        Shape::Circle => dx * dx + dy * dy <= r * r,
        Shape::Ring => {
            let d2 = dx * dx + dy * dy;
            d2 <= r * r && d2 >= (0.55 * r) * (0.55 * r)
        }
        Shape::Square => dx.abs() <= 0.8 * r && dy.abs() <= 0.8 * r,
        Shape::Diamond => dx.abs() / (0.8 * r) + dy.abs() / r <= 1.0,
        Shape::Cross => (dx.abs() <= 0.3 * r && dy.abs() <= r) || (dy.abs() <= 0.3 * r && dx.abs() <= r),
        Shape::Triangle => in_polygon(dx, dy - 0.15 * r, &polygon(3, 1.1 * r, None, up)),
        Shape::Star => in_polygon(dx, dy, &polygon(5, 1.1 * r, Some(0.45 * r), up)),
        Shape::Moon => dx * dx + dy * dy <= r * r && (dx - 0.6 * r).powi(2) + (dy + 0.25 * r).powi(2) > (0.6 * r) * (0.6 * r),
    }
}

/// A background of colour `base`: a linear gradient in a random direction plus per-pixel noise.
pub fn background(size: usize, base: [u8; 3], rng: &mut Rng) -> RgbImage {
    let angle = rng.uniform() * std::f64::consts::TAU;
    let (gx, gy) = (angle.cos(), angle.sin());
    let amp = 10.0 + 30.0 * rng.uniform();
    let mut data = Vec::with_capacity(size * size * 3);
    for y in 0..size {
        for x in 0..size {
            let t = ((x as f64 / size as f64 - 0.5) * gx + (y as f64 / size as f64 - 0.5) * gy) * amp;
            let noise = rng.below(13) as f64 - 6.0;
            for c in base {
                data.push((c as f64 + t + noise).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    RgbImage { width: size, height: size, data }
}

/// Draw a filled shape of radius `r` at (cx, cy) in `colour`, anti-aliased by 4x4 supersampling.
pub fn draw(img: &mut RgbImage, shape: Shape, cx: f64, cy: f64, r: f64, colour: [u8; 3]) {
    const S: usize = 4;
    let (w, h) = (img.width as i64, img.height as i64);
    let y0 = ((cy - 1.2 * r).floor() as i64).max(0);
    let y1 = ((cy + 1.2 * r).ceil() as i64).min(h - 1);
    let x0 = ((cx - 1.2 * r).floor() as i64).max(0);
    let x1 = ((cx + 1.2 * r).ceil() as i64).min(w - 1);
    for y in y0..=y1 {
        for x in x0..=x1 {
            let mut hits = 0;
            for sy in 0..S {
                for sx in 0..S {
                    let px = x as f64 + (sx as f64 + 0.5) / S as f64;
                    let py = y as f64 + (sy as f64 + 0.5) / S as f64;
                    hits += inside(shape, px - cx, py - cy, r) as usize;
                }
            }
            if hits == 0 {
                continue;
            }
            let a = hits as f64 / (S * S) as f64;
            let i = (y as usize * img.width + x as usize) * 3;
            for (px, &c) in img.data[i..i + 3].iter_mut().zip(&colour) {
                let old = *px as f64;
                *px = (old + a * (c as f64 - old)).round() as u8;
            }
        }
    }
}

/// Encode as PNG (the `image` crate's encoder: the same bytes for the same pixels).
pub fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    let enc = image::codecs::png::PngEncoder::new(&mut out);
    image::ImageEncoder::write_image(enc, &img.data, img.width as u32, img.height as u32, image::ExtendedColorType::Rgb8).expect("PNG encoding into memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_differ_and_fill_their_centres() {
        let all = Shape::ALL;
        for &s in &all {
            // The ring is hollow; every other shape covers its centre.
            assert_eq!(inside(s, 0.0, 0.0, 10.0), s != Shape::Ring, "{s:?}");
            assert!(!inside(s, 12.0, 12.0, 10.0), "{s:?} reaches the corner");
        }
        // Corners: the square has them, the diamond, circle and ring do not.
        assert!(inside(Shape::Square, 6.0, 6.0, 10.0));
        for s in [Shape::Diamond, Shape::Circle, Shape::Ring] {
            assert!(!inside(s, 7.5, 7.5, 10.0), "{s:?}");
        }
        // Masks on a grid: no two shapes have the same one.
        let mask = |s: Shape| (0..400).map(|k| inside(s, (k % 20) as f64 - 9.5, (k / 20) as f64 - 9.5, 9.0)).collect::<Vec<_>>();
        for (i, &a) in all.iter().enumerate() {
            for &b in &all[i + 1..] {
                assert_ne!(mask(a), mask(b), "{a:?} and {b:?}");
            }
        }
    }

    #[test]
    fn draw_paints_inside_only() {
        let mut img = RgbImage { width: 32, height: 32, data: vec![0; 32 * 32 * 3] };
        draw(&mut img, Shape::Square, 16.0, 16.0, 8.0, [200, 100, 50]);
        assert_eq!(&img.data[(16 * 32 + 16) * 3..][..3], &[200, 100, 50]);
        assert_eq!(&img.data[..3], &[0, 0, 0]);
    }
}
