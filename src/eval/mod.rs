//! eval: metrics and confidence intervals for preference models.
//!
//! Owns: [`metrics`], generic numbers over predictions (accuracy, Wilson and bootstrap CIs,
//! per-user aggregation). Does not own: producing predictions — PAL heads and the popularity
//! baseline evaluate themselves in `src/pal/evaluate.rs` and `src/pal/baseline.rs` — nor
//! rendering (the CLI prints reports).

pub mod metrics;
pub mod report;
