//! The embedding cache behind the `embed` stage kind (`kinds/embed.rs`) and `palpipe embed`: the content-addressed embedding cache.
//!
//! Selects text items and/or prompts (and, with CLIP, image items), drops every
//! (content id, encoder id) already in `embeddings`, and embeds the rest in chunks, each
//! chunk its own commit: an interrupted run keeps its finished chunks and a rerun completes
//! the rest without duplicates. Empty texts are counted and skipped, never stored as a zero
//! vector; images that do not decode are counted, reported and skipped the same way.
//!
//! Images are streamed: their ids are selected first, then their bytes are read a few at a
//! time (`item_id IN (…)`), so a store's images are never all in memory at once. Both CLIP
//! towers write under the one encoder id, so image and caption vectors can be compared.
//! The encoders live in `src/embed`; the store's write call in `src/store`.
//!
//! A sharded run (`palpipe embed --shard K/N --uncommitted`) goes through the same code with
//! an [`EmbedSink::Shard`]: only the content ids of shard K are embedded, and the chunks are
//! staged as uncommitted fragments for `palpipe commit` (`src/store/shards.rs`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{Array, StringArray};
use serde::{Deserialize, Serialize};

use crate::embed::{self, BertSentenceEncoder, ClipEncoder, EmbedError, ImageEncoder, TextEncoder};
use crate::store::batches;
use crate::store::records::EmbeddingRow;
use crate::store::shards::ShardWriter;
use crate::store::KeysSeen;
use crate::transform::ParamIssue;

/// The `encoder` value that selects CLIP (with `model_dir`).
pub const CLIP: &str = "clip";

/// Images read from the store (and decoded) at a time, inside one commit chunk.
const IMAGE_READ_BATCH: usize = 32;

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedParams {
    /// The encoder: `all-MiniLM-L6-v2` (default; `minilm` also accepted), a text encoder,
    /// or `clip`, which embeds image items with its image tower and texts and prompts with
    /// its text tower (needs `model_dir`).
    #[serde(default = "default_encoder")]
    pub encoder: String,
    /// The model folder (Hugging Face layout); default `$PALPIPE_MODELS/<encoder>` or
    /// `~/.cache/palpipe/models/<encoder>`. Required for `clip`.
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// Which tables to embed: `items`, `prompts` or both (default).
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
    /// A SQL predicate over the target table selecting what to embed, e.g. "source = 'persona'".
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
    /// Texts (or images) per forward pass (default: the encoder's).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Tokens kept per text (default 256, as sentence-transformers).
    #[serde(default)]
    pub max_length: Option<usize>,
    /// `cpu` (default) or `cuda` (needs a build with `--features cuda`).
    #[serde(default = "default_device")]
    pub device: String,
    /// Texts or images per commit (default 1024).
    #[serde(default = "default_chunk")]
    pub chunk: usize,
}

/// A loaded encoder: MiniLM embeds texts; CLIP embeds texts and images under one id.
// Both variants are large and differ by a few hundred bytes (a loaded model's handles):
// one lives per embed run, never moved on a hot path, so boxing either buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Encoder {
    Bert(BertSentenceEncoder),
    Clip(ClipEncoder),
}

impl Encoder {
    pub fn encoder_id(&self) -> &str {
        self.text().encoder_id()
    }

    /// The text tower (the whole model for MiniLM).
    pub fn text(&self) -> &dyn TextEncoder {
        match self {
            Encoder::Bert(e) => e,
            Encoder::Clip(e) => e,
        }
    }

    /// The image tower, when the encoder has one.
    pub fn image(&self) -> Option<&dyn ImageEncoder> {
        match self {
            Encoder::Bert(_) => None,
            Encoder::Clip(e) => Some(e),
        }
    }
}

impl EmbedParams {
    /// The text encoder's name (`minilm` spelled out).
    pub(crate) fn model_name(&self) -> &str {
        match self.encoder.as_str() {
            "minilm" => embed::MINILM_L6_V2,
            other => other,
        }
    }

    /// Whether the encoder is CLIP.
    pub(crate) fn is_clip(&self) -> bool {
        self.encoder.eq_ignore_ascii_case(CLIP)
    }

    /// Checks what can be checked without loading anything: the encoder is known, and CLIP
    /// has its model folder. The key at fault comes with the message.
    pub fn check(&self) -> Result<(), ParamIssue> {
        if self.is_clip() && self.model_dir.is_none() {
            return Err(ParamIssue::new(
                "encoder",
                "encoder 'clip' needs a model folder\nhint: pass --model-dir (or 'model_dir:') naming a CLIP folder in the Hugging Face layout (config.json, model.safetensors, tokenizer.json)",
            ));
        }
        if !self.is_clip() && self.model_name() != embed::MINILM_L6_V2 {
            return Err(ParamIssue::new(
                "encoder",
                format!(
                    "unknown encoder '{}' (supported: all-MiniLM-L6-v2, clip)",
                    self.encoder
                ),
            ));
        }
        Ok(())
    }

