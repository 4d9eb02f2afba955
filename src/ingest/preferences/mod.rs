//! `preferences`: pairwise preference data with annotator ids, in the formats people hold.
//!
//! A stage names its files (`path`: a file, a glob or a folder in the Hugging Face datasets
//! layout; [`formats`]), how rows are laid out (`layout`; [`layouts`]) and which column, or
//! dotted path into nested records, holds each part (`columns`; [`value`]), or a `preset`
//! that fills those in ([`presets`]). Rows are streamed: each becomes zero or more pairs, and
//! the items, prompts and pairs gather in sorted runs that go to temporary files when they
//! outgrow their budget ([`spill`]). JSON lines are parsed and mapped in blocks of lines on
//! several threads (`PALPIPE_INGEST_THREADS`), and what each row does is applied in file
//! order on one (see `Effect`), so nothing depends on the threads. The rows a block makes are
//! encoded there, on its thread, and join their tables' runs as that block of bytes (see
//! `Encodings`; rows of other formats, read one at a time, are gathered into such blocks
//! too). Once the files are read
//! the runs are merged, one row per id, in id order, and handed on in chunks of Arrow columns
//! filled straight from the runs' encodings ([`columns`]; the `ratings` layout's ratings go
//! through runs too, merged group by group once the files are read). So memory holds a run
//! per table and one entry per distinct user, whatever the file size, and the rows stored do
//! not depend on how the input was cut.
//!
//! Per row:
//! - the user is `<dataset>/<user column>` (or `user: {constant: NAME}`); all users "seen";
//! - the split is the `split` column, else the file name's split (`train-00000-of-00002`,
//!   `valid1.jsonl`), else "train";
//! - items are texts, or images (bytes, a Hugging Face `Image` record `{bytes, path}`, or with
//!   `items: image` a path relative to the data file), stored by content hash; two chat
//!   transcripts (lists of `{role, content}`, or HH-RLHF text) are split into their shared
//!   history (the prompt, unless a `prompt` column is mapped) and their final replies;
//! - `chosen`/`rejected` pairs put the preferred item on a side drawn from the pair's content
//!   (seeded), `left`/`right` pairs keep their sides; the pair id hashes user, prompt,
//!   items, label, split, the `id` column and a weight other than 1.0, so a repeated row is
//!   one pair;
//! - `weight` (optional; pairwise and best_of_k) is stored per pair (`pairs.weight`) and
//!   weighs the comparison in the PAL loss; unmapped, every pair weighs 1.0; a null, a
//!   non-number, NaN, an infinite, negative or zero weight drops the row, counted by reason;
//! - rows that make no preference (missing label, NaN, a tie, the same item twice, empty
//!   text) are dropped and counted by reason; a mapped path missing in a row is counted with
//!   the first row it happened in, or is an error with `strict: true`; a row without a user
//!   id is an error (`user: {constant: NAME}` says that all rows share one).
//!
//! The rows stored do not depend on the order of the input rows (every decision is a
//! function of the row's content), only their storage order, which readers sort away.

pub mod columns;
pub mod error;
pub mod formats;
pub mod layouts;
pub mod presets;
pub mod spill;
pub mod value;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};

use serde::{Deserialize, Serialize};

pub use error::{Loc, MixedTypes, PrefError};
pub use formats::Format;
pub use layouts::{LabelConvention, Layout};
use layouts::{Verdict, MISSING_LABEL, NAN_LABEL, TIE};
use spill::{Runs, SpillDir};
use value::{Found, Val};

use super::common::{IngestError, ROLE_SEEN};
use crate::store::records::{
    content_id, pair_id, IngestBatch, ItemRow, PairRow, PromptRow, UserRow,
};

/// What a key of `columns` maps to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Column {
    /// A column name or a dotted path (`info.post`, `summaries.0.text`).
    Path(String),
    /// Several paths: response columns (`[response_a, response_b]`), a two-score label
    /// (`[label_0, label_1]`), or a group made of several columns.
    Paths(Vec<String>),
    /// The same value for every row (`user: {constant: anon}`).
    Constant { constant: String },
}

impl Column {
    fn paths(&self) -> Vec<&str> {
        match self {
            Column::Path(p) => vec![p.as_str()],
            Column::Paths(ps) => ps.iter().map(String::as_str).collect(),
            Column::Constant { .. } => Vec::new(),
        }
    }
}

/// The keys `columns` takes.
pub const KEYS: [&str; 15] = [
    "user",
    "prompt",
    "chosen",
    "rejected",
    "left",
    "right",
    "label",
    "responses",
    "preferred",
    "response",
    "score",
    "group",
    "split",
    "id",
    "weight",
];

/// What string items are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    /// Texts (binary values and `{bytes, path}` records are still images).
    #[default]
    Text,
    /// Paths of image files, relative to the data file's folder.
    Image,
}

/// Parameters of a `preferences` stage (and of `palpipe ingest`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The `dataset` of its pairs and users, and the prefix of user ids. Required.
    pub dataset: String,
    /// A file, a glob (`data/train-*.parquet`) or a folder. Required.
    pub path: PathBuf,
    /// `parquet`, `csv`, `tsv`, `jsonl` or `json`; default: from each file's extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// `pairwise` (default), `best_of_k` or `ratings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// Key → column or dotted path (see [`KEYS`]); over the preset's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, Column>,
    /// A preset's name (see [`presets`]): its settings, under the stage's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// `index` (0/1, default for one label column), `sign` (−1/+1) or `scores` (two columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_convention: Option<LabelConvention>,
    /// `ratings`: the smallest score difference that makes a pair. Default: any difference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_gap: Option<f64>,
    /// A mapped path missing in a row is an error instead of a counted drop.
    #[serde(default)]
    pub strict: bool,
    /// What string items are: `text` (default) or `image` (paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<ItemKind>,
    /// Seeds the side each chosen/rejected pair's preferred item goes on. Default 0.
    #[serde(default)]
    pub seed: u64,
}

/// A preset file: the settings a stage may leave to it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetSettings {
    #[serde(default)]
    format: Option<Format>,
    #[serde(default)]
    layout: Option<Layout>,
    #[serde(default)]
    columns: BTreeMap<String, Column>,
    #[serde(default)]
    label_convention: Option<LabelConvention>,
    #[serde(default)]
    min_gap: Option<f64>,
    #[serde(default)]
    items: Option<ItemKind>,
}

/// The settings in force: the stage's over its preset's over the defaults, checked.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub format: Option<Format>,
    pub layout: Layout,
    pub columns: BTreeMap<String, Column>,
    pub convention: LabelConvention,
    pub min_gap: f64,
    pub items: ItemKind,
}

/// Resolves the preset and checks that the layout has the columns it needs.
pub fn mapping(p: &Params) -> Result<Mapping, PrefError> {
    let preset = match &p.preset {
        None => PresetSettings::default(),
        Some(name) => {
            let text = presets::get(name).ok_or_else(|| {
                PrefError::param(
                    "preset",
                    format!(
                        "unknown preset '{name}'\nhint: presets: {}",
                        presets::names()
                    ),
                )
            })?;
            serde_yaml::from_str(text).map_err(|e| {
                PrefError::param("preset", format!("preset '{name}' does not parse: {e}"))
            })?
        }
    };
    let mut columns = preset.columns;
    columns.extend(p.columns.clone());
    for key in columns.keys() {
        if !KEYS.contains(&key.as_str()) {
            return Err(PrefError::param(
                &format!("columns.{key}"),
                format!(
                    "unknown column key '{key}'\nhint: keys: {}",
                    KEYS.join(", ")
                ),
            ));
        }
    }
    let layout = p.layout.or(preset.layout).unwrap_or_default();
    let has = |k: &str| columns.contains_key(k);
    if !has("user") {
        return Err(PrefError::param(
            "columns.user",
            "no user column: palpipe learns per-user preferences\nhint: map the annotator id (columns: {user: worker_id}; with palpipe ingest, --column user=worker_id), or say every row is one user's with columns: {user: {constant: NAME}} (--column 'user={constant: NAME}')",
        ));
    }
    let need = |keys: &[&str], what: &str| -> Result<(), PrefError> {
        match keys.iter().find(|k| !has(k)) {
            Some(k) => Err(PrefError::param(
                &format!("columns.{k}"),
                format!("layout '{what}' needs columns.{k}"),
            )),
            None => Ok(()),
        }
    };
    match layout {
        Layout::Pairwise => {
            if has("chosen") || has("rejected") {
                need(&["chosen", "rejected"], "pairwise")?;
            } else if has("left") || has("right") {
                need(&["left", "right", "label"], "pairwise")?;
            } else {
                return Err(PrefError::param(
                    "columns",
                    "layout 'pairwise' needs columns chosen and rejected, or left, right and label",
                ));
            }
        }
        Layout::BestOfK => need(&["responses", "preferred"], "best_of_k")?,
        Layout::Ratings => {
            need(&["response"], "ratings")?;
            if has("weight") {
                return Err(PrefError::param(
                    "columns.weight",
                    "layout 'ratings' takes no weight: a rating row makes no comparison by itself\nhint: weights belong to pairwise and best_of_k rows",
                ));
            }
            if !has("score") && !has("preferred") {
                return Err(PrefError::param(
                    "columns.score",
                    "layout 'ratings' needs columns.score (pairs by score) or columns.preferred (a flag on the chosen response)",
                ));
            }
            if !has("group") && !has("prompt") {
                return Err(PrefError::param(
                    "columns.group",
                    "layout 'ratings' needs columns.group or columns.prompt: ratings are compared within one rater and group",
                ));
            }
        }
    }
    let two_labels = matches!(columns.get("label"), Some(Column::Paths(v)) if v.len() == 2);
    let convention = p
        .label_convention
        .or(preset.label_convention)
        .unwrap_or(if two_labels {
            LabelConvention::Scores
        } else {
            LabelConvention::Index
        });
    if has("label") && (convention == LabelConvention::Scores) != two_labels {
        return Err(PrefError::param(
            "label_convention",
            "label_convention 'scores' takes two label columns (label: [label_0, label_1]); 'index' and 'sign' take one",
        ));
    }
    let min_gap = p.min_gap.or(preset.min_gap).unwrap_or(0.0);
    if min_gap.is_nan() || min_gap < 0.0 {
        return Err(PrefError::param(
            "min_gap",
            format!("min_gap is {min_gap}, expected a number >= 0"),
        ));
    }
    if p.dataset.trim().is_empty() || p.dataset.contains(['\'', '"']) {
        return Err(PrefError::param(
            "dataset",
            format!("dataset '{}' is not a usable name", p.dataset),
        ));
    }
    Ok(Mapping {
        format: p.format.or(preset.format),
        layout,
        columns,
        convention,
        min_gap,
        items: p.items.or(preset.items).unwrap_or_default(),
    })
}

