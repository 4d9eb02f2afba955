//! Keyed commits: new rows of a table with a key, committed so that two writers adding the
//! same key at the same moment cannot both store it.
//!
//! Lance rebases a plain `Append` over any other commit, so two writers that each checked a
//! key was absent would both add it. A keyed commit is instead an `Update` carrying an
//! `inserted_rows_filter` (a bloom filter of the keys it adds, over the table's key columns):
//! lance 14's conflict resolver refuses it, as a retryable conflict, when a commit landed
//! since its read version that added an overlapping key, or any other `Append` / `Update`
//! that does not say which keys it added. On that conflict the writer reads the keys the
//! newer commits added, leaves its own rows with those keys out, and tries again at the new
//! version (see [`StagedWriter`](super::StagedWriter), which runs the loop, and
//! [`COMMIT_TRIES`]).

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::{BooleanArray, RecordBatch};
use futures::TryStreamExt;
use lance::dataset::transaction::{Operation, UpdateMode};
use lance::dataset::write::merge_insert::inserted_rows::{
    KeyExistenceFilter, KeyExistenceFilterBuilder, KeyValue,
};
use lance::dataset::{InsertBuilder, WriteMode};
use lance::table::format::Fragment;
use lance::Dataset;

use super::{join_key, key_columns, lance_err, Store, StoreError, TableSchema};

/// The content-addressed tables: a row's key names its content, and a key stored once is
/// never stored again.
pub(crate) const SHARED: [&str; 3] = ["items", "prompts", "embeddings"];

/// How many times a keyed commit is tried before it gives up: each lost try means another
/// writer committed to the same table in the meantime.
pub(crate) const COMMIT_TRIES: usize = 8;

/// The keys a writer adds to one table, as the bloom filter lance carries in the commit.
#[derive(Clone)]
pub(crate) struct AddedKeys(KeyExistenceFilterBuilder);

impl Default for AddedKeys {
    fn default() -> Self {
        AddedKeys(KeyExistenceFilterBuilder::new(Vec::new()))
    }
}

impl AddedKeys {
    /// Adds one key (the key columns joined as [`join_key`] does).
    pub(crate) fn add(&mut self, key: String) {
        // Inserting into a bloom filter cannot fail (the result is lance's convention).
        let _ = self.0.insert(KeyValue::String(key));
    }

    /// The filter for a commit to `ds`: the bloom filter over the ids of the table's key
    /// columns (two writers' filters are compared only when these ids agree).
    pub(crate) fn filter(
        &self,
        ds: &Dataset,
        table: &str,
    ) -> Result<KeyExistenceFilter, StoreError> {
        let spec = TableSchema::get(table)?;
        let mut ids = Vec::with_capacity(spec.key.len());
        for c in &spec.key {
            let field = ds.schema().field(c).ok_or_else(|| StoreError::Batch {
                table: table.into(),
                message: format!("key column '{c}' is missing from the stored table"),
            })?;
            ids.push(field.id);
        }
        let mut f = self.0.build();
        f.field_ids = ids;
        Ok(f)
    }
}

/// The `Update` that adds `fragments` (removing `removed` and replacing `updated`, for an
/// owned scope), with the keys it adds.
pub(crate) fn keyed_update(
    new_fragments: Vec<Fragment>,
    updated_fragments: Vec<Fragment>,
    removed_fragment_ids: Vec<u64>,
    filter: KeyExistenceFilter,
) -> Operation {
    Operation::Update {
        removed_fragment_ids,
        updated_fragments,
        new_fragments,
        fields_modified: Vec::new(),
        compacted_sstables: Vec::new(),
        fields_for_preserving_frag_bitmap: Vec::new(),
        update_mode: Some(UpdateMode::RewriteRows),
        inserted_rows_filter: Some(filter),
        updated_fragment_offsets: None,
    }
}

/// Whether a failed commit lost to another writer's commit and may be tried again at the
/// newer version.
pub(crate) fn lost_to_another_writer(e: &lance::Error) -> bool {
    matches!(
        e,
        lance::Error::RetryableCommitConflict { .. } | lance::Error::CommitConflict { .. }
    )
}

