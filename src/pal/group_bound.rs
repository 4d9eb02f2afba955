//! The known-group bound of few-shot adaptation (issue 14): how well new users could be placed
//! from N shots by a classifier that KNOWS which group every user belongs to (on Persona, the
//! persona each synthetic user follows; `users.group_name` in the store).
//!
//! Owns: [`group_bound`]. Per group q, the seen users of q and their fitted mixtures w_u; the
//! group's mixture w̄_q is their mean. A new user's posterior over groups after N shots is
//! π_q ∝ Σ_{u ∈ q} p(shots | w_u) (the prior ∝ the group's seen users, each seen user's own
//! fitted mixture weighing the shots, the likelihood the model's own loss as in the
//! estimators). The user's fixed queries are then scored (a) with the posterior-weighted group
//! mixture Σ_q π_q w̄_q, (b) with the mixture of the most probable group, and (c), once, with
//! the mixture of the user's TRUE group: the ceiling of knowing the persona. The queries and
//! the shots for every N are exactly those of [`super::few_shot_curve`] with the same
//! configuration (the same seeded split), so the numbers sit beside its curve.
//!
//! It is a diagnostic, not an estimator: it reads the new users' true groups (c), and (a)/(b)
//! read the seen users' groups, which an estimator of a new user never gets. If (a) and (b) fall
//! short of a bar at N shots, N answers do not tell the groups apart well enough for the bar,
//! whatever the estimator. Does not own: the protocol's split (`fewshot.rs`).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::config::FewShotConfig;
use super::data::ComparisonSet;
use super::error::{PalError, Result};
use super::evaluate::{report_from_margins, EvalOptions, EvalReport};
use super::fewshot::{new_user_split, shot_loglik};
use super::model::PalModel;

/// One shot count of the known-group bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupBoundPoint {
    /// N, shots per user.
    pub shots: usize,
    /// The queries scored with the posterior-weighted group mixture Σ_q π_q w̄_q.
    pub posterior: EvalReport,
    /// The queries scored with the most probable group's mixture.
    pub argmax: EvalReport,
    /// Share of the new users whose most probable group is their own.
    pub hit_rate: f64,
}

/// The known-group bound of a set of new users; see the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupBound {
    /// The seen users' groups, sorted.
    pub groups: Vec<String>,
    /// Seen users per group (the prior over groups is proportional to these).
    pub seen_per_group: Vec<usize>,
    /// New users scored, in set order (those of the few-shot curve).
    pub user_ids: Vec<String>,
    /// Query comparisons scored at every N.
    pub queries: usize,
    /// One point per requested N, in the order given.
    pub points: Vec<GroupBoundPoint>,
    /// The queries scored with each new user's own group's mixture.
    pub true_group: EvalReport,
}

