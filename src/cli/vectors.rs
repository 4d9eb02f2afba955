//! `palpipe embed` (whole, or one shard of a sharded run), `palpipe index` and `palpipe search`:
//! the embedding cache and vector search; also the query encoder `knn` uses in `palpipe sql`.

use std::path::PathBuf;

use arrow_array::{Array, StringArray};

use super::{CliError, Ctx};
use crate::pipeline::embed_stage::{embed_into, EmbedParams, EmbedSink, CLIP};
use crate::pipeline::pal_stages::{only_encoder, resolve_encoder};
use crate::store::knn::QueryEncoder;
use crate::store::shards::{check_run_id, ShardError, ShardSpec, ShardWriter};
use crate::store::vector::{self, IndexKind};
use crate::store::StoreError;
use futures::future::BoxFuture;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  palpipe embed --targets prompts --where \"source = 'persona'\"\n  palpipe embed --encoder clip --model-dir models/clip-vit-h-14\n\nWith --encoder clip, image items go through CLIP's image tower and text items and prompts\nthrough its text tower, all under one encoder id. An image whose bytes do not decode gets\nno vector: each one is printed to stderr and the summary counts them."
)]
pub struct EmbedArgs {
    /// The encoder: all-MiniLM-L6-v2 (texts only) or clip (images and texts; needs --model-dir).
    #[arg(long, default_value = "all-MiniLM-L6-v2")]
    pub encoder: String,
    /// The model folder (default ~/.cache/palpipe/models/<encoder>, or $PALPIPE_MODELS);
    /// for clip, a CLIP folder in the Hugging Face layout.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Tables to embed: items, prompts (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "items,prompts")]
    pub targets: Vec<String>,
    /// A SQL predicate choosing rows, e.g. "source = 'persona'".
    #[arg(long = "where")]
    pub filter: Option<String>,
    /// cpu or cuda (a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Texts (or images) per forward pass (default: the encoder's).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Texts or images per commit: an interrupted run keeps every finished chunk.
    #[arg(long, default_value_t = 1024)]
    pub chunk: usize,
    /// Embed only shard K of N (K from 0) of what is not cached, e.g. 2/4; `auto/N` takes K
    /// from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX. Needs --uncommitted and --run-id.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Write the vectors as uncommitted fragments and the shard's metadata under
    /// <store>/_palpipe/runs/<run-id>/; `palpipe commit` publishes all shards at once.
    #[arg(long)]
    pub uncommitted: bool,
    /// The sharded run this worker belongs to (letters, digits, '.', '_', '-').
    #[arg(long)]
    pub run_id: Option<String>,
}

/// A count of at least 1 (`--partitions`), for clap: the message says what was expected.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number of at least 1".to_string()),
    }
}

