//! Stage kinds: the [`StageKind`] trait every kind implements, and [`KINDS`], the one list
//! of kinds that the parser, the validator and `palpipe run --help` read.
//!
//! One kind is one file here: its typed parameters' trait implementation (what it reads,
//! which rows it owns, how it checks and runs) and its store glue. What a stage computes
//! lives with its part (`ingest`, `transform`, `embed`, `pal`); adding a kind is one new
//! file and one line in [`KINDS`].
//!
//! | kind | part | reads | owns (writes) |
//! |---|---|---|---|
//! | `fixtures` | `ingest` | nothing | its folder of Pick-a-Pic stand-in shards (written once) |
//! | `summarize_fixtures` | `ingest` | nothing | its folder of TL;DR stand-in comparisons (written once) |
//! | `synthetic`, `persona`, `polis` | `ingest` | input files | its dataset's pairs and users (+ shared items, prompts, embeddings) |
//! | `length_preference_users` | `ingest` | comparison files | its dataset's pairs and users (+ shared items, prompts) |
//! | `pickapic` | `ingest` | parquet shards (streamed) | its dataset's pairs and users (+ shared items, prompts) |
//! | `preferences` | `ingest` | your files: parquet, csv/tsv, jsonl, json (streamed) | its dataset's pairs and users (+ shared items, prompts) |
//! | `dedup` | `transform` | pairs | the split tags of its target |
//! | `pick_a_filter` | `transform` | pairs, items | its dataset's pairs and users (+ shared filtered items) |
//! | `embed` | `embed` | items, prompts | nothing of its own (shared, append-only `embeddings`) |
//! | `train` | `pal` | pairs, embeddings, splits | its model's row and checkpoint |
//! | `eval`, `adapt` | `pal` + `eval` | pairs, embeddings, splits, the model they name | one metric of that model |

pub mod adapt;
pub mod dedup;
pub mod embed;
pub mod eval;
pub mod fixtures;
pub mod length_preference_users;
pub mod persona;
pub mod pick_a_filter;
pub mod pickapic;
pub mod polis;
pub mod preferences;
pub mod summarize_fixtures;
pub mod synthetic;
pub mod train;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml::Value;

use super::progress::Printer;
use super::spec::{read_params, ParamError, Pipeline};
use crate::ingest::common::IngestError;
use crate::store::records::IngestBatch;
use crate::store::{write_ingest, Store};
pub use crate::transform::ParamIssue;

/// Every stage kind, in the order `--help` lists them. Adding a kind: one file, one line.
pub const KINDS: &[KindInfo] = &[
    fixtures::KIND,
    summarize_fixtures::KIND,
    synthetic::KIND,
    persona::KIND,
    polis::KIND,
    length_preference_users::KIND,
    pickapic::KIND,
    preferences::KIND,
    dedup::KIND,
    pick_a_filter::KIND,
    embed::KIND,
    train::KIND,
    eval::KIND,
    adapt::KIND,
];

/// The kind named `name`, if there is one.
pub fn find(name: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.name == name)
}

