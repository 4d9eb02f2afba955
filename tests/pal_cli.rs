//! Training, evaluation and adaptation through the real binary on a synthetic store.

mod common;

use std::path::Path;

use serde_json::Value;

use common::*;

fn pipeline() -> String {
    synth_pal_pipeline(
        "t",
        6,
        &[
            "{name: pop, kind: train, model: popularity, train: tr}",
            "{name: e1, kind: eval, model: k1, split: te}",
            "{name: e3, kind: eval, model: k3, split: te}",
            "{name: ep, kind: eval, model: pop, split: te}",
            "{name: ad, kind: adapt, model: k3, users: un, shots: [0, 10]}",
        ],
        &[
            "un: \"SELECT * FROM pairs WHERE split = 'unseen'\"",
            "none: \"SELECT * FROM pairs WHERE split = 'nothing'\"",
        ],
    )
}

/// A trained store: a folder, or a bucket prefix with `PALPIPE_TEST_STORE=s3`.
fn trained_store(dir: &Path) -> std::path::PathBuf {
    trained_at(dir, new_store(dir, "s"))
}

/// A trained store in a folder always (for tests that read its files or open it directly).
fn trained_local_store(dir: &Path) -> std::path::PathBuf {
    trained_at(dir, dir.join("s"))
}

fn trained_at(dir: &Path, store: std::path::PathBuf) -> std::path::PathBuf {
    let p = write_pipeline(dir, "p.yaml", &pipeline());
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    store
}

/// `palpipe train` arguments for a PAL-A head named `name` with `k` prototypes, d = 2, on
/// `tr` with `va` for validation, for `epochs` epochs (the pipeline's heads are `k1` and `k3`
/// with 20).
fn pal_a_training<'a>(name: &'a str, k: &'a str, epochs: &'a str) -> [&'a str; 17] {
    [
        "train",
        "--name",
        name,
        "--model",
        "pal-a",
        "--k",
        k,
        "--train",
        "tr",
        "--val",
        "va",
        "--encoder",
        "synthetic-identity",
        "--d",
        "2",
        "--epochs",
        epochs,
    ]
}

