//! Ingest rules through the real binary: rows that are not preferences are dropped and
//! counted in the stage summary (Pick-a-Pic NaN labels, one image twice, repeated rows; Polis
//! meta statements and equal timestamps), and a CSV that is not UTF-8 is named by file and
//! line. Each test writes its inputs in the published layouts and counts what it expects
//! from them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use arrow_schema::{Field, Schema};
use common::*;
use palpipe::ingest::pickapic_fixtures::shard_schema;

// ---------------------------------------------------------------------------------------
// Pick-a-Pic
// ---------------------------------------------------------------------------------------

/// A small, decodable PNG of one colour.
fn png(rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(4, 4, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// What a row should become, decided by hand when the row is written.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Pair,
    Tie,
    Unlabeled,
    Nan,
    SameImage,
    /// Repeats a row already written (same ranking id and content).
    Repeat,
}

#[derive(Clone)]
struct Row {
    ranking_id: i64,
    user_id: i64,
    caption: String,
    images: [Vec<u8>; 2],
    labels: (f64, f64),
    /// Not written when the shard has no `has_label` column.
    has_label: bool,
    are_different: bool,
    fate: Fate,
}

/// Writes one shard in the published layout (the 18 columns), or without `has_label` (what
/// a pandas or polars round trip of a shard whose labels were filled with NaN leaves).
fn write_shard(path: &Path, rows: &[Row], with_has_label: bool) {
    // The published schema, as the fixture writer declares it.
    let mut fields: Vec<Field> = shard_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    assert_eq!(fields[4].name(), "has_label");
    let strs = |f: &dyn Fn(&Row) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(BooleanArray::from(
            rows.iter().map(|r| r.are_different).collect::<Vec<_>>(),
        )),
        strs(&|_| String::new()),
        strs(&|r| r.caption.clone()),
        Arc::new(TimestampNanosecondArray::from_iter_values(
            rows.iter()
                .map(|r| 1_690_000_000_000_000_000 + r.ranking_id),
        )),
        Arc::new(BooleanArray::from(
            rows.iter().map(|r| r.has_label).collect::<Vec<_>>(),
        )),
        strs(&|r| format!("{}-0", r.ranking_id)),
        strs(&|r| format!("https://example.invalid/{}-0.png", r.ranking_id)),
        strs(&|r| format!("{}-1", r.ranking_id)),
        strs(&|r| format!("https://example.invalid/{}-1.png", r.ranking_id)),
        Arc::new(BinaryArray::from_iter_values(
            rows.iter().map(|r| r.images[0].clone()),
        )),
        Arc::new(BinaryArray::from_iter_values(
            rows.iter().map(|r| r.images[1].clone()),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.labels.0),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.labels.1),
        )),
        strs(&|_| "painter-a".into()),
        strs(&|_| "painter-b".into()),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.ranking_id),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.user_id))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|_| 1))),
    ];
    if !with_has_label {
        fields.remove(4);
        columns.remove(4);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn pickapic_rows_that_are_not_preferences_are_dropped_and_counted() {
    let colours: Vec<Vec<u8>> = (0..24u8)
        .map(|i| png([i * 10, 255 - i * 10, i * 3]))
        .collect();
    let mut next = 0usize;
    let mut fresh = || {
        next += 2;
        [colours[next - 2].clone(), colours[next - 1].clone()]
    };
    let row = |ranking_id: i64, images: [Vec<u8>; 2], labels: (f64, f64), fate: Fate| Row {
        ranking_id,
        user_id: 100 + ranking_id % 3,
        caption: format!("caption {ranking_id}"),
        images,
        labels,
        has_label: true,
        are_different: true,
        fate,
    };
    let nan = f64::NAN;
    // v1 train: two shards without `has_label`, NaN where a label is missing.
    let first = row(1, fresh(), (1.0, 0.0), Fate::Pair);
    let one = fresh();
    let mut flagged = row(8, fresh(), (1.0, 0.0), Fate::SameImage);
    flagged.are_different = false;
    let mut repeat = first.clone();
    repeat.fate = Fate::Repeat;
    let train0 = vec![
        first,
        row(2, fresh(), (0.0, 1.0), Fate::Pair),
        row(3, fresh(), (nan, nan), Fate::Nan),
        row(4, fresh(), (nan, 0.0), Fate::Nan),
        row(5, fresh(), (0.0, nan), Fate::Nan),
        row(6, fresh(), (0.5, 0.5), Fate::Tie),
        row(
            7,
            [one[0].clone(), one[0].clone()],
            (1.0, 0.0),
            Fate::SameImage,
        ),
        flagged,
    ];
    let train1 = vec![repeat, row(9, fresh(), (0.0, 1.0), Fate::Pair)];
    // v2 test: the published 18 columns.
    let mut unlabeled = row(11, fresh(), (0.0, 0.0), Fate::Unlabeled);
    unlabeled.has_label = false;
    let test = vec![
        row(10, fresh(), (1.0, 0.0), Fate::Pair),
        unlabeled,
        row(12, fresh(), (nan, 1.0), Fate::Nan),
    ];

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pickapic");
    write_shard(
        &data.join("v1/train-00000-of-00002.parquet"),
        &train0,
        false,
    );
    write_shard(
        &data.join("v1/train-00001-of-00002.parquet"),
        &train1,
        false,
    );
    write_shard(&data.join("v2/test-00000-of-00001.parquet"), &test, true);
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        &format!(
            "name: pp\nstages:\n  - name: ingest\n    kind: pickapic\n    data_dir: {}\n    sets:\n      - {{version: v1, split: train, files: v1/train-*.parquet}}\n      - {{version: v2, split: test, files: v2/test-*.parquet}}\n",
            data.display()
        ),
    );
    let store = new_store(dir.path(), "s");
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).ok();

    // Expectations from the rows written above.
    let sets = [("v1-train", [train0, train1].concat()), ("v2-test", test)];
    let mut want_pairs: BTreeMap<String, i64> = BTreeMap::new();
    let mut want_labels: BTreeMap<String, i64> = BTreeMap::new();
    for (tag, rows) in &sets {
        let count = |f: Fate| rows.iter().filter(|r| r.fate == f).count();
        let pairs = count(Fate::Pair);
        want_pairs.insert(tag.to_string(), pairs as i64);
        for r in rows.iter().filter(|r| r.fate == Fate::Pair) {
            let label = if r.labels.0 > r.labels.1 { -1 } else { 1 };
            want_labels.insert(r.ranking_id.to_string(), label);
        }
        let mut needles = vec![format!(
            "{tag}: {} rows → {pairs} pairs ({} ties, {} unlabeled dropped, {} with a NaN label, {} showing one image twice",
            rows.len(),
            count(Fate::Tie),
            count(Fate::Unlabeled),
            count(Fate::Nan),
            count(Fate::SameImage),
        )];
        if count(Fate::Repeat) > 0 {
            needles.push(format!(
                "{} rows repeat a row already read, so {} preference rows are {pairs} distinct pairs",
                count(Fate::Repeat),
                pairs + count(Fate::Repeat)
            ));
        }
        for needle in needles {
            assert!(r.stdout.contains(&needle), "{needle}\n{}", r.stdout);
        }
    }
    let got: BTreeMap<String, i64> = query(
        &store,
        "SELECT split, count(*) AS n FROM pairs GROUP BY split",
    )
    .iter()
    .map(|v| {
        (
            v["split"].as_str().unwrap().to_string(),
            v["n"].as_i64().unwrap(),
        )
    })
    .collect();
    assert_eq!(got, want_pairs);
    let labels: BTreeMap<String, i64> = query(&store, "SELECT source_ref, label FROM pairs")
        .iter()
        .map(|v| {
            (
                v["source_ref"].as_str().unwrap().to_string(),
                v["label"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(labels, want_labels, "only preferences, with their winners");
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM pairs WHERE left_id = right_id"
        ),
        0
    );
}

// ---------------------------------------------------------------------------------------
// Polis
// ---------------------------------------------------------------------------------------

const COMMENTS_HEADER: &str =
    "timestamp,datetime,comment-id,author-id,agrees,disagrees,moderated,comment-body,is-seed,is-meta";

/// A conversation folder `<parent>/<name>` in the newer export's layout.
fn polis_dir(parent: &Path, name: &str, comments: &str, votes: &[String]) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("summary.csv"), "topic,A newer talk\nurl,x\n").unwrap();
    std::fs::write(d.join("comments.csv"), comments).unwrap();
    let mut v = String::from("timestamp,datetime,comment-id,voter-id,vote\n");
    for line in votes {
        v += line;
        v += "\n";
    }
    std::fs::write(d.join("votes.csv"), v).unwrap();
    d
}

