//! AlexNet-style trunk with BatchNorm: conv1..conv5, scaled to the input size. For small
//! inputs (< 96 px, e.g. CIFAR's 32) conv1 is 5×5 stride 1 and the pools are 3/2 with
//! padding; from 96 px up it is the classic 11×11 stride-4 stem. Taps are conv1..conv5
//! after ReLU (and after the pool where one follows).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::layers::{ConvBnRelu, max_pool};

#[derive(Module, Debug)]
pub struct AlexNet {
    pub convs: Vec<ConvBnRelu>,
    /// Small-input variant (5×5 stride-1 conv1).
    pub small: bool,
}

/// conv1..conv5 widths for `width` = conv1's channels (64 in the classic net).
pub fn widths(width: usize) -> [usize; 5] {
    let s = |m: usize| (width * m / 64).max(1);
    [s(64), s(192), s(384), s(256), s(256)]
}

impl AlexNet {
    pub fn new(in_channels: usize, input_size: usize, width: usize, dev: &Device) -> Self {
        let w = widths(width);
        let small = input_size < 96;
        let conv1 = if small {
            ConvBnRelu::new(in_channels, w[0], 5, 1, 2, dev)
        } else {
            ConvBnRelu::new(in_channels, w[0], 11, 4, 2, dev)
        };
        Self {
            convs: vec![
                conv1,
                ConvBnRelu::new(w[0], w[1], 5, 1, 2, dev),
                ConvBnRelu::new(w[1], w[2], 3, 1, 1, dev),
                ConvBnRelu::new(w[2], w[3], 3, 1, 1, dev),
                ConvBnRelu::new(w[3], w[4], 3, 1, 1, dev),
            ],
            small,
        }
    }

    pub fn tap_names(&self) -> Vec<String> {
        (1..=5).map(|i| format!("conv{i}")).collect()
    }

    pub fn tap_channels(&self) -> Vec<usize> {
        self.convs.iter().map(|c| c.bn.gamma.dims()[0]).collect()
    }

    pub fn forward_taps(&self, mut x: Tensor<4>, last: usize) -> Vec<Tensor<4>> {
        let mut taps = Vec::with_capacity(last + 1);
        let pad = usize::from(self.small);
        for (i, c) in self.convs.iter().enumerate().take(last + 1) {
            x = c.forward(x);
            if matches!(i, 0 | 1 | 4) {
                x = max_pool(x, 3, 2, pad);
            }
            taps.push(x.clone());
        }
        taps
    }
}
