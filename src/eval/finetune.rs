//! Few-label fine-tuning: for each label fraction (balanced per class) and seed, the whole
//! network is fine-tuned from the run's checkpoint with a new linear head, and — on the very
//! same images — trained from random init; both are scored top-1/top-5 on the test split.
//! Every fine-tuning is a supervised run of its own under `RUN/finetune/`, so an
//! interrupted protocol resumes where it stopped.

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
use crate::run::{Pretrain, RunConfig, subset_indices};
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
}

impl FinetuneConfig {
    /// Refuse settings no fine-tuning can run with, before any work.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(!self.fractions.is_empty(), "no label fraction given");
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
        }
    }
}

/// One fine-tuning: its subset, start and test accuracy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneRow {
    pub fraction: f64,
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
    pub fraction: f64,
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

impl FinetuneReport {
    /// The method's name in tables: with the data it was pretrained on, for a transfer.
    pub fn name(&self) -> String {
        let from = self
            .data
            .as_deref()
            .and_then(|d| super::table::transfer_from(self.pretrained_on.as_deref(), d));
        match from {
            Some(from) => format!("{} (pretrained on {from})", self.method),
            None => self.method.clone(),
        }
    }

    /// Mean ± std of top-1 and top-5 per (fraction, init), in the order met.
    pub fn summary(&self) -> Vec<SummaryRow> {
        let mut keys: Vec<(f64, String)> = vec![];
        for r in &self.rows {
            if !keys.iter().any(|(f, i)| *f == r.fraction && *i == r.init) {
                keys.push((r.fraction, r.init.clone()));
            }
        }
        keys.into_iter()
            .map(|(f, init)| {
                let rows: Vec<&FinetuneRow> = self
                    .rows
                    .iter()
                    .filter(|r| r.fraction == f && r.init == init)
                    .collect();
                let t1: Vec<f64> = rows.iter().map(|r| r.top1).collect();
                let t5: Vec<f64> = rows.iter().map(|r| r.top5).collect();
                SummaryRow {
                    fraction: f,
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
        let _ = writeln!(
            s,
            "## Few-label fine-tuning — {} ({})\n\nWhole network fine-tuned with a new linear head on a balanced per-class subset, beside the same network trained from random init on the same images; {} epochs, {:?} lr {}, batch {}; test on {} images. Mean ± std over seeds, accuracies in %.\n",
            self.name(),
            self.run,
            self.protocol.epochs,
            self.protocol.optim.kind,
            self.protocol.optim.lr,
            self.protocol.batch_size,
            self.test_images
        );
        let _ = writeln!(
            s,
            "| labels | init | seeds | top-1 | top-5 |\n|---|---|---|---|---|"
        );
        for r in self.summary() {
            let pm = |(m, sd): (f64, f64)| format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * sd);
            let cells = [
                percent(r.fraction),
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
        let mut s =
            String::from("method,fraction,seed,init,train_images,test_images,epochs,top1,top5\n");
        for r in &self.rows {
            let cells = [
                self.method.clone(),
                r.fraction.to_string(),
                r.seed.to_string(),
                r.init.clone(),
                r.train_images.to_string(),
                self.test_images.to_string(),
                self.protocol.epochs.to_string(),
                format!("{:.4}", r.top1),
                format!("{:.4}", r.top5),
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
    let model =
        checkpoint::load_model(ClassifierNet::new(&rc.backbone, sc.classes, dev), &dir)?.valid();
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
        scores.extend(
            model
                .logits(x)
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32"),
        );
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
    let mut rows = Vec::new();
    for &fraction in &cfg.fractions {
        for &seed in &cfg.seeds {
            for pretrained in [true, false] {
                let init = if pretrained {
                    "pretrained"
                } else {
                    "random-init"
                };
                let name = format!("{:.0}pct-seed{seed}-{init}", 100.0 * fraction);
                let sub = RunConfig {
                    data: data.to_path_buf(),
                    split: Split::Train,
                    // The same held-out split the test images come from.
                    holdout: cache.holdout,
                    train_images: None,
                    task: TaskConfig::of(
                        "supervised",
                        &SupervisedConfig {
                            classes,
                            label_fraction: Some(fraction),
                            subset_seed: seed,
                            init_from: pretrained.then(|| run.clone()),
                        },
                    ),
                    augment: AugmentConfig {
                        pad: if rc.augment.pad > 0 {
                            rc.augment.pad
                        } else {
                            4
                        },
                        // The protocol's own augmentation, whatever the run trained with.
                        flip: true,
                        ..rc.augment.clone()
                    },
                    train: TrainConfig {
                        epochs: cfg.epochs,
                        batch_size: cfg.batch_size,
                        optim: cfg.optim.clone(),
                        schedule: cfg.schedule.clone(),
                        seed,
                        log_every: 10,
                        keep_checkpoints: 1,
                    },
                    ..rc.clone()
                };
                // A sub-run is named by its whole configuration, so other settings train
                // other sub-runs instead of reporting old ones under the new settings.
                let (folder, identity) = match shared_baselines {
                    Some(pool) if !pretrained => (pool.to_path_buf(), String::new()),
                    _ if !pretrained => (run.join("finetune"), String::new()),
                    _ => (run.join("finetune"), parent_state.clone()),
                };
                let dir = folder.join(format!("{name}-{}", config_hash(&sub, &identity)?));
                let done = checkpoint::latest(&dir)?.is_some_and(|(_, s)| s.epoch >= cfg.epochs);
                if !done {
                    if progress {
                        eprintln!("fine-tuning {} seed {seed} from {init}", percent(fraction));
                    }
                    let resume = RunConfig::path(&dir).exists();
                    Pretrain {
                        run: &dir,
                        device: dev,
                        progress,
                        stop_after: None,
                        cache,
                        timing: None,
                    }
                    .run((!resume).then_some(sub), resume)?;
                }
                let sub = RunConfig::load(&dir)?;
                let s: SupervisedConfig = sub.task.typed()?;
                let n = crate::tasks::supervised::balanced_subset(
                    train.header.labels.as_deref().unwrap_or(&[]),
                    classes,
                    s.label_fraction.unwrap_or(1.0),
                    s.subset_seed,
                )?
                .len();
                let (top1, top5) = classify(&dir, &sub, test.clone(), dev)?;
                rows.push(FinetuneRow {
                    fraction,
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

/// First 8 hex digits of the MD5 of a configuration's TOML (and `extra`): a name for
/// "this exact run".
fn config_hash(rc: &RunConfig, extra: &str) -> Result<String> {
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
