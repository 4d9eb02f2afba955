//! Stores on object storage: `--store s3://bucket/prefix` against a real S3-compatible server
//! (moto, started by the harness on a free 127.0.0.1 port; see tests/common). The same
//! pipeline run on S3 and on a local folder gives the same tables, models and metrics;
//! checkpoints and shard metadata live under the store's prefix; two concurrent runs lose no
//! commit; N = 4 shard processes with one killed and rerun commit every content id once.
//!
//! moto must be installed (`make setup`); `PALPIPE_NO_S3_TESTS=1` skips these tests.

mod common;
#[path = "common/old_store.rs"]
mod old_store;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A synthetic pipeline with two trained PAL-A heads, a popularity baseline and their evals.
fn trained_pipeline() -> String {
    synth_pal_pipeline(
        "s3t",
        4,
        &[
            "{name: pop, kind: train, model: popularity, train: tr}",
            "{name: e3, kind: eval, model: k3, split: te}",
        ],
        &[],
    )
}

/// (table, rows) of every table, from `palpipe tables`.
fn row_counts(store: &Path) -> BTreeMap<String, i64> {
    versions(store)
        .into_iter()
        .map(|(t, (_, rows))| (t, rows))
        .collect()
}

#[test]
fn a_pipeline_on_s3_equals_the_same_pipeline_on_a_folder() {
    let Some(s3) = s3_store("run") else { return };
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let p = write_pipeline(dir.path(), "p.yaml", &trained_pipeline());
    palpipe(&local, &["run", p.to_str().unwrap()]).ok();
    palpipe(&s3, &["run", p.to_str().unwrap()]).ok();

    // The same tables, rows, comparisons and users.
    let counts = row_counts(&local);
    assert!(counts["pairs"] > 0 && counts["models"] == 3, "{counts:?}");
    assert_eq!(row_counts(&s3), counts);
    assert_eq!(pairs_and_users(&s3), pairs_and_users(&local));
    // Every table lives under the prefix, and nothing was made in a local folder named
    // after the URI.
    let keys = store_keys(&s3, "");
    for t in counts.keys() {
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&format!("{t}.lance/_versions/"))),
            "no versions of {t} under the prefix: {keys:?}"
        );
    }
    assert!(!Path::new("s3:").exists() && !dir.path().join("s3:").exists());

    // The checkpoints are under the prefix too, and the models evaluate the same.
    for m in ["k1", "k3"] {
        let files = store_keys(&s3, &format!("checkpoints/{m}/"));
        let local_files: BTreeSet<String> = std::fs::read_dir(local.join("checkpoints").join(m))
            .unwrap()
            .map(|e| {
                format!(
                    "checkpoints/{m}/{}",
                    e.unwrap().file_name().to_string_lossy()
                )
            })
            .collect();
        assert!(!local_files.is_empty());
        assert_eq!(files.into_iter().collect::<BTreeSet<_>>(), local_files);
    }
    let a = eval_json(&s3, "k3", "te");
    let b = eval_json(&local, "k3", "te");
    assert_eq!(a["n"], 30 * 30);
    assert_eq!(a["accuracy"], b["accuracy"]);
    assert_eq!(a["per_user"], b["per_user"]);

    // SQL over the remote tables.
    let sql = "SELECT split, count(*) AS n FROM pairs GROUP BY split ORDER BY split";
    assert_eq!(query(&s3, sql), query(&local, sql));

    // A re-run of the unchanged pipeline commits nothing but its row in `runs`.
    let data_versions = |s: &Path| {
        let mut v = versions(s);
        v.remove("runs");
        v
    };
    let before = data_versions(&s3);
    palpipe(&s3, &["run", p.to_str().unwrap()]).ok();
    assert_eq!(data_versions(&s3), before);
    assert_eq!(versions(&s3)["runs"].1, 2);

    // The report reads the checkpoint from the bucket (the prototype plots need it).
    let out = dir.path().join("report");
    palpipe(
        &s3,
        &["report", "--run", "latest", "--out", out.to_str().unwrap()],
    )
    .ok();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("prototypes-k3.svg"), "{md}");
    assert!(out.join("prototypes-k3.svg").is_file());
}

