//! Generic metrics for pairwise-preference evaluation: accuracy, confidence intervals, and
//! per-group (per-user) aggregation.
//!
//! Owns: small numeric functions that know nothing of models: [`wilson_interval`] (the default
//! 95% CI over comparisons), [`bootstrap_groups`] (a seeded percentile bootstrap that resamples
//! whole groups, e.g. users, for data where a user's comparisons are correlated), [`mean_std`]
//! and [`tally_groups`]. Does not own: producing predictions (`src/pal/evaluate.rs`) or
//! rendering reports (`src/cli`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// How an interval was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CiMethod {
    /// Wilson score interval over comparisons (treats comparisons as independent).
    Wilson,
    /// Percentile bootstrap resampling whole users (groups), seeded.
    BootstrapUsers,
}

/// A confidence interval for a proportion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
    pub level: f64,
    pub method: CiMethod,
}

/// `correct / n`, or 0 when `n == 0`.
pub fn accuracy(correct: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        correct as f64 / n as f64
    }
}

/// The Wilson score interval for `successes` out of `n` at normal quantile `z`
/// (use [`Z95`] for 95%). `n == 0` gives [0, 1].
pub fn wilson_interval(successes: usize, n: usize, z: f64) -> Interval {
    let level = 2.0 * normal_cdf(z) - 1.0;
    if n == 0 {
        return Interval {
            lo: 0.0,
            hi: 1.0,
            level,
            method: CiMethod::Wilson,
        };
    }
    let n_f = n as f64;
    let p = successes as f64 / n_f;
    let z2 = z * z;
    let denom = 1.0 + z2 / n_f;
    let centre = (p + z2 / (2.0 * n_f)) / denom;
    let half = z * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt() / denom;
    Interval {
        lo: (centre - half).max(0.0),
        hi: (centre + half).min(1.0),
        level,
        method: CiMethod::Wilson,
    }
}

/// Percentile bootstrap CI of the pooled accuracy Σcorrect/Σn, resampling `groups`
/// (`(correct, n)` per group) with replacement `reps` times from `seed`, at `level` (0.95).
pub fn bootstrap_groups(groups: &[(usize, usize)], reps: usize, seed: u64, level: f64) -> Interval {
    if groups.is_empty() || reps == 0 {
        return Interval {
            lo: 0.0,
            hi: 1.0,
            level,
            method: CiMethod::BootstrapUsers,
        };
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stats = Vec::with_capacity(reps);
    for _ in 0..reps {
        let (mut c, mut n) = (0usize, 0usize);
        for _ in 0..groups.len() {
            let g = groups[rng.random_range(0..groups.len())];
            c += g.0;
            n += g.1;
        }
        stats.push(accuracy(c, n));
    }
    stats.sort_by(|a, b| a.total_cmp(b));
    let alpha = (1.0 - level) / 2.0;
    Interval {
        lo: quantile_sorted(&stats, alpha),
        hi: quantile_sorted(&stats, 1.0 - alpha),
        level,
        method: CiMethod::BootstrapUsers,
    }
}

/// Summary of a list of values (e.g. per-user accuracies).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    pub count: usize,
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 for fewer than two values.
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

/// Mean, sample std, min and max (all 0 for an empty list).
pub fn mean_std(values: &[f64]) -> MeanStd {
    let n = values.len();
    if n == 0 {
        return MeanStd {
            count: 0,
            mean: 0.0,
            std: 0.0,
            min: 0.0,
            max: 0.0,
        };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let var = if n > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    MeanStd {
        count: n,
        mean,
        std: var.sqrt(),
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

/// Per-group counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tally {
    pub n: usize,
    pub correct: usize,
    pub ties: usize,
}

impl Tally {
    pub fn accuracy(&self) -> f64 {
        accuracy(self.correct, self.n)
    }
}

/// Tallies outcomes per group: `group[i]` (< `n_groups`), `correct[i]`, `tie[i]`.
pub fn tally_groups(n_groups: usize, group: &[u32], correct: &[bool], tie: &[bool]) -> Vec<Tally> {
    let mut out = vec![Tally::default(); n_groups];
    for ((g, c), t) in group.iter().zip(correct).zip(tie) {
        let e = &mut out[*g as usize];
        e.n += 1;
        e.correct += usize::from(*c);
        e.ties += usize::from(*t);
    }
    out
}

/// Linear-interpolated quantile of sorted values.
fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    if i + 1 < sorted.len() {
        sorted[i] * (1.0 - frac) + sorted[i + 1] * frac
    } else {
        sorted[i]
    }
}

/// Standard normal CDF (Abramowitz–Stegun 7.1.26 erf, |error| < 1.5e-7).
fn normal_cdf(x: f64) -> f64 {
    let t = x.abs() / std::f64::consts::SQRT_2;
    let k = 1.0 / (1.0 + 0.327_591_1 * t);
    let poly = k
        * (0.254_829_592
            + k * (-0.284_496_736
                + k * (1.421_413_741 + k * (-1.453_152_027 + k * 1.061_405_429))));
    let erf = 1.0 - poly * (-t * t).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_known_values() {
        // 81/263 at 95%: [0.2553, 0.3662] (Wilson 1927 as tabulated in many texts)
        let i = wilson_interval(81, 263, Z95);
        assert!(
            (i.lo - 0.2553).abs() < 1e-3 && (i.hi - 0.3662).abs() < 1e-3,
            "{i:?}"
        );
        assert!((i.level - 0.95).abs() < 1e-6);
        let all = wilson_interval(10, 10, Z95);
        assert!(
            (all.hi - 1.0).abs() < 1e-12 && (all.lo - 1.0 / (1.0 + Z95 * Z95 / 10.0)).abs() < 1e-12,
            "{all:?}"
        );
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_mean() {
        let groups: Vec<(usize, usize)> = (0..50).map(|i| (i % 10, 10)).collect();
        let a = bootstrap_groups(&groups, 500, 3, 0.95);
        let b = bootstrap_groups(&groups, 500, 3, 0.95);
        assert_eq!(a, b);
        assert!(a.lo < 0.45 && a.hi > 0.45);
    }

    #[test]
    fn mean_std_and_tally() {
        let m = mean_std(&[1.0, 2.0, 3.0]);
        assert_eq!(m.mean, 2.0);
        assert!((m.std - 1.0).abs() < 1e-12);
        let t = tally_groups(2, &[0, 1, 1], &[true, false, true], &[false, true, false]);
        assert_eq!(
            t[1],
            Tally {
                n: 2,
                correct: 1,
                ties: 1
            }
        );
        assert_eq!(t[0].accuracy(), 1.0);
    }
}
