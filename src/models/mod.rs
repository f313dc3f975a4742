//! Backbones with named feature taps. Every evaluation protocol asks a backbone for "the
//! feature map at tap X"; the pretext tasks put their heads on the last tap.

pub mod alexnet;
pub mod context_encoder;
pub mod head;
pub mod hypercolumn;
pub mod layers;
pub mod nin;
pub mod probe;
pub mod resnet;
pub mod tiles;
pub mod torch;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use alexnet::AlexNet;
pub use nin::Nin;
pub use resnet::ResNet;

/// A network that maps a batch of inputs to class logits (the trainer's blanket
/// [`crate::train::trainer::Learner`] trains every one with cross-entropy).
pub trait Classifier: Module {
    fn logits(&self, x: Tensor<4>) -> Tensor<2>;
}

/// The architectures pretext builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// RotNet's Network-in-Network (CIFAR); taps block1..blockN.
    Nin,
    /// AlexNet-style conv1..conv5 with BN, scaled to the input size.
    Alexnet,
    /// ResNet-18 with the CIFAR stem (3×3 stride 1, no max-pool).
    Resnet18Cifar,
    /// ResNet-18, ImageNet stem.
    Resnet18,
    /// ResNet-50, ImageNet stem.
    Resnet50,
}

/// Everything needed to rebuild a backbone (saved in every run's config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackboneConfig {
    pub arch: Arch,
    /// Base width: NIN's 192, AlexNet's conv1 64, ResNet's stem 64.
    pub width: usize,
    /// NIN only: number of blocks (RotNet's CIFAR default is 4).
    pub blocks: usize,
    /// Input channels (3 for RGB).
    pub in_channels: usize,
    /// Side of the square input the net is built for.
    pub input_size: usize,
}

impl BackboneConfig {
    pub fn new(arch: Arch, input_size: usize) -> Self {
        let width = match arch {
            Arch::Nin => 192,
            _ => 64,
        };
        Self {
            arch,
            width,
            blocks: 4,
            in_channels: 3,
            input_size,
        }
    }
    /// Refuse a network that cannot be built (a zero width crashed burn's batch norm).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.width >= 1, "--width must be at least 1");
        anyhow::ensure!(
            self.arch != Arch::Nin || self.blocks >= 1,
            "NIN needs at least 1 block (--blocks)"
        );
        anyhow::ensure!(self.in_channels >= 1, "the input needs at least 1 channel");
        anyhow::ensure!(
            self.input_size >= 1,
            "the input needs at least 1 pixel a side"
        );
        Ok(())
    }

    /// The taps' names, as the built network gives them, without building it (a check of
    /// a layer name need not initialise a ResNet-50).
    pub fn tap_names(&self) -> Vec<String> {
        match self.arch {
            Arch::Nin => (1..=self.blocks).map(|b| format!("block{b}")).collect(),
            Arch::Alexnet => (1..=5).map(|i| format!("conv{i}")).collect(),
            Arch::Resnet18Cifar | Arch::Resnet18 | Arch::Resnet50 => std::iter::once("stem".into())
                .chain((1..=4).map(|i| format!("layer{i}")))
                .collect(),
        }
    }

    pub fn init(&self, dev: &Device) -> Backbone {
        match self.arch {
            Arch::Nin => Backbone::Nin(Nin::new(self.in_channels, self.blocks, self.width, dev)),
            Arch::Alexnet => Backbone::AlexNet(AlexNet::new(
                self.in_channels,
                self.input_size,
                self.width,
                dev,
            )),
            Arch::Resnet18Cifar => {
                Backbone::ResNet(ResNet::new(self.in_channels, 18, self.width, false, dev))
            }
            Arch::Resnet18 => {
                Backbone::ResNet(ResNet::new(self.in_channels, 18, self.width, true, dev))
            }
            Arch::Resnet50 => {
                Backbone::ResNet(ResNet::new(self.in_channels, 50, self.width, true, dev))
            }
        }
    }
}

// Built once per run, so the size gap between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone {
    Nin(Nin),
    AlexNet(AlexNet),
    ResNet(ResNet),
}

