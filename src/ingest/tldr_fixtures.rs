//! Stand-in comparisons in the layout of OpenAI's summarize-from-feedback release (Reddit
//! TL;DR human feedback), for the PAL paper's TL;DR experiment (`tldr.rs`) where the release
//! cannot be downloaded: `<out>/comparisons/batch<N>.json`, JSON lines with exactly the
//! published fields and types —
//! `{"info": {"id", "post", "title", "subreddit"}, "summaries": [{"text", "policy", "note":
//! null}, …2], "choice": 0|1, "worker", "batch", "split": train|valid1|valid2, "extra":
//! {"confidence": n} or {}}` — and `<out>/manifest.json` (the spec and what was planted).
//!
//! What is planted, so that the expected result of the experiment is known:
//! - `seen_workers` workers with `top_train`, `top_train − step`, … kept (supervised-policy)
//!   train comparisons and `seen_valid` validation ones each: the seen users, in rank order;
//! - `unseen_workers` workers with `unseen_valid` validation comparisons (≥ 100) and a few
//!   train ones; `casual_workers` with fewer validation comparisons than that and many
//!   off-policy (`ppo`, `ref`, `pretrain`) train comparisons, which would outrank the seen
//!   workers if the policy filter were missing; every worker also has some off-policy ones;
//! - summaries whose length carries the signal an encoder can see: each post has six
//!   summaries, a short gist with 0 … 4 filler clauses, and one with the two clauses of the
//!   third in the other order (the same character length: every `equal_every`-th comparison
//!   uses this pair, which the stage must drop and count).
//!
//! The worker's `choice` is random: the experiment's labels are the synthetic length
//! preferences, not the workers' choices. The same spec gives the same bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::common::{rng_for, IngestError};

/// What to generate; `manifest.json` repeats it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TldrFixtureSpec {
    /// Reddit posts (each with six summaries).
    pub posts: usize,
    /// Workers meant to be the seen users.
    pub seen_workers: usize,
    /// Kept train comparisons of the busiest seen worker.
    pub top_train: usize,
    /// How many fewer each next seen worker has.
    pub step: usize,
    /// Kept validation comparisons per seen worker.
    pub seen_valid: usize,
    /// Workers meant to be the unseen users.
    pub unseen_workers: usize,
    /// Kept validation comparisons per unseen worker.
    pub unseen_valid: usize,
    /// Kept train comparisons per unseen worker.
    pub unseen_train: usize,
    /// Workers with too few validation comparisons to be unseen users.
    pub casual_workers: usize,
    /// Kept validation comparisons per casual worker.
    pub casual_valid: usize,
    /// Off-policy train comparisons per casual worker.
    pub casual_off_policy: usize,
    /// Off-policy comparisons added per seen or unseen worker.
    pub off_policy: usize,
    /// Every this many kept comparisons of a worker, one with equal-length summaries.
    pub equal_every: usize,
    pub seed: u64,
}

impl Default for TldrFixtureSpec {
    fn default() -> Self {
        TldrFixtureSpec {
            posts: 240,
            seen_workers: 10,
            top_train: 150,
            step: 6,
            seen_valid: 40,
            unseen_workers: 10,
            unseen_valid: 110,
            unseen_train: 20,
            casual_workers: 6,
            casual_valid: 60,
            casual_off_policy: 200,
            off_policy: 12,
            equal_every: 25,
            seed: 0,
        }
    }
}

/// A seen worker as planted: id and kept train comparisons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlantedWorker {
    pub worker: String,
    pub train: usize,
    pub valid: usize,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TldrManifest {
    pub spec: TldrFixtureSpec,
    /// Files written, relative to `out`.
    pub files: Vec<String>,
    pub comparisons: usize,
    /// Seen workers in rank order.
    pub seen: Vec<PlantedWorker>,
    pub unseen: Vec<PlantedWorker>,
    pub casual: Vec<PlantedWorker>,
    /// Kept comparisons with equal-length summaries, over all workers.
    pub equal_length: usize,
    pub off_policy: usize,
}

