//! Non-linear classifiers on one tap of a frozen backbone, as RotNet evaluates its features
//! (Gidaris et al. 2018, official code: `architectures/NonLinearClassifier.py` and the
//! `CIFAR10_{ConvClassifier,MultLayerClassifier}_on_RotNet_NIN4blocks_Conv2_feats` configs):
//!
//! - `mlp` (`MultLayer`): the flattened map → Linear(no bias) → BN → ReLU → Linear(no bias)
//!   → BN → ReLU → Linear, hidden width min(20 × classes, 2048);
//! - `conv` (`NIN_ConvBlock3`): the shape of the next NIN block (3×3 — or 5×5 after NIN's
//!   first block — then two 1×1, each conv + BN + ReLU), global average pooling, Linear.
//!
//! The trunk is frozen the way that code freezes it: in eval mode (BatchNorm on its running
//! statistics, never updated) and outside the gradient graph, so only the head trains. The
//! trunk is a field of the network all the same, so a checkpoint holds everything the
//! classifier needs and resumes without the run it came from.

use burn::module::{Module, Param};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::layers::{ConvBnRelu, global_avg};
use super::{Backbone, BackboneConfig, Classifier};

/// How a frozen layer's features are classified.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// One linear layer on the pooled, standardized features (the linear protocol).
    #[default]
    Linear,
    /// RotNet's 3-layer MLP on the flattened map.
    Mlp,
    /// RotNet's conv block (the next NIN block's shape) + global pooling + linear.
    Conv,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Linear => "linear",
            ProbeKind::Mlp => "mlp",
            ProbeKind::Conv => "conv",
        }
    }

    /// RotNet's schedule for this head, as fractions of the run: both train 100 epochs
    /// from lr 0.1 (SGD Nesterov 0.9, weight decay 5e-4, batch 128); the conv classifier
    /// drops ×0.2 at epochs 35/70/85, the MLP at 20/40/45 and then keeps its last rate to
    /// epoch 100 (its `LUT_lr` ends at 50 and `max_num_epochs` is 100).
    pub fn milestones(self) -> Vec<f64> {
        match self {
            ProbeKind::Mlp => vec![0.2, 0.4, 0.45],
            _ => vec![0.35, 0.7, 0.85],
        }
    }

    /// RotNet's epochs for this head: 100 for both.
    pub fn paper_epochs(self) -> usize {
        100
    }
}

/// The most inputs the MLP takes: a larger map is average-pooled to the largest square grid
/// that fits. 16384 keeps RotNet's setting — NIN's second block at 8×8×192 = 12288,
/// flattened unpooled — and bounds the first layer on large maps (AlexNet's conv1 at
/// 224 px is 290k values).
pub const MLP_MAX_INPUTS: usize = 16384;

/// Side of the grid a `channels`-deep map of side `side` is pooled to for the MLP.
pub fn mlp_grid(channels: usize, side: usize) -> usize {
    (1..=side.max(1))
        .rev()
        .find(|g| channels * g * g <= MLP_MAX_INPUTS)
        .unwrap_or(1)
}

/// A linear layer initialised as RotNet's classifiers are: N(0, √(2 / out)), bias 0.
fn linear(i: usize, o: usize, bias: bool, dev: &Device) -> Linear {
    let mut l = LinearConfig::new(i, o)
        .with_bias(bias)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: (2.0 / o as f64).sqrt(),
        })
        .init(dev);
    if bias {
        l.bias = Some(Param::from_tensor(Tensor::zeros([o], dev)));
    }
    l
}

#[derive(Module, Debug)]
pub struct MlpHead {
    pub fc1: Linear,
    pub bn1: BatchNorm,
    pub fc2: Linear,
    pub bn2: BatchNorm,
    pub out: Linear,
    /// The map is pooled to `grid × grid` before flattening (its own side: not pooled).
    pub grid: usize,
}

