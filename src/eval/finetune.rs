//! Few-label fine-tuning: for each label setting (a fraction of every class, or a count
//! per class) and seed, on a balanced subset of the labelled train images, two protocols:
//!
//! - `whole`: the whole network fine-tuned from the run's checkpoint with a new linear
//!   head, beside the same network trained from random init on the very same images —
//!   the supervised baseline on those labels;
//! - `frozen`: RotNet's semi-supervised protocol (Gidaris et al. 2018, Table 5): the first
//!   layers frozen up to a tap (its second block, `conv2`, by default) with a conv block,
//!   global pooling and a linear layer trained on top, from lr 0.1 with its ×0.2 steps;
//!   beside the same head on the same layers at random init.
//!
//! All are scored top-1/top-5 on the test split. Every fine-tuning is a supervised run of
//! its own under `RUN/finetune/`, so an interrupted protocol resumes where it stopped.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::features::EvalView;
use super::metrics::top_k_accuracy;
use crate::data::augment::AugmentConfig;
use crate::data::loader::{self, LoaderConfig};
use crate::data::{CacheOptions, ImageSet, Split};
use crate::models::head::ClassifierNet;
use crate::models::probe::{FrozenTapNet, ProbeKind};
use crate::run::{Pretrain, RunConfig, subset_indices};
use crate::tasks::supervised::FrozenHead;
use crate::tasks::{SupervisedConfig, TaskConfig};
use crate::train::checkpoint;
use crate::train::trainer::Classifier;
use crate::train::{OptimConfig, Schedule, TrainConfig};
use crate::util::fsutil;
use crate::util::table::{csv_row, md_row};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    /// Fractions of each class's labelled images (1%, 5%, 10% by default).
    pub fractions: Vec<f64>,
    pub seeds: Vec<u64>,
    pub epochs: usize,
    pub batch_size: usize,
    pub optim: OptimConfig,
    pub schedule: Schedule,
    /// Test images (a seeded subset; `None`: all).
    #[serde(default)]
    pub test_images: Option<usize>,
    /// Labelled images per class (RotNet's 20/100/400/1000/5000), beside `fractions`.
    #[serde(default)]
    pub per_class: Vec<usize>,
    /// Which protocols run (default: `whole` alone).
    #[serde(default = "whole_only")]
    pub protocols: Vec<Protocol>,
    /// The `frozen` protocol's layer and head.
    #[serde(default)]
    pub frozen: FrozenProtocol,
    /// Samples per epoch, the subset gone through again until reached (RotNet: 50000 for
    /// every label count); `None`: one pass over the subset.
    #[serde(default)]
    pub epoch_size: Option<usize>,
}

/// The frozen protocol's batch (RotNet's classifiers train with 128).
pub const FROZEN_BATCH: usize = 128;

fn whole_only() -> Vec<Protocol> {
    vec![Protocol::Whole]
}

/// How the labelled images train the network (see the module's header).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Whole,
    Frozen,
}

/// RotNet's semi-supervised setting: a head of `kind` on `layer`, everything below frozen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrozenProtocol {
    /// The tap the head sits on (`None`: the backbone's second, RotNet's `conv2`).
    pub layer: Option<String>,
    pub kind: ProbeKind,
}

impl Default for FrozenProtocol {
    fn default() -> Self {
        Self {
            layer: None,
            kind: ProbeKind::Conv,
        }
    }
}

impl FrozenProtocol {
    /// The layer by name for a backbone with these taps.
    pub fn layer_of(&self, taps: &[String]) -> Result<String> {
        match &self.layer {
            Some(l) if taps.contains(l) => Ok(l.clone()),
            Some(l) => bail!(
                "no layer {l:?} to freeze up to (the layers: {})",
                taps.join(", ")
            ),
            None => taps
                .get(1)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("the frozen protocol needs a second layer")),
        }
    }
}

/// How many labels a fine-tuning gets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Labels {
    /// This fraction of each class.
    Fraction(f64),
    /// This many images of each class.
    PerClass(usize),
}

impl Labels {
    /// As tables write it: `1%`, `20/class`.
    pub fn name(&self) -> String {
        match *self {
            Labels::Fraction(f) => percent(f),
            Labels::PerClass(k) => format!("{k}/class"),
        }
    }
    /// As sub-run folders are named: `1pct`, `20pc`.
    fn slug(&self) -> String {
        match *self {
            Labels::Fraction(f) => format!("{:.0}pct", 100.0 * f),
            Labels::PerClass(k) => format!("{k}pc"),
        }
    }
}

