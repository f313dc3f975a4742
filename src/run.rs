//! A run directory: the resolved configuration (`config.toml`), checkpoints, the metrics log,
//! the task preview and evaluation results. Every command can be re-run from it alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::augment::{AugmentConfig, Normalize};
use crate::data::loader::SampleMaker;
use crate::data::{self, CacheOptions, Holdout, ImageSet, Split};
use crate::fsutil;
use crate::models::context_encoder::ContextEncoder;
use crate::models::head::ClassifierNet;
use crate::models::hypercolumn::ColorNet;
use crate::models::tiles::TileNet;
use crate::models::{Backbone, BackboneConfig};
use crate::tasks::supervised::balanced_subset;
use crate::tasks::{
    Colorization, ColorizationConfig, Inpainting, Jigsaw, PretextTask, RelativePosition, Rotation,
    Supervised, TaskConfig,
};
use crate::train::TrainConfig;
use crate::train::checkpoint::{self, TrainState};
use crate::train::trainer::{Learner, Timing, TrainOutcome, Trainer};

pub use crate::data::lab::InputTransform;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub data: PathBuf,
    pub split: Split,
    /// The test split held out of a labelled tree without split folders (pretraining never
    /// sees it; evaluation tests on it). Unused for data with split folders or files.
    /// `None`: nothing held out — runs made before held-out splits existed, which pretrained
    /// on the whole tree, or `--test-fraction 0`.
    #[serde(default)]
    pub holdout: Option<Holdout>,
    /// Images of the split used for pretraining (`None`: all).
    pub train_images: Option<usize>,
    pub image_size: usize,
    /// What the backbone sees (RGB, or L* for colorization); evaluation applies the same.
    #[serde(default)]
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
            "{}: images are {}×{}, but the task's geometry needs at least {need}×{need} \
             (shrink the task's cells/patches/gap in --task-config, lower --crop, or use larger images)",
            data.display(),
            h.w,
            h.h
        );
    }
    Ok(())
}

