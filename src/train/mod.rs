//! The task-agnostic training loop and what it needs: optimizer and schedule settings,
//! atomic checkpoints, resume, a NaN guard, a progress bar and a metrics log.

pub mod checkpoint;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use optim::{OptimConfig, OptimKind};
pub use schedule::Schedule;
pub use trainer::{TrainConfig, TrainOutcome};
