//! Checkpoints: `checkpoints/epoch-NNNN/{model.bpk, optim.bpk, state.json}` plus
//! `checkpoints/latest.json` naming the newest one.
//!
//! A checkpoint directory is filled under a temporary name, every file and the directory
//! are flushed to disk, and only then is it renamed into place (and the parent flushed),
//! so a run killed at any moment — or a machine that loses power — resumes from a whole
//! checkpoint. The newest *complete* checkpoint is found by scanning the directories, so
//! a `latest.json` that is missing, stale or names a directory that is gone cannot send a
//! resume astray; temporary directories left by a killed run are removed on the next save.
//!
//! The files are canonical: burn gives every parameter a random id (from OS entropy) and
//! writes optimizer state in hash-map order, so two identical runs used to write different
//! bytes. Here the ids are renumbered by the parameter's position in the model (the same
//! renumbering applied to the optimizer state keyed by them) and optimizer entries are
//! written in name order: the same run gives the same bytes.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use crate::util::fsutil;

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
    /// The metrics-log line of the last epoch, so a run killed between its checkpoint and
    /// that line can write it on resume.
    #[serde(default)]
    pub log: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct Latest {
    dir: String,
    epoch: usize,
}

pub fn root(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

const FILES: [&str; 3] = ["model.bpk", "optim.bpk", "state.json"];

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
    remove_stale_temporaries(&root)?;
    let name = format!("epoch-{:04}", state.epoch);
    let tmp = root.join(format!(".{name}.tmp{}", std::process::id()));
    let dir = root.join(&name);
    fs::create_dir_all(&tmp)?;
    // From the inference view: taking it folds each batch norm's pending running-statistics
    // update into the stored value (burn keeps the latest update aside until then), so the
    // checkpoint holds the statistics training actually reached, not those one step older.
    let model_bytes = model
        .valid()
        .into_record()
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("recording the model: {e:?}"))?;
    let optim_bytes = optim
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("recording the optimizer: {e:?}"))?;
    write_canonical(model_bytes, optim_bytes, &tmp)?;
    crate::util::fault::pause_at(&format!("checkpoint:{}:model", state.epoch));
    fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(state)?)?;
    for f in FILES {
        fs::File::open(tmp.join(f))?.sync_all()?;
    }
    fsutil::sync_dir(&tmp)?;
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::rename(&tmp, &dir).with_context(|| format!("renaming checkpoint to {}", dir.display()))?;
    fsutil::sync_dir(&root)?;
    crate::util::fault::pause_at(&format!("checkpoint:{}:renamed", state.epoch));
    let latest = Latest {
        dir: name.clone(),
        epoch: state.epoch,
    };
    fsutil::write_bytes(
        &root.join("latest.json"),
        &serde_json::to_vec_pretty(&latest)?,
    )?;
    prune(&root, keep, state.epoch)?;
    Ok(dir)
}

