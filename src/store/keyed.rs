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
//! [`Backoff`], which spaces the tries).
//!
//! A writer that adds rows over several commits (the chunks of an embedding run, checked
//! against the cache once when the run starts) carries a [`KeysSeen`] from commit to
//! commit, so that each commit also leaves out keys other writers added between the cache's
//! read and the commit's own start.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// How long a commit keeps trying, in all, while other writers' commits win over it. Lance's
/// key filter is a fixed-size bloom filter, so two commits of a hundred keys or more
/// "overlap" almost surely and writers to one table take turns: the budget is time, not a
/// count, so that several writers committing often all get through.
pub(crate) const COMMIT_PATIENCE: Duration = Duration::from_secs(30);

/// The first wait after a lost commit; each further wait doubles, up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(20);
/// The longest single wait between two tries.
const MAX_WAIT: Duration = Duration::from_secs(2);

/// The waits between the tries of one commit: exponential, each drawn at random between half
/// and all of its step (so that writers that lost together do not try again together), until
/// [`COMMIT_PATIENCE`] has passed since the first try. The randomness comes from the operating
/// system, not from a pipeline's seed: it decides when a commit is tried, never what it holds.
pub(crate) struct Backoff {
    started: Instant,
    step: Duration,
    patience: Duration,
    /// The waits handed out so far, together (time spent, even if the clock says less).
    waited: Duration,
    /// Tries lost so far.
    pub lost: usize,
}

impl Backoff {
    /// The waits of a commit whose first try starts now.
    pub(crate) fn new() -> Backoff {
        Backoff::with_patience(COMMIT_PATIENCE)
    }

    fn with_patience(patience: Duration) -> Backoff {
        Backoff {
            started: Instant::now(),
            step: FIRST_WAIT,
            patience,
            waited: Duration::ZERO,
            lost: 0,
        }
    }

    /// After a lost try: the wait before the next one, or `None` when the patience is spent
    /// (the wait would end past it).
    pub(crate) fn next_wait(&mut self) -> Option<Duration> {
        use rand::Rng;
        self.lost += 1;
        let half = self.step / 2;
        let wait = half + rand::rng().random_range(Duration::ZERO..=half);
        self.step = (self.step * 2).min(MAX_WAIT);
        let spent = self.started.elapsed().max(self.waited);
        if spent + wait > self.patience {
            return None;
        }
        self.waited += wait;
        Some(wait)
    }

