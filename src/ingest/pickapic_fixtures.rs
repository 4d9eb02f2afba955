//! `palpipe fixtures pickapic`: Pick-a-Pic shards generated here, in the published layout.
//!
//! Pick-a-Pic cannot be downloaded on our machines, so the reader, the leakage split and
//! Pick-a-Filter are tested on shards this module writes: the same parquet columns and types
//! as the published dataset (see [`super::pickapic::COLUMNS`]), small procedurally drawn JPEGs
//! whose captions describe them ("a red circle on a blue background"), and known plantings
//! that `manifest.json` lists:
//!
//! - `leaks` v2-test rows repeat a v1 train or validation row's content (same caption, same
//!   image bytes, a new ranking id, about half with the two images swapped);
//! - `duplicates` v1-train rows repeat another v1-train row's content;
//! - `ties` rows labelled 0.5/0.5 and `unlabeled` rows (`has_label` false), spread over the
//!   four splits; `corrupt` v1-train rows whose second JPEG does not decode;
//! - `heavy_users` users with a known number of labels in v1 train and v1 test (the least
//!   `heavy_labels`, then 3 more each), and one user with exactly 50 (just outside
//!   Pick-a-Filter's "more than 50"); every other user has at most 8 rows.
//!
//! Each row's images are drawn from a small recipe (a scene and a seed), so a repeated row
//! draws the same bytes again instead of keeping them: memory is one shard, whatever the size.
//! In a row the caption describes one image exactly (the "faithful" one) and the other changes
//! one attribute; the faithful image wins with probability `faithful`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use super::common::{rng_for, IngestError};

/// What to generate. Every count is exact in the output; `manifest.json` repeats them.
#[derive(Debug, Clone, Serialize)]
pub struct FixtureSpec {
    /// Labelled, tie-free rows in v1 train (heavy users' rows and duplicates included).
    pub rows: usize,
    /// v2-test rows repeating v1 train/validation content.
    pub leaks: usize,
    /// Tied rows (0.5/0.5), spread over the splits.
    pub ties: usize,
    /// Rows without a label, spread over the splits.
    pub unlabeled: usize,
    /// v1-train rows repeating another v1-train row.
    pub duplicates: usize,
    /// v1-train rows whose second image is not a decodable JPEG.
    pub corrupt: usize,
    /// Users with many labels in both v1 train and v1 test.
    pub heavy_users: usize,
    /// Labels of the least active heavy user (the next has 3 more, and so on).
    pub heavy_labels: usize,
    /// Image side in pixels.
    pub image_size: u32,
    /// Per-pixel noise amplitude (0..=255); more noise, larger JPEGs.
    pub noise: u8,
    /// Probability that the image the caption describes wins.
    pub faithful: f64,
    /// Rows per parquet shard.
    pub shard_rows: usize,
    pub seed: u64,
}

impl Default for FixtureSpec {
    fn default() -> Self {
        FixtureSpec {
            rows: 1500,
            leaks: 60,
            ties: 12,
            unlabeled: 8,
            duplicates: 10,
            corrupt: 0,
            heavy_users: 16,
            heavy_labels: 51,
            image_size: 64,
            noise: 12,
            faithful: 0.8,
            shard_rows: 500,
            seed: 0,
        }
    }
}

/// The four shard sets, as (version, split).
pub const SETS: [(&str, &str); 4] = [
    ("v1", "train"),
    ("v1", "validation"),
    ("v1", "test"),
    ("v2", "test"),
];

const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 30, 30]),
    ("green", [40, 170, 60]),
    ("blue", [40, 70, 220]),
    ("yellow", [240, 220, 40]),
    ("purple", [140, 50, 170]),
    ("orange", [245, 140, 20]),
    ("white", [245, 245, 245]),
    ("black", [20, 20, 20]),
];
const SHAPES: [&str; 3] = ["circle", "square", "triangle"];

/// A drawable scene: indices into the colour and shape lists.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scene {
    fg: usize,
    shape: usize,
    bg: usize,
}

impl Scene {
    fn random<R: Rng>(rng: &mut R) -> Scene {
        let fg = rng.random_range(0..COLOURS.len());
        let mut bg = rng.random_range(0..COLOURS.len() - 1);
        if bg >= fg {
            bg += 1;
        }
        Scene {
            fg,
            shape: rng.random_range(0..SHAPES.len()),
            bg,
        }
    }

