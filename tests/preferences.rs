//! The `preferences` stage and `palpipe ingest`: one test per layout and per preset, on
//! small files written here in the published structures, with the expected comparisons
//! computed from those rows in the test; determinism; the README's examples.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BinaryArray, Float64Array, Int64Array, RecordBatch, StringArray, StructArray,
};
use arrow_schema::{DataType, Field, Fields, Schema};
use common::{new_store, palpipe, query, scalar};
use serde_json::{json, Value};

/// (user, split, prompt, preferred text, other text) of one stored comparison.
type Cmp = (String, String, Option<String>, String, String);

/// Every comparison of `dataset`, with texts looked up in `items` and `prompts`.
fn comparisons(store: &Path, dataset: &str) -> BTreeSet<Cmp> {
    let rows = query(
        store,
        &format!(
            "SELECT p.user_id, p.split, pr.text AS prompt, l.text AS lt, r.text AS rt, p.label \
             FROM pairs p JOIN items l ON p.left_id = l.item_id \
             JOIN items r ON p.right_id = r.item_id \
             LEFT JOIN prompts pr ON p.prompt_id = pr.prompt_id WHERE p.dataset = '{dataset}'"
        ),
    );
    let set: BTreeSet<Cmp> = rows
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            let (w, l) = if r["label"].as_i64() == Some(-1) {
                (s("lt"), s("rt"))
            } else {
                assert_eq!(r["label"].as_i64(), Some(1), "{r}");
                (s("rt"), s("lt"))
            };
            (
                s("user_id"),
                s("split"),
                r["prompt"].as_str().map(String::from),
                w,
                l,
            )
        })
        .collect();
    assert_eq!(set.len(), rows.len(), "a comparison stored twice");
    set
}

/// The comparisons of {annotator, prompt, chosen, rejected} rows ingested as dataset `mine`.
fn chosen_rejected(rows: &[Value]) -> BTreeSet<Cmp> {
    rows.iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap();
            cmp(
                &format!("mine/{}", s("annotator")),
                "train",
                Some(s("prompt")),
                s("chosen"),
                s("rejected"),
            )
        })
        .collect()
}

