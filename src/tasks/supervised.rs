//! The supervised baseline as a task: the image's class is the target. With a label
//! fraction it trains on a balanced per-class subset (the few-label protocol), and with
//! `init_from` it starts from another run's backbone (fine-tuning a pretrained network).

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{PretextTask, Task, TaskConfig};
use crate::data::ImageSet;
use crate::data::augment::{AugmentConfig, Normalize, crop_image};
use crate::data::lab::InputTransform;
use crate::data::loader::{SampleMaker, SampleOut, make_one, preview_indices};
use crate::draw::preview::{self, Cell};
use crate::models::head::ClassifierNet;
use crate::models::probe::{FrozenTapNet, ProbeKind};
use crate::run::{Job, RunConfig, load_backbone, subset_indices};
use crate::train::TrainOutcome;
use crate::train::checkpoint;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SupervisedConfig {
    pub classes: usize,
    /// Train on this fraction of each class (a balanced subset), e.g. 0.01 for 1%.
    #[serde(default)]
    pub label_fraction: Option<f64>,
    /// Seed of the balanced subset.
    #[serde(default)]
    pub subset_seed: u64,
    /// A run directory whose backbone initializes this one (fine-tuning); a new linear head
    /// is trained on top.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Train on this many images of each class (seeded) instead of a fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_class: Option<usize>,
    /// Samples per epoch: the subset is gone through again (each pass in its own order,
    /// with its own augmentation) until an epoch has this many. RotNet's semi-supervised
    /// runs use 50000 whatever the number of labels, so 20 labels per class get as many
    /// optimizer steps as 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_size: Option<usize>,
    /// Train only a classifier of this kind on this layer of the backbone, which stays
    /// frozen (RotNet's non-linear evaluation and its semi-supervised protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<FrozenHead>,
}

/// A classifier on one layer of a frozen backbone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrozenHead {
    pub kind: ProbeKind,
    pub layer: String,
}

/// `indices` gone through as many times as an epoch of `size` samples needs (the last pass
/// cut short); at least once.
pub fn fill_epoch(indices: Vec<usize>, size: Option<usize>) -> Vec<usize> {
    match size {
        Some(size) if size > indices.len() && !indices.is_empty() => {
            indices.iter().copied().cycle().take(size).collect()
        }
        _ => indices,
    }
}

/// A balanced subset: `round(fraction × count)` images of every class (seeded), sorted.
/// Fails when a class would get none.
pub fn balanced_subset(
    labels: &[u16],
    classes: usize,
    fraction: f64,
    seed: u64,
) -> anyhow::Result<Vec<usize>> {
    anyhow::ensure!(
        fraction > 0.0 && fraction <= 1.0,
        "the label fraction must be in (0, 1], got {fraction}"
    );
    stratified(labels, classes, seed, |c, n| {
        let take = (fraction * n as f64).round() as usize;
        anyhow::ensure!(
            take > 0,
            "a label fraction of {fraction} leaves class {c} ({n} images) with none; raise the fraction"
        );
        Ok(take)
    })
}

/// `per_class` images of every class (seeded), sorted. Fails when a class has fewer.
pub fn per_class_subset(
    labels: &[u16],
    classes: usize,
    per_class: usize,
    seed: u64,
) -> anyhow::Result<Vec<usize>> {
    anyhow::ensure!(per_class >= 1, "the labels per class must be at least 1");
    stratified(labels, classes, seed, |c, n| {
        anyhow::ensure!(
            n >= per_class,
            "{per_class} labels per class asked for, and class {c} has {n} images"
        );
        Ok(per_class)
    })
}

/// `take(class, its count)` images of every class, each class shuffled in turn by one
/// seeded generator; sorted.
fn stratified(
    labels: &[u16],
    classes: usize,
    seed: u64,
    take: impl Fn(usize, usize) -> anyhow::Result<usize>,
) -> anyhow::Result<Vec<usize>> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (c, mut members) in by_class.into_iter().enumerate() {
        let k = take(c, members.len())?;
        members.shuffle(&mut rng);
        out.extend_from_slice(&members[..k]);
    }
    out.sort_unstable();
    Ok(out)
}

pub struct Supervised {
    pub cfg: SupervisedConfig,
    pub augment: AugmentConfig,
    pub norm: Normalize,
    pub input: InputTransform,
    /// Channels of the source images.
    pub image_channels: usize,
}

impl SampleMaker for Supervised {
    fn samples_per_image(&self) -> usize {
        1
    }
    fn input_shape(&self) -> [usize; 3] {
        let s = self.augment.crop;
        [self.input.channels(self.image_channels), s, s]
    }
    fn make(&self, set: &ImageSet, index: usize, rng: &mut ChaCha8Rng, out: SampleOut<'_>) {
        let h = &set.header;
        let s = self.augment.crop;
        let mut rgb = vec![0.0; h.c * s * s];
        let at = self.augment.sample(h.h, h.w, rng);
        crop_image(set, index, &self.augment, at, &mut rgb);
        self.input.apply(&rgb, h.c, out.inputs);
        self.norm.apply(out.inputs);
        // Runs check for labels before training; -1 would fail loudly in the loss.
        out.targets[0] = set.label(index).map_or(-1, i64::from);
    }
}

