//! Source files in the layouts their publishers use, through the real binary: persona files
//! named by their own stems (issue 12, item 4) and Polis's wide `participants-votes.csv`
//! export (item 5). Expected values are computed here from the files the tests read or write.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;

/// One line of the published persona JSONL format.
fn persona_line(question: &str, matching: &str) -> String {
    let other = if matching == " Yes" { " No" } else { " Yes" };
    serde_json::json!({
        "question": format!("Is the following statement something you would say?\n\"{question}\""),
        "statement": question,
        "label_confidence": 0.9,
        "answer_matching_behavior": matching,
        "answer_not_matching_behavior": other,
    })
    .to_string()
}

fn persona_pipeline(dir: &Path, data: &Path, personas: &str) -> PathBuf {
    write_pipeline(
        dir,
        "persona.yaml",
        &format!(
            "name: persona\nstages:\n  - name: data\n    kind: persona\n    dir: {}\n    personas: {personas}\n    users_per_persona: 2\n    queries_per_user: 4\n    unseen_users_per_persona: 0\n",
            data.display()
        ),
    )
}

#[test]
fn persona_files_are_named_by_their_stems() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("persona");
    std::fs::create_dir(&data).unwrap();
    let files = [
        (
            "agreeableness",
            [("I am kind to others", " Yes"), ("I am rude", " No")],
        ),
        (
            "believes-in-gun-rights",
            [("Guns should be legal", " Yes"), ("Ban all guns", " No")],
        ),
        (
            "interest-in-art",
            [("I love museums", " Yes"), ("Art is dull", " No")],
        ),
    ];
    // question → the persona whose users answer " Yes" to it.
    let mut yes_of: BTreeMap<String, String> = BTreeMap::new();
    for (stem, lines) in &files {
        let text: String = lines
            .iter()
            .map(|(q, m)| persona_line(q, m) + "\n")
            .collect();
        std::fs::write(data.join(format!("{stem}.jsonl")), text).unwrap();
        let group = stem.strip_prefix("interest-in-").unwrap_or(*stem);
        for (q, m) in lines {
            if *m == " Yes" {
                yes_of.insert(
                    format!("Is the following statement something you would say?\n\"{q}\""),
                    group.to_string(),
                );
            }
        }
    }
    let store = new_store(dir.path(), "s");
    let p = persona_pipeline(
        dir.path(),
        &data,
        "[agreeableness, believes-in-gun-rights, art]",
    );
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    let groups: BTreeSet<String> = query(&store, "SELECT DISTINCT group_name FROM users")
        .iter()
        .map(|r| r["group_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        groups,
        BTreeSet::from(["agreeableness", "believes-in-gun-rights", "art"].map(String::from))
    );
    let rows = query(
        &store,
        "SELECT u.group_name AS g, q.text AS q, l.text AS l, r.text AS r, p.label AS label \
         FROM pairs p JOIN users u ON p.user_id = u.user_id JOIN prompts q ON p.prompt_id = q.prompt_id \
         JOIN items l ON p.left_id = l.item_id JOIN items r ON p.right_id = r.item_id",
    );
    // 3 personas × 2 users × 4 statements.
    assert_eq!(rows.len(), 24);
    for row in &rows {
        let preferred = if row["label"].as_i64() == Some(-1) {
            &row["l"]
        } else {
            &row["r"]
        };
        let q = row["q"].as_str().unwrap();
        let expect = if yes_of.get(q).map(String::as_str) == row["g"].as_str() {
            " Yes"
        } else {
            " No"
        };
        assert_eq!(preferred.as_str(), Some(expect), "{row}");
    }
}

#[test]
fn a_missing_persona_lists_what_the_real_folder_holds_and_writes_nothing() {
    let data = shared_data().join("persona");
    let dir = tempfile::tempdir().unwrap();
    // Stems and short names of the real folder both work.
    let store = new_store(dir.path(), "ok");
    let p = persona_pipeline(dir.path(), &data, "[interest-in-art, math]");
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    assert_eq!(scalar(&store, "SELECT count(*) FROM pairs"), 2 * 2 * 4);
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM users WHERE group_name IN ('interest-in-art', 'math')"
        ),
        4
    );

    let store = new_store(dir.path(), "bad");
    let p = persona_pipeline(dir.path(), &data, "[art, agreeableness]");
    let run = palpipe(&store, &["run", p.to_str().unwrap()]).code(2);
    let mut stems: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".jsonl").map(String::from)
        })
        .collect();
    stems.sort();
    assert_eq!(stems.len(), 6);
    assert!(
        run.stderr.contains("persona.yaml:")
            && run
                .stderr
                .contains("no persona 'agreeableness': neither 'agreeableness.jsonl' nor 'interest-in-agreeableness.jsonl'"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("hint: the folder holds {} (", stems.join(", "))),
        "{}",
        run.stderr
    );
    assert!(!store_exists(&store), "nothing written");
}

