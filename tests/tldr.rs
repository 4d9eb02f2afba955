//! The PAL paper's Reddit TL;DR experiment through the real binary: the
//! `length_preference_users` rules on a hand-built comparisons file in the
//! summarize-from-feedback layout (expected users, ranks, groups, labels and drops computed
//! here from the lines the test writes), the `summarize_fixtures` stand-ins, and the store
//! being a function of the pipeline for both kinds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;

/// One comparison line in the published layout (a null `note`, `extra` sometimes empty).
fn line(worker: &str, split: &str, post: &str, texts: [&str; 2], policies: [&str; 2]) -> String {
    let extra = if texts[0].len().is_multiple_of(2) {
        serde_json::json!({})
    } else {
        serde_json::json!({"confidence": 7})
    };
    serde_json::json!({
        "info": {"id": format!("t3_{post}"), "post": post, "title": format!("About {post}"), "subreddit": "relationships"},
        "summaries": [
            {"text": texts[0], "policy": policies[0], "note": null},
            {"text": texts[1], "policy": policies[1], "note": null},
        ],
        "choice": 1,
        "worker": worker,
        "batch": "batch7",
        "split": split,
        "extra": extra,
    })
    .to_string()
}

/// A hand-built comparison to write, kept for the expectations.
struct Written {
    worker: &'static str,
    split: &'static str,
    post: String,
    texts: [String; 2],
    supervised: bool,
}

fn hand_built() -> Vec<Written> {
    let mut out = Vec::new();
    let mut n = 0;
    let mut add =
        |worker: &'static str, split: &'static str, count: usize, equal: usize, sup: bool| {
            for i in 0..count {
                n += 1;
                // Different lengths unless this is one of the `equal` first ones.
                let (a, b) = if i < equal {
                    (format!(" same {n:04}"), format!(" emas {n:04}"))
                } else if i % 2 == 0 {
                    (format!(" short {n}"), format!(" a much longer summary {n}"))
                } else {
                    (
                        format!(" the longer of the two texts {n}"),
                        format!(" brief {n}"),
                    )
                };
                out.push(Written {
                    worker,
                    split,
                    post: format!("post number {}", n % 7),
                    texts: [a, b],
                    supervised: sup,
                });
            }
        };
    // Kept train comparisons: wA 6 (one with equal lengths), wB 5, wC 4, wD 3, wE 2;
    // wE also has 9 off-policy ones, which would make it the busiest without the filter.
    add("wA", "train", 6, 1, true);
    add("wB", "train", 5, 0, true);
    add("wC", "train", 4, 0, true);
    add("wD", "train", 3, 0, true);
    add("wE", "train", 2, 0, true);
    add("wE", "train", 9, 0, false);
    for w in ["wA", "wB", "wC", "wD"] {
        add(w, "valid1", 2, 0, true);
    }
    // Unseen candidates (at least 3 kept validation comparisons): wE, wF (one equal); not
    // wG (2 kept and 4 off-policy ones).
    add("wE", "valid2", 3, 0, true);
    add("wF", "valid1", 4, 1, true);
    add("wG", "valid2", 2, 1, true);
    add("wG", "valid1", 4, 0, false);
    out
}

fn write_jsonl(path: &Path, rows: &[Written]) {
    let mut text = String::new();
    for (i, w) in rows.iter().enumerate() {
        let policies = if !w.supervised {
            [
                ["sup4_ppo_rm3_kl10", "sup4"],
                ["ref", "sup2"],
                ["sup1", "pretrain_6b"],
            ][i % 3]
        } else {
            [["sup4", "sup2"], ["sup1", "sup4_6b"], ["sup2_t0.7", "sup4"]][i % 3]
        };
        text += &line(
            w.worker,
            w.split,
            &w.post,
            [&w.texts[0], &w.texts[1]],
            policies,
        );
        text += "\n";
    }
    std::fs::write(path, text).unwrap();
}

const USERS_STAGE: &str = "  - name: users\n    kind: length_preference_users\n    path: PATH\n    seen_users: 4\n    minority_ranks: [2]\n    min_unseen_comparisons: 3\n    val_frac: 0.2\n    seed: 5\n";

/// A pipeline of one `length_preference_users` stage reading `file`.
fn users_pipeline(dir: &Path, file: &Path) -> PathBuf {
    write_pipeline(
        dir,
        "p.yaml",
        &format!(
            "name: t\nstages:\n{}",
            USERS_STAGE.replace("PATH", file.to_str().unwrap())
        ),
    )
}

