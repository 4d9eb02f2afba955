//! Row types → Arrow record batches, always in the schema that `schemas/*.json` describes.
//!
//! Each builder collects columns in the file's order and hands them to
//! `RecordBatch::try_new` with the file's schema, so a column added to a file and not here
//! (or the other way round) fails loudly; the tests below build every table once.

use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::{
    ArrayRef, Float32Array, Int32Array, Int64Array, Int8Array, LargeBinaryArray, RecordBatch,
    StringArray,
};

use super::records::{EmbeddingRow, ItemRow, PairRow, PromptRow, UserRow};
use super::schema::TableSchema;
use super::StoreError;

/// A batch of `table` from its columns, in the order and of the types its schema file gives
/// (`dim`: the vector width, for `embeddings`).
///
/// # Errors
/// [`StoreError::Batch`] when the columns do not match the schema.
pub fn build(
    table: &str,
    dim: Option<usize>,
    cols: Vec<ArrayRef>,
) -> Result<RecordBatch, StoreError> {
    let schema = TableSchema::get(table)?.arrow(dim)?;
    RecordBatch::try_new(schema, cols).map_err(|e| StoreError::Batch {
        table: table.to_string(),
        message: e.to_string(),
    })
}

fn strs<'a>(it: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(it))
}

fn opt_strs<'a>(it: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(it))
}

pub fn items(rows: &[ItemRow]) -> Result<RecordBatch, StoreError> {
    build(
        "items",
        None,
        vec![
            strs(rows.iter().map(|r| r.item_id.as_str())),
            strs(rows.iter().map(|r| r.kind.as_str())),
            opt_strs(rows.iter().map(|r| r.text.as_deref())),
            Arc::new(LargeBinaryArray::from_iter(
                rows.iter().map(|r| r.bytes.as_deref()),
            )),
            strs(rows.iter().map(|r| r.source.as_str())),
            opt_strs(rows.iter().map(|r| r.parent_id.as_deref())),
        ],
    )
}

pub fn prompts(rows: &[PromptRow]) -> Result<RecordBatch, StoreError> {
    build(
        "prompts",
        None,
        vec![
            strs(rows.iter().map(|r| r.prompt_id.as_str())),
            strs(rows.iter().map(|r| r.text.as_str())),
            strs(rows.iter().map(|r| r.source.as_str())),
        ],
    )
}

pub fn pairs(rows: &[PairRow]) -> Result<RecordBatch, StoreError> {
    build(
        "pairs",
        None,
        vec![
            strs(rows.iter().map(|r| r.pair_id.as_str())),
            strs(rows.iter().map(|r| r.user_id.as_str())),
            opt_strs(rows.iter().map(|r| r.prompt_id.as_deref())),
            strs(rows.iter().map(|r| r.left_id.as_str())),
            strs(rows.iter().map(|r| r.right_id.as_str())),
            Arc::new(Int8Array::from_iter_values(rows.iter().map(|r| r.label))),
            strs(rows.iter().map(|r| r.dataset.as_str())),
            strs(rows.iter().map(|r| r.split.as_str())),
            opt_strs(rows.iter().map(|r| r.source_ref.as_deref())),
            Arc::new(Float32Array::from_iter_values(
                rows.iter().map(|r| r.weight),
            )),
        ],
    )
}

/// The inverse of [`pairs`]: the rows of a `pairs` batch (all columns read; a batch without
/// `weight`, from a table written before that column existed, reads as weight 1.0).
pub fn read_pairs(batch: &RecordBatch) -> Result<Vec<PairRow>, StoreError> {
    let bad = |c: &str| StoreError::Batch {
        table: "pairs".into(),
        message: format!("column '{c}' is missing or of the wrong type"),
    };
    let s = |c: &str| -> Result<&StringArray, StoreError> {
        batch
            .column_by_name(c)
            .and_then(|a| a.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| bad(c))
    };
    let label = batch
        .column_by_name("label")
        .and_then(|a| a.as_any().downcast_ref::<Int8Array>())
        .ok_or_else(|| bad("label"))?;
    let (id, user, prompt, left, right) = (
        s("pair_id")?,
        s("user_id")?,
        s("prompt_id")?,
        s("left_id")?,
        s("right_id")?,
    );
    let (dataset, split, sref) = (s("dataset")?, s("split")?, s("source_ref")?);
    let weight = match batch.column_by_name("weight") {
        None => None,
        Some(a) => Some(
            a.as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| bad("weight"))?,
        ),
    };
    let opt = |a: &StringArray, i: usize| {
        (!arrow_array::Array::is_null(a, i)).then(|| a.value(i).to_string())
    };
    Ok((0..batch.num_rows())
        .map(|i| PairRow {
            pair_id: id.value(i).to_string(),
            user_id: user.value(i).to_string(),
            prompt_id: opt(prompt, i),
            left_id: left.value(i).to_string(),
            right_id: right.value(i).to_string(),
            label: label.value(i),
            dataset: dataset.value(i).to_string(),
            split: split.value(i).to_string(),
            source_ref: opt(sref, i),
            weight: weight.map_or(1.0, |w| w.value(i)),
        })
        .collect())
}

