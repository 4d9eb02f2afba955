//! `pickapic`: the Pick-a-Pic reader (text-to-image preferences, v1 and v2).
//!
//! Reads the dataset's parquet shards as published (columns [`COLUMNS`]; the reader needs
//! [`REQUIRED`] and uses `has_label` when present). Each shard set names its version and
//! split (`sets:`, file patterns relative to `data_dir`); its pairs get the split tag
//! `<version>-<split>` (`v1-train`, `v2-test`, …).
//!
//! Per row, only a preference becomes a pair; every other row is dropped and counted under the
//! first of these that applies:
//! - unlabeled: `has_label` false or null, or a null label;
//! - a NaN label (either one): what a pandas or polars round trip writes for a missing label
//!   when the shard has no `has_label` column;
//! - a tie: equal labels (0.5/0.5);
//! - incomplete: no user id or caption;
//! - the same image twice: `are_different` false, or equal bytes on both sides;
//! - an image that is missing or does not decode (or, with `verify_images: header`, whose
//!   header does not parse), named by its `ranking_id`.
//!
//! A row that repeats one already read in the same shard set (same ranking id, user, caption
//! and image bytes, e.g. one row in two overlapping shards) is one pair: the summary gives
//! rows and distinct pairs. Images go to `items` by content hash (the same bytes are stored
//! once however many rows show them), captions to `prompts`, the row to `pairs` with
//! `image_0` on the left (label −1 when it won) and `ranking_id` in `source_ref`. Users are
//! `pickapic/<user_id>`, all "seen" (Pick-a-Filter chooses its own seen users).
//!
//! Shards are streamed: rows are read in record batches and handed on in chunks of about
//! `chunk_mb` of image bytes, so memory does not grow with the dataset. The files of one set
//! are read by `threads` threads, default two (hashing is cheap; decompressing and copying
//! image bytes is not); which thread stores a row first changes the storage order only, and
//! readers of the store sort (see `pipeline::features`).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use arrow::compute::cast;
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float64Array, LargeBinaryArray, RecordBatch,
    StringArray,
};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use serde::{Deserialize, Serialize};

use super::common::{IngestError, ROLE_SEEN};
use crate::store::records::{
    content_id, pair_id, IngestBatch, ItemRow, PairRow, PromptRow, UserRow,
};

/// The columns of a published Pick-a-Pic shard.
pub const COLUMNS: [&str; 18] = [
    "are_different",
    "best_image_uid",
    "caption",
    "created_at",
    "has_label",
    "image_0_uid",
    "image_0_url",
    "image_1_uid",
    "image_1_url",
    "jpg_0",
    "jpg_1",
    "label_0",
    "label_1",
    "model_0",
    "model_1",
    "ranking_id",
    "user_id",
    "num_example_per_prompt",
];

/// The optional columns the reader uses when a shard has them.
pub const OPTIONAL: [&str; 2] = ["has_label", "are_different"];

/// The columns the reader needs; a shard without one of them is refused.
pub const REQUIRED: [&str; 7] = [
    "caption",
    "jpg_0",
    "jpg_1",
    "label_0",
    "label_1",
    "ranking_id",
    "user_id",
];

/// One set of shards: which version and split they are, and a file pattern relative to
/// `data_dir` (`*` allowed in the file name, e.g. `v1/train-*.parquet`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSet {
    pub version: String,
    pub split: String,
    pub files: String,
}

impl ShardSet {
    /// The split tag its pairs get: `<version>-<split>`.
    pub fn tag(&self) -> String {
        format!("{}-{}", self.version, self.split)
    }
}

/// How much of each image the reader checks before accepting a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyImages {
    /// Decode every image fully (catches truncated files; the default).
    #[default]
    Decode,
    /// Parse the header only (format and size): much faster, misses truncated bodies.
    Header,
    /// No check (trusted data; an undecodable image then fails at the embed stage, which
    /// records it and carries on).
    None,
}

