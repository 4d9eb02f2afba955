//! `persona`: the semi-synthetic Persona dataset of PAL App. D.4, built from the Anthropic
//! persona statement files in `<dir>`.
//!
//! A persona is named by its file's stem (`agreeableness` reads `<dir>/agreeableness.jsonl`,
//! `believes-in-gun-rights` reads `believes-in-gun-rights.jsonl`); the paper's short names
//! still work for the `interest-in-*` files (`art` reads `interest-in-art.jsonl` when there is
//! no `art.jsonl`). A name with neither file is an error that lists the stems the folder holds.
//!
//! Statements are pooled from the K* named files (deduplicated by their `question` text). Each
//! synthetic user holds one persona p and answers " Yes" to a statement exactly when the
//! statement agrees with p's persona, i.e. it appears in p's own file with
//! `answer_matching_behavior` " Yes"; to every other statement the user answers " No". That is
//! the paper's "a user answers Yes exactly when the statement agrees with the user's own
//! persona": a statement that matches persona q is answered " Yes" only by q's users, and a
//! statement that does not match its own persona q ("I have no interest in art") is answered
//! " No" by everyone — it does not express an interest in p either, so reading it as agreement
//! with some other persona would invent preferences the data does not state.
//!
//! A comparison is context = the statement's `question` field (a prompt), items = the two
//! texts " Yes" and " No" (kind "text"; two items in all), preferred = the user's answer, put
//! on a random side. Each seen user answers `queries_per_user` distinct statements drawn at
//! random from the pool, split per user into "test" (`test_frac`), "val" (`val_frac`) and
//! "train"; each unseen user answers `unseen_queries_per_user`, all "unseen". Users are numbered
//! seen first, persona by persona (`persona/u0000` …), then the unseen ones; `users.group` is
//! the persona name. Only prompts some comparison uses are emitted; `source_ref` of a pair is
//! the statement's `file:line`.
//!
//! Shared helpers (errors, JSON lines, seeded streams, splits) are in `common.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::common::{
    assign_splits, check_dataset, check_fractions, json_str, orient, read_json_lines, rng_for,
    IngestError, ROLE_SEEN, ROLE_UNSEEN, SPLIT_UNSEEN,
};
use crate::store::records::{
    content_id, pair_id, IngestBatch, ItemRow, PairRow, PromptRow, UserRow,
};

/// The answer text a user gives to agree.
pub const YES: &str = " Yes";
/// The answer text a user gives to disagree.
pub const NO: &str = " No";

/// Parameters of a `persona` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The folder holding the persona files (`<stem>.jsonl`). Required.
    pub dir: PathBuf,
    /// The K* personas, by file stem (`agreeableness`), or by short name for the
    /// `interest-in-<name>.jsonl` files. Default [art, literature, math, music] (the paper's
    /// K* = 4).
    #[serde(default = "default_personas")]
    pub personas: Vec<String>,
    /// Seen users per persona (N). Default 50.
    #[serde(default = "default_users_per_persona")]
    pub users_per_persona: usize,
    /// Statements each seen user answers (n_p). Default 200.
    #[serde(default = "default_queries_per_user")]
    pub queries_per_user: usize,
    /// Unseen users per persona. Default 10.
    #[serde(default = "default_unseen_users_per_persona")]
    pub unseen_users_per_persona: usize,
    /// Statements each unseen user answers (n_p,unseen). Default 100.
    #[serde(default = "default_unseen_queries_per_user")]
    pub unseen_queries_per_user: usize,
    /// Fraction of a seen user's comparisons tagged "test". Default 0.2.
    #[serde(default = "default_test_frac")]
    pub test_frac: f64,
    /// Fraction of a seen user's comparisons tagged "val". Default 0.1.
    #[serde(default = "default_val_frac")]
    pub val_frac: f64,
    /// Seed of every random draw. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// The `dataset` column and user-id prefix. Default "persona".
    #[serde(default = "default_dataset")]
    pub dataset: String,
}

