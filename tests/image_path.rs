//! The image path without embeddings: generated Pick-a-Pic shards → `pickapic` ingest →
//! `dedup` (the leakage split) → `pick_a_filter`, all through the real binary and store.
//! Expected counts come from the fixture generator's manifest, not from palpipe's output.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// Generates fixture shards into `dir/fx` and returns the folder and its manifest.
fn fixtures(dir: &Path, extra: &[&str]) -> (PathBuf, Value) {
    let out = dir.join("fx");
    let mut args = vec!["fixtures", "pickapic", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = palpipe_raw(&args).ok();
    assert!(r.stdout.contains("planted:"), "{}", r.stdout);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    (out, manifest)
}

fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not a number: {v}"))
}

const SPLITS: &str = r#"splits:
  v2-leakage: "SELECT * FROM pairs WHERE dataset = 'pickapic' AND split = 'v2-leakage'"
  v2-no-leakage: "SELECT * FROM pairs WHERE dataset = 'pickapic' AND split = 'v2-no-leakage'"
"#;

fn leakage_pipeline(dir: &Path, data: &Path) -> PathBuf {
    let text = format!(
        "name: leak\nstages:\n  - name: ingest\n    kind: pickapic\n    data_dir: {}\n  - name: leakage\n    kind: dedup\n{SPLITS}",
        data.display()
    );
    write_pipeline(dir, "leak.yaml", &text)
}

#[test]
fn leakage_split_finds_exactly_the_planted_leaks_and_reruns_do_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = fixtures(dir.path(), &[]);
    let store = new_store(dir.path(), "s");
    let p = leakage_pipeline(dir.path(), &data);
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    let leak = n(&m["v2_leakage"]);
    let clean = n(&m["v2_no_leakage"]);
    assert!(
        r.stdout
            .contains(&format!("v2-leakage {leak}, v2-no-leakage {clean}")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("v1-train 10"), "{}", r.stdout);

    // SQL agrees, split by split, with the manifest.
    let rows = query(
        &store,
        "SELECT split, count(*) AS n FROM pairs GROUP BY split ORDER BY split",
    );
    let got: std::collections::BTreeMap<String, i64> = rows
        .iter()
        .map(|r| (r["split"].as_str().unwrap().to_string(), n(&r["n"])))
        .collect();
    let splits = &m["splits"];
    let want: std::collections::BTreeMap<String, i64> = [
        ("v1-train", n(&splits["v1-train"]["labelled"])),
        ("v1-validation", n(&splits["v1-validation"]["labelled"])),
        ("v1-test", n(&splits["v1-test"]["labelled"])),
        ("v2-leakage", leak),
        ("v2-no-leakage", clean),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, want);

    // Each image is stored once: duplicates and leaks add no items.
    let labelled: i64 = ["v1-train", "v1-validation", "v1-test", "v2-test"]
        .iter()
        .map(|s| n(&splits[*s]["labelled"]))
        .sum();
    let distinct_rows = labelled - n(&splits["v1-train"]["exact_duplicates"]) - leak;
    assert_eq!(
        scalar(&store, "SELECT count(*) FROM items WHERE kind = 'image'"),
        2 * distinct_rows
    );
    // Ties and unlabeled rows are dropped and counted per split.
    for s in ["v1-train", "v2-test"] {
        let c = &splits[s];
        let needle = format!(
            "{s}: {} rows → {} pairs ({} ties, {} unlabeled dropped",
            n(&c["rows"]),
            n(&c["labelled"]),
            n(&c["ties"]),
            n(&c["unlabeled"])
        );
        assert!(r.stdout.contains(&needle), "{needle}\n{}", r.stdout);
    }

    // Ranking ids are kept, and leaked pairs have new ones (their content repeats, not ids).
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM pairs a JOIN pairs b ON a.source_ref = b.source_ref \
             WHERE a.split = 'v2-leakage' AND b.split LIKE 'v1-%'"
        ),
        0
    );

    let before = versions(&store);
    let again = palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    let after = versions(&store);
    for (t, v) in &before {
        if t != "runs" {
            assert_eq!(after.get(t), Some(v), "table {t} changed on a rerun");
        }
    }
}

