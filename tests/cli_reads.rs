//! The read commands through the real binary: a store that does not exist is an error that
//! creates nothing; SQL errors without Rust source paths; `SIMILAR TO` refused on the parsed
//! query; binary columns shortened in the table format and whole in CSV and JSON, with
//! `octet_length`; `eval` without `--model` over every stored model; `search` without
//! `--encoder`; a reader that closes the pipe early ends a command quietly, and a closed
//! stderr does not stop a run.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use palpipe::store::batches;
use palpipe::store::records::{content_id, ItemRow};
use palpipe::store::Store;

/// Three trained models and one (`gone`) whose checkpoint a test deletes.
fn synth() -> String {
    synth_pal_pipeline(
        "t",
        0,
        &[
            "{name: pop, kind: train, model: popularity, train: tr}",
            "{name: gone, kind: train, model: pal-b, k: 2, train: tr, encoder: synthetic-identity, config: {d: 2}, training: {epochs: 2}}",
        ],
        &[],
    )
}

fn synthetic_store(dir: &Path, name: &str) -> PathBuf {
    let store = dir.join(name);
    let p = write_pipeline(dir, "synth.yaml", &synth());
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    store
}

#[test]
fn read_commands_on_a_missing_store_fail_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo");
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["sql", "SELECT * FROM pairs"],
        vec!["tables"],
        vec!["eval", "--split", "te"],
        vec!["eval", "--model", "k1", "--split", "te"],
        vec!["adapt", "--model", "k1", "--users", "te"],
        vec![
            "train",
            "--name",
            "x",
            "--model",
            "popularity",
            "--train",
            "tr",
        ],
        vec![
            "sweep",
            "--k",
            "1",
            "--train",
            "tr",
            "--test",
            "te",
            "--encoder",
            "e",
        ],
        vec!["search", "--text", "hello"],
        vec!["index"],
        vec!["report", "--out", out],
        vec!["show-image", "abcd", "--out", out],
        vec!["contact-sheet", "--out", out],
    ];
    for args in &commands {
        let r = palpipe(&typo, args).code(1);
        let want = format!("no store at '{}'", typo.display());
        assert!(r.stderr.contains(&want), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("hint: "), "{args:?}: {}", r.stderr);
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
        assert!(!Path::new(out).exists(), "{args:?} wrote {out}");
    }
    // With a store beside the typo, the hint names it.
    let real = synthetic_store(dir.path(), "palstore-real");
    let r = palpipe(&typo, &["tables"]).code(1);
    assert!(
        r.stderr
            .contains(&format!("stores nearby: {}", real.display())),
        "{}",
        r.stderr
    );
    assert!(!typo.exists());
    // The default store (./palstore) is read the same way: nothing appears in the folder.
    let r = done_in(dir.path(), &["tables"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no store at 'palstore'"), "{}", r.stderr);
    assert!(r.stderr.contains("palstore-real"), "{}", r.stderr);
    assert!(!dir.path().join("palstore").exists());
    // A dry run plans against nothing and creates nothing; a real run creates its store.
    let p = dir.path().join("synth.yaml");
    palpipe(&typo, &["run", p.to_str().unwrap(), "--dry-run"]).ok();
    assert!(!typo.exists());
    palpipe(&typo, &["run", p.to_str().unwrap()]).ok();
    assert!(typo.is_dir());
}

/// Runs `palpipe ARGS --quiet` in `cwd` with no --store and no PALPIPE_STORE.
fn done_in(cwd: &Path, args: &[&str]) -> Run {
    let o = bin()
        .args(args)
        .arg("--quiet")
        .current_dir(cwd)
        .env_remove("PALPIPE_STORE")
        .output()
        .unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn an_empty_existing_folder_is_a_store_with_no_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    std::fs::create_dir(&store).unwrap();
    assert_eq!(scalar(&store, "SELECT count(*) FROM pairs"), 0);
    let r = palpipe(&store, &["tables", "--format", "json"]).ok();
    // One line per table of schemas/: items … runs, enrollments.
    assert_eq!(r.stdout.lines().count(), 9, "{}", r.stdout);
    // Nothing was written into it.
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0);
}