fn default_sets() -> Vec<ShardSet> {
    crate::ingest::pickapic_fixtures::SETS
        .iter()
        .map(|(v, s)| ShardSet {
            version: v.to_string(),
            split: s.to_string(),
            files: format!("{v}/{s}-*.parquet"),
        })
        .collect()
}
fn default_dataset() -> String {
    "pickapic".into()
}
fn default_chunk_mb() -> usize {
    32
}
fn default_threads() -> usize {
    2
}

/// Parameters of a `pickapic` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The folder the shard patterns are relative to. Required.
    pub data_dir: PathBuf,
    /// The shard sets. Default: the layout `palpipe fixtures pickapic` writes
    /// (`v1/{train,validation,test}-*.parquet`, `v2/test-*.parquet`).
    #[serde(default = "default_sets")]
    pub sets: Vec<ShardSet>,
    /// `decode` (default), `header` or `none`.
    #[serde(default)]
    pub verify_images: VerifyImages,
    /// The `dataset` value of pairs and users, and the prefix of user ids. Default "pickapic".
    #[serde(default = "default_dataset")]
    pub dataset: String,
    /// Image bytes per write (MiB). Default 32.
    #[serde(default = "default_chunk_mb")]
    pub chunk_mb: usize,
    /// Threads reading the files of one shard set (at most one per file). Default 2. The
    /// rows stored do not depend on it, only the order they are stored in.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

impl Params {
    /// The defaults for the shards under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Params {
        Params {
            data_dir: data_dir.into(),
            sets: default_sets(),
            verify_images: VerifyImages::default(),
            dataset: default_dataset(),
            chunk_mb: default_chunk_mb(),
            threads: default_threads(),
        }
    }
}

/// The files of a pattern: `*` in the last path component matches any run of characters.
/// Sorted; empty when nothing matches.
pub fn expand(data_dir: &Path, pattern: &str) -> Vec<PathBuf> {
    let full = data_dir.join(pattern);
    let (Some(dir), Some(name)) = (full.parent(), full.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    if !name.contains('*') {
        return if full.is_file() {
            vec![full]
        } else {
            Vec::new()
        };
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| wildcard(name, n))
        })
        .collect();
    out.sort();
    out
}

fn wildcard(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Every shard file, with its set; a pattern that matches nothing is listed as the pattern
/// itself, so the pipeline's input check reports it as missing.
pub fn input_files(p: &Params) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for set in &p.sets {
        let files = expand(&p.data_dir, &set.files);
        if files.is_empty() {
            out.push(p.data_dir.join(&set.files));
        }
        out.extend(files);
    }
    out
}

/// What the reader did with one shard set's rows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SetCounts {
    pub files: usize,
    pub rows: usize,
    pub pairs: usize,
    pub ties: usize,
    pub unlabeled: usize,
    /// Rows with a NaN label.
    pub nan_labels: usize,
    /// Rows whose two images are one image (`are_different` false, or equal bytes).
    pub same_image: usize,
    /// Rows that repeat a row already read (same pair id): no new pair.
    pub repeated: usize,
    /// Rows skipped because an image does not decode.
    pub bad_images: usize,
    /// Rows without a user id or caption.
    pub incomplete: usize,
    /// The first few skipped rows: (ranking_id, why).
    pub bad_examples: Vec<(String, String)>,
    pub image_bytes: u64,
}

/// The reader's counts per split tag.
pub type ReadReport = BTreeMap<String, SetCounts>;

fn parquet_err(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> IngestError + '_ {
    move |e| IngestError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("not a readable parquet file: {e}")),
    }
}

/// Rows in all shards, from the parquet footers (for a progress bar).
pub fn count_rows(p: &Params) -> Result<u64, IngestError> {
    let mut n = 0u64;
    for set in &p.sets {
        for path in expand(&p.data_dir, &set.files) {
            let file = open(&path)?;
            let b = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err(&path))?;
            n += b.metadata().file_metadata().num_rows().max(0) as u64;
        }
    }
    Ok(n)
}

fn open(path: &Path) -> Result<File, IngestError> {
    super::common::open_file(path)
}

