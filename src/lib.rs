//! pretext: self-supervised visual representation learning — pretext tasks that pretrain
//! an image feature extractor without labels, and the protocols that measure the features.
//!
//! The folders follow the flow: `data` → `tasks` → `models` → `train` → `run` → `eval` →
//! `report`; `config` turns what a user asks for into a run's configuration, `commands`
//! composes the above (study, embed/search, bench, inspect), `draw` makes pictures, `cpu`
//! holds our kernels, `util` the small helpers, and `cli` only parses and dispatches.

pub mod cli;
pub mod commands;
pub mod config;
pub mod cpu;
pub mod data;
pub mod draw;
pub mod eval;
pub mod models;
pub mod report;
pub mod run;
pub mod tasks;
pub mod train;
pub mod util;
