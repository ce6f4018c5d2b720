//! Line and scatter charts as SVG (for the HTML report) and PNG (for READMEs), drawn by the
//! `plotters` crate with an embedded DejaVu Sans: round ticks, integer ticks on counted axes,
//! axes that start at zero where the quantity does, and a legend beside the plot.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

/// Series colours: Okabe-Ito's colour-blind friendly set, then grey and wine, so that a sweep's
/// ten settings get ten colours.
pub const PALETTE: [[u8; 3]; 10] = [
    [0, 114, 178],
    [213, 94, 0],
    [0, 158, 115],
    [204, 121, 167],
    [230, 159, 0],
    [86, 180, 233],
    [0, 0, 0],
    [200, 190, 40],
    [128, 128, 128],
    [136, 34, 85],
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
    /// Legend label: what the series is, in words.
    pub name: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
    /// Line or points.
    pub style: Style,
}

/// An axis.
#[derive(Clone, Debug, Default)]
pub struct Axis {
    /// What the axis measures.
    pub label: String,
    /// The quantity cannot be negative (a distance, a rate): the axis starts at 0.
    pub from_zero: bool,
    /// The quantity is counted (layers): ticks at whole numbers only.
    pub integer: bool,
}

impl Axis {
    /// A plain axis.
    pub fn new(label: &str) -> Self {
        Self {
            label: label.into(),
            ..Self::default()
        }
    }

    /// An axis starting at 0.
    pub fn from_zero(label: &str) -> Self {
        Self {
            from_zero: true,
            ..Self::new(label)
        }
    }

    /// An axis of whole numbers.
    pub fn integer(label: &str) -> Self {
        Self {
            integer: true,
            ..Self::new(label)
        }
    }
}

/// A chart.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// The horizontal axis.
    pub x: Axis,
    /// The vertical axis.
    pub y: Axis,
    /// The series.
    pub series: Vec<Series>,
}

const H: u32 = 560;
const PLOT_W: u32 = 720;
const FONT: &str = "sans-serif";

/// Registers the embedded font with plotters once per process.
fn font() -> Result<()> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let ok = *LOADED.get_or_init(|| {
        plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../vendor/fonts/DejaVuSans.ttf"),
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid("the embedded font did not load".into()))
    }
}

fn draw_err<E: std::fmt::Debug>(e: E) -> Error {
    Error::Invalid(format!("drawing a chart: {e:?}"))
}

impl Chart {
    /// The whole canvas: the plot and, to its right, a legend as wide as its longest label.
    fn size(&self) -> (u32, u32) {
        let longest = self
            .series
            .iter()
            .map(|s| s.name.chars().count())
            .max()
            .unwrap_or(0) as u32;
        (PLOT_W + 50 + (longest * 8).min(560), H)
    }

    /// The finite points, or an error naming the chart.
    fn points(&self) -> Result<Vec<(f64, f64)>> {
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
        Ok(pts)
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> Result<()> {
        let pts = self.points()?;
        root.fill(&WHITE).map_err(draw_err)?;
        let (plot, legend) = root.split_horizontally(PLOT_W);
        let (x0, x1) = range(pts.iter().map(|p| p.0), &self.x);
        let (y0, y1) = range(pts.iter().map(|p| p.1), &self.y);
        let mut chart = ChartBuilder::on(&plot)
            .caption(&self.title, (FONT, 18))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(draw_err)?;
        let whole = |v: &f64| {
            if (v - v.round()).abs() < 1e-9 {
                format!("{}", v.round() as i64)
            } else {
                String::new()
            }
        };
        let round = |v: &f64| format_tick(*v);
        let x_fmt: &dyn Fn(&f64) -> String = if self.x.integer { &whole } else { &round };
        let y_fmt: &dyn Fn(&f64) -> String = if self.y.integer { &whole } else { &round };
        chart
            .configure_mesh()
            .x_desc(&self.x.label)
            .y_desc(&self.y.label)
            .x_labels(labels(x0, x1, self.x.integer))
            .y_labels(labels(y0, y1, self.y.integer))
            .x_label_formatter(x_fmt)
            .y_label_formatter(y_fmt)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .max_light_lines(0)
            .bold_line_style(RGBColor(210, 210, 210))
            .draw()
            .map_err(draw_err)?;
        for (k, s) in self.series.iter().enumerate() {
            let [r, g, b] = PALETTE[k % PALETTE.len()];
            let c = RGBColor(r, g, b);
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            if s.style == Style::Line {
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(draw_err)?;
            }
            // Dots of a scatter are rings, wider for each later series, so that settings which
            // land on the same point stay visible.
            let marker = |p| match s.style {
                Style::Line => Circle::new(p, 3, c.filled()),
                Style::Points => Circle::new(p, 4 + 2 * (k % 5) as i32, c.stroke_width(2)),
            };
            chart
                .draw_series(pts.iter().map(|&p| marker(p)))
                .map_err(draw_err)?;
            let y = 50 + 24 * k as i32;
            legend
                .draw(&Rectangle::new([(8, y - 5), (30, y + 5)], c.filled()))
                .map_err(draw_err)?;
            legend
                .draw(&Text::new(
                    s.name.clone(),
                    (38, y - 8),
                    (FONT, 14).into_font().color(&BLACK),
                ))
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)
    }

    /// The chart as an SVG document.
    pub fn svg(&self) -> Result<String> {
        font()?;
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, self.size()).into_drawing_area();
            self.draw(root)?;
        }
        Ok(out)
    }

    /// The chart as an RGB image.
    pub fn render(&self) -> Result<image::RgbImage> {
        font()?;
        let (w, h) = self.size();
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            self.draw(root)?;
        }
        image::RgbImage::from_raw(w, h, buf)
            .ok_or_else(|| Error::Invalid("chart buffer of the wrong size".into()))
    }

    /// Writes the chart atomically as a PNG at `path` and as an SVG beside it (same name,
    /// `.svg`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let img = self.render()?;
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::Invalid(format!("encoding a PNG: {e}")))?;
        crate::atomic::write(path, &bytes)?;
        crate::atomic::write(&path.with_extension("svg"), self.svg()?.as_bytes())
    }
}