fn default_personas() -> Vec<String> {
    ["art", "literature", "math", "music"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_users_per_persona() -> usize {
    50
}
fn default_queries_per_user() -> usize {
    200
}
fn default_unseen_users_per_persona() -> usize {
    10
}
fn default_unseen_queries_per_user() -> usize {
    100
}
fn default_test_frac() -> f64 {
    0.2
}
fn default_val_frac() -> f64 {
    0.1
}
fn default_dataset() -> String {
    "persona".to_string()
}

impl Params {
    /// Parameters with every default, reading from `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Params {
            dir: dir.into(),
            personas: default_personas(),
            users_per_persona: default_users_per_persona(),
            queries_per_user: default_queries_per_user(),
            unseen_users_per_persona: default_unseen_users_per_persona(),
            unseen_queries_per_user: default_unseen_queries_per_user(),
            test_frac: default_test_frac(),
            val_frac: default_val_frac(),
            seed: 0,
            dataset: default_dataset(),
        }
    }
}

/// The file one persona's statements are read from: `<dir>/<name>.jsonl` when it exists,
/// else `<dir>/interest-in-<name>.jsonl` when that exists; neither is an error listing the
/// persona files the folder holds.
pub fn persona_file(dir: &Path, name: &str) -> Result<PathBuf, IngestError> {
    let own = dir.join(format!("{name}.jsonl"));
    if own.is_file() {
        return Ok(own);
    }
    let short = dir.join(format!("interest-in-{name}.jsonl"));
    if short.is_file() {
        return Ok(short);
    }
    let stems = persona_stems(dir);
    let holds = if stems.is_empty() {
        "no .jsonl files".to_string()
    } else {
        const SHOWN: usize = 40;
        let mut list = stems
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if stems.len() > SHOWN {
            list += &format!(", … ({} more)", stems.len() - SHOWN);
        }
        list
    };
    Err(IngestError::NoData {
        path: dir.to_path_buf(),
        what: format!(
            "no persona '{name}': neither '{name}.jsonl' nor 'interest-in-{name}.jsonl' is there\nhint: the folder holds {holds} (name a persona by its file stem; 'interest-in-<name>' files also by <name>)"
        ),
    })
}

/// The stems of the `.jsonl` files in `dir`, sorted (empty when it cannot be read).
pub fn persona_stems(dir: &Path) -> Vec<String> {
    let mut stems: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".jsonl").map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    stems.sort();
    stems
}

/// The statement files of the chosen personas (for a name with no file, the path its own
/// stem would have, so that a missing input is named).
pub fn input_files(params: &Params) -> Vec<PathBuf> {
    params
        .personas
        .iter()
        .map(|p| {
            persona_file(&params.dir, p).unwrap_or_else(|_| params.dir.join(format!("{p}.jsonl")))
        })
        .collect()
}

/// One pooled statement.
struct Statement {
    question: String,
    /// Persona indices whose file lists it with answer_matching_behavior " Yes".
    agrees_with: Vec<usize>,
    /// "file:line" of its first occurrence.
    source_ref: String,
}

fn validate(p: &Params) -> Result<(), IngestError> {
    if p.personas.is_empty() {
        return Err(IngestError::bad_param(
            "personas",
            "[]",
            "at least one persona name",
        ));
    }
    let mut seen = BTreeMap::new();
    for name in &p.personas {
        if name.is_empty() || name.contains(['/', '\\']) || name.chars().any(char::is_whitespace) {
            return Err(IngestError::bad_param(
                "personas",
                format!("'{name}'"),
                "names without slashes or spaces",
            ));
        }
        if seen.insert(name.as_str(), ()).is_some() {
            return Err(IngestError::bad_param(
                "personas",
                format!("'{name}' twice"),
                "each persona once",
            ));
        }
    }
    if p.users_per_persona == 0 {
        return Err(IngestError::bad_param("users_per_persona", 0, "at least 1"));
    }
    if p.queries_per_user == 0 {
        return Err(IngestError::bad_param("queries_per_user", 0, "at least 1"));
    }
    if p.unseen_users_per_persona > 0 && p.unseen_queries_per_user == 0 {
        return Err(IngestError::bad_param(
            "unseen_queries_per_user",
            0,
            "at least 1 when there are unseen users",
        ));
    }
    check_dataset(&p.dataset)?;
    check_fractions(p.test_frac, p.val_frac)
}

