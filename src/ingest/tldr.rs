//! `length_preference_users`: the length-preference users of the PAL paper's Reddit TL;DR
//! experiment (PAL Sec. D.3, Table 2), built from the comparisons JSON lines of OpenAI's
//! summarize-from-feedback release (`info{id, post, title, subreddit}`, `summaries[2]{text,
//! policy, note}`, `choice`, `worker`, `batch`, `split` ∈ train / valid1 / valid2, `extra`).
//!
//! Rules, in order:
//! - a comparison is kept when both summaries' policies contain `sup` and neither contains
//!   `ppo` (the supervised baselines); the rest are counted as off-policy;
//! - the `seen_users` workers with the most kept `train` comparisons are the seen users (ties
//!   broken by worker id); by that rank (1 = most), the ranks in `minority_ranks` (default 3,
//!   4, 5) prefer the shorter summary and the others the longer one;
//! - the unseen users are the other workers with at least `min_unseen_comparisons` kept
//!   `valid*` comparisons; a seeded shuffle of them (in worker-id order) makes the first
//!   round(n · |minority_ranks| / seen_users) prefer the shorter summary, the rest the longer
//!   one: the seen users' proportion (7:3 by default);
//! - the label is the user's synthetic length preference, never the worker's `choice`: left is
//!   `summaries[0]`, right `summaries[1]`, and the preferred one is the longer (or shorter) by
//!   character count of the trimmed text. Equal lengths give no preference: such comparisons
//!   are dropped and counted. A comparison that repeats one the same user already has (same
//!   post, same two texts in the same order) is one pair, counted;
//! - a seen user's `valid*` comparisons are "test", the `train` ones are split per user by a
//!   seeded shuffle into "val" (`val_frac`, default 0.1) and "train"; an unseen user's `valid*`
//!   comparisons are all "unseen" (their `train` ones are not used).
//!
//! Users are `<dataset>/<worker>`, `users.group` is "longer" or "shorter"; items are the
//! summaries (kind "text"), the prompt is the Reddit post (`info.post`, or `info.article` in
//! the release's news rows). `source_ref` of a pair is "<file>:<line>".
//!
//! The files are `path`, or every `*.json` / `*.jsonl` file directly in `dir` (the release's
//! `comparisons/` folder), in name order. The fixtures in this layout are written by
//! `tldr_fixtures.rs`; shared helpers (errors, JSON lines, seeded streams) are in `common.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{
    assign_splits, check_dataset, for_each_json_line, rng_for, IngestError, ROLE_SEEN, ROLE_UNSEEN,
    SPLIT_TEST, SPLIT_UNSEEN,
};
use crate::store::records::{
    content_id, pair_id, IngestBatch, ItemRow, PairRow, PromptRow, UserRow,
};

/// `users.group` of a user who prefers the longer summary.
pub const LONGER: &str = "longer";
/// `users.group` of a user who prefers the shorter summary.
pub const SHORTER: &str = "shorter";

/// Parameters of a `length_preference_users` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// A folder of comparison files (`*.json`, `*.jsonl`). One of `dir` and `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// One comparisons file. One of `dir` and `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The `dataset` column and user-id prefix. Default "tldr".
    #[serde(default = "default_dataset")]
    pub dataset: String,
    /// How many of the busiest workers (by kept train comparisons) are seen users. Default 10.
    #[serde(default = "default_seen_users")]
    pub seen_users: usize,
    /// Ranks (1 = busiest) of the seen users who prefer the shorter summary. Default [3, 4, 5].
    #[serde(default = "default_minority_ranks")]
    pub minority_ranks: Vec<usize>,
    /// Kept validation comparisons a worker needs to be an unseen user. Default 100.
    #[serde(default = "default_min_unseen")]
    pub min_unseen_comparisons: usize,
    /// Fraction of a seen user's train comparisons tagged "val". Default 0.1.
    #[serde(default = "default_val_frac")]
    pub val_frac: f64,
    /// Seed of every random draw. Default 0.
    #[serde(default)]
    pub seed: u64,
}