/// The data files of a stage, or `path` itself when it matches none (so that the pipeline's
/// input check reports it missing).
pub fn input_files(p: &Params) -> Vec<PathBuf> {
    let files = formats::list_files(&p.path);
    if files.is_empty() {
        vec![p.path.clone()]
    } else {
        files
    }
}

/// A row drop reason's count and the first row it happened in.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dropped {
    pub rows: usize,
    pub first: String,
}

/// What a read did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub files: usize,
    pub rows: usize,
    pub pairs: usize,
    /// Pairs per split tag.
    pub splits: BTreeMap<String, usize>,
    /// Rows (or, for best-of-k and ratings, comparisons) dropped, by reason.
    pub dropped: BTreeMap<String, Dropped>,
    /// Comparisons that repeat a pair already read (same pair id): one pair.
    pub repeated: usize,
}

impl Report {
    /// One line for the stage summary.
    pub fn summary(&self) -> String {
        let splits: Vec<String> = self
            .splits
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        let mut s = format!(
            "{} file(s), {} rows → {} pairs ({})",
            self.files,
            self.rows,
            self.pairs,
            splits.join(", ")
        );
        if !self.dropped.is_empty() {
            let d: Vec<String> = self
                .dropped
                .iter()
                .map(|(why, d)| format!("{} {why} (first: {})", d.rows, d.first))
                .collect();
            s += &format!("; dropped: {}", d.join(", "));
        }
        if self.repeated > 0 {
            s += &format!("; {} repeat a pair already read", self.repeated);
        }
        s
    }

    fn note_drop(&mut self, why: &str, path: &Path, at: Loc) {
        let d = self.dropped.entry(why.to_string()).or_default();
        if d.rows == 0 {
            d.first = format!("{} {at}", path.display());
        }
        d.rows += 1;
    }
}

/// A content-addressed item read from a row (its text borrowed from the row where the row
/// holds it as it is).
#[derive(Debug)]
struct Item<'r> {
    id: String,
    text: Option<Cow<'r, str>>,
    bytes: Option<Vec<u8>>,
}

impl<'r> Item<'r> {
    fn text(s: impl Into<Cow<'r, str>>) -> Item<'r> {
        let s = s.into();
        Item {
            id: content_id(s.as_bytes()),
            text: Some(s),
            bytes: None,
        }
    }
    fn image(b: Vec<u8>) -> Item<'r> {
        Item {
            id: content_id(&b),
            text: None,
            bytes: Some(b),
        }
    }
}

/// One rating of the `ratings` layout, kept (in sorted runs, see [`spill`]) until every
/// file is read and its group is complete.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
struct Rated {
    /// `user` and `group` joined: the runs' sort key.
    key: String,
    user: String,
    group: String,
    item: String,
    score: f64,
    chosen: bool,
    prompt: Option<String>,
    split: String,
    at: String,
}

impl spill::Record for Rated {
    const FIELDS: &'static [spill::Field] = &[
        spill::Field::Value,
        spill::Field::Value,
        spill::Field::Value,
        spill::Field::Value,
        spill::Field::Fixed(8),
        spill::Field::Fixed(1),
        spill::Field::Value,
        spill::Field::Value,
        spill::Field::Value,
    ];
    fn encode(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        use spill::{put_opt, put_str};
        put_str(w, &self.key)?;
        put_str(w, &self.user)?;
        put_str(w, &self.group)?;
        put_str(w, &self.item)?;
        w.write_all(&self.score.to_le_bytes())?;
        w.write_all(&[u8::from(self.chosen)])?;
        put_opt(w, self.prompt.as_deref())?;
        put_str(w, &self.split)?;
        put_str(w, &self.at)
    }
    fn decode(raw: &[u8]) -> std::io::Result<Rated> {
        let mut f = spill::RawFields::new(raw);
        Ok(Rated {
            key: f.str()?.to_string(),
            user: f.str()?.to_string(),
            group: f.str()?.to_string(),
            item: f.str()?.to_string(),
            score: f64::from_le_bytes(f.fixed::<8>()?),
            chosen: f.fixed::<1>()?[0] != 0,
            prompt: f.opt_str()?.map(String::from),
            split: f.str()?.to_string(),
            at: f.str()?.to_string(),
        })
    }
}

/// A row that gives no comparison: why.
type Skip = &'static str;

/// Rows per chunk handed to the store writer, and bytes per chunk (about).
const CHUNK_ROWS: usize = 32_000;
const CHUNK_BYTES: usize = 16 << 20;
/// Memory budget of each table's sorted run before it goes to a file. Prompts and pairs had
/// 8 MiB until session 33: at 32 MiB a 1 GB file makes a quarter as many of their runs and
/// is read about 5% faster, for up to 48 MiB more memory held in runs; peak memory stays flat
/// in the file's size (bench/README.md, "Session 33").
const RUN_ITEMS: usize = 32 << 20;
const RUN_PROMPTS: usize = 32 << 20;
const RUN_PAIRS: usize = 32 << 20;
const RUN_RATINGS: usize = 16 << 20;
/// Sets every table's run budget in bytes instead (tests use it to make runs spill).
pub const RUN_BYTES_VAR: &str = "PALPIPE_INGEST_RUN_BYTES";

/// A run budget: `default`, or the bytes `PALPIPE_INGEST_RUN_BYTES` says.
fn run_budget(default: usize) -> usize {
    std::env::var(RUN_BYTES_VAR)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Sets the number of threads that parse and map JSON lines (default: the machine's
/// cores, at most 8; 1 reads on the calling thread). The rows stored do not depend on it.
pub const THREADS_VAR: &str = "PALPIPE_INGEST_THREADS";
/// Sets the bytes of JSON lines per block handed to a thread, and the bytes of encoded rows
/// that rows read one at a time (CSV, Parquet) gather before they join their runs (tests make
/// both small).
pub const BLOCK_BYTES_VAR: &str = "PALPIPE_INGEST_BLOCK_BYTES";
/// Bytes of JSON lines per block (whole lines, so a block may be a little longer).
const BLOCK_BYTES: usize = 1 << 20;

/// A count from the environment variable `var`, else `default`.
fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The threads that read JSON lines (see [`THREADS_VAR`]).
fn reader_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    env_count(THREADS_VAR, cores.min(8)).max(1)
}

/// What reading a row does, in the order the row does it. The row logic ([`Rows`]) only
/// reads the stage's settings, so blocks of rows can go through it on several threads; the
/// effects are then applied in file order by one [`Reader`], which owns every piece of state
/// (runs, users, counts, the type check across rows). So the result, errors included, is
/// the same whatever the number of threads and the size of the blocks.
enum Effect<'m> {
    /// A row begins (it is counted).
    Row,
    /// The keys of a JSON lines block's first row: the file's columns, when no row came
    /// before.
    Columns(Vec<String>),
    /// A JSON line that does not parse (as JSON, or at all when no row came before).
    Syntax {
        n: u64,
        message: String,
    },
    /// A mapped path's value kind, where it was met (checked across rows and files).
    Kind(&'m str, &'static str, Loc),
    /// A pair's user, the first time the row logic met it (the pair itself is in the
    /// [`Encodings`]).
    User(String),
    Rating(Rated),
    /// A row (or comparison) that gives nothing, and why.
    Drop(Cow<'static, str>, Loc),
    /// The read stops with this error.
    Fail(PrefError),
}

struct Reader<'a, S> {
    p: &'a Params,
    m: &'a Mapping,
    sink: S,
    file: PathBuf,
    file_split: Option<String>,
    /// Threads that parse and map JSON lines.
    threads: usize,
    items: Runs<ItemRow>,
    prompts: Runs<PromptRow>,
    pairs: Runs<PairRow>,
    /// The users met (one per distinct user), and their rows.
    sent_users: HashSet<String>,
    users: Vec<UserRow>,
    /// Per mapped path: the first non-null value's kind and where it was.
    kinds: HashMap<&'a str, (&'static str, PathBuf, Loc)>,
    /// The `ratings` layout's ratings, grouped by (user, group) when merged.
    ratings: Runs<Rated>,
    /// Rows of files read a row at a time (not JSON lines), until they make a block of
    /// `block_bytes` (see [`BLOCK_BYTES_VAR`]).
    pending: Encodings,
    block_bytes: usize,
    /// The users of the pairs in `pending` (each goes to the effects once per block).
    pending_met: HashSet<String>,
    report: Report,
    /// Where runs go when they outgrow their budget. The last field, so that it is dropped
    /// (the folder removed) after the runs above, whose drops wait for a run still being
    /// written into it.
    spill: SpillDir,
}

