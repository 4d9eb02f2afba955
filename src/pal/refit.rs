//! Seen users re-placed from N shots (issue 14): the yardstick for "new users at N shots
//! within a few points of seen users".
//!
//! Owns: [`refit_seen`]. Seen users' test accuracy comes from mixtures trained on all of each
//! user's training comparisons (on Polis up to 140 a voter), while a new user has N. This
//! measures what N comparisons are worth for the users the model knows best: each seen user's
//! mixture (and, for `offset`, ideal-point offset) is fitted again from only their first N
//! comparisons of a "shots" split (a seeded shuffle; e.g. their training pairs, or their
//! validation pairs, which the shared parts were not fitted on), with the estimator and
//! settings of the new-user curve and their own trained logits ignored (their atom leaves the
//! `empirical` prior, as in the simulation of `fewshot.rs`); every N is scored on the same
//! queries, all of the user's comparisons in a held-out split (e.g. their test pairs). Beside
//! it, the same queries scored with the users' trained mixtures: the model's seen-user accuracy
//! on exactly these users. Every seen user of the query split with enough shots is fitted (no
//! cap), so on large stores it costs about what the new-user curve costs per user.
//!
//! If the re-placed seen users at N shots fall well short of their trained accuracy, N
//! comparisons do not carry what training gave them, and new users (whose comparisons did not
//! even shape the prototypes) cannot be expected to reach it at N either, by any estimator of
//! this family. It is a diagnostic beside the curve, not an estimator. Does not own: the
//! estimators and the fits (`fewshot.rs`).

use std::collections::HashMap;

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::config::{Estimator, FewShotConfig};
use super::data::ComparisonSet;
use super::error::{PalError, Result};
use super::evaluate::{EvalOptions, EvalReport};
use super::fewshot::{fit_curve, fit_offsets, resolve, score, score_fit, zero_table, Prior, Split};
use super::model::{rng, stream, PalModel};

/// One shot count of [`SeenRefit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenRefitPoint {
    /// N, training comparisons per seen user (0: the zero-shot mixture).
    pub shots: usize,
    /// The queries scored with the mixture (and offset) fitted from those N.
    pub refit: EvalReport,
}

/// Seen users re-placed from N of their training comparisons; see the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenRefit {
    /// The estimator used (never `auto`).
    pub estimator: Estimator,
    /// Its prior scale.
    pub prior_scale: f64,
    /// `offset`'s ridge strength λ (`None` for the other estimators; ∞ is written "inf").
    #[serde(default, with = "super::config::ridge_json")]
    pub ridge: Option<f64>,
    /// Seen users scored, in the order of the query split.
    pub user_ids: Vec<String>,
    /// Users of the query split with fewer training comparisons than the largest N
    /// (excluded at every N).
    pub excluded_users: Vec<String>,
    /// Query comparisons scored at every N (all of the scored users' held-out comparisons).
    pub queries: usize,
    /// The queries scored with the users' trained mixtures.
    pub trained: EvalReport,
    /// One point per requested N, in the order given.
    pub points: Vec<SeenRefitPoint>,
}

/// `a` and `b` as one set: `b`'s items and prompts follow `a`'s (its comparisons re-indexed),
/// users are matched by id (new ids of `b` appended). `b`'s comparisons come after `a`'s.
fn concat(a: &ComparisonSet, b: &ComparisonSet) -> Result<ComparisonSet> {
    if a.dx != b.dx || a.dp != b.dp {
        return Err(PalError::Data(format!(
            "the two splits have different embedding sizes (items {} and {}, prompts {} and {})",
            a.dx, b.dx, a.dp, b.dp
        )));
    }
    let mut out = a.clone();
    let item0 = a.n_items() as u32;
    let prompt0 = a.n_prompts() as u32;
    out.items.extend_from_slice(&b.items);
    out.prompts.extend_from_slice(&b.prompts);
    let mut row: HashMap<String, u32> = (a.user_ids.iter().enumerate())
        .map(|(i, id)| (id.clone(), i as u32))
        .collect();
    let users: Vec<u32> = (b.user_ids.iter())
        .map(|id| {
            *row.entry(id.clone()).or_insert_with(|| {
                out.user_ids.push(id.clone());
                out.user_ids.len() as u32 - 1
            })
        })
        .collect();
    out.comps
        .extend(b.comps.iter().map(|c| super::data::Comparison {
            user: users[c.user as usize],
            prompt: c.prompt.map(|p| p + prompt0),
            left: c.left + item0,
            right: c.right + item0,
            ..*c
        }));
    Ok(out)
}

fn no_users(maxn: usize) -> PalError {
    PalError::Data(format!(
        "no seen user of the query split has at least {maxn} comparisons in the shots split, so none can be re-placed\nhint: lower the largest shot count, or take the shots from a larger split of the seen users (e.g. their training pairs)"
    ))
}

