//! RotNet's Network-in-Network for CIFAR (Gidaris et al. 2018, official code): blocks of
//! three convolutions (5×5 or 3×3, then two 1×1), BN + ReLU after each; max-pool 3/2 after
//! block 1, average-pool 3/2 after block 2. Taps are the block outputs.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::layers::{ConvBnRelu, avg_pool, max_pool};

#[derive(Module, Debug)]
pub struct NinBlock {
    pub convs: Vec<ConvBnRelu>,
}

#[derive(Module, Debug)]
pub struct Nin {
    pub blocks: Vec<NinBlock>,
}

/// Channel widths of NIN with `width` as the paper's 192: block 1 is 192/160/96.
pub fn widths(width: usize) -> (usize, usize, usize) {
    (width, (width * 160 / 192).max(1), (width / 2).max(1))
}

impl Nin {
    pub fn new(in_channels: usize, blocks: usize, width: usize, dev: &Device) -> Self {
        let (w1, w2, w3) = widths(width);
        let mut out = Vec::with_capacity(blocks);
        out.push(NinBlock {
            convs: vec![
                ConvBnRelu::new(in_channels, w1, 5, 1, 2, dev),
                ConvBnRelu::new(w1, w2, 1, 1, 0, dev),
                ConvBnRelu::new(w2, w3, 1, 1, 0, dev),
            ],
        });
        for b in 1..blocks {
            let (k, cin) = if b == 1 { (5, w3) } else { (3, w1) };
            out.push(NinBlock {
                convs: vec![
                    ConvBnRelu::new(cin, w1, k, 1, k / 2, dev),
                    ConvBnRelu::new(w1, w1, 1, 1, 0, dev),
                    ConvBnRelu::new(w1, w1, 1, 1, 0, dev),
                ],
            });
        }
        Self { blocks: out }
    }

    pub fn tap_names(&self) -> Vec<String> {
        (1..=self.blocks.len())
            .map(|b| format!("block{b}"))
            .collect()
    }

    pub fn tap_channels(&self) -> Vec<usize> {
        self.blocks
            .iter()
            .map(|b| b.convs.last().expect("3 convs").bn.gamma.dims()[0])
            .collect()
    }

    /// Feature maps of blocks `0..=last`.
    pub fn forward_taps(&self, mut x: Tensor<4>, last: usize) -> Vec<Tensor<4>> {
        let mut taps = Vec::with_capacity(last + 1);
        for (b, block) in self.blocks.iter().enumerate().take(last + 1) {
            for c in &block.convs {
                x = c.forward(x);
            }
            x = match b {
                0 => max_pool(x, 3, 2, 1),
                1 => avg_pool(x, 3, 2, 1),
                _ => x,
            };
            taps.push(x.clone());
        }
        taps
    }
}
