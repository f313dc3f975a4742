//! The report's figure: accuracy by layer, one panel per protocol (linear probe, kNN), one
//! line per method. It is written once as SVG, and the PNG is that SVG rasterised by resvg
//! at twice the pixel density with an embedded open font (DejaVu Sans), so the picture is
//! the same on every machine, with no font to install. Baselines read without colour:
//! random init dashed, the supervised baseline dotted, and every method has its own marker.

use anyhow::{Context, Result};
use image::RgbImage;

/// How a line is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dash {
    Solid,
    Dashed,
    Dotted,
}

impl Dash {
    /// The style of a method's line: random init dashed, the supervised baseline dotted.
    pub fn for_method(name: &str) -> Self {
        if name.starts_with("random-init") {
            Dash::Dashed
        } else if name.starts_with("supervised") {
            Dash::Dotted
        } else {
            Dash::Solid
        }
    }
    fn attr(self) -> &'static str {
        match self {
            Dash::Solid => "",
            Dash::Dashed => " stroke-dasharray=\"8 5\"",
            Dash::Dotted => " stroke-dasharray=\"2 4\" stroke-linecap=\"round\"",
        }
    }
}

/// One line: a value per x category (`None` where the method has no such layer).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
    pub dash: Dash,
}

/// One protocol's panel (its own y axis).
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub title: String,
    /// Values are fractions; the axis shows percent.
    pub series: Vec<Series>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    pub title: String,
    pub subtitle: String,
    pub x_title: String,
    pub y_title: String,
    pub x_labels: Vec<String>,
    pub panels: Vec<Panel>,
}

/// Layout, in SVG units (the PNG has two pixels per unit).
const LEFT: f64 = 78.0;
const TOP: f64 = 74.0;
const PANEL_W: f64 = 400.0;
const PANEL_H: f64 = 300.0;
const GAP: f64 = 70.0;
const BOTTOM: f64 = 64.0;
const LEGEND_W: f64 = 230.0;
/// Pixels per SVG unit in the PNG.
pub const PNG_SCALE: f32 = 2.0;
const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];

/// The y axis in whole percent, multiples of 5 with at least one point of room around
/// the data: methods differ by a few points, which an axis from 0 would flatten.
fn y_range(series: &[Series]) -> (i64, i64) {
    let values = series.iter().flat_map(|s| s.values.iter().flatten());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return (0, 100);
    }
    let lo = ((lo * 100.0 - 1.0).floor() as i64).div_euclid(5) * 5;
    let hi = -((-(hi * 100.0 + 1.0).ceil() as i64).div_euclid(5) * 5);
    (lo.max(0), hi.min(100).max(lo.max(0) + 5))
}

impl Panel {
    fn ticks(&self) -> Vec<f64> {
        let (lo, hi) = y_range(&self.series);
        let step = if hi - lo > 40 { 10 } else { 5 };
        (lo..=hi)
            .filter(|t| t % step == 0)
            .map(|t| t as f64 / 100.0)
            .collect()
    }
    fn y(&self, v: f64) -> f64 {
        let (lo, hi) = y_range(&self.series);
        TOP + PANEL_H - (v * 100.0 - lo as f64) / (hi - lo) as f64 * PANEL_H
    }
}

/// A method's marker, centred on (x, y): circle, square, triangle, diamond, in turn.
fn marker(k: usize, x: f64, y: f64, color: &str) -> String {
    match k % 4 {
        0 => format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"{color}\"/>\n"),
        1 => format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"7.5\" height=\"7.5\" fill=\"{color}\"/>\n",
            x - 3.75,
            y - 3.75
        ),
        2 => format!(
            "<path d=\"M{x:.1},{:.1} L{:.1},{:.1} L{:.1},{:.1} Z\" fill=\"{color}\"/>\n",
            y - 5.0,
            x + 4.5,
            y + 3.5,
            x - 4.5,
            y + 3.5
        ),
        _ => format!(
            "<path d=\"M{x:.1},{:.1} L{:.1},{y:.1} L{x:.1},{:.1} L{:.1},{y:.1} Z\" fill=\"{color}\"/>\n",
            y - 5.0,
            x + 5.0,
            y + 5.0,
            x - 5.0
        ),
    }
}

