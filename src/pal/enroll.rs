//! Enrolment of one new user (PAL-SPEC "Users the model has not seen"): fit the user's K
//! mixture logits on all of their comparisons with f, g_k (or P) and τ frozen, and with the
//! `offset` estimator their offset δ of the ideal point too.
//!
//! Owns: [`fit_enrolled_user`], the one function `palpipe enroll` and the server's
//! `/users/{id}/enroll` call to fit, and [`EnrolledFit`], what it returns. It checks that the
//! set holds one user and fits with the estimator `palpipe adapt` uses (a prior learned from
//! the seen users, centred on the zero-shot mixture; `estimator`, `prior_scale` and `ridge`
//! in the [`FewShotConfig`]), so an enrolled user is fitted exactly as adaptation fits new
//! users, offset included. Does not own: the choice of held-out comparisons or their scoring,
//! or where the fit is stored (`src/serve/enroll.rs`).

use super::config::{Estimator, FewShotConfig};
use super::data::ComparisonSet;
use super::error::{PalError, Result};
use super::model::PalModel;

/// One enrolled user's fit.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrolledFit {
    /// The estimator that fitted it (never `auto`: here that is `empirical`).
    pub estimator: Estimator,
    /// The K fitted logits W_i; their mixture is [`PalModel::mixture_of_logits`].
    pub logits: Vec<f32>,
    /// With the `offset` estimator: the user's offset δ of the ideal point, D values (D = d
    /// for PAL-B, added to z = Σ_k w_k g_k(x_c) before it is normalised; D = Dp + Dx for
    /// PAL-A, added to a = Σ_k w_k P_k). `None` for the mixture-only estimators and for
    /// `offset` with ridge λ = ∞. Scoring takes it as [`super::ScoreJob::offset`].
    pub offset: Option<Vec<f32>>,
}

/// The fit of the one user of `set` (every comparison's user row must be 0) with `cfg`
/// (`shots` and `seed` are not used: every comparison takes part). `auto` is `empirical`
/// here (no seen-user simulation is run per enrolment; `Scorer::enroll`, which `palpipe
/// enroll` and the server call, first replaces `auto` by the choice a recorded simulation
/// made for the model, where there is one).
///
/// Errors: a comparison of another user row, bad dimensions, or an invalid `cfg`.
pub fn fit_enrolled_user(
    model: &PalModel,
    set: &ComparisonSet,
    cfg: &FewShotConfig,
) -> Result<EnrolledFit> {
    if set.comps.iter().any(|c| c.user != 0) {
        return Err(PalError::Data(
            "an enrolment set holds the comparisons of one user (row 0)".into(),
        ));
    }
    let (row, offset) = super::fewshot::fit_one_user(model, set, cfg)?;
    let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    Ok(EnrolledFit {
        estimator: super::fewshot::resolve(cfg.estimator),
        logits: f32s(row),
        // λ = ∞ is no offset (δ = 0 exactly): nothing to store.
        offset: offset.filter(|_| cfg.ridge.is_finite()).map(f32s),
    })
}