#[test]
fn undecodable_images_are_skipped_and_named_by_ranking_id() {
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = fixtures(dir.path(), &["--corrupt", "2", "--rows", "1400"]);
    let store = new_store(dir.path(), "s");
    let p = leakage_pipeline(dir.path(), &data);
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    let ids = m["splits"]["v1-train"]["corrupt_ranking_ids"]
        .as_array()
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert!(
        r.stdout.contains("2 skipped: an image does not decode"),
        "{}",
        r.stdout
    );
    for id in ids {
        assert!(
            r.stdout.contains(&format!("ranking_id {id}")),
            "{id} not named:\n{}",
            r.stdout
        );
    }
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM pairs WHERE split = 'v1-train'"
        ),
        n(&m["splits"]["v1-train"]["labelled"])
    );
}

#[test]
fn a_shard_without_a_required_column_is_refused_by_name() {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = fixtures(dir.path(), &[]);
    // Rewrite the validation shard without its caption column.
    let shard = data.join("v1/validation-00000-of-00001.parquet");
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&shard).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let keep: Vec<usize> = (0..batches[0].num_columns())
        .filter(|&i| batches[0].schema().field(i).name() != "caption")
        .collect();
    let projected: Vec<_> = batches.iter().map(|b| b.project(&keep).unwrap()).collect();
    let file = std::fs::File::create(&shard).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, projected[0].schema(), None).unwrap();
    for b in &projected {
        w.write(b).unwrap();
    }
    w.close().unwrap();

    let store = new_store(dir.path(), "s");
    let p = leakage_pipeline(dir.path(), &data);
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(1);
    assert!(
        r.stderr.contains("missing column 'caption'"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("validation-00000-of-00001.parquet"),
        "{}",
        r.stderr
    );
    // Nothing half-written: the shards read before the bad one were rolled back (only the
    // run record and the pipeline's split definitions are there).
    let v = versions(&store);
    assert!(
        v.iter()
            .all(|(t, (_, rows))| t == "runs" || t == "splits" || *rows == 0),
        "tables written: {v:?}"
    );
    assert!(
        !v.contains_key("pairs") && !v.contains_key("items"),
        "{v:?}"
    );
}

fn paf_pipeline(dir: &Path, data: &Path, filter_extra: &str) -> PathBuf {
    let text = format!(
        "name: paf\nstages:\n  - name: ingest\n    kind: pickapic\n    data_dir: {}\n  - name: filter\n    kind: pick_a_filter\n    seen_users: 12\n{filter_extra}",
        data.display()
    );
    write_pipeline(dir, "paf.yaml", &text)
}