impl FinetuneConfig {
    /// Refuse settings no fine-tuning can run with, before any work.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            !self.fractions.is_empty() || !self.per_class.is_empty(),
            "no label fraction or count per class given"
        );
        anyhow::ensure!(
            self.per_class.iter().all(|&k| k >= 1),
            "the labels per class must be at least 1"
        );
        anyhow::ensure!(!self.protocols.is_empty(), "no protocol given");
        anyhow::ensure!(
            self.frozen.kind != ProbeKind::Linear,
            "the frozen protocol's head is a conv block or an mlp"
        );
        anyhow::ensure!(
            self.epoch_size != Some(0),
            "--epoch-size must be at least 1"
        );
        for &f in &self.fractions {
            anyhow::ensure!(
                f > 0.0 && f <= 1.0,
                "a label fraction must be in (0, 1], got {f}"
            );
        }
        anyhow::ensure!(!self.seeds.is_empty(), "no seed given");
        anyhow::ensure!(self.epochs >= 1, "fine-tuning needs at least 1 epoch");
        anyhow::ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        anyhow::ensure!(
            self.optim.lr.is_finite() && self.optim.lr >= 0.0,
            "the learning rate must be a finite number ≥ 0, got {}",
            self.optim.lr
        );
        anyhow::ensure!(
            self.test_images != Some(0),
            "--test-images must be at least 1"
        );
        Ok(())
    }
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        let mut optim = OptimConfig::rotnet();
        optim.lr = 0.01;
        Self {
            fractions: vec![0.01, 0.05, 0.1],
            seeds: vec![0, 1, 2],
            epochs: 30,
            batch_size: 64,
            optim,
            schedule: Schedule::Cosine {
                min_factor: 0.0,
                warmup: 0.0,
            },
            test_images: None,
            per_class: vec![],
            protocols: whole_only(),
            frozen: FrozenProtocol::default(),
            epoch_size: None,
        }
    }
}

impl FinetuneConfig {
    /// Every label setting, fractions first, in the order given.
    pub fn labels(&self) -> Vec<Labels> {
        let f = self.fractions.iter().map(|&f| Labels::Fraction(f));
        f.chain(self.per_class.iter().map(|&k| Labels::PerClass(k)))
            .collect()
    }

    /// The sub-runs one run's protocol trains: settings × seeds × protocols × 2 starts.
    pub fn trainings(&self) -> usize {
        self.labels().len() * self.seeds.len() * self.protocols.len() * 2
    }
}

/// One fine-tuning: its subset, start and test accuracy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneRow {
    /// The share of the train images used (for a count per class, what it came to).
    pub fraction: f64,
    /// Labelled images per class, when the setting was a count.
    #[serde(default)]
    pub per_class: Option<usize>,
    #[serde(default)]
    pub protocol: Protocol,
    /// For `frozen`: the layer the head sits on.
    #[serde(default)]
    pub layer: Option<String>,
    pub seed: u64,
    /// `pretrained` (from the run's checkpoint) or `random-init`.
    pub init: String,
    pub train_images: usize,
    pub top1: f64,
    pub top5: f64,
    /// The sub-run that was trained and tested.
    #[serde(default)]
    pub run: String,
    /// For `pretrained`: the epoch of the run's checkpoint it started from.
    #[serde(default)]
    pub init_epoch: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneReport {
    pub method: String,
    pub run: String,
    /// The data fine-tuned and tested on, and the data the run was pretrained on (when
    /// pretext knows it); `None` in older reports.
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub pretrained_on: Option<String>,
    pub test_images: usize,
    pub protocol: FinetuneConfig,
    pub rows: Vec<FinetuneRow>,
}

/// One line of the few-label table: (mean, std) of the seeds' accuracies.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryRow {
    pub labels: Labels,
    pub protocol: Protocol,
    pub init: String,
    pub seeds: usize,
    pub top1: (f64, f64),
    pub top5: (f64, f64),
}

/// A label fraction in percent as people write it: 1%, 5%, 12.5%, 0.2% (whole percent
/// alone printed 0.2% as "0%").
pub fn percent(fraction: f64) -> String {
    let s = format!("{:.2}", 100.0 * fraction);
    format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
}