/// Columns of one record batch, in the types the reader works with.
struct Cols {
    caption: StringArray,
    ranking: StringArray,
    user: StringArray,
    label0: Float64Array,
    label1: Float64Array,
    has_label: Option<BooleanArray>,
    are_different: Option<BooleanArray>,
    jpg: [ArrayRef; 2],
}

fn bytes_at(a: &ArrayRef, i: usize) -> Option<&[u8]> {
    if a.is_null(i) {
        return None;
    }
    if let Some(b) = a.as_any().downcast_ref::<BinaryArray>() {
        return Some(b.value(i));
    }
    a.as_any()
        .downcast_ref::<LargeBinaryArray>()
        .map(|b| b.value(i))
}

impl Cols {
    fn from_batch(b: &RecordBatch, path: &Path) -> Result<Cols, IngestError> {
        let get = |name: &str, to: &DataType| -> Result<ArrayRef, IngestError> {
            let a = b
                .column_by_name(name)
                .ok_or_else(|| missing_column(path, name, b.schema().as_ref()))?;
            cast(a, to).map_err(|e| IngestError::BadValue {
                path: path.to_path_buf(),
                line: 0,
                field: name.to_string(),
                found: a.data_type().to_string(),
                expected: format!("a column castable to {to} ({e})"),
            })
        };
        let s = |name: &str| -> Result<StringArray, IngestError> {
            Ok(get(name, &DataType::Utf8)?
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .expect("cast to Utf8 gives a StringArray"))
        };
        let f = |name: &str| -> Result<Float64Array, IngestError> {
            Ok(get(name, &DataType::Float64)?
                .as_any()
                .downcast_ref::<Float64Array>()
                .cloned()
                .expect("cast to Float64 gives a Float64Array"))
        };
        let jpg = |name: &str| -> Result<ArrayRef, IngestError> {
            let a = b
                .column_by_name(name)
                .ok_or_else(|| missing_column(path, name, b.schema().as_ref()))?;
            match a.data_type() {
                DataType::Binary | DataType::LargeBinary => Ok(a.clone()),
                other => Err(IngestError::BadValue {
                    path: path.to_path_buf(),
                    line: 0,
                    field: name.to_string(),
                    found: other.to_string(),
                    expected: "binary image bytes".into(),
                }),
            }
        };
        let flag = |name: &str| -> Result<Option<BooleanArray>, IngestError> {
            match b.column_by_name(name) {
                Some(_) => Ok(Some(
                    get(name, &DataType::Boolean)?
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .cloned()
                        .expect("cast to Boolean gives a BooleanArray"),
                )),
                None => Ok(None),
            }
        };
        Ok(Cols {
            caption: s("caption")?,
            ranking: s("ranking_id")?,
            user: s("user_id")?,
            label0: f("label_0")?,
            label1: f("label_1")?,
            has_label: flag("has_label")?,
            are_different: flag("are_different")?,
            jpg: [jpg("jpg_0")?, jpg("jpg_1")?],
        })
    }
}

