//! `palpipe score`, `enroll` and `serve` through the real binary: rewards against `eval`'s
//! predictions and an independent NumPy reading of the checkpoint, enrolment, and the HTTP
//! server with a plain TcpStream client (OpenRLHF's request shape, bad input, tokens,
//! shutdown).

mod common;
#[path = "common/old_store.rs"]
mod old_store;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// The synthetic store with PAL-A heads k1 and k3 (no context, dp = 0) and 4 unseen users.
fn synthetic_store(dir: &Path) -> PathBuf {
    let store = new_store(dir, "s");
    synthetic_store_at(dir, &store);
    store
}

/// [`synthetic_store`] at `store` (a folder or an `s3://` store).
fn synthetic_store_at(dir: &Path, store: &Path) {
    let text = synth_pal_pipeline(
        "t",
        4,
        &["{name: e3, kind: eval, model: k3, split: te}"],
        &["un: \"SELECT * FROM pairs WHERE split = 'unseen'\""],
    );
    let p = write_pipeline(dir, "p.yaml", &text);
    palpipe(store, &["run", p.to_str().unwrap()]).ok();
}

/// A small persona store (MiniLM vectors of the statements and " Yes"/" No") with a PAL-B
/// head `pb` (K = 2, prompt-conditioned g_k) trained on the seen users.
fn persona_store(dir: &Path) -> PathBuf {
    let store = new_store(dir, "s");
    persona_store_at(dir, &store);
    store
}

/// [`persona_store`] at `store` (a folder or an `s3://` store).
fn persona_store_at(dir: &Path, store: &Path) {
    require_minilm();
    let text = format!(
        "name: p\nstages:\n  - name: data\n    kind: persona\n    dir: {}\n    personas: [art, math]\n    users_per_persona: 3\n    queries_per_user: 20\n    unseen_users_per_persona: 1\n    unseen_queries_per_user: 16\n  - name: embed\n    kind: embed\n  - {{name: pb, kind: train, model: pal-b, k: 2, train: tr, encoder: all-MiniLM-L6-v2, config: {{d: 8}}, training: {{epochs: 5}}}}\nsplits:\n  tr: \"SELECT * FROM pairs WHERE split = 'train'\"\n",
        shared_data().join("persona").display()
    );
    let p = write_pipeline(dir, "p.yaml", &text);
    palpipe(store, &["run", p.to_str().unwrap()]).ok();
}

/// `palpipe score --input FILE --json` → rewards per row.
fn score_input(store: &Path, dir: &Path, model: &str, rows: &[Value]) -> Vec<Vec<f64>> {
    let file = dir.join(format!("rows-{}.jsonl", rows.len()));
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let r = palpipe(
        store,
        &[
            "score",
            "--model",
            model,
            "--input",
            file.to_str().unwrap(),
            "--json",
        ],
    )
    .ok();
    let mut out = vec![Vec::new(); rows.len()];
    for line in r.stdout.lines() {
        let v: Value = serde_json::from_str(line).expect("a JSON line");
        let row = v["row"].as_u64().unwrap() as usize;
        assert_eq!(
            v["candidate"].as_u64().unwrap() as usize,
            out[row].len(),
            "input order"
        );
        out[row].push(v["reward"].as_f64().unwrap());
    }
    out
}

