//! One loop for every classification-style objective (pretext heads, supervised training):
//! the task lives in the [`SampleMaker`] that builds batches and in the model's head.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, TrainState};
use super::{OptimConfig, Schedule};
use crate::data::loader::{self, Batch, LoaderConfig, SampleMaker, Source};

pub use crate::models::Classifier;

/// What one training step reports, kept on the device until the next read-back: the loss
/// and the task's score summed over `count` units (inputs, images or pixels).
pub struct StepStats {
    pub loss_sum: Tensor<1>,
    pub score_sum: Tensor<1>,
    pub count: u64,
}

/// What one optimizer step works on: the batch, the device, the optimizer and the rate.
pub struct Step<'a> {
    pub batch: Batch,
    pub dev: &'a Device,
    pub optim: &'a mut ModuleOptimizer,
    pub lr: f64,
}

impl<'a> Step<'a> {
    /// The batch, device, optimizer and rate, to take apart in one line.
    pub fn parts(self) -> (Batch, &'a Device, &'a mut ModuleOptimizer, f64) {
        (self.batch, self.dev, self.optim, self.lr)
    }
}

/// A trainable objective: one optimizer step on a batch. Classifiers get this for free
/// (cross-entropy, accuracy); the context encoder steps its generator and discriminator
/// with their own losses.
pub trait Learner: Module + Sized {
    fn train_step(self, step: Step<'_>) -> (Self, StepStats);
    /// What the score is ("accuracy", "hole MSE", …), for logs and progress bars.
    fn score_name(&self) -> &'static str {
        "accuracy"
    }
}

/// Every classifier trains the same way: cross-entropy on the logits, accuracy as the score.
impl<M: Classifier> Learner for M {
    fn train_step(self, step: Step<'_>) -> (Self, StepStats) {
        classifier_step(self, step)
    }
}

fn classifier_step<M: Classifier>(model: M, step: Step<'_>) -> (M, StepStats) {
    let (batch, dev, optim, lr) = step.parts();
    let (x, y) = batch_tensors(batch, dev);
    let logits = model.logits(x);
    let [n, _] = logits.dims();
    let loss = cross_entropy(logits.clone(), y.clone());
    let stats = StepStats {
        loss_sum: loss.clone().detach() * n as f32,
        score_sum: correct(logits.detach(), y).float(),
        count: n as u64,
    };
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (optim.step(lr, model, grads), stats)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Source images per batch (a rotation batch holds 4× as many inputs).
    pub batch_size: usize,
    pub optim: OptimConfig,
    pub schedule: Schedule,
    pub seed: u64,
    /// Optimizer steps between read-backs of loss/accuracy (and NaN checks).
    pub log_every: usize,
    /// Checkpoints kept on disk.
    pub keep_checkpoints: usize,
}

impl TrainConfig {
    /// Refuse settings no training can run with, before anything is written.
    pub fn validate(&self) -> Result<()> {
        let o = &self.optim;
        anyhow::ensure!(self.epochs >= 1, "--epochs must be at least 1");
        anyhow::ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        anyhow::ensure!(
            o.lr.is_finite() && o.lr >= 0.0,
            "the learning rate must be a finite number ≥ 0, got {}",
            o.lr
        );
        anyhow::ensure!(
            o.weight_decay.is_finite() && o.weight_decay >= 0.0,
            "the weight decay must be a finite number ≥ 0, got {}",
            o.weight_decay
        );
        anyhow::ensure!(
            self.keep_checkpoints >= 1,
            "at least one checkpoint must be kept"
        );
        Ok(())
    }
}

/// What a finished (or stopped) training call leaves behind.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub state: TrainState,
    /// Mean loss of each epoch trained in this call, in order.
    pub epoch_losses: Vec<f64>,
    pub epoch_scores: Vec<f64>,
    pub images_per_second: f64,
}

