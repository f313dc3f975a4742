//! ResNet-18/50 (He et al. 2016) in two stems: the ImageNet form (7×7 stride-2 conv and a
//! 3/2 max-pool) and the CIFAR form (3×3 stride-1 conv, no max-pool), which small images
//! need. Taps: stem, layer1..layer4.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::layers::{ConvBnRelu, conv, max_pool};
use crate::cpu::conv_bn;

#[derive(Module, Debug)]
pub struct Shortcut {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

#[derive(Module, Debug)]
pub struct BasicBlock {
    pub a: ConvBnRelu,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub shortcut: Option<Shortcut>,
}

#[derive(Module, Debug)]
pub struct Bottleneck {
    pub a: ConvBnRelu,
    pub b: ConvBnRelu,
    pub conv3: Conv2d,
    pub bn3: BatchNorm,
    pub shortcut: Option<Shortcut>,
}

// Built once per network, so the size gap between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Block {
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
}

#[derive(Module, Debug)]
pub struct ResNet {
    pub stem: ConvBnRelu,
    pub layers: Vec<Vec<Block>>,
    /// ImageNet stem (max-pool after the stem conv).
    pub imagenet_stem: bool,
}

fn shortcut(cin: usize, cout: usize, stride: usize, dev: &Device) -> Option<Shortcut> {
    (stride != 1 || cin != cout).then(|| Shortcut {
        conv: conv(cin, cout, 1, stride, 0, dev),
        bn: BatchNormConfig::new(cout).init(dev),
    })
}

impl Block {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Block::Basic(b) => {
                let y = conv_bn(&b.conv2, &b.bn2, b.a.forward(x.clone()), false);
                let s = match &b.shortcut {
                    Some(s) => conv_bn(&s.conv, &s.bn, x, false),
                    None => x,
                };
                relu(y + s)
            }
            Block::Bottleneck(b) => {
                let y = conv_bn(&b.conv3, &b.bn3, b.b.forward(b.a.forward(x.clone())), false);
                let s = match &b.shortcut {
                    Some(s) => conv_bn(&s.conv, &s.bn, x, false),
                    None => x,
                };
                relu(y + s)
            }
        }
    }
    fn out_channels(&self) -> usize {
        match self {
            Block::Basic(b) => b.bn2.gamma.dims()[0],
            Block::Bottleneck(b) => b.bn3.gamma.dims()[0],
        }
    }
}

impl ResNet {
    /// `depth` 18 (basic blocks) or 50 (bottlenecks); `width` = the stem's channels (64).
    pub fn new(
        in_channels: usize,
        depth: usize,
        width: usize,
        imagenet_stem: bool,
        dev: &Device,
    ) -> Self {
        let stem = if imagenet_stem {
            ConvBnRelu::new(in_channels, width, 7, 2, 3, dev)
        } else {
            ConvBnRelu::new(in_channels, width, 3, 1, 1, dev)
        };
        let (counts, bottleneck) = match depth {
            50 => ([3, 4, 6, 3], true),
            _ => ([2, 2, 2, 2], false),
        };
        let expansion = if bottleneck { 4 } else { 1 };
        let mut cin = width;
        let mut layers = Vec::new();
        for (l, &count) in counts.iter().enumerate() {
            let planes = width << l;
            let mut blocks = Vec::new();
            for i in 0..count {
                let stride = if i == 0 && l > 0 { 2 } else { 1 };
                let cout = planes * expansion;
                blocks.push(if bottleneck {
                    Block::Bottleneck(Bottleneck {
                        a: ConvBnRelu::new(cin, planes, 1, 1, 0, dev),
                        b: ConvBnRelu::new(planes, planes, 3, stride, 1, dev),
                        conv3: conv(planes, cout, 1, 1, 0, dev),
                        bn3: BatchNormConfig::new(cout).init(dev),
                        shortcut: shortcut(cin, cout, stride, dev),
                    })
                } else {
                    Block::Basic(BasicBlock {
                        a: ConvBnRelu::new(cin, planes, 3, stride, 1, dev),
                        conv2: conv(planes, planes, 3, 1, 1, dev),
                        bn2: BatchNormConfig::new(planes).init(dev),
                        shortcut: shortcut(cin, cout, stride, dev),
                    })
                });
                cin = cout;
            }
            layers.push(blocks);
        }
        Self {
            stem,
            layers,
            imagenet_stem,
        }
    }

    pub fn tap_names(&self) -> Vec<String> {
        std::iter::once("stem".to_string())
            .chain((1..=self.layers.len()).map(|i| format!("layer{i}")))
            .collect()
    }

    pub fn tap_channels(&self) -> Vec<usize> {
        std::iter::once(self.stem.bn.gamma.dims()[0])
            .chain(
                self.layers
                    .iter()
                    .map(|l| l.last().expect("blocks").out_channels()),
            )
            .collect()
    }

    pub fn forward_taps(&self, x: Tensor<4>, last: usize) -> Vec<Tensor<4>> {
        let mut x = self.stem.forward(x);
        if self.imagenet_stem {
            x = max_pool(x, 3, 2, 1);
        }
        let mut taps = vec![x.clone()];
        for layer in self.layers.iter().take(last) {
            for b in layer {
                x = b.forward(x);
            }
            taps.push(x.clone());
        }
        taps
    }
}