impl Backbone {
    pub fn tap_names(&self) -> Vec<String> {
        match self {
            Backbone::Nin(m) => m.tap_names(),
            Backbone::AlexNet(m) => m.tap_names(),
            Backbone::ResNet(m) => m.tap_names(),
        }
    }
    pub fn tap_channels(&self) -> Vec<usize> {
        match self {
            Backbone::Nin(m) => m.tap_channels(),
            Backbone::AlexNet(m) => m.tap_channels(),
            Backbone::ResNet(m) => m.tap_channels(),
        }
    }
    /// Index of a tap by name.
    pub fn tap_index(&self, name: &str) -> Option<usize> {
        self.tap_names().iter().position(|t| t == name)
    }
    /// Feature maps at taps `0..=last`, from one forward pass.
    pub fn forward_taps(&self, x: Tensor<4>, last: usize) -> Vec<Tensor<4>> {
        match self {
            Backbone::Nin(m) => m.forward_taps(x, last),
            Backbone::AlexNet(m) => m.forward_taps(x, last),
            Backbone::ResNet(m) => m.forward_taps(x, last),
        }
    }
    /// Feature maps at every tap.
    pub fn forward_all(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let last = self.tap_names().len() - 1;
        self.forward_taps(x, last)
    }
    /// The last tap only.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_all(x).pop().expect("at least one tap")
    }
}

/// Side of the square average-pool grid that brings a `channels`-deep map of side `side`
/// closest to `target` dimensions (never above the map's own side).
pub fn pool_grid(channels: usize, side: usize, target: usize) -> usize {
    let ideal = (target as f64 / channels as f64).sqrt();
    let mut best = 1;
    let mut best_err = f64::INFINITY;
    for g in 1..=side.max(1) {
        let err = ((channels * g * g) as f64 / target as f64).ln().abs();
        if err < best_err {
            best_err = err;
            best = g;
        }
        if g as f64 > ideal + 1.0 {
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names said without building are the built network's, for every architecture.
    #[test]
    fn tap_names_without_building_match_the_network() {
        let dev = Device::flex();
        for arch in [
            Arch::Nin,
            Arch::Alexnet,
            Arch::Resnet18Cifar,
            Arch::Resnet18,
            Arch::Resnet50,
        ] {
            let mut cfg = BackboneConfig::new(arch, 32);
            cfg.width = 8;
            cfg.blocks = 3;
            assert_eq!(cfg.tap_names(), cfg.init(&dev).tap_names(), "{arch:?}");
        }
    }

    #[test]
    fn pooling_grid_targets_about_9k() {
        // 192 channels: 7×7 → 9408 (closest to 9216 among 6×6=6912, 7×7, 8×8=12288).
        assert_eq!(pool_grid(192, 16, 9216), 7);
        // 256 channels: 6×6 = 9216 exactly.
        assert_eq!(pool_grid(256, 8, 9216), 6);
        // A 4×4 map cannot be pooled to a finer grid than its own.
        assert_eq!(pool_grid(96, 4, 9216), 4);
        // 512 channels: 4×4 = 8192 beats 5×5 = 12800.
        assert_eq!(pool_grid(512, 4, 9216), 4);
        assert_eq!(pool_grid(2048, 1, 9216), 1);
    }

    #[test]
    fn every_backbone_exposes_its_taps_with_the_right_shapes() {
        let dev = Device::flex();
        let x = Tensor::<4>::zeros([2, 3, 32, 32], &dev);
        let cases = [
            (Arch::Nin, vec![16, 8, 8, 8]),
            (Arch::Alexnet, vec![16, 8, 8, 8, 4]),
            (Arch::Resnet18Cifar, vec![32, 32, 16, 8, 4]),
            (Arch::Resnet18, vec![8, 8, 4, 2, 1]),
        ];
        for (arch, sides) in cases {
            let mut cfg = BackboneConfig::new(arch, 32);
            cfg.width = 16;
            let net = cfg.init(&dev);
            let taps = net.forward_all(x.clone());
            let chans = net.tap_channels();
            assert_eq!(taps.len(), net.tap_names().len(), "{arch:?}");
            for (t, (&s, &c)) in taps.iter().zip(sides.iter().zip(&chans)) {
                assert_eq!(t.dims(), [2, c, s, s], "{arch:?}");
            }
        }
    }
}