#[test]
fn store_uris_that_cannot_be_used_are_refused_clearly() {
    let Some(s3) = s3_store("bad") else { return };
    // An empty prefix is no store for a reading command.
    let r = palpipe(&s3, &["tables"]).code(1);
    assert!(r.stderr.contains("no store at 's3://"), "{}", r.stderr);
    assert!(r.stderr.contains("hint:"), "{}", r.stderr);
    // Schemes this build does not have: bad usage, saying what is built and the feature.
    for (uri, feature, built) in [
        ("gs://b/p", "gcp", cfg!(feature = "gcp")),
        ("az://c/p", "azure", cfg!(feature = "azure")),
    ] {
        if built {
            continue;
        }
        let r = palpipe(Path::new(uri), &["tables"]).code(2);
        assert!(r.stderr.contains("not built"), "{}", r.stderr);
        assert!(r.stderr.contains("built: s3://"), "{}", r.stderr);
        assert!(
            r.stderr.contains(&format!("cargo feature '{feature}'")),
            "{}",
            r.stderr
        );
    }
    // A bucket that does not exist: a failure naming it, not a hang.
    let start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        &format!("name: n\nstages:\n{SMALL_SYNTH_STAGE}"),
    );
    let r = palpipe(
        Path::new("s3://no-such-bucket-here/x"),
        &["run", p.to_str().unwrap()],
    )
    .code(1);
    assert!(r.stderr.contains("no-such-bucket-here"), "{}", r.stderr);
    assert!(start.elapsed() < Duration::from_secs(120));
}

#[test]
fn store_and_store_options_come_from_the_pipeline_file() {
    let Some(s3) = s3_store("opts") else { return };
    let dir = tempfile::tempdir().unwrap();
    // The endpoint and the region from the file; the keys from the environment.
    let text = format!(
        "name: o\nstore: {}\nstore_options:\n  aws_endpoint: {}\n  aws_region: us-east-1\nstages:\n{SMALL_SYNTH_STAGE}",
        s3.display(),
        moto().endpoint()
    );
    let p = write_pipeline(dir.path(), "p.yaml", &text);
    let o = bin()
        .args(["run", p.to_str().unwrap(), "--quiet"])
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("PALPIPE_STORE")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!store_keys(&s3, "pairs.lance/_versions/").is_empty());
    // 13 users × 20 comparisons (SMALL_SYNTH_STAGE).
    assert_eq!(scalar(&s3, "SELECT count(*) FROM pairs"), 13 * 20);
}

#[test]
fn store_options_on_the_command_line_win_over_the_environment() {
    let Some(s3) = s3_store("flagopts") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        &format!("name: f\nstages:\n{SMALL_SYNTH_STAGE}"),
    );
    palpipe(&s3, &["run", p.to_str().unwrap()]).ok();
    // The environment names a port nothing listens on (connections refused at once); with
    // the options, which give moto's endpoint, region and keys, it has no keys either.
    let flagged = |args: &[&str], options: bool| {
        let mut c = bin();
        for k in [
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
        ] {
            c.env_remove(k);
        }
        c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .arg("--store")
            .arg(&s3)
            .args(args);
        if !options {
            // Keys and region from the environment, so that only the endpoint is wrong;
            // nothing listens there: fail at once instead of retrying.
            c.env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_REGION", "us-east-1")
                .env("OBJECT_STORE_CLIENT_MAX_RETRIES", "0");
        } else {
            c.arg("--store-option")
                .arg(format!("aws_endpoint={}", moto().endpoint()));
            for kv in [
                "aws_region=us-east-1",
                "aws_access_key_id=testing",
                "aws_secret_access_key=testing",
            ] {
                c.args(["--store-option", kv]);
            }
        }
        c.output().unwrap()
    };
    let sql = ["sql", "SELECT count(*) AS n FROM pairs", "--format", "json"];
    let o = flagged(&sql, true);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    // 13 users × 20 comparisons (SMALL_SYNTH_STAGE).
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(r#""n":260"#),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(scalar(&s3, "SELECT count(*) FROM pairs"), 13 * 20);
    // Without the options the environment's endpoint is used, and fails.
    let o = flagged(&sql, false);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("127.0.0.1:9"), "{stderr}");
    // Options before and after the command's name: clap would keep only the later ones,
    // so palpipe refuses.
    let r = palpipe_raw(&[
        "--store-option",
        "aws_region=us-east-1",
        "tables",
        "--store",
        s3.to_str().unwrap(),
        "--store-option",
        "allow_http=true",
    ])
    .code(2);
    assert!(
        r.stderr.contains("2 --store-option flags given, 1 kept"),
        "{}",
        r.stderr
    );
    // With a folder, or without '=': bad usage, saying why.
    let r = palpipe_raw(&[
        "tables",
        "--store",
        dir.path().to_str().unwrap(),
        "--store-option",
        "aws_region=x",
    ])
    .code(2);
    assert!(r.stderr.contains("is a folder"), "{}", r.stderr);
    let r = palpipe(&s3, &["tables", "--store-option", "aws_region"]).code(2);
    assert!(r.stderr.contains("expected KEY=VALUE"), "{}", r.stderr);
}

