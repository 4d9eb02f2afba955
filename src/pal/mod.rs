//! pal: personalized reward models on frozen embeddings — PAL-A and PAL-B heads
//! ("PAL: Sample-Efficient Personalized Reward Modeling for Pluralistic Alignment", Chen et al.,
//! ICLR 2025; the contract is `../shared/PAL-SPEC.md`).
//!
//! Owns: the data interface ([`ComparisonSet`]), configuration ([`ModelConfig`],
//! [`TrainConfig`], [`FewShotConfig`]), the model ([`PalModel`]: f, g_k or P, τ, user logits W),
//! the losses, the trainer ([`train`]), evaluation ([`evaluate`]), few-shot adaptation of unseen
//! users ([`few_shot_curve`], [`fit_new_user`]; the known-group bound [`group_bound`], seen users
//! re-placed from N shots [`refit_seen`], the model world [`model_world`]), checkpoints ([`PalModel::save`] /
//! [`PalModel::load`]), scoring ([`PalModel::score`], [`PalModel::score_batch`]), one new
//! user's enrolment ([`fit_enrolled_user`]) and the popularity baseline ([`Popularity`]). The
//! `bt` baseline is PAL
//! with K = 1. Does not own: where the data comes from (the store and the CLI build
//! [`ComparisonSet`]s from tables), generic metrics (`src/eval/metrics.rs`), or rendering.
//!
//! Everything runs on the CPU with candle; every random choice derives from one seed.
//!
//! ```no_run
//! # use palpipe::pal::*;
//! # fn demo(train_set: &ComparisonSet, test_set: &ComparisonSet) -> Result<()> {
//! let model_cfg = ModelConfig { kind: ModelKind::PalA, k: 3, ..ModelConfig::default() };
//! let (model, _report) = train(&model_cfg, &TrainConfig::default(), train_set, None, &mut |_| {})?;
//! let report = evaluate(&model, test_set, &EvalOptions::default())?;
//! println!("accuracy {:.3}", report.accuracy);
//! model.save(std::path::Path::new("models/demo"))?;
//! # Ok(()) }
//! ```

mod baseline;
mod checkpoint;
mod config;
mod cosines;
mod data;
mod enroll;
mod error;
mod evaluate;
mod fewshot;
mod grad;
mod group_bound;
mod loss;
mod mlp;
mod model;
mod model_world;
mod optim;
mod refit;
mod score;
mod train;

#[cfg(test)]
mod tests;

pub use baseline::{ClipScore, Popularity};
pub use checkpoint::{CardInfo, ModelCard, CARD_FILE, CARD_FORMAT, WEIGHTS_FILE};
pub use config::{
    ridge_json, Activation, Arch, Distance, Estimator, FewShotConfig, GroupConfig, LossKind, Mode,
    ModelConfig, ModelKind, NormBound, QueriesBy, Select, TrainConfig, MAX_FS_STEPS,
};
pub use data::{Comparison, ComparisonSet, Weight};
pub use enroll::{fit_enrolled_user, EnrolledFit};
pub use error::{PalError, Result};
pub use evaluate::{evaluate, EvalOptions, EvalReport, MixtureSummary, Outcome, UserAccuracy};
pub use fewshot::{
    choose, few_shot_curve, fit_new_user, simulate_seen, FewShotCurve, FewShotPoint, SimRow,
};
pub use group_bound::{group_bound, GroupBound, GroupBoundPoint};
pub use loss::SMOOTH_HINGE_GAMMA;
pub use model::{PalModel, SCALE_MAX, TAU_INIT};
pub use model_world::{model_world, ModelWorld, ModelWorldPoint};
pub use refit::{refit_seen, refit_seen_users, SeenRefit, SeenRefitPoint};
pub use score::ScoreJob;
pub use train::{mean_loss, train, train_on, EpochRecord, PhaseTimes, TrainProgress, TrainReport};
