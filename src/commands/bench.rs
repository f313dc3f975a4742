//! `pretext bench`: training and inference throughput per backbone on synthetic batches
//! (medians over timed steps after warm-up). Run by hand; results go in BENCHMARKS.md.

use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use serde::Serialize;

use crate::models::head::ClassifierNet;
use crate::models::{Arch, BackboneConfig};
use crate::train::OptimConfig;
use crate::train::trainer::{Classifier, cross_entropy};

/// Peak resident memory of this process since the last [`reset_peak_memory`], in MiB
/// (Linux `VmHWM`; `None` elsewhere).
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Start a new peak-memory window (Linux: writing 5 to `clear_refs` resets `VmHWM`).
pub fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub backbone: String,
    pub width: usize,
    pub input: usize,
    pub batch: usize,
    pub train_images_per_s: f64,
    pub infer_images_per_s: f64,
    /// Peak resident memory while training and inferring (MiB).
    pub peak_mib: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Time `steps` training steps and inference passes of `cfg` on `batch` inputs.
pub fn measure(
    cfg: &BackboneConfig,
    batch: usize,
    warmup: usize,
    steps: usize,
    dev: &Device,
) -> BenchRow {
    reset_peak_memory();
    let tdev = dev.clone().autodiff();
    tdev.seed(0);
    let mut model = ClassifierNet::new(cfg, 4, &tdev);
    let mut optim = OptimConfig::rotnet().init();
    let s = cfg.input_size;
    let shape = [batch, cfg.in_channels, s, s];
    let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &tdev);
    let y: Vec<i64> = (0..batch as i64).map(|i| i % 4).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(y, [batch]), &tdev);
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let loss = cross_entropy(model.logits(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.01, model, grads);
        let _ = tdev.sync();
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let train = batch as f64 / median(times);
    let infer_model = model.valid();
    let xi = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), dev);
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let out = infer_model.logits(xi.clone());
        let _ = out.into_data();
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    BenchRow {
        backbone: format!("{:?}", cfg.arch),
        width: cfg.width,
        input: s,
        batch,
        train_images_per_s: train,
        infer_images_per_s: batch as f64 / median(times),
        peak_mib: peak_memory_mib(),
    }
}

/// One pretext task timed on real data: the whole training step (loader + model) and the
/// data pipeline alone, in source images/s, with the peak memory of the training part.
#[derive(Clone, Debug, Serialize)]
pub struct TaskBenchRow {
    pub task: String,
    pub backbone: String,
    pub width: usize,
    pub batch: usize,
    /// Network inputs per source image (4 for rotation, 9 tiles for jigsaw, …).
    pub inputs_per_image: usize,
    pub train_images_per_s: f64,
    pub pipeline_images_per_s: f64,
    pub peak_mib: Option<f64>,
}

/// Time `task` with the flags of `args` (its data, backbone, batch): `steps` training steps
/// and `pipeline_steps` loader-only batches, each after two of warm-up, in scratch runs
/// under `scratch` (removed afterwards).
pub fn measure_task(
    spec: &crate::config::PretrainSpec,
    steps: usize,
    pipeline_steps: usize,
    cache: &crate::data::CacheOptions,
    dev: &Device,
    scratch: &std::path::Path,
) -> anyhow::Result<TaskBenchRow> {
    use crate::train::trainer::Timing;
    let rc = spec.resolve(cache)?;
    let time = |steps: usize, train: bool| -> anyhow::Result<f64> {
        let dir = scratch.join(format!("{}-{train}", rc.task.name()));
        let _ = std::fs::remove_dir_all(&dir);
        let (_, outcome) = crate::run::Pretrain {
            run: &dir,
            device: dev,
            progress: false,
            stop_after: None,
            cache,
            timing: Some(Timing { steps, train }),
        }
        .run(Some(rc.clone()), false)?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(outcome.images_per_second)
    };
    let pipeline = time(pipeline_steps, false)?;
    reset_peak_memory();
    let train = time(steps, true)?;
    let peak = peak_memory_mib();
    let inputs_per_image = rc.task.task()?.inputs_per_image(&rc.task)?;
    Ok(TaskBenchRow {
        task: rc.task.name().to_string(),
        backbone: format!("{:?}", rc.backbone.arch),
        width: rc.backbone.width,
        batch: rc.train.batch_size,
        inputs_per_image,
        train_images_per_s: train,
        pipeline_images_per_s: pipeline,
        peak_mib: peak,
    })
}

