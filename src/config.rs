//! What a user asks for, as plain data, and its resolution into the configurations the
//! library runs. The command line, `study` and `bench` all build these specifications;
//! nothing here parses arguments (the CLI maps its flags onto them), so the library can be
//! driven without a command line and the resolution rules are tested here, once.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::data::augment::AugmentConfig;
use crate::data::{self, CacheOptions};
use crate::eval::EvalConfig;
use crate::eval::finetune::FinetuneConfig;
use crate::models::{Arch, BackboneConfig};
use crate::run::{RunConfig, normalize_for, open_training};
use crate::tasks::{self, TaskConfig};
use crate::train::{OptimKind, Schedule, TrainConfig};

/// A pretraining run as asked for. `None` fields take the task's or the data's default
/// when the run is resolved ([`PretrainSpec::resolve`]); the defaults of the others are
/// [`PretrainSpec::default`]'s.
#[derive(Clone, Debug, PartialEq)]
pub struct PretrainSpec {
    /// An image folder (class folders, flat, or train/ + test/), or a binary release.
    pub data: Option<PathBuf>,
    pub backbone: Arch,
    /// Base width (NIN: 192 in the paper; AlexNet conv1 / ResNet stem: 64).
    pub width: Option<usize>,
    /// NIN blocks.
    pub blocks: usize,
    /// The task's name (see [`crate::tasks::REGISTRY`]).
    pub task: String,
    /// A TOML file whose `[task]` table replaces the task's defaults (its `name` then
    /// names the task).
    pub task_config: Option<PathBuf>,
    /// Task settings given one by one (`angles = 8`), applied over the file or the
    /// defaults; a setting the task does not have is refused.
    pub task_settings: Vec<(String, toml::Value)>,
    pub epochs: usize,
    /// Source images per batch (rotation feeds 4× as many inputs).
    pub batch_size: usize,
    /// A seeded random subset of this many images.
    pub train_images: Option<usize>,
    pub optim: Option<OptimKind>,
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
    /// `step`, `cosine` or `constant`.
    pub schedule: Option<String>,
    pub crop: Option<usize>,
    pub pad: Option<usize>,
    pub seed: u64,
}

impl Default for PretrainSpec {
    fn default() -> Self {
        Self {
            data: None,
            backbone: Arch::Nin,
            width: None,
            blocks: 4,
            task: "rotation".into(),
            task_config: None,
            task_settings: vec![],
            epochs: 5,
            batch_size: 128,
            train_images: None,
            optim: None,
            lr: None,
            weight_decay: None,
            schedule: None,
            crop: None,
            pad: None,
            seed: 0,
        }
    }
}

/// A schedule by name.
pub fn schedule(name: &str) -> Result<Schedule> {
    // `step:0.3,0.6,0.9:0.1`: ×0.1 at 30/60/90% of the run (a paper's own steps).
    if let Some(rest) = name.strip_prefix("step:") {
        let bad = || {
            anyhow::anyhow!(
                "schedule {name:?}: expected step:M1,M2,…:GAMMA with milestones in (0, 1) as fractions of the run, e.g. step:0.3,0.6,0.9:0.1"
            )
        };
        let (ms, gamma) = rest.rsplit_once(':').ok_or_else(bad)?;
        let milestones: Vec<f64> = ms
            .split(',')
            .map(|m| m.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad())?;
        let gamma: f64 = gamma.trim().parse().map_err(|_| bad())?;
        if milestones.iter().any(|&m| !(m > 0.0 && m < 1.0)) || !(gamma > 0.0 && gamma.is_finite())
        {
            return Err(bad());
        }
        return Ok(Schedule::Step { milestones, gamma });
    }
    Ok(match name {
        "step" => Schedule::rotnet(),
        "cosine" => Schedule::Cosine {
            min_factor: 0.0,
            warmup: 0.0,
        },
        "constant" => Schedule::Constant,
        other => bail!(
            "unknown schedule {other:?}; expected step, cosine, constant or step:M1,M2,…:GAMMA"
        ),
    })
}

