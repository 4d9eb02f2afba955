//! Per-comparison weights end to end: `columns.weight` of the `preferences` stage stored in
//! `pairs.weight`, bad weights dropped and counted by reason, every other pair at 1.0, and a
//! store written before the column existed: readable as it is, upgraded once by the next
//! run, and then equal to a fresh run of the same pipeline.

mod common;
#[path = "common/old_store.rs"]
mod old_store;

use std::path::Path;

use common::{ingest_chosen_rejected, new_store, palpipe, query, scalar, versions};
use old_store::make_old;
use serde_json::{json, Value};

fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// (preferred text, weight) of every stored pair, sorted.
fn preferred_weights(store: &Path) -> Vec<(String, f64)> {
    let rows = query(
        store,
        "SELECT l.text AS lt, r.text AS rt, p.label, p.weight FROM pairs p \
         JOIN items l ON p.left_id = l.item_id JOIN items r ON p.right_id = r.item_id",
    );
    let mut out: Vec<(String, f64)> = rows
        .iter()
        .map(|r| {
            let side = if r["label"].as_i64() == Some(-1) {
                "lt"
            } else {
                "rt"
            };
            (
                r[side].as_str().unwrap().to_string(),
                r["weight"].as_f64().unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    out
}

fn row(i: usize, conf: Option<Value>) -> Value {
    let mut r = json!({
        "annotator": format!("w{}", i % 2),
        "prompt": format!("prompt {i}"),
        "chosen": format!("good {i:02}"),
        "rejected": format!("bad {i:02}"),
    });
    if let Some(c) = conf {
        r["conf"] = c;
    }
    r
}

/// JSON lines with a `conf` column mapped as the weight: good weights stored as given (also
/// on a row that repeats another with a different weight: two pairs), a null, a negative, a
/// zero, an infinite (as f32) and a missing weight dropped and counted by reason.
#[test]
fn mapped_weights_are_stored_and_bad_ones_are_dropped_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let rows = vec![
        row(0, Some(json!(2.0))),
        row(1, Some(json!(0.5))),
        row(2, Some(json!(1.0))),
        row(3, Some(Value::Null)),
        row(4, Some(json!(-1.5))),
        row(5, Some(json!(0.0))),
        row(6, None),
        row(7, Some(json!(1e39))),
        row(8, Some(json!(3.25))),
        row(8, Some(json!(4.0))),
        row(9, Some(json!(3.25))),
    ];
    let file = dir.path().join("prefs.jsonl");
    write_jsonl(&file, &rows);
    let store = new_store(dir.path(), "store");
    let run = ingest_chosen_rejected(&store, &file, &["--column", "weight=conf"]).ok();
    let expected = vec![
        ("good 00".to_string(), 2.0),
        ("good 01".to_string(), 0.5),
        ("good 02".to_string(), 1.0),
        ("good 08".to_string(), 3.25),
        ("good 08".to_string(), 4.0),
        ("good 09".to_string(), 3.25),
    ];
    assert_eq!(preferred_weights(&store), expected);
    for reason in [
        "1 missing weight",
        "1 negative weight",
        "1 zero weight",
        "1 weight is infinite",
        "1 missing 'conf'",
    ] {
        assert!(run.stdout.contains(reason), "{reason}: {}", run.stdout);
    }

    // CSV values are text: a number in text is a weight, other text and NaN are not.
    let csv = dir.path().join("prefs.csv");
    std::fs::write(
        &csv,
        "annotator,prompt,chosen,rejected,conf\n\
         a,p1,good x,bad x,2.5\n\
         a,p2,good y,bad y,heavy\n\
         b,p3,good z,bad z,NaN\n\
         b,p4,good v,bad v,0.25\n",
    )
    .unwrap();
    let store2 = new_store(dir.path(), "store2");
    let run = ingest_chosen_rejected(&store2, &csv, &["--column", "weight=conf"]).ok();
    assert_eq!(
        preferred_weights(&store2),
        vec![("good v".to_string(), 0.25), ("good x".to_string(), 2.5)]
    );
    for reason in ["1 weight is not a number", "1 weight is NaN"] {
        assert!(run.stdout.contains(reason), "{reason}: {}", run.stdout);
    }

    // Without the mapping every pair weighs 1.0.
    let store3 = new_store(dir.path(), "store3");
    ingest_chosen_rejected(&store3, &csv, &[]).ok();
    assert_eq!(scalar(&store3, "SELECT count(*) FROM pairs"), 4);
    assert_eq!(
        scalar(&store3, "SELECT count(*) FROM pairs WHERE weight = 1.0"),
        4
    );

    // The ratings layout takes no weight: a usage error naming the key.
    let run = palpipe(
        &new_store(dir.path(), "store4"),
        &[
            "ingest",
            csv.to_str().unwrap(),
            "--dataset",
            "r",
            "--layout",
            "ratings",
            "--column",
            "user=annotator",
            "--column",
            "group=prompt",
            "--column",
            "response=chosen",
            "--column",
            "score=conf",
            "--column",
            "weight=conf",
        ],
    );
    assert_ne!(run.code, 0);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("--column weight="), "{all}");
    assert!(all.contains("takes no weight"), "{all}");
}

/// Every stored pair as JSON, in pair id order.
fn all_pairs(store: &Path) -> Vec<Value> {
    query(store, "SELECT * FROM pairs ORDER BY pair_id")
}

/// A store whose `pairs` has no `weight` column (as stores written before it): read-only
/// commands read it as it is and change nothing; the next run adds the column (1.0) in one
/// new version and says so once on stderr; the store then holds what a fresh run of the
/// same pipeline holds, and a further run changes nothing.
#[test]
fn an_old_store_is_upgraded_once_and_then_equals_a_fresh_run() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Value> = (0..12).map(|i| row(i, None)).collect();
    let file = dir.path().join("prefs.jsonl");
    write_jsonl(&file, &rows);
    let fresh = new_store(dir.path(), "fresh");
    ingest_chosen_rejected(&fresh, &file, &[]).ok();
    let old = new_store(dir.path(), "old");
    ingest_chosen_rejected(&old, &file, &[]).ok();
    make_old(&old);

    // Read as it is: the rows are there, the column is not, nothing is written.
    let before = versions(&old);
    assert_eq!(scalar(&old, "SELECT count(*) FROM pairs"), 12);
    let cols: Vec<String> = query(&old, "SELECT * FROM pairs LIMIT 1")[0]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(!cols.contains(&"weight".to_string()), "{cols:?}");
    assert_eq!(versions(&old), before);

    // The next run upgrades: one new version of pairs, one note.
    let run = ingest_chosen_rejected(&old, &file, &[]).ok();
    let note = "added column 'weight' = 1.0 to its 12 rows";
    assert_eq!(run.stderr.matches(note).count(), 1, "{}", run.stderr);
    assert_eq!(versions(&old)["pairs"].0, before["pairs"].0 + 1);
    let (a, b) = (all_pairs(&old), all_pairs(&fresh));
    assert_eq!(a.len(), 12);
    assert!(a.iter().all(|r| r["weight"].as_f64() == Some(1.0)), "{a:?}");
    assert_eq!(a, b);
    for t in ["items", "prompts", "users"] {
        let q = format!("SELECT * FROM {t} ORDER BY 1");
        assert_eq!(query(&old, &q), query(&fresh, &q), "{t}");
    }

    // Upgraded once: a further run says nothing and commits nothing to pairs.
    let after = versions(&old);
    let run = ingest_chosen_rejected(&old, &file, &[]).ok();
    assert!(!run.stderr.contains("added column"), "{}", run.stderr);
    assert_eq!(versions(&old)["pairs"], after["pairs"]);
}

