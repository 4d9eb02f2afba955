//! Stage kinds: how each kind's parameters parse, which files and tables it reads, and the
//! call that runs it. What a stage computes lives with its part; this file only dispatches.
//!
//! | kind | part | reads | writes |
//! |---|---|---|---|
//! | `synthetic`, `persona`, `polis` | `ingest` | input files | items, prompts, pairs, users (+ embeddings for synthetic) |
//! | `pickapic` | `ingest` | parquet shards (streamed) | items, prompts, pairs, users |
//! | `dedup` | `transform` | pairs | pairs (split tags of the target split) |
//! | `pick_a_filter` | `transform` | pairs, items | items (filtered images), pairs, users |
//! | `embed` | `embed` | items, prompts | embeddings |
//! | `train` | `pal` | pairs, embeddings, splits | models |
//! | `eval`, `adapt` | `pal` + `eval` | pairs, embeddings, splits, the model they name | models (metrics) |

use std::path::PathBuf;

use serde_yaml::Value;

use super::embed_stage::EmbedParams;
use super::pal_stages::{AdaptParams, EvalParams, TrainParams};
use super::progress::Printer;
use super::spec::{read_params, ParamError, Pipeline};
use crate::ingest;
use crate::store::{sql_str, write_ingest, Store};
use crate::transform;

/// A stage kind with its typed parameters. (A handful per pipeline: the size difference
/// between variants does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum StageParams {
    Synthetic(ingest::synthetic::Params),
    Persona(ingest::persona::Params),
    Polis(ingest::polis::Params),
    Pickapic(ingest::pickapic::Params),
    Dedup(transform::dedup::Params),
    PickAFilter(transform::pick_a_filter::Params),
    Embed(EmbedParams),
    Train(TrainParams),
    Eval(EvalParams),
    Adapt(AdaptParams),
}

/// What a running stage may use.
pub struct StageCtx<'a> {
    pub store: &'a Store,
    pub pipeline: &'a Pipeline,
    pub stage_name: &'a str,
    pub run_id: &'a str,
    pub printer: Printer,
}

impl StageParams {
    pub const KINDS: [&'static str; 10] = [
        "synthetic",
        "persona",
        "polis",
        "pickapic",
        "dedup",
        "pick_a_filter",
        "embed",
        "train",
        "eval",
        "adapt",
    ];

    pub fn parse(kind: &str, v: Value) -> Result<StageParams, ParamError> {
        Ok(match kind {
            "synthetic" => StageParams::Synthetic(read_params(v)?),
            "persona" => StageParams::Persona(read_params(v)?),
            "polis" => StageParams::Polis(read_params(v)?),
            "pickapic" => StageParams::Pickapic(read_params(v)?),
            "dedup" => StageParams::Dedup(read_params(v)?),
            "pick_a_filter" => StageParams::PickAFilter(read_params(v)?),
            "embed" => StageParams::Embed(read_params(v)?),
            "train" => StageParams::Train(read_params(v)?),
            "eval" => StageParams::Eval(read_params(v)?),
            "adapt" => StageParams::Adapt(read_params(v)?),
            _ => return Err(ParamError::UnknownKind),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            StageParams::Synthetic(_) => "synthetic",
            StageParams::Persona(_) => "persona",
            StageParams::Polis(_) => "polis",
            StageParams::Pickapic(_) => "pickapic",
            StageParams::Dedup(_) => "dedup",
            StageParams::PickAFilter(_) => "pick_a_filter",
            StageParams::Embed(_) => "embed",
            StageParams::Train(_) => "train",
            StageParams::Eval(_) => "eval",
            StageParams::Adapt(_) => "adapt",
        }
    }

    /// Input files or folders, each with the parameter key that names it.
    pub fn inputs(&self) -> Vec<(String, PathBuf)> {
        let keyed = |key: &str, files: Vec<PathBuf>| {
            files.into_iter().map(|f| (key.to_string(), f)).collect()
        };
        match self {
            StageParams::Synthetic(p) => keyed("seed", ingest::synthetic::input_files(p)),
            StageParams::Persona(p) => keyed("dir", ingest::persona::input_files(p)),
            StageParams::Polis(p) => keyed("dir", ingest::polis::input_files(p)),
            StageParams::Pickapic(p) => keyed("data_dir", ingest::pickapic::input_files(p)),
            StageParams::Dedup(_) | StageParams::PickAFilter(_) => Vec::new(),
            StageParams::Embed(p) => p.inputs(),
            StageParams::Train(_) | StageParams::Eval(_) | StageParams::Adapt(_) => Vec::new(),
        }
    }

    /// Tables whose versions enter the fingerprint.
    pub fn reads(&self) -> &'static [&'static str] {
        match self {
            StageParams::Synthetic(_)
            | StageParams::Persona(_)
            | StageParams::Polis(_)
            | StageParams::Pickapic(_) => &[],
            // These read part of `pairs` and write other rows of it: see `read_scopes`.
            StageParams::Dedup(_) | StageParams::PickAFilter(_) => &[],
            StageParams::Embed(_) => &["items", "prompts"],
            // Train, eval and adapt also hash the SQL of the splits and the identity of the
            // model they name (see the runner), not the versions of `splits` and `models`.
            StageParams::Train(_) | StageParams::Eval(_) | StageParams::Adapt(_) => {
                &["pairs", "embeddings"]
            }
        }
    }

