//! The `pretext` command line (clap): argument definitions mapped onto the library's
//! specifications ([`crate::config`]), and a dispatch. Nothing is resolved here.

use std::path::{Path, PathBuf};

use crate::eval::store::FeatureDtype;
use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::{EvalSpec, PretrainSpec, StudySpec};
use crate::data::{self, CacheOptions, Holdout};
use crate::eval;
use crate::eval::finetune::Protocol;
use crate::models::Arch;
use crate::models::probe::ProbeKind;
use crate::run::{Pretrain, RunConfig};
use crate::tasks::colorization::ColorTarget;
use crate::tasks::inpainting::MaskKind;
use crate::tasks::jigsaw::{self, Selection};
use crate::train::OptimKind;

#[derive(Parser, Debug)]
#[command(
    name = "pretext",
    version,
    about = "Self-supervised visual representation learning: pretext tasks and their evaluation"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Compute device: flex (pure-Rust CPU, default), wgpu[:N], vulkan[:N], cuda[:N]
    /// (GPU backends need their cargo feature).
    #[arg(long, global = true, default_value = "flex")]
    pub device: String,
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Folder for decoded-image caches (default: $PRETEXT_CACHE_DIR or ~/.cache/pretext).
    #[arg(long, global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Do not cache decoded images on disk.
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Bring every folder image to this side (shorter side resized, center crop).
    #[arg(long, global = true)]
    pub image_size: Option<u32>,
    /// Skip (and count) unreadable images instead of stopping.
    #[arg(long, global = true)]
    pub skip_bad: bool,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// A class-per-folder tree without train/ and test/ folders: the fraction of each class
    /// held out as its test split (default 0.1, or what the run recorded; 0: none, for
    /// pretraining only). Evaluation refuses a split that shares images with what the run
    /// pretrained on.
    #[arg(long, global = true)]
    pub test_fraction: Option<f64>,
    /// Seed of that held-out split (default 0, or what the run recorded).
    #[arg(long, global = true)]
    pub split_seed: Option<u64>,
}

impl Common {
    pub fn cache(&self) -> CacheOptions {
        let mut c = CacheOptions::default();
        if let Some(d) = &self.cache_dir {
            c.dir = Some(d.clone());
        }
        if self.no_cache {
            c.dir = None;
        }
        c.image_size = self.image_size;
        c.skip_bad = self.skip_bad;
        c.progress = !self.quiet;
        c.holdout = self.holdout(Some(Holdout::default()));
        c
    }

    /// The held-out split: the flags where given, else `base` (`--test-fraction 0`: none).
    fn holdout(&self, base: Option<Holdout>) -> Option<Holdout> {
        let fraction = match (self.test_fraction, base) {
            (Some(0.0), _) => return None,
            (Some(f), _) => f,
            (None, Some(b)) => b.fraction,
            // A run without a held-out split keeps none unless a fraction is given.
            (None, None) => return None,
        };
        Some(Holdout {
            fraction,
            seed: self.split_seed.or(base.map(|b| b.seed)).unwrap_or(0),
        })
    }

    /// [`Common::cache`] for a command on an existing run: the run's held-out split unless
    /// the flags say otherwise, so its test images stay the ones it never trained on.
    pub fn cache_for_run(&self, rc: &RunConfig) -> CacheOptions {
        CacheOptions {
            holdout: self.holdout(rc.holdout),
            ..self.cache()
        }
    }
}

impl Command {
    /// The data set this command was given, if it takes one (`--data`, or the path of
    /// `data inspect` / `data shard`).
    fn data_mut(&mut self) -> Option<&mut PathBuf> {
        match self {
            Command::Run(a) => a.pretrain.data.as_mut(),
            Command::Pretrain(a) | Command::TrainSupervised(a) => a.data.as_mut(),
            Command::Eval(a) => a.data.as_mut(),
            Command::Finetune(a) => a.data.as_mut(),
            Command::Study(a) => a.data.as_mut(),
            Command::Embed { data, .. } | Command::Bench { data, .. } => data.as_mut(),
            Command::Import { data, .. } => Some(data),
            Command::Data(DataCommand::Inspect { path })
            | Command::Data(DataCommand::Shard { path, .. }) => Some(path),
            _ => None,
        }
    }