fn polis_pipeline(dir: &Path, conv: &Path, extra: &str) -> PathBuf {
    write_pipeline(
        dir,
        "p.yaml",
        &format!(
            "name: pol\nstages:\n  - name: votes\n    kind: polis\n    dir: {}\n    min_pairs_per_user: 1\n    unseen_frac: 0.0\n{extra}",
            conv.display()
        ),
    )
}

#[test]
fn polis_equal_timestamps_give_the_same_pairs_in_either_row_order() {
    let mut comments = format!("{COMMENTS_HEADER}\n");
    for c in 0..5 {
        comments += &format!("1700000000,x,{c},0,0,0,1,Statement {c},false,false\n");
    }
    // Oldest first, in seconds. Per voter: one vote per statement; voters 1 and 2 change
    // one vote within the same second (rows at one timestamp, different votes).
    let mut votes: Vec<(i64, u32, u32, i32)> = Vec::new();
    for voter in 1..=3u32 {
        for c in 0..5u32 {
            let vote = if (voter + c) % 2 == 0 { 1 } else { -1 };
            votes.push((1_700_000_100 + i64::from(c), c, voter, vote));
        }
    }
    // Voter 1 disagreed with statement 0 and voter 2 with statement 3 (odd sums): each
    // also agrees in the same second.
    votes.push((1_700_000_100, 0, 1, 1));
    votes.push((1_700_000_103, 3, 2, 1));
    let lines: Vec<String> = votes
        .iter()
        .map(|(t, c, v, x)| format!("{t},x,{c},{v},{x}"))
        .collect();
    let mut reversed = lines.clone();
    reversed.reverse();

    // Expected pairs: per (voter, statement) the votes at the latest second; one vote →
    // agree/disagree, two different → nothing.
    let mut latest: BTreeMap<(u32, u32), (i64, BTreeSet<i32>)> = BTreeMap::new();
    for &(t, c, v, x) in &votes {
        let e = latest.entry((v, c)).or_insert((t, BTreeSet::new()));
        if t > e.0 {
            *e = (t, BTreeSet::new());
        }
        if t == e.0 {
            e.1.insert(x);
        }
    }
    let conflicting = latest.values().filter(|(_, s)| s.len() > 1).count();
    let mut expected = 0usize;
    for voter in 1..=3u32 {
        let n = |x: i32| {
            (0..5)
                .filter(|c| latest[&(voter, *c)].1 == BTreeSet::from([x]))
                .count()
        };
        expected += n(1) * n(-1);
    }

    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for (i, rows) in [&lines, &reversed].into_iter().enumerate() {
        let conv = polis_dir(&dir.path().join(format!("o{i}")), "newer", &comments, rows);
        let p = polis_pipeline(&dir.path().join(format!("o{i}")), &conv, "");
        let store = dir.path().join(format!("s{i}"));
        let r = palpipe(&store, &["run", p.to_str().unwrap()]).ok();
        let pairs = query(
            &store,
            "SELECT pair_id, user_id, left_id, right_id, label, split FROM pairs ORDER BY pair_id",
        );
        runs.push((r, pairs));
    }
    assert_eq!(runs[0].1, runs[1].1, "row order changed the pairs");
    for (r, pairs) in &runs {
        assert_eq!(pairs.len(), expected);
        assert!(
            r.stdout.contains(&format!(
                "{conflicting} dropped for different votes at one timestamp"
            )),
            "{}",
            r.stdout
        );
        assert!(
            r.stderr
                .contains("warning: votes.csv: timestamps look like seconds"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn polis_meta_statements_are_left_out_by_default_and_kept_on_request() {
    // Statements 0-3 plain, 4 and 5 meta (5 also moderated out: counted as moderated).
    let mut comments = format!("{COMMENTS_HEADER}\n");
    let meta_of = |c: u32| c >= 4;
    let moderated_of = |c: u32| if c == 5 { -1 } else { 1 };
    for c in 0..6u32 {
        comments += &format!(
            "1700000000,x,{c},0,0,0,{},Statement {c},false,{}\n",
            moderated_of(c),
            meta_of(c)
        );
    }
    // Two voters, milliseconds: agree with even statements, disagree with odd ones.
    let mut votes = Vec::new();
    for voter in [7u32, 8] {
        for c in 0..6u32 {
            let vote = if c % 2 == 0 { 1 } else { -1 };
            votes.push(format!(
                "{},x,{c},{voter},{vote}",
                1_700_000_000_000u64 + u64::from(c)
            ));
        }
    }
    let count = |keep_meta: bool| {
        let usable: Vec<u32> = (0..6)
            .filter(|&c| moderated_of(c) != -1 && (keep_meta || !meta_of(c)))
            .collect();
        let agree = usable.iter().filter(|c| *c % 2 == 0).count();
        2 * agree * (usable.len() - agree)
    };
    let meta_counted = (0..6)
        .filter(|&c| meta_of(c) && moderated_of(c) != -1)
        .count();

    let dir = tempfile::tempdir().unwrap();
    let conv = polis_dir(dir.path(), "newer", &comments, &votes);
    for (keep, word) in [(false, "left out"), (true, "kept (keep_meta)")] {
        let extra = if keep { "    keep_meta: true\n" } else { "" };
        let p = polis_pipeline(dir.path(), &conv, extra);
        let store = dir.path().join(format!("s{keep}"));
        let r = palpipe(&store, &["run", p.to_str().unwrap()]).ok();
        assert!(
            r.stdout.contains(&format!("{meta_counted} meta {word}")),
            "{}",
            r.stdout
        );
        assert!(r.stdout.contains("1 moderated out"), "{}", r.stdout);
        assert!(!r.stderr.contains("seconds"), "{}", r.stderr);
        assert_eq!(
            scalar(&store, "SELECT count(*) FROM pairs") as usize,
            count(keep)
        );
        assert_eq!(
            scalar(
                &store,
                "SELECT count(*) FROM items WHERE text = 'Statement 4'"
            ),
            i64::from(keep)
        );
    }
}

#[test]
fn a_windows_1252_csv_is_named_by_file_and_line_once_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let conv = dir.path().join("conv");
    std::fs::create_dir_all(&conv).unwrap();
    std::fs::write(conv.join("summary.csv"), "topic,A topic\n").unwrap();
    // Line 3 holds "Café" as Excel writes it in Windows-1252 (é = 0xE9).
    let mut comments =
        b"timestamp,datetime,comment-id,author-id,agrees,disagrees,moderated,comment-body\n\
        1,d,0,0,1,1,1,first\n2,d,1,0,1,1,1,Caf"
            .to_vec();
    comments.push(0xE9);
    comments.extend_from_slice(b" for all\n");
    std::fs::write(conv.join("comments.csv"), comments).unwrap();
    std::fs::write(
        conv.join("votes.csv"),
        "timestamp,datetime,comment-id,voter-id,vote\n1,d,0,5,1\n2,d,1,5,-1\n",
    )
    .unwrap();
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        &format!(
            "name: x\nstages:\n  - name: v\n    kind: polis\n    dir: {}\n    min_pairs_per_user: 1\n",
            conv.display()
        ),
    );
    let store = new_store(dir.path(), "s");
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(1);
    let file = conv.join("comments.csv").display().to_string();
    assert!(
        r.stderr.contains(&format!("{file}:3:")),
        "file and line:\n{}",
        r.stderr
    );
    assert_eq!(r.stderr.matches(&file).count(), 1, "once:\n{}", r.stderr);
    assert!(r.stderr.contains("byte 0xE9"), "{}", r.stderr);
    assert!(r.stderr.contains("hint:"), "{}", r.stderr);
    assert!(r.stderr.contains("UTF-8"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("stream did not contain valid UTF-8"),
        "{}",
        r.stderr
    );
    assert_eq!(scalar(&store, "SELECT count(*) FROM pairs"), 0);
}
