//! Compositions of the library that are commands of their own: the study (every task at
//! one budget, evaluated and reported), embeddings and search, the benchmarks, and the
//! look at a data set.

pub mod bench;
pub mod bridge;
pub mod embed;
pub mod inspect;
pub mod recipe;
pub mod study;
