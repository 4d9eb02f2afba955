//! The image path through the real binary: CLIP embedding of image items (with a corrupt
//! one), the zero-shot CLIP score, `show-image` and `contact-sheet`, on a small store written
//! through the library (no image ingest stage is needed) and the tiny CLIP fixture.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use common::*;
use palpipe::store::batches::{self, SplitRow};
use palpipe::store::records::{
    content_id, pair_id, IngestBatch, ItemRow, PairRow, PromptRow, UserRow,
};
use palpipe::store::{write_ingest, Store};

fn tiny_clip() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_clip")
}

fn png(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// What the test store holds, by role.
struct Fixture {
    store: PathBuf,
    /// Source images (the first has two derived versions), then the derived ones.
    images: Vec<ItemRow>,
    corrupt: String,
    text: String,
    /// (user, prompt, left, right, label) of the 'test' split.
    test_pairs: Vec<(String, String, String, String, i8)>,
}

fn image_item(bytes: Vec<u8>, source: &str, parent: Option<&str>) -> ItemRow {
    ItemRow {
        item_id: content_id(&bytes),
        kind: "image".into(),
        text: None,
        bytes: Some(bytes),
        source: source.into(),
        parent_id: parent.map(str::to_string),
    }
}

fn fixture(dir: &Path) -> Fixture {
    let store = dir.join("s");
    let sources = [
        png(32, 32, |x, y| {
            if (x as i32 - 16).pow(2) + (y as i32 - 16).pow(2) < 100 {
                [20, 40, 230]
            } else {
                [250, 250, 250]
            }
        }),
        png(48, 32, |x, y| [(x * 5) as u8, (y * 7) as u8, 128]),
        png(32, 32, |x, _| {
            if x % 8 < 4 {
                [230, 20, 20]
            } else {
                [20, 200, 40]
            }
        }),
        png(40, 40, |x, y| [(x * 6) as u8, 90, (y * 6) as u8]),
    ];
    let mut images: Vec<ItemRow> = sources
        .into_iter()
        .map(|b| image_item(b, "test-images", None))
        .collect();
    // Two colour-filtered versions of the first image.
    let parent = images[0].item_id.clone();
    let first = image::load_from_memory(images[0].bytes.as_ref().unwrap())
        .unwrap()
        .to_rgb8();
    for (name, f) in [
        ("filter/red", [1.0f32, 0.3, 0.3]),
        ("filter/green", [0.3, 1.0, 0.3]),
    ] {
        let b = png(32, 32, |x, y| {
            let p = first.get_pixel(x, y).0;
            [0, 1, 2].map(|c| (p[c] as f32 * f[c]) as u8)
        });
        images.push(image_item(b, name, Some(&parent)));
    }
    let corrupt_bytes = b"\x89PNG\r\n\x1a\n but then not a PNG at all".to_vec();
    let corrupt = content_id(&corrupt_bytes);
    let text = "a plain text item".to_string();
    let mut items = images.clone();
    items.push(image_item(corrupt_bytes, "test-images", None));
    items.push(ItemRow {
        item_id: content_id(text.as_bytes()),
        kind: "text".into(),
        text: Some(text.clone()),
        bytes: None,
        source: "test-texts".into(),
        parent_id: None,
    });
    let captions = ["a blue circle on white", "red and green stripes"];
    let prompts: Vec<PromptRow> = captions
        .iter()
        .map(|c| PromptRow {
            prompt_id: content_id(c.as_bytes()),
            text: c.to_string(),
            source: "test-images".into(),
        })
        .collect();
    let ids: Vec<String> = images.iter().map(|i| i.item_id.clone()).collect();
    let users = ["u1", "u2", "u3"];
    let mut test_pairs = Vec::new();
    // Every ordered pair of distinct images under each caption, with labels that vary.
    let mut n = 0usize;
    for (pi, p) in prompts.iter().enumerate() {
        for l in 0..ids.len() {
            for r in (l + 1)..ids.len() {
                let label = if (l + 2 * r + pi) % 3 == 0 { 1 } else { -1 };
                test_pairs.push((
                    users[n % users.len()].to_string(),
                    p.prompt_id.clone(),
                    ids[l].clone(),
                    ids[r].clone(),
                    label,
                ));
                n += 1;
            }
        }
    }
    let mut pairs: Vec<PairRow> = test_pairs
        .iter()
        .map(|(u, p, l, r, y)| PairRow {
            pair_id: pair_id(u, Some(p), l, r, ""),
            user_id: u.clone(),
            prompt_id: Some(p.clone()),
            left_id: l.clone(),
            right_id: r.clone(),
            label: *y,
            dataset: "test-images".into(),
            split: "test".into(),
            source_ref: None,
            weight: 1.0,
        })
        .collect();
    pairs.push(PairRow {
        pair_id: pair_id("u1", None, &ids[0], &ids[1], ""),
        user_id: "u1".into(),
        prompt_id: None,
        left_id: ids[0].clone(),
        right_id: ids[1].clone(),
        label: -1,
        dataset: "test-images".into(),
        split: "bare".into(),
        source_ref: None,
        weight: 1.0,
    });
    let batch = IngestBatch {
        items,
        prompts,
        pairs,
        users: users
            .iter()
            .map(|u| UserRow {
                user_id: u.to_string(),
                dataset: "test-images".into(),
                group: None,
                role: "seen".into(),
            })
            .collect(),
        embeddings: Vec::new(),
        columns: Vec::new(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = Store::open(&store).unwrap();
        write_ingest(&s, "test-images", &batch).await.unwrap();
        let splits = [
            SplitRow {
                name: "test",
                sql: "SELECT * FROM pairs WHERE split = 'test'",
                pipeline: None,
                created_ms: 0,
            },
            SplitRow {
                name: "bare",
                sql: "SELECT * FROM pairs WHERE split = 'bare'",
                pipeline: None,
                created_ms: 0,
            },
        ];
        s.append("splits", batches::splits(&splits).unwrap())
            .await
            .unwrap();
    });
    Fixture {
        store,
        images,
        corrupt,
        text,
        test_pairs,
    }
}

fn embed_clip(store: &Path) -> Run {
    palpipe(
        store,
        &[
            "embed",
            "--encoder",
            "clip",
            "--model-dir",
            tiny_clip().to_str().unwrap(),
            "--chunk",
            "4",
            "--batch-size",
            "3",
        ],
    )
}

fn cos(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn clip_embeds_images_and_texts_skips_a_corrupt_image_and_scores_captions() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path());
    let store = &f.store;

    // CLIP needs its folder: a usage error before anything is read
    let r = palpipe(store, &["embed", "--encoder", "clip"]).code(2);
    assert!(r.stderr.contains("--model-dir"), "{}", r.stderr);

    let r = embed_clip(store).ok();
    // 6 good images + 1 text item + 2 prompts; the corrupt image is reported, not embedded
    assert!(r.stdout.contains("embedded 9 (6 images)"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains(&format!("1 image failed to decode (first: {}:", f.corrupt)),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains(&f.corrupt) && r.stderr.contains("failed to decode"),
        "{}",
        r.stderr
    );
    assert_eq!(scalar(store, "SELECT count(*) FROM embeddings"), 9);
    assert_eq!(
        scalar(
            store,
            &format!(
                "SELECT count(*) FROM embeddings WHERE content_id = '{}'",
                f.corrupt
            )
        ),
        0
    );
    let encoders = query(store, "SELECT DISTINCT encoder_id FROM embeddings");
    assert_eq!(encoders.len(), 1, "{encoders:?}");
    let encoder = encoders[0]["encoder_id"].as_str().unwrap().to_string();
    assert!(encoder.starts_with("tiny_clip:"), "{encoder}");
    let vectors = stored_vectors(store);
    for item in &f.images {
        let v = &vectors[&item.item_id];
        assert_eq!(v.len(), 16);
        assert!((cos(v, v) - 1.0).abs() < 1e-5);
    }
    assert!(vectors.contains_key(&content_id(f.text.as_bytes())));

    // a rerun embeds nothing and commits nothing
    let before = versions(store)["embeddings"];
    let r = embed_clip(store).ok();
    assert!(
        r.stdout.contains("embedded 0, already cached 9"),
        "{}",
        r.stdout
    );
    assert_eq!(versions(store)["embeddings"], before);

    // the zero-shot CLIP score, against an independent computation from the stored vectors
    let mut correct = 0;
    for (_, p, l, r, y) in &f.test_pairs {
        let m = cos(&vectors[l], &vectors[p]) - cos(&vectors[r], &vectors[p]);
        if -(*y as f64) * m > 0.0 {
            correct += 1;
        }
    }
    let expected = correct as f64 / f.test_pairs.len() as f64;
    let r = palpipe(store, &["eval", "--model", "clip-score", "--split", "test"]).ok();
    assert!(
        r.stdout.starts_with("clip-score on 'test': accuracy ")
            && r.stdout
                .contains(&format!("accuracy {:.2}%", 100.0 * expected))
            && r.stdout.contains(&format!("n={}", f.test_pairs.len())),
        "expected {:.2}%: {}",
        100.0 * expected,
        r.stdout
    );
    let r = palpipe(
        store,
        &[
            "eval",
            "--model",
            "clip-score",
            "--split",
            "test",
            "--encoder",
            "tiny_clip",
            "--json",
        ],
    )
    .ok();
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["n"], f.test_pairs.len());
    assert!(
        (v["accuracy"].as_f64().unwrap() - expected).abs() < 1e-12,
        "{v} vs {expected}"
    );

    // registered beside trained models
    let rows = query(
        store,
        "SELECT name, kind, encoder_id, metrics_json FROM models",
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["name"], "clip-score");
    assert_eq!(rows[0]["kind"], "clip-score");
    assert_eq!(rows[0]["encoder_id"], encoder.as_str());
    let metrics: serde_json::Value =
        serde_json::from_str(rows[0]["metrics_json"].as_str().unwrap()).unwrap();
    assert!(
        (metrics["test"]["accuracy"].as_f64().unwrap() - expected).abs() < 1e-12,
        "{metrics}"
    );

    // a split without prompts is an error naming it
    let r = palpipe(store, &["eval", "--model", "clip-score", "--split", "bare"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("split 'bare'") && r.stderr.contains("no prompt"),
        "{}",
        r.stderr
    );
    // --encoder belongs to clip-score only; an unknown encoder is a usage error
    let r = palpipe(
        store,
        &[
            "eval",
            "--model",
            "clip-score",
            "--split",
            "test",
            "--encoder",
            "nope",
        ],
    )
    .code(2);
    assert!(r.stderr.contains("'nope'"), "{}", r.stderr);
}

#[test]
fn a_pipeline_embeds_with_clip_and_evaluates_the_clip_score_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path());
    let store = &f.store;
    let text = format!(
        "name: clip\nstages:\n  - name: embed\n    kind: embed\n    encoder: clip\n    model_dir: {}\n  - name: zero-shot\n    kind: eval\n    model: clip-score\n    split: test\nsplits:\n  test: \"SELECT * FROM pairs WHERE split = 'test'\"\n",
        tiny_clip().display()
    );
    let p = write_pipeline(dir.path(), "clip.yaml", &text);
    let r = palpipe(store, &["run", p.to_str().unwrap()]).ok();
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("1 image failed to decode") && all.contains(&f.corrupt),
        "{all}"
    );
    assert_eq!(scalar(store, "SELECT count(*) FROM embeddings"), 9);
    assert_eq!(
        scalar(
            store,
            "SELECT count(*) FROM models WHERE kind = 'clip-score'"
        ),
        1
    );
    // unchanged: the second run skips both stages
    let r = palpipe(store, &["run", p.to_str().unwrap()]).ok();
    assert!(r.stdout.contains("nothing to do"), "{}", r.stdout);
    // a dry run that plans `embed` again also plans the eval reading its vectors (which the
    // run may add to), saying why; nothing is written. (Here the real run would add no
    // vector, vectors being cached by content and encoder, and skip the eval: the plan errs
    // on the side of running.)
    let plan = palpipe(
        store,
        &[
            "run",
            p.to_str().unwrap(),
            "--dry-run",
            "--json",
            "--set",
            "embed.batch_size=2",
        ],
    )
    .ok();
    let plan_json: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let statuses: Vec<(String, String)> = plan_json["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let field = |k: &str| s[k].as_str().unwrap().to_string();
            (field("name"), field("status"))
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("embed".to_string(), "planned".to_string()),
            ("zero-shot".to_string(), "planned".to_string())
        ],
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("it reads what a stage planned before it may change"),
        "{}",
        plan.stdout
    );
    assert_eq!(scalar(store, "SELECT count(*) FROM embeddings"), 9);
    // the report lists it
    let out = dir.path().join("report");
    palpipe(
        store,
        &["report", "--run", "latest", "--out", out.to_str().unwrap()],
    )
    .ok();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("clip-score"), "{md}");
}

