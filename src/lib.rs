//! palpipe: a data pipeline and feature store for personalized reward models.
//!
//! Data flows one way: [`ingest`] → [`transform`] → [`embed`] → [`store`] → [`pal`] → [`eval`].
//! Stages talk through store tables, never through each other's structs; [`pipeline`] runs
//! them in order from a YAML file and [`cli`] is the command line on top.

pub mod cli;
pub mod embed;
pub mod eval;
pub mod ingest;
pub mod pal;
pub mod pipeline;
pub mod serve;
pub mod store;
pub mod transform;
