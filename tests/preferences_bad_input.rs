//! Bad input to the `preferences` stage (`palpipe ingest`): each case exits non-zero with
//! one message naming the file, the row or line and the column, and writes nothing (every
//! table keeps its version and rows).

mod common;

use std::path::{Path, PathBuf};

use common::{new_store, palpipe, versions, write_pipeline};
use serde_json::{json, Value};

fn write_jsonl(path: &Path, rows: &[Value]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// TL;DR-like rows: `worker`, `choice`, `summaries[2].text`, `info.post`.
fn tldr_rows(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "info": {"id": format!("t3_{i}"), "post": format!("post {i}")},
                "summaries": [{"text": format!("a{i}"), "note": null}, {"text": format!("b{i}"), "note": null}],
                "choice": i % 2,
                "worker": format!("w{}", i % 3),
            })
        })
        .collect()
}

const TLDR: [&str; 10] = [
    "--column",
    "user=worker",
    "--column",
    "left=summaries.0.text",
    "--column",
    "right=summaries.1.text",
    "--column",
    "label=choice",
    "--column",
    "prompt=info.post",
];

/// Every data table's version and row count (`runs`, the log of runs, records a failed run
/// too, by design).
fn data_tables(store: &Path) -> std::collections::BTreeMap<String, (i64, i64)> {
    let mut v = versions(store);
    v.remove("runs");
    v
}

/// A store holding one good dataset, and its tables' versions and row counts.
fn store_with_data(dir: &Path) -> (PathBuf, std::collections::BTreeMap<String, (i64, i64)>) {
    let good = dir.join("good.jsonl");
    write_jsonl(&good, &tldr_rows(6));
    let store = new_store(dir, "store");
    let mut args = vec!["ingest", good.to_str().unwrap(), "--dataset", "good"];
    args.extend_from_slice(&TLDR);
    palpipe(&store, &args).ok();
    let v = data_tables(&store);
    assert_eq!(v["pairs"].1, 6);
    (store, v)
}

/// Runs `palpipe ingest FILE --dataset bad ARGS`, expects failure, and that the store is
/// unchanged; returns stderr.
fn fails(dir: &Path, file: &Path, extra: &[&str]) -> String {
    let (store, before) = store_with_data(dir);
    let mut args = vec!["ingest", file.to_str().unwrap(), "--dataset", "bad"];
    args.extend_from_slice(extra);
    let r = palpipe(&store, &args);
    assert_ne!(r.code, 0, "expected a failure\n{}\n{}", r.stdout, r.stderr);
    assert_eq!(
        data_tables(&store),
        before,
        "the store changed:\n{}",
        r.stderr
    );
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(!all.contains(".rs:"), "a Rust source path in: {all}");
    all
}

fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "missing '{p}' in:\n{msg}");
    }
}

#[test]
fn a_mapped_column_that_does_not_exist_lists_the_columns_and_the_closest() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.jsonl");
    write_jsonl(&file, &tldr_rows(4));
    let mut args = TLDR.to_vec();
    args[1] = "user=wroker";
    let msg = fails(dir.path(), &file, &args);
    has(
        &msg,
        &[
            "data.jsonl",
            "'wroker'",
            "mapped to user",
            "did you mean 'worker'",
            "summaries",
        ],
    );
}

#[test]
fn a_label_outside_its_convention_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.jsonl");
    let mut rows = tldr_rows(5);
    rows[3]["choice"] = json!(2);
    write_jsonl(&file, &rows);
    let msg = fails(dir.path(), &file, &TLDR);
    has(
        &msg,
        &[
            "data.jsonl",
            "line 4",
            "column 'choice'",
            "2",
            "label_convention",
        ],
    );
}

#[test]
fn a_json_line_that_does_not_parse_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.jsonl");
    let mut lines: Vec<String> = tldr_rows(5).iter().map(|r| r.to_string()).collect();
    lines[3] = lines[3].replacen('{', "{\"broken\": ,", 1); // the fourth line
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let msg = fails(dir.path(), &file, &TLDR);
    has(&msg, &["data.jsonl:4", "not a valid JSON line"]);
}

