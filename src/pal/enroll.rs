//! Enrolment of one new user (PAL-SPEC "Users the model has not seen"): fit the user's K
//! mixture logits on all of their comparisons with f, g_k (or P) and τ frozen.
//!
//! Owns: [`fit_user_logits`], the one function `palpipe enroll` and the server's
//! `/users/{id}/enroll` call to fit. It runs the few-shot procedure of `fewshot.rs` (fresh
//! logits W = 0, a fixed number of full-batch AdamW steps on the model's own loss, no data
//! outside the given comparisons involved) on every comparison given, where `few_shot`
//! splits each user's comparisons into shots and queries itself. Does not own: the choice of
//! held-out comparisons or their scoring (`src/serve/enroll.rs`).

use candle_core::{DType, Tensor, Var};

use super::config::FewShotConfig;
use super::data::ComparisonSet;
use super::error::{PalError, Result};
use super::loss;
use super::model::{Features, PalModel};
use super::optim::AdamW;

/// The fitted logits W (length K) of the one user of `set` (every comparison's user row must
/// be 0), after `cfg.steps` AdamW steps at `cfg.lr` from W = 0. `cfg.shots` and `cfg.seed`
/// are not used: every comparison takes part.
pub fn fit_user_logits(
    model: &PalModel,
    set: &ComparisonSet,
    cfg: &FewShotConfig,
) -> Result<Vec<f32>> {
    set.validate()?;
    model.check_dims(set)?;
    if set.comps.iter().any(|c| c.user != 0) {
        return Err(PalError::Data(
            "an enrolment set holds the comparisons of one user (row 0)".into(),
        ));
    }
    let idx: Vec<usize> = (0..set.comps.len()).collect();
    let batch = model.gather(set, &idx, &|_| 0)?;
    let f = model.features(&batch, None)?;
    let feats = Features {
        fx: f.fx.detach(),
        g: f.g.map(|g| g.detach()),
    };
    let logits = Var::zeros((1, model.cfg.k), model.dtype, &model.device)?;
    let mut opt = AdamW::new();
    opt.add_rows(logits.clone(), cfg.lr, 0.0)?;
    for _ in 0..cfg.steps {
        let w = model.train_mixture(logits.as_tensor())?; // [1, K]
        let (m, penalty) = model.margins_from(&feats, &batch, &w, None)?;
        let t = loss::agreement(&m, &batch.y)?;
        let mut l = loss::per_comparison(model.cfg.loss, &t)?.mean_all()?;
        if let Some(p) = penalty {
            l = (l + p)?;
        }
        let grads = l.backward()?;
        opt.step(&grads, &[0])?;
    }
    let out: Tensor = logits.as_tensor().to_dtype(DType::F32)?.flatten_all()?;
    Ok(out.to_vec1::<f32>()?)
}
