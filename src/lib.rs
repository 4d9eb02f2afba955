//! palpipe: a data pipeline and feature store for personalized reward models.
//!
//! Data flows one way: [`ingest`] → [`transform`] → [`embed`] → [`store`] → [`pal`] → [`eval`].
//! Stages talk through store tables, never through each other's structs; [`pipeline`] runs
//! them in order from a YAML file and [`cli`] is the command line on top.

// The backend's name as a literal, for `concat!` (`palpipe --version`) and
// `NUMERIC_BACKEND` below: one definition per build.
#[cfg(feature = "mkl")]
macro_rules! numeric_backend {
    () => {
        "mkl"
    };
}
#[cfg(not(feature = "mkl"))]
macro_rules! numeric_backend {
    () => {
        "candle"
    };
}
pub(crate) use numeric_backend;

/// The numeric backend of this build's CPU matrix products: `"mkl"` in a `--features mkl`
/// build (Intel MKL's sgemm, `make mkl`), else `"candle"` (candle's own gemm). Floating-point
/// results (training, scoring, embedding) differ between backends in their last bits, so
/// the model stages (train, eval, adapt) name it in their fingerprints (see
/// `StageKind::uses_numeric_backend`) and `palpipe --version` prints it.
pub const NUMERIC_BACKEND: &str = numeric_backend!();

pub mod cli;
pub mod embed;
pub mod eval;
pub mod ingest;
pub mod pal;
pub mod pipeline;
pub mod serve;
pub mod store;
pub mod suggest;
pub mod transform;