/// The files `p.path` names (a file, a glob or a folder), in order.
///
/// # Errors
/// [`PrefError::NoFiles`] when it names none.
fn data_files(p: &Params) -> Result<Vec<PathBuf>, PrefError> {
    let files = formats::list_files(&p.path);
    if files.is_empty() {
        return Err(PrefError::NoFiles {
            path: p.path.clone(),
        });
    }
    Ok(files)
}

/// The top-level columns the mapping reads (each dotted path whole and its first part).
fn wanted_columns(m: &Mapping) -> Vec<String> {
    let mut wanted = Vec::new();
    for c in m.columns.values() {
        for path in c.paths() {
            wanted.push(path.to_string());
            wanted.push(path.split('.').next().unwrap_or(path).to_string());
        }
    }
    wanted
}

/// The format of file `f`: the `format` parameter, else its name's extension.
fn file_format(m: &Mapping, f: &Path) -> Result<Format, PrefError> {
    m.format.or_else(|| formats::format_from_name(f)).ok_or_else(|| {
        PrefError::param(
            "format",
            format!(
                "cannot tell the format of '{}' from its name\nhint: set the format (format: in a pipeline, --format with palpipe ingest): parquet, csv, tsv, jsonl or json",
                f.display()
            ),
        )
    })
}

/// Checks every mapped column against the file's columns (see [`formats::RowSink::columns`]).
///
/// # Errors
/// [`PrefError::NoColumn`] for the first mapped path whose top-level column `names` lacks,
/// with the file's columns and the closest name.
fn check_columns(m: &Mapping, file: &Path, names: &[String]) -> Result<(), PrefError> {
    for (key, col) in &m.columns {
        for path in col.paths() {
            let root = path.split('.').next().unwrap_or(path);
            if names.iter().any(|n| n == path || n == root) {
                continue;
            }
            return Err(PrefError::NoColumn {
                path: file.to_path_buf(),
                key: key.clone(),
                column: path.to_string(),
                have: names.join(", "),
                closest: crate::suggest::closest(root, names.iter().map(String::as_str)),
            });
        }
    }
    Ok(())
}

/// What a dry run checks of a `preferences` stage, reading each file only up to its columns
/// and first row (a Parquet file only to its schema) and writing nothing: that the path names
/// files, each has a known format, reads as it and is not empty, and each holds every mapped
/// column. Returns how many files it checked. The rows themselves are not checked.
///
/// # Errors
/// The error the ingest itself would stop with at the same place: [`PrefError::NoFiles`], a
/// `format` [`PrefError::Param`], [`PrefError::NotFormat`], [`PrefError::NoColumn`], an empty
/// file, a first JSON line that does not parse, an I/O error naming the file.
pub fn check_headers(p: &Params) -> Result<usize, PrefError> {
    let m = mapping(p)?;
    let files = data_files(p)?;
    let wanted = wanted_columns(&m);
    for f in &files {
        let format = file_format(&m, f)?;
        let mut header = HeaderCheck {
            m: &m,
            file: f,
            stop_at_columns: format == Format::Parquet,
            checked: false,
        };
        match formats::read_file(f, format, &wanted, &mut header) {
            // Stopped by the check itself once the columns were read and found.
            Err(PrefError::Stopped) if header.checked => {}
            Err(e) => return Err(e),
            // The JSON lines check returns once it has the columns (the other readers end
            // with `Stopped` or, without a row, with the ingest's own empty-file error).
            Ok(()) => {}
        }
    }
    Ok(files.len())
}

/// The sink of [`check_headers`]: checks a file's columns, then stops its read at the first
/// row (so that a file with a header and no rows is the error it is in the ingest), or right
/// at the columns when `stop_at_columns` (Parquet: a row would decode a whole row group).
struct HeaderCheck<'a> {
    m: &'a Mapping,
    file: &'a Path,
    stop_at_columns: bool,
    /// The columns were read and every mapped one is there.
    checked: bool,
}

impl formats::RowSink for HeaderCheck<'_> {
    fn columns(&mut self, names: &[String]) -> Result<(), PrefError> {
        check_columns(self.m, self.file, names)?;
        self.checked = true;
        match self.stop_at_columns {
            true => Err(PrefError::Stopped),
            false => Ok(()),
        }
    }

    fn row(&mut self, _at: Loc, _row: Val) -> Result<(), PrefError> {
        // Readers give the columns before the first row; nothing past it is needed.
        Err(PrefError::Stopped)
    }

    /// Reads up to the first line that is not blank: its keys are the file's columns. A
    /// stream of blank lines only is an empty file, as in the ingest.
    fn json_lines(
        &mut self,
        path: &Path,
        format: Format,
        r: &mut dyn BufRead,
    ) -> Result<(), PrefError> {
        let mut line = Vec::new();
        for n in 1.. {
            line.clear();
            if r.read_until(b'\n', &mut line).map_err(formats::io(path))? == 0 {
                break;
            }
            match formats::parse_line(n, &line) {
                formats::Line::Blank => continue,
                formats::Line::Value(v) => {
                    let row = formats::object(path, Loc { unit: "line", n }, v)?;
                    return self.columns(&formats::keys(&row));
                }
                formats::Line::Syntax(message) => {
                    return Err(formats::syntax_error(path, format, n, message, true))
                }
            }
        }
        Err(IngestError::EmptyFile {
            path: path.to_path_buf(),
        }
        .into())
    }
}

/// Streams the files of `p`, handing chunks of rows to `sink`. Returns what it did.
pub fn read<S>(p: &Params, sink: S) -> Result<Report, PrefError>
where
    S: FnMut(IngestBatch) -> Result<(), PrefError>,
{
    let m = mapping(p)?;
    let files = data_files(p)?;
    let wanted = wanted_columns(&m);
    let mut r = Reader {
        p,
        m: &m,
        sink,
        file: PathBuf::new(),
        file_split: None,
        threads: reader_threads(),
        spill: SpillDir::new().map_err(|source| PrefError::Spill {
            dir: std::env::temp_dir(),
            source,
        })?,
        items: Runs::new("items", run_budget(RUN_ITEMS)),
        prompts: Runs::new("prompts", run_budget(RUN_PROMPTS)),
        pairs: Runs::new("pairs", run_budget(RUN_PAIRS)),
        sent_users: HashSet::new(),
        users: Vec::new(),
        kinds: HashMap::new(),
        ratings: Runs::keep_all("ratings", run_budget(RUN_RATINGS)),
        pending: Encodings::default(),
        block_bytes: env_count(BLOCK_BYTES_VAR, BLOCK_BYTES).max(1),
        pending_met: HashSet::new(),
        report: Report::default(),
    };
    for f in &files {
        let format = file_format(&m, f)?;
        r.file = f.clone();
        r.file_split = formats::split_from_name(f);
        formats::read_file(f, format, &wanted, &mut r)?;
        r.report.files += 1;
    }
    r.flush_pending()?;
    r.finish_groups()?;
    r.finish()?;
    if r.report.pairs == 0 {
        return Err(IngestError::NoData {
            path: p.path.clone(),
            what: format!("no row makes a preference: {}", r.report.summary()),
        }
        .into());
    }
    Ok(r.report)
}

/// A mapped path missing in a row (the path).
struct Missing(String);

impl<'a, S> formats::RowSink for Reader<'a, S>
where
    S: FnMut(IngestBatch) -> Result<(), PrefError>,
{
    /// Checks that every mapped column is in the file. Only the file's columns (a CSV
    /// header, a Parquet schema, the first JSON row's keys) are checked here: a JSON row
    /// further on that lacks a mapped path is a row with a missing path, dropped and counted
    /// (or an error with `strict: true`) like a missing nested path, since JSON rows need not
    /// share their keys.
    fn columns(&mut self, names: &[String]) -> Result<(), PrefError> {
        check_columns(self.m, &self.file, names)
    }

    fn row(&mut self, at: Loc, row: Val) -> Result<(), PrefError> {
        self.report.rows += 1;
        let mut rows = Rows::new(self.p, self.m, &self.file, self.file_split.as_deref());
        rows.enc = std::mem::take(&mut self.pending);
        rows.met = std::mem::take(&mut self.pending_met);
        rows.row(at, &row);
        let (effects, enc, met) = (rows.out, rows.enc, rows.met);
        (self.pending, self.pending_met) = (enc, met);
        for e in effects {
            self.apply(e)?;
        }
        if self.pending.size() >= self.block_bytes {
            self.flush_pending()?;
        }
        Ok(())
    }

    /// JSON lines in blocks of whole lines: parsed and mapped on `threads` threads, the
    /// blocks' effects applied in file order on this one.
    fn json_lines(
        &mut self,
        path: &Path,
        format: Format,
        r: &mut dyn BufRead,
    ) -> Result<(), PrefError> {
        // Rows naming image files carry the files' bytes in their block's encodings until the
        // block is applied: one line per block then, so a few images are in flight, not a
        // block's worth.
        let default = if self.m.items == ItemKind::Image {
            1
        } else {
            BLOCK_BYTES
        };
        let target = env_count(BLOCK_BYTES_VAR, default).max(1);
        let mut lines = formats::Blocks::new(path, r, target);
        let mut first = true;
        if self.threads <= 1 {
            // One block buffer and one effect list, reused.
            let (mut data, mut effects) = (Vec::new(), Vec::new());
            let mut like = ListSizes::default();
            while let Some(block) = lines.next_block(data)? {
                let rows;
                (effects, rows) = block_effects(
                    self.p,
                    self.m,
                    &self.file,
                    self.file_split.as_deref(),
                    &block,
                    effects,
                    &mut like,
                );
                self.apply_lines(&mut effects, format, &mut first)?;
                self.add_rows(rows)?;
                data = block.data;
            }
        } else {
            self.json_lines_parallel(&mut lines, format, &mut first)?;
        }
        if first {
            return Err(IngestError::EmptyFile {
                path: path.to_path_buf(),
            }
            .into());
        }
        Ok(())
    }
}