const SUPERVISED: [&str; 5] = ["sup1", "sup2", "sup4", "sup4_6b", "sup2_t0.7"];
const OFF_POLICY: [&str; 4] = [
    "sup4_ppo_rm3_kl10",
    "ref",
    "pretrain_6b",
    "sup4_ppo_rm4_kl5",
];
const SUBREDDITS: [&str; 6] = [
    "relationships",
    "AskReddit",
    "personalfinance",
    "relationship_advice",
    "legaladvice",
    "tifu",
];
const SUBJECTS: [(&str, &str); 8] = [
    ("My (24F) boyfriend (26M)", "boyfriend"),
    ("My roommate", "roommate"),
    ("My boss", "boss"),
    ("My older sister", "sister"),
    ("My best friend of ten years", "best friend"),
    ("My landlord", "landlord"),
    ("My neighbour", "neighbour"),
    ("A coworker", "coworker"),
];
const PROBLEMS: [(&str, &str); 8] = [
    ("keeps forgetting our plans", "forgets plans"),
    ("borrowed money and never paid it back", "owes me money"),
    ("reads my private messages", "reads my messages"),
    ("wants to move across the country", "wants to move away"),
    ("ignores my texts for days", "ignores my texts"),
    ("criticises everything I cook", "criticises my cooking"),
    ("plays loud music every night", "loud music at night"),
    ("took credit for my project", "took credit for my work"),
];
const DETAILS: [&str; 8] = [
    "It started a few months ago and has only gotten worse since then.",
    "I tried to bring it up once but the conversation went nowhere.",
    "Everyone I asked says I am overreacting, but it really bothers me.",
    "We used to get along really well, which makes this harder.",
    "I do not want to ruin the relationship over something small.",
    "Last week it happened again in front of other people.",
    "I have started avoiding them, which does not feel right either.",
    "Money is tight for me right now, so this matters a lot.",
];
const FILLERS: [&str; 8] = [
    "and I honestly do not know what to do about it anymore",
    "which has been going on for several months at this point",
    "even though I have tried to talk to them about it calmly",
    "so I am asking the people here for some outside advice",
    "while everyone around me seems to think it is no big deal",
    "and it is starting to affect my sleep and my work as well",
    "although I still care about them and want to keep things friendly",
    "because I feel like I am the only one who ever brings it up",
];

/// One post and its six summaries; summaries 2 and 5 have the same length.
struct Post {
    id: String,
    title: String,
    post: String,
    subreddit: &'static str,
    summaries: Vec<String>,
}

fn make_post<R: Rng>(i: usize, rng: &mut R) -> Post {
    let (subject, short_subject) = SUBJECTS[rng.random_range(0..SUBJECTS.len())];
    let (problem, short_problem) = PROBLEMS[rng.random_range(0..PROBLEMS.len())];
    let mut details: Vec<&str> = DETAILS.to_vec();
    details.shuffle(rng);
    let n_details = rng.random_range(2..=4);
    let post = format!("{subject} {problem}. {}", details[..n_details].join(" "));
    let title = format!("{subject} {problem}, what should I do?");
    let gist = format!("{short_subject} {short_problem}");
    let mut fillers: Vec<&str> = FILLERS.to_vec();
    fillers.shuffle(rng);
    let mut summaries: Vec<String> = (0..5)
        .map(|n| {
            let mut s = format!(" {gist}");
            for f in &fillers[..n] {
                s += ", ";
                s += f;
            }
            s
        })
        .collect();
    // Summary 2's clauses swapped: another text of the same character length.
    summaries.push(format!(" {gist}, {}, {}", fillers[1], fillers[0]));
    Post {
        id: format!("t3_{:06x}{}", i, rng.random_range(10..99)),
        title,
        post,
        subreddit: SUBREDDITS[rng.random_range(0..SUBREDDITS.len())],
        summaries,
    }
}