impl PretrainSpec {
    /// The run configuration: opens the data (through the cache) to size things, takes
    /// the task's paper defaults at that size (or the task file), then what was given.
    pub fn resolve(&self, cache: &CacheOptions) -> Result<RunConfig> {
        let Some(data_root) = self.data.clone() else {
            bail!("--data is required to start a run (or pass --resume to continue one)");
        };
        // Absolute, so the run can be resumed or evaluated from any working directory.
        // (A shard pattern names no file itself: it is made absolute as written.)
        let data_root = std::fs::canonicalize(&data_root)
            .or_else(|_| std::path::absolute(&data_root))
            .unwrap_or(data_root);
        let file = self.task_file()?;
        let task = match &file {
            Some(f) => f.task()?,
            None => tasks::get(&self.task)?,
        };
        if !task.trains() {
            bail!(
                "task {:?} is not trained by pretext (`pretext import` makes such runs)",
                task.name()
            );
        }
        // A baseline trains on labels, which live in the train split (STL-10's unlabeled
        // split has none).
        let split = if task.is_pretext() {
            data::pretrain_split(&data_root)?
        } else {
            data::Split::Train
        };
        let (set, _) = open_training(&data_root, split, cache)?;
        let size = set.header.h.min(set.header.w);
        let crop = self.crop.unwrap_or(size);
        let mut task_cfg = file.unwrap_or_else(|| task.defaults(crop));
        for (key, value) in &self.task_settings {
            task_cfg.set(key, value.clone());
        }
        let mut task_cfg = task.normalize(&task_cfg)?;
        task.prepare(&mut task_cfg, &set, &data_root)?;
        // Fine-tuning starts from another run: its network, input and normalization.
        let from = task
            .init_from(&task_cfg)?
            .map(|p| RunConfig::load(&p))
            .transpose()?;
        let defaults = task.training();
        let crop = from.as_ref().map_or(crop, |f| f.augment.crop);
        let pad = self.pad.unwrap_or(defaults.pad);
        if crop > size + 2 * pad {
            bail!("--crop {crop} is larger than the {size}px images plus 2×{pad} padding");
        }
        let input = from.as_ref().map_or(defaults.input, |f| f.input);
        let mut backbone = BackboneConfig::new(self.backbone, crop);
        if let Some(w) = self.width {
            backbone.width = w;
        }
        backbone.blocks = self.blocks;
        backbone.in_channels = input.channels(set.header.c);
        if let Some(f) = &from {
            backbone = f.backbone.clone();
        }
        let mut optim = defaults.optim;
        if let Some(k) = self.optim {
            optim.kind = k;
        }
        if let Some(lr) = self.lr {
            optim.lr = lr;
        }
        if let Some(wd) = self.weight_decay {
            optim.weight_decay = wd;
        }
        let schedule = match &self.schedule {
            Some(name) => schedule(name)?,
            None => defaults.schedule,
        };
        Ok(RunConfig {
            data: data_root,
            split,
            holdout: cache.holdout,
            train_images: self.train_images,
            image_size: size,
            input,
            backbone,
            task: task_cfg,
            augment: AugmentConfig {
                crop,
                pad,
                flip: true,
            },
            normalize: from
                .as_ref()
                .map_or_else(|| normalize_for(&set, input), |f| f.normalize.clone()),
            train: TrainConfig {
                epochs: self.epochs,
                batch_size: self.batch_size,
                optim,
                schedule,
                seed: self.seed,
                log_every: 10,
                keep_checkpoints: 2,
            },
        })
    }

