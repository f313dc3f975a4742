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
use crate::data::loader::Source;
use crate::data::{self, CacheOptions, Holdout, ImageSet, Split};
use crate::models::{Backbone, BackboneConfig};
use crate::tasks::{PretextTask, Task, TaskConfig};
use crate::train::TrainConfig;
use crate::train::checkpoint;
use crate::train::trainer::{Learner, Timing, TrainOutcome, Trainer};
use crate::util::fsutil;

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
    /// The name reports give this run's method: its task's, or an imported network's label.
    pub fn method(&self) -> String {
        self.task
            .task()
            .map_or_else(|_| self.task.name().to_string(), |t| t.method(&self.task))
    }
    /// Where an imported network came from (`pretext import`); `None` for a run pretext
    /// trained.
    pub fn imported(&self) -> Option<crate::tasks::imported::ImportedConfig> {
        (self.task.name() == crate::tasks::imported::TASK_NAME)
            .then(|| self.task.typed().ok())
            .flatten()
    }
    /// The data the network learnt from, when pretext knows it: the run's own data for a
    /// run it trained, nothing for an imported network.
    pub fn pretrained_on(&self) -> Option<String> {
        self.imported()
            .is_none()
            .then(|| self.data.display().to_string())
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

/// The images a run trains on: a decoded split; or, for tar shards, a stream read anew
/// each epoch (no decode pass first) and the images it opens with, from which the run
/// takes its size, normalization and preview (see [`data::shards::Stream::open`]).
pub fn open_training(
    root: &Path,
    split: Split,
    opts: &CacheOptions,
) -> Result<(Arc<ImageSet>, Option<Arc<data::shards::Stream>>)> {
    if data::detect_format(root)? == data::Format::Shards && split != Split::Test {
        opts.validate(root)?;
        let (stream, sample) = data::shards::Stream::open(root, split, opts)?;
        return Ok((Arc::new(sample), Some(Arc::new(stream))));
    }
    Ok((open_split(root, split, opts)?, None))
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
        let task = cfg.task.task()?;
        // The run's own held-out split, whatever the caller's options say.
        let cache = &CacheOptions {
            holdout: cfg.holdout,
            ..self.cache.clone()
        };
        let (set, stream) = open_training(&cfg.data, cfg.split, cache)?;
        let indices = task.training_indices(&cfg, &set)?;
        if stream.is_some() && (cfg.train_images.is_some() || indices.len() != set.len()) {
            bail!(
                "{}: a shard stream trains on all its samples, and this run asks for a subset \
                 (--train-images or --label-fraction): write the subset as shards of its own \
                 (pretext data shard), or decode the shards into a folder",
                cfg.data.display()
            );
        }
        self.check(task, &cfg, &set, &indices)?;
        if !resume {
            std::fs::create_dir_all(self.run)
                .with_context(|| format!("creating {}", self.run.display()))?;
            cfg.save(self.run)?;
        }
        let train_dev = crate::util::device::training(self.device);
        train_dev.seed(cfg.train.seed);
        let job = Job {
            run: self.run,
            cfg: &cfg,
            train_device: &train_dev,
            device: self.device,
            set,
            stream,
            indices,
            resume,
            progress: self.progress,
            stop_after: self.stop_after,
            timing: self.timing,
        };
        let outcome = task.pretrain(&job)?;
        Ok((cfg, outcome))
    }

    /// Everything about a run that can be refused is refused here, before its directory
    /// exists: a rejected configuration leaves nothing behind to block a rerun or to be
    /// continued with `--resume`.
    fn check(
        &self,
        task: &dyn Task,
        cfg: &RunConfig,
        set: &ImageSet,
        indices: &[usize],
    ) -> Result<()> {
        task.validate(&cfg.task, &cfg.augment)?;
        check_size(
            set,
            task.min_image_size(&cfg.task, &cfg.augment)?,
            &cfg.data,
        )?;
        cfg.augment
            .check(set.header.h, set.header.w)
            .with_context(|| format!("{}", cfg.data.display()))?;
        cfg.train.validate()?;
        cfg.backbone.validate()?;
        if indices.is_empty() {
            bail!("{}: no training images selected", cfg.data.display());
        }
        task.check_run(cfg, self.run)
    }
}

/// What a task's [`Task::pretrain`] gets: the run (folder, configuration, data) and the
/// training loop.
pub struct Job<'a> {
    pub run: &'a Path,
    pub cfg: &'a RunConfig,
    /// The training device (autodiff), seeded with the run's seed.
    pub train_device: &'a Device,
    /// The plain device, for inference after training.
    pub device: &'a Device,
    /// The images trained on; for a shard stream, the images it opened with (see
    /// [`open_training`]).
    pub set: Arc<ImageSet>,
    /// Tar shards streamed each epoch, in place of `set` and `indices`.
    pub stream: Option<Arc<data::shards::Stream>>,
    /// The source images trained on (of `set`).
    pub indices: Vec<usize>,
    pub resume: bool,
    pub progress: bool,
    pub stop_after: Option<usize>,
    pub timing: Option<Timing>,
}

