//! pretext: self-supervised visual representation learning — pretext tasks that pretrain
//! an image feature extractor without labels, and the protocols that measure the features.

pub mod bench;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod data;
pub mod device;
pub mod embed;
pub mod eval;
pub mod fault;
pub mod fsutil;
pub mod models;
pub mod plot;
pub mod preview;
pub mod progress;
pub mod run;
pub mod study;
pub mod tasks;
pub mod train;
