//! The store, SQL, and the pipeline runner, driven through the real binary on temp stores.

mod common;

use common::*;

/// The small synthetic stage and one split.
static SMALL_SYNTH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("name: small\nstages:\n{SMALL_SYNTH_STAGE}splits:\n  train: \"SELECT * FROM pairs WHERE split = 'train'\"\n")
});

/// `palpipe --version` names the numeric backend: cargo builds the binary with the features
/// the tests are built with, so `mkl` exactly when this test has the feature.
#[test]
fn version_names_the_numeric_backend() {
    let r = palpipe_raw(&["--version"]).ok();
    let backend = if cfg!(feature = "mkl") {
        "mkl"
    } else {
        "candle"
    };
    let want = format!(
        "palpipe {} (numeric backend: {backend})",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(r.stdout.trim_end(), want);
}

#[test]
fn synthetic_run_counts_and_second_run_skips_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(dir.path(), "p.yaml", &SMALL_SYNTH);
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    // 10 seen + 3 unseen users, 20 comparisons each.
    assert_eq!(scalar(&store, "SELECT count(*) AS n FROM pairs"), 13 * 20);
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) AS n FROM pairs WHERE split = 'test'"
        ),
        10 * 10
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) AS n FROM pairs WHERE split = 'unseen'"
        ),
        3 * 20
    );
    assert_eq!(scalar(&store, "SELECT count(*) AS n FROM users"), 13);
    // labels are balanced by the random side of the preferred item
    let right = scalar(&store, "SELECT count(*) AS n FROM pairs WHERE label = 1");
    assert!((90..=170).contains(&right), "{right} of 260 labels are +1");
    let before = versions(&store);
    let second = palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    assert!(second.stdout.contains("nothing to do"), "{}", second.stdout);
    assert!(second.stdout.contains("skipped"), "{}", second.stdout);
    let after = versions(&store);
    for (t, v) in &before {
        if t != "runs" {
            assert_eq!(
                after.get(t),
                Some(v),
                "table {t} changed on an unchanged rerun"
            );
        }
    }
    assert_eq!(after["runs"].1, 2, "each run is recorded");
}

#[test]
fn ingesting_the_same_data_twice_adds_no_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(dir.path(), "p.yaml", &SMALL_SYNTH);
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    let before = versions(&store);
    palpipe(&store, &["run", p.to_str().unwrap(), "--force", "data"]).ok();
    let after = versions(&store);
    for t in ["items", "pairs", "users", "embeddings"] {
        assert_eq!(before[t], after[t], "{t}");
    }
}

#[test]
fn set_override_changes_a_parameter_and_unknown_stage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(dir.path(), "p.yaml", &SMALL_SYNTH);
    palpipe(
        &store,
        &["run", p.to_str().unwrap(), "--set", "data.users=4"],
    )
    .ok();
    assert_eq!(
        scalar(&store, "SELECT count(*) FROM users WHERE role = 'seen'"),
        4
    );
    let r = palpipe(
        &store,
        &["run", p.to_str().unwrap(), "--set", "nope.users=4"],
    )
    .code(2);
    assert!(r.stderr.contains("'nope'"), "{}", r.stderr);
}

#[test]
fn dry_run_writes_nothing() {
    if local_only(
        "dry_run_writes_nothing",
        "checks that no store folder is made",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(dir.path(), "p.yaml", &SMALL_SYNTH);
    let r = palpipe(&store, &["run", p.to_str().unwrap(), "--dry-run"]).ok();
    assert!(r.stdout.contains("planned"), "{}", r.stdout);
    assert!(!store.exists(), "a dry run made the store folder");
}

#[test]
fn two_stages_owning_one_dataset_are_refused_before_any_work() {
    if local_only(
        "two_stages_owning_one_dataset_are_refused_before_any_work",
        "checks that no store folder is made",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    // The same stage twice under two names: both write the rows of dataset 'synthetic'.
    let second = SMALL_SYNTH_STAGE.replacen("name: data", "name: again", 1);
    let text = format!("name: twice\nstages:\n{SMALL_SYNTH_STAGE}{second}");
    let p = write_pipeline(dir.path(), "p.yaml", &text);
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(2);
    // The second stage's entry starts on the line after the first stage's last line.
    let line = SMALL_SYNTH_STAGE.lines().count() + 3;
    assert!(
        r.stderr.contains(&format!("p.yaml:{line}:")) && r.stderr.contains("stage 'again'"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("stage 'data' writes too"), "{}", r.stderr);
    assert!(!store.exists(), "a refused pipeline made the store folder");
}

#[test]
fn sql_formats_and_old_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(dir.path(), "p.yaml", &SMALL_SYNTH);
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    let csv = palpipe(
        &store,
        &[
            "sql",
            "SELECT split, count(*) AS n FROM pairs GROUP BY split ORDER BY split",
            "--format",
            "csv",
        ],
    )
    .ok();
    assert_eq!(csv.stdout.lines().next(), Some("split,n"));
    assert_eq!(csv.stdout.lines().count(), 5, "{}", csv.stdout);
    let table = palpipe(&store, &["sql", "SELECT count(*) AS n FROM items"]).ok();
    assert!(table.stdout.contains("| n"), "{}", table.stdout);
    let arrow = palpipe(&store, &["sql", "SELECT * FROM users", "--format", "arrow"]).ok();
    assert!(!arrow.stdout.is_empty());
    // The Arrow stream of pairs: every row, and no storage settings in its fields (the id
    // columns are stored with a codec named in Lance's field metadata).
    let out = common::bin()
        .args([
            "sql",
            "SELECT pair_id, left_id, label FROM pairs",
            "--format",
            "arrow",
        ])
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(out.stdout), None).unwrap();
    let schema = reader.schema();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows as i64, scalar(&store, "SELECT count(*) FROM pairs"));
    assert_eq!(schema.fields().len(), 3);
    for f in schema.fields() {
        assert!(f.metadata().is_empty(), "{}: {:?}", f.name(), f.metadata());
    }
    // vectors are queryable
    let dims = query(
        &store,
        "SELECT DISTINCT array_length(vector) AS d FROM embeddings",
    );
    assert_eq!(dims[0]["d"], 2);
    // a second ingest with another seed replaces the stage's rows (13 users × 20 again, as a
    // fresh store holds) in version 2 of pairs; version 1 still answers
    let first_ids = query(&store, "SELECT pair_id FROM pairs ORDER BY pair_id");
    palpipe(
        &store,
        &["run", p.to_str().unwrap(), "--set", "data.seed=8"],
    )
    .ok();
    let now = scalar(&store, "SELECT count(*) FROM pairs");
    assert_eq!(now, 13 * 20);
    assert_eq!(versions(&store)["pairs"].0, 2);
    assert_ne!(
        query(&store, "SELECT pair_id FROM pairs ORDER BY pair_id"),
        first_ids
    );
    let r = palpipe(
        &store,
        &[
            "sql",
            "SELECT count(*) AS n FROM pairs",
            "--format",
            "json",
            "--version-of",
            "pairs=1",
        ],
    )
    .ok();
    assert!(r.stdout.contains("\"n\":260"), "{}", r.stdout);
    let bad = palpipe(&store, &["sql", "SELECT 1", "--version-of", "pairs=99"]).code(2);
    assert!(bad.stderr.contains("no version 99"), "{}", bad.stderr);
}

