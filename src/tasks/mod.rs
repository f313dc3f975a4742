//! Pretext tasks. A task turns unlabeled images into network inputs and targets (as a
//! [`SampleMaker`] the loader runs on its worker threads), says how many classes its head
//! predicts, and draws a preview of what it asks the network to solve.

pub mod rotation;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::data::loader::SampleMaker;

pub use rotation::{Rotation, RotationConfig};

/// A pretext task with a classification head over the backbone's last tap.
pub trait PretextTask: SampleMaker {
    fn name(&self) -> &'static str;
    /// Outputs of the task head.
    fn num_classes(&self) -> usize;
    /// Smallest source image side the task can use.
    fn min_image_size(&self) -> usize;
    /// Write a PNG showing a few images as the network receives them, with their targets.
    fn preview(&self, set: &ImageSet, path: &Path, seed: u64) -> anyhow::Result<()>;
}

/// The tasks a run can be configured with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum TaskConfig {
    Rotation(RotationConfig),
}

impl TaskConfig {
    pub fn name(&self) -> &'static str {
        match self {
            TaskConfig::Rotation(_) => "rotation",
        }
    }
}