/// A store holding image and text items whose bytes the test chose.
fn bytes_store(dir: &Path) -> (PathBuf, Vec<Vec<u8>>) {
    let store = dir.join("s");
    let png = |w: u32, h: u32, seed: u8| {
        // Hashed pixels: noise that PNG cannot squeeze, so sizes reach KiB.
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let v = (x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663) ^ u32::from(seed))
                .wrapping_mul(2_654_435_761);
            image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        });
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    };
    // A small one (under 1 KiB), larger ones (KiB), and 3 bytes.
    let blobs = vec![
        png(8, 8, 1),
        png(40, 30, 2),
        png(64, 64, 3),
        vec![0x01, 0xab, 0xff],
    ];
    let items: Vec<ItemRow> = blobs
        .iter()
        .map(|b| ItemRow {
            item_id: content_id(b),
            kind: "image".into(),
            text: None,
            bytes: Some(b.clone()),
            source: "test".into(),
            parent_id: None,
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = Store::open(&store).unwrap();
        s.append("items", batches::items(&items).unwrap())
            .await
            .unwrap();
    });
    (store, blobs)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn binary_columns_are_short_in_tables_and_whole_in_csv_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (store, blobs) = bytes_store(dir.path());
    let by_id: std::collections::HashMap<String, &Vec<u8>> =
        blobs.iter().map(|b| (content_id(b), b)).collect();
    // Sizes by hand: 1 KiB = 1024 bytes, one decimal.
    let expected_short = |b: &[u8]| -> String {
        let size = if b.len() < 1024 {
            format!("{} B", b.len())
        } else {
            format!("{:.1} KiB", b.len() as f64 / 1024.0)
        };
        if b.len() > 4 {
            format!("<{size} {}…>", hex(&b[..4]))
        } else {
            format!("<{size} {}>", hex(b))
        }
    };
    assert!(blobs.iter().any(|b| b.len() >= 1024), "a KiB-sized image");
    let r = palpipe(
        &store,
        &["sql", "SELECT item_id, bytes FROM items ORDER BY item_id"],
    )
    .ok();
    for b in &blobs {
        let line = r
            .stdout
            .lines()
            .find(|l| l.contains(&content_id(b)))
            .unwrap_or_else(|| panic!("no row for an item:\n{}", r.stdout));
        assert!(line.contains(&expected_short(b)), "{line}");
    }
    // PNGs start 89 50 4e 47 ("\x89PNG"): the prefix is the file's signature.
    assert!(r.stdout.contains(" 89504e47…>"), "{}", r.stdout);
    // No full hex of a large image anywhere in the table.
    let big = blobs.iter().max_by_key(|b| b.len()).unwrap();
    assert!(!r.stdout.contains(&hex(&big[..64])), "{}", r.stdout);

    // CSV: every value whole, as hex.
    let r = palpipe(
        &store,
        &["sql", "SELECT item_id, bytes FROM items", "--format", "csv"],
    )
    .ok();
    let mut seen = 0;
    for line in r.stdout.lines().skip(1) {
        let (id, value) = line.split_once(',').unwrap();
        assert_eq!(value, hex(by_id[id]), "csv bytes of {id}");
        seen += 1;
    }
    assert_eq!(seen, blobs.len());

    // JSON: the same bytes, whole.
    for row in query(&store, "SELECT item_id, bytes FROM items") {
        let id = row["item_id"].as_str().unwrap();
        assert_eq!(row["bytes"].as_str().unwrap(), hex(by_id[id]), "json {id}");
    }

    // octet_length over the binary column: the sizes the test wrote.
    for row in query(
        &store,
        "SELECT item_id, octet_length(bytes) AS n FROM items",
    ) {
        let id = row["item_id"].as_str().unwrap();
        assert_eq!(row["n"].as_u64().unwrap() as usize, by_id[id].len(), "{id}");
    }
    let total: usize = blobs.iter().map(Vec::len).sum();
    assert_eq!(
        scalar(&store, "SELECT sum(octet_length(bytes)) FROM items"),
        total as i64
    );
    // Strings keep their usual octet_length.
    assert_eq!(scalar(&store, "SELECT octet_length('héllo')"), 6);
}

