//! Upgrades of tables written by earlier versions of palpipe, made before anything writes to
//! them, so that a re-run on an old store ends as a fresh run on a new one.
//!
//! Each upgrade adds one column ([`ADDED`]) through Lance's add-columns, as one new version;
//! no row is rewritten:
//! - `pairs.weight` (per-comparison weights in the PAL loss): 1.0 on every row, what every
//!   stage that wrote those rows gives when the data has no weight;
//! - `enrollments.offset_json` (the `offset` estimator's δ of an enrolled user): null on
//!   every row, what a mixture-only fit writes.
//!
//! `palpipe run` (and `ingest`) upgrades `pairs` before its first stage and says so on stderr;
//! the writers upgrade too (silently: a run has done it already), so no write can meet the
//! old schema. Two writers upgrading one table at once (on object storage) both go on: the
//! one whose commit loses finds the column added. Readers do not need the upgrade: a `pairs`
//! batch without `weight` reads as weight 1.0 ([`super::batches::read_pairs`], the PAL
//! loader), an `enrollments` row without `offset_json` as no offset (`src/serve/scorer.rs`),
//! so read-only commands leave an old store as it is.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use lance::dataset::{BatchUDF, NewColumnTransform};

use super::{lance_err, Store, StoreError};

/// The column the upgrade adds to `pairs`.
pub const PAIRS_WEIGHT: &str = "weight";
/// The column the upgrade adds to `enrollments`.
pub const ENROLLMENTS_OFFSET: &str = "offset_json";

/// One column an earlier palpipe did not write, and what the rows it wrote hold in it.
pub struct AddedColumn {
    pub table: &'static str,
    pub column: &'static str,
    data_type: DataType,
    nullable: bool,
    /// A column every version of the table has: read only for each batch's row count.
    read: &'static str,
    /// What the column was added for, and the value old rows get, for the message.
    why: &'static str,
    value: &'static str,
    fill: fn(usize) -> ArrayRef,
}

/// Every column added since the first stores, in the order they were added.
pub const ADDED: &[AddedColumn] = &[
    AddedColumn {
        table: "pairs",
        column: PAIRS_WEIGHT,
        data_type: DataType::Float32,
        nullable: false,
        read: "label",
        why: "per-comparison weights",
        value: "1.0",
        fill: |n| Arc::new(Float32Array::from(vec![1.0f32; n])),
    },
    AddedColumn {
        table: "enrollments",
        column: ENROLLMENTS_OFFSET,
        data_type: DataType::Utf8,
        nullable: true,
        read: "user_id",
        why: "enrolled users' offsets",
        value: "null",
        fill: |n| Arc::new(StringArray::from(vec![None::<&str>; n])),
    },
];

/// What one upgrade did, for the message that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgraded {
    pub table: String,
    pub column: String,
    pub why: String,
    pub value: String,
    pub rows: usize,
    pub version: u64,
}

impl std::fmt::Display for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "table '{}' was written before {}: added column '{}' = {} to its {} rows (version {})",
            self.table, self.why, self.column, self.value, self.rows, self.version
        )
    }
}

/// Brings `table` to the current schema when an earlier version wrote it: adds each
/// column of [`ADDED`] it lacks. Returns what the last addition did when one committed a
/// version (`None`: nothing to do, or the table does not exist yet).
pub async fn upgrade(store: &Store, table: &str) -> Result<Option<Upgraded>, StoreError> {
    let mut done = None;
    for added in ADDED.iter().filter(|a| a.table == table) {
        if let Some(u) = add_column(store, added).await? {
            done = Some(u);
        }
    }
    Ok(done)
}

/// Adds `added` to its table when the table exists without it (one commit).
async fn add_column(store: &Store, added: &AddedColumn) -> Result<Option<Upgraded>, StoreError> {
    let (table, column) = (added.table, added.column);
    let Some(mut ds) = store.dataset(table, None).await? else {
        return Ok(None);
    };
    if ds.schema().field(column).is_some() {
        return Ok(None);
    }
    super::race_hook::pause("upgrade-checked").await;
    let rows = ds.count_rows(None).await.map_err(lance_err(table))?;
    let out = Arc::new(Schema::new(vec![Field::new(
        column,
        added.data_type.clone(),
        added.nullable,
    )]));
    let schema = out.clone();
    let fill = added.fill;
    let udf = BatchUDF {
        mapper: Box::new(move |batch: &RecordBatch| {
            let col = fill(batch.num_rows());
            Ok(RecordBatch::try_new(schema.clone(), vec![col])?)
        }),
        output_schema: out,
        result_checkpoint: None,
    };
    // The UDF reads one small column only to know each batch's row count. Boxed: Lance's
    // add-columns future is deep, and every writer awaits this one.
    let result = Box::pin(ds.add_columns(
        NewColumnTransform::BatchUDF(udf),
        Some(vec![added.read.to_string()]),
        None,
    ))
    .await;
    if let Err(e) = result {
        // Another writer (on object storage, where no lock keeps two runs apart) may have
        // upgraded the table since it was read: then there is nothing left to do.
        if let Some(now) = store.dataset(table, None).await? {
            if now.schema().field(column).is_some() {
                return Ok(None);
            }
        }
        return Err(match e {
            lance::Error::CommitConflict { .. }
            | lance::Error::RetryableCommitConflict { .. }
            | lance::Error::IncompatibleTransaction { .. } => StoreError::Concurrent {
                table: table.into(),
                what: format!(
                    "was changed by another writer while this run added its column '{column}'"
                ),
            },
            other => lance_err(table)(other),
        });
    }
    let version = ds.version_id();
    store.record_commit(table, version);
    Ok(Some(Upgraded {
        table: table.to_string(),
        column: column.to_string(),
        why: added.why.to_string(),
        value: added.value.to_string(),
        rows,
        version,
    }))
}