fn cmp(user: &str, split: &str, prompt: Option<&str>, w: &str, l: &str) -> Cmp {
    (
        user.to_string(),
        split.to_string(),
        prompt.map(String::from),
        w.to_string(),
        l.to_string(),
    )
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn write_jsonl_gz(path: &Path, rows: &[Value]) {
    let f = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    for r in rows {
        writeln!(gz, "{r}").unwrap();
    }
    gz.finish().unwrap();
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn strs(v: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

fn ingest(store: &Path, args: &[&str]) -> common::Run {
    let mut a = vec!["ingest"];
    a.extend_from_slice(args);
    palpipe(store, &a)
}

/// Pairwise chosen/rejected, JSON lines gzip-compressed, via `palpipe ingest`: the rows that
/// make no preference are dropped and counted, a repeated row is one pair.
#[test]
fn pairwise_chosen_rejected_from_gzipped_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for i in 0..24 {
        let mut r = json!({
            "annotator": format!("w{}", i % 3),
            "prompt": format!("prompt {}", i % 5),
            "chosen": format!("good answer {i}"),
            "rejected": format!("bad answer {i}"),
        });
        match i {
            5 => r["rejected"] = r["chosen"].clone(),
            7 => r["chosen"] = json!(""),
            _ => {}
        }
        rows.push(r);
    }
    rows.push(rows[10].clone()); // the same comparison again
    let kept: Vec<Value> = rows
        .iter()
        .filter(|r| r["chosen"] != r["rejected"] && r["chosen"].as_str() != Some(""))
        .cloned()
        .collect();
    let expected = chosen_rejected(&kept);
    assert_eq!(expected.len(), 22);
    let file = dir.path().join("prefs.jsonl.gz");
    write_jsonl_gz(&file, &rows);
    let store = new_store(dir.path(), "store");
    let run = common::ingest_chosen_rejected(&store, &file, &[]).ok();
    assert_eq!(comparisons(&store, "mine"), expected);
    for reason in ["1 same item twice", "1 empty text"] {
        assert!(run.stdout.contains(reason), "{reason}: {}", run.stdout);
    }
    assert!(run.stdout.contains("1 repeat a pair"), "{}", run.stdout);
    assert_eq!(
        scalar(&store, "SELECT count(*) FROM users WHERE dataset = 'mine'"),
        3
    );
    // The preferred item's side is drawn: both sides occur.
    let left = scalar(&store, "SELECT count(*) FROM pairs WHERE label = -1");
    assert!(left > 0 && left < 22, "{left}");
}

/// Pairwise left/right with a 0/1 index label, from a Hugging Face folder of parquet
/// shards: the split comes from each file's name, sides are kept as written, a null label
/// is dropped.
#[test]
fn pairwise_left_right_index_from_a_hugging_face_parquet_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hf/data");
    let mut expected = BTreeSet::new();
    let mut sides = BTreeSet::new();
    for (file, split, n) in [
        ("train-00000-of-00002.parquet", "train", 6),
        ("train-00001-of-00002.parquet", "train", 5),
        ("test-00000-of-00001.parquet", "test", 4),
    ] {
        let mut cols: [Vec<Option<String>>; 4] = Default::default();
        let mut pick = Vec::new();
        for i in 0..n {
            let tag = format!("{split}{file}{i}");
            let (a, b) = (format!("A {tag}"), format!("B {tag}"));
            let label = if i == 2 { None } else { Some((i % 2) as i64) };
            if let Some(l) = label {
                let (w, lo) = if l == 0 { (&a, &b) } else { (&b, &a) };
                let user = format!("hf/u{}", i % 2);
                expected.insert(cmp(&user, split, Some(&format!("q{i}")), w, lo));
                sides.insert((a.clone(), b.clone()));
            }
            cols[0].push(Some(format!("u{}", i % 2)));
            cols[1].push(Some(format!("q{i}")));
            cols[2].push(Some(a));
            cols[3].push(Some(b));
            pick.push(label);
        }
        let names = ["annotator_id", "question", "response_0", "response_1"];
        let mut fields: Vec<Field> = names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect();
        fields.push(Field::new("pick", DataType::Int64, true));
        let mut arrays: Vec<ArrayRef> = cols
            .iter()
            .map(|c| Arc::new(StringArray::from(c.clone())) as ArrayRef)
            .collect();
        arrays.push(Arc::new(Int64Array::from(pick)));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
        write_parquet(&data.join(file), &batch);
    }
    assert_eq!(expected.len(), 12);
    let yaml = "name: hf\nstages:\n  - name: prefs\n    kind: preferences\n    dataset: hf\n    path: hf\n    columns: {user: annotator_id, prompt: question, left: response_0, right: response_1, label: pick}\n";
    let pipeline = dir.path().join("hf.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    let store = new_store(dir.path(), "store");
    let run = palpipe(&store, &["run", pipeline.to_str().unwrap()]).ok();
    assert_eq!(comparisons(&store, "hf"), expected);
    assert!(run.stdout.contains("3 missing label"), "{}", run.stdout);
    // Sides as written: the left item is always response_0.
    let rows = query(
        &store,
        "SELECT l.text AS lt, r.text AS rt FROM pairs p JOIN items l ON p.left_id = l.item_id JOIN items r ON p.right_id = r.item_id",
    );
    let got: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["lt"].as_str().unwrap().to_string(),
                r["rt"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, sides);
}

/// A small PNG of one colour.
fn png(rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(4, 4, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Pairwise with two score columns (Pick-a-Pic's label_0/label_1, ties at 0.5) and image
/// items as Hugging Face `Image` records `{bytes, path}`: one of them by bytes, one by a path
/// relative to the data file.
#[test]
fn pairwise_two_scores_with_hugging_face_image_records() {
    let dir = tempfile::tempdir().unwrap();
    let images: Vec<Vec<u8>> = (0..12u8)
        .map(|i| png([i * 20, 100, 200 - i * 10]))
        .collect();
    std::fs::create_dir_all(dir.path().join("pics")).unwrap();
    std::fs::write(dir.path().join("pics/on-disk.png"), &images[11]).unwrap();
    // (l0, l1) per row; row 1 a tie, row 2 NaN; row 3's right image is on disk.
    let labels = [
        (1.0, 0.0),
        (0.5, 0.5),
        (f64::NAN, 1.0),
        (0.0, 1.0),
        (1.0, 0.0),
    ];
    let mut expected = BTreeSet::new();
    let (mut b0, mut b1, mut p1) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (l0, l1)) in labels.iter().enumerate() {
        let left = images[2 * i].clone();
        let (right, path) = if i == 3 {
            (images[11].clone(), Some("pics/on-disk.png"))
        } else {
            (images[2 * i + 1].clone(), None)
        };
        if !l0.is_nan() && l0 != l1 {
            let id = |b: &[u8]| blake3::hash(b).to_hex().to_string();
            let (w, l) = if l0 > l1 {
                (&left, &right)
            } else {
                (&right, &left)
            };
            expected.insert((format!("pp/u{i}"), id(w), id(l)));
        }
        b0.push(Some(left));
        b1.push(if path.is_some() { None } else { Some(right) });
        p1.push(path);
    }
    let image_fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let record = |bytes: Vec<Option<Vec<u8>>>, paths: Vec<Option<&str>>| -> ArrayRef {
        let b: BinaryArray = bytes.iter().map(|x| x.as_deref()).collect();
        Arc::new(StructArray::new(
            image_fields.clone(),
            vec![Arc::new(b) as ArrayRef, strs(&paths)],
            None,
        ))
    };
    let n = labels.len();
    let users: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("caption", DataType::Utf8, false),
            Field::new("image_0", DataType::Struct(image_fields.clone()), true),
            Field::new("image_1", DataType::Struct(image_fields.clone()), true),
            Field::new("label_0", DataType::Float64, false),
            Field::new("label_1", DataType::Float64, false),
        ])),
        vec![
            Arc::new(StringArray::from(users)),
            Arc::new(StringArray::from(vec!["a cat"; n])),
            record(b0, vec![None; n]),
            record(b1, p1),
            Arc::new(Float64Array::from_iter_values(labels.iter().map(|l| l.0))),
            Arc::new(Float64Array::from_iter_values(labels.iter().map(|l| l.1))),
        ],
    )
    .unwrap();
    let file = dir.path().join("pics.parquet");
    write_parquet(&file, &batch);
    let store = new_store(dir.path(), "store");
    let run = ingest(
        &store,
        &[
            file.to_str().unwrap(),
            "--dataset",
            "pp",
            "--column",
            "user=user_id",
            "--column",
            "prompt=caption",
            "--column",
            "left=image_0",
            "--column",
            "right=image_1",
            "--column",
            "label=[label_0, label_1]",
        ],
    )
    .ok();
    let rows = query(
        &store,
        "SELECT user_id, left_id, right_id, label FROM pairs WHERE dataset = 'pp'",
    );
    let got: BTreeSet<(String, String, String)> = rows
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            if r["label"].as_i64() == Some(-1) {
                (s("user_id"), s("left_id"), s("right_id"))
            } else {
                (s("user_id"), s("right_id"), s("left_id"))
            }
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 3);
    assert!(run.stdout.contains("1 tie"), "{}", run.stdout);
    assert!(run.stdout.contains("1 NaN label"), "{}", run.stdout);
    assert_eq!(
        scalar(&store, "SELECT count(*) FROM items WHERE kind = 'image'"),
        6
    );
}