    /// The `[task]` table of the task file, if one was given.
    fn task_file(&self) -> Result<Option<TaskConfig>> {
        let Some(path) = &self.task_config else {
            return Ok(None);
        };
        #[derive(serde::Deserialize)]
        struct File {
            task: TaskConfig,
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let file = toml::from_str::<File>(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a [task] table: {e}", path.display()))?;
        // Checked here, so an error names the file.
        let task = file
            .task
            .task()
            .and_then(|t| t.normalize(&file.task))
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        Ok(Some(task))
    }
}

/// An evaluation as asked for ([`EvalSpec::resolve`] gives the protocol).
#[derive(Clone, Debug, PartialEq)]
pub struct EvalSpec {
    /// Labelled training images for the probes and kNN (a seeded subset; `None`: all).
    pub train_images: Option<usize>,
    /// Test images (`None`: all).
    pub test_images: Option<usize>,
    pub probe_epochs: usize,
    pub probe_lr: f64,
    /// Pooled feature size per layer.
    pub probe_dim: usize,
    pub seed: u64,
    /// How the feature store keeps the values.
    pub feature_dtype: crate::eval::store::FeatureDtype,
    /// Choose each layer's probe lr and weight decay on a validation split (the default
    /// grid of [`crate::eval::linear::SweepConfig`]).
    pub probe_sweep: bool,
    /// Probe kinds: `linear` always runs; `mlp` and `conv` add RotNet's classifiers.
    pub probes: Vec<crate::models::probe::ProbeKind>,
    /// Layers the non-linear probes sit on (`None`: all).
    pub probe_layers: Option<Vec<String>>,
    /// Epochs of the non-linear probes (`None`: RotNet's).
    pub head_epochs: Option<usize>,
}

impl Default for EvalSpec {
    fn default() -> Self {
        let d = EvalConfig::default();
        Self {
            train_images: None,
            test_images: None,
            probe_epochs: d.probe.epochs,
            probe_lr: d.probe.optim.lr,
            probe_dim: d.probe_dim,
            seed: d.seed,
            feature_dtype: d.feature_dtype,
            probe_sweep: false,
            probes: vec![crate::models::probe::ProbeKind::Linear],
            probe_layers: None,
            head_epochs: None,
        }
    }
}

impl EvalSpec {
    pub fn resolve(&self) -> EvalConfig {
        let mut c = EvalConfig {
            train_images: self.train_images,
            test_images: self.test_images,
            probe_dim: self.probe_dim,
            seed: self.seed,
            feature_dtype: self.feature_dtype,
            ..EvalConfig::default()
        };
        c.probe.epochs = self.probe_epochs;
        c.probe.optim.lr = self.probe_lr;
        c.probe.seed = self.seed;
        c.probe.sweep = self.probe_sweep.then(|| crate::eval::linear::SweepConfig {
            seed: self.seed,
            ..Default::default()
        });
        let mut kinds: Vec<crate::models::probe::ProbeKind> = vec![];
        for &k in &self.probes {
            if k != crate::models::probe::ProbeKind::Linear && !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        c.heads = crate::eval::heads::HeadsConfig {
            kinds,
            layers: self.probe_layers.clone(),
            epochs: self.head_epochs,
            ..Default::default()
        };
        c
    }
}

/// A study as asked for ([`StudySpec::resolve`] gives the study's configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct StudySpec {
    /// Labelled data with train and test splits.
    pub data: Option<PathBuf>,
    /// Pretext tasks: names, `all` or `none`.
    pub tasks: Vec<String>,
    /// Pretraining wall-clock time per method: 90s, 10m, 1.5h.
    pub budget: String,
    pub max_epochs: usize,
    pub supervised: bool,
    pub backbone: Arch,
    pub width: Option<usize>,
    pub blocks: usize,
    pub train_images: Option<usize>,
    pub batch_size: usize,
    /// SGD learning rate (cosine) of every method but inpainting.
    pub lr: f64,
    pub seed: u64,
    pub eval_train_images: Option<usize>,
    pub eval_test_images: Option<usize>,
    pub probe_epochs: usize,
    pub probe_sweep: bool,
    /// Tasks fine-tuned on few labels: names, `all` or `none`.
    pub finetune: Vec<String>,
    pub fractions: Vec<f64>,
    pub seeds: Vec<u64>,
    pub finetune_epochs: usize,
    /// Labelled images per class for few-label fine-tuning, beside `fractions`.
    pub per_class: Vec<usize>,
    /// Few-label protocols (`whole`, `frozen`).
    pub protocols: Vec<crate::eval::finetune::Protocol>,
    /// Samples per fine-tuning epoch (the labelled subset repeated).
    pub epoch_size: Option<usize>,
    /// The frozen protocol's layer and head.
    pub frozen: crate::eval::finetune::FrozenProtocol,
    /// Probe kinds (see [`EvalSpec::probes`]) and the non-linear probes' epochs.
    pub probes: Vec<crate::models::probe::ProbeKind>,
    pub head_epochs: Option<usize>,
    /// Where the pretext tasks pretrain, when not on `data` (a transfer).
    pub pretrain_data: Option<PathBuf>,
    /// The SGD tasks' schedule (`None`: cosine).
    pub schedule: Option<String>,
}

impl StudySpec {
    pub fn resolve(&self, cache: &CacheOptions) -> Result<crate::commands::study::StudyConfig> {
        let Some(data) = self.data.clone() else {
            bail!("--data is required to start a study (or pass --resume to continue one)");
        };
        let data = std::fs::canonicalize(&data).unwrap_or(data);
        let names = |list: &[String]| -> Result<Vec<String>> {
            Ok(tasks::parse_list(list)?
                .into_iter()
                .map(|t| t.name().to_string())
                .collect())
        };
        let tasks = names(&self.tasks)?;
        let mut finetune_tasks = names(&self.finetune)?;
        if self.finetune.iter().any(|f| f.trim() == "all") {
            finetune_tasks.retain(|t| tasks.contains(t));
        }
        let mut finetune = FinetuneConfig {
            fractions: self.fractions.clone(),
            per_class: self.per_class.clone(),
            protocols: self.protocols.clone(),
            frozen: self.frozen.clone(),
            epoch_size: self.epoch_size,
            seeds: self.seeds.clone(),
            epochs: self.finetune_epochs,
            test_images: self.eval_test_images,
            ..Default::default()
        };
        finetune.optim.lr = 0.01;
        Ok(crate::commands::study::StudyConfig {
            data,
            tasks,
            supervised: self.supervised,
            budget_seconds: crate::commands::study::parse_budget(&self.budget)?,
            max_epochs: self.max_epochs,
            backbone: self.backbone,
            width: self.width,
            blocks: self.blocks,
            train_images: self.train_images,
            batch_size: self.batch_size,
            lr: self.lr,
            seed: self.seed,
            eval: EvalSpec {
                train_images: self.eval_train_images,
                test_images: self.eval_test_images,
                probe_epochs: self.probe_epochs,
                probe_sweep: self.probe_sweep,
                seed: self.seed,
                probes: self.probes.clone(),
                head_epochs: self.head_epochs,
                ..EvalSpec::default()
            }
            .resolve(),
            finetune,
            finetune_tasks,
            holdout: cache.holdout,
            pretrain_data: self
                .pretrain_data
                .as_ref()
                .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
            schedule: match &self.schedule {
                Some(s) => {
                    schedule(s)?;
                    Some(s.clone())
                }
                None => None,
            },
            recipe: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::lab::InputTransform;
    use crate::train::OptimConfig;

    /// A flat folder of four 32×32 PNGs, opened without a cache.
    fn images() -> (tempfile::TempDir, CacheOptions) {
        images_of(32)
    }

    /// A flat folder of four `side`×`side` PNGs, opened without a cache.
    pub(super) fn images_of(side: u32) -> (tempfile::TempDir, CacheOptions) {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..4u8 {
            image::RgbImage::from_fn(side, side, |x, y| image::Rgb([x as u8, y as u8, i * 60]))
                .save(dir.path().join(format!("{i}.png")))
                .unwrap();
        }
        let cache = CacheOptions {
            dir: None,
            progress: false,
            ..CacheOptions::default()
        };
        (dir, cache)
    }

    fn spec(dir: &tempfile::TempDir, task: &str) -> PretrainSpec {
        PretrainSpec {
            data: Some(dir.path().to_path_buf()),
            task: task.into(),
            ..PretrainSpec::default()
        }
    }

    #[test]
    fn defaults_follow_each_tasks_paper_at_the_image_size() {
        let (dir, cache) = images();
        let rot = spec(&dir, "rotation").resolve(&cache).unwrap();
        assert_eq!((rot.augment.crop, rot.augment.pad), (32, 4));
        assert_eq!(rot.input, InputTransform::Rgb);
        assert_eq!(rot.backbone, {
            let mut b = BackboneConfig::new(Arch::Nin, 32);
            b.in_channels = 3;
            b
        });
        assert_eq!(
            rot.task,
            TaskConfig::of("rotation", &crate::tasks::RotationConfig::default())
        );
        assert_eq!(
            (rot.train.epochs, rot.train.batch_size, rot.train.seed),
            (5, 128, 0)
        );
        assert_eq!(rot.train.optim, OptimConfig::rotnet());
        assert_eq!(rot.train.schedule, Schedule::rotnet());
        // Inpainting: Pathak et al.'s Adam 2e-4, β1 0.5, no decay, constant; no padding
        // (its targets would include the black border).
        let inp = spec(&dir, "inpainting").resolve(&cache).unwrap();
        assert_eq!(inp.augment.pad, 0);
        assert_eq!(inp.train.optim.kind, OptimKind::Adam);
        assert_eq!(
            (
                inp.train.optim.lr,
                inp.train.optim.betas,
                inp.train.optim.weight_decay
            ),
            (2e-4, (0.5, 0.999), 0.0)
        );
        assert_eq!(inp.train.schedule, Schedule::Constant);
        // Colorization: the backbone sees L* only.
        let col = spec(&dir, "colorization").resolve(&cache).unwrap();
        assert_eq!(col.input, InputTransform::Lightness);
        assert_eq!((col.backbone.in_channels, col.augment.pad), (1, 0));
    }

    #[test]
    fn what_is_given_overrides_the_defaults() {
        let (dir, cache) = images();
        let rc = PretrainSpec {
            width: Some(16),
            blocks: 2,
            lr: Some(0.05),
            weight_decay: Some(0.0),
            optim: Some(OptimKind::Adam),
            schedule: Some("cosine".into()),
            crop: Some(28),
            pad: Some(2),
            epochs: 7,
            seed: 9,
            ..spec(&dir, "inpainting")
        }
        .resolve(&cache)
        .unwrap();
        assert_eq!(
            (
                rc.backbone.width,
                rc.backbone.blocks,
                rc.backbone.input_size
            ),
            (16, 2, 28)
        );
        assert_eq!((rc.augment.crop, rc.augment.pad), (28, 2));
        assert_eq!(
            (rc.train.optim.lr, rc.train.optim.weight_decay),
            (0.05, 0.0)
        );
        assert_eq!(
            rc.train.schedule,
            Schedule::Cosine {
                min_factor: 0.0,
                warmup: 0.0
            }
        );
        assert_eq!((rc.train.epochs, rc.train.seed), (7, 9));
    }

    #[test]
    fn what_cannot_work_is_refused() {
        let (dir, cache) = images();
        let e = |s: PretrainSpec| s.resolve(&cache).unwrap_err().to_string();
        assert!(e(PretrainSpec::default()).contains("--data is required"));
        let bad_schedule = PretrainSpec {
            schedule: Some("sawtooth".into()),
            ..spec(&dir, "rotation")
        };
        assert!(e(bad_schedule).contains("unknown schedule \"sawtooth\""));
        let big_crop = PretrainSpec {
            crop: Some(41),
            ..spec(&dir, "rotation")
        };
        assert!(e(big_crop).contains("larger than the 32px images plus 2×4 padding"));
        // A flat folder has no labels to train a supervised baseline on.
        assert!(e(spec(&dir, "supervised")).contains("needs labels"));
    }

    #[test]
    fn the_eval_and_study_specifications_resolve_to_their_protocols() {
        assert_eq!(EvalSpec::default().resolve(), EvalConfig::default());
        let e = EvalSpec {
            train_images: Some(10),
            probe_epochs: 3,
            probe_lr: 0.5,
            seed: 4,
            ..EvalSpec::default()
        }
        .resolve();
        assert_eq!((e.train_images, e.probe.epochs), (Some(10), 3));
        assert_eq!((e.probe.optim.lr, e.seed, e.probe.seed), (0.5, 4, 4));

        let (dir, cache) = images();
        let study = StudySpec {
            data: Some(dir.path().to_path_buf()),
            tasks: vec!["rotation".into(), "jigsaw".into(), "rotation".into()],
            budget: "1.5m".into(),
            max_epochs: 10,
            supervised: true,
            backbone: Arch::Nin,
            width: Some(8),
            blocks: 4,
            train_images: None,
            batch_size: 32,
            lr: 0.03,
            seed: 2,
            eval_train_images: Some(100),
            eval_test_images: Some(50),
            probe_epochs: 4,
            probe_sweep: false,
            finetune: vec!["all".into()],
            fractions: vec![0.1],
            seeds: vec![0],
            finetune_epochs: 2,
            per_class: vec![20],
            protocols: vec![
                crate::eval::finetune::Protocol::Whole,
                crate::eval::finetune::Protocol::Frozen,
            ],
            probes: vec![
                crate::models::probe::ProbeKind::Linear,
                crate::models::probe::ProbeKind::Conv,
            ],
            head_epochs: Some(2),
            pretrain_data: None,
            epoch_size: None,
            schedule: None,
            frozen: Default::default(),
        }
        .resolve(&cache)
        .unwrap();
        // The protocols reach the evaluation and the fine-tuning.
        assert_eq!(
            study.eval.heads.kinds,
            [crate::models::probe::ProbeKind::Conv]
        );
        assert_eq!(study.eval.heads.epochs, Some(2));
        assert_eq!(study.finetune.per_class, [20]);
        assert_eq!(study.finetune.protocols.len(), 2);
        assert_eq!(study.tasks, ["rotation", "jigsaw"]);
        assert_eq!(study.finetune_tasks, study.tasks, "all = the study's tasks");
        assert_eq!(study.budget_seconds, 90.0);
        assert_eq!(
            (study.eval.test_images, study.finetune.test_images),
            (Some(50), Some(50))
        );
        assert_eq!((study.eval.probe.epochs, study.eval.seed), (4, 2));
        assert_eq!(study.holdout, cache.holdout);
    }

    #[test]
    fn a_papers_own_steps_parse_as_a_schedule() {
        assert_eq!(
            schedule("step:0.3,0.6,0.9:0.1").unwrap(),
            Schedule::Step {
                milestones: vec![0.3, 0.6, 0.9],
                gamma: 0.1
            }
        );
        assert_eq!(schedule("step").unwrap(), Schedule::rotnet());
        for bad in [
            "step:0.3,1.5:0.1",
            "step:0.3",
            "step:a:0.1",
            "step:0.5:-1",
            "linear",
        ] {
            assert!(schedule(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod spelling {
    use super::*;

    /// Task files written before the American spelling (`greyscale`, `colour`) still read,
    /// and mean what they meant.
    #[test]
    fn old_spellings_of_task_settings_still_read() {
        let (dir, cache) = super::tests::images_of(48);
        for (task, new, old, value) in [
            ("jigsaw", "grayscale", "greyscale", "0.25"),
            ("relative-position", "color", "colour", "\"keep\""),
        ] {
            let t = tasks::get(task).unwrap();
            let mut cfg = t.defaults(48);
            cfg.set(
                new,
                toml::from_str::<toml::Table>(&format!("v = {value}")).unwrap()["v"].clone(),
            );
            #[derive(serde::Serialize)]
            struct File<'a> {
                task: &'a TaskConfig,
            }
            let text = toml::to_string(&File { task: &cfg })
                .unwrap()
                .replace(&format!("{new} ="), &format!("{old} ="));
            assert!(text.contains(old), "{text}");
            let file = dir.path().join(format!("{task}.toml"));
            std::fs::write(&file, text).unwrap();
            let rc = PretrainSpec {
                data: Some(dir.path().to_path_buf()),
                task_config: Some(file),
                ..PretrainSpec::default()
            }
            .resolve(&cache)
            .unwrap();
            assert_eq!(rc.task, cfg, "{task}");
        }
    }
}