#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    /// Index kind: ivf-flat (default, small tables), ivf-pq (compact), hnsw.
    #[arg(long, value_enum, default_value = "ivf-flat")]
    pub kind: IndexKind,
    /// IVF partitions, at least 1 (default: about sqrt of the row count, at most 256).
    #[arg(long, value_parser = at_least_one)]
    pub partitions: Option<usize>,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  palpipe search --text \"I love painting\" --k 5\n  palpipe search --encoder all-MiniLM-L6-v2 --text \"I love painting\" --k 5"
)]
pub struct SearchArgs {
    /// Encoder id, or a name when the store holds one encoder of that name.
    /// Default: the store's only encoder.
    #[arg(long)]
    pub encoder: Option<String>,
    /// The query text (embedded with the same encoder).
    #[arg(long)]
    pub text: String,
    /// How many results.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// The encoder's model folder (as for embed).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The shard a sharded `embed` writes, from its flags: all three of --shard, --uncommitted
/// and --run-id, or none.
fn shard_flags(a: &EmbedArgs) -> Result<Option<(ShardSpec, String)>, CliError> {
    match (&a.shard, a.uncommitted, &a.run_id) {
        (None, false, None) => Ok(None),
        (Some(spec), true, Some(run)) => {
            let spec = ShardSpec::parse(spec, |k| std::env::var(k).ok()).map_err(CliError::usage)?;
            check_run_id(run).map_err(CliError::usage)?;
            Ok(Some((spec, run.clone())))
        }
        _ => Err(CliError::usage(anyhow::anyhow!(
            "--shard, --uncommitted and --run-id go together\nhint: palpipe embed --shard 0/4 --uncommitted --run-id RUN (one per shard), then palpipe commit --run-id RUN --shards 4"
        ))),
    }
}

pub async fn embed(ctx: &Ctx, a: EmbedArgs) -> Result<(), CliError> {
    let sharded = shard_flags(&a)?;
    let store = ctx.store(None)?;
    // A shard commits nothing, so N of them run side by side; `commit` takes the lock.
    let _lock = match sharded {
        None => Some(store.lock()?),
        Some(_) => None,
    };
    let p = EmbedParams {
        encoder: a.encoder,
        model_dir: a.model_dir,
        targets: a.targets,
        filter: a.filter,
        batch_size: a.batch_size,
        max_length: None,
        device: a.device,
        chunk: a.chunk,
    };
    p.check().map_err(CliError::usage)?;
    let mut sink = match &sharded {
        None => EmbedSink::Commit,
        Some((spec, run)) => EmbedSink::Shard(
            ShardWriter::new(&store, run, *spec)
                .await
                .map_err(shard_err)?,
        ),
    };
    let c = embed_into(&p, &store, ctx.printer, &mut sink).await?;
    for f in &c.failed {
        // Shown even with --quiet: each is an item left without a vector.
        ctx.printer.warn(format!(
            "image '{}' failed to decode: {}",
            f.item_id, f.reason
        ));
    }
    let images = if c.images > 0 {
        format!(" ({} images)", c.images)
    } else {
        String::new()
    };
    let failed = c
        .failed_line()
        .map(|f| format!(", {f}"))
        .unwrap_or_default();
    let shard_note = match (&sharded, sink) {
        (Some((spec, _)), EmbedSink::Shard(w)) => {
            let path = w.finish().await.map_err(shard_err)?;
            format!(
                " (shard {}/{}, uncommitted; {} rows in other shards; metadata {})",
                spec.index,
                spec.count,
                c.other_shards,
                path.display()
            )
        }
        _ => String::new(),
    };
    outln!(
        "{}: embedded {}{images}, already cached {}, empty skipped {}{failed}{shard_note}",
        c.encoder_id,
        c.embedded,
        c.cached,
        c.empty
    )?;
    Ok(())
}

/// A sharded write's error with its exit code.
pub(crate) fn shard_err(e: ShardError) -> CliError {
    CliError {
        code: e.exit_code(),
        error: e.into(),
    }
}

pub async fn index(ctx: &Ctx, a: IndexArgs) -> Result<(), CliError> {
    let store = ctx.existing_store().await?;
    let _lock = store.lock()?;
    let rows = store.count("embeddings", None).await?;
    let partitions = a
        .partitions
        .unwrap_or_else(|| ((rows as f64).sqrt() as usize).clamp(1, 256));
    vector::create_index(&store, a.kind, partitions).await?;
    outln!(
        "indexed {rows} vectors ({:?}, {partitions} partitions)",
        a.kind
    )?;
    Ok(())
}

/// The encoder id `name` stands for in `store` (the store's only encoder when `None`) and
/// the vector of `text` under it, with the model loaded from `model_dir` (or the default
/// folder). Shared by `palpipe search` and `knn` in `palpipe sql`.
async fn query_vector(
    store: &crate::store::Store,
    name: Option<&str>,
    model_dir: Option<PathBuf>,
    text: &str,
) -> Result<(String, Vec<f32>), CliError> {
    let encoder = match name {
        Some(e) => resolve_encoder(store, e).await,
        None => only_encoder(store)
            .await
            .map_err(|e| e.context("no --encoder given".to_string())),
    }
    .map_err(CliError::usage)?;
    let name = encoder.split(':').next().unwrap_or(&encoder).to_string();
    // A store encoder that is not MiniLM is a CLIP folder (its id names the folder).
    let kind = if name == crate::embed::MINILM_L6_V2 || model_dir.is_none() {
        name
    } else {
        CLIP.to_string()
    };
    let p = EmbedParams {
        encoder: kind,
        model_dir,
        targets: vec![],
        filter: None,
        batch_size: None,
        max_length: None,
        device: "cpu".into(),
        chunk: 1,
    };
    let enc = tokio::task::spawn_blocking(move || p.load())
        .await
        .map_err(|e| CliError::failure(anyhow::Error::from(e)))??;
    if enc.encoder_id() != encoder {
        return Err(CliError::usage(anyhow::anyhow!(
            "the model files give encoder '{}', but the store's vectors are from '{encoder}'\nhint: point --model-dir at the weights that made them",
            enc.encoder_id()
        )));
    }
    let text = text.to_string();
    let mut q = tokio::task::spawn_blocking(move || enc.text().embed_texts(&[text.as_str()]))
        .await
        .map_err(|e| CliError::failure(anyhow::Error::from(e)))?
        .map_err(CliError::usage)?;
    Ok((encoder, q.remove(0)))
}

/// The [`QueryEncoder`] of `palpipe sql`: encoders resolved in the store, models from their
/// default folders.
#[derive(Debug, Default)]
pub struct StoreEncoders;

fn as_store_err(e: CliError) -> StoreError {
    StoreError::Sql(super::render_error(&e.error))
}

impl QueryEncoder for StoreEncoders {
    fn resolve<'a>(
        &'a self,
        store: &'a crate::store::Store,
        name: &'a str,
    ) -> BoxFuture<'a, Result<String, StoreError>> {
        Box::pin(async move {
            resolve_encoder(store, name)
                .await
                .map_err(|e| StoreError::Sql(super::render_error(&e)))
        })
    }

    fn embed<'a>(
        &'a self,
        store: &'a crate::store::Store,
        name: &'a str,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(String, Vec<f32>), StoreError>> {
        Box::pin(async move {
            query_vector(store, Some(name), None, text)
                .await
                .map_err(as_store_err)
        })
    }
}