#[test]
fn sql_errors_are_clear() {
    if local_only(
        "sql_errors_are_clear",
        "an empty folder is a store; an empty prefix is none",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    // An empty folder is a store with no tables yet (a missing one is an error).
    std::fs::create_dir(&store).unwrap();
    let r = palpipe(&store, &["sql", "SELEC count(*) FROM pairs"]).code(2);
    assert!(r.stderr.starts_with("palpipe: error:"), "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("error:").count(),
        1,
        "one message: {}",
        r.stderr
    );
    let r = palpipe(&store, &["sql", "SELECT * FROM nosuch"]).code(2);
    assert!(r.stderr.contains("nosuch"), "{}", r.stderr);
    assert!(r.stderr.contains("hint: tables are"), "{}", r.stderr);
    let r = palpipe(&store, &["sql", "DROP TABLE pairs"]).code(2);
    assert!(r.stderr.contains("only read queries"), "{}", r.stderr);
    let r = palpipe(
        &store,
        &["sql", "INSERT INTO users VALUES ('a','b','c','seen')"],
    )
    .code(2);
    assert!(r.stderr.contains("only read queries"), "{}", r.stderr);
    // a fresh store answers zero rows, not an error
    let r = palpipe(
        &store,
        &["sql", "SELECT count(*) AS n FROM pairs", "--format", "json"],
    )
    .ok();
    assert!(r.stdout.contains("\"n\":0"), "{}", r.stdout);
}

#[test]
fn store_path_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    std::fs::write(&file, "x").unwrap();
    let r = palpipe(&file, &["tables"]).code(2);
    assert!(r.stderr.contains("not a folder"), "{}", r.stderr);
}

#[test]
fn a_locked_store_fails_clearly_and_stays_intact() {
    if local_only(
        "a_locked_store_fails_clearly_and_stays_intact",
        "the writer lock exists on a folder only",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(dir.path(), "p.yaml", &SMALL_SYNTH);
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    let before = versions(&store);
    let handle = palpipe::store::Store::open(&store).unwrap();
    let lock = handle.lock().unwrap();
    let r = palpipe(&store, &["run", p.to_str().unwrap(), "--force", "data"]).code(1);
    assert!(
        r.stderr.contains("in use by another palpipe process"),
        "{}",
        r.stderr
    );
    drop(lock);
    assert_eq!(before, versions(&store));
}

#[test]
fn two_runs_at_once_never_corrupt_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(dir.path(), "p.yaml", &SMALL_SYNTH);
    let spawn = || {
        bin()
            .args(["run", p.to_str().unwrap(), "--quiet", "--store"])
            .arg(&store)
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap(), b.join().unwrap())
    });
    let ok = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert!(ok >= 1, "at least one run succeeds");
    for o in [&a, &b] {
        if !o.status.success() {
            assert!(
                // The lock on a folder; lance's conditional commit on S3 (only there: on a
                // folder the lock must refuse the second run before any commit).
                String::from_utf8_lossy(&o.stderr).contains("in use")
                    || (std::env::var("PALPIPE_TEST_STORE").as_deref() == Ok("s3")
                        && String::from_utf8_lossy(&o.stderr).contains("another writer")),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    assert_eq!(scalar(&store, "SELECT count(*) FROM pairs"), 13 * 20);
    assert_eq!(
        scalar(&store, "SELECT count(DISTINCT pair_id) FROM pairs"),
        13 * 20
    );
}