/// Mean and (sample) standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

impl FinetuneRow {
    pub fn labels(&self) -> Labels {
        match self.per_class {
            Some(k) => Labels::PerClass(k),
            None => Labels::Fraction(self.fraction),
        }
    }
}

impl FinetuneReport {
    /// The protocols' rows in words, for tables: `whole network` or `frozen to block2 + conv`.
    pub fn protocol_name(&self, p: Protocol) -> String {
        match p {
            Protocol::Whole => "whole network".into(),
            Protocol::Frozen => {
                let layer = self
                    .rows
                    .iter()
                    .find_map(|r| r.layer.clone())
                    .or_else(|| self.protocol.frozen.layer.clone())
                    .unwrap_or_else(|| "2nd layer".into());
                format!("frozen to {layer} + {}", self.protocol.frozen.kind.name())
            }
        }
    }

    /// The name of the data the network was pretrained on, when it is not the data it is
    /// fine-tuned on (a transfer).
    pub fn transfer_from(&self) -> Option<String> {
        self.data
            .as_deref()
            .and_then(|d| super::table::transfer_from(self.pretrained_on.as_deref(), d))
    }

    /// The method's name in tables: with the data it was pretrained on, for a transfer.
    pub fn name(&self) -> String {
        match self.transfer_from() {
            Some(from) => format!("{} (pretrained on {from})", self.method),
            None => self.method.clone(),
        }
    }

    /// Mean ± std of top-1 and top-5 per (labels, protocol, init), in the order met.
    pub fn summary(&self) -> Vec<SummaryRow> {
        let key = |r: &FinetuneRow| (r.labels(), r.protocol, r.init.clone());
        let mut keys: Vec<(Labels, Protocol, String)> = vec![];
        for r in &self.rows {
            if !keys.contains(&key(r)) {
                keys.push(key(r));
            }
        }
        keys.into_iter()
            .map(|k| {
                let rows: Vec<&FinetuneRow> = self.rows.iter().filter(|r| key(r) == k).collect();
                let t1: Vec<f64> = rows.iter().map(|r| r.top1).collect();
                let t5: Vec<f64> = rows.iter().map(|r| r.top5).collect();
                let (labels, protocol, init) = k;
                SummaryRow {
                    labels,
                    protocol,
                    init,
                    seeds: rows.len(),
                    top1: mean_std(&t1),
                    top5: mean_std(&t5),
                }
            })
            .collect()
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let p = &self.protocol;
        let _ = writeln!(
            s,
            "## Few-label fine-tuning — {} ({})\n\nOn a balanced per-class subset of the labelled train images; {} epochs{}; test on {} images. Mean ± std over seeds, accuracies in %.\n",
            self.name(),
            self.run,
            p.epochs,
            p.epoch_size.map_or(String::new(), |n| format!(
                " of {n} samples (a smaller subset repeated to {n}, a larger one seen once)"
            )),
            self.test_images
        );
        if p.protocols.contains(&Protocol::Whole) {
            let _ = writeln!(
                s,
                "- whole network: fine-tuned from the method's checkpoint with a new linear head, {:?} lr {} {}, batch {}; `random-init` is the supervised baseline — the same network trained from scratch on the same images.",
                p.optim.kind,
                p.optim.lr,
                schedule_name(&p.schedule),
                p.batch_size
            );
        }
        if p.protocols.contains(&Protocol::Frozen) {
            let _ = writeln!(
                s,
                "- {}: RotNet's semi-supervised protocol — the layers up to it frozen (eval mode), a {} head trained on top, SGD Nesterov lr 0.1 wd 5e-4 ×0.2 at {:?} of the run, batch {FROZEN_BATCH} (RotNet: 100 epochs of 50000 samples); `random-init` freezes the same layers at random init (RotNet's own comparison is the supervised network: the `whole` random-init row).",
                self.protocol_name(Protocol::Frozen),
                p.frozen.kind.name(),
                p.frozen.kind.milestones()
            );
        }
        let _ = writeln!(
            s,
            "\n| labels | protocol | init | seeds | top-1 | top-5 |\n|---|---|---|---|---|---|"
        );
        for r in self.summary() {
            let pm = |(m, sd): (f64, f64)| format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * sd);
            let cells = [
                r.labels.name(),
                self.protocol_name(r.protocol),
                r.init.clone(),
                r.seeds.to_string(),
                pm(r.top1),
                pm(r.top5),
            ];
            let _ = writeln!(s, "{}", md_row(cells));
        }
        s
    }

    pub fn csv(&self) -> String {
        let mut s = String::from(
            "method,fraction,per_class,protocol,layer,seed,init,train_images,test_images,epochs,top1,top5,pretrained_on\n",
        );
        let from = self.transfer_from().unwrap_or_default();
        for r in &self.rows {
            let cells = [
                self.method.clone(),
                r.fraction.to_string(),
                r.per_class.map_or(String::new(), |k| k.to_string()),
                match r.protocol {
                    Protocol::Whole => "whole".into(),
                    Protocol::Frozen => "frozen".into(),
                },
                r.layer.clone().unwrap_or_default(),
                r.seed.to_string(),
                r.init.clone(),
                r.train_images.to_string(),
                self.test_images.to_string(),
                self.protocol.epochs.to_string(),
                format!("{:.4}", r.top1),
                format!("{:.4}", r.top5),
                // A random-init twin learnt nothing before: no data to name.
                if r.init == "pretrained" {
                    from.clone()
                } else {
                    String::new()
                },
            ];
            let _ = writeln!(s, "{}", csv_row(cells));
        }
        s
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        fsutil::write_bytes(&dir.join("finetune.md"), self.markdown().as_bytes())?;
        fsutil::write_bytes(&dir.join("finetune.csv"), self.csv().as_bytes())?;
        fsutil::write_bytes(
            &dir.join("finetune.json"),
            &serde_json::to_vec_pretty(self)?,
        )?;
        Ok(())
    }

    pub fn read(dir: &Path) -> Result<Self> {
        Ok(serde_json::from_slice(&std::fs::read(
            dir.join("finetune.json"),
        )?)?)
    }
}