/// Two pipelines that own different datasets of one store.
fn two_pipelines(dir: &Path) -> [PathBuf; 2] {
    ["a", "b"].map(|n| {
        // Each its own dataset (the rows it owns) and seed (its own items).
        let stage = SMALL_SYNTH_STAGE
            .replace("name: data", &format!("name: {n}\n    dataset: syn-{n}"))
            .replace("seed: 7", if n == "a" { "seed: 7" } else { "seed: 8" });
        write_pipeline(
            dir,
            &format!("{n}.yaml"),
            &format!("name: {n}\nstages:\n{stage}"),
        )
    })
}

fn start_run(store: &Path, p: &Path) -> Child {
    bin()
        .args(["run", p.to_str().unwrap(), "--quiet", "--store"])
        .arg(store)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn two_concurrent_runs_on_one_s3_store_lose_no_commit() {
    let Some(s3) = s3_store("concurrent") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = two_pipelines(dir.path());
    // What the store must hold: both pipelines, one after the other, on a folder.
    let local = dir.path().join("local");
    palpipe(&local, &["run", a.to_str().unwrap()]).ok();
    palpipe(&local, &["run", b.to_str().unwrap()]).ok();
    let expected = pairs_and_users(&local);

    // Twice: on a new store (both create the tables) and on one that has them.
    for round in 0..2 {
        let runs = [start_run(&s3, &a), start_run(&s3, &b)];
        let mut failed = Vec::new();
        for (child, p) in runs.into_iter().zip([&a, &b]) {
            let o = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            match o.status.code() {
                Some(0) => {}
                Some(1) => {
                    // A clean refusal: one error line with a hint, no panic.
                    assert!(err.starts_with("palpipe: error:"), "round {round}: {err}");
                    assert!(err.contains("hint:"), "round {round}: {err}");
                    assert!(!err.contains("panicked"), "round {round}: {err}");
                    assert!(!err.contains(".rs:"), "round {round}: {err}");
                    failed.push(p.clone());
                }
                other => panic!("round {round}: exit {other:?}: {err}"),
            }
        }
        // What failed is run again, alone; then the store holds both.
        for p in failed {
            palpipe(&s3, &["run", p.to_str().unwrap()]).ok();
        }
        assert_eq!(pairs_and_users(&s3), expected, "round {round}");
        let items = scalar(&s3, "SELECT count(*) FROM items");
        let distinct = scalar(&s3, "SELECT count(DISTINCT item_id) FROM items");
        assert_eq!(items, distinct, "round {round}: an item stored twice");
        assert_eq!(
            items,
            scalar(&local, "SELECT count(*) FROM items"),
            "round {round}"
        );
    }
}

/// A synthetic pipeline of `dataset` from `seed`: its 50 items (and their vectors) follow
/// from the seed alone, so two pipelines of one seed add the same items, each with pairs and
/// users of its own dataset.
fn seeded_pipeline(dir: &Path, name: &str, dataset: &str, seed: u64) -> PathBuf {
    let stage = SMALL_SYNTH_STAGE
        .replace("name: data", &format!("name: data\n    dataset: {dataset}"))
        .replace("seed: 7", &format!("seed: {seed}"));
    write_pipeline(
        dir,
        &format!("{name}.yaml"),
        &format!("name: {name}\nstages:\n{stage}"),
    )
}

/// The content tables' keys, counted: (rows, distinct keys) of items and of embeddings.
fn content_keys(store: &Path) -> Vec<(i64, i64)> {
    [
        ("items", "item_id"),
        ("embeddings", "content_id || '/' || encoder_id"),
    ]
    .iter()
    .map(|(t, k)| {
        (
            scalar(store, &format!("SELECT count(*) FROM {t}")),
            scalar(store, &format!("SELECT count(DISTINCT {k}) FROM {t}")),
        )
    })
    .collect()
}

/// Starts `pipelines` on `store` at the same moment; waits for all and returns, per run,
/// `None` when it succeeded or its error text when it failed cleanly (exit 1, one error line
/// with a hint, no panic, no source path). Any other outcome fails the test.
fn race(store: &Path, pipelines: &[&Path], round: usize) -> Vec<Option<String>> {
    let runs: Vec<Child> = pipelines.iter().map(|p| start_run(store, p)).collect();
    runs.into_iter()
        .map(|child| {
            let o = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            match o.status.code() {
                Some(0) => None,
                Some(1) => {
                    assert!(err.starts_with("palpipe: error:"), "round {round}: {err}");
                    assert!(err.contains("hint:"), "round {round}: {err}");
                    assert!(!err.contains("panicked"), "round {round}: {err}");
                    assert!(!err.contains(".rs:"), "round {round}: {err}");
                    Some(err)
                }
                other => panic!("round {round}: exit {other:?}: {err}"),
            }
        })
        .collect()
}

/// Two runs adding the same new items at the same moment, many times over: on each round's
/// fresh store a base pipeline (other items) runs first, then two pipelines of one seed
/// start together: on even rounds two datasets (the same items, pairs of their own), on odd
/// rounds the same pipeline twice (one owned scope, empty when both read it). Afterwards every
/// item and vector is stored once and the store equals the same pipelines run one after the
/// other on a folder. `new` makes each round's store.
fn same_new_items_from_two_writers(new: &dyn Fn(usize) -> PathBuf, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let base = seeded_pipeline(dir.path(), "base", "syn-base", 9);
    let a = seeded_pipeline(dir.path(), "a", "syn-a", 7);
    let b = seeded_pipeline(dir.path(), "b", "syn-b", 7);
    // What the store must hold: the pipelines one after the other, on a folder.
    let expect = |ps: &[&Path], name: &str| {
        let local = dir.path().join(name);
        for p in ps {
            palpipe(&local, &["run", p.to_str().unwrap()]).ok();
        }
        (pairs_and_users(&local), content_keys(&local))
    };
    let both = expect(&[&base, &a, &b], "both");
    let one = expect(&[&base, &a], "one");
    // 50 items of seed 9 and 50 of seed 7, each with its vector, once.
    assert_eq!(both.1, vec![(100, 100), (100, 100)]);
    assert_eq!(one.1, both.1);
    let mut refused = 0;
    for round in 0..rounds {
        let store = new(round);
        palpipe(&store, &["run", base.to_str().unwrap()]).ok();
        let (runs, expected): (Vec<&Path>, _) = if round % 2 == 0 {
            (vec![&a, &b], &both)
        } else {
            (vec![&a, &a], &one)
        };
        let outcome = race(&store, &runs, round);
        // What failed is run again, alone.
        for (p, o) in runs.iter().zip(&outcome) {
            if o.is_some() {
                refused += 1;
                palpipe(&store, &["run", p.to_str().unwrap()]).ok();
            }
        }
        assert_eq!(
            content_keys(&store),
            expected.1,
            "round {round}: (rows, distinct keys) of items and embeddings; runs: {outcome:?}"
        );
        assert_eq!(pairs_and_users(&store), expected.0, "round {round}");
    }
    eprintln!("{rounds} rounds, {refused} runs refused and run again");
}

#[test]
fn two_runs_adding_the_same_items_on_s3_store_each_once() {
    if s3_store("probe").is_none() {
        return;
    }
    same_new_items_from_two_writers(
        &|round| s3_store(&format!("same-{round}")).expect("moto started above"),
        10,
    );
}

#[test]
fn two_runs_adding_the_same_items_on_a_folder_store_each_once() {
    let dir = tempfile::tempdir().unwrap();
    // On a folder the writer lock lets one run at a time: the other is refused cleanly.
    same_new_items_from_two_writers(&|round| dir.path().join(format!("s{round}")), 4);
}

/// A persona store without vectors (the data stage only) at `store`.
fn persona_store(dir: &Path, store: &Path, users: usize) {
    let text = format!(
        "name: p\nstages:\n  - name: data\n    kind: persona\n    dir: {}\n    personas: [art, music]\n    users_per_persona: {users}\n    queries_per_user: 30\n    unseen_users_per_persona: 0\n",
        shared_data().join("persona").display()
    );
    let p = write_pipeline(dir, "p.yaml", &text);
    palpipe(store, &["run", p.to_str().unwrap()]).ok();
}

/// `store` holds every vector of `expected` (content id → vector) once, nothing else, each
/// equal to the expected one up to float noise.
fn assert_each_vector_once(store: &Path, expected: &std::collections::HashMap<String, Vec<f64>>) {
    assert_eq!(
        content_keys(store)[1],
        (expected.len() as i64, expected.len() as i64),
        "(rows, distinct (content, encoder)) of embeddings"
    );
    let got = stored_vectors(store);
    assert_eq!(
        got.keys().collect::<BTreeSet<_>>(),
        expected.keys().collect::<BTreeSet<_>>()
    );
    for (id, v) in expected {
        let w = &got[id];
        assert_eq!(v.len(), w.len());
        let worst = v
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-4, "{id}: differs by {worst}");
    }
}