fn missing_column(path: &Path, name: &str, schema: &arrow_schema::Schema) -> IngestError {
    IngestError::MissingColumn {
        path: path.to_path_buf(),
        column: name.to_string(),
        header: schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Why an image is refused, or None when it is accepted.
fn image_problem(bytes: &[u8], verify: VerifyImages) -> Option<String> {
    let result = match verify {
        VerifyImages::None => Ok(()),
        VerifyImages::Decode => image::load_from_memory(bytes).map(|_| ()),
        VerifyImages::Header => image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(image::ImageError::IoError)
            .and_then(|r| r.into_dimensions().map(|_| ())),
    };
    result.err().map(|e| e.to_string())
}

/// What the threads reading one shard set share: the ids already handed on (so each image,
/// caption and user goes out once), the sink, the row count, and a stop flag.
struct Shared<'a, S, R> {
    p: &'a Params,
    tag: String,
    source: String,
    flush_bytes: u64,
    sent_items: Mutex<HashSet<String>>,
    sent_prompts: Mutex<HashSet<String>>,
    sent_users: Mutex<HashSet<String>>,
    /// Pair ids handed on, as 128-bit keys (a repeated row is counted, not sent again).
    sent_pairs: Mutex<HashSet<u128>>,
    sink: Mutex<S>,
    rows_done: Mutex<R>,
    rows_read: AtomicU64,
    stop: AtomicBool,
}

/// Streams the shards of `p`, handing each chunk of rows to `sink` (the store writer) and
/// `rows_done` the number of rows read so far. The files of one shard set are read by up to
/// `p.threads` threads; sets are read in order. Items, prompts and users are handed on once per run,
/// so the rows that reach the store do not depend on which thread read what first. Returns
/// the counts per split tag.
pub fn read<S, R>(p: &Params, sink: S, rows_done: R) -> Result<ReadReport, IngestError>
where
    S: FnMut(IngestBatch) -> Result<(), IngestError> + Send,
    R: FnMut(u64) + Send,
{
    if p.chunk_mb == 0 {
        return Err(IngestError::bad_param("chunk_mb", 0, "at least 1 (MiB)"));
    }
    if p.threads == 0 {
        return Err(IngestError::bad_param("threads", 0, "at least 1"));
    }
    let mut shared = Shared {
        p,
        tag: String::new(),
        source: String::new(),
        flush_bytes: (p.chunk_mb as u64) << 20,
        sent_items: Mutex::new(HashSet::new()),
        sent_prompts: Mutex::new(HashSet::new()),
        sent_users: Mutex::new(HashSet::new()),
        sent_pairs: Mutex::new(HashSet::new()),
        sink: Mutex::new(sink),
        rows_done: Mutex::new(rows_done),
        rows_read: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };
    let mut report = ReadReport::new();
    for set in &p.sets {
        let files = expand(&p.data_dir, &set.files);
        if files.is_empty() {
            return Err(IngestError::MissingFile {
                path: p.data_dir.join(&set.files),
            });
        }
        shared.tag = set.tag();
        shared.source = format!("{}/{}", p.dataset, set.version);
        let next = AtomicUsize::new(0);
        let threads = p.threads.min(files.len());
        let results: Vec<Result<SetCounts, IngestError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut counts = SetCounts::default();
                        loop {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            if i >= files.len() || shared.stop.load(Ordering::SeqCst) {
                                return Ok(counts);
                            }
                            if let Err(e) = read_file(&files[i], &shared, &mut counts) {
                                shared.stop.store(true, Ordering::SeqCst);
                                return Err(e);
                            }
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("a shard reader thread panicked"))
                .collect()
        });
        let counts = report.entry(shared.tag.clone()).or_default();
        for r in results {
            let c = r?;
            counts.files += c.files;
            counts.rows += c.rows;
            counts.pairs += c.pairs;
            counts.ties += c.ties;
            counts.unlabeled += c.unlabeled;
            counts.nan_labels += c.nan_labels;
            counts.same_image += c.same_image;
            counts.repeated += c.repeated;
            counts.bad_images += c.bad_images;
            counts.incomplete += c.incomplete;
            counts.image_bytes += c.image_bytes;
            counts.bad_examples.extend(c.bad_examples);
        }
        counts.bad_examples.sort();
        counts.bad_examples.truncate(5);
    }
    if report.values().all(|c| c.pairs == 0) {
        return Err(IngestError::NoData {
            path: p.data_dir.clone(),
            what: "no labelled, tie-free row with two different, decodable images in any shard"
                .into(),
        });
    }
    Ok(report)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The error for a record batch of `path` that cannot be decoded.
pub fn batch_err(path: &Path) -> impl Fn(arrow_schema::ArrowError) -> IngestError + '_ {
    move |e| IngestError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("cannot decode a row group: {e}")),
    }
}