/// Reads and pools the statements of the chosen personas.
fn read_pool(p: &Params) -> Result<Vec<Statement>, IngestError> {
    let mut pool: Vec<Statement> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    // (statement, persona) → (line, matches) to catch a file that contradicts itself.
    let mut answers: HashMap<(usize, usize), (u64, bool)> = HashMap::new();
    for (k, name) in p.personas.iter().enumerate() {
        let path = persona_file(&p.dir, name)?;
        let file_name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (line, record) in read_json_lines(&path)? {
            let question = json_str(&path, line, &record, "question")?;
            let matching = json_str(&path, line, &record, "answer_matching_behavior")?;
            let matches = match matching {
                YES => true,
                NO => false,
                other => {
                    return Err(IngestError::BadValue {
                        path: path.clone(),
                        line,
                        field: "answer_matching_behavior".to_string(),
                        found: other.to_string(),
                        expected: "\" Yes\" or \" No\"".to_string(),
                    })
                }
            };
            if question.trim().is_empty() {
                return Err(IngestError::BadValue {
                    path: path.clone(),
                    line,
                    field: "question".to_string(),
                    found: question.to_string(),
                    expected: "a non-empty question".to_string(),
                });
            }
            let s = *index.entry(question.to_string()).or_insert_with(|| {
                pool.push(Statement {
                    question: question.to_string(),
                    agrees_with: Vec::new(),
                    source_ref: format!("{file_name}:{line}"),
                });
                pool.len() - 1
            });
            if let Some(&(first, before)) = answers.get(&(s, k)) {
                if before != matches {
                    return Err(IngestError::BadValue {
                        path: path.clone(),
                        line,
                        field: "answer_matching_behavior".to_string(),
                        found: matching.to_string(),
                        expected: format!("the same answer as the same question on line {first}"),
                    });
                }
                continue;
            }
            answers.insert((s, k), (line, matches));
            if matches {
                pool[s].agrees_with.push(k);
            }
        }
    }
    Ok(pool)
}