#[test]
fn length_users_follow_the_selection_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rows = hand_built();
    let file = dir.path().join("comparisons.json");
    write_jsonl(&file, &rows);
    let p = users_pipeline(dir.path(), &file);
    let store = new_store(dir.path(), "s");
    let stdout = palpipe(&store, &["run", p.to_str().unwrap()]).ok().stdout;

    // Expectations from the written lines: kept = supervised; rank by kept train count.
    let mut train: BTreeMap<&str, usize> = BTreeMap::new();
    let mut valid: BTreeMap<&str, usize> = BTreeMap::new();
    for w in rows.iter().filter(|w| w.supervised) {
        let m = if w.split == "train" {
            &mut train
        } else {
            &mut valid
        };
        *m.entry(w.worker).or_default() += 1;
    }
    let mut ranked: Vec<(&str, usize)> = train.iter().map(|(w, n)| (*w, *n)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let seen: Vec<&str> = ranked.iter().take(4).map(|r| r.0).collect();
    assert_eq!(seen, ["wA", "wB", "wC", "wD"]);
    let unseen: BTreeSet<&str> = valid
        .iter()
        .filter(|(w, n)| **n >= 3 && !seen.contains(*w))
        .map(|(w, _)| *w)
        .collect();
    assert_eq!(unseen, BTreeSet::from(["wE", "wF"]));

    let users: BTreeMap<String, (String, String)> =
        query(&store, "SELECT user_id, group_name, role FROM users")
            .iter()
            .map(|r| {
                (
                    r["user_id"].as_str().unwrap().to_string(),
                    (
                        r["group_name"].as_str().unwrap().to_string(),
                        r["role"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect();
    let ids: BTreeSet<&str> = users
        .keys()
        .map(|k| k.strip_prefix("tldr/").unwrap())
        .collect();
    let expected_ids: BTreeSet<&str> = seen.iter().copied().chain(unseen.iter().copied()).collect();
    assert_eq!(ids, expected_ids);
    for (rank, w) in seen.iter().enumerate() {
        let want = if rank + 1 == 2 { "shorter" } else { "longer" };
        assert_eq!(
            users[&format!("tldr/{w}")],
            (want.to_string(), "seen".to_string()),
            "{w}"
        );
    }
    // One minority slot among 2 unseen users: round(2 · 1 / 4) = 1.
    let unseen_shorter = unseen
        .iter()
        .filter(|w| users[&format!("tldr/{w}")].0 == "shorter")
        .count();
    assert_eq!(unseen_shorter, 1);
    assert!(unseen
        .iter()
        .all(|w| users[&format!("tldr/{w}")].1 == "unseen"));

    // Pairs: every kept comparison of a chosen user with different lengths (train and valid
    // for seen users, valid only for unseen ones), labelled by the user's group.
    let mut expected: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut equal = 0;
    // (user, left, right) → preferred text.
    let mut preferred: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for w in rows.iter().filter(|w| w.supervised) {
        let is_seen = seen.contains(&w.worker);
        if !(is_seen || (unseen.contains(w.worker) && w.split != "train")) {
            continue;
        }
        let (la, lb) = (w.texts[0].trim().len(), w.texts[1].trim().len());
        if la == lb {
            equal += 1;
            continue;
        }
        let user = format!("tldr/{}", w.worker);
        let shorter = users[&user].0 == "shorter";
        let pick = if (la > lb) != shorter { 0 } else { 1 };
        preferred.insert(
            (user.clone(), w.texts[0].clone(), w.texts[1].clone()),
            w.texts[pick].clone(),
        );
        let split = match (is_seen, w.split) {
            (true, "train") => "train+val",
            (true, _) => "test",
            _ => "unseen",
        };
        *expected.entry((user, split.to_string())).or_default() += 1;
    }
    assert_eq!(equal, 2, "wA's and wF's; wG's is not a chosen user's");
    let got_rows = query(
        &store,
        "SELECT p.user_id AS u, p.split AS s, l.text AS l, r.text AS r, p.label AS label \
         FROM pairs p JOIN items l ON p.left_id = l.item_id JOIN items r ON p.right_id = r.item_id",
    );
    let mut got: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut val_per_user: BTreeMap<String, usize> = BTreeMap::new();
    for r in &got_rows {
        let u = r["u"].as_str().unwrap().to_string();
        let s = r["s"].as_str().unwrap();
        let (l, rt) = (r["l"].as_str().unwrap(), r["r"].as_str().unwrap());
        let want = &preferred[&(u.clone(), l.to_string(), rt.to_string())];
        let label_pick = if r["label"].as_i64() == Some(-1) {
            l
        } else {
            rt
        };
        assert_eq!(label_pick, want.as_str(), "{u}: {l} vs {rt}");
        if s == "val" {
            *val_per_user.entry(u.clone()).or_default() += 1;
        }
        let key = if s == "train" || s == "val" {
            "train+val"
        } else {
            s
        };
        *got.entry((u, key.to_string())).or_default() += 1;
    }
    assert_eq!(got, expected);
    // 80/20 per seen user: val = round(0.2 · n) of its n usable train comparisons.
    for w in &seen {
        let user = format!("tldr/{w}");
        let n = expected[&(user.clone(), "train+val".to_string())];
        let want = (0.2 * n as f64).round() as usize;
        assert_eq!(val_per_user.get(&user).copied().unwrap_or(0), want, "{w}");
    }
    let off = rows.iter().filter(|w| !w.supervised).count();
    assert!(
        stdout.contains(&format!(
            "{} comparisons in 1 files: {off} off-policy left out",
            rows.len()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("2 equal-length dropped"), "{stdout}");
    assert!(
        stdout.contains("seen users 4 (#1 6 longer, #2 5 shorter, #3 4 longer, #4 3 longer)"),
        "{stdout}"
    );
}

#[test]
fn a_comparison_file_with_a_bad_line_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.jsonl");
    let good = line("w", "train", "p", [" a", " bb"], ["sup1", "sup2"]);
    std::fs::write(
        &file,
        format!("{good}\n{}\n", good.replace("\"train\"", "\"test\"")),
    )
    .unwrap();
    let p = users_pipeline(dir.path(), &file);
    let store = new_store(dir.path(), "s");
    let run = palpipe(&store, &["run", p.to_str().unwrap()]).code(1);
    assert!(
        run.stderr
            .contains("c.jsonl:2: field 'split' is 'test', expected train, valid1 or valid2"),
        "{}",
        run.stderr
    );
    let summaries_missing = good.replace("\"summaries\"", "\"summary\"");
    std::fs::write(&file, format!("{summaries_missing}\n")).unwrap();
    let run = palpipe(&store, &["run", p.to_str().unwrap()]).code(1);
    assert!(
        run.stderr
            .contains("c.jsonl:1: missing field 'summaries.0.policy'"),
        "{}",
        run.stderr
    );
    if store_exists(&store) {
        assert_eq!(
            versions(&store).get("pairs").map(|v| v.1).unwrap_or(0),
            0,
            "no pairs written"
        );
    }
}

fn fixture_pipeline(dir: &Path) -> PathBuf {
    write_pipeline(
        dir,
        "tldr.yaml",
        "name: tldr\nstages:\n  - name: fixtures\n    kind: summarize_fixtures\n    out: fx\n    posts: 60\n    seed: 3\n  - name: users\n    kind: length_preference_users\n    dir: fx/comparisons\n    seed: 0\n",
    )
}

#[test]
fn fixtures_plant_what_the_users_stage_finds_and_reruns_equal_a_fresh_store() {
    let dir = tempfile::tempdir().unwrap();
    let p = fixture_pipeline(dir.path());
    let store = new_store(dir.path(), "rerun");
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();

    // The manifest's planted seen workers, in rank order, are the seen users: ranks 3-5
    // shorter. Checked against the comparison files read here.
    let fx = dir.path().join("fx");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("manifest.json")).unwrap()).unwrap();
    let mut kept_train: BTreeMap<String, usize> = BTreeMap::new();
    let mut lines = 0;
    for f in std::fs::read_dir(fx.join("comparisons")).unwrap() {
        for l in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
            lines += 1;
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["summaries"][0]["note"].is_null());
            let sup = (0..2).all(|i| {
                let p = v["summaries"][i]["policy"].as_str().unwrap();
                p.contains("sup") && !p.contains("ppo")
            });
            if sup && v["split"] == "train" {
                *kept_train
                    .entry(v["worker"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
    }
    assert_eq!(lines, manifest["comparisons"].as_u64().unwrap() as usize);
    let mut ranked: Vec<(String, usize)> = kept_train.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let planted: Vec<&str> = manifest["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["worker"].as_str().unwrap())
        .collect();
    assert_eq!(
        ranked
            .iter()
            .take(10)
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>(),
        planted
    );
    for (rank, w) in planted.iter().enumerate() {
        let want = if (3..=5).contains(&(rank + 1)) {
            "shorter"
        } else {
            "longer"
        };
        let got = query(
            &store,
            &format!("SELECT group_name FROM users WHERE user_id = 'tldr/{w}'"),
        );
        assert_eq!(got[0]["group_name"], want, "rank {}", rank + 1);
    }
    assert_eq!(
        scalar(&store, "SELECT count(*) FROM users WHERE role = 'unseen'"),
        manifest["unseen"].as_array().unwrap().len() as i64
    );

    // Same parameters, another folder: the same bytes.
    let again = dir.path().join("again");
    std::fs::create_dir(&again).unwrap();
    let p2 = fixture_pipeline(&again);
    palpipe(&again.join("s"), &["run", p2.to_str().unwrap()]).ok();
    for f in manifest["files"].as_array().unwrap() {
        let f = f.as_str().unwrap();
        assert_eq!(
            std::fs::read(fx.join(f)).unwrap(),
            std::fs::read(again.join("fx").join(f)).unwrap(),
            "{f}"
        );
    }

    // Re-run with changed parameters = a fresh run with them.
    let sets = [
        "--set",
        "users.minority_ranks=[1, 2]",
        "--set",
        "users.val_frac=0.3",
        "--set",
        "users.seed=9",
    ];
    let mut args = vec!["run", p.to_str().unwrap()];
    args.extend(sets);
    palpipe(&store, &args).ok();
    let fresh = new_store(dir.path(), "fresh");
    palpipe(&fresh, &args).ok();
    let (a, b) = (pairs_and_users(&store), pairs_and_users(&fresh));
    assert_eq!(a.0.len(), b.0.len());
    assert!(a == b, "re-run store differs from a fresh one");
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM users WHERE role = 'seen' AND group_name = 'shorter'"
        ),
        2
    );

    // The fixtures stage refuses a folder made with other parameters.
    let run = palpipe(
        &store,
        &["run", p.to_str().unwrap(), "--set", "fixtures.seed=4"],
    )
    .code(1);
    assert!(
        run.stderr.contains("made with other parameters"),
        "{}",
        run.stderr
    );
}

/// `metrics_json` of model `name` in `store`.
fn model_metrics(store: &Path, name: &str) -> serde_json::Value {
    let rows = query(
        store,
        &format!("SELECT metrics_json FROM models WHERE name = '{name}'"),
    );
    assert_eq!(rows.len(), 1, "model {name}");
    serde_json::from_str(rows[0]["metrics_json"].as_str().unwrap()).unwrap()
}

/// The shipped pipeline runs to its end on its own stand-ins (written into a temporary
/// folder): on seen users K = 2 is far above K = 1, whose single reward gets no more than the
/// majority group's share of the test pairs (counted here from `pairs` and `users`); every
/// unseen user is adapted, and at 10 shots they are within a few points of the seen users.
#[test]
fn the_shipped_tldr_pipeline_runs_end_to_end() {
    require_minilm();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tldr.yaml");
    let fx = dir.path().join("fx");
    let store = new_store(dir.path(), "s");
    let run = palpipe(
        &store,
        &[
            "run",
            pipeline.to_str().unwrap(),
            "--set",
            &format!("fixtures.out={}", fx.display()),
            "--set",
            &format!("users.dir={}", fx.join("comparisons").display()),
            "--json",
        ],
    )
    .ok();
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let done: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "done")
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        done,
        ["fixtures", "users", "embed", "pal-b-k1", "pal-b-k2", "eval-k1", "eval-k2", "adapt-k2"],
        "{report}"
    );

    let test_pairs = |group: &str| {
        scalar(
            &store,
            &format!(
                "SELECT count(*) FROM pairs p JOIN users u ON p.user_id = u.user_id \
                 WHERE p.split = 'test' AND u.group_name = '{group}'"
            ),
        ) as f64
    };
    let (longer, shorter) = (test_pairs("longer"), test_pairs("shorter"));
    assert!(shorter > 0.0 && longer > shorter, "{longer} {shorter}");
    let majority = longer / (longer + shorter);
    let accuracy = |model: &str| {
        model_metrics(&store, model)["tldr-test"]["accuracy"]
            .as_f64()
            .unwrap()
    };
    let (k1, k2) = (accuracy("pal-b-k1"), accuracy("pal-b-k2"));
    // One reward for everybody serves the majority (the stand-ins' length signal is clean).
    assert!(
        (k1 - majority).abs() <= 0.02,
        "K = 1 {k1} vs majority share {majority}"
    );
    assert!(
        k2 >= majority + 0.5 * (1.0 - majority),
        "K = 2 {k2} not far above the majority share {majority} (K = 1 {k1})"
    );

    let unseen = scalar(&store, "SELECT count(*) FROM users WHERE role = 'unseen'");
    let curve = model_metrics(&store, "pal-b-k2")["adapt:tldr-unseen"].clone();
    let row = |n: i64| {
        curve
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["shots"] == n)
            .unwrap_or_else(|| panic!("a {n}-shot row: {curve}"))
            .clone()
    };
    let (zero, ten) = (row(0), row(10));
    assert_eq!(ten["users"].as_i64().unwrap(), unseen, "{ten}");
    assert_eq!(ten["skipped_users"].as_i64().unwrap(), 0, "{ten}");
    let at_ten = ten["accuracy"].as_f64().unwrap();
    assert!(at_ten >= k2 - 0.05, "10 shots {at_ten} vs seen {k2}");
    // The shots move new users off the zero-shot mixture (which serves the majority).
    let at_zero = zero["accuracy"].as_f64().unwrap();
    assert!(
        at_ten >= at_zero + 0.1,
        "10 shots {at_ten} vs 0 shots {at_zero}"
    );
}