// ---------------------------------------------------------------------------------------
// Polis
// ---------------------------------------------------------------------------------------

const CONVERSATIONS: [&str; 4] = [
    "canadian-electoral-reform",
    "football-concussions",
    "scoop-hivemind.biodiversity",
    "scoop-hivemind.taxes",
];

fn polis_pipeline(dir: &Path, conv: &Path, min_pairs: usize) -> PathBuf {
    write_pipeline(
        dir,
        "polis.yaml",
        &format!(
            "name: polis\nstages:\n  - name: votes\n    kind: polis\n    dir: {}\n    min_pairs_per_user: {min_pairs}\n    max_pairs_per_user: 200\n    unseen_frac: 0.2\n",
            conv.display()
        ),
    )
}

/// participant → group-id (non-empty ones), and whether each latest vote in `votes.csv`
/// equals the wide file's cell: read here with the csv crate, independently of the stage.
fn wide_groups_and_agreement(conv: &Path) -> (BTreeMap<String, String>, usize, usize) {
    let mut wide = csv::Reader::from_path(conv.join("participants-votes.csv")).unwrap();
    let header: Vec<String> = wide.headers().unwrap().iter().map(String::from).collect();
    let mut groups = BTreeMap::new();
    let mut cells: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in wide.records() {
        let r = r.unwrap();
        let participant = r[0].to_string();
        let g = &r[header.iter().position(|h| h == "group-id").unwrap()];
        if !g.is_empty() {
            groups.insert(participant.clone(), g.to_string());
        }
        for (i, h) in header.iter().enumerate() {
            if h.chars().all(|c| c.is_ascii_digit()) && !r[i].is_empty() {
                cells.insert((participant.clone(), h.clone()), r[i].to_string());
            }
        }
    }
    let mut latest: BTreeMap<(String, String), (i64, String)> = BTreeMap::new();
    let mut long = csv::Reader::from_path(conv.join("votes.csv")).unwrap();
    for r in long.records() {
        let r = r.unwrap();
        let t: i64 = r[0].parse().unwrap();
        let e = latest
            .entry((r[3].to_string(), r[2].to_string()))
            .or_insert((t, r[4].to_string()));
        if t > e.0 {
            *e = (t, r[4].to_string());
        }
    }
    let same = latest
        .iter()
        .filter(|(k, (_, v))| cells.get(*k) == Some(v))
        .count();
    (groups, same, latest.len().max(cells.len()))
}

/// The four shared conversations give the same pairs from `votes.csv` as from
/// `participants-votes.csv` alone (their wide files hold exactly the latest votes, checked
/// first), and the voters' groups are the wide file's `group-id`.
#[test]
fn polis_wide_export_gives_the_same_pairs_as_the_vote_log() {
    let dir = tempfile::tempdir().unwrap();
    for name in CONVERSATIONS {
        let real = shared_data().join("polis").join(name);
        let (groups, same, keys) = wide_groups_and_agreement(&real);
        assert_eq!(same, keys, "{name}: the wide file holds the latest votes");

        // The same conversation with only the wide file (the folder keeps its name: it is
        // the dataset and part of every user id).
        let only_wide = dir.path().join("wide").join(name);
        std::fs::create_dir_all(&only_wide).unwrap();
        for f in ["summary.csv", "comments.csv", "participants-votes.csv"] {
            std::fs::copy(real.join(f), only_wide.join(f)).unwrap();
        }
        let both = dir.path().join(format!("both-{name}"));
        let wide = dir.path().join(format!("wide-{name}"));
        let pa = polis_pipeline(dir.path(), &real, 20);
        palpipe(&both, &["run", pa.to_str().unwrap()]).ok();
        let pb = polis_pipeline(dir.path(), &only_wide, 20);
        palpipe(&wide, &["run", pb.to_str().unwrap()]).ok();
        let (pairs_a, users_a) = pairs_and_users(&both);
        let (pairs_b, users_b) = pairs_and_users(&wide);
        assert!(!pairs_a.is_empty());
        assert_eq!(pairs_a.len(), pairs_b.len(), "{name}: pairs");
        assert!(pairs_a == pairs_b, "{name}: pairs differ");
        assert!(users_a == users_b, "{name}: users differ");
        for u in query(&both, "SELECT user_id, group_name FROM users") {
            let voter = u["user_id"].as_str().unwrap().rsplit('/').next().unwrap();
            assert_eq!(
                u["group_name"].as_str(),
                groups.get(voter).map(String::as_str),
                "{name}: group of voter {voter}"
            );
        }
    }
}

