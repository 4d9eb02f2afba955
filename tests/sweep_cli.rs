//! Sweeps (`foreach:`) through the real binary: the shipped pipelines, rewritten with sweeps,
//! plan the same stages as the hand-written files they replaced (kept in
//! `tests/fixtures/hand-written-pipelines`, with their paths written relative to that folder
//! and the `fixtures` stage the image pipelines gained); `--dry-run` lists expanded names; `--set` names
//! one expansion or a whole sweep; mistakes point at the line of the stage as written.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

fn dry_run(store: &Path, pipeline: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["run", pipeline.to_str().unwrap(), "--dry-run", "--json"];
    args.extend_from_slice(extra);
    let r = palpipe(store, &args).ok();
    serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// (name, kind, fingerprint) of each planned stage.
fn planned(run: &Value) -> Vec<(String, String, String)> {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let f = |k: &str| s[k].as_str().unwrap().to_string();
            (f("name"), f("kind"), f("fingerprint"))
        })
        .collect()
}

/// Kinds whose parameters hold input paths (another change may move those lines): their
/// names and kinds are compared, not their fingerprints.
const PATH_KINDS: [&str; 5] = ["synthetic", "persona", "polis", "pickapic", "embed"];

fn pickapic_fixtures(dir: &Path) -> PathBuf {
    let out = dir.join("fx");
    palpipe_raw(&[
        "fixtures",
        "pickapic",
        "--out",
        out.to_str().unwrap(),
        "--rows",
        "80",
        "--leaks",
        "4",
        "--heavy-users",
        "0",
    ])
    .ok();
    out
}

#[test]
fn shipped_pipelines_plan_the_stages_they_used_to_spell_out() {
    let dir = tempfile::tempdir().unwrap();
    let fx = pickapic_fixtures(dir.path());
    let set_data = format!("ingest.data_dir={}", fx.display());
    let old_dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hand-written-pipelines");
    for name in [
        "persona",
        "polis",
        "synthetic",
        "demo",
        "leakage-split",
        "pick-a-filter",
    ] {
        let extra: Vec<&str> = if name == "leakage-split" || name == "pick-a-filter" {
            vec!["--set", &set_data]
        } else {
            Vec::new()
        };
        let old = old_dir.join(format!("{name}.yaml"));
        let new = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("pipelines/{name}.yaml"));
        let new_text = std::fs::read_to_string(&new).unwrap();
        assert!(new_text.contains("foreach:"), "{name}.yaml has no sweep");
        let want = planned(&dry_run(
            &dir.path().join(format!("{name}-old")),
            &old,
            &extra,
        ));
        let got = planned(&dry_run(
            &dir.path().join(format!("{name}-new")),
            &new,
            &extra,
        ));
        let names = |v: &[(String, String, String)]| -> Vec<(String, String)> {
            v.iter().map(|(n, k, _)| (n.clone(), k.clone())).collect()
        };
        assert_eq!(names(&got), names(&want), "{name}: stage names and kinds");
        for (g, w) in got.iter().zip(&want) {
            if !PATH_KINDS.contains(&w.1.as_str()) {
                assert_eq!(g.2, w.2, "{name}: stage '{}' is not the same stage", w.0);
            }
        }
    }
    // The persona file spells out 12 trains and 12 evals; count them in the old text.
    let old = std::fs::read_to_string(old_dir.join("persona.yaml")).unwrap();
    let trains = old.matches("kind: train").count();
    let evals = old.matches("kind: eval").count();
    assert_eq!((trains, evals), (12, 12));
}

#[test]
fn dry_run_lists_the_expanded_stages() {
    let dir = tempfile::tempdir().unwrap();
    let r = palpipe(
        &new_store(dir.path(), "s"),
        &["run", "pipelines/persona.yaml", "--dry-run"],
    )
    .ok();
    for k in 1..=6 {
        for name in [
            format!("pal-b-k{k}"),
            format!("pal-a-k{k}"),
            format!("eval-k{k}"),
            format!("eval-a-k{k}"),
        ] {
            let line = r
                .stdout
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("no line for {name}:\n{}", r.stdout));
            assert!(line.contains("planned"), "{line}");
        }
    }
    assert!(!r.stdout.contains("${"), "{}", r.stdout);
}