#[test]
fn pipeline_trains_evaluates_and_adapts() {
    let dir = tempfile::tempdir().unwrap();
    let store = trained_store(dir.path());
    let k1 = eval_json(&store, "k1", "te");
    let k3 = eval_json(&store, "k3", "te");
    for key in ["accuracy", "ci95", "n", "ties", "per_user"] {
        assert!(k3.get(key).is_some(), "eval --json lacks {key}: {k3}");
    }
    assert_eq!(k3["n"], 30 * 30);
    let (a1, a3) = (
        k1["accuracy"].as_f64().unwrap(),
        k3["accuracy"].as_f64().unwrap(),
    );
    assert!(a3 > a1 + 0.05, "K=3 {a3} should beat K=1 {a1}");
    let ci = k3["ci95"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() <= a3 && a3 <= ci[1].as_f64().unwrap());
    // the same checkpoint evaluates identically
    assert_eq!(eval_json(&store, "k3", "te")["accuracy"], k3["accuracy"]);
    let pop = eval_json(&store, "pop", "te");
    assert!(pop["accuracy"].as_f64().unwrap() > 0.3);
    // models registered, with metrics
    assert_eq!(scalar(&store, "SELECT count(*) FROM models"), 3);
    let r = palpipe(
        &store,
        &[
            "adapt",
            "--model",
            "k3",
            "--users",
            "un",
            "--shots",
            "0,5,20",
            "--seen-split",
            "te",
            "--tune-split",
            "tr",
            "--group-bound",
            "--refit-seen",
            "--model-world",
            "--json",
        ],
    )
    .ok();
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[2]["shots"], 20);
    assert_eq!(results[2]["users"], 6);
    // 6 new users with 60 comparisons each: 30 fixed queries each, the same at every N.
    for row in results {
        assert_eq!(row["n"], 6 * 30, "{row}");
        assert_eq!(row["skipped_users"], 0);
    }
    // 0 shots is the zero-shot mixture itself.
    assert_eq!(results[0]["accuracy"], results[0]["zero_shot_accuracy"]);
    // seen accuracy is the model's accuracy on 'te', as `eval` reports it
    assert_eq!(v["seen_accuracy"], k3["accuracy"]);
    let oracle = v["oracle_accuracy"].as_f64().unwrap();
    assert!(oracle > 0.0 && oracle <= 1.0);
    // The held-out oracle and the estimator on every non-query comparison: bounds on the same
    // 180 queries, the same in every row.
    for key in ["heldout_oracle", "heldout_estimator"] {
        let acc = v[format!("{key}_accuracy")].as_f64().unwrap();
        assert!(acc > 0.0 && acc <= 1.0, "{key} {acc}");
        assert_eq!(v[key]["n"], 6 * 30, "{key}");
        for row in results {
            assert_eq!(row[format!("{key}_accuracy")], v[format!("{key}_accuracy")]);
        }
    }
    // The known-group bound: the synthetic users' groups are their largest prototype; every
    // seen user has one, so at 0 shots the prior over groups is the seen users' mean mixture,
    // i.e. zero-shot.
    let g = &v["group_bound"];
    let seen_users = scalar(
        &store,
        "SELECT count(*) FROM users WHERE role = 'seen' AND group_name IS NOT NULL",
    );
    let per_group: i64 = g["seen_per_group"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .sum();
    assert_eq!(per_group, seen_users, "{g}");
    assert_eq!((g["users"].as_u64(), g["n"].as_u64()), (Some(6), Some(180)));
    let points = g["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    assert_eq!(
        points[0]["posterior_accuracy"],
        results[0]["zero_shot_accuracy"]
    );
    for p in points {
        let h = p["hit_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&h), "{p}");
    }
    assert!(g["true_group_accuracy"].as_f64().unwrap() > 0.0);
    // Seen users re-placed from N of their 'tr' pairs, scored on all of their 'te' pairs:
    // each of the 30 seen users has enough 'tr' pairs for 20 shots, so every 'te' pair is a
    // query and their trained mixtures score what `eval` does.
    let fewest_tr = scalar(
        &store,
        "SELECT min(c) FROM (SELECT count(*) AS c FROM pairs WHERE split = 'train' GROUP BY user_id)",
    );
    assert!(fewest_tr >= 20, "{fewest_tr}");
    let rs = &v["refit_seen"];
    assert_eq!(
        (rs["users"].as_u64(), rs["excluded_users"].as_u64()),
        (Some(30), Some(0)),
        "{rs}"
    );
    assert_eq!(rs["n"], 30 * 30);
    assert_eq!(rs["trained_accuracy"], k3["accuracy"]);
    let refit = rs["points"].as_array().unwrap();
    assert_eq!(
        refit
            .iter()
            .map(|p| p["shots"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 5, 20]
    );
    for p in refit {
        assert_eq!(p["report"]["n"], 30 * 30, "{p}");
    }
    // At 20 shots the seen users are placed better than by the zero-shot mixture.
    assert!(
        refit[2]["accuracy"].as_f64().unwrap() > refit[0]["accuracy"].as_f64().unwrap(),
        "{rs}"
    );
    // The model world: the same 6 users and 180 queries on labels drawn from the model at
    // the 30 seen users' mixtures; the curve's estimator on them, and 0 shots is its
    // zero-shot row there too.
    let mw = &v["model_world"];
    assert_eq!(
        (mw["atoms"].as_u64(), mw["users"].as_u64(), mw["n"].as_u64()),
        (Some(30), Some(6), Some(180)),
        "{mw}"
    );
    assert_eq!(mw["estimator"], results[0]["estimator"]);
    // Each new user's truth is a seen user of the model.
    let truths = mw["truths"].as_array().unwrap();
    assert_eq!(truths.len(), 6);
    for t in truths {
        let seen_user = t["true_mixture_of"].as_str().unwrap();
        let q =
            format!("SELECT count(*) FROM users WHERE role = 'seen' AND user_id = '{seen_user}'");
        assert_eq!(scalar(&store, &q), 1, "{t}");
    }
    let world = mw["points"].as_array().unwrap();
    assert_eq!(
        world
            .iter()
            .map(|p| p["shots"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 5, 20]
    );
    assert_eq!(world[0]["estimator_accuracy"], mw["zero_shot_accuracy"]);
    for p in world {
        assert_eq!(p["bayes"]["n"], 180, "{p}");
        let b = p["bayes_accuracy"].as_f64().unwrap();
        assert!(b > 0.0 && b <= 1.0, "{p}");
    }
    // The synthetic groups are sharp: each user's true mixture calls more queries right than
    // the posterior with no shot, and 20 shots move the Bayes prediction towards it.
    let bayes = |i: usize| world[i]["bayes_accuracy"].as_f64().unwrap();
    let truth = mw["truth_accuracy"].as_f64().unwrap();
    assert!(truth > bayes(0) && bayes(2) > bayes(0), "{mw}");
    // The text table: a row per N with Bayes and the estimator, then the oracles and the truth.
    let text = palpipe(
        &store,
        &[
            "adapt",
            "--model",
            "k3",
            "--users",
            "un",
            "--shots",
            "0,5,20",
            "--model-world",
        ],
    )
    .ok()
    .stdout;
    let world_rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("model world"))
        .collect();
    assert!(
        world_rows[3].contains("Bayes") && world_rows[3].contains("95% CI"),
        "{text}"
    );
    let first = |row: &str| row.split_whitespace().next().unwrap_or("").to_string();
    assert_eq!(
        world_rows[4..].iter().map(|r| first(r)).collect::<Vec<_>>(),
        ["zero-shot", "5", "20", "oracle", "held-out", "true"],
        "{text}"
    );
    // Queries drawn by item: fewer queries (only comparisons of two query items), the same
    // number at every N, and 0 shots still the zero-shot mixture.
    let r = palpipe(
        &store,
        &[
            "adapt",
            "--model",
            "k3",
            "--users",
            "un",
            "--shots",
            "0,5",
            "--queries-by",
            "item",
            "--json",
        ],
    )
    .ok();
    let by_item: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let rows = by_item["results"].as_array().unwrap();
    let n = rows[0]["n"].as_u64().unwrap();
    let users = rows[0]["users"].as_u64().unwrap();
    // Every user kept has at least min_queries (10) queries, and only their comparisons of two
    // query items count: fewer than the 30 each by pair.
    assert!(
        users > 0 && n >= 10 * users && n < 30 * users,
        "{n} {users}"
    );
    assert_eq!(rows[1]["n"], rows[0]["n"]);
    assert_eq!(users + rows[0]["skipped_users"].as_u64().unwrap(), 6);
    assert_eq!(rows[0]["accuracy"], rows[0]["zero_shot_accuracy"]);
    // The rows say how their queries were drawn; by pair (the default) they do not.
    assert!(rows.iter().all(|r| r["queries_by"] == "item"), "{by_item}");
    assert!(results.iter().all(|r| r.get("queries_by").is_none()));
    // 100 shots from a user's 60 comparisons, of which by item about a quarter are shots: no
    // user can be adapted, and the error says why in the terms of queries drawn by item.
    let r = palpipe(
        &store,
        &[
            "adapt",
            "--model",
            "k3",
            "--users",
            "un",
            "--shots",
            "0,100",
            "--queries-by",
            "item",
        ],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("query items"), "{}", r.stderr);
    // Without the split of their shots there is nothing to re-place them from: a usage error.
    let r = palpipe(
        &store,
        &[
            "adapt",
            "--model",
            "k3",
            "--users",
            "un",
            "--seen-split",
            "te",
            "--refit-seen",
        ],
    )
    .code(2);
    assert!(r.stderr.contains("--tune-split"), "{}", r.stderr);
    // the simulation on seen users' training pairs ran and picked a listed candidate
    // (mle once; map and posterior at 4 prior scales; empirical at 4 blurs; offset at 4
    // ridges on top of the best empirical row's blur)
    let sim = v["simulation"].as_array().unwrap();
    let count = |e: &str| sim.iter().filter(|s| s["estimator"] == e).count();
    assert_eq!(
        [
            count("mle"),
            count("map"),
            count("posterior"),
            count("empirical"),
            count("offset")
        ],
        [1, 4, 4, 4, 4]
    );
    assert_eq!(sim.len(), 17);
    let best_empirical = sim
        .iter()
        .filter(|s| s["estimator"] == "empirical")
        .fold(None::<&Value>, |b, s| match b {
            Some(b) if b["accuracy"].as_f64() >= s["accuracy"].as_f64() => Some(b),
            _ => Some(s),
        })
        .unwrap();
    for s in sim {
        if s["estimator"] == "offset" {
            assert_eq!(s["prior_scale"], best_empirical["prior_scale"], "{s}");
            assert!(s["ridge"].as_f64().unwrap() > 0.0, "{s}");
        } else {
            assert!(s["ridge"].is_null(), "{s}");
        }
    }
    let picked = (
        &results[0]["estimator"],
        &results[0]["prior_scale"],
        results[0].get("ridge").unwrap_or(&Value::Null),
    );
    assert!(
        sim.iter()
            .any(|s| (&s["estimator"], &s["prior_scale"], &s["ridge"]) == picked),
        "{picked:?}"
    );
    // auto takes offset only when its row is strictly above every mixture-only row.
    let best = |f: &dyn Fn(&Value) -> bool| {
        sim.iter()
            .filter(|s| f(s))
            .map(|s| s["accuracy"].as_f64().unwrap())
            .fold(f64::MIN, f64::max)
    };
    let (mix, off) = (
        best(&|s| s["estimator"] != "offset"),
        best(&|s| s["estimator"] == "offset"),
    );
    assert_eq!(
        results[0]["estimator"] == "offset",
        off > mix,
        "{mix} {off}"
    );
    // Too many shots for every user: nothing to score, a data error (exit 1) with a hint.
    let r = palpipe(
        &store,
        &["adapt", "--model", "k3", "--users", "un", "--shots", "0,31"],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("31 shots") && r.stderr.contains("hint:"),
        "{}",
        r.stderr
    );
}

/// A model or metric that a pipeline's stage owns, replaced by a command outside the
/// pipeline, makes that stage (and the stages that read the model) run again on the next
/// `palpipe run`, and no other: the store ends as the pipeline's own run left it. The
/// pipeline's adapt stage records shots [0, 10] for `un`; `palpipe adapt` by hand records
/// [0, 5]; `palpipe train` by hand replaces `k1` with a 3-epoch model.
#[test]
fn a_stage_whose_model_or_metric_was_replaced_by_hand_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = trained_store(dir.path());
    let p = dir.path().join("p.yaml");
    let p = p.to_str().unwrap();
    let metrics = |model: &str| -> Value {
        let rows = query(
            &store,
            &format!("SELECT metrics_json FROM models WHERE name = '{model}'"),
        );
        serde_json::from_str(rows[0]["metrics_json"].as_str().unwrap()).unwrap()
    };
    let statuses = |r: &Run| -> Vec<(String, String)> {
        let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let name = s["name"].as_str().unwrap().to_string();
                (name, s["status"].as_str().unwrap().to_string())
            })
            .collect()
    };
    let with_status = |r: &Run, wanted: &str| -> Vec<String> {
        statuses(r)
            .into_iter()
            .filter(|(_, status)| status == wanted)
            .map(|(name, _)| name)
            .collect()
    };
    let ran = |r: &Run| with_status(r, "done");
    let (k1, k3) = (metrics("k1"), metrics("k3"));
    let shots = |m: &Value| -> Vec<u64> {
        m["adapt:un"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["shots"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(shots(&k3), [0, 10]);
    assert!(ran(&palpipe(&store, &["run", p, "--json"]).ok()).is_empty());

    let adapt = ["adapt", "--model", "k3", "--users", "un", "--shots", "0,5"];
    palpipe(&store, &adapt).ok();
    assert_eq!(shots(&metrics("k3")), [0, 5]);
    let plan = palpipe(&store, &["run", p, "--dry-run"]).ok();
    assert!(
        plan.stdout
            .contains("metric 'adapt:un' of model 'k3' changed outside this pipeline"),
        "{}",
        plan.stdout
    );
    let again = palpipe(&store, &["run", p, "--json"]).ok();
    assert_eq!(ran(&again), ["ad"], "{}", again.stdout);
    assert_eq!(metrics("k3"), k3, "the pipeline's adapt metric is back");
    assert!(ran(&palpipe(&store, &["run", p, "--json"]).ok()).is_empty());

    // A dry run plans what a stage it plans would change: a model trained again is read by
    // its eval stage (nothing here is replaced by hand, so no stage says so).
    let plan = palpipe(
        &store,
        &[
            "run",
            p,
            "--dry-run",
            "--json",
            "--set",
            "k1.training.epochs=3",
        ],
    )
    .ok();
    assert_eq!(
        with_status(&plan, "planned"),
        ["k1", "e1"],
        "{}",
        plan.stdout
    );
    assert!(
        !plan.stdout.contains("outside this pipeline"),
        "{}",
        plan.stdout
    );

    let train = pal_a_training("k1", "1", "3");
    palpipe(&store, &train).ok();
    let again = palpipe(&store, &["run", p, "--json"]).ok();
    assert_eq!(ran(&again), ["k1", "e1"], "{}", again.stdout);
    let summary = |name: &str| -> String {
        let v: Value = serde_json::from_str(again.stdout.trim()).unwrap();
        let stages = v["stages"].as_array().unwrap();
        let stage = stages.iter().find(|s| s["name"] == name).unwrap();
        stage["summary"].as_str().unwrap().to_string()
    };
    assert!(
        summary("k1").contains("model 'k1' changed outside this pipeline"),
        "{}",
        summary("k1")
    );
    // e1 runs because the model it reads changed, which its own fingerprint says.
    assert!(!summary("e1").contains("outside"), "{}", summary("e1"));
    assert_eq!(
        metrics("k1"),
        k1,
        "k1 trained and evaluated as the pipeline says"
    );
    assert!(ran(&palpipe(&store, &["run", p, "--json"]).ok()).is_empty());
}

/// `--shots` in any order, with a repeat, gives one row per count, ascending. A K = 1 model
/// adapted by a mixture-only estimator warns that nothing moves, and indeed every N scores as
/// zero-shot (the one prototype is every user's mixture); a K = 3 model does not warn.
#[test]
fn adapt_takes_shots_ascending_once_and_warns_on_one_prototype() {
    let dir = tempfile::tempdir().unwrap();
    let store = trained_store(dir.path());
    let adapt = |model: &str| {
        palpipe(
            &store,
            &[
                "adapt",
                "--model",
                model,
                "--users",
                "un",
                "--shots",
                "10,0,10,5",
                "--estimator",
                "empirical",
                "--json",
            ],
        )
        .ok()
    };
    let r = adapt("k1");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let rows = v["results"].as_array().unwrap();
    let shots: Vec<u64> = rows.iter().map(|r| r["shots"].as_u64().unwrap()).collect();
    assert_eq!(shots, [0, 5, 10]);
    for row in rows {
        assert_eq!(row["accuracy"], row["zero_shot_accuracy"], "{row}");
    }
    assert!(
        r.stderr.contains("warning: model 'k1' has K = 1"),
        "{}",
        r.stderr
    );
    let r = adapt("k3");
    assert!(!r.stderr.contains("K = 1"), "{}", r.stderr);
    // the text table has one zero-shot row, whether 0 is asked for or not
    for shots in ["0,5", "5"] {
        let r = palpipe(
            &store,
            &["adapt", "--model", "k3", "--users", "un", "--shots", shots],
        )
        .ok();
        // The table's rows: the lines after its header, up to the first bound row.
        let first_words: Vec<&str> = (r.stdout.lines())
            .skip_while(|l| !l.trim_start().starts_with("shots"))
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .take_while(|w| *w != "oracle")
            .collect();
        let count = |w: &str| first_words.iter().filter(|f| **f == w).count();
        assert_eq!(
            (count("zero-shot"), count("0"), count("5")),
            (1, 0, 1),
            "{shots}: {}",
            r.stdout
        );
    }
    // more shots than any user has: the hint names the flags that lower the need
    let r = palpipe(
        &store,
        &[
            "adapt", "--model", "k3", "--users", "un", "--shots", "100000",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    for flag in ["--shots", "--query-frac", "--min-queries"] {
        assert!(r.stderr.contains(flag), "{flag}: {}", r.stderr);
    }
}

#[test]
fn training_twice_with_one_seed_gives_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let store = trained_local_store(dir.path());
    let args = pal_a_training("again", "3", "20");
    palpipe(&store, &args).ok();
    let a = std::fs::read(store.join("checkpoints/again/weights.safetensors")).unwrap();
    let b = std::fs::read(store.join("checkpoints/k3/weights.safetensors")).unwrap();
    assert_eq!(a, b, "same config and seed must give bit-identical weights");
}

#[test]
fn bad_training_requests_fail_clearly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = trained_store(dir.path());
    let before = versions(&store);
    let base = [
        "train",
        "--name",
        "x",
        "--model",
        "pal-b",
        "--train",
        "tr",
        "--encoder",
        "synthetic-identity",
    ];
    let with = |extra: &[&str]| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend_from_slice(extra);
        palpipe(&store, &v)
    };
    let r = with(&["--k", "0"]).code(2);
    assert!(r.stderr.contains("k must be at least 1"), "{}", r.stderr);
    let r = with(&["--arch", "mlp2-relux-dropout0"]).code(2);
    assert!(r.stderr.contains("relux"), "{}", r.stderr);
    // An epoch count past its bound is refused before any data is read, not run or overflowed.
    let most = usize::MAX.to_string();
    let r = with(&["--epochs", most.as_str()]).code(2);
    assert!(
        r.stderr.contains("epochs") && r.stderr.contains("at most 1000000"),
        "{}",
        r.stderr
    );
    let r = palpipe(
        &store,
        &[
            "train",
            "--name",
            "x",
            "--model",
            "pal-b",
            "--train",
            "nosplit",
            "--encoder",
            "synthetic-identity",
        ],
    )
    .code(2);
    assert!(
        r.stderr.contains("no split named 'nosplit'"),
        "{}",
        r.stderr
    );
    let r = palpipe(
        &store,
        &[
            "train",
            "--name",
            "x",
            "--model",
            "pal-b",
            "--train",
            "tr",
            "--encoder",
            "nope",
        ],
    )
    .code(2);
    assert!(
        r.stderr.contains("no vectors for encoder 'nope'"),
        "{}",
        r.stderr
    );
    let r = palpipe(&store, &["eval", "--model", "nomodel", "--split", "te"]).code(2);
    assert!(
        r.stderr.contains("no model named 'nomodel'"),
        "{}",
        r.stderr
    );
    let r = palpipe(
        &store,
        &["adapt", "--model", "k3", "--users", "te", "--shots", "5"],
    )
    .code(1);
    assert!(r.stderr.contains("saw in training"), "{}", r.stderr);
    // A few-shot setting past its bound is refused before the users are read.
    let r = palpipe(
        &store,
        &[
            "adapt", "--model", "k3", "--users", "te", "--shots", "5", "--steps", "100001",
        ],
    )
    .code(2);
    assert!(
        r.stderr.contains("steps") && r.stderr.contains("at most 100000"),
        "{}",
        r.stderr
    );
    let mut after = versions(&store);
    // eval and adapt failures write nothing; only successful evals above touched models
    after.remove("runs");
    let mut before2 = before.clone();
    before2.remove("runs");
    assert_eq!(before2, after);
}

#[test]
fn sweep_prints_one_row_per_k_with_mean_over_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let store = trained_store(dir.path());
    let r = palpipe(
        &store,
        &[
            "sweep",
            "--model",
            "pal-a",
            "--k",
            "1,3",
            "--seeds",
            "0,1",
            "--train",
            "tr",
            "--val",
            "va",
            "--test",
            "te",
            "--encoder",
            "synthetic-identity",
            "--d",
            "2",
            "--epochs",
            "15",
            "--json",
        ],
    )
    .ok();
    let rows: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{}", r.stdout);
    assert_eq!(rows[0]["seeds"], 2);
    assert!(
        rows[1]["accuracy_mean"].as_f64().unwrap() > rows[0]["accuracy_mean"].as_f64().unwrap()
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM models WHERE name LIKE 'sweep-%'"
        ),
        4
    );
}