/// Community Alignment rows: best of four per first turn, the preferred one named
/// `response_b` or a bare letter; a missing fourth response gives one pair fewer.
#[test]
fn best_of_k_community_alignment_preset() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    let mut expected = BTreeSet::new();
    let letters = ["a", "b", "c", "d"];
    for i in 0..8 {
        let user = format!("ann{}", i % 3);
        let prompt = format!("how do I {i}?");
        let resp: Vec<Option<String>> = (0..4)
            .map(|k| (!(i == 3 && k == 0)).then(|| format!("reply {i}{}", letters[k])))
            .collect();
        let best = i % 4;
        let preferred = match i {
            6 => Value::Null,
            _ if i % 2 == 0 => json!(format!("response_{}", letters[best])),
            _ => json!(letters[best]),
        };
        if i != 6 {
            for k in 0..4 {
                if let (true, Some(other)) = (k != best, &resp[k]) {
                    expected.insert(cmp(
                        &format!("ca/{user}"),
                        "train",
                        Some(&prompt),
                        resp[best].as_ref().unwrap(),
                        other,
                    ));
                }
            }
        }
        rows.push(json!({
            "conversation_id": i,
            "annotator_id": user,
            "first_turn_prompt": prompt,
            "first_turn_response_a": resp[0],
            "first_turn_response_b": resp[1],
            "first_turn_response_c": resp[2],
            "first_turn_response_d": resp[3],
            "first_turn_preferred_response": preferred,
            "first_turn_feedback": "",
        }));
    }
    assert_eq!(expected.len(), 7 * 3 - 1);
    write_jsonl(&dir.path().join("ca/train.jsonl"), &rows);
    let store = new_store(dir.path(), "store");
    let run = ingest(
        &store,
        &[
            dir.path().join("ca").to_str().unwrap(),
            "--dataset",
            "ca",
            "--preset",
            "community-alignment",
        ],
    )
    .ok();
    assert_eq!(comparisons(&store, "ca"), expected);
    assert!(run.stdout.contains("1 missing label"), "{}", run.stdout);
}

/// Ratings in a CSV: pairs within each (rater, question) whose scores differ by at least
/// `min_gap`; equal scores are ties, counted.
#[test]
fn ratings_csv_with_min_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("rater,question,answer,stars\n");
    let mut ratings: Vec<(String, String, String, i64)> = Vec::new();
    for r in 0..3 {
        for q in 0..3 {
            for a in 0..4 {
                let stars = ((r * 3 + q * 5 + a * a * 7) % 5) as i64;
                let ans = format!("answer {q}-{a}");
                csv += &format!("r{r},\"question {q}, please\",{ans},{stars}\n");
                ratings.push((format!("r{r}"), format!("question {q}, please"), ans, stars));
            }
        }
    }
    let mut expected = BTreeSet::new();
    let mut ties = 0;
    for (i, x) in ratings.iter().enumerate() {
        for y in &ratings[i + 1..] {
            if x.0 != y.0 || x.1 != y.1 {
                continue;
            }
            let gap = (x.3 - y.3).abs();
            if gap == 0 {
                ties += 1;
            } else if gap >= 2 {
                let (w, l) = if x.3 > y.3 { (x, y) } else { (y, x) };
                expected.insert(cmp(&format!("rt/{}", x.0), "train", Some(&x.1), &w.2, &l.2));
            }
        }
    }
    assert!(ties > 0 && expected.len() > 10, "{ties} {}", expected.len());
    let file = dir.path().join("ratings.csv");
    std::fs::write(&file, csv).unwrap();
    let args = [
        "ingest",
        file.to_str().unwrap(),
        "--dataset",
        "rt",
        "--layout",
        "ratings",
        "--column",
        "user=rater",
        "--column",
        "prompt=question",
        "--column",
        "response=answer",
        "--column",
        "score=stars",
        "--min-gap",
        "2",
    ];
    let store = new_store(dir.path(), "store");
    let run = palpipe(&store, &args).ok();
    assert_eq!(comparisons(&store, "rt"), expected);
    assert!(
        run.stdout.contains(&format!("{ties} tie")),
        "{ties}: {}",
        run.stdout
    );
    // Rows read one at a time in blocks of a few hundred bytes, ratings and pairs in runs of
    // a few hundred: the same store.
    let small = dir.path().join("store-small");
    let out = common::bin()
        .args(args)
        .arg("--store")
        .arg(&small)
        .env("PALPIPE_INGEST_BLOCK_BYTES", "200")
        .env("PALPIPE_INGEST_RUN_BYTES", "300")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot(&small), snapshot(&store));
}

/// PRISM's utterances.jsonl: within each (user, conversation, turn), the chosen response
/// over each other one.
#[test]
fn prism_preset_chosen_over_the_others_of_its_turn() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    let mut expected = BTreeSet::new();
    for u in 0..2 {
        for c in 0..2 {
            for t in 0..2 {
                let n = if t == 0 { 4 } else { 2 };
                let chosen = (u + c + t) % n;
                let prompt = format!("user {u} asks {c}/{t}");
                for k in 0..n {
                    let text = format!("model says {u}{c}{t}{k}");
                    if k != chosen {
                        expected.insert(cmp(
                            &format!("prism/user{u}"),
                            "train",
                            Some(&prompt),
                            &format!("model says {u}{c}{t}{chosen}"),
                            &text,
                        ));
                    }
                    rows.push(json!({
                        "conversation_id": format!("c{u}{c}"),
                        "user_id": format!("user{u}"),
                        "turn": t,
                        "within_turn_id": k,
                        "interaction_id": format!("c{u}{c}-{t}-{k}"),
                        "model_provider": "acme",
                        "model_name": format!("model-{k}"),
                        "user_prompt": prompt,
                        "model_response": text,
                        "score": 10 + k * 20,
                        "if_chosen": k == chosen,
                        "included_in_balanced_subset": true,
                    }));
                }
            }
        }
    }
    assert_eq!(expected.len(), 4 * 3 + 4);
    let file = dir.path().join("utterances.jsonl");
    write_jsonl(&file, &rows);
    let store = new_store(dir.path(), "store");
    ingest(
        &store,
        &[
            file.to_str().unwrap(),
            "--dataset",
            "prism",
            "--preset",
            "prism",
        ],
    )
    .ok();
    assert_eq!(comparisons(&store, "prism"), expected);
}