#[test]
fn show_image_writes_a_png_and_the_contact_sheet_inlines_originals_and_derived() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture(dir.path());
    let store = &f.store;

    // show-image: the 48×32 gradient, by a prefix of its id
    let item = &f.images[1];
    let out = dir.path().join("one.png");
    palpipe(
        store,
        &[
            "show-image",
            &item.item_id[..10],
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .ok();
    let written = image::open(&out).unwrap();
    assert_eq!((written.width(), written.height()), (48, 32));
    let original = image::load_from_memory(item.bytes.as_ref().unwrap()).unwrap();
    assert_eq!(written.to_rgb8(), original.to_rgb8());
    assert_eq!(
        image::guess_format(&std::fs::read(&out).unwrap()).unwrap(),
        image::ImageFormat::Png
    );
    // errors: unknown id, a text item, undecodable bytes
    let r = palpipe(store, &["show-image", "feedbeef", "--out", "/tmp/x.png"]).code(2);
    assert!(r.stderr.contains("no item 'feedbeef'"), "{}", r.stderr);
    let text_id = content_id(f.text.as_bytes());
    let r = palpipe(store, &["show-image", &text_id, "--out", "/tmp/x.png"]).code(2);
    assert!(r.stderr.contains("not an image"), "{}", r.stderr);
    let bad = dir.path().join("bad.png");
    let r = palpipe(
        store,
        &["show-image", &f.corrupt, "--out", bad.to_str().unwrap()],
    )
    .code(1);
    assert!(r.stderr.contains("cannot decode"), "{}", r.stderr);
    assert!(!bad.exists());

    // contact sheet: the one source with derived images, beside both versions
    let sheet = dir.path().join("sheet.html");
    let r = palpipe(
        store,
        &[
            "contact-sheet",
            "--out",
            sheet.to_str().unwrap(),
            "--n",
            "8",
        ],
    )
    .ok();
    assert!(
        r.stdout.contains("1 source images, 2 derived"),
        "{}",
        r.stdout
    );
    let html = std::fs::read_to_string(&sheet).unwrap();
    let uri = |b: &[u8]| {
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(b)
        )
    };
    for it in [&f.images[0], &f.images[4], &f.images[5]] {
        assert!(
            html.contains(&uri(it.bytes.as_ref().unwrap())),
            "no data URI for {} ({})",
            it.item_id,
            it.source
        );
        assert!(html.contains(&it.item_id), "no caption id {}", it.item_id);
    }
    assert!(html.contains("filter/red") && html.contains("filter/green"));
    // images without derived versions are not shown
    assert!(!html.contains(&uri(f.images[1].bytes.as_ref().unwrap())));
    assert!(!html.contains("src=\"http") && !html.contains("src=\"/"));
    // a predicate that excludes the source leaves nothing to show
    let r = palpipe(
        store,
        &[
            "contact-sheet",
            "--out",
            sheet.to_str().unwrap(),
            "--where",
            "source = 'elsewhere'",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
}
