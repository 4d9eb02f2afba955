//! Upgrades of tables written by earlier versions of palpipe, made before anything writes to
//! them, so that a re-run on an old store ends as a fresh run on a new one.
//!
//! One so far: `pairs.weight` (per-comparison weights in the PAL loss). A `pairs` table
//! without it gets the column through Lance's add-columns, 1.0 on every row (what every stage
//! that wrote those rows gives when the data has no weight), as one new version; no row is
//! rewritten. `palpipe run` (and `ingest`) upgrades before its first stage and says so on
//! stderr; the writers upgrade too (silently: a run has done it already), so no write can
//! meet the old schema. Two writers upgrading one table at once (on object storage) both go
//! on: the one whose commit loses finds the column added. Readers do not need the upgrade: a
//! `pairs` batch without `weight` reads as weight 1.0 ([`super::batches::read_pairs`], the
//! PAL loader), so read-only commands leave an old store as it is.

use std::sync::Arc;

use arrow_array::{Float32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use lance::dataset::{BatchUDF, NewColumnTransform};

use super::{lance_err, Store, StoreError};

/// The column the upgrade adds to `pairs`.
pub const PAIRS_WEIGHT: &str = "weight";

/// What one upgrade did, for the message that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgraded {
    pub table: String,
    pub column: String,
    pub rows: usize,
    pub version: u64,
}

impl std::fmt::Display for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "table '{}' was written before per-comparison weights: added column '{}' = 1.0 to its {} rows (version {})",
            self.table, self.column, self.rows, self.version
        )
    }
}

/// Brings `table` to the current schema when an earlier version wrote it: today, adds
/// `pairs.weight` = 1.0. Returns what it did when it committed a version (`None`: nothing
/// to do, or the table does not exist yet).
pub async fn upgrade(store: &Store, table: &str) -> Result<Option<Upgraded>, StoreError> {
    if table != "pairs" {
        return Ok(None);
    }
    let Some(mut ds) = store.dataset(table, None).await? else {
        return Ok(None);
    };
    if ds.schema().field(PAIRS_WEIGHT).is_some() {
        return Ok(None);
    }
    super::race_hook::pause("upgrade-checked").await;
    let rows = ds.count_rows(None).await.map_err(lance_err(table))?;
    let out = Arc::new(Schema::new(vec![Field::new(
        PAIRS_WEIGHT,
        DataType::Float32,
        false,
    )]));
    let schema = out.clone();
    let ones = BatchUDF {
        mapper: Box::new(move |batch: &RecordBatch| {
            let w = Float32Array::from(vec![1.0f32; batch.num_rows()]);
            Ok(RecordBatch::try_new(schema.clone(), vec![Arc::new(w)])?)
        }),
        output_schema: out,
        result_checkpoint: None,
    };
    // The UDF reads one small column only to know each batch's row count. Boxed: Lance's
    // add-columns future is deep, and every writer awaits this one.
    let added = Box::pin(ds.add_columns(
        NewColumnTransform::BatchUDF(ones),
        Some(vec!["label".to_string()]),
        None,
    ))
    .await;
    if let Err(e) = added {
        // Another writer (on object storage, where no lock keeps two runs apart) may have
        // upgraded the table since it was read: then there is nothing left to do.
        if let Some(now) = store.dataset(table, None).await? {
            if now.schema().field(PAIRS_WEIGHT).is_some() {
                return Ok(None);
            }
        }
        return Err(match e {
            lance::Error::CommitConflict { .. }
            | lance::Error::RetryableCommitConflict { .. }
            | lance::Error::IncompatibleTransaction { .. } => StoreError::Concurrent {
                table: table.into(),
                what: format!(
                    "was changed by another writer while this run added its column '{PAIRS_WEIGHT}'"
                ),
            },
            other => lance_err(table)(other),
        });
    }
    let version = ds.version_id();
    store.record_commit(table, version);
    Ok(Some(Upgraded {
        table: table.to_string(),
        column: PAIRS_WEIGHT.to_string(),
        rows,
        version,
    }))
}
