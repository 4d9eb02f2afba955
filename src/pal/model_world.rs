//! The model world of few-shot adaptation (issue 14): what N shots can reach where the model
//! is exactly right and the population of users is known.
//!
//! Owns: [`model_world`]. The new users, their fixed queries and their shots for every N are
//! those of [`super::few_shot_curve`] with the same configuration (the same seeded split); only
//! the labels change. Each new user is given a TRUE mixture, the fitted mixture of a seen user
//! drawn uniformly (seeded), and each of their comparisons a label drawn from the model at it:
//! the left item wins with probability σ(m), m = r(x_l) − r(x_r) the model's margin under the
//! true mixture (the Bradley–Terry likelihood the logistic loss fits). In that world the best
//! prediction of a query from N shots is known: the posterior over the seen users' mixtures
//! (a uniform prior, the first N shots' likelihood) and the posterior predictive
//! P(left wins) = Σ_a π_a σ(m_a). No estimator scores higher in expectation on the same queries
//! from the same shots. Beside it: the queries scored with each user's true mixture (the
//! ceiling), and the configured estimator's whole few-shot curve (zero-shot, each N, the
//! in-sample oracle and the held-out oracle) run on the drawn labels.
//!
//! It is a diagnostic, not a result: it says how far N shots can carry a mixture estimate when
//! PAL holds exactly, so a gap on real data (e.g. to the in-sample oracle) can be read against
//! it. Every claim about Bayes holds in expectation over the draws; one draw of the truths and
//! labels carries the sampling error of its users and queries. The drawn comparisons all weigh 1
//! (each label is one draw), whatever the data's weights. Labels follow the logistic reading of
//! the margin whatever loss the model was trained with (for a hinge loss, the margin is not a
//! log-odds, and the world is the Bradley–Terry one that margin would define). Does not own: the
//! protocol's split or the estimators (`fewshot.rs`).

use candle_core::{DType, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::config::FewShotConfig;
use super::data::{ComparisonSet, Weight};
use super::error::{PalError, Result};
use super::evaluate::{report_from_margins, EvalOptions, EvalReport};
use super::fewshot::{few_shot_curve, margins_under_each, new_user_split, FewShotCurve};
use super::model::{rng, stream, PalModel};

/// One shot count of the model world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelWorldPoint {
    /// N, shots per user.
    pub shots: usize,
    /// The queries scored with the Bayes-optimal prediction from the first N shots: the
    /// posterior predictive over the seen users' mixtures.
    pub bayes: EvalReport,
}

/// The model world of a set of new users; see the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelWorld {
    /// Seen users whose mixtures are the candidates (and the population truths come from).
    pub atoms: usize,
    /// Per new user, in `curve.user_ids` order, the seen user whose mixture is their truth.
    pub truths: Vec<String>,
    /// The queries scored with each new user's true mixture: the ceiling of any method.
    pub truth: EvalReport,
    /// One point per requested N, in the order given.
    pub points: Vec<ModelWorldPoint>,
    /// The configured estimator's few-shot curve on the drawn labels (the same users, queries
    /// and shots), with its zero-shot row, oracle and held-out oracle.
    pub curve: FewShotCurve,
}