    /// How to carry on after this command was interrupted.
    pub fn resume_hint(&self) -> &'static str {
        match self {
            Command::Run(_) | Command::Pretrain(_) | Command::TrainSupervised(_) => {
                "add --resume to the same command to continue from the last checkpoint"
            }
            Command::Study(_) => "run `pretext study --out <the same folder> --resume` to continue",
            Command::Finetune(_) => {
                "run the same command again: finished fine-tunings are kept, the others resume"
            }
            _ => "run the same command again",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pretrain with a pretext task, then evaluate it beside a random-init network.
    Run(RunArgs),
    /// Pretrain a backbone with a pretext task.
    Pretrain(PretrainArgs),
    /// Train the same backbone with labels: the supervised baseline (or, with
    /// --label-fraction and --init-from, few-label fine-tuning of a pretrained run).
    TrainSupervised(PretrainArgs),
    /// Evaluate a run's frozen features: kNN, a linear probe and k-means per layer.
    Eval(EvalArgs),
    /// Few-label fine-tuning of a run: balanced 1/5/10% subsets, several seeds, beside the
    /// same network trained from random init on the same images; test top-1/top-5.
    Finetune(FinetuneArgs),
    /// Gather runs' evaluations into one comparison: methods × layers tables, the
    /// accuracy-by-layer plot (PNG, SVG), the few-label table (Markdown, CSV, JSON, HTML).
    Report {
        /// Run directories (their eval/, eval-random-init/ and finetune/ results).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Output folder.
        #[arg(long, default_value = "report")]
        out: PathBuf,
    },
    /// The whole comparison in one command: each pretext task and the supervised baseline
    /// pretrained at the same time budget, evaluated beside random init, fine-tuned on few
    /// labels, and reported. Run it again to continue an interrupted study.
    Study(StudyArgs),
    /// Write a data set's embeddings at one layer of a run (safetensors + file list).
    Embed {
        /// The run whose checkpoint embeds.
        #[arg(long)]
        run: PathBuf,
        /// Data (default: the run's).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Split to embed: train, test or unlabeled.
        #[arg(long, default_value = "train")]
        split: String,
        /// Layer (default: the run's best linear-probe layer if it was evaluated, else the last).
        #[arg(long)]
        layer: Option<String>,
        /// Values per image: the layer's map is average-pooled to the square grid closest to this.
        #[arg(long, default_value_t = 2048)]
        dim: usize,
        /// Embed a seeded subset of this many images (default all).
        #[arg(long)]
        images: Option<usize>,
        /// Output file (the file list goes beside it as NAME.files.txt).
        #[arg(long, default_value = "embeddings.safetensors")]
        out: PathBuf,
    },
    /// Nearest images to a query in an embedding file, as a contact sheet PNG.
    Search {
        /// Embedding file written by `pretext embed`.
        #[arg(long)]
        index: PathBuf,
        /// The query image.
        #[arg(long)]
        query: PathBuf,
        #[arg(long, default_value_t = 8)]
        k: usize,
        /// Contact sheet: the query, then the neighbors with similarity and class.
        #[arg(long, default_value = "search.png")]
        out: PathBuf,
    },
    /// Write a run's backbone for PyTorch: safetensors weights in PyTorch's names
    /// (torchvision's for ResNets), the Python module that loads them, and a reference input
    /// with pretext's feature maps for it (`python pretext_backbone.py` compares).
    Export {
        /// The run whose latest checkpoint to export.
        #[arg(long)]
        run: PathBuf,
        #[arg(long, value_enum, default_value = "torch")]
        format: ExportFormat,
        /// Output folder (backbone.safetensors, pretext_backbone.py, reference.safetensors).
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a run directory from a PyTorch checkpoint (a safetensors state dict in
    /// torchvision's names, or one `pretext export` wrote), so eval, finetune, embed and
    /// report measure it like a pretext run.
    Import {
        /// The state dict (`safetensors.torch.save_file(model.state_dict(), PATH)`).
        #[arg(long)]
        torch: PathBuf,
        /// Its architecture (width and input channels are read off the weights).
        #[arg(long, value_enum)]
        backbone: Arch,
        /// The run directory to create.
        #[arg(long)]
        out: PathBuf,
        /// The data the run is measured on by default (its image size and channels).
        #[arg(long)]
        data: PathBuf,
        /// Input normalization: auto (a pretext export's own, else ImageNet's), imagenet,
        /// or data (the data's train-split statistics).
        #[arg(long, value_enum, default_value = "auto")]
        normalize: crate::commands::bridge::ImportNormalize,
        /// The name reports give it (default: the exported method, else `imported`).
        #[arg(long)]
        label: Option<String>,
    },
    /// Look at a data set.
    #[command(subcommand)]
    Data(DataCommand),
    /// Generate a jigsaw permutation set and print its Hamming distances.
    JigsawPerms {
        /// Number of permutations.
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, value_enum, default_value = "max")]
        selection: Selection,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Also print the permutations.
        #[arg(long)]
        list: bool,
    },
    /// Training and inference images/s per backbone on synthetic 32×32 batches.
    Bench {
        /// Inputs per batch.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Only these backbones (default: all).
        #[arg(long, value_enum)]
        backbone: Vec<Arch>,
        /// Also time each pretext task on this data: training steps, and its data pipeline
        /// alone (run with --threads 1 and 2 to see the pipeline's scaling).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Tasks to time with --data: comma-separated or `all` (the five and supervised).
        #[arg(long, value_delimiter = ',', default_value = "all")]
        tasks: Vec<String>,
        /// Backbone width for the task timings.
        #[arg(long, default_value_t = 32)]
        task_width: usize,
        /// Skip the synthetic per-backbone table.
        #[arg(long)]
        tasks_only: bool,
        /// Measure one row in this process and print it as JSON (each row runs in a child
        /// process of its own).
        #[arg(long, hide = true)]
        row: Option<usize>,
    },
}

/// Formats `pretext export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// safetensors in PyTorch's parameter names, with a Python module.
    Torch,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Print what a data folder holds: format, splits, counts, classes, image size.
    Inspect { path: PathBuf },
    /// Download a data set's official archive, verify its checksum and unpack it.
    Fetch {
        /// cifar10, cifar100 or stl10.
        dataset: String,
        /// Folder to unpack into.
        #[arg(long, default_value = "data")]
        out: PathBuf,
        /// Archive address (a mirror, or a local server; default: the official one).
        #[arg(long)]
        url: Option<String>,
        /// Expected MD5 of the archive (default: the published one).
        #[arg(long)]
        md5: Option<String>,
    },
    /// Write a data set as WebDataset-style tar shards (`train-000000.tar`, …, with
    /// `classes.txt`), shuffled, for streaming: `--data OUT` or `--data
    /// 'OUT/train-{000000..000099}.tar'` then trains without a decode pass.
    Shard {
        /// Any data set pretext reads (image tree, CIFAR-10/100, STL-10, shards).
        path: PathBuf,
        /// New folder for the shards.
        #[arg(long)]
        out: PathBuf,
        /// Samples per shard.
        #[arg(long, default_value_t = 10_000)]
        per_shard: usize,
        /// Seed of the shuffle before sharding.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Args, Debug, Clone)]
pub struct PretrainArgs {
    /// Data: an image folder (class folders, flat, or train/ + test/), or the CIFAR-10/100
    /// or STL-10 binary release.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run directory (config, checkpoints, metrics, preview).
    #[arg(long, default_value = "runs/rotation")]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint (its saved config is used).
    #[arg(long)]
    pub resume: bool,
    #[arg(long, value_enum, default_value = "nin")]
    pub backbone: Arch,
    /// Base width (NIN: 192 in the paper; AlexNet conv1 / ResNet stem: 64).
    #[arg(long)]
    pub width: Option<usize>,
    /// NIN blocks.
    #[arg(long, default_value_t = 4)]
    pub blocks: usize,
    /// The pretext task (or `supervised`, the baseline).
    #[arg(long, default_value = "rotation",
          value_parser = clap::builder::PossibleValuesParser::new(crate::tasks::all_names()))]
    pub task: String,
    /// A task setting, `KEY=VALUE` (repeatable; any field of the task's `[task]` table,
    /// e.g. `--set cell=10`); the named flags below are shorthands for the common ones.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Rotation angles: 4 (multiples of 90°, default) or 8 (multiples of 45°).
    #[arg(long)]
    pub angles: Option<usize>,
    /// Jigsaw: size of the permutation set (paper: 1000; default 100).
    #[arg(long)]
    pub permutations: Option<usize>,
    /// Jigsaw: how the greedy algorithm picks permutations.
    #[arg(long, value_enum)]
    pub selection: Option<Selection>,
    /// Inpainting: mask type (default region, the paper's choice for features).
    #[arg(long, value_enum)]
    pub mask: Option<MaskKind>,
    /// Colorization: hue/chroma histograms (default) or a*/b* histograms.
    #[arg(long, value_enum, alias = "colour-target")]
    pub color_target: Option<ColorTarget>,
    /// Supervised: train on this fraction of each class (balanced subset; 0.01 = 1%).
    #[arg(long)]
    pub label_fraction: Option<f64>,
    /// Supervised: seed of the balanced subset (default 0).
    #[arg(long)]
    pub subset_seed: Option<u64>,
    /// Supervised: initialize the backbone from this run's checkpoint (fine-tuning; its
    /// backbone, input transform and normalization are reused).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Start from this TOML file's `[task]` table instead of the task's defaults (every
    /// geometry field of a task can be set there; see a run's config.toml). A task flag
    /// given on the command line overrides the file's value.
    #[arg(long)]
    pub task_config: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Source images per batch (rotation feeds 4× as many inputs).
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Pretrain on a seeded random subset of this many images.
    #[arg(long)]
    pub train_images: Option<usize>,
    /// Optimizer (default: the task's paper; SGD, or Adam for inpainting).
    #[arg(long, value_enum)]
    pub optim: Option<OptimKind>,
    /// Learning rate (default 0.1 with SGD; inpainting's Adam 2e-4).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Weight decay (default 5e-4; 0 for inpainting).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// step (RotNet: ×0.2 at 30/60/80% of the run), cosine or constant (default step;
    /// constant for inpainting).
    #[arg(long)]
    pub schedule: Option<String>,
    /// Crop side (default: the image side).
    #[arg(long)]
    pub crop: Option<usize>,
    /// Padding for the random crop (RotNet on CIFAR: 4; 0 for inpainting and colorization,
    /// whose targets would otherwise include the black border).
    #[arg(long)]
    pub pad: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this many epochs in this call (resume later with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// The run directory to evaluate.
    #[arg(long)]
    pub run: PathBuf,
    /// Labelled data with train and test splits (default: the run's data; another data set
    /// than the run's is a transfer, and reports say what it was pretrained on).
    #[arg(long, visible_alias = "eval-data")]
    pub data: Option<PathBuf>,
    /// Evaluate the run's network freshly initialized instead of its checkpoint.
    #[arg(long)]
    pub random_init: bool,
    /// Labelled training images for the probes and kNN (seeded random subset; default all).
    #[arg(long)]
    pub train_images: Option<usize>,
    /// Test images (default all).
    #[arg(long)]
    pub test_images: Option<usize>,
    #[arg(long, default_value_t = 30)]
    pub probe_epochs: usize,
    #[arg(long, default_value_t = 0.01)]
    pub probe_lr: f64,
    /// Choose each layer's probe learning rate × weight decay (0.1/0.01/0.001/0.0001 ×
    /// 5e-4/0) on a stratified 10% validation split of the train images, then retrain on
    /// all of them and test once; the choice is written beside each number.
    #[arg(long)]
    pub probe_sweep: bool,
    #[command(flatten)]
    pub heads: HeadArgs,
    /// Layers the mlp/conv probes sit on, comma-separated (default: every layer).
    #[arg(long, value_delimiter = ',')]
    pub probe_layers: Option<Vec<String>>,
    /// Pooled feature size per layer.
    #[arg(long, default_value_t = 9216)]
    pub probe_dim: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How the run's feature store (RUN/features) keeps the values: f16 halves its disk
    /// and page cache, rounding each value to ~3 significant digits.
    #[arg(long, value_enum, default_value_t = FeatureDtype::F32)]
    pub feature_dtype: FeatureDtype,
}

#[derive(Args, Debug, Clone)]
pub struct FinetuneArgs {
    /// The run whose checkpoint is fine-tuned.
    #[arg(long)]
    pub run: PathBuf,
    /// Labelled data with train and test splits (default: the run's data; another data set
    /// than the run's is a transfer, and reports say what it was pretrained on).
    #[arg(long, visible_alias = "eval-data")]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub few: FewLabelArgs,
    /// Seeds (one balanced subset and one fine-tuning per seed).
    #[arg(long, value_delimiter = ',', default_values_t = [0, 1, 2])]
    pub seeds: Vec<u64>,
    /// Epochs of every fine-tuning (RotNet's frozen protocol: 100 of --epoch-size 50000).
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Learning rate of the whole-network protocol (the frozen one uses RotNet's 0.1).
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Batch of the whole-network protocol (the frozen one uses RotNet's 128).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

#[derive(Args, Debug, Clone)]
pub struct StudyArgs {
    /// Labelled data with train and test splits (image folder or a binary release).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Study folder (one run directory per method, the report, study.md).
    #[arg(long, default_value = "study")]
    pub out: PathBuf,
    /// Continue the study in --out with its saved settings.
    #[arg(long)]
    pub resume: bool,
    /// Pretext tasks, comma-separated, or `all`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub tasks: Vec<String>,
    /// Pretraining wall-clock time per method: 90s, 10m, 1.5h.
    #[arg(long, default_value = "10m")]
    pub budget: String,
    /// Most epochs a budget may buy.
    #[arg(long, default_value_t = 200)]
    pub max_epochs: usize,
    /// Leave out the supervised baseline.
    #[arg(long)]
    pub no_supervised: bool,
    #[arg(long, value_enum, default_value = "nin")]
    pub backbone: Arch,
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long, default_value_t = 4)]
    pub blocks: usize,
    /// Pretraining images (seeded subset; default all).
    #[arg(long)]
    pub train_images: Option<usize>,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// SGD learning rate (cosine) for every method but inpainting (its paper's Adam).
    #[arg(long, default_value_t = 0.03)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Labelled training images for kNN and the probes (default all).
    #[arg(long)]
    pub eval_train_images: Option<usize>,
    /// Test images for every protocol (default all).
    #[arg(long)]
    pub eval_test_images: Option<usize>,
    #[arg(long, default_value_t = 30)]
    pub probe_epochs: usize,
    /// Choose each layer's probe lr × weight decay on a validation split (see `eval`).
    #[arg(long)]
    pub probe_sweep: bool,
    /// Tasks fine-tuned on few labels: comma-separated, `all` (default) or `none`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub finetune: Vec<String>,
    #[command(flatten)]
    pub few: FewLabelArgs,
    #[arg(long, value_delimiter = ',', default_values_t = [0, 1, 2])]
    pub seeds: Vec<u64>,
    #[arg(long, default_value_t = 30)]
    pub finetune_epochs: usize,
    #[command(flatten)]
    pub heads: HeadArgs,
    /// Pretrain the pretext tasks on this data instead (no labels needed), and measure
    /// them on --data: a transfer (the supervised baseline trains on --data's labels).
    #[arg(long)]
    pub pretrain_data: Option<PathBuf>,
    /// Run a paper's recipe (recipes/*.toml): its network, epochs, optimizer, schedule and
    /// protocols replace the study's flags, and study.md sets its published numbers beside
    /// the measured ones. Beside it go only --data, --out, the image counts, --scale,
    /// --dry-run and --per-class (a subset of the recipe's counts, for a CPU).
    // A flag the recipe would override is refused, not silently dropped: a user who typed
    // `--tasks jigsaw` must not get a table of rotation under that name.
    #[arg(long, conflicts_with_all = [
        "resume", "tasks", "budget", "max_epochs", "no_supervised", "backbone", "width",
        "blocks", "batch_size", "lr", "seed", "probe_epochs", "probe_sweep", "finetune",
        "seeds", "finetune_epochs", "pretrain_data", "probe", "head_epochs", "fractions",
        "protocol", "frozen_layer", "frozen_head", "epoch_size",
    ])]
    pub recipe: Option<PathBuf>,
    /// Scale a recipe's epoch counts down for a CPU (0.1: a tenth), said in study.md.
    #[arg(long, default_value_t = 1.0, requires = "recipe")]
    pub scale: f64,
    /// Check everything, print the plan and train 3 steps of every method in a scratch
    /// folder; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The non-linear probes (`eval`, `run`, `study`).