/// Make the metrics log agree with the checkpoint training resumes from: drop the lines
/// of steps and epochs after it (a run killed mid-epoch redoes that epoch, and must not log
/// its first steps twice) and any torn last line, and add the checkpoint's own epoch line
/// if the run was killed before writing it.
pub fn repair_log(path: &Path, state: &TrainState) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut kept = String::new();
    let mut has_epoch = false;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let keep = match v["kind"].as_str() {
            Some("step") => v["step"].as_u64().is_some_and(|s| s <= state.step),
            Some("epoch") => {
                let e = v["epoch"].as_u64().unwrap_or(u64::MAX);
                has_epoch |= e == state.epoch as u64;
                e <= state.epoch as u64
            }
            _ => true,
        };
        if keep {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if !has_epoch && let Some(rec) = &state.log {
        kept.push_str(&format!("{rec}\n"));
    }
    if kept != text {
        crate::util::fsutil::write_bytes(path, kept.as_bytes())?;
    }
    Ok(())
}

/// Mean cross-entropy of `logits` against integer `targets`.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [_, k] = logits.dims();
    let onehot = targets.one_hot::<2>(k).float();
    (log_softmax(logits, 1) * onehot).sum_dim(1).mean().neg()
}

/// Number of rows whose arg-max equals the target.
pub fn correct(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1, Int> {
    let [n, _] = logits.dims();
    logits.argmax(1).reshape([n]).equal(targets).int().sum()
}

/// Inputs and integer targets of a batch as tensors.
pub fn batch_tensors(batch: Batch, dev: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let n = batch.targets.len();
    let x = Tensor::<4>::from_data(TensorData::new(batch.inputs, batch.shape), dev);
    let y = Tensor::<1, Int>::from_data(TensorData::new(batch.targets, [n]), dev);
    (x, y)
}

pub struct Trainer<'a> {
    pub run: &'a Path,
    pub cfg: &'a TrainConfig,
    pub device: &'a Device,
    pub progress: bool,
    /// Stop after this many epochs in this call (the rest is left for `--resume`).
    pub stop_after: Option<usize>,
    pub prefetch: usize,
    /// Timing only: see [`Timing`].
    pub timing: Option<Timing>,
}

/// A timing call: stop after `steps` batches of the first epoch, write no checkpoint, and
/// report the images/s of the batches after the first two (warm-up). With `train` false
/// the batches are only built and received, which times the data pipeline alone.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub steps: usize,
    pub train: bool,
}

/// Steps a timing call leaves out before it starts the clock (allocations, first batches).
const TIMING_WARMUP: usize = 2;