    /// The same scene with one attribute changed.
    fn flawed<R: Rng>(self, rng: &mut R) -> Scene {
        let mut s = self;
        match rng.random_range(0..3) {
            0 => s.shape = (s.shape + rng.random_range(1..SHAPES.len())) % SHAPES.len(),
            1 => loop {
                s.fg = rng.random_range(0..COLOURS.len());
                if s.fg != self.fg && s.fg != s.bg {
                    break;
                }
            },
            _ => loop {
                s.bg = rng.random_range(0..COLOURS.len());
                if s.bg != self.bg && s.bg != s.fg {
                    break;
                }
            },
        }
        s
    }

    fn caption(self) -> String {
        format!(
            "a {} {} on a {} background",
            COLOURS[self.fg].0, SHAPES[self.shape], COLOURS[self.bg].0
        )
    }
}

/// Everything needed to draw one row's content again.
#[derive(Debug, Clone, Copy)]
struct Recipe {
    scene: Scene,
    flaw: Scene,
    /// Whether image_0 is the faithful one.
    faithful_first: bool,
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Label {
    /// Which image won (0 or 1), before any swap.
    Winner(u8),
    Tie,
    Unlabeled,
}

/// One planned row: its content (a recipe index, maybe swapped), label and user.
#[derive(Debug, Clone, Copy)]
struct RowPlan {
    recipe: usize,
    swap: bool,
    label: Label,
    user_id: i64,
    corrupt: bool,
    ranking_id: i64,
}

/// A heavy user's planted label counts.
#[derive(Debug, Clone, Serialize)]
pub struct HeavyUser {
    pub user_id: i64,
    pub train: usize,
    pub test: usize,
}

/// Planted counts of one split.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SplitCounts {
    pub rows: usize,
    pub labelled: usize,
    pub ties: usize,
    pub unlabeled: usize,
    pub corrupt: usize,
    pub exact_duplicates: usize,
    pub corrupt_ranking_ids: Vec<i64>,
}

/// What was generated: `manifest.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub spec: FixtureSpec,
    /// Per "version-split" tag.
    pub splits: BTreeMap<String, SplitCounts>,
    pub v2_leakage: usize,
    pub v2_no_leakage: usize,
    /// Of the leaks, those whose two images are in the other order.
    pub leaks_swapped: usize,
    pub heavy: Vec<HeavyUser>,
    /// A user with exactly 50 labels over v1 train and test.
    pub fifty_label_user: HeavyUser,
    pub image_bytes: u64,
    pub files: Vec<String>,
}

struct Plan {
    recipes: Vec<Recipe>,
    splits: Vec<(String, Vec<RowPlan>)>,
    manifest: Manifest,
}

fn check(spec: &FixtureSpec) -> Result<(), IngestError> {
    if spec.image_size < 8 || spec.image_size > 2048 {
        return Err(IngestError::bad_param(
            "image_size",
            spec.image_size,
            "8..=2048 pixels",
        ));
    }
    if !(0.0..=1.0).contains(&spec.faithful) {
        return Err(IngestError::bad_param(
            "faithful",
            spec.faithful,
            "a probability in [0, 1]",
        ));
    }
    if spec.shard_rows == 0 {
        return Err(IngestError::bad_param("shard_rows", 0, "at least 1"));
    }
    Ok(())
}

/// A new row with fresh content: its recipe is added to `recipes`.
fn fresh_row(
    rng: &mut rand_chacha::ChaCha8Rng,
    recipes: &mut Vec<Recipe>,
    user_id: i64,
    faithful: f64,
) -> RowPlan {
    let scene = Scene::random(rng);
    let r = Recipe {
        scene,
        flaw: scene.flawed(rng),
        faithful_first: rng.random_bool(0.5),
        seed: rng.random(),
    };
    recipes.push(r);
    let faithful_wins = rng.random_bool(faithful);
    RowPlan {
        recipe: recipes.len() - 1,
        swap: false,
        label: Label::Winner(if faithful_wins == r.faithful_first {
            0
        } else {
            1
        }),
        user_id,
        corrupt: false,
        ranking_id: 0,
    }
}