    /// Parts of tables whose content (not version) enters the fingerprint: (table, SQL
    /// predicate, columns). For stages that write other rows of a table they read, so that
    /// their own writes, and other stages' writes elsewhere in the table, do not make them
    /// run again. Items are content-addressed, so ids suffice.
    pub fn read_scopes(&self) -> Vec<(&'static str, String, &'static [&'static str])> {
        match self {
            StageParams::Dedup(p) => vec![(
                "pairs",
                format!("dataset = {}", sql_str(&p.dataset)),
                &["pair_id", "split"],
            )],
            StageParams::PickAFilter(p) => vec![(
                "pairs",
                format!(
                    "dataset = {} AND split IN ({}, {})",
                    sql_str(&p.source_dataset),
                    sql_str(&p.train),
                    sql_str(&p.test)
                ),
                &["pair_id", "split"],
            )],
            _ => Vec::new(),
        }
    }

    /// Split names this stage uses, with their keys.
    pub fn split_refs(&self) -> Vec<(String, String)> {
        match self {
            StageParams::Train(p) => p.split_refs(),
            StageParams::Eval(p) => vec![("split".into(), p.split.clone())],
            StageParams::Adapt(p) => vec![("users".into(), p.users.clone())],
            _ => Vec::new(),
        }
    }

    /// Models this stage uses, with their keys.
    pub fn model_refs(&self) -> Vec<(String, String)> {
        match self {
            // The CLIP score is no stored model: its encoder and vectors are in the fingerprint.
            StageParams::Eval(p) if p.model == super::pal_stages::CLIP_SCORE => Vec::new(),
            StageParams::Eval(p) => vec![("model".into(), p.model.clone())],
            StageParams::Adapt(p) => vec![("model".into(), p.model.clone())],
            _ => Vec::new(),
        }
    }

    /// The model a train stage registers (its `name`, else the stage's name).
    pub fn model_name(&self, stage_name: &str) -> Option<String> {
        match self {
            StageParams::Train(p) => Some(p.name.clone().unwrap_or_else(|| stage_name.to_string())),
            _ => None,
        }
    }

    /// One line for `--dry-run`.
    pub fn describe(&self) -> String {
        match self {
            StageParams::Synthetic(p) => format!(
                "{} users × {} comparisons, d={}, K*={}",
                p.users, p.comparisons_per_user, p.d, p.k_star
            ),
            StageParams::Persona(p) => {
                format!("personas {:?} from {}", p.personas, p.dir.display())
            }
            StageParams::Polis(p) => format!("conversation {}", p.dir.display()),
            StageParams::Pickapic(p) => format!(
                "Pick-a-Pic shards {} from {}",
                p.sets
                    .iter()
                    .map(|s| s.tag())
                    .collect::<Vec<_>>()
                    .join(", "),
                p.data_dir.display()
            ),
            StageParams::Dedup(p) => format!(
                "split '{}' of '{}' by content seen in {:?}",
                p.target, p.dataset, p.reference
            ),
            StageParams::PickAFilter(p) => format!(
                "Pick-a-Filter from '{}', beta {}, filters {} / {}",
                p.source_dataset,
                p.beta,
                p.filters.first().map_or("?", |f| f.name.as_str()),
                p.filters.get(1).map_or("?", |f| f.name.as_str())
            ),
            StageParams::Embed(p) => p.describe(),
            StageParams::Train(p) => p.describe(),
            StageParams::Eval(p) => format!("model '{}' on split '{}'", p.model, p.split),
            StageParams::Adapt(p) => format!(
                "model '{}', users of '{}', shots {:?}",
                p.model, p.users, p.shots
            ),
        }
    }

    /// Parameter checks that need more than their types, run before anything: the key at
    /// fault (relative to the stage) and the message.
    pub fn check(&self) -> Result<(), (String, String)> {
        let keyed = |msg: String| {
            let first = msg.split([' ', ':']).next().unwrap_or_default().to_string();
            let key = match first.as_str() {
                "beta" | "val_frac" | "seen_users" | "filters" | "encoder" => first,
                "filter" | "the" => "filters".to_string(),
                "train" => "train".to_string(),
                _ => String::new(),
            };
            (key, msg)
        };
        match self {
            StageParams::Dedup(p) => p.check().map_err(keyed),
            StageParams::PickAFilter(p) => p.check().map_err(keyed),
            StageParams::Embed(p) => p.check().map_err(|e| keyed(e.to_string())),
            _ => Ok(()),
        }
    }

    /// Runs the stage; the returned line summarises what it did.
    pub async fn run(&self, ctx: &StageCtx<'_>) -> anyhow::Result<String> {
        match self {
            StageParams::Synthetic(p) => {
                let dataset = &p.dataset.to_string();
                let p = p.clone();
                ingest_summary(
                    ctx,
                    &dataset,
                    tokio::task::spawn_blocking(move || ingest::synthetic::ingest(&p)).await??,
                )
                .await
            }
            StageParams::Persona(p) => {
                let dataset = &p.dataset.to_string();
                let p = p.clone();
                ingest_summary(
                    ctx,
                    &dataset,
                    tokio::task::spawn_blocking(move || ingest::persona::ingest(&p)).await??,
                )
                .await
            }
            StageParams::Polis(p) => {
                let dataset = &ingest::polis::dataset_name(p)?.to_string();
                let p = p.clone();
                ingest_summary(
                    ctx,
                    &dataset,
                    tokio::task::spawn_blocking(move || ingest::polis::ingest(&p)).await??,
                )
                .await
            }
            StageParams::Pickapic(p) => super::transform_stages::ingest_pickapic(p, ctx).await,
            StageParams::Dedup(p) => super::transform_stages::dedup(p, ctx).await,
            StageParams::PickAFilter(p) => super::transform_stages::pick_a_filter(p, ctx).await,
            StageParams::Embed(p) => super::embed_stage::run(p, ctx).await,
            StageParams::Train(p) => super::pal_stages::train(p, ctx).await,
            StageParams::Eval(p) => super::pal_stages::eval(p, ctx).await,
            StageParams::Adapt(p) => super::pal_stages::adapt(p, ctx).await,
        }
    }
}

/// Writes an ingest stage's output: its rows of `dataset` in `pairs` and `users` replace
/// those a previous run left (one commit per table); content is merged on its key.
async fn ingest_summary(
    ctx: &StageCtx<'_>,
    dataset: &str,
    batch: crate::store::records::IngestBatch,
) -> anyhow::Result<String> {
    let stats = write_ingest(ctx.store, dataset, &batch).await?;
    Ok(write_summary(stats.iter().map(|(t, s)| (t.as_str(), s))))
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