/// The effects of one block of JSON lines, in `out` (emptied first: lists are reused, so
/// that each block does not ask the allocator for megabytes afresh), and the rows they
/// give: each line parsed and mapped, in order, up to the first line that stops the read.
/// The rows' lists start with the room the thread's previous block used, scaled to this
/// block's size (`like`, which is then set to this block's): grown from nothing, each list
/// was copied as it doubled, about 3% of a 100 MB ingest's CPU time (bench/README.md,
/// "Session 35").
fn block_effects<'m>(
    p: &'m Params,
    m: &'m Mapping,
    file: &Path,
    file_split: Option<&str>,
    block: &formats::Block,
    mut out: Vec<Effect<'m>>,
    like: &mut ListSizes,
) -> (Vec<Effect<'m>>, Encodings) {
    out.clear();
    let mut rows = Rows::new(p, m, file, file_split);
    rows.enc = Encodings::sized_like(like, block.data.len());
    rows.out = out;
    let mut first = true;
    for (n, line) in block.lines() {
        let at = Loc { unit: "line", n };
        let value = match formats::parse_line(n, line) {
            formats::Line::Blank => continue,
            formats::Line::Value(v) => v,
            formats::Line::Syntax(message) => {
                rows.out.push(Effect::Syntax { n, message });
                break;
            }
        };
        let row = match formats::object(file, at, value) {
            Ok(row) => row,
            Err(e) => {
                rows.out.push(Effect::Fail(e));
                break;
            }
        };
        if first {
            rows.out.push(Effect::Columns(formats::keys(&row)));
            first = false;
        }
        rows.out.push(Effect::Row);
        if !rows.row(at, &row) {
            break;
        }
    }
    *like = rows.enc.sizes(block.data.len());
    (rows.out, rows.enc)
}

/// A block's effects and the rows it gives.
type BlockOut<'m> = (Vec<Effect<'m>>, Encodings);

/// A worker's answer: a block's index and its effects and rows (or the worker's panic).
type Done<'m> = (usize, std::thread::Result<BlockOut<'m>>);

/// Block buffers and effect lists done with, for the next blocks.
struct Spare<'m> {
    blocks: Mutex<Vec<Vec<u8>>>,
    effects: Mutex<Vec<Vec<Effect<'m>>>>,
}

impl<'m> Spare<'m> {
    fn block(&self) -> Vec<u8> {
        self.blocks
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .unwrap_or_default()
    }
    fn effects(&self) -> Vec<Effect<'m>> {
        self.effects
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .unwrap_or_default()
    }
    fn give_block(&self, b: Vec<u8>) {
        if let Ok(mut v) = self.blocks.lock() {
            v.push(b);
        }
    }
    fn give_effects(&self, e: Vec<Effect<'m>>) {
        if let Ok(mut v) = self.effects.lock() {
            v.push(e);
        }
    }
}

impl<'a, S> Reader<'a, S>
where
    S: FnMut(IngestBatch) -> Result<(), PrefError>,
{
    /// Reads blocks of `lines` on worker threads, a few blocks ahead, and applies their
    /// effects in file order.
    fn json_lines_parallel(
        &mut self,
        lines: &mut formats::Blocks<'_>,
        format: Format,
        first: &mut bool,
    ) -> Result<(), PrefError> {
        let (p, m, threads) = (self.p, self.m, self.threads);
        let file = self.file.clone();
        let file_split = self.file_split.clone();
        let (work_tx, work_rx) = mpsc::channel::<(usize, formats::Block)>();
        let work_rx = Mutex::new(work_rx);
        let (done_tx, done_rx) = mpsc::channel::<Done<'a>>();
        let spare = Spare {
            blocks: Mutex::new(Vec::new()),
            effects: Mutex::new(Vec::new()),
        };
        std::thread::scope(|s| {
            for _ in 0..threads {
                let done_tx = done_tx.clone();
                let (work_rx, file, file_split, spare) =
                    (&work_rx, &file, file_split.as_deref(), &spare);
                let mut like = ListSizes::default();
                s.spawn(move || loop {
                    // The lock is held while waiting: the next block goes to one waiting
                    // thread.
                    let job = match work_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((i, block)) = job else { return };
                    let out = spare.effects();
                    let effects = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        block_effects(p, m, file, file_split, &block, out, &mut like)
                    }));
                    spare.give_block(block.data);
                    if done_tx.send((i, effects)).is_err() {
                        return;
                    }
                });
            }
            drop(done_tx);
            let fed = self.feed_blocks(lines, &work_tx, &done_rx, &spare, format, first);
            // No more blocks: the threads end once their block is done.
            drop(work_tx);
            fed
        })
    }

    /// Sends blocks to the threads (at most a few more than are applied) and applies their
    /// effects in block order.
    fn feed_blocks(
        &mut self,
        lines: &mut formats::Blocks<'_>,
        work: &mpsc::Sender<(usize, formats::Block)>,
        done: &mpsc::Receiver<Done<'a>>,
        spare: &Spare<'a>,
        format: Format,
        first: &mut bool,
    ) -> Result<(), PrefError> {
        let ahead = 2 * self.threads + 2;
        let (mut sent, mut applied, mut end) = (0usize, 0usize, false);
        let mut waiting: BTreeMap<usize, BlockOut<'a>> = BTreeMap::new();
        // A read error (I/O, a truncated .gz) waits until the blocks before it are applied:
        // an earlier row's error comes first, as it does on one thread.
        let mut read_error: Option<PrefError> = None;
        loop {
            while !end && read_error.is_none() && sent - applied < ahead {
                match lines.next_block(spare.block()) {
                    Ok(Some(block)) => {
                        if work.send((sent, block)).is_err() {
                            return Err(worker_gone());
                        }
                        sent += 1;
                    }
                    Ok(None) => end = true,
                    Err(e) => read_error = Some(e),
                }
            }
            if applied == sent {
                return match read_error {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
            }
            let (mut effects, rows) = loop {
                if let Some(e) = waiting.remove(&applied) {
                    break e;
                }
                match done.recv() {
                    Ok((i, Ok(e))) => {
                        waiting.insert(i, e);
                    }
                    Ok((_, Err(panic))) => std::panic::resume_unwind(panic),
                    Err(_) => return Err(worker_gone()),
                }
            };
            applied += 1;
            self.apply_lines(&mut effects, format, first)?;
            self.add_rows(rows)?;
            spare.give_effects(effects);
        }
    }

    /// Applies a JSON lines block's effects: the columns check on the file's first row, a
    /// line that does not parse, then the rows' own effects.
    fn apply_lines(
        &mut self,
        effects: &mut Vec<Effect<'a>>,
        format: Format,
        first: &mut bool,
    ) -> Result<(), PrefError> {
        for e in effects.drain(..) {
            match e {
                Effect::Columns(names) => {
                    if *first {
                        *first = false;
                        formats::RowSink::columns(self, &names)?;
                    }
                }
                Effect::Syntax { n, message } => {
                    return Err(formats::syntax_error(
                        &self.file, format, n, message, *first,
                    ))
                }
                other => self.apply(other)?,
            }
        }
        Ok(())
    }

    /// Applies one effect of a row.
    fn apply(&mut self, e: Effect<'a>) -> Result<(), PrefError> {
        match e {
            Effect::Row => self.report.rows += 1,
            Effect::Kind(path, kind, at) => self.check_kind(path, kind, at)?,
            Effect::User(user_id) => self.add_user(&user_id),
            Effect::Rating(r) => self
                .ratings
                .push(&self.spill, r)
                .map_err(|e| self.spill_error(e))?,
            Effect::Drop(why, at) => self.report.note_drop(&why, &self.file, at),
            Effect::Fail(e) => return Err(e),
            // Only JSON lines blocks have these (see `apply_lines`).
            Effect::Columns(_) | Effect::Syntax { .. } => {}
        }
        Ok(())
    }

    /// The type check across rows and files: a mapped path's values are of one kind.
    fn check_kind(&mut self, path: &'a str, kind: &'static str, at: Loc) -> Result<(), PrefError> {
        match self.kinds.get(path) {
            None => {
                self.kinds.insert(path, (kind, self.file.clone(), at));
                Ok(())
            }
            Some((k, f, a)) if *k != kind => Err(PrefError::MixedTypes(Box::new(MixedTypes {
                column: path.to_string(),
                first_path: f.clone(),
                first_at: *a,
                first_kind: k,
                path: self.file.clone(),
                at,
                kind,
            }))),
            Some(_) => Ok(()),
        }
    }

    /// A pair's user, kept when it is the first pair of that user's.
    fn add_user(&mut self, user_id: &str) {
        if !self.sent_users.contains(user_id) {
            self.users.push(UserRow {
                user_id: user_id.to_string(),
                dataset: self.p.dataset.clone(),
                group: None,
                role: ROLE_SEEN.into(),
            });
            self.sent_users.insert(user_id.to_string());
        }
    }

    /// A pair for the runs (made once every file is read), and its user.
    fn add_pair(&mut self, row: PairRow) -> Result<(), PrefError> {
        self.add_user(&row.user_id);
        self.pairs
            .push(&self.spill, row)
            .map_err(|e| self.spill_error(e))
    }

    /// Hands the rows of files read a row at a time to the tables' runs.
    fn flush_pending(&mut self) -> Result<(), PrefError> {
        let rows = std::mem::take(&mut self.pending);
        self.pending_met.clear();
        self.add_rows(rows)
    }

    /// Hands the rows a block gave to the tables' runs (as they are: see [`Encodings`]).
    fn add_rows(&mut self, rows: Encodings) -> Result<(), PrefError> {
        let dir = &self.spill;
        let added = (self.items.push_block(dir, rows.items))
            .and_then(|()| self.prompts.push_block(dir, rows.prompts))
            .and_then(|()| self.pairs.push_block(dir, rows.pairs));
        added.map_err(|e| self.spill_error(e))
    }
}

