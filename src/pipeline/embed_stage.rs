//! The `embed` stage (and `palpipe embed`): the content-addressed embedding cache.
//!
//! Selects text items and/or prompts, drops every (content id, encoder id) already in
//! `embeddings`, and embeds the rest in chunks, each chunk its own commit: an interrupted
//! run keeps its finished chunks and a rerun completes the rest without duplicates.
//! Empty texts are counted and skipped, never stored as a zero vector.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{Array, StringArray};
use serde::Deserialize;

use super::stages::StageCtx;
use crate::embed::{self, BertSentenceEncoder, TextEncoder};
use crate::store::batches;
use crate::store::records::EmbeddingRow;

fn default_encoder() -> String {
    embed::MINILM_L6_V2.to_string()
}
fn default_targets() -> Vec<String> {
    vec!["items".into(), "prompts".into()]
}
fn default_device() -> String {
    "cpu".into()
}
fn default_chunk() -> usize {
    1024
}

/// Parameters of an `embed` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedParams {
    /// The text encoder: `all-MiniLM-L6-v2` (default; `minilm` also accepted).
    #[serde(default = "default_encoder")]
    pub encoder: String,
    /// The model folder (Hugging Face layout); default `$PALPIPE_MODELS/<encoder>` or
    /// `~/.cache/palpipe/models/<encoder>`.
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// Which tables to embed: `items`, `prompts` or both (default).
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
    /// A SQL predicate over the target table selecting what to embed, e.g. "source = 'persona'".
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
    /// Texts per forward pass (default: the encoder's).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Tokens kept per text (default 256, as sentence-transformers).
    #[serde(default)]
    pub max_length: Option<usize>,
    /// `cpu` (default) or `cuda` (needs a build with `--features cuda`).
    #[serde(default = "default_device")]
    pub device: String,
    /// Texts per commit (default 1024).
    #[serde(default = "default_chunk")]
    pub chunk: usize,
}

impl EmbedParams {
    fn model_name(&self) -> &str {
        match self.encoder.as_str() {
            "minilm" => embed::MINILM_L6_V2,
            other => other,
        }
    }

    pub fn inputs(&self) -> Vec<(String, PathBuf)> {
        let dir = match &self.model_dir {
            Some(d) => d.clone(),
            None => embed::models_root(self.model_name())
                .map(|r| r.join(self.model_name()))
                .unwrap_or_else(|_| PathBuf::from(self.model_name())),
        };
        vec![(
            if self.model_dir.is_some() {
                "model_dir"
            } else {
                "encoder"
            }
            .to_string(),
            dir,
        )]
    }

    pub fn describe(&self) -> String {
        format!(
            "{} over {} on {}",
            self.model_name(),
            self.targets.join("+"),
            self.device
        )
    }

    pub fn load(&self) -> anyhow::Result<BertSentenceEncoder> {
        if self.model_name() != embed::MINILM_L6_V2 {
            anyhow::bail!(
                "unknown text encoder '{}' (supported: all-MiniLM-L6-v2)",
                self.encoder
            );
        }
        let device = embed::device(&self.device)?;
        let mut enc = BertSentenceEncoder::load(
            &embed::resolve_model_dir(self.model_dir.as_deref(), self.model_name())?,
            &device,
        )?;
        if let Some(n) = self.max_length {
            enc = enc.with_max_length(n)?;
        }
        if let Some(n) = self.batch_size {
            enc = enc.with_batch_size(n)?;
        }
        Ok(enc)
    }
}

/// Outcome counts of one embed run.
#[derive(Debug, Default)]
pub struct EmbedCounts {
    pub embedded: usize,
    pub cached: usize,
    pub empty: usize,
    pub encoder_id: String,
}

pub async fn run(p: &EmbedParams, ctx: &StageCtx<'_>) -> anyhow::Result<String> {
    let c = embed_texts(p, ctx.store, ctx.printer).await?;
    Ok(format!(
        "{}: embedded {}, already cached {}{}",
        c.encoder_id,
        c.embedded,
        c.cached,
        if c.empty > 0 {
            format!(", {} empty texts skipped", c.empty)
        } else {
            String::new()
        }
    ))
}

/// The cache itself, shared by the stage and `palpipe embed`.
pub async fn embed_texts(
    p: &EmbedParams,
    store: &crate::store::Store,
    printer: super::progress::Printer,
) -> anyhow::Result<EmbedCounts> {
    let params = p.clone();
    let enc = Arc::new(tokio::task::spawn_blocking(move || params.load()).await??);
    let mut counts = EmbedCounts {
        encoder_id: enc.encoder_id().to_string(),
        ..Default::default()
    };
    let done = cached_ids(store, enc.encoder_id()).await?;
    let mut todo: Vec<(String, String)> = Vec::new();
    let mut seen = HashSet::new();
    for target in &p.targets {
        let (table, id_col, pred) = match target.as_str() {
            "items" => ("items", "item_id", Some("kind = 'text'".to_string())),
            "prompts" => ("prompts", "prompt_id", None),
            other => anyhow::bail!("embed: unknown target '{other}' (targets: items, prompts)"),
        };
        let filter = match (pred, &p.filter) {
            (Some(a), Some(b)) => Some(format!("({a}) AND ({b})")),
            (Some(a), None) => Some(a),
            (None, Some(b)) => Some(b.clone()),
            (None, None) => None,
        };
        for b in store
            .read(table, &[id_col, "text"], filter.as_deref())
            .await?
        {
            let ids = b.column(0).as_any().downcast_ref::<StringArray>();
            let texts = b.column(1).as_any().downcast_ref::<StringArray>();
            let (Some(ids), Some(texts)) = (ids, texts) else {
                continue;
            };
            for i in 0..b.num_rows() {
                let id = ids.value(i);
                if done.contains(id) {
                    counts.cached += 1;
                } else if texts.is_null(i) || texts.value(i).trim().is_empty() {
                    counts.empty += 1;
                } else if seen.insert(id.to_string()) {
                    todo.push((id.to_string(), texts.value(i).to_string()));
                }
            }
        }
    }
    let bar = printer.bar(todo.len() as u64, "embedding");
    for chunk in todo.chunks(p.chunk.max(1)) {
        let enc2 = enc.clone();
        let texts: Vec<String> = chunk.iter().map(|(_, t)| t.clone()).collect();
        let vectors = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            enc2.embed_texts(&refs)
        })
        .await??;
        let rows: Vec<EmbeddingRow> = chunk
            .iter()
            .zip(vectors)
            .map(|((id, _), v)| EmbeddingRow {
                content_id: id.clone(),
                encoder_id: enc.encoder_id().to_string(),
                vector: v,
            })
            .collect();
        if let Some(batch) = batches::embeddings(&rows)? {
            store.append("embeddings", batch).await?;
        }
        counts.embedded += rows.len();
        bar.inc(rows.len() as u64);
    }
    bar.finish_and_clear();
    Ok(counts)
}

async fn cached_ids(store: &crate::store::Store, encoder: &str) -> anyhow::Result<HashSet<String>> {
    let filter = format!("encoder_id = '{}'", encoder.replace('\'', "''"));
    let mut out = HashSet::new();
    for b in store
        .read("embeddings", &["content_id"], Some(&filter))
        .await?
    {
        if let Some(a) = b.column(0).as_any().downcast_ref::<StringArray>() {
            out.extend((0..a.len()).map(|i| a.value(i).to_string()));
        }
    }
    Ok(out)
}
