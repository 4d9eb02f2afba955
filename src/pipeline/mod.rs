//! Declarative pipelines: the YAML spec, its validation with file:line errors, stage order,
//! fingerprints (skip what has not changed), run records and roll-back of failed stages.
//!
//! What each stage computes lives with its part (`ingest`, `embed`, `pal`, `eval`); this
//! module only knows how to parse a stage's parameters, what tables it reads, and how to
//! call it. `spec.rs` parses, `sweep.rs` expands `foreach:` stages, `validate.rs` checks,
//! `runner.rs` runs, and `kinds/` holds one file per stage kind with the registry they are
//! listed in.

pub mod embed_stage;
pub mod features;
pub mod kinds;
pub mod pal_stages;
pub mod paths;
pub mod positions;
pub mod progress;
pub mod runner;
pub mod spec;
pub mod sweep;
pub mod validate;

pub use runner::{run, RunOptions, RunReport, StageRecord};
pub use spec::{Override, Pipeline, SpecErrors};