fn default_dataset() -> String {
    "tldr".to_string()
}
fn default_seen_users() -> usize {
    10
}
fn default_minority_ranks() -> Vec<usize> {
    vec![3, 4, 5]
}
fn default_min_unseen() -> usize {
    100
}
fn default_val_frac() -> f64 {
    0.1
}

impl Params {
    /// Parameters with every default, reading the comparison files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Params {
            dir: Some(dir.into()),
            path: None,
            dataset: default_dataset(),
            seen_users: default_seen_users(),
            minority_ranks: default_minority_ranks(),
            min_unseen_comparisons: default_min_unseen(),
            val_frac: default_val_frac(),
            seed: 0,
        }
    }

    /// The folder or file named, whichever it is (for fingerprints and messages).
    pub fn source(&self) -> Option<&Path> {
        self.dir.as_deref().or(self.path.as_deref())
    }
}

/// Checks the parameters that their types do not.
pub fn validate(p: &Params) -> Result<(), IngestError> {
    match (&p.dir, &p.path) {
        (Some(_), Some(_)) => {
            return Err(IngestError::bad_param(
                "dir",
                "given with 'path'",
                "one of 'dir' (a folder of comparison files) and 'path' (one file)",
            ))
        }
        (None, None) => {
            return Err(IngestError::bad_param(
                "dir",
                "missing",
                "'dir' (a folder of comparison files) or 'path' (one file)",
            ))
        }
        _ => {}
    }
    if p.seen_users == 0 {
        return Err(IngestError::bad_param("seen_users", 0, "at least 1"));
    }
    let mut ranks = BTreeSet::new();
    for &r in &p.minority_ranks {
        if r == 0 || r > p.seen_users || !ranks.insert(r) {
            return Err(IngestError::bad_param(
                "minority_ranks",
                format!("{:?}", p.minority_ranks),
                &format!("distinct ranks from 1 to seen_users ({})", p.seen_users),
            ));
        }
    }
    if p.min_unseen_comparisons == 0 {
        return Err(IngestError::bad_param(
            "min_unseen_comparisons",
            0,
            "at least 1",
        ));
    }
    if !(0.0..1.0).contains(&p.val_frac) {
        return Err(IngestError::bad_param(
            "val_frac",
            p.val_frac,
            "a fraction in [0, 1)",
        ));
    }
    check_dataset(&p.dataset)
}

/// The comparison files: `path`, or the `*.json` / `*.jsonl` files directly in `dir`, sorted
/// by name. A folder without any is an error.
pub fn comparison_files(p: &Params) -> Result<Vec<PathBuf>, IngestError> {
    if let Some(path) = &p.path {
        return Ok(vec![path.clone()]);
    }
    let Some(dir) = &p.dir else {
        return Ok(Vec::new());
    };
    if !dir.exists() {
        return Err(IngestError::MissingFile { path: dir.clone() });
    }
    let entries = std::fs::read_dir(dir).map_err(|source| IngestError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "json" || x == "jsonl"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(IngestError::NoData {
            path: dir.clone(),
            what: "no *.json or *.jsonl comparison files here\nhint: point 'dir' at the release's comparisons/ folder, or 'path' at one file".to_string(),
        });
    }
    Ok(files)
}

/// The input the pipeline checks and fingerprints: the folder or the file.
pub fn input_files(p: &Params) -> Vec<PathBuf> {
    p.source()
        .map(|s| vec![s.to_path_buf()])
        .unwrap_or_default()
}

/// Whether a comparison is between two supervised baselines.
pub fn supervised_pair(policies: [&str; 2]) -> bool {
    policies
        .iter()
        .all(|p| p.contains("sup") && !p.contains("ppo"))
}

/// One kept comparison.
struct Comparison {
    worker: String,
    /// true for `train`, false for `valid*`.
    train: bool,
    prompt: usize,
    /// Indices into the text table, left then right.
    texts: [usize; 2],
    lengths: [usize; 2],
    source_ref: String,
}

