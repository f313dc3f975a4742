//! Exact sRGB ↔ CIE L*a*b* (D65 white, the IEC 61966-2-1 sRGB curve and matrix) and the
//! input transform a run records (RGB, or lightness only for colorization).
//!
//! Written out rather than pulled from `palette`: the conversion is a dozen lines, runs in
//! f64 on the loader threads, and is pinned by tests against published reference values.

use serde::{Deserialize, Serialize};

/// D65 reference white (CIE 1931 2°), Y normalized to 1.
const WHITE: [f64; 3] = [0.950_47, 1.0, 1.088_83];
/// Linear sRGB → XYZ (IEC 61966-2-1).
const M: [[f64; 3]; 3] = [
    [0.412_456_4, 0.357_576_1, 0.180_437_5],
    [0.212_672_9, 0.715_152_2, 0.072_175_0],
    [0.019_333_9, 0.119_192_0, 0.950_304_1],
];
const EPS: f64 = 6.0 / 29.0;

fn to_linear(c: f64) -> f64 {
    if c <= 0.040_45 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn from_linear(c: f64) -> f64 {
    if c <= 0.003_130_8 {
        c * 12.92
    } else {
        1.055 * c.powf(1.0 / 2.4) - 0.055
    }
}

fn f(t: f64) -> f64 {
    if t > EPS * EPS * EPS {
        t.cbrt()
    } else {
        t / (3.0 * EPS * EPS) + 4.0 / 29.0
    }
}

fn f_inv(t: f64) -> f64 {
    if t > EPS {
        t * t * t
    } else {
        3.0 * EPS * EPS * (t - 4.0 / 29.0)
    }
}

/// sRGB in [0, 1] → (L* in [0, 100], a*, b*).
pub fn srgb_to_lab(rgb: [f64; 3]) -> [f64; 3] {
    let lin = rgb.map(to_linear);
    let xyz: Vec<f64> = (0..3)
        .map(|i| (M[i][0] * lin[0] + M[i][1] * lin[1] + M[i][2] * lin[2]) / WHITE[i])
        .collect();
    let (fx, fy, fz) = (f(xyz[0]), f(xyz[1]), f(xyz[2]));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// (L*, a*, b*) → sRGB (not clipped: out-of-gamut colors leave [0, 1]).
pub fn lab_to_srgb(lab: [f64; 3]) -> [f64; 3] {
    let fy = (lab[0] + 16.0) / 116.0;
    let fx = fy + lab[1] / 500.0;
    let fz = fy - lab[2] / 200.0;
    let xyz = [
        f_inv(fx) * WHITE[0],
        f_inv(fy) * WHITE[1],
        f_inv(fz) * WHITE[2],
    ];
    // Inverse of M, computed once by hand-free cofactor expansion.
    let inv = invert(M);
    let lin: Vec<f64> = (0..3)
        .map(|i| inv[i][0] * xyz[0] + inv[i][1] * xyz[1] + inv[i][2] * xyz[2])
        .collect();
    [
        from_linear(lin[0]),
        from_linear(lin[1]),
        from_linear(lin[2]),
    ]
}

fn invert(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    let mut r = [[0.0; 3]; 3];
    for (i, row) in r.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            // Cofactor of m[j][i] (transposed) over the determinant.
            let (a, b) = ((j + 1) % 3, (j + 2) % 3);
            let (c, d) = ((i + 1) % 3, (i + 2) % 3);
            *v = (m[a][c] * m[b][d] - m[a][d] * m[b][c]) / det;
        }
    }
    r
}

/// Lightness L* in [0, 100] of an sRGB pixel (only Y is needed).
pub fn lightness(rgb: [f64; 3]) -> f64 {
    let lin = rgb.map(to_linear);
    let y = M[1][0] * lin[0] + M[1][1] * lin[1] + M[1][2] * lin[2];
    116.0 * f(y) - 16.0
}

/// What the network sees. Recorded in every run so evaluation feeds a checkpoint the input
/// it was trained on (a colorization network sees lightness only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputTransform {
    /// The image's own channels.
    #[default]
    Rgb,
    /// CIE L* / 100, one channel.
    Lightness,
}

impl InputTransform {
    /// Channels the network receives from an image with `c` channels.
    pub fn channels(self, c: usize) -> usize {
        match self {
            InputTransform::Rgb => c,
            InputTransform::Lightness => 1,
        }
    }

    /// Transform a CHW image in [0, 1] with `c` channels into `out`
    /// (`channels(c)` planes of the same size).
    pub fn apply(self, chw: &[f32], c: usize, out: &mut [f32]) {
        match self {
            InputTransform::Rgb => out.copy_from_slice(chw),
            InputTransform::Lightness => {
                let plane = chw.len() / c;
                for (p, o) in out.iter_mut().enumerate().take(plane) {
                    let px = |ch: usize| chw[(ch.min(c - 1)) * plane + p] as f64;
                    *o = (lightness([px(0), px(1), px(2)]) / 100.0) as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f64; 3], b: [f64; 3], tol: f64) -> bool {
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < tol)
    }

    #[test]
    fn reference_colors_match_published_lab_values() {
        // Published CIE Lab (D65) of the sRGB primaries, white and black (e.g. Bruce
        // Lindbloom's calculator, 2 decimals).
        let cases = [
            ([1.0, 0.0, 0.0], [53.24, 80.09, 67.20]),
            ([0.0, 1.0, 0.0], [87.73, -86.18, 83.18]),
            ([0.0, 0.0, 1.0], [32.30, 79.19, -107.86]),
            ([1.0, 1.0, 1.0], [100.0, 0.0, 0.0]),
            ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
        ];
        for (rgb, lab) in cases {
            let got = srgb_to_lab(rgb);
            assert!(close(got, lab, 0.01), "{rgb:?}: {got:?} vs {lab:?}");
            assert!((lightness(rgb) - lab[0]).abs() < 0.01);
        }
        // Mid gray 50% sRGB: L* 53.39, no chroma.
        let g = srgb_to_lab([0.5, 0.5, 0.5]);
        assert!(
            (g[0] - 53.39).abs() < 0.01 && g[1].abs() < 1e-4 && g[2].abs() < 1e-4,
            "{g:?}"
        );
    }

    #[test]
    fn lab_round_trip_stays_within_1e_3() {
        let mut worst = 0f64;
        for r in 0..=10 {
            for g in 0..=10 {
                for b in 0..=10 {
                    let rgb = [r as f64 / 10.0, g as f64 / 10.0, b as f64 / 10.0];
                    let back = lab_to_srgb(srgb_to_lab(rgb));
                    for i in 0..3 {
                        worst = worst.max((back[i] - rgb[i]).abs());
                    }
                }
            }
        }
        assert!(worst < 1e-3, "worst round-trip error {worst}");
    }

    #[test]
    fn lightness_transform_gives_one_plane() {
        // A 1×2 RGB image: red and white.
        let chw = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0];
        let mut out = [0.0; 2];
        InputTransform::Lightness.apply(&chw, 3, &mut out);
        assert!((out[0] - 0.5324).abs() < 1e-4 && (out[1] - 1.0).abs() < 1e-6);
        assert_eq!(InputTransform::Lightness.channels(3), 1);
        let mut same = [0.0; 6];
        InputTransform::Rgb.apply(&chw, 3, &mut same);
        assert_eq!(same, chw);
    }
}