/// The keys of the rows `latest` holds in fragments that `known` did not hold (all of them
/// when `known` is `None`), leaving out rows `scope` selects (an owned scope's rows are
/// replaced, so a key there does not count). These are the keys other writers added since
/// the version the writer checked its rows against.
pub(crate) async fn keys_added_since(
    known: Option<&Dataset>,
    latest: &Arc<Dataset>,
    table: &str,
    scope: Option<&str>,
) -> Result<HashSet<String>, StoreError> {
    let known_ids: HashSet<u64> = known
        .map(|k| k.fragments().iter().map(|f| f.id).collect())
        .unwrap_or_default();
    let fresh: Vec<Fragment> = latest
        .fragments()
        .iter()
        .filter(|f| !known_ids.contains(&f.id))
        .cloned()
        .collect();
    let mut out = HashSet::new();
    if fresh.is_empty() {
        return Ok(out);
    }
    let spec = TableSchema::get(table)?;
    let cols: Vec<&str> = spec.key.iter().map(String::as_str).collect();
    let mut scan = latest.scan();
    scan.with_fragments(fresh);
    scan.project(&cols).map_err(lance_err(table))?;
    if let Some(p) = scope {
        scan.filter(&format!("NOT ({p})"))
            .map_err(lance_err(table))?;
    }
    let mut stream = scan.try_into_stream().await.map_err(lance_err(table))?;
    while let Some(batch) = stream.try_next().await.map_err(lance_err(table))? {
        let arrays = key_columns(&batch, &cols)?;
        for i in 0..batch.num_rows() {
            out.insert(join_key(&arrays, i));
        }
    }
    Ok(out)
}

/// What [`leave_out`] did: the fragments to commit instead, and the rows left out.
pub(crate) struct LeftOut {
    pub fragments: Vec<Fragment>,
    pub dropped: Vec<RecordBatch>,
}

/// Rewrites the uncommitted `fragments` of `table` without the rows whose key is in `taken`.
/// When no row has such a key, the fragments come back unchanged (nothing is read but their
/// rows); otherwise the kept rows are written as new uncommitted fragments and the old
/// ones' files are removed where that is possible (on object storage `palpipe vacuum`
/// removes them).
pub(crate) async fn leave_out(
    store: &Store,
    latest: &Arc<Dataset>,
    table: &str,
    fragments: Vec<Fragment>,
    taken: &HashSet<String>,
) -> Result<LeftOut, StoreError> {
    if taken.is_empty() || fragments.is_empty() {
        return Ok(LeftOut {
            fragments,
            dropped: Vec::new(),
        });
    }
    let spec = TableSchema::get(table)?;
    let cols: Vec<&str> = spec.key.iter().map(String::as_str).collect();
    // Uncommitted fragments carry no id yet: give each a distinct one above every committed
    // fragment's, for this read only.
    let top = latest.fragments().iter().map(|f| f.id).max().unwrap_or(0);
    let reading: Vec<Fragment> = fragments
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut f = f.clone();
            f.id = top + 1 + i as u64;
            f
        })
        .collect();
    let mut scan = latest.scan();
    scan.with_fragments(reading);
    let mut stream = scan.try_into_stream().await.map_err(lance_err(table))?;
    let (mut kept, mut dropped) = (Vec::new(), Vec::new());
    while let Some(batch) = stream.try_next().await.map_err(lance_err(table))? {
        let arrays = key_columns(&batch, &cols)?;
        let keep: Vec<bool> = (0..batch.num_rows())
            .map(|i| !taken.contains(&join_key(&arrays, i)))
            .collect();
        let filter = |mask: Vec<bool>| {
            arrow::compute::filter_record_batch(&batch, &BooleanArray::from(mask)).map_err(|e| {
                StoreError::Batch {
                    table: table.into(),
                    message: e.to_string(),
                }
            })
        };
        let out = filter(keep.iter().map(|k| !k).collect())?;
        if out.num_rows() == 0 {
            kept.push(batch.clone());
            continue;
        }
        dropped.push(out);
        let k = filter(keep)?;
        if k.num_rows() > 0 {
            kept.push(k);
        }
    }
    if dropped.is_empty() {
        return Ok(LeftOut { fragments, dropped });
    }
    let rewritten = if kept.is_empty() {
        Vec::new()
    } else {
        let t = InsertBuilder::new(latest.clone())
            .with_params(&store.write_params(WriteMode::Append))
            .execute_uncommitted(kept)
            .await
            .map_err(lance_err(table))?;
        match t.operation {
            Operation::Append { fragments } => fragments,
            other => {
                return Err(StoreError::Batch {
                    table: table.into(),
                    message: format!("unexpected staged operation {}", other.name()),
                })
            }
        }
    };
    super::staged::remove_staged_files(store, table, &Operation::Append { fragments });
    Ok(LeftOut {
        fragments: rewritten,
        dropped,
    })
}