/// Random worker ids in the release's style: 30 letters and digits.
fn worker_id<R: Rng>(rng: &mut R) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..30)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// One line's worth: which post, which two summaries, policies, split.
struct Line {
    post: usize,
    pair: [usize; 2],
    policies: [&'static str; 2],
    worker: usize,
    split: &'static str,
}

/// Writes the fixtures into `out` (which must not exist or be empty); returns the manifest.
/// They are written into `<out>.partial` first and renamed at the end, so an interrupted
/// write leaves no half fixture set behind.
pub fn write(spec: &TldrFixtureSpec, out: &Path) -> Result<TldrManifest, IngestError> {
    if spec.posts == 0 || spec.seen_workers == 0 || spec.equal_every == 0 {
        return Err(IngestError::bad_param(
            "posts, seen_workers, equal_every",
            format!(
                "{}, {}, {}",
                spec.posts, spec.seen_workers, spec.equal_every
            ),
            "each at least 1",
        ));
    }
    if spec.top_train < spec.step * spec.seen_workers {
        return Err(IngestError::bad_param(
            "top_train",
            spec.top_train,
            &format!(
                "at least step × seen_workers ({}) so every seen worker has train comparisons",
                spec.step * spec.seen_workers
            ),
        ));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IngestError::Io { path, source }
    };
    if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(IngestError::bad_param(
            "out",
            out.display(),
            "a folder that does not exist yet or is empty",
        ));
    }
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    let mut rng = rng_for(spec.seed, "tldr-fixtures");
    let posts: Vec<Post> = (0..spec.posts).map(|i| make_post(i, &mut rng)).collect();
    let n_workers = spec.seen_workers + spec.unseen_workers + spec.casual_workers;
    let mut workers: Vec<String> = Vec::new();
    while workers.len() < n_workers {
        let w = worker_id(&mut rng);
        if !workers.contains(&w) {
            workers.push(w);
        }
    }
    let mut lines: Vec<Line> = Vec::new();
    let mut equal_length = 0;
    let mut off_policy = 0;
    let mut planted = (Vec::new(), Vec::new(), Vec::new());
    for (w, worker) in workers.iter().enumerate() {
        // (kept train, kept valid, off-policy train)
        let (train, valid, off) = if w < spec.seen_workers {
            (
                spec.top_train - spec.step * w,
                spec.seen_valid,
                spec.off_policy,
            )
        } else if w < spec.seen_workers + spec.unseen_workers {
            (spec.unseen_train, spec.unseen_valid, spec.off_policy)
        } else {
            (
                spec.casual_valid / 2,
                spec.casual_valid,
                spec.casual_off_policy,
            )
        };
        let record = PlantedWorker {
            worker: worker.clone(),
            train,
            valid,
        };
        if w < spec.seen_workers {
            planted.0.push(record);
        } else if w < spec.seen_workers + spec.unseen_workers {
            planted.1.push(record);
        } else {
            planted.2.push(record);
        }
        let mut kept = 0;
        for (n, is_train) in [(train, true), (valid, false)] {
            for _ in 0..n {
                kept += 1;
                let pair = if kept % spec.equal_every == 0 {
                    equal_length += 1;
                    [2, 5]
                } else {
                    // Two summaries of different filler counts (0..=4).
                    let a = rng.random_range(0..5);
                    let b = (a + rng.random_range(1..5)) % 5;
                    [a, b]
                };
                let pair = if rng.random_bool(0.5) {
                    pair
                } else {
                    [pair[1], pair[0]]
                };
                let policies = [
                    SUPERVISED[rng.random_range(0..SUPERVISED.len())],
                    SUPERVISED[rng.random_range(0..SUPERVISED.len())],
                ];
                let split = if is_train {
                    "train"
                } else if rng.random_bool(0.5) {
                    "valid1"
                } else {
                    "valid2"
                };
                lines.push(Line {
                    post: rng.random_range(0..spec.posts),
                    pair,
                    policies,
                    worker: w,
                    split,
                });
            }
        }
        for _ in 0..off {
            off_policy += 1;
            let bad = OFF_POLICY[rng.random_range(0..OFF_POLICY.len())];
            let other = SUPERVISED[rng.random_range(0..SUPERVISED.len())];
            let policies = if rng.random_bool(0.5) {
                [bad, other]
            } else {
                [other, bad]
            };
            let a = rng.random_range(0..5);
            lines.push(Line {
                post: rng.random_range(0..spec.posts),
                pair: [a, (a + 1) % 5],
                policies,
                worker: w,
                split: "train",
            });
        }
    }
    lines.shuffle(&mut rng);

    // Batches as the release: lines spread over batch3 … batch10, one file each.
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in &lines {
        let batch = format!("batch{}", rng.random_range(3..=10));
        let p = &posts[l.post];
        let extra = if rng.random_range(0..4) == 0 {
            json!({})
        } else {
            json!({"confidence": rng.random_range(1..=9)})
        };
        let record = json!({
            "info": {"id": p.id, "post": p.post, "title": p.title, "subreddit": p.subreddit},
            "summaries": [
                {"text": p.summaries[l.pair[0]], "policy": l.policies[0], "note": null},
                {"text": p.summaries[l.pair[1]], "policy": l.policies[1], "note": null},
            ],
            "choice": rng.random_range(0..2),
            "worker": workers[l.worker],
            "batch": batch,
            "split": l.split,
            "extra": extra,
        });
        files.entry(batch).or_default().push(record.to_string());
    }
    let dir = partial.join("comparisons");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut names = Vec::new();
    for (batch, records) in &files {
        let path: PathBuf = dir.join(format!("{batch}.json"));
        let mut f = std::fs::File::create(&path).map_err(io(&path))?;
        for r in records {
            writeln!(f, "{r}").map_err(io(&path))?;
        }
        names.push(format!("comparisons/{batch}.json"));
    }
    let manifest = TldrManifest {
        spec: spec.clone(),
        files: names,
        comparisons: lines.len(),
        seen: planted.0,
        unseen: planted.1,
        casual: planted.2,
        equal_length,
        off_policy,
    };
    let path = partial.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| IngestError::BadValue {
        path: path.clone(),
        line: 0,
        field: "manifest".to_string(),
        found: e.to_string(),
        expected: "a manifest that serialises".to_string(),
    })?;
    std::fs::write(&path, text + "\n").map_err(io(&path))?;
    if out.exists() {
        std::fs::remove_dir(out).map_err(io(out))?;
    }
    std::fs::rename(&partial, out).map_err(io(out))?;
    Ok(manifest)
}