fn schedule_name(s: &Schedule) -> String {
    match s {
        Schedule::Constant => "constant".into(),
        Schedule::Cosine { .. } => "cosine".into(),
        Schedule::Step { milestones, gamma } => format!("×{gamma} at {milestones:?} of the run"),
    }
}

/// Test top-1/top-5 of a trained classifier run on `test`.
pub fn classify(
    run: &Path,
    rc: &RunConfig,
    test: Arc<ImageSet>,
    dev: &Device,
) -> Result<(f64, f64)> {
    if rc.task.name() != "supervised" {
        bail!("{} is not a supervised run", run.display());
    }
    let sc: SupervisedConfig = rc.task.typed()?;
    let Some((dir, _)) = checkpoint::latest(run)? else {
        bail!("{}: no checkpoint", run.display());
    };
    let model: Box<dyn Fn(Tensor<4>) -> Tensor<2>> = match &sc.frozen {
        None => {
            let net = ClassifierNet::new(&rc.backbone, sc.classes, dev);
            let net = checkpoint::load_model(net, &dir)?.valid();
            Box::new(move |x| net.logits(x))
        }
        Some(f) => {
            let net = FrozenTapNet::new(
                &rc.backbone,
                rc.backbone.init(dev),
                &f.layer,
                f.kind,
                sc.classes,
                dev,
            )?;
            let net = checkpoint::load_model(net, &dir)?.valid();
            Box::new(move |x| net.logits(x))
        }
    };
    let view = Arc::new(EvalView::for_run(rc));
    let cfg = LoaderConfig {
        batch_size: 256,
        shuffle: false,
        drop_last: false,
        seed: 0,
        prefetch: 2,
    };
    let indices: Vec<usize> = (0..test.len()).collect();
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for batch in loader::epoch(test, view, &indices, &cfg, 0) {
        let batch = batch?;
        labels.extend(batch.targets.iter().map(|&t| t.max(0) as u16));
        let x = Tensor::<4>::from_data(TensorData::new(batch.inputs, batch.shape), dev);
        scores.extend(model(x).into_data().try_into_vec::<f32>().expect("f32"));
    }
    Ok((
        top_k_accuracy(&scores, sc.classes, &labels, 1),
        top_k_accuracy(&scores, sc.classes, &labels, 5),
    ))
}

