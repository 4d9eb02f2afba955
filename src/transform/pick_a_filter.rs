//! Pick-a-Filter (PAL App. D.6): two opinion groups injected into Pick-a-Pic by colour.
//!
//! From the source dataset's tie-free pairs (ingest already dropped ties), take the users
//! with pairs in both the `train` and the `test` split and more than `min_labels` of them
//! in those two splits together. Sort them by that count (most first, then by id) and deal
//! them alternately into two equal groups (an odd last user is left out): G1 prefers
//! `filters[0]` (default "cool"), G2 `filters[1]` ("warm"). The `seen_users` with the most
//! labels are seen; the others are new users for few-shot adaptation.
//!
//! For each user, a seeded fraction β of their pairs gets one filtered image: half of those
//! (rounded down) the winner, with the user's group's filter; the other half the loser, with
//! the other filter. Labels stay; only pixels change. So for G1 a cool image tends to win
//! and a warm one to lose, and the other way round for G2: one reward for everyone cannot
//! fit both groups, a K = 2 mixture can.
//!
//! New pairs go to the dataset `dataset` with user ids `<dataset>/<source user suffix>` and
//! split tags `paf-train` / `paf-val` (seen users' train pairs, `val_frac` of them to val),
//! `paf-test` (seen users' test pairs) and `paf-unseen` (every pair of an unseen user).
//! Filtered images are new items linked to their source through `parent_id`.

use std::collections::{BTreeMap, HashMap};

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::filter::Filter;
use super::ParamIssue;
use crate::ingest::common::rng_for;
use crate::store::records::PairRow;

fn default_source() -> String {
    "pickapic".into()
}
fn default_dataset() -> String {
    "pick-a-filter".into()
}
fn default_train() -> String {
    "v1-train".into()
}
fn default_test() -> String {
    "v1-test".into()
}
fn default_min_labels() -> usize {
    50
}
fn default_seen() -> usize {
    50
}
fn default_beta() -> f64 {
    1.0
}
fn default_filters() -> Vec<Filter> {
    vec![Filter::cool(), Filter::warm()]
}
fn default_val_frac() -> f64 {
    0.1
}

/// Parameters of a `pick_a_filter` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Dataset of the source pairs. Default "pickapic".
    #[serde(default = "default_source")]
    pub source_dataset: String,
    /// Dataset (and user-id prefix) of the pairs written. Default "pick-a-filter".
    #[serde(default = "default_dataset")]
    pub dataset: String,
    /// Source split tags. Defaults "v1-train" and "v1-test".
    #[serde(default = "default_train")]
    pub train: String,
    #[serde(default = "default_test")]
    pub test: String,
    /// Users need more than this many labels (train + test). Default 50.
    #[serde(default = "default_min_labels")]
    pub min_labels: usize,
    /// How many of the most active users are seen. Default 50.
    #[serde(default = "default_seen")]
    pub seen_users: usize,
    /// Fraction of each user's pairs that get a filtered image, in [0, 1]. Default 1.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Exactly two filters: G1 prefers the first, G2 the second. Default cool, warm.
    #[serde(default = "default_filters")]
    pub filters: Vec<Filter>,
    /// Fraction of seen users' train pairs kept for validation. Default 0.1.
    #[serde(default = "default_val_frac")]
    pub val_frac: f64,
    #[serde(default)]
    pub seed: u64,
}