    /// Seconds since the first try.
    pub(crate) fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// After a lost try: waits as `backoff` says and returns the table's latest version, or
/// `None` when the patience is spent.
pub(crate) async fn after_lost_try(
    store: &Store,
    table: &str,
    backoff: &mut Backoff,
) -> Result<Option<Arc<Dataset>>, StoreError> {
    let Some(wait) = backoff.next_wait() else {
        return Ok(None);
    };
    tokio::time::sleep(wait).await;
    match store.dataset(table, None).await? {
        Some(ds) => Ok(Some(Arc::new(ds))),
        None => Err(StoreError::Concurrent {
            table: table.into(),
            what: "was removed by another writer while this commit was being tried".into(),
        }),
    }
}

/// What a writer has checked its rows' keys against, over one or more commits to a table:
/// the fragments whose keys it has seen (those of the version it checked its rows against,
/// those it read since, and its own commits'), and the keys other writers' rows in the
/// fragments read since hold. A row with one of those keys must not be added.
///
/// The keys taken are held as 128-bit digests ([`key_digest`]), 16 bytes each whatever the
/// key's length: a long-lived writer (`palpipe serve --write-back`) records every key it
/// writes, so the record grows with the vectors written, by the digest and the set's own
/// per-entry overhead (about 20–40 bytes in all), not with the keys' text.
#[derive(Debug, Clone, Default)]
pub struct KeysSeen {
    fragments: HashSet<u64>,
    taken: HashSet<u128>,
}

/// A key's 128-bit digest (the first 16 bytes of its BLAKE3 hash): among n distinct keys,
/// two share one with probability about n² / 2¹²⁹ (about 10⁻¹⁵ for a trillion keys).
fn key_digest(key: &str) -> u128 {
    let hash = blake3::hash(key.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&hash.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

impl KeysSeen {
    /// Every key stored in `ds` counts as checked (`None`: the table did not exist, so any
    /// row found later was added since).
    pub fn at(ds: Option<&Dataset>) -> KeysSeen {
        KeysSeen {
            fragments: ds
                .map(|d| d.fragments().iter().map(|f| f.id).collect())
                .unwrap_or_default(),
            taken: HashSet::new(),
        }
    }

    /// Whether another writer added `key` since the check.
    pub fn is_taken(&self, key: &str) -> bool {
        self.taken.contains(&key_digest(key))
    }

    /// Counts `keys` as taken: rows this writer stored itself and must not store again (the
    /// serve scorer, where a lookup can miss a vector the same process is writing back).
    pub(crate) fn take(&mut self, keys: impl IntoIterator<Item = String>) {
        self.taken.extend(keys.into_iter().map(|k| key_digest(&k)));
    }

    /// Forgets which fragments were seen (the table was created anew by another writer: its
    /// fragment ids start again), keeping the keys taken.
    pub(crate) fn forget_fragments(&mut self) {
        self.fragments.clear();
    }

    /// Reads the keys of the fragments of `latest` not seen yet (leaving out rows `scope`
    /// selects: an owned scope's rows are replaced, so a key there does not count), adds
    /// them to the keys taken and returns those that were not taken before.
    pub(crate) async fn catch_up(
        &mut self,
        latest: &Arc<Dataset>,
        table: &str,
        scope: Option<&str>,
    ) -> Result<HashSet<String>, StoreError> {
        let fresh: Vec<Fragment> = latest
            .fragments()
            .iter()
            .filter(|f| !self.fragments.contains(&f.id))
            .cloned()
            .collect();
        let mut out = HashSet::new();
        if fresh.is_empty() {
            return Ok(out);
        }
        let ids: Vec<u64> = fresh.iter().map(|f| f.id).collect();
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
                let key = join_key(&arrays, i);
                if self.taken.insert(key_digest(&key)) {
                    out.insert(key);
                }
            }
        }
        self.fragments.extend(ids);
        Ok(out)
    }

    /// Counts the fragments this writer's commit `done` added (those holding the data files
    /// of `staged`) as seen: their keys are the writer's own.
    pub(crate) fn own(&mut self, done: &Dataset, staged: &[Fragment]) {
        let files: HashSet<&str> = staged
            .iter()
            .flat_map(|f| f.files.iter().map(|d| d.path.as_str()))
            .collect();
        for f in done.fragments().iter() {
            if f.files.iter().any(|d| files.contains(d.path.as_str())) {
                self.fragments.insert(f.id);
            }
        }
    }
}

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

/// The rows of uncommitted `fragments` of a table, read through `latest` (a version of that
/// table).
pub(crate) async fn staged_rows(
    latest: &Dataset,
    table: &str,
    fragments: &[Fragment],
) -> Result<lance::dataset::scanner::DatasetRecordBatchStream, StoreError> {
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
    scan.try_into_stream().await.map_err(lance_err(table))
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
    let mut stream = staged_rows(latest, table, &fragments).await?;
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

/// The error of a keyed commit that kept losing to other writers for [`COMMIT_PATIENCE`].
pub(crate) fn tries_spent(table: &str, backoff: &Backoff) -> StoreError {
    StoreError::Concurrent {
        table: table.into(),
        what: format!(
            "kept changing under this commit: {} tries over {:.0} s, each lost to another writer's commit",
            backoff.lost,
            backoff.elapsed_s()
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

    /// The waits double from 10-20 ms up to 1-2 s each, drawn at random within each step,
    /// and stop once the next would pass the patience: about 30 s in all, some two dozen
    /// tries rather than a handful.
    #[test]
    fn the_waits_grow_and_stop_within_the_patience() {
        let waits = |patience| {
            let mut b = Backoff::with_patience(patience);
            let mut out = Vec::new();
            while let Some(w) = b.next_wait() {
                out.push(w);
                assert!(out.len() < 1000, "never stops");
            }
            out
        };
        let a = waits(Duration::from_secs(30));
        let total: Duration = a.iter().sum();
        assert!(total <= Duration::from_secs(30), "{total:?}");
        assert!(total > Duration::from_secs(28), "{total:?}");
        let mut step = Duration::from_millis(20);
        for w in &a {
            assert!(
                *w >= step / 2 && *w <= step,
                "{w:?} outside [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(Duration::from_secs(2));
        }
        // 7 growing steps (1.27 s to 2.54 s in all), then 1-2 s each: 20 to 35 waits.
        assert!((20..=35).contains(&a.len()), "{}", a.len());
        // Two writers that lost together draw different waits.
        assert_ne!(a, waits(Duration::from_secs(30)));
        // No patience, no wait.
        assert!(waits(Duration::ZERO).is_empty());
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
