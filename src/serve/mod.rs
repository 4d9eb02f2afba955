//! serve: the personalized reward put to use — scoring candidates for one user, enrolling a
//! new user from their comparisons, and the HTTP server RL trainers call.
//!
//! Owns: [`Scorer`] (one served model: its PAL head, its encoder loaded once, the
//! content-addressed vector cache, bounded in memory ([`cache`]), and its users: seen, enrolled or zero-shot), the
//! enrolment of new users into the `enrollments` table ([`enroll`]), and the axum server
//! ([`http`]) with its queue that batches concurrent requests through the model. `palpipe
//! score`, `enroll` and `serve` (`src/cli/score.rs`) are thin layers over these. Does not
//! own: the model math (`src/pal`: [`crate::pal::PalModel::score_batch`] computes the
//! rewards that `palpipe eval` uses), the encoders (`src/embed`) or training.

pub mod cache;
pub mod enroll;
pub mod error;
pub mod http;
pub mod scorer;

pub use cache::{CacheStats, WriteBack, DEFAULT_CACHE_MIB};
pub use enroll::{parse_comparisons, ComparisonInput, EnrollOutcome};
pub use error::ServeError;
pub use http::{serve, ServeConfig};
pub use scorer::{Content, Prepared, ScoreRequest, Scored, Scorer, UserParams, UserSel};

/// "not valid JSON at column 5: expected value": serde's message for one line, its position
/// as a column only (its "line 1" would contradict the file's line the caller names).
fn not_json(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let message = message.strip_suffix(&position).unwrap_or(&message);
    format!("not valid JSON at column {}: {message}", e.column())
}

/// The non-blank lines of a JSON-lines text, parsed, each with where it is (`source:line`)
/// for error messages; a line that does not parse is an error naming it.
pub fn json_lines(
    text: &str,
    source: &str,
) -> Result<Vec<(String, serde_json::Value)>, ServeError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{source}:{}", i + 1);
        let v = serde_json::from_str(line).map_err(|e| ServeError::bad(&at, not_json(&e)))?;
        out.push((at, v));
    }
    Ok(out)
}
