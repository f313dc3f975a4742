//! Pictures: the accuracy-by-layer figure (SVG, and PNG through resvg) and image sheets
//! with captions.

pub mod plot;
pub mod preview;
