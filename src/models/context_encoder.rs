//! Pathak et al.'s context encoder: the backbone encodes the masked image, a channel-wise
//! fully connected layer spreads information across each channel's whole map (cheaper than
//! a full FC), a 1×1 convolution mixes channels, and up-convolutions decode the image.
//! A small discriminator judges real images against images whose hole holds the prediction.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{leaky_relu, relu};
use burn::tensor::{Device, Distribution, Tensor};

use super::layers::{ConvBnRelu, conv, global_avg};
use super::{Backbone, BackboneConfig};

/// Per-channel fully connected layer over an `m = h·w` map: `[C, m, m]` weights.
#[derive(Module, Debug)]
pub struct ChannelWiseFc {
    pub weight: Param<Tensor<3>>,
    pub bias: Param<Tensor<2>>,
}

impl ChannelWiseFc {
    pub fn new(c: usize, m: usize, dev: &Device) -> Self {
        let std = (1.0 / m as f64).sqrt();
        Self {
            weight: Param::from_tensor(Tensor::random(
                [c, m, m],
                Distribution::Normal(0.0, std),
                dev,
            )),
            bias: Param::from_tensor(Tensor::zeros([c, m], dev)),
        }
    }
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let m = h * w;
        let y = x
            .reshape([n, c, m])
            .swap_dims(0, 1)
            .matmul(self.weight.val());
        let y = y + self.bias.val().reshape([c, 1, m]);
        y.swap_dims(0, 1).reshape([n, c, h, w])
    }
}

#[derive(Module, Debug)]
pub struct UpBlock {
    pub conv: ConvTranspose2d,
    pub bn: BatchNorm,
}

#[derive(Module, Debug)]
pub struct Generator {
    pub backbone: Backbone,
    pub cwfc: ChannelWiseFc,
    pub mix: ConvBnRelu,
    pub ups: Vec<UpBlock>,
    pub out: Conv2d,
}

#[derive(Module, Debug)]
pub struct Discriminator {
    pub convs: Vec<Conv2d>,
    pub bns: Vec<BatchNorm>,
    pub head: Linear,
}

#[derive(Module, Debug)]
pub struct ContextEncoder {
    pub generator: Generator,
    pub disc: Discriminator,
    pub lambda_rec: f32,
    pub lambda_adv: f32,
}

/// Side of the backbone's last tap for a `side × side` input.
fn last_tap_side(cfg: &BackboneConfig, side: usize, dev: &Device) -> (usize, usize) {
    let net = cfg.init(dev);
    let [_, c, h, _] = net
        .forward(Tensor::<4>::zeros([1, cfg.in_channels, side, side], dev))
        .dims();
    (c, h)
}

impl ContextEncoder {
    /// Build for `side × side` inputs; the decoder doubles the map until it is back at
    /// `side`, so `side / last tap side` must be a power of two.
    pub fn new(
        cfg: &BackboneConfig,
        side: usize,
        disc_width: usize,
        lambda_rec: f32,
        lambda_adv: f32,
        dev: &Device,
    ) -> anyhow::Result<Self> {
        let (c, s) = last_tap_side(cfg, side, dev);
        anyhow::ensure!(
            side.is_multiple_of(s) && (side / s).is_power_of_two(),
            "the context encoder's decoder doubles the {s}×{s} encoder map back to the {side}×{side} input: \
             the ratio must be a power of two"
        );
        let backbone = cfg.init(dev);
        let mut ups = Vec::new();
        let (mut ch, mut at) = (c, s);
        while at < side {
            let next = (ch / 2).max(32);
            ups.push(UpBlock {
                conv: ConvTranspose2dConfig::new([ch, next], [4, 4])
                    .with_stride([2, 2])
                    .with_padding([1, 1])
                    .with_bias(false)
                    .init(dev),
                bn: BatchNormConfig::new(next).init(dev),
            });
            ch = next;
            at *= 2;
        }
        let w = disc_width;
        let chans = [cfg.in_channels, w, 2 * w, 4 * w];
        Ok(Self {
            generator: Generator {
                backbone,
                cwfc: ChannelWiseFc::new(c, s * s, dev),
                mix: ConvBnRelu::new(c, c, 1, 1, 0, dev),
                ups,
                out: burn::nn::conv::Conv2dConfig::new([ch, cfg.in_channels], [3, 3])
                    .with_padding(burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(dev),
            },
            disc: Discriminator {
                convs: (0..3)
                    .map(|i| conv(chans[i], chans[i + 1], 4, 2, 1, dev))
                    .collect(),
                bns: (1..3)
                    .map(|i| BatchNormConfig::new(chans[i + 1]).init(dev))
                    .collect(),
                head: LinearConfig::new(4 * w, 1).init(dev),
            },
            lambda_rec,
            lambda_adv,
        })
    }
}

impl Generator {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = self
            .mix
            .forward(self.cwfc.forward(self.backbone.forward(x)));
        for up in &self.ups {
            y = relu(up.bn.forward(up.conv.forward(y)));
        }
        self.out.forward(y)
    }
}

impl Discriminator {
    /// One real-vs-fake logit per image.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut y = leaky_relu(self.convs[0].forward(x), 0.2);
        for (c, bn) in self.convs[1..].iter().zip(&self.bns) {
            y = leaky_relu(bn.forward(c.forward(y)), 0.2);
        }
        self.head.forward(global_avg(y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Arch;

    #[test]
    fn decoder_returns_to_the_input_size() {
        let dev = Device::flex();
        let mut cfg = BackboneConfig::new(Arch::Nin, 32);
        cfg.width = 16;
        let net = ContextEncoder::new(&cfg, 32, 8, 0.999, 0.001, &dev).unwrap();
        let x = Tensor::<4>::zeros([2, 3, 32, 32], &dev);
        assert_eq!(net.generator.forward(x.clone()).dims(), [2, 3, 32, 32]);
        assert_eq!(net.disc.forward(x).dims(), [2, 1]);
    }
}