/// The reading threads stopped without a word (they only stop so when the read is over).
fn worker_gone() -> PrefError {
    PrefError::Spill {
        dir: PathBuf::from("(reading threads)"),
        source: std::io::Error::other("a reading thread stopped"),
    }
}

/// The row logic: what each row gives, as [`Effect`]s and rows encoded for the tables' runs
/// ([`Encodings`]). It reads only the stage's settings and the file's name, so blocks of rows
/// go through it on any thread.
struct Rows<'m, 'f> {
    p: &'m Params,
    m: &'m Mapping,
    file: &'f Path,
    file_split: Option<&'f str>,
    /// The kind first met per path in this block: a value of that kind again needs no
    /// check, any other is an effect to check.
    kinds: Vec<(&'m str, &'static str)>,
    out: Vec<Effect<'m>>,
    /// The rows made, encoded.
    enc: Encodings,
    /// The users of the pairs made (each goes to the effects once).
    met: HashSet<String>,
    /// The weight of the row being read (see [`Rows::weight`]): every pair it makes gets it.
    weight: f32,
}

/// The rows some input gave, encoded where they were made (see [`spill::Encoded`]); handed
/// to the tables' runs as they are once the input's effects are applied.
#[derive(Default)]
struct Encodings {
    items: spill::Encoded,
    prompts: spill::Encoded,
    pairs: spill::Encoded,
}

/// What one block's row lists held, to size the next block's ([`Encodings::sized_like`]).
#[derive(Debug, Clone, Copy, Default)]
struct ListSizes {
    /// The block's bytes of input.
    input: usize,
    /// Bytes of encodings and rows of its items, prompts and pairs.
    lists: [(usize, usize); 3],
}

impl Encodings {
    /// Empty lists with room for what `like`'s lists held, scaled from its input to `input`
    /// bytes, and an eighth more (none when `like` read nothing: the first block).
    fn sized_like(like: &ListSizes, input: usize) -> Encodings {
        let scaled = |n: usize| match like.input {
            0 => 0,
            of => (n as u128 * input as u128 / of as u128) as usize,
        };
        let room = |(bytes, rows): (usize, usize)| {
            let (bytes, rows) = (scaled(bytes), scaled(rows));
            spill::Encoded::with_capacity(bytes + bytes / 8, rows + rows / 8)
        };
        Encodings {
            items: room(like.lists[0]),
            prompts: room(like.lists[1]),
            pairs: room(like.lists[2]),
        }
    }

    /// What the lists hold, for a block of `input` bytes.
    fn sizes(&self, input: usize) -> ListSizes {
        let l = |e: &spill::Encoded| (e.encoded_len(), e.len());
        ListSizes {
            input,
            lists: [l(&self.items), l(&self.prompts), l(&self.pairs)],
        }
    }

    /// Bytes held.
    fn size(&self) -> usize {
        self.items.size() + self.prompts.size() + self.pairs.size()
    }
}

impl<'m, 'f> Rows<'m, 'f> {
    fn new(p: &'m Params, m: &'m Mapping, file: &'f Path, file_split: Option<&'f str>) -> Self {
        Rows {
            p,
            m,
            file,
            file_split,
            kinds: Vec::new(),
            out: Vec::new(),
            enc: Encodings::default(),
            met: HashSet::new(),
            weight: 1.0,
        }
    }

    /// One row's effects; false when the row stops the read.
    fn row(&mut self, at: Loc, row: &Val) -> bool {
        let outcome = match self.m.layout {
            Layout::Pairwise => self.pairwise(at, row),
            Layout::BestOfK => self.best_of_k(at, row),
            Layout::Ratings => self.rating(at, row),
        };
        match outcome {
            Ok(Ok(())) => true,
            Ok(Err(RowSkip::Reason(why))) => {
                self.out.push(Effect::Drop(Cow::Borrowed(why), at));
                true
            }
            Ok(Err(RowSkip::Missing(Missing(path)))) => {
                if self.p.strict {
                    self.out.push(Effect::Fail(PrefError::Row {
                        path: self.file.to_path_buf(),
                        at,
                        column: path,
                        message: "the path is missing in this row".into(),
                        hint: Some("strict: true makes a missing path an error; without it such rows are dropped and counted".into()),
                    }));
                    return false;
                }
                self.out
                    .push(Effect::Drop(Cow::Owned(format!("missing '{path}'")), at));
                true
            }
            Err(e) => {
                self.out.push(Effect::Fail(e));
                false
            }
        }
    }
}

/// Why a row gave nothing: a reason, or a missing path.
enum RowSkip {
    Reason(Skip),
    Missing(Missing),
}

impl From<Missing> for RowSkip {
    fn from(m: Missing) -> RowSkip {
        RowSkip::Missing(m)
    }
}

/// A row's result: `Err` stops the read, `Ok(Err)` drops the row.
type RowResult = Result<Result<(), RowSkip>, PrefError>;

macro_rules! skip {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return Ok(Err(s.into())),
        }
    };
}

