//! From store tables to the PAL part's in-memory [`ComparisonSet`]: a named split (SQL over
//! `pairs`) joined with one encoder's vectors in `embeddings`.
//!
//! Each distinct item and prompt is loaded once and comparisons hold indices into those
//! matrices, so memory is the size of the vectors the split needs, not a copy per pair.
//!
//! Canonical order: a split's comparisons come out sorted by `pair_id` (then by their
//! content), and users, items and prompts get their rows in id order, so what training,
//! evaluation and adaptation see (and every seeded shuffle over it) does not depend on the
//! order rows happen to be stored in, nor on how many threads wrote them.

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
    #[error("split '{split}': weight {weight} is not a positive finite number\nhint: a split's 'weight' column weighs each comparison in the loss; select the stored pairs.weight or leave the column out (every comparison then weighs 1.0)")]
    BadWeight { split: String, weight: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pal(#[from] crate::pal::PalError),
}

/// One comparison as the split query returns it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PairRef {
    /// The pair's id, when the split's query selects it (the first sort key).
    pub pair_id: Option<String>,
    pub user_id: String,
    pub prompt_id: Option<String>,
    pub left_id: String,
    pub right_id: String,
    pub label: i8,
    /// The comparison's weight in the loss: the split's `weight` column, 1.0 when the query
    /// does not select one (a table written before the column existed, or a query that
    /// names its columns without it).
    pub weight: crate::pal::Weight,
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

/// The comparisons a named split selects, in canonical order (see [`canonical_order`]).
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
        // Columns a split's query need not select.
        let optional = |c: &str, ty: &DataType| -> Result<_, FeatureError> {
            b.column_by_name(c)
                .map(|a| cast(a, ty))
                .transpose()
                .map_err(|e| FeatureError::Store(StoreError::Sql(e.to_string())))
        };
        let weights = optional("weight", &DataType::Float32)?;
        let weights = weights
            .as_ref()
            .and_then(|a| a.as_any().downcast_ref::<Float32Array>());
        let ids = optional("pair_id", &DataType::Utf8)?;
        let ids = ids
            .as_ref()
            .and_then(|a| a.as_any().downcast_ref::<StringArray>());
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
            let weight = match weights {
                None => 1.0,
                Some(w) if w.is_null(i) => {
                    return Err(FeatureError::BadWeight {
                        split: name.into(),
                        weight: "null".into(),
                    })
                }
                Some(w) => w.value(i),
            };
            if !(weight.is_finite() && weight > 0.0) {
                return Err(FeatureError::BadWeight {
                    split: name.into(),
                    weight: weight.to_string(),
                });
            }
            out.push(PairRef {
                pair_id: ids.and_then(|a| (!a.is_null(i)).then(|| a.value(i).to_string())),
                user_id: u.value(i).to_string(),
                prompt_id: (!p.is_null(i)).then(|| p.value(i).to_string()),
                left_id: l.value(i).to_string(),
                right_id: r.value(i).to_string(),
                label: label as i8,
                weight: crate::pal::Weight(weight),
            });
        }
    }
    if out.is_empty() {
        return Err(FeatureError::EmptySplit(name.to_string()));
    }
    canonical_order(&mut out);
    Ok(out)
}

/// Sorts comparisons by `pair_id`, then user, prompt, items and label: a total order on
/// what a comparison holds, so any two orders of the same rows end up the same.
pub fn canonical_order(pairs: &mut [PairRef]) {
    pairs.sort_unstable();
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

/// Comparisons as rows into sorted id lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// Distinct user ids, sorted: user row r is `user_ids[r]`.
    pub user_ids: Vec<String>,
    /// Distinct item ids (left and right), sorted.
    pub item_ids: Vec<String>,
    /// Distinct prompt ids, sorted (empty when no comparison has one).
    pub prompt_ids: Vec<String>,
    /// One per pair, in the pairs' order.
    pub comps: Vec<Comparison>,
}