/// The Python that has numpy and safetensors: $PALPIPE_PYTHON, else python3; None (and a
/// skip line) when neither imports them and PALPIPE_PYTHON is unset (a failure when it is set).
fn reference_python() -> Option<String> {
    let candidates = [
        std::env::var("PALPIPE_PYTHON")
            .ok()
            .filter(|p| !p.is_empty()),
        Some("python3".to_string()),
    ];
    for py in candidates.into_iter().flatten() {
        let ok = Command::new(&py)
            .args(["-c", "import numpy, safetensors.numpy"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(py);
        }
    }
    // `make test` names the venv `make setup` made: there the check must run, not skip.
    if std::env::var("PALPIPE_PYTHON").is_ok_and(|p| !p.is_empty()) {
        panic!("PALPIPE_PYTHON is set but cannot import numpy and safetensors (run 'make setup')");
    }
    eprintln!("SKIP numpy reference check: no python with numpy and safetensors (set PALPIPE_PYTHON, or run 'make setup')");
    None
}

/// scripts/pal_reference_score.py on `rows` → rewards per row.
fn numpy_rewards(py: &str, checkpoint: &Path, rows: &[Value]) -> Vec<Vec<f64>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pal_reference_score.py");
    let mut child = Command::new(py)
        .arg(&script)
        .arg(checkpoint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    let input: String = rows.iter().map(|r| format!("{r}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["rewards"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// The checkpoint folder of `model` as a local folder (on an `s3://` store, a copy of what
/// the store holds now, made under `into`).
fn checkpoint_of(store: &Path, model: &str, into: &Path) -> PathBuf {
    let rows = query(
        store,
        &format!("SELECT checkpoint FROM models WHERE name = '{model}'"),
    );
    local_copy(store, rows[0]["checkpoint"].as_str().unwrap(), into)
}

fn assert_close(a: &[Vec<f64>], b: &[Vec<f64>], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: rows");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.len(), y.len(), "{what}: row {i}");
        for (p, q) in x.iter().zip(y) {
            assert!(
                (p - q).abs() <= tol * (1.0 + q.abs()),
                "{what}: row {i}: {p} vs {q}"
            );
        }
    }
}

/// Whether the margin r_l − r_r predicts `label` (−1: the left item preferred); a tie is
/// wrong, as in eval.
fn predicted(label: i64, margin: f64) -> bool {
    (label == -1 && margin > 0.0) || (label == 1 && margin < 0.0)
}

/// Checks that the comparisons' outcomes (user, label, r_l − r_r), in the order eval reads
/// `split`, give exactly `palpipe eval`'s per-user counts and accuracy; returns how many
/// were predicted right.
fn assert_matches_eval(
    store: &Path,
    model: &str,
    split: &str,
    outcomes: &[(String, i64, f64)],
) -> u64 {
    let mut per_user: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (user, label, margin) in outcomes {
        let e = per_user.entry(user.as_str()).or_default();
        e.0 += 1;
        e.1 += predicted(*label, *margin) as u64;
    }
    let ev = palpipe(
        store,
        &["eval", "--model", model, "--split", split, "--json"],
    )
    .ok();
    let ev: Value = serde_json::from_str(ev.stdout.trim()).unwrap();
    let detail = ev["per_user"]["users_detail"].as_array().unwrap();
    assert_eq!(detail.len(), per_user.len());
    for u in detail {
        let id = u["user"].as_str().unwrap();
        let (n, correct) = per_user[id];
        assert_eq!(u["n"].as_u64().unwrap(), n, "user {id}");
        assert_eq!(
            u["correct"].as_u64().unwrap(),
            correct,
            "user {id}: eval vs score"
        );
    }
    let total: u64 = per_user.values().map(|v| v.1).sum();
    let n = outcomes.len() as f64;
    assert_eq!(ev["n"].as_u64().unwrap(), outcomes.len() as u64);
    assert!((ev["accuracy"].as_f64().unwrap() - total as f64 / n).abs() < 1e-12);
    total
}

// ---------------------------------------------------------------------------------------
// score and enroll on the synthetic store
// ---------------------------------------------------------------------------------------

#[test]
fn score_reproduces_eval_predictions_and_the_numpy_reference() {
    let dir = tempfile::tempdir().unwrap();
    let store = synthetic_store(dir.path());
    // The test split's comparisons, as eval reads them.
    let pairs = query(
        &store,
        "SELECT user_id, left_id, right_id, label FROM pairs WHERE split = 'test' ORDER BY pair_id",
    );
    assert!(pairs.len() > 100, "{}", pairs.len());
    let rows: Vec<Value> = pairs
        .iter()
        .map(|p| json!({"user": p["user_id"], "candidates": [{"id": p["left_id"]}, {"id": p["right_id"]}]}))
        .collect();
    let rewards = score_input(&store, dir.path(), "k3", &rows);
    let outcomes: Vec<(String, i64, f64)> = pairs
        .iter()
        .zip(&rewards)
        .map(|(p, r)| {
            (
                p["user_id"].as_str().unwrap().to_string(),
                p["label"].as_i64().unwrap(),
                r[0] - r[1],
            )
        })
        .collect();
    let total = assert_matches_eval(&store, "k3", "te", &outcomes);
    assert!(
        total as f64 / pairs.len() as f64 > 0.7,
        "a trained head beats chance: {total}"
    );

    // --best and --top order the candidates best first.
    let (u, l, r) = (
        pairs[0]["user_id"].as_str().unwrap(),
        pairs[0]["left_id"].as_str().unwrap(),
        pairs[0]["right_id"].as_str().unwrap(),
    );
    let one = format!(
        "{{\"user\": \"{u}\", \"candidates\": [{{\"id\": \"{l}\"}}, {{\"id\": \"{r}\"}}]}}\n"
    );
    let f = dir.path().join("one.jsonl");
    std::fs::write(&f, one).unwrap();
    let best = palpipe(
        &store,
        &[
            "score",
            "--model",
            "k3",
            "--input",
            f.to_str().unwrap(),
            "--json",
            "--best",
        ],
    )
    .ok();
    let lines: Vec<Value> = best
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    let want = if rewards[0][0] >= rewards[0][1] { 0 } else { 1 };
    assert_eq!(lines[0]["candidate"], want);

    // The NumPy reference, from the checkpoint files and the vectors alone.
    if let Some(py) = reference_python() {
        let vecs = stored_vectors(&store);
        let ref_rows: Vec<Value> = pairs
            .iter()
            .take(60)
            .map(|p| {
                json!({"user": p["user_id"], "prompt": null, "candidates": [
                    vecs[p["left_id"].as_str().unwrap()], vecs[p["right_id"].as_str().unwrap()]]})
            })
            .collect();
        let np = numpy_rewards(&py, &checkpoint_of(&store, "k3", dir.path()), &ref_rows);
        assert_close(
            &rewards[..60],
            &np,
            1e-4,
            "palpipe score vs numpy (PAL-A, seen users)",
        );
        // Zero-shot: the mean of the seen users' mixtures.
        let zs: Vec<Value> = ref_rows
            .iter()
            .map(|r| json!({"user": null, "candidates": r["candidates"]}))
            .collect();
        let zs_ids: Vec<Value> = rows
            .iter()
            .take(60)
            .map(|r| json!({"user": null, "candidates": r["candidates"]}))
            .collect();
        let ours = score_input(&store, dir.path(), "k3", &zs_ids);
        assert_close(
            &ours,
            &numpy_rewards(&py, &checkpoint_of(&store, "k3", dir.path()), &zs),
            1e-4,
            "zero-shot",
        );
    }
}

/// The unseen pairs of the synthetic store's first unseen user, in pair order.
fn first_unseen_user(store: &Path) -> Vec<Value> {
    let unseen = query(
        store,
        "SELECT user_id, left_id, right_id, label FROM pairs WHERE split = 'unseen' ORDER BY user_id, pair_id",
    );
    let user = unseen[0]["user_id"].clone();
    unseen
        .into_iter()
        .filter(|p| p["user_id"] == user)
        .collect()
}

/// `palpipe enroll --model k3 --user USER --comparisons FILE --json` (and `extra`): its output.
fn enroll_json(store: &Path, user: &str, file: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let r = enroll(store, user, file, &args).ok();
    serde_json::from_str(r.stdout.trim()).unwrap()
}

/// `palpipe enroll --model k3 --user USER --comparisons FILE` (and `extra`), its exit unchecked.
fn enroll(store: &Path, user: &str, file: &Path, extra: &[&str]) -> Run {
    let file = file.to_str().unwrap();
    let mut args = vec![
        "enroll",
        "--model",
        "k3",
        "--user",
        user,
        "--comparisons",
        file,
    ];
    args.extend_from_slice(extra);
    palpipe(store, &args)
}

/// One enrolment line of a stored pair (the preferred item chosen), with a weight if given.
fn comparison_line(p: &Value, weight: Option<f64>) -> String {
    let (c, r) = if p["label"] == -1 {
        ("left_id", "right_id")
    } else {
        ("right_id", "left_id")
    };
    let mut v = json!({"chosen": {"id": p[c]}, "rejected": {"id": p[r]}});
    if let Some(w) = weight {
        v["weight"] = json!(w);
    }
    v.to_string()
}

/// Writes `pairs` (stored pairs) as an enrolment file `name` in `dir`, one
/// [`comparison_line`] each, and returns its path.
fn comparisons_file(dir: &Path, name: &str, pairs: &[Value]) -> PathBuf {
    let f = dir.join(name);
    let text: String = pairs
        .iter()
        .map(|p| comparison_line(p, None) + "\n")
        .collect();
    std::fs::write(&f, text).unwrap();
    f
}

/// A comparison with `"weight": 2` enrolls the user as the same comparison given twice (the
/// stored logits equal up to rounding, for the default estimator and for `map`); weight 1
/// written out is the same as none, to the bit; a weight that is not a positive number, an
/// empty text, an item compared with itself and a line that is not JSON are usage errors
/// naming the file's line.
#[test]
fn enroll_weighs_a_comparison_as_if_given_that_many_times() {
    let dir = tempfile::tempdir().unwrap();
    let store = synthetic_store(dir.path());
    // Eight comparisons (fewer than 10: no held-out part, the fit sees every line).
    let unseen = first_unseen_user(&store);
    let mine: Vec<&Value> = unseen.iter().take(8).collect();
    let line = |p: &Value, weight: Option<f64>| comparison_line(p, weight) + "\n";
    let write = |name: &str, text: String| {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        f
    };
    let plain: String = mine.iter().map(|&p| line(p, None)).collect();
    let ones: String = mine.iter().map(|&p| line(p, Some(1.0))).collect();
    let weighted: String = mine
        .iter()
        .enumerate()
        .map(|(i, &p)| line(p, (i == 2).then_some(2.0)))
        .collect();
    let twice: String = plain.clone() + &line(mine[2], None);
    let files = [
        write("plain.jsonl", plain),
        write("ones.jsonl", ones),
        write("weighted.jsonl", weighted),
        write("twice.jsonl", twice),
    ];
    for est in ["auto", "map"] {
        let logits: Vec<Vec<f64>> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let out = enroll_json(&store, &format!("{est}-{i}"), f, &["--estimator", est]);
                out["logits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(logits[0], logits[1], "{est}: weight 1 written out");
        let gap = |a: &[f64], b: &[f64]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max)
        };
        assert!(
            gap(&logits[2], &logits[3]) < 1e-4,
            "{est}: weight 2 {:?} vs twice {:?}",
            logits[2],
            logits[3]
        );
        assert!(
            gap(&logits[0], &logits[2]) > 1e-3,
            "{est}: the weight changes nothing: {:?}",
            logits[0]
        );
    }
    // Each bad line is named by its line of the file (blank lines counted), once: a weight
    // that is not positive, an empty text, a comparison of an item with itself, a line that
    // is not JSON (its column only: serde's own "line 1" would contradict the file's line 4).
    let id = |p: &Value| p["left_id"].as_str().unwrap().to_string();
    let cases = [
        (
            comparison_line(mine[2], Some(-1.0)),
            "bad.jsonl:4: weight: is -1",
        ),
        (
            json!({"chosen": {"text": "  "}, "rejected": {"id": id(mine[1])}}).to_string(),
            "bad.jsonl:4: chosen.text: is an empty text",
        ),
        (
            json!({"chosen": "", "rejected": {"id": id(mine[1])}}).to_string(),
            "bad.jsonl:4: chosen: is an empty text",
        ),
        (
            json!({"chosen": {"id": id(mine[1])}, "rejected": {"id": id(mine[1])}}).to_string(),
            "bad.jsonl:4: chosen and rejected are the same item",
        ),
        (
            "{\"chosen\": ".to_string(),
            "bad.jsonl:4: not valid JSON at column 11: EOF while parsing a value",
        ),
    ];
    for (bad_line, want) in cases {
        let text = line(mine[0], None) + &line(mine[1], None) + "\n" + &bad_line + "\n";
        let bad = write("bad.jsonl", text);
        let r = enroll(&store, "bad", &bad, &[]).code(2);
        assert!(r.stderr.contains(want), "want {want:?}: {}", r.stderr);
        assert!(!r.stderr.contains("line 1"), "{}", r.stderr);
    }
}

#[test]
fn enroll_fits_a_new_user_stores_them_and_score_knows_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = synthetic_store(dir.path());
    let unseen = first_unseen_user(&store);
    let mine: Vec<&Value> = unseen.iter().collect();
    assert!(mine.len() >= 20, "{}", mine.len());
    let line = |p: &Value| comparison_line(p, None);
    let f = dir.path().join("alice.jsonl");
    let text: String = mine.iter().map(|&p| line(p) + "\n").collect();
    std::fs::write(&f, &text).unwrap();

    // Before enrolment the id is unknown: an error that says how to enroll, not a zero-shot.
    let new_id = "alice \"the\" new";
    let cands = format!(
        "{{\"candidates\": [{{\"id\": \"{}\"}}]}}\n",
        mine[0]["left_id"].as_str().unwrap()
    );
    let cf = dir.path().join("c.jsonl");
    std::fs::write(&cf, &cands).unwrap();
    let unknown = |user: &str| {
        let args = [
            "score",
            "--model",
            "k3",
            "--user",
            user,
            "--input",
            cf.to_str().unwrap(),
        ];
        palpipe(&store, &args).code(2)
    };
    let r = unknown(new_id);
    assert!(
        r.stderr.contains("unknown user 'alice \\\"the\\\" new'"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("palpipe enroll"), "{}", r.stderr);

    // A seen user named without their dataset's prefix: the error names the full id.
    let seen = query(
        &store,
        "SELECT DISTINCT user_id FROM pairs WHERE split = 'train' ORDER BY user_id LIMIT 1",
    );
    let full = seen[0]["user_id"].as_str().unwrap().to_string();
    let (_, bare) = full
        .rsplit_once('/')
        .expect("ids carry their dataset's prefix");
    let r = unknown(bare);
    assert!(
        r.stderr.contains(&format!(
            "unknown user '{bare}' for model 'k3'; did you mean '{full}'?"
        )),
        "{}",
        r.stderr
    );

    let before = checkpoint_of(&store, "k3", dir.path()).join("weights.safetensors");
    let weights_before = std::fs::read(&before).unwrap();
    let out = enroll_json(&store, new_id, &f, &[]);
    let n = mine.len();
    let held = (n / 5).max(2);
    assert_eq!(out["comparisons"], n);
    assert_eq!(out["held_out"], held);
    let acc = out["held_out_accuracy"].as_f64().unwrap();
    let correct = acc * held as f64;
    assert!(
        (0.0..=1.0).contains(&acc) && (correct - correct.round()).abs() < 1e-9,
        "{acc}"
    );
    let w: Vec<f64> = out["mixture"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(w.len(), 3);
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-6, "{w:?}");
    assert_eq!(out["replaced"], false);
    let after = checkpoint_of(&store, "k3", &dir.path().join("after")).join("weights.safetensors");
    assert_eq!(
        std::fs::read(&after).unwrap(),
        weights_before,
        "the base model is not rewritten"
    );

    // The stored logits are the user's from then on: score agrees with the NumPy reference
    // given those logits.
    let rows = query(
        &store,
        "SELECT user_id, logits_json, comparisons FROM enrollments",
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["user_id"], new_id);
    let r = palpipe(
        &store,
        &[
            "score",
            "--model",
            "k3",
            "--user",
            new_id,
            "--input",
            cf.to_str().unwrap(),
            "--json",
        ],
    )
    .ok();
    let ours: Value = serde_json::from_str(r.stdout.lines().next().unwrap()).unwrap();
    if let Some(py) = reference_python() {
        let vecs = stored_vectors(&store);
        let logits: Value = serde_json::from_str(rows[0]["logits_json"].as_str().unwrap()).unwrap();
        let np = numpy_rewards(
            &py,
            &checkpoint_of(&store, "k3", dir.path()),
            &[
                json!({"logits": logits, "candidates": [vecs[mine[0]["left_id"].as_str().unwrap()]]}),
            ],
        );
        assert_close(
            &[vec![ours["reward"].as_f64().unwrap()]],
            &np,
            1e-4,
            "enrolled user",
        );
    }

    // Re-enrolling with fewer comparisons refits and replaces the one row; no held-out part.
    let few: String = mine.iter().take(6).map(|&p| line(p) + "\n").collect();
    std::fs::write(&f, few).unwrap();
    let r = enroll(&store, new_id, &f, &[]).ok();
    assert!(r.stdout.starts_with("re-enrolled"), "{}", r.stdout);
    assert!(r.stdout.contains("no held-out accuracy"), "{}", r.stdout);
    let rows = query(&store, "SELECT comparisons, held_out FROM enrollments");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["comparisons"], 6);
    assert_eq!(rows[0]["held_out"], 0);

    // A seen user cannot be enrolled; a malformed line names the file and line.
    let seen = query(
        &store,
        "SELECT user_id FROM pairs WHERE split = 'train' LIMIT 1",
    );
    let r = enroll(&store, seen[0]["user_id"].as_str().unwrap(), &f, &[]).code(2);
    assert!(r.stderr.contains("trained on"), "{}", r.stderr);
    std::fs::write(&f, format!("{}\n{{\"chosen\": 1\n", line(mine[0]))).unwrap();
    let r = enroll(&store, "bob", &f, &[]).code(2);
    assert!(r.stderr.contains("alice.jsonl:2"), "{}", r.stderr);
}

/// `palpipe score --model k3` of each of `cands` alone for `user` → the rewards.
fn score_user(store: &Path, dir: &Path, user: &str, cands: &[Value]) -> Vec<f64> {
    let rows: Vec<Value> = cands
        .iter()
        .map(|c| json!({"user": user, "candidates": [c]}))
        .collect();
    score_input(store, dir, "k3", &rows)
        .into_iter()
        .map(|r| r[0])
        .collect()
}

/// The `"reward"` of each JSON line of `palpipe score --json`'s output, in order.
fn reward_lines(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["reward"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("a JSON array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// `--estimator offset` stores the user's offset δ of the ideal point beside the logits, and
/// `score` adds it: the rewards equal the NumPy reference given the stored logits and offset
/// (PAL-A: δ added to a = Σ_k w_k P_k), and differ from the logits alone. A mixture-only
/// enrolment stores no offset. An `enrollments` table written before `offset_json` existed is
/// read as it is (its users score as before, nothing is written) and gains the column, null
/// for the old rows, at the next enrolment.
#[test]
fn enroll_with_offset_stores_it_and_score_adds_it() {
    let dir = tempfile::tempdir().unwrap();
    // A folder on every pass: the table an earlier palpipe wrote is made by rewriting its
    // files (tests/common/old_store.rs).
    let store = dir.path().join("s");
    synthetic_store_at(dir.path(), &store);
    let mine = first_unseen_user(&store);
    let f = comparisons_file(dir.path(), "u.jsonl", &mine);
    let cands: Vec<Value> = mine
        .iter()
        .take(8)
        .flat_map(|p| [json!({"id": p["left_id"]}), json!({"id": p["right_id"]})])
        .collect();

    // A mixture-only user, then the table as an earlier palpipe wrote it.
    let plain = enroll_json(&store, "plain", &f, &[]);
    assert_eq!(plain["estimator"], "empirical");
    assert!(plain.get("offset").is_none(), "{plain}");
    let plain_rewards = score_user(&store, dir.path(), "plain", &cands);
    old_store::drop_column(&store, "enrollments", "offset_json");
    let before = versions(&store);
    let cols = query(&store, "SELECT * FROM enrollments");
    assert!(cols[0].get("offset_json").is_none(), "{:?}", cols[0]);
    assert_eq!(
        score_user(&store, dir.path(), "plain", &cands),
        plain_rewards
    );
    assert_eq!(
        versions(&store),
        before,
        "a read-only command writes nothing"
    );

    // An offset fit: enrolling upgrades the table, then adds the row.
    let out = enroll_json(
        &store,
        "dave",
        &f,
        &["--estimator", "offset", "--ridge", "1"],
    );
    assert_eq!(out["estimator"], "offset");
    let offset = f64s(&out["offset"]);
    // PAL-A: δ lives in f's input space, Dp + Dx values (the card's dimensions).
    let card: Value = serde_json::from_str(
        &std::fs::read_to_string(checkpoint_of(&store, "k3", dir.path()).join("card.json"))
            .unwrap(),
    )
    .unwrap();
    let dim = card["model"]["dp"].as_u64().unwrap() + card["model"]["dx"].as_u64().unwrap();
    assert_eq!(offset.len() as u64, dim, "{out}");
    let norm = offset.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!(norm > 1e-3, "a ridge of 1 lets the offset move: {norm}");
    assert!((out["offset_norm"].as_f64().unwrap() - norm).abs() < 1e-6 * (1.0 + norm));
    let rows = query(
        &store,
        "SELECT user_id, logits_json, offset_json FROM enrollments ORDER BY user_id",
    );
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["user_id"], "dave");
    assert_eq!(rows[1]["user_id"], "plain");
    assert!(
        rows[1]["offset_json"].is_null(),
        "old rows read null: {:?}",
        rows[1]
    );
    let stored: Value = serde_json::from_str(rows[0]["offset_json"].as_str().unwrap()).unwrap();
    // The same f32 values (JSON writes them at f32's or f64's precision).
    let as_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    assert_eq!(as_f32(&f64s(&stored)), as_f32(&offset));
    assert_eq!(
        versions(&store)["enrollments"].0,
        before["enrollments"].0 + 2
    );

    // The old user scores as before; the new one with its offset.
    assert_eq!(
        score_user(&store, dir.path(), "plain", &cands),
        plain_rewards
    );
    let ours = score_user(&store, dir.path(), "dave", &cands);
    // dave's logits are plain's (offset's mixture is empirical's): only δ tells them apart.
    assert_eq!(
        rows[0]["logits_json"],
        query(
            &store,
            "SELECT logits_json FROM enrollments WHERE user_id = 'plain'"
        )[0]["logits_json"]
    );
    assert_ne!(ours, plain_rewards, "score adds the offset");
    let Some(py) = reference_python() else {
        return;
    };
    let vecs = stored_vectors(&store);
    let logits: Value = serde_json::from_str(rows[0]["logits_json"].as_str().unwrap()).unwrap();
    let reference = |with_offset: bool| -> Vec<f64> {
        let rows: Vec<Value> = cands
            .iter()
            .map(|c| {
                let mut r =
                    json!({"logits": logits, "candidates": [vecs[c["id"].as_str().unwrap()]]});
                if with_offset {
                    r["offset"] = stored.clone();
                }
                r
            })
            .collect();
        numpy_rewards(&py, &checkpoint_of(&store, "k3", dir.path()), &rows)
            .into_iter()
            .map(|r| r[0])
            .collect()
    };
    let ours_rows: Vec<Vec<f64>> = ours.iter().map(|&r| vec![r]).collect();
    let with: Vec<Vec<f64>> = reference(true).into_iter().map(|r| vec![r]).collect();
    assert_close(&ours_rows, &with, 1e-4, "enrolled user with offset");
    let without = reference(false);
    let moved = ours
        .iter()
        .zip(&without)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 1e-3, "the offset changes the rewards: {moved}");
}

// ---------------------------------------------------------------------------------------
// The persona store: texts, the encoder, the cache, and the server
// ---------------------------------------------------------------------------------------

/// A running `palpipe serve`, killed on drop.
struct Server {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    /// The thread copying the server's stderr into `log`; it ends at EOF, after the exit.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(store: &Path, args: &[&str]) -> Server {
    start_server_env(store, args, &[])
}

/// [`start_server`] with extra environment variables.
fn start_server_env(store: &Path, args: &[&str], env: &[(&str, &Path)]) -> Server {
    let mut child = bin()
        .arg("serve")
        .args(args)
        .args(["--addr", "127.0.0.1:0", "--store"])
        .arg(store)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start palpipe serve");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let log2 = log.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://127.0.0.1:").nth(1) {
                let port: u16 = rest.split_whitespace().next().unwrap().parse().unwrap();
                let _ = tx.send(port);
            }
            log2.lock().unwrap().push(line);
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("the server did not start: {:?}", log.lock().unwrap()));
    Server {
        child,
        port,
        log,
        reader: Some(reader),
    }
}