#[test]
fn similar_to_is_refused_on_the_parsed_query_only() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = bytes_store(dir.path());
    for q in [
        "SELECT 'ab' SIMILAR TO 'a_'",
        "SELECT count(*) FROM items WHERE source not similar to 't%'",
        "EXPLAIN SELECT * FROM items WHERE source SIMILAR TO 'te.t'",
        "SELECT * FROM items WHERE item_id IN (SELECT item_id FROM items WHERE source SIMILAR TO 'x')",
    ] {
        let r = palpipe(&store, &["sql", q]).code(2);
        assert!(r.stderr.contains("SIMILAR TO"), "{q}: {}", r.stderr);
        assert!(r.stderr.contains("hint:"), "{q}: {}", r.stderr);
        assert!(r.stderr.contains("LIKE"), "{q}: {}", r.stderr);
    }
    // The words inside a string literal are only text.
    let rows = query(
        &store,
        "SELECT 'x SIMILAR TO y' AS s, count(*) AS n FROM items WHERE source <> 'a SIMILAR TO b'",
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["s"], "x SIMILAR TO y");
    assert_eq!(rows[0]["n"], 4);
    // What the hint suggests answers correctly: 'ab' matches 'a_' and '^a.$'.
    let rows = query(&store, "SELECT 'ab' LIKE 'a_' AS l, 'ab' ~ '^a.$' AS r");
    assert_eq!(rows[0]["l"], true);
    assert_eq!(rows[0]["r"], true);
}

#[test]
fn sql_errors_show_no_rust_source_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = bytes_store(dir.path());
    for q in [
        "SELECT * FROM items WHERE source LIKE 'te!%' ESCAPE '!'",
        "SELECT item_id FROM items WHERE source LIKE 'x' ESCAPE '!!'",
    ] {
        let r = palpipe(&store, &["sql", q]);
        assert_ne!(r.code, 0, "{q}: {}", r.stdout);
        assert!(
            !r.stderr.contains(".rs:") && !r.stderr.contains(".cargo"),
            "{q}: {}",
            r.stderr
        );
        assert!(r.stderr.starts_with("palpipe: error: "), "{}", r.stderr);
    }
}