/// A persona store without vectors on `s3`, and what one `palpipe embed` stores in it
/// (from the same store on a folder): content id → vector.
fn persona_and_expected_vectors(
    dir: &Path,
    s3: &Path,
) -> std::collections::HashMap<String, Vec<f64>> {
    persona_store(dir, s3, 1);
    let local = dir.join("local");
    persona_store(dir, &local, 1);
    palpipe(&local, &["embed"]).ok();
    let expected = stored_vectors(&local);
    assert!(expected.len() > 16, "{}", expected.len());
    expected
}

/// Two embeds of the same new texts: the second holds after reading the cache (nothing is
/// cached) while the first embeds and commits every text; then it embeds and commits its
/// chunks. Each vector is stored once, as one embed stores it, and the second says the
/// texts were cached.
#[test]
fn two_embeds_of_the_same_new_texts_on_s3_store_each_vector_once() {
    require_minilm();
    let Some(s3) = s3_store("embed-twice") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = persona_and_expected_vectors(dir.path(), &s3);
    let (resume, log) = (dir.path().join("resume"), dir.path().join("late.log"));
    let late = start_paused(
        &s3,
        &["embed", "--chunk", "8"],
        "embed-cache-read",
        &resume,
        &log,
    );
    wait_for_pause(&log, "embed-cache-read");
    let first = palpipe(&s3, &["embed", "--chunk", "8"]).ok();
    assert!(
        first
            .stdout
            .contains(&format!("embedded {}", expected.len())),
        "{}",
        first.stdout
    );
    std::fs::write(&resume, "").unwrap();
    let (code, out, err) = finish_paused(late, &log);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_each_vector_once(&s3, &expected);
    assert!(
        out.contains(&format!("embedded 0, already cached {}", expected.len())),
        "{out}"
    );
}

