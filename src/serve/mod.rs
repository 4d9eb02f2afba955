//! serve: the personalized reward put to use — scoring candidates for one user, enrolling a
//! new user from their comparisons, and the HTTP server RL trainers call.
//!
//! Owns: [`Scorer`] (one served model: its PAL head, its encoder loaded once, the
//! content-addressed vector cache, and its users: seen, enrolled or zero-shot), the
//! enrolment of new users into the `enrollments` table ([`enroll`]), and the axum server
//! ([`http`]) with its queue that batches concurrent requests through the model. `palpipe
//! score`, `enroll` and `serve` (`src/cli/score.rs`) are thin layers over these. Does not
//! own: the model math (`src/pal`: [`crate::pal::PalModel::score_batch`] computes the
//! rewards that `palpipe eval` uses), the encoders (`src/embed`) or training.

pub mod enroll;
pub mod error;
pub mod http;
pub mod scorer;

pub use enroll::{parse_comparisons, ComparisonInput, EnrollOutcome};
pub use error::ServeError;
pub use http::{serve, ServeConfig};
pub use scorer::{Content, Prepared, ScoreRequest, Scored, Scorer, UserSel};
