//! Bad input: each case exits non-zero with one clear message and leaves every table as it was.

mod common;

use std::path::Path;

use common::*;

fn persona_line(statement: &str, matching: &str) -> String {
    let other = if matching == " Yes" { " No" } else { " Yes" };
    serde_json::json!({
        "question": format!("Is the following statement something you would say?\n\"{statement}\""),
        "statement": statement,
        "answer_matching_behavior": matching,
        "answer_not_matching_behavior": other,
        "label_confidence": 0.9
    })
    .to_string()
}

/// A small persona folder: two personas, ten statements each.
fn persona_dir(dir: &Path) -> std::path::PathBuf {
    let d = dir.join("persona");
    std::fs::create_dir_all(&d).unwrap();
    for p in ["art", "math"] {
        let lines: Vec<String> = (0..10)
            .map(|i| {
                persona_line(
                    &format!("{p} statement {i}"),
                    if i % 2 == 0 { " Yes" } else { " No" },
                )
            })
            .collect();
        std::fs::write(
            d.join(format!("interest-in-{p}.jsonl")),
            lines.join("\n") + "\n",
        )
        .unwrap();
    }
    d
}

fn persona_pipeline(dir: &Path, data: &Path) -> std::path::PathBuf {
    let text = format!(
        "name: bad\nstages:\n  - name: synth\n    kind: synthetic\n    d: 2\n    users: 3\n    unseen_users: 0\n    items: 20\n  - name: people\n    kind: persona\n    dir: {}\n    personas: [art, math]\n    users_per_persona: 2\n    queries_per_user: 6\n    unseen_users_per_persona: 1\n    unseen_queries_per_user: 4\n",
        data.display()
    );
    write_pipeline(dir, "p.yaml", &text)
}

fn assert_store_empty(store: &Path) {
    // A run refused before any work need not create the folder at all.
    if !store_exists(store) {
        return;
    }
    let v = versions(store);
    assert!(v.keys().all(|t| t == "runs"), "tables written: {v:?}");
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        "name: x\nstages:\n  - name: a\n    kind: [synthetic\n",
    );
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(2);
    assert!(r.stderr.contains("p.yaml:"), "{}", r.stderr);
    assert_store_empty(&store);
}

#[test]
fn unknown_stage_kind_names_line_and_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        "name: x\nstages:\n  - name: a\n    kind: synthetik\n",
    );
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(2);
    assert!(r.stderr.contains("p.yaml:4:"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("unknown stage kind 'synthetik'; did you mean 'synthetic'?"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("persona"),
        "lists the kinds: {}",
        r.stderr
    );
    assert_store_empty(&store);
}

#[test]
fn wrong_parameter_type_and_unknown_key_name_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        "name: x\nstages:\n  - name: a\n    kind: synthetic\n    users: many\n  - name: b\n    kind: synthetic\n    dataset: b\n    colour: red\n",
    );
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(2);
    assert!(
        r.stderr.contains("p.yaml:5:5: 'stages.0.users'"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("p.yaml:9:5"),
        "both errors at once: {}",
        r.stderr
    );
    assert!(r.stderr.contains("colour"), "{}", r.stderr);
    assert_store_empty(&store);
}

#[test]
fn duplicate_stage_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        "name: x\nstages:\n  - name: a\n    kind: synthetic\n  - name: a\n    kind: synthetic\n",
    );
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(2);
    assert!(
        r.stderr.contains("duplicate stage name 'a'"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("p.yaml:5:"), "{}", r.stderr);
}

#[test]
fn missing_data_folder_is_found_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = persona_pipeline(dir.path(), &dir.path().join("nowhere"));
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(2);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    assert!(r.stderr.contains("p.yaml:"), "{}", r.stderr);
    assert_store_empty(&store);
}

#[test]
fn a_json_line_that_does_not_parse_names_file_and_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let data = persona_dir(dir.path());
    let f = data.join("interest-in-math.jsonl");
    let good = std::fs::read_to_string(&f).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    lines[2] = "{\"statement\": oops";
    std::fs::write(&f, lines.join("\n")).unwrap();
    let p = persona_pipeline(dir.path(), &data);
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(1);
    assert!(
        r.stderr.contains("interest-in-math.jsonl:3"),
        "{}",
        r.stderr
    );
    // the first stage (synthetic) succeeded and stays; the failed stage wrote nothing
    let users = scalar(
        &store,
        "SELECT count(*) FROM users WHERE dataset = 'persona'",
    );
    assert_eq!(users, 0);
    let before = versions(&store);
    // fix the file: the rerun skips the finished stage and retries the failed one
    std::fs::write(&f, &good).unwrap();
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    assert!(r.stdout.contains("skipped"), "{}", r.stdout);
    assert!(
        scalar(
            &store,
            "SELECT count(*) FROM users WHERE dataset = 'persona'"
        ) > 0
    );
    assert_eq!(versions(&store)["embeddings"], before["embeddings"]);
}

