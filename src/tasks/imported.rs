//! A backbone trained elsewhere (`pretext import`): a PyTorch checkpoint, e.g. a
//! torchvision ResNet, brought into a run directory so that `eval`, `finetune`, `embed`
//! and `report` measure it exactly as they measure a network pretext trained. It is not
//! trained here: the run holds the imported weights as its only checkpoint (epoch 0).
//!
//! What it was pretrained on is not known to pretext (unless it is a `pretext export` of a
//! run still on disk), so the evaluation's check that a run never tests on its own
//! pretraining images cannot be made for it: the import says so, and the user answers for
//! the checkpoint's training data.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Task, TaskConfig};
use crate::data::augment::AugmentConfig;
use crate::run::Job;
use crate::train::TrainOutcome;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImportedConfig {
    /// The file the weights came from.
    pub source: PathBuf,
    /// Whose parameter names it used (`torchvision`, or `pretext` for NIN/AlexNet files
    /// that `pretext export` wrote).
    pub names: String,
    /// The name reports give this method (default `imported`, or the exported method's).
    pub label: String,
    /// The pretext run a `pretext export` file came from: evaluation checks the test images
    /// against what that run pretrained on, when it is still there.
    #[serde(default)]
    pub run: Option<PathBuf>,
}

/// The task's name in run configurations.
pub const TASK_NAME: &str = "imported";

pub struct ImportedTask;
pub static TASK: ImportedTask = ImportedTask;

impl Task for ImportedTask {
    fn name(&self) -> &'static str {
        TASK_NAME
    }
    fn is_pretext(&self) -> bool {
        false
    }
    fn trains(&self) -> bool {
        false
    }
    fn method(&self, cfg: &TaskConfig) -> String {
        cfg.typed::<ImportedConfig>()
            .map_or_else(|_| self.name().to_string(), |c| c.label)
    }
    fn defaults(&self, _side: usize) -> TaskConfig {
        TaskConfig::of(
            self.name(),
            &ImportedConfig {
                source: PathBuf::new(),
                names: "torchvision".into(),
                label: "imported".into(),
                run: None,
            },
        )
    }
    fn normalize(&self, cfg: &TaskConfig) -> anyhow::Result<TaskConfig> {
        cfg.normalized::<ImportedConfig>()
    }
    fn validate(&self, cfg: &TaskConfig, _augment: &AugmentConfig) -> anyhow::Result<()> {
        cfg.typed::<ImportedConfig>()?;
        Ok(())
    }
    fn pretrain(&self, job: &Job) -> anyhow::Result<TrainOutcome> {
        anyhow::bail!(
            "{}: an imported backbone is not trained here; measure it with `pretext eval \
             --run {}` (or finetune, embed, report)",
            job.run.display(),
            job.run.display()
        )
    }
}