#[test]
fn set_names_one_expansion_or_the_whole_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let p = Path::new("pipelines/synthetic.yaml");
    let base = planned(&dry_run(&dir.path().join("a"), p, &[]));
    let fp = |v: &[(String, String, String)], n: &str| -> String {
        v.iter().find(|s| s.0 == n).unwrap().2.clone()
    };
    let trains = ["pal-a-k1", "pal-a-k3", "pal-b-k3"];

    // One expansion.
    let one = planned(&dry_run(
        &dir.path().join("b"),
        p,
        &["--set", "pal-a-k3.seed=5"],
    ));
    for t in trains {
        assert_eq!(fp(&one, t) != fp(&base, t), t == "pal-a-k3", "{t}");
    }
    // The same change written on the template reaches every expansion.
    let all = planned(&dry_run(
        &dir.path().join("c"),
        p,
        &["--set", "pal-${m}-k${k}.seed=5"],
    ));
    for t in trains {
        assert_ne!(fp(&all, t), fp(&base, t), "{t}");
    }
    assert_eq!(fp(&all, "pal-a-k3"), fp(&one, "pal-a-k3"));
    // A name neither written nor expanded is refused, with a hint.
    let r = palpipe(
        &dir.path().join("d"),
        &[
            "run",
            "pipelines/synthetic.yaml",
            "--dry-run",
            "--set",
            "pal-a-k2.seed=1",
        ],
    )
    .code(2);
    assert!(r.stderr.contains("names stage 'pal-a-k2'"), "{}", r.stderr);
    assert!(r.stderr.contains("hint:"), "{}", r.stderr);
}

/// 1-based line of the first line of `text` equal to `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l == needle)
        .unwrap_or_else(|| panic!("no line {needle:?}"))
        + 1
}

const HEAD: &str = "name: t\nsplits:\n  s: \"SELECT * FROM pairs\"\nstages:\n  - name: first\n    kind: train\n    model: pal-b\n    train: s\n";

fn refused(dir: &Path, file: &str, text: &str) -> String {
    let p = write_pipeline(dir, file, text);
    palpipe(
        &new_store(dir, "store"),
        &["run", p.to_str().unwrap(), "--dry-run"],
    )
    .code(2)
    .stderr
}

#[test]
fn sweep_mistakes_point_at_the_stage_as_written() {
    let dir = tempfile::tempdir().unwrap();

    // A placeholder that names no swept key.
    let text = format!(
        "{HEAD}  - name: pal-k${{k}}\n    kind: train\n    foreach: {{k: [1, 2]}}\n    model: pal-b\n    k: ${{k}}\n    train: s-${{split}}\n"
    );
    let err = refused(dir.path(), "unknown.yaml", &text);
    let line = line_of(&text, "    train: s-${split}");
    assert!(err.contains(&format!("unknown.yaml:{line}:")), "{err}");
    assert!(
        err.contains("'${split}'") && err.contains("keys: k"),
        "{err}"
    );

    // Two expansions with one name: the second is reported at the name's line, with its
    // combination.
    let text = format!(
        "{HEAD}  - name: pal-k${{k}}\n    kind: train\n    foreach: {{m: [pal-a, pal-b], k: [1, 2]}}\n    model: ${{m}}\n    k: ${{k}}\n    train: s\n"
    );
    let err = refused(dir.path(), "dup.yaml", &text);
    let line = line_of(&text, "  - name: pal-k${k}");
    assert!(
        err.contains(&format!("dup.yaml:{line}:"))
            && err.contains("duplicate stage name 'pal-k1'")
            && err.contains("sweep: m=pal-b, k=1"),
        "{err}"
    );
    assert!(err.contains("first used by the stage at line"), "{err}");

    // A swept value of the wrong type for the key it fills.
    let text = format!(
        "{HEAD}  - name: pal-k${{k}}\n    kind: train\n    foreach: {{k: [1, two, 3]}}\n    model: pal-b\n    k: ${{k}}\n    train: s\n"
    );
    let err = refused(dir.path(), "type.yaml", &text);
    let line = line_of(&text, "    k: ${k}");
    assert!(err.contains(&format!("type.yaml:{line}:")), "{err}");
    assert!(
        err.contains("stage 'pal-ktwo'") && err.contains("sweep: k=two"),
        "{err}"
    );
    assert!(
        !err.contains("pal-k1'") && !err.contains("pal-k3'"),
        "{err}"
    );

    // A name without a placeholder.
    let text = format!(
        "{HEAD}  - name: pal\n    kind: train\n    foreach: {{k: [1, 2]}}\n    model: pal-b\n    k: ${{k}}\n    train: s\n"
    );
    let err = refused(dir.path(), "name.yaml", &text);
    let line = line_of(&text, "  - name: pal");
    assert!(err.contains(&format!("name.yaml:{line}:")), "{err}");
    assert!(err.contains("no placeholder in its name"), "{err}");
}
