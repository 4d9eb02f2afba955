//! `polis`: one Polis conversation (`<dir>/{summary,comments,votes}.csv`, the open-data export
//! layout) turned into per-voter pairwise preferences. The folder's name is the conversation:
//! the dataset is "polis/<conversation>", a voter's user id "polis/<conversation>/<voter-id>".
//!
//! The votes come from `votes.csv` (one row per vote event) or, when a conversation has only
//! that, from `participants-votes.csv`, Polis's wide export: one row per participant
//! (`participant`, `xid` in some exports, `group-id`, `n-comments`, `n-votes`, `n-agree`,
//! `n-disagree`), then one column per comment id holding the participant's latest vote (1, −1,
//! 0) or nothing. Both give the same latest votes, hence the same pairs; `votes.csv` is
//! preferred when both exist. Whenever the wide file is there, its `group-id` (Polis's opinion
//! group) becomes the voter's `users.group`.
//!
//! Rules (from the data README):
//! - the latest vote per (voter, statement) counts, by `timestamp`. Rows with the same latest
//!   timestamp and the same vote are one vote; rows with the same latest timestamp and
//!   different votes cannot be ordered (the newer export writes seconds, newest rows first),
//!   so that (voter, statement) is dropped and counted, whatever the row order. Timestamps
//!   below 10^11 look like seconds, not milliseconds: the stage warns;
//! - statements with `moderated` = −1 are dropped (hidden from voters), and so are statements
//!   with an empty body and, unless `keep_meta`, statements marked `is-meta` (the newer
//!   export's column; Polis leaves them out of its opinion model). A statement is counted
//!   under the first of these that applies. Votes on unknown or dropped statements are
//!   ignored;
//! - for each voter, every statement voted agree (1) is preferred over every statement voted
//!   disagree (−1); passes (0) give no pair. Statements are items keyed by their text, so two
//!   statements with the same body are one item; an item a voter both agreed and disagreed with
//!   (only possible through such duplicates) gives that voter no pair;
//! - the context (the one prompt) is the conversation's `topic` from summary.csv.
//!
//! Voters with fewer than `min_pairs_per_user` pairs are dropped; a seeded `unseen_frac` of the
//! remaining voters become unseen (every pair "unseen"); `max_pairs_per_user`, when given, caps
//! a voter's pairs by a seeded sample without replacement (the floor applies before the cap).
//! A seen voter's pairs are then split "test" / "val" / "train" by `test_frac` and `val_frac`;
//! with `split_by: statement`, a seen voter's *statements* are split instead (agreed and
//! disagreed ones each by the fractions, seeded), a pair goes to the part holding both of its
//! statements and pairs across parts are left out (counted), so that no statement of a voter's
//! test pairs appears in their training or validation pairs (their stance on it is unseen);
//! the cap then samples among the pairs kept. Unseen voters' pairs do not depend on it.
//! Only statements some pair uses are emitted as items (kind "text", text = `comment-body`).
//! `users.group` is the voter's `group-id` from `participants-votes.csv`, empty when that file
//! is absent or the voter is in no group.
//! `source_ref` of a pair is "c<agreed comment-id>>c<disagreed comment-id>".
//!
//! [`ingest_with_report`] also returns a [`Report`]: what was read and what each rule left
//! out, for the stage summary, and the warnings to show.
//!
//! Shared helpers (errors, CSV reading, seeded streams, splits) are in `common.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::common::{
    assign_splits, check_fractions, orient, read_csv, read_key_values, rng_for, CsvTable,
    IngestError, ROLE_SEEN, ROLE_UNSEEN, SPLIT_UNSEEN,
};
use crate::store::records::{
    content_id, pair_id, IngestBatch, ItemRow, PairRow, PromptRow, UserRow,
};

/// Parameters of a `polis` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The conversation's folder (its name is the conversation). Required.
    pub dir: PathBuf,
    /// Cap on a voter's pairs, sampled with the seed. Default none (keep all).
    #[serde(default)]
    pub max_pairs_per_user: Option<usize>,
    /// Voters with fewer agree-over-disagree pairs are dropped. Default 20.
    #[serde(default = "default_min_pairs_per_user")]
    pub min_pairs_per_user: usize,
    /// Fraction of the kept voters held out as unseen users. Default 0.2.
    #[serde(default = "default_unseen_frac")]
    pub unseen_frac: f64,
    /// Fraction of a seen voter's pairs tagged "test". Default 0.2.
    #[serde(default = "default_test_frac")]
    pub test_frac: f64,
    /// Fraction of a seen voter's pairs tagged "val". Default 0.1.
    #[serde(default = "default_val_frac")]
    pub val_frac: f64,
    /// Seed of every random draw. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Keep statements marked `is-meta` as items. Default false (left out, as Polis does).
    #[serde(default)]
    pub keep_meta: bool,
    /// What a seen voter's train / val / test split divides: `pair` (default) or `statement`
    /// (see the module doc).
    #[serde(default, skip_serializing_if = "SplitBy::is_pair")]
    pub split_by: SplitBy,
}

/// The unit a seen voter's train / val / test split divides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitBy {
    /// The voter's pairs: a test pair's statements usually appear in training pairs too (the
    /// voter's stance on them is known to training, only the pairing is new).
    #[default]
    Pair,
    /// The voter's statements: a test pair's two statements appear in no training or
    /// validation pair of that voter; pairs across parts are left out.
    Statement,
}

impl SplitBy {
    fn is_pair(&self) -> bool {
        *self == SplitBy::Pair
    }
}

fn default_min_pairs_per_user() -> usize {
    20
}
fn default_unseen_frac() -> f64 {
    0.2
}
fn default_test_frac() -> f64 {
    0.2
}
fn default_val_frac() -> f64 {
    0.1
}

impl Params {
    /// Parameters with every default, reading the conversation in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Params {
            dir: dir.into(),
            max_pairs_per_user: None,
            min_pairs_per_user: default_min_pairs_per_user(),
            unseen_frac: default_unseen_frac(),
            test_frac: default_test_frac(),
            val_frac: default_val_frac(),
            seed: 0,
            keep_meta: false,
            split_by: SplitBy::Pair,
        }
    }
}

/// The long vote log: one row per vote event.
pub const VOTES_FILE: &str = "votes.csv";
/// The wide export: one row per participant, one column per comment.
pub const WIDE_FILE: &str = "participants-votes.csv";

/// The file a conversation's votes are read from: `votes.csv` when it exists (or when neither
/// does, so that a missing input is named), else `participants-votes.csv`.
pub fn votes_file(dir: &Path) -> PathBuf {
    let long = dir.join(VOTES_FILE);
    let wide = dir.join(WIDE_FILE);
    if long.exists() || !wide.exists() {
        long
    } else {
        wide
    }
}

/// The files a conversation is read from: summary, comments, the votes (see [`votes_file`]),
/// and the wide export for the voters' groups when it is there beside `votes.csv`.
pub fn input_files(params: &Params) -> Vec<PathBuf> {
    let mut files = vec![
        params.dir.join("summary.csv"),
        params.dir.join("comments.csv"),
        votes_file(&params.dir),
    ];
    let wide = params.dir.join(WIDE_FILE);
    if wide.exists() && !files.contains(&wide) {
        files.push(wide);
    }
    files
}