/// The f32 values of every tensor in a safetensors file, in name order (the format: an
/// 8-byte little-endian header length, a JSON header naming each tensor's dtype and byte
/// range, then the data).
fn safetensors_values(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let t = &header[name];
        assert_eq!(t["dtype"], "F32", "{name}: {t}");
        let (a, b) = (
            t["data_offsets"][0].as_u64().unwrap() as usize,
            t["data_offsets"][1].as_u64().unwrap() as usize,
        );
        out.extend(
            data[a..b]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
        );
    }
    out
}

/// Ingests `rows` (with `columns`), embeds them with all-MiniLM-L6-v2 and trains a PAL-B
/// head on every pair in full batches; returns the head's parameters.
fn train_on(dir: &Path, name: &str, rows: &[Value], columns: &str) -> Vec<f32> {
    let file = dir.join(format!("{name}.jsonl"));
    write_jsonl(&file, rows);
    let pipeline = format!(
        "name: {name}
stages:
  - name: prefs
    kind: preferences
    dataset: mine
    path: {}
    columns: {columns}
  - name: embed
    kind: embed
    encoder: all-MiniLM-L6-v2
  - name: head
    kind: train
    model: pal-b
    k: 2
    train: all
    encoder: all-MiniLM-L6-v2
    config: {{d: 4}}
    training: {{epochs: 15, batch_size: 1000}}
splits:
  all: \"SELECT * FROM pairs\"
",
        file.display()
    );
    let p = common::write_pipeline(dir, &format!("{name}.yaml"), &pipeline);
    let store = new_store(dir, name);
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    safetensors_values(&store.join("checkpoints/head/weights.safetensors"))
}