fn plan(spec: &FixtureSpec) -> Result<Plan, IngestError> {
    check(spec)?;
    let mut rng = rng_for(spec.seed, "pickapic-fixtures:plan");
    let mut recipes: Vec<Recipe> = Vec::new();
    let mut light_counter = 0i64;
    let mut light_user = || {
        light_counter += 1;
        100_000 + (light_counter - 1) / 8
    };
    // Heavy users, and one with exactly 50 labels (40 train, 10 test).
    let heavy: Vec<HeavyUser> = (0..spec.heavy_users)
        .map(|i| {
            let n = spec.heavy_labels + 3 * i;
            HeavyUser {
                user_id: 1000 + i as i64,
                train: n - n / 5,
                test: n / 5,
            }
        })
        .collect();
    let fifty = HeavyUser {
        user_id: 999,
        train: 40,
        test: 10,
    };
    let heavy_train: usize = heavy.iter().map(|h| h.train).sum::<usize>() + fifty.train;
    let heavy_test: usize = heavy.iter().map(|h| h.test).sum::<usize>() + fifty.test;
    if spec.rows < heavy_train + spec.duplicates + spec.corrupt + 1 {
        return Err(IngestError::bad_param(
            "rows",
            spec.rows,
            &format!(
                "at least {} (heavy users' train rows + duplicates + corrupt rows + 1)",
                heavy_train + spec.duplicates + spec.corrupt + 1
            ),
        ));
    }
    // v1 train: heavy rows, fresh light rows, then duplicates of fresh rows.
    let mut train = Vec::new();
    for h in heavy.iter().chain(std::iter::once(&fifty)) {
        for _ in 0..h.train {
            train.push(fresh_row(&mut rng, &mut recipes, h.user_id, spec.faithful));
        }
    }
    while train.len() < spec.rows - spec.duplicates {
        let u = light_user();
        train.push(fresh_row(&mut rng, &mut recipes, u, spec.faithful));
    }
    let originals = train.len();
    // Corrupt rows: the last fresh light rows, never duplicated or leaked.
    for row in train[originals - spec.corrupt..].iter_mut() {
        row.corrupt = true;
    }
    for _ in 0..spec.duplicates {
        let src = train[rng.random_range(0..originals - spec.corrupt)];
        let u = light_user();
        train.push(RowPlan { user_id: u, ..src });
    }

    let mut validation = Vec::new();
    for _ in 0..(spec.rows / 10).max(1) {
        let u = light_user();
        validation.push(fresh_row(&mut rng, &mut recipes, u, spec.faithful));
    }

    let mut test = Vec::new();
    for h in heavy.iter().chain(std::iter::once(&fifty)) {
        for _ in 0..h.test {
            test.push(fresh_row(&mut rng, &mut recipes, h.user_id, spec.faithful));
        }
    }
    while test.len() < (spec.rows / 5).max(heavy_test + 1) {
        let u = light_user();
        test.push(fresh_row(&mut rng, &mut recipes, u, spec.faithful));
    }

    // v2 test: leaks from v1 train (originals that are not corrupt) or validation, then
    // fresh rows.
    let mut sources: Vec<RowPlan> = train[..originals]
        .iter()
        .filter(|r| !r.corrupt)
        .chain(validation.iter())
        .copied()
        .collect();
    // A source duplicated in v1 train is still one fingerprint: fine for leak counting.
    if spec.leaks > sources.len() {
        return Err(IngestError::bad_param(
            "leaks",
            spec.leaks,
            &format!(
                "at most {} (the v1 train and validation rows)",
                sources.len()
            ),
        ));
    }
    sources.shuffle(&mut rng);
    let mut v2 = Vec::new();
    let mut leaks_swapped = 0;
    for src in sources.into_iter().take(spec.leaks) {
        let swap = rng.random_bool(0.5);
        leaks_swapped += swap as usize;
        let u = light_user();
        v2.push(RowPlan {
            swap,
            user_id: u,
            ..src
        });
    }
    for _ in 0..(spec.rows / 5).max(1) {
        let u = light_user();
        v2.push(fresh_row(&mut rng, &mut recipes, u, spec.faithful));
    }

    let mut splits: Vec<(String, Vec<RowPlan>)> = vec![
        ("v1-train".into(), train),
        ("v1-validation".into(), validation),
        ("v1-test".into(), test),
        ("v2-test".into(), v2),
    ];
    // Ties and unlabeled rows, round-robin over the splits.
    for i in 0..spec.ties + spec.unlabeled {
        let u = light_user();
        let label = if i < spec.ties {
            Label::Tie
        } else {
            Label::Unlabeled
        };
        let row = fresh_row(&mut rng, &mut recipes, u, spec.faithful);
        splits[i % 4].1.push(RowPlan { label, ..row });
    }

    let mut counts = BTreeMap::new();
    let mut next_ranking = 7_000_000i64;
    for (tag, rows) in splits.iter_mut() {
        rows.shuffle(&mut rng);
        let mut c = SplitCounts {
            rows: rows.len(),
            ..Default::default()
        };
        for row in rows.iter_mut() {
            next_ranking += rng.random_range(1..5);
            row.ranking_id = next_ranking;
            match row.label {
                Label::Tie => c.ties += 1,
                Label::Unlabeled => c.unlabeled += 1,
                Label::Winner(_) if row.corrupt => {
                    c.corrupt += 1;
                    c.corrupt_ranking_ids.push(row.ranking_id);
                }
                Label::Winner(_) => c.labelled += 1,
            }
        }
        if tag == "v1-train" {
            c.exact_duplicates = spec.duplicates;
        }
        counts.insert(tag.clone(), c);
    }
    let v2_labelled = counts["v2-test"].labelled;
    let manifest = Manifest {
        spec: spec.clone(),
        splits: counts,
        v2_leakage: spec.leaks,
        v2_no_leakage: v2_labelled - spec.leaks,
        leaks_swapped,
        heavy,
        fifty_label_user: fifty,
        image_bytes: 0,
        files: Vec::new(),
    };
    Ok(Plan {
        recipes,
        splits,
        manifest,
    })
}

