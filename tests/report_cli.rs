//! `palpipe report` through the real binary on a small synthetic store.

mod common;

use std::path::Path;

use common::*;

const MODELS: [&str; 4] = ["k1", "k3", "b2", "pop"];

/// The accuracy as `palpipe eval` prints it, e.g. `87.33%`.
fn printed_accuracy(store: &Path, model: &str) -> String {
    let r = palpipe(store, &["eval", "--model", model, "--split", "te"]).ok();
    let rest = r
        .stdout
        .split("accuracy ")
        .nth(1)
        .unwrap_or_else(|| panic!("no accuracy in {}", r.stdout));
    rest.split_whitespace().next().unwrap().to_string()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Checks the SVG looks like one well-formed document and returns its number of points.
fn svg_points(p: &Path) -> usize {
    let s = read(p);
    assert!(
        s.starts_with("<svg"),
        "{} does not start with <svg",
        p.display()
    );
    assert!(
        s.trim_end().ends_with("</svg>"),
        "{} is not closed",
        p.display()
    );
    assert_eq!(s.matches("<svg").count(), 1);
    assert_eq!(
        s.matches('<').count(),
        s.matches('>').count(),
        "unbalanced tags"
    );
    assert!(s.contains("rotate(-90"), "no y label in {}", p.display());
    assert!(
        s.contains("font-weight=\"bold\""),
        "no title in {}",
        p.display()
    );
    s.matches("<circle class=\"point\"").count()
}

fn check_report(out: &Path, accuracies: &[(String, String)]) {
    let md = read(&out.join("report.md"));
    for (model, acc) in accuracies {
        assert!(
            md.contains(&format!("| {model} |")),
            "report lacks model {model}:\n{md}"
        );
        assert!(
            md.contains(acc.as_str()),
            "report lacks {model}'s accuracy {acc}:\n{md}"
        );
    }
    for stage in ["data", "e1", "ad"] {
        assert!(
            md.contains(&format!("| {stage} |")),
            "report lacks stage {stage}"
        );
    }
    // three PAL models evaluated on te (the popularity baseline is a line, not a point)
    let k = out.join("accuracy-vs-k-te.svg");
    assert_eq!(svg_points(&k), 3);
    let ks = read(&k);
    assert!(ks.contains("K (number of prototypes)"));
    assert_eq!(ks.matches("class=\"baseline\"").count(), 1);
    for kind in ["pal-a", "pal-b", "popularity"] {
        assert!(ks.contains(kind), "legend lacks {kind}");
    }
    // adaptation at 0 and 10 shots
    let a = out.join("adapt-un.svg");
    assert_eq!(svg_points(&a), 2);
    assert!(read(&a).contains("zero-shot"));
    assert!(md.contains("accuracy-vs-k-te.svg") && md.contains("adapt-un.svg"));
    // d = 2 PAL-A models get a prototype plot: one point per seen user (30)
    for m in ["k1", "k3"] {
        let p = out.join(format!("prototypes-{m}.svg"));
        assert_eq!(svg_points(&p), 30, "{}", p.display());
        assert!(md.contains(&format!("prototypes-{m}.svg")));
    }
    assert!(
        !out.join("prototypes-b2.svg").exists(),
        "PAL-B has no input-space prototypes"
    );
}

fn pipeline() -> String {
    synth_pal_pipeline(
        "rep",
        6,
        &[
            "{name: b2, kind: train, model: pal-b, k: 2, train: tr, val: va, encoder: synthetic-identity, config: {d: 2}, training: {epochs: 20}}",
            "{name: pop, kind: train, model: popularity, train: tr}",
            "{name: e1, kind: eval, model: k1, split: te}",
            "{name: e3, kind: eval, model: k3, split: te}",
            "{name: eb, kind: eval, model: b2, split: te}",
            "{name: ep, kind: eval, model: pop, split: te}",
            "{name: ad, kind: adapt, model: k3, users: un, shots: [0, 10]}",
        ],
        &["un: \"SELECT * FROM pairs WHERE split = 'unseen'\""],
    )
}

#[test]
fn report_covers_the_runs_models_plots_and_stages() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = write_pipeline(dir.path(), "p.yaml", &pipeline());
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    let accuracies: Vec<(String, String)> = MODELS
        .iter()
        .map(|m| (m.to_string(), printed_accuracy(&store, m)))
        .collect();

    let out = dir.path().join("out");
    let r = palpipe(
        &store,
        &["report", "--run", "latest", "--out", out.to_str().unwrap()],
    )
    .ok();
    assert!(r.stdout.contains("report.md"), "{}", r.stdout);
    check_report(&out, &accuracies);

    // By id, too.
    let first = query(&store, "SELECT run_id FROM runs")[0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();

    // A rerun skips every stage; its report still covers the models trained before.
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    let out2 = dir.path().join("out2");
    palpipe(&store, &["report", "--out", out2.to_str().unwrap()]).ok();
    check_report(&out2, &accuracies);
    let md2 = read(&out2.join("report.md"));
    assert!(md2.contains("skipped"), "{md2}");
    assert!(
        !md2.contains(&format!("`{first}`")),
        "latest must be the rerun"
    );
    let out3 = dir.path().join("out3");
    palpipe(
        &store,
        &["report", "--run", &first, "--out", out3.to_str().unwrap()],
    )
    .ok();
    assert!(read(&out3.join("report.md")).contains(&format!("`{first}`")));

    // An unknown run id is a usage error that lists the known ones.
    let r = palpipe(
        &store,
        &[
            "report",
            "--run",
            "nope-1",
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ],
    )
    .code(2);
    assert!(r.stderr.contains("nope-1"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&first),
        "known runs not listed: {}",
        r.stderr
    );
    assert!(
        !dir.path().join("x").exists(),
        "nothing written on a usage error"
    );
}

#[test]
fn report_on_a_store_without_runs_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    // An existing, empty store (a missing one is 'no store at …').
    std::fs::create_dir(&store).unwrap();
    let out = dir.path().join("out");
    let r = palpipe(&store, &["report", "--out", out.to_str().unwrap()]).code(2);
    assert!(r.stderr.contains("no runs"), "{}", r.stderr);
    let r = palpipe(
        &store,
        &["report", "--run", "x-1", "--out", out.to_str().unwrap()],
    )
    .code(2);
    assert!(r.stderr.contains("none yet"), "{}", r.stderr);
    assert!(!out.exists());
}