impl Trainer<'_> {
    /// Train `model` on the images of `source` with batches from `maker`, resuming from
    /// the run's latest checkpoint when `resume` is set.
    pub fn fit<M: Learner, S: SampleMaker>(
        &self,
        model: M,
        maker: Arc<S>,
        source: &Source,
        resume: bool,
    ) -> Result<(M, TrainOutcome)> {
        let cfg = self.cfg;
        let (mut model, mut optim, mut state) = self.start(model, resume)?;
        if source.is_empty() {
            bail!("no training images");
        }
        let lcfg = LoaderConfig {
            batch_size: cfg.batch_size,
            shuffle: true,
            // A partial last batch is dropped, unless it is the only one: images fewer than
            // a batch (a 1% fine-tuning subset) train as one smaller batch.
            drop_last: source.len() >= cfg.batch_size,
            seed: cfg.seed,
            prefetch: self.prefetch,
        };
        let log_path = self.run.join("metrics.jsonl");
        if self.timing.is_none() {
            repair_log(&log_path, &state)?;
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut outcome = TrainOutcome {
            state: state.clone(),
            epoch_losses: vec![],
            epoch_scores: vec![],
            images_per_second: 0.0,
        };
        let (mut run_images, mut run_seconds) = (0u64, 0f64);
        for (done_here, epoch) in (state.epoch..cfg.epochs).enumerate() {
            if self.stop_after.is_some_and(|s| done_here >= s) {
                break;
            }
            let batches = source.epoch(maker.clone(), &lcfg, epoch as u64);
            let e;
            (model, e) = self.epoch(model, &mut optim, &mut state, batches, epoch, &mut log)?;
            if let Some(ips) = e.timed_images_per_second {
                outcome.images_per_second = ips;
                return Ok((model, outcome));
            }
            run_images += e.images;
            run_seconds += e.seconds;
            self.end_epoch(&model, &optim, &mut state, &e, epoch, &mut log)?;
            outcome.epoch_losses.push(state.loss);
            outcome.epoch_scores.push(state.score);
        }
        outcome.state = state;
        outcome.images_per_second = run_images as f64 / run_seconds.max(1e-9);
        Ok((model, outcome))
    }

    /// A fresh optimizer and state, or — resuming — the run's latest checkpoint's.
    fn start<M: Learner>(
        &self,
        model: M,
        resume: bool,
    ) -> Result<(M, ModuleOptimizer, TrainState)> {
        let optim = self.cfg.optim.init();
        if resume {
            match checkpoint::latest(self.run)? {
                Some((dir, st)) => {
                    let model = checkpoint::load_model(model, &dir)?;
                    let optim = checkpoint::load_optim(optim, &dir)?;
                    eprintln!("resuming from {} (epoch {} done)", dir.display(), st.epoch);
                    return Ok((model, optim, st));
                }
                None => eprintln!(
                    "no checkpoint in {}: starting from scratch",
                    self.run.display()
                ),
            }
        }
        Ok((model, optim, TrainState::default()))
    }

    /// One epoch's batches: a step each, the loss and score read back every `log_every`
    /// steps (one device sync each) into step lines of the log. Stops at a non-finite loss
    /// (keeping the last checkpoint), at a loader failure, or when a timing has its steps.
    fn epoch<M: Learner>(
        &self,
        mut model: M,
        optim: &mut ModuleOptimizer,
        state: &mut TrainState,
        batches: loader::EpochBatches,
        epoch: usize,
        log: &mut std::fs::File,
    ) -> Result<(M, EpochSums)> {
        let cfg = self.cfg;
        let nb = batches.len();
        let score_name = model.score_name();
        let bar = crate::util::progress::bar(
            nb as u64,
            &format!("epoch {}/{}", epoch + 1, cfg.epochs),
            self.progress,
        );
        let t0 = Instant::now();
        let mut e = EpochSums::default();
        let mut pending_loss: Vec<Tensor<1>> = Vec::new();
        let mut pending_score: Vec<Tensor<1>> = Vec::new();
        let mut pending_inputs = 0u64;
        let mut timed: Option<(Instant, u64)> = None;
        let mut received = 0;
        for (b, batch) in batches.enumerate() {
            // A loader failure stops the run before anything of this epoch is kept.
            let batch = batch?;
            received += 1;
            if let Some(t) = self.timing {
                if b == TIMING_WARMUP.min(t.steps) {
                    let _ = self.device.sync();
                    timed = Some((Instant::now(), e.images));
                }
                if b >= t.steps {
                    break;
                }
                if !t.train {
                    e.images += batch.images as u64;
                    continue;
                }
            }
            e.lr = cfg.schedule.lr(
                cfg.optim.lr,
                epoch as f64 + b as f64 / nb as f64,
                cfg.epochs as f64,
            );
            e.images += batch.images as u64;
            let stats;
            (model, stats) = model.train_step(Step {
                batch,
                dev: self.device,
                optim,
                lr: e.lr,
            });
            pending_loss.push(stats.loss_sum);
            pending_score.push(stats.score_sum);
            pending_inputs += stats.count;
            state.step += 1;
            crate::util::fault::pause_at(&format!("step:{}", state.step));
            if (b + 1) % cfg.log_every.max(1) == 0 || b + 1 == nb {
                // One read-back per interval: on a GPU every read is a sync.
                let l: f64 = Tensor::cat(std::mem::take(&mut pending_loss), 0)
                    .sum()
                    .into_scalar::<f32>() as f64;
                let c: f64 = Tensor::cat(std::mem::take(&mut pending_score), 0)
                    .sum()
                    .into_scalar::<f32>() as f64;
                if !l.is_finite() {
                    self.diverged(l, epoch, state.step, e.lr)?;
                }
                e.loss += l;
                e.score += c;
                e.inputs += pending_inputs;
                let dt = t0.elapsed().as_secs_f64();
                let ips = e.images as f64 / dt.max(1e-9);
                let rec = serde_json::json!({
                    "kind": "step", "epoch": epoch + 1, "step": state.step, "lr": e.lr,
                    "loss": l / pending_inputs as f64, "score": c / pending_inputs as f64,
                    "score_name": score_name,
                    "images_per_second": ips,
                });
                writeln!(log, "{rec}")?;
                pending_inputs = 0;
                bar.set_message(format!(
                    "epoch {}/{} loss {:.4} {score_name} {:.4} {:.0} img/s",
                    epoch + 1,
                    cfg.epochs,
                    e.loss / e.inputs as f64,
                    e.score / e.inputs as f64,
                    ips
                ));
            }
            bar.set_position(b as u64 + 1);
        }
        bar.finish_and_clear();
        if self.timing.is_some() {
            let _ = self.device.sync();
            let (t, before) = timed.unwrap_or((t0, 0));
            e.timed_images_per_second =
                Some((e.images - before) as f64 / t.elapsed().as_secs_f64().max(1e-9));
            return Ok((model, e));
        }
        if received != nb {
            bail!(
                "epoch {} ended after {received} of {nb} batches; nothing of it was kept",
                epoch + 1
            );
        }
        e.seconds = t0.elapsed().as_secs_f64();
        Ok((model, e))
    }

    /// The error of a loss that became `loss` (NaN or infinite), naming the checkpoint
    /// that stays.
    fn diverged(&self, loss: f64, epoch: usize, step: u64, lr: f64) -> Result<()> {
        let kept = match checkpoint::latest(self.run)? {
            Some((d, s)) => format!(
                "the last good checkpoint (epoch {}) is kept in {}",
                s.epoch,
                d.display()
            ),
            None => "no checkpoint had been written yet".to_string(),
        };
        bail!(
            "training diverged: the loss became {loss} at epoch {}, step {step}; {kept}. \
             Lower the learning rate (now {lr:.4}) and resume with --resume.",
            epoch + 1
        )
    }

    /// A finished epoch: the state, its checkpoint, then its line in the log.
    fn end_epoch<M: Learner>(
        &self,
        model: &M,
        optim: &ModuleOptimizer,
        state: &mut TrainState,
        e: &EpochSums,
        epoch: usize,
        log: &mut std::fs::File,
    ) -> Result<()> {
        let cfg = self.cfg;
        state.epoch = epoch + 1;
        state.loss = e.loss / e.inputs.max(1) as f64;
        state.score = e.score / e.inputs.max(1) as f64;
        state.train_seconds += e.seconds;
        state.images_seen += e.images;
        let ips = e.images as f64 / e.seconds.max(1e-9);
        let score_name = model.score_name();
        let rec = serde_json::json!({
            "kind": "epoch", "epoch": state.epoch, "step": state.step, "lr": e.lr,
            "loss": state.loss, "score": state.score, "score_name": score_name,
            "seconds": e.seconds,
            "images_per_second": ips,
        });
        // The checkpoint first, then its line in the log: a run killed between the two
        // writes the line from the checkpoint when it resumes (see `repair_log`), so the
        // log never holds an epoch the checkpoints do not.
        state.log = Some(rec.clone());
        checkpoint::save(self.run, model, optim, state, cfg.keep_checkpoints)?;
        crate::util::fault::pause_at(&format!("epoch-log:{}", state.epoch));
        writeln!(log, "{rec}")?;
        log.flush()?;
        log.sync_data()?;
        if self.progress {
            eprintln!(
                "epoch {}/{}: loss {:.4}, pretext {score_name} {:.4}, {:.1} images/s, {:.0} s",
                state.epoch, cfg.epochs, state.loss, state.score, ips, e.seconds
            );
        }
        Ok(())
    }
}

/// What one epoch's batches summed to.
#[derive(Default)]
struct EpochSums {
    /// Loss and score summed over inputs, and the inputs.
    loss: f64,
    score: f64,
    inputs: u64,
    /// Source images, wall-clock seconds, the last learning rate.
    images: u64,
    seconds: f64,
    lr: f64,
    /// A timing's images/s (the epoch stopped after its steps).
    timed_images_per_second: Option<f64>,
}
