//! `palpipe embed`, `palpipe index` and `palpipe search`: the embedding cache and vector search.

use std::path::PathBuf;

use arrow_array::{Array, StringArray};

use super::{CliError, Ctx};
use crate::pipeline::embed_stage::{embed_texts, EmbedParams, CLIP};
use crate::pipeline::pal_stages::{only_encoder, resolve_encoder};
use crate::store::vector::{self, IndexKind};

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
}

#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    /// Index kind: ivf-flat (default, small tables), ivf-pq (compact), hnsw.
    #[arg(long, value_enum, default_value = "ivf-flat")]
    pub kind: IndexKind,
    /// IVF partitions (default: about sqrt of the row count).
    #[arg(long)]
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

pub async fn embed(ctx: &Ctx, a: EmbedArgs) -> Result<(), CliError> {
    let store = ctx.store(None)?;
    let _lock = store.lock()?;
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
    let c = embed_texts(&p, &store, ctx.printer).await?;
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
    println!(
        "{}: embedded {}{images}, already cached {}, empty skipped {}{failed}",
        c.encoder_id, c.embedded, c.cached, c.empty
    );
    Ok(())
}

pub async fn index(ctx: &Ctx, a: IndexArgs) -> Result<(), CliError> {
    let store = ctx.existing_store()?;
    let _lock = store.lock()?;
    let rows = store.count("embeddings", None).await?;
    let partitions = a
        .partitions
        .unwrap_or_else(|| ((rows as f64).sqrt() as usize).clamp(1, 256));
    vector::create_index(&store, a.kind, partitions).await?;
    println!(
        "indexed {rows} vectors ({:?}, {partitions} partitions)",
        a.kind
    );
    Ok(())
}

pub async fn search(ctx: &Ctx, a: SearchArgs) -> Result<(), CliError> {
    let store = ctx.existing_store()?;
    let encoder = match a.encoder.as_deref() {
        Some(e) => resolve_encoder(&store, e).await,
        None => only_encoder(&store)
            .await
            .map_err(|e| e.context("no --encoder given".to_string())),
    }
    .map_err(CliError::usage)?;
    let name = encoder.split(':').next().unwrap_or(&encoder).to_string();
    // A store encoder that is not MiniLM is a CLIP folder (its id names the folder).
    let kind = if name == crate::embed::MINILM_L6_V2 || a.model_dir.is_none() {
        name
    } else {
        CLIP.to_string()
    };
    let p = EmbedParams {
        encoder: kind,
        model_dir: a.model_dir.clone(),
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
    let text = a.text.clone();
    let q = tokio::task::spawn_blocking(move || enc.text().embed_texts(&[text.as_str()]))
        .await
        .map_err(|e| CliError::failure(anyhow::Error::from(e)))?
        .map_err(CliError::usage)?;
    let hits = vector::nearest(&store, &encoder, &q[0], a.k).await?;
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
            println!(
                "{}",
                serde_json::json!({"rank": rank + 1, "distance": h.distance, "content_id": h.content_id, "text": t})
            );
        } else {
            println!(
                "{:>3}  {:.4}  {}  {}",
                rank + 1,
                h.distance,
                &h.content_id[..12.min(h.content_id.len())],
                t.replace('\n', " ")
            );
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