#[test]
fn a_nested_path_missing_in_some_rows_is_counted_or_an_error_when_strict() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.jsonl");
    let mut rows = tldr_rows(6);
    rows[1]["info"] = json!({"id": "t3_1"});
    rows[4]["info"] = json!({"id": "t3_4"});
    write_jsonl(&file, &rows);
    // Counted: 2 rows dropped, the first named.
    let store = dir.path().join("ok");
    let mut args = vec!["ingest", file.to_str().unwrap(), "--dataset", "d"];
    args.extend_from_slice(&TLDR);
    let r = palpipe(&store, &args).ok();
    has(&r.stdout, &["2 missing 'info.post'", "data.jsonl line 2"]);
    assert_eq!(common::scalar(&store, "SELECT count(*) FROM pairs"), 4);
    // Strict: an error naming the first such row.
    let mut strict = TLDR.to_vec();
    strict.push("--strict");
    let msg = fails(&dir.path().join("strict"), &file, &strict);
    has(
        &msg,
        &["data.jsonl", "line 2", "column 'info.post'", "missing"],
    );
}

#[test]
fn an_image_path_that_does_not_exist_names_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imgs.csv");
    std::fs::create_dir_all(dir.path().join("img")).unwrap();
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(2, 2, image::Rgb([1, 2, 3]))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    std::fs::write(dir.path().join("img/a.png"), png.get_ref()).unwrap();
    let mut png2 = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(2, 2, image::Rgb([9, 9, 9]))
        .write_to(&mut png2, image::ImageFormat::Png)
        .unwrap();
    std::fs::write(dir.path().join("img/b.png"), png2.get_ref()).unwrap();
    std::fs::write(
        &file,
        "user,good,bad\nu1,img/a.png,img/b.png\nu2,img/b.png,img/missing.png\n",
    )
    .unwrap();
    let msg = fails(
        dir.path(),
        &file,
        &[
            "--items",
            "image",
            "--column",
            "user=user",
            "--column",
            "chosen=good",
            "--column",
            "rejected=bad",
        ],
    );
    has(
        &msg,
        &["imgs.csv", "line 3", "column 'rejected'", "missing.png"],
    );
}

#[test]
fn a_file_that_is_not_its_extensions_format_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.parquet");
    std::fs::write(&file, "worker,choice\nw1,0\n").unwrap();
    let msg = fails(dir.path(), &file, &TLDR);
    has(&msg, &["data.parquet", "is not a parquet file", "PAR1"]);
    let gz = dir.path().join("plain.jsonl.gz");
    std::fs::write(&gz, "{\"worker\": \"w\"}\n").unwrap();
    let msg = fails(&dir.path().join("gz"), &gz, &TLDR);
    has(&msg, &["plain.jsonl.gz", "is not a gzip file"]);
}

#[test]
fn mixed_types_in_a_column_across_files_name_both() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("parts");
    write_jsonl(&data.join("a.jsonl"), &tldr_rows(3));
    let mut rows = tldr_rows(3);
    for r in &mut rows {
        r["choice"] = json!(r["choice"].to_string());
    }
    write_jsonl(&data.join("b.jsonl"), &rows);
    let msg = fails(dir.path(), &data, &TLDR);
    has(
        &msg,
        &[
            "column 'choice'",
            "a.jsonl",
            "line 1",
            "b.jsonl",
            "a number",
            "a string",
        ],
    );
}

#[test]
fn rows_without_a_user_column_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.jsonl");
    write_jsonl(&file, &tldr_rows(3));
    let (store, before) = store_with_data(dir.path());
    let r = palpipe(
        &store,
        &[
            "ingest",
            file.to_str().unwrap(),
            "--dataset",
            "x",
            "--column",
            "left=summaries.0.text",
            "--column",
            "right=summaries.1.text",
            "--column",
            "label=choice",
        ],
    )
    .code(2);
    has(&r.stderr, &["--column user=", "constant"]);
    assert_eq!(data_tables(&store), before);
}

