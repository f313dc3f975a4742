//! A small line chart (accuracy by layer, one line per method) drawn twice from the same
//! layout: as SVG text and as a PNG (with the 3×5 bitmap font of the preview sheets), so
//! the report needs no plotting or font dependency.

use image::{Rgb, RgbImage};

use crate::draw::preview::draw_text;

/// One line: a value per x category (`None` where the method has no such layer).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_labels: Vec<String>,
    /// Values are fractions; the axis shows percent.
    pub series: Vec<Series>,
}

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 560.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 380.0;
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

impl LineChart {
    /// The y axis in whole percent, multiples of 5 with at least one point of room around
    /// the data: methods differ by a few points, which an axis from 0 would flatten.
    fn y_range(&self) -> (i64, i64) {
        let values = self.series.iter().flat_map(|s| s.values.iter().flatten());
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
    fn x(&self, i: usize) -> f64 {
        let n = self.x_labels.len().max(1) as f64;
        LEFT + (i as f64 + 0.5) * (RIGHT - LEFT) / n
    }
    fn y(&self, v: f64) -> f64 {
        let (lo, hi) = self.y_range();
        BOTTOM - (v * 100.0 - lo as f64) / (hi - lo) as f64 * (BOTTOM - TOP)
    }
    /// Polyline points of a series (gaps where a value is missing are skipped over).
    fn points(&self, s: &Series) -> Vec<(f64, f64)> {
        s.values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (self.x(i), self.y(v))))
            .collect()
    }
    /// Every 5% of the axis, as fractions.
    fn ticks(&self) -> Vec<f64> {
        let (lo, hi) = self.y_range();
        (lo..=hi).step_by(5).map(|t| t as f64 / 100.0).collect()
    }

    pub fn svg(&self) -> String {
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n<text x=\"{LEFT}\" y=\"24\" font-size=\"15\">{}</text>\n",
            esc(&self.title)
        );
        for t in self.ticks() {
            let y = self.y(t);
            s += &format!(
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{RIGHT}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>\n",
                LEFT - 6.0,
                y + 4.0,
                t * 100.0
            );
        }
        for (i, l) in self.x_labels.iter().enumerate() {
            s += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
                self.x(i),
                BOTTOM + 18.0,
                esc(l)
            );
        }
        s += &format!(
            "<line x1=\"{LEFT}\" y1=\"{BOTTOM}\" x2=\"{RIGHT}\" y2=\"{BOTTOM}\" stroke=\"black\"/>\n<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{BOTTOM}\" stroke=\"black\"/>\n"
        );
        for (k, series) in self.series.iter().enumerate() {
            let [r, g, b] = PALETTE[k % PALETTE.len()];
            let pts: Vec<String> = self
                .points(series)
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            s += &format!(
                "<polyline class=\"series\" data-name=\"{}\" fill=\"none\" stroke=\"rgb({r},{g},{b})\" stroke-width=\"2\" points=\"{}\"/>\n",
                esc(&series.name),
                pts.join(" ")
            );
            for (x, y) in self.points(series) {
                s += &format!(
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"rgb({r},{g},{b})\"/>\n"
                );
            }
            let ly = TOP + 10.0 + 20.0 * k as f64;
            s += &format!(
                "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"rgb({r},{g},{b})\" stroke-width=\"3\"/>\n<text x=\"{}\" y=\"{}\">{}</text>\n",
                RIGHT + 20.0,
                RIGHT + 44.0,
                RIGHT + 50.0,
                ly + 4.0,
                esc(&series.name)
            );
        }
        s + "</svg>\n"
    }

    pub fn png(&self) -> RgbImage {
        let mut img = RgbImage::from_pixel(W as u32, H as u32, Rgb([255, 255, 255]));
        let gray = Rgb([220, 220, 220]);
        let black = Rgb([0, 0, 0]);
        draw_text(&mut img, LEFT as usize, 12, &self.title, 3, black);
        for t in self.ticks() {
            let y = self.y(t);
            line(&mut img, (LEFT, y), (RIGHT, y), gray, 1);
            let label = format!("{:.0}%", t * 100.0);
            let w = label.len() as f64 * 8.0;
            draw_text(
                &mut img,
                (LEFT - 8.0 - w).max(0.0) as usize,
                (y - 5.0) as usize,
                &label,
                2,
                black,
            );
        }
        for (i, l) in self.x_labels.iter().enumerate() {
            let w = l.len() as f64 * 8.0;
            draw_text(
                &mut img,
                (self.x(i) - w / 2.0).max(0.0) as usize,
                (BOTTOM + 10.0) as usize,
                l,
                2,
                black,
            );
        }
        line(&mut img, (LEFT, BOTTOM), (RIGHT, BOTTOM), black, 1);
        line(&mut img, (LEFT, TOP), (LEFT, BOTTOM), black, 1);
        for (k, series) in self.series.iter().enumerate() {
            let c = Rgb(PALETTE[k % PALETTE.len()]);
            let pts = self.points(series);
            for w in pts.windows(2) {
                line(&mut img, w[0], w[1], c, 2);
            }
            for &(x, y) in &pts {
                for dy in -3..=3 {
                    for dx in -3..=3 {
                        put(&mut img, x + dx as f64, y + dy as f64, c);
                    }
                }
            }
            let ly = TOP + 10.0 + 20.0 * k as f64;
            line(&mut img, (RIGHT + 20.0, ly), (RIGHT + 44.0, ly), c, 3);
            draw_text(
                &mut img,
                (RIGHT + 50.0) as usize,
                (ly - 5.0) as usize,
                &series.name,
                2,
                black,
            );
        }
        img
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn put(img: &mut RgbImage, x: f64, y: f64, c: Rgb<u8>) {
    if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// A line `width` pixels thick, by stepping half a pixel along it.
fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: Rgb<u8>, width: i32) {
    let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) * 2.0)
        .ceil()
        .max(1.0) as usize;
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        for d in 0..width {
            let o = d as f64 - (width - 1) as f64 / 2.0;
            put(img, x + o, y, c);
            put(img, x, y + o, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> LineChart {
        LineChart {
            title: "linear top-1 by layer".into(),
            x_labels: vec!["block1".into(), "block2".into(), "block3".into()],
            series: vec![
                Series {
                    name: "rotation".into(),
                    values: vec![Some(0.48), Some(0.49), Some(0.42)],
                },
                Series {
                    name: "random-init".into(),
                    values: vec![Some(0.45), None, Some(0.40)],
                },
            ],
        }
    }

    #[test]
    fn svg_has_one_polyline_per_method_at_the_right_height() {
        let c = chart();
        let svg = c.svg();
        assert_eq!(svg.matches("<polyline class=\"series\"").count(), 2);
        assert!(svg.contains("data-name=\"random-init\""));
        // Values 40–49% give an axis from 35% (40 − 1 rounded down to a multiple of 5) to
        // 50% (49 + 1 rounded up): v sits at 380 − (100v − 35)/15 · 340 (0.48 → 85.3,
        // 0.49 → 62.7, 0.42 → 221.3); x at 60 + (i + ½)·500/3.
        assert!(
            svg.contains("points=\"143.3,85.3 310.0,62.7 476.7,221.3\""),
            "{svg}"
        );
        // The missing layer is skipped: two points (0.45 → 153.3, 0.40 → 266.7).
        assert!(svg.contains("points=\"143.3,153.3 476.7,266.7\""));
        assert_eq!(c.ticks(), [0.35, 0.40, 0.45, 0.50]);
    }

    #[test]
    fn png_is_drawn_with_each_series_color() {
        let img = chart().png();
        assert_eq!(img.dimensions(), (760, 440));
        for color in &PALETTE[..2] {
            assert!(img.pixels().any(|p| p.0 == *color), "{color:?} missing");
        }
        assert!(!img.pixels().any(|p| p.0 == PALETTE[2]));
    }
}
