//! transform: stages that derive data from what ingest wrote, without new source files.
//!
//! | kind | module | what it does |
//! |---|---|---|
//! | `dedup` | [`dedup`] | content fingerprints of pairs; the Pick-a-Pic leakage split |
//! | `pick_a_filter` | [`pick_a_filter`] | Pick-a-Filter (PAL App. D.6): two opinion groups made by colour filters |
//!
//! [`filter`] holds the colour filters themselves. The functions here are pure (rows in,
//! decisions out); `crate::pipeline::transform_stages` reads and writes the store for them.

pub mod dedup;
pub mod filter;
pub mod pick_a_filter;
