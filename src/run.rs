//! A run directory: the resolved configuration (`config.toml`), checkpoints, the metrics log,
//! the task preview and evaluation results. Every command can be re-run from it alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::augment::{AugmentConfig, Normalize};
use crate::data::{self, CacheOptions, ImageSet, Split};
use crate::fsutil;
use crate::models::BackboneConfig;
use crate::models::head::ClassifierNet;
use crate::tasks::{PretextTask, Rotation, TaskConfig};
use crate::train::TrainConfig;
use crate::train::trainer::{TrainOutcome, Trainer};

/// What the network sees: RGB, or lightness only (colorization). Recorded so evaluation
/// feeds a checkpoint the input it was trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputTransform {
    Rgb,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub data: PathBuf,
    pub split: Split,
    /// Images of the split used for pretraining (`None`: all).
    pub train_images: Option<usize>,
    pub image_size: usize,
    pub input: InputTransform,
    pub backbone: BackboneConfig,
    pub task: TaskConfig,
    pub augment: AugmentConfig,
    pub normalize: Normalize,
    pub train: TrainConfig,
}

impl RunConfig {
    pub fn path(run: &Path) -> PathBuf {
        run.join("config.toml")
    }
    pub fn load(run: &Path) -> Result<Self> {
        let p = Self::path(run);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "{}: no run configuration (is this a pretext run directory?)",
                p.display()
            )
        })?;
        toml::from_str(&text)
            .with_context(|| format!("{}: not a valid run configuration", p.display()))
    }
    pub fn save(&self, run: &Path) -> Result<()> {
        fsutil::write_bytes(&Self::path(run), toml::to_string_pretty(self)?.as_bytes())
    }
    /// Outputs of the pretext head.
    pub fn task_classes(&self) -> usize {
        match &self.task {
            TaskConfig::Rotation(r) => r.angles,
        }
    }
    pub fn build_task(&self) -> Result<Rotation> {
        match &self.task {
            TaskConfig::Rotation(r) => Rotation::new(
                r.clone(),
                self.augment.clone(),
                self.normalize.clone(),
                self.backbone.in_channels,
            ),
        }
    }
}

/// A seeded random subset of `0..n` of size `take` (sorted), or everything.
pub fn subset_indices(n: usize, take: Option<usize>, seed: u64) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    if let Some(t) = take
        && t < n
    {
        all.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5u64));
        all.truncate(t);
        all.sort_unstable();
    }
    all
}

/// Check that images of `set` fit a task that needs `need` pixels a side.
pub fn check_size(set: &ImageSet, need: usize, data: &Path) -> Result<()> {
    let h = &set.header;
    if h.h.min(h.w) < need {
        bail!(
            "{}: images are {}×{}, but the task needs at least {need}×{need} (lower --crop, or use larger images)",
            data.display(),
            h.w,
            h.h
        );
    }
    Ok(())
}

/// Open a data set split the way runs do.
pub fn open_split(root: &Path, split: Split, opts: &CacheOptions) -> Result<Arc<ImageSet>> {
    Ok(Arc::new(data::open(root, split, opts)?))
}

pub struct Pretrain<'a> {
    pub run: &'a Path,
    pub device: &'a Device,
    pub progress: bool,
    pub stop_after: Option<usize>,
    pub cache: &'a CacheOptions,
}

impl Pretrain<'_> {
    /// Start a run with `cfg` (or continue it when `resume`), train, and return the outcome.
    pub fn run(&self, cfg: Option<RunConfig>, resume: bool) -> Result<(RunConfig, TrainOutcome)> {
        let cfg = match (cfg, resume) {
            (_, true) => RunConfig::load(self.run)?,
            (Some(c), false) => {
                if RunConfig::path(self.run).exists() {
                    bail!(
                        "{} already holds a run; continue it with --resume, or choose another --out",
                        self.run.display()
                    );
                }
                std::fs::create_dir_all(self.run)
                    .with_context(|| format!("creating {}", self.run.display()))?;
                c.save(self.run)?;
                c
            }
            (None, false) => bail!("no configuration given"),
        };
        let set = open_split(&cfg.data, cfg.split, self.cache)?;
        let task = Arc::new(cfg.build_task()?);
        check_size(&set, task.min_image_size(), &cfg.data)?;
        let indices = subset_indices(set.len(), cfg.train_images, cfg.train.seed);
        if !resume || !self.run.join("preview.png").exists() {
            // Spread over the whole subset so the sheet is not one class of a sorted tree.
            let step = (indices.len() / 8).max(1);
            let picks: Vec<usize> = indices.iter().step_by(step).take(8).copied().collect();
            let preview_set = set.subset(&picks);
            task.preview(&preview_set, &self.run.join("preview.png"), cfg.train.seed)?;
        }
        let train_dev = crate::device::training(self.device);
        train_dev.seed(cfg.train.seed);
        let model = ClassifierNet::new(&cfg.backbone, task.num_classes(), &train_dev);
        let trainer = Trainer {
            run: self.run,
            cfg: &cfg.train,
            device: &train_dev,
            progress: self.progress,
            stop_after: self.stop_after,
            prefetch: 2,
        };
        let (_model, outcome) = trainer.fit(model, task, set, &indices, resume)?;
        Ok((cfg, outcome))
    }
}

/// Normalisation statistics of a split (from up to 10k images).
pub fn normalize_for(set: &ImageSet) -> Normalize {
    let (mean, std) = set.channel_stats(10_000);
    Normalize { mean, std }
}