/// The conversation's name: the last component of `dir` (resolved when `dir` is "." or ends
/// in "..").
pub fn conversation(params: &Params) -> Result<String, IngestError> {
    let name = match params.dir.file_name() {
        Some(n) => Some(n.to_string_lossy().into_owned()),
        None => params
            .dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned())),
    };
    match name {
        Some(n) if !n.is_empty() && n != "." && n != ".." => Ok(n),
        _ => Err(IngestError::bad_param(
            "dir",
            format!("'{}'", params.dir.display()),
            "a conversation folder whose name names the conversation",
        )),
    }
}

/// The `dataset` value of this stage's rows: "polis/<conversation>".
pub fn dataset_name(params: &Params) -> Result<String, IngestError> {
    Ok(format!("polis/{}", conversation(params)?))
}

fn validate(p: &Params) -> Result<(), IngestError> {
    if p.min_pairs_per_user == 0 {
        return Err(IngestError::bad_param(
            "min_pairs_per_user",
            0,
            "at least 1",
        ));
    }
    if let Some(max) = p.max_pairs_per_user {
        if max < p.min_pairs_per_user {
            return Err(IngestError::bad_param(
                "max_pairs_per_user",
                max,
                &format!("at least min_pairs_per_user ({})", p.min_pairs_per_user),
            ));
        }
    }
    if !(0.0..=1.0).contains(&p.unseen_frac) {
        return Err(IngestError::bad_param(
            "unseen_frac",
            p.unseen_frac,
            "a fraction in [0, 1]",
        ));
    }
    check_fractions(p.test_frac, p.val_frac)
}

fn bad_value(table: &CsvTable, line: u64, field: &str, found: &str, expected: &str) -> IngestError {
    IngestError::BadValue {
        path: table.path.clone(),
        line,
        field: field.to_string(),
        found: found.to_string(),
        expected: expected.to_string(),
    }
}

fn parse_int(table: &CsvTable, line: u64, field: &str, raw: &str) -> Result<i64, IngestError> {
    raw.trim()
        .parse::<i64>()
        .map_err(|_| bad_value(table, line, field, raw, "an integer"))
}

/// The conversation's topic from summary.csv.
fn read_topic(path: &Path) -> Result<String, IngestError> {
    for (line, key, value) in read_key_values(path)? {
        if key == "topic" {
            let topic = value.trim().to_string();
            if topic.is_empty() {
                return Err(IngestError::BadValue {
                    path: path.to_path_buf(),
                    line,
                    field: "topic".to_string(),
                    found: value,
                    expected: "a non-empty topic".to_string(),
                });
            }
            return Ok(topic);
        }
    }
    Err(IngestError::MissingKey {
        path: path.to_path_buf(),
        key: "topic".to_string(),
    })
}

/// A usable statement.
struct Statement {
    comment_id: String,
    text: String,
    item_id: String,
}

/// The newer export's flag columns (`is-meta`, `is-seed`): true, false, 1, 0 or empty.
fn parse_flag(table: &CsvTable, line: u64, field: &str, raw: &str) -> Result<bool, IngestError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "f" => Ok(false),
        "1" | "true" | "t" => Ok(true),
        _ => Err(bad_value(
            table,
            line,
            field,
            raw,
            "true or false (or 1 / 0)",
        )),
    }
}

/// comment-id → statement, for the statements no rule leaves out; the counts go to `report`.
fn read_statements(
    path: &Path,
    keep_meta: bool,
    report: &mut Report,
) -> Result<HashMap<String, Statement>, IngestError> {
    let table = read_csv(path, &["comment-id", "moderated", "comment-body"])?;
    let mut lines: HashMap<String, u64> = HashMap::new();
    let mut out = HashMap::new();
    for (line, rec) in &table.records {
        report.statements += 1;
        let cid = table.get(rec, "comment-id").trim().to_string();
        if cid.is_empty() {
            return Err(bad_value(&table, *line, "comment-id", "", "a comment id"));
        }
        if let Some(first) = lines.insert(cid.clone(), *line) {
            return Err(bad_value(
                &table,
                *line,
                "comment-id",
                &cid,
                &format!("an id not already used on line {first}"),
            ));
        }
        let raw = table.get(rec, "moderated");
        let moderated = parse_int(&table, *line, "moderated", raw)?;
        if !(-1..=1).contains(&moderated) {
            return Err(bad_value(&table, *line, "moderated", raw, "-1, 0 or 1"));
        }
        let meta = match table.get_optional(rec, "is-meta") {
            Some(raw) => parse_flag(&table, *line, "is-meta", raw)?,
            None => false,
        };
        let text = table.get(rec, "comment-body").trim().to_string();
        if moderated == -1 {
            report.moderated_out += 1;
            continue;
        }
        if text.is_empty() {
            report.empty += 1;
            continue;
        }
        if meta {
            report.meta += 1;
            if !keep_meta {
                continue;
            }
        }
        let item_id = content_id(text.as_bytes());
        out.insert(
            cid.clone(),
            Statement {
                comment_id: cid,
                text,
                item_id,
            },
        );
    }
    Ok(out)
}

/// Below this a `timestamp` reads as seconds since 1970 (10^11 ms is March 1973; 10^11 s is
/// the year 5138).
const SECONDS_BELOW: i64 = 100_000_000_000;

/// The latest vote of one (voter, statement): its timestamp, the vote, and whether another row
/// at that same timestamp holds a different vote.
struct Latest {
    ts: i64,
    vote: i64,
    conflict: bool,
}

/// (voter, comment-id) → latest vote (1, 0 or −1), or None when rows at the latest timestamp
/// disagree. Independent of row order. Row count and timestamp range go to `report`.
fn read_latest_votes(
    path: &Path,
    report: &mut Report,
) -> Result<BTreeMap<(String, String), Option<i64>>, IngestError> {
    let table = read_csv(path, &["timestamp", "comment-id", "voter-id", "vote"])?;
    let mut latest: BTreeMap<(String, String), Latest> = BTreeMap::new();
    let mut max_ts = i64::MIN;
    for (line, rec) in &table.records {
        let ts = parse_int(&table, *line, "timestamp", table.get(rec, "timestamp"))?;
        let raw = table.get(rec, "vote");
        let vote = parse_int(&table, *line, "vote", raw)?;
        if !(-1..=1).contains(&vote) {
            return Err(bad_value(
                &table,
                *line,
                "vote",
                raw,
                "1 (agree), -1 (disagree) or 0 (pass)",
            ));
        }
        let voter = table.get(rec, "voter-id").trim().to_string();
        let cid = table.get(rec, "comment-id").trim().to_string();
        if voter.is_empty() {
            return Err(bad_value(&table, *line, "voter-id", "", "a voter id"));
        }
        report.vote_rows += 1;
        max_ts = max_ts.max(ts);
        let slot = latest.entry((voter, cid)).or_insert(Latest {
            ts,
            vote,
            conflict: false,
        });
        if ts > slot.ts {
            *slot = Latest {
                ts,
                vote,
                conflict: false,
            };
        } else if ts == slot.ts && vote != slot.vote {
            slot.conflict = true;
        }
    }
    if max_ts < SECONDS_BELOW {
        report.seconds_max = Some(max_ts);
    }
    Ok(latest
        .into_iter()
        .map(|(k, l)| (k, (!l.conflict).then_some(l.vote)))
        .collect())
}

/// The columns of `participants-votes.csv` that are not comment ids.
const WIDE_FIXED: [&str; 7] = [
    "participant",
    "xid",
    "group-id",
    "n-comments",
    "n-votes",
    "n-agree",
    "n-disagree",
];