#[test]
fn a_row_without_a_user_id_is_an_error_naming_its_line() {
    // A null user on line 3; then a row whose user key is absent on line 2.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.jsonl");
    let mut rows = tldr_rows(5);
    rows[2]["worker"] = Value::Null;
    write_jsonl(&file, &rows);
    let msg = fails(dir.path(), &file, &TLDR);
    has(
        &msg,
        &[
            "data.jsonl",
            "line 3",
            "column 'worker'",
            "no user id",
            "{user: {constant: NAME}}",
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.jsonl");
    let mut rows = tldr_rows(5);
    rows[1].as_object_mut().unwrap().remove("worker");
    write_jsonl(&file, &rows);
    let msg = fails(dir.path(), &file, &TLDR);
    has(
        &msg,
        &[
            "data.jsonl",
            "line 2",
            "column 'worker'",
            "'worker' is missing",
        ],
    );
}

#[test]
fn a_json_array_read_element_by_element_names_the_element_in_errors() {
    // One element per line after the opening bracket: element n is on line n + 1.
    let array = |rows: &[String]| format!("[\n{}\n]\n", rows.join(",\n"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.json");
    let mut rows = tldr_rows(6);
    rows[3]["choice"] = json!(2);
    let text: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    std::fs::write(&file, array(&text)).unwrap();
    let msg = fails(dir.path(), &file, &TLDR);
    has(
        &msg,
        &[
            "data.json",
            "element 4",
            "column 'choice'",
            "label_convention",
        ],
    );

    // A syntax error inside the third element: its line and the element.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.json");
    let mut text: Vec<String> = tldr_rows(6).iter().map(|r| r.to_string()).collect();
    text[2] = text[2].replacen('{', "{\"broken\": ,", 1);
    std::fs::write(&file, array(&text)).unwrap();
    let msg = fails(dir.path(), &file, &TLDR);
    has(&msg, &["data.json:4", "in element 3"]);
}

/// A CSV with Windows line ends (as spreadsheets export it) and a blank line: the error names
/// the line an editor shows (the csv reader alone numbers such rows one line too low).
#[test]
fn a_row_of_a_windows_csv_is_named_by_its_editor_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prefs.csv");
    // Line 1 header, 2–3 rows, 4 blank, 5 a row, 6 the row without a user.
    std::fs::write(
        &file,
        "worker,prompt,chosen,rejected\r\nw1,p1,a,b\r\nw2,p2,c,d\r\n\r\nw3,p3,e,f\r\n,p4,g,h\r\n",
    )
    .unwrap();
    let msg = fails(
        dir.path(),
        &file,
        &[
            "--column",
            "user=worker",
            "--column",
            "prompt=prompt",
            "--column",
            "chosen=chosen",
            "--column",
            "rejected=rejected",
        ],
    );
    has(
        &msg,
        &["prefs.csv", "line 6,", "column 'worker'", "no user id"],
    );
}

/// `palpipe ingest` has no pipeline file: a problem with its flags names the flag (or the
/// PATH argument), not a line of a file that does not exist.
#[test]
fn ingest_flag_errors_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prefs.csv");
    std::fs::write(&file, "worker,chosen,rejected\nw1,a,b\n").unwrap();
    let store = dir.path().join("st");
    let f = file.to_str().unwrap();
    let cases: [(&[&str], &[&str]); 3] = [
        (
            &["ingest", f, "--dataset", "d", "--column", "usr=worker"],
            &["--column usr=…:", "unknown column key 'usr'"],
        ),
        (
            &[
                "ingest",
                f,
                "--dataset",
                "d",
                "--column",
                "user=worker",
                "--column",
                "left=chosen",
                "--column",
                "right=rejected",
                "--column",
                "label=worker",
                "--label-convention",
                "sideways",
            ],
            &["--label-convention:", "sideways"],
        ),
        (
            &[
                "ingest",
                "nothere.csv",
                "--dataset",
                "d",
                "--column",
                "user=worker",
                "--column",
                "chosen=chosen",
                "--column",
                "rejected=rejected",
            ],
            &["PATH:", "nothere.csv", "does not exist"],
        ),
    ];
    for (args, want) in cases {
        let r = palpipe(&store, args);
        assert_eq!(r.code, 2, "{args:?}: a usage error\n{}", r.stderr);
        has(&r.stderr, want);
        assert!(!r.stderr.contains("palpipe-ingest"), "{}", r.stderr);
        assert!(!store.exists(), "{args:?}: no store is created");
    }
}

/// `--dry-run` reads each file's columns (a CSV header, the first JSON line; never the rows
/// past it) and refuses a mapping that names a column no file has, as the run would, naming
/// the file, the column, what it is mapped to and the closest name; it writes nothing (no
/// store is made). `--set STAGE.columns.KEY=…` changes that one column of a pipeline's
/// mapping, and the corrected dry run plans the stage. The failed stage's error is printed
/// once, on stderr; stdout's table points there.
#[test]
fn a_dry_run_checks_each_files_columns_against_the_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("data").join("a.csv");
    std::fs::create_dir_all(csv.parent().unwrap()).unwrap();
    // The second data row is broken past the header: a dry run never reaches it.
    std::fs::write(&csv, "rater,good,bad,csv_only\nr1,x,y,z\n\"unterminated\n").unwrap();
    let jsonl = dir.path().join("data").join("b.jsonl");
    write_jsonl(
        &jsonl,
        &[json!({"rater": "r2", "good": "u", "bad": "v", "extra": 1})],
    );
    let store = dir.path().join("st");
    let cols = [
        "--column",
        "user=rater",
        "--column",
        "chosen=good",
        "--column",
    ];
    let ingest = |file: &Path, rejected: &str| {
        let mut args = vec![
            "ingest",
            file.to_str().unwrap(),
            "--dataset",
            "d",
            "--dry-run",
        ];
        args.extend_from_slice(&cols);
        args.push(rejected);
        palpipe(&store, &args)
    };
    for file in [&csv, &jsonl] {
        let r = ingest(file, "rejected=bda");
        assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
        let name = file.file_name().unwrap().to_str().unwrap();
        has(
            &r.stderr,
            &[
                name,
                "column 'bda' (mapped to rejected) is not in the file",
                "did you mean 'bad'?",
            ],
        );
        assert_eq!(
            r.stderr.matches("is not in the file").count(),
            1,
            "{}",
            r.stderr
        );
        assert!(!r.stdout.contains("is not in the file"), "{}", r.stdout);
        assert!(
            r.stdout.contains("(the error is on stderr)"),
            "{}",
            r.stdout
        );
        assert!(!store.exists(), "a dry run makes no store");
        let r = ingest(file, "rejected=bad");
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("planned"), "{}", r.stdout);
        assert!(!store.exists(), "a dry run makes no store");
    }
    // A folder: every file is checked, not only the first (a.csv has the column, b.jsonl
    // does not).
    let r = ingest(&dir.path().join("data"), "rejected=csv_only");
    assert_eq!(r.code, 1, "{}", r.stderr);
    has(
        &r.stderr,
        &["b.jsonl", "column 'csv_only' (mapped to rejected)"],
    );
    // A header and no rows: the empty file the ingest would refuse.
    let header_only = dir.path().join("header.csv");
    std::fs::write(&header_only, "rater,good,bad\n").unwrap();
    let r = ingest(&header_only, "rejected=bad");
    assert_eq!(r.code, 1, "{}", r.stderr);
    has(&r.stderr, &["header.csv"]);
    let mut args = vec!["ingest", header_only.to_str().unwrap(), "--dataset", "d"];
    args.extend_from_slice(&cols);
    args.push("rejected=bad");
    let real = palpipe(&store, &args);
    assert_eq!(real.code, 1, "{}", real.stderr);
    let error_line = |s: &str| {
        s.lines()
            .find(|l| l.contains("header.csv"))
            .map(String::from)
    };
    assert_eq!(
        error_line(&r.stderr).map(|l| l.replace("would fail", "failed")),
        error_line(&real.stderr),
        "the dry run's error is the run's"
    );
    std::fs::remove_dir_all(&store).unwrap();

    let yaml = "name: p\nstages:\n  - name: prefs\n    kind: preferences\n    dataset: d\n    path: data/b.jsonl\n    columns: {user: rater, chosen: good, rejected: bda}\n";
    let p = write_pipeline(dir.path(), "p.yaml", yaml);
    let run = |set: &[&str]| {
        let mut args = vec!["run", p.to_str().unwrap(), "--dry-run"];
        for s in set {
            args.extend_from_slice(&["--set", s]);
        }
        palpipe(&store, &args)
    };
    let r = run(&[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    has(&r.stderr, &["b.jsonl", "column 'bda' (mapped to rejected)"]);
    let r = run(&["prefs.columns.rejected=bad"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("planned"), "{}", r.stdout);
    // The other columns stayed: a wrong one among them is still found.
    let r = run(&["prefs.columns.rejected=bad", "prefs.columns.chosen=gdo"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    has(
        &r.stderr,
        &["column 'gdo' (mapped to chosen)", "did you mean 'good'?"],
    );

    // Files an earlier stage of the plan makes are not there yet: planned, not checked.
    let yaml = "name: q\nstages:\n  - {name: fx, kind: summarize_fixtures, out: fx, posts: 20, seed: 0}\n  - {name: prefs, kind: preferences, dataset: t, path: fx/comparisons, preset: summarize-from-feedback}\n";
    let q = write_pipeline(dir.path(), "q.yaml", yaml);
    let r = palpipe(&store, &["run", q.to_str().unwrap(), "--dry-run"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.matches("planned").count(), 2, "{}", r.stdout);
    assert!(!dir.path().join("fx").exists(), "a dry run makes nothing");
}

/// A dry run checks every stage of the plan, not only up to the first that would fail: a
/// pipeline with two broken `preferences` stages around a good one names both (each with its
/// file and column), counts them on the first line, plans the good one and marks both
/// failed in the table; nothing is written. One broken stage keeps the one-stage message.
#[test]
fn a_dry_run_names_every_stage_that_would_fail() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for name in ["a.jsonl", "b.jsonl", "c.jsonl"] {
        write_jsonl(
            &data.join(name),
            &[json!({"rater": "r1", "good": "u", "bad": "v"})],
        );
    }
    let stage = |name: &str, file: &str, rejected: &str| {
        format!(
            "  - {{name: {name}, kind: preferences, dataset: {name}, path: data/{file}, \
             columns: {{user: rater, chosen: good, rejected: {rejected}}}}}\n"
        )
    };
    let yaml = format!(
        "name: p\nstages:\n{}{}{}",
        stage("first", "a.jsonl", "bda"),
        stage("fine", "b.jsonl", "bad"),
        stage("last", "c.jsonl", "nope"),
    );
    let p = write_pipeline(dir.path(), "p.yaml", &yaml);
    let store = dir.path().join("st");
    let r = palpipe(&store, &["run", p.to_str().unwrap(), "--dry-run"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .starts_with("palpipe: error: 2 stages would fail\n"),
        "{}",
        r.stderr
    );
    has(
        &r.stderr,
        &[
            "stage 'first' (preferences) would fail:",
            "a.jsonl: column 'bda' (mapped to rejected)",
            "stage 'last' (preferences) would fail:",
            "c.jsonl: column 'nope' (mapped to rejected)",
        ],
    );
    assert!(!r.stderr.contains("stage 'fine'"), "{}", r.stderr);
    let status = |stage: &str| {
        r.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(stage))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_else(|| panic!("no row for '{stage}' in\n{}", r.stdout))
            .to_string()
    };
    assert_eq!(status("first"), "failed");
    assert_eq!(status("fine"), "planned");
    assert_eq!(status("last"), "failed");
    assert!(!store.exists(), "a dry run makes no store");

    // One broken stage: its message alone, as before.
    let r = palpipe(
        &store,
        &[
            "run",
            p.to_str().unwrap(),
            "--dry-run",
            "--set",
            "first.columns.rejected=bad",
        ],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .starts_with("palpipe: error: stage 'last' (preferences) would fail:"),
        "{}",
        r.stderr
    );
}
