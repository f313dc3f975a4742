//! `pretext study`: the whole comparison in one command — every chosen pretext task and the
//! supervised baseline pretrained at the same wall-clock budget, each evaluated by the same
//! protocols beside random init, few-label fine-tuning, and the report.
//!
//! A study is a folder of ordinary run directories plus `study.toml` (its settings) and
//! `study.json` (what each step measured). Every step checks for its own outputs first, so
//! running the command again after an interruption carries on where it stopped: a
//! pretraining resumes from its last checkpoint, finished evaluations are not redone.
//!
//! The budget is wall-clock time per method, turned into epochs before the run starts (a
//! few timed steps give the method's images/s here), because the schedules need the number
//! of epochs up front and because the tasks' costs per image differ by ~30×: equal epochs
//! would not be equal compute.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::config::PretrainSpec;
use crate::data::{CacheOptions, Split};
use crate::eval::estimate::{self, Calibration};
use crate::eval::finetune::{FinetuneConfig, finetune_run};
use crate::eval::finetune::{Labels, Protocol};
use crate::eval::{EvalConfig, EvalSize, evaluate_run};
use crate::models::{Arch, BackboneConfig};
use crate::report::{Comparison, gather};
use crate::run::{InputTransform, Pretrain, RunConfig, open_split};
use crate::tasks::supervised::balanced_subset;
use crate::tasks::{self, Task};
use crate::train::OptimKind;
use crate::train::checkpoint;
use crate::train::trainer::Timing;
use crate::util::fsutil;

/// What a study's checks found: the evaluation's sizes and each method's configuration
/// (in [`Study::methods`] order).
struct Checked {
    size: EvalSize,
    configs: Vec<RunConfig>,
}

/// The plan's time estimate, in seconds.
pub struct Estimate {
    pub pretraining: f64,
    pub evaluation: f64,
    pub finetuning: f64,
    /// The seconds spent timing the networks.
    pub timed_seconds: f64,
    /// Training and inference inputs/s of each network timed.
    pub speeds: Vec<(f64, f64)>,
}

/// Steps timed (after two of warm-up) to turn the budget into epochs.
const CALIBRATION_STEPS: usize = 10;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyConfig {
    pub data: PathBuf,
    /// Pretext tasks, in the order they run.
    pub tasks: Vec<String>,
    /// Also train the supervised baseline (all labels of the same training images).
    pub supervised: bool,
    /// Pretraining wall-clock seconds per method.
    pub budget_seconds: f64,
    /// Upper bound on the epochs a budget may buy (cheap tasks on large budgets).
    pub max_epochs: usize,
    pub backbone: Arch,
    pub width: Option<usize>,
    pub blocks: usize,
    /// Pretraining images (seeded subset; `None`: all).
    pub train_images: Option<usize>,
    pub batch_size: usize,
    /// SGD learning rate (cosine schedule) of every method but inpainting, which keeps its
    /// paper's Adam 2e-4.
    pub lr: f64,
    pub seed: u64,
    pub eval: EvalConfig,
    pub finetune: FinetuneConfig,
    /// Tasks whose checkpoints are fine-tuned on few labels.
    pub finetune_tasks: Vec<String>,
    /// The test split held out of a class tree without split folders (see
    /// [`crate::data::Holdout`]); every method's run and every evaluation uses it. `None`
    /// in studies made before held-out splits existed.
    #[serde(default)]
    pub holdout: Option<crate::data::Holdout>,
    /// Where the pretext tasks pretrain, when not on `data` (a transfer: labels are not
    /// needed there; evaluation, fine-tuning and the supervised baseline use `data`).
    #[serde(default)]
    pub pretrain_data: Option<PathBuf>,
    /// The SGD tasks' schedule (`None`: cosine).
    #[serde(default)]
    pub schedule: Option<String>,
    /// The paper recipe the study runs, when it runs one.
    #[serde(default)]
    pub recipe: Option<crate::commands::recipe::Applied>,
}

