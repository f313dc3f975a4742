//! Small building blocks shared by the backbones.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

/// Convolution (no bias: BN follows) → BatchNorm → ReLU.
#[derive(Module, Debug)]
pub struct ConvBnRelu {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

impl ConvBnRelu {
    pub fn new(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, dev: &Device) -> Self {
        Self {
            conv: conv(cin, cout, k, stride, pad, dev),
            bn: BatchNormConfig::new(cout).init(dev),
        }
    }
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        crate::cpu::conv_bn(&self.conv, &self.bn, x, true)
    }
}

/// A bias-free convolution with He (fan-out) initialization, as torchvision's ResNet and
/// RotNet's code use for conv layers followed by BN.
pub fn conv(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, dev: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(burn::nn::Initializer::KaimingNormal {
            gain: 2f64.sqrt(),
            fan_out_only: true,
        })
        .init(dev)
}

/// Max pooling, `k×k` window, stride `s`, padding `p` (on our CPU kernels where they apply).
pub fn max_pool(x: Tensor<4>, k: usize, s: usize, p: usize) -> Tensor<4> {
    crate::cpu::max_pool2d(x, k, s, p)
}

/// Average pooling, `k×k` window, stride `s`, padding `p` counted in the divisor.
pub fn avg_pool(x: Tensor<4>, k: usize, s: usize, p: usize) -> Tensor<4> {
    crate::cpu::avg_pool2d(x, k, s, p)
}

/// Global average pooling `[n, c, h, w] → [n, c]`.
pub fn global_avg(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}