#[test]
fn pick_a_filter_deals_two_groups_and_filters_one_image_per_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = fixtures(dir.path(), &[]);
    let store = new_store(dir.path(), "s");
    let p = paf_pipeline(dir.path(), &data, "    beta: 1.0\n");
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();

    let heavy = m["heavy"].as_array().unwrap();
    // Every heavy user (more than 50 labels in train + test) and no one else; the user with
    // exactly 50 is left out.
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM users WHERE dataset = 'pick-a-filter'"
        ),
        heavy.len() as i64
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM users WHERE dataset = 'pick-a-filter' AND user_id = 'pick-a-filter/999'"
        ),
        0
    );
    let groups = query(
        &store,
        "SELECT group_name, count(*) AS n FROM users WHERE dataset = 'pick-a-filter' GROUP BY group_name ORDER BY group_name",
    );
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert!(groups.iter().all(|g| n(&g["n"]) == heavy.len() as i64 / 2));
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM users WHERE dataset = 'pick-a-filter' AND role = 'seen'"
        ),
        12
    );
    // The seen users are the 12 with the most labels.
    let least_seen = heavy.len() - 12;
    for (i, h) in heavy.iter().enumerate() {
        let role = query(
            &store,
            &format!(
                "SELECT role FROM users WHERE user_id = 'pick-a-filter/{}'",
                h["user_id"]
            ),
        );
        let want = if i >= least_seen { "seen" } else { "unseen" };
        assert_eq!(role[0]["role"], want, "user {}", h["user_id"]);
    }
    // All their labels, each pair with exactly one filtered image (beta = 1).
    let labels: i64 = heavy.iter().map(|h| n(&h["train"]) + n(&h["test"])).sum();
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM pairs WHERE dataset = 'pick-a-filter'"
        ),
        labels
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM pairs p \
             JOIN items l ON p.left_id = l.item_id JOIN items r ON p.right_id = r.item_id \
             WHERE p.dataset = 'pick-a-filter' \
             AND ((l.parent_id IS NULL) <> (r.parent_id IS NULL))"
        ),
        labels
    );
    // Filtered images are new items whose parent is a stored image.
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM items c LEFT JOIN items p ON c.parent_id = p.item_id \
             WHERE c.parent_id IS NOT NULL AND p.item_id IS NULL"
        ),
        0
    );
    // A rerun does nothing.
    let again = palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);

    // Deterministic for a seed: the same seed in a fresh store gives the same pairs and
    // filtered images, another seed other ones.
    let ids = |s: &Path| -> Vec<Value> {
        query(
            s,
            "SELECT p.pair_id, p.split, i.item_id FROM pairs p JOIN items i \
             ON i.item_id = p.left_id OR i.item_id = p.right_id \
             WHERE p.dataset = 'pick-a-filter' AND i.parent_id IS NOT NULL ORDER BY p.pair_id",
        )
    };
    let same = dir.path().join("same");
    palpipe(&same, &["run", p.to_str().unwrap()]).ok();
    assert_eq!(ids(&store), ids(&same));
    let other = dir.path().join("other");
    palpipe(
        &other,
        &["run", p.to_str().unwrap(), "--set", "filter.seed=7"],
    )
    .ok();
    assert_ne!(ids(&store), ids(&other));
}

#[test]
fn pick_a_filter_out_of_range_parameters_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("no-data-needed");
    std::fs::create_dir_all(data.join("v1")).unwrap();
    std::fs::create_dir_all(data.join("v2")).unwrap();
    for f in [
        "v1/train-0.parquet",
        "v1/validation-0.parquet",
        "v1/test-0.parquet",
        "v2/test-0.parquet",
    ] {
        std::fs::write(data.join(f), b"").unwrap();
    }
    let store = new_store(dir.path(), "s");
    for (extra, key, needle) in [
        ("    beta: 1.5\n", "stages.1.beta", "beta is 1.5"),
        (
            "    filters:\n      - {name: cool, tint: [0, 0, 255], strength: 1.5}\n      - {name: warm, tint: [255, 0, 0], strength: 0.4}\n",
            "stages.1.filters",
            "strength is 1.5",
        ),
    ] {
        let p = paf_pipeline(dir.path(), &data, extra);
        let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(2);
        assert!(r.stderr.contains(key), "{key}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{needle}: {}", r.stderr);
        assert!(r.stderr.contains("paf.yaml:"), "{}", r.stderr);
    }
}

