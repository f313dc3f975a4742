//! Pictures: line charts (SVG and PNG) and image sheets with captions.

pub mod plot;
pub mod preview;