/// What one method's steps measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodRecord {
    pub method: String,
    pub run: PathBuf,
    /// Source images/s of the timed steps that sized the run (`None` for a recipe, whose
    /// epochs are fixed: nothing is timed).
    pub calibrated_images_per_second: Option<f64>,
    pub epochs: usize,
    pub images_seen: u64,
    /// Training time as the checkpoints record it (excludes calibration and evaluation).
    pub pretrain_seconds: f64,
    pub final_loss: f64,
    pub final_score: f64,
    pub eval_seconds: Option<f64>,
    pub finetune_seconds: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StudyLog {
    pub methods: Vec<MethodRecord>,
    pub random_init_eval_seconds: Option<f64>,
}

impl StudyLog {
    fn entry(&mut self, method: &str) -> &mut MethodRecord {
        if let Some(i) = self.methods.iter().position(|m| m.method == method) {
            return &mut self.methods[i];
        }
        self.methods.push(MethodRecord {
            method: method.to_string(),
            ..Default::default()
        });
        self.methods.last_mut().expect("just pushed")
    }
}

/// Parse "90s", "10m", "1.5h" or a bare number of seconds.
pub fn parse_budget(s: &str) -> Result<f64> {
    let t = s.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let scale = match unit {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => bail!("budget {s:?}: expected a time such as 90s, 10m or 1.5h"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("budget {s:?}: expected a time such as 90s, 10m or 1.5h"))?;
    if !(v > 0.0 && v.is_finite()) {
        bail!("budget {s:?} must be a positive time");
    }
    Ok(v * scale)
}

/// Epochs that fit `budget` seconds at `images_per_second`, at least 1 and at most `max`.
pub fn epochs_for(budget: f64, images_per_second: f64, images: usize, max: usize) -> usize {
    let e = (budget * images_per_second / images.max(1) as f64).floor() as usize;
    e.clamp(1, max.max(1))
}

pub struct Study<'a> {
    pub out: &'a Path,
    pub cfg: StudyConfig,
    pub cache: &'a CacheOptions,
    pub device: &'a Device,
    pub progress: bool,
}