/// Training takes each comparison's weight from the store: with full-batch steps a pair of
/// weight 2 trains as the same pair given twice (a second row with another id), weight 2 on
/// every pair as no weight at all (up to summation order, as the pairs' order differs), and
/// the weights do change the model.
#[test]
fn training_reads_the_weights_from_the_store() {
    common::require_minilm();
    let dir = tempfile::tempdir().unwrap();
    let base: Vec<Value> = (0..16)
        .map(|i| {
            json!({
                "annotator": format!("w{}", i % 2),
                "prompt": format!("question {}", i % 4),
                "chosen": format!("a careful answer number {i}"),
                "rejected": format!("no {i}"),
                "rid": format!("r{i}"),
            })
        })
        .collect();
    let heavy = [1usize, 6, 11];
    let with_conf = |conf: &dyn Fn(usize) -> f64| -> Vec<Value> {
        base.iter()
            .enumerate()
            .map(|(i, r)| {
                let mut r = r.clone();
                r["conf"] = json!(conf(i));
                r
            })
            .collect()
    };
    let cols = "{user: annotator, prompt: prompt, chosen: chosen, rejected: rejected, id: rid";
    let weighted = train_on(
        dir.path(),
        "weighted",
        &with_conf(&|i| if heavy.contains(&i) { 2.0 } else { 1.0 }),
        &format!("{cols}, weight: conf}}"),
    );
    let mut twice = base.clone();
    for &i in &heavy {
        let mut r = base[i].clone();
        r["rid"] = json!(format!("r{i}-again"));
        twice.push(r);
    }
    let copied = train_on(dir.path(), "copied", &twice, &format!("{cols}}}"));
    let plain = train_on(dir.path(), "plain", &base, &format!("{cols}}}"));
    let doubled = train_on(
        dir.path(),
        "doubled",
        &with_conf(&|_| 2.0),
        &format!("{cols}, weight: conf}}"),
    );
    let gap = |a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        gap(&weighted, &copied) < 1e-4,
        "{}",
        gap(&weighted, &copied)
    );
    assert!(gap(&doubled, &plain) < 1e-4, "{}", gap(&doubled, &plain));
    assert!(gap(&weighted, &plain) > 1e-3, "{}", gap(&weighted, &plain));
}
