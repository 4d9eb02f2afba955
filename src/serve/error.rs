//! The one error type of `serve`, with the HTTP status and exit code each kind maps to.
//!
//! Owns: [`ServeError`]. Messages are lowercase, quote the value at fault (user ids escaped,
//! so a quote or a newline in one cannot break a line or a JSON string) and carry a `hint:`
//! line when the fix is known. Does not own: rendering (the CLI prints the message once;
//! the server wraps it in `{"error": …}`).

use std::path::PathBuf;

/// Everything scoring, enrolment and the server can report.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A request or input line is malformed; `field` names where.
    #[error("{field}: {message}")]
    BadInput { field: String, message: String },
    /// More than a limit allows (candidates, batch size, body bytes).
    #[error("{0}")]
    TooLarge(String),
    /// The model is not in the store, cannot score, or is not served.
    #[error("{0}")]
    UnknownModel(String),
    /// A user the model neither saw in training nor has enrolled.
    #[error("unknown user '{user}' for model '{model}'{}\nhint: enroll the user first: palpipe enroll --model {model} --user ID --comparisons FILE (or POST /users/ID/enroll); --zero-shot (\"user\": null over HTTP) scores with the seen users' mean mixture", .suggestion.as_ref().map(|s| format!("; did you mean '{s}'?")).unwrap_or_default())]
    UnknownUser {
        model: String,
        user: String,
        /// A known id the user likely meant (the same id under its dataset's prefix), shown
        /// as "did you mean".
        suggestion: Option<String>,
    },
    /// The model's encoder cannot be loaded, or its weights are not the ones the model used.
    #[error("encoder '{encoder}' is not available (looked in '{}'): {reason}\nhint: put the encoder's files there, pass --encoder-dir, or set PALPIPE_MODELS to the folder holding it", looked.display())]
    EncoderMissing {
        encoder: String,
        looked: PathBuf,
        reason: String,
    },
    /// The store holds no vector for a content id given by id.
    #[error("no vector for content id '{id}' under encoder '{encoder}'")]
    NoVector { id: String, encoder: String },
    /// A file named in the input cannot be read or decoded.
    #[error("{0}")]
    File(String),
    /// Another process holds the store's writer lock.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Pal(#[from] crate::pal::PalError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
    /// Anything else that went wrong doing the work.
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    /// An invalid fit setting (a [`crate::pal::PalError::Config`] names its field) as bad
    /// input; any other error as it is.
    pub fn settings(e: crate::pal::PalError) -> Self {
        match e {
            crate::pal::PalError::Config { field, message } => ServeError::bad(field, message),
            other => ServeError::Pal(other),
        }
    }

    /// A malformed input at `field`.
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        ServeError::BadInput {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            ServeError::BadInput { .. } | ServeError::NoVector { .. } | ServeError::File(_) => 400,
            ServeError::UnknownModel(_) | ServeError::UnknownUser { .. } => 404,
            ServeError::TooLarge(_) => 413,
            ServeError::Busy(_) => 503,
            ServeError::Embed(crate::embed::EmbedError::EmptyText { .. })
            | ServeError::Embed(crate::embed::EmbedError::Image { .. }) => 400,
            _ => 500,
        }
    }

    /// The exit code of the CLI: 2 for what the user asked wrongly, 1 for the rest.
    pub fn exit_code(&self) -> i32 {
        match self {
            ServeError::BadInput { .. }
            | ServeError::UnknownModel(_)
            | ServeError::UnknownUser { .. }
            | ServeError::TooLarge(_) => 2,
            _ => 1,
        }
    }
}

/// A user id as it appears inside quotes in a message: escaped, so that it stays one line.
pub fn shown(id: &str) -> String {
    id.escape_debug().to_string()
}