/// One HTTP/1.1 request over a plain TcpStream: (status, JSON body).
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http_raw(
        port,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{auth}\r\n{body}",
            body.len()
        ),
    )
}

/// Sends `request` as it is (one write) and reads the response: (status, JSON body).
fn http_raw(port: u16, request: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the response (the server closed with the request unread) ends it.
            Err(e) if !raw.is_empty() => {
                eprintln!("read ended: {e}");
                break;
            }
            Err(e) => panic!("no response: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response: {text:?}"));
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {body:?}"));
    (status, v)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// SIGTERM, then waits for a clean exit (status 0) and returns the server's stderr.
fn stop(mut srv: Server) -> String {
    let pid = srv.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = srv.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the server did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    // Every line is in the log once the reader has seen EOF.
    srv.reader.take().unwrap().join().unwrap();
    let log = srv.log.lock().unwrap().join("\n");
    log
}

fn healthy(port: u16) {
    let (st, v) = http(port, "GET", "/health", None, "");
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")), "{v}");
}

/// Rows and distinct content ids of `embeddings`.
fn embedding_counts(store: &Path) -> (i64, i64) {
    let r = &query(
        store,
        "SELECT count(*) AS n, count(DISTINCT content_id) AS d FROM embeddings",
    )[0];
    (r["n"].as_i64().unwrap(), r["d"].as_i64().unwrap())
}

/// A server of model `pb` writing back in batches of `every` (and not by age), that holds at
/// the test pause `point` until the file `resume` exists.
fn start_held_server(store: &Path, every: &str, point: &str, resume: &Path) -> Server {
    start_server_env(
        store,
        &[
            "--model",
            "pb",
            "--write-back",
            "--write-back-every",
            every,
            "--write-back-secs",
            "600",
        ],
        &[
            ("PALPIPE_TEST_PAUSE", Path::new(point)),
            ("PALPIPE_TEST_RESUME", resume),
        ],
    )
}