/// The error of a keyed commit that lost to other writers [`COMMIT_TRIES`] times in a row.
pub(crate) fn tries_spent(table: &str) -> StoreError {
    StoreError::Concurrent {
        table: table.into(),
        what: format!(
            "kept changing under this stage's commit: {COMMIT_TRIES} tries in a row, each lost to another writer's commit"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::batches;
    use crate::store::records::ItemRow;
    use lance::dataset::transaction::Transaction;
    use lance::dataset::CommitBuilder;

    fn items(ids: &[&str]) -> RecordBatch {
        let rows: Vec<ItemRow> = ids
            .iter()
            .map(|i| ItemRow {
                item_id: i.to_string(),
                kind: "text".into(),
                text: Some(i.to_string()),
                bytes: None,
                source: "t".into(),
                parent_id: None,
            })
            .collect();
        batches::items(&rows).unwrap()
    }

    /// A keyed commit of `ids` to `ds`'s table, read at `ds`'s version.
    async fn keyed(ds: &Arc<Dataset>, ids: &[&str]) -> lance::Result<Dataset> {
        let staged = InsertBuilder::new(ds.clone())
            .with_params(&lance::dataset::WriteParams {
                mode: WriteMode::Append,
                ..Default::default()
            })
            .execute_uncommitted(vec![items(ids)])
            .await?;
        let Operation::Append { fragments } = staged.operation else {
            panic!("an append was staged")
        };
        let mut keys = AddedKeys::default();
        for i in ids {
            keys.add(i.to_string());
        }
        let op = keyed_update(
            fragments,
            Vec::new(),
            Vec::new(),
            keys.filter(ds, "items").unwrap(),
        );
        CommitBuilder::new(ds.clone())
            .execute(Transaction::new(ds.version_id(), op, None))
            .await
    }

    /// What the keyed commit relies on: lance refuses, as a retryable conflict, a keyed
    /// commit over a newer one that added one of its keys, and lets one with other keys
    /// through; and a plain append landed since refuses it too (its keys are unknown).
    #[test]
    fn lance_refuses_a_keyed_commit_over_the_same_new_key() {
        let dir = tempfile::tempdir().unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let store = Store::open(dir.path()).unwrap();
                store.append("items", items(&["i0"])).await.unwrap();
                let read = Arc::new(store.dataset("items", None).await.unwrap().unwrap());
                keyed(&read, &["i1", "i2"]).await.unwrap();
                let e = keyed(&read, &["i3", "i2"]).await.unwrap_err();
                assert!(lost_to_another_writer(&e), "{e}");
                keyed(&read, &["i4", "i5"]).await.unwrap();
                // Every row once: the refused commit added nothing.
                assert_eq!(
                    store
                        .read("items", &[], None)
                        .await
                        .unwrap()
                        .iter()
                        .map(|b| b.num_rows())
                        .sum::<usize>(),
                    5
                );
                let read = Arc::new(store.dataset("items", None).await.unwrap().unwrap());
                let uri = store.uri("items");
                let plain = lance::dataset::Dataset::write(
                    arrow_array::RecordBatchIterator::new(
                        vec![Ok(items(&["i9"]))],
                        items(&[]).schema(),
                    ),
                    uri.as_str(),
                    Some(store.write_params(WriteMode::Append)),
                )
                .await
                .unwrap();
                assert!(plain.version_id() > read.version_id());
                let e = keyed(&read, &["i8"]).await.unwrap_err();
                assert!(lost_to_another_writer(&e), "{e}");
            });
    }
}
