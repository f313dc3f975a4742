//! Small helpers the rest shares: atomic file writes, progress bars, device parsing, and
//! the test hook that pauses a run.

pub mod device;
pub mod fault;
pub mod fsutil;
pub mod progress;
pub mod table;