impl MlpHead {
    pub fn new(channels: usize, side: usize, classes: usize, dev: &Device) -> Self {
        let grid = mlp_grid(channels, side);
        let hidden = (20 * classes).min(2048);
        Self {
            fc1: linear(channels * grid * grid, hidden, false, dev),
            bn1: BatchNormConfig::new(hidden).init(dev),
            fc2: linear(hidden, hidden, false, dev),
            bn2: BatchNormConfig::new(hidden).init(dev),
            out: linear(hidden, classes, true, dev),
            grid,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let [n, c, h, _] = x.dims();
        let x = if self.grid == h {
            x
        } else {
            adaptive_avg_pool2d(x, [self.grid, self.grid])
        };
        let x = x.reshape([n, c * self.grid * self.grid]);
        let x = burn::tensor::activation::relu(self.bn1.forward(self.fc1.forward(x)));
        let x = burn::tensor::activation::relu(self.bn2.forward(self.fc2.forward(x)));
        self.out.forward(x)
    }
}

#[derive(Module, Debug)]
pub struct ConvHead {
    pub convs: Vec<ConvBnRelu>,
    pub out: Linear,
}

impl ConvHead {
    /// Convolutions `channels → width` with a `kernel`-wide first one, then two 1×1.
    pub fn new(channels: usize, width: usize, kernel: usize, classes: usize, dev: &Device) -> Self {
        Self {
            convs: vec![
                ConvBnRelu::new(channels, width, kernel, 1, kernel / 2, dev),
                ConvBnRelu::new(width, width, 1, 1, 0, dev),
                ConvBnRelu::new(width, width, 1, 1, 0, dev),
            ],
            out: linear(width, classes, true, dev),
        }
    }

    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<2> {
        for c in &self.convs {
            x = c.forward(x);
        }
        self.out.forward(global_avg(x))
    }
}

// One per network, so the size gap between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ProbeHead {
    Mlp(MlpHead),
    Conv(ConvHead),
}

/// A classifier of kind `kind` on tap `tap` of a frozen backbone.
#[derive(Module, Debug)]
pub struct FrozenTapNet {
    pub backbone: Backbone,
    pub head: ProbeHead,
    pub tap: usize,
}

impl FrozenTapNet {
    /// A head for tap `tap` (by name) of `backbone` (as built from `cfg`), for `classes`.
    pub fn new(
        cfg: &BackboneConfig,
        backbone: Backbone,
        tap: &str,
        kind: ProbeKind,
        classes: usize,
        dev: &Device,
    ) -> anyhow::Result<Self> {
        let names = backbone.tap_names();
        let Some(t) = backbone.tap_index(tap) else {
            anyhow::bail!(
                "{:?} has no layer {tap:?} (its layers: {})",
                cfg.arch,
                names.join(", ")
            );
        };
        // The tap's shape, from one forward pass of a blank image.
        let blank = Tensor::<4>::zeros([1, cfg.in_channels, cfg.input_size, cfg.input_size], dev);
        let [_, channels, side, _] = backbone
            .valid()
            .forward_taps(blank.inner(), t)
            .pop()
            .expect("a tap")
            .dims();
        let head = match kind {
            ProbeKind::Mlp => ProbeHead::Mlp(MlpHead::new(channels, side, classes, dev)),
            ProbeKind::Conv => {
                let (width, kernel) = conv_head_shape(&backbone, t, channels);
                ProbeHead::Conv(ConvHead::new(channels, width, kernel, classes, dev))
            }
            ProbeKind::Linear => {
                anyhow::bail!("the linear probe runs on cached features, not as a network")
            }
        };
        Ok(Self {
            backbone,
            head,
            tap: t,
        })
    }
}

/// Width and first kernel of the conv head after tap `t`: NIN's next block (5×5 after the
/// first block, 3×3 after later ones — and after the last, the shape its blocks 3+ have);
/// on other backbones a block of the same form at the tap's own width.
fn conv_head_shape(backbone: &Backbone, t: usize, channels: usize) -> (usize, usize) {
    match backbone {
        Backbone::Nin(nin) => {
            let width = nin.blocks[0].convs[0].bn.gamma.dims()[0];
            (width, if t == 0 { 5 } else { 3 })
        }
        _ => (channels, 3),
    }
}