#[derive(Args, Debug, Clone)]
pub struct HeadArgs {
    /// Probe kinds, comma-separated: `linear` (always run) and RotNet's non-linear
    /// classifiers on the frozen layer's map, `mlp` and `conv` (trained with its recipe,
    /// running the frozen network on every batch: slow on a CPU; see --head-epochs).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "linear")]
    pub probe: Vec<ProbeKind>,
    /// Epochs of the mlp/conv probes (default RotNet's 100).
    #[arg(long)]
    pub head_epochs: Option<usize>,
}

/// Which few labels, and how they train (`finetune`, `study`).
#[derive(Args, Debug, Clone)]
pub struct FewLabelArgs {
    /// Label fractions per class (default 0.01,0.05,0.1, or none when --per-class is given).
    #[arg(long, value_delimiter = ',')]
    pub fractions: Option<Vec<f64>>,
    /// Labelled images per class, comma-separated (RotNet: 20,100,400,1000,5000).
    #[arg(long, value_delimiter = ',')]
    pub per_class: Vec<usize>,
    /// Protocols, comma-separated: `whole` (the whole network fine-tuned, beside the
    /// supervised baseline) and `frozen` (RotNet's semi-supervised protocol: the layers up
    /// to --frozen-layer frozen, a conv block trained on top).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "whole")]
    pub protocol: Vec<Protocol>,
    /// The frozen protocol's layer (default: the second, RotNet's conv2).
    #[arg(long)]
    pub frozen_layer: Option<String>,
    /// The frozen protocol's head: conv (RotNet's) or mlp.
    #[arg(long, value_enum, default_value = "conv")]
    pub frozen_head: ProbeKind,
    /// Samples per epoch, the labelled subset repeated until reached (RotNet: 50000 for
    /// every count); default one pass over the subset.
    #[arg(long)]
    pub epoch_size: Option<usize>,
}

