//! Helpers shared by the CLI tests: run the real binary on a temp store.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test: `$PALPIPE_TEST_BIN` when set (worktrees that share one
/// CARGO_TARGET_DIR overwrite each other's `target/debug/palpipe`; point this at your own
/// `target/debug/deps/palpipe-<hash>`), else the one cargo built for this test.
pub fn bin() -> Command {
    match std::env::var_os("PALPIPE_TEST_BIN").filter(|v| !v.is_empty()) {
        Some(b) => Command::new(b),
        None => Command::new(env!("CARGO_BIN_EXE_palpipe")),
    }
}

pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

fn done(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs `palpipe ARGS --store STORE --quiet`.
pub fn palpipe(store: &Path, args: &[&str]) -> Run {
    let o = bin()
        .args(args)
        .arg("--store")
        .arg(store)
        .arg("--quiet")
        .output()
        .expect("run palpipe");
    done(o)
}

/// Runs palpipe without a --store flag (for tests of the flag itself).
pub fn palpipe_raw(args: &[&str]) -> Run {
    done(
        bin()
            .args(args)
            .env_remove("PALPIPE_STORE")
            .output()
            .expect("run palpipe"),
    )
}

/// `SELECT …` as JSON lines, parsed.
pub fn query(store: &Path, sql: &str) -> Vec<serde_json::Value> {
    let r = palpipe(store, &["sql", sql, "--format", "json"]).ok();
    r.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// One integer from a one-row query.
pub fn scalar(store: &Path, sql: &str) -> i64 {
    let rows = query(store, sql);
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    let obj = rows[0].as_object().expect("object");
    obj.values()
        .next()
        .and_then(|v| v.as_i64())
        .unwrap_or_else(|| panic!("{sql}: {rows:?}"))
}

/// table → (version, rows) for every table that exists, from `palpipe tables --format json`.
pub fn versions(store: &Path) -> std::collections::BTreeMap<String, (i64, i64)> {
    let r = palpipe(store, &["tables", "--format", "json"]).ok();
    r.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let t = v["table"].as_str()?.to_string();
            Some((t, (v["version"].as_i64()?, v["rows"].as_i64()?)))
        })
        .collect()
}

/// A small synthetic ingest stage (10 seen and 3 unseen users, 20 comparisons each, 10 of a
/// seen user's held out, 2 for validation), indented as an entry of a pipeline's `stages`.
pub const SMALL_SYNTH_STAGE: &str = "  - name: data
    kind: synthetic
    d: 2
    users: 10
    comparisons_per_user: 20
    held_out_per_user: 10
    val_per_user: 2
    unseen_users: 3
    items: 50
    seed: 7
";

/// A small synthetic pipeline with trained PAL-A heads, shared by the tests of model
/// commands: K* = 3 preference types, 30 seen users with 60 comparisons each (30 held out,
/// 5 for validation) and `unseen` new users; heads `k1` and `k3` (PAL-A, d = 2, 20 epochs)
/// trained on split `tr` with `va` for validation; then `stages` (YAML flow mappings) and
/// the splits `tr`, `va`, `te` followed by `splits` (`name: "SQL"` lines).
pub fn synth_pal_pipeline(name: &str, unseen: usize, stages: &[&str], splits: &[&str]) -> String {
    let head = format!(
        "name: {name}
stages:
  - name: data
    kind: synthetic
    d: 2
    k_star: 3
    users: 30
    comparisons_per_user: 60
    held_out_per_user: 30
    val_per_user: 5
    unseen_users: {unseen}
    seed: 3
"
    );
    let heads = ["k1", "k3"].map(|k| format!(
        "  - {{name: {k}, kind: train, model: pal-a, k: {}, train: tr, val: va, encoder: synthetic-identity, config: {{d: 2}}, training: {{epochs: 20}}}}\n",
        &k[1..]
    ));
    let more: String = stages.iter().map(|st| format!("  - {st}\n")).collect();
    let base_splits = [
        "tr: \"SELECT * FROM pairs WHERE split = 'train'\"",
        "va: \"SELECT * FROM pairs WHERE split = 'val'\"",
        "te: \"SELECT * FROM pairs WHERE split = 'test'\"",
    ];
    let splits: String = base_splits
        .iter()
        .chain(splits)
        .map(|sp| format!("  {sp}\n"))
        .collect();
    format!("{head}{}{more}splits:\n{splits}", heads.concat())
}

/// Writes a pipeline file into `dir` and returns its path.
pub fn write_pipeline(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Fails the test, saying how to install it, when all-MiniLM-L6-v2 (`make setup`) is missing.
pub fn require_minilm() {
    let home = std::env::var("HOME").unwrap_or_default();
    let root =
        std::env::var("PALPIPE_MODELS").unwrap_or_else(|_| format!("{home}/.cache/palpipe/models"));
    let f = Path::new(&root).join("all-MiniLM-L6-v2/model.safetensors");
    assert!(
        f.is_file(),
        "{} is missing: run 'make setup' to install all-MiniLM-L6-v2",
        f.display()
    );
}

/// Every row of `pairs` (all columns but none derived) and of `users`, each as one JSON text,
/// sorted: what two stores must share to hold the same comparisons and users.
pub fn pairs_and_users(store: &Path) -> (Vec<String>, Vec<String>) {
    let sorted = |sql: &str| {
        let mut v: Vec<String> = query(store, sql).iter().map(|r| r.to_string()).collect();
        v.sort();
        v
    };
    (
        sorted("SELECT pair_id, user_id, prompt_id, left_id, right_id, label, dataset, split, source_ref FROM pairs"),
        sorted("SELECT user_id, dataset, group_name, role FROM users"),
    )
}

/// content id → vector, from `palpipe sql` over `embeddings`.
pub fn stored_vectors(store: &Path) -> std::collections::HashMap<String, Vec<f64>> {
    query(store, "SELECT content_id, vector FROM embeddings")
        .into_iter()
        .map(|r| {
            let v = r["vector"]
                .as_array()
                .unwrap_or_else(|| panic!("vector as a JSON list: {r}"))
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            (r["content_id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}
