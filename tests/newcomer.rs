//! A newcomer runs the main job as written (issue 17): shipped pipelines run from any
//! working directory (their relative paths follow the pipeline file, `--set` paths follow
//! the shell), make their own Pick-a-Pic stand-ins, and are found by name. Expected counts
//! come from the fixtures' own manifest.json, not from palpipe's output.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs palpipe with `args` in folder `cwd` (no PALPIPE_STORE from the environment).
fn palpipe_in(cwd: &Path, args: &[&str]) -> Run {
    let o = bin()
        .args(args)
        .current_dir(cwd)
        .env_remove("PALPIPE_STORE")
        .output()
        .expect("run palpipe");
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn stage<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage '{name}' in {run}"))
}

#[test]
fn leakage_split_runs_from_a_folder_outside_the_repository_with_nothing_made_first() {
    let work = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let store = elsewhere.path().join("store");
    let pipeline = repo().join("pipelines/leakage-split.yaml");
    let args = [
        "run",
        pipeline.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        // Relative to the shell's folder (`work`), not to the pipeline file.
        "--set",
        "fixtures.out=fx",
        "--set",
        "ingest.data_dir=fx",
        "--json",
        "--quiet",
    ];
    assert!(!work.path().join("fx").exists());
    let r = palpipe_in(work.path(), &args).ok();
    let run: Value = serde_json::from_str(r.stdout.trim()).unwrap();

    // The fixtures stage wrote the shards into work/fx; the expected counts are its manifest's.
    let manifest_path = work.path().join("fx/manifest.json");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let (leak, clean) = (
        manifest["v2_leakage"].as_i64().unwrap(),
        manifest["v2_no_leakage"].as_i64().unwrap(),
    );
    assert!(leak > 0 && clean > 0, "{manifest}");
    assert_eq!(stage(&run, "fixtures")["status"], "done");
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM pairs WHERE split = 'v2-leakage'"
        ),
        leak
    );
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM pairs WHERE split = 'v2-no-leakage'"
        ),
        clean
    );
    // The embed stage found ../tests/fixtures/tiny_clip relative to the pipeline file.
    assert_eq!(stage(&run, "embed")["status"], "done");
    assert_eq!(stage(&run, "eval-no-leakage")["status"], "done");

    // Again, with the fixtures stage forced: the shards are present, so it writes nothing,
    // and the ingest, whose inputs did not change, is skipped.
    let before = std::fs::metadata(&manifest_path)
        .unwrap()
        .modified()
        .unwrap();
    let text_before = std::fs::read(&manifest_path).unwrap();
    let mut again = args.to_vec();
    again.extend(["--force", "fixtures"]);
    let r = palpipe_in(work.path(), &again).ok();
    let run: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let fx = stage(&run, "fixtures");
    assert_eq!(fx["status"], "done");
    assert!(
        fx["summary"].as_str().unwrap().contains("nothing written"),
        "{fx}"
    );
    assert_eq!(
        std::fs::metadata(&manifest_path)
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
    assert_eq!(std::fs::read(&manifest_path).unwrap(), text_before);
    assert_eq!(stage(&run, "ingest")["status"], "skipped");
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM pairs WHERE split = 'v2-leakage'"
        ),
        leak
    );

    // Shards made with other parameters are not passed off as this stage's: a clear failure,
    // the shards and the store untouched.
    let mut other = args.to_vec();
    other.extend(["--set", "fixtures.seed=99"]);
    let r = palpipe_in(work.path(), &other).code(1);
    assert!(
        r.stderr.contains("made with other parameters") && r.stderr.contains("delete that folder"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(&manifest_path).unwrap(), text_before);
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM pairs WHERE split = 'v2-leakage'"
        ),
        leak
    );
}

#[test]
fn a_pipeline_name_runs_the_shipped_file_of_that_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let expected = repo().join("pipelines/leakage-split.yaml");
    for name in ["leakage-split", "leakage-split.yaml"] {
        let r = palpipe_in(
            &repo(),
            &["run", name, "--dry-run", "--store", store.to_str().unwrap()],
        )
        .ok();
        assert!(
            r.stderr
                .contains(&format!("running {}", expected.display())),
            "{}",
            r.stderr
        );
        assert!(
            r.stdout.contains("pipeline 'leakage-split'"),
            "{}",
            r.stdout
        );
    }
    // From a folder below the project root, too.
    let r = palpipe_in(
        &repo().join("src"),
        &[
            "run",
            "leakage-split",
            "--dry-run",
            "--store",
            store.to_str().unwrap(),
        ],
    )
    .ok();
    assert!(
        r.stdout.contains("pipeline 'leakage-split'"),
        "{}",
        r.stdout
    );
}

#[test]
fn an_unknown_pipeline_name_lists_the_shipped_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let r = palpipe_in(
        &repo(),
        &[
            "run",
            "no-such-pipeline",
            "--store",
            store.to_str().unwrap(),
        ],
    )
    .code(2);
    assert!(r.stderr.contains("no-such-pipeline"), "{}", r.stderr);
    let mut shipped = 0;
    for e in std::fs::read_dir(repo().join("pipelines")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            assert!(
                r.stderr.contains(&stem),
                "{stem} missing from: {}",
                r.stderr
            );
            shipped += 1;
        }
    }
    assert!(shipped >= 2);
    assert!(!store.exists(), "a failed lookup must not create a store");
}

#[test]
fn a_missing_pickapic_folder_names_the_command_that_makes_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_pipeline(
        dir.path(),
        "p.yaml",
        "name: p\nstages:\n  - name: ingest\n    kind: pickapic\n    data_dir: shards\n",
    );
    let r = palpipe(&dir.path().join("s"), &["run", p.to_str().unwrap()]).code(2);
    // Relative to the pipeline file's folder, whatever the test's working directory.
    let shards = dir.path().join("shards");
    assert!(
        r.stderr.contains(&format!("input '{}", shards.display())),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!(
            "hint: for stand-in shards run 'palpipe fixtures pickapic --out {}'",
            shards.display()
        )),
        "{}",
        r.stderr
    );
}

#[test]
fn run_help_states_the_path_rule_and_lists_every_kind() {
    let r = palpipe_in(&repo(), &["run", "--help"]).ok();
    assert!(
        r.stdout
            .contains("relative to the folder holding that file"),
        "{}",
        r.stdout
    );
    // The kinds the README's table names, each on the help's list.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut kinds = 0;
    for line in readme.lines().filter(|l| l.starts_with("| `")) {
        for kind in line.split('|').nth(1).unwrap().split(',') {
            let kind = kind.trim().trim_matches('`');
            assert!(
                r.stdout.contains(&format!("  {kind} ")),
                "{kind}: {}",
                r.stdout
            );
            kinds += 1;
        }
    }
    assert!(kinds >= 11, "{kinds}");
}