/// The summarize-from-feedback comparisons in their published structure (JSON lines named
/// `.json`, a null `note`, an empty `extra`): the worker's choice is the label, the post the
/// prompt, `split` the split.
#[test]
fn summarize_from_feedback_preset() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = BTreeSet::new();
    for batch in [3, 5] {
        let mut rows = Vec::new();
        for i in 0..7 {
            let split = ["train", "valid1", "valid2"][i % 3];
            let post = format!("TITLE: my story {batch}-{i}\n\nPOST: it was long");
            let texts = [
                format!(" short {batch}{i}"),
                format!(" longer one {batch}{i}"),
            ];
            let choice = (i * batch) % 2;
            let worker = format!("worker{}", (i + batch) % 4);
            expected.insert(cmp(
                &format!("tldr/{worker}"),
                split,
                Some(&post),
                &texts[choice],
                &texts[1 - choice],
            ));
            rows.push(json!({
                "info": {"id": format!("t3_{batch}{i}"), "post": post, "title": "my story", "subreddit": "relationships"},
                "split": split,
                "summaries": [
                    {"text": texts[0], "policy": "sup2", "note": null},
                    {"text": texts[1], "policy": "ppo_xl", "note": if i == 0 { json!("nice") } else { Value::Null }},
                ],
                "choice": choice,
                "worker": worker,
                "batch": format!("batch{batch}"),
                "extra": if i == 1 { json!({"confidence": 8}) } else { json!({}) },
            }));
        }
        write_jsonl(
            &dir.path().join(format!("comparisons/batch{batch}.json")),
            &rows,
        );
    }
    let store = new_store(dir.path(), "store");
    ingest(
        &store,
        &[
            dir.path().join("comparisons").to_str().unwrap(),
            "--dataset",
            "tldr",
            "--preset",
            "summarize-from-feedback",
        ],
    )
    .ok();
    assert_eq!(comparisons(&store, "tldr"), expected);
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM pairs WHERE dataset = 'tldr' AND source_ref LIKE 't3_%'"
        ),
        14
    );
}

/// Chat transcripts: HH-RLHF text (the hh-rlhf preset) and lists of {role, content}: the
/// shared history is the prompt, the final replies the items.
#[test]
fn chat_transcripts_share_their_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut hh = Vec::new();
    let mut expected_hh = BTreeSet::new();
    for i in 0..5 {
        let history = format!("\n\nHuman: question {i}\n\nAssistant: first reply\n\nHuman: and then {i}?\n\nAssistant:");
        let (good, bad) = (format!("Then it works {i}."), format!("Then no {i}."));
        hh.push(
            json!({"chosen": format!("{history} {good}"), "rejected": format!("{history} {bad}")}),
        );
        expected_hh.insert(cmp(
            "hh/hh-rlhf",
            "train",
            Some(history.trim()),
            &good,
            &bad,
        ));
    }
    write_jsonl(&dir.path().join("hh/train.jsonl"), &hh);
    let store = new_store(dir.path(), "store");
    ingest(
        &store,
        &[
            dir.path().join("hh").to_str().unwrap(),
            "--dataset",
            "hh",
            "--preset",
            "hh-rlhf",
        ],
    )
    .ok();
    assert_eq!(comparisons(&store, "hh"), expected_hh);

    let mut chats = Vec::new();
    let mut expected = BTreeSet::new();
    for i in 0..4 {
        let q = format!("what is {i}+{i}?");
        let m = |role: &str, c: &str| json!({"role": role, "content": c});
        chats.push(json!({
            "user_id": format!("p{}", i % 2),
            "chosen": [m("user", &q), m("assistant", &format!("{}", 2 * i))],
            "rejected": [m("user", &q), m("assistant", "no idea")],
        }));
        expected.insert(cmp(
            &format!("chat/p{}", i % 2),
            "test",
            Some(&q),
            &format!("{}", 2 * i),
            "no idea",
        ));
    }
    write_jsonl(&dir.path().join("chat/test.jsonl"), &chats);
    ingest(
        &store,
        &[
            dir.path().join("chat").to_str().unwrap(),
            "--dataset",
            "chat",
            "--column",
            "user=user_id",
            "--column",
            "chosen=chosen",
            "--column",
            "rejected=rejected",
        ],
    )
    .ok();
    assert_eq!(comparisons(&store, "chat"), expected);
    // The first dataset is untouched by the second.
    assert_eq!(comparisons(&store, "hh"), expected_hh);
}

fn table(store: &Path, sql: &str) -> Vec<Value> {
    query(store, sql)
}

fn snapshot(store: &Path) -> [Vec<Value>; 4] {
    [
        table(store, "SELECT * FROM pairs ORDER BY pair_id"),
        table(store, "SELECT * FROM users ORDER BY user_id"),
        table(store, "SELECT * FROM items ORDER BY item_id"),
        table(store, "SELECT * FROM prompts ORDER BY prompt_id"),
    ]
}

