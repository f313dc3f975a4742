//! Non-linear probes (`--probe mlp,conv`): RotNet's classifiers on a frozen layer
//! ([`crate::models::probe`]), trained on the labelled train images with its recipe —
//! random crop (pad 4) and flip, SGD Nesterov lr 0.1, weight decay 5e-4, batch 128, ×0.2
//! steps — and tested once on the test images. Unlike the linear probe these need the
//! feature *map* and its augmentation, so each runs the frozen backbone on every batch: one
//! supervised sub-run per (kind, layer) under `RUN/probes/` (or `RUN/probes-random-init/`),
//! named by its whole configuration, so an interrupted evaluation resumes and a changed
//! setting trains anew. The train and test images are the linear probe's very subsets.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::EvalConfig;
use super::finetune;
use crate::data::{CacheOptions, ImageSet};
use crate::models::probe::ProbeKind;
use crate::run::RunConfig;
use crate::tasks::SupervisedConfig;
use crate::tasks::supervised::FrozenHead;
use crate::train::checkpoint;
use crate::train::{OptimConfig, Schedule, TrainConfig};

/// Which non-linear probes an evaluation trains, and how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadsConfig {
    /// `mlp` and/or `conv` (empty: none; the linear probe always runs).
    pub kinds: Vec<ProbeKind>,
    /// Layers to probe (`None`: every layer).
    pub layers: Option<Vec<String>>,
    /// Epochs of every head (`None`: RotNet's 100).
    pub epochs: Option<usize>,
    pub batch_size: usize,
}

impl Default for HeadsConfig {
    fn default() -> Self {
        Self {
            kinds: vec![],
            layers: None,
            epochs: None,
            batch_size: 128,
        }
    }
}

impl HeadsConfig {
    pub fn validate(&self) -> Result<()> {
        for (i, k) in self.kinds.iter().enumerate() {
            anyhow::ensure!(
                !self.kinds[..i].contains(k),
                "--probe names {} twice",
                k.name()
            );
        }
        anyhow::ensure!(
            !self.kinds.contains(&ProbeKind::Linear),
            "the linear probe always runs; --probe adds mlp and conv"
        );
        anyhow::ensure!(self.epochs != Some(0), "--head-epochs must be at least 1");
        anyhow::ensure!(
            self.batch_size >= 1,
            "the heads' batch size must be at least 1"
        );
        anyhow::ensure!(
            self.layers.is_none() || !self.kinds.is_empty(),
            "--probe-layers chooses the layers of the mlp and conv probes: add --probe mlp or conv"
        );
        Ok(())
    }

    pub fn epochs_of(&self, kind: ProbeKind) -> usize {
        self.epochs.unwrap_or(kind.paper_epochs())
    }

    /// The layers probed, checked against the backbone's.
    pub fn layers_of(&self, taps: &[String]) -> Result<Vec<String>> {
        match &self.layers {
            None => Ok(taps.to_vec()),
            Some(ls) => {
                for l in ls {
                    if !taps.contains(l) {
                        bail!("no layer {l:?} to probe (the layers: {})", taps.join(", "));
                    }
                }
                Ok(ls.clone())
            }
        }
    }
}

/// One non-linear probe's test accuracy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadResult {
    pub kind: ProbeKind,
    pub top1: f64,
    pub top5: f64,
    pub epochs: usize,
    /// The sub-run that trained it.
    pub run: String,
}

/// Train and test every asked-for head of run `run` (its checkpoint, or at `random_init`
/// the same network freshly initialized); returns (layer, result) pairs.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    run: &Path,
    rc: &RunConfig,
    data: &Path,
    random_init: bool,
    test: Arc<ImageSet>,
    classes: usize,
    cfg: &EvalConfig,
    cache: &CacheOptions,
    dev: &Device,
    progress: bool,
) -> Result<Vec<(String, HeadResult)>> {
    let heads = &cfg.heads;
    if heads.kinds.is_empty() {
        return Ok(vec![]);
    }
    let run = std::fs::canonicalize(run).unwrap_or_else(|_| run.to_path_buf());
    // Which checkpoint a head was trained on is part of its identity.
    let identity = if random_init {
        String::new()
    } else {
        let Some((_, state)) = checkpoint::latest(&run)? else {
            bail!("{}: no checkpoint to evaluate", run.display());
        };
        serde_json::to_string(&checkpoint::TrainState { log: None, ..state })?
    };
    let taps = rc.backbone.tap_names();
    let layers = heads.layers_of(&taps)?;
    let folder = run.join(if random_init {
        "probes-random-init"
    } else {
        "probes"
    });
    let mut out = vec![];
    for layer in &layers {
        for &kind in &heads.kinds {
            let epochs = heads.epochs_of(kind);
            let task = SupervisedConfig {
                classes,
                label_fraction: None,
                subset_seed: 0,
                init_from: (!random_init).then(|| run.clone()),
                per_class: None,
                epoch_size: None,
                frozen: Some(FrozenHead {
                    kind,
                    layer: layer.clone(),
                }),
            };
            let train = TrainConfig {
                epochs,
                batch_size: heads.batch_size,
                optim: OptimConfig::rotnet(),
                schedule: Schedule::Step {
                    milestones: kind.milestones(),
                    gamma: 0.2,
                },
                seed: cfg.seed,
                log_every: 10,
                keep_checkpoints: 1,
            };
            // The linear probe's subset: the same count and seed.
            let sub = finetune::labelled_run(rc, data, cache, cfg.train_images, &task, train)?;
            let dir = folder.join(format!(
                "{}-{layer}-{}",
                kind.name(),
                finetune::config_hash(&sub, &identity)?
            ));
            let what = format!(
                "{} probe on {layer} ({}){}",
                kind.name(),
                if random_init { "random init" } else { "frozen" },
                if epochs == kind.paper_epochs() {
                    String::new()
                } else {
                    format!(", {epochs} epochs (RotNet: {})", kind.paper_epochs())
                }
            );
            let said = progress.then_some(what.as_str());
            let (top1, top5) = finetune::train_and_test(&dir, sub, test.clone(), cache, dev, said)?;
            out.push((
                layer.clone(),
                HeadResult {
                    kind,
                    top1,
                    top5,
                    epochs,
                    run: dir.display().to_string(),
                },
            ));
        }
    }
    Ok(out)
}