/// The axis range: every value with a 5% margin, from 0 for quantities that start there,
/// whole numbers for counted axes (never empty).
fn range(values: impl Iterator<Item = f64>, axis: &Axis) -> (f64, f64) {
    let (mut lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if axis.from_zero {
        lo = lo.min(0.0);
    }
    let span = (hi - lo).abs().max(1e-9 * hi.abs().max(1.0));
    let pad = if axis.integer { 0.5 } else { 0.05 * span };
    let start = if axis.from_zero && lo >= 0.0 {
        0.0
    } else {
        lo - pad
    };
    (start, hi + pad)
}

/// How many ticks plotters may place: for counted axes at most one per whole number.
fn labels(lo: f64, hi: f64, integer: bool) -> usize {
    if integer {
        ((hi - lo).floor() as usize + 1).clamp(2, 12)
    } else {
        8
    }
}

/// A tick value with no more digits than it needs.
fn format_tick(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            title: "Distance per layer".into(),
            x: Axis::integer("layer"),
            y: Axis::from_zero("L2 distance"),
            series: vec![Series {
                name: "CMRM dataset, alpha 1".into(),
                points: vec![(0.0, 3.0), (7.0, 11.0)],
                style: Style::Line,
            }],
        }
    }

    #[test]
    fn a_chart_draws_its_series_with_text() {
        let img = chart().render().unwrap();
        let blue = img.pixels().filter(|p| p.0 == PALETTE[0]).count();
        assert!(blue > 100, "series not drawn ({blue} pixels)");
        let svg = chart().svg().unwrap();
        assert!(svg.contains("CMRM dataset, alpha 1") && svg.contains("L2 distance"));
        let empty = Chart {
            series: vec![],
            ..chart()
        };
        assert!(empty.render().is_err());
    }

    #[test]
    fn axes_start_at_zero_and_count_in_whole_numbers() {
        assert_eq!(range([3.0, 11.0].into_iter(), &Axis::from_zero("d")).0, 0.0);
        let (lo, hi) = range([0.0, 7.0].into_iter(), &Axis::integer("layer"));
        assert_eq!((lo, hi), (-0.5, 7.5));
        assert_eq!(labels(lo, hi, true), 9);
        let svg = chart().svg().unwrap();
        let ticks: Vec<&str> = svg
            .split("</text>")
            .filter_map(|t| t.rsplit('>').next())
            .map(str::trim)
            .collect();
        // Whole layers 0..7 on the layer axis, round distances from 0 to 10.
        for t in ["0", "7", "2", "10"] {
            assert!(ticks.contains(&t), "tick {t} missing in {ticks:?}");
        }
        assert!(
            !ticks.contains(&"0.5") && !ticks.contains(&"-0.5"),
            "{ticks:?}"
        );
        assert_eq!(format_tick(0.30000000000000004), "0.3");
        assert_eq!(format_tick(-0.0), "0");
    }
}