#[test]
fn an_empty_data_file_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let data = persona_dir(dir.path());
    std::fs::write(data.join("interest-in-art.jsonl"), "").unwrap();
    let p = persona_pipeline(dir.path(), &data);
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(1);
    assert!(r.stderr.contains("interest-in-art.jsonl"), "{}", r.stderr);
    assert!(r.stderr.contains("empty"), "{}", r.stderr);
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM users WHERE dataset = 'persona'"
        ),
        0
    );
}

#[test]
fn a_csv_missing_a_column_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let conv = dir.path().join("conv");
    std::fs::create_dir_all(&conv).unwrap();
    std::fs::write(
        conv.join("summary.csv"),
        "topic,A topic\nurl,x\nvoters,2\ncomments,2\ngroups,2\nconversation-description,d\n",
    )
    .unwrap();
    std::fs::write(
        conv.join("comments.csv"),
        "timestamp,datetime,comment-id,author-id,agrees,disagrees,moderated,comment-body\n1,d,0,0,1,1,1,first\n2,d,1,0,1,1,1,second\n",
    )
    .unwrap();
    // votes.csv lacks the `vote` column
    std::fs::write(
        conv.join("votes.csv"),
        "timestamp,datetime,comment-id,voter-id\n1,d,0,5\n",
    )
    .unwrap();
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        &format!(
            "name: x\nstages:\n  - name: v\n    kind: polis\n    dir: {}\n",
            conv.display()
        ),
    );
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(1);
    assert!(r.stderr.contains("votes.csv"), "{}", r.stderr);
    assert!(r.stderr.contains("'vote'"), "{}", r.stderr);
    assert_store_empty(&store);
}

#[test]
fn a_kind_check_names_the_key_it_refuses() {
    // Each kind's check returns its key: dedup's `reference` (line 5), pick_a_filter's
    // `seen_users` (line 9), and embed's `encoder` (line 12), all reported at once.
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        "name: x\nstages:\n  - name: leak\n    kind: dedup\n    reference: [v2-test]\n  - name: paf\n    kind: pick_a_filter\n    beta: 0.5\n    seen_users: 0\n  - name: vec\n    kind: embed\n    encoder: word2vec\n",
    );
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(2);
    for (at, what) in [
        ("p.yaml:5:5: 'stages.0.reference'", "is also the target"),
        ("p.yaml:9:5: 'stages.1.seen_users'", "at least 1"),
        (
            "p.yaml:12:5: 'stages.2.encoder'",
            "unknown encoder 'word2vec'",
        ),
    ] {
        assert!(r.stderr.contains(at), "{at}: {}", r.stderr);
        assert!(r.stderr.contains(what), "{what}: {}", r.stderr);
    }
    assert_store_empty(&store);
}

/// Lance reads its thread settings the first time it needs its CPU pool and panics on a
/// bad value (a backtrace, no message a user can act on). palpipe refuses them first: exit
/// 2, one line naming the variable and the value, nothing written.
#[test]
fn a_bad_lance_thread_setting_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        "name: threads\nstages:\n  - name: synth\n    kind: synthetic\n    d: 2\n    users: 3\n    unseen_users: 0\n    items: 20\n",
    );
    let cases = [
        ("LANCE_CPU_THREADS", "two"),
        ("LANCE_CPU_THREADS", "0"),
        ("LANCE_CPU_THREADS", "-3"),
        ("LANCE_IO_CORE_RESERVATION", "-1"),
        ("LANCE_IO_CORE_RESERVATION", "1.5"),
    ];
    for (i, (name, value)) in cases.into_iter().enumerate() {
        let store = new_store(dir.path(), &format!("s{i}"));
        let r = palpipe_with_env(&store, &[(name, value)], &["run", p.to_str().unwrap()]).code(2);
        let line =
            format!("palpipe: error: the environment variable {name} must be a whole number");
        assert!(r.stderr.starts_with(&line), "{name}={value}: {}", r.stderr);
        assert!(r.stderr.contains(&format!("got '{value}'")), "{}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert_store_empty(&store);
    }
    // The values Lance accepts still run: 1 thread, no cores kept for I/O, padded with
    // spaces as Lance's own reading allows.
    let store = new_store(dir.path(), "fine");
    palpipe_with_env(
        &store,
        &[
            ("LANCE_CPU_THREADS", " 1 "),
            ("LANCE_IO_CORE_RESERVATION", "0"),
        ],
        &["run", p.to_str().unwrap()],
    )
    .ok();
    assert!(
        versions(&store).contains_key("pairs"),
        "{:?}",
        versions(&store)
    );
}

/// `index --partitions 0` is refused by the argument parser (exit 2, the flag named), before
/// the store is opened, instead of reaching Lance's k-means with no centroids.
#[test]
fn index_with_zero_partitions_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let r = palpipe(&store, &["index", "--partitions", "0"]).code(2);
    assert!(r.stderr.contains("--partitions"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(!store_exists(&store), "nothing created");
}
