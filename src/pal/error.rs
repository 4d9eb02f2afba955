//! The one error type of the `pal` part.
//!
//! Owns: every failure the PAL heads can report (bad configuration, bad data, checkpoint
//! problems, tensor errors). Does not own: how the CLI renders them (see `src/cli`), which maps
//! [`PalError::is_usage`] errors to exit code 2 and the rest to exit code 1.

use std::path::PathBuf;

/// Everything that can go wrong in `pal`. Messages are lowercase, quote the bad value and add
/// a `hint:` where the fix is known.
#[derive(Debug, thiserror::Error)]
pub enum PalError {
    /// An architecture string that does not parse; `part` is the piece that is wrong.
    #[error("invalid architecture '{arch}': {part} {message}\nhint: the form is mlp{{L}}-{{relu|gelu|linear}}-dropout{{D}}[-residual], e.g. 'mlp2-gelu-dropout0'")]
    Arch {
        arch: String,
        part: String,
        message: String,
    },

    /// A model, training or few-shot configuration value out of range.
    #[error("invalid configuration: '{field}' {message}")]
    Config { field: String, message: String },

    /// The comparison data is malformed (indices, dims, labels, NaN, empty).
    #[error("invalid comparison data: {0}")]
    Data(String),

    /// Dimensions of the data disagree with the model's.
    #[error("dimension mismatch: {what} is {got}, the model expects {expected}")]
    Dim {
        what: String,
        expected: usize,
        got: usize,
    },

    /// A checkpoint folder that cannot be read back or does not fit its card.
    #[error("checkpoint '{path}': {message}")]
    Checkpoint { path: PathBuf, message: String },

    /// A file system error, with the path it happened on.
    #[error("cannot access '{path}': {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A tensor operation failed (a bug, or memory).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl PalError {
    /// True for errors in what the user asked for (configuration, architecture), which the
    /// CLI reports with exit code 2; data, checkpoint and tensor errors are exit code 1.
    pub fn is_usage(&self) -> bool {
        matches!(self, PalError::Arch { .. } | PalError::Config { .. })
    }

    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        PalError::Config {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PalError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        PalError::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result with [`PalError`].
pub type Result<T, E = PalError> = std::result::Result<T, E>;
