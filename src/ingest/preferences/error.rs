//! The errors of the preferences reader: each names the file, the row or line, and the
//! column, with a hint where the fix is known.

use std::fmt;
use std::path::PathBuf;

use crate::ingest::common::IngestError;

/// Where a row is in its file: a line (JSON lines, CSV), a row (Parquet) or an element (a
/// JSON array), 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub unit: &'static str,
    pub n: u64,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.unit, self.n)
    }
}

/// Everything that stops a preferences ingest.
#[derive(Debug, thiserror::Error)]
pub enum PrefError {
    /// A shared ingest error (a missing or unreadable file, a bad JSON line, …).
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// A parameter that cannot work (unknown preset, a layout without its columns, …).
    #[error("{message}")]
    Param { key: String, message: String },
    /// `path` matches no data file.
    #[error("no data files at '{}'\nhint: give a file, a glob (data/train-*.parquet) or a folder holding .parquet, .csv, .tsv, .jsonl or .json files (optionally .gz or .zst)", .path.display())]
    NoFiles { path: PathBuf },
    /// A mapped column that the file does not have.
    #[error("{}: column '{column}' (mapped to {key}) is not in the file\nhint: the file has: {have}{}", .path.display(), .closest.as_ref().map(|c| format!("; did you mean '{c}'?")).unwrap_or_default())]
    NoColumn {
        path: PathBuf,
        key: String,
        column: String,
        have: String,
        closest: Option<String>,
    },
    /// A value of one row that the mapping cannot use.
    #[error("{}: {at}, column '{column}': {message}{}", .path.display(), .hint.as_ref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    Row {
        path: PathBuf,
        at: Loc,
        column: String,
        message: String,
        hint: Option<String>,
    },
    /// A column holding one kind of value in one place and another elsewhere (boxed: the
    /// largest payload, kept out of the size of every `Result` on the read's path).
    #[error(transparent)]
    MixedTypes(Box<MixedTypes>),
    /// A file whose content is not the format its name (or `format:`) says.
    #[error("'{}' is not a {format} file: {found}\nhint: rename it, or set its format to what it holds (format: in a pipeline, --format with palpipe ingest)", .path.display())]
    NotFormat {
        path: PathBuf,
        format: String,
        found: String,
    },
    /// The temporary run files of the de-duplication (see `spill`) could not be written or
    /// read back.
    #[error("temporary files in {}: {source}\nhint: set TMPDIR to a folder with free space (ingest writes about the input's size there while it runs)", .dir.display())]
    Spill {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// The store writer stopped (its own error is reported instead).
    #[error("stopped: the store writer stopped")]
    Stopped,
}

/// A column holding one kind of value (`first_kind`) at `first_at` of `first_path` and another
/// (`kind`) at `at` of `path`.
#[derive(Debug, thiserror::Error)]
#[error("column '{column}' holds {first_kind} in {}: {first_at} but {kind} in {}: {at}\nhint: the files disagree on the column's type; convert one of them", .first_path.display(), .path.display())]
pub struct MixedTypes {
    pub column: String,
    pub first_path: PathBuf,
    pub first_at: Loc,
    pub first_kind: &'static str,
    pub path: PathBuf,
    pub at: Loc,
    pub kind: &'static str,
}

impl PrefError {
    /// A parameter problem.
    pub fn param(key: &str, message: impl Into<String>) -> PrefError {
        PrefError::Param {
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// Whether the user's configuration (not the data) is at fault: exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(self, PrefError::Param { .. })
    }
}
