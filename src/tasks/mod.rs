//! Pretext tasks. A task turns unlabeled images into network inputs and targets (as a
//! [`SampleMaker`] the loader runs on its worker threads), says how many classes its head
//! predicts, and draws a preview of what it asks the network to solve.

pub mod colorization;
pub mod inpainting;
pub mod jigsaw;
pub mod relative_position;
pub mod rotation;
pub mod supervised;
pub mod tiles;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::data::augment::AugmentConfig;
use crate::data::loader::SampleMaker;

pub use colorization::{Colorization, ColorizationConfig};
pub use inpainting::{Inpainting, InpaintingConfig};
pub use jigsaw::{Jigsaw, JigsawConfig};
pub use relative_position::{RelativePosition, RelativePositionConfig};
pub use rotation::{Rotation, RotationConfig};
pub use supervised::{Supervised, SupervisedConfig};

/// A pretext task: what it feeds the network, and a picture of it.
pub trait PretextTask: SampleMaker {
    fn name(&self) -> &'static str;
    /// Outputs of the task head (0 for reconstruction).
    fn num_classes(&self) -> usize;
    /// Write a PNG showing a few images as the network receives them, with their targets.
    fn preview(&self, set: &ImageSet, path: &Path, seed: u64) -> anyhow::Result<()>;
}

/// The tasks a run can be configured with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum TaskConfig {
    Rotation(RotationConfig),
    Jigsaw(JigsawConfig),
    RelativePosition(RelativePositionConfig),
    Inpainting(InpaintingConfig),
    Colorization(ColorizationConfig),
    /// The supervised baseline (labels as targets); not a pretext task, trained the same way.
    Supervised(SupervisedConfig),
}

/// Task names as the command line spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    Rotation,
    Jigsaw,
    RelativePosition,
    Inpainting,
    Colorization,
    /// Labels as targets: the supervised baseline (`pretext train-supervised`).
    Supervised,
}

impl TaskKind {
    /// The pretext tasks (the supervised baseline is not one).
    pub const PRETEXT: [TaskKind; 5] = [
        TaskKind::Rotation,
        TaskKind::Jigsaw,
        TaskKind::RelativePosition,
        TaskKind::Inpainting,
        TaskKind::Colorization,
    ];

    /// `all` (the pretext tasks), `none` or comma-separated task names, each once.
    pub fn parse_list(names: &[String]) -> anyhow::Result<Vec<TaskKind>> {
        use clap::ValueEnum;
        let mut out = Vec::new();
        for n in names {
            match n.trim() {
                "all" => out.extend(TaskKind::PRETEXT),
                "none" | "" => {}
                other => out.push(TaskKind::from_str(other, true).map_err(|_| {
                    anyhow::anyhow!(
                        "unknown task {other:?}; expected all, none or some of rotation, jigsaw, relative-position, inpainting, colorization"
                    )
                })?),
            }
        }
        let mut seen = Vec::new();
        out.retain(|t| {
            let new = !seen.contains(t);
            seen.push(*t);
            new
        });
        Ok(out)
    }

    /// The task's paper defaults, scaled to images of `side` pixels.
    pub fn default_config(self, side: usize) -> TaskConfig {
        match self {
            TaskKind::Rotation => TaskConfig::Rotation(RotationConfig::default()),
            TaskKind::Jigsaw => TaskConfig::Jigsaw(JigsawConfig::for_image(side)),
            TaskKind::RelativePosition => {
                TaskConfig::RelativePosition(RelativePositionConfig::for_image(side))
            }
            TaskKind::Inpainting => TaskConfig::Inpainting(InpaintingConfig::for_image(side)),
            TaskKind::Colorization => TaskConfig::Colorization(ColorizationConfig::default()),
            // The class count comes from the data when the run is configured.
            TaskKind::Supervised => TaskConfig::Supervised(SupervisedConfig {
                classes: 0,
                label_fraction: None,
                subset_seed: 0,
                init_from: None,
            }),
        }
    }
}

impl TaskConfig {
    /// Reject inconsistent geometry, before anything is trained or written.
    pub fn validate(&self, augment: &AugmentConfig) -> anyhow::Result<()> {
        match self {
            TaskConfig::Rotation(r) => anyhow::ensure!(
                r.angles == 4 || r.angles == 8,
                "rotation angles must be 4 (multiples of 90°) or 8 (multiples of 45°), got {}",
                r.angles
            ),
            TaskConfig::Jigsaw(j) => j.validate()?,
            TaskConfig::RelativePosition(r) => r.validate()?,
            TaskConfig::Inpainting(i) => i.validate(augment.crop)?,
            TaskConfig::Colorization(c) => anyhow::ensure!(
                c.bins >= 2 && c.pixels >= 1 && c.pixels <= augment.crop * augment.crop,
                "colorization needs ≥ 2 bins and 1..={} sampled pixels per {}×{} crop (got {} bins, {} pixels)",
                augment.crop * augment.crop,
                augment.crop,
                augment.crop,
                c.bins,
                c.pixels
            ),
            TaskConfig::Supervised(s) => anyhow::ensure!(
                s.classes >= 2,
                "supervised training needs a labelled split with at least 2 classes"
            ),
        }
        Ok(())
    }

    /// Smallest source image side the task can use with these augmentations.
    pub fn min_image_size(&self, augment: &AugmentConfig) -> usize {
        match self {
            TaskConfig::Jigsaw(j) => 3 * j.cell,
            TaskConfig::RelativePosition(r) => r.span(),
            _ => augment.crop.saturating_sub(2 * augment.pad).max(1),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            TaskConfig::Rotation(_) => "rotation",
            TaskConfig::Jigsaw(_) => "jigsaw",
            TaskConfig::RelativePosition(_) => "relative-position",
            TaskConfig::Inpainting(_) => "inpainting",
            TaskConfig::Colorization(_) => "colorization",
            TaskConfig::Supervised(_) => "supervised",
        }
    }
}
