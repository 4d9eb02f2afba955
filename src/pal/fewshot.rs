//! Users the model has not seen (PAL-SPEC "Users the model has not seen"; paper Sec. 3.2,
//! few-shot localisation).
//!
//! Owns: the fixed-query few-shot protocol ([`few_shot_curve`]), the estimators of a new user's
//! K logits ([`Estimator`]: `map`, `posterior`, `empirical`, `mle`; `offset` adds a per-user
//! offset of the ideal point), the single-user entry point other parts
//! call ([`fit_new_user`]), and the simulated few-shot on seen users that picks an estimator and
//! its prior strength ([`simulate_seen`]). f, g_k (or P) and τ stay frozen throughout.
//!
//! Protocol: per user, a seeded shuffle of their comparisons; the first `max(⌈query_frac·n⌉,
//! min_queries)` are the user's queries, the rest (in shuffled order) the shots, so the shots
//! for N are a prefix of those for any larger N and every N is scored on the same queries. Users
//! without enough remainder for the largest N are excluded from every N (and listed). With
//! [`QueriesBy::Item`] the shuffle is of the items the user compared instead: the first
//! ⌈`query_frac`·items⌉ are query items, the queries the user's comparisons of two of them,
//! the shots (shuffled) those of two other items; comparisons across are unused, and users with
//! fewer than `min_queries` queries or too few shots are excluded. Zero-shot
//! (the seen users' mean mixture w̄), the oracle mixture (maximum likelihood on all of the
//! user's comparisons, queries included: an in-sample bound, not a result) and the held-out
//! oracle (the same fit on all of the user's shots, i.e. every comparison but the queries, by
//! item also but those across: the most shots the protocol could give) are scored on the same
//! queries.
//!
//! Prior: a Gaussian on a new user's logits, one standard deviation per prototype (the spread of
//! the seen users' logits once each user's mean logit is removed, times `prior_scale`), centred
//! at T·ln w̄ so that `map` with no comparison gives w̄ exactly (softmax of the mean logits would
//! not: softmax(mean) ≠ mean(softmax)). `posterior` re-centres the same Gaussian so that the mean
//! of its draws in w-space is w̄, and writes its estimate as w̄ + Σ_j (ω_j − 1/M)·w_j, which is
//! w̄ exactly when there is no evidence (all ω_j = 1/M). The likelihood is the model's own loss
//! per comparison (−log σ(t) for the logistic loss); the norm-bound penalty, a training
//! regulariser, takes no part in `map` or `posterior`.
//!
//! Empirical prior (`empirical`): one atom per seen user, their own fitted logits, each blurred
//! by a Gaussian of `prior_scale` × [`EMPIRICAL_BLUR`] × the spread above, so the prior keeps
//! the seen users' clusters (e.g. one per persona) instead of one wide bump; mixed, with
//! weight [`EMPIRICAL_SMOOTH`], with the `posterior` prior at scale 1, so that any mixture
//! stays reachable as shots pile up (atoms alone would stop at the nearest seen user). The
//! estimate is the posterior mean, written as for `posterior`, so 0 comparisons give w̄, the
//! seen users' mean mixture, exactly. In the
//! simulation on seen users, a user's own atom is left out of their prior (leave-one-out), or
//! the prior would already hold the answer.
//!
//! Weights: a comparison's weight (`pairs.weight`, [`super::Weight`]) weighs its shot as it
//! weighs the training loss. `mle`, whose objective is training's mean loss, takes each
//! user's Σ w·ℓ / Σ w (the plain mean when the weights are equal, computed as the plain mean).
//! The likelihood-based estimators (`map`, `posterior`, `empirical`, `offset`) take the
//! weighted log-likelihood Σ w·log p(shot): their shots are evidence against a prior, so the absolute
//! size of a weight matters (a mean would make 1 shot weigh as much as 50), and weight w
//! counts as w copies of the shot, the same reading as training's (weight 2 = given twice).
//! A weight of 1.0 multiplies nothing away, so data without weights adapts bit for bit as
//! before. Huge weights cannot overflow, and a user's fit does not depend on the other users'
//! weights when many users are fitted in one objective: each user's part is scaled by their
//! own weights only (`loss::UserScale`, `loss::user_mean_coefs`). Queries are scored
//! unweighted, as `evaluate` scores seen users.
//!
//! Offset (`offset`): `empirical`'s mixture, then a per-user offset δ of the ideal point
//! (PAL-B: added to z = Σ_k w_k g_k(x_c) before it is normalised; PAL-A: to a = Σ_k w_k P_k,
//! in f's input space) fitted with the mixture fixed, under a ridge penalty (λ/2)·‖δ/ρ‖² (ρ the
//! prototypes' RMS norm): a user whose preferences lie off the prototypes' span can then be
//! reached, which no mixture can. λ = ∞ (or 0 shots) is `empirical` exactly. The simulation
//! tries λ on top of the best `empirical` scale; `auto` takes it only when it wins there.
//! Does not own: training of the shared parts (`train.rs`).

use candle_core::{DType, Tensor, Var};
use rand::seq::SliceRandom;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::config::{Estimator, FewShotConfig, QueriesBy};
use super::data::{Comparison, ComparisonSet};
use super::error::{PalError, Result};
use super::evaluate::{report_from_margins, EvalOptions, EvalReport};
use super::grad::without_grad;
use super::loss;
use super::model::{rng, stream, Features, PalModel};
use super::optim::AdamW;

/// Floor of a mixture weight before its log is taken (partition-mode means can hold zeros).
const W_FLOOR: f64 = 1e-6;
/// Fewest AdamW steps of the oracle fit (it has many comparisons per user).
const ORACLE_MIN_STEPS: usize = 600;
/// Prior scales tried by the simulation for `map` and `posterior`.
const SIM_SCALES: [f64; 4] = [0.5, 1.0, 2.0, 4.0];
/// Prior scales tried by the simulation for `empirical` (its blur, see [`EMPIRICAL_BLUR`]).
const SIM_EMPIRICAL_SCALES: [f64; 4] = [0.25, 0.5, 1.0, 2.0];
/// The blur around each seen user's atom at `prior_scale` 1, as a share of the prior's spread.
pub const EMPIRICAL_BLUR: f64 = 0.25;
/// The prior mass of `empirical` given to the smooth `posterior` prior (scale 1), the rest
/// to the seen users' atoms.
pub const EMPIRICAL_SMOOTH: f64 = 0.1;
/// Ridge strengths λ tried by the simulation for `offset` (its mixture: `empirical` at that
/// estimator's best simulated scale). λ = ∞ is that `empirical` row itself.
const SIM_RIDGES: [f64; 4] = [1.0, 10.0, 100.0, 1000.0];
/// Seen users the simulation uses at most.
const SIM_MAX_USERS: usize = 100;
/// Fewest seen users the simulation needs for its largest shot count.
const SIM_MIN_USERS: usize = 10;

/// One point of the few-shot curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FewShotPoint {
    /// N, shots per user (0: the zero-shot mixture itself).
    pub shots: usize,
    /// Accuracy on the users' fixed queries with the mixture fitted from N shots.
    pub adapted: EvalReport,
    /// The fitted logits, `user_ids.len() * K`, row-major (see [`PalModel::add_users`]).
    pub logits: Vec<f32>,
    /// `offset` only: each user's offset δ of the ideal point, `user_ids.len() * D`
    /// row-major (D: d for PAL-B, Dp + Dx for PAL-A); empty for the other estimators.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsets: Vec<f32>,
}

