//! `pretext bench`: training and inference throughput per backbone on synthetic batches
//! (medians over timed steps after warm-up). Run by hand; results go in BENCHMARKS.md.

use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchRow {
    pub backbone: String,
    pub width: usize,
    pub input: usize,
    pub batch: usize,
    pub train_images_per_s: f64,
    pub infer_images_per_s: f64,
    /// Peak resident memory while training and inferring (MiB).
    pub peak_mib: Option<f64>,
    /// Floating-point operations of one training step and one inference pass of the
    /// batch, counted from the convolutions' shapes ([`crate::cpu::flops`]).
    pub flops: crate::cpu::flops::StepFlops,
    /// Achieved GFLOP/s of training and of inference: those counts over the median times.
    pub train_gflops: f64,
    pub infer_gflops: f64,
}

/// The machine's measured limit: the GEMM our convolutions call, on large square f32
/// matrices, with every thread of the pool (best median over the sizes tried).
#[derive(Clone, Debug, Serialize)]
pub struct GemmPeak {
    pub n: usize,
    pub threads: usize,
    pub gflops: f64,
}

/// Time `dst = a · b` for n = 1024 and 2048 (7 timed products each, after 2 of warm-up) on
/// the current rayon pool, and keep the faster median.
pub fn gemm_peak() -> GemmPeak {
    let threads = rayon::current_num_threads();
    let mut best = GemmPeak {
        n: 0,
        threads,
        gflops: 0.0,
    };
    for n in [1024, 2048] {
        // Values in [-1, 1): the time of a GEMM does not depend on them (no denormals).
        let a: Vec<f32> = (0..n * n)
            .map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        let b: Vec<f32> = (0..n * n)
            .map(|i| ((i * 104729) % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        let mut dst = vec![0f32; n * n];
        let mut times = vec![];
        for i in 0..9 {
            let t0 = Instant::now();
            crate::cpu::conv::kernel::square_product(n, &a, &b, &mut dst, threads);
            if i >= 2 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        let gflops = 2.0 * (n as f64).powi(3) / median(times) / 1e9;
        if gflops > best.gflops {
            best = GemmPeak { n, threads, gflops };
        }
    }
    best
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
    let mut convs = vec![];
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        // The first step's forward, traced, gives the step's arithmetic (the trace costs a
        // thread-local push per convolution).
        let logits = if i == 0 {
            let (logits, seen) = crate::cpu::flops::trace(|| model.logits(x.clone()));
            convs = seen;
            logits
        } else {
            model.logits(x.clone())
        };
        let loss = cross_entropy(logits, y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.01, model, grads);
        let _ = tdev.sync();
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let flops = crate::cpu::flops::StepFlops::of(&convs);
    let train_step = median(times);
    let train = batch as f64 / train_step;
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
    let infer_pass = median(times);
    BenchRow {
        backbone: format!("{:?}", cfg.arch),
        width: cfg.width,
        input: s,
        batch,
        train_images_per_s: train,
        infer_images_per_s: batch as f64 / infer_pass,
        peak_mib: peak_memory_mib(),
        flops,
        train_gflops: flops.training() as f64 / train_step / 1e9,
        infer_gflops: flops.forward as f64 / infer_pass / 1e9,
    }
}

/// One pretext task timed on real data: the whole training step (loader + model) and the
/// data pipeline alone, in source images/s, with the peak memory of the training part.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// Measure only the row with this index and print it as JSON (what each child process
    /// of a bench does; see [`run`]).
    pub row: Option<usize>,
}

/// One row of the bench's tables.
enum Job {
    Synthetic(BackboneConfig),
    Task(&'static dyn crate::tasks::Task),
}

#[derive(Serialize, Deserialize)]
enum Measured {
    Synthetic(BenchRow),
    Task(TaskBenchRow),
}

/// Time what `o` asks and print the tables (Markdown).
///
/// Each row is measured in a child process of its own (this program, run again with
/// `--row N`): the allocator keeps freed memory for reuse rather than returning it to the
/// system (see `main.rs`), so in one process a network's peak memory would include what
/// the rows before it left, and its time would depend on their order.
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
    let jobs = jobs(o)?;
    if let Some(i) = o.row {
        let Some(job) = jobs.get(i) else {
            anyhow::bail!("--row {i}: this bench has {} rows", jobs.len());
        };
        let measured = match job {
            Job::Synthetic(c) => Measured::Synthetic(measure(c, batch, warmup, steps, dev)),
            Job::Task(task) => {
                let data = o.data.clone().expect("task rows come with --data");
                let a = crate::config::PretrainSpec {
                    data: Some(data),
                    width: Some(task_width),
                    task: task.name().to_string(),
                    batch_size: batch,
                    // Enough images for every timed batch in one epoch.
                    train_images: Some(batch * (4 * steps + 4).max(20)),
                    ..crate::config::PretrainSpec::default()
                };
                let scratch = tempfile_dir("pretext-bench")?;
                let r = measure_task(&a, steps + 2, (4 * steps).max(20) + 2, cache, dev, &scratch);
                let _ = std::fs::remove_dir_all(&scratch);
                Measured::Task(r?)
            }
        };
        println!("{}", serde_json::to_string(&measured)?);
        return Ok(());
    }
    let mib = |m: Option<f64>| m.map_or("–".to_string(), |m| format!("{m:.0}"));
    // The peak is the CPU's GEMM: a figure for the CPU backend only (a GPU's GFLOP/s over
    // it would read as thousands of percent).
    let on_cpu = matches!(
        dev.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Flex(_)
    );
    let peak = (!tasks_only && on_cpu).then(gemm_peak);
    let of_peak = |g: f64| match &peak {
        Some(p) => format!("{g:.1} ({:.0}%)", 100.0 * g / p.gflops),
        None => format!("{g:.1}"),
    };
    if let Some(peak) = &peak {
        println!(
            "machine peak: {:.1} GFLOP/s (f32 GEMM our convolutions call, {}, {n}×{n}×{n}, {} threads, median of 7)\n",
            peak.gflops,
            crate::cpu::conv::kernel::gemm_name(),
            peak.threads,
            n = peak.n
        );
    }
    if !tasks_only {
        println!(
            "| backbone | width | input | batch | train img/s | inference img/s | peak MiB | GFLOP per training step | train GFLOP/s (of peak) | inference GFLOP/s (of peak) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
    }
    let mut task_header = false;
    for i in 0..jobs.len() {
        match in_child(i)? {
            Measured::Synthetic(r) => println!(
                "| {} | {} | {} | {} | {:.1} | {:.1} | {} | {:.2} | {} | {} |",
                r.backbone,
                r.width,
                r.input,
                r.batch,
                r.train_images_per_s,
                r.infer_images_per_s,
                mib(r.peak_mib),
                r.flops.training() as f64 / 1e9,
                of_peak(r.train_gflops),
                of_peak(r.infer_gflops)
            ),
            Measured::Task(r) => {
                if !task_header {
                    task_header = true;
                    if !tasks_only {
                        println!("\n{FLOPS_NOTE}");
                    }
                    println!(
                        "\n| task | backbone | width | batch (images) | inputs/image | train images/s | pipeline images/s | pipeline ÷ train | peak MiB |"
                    );
                    println!("|---|---|---|---|---|---|---|---|---|");
                }
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
        }
    }
    if !tasks_only && !task_header {
        println!("\n{FLOPS_NOTE}");
    }
    Ok(())
}

/// What the synthetic table's FLOPs count, printed under it.
const FLOPS_NOTE: &str = "FLOPs are the convolutions' (forward, input and weight gradients; the first layer has no input gradient), counted from their shapes, with the taps that only ever read padding (the forward on our CPU kernels skips those, so there the rates are effective ones); batch norm, pooling, the head and the optimizer are not counted.";

/// The rows `o` asks for, in order: the synthetic backbones, then the tasks on `--data`.
fn jobs(o: &BenchOptions) -> anyhow::Result<Vec<Job>> {
    let mut jobs = vec![];
    if !o.tasks_only {
        jobs.extend(
            default_configs()
                .into_iter()
                .filter(|c| o.backbones.is_empty() || o.backbones.contains(&c.arch))
                .map(Job::Synthetic),
        );
    }
    if o.data.is_some() {
        let mut kinds = crate::tasks::parse_list(&o.tasks)?;
        if o.tasks.iter().any(|t| t.trim() == "all") {
            kinds.extend(
                crate::tasks::REGISTRY
                    .iter()
                    .filter(|t| !t.is_pretext() && t.trains()),
            );
        }
        jobs.extend(kinds.into_iter().map(Job::Task));
    }
    Ok(jobs)
}

/// Row `i` measured by this program run again with the same arguments and `--row i`.
fn in_child(i: usize) -> anyhow::Result<Measured> {
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .args(["--row", &i.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| anyhow::anyhow!("running {} for bench row {i}: {e}", exe.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "bench row {i} failed ({})",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .map_err(|e| anyhow::anyhow!("bench row {i}: unreadable result {line:?}: {e}"))
}

/// A fresh folder under the system temporary directory.
fn tempfile_dir(prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    /// The product the peak is measured on is the product: [[1,2],[3,4]]·[[5,6],[7,8]] =
    /// [[19,22],[43,50]], on one thread and on two.
    #[test]
    fn the_peak_measures_a_correct_product() {
        for threads in [1, 2] {
            let mut dst = [0f32; 4];
            crate::cpu::conv::kernel::square_product(
                2,
                &[1.0, 2.0, 3.0, 4.0],
                &[5.0, 6.0, 7.0, 8.0],
                &mut dst,
                threads,
            );
            assert_eq!(dst, [19.0, 22.0, 43.0, 50.0]);
        }
    }
}
