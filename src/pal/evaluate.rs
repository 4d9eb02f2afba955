//! Evaluation of PAL heads and baselines on a comparison set (PAL-SPEC "Evaluation").
//!
//! Owns: [`EvalReport`] — per comparison correct / tie (sign(m) must agree with the label;
//! m = 0 is a tie and counts as wrong), overall accuracy with a 95% Wilson interval over
//! comparisons (and, on request, a seeded bootstrap interval over users), per-user accuracy
//! mean and spread, and a summary of the users' mixtures w for K > 1 — and [`evaluate`].
//! Does not own: the generic numbers (`src/eval/metrics.rs`) or printing (`src/cli`).

use serde::{Deserialize, Serialize};

use super::data::{Comparison, ComparisonSet};
use super::error::Result;
use super::model::{argmax, PalModel};
use crate::eval::metrics::{self, Interval, MeanStd, Tally};

/// Options of an evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalOptions {
    /// Bootstrap resamples over users for `ci95_users`; 0 (default) skips it.
    #[serde(default)]
    pub bootstrap_reps: usize,
    /// Seed of the bootstrap. Default 0.
    #[serde(default)]
    pub seed: u64,
}

/// The outcome of one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// m = r(x_l) − r(x_r) (for the popularity baseline: rate_l − rate_r).
    pub margin: f32,
    /// sign(m) agrees with the label (left preferred ⇔ m > 0).
    pub correct: bool,
    /// m == 0 (counted as wrong).
    pub tie: bool,
}

/// Accuracy of one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserAccuracy {
    pub user: String,
    pub n: usize,
    pub correct: usize,
    pub ties: usize,
    pub accuracy: f64,
    /// False when the model did not know the user (scored with the zero-shot mixture).
    pub known: bool,
}

/// How the evaluated users' mixtures w spread over the K prototypes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixtureSummary {
    pub k: usize,
    /// Mean w_k over users.
    pub mean_weight: Vec<f64>,
    /// Number of users whose largest weight is prototype k.
    pub argmax_users: Vec<usize>,
    /// Mean over users of max_k w_k (1 = every user on one prototype).
    pub mean_max_weight: f64,
    /// Mean over users of the entropy of w in nats (0 = one-hot, ln K = uniform).
    pub mean_entropy: f64,
}

/// The result of evaluating a model (or baseline) on a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Comparisons evaluated.
    pub n: usize,
    pub correct: usize,
    /// Comparisons with m = 0 (counted as wrong).
    pub ties: usize,
    pub accuracy: f64,
    /// 95% Wilson interval over comparisons.
    pub ci95: Interval,
    /// 95% percentile bootstrap over users, when `bootstrap_reps > 0`.
    pub ci95_users: Option<Interval>,
    /// Per-user accuracy (users with at least one comparison): mean, sample std, min, max.
    pub per_user: MeanStd,
    /// Users the model did not know (scored with the zero-shot mixture).
    pub unknown_users: usize,
    /// Mixture summary for K > 1 (None for K = 1 and for baselines).
    pub mixture: Option<MixtureSummary>,
    /// Per user, in set row order (users with at least one comparison).
    pub users: Vec<UserAccuracy>,
    /// Per comparison, in set order. Not serialised (large); the CLI writes it if asked.
    #[serde(skip)]
    pub outcomes: Vec<Outcome>,
}

/// Evaluates `model` on every comparison of `set` in evaluation mode (no dropout; one-hot
/// mixtures in partition mode). Users are matched by id; unknown users get the zero-shot
/// mixture and are counted in `unknown_users`.
pub fn evaluate(model: &PalModel, set: &ComparisonSet, opts: &EvalOptions) -> Result<EvalReport> {
    set.validate()?;
    let (margins, known) = model.margins_for(set)?;
    let mixtures = if model.config().k > 1 {
        let table = model
            .mixture_table()?
            .to_dtype(candle_core::DType::F64)?
            .to_vec2::<f64>()?;
        let zero = table.len() - 1;
        Some(
            set.user_ids
                .iter()
                .map(|id| table[model.user_row(id).map(|r| r as usize).unwrap_or(zero)].clone())
                .collect::<Vec<_>>(),
        )
    } else {
        None
    };
    Ok(report_from_margins(
        &set.user_ids,
        &set.comps,
        &margins,
        &known,
        mixtures.as_deref(),
        opts,
    ))
}