/// Waits (at most two minutes) until the server's log says it holds at `point`.
fn wait_for_server_pause(srv: &Server, point: &str) {
    let t = Instant::now();
    let line = format!("test pause at {point}");
    while !srv.log.lock().unwrap().iter().any(|l| l.contains(&line)) {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no pause at {point}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first model's write-back counters from `GET /models` (pending, written back, left
/// out as already stored), once nothing waits and `handled` vectors were written back or
/// left out (or after 30 s: the counters as they are then).
fn settled_write_back(port: u16, handled: u64) -> (u64, u64, u64) {
    let t = Instant::now();
    loop {
        let (st, v) = http(port, "GET", "/models", None, "");
        assert_eq!(st, 200, "{v}");
        let c = &v["models"][0]["cache"];
        let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("no {k} in {c}"));
        let now = (
            n("pending_write_back"),
            n("written_back"),
            n("already_stored"),
        );
        if (now.0 == 0 && now.1 + now.2 >= handled) || t.elapsed() > Duration::from_secs(30) {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server writing back in batches of 12 gets a request of 12 texts the store has as
/// items but no vectors for; it is held after its cache read (nothing found) while
/// `palpipe embed` stores those vectors on the same folder. The server then embeds them and
/// its write-back leaves all 12 out: each stored once, `already_stored` 12 in `GET /models`.
#[test]
fn a_served_write_back_racing_an_embed_leaves_out_what_embed_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = persona_store(dir.path());
    let user = query(
        &store,
        "SELECT user_id FROM pairs WHERE split = 'train' AND dataset <> 'mine' ORDER BY user_id LIMIT 1",
    )[0]["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Four comparisons: twelve new texts (a prompt and two answers each).
    let rows: Vec<[String; 3]> = (0..4)
        .map(|i| {
            [
                format!("Question {i}: a walk in the hills or a day at the library?"),
                format!("The hills, for walk number {i}."),
                format!("The library, for day number {i}."),
            ]
        })
        .collect();
    let file = dir.path().join("new.jsonl");
    write_chosen_rejected(&file, &rows);
    ingest_chosen_rejected(&store, &file, &[]).ok();
    let (before, _) = embedding_counts(&store);
    let resume = dir.path().join("resume");
    let srv = start_held_server(&store, "12", "serve-cache-read", &resume);
    let port = srv.port;
    // One request holding all twelve: the first prompt, and the other texts as candidates
    // (a text's vector is keyed by its content, whether it is a prompt or an answer).
    let texts: Vec<&String> = rows.iter().flatten().collect();
    let body = json!({"user": user, "prompt": texts[0], "candidates": texts[1..]}).to_string();
    let answer = std::thread::spawn(move || http(port, "POST", "/score", None, &body));
    wait_for_server_pause(&srv, "serve-cache-read");
    let embed = palpipe(&store, &["embed"]).ok();
    assert!(embed.stdout.contains("embedded 12"), "{}", embed.stdout);
    assert_eq!(embedding_counts(&store), (before + 12, before + 12));
    std::fs::write(&resume, "").unwrap();
    let (st, v) = answer.join().unwrap();
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["rewards"].as_array().map(Vec::len), Some(11), "{v}");
    // The twelve new vectors were offered to the write-back, due at 12, by the request
    // itself (or, had the ticker's flush held the turn, by the ticker within a second).
    assert_eq!(settled_write_back(port, 12), (0, 0, 12));
    stop(srv);
    assert_eq!(
        embedding_counts(&store),
        (before + 12, before + 12),
        "each vector once"
    );
}

/// Within one server: a batched write-back of three new texts is held after it took them
/// from the waiting list, before its commit; an enrolment of the same texts meanwhile misses
/// them in the store (not committed yet) and in the waiting list (taken), embeds them again
/// and leaves them waiting. Once the first commit lands, the next write-back leaves those
/// three out: each vector stored once, `written_back` 3 and `already_stored` 3.
#[test]
fn a_write_back_in_flight_is_not_stored_again_by_the_same_server() {
    let dir = tempfile::tempdir().unwrap();
    let store = persona_store(dir.path());
    let user = query(
        &store,
        "SELECT user_id FROM pairs WHERE split = 'train' ORDER BY user_id LIMIT 1",
    )[0]["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    let texts = [
        "Question: a swim in the lake or a nap in the shade?",
        "The lake, before the water warms.",
        "The shade, after lunch.",
    ];
    let (before, distinct) = embedding_counts(&store);
    assert_eq!(before, distinct);
    let resume = dir.path().join("resume");
    let srv = start_held_server(&store, "3", "serve-write-back", &resume);
    let port = srv.port;
    let body = json!({"user": user, "prompt": texts[0], "candidates": texts[1..]}).to_string();
    // The request's own flush (or the ticker's) takes the three vectors and holds.
    let scored = std::thread::spawn(move || http(port, "POST", "/score", None, &body));
    wait_for_server_pause(&srv, "serve-write-back");
    let enrol =
        json!({"comparisons": [{"prompt": texts[0], "chosen": texts[1], "rejected": texts[2]}]});
    let (st, v) = http(
        port,
        "POST",
        "/users/newcomer/enroll",
        None,
        &enrol.to_string(),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        embedding_counts(&store),
        (before, distinct),
        "nothing committed yet"
    );
    std::fs::write(&resume, "").unwrap();
    let (st, v) = scored.join().unwrap();
    assert_eq!(st, 200, "{v}");
    assert_eq!(settled_write_back(port, 6), (0, 3, 3));
    stop(srv);
    assert_eq!(
        embedding_counts(&store),
        (before + 3, distinct + 3),
        "each vector once"
    );
}

/// PAL-B with prompt-conditioned prototypes (the persona store's `pb`): a user enrolled over
/// HTTP with `"estimator": "offset"` gets the same fit as `palpipe enroll --estimator offset`
/// with the same ridge (logits and offset bit for bit), the server scores them with the
/// offset (the NumPy reference: δ added to z = Σ_k w_k g_k(x_c) before it is normalised),
/// unlike a mixture-only enrolment; bad settings are 400 naming the field.
#[test]
fn serve_enrolls_with_an_offset_as_the_cli_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = persona_store(dir.path());
    let pairs = query(
        &store,
        "SELECT user_id, prompt_id, left_id, right_id, label FROM pairs WHERE split = 'unseen' ORDER BY user_id, pair_id",
    );
    let first = pairs[0]["user_id"].clone();
    let mine: Vec<&Value> = pairs.iter().filter(|p| p["user_id"] == first).collect();
    assert!(mine.len() >= 10, "{}", mine.len());
    let comps: Vec<Value> = mine
        .iter()
        .map(|p| {
            let mut c: Value = serde_json::from_str(&comparison_line(p, None)).unwrap();
            c["prompt"] = json!({"id": p["prompt_id"]});
            c
        })
        .collect();
    let f = dir.path().join("dave.jsonl");
    let text: String = comps.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(&f, text).unwrap();
    let r = palpipe(
        &store,
        &[
            "enroll",
            "--model",
            "pb",
            "--user",
            "cli-dave",
            "--comparisons",
            f.to_str().unwrap(),
            "--estimator",
            "offset",
            "--ridge",
            "1",
            "--json",
        ],
    )
    .ok();
    let cli: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let offset = f64s(&cli["offset"]);
    let card: Value = serde_json::from_str(
        &std::fs::read_to_string(checkpoint_of(&store, "pb", dir.path()).join("card.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        offset.len() as u64,
        card["model"]["d"].as_u64().unwrap(),
        "PAL-B: d values"
    );
    assert!(cli["offset_norm"].as_f64().unwrap() > 1e-3, "{cli}");

    let srv = start_server(&store, &["--model", "pb"]);
    let enroll = |user: &str, settings: Value| {
        let mut body = settings;
        body["comparisons"] = json!(comps);
        http(
            srv.port,
            "POST",
            &format!("/users/{user}/enroll"),
            None,
            &body.to_string(),
        )
    };
    let (st, v) = enroll("http-dave", json!({"estimator": "offset", "ridge": 1}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["estimator"], "offset");
    assert_eq!(v["logits"], cli["logits"], "the same fit as the CLI's");
    assert_eq!(v["offset"], cli["offset"]);
    let (st, v) = enroll("http-plain", json!({}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["estimator"], "empirical");
    assert!(v.get("offset").is_none(), "{v}");
    for (settings, field) in [
        (json!({"estimator": "offset", "ridge": 0}), "ridge"),
        (json!({"ridge": "lots"}), "ridge"),
        (json!({"estimator": "nope"}), "estimator"),
        (json!({"prior_scale": -1}), "prior_scale"),
        (json!({"prior-scale": 2}), "prior-scale"),
        (json!({"steps": 1.5}), "steps"),
        (json!({"steps": 1_000_000_000_000u64}), "steps"),
    ] {
        let (st, v) = enroll("bad", settings.clone());
        assert_eq!(st, 400, "{settings}: {v}");
        assert!(
            v["error"].as_str().unwrap().starts_with(field),
            "{settings}: {v}"
        );
    }

    // Scores: the CLI's and the server's offset users alike; the mixture-only one apart.
    let p = mine[0];
    let score = |user: &str| {
        let body = json!({"user": user, "prompt": {"id": p["prompt_id"]},
            "candidates": [{"id": p["left_id"]}, {"id": p["right_id"]}]});
        let (st, v) = http(srv.port, "POST", "/score", None, &body.to_string());
        assert_eq!(st, 200, "{v}");
        f64s(&v["rewards"])
    };
    let (cli_r, http_r, plain_r) = (score("cli-dave"), score("http-dave"), score("http-plain"));
    assert_eq!(cli_r, http_r);
    let moved = cli_r
        .iter()
        .zip(&plain_r)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 1e-4, "{cli_r:?} vs {plain_r:?}");
    if let Some(py) = reference_python() {
        let vecs = stored_vectors(&store);
        let v = |k: &str| vecs[p[k].as_str().unwrap()].clone();
        let row = json!({"logits": cli["logits"], "offset": cli["offset"], "prompt": v("prompt_id"),
            "candidates": [v("left_id"), v("right_id")]});
        let np = numpy_rewards(&py, &checkpoint_of(&store, "pb", dir.path()), &[row]);
        assert_close(&[http_r], &np, 1e-4, "PAL-B user with offset");
    }
    stop(srv);
}

/// Enrolment's default `auto` (issue 14): before any adaptation it fits as `empirical`; once
/// `palpipe adapt --tune-split` has chosen an estimator for the model by its seen-user
/// simulation, `enroll` (CLI and HTTP) fits with exactly that estimator, prior scale and ridge
/// (the same logits and offset as an enrolment naming them) and names the metric it read; a
/// later adaptation of the same users with a named estimator replaces that record, and `auto`
/// is `empirical` again.
#[test]
fn enroll_auto_fits_with_the_estimator_adapt_chose_by_simulation() {
    let dir = tempfile::tempdir().unwrap();
    let store = synthetic_store(dir.path());
    let mine = first_unseen_user(&store);
    let f = comparisons_file(dir.path(), "u.jsonl", &mine);

    // No adaptation recorded: auto is empirical, with the settings given (a prior scale of 3,
    // which no simulation tries, so a fit with the recorded choice must differ).
    let scale3 = ["--prior-scale", "3"];
    let early = enroll_json(&store, "early", &f, &scale3);
    let named = enroll_json(
        &store,
        "named",
        &f,
        &["--estimator", "empirical", "--prior-scale", "3"],
    );
    assert_eq!(early["estimator"], "empirical");
    assert!(early.get("chosen_by").is_none(), "{early}");
    assert_eq!(early["prior_scale"], 3.0);
    assert_eq!(early["logits"], named["logits"]);

    let adapt = |users: &str, extra: &[&str]| -> Value {
        let mut args = vec![
            "adapt", "--model", "k3", "--users", users, "--shots", "0,2,5", "--json",
        ];
        args.extend_from_slice(extra);
        let r = palpipe(&store, &args).ok();
        serde_json::from_str(r.stdout.trim()).unwrap()
    };
    let a = adapt("un", &["--tune-split", "tr"]);
    let row = &a["results"][0];
    assert_eq!(row["asked"], "auto", "{row}");
    assert_eq!(row["chosen_by_simulation"], true, "{row}");
    // What the simulation chose: its best row (ties to the earlier row), read off the
    // simulation table adapt printed, independently of the choice in the results.
    let sim = a["simulation"].as_array().unwrap();
    assert!(!sim.is_empty());
    let best = sim.iter().fold(&sim[0], |b, r| {
        if r["accuracy"].as_f64().unwrap() > b["accuracy"].as_f64().unwrap() {
            r
        } else {
            b
        }
    });
    assert_eq!(row["estimator"], best["estimator"], "{best}");
    assert_eq!(row["prior_scale"], best["prior_scale"], "{best}");
    let estimator = best["estimator"].as_str().unwrap().to_string();
    let scale = best["prior_scale"].as_f64().unwrap().to_string();
    let mut settings = vec!["--estimator", &estimator, "--prior-scale", &scale];
    let ridge = match best.get("ridge") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(v) => Some(v.as_f64().unwrap().to_string()),
    };
    if let Some(r) = &ridge {
        settings.extend_from_slice(&["--ridge", r]);
    }

    let auto = enroll_json(&store, "auto", &f, &scale3);
    let explicit = enroll_json(&store, "explicit", &f, &settings);
    assert_eq!(auto["estimator"], best["estimator"], "{auto}");
    assert_eq!(auto["chosen_by"], "adapt:un", "{auto}");
    assert_eq!(auto["prior_scale"], best["prior_scale"]);
    assert_eq!(
        auto["logits"], explicit["logits"],
        "the same fit as naming the settings"
    );
    assert_eq!(auto.get("offset"), explicit.get("offset"));
    assert_ne!(
        auto["logits"], early["logits"],
        "the recorded choice was applied"
    );
    assert!(explicit.get("chosen_by").is_none(), "{explicit}");

    // The server's enrolment resolves auto the same way.
    let srv = start_server(&store, &["--model", "k3"]);
    let comps: Vec<Value> = mine
        .iter()
        .map(|p| serde_json::from_str(&comparison_line(p, None)).unwrap())
        .collect();
    let body = json!({"comparisons": comps});
    let (st, v) = http(
        srv.port,
        "POST",
        "/users/http-auto/enroll",
        None,
        &body.to_string(),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["estimator"], best["estimator"]);
    assert_eq!(v["chosen_by"], "adapt:un");
    assert_eq!(v["logits"], auto["logits"]);
    stop(srv);

    // An adaptation with a named estimator records its rows as asked, not as an auto choice:
    // it replaces adapt:un, and auto is empirical again (the first fit, bit for bit).
    let other = if estimator == "mle" { "map" } else { "mle" };
    let b = adapt("un", &["--estimator", other]);
    assert_eq!(b["results"][0]["asked"], other);
    assert_eq!(b["results"][0]["chosen_by_simulation"], false);
    let again = enroll_json(&store, "auto2", &f, &scale3);
    assert_eq!(again["estimator"], "empirical");
    assert!(again.get("chosen_by").is_none(), "{again}");
    assert_eq!(again["logits"], early["logits"]);
}

/// `palpipe serve` on an S3 store (moto on 127.0.0.1) answers as on a folder built by the
/// same pipeline: the same rewards for texts new to the store (embedded, then written back to
/// the bucket), the same offset enrolment, and the same tables after the servers stop
/// (`embeddings` with each new vector once, `enrollments` with the user's fit); `palpipe
/// score` on the bucket then knows the enrolled user and scores them as the server did.
#[test]
fn serve_on_an_s3_store_answers_and_writes_as_on_a_folder() {
    let Some(s3) = s3_store("serve") else {
        eprintln!("skipped: serve on S3 (PALPIPE_NO_S3_TESTS=1)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    persona_store_at(dir.path(), &s3);
    let local = persona_store(dir.path());
    let (vectors_before, _) = embedding_counts(&local);
    assert_eq!(embedding_counts(&s3).0, vectors_before);
    let user = query(
        &local,
        "SELECT user_id FROM pairs WHERE split = 'train' ORDER BY user_id LIMIT 1",
    )[0]["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Three requests of new texts (a prompt, two answers each): nine vectors to write back.
    let requests: Vec<Value> = (0..3)
        .map(|i| {
            json!({"user": user, "prompt": format!("Question {i}: tea or coffee in the morning?"),
                "candidates": [format!("Tea, for morning {i}."), format!("Coffee, for morning {i}.")]})
        })
        .collect();
    let comps: Vec<Value> = (0..12)
        .map(|i| {
            json!({"prompt": format!("Statement {i}: I like long walks."),
                "chosen": " Yes", "rejected": " No"})
        })
        .collect();
    let enroll_body = json!({"comparisons": comps, "estimator": "offset", "ridge": 10});
    let answers = |store: &Path| -> (Vec<Value>, Value) {
        let srv = start_server(
            store,
            &["--model", "pb", "--write-back", "--write-back-every", "1"],
        );
        let scored = requests
            .iter()
            .map(|r| {
                let (st, v) = http(srv.port, "POST", "/score", None, &r.to_string());
                assert_eq!(st, 200, "{v}");
                v["rewards"].clone()
            })
            .collect();
        let (st, enrolled) = http(
            srv.port,
            "POST",
            "/users/erin/enroll",
            None,
            &enroll_body.to_string(),
        );
        assert_eq!(st, 200, "{enrolled}");
        stop(srv);
        (scored, enrolled)
    };
    let (on_s3, enrolled_s3) = answers(&s3);
    let (on_folder, enrolled_folder) = answers(&local);
    assert_eq!(on_s3, on_folder, "rewards on S3 and on a folder");
    for k in ["logits", "offset", "mixture", "held_out_accuracy"] {
        assert_eq!(enrolled_s3[k], enrolled_folder[k], "{k}");
    }
    assert_eq!(enrolled_s3["estimator"], "offset");

    // What the servers wrote: the new vectors once each (nine texts scored, twelve new
    // statements enrolled on; " Yes" and " No" were stored), and the enrolment.
    let new_texts = 9 + 12;
    for store in [&s3, &local] {
        let (rows, distinct) = embedding_counts(store);
        let want = vectors_before + new_texts;
        assert_eq!((rows, distinct), (want, want), "{}", store.display());
    }
    let sql = "SELECT user_id, logits_json, offset_json, comparisons FROM enrollments";
    assert_eq!(query(&s3, sql), query(&local, sql));
    let q = "SELECT content_id, vector FROM embeddings ORDER BY content_id";
    assert_eq!(query(&s3, q), query(&local, q));

    // The CLI on the bucket knows the user the server enrolled, offset included.
    let body = &requests[0];
    let f = dir.path().join("erin.jsonl");
    std::fs::write(
        &f,
        json!({"prompt": body["prompt"], "candidates": body["candidates"]}).to_string() + "\n",
    )
    .unwrap();
    let srv = start_server(&s3, &["--model", "pb"]);
    let mut req = body.clone();
    req["user"] = json!("erin");
    let (st, v) = http(srv.port, "POST", "/score", None, &req.to_string());
    assert_eq!(st, 200, "{v}");
    stop(srv);
    let r = palpipe(
        &s3,
        &[
            "score",
            "--model",
            "pb",
            "--user",
            "erin",
            "--input",
            f.to_str().unwrap(),
            "--json",
        ],
    )
    .ok();
    let cli: Vec<f64> = reward_lines(&r.stdout);
    assert_eq!(cli, f64s(&v["rewards"]));
}

#[test]
fn text_scoring_embeds_once_serves_openrlhf_and_survives_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let store = persona_store(dir.path());
    let users = query(
        &store,
        "SELECT DISTINCT user_id FROM pairs WHERE split = 'train' ORDER BY user_id",
    );
    let prompts = query(
        &store,
        "SELECT text FROM prompts ORDER BY prompt_id LIMIT 4",
    );
    let u0 = users[0]["user_id"].as_str().unwrap().to_string();
    let u0s = u0.as_str();
    let u1 = users[users.len() - 1]["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    let p0 = prompts[0]["text"].as_str().unwrap().to_string();
    let p0s = p0.as_str();

    // score: flags, a table; a new text is embedded once and cached under the model's encoder.
    let fresh = "I would rather spend the afternoon in a museum.";
    let id = blake3::hash(fresh.as_bytes()).to_hex().to_string();
    let count = |s: &Path| {
        scalar(
            s,
            &format!("SELECT count(*) FROM embeddings WHERE content_id = '{id}'"),
        )
    };
    assert_eq!(count(&store), 0);
    let args = [
        "score",
        "--model",
        "pb",
        "--user",
        u0s,
        "--prompt",
        p0s,
        "--candidate",
        " Yes",
        "--candidate",
        fresh,
        "--json",
    ];
    let r1 = palpipe(&store, &args).ok();
    assert_eq!(count(&store), 1, "embedded and cached");
    let r2 = palpipe(&store, &args).ok();
    assert_eq!(count(&store), 1, "the second score reads the cache");
    assert_eq!(r1.stdout, r2.stdout, "same rewards from the cached vector");
    let lines: Vec<Value> = r1
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (
            lines[0]["candidate"].as_u64(),
            lines[1]["candidate"].as_u64()
        ),
        (Some(0), Some(1))
    );

    // A missing encoder is an error naming the encoder id and where it looked; texts that
    // are all cached still score without it.
    let nowhere = dir.path().join("no-models");
    let o = bin()
        .args([
            "score",
            "--model",
            "pb",
            "--user",
            u0s,
            "--prompt",
            p0s,
            "--candidate",
            "never embedded before",
            "--store",
        ])
        .arg(&store)
        .env("PALPIPE_MODELS", &nowhere)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("encoder 'all-MiniLM-L6-v2:") && err.contains(&nowhere.display().to_string()),
        "{err}"
    );
    let o = bin()
        .args([
            "score",
            "--model",
            "pb",
            "--user",
            u0s,
            "--prompt",
            p0s,
            "--candidate",
            " Yes",
            "--quiet",
            "--store",
        ])
        .arg(&store)
        .env("PALPIPE_MODELS", &nowhere)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The NumPy reference agrees on PAL-B with prompt-conditioned g_k.
    if let Some(py) = reference_python() {
        let vecs = stored_vectors(&store);
        let pid = blake3::hash(p0.as_bytes()).to_hex().to_string();
        let yes = blake3::hash(b" Yes").to_hex().to_string();
        let row = json!({"user": u0, "prompt": vecs[&pid], "candidates": [vecs[&yes], vecs[&id]]});
        let np = numpy_rewards(&py, &checkpoint_of(&store, "pb", dir.path()), &[row]);
        let ours = vec![lines
            .iter()
            .map(|l| l["reward"].as_f64().unwrap())
            .collect::<Vec<_>>()];
        assert_close(&ours, &np, 1e-4, "palpipe score vs numpy (PAL-B)");
    }

    // The server.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let srv = start_server(
        &store,
        &[
            "--model",
            "pb",
            "--token-file",
            token_file.to_str().unwrap(),
            "--max-candidates",
            "64",
        ],
    );
    let port = srv.port;
    let tok = Some("s3cret");
    healthy(port);

    // Exactly what OpenRLHF posts: query = prompt + response, labels = the user column.
    let mut q = Vec::new();
    let mut ps = Vec::new();
    let mut ls = Vec::new();
    let mut rows = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let p = p["text"].as_str().unwrap();
        for (j, resp) in [" Yes", " No"].iter().enumerate() {
            let user = if (i + j) % 2 == 0 { &u0 } else { &u1 };
            q.push(format!("{p}{resp}"));
            ps.push(p.to_string());
            ls.push(user.clone());
            rows.push(json!({"user": user, "prompt": p, "candidates": [resp]}));
        }
    }
    let body = json!({"query": q, "prompts": ps, "labels": ls}).to_string();
    let (st, v) = http(port, "POST", "/get_reward", tok, &body);
    assert_eq!(st, 200, "{v}");
    let got: Vec<f64> = v["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let want: Vec<f64> = score_input(&store, dir.path(), "pb", &rows)
        .into_iter()
        .map(|r| r[0])
        .collect();
    assert_close(
        std::slice::from_ref(&got),
        &[want],
        1e-5,
        "/get_reward vs palpipe score",
    );

    // /score answers as palpipe score does.
    let (st, v) = http(
        port,
        "POST",
        "/score",
        tok,
        &json!({"user": u0, "prompt": p0, "candidates": [" Yes", fresh]}).to_string(),
    );
    assert_eq!(st, 200, "{v}");
    let srv_r: Vec<f64> = v["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let cli_r: Vec<f64> = lines
        .iter()
        .map(|l| l["reward"].as_f64().unwrap())
        .collect();
    assert_close(&[srv_r], &[cli_r], 1e-5, "/score vs palpipe score");

    // Bad input: each answered with its status and a JSON error; the server keeps serving.
    let long = "painting ".repeat(400);
    // (method, path, token, body, expected status, expected words in the error)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/score",
            tok,
            "{\"user\": ".into(),
            400,
            "not valid JSON",
        ),
        (
            "POST",
            "/score",
            tok,
            json!({"prompt": p0, "candidates": ["x"]}).to_string(),
            400,
            "user",
        ),
        (
            "POST",
            "/score",
            tok,
            json!({"user": u0, "prompt": p0}).to_string(),
            400,
            "candidates",
        ),
        (
            "POST",
            "/score",
            tok,
            json!({"user": u0, "prompt": p0, "candidates": []}).to_string(),
            400,
            "empty",
        ),
        (
            "POST",
            "/score",
            tok,
            json!({"user": u0, "prompt": p0, "candidates": vec!["x"; 10_000]}).to_string(),
            413,
            "limit",
        ),
        (
            "POST",
            "/score",
            tok,
            json!({"model": "nope", "user": u0, "prompt": p0, "candidates": ["x"]}).to_string(),
            404,
            "'nope'",
        ),
        (
            "POST",
            "/score",
            tok,
            json!({"user": "q\"uo\nte", "prompt": p0, "candidates": ["x"]}).to_string(),
            404,
            "unknown user 'q\\\"uo\\nte'",
        ),
        (
            "POST",
            "/score",
            Some("wrong"),
            json!({"user": u0, "prompt": p0, "candidates": ["x"]}).to_string(),
            401,
            "token",
        ),
        (
            "POST",
            "/score",
            None,
            json!({"user": u0, "prompt": p0, "candidates": ["x"]}).to_string(),
            401,
            "token",
        ),
        (
            "POST",
            "/get_reward",
            tok,
            json!({"query": ["abc"], "prompts": ["xyz"], "labels": [u0]}).to_string(),
            400,
            "query[0]",
        ),
        ("GET", "/nowhere", tok, String::new(), 404, "no route"),
    ];
    for (method, path, t, body, status, needle) in &cases {
        let (st, v) = http(port, method, path, *t, body);
        let e = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{path} {status}: {v}"));
        assert_eq!(st, *status, "{path}: {e}");
        assert!(
            e.contains(needle),
            "{path} {status}: {e:?} lacks {needle:?}"
        );
        healthy(port);
    }
    // A body over --max-body (its Content-Length says so) is refused before it is read.
    let (st, v) = http_raw(
        port,
        "POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 5000000\r\nConnection: close\r\n\r\n{",
    );
    assert_eq!(st, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("--max-body"), "{v}");
    healthy(port);
    // A text over the encoder's token limit is scored truncated, and the response says so.
    let (st, v) = http(
        port,
        "POST",
        "/score",
        tok,
        &json!({"user": u0, "prompt": p0, "candidates": [" Yes", long]}).to_string(),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["truncated"], json!([1]), "{v}");
    // A client that disconnects mid-request.
    {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\nAuthorization: Bearer s3cret\r\n\r\n{{\"user\":").unwrap();
    }
    healthy(port);

    // Enrolment over HTTP, then the new user scores.
    let unseen = query(&store, "SELECT p.user_id, pr.text AS prompt, l.text AS l, r.text AS r, p.label FROM pairs p JOIN prompts pr ON p.prompt_id = pr.prompt_id JOIN items l ON p.left_id = l.item_id JOIN items r ON p.right_id = r.item_id WHERE p.split = 'unseen' ORDER BY p.user_id, p.pair_id");
    let first = unseen[0]["user_id"].clone();
    let comps: Vec<Value> = unseen
        .iter()
        .filter(|p| p["user_id"] == first)
        .map(|p| {
            let (c, r) = if p["label"] == -1 {
                (&p["l"], &p["r"])
            } else {
                (&p["r"], &p["l"])
            };
            json!({"prompt": p["prompt"], "chosen": c, "rejected": r})
        })
        .collect();
    let (st, v) = http(
        port,
        "POST",
        "/users/new%20person/enroll",
        tok,
        &json!({"comparisons": comps}).to_string(),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["user"], "new person");
    assert_eq!(v["comparisons"], comps.len());
    let (st, v) = http(
        port,
        "POST",
        "/score",
        tok,
        &json!({"user": "new person", "prompt": p0, "candidates": [" Yes", " No"]}).to_string(),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = http(port, "GET", "/models", tok, "");
    assert_eq!(st, 200);
    assert_eq!(v["models"][0]["enrolled_users"], 1, "{v}");
    assert_eq!(v["models"][0]["k"], 2, "{v}");
    // The CLI sees the user the server enrolled.
    palpipe(
        &store,
        &[
            "score",
            "--model",
            "pb",
            "--user",
            "new person",
            "--prompt",
            p0s,
            "--candidate",
            " Yes",
        ],
    )
    .ok();

    // Concurrent requests are all answered.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let body = json!({"user": if i % 2 == 0 { &u0 } else { &u1 }, "prompt": p0, "candidates": [" Yes", " No"]}).to_string();
            std::thread::spawn(move || http(port, "POST", "/score", Some("s3cret"), &body).0)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }

    // A request log line each, then SIGTERM: a clean stop.
    let log = stop(srv);
    assert!(log.contains("POST /get_reward 200"), "{log}");
    assert!(log.contains("POST /score 413"), "{log}");
    assert!(log.contains("palpipe serve: stopped"), "{log}");
}

// ---------------------------------------------------------------------------------------
// The Pick-a-Filter fixtures store: images through score, enroll and serve
// ---------------------------------------------------------------------------------------

fn tiny_clip() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_clip")
}

/// The shipped pipelines/pick-a-filter.yaml on generated Pick-a-Pic fixtures and the tiny
/// random CLIP: PAL-B heads paf-k1 and paf-k2 on CLIP vectors of filtered images.
fn paf_store(dir: &Path) -> PathBuf {
    let data = dir.join("fx");
    palpipe_raw(&["fixtures", "pickapic", "--out", data.to_str().unwrap()]).ok();
    // A folder on every pass: its tests read image bytes through the library in this process.
    let store = dir.join("paf");
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/pick-a-filter.yaml");
    palpipe(
        &store,
        &[
            "run",
            pipeline.to_str().unwrap(),
            "--set",
            &format!("ingest.data_dir={}", data.display()),
            "--set",
            &format!("fixtures.out={}", data.display()),
        ],
    )
    .ok();
    store
}

/// item id → the encoded bytes the store holds for it, read through the library.
fn item_bytes(store: &Path, ids: &[String]) -> BTreeMap<String, Vec<u8>> {
    use arrow_array::{Array, LargeBinaryArray, StringArray};
    let list: Vec<String> = ids.iter().map(|i| format!("'{i}'")).collect();
    let filter = format!("item_id IN ({})", list.join(", "));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let batches = rt.block_on(async {
        let s = palpipe::store::Store::open(store).unwrap();
        s.read("items", &["item_id", "bytes"], Some(&filter))
            .await
            .unwrap()
    });
    let mut out = BTreeMap::new();
    for b in batches {
        let id = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let by = b
            .column(1)
            .as_any()
            .downcast_ref::<LargeBinaryArray>()
            .unwrap();
        for i in 0..b.num_rows() {
            out.insert(id.value(i).to_string(), by.value(i).to_vec());
        }
    }
    assert_eq!(out.len(), ids.len(), "every image item found");
    out
}

/// The same pixels as `bytes`, written as a PNG with other settings: other bytes, so another
/// content id, but the same CLIP vector.
fn reencoded(bytes: &[u8]) -> Vec<u8> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let img = image::load_from_memory(bytes).unwrap();
    let mut out = Vec::new();
    img.write_with_encoder(PngEncoder::new_with_quality(
        &mut out,
        CompressionType::Best,
        FilterType::Paeth,
    ))
    .unwrap();
    assert_ne!(out, bytes, "re-encoding changed the bytes");
    out
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn rewards_of(v: &Value) -> Vec<f64> {
    v["rewards"]
        .as_array()
        .unwrap_or_else(|| panic!("no rewards: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The paf-test comparisons: (user, prompt id, left id, right id, label).
fn paf_test_pairs(store: &Path) -> Vec<(String, String, String, String, i64)> {
    query(
        store,
        "SELECT user_id, prompt_id, left_id, right_id, label FROM pairs WHERE dataset = 'pick-a-filter' AND split = 'paf-test' ORDER BY pair_id",
    )
    .iter()
    .map(|p| {
        (
            p["user_id"].as_str().unwrap().to_string(),
            p["prompt_id"].as_str().unwrap().to_string(),
            p["left_id"].as_str().unwrap().to_string(),
            p["right_id"].as_str().unwrap().to_string(),
            p["label"].as_i64().unwrap(),
        )
    })
    .collect()
}

#[test]
fn images_score_enroll_and_serve_on_the_pick_a_filter_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = paf_store(dir.path());
    let enc = tiny_clip();
    let enc = enc.to_str().unwrap();
    let pairs = paf_test_pairs(&store);
    assert!(pairs.len() >= 20, "{}", pairs.len());

    // The test split's images as files (their stored bytes: the same content ids).
    let mut ids: Vec<String> = pairs
        .iter()
        .flat_map(|p| [p.2.clone(), p.3.clone()])
        .collect();
    ids.sort();
    ids.dedup();
    let bytes = item_bytes(&store, &ids);
    let imgs = dir.path().join("img");
    std::fs::create_dir_all(&imgs).unwrap();
    for (id, b) in &bytes {
        std::fs::write(imgs.join(format!("{id}.png")), b).unwrap();
    }

    // score --input with image paths (relative to the input file) reproduces eval's
    // per-user predictions: sign(r_l − r_r) against the label, a tie counting as wrong.
    let rows: Vec<Value> = pairs
        .iter()
        .map(|(u, p, l, r, _)| {
            json!({"user": u, "prompt": {"id": p},
                   "candidates": [format!("img/{l}.png"), format!("img/{r}.png")]})
        })
        .collect();
    let before = versions(&store)["embeddings"];
    let rewards = score_input(&store, dir.path(), "paf-k2", &rows);
    assert_eq!(
        versions(&store)["embeddings"],
        before,
        "stored images are not embedded again"
    );
    let outcomes: Vec<(String, i64, f64)> = pairs
        .iter()
        .zip(&rewards)
        .map(|(p, r)| (p.0.clone(), p.4, r[0] - r[1]))
        .collect();
    let total = assert_matches_eval(&store, "paf-k2", "paf-test", &outcomes);
    assert!(
        total as f64 / pairs.len() as f64 > 0.8,
        "K = 2 separates the colour groups: {total} of {}",
        pairs.len()
    );

    // --candidate paths and --best: the argmax of the full list; a new file with the same
    // pixels as a stored image is embedded (once) to the stored image's reward.
    let (u0, p0) = (pairs[0].0.clone(), pairs[0].1.clone());
    let prompt_text = query(
        &store,
        &format!("SELECT text FROM prompts WHERE prompt_id = '{p0}'"),
    )[0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let three: Vec<String> = ids[..3]
        .iter()
        .map(|i| imgs.join(format!("{i}.png")).display().to_string())
        .collect();
    let copy = dir.path().join("copy.png");
    std::fs::write(&copy, reencoded(&bytes[&ids[0]])).unwrap();
    let copy_id = blake3::hash(&std::fs::read(&copy).unwrap())
        .to_hex()
        .to_string();
    let base: Vec<&str> = vec![
        "score",
        "--model",
        "paf-k2",
        "--user",
        &u0,
        "--prompt",
        &prompt_text,
        "--encoder-dir",
        enc,
    ];
    let mut args = base.clone();
    args.push("--json");
    for c in &three {
        args.extend(["--candidate", c.as_str()]);
    }
    args.extend(["--candidate", copy.to_str().unwrap()]);
    let count_copy = || {
        scalar(
            &store,
            &format!("SELECT count(*) FROM embeddings WHERE content_id = '{copy_id}'"),
        )
    };
    assert_eq!(count_copy(), 0);
    let all = palpipe(&store, &args).ok();
    assert_eq!(count_copy(), 1, "the new file is embedded and cached");
    let r: Vec<f64> = reward_lines(&all.stdout);
    assert_eq!(r.len(), 4);
    assert!(
        (r[3] - r[0]).abs() <= 1e-4 * (1.0 + r[0].abs()),
        "same pixels, same reward: {r:?}"
    );
    args.push("--best");
    let best = palpipe(&store, &args).ok();
    assert_eq!(count_copy(), 1, "embedded once");
    let best: Value = serde_json::from_str(best.stdout.trim()).unwrap();
    let argmax = (0..4).fold(0, |b, i| if r[i] > r[b] { i } else { b });
    assert_eq!(best["candidate"].as_u64(), Some(argmax as u64), "{r:?}");

    // An image that does not decode: exit 1 naming the file.
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n and then nothing of a PNG").unwrap();
    let mut args = base.clone();
    args.extend([
        "--candidate",
        &three[0],
        "--candidate",
        bad.to_str().unwrap(),
    ]);
    let r = palpipe(&store, &args).code(1);
    assert!(r.stderr.contains("broken.png"), "{}", r.stderr);

    // enroll a new user from image comparisons (files): two unseen users, one of each
    // colour group, placed from 20 comparisons each and scored on the rest of theirs.
    let unseen = query(
        &store,
        "SELECT p.user_id AS user_id, u.group_name AS g, p.prompt_id AS prompt_id, p.left_id AS left_id, p.right_id AS right_id, p.label AS label FROM pairs p JOIN users u ON p.user_id = u.user_id WHERE p.dataset = 'pick-a-filter' AND p.split = 'paf-unseen' ORDER BY p.user_id, p.pair_id",
    );
    let mut by_group: BTreeMap<String, String> = BTreeMap::new();
    for row in &unseen {
        by_group
            .entry(row["g"].as_str().unwrap().to_string())
            .or_insert_with(|| row["user_id"].as_str().unwrap().to_string());
    }
    assert_eq!(by_group.len(), 2, "both groups have unseen users");
    let mut right = 0usize;
    let mut scored = 0usize;
    let mut fitted: Vec<(Value, Vec<f64>)> = Vec::new();
    for (g, user) in &by_group {
        let mine: Vec<&Value> = unseen.iter().filter(|r| r["user_id"] == *user).collect();
        assert!(mine.len() >= 30, "{user}: {}", mine.len());
        let mut wanted: Vec<String> = mine
            .iter()
            .flat_map(|r| {
                [
                    r["left_id"].as_str().unwrap().to_string(),
                    r["right_id"].as_str().unwrap().to_string(),
                ]
            })
            .filter(|i| !imgs.join(format!("{i}.png")).exists())
            .collect();
        wanted.sort();
        wanted.dedup();
        if !wanted.is_empty() {
            for (id, b) in item_bytes(&store, &wanted) {
                std::fs::write(imgs.join(format!("{id}.png")), b).unwrap();
            }
        }
        let (fit, rest) = mine.split_at(20);
        let comps: String = fit
            .iter()
            .map(|r| {
                let (l, rr) = (r["left_id"].as_str().unwrap(), r["right_id"].as_str().unwrap());
                let (c, x) = if r["label"] == -1 { (l, rr) } else { (rr, l) };
                format!(
                    "{}\n",
                    json!({"prompt": {"id": r["prompt_id"]}, "chosen": format!("img/{c}.png"), "rejected": format!("img/{x}.png")})
                )
            })
            .collect();
        let f = dir.path().join(format!("enroll-{g}.jsonl"));
        std::fs::write(&f, comps).unwrap();
        let new_user = format!("new-{g}");
        let out = palpipe(
            &store,
            &[
                "enroll",
                "--model",
                "paf-k2",
                "--user",
                &new_user,
                "--comparisons",
                f.to_str().unwrap(),
                "--encoder-dir",
                enc,
                "--json",
            ],
        )
        .ok();
        let out: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert_eq!(out["comparisons"], 20, "{out}");
        assert_eq!(out["mixture"].as_array().unwrap().len(), 2, "{out}");
        let by_id: Vec<Value> = fit
            .iter()
            .map(|r| {
                let (l, rr) = (&r["left_id"], &r["right_id"]);
                let (c, x) = if r["label"] == -1 { (l, rr) } else { (rr, l) };
                json!({"prompt": {"id": r["prompt_id"]}, "chosen": {"id": c}, "rejected": {"id": x}})
            })
            .collect();
        let w: Vec<f64> = out["mixture"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        fitted.push((json!({"comparisons": by_id}), w));
        let rows: Vec<Value> = rest
            .iter()
            .map(|r| {
                json!({"user": new_user, "prompt": {"id": r["prompt_id"]}, "candidates": [
                    format!("img/{}.png", r["left_id"].as_str().unwrap()),
                    format!("img/{}.png", r["right_id"].as_str().unwrap())]})
            })
            .collect();
        let rw = score_input(&store, dir.path(), "paf-k2", &rows);
        for (r, w) in rest.iter().zip(&rw) {
            right += predicted(r["label"].as_i64().unwrap(), w[0] - w[1]) as usize;
            scored += 1;
        }
    }
    assert!(
        right as f64 / scored as f64 > 0.75,
        "enrolled from 20 image comparisons: {right} of {scored}"
    );

    // serve: images by content id (the rewards `score` gave) and inline; a broken inline
    // image is a 400 naming its candidate index and the server keeps serving. Without
    // --write-back the store's embeddings stay as they were.
    let embeddings_before = versions(&store)["embeddings"];
    let srv = start_server(&store, &["--model", "paf-k2", "--encoder-dir", enc]);
    let port = srv.port;
    healthy(port);
    for (i, (u, p, l, r, _)) in pairs.iter().enumerate().take(5) {
        let (st, v) = http(
            port,
            "POST",
            "/score",
            None,
            &json!({"user": u, "prompt": {"id": p}, "candidates": [{"id": l}, {"id": r}]})
                .to_string(),
        );
        assert_eq!(st, 200, "{v}");
        assert_close(
            &[rewards_of(&v)],
            &rewards[i..i + 1],
            1e-5,
            "serve vs score",
        );
    }
    let fresh = reencoded(&bytes[&ids[1]]);
    let fresh_id = blake3::hash(&fresh).to_hex().to_string();
    let (st, v) = http(
        port,
        "POST",
        "/score",
        None,
        &json!({"user": u0, "prompt": {"id": p0}, "candidates": [
            {"id": ids[1]}, {"image_base64": b64(&fresh)}]})
        .to_string(),
    );
    assert_eq!(st, 200, "{v}");
    let rw = rewards_of(&v);
    assert!(
        (rw[1] - rw[0]).abs() <= 1e-4 * (1.0 + rw[0].abs()),
        "inline copy, same reward: {rw:?}"
    );
    let (st, v) = http(
        port,
        "POST",
        "/score",
        None,
        &json!({"user": u0, "prompt": {"id": p0}, "candidates": [
            {"id": ids[1]}, {"id": ids[2]}, {"image_base64": b64(b"\x89PNG\r\n\x1a\n no")}]})
        .to_string(),
    );
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("candidates[2]"),
        "{v}"
    );
    let (st, v) = http(
        port,
        "POST",
        "/score",
        None,
        &json!({"user": u0, "prompt": {"id": p0}, "candidates": [{"image_base64": "not base64!"}]})
            .to_string(),
    );
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("candidates[0]"),
        "{v}"
    );
    healthy(port);
    // A file path over HTTP is refused (the server opens no file a client names).
    let (st, v) = http(
        port,
        "POST",
        "/score",
        None,
        &json!({"user": u0, "prompt": {"id": p0}, "candidates": [three[0]]}).to_string(),
    );
    assert_eq!(st, 400, "{v}");
    // The users enrolled by the CLI are served; a user enrolled over HTTP from image ids
    // gets the mixture the CLI fitted from the same comparisons as files.
    for (i, (body, w)) in fitted.iter().enumerate() {
        let (st, v) = http(
            port,
            "POST",
            &format!("/users/http-{i}/enroll"),
            None,
            &body.to_string(),
        );
        assert_eq!(st, 200, "{v}");
        let got: Vec<f64> = v["mixture"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_close(
            &[got],
            std::slice::from_ref(w),
            1e-5,
            "enrolled over HTTP vs the CLI",
        );
    }
    let (st, v) = http(
        port,
        "POST",
        "/score",
        None,
        &json!({"user": format!("new-{}", by_group.keys().next().unwrap()),
                 "prompt": {"id": p0}, "candidates": [{"id": ids[0]}]})
        .to_string(),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = http(port, "GET", "/models", None, "");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["models"][0]["cache"]["written_back"], 0, "{v}");
    let log = stop(srv);
    assert!(log.contains("POST /score 400"), "{log}");
    assert_eq!(
        versions(&store)["embeddings"],
        embeddings_before,
        "serve without --write-back leaves embeddings alone"
    );
    assert_eq!(
        scalar(
            &store,
            &format!("SELECT count(*) FROM embeddings WHERE content_id = '{fresh_id}'")
        ),
        0
    );
}

#[test]
fn serve_bounds_its_vector_cache_and_writes_back_only_when_asked_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = paf_store(dir.path());
    let enc = tiny_clip();
    let enc = enc.to_str().unwrap();
    let pairs = paf_test_pairs(&store);
    let rows: Vec<Value> = pairs
        .iter()
        .take(12)
        .map(|(u, p, l, r, _)| {
            json!({"user": u, "prompt": {"id": p}, "candidates": [{"id": l}, {"id": r}]})
        })
        .collect();
    let want = score_input(&store, dir.path(), "paf-k2", &rows);

    // A bound of 1,024 bytes (1/1024 MiB) holds four tiny-CLIP vectors (16 values: 64 B, a
    // 64-byte id and 96 B counted per entry): 12 requests of 3 vectors each go through it.
    let limit = 1.0 / 1024.0;
    let srv = start_server(
        &store,
        &[
            "--model",
            "paf-k2",
            "--encoder-dir",
            enc,
            "--cache-mib",
            &format!("{limit}"),
            "--max-comparisons",
            "3",
        ],
    );
    let port = srv.port;
    // Enrolment has its own limit, apart from --max-candidates (1024 here).
    let four =
        json!({"comparisons": vec![json!({"chosen": {"id": "a"}, "rejected": {"id": "b"}}); 4]});
    let (st, v) = http(port, "POST", "/users/x/enroll", None, &four.to_string());
    assert_eq!(st, 413, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("--max-comparisons"),
        "{v}"
    );
    let cache = |port: u16| {
        let (st, v) = http(port, "GET", "/models", None, "");
        assert_eq!(st, 200, "{v}");
        v["models"][0]["cache"].clone()
    };
    for round in 0..2 {
        for (i, row) in rows.iter().enumerate() {
            let (st, v) = http(port, "POST", "/score", None, &row.to_string());
            assert_eq!(st, 200, "{v}");
            assert_close(
                &[rewards_of(&v)],
                &want[i..i + 1],
                1e-5,
                &format!("round {round}, request {i}, after evictions"),
            );
            let c = cache(port);
            assert_eq!(c["limit_bytes"], 1024, "{c}");
            assert!(c["bytes"].as_u64().unwrap() <= 1024, "{c}");
            assert!(c["entries"].as_u64().unwrap() <= 4, "{c}");
        }
    }
    let c = cache(port);
    assert!(c["evictions"].as_u64().unwrap() > 0, "{c}");
    stop(srv);

    // --write-back: new vectors wait and are written in batches of --write-back-every, the
    // rest at shutdown: three requests with a new image each make two commits, not three.
    let ids: Vec<String> = pairs.iter().take(3).map(|p| p.2.clone()).collect();
    let bytes = item_bytes(&store, &ids);
    let before = versions(&store)["embeddings"];
    let srv = start_server(
        &store,
        &[
            "--model",
            "paf-k2",
            "--encoder-dir",
            enc,
            "--write-back",
            "--write-back-every",
            "2",
            "--write-back-secs",
            "600",
        ],
    );
    let port = srv.port;
    let mut fresh_ids = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let fresh = reencoded(&bytes[id]);
        fresh_ids.push(blake3::hash(&fresh).to_hex().to_string());
        let (st, v) = http(
            port,
            "POST",
            "/score",
            None,
            &json!({"user": pairs[0].0, "prompt": {"id": pairs[0].1}, "candidates": [
                {"id": id}, {"image_base64": b64(&fresh)}]})
            .to_string(),
        );
        assert_eq!(st, 200, "{v}");
        let rw = rewards_of(&v);
        assert!(
            (rw[1] - rw[0]).abs() <= 1e-4 * (1.0 + rw[0].abs()),
            "request {i}: {rw:?}"
        );
    }
    let c = cache(port);
    assert_eq!(
        (c["written_back"].as_u64(), c["pending_write_back"].as_u64()),
        (Some(2), Some(1)),
        "{c}"
    );
    assert_eq!(
        versions(&store)["embeddings"],
        (before.0 + 1, before.1 + 2),
        "one commit of two vectors while serving"
    );
    stop(srv);
    assert_eq!(
        versions(&store)["embeddings"],
        (before.0 + 2, before.1 + 3),
        "the waiting vector is written at shutdown"
    );
    let stored = stored_vectors(&store);
    for id in &fresh_ids {
        assert!(stored.contains_key(id), "{id} written back");
    }
}
