//! Larsson et al.'s hypercolumn colorizer: features of every tap, bilinearly sampled at a
//! few pixel locations per image, concatenated and fed to a small MLP that predicts two
//! color histograms per pixel (hue and chroma, or a* and b*).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::{Backbone, BackboneConfig};

#[derive(Module, Debug)]
pub struct ColorNet {
    pub backbone: Backbone,
    pub fc: Linear,
    pub out: Linear,
    /// Bins per histogram; the output holds two histograms.
    pub bins: usize,
    /// Pixels sampled per image.
    pub pixels: usize,
}

/// Bilinear sampling plan of one map: 4 source rows per pixel and their weights.
/// `positions` are `y·side + x` in the `side × side` input; the map is `h × w`.
pub fn bilinear_plan(
    positions: &[i64],
    per_image: usize,
    side: usize,
    h: usize,
    w: usize,
) -> (Vec<i64>, Vec<f32>) {
    let mut idx = Vec::with_capacity(positions.len() * 4);
    let mut wts = Vec::with_capacity(positions.len() * 4);
    for (k, &p) in positions.iter().enumerate() {
        let b = k / per_image;
        let (py, px) = ((p as usize) / side, (p as usize) % side);
        // Pixel centers, as align_corners = false.
        let fy = ((py as f32 + 0.5) * h as f32 / side as f32 - 0.5).clamp(0.0, (h - 1) as f32);
        let fx = ((px as f32 + 0.5) * w as f32 / side as f32 - 0.5).clamp(0.0, (w - 1) as f32);
        let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
        let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
        let (wy, wx) = (fy - y0 as f32, fx - x0 as f32);
        let base = b * h * w;
        for (y, x, wt) in [
            (y0, x0, (1.0 - wy) * (1.0 - wx)),
            (y0, x1, (1.0 - wy) * wx),
            (y1, x0, wy * (1.0 - wx)),
            (y1, x1, wy * wx),
        ] {
            idx.push((base + y * w + x) as i64);
            wts.push(wt);
        }
    }
    (idx, wts)
}

impl ColorNet {
    pub fn new(
        cfg: &BackboneConfig,
        hidden: usize,
        bins: usize,
        pixels: usize,
        dev: &Device,
    ) -> Self {
        let backbone = cfg.init(dev);
        let width: usize = backbone.tap_channels().iter().sum();
        Self {
            backbone,
            fc: LinearConfig::new(width, hidden).init(dev),
            out: LinearConfig::new(hidden, 2 * bins).init(dev),
            bins,
            pixels,
        }
    }

    /// Hypercolumns of the pixels at `positions` (the same number per image, image-major,
    /// row-major in the input) → one row of `2·bins` logits per position.
    pub fn forward(&self, x: Tensor<4>, positions: &[i64]) -> Tensor<2> {
        let [n, _, side, _] = x.dims();
        let per_image = positions.len() / n.max(1);
        let dev = x.device();
        let m = positions.len();
        let cols: Vec<Tensor<2>> = self
            .backbone
            .forward_all(x)
            .into_iter()
            .map(|map| {
                let [n, c, h, w] = map.dims();
                let (idx, wts) = bilinear_plan(positions, per_image, side, h, w);
                let flat = map.permute([0, 2, 3, 1]).reshape([n * h * w, c]);
                let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [4 * m]), &dev);
                let wts = Tensor::<2>::from_data(TensorData::new(wts, [4 * m, 1]), &dev);
                (flat.select(0, idx) * wts)
                    .reshape([m, 4, c])
                    .sum_dim(1)
                    .reshape([m, c])
            })
            .collect();
        let hc = Tensor::cat(cols, 1);
        self.out.forward(relu(self.fc.forward(hc)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_plan_by_hand() {
        // A 4×4 input sampled on a 2×2 map: pixel (0,0) sits at map (-0.25, -0.25) → clamped
        // to (0, 0); pixel (1, 2) sits at (0.25, 0.75).
        let (idx, w) = bilinear_plan(&[0, 6], 2, 4, 2, 2);
        assert_eq!(&idx[..4], &[0, 1, 2, 3]);
        assert_eq!(&w[..4], &[1.0, 0.0, 0.0, 0.0]);
        assert_eq!(&idx[4..], &[0, 1, 2, 3]);
        let want = [0.75 * 0.25, 0.75 * 0.75, 0.25 * 0.25, 0.25 * 0.75];
        for (a, b) in w[4..].iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        // The second image's rows start after the first image's h·w = 4.
        let (idx, _) = bilinear_plan(&[0, 0], 1, 4, 2, 2);
        assert_eq!(idx[4], 4);
    }

    #[test]
    fn one_row_of_logits_per_sampled_pixel() {
        use crate::models::Arch;
        let dev = Device::flex();
        let mut cfg = BackboneConfig::new(Arch::Nin, 16);
        cfg.width = 8;
        cfg.in_channels = 1;
        let net = ColorNet::new(&cfg, 16, 4, 3, &dev);
        let x = Tensor::<4>::random([2, 1, 16, 16], burn::tensor::Distribution::Default, &dev);
        let out = net.forward(x, &[0, 17, 255, 3, 4, 5]);
        assert_eq!(out.dims(), [6, 8]);
    }
}