impl Classifier for FrozenTapNet {
    fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        let training = x.device().is_autodiff();
        // Frozen: the inference copy (running statistics, nothing recorded), on a plain
        // input; its output enters the head's graph as a constant.
        let map = self
            .backbone
            .valid()
            .forward_taps(x.inner(), self.tap)
            .pop()
            .expect("a tap");
        let map = if training { map.autodiff() } else { map };
        match &self.head {
            ProbeHead::Mlp(h) => h.forward(map),
            ProbeHead::Conv(h) => h.forward(map),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Arch;
    use crate::train::trainer::{Learner, Step};
    use crate::train::{OptimConfig, checkpoint};

    #[test]
    fn mlp_grid_keeps_rotnets_flattened_block2_and_bounds_large_maps() {
        // NIN block 2 on CIFAR: 192 × 8 × 8 = 12288 ≤ 16384, not pooled.
        assert_eq!(mlp_grid(192, 8), 8);
        // NIN block 1: 96 × 16 × 16 = 24576 → 13 × 13 × 96 = 16224.
        assert_eq!(mlp_grid(96, 16), 13);
        // AlexNet conv1 at 224 px: 96 × 55 × 55 → 13 × 13.
        assert_eq!(mlp_grid(96, 55), 13);
        // Wider than the budget at 1 × 1: still one cell.
        assert_eq!(mlp_grid(20000, 4), 1);
    }

    fn params(m: &impl Module) -> Vec<f32> {
        let mut out = vec![];
        struct Collect<'a>(&'a mut Vec<f32>);
        impl burn::module::ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                self.0.extend(
                    p.val()
                        .into_data()
                        .convert::<f32>()
                        .try_to_vec::<f32>()
                        .unwrap(),
                );
            }
        }
        m.visit(&mut Collect(&mut out));
        out
    }

    fn running_mean(net: &FrozenTapNet) -> Vec<f32> {
        let Backbone::Nin(nin) = &net.backbone else {
            panic!("NIN")
        };
        let bn = &nin.blocks[0].convs[0].bn;
        bn.running_mean
            .value()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    /// One optimizer step trains the head and leaves the trunk — weights and BN running
    /// statistics — exactly as it was; the head's shapes follow RotNet's.
    #[test]
    fn a_step_trains_the_head_and_leaves_the_trunk_untouched() {
        let dev = Device::flex().autodiff();
        dev.seed(5);
        let mut cfg = BackboneConfig::new(Arch::Nin, 16);
        cfg.width = 16;
        for (kind, tap) in [(ProbeKind::Conv, "block2"), (ProbeKind::Mlp, "block1")] {
            let backbone = cfg.init(&dev);
            let net = FrozenTapNet::new(&cfg, backbone, tap, kind, 10, &dev).unwrap();
            match &net.head {
                ProbeHead::Conv(h) => {
                    // After NIN's block 2: block 3's shape, 3×3 at the NIN width.
                    assert_eq!(h.convs[0].conv.weight.dims(), [16, 16, 3, 3]);
                    assert_eq!(h.out.weight.dims(), [16, 10]);
                }
                ProbeHead::Mlp(h) => {
                    // Block 1 of NIN-16 at 16 px: 8 channels × 8 × 8, hidden 200.
                    assert_eq!(h.grid, 8);
                    assert_eq!(h.fc1.weight.dims(), [8 * 8 * 8, 200]);
                }
            }
            let trunk_before = params(&net.backbone);
            let stats_before = running_mean(&net);
            let head_before = params(&net.head);
            let mut optim = OptimConfig::rotnet().init();
            let batch = crate::data::loader::Batch {
                inputs: (0..4 * 3 * 16 * 16).map(|i| (i % 7) as f32 / 7.0).collect(),
                shape: [4, 3, 16, 16],
                targets: vec![0, 1, 2, 3],
                aux: vec![],
                images: 4,
                indices: vec![0, 1, 2, 3],
            };
            let (net, _) = net.train_step(Step {
                batch,
                dev: &dev,
                optim: &mut optim,
                lr: 0.1,
            });
            assert_eq!(params(&net.backbone), trunk_before, "{kind:?}: trunk moved");
            let head_after = params(&net.head);
            assert!(
                head_after
                    .iter()
                    .zip(&head_before)
                    .any(|(a, b)| (a - b).abs() > 1e-6),
                "{kind:?}: the head did not train"
            );
            assert_eq!(
                running_mean(&net),
                stats_before,
                "{kind:?}: BN statistics moved"
            );
            // The checkpoint holds the trunk too.
            let dir = tempfile::tempdir().unwrap();
            let state = checkpoint::TrainState::default();
            let ck = checkpoint::save(dir.path(), &net, &optim, &state, 1).unwrap();
            let fresh = FrozenTapNet::new(&cfg, cfg.init(&dev), tap, kind, 10, &dev).unwrap();
            let back = checkpoint::load_model(fresh, &ck).unwrap();
            assert_eq!(params(&back.backbone), trunk_before);
        }
    }

    #[test]
    fn an_unknown_layer_names_the_layers() {
        let dev = Device::flex();
        let mut cfg = BackboneConfig::new(Arch::Nin, 16);
        cfg.width = 8;
        let e = FrozenTapNet::new(&cfg, cfg.init(&dev), "conv9", ProbeKind::Conv, 10, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("block1, block2, block3, block4"), "{e}");
    }
}