/// Temporary checkpoint directories (`.epoch-NNNN.tmpPID`) of runs killed while writing:
/// this process's own, and those whose process is gone (on Linux, where that can be seen).
fn remove_stale_temporaries(root: &Path) -> Result<()> {
    let alive = |pid: &str| {
        pid != std::process::id().to_string()
            && cfg!(target_os = "linux")
            && Path::new("/proc").join(pid).exists()
    };
    for e in fs::read_dir(root)?.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit_once(".tmp").map(|(_, p)| p.to_string());
        if name.starts_with(".epoch-") && pid.is_some_and(|p| !alive(&p)) {
            fs::remove_dir_all(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// The epoch number of a checkpoint directory name (`epoch-0012` → 12).
fn epoch_of(name: &str) -> Option<usize> {
    name.strip_prefix("epoch-")?.parse().ok()
}

/// Checkpoint directories by epoch, oldest first (by number: `epoch-10000` comes after
/// `epoch-9999`, which a sort by name would get wrong).
fn checkpoint_dirs(root: &Path) -> Result<Vec<(usize, PathBuf)>> {
    if !root.is_dir() {
        return Ok(vec![]);
    }
    let mut dirs: Vec<(usize, PathBuf)> = fs::read_dir(root)?
        .filter_map(|e| e.ok())
        .filter_map(|e| epoch_of(&e.file_name().to_string_lossy()).map(|n| (n, e.path())))
        .filter(|(_, p)| p.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn prune(root: &Path, keep: usize, newest: usize) -> Result<()> {
    let dirs = checkpoint_dirs(root)?;
    let excess = dirs.len().saturating_sub(keep.max(1));
    for (epoch, dir) in dirs.into_iter().take(excess) {
        if epoch != newest {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    Ok(())
}

/// The state of a complete checkpoint directory (all files present, state readable).
fn complete(dir: &Path) -> Option<TrainState> {
    if !FILES.iter().all(|f| dir.join(f).is_file()) {
        return None;
    }
    serde_json::from_slice(&fs::read(dir.join("state.json")).ok()?).ok()
}

/// The newest complete checkpoint of a run, if any.
pub fn latest(run: &Path) -> Result<Option<(PathBuf, TrainState)>> {
    let root = root(run);
    let dirs = checkpoint_dirs(&root)?;
    for (_, dir) in dirs.into_iter().rev() {
        if let Some(state) = complete(&dir) {
            return Ok(Some((dir, state)));
        }
        eprintln!(
            "warning: {} is not a complete checkpoint; using an older one",
            dir.display()
        );
    }
    Ok(None)
}

/// Load model weights from a checkpoint directory into `model`.
pub fn load_model<M: Module>(model: M, dir: &Path) -> Result<M> {
    let p = dir.join("model.bpk");
    model
        .try_load_file(&p)
        .map_err(|e| anyhow::anyhow!("{}: cannot load the model: {e:?}", p.display()))
}

/// Load into `module` the entries of the checkpoint file `path` under `prefix` (a part of
/// a larger network, e.g. its `backbone`), without building the rest of that network.
pub fn load_part<M: Module>(module: M, path: &Path, prefix: &str) -> Result<M> {
    let err = |e: String| anyhow::anyhow!("{}: cannot load the model: {e}", path.display());
    let reader = burn_pack::Reader::from_file(path).map_err(|e| err(e.to_string()))?;
    let head = format!("{prefix}.");
    let mut part = vec![];
    for t in reader.into_tensors().map_err(|e| err(e.to_string()))? {
        let (name, dtype, shape, id, data) = t.into_parts().map_err(|e| err(e.to_string()))?;
        if let Some(rest) = name.strip_prefix(&head) {
            part.push(burn_pack::Tensor::new(
                rest.to_string(),
                dtype,
                shape,
                id,
                data,
            ));
        }
    }
    if part.is_empty() {
        return Err(err(format!("it holds no {prefix:?} entries")));
    }
    let bytes = burn_pack::Writer::new(part)
        .into_bytes()
        .map_err(|e| err(e.to_string()))?;
    let record = burn::store::ModuleRecord::from_bytes(bytes).map_err(|e| err(format!("{e:?}")))?;
    module
        .try_load_record(record)
        .map_err(|e| err(format!("{e:?}")))
}

pub fn load_optim(optim: ModuleOptimizer, dir: &Path) -> Result<ModuleOptimizer> {
    let p = dir.join("optim.bpk");
    optim
        .load(&p)
        .map_err(|e| anyhow::anyhow!("{}: cannot load the optimizer state: {e:?}", p.display()))
}

fn pack_err(what: &str) -> impl Fn(burn_pack::Error) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("{what}: {e}")
}

/// Write `model.bpk` and `optim.bpk` into `dir` with parameter ids renumbered by position
/// (1, 2, …, in the model's own parameter order) and optimizer entries in name order.
fn write_canonical(
    model: burn::tensor::Bytes,
    optim: burn::tensor::Bytes,
    dir: &Path,
) -> Result<()> {
    let mut ids: HashMap<u64, u64> = HashMap::new();
    let mut tensors = vec![];
    let reader = burn_pack::Reader::from_bytes(model).map_err(pack_err("model record"))?;
    for (i, t) in reader
        .into_tensors()
        .map_err(pack_err("model record"))?
        .into_iter()
        .enumerate()
    {
        let (path, dtype, shape, id, bytes) = t.into_parts().map_err(pack_err("model record"))?;
        let new = i as u64 + 1;
        if let Some(id) = id {
            ids.insert(id, new);
        }
        tensors.push(burn_pack::Tensor::new(path, dtype, shape, Some(new), bytes));
    }
    write_pack(burn_pack::Writer::new(tensors), &dir.join("model.bpk"))?;

    // Optimizer entries are keyed "{id}" or "{id}.{field}" by the ids just renumbered.
    let rename = |key: &str| -> String {
        let (id, rest) = key
            .split_once('.')
            .map_or((key, None), |(a, b)| (a, Some(b)));
        match id.parse::<u64>().ok().and_then(|i| ids.get(&i)) {
            Some(new) => rest.map_or(new.to_string(), |r| format!("{new}.{r}")),
            None => key.to_string(),
        }
    };
    let reader = burn_pack::Reader::from_bytes(optim).map_err(pack_err("optimizer record"))?;
    let scalars: BTreeMap<String, burn_pack::Scalar> = reader
        .scalars()
        .iter()
        .map(|(k, v)| (rename(k), *v))
        .collect();
    let metadata: BTreeMap<String, String> = reader
        .metadata()
        .iter()
        .map(|(k, v)| (rename(k), v.clone()))
        .collect();
    let mut tensors = vec![];
    for t in reader
        .into_tensors()
        .map_err(pack_err("optimizer record"))?
    {
        let (name, dtype, shape, id, bytes) =
            t.into_parts().map_err(pack_err("optimizer record"))?;
        let id = id.map(|i| ids.get(&i).copied().unwrap_or(i));
        tensors.push(burn_pack::Tensor::new(
            rename(&name),
            dtype,
            shape,
            id,
            bytes,
        ));
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut writer = burn_pack::Writer::new(tensors);
    for (k, v) in &scalars {
        writer = writer.with_scalar(k, *v);
    }
    for (k, v) in &metadata {
        writer = writer.with_metadata(k, v);
    }
    write_pack(writer, &dir.join("optim.bpk"))
}

fn write_pack(writer: burn_pack::Writer, path: &Path) -> Result<()> {
    let bytes = writer
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    fs::write(path, &*bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_checkpoint(root: &Path, epoch: usize) {
        let dir = root.join(format!("epoch-{epoch:04}"));
        fs::create_dir_all(&dir).unwrap();
        for f in ["model.bpk", "optim.bpk"] {
            fs::write(dir.join(f), b"x").unwrap();
        }
        let state = TrainState {
            epoch,
            ..Default::default()
        };
        fs::write(dir.join("state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
    }

    #[test]
    fn the_newest_complete_checkpoint_wins_whatever_latest_json_says() {
        let run = tempfile::tempdir().unwrap();
        let root = root(run.path());
        fake_checkpoint(&root, 1);
        fake_checkpoint(&root, 2);
        // latest.json names a directory that is gone.
        fs::write(
            root.join("latest.json"),
            br#"{"dir":"epoch-0007","epoch":7}"#,
        )
        .unwrap();
        assert_eq!(latest(run.path()).unwrap().unwrap().1.epoch, 2);
        // A newest directory without its state file is passed over.
        fs::create_dir_all(root.join("epoch-0003")).unwrap();
        fs::write(root.join("epoch-0003/model.bpk"), b"x").unwrap();
        assert_eq!(latest(run.path()).unwrap().unwrap().1.epoch, 2);
        // Numbers, not names: epoch 10000 is newer than epoch 9999.
        fake_checkpoint(&root, 9999);
        fake_checkpoint(&root, 10000);
        assert_eq!(latest(run.path()).unwrap().unwrap().1.epoch, 10000);
        // Pruning keeps the newest by number.
        prune(&root, 2, 10000).unwrap();
        let left: Vec<usize> = checkpoint_dirs(&root)
            .unwrap()
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        assert_eq!(left, vec![9999, 10000]);
        // No checkpoint at all.
        let empty = tempfile::tempdir().unwrap();
        assert!(latest(empty.path()).unwrap().is_none());
    }

    #[test]
    fn stale_temporary_directories_are_removed() {
        let run = tempfile::tempdir().unwrap();
        let root = root(run.path());
        // Process 999999999 cannot exist (Linux pids stop at 2^22); process 1 always does,
        // and its write may still be going on.
        fs::create_dir_all(root.join(".epoch-0002.tmp999999999")).unwrap();
        fs::write(root.join(".epoch-0002.tmp999999999/model.bpk"), b"half").unwrap();
        fs::create_dir_all(root.join(".epoch-0003.tmp1")).unwrap();
        fake_checkpoint(&root, 1);
        remove_stale_temporaries(&root).unwrap();
        assert!(!root.join(".epoch-0002.tmp999999999").exists());
        assert!(root.join(".epoch-0003.tmp1").exists());
        assert!(root.join("epoch-0001").exists());
    }
}