    pub fn load(&self) -> anyhow::Result<Encoder> {
        self.check()?;
        let device = embed::device(&self.device)?;
        if let (true, Some(dir)) = (self.is_clip(), &self.model_dir) {
            let mut enc = ClipEncoder::load(dir, &device)?;
            if let Some(n) = self.batch_size {
                enc = enc.with_batch_size(n)?;
            }
            return Ok(Encoder::Clip(enc));
        }
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
        Ok(Encoder::Bert(enc))
    }
}

/// An image that could not be embedded, and why.
#[derive(Debug, Clone)]
pub struct ImageFailure {
    pub item_id: String,
    pub reason: String,
}

/// Outcome counts of one embed run.
#[derive(Debug, Default)]
pub struct EmbedCounts {
    /// Vectors written (texts and images).
    pub embedded: usize,
    /// Of those, images.
    pub images: usize,
    pub cached: usize,
    pub empty: usize,
    /// Images whose bytes do not decode (no vector written), in the order met.
    pub failed: Vec<ImageFailure>,
    pub encoder_id: String,
    /// Rows left to the other shards of a sharded run (0 otherwise).
    pub other_shards: usize,
}

impl EmbedCounts {
    /// "2 images failed to decode (first: <id>: <reason>)", or None when all decoded.
    pub fn failed_line(&self) -> Option<String> {
        let first = self.failed.first()?;
        Some(format!(
            "{} image{} failed to decode (first: {}: {})",
            self.failed.len(),
            if self.failed.len() == 1 { "" } else { "s" },
            first.item_id,
            first.reason
        ))
    }
}

fn and(a: Option<String>, b: Option<&String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("({a}) AND ({b})")),
        (Some(a), None) => Some(a),
        (None, Some(b)) => Some(b.clone()),
        (None, None) => None,
    }
}

/// Where embedded chunks go.
pub enum EmbedSink<'a> {
    /// Each chunk its own commit (the stage, and `palpipe embed` without `--shard`).
    Commit,
    /// One shard of a sharded run: only the content ids the shard owns are embedded, and
    /// their chunks are staged uncommitted (see `src/store/shards.rs`).
    Shard(ShardWriter<'a>),
}

impl EmbedSink<'_> {
    /// Writes one chunk of vectors and returns how many were written: a commit leaves out
    /// those another writer stored since the cache was read (`seen`, see
    /// [`Store::append_seen`](crate::store::Store::append_seen)).
    async fn put(
        &mut self,
        store: &crate::store::Store,
        rows: &[EmbeddingRow],
        encoder_id: &str,
        seen: &mut KeysSeen,
    ) -> anyhow::Result<usize> {
        let Some(batch) = batches::embeddings(rows)? else {
            return Ok(0);
        };
        match self {
            EmbedSink::Commit => Ok(store.append_seen("embeddings", batch, seen).await?.inserted),
            EmbedSink::Shard(w) => {
                w.stage(batch, encoder_id).await?;
                Ok(rows.len())
            }
        }
    }

    /// Whether this sink takes `content_id` (a shard takes its own ids only).
    fn takes(&self, content_id: &str) -> bool {
        match self {
            EmbedSink::Commit => true,
            EmbedSink::Shard(w) => w.spec().owns(content_id),
        }
    }
}

/// The cache itself, shared by the stage and `palpipe embed`: texts (items of kind `text`
/// and prompts) through the text tower and, when the encoder has an image tower, items of
/// kind `image` through it. Each chunk is committed as it is done, without the vectors
/// another writer stored since the cache was read (counted as cached).
pub async fn embed_texts(
    p: &EmbedParams,
    store: &crate::store::Store,
    printer: super::progress::Printer,
) -> anyhow::Result<EmbedCounts> {
    embed_into(p, store, printer, &mut EmbedSink::Commit).await
}