/// The persona pipeline of `serve_cli` (two personas, three users each, 20 statements
/// each; one unseen user per persona): its data and embed stages, and with `train` a PAL-B
/// head `pb` (K = 2, prompt-conditioned) on the seen users' MiniLM vectors.
fn persona_pipeline(dir: &Path, train: bool) -> PathBuf {
    let mut text = format!(
        "name: p\nstages:\n  - name: data\n    kind: persona\n    dir: {}\n    personas: [art, math]\n    users_per_persona: 3\n    queries_per_user: 20\n    unseen_users_per_persona: 1\n    unseen_queries_per_user: 16\n  - name: embed\n    kind: embed\n",
        shared_data().join("persona").display()
    );
    if train {
        text.push_str("  - {name: pb, kind: train, model: pal-b, k: 2, train: tr, encoder: all-MiniLM-L6-v2, config: {d: 8}, training: {epochs: 2}}\nsplits:\n  tr: \"SELECT * FROM pairs WHERE split = 'train'\"\n");
    }
    write_pipeline(dir, if train { "pt.yaml" } else { "p.yaml" }, &text)
}

/// `palpipe score` of texts the store has as items but no vectors for, held after it read
/// the cache (nothing found) while `palpipe embed` stores those vectors; then it embeds the
/// texts and writes them back. Each vector is stored once, as embed stores it, and the
/// rewards equal those a later score computes from the stored vectors.
#[test]
fn a_score_racing_an_embed_of_the_same_new_texts_stores_each_vector_once() {
    require_minilm();
    let Some(s3) = s3_store("score-race") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Four comparisons whose twelve texts (prompts, chosen, rejected) are all new.
    let rows: Vec<[String; 3]> = (0..4)
        .map(|i| {
            [
                format!("Question {i}: would you rather visit a gallery or a concert hall?"),
                format!("I would pick the gallery, visit number {i}."),
                format!("I would pick the concert hall, visit number {i}."),
            ]
        })
        .collect();
    let comparisons = dir.path().join("new.jsonl");
    write_chosen_rejected(&comparisons, &rows);
    // The reference, on a folder: the persona texts and the new ones, embedded by `embed`.
    let local = dir.path().join("local");
    palpipe(
        &local,
        &["run", persona_pipeline(dir.path(), false).to_str().unwrap()],
    )
    .ok();
    ingest_chosen_rejected(&local, &comparisons, &[]).ok();
    palpipe(&local, &["embed"]).ok();
    let expected = stored_vectors(&local);
    // The same on the bucket, with a trained head, the new texts ingested but not embedded.
    palpipe(
        &s3,
        &["run", persona_pipeline(dir.path(), true).to_str().unwrap()],
    )
    .ok();
    ingest_chosen_rejected(&s3, &comparisons, &[]).ok();
    let missing = expected.len() - stored_vectors(&s3).len();
    assert_eq!(missing, 12, "each new text has no vector yet");
    let user = query(
        &s3,
        "SELECT user_id FROM pairs WHERE split = 'train' AND dataset <> 'mine' ORDER BY user_id LIMIT 1",
    )[0]["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    let input = dir.path().join("score.jsonl");
    let text: String = rows
        .iter()
        .map(|[p, c, r]| {
            format!(
                "{}\n",
                serde_json::json!({"user": user, "prompt": p, "candidates": [c, r]})
            )
        })
        .collect();
    std::fs::write(&input, text).unwrap();
    let args = [
        "score",
        "--model",
        "pb",
        "--input",
        input.to_str().unwrap(),
        "--json",
    ];
    let (resume, log) = (dir.path().join("resume"), dir.path().join("score.log"));
    let late = start_paused(&s3, &args, "serve-cache-read", &resume, &log);
    wait_for_pause(&log, "serve-cache-read");
    let embed = palpipe(&s3, &["embed"]).ok();
    assert!(
        embed.stdout.contains(&format!("embedded {missing}")),
        "{}",
        embed.stdout
    );
    std::fs::write(&resume, "").unwrap();
    let (code, out, err) = finish_paused(late, &log);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_each_vector_once(&s3, &expected);
    assert_eq!(out.lines().count(), 8, "{out}");
    // Scored again from the vectors `embed` stored (embedded in other batches, so equal up
    // to the last bits of floating point): the same lines, numbers within 1e-5.
    let again = palpipe(&s3, &args).ok();
    let lines = |s: &str| -> Vec<Value> {
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (first, second) = (lines(&out), lines(&again.stdout));
    assert_eq!(first.len(), second.len(), "{out}\n{}", again.stdout);
    for (a, b) in first.iter().zip(&second) {
        assert!(
            json_close(a, b, 1e-5),
            "rewards from the stored vectors: {a} vs {b}"
        );
    }
}

/// Whether two JSON values are equal but for numbers, which may differ by `tol` (absolute,
/// or relative to the larger magnitude when that is above 1).
fn json_close(a: &Value, b: &Value, tol: f64) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= tol * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y, tol))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w, tol)))
        }
        _ => a == b,
    }
}

