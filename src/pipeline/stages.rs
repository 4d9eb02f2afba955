//! Stage kinds: how each kind's parameters parse, which files and tables it reads, and the
//! call that runs it. What a stage computes lives with its part; this file only dispatches.
//!
//! | kind | part | reads | writes |
//! |---|---|---|---|
//! | `synthetic`, `persona`, `polis` | `ingest` | input files | items, prompts, pairs, users (+ embeddings for synthetic) |
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
use crate::store::{write_ingest, Store};

/// A stage kind with its typed parameters. (A handful per pipeline: the size difference
/// between variants does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum StageParams {
    Synthetic(ingest::synthetic::Params),
    Persona(ingest::persona::Params),
    Polis(ingest::polis::Params),
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
    pub const KINDS: [&'static str; 7] = [
        "synthetic",
        "persona",
        "polis",
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
            StageParams::Embed(p) => p.inputs(),
            StageParams::Train(_) | StageParams::Eval(_) | StageParams::Adapt(_) => Vec::new(),
        }
    }

    /// Tables whose versions enter the fingerprint.
    pub fn reads(&self) -> &'static [&'static str] {
        match self {
            StageParams::Synthetic(_) | StageParams::Persona(_) | StageParams::Polis(_) => &[],
            StageParams::Embed(_) => &["items", "prompts"],
            // Train, eval and adapt also hash the SQL of the splits and the identity of the
            // model they name (see the runner), not the versions of `splits` and `models`.
            StageParams::Train(_) | StageParams::Eval(_) | StageParams::Adapt(_) => {
                &["pairs", "embeddings"]
            }
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
            StageParams::Embed(p) => p.describe(),
            StageParams::Train(p) => p.describe(),
            StageParams::Eval(p) => format!("model '{}' on split '{}'", p.model, p.split),
            StageParams::Adapt(p) => format!(
                "model '{}', users of '{}', shots {:?}",
                p.model, p.users, p.shots
            ),
        }
    }

    /// Runs the stage; the returned line summarises what it did.
    pub async fn run(&self, ctx: &StageCtx<'_>) -> anyhow::Result<String> {
        match self {
            StageParams::Synthetic(p) => {
                let p = p.clone();
                ingest_summary(
                    ctx,
                    tokio::task::spawn_blocking(move || ingest::synthetic::ingest(&p)).await??,
                )
                .await
            }
            StageParams::Persona(p) => {
                let p = p.clone();
                ingest_summary(
                    ctx,
                    tokio::task::spawn_blocking(move || ingest::persona::ingest(&p)).await??,
                )
                .await
            }
            StageParams::Polis(p) => {
                let p = p.clone();
                ingest_summary(
                    ctx,
                    tokio::task::spawn_blocking(move || ingest::polis::ingest(&p)).await??,
                )
                .await
            }
            StageParams::Embed(p) => super::embed_stage::run(p, ctx).await,
            StageParams::Train(p) => super::pal_stages::train(p, ctx).await,
            StageParams::Eval(p) => super::pal_stages::eval(p, ctx).await,
            StageParams::Adapt(p) => super::pal_stages::adapt(p, ctx).await,
        }
    }
}

async fn ingest_summary(
    ctx: &StageCtx<'_>,
    batch: crate::store::records::IngestBatch,
) -> anyhow::Result<String> {
    let stats = write_ingest(ctx.store, &batch).await?;
    let parts: Vec<String> = stats
        .iter()
        .map(|(t, s)| {
            if s.existing > 0 {
                format!("{t} +{} ({} present)", s.inserted, s.existing)
            } else {
                format!("{t} +{}", s.inserted)
            }
        })
        .collect();
    Ok(parts.join(", "))
}