impl Params {
    /// Checks ranges, the two filters and the splits, naming the key at fault.
    pub fn check(&self) -> Result<(), ParamIssue> {
        if self.dataset == self.source_dataset {
            return Err(ParamIssue::new(
                "dataset",
                format!(
                    "dataset '{}' is the source_dataset: the stage would replace the pairs it reads\nhint: name its output another dataset (default 'pick-a-filter')",
                    self.dataset
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(ParamIssue::new(
                "beta",
                format!("beta is {}, expected a fraction in [0, 1]", self.beta),
            ));
        }
        if !(0.0..1.0).contains(&self.val_frac) {
            return Err(ParamIssue::new(
                "val_frac",
                format!(
                    "val_frac is {}, expected a fraction in [0, 1)",
                    self.val_frac
                ),
            ));
        }
        if self.filters.len() != 2 {
            return Err(ParamIssue::new(
                "filters",
                format!(
                    "filters: expected exactly two (one per group), found {}",
                    self.filters.len()
                ),
            ));
        }
        for f in &self.filters {
            f.check().map_err(|m| ParamIssue::new("filters", m))?;
        }
        if self.filters[0].name == self.filters[1].name {
            return Err(ParamIssue::new(
                "filters",
                "the two filters need different names",
            ));
        }
        if self.seen_users == 0 {
            return Err(ParamIssue::new(
                "seen_users",
                "seen_users must be at least 1",
            ));
        }
        if self.train == self.test {
            return Err(ParamIssue::new(
                "train",
                "train and test must be different splits",
            ));
        }
        Ok(())
    }

    pub fn user_id(&self, source_user: &str) -> String {
        let suffix = source_user.rsplit('/').next().unwrap_or(source_user);
        format!("{}/{}", self.dataset, suffix)
    }
}

/// Which image of a pair is filtered, and with which filter (index into `filters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Winner(usize),
    Loser(usize),
}

/// One eligible user.
#[derive(Debug, Clone)]
pub struct PafUser {
    pub source_id: String,
    pub labels: usize,
    /// 0 (G1, prefers filters[0]) or 1.
    pub group: usize,
    pub seen: bool,
}

/// One output pair before the filtered images exist: the source pair, its new split and
/// what to filter.
#[derive(Debug, Clone)]
pub struct PlannedPair {
    pub source: usize,
    pub split: &'static str,
    pub change: Change,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub users: Vec<PafUser>,
    pub pairs: Vec<PlannedPair>,
    /// Users with pairs in both splits but not more than `min_labels`.
    pub too_few_labels: usize,
}

impl Plan {
    /// (source item id, filter index) of every image to make, each once, in a fixed order.
    pub fn jobs(&self, source: &[PairRow]) -> Vec<(String, usize)> {
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.pairs {
            if let Some((item, f)) = filtered_item(&source[p.source], p.change) {
                seen.insert((item.to_string(), f));
            }
        }
        seen.into_iter().collect()
    }

    pub fn split_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for p in &self.pairs {
            *out.entry(p.split).or_default() += 1;
        }
        out
    }
}

/// The item a change filters, and with which filter.
pub fn filtered_item(pair: &PairRow, change: Change) -> Option<(&str, usize)> {
    // label −1: left won.
    let (winner, loser) = if pair.label < 0 {
        (&pair.left_id, &pair.right_id)
    } else {
        (&pair.right_id, &pair.left_id)
    };
    match change {
        Change::None => None,
        Change::Winner(f) => Some((winner, f)),
        Change::Loser(f) => Some((loser, f)),
    }
}

/// Builds the plan from the source dataset's pairs (any splits; only `train` and `test` are
/// used).
pub fn plan(source: &[PairRow], p: &Params) -> Result<Plan, String> {
    p.check().map_err(|e| e.message)?;
    let mut per_user: HashMap<&str, (Vec<usize>, usize, usize)> = HashMap::new();
    for (i, r) in source.iter().enumerate() {
        let in_train = r.split == p.train;
        if !in_train && r.split != p.test {
            continue;
        }
        let e = per_user.entry(&r.user_id).or_default();
        e.0.push(i);
        if in_train {
            e.1 += 1;
        } else {
            e.2 += 1;
        }
    }
    let mut too_few = 0;
    let mut eligible: Vec<(&str, &Vec<usize>)> = Vec::new();
    for (u, (rows, tr, te)) in &per_user {
        if *tr == 0 || *te == 0 {
            continue;
        }
        if rows.len() > p.min_labels {
            eligible.push((u, rows));
        } else {
            too_few += 1;
        }
    }
    eligible.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    if eligible.len() % 2 == 1 {
        eligible.pop();
    }
    if eligible.is_empty() {
        return Err(format!(
            "no user of '{}' has pairs in both '{}' and '{}' and more than {} labels ({} users have both splits but too few labels)",
            p.source_dataset, p.train, p.test, p.min_labels, too_few
        ));
    }
    let mut plan = Plan {
        too_few_labels: too_few,
        ..Default::default()
    };
    for (rank, (user, rows)) in eligible.iter().enumerate() {
        let group = rank % 2;
        let seen = rank < p.seen_users;
        plan.users.push(PafUser {
            source_id: user.to_string(),
            labels: rows.len(),
            group,
            seen,
        });
        let mut rng = rng_for(p.seed, &format!("pick-a-filter:{user}"));
        // Which pairs are filtered, and of those which get a filtered winner.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.shuffle(&mut rng);
        let n_filtered = ((rows.len() as f64) * p.beta).round() as usize;
        let mut change = vec![Change::None; rows.len()];
        for (k, &j) in order.iter().take(n_filtered).enumerate() {
            change[j] = if k < n_filtered / 2 {
                Change::Winner(group)
            } else {
                Change::Loser(1 - group)
            };
        }
        // Seen users' train pairs: a seeded val_frac to validation.
        let train_rows: Vec<usize> = (0..rows.len())
            .filter(|&j| source[rows[j]].split == p.train)
            .collect();
        let n_val = if seen {
            ((train_rows.len() as f64) * p.val_frac).round() as usize
        } else {
            0
        };
        let mut val_pick = train_rows.clone();
        val_pick.shuffle(&mut rng);
        let val: std::collections::HashSet<usize> = val_pick.into_iter().take(n_val).collect();
        for (j, &src) in rows.iter().enumerate() {
            let split = match (seen, source[src].split == p.train) {
                (false, _) => "paf-unseen",
                (true, true) if val.contains(&j) => "paf-val",
                (true, true) => "paf-train",
                (true, false) => "paf-test",
            };
            plan.pairs.push(PlannedPair {
                source: src,
                split,
                change: change[j],
            });
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs_for(user: &str, train: usize, test: usize) -> Vec<PairRow> {
        (0..train + test)
            .map(|i| PairRow {
                pair_id: format!("{user}-{i}"),
                user_id: user.into(),
                prompt_id: Some(format!("c{i}")),
                left_id: format!("{user}-l{i}"),
                right_id: format!("{user}-r{i}"),
                label: if i % 2 == 0 { -1 } else { 1 },
                dataset: "pickapic".into(),
                split: if i < train { "v1-train" } else { "v1-test" }.into(),
                source_ref: None,
                weight: 1.0,
            })
            .collect()
    }

    fn params(yaml: &str) -> Params {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn eligibility_groups_and_seen_users() {
        let mut src = Vec::new();
        src.extend(pairs_for("pickapic/a", 60, 20)); // 80
        src.extend(pairs_for("pickapic/b", 50, 20)); // 70
        src.extend(pairs_for("pickapic/c", 45, 15)); // 60
        src.extend(pairs_for("pickapic/d", 41, 10)); // 51
        src.extend(pairs_for("pickapic/e", 40, 10)); // 50: not more than 50
        src.extend(pairs_for("pickapic/f", 90, 0)); // no test pairs
        let p = params("{seen_users: 2}");
        let made = plan(&src, &p).unwrap();
        let users: Vec<(&str, usize, bool)> = made
            .users
            .iter()
            .map(|u| (u.source_id.as_str(), u.group, u.seen))
            .collect();
        assert_eq!(
            users,
            vec![
                ("pickapic/a", 0, true),
                ("pickapic/b", 1, true),
                ("pickapic/c", 0, false),
                ("pickapic/d", 1, false)
            ]
        );
        assert_eq!(made.too_few_labels, 1);
        let counts = made.split_counts();
        assert_eq!(counts["paf-unseen"], 60 + 51);
        assert_eq!(counts["paf-test"], 40);
        assert_eq!(counts["paf-val"], 6 + 5);
    }

    #[test]
    fn beta_one_filters_every_pair_half_winners_half_losers() {
        let src = [
            pairs_for("pickapic/a", 60, 20),
            pairs_for("pickapic/b", 50, 20),
        ]
        .concat();
        let made = plan(&src, &params("{beta: 1.0}")).unwrap();
        for u in &made.users {
            let mine: Vec<&PlannedPair> = made
                .pairs
                .iter()
                .filter(|p| src[p.source].user_id == u.source_id)
                .collect();
            let winners = mine
                .iter()
                .filter(|p| p.change == Change::Winner(u.group))
                .count();
            let losers = mine
                .iter()
                .filter(|p| p.change == Change::Loser(1 - u.group))
                .count();
            assert_eq!(winners + losers, mine.len());
            assert_eq!(winners, mine.len() / 2);
        }
        let none = plan(&src, &params("{beta: 0.0}")).unwrap();
        assert!(none.pairs.iter().all(|p| p.change == Change::None));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let src = pairs_for("pickapic/a", 60, 20);
        for (yaml, needle) in [
            ("{beta: 1.5}", "beta"),
            ("{filters: [{name: a, tint: [0,0,0], strength: 2.0}, {name: b, tint: [1,1,1], strength: 0.5}]}", "strength"),
            ("{filters: [{name: a, tint: [0,0,0], strength: 0.5}]}", "exactly two"),
        ] {
            let e = plan(&src, &params(yaml)).unwrap_err();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
    }
}
