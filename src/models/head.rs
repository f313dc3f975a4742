//! A backbone with a linear classifier on its globally pooled last tap: RotNet's head on
//! NIN, and the supervised baseline's head.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::Classifier;
use super::layers::global_avg;
use super::{Backbone, BackboneConfig};

#[derive(Module, Debug)]
pub struct ClassifierNet {
    pub backbone: Backbone,
    pub head: Linear,
}

impl ClassifierNet {
    pub fn new(cfg: &BackboneConfig, classes: usize, dev: &Device) -> Self {
        let backbone = cfg.init(dev);
        let c = *backbone.tap_channels().last().expect("taps");
        Self {
            backbone,
            head: LinearConfig::new(c, classes).init(dev),
        }
    }
}

impl Classifier for ClassifierNet {
    fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.forward(global_avg(self.backbone.forward(x)))
    }
}
