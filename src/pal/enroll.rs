//! Enrolment of one new user (PAL-SPEC "Users the model has not seen"): fit the user's K
//! mixture logits on all of their comparisons with f, g_k (or P) and τ frozen.
//!
//! Owns: [`fit_user_logits`], the one function `palpipe enroll` and the server's
//! `/users/{id}/enroll` call to fit. It checks that the set holds one user and fits with
//! [`super::fit_new_user`], the estimator `palpipe adapt` uses (a prior learned from the seen
//! users, centred on the zero-shot mixture; `estimator` and `prior_scale` in the
//! [`FewShotConfig`]), so an enrolled user is fitted exactly as adaptation fits new users.
//! Does not own: the choice of held-out comparisons or their scoring (`src/serve/enroll.rs`).

use super::config::FewShotConfig;
use super::data::ComparisonSet;
use super::error::{PalError, Result};
use super::model::PalModel;

/// The fitted logits W (length K) of the one user of `set` (every comparison's user row must
/// be 0), from [`super::fit_new_user`] with `cfg` (`shots` and `seed` are not used: every
/// comparison takes part).
pub fn fit_user_logits(
    model: &PalModel,
    set: &ComparisonSet,
    cfg: &FewShotConfig,
) -> Result<Vec<f32>> {
    if set.comps.iter().any(|c| c.user != 0) {
        return Err(PalError::Data(
            "an enrolment set holds the comparisons of one user (row 0)".into(),
        ));
    }
    super::fit_new_user(model, set, cfg)
}