/// The known-group bound of the users of `set` for every N of `ns` (module doc). `groups` maps
/// a user id to their group; seen users without one take no part, a new user without one (or
/// whose group no seen user has) is a data error.
pub fn group_bound(
    model: &PalModel,
    set: &ComparisonSet,
    ns: &[usize],
    cfg: &FewShotConfig,
    opts: &EvalOptions,
    groups: &BTreeMap<String, String>,
) -> Result<GroupBound> {
    let sp = new_user_split(model, set, ns, cfg)?;

    // The seen users with a group: their evaluation mixtures, grouped.
    let table = model
        .mixture_table()?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    let mut names: Vec<String> = model
        .user_ids()
        .iter()
        .filter_map(|u| groups.get(u).cloned())
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return Err(PalError::Data(
            "no seen user of the model has a group, so there are no groups to know\nhint: the known-group bound needs users.group_name (e.g. the persona of a Persona user)".into(),
        ));
    }
    let k = model.cfg.k;
    let mut atoms: Vec<Vec<f64>> = Vec::new();
    let mut atom_group: Vec<usize> = Vec::new();
    let mut sums = vec![vec![0.0; k]; names.len()];
    let mut counts = vec![0usize; names.len()];
    for (row, u) in model.user_ids().iter().enumerate() {
        let Some(g) = groups.get(u) else { continue };
        // `names` holds every seen user's group, so the search finds it.
        let q = names.binary_search(g).unwrap_or(0);
        for (s, x) in sums[q].iter_mut().zip(&table[row]) {
            *s += x;
        }
        counts[q] += 1;
        atoms.push(table[row].clone());
        atom_group.push(q);
    }
    let means: Vec<Vec<f64>> = sums
        .iter()
        .zip(&counts)
        .map(|(s, &c)| s.iter().map(|x| x / c as f64).collect())
        .collect();

    let truth: Vec<usize> = sp
        .user_ids
        .iter()
        .map(|u| {
            groups
                .get(u)
                .and_then(|g| names.binary_search(g).ok())
                .ok_or_else(|| {
                    PalError::Data(format!(
                        "new user '{u}' has {}, not one of the seen users' groups ({})\nhint: the known-group bound needs every new user's group in users.group_name",
                        groups
                            .get(u)
                            .map(|g| format!("group '{g}'"))
                            .unwrap_or_else(|| "no group".into()),
                        names.join(", ")
                    ))
                })
        })
        .collect::<Result<_>>()?;

    // The queries' margins under each group's mixture, and the queries as local users'.
    let margins: Vec<Vec<f32>> = means
        .iter()
        .map(|w| {
            let t = Tensor::from_vec(w.clone(), (1, k), &model.device)?.to_dtype(model.dtype)?;
            model.margins_with_table(set, &t, &|_| 0, sp.queries.clone())
        })
        .collect::<Result<_>>()?;
    let comps = sp.query_comps(set);
    let n_users = sp.user_ids.len();
    let known = vec![true; n_users];
    let report = |pick: &dyn Fn(usize, usize) -> f32| -> EvalReport {
        let m: Vec<f32> = comps
            .iter()
            .enumerate()
            .map(|(i, c)| pick(i, c.user as usize))
            .collect();
        report_from_margins(&sp.user_ids, &comps, &m, &known, None, opts)
    };

    let local = sp.local.clone();
    let row_of = move |u: u32| local[u as usize];
    let ll = shot_loglik(model, set, &sp.shots, ns, &row_of, &atoms)?;
    let ln_prior = -(atoms.len() as f64).ln();
    let mut points = Vec::with_capacity(ns.len());
    for (&n, per_n) in ns.iter().zip(&ll) {
        // π[user][group] by log-sum-exp over the group's seen users.
        let post: Vec<Vec<f64>> = per_n
            .iter()
            .map(|lw| {
                let mut lg = vec![f64::NEG_INFINITY; names.len()];
                for (q, lgq) in lg.iter_mut().enumerate() {
                    let xs: Vec<f64> = lw
                        .iter()
                        .zip(&atom_group)
                        .filter(|(_, &g)| g == q)
                        .map(|(&x, _)| x + ln_prior)
                        .collect();
                    let mx = xs.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
                    if mx.is_finite() {
                        *lgq = mx + xs.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
                    }
                }
                let mx = lg.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
                let e: Vec<f64> = lg.iter().map(|x| (x - mx).exp()).collect();
                let s: f64 = e.iter().sum();
                e.iter().map(|x| x / s).collect()
            })
            .collect();
        let best: Vec<usize> = post
            .iter()
            .map(|p| (0..p.len()).fold(0, |b, q| if p[q] > p[b] { q } else { b }))
            .collect();
        // Each user's posterior-weighted group mixture, scored like any mixture table.
        let means = &means;
        let flat: Vec<f64> = post
            .iter()
            .flat_map(|p| {
                (0..k).map(move |j| p.iter().zip(means).map(|(pq, w)| pq * w[j]).sum::<f64>())
            })
            .collect();
        let table = Tensor::from_vec(flat, (n_users, k), &model.device)?.to_dtype(model.dtype)?;
        let pm = model.margins_with_table(set, &table, &row_of, sp.queries.clone())?;
        let posterior = report(&|i, _| pm[i]);
        let argmax = report(&|i, u| margins[best[u]][i]);
        let hits = best.iter().zip(&truth).filter(|(b, t)| b == t).count();
        points.push(GroupBoundPoint {
            shots: n,
            posterior,
            argmax,
            hit_rate: hits as f64 / n_users as f64,
        });
    }
    let true_group = report(&|i, u| margins[truth[u]][i]);
    Ok(GroupBound {
        groups: names,
        seen_per_group: counts,
        user_ids: sp.user_ids.clone(),
        queries: sp.queries.len(),
        points,
        true_group,
    })
}
