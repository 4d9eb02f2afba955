//! The embedding cache and vector search through the real binary, with all-MiniLM-L6-v2
//! (installed by `make setup`) on real persona statements.

mod common;

use common::*;

fn small_persona(dir: &std::path::Path) -> std::path::PathBuf {
    let text = format!(
        "name: p\nstages:\n  - name: data\n    kind: persona\n    dir: {}\n    personas: [art, math]\n    users_per_persona: 2\n    queries_per_user: 15\n    unseen_users_per_persona: 0\n  - name: embed\n    kind: embed\n",
        shared_data().join("persona").display()
    );
    write_pipeline(dir, "p.yaml", &text)
}

#[test]
fn embed_caches_by_content_and_search_finds_the_statement_itself() {
    require_minilm();
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = small_persona(dir.path());
    // first embed only the math prompts, then everything: the second pass embeds the rest only
    palpipe(
        &store,
        &[
            "run",
            p.to_str().unwrap(),
            "--set",
            "embed.where=text LIKE '%math%' OR text = ' Yes'",
        ],
    )
    .ok();
    let first = scalar(&store, "SELECT count(*) FROM embeddings");
    let prompts = scalar(&store, "SELECT count(*) FROM prompts");
    let items = scalar(&store, "SELECT count(*) FROM items");
    assert!(
        first > 0 && first < prompts + items,
        "{first} of {}",
        prompts + items
    );
    let r = palpipe(&store, &["embed"]).ok();
    assert!(
        r.stdout
            .contains(&format!("embedded {}", prompts + items - first)),
        "{}",
        r.stdout
    );
    assert_eq!(
        scalar(&store, "SELECT count(*) FROM embeddings"),
        prompts + items
    );
    // nothing left: a rerun embeds nothing and adds no version
    let before = versions(&store)["embeddings"];
    let r = palpipe(&store, &["embed"]).ok();
    assert!(r.stdout.contains("embedded 0"), "{}", r.stdout);
    assert_eq!(versions(&store)["embeddings"], before);
    assert_eq!(
        scalar(&store, "SELECT count(DISTINCT content_id) FROM embeddings"),
        prompts + items
    );
    // vectors are unit length and 384 wide
    let dims = query(
        &store,
        "SELECT DISTINCT array_length(vector) AS d FROM embeddings",
    );
    assert_eq!(dims[0]["d"], 384);
    // search with a prompt's own text finds it first, at distance ~0
    let rows = query(
        &store,
        "SELECT text FROM prompts ORDER BY prompt_id LIMIT 1",
    );
    let text = rows[0]["text"].as_str().unwrap().to_string();
    let nearest = || -> serde_json::Value {
        let r = palpipe(
            &store,
            &[
                "search",
                "--encoder",
                "all-MiniLM-L6-v2",
                "--text",
                &text,
                "--k",
                "3",
                "--json",
            ],
        )
        .ok();
        serde_json::from_str(r.stdout.lines().next().unwrap()).unwrap()
    };
    let first_hit = nearest();
    assert_eq!(first_hit["text"], text);
    assert!(
        first_hit["distance"].as_f64().unwrap() < 1e-3,
        "{first_hit}"
    );
    // with an index, the same answer
    palpipe(
        &store,
        &["index", "--kind", "ivf-flat", "--partitions", "2"],
    )
    .ok();
    let hit = nearest();
    assert_eq!(hit["text"], text);
}

#[test]
fn a_missing_model_folder_is_named_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let p = small_persona(dir.path());
    let r = palpipe(
        &store,
        &[
            "run",
            p.to_str().unwrap(),
            "--set",
            "embed.model_dir=/nonexistent/minilm",
        ],
    )
    .code(2);
    assert!(r.stderr.contains("/nonexistent/minilm"), "{}", r.stderr);
    let r = bin()
        .args(["embed", "--quiet", "--store"])
        .arg(&store)
        .env("PALPIPE_MODELS", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("make setup"), "{err}");
}