/// As [`embed_texts`], with the chunks going to `sink`.
pub async fn embed_into(
    p: &EmbedParams,
    store: &crate::store::Store,
    printer: super::progress::Printer,
    sink: &mut EmbedSink<'_>,
) -> anyhow::Result<EmbedCounts> {
    for target in &p.targets {
        if target != "items" && target != "prompts" {
            anyhow::bail!("embed: unknown target '{target}' (targets: items, prompts)");
        }
    }
    let params = p.clone();
    let enc = Arc::new(tokio::task::spawn_blocking(move || params.load()).await??);
    let encoder_id = enc.encoder_id().to_string();
    let mut counts = EmbedCounts {
        encoder_id: encoder_id.clone(),
        ..Default::default()
    };
    // The table as the cache is read (or before): each chunk's commit leaves out what other
    // writers add after this point.
    let mut checked = KeysSeen::at(store.dataset("embeddings", None).await?.as_ref());
    let done = cached_ids(store, &encoder_id).await?;
    crate::store::race_hook::pause("embed-cache-read").await;
    let mut todo: Vec<(String, String)> = Vec::new();
    let mut seen = HashSet::new();
    for target in &p.targets {
        let (table, id_col, pred) = match target.as_str() {
            "items" => ("items", "item_id", Some("kind = 'text'".to_string())),
            _ => ("prompts", "prompt_id", None),
        };
        let filter = and(pred, p.filter.as_ref());
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
                if !sink.takes(id) {
                    counts.other_shards += 1;
                } else if done.contains(id) {
                    counts.cached += 1;
                } else if texts.is_null(i) || texts.value(i).trim().is_empty() {
                    counts.empty += 1;
                } else if seen.insert(id.to_string()) {
                    todo.push((id.to_string(), texts.value(i).to_string()));
                }
            }
        }
    }
    // Images: ids only here; their bytes are read chunk by chunk below.
    let mut images: Vec<String> = Vec::new();
    if enc.image().is_some() && p.targets.iter().any(|t| t == "items") {
        let filter = and(Some("kind = 'image'".to_string()), p.filter.as_ref());
        for b in store.read("items", &["item_id"], filter.as_deref()).await? {
            let Some(ids) = b.column(0).as_any().downcast_ref::<StringArray>() else {
                continue;
            };
            for i in 0..b.num_rows() {
                let id = ids.value(i);
                if !sink.takes(id) {
                    counts.other_shards += 1;
                } else if done.contains(id) {
                    counts.cached += 1;
                } else if seen.insert(id.to_string()) {
                    images.push(id.to_string());
                }
            }
        }
    }
    // Batches in id order: a text's padded batch, hence its last bits, must not depend on
    // the order rows happen to be stored in.
    todo.sort_unstable();
    images.sort_unstable();
    let bar = printer.bar((todo.len() + images.len()) as u64, "embedding");
    for chunk in todo.chunks(p.chunk.max(1)) {
        let enc2 = enc.clone();
        let texts: Vec<String> = chunk.iter().map(|(_, t)| t.clone()).collect();
        let vectors = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            enc2.text().embed_texts(&refs)
        })
        .await??;
        let rows: Vec<EmbeddingRow> = chunk
            .iter()
            .zip(vectors)
            .map(|((id, _), v)| EmbeddingRow {
                content_id: id.clone(),
                encoder_id: encoder_id.clone(),
                vector: v,
            })
            .collect();
        let written = sink.put(store, &rows, &encoder_id, &mut checked).await?;
        counts.embedded += written;
        counts.cached += rows.len().saturating_sub(written);
        bar.inc(rows.len() as u64);
    }
    for chunk in images.chunks(p.chunk.max(1)) {
        let mut rows: Vec<EmbeddingRow> = Vec::with_capacity(chunk.len());
        for group in chunk.chunks(IMAGE_READ_BATCH) {
            let bytes = store.item_bytes(group).await?;
            let enc2 = enc.clone();
            let (ids, vectors, failed) =
                tokio::task::spawn_blocking(move || embed_image_group(enc2.as_ref(), bytes))
                    .await??;
            rows.extend(ids.into_iter().zip(vectors).map(|(id, v)| EmbeddingRow {
                content_id: id,
                encoder_id: encoder_id.clone(),
                vector: v,
            }));
            counts.failed.extend(failed);
            bar.inc(group.len() as u64);
        }
        let written = sink.put(store, &rows, &encoder_id, &mut checked).await?;
        counts.embedded += written;
        counts.images += written;
        counts.cached += rows.len().saturating_sub(written);
    }
    bar.finish_and_clear();
    Ok(counts)
}

/// Decodes and embeds one group of images: the ids and vectors of those that decoded, and
/// the failures of those that did not.
#[allow(clippy::type_complexity)]
fn embed_image_group(
    enc: &Encoder,
    group: Vec<(String, Option<Vec<u8>>)>,
) -> anyhow::Result<(Vec<String>, Vec<Vec<f32>>, Vec<ImageFailure>)> {
    let Some(tower) = enc.image() else {
        anyhow::bail!("encoder '{}' has no image tower", enc.encoder_id());
    };
    let (mut ids, mut decoded, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (id, bytes) in group {
        let Some(bytes) = bytes else {
            failed.push(ImageFailure {
                item_id: id,
                reason: "the item has no bytes".into(),
            });
            continue;
        };
        match embed::clip::decode_image(&bytes, &id) {
            Ok(img) => {
                ids.push(id);
                decoded.push(img);
            }
            Err(EmbedError::Image { reason, .. }) => failed.push(ImageFailure {
                item_id: id,
                reason,
            }),
            Err(e) => failed.push(ImageFailure {
                item_id: id,
                reason: e.to_string(),
            }),
        }
    }
    let vectors = tower.embed_images(&decoded)?;
    Ok((ids, vectors, failed))
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