#[test]
fn empty_splits_and_nan_vectors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = trained_local_store(dir.path());
    let r = palpipe(
        &store,
        &[
            "train",
            "--name",
            "x",
            "--model",
            "pal-a",
            "--train",
            "none",
            "--encoder",
            "synthetic-identity",
        ],
    )
    .code(1);
    assert!(
        r.stderr.contains("split 'none' selects no comparisons"),
        "{}",
        r.stderr
    );
    // plant a NaN vector for every item under a new encoder id
    let rows = query(&store, "SELECT item_id FROM items");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = palpipe::store::Store::open(&store).unwrap();
        let emb: Vec<_> = rows
            .iter()
            .map(|r| palpipe::store::records::EmbeddingRow {
                content_id: r["item_id"].as_str().unwrap().to_string(),
                encoder_id: "broken".into(),
                vector: vec![f32::NAN, 0.0],
            })
            .collect();
        s.append(
            "embeddings",
            palpipe::store::batches::embeddings(&emb).unwrap().unwrap(),
        )
        .await
        .unwrap();
    });
    let before = versions(&store);
    let r = palpipe(
        &store,
        &[
            "train",
            "--name",
            "x",
            "--model",
            "pal-a",
            "--train",
            "tr",
            "--encoder",
            "broken",
        ],
    )
    .code(1);
    assert!(
        r.stderr.to_lowercase().contains("nan") || r.stderr.contains("finite"),
        "{}",
        r.stderr
    );
    assert_eq!(before, versions(&store), "nothing written");
}