/// The accuracy (in %) a stage's summary line reports, from `palpipe run --json`.
fn stage_accuracy(run_json: &Value, stage: &str) -> f64 {
    let s = run_json["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stage)
        .unwrap_or_else(|| panic!("no stage {stage}: {run_json}"));
    let summary = s["summary"].as_str().unwrap();
    let after = summary
        .split("accuracy ")
        .nth(1)
        .unwrap_or_else(|| panic!("{stage}: {summary}"));
    after.split('%').next().unwrap().parse().unwrap()
}

fn run_json(store: &Path, args: &[&str]) -> Value {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.push("--json");
    let r = palpipe(store, &all).ok();
    serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

#[test]
fn the_shipped_image_pipelines_run_on_fixtures_with_the_tiny_clip() {
    let dir = tempfile::tempdir().unwrap();
    let (data, m) = fixtures(dir.path(), &[]);
    let set_data = format!("ingest.data_dir={}", data.display());
    // The fixtures stage finds its shards present and writes nothing (into the repository).
    let set_fx = format!("fixtures.out={}", data.display());

    // Leakage split: exact planted counts, PAL-B K=1 and the CLIP score on both parts.
    let store = dir.path().join("leak");
    let run = run_json(
        &store,
        &[
            "pipelines/leakage-split.yaml",
            "--set",
            &set_data,
            "--set",
            &set_fx,
        ],
    );
    let stage = |name: &str| {
        run["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no stage '{name}'"))
            .clone()
    };
    assert!(
        stage("fixtures")["summary"]
            .as_str()
            .unwrap()
            .contains("nothing written"),
        "{}",
        stage("fixtures")
    );
    let leakage_stage = stage("leakage");
    let leakage = leakage_stage["summary"].as_str().unwrap();
    assert!(
        leakage.contains(&format!(
            "v2-leakage {}, v2-no-leakage {}",
            m["v2_leakage"], m["v2_no_leakage"]
        )),
        "{leakage}"
    );
    for stage in [
        "eval-no-leakage",
        "eval-leakage",
        "clip-no-leakage",
        "clip-leakage",
    ] {
        let acc = stage_accuracy(&run, stage);
        assert!((0.0..=100.0).contains(&acc), "{stage}: {acc}");
    }
    let e = palpipe(
        &store,
        &["eval", "--model", "pick-b-k1", "--split", "v2-no-leakage"],
    )
    .ok();
    assert!(e.stdout.contains("95% CI"), "{}", e.stdout);
    assert!(
        e.stdout.contains(&format!("n={}", m["v2_no_leakage"])),
        "{}",
        e.stdout
    );
    let again = palpipe(
        &store,
        &[
            "run",
            "pipelines/leakage-split.yaml",
            "--set",
            &set_data,
            "--set",
            &set_fx,
        ],
    )
    .ok();
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);

    // Pick-a-Filter with beta = 1: a K = 2 mixture separates the two colour groups, one
    // reward cannot; new users are placed from 20 of their comparisons.
    let store = dir.path().join("paf");
    let run = run_json(
        &store,
        &[
            "pipelines/pick-a-filter.yaml",
            "--set",
            &set_data,
            "--set",
            &set_fx,
        ],
    );
    let (k1, k2) = (
        stage_accuracy(&run, "eval-k1"),
        stage_accuracy(&run, "eval-k2"),
    );
    assert!(k2 > k1 + 20.0 && k2 > 80.0, "K=1 {k1}%, K=2 {k2}%");
    let adapt = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "adapt-k2")
        .unwrap()["summary"]
        .as_str()
        .unwrap()
        .to_string();
    let shots20: f64 = adapt
        .split("20 shots ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{adapt}"));
    assert!(shots20 > 80.0, "{adapt}");
    // The contact sheet shows originals beside their filtered versions.
    let sheet = dir.path().join("sheet.html");
    palpipe(
        &store,
        &[
            "contact-sheet",
            "--out",
            sheet.to_str().unwrap(),
            "--n",
            "3",
        ],
    )
    .ok();
    let html = std::fs::read_to_string(&sheet).unwrap();
    assert!(
        html.matches("data:image/").count() >= 6,
        "{}",
        &html[..300.min(html.len())]
    );
    assert!(html.contains("pick-a-filter/"), "filter sources not shown");
}