/// The model world of the users of `set` for every N of `ns` (module doc), seeded by
/// `cfg.seed`. A data error when the model has no seen user to draw truths from, or when no
/// user of `set` has enough comparisons for the protocol (as [`super::few_shot_curve`]).
pub fn model_world(
    model: &PalModel,
    set: &ComparisonSet,
    ns: &[usize],
    cfg: &FewShotConfig,
    opts: &EvalOptions,
) -> Result<ModelWorld> {
    let sp = new_user_split(model, set, ns, cfg)?;
    let n_seen = model.user_ids().len();
    if n_seen == 0 {
        return Err(PalError::Data(
            "the model has no seen users, so there is no population to draw true mixtures from\nhint: the model world needs a model trained on users".into(),
        ));
    }
    let table = model
        .mixture_table()?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    let atoms = &table[..n_seen];
    let mut r = rng(cfg.seed, stream::MODEL_WORLD);
    let truth: Vec<usize> = sp
        .user_ids
        .iter()
        .map(|_| r.random_range(0..n_seen))
        .collect();

    let local = sp.local.clone();
    let row_of = move |u: u32| local[u as usize];
    let user = |i: usize| row_of(set.comps[i].user) as usize;

    // Every comparison of a scored user (in set order) gets a label drawn at the user's true
    // mixture (y = −1: the left item wins), and the weight 1: each label is one draw.
    let mut all: Vec<usize> = sp.all.iter().flatten().copied().collect();
    all.sort_unstable();
    let k = model.cfg.k;
    let truth_rows: Vec<f64> = truth.iter().flat_map(|&a| atoms[a].clone()).collect();
    let truth_table =
        Tensor::from_vec(truth_rows, (truth.len(), k), &model.device)?.to_dtype(model.dtype)?;
    let truth_m = model.margins_with_table(set, &truth_table, &row_of, all.clone())?;
    let mut world = set.clone();
    for (&i, &m) in all.iter().zip(&truth_m) {
        let c = &mut world.comps[i];
        c.y = if r.random::<f64>() < sigmoid(f64::from(m)) {
            -1
        } else {
            1
        };
        c.weight = Weight::ONE;
    }
    let curve = few_shot_curve(model, &world, ns, cfg, opts)?;

    let comps = sp.query_comps(&world);
    let known = vec![true; sp.user_ids.len()];
    let report =
        |margins: &[f32]| report_from_margins(&sp.user_ids, &comps, margins, &known, None, opts);
    // Every query is a comparison of its user, so it is among `all`.
    let pos_all = positions(&all, set.comps.len());
    let truth_margins: Vec<f32> = sp.queries.iter().map(|&q| truth_m[pos_all[q]]).collect();

    // The margins the Bayes prediction needs, under every seen user's mixture: each user's
    // first max-N shots and the queries.
    let maxn = ns.iter().copied().max().unwrap_or(0);
    let mut used: Vec<usize> = sp
        .shots
        .iter()
        .flat_map(|s| s.iter().take(maxn).copied())
        .chain(sp.queries.iter().copied())
        .collect();
    used.sort_unstable();
    let pos = positions(&used, set.comps.len());
    let m = margins_under(model, set, &used, &row_of, atoms)?;

    let mut points = Vec::with_capacity(ns.len());
    for &n in ns {
        let post: Vec<Vec<f64>> = sp
            .shots
            .iter()
            .map(|shots| {
                let mut ll = vec![0f64; n_seen];
                for &i in shots.iter().take(n) {
                    let y = f64::from(world.comps[i].y);
                    for (l, ma) in ll.iter_mut().zip(&m) {
                        // log P(y | m) = log σ(−y·m)
                        *l += log_sigmoid(-y * f64::from(ma[pos[i]]));
                    }
                }
                normalised(&ll)
            })
            .collect();
        // The posterior predictive as a margin: logit P(left wins), whose sign is the call.
        let margins: Vec<f32> = sp
            .queries
            .iter()
            .map(|&q| {
                let p: f64 = post[user(q)]
                    .iter()
                    .zip(&m)
                    .map(|(pa, ma)| pa * sigmoid(f64::from(ma[pos[q]])))
                    .sum();
                let p = p.clamp(1e-12, 1.0 - 1e-12);
                (p / (1.0 - p)).ln() as f32
            })
            .collect();
        points.push(ModelWorldPoint {
            shots: n,
            bayes: report(&margins),
        });
    }
    Ok(ModelWorld {
        atoms: n_seen,
        truths: truth.iter().map(|&a| model.user_ids()[a].clone()).collect(),
        truth: report(&truth_margins),
        points,
        curve,
    })
}

/// Margins of the comparisons `idx` under each mixture of `ws` (every user on it):
/// `[mixture][position in idx]`; memory is `ws.len() × idx.len()` f32 values (e.g. 200 seen
/// users × 30,000 comparisons: 24 MB).
fn margins_under(
    model: &PalModel,
    set: &ComparisonSet,
    idx: &[usize],
    user_of: &dyn Fn(u32) -> u32,
    ws: &[Vec<f64>],
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(ws.len());
    margins_under_each(model, set, idx, user_of, ws, &mut |_, _, mg| {
        out.push(mg.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        Ok(())
    })?;
    Ok(out)
}

/// Positions in `idx` by comparison index (`usize::MAX` for those not in it), `n` comparisons.
fn positions(idx: &[usize], n: usize) -> Vec<usize> {
    let mut pos = vec![usize::MAX; n];
    for (p, &i) in idx.iter().enumerate() {
        pos[i] = p;
    }
    pos
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// log σ(x), without overflow for large |x|.
fn log_sigmoid(x: f64) -> f64 {
    -((-x.abs()).exp().ln_1p() + (-x).max(0.0))
}

/// exp(ll) normalised to sum 1 (log-sum-exp).
fn normalised(ll: &[f64]) -> Vec<f64> {
    let mx = ll.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
    let e: Vec<f64> = ll.iter().map(|x| (x - mx).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sigmoid_is_the_log_of_sigmoid_and_stays_finite() {
        for x in [-30.0, -2.0, -0.5, 0.0, 0.7, 3.0, 25.0] {
            assert!((log_sigmoid(x) - sigmoid(x).ln()).abs() < 1e-12, "{x}");
        }
        assert!((log_sigmoid(-1000.0) + 1000.0).abs() < 1e-9);
        assert_eq!(log_sigmoid(1000.0), 0.0);
    }
}