/// Pair ids and the side a chosen/rejected pair's preferred item is drawn on are what the
/// builds before them stored (the literals: a build of f3baac1 ingested these two rows; a
/// change to how the ids are hashed must not change them).
#[test]
fn pair_ids_and_sides_are_those_stored_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "st");
    let labelled = dir.path().join("labelled.jsonl");
    write_jsonl(
        &labelled,
        &[json!({"u": "u", "p": "p", "l": "a", "r": "b", "y": -1})],
    );
    ingest(
        &store,
        &[
            labelled.to_str().unwrap(),
            "--dataset",
            "d",
            "--column",
            "user=u",
            "--column",
            "prompt=p",
            "--column",
            "left=l",
            "--column",
            "right=r",
            "--column",
            "label=y",
            "--label-convention",
            "sign",
        ],
    )
    .ok();
    let drawn = dir.path().join("drawn.jsonl");
    write_jsonl(&drawn, &[json!({"u": "u", "p": "p", "c": "a", "j": "b"})]);
    ingest(
        &store,
        &[
            drawn.to_str().unwrap(),
            "--dataset",
            "e",
            "--column",
            "user=u",
            "--column",
            "prompt=p",
            "--column",
            "chosen=c",
            "--column",
            "rejected=j",
            "--seed",
            "7",
        ],
    )
    .ok();
    let rows = table(
        &store,
        "SELECT dataset, pair_id, label FROM pairs ORDER BY dataset",
    );
    let got: Vec<(&str, &str, i64)> = (rows.iter())
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap();
            (s("dataset"), s("pair_id"), r["label"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "d",
                "a0f869b05c707fa4c13ec422a116080560c9fff0a136def3baec22b1cc8b5d1c",
                -1
            ),
            (
                "e",
                "d7f1a7cc2cad87b5cc6d54669be0751c70b27f5b3618f158787a29af2045c38d",
                1
            ),
        ]
    );
}

/// The same rows in another order give the same store rows; a re-run with a changed
/// parameter leaves the store equal to a fresh run with that parameter.
#[test]
fn row_order_does_not_matter_and_a_rerun_equals_a_fresh_run() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Value> = (0..40)
        .map(|i| {
            json!({
                "u": format!("u{}", i % 4),
                "p": format!("p{}", i % 6),
                "c": format!("c{}", i % 13),
                "r": format!("r{}", i % 11),
            })
        })
        .collect();
    let mut shuffled = rows.clone();
    // A fixed permutation: 17 is coprime with 40.
    for (i, slot) in shuffled.iter_mut().enumerate() {
        *slot = rows[(i * 17 + 3) % 40].clone();
    }
    assert_ne!(rows, shuffled);
    let pipeline = |data: &str| {
        format!(
            "name: det\nstages:\n  - name: prefs\n    kind: preferences\n    dataset: det\n    path: {data}\n    columns: {{user: u, prompt: p, chosen: c, rejected: r}}\n"
        )
    };
    write_jsonl(&dir.path().join("a.jsonl"), &rows);
    write_jsonl(&dir.path().join("b.jsonl"), &shuffled);
    let pa = dir.path().join("a.yaml");
    let pb = dir.path().join("b.yaml");
    std::fs::write(&pa, pipeline("a.jsonl")).unwrap();
    std::fs::write(&pb, pipeline("b.jsonl")).unwrap();
    let (sa, sb) = (dir.path().join("sa"), dir.path().join("sb"));
    palpipe(&sa, &["run", pa.to_str().unwrap()]).ok();
    palpipe(&sb, &["run", pb.to_str().unwrap()]).ok();
    let a = snapshot(&sa);
    assert_eq!(a[0].len(), 40);
    assert_eq!(a, snapshot(&sb));

    // Re-run with another seed (sides drawn anew) and another user column.
    let sets = [
        "--set",
        "prefs.seed=5",
        "--set",
        "prefs.columns={user: p, prompt: u, chosen: c, rejected: r}",
    ];
    let mut args = vec!["run", pa.to_str().unwrap()];
    args.extend_from_slice(&sets);
    palpipe(&sa, &args).ok();
    let fresh = dir.path().join("fresh");
    palpipe(&fresh, &args).ok();
    let rerun = snapshot(&sa);
    let fresh_rows = snapshot(&fresh);
    assert_eq!(rerun[0], fresh_rows[0]);
    assert_eq!(rerun[1], fresh_rows[1]);
    assert_ne!(rerun[0], a[0]);
    assert_eq!(
        scalar(
            &sa,
            "SELECT count(*) FROM users WHERE user_id LIKE 'det/u%'"
        ),
        0
    );
}