/// A record-batch reader over the columns [`read`] uses ([`REQUIRED`], and [`OPTIONAL`]
/// where present), 64 rows a batch.
///
/// # Errors
/// The file cannot be opened or is not parquet ([`IngestError::Io`]), or a required column
/// is missing (the message lists the file's columns).
pub fn open_reader(path: &Path) -> Result<ParquetRecordBatchReader, IngestError> {
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(open(path)?).map_err(parquet_err(path))?;
    let schema = builder.schema().clone();
    for name in REQUIRED {
        if schema.field_with_name(name).is_err() {
            return Err(missing_column(path, name, &schema));
        }
    }
    let wanted: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            REQUIRED.contains(&f.name().as_str()) || OPTIONAL.contains(&f.name().as_str())
        })
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
    builder
        .with_projection(mask)
        .with_batch_size(64)
        .build()
        .map_err(parquet_err(path))
}

/// Reads one shard file, handing its rows on in chunks.
fn read_file<S, R>(
    path: &Path,
    shared: &Shared<'_, S, R>,
    counts: &mut SetCounts,
) -> Result<(), IngestError>
where
    S: FnMut(IngestBatch) -> Result<(), IngestError>,
    R: FnMut(u64),
{
    let p = shared.p;
    let tag = &shared.tag;
    counts.files += 1;
    let reader = open_reader(path)?;
    let mut chunk = IngestBatch::default();
    let mut chunk_bytes = 0u64;
    let flush = |chunk: &mut IngestBatch| -> Result<(), IngestError> {
        let c = std::mem::take(chunk);
        let mut sink = lock(&shared.sink);
        (*sink)(c)
    };
    for batch in reader {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let batch = batch.map_err(batch_err(path))?;
        let cols = Cols::from_batch(&batch, path)?;
        for i in 0..batch.num_rows() {
            counts.rows += 1;
            let ranking = if cols.ranking.is_null(i) {
                "?".to_string()
            } else {
                cols.ranking.value(i).to_string()
            };
            let labelled = cols
                .has_label
                .as_ref()
                .is_none_or(|h| !h.is_null(i) && h.value(i))
                && !cols.label0.is_null(i)
                && !cols.label1.is_null(i);
            if !labelled {
                counts.unlabeled += 1;
                continue;
            }
            let (l0, l1) = (cols.label0.value(i), cols.label1.value(i));
            if l0.is_nan() || l1.is_nan() {
                counts.nan_labels += 1;
                continue;
            }
            if l0 == l1 {
                counts.ties += 1;
                continue;
            }
            if cols.user.is_null(i) || cols.caption.is_null(i) {
                counts.incomplete += 1;
                continue;
            }
            let images = [bytes_at(&cols.jpg[0], i), bytes_at(&cols.jpg[1], i)];
            let flagged_same = cols
                .are_different
                .as_ref()
                .is_some_and(|d| !d.is_null(i) && !d.value(i));
            if flagged_same || matches!(images, [Some(a), Some(b)] if a == b) {
                counts.same_image += 1;
                continue;
            }
            let problem = match images {
                [Some(a), Some(b)] => image_problem(a, p.verify_images)
                    .map(|e| format!("jpg_0: {e}"))
                    .or_else(|| image_problem(b, p.verify_images).map(|e| format!("jpg_1: {e}"))),
                _ => Some("an image is missing (null)".to_string()),
            };
            let ([Some(a), Some(b)], None) = (images, problem.clone()) else {
                counts.bad_images += 1;
                counts
                    .bad_examples
                    .push((ranking, problem.unwrap_or_default()));
                counts.bad_examples.sort();
                counts.bad_examples.truncate(5);
                continue;
            };
            let caption = cols.caption.value(i);
            let prompt = content_id(caption.as_bytes());
            let user = format!("{}/{}", p.dataset, cols.user.value(i));
            let ids = [content_id(a), content_id(b)];
            let id = pair_id(
                &user,
                Some(&prompt),
                &ids[0],
                &ids[1],
                &format!("{tag}:{ranking}"),
            );
            if !lock(&shared.sent_pairs).insert(pair_key(&id)) {
                counts.repeated += 1;
                continue;
            }
            for (id, bytes) in ids.iter().zip([a, b]) {
                counts.image_bytes += bytes.len() as u64;
                if lock(&shared.sent_items).insert(id.clone()) {
                    chunk_bytes += bytes.len() as u64;
                    chunk.items.push(ItemRow {
                        item_id: id.clone(),
                        kind: "image".into(),
                        text: None,
                        bytes: Some(bytes.to_vec()),
                        source: shared.source.clone(),
                        parent_id: None,
                    });
                }
            }
            if lock(&shared.sent_prompts).insert(prompt.clone()) {
                chunk.prompts.push(PromptRow {
                    prompt_id: prompt.clone(),
                    text: caption.to_string(),
                    source: p.dataset.clone(),
                });
            }
            if lock(&shared.sent_users).insert(user.clone()) {
                chunk.users.push(UserRow {
                    user_id: user.clone(),
                    dataset: p.dataset.clone(),
                    group: None,
                    role: ROLE_SEEN.into(),
                });
            }
            let label: i8 = if l0 > l1 { -1 } else { 1 };
            chunk.pairs.push(PairRow {
                pair_id: id,
                user_id: user,
                prompt_id: Some(prompt),
                left_id: ids[0].clone(),
                right_id: ids[1].clone(),
                label,
                dataset: p.dataset.clone(),
                split: tag.clone(),
                source_ref: Some(ranking),
                weight: 1.0,
            });
            counts.pairs += 1;
        }
        let n = shared
            .rows_read
            .fetch_add(batch.num_rows() as u64, Ordering::SeqCst)
            + batch.num_rows() as u64;
        (*lock(&shared.rows_done))(n);
        if chunk_bytes >= shared.flush_bytes || chunk.pairs.len() >= 50_000 {
            flush(&mut chunk)?;
            chunk_bytes = 0;
        }
    }
    if !chunk.pairs.is_empty() || !chunk.items.is_empty() {
        flush(&mut chunk)?;
    }
    Ok(())
}