/// Run the few-label protocol for `run` on the labelled splits of `data`. The random-init
/// trainings go under `RUN/finetune/`, or into `shared_baselines` when given: there each is
/// keyed by a hash of its full configuration, so runs whose random-init baseline would be
/// the very same training (same backbone, input, augmentation, subset, schedule) share it.
pub fn finetune_run(
    run: &Path,
    data: &Path,
    cfg: &FinetuneConfig,
    shared_baselines: Option<&Path>,
    cache: &CacheOptions,
    dev: &Device,
    progress: bool,
) -> Result<(FinetuneReport, PathBuf)> {
    cfg.validate()?;
    let rc = RunConfig::load(run)?;
    let run = std::fs::canonicalize(run).unwrap_or_else(|_| run.to_path_buf());
    let Some((_, parent)) = checkpoint::latest(&run)? else {
        bail!(
            "{}: no checkpoint to fine-tune (train first)",
            run.display()
        );
    };
    // Which checkpoint a pretrained sub-run starts from is part of its identity: after
    // more pretraining, the old fine-tunings are not the new checkpoint's.
    let parent_state = serde_json::to_string(&checkpoint::TrainState {
        log: None,
        ..parent.clone()
    })?;
    let (train, test) = super::labelled_splits(&rc, data, cache)?;
    let test = Arc::new(test.subset(&subset_indices(test.len(), cfg.test_images, 1)));
    let classes = train.num_classes();
    let labels = train.header.labels.as_deref().unwrap_or(&[]);
    let taps = rc.backbone.tap_names();
    let frozen_layer = if cfg.protocols.contains(&Protocol::Frozen) {
        Some(cfg.frozen.layer_of(&taps)?)
    } else {
        None
    };
    // Every subset is drawn before any training: a count no class can give fails now.
    for setting in cfg.labels() {
        for &seed in &cfg.seeds {
            subset_of(labels, classes, setting, seed)?;
        }
    }
    let mut rows = Vec::new();
    for setting in cfg.labels() {
        for &protocol in &cfg.protocols {
            for &seed in &cfg.seeds {
                for pretrained in [true, false] {
                    let init = if pretrained {
                        "pretrained"
                    } else {
                        "random-init"
                    };
                    let (per_class, label_fraction) = match setting {
                        Labels::PerClass(k) => (Some(k), None),
                        Labels::Fraction(f) => (None, Some(f)),
                    };
                    let frozen = match protocol {
                        Protocol::Whole => None,
                        Protocol::Frozen => Some(FrozenHead {
                            kind: cfg.frozen.kind,
                            layer: frozen_layer.clone().expect("resolved above"),
                        }),
                    };
                    let (optim, schedule, batch_size) = match &frozen {
                        None => (cfg.optim.clone(), cfg.schedule.clone(), cfg.batch_size),
                        // RotNet's classifier recipe: lr 0.1, ×0.2 steps, batch 128.
                        Some(f) => (
                            crate::train::OptimConfig::rotnet(),
                            Schedule::Step {
                                milestones: f.kind.milestones(),
                                gamma: 0.2,
                            },
                            FROZEN_BATCH,
                        ),
                    };
                    let prefix = frozen.as_ref().map_or(String::new(), |f| {
                        format!("frozen-{}-{}-", f.layer, f.kind.name())
                    });
                    let name = format!("{prefix}{}-seed{seed}-{init}", setting.slug());
                    let task = SupervisedConfig {
                        classes,
                        label_fraction,
                        subset_seed: seed,
                        init_from: pretrained.then(|| run.clone()),
                        per_class,
                        epoch_size: cfg.epoch_size,
                        frozen: frozen.clone(),
                    };
                    let train_cfg = TrainConfig {
                        epochs: cfg.epochs,
                        batch_size,
                        optim,
                        schedule,
                        seed,
                        log_every: 10,
                        keep_checkpoints: 1,
                    };
                    let sub = labelled_run(&rc, data, cache, None, &task, train_cfg)?;
                    // A sub-run is named by its whole configuration, so other settings train
                    // other sub-runs instead of reporting old ones under the new settings.
                    let (folder, identity) = match shared_baselines {
                        Some(pool) if !pretrained => (pool.to_path_buf(), String::new()),
                        _ if !pretrained => (run.join("finetune"), String::new()),
                        _ => (run.join("finetune"), parent_state.clone()),
                    };
                    let dir = folder.join(format!("{name}-{}", config_hash(&sub, &identity)?));
                    let what = format!(
                        "fine-tuning {} ({}) seed {seed} from {init}",
                        setting.name(),
                        match &frozen {
                            None => "whole network".to_string(),
                            Some(f) => format!("frozen to {} + {}", f.layer, f.kind.name()),
                        }
                    );
                    let said = progress.then_some(what.as_str());
                    let (top1, top5) = train_and_test(&dir, sub, test.clone(), cache, dev, said)?;
                    let n = subset_of(labels, classes, setting, seed)?.len();
                    rows.push(FinetuneRow {
                        fraction: match setting {
                            Labels::Fraction(f) => f,
                            Labels::PerClass(_) => n as f64 / train.len().max(1) as f64,
                        },
                        per_class,
                        protocol,
                        layer: frozen.map(|f| f.layer),
                        seed,
                        init: init.to_string(),
                        train_images: n,
                        top1,
                        top5,
                        run: dir.display().to_string(),
                        init_epoch: pretrained.then_some(parent.epoch),
                    });
                }
            }
        }
    }
    let report = FinetuneReport {
        method: rc.method(),
        run: run.display().to_string(),
        data: Some(data.display().to_string()),
        pretrained_on: rc.pretrained_on(),
        test_images: test.len(),
        protocol: cfg.clone(),
        rows,
    };
    let out = run.join("finetune");
    report.write(&out)?;
    Ok((report, out))
}