/// The README's "Bring your own data" examples run as written, on files in the layouts
/// their comments describe.
#[test]
fn readme_bring_your_own_data_examples_run() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("## Bring your own data")
        .nth(1)
        .expect("README has a 'Bring your own data' section");
    let section = section.split("\n## ").next().unwrap();
    let blocks: Vec<&str> = section
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 3, "three examples");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // 1. A Hugging Face folder of parquet shards with chosen/rejected and annotator ids.
    for (split, n) in [("train", 5usize), ("test", 3)] {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(
                ["annotator_id", "prompt", "chosen", "rejected"]
                    .map(|c| Field::new(c, DataType::Utf8, false))
                    .to_vec(),
            )),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("a{}", i % 2)),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("{split} q{i}")),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("{split} yes{i}")),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("{split} no{i}")),
                )),
            ],
        )
        .unwrap();
        write_parquet(
            &d.join(format!("my-dataset/data/{split}-00000-of-00001.parquet")),
            &batch,
        );
    }
    // 2. Ratings: rater, question, answer, stars (1-5).
    let mut csv = String::from("rater,question,answer,stars\n");
    let stars: [[i32; 3]; 2] = [[5, 4, 1], [2, 2, 5]];
    let mut rating_pairs = 0i64;
    for (r, row) in stars.iter().enumerate() {
        for (a, s) in row.iter().enumerate() {
            csv += &format!("rater{r},favourite colour?,answer {a},{s}\n");
        }
        for i in 0..3 {
            for j in i + 1..3 {
                if (row[i] - row[j]).abs() >= 2 {
                    rating_pairs += 1;
                }
            }
        }
    }
    std::fs::write(d.join("ratings.csv"), csv).unwrap();
    // 3. Chat transcripts, zstd-compressed.
    let chats: String = (0..4)
        .map(|i| {
            format!(
                "{}\n",
                json!({
                    "user_id": format!("u{}", i % 2),
                    "chosen": [{"role": "user", "content": format!("hi {i}")}, {"role": "assistant", "content": "hello!"}],
                    "rejected": [{"role": "user", "content": format!("hi {i}")}, {"role": "assistant", "content": "go away"}],
                })
            )
        })
        .collect();
    std::fs::write(
        d.join("chats.jsonl.zst"),
        zstd::stream::encode_all(chats.as_bytes(), 3).unwrap(),
    )
    .unwrap();

    let expected_pairs = [8i64, rating_pairs, 4];
    for (i, (block, want)) in blocks.iter().zip(expected_pairs).enumerate() {
        let file = d.join(format!("example{i}.yaml"));
        std::fs::write(&file, block).unwrap();
        let store = d.join(format!("store{i}"));
        palpipe(&store, &["run", file.to_str().unwrap()]).ok();
        assert_eq!(
            scalar(&store, "SELECT count(*) FROM pairs"),
            want,
            "example {i}:\n{block}"
        );
    }
    let s0 = d.join("store0");
    assert_eq!(
        scalar(&s0, "SELECT count(*) FROM pairs WHERE split = 'test'"),
        3
    );
}

/// Rows go through sorted runs (temporary files past a memory budget, merged one row per
/// id): forced to spill into many tiny runs (more than are merged at once), and fed in
/// another order with repeated rows, the store holds the same rows in the same storage order
/// (id order) as a run that kept everything in memory.
#[test]
fn spilled_runs_and_row_order_leave_the_same_rows_in_the_same_order() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Value> = (0..120)
        .map(|i| {
            json!({
                "annotator": format!("w{}", i % 4),
                "prompt": format!("prompt {}", i % 10),
                "chosen": format!("good {i}"),
                "rejected": format!("bad {}", i % 30),
            })
        })
        .collect();
    let expected = chosen_rejected(&rows);
    assert_eq!(expected.len(), 120);
    // The same rows reversed, and every seventh row once more (18 repeats).
    let mut shuffled: Vec<Value> = rows.iter().rev().cloned().collect();
    shuffled.extend(rows.iter().step_by(7).cloned());
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    write_jsonl(&a, &rows);
    write_jsonl(&b, &shuffled);
    let args = |file: &Path| common::chosen_rejected_args(file, &[]);
    let (sa, sb) = (dir.path().join("store-a"), dir.path().join("store-b"));
    let a_args = args(&a);
    palpipe(&sa, &a_args.iter().map(String::as_str).collect::<Vec<_>>()).ok();
    let spill_dir = dir.path().join("tmp");
    std::fs::create_dir_all(&spill_dir).unwrap();
    let out = common::bin()
        .args(args(&b))
        .arg("--store")
        .arg(&sb)
        .arg("--quiet")
        .env("PALPIPE_INGEST_RUN_BYTES", "600")
        .env("TMPDIR", &spill_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("138 rows → 120 pairs"), "{stdout}");
    assert!(stdout.contains("18 repeat a pair"), "{stdout}");
    assert_eq!(
        std::fs::read_dir(&spill_dir).unwrap().count(),
        0,
        "the run files are removed"
    );
    assert_eq!(comparisons(&sa, "mine"), expected);
    assert_eq!(comparisons(&sb, "mine"), expected);
    for (table, id) in [
        ("pairs", "pair_id"),
        ("items", "item_id"),
        ("prompts", "prompt_id"),
        ("users", "user_id"),
    ] {
        let ids = |store: &Path| -> Vec<String> {
            query(store, &format!("SELECT {id} FROM {table}"))
                .iter()
                .map(|r| r[id].as_str().unwrap().to_string())
                .collect()
        };
        let (ia, ib) = (ids(&sa), ids(&sb));
        assert_eq!(ia, ib, "{table}: storage order differs");
        let mut sorted = ia.clone();
        sorted.sort();
        assert_eq!(ia, sorted, "{table}: not in id order");
    }
}

/// `palpipe ingest FILE` of {annotator, prompt, chosen, rejected} rows as dataset `mine`
/// into `store`, quiet.
fn ingest_mine(file: &Path, store: &Path) -> std::process::Command {
    let mut cmd = common::bin();
    cmd.arg("ingest")
        .arg(file)
        .args(["--dataset", "mine", "--column", "user=annotator"])
        .args(["--column", "prompt=prompt", "--column", "chosen=chosen"])
        .args(["--column", "rejected=rejected", "--store"])
        .arg(store)
        .arg("--quiet");
    cmd
}