pub fn users(rows: &[UserRow]) -> Result<RecordBatch, StoreError> {
    build(
        "users",
        None,
        vec![
            strs(rows.iter().map(|r| r.user_id.as_str())),
            strs(rows.iter().map(|r| r.dataset.as_str())),
            opt_strs(rows.iter().map(|r| r.group.as_deref())),
            strs(rows.iter().map(|r| r.role.as_str())),
        ],
    )
}

/// All rows must have the same width; an empty slice gives `None`.
pub fn embeddings(rows: &[EmbeddingRow]) -> Result<Option<RecordBatch>, StoreError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let dim = first.vector.len();
    let mut list = FixedSizeListBuilder::with_capacity(
        Float32Builder::with_capacity(rows.len() * dim),
        dim as i32,
        rows.len(),
    );
    for r in rows {
        if r.vector.len() != dim {
            return Err(StoreError::VectorDim {
                content_id: r.content_id.clone(),
                expected: dim,
                got: r.vector.len(),
            });
        }
        list.values().append_slice(&r.vector);
        list.append(true);
    }
    let list = list.finish();
    // The builder names its child "item" and marks it nullable, as the schema does.
    build(
        "embeddings",
        Some(dim),
        vec![
            strs(rows.iter().map(|r| r.content_id.as_str())),
            strs(rows.iter().map(|r| r.encoder_id.as_str())),
            Arc::new(list),
        ],
    )
    .map(Some)
}

/// A named split (SQL over the tables).
pub struct SplitRow<'a> {
    pub name: &'a str,
    pub sql: &'a str,
    pub pipeline: Option<&'a str>,
    pub created_ms: i64,
}

pub fn splits(rows: &[SplitRow<'_>]) -> Result<RecordBatch, StoreError> {
    build(
        "splits",
        None,
        vec![
            strs(rows.iter().map(|r| r.name)),
            strs(rows.iter().map(|r| r.sql)),
            opt_strs(rows.iter().map(|r| r.pipeline)),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.created_ms),
            )),
        ],
    )
}

/// One trained head, as registered in `models`.
#[derive(Debug, Clone)]
pub struct ModelRow {
    pub name: String,
    pub kind: String,
    pub k: i32,
    pub encoder_id: Option<String>,
    pub train_split: String,
    pub checkpoint: String,
    pub card_json: String,
    pub metrics_json: Option<String>,
    pub run_id: Option<String>,
    pub created_ms: i64,
}

pub fn models(rows: &[ModelRow]) -> Result<RecordBatch, StoreError> {
    build(
        "models",
        None,
        vec![
            strs(rows.iter().map(|r| r.name.as_str())),
            strs(rows.iter().map(|r| r.kind.as_str())),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.k))),
            opt_strs(rows.iter().map(|r| r.encoder_id.as_deref())),
            strs(rows.iter().map(|r| r.train_split.as_str())),
            strs(rows.iter().map(|r| r.checkpoint.as_str())),
            strs(rows.iter().map(|r| r.card_json.as_str())),
            opt_strs(rows.iter().map(|r| r.metrics_json.as_deref())),
            opt_strs(rows.iter().map(|r| r.run_id.as_deref())),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.created_ms),
            )),
        ],
    )
}

/// One pipeline run, as recorded in `runs`.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub run_id: String,
    pub pipeline: String,
    pub pipeline_file: Option<String>,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub outcome: String,
    pub error: Option<String>,
    pub stages_json: String,
    pub versions_before_json: String,
    pub versions_after_json: String,
}

pub fn runs(rows: &[RunRow]) -> Result<RecordBatch, StoreError> {
    build(
        "runs",
        None,
        vec![
            strs(rows.iter().map(|r| r.run_id.as_str())),
            strs(rows.iter().map(|r| r.pipeline.as_str())),
            opt_strs(rows.iter().map(|r| r.pipeline_file.as_deref())),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.started_ms),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.finished_ms),
            )),
            strs(rows.iter().map(|r| r.outcome.as_str())),
            opt_strs(rows.iter().map(|r| r.error.as_deref())),
            strs(rows.iter().map(|r| r.stages_json.as_str())),
            strs(rows.iter().map(|r| r.versions_before_json.as_str())),
            strs(rows.iter().map(|r| r.versions_after_json.as_str())),
        ],
    )
}