/// A sharded run's commit holds after its checks while a plain embed commits the same
/// vectors: the commit is refused (re-run the shards), and each vector is stored once.
#[test]
fn a_sharded_commit_racing_an_embed_of_the_same_texts_stores_each_vector_once() {
    require_minilm();
    let Some(s3) = s3_store("commit-race") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = persona_and_expected_vectors(dir.path(), &s3);
    // Some vectors first, so that the commit adds to a table (a table created meanwhile
    // refuses the commit another way).
    palpipe(
        &s3,
        &["embed", "--targets", "items", "--where", "item_id < '4'"],
    )
    .ok();
    let before = scalar(&s3, "SELECT count(*) FROM embeddings") as usize;
    assert!(before > 0 && before < expected.len(), "{before}");
    assert_eq!(
        finish_shard(start_shard(&s3, "r1", 0, 1, &[])),
        expected.len() - before
    );
    let (resume, log) = (dir.path().join("resume"), dir.path().join("commit.log"));
    let commit = start_paused(
        &s3,
        &["commit", "--run-id", "r1", "--shards", "1"],
        "commit-checked",
        &resume,
        &log,
    );
    wait_for_pause(&log, "commit-checked");
    palpipe(&s3, &["embed"]).ok();
    std::fs::write(&resume, "").unwrap();
    let (code, out, err) = finish_paused(commit, &log);
    assert_each_vector_once(&s3, &expected);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("already in embeddings"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(!err.contains(".rs:"), "{err}");
    // The refused run is not committed: a second commit is refused the same way.
    let r = palpipe(&s3, &["commit", "--run-id", "r1", "--shards", "1"]).code(1);
    assert!(r.stderr.contains("already in embeddings"), "{}", r.stderr);
}

/// Four pipelines started together, each of six ingest stages (so six commits to each
/// content table), stage j of every pipeline adding the same 50 items: writers keep losing
/// commits to each other, and all four succeed; the store then equals the four run one
/// after the other on a folder.
#[test]
fn four_runs_committing_often_to_one_s3_store_all_succeed() {
    if s3_store("probe-four").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pipelines: Vec<PathBuf> = (0..4)
        .map(|w| {
            let stages: String = (0..6)
                .map(|j| {
                    SMALL_SYNTH_STAGE
                        .replace(
                            "name: data",
                            &format!("name: d{j}\n    dataset: syn-{w}-{j}"),
                        )
                        .replace("seed: 7", &format!("seed: {}", 20 + j))
                })
                .collect();
            write_pipeline(
                dir.path(),
                &format!("w{w}.yaml"),
                &format!("name: w{w}\nstages:\n{stages}"),
            )
        })
        .collect();
    let local = dir.path().join("local");
    for p in &pipelines {
        palpipe(&local, &["run", p.to_str().unwrap()]).ok();
    }
    let expected = (pairs_and_users(&local), content_keys(&local));
    assert_eq!(expected.1, vec![(300, 300), (300, 300)]);
    for round in 0..2 {
        let s3 = s3_store(&format!("four-{round}")).unwrap();
        let refs: Vec<&Path> = pipelines.iter().map(PathBuf::as_path).collect();
        let outcome = race(&s3, &refs, round);
        assert!(
            outcome.iter().all(Option::is_none),
            "round {round}: {outcome:?}"
        );
        assert_eq!(content_keys(&s3), expected.1, "round {round}");
        assert_eq!(pairs_and_users(&s3), expected.0, "round {round}");
    }
}

/// Two runs upgrading one old store (its `pairs` without `weight`) at once, both past the
/// check that the column is missing before either adds it: both succeed, the column is added
/// once, and the store equals the same runs on a fresh folder.
#[test]
fn two_runs_upgrading_one_old_s3_store_both_succeed() {
    let Some(s3) = s3_store("upgrade") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = seeded_pipeline(dir.path(), "base", "syn-base", 9);
    let a = seeded_pipeline(dir.path(), "a", "syn-a", 7);
    let b = seeded_pipeline(dir.path(), "b", "syn-b", 8);
    let old = dir.path().join("old");
    palpipe(&old, &["run", base.to_str().unwrap()]).ok();
    old_store::make_old(&old);
    old_store::upload(&old, &s3);
    assert_eq!(versions(&s3)["pairs"].0, 1);
    let fresh = dir.path().join("fresh");
    for p in [&base, &a, &b] {
        palpipe(&fresh, &["run", p.to_str().unwrap()]).ok();
    }
    let resume = dir.path().join("resume");
    let runs: Vec<(Child, PathBuf)> = [&a, &b]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let log = dir.path().join(format!("run{i}.log"));
            let c = start_paused(
                &s3,
                &["run", p.to_str().unwrap()],
                "upgrade-checked",
                &resume,
                &log,
            );
            (c, log)
        })
        .collect();
    for (_, log) in &runs {
        wait_for_pause(log, "upgrade-checked");
    }
    std::fs::write(&resume, "").unwrap();
    let mut notes = 0;
    for (c, log) in runs {
        let (code, out, err) = finish_paused(c, &log);
        assert_eq!(code, 0, "{out}\n{err}");
        notes += err.matches("added column 'weight'").count();
    }
    assert_eq!(notes, 1, "the upgrade is said once");
    assert_eq!(pairs_and_users(&s3), pairs_and_users(&fresh));
    assert_eq!(content_keys(&s3), content_keys(&fresh));
    let total = scalar(&s3, "SELECT count(*) FROM pairs");
    assert_eq!(
        scalar(&s3, "SELECT count(*) FROM pairs WHERE weight = 1.0"),
        total
    );
}