impl FewLabelArgs {
    /// The fractions asked for: the default 1/5/10% only when no count per class is given.
    pub fn fractions(&self) -> Vec<f64> {
        match &self.fractions {
            Some(f) => f.clone(),
            None if self.per_class.is_empty() => {
                crate::eval::finetune::FinetuneConfig::default().fractions
            }
            None => vec![],
        }
    }

    pub fn frozen(&self) -> crate::eval::finetune::FrozenProtocol {
        crate::eval::finetune::FrozenProtocol {
            layer: self.frozen_layer.clone(),
            kind: self.frozen_head,
        }
    }
}

impl PretrainArgs {
    /// The run these flags ask for.
    pub fn spec(&self) -> Result<PretrainSpec> {
        Ok(PretrainSpec {
            data: self.data.clone(),
            backbone: self.backbone,
            width: self.width,
            blocks: self.blocks,
            task: self.task.clone(),
            task_config: self.task_config.clone(),
            task_settings: self.task_settings()?,
            epochs: self.epochs,
            batch_size: self.batch_size,
            train_images: self.train_images,
            optim: self.optim,
            lr: self.lr,
            weight_decay: self.weight_decay,
            schedule: self.schedule.clone(),
            crop: self.crop,
            pad: self.pad,
            seed: self.seed,
        })
    }