/// A 128-bit key for a pair id (a hex string), so that the set of ids handed on stays small.
fn pair_key(id: &str) -> u128 {
    let mut k = [0u8; 16];
    k.copy_from_slice(&blake3::hash(id.as_bytes()).as_bytes()[..16]);
    u128::from_le_bytes(k)
}

/// One line per split tag for the stage summary: rows, pairs, and each reason a row gave no
/// pair.
pub fn summarise(report: &ReadReport) -> String {
    report
        .iter()
        .map(|(tag, c)| {
            let mut s = format!(
                "{tag}: {} rows → {} pairs ({} ties, {} unlabeled dropped, {} with a NaN label, \
                 {} showing one image twice",
                c.rows, c.pairs, c.ties, c.unlabeled, c.nan_labels, c.same_image
            );
            if c.incomplete > 0 {
                s += &format!(", {} without user or caption", c.incomplete);
            }
            if c.bad_images > 0 {
                let examples: Vec<String> = c
                    .bad_examples
                    .iter()
                    .map(|(r, why)| format!("ranking_id {r}: {why}"))
                    .collect();
                s += &format!(
                    ", {} skipped: an image does not decode ({})",
                    c.bad_images,
                    examples.join("; ")
                );
            }
            if c.repeated > 0 {
                s += &format!(
                    "; {} rows repeat a row already read, so {} preference rows are {} distinct pairs",
                    c.repeated,
                    c.pairs + c.repeated,
                    c.pairs
                );
            }
            s + ")"
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_file_names() {
        assert!(wildcard("train-*.parquet", "train-00000-of-00002.parquet"));
        assert!(!wildcard("train-*.parquet", "test-00000-of-00002.parquet"));
        assert!(!wildcard("train-*.parquet", "train-0.parquet.tmp"));
        assert!(wildcard("*", "anything"));
        assert!(wildcard("a*b*c", "axxbyyc"));
        assert!(!wildcard("a*b*c", "axxcyyb"));
    }
}
