//! PNG charts (plotters' bitmap backend, text in the embedded DejaVu Sans): grouped bars of metrics
//! per model, and panels of curves (training losses). `stic run` on the world draws one
//! (`run_world`).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};

static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const PALETTE: [RGBColor; 6] = [RGBColor(90, 90, 90), RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(255, 127, 14), RGBColor(148, 103, 189)];

/// Grouped bars: one group per metric, one bar per series (model), values in [0, 1].
pub struct Bars {
    pub title: String,
    pub metrics: Vec<String>,
    /// (series name, one value per metric)
    pub series: Vec<(String, Vec<f64>)>,
}

/// A panel of curves: (name, points) per curve.
pub struct Curves {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub curves: Vec<(String, Vec<(f64, f64)>)>,
}

fn font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).unwrap_or_else(|_| panic!("the embedded font does not parse"));
    });
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Input(format!("{}: drawing the chart: {e}", path.display()))
}

/// Draw `bars` over the full width and the `panels` side by side below it; write a PNG of
/// `width` x `height` pixels to `path` (atomically).
pub fn draw(path: &Path, width: u32, height: u32, bars: &Bars, panels: &[Curves]) -> Result<()> {
    font();
    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(path, e))?;
        let (top, bottom) = root.split_vertically(if panels.is_empty() { height } else { height * 11 / 20 });
        draw_bars(&top, bars).map_err(|e| err(path, e))?;
        if !panels.is_empty() {
            for (area, c) in bottom.split_evenly((1, panels.len())).iter().zip(panels) {
                draw_curves(area, c).map_err(|e| err(path, e))?;
            }
        }
        root.present().map_err(|e| err(path, e))?;
    }
    let img = image::RgbImage::from_raw(width, height, buf).expect("the buffer has width x height pixels");
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map_err(|e| err(path, e))?;
    crate::weights::write_atomic(path, &png)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_bars(area: &Area, b: &Bars) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let g = b.metrics.len().max(1);
    let n = b.series.len().max(1);
    let top = b.series.iter().flat_map(|(_, v)| v.iter().copied()).fold(1.0f64, f64::max) * 1.18;
    let mut chart = ChartBuilder::on(area)
        .caption(&b.title, ("sans-serif", 22))
        .margin(12)
        .y_label_area_size(44)
        .x_label_area_size(30)
        .build_cartesian_2d(0f64..g as f64, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .light_line_style(RGBColor(238, 238, 238))
        .y_desc("value")
        .label_style(("sans-serif", 14))
        .draw()?;
    let width = 0.8 / n as f64;
    for (si, (name, vals)) in b.series.iter().enumerate() {
        let colour = PALETTE[si % PALETTE.len()];
        chart
            .draw_series(vals.iter().enumerate().map(|(gi, &v)| {
                let x0 = gi as f64 + 0.1 + si as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.92, v)], colour.filled())
            }))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
        let label = TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        chart.draw_series(vals.iter().enumerate().map(|(gi, &v)| {
            let x = gi as f64 + 0.1 + si as f64 * width + width * 0.46;
            Text::new(format!("{v:.2}"), (x, v + top * 0.01), label.clone())
        }))?;
    }
    // The metric names under their groups, in the label area below the axis.
    let name_style = TextStyle::from(("sans-serif", 16).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (gi, m) in b.metrics.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(gi as f64 + 0.5, 0.0));
        area.draw(&Text::new(m.clone(), (px, py + 8), name_style.clone()))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .margin(30)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

fn draw_curves(area: &Area, c: &Curves) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let pts = c.curves.iter().flat_map(|(_, p)| p.iter());
    let (mut x1, mut y0, mut y1) = (1f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        x1 = x1.max(x);
        if y.is_finite() {
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(&c.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0f64..x1, (y0 - pad)..(y1 + pad))?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(238, 238, 238))
        .x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .label_style(("sans-serif", 13))
        .draw()?;
    for (i, (name, points)) in c.curves.iter().enumerate() {
        let colour = PALETTE[(i + 1) % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied().filter(|p| p.1.is_finite()), colour.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
    }
    if c.curves.len() > 1 {
        chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.9)).border_style(BLACK).label_font(("sans-serif", 13)).draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_a_png_of_the_size_asked_with_ink_in_every_panel() {
        let dir = std::env::temp_dir().join(format!("stic-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.png");
        let bars = Bars { title: "t".into(), metrics: vec!["a".into(), "b".into()], series: vec![("x".into(), vec![0.2, 0.9]), ("y".into(), vec![0.5, 0.1])] };
        let curve = |n: &str| Curves { title: n.into(), x_label: "step".into(), y_label: "loss".into(), curves: vec![("l".into(), (0..20).map(|i| (i as f64, 1.0 / (1.0 + i as f64))).collect())] };
        draw(&p, 800, 600, &bars, &[curve("one"), curve("two")]).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 600));
        // Every quadrant has non-white pixels (bars top, both curve panels below).
        for (x0, y0, x1, y1) in [(0, 0, 800, 300), (0, 340, 400, 600), (400, 340, 800, 600)] {
            let ink = (y0..y1).flat_map(|y| (x0..x1).map(move |x| (x, y))).filter(|&(x, y)| img.get_pixel(x, y).0 != [255, 255, 255]).count();
            assert!(ink > 500, "region {x0},{y0}-{x1},{y1}: {ink} inked pixels");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
