//! palpipe: a data pipeline and feature store for personalized reward models.
//!
//! Data flows one way: [`ingest`] → [`transform`] → [`embed`] → [`store`] → [`pal`] → [`eval`].
//! Stages talk through store tables, never through each other's structs; [`pipeline`] runs
//! them in order from a YAML file and [`cli`] is the command line on top.

/// The numeric backend of this build's CPU matrix products: `"mkl"` in a `--features mkl`
/// build (Intel MKL's sgemm, `make mkl`), else `"candle"` (candle's own gemm). Floating-point
/// results (training, scoring, embedding) differ between backends in their last bits, so
/// the model stages (train, eval, adapt) name it in their fingerprints (see
/// `StageKind::uses_numeric_backend`) and `palpipe --version` prints it.
#[cfg(feature = "mkl")]
pub const NUMERIC_BACKEND: &str = "mkl";
/// The numeric backend of this build: `"candle"`, candle's own gemm (no `mkl` feature).
#[cfg(not(feature = "mkl"))]
pub const NUMERIC_BACKEND: &str = "candle";

pub mod cli;
pub mod embed;
pub mod eval;
pub mod ingest;
pub mod pal;
pub mod pipeline;
pub mod serve;
pub mod store;
pub mod transform;