impl<'m, 'f> Rows<'m, 'f> {
    /// The value at a mapped key's (single) path; `Missing` when the path is absent.
    fn val<'r>(&mut self, row: &'r Val, key: &str, at: Loc) -> Result<&'r Val, Missing> {
        let m = self.m;
        let Some(Column::Path(path)) = m.columns.get(key) else {
            return Err(Missing(key.to_string()));
        };
        self.lookup(row, path, at)
    }

    /// The value at `path`; its kind goes to the type check across rows and files (see
    /// [`Effect::Kind`]).
    fn lookup<'r>(&mut self, row: &'r Val, path: &'m str, at: Loc) -> Result<&'r Val, Missing> {
        match row.lookup(path) {
            Found::Missing => Err(Missing(path.to_string())),
            Found::Value(v) => {
                if !matches!(v, Val::Null) {
                    let kind = v.kind();
                    match self.kinds.iter().find(|(p, _)| *p == path) {
                        Some((_, k)) if *k == kind => {}
                        Some(_) => self.out.push(Effect::Kind(path, kind, at)),
                        None => {
                            self.kinds.push((path, kind));
                            self.out.push(Effect::Kind(path, kind, at));
                        }
                    }
                }
                Ok(v)
            }
        }
    }

    /// A key's value as text: a constant, one path's scalar, or several paths' scalars joined.
    /// `Ok(Ok(None))`: null. Borrowed from the row or the mapping where it is one value as
    /// it is.
    fn text<'r>(
        &mut self,
        row: &'r Val,
        key: &str,
        at: Loc,
    ) -> Result<Result<Option<Cow<'r, str>>, Missing>, PrefError>
    where
        'm: 'r,
    {
        let m = self.m;
        let Some(col) = m.columns.get(key) else {
            return Ok(Ok(None));
        };
        let paths: &'m [String] = match col {
            Column::Constant { constant } => return Ok(Ok(Some(Cow::Borrowed(constant)))),
            Column::Path(p) => std::slice::from_ref(p),
            Column::Paths(ps) => ps,
        };
        // One path holding a plain string (the common case): the string itself.
        if let [path] = paths {
            if let Ok(Val::Str(s)) = self.lookup(row, path, at) {
                return Ok(Ok(Some(Cow::Borrowed(s))));
            }
        }
        let mut parts = Vec::new();
        for path in paths {
            let v = match self.lookup(row, path, at) {
                Ok(v) => v,
                Err(m) => return Ok(Err(m)),
            };
            if let Some(msgs) = layouts::messages(v) {
                parts.push(layouts::render(&msgs));
                continue;
            }
            match v {
                Val::Null => return Ok(Ok(None)),
                other => match other.as_text() {
                    Some(t) => parts.push(t),
                    None => {
                        return Err(self.bad(at, path, format!("{} is not text", other.show())))
                    }
                },
            }
        }
        Ok(Ok(Some(Cow::Owned(parts.join("\u{1f}")))))
    }

    fn bad(&self, at: Loc, column: &str, message: String) -> PrefError {
        PrefError::Row {
            path: self.file.to_path_buf(),
            at,
            column: column.to_string(),
            message,
            hint: None,
        }
    }

    /// The row's user (required) and split.
    #[allow(clippy::type_complexity)]
    fn user_split<'r>(
        &mut self,
        row: &'r Val,
        at: Loc,
    ) -> Result<Result<(Cow<'r, str>, Cow<'r, str>), RowSkip>, PrefError>
    where
        'm: 'r,
        'f: 'r,
    {
        // Every row needs its user: a row without one is an error, not a drop.
        let what = match self.text(row, "user", at)? {
            Ok(Some(u)) if !u.trim().is_empty() => Ok(u),
            Ok(Some(u)) if !u.is_empty() => Err("a blank user id".to_string()),
            Ok(Some(_)) => Err("an empty user id".to_string()),
            Ok(None) => Err("no user id (null)".to_string()),
            Err(Missing(path)) => Err(format!("no user id ('{path}' is missing in this row)")),
        };
        let user = match what {
            Ok(u) => u,
            Err(message) => {
                return Err(PrefError::Row {
                    path: self.file.to_path_buf(),
                    at,
                    column: self.m.columns["user"].paths().join(", "),
                    message,
                    hint: Some("every row needs its annotator's id; if the rows all come from one user, say so with columns: {user: {constant: NAME}} (with palpipe ingest, --column 'user={constant: NAME}')".into()),
                })
            }
        };
        let split = match self.text(row, "split", at)? {
            Ok(Some(s)) => s,
            Ok(None) => Cow::Borrowed(self.file_split.unwrap_or("train")),
            Err(m) => return Ok(Err(m.into())),
        };
        Ok(Ok((user, split)))
    }

    /// The row's weight in the PAL loss: 1.0 when `weight` is not mapped. A null, a value that
    /// is not a number, NaN, an infinite, negative or zero weight drops the row (counted by
    /// reason): a zero weight would make a comparison that counts for nothing.
    fn weight(&mut self, row: &Val, at: Loc) -> Result<f32, RowSkip> {
        if !self.m.columns.contains_key("weight") {
            return Ok(1.0);
        }
        let v = self.val(row, "weight", at)?;
        if matches!(v, Val::Null) {
            return Err(RowSkip::Reason("missing weight"));
        }
        let Some(w) = v.as_f64() else {
            return Err(RowSkip::Reason("weight is not a number"));
        };
        // As stored: an f64 too large for f32 becomes infinite and is dropped below.
        let w = w as f32;
        if w.is_nan() {
            Err(RowSkip::Reason("weight is NaN"))
        } else if w.is_infinite() {
            Err(RowSkip::Reason("weight is infinite"))
        } else if w < 0.0 {
            Err(RowSkip::Reason("negative weight"))
        } else if w == 0.0 {
            Err(RowSkip::Reason("zero weight"))
        } else {
            Ok(w)
        }
    }

    /// The row's `id` (optional: a missing one is no id).
    fn id<'r>(&mut self, row: &'r Val, at: Loc) -> Result<Option<Cow<'r, str>>, PrefError>
    where
        'm: 'r,
    {
        Ok(self.text(row, "id", at)?.ok().flatten())
    }

    /// An item from a value: text, image bytes, an `{bytes, path}` record, or an image path.
    fn item<'r>(
        &self,
        v: &'r Val,
        column: &str,
        at: Loc,
    ) -> Result<Result<Item<'r>, RowSkip>, PrefError> {
        match v {
            Val::Null => Ok(Err(RowSkip::Reason("missing item"))),
            Val::Str(s) if self.m.items == ItemKind::Image => self.image_file(s, column, at),
            Val::Str(s) if s.trim().is_empty() => Ok(Err(RowSkip::Reason("empty text"))),
            Val::Str(s) => Ok(Ok(Item::text(s.as_str()))),
            Val::Bytes(b) => Ok(image_bytes(b.clone())),
            Val::Map(_) => {
                if let Found::Value(Val::Bytes(b)) = v.lookup("bytes") {
                    return Ok(image_bytes(b.clone()));
                }
                if let Found::Value(Val::Str(p)) = v.lookup("path") {
                    return self.image_file(p, column, at);
                }
                Err(self.bad(
                    at,
                    column,
                    "a record without image bytes or path: expected text or an image".into(),
                ))
            }
            Val::List(_) => match layouts::messages(v) {
                Some(m) => Ok(Ok(Item::text(layouts::render(&m)))),
                None => Err(self.bad(at, column, format!("{} is not text or an image", v.show()))),
            },
            other => Err(self.bad(
                at,
                column,
                format!("{} is not text or an image", other.show()),
            )),
        }
    }

    fn image_file(
        &self,
        rel: &str,
        column: &str,
        at: Loc,
    ) -> Result<Result<Item<'static>, RowSkip>, PrefError> {
        let base = self.file.parent().unwrap_or(Path::new("."));
        let full = base.join(rel);
        match std::fs::read(&full) {
            Ok(b) => Ok(image_bytes(b)),
            Err(e) => Err(PrefError::Row {
                path: self.file.to_path_buf(),
                at,
                column: column.to_string(),
                message: format!("image '{}' cannot be read: {e}", full.display()),
                hint: Some("image paths are relative to the data file's folder".into()),
            }),
        }
    }

    fn pairwise(&mut self, at: Loc, row: &Val) -> RowResult {
        let (user, split) = skip!(self.user_split(row, at)?);
        self.weight = skip!(self.weight(row, at));
        let prompt = skip!(self.text(row, "prompt", at)?);
        let chosen_rejected = self.m.columns.contains_key("chosen");
        let (ka, kb) = if chosen_rejected {
            ("chosen", "rejected")
        } else {
            ("left", "right")
        };
        let a = skip!(self.val(row, ka, at));
        let b = skip!(self.val(row, kb, at));
        let verdict = if chosen_rejected {
            Verdict::Left
        } else {
            let m = self.m;
            let label_paths: Vec<&'m str> = m.columns["label"].paths();
            let mut vals = Vec::new();
            for path in &label_paths {
                vals.push(skip!(self.lookup(row, path, at)));
            }
            match layouts::judge(self.m.convention, &vals) {
                Ok(v) => v,
                Err(message) => return Err(PrefError::Row {
                    path: self.file.to_path_buf(),
                    at,
                    column: label_paths.join(", "),
                    message,
                    hint: Some(
                        "set label_convention: index (0/1), sign (-1/+1) or scores (two columns)"
                            .into(),
                    ),
                }),
            }
        };
        if let Verdict::Drop(why) = verdict {
            return Ok(Err(RowSkip::Reason(why)));
        }
        // Two transcripts: the shared history is the prompt, the final replies the items.
        let (mut history, ia, ib) = match (layouts::messages(a), layouts::messages(b)) {
            (Some(ma), Some(mb)) => {
                let (h, x, y) = layouts::split_messages(&ma, &mb);
                (h.map(Cow::Owned), Item::text(x), Item::text(y))
            }
            _ => match (a, b) {
                (Val::Str(sa), Val::Str(sb)) if layouts::is_hh(sa) && layouts::is_hh(sb) => {
                    match layouts::split_hh(sa, sb) {
                        Some((h, x, y)) => (Some(Cow::Owned(h)), Item::text(x), Item::text(y)),
                        None => (None, Item::text(sa.as_str()), Item::text(sb.as_str())),
                    }
                }
                _ => {
                    let ia = skip!(self.item(a, ka, at)?);
                    let ib = skip!(self.item(b, kb, at)?);
                    (None, ia, ib)
                }
            },
        };
        for it in [&ia, &ib] {
            if it.text.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Ok(Err(RowSkip::Reason("empty text")));
            }
        }
        if ia.id == ib.id {
            return Ok(Err(RowSkip::Reason("same item twice")));
        }
        if prompt.is_some() {
            history = prompt;
        }
        let id = self.id(row, at)?;
        let prompt_id = self.put_prompt(history.as_deref(), at)?;
        let prompt_id = prompt_id.as_deref();
        let (id, label) = (
            id.as_deref(),
            match verdict {
                _ if chosen_rejected => None,
                Verdict::Left => Some(-1),
                _ => Some(1),
            },
        );
        self.put_item(&ia, ka, at)?;
        self.put_item(&ib, kb, at)?;
        // With a label, `ia`/`ib` are the sides as given; without, `ia` is preferred.
        self.put_pair(&user, prompt_id, &ia.id, &ib.id, label, &split, id, at)?;
        Ok(Ok(()))
    }

    fn best_of_k(&mut self, at: Loc, row: &Val) -> RowResult {
        let (user, split) = skip!(self.user_split(row, at)?);
        self.weight = skip!(self.weight(row, at));
        let prompt = skip!(self.text(row, "prompt", at)?);
        let m = self.m;
        let (names, responses): (Vec<String>, Vec<Val>) = match &m.columns["responses"] {
            Column::Paths(paths) => {
                let mut vals = Vec::new();
                for p in paths {
                    // A response column absent in a row is a response not given.
                    vals.push(self.lookup(row, p, at).cloned().unwrap_or(Val::Null));
                }
                (paths.clone(), vals)
            }
            Column::Path(p) => match skip!(self.lookup(row, p, at)) {
                Val::List(items) => (
                    (0..items.len()).map(|i| i.to_string()).collect(),
                    items.clone(),
                ),
                Val::Null => return Ok(Err(RowSkip::Reason("missing item"))),
                other => {
                    return Err(self.bad(
                        at,
                        p,
                        format!("{} is not a list of responses", other.show()),
                    ))
                }
            },
            Column::Constant { .. } => {
                return Err(PrefError::param(
                    "columns.responses",
                    "responses cannot be a constant",
                ))
            }
        };
        let pref_path = self.m.columns["preferred"].paths().join(",");
        let pv = skip!(self.val(row, "preferred", at));
        let best = match layouts::preferred_index(pv, responses.len(), &names) {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(Err(RowSkip::Reason(MISSING_LABEL))),
            Err(message) => {
                return Err(PrefError::Row {
                    path: self.file.to_path_buf(),
                    at,
                    column: pref_path,
                    message,
                    hint: None,
                })
            }
        };
        let winner = skip!(self.item(&responses[best], &names[best], at)?);
        let id = self.id(row, at)?;
        let prompt_id = self.put_prompt(prompt.as_deref(), at)?;
        let mut made = 0;
        for (j, r) in responses.iter().enumerate() {
            if j == best || matches!(r, Val::Null) {
                continue;
            }
            let other = match self.item(r, &names[j], at)? {
                Ok(it) => it,
                Err(_) => continue,
            };
            if other.id == winner.id {
                self.out
                    .push(Effect::Drop(Cow::Borrowed("same item twice"), at));
                continue;
            }
            let tag = format!("{}:{j}", id.as_deref().unwrap_or(""));
            if made == 0 {
                // Once, with the first pair it is in.
                self.put_item(&winner, &names[best], at)?;
            }
            self.put_item(&other, &names[j], at)?;
            let prompt_id = prompt_id.as_deref();
            self.put_pair(
                &user,
                prompt_id,
                &winner.id,
                &other.id,
                None,
                &split,
                Some(&tag),
                at,
            )?;
            made += 1;
        }
        if made == 0 {
            return Ok(Err(RowSkip::Reason("no other response")));
        }
        Ok(Ok(()))
    }

    fn rating(&mut self, at: Loc, row: &Val) -> RowResult {
        let (user, split) = skip!(self.user_split(row, at)?);
        let prompt = skip!(self.text(row, "prompt", at)?);
        let group = if self.m.columns.contains_key("group") {
            skip!(self.text(row, "group", at)?)
        } else {
            prompt.clone()
        };
        let Some(group) = group else {
            return Ok(Err(RowSkip::Reason("no group")));
        };
        let resp = skip!(self.val(row, "response", at));
        let item = skip!(self.item(resp, "response", at)?);
        let (score, chosen) = if self.m.columns.contains_key("preferred") {
            (0.0, skip!(self.val(row, "preferred", at)).truthy())
        } else {
            let sv = skip!(self.val(row, "score", at));
            let path = self.m.columns["score"].paths().join(",");
            match sv {
                Val::Null => return Ok(Err(RowSkip::Reason(MISSING_LABEL))),
                v => match v.as_f64() {
                    Some(x) if x.is_nan() => return Ok(Err(RowSkip::Reason(NAN_LABEL))),
                    Some(x) => (x, false),
                    None => {
                        return Err(self.bad(
                            at,
                            &path,
                            format!("score {} is not a number", v.show()),
                        ))
                    }
                },
            }
        };
        let prompt_id = self.put_prompt(prompt.as_deref(), at)?;
        self.put_item(&item, "response", at)?;
        let item_id = item.id;
        let rated = Rated {
            key: format!("{user}\u{1f}{group}"),
            user: user.into_owned(),
            group: group.into_owned(),
            item: item_id,
            score,
            chosen,
            prompt: prompt_id,
            split: split.into_owned(),
            at: format!("{} {at}", self.file.display()),
        };
        self.out.push(Effect::Rating(rated));
        Ok(Ok(()))
    }

    /// Encodes the prompt row of `text` (when there is one); gives its id.
    fn put_prompt(&mut self, text: Option<&str>, at: Loc) -> Result<Option<String>, PrefError> {
        let Some(text) = text else { return Ok(None) };
        let (p, id) = (self.p, content_id(text.as_bytes()));
        let row = spill::PromptRef {
            prompt_id: &id,
            text,
            source: &p.dataset,
        };
        let done = self.enc.prompts.push_with(|w| row.encode(w));
        done.map_err(|e| self.unstorable(at, "prompt", e))?;
        Ok(Some(id))
    }

    /// Encodes the item row of `it`.
    fn put_item(&mut self, it: &Item, column: &str, at: Loc) -> Result<(), PrefError> {
        let p = self.p;
        let row = spill::ItemRef {
            item_id: &it.id,
            kind: if it.bytes.is_some() { "image" } else { "text" },
            text: it.text.as_deref(),
            bytes: it.bytes.as_deref(),
            source: &p.dataset,
            parent_id: None,
        };
        let done = self.enc.items.push_with(|w| row.encode(w));
        done.map_err(|e| self.unstorable(at, column, e))
    }

    /// Encodes the pair row of items `a` and `b` (see [`pair_key`] for `label`), with the
    /// row's weight; its user goes to the effects the first time these rows (a block, or the
    /// rows read one at a time since the last flush) meet it.
    #[allow(clippy::too_many_arguments)]
    fn put_pair(
        &mut self,
        user: &str,
        prompt: Option<&str>,
        a: &str,
        b: &str,
        label: Option<i8>,
        split: &str,
        id: Option<&str>,
        at: Loc,
    ) -> Result<(), PrefError> {
        let (p, weight) = (self.p, self.weight);
        let k = pair_key(p, user, prompt, a, b, label, split, id, weight);
        let row = spill::PairRef {
            pair_id: &k.pair_id,
            user_id: &k.user_id,
            prompt_id: prompt,
            left_id: k.left,
            right_id: k.right,
            label: k.label,
            dataset: &p.dataset,
            split,
            source_ref: id,
            weight,
        };
        let done = self.enc.pairs.push_with(|w| row.encode(w));
        done.map_err(|e| self.unstorable(at, "user, split, id", e))?;
        if !self.met.contains(&k.user_id) {
            self.met.insert(k.user_id.clone());
            self.out.push(Effect::User(k.user_id));
        }
        Ok(())
    }

    /// A row whose value in `column` cannot be encoded for the store (one over 4 GiB).
    fn unstorable(&self, at: Loc, column: &str, e: std::io::Error) -> PrefError {
        PrefError::Row {
            path: self.file.to_path_buf(),
            at,
            column: column.to_string(),
            message: format!("the value cannot be stored: {e}"),
            hint: None,
        }
    }
}