/// An adapt stage with `ridge: -1` (and another with a ridge above the bound) is refused by
/// `palpipe run` before anything runs: exit 2, each message naming the file, the line and
/// the key, and no table written (the training stages before them did not run).
#[test]
fn a_bad_adapt_ridge_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let text = synth_pal_pipeline(
        "t",
        6,
        &[
            "{name: ad, kind: adapt, model: k3, users: un, shots: [0, 10], ridge: -1}",
            "{name: ad2, kind: adapt, model: k3, users: va, shots: [0, 5], ridge: 1e13}",
        ],
        &["un: \"SELECT * FROM pairs WHERE split = 'unseen'\""],
    );
    // 1-based lines of the two stages, read from the text written.
    let line_of = |needle: &str| 1 + text.lines().position(|l| l.contains(needle)).unwrap();
    let (bad, big) = (line_of("ridge: -1"), line_of("ridge: 1e13"));
    let p = write_pipeline(dir.path(), "p.yaml", &text);
    let r = palpipe(&store, &["run", p.to_str().unwrap()]).code(2);
    assert!(
        r.stderr.contains(&format!("p.yaml:{bad}:")) && r.stderr.contains("'stages.3.ridge'"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("is -1, it must be > 0"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("p.yaml:{big}:")) && r.stderr.contains("'stages.4.ridge'"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("at most 1e12"), "{}", r.stderr);
    // A run refused before any work need not create the store at all.
    if store.exists() {
        let v = versions(&store);
        assert!(v.keys().all(|t| t == "runs"), "tables written: {v:?}");
    }
}