/// What `participants-votes.csv` holds: each participant's latest votes (as
/// [`read_latest_votes`] gives them, never conflicting) and group.
struct Wide {
    votes: BTreeMap<(String, String), Option<i64>>,
    /// participant → `group-id`, for participants with a group.
    groups: BTreeMap<String, String>,
}

/// Reads the wide export. Empty cells are no vote; a cell counts as one vote row in `report`.
fn read_wide(path: &Path, report: &mut Report) -> Result<Wide, IngestError> {
    let table = read_csv(path, &["participant", "group-id"])?;
    // (column index, comment id) of the comment columns.
    let mut comments: Vec<(usize, String)> = Vec::new();
    for (i, name) in table.header.iter().enumerate() {
        if WIDE_FIXED.contains(&name.as_str()) {
            continue;
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_digit()) {
            return Err(IngestError::BadValue {
                path: path.to_path_buf(),
                line: 1,
                field: format!("column {}", i + 1),
                found: name.clone(),
                expected: format!("a comment id (digits) or one of {}", WIDE_FIXED.join(", ")),
            });
        }
        comments.push((i, name.clone()));
    }
    let mut wide = Wide {
        votes: BTreeMap::new(),
        groups: BTreeMap::new(),
    };
    let mut lines: HashMap<String, u64> = HashMap::new();
    for (line, rec) in &table.records {
        let voter = table.get(rec, "participant").trim().to_string();
        if voter.is_empty() {
            return Err(bad_value(
                &table,
                *line,
                "participant",
                "",
                "a participant id",
            ));
        }
        if let Some(first) = lines.insert(voter.clone(), *line) {
            return Err(bad_value(
                &table,
                *line,
                "participant",
                &voter,
                &format!("an id not already used on line {first}"),
            ));
        }
        let group = table.get(rec, "group-id").trim();
        if !group.is_empty() {
            wide.groups.insert(voter.clone(), group.to_string());
        }
        for (i, cid) in &comments {
            let raw = rec.get(*i).unwrap_or("");
            if raw.trim().is_empty() {
                continue;
            }
            let vote = parse_int(&table, *line, cid, raw)?;
            if !(-1..=1).contains(&vote) {
                return Err(bad_value(
                    &table,
                    *line,
                    cid,
                    raw,
                    "1 (agree), -1 (disagree), 0 (pass) or nothing",
                ));
            }
            report.vote_rows += 1;
            wide.votes.insert((voter.clone(), cid.clone()), Some(vote));
        }
    }
    Ok(wide)
}

/// What a `polis` stage read, what each rule left out and what it kept: the stage summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// The file the votes were read from (`votes.csv` or `participants-votes.csv`).
    pub votes_from: String,
    /// Rows of comments.csv.
    pub statements: usize,
    /// Statements moderated out (`moderated` = −1).
    pub moderated_out: usize,
    /// Statements with an empty body (and not moderated out).
    pub empty: usize,
    /// Statements marked `is-meta` (and neither moderated out nor empty).
    pub meta: usize,
    /// Whether meta statements were kept (`keep_meta`).
    pub keep_meta: bool,
    /// Rows of votes.csv, or non-empty vote cells of participants-votes.csv.
    pub vote_rows: usize,
    /// Distinct (voter, statement) keys among them.
    pub vote_keys: usize,
    /// Keys dropped because rows at their latest timestamp hold different votes.
    pub conflicting: usize,
    /// Keys on statements left out above or missing from comments.csv.
    pub on_left_out: usize,
    /// Keys whose latest vote is a pass (0), on kept statements.
    pub passes: usize,
    /// The largest timestamp, when timestamps look like seconds rather than milliseconds.
    pub seconds_max: Option<i64>,
    /// Distinct voters in votes.csv.
    pub voters: usize,
    /// Voters with fewer than `min_pairs_per_user` agree-over-disagree pairs.
    pub few_pairs: usize,
    /// The floor they missed.
    pub min_pairs_per_user: usize,
    /// Voters kept, and how many of them are unseen.
    pub kept_voters: usize,
    pub unseen_voters: usize,
    /// Pairs left out by `max_pairs_per_user`.
    pub capped: usize,
    /// Pairs of seen voters left out by `split_by: statement` (statements in different parts).
    pub crossed: usize,
    /// Pairs kept.
    pub pairs: usize,
}

impl Report {
    /// One line for the stage summary: each count with the rule behind it.
    pub fn summary(&self) -> String {
        let meta = if self.keep_meta {
            format!("{} meta kept (keep_meta)", self.meta)
        } else {
            format!("{} meta left out", self.meta)
        };
        let mut s = format!(
            "statements {}: {} moderated out, {} empty, {meta}; \
             votes ({}) {} {}, {} (voter, statement): {} dropped for different votes at one timestamp, \
             {} on left-out statements, {} passes; \
             voters {}: {} kept ({} unseen), {} under min_pairs_per_user {}",
            self.statements,
            self.moderated_out,
            self.empty,
            self.votes_from,
            self.vote_rows,
            if self.votes_from == WIDE_FILE {
                "cells"
            } else {
                "rows"
            },
            self.vote_keys,
            self.conflicting,
            self.on_left_out,
            self.passes,
            self.voters,
            self.kept_voters,
            self.unseen_voters,
            self.few_pairs,
            self.min_pairs_per_user,
        );
        s += &format!("; {} pairs", self.pairs);
        if self.crossed > 0 {
            s += &format!(
                " ({} across split parts left out by split_by statement)",
                self.crossed
            );
        }
        if self.capped > 0 {
            s += &format!(" ({} more left out by max_pairs_per_user)", self.capped);
        }
        s
    }

    /// Warnings worth showing even when quiet (timestamps in seconds).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(max) = self.seconds_max {
            out.push(format!(
                "votes.csv: timestamps look like seconds, not milliseconds (the largest is {max}): \
                 votes changed within one second cannot be ordered, so {} (voter, statement) \
                 with different votes at their latest timestamp were dropped",
                self.conflicting
            ));
        }
        out
    }
}

/// Sort key for voter and comment ids: numeric ids in numeric order, then the rest as text.
fn id_key(v: &str) -> (u64, String) {
    (v.parse::<u64>().unwrap_or(u64::MAX), v.to_string())
}

/// Reads the conversation and builds its comparisons (see [`ingest_with_report`] for the
/// counts of what was left out).
pub fn ingest(p: &Params) -> Result<IngestBatch, IngestError> {
    ingest_with_report(p).map(|(batch, _)| batch)
}