/// The whole few-shot curve of a set of new users; see the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FewShotCurve {
    /// The estimator used (never `auto`).
    pub estimator: Estimator,
    /// Its prior scale.
    pub prior_scale: f64,
    /// `offset`'s ridge strength λ (`None` for the other estimators; ∞ is written "inf").
    #[serde(default, with = "super::config::ridge_json")]
    pub ridge: Option<f64>,
    /// Users scored, in set order.
    pub user_ids: Vec<String>,
    /// Users without enough comparisons for the queries and the largest N, in set order.
    pub excluded_users: Vec<String>,
    /// Query comparisons scored at every N (all users together).
    pub queries: usize,
    /// The queries scored with the zero-shot mixture.
    pub zero_shot: EvalReport,
    /// One point per requested N, in the order given.
    pub points: Vec<FewShotPoint>,
    /// The queries scored with each user's oracle mixture (a bound, not a result): maximum
    /// likelihood on all of the user's comparisons, the queries included, so in-sample and
    /// optimistic.
    pub oracle: EvalReport,
    /// The queries scored with each user's held-out oracle mixture: the same fit on every
    /// comparison of the user except the queries (the most shots the protocol could give).
    /// A reference, not a bound: a plain maximum-likelihood fit, which an estimator with a
    /// prior (`map`, `posterior`, `empirical`) can beat on the same comparisons.
    pub heldout_oracle: EvalReport,
    /// The queries scored with the curve's own estimator fitted on every comparison of the
    /// user except the queries (the curve's end, had the protocol no shot limit).
    pub heldout_estimator: EvalReport,
}

/// One candidate of the simulated few-shot on seen users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimRow {
    pub estimator: Estimator,
    pub prior_scale: f64,
    /// `offset`'s ridge strength λ (`None` for the other estimators; ∞ is written "inf").
    #[serde(default, with = "super::config::ridge_json")]
    pub ridge: Option<f64>,
    /// Mean over the simulated shot counts of the query accuracy.
    pub accuracy: f64,
    /// (N, query accuracy) per simulated shot count.
    pub per_shots: Vec<(usize, f64)>,
    /// Seen users simulated.
    pub users: usize,
}

// ---------------------------------------------------------------------------------------------
// Prior
// ---------------------------------------------------------------------------------------------

/// The Gaussian prior over a new user's logits, learned from the seen users.
#[derive(Debug, Clone)]
pub(super) struct Prior {
    /// T·ln w̄: softmax(centre / T) = w̄ (up to the floor).
    centre: Vec<f64>,
    /// The seen users' own logits, in model row order (the atoms of `empirical`).
    rows: Vec<Vec<f64>>,
    /// Per prototype, the spread of the seen users' logits after removing each user's mean.
    sd: Vec<f64>,
    /// The zero-shot mixture w̄.
    zero: Vec<f64>,
}

impl Prior {
    pub(super) fn of(model: &PalModel) -> Result<Prior> {
        let k = model.cfg.k;
        let t = model.cfg.temperature;
        let zero = model.zero_shot_mixture()?;
        let centre = zero.iter().map(|&w| t * w.max(W_FLOOR).ln()).collect();
        let rows = model
            .logits
            .as_tensor()
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        let sd = if rows.len() < 2 {
            vec![1.0; k]
        } else {
            let centred: Vec<Vec<f64>> = rows
                .iter()
                .map(|r| {
                    let m = r.iter().sum::<f64>() / k as f64;
                    r.iter().map(|x| x - m).collect()
                })
                .collect();
            let n = centred.len() as f64;
            (0..k)
                .map(|j| {
                    let mean = centred.iter().map(|r| r[j]).sum::<f64>() / n;
                    let var =
                        centred.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / (n - 1.0);
                    var.sqrt().max(1e-3)
                })
                .collect()
        };
        Ok(Prior {
            centre,
            rows,
            sd,
            zero,
        })
    }
}

