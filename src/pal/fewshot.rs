//! Users the model has not seen (PAL-SPEC "Users the model has not seen"; paper Sec. 3.2,
//! few-shot localisation).
//!
//! Owns: [`few_shot`] — keep f, g_k (or P) and τ frozen, give each new user fresh logits
//! W_i = 0 (the uniform mixture), fit only those K numbers on N of the user's comparisons
//! (picked by a seed) with a *fixed* number of full-batch AdamW steps — no held-out or test
//! comparison takes part in any choice — then score the user's remaining comparisons. The same
//! remaining comparisons are also scored zero-shot, with the mean of the seen users' mixtures.
//! Does not own: training of the shared parts (`train.rs`).

use candle_core::{Tensor, Var};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::config::FewShotConfig;
use super::data::{Comparison, ComparisonSet};
use super::error::{PalError, Result};
use super::evaluate::{report_from_margins, EvalOptions, EvalReport};
use super::loss;
use super::model::{rng, stream, Features, PalModel};
use super::optim::AdamW;

/// The outcome of few-shot adaptation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FewShotResult {
    /// N, shots per user.
    pub shots: usize,
    /// Accuracy on each adapted user's remaining comparisons with the fitted mixture.
    pub adapted: EvalReport,
    /// The same comparisons scored with the zero-shot mixture.
    pub zero_shot: EvalReport,
    /// Adapted users, in order.
    pub user_ids: Vec<String>,
    /// Their fitted logits, `user_ids.len() * K`, row-major (see [`PalModel::add_users`]).
    pub logits: Vec<f32>,
    /// Users with N or fewer comparisons (nothing left to score), not adapted.
    pub skipped_users: Vec<String>,
    /// Mean loss on the shots after the last step.
    pub final_shot_loss: f64,
}

/// Adapts every user of `set` with more than `cfg.shots` comparisons (all treated as new users,
/// whatever their ids) and evaluates them; see the module doc.
pub fn few_shot(
    model: &PalModel,
    set: &ComparisonSet,
    cfg: &FewShotConfig,
    opts: &EvalOptions,
) -> Result<FewShotResult> {
    cfg.validate()?;
    set.validate()?;
    model.check_dims(set)?;
    let k = model.cfg.k;

    // Pick the shots: each user's comparisons shuffled by the seed, the first N are shots.
    let mut r = rng(cfg.seed, stream::FEW_SHOT);
    let mut local = vec![u32::MAX; set.n_users()];
    let (mut user_ids, mut skipped_users) = (Vec::new(), Vec::new());
    let (mut shot_idx, mut query_idx) = (Vec::new(), Vec::new());
    for (u, mut idx) in set.by_user().into_iter().enumerate() {
        if idx.is_empty() {
            continue;
        }
        if idx.len() <= cfg.shots {
            skipped_users.push(set.user_ids[u].clone());
            continue;
        }
        idx.shuffle(&mut r);
        local[u] = user_ids.len() as u32;
        user_ids.push(set.user_ids[u].clone());
        shot_idx.extend_from_slice(&idx[..cfg.shots]);
        query_idx.extend_from_slice(&idx[cfg.shots..]);
    }
    if user_ids.is_empty() {
        return Err(PalError::Data(format!(
            "no user has more than {} comparisons, so none can be adapted and scored\nhint: lower 'shots'",
            cfg.shots
        )));
    }
    shot_idx.sort_unstable();
    query_idx.sort_unstable();
    let n = user_ids.len();

    // Frozen features of the shots, computed once.
    let batch = model.gather(set, &shot_idx, &|u| local[u as usize])?;
    let f = model.features(&batch, None)?;
    let feats = Features {
        fx: f.fx.detach(),
        g: f.g.map(|g| g.detach()),
    };
    let users = Tensor::new(batch.users.as_slice(), &model.device)?;

    // Fresh logits W = 0 (uniform mixtures), the only thing that moves.
    let logits = Var::zeros((n, k), model.dtype, &model.device)?;
    let mut opt = AdamW::new();
    opt.add_rows(logits.clone(), cfg.lr, 0.0)?;
    let all_rows: Vec<u32> = (0..n as u32).collect();
    let shot_loss = |w: &Tensor| -> Result<Tensor> {
        let (m, penalty) = model.margins_from(&feats, &batch, w, None)?;
        let t = loss::agreement(&m, &batch.y)?;
        let l = loss::per_comparison(model.cfg.loss, &t)?.mean_all()?;
        Ok(match penalty {
            Some(p) => (l + p)?,
            None => l,
        })
    };
    for _ in 0..cfg.steps {
        let w = model.train_mixture(&logits.as_tensor().index_select(&users, 0)?)?;
        let l = shot_loss(&w)?;
        let grads = l.backward()?;
        opt.step(&grads, &all_rows)?;
    }
    let final_shot_loss =
        shot_loss(&model.train_mixture(&logits.as_tensor().index_select(&users, 0)?)?)?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;

    // Score the remaining comparisons, adapted and zero-shot.
    let table = model.eval_mixture(logits.as_tensor())?.detach(); // [n, K]
    let adapted_m =
        model.margins_with_table(set, &table, &|u| local[u as usize], query_idx.clone())?;
    let zero_table = model.mixture_table()?;
    let zero_row = Tensor::new(&[zero_table.dim(0)? as u32 - 1], &model.device)?;
    let zero_table = zero_table.index_select(&zero_row, 0)?; // [1, K]
    let zero_m = model.margins_with_table(set, &zero_table, &|_| 0, query_idx.clone())?;

    let comps: Vec<Comparison> = query_idx
        .iter()
        .map(|&i| Comparison {
            user: local[set.comps[i].user as usize],
            ..set.comps[i]
        })
        .collect();
    let (adapted_w, zero_w) = if k > 1 {
        let t = table.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
        let z = zero_table
            .to_dtype(candle_core::DType::F64)?
            .to_vec2::<f64>()?
            .remove(0);
        (Some(t), Some(vec![z; n]))
    } else {
        (None, None)
    };
    let adapted = report_from_margins(
        &user_ids,
        &comps,
        &adapted_m,
        &vec![true; n],
        adapted_w.as_deref(),
        opts,
    );
    let zero_shot = report_from_margins(
        &user_ids,
        &comps,
        &zero_m,
        &vec![false; n],
        zero_w.as_deref(),
        opts,
    );
    let logits = logits
        .as_tensor()
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(FewShotResult {
        shots: cfg.shots,
        adapted,
        zero_shot,
        user_ids,
        logits,
        skipped_users,
        final_shot_loss,
    })
}
