//! transform: stages that derive data from what ingest wrote, without new source files.
//!
//! | kind | module | what it does |
//! |---|---|---|
//! | `dedup` | [`dedup`] | content fingerprints of pairs; the Pick-a-Pic leakage split |
//! | `pick_a_filter` | [`pick_a_filter`] | Pick-a-Filter (PAL App. D.6): two opinion groups made by colour filters |
//!
//! [`filter`] holds the colour filters themselves. The functions here are pure (rows in,
//! decisions out); the stage kinds in `crate::pipeline::kinds` read and write the store for them.

pub mod dedup;
pub mod filter;
pub mod pick_a_filter;

use std::fmt;

/// A parameter problem found before any work: the key at fault (relative to the stage;
/// empty for the stage as a whole) and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamIssue {
    pub key: String,
    pub message: String,
}

impl ParamIssue {
    pub fn new(key: &str, message: impl Into<String>) -> ParamIssue {
        ParamIssue {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ParamIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParamIssue {}