/// Runs [`ingest_mine`] with `env` set; returns the exit code, stdout and stderr.
fn ingest_with_env(file: &Path, store: &Path, env: &[(&str, &str)]) -> common::Run {
    let mut cmd = ingest_mine(file, store);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    common::Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// JSON lines are parsed on several threads in blocks of lines: whatever the number of
/// threads and the block size, the store holds the same rows in the same order, the
/// summary (drops and their first rows) is the same, and a bad line or a column whose type
/// changes is reported at the same line.
#[test]
fn threads_and_block_size_leave_the_same_store_report_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 300 rows: every 23rd has an empty chosen text, every 31st the same text twice, every
    // 10th repeats row i - 5 (a repeated pair); a blank line every 50 lines.
    let mut rows: Vec<Value> = Vec::new();
    for i in 0..300usize {
        let src = if i % 10 == 9 { i - 5 } else { i };
        let chosen = if i % 23 == 22 {
            String::new()
        } else {
            format!("good {src}")
        };
        let rejected = if i % 31 == 30 {
            chosen.clone()
        } else {
            format!("bad {}", src % 40)
        };
        rows.push(json!({
            "annotator": format!("w{}", src % 7),
            "prompt": format!("prompt {}", src % 12),
            "chosen": chosen,
            "rejected": rejected,
        }));
    }
    let mut text = String::new();
    for (i, r) in rows.iter().enumerate() {
        if i % 50 == 49 {
            text.push('\n');
        }
        text += &format!("{r}\n");
    }
    let file = d.join("rows.jsonl");
    std::fs::write(&file, &text).unwrap();
    // The expected comparisons, from the rows: dropped rows left out, repeats once.
    let kept: Vec<Value> = rows
        .iter()
        .filter(|r| {
            let (c, j) = (
                r["chosen"].as_str().unwrap(),
                r["rejected"].as_str().unwrap(),
            );
            !c.is_empty() && c != j
        })
        .cloned()
        .collect();
    let expected = chosen_rejected(&kept);
    let empty = rows.iter().filter(|r| r["chosen"] == "").count();
    let same = rows
        .iter()
        .filter(|r| r["chosen"] != "" && r["chosen"] == r["rejected"])
        .count();
    assert!(empty > 10 && same > 5 && expected.len() < kept.len());

    let runs = [
        ("one", vec![("PALPIPE_INGEST_THREADS", "1")]),
        (
            "three",
            vec![
                ("PALPIPE_INGEST_THREADS", "3"),
                ("PALPIPE_INGEST_BLOCK_BYTES", "300"),
            ],
        ),
        (
            "two",
            vec![
                ("PALPIPE_INGEST_THREADS", "2"),
                ("PALPIPE_INGEST_BLOCK_BYTES", "4000"),
            ],
        ),
    ];
    let mut first: Option<([Vec<Value>; 4], String)> = None;
    for (name, env) in &runs {
        let store = d.join(format!("store-{name}"));
        let r = ingest_with_env(&file, &store, env).ok();
        let summary = r
            .stdout
            .lines()
            .find(|l| l.contains("rows →"))
            .unwrap_or_default()
            .split("  done ")
            .nth(1)
            .unwrap_or_default()
            .split_once("s  ")
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default();
        assert!(
            summary.contains(&format!("300 rows → {} pairs", expected.len())),
            "{name}: {}",
            r.stdout
        );
        assert!(
            summary.contains(&format!("{empty} empty text")),
            "{name}: {summary}"
        );
        assert!(
            summary.contains(&format!("{same} same item twice")),
            "{name}: {summary}"
        );
        assert_eq!(comparisons(&store, "mine"), expected, "{name}");
        let snap = snapshot(&store);
        let ids = |table: &str, id: &str| -> Vec<String> {
            query(&store, &format!("SELECT {id} FROM {table}"))
                .iter()
                .map(|r| r[id].as_str().unwrap().to_string())
                .collect()
        };
        let order = format!("{:?}", [ids("pairs", "pair_id"), ids("items", "item_id")]);
        match &first {
            None => first = Some((snap, summary.clone() + &order)),
            Some((s, sum)) => {
                assert_eq!(&snap, s, "{name}: stored rows differ");
                assert_eq!(&(summary + &order), sum, "{name}: summary or order differs");
            }
        }
    }

    // A line that does not parse (line 254, blank before), and a prompt that is a number on
    // line 203 (blank before): each named the same way whatever the threads.
    let mut bad = text.lines().map(String::from).collect::<Vec<_>>();
    let broken = bad.clone();
    bad[253] = "{\"annotator\": \"w1\", \"prompt\": ".into();
    let mut typed = broken;
    typed[202] =
        json!({"annotator": "w1", "prompt": 7, "chosen": "x", "rejected": "y"}).to_string();
    for (name, lines, want) in [
        ("bad-json", bad, "bad-json.jsonl:254: not a valid JSON line"),
        ("mixed", typed, "line 203"),
    ] {
        let f = d.join(format!("{name}.jsonl"));
        std::fs::write(&f, lines.join("\n") + "\n").unwrap();
        let mut messages = Vec::new();
        for (threads, block) in [("1", "1000000"), ("3", "200")] {
            let store = d.join(format!("store-{name}-{threads}"));
            let env = [
                ("PALPIPE_INGEST_THREADS", threads),
                ("PALPIPE_INGEST_BLOCK_BYTES", block),
            ];
            let r = ingest_with_env(&f, &store, &env).code(1);
            assert!(r.stderr.contains(want), "{name} {threads}: {}", r.stderr);
            assert!(
                !store.join("pairs.lance").exists(),
                "{name}: nothing written"
            );
            messages.push(r.stderr);
        }
        assert_eq!(messages[0], messages[1], "{name}");
    }

    // A bad line (line 2), then a gzip stream cut in half, inside the blocks read ahead of
    // the first one applied: the bad line is reported whatever the threads, not the read
    // error behind it.
    let mut early = text.lines().take(60).map(String::from).collect::<Vec<_>>();
    early[1] = "{\"annotator\": ".into();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, (early.join("\n") + "\n").as_bytes()).unwrap();
    let mut gz = enc.finish().unwrap();
    gz.truncate(gz.len() / 2);
    let f = d.join("cut.jsonl.gz");
    std::fs::write(&f, &gz).unwrap();
    for threads in ["1", "2", "3"] {
        let store = d.join(format!("store-cut-{threads}"));
        let env = [
            ("PALPIPE_INGEST_THREADS", threads),
            ("PALPIPE_INGEST_BLOCK_BYTES", "500"),
        ];
        let r = ingest_with_env(&f, &store, &env).code(1);
        assert!(
            r.stderr.contains("cut.jsonl.gz:2: not a valid JSON line"),
            "{threads} threads: {}",
            r.stderr
        );
    }
}