/// Draws one scene as a JPEG: the background with noise, the shape with its colour, at a
/// jittered place and size.
fn draw(scene: Scene, size: u32, noise: u8, seed: u64) -> Vec<u8> {
    let mut rng = rng_for(seed, "pickapic-fixtures:draw");
    let s = size as f32;
    let (cx, cy) = (
        s / 2.0 + rng.random_range(-s / 8.0..=s / 8.0),
        s / 2.0 + rng.random_range(-s / 8.0..=s / 8.0),
    );
    let r = s / 4.0 + rng.random_range(-s / 16.0..=s / 16.0);
    let (fg, bg) = (COLOURS[scene.fg].1, COLOURS[scene.bg].1);
    let mut img = image::RgbImage::new(size, size);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
        let inside = match SHAPES[scene.shape] {
            "circle" => dx * dx + dy * dy <= r * r,
            "square" => dx.abs() <= r && dy.abs() <= r,
            _ => dy >= -r && dy <= r && dx.abs() <= (dy + r) / 2.0,
        };
        let base = if inside { fg } else { bg };
        let mut c = [0u8; 3];
        for (ch, b) in c.iter_mut().zip(base) {
            let n = if noise == 0 {
                0
            } else {
                rng.random_range(-(noise as i16)..=noise as i16)
            };
            *ch = (b as i16 + n).clamp(0, 255) as u8;
        }
        *px = image::Rgb(c);
    }
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode(img.as_raw(), size, size, image::ExtendedColorType::Rgb8)
        .expect("encoding an in-memory RGB image as JPEG cannot fail");
    out
}

/// The parquet schema of a Pick-a-Pic shard, as published.
pub fn shard_schema() -> Arc<Schema> {
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("are_different", DataType::Boolean, true),
        s("best_image_uid"),
        s("caption"),
        Field::new(
            "created_at",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            true,
        ),
        Field::new("has_label", DataType::Boolean, true),
        s("image_0_uid"),
        s("image_0_url"),
        s("image_1_uid"),
        s("image_1_url"),
        Field::new("jpg_0", DataType::Binary, true),
        Field::new("jpg_1", DataType::Binary, true),
        Field::new("label_0", DataType::Float64, true),
        Field::new("label_1", DataType::Float64, true),
        s("model_0"),
        s("model_1"),
        Field::new("ranking_id", DataType::Int64, true),
        Field::new("user_id", DataType::Int64, true),
        Field::new("num_example_per_prompt", DataType::Int64, true),
    ]))
}