impl Study<'_> {
    fn path(out: &Path) -> PathBuf {
        out.join("study.toml")
    }

    /// The settings saved in a study folder.
    pub fn load_config(out: &Path) -> Result<StudyConfig> {
        let p = Self::path(out);
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("{}: no study here (start one with --data)", p.display()))?;
        toml::from_str(&text).with_context(|| format!("{}: not a study configuration", p.display()))
    }

    fn log_path(&self) -> PathBuf {
        self.out.join("study.json")
    }

    fn read_log(&self) -> Result<StudyLog> {
        let p = self.log_path();
        if !p.exists() {
            return Ok(StudyLog::default());
        }
        serde_json::from_slice(&std::fs::read(&p)?)
            .with_context(|| format!("{}: not a study log", p.display()))
    }

    fn save_log(&self, log: &StudyLog) -> Result<()> {
        fsutil::write_bytes(&self.log_path(), &serde_json::to_vec_pretty(log)?)
    }

    /// The methods in the order they run: the tasks, then the supervised baseline.
    fn methods(&self) -> Vec<String> {
        let mut m = self.cfg.tasks.clone();
        if self.cfg.supervised {
            m.push(tasks::supervised::TASK.name().to_string());
        }
        m
    }

    /// The time the evaluations and fine-tunings will take, estimated from a short timing
    /// of each network the study trains (see [`estimate`]); pretraining takes its budget.
    fn estimate(&self, checked: &Checked) -> Result<Estimate> {
        let c = &self.cfg;
        let t0 = std::time::Instant::now();
        let mut nets: Vec<((BackboneConfig, InputTransform), Calibration)> = vec![];
        for rc in &checked.configs {
            let key = (rc.backbone.clone(), rc.input);
            if !nets.iter().any(|(k, _)| *k == key) {
                let cal =
                    estimate::calibrate(&rc.backbone, &c.eval, checked.size.classes, self.device)?;
                nets.push((key, cal));
            }
        }
        let cal_of = |m: &str| {
            let rc = &checked.configs[self
                .methods()
                .iter()
                .position(|x| x == m)
                .expect("a method")];
            &nets
                .iter()
                .find(|(k, _)| *k == (rc.backbone.clone(), rc.input))
                .expect("calibrated")
                .1
        };
        let s = checked.size;
        let one_eval = |cal: &Calibration| cal.evaluation(&c.eval, s.train, s.test);
        let evaluation = self
            .methods()
            .iter()
            .map(|m| one_eval(cal_of(m)))
            .sum::<f64>()
            + nets.iter().map(|(_, cal)| one_eval(cal)).sum::<f64>();
        // Each fine-tuning beside a random-init one, shared between methods of a network.
        let one_set = |cal: &Calibration| {
            let f = &c.finetune;
            f.labels()
                .iter()
                .map(|&labels| {
                    let labelled = match labels {
                        Labels::Fraction(frac) => (frac * s.train_split as f64).round() as usize,
                        Labels::PerClass(k) => k * s.classes,
                    };
                    let per_epoch = f.epoch_size.map_or(labelled, |n| n.max(labelled));
                    let test = f.test_images.map_or(s.test_split, |t| t.min(s.test_split));
                    cal.finetuning(per_epoch, f.epochs, test)
                        * (f.seeds.len() * f.protocols.len()) as f64
                })
                .sum::<f64>()
        };
        let mut finetuning = 0.0;
        let mut random_done: Vec<(BackboneConfig, InputTransform)> = vec![];
        for t in &c.finetune_tasks {
            let rc = &checked.configs[self.methods().iter().position(|x| x == t).expect("a task")];
            let cal = cal_of(t);
            finetuning += one_set(cal);
            let key = (rc.backbone.clone(), rc.input);
            if !random_done.contains(&key) {
                finetuning += one_set(cal);
                random_done.push(key);
            }
        }
        // A recipe trains its epochs, not a time budget: their time from the timing.
        let pretraining = if c.recipe.is_some() {
            let mut total = 0.0;
            for (m, rc) in self.methods().iter().zip(&checked.configs) {
                let per_image = rc.task.task()?.inputs_per_image(&rc.task)?;
                let images = crate::run::training_images(rc, self.cache)?;
                total += cal_of(m).training((c.max_epochs * images * per_image) as f64);
            }
            total
        } else {
            c.budget_seconds * self.methods().len() as f64
        };
        Ok(Estimate {
            pretraining,
            evaluation,
            finetuning,
            timed_seconds: t0.elapsed().as_secs_f64(),
            speeds: nets
                .iter()
                .map(|(_, cal)| (cal.train_inputs_per_s, cal.infer_inputs_per_s))
                .collect(),
        })
    }

    /// What the study will do, said before it starts: the methods and their budget, the
    /// evaluations, and the fine-tunings with their count (the longest part of a default
    /// study, easy to miss), with the estimated time of each part and of the whole.
    pub fn plan(&self, est: &Estimate) -> String {
        let c = &self.cfg;
        let methods = self.methods();
        let minutes = |s: f64| format!("{:.1} min", s / 60.0);
        let images = |n: Option<usize>| n.map_or("all".to_string(), |n| n.to_string());
        // Colorization's network sees L* only: its random init is another network.
        let networks = |tasks: &[String]| {
            1 + tasks.iter().any(|t| t == "colorization") as usize
                - tasks.iter().all(|t| t == "colorization") as usize
        };
        let mut out = match &c.recipe {
            Some(r) => format!(
                "plan for {} (recipe {}{}):
  pretraining: {} method(s) ({}), {} epochs each: ~{} in all
",
                self.out.display(),
                r.name,
                if r.scaled.is_empty() {
                    String::new()
                } else {
                    format!(", scaled ×{}: {}", r.scale, r.scaled.join(", "))
                },
                methods.len(),
                methods.join(", "),
                c.max_epochs,
                estimate::duration(est.pretraining),
            ),
            None => format!(
                "plan for {}:
  pretraining: {} method(s) ({}), {} each (at most {} epochs): {} in all
",
                self.out.display(),
                methods.len(),
                methods.join(", "),
                minutes(c.budget_seconds),
                c.max_epochs,
                minutes(c.budget_seconds * methods.len() as f64),
            ),
        };
        out += &format!(
            "  evaluation: {} run(s) and {} random-init network(s), each with linear probes ({} epochs{}), kNN and k-means on {} train / {} test images: ~{}
",
            methods.len(),
            networks(&methods),
            c.eval.probe.epochs,
            if c.eval.probe.sweep.is_some() {
                ", swept"
            } else {
                ""
            },
            images(c.eval.train_images),
            images(c.eval.test_images),
            estimate::duration(est.evaluation),
        );
        if c.finetune_tasks.is_empty() {
            out += "  few-label fine-tuning: none
";
        } else {
            let per = c.finetune.trainings() / 2;
            let fractions: Vec<String> = c.finetune.labels().iter().map(Labels::name).collect();
            out += &format!(
                "  few-label fine-tuning: {} fine-tunings of {} epochs ({} × labels {} × {} seed(s) × protocol {}), each beside a random-init one (at most {} more, shared between methods of one network): ~{}; --finetune none skips them
",
                c.finetune_tasks.len() * per,
                c.finetune.epochs,
                c.finetune_tasks.join(", "),
                fractions.join("/"),
                c.finetune.seeds.len(),
                c.finetune
                    .protocols
                    .iter()
                    .map(|p| match p {
                        Protocol::Whole => "whole",
                        Protocol::Frozen => "frozen",
                    })
                    .collect::<Vec<_>>()
                    .join("/"),
                networks(&c.finetune_tasks) * per,
                estimate::duration(est.finetuning),
            );
        }
        let speeds: Vec<String> = est
            .speeds
            .iter()
            .map(|(t, i)| format!("training {t:.0} / inference {i:.0} inputs/s"))
            .collect();
        out += &format!(
            "  estimated total: ~{} (pretraining {} + evaluation ~{} + fine-tuning ~{}), from {:.0} s of timing the network(s) here ({}); the data pipeline and other load are not in it
",
            estimate::duration(est.pretraining + est.evaluation + est.finetuning),
            minutes(est.pretraining),
            estimate::duration(est.evaluation),
            estimate::duration(est.finetuning),
            est.timed_seconds,
            speeds.join("; "),
        );
        out
    }

    /// Everything that can be refused before hours of training are spent on it; returns
    /// what the plan's estimate needs.
    fn check(&self) -> Result<Checked> {
        let c = &self.cfg;
        anyhow::ensure!(c.max_epochs >= 1, "--max-epochs must be at least 1");
        anyhow::ensure!(c.batch_size >= 1, "--batch-size must be at least 1");
        let size = crate::eval::preflight(&c.data, &c.eval, self.cache)?;
        if !c.finetune_tasks.is_empty() {
            c.finetune.validate()?;
        }
        if c.tasks.is_empty() && !c.supervised {
            bail!("the study has no method: name --tasks, or drop --no-supervised");
        }
        for t in &c.tasks {
            if !tasks::get(t)?.trains() {
                bail!("{t} is not trained by pretext: a study pretrains pretext tasks");
            }
            if !tasks::get(t)?.is_pretext() {
                bail!(
                    "{t} is the baseline, not a pretext task: the study trains it unless --no-supervised"
                );
            }
        }
        if let Some(t) = c.finetune_tasks.iter().find(|t| !c.tasks.contains(t)) {
            bail!("fine-tuning {t} needs it among --tasks");
        }
        let train = open_split(&c.data, Split::Train, self.cache)?;
        let Some(labels) = train.header.labels.as_deref() else {
            bail!(
                "{}: a study evaluates with labels, and the train split has none (expected class folders or a labelled release)",
                c.data.display()
            );
        };
        let test = open_split(&c.data, Split::Test, self.cache)?;
        if !test.is_labelled() {
            bail!(
                "{}: a study evaluates on a labelled test split, and this one has no labels",
                c.data.display()
            );
        }
        crate::eval::check_splits(&train, &test, &c.data)?;
        if !c.finetune_tasks.is_empty() {
            for &f in &c.finetune.fractions {
                balanced_subset(labels, train.num_classes(), f, 0)?;
            }
            for &k in &c.finetune.per_class {
                crate::tasks::supervised::per_class_subset(labels, train.num_classes(), k, 0)?;
            }
            if c.finetune.protocols.contains(&Protocol::Frozen) {
                let rc = self
                    .pretrain_spec(&c.finetune_tasks[0])?
                    .resolve(self.cache)?;
                let taps = rc.backbone.tap_names();
                c.finetune.frozen.layer_of(&taps)?;
            }
        }
        // Every method's run as it will be configured, so a setting none can train with is
        // refused before the study folder exists.
        let mut configs = vec![];
        for m in self.methods() {
            let rc = self.pretrain_spec(&m)?.resolve(self.cache)?;
            rc.train.validate()?;
            rc.backbone.validate()?;
            rc.task.task()?.validate(&rc.task, &rc.augment)?;
            // Pretrained elsewhere, it must still take the evaluation's images.
            crate::run::check_fits(&rc, &train, &c.data, "train")?;
            configs.push(rc);
        }
        Ok(Checked { size, configs })
    }

    /// The pretraining of one method: the study's common SGD rate and cosine schedule for
    /// every task whose paper trains with SGD; the others keep their paper's optimizer.
    fn pretrain_spec(&self, task: &str) -> Result<PretrainSpec> {
        let c = &self.cfg;
        let t = tasks::get(task)?;
        let sgd = t.training().optim.kind == OptimKind::Sgd;
        // The baseline learns from the labels of the data everything is measured on.
        let data = match &c.pretrain_data {
            Some(a) if t.is_pretext() => a.clone(),
            _ => c.data.clone(),
        };
        Ok(PretrainSpec {
            data: Some(data),
            backbone: c.backbone,
            width: c.width,
            blocks: c.blocks,
            task: task.to_string(),
            batch_size: c.batch_size,
            train_images: c.train_images,
            lr: sgd.then_some(c.lr),
            schedule: sgd.then(|| c.schedule.clone().unwrap_or_else(|| "cosine".to_string())),
            seed: c.seed,
            ..PretrainSpec::default()
        })
    }

    fn pretrainer<'b>(&'b self, run: &'b Path, timing: Option<Timing>) -> Pretrain<'b> {
        Pretrain {
            run,
            device: self.device,
            progress: self.progress,
            stop_after: None,
            cache: self.cache,
            timing,
        }
    }

    /// Source images/s of `CALIBRATION_STEPS` training steps of `rc`, in a scratch run
    /// that is removed.
    fn calibrate(&self, name: &str, rc: &RunConfig) -> Result<f64> {
        let scratch = self.out.join(".calibration").join(name);
        let _ = std::fs::remove_dir_all(&scratch);
        if self.progress {
            eprintln!("[study] {name}: timing {CALIBRATION_STEPS} steps to size the budget");
        }
        let (_, timed) = self
            .pretrainer(
                &scratch,
                Some(Timing {
                    steps: CALIBRATION_STEPS,
                    train: true,
                }),
            )
            .run(Some(rc.clone()), false)?;
        let _ = std::fs::remove_dir_all(self.out.join(".calibration"));
        Ok(timed.images_per_second)
    }

    fn pretrain(&self, name: &str, log: &mut StudyLog) -> Result<()> {
        let dir = self.out.join(name);
        if !RunConfig::path(&dir).exists() {
            let mut rc = self.pretrain_spec(name)?.resolve(self.cache)?;
            let images = crate::run::training_images(&rc, self.cache)?;
            // A recipe's epochs are fixed: timing steps to size a budget would be wasted
            // (minutes at the paper's width).
            let timed = match &self.cfg.recipe {
                Some(_) => None,
                None => Some(self.calibrate(name, &rc)?),
            };
            rc.train.epochs = match timed {
                Some(rate) => {
                    epochs_for(self.cfg.budget_seconds, rate, images, self.cfg.max_epochs)
                }
                None => self.cfg.max_epochs,
            };
            let e = log.entry(name);
            e.run = dir.clone();
            e.calibrated_images_per_second = timed;
            e.epochs = rc.train.epochs;
            self.save_log(log)?;
            if self.progress {
                let how = match (&self.cfg.recipe, timed) {
                    (Some(r), _) => format!("the recipe {}'s", r.name),
                    (None, rate) => format!(
                        "{:.1} images/s in {:.0} s",
                        rate.unwrap_or_default(),
                        self.cfg.budget_seconds
                    ),
                };
                eprintln!(
                    "[study] {name}: {} epoch(s) of {images} images ({how})",
                    rc.train.epochs
                );
            }
            self.pretrainer(&dir, None).run(Some(rc), false)?;
        }
        let rc = RunConfig::load(&dir)?;
        let state = match checkpoint::latest(&dir)? {
            Some((_, s)) if s.epoch >= rc.train.epochs => s,
            _ => {
                if self.progress {
                    eprintln!("[study] {name}: resuming its pretraining");
                }
                self.pretrainer(&dir, None).run(None, true)?.1.state
            }
        };
        let e = log.entry(name);
        e.run = dir;
        e.epochs = rc.train.epochs;
        e.images_seen = state.images_seen;
        e.pretrain_seconds = state.train_seconds;
        e.final_loss = state.loss;
        e.final_score = state.score;
        self.save_log(log)
    }

    fn evaluate(&self, run: &Path, random_init: bool) -> Result<Option<f64>> {
        let sub = if random_init {
            "eval-random-init"
        } else {
            "eval"
        };
        if run.join(sub).join("eval.json").exists() {
            return Ok(None);
        }
        if self.progress {
            eprintln!("[study] evaluating {} ({sub})", run.display());
        }
        let t0 = std::time::Instant::now();
        evaluate_run(
            run,
            &self.cfg.data,
            random_init,
            &self.cfg.eval,
            self.cache,
            self.device,
            self.progress,
        )?;
        crate::eval::store::discard(run, random_init)?;
        Ok(Some(t0.elapsed().as_secs_f64()))
    }

    /// Everything the study would refuse, its plan, and one training step of every method
    /// (in a scratch folder that is removed): whether it can run here, before hours are
    /// spent. Nothing is written in the study's folder.
    pub fn dry_run(&self) -> Result<()> {
        let checked = self.check()?;
        let est = self.estimate(&checked)?;
        eprint!("{}", self.plan(&est));
        let scratch = std::env::temp_dir().join(format!("pretext-dry-run-{}", std::process::id()));
        let result = (|| {
            for (m, rc) in self.methods().iter().zip(checked.configs) {
                let (_, t) = self
                    .pretrainer(
                        &scratch.join(m),
                        Some(Timing {
                            steps: 3,
                            train: true,
                        }),
                    )
                    .run(Some(rc), false)
                    .with_context(|| format!("{m}: a training step failed"))?;
                eprintln!("[dry run] {m}: trains, {:.1} images/s", t.images_per_second);
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    /// Run (or finish) the study and write its report; returns the comparison.
    pub fn run(&self) -> Result<Comparison> {
        let p = Self::path(self.out);
        if p.exists() {
            let saved = Self::load_config(self.out)?;
            if saved != self.cfg {
                bail!(
                    "{} holds a study with other settings; continue it with `pretext study --out {} --resume`, or choose another --out",
                    self.out.display(),
                    self.out.display()
                );
            }
        } else {
            let checked = self.check()?;
            let est = self.estimate(&checked)?;
            eprint!("{}", self.plan(&est));
            std::fs::create_dir_all(self.out)
                .with_context(|| format!("creating {}", self.out.display()))?;
            fsutil::write_bytes(&p, toml::to_string_pretty(&self.cfg)?.as_bytes())?;
        }
        let mut log = self.read_log()?;
        let methods = self.methods();
        for m in &methods {
            self.pretrain(m, &mut log)?;
        }
        let runs: Vec<PathBuf> = methods.iter().map(|m| self.out.join(m)).collect();
        for (m, run) in methods.iter().zip(&runs) {
            if let Some(s) = self.evaluate(run, false)? {
                log.entry(m).eval_seconds = Some(s);
                self.save_log(&log)?;
            }
        }
        // Random init once per network (colorization sees L* only, so it gets its own
        // baseline): each method is read against the baseline of the network it trained.
        let mut networks: Vec<(BackboneConfig, InputTransform)> = vec![];
        for run in &runs {
            let rc = RunConfig::load(run)?;
            let net = (rc.backbone, rc.input);
            if networks.contains(&net) {
                continue;
            }
            networks.push(net);
            if let Some(s) = self.evaluate(run, true)? {
                *log.random_init_eval_seconds.get_or_insert(0.0) += s;
                self.save_log(&log)?;
            }
        }
        let pool = self.out.join("random-init-finetune");
        for t in &self.cfg.finetune_tasks {
            let run = self.out.join(t);
            if run.join("finetune").join("finetune.json").exists() {
                continue;
            }
            if self.progress {
                eprintln!("[study] few-label fine-tuning of {t}");
            }
            let t0 = std::time::Instant::now();
            finetune_run(
                &run,
                &self.cfg.data,
                &self.cfg.finetune,
                Some(&pool),
                self.cache,
                self.device,
                self.progress,
            )?;
            log.entry(t).finetune_seconds = Some(t0.elapsed().as_secs_f64());
            self.save_log(&log)?;
        }
        let comparison = gather(&runs)?;
        comparison.write(&self.out.join("report"))?;
        fsutil::write_bytes(
            &self.out.join("study.md"),
            self.summary(&log, &comparison).as_bytes(),
        )?;
        Ok(comparison)
    }

    /// The pretraining table (what each method got for the budget) above the report.
    pub fn summary(&self, log: &StudyLog, comparison: &Comparison) -> String {
        let c = &self.cfg;
        let mut s = format!(
            "# Study: {} on {}{}\n\n{}, {:?} width {}, {} pretraining images, batch {}; SGD lr {} {} for every method but inpainting (Adam 2e-4, β1 0.5, as its paper).\n\n| method | epochs | images seen | images/s (timed) | pretraining s | final loss | final pretext score | eval s | fine-tuning s |\n|---|---|---|---|---|---|---|---|---|\n",
            self.methods().join(", "),
            c.data.display(),
            c.pretrain_data.as_ref().map_or(String::new(), |a| format!(
                " (the pretext tasks pretrained on {}, the supervised baseline on its labels)",
                a.display()
            )),
            match &c.recipe {
                Some(r) => format!(
                    "Pretraining: the recipe's {} epochs per method ({})",
                    c.max_epochs, r.name
                ),
                None => format!(
                    "Pretraining budget {:.0} s of wall-clock time per method (sized by timing {CALIBRATION_STEPS} steps on this machine)",
                    c.budget_seconds
                ),
            },
            c.backbone,
            c.width.map_or("default".to_string(), |w| w.to_string()),
            c.train_images.map_or("all".to_string(), |n| n.to_string()),
            c.batch_size,
            c.lr,
            c.schedule.as_deref().unwrap_or("cosine")
        );
        let opt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
        for m in &log.methods {
            let cells = [
                m.method.clone(),
                m.epochs.to_string(),
                m.images_seen.to_string(),
                m.calibrated_images_per_second
                    .map_or("–".to_string(), |v| format!("{v:.1}")),
                format!("{:.0}", m.pretrain_seconds),
                format!("{:.4}", m.final_loss),
                format!("{:.4}", m.final_score),
                opt(m.eval_seconds),
                opt(m.finetune_seconds),
            ];
            let _ = writeln!(s, "{}", crate::util::table::md_row(cells));
        }
        let _ = writeln!(
            s,
            "\nPretext score: accuracy, except inpainting (hole MSE in normalized units, lower is better) and colorization (mean accuracy of its two color histograms). Pretraining may exceed the budget when one epoch takes longer (a run is never shorter than one epoch).\n\nRandom-init evaluation: {} s. Report files: `report/` (report.md/csv/json/html, accuracy-by-layer.png/svg).\n",
            opt(log.random_init_eval_seconds)
        );
        if let Some(r) = &c.recipe {
            s += &r.markdown(comparison);
            s.push('\n');
        }
        // study.md sits above report/, where the report's preview sheets are.
        s + &comparison
            .markdown()
            .replacen("# Comparison", "## Comparison", 1)
            .replace("](previews/", "](report/previews/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_budget("90s").unwrap(), 90.0);
        assert_eq!(parse_budget("10m").unwrap(), 600.0);
        assert_eq!(parse_budget("1.5h").unwrap(), 5400.0);
        assert_eq!(parse_budget("45").unwrap(), 45.0);
        for bad in ["", "m", "10d", "-5m", "0s", "ten"] {
            assert!(parse_budget(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_budget_buys_whole_epochs_within_bounds() {
        // 600 s at 50 images/s = 30,000 images = 3 epochs of 10,000.
        assert_eq!(epochs_for(600.0, 50.0, 10_000, 100), 3);
        // 2.99 epochs' worth is still 2 (the budget is not exceeded by design)…
        assert_eq!(epochs_for(598.0, 50.0, 10_000, 100), 2);
        // …but a run is never empty, and never above the cap.
        assert_eq!(epochs_for(10.0, 50.0, 10_000, 100), 1);
        assert_eq!(epochs_for(1e6, 1e3, 10, 40), 40);
    }
}