pub async fn search(ctx: &Ctx, a: SearchArgs) -> Result<(), CliError> {
    let store = ctx.existing_store().await?;
    let (encoder, q) =
        query_vector(&store, a.encoder.as_deref(), a.model_dir.clone(), &a.text).await?;
    let hits = vector::nearest(&store, &encoder, &q, a.k).await?;
    let texts = texts_of(
        &store,
        &hits
            .iter()
            .map(|h| h.content_id.clone())
            .collect::<Vec<_>>(),
    )
    .await?;
    for (rank, h) in hits.iter().enumerate() {
        let t = texts.get(&h.content_id).cloned().unwrap_or_default();
        if a.json {
            outln!(
                "{}",
                serde_json::json!({"rank": rank + 1, "distance": h.distance, "content_id": h.content_id, "text": t})
            )?;
        } else {
            outln!(
                "{:>3}  {:.4}  {}  {}",
                rank + 1,
                h.distance,
                h.content_id.chars().take(12).collect::<String>(),
                t.replace('\n', " ")
            )?;
        }
    }
    Ok(())
}

/// content id → text, from items and prompts.
async fn texts_of(
    store: &crate::store::Store,
    ids: &[String],
) -> Result<std::collections::HashMap<String, String>, CliError> {
    let mut out = std::collections::HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let list = crate::store::sql_list(ids);
    for (table, col) in [("items", "item_id"), ("prompts", "prompt_id")] {
        for b in store
            .read(table, &[col, "text"], Some(&format!("{col} IN ({list})")))
            .await?
        {
            let (Some(i), Some(t)) = (
                b.column(0).as_any().downcast_ref::<StringArray>(),
                b.column(1).as_any().downcast_ref::<StringArray>(),
            ) else {
                continue;
            };
            for r in 0..b.num_rows() {
                if !t.is_null(r) {
                    out.insert(i.value(r).to_string(), t.value(r).to_string());
                }
            }
        }
    }
    Ok(out)
}