/// Gives users, items and prompts their rows in id order and turns each pair into a
/// [`Comparison`] over those rows. With pairs in [`canonical_order`], the result depends on
/// the set of pairs only.
pub fn index_pairs(pairs: &[PairRef]) -> Indexed {
    fn rows<'a>(ids: impl Iterator<Item = &'a str>) -> (Vec<String>, HashMap<&'a str, u32>) {
        let sorted: std::collections::BTreeSet<&str> = ids.collect();
        let map = sorted
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i as u32))
            .collect();
        (sorted.into_iter().map(str::to_string).collect(), map)
    }
    let (user_ids, users) = rows(pairs.iter().map(|p| p.user_id.as_str()));
    let (item_ids, items) = rows(
        pairs
            .iter()
            .flat_map(|p| [p.left_id.as_str(), p.right_id.as_str()]),
    );
    let (prompt_ids, prompts) = rows(pairs.iter().filter_map(|p| p.prompt_id.as_deref()));
    let comps = pairs
        .iter()
        .map(|p| Comparison {
            user: users[p.user_id.as_str()],
            prompt: p.prompt_id.as_deref().map(|id| prompts[id]),
            left: items[p.left_id.as_str()],
            right: items[p.right_id.as_str()],
            y: p.label,
            weight: p.weight,
        })
        .collect();
    Indexed {
        user_ids,
        item_ids,
        prompt_ids,
        comps,
    }
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
    let Indexed {
        user_ids,
        item_ids,
        prompt_ids,
        comps,
    } = index_pairs(&pairs);
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;

    /// 40 comparisons by 5 users over 12 items and 4 prompts, every third without a pair id
    /// (a split query need not select it), ids deliberately not in insertion order.
    fn pairs() -> Vec<PairRef> {
        (0..40u32)
            .map(|i| PairRef {
                pair_id: (i % 3 != 0).then(|| format!("p{:02}", (i * 7) % 40)),
                user_id: format!("user-{}", (i * 3) % 5),
                prompt_id: Some(format!("prompt-{}", (i * 5) % 4)),
                left_id: format!("item-{:02}", (i * 5) % 12),
                right_id: format!("item-{:02}", (i * 5 + 7) % 12),
                label: if i % 2 == 0 { 1 } else { -1 },
                weight: crate::pal::Weight::ONE,
            })
            .collect()
    }

    #[test]
    fn training_data_does_not_depend_on_the_order_rows_come_in() {
        let original = pairs();
        let mut a = original.clone();
        canonical_order(&mut a);
        let want = index_pairs(&a);
        for seed in 0..5 {
            let mut shuffled = original.clone();
            shuffled.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            assert_ne!(shuffled, original, "seed {seed} left the rows in place");
            canonical_order(&mut shuffled);
            assert_eq!(index_pairs(&shuffled), want, "seed {seed}");
        }

        // Rows are ids in sorted order, computed here without the code under test.
        let sorted = |f: &dyn Fn(&PairRef) -> Vec<String>| -> Vec<String> {
            let set: std::collections::BTreeSet<String> = original.iter().flat_map(f).collect();
            set.into_iter().collect()
        };
        assert_eq!(want.user_ids, sorted(&|p| vec![p.user_id.clone()]));
        assert_eq!(
            want.item_ids,
            sorted(&|p| vec![p.left_id.clone(), p.right_id.clone()])
        );
        assert_eq!(
            want.prompt_ids,
            sorted(&|p| p.prompt_id.iter().cloned().collect())
        );
        assert_eq!(want.user_ids.len(), 5);
        assert_eq!(want.item_ids.len(), 12);

        // Comparisons come in pair-id order (no id first), each pointing back at its row.
        let mut by_id = original.clone();
        by_id.sort_by(|x, y| {
            (
                &x.pair_id,
                &x.user_id,
                &x.prompt_id,
                &x.left_id,
                &x.right_id,
                x.label,
            )
                .cmp(&(
                    &y.pair_id,
                    &y.user_id,
                    &y.prompt_id,
                    &y.left_id,
                    &y.right_id,
                    y.label,
                ))
        });
        assert!(by_id[0].pair_id.is_none() && by_id[39].pair_id.is_some());
        assert_eq!(want.comps.len(), by_id.len());
        for (c, p) in want.comps.iter().zip(&by_id) {
            assert_eq!(want.user_ids[c.user as usize], p.user_id);
            assert_eq!(want.item_ids[c.left as usize], p.left_id);
            assert_eq!(want.item_ids[c.right as usize], p.right_id);
            assert_eq!(
                c.prompt.map(|r| want.prompt_ids[r as usize].clone()),
                p.prompt_id
            );
            assert_eq!(c.y, p.label);
        }
    }
}
