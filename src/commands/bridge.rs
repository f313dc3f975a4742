//! The bridge to PyTorch. `pretext export` writes a run's backbone as a safetensors file in
//! PyTorch's names (see [`crate::models::torch`]), the Python module that loads it, and a
//! reference input with pretext's feature maps for it, so the two can be compared on any
//! machine with PyTorch. `pretext import` makes a run directory from a PyTorch checkpoint
//! (torchvision's names), which every evaluation command then measures like a pretext run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use safetensors::tensor::{SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::data::augment::{AugmentConfig, Normalize};
use crate::data::{CacheOptions, Split};
use crate::models::torch::{self, Entry};
use crate::models::{Arch, Backbone, BackboneConfig};
use crate::run::{InputTransform, RunConfig, load_backbone, normalize_for, open_split};
use crate::tasks::TaskConfig;
use crate::tasks::imported::ImportedConfig;
use crate::train::checkpoint::{self, TrainState};
use crate::train::{OptimConfig, Schedule, TrainConfig};
use crate::util::fsutil;

/// The files `export` writes into its folder.
pub const WEIGHTS: &str = "backbone.safetensors";
pub const REFERENCE: &str = "reference.safetensors";
pub const PYTHON: &str = "pretext_backbone.py";

/// What the exported files say about the network (the safetensors metadata `pretext` key,
/// and the Python module's `CONFIG`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Exported {
    pub backbone: BackboneConfig,
    pub taps: Vec<String>,
    pub input: InputTransform,
    pub normalize: Normalize,
    pub method: String,
    pub run: PathBuf,
    pub checkpoint_epoch: usize,
}

/// What `export` wrote.
pub struct ExportInfo {
    pub files: Vec<PathBuf>,
    pub tensors: usize,
    pub exported: Exported,
}