#[test]
fn an_embed_killed_midway_completes_on_rerun_without_duplicates() {
    require_minilm();
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let text = format!(
        "name: p\nstages:\n  - name: data\n    kind: persona\n    dir: {}\n    personas: [art, music]\n    users_per_persona: 10\n    queries_per_user: 40\n    unseen_users_per_persona: 0\n",
        shared_data().join("persona").display()
    );
    let p = write_pipeline(dir.path(), "p.yaml", &text);
    palpipe(&store, &["run", p.to_str().unwrap()]).ok();
    let total = scalar(&store, "SELECT count(*) FROM prompts")
        + scalar(&store, "SELECT count(*) FROM items");
    let mut child = bin()
        .args(["embed", "--chunk", "16", "--quiet", "--store"])
        .arg(&store)
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        let n = scalar(&store, "SELECT count(*) FROM embeddings");
        if n > 0 || start.elapsed().as_secs() > 120 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap(); // SIGKILL: no clean-up runs
    child.wait().unwrap();
    let partial = scalar(&store, "SELECT count(*) FROM embeddings");
    assert!(
        partial > 0 && partial < total,
        "killed after {partial} of {total}"
    );
    let r = palpipe(&store, &["embed"]).ok();
    assert!(
        r.stdout.contains(&format!("already cached {partial}")),
        "{}",
        r.stdout
    );
    assert_eq!(scalar(&store, "SELECT count(*) FROM embeddings"), total);
    assert_eq!(
        scalar(&store, "SELECT count(DISTINCT content_id) FROM embeddings"),
        total
    );
}

/// `palpipe parity ARGS` without a store.
fn parity(args: &[&str]) -> Run {
    palpipe_raw(&[&["parity"], args].concat())
}

/// `palpipe parity`: the device check a CUDA build runs on a GPU, here on the CPU.
#[test]
fn parity_checks_clip_and_minilm_against_their_references() {
    require_minilm();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let clip = root.join("tests/fixtures/tiny_clip");
    let clip = clip.to_str().unwrap();

    let r = parity(&["--encoder", "clip", "--model-dir", clip]).ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 8, "4 images and 4 captions:\n{}", r.stdout);
    for l in &lines {
        let (cos, input) = l.split_once('\t').expect("cosine<TAB>input");
        let cos: f64 = cos.parse().unwrap();
        assert!(cos >= 0.9999, "{l}");
        assert!(
            input.starts_with("image ") || input.starts_with("text "),
            "{l}"
        );
    }
    assert!(
        r.stderr.contains("8 vectors, lowest cosine"),
        "{}",
        r.stderr
    );

    // A threshold no vector reaches fails, and says how many fell short.
    let r = parity(&[
        "--encoder",
        "clip",
        "--model-dir",
        clip,
        "--min-cosine",
        "1.5",
    ])
    .code(1);
    assert!(r.stderr.contains("8 below 1.5"), "{}", r.stderr);

    let expected = root.join("tests/fixtures/minilm/expected.json");
    let r = parity(&[
        "--encoder",
        "minilm",
        "--expected",
        expected.to_str().unwrap(),
        "--json",
    ])
    .ok();
    let report: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let agreements = report["agreements"].as_array().unwrap();
    assert!(agreements.len() >= 10, "{}", r.stdout);
    for a in agreements {
        assert!(a["cosine"].as_f64().unwrap() >= 0.9999, "{a}");
    }
    assert!(report["encoder_id"]
        .as_str()
        .unwrap()
        .starts_with("all-MiniLM-L6-v2:"));

    // A GPU: exit 2 naming the feature in a CPU build; in a CUDA build, exit 1 naming the
    // device where there is none, else the same 8 agreeing vectors.
    let r = parity(&["--encoder", "clip", "--model-dir", clip, "--device", "cuda"]);
    match r.code {
        0 => assert_eq!(r.stdout.lines().count(), 8, "{}", r.stdout),
        1 => assert!(
            r.stderr.contains("cannot open device 'cuda'"),
            "{}",
            r.stderr
        ),
        _ => {
            let r = r.code(2);
            assert!(r.stderr.contains("--features cuda"), "{}", r.stderr);
        }
    }
    let r = parity(&["--encoder", "clip", "--device", "tpu"]).code(2);
    assert!(r.stderr.contains("unknown device 'tpu'"), "{}", r.stderr);
    let missing = root.join("tests/fixtures");
    let r = parity(&[
        "--encoder",
        "clip",
        "--model-dir",
        missing.to_str().unwrap(),
    ])
    .code(2);
    assert!(r.stderr.contains("expected.json"), "{}", r.stderr);
}