#[test]
fn eval_without_model_scores_every_model_best_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = synthetic_store(dir.path(), "s");
    // 'gone' loses its checkpoint: it cannot score anything and is skipped.
    std::fs::remove_dir_all(store.join("checkpoints/gone")).unwrap();
    let r = palpipe(&store, &["eval", "--split", "te", "--json"]).ok();
    let rows: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let names: Vec<&str> = rows.iter().map(|v| v["model"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["k1", "k3", "pop"], "{}", r.stdout);
    assert!(
        r.stderr.contains("skipped 'gone'"),
        "a one-line reason: {}",
        r.stderr
    );
    assert_eq!(
        r.stderr.lines().filter(|l| l.contains("gone")).count(),
        1,
        "{}",
        r.stderr
    );
    // Each row equals the single-model command's result (another code path per model).
    let mut accuracies = Vec::new();
    for row in &rows {
        let name = row["model"].as_str().unwrap();
        let one = palpipe(
            &store,
            &["eval", "--model", name, "--split", "te", "--json"],
        )
        .ok();
        let one: serde_json::Value = serde_json::from_str(one.stdout.trim()).unwrap();
        for key in ["accuracy", "ci95", "ci95_users", "n", "ties"] {
            assert_eq!(row[key], one[key], "{name} {key}");
        }
        assert_eq!(row["split"], "te");
        accuracies.push(one["accuracy"].as_f64().unwrap());
    }
    // Best first.
    assert!(
        accuracies.windows(2).all(|w| w[0] >= w[1]),
        "{names:?} {accuracies:?}"
    );
    // K = 3 on three planted preference types beats K = 1.
    let pos = |n: &str| names.iter().position(|m| *m == n).unwrap();
    assert!(pos("k3") < pos("k1"), "{names:?} {accuracies:?}");
    // The table shows the same order, one row per model.
    let r = palpipe(&store, &["eval", "--split", "te"]).ok();
    let order: Vec<usize> = names
        .iter()
        .map(|n| {
            r.stdout
                .lines()
                .position(|l| l.split_whitespace().next() == Some(n))
                .unwrap_or_else(|| panic!("no row for {n}:\n{}", r.stdout))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{}", r.stdout);
    for (n, a) in names.iter().zip(&accuracies) {
        let line = r.stdout.lines().find(|l| l.starts_with(n)).unwrap();
        assert!(line.contains(&format!("{:.2}%", 100.0 * a)), "{line}");
    }
    // An unknown split is bad usage, once.
    let r = palpipe(&store, &["eval", "--split", "nosuch"]).code(2);
    assert!(r.stderr.contains("no split named 'nosuch'"), "{}", r.stderr);
}

#[test]
fn search_defaults_to_the_stores_only_encoder() {
    require_minilm();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let text = format!(
        "name: p\nstages:\n  - name: data\n    kind: persona\n    dir: {}\n    personas: [art]\n    users_per_persona: 1\n    queries_per_user: 6\n    unseen_users_per_persona: 0\n  - name: embed\n    kind: embed\n    targets: [prompts]\n",
        shared_data().join("persona").display()
    );
    let p = write_pipeline(dir.path(), "p.yaml", &text);
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    let rows = query(
        &store,
        "SELECT text FROM prompts ORDER BY prompt_id LIMIT 1",
    );
    let prompt = rows[0]["text"].as_str().unwrap().to_string();
    let search = |extra: &[&str]| {
        let mut args = vec!["search", "--text", prompt.as_str(), "--k", "2", "--json"];
        args.extend_from_slice(extra);
        palpipe(&store, &args)
    };
    let by_default = search(&[]).ok();
    let named = search(&["--encoder", "all-MiniLM-L6-v2"]).ok();
    assert_eq!(by_default.stdout, named.stdout);
    let first: serde_json::Value =
        serde_json::from_str(by_default.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["text"], prompt);
    // A second encoder (MiniLM cut at 16 tokens has its own id): name one, and the error
    // lists both.
    palpipe(
        &store,
        &["run", p.to_str().unwrap(), "--set", "embed.max_length=16"],
    )
    .ok();
    let ids: Vec<String> = query(
        &store,
        "SELECT DISTINCT encoder_id FROM embeddings ORDER BY encoder_id",
    )
    .iter()
    .map(|r| r["encoder_id"].as_str().unwrap().to_string())
    .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let r = search(&[]).code(2);
    for id in &ids {
        assert!(r.stderr.contains(id.as_str()), "{}", r.stderr);
    }
    assert!(r.stderr.contains("--encoder"), "{}", r.stderr);
}

/// Runs `palpipe ARGS --store STORE` with stdout (and stderr unless `stderr_to` is given) a
/// pipe whose reading end is closed at once, as `palpipe … | head -0` does; returns the exit
/// code.
fn with_closed_pipes(store: &Path, args: &[&str], stderr_to: Option<&Path>) -> Option<i32> {
    use std::process::Stdio;
    let stderr = match stderr_to {
        Some(f) => Stdio::from(std::fs::File::create(f).unwrap()),
        None => Stdio::piped(),
    };
    let mut child = bin()
        .args(args)
        .arg("--store")
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("run palpipe");
    drop(child.stdout.take());
    drop(child.stderr.take());
    child.wait().expect("wait for palpipe").code()
}

/// `println!` panics when its pipe is closed ("failed printing to stdout"), and so did every
/// status line on a closed stderr, in the middle of a run. Now: a closed stdout ends the
/// command with exit 0 and (with `--quiet`) nothing on stderr; a closed stderr drops the
/// status lines and the run still builds the same store as with both open.
#[test]
fn closed_pipes_end_quietly_and_the_run_still_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(dir.path(), "synth.yaml", &synth());
    let p = p.to_str().unwrap();
    let reference = synthetic_store(dir.path(), "reference");

    let store = dir.path().join("s");
    assert_eq!(with_closed_pipes(&store, &["run", p], None), Some(0));
    let sql = "SELECT pair_id, user_id, split FROM pairs ORDER BY pair_id";
    assert_eq!(query(&store, sql), query(&reference, sql));
    assert_eq!(
        versions(&store).keys().collect::<Vec<_>>(),
        versions(&reference).keys().collect::<Vec<_>>()
    );
    assert!(store.join("checkpoints/gone").exists());

    // Commands whose results go to a closed stdout: exit 0, stderr empty.
    let err = dir.path().join("stderr.txt");
    for args in [
        vec!["eval", "--split", "te", "--quiet"],
        vec!["eval", "--split", "te", "--json", "--quiet"],
        vec!["run", p, "--quiet"],
    ] {
        let code = with_closed_pipes(&store, &args, Some(&err));
        let stderr = std::fs::read_to_string(&err).unwrap();
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
}