impl<S> Reader<'_, S>
where
    S: FnMut(IngestBatch) -> Result<(), PrefError>,
{
    /// The ratings layout's pairs, once every row is read: per (user, group), in a fixed
    /// order. The ratings come merged from their runs, one group after another.
    fn finish_groups(&mut self) -> Result<(), PrefError> {
        let runs = std::mem::replace(&mut self.ratings, Runs::keep_all("ratings", 0));
        let mut merged = runs.merge(&self.spill).map_err(|e| self.spill_error(e))?;
        let mut group: Vec<Rated> = Vec::new();
        loop {
            let next = merged.next_row().map_err(|e| self.spill_error(e))?;
            let ends = match (group.first(), &next) {
                (None, _) => false,
                (Some(first), Some(r)) => r.key != first.key,
                (Some(_), None) => true,
            };
            if ends {
                let done = std::mem::take(&mut group);
                self.pairs_of_group(done)?;
            }
            match next {
                Some(r) => group.push(r),
                None => return Ok(()),
            }
        }
    }

    /// The pairs of one (user, group)'s ratings.
    fn pairs_of_group(&mut self, mut rated: Vec<Rated>) -> Result<(), PrefError> {
        let by_flag = self.m.columns.contains_key("preferred");
        let (user, group) = (rated[0].user.clone(), rated[0].group.clone());
        {
            rated.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            let note = |r: &mut Report, why: &str, at: &str| {
                let d = r.dropped.entry(why.to_string()).or_default();
                if d.rows == 0 {
                    d.first = at.to_string();
                }
                d.rows += 1;
            };
            let mut pairs: Vec<(usize, usize)> = Vec::new();
            if by_flag {
                if !rated.iter().any(|r| r.chosen) {
                    note(
                        &mut self.report,
                        "group without a chosen response",
                        &rated[0].at,
                    );
                }
                for (i, w) in rated.iter().enumerate() {
                    for (j, l) in rated.iter().enumerate() {
                        if w.chosen && !l.chosen {
                            pairs.push((i, j));
                        }
                    }
                }
            } else {
                for i in 0..rated.len() {
                    for j in i + 1..rated.len() {
                        let (a, b) = (&rated[i], &rated[j]);
                        let gap = (a.score - b.score).abs();
                        if gap == 0.0 {
                            note(&mut self.report, TIE, &b.at);
                        } else if gap < self.m.min_gap {
                            note(&mut self.report, "score gap below min_gap", &b.at);
                        } else if a.score > b.score {
                            pairs.push((i, j));
                        } else {
                            pairs.push((j, i));
                        }
                    }
                }
            }
            for (w, l) in pairs {
                let (win, lose) = (&rated[w], &rated[l]);
                if win.item == lose.item {
                    note(&mut self.report, "same item twice", &lose.at);
                    continue;
                }
                let prompt = win.prompt.clone().or_else(|| lose.prompt.clone());
                let row = pair_row(
                    self.p,
                    &user,
                    prompt,
                    &win.item,
                    &lose.item,
                    None,
                    &win.split,
                    Some(&group),
                    1.0,
                );
                self.add_pair(row)?;
            }
        }
        Ok(())
    }

    fn spill_error(&self, source: std::io::Error) -> PrefError {
        spill::wait_if_stopping();
        PrefError::Spill {
            dir: self.spill.path().to_path_buf(),
            source,
        }
    }

    /// Merges each table's runs and hands the rows on in chunks: one row per id, in id
    /// order. Counts the pairs (per split) and the repeated ones.
    fn finish(&mut self) -> Result<(), PrefError> {
        // Users in id order too, so that row order in the files never shows in the store.
        let mut users = std::mem::take(&mut self.users);
        users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        let mut chunk = Chunk {
            users,
            ..Chunk::default()
        };
        // Runs that went to files put the rest there too (the three tables' last runs written
        // at once): their memory is free before the merges begin.
        let dir = &self.spill;
        let settled = (self.items.start_spilling_rest(dir))
            .and_then(|()| self.prompts.start_spilling_rest(dir))
            .and_then(|()| self.pairs.start_spilling_rest(dir))
            .and_then(|()| self.items.settle(dir))
            .and_then(|()| self.prompts.settle(dir))
            .and_then(|()| self.pairs.settle(dir));
        settled.map_err(|e| self.spill_error(e))?;
        let items = std::mem::replace(&mut self.items, Runs::new("items", 0));
        self.merge_into(items, &mut chunk, |c| &mut c.items)?;
        let prompts = std::mem::replace(&mut self.prompts, Runs::new("prompts", 0));
        self.merge_into(prompts, &mut chunk, |c| &mut c.prompts)?;
        let pairs = std::mem::replace(&mut self.pairs, Runs::new("pairs", 0));
        self.report.repeated += self.merge_into(pairs, &mut chunk, |c| &mut c.pairs)?;
        for (split, n) in std::mem::take(&mut chunk.pairs.splits) {
            self.report.pairs += n;
            *self.report.splits.entry(split).or_default() += n;
        }
        if chunk.rows > 0 || !chunk.users.is_empty() {
            (self.sink)(chunk.batch())?;
        }
        Ok(())
    }

    /// Merges `runs` into `part` of `chunk` (the rows straight from their run encoding, in
    /// key order, one per key), handing the chunk on whenever it fills; returns the rows
    /// the merge left out as repeated.
    fn merge_into<T: spill::Record, C: columns::Columns>(
        &mut self,
        runs: Runs<T>,
        chunk: &mut Chunk,
        part: impl Fn(&mut Chunk) -> &mut C,
    ) -> Result<usize, PrefError> {
        let mut merged = runs.merge(&self.spill).map_err(|e| self.spill_error(e))?;
        loop {
            let raw = match merged.next_raw() {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(e) => return Err(self.spill_error(e)),
            };
            if let Err(e) = part(chunk).append(raw) {
                return Err(self.spill_error(e));
            }
            chunk.rows += 1;
            chunk.bytes += raw.len();
            if chunk.rows >= CHUNK_ROWS || chunk.bytes >= CHUNK_BYTES {
                (self.sink)(chunk.batch())?;
            }
        }
        Ok(merged.repeated)
    }
}