#[test]
fn a_clip_embed_stage_without_its_folder_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(
        dir.path(),
        "clip.yaml",
        "name: c\nstages:\n  - name: embed\n    kind: embed\n    encoder: clip\n",
    );
    let store = new_store(dir.path(), "s");
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(2);
    assert!(r.stderr.contains("clip.yaml:5:"), "{}", r.stderr);
    assert!(r.stderr.contains("'stages.0.encoder'"), "{}", r.stderr);
    assert!(r.stderr.contains("needs a model folder"), "{}", r.stderr);
    assert!(!r.stderr.contains("does not exist"), "{}", r.stderr);
}

/// Pair ids in the order a plain scan of `pairs` returns them (storage order).
fn stored_pair_order(store: &Path) -> Vec<String> {
    query(store, "SELECT pair_id FROM pairs")
        .iter()
        .map(|r| r["pair_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn same_inputs_and_seed_give_the_same_checkpoint_whatever_the_reader_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = fixtures(
        dir.path(),
        &[
            "--rows",
            "300",
            "--shard-rows",
            "40",
            "--leaks",
            "12",
            "--heavy-users",
            "0",
        ],
    );
    // A second copy of the shards with the first and last v1-train files swapped by name:
    // the same rows, read in another order.
    let swapped = dir.path().join("fx-swapped");
    for sub in ["v1", "v2"] {
        std::fs::create_dir_all(swapped.join(sub)).unwrap();
        for e in std::fs::read_dir(data.join(sub)).unwrap() {
            let e = e.unwrap().path();
            std::fs::copy(&e, swapped.join(sub).join(e.file_name().unwrap())).unwrap();
        }
    }
    let mut train: Vec<PathBuf> = std::fs::read_dir(swapped.join("v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("train-")
        })
        .collect();
    train.sort();
    assert!(train.len() >= 3, "{train:?}");
    let (first, last) = (&train[0], &train[train.len() - 1]);
    let tmp = swapped.join("v1/tmp.parquet");
    std::fs::rename(first, &tmp).unwrap();
    std::fs::rename(last, first).unwrap();
    std::fs::rename(&tmp, last).unwrap();

    let runs = [(&data, "1", "one"), (&swapped, "2", "two")];
    for (shards, threads, name) in runs {
        palpipe(
            &dir.path().join(name),
            &[
                "run",
                "pipelines/leakage-split.yaml",
                "--set",
                &format!("ingest.data_dir={}", shards.display()),
                "--set",
                &format!("ingest.threads={threads}"),
                // The pipeline's own fixtures stage writes its default set here, never into
                // the repository.
                "--set",
                &format!("fixtures.out={}", dir.path().join("stage-fx").display()),
            ],
        )
        .ok();
    }
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    // The premise: the same rows, stored in another order.
    let (a, b) = (stored_pair_order(&one), stored_pair_order(&two));
    assert_ne!(a, b, "the two stores hold their pairs in the same order");
    let (mut sa, mut sb) = (a.clone(), b.clone());
    sa.sort();
    sb.sort();
    assert_eq!(sa, sb);

    let weights =
        |s: &Path| std::fs::read(s.join("checkpoints/pick-b-k1/weights.safetensors")).unwrap();
    assert!(
        weights(&one) == weights(&two),
        "pick-b-k1's weights differ between the stores"
    );
    for (model, split) in [
        ("pick-b-k1", "v2-no-leakage"),
        ("pick-b-k1", "v2-leakage"),
        ("clip-score", "v2-no-leakage"),
    ] {
        let eval = |s: &Path| {
            palpipe(s, &["eval", "--model", model, "--split", split, "--json"])
                .ok()
                .stdout
        };
        let (x, y) = (eval(&one), eval(&two));
        assert!(x.contains("users_detail"), "{x}");
        assert_eq!(x, y, "{model} on {split}");
    }
}