/// How many users of `queries` [`refit_seen`] would score at largest shot count `maxn`: those
/// with a comparison in `queries` and at least `maxn` in `train` (matched by user id). A cheap
/// check before the fits; a data error when there is none.
pub fn refit_seen_users(
    train: &ComparisonSet,
    queries: &ComparisonSet,
    maxn: usize,
) -> Result<usize> {
    let mut in_train: HashMap<&str, usize> = HashMap::new();
    for c in &train.comps {
        *in_train
            .entry(train.user_ids[c.user as usize].as_str())
            .or_default() += 1;
    }
    let mut asked = vec![false; queries.user_ids.len()];
    for c in &queries.comps {
        if let Some(a) = asked.get_mut(c.user as usize) {
            *a = true;
        }
    }
    let n = (queries.user_ids.iter().zip(&asked))
        .filter(|(id, &a)| a && in_train.get(id.as_str()).copied().unwrap_or(0) >= maxn)
        .count();
    if n == 0 {
        return Err(no_users(maxn));
    }
    Ok(n)
}

/// Re-places the seen users of `queries` from N of their comparisons in `train` for every N of
/// `ns`, with `cfg`'s estimator and settings (`auto` is `empirical`), and scores all of each
/// user's `queries` comparisons at every N and with their trained mixtures; see the module doc.
///
/// Users of `queries` need at least max(`ns`) comparisons in `train` (the others are excluded
/// and listed; users without a comparison in `queries` are not scored). Errors: an invalid
/// `cfg`, an empty `ns` or set, a user of `queries` the model was not trained on, sets whose
/// dimensions differ from each other or from the model, no user left to score
/// ([`refit_seen_users`] counts them first).
pub fn refit_seen(
    model: &PalModel,
    train: &ComparisonSet,
    queries: &ComparisonSet,
    ns: &[usize],
    cfg: &FewShotConfig,
    opts: &EvalOptions,
) -> Result<SeenRefit> {
    cfg.validate()?;
    train.validate()?;
    queries.validate()?;
    model.check_dims(train)?;
    model.check_dims(queries)?;
    if let Some(u) = (queries.user_ids.iter()).find(|u| model.user_row(u).is_none()) {
        return Err(PalError::Data(format!(
            "user '{u}' of the query split is not one the model was trained on"
        )));
    }
    let maxn = ns.iter().copied().max().ok_or_else(|| {
        PalError::config(
            "shots",
            "is empty, give at least one shot count (0 is zero-shot)",
        )
    })?;
    let set = concat(train, queries)?;
    let first_query = train.comps.len();
    let by_user = set.by_user();

    // The users of the query split, in its order: shots from their training comparisons in a
    // seeded order, queries all of their held-out comparisons.
    let mut r = rng(cfg.seed, stream::REFIT);
    let mut sp = Split {
        local: vec![u32::MAX; set.n_users()],
        user_ids: Vec::new(),
        excluded: Vec::new(),
        queries: Vec::new(),
        shots: Vec::new(),
        all: Vec::new(),
    };
    let row: HashMap<&str, usize> = (set.user_ids.iter().enumerate())
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    for id in &queries.user_ids {
        let u = row[id.as_str()];
        let (mut shots, held): (Vec<usize>, Vec<usize>) =
            by_user[u].iter().partition(|&&i| i < first_query);
        if held.is_empty() {
            continue;
        }
        if shots.len() < maxn {
            sp.excluded.push(id.clone());
            continue;
        }
        shots.shuffle(&mut r);
        sp.local[u] = sp.user_ids.len() as u32;
        sp.user_ids.push(id.clone());
        sp.queries.extend_from_slice(&held);
        let mut all = by_user[u].clone();
        all.sort_unstable();
        sp.all.push(all);
        sp.shots.push(shots);
    }
    sp.queries.sort_unstable();
    if sp.user_ids.is_empty() {
        return Err(no_users(maxn));
    }

    let est = resolve(cfg.estimator);
    let prior = Prior::of(model)?;
    let local = sp.local.clone();
    let row_of = move |u: u32| local[u as usize];
    let own_rows: Vec<Option<u32>> = sp.user_ids.iter().map(|id| model.user_row(id)).collect();
    let own = |u: usize| own_rows[u];

    // The trained mixtures of exactly these users, one row each.
    let trained_rows = {
        let table = model.mixture_table()?;
        let rows: Vec<u32> = own_rows.iter().map(|r| r.unwrap_or(0)).collect();
        let rows = candle_core::Tensor::new(rows.as_slice(), &model.device)?;
        table.index_select(&rows, 0)?
    };
    let trained = score(model, &set, &sp, &trained_rows, None, &row_of, true, opts)?;

    let fits = fit_curve(model, &set, &sp.shots, ns, &row_of, &own, est, &prior, cfg)?;
    let offs = if est == Estimator::Offset && cfg.ridge.is_finite() {
        Some(fit_offsets(
            model, &set, &sp.shots, ns, &row_of, &fits, cfg,
        )?)
    } else {
        None
    };
    let mut points = Vec::with_capacity(ns.len());
    for (i, (&n, rows)) in ns.iter().zip(&fits).enumerate() {
        let refit = if n == 0 {
            score(
                model,
                &set,
                &sp,
                &zero_table(model)?,
                None,
                &|_| 0,
                false,
                opts,
            )?
        } else {
            let off = offs.as_ref().map(|o| o[i].as_slice());
            score_fit(model, &set, &sp, rows, off, &row_of, opts)?
        };
        points.push(SeenRefitPoint { shots: n, refit });
    }
    Ok(SeenRefit {
        estimator: est,
        prior_scale: cfg.prior_scale,
        ridge: (est == Estimator::Offset).then_some(cfg.ridge),
        user_ids: sp.user_ids,
        excluded_users: sp.excluded,
        queries: sp.queries.len(),
        trained,
        points,
    })
}