/// What a `length_preference_users` stage read, what each rule left out and what it made.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub files: usize,
    /// Comparison lines read.
    pub comparisons: usize,
    /// Lines whose policies are not two supervised baselines.
    pub off_policy: usize,
    /// Workers with at least one kept comparison.
    pub workers: usize,
    /// Seen users, by rank: (worker, kept train comparisons, group).
    pub seen: Vec<(String, usize, String)>,
    /// Unseen users and how many of them prefer the shorter summary.
    pub unseen: usize,
    pub unseen_shorter: usize,
    /// Comparisons of the chosen users dropped because their summaries have equal length.
    pub equal_length: usize,
    /// Comparisons that repeat one the same user already has.
    pub repeated: usize,
    /// Pairs written per split tag.
    pub pairs: BTreeMap<String, usize>,
}

impl Report {
    /// One line for the stage summary.
    pub fn summary(&self) -> String {
        let seen: Vec<String> = self
            .seen
            .iter()
            .enumerate()
            .map(|(i, (_, n, g))| format!("#{} {n} {g}", i + 1))
            .collect();
        let pairs: Vec<String> = self.pairs.iter().map(|(s, n)| format!("{s} {n}")).collect();
        format!(
            "{} comparisons in {} files: {} off-policy left out; {} workers; seen users {} ({}); \
             unseen users {} ({} shorter); {} equal-length dropped, {} repeated; pairs {}",
            self.comparisons,
            self.files,
            self.off_policy,
            self.workers,
            self.seen.len(),
            seen.join(", "),
            self.unseen,
            self.unseen_shorter,
            self.equal_length,
            self.repeated,
            pairs.join(", ")
        )
    }
}

/// The value at a dotted path of a JSON object (`info.post`, `summaries.0.text`).
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(key),
        })
}

/// The string at `path`, or an error naming the file, line and field.
fn str_at<'a>(file: &Path, line: u64, v: &'a Value, path: &str) -> Result<&'a str, IngestError> {
    match at(v, path) {
        None | Some(Value::Null) => Err(IngestError::MissingField {
            path: file.to_path_buf(),
            line,
            field: path.to_string(),
        }),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(other) => Err(IngestError::BadValue {
            path: file.to_path_buf(),
            line,
            field: path.to_string(),
            found: other.to_string(),
            expected: "a string".to_string(),
        }),
    }
}

/// Interned texts: id → index, with the texts and their content ids.
#[derive(Default)]
struct Texts {
    index: HashMap<String, usize>,
    texts: Vec<(String, String)>,
}

impl Texts {
    fn add(&mut self, text: &str) -> usize {
        let id = content_id(text.as_bytes());
        if let Some(&i) = self.index.get(&id) {
            return i;
        }
        self.texts.push((id.clone(), text.to_string()));
        self.index.insert(id, self.texts.len() - 1);
        self.texts.len() - 1
    }
}

/// Reads the comparisons and builds the length-preference users' pairs.
pub fn ingest(p: &Params) -> Result<IngestBatch, IngestError> {
    ingest_with_report(p).map(|(batch, _)| batch)
}