/// A supervised sub-run of `rc`'s network on the labelled train split of `data` (the
/// held-out split of `cache`, so the test images stay out), with the protocols' own
/// augmentation whatever the run trained with: random crop (the run's padding, or 4) and
/// flip.
pub(crate) fn labelled_run(
    rc: &RunConfig,
    data: &Path,
    cache: &CacheOptions,
    train_images: Option<usize>,
    task: &SupervisedConfig,
    train: TrainConfig,
) -> Result<RunConfig> {
    Ok(RunConfig {
        data: data.to_path_buf(),
        split: Split::Train,
        holdout: cache.holdout,
        train_images,
        task: TaskConfig::of("supervised", task),
        augment: AugmentConfig {
            pad: if rc.augment.pad > 0 {
                rc.augment.pad
            } else {
                4
            },
            flip: true,
            ..rc.augment.clone()
        },
        train,
        ..rc.clone()
    })
}

/// Train the sub-run `sub` in `dir` to its last epoch (continuing what an interrupted call
/// left; saying `progress` first, with a progress bar), then its test top-1/top-5 on `test`.
pub(crate) fn train_and_test(
    dir: &Path,
    sub: RunConfig,
    test: Arc<ImageSet>,
    cache: &CacheOptions,
    dev: &Device,
    progress: Option<&str>,
) -> Result<(f64, f64)> {
    let done = checkpoint::latest(dir)?.is_some_and(|(_, s)| s.epoch >= sub.train.epochs);
    if !done {
        if let Some(what) = progress {
            eprintln!("{what}");
        }
        let resume = RunConfig::path(dir).exists();
        Pretrain {
            run: dir,
            device: dev,
            progress: progress.is_some(),
            stop_after: None,
            cache,
            timing: None,
        }
        .run((!resume).then_some(sub), resume)?;
    }
    let sub = RunConfig::load(dir)?;
    classify(dir, &sub, test, dev)
}

/// The labelled images a setting and seed select, as the supervised task selects them.
fn subset_of(labels: &[u16], classes: usize, setting: Labels, seed: u64) -> Result<Vec<usize>> {
    match setting {
        Labels::Fraction(f) => crate::tasks::supervised::balanced_subset(labels, classes, f, seed),
        Labels::PerClass(k) => crate::tasks::supervised::per_class_subset(labels, classes, k, seed),
    }
}

/// First 8 hex digits of the MD5 of a configuration's TOML (and `extra`): a name for
/// "this exact run".
pub(crate) fn config_hash(rc: &RunConfig, extra: &str) -> Result<String> {
    use md5::{Digest, Md5};
    let mut text = toml::to_string(rc)?;
    text.push_str(extra);
    let digest = Md5::digest(text.as_bytes());
    Ok(digest[..4].iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std_by_hand() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        // Sample variance: (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3.
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[0.7]), (0.7, 0.0));
    }

    #[test]
    fn label_fractions_print_as_people_write_them() {
        assert_eq!(percent(0.01), "1%");
        assert_eq!(percent(0.1), "10%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.002), "0.2%");
        assert_eq!(percent(0.125), "12.5%");
        assert_eq!(percent(0.003), "0.3%");
    }
}