/// One enrolled user of a model, as recorded in `enrollments`.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentRow {
    pub model: String,
    pub user_id: String,
    /// The K fitted logits, a JSON array.
    pub logits_json: String,
    /// The user's offset δ of the ideal point, a JSON array (the `offset` estimator); `None`
    /// for a mixture-only fit.
    pub offset_json: Option<String>,
    pub comparisons: i32,
    pub held_out: i32,
    pub held_out_accuracy: Option<f64>,
    pub fingerprint: String,
    pub created_ms: i64,
}

pub fn enrollments(rows: &[EnrollmentRow]) -> Result<RecordBatch, StoreError> {
    build(
        "enrollments",
        None,
        vec![
            strs(rows.iter().map(|r| r.model.as_str())),
            strs(rows.iter().map(|r| r.user_id.as_str())),
            strs(rows.iter().map(|r| r.logits_json.as_str())),
            opt_strs(rows.iter().map(|r| r.offset_json.as_deref())),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.comparisons),
            )),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.held_out),
            )),
            Arc::new(arrow_array::Float64Array::from_iter(
                rows.iter().map(|r| r.held_out_accuracy),
            )),
            strs(rows.iter().map(|r| r.fingerprint.as_str())),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.created_ms),
            )),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builder_matches_its_schema_file() {
        let item = ItemRow {
            item_id: "a".into(),
            kind: "text".into(),
            text: Some("hi".into()),
            bytes: None,
            source: "t".into(),
            parent_id: None,
        };
        assert_eq!(items(&[item]).unwrap().num_rows(), 1);
        let p = PromptRow {
            prompt_id: "p".into(),
            text: "x".into(),
            source: "t".into(),
        };
        assert_eq!(prompts(&[p]).unwrap().num_rows(), 1);
        let pair = PairRow {
            pair_id: "x".into(),
            user_id: "u".into(),
            prompt_id: None,
            left_id: "a".into(),
            right_id: "b".into(),
            label: -1,
            dataset: "t".into(),
            split: "train".into(),
            source_ref: None,
            weight: 1.0,
        };
        assert_eq!(pairs(&[pair]).unwrap().num_rows(), 1);
        let u = UserRow {
            user_id: "u".into(),
            dataset: "t".into(),
            group: None,
            role: "seen".into(),
        };
        assert_eq!(users(&[u]).unwrap().num_rows(), 1);
        let e = EmbeddingRow {
            content_id: "a".into(),
            encoder_id: "e".into(),
            vector: vec![1.0, 0.0],
        };
        let b = embeddings(&[e]).unwrap().unwrap();
        assert_eq!(
            b.schema(),
            TableSchema::get("embeddings")
                .unwrap()
                .arrow(Some(2))
                .unwrap()
        );
        let s = SplitRow {
            name: "s",
            sql: "SELECT 1",
            pipeline: None,
            created_ms: 0,
        };
        assert_eq!(splits(&[s]).unwrap().num_rows(), 1);
        let m = ModelRow {
            name: "m".into(),
            kind: "pal-b".into(),
            k: 2,
            encoder_id: None,
            train_split: "t".into(),
            checkpoint: "c".into(),
            card_json: "{}".into(),
            metrics_json: None,
            run_id: None,
            created_ms: 0,
        };
        assert_eq!(models(&[m]).unwrap().num_rows(), 1);
        let r = RunRow {
            run_id: "r".into(),
            pipeline: "p".into(),
            pipeline_file: None,
            started_ms: 0,
            finished_ms: 1,
            outcome: "ok".into(),
            error: None,
            stages_json: "[]".into(),
            versions_before_json: "{}".into(),
            versions_after_json: "{}".into(),
        };
        assert_eq!(runs(&[r]).unwrap().num_rows(), 1);
        let e = EnrollmentRow {
            model: "m".into(),
            user_id: "u".into(),
            logits_json: "[0.5]".into(),
            offset_json: Some("[0.0, 1.0]".into()),
            comparisons: 8,
            held_out: 2,
            held_out_accuracy: Some(0.5),
            fingerprint: "f".into(),
            created_ms: 0,
        };
        assert_eq!(enrollments(&[e]).unwrap().num_rows(), 1);
    }

    #[test]
    fn vectors_of_two_widths_in_one_batch_are_refused() {
        let rows = vec![
            EmbeddingRow {
                content_id: "a".into(),
                encoder_id: "e".into(),
                vector: vec![1.0, 0.0],
            },
            EmbeddingRow {
                content_id: "b".into(),
                encoder_id: "e".into(),
                vector: vec![1.0],
            },
        ];
        let err = embeddings(&rows).unwrap_err().to_string();
        assert!(err.contains("'b'"), "{err}");
    }
}