/// The default set: each backbone at its standard width on 32×32 inputs, NIN also at half
/// width and at the width 32 the studies use.
pub fn default_configs() -> Vec<BackboneConfig> {
    let mut v = Vec::new();
    for (arch, width) in [
        (Arch::Nin, 192),
        (Arch::Nin, 96),
        (Arch::Nin, 32),
        (Arch::Alexnet, 64),
        (Arch::Resnet18Cifar, 64),
        (Arch::Resnet18, 64),
        (Arch::Resnet50, 64),
    ] {
        let mut c = BackboneConfig::new(arch, 32);
        c.width = width;
        v.push(c);
    }
    v
}

/// What `pretext bench` is asked to time.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Inputs per batch.
    pub batch: usize,
    pub warmup: usize,
    pub steps: usize,
    /// Only these backbones (empty: all).
    pub backbones: Vec<crate::models::Arch>,
    /// Also time each task's training and data pipeline on this data.
    pub data: Option<std::path::PathBuf>,
    /// Tasks to time with `data`: names or `all` (the pretext tasks and the baseline).
    pub tasks: Vec<String>,
    pub task_width: usize,
    /// Skip the synthetic per-backbone table.
    pub tasks_only: bool,
}

/// Time what `o` asks and print the tables (Markdown).
pub fn run(
    o: &BenchOptions,
    cache: &crate::data::CacheOptions,
    dev: &Device,
) -> anyhow::Result<()> {
    let BenchOptions {
        batch,
        warmup,
        steps,
        task_width,
        tasks_only,
        ..
    } = *o;
    anyhow::ensure!(
        batch >= 1 && steps >= 1 && task_width >= 1,
        "--batch, --steps and --task-width must be at least 1"
    );
    let mib = |m: Option<f64>| m.map_or("–".to_string(), |m| format!("{m:.0}"));
    if !tasks_only {
        println!("| backbone | width | input | batch | train img/s | inference img/s | peak MiB |");
        println!("|---|---|---|---|---|---|---|");
        for c in default_configs() {
            if !o.backbones.is_empty() && !o.backbones.contains(&c.arch) {
                continue;
            }
            let r = measure(&c, batch, warmup, steps, dev);
            println!(
                "| {} | {} | {} | {} | {:.1} | {:.1} | {} |",
                r.backbone,
                r.width,
                r.input,
                r.batch,
                r.train_images_per_s,
                r.infer_images_per_s,
                mib(r.peak_mib)
            );
        }
    }
    if let Some(data) = &o.data {
        let mut kinds = crate::tasks::parse_list(&o.tasks)?;
        if o.tasks.iter().any(|t| t.trim() == "all") {
            kinds.extend(
                crate::tasks::REGISTRY
                    .iter()
                    .filter(|t| !t.is_pretext() && t.trains()),
            );
        }
        let scratch = tempfile_dir("pretext-bench")?;
        println!(
            "\n| task | backbone | width | batch (images) | inputs/image | train images/s | pipeline images/s | pipeline ÷ train | peak MiB |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for task in kinds {
            let a = crate::config::PretrainSpec {
                data: Some(data.clone()),
                width: Some(task_width),
                task: task.name().to_string(),
                batch_size: batch,
                // Enough images for every timed batch in one epoch.
                train_images: Some(batch * (4 * steps + 4).max(20)),
                ..crate::config::PretrainSpec::default()
            };
            let r = measure_task(&a, steps + 2, (4 * steps).max(20) + 2, cache, dev, &scratch)?;
            println!(
                "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1}× | {} |",
                r.task,
                r.backbone,
                r.width,
                r.batch,
                r.inputs_per_image,
                r.train_images_per_s,
                r.pipeline_images_per_s,
                r.pipeline_images_per_s / r.train_images_per_s.max(1e-9),
                mib(r.peak_mib)
            );
        }
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
}

/// A fresh folder under the system temporary directory.
fn tempfile_dir(prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