/// softmax(l / t) in f64.
fn softmax(l: &[f64], t: f64) -> Vec<f64> {
    let mx = l.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x / t));
    let e: Vec<f64> = l.iter().map(|&x| (x / t - mx).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// Σ_j a_j · w_j.
fn weighted(draws: &[Vec<f64>], a: &[f64], k: usize) -> Vec<f64> {
    let mut out = vec![0.0; k];
    for (w, &aj) in draws.iter().zip(a) {
        for (o, x) in out.iter_mut().zip(w) {
            *o += aj * x;
        }
    }
    out
}

/// `auto` without a simulation to decide: `empirical`, which won the seen-user simulation on
/// 11 of the 13 stores measured for issue 14 (12 Polis stores and Persona; a tie on one,
/// `posterior` ahead by 0.09 points on the other).
pub(super) fn resolve(e: Estimator) -> Estimator {
    match e {
        Estimator::Auto => Estimator::Empirical,
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Estimators
// ---------------------------------------------------------------------------------------------

/// Frozen features of the comparisons `idx`, with the batch they came from.
fn frozen(
    model: &PalModel,
    set: &ComparisonSet,
    idx: &[usize],
    user_of: &dyn Fn(u32) -> u32,
) -> Result<(super::data::Batch, Features)> {
    let batch = model.gather(set, idx, user_of)?;
    let f = without_grad(|| model.features(&batch, None))?;
    let feats = Features {
        fx: f.fx.detach(),
        g: f.g.map(|g| g.detach()),
    };
    Ok((batch, feats))
}

/// `map` or `mle` logits of `n_users` users from the comparisons `idx` (`user_of` maps a set
/// user to one of them): full-batch AdamW for `steps` steps.
#[allow(clippy::too_many_arguments)]
fn fit_gd(
    model: &PalModel,
    set: &ComparisonSet,
    idx: &[usize],
    user_of: &dyn Fn(u32) -> u32,
    n_users: usize,
    est: Estimator,
    prior: &Prior,
    cfg: &FewShotConfig,
    steps: usize,
) -> Result<Vec<Vec<f64>>> {
    let k = model.cfg.k;
    let (dev, dt) = (&model.device, model.dtype);
    let init: Vec<f64> = match est {
        Estimator::Mle => vec![0.0; k],
        _ => prior.centre.clone(),
    };
    if idx.is_empty() || n_users == 0 {
        return Ok(vec![init; n_users]);
    }
    let (batch, feats) = frozen(model, set, idx, user_of)?;
    let users = Tensor::new(batch.users.as_slice(), dev)?;
    let flat: Vec<f64> = (0..n_users).flat_map(|_| init.iter().copied()).collect();
    let logits = Var::from_tensor(&Tensor::from_vec(flat, (n_users, k), dev)?.to_dtype(dt)?)?;
    let centre = Tensor::from_vec(prior.centre.clone(), (1, k), dev)?.to_dtype(dt)?;
    let prec: Vec<f64> = prior
        .sd
        .iter()
        .map(|s| 1.0 / (cfg.prior_scale * s).powi(2))
        .collect();
    let prec = Tensor::from_vec(prec, (1, k), dev)?.to_dtype(dt)?;
    // Each user's part of the objective is scaled by their own weights only (see
    // `loss::UserScale`): the users' rows are independent, and one user's huge weights must
    // not shrink another's gradients below AdamW's ε.
    let owner = owners(&batch)?;
    let scale = loss::UserScale::new(&batch.weights, &owner, n_users, &centre)?;
    let mle_coef = match loss::user_mean_coefs(&batch.weights, &owner, n_users) {
        Some(a) => Some(Tensor::new(a.as_slice(), dev)?.to_dtype(dt)?),
        None => None,
    };
    let mut opt = AdamW::new();
    opt.add_rows(logits.clone(), cfg.lr, 0.0)?;
    let all_rows: Vec<u32> = (0..n_users as u32).collect();
    for _ in 0..steps {
        let l = logits.as_tensor();
        // The model's parameters are frozen here: only the logits (not a `param`) track.
        let (m, penalty) = without_grad(|| {
            let w = model.train_mixture(&l.index_select(&users, 0)?)?;
            model.margins_from(&feats, &batch, &w, None)
        })?;
        let per = loss::per_comparison(model.cfg.loss, &loss::agreement(&m, &batch.y)?)?;
        let obj = match est {
            // The original objective: the mean loss (with unequal weights, each user's
            // weighted mean Σ w·ℓ / Σ w weighed by their share of the comparisons, see
            // `loss::user_mean_coefs`), and the norm-bound penalty.
            Estimator::Mle => {
                let mean = match &mle_coef {
                    None => per.mean_all()?,
                    Some(a) => per.mul(a)?.sum_all()?,
                };
                match penalty {
                    Some(p) => (mean + p)?,
                    None => mean,
                }
            }
            // −Σ w·log p(shot | W) − log p(W): summed, so each shot counts for what it is
            // worth (weight w: as w copies of it); each user's shots and prior row divided by
            // their own c_u so that huge weights cannot overflow.
            _ => {
                let d = l.broadcast_sub(&centre)?;
                let sq = d.sqr()?.broadcast_mul(&prec)?;
                let pr = (scale.per_user(&sq)? * 0.5)?;
                (scale.sum(&per)? + pr)?
            }
        };
        let grads = obj.backward()?;
        opt.step(&grads, &all_rows)?;
    }
    Ok(logits.as_tensor().to_dtype(DType::F64)?.to_vec2::<f64>()?)
}

/// Prior draws of the importance sampler, in w-space.
struct Draws {
    /// One mixture per draw.
    w: Vec<Vec<f64>>,
    /// Per draw, the model row of the seen user whose atom it blurs (`empirical`); `None` for
    /// the Gaussian prior's draws.
    atom: Vec<Option<u32>>,
    /// Per draw, its prior mass (they sum to 1).
    mass: Vec<f64>,
}

/// `posterior`'s draws: the Gaussian prior, re-centred so that their mean in w-space is w̄.
fn gaussian_draws(prior: &Prior, cfg: &FewShotConfig, k: usize, t: f64) -> Draws {
    let m = cfg.samples;
    let mut r = rng(cfg.seed, stream::POSTERIOR);
    let eps: Vec<Vec<f64>> = (0..m)
        .map(|_| {
            (0..k)
                .map(|_| {
                    let x: f64 = StandardNormal.sample(&mut r);
                    x
                })
                .collect()
        })
        .collect();
    let uniform = vec![1.0 / m as f64; m];
    let mut centre = prior.centre.clone();
    let draw = |c: &[f64]| -> Vec<Vec<f64>> {
        eps.iter()
            .map(|e| {
                let l: Vec<f64> = (0..k)
                    .map(|j| c[j] + cfg.prior_scale * prior.sd[j] * e[j])
                    .collect();
                softmax(&l, t)
            })
            .collect()
    };
    let mut draws = draw(&centre);
    for _ in 0..100 {
        let base = weighted(&draws, &uniform, k);
        let gap = base
            .iter()
            .zip(&prior.zero)
            .map(|(b, z)| (b - z).abs())
            .fold(0.0, f64::max);
        if gap < 1e-9 {
            break;
        }
        for j in 0..k {
            centre[j] += t * (prior.zero[j].max(W_FLOOR).ln() - base[j].max(W_FLOOR).ln());
        }
        draws = draw(&centre);
    }
    Draws {
        atom: vec![None; m],
        mass: uniform,
        w: draws,
    }
}

/// `empirical`'s draws: per seen user (a seeded `cfg.samples` of them when there are more),
/// ⌈samples / users⌉ draws of their logits plus a Gaussian blur of `prior_scale` ×
/// [`EMPIRICAL_BLUR`] × the prior's spread, together holding 1 − [`EMPIRICAL_SMOOTH`] of the
/// mass; then the `posterior` draws at scale 1 with the rest. With no seen user there is
/// nothing to be empirical about: the Gaussian prior's draws alone.
fn empirical_draws(prior: &Prior, cfg: &FewShotConfig, k: usize, t: f64) -> Draws {
    let smooth = gaussian_draws(
        prior,
        &FewShotConfig {
            prior_scale: 1.0,
            ..cfg.clone()
        },
        k,
        t,
    );
    if prior.rows.is_empty() {
        return smooth;
    }
    let mut r = rng(cfg.seed, stream::EMPIRICAL);
    let mut atoms: Vec<usize> = (0..prior.rows.len()).collect();
    if atoms.len() > cfg.samples {
        atoms.shuffle(&mut r);
        atoms.truncate(cfg.samples);
        atoms.sort_unstable();
    }
    let per = cfg.samples.div_ceil(atoms.len());
    let blur: Vec<f64> = prior
        .sd
        .iter()
        .map(|s| cfg.prior_scale * EMPIRICAL_BLUR * s)
        .collect();
    let n_atoms = atoms.len() * per;
    let mut out = Draws {
        w: Vec::with_capacity(n_atoms + smooth.w.len()),
        atom: Vec::with_capacity(n_atoms + smooth.w.len()),
        mass: Vec::with_capacity(n_atoms + smooth.w.len()),
    };
    for &a in &atoms {
        for _ in 0..per {
            let l: Vec<f64> = (0..k)
                .map(|j| {
                    let x: f64 = StandardNormal.sample(&mut r);
                    prior.rows[a][j] + blur[j] * x
                })
                .collect();
            out.w.push(softmax(&l, t));
            out.atom.push(Some(a as u32));
            out.mass.push((1.0 - EMPIRICAL_SMOOTH) / n_atoms as f64);
        }
    }
    out.w.extend(smooth.w);
    out.atom.extend(smooth.atom);
    out.mass
        .extend(smooth.mass.iter().map(|p| EMPIRICAL_SMOOTH * p));
    out
}

/// Log-likelihood of each user's first N shots (for every N of `ns`) under each mixture of
/// `ws`: `[ns][user][mixture]`, the negative of the model's loss per comparison times the
/// comparison's weight, summed in f64 (a user with fewer than N shots counts all of theirs).
pub(super) fn shot_loglik(
    model: &PalModel,
    set: &ComparisonSet,
    shots: &[Vec<usize>],
    ns: &[usize],
    user_of: &dyn Fn(u32) -> u32,
    ws: &[Vec<f64>],
) -> Result<Vec<Vec<Vec<f64>>>> {
    let n_users = shots.len();
    let m = ws.len();
    let maxn = ns.iter().copied().max().unwrap_or(0);
    let mut idx = Vec::new();
    let mut owner = Vec::new();
    for (u, s) in shots.iter().enumerate() {
        for &c in s.iter().take(maxn) {
            idx.push(c);
            owner.push(u);
        }
    }
    let mut ll = vec![vec![vec![0f64; m]; n_users]; ns.len()];
    if !idx.is_empty() {
        margins_under_each(model, set, &idx, user_of, ws, &mut |j, batch, mg| {
            let per = loss::per_comparison(model.cfg.loss, &loss::agreement(mg, &batch.y)?)?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?;
            let mut run = vec![0f64; n_users];
            let mut count = vec![0usize; n_users];
            for (c, &u) in owner.iter().enumerate() {
                // A shot of weight w counts as w copies of it (1.0·ℓ is ℓ exactly).
                run[u] -= f64::from(batch.weights[c]) * per[c];
                count[u] += 1;
                for (ni, &n) in ns.iter().enumerate() {
                    if count[u] == n {
                        ll[ni][u][j] = run[u];
                    }
                }
            }
            for (ni, &n) in ns.iter().enumerate() {
                for u in 0..n_users {
                    if count[u] < n {
                        ll[ni][u][j] = run[u];
                    }
                }
            }
            Ok(())
        })?;
    }
    Ok(ll)
}

/// Calls `each(j, batch, margins)` with the margins `[B]` of the comparisons `idx` (the batch
/// in `idx` order) under mixture j of `ws`, every user of the batch on it, one mixture at a
/// time; the frozen features are computed once.
pub(super) fn margins_under_each(
    model: &PalModel,
    set: &ComparisonSet,
    idx: &[usize],
    user_of: &dyn Fn(u32) -> u32,
    ws: &[Vec<f64>],
    each: &mut dyn FnMut(usize, &super::data::Batch, &Tensor) -> Result<()>,
) -> Result<()> {
    let k = model.cfg.k;
    let (batch, feats) = frozen(model, set, idx, user_of)?;
    let uu = batch.users.len();
    for (j, w) in ws.iter().enumerate() {
        let flat: Vec<f64> = (0..uu).flat_map(|_| w.iter().copied()).collect();
        let wt = Tensor::from_vec(flat, (uu, k), &model.device)?.to_dtype(model.dtype)?;
        let (mg, _) = without_grad(|| model.margins_from(&feats, &batch, &wt, None))?;
        each(j, &batch, &mg)?;
    }
    Ok(())
}

/// Importance-sampled posterior means (`posterior`, `empirical`) for every N of `ns` at once:
/// each user's first N shots weigh the same prior `draws`. `own` gives a local user's model
/// row when they are a seen user (the simulation): their own atom is then left out of their
/// prior. Returns `[ns][user][K]` logits.
#[allow(clippy::too_many_arguments)]
fn importance_curve(
    model: &PalModel,
    set: &ComparisonSet,
    shots: &[Vec<usize>],
    ns: &[usize],
    user_of: &dyn Fn(u32) -> u32,
    own: &dyn Fn(usize) -> Option<u32>,
    draws: &Draws,
    zero: &[f64],
) -> Result<Vec<Vec<Vec<f64>>>> {
    let k = model.cfg.k;
    let t = model.cfg.temperature;
    let n_users = shots.len();
    let m = draws.w.len();
    let ll = shot_loglik(model, set, shots, ns, user_of, &draws.w)?;

    // Per user, the draws in their prior (all but their own atom's, when they have one).
    let kept: Vec<Vec<bool>> = (0..n_users)
        .map(|u| {
            let mine = own(u);
            let keep: Vec<bool> = draws
                .atom
                .iter()
                .map(|a| mine.is_none() || *a != mine)
                .collect();
            if keep.iter().any(|&x| x) {
                keep
            } else {
                vec![true; m]
            }
        })
        .collect();

    // ŵ = w̄ + Σ_j ω_j·w_j − Σ_j π_j·w_j (π: the prior mass over this user's draws,
    // renormalised when their own atom is left out): the posterior mean, shifted by the
    // draws' own sampling error so that no evidence gives w̄ exactly; floored and
    // renormalised only when a weight falls short.
    let bases: Vec<Vec<f64>> = kept
        .iter()
        .map(|keep| {
            let mass: Vec<f64> = draws
                .mass
                .iter()
                .zip(keep)
                .map(|(&p, &k)| if k { p } else { 0.0 })
                .collect();
            let total: f64 = mass.iter().sum();
            let mass: Vec<f64> = mass.iter().map(|p| p / total).collect();
            weighted(&draws.w, &mass, k)
        })
        .collect();
    let mut out = Vec::with_capacity(ns.len());
    for per_n in &ll {
        let mut rows = Vec::with_capacity(n_users);
        for (u, lw) in per_n.iter().enumerate() {
            // log(π_j) + log-likelihood, over the draws in this user's prior.
            let lp: Vec<f64> = lw
                .iter()
                .zip(&draws.mass)
                .zip(&kept[u])
                .map(
                    |((&x, &p), &keep)| {
                        if keep {
                            x + p.ln()
                        } else {
                            f64::NEG_INFINITY
                        }
                    },
                )
                .collect();
            let mx = lp.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
            let e: Vec<f64> = lp.iter().map(|&x| (x - mx).exp()).collect();
            let s: f64 = e.iter().sum();
            let omega: Vec<f64> = e.iter().map(|x| x / s).collect();
            let post = weighted(&draws.w, &omega, k);
            let base = &bases[u];
            let mut w: Vec<f64> = (0..k).map(|j| zero[j] + post[j] - base[j]).collect();
            if w.iter().any(|&x| x < W_FLOOR) {
                w.iter_mut().for_each(|x| *x = x.max(W_FLOOR));
                let s: f64 = w.iter().sum();
                w.iter_mut().for_each(|x| *x /= s);
            }
            rows.push(w.iter().map(|x| t * x.ln()).collect());
        }
        out.push(rows);
    }
    Ok(out)
}

/// The importance sampler's draws for `est` (`posterior` or `empirical`).
fn draws_for(model: &PalModel, est: Estimator, prior: &Prior, cfg: &FewShotConfig) -> Draws {
    let (k, t) = (model.cfg.k, model.cfg.temperature);
    match est {
        Estimator::Empirical | Estimator::Offset => empirical_draws(prior, cfg, k, t),
        _ => gaussian_draws(prior, cfg, k, t),
    }
}

/// Logits per N of `ns` (`[ns][user][K]`) for users whose shots, in order, are `shots`
/// (`own`: a local user's model row when they are a seen user, see [`importance_curve`]).
/// For `offset`, the logits of its mixture part (`empirical`); see [`fit_offsets`].
#[allow(clippy::too_many_arguments)]
pub(super) fn fit_curve(
    model: &PalModel,
    set: &ComparisonSet,
    shots: &[Vec<usize>],
    ns: &[usize],
    user_of: &dyn Fn(u32) -> u32,
    own: &dyn Fn(usize) -> Option<u32>,
    est: Estimator,
    prior: &Prior,
    cfg: &FewShotConfig,
) -> Result<Vec<Vec<Vec<f64>>>> {
    if matches!(
        est,
        Estimator::Posterior | Estimator::Empirical | Estimator::Offset
    ) {
        let draws = draws_for(model, est, prior, cfg);
        return importance_curve(model, set, shots, ns, user_of, own, &draws, &prior.zero);
    }
    let mut out = Vec::with_capacity(ns.len());
    for &n in ns {
        if n == 0 {
            out.push(vec![prior.centre.clone(); shots.len()]);
            continue;
        }
        let idx = first_shots(shots, n);
        out.push(fit_gd(
            model,
            set,
            &idx,
            user_of,
            shots.len(),
            est,
            prior,
            cfg,
            cfg.steps,
        )?);
    }
    Ok(out)
}

/// Every user's first `n` shots (all of them when they have fewer), sorted.
fn first_shots(shots: &[Vec<usize>], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = shots
        .iter()
        .flat_map(|s| s.iter().take(n))
        .copied()
        .collect();
    idx.sort_unstable();
    idx
}

/// Each comparison's user of `batch`, as the row of the fitted table (`0..n_users`).
fn owners(batch: &super::data::Batch) -> Result<Vec<u32>> {
    let slot = batch.user.to_vec1::<u32>()?;
    Ok(slot.iter().map(|&b| batch.users[b as usize]).collect())
}

/// The prototypes' root-mean-square norm ρ in the space where a user's ideal point lives:
/// PAL-B the g_k(x_c) of the batch's prompts (the g_k vectors without context), PAL-A the
/// points P_k. `offset`'s penalty is on δ/ρ, so its λ does not depend on that scale.
fn prototype_rms(model: &PalModel, feats: &Features) -> Result<f64> {
    let sq = match (&feats.g, &model.protos) {
        (Some(g), _) => g.sqr()?.sum(candle_core::D::Minus1)?.mean_all()?,
        (None, super::model::Prototypes::Points(p)) => p
            .as_tensor()
            .sqr()?
            .sum(candle_core::D::Minus1)?
            .mean_all()?,
        (None, _) => unreachable!("PAL-B features carry g"),
    };
    let v = sq.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok(v.sqrt().max(1e-6))
}

/// `offset`'s offsets δ per N of `ns` (`[ns][user][D]`, D = [`PalModel::offset_dim`]) for
/// users whose shots, in order, are `shots`, on top of their mixture logits `mix`
/// (`[ns][user][K]`, from [`fit_curve`]), the mixture held fixed. δ = ρ·e (ρ from
/// [`prototype_rms`]), e from 0 by `cfg.steps` full-batch AdamW steps (learning rate `cfg.lr`
/// lowered linearly to 0 over the steps, so that the fit settles on the optimum instead of
/// jittering about it by the rate, which a strong ridge would otherwise not hold at 0) on
/// Σ w·ℓ(first N shots) + (λ/2)·Σ_u ‖e_u‖², λ = `cfg.ridge`: the shots' weighted negative
/// log-likelihood (a shot of weight w counts as w copies, as for `map`) and a Gaussian prior
/// on δ, each user's part divided by their own c_u (`loss::UserScale`). N = 0, or λ = ∞, give
/// δ = 0 without a fit, so the estimate is the mixture's exactly.
#[allow(clippy::too_many_arguments)]
pub(super) fn fit_offsets(
    model: &PalModel,
    set: &ComparisonSet,
    shots: &[Vec<usize>],
    ns: &[usize],
    user_of: &dyn Fn(u32) -> u32,
    mix: &[Vec<Vec<f64>>],
    cfg: &FewShotConfig,
) -> Result<Vec<Vec<Vec<f64>>>> {
    let dim = model.offset_dim();
    let (dev, dt) = (&model.device, model.dtype);
    let n_users = shots.len();
    let mut out = Vec::with_capacity(ns.len());
    for (&n, rows) in ns.iter().zip(mix) {
        if n == 0 || cfg.ridge.is_infinite() || n_users == 0 {
            out.push(vec![vec![0.0; dim]; n_users]);
            continue;
        }
        let idx = first_shots(shots, n);
        let (batch, feats) = frozen(model, set, &idx, user_of)?;
        let rho = prototype_rms(model, &feats)?;
        let users = Tensor::new(batch.users.as_slice(), dev)?;
        let table = model.eval_mixture(&rows_tensor(model, rows)?)?.detach();
        let w = table.index_select(&users, 0)?;
        let e = Var::from_tensor(&Tensor::zeros((n_users, dim), dt, dev)?)?;
        let owner = owners(&batch)?;
        let scale = loss::UserScale::new(&batch.weights, &owner, n_users, e.as_tensor())?;
        let mut opt = AdamW::new();
        opt.add_rows(e.clone(), cfg.lr, 0.0)?;
        let all_rows: Vec<u32> = (0..n_users as u32).collect();
        for step in 0..cfg.steps {
            opt.set_lr(cfg.lr * (1.0 - step as f64 / cfg.steps as f64));
            let et = e.as_tensor();
            let delta = (et.index_select(&users, 0)? * rho)?;
            // Frozen parameters: only δ tracks.
            let (m, _) =
                without_grad(|| model.margins_offset(&feats, &batch, &w, Some(&delta), None))?;
            let per = loss::per_comparison(model.cfg.loss, &loss::agreement(&m, &batch.y)?)?;
            // Each user's shots and ridge term divided by their own c_u (`loss::UserScale`).
            let sum = scale.sum(&per)?;
            let pen = (scale.per_user(&et.sqr()?)? * (0.5 * cfg.ridge))?;
            let grads = (sum + pen)?.backward()?;
            opt.step(&grads, &all_rows)?;
        }
        let e = e.as_tensor().to_dtype(DType::F64)?.to_vec2::<f64>()?;
        out.push(
            e.into_iter()
                .map(|r| r.into_iter().map(|x| x * rho).collect())
                .collect(),
        );
    }
    Ok(out)
}

/// One new user's logits, and for `offset` their offset δ (module doc of [`fit_new_user`]).
pub(super) fn fit_one_user(
    model: &PalModel,
    comparisons: &ComparisonSet,
    cfg: &FewShotConfig,
) -> Result<(Vec<f64>, Option<Vec<f64>>)> {
    fit_user(model, comparisons, cfg, true)
}

/// [`fit_one_user`], fitting `offset`'s δ only when `with_offset` ([`fit_new_user`] returns
/// the mixture alone, so it skips that fit).
fn fit_user(
    model: &PalModel,
    comparisons: &ComparisonSet,
    cfg: &FewShotConfig,
    with_offset: bool,
) -> Result<(Vec<f64>, Option<Vec<f64>>)> {
    cfg.validate()?;
    // No comparison at all is allowed here: the answer is the prior's (see above).
    if !comparisons.comps.is_empty() {
        comparisons.validate()?;
    }
    model.check_dims(comparisons)?;
    let est = resolve(cfg.estimator);
    let prior = Prior::of(model)?;
    let all: Vec<usize> = (0..comparisons.comps.len()).collect();
    let row = match est {
        Estimator::Posterior | Estimator::Empirical | Estimator::Offset => importance_curve(
            model,
            comparisons,
            std::slice::from_ref(&all),
            &[all.len()],
            &|_| 0,
            &|_| None,
            &draws_for(model, est, &prior, cfg),
            &prior.zero,
        )?
        .remove(0)
        .remove(0),
        _ => fit_gd(
            model,
            comparisons,
            &all,
            &|_| 0,
            1,
            est,
            &prior,
            cfg,
            cfg.steps,
        )?
        .remove(0),
    };
    let offset = if with_offset && est == Estimator::Offset {
        let mix = vec![vec![row.clone()]];
        Some(
            fit_offsets(
                model,
                comparisons,
                std::slice::from_ref(&all),
                &[all.len()],
                &|_| 0,
                &mix,
                cfg,
            )?
            .remove(0)
            .remove(0),
        )
    } else {
        None
    };
    Ok((row, offset))
}

/// Fits ONE new user's K logits from `comparisons` (all of them belong to that user, whatever
/// their user rows say) with `cfg.estimator` (`auto` is `empirical`) and `cfg.prior_scale`; the shared
/// parts of `model` stay frozen. With no comparison, `map` and `posterior` return T·ln w̄, the
/// zero-shot mixture's logits, and `mle` the uniform mixture's zeros. Each comparison counts
/// by its weight (module doc, "Weights"). `offset` returns its mixture part only (the
/// `empirical` logits; enrolment, which keeps δ too, calls [`super::fit_enrolled_user`]). The
/// result can be given to [`PalModel::add_users`].
pub fn fit_new_user(
    model: &PalModel,
    comparisons: &ComparisonSet,
    cfg: &FewShotConfig,
) -> Result<Vec<f32>> {
    let (row, _) = fit_user(model, comparisons, cfg, false)?;
    Ok(row.into_iter().map(|x| x as f32).collect())
}

// ---------------------------------------------------------------------------------------------
// Protocol
// ---------------------------------------------------------------------------------------------

/// Each user's queries and shots.
pub(super) struct Split {
    /// Set user row → local row (`u32::MAX`: not scored).
    pub(super) local: Vec<u32>,
    pub(super) user_ids: Vec<String>,
    pub(super) excluded: Vec<String>,
    /// All users' queries, sorted.
    pub(super) queries: Vec<usize>,
    /// Per local user, the shots in order (prefixes are the shots for each N).
    pub(super) shots: Vec<Vec<usize>>,
    /// Per local user, every comparison (queries and shots).
    pub(super) all: Vec<Vec<usize>>,
}

impl Split {
    /// The queries, in `queries` order, with their users' local rows.
    pub(super) fn query_comps(&self, set: &ComparisonSet) -> Vec<Comparison> {
        self.queries
            .iter()
            .map(|&i| Comparison {
                user: self.local[set.comps[i].user as usize],
                ..set.comps[i]
            })
            .collect()
    }
}

/// Each user's fixed queries and ordered shots under the protocol (module doc); `stream_id`
/// [`stream::FEW_SHOT`] for new users (see [`new_user_split`]), [`stream::SIMULATE`] for the
/// simulation on seen users.
fn split_users(set: &ComparisonSet, maxn: usize, cfg: &FewShotConfig, stream_id: u64) -> Split {
    let mut r = rng(cfg.seed, stream_id);
    let mut sp = Split {
        local: vec![u32::MAX; set.n_users()],
        user_ids: Vec::new(),
        excluded: Vec::new(),
        queries: Vec::new(),
        shots: Vec::new(),
        all: Vec::new(),
    };
    for (u, mut idx) in set.by_user().into_iter().enumerate() {
        if idx.is_empty() {
            continue;
        }
        let (queries, shots) = match cfg.queries_by {
            QueriesBy::Pair => {
                let q = ((cfg.query_frac * idx.len() as f64).ceil() as usize).max(cfg.min_queries);
                if idx.len() < q.saturating_add(maxn) {
                    sp.excluded.push(set.user_ids[u].clone());
                    continue;
                }
                idx.shuffle(&mut r);
                (idx[..q].to_vec(), idx[q..].to_vec())
            }
            QueriesBy::Item => {
                let (queries, shots) = split_by_item(set, &idx, cfg.query_frac, &mut r);
                if queries.len() < cfg.min_queries.max(1) || shots.len() < maxn {
                    sp.excluded.push(set.user_ids[u].clone());
                    continue;
                }
                (queries, shots)
            }
        };
        sp.local[u] = sp.user_ids.len() as u32;
        sp.user_ids.push(set.user_ids[u].clone());
        sp.queries.extend_from_slice(&queries);
        sp.shots.push(shots);
        idx.sort_unstable();
        sp.all.push(idx);
    }
    sp.queries.sort_unstable();
    sp
}

/// One user's comparisons `idx` (in set order) split by item: a seeded ⌈`query_frac` · n⌉ of
/// the n items they compared are query items; the queries are the comparisons of two query
/// items (in set order), the shots those of two other items (shuffled), and the rest neither.
fn split_by_item(
    set: &ComparisonSet,
    idx: &[usize],
    query_frac: f64,
    r: &mut impl rand::Rng,
) -> (Vec<usize>, Vec<usize>) {
    let mut items: Vec<u32> = (idx.iter())
        .flat_map(|&i| [set.comps[i].left, set.comps[i].right])
        .collect();
    items.sort_unstable();
    items.dedup();
    items.shuffle(r);
    let n_query = ((query_frac * items.len() as f64).ceil() as usize).min(items.len());
    let query_items: std::collections::HashSet<u32> = items[..n_query].iter().copied().collect();
    let (mut queries, mut shots) = (Vec::new(), Vec::new());
    for &i in idx {
        let c = &set.comps[i];
        match (
            query_items.contains(&c.left),
            query_items.contains(&c.right),
        ) {
            (true, true) => queries.push(i),
            (false, false) => shots.push(i),
            _ => {}
        }
    }
    shots.shuffle(r);
    (queries, shots)
}

/// Scores the queries with mixture rows `table` (`row_of`: set user → row) and, for
/// `offset`, the offset rows `offsets` (same rows), reporting users as known or not. Queries
/// count once each, whatever their weight: the accuracy of seen users (`evaluate`) does not
/// weigh comparisons either.
#[allow(clippy::too_many_arguments)]
pub(super) fn score(
    model: &PalModel,
    set: &ComparisonSet,
    sp: &Split,
    table: &Tensor,
    offsets: Option<&Tensor>,
    row_of: &dyn Fn(u32) -> u32,
    known: bool,
    opts: &EvalOptions,
) -> Result<EvalReport> {
    let n = sp.user_ids.len();
    let margins = model.margins_with_offsets(set, table, offsets, row_of, sp.queries.clone())?;
    let comps = sp.query_comps(set);
    let mixtures = if model.cfg.k > 1 {
        let t = table.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        Some(if t.len() == n {
            t
        } else {
            vec![t[0].clone(); n]
        })
    } else {
        None
    };
    Ok(report_from_margins(
        &sp.user_ids,
        &comps,
        &margins,
        &vec![known; n],
        mixtures.as_deref(),
        opts,
    ))
}

fn rows_tensor(model: &PalModel, rows: &[Vec<f64>]) -> Result<Tensor> {
    let k = rows.first().map_or(model.cfg.k, |r| r.len());
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (rows.len(), k), &model.device)?.to_dtype(model.dtype)?)
}

/// Scores the queries of `sp` with each local user's logits `rows` and, when given, offsets.
#[allow(clippy::too_many_arguments)]
pub(super) fn score_fit(
    model: &PalModel,
    set: &ComparisonSet,
    sp: &Split,
    rows: &[Vec<f64>],
    offsets: Option<&[Vec<f64>]>,
    row_of: &dyn Fn(u32) -> u32,
    opts: &EvalOptions,
) -> Result<EvalReport> {
    let table = model.eval_mixture(&rows_tensor(model, rows)?)?.detach();
    let off = match offsets {
        Some(o) => Some(rows_tensor(model, o)?),
        None => None,
    };
    score(model, set, sp, &table, off.as_ref(), row_of, true, opts)
}

/// The zero-shot row of the mixture table, `[1, K]`.
pub(super) fn zero_table(model: &PalModel) -> Result<Tensor> {
    let t = model.mixture_table()?;
    let last = Tensor::new(&[t.dim(0)? as u32 - 1], &model.device)?;
    Ok(t.index_select(&last, 0)?)
}

/// Checks `set` and `ns` against `model` and splits the users of `set` into fixed queries and
/// ordered shots as new users (the split every check of new users shares); a data error when
/// no user has enough comparisons for the largest N.
pub(super) fn new_user_split(
    model: &PalModel,
    set: &ComparisonSet,
    ns: &[usize],
    cfg: &FewShotConfig,
) -> Result<Split> {
    cfg.validate()?;
    set.validate()?;
    model.check_dims(set)?;
    let maxn = ns.iter().copied().max().ok_or_else(|| {
        PalError::config(
            "shots",
            "is empty, give at least one shot count (0 is zero-shot)",
        )
    })?;
    let sp = split_users(set, maxn, cfg, stream::FEW_SHOT);
    if sp.user_ids.is_empty() && cfg.queries_by == QueriesBy::Item {
        return Err(PalError::Data(format!(
            "no user has at least {} queries and {maxn} shots once {} of the items they compared are query items (queries drawn by item leave the comparisons across query and other items unused), so none can be adapted and scored\nhint: lower the largest shot count (--shots) or min_queries (--min-queries), or draw queries by pair (queries_by: pair, the default)",
            cfg.min_queries.max(1), cfg.query_frac
        )));
    }
    if sp.user_ids.is_empty() {
        return Err(PalError::Data(format!(
            "no user has enough comparisons for {} of queries (at least {}) plus {maxn} shots, so none can be adapted and scored\nhint: lower the largest shot count (--shots), query_frac (--query-frac) or min_queries (--min-queries)",
            cfg.query_frac, cfg.min_queries
        )));
    }
    Ok(sp)
}

/// Adapts every user of `set` (all treated as new users, whatever their ids) for every N of
/// `ns` under the fixed-query protocol (module doc), with `cfg.estimator` (`auto` is `empirical`).
pub fn few_shot_curve(
    model: &PalModel,
    set: &ComparisonSet,
    ns: &[usize],
    cfg: &FewShotConfig,
    opts: &EvalOptions,
) -> Result<FewShotCurve> {
    let sp = new_user_split(model, set, ns, cfg)?;
    let est = resolve(cfg.estimator);
    let prior = Prior::of(model)?;
    let local = sp.local.clone();
    let row_of = move |u: u32| local[u as usize];

    let zero_shot = score(
        model,
        set,
        &sp,
        &zero_table(model)?,
        None,
        &|_| 0,
        false,
        opts,
    )?;
    let fits = fit_curve(
        model,
        set,
        &sp.shots,
        ns,
        &row_of,
        &|_| None,
        est,
        &prior,
        cfg,
    )?;
    let with_offset = est == Estimator::Offset && cfg.ridge.is_finite();
    let offs = if with_offset {
        Some(fit_offsets(model, set, &sp.shots, ns, &row_of, &fits, cfg)?)
    } else {
        None
    };
    let mut points = Vec::with_capacity(ns.len());
    for (i, (&n, rows)) in ns.iter().zip(&fits).enumerate() {
        let off = offs.as_ref().map(|o| o[i].as_slice());
        let adapted = if n == 0 {
            zero_shot.clone()
        } else {
            score_fit(model, set, &sp, rows, off, &row_of, opts)?
        };
        points.push(FewShotPoint {
            shots: n,
            adapted,
            logits: rows.iter().flatten().map(|&x| x as f32).collect(),
            offsets: off
                .map(|o| o.iter().flatten().map(|&x| x as f32).collect())
                .unwrap_or_default(),
        });
    }

    // Maximum likelihood on `per_user`'s comparisons of each user, scored on the queries.
    let oracle_on = |per_user: &[Vec<usize>]| -> Result<EvalReport> {
        let mut idx: Vec<usize> = per_user.iter().flatten().copied().collect();
        idx.sort_unstable();
        let rows = fit_gd(
            model,
            set,
            &idx,
            &row_of,
            sp.user_ids.len(),
            Estimator::Mle,
            &prior,
            cfg,
            cfg.steps.max(ORACLE_MIN_STEPS),
        )?;
        score_fit(model, set, &sp, &rows, None, &row_of, opts)
    };
    // The oracle: every comparison of the user, queries included (in-sample, optimistic).
    let oracle = oracle_on(&sp.all)?;
    // The held-out oracle: all of the user's shots (every comparison but the queries; by item,
    // also but those across), i.e. the most shots the protocol could give.
    let heldout_oracle = oracle_on(&sp.shots)?;
    // The estimator itself on the same comparisons (all of each user's shots).
    let all_n = [usize::MAX];
    let rows = fit_curve(
        model,
        set,
        &sp.shots,
        &all_n,
        &row_of,
        &|_| None,
        est,
        &prior,
        cfg,
    )?;
    let offs = if with_offset {
        Some(fit_offsets(
            model, set, &sp.shots, &all_n, &row_of, &rows, cfg,
        )?)
    } else {
        None
    };
    let heldout_estimator = score_fit(
        model,
        set,
        &sp,
        &rows[0],
        offs.as_ref().map(|o| o[0].as_slice()),
        &row_of,
        opts,
    )?;

    Ok(FewShotCurve {
        estimator: est,
        prior_scale: cfg.prior_scale,
        ridge: (est == Estimator::Offset).then_some(cfg.ridge),
        user_ids: sp.user_ids.clone(),
        excluded_users: sp.excluded.clone(),
        queries: sp.queries.len(),
        zero_shot,
        points,
        oracle,
        heldout_oracle,
        heldout_estimator,
    })
}

/// Simulated few-shot on SEEN users: the comparisons of `seen` (a split of users the model was
/// trained on, e.g. their validation or training pairs; never new users' data) go through the
/// same protocol as new users, their own logits ignored (and their atom left out of the
/// `empirical` prior), for `mle` and for `map`, `posterior` and `empirical` at several prior
/// scales. Shot counts are those of `ns` above 0, the largest
/// dropped while fewer than 10 users have enough comparisons; at most 100 users (seeded pick).
/// Rows come in a fixed order; see [`choose`] for the pick.
pub fn simulate_seen(
    model: &PalModel,
    seen: &ComparisonSet,
    ns: &[usize],
    cfg: &FewShotConfig,
) -> Result<Vec<SimRow>> {
    cfg.validate()?;
    seen.validate()?;
    model.check_dims(seen)?;
    let mut sim_ns: Vec<usize> = ns.iter().copied().filter(|&n| n > 0).collect();
    sim_ns.sort_unstable();
    sim_ns.dedup();
    let mut sp = loop {
        let maxn = sim_ns.last().copied().unwrap_or(0);
        let sp = split_users(seen, maxn, cfg, stream::SIMULATE);
        if sp.user_ids.len() >= SIM_MIN_USERS || sim_ns.len() <= 1 {
            break sp;
        }
        sim_ns.pop();
    };
    if sim_ns.is_empty() || sp.user_ids.len() < SIM_MIN_USERS {
        return Err(PalError::Data(format!(
            "only {} seen users have enough comparisons to simulate few-shot adaptation (at least {SIM_MIN_USERS} needed)\nhint: simulate on a larger split of seen users, e.g. their training pairs",
            sp.user_ids.len()
        )));
    }
    if sp.user_ids.len() > SIM_MAX_USERS {
        // Keep a seeded subset of users: drop the others from the split.
        let mut keep: Vec<usize> = (0..sp.user_ids.len()).collect();
        keep.shuffle(&mut rng(cfg.seed, stream::SIMULATE + 100));
        keep.truncate(SIM_MAX_USERS);
        keep.sort_unstable();
        let mut new_local = vec![u32::MAX; sp.local.len()];
        let old_to_new: std::collections::HashMap<u32, u32> = keep
            .iter()
            .enumerate()
            .map(|(new, &old)| (old as u32, new as u32))
            .collect();
        for (u, l) in sp.local.iter().enumerate() {
            if let Some(&n) = old_to_new.get(l) {
                new_local[u] = n;
            }
        }
        let kept_queries: Vec<usize> = sp
            .queries
            .iter()
            .copied()
            .filter(|&i| new_local[seen.comps[i].user as usize] != u32::MAX)
            .collect();
        sp = Split {
            local: new_local,
            user_ids: keep.iter().map(|&i| sp.user_ids[i].clone()).collect(),
            excluded: std::mem::take(&mut sp.excluded),
            queries: kept_queries,
            shots: keep.iter().map(|&i| sp.shots[i].clone()).collect(),
            all: keep.iter().map(|&i| sp.all[i].clone()).collect(),
        };
    }
    let prior = Prior::of(model)?;
    let local = sp.local.clone();
    let row_of = move |u: u32| local[u as usize];
    let mut cands = vec![(Estimator::Mle, 1.0)];
    for e in [Estimator::Map, Estimator::Posterior] {
        for s in SIM_SCALES {
            cands.push((e, s));
        }
    }
    for s in SIM_EMPIRICAL_SCALES {
        cands.push((Estimator::Empirical, s));
    }
    // Each simulated user's own model row: their atom leaves their empirical prior.
    let own_rows: Vec<Option<u32>> = sp.user_ids.iter().map(|id| model.user_row(id)).collect();
    let own = |u: usize| own_rows[u];
    let mut out = Vec::with_capacity(cands.len());
    for (est, scale) in cands {
        let c = FewShotConfig {
            estimator: est,
            prior_scale: scale,
            ..cfg.clone()
        };
        let fits = fit_curve(
            model, seen, &sp.shots, &sim_ns, &row_of, &own, est, &prior, &c,
        )?;
        out.push(sim_row(
            model, seen, &sp, &sim_ns, &row_of, &fits, None, &c,
        )?);
    }
    // `offset`: the best `empirical` scale's mixtures, and an offset at each ridge strength.
    if let Some((_, scale, _)) = choose(&out, Estimator::Empirical) {
        let c = FewShotConfig {
            estimator: Estimator::Offset,
            prior_scale: scale,
            ..cfg.clone()
        };
        let fits = fit_curve(
            model,
            seen,
            &sp.shots,
            &sim_ns,
            &row_of,
            &own,
            Estimator::Offset,
            &prior,
            &c,
        )?;
        for ridge in SIM_RIDGES {
            let c = FewShotConfig { ridge, ..c.clone() };
            let offs = fit_offsets(model, seen, &sp.shots, &sim_ns, &row_of, &fits, &c)?;
            out.push(sim_row(
                model,
                seen,
                &sp,
                &sim_ns,
                &row_of,
                &fits,
                Some(offs.as_slice()),
                &c,
            )?);
        }
    }
    Ok(out)
}

/// One row of the simulation: the fits (and offsets) per N scored on the seen users' queries.
#[allow(clippy::too_many_arguments)]
fn sim_row(
    model: &PalModel,
    seen: &ComparisonSet,
    sp: &Split,
    sim_ns: &[usize],
    row_of: &dyn Fn(u32) -> u32,
    fits: &[Vec<Vec<f64>>],
    offs: Option<&[Vec<Vec<f64>>]>,
    c: &FewShotConfig,
) -> Result<SimRow> {
    let opts = EvalOptions::default();
    let mut per_shots = Vec::with_capacity(sim_ns.len());
    for (i, (&n, rows)) in sim_ns.iter().zip(fits).enumerate() {
        let off = offs.map(|o| o[i].as_slice());
        per_shots.push((
            n,
            score_fit(model, seen, sp, rows, off, row_of, &opts)?.accuracy,
        ));
    }
    let accuracy = per_shots.iter().map(|p| p.1).sum::<f64>() / per_shots.len() as f64;
    Ok(SimRow {
        estimator: c.estimator,
        prior_scale: c.prior_scale,
        ridge: (c.estimator == Estimator::Offset).then_some(c.ridge),
        accuracy,
        per_shots,
        users: sp.user_ids.len(),
    })
}

/// The estimator, prior scale and (for `offset`) ridge strength the simulation picks: for
/// `auto`, the best row; for a named estimator, its best row. Ties go to the earlier row (so
/// `offset`, whose rows come last, wins only when strictly better). `None` when no row fits.
pub fn choose(rows: &[SimRow], wanted: Estimator) -> Option<(Estimator, f64, Option<f64>)> {
    rows.iter()
        .filter(|r| wanted == Estimator::Auto || r.estimator == wanted)
        .fold(None::<&SimRow>, |best, r| match best {
            Some(b) if b.accuracy >= r.accuracy => Some(b),
            _ => Some(r),
        })
        .map(|r| (r.estimator, r.prior_scale, r.ridge))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pal::Weight;
    use std::collections::BTreeSet;

    /// Three users comparing pairs of 12 items (every pair once, user u's labels by item
    /// order, flipped for u = 1), and a fourth user with a single comparison.
    fn small_set() -> ComparisonSet {
        let mut comps = Vec::new();
        for u in 0..3u32 {
            for a in 0..12u32 {
                for b in (a + 1)..12 {
                    comps.push(Comparison {
                        user: u,
                        prompt: None,
                        left: a,
                        right: b,
                        y: if u == 1 { 1 } else { -1 },
                        weight: Weight::ONE,
                    });
                }
            }
        }
        comps.push(Comparison {
            user: 3,
            prompt: None,
            left: 0,
            right: 1,
            y: -1,
            weight: Weight::ONE,
        });
        ComparisonSet {
            dx: 1,
            dp: 0,
            items: (0..12).map(|i| i as f32).collect(),
            prompts: Vec::new(),
            user_ids: (0..4).map(|u| format!("u{u}")).collect(),
            comps,
        }
    }

    /// Queries drawn by item: half of a user's items, at least 10 queries.
    fn by_item() -> FewShotConfig {
        FewShotConfig {
            queries_by: QueriesBy::Item,
            query_frac: 0.5,
            min_queries: 10,
            ..FewShotConfig::default()
        }
    }

    #[test]
    fn queries_by_item_keep_every_query_item_out_of_the_shots() {
        let set = small_set();
        let cfg = by_item();
        let sp = split_users(&set, 10, &cfg, stream::FEW_SHOT);
        // u3 has one comparison: too few queries; the others have 66, over 12 items.
        assert_eq!(sp.user_ids, vec!["u0", "u1", "u2"]);
        assert_eq!(sp.excluded, vec!["u3".to_string()]);
        let items = |i: &usize| [set.comps[*i].left, set.comps[*i].right];
        for (local, shots) in sp.shots.iter().enumerate() {
            let queries: Vec<usize> = (sp.queries.iter())
                .copied()
                .filter(|&i| sp.local[set.comps[i].user as usize] == local as u32)
                .collect();
            let q_items: BTreeSet<u32> = queries.iter().flat_map(items).collect();
            let s_items: BTreeSet<u32> = shots.iter().flat_map(items).collect();
            // 6 of the 12 items are query items: 15 comparisons among them, 15 among the other
            // 6 as shots, the 36 across them unused.
            assert_eq!((q_items.len(), s_items.len()), (6, 6), "user {local}");
            assert!(q_items.is_disjoint(&s_items), "user {local}");
            assert_eq!((queries.len(), shots.len()), (15, 15), "user {local}");
            assert_eq!(sp.all[local].len(), 66);
        }
        // By pair (the default), queries and shots share items.
        let by_pair = FewShotConfig {
            queries_by: QueriesBy::Pair,
            ..cfg.clone()
        };
        let sp = split_users(&set, 10, &by_pair, stream::FEW_SHOT);
        let q_items: BTreeSet<u32> = (sp.queries.iter())
            .filter(|&&i| set.comps[i].user == 0)
            .flat_map(items)
            .collect();
        let s_items: BTreeSet<u32> = sp.shots[0].iter().flat_map(items).collect();
        assert!(!q_items.is_disjoint(&s_items));
        assert_eq!(sp.queries.len(), 3 * 33);
    }

    #[test]
    fn queries_by_item_excludes_users_short_of_shots_and_follows_the_seed() {
        let set = small_set();
        let cfg = by_item();
        // 15 shot comparisons a user (see above): 16 shots leave every user out.
        let sp = split_users(&set, 16, &cfg, stream::FEW_SHOT);
        assert!(sp.user_ids.is_empty());
        assert_eq!(sp.excluded, vec!["u0", "u1", "u2", "u3"]);
        // The same seed draws the same split; another seed another one.
        let a = split_users(&set, 15, &cfg, stream::FEW_SHOT);
        let b = split_users(&set, 15, &cfg, stream::FEW_SHOT);
        assert_eq!((&a.queries, &a.shots), (&b.queries, &b.shots));
        assert_eq!(a.user_ids, vec!["u0", "u1", "u2"]);
        let other = FewShotConfig {
            seed: 1,
            ..cfg.clone()
        };
        let c = split_users(&set, 15, &other, stream::FEW_SHOT);
        assert_ne!(a.shots, c.shots);
    }
}