/// Reads the persona files and builds the synthetic users' comparisons.
pub fn ingest(p: &Params) -> Result<IngestBatch, IngestError> {
    validate(p)?;
    let pool = read_pool(p)?;
    // Unseen users' statement count matters only when there are unseen users.
    let unseen_queries = if p.unseen_users_per_persona > 0 {
        p.unseen_queries_per_user
    } else {
        0
    };
    for (param, n) in [
        ("queries_per_user", p.queries_per_user),
        ("unseen_queries_per_user", unseen_queries),
    ] {
        if n > pool.len() {
            return Err(IngestError::bad_param(
                param,
                n,
                &format!(
                    "at most {}, the distinct statements of the chosen personas",
                    pool.len()
                ),
            ));
        }
    }

    let yes_id = content_id(YES.as_bytes());
    let no_id = content_id(NO.as_bytes());
    let mut batch = IngestBatch::default();
    for text in [YES, NO] {
        batch.items.push(ItemRow {
            item_id: content_id(text.as_bytes()),
            kind: "text".to_string(),
            text: Some(text.to_string()),
            bytes: None,
            source: p.dataset.clone(),
            parent_id: None,
        });
    }
    let prompt_ids: Vec<String> = pool
        .iter()
        .map(|s| content_id(s.question.as_bytes()))
        .collect();
    let mut prompt_used = vec![false; pool.len()];

    // (persona index, seen?) for every user, in user-id order.
    let mut roster = Vec::new();
    for k in 0..p.personas.len() {
        roster.extend(std::iter::repeat_n((k, true), p.users_per_persona));
    }
    for k in 0..p.personas.len() {
        roster.extend(std::iter::repeat_n((k, false), p.unseen_users_per_persona));
    }
    for (u, &(k, seen)) in roster.iter().enumerate() {
        let user_id = format!("{}/u{:04}", p.dataset, u);
        let mut rng = rng_for(p.seed, &format!("user:{user_id}"));
        let n = if seen {
            p.queries_per_user
        } else {
            p.unseen_queries_per_user
        };
        let picks = rand::seq::index::sample(&mut rng, pool.len(), n).into_vec();
        let splits = if seen {
            assign_splits(n, p.test_frac, p.val_frac, &mut rng)
        } else {
            vec![SPLIT_UNSEEN; n]
        };
        for (s, split) in picks.into_iter().zip(splits) {
            let says_yes = pool[s].agrees_with.contains(&k);
            let (preferred, other) = if says_yes {
                (&yes_id, &no_id)
            } else {
                (&no_id, &yes_id)
            };
            let (left, right, label) = orient(preferred, other, &mut rng);
            prompt_used[s] = true;
            batch.pairs.push(PairRow {
                pair_id: pair_id(
                    &user_id,
                    Some(&prompt_ids[s]),
                    left,
                    right,
                    &label.to_string(),
                ),
                user_id: user_id.clone(),
                prompt_id: Some(prompt_ids[s].clone()),
                left_id: left.to_string(),
                right_id: right.to_string(),
                label,
                dataset: p.dataset.clone(),
                split: split.to_string(),
                source_ref: Some(pool[s].source_ref.clone()),
                weight: 1.0,
            });
        }
        batch.users.push(UserRow {
            user_id,
            dataset: p.dataset.clone(),
            group: Some(p.personas[k].clone()),
            role: if seen { ROLE_SEEN } else { ROLE_UNSEEN }.to_string(),
        });
    }
    for (s, statement) in pool.iter().enumerate() {
        if prompt_used[s] {
            batch.prompts.push(PromptRow {
                prompt_id: prompt_ids[s].clone(),
                text: statement.question.clone(),
                source: p.dataset.clone(),
            });
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};

    fn data_dir() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/data/persona"
        ))
    }

    /// question → [(persona, answer_matching_behavior)], read here with a plain pass over the
    /// files, independent of the stage's reader.
    fn expected_answers(personas: &[String]) -> HashMap<String, Vec<(String, String)>> {
        let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for name in personas {
            let text =
                std::fs::read_to_string(data_dir().join(format!("interest-in-{name}.jsonl")))
                    .unwrap();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                out.entry(v["question"].as_str().unwrap().to_string())
                    .or_default()
                    .push((
                        name.clone(),
                        v["answer_matching_behavior"].as_str().unwrap().to_string(),
                    ));
            }
        }
        out
    }

    #[test]
    fn real_data_labels_follow_the_files() {
        let p = Params::new(data_dir());
        let batch = ingest(&p).unwrap();
        let answers = expected_answers(&p.personas);
        assert_eq!(
            answers.len(),
            4000,
            "four files of 1,000 distinct statements"
        );
        assert_eq!(batch.users.len(), 4 * 50 + 4 * 10);
        assert_eq!(batch.pairs.len(), 4 * 50 * 200 + 4 * 10 * 100);
        assert_eq!(batch.items.len(), 2);

        let prompts: HashMap<&str, &str> = batch
            .prompts
            .iter()
            .map(|r| (r.prompt_id.as_str(), r.text.as_str()))
            .collect();
        let users: HashMap<&str, &UserRow> = batch
            .users
            .iter()
            .map(|u| (u.user_id.as_str(), u))
            .collect();
        let yes = blake3::hash(b" Yes").to_hex().to_string();
        let no = blake3::hash(b" No").to_hex().to_string();
        let mut yes_answers = 0;
        let mut left_preferred = 0;
        let mut per_user: BTreeMap<&str, (HashSet<&str>, BTreeMap<&str, usize>)> = BTreeMap::new();
        for pair in &batch.pairs {
            let user = users[pair.user_id.as_str()];
            let persona = user.group.as_deref().unwrap();
            let question = prompts[pair.prompt_id.as_deref().unwrap()];
            let expect_yes = answers[question]
                .iter()
                .any(|(name, amb)| name == persona && amb == " Yes");
            let preferred = if pair.label == -1 {
                &pair.left_id
            } else {
                &pair.right_id
            };
            let other = if pair.label == -1 {
                &pair.right_id
            } else {
                &pair.left_id
            };
            assert_eq!(
                preferred,
                if expect_yes { &yes } else { &no },
                "{question} for {persona}"
            );
            assert_eq!(other, if expect_yes { &no } else { &yes });
            yes_answers += expect_yes as usize;
            left_preferred += (pair.label == -1) as usize;
            let entry = per_user.entry(&pair.user_id).or_default();
            assert!(
                entry.0.insert(question),
                "a user answers each statement once"
            );
            *entry.1.entry(&pair.split).or_default() += 1;
        }
        let n = batch.pairs.len() as f64;
        let left = left_preferred as f64 / n;
        assert!((0.48..0.52).contains(&left), "left preferred {left}");
        // A user agrees with 500 of 4,000 pooled statements: about 1/8 of answers are " Yes".
        let yes_frac = yes_answers as f64 / n;
        assert!((0.11..0.14).contains(&yes_frac), "yes fraction {yes_frac}");
        for (user, (_, splits)) in &per_user {
            if users[user].role == "seen" {
                assert_eq!(
                    (splits["train"], splits["val"], splits["test"]),
                    (140, 20, 40),
                    "{user}"
                );
            } else {
                assert_eq!(splits.len(), 1);
                assert_eq!(splits["unseen"], 100);
            }
        }
        let mut by_group: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for u in &batch.users {
            *by_group
                .entry((u.group.as_deref().unwrap(), u.role.as_str()))
                .or_default() += 1;
        }
        assert_eq!(by_group.len(), 8);
        assert!(by_group
            .iter()
            .all(|((_, role), n)| *n == if *role == "seen" { 50 } else { 10 }));
        // Pair ids unique, prompts cover exactly the used statements.
        assert_eq!(
            batch
                .pairs
                .iter()
                .map(|p| &p.pair_id)
                .collect::<HashSet<_>>()
                .len(),
            batch.pairs.len()
        );
        let used: HashSet<&str> = batch
            .pairs
            .iter()
            .map(|p| p.prompt_id.as_deref().unwrap())
            .collect();
        assert_eq!(used.len(), batch.prompts.len());
        for prompt in &batch.prompts {
            assert_eq!(
                prompt.prompt_id,
                blake3::hash(prompt.text.as_bytes()).to_hex().to_string()
            );
        }
        eprintln!(
            "persona default: {} pairs, {} prompts, {} users, yes {:.3}, left {:.3}",
            batch.pairs.len(),
            batch.prompts.len(),
            batch.users.len(),
            yes_frac,
            left
        );
    }

    #[test]
    fn same_seed_same_pairs() {
        let mut p = Params::new(data_dir());
        p.personas = vec!["art".into(), "literature".into()];
        p.users_per_persona = 5;
        p.unseen_users_per_persona = 2;
        let a = ingest(&p).unwrap();
        let b = ingest(&p).unwrap();
        p.seed = 1;
        let c = ingest(&p).unwrap();
        assert_eq!(a.pairs, b.pairs);
        assert_eq!(a.prompts, b.prompts);
        assert_ne!(a.pairs, c.pairs);
        assert_eq!(a.users[0].user_id, "persona/u0000");
        assert_eq!(a.users[0].group.as_deref(), Some("art"));
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(format!("interest-in-{name}.jsonl")), text).unwrap();
    }

    fn line(q: &str, amb: &str) -> String {
        serde_json::json!({"question": q, "statement": q, "answer_matching_behavior": amb,
                           "answer_not_matching_behavior": if amb == " Yes" { " No" } else { " Yes" }})
        .to_string()
    }

    fn tiny(dir: &Path) -> Params {
        let mut p = Params::new(dir);
        p.personas = vec!["a".into(), "b".into()];
        p.users_per_persona = 2;
        p.queries_per_user = 3;
        p.unseen_users_per_persona = 1;
        p.unseen_queries_per_user = 2;
        p
    }

    #[test]
    fn tiny_fixture_rule() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a",
            &format!("{}\n{}\n", line("qa+", " Yes"), line("qa-", " No")),
        );
        write(
            dir.path(),
            "b",
            &format!("{}\n\n{}\n", line("qb+", " Yes"), line("qb-", " No")),
        );
        let mut p = tiny(dir.path());
        p.queries_per_user = 4;
        p.unseen_queries_per_user = 4;
        let batch = ingest(&p).unwrap();
        let prompts: HashMap<&str, &str> = batch
            .prompts
            .iter()
            .map(|r| (r.prompt_id.as_str(), r.text.as_str()))
            .collect();
        let groups: HashMap<&str, &str> = batch
            .users
            .iter()
            .map(|u| (u.user_id.as_str(), u.group.as_deref().unwrap()))
            .collect();
        let yes = blake3::hash(b" Yes").to_hex().to_string();
        for pair in &batch.pairs {
            let q = prompts[pair.prompt_id.as_deref().unwrap()];
            let g = groups[pair.user_id.as_str()];
            let says_yes = (if pair.label == -1 {
                &pair.left_id
            } else {
                &pair.right_id
            }) == &yes;
            assert_eq!(says_yes, q == format!("q{g}+"), "{g} on {q}");
        }
        assert_eq!(
            batch
                .pairs
                .iter()
                .filter(|p| p.source_ref.as_deref() == Some("interest-in-b.jsonl:3"))
                .count(),
            6
        );
    }

    #[test]
    fn bad_inputs_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = tiny(dir.path());
        write(
            dir.path(),
            "a",
            &format!("{}\n{}\n", line("qa+", " Yes"), line("qa-", " No")),
        );

        // b is missing: the error names both files looked for and lists the folder's stems.
        std::fs::write(dir.path().join("agreeableness.jsonl"), line("q", " Yes")).unwrap();
        let err = ingest(&p).unwrap_err();
        assert!(matches!(err, IngestError::NoData { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("no persona 'b': neither 'b.jsonl' nor 'interest-in-b.jsonl'"),
            "{msg}"
        );
        assert!(
            msg.contains("hint: the folder holds agreeableness, interest-in-a (name"),
            "{msg}"
        );
        std::fs::remove_file(dir.path().join("agreeableness.jsonl")).unwrap();

        // b is empty.
        write(dir.path(), "b", "\n  \n");
        let err = ingest(&p).unwrap_err();
        assert!(matches!(err, IngestError::EmptyFile { .. }), "{err}");
        assert!(err.to_string().contains("interest-in-b.jsonl"));

        // b line 2 is not JSON.
        write(
            dir.path(),
            "b",
            &format!("{}\n{{\"question\": \"x\",\n", line("qb+", " Yes")),
        );
        let err = ingest(&p).unwrap_err();
        assert!(matches!(err, IngestError::BadJson { line: 2, .. }), "{err}");
        assert!(err.to_string().contains("interest-in-b.jsonl:2:"), "{err}");

        // b line 1 lacks answer_matching_behavior.
        write(dir.path(), "b", "{\"question\": \"x\"}\n");
        let err = ingest(&p).unwrap_err().to_string();
        assert!(
            err.contains("interest-in-b.jsonl:1: missing field 'answer_matching_behavior'"),
            "{err}"
        );

        // An answer that is neither " Yes" nor " No".
        write(dir.path(), "b", &format!("{}\n", line("qb+", "Maybe")));
        let err = ingest(&p).unwrap_err().to_string();
        assert!(
            err.contains("interest-in-b.jsonl:1: field 'answer_matching_behavior' is 'Maybe'"),
            "{err}"
        );

        // A JSON line that is not an object.
        write(dir.path(), "b", "[1, 2]\n");
        let err = ingest(&p).unwrap_err().to_string();
        assert!(
            err.contains("interest-in-b.jsonl:1: not a valid JSON line: expected a JSON object"),
            "{err}"
        );

        // Too few statements for the queries asked.
        write(dir.path(), "b", &format!("{}\n", line("qb+", " Yes")));
        let mut q = p.clone();
        q.queries_per_user = 4;
        let err = ingest(&q).unwrap_err().to_string();
        assert!(
            err.contains("'queries_per_user' is 4, expected at most 3"),
            "{err}"
        );

        // Bad fractions.
        let mut q = p.clone();
        q.test_frac = 0.7;
        q.val_frac = 0.3;
        assert!(ingest(&q)
            .unwrap_err()
            .to_string()
            .contains("test_frac + val_frac"));
    }

    #[test]
    fn params_round_trip_through_yaml() {
        let p: Params =
            serde_yaml::from_str("dir: data/persona\npersonas: [art, literature]\nseed: 3\n")
                .unwrap();
        let mut want = Params::new("data/persona");
        want.personas = vec!["art".into(), "literature".into()];
        want.seed = 3;
        assert_eq!(p, want);
        let back: Params = serde_yaml::from_str(&serde_yaml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(serde_yaml::from_str::<Params>("dir: x\nusers: 3\n")
            .unwrap_err()
            .to_string()
            .contains("users"));
        assert!(
            serde_yaml::from_str::<Params>("personas: [art]\n").is_err(),
            "dir is required"
        );
        let mut real = p.clone();
        real.dir = data_dir();
        assert_eq!(
            input_files(&real),
            vec![
                data_dir().join("interest-in-art.jsonl"),
                data_dir().join("interest-in-literature.jsonl")
            ]
        );
        // A name with no file keeps the path its own stem would have, for the missing-input
        // message.
        assert_eq!(
            input_files(&p),
            vec![
                PathBuf::from("data/persona/art.jsonl"),
                PathBuf::from("data/persona/literature.jsonl")
            ]
        );
    }

    /// Persona files named by their own stems (the public set's `agreeableness.jsonl`,
    /// `believes-in-gun-rights.jsonl`), mixed with a short name for an `interest-in-*` file;
    /// an exact stem wins over the short name.
    #[test]
    fn personas_by_file_stem() {
        let dir = tempfile::tempdir().unwrap();
        let put = |stem: &str, lines: &[(&str, &str)]| {
            let text: String = lines.iter().map(|(q, a)| line(q, a) + "\n").collect();
            std::fs::write(dir.path().join(format!("{stem}.jsonl")), text).unwrap();
        };
        put("agreeableness", &[("agr+", " Yes"), ("agr-", " No")]);
        put(
            "believes-in-gun-rights",
            &[("gun+", " Yes"), ("gun-", " No")],
        );
        put("interest-in-art", &[("art+", " Yes"), ("art-", " No")]);
        // "math" exists both ways: the exact stem is read.
        put("math", &[("m-exact", " Yes")]);
        put("interest-in-math", &[("m-short", " Yes")]);

        let mut p = tiny(dir.path());
        p.personas = vec![
            "agreeableness".into(),
            "believes-in-gun-rights".into(),
            "art".into(),
            "math".into(),
        ];
        p.queries_per_user = 7;
        p.unseen_users_per_persona = 0;
        assert_eq!(
            input_files(&p),
            vec![
                dir.path().join("agreeableness.jsonl"),
                dir.path().join("believes-in-gun-rights.jsonl"),
                dir.path().join("interest-in-art.jsonl"),
                dir.path().join("math.jsonl"),
            ]
        );
        let batch = ingest(&p).unwrap();
        // 2 + 2 + 2 + 1 distinct statements; each user answers all 7.
        let texts: HashSet<&str> = batch.prompts.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(
            texts,
            HashSet::from(["agr+", "agr-", "gun+", "gun-", "art+", "art-", "m-exact"])
        );
        let groups: HashMap<&str, &str> = batch
            .users
            .iter()
            .map(|u| (u.user_id.as_str(), u.group.as_deref().unwrap()))
            .collect();
        let prompts: HashMap<&str, &str> = batch
            .prompts
            .iter()
            .map(|r| (r.prompt_id.as_str(), r.text.as_str()))
            .collect();
        let yes = blake3::hash(b" Yes").to_hex().to_string();
        // The statement each persona's users answer " Yes" to: its own file's " Yes" line.
        let agrees = HashMap::from([
            ("agreeableness", "agr+"),
            ("believes-in-gun-rights", "gun+"),
            ("art", "art+"),
            ("math", "m-exact"),
        ]);
        assert_eq!(batch.pairs.len(), 4 * 2 * 7);
        for pair in &batch.pairs {
            let q = prompts[pair.prompt_id.as_deref().unwrap()];
            let g = groups[pair.user_id.as_str()];
            let preferred = if pair.label == -1 {
                &pair.left_id
            } else {
                &pair.right_id
            };
            assert_eq!(preferred == &yes, agrees[g] == q, "{g} on {q}");
        }
        assert!(batch
            .pairs
            .iter()
            .any(|r| r.source_ref.as_deref() == Some("believes-in-gun-rights.jsonl:2")));
    }
}