/// The kinds' names, comma-separated, for messages.
pub fn names() -> String {
    KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

/// One line per kind with its help, for `palpipe run --help`.
pub fn help_table() -> String {
    let width = KINDS.iter().map(|k| k.name.len()).max().unwrap_or(0);
    KINDS
        .iter()
        .map(|k| format!("  {:<width$}  {}", k.name, k.help))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A registry entry: a kind's name, its one-line help, an example of its parameters (YAML,
/// without `name`/`kind`), and how to read its parameters.
pub struct KindInfo {
    pub name: &'static str,
    pub help: &'static str,
    pub example: &'static str,
    /// Reads the parameters (unknown keys rejected, the bad key's path kept).
    pub parse: fn(Value) -> Result<Box<dyn StageKind>, ParamError>,
    /// Parses `example`-like YAML, writes it back and parses that: both must be equal.
    pub round_trip: fn(&str) -> Result<(), String>,
}

impl KindInfo {
    /// The entry for parameter type `T`.
    pub const fn of<T>(name: &'static str, help: &'static str, example: &'static str) -> KindInfo
    where
        T: StageKind + DeserializeOwned + Serialize + PartialEq + 'static,
    {
        KindInfo {
            name,
            help,
            example,
            parse: parse_as::<T>,
            round_trip: round_trip_as::<T>,
        }
    }
}

fn parse_as<T: StageKind + DeserializeOwned + 'static>(
    v: Value,
) -> Result<Box<dyn StageKind>, ParamError> {
    Ok(Box::new(read_params::<T>(v)?))
}

fn round_trip_as<T>(yaml: &str) -> Result<(), String>
where
    T: StageKind + DeserializeOwned + Serialize + PartialEq,
{
    let v: Value = serde_yaml::from_str(yaml).map_err(|e| format!("example: {e}"))?;
    let first: T = read_params(v).map_err(|e| format!("example does not parse: {e:?}"))?;
    let text = serde_yaml::to_string(&first).map_err(|e| format!("cannot write back: {e}"))?;
    let v: Value = serde_yaml::from_str(&text).map_err(|e| format!("written back: {e}"))?;
    let second: T =
        read_params(v).map_err(|e| format!("written-back text does not parse: {e:?}\n{text}"))?;
    if first != second {
        return Err(format!(
            "parsed back differently:\n{first:?}\nvs\n{second:?}\n{text}"
        ));
    }
    Ok(())
}

/// A part of a table whose content (not version) enters a stage's fingerprint: for stages
/// that write other rows of a table they read, so that their own writes, and other stages'
/// writes elsewhere in the table, do not make them run again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadScope {
    pub table: &'static str,
    /// SQL predicate over `table`.
    pub predicate: String,
    /// String columns whose values are hashed (sorted, so storage order does not matter).
    pub columns: &'static [&'static str],
}

/// The rows a stage owns: what a run of it replaces. Content-addressed tables (`items`,
/// `prompts`, `embeddings`) are shared and append-only, so no stage owns rows there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every row of `pairs` and `users` whose `dataset` is this (an ingest stage's output).
    Dataset(String),
    /// The rows of `pairs` in `dataset` whose split is one of `tags` (a re-tagging stage).
    SplitTags { dataset: String, tags: Vec<String> },
    /// The `models` row of this name and its checkpoint folder.
    Model(String),
    /// One key of a model's metrics (`eval`: the split; `adapt`: `adapt:<split>`).
    ModelMetric { model: String, key: String },
    /// Files in a folder outside the store (`fixtures`).
    Folder(PathBuf),
}

/// What a running stage may use.
pub struct StageCtx<'a> {
    pub store: &'a Store,
    pub pipeline: &'a Pipeline,
    pub stage_name: &'a str,
    pub run_id: &'a str,
    pub printer: Printer,
}

/// The future a stage's `run` returns.
pub type RunFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<String>> + 'a>>;

/// A stage kind with its typed parameters: what it reads, what it owns, how it checks its
/// parameters, and how it runs. Defaults describe a stage that reads and owns nothing.
pub trait StageKind: fmt::Debug + Send + Sync {
    /// The `kind:` value.
    fn kind(&self) -> &'static str;

    /// Input files or folders, each with the parameter key that names it.
    fn inputs(&self) -> Vec<(String, PathBuf)> {
        Vec::new()
    }

