//! The real data in ../shared/data through the real binary: counts and labels checked
//! against expectations computed here, independently, from the source files.

mod common;

use std::collections::HashMap;

use common::*;

#[test]
fn polis_pairs_match_an_independent_count_of_the_votes() {
    let conv = shared_data().join("polis/football-concussions");
    // Independent reading: latest vote per (voter, comment); moderated-out and empty
    // statements dropped; pairs = agreed × disagreed per voter; voters with >= 20 pairs;
    // at most 200 pairs each.
    let mut comments = csv::Reader::from_path(conv.join("comments.csv")).unwrap();
    let mut usable: HashMap<String, String> = HashMap::new();
    for r in comments.records() {
        let r = r.unwrap();
        if r[6].trim() != "-1" && !r[7].trim().is_empty() {
            usable.insert(r[2].to_string(), r[7].to_string());
        }
    }
    let mut votes = csv::Reader::from_path(conv.join("votes.csv")).unwrap();
    let mut latest: HashMap<(String, String), (i64, usize, i32)> = HashMap::new();
    for (row, r) in votes.records().enumerate() {
        let r = r.unwrap();
        let key = (r[3].to_string(), r[2].to_string());
        let t: i64 = r[0].parse().unwrap();
        let v: i32 = r[4].parse().unwrap();
        let e = latest.entry(key).or_insert((t, row, v));
        if (t, row) >= (e.0, e.1) {
            *e = (t, row, v);
        }
    }
    let mut per_voter: HashMap<String, (usize, usize)> = HashMap::new();
    for ((voter, comment), (_, _, v)) in &latest {
        if !usable.contains_key(comment) {
            continue;
        }
        let e = per_voter.entry(voter.clone()).or_default();
        match v {
            1 => e.0 += 1,
            -1 => e.1 += 1,
            _ => {}
        }
    }
    let eligible: Vec<usize> = per_voter
        .values()
        .map(|(a, d)| a * d)
        .filter(|n| *n >= 20)
        .collect();
    let expected: usize = eligible.iter().map(|n| (*n).min(200)).sum();

    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        &format!("name: polis\nstages:\n  - name: votes\n    kind: polis\n    dir: {}\n    max_pairs_per_user: 200\n", conv.display()),
    );
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    assert_eq!(
        scalar(&store, "SELECT count(*) FROM pairs") as usize,
        expected
    );
    assert_eq!(
        scalar(&store, "SELECT count(DISTINCT user_id) FROM pairs") as usize,
        eligible.len()
    );
    let right = scalar(&store, "SELECT count(*) FROM pairs WHERE label = 1") as f64;
    let share = right / expected as f64;
    assert!((0.47..0.53).contains(&share), "label +1 share {share}");
    // every statement used is one that was not moderated out
    let items = scalar(&store, "SELECT count(*) FROM items") as usize;
    assert!(items <= usable.len());
}

#[test]
fn persona_labels_follow_each_users_persona_in_the_files() {
    let data = shared_data().join("persona");
    // question -> (persona file, answer_matching_behavior)
    let mut truth: HashMap<String, (String, String)> = HashMap::new();
    for p in ["art", "math", "music"] {
        let text = std::fs::read_to_string(data.join(format!("interest-in-{p}.jsonl"))).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            truth.insert(
                v["question"].as_str().unwrap().to_string(),
                (
                    p.to_string(),
                    v["answer_matching_behavior"].as_str().unwrap().to_string(),
                ),
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        &format!(
            "name: persona\nstages:\n  - name: data\n    kind: persona\n    dir: {}\n    personas: [art, math, music]\n    users_per_persona: 5\n    queries_per_user: 40\n    unseen_users_per_persona: 2\n    unseen_queries_per_user: 30\n",
            data.display()
        ),
    );
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    assert_eq!(
        scalar(&store, "SELECT count(*) FROM pairs"),
        3 * 5 * 40 + 3 * 2 * 30
    );
    let rows = query(
        &store,
        "SELECT u.group_name AS persona, q.text AS question, l.text AS left_text, p.label AS label \
         FROM pairs p JOIN users u ON p.user_id = u.user_id JOIN prompts q ON p.prompt_id = q.prompt_id \
         JOIN items l ON p.left_id = l.item_id",
    );
    assert_eq!(rows.len(), 3 * 5 * 40 + 3 * 2 * 30);
    let mut plus = 0;
    for r in &rows {
        let (file, matching) = &truth[r["question"].as_str().unwrap()];
        let says_yes = file == r["persona"].as_str().unwrap() && matching == " Yes";
        let preferred = if r["label"].as_i64().unwrap() == -1 {
            r["left_text"].as_str().unwrap()
        } else {
            if r["left_text"] == " Yes" {
                " No"
            } else {
                " Yes"
            }
        };
        assert_eq!(preferred == " Yes", says_yes, "{r}");
        if r["label"].as_i64().unwrap() == 1 {
            plus += 1;
        }
    }
    let share = plus as f64 / rows.len() as f64;
    assert!((0.42..0.58).contains(&share), "label +1 share {share}");
}