/// Builds a report from per-comparison margins of `comps` (user rows index `user_ids`).
/// `known[u]` says whether user row `u` was known to the model; `mixtures[u]` is that user's w
/// (K > 1 only).
pub(crate) fn report_from_margins(
    user_ids: &[String],
    comps: &[Comparison],
    margins: &[f32],
    known: &[bool],
    mixtures: Option<&[Vec<f64>]>,
    opts: &EvalOptions,
) -> EvalReport {
    let outcomes: Vec<Outcome> = comps
        .iter()
        .zip(margins)
        .map(|(c, &m)| {
            // left preferred (y = −1) ⇔ m > 0; t = −y·m > 0 when the model agrees.
            let t = -(c.y as f32) * m;
            Outcome {
                margin: m,
                correct: t > 0.0,
                tie: m == 0.0,
            }
        })
        .collect();
    let group: Vec<u32> = comps.iter().map(|c| c.user).collect();
    let correct: Vec<bool> = outcomes.iter().map(|o| o.correct).collect();
    let tie: Vec<bool> = outcomes.iter().map(|o| o.tie).collect();
    let tallies = metrics::tally_groups(user_ids.len(), &group, &correct, &tie);
    let total = tallies.iter().fold(Tally::default(), |a, t| Tally {
        n: a.n + t.n,
        correct: a.correct + t.correct,
        ties: a.ties + t.ties,
    });
    let present: Vec<usize> = (0..user_ids.len()).filter(|&u| tallies[u].n > 0).collect();
    let users: Vec<UserAccuracy> = present
        .iter()
        .map(|&u| UserAccuracy {
            user: user_ids[u].clone(),
            n: tallies[u].n,
            correct: tallies[u].correct,
            ties: tallies[u].ties,
            accuracy: tallies[u].accuracy(),
            known: known.get(u).copied().unwrap_or(false),
        })
        .collect();
    let per_user = metrics::mean_std(&users.iter().map(|u| u.accuracy).collect::<Vec<_>>());
    let ci95_users = (opts.bootstrap_reps > 0).then(|| {
        let groups: Vec<(usize, usize)> = present
            .iter()
            .map(|&u| (tallies[u].correct, tallies[u].n))
            .collect();
        metrics::bootstrap_groups(&groups, opts.bootstrap_reps, opts.seed, 0.95)
    });
    let mixture = mixtures.map(|ws| summarize_mixtures(present.iter().map(|&u| ws[u].as_slice())));
    EvalReport {
        n: total.n,
        correct: total.correct,
        ties: total.ties,
        accuracy: total.accuracy(),
        ci95: metrics::wilson_interval(total.correct, total.n, metrics::Z95),
        ci95_users,
        per_user,
        unknown_users: present
            .iter()
            .filter(|&&u| !known.get(u).copied().unwrap_or(false))
            .count(),
        mixture,
        users,
        outcomes,
    }
}

/// Summarises mixtures (each of length K).
pub(crate) fn summarize_mixtures<'a>(ws: impl Iterator<Item = &'a [f64]>) -> MixtureSummary {
    let mut k = 0;
    let mut mean_weight: Vec<f64> = Vec::new();
    let mut argmax_users: Vec<usize> = Vec::new();
    let (mut max_sum, mut ent_sum, mut n) = (0.0, 0.0, 0usize);
    for w in ws {
        if k == 0 {
            k = w.len();
            mean_weight = vec![0.0; k];
            argmax_users = vec![0; k];
        }
        for (m, v) in mean_weight.iter_mut().zip(w) {
            *m += v;
        }
        argmax_users[argmax(w)] += 1;
        max_sum += w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        ent_sum -= w
            .iter()
            .filter(|&&v| v > 0.0)
            .map(|v| v * v.ln())
            .sum::<f64>();
        n += 1;
    }
    let nf = n.max(1) as f64;
    mean_weight.iter_mut().for_each(|m| *m /= nf);
    MixtureSummary {
        k,
        mean_weight,
        argmax_users,
        mean_max_weight: max_sum / nf,
        mean_entropy: ent_sum / nf,
    }
}