    /// The task settings given: the named shorthands, then each `--set KEY=VALUE` (its
    /// value read as TOML — `8`, `0.5`, `true`, `"max"` — or else as a string).
    fn task_settings(&self) -> Result<Vec<(String, toml::Value)>> {
        fn value<T: serde::Serialize>(v: &T) -> toml::Value {
            toml::Value::try_from(v).expect("a flag's value is a TOML value")
        }
        let mut out = vec![];
        let mut put = |key: &str, v: Option<toml::Value>| {
            if let Some(v) = v {
                out.push((key.to_string(), v));
            }
        };
        put("angles", self.angles.map(|v| value(&v)));
        put("permutations", self.permutations.map(|v| value(&v)));
        put("selection", self.selection.map(|v| value(&v)));
        put("mask", self.mask.map(|v| value(&v)));
        put("target", self.color_target.map(|v| value(&v)));
        put("label_fraction", self.label_fraction.map(|v| value(&v)));
        put("subset_seed", self.subset_seed.map(|v| value(&v)));
        put("init_from", self.init_from.as_ref().map(value));
        for kv in &self.settings {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("--set {kv:?}: expected KEY=VALUE");
            };
            let v = toml::from_str::<toml::Table>(&format!("v = {v}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(v.to_string()));
            out.push((k.trim().to_string(), v));
        }
        Ok(out)
    }
}

impl StudyArgs {
    /// The study these flags ask for.
    pub fn spec(&self) -> StudySpec {
        StudySpec {
            data: self.data.clone(),
            tasks: self.tasks.clone(),
            budget: self.budget.clone(),
            max_epochs: self.max_epochs,
            supervised: !self.no_supervised,
            backbone: self.backbone,
            width: self.width,
            blocks: self.blocks,
            train_images: self.train_images,
            batch_size: self.batch_size,
            lr: self.lr,
            seed: self.seed,
            eval_train_images: self.eval_train_images,
            eval_test_images: self.eval_test_images,
            probe_epochs: self.probe_epochs,
            probe_sweep: self.probe_sweep,
            finetune: self.finetune.clone(),
            fractions: self.few.fractions(),
            seeds: self.seeds.clone(),
            finetune_epochs: self.finetune_epochs,
            per_class: self.few.per_class.clone(),
            protocols: self.few.protocol.clone(),
            frozen: self.few.frozen(),
            epoch_size: self.few.epoch_size,
            probes: self.heads.probe.clone(),
            head_epochs: self.heads.head_epochs,
            pretrain_data: self.pretrain_data.clone(),
            schedule: None,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub pretrain: PretrainArgs,
    /// Labelled training images for evaluation (default all).
    #[arg(long)]
    pub eval_train_images: Option<usize>,
    /// Test images for evaluation (default all).
    #[arg(long)]
    pub eval_test_images: Option<usize>,
    #[arg(long, default_value_t = 30)]
    pub probe_epochs: usize,
    /// Choose each layer's probe lr × weight decay on a validation split (see `eval`).
    #[arg(long)]
    pub probe_sweep: bool,
    #[command(flatten)]
    pub heads: HeadArgs,
}

/// What every command gets: the global flags, the cache options and the device.
struct Ctx {
    common: Common,
    cache: CacheOptions,
    dev: burn::tensor::Device,
    progress: bool,
}

pub fn main_with(mut cli: Cli) -> Result<()> {
    // A named data set (`--data cifar10`) is its folder, fetched on first use.
    if let Some(data) = cli.command.data_mut() {
        *data = crate::data::fetch::locate(data, !cli.common.quiet)?;
    }
    if let Some(t) = cli.common.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()?;
    }
    let ctx = Ctx {
        cache: cli.common.cache(),
        progress: !cli.common.quiet,
        dev: crate::util::device::parse(&cli.common.device)?,
        common: cli.common,
    };
    match cli.command {
        Command::Data(DataCommand::Inspect { path }) => {
            crate::commands::inspect::inspect(&path, &ctx.cache)
        }
        Command::Data(DataCommand::Fetch {
            dataset,
            out,
            url,
            md5,
        }) => fetch(&dataset, &out, url.as_deref(), md5.as_deref(), &ctx),
        Command::Data(DataCommand::Shard {
            path,
            out,
            per_shard,
            seed,
        }) => {
            let w = crate::data::shards::write(&path, &out, per_shard, seed, &ctx.cache)?;
            for (split, n, shards) in &w.splits {
                println!(
                    "{}: {n} samples in {shards} shard(s), {}/{}-{{000000..{:06}}}.tar",
                    split.name(),
                    out.display(),
                    split.name(),
                    shards.saturating_sub(1)
                );
            }
            Ok(())
        }
        Command::Bench {
            batch,
            warmup,
            steps,
            backbone,
            data,
            tasks,
            task_width,
            tasks_only,
            row,
        } => crate::commands::bench::run(
            &crate::commands::bench::BenchOptions {
                batch,
                warmup,
                steps,
                backbones: backbone,
                data,
                tasks,
                task_width,
                tasks_only,
                row,
            },
            &ctx.cache,
            &ctx.dev,
        ),
        Command::JigsawPerms {
            size,
            selection,
            seed,
            list,
        } => jigsaw_perms(size, selection, seed, list),
        Command::Embed {
            run,
            data,
            split,
            layer,
            dim,
            images,
            out,
        } => embed(
            &run,
            data,
            &split,
            layer.as_deref(),
            dim,
            images,
            &out,
            &ctx,
        ),
        Command::Search {
            index,
            query,
            k,
            out,
        } => search(&index, &query, k, &out, &ctx),
        Command::Study(a) => study(&a, &ctx),
        Command::Export { run, format, out } => {
            let ExportFormat::Torch = format;
            let info = crate::commands::bridge::export(&run, &out, &ctx.dev)?;
            println!(
                "{} ({}, checkpoint epoch {}): {} tensors in PyTorch's names",
                info.exported.method,
                crate::models::torch::arch_name(info.exported.backbone.arch),
                info.exported.checkpoint_epoch,
                info.tensors
            );
            for f in &info.files {
                println!("  {}", f.display());
            }
            println!(
                "check it with PyTorch: python {}",
                out.join(crate::commands::bridge::PYTHON).display()
            );
            Ok(())
        }
        Command::Import {
            torch,
            backbone,
            out,
            data,
            normalize,
            label,
        } => {
            let req = crate::commands::bridge::ImportRequest {
                file: &torch,
                arch: backbone,
                out: &out,
                data: &data,
                normalize,
                label: label.as_deref(),
            };
            let info = crate::commands::bridge::import(&req, &ctx.cache, &ctx.dev)?;
            println!(
                "{}: {} ({}, width {}) from {}, {} tensors loaded{}",
                out.display(),
                info.config.method(),
                crate::models::torch::arch_name(info.config.backbone.arch),
                info.config.backbone.width,
                torch.display(),
                info.loaded,
                if info.ignored.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({} left out: {})",
                        info.ignored.len(),
                        info.ignored.join(", ")
                    )
                }
            );
            let n = &info.config.normalize;
            println!(
                "inputs: {}×{} centre crop, normalized with mean {:?} std {:?}",
                info.config.augment.crop, info.config.augment.crop, n.mean, n.std
            );
            match info.config.imported().and_then(|c| c.run) {
                Some(r) => println!(
                    "exported from the run {}: evaluation checks its test images against what \
                     that run pretrained on, while it is there",
                    r.display()
                ),
                None => println!(
                    "what it was pretrained on is not known to pretext: evaluating it on its \
                     own training images is not caught"
                ),
            }
            println!("next: pretext eval --run {}", out.display());
            Ok(())
        }
        Command::Pretrain(a) => pretrain(&a, &ctx.cache, &ctx.dev, ctx.progress).map(|_| ()),
        Command::TrainSupervised(mut a) => {
            a.task = "supervised".into();
            pretrain(&a, &ctx.cache, &ctx.dev, ctx.progress).map(|_| ())
        }
        Command::Report { runs, out } => report(&runs, &out),
        Command::Finetune(a) => finetune(&a, &ctx),
        Command::Eval(a) => evaluate(&a, &ctx),
        Command::Run(a) => run(&a, &ctx),
    }
}