/// The two images of a row (after any swap), their uids and the caption.
fn materialise(
    plan: &Plan,
    spec: &FixtureSpec,
    row: &RowPlan,
) -> (String, [Vec<u8>; 2], [String; 2]) {
    let r = plan.recipes[row.recipe];
    let faithful = draw(r.scene, spec.image_size, spec.noise, r.seed);
    let flawed = draw(
        r.flaw,
        spec.image_size,
        spec.noise,
        r.seed ^ 0x9e37_79b9_7f4a_7c15,
    );
    let (mut a, mut b) = if r.faithful_first {
        (faithful, flawed)
    } else {
        (flawed, faithful)
    };
    let uid = |k: u64| {
        let h = blake3::hash(&[r.seed.to_le_bytes(), k.to_le_bytes()].concat());
        let x = h.to_hex();
        format!(
            "{}-{}-{}-{}-{}",
            &x[0..8],
            &x[8..12],
            &x[12..16],
            &x[16..20],
            &x[20..32]
        )
    };
    let (mut ua, mut ub) = (uid(0), uid(1));
    if row.swap {
        std::mem::swap(&mut a, &mut b);
        std::mem::swap(&mut ua, &mut ub);
    }
    if row.corrupt {
        // A JPEG start marker followed by garbage: recognisably a JPEG, not decodable.
        b = [&[0xFF, 0xD8, 0xFF, 0xE0][..], b"not really a jpeg"].concat();
    }
    (r.scene.caption(), [a, b], [ua, ub])
}

fn shard_batch(plan: &Plan, spec: &FixtureSpec, rows: &[RowPlan]) -> (RecordBatch, u64) {
    let mut captions = Vec::new();
    let mut jpg = [Vec::new(), Vec::new()];
    let mut uids = [Vec::new(), Vec::new()];
    let (mut l0, mut l1, mut has, mut best) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0u64;
    for row in rows {
        let (caption, images, ids) = materialise(plan, spec, row);
        captions.push(caption);
        let (a, b, h) = match row.label {
            Label::Winner(w) => {
                let w = if row.swap { 1 - w } else { w };
                if w == 0 {
                    (1.0, 0.0, true)
                } else {
                    (0.0, 1.0, true)
                }
            }
            Label::Tie => (0.5, 0.5, true),
            Label::Unlabeled => (0.0, 0.0, false),
        };
        l0.push(a);
        l1.push(b);
        has.push(h);
        best.push(if a == 1.0 {
            ids[0].clone()
        } else if b == 1.0 {
            ids[1].clone()
        } else {
            String::new()
        });
        bytes += images.iter().map(|i| i.len() as u64).sum::<u64>();
        let [a_img, b_img] = images;
        jpg[0].push(a_img);
        jpg[1].push(b_img);
        let [ua, ub] = ids;
        uids[0].push(ua);
        uids[1].push(ub);
    }
    let urls = |ids: &[String]| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            ids.iter()
                .map(|u| format!("https://fixtures.invalid/{u}.jpg")),
        ))
    };
    let strs = |v: &[String]| -> ArrayRef { Arc::new(StringArray::from_iter_values(v.iter())) };
    let n = rows.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(BooleanArray::from(vec![true; n])),
        strs(&best),
        strs(&captions),
        Arc::new(TimestampNanosecondArray::from_iter_values(rows.iter().map(
            |r| 1_680_000_000_000_000_000 + r.ranking_id * 1_000_000_000,
        ))),
        Arc::new(BooleanArray::from(has)),
        strs(&uids[0]),
        urls(&uids[0]),
        strs(&uids[1]),
        urls(&uids[1]),
        Arc::new(BinaryArray::from_iter_values(jpg[0].iter())),
        Arc::new(BinaryArray::from_iter_values(jpg[1].iter())),
        Arc::new(Float64Array::from(l0)),
        Arc::new(Float64Array::from(l1)),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            "fixture-painter-a",
            n,
        ))),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            "fixture-painter-b",
            n,
        ))),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.ranking_id),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.user_id))),
        Arc::new(Int64Array::from(vec![1i64; n])),
    ];
    let batch = RecordBatch::try_new(shard_schema(), columns)
        .expect("the fixture columns follow shard_schema");
    (batch, bytes)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> IngestError + '_ {
    move |source| IngestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the shards and `manifest.json` into `out` (which must not exist or be empty). The
