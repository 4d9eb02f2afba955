//! Past one process: sharded embedding committed once (`embed --shard K/N --uncommitted`,
//! `commit`), `vacuum`, and vector search in SQL (`knn`, `cosine_similarity`,
//! `l2_distance`), through the real binary on a local store with all-MiniLM-L6-v2 and real
//! persona statements.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;

/// A persona store without vectors: the data stage only.
fn persona_store(dir: &Path, users: usize) -> PathBuf {
    let text = format!(
        "name: p\nstages:\n  - name: data\n    kind: persona\n    dir: {}\n    personas: [art, music]\n    users_per_persona: {users}\n    queries_per_user: 30\n    unseen_users_per_persona: 0\n",
        shared_data().join("persona").display()
    );
    let p = write_pipeline(dir, "p.yaml", &text);
    let store = dir.join("s");
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    store
}

/// The ids an embed of every target must store: text items and prompts with a non-empty
/// text, read from the tables themselves.
fn embeddable_ids(store: &Path) -> BTreeSet<String> {
    let rows = query(
        store,
        "SELECT item_id AS id FROM items WHERE kind = 'text' AND trim(text) <> '' \
         UNION ALL SELECT prompt_id AS id FROM prompts WHERE trim(text) <> ''",
    );
    rows.iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// The data files of `embeddings`.
fn data_files(store: &Path) -> BTreeSet<String> {
    std::fs::read_dir(store.join("embeddings.lance/data"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// content id → vector of every stored row, from `palpipe sql --format json`.
fn stored_vectors(store: &Path) -> BTreeMap<String, Vec<f64>> {
    query(
        store,
        "SELECT content_id, vector FROM embeddings ORDER BY content_id",
    )
    .into_iter()
    .map(|r| {
        let v = r["vector"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        (r["content_id"].as_str().unwrap().to_string(), v)
    })
    .collect()
}

#[test]
fn four_shards_one_killed_and_rerun_commit_every_content_id_once() {
    require_minilm();
    let dir = tempfile::tempdir().unwrap();
    let store = persona_store(dir.path(), 4);
    // The two answer items first, in the ordinary way: the shards then embed what is not
    // cached (the statements).
    palpipe(&store, &["embed", "--targets", "items"]).ok();
    let before = versions(&store)["embeddings"];
    let cached = scalar(&store, "SELECT count(*) FROM embeddings") as usize;
    let expected = embeddable_ids(&store);
    assert!(expected.len() > cached + 20, "{} {cached}", expected.len());

    // Shard 1 is killed once it has staged a chunk (one text per chunk: a long window).
    let files_before = data_files(&store);
    let mut victim = start_shard(&store, "r1", 1, 4, &["--chunk", "1"]);
    let start = Instant::now();
    while data_files(&store).len() == files_before.len() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "shard 1 wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    victim.kill().unwrap(); // SIGKILL: nothing of it runs after this
    victim.wait().unwrap();
    let meta = store.join("_palpipe/runs/r1");
    assert!(
        !meta.join("shard-1-of-4.json").exists(),
        "shard 1 finished before it was killed; the test needs a longer shard"
    );
    let orphans = data_files(&store).len() - files_before.len();
    assert!(orphans >= 1);

    // The other three run side by side.
    let others: Vec<Child> = [0, 2, 3]
        .iter()
        .map(|k| start_shard(&store, "r1", *k, 4, &["--chunk", "8"]))
        .collect();
    let mut embedded: usize = others.into_iter().map(finish_shard).sum();
    assert_eq!(versions(&store)["embeddings"], before, "a shard committed");

    // Shard 1 is missing: refused, naming it, and nothing committed.
    let r = palpipe(&store, &["commit", "--run-id", "r1", "--shards", "4"]).code(1);
    assert!(r.stderr.contains("missing shard 1 of 4"), "{}", r.stderr);
    assert!(r.stderr.contains("shard-1-of-4.json"), "{}", r.stderr);
    assert!(r.stderr.contains("hint:"), "{}", r.stderr);
    assert_eq!(versions(&store)["embeddings"], before);

    // Its re-run completes the run; the commit publishes all four as one version.
    embedded += finish_shard(start_shard(&store, "r1", 1, 4, &["--chunk", "8"]));
    assert_eq!(
        embedded,
        expected.len() - cached,
        "the shards embed what was not cached"
    );
    let r = palpipe(&store, &["commit", "--run-id", "r1", "--shards", "4"]).ok();
    assert!(
        r.stdout.contains(&format!("committed {embedded} rows")),
        "{}",
        r.stdout
    );
    let after = versions(&store)["embeddings"];
    assert_eq!(after.0, before.0 + 1, "one new version");
    assert_eq!(after.1 as usize, expected.len());
    let stored: Vec<String> = query(&store, "SELECT content_id FROM embeddings")
        .iter()
        .map(|r| r["content_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored.len(), expected.len(), "a content id stored twice");
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), expected);

    // The same commit again: nothing to do.
    let r = palpipe(&store, &["commit", "--run-id", "r1", "--shards", "4"]).ok();
    assert!(r.stdout.contains("already committed"), "{}", r.stdout);
    assert_eq!(versions(&store)["embeddings"], after);

    // Vacuum removes the killed attempt's files and nothing the table reads.
    let vectors = stored_vectors(&store);
    let r = palpipe(&store, &["vacuum", "--older-than", "0s", "--dry-run"]).ok();
    assert!(
        r.stdout.contains(&format!(
            "embeddings: would remove {orphans} uncommitted data files"
        )),
        "{}",
        r.stdout
    );
    let r = palpipe(&store, &["vacuum", "--older-than", "0s"]).ok();
    assert!(
        r.stdout.contains(&format!(
            "embeddings: removed {orphans} uncommitted data files"
        )),
        "{}",
        r.stdout
    );
    assert_eq!(stored_vectors(&store), vectors);
    assert_eq!(versions(&store)["embeddings"], after);
    // A committed run stays known as committed.
    let r = palpipe(&store, &["commit", "--run-id", "r1", "--shards", "4"]).ok();
    assert!(r.stdout.contains("already committed"), "{}", r.stdout);
}

#[test]
fn a_run_never_committed_is_vacuumed_and_a_new_table_is_one_version() {
    require_minilm();
    let dir = tempfile::tempdir().unwrap();
    let store = persona_store(dir.path(), 1);
    // Run a: the two answer items, two shards, on a store with no embeddings table yet.
    let a: usize = (0..2)
        .map(|k| start_shard(&store, "a", k, 2, &["--targets", "items"]))
        .collect::<Vec<_>>()
        .into_iter()
        .map(finish_shard)
        .sum();
    assert!(
        !store.join("embeddings.lance/_versions").exists(),
        "a shard committed"
    );
    palpipe(&store, &["commit", "--run-id", "a", "--shards", "2"]).ok();
    assert_eq!(versions(&store)["embeddings"], (1, a as i64));
    let items = scalar(&store, "SELECT count(*) FROM items WHERE trim(text) <> ''");
    assert_eq!(a as i64, items);

    // Run b: the statements, one shard of two, never committed.
    let committed_files = data_files(&store);
    finish_shard(start_shard(&store, "b", 0, 2, &["--targets", "prompts"]));
    let staged = data_files(&store).len() - committed_files.len();
    assert!(staged >= 1);
    // A young run is kept: the default age is a day.
    let r = palpipe(&store, &["vacuum"]).ok();
    assert!(r.stdout.contains("total: removed 0 files"), "{}", r.stdout);
    assert!(store.join("_palpipe/runs/b/shard-0-of-2.json").exists());
    let vectors = stored_vectors(&store);
    let r = palpipe(&store, &["vacuum", "--older-than", "0s"]).ok();
    assert!(
        r.stdout
            .contains(&format!("removed {staged} uncommitted data files")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("run 'b': never committed"),
        "{}",
        r.stdout
    );
    assert_eq!(data_files(&store), committed_files);
    assert_eq!(stored_vectors(&store), vectors);
    assert_eq!(versions(&store)["embeddings"], (1, a as i64));
    // Its metadata went with its files: a commit of it now names both shards missing.
    let r = palpipe(&store, &["commit", "--run-id", "b", "--shards", "2"]).code(1);
    assert!(
        r.stderr.contains("missing shards 0, 1 of 2"),
        "{}",
        r.stderr
    );
}

#[test]
fn shard_flags_are_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    std::fs::create_dir_all(&store).unwrap();
    let r = palpipe(
        &store,
        &["embed", "--shard", "4/4", "--uncommitted", "--run-id", "x"],
    )
    .code(2);
    assert!(
        r.stderr.contains("not below the shard count 4"),
        "{}",
        r.stderr
    );
    let r = palpipe(&store, &["embed", "--shard", "0/4"]).code(2);
    assert!(r.stderr.contains("go together"), "{}", r.stderr);
    let r = palpipe(
        &store,
        &[
            "embed",
            "--shard",
            "0/2",
            "--uncommitted",
            "--run-id",
            "../x",
        ],
    )
    .code(2);
    assert!(r.stderr.contains("run id '../x'"), "{}", r.stderr);
    // auto/N from a scheduler's variable
    let o = bin()
        .args([
            "embed",
            "--shard",
            "auto/2",
            "--uncommitted",
            "--run-id",
            "x",
            "--quiet",
            "--store",
        ])
        .arg(&store)
        .env("SLURM_ARRAY_TASK_ID", "7")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("shard index 7 (from SLURM_ARRAY_TASK_ID) is not below the shard count 2"),
        "{err}"
    );
    let r = palpipe(&store, &["commit", "--run-id", "nothing", "--shards", "3"]).code(1);
    assert!(
        r.stderr.contains("missing shards 0, 1, 2 of 3"),
        "{}",
        r.stderr
    );
}

/// The exact top k by cosine distance, computed here from the stored vectors.
fn exact_top_k(vectors: &BTreeMap<String, Vec<f64>>, q: &[f64], k: usize) -> Vec<(String, f64)> {
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut all: Vec<(String, f64)> = vectors
        .iter()
        .map(|(id, v)| {
            let dot: f64 = v.iter().zip(q).map(|(a, b)| a * b).sum();
            (id.clone(), 1.0 - dot / (norm(v) * norm(q)))
        })
        .collect();
    all.sort_by(|a, b| a.1.total_cmp(&b.1));
    all.truncate(k);
    all
}

fn knn_rows(store: &Path, sql: &str) -> Vec<(String, f64)> {
    query(store, sql)
        .iter()
        .map(|r| {
            (
                r["content_id"].as_str().unwrap().to_string(),
                r["distance"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn knn_in_sql_equals_an_exact_top_k_and_joins_items() {
    require_minilm();
    let dir = tempfile::tempdir().unwrap();
    let store = persona_store(dir.path(), 2);
    palpipe(&store, &["embed"]).ok();
    let vectors = stored_vectors(&store);
    // A prompt's stored vector as the query, written as a literal.
    let row = &query(
        &store,
        "SELECT prompt_id, text FROM prompts ORDER BY prompt_id LIMIT 1",
    )[0];
    let (pid, text) = (
        row["prompt_id"].as_str().unwrap(),
        row["text"].as_str().unwrap(),
    );
    let q = &vectors[pid];
    let literal = q
        .iter()
        .map(|x| format!("{x}"))
        .collect::<Vec<_>>()
        .join(", ");
    let k = 7;
    let want = exact_top_k(&vectors, q, k);
    let by_vector = knn_rows(
        &store,
        &format!("SELECT content_id, distance FROM knn('all-MiniLM-L6-v2', [{literal}], {k}) ORDER BY rank"),
    );
    let ids = |v: &[(String, f64)]| v.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&by_vector), ids(&want));
    for ((_, got), (_, exp)) in by_vector.iter().zip(&want) {
        assert!((got - exp).abs() < 1e-4, "{got} vs {exp}");
    }
    // The prompt's text embeds to the same vector: the same answer.
    let sql = format!(
        "SELECT content_id, distance FROM knn('all-MiniLM-L6-v2', '{}', {k}) ORDER BY rank",
        text.replace('\'', "''")
    );
    assert_eq!(ids(&knn_rows(&store, &sql)), ids(&want));
    // Joined with items: the hits that are items, with their texts. The query is an answer
    // item's vector, so the item itself is among the hits.
    let item_text: BTreeMap<String, String> = query(&store, "SELECT item_id, text FROM items")
        .iter()
        .map(|r| {
            (
                r["item_id"].as_str().unwrap().to_string(),
                r["text"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let (yes_id, _) = item_text
        .iter()
        .find(|(_, t)| t.as_str() == " Yes")
        .expect("a ' Yes' item");
    let yes = &vectors[yes_id];
    let yes_literal = yes
        .iter()
        .map(|x| format!("{x}"))
        .collect::<Vec<_>>()
        .join(", ");
    let joined = query(
        &store,
        &format!("SELECT * FROM knn('all-MiniLM-L6-v2', [{yes_literal}], 10) JOIN items USING (item_id) ORDER BY rank"),
    );
    let want_items: Vec<String> = ids(&exact_top_k(&vectors, yes, 10))
        .into_iter()
        .filter(|i| item_text.contains_key(i))
        .collect();
    assert_eq!(want_items.first(), Some(yes_id));
    let got: Vec<String> = joined
        .iter()
        .map(|r| r["item_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want_items);
    for r in &joined {
        assert_eq!(
            r["text"].as_str().unwrap_or(""),
            item_text[r["item_id"].as_str().unwrap()]
        );
    }
    // With a vector index, the same nearest rows (the index is exact enough here).
    palpipe(
        &store,
        &["index", "--kind", "ivf-flat", "--partitions", "2"],
    )
    .ok();
    let indexed = knn_rows(
        &store,
        &format!("SELECT content_id, distance FROM knn('all-MiniLM-L6-v2', [{literal}], 3) ORDER BY rank"),
    );
    assert_eq!(ids(&indexed)[0], want[0].0);
    // Bad arguments are usage errors that say what is wanted.
    let r = palpipe(
        &store,
        &["sql", "SELECT * FROM knn('all-MiniLM-L6-v2', 3, 0)"],
    )
    .code(2);
    assert!(
        r.stderr
            .contains("knn: the query must be a text or a list of numbers"),
        "{}",
        r.stderr
    );
    let r = palpipe(&store, &["sql", "SELECT * FROM knn('nope', 'x', 3)"]).code(2);
    assert!(r.stderr.contains("nope"), "{}", r.stderr);
}

#[test]
fn vector_functions_match_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    std::fs::create_dir_all(&store).unwrap();
    // a = (1, 2, 2), b = (2, 0, 1): a·b = 4, |a| = 3, |b| = √5, a − b = (−1, 2, 1).
    let rows = query(
        &store,
        "SELECT cosine_similarity([1.0, 2.0, 2.0], [2.0, 0.0, 1.0]) AS c, \
                l2_distance([1.0, 2.0, 2.0], [2, 0, 1]) AS d, \
                cosine_similarity([0.0, 0.0], [1.0, 2.0]) AS z, \
                l2_distance([3.0], [3.0]) AS same",
    );
    let r = &rows[0];
    assert!(
        (r["c"].as_f64().unwrap() - 4.0 / (3.0 * 5f64.sqrt())).abs() < 1e-12,
        "{r}"
    );
    assert!(
        (r["d"].as_f64().unwrap() - 6f64.sqrt()).abs() < 1e-12,
        "{r}"
    );
    assert!(r["z"].is_null(), "the cosine of a zero vector is NULL: {r}");
    assert_eq!(r["same"].as_f64(), Some(0.0));
    // Lengths that differ are an error naming both.
    let r = palpipe(&store, &["sql", "SELECT l2_distance([1.0, 2.0], [1.0])"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("2 and 1 values"), "{}", r.stderr);
}

#[test]
fn vector_functions_over_stored_columns() {
    require_minilm();
    let dir = tempfile::tempdir().unwrap();
    let store = persona_store(dir.path(), 1);
    palpipe(&store, &["embed", "--targets", "prompts"]).ok();
    let vectors = stored_vectors(&store);
    let ids: Vec<&String> = vectors.keys().take(2).collect();
    let (a, b) = (&vectors[ids[0]], &vectors[ids[1]]);
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let l2 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let rows = query(
        &store,
        &format!(
            "SELECT cosine_similarity(x.vector, y.vector) AS c, l2_distance(x.vector, y.vector) AS d \
             FROM embeddings x, embeddings y WHERE x.content_id = '{}' AND y.content_id = '{}'",
            ids[0], ids[1]
        ),
    );
    let c = rows[0]["c"].as_f64().unwrap();
    let d = rows[0]["d"].as_f64().unwrap();
    // The JSON holds each float32 as its shortest decimal, within half a float32 step of the
    // stored value: agreement to 1e-6 is what the two computations can share.
    let want_c = dot / (norm(a) * norm(b));
    assert!((c - want_c).abs() < 1e-6, "{c} vs {want_c}");
    assert!((d - l2).abs() < 1e-6, "{d} vs {l2}");
    // Every stored vector against itself: similarity 1 (unit vectors), distance 0.
    let n = scalar(
        &store,
        "SELECT count(*) FROM embeddings WHERE abs(cosine_similarity(vector, vector) - 1) < 1e-6 AND l2_distance(vector, vector) = 0",
    );
    assert_eq!(n as usize, vectors.len());
}

#[test]
fn a_run_whose_rows_were_committed_meanwhile_is_refused() {
    require_minilm();
    let dir = tempfile::tempdir().unwrap();
    let store = persona_store(dir.path(), 1);
    palpipe(&store, &["embed", "--targets", "items"]).ok();
    // Run x stages the statements; before it is committed, a plain embed commits them.
    finish_shard(start_shard(&store, "x", 0, 1, &["--targets", "prompts"]));
    palpipe(&store, &["embed"]).ok();
    let before = versions(&store)["embeddings"];
    let r = palpipe(&store, &["commit", "--run-id", "x", "--shards", "1"]).code(1);
    assert!(r.stderr.contains("already in embeddings"), "{}", r.stderr);
    assert!(r.stderr.contains("hint:"), "{}", r.stderr);
    assert_eq!(versions(&store)["embeddings"], before, "nothing committed");
}