fn fetch(dataset: &str, out: &Path, url: Option<&str>, md5: Option<&str>, ctx: &Ctx) -> Result<()> {
    let a = crate::data::fetch::archive(dataset)?;
    let url = url.unwrap_or(a.url);
    let md5 = md5.unwrap_or(a.md5);
    let dir = crate::data::fetch::fetch(a, out, url, md5, ctx.progress)?;
    println!("{} is in {} (pass it as --data)", a.title, dir.display());
    Ok(())
}

fn jigsaw_perms(size: usize, selection: Selection, seed: u64, list: bool) -> Result<()> {
    if !(2..=362_880).contains(&size) {
        bail!("--size must be between 2 and 9! = 362880, got {size}");
    }
    let set = jigsaw::permutation_set(size, selection, seed);
    let (mean, min, max) = jigsaw::hamming_stats(&set);
    println!(
        "{size} permutations ({selection:?} selection, seed {seed}): Hamming distance mean {mean:.3}, min {min}, max {max}"
    );
    if list {
        for p in &set {
            println!("{p:?}");
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn embed(
    run: &Path,
    data: Option<PathBuf>,
    split: &str,
    layer: Option<&str>,
    dim: usize,
    images: Option<usize>,
    out: &Path,
    ctx: &Ctx,
) -> Result<()> {
    let rc = RunConfig::load(run)?;
    let cache = ctx.common.cache_for_run(&rc);
    let data = data.unwrap_or(rc.data);
    let req = crate::commands::embed::EmbedRequest {
        run,
        data: &data,
        split: data::Split::from_name(split)?,
        layer,
        target_dim: dim,
        images,
        out,
    };
    let info = crate::commands::embed::embed(&req, &cache, &ctx.dev, ctx.progress)?;
    println!(
        "{} ({} at {}, pooled {}×{}) written to {} with its file list {}",
        info.method,
        info.run.display(),
        info.layer,
        info.pool_grid,
        info.pool_grid,
        out.display(),
        crate::commands::embed::file_list_path(out).display()
    );
    Ok(())
}

fn search(index: &Path, query: &Path, k: usize, out: &Path, ctx: &Ctx) -> Result<()> {
    if k == 0 {
        bail!("--k must be at least 1");
    }
    let hits = crate::commands::embed::search(index, query, k, out, &ctx.cache, &ctx.dev)?;
    println!("| rank | similarity | class | image |\n|---|---|---|---|");
    for (r, h) in hits.iter().enumerate() {
        println!(
            "| {} | {:.4} | {} | {} |",
            r + 1,
            h.similarity,
            h.class.as_deref().unwrap_or("–"),
            h.source
        );
    }
    println!("contact sheet: {}", out.display());
    Ok(())
}

fn study(a: &StudyArgs, ctx: &Ctx) -> Result<()> {
    let cfg = if a.resume {
        crate::commands::study::Study::load_config(&a.out)?
    } else if let Some(file) = &a.recipe {
        let Some(data) = a.data.clone() else {
            bail!("--data is required to run a recipe (its `data` line says what it expects)");
        };
        let recipe = crate::commands::recipe::Recipe::load(file)?;
        let images = crate::commands::recipe::Images {
            train: a.train_images,
            eval_train: a.eval_train_images,
            eval_test: a.eval_test_images,
            per_class: (!a.few.per_class.is_empty()).then(|| a.few.per_class.clone()),
        };
        let (spec, applied) = recipe.study(file, data, a.scale, images)?;
        let mut cfg = spec.resolve(&ctx.cache)?;
        cfg.recipe = Some(applied);
        cfg
    } else {
        let mut spec = a.spec();
        // A named data set to pretrain on is its folder, fetched on first use.
        if let Some(p) = &spec.pretrain_data {
            spec.pretrain_data = Some(crate::data::fetch::locate(p, ctx.progress)?);
        }
        spec.resolve(&ctx.cache)?
    };
    // Every step of the study uses the held-out split it recorded.
    let cache = CacheOptions {
        holdout: cfg.holdout,
        ..ctx.cache.clone()
    };
    let study = crate::commands::study::Study {
        out: &a.out,
        cfg,
        cache: &cache,
        device: &ctx.dev,
        progress: ctx.progress,
    };
    if a.dry_run {
        study.dry_run()?;
        println!("dry run: the study can run; nothing was written");
        return Ok(());
    }
    let c = study.run()?;
    println!("{}", c.markdown());
    println!(
        "study written to {0}/study.md, report in {0}/report/",
        a.out.display()
    );
    Ok(())
}

fn report(runs: &[PathBuf], out: &Path) -> Result<()> {
    let c = crate::report::gather(runs)?;
    c.write(out)?;
    println!("{}", c.markdown());
    println!(
        "written to {}/report.{{md,csv,json,html}} and accuracy-by-layer.{{png,svg}}",
        out.display()
    );
    Ok(())
}

fn finetune(a: &FinetuneArgs, ctx: &Ctx) -> Result<()> {
    let rc = RunConfig::load(&a.run)?;
    let cache = ctx.common.cache_for_run(&rc);
    let data = a.data.clone().unwrap_or(rc.data);
    let d = crate::eval::finetune::FinetuneConfig::default();
    let mut cfg = crate::eval::finetune::FinetuneConfig {
        fractions: a.few.fractions(),
        per_class: a.few.per_class.clone(),
        protocols: a.few.protocol.clone(),
        frozen: a.few.frozen(),
        epoch_size: a.few.epoch_size,
        seeds: a.seeds.clone(),
        epochs: a.epochs,
        batch_size: a.batch_size,
        ..d
    };
    cfg.optim.lr = a.lr;
    let (report, out) = crate::eval::finetune::finetune_run(
        &a.run,
        &data,
        &cfg,
        None,
        &cache,
        &ctx.dev,
        ctx.progress,
    )?;
    println!("{}", report.markdown());
    println!("written to {}/finetune.{{md,csv,json}}", out.display());
    Ok(())
}

fn evaluate(a: &EvalArgs, ctx: &Ctx) -> Result<()> {
    let rc = RunConfig::load(&a.run)?;
    let cache = ctx.common.cache_for_run(&rc);
    let data = a.data.clone().unwrap_or(rc.data);
    let cfg = EvalSpec {
        train_images: a.train_images,
        test_images: a.test_images,
        probe_epochs: a.probe_epochs,
        probe_lr: a.probe_lr,
        probe_dim: a.probe_dim,
        seed: a.seed,
        feature_dtype: a.feature_dtype,
        probe_sweep: a.probe_sweep,
        probes: a.heads.probe.clone(),
        probe_layers: a.probe_layers.clone(),
        head_epochs: a.heads.head_epochs,
    }
    .resolve();
    let (report, out) = eval::evaluate_run(
        &a.run,
        &data,
        a.random_init,
        &cfg,
        &cache,
        &ctx.dev,
        ctx.progress,
    )?;
    println!("{}", report.markdown());
    println!("written to {}/eval.{{md,csv,json}}", out.display());
    Ok(())
}

/// Pretrain, then evaluate the run and the same network at random init.
fn run(a: &RunArgs, ctx: &Ctx) -> Result<()> {
    let cfg = EvalSpec {
        train_images: a.eval_train_images,
        test_images: a.eval_test_images,
        probe_epochs: a.probe_epochs,
        probe_sweep: a.probe_sweep,
        probes: a.heads.probe.clone(),
        head_epochs: a.heads.head_epochs,
        ..EvalSpec::default()
    }
    .resolve();
    // The evaluation is checked before the pretraining it follows, with the split the run
    // trains with: a resumed run's own.
    let (data, cache) = match (&a.pretrain.data, a.pretrain.resume) {
        (Some(d), false) => (d.clone(), ctx.cache.clone()),
        (None, false) => {
            bail!("--data is required to start a run (or pass --resume to continue one)")
        }
        (_, true) => {
            let rc = RunConfig::load(&a.pretrain.out)?;
            (rc.data.clone(), ctx.common.cache_for_run(&rc))
        }
    };
    let size = eval::preflight(&data, &cfg, &cache)?;
    let out = &a.pretrain.out;
    let resolved = if a.pretrain.resume {
        None
    } else {
        Some(a.pretrain.spec()?.resolve(&cache)?)
    };
    // The plan, with its estimated time, before any work.
    let planned = match &resolved {
        Some(rc) => rc.clone(),
        None => RunConfig::load(out)?,
    };
    let done = match &resolved {
        Some(_) => 0,
        None => crate::train::checkpoint::latest(out)?.map_or(0, |(_, s)| s.epoch),
    };
    let images = crate::run::training_images(&planned, &cache)?;
    let cal = eval::estimate::calibrate(&planned.backbone, &cfg, size.classes, &ctx.dev)?;
    eprint!(
        "{}",
        crate::run::plan(out, &planned, done, images, &cfg, size, &cal)?
    );
    let rc = pretrain_with(&a.pretrain, resolved, &cache, &ctx.dev, ctx.progress)?;
    let evaluate = |random_init| {
        let r = eval::evaluate_run(
            out,
            &rc.data,
            random_init,
            &cfg,
            &cache,
            &ctx.dev,
            ctx.progress,
        )?;
        eval::store::discard(out, random_init)?;
        anyhow::Ok(r)
    };
    let ((trained, _), (random, _)) = (evaluate(false)?, evaluate(true)?);
    println!("{}\n{}", trained.markdown(), random.markdown());
    if let (Some(a), Some(b)) = (trained.best_layer(), random.best_layer()) {
        println!(
            "best layer: {} {} {:.2}% linear top-1 vs random-init {} {:.2}% ({:+.2} points)",
            trained.method,
            a.layer,
            100.0 * a.linear.top1,
            b.layer,
            100.0 * b.linear.top1,
            100.0 * (a.linear.top1 - b.linear.top1)
        );
    }
    // The page a person opens: both rows, the plot, the preview.
    let report_dir = out.join("report");
    crate::report::gather(std::slice::from_ref(out))?.write(&report_dir)?;
    println!(
        "report: {} (with report.{{md,csv,json}} and accuracy-by-layer.{{png,svg}} beside it)",
        report_dir.join("report.html").display()
    );
    Ok(())
}

fn pretrain(
    a: &PretrainArgs,
    cache: &CacheOptions,
    dev: &burn::tensor::Device,
    progress: bool,
) -> Result<RunConfig> {
    let cfg = if a.resume {
        None
    } else {
        Some(a.spec()?.resolve(cache)?)
    };
    pretrain_with(a, cfg, cache, dev, progress)
}

/// Pretrain with `cfg` resolved already (`None`: resume the run).
fn pretrain_with(
    a: &PretrainArgs,
    cfg: Option<RunConfig>,
    cache: &CacheOptions,
    dev: &burn::tensor::Device,
    progress: bool,
) -> Result<RunConfig> {
    let p = Pretrain {
        run: &a.out,
        device: dev,
        progress,
        stop_after: a.stop_after,
        cache,
        timing: None,
    };
    let (rc, outcome) = p.run(cfg, a.resume)?;
    eprintln!(
        "training: {} epochs done, loss {:.4}, task score {:.4}, {:.1} images/s, {:.0} s in all; run in {}",
        outcome.state.epoch,
        outcome.state.loss,
        outcome.state.score,
        outcome.images_per_second,
        outcome.state.train_seconds,
        a.out.display()
    );
    Ok(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_flag_spellings_still_parse() {
        let cli = Cli::try_parse_from(["pretext", "pretrain", "--colour-target", "lab"]).unwrap();
        let Command::Pretrain(a) = cli.command else {
            panic!("a pretrain command")
        };
        assert_eq!(a.color_target, Some(ColorTarget::Lab));
        let settings = a.spec().unwrap().task_settings;
        assert_eq!(
            settings,
            vec![("target".to_string(), toml::Value::String("lab".into()))]
        );
    }
}