/// Reads the conversation and builds its comparisons, with what each rule left out.
pub fn ingest_with_report(p: &Params) -> Result<(IngestBatch, Report), IngestError> {
    validate(p)?;
    let conv = conversation(p)?;
    let dataset = format!("polis/{conv}");
    for path in input_files(p) {
        if !path.exists() {
            return Err(IngestError::MissingFile { path });
        }
    }
    let votes_path = votes_file(&p.dir);
    let wide_path = p.dir.join(WIDE_FILE);
    let mut report = Report {
        votes_from: votes_path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        keep_meta: p.keep_meta,
        min_pairs_per_user: p.min_pairs_per_user,
        ..Report::default()
    };
    let topic = read_topic(&p.dir.join("summary.csv"))?;
    let statements = read_statements(&p.dir.join("comments.csv"), p.keep_meta, &mut report)?;
    let (votes, groups) = if votes_path == wide_path {
        let wide = read_wide(&wide_path, &mut report)?;
        (wide.votes, wide.groups)
    } else {
        let votes = read_latest_votes(&votes_path, &mut report)?;
        // The wide file beside it only for the groups: its votes are not counted again.
        let groups = if wide_path.exists() {
            read_wide(&wide_path, &mut Report::default())?.groups
        } else {
            BTreeMap::new()
        };
        (votes, groups)
    };
    report.vote_keys = votes.len();

    // Per voter: agreed and disagreed items (item id → the statement standing for it).
    type Side<'a> = BTreeMap<&'a str, &'a Statement>;
    let mut by_voter: BTreeMap<String, (Side, Side)> = BTreeMap::new();
    let mut voters: BTreeSet<&str> = BTreeSet::new();
    for ((voter, cid), vote) in &votes {
        voters.insert(voter.as_str());
        let Some(vote) = vote else {
            report.conflicting += 1;
            continue;
        };
        let Some(s) = statements.get(cid) else {
            report.on_left_out += 1;
            continue;
        };
        let entry = by_voter.entry(voter.clone()).or_default();
        let side = match vote {
            1 => &mut entry.0,
            -1 => &mut entry.1,
            _ => {
                report.passes += 1;
                continue;
            }
        };
        // Among statements sharing a text, the lowest comment id stands for the item.
        let slot = side.entry(s.item_id.as_str()).or_insert(s);
        if id_key(&s.comment_id) < id_key(&slot.comment_id) {
            *slot = s;
        }
    }
    let mut eligible: Vec<(String, Vec<&Statement>, Vec<&Statement>)> = Vec::new();
    for (voter, (agreed, disagreed)) in by_voter {
        let both: BTreeSet<&str> = agreed
            .keys()
            .filter(|k| disagreed.contains_key(*k))
            .copied()
            .collect();
        let a: Vec<&Statement> = agreed
            .iter()
            .filter(|(k, _)| !both.contains(*k))
            .map(|(_, s)| *s)
            .collect();
        let d: Vec<&Statement> = disagreed
            .iter()
            .filter(|(k, _)| !both.contains(*k))
            .map(|(_, s)| *s)
            .collect();
        if a.len() * d.len() >= p.min_pairs_per_user {
            eligible.push((voter, a, d));
        }
    }
    report.voters = voters.len();
    report.kept_voters = eligible.len();
    report.few_pairs = voters.len() - eligible.len();
    if eligible.is_empty() {
        return Err(IngestError::NoData {
            path: p.dir.clone(),
            what: format!(
                "no voter has at least {} agree-over-disagree pairs\nhint: lower 'min_pairs_per_user'",
                p.min_pairs_per_user
            ),
        });
    }
    eligible.sort_by_key(|(v, _, _)| id_key(v));

    // Which voters are unseen: a seeded shuffle of the eligible voters, the first n_unseen.
    let n_unseen = ((eligible.len() as f64) * p.unseen_frac).round() as usize;
    let mut order: Vec<usize> = (0..eligible.len()).collect();
    order.shuffle(&mut rng_for(p.seed, "unseen"));
    let mut unseen = vec![false; eligible.len()];
    for &i in order.iter().take(n_unseen) {
        unseen[i] = true;
    }
    report.unseen_voters = n_unseen;

    let prompt_id = content_id(topic.as_bytes());
    let mut batch = IngestBatch::default();
    batch.prompts.push(PromptRow {
        prompt_id: prompt_id.clone(),
        text: topic,
        source: dataset.clone(),
    });
    let mut item_seen: BTreeSet<&str> = BTreeSet::new();
    for (i, (voter, agreed, disagreed)) in eligible.iter().enumerate() {
        let user_id = format!("{dataset}/{voter}");
        let mut rng = rng_for(p.seed, &format!("user:{user_id}"));
        let total = agreed.len() * disagreed.len();
        let nd = disagreed.len();
        // By statement: each statement's part first, then the pairs within one part.
        let parts = (!unseen[i] && p.split_by == SplitBy::Statement).then(|| {
            let a = assign_splits(agreed.len(), p.test_frac, p.val_frac, &mut rng);
            let d = assign_splits(nd, p.test_frac, p.val_frac, &mut rng);
            (a, d)
        });
        let candidates: Vec<usize> = match &parts {
            Some((a, d)) => (0..total).filter(|&k| a[k / nd] == d[k % nd]).collect(),
            None => (0..total).collect(),
        };
        let n_candidates = candidates.len();
        report.crossed += total - n_candidates;
        let keep: Vec<usize> = match p.max_pairs_per_user {
            Some(max) if n_candidates > max => {
                let mut picks = rand::seq::index::sample(&mut rng, n_candidates, max).into_vec();
                picks.sort_unstable();
                picks.into_iter().map(|j| candidates[j]).collect()
            }
            _ => candidates,
        };
        report.capped += n_candidates - keep.len();
        report.pairs += keep.len();
        let splits = match &parts {
            _ if unseen[i] => vec![SPLIT_UNSEEN; keep.len()],
            Some((a, _)) => keep.iter().map(|&k| a[k / nd]).collect(),
            None => assign_splits(keep.len(), p.test_frac, p.val_frac, &mut rng),
        };
        for (k, split) in keep.into_iter().zip(splits) {
            let a = agreed[k / disagreed.len()];
            let d = disagreed[k % disagreed.len()];
            for s in [a, d] {
                if item_seen.insert(&s.item_id) {
                    batch.items.push(ItemRow {
                        item_id: s.item_id.clone(),
                        kind: "text".to_string(),
                        text: Some(s.text.clone()),
                        bytes: None,
                        source: dataset.clone(),
                        parent_id: None,
                    });
                }
            }
            let (left, right, label) = orient(&a.item_id, &d.item_id, &mut rng);
            batch.pairs.push(PairRow {
                pair_id: pair_id(&user_id, Some(&prompt_id), left, right, &label.to_string()),
                user_id: user_id.clone(),
                prompt_id: Some(prompt_id.clone()),
                left_id: left.to_string(),
                right_id: right.to_string(),
                label,
                dataset: dataset.clone(),
                split: split.to_string(),
                source_ref: Some(format!("c{}>c{}", a.comment_id, d.comment_id)),
                weight: 1.0,
            });
        }
        batch.users.push(UserRow {
            user_id,
            dataset: dataset.clone(),
            group: groups.get(voter.as_str()).cloned(),
            role: if unseen[i] { ROLE_UNSEEN } else { ROLE_SEEN }.to_string(),
        });
    }
    Ok((batch, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const CONVERSATIONS: [&str; 4] = [
        "canadian-electoral-reform",
        "football-concussions",
        "scoop-hivemind.biodiversity",
        "scoop-hivemind.taxes",
    ];

    fn conv_dir(name: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/polis")).join(name)
    }

    /// An independent pass over the raw files: per voter, (agreed texts, disagreed texts) after
    /// latest-vote and moderation rules.
    fn rederive(dir: &Path) -> BTreeMap<String, (HashSet<String>, HashSet<String>)> {
        let mut comments = csv::Reader::from_path(dir.join("comments.csv")).unwrap();
        let h = comments.headers().unwrap().clone();
        let col = |name: &str| h.iter().position(|x| x == name).unwrap();
        let (cid, moderated, body) = (col("comment-id"), col("moderated"), col("comment-body"));
        let mut text_of: HashMap<String, String> = HashMap::new();
        for r in comments.records() {
            let r = r.unwrap();
            if &r[moderated] != "-1" && !r[body].trim().is_empty() {
                text_of.insert(r[cid].to_string(), r[body].trim().to_string());
            }
        }
        let mut votes = csv::Reader::from_path(dir.join("votes.csv")).unwrap();
        let h = votes.headers().unwrap().clone();
        let col = |name: &str| h.iter().position(|x| x == name).unwrap();
        let (ts, vcid, voter, vote) = (
            col("timestamp"),
            col("comment-id"),
            col("voter-id"),
            col("vote"),
        );
        // Per key: the latest timestamp and every vote cast at it.
        let mut latest: HashMap<(String, String), (u64, BTreeSet<String>)> = HashMap::new();
        for r in votes.records() {
            let r = r.unwrap();
            let t: u64 = r[ts].parse().unwrap();
            let key = (r[voter].to_string(), r[vcid].to_string());
            let e = latest.entry(key).or_insert((t, BTreeSet::new()));
            if t > e.0 {
                *e = (t, BTreeSet::new());
            }
            if t == e.0 {
                e.1.insert(r[vote].to_string());
            }
        }
        let mut out: BTreeMap<String, (HashSet<String>, HashSet<String>)> = BTreeMap::new();
        for ((v, c), (_, x)) in latest {
            let Some(text) = text_of.get(&c) else {
                continue;
            };
            if x.len() != 1 {
                continue;
            }
            let x = x.into_iter().next().unwrap();
            let e = out.entry(v).or_default();
            match x.as_str() {
                "1" => e.0.insert(text.clone()),
                "-1" => e.1.insert(text.clone()),
                _ => false,
            };
        }
        out
    }

    fn check_conversation(name: &str, params: &Params) -> (usize, usize, usize) {
        let dir = conv_dir(name);
        let expect = rederive(&dir);
        let batch = ingest(params).unwrap();
        let texts: HashMap<&str, &str> = batch
            .items
            .iter()
            .map(|i| (i.item_id.as_str(), i.text.as_deref().unwrap()))
            .collect();
        let eligible: BTreeMap<String, usize> = expect
            .iter()
            .map(|(v, (a, d))| (format!("polis/{name}/{v}"), a.len() * d.len()))
            .filter(|(_, n)| *n >= params.min_pairs_per_user)
            .collect();
        assert_eq!(batch.users.len(), eligible.len(), "{name}: users");
        let n_unseen = batch.users.iter().filter(|u| u.role == "unseen").count();
        assert_eq!(
            n_unseen,
            ((eligible.len() as f64) * 0.2).round() as usize,
            "{name}: unseen voters"
        );

        let mut per_user: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
        let mut left = 0usize;
        for pair in &batch.pairs {
            let voter = pair.user_id.rsplit('/').next().unwrap();
            let (agreed, disagreed) = &expect[voter];
            let (pref, other) = if pair.label == -1 {
                (&pair.left_id, &pair.right_id)
            } else {
                (&pair.right_id, &pair.left_id)
            };
            assert!(
                agreed.contains(texts[pref.as_str()]),
                "{name}: preferred was not agreed"
            );
            assert!(
                disagreed.contains(texts[other.as_str()]),
                "{name}: other was not disagreed"
            );
            assert_eq!(pair.dataset, format!("polis/{name}"));
            left += (pair.label == -1) as usize;
            *per_user
                .entry(&pair.user_id)
                .or_default()
                .entry(&pair.split)
                .or_default() += 1;
        }
        let roles: HashMap<&str, &str> = batch
            .users
            .iter()
            .map(|u| (u.user_id.as_str(), u.role.as_str()))
            .collect();
        for (user, n_before_cap) in &eligible {
            let splits = &per_user[user.as_str()];
            let n: usize = splits.values().sum();
            assert_eq!(
                n,
                params
                    .max_pairs_per_user
                    .map_or(*n_before_cap, |m| m.min(*n_before_cap)),
                "{user}"
            );
            if roles[user.as_str()] == "unseen" {
                assert_eq!(splits.keys().copied().collect::<Vec<_>>(), vec!["unseen"]);
            } else {
                let test = (n as f64 * 0.2).round() as usize;
                let val = (n as f64 * 0.3).round() as usize - test;
                assert_eq!(splits.get("test").copied().unwrap_or(0), test, "{user}");
                assert_eq!(splits.get("val").copied().unwrap_or(0), val, "{user}");
                assert_eq!(
                    splits.get("train").copied().unwrap_or(0),
                    n - test - val,
                    "{user}"
                );
            }
        }
        let frac = left as f64 / batch.pairs.len() as f64;
        assert!(
            (0.48..0.52).contains(&frac),
            "{name}: left preferred {frac}"
        );
        let ids: HashSet<&str> = batch.pairs.iter().map(|p| p.pair_id.as_str()).collect();
        assert_eq!(ids.len(), batch.pairs.len(), "{name}: pair ids unique");
        assert_eq!(batch.prompts.len(), 1);
        (batch.pairs.len(), batch.users.len(), n_unseen)
    }

    #[test]
    fn real_conversations_match_an_independent_count() {
        for name in CONVERSATIONS {
            let (pairs, users, unseen) = check_conversation(name, &Params::new(conv_dir(name)));
            eprintln!("polis {name}: {pairs} pairs, {users} voters kept, {unseen} unseen");
        }
    }

    #[test]
    fn split_by_statement_keeps_a_voters_test_statements_out_of_training() {
        let name = "canadian-electoral-reform";
        let dir = conv_dir(name);
        let expect = rederive(&dir);
        let by_pair = Params::new(&dir);
        let by_statement = Params {
            split_by: SplitBy::Statement,
            ..by_pair.clone()
        };
        let (batch, report) = ingest_with_report(&by_statement).unwrap();
        let (pair_batch, _) = ingest_with_report(&by_pair).unwrap();
        let texts: HashMap<&str, &str> = (batch.items.iter())
            .map(|i| (i.item_id.as_str(), i.text.as_deref().unwrap()))
            .collect();
        // Per voter and part: the agreed and the disagreed statements its pairs use.
        type Sides<'a> = (BTreeSet<&'a str>, BTreeSet<&'a str>);
        let parts = |b: &'_ IngestBatch| {
            let mut out: BTreeMap<String, BTreeMap<String, (Sides, usize)>> = BTreeMap::new();
            for pair in &b.pairs {
                let (pref, other) = if pair.label == -1 {
                    (&pair.left_id, &pair.right_id)
                } else {
                    (&pair.right_id, &pair.left_id)
                };
                let e = (out.entry(pair.user_id.clone()).or_default())
                    .entry(pair.split.clone())
                    .or_default();
                e.0 .0.insert(texts[pref.as_str()]);
                e.0 .1.insert(texts[other.as_str()]);
                e.1 += 1;
            }
            out
        };
        let (got, before) = (parts(&batch), parts(&pair_batch));
        let roles: HashMap<&str, &str> = (batch.users.iter())
            .map(|u| (u.user_id.as_str(), u.role.as_str()))
            .collect();
        let (mut seen, mut crossed, mut overlapping_before) = (0, 0, 0);
        for (user, splits) in &got {
            if roles[user.as_str()] == "unseen" {
                continue;
            }
            seen += 1;
            let voter = user.rsplit('/').next().unwrap();
            let (agreed, disagreed) = &expect[voter];
            let statements = |part: &str| -> BTreeSet<&str> {
                (splits.get(part).into_iter())
                    .flat_map(|((a, d), _)| a.iter().chain(d))
                    .copied()
                    .collect()
            };
            let (test, val, train) = (statements("test"), statements("val"), statements("train"));
            assert!(test.is_disjoint(&train) && test.is_disjoint(&val), "{user}");
            assert!(val.is_disjoint(&train), "{user}");
            // Every pair within a part is there, and the parts hold the fractions' counts of
            // the voter's agreed and disagreed statements (where the other side is not empty).
            let fractions = |n: usize| {
                let test = (n as f64 * 0.2).round() as usize;
                (test, (n as f64 * 0.3).round() as usize - test)
            };
            let (a_test, a_val) = fractions(agreed.len());
            let (d_test, d_val) = fractions(disagreed.len());
            let mut pairs = 0;
            for (part, want_a, want_d) in [
                ("test", a_test, d_test),
                ("val", a_val, d_val),
                (
                    "train",
                    agreed.len() - a_test - a_val,
                    disagreed.len() - d_test - d_val,
                ),
            ] {
                let Some(((a, d), n)) = splits.get(part) else {
                    assert_eq!(want_a * want_d, 0, "{user} {part}");
                    continue;
                };
                assert_eq!((a.len(), d.len()), (want_a, want_d), "{user} {part}");
                assert_eq!(*n, a.len() * d.len(), "{user} {part}");
                pairs += n;
            }
            crossed += agreed.len() * disagreed.len() - pairs;
            // Split by pair, the same voter's test pairs reuse training statements.
            let old = &before[user];
            let old_statements = |part: &str| -> BTreeSet<&str> {
                (old.get(part).into_iter())
                    .flat_map(|((a, d), _)| a.iter().chain(d))
                    .copied()
                    .collect()
            };
            overlapping_before +=
                usize::from(!old_statements("test").is_disjoint(&old_statements("train")));
        }
        assert_eq!(report.crossed, crossed);
        assert!(seen > 100, "{seen}");
        assert!(
            overlapping_before > seen * 9 / 10,
            "{overlapping_before} of {seen}"
        );
        // Unseen voters' pairs do not depend on how seen voters are split.
        let unseen_pairs = |b: &IngestBatch| -> Vec<PairRow> {
            (b.pairs.iter())
                .filter(|p| p.split == "unseen")
                .cloned()
                .collect()
        };
        assert_eq!(unseen_pairs(&batch), unseen_pairs(&pair_batch));
        assert!(!unseen_pairs(&batch).is_empty());
    }

    #[test]
    fn cap_limits_pairs_per_voter() {
        let name = "canadian-electoral-reform";
        let mut p = Params::new(conv_dir(name));
        p.max_pairs_per_user = Some(50);
        let (pairs, users, _) = check_conversation(name, &p);
        eprintln!("polis {name} capped at 50: {pairs} pairs, {users} voters");
        assert!(pairs <= users * 50);
    }

    #[test]
    fn topic_is_the_prompt_and_runs_repeat() {
        let p = Params::new(conv_dir("scoop-hivemind.taxes"));
        let a = ingest(&p).unwrap();
        assert_eq!(a.prompts[0].text, "Tax HiveMind Window");
        let b = ingest(&p).unwrap();
        assert_eq!(a.pairs, b.pairs);
        let c = ingest(&Params { seed: 1, ..p }).unwrap();
        assert_ne!(a.pairs, c.pairs);
        assert!(a.users[0]
            .user_id
            .starts_with("polis/scoop-hivemind.taxes/"));
    }

    fn fixture(dir: &Path) {
        std::fs::write(
            dir.join("summary.csv"),
            "topic,Tiny talk\nurl,https://example.org\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("comments.csv"),
            "timestamp,datetime,comment-id,author-id,agrees,disagrees,moderated,comment-body\n\
             1,x,0,0,0,0,1,Alpha\n2,x,1,0,0,0,1,\"Beta, with a comma\"\n3,x,2,0,0,0,-1,Gamma\n\
             4,x,3,0,0,0,0,Delta\n5,x,4,0,0,0,1,Alpha\n",
        )
        .unwrap();
        // Voter 7: agrees 0 then changes to disagree; agrees 1; agrees 2 (moderated out);
        // disagrees 3; passes 4. Voter 8: agrees 0 and disagrees 4 (same text "Alpha").
        std::fs::write(
            dir.join("votes.csv"),
            "timestamp,datetime,comment-id,voter-id,vote\n\
             10,x,0,7,1\n5,x,3,7,-1\n30,x,0,7,-1\n11,x,1,7,1\n12,x,2,7,1\n13,x,4,7,0\n\
             10,x,0,8,1\n11,x,4,8,-1\n12,x,1,8,-1\n",
        )
        .unwrap();
    }

    #[test]
    fn fixture_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tiny");
        std::fs::create_dir(&dir).unwrap();
        fixture(&dir);
        let mut p = Params::new(&dir);
        p.min_pairs_per_user = 1;
        p.unseen_frac = 0.0;
        let batch = ingest(&p).unwrap();
        let got = pair_texts(&batch);
        let want = vec![
            (
                "polis/tiny/7".to_string(),
                "Beta, with a comma".to_string(),
                "Alpha".to_string(),
            ),
            (
                "polis/tiny/7".to_string(),
                "Beta, with a comma".to_string(),
                "Delta".to_string(),
            ),
        ];
        // Voter 8 agreed and disagreed with "Alpha" (two comments, one text): no Alpha pair;
        // "Beta" was disagreed but nothing else agreed, so voter 8 has no pair and is dropped.
        assert_eq!(got, want);
        assert_eq!(batch.users.len(), 1);
        assert_eq!(batch.prompts[0].text, "Tiny talk");
        assert_eq!(batch.items.len(), 3);
    }

    #[test]
    fn bad_inputs_name_file_line_and_column() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tiny");
        std::fs::create_dir(&dir).unwrap();
        let mut p = Params::new(&dir);
        p.min_pairs_per_user = 1;

        fixture(&dir);
        std::fs::remove_file(dir.join("votes.csv")).unwrap();
        let err = ingest(&p).unwrap_err();
        assert!(matches!(err, IngestError::MissingFile { .. }), "{err}");
        assert!(err.to_string().contains("votes.csv"), "{err}");

        fixture(&dir);
        std::fs::write(dir.join("comments.csv"), "").unwrap();
        let err = ingest(&p).unwrap_err();
        assert!(matches!(err, IngestError::EmptyFile { .. }), "{err}");
        assert!(err.to_string().contains("comments.csv"));

        fixture(&dir);
        std::fs::write(
            dir.join("votes.csv"),
            "timestamp,datetime,comment-id,voter-id,vote\n",
        )
        .unwrap();
        assert!(
            matches!(ingest(&p).unwrap_err(), IngestError::EmptyFile { .. }),
            "header alone is empty"
        );

        fixture(&dir);
        std::fs::write(
            dir.join("votes.csv"),
            "timestamp,datetime,comment-id,voter-id\n1,x,0,7\n",
        )
        .unwrap();
        let err = ingest(&p).unwrap_err().to_string();
        assert!(err.contains("votes.csv: missing column 'vote'"), "{err}");
        assert!(
            err.contains("hint: the header has: timestamp,datetime,comment-id,voter-id"),
            "{err}"
        );

        fixture(&dir);
        std::fs::write(
            dir.join("votes.csv"),
            "timestamp,datetime,comment-id,voter-id,vote\n1,x,0,7,1\n2,x,1,7,yes\n",
        )
        .unwrap();
        let err = ingest(&p).unwrap_err().to_string();
        assert!(
            err.contains("votes.csv:3: field 'vote' is 'yes', expected an integer"),
            "{err}"
        );

        fixture(&dir);
        std::fs::write(
            dir.join("votes.csv"),
            "timestamp,datetime,comment-id,voter-id,vote\n1,x,0,7,1\n2,x,1\n",
        )
        .unwrap();
        let err = ingest(&p).unwrap_err();
        assert!(matches!(err, IngestError::Csv { line: 3, .. }), "{err}");

        fixture(&dir);
        std::fs::write(dir.join("summary.csv"), "url,https://example.org\n").unwrap();
        let err = ingest(&p).unwrap_err().to_string();
        assert!(
            err.contains("summary.csv: no row with key 'topic'"),
            "{err}"
        );

        fixture(&dir);
        p.min_pairs_per_user = 100;
        let err = ingest(&p).unwrap_err().to_string();
        assert!(err.contains("no voter has at least 100"), "{err}");

        p.min_pairs_per_user = 20;
        p.max_pairs_per_user = Some(10);
        let err = ingest(&p).unwrap_err().to_string();
        assert!(err.contains("'max_pairs_per_user' is 10"), "{err}");
    }

    /// A conversation in the newer export's layout: `is-seed` and `is-meta` columns, and
    /// timestamps in seconds.
    fn newer_export(
        dir: &Path,
        comments: &[(u32, i32, &str, &str)],
        votes: &[(i64, u32, u32, i32)],
    ) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("summary.csv"), "topic,Newer talk\n").unwrap();
        let mut c = String::from(
            "timestamp,datetime,comment-id,author-id,agrees,disagrees,moderated,comment-body,is-seed,is-meta\n",
        );
        for (id, moderated, body, meta) in comments {
            c += &format!("1700000000,x,{id},0,0,0,{moderated},{body},false,{meta}\n");
        }
        std::fs::write(dir.join("comments.csv"), c).unwrap();
        let mut v = String::from("timestamp,datetime,comment-id,voter-id,vote\n");
        for (ts, cid, voter, vote) in votes {
            v += &format!("{ts},x,{cid},{voter},{vote}\n");
        }
        std::fs::write(dir.join("votes.csv"), v).unwrap();
    }

    /// (user, preferred text, other text) of every pair, sorted.
    fn pair_texts(batch: &IngestBatch) -> Vec<(String, String, String)> {
        let texts: HashMap<&str, &str> = batch
            .items
            .iter()
            .map(|i| (i.item_id.as_str(), i.text.as_deref().unwrap()))
            .collect();
        let mut out: Vec<(String, String, String)> = batch
            .pairs
            .iter()
            .map(|p| {
                let (a, d) = if p.label == -1 {
                    (&p.left_id, &p.right_id)
                } else {
                    (&p.right_id, &p.left_id)
                };
                (
                    p.user_id.clone(),
                    texts[a.as_str()].to_string(),
                    texts[d.as_str()].to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn equal_timestamps_do_not_depend_on_row_order() {
        let comments: Vec<(u32, i32, String, &str)> =
            (0..6).map(|c| (c, 1, format!("S{c}"), "false")).collect();
        let comments: Vec<(u32, i32, &str, &str)> = comments
            .iter()
            .map(|(c, m, b, x)| (*c, *m, b.as_str(), *x))
            .collect();
        // Oldest first: a vote per (voter, statement); every fourth key also gets a different
        // vote in the same second, the next a repeat of the same vote in the same second, the
        // next an older, different vote.
        let mut votes: Vec<(i64, u32, u32, i32)> = Vec::new();
        for voter in 1..=4u32 {
            for c in 0..6u32 {
                let ts = 1_700_000_000 + i64::from(voter * 100 + c);
                let vote = ((voter + 2 * c) % 3) as i32 - 1;
                let other = if vote == 1 { -1 } else { 1 };
                match (voter + c) % 4 {
                    0 => votes.extend([(ts, c, voter, vote), (ts, c, voter, other)]),
                    1 => votes.extend([(ts, c, voter, vote), (ts, c, voter, vote)]),
                    2 => votes.extend([(ts - 5, c, voter, other), (ts, c, voter, vote)]),
                    _ => votes.push((ts, c, voter, vote)),
                }
            }
        }
        // The expectation, from the rows above: per key the latest second and the votes cast
        // in it; a key with two different votes there gives nothing.
        let mut latest: BTreeMap<(u32, u32), (i64, BTreeSet<i32>)> = BTreeMap::new();
        for &(ts, c, voter, vote) in &votes {
            let e = latest.entry((voter, c)).or_insert((ts, BTreeSet::new()));
            if ts > e.0 {
                *e = (ts, BTreeSet::new());
            }
            if ts == e.0 {
                e.1.insert(vote);
            }
        }
        let conflicting = latest.values().filter(|(_, v)| v.len() > 1).count();
        assert!(conflicting >= 4, "the fixture plants conflicts");
        let mut want = Vec::new();
        for voter in 1..=4u32 {
            let side = |x: i32| -> Vec<u32> {
                (0..6)
                    .filter(|c| {
                        latest[&(voter, *c)].1.iter().copied().collect::<Vec<_>>() == vec![x]
                    })
                    .collect()
            };
            for a in side(1) {
                for d in side(-1) {
                    want.push((
                        format!("polis/newer/{voter}"),
                        format!("S{a}"),
                        format!("S{d}"),
                    ));
                }
            }
        }
        want.sort();

        let tmp = tempfile::tempdir().unwrap();
        let forward = tmp.path().join("a").join("newer");
        let backward = tmp.path().join("b").join("newer");
        newer_export(&forward, &comments, &votes);
        let mut newest_first = votes.clone();
        newest_first.reverse();
        newer_export(&backward, &comments, &newest_first);
        let run = |dir: &Path| {
            let mut p = Params::new(dir);
            p.min_pairs_per_user = 1;
            p.unseen_frac = 0.0;
            ingest_with_report(&p).unwrap()
        };
        let (a, ra) = run(&forward);
        let (b, rb) = run(&backward);
        assert_eq!(pair_texts(&a), want);
        assert_eq!(a.pairs, b.pairs, "row order changed the pairs");
        assert_eq!(ra, rb);
        assert_eq!(ra.conflicting, conflicting);
        assert_eq!(ra.vote_rows, votes.len());
        assert_eq!(ra.vote_keys, latest.len());
        assert!(ra.summary().contains(&format!(
            "{conflicting} dropped for different votes at one timestamp"
        )));
        let warnings = ra.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("look like seconds"), "{warnings:?}");
    }

    #[test]
    fn meta_statements_are_left_out_unless_kept() {
        // S3 is meta; S4 is meta and moderated out (counted as moderated); S5 is meta "1".
        let comments = [
            (0, 1, "S0", "false"),
            (1, 1, "S1", ""),
            (2, 0, "S2", "0"),
            (3, 1, "S3", "true"),
            (4, -1, "S4", "true"),
            (5, 1, "S5", "1"),
        ];
        // Voter 1 agrees S0, S3, S5 and disagrees S1, S2, S4; voter 2 agrees S3 and disagrees S0.
        let votes = [
            (1_700_000_000, 0, 1, 1),
            (1_700_000_001, 3, 1, 1),
            (1_700_000_002, 5, 1, 1),
            (1_700_000_003, 1, 1, -1),
            (1_700_000_004, 2, 1, -1),
            (1_700_000_005, 4, 1, -1),
            (1_700_000_006, 3, 2, 1),
            (1_700_000_007, 0, 2, -1),
        ];
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("newer");
        newer_export(&dir, &comments, &votes);
        let mut p = Params::new(&dir);
        p.min_pairs_per_user = 1;
        p.unseen_frac = 0.0;
        let (batch, report) = ingest_with_report(&p).unwrap();
        let t =
            |u: u32, a: &str, d: &str| (format!("polis/newer/{u}"), a.to_string(), d.to_string());
        // Without meta: voter 1 has S0 over S1 and S2; voter 2 has nothing left.
        assert_eq!(pair_texts(&batch), vec![t(1, "S0", "S1"), t(1, "S0", "S2")]);
        assert_eq!(
            (report.statements, report.moderated_out, report.meta),
            (6, 1, 2)
        );
        assert_eq!(
            (report.voters, report.kept_voters, report.few_pairs),
            (2, 1, 1)
        );
        // Votes on S3, S4, S5 by voter 1 and on S3 by voter 2.
        assert_eq!(report.on_left_out, 4);
        assert!(
            report.summary().contains("2 meta left out"),
            "{}",
            report.summary()
        );

        p.keep_meta = true;
        let (batch, report) = ingest_with_report(&p).unwrap();
        assert_eq!(
            pair_texts(&batch),
            vec![
                t(1, "S0", "S1"),
                t(1, "S0", "S2"),
                t(1, "S3", "S1"),
                t(1, "S3", "S2"),
                t(1, "S5", "S1"),
                t(1, "S5", "S2"),
                t(2, "S3", "S0"),
            ]
        );
        assert_eq!(report.meta, 2);
        assert!(
            report.summary().contains("2 meta kept"),
            "{}",
            report.summary()
        );

        std::fs::write(
            dir.join("comments.csv"),
            "timestamp,datetime,comment-id,author-id,agrees,disagrees,moderated,comment-body,is-seed,is-meta\n1,x,0,0,0,0,1,S0,false,maybe\n",
        )
        .unwrap();
        let err = ingest(&p).unwrap_err().to_string();
        assert!(
            err.contains("comments.csv:2: field 'is-meta' is 'maybe'"),
            "{err}"
        );
    }

    /// What the report should say for a real conversation, counted here from the files.
    #[test]
    fn report_counts_real_conversations_independently() {
        for name in CONVERSATIONS {
            let dir = conv_dir(name);
            let mut comments = csv::Reader::from_path(dir.join("comments.csv")).unwrap();
            let h = comments.headers().unwrap().clone();
            let col = |n: &str| h.iter().position(|x| x == n);
            let (cid, moderated, body) = (
                col("comment-id").unwrap(),
                col("moderated").unwrap(),
                col("comment-body").unwrap(),
            );
            let meta_col = col("is-meta");
            let (mut statements, mut moderated_out, mut empty, mut meta) = (0, 0, 0, 0);
            let mut kept: HashSet<String> = HashSet::new();
            for r in comments.records() {
                let r = r.unwrap();
                statements += 1;
                let is_meta = meta_col.is_some_and(|i| matches!(&r[i], "true" | "1"));
                if &r[moderated] == "-1" {
                    moderated_out += 1;
                } else if r[body].trim().is_empty() {
                    empty += 1;
                } else if is_meta {
                    meta += 1;
                } else {
                    kept.insert(r[cid].to_string());
                }
            }
            let mut votes = csv::Reader::from_path(dir.join("votes.csv")).unwrap();
            let mut rows = 0;
            let mut latest: HashMap<(String, String), (i64, BTreeSet<String>)> = HashMap::new();
            for r in votes.records() {
                let r = r.unwrap();
                rows += 1;
                let t: i64 = r[0].parse().unwrap();
                let e = latest
                    .entry((r[3].to_string(), r[2].to_string()))
                    .or_insert((t, BTreeSet::new()));
                if t > e.0 {
                    *e = (t, BTreeSet::new());
                }
                if t == e.0 {
                    e.1.insert(r[4].to_string());
                }
            }
            let conflicting = latest.values().filter(|(_, v)| v.len() > 1).count();
            let settled = latest.iter().filter(|(_, (_, v))| v.len() == 1);
            let on_left_out = settled
                .clone()
                .filter(|((_, c), _)| !kept.contains(c))
                .count();
            let passes = settled
                .filter(|((_, c), (_, v))| kept.contains(c) && v.contains("0"))
                .count();
            let voters: HashSet<&str> = latest.keys().map(|(v, _)| v.as_str()).collect();
            let eligible = rederive(&dir)
                .values()
                .filter(|(a, d)| a.len() * d.len() >= 20)
                .count();

            let (_, report) = ingest_with_report(&Params::new(&dir)).unwrap();
            assert_eq!(
                (
                    report.statements,
                    report.moderated_out,
                    report.empty,
                    report.meta
                ),
                (statements, moderated_out, empty, meta),
                "{name}: statements"
            );
            assert_eq!(
                (report.vote_rows, report.vote_keys, report.conflicting),
                (rows, latest.len(), conflicting),
                "{name}: votes"
            );
            assert_eq!(
                (report.on_left_out, report.passes),
                (on_left_out, passes),
                "{name}"
            );
            assert_eq!(
                (report.voters, report.kept_voters, report.few_pairs),
                (voters.len(), eligible, voters.len() - eligible),
                "{name}: voters"
            );
            // Polis's own exports write milliseconds: no warning.
            assert!(
                report.warnings().is_empty(),
                "{name}: {:?}",
                report.warnings()
            );
            eprintln!("polis {name}: {}", report.summary());
        }
    }

    #[test]
    fn params_round_trip_through_yaml() {
        let p: Params =
            serde_yaml::from_str("dir: data/polis/football-concussions\nmax_pairs_per_user: 200\n")
                .unwrap();
        let want = Params {
            max_pairs_per_user: Some(200),
            ..Params::new("data/polis/football-concussions")
        };
        assert_eq!(p, want);
        let back: Params = serde_yaml::from_str(&serde_yaml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(serde_yaml::from_str::<Params>("dir: x\nmin_pairs: 3\n")
            .unwrap_err()
            .to_string()
            .contains("min_pairs"));
        // The default split leaves no `split_by` in the written parameters (so stores built
        // before it keep their stage fingerprints); `statement` round-trips.
        assert!(!serde_yaml::to_string(&p).unwrap().contains("split_by"));
        let by_statement: Params = serde_yaml::from_str("dir: x\nsplit_by: statement\n").unwrap();
        assert_eq!(by_statement.split_by, SplitBy::Statement);
        let text = serde_yaml::to_string(&by_statement).unwrap();
        assert!(text.contains("split_by: statement"), "{text}");
        let e = serde_yaml::from_str::<Params>("dir: x\nsplit_by: voter\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pair") && e.contains("statement"), "{e}");
        assert_eq!(dataset_name(&p).unwrap(), "polis/football-concussions");
        assert_eq!(
            input_files(&p),
            vec![
                p.dir.join("summary.csv"),
                p.dir.join("comments.csv"),
                p.dir.join("votes.csv")
            ]
        );
    }
}