impl Job<'_> {
    /// Channels of the backbone's input (the images' through the run's input transform).
    pub fn channels(&self) -> usize {
        self.cfg.input.channels(self.set.header.c)
    }

    /// Whether pictures of the trained network are drawn (not when only timing).
    pub fn draws(&self) -> bool {
        self.timing.is_none()
    }

    /// Eight images spread over the whole training subset, so a sheet is not one class
    /// of a sorted tree.
    pub fn sample(&self) -> ImageSet {
        self.set.subset(&preview_picks(&self.indices))
    }

    /// Preview, then train `model` on `task` (from the run's checkpoint when resuming);
    /// gives back the task and the trained model.
    pub fn fit<T: PretextTask, M: Learner>(
        &self,
        task: T,
        model: M,
    ) -> Result<(Arc<T>, M, TrainOutcome)> {
        let task = Arc::new(task);
        if !self.resume || !self.run.join("preview.png").exists() {
            task.preview(
                &self.sample(),
                &self.run.join("preview.png"),
                self.cfg.train.seed,
            )?;
        }
        let trainer = Trainer {
            run: self.run,
            cfg: &self.cfg.train,
            device: self.train_device,
            progress: self.progress,
            stop_after: self.stop_after,
            prefetch: 2,
            timing: self.timing,
        };
        let source = match &self.stream {
            Some(stream) => Source::Shards(stream.clone()),
            None => Source::Images {
                set: self.set.clone(),
                indices: Arc::new(self.indices.clone()),
            },
        };
        let (model, outcome) = trainer.fit(model, task.clone(), &source, self.resume)?;
        Ok((task, model, outcome))
    }
}

/// Eight images spread over the whole subset, so a sheet is not one class of a sorted tree.
fn preview_picks(indices: &[usize]) -> Vec<usize> {
    let step = (indices.len() / 8).max(1);
    indices.iter().step_by(step).take(8).copied().collect()
}

/// The source images a run trains on in an epoch: a stream's count, or the task's subset.
pub fn training_images(rc: &RunConfig, cache: &CacheOptions) -> Result<usize> {
    Ok(match open_training(&rc.data, rc.split, cache)? {
        (_, Some(stream)) => stream.len(),
        (set, None) => rc.task.task()?.training_indices(rc, &set)?.len(),
    })
}

/// What `pretext run` will do, with its estimated time: the pretraining left (`done` of
/// its epochs are), then the evaluation of the run and of its network at random init.
pub fn plan(
    out: &Path,
    rc: &RunConfig,
    done: usize,
    images: usize,
    eval: &crate::eval::EvalConfig,
    size: crate::eval::EvalSize,
    cal: &crate::eval::estimate::Calibration,
) -> Result<String> {
    use crate::eval::estimate::duration;
    let per_image = rc.task.task()?.inputs_per_image(&rc.task)?;
    let left = rc.train.epochs.saturating_sub(done);
    let pretraining = cal.training((left * images * per_image) as f64);
    let evaluation = cal.evaluation(eval, size.train, size.test);
    let arch = crate::models::torch::arch_name(rc.backbone.arch);
    Ok(format!(
        "plan for {}:
  pretraining: {} on {arch} width {}, {} of {} epochs of {images} images{}{}: ~{}
  evaluation: the run and the same network at random init, each with linear probes ({} epochs{}), kNN and k-means on {} train / {} test images: ~{} each
  estimated total: ~{}, from {:.0} s of timing the network here (training {:.0} / inference {:.0} inputs/s); the data pipeline and other load are not in it
",
        out.display(),
        rc.method(),
        rc.backbone.width,
        left,
        rc.train.epochs,
        if per_image > 1 {
            format!(" ({per_image} inputs each)")
        } else {
            String::new()
        },
        if done > 0 {
            format!(", resumed after epoch {done}")
        } else {
            String::new()
        },
        duration(pretraining),
        eval.probe.epochs,
        if eval.probe.sweep.is_some() {
            ", swept"
        } else {
            ""
        },
        size.train,
        size.test,
        duration(evaluation),
        duration(pretraining + 2.0 * evaluation),
        cal.seconds,
        cal.train_inputs_per_s,
        cal.infer_inputs_per_s,
    ))
}

/// The backbone of a run, on `dev` as it is (call `.valid()` for inference): from its latest
/// checkpoint — its backbone's entries alone, no head is built — or, with `random_init`,
/// as the task's network initializes it (seeded by the caller's device seed). Returns it
/// with the checkpoint's epoch.
pub fn load_backbone(
    cfg: &RunConfig,
    run: &Path,
    random_init: bool,
    dev: &Device,
) -> Result<(Backbone, usize)> {
    let task = cfg.task.task()?;
    if random_init {
        return Ok((task.random_backbone(cfg, dev)?, 0));
    }
    let Some((dir, state)) = checkpoint::latest(run)? else {
        bail!(
            "{}: no checkpoint yet (train first, or pass --random-init)",
            run.display()
        );
    };
    let backbone = checkpoint::load_part(
        cfg.backbone.init(dev),
        &dir.join("model.bpk"),
        task.backbone_path(),
    )?;
    Ok((backbone, state.epoch))
}

/// Normalization statistics of a split as the network sees it (from up to 10k images).
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