/// A hand-written wide export with an `xid` column: pairs as computed here by hand.
#[test]
fn polis_hand_written_wide_export() {
    let dir = tempfile::tempdir().unwrap();
    let conv = dir.path().join("tiny-talk");
    std::fs::create_dir(&conv).unwrap();
    std::fs::write(conv.join("summary.csv"), "topic,A tiny talk\nurl,x\n").unwrap();
    std::fs::write(
        conv.join("comments.csv"),
        "timestamp,datetime,comment-id,author-id,agrees,disagrees,moderated,comment-body\n\
         1,x,0,0,0,0,1,Parks for all\n\
         2,x,1,0,0,0,1,Lower taxes\n\
         3,x,2,0,0,0,0,More buses\n\
         4,x,3,0,0,0,-1,Hidden statement\n",
    )
    .unwrap();
    std::fs::write(
        conv.join("participants-votes.csv"),
        "participant,xid,group-id,n-comments,n-votes,n-agree,n-disagree,0,1,2,3\n\
         0,a-0,0,0,3,2,1,1,-1,1,\n\
         5,b-5,1,0,4,1,2,-1,1,0,-1\n\
         7,,,0,1,1,0,1,,,\n\
         9,c-9,1,0,2,1,1,1,,,-1\n",
    )
    .unwrap();
    // By hand: voter 0 agrees with 0 and 2, disagrees with 1: "Parks for all" ≻ "Lower
    // taxes", "More buses" ≻ "Lower taxes". Voter 5 agrees with 1, disagrees with 0 (3 is
    // moderated out, 2 a pass): "Lower taxes" ≻ "Parks for all". Voter 7 has no
    // disagreement and voter 9's only one is on the hidden statement: no pairs.
    let expected: BTreeSet<(String, String, String)> = [
        ("0", "Parks for all", "Lower taxes"),
        ("0", "More buses", "Lower taxes"),
        ("5", "Lower taxes", "Parks for all"),
    ]
    .iter()
    .map(|(u, a, b)| (format!("polis/tiny-talk/{u}"), a.to_string(), b.to_string()))
    .collect();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        &format!(
            "name: pol\nstages:\n  - name: votes\n    kind: polis\n    dir: {}\n    min_pairs_per_user: 1\n    unseen_frac: 0.0\n",
            conv.display()
        ),
    );
    let stdout = palpipe(&store, &["run", p.to_str().unwrap()]).ok().stdout;
    // 3 + 4 + 1 + 2 vote cells.
    assert!(
        stdout.contains("votes (participants-votes.csv) 10 cells"),
        "{stdout}"
    );
    let got: BTreeSet<(String, String, String)> = query(
        &store,
        "SELECT p.user_id AS u, l.text AS l, r.text AS r, p.label AS label FROM pairs p \
         JOIN items l ON p.left_id = l.item_id JOIN items r ON p.right_id = r.item_id",
    )
    .iter()
    .map(|row| {
        let (l, r) = (
            row["l"].as_str().unwrap().to_string(),
            row["r"].as_str().unwrap().to_string(),
        );
        let u = row["u"].as_str().unwrap().to_string();
        if row["label"].as_i64() == Some(-1) {
            (u, l, r)
        } else {
            (u, r, l)
        }
    })
    .collect();
    assert_eq!(got, expected);
    let groups: BTreeMap<String, Option<String>> =
        query(&store, "SELECT user_id, group_name FROM users")
            .iter()
            .map(|r| {
                (
                    r["user_id"].as_str().unwrap().to_string(),
                    r["group_name"].as_str().map(String::from),
                )
            })
            .collect();
    assert_eq!(
        groups,
        BTreeMap::from([
            ("polis/tiny-talk/0".to_string(), Some("0".to_string())),
            ("polis/tiny-talk/5".to_string(), Some("1".to_string())),
        ])
    );

    // A vote outside 1 / -1 / 0 names the file, line and column.
    std::fs::write(
        conv.join("participants-votes.csv"),
        "participant,group-id,0,1\n0,0,1,-1\n1,0,2,1\n",
    )
    .unwrap();
    let run = palpipe(&dir.path().join("s2"), &["run", p.to_str().unwrap()]).code(1);
    assert!(
        run.stderr
            .contains("participants-votes.csv:3: field '0' is '2', expected 1 (agree), -1 (disagree), 0 (pass) or nothing"),
        "{}",
        run.stderr
    );
}
