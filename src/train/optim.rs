//! Optimizer settings (serialisable, so a run's config fully describes it) → burn optimizers.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, ModuleOptimizer, SgdConfig};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimKind {
    Sgd,
    Adam,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub lr: f64,
    pub weight_decay: f64,
    /// SGD momentum (0 disables it).
    pub momentum: f64,
    pub nesterov: bool,
    /// Adam's β1 and β2.
    pub betas: (f64, f64),
}

impl OptimConfig {
    /// RotNet's CIFAR optimizer: SGD, Nesterov momentum 0.9, weight decay 5e-4, lr 0.1.
    pub fn rotnet() -> Self {
        Self {
            kind: OptimKind::Sgd,
            lr: 0.1,
            weight_decay: 5e-4,
            momentum: 0.9,
            nesterov: true,
            betas: (0.9, 0.999),
        }
    }

    pub fn init(&self) -> ModuleOptimizer {
        let wd =
            (self.weight_decay > 0.0).then_some(WeightDecayConfig::new(self.weight_decay as f32));
        match self.kind {
            OptimKind::Sgd => {
                // burn's dampening defaults to 0.1; the papers' (PyTorch's) SGD has none.
                let momentum = (self.momentum > 0.0).then_some(MomentumConfig {
                    momentum: self.momentum,
                    dampening: 0.0,
                    nesterov: self.nesterov,
                });
                SgdConfig::new()
                    .with_momentum(momentum)
                    .with_weight_decay(wd)
                    .init()
            }
            OptimKind::Adam => AdamConfig::new()
                .with_beta_1(self.betas.0 as f32)
                .with_beta_2(self.betas.1 as f32)
                .with_weight_decay(wd)
                .init(),
        }
    }
}
