//! Checkpoints: `checkpoints/epoch-NNNN/{model.bpk, optim.bpk, state.json}` plus
//! `checkpoints/latest.json` naming the newest complete one. A checkpoint directory is
//! filled under a temporary name and renamed into place, and `latest.json` is replaced
//! atomically afterwards, so a run killed at any moment resumes from a whole checkpoint.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use crate::fsutil;

/// Where training stands after a completed epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Completed epochs.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: u64,
    /// Mean training loss and the task's score (accuracy, or an error for regression
    /// tasks) over the last epoch.
    pub loss: f64,
    #[serde(alias = "accuracy")]
    pub score: f64,
    /// Seconds spent training so far (over all resumed pieces).
    pub train_seconds: f64,
    /// Images (not inputs) seen so far.
    pub images_seen: u64,
}

#[derive(Serialize, Deserialize)]
struct Latest {
    dir: String,
    epoch: usize,
}

pub fn root(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Write a checkpoint for `state.epoch`, then point `latest.json` at it and prune old ones
/// (keeping `keep`).
pub fn save<M: Module>(
    run: &Path,
    model: &M,
    optim: &ModuleOptimizer,
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf> {
    let root = root(run);
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let name = format!("epoch-{:04}", state.epoch);
    let tmp = root.join(format!(".{name}.tmp{}", std::process::id()));
    let dir = root.join(&name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    model
        .clone()
        .save_file(tmp.join("model.bpk"))
        .map_err(|e| anyhow::anyhow!("saving the model to {}: {e:?}", tmp.display()))?;
    optim
        .save(tmp.join("optim.bpk"))
        .map_err(|e| anyhow::anyhow!("saving the optimizer to {}: {e:?}", tmp.display()))?;
    fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)?;
    for f in ["model.bpk", "optim.bpk", "state.json"] {
        fs::File::open(tmp.join(f))?.sync_all()?;
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::rename(&tmp, &dir).with_context(|| format!("renaming checkpoint to {}", dir.display()))?;
    let latest = Latest {
        dir: name.clone(),
        epoch: state.epoch,
    };
    fsutil::write_bytes(
        &root.join("latest.json"),
        &serde_json::to_vec_pretty(&latest)?,
    )?;
    prune(&root, keep, &name)?;
    Ok(dir)
}

fn prune(root: &Path, keep: usize, newest: &str) -> Result<()> {
    let mut dirs: Vec<String> = fs::read_dir(root)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("epoch-"))
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep.max(1));
    for d in dirs.into_iter().take(excess) {
        if d != newest {
            fs::remove_dir_all(root.join(d))?;
        }
    }
    Ok(())
}

/// The newest complete checkpoint of a run, if any.
pub fn latest(run: &Path) -> Result<Option<(PathBuf, TrainState)>> {
    let root = root(run);
    let p = root.join("latest.json");
    if !p.exists() {
        return Ok(None);
    }
    let latest: Latest = serde_json::from_slice(&fs::read(&p)?)
        .with_context(|| format!("{}: not a checkpoint pointer", p.display()))?;
    let dir = root.join(&latest.dir);
    let sp = dir.join("state.json");
    let state: TrainState = serde_json::from_slice(
        &fs::read(&sp).with_context(|| format!("reading {}", sp.display()))?,
    )
    .with_context(|| format!("{}: not a training state", sp.display()))?;
    Ok(Some((dir, state)))
}

/// Load model weights from a checkpoint directory into `model`.
pub fn load_model<M: Module>(model: M, dir: &Path) -> Result<M> {
    let p = dir.join("model.bpk");
    model
        .try_load_file(&p)
        .map_err(|e| anyhow::anyhow!("{}: cannot load the model: {e:?}", p.display()))
}

pub fn load_optim(optim: ModuleOptimizer, dir: &Path) -> Result<ModuleOptimizer> {
    let p = dir.join("optim.bpk");
    optim
        .load(&p)
        .map_err(|e| anyhow::anyhow!("{}: cannot load the optimizer state: {e:?}", p.display()))
}