fn serialize(entries: &[Entry], meta: HashMap<String, String>) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = entries.iter().map(Entry::bytes).collect();
    let views = entries
        .iter()
        .zip(&bytes)
        .map(|(e, b)| {
            Ok((
                e.name.clone(),
                TensorView::new(e.dtype(), e.shape.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, Some(meta))?)
}

/// Export the backbone of `run`'s latest checkpoint into `out` (see the module doc).
/// Everything is computed before the folder is touched.
pub fn export(run: &Path, out: &Path, dev: &Device) -> Result<ExportInfo> {
    let rc = RunConfig::load(run)?;
    let (backbone, epoch) = load_backbone(&rc, run, false, dev)?;
    let backbone = backbone.valid();
    let state = torch::state_dict(&backbone)?;

    // The reference: two seeded inputs of the network's size (already normalized), and
    // the feature map pretext computes at every tap in inference mode.
    let side = rc.backbone.input_size;
    dev.seed(0);
    let x = Tensor::<4>::random(
        [2, rc.backbone.in_channels, side, side],
        Distribution::Normal(0.0, 1.0),
        dev,
    );
    let taps = backbone.forward_all(x.clone());
    let names = backbone.tap_names();
    let mut reference = vec![Entry::f32("input".into(), x)?];
    for (n, t) in names.iter().zip(taps) {
        reference.push(Entry::f32(format!("tap.{n}"), t)?);
    }

    let run_abs = std::fs::canonicalize(run).unwrap_or_else(|_| run.to_path_buf());
    let exported = Exported {
        backbone: rc.backbone.clone(),
        taps: names,
        input: rc.input,
        normalize: rc.normalize.clone(),
        method: rc.method(),
        run: run_abs,
        checkpoint_epoch: epoch,
    };
    let json = serde_json::to_string(&exported)?;
    let meta = HashMap::from([
        // safetensors' own convention for PyTorch files.
        ("format".to_string(), "pt".to_string()),
        ("pretext".to_string(), json.clone()),
    ]);
    let weights = serialize(&state, meta.clone())?;
    let reference = serialize(&reference, meta)?;
    let template = r#"CONFIG = json.loads(r"""{}""")"#;
    anyhow::ensure!(
        torch::PYTHON.contains(template),
        "the Python template lost its CONFIG line"
    );
    let python = torch::PYTHON.replacen(
        template,
        &format!(r#"CONFIG = json.loads(r"""{json}""")"#),
        1,
    );

    if out.exists() && !out.is_dir() {
        bail!("{}: exists and is not a folder", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let files = vec![out.join(WEIGHTS), out.join(REFERENCE), out.join(PYTHON)];
    for (path, bytes) in files.iter().zip([weights, reference, python.into_bytes()]) {
        fsutil::write_bytes(path, &bytes)?;
    }
    Ok(ExportInfo {
        files,
        tensors: state.len(),
        exported,
    })
}

/// How an imported network's inputs are normalized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportNormalize {
    /// What a `pretext export` file records; otherwise ImageNet's (torchvision's).
    Auto,
    /// ImageNet's mean and std, as torchvision's models expect.
    Imagenet,
    /// The mean and std of the data's train split.
    Data,
}

pub struct ImportRequest<'a> {
    pub file: &'a Path,
    pub arch: Arch,
    pub out: &'a Path,
    pub data: &'a Path,
    pub normalize: ImportNormalize,
    pub label: Option<&'a str>,
}

/// What `import` made.
pub struct ImportInfo {
    pub config: RunConfig,
    pub loaded: usize,
    pub ignored: Vec<String>,
}

/// A run holding the backbone only, so its checkpoint is a backbone under `backbone`, where
/// every evaluation looks for it.
#[derive(Module, Debug)]
struct Held {
    backbone: Backbone,
}

/// ImageNet's channel statistics, as torchvision's models were trained with.
pub fn imagenet() -> Normalize {
    Normalize {
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
    }
}

/// Make a run directory at `req.out` from a PyTorch state dict (see the module doc). The
/// file, the data and the network are all checked before anything is written; the run
/// folder appears whole (written under a temporary name, then renamed) or not at all.
pub fn import(req: &ImportRequest, cache: &CacheOptions, dev: &Device) -> Result<ImportInfo> {
    if req.out.exists() {
        bail!(
            "{}: already exists; import makes a new run directory",
            req.out.display()
        );
    }
    let buf = std::fs::read(req.file).with_context(|| format!("reading {}", req.file.display()))?;
    let st = SafeTensors::deserialize(&buf).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a safetensors file ({e}); convert a PyTorch checkpoint with \
             `safetensors.torch.save_file(model.state_dict(), PATH)`",
            req.file.display()
        )
    })?;
    let (_, header) = SafeTensors::read_metadata(&buf)?;
    // What `pretext export` recorded (normalization, input, crop, the run): a file that
    // claims to be one but cannot be read is refused, not imported with guessed settings.
    let from_pretext: Option<Exported> = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("pretext"))
        .map(|j| serde_json::from_str(j))
        .transpose()
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: its `pretext` metadata is not what `pretext export` writes ({e})",
                req.file.display()
            )
        })?;
    if from_pretext.is_none()
        && matches!(req.arch, Arch::Nin | Arch::Alexnet)
        && req.normalize == ImportNormalize::Auto
    {
        bail!(
            "{}: a {} file without the metadata `pretext export` writes: its input statistics              are unknown; pass --normalize imagenet or --normalize data",
            req.file.display(),
            torch::arch_name(req.arch)
        );
    }
    let tensors = torch::read_floats(&st)?;
    let fail = |e: anyhow::Error| e.context(format!("{}", req.file.display()));

    let data = std::fs::canonicalize(req.data)
        .or_else(|_| std::path::absolute(req.data))
        .unwrap_or_else(|_| req.data.to_path_buf());
    let set = open_split(&data, Split::Train, cache)?;
    let size = set.header.h.min(set.header.w);
    // The network sees the centre crop it was trained on (an exported run's own crop), or
    // the whole image.
    let crop = from_pretext
        .as_ref()
        .map_or(size, |e| e.backbone.input_size);
    if crop > size {
        bail!(
            "{}: the network was trained on {crop}-px crops, and {} has {size}-px images \
             (pass --image-size {crop})",
            req.file.display(),
            data.display()
        );
    }
    let mut backbone_cfg = torch::infer_config(req.arch, &tensors, crop).map_err(fail)?;
    if let Some(e) = &from_pretext
        && req.arch != Arch::Nin
    {
        // Only NIN has a block count; the others record whatever the flag said.
        backbone_cfg.blocks = e.backbone.blocks;
    }
    if let Some(e) = from_pretext.as_ref().filter(|e| e.backbone != backbone_cfg) {
        bail!(
            "{}: the weights are a {:?}, and the file's metadata says {:?}",
            req.file.display(),
            backbone_cfg,
            e.backbone
        );
    }
    let input = from_pretext
        .as_ref()
        .map_or(InputTransform::Rgb, |e| e.input);
    if backbone_cfg.in_channels != input.channels(set.header.c) {
        bail!(
            "{}: the network takes {}-channel inputs; {} has {}-channel images",
            req.file.display(),
            backbone_cfg.in_channels,
            data.display(),
            set.header.c
        );
    }
    backbone_cfg.validate()?;
    let entries = tensors.len();
    let (backbone, ignored) =
        torch::load_state_dict(backbone_cfg.init(dev), tensors).map_err(fail)?;
    let normalize = match (req.normalize, &from_pretext) {
        (ImportNormalize::Auto, Some(e)) => e.normalize.clone(),
        (ImportNormalize::Auto | ImportNormalize::Imagenet, _) => imagenet(),
        (ImportNormalize::Data, _) => normalize_for(&set, input),
    };
    if normalize.mean.len() != backbone_cfg.in_channels {
        bail!(
            "{} channel statistics for a {}-channel network: pass --normalize data",
            normalize.mean.len(),
            backbone_cfg.in_channels
        );
    }
    // Not the exported method's bare name: the run it came from may sit in the same report.
    let label = req
        .label
        .map(str::to_string)
        .or_else(|| {
            from_pretext
                .as_ref()
                .map(|e| format!("{} (imported)", e.method))
        })
        .unwrap_or_else(|| "imported".to_string());
    let source = std::fs::canonicalize(req.file).unwrap_or_else(|_| req.file.to_path_buf());
    let names = if matches!(req.arch, Arch::Nin | Arch::Alexnet) {
        "pretext"
    } else {
        "torchvision"
    };
    let config = RunConfig {
        data,
        split: Split::Train,
        holdout: cache.holdout,
        train_images: None,
        image_size: size,
        input,
        backbone: backbone_cfg,
        task: TaskConfig::of(
            crate::tasks::imported::TASK_NAME,
            &ImportedConfig {
                source,
                names: names.to_string(),
                label,
                run: from_pretext.as_ref().map(|e| e.run.clone()),
            },
        ),
        // The crop evaluation takes; pad and flip are what fine-tuning trains with, as for
        // a pretext run.
        augment: AugmentConfig {
            crop,
            pad: 0,
            flip: true,
        },
        normalize,
        // Nothing is trained; the settings a run records, for the commands that read them.
        train: TrainConfig {
            epochs: 0,
            batch_size: 128,
            optim: OptimConfig::rotnet(),
            schedule: Schedule::rotnet(),
            seed: 0,
            log_every: 10,
            keep_checkpoints: 1,
        },
    };

    let name = req
        .out
        .file_name()
        .with_context(|| format!("{}: not a folder name", req.out.display()))?;
    let tmp = req.out.with_file_name(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    if let Some(parent) = req.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let written = (|| -> Result<()> {
        config.save(&tmp)?;
        checkpoint::save(
            &tmp,
            &Held { backbone },
            &OptimConfig::rotnet().init(),
            &TrainState::default(),
            1,
        )?;
        std::fs::rename(&tmp, req.out)
            .with_context(|| format!("renaming {} to {}", tmp.display(), req.out.display()))?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(ImportInfo {
        loaded: entries - ignored.len(),
        config,
        ignored,
    })
}