/// Check that images of `set` are what run `rc` was trained on (side and channels), so its
/// features are not measured on silently rescaled or re-cropped inputs; `what` names the
/// images in the message.
pub fn check_fits(rc: &RunConfig, set: &ImageSet, data: &Path, what: &str) -> Result<()> {
    let h = &set.header;
    if rc.input.channels(h.c) != rc.backbone.in_channels || h.h.min(h.w) != rc.image_size {
        bail!(
            "{}: {what} images are {}×{} with {} channel(s), but the run was trained on {}×{} images with {} input channel(s) ({:?} input){}",
            data.display(),
            h.w,
            h.h,
            h.c,
            rc.image_size,
            rc.image_size,
            rc.backbone.in_channels,
            rc.input,
            if h.h.min(h.w) != rc.image_size {
                format!(
                    "; an image folder can be brought to that size with --image-size {}",
                    rc.image_size
                )
            } else {
                String::new()
            }
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
    /// Timing only (see [`Timing`]): the outcome's images/s is the point; no checkpoint or
    /// after-training picture is written.
    pub timing: Option<Timing>,
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
                c
            }
            (None, false) => bail!("no configuration given"),
        };
        // The run's own held-out split, whatever the caller's options say.
        let cache = &CacheOptions {
            holdout: cfg.holdout,
            ..self.cache.clone()
        };
        let set = open_split(&cfg.data, cfg.split, cache)?;
        // Geometry is checked before the run directory exists, so a rejected configuration
        // leaves nothing behind to --resume.
        cfg.task.validate(&cfg.augment)?;
        check_size(&set, cfg.task.min_image_size(&cfg.augment), &cfg.data)?;
        cfg.augment
            .check(set.header.h, set.header.w)
            .with_context(|| format!("{}", cfg.data.display()))?;
        let indices = match &cfg.task {
            TaskConfig::Supervised(sc) => {
                let Some(labels) = set.header.labels.as_deref() else {
                    bail!(
                        "{}: supervised training needs labels (class folders), and this split has none",
                        cfg.data.display()
                    );
                };
                match sc.label_fraction {
                    Some(f) => balanced_subset(labels, sc.classes, f, sc.subset_seed)?,
                    None => subset_indices(set.len(), cfg.train_images, cfg.train.seed),
                }
            }
            _ => subset_indices(set.len(), cfg.train_images, cfg.train.seed),
        };
        self.check(&cfg, &set, &indices)?;
        if !resume {
            std::fs::create_dir_all(self.run)
                .with_context(|| format!("creating {}", self.run.display()))?;
            cfg.save(self.run)?;
        }
        let train_dev = crate::device::training(self.device);
        train_dev.seed(cfg.train.seed);
        let dev = &train_dev;
        let b = &cfg.backbone;
        let c = cfg.input.channels(set.header.c);
        let outcome = match &cfg.task {
            TaskConfig::Rotation(r) => {
                let task = Rotation::new(r.clone(), cfg.augment.clone(), cfg.normalize.clone(), c)?;
                let model = ClassifierNet::new(b, task.num_classes(), dev);
                self.train(&cfg, task, model, set, &indices, resume, dev)?.3
            }
            TaskConfig::Jigsaw(j) => {
                let perms = Jigsaw::perms_for_run(j, self.run)?;
                let task = Jigsaw::new(j.clone(), c, perms)?;
                let model = tile_net(&cfg, dev)?;
                self.train(&cfg, task, model, set, &indices, resume, dev)?.3
            }
            TaskConfig::RelativePosition(r) => {
                let task = RelativePosition::new(r.clone(), c)?;
                let model = tile_net(&cfg, dev)?;
                self.train(&cfg, task, model, set, &indices, resume, dev)?.3
            }
            TaskConfig::Inpainting(i) => {
                let task =
                    Inpainting::new(i.clone(), cfg.augment.clone(), cfg.normalize.clone(), c)?;
                let model = context_encoder(&cfg, dev)?;
                let (task, model, set, outcome) =
                    self.train(&cfg, task, model, set, &indices, resume, dev)?;
                if self.timing.is_some() {
                    return Ok((cfg, outcome));
                }
                let picks = preview_picks(&indices);
                let sample = set.subset(&picks);
                let generator = model.generator.valid();
                let [cc, h, w] = task.input_shape();
                let predict = |x: &[f32], n: usize| -> Vec<f32> {
                    let t = burn::tensor::Tensor::<4>::from_data(
                        burn::tensor::TensorData::new(x.to_vec(), [n, cc, h, w]),
                        self.device,
                    );
                    generator
                        .forward(t)
                        .into_data()
                        .try_into_vec::<f32>()
                        .unwrap_or_default()
                };
                let rows = task.sample_rows(&sample, cfg.train.seed + 1, Some(&predict))?;
                crate::preview::save(
                    &crate::preview::sheet(&rows, (96 / cfg.augment.crop).max(1)),
                    &self.run.join("inpainting.png"),
                )?;
                outcome
            }
            TaskConfig::Supervised(sc) => {
                let task = Supervised {
                    cfg: sc.clone(),
                    augment: cfg.augment.clone(),
                    norm: cfg.normalize.clone(),
                    input: cfg.input,
                    image_channels: set.header.c,
                };
                let mut model = ClassifierNet::new(b, sc.classes, dev);
                if let Some(from) = &sc.init_from {
                    let other = RunConfig::load(from)?;
                    // Whenever training will not start from a checkpoint of its own: a run
                    // resumed before its first checkpoint must not start from random init.
                    if checkpoint::latest(self.run)?.is_none() {
                        model.backbone = load_backbone(&other, from, false, dev)?.0;
                    }
                }
                self.train(&cfg, task, model, set, &indices, resume, dev)?.3
            }
            TaskConfig::Colorization(k) => {
                let task =
                    Colorization::new(k.clone(), cfg.augment.clone(), cfg.normalize.clone())?;
                let model = color_net(&cfg, dev);
                let (task, model, set, outcome) =
                    self.train(&cfg, task, model, set, &indices, resume, dev)?;
                if self.timing.is_some() {
                    return Ok((cfg, outcome));
                }
                let sample = set.subset(&preview_picks(&indices));
                crate::tasks::colorization::colorized_sheet(
                    &task,
                    &model.valid(),
                    &sample,
                    &self.run.join("colorized.png"),
                    self.device,
                )?;
                outcome
            }
        };
        Ok((cfg, outcome))
    }

    /// Everything about a run that can be refused is refused here, before its directory
    /// exists: a rejected configuration leaves nothing behind to block a rerun or to be
    /// continued with `--resume`.
    fn check(&self, cfg: &RunConfig, set: &ImageSet, indices: &[usize]) -> Result<()> {
        cfg.train.validate()?;
        cfg.backbone.validate()?;
        if indices.is_empty() {
            bail!("{}: no training images selected", cfg.data.display());
        }
        match &cfg.task {
            TaskConfig::Jigsaw(j) => {
                Jigsaw::saved_perms(j, self.run)?;
            }
            TaskConfig::Supervised(sc) => {
                if let Some(c) = set
                    .header
                    .labels
                    .iter()
                    .flatten()
                    .find(|&&c| c as usize >= sc.classes)
                {
                    bail!(
                        "{}: label {c} is past the run's {} classes",
                        cfg.data.display(),
                        sc.classes
                    );
                }
                // The source run is needed only to start: a run with checkpoints of its own
                // resumes without it.
                if let Some(from) = &sc.init_from
                    && checkpoint::latest(self.run)?.is_none()
                {
                    let other = RunConfig::load(from)?;
                    if other.backbone != cfg.backbone || other.input != cfg.input {
                        bail!(
                            "{} was trained with another backbone or input ({:?} {:?}) than this run ({:?} {:?})",
                            from.display(),
                            other.backbone,
                            other.input,
                            cfg.backbone,
                            cfg.input
                        );
                    }
                    if checkpoint::latest(from)?.is_none() {
                        bail!(
                            "{}: no checkpoint to start from (train it first)",
                            from.display()
                        );
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Preview, then train `model` on `task`; gives back what it was handed, trained.
    #[allow(clippy::too_many_arguments)]
    fn train<T: PretextTask, M: Learner>(
        &self,
        cfg: &RunConfig,
        task: T,
        model: M,
        set: Arc<ImageSet>,
        indices: &[usize],
        resume: bool,
        dev: &Device,
    ) -> Result<(Arc<T>, M, Arc<ImageSet>, TrainOutcome)> {
        let task = Arc::new(task);
        if !resume || !self.run.join("preview.png").exists() {
            let preview_set = set.subset(&preview_picks(indices));
            task.preview(&preview_set, &self.run.join("preview.png"), cfg.train.seed)?;
        }
        let trainer = Trainer {
            run: self.run,
            cfg: &cfg.train,
            device: dev,
            progress: self.progress,
            stop_after: self.stop_after,
            prefetch: 2,
            timing: self.timing,
        };
        let (model, outcome) = trainer.fit(model, task.clone(), set.clone(), indices, resume)?;
        Ok((task, model, set, outcome))
    }
}

/// Eight images spread over the whole subset, so a sheet is not one class of a sorted tree.
fn preview_picks(indices: &[usize]) -> Vec<usize> {
    let step = (indices.len() / 8).max(1);
    indices.iter().step_by(step).take(8).copied().collect()
}

fn tile_net(cfg: &RunConfig, dev: &Device) -> Result<TileNet> {
    Ok(match &cfg.task {
        TaskConfig::Jigsaw(j) => TileNet::new(
            &cfg.backbone,
            j.tile,
            9,
            j.tile_features,
            j.hidden,
            j.permutations,
            dev,
        ),
        TaskConfig::RelativePosition(r) => TileNet::new(
            &cfg.backbone,
            r.patch,
            2,
            r.patch_features,
            r.hidden,
            8,
            dev,
        ),
        other => bail!("{} is not a tile task", other.name()),
    })
}

fn context_encoder(cfg: &RunConfig, dev: &Device) -> Result<ContextEncoder> {
    let TaskConfig::Inpainting(i) = &cfg.task else {
        bail!("not an inpainting run");
    };
    ContextEncoder::new(
        &cfg.backbone,
        cfg.augment.crop,
        i.disc_width,
        i.lambda_rec,
        i.lambda_adv,
        dev,
    )
}

fn color_net(cfg: &RunConfig, dev: &Device) -> ColorNet {
    let k = match &cfg.task {
        TaskConfig::Colorization(k) => k.clone(),
        _ => ColorizationConfig::default(),
    };
    ColorNet::new(&cfg.backbone, k.hidden, k.bins, k.pixels, dev)
}

/// The backbone of a run, on `dev` as it is (call `.valid()` for inference): from its latest
/// checkpoint, or freshly initialised (seeded by the caller's device seed) with
/// `random_init`. Returns it with the checkpoint's epoch.
pub fn load_backbone(
    cfg: &RunConfig,
    run: &Path,
    random_init: bool,
    dev: &Device,
) -> Result<(Backbone, usize)> {
    let found = if random_init {
        None
    } else {
        match checkpoint::latest(run)? {
            Some(found) => Some(found),
            None => bail!(
                "{}: no checkpoint yet (train first, or pass --random-init)",
                run.display()
            ),
        }
    };
    fn load<M: burn::module::Module>(m: M, found: &Option<(PathBuf, TrainState)>) -> Result<M> {
        match found {
            Some((dir, _)) => checkpoint::load_model(m, dir),
            None => Ok(m),
        }
    }
    let backbone = match &cfg.task {
        TaskConfig::Rotation(r) => {
            load(ClassifierNet::new(&cfg.backbone, r.angles, dev), &found)?.backbone
        }
        TaskConfig::Jigsaw(_) | TaskConfig::RelativePosition(_) => {
            load(tile_net(cfg, dev)?, &found)?.backbone
        }
        TaskConfig::Inpainting(_) => load(context_encoder(cfg, dev)?, &found)?.generator.backbone,
        TaskConfig::Colorization(_) => load(color_net(cfg, dev), &found)?.backbone,
        TaskConfig::Supervised(s) => {
            load(ClassifierNet::new(&cfg.backbone, s.classes, dev), &found)?.backbone
        }
    };
    Ok((backbone, found.map_or(0, |(_, s)| s.epoch)))
}

/// Normalisation statistics of a split as the network sees it (from up to 10k images).
pub fn normalize_for(set: &ImageSet, input: InputTransform) -> Normalize {
    match input {
        InputTransform::Rgb => {
            let (mean, std) = set.channel_stats(10_000);
            Normalize { mean, std }
        }
        InputTransform::Lightness => {
            let h = &set.header;
            let plane = h.h * h.w;
            let n = set.len().min(10_000);
            let step = (set.len() / n.max(1)).max(1);
            let (mut sum, mut sq, mut count) = (0f64, 0f64, 0f64);
            let mut chw = vec![0f32; h.c * plane];
            let mut l = vec![0f32; plane];
            for i in (0..set.len()).step_by(step).take(n) {
                for (p, px) in set.image(i).chunks_exact(h.c).enumerate() {
                    for (ch, &v) in px.iter().enumerate() {
                        chw[ch * plane + p] = v as f32 / 255.0;
                    }
                }
                InputTransform::Lightness.apply(&chw, h.c, &mut l);
                for &v in &l {
                    sum += v as f64;
                    sq += (v as f64) * (v as f64);
                    count += 1.0;
                }
            }
            let mean = sum / count.max(1.0);
            let std = (sq / count.max(1.0) - mean * mean).max(1e-8).sqrt();
            Normalize {
                mean: vec![mean as f32],
                std: vec![std as f32],
            }
        }
    }
}