/// Reads the comparisons and builds the length-preference users' pairs, with what each rule
/// left out.
pub fn ingest_with_report(p: &Params) -> Result<(IngestBatch, Report), IngestError> {
    validate(p)?;
    let files = comparison_files(p)?;
    let mut report = Report {
        files: files.len(),
        ..Report::default()
    };
    let mut prompts = Texts::default();
    let mut items = Texts::default();
    let mut kept: Vec<Comparison> = Vec::new();
    for file in &files {
        let name = file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        // One comparison in memory at a time: only what is kept stays.
        for_each_json_line(file, |line, record| {
            report.comparisons += 1;
            let v = Value::Object(record);
            let policies = [
                str_at(file, line, &v, "summaries.0.policy")?,
                str_at(file, line, &v, "summaries.1.policy")?,
            ];
            if !supervised_pair(policies) {
                report.off_policy += 1;
                return Ok(());
            }
            let worker = str_at(file, line, &v, "worker")?.trim();
            if worker.is_empty() {
                return Err(IngestError::BadValue {
                    path: file.to_path_buf(),
                    line,
                    field: "worker".to_string(),
                    found: String::new(),
                    expected: "a worker id".to_string(),
                });
            }
            let split = str_at(file, line, &v, "split")?;
            let train = match split {
                "train" => true,
                s if s.starts_with("valid") => false,
                other => {
                    return Err(IngestError::BadValue {
                        path: file.clone(),
                        line,
                        field: "split".to_string(),
                        found: other.to_string(),
                        expected: "train, valid1 or valid2".to_string(),
                    })
                }
            };
            let post = match str_at(file, line, &v, "info.post") {
                Ok(post) => post,
                Err(IngestError::MissingField { .. }) => str_at(file, line, &v, "info.article")
                    .map_err(|_| IngestError::MissingField {
                        path: file.clone(),
                        line,
                        field: "info.post".to_string(),
                    })?,
                Err(e) => return Err(e),
            };
            let mut texts = [0; 2];
            let mut lengths = [0; 2];
            for s in 0..2 {
                let text = str_at(file, line, &v, &format!("summaries.{s}.text"))?;
                texts[s] = items.add(text);
                lengths[s] = text.trim().chars().count();
            }
            kept.push(Comparison {
                worker: worker.to_string(),
                train,
                prompt: prompts.add(post),
                texts,
                lengths,
                source_ref: format!("{name}:{line}"),
            });
            Ok(())
        })?;
    }

    // Seen users: the busiest workers in train, by count then id.
    let mut train_counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut valid_counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &kept {
        let counts = if c.train {
            &mut train_counts
        } else {
            &mut valid_counts
        };
        *counts.entry(c.worker.as_str()).or_default() += 1;
    }
    let workers: BTreeSet<&str> = kept.iter().map(|c| c.worker.as_str()).collect();
    report.workers = workers.len();
    let mut ranked: Vec<(&str, usize)> = train_counts.iter().map(|(w, n)| (*w, *n)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    if ranked.len() < p.seen_users {
        return Err(IngestError::NoData {
            path: p.source().unwrap_or(Path::new("")).to_path_buf(),
            what: format!(
                "{} workers have train comparisons between supervised policies, fewer than seen_users ({})\nhint: lower 'seen_users'",
                ranked.len(),
                p.seen_users
            ),
        });
    }
    // worker → (prefers shorter, seen).
    let mut users: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
    for (rank0, (w, n)) in ranked.iter().take(p.seen_users).enumerate() {
        let shorter = p.minority_ranks.contains(&(rank0 + 1));
        users.insert(*w, (shorter, true));
        let group = if shorter { SHORTER } else { LONGER };
        report.seen.push((w.to_string(), *n, group.to_string()));
    }
    let unseen: Vec<&str> = valid_counts
        .iter()
        .filter(|(w, n)| **n >= p.min_unseen_comparisons && !users.contains_key(**w))
        .map(|(w, _)| *w)
        .collect();
    let n_shorter =
        ((unseen.len() * p.minority_ranks.len()) as f64 / p.seen_users as f64).round() as usize;
    let mut order = unseen.clone();
    order.shuffle(&mut rng_for(p.seed, "unseen-preferences"));
    for (i, w) in order.iter().enumerate() {
        users.insert(*w, (i < n_shorter, false));
    }
    report.unseen = unseen.len();
    report.unseen_shorter = n_shorter.min(unseen.len());

    // Each chosen user's comparisons, in file order.
    let mut by_user: BTreeMap<&str, (Vec<&Comparison>, Vec<&Comparison>)> = BTreeMap::new();
    for c in &kept {
        let Some(&(_, seen)) = users.get(c.worker.as_str()) else {
            continue;
        };
        if !seen && c.train {
            continue;
        }
        let e = by_user.entry(c.worker.as_str()).or_default();
        if c.train {
            e.0.push(c);
        } else {
            e.1.push(c);
        }
    }

    let mut batch = IngestBatch::default();
    let mut used_items: BTreeSet<usize> = BTreeSet::new();
    let mut used_prompts: BTreeSet<usize> = BTreeSet::new();
    for (worker, (shorter, seen)) in &users {
        let user_id = format!("{}/{worker}", p.dataset);
        let (train, valid) = by_user.remove(worker).unwrap_or_default();
        let mut pair_ids: BTreeSet<String> = BTreeSet::new();
        let mut split_rng = rng_for(p.seed, &format!("split:{user_id}"));
        // (comparison, label, pair id, split), equal lengths and repeats left out.
        let mut tagged: Vec<(&Comparison, i8, String, &str)> = Vec::new();
        for (list, is_train) in [(train, true), (valid, false)] {
            let mut usable: Vec<(&Comparison, i8, String)> = Vec::new();
            for c in list {
                if c.lengths[0] == c.lengths[1] {
                    report.equal_length += 1;
                    continue;
                }
                let left_longer = c.lengths[0] > c.lengths[1];
                let label: i8 = if left_longer != *shorter { -1 } else { 1 };
                let id = pair_id(
                    &user_id,
                    Some(&prompts.texts[c.prompt].0),
                    &items.texts[c.texts[0]].0,
                    &items.texts[c.texts[1]].0,
                    &label.to_string(),
                );
                if !pair_ids.insert(id.clone()) {
                    report.repeated += 1;
                    continue;
                }
                usable.push((c, label, id));
            }
            let tags: Vec<&str> = match (*seen, is_train) {
                (true, true) => assign_splits(usable.len(), 0.0, p.val_frac, &mut split_rng),
                (true, false) => vec![SPLIT_TEST; usable.len()],
                (false, _) => vec![SPLIT_UNSEEN; usable.len()],
            };
            tagged.extend(
                usable
                    .into_iter()
                    .zip(tags)
                    .map(|((c, l, id), t)| (c, l, id, t)),
            );
        }
        for (c, label, id, split) in tagged {
            used_items.extend(c.texts);
            used_prompts.insert(c.prompt);
            *report.pairs.entry(split.to_string()).or_default() += 1;
            batch.pairs.push(PairRow {
                pair_id: id,
                user_id: user_id.clone(),
                prompt_id: Some(prompts.texts[c.prompt].0.clone()),
                left_id: items.texts[c.texts[0]].0.clone(),
                right_id: items.texts[c.texts[1]].0.clone(),
                label,
                dataset: p.dataset.clone(),
                split: split.to_string(),
                source_ref: Some(c.source_ref.clone()),
                weight: 1.0,
            });
        }
        batch.users.push(UserRow {
            user_id,
            dataset: p.dataset.clone(),
            group: Some(if *shorter { SHORTER } else { LONGER }.to_string()),
            role: if *seen { ROLE_SEEN } else { ROLE_UNSEEN }.to_string(),
        });
    }
    for i in used_items {
        let (id, text) = &items.texts[i];
        batch.items.push(ItemRow {
            item_id: id.clone(),
            kind: "text".to_string(),
            text: Some(text.clone()),
            bytes: None,
            source: p.dataset.clone(),
            parent_id: None,
        });
    }
    for i in used_prompts {
        let (id, text) = &prompts.texts[i];
        batch.prompts.push(PromptRow {
            prompt_id: id.clone(),
            text: text.clone(),
            source: p.dataset.clone(),
        });
    }
    Ok((batch, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_rule() {
        assert!(supervised_pair(["sup4", "sup2_t0.7"]));
        assert!(!supervised_pair(["sup4", "ref"]));
        assert!(!supervised_pair(["sup4_ppo_rm3_kl10", "sup4"]));
        assert!(!supervised_pair(["pretrain_6b", "sup1"]));
    }

    #[test]
    fn params_round_trip_and_checks() {
        let p: Params = serde_yaml::from_str("dir: c\nseed: 2\n").unwrap();
        let mut want = Params::new("c");
        want.seed = 2;
        assert_eq!(p, want);
        let back: Params = serde_yaml::from_str(&serde_yaml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let both: Params = serde_yaml::from_str("dir: c\npath: f.json\n").unwrap();
        assert!(validate(&both)
            .unwrap_err()
            .to_string()
            .contains("one of 'dir'"));
        let mut bad = Params::new("c");
        bad.minority_ranks = vec![3, 11];
        assert!(validate(&bad)
            .unwrap_err()
            .to_string()
            .contains("distinct ranks from 1 to seen_users (10)"));
    }
}