/// The rows gathered for the store writer since the last chunk was handed on.
#[derive(Default)]
struct Chunk {
    items: columns::ItemColumns,
    prompts: columns::PromptColumns,
    pairs: columns::PairColumns,
    users: Vec<UserRow>,
    /// Rows and bytes (of their run encodings) in the columns.
    rows: usize,
    bytes: usize,
}

impl Chunk {
    /// The chunk's rows as a batch for the writer; the chunk starts empty again.
    fn batch(&mut self) -> IngestBatch {
        use columns::Columns;
        let mut parts = Vec::new();
        if !self.items.is_empty() {
            parts.push((columns::ItemColumns::TABLE, self.items.finish()));
        }
        if !self.prompts.is_empty() {
            parts.push((columns::PromptColumns::TABLE, self.prompts.finish()));
        }
        if !self.pairs.is_empty() {
            parts.push((columns::PairColumns::TABLE, self.pairs.finish()));
        }
        self.rows = 0;
        self.bytes = 0;
        IngestBatch {
            users: std::mem::take(&mut self.users),
            columns: parts,
            ..IngestBatch::default()
        }
    }
}

/// What makes one pair of `user` beside its row's fields (see [`pair_key`]).
struct PairKey<'a> {
    user_id: String,
    left: &'a str,
    right: &'a str,
    label: i8,
    pair_id: String,
}

/// One pair of `user`'s id, sides, label and user id. `label` None: `a` is preferred and
/// goes on a side drawn from the pair's content (seeded); Some: `a` is left, `b` right, as
/// the row said. A weight other than 1.0 is part of the pair's id (two rows that differ only
/// in weight are two pairs, so which one is kept never depends on row order); at 1.0 the id
/// is the one it always was.
#[allow(clippy::too_many_arguments)]
fn pair_key<'a>(
    p: &Params,
    user: &str,
    prompt: Option<&str>,
    a: &'a str,
    b: &'a str,
    label: Option<i8>,
    split: &str,
    id: Option<&str>,
    weight: f32,
) -> PairKey<'a> {
    let user_id = format!("{}/{user}", p.dataset);
    let (left, right, label) = match label {
        Some(l) => (a, b, l),
        None => {
            let parts = [user_id.as_str(), prompt.unwrap_or(""), a, b];
            let side = crate::store::records::hash_parts(&p.seed.to_le_bytes(), parts);
            if side.as_bytes()[0] & 1 == 0 {
                (a, b, -1)
            } else {
                (b, a, 1)
            }
        }
    };
    let mut extra = format!("{label}:{split}:{}", id.unwrap_or(""));
    if weight != 1.0 {
        // `{:?}` is the shortest text that reads back as the same f32.
        extra.push_str(&format!(":weight={weight:?}"));
    }
    PairKey {
        pair_id: pair_id(&user_id, prompt, left, right, &extra),
        user_id,
        left,
        right,
        label,
    }
}

/// One pair of `user` as a row (see [`pair_key`]).
#[allow(clippy::too_many_arguments)]
fn pair_row(
    p: &Params,
    user: &str,
    prompt: Option<String>,
    a: &str,
    b: &str,
    label: Option<i8>,
    split: &str,
    id: Option<&str>,
    weight: f32,
) -> PairRow {
    let k = pair_key(p, user, prompt.as_deref(), a, b, label, split, id, weight);
    PairRow {
        pair_id: k.pair_id,
        user_id: k.user_id,
        prompt_id: prompt,
        left_id: k.left.to_string(),
        right_id: k.right.to_string(),
        label: k.label,
        dataset: p.dataset.clone(),
        split: split.to_string(),
        source_ref: id.map(String::from),
        weight,
    }
}

/// An image item from its bytes, or a drop when they are no image.
fn image_bytes(b: Vec<u8>) -> Result<Item<'static>, RowSkip> {
    let ok = image::ImageReader::new(std::io::Cursor::new(&b))
        .with_guessed_format()
        .ok()
        .is_some_and(|r| r.into_dimensions().is_ok());
    if ok {
        Ok(Item::image(b))
    } else {
        Err(RowSkip::Reason("image does not decode"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `ratings` layout's rows: their field layout frames their encoding.
    #[test]
    fn rated_fields_frame_their_encoding() {
        let rated = |prompt: Option<&str>| Rated {
            key: "u\0g".into(),
            user: "u".into(),
            group: "g".into(),
            item: "i".repeat(64),
            score: 4.5,
            chosen: true,
            prompt: prompt.map(String::from),
            split: "train".into(),
            at: "line 3".into(),
        };
        spill::assert_fields_frame(&[rated(Some("p")), rated(None)]);
    }

    fn params(yaml: &str) -> Params {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn every_preset_parses_and_maps_a_layout() {
        for (name, _) in presets::PRESETS {
            let p = params(&format!("dataset: d\npath: x\npreset: {name}\n"));
            let m = mapping(&p).unwrap_or_else(|e| panic!("preset {name}: {e}"));
            assert!(m.columns.contains_key("user"), "{name}");
        }
    }

    #[test]
    fn the_stage_overrides_its_preset_and_missing_columns_are_named() {
        let p = params(
            "dataset: d\npath: x\npreset: summarize-from-feedback\ncolumns: {user: batch}\n",
        );
        let m = mapping(&p).unwrap();
        assert_eq!(m.columns["user"], Column::Path("batch".into()));
        assert_eq!(m.columns["label"], Column::Path("choice".into()));
        let e = mapping(&params(
            "dataset: d\npath: x\ncolumns: {chosen: a, rejected: b}\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("constant"), "{e}");
        let e = mapping(&params(
            "dataset: d\npath: x\nlayout: ratings\ncolumns: {user: u, response: r}\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("columns.score"), "{e}");
        let e = mapping(&params(
            "dataset: d\npath: x\npreset: nope\ncolumns: {user: u}\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("hh-rlhf"), "{e}");
    }
}
