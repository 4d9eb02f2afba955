//! From store tables to the PAL part's in-memory [`ComparisonSet`]: a named split (SQL over
//! `pairs`) joined with one encoder's vectors in `embeddings`.
//!
//! Each distinct item and prompt is loaded once and comparisons hold indices into those
//! matrices, so memory is the size of the vectors the split needs, not a copy per pair.

use std::collections::{BTreeMap, HashMap};

use arrow::compute::cast;
use arrow_array::{Array, FixedSizeListArray, Float32Array, Int64Array, StringArray};
use arrow_schema::DataType;

use crate::pal::{Comparison, ComparisonSet};
use crate::store::{sql, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("no split named '{name}' in the store (splits: {known})\nhint: define it under 'splits:' in a pipeline and run it")]
    NoSplit { name: String, known: String },
    #[error("split '{0}' selects no comparisons")]
    EmptySplit(String),
    #[error("split '{split}' must select column '{column}' from pairs")]
    MissingColumn { split: String, column: String },
    #[error("no vectors for encoder '{encoder}' in the store (encoders: {known})\nhint: run an 'embed' stage, or check the encoder id with: palpipe sql \"SELECT encoder_id, count(*) FROM embeddings GROUP BY encoder_id\"")]
    NoEncoder { encoder: String, known: String },
    #[error("{count} {what} in split '{split}' have no vector under encoder '{encoder}' (first: '{example}')\nhint: run the 'embed' stage over them")]
    MissingVectors {
        split: String,
        encoder: String,
        what: &'static str,
        count: usize,
        example: String,
    },
    #[error("split '{split}': {count} comparisons have no prompt (first: {example}); the CLIP score compares each image with its comparison's prompt")]
    NoPrompt {
        split: String,
        count: usize,
        example: String,
    },
    #[error("no encoder in the store has vectors for every item and prompt of split '{split}' (encoders: {known})\nhint: embed them with 'palpipe embed --encoder clip --model-dir DIR', or name one with --encoder")]
    NoCoveringEncoder { split: String, known: String },
    #[error("several encoders have vectors for every item and prompt of split '{split}': {ids}\nhint: choose one with --encoder (or 'encoder:' in the stage)")]
    AmbiguousEncoder { split: String, ids: String },
    #[error("split '{split}': some comparisons have a prompt and some do not")]
    MixedContext { split: String },
    #[error("split '{split}': label {label} is not -1 or +1")]
    BadLabel { split: String, label: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pal(#[from] crate::pal::PalError),
}

/// One comparison as the split query returns it.
#[derive(Debug, Clone)]
pub struct PairRef {
    pub user_id: String,
    pub prompt_id: Option<String>,
    pub left_id: String,
    pub right_id: String,
    pub label: i8,
}

/// A split loaded for training or evaluation, with the ids behind each matrix row.
#[derive(Debug, Clone)]
pub struct LoadedSplit {
    pub set: ComparisonSet,
    pub item_ids: Vec<String>,
    pub prompt_ids: Vec<String>,
}

/// The SQL of a named split.
pub async fn split_sql(store: &Store, name: &str) -> Result<String, FeatureError> {
    let splits = crate::pipeline::runner::stored_splits(store).await?;
    splits
        .get(name)
        .cloned()
        .ok_or_else(|| FeatureError::NoSplit {
            name: name.to_string(),
            known: if splits.is_empty() {
                "none yet".into()
            } else {
                splits.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })
}

/// The comparisons a named split selects.
pub async fn split_pairs(store: &Store, name: &str) -> Result<Vec<PairRef>, FeatureError> {
    let q = split_sql(store, name).await?;
    let result = sql::query(store, &q, &BTreeMap::new()).await?;
    let mut out = Vec::new();
    for b in &result.batches {
        let col = |c: &str, ty: &DataType| -> Result<std::sync::Arc<dyn Array>, FeatureError> {
            let a = b
                .column_by_name(c)
                .ok_or_else(|| FeatureError::MissingColumn {
                    split: name.into(),
                    column: c.into(),
                })?;
            cast(a, ty).map_err(|e| FeatureError::Store(StoreError::Sql(e.to_string())))
        };
        let users = col("user_id", &DataType::Utf8)?;
        let prompts = col("prompt_id", &DataType::Utf8)?;
        let lefts = col("left_id", &DataType::Utf8)?;
        let rights = col("right_id", &DataType::Utf8)?;
        let labels = col("label", &DataType::Int64)?;
        let s = |a: &std::sync::Arc<dyn Array>| a.as_any().downcast_ref::<StringArray>().cloned();
        let (Some(u), Some(p), Some(l), Some(r)) = (s(&users), s(&prompts), s(&lefts), s(&rights))
        else {
            continue;
        };
        let Some(y) = labels.as_any().downcast_ref::<Int64Array>() else {
            continue;
        };
        for i in 0..b.num_rows() {
            let label = y.value(i);
            if label != -1 && label != 1 {
                return Err(FeatureError::BadLabel {
                    split: name.into(),
                    label,
                });
            }
            out.push(PairRef {
                user_id: u.value(i).to_string(),
                prompt_id: (!p.is_null(i)).then(|| p.value(i).to_string()),
                left_id: l.value(i).to_string(),
                right_id: r.value(i).to_string(),
                label: label as i8,
            });
        }
    }
    if out.is_empty() {
        return Err(FeatureError::EmptySplit(name.to_string()));
    }
    Ok(out)
}

/// Vectors of `encoder` for the given content ids, as one row-major matrix in `ids` order.
pub async fn vectors(
    store: &Store,
    encoder: &str,
    ids: &[String],
    split: &str,
    what: &'static str,
) -> Result<(usize, Vec<f32>), FeatureError> {
    let filter = format!("encoder_id = '{}'", encoder.replace('\'', "''"));
    let batches = store
        .read("embeddings", &["content_id", "vector"], Some(&filter))
        .await?;
    let mut dim = 0;
    let mut index: HashMap<String, (usize, usize)> = HashMap::new();
    for (bi, b) in batches.iter().enumerate() {
        let c = b.column(0).as_any().downcast_ref::<StringArray>();
        let v = b.column(1).as_any().downcast_ref::<FixedSizeListArray>();
        if let (Some(c), Some(v)) = (c, v) {
            dim = v.value_length() as usize;
            for i in 0..b.num_rows() {
                index.insert(c.value(i).to_string(), (bi, i));
            }
        }
    }
    if index.is_empty() {
        return Err(FeatureError::NoEncoder {
            encoder: encoder.into(),
            known: known_encoders(store).await?,
        });
    }
    let mut out = Vec::with_capacity(ids.len() * dim);
    let mut missing = Vec::new();
    for id in ids {
        match index.get(id) {
            Some(&(bi, i)) => {
                let list = batches[bi]
                    .column(1)
                    .as_any()
                    .downcast_ref::<FixedSizeListArray>();
                if let Some(list) = list {
                    let row = list.value(i);
                    if let Some(f) = row.as_any().downcast_ref::<Float32Array>() {
                        out.extend_from_slice(f.values());
                    }
                }
            }
            None => missing.push(id.clone()),
        }
    }
    if let Some(example) = missing.first() {
        return Err(FeatureError::MissingVectors {
            split: split.into(),
            encoder: encoder.into(),
            what,
            count: missing.len(),
            example: example.clone(),
        });
    }
    Ok((dim, out))
}

async fn known_encoders(store: &Store) -> Result<String, FeatureError> {
    let r = sql::query(
        store,
        "SELECT DISTINCT encoder_id FROM embeddings ORDER BY encoder_id",
        &BTreeMap::new(),
    )
    .await?;
    let mut names = Vec::new();
    for b in &r.batches {
        if let Some(a) = b.column(0).as_any().downcast_ref::<StringArray>() {
            names.extend((0..a.len()).map(|i| a.value(i).to_string()));
        }
    }
    Ok(if names.is_empty() {
        "none yet".into()
    } else {
        names.join(", ")
    })
}

/// The row of `id` in `ids`, appending it when new: one matrix row per distinct id.
pub fn intern(rows: &mut HashMap<String, u32>, ids: &mut Vec<String>, id: &str) -> u32 {
    if let Some(r) = rows.get(id) {
        return *r;
    }
    let r = ids.len() as u32;
    ids.push(id.to_string());
    rows.insert(id.to_string(), r);
    r
}

/// Loads a named split with `encoder`'s vectors into a [`ComparisonSet`].
pub async fn load_split(
    store: &Store,
    split: &str,
    encoder: &str,
) -> Result<LoadedSplit, FeatureError> {
    let pairs = split_pairs(store, split).await?;
    let with_prompt = pairs.iter().filter(|p| p.prompt_id.is_some()).count();
    if with_prompt != 0 && with_prompt != pairs.len() {
        return Err(FeatureError::MixedContext {
            split: split.into(),
        });
    }
    let mut item_rows: HashMap<String, u32> = HashMap::new();
    let mut prompt_rows: HashMap<String, u32> = HashMap::new();
    let mut user_rows: HashMap<String, u32> = HashMap::new();
    let (mut item_ids, mut prompt_ids, mut user_ids) = (Vec::new(), Vec::new(), Vec::new());
    let mut comps = Vec::with_capacity(pairs.len());
    for p in &pairs {
        let user = intern(&mut user_rows, &mut user_ids, &p.user_id);
        let prompt = p
            .prompt_id
            .as_deref()
            .map(|id| intern(&mut prompt_rows, &mut prompt_ids, id));
        let left = intern(&mut item_rows, &mut item_ids, &p.left_id);
        let right = intern(&mut item_rows, &mut item_ids, &p.right_id);
        comps.push(Comparison {
            user,
            prompt,
            left,
            right,
            y: p.label,
        });
    }
    let (dx, items) = vectors(store, encoder, &item_ids, split, "items").await?;
    let (dp, prompts) = if prompt_ids.is_empty() {
        (0, Vec::new())
    } else {
        vectors(store, encoder, &prompt_ids, split, "prompts").await?
    };
    let set = ComparisonSet::new(dx, dp, items, prompts, user_ids, comps)?;
    Ok(LoadedSplit {
        set,
        item_ids,
        prompt_ids,
    })
}