impl PretextTask for Supervised {
    fn name(&self) -> &'static str {
        "supervised"
    }
    fn num_classes(&self) -> usize {
        self.cfg.classes
    }
    fn preview(&self, set: &ImageSet, path: &Path, seed: u64) -> anyhow::Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let [c, h, w] = self.input_shape();
        let row: Vec<Cell> = preview_indices(set)
            .into_iter()
            .map(|index| {
                let (mut x, t, _) = make_one(self, set, index, &mut rng);
                self.norm.undo(&mut x);
                Cell {
                    chw: x,
                    c,
                    h,
                    w,
                    caption: format!("{}", t[0]),
                }
            })
            .collect();
        preview::save(&preview::sheet(&[row], (96 / h).max(1)), path)
    }
}

/// The supervised baseline in the task registry: trained like a pretext task, on labels.
pub struct SupervisedTask;
pub static TASK: SupervisedTask = SupervisedTask;

impl Task for SupervisedTask {
    fn name(&self) -> &'static str {
        "supervised"
    }
    fn is_pretext(&self) -> bool {
        false
    }
    fn defaults(&self, _side: usize) -> TaskConfig {
        // The class count comes from the data when the run is configured.
        TaskConfig::of(
            self.name(),
            &SupervisedConfig {
                classes: 0,
                label_fraction: None,
                subset_seed: 0,
                init_from: None,
                per_class: None,
                epoch_size: None,
                frozen: None,
            },
        )
    }
    fn normalize(&self, cfg: &TaskConfig) -> anyhow::Result<TaskConfig> {
        cfg.normalized::<SupervisedConfig>()
    }
    fn prepare(&self, cfg: &mut TaskConfig, set: &ImageSet, data: &Path) -> anyhow::Result<()> {
        if !set.is_labelled() {
            anyhow::bail!(
                "{}: supervised training needs labels (class folders), and this split has none",
                data.display()
            );
        }
        let mut s: SupervisedConfig = cfg.typed()?;
        s.classes = set.num_classes();
        // Absolute, so the run can be resumed or evaluated from any working directory.
        s.init_from = s.init_from.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
        *cfg = TaskConfig::of(self.name(), &s);
        Ok(())
    }
    fn init_from(&self, cfg: &TaskConfig) -> anyhow::Result<Option<PathBuf>> {
        Ok(cfg.typed::<SupervisedConfig>()?.init_from)
    }
    fn validate(&self, cfg: &TaskConfig, _augment: &AugmentConfig) -> anyhow::Result<()> {
        let sc: SupervisedConfig = cfg.typed()?;
        anyhow::ensure!(
            sc.classes >= 2,
            "supervised training needs a labelled split with at least 2 classes"
        );
        anyhow::ensure!(
            sc.per_class != Some(0) && sc.epoch_size != Some(0),
            "the labels per class and the epoch size must be at least 1"
        );
        if let Some(f) = &sc.frozen {
            anyhow::ensure!(
                f.kind != ProbeKind::Linear,
                "a frozen head is an mlp or a conv block (the linear probe runs on cached features)"
            );
        }
        Ok(())
    }
    /// A balanced per-class subset with a label fraction, else the seeded subset.
    fn training_indices(&self, rc: &RunConfig, set: &ImageSet) -> anyhow::Result<Vec<usize>> {
        let sc: SupervisedConfig = rc.task.typed()?;
        let Some(labels) = set.header.labels.as_deref() else {
            anyhow::bail!(
                "{}: supervised training needs labels (class folders), and this split has none",
                rc.data.display()
            );
        };
        if let Some(c) = labels.iter().find(|&&c| c as usize >= sc.classes) {
            anyhow::bail!(
                "{}: label {c} is past the run's {} classes",
                rc.data.display(),
                sc.classes
            );
        }
        let subset = match (sc.per_class, sc.label_fraction) {
            (Some(k), _) => per_class_subset(labels, sc.classes, k, sc.subset_seed)?,
            (None, Some(f)) => balanced_subset(labels, sc.classes, f, sc.subset_seed)?,
            (None, None) => subset_indices(set.len(), rc.train_images, rc.train.seed),
        };
        Ok(fill_epoch(subset, sc.epoch_size))
    }
    /// The run it starts from must fit and have a checkpoint — needed only to start: a
    /// run with checkpoints of its own resumes without it.
    fn check_run(&self, rc: &RunConfig, run: &Path) -> anyhow::Result<()> {
        let sc: SupervisedConfig = rc.task.typed()?;
        if let Some(f) = &sc.frozen {
            let names = rc.backbone.tap_names();
            anyhow::ensure!(
                names.contains(&f.layer),
                "{:?} has no layer {:?} (its layers: {})",
                rc.backbone.arch,
                f.layer,
                names.join(", ")
            );
        }
        if let Some(from) = &sc.init_from
            && checkpoint::latest(run)?.is_none()
        {
            let other = RunConfig::load(from)?;
            if other.backbone != rc.backbone || other.input != rc.input {
                anyhow::bail!(
                    "{} was trained with another backbone or input ({:?} {:?}) than this run ({:?} {:?})",
                    from.display(),
                    other.backbone,
                    other.input,
                    rc.backbone,
                    rc.input
                );
            }
            if checkpoint::latest(from)?.is_none() {
                anyhow::bail!(
                    "{}: no checkpoint to start from (train it first)",
                    from.display()
                );
            }
        }
        Ok(())
    }
    fn pretrain(&self, job: &Job) -> anyhow::Result<TrainOutcome> {
        let c = job.cfg;
        let sc: SupervisedConfig = c.task.typed()?;
        let dev = job.train_device;
        // Whenever training will not start from a checkpoint of its own: a run resumed
        // before its first checkpoint must not start from random init.
        let start_from = match &sc.init_from {
            Some(from) if checkpoint::latest(job.run)?.is_none() => Some(from.clone()),
            _ => None,
        };
        let task = Supervised {
            cfg: sc.clone(),
            augment: c.augment.clone(),
            norm: c.normalize.clone(),
            input: c.input,
            image_channels: job.set.header.c,
        };
        match &sc.frozen {
            None => {
                let mut model = ClassifierNet::new(&c.backbone, sc.classes, dev);
                if let Some(from) = &start_from {
                    let other = RunConfig::load(from)?;
                    model.backbone = load_backbone(&other, from, false, dev)?.0;
                }
                Ok(job.fit(task, model)?.2)
            }
            Some(f) => {
                let backbone = match &start_from {
                    Some(from) => load_backbone(&RunConfig::load(from)?, from, false, dev)?.0,
                    None => c.backbone.init(dev),
                };
                let model =
                    FrozenTapNet::new(&c.backbone, backbone, &f.layer, f.kind, sc.classes, dev)?;
                Ok(job.fit(task, model)?.2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_subsets_have_exact_counts_and_repeat_for_a_seed() {
        // 3 classes with 100, 50 and 20 images.
        let labels: Vec<u16> = (0..170)
            .map(|i| {
                if i < 100 {
                    0
                } else if i < 150 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let s = balanced_subset(&labels, 3, 0.1, 7).unwrap();
        let count = |c: u16| s.iter().filter(|&&i| labels[i] == c).count();
        assert_eq!((count(0), count(1), count(2)), (10, 5, 2));
        assert_eq!(balanced_subset(&labels, 3, 0.1, 7).unwrap(), s);
        assert_ne!(balanced_subset(&labels, 3, 0.1, 8).unwrap(), s);
        let mut uniq = s.clone();
        uniq.dedup();
        assert_eq!(uniq.len(), s.len());
        // 1% leaves the 20-image class empty: an error naming the class.
        let e = balanced_subset(&labels, 3, 0.01, 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("class 2 (20 images) with none"), "{e}");
    }

    #[test]
    fn per_class_subsets_take_exactly_k_of_each_class() {
        // Classes of 30, 12 and 5 images, interleaved.
        let labels: Vec<u16> = (0..47)
            .map(|i| match i {
                _ if i < 15 => (i % 2) as u16,
                _ if i < 42 => 0,
                _ => 2,
            })
            .collect();
        let count = |s: &[usize], c: u16| s.iter().filter(|&&i| labels[i] == c).count();
        let total = |c: u16| labels.iter().filter(|&&l| l == c).count();
        assert_eq!((total(0), total(1), total(2)), (35, 7, 5));
        let s = per_class_subset(&labels, 3, 5, 1).unwrap();
        assert_eq!((count(&s, 0), count(&s, 1), count(&s, 2)), (5, 5, 5));
        assert_eq!(per_class_subset(&labels, 3, 5, 1).unwrap(), s);
        assert_ne!(per_class_subset(&labels, 3, 5, 2).unwrap(), s);
        let e = per_class_subset(&labels, 3, 6, 1).unwrap_err().to_string();
        assert!(e.contains("class 2 has 5 images"), "{e}");
    }

    #[test]
    fn an_epoch_size_repeats_the_subset() {
        assert_eq!(fill_epoch(vec![3, 8], Some(5)), vec![3, 8, 3, 8, 3]);
        // Never less than one pass.
        assert_eq!(fill_epoch(vec![3, 8, 9], Some(2)), vec![3, 8, 9]);
        assert_eq!(fill_epoch(vec![3, 8], None), vec![3, 8]);
    }
}