#[test]
fn four_shards_on_s3_one_killed_and_rerun_equal_one_embed() {
    require_minilm();
    let Some(s3) = s3_store("shards") else { return };
    let dir = tempfile::tempdir().unwrap();
    persona_store(dir.path(), &s3, 2);
    let local = dir.path().join("local");
    persona_store(dir.path(), &local, 2);
    palpipe(&local, &["embed"]).ok();
    let expected = stored_vectors(&local);
    assert!(expected.len() > 20, "{}", expected.len());

    // Shard 1 is killed once it has staged a chunk (one text per chunk), before its metadata.
    let data = |s: &Path| store_keys(s, "embeddings.lance/data/");
    let mut victim = start_shard(&s3, "r1", 1, 4, &["--chunk", "1"]);
    let start = Instant::now();
    while data(&s3).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "shard 1 wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert!(
        store_keys(&s3, "_palpipe/runs/r1/").is_empty(),
        "shard 1 finished before it was killed; the test needs a longer shard"
    );
    let orphans = data(&s3).len();

    // The others side by side, then shard 1 again, then one commit.
    let others: Vec<Child> = [0, 2, 3]
        .iter()
        .map(|k| start_shard(&s3, "r1", *k, 4, &["--chunk", "8"]))
        .collect();
    let mut embedded: usize = others.into_iter().map(finish_shard).sum();
    assert!(
        store_keys(&s3, "embeddings.lance/_versions/").is_empty(),
        "a shard committed"
    );
    let r = palpipe(&s3, &["commit", "--run-id", "r1", "--shards", "4"]).code(1);
    assert!(r.stderr.contains("missing shard 1 of 4"), "{}", r.stderr);
    assert!(
        r.stderr.contains("s3://") && r.stderr.contains("shard-1-of-4.json"),
        "{}",
        r.stderr
    );
    embedded += finish_shard(start_shard(&s3, "r1", 1, 4, &["--chunk", "8"]));
    assert_eq!(embedded, expected.len());
    let metas = store_keys(&s3, "_palpipe/runs/r1/");
    assert_eq!(
        metas,
        (0..4)
            .map(|k| format!("_palpipe/runs/r1/shard-{k}-of-4.json"))
            .collect::<Vec<_>>()
    );
    // Two commits of the run at once: no lock file on a bucket, yet one version only.
    let commits: Vec<Child> = (0..2)
        .map(|_| {
            bin()
                .args(["commit", "--run-id", "r1", "--shards", "4", "--store"])
                .arg(&s3)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outcomes: Vec<(Option<i32>, String, String)> = commits
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .collect();
    let published = outcomes
        .iter()
        .filter(|(code, out, _)| {
            *code == Some(0) && out.contains(&format!("committed {embedded} rows"))
        })
        .count();
    assert_eq!(published, 1, "{outcomes:?}");
    for (code, out, err) in &outcomes {
        let ok = (*code == Some(0)
            && (out.contains("committed") || out.contains("already committed")))
            || (*code == Some(1) && err.contains("is being committed by another process"));
        assert!(ok, "{code:?}\n{out}\n{err}");
    }
    assert_eq!(versions(&s3)["embeddings"], (1, expected.len() as i64));
    assert_each_vector_once(&s3, &expected);
    // The same commit again is a no-op; vacuum removes the killed attempt's files.
    let r = palpipe(&s3, &["commit", "--run-id", "r1", "--shards", "4"]).ok();
    assert!(r.stdout.contains("already committed"), "{}", r.stdout);
    let r = palpipe(&s3, &["vacuum", "--older-than", "0s"]).ok();
    assert!(
        r.stdout.contains(&format!(
            "embeddings: removed {orphans} uncommitted data files"
        )),
        "{}",
        r.stdout
    );
    assert_eq!(stored_vectors(&s3).len(), expected.len());
    // Vector search over the remote table finds what it finds over the folder.
    let texts = |s: &Path| -> Vec<String> {
        let r = palpipe(s, &["search", "--text", "painting", "--k", "3", "--json"]).ok();
        r.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].to_string())
            .collect()
    };
    let found = texts(&s3);
    assert_eq!(found.len(), 3);
    assert_eq!(found, texts(&local));
}