/// files are written into `<out>.partial` and moved in place at the end, so an interrupted
/// run leaves no half-written fixture set behind.
pub fn write(
    spec: &FixtureSpec,
    out: &Path,
    mut progress: impl FnMut(usize),
) -> Result<Manifest, IngestError> {
    let mut plan = plan(spec)?;
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(io_err(out))?
            .next()
            .is_some()
    {
        return Err(IngestError::bad_param(
            "--out",
            out.display(),
            "a folder that does not exist yet or is empty",
        ));
    }
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io_err(&partial))?;
    }
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut files = Vec::new();
    let mut image_bytes = 0u64;
    for (tag, rows) in &plan.splits {
        let (version, split) = tag.split_once('-').unwrap_or((tag.as_str(), ""));
        let dir = partial.join(version);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let shards = rows.len().div_ceil(spec.shard_rows).max(1);
        for (i, chunk) in rows.chunks(spec.shard_rows).enumerate() {
            let name = format!("{split}-{i:05}-of-{shards:05}.parquet");
            let path = dir.join(&name);
            let file = File::create(&path).map_err(io_err(&path))?;
            let (batch, bytes) = shard_batch(&plan, spec, chunk);
            image_bytes += bytes;
            let parquet_err = |e: parquet::errors::ParquetError| IngestError::Io {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            };
            let mut w =
                parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props.clone()))
                    .map_err(parquet_err)?;
            w.write(&batch).map_err(parquet_err)?;
            w.close().map_err(parquet_err)?;
            files.push(format!("{version}/{name}"));
            progress(chunk.len());
        }
    }
    plan.manifest.files = files;
    plan.manifest.image_bytes = image_bytes;
    let mpath = partial.join("manifest.json");
    let text = serde_json::to_string_pretty(&plan.manifest).expect("the manifest serialises");
    std::fs::write(&mpath, text + "\n").map_err(io_err(&mpath))?;
    if out.exists() {
        std::fs::remove_dir(out).map_err(io_err(out))?;
    }
    std::fs::rename(&partial, out).map_err(io_err(out))?;
    Ok(plan.manifest)
}

/// Rows the fixture set will hold (for a progress bar).
pub fn total_rows(spec: &FixtureSpec) -> Result<usize, IngestError> {
    Ok(plan(spec)?.splits.iter().map(|(_, r)| r.len()).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_counts_match_the_spec() {
        let spec = FixtureSpec::default();
        let p = plan(&spec).unwrap();
        let m = &p.manifest;
        assert_eq!(
            m.splits["v1-train"].labelled + m.splits["v1-train"].corrupt,
            spec.rows
        );
        let ties: usize = m.splits.values().map(|c| c.ties).sum();
        let unl: usize = m.splits.values().map(|c| c.unlabeled).sum();
        assert_eq!((ties, unl), (spec.ties, spec.unlabeled));
        assert_eq!(m.v2_leakage, spec.leaks);
        // Heavy users hold exactly their planted labels in v1 train and test.
        for h in &m.heavy {
            let count = |tag: &str| {
                p.splits
                    .iter()
                    .find(|(t, _)| t == tag)
                    .unwrap()
                    .1
                    .iter()
                    .filter(|r| r.user_id == h.user_id)
                    .count()
            };
            assert_eq!((count("v1-train"), count("v1-test")), (h.train, h.test));
        }
    }

    #[test]
    fn drawing_repeats_bytes_for_the_same_recipe_only() {
        let s = Scene {
            fg: 0,
            shape: 0,
            bg: 2,
        };
        assert_eq!(draw(s, 32, 10, 7), draw(s, 32, 10, 7));
        assert_ne!(draw(s, 32, 10, 7), draw(s, 32, 10, 8));
        let img = image::load_from_memory(&draw(s, 32, 10, 7))
            .unwrap()
            .to_rgb8();
        // The centre is the red shape, a corner the blue background.
        let c = img.get_pixel(16, 16);
        let k = img.get_pixel(0, 0);
        assert!(c[0] > 150 && c[2] < 100, "{c:?}");
        assert!(k[2] > 150 && k[0] < 100, "{k:?}");
    }

    #[test]
    fn too_few_rows_for_the_heavy_users_is_refused() {
        let spec = FixtureSpec {
            rows: 100,
            ..Default::default()
        };
        let e = plan(&spec).err().unwrap().to_string();
        assert!(e.contains("'rows'"), "{e}");
    }
}
