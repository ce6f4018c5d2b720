//! Small dependency-free PNG charts (line and scatter plots with axes, ticks and a legend),
//! drawn with the `image` crate and an 8x8 bitmap font.

use std::path::Path;

use crate::error::{Error, Result};
use image::{Rgb, RgbImage};

/// Series colours (colour-blind friendly, Okabe-Ito).
pub const PALETTE: [[u8; 3]; 7] = [
    [0, 114, 178],
    [213, 94, 0],
    [0, 158, 115],
    [204, 121, 167],
    [230, 159, 0],
    [86, 180, 233],
    [0, 0, 0],
];

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Joined points.
    Line,
    /// Separate dots.
    Points,
}

/// A named series of points.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
    /// Line or points.
    pub style: Style,
}

/// A chart.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The series.
    pub series: Vec<Series>,
}

const W: u32 = 900;
const H: u32 = 560;
const LEFT: i64 = 80;
const RIGHT: i64 = 220;
const TOP: i64 = 50;
const BOTTOM: i64 = 60;

impl Chart {
    /// Renders the chart.
    pub fn render(&self) -> Result<RgbImage> {
        let pts: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if pts.is_empty() {
            return Err(Error::Invalid(format!(
                "nothing to plot in {:?}",
                self.title
            )));
        }
        let (x0, x1) = nice_range(pts.iter().map(|p| p.0));
        let (y0, y1) = nice_range(pts.iter().map(|p| p.1));
        let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
        let (pw, ph) = (
            (W as i64 - LEFT - RIGHT) as f64,
            (H as i64 - TOP - BOTTOM) as f64,
        );
        let to_px = |x: f64, y: f64| {
            (
                LEFT + ((x - x0) / (x1 - x0) * pw).round() as i64,
                TOP + ph as i64 - ((y - y0) / (y1 - y0) * ph).round() as i64,
            )
        };
        let grey = Rgb([200, 200, 200]);
        let black = Rgb([0, 0, 0]);
        for i in 0..=5 {
            let fx = x0 + (x1 - x0) * i as f64 / 5.0;
            let fy = y0 + (y1 - y0) * i as f64 / 5.0;
            let (px, _) = to_px(fx, y0);
            let (_, py) = to_px(x0, fy);
            line(&mut img, (px, TOP), (px, TOP + ph as i64), grey, 1);
            line(&mut img, (LEFT, py), (LEFT + pw as i64, py), grey, 1);
            let lx = tick(fx);
            text(
                &mut img,
                px - 4 * lx.len() as i64,
                TOP + ph as i64 + 8,
                &lx,
                black,
            );
            let ly = tick(fy);
            text(&mut img, LEFT - 8 - 8 * ly.len() as i64, py - 4, &ly, black);
        }
        line(&mut img, (LEFT, TOP), (LEFT, TOP + ph as i64), black, 1);
        line(
            &mut img,
            (LEFT, TOP + ph as i64),
            (LEFT + pw as i64, TOP + ph as i64),
            black,
            1,
        );
        text(&mut img, LEFT, 18, &self.title, black);
        text(
            &mut img,
            LEFT + pw as i64 / 2 - 4 * self.x_label.len() as i64,
            H as i64 - 24,
            &self.x_label,
            black,
        );
        text(&mut img, 8, TOP - 20, &self.y_label, black);
        for (k, s) in self.series.iter().enumerate() {
            let c = Rgb(PALETTE[k % PALETTE.len()]);
            let px: Vec<(i64, i64)> = s
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| to_px(x, y))
                .collect();
            match s.style {
                Style::Line => {
                    for w in px.windows(2) {
                        line(&mut img, w[0], w[1], c, 2);
                    }
                    px.iter().for_each(|&p| dot(&mut img, p, 2, c));
                }
                Style::Points => px.iter().for_each(|&p| dot(&mut img, p, 3, c)),
            }
            let ly = TOP + 10 + 20 * k as i64;
            let lx = W as i64 - RIGHT + 16;
            line(&mut img, (lx, ly + 4), (lx + 20, ly + 4), c, 3);
            let name: String = s.name.chars().take(22).collect();
            text(&mut img, lx + 26, ly, &name, black);
        }
        Ok(img)
    }

    /// Renders and writes a PNG atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let img = self.render()?;
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::Invalid(format!("encoding a PNG: {e}")))?;
        crate::atomic::write(path, &bytes)
    }
}

/// A padded range that includes every value (never empty).
fn nice_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let span = (hi - lo).abs().max(1e-9 * hi.abs().max(1.0));
    (lo - 0.05 * span, hi + 0.05 * span)
}

fn tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 || a == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1e}")
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn dot(img: &mut RgbImage, (x, y): (i64, i64), r: i64, c: Rgb<u8>) {
    for dy in -r..=r {
        for dx in -r..=r {
            if dx * dx + dy * dy <= r * r {
                put(img, x + dx, y + dy, c);
            }
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>, width: i64) {
    let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
    for i in 0..=n {
        let x = x0 + (x1 - x0) * i / n;
        let y = y0 + (y1 - y0) * i / n;
        for d in 0..width {
            put(img, x, y + d, c);
            put(img, x + d, y, c);
        }
    }
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, c: Rgb<u8>) {
    for (i, ch) in s.chars().enumerate() {
        let glyph = font8x8::legacy::BASIC_LEGACY[(ch as usize).min(127)];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    put(img, x + 8 * i as i64 + col, y + row as i64, c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_draws_its_series() {
        let chart = Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                name: "a".into(),
                points: vec![(0.0, 0.0), (1.0, 1.0)],
                style: Style::Line,
            }],
        };
        let img = chart.render().unwrap();
        let blue = img.pixels().filter(|p| p.0 == PALETTE[0]).count();
        assert!(blue > 100, "series not drawn ({blue} pixels)");
        let empty = Chart {
            series: vec![],
            ..chart
        };
        assert!(empty.render().is_err());
    }
}