/// `n` rows of distinct pairs from 50 annotators (`annotator`, `prompt`, `chosen`,
/// `rejected`), for the tests that need many runs.
fn numbered_pairs(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "annotator": format!("w{}", i % 50),
                "prompt": format!("prompt {i}"),
                "chosen": format!("a good answer number {i}"),
                "rejected": format!("a bad answer number {i}"),
            })
        })
        .collect()
}

/// A SIGTERM'd ingest removes its spill folder (a new one, private to its owner) on the way
/// out.
#[test]
fn a_killed_ingest_leaves_no_spill_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("many.jsonl");
    write_jsonl(&file, &numbered_pairs(40_000));
    let tmp = d.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let spill_dirs = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&tmp)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("palpipe-spill-"))
            })
            .collect()
    };
    let mut child = ingest_mine(&file, &d.join("store"))
        // Tiny runs: thousands of run files, so the ingest is still running when killed.
        .env("PALPIPE_INGEST_RUN_BYTES", "2000")
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let found = loop {
        let found = spill_dirs();
        if !found.is_empty() || start.elapsed().as_secs() > 60 {
            break found;
        }
        if child.try_wait().unwrap().is_some() {
            break found;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(found.len(), 1, "one spill folder while the ingest runs");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&found[0]).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "the spill folder is private");
    // Kill it once it has written a run file (waiting for one rather than a fixed time: a
    // fast machine could finish the ingest first), while it is writing more.
    while std::fs::read_dir(&found[0]).map_or(0, |r| r.count()) == 0
        && child.try_wait().unwrap().is_none()
        && start.elapsed().as_secs() < 60
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "stopped by the signal, not finished: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(spill_dirs().is_empty(), "the spill folder is removed");
    assert!(!found[0].exists());
}

/// An ingest that fails on a bad line after many runs went to files (some still being
/// written on their own threads) exits with the error, names the line, writes nothing to the
/// store and leaves no spill folder.
#[test]
fn a_failed_ingest_leaves_no_spill_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("bad-at-the-end.jsonl");
    write_jsonl(&file, &numbered_pairs(5_000));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    f.write_all(b"{\"annotator\": \"w1\", \"prompt\": \n")
        .unwrap();
    let tmp = d.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let store = d.join("store");
    let out = ingest_mine(&file, &store)
        .env("PALPIPE_INGEST_RUN_BYTES", "2000")
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the bad line fails the ingest");
    assert!(
        stderr.contains("bad-at-the-end.jsonl:5001: not a valid JSON line"),
        "the message names the file and line 5001: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "nothing left in TMPDIR: {left:?}");
    assert!(
        !store.join("pairs.lance").exists(),
        "no pairs table written"
    );
}

/// Rows read one at a time (CSV) are gathered into blocks of encodings as JSON lines blocks
/// are: the same rows as CSV and as JSON lines, with blocks and runs of a few hundred bytes or
/// the defaults, leave the same store, and the pairs the rows say (counted here from the
/// rows, with repeats and a row of the same item twice).
#[test]
fn rows_read_one_at_a_time_leave_what_json_lines_blocks_leave() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rows = numbered_pairs(400);
    // Repeats (the same pair again) and a row that makes no pair.
    rows.extend(rows.iter().step_by(9).cloned().collect::<Vec<_>>());
    assert_eq!(rows.len(), 445);
    let expected = chosen_rejected(&rows);
    assert_eq!(expected.len(), 400);
    rows.push(json!({"annotator": "w1", "prompt": "p", "chosen": "same", "rejected": "same"}));
    let jsonl = d.join("rows.jsonl");
    write_jsonl(&jsonl, &rows);
    let csv_path = d.join("rows.csv");
    let mut w = csv::Writer::from_path(&csv_path).unwrap();
    w.write_record(["annotator", "prompt", "chosen", "rejected"])
        .unwrap();
    for r in &rows {
        let field = |k: &str| r[k].as_str().unwrap().to_string();
        w.write_record([
            field("annotator"),
            field("prompt"),
            field("chosen"),
            field("rejected"),
        ])
        .unwrap();
    }
    w.flush().unwrap();
    let small = [
        ("PALPIPE_INGEST_BLOCK_BYTES", "300"),
        ("PALPIPE_INGEST_RUN_BYTES", "700"),
    ];
    let users: Vec<Value> = (0..50).map(|i| json!(format!("mine/w{i}"))).collect();
    let mut users = users;
    users.sort_by_key(|u| u.as_str().unwrap().to_string());
    let mut first: Option<[Vec<Value>; 4]> = None;
    for (n, (file, env)) in [
        (&jsonl, &[][..]),
        (&csv_path, &[][..]),
        (&csv_path, &small[..]),
        (&jsonl, &small[..]),
    ]
    .into_iter()
    .enumerate()
    {
        let store = d.join(format!("store-{n}"));
        let r = ingest_with_env(file, &store, env).ok();
        for want in [
            "446 rows → 400 pairs",
            "45 repeat a pair",
            "1 same item twice",
        ] {
            assert!(
                r.stdout.contains(want),
                "{file:?} {env:?}: {want}: {}",
                r.stdout
            );
        }
        assert_eq!(comparisons(&store, "mine"), expected, "{file:?} {env:?}");
        let stored: Vec<Value> = table(&store, "SELECT user_id FROM users ORDER BY user_id")
            .iter()
            .map(|r| r["user_id"].clone())
            .collect();
        assert_eq!(stored, users, "{file:?} {env:?}");
        let snap = snapshot(&store);
        match &first {
            None => first = Some(snap),
            Some(s) => assert_eq!(&snap, s, "{file:?} {env:?}: stored rows differ"),
        }
    }
}