impl Figure {
    pub fn width(&self) -> f64 {
        let n = self.panels.len().max(1) as f64;
        LEFT + n * PANEL_W + (n - 1.0) * GAP + 30.0 + LEGEND_W
    }
    pub fn height(&self) -> f64 {
        TOP + PANEL_H + BOTTOM
    }
    fn left_of(&self, p: usize) -> f64 {
        LEFT + p as f64 * (PANEL_W + GAP)
    }
    fn x(&self, p: usize, i: usize) -> f64 {
        let n = self.x_labels.len().max(1) as f64;
        self.left_of(p) + (i as f64 + 0.5) * PANEL_W / n
    }
    /// Polyline points of a series in panel `p` (a missing value is skipped over).
    fn points(&self, p: usize, s: &Series) -> Vec<(f64, f64)> {
        let panel = &self.panels[p];
        s.values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (self.x(p, i), panel.y(v))))
            .collect()
    }

    pub fn svg(&self) -> String {
        let (w, h) = (self.width(), self.height());
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"DejaVu Sans, sans-serif\" font-size=\"13\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n<text x=\"{LEFT}\" y=\"26\" font-size=\"17\" font-weight=\"bold\">{}</text>\n<text x=\"{LEFT}\" y=\"46\" font-size=\"13\" fill=\"#444\">{}</text>\n",
            esc(&self.title),
            esc(&self.subtitle)
        );
        for (p, panel) in self.panels.iter().enumerate() {
            let (x0, x1) = (self.left_of(p), self.left_of(p) + PANEL_W);
            let bottom = TOP + PANEL_H;
            s += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
                (x0 + x1) / 2.0,
                TOP - 10.0,
                esc(&panel.title)
            );
            for t in panel.ticks() {
                let y = panel.y(t);
                s += &format!(
                    "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#e3e3e3\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>\n",
                    x0 - 7.0,
                    y + 4.5,
                    t * 100.0
                );
            }
            for (i, l) in self.x_labels.iter().enumerate() {
                s += &format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
                    self.x(p, i),
                    bottom + 20.0,
                    esc(l)
                );
            }
            s += &format!(
                "<line x1=\"{x0}\" y1=\"{bottom}\" x2=\"{x1}\" y2=\"{bottom}\" stroke=\"black\"/>\n<line x1=\"{x0}\" y1=\"{TOP}\" x2=\"{x0}\" y2=\"{bottom}\" stroke=\"black\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n<text transform=\"translate({:.1} {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
                (x0 + x1) / 2.0,
                bottom + 44.0,
                esc(&self.x_title),
                x0 - 46.0,
                TOP + PANEL_H / 2.0,
                esc(&self.y_title)
            );
            for (k, series) in panel.series.iter().enumerate() {
                let [r, g, b] = PALETTE[k % PALETTE.len()];
                let color = format!("rgb({r},{g},{b})");
                let pts = self.points(p, series);
                let line: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                s += &format!(
                    "<polyline class=\"series\" data-name=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{} points=\"{}\"/>\n",
                    esc(&series.name),
                    series.dash.attr(),
                    line.join(" ")
                );
                for (x, y) in pts {
                    s += &marker(k, x, y, &color);
                }
            }
        }
        // One legend for every panel: the methods are the same in each.
        let lx = self.left_of(self.panels.len().max(1) - 1) + PANEL_W + 30.0;
        if let Some(panel) = self.panels.first() {
            for (k, series) in panel.series.iter().enumerate() {
                let [r, g, b] = PALETTE[k % PALETTE.len()];
                let color = format!("rgb({r},{g},{b})");
                let ly = TOP + 8.0 + 24.0 * k as f64;
                s += &format!(
                    "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"{}/>\n",
                    lx + 34.0,
                    series.dash.attr()
                );
                s += &marker(k, lx + 17.0, ly, &color);
                s += &format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
                    lx + 42.0,
                    ly + 4.5,
                    esc(&series.name)
                );
            }
        }
        s + "</svg>\n"
    }

    /// The SVG rasterised at [`PNG_SCALE`] pixels per unit, text in DejaVu Sans.
    pub fn png(&self) -> Result<RgbImage> {
        use resvg::{tiny_skia, usvg};
        let mut opt = usvg::Options::default();
        let fonts = opt.fontdb_mut();
        fonts.load_font_data(dejavu::sans::regular().to_vec());
        fonts.load_font_data(dejavu::sans::bold().to_vec());
        fonts.set_sans_serif_family("DejaVu Sans");
        let tree = usvg::Tree::from_str(&self.svg(), &opt).context("the figure's SVG")?;
        let size = tree
            .size()
            .to_int_size()
            .scale_by(PNG_SCALE)
            .context("the figure's size")?;
        let mut pixmap =
            tiny_skia::Pixmap::new(size.width(), size.height()).context("allocating the figure")?;
        resvg::render(
            &tree,
            tiny_skia::Transform::from_scale(PNG_SCALE, PNG_SCALE),
            &mut pixmap.as_mut(),
        );
        // The background is opaque white, so premultiplied RGBA is plain RGB here.
        let rgb = pixmap
            .data()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        RgbImage::from_raw(size.width(), size.height(), rgb).context("the figure's pixels")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Pixels of `img` close to `color` (a rasterised line is blended at its edges).
#[cfg(test)]
fn count_near(img: &RgbImage, color: [u8; 3]) -> usize {
    img.pixels()
        .filter(|p| (0..3).all(|c| p.0[c].abs_diff(color[c]) <= 8))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, v: [Option<f64>; 3]) -> Series {
        Series {
            name: name.into(),
            values: v.to_vec(),
            dash: Dash::for_method(name),
        }
    }

    fn figure(panels: usize) -> Figure {
        let linear = Panel {
            title: "Linear probe".into(),
            series: vec![
                series("rotation", [Some(0.48), Some(0.49), Some(0.42)]),
                series("random-init", [Some(0.45), None, Some(0.40)]),
                series("supervised", [Some(0.50), Some(0.60), Some(0.70)]),
            ],
        };
        let mut knn = linear.clone();
        knn.title = "kNN".into();
        Figure {
            title: "CIFAR-10: NIN width 96".into(),
            subtitle: "frozen features".into(),
            x_title: "layer".into(),
            y_title: "test top-1 (%)".into(),
            x_labels: vec!["block1".into(), "block2".into(), "block3".into()],
            panels: [linear, knn].into_iter().take(panels).collect(),
        }
    }

    #[test]
    fn each_method_is_a_line_at_the_right_height_and_baselines_are_dashed_or_dotted() {
        let f = figure(1);
        let svg = f.svg();
        assert_eq!(svg.matches("<polyline class=\"series\"").count(), 3);
        // Values 40–70% give an axis from 35% (40 − 1 rounded down to a multiple of 5) to
        // 75% (70 + 1 rounded up): v sits at 74 + 300 − (100v − 35)/40 · 300 (0.48 → 276.5,
        // 0.49 → 269.0, 0.42 → 321.5); x at 78 + (i + ½)·400/3.
        assert!(
            svg.contains("points=\"144.7,276.5 278.0,269.0 411.3,321.5\""),
            "{svg}"
        );
        // The missing layer is skipped: two points (0.45 → 299.0, 0.40 → 336.5).
        assert!(svg.contains("points=\"144.7,299.0 411.3,336.5\""), "{svg}");
        assert_eq!(
            f.panels[0].ticks(),
            [0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75]
        );
        // Random init dashed and supervised dotted, in the plot and in the legend.
        assert_eq!(svg.matches("stroke-dasharray=\"8 5\"").count(), 2);
        assert_eq!(svg.matches("stroke-dasharray=\"2 4\"").count(), 2);
        for label in [
            "layer",
            "test top-1 (%)",
            "CIFAR-10: NIN width 96",
            "Linear probe",
        ] {
            assert!(svg.contains(&format!(">{label}</text>")), "{label}");
        }
        // Two protocols: two panels side by side, one legend.
        let two = figure(2);
        let svg = two.svg();
        assert_eq!(svg.matches("<polyline class=\"series\"").count(), 6);
        assert_eq!(svg.matches(">supervised</text>").count(), 1);
        assert!(two.width() > f.width() + PANEL_W);
    }

    #[test]
    fn the_png_is_the_svg_at_twice_the_density_with_real_text() {
        let f = figure(2);
        let img = f.png().unwrap();
        assert_eq!(
            img.dimensions(),
            ((f.width() * 2.0) as u32, (f.height() * 2.0) as u32)
        );
        for color in &PALETTE[..3] {
            assert!(count_near(&img, *color) > 100, "{color:?} missing");
        }
        assert_eq!(count_near(&img, PALETTE[3]), 0);
        // The title is drawn: anti-aliased glyphs give grey levels, not just black and
        // white, in its band.
        let band = (2 * LEFT as u32..2 * 400, 20..60);
        let greys = band
            .0
            .clone()
            .flat_map(|x| band.1.clone().map(move |y| (x, y)))
            .map(|(x, y)| img.get_pixel(x, y).0[0])
            .filter(|&v| v > 30 && v < 220)
            .count();
        assert!(greys > 200, "{greys} anti-aliased title pixels");
    }
}