    /// Tables whose versions enter the fingerprint.
    fn reads(&self) -> &'static [&'static str] {
        &[]
    }

    /// Parts of tables whose content enters the fingerprint (see [`ReadScope`]).
    fn read_scopes(&self) -> Vec<ReadScope> {
        Vec::new()
    }

    /// The rows this stage owns (see [`Scope`]); `stage_name` names a model by default.
    fn owns(&self, stage_name: &str) -> Vec<Scope>;

    /// Shared, content-addressed tables this stage adds rows to beyond what it owns (`embed`
    /// adds to `embeddings`): a dry run plans the stages after it that read them.
    fn appends(&self) -> &'static [&'static str] {
        &[]
    }

    /// Split names this stage uses, with their keys.
    fn split_refs(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Models this stage uses, with their keys.
    fn model_refs(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The model this stage registers, if any.
    fn model_name(&self, _stage_name: &str) -> Option<String> {
        None
    }

    /// Whether the stage's results are floats from matrix products (a trained model, its
    /// metrics), which differ in their last bits between numeric backends. When true, a
    /// build with a backend other than candle's own ([`crate::NUMERIC_BACKEND`]) adds it to
    /// the fingerprint, so that a model a plain build trained is trained again by an `mkl`
    /// build. `embed` stays false: vectors are cached by encoder and text and kept across
    /// builds, so the retrained model sees the vectors the store holds (README.md, "Numeric
    /// backend").
    fn uses_numeric_backend(&self) -> bool {
        false
    }

    /// One line for `--dry-run`.
    fn describe(&self) -> String;

    /// Parameter checks that need more than their types, run before anything.
    fn check(&self) -> Result<(), ParamIssue> {
        Ok(())
    }

    /// What `--dry-run` checks beyond the parameters, reading but never writing (a
    /// `preferences` stage reads each file's header and checks its mapped columns). The
    /// error is the one the run would stop with.
    fn dry_check(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Makes each path-valued parameter absolute by calling `resolve(key, &mut path)` on it:
    /// the pipeline decides the base (the pipeline file's folder, or the shell's folder for a
    /// value given with `--set`). A kind with a path parameter must list it here.
    fn resolve_paths(&mut self, _resolve: &PathResolver<'_>) {}

    /// Files or folders this stage makes (and which later stages may name as inputs before
    /// they exist). Their state enters this stage's fingerprint.
    fn makes(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// The command that makes a missing input named by `key`, when one is known.
    fn missing_input_hint(&self, _key: &str) -> Option<String> {
        None
    }

    /// Runs the stage; the returned line summarises what it did.
    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a>;
}

/// Resolves one path-valued parameter in place, given its key (see
/// [`StageKind::resolve_paths`]).
pub type PathResolver<'a> = dyn Fn(&str, &mut PathBuf) + 'a;

/// A parsed stage kind, shared by the pipeline's copies.
pub type Kind = Arc<dyn StageKind>;

/// Input files, each with the parameter key that names them.
pub(crate) fn keyed_inputs(key: &str, files: Vec<PathBuf>) -> Vec<(String, PathBuf)> {
    files.into_iter().map(|f| (key.to_string(), f)).collect()
}

/// Runs an in-memory ingest (`synthetic`, `persona`) on a blocking thread, writes its batch as
/// the rows of `dataset` and summarises the writes (see [`ingest_summary`]).
pub(crate) fn ingest_in_memory<'a, P>(
    ctx: &'a StageCtx<'a>,
    params: &P,
    dataset: &'a str,
    ingest: fn(&P) -> Result<IngestBatch, IngestError>,
) -> RunFuture<'a>
where
    P: Clone + Send + 'static,
{
    let p = params.clone();
    Box::pin(async move {
        let batch = tokio::task::spawn_blocking(move || ingest(&p)).await??;
        ingest_summary(ctx, dataset, batch).await
    })
}

/// Writes an ingest batch and summarises the writes: the stage's rows of `dataset` in `pairs`
/// and `users` replace those a previous run left (one commit per table); content is merged
/// on its key.
pub(crate) async fn ingest_summary(
    ctx: &StageCtx<'_>,
    dataset: &str,
    batch: IngestBatch,
) -> anyhow::Result<String> {
    let stats = write_ingest(ctx.store, dataset, &batch).await?;
    Ok(write_summary(stats.iter().map(|(t, s)| (t.as_str(), s))))
}

/// Runs a streaming reader on a blocking thread and writes each chunk it sends as rows of
/// `dataset` (one chunk in flight while the previous one is written, so memory stays at a
/// few chunks), committing once at the end. `read` gets the sending end; when the writer
/// fails, sends fail and the writer's error is returned. On any error nothing is committed
/// and the store keeps its previous rows. Returns the reader's result and the write stats.
/// `unique`: the reader never sends the same key twice, so the writer need not remember the
/// keys it wrote (see `StagedWriter::rows_arrive_unique`).
pub(crate) async fn ingest_streamed<T, E, F>(
    ctx: &StageCtx<'_>,
    dataset: &str,
    unique: bool,
    read: F,
) -> anyhow::Result<(
    T,
    std::collections::BTreeMap<String, crate::store::WriteStats>,
)>
where
    F: FnOnce(tokio::sync::mpsc::Sender<IngestBatch>) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<anyhow::Error> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<IngestBatch>(1);
    let reader = tokio::task::spawn_blocking(move || read(tx));
    // The stage owns its dataset's pairs and users: one commit per table once all is read.
    let mut writer = crate::store::StagedWriter::owning_dataset(ctx.store, dataset).await?;
    if unique {
        writer.rows_arrive_unique();
    }
    let mut write_error = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = writer.write(&chunk).await {
            write_error = Some(e);
            break;
        }
    }
    drop(rx);
    let read = reader.await?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let out = read.map_err(Into::into)?;
    Ok((out, writer.commit().await?))
}

/// The pairs of `dataset`, sorted by pair id (the transform kinds' input).
pub(crate) async fn dataset_pairs(
    store: &Store,
    dataset: &str,
) -> anyhow::Result<Vec<crate::store::records::PairRow>> {
    let mut out = Vec::new();
    let filter = format!("dataset = {}", crate::store::sql_str(dataset));
    for b in store.read("pairs", &[], Some(&filter)).await? {
        out.extend(crate::store::batches::read_pairs(&b)?);
    }
    // Lance returns rows in storage order, which a rewrite changes: sort for a stable result.
    out.sort_by(|a, b| a.pair_id.cmp(&b.pair_id));
    Ok(out)
}

/// "items +4480 (10 present), pairs +2310 −2288, users =40 (unchanged)": per table, what a
/// stage's writes added (and found present), and for the rows it owns, how many it replaced
/// or that they were unchanged.
pub fn write_summary<'a>(
    stats: impl Iterator<Item = (&'a str, &'a crate::store::WriteStats)>,
) -> String {
    stats
        .map(|(t, s)| {
            let present = if s.existing > 0 {
                format!(" ({} present)", s.existing)
            } else {
                String::new()
            };
            if s.unchanged {
                format!("{t} ={} (unchanged){present}", s.inserted)
            } else if s.replaced > 0 {
                format!("{t} +{} −{}{present}", s.inserted, s.replaced)
            } else {
                format!("{t} +{}{present}", s.inserted)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// STYLE #11: every kind's example parses, writes back and parses back equal; the
    /// registry's parser gives the kind it is listed under.
    #[test]
    fn every_kind_round_trips_its_example() {
        for k in KINDS {
            (k.round_trip)(k.example).unwrap_or_else(|e| panic!("kind '{}': {e}", k.name));
            let v: Value = serde_yaml::from_str(k.example).unwrap();
            let parsed = (k.parse)(v).unwrap_or_else(|e| panic!("kind '{}': {e:?}", k.name));
            assert_eq!(parsed.kind(), k.name);
            assert!(!parsed.describe().is_empty(), "kind '{}'", k.name);
        }
    }

    /// The kinds whose results are floats from matrix products, by hand: a trained model
    /// (`train`) and what is computed from one (`eval`, `adapt`). Ingest and split stages
    /// use no candle op; `embed` keeps cached vectors whatever the backend.
    #[test]
    fn only_model_stages_depend_on_the_numeric_backend() {
        let expected = ["train", "eval", "adapt"];
        for k in KINDS {
            let v: Value = serde_yaml::from_str(k.example).unwrap();
            let parsed = (k.parse)(v).unwrap();
            assert_eq!(
                parsed.uses_numeric_backend(),
                expected.contains(&k.name),
                "kind '{}'",
                k.name
            );
        }
    }

    #[test]
    fn kind_names_are_unique_and_listed_in_help() {
        let mut seen = std::collections::BTreeSet::new();
        let help = help_table();
        for k in KINDS {
            assert!(seen.insert(k.name), "kind '{}' listed twice", k.name);
            assert!(help.contains(k.name) && help.contains(k.help));
            assert!(find(k.name).is_some());
            // One line each under `palpipe run --help`, which wraps at 100 columns.
            assert!(
                k.help.len() <= 80,
                "kind '{}': help too long to fit",
                k.name
            );
        }
        assert!(find("no-such-kind").is_none());
    }
}
