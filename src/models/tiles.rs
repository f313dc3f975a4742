//! The context-free network of the tile tasks (Noroozi & Favaro; Doersch et al.): every
//! tile goes through the same backbone, each tile's last tap is flattened into a per-tile
//! fully connected layer (the papers' fc6), the tiles' features are concatenated and a
//! hidden layer (fc7) and the head classify the arrangement.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::Classifier;
use super::{Backbone, BackboneConfig};

#[derive(Module, Debug)]
pub struct TileNet {
    pub backbone: Backbone,
    pub fc6: Linear,
    pub fc7: Linear,
    pub head: Linear,
    /// Tiles per sample (9 for jigsaw, 2 for a patch pair).
    pub tiles: usize,
}

/// Flattened size of the last tap for a `side × side` input.
pub fn last_tap_len(cfg: &BackboneConfig, side: usize, dev: &Device) -> usize {
    // A throwaway network, so the real one's BN statistics never see the probe input.
    let net = cfg.init(dev);
    let map = net.forward(Tensor::<4>::zeros([1, cfg.in_channels, side, side], dev));
    let [_, c, h, w] = map.dims();
    c * h * w
}

impl TileNet {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &BackboneConfig,
        tile: usize,
        tiles: usize,
        per_tile: usize,
        hidden: usize,
        classes: usize,
        dev: &Device,
    ) -> Self {
        let backbone = cfg.init(dev);
        let flat = last_tap_len(cfg, tile, dev);
        Self {
            backbone,
            fc6: LinearConfig::new(flat, per_tile).init(dev),
            fc7: LinearConfig::new(tiles * per_tile, hidden).init(dev),
            head: LinearConfig::new(hidden, classes).init(dev),
            tiles,
        }
    }
}

impl Classifier for TileNet {
    fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        let [nt, _, _, _] = x.dims();
        let map = self.backbone.forward(x);
        let [_, c, h, w] = map.dims();
        let f = relu(self.fc6.forward(map.reshape([nt, c * h * w])));
        let [_, d] = f.dims();
        let n = nt / self.tiles;
        let joined = f.reshape([n, self.tiles * d]);
        self.head.forward(relu(self.fc7.forward(joined)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Arch;

    #[test]
    fn nine_tiles_give_one_row_of_logits_per_sample() {
        let dev = Device::flex();
        let mut cfg = BackboneConfig::new(Arch::Nin, 32);
        cfg.width = 16;
        let net = TileNet::new(&cfg, 8, 9, 12, 20, 30, &dev);
        let x = Tensor::<4>::zeros([2 * 9, 3, 8, 8], &dev);
        assert_eq!(net.logits(x).dims(), [2, 30]);
    }
}
