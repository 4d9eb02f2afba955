//! Staged writes: how a stage's rows reach the store in one commit per table.
//!
//! A [`StagedWriter`] writes each chunk a stage hands it as uncommitted Lance fragments (so a
//! streaming stage keeps only a few chunks in memory), and commits every table once, when the
//! stage calls [`StagedWriter::commit`]. A stage that fails before then leaves no trace in any
//! table's history, and another writer's commits in the meantime are untouched.
//!
//! Two kinds of table, two rules:
//! - **shared** tables (`items`, `prompts`, `embeddings`) are content-addressed: a row whose
//!   key is stored already adds nothing, nothing is ever removed;
//! - **owned** scopes (a stage's `dataset` in `pairs` and `users`, a model's row in `models`):
//!   the rows a predicate selects belong to the stage, and its new output replaces them in one
//!   Lance `Update` commit (the scope's deletion and the new fragments together). When the new
//!   output equals the stored scope row for row, nothing is committed, so re-running an
//!   unchanged stage leaves every version as it was.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use arrow_array::RecordBatch;
use futures::TryStreamExt;
use lance::dataset::transaction::{Operation, Transaction, UpdateMode};
use lance::dataset::{CommitBuilder, DeleteBuilder, InsertBuilder, WriteMode};
use lance::Dataset;

use super::{
    batches, check_vector_width, commit_err, join_key, key_columns, lance_err, records, sql_str,
    Store, StoreError, TableSchema, WriteStats,
};

/// The order tables are committed in: content first, so a pair never names an item that is
/// not stored yet.
const COMMIT_ORDER: [&str; 8] = [
    "items",
    "prompts",
    "embeddings",
    "users",
    "pairs",
    "splits",
    "models",
    "runs",
];

/// An order-independent digest of a set of rows: the count and the wrapping sum of each row's
/// blake3. Two scopes with equal digests hold the same rows (as a multiset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RowDigest {
    rows: u64,
    sum: [u64; 4],
}

impl RowDigest {
    /// The digest of two sets of rows together.
    fn merge(&mut self, other: RowDigest) {
        self.rows += other.rows;
        for (slot, part) in self.sum.iter_mut().zip(other.sum) {
            *slot = slot.wrapping_add(part);
        }
    }

    /// Adds every row of `batch`, its columns taken in name order, each cell as Arrow
    /// displays it (nulls as a marker no value can take).
    fn add(&mut self, batch: &RecordBatch, table: &str) -> Result<(), StoreError> {
        let options = arrow::util::display::FormatOptions::new().with_null("\u{0}null\u{0}");
        let schema = batch.schema();
        let mut order: Vec<usize> = (0..batch.num_columns()).collect();
        order.sort_by(|a, b| schema.field(*a).name().cmp(schema.field(*b).name()));
        let formatters = order
            .iter()
            .map(|&i| {
                arrow::util::display::ArrayFormatter::try_new(batch.column(i).as_ref(), &options)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Batch {
                table: table.into(),
                message: e.to_string(),
            })?;
        for row in 0..batch.num_rows() {
            let mut h = HashWriter(blake3::Hasher::new());
            for f in &formatters {
                // Each cell's text straight into the hasher (no string per cell).
                std::fmt::Write::write_fmt(&mut h, format_args!("{}", f.value(row))).map_err(
                    |e| StoreError::Batch {
                        table: table.into(),
                        message: e.to_string(),
                    },
                )?;
                h.0.update(&[0x1f]);
            }
            let h = h.0;
            let bytes = h.finalize();
            for (slot, part) in self.sum.iter_mut().zip(bytes.as_bytes().chunks_exact(8)) {
                let mut word = [0u8; 8];
                word.copy_from_slice(part);
                *slot = slot.wrapping_add(u64::from_le_bytes(word));
            }
            self.rows += 1;
        }
        Ok(())
    }
}

/// A key as 128 bits of its blake3: 16 bytes per key held, whatever the key's length.
fn key_digest(key: &str) -> u128 {
    let mut k = [0u8; 16];
    k.copy_from_slice(&blake3::hash(key.as_bytes()).as_bytes()[..16]);
    u128::from_le_bytes(k)
}

/// Hashes a [`key_digest`] by taking its low bits: it is uniform already.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, k: u128) {
        self.0 = k as u64;
    }
}

/// A set of [`key_digest`]s.
type KeySet = HashSet<u128, BuildHasherDefault<DigestHasher>>;

/// Text written into a blake3 hasher.
struct HashWriter(blake3::Hasher);

impl std::fmt::Write for HashWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// What a stage has staged for one table.
struct TableStage {
    /// The predicate of the rows the stage owns; `None` for a shared, content-addressed table.
    scope: Option<String>,
    /// Keys a new row must not take: for a shared table every stored key, for an owned scope
    /// the keys stored outside it; and the keys staged so far (unless the stage's rows come
    /// unique, see [`StagedWriter::rows_arrive_unique`]).
    keys: KeySet,
    /// The table at the version the stage first touched it (`None`: it did not exist).
    base: Option<Arc<Dataset>>,
    /// The uncommitted write: an `Append` (or, for a table that does not exist yet, the
    /// `Overwrite` that creates it) whose fragments grow with every chunk.
    staged: Option<Transaction>,
    /// Writes under way, oldest first: their fragments join `staged` in this order.
    pending: VecDeque<PendingWrite>,
    digest: RowDigest,
    stats: WriteStats,
}

/// A chunk being written as uncommitted fragments (and, for an owned scope, its digest).
type PendingWrite = tokio::task::JoinHandle<Result<(Transaction, Option<RowDigest>), StoreError>>;

/// Chunk writes under way per table at once: while Lance encodes one chunk, the next one is
/// encoded too (on another core), and the stage's reader goes on.
const WRITES_IN_FLIGHT: usize = 2;

/// Writes a stage's rows as uncommitted fragments and commits each table once at the end.
/// See the module documentation for the shared and owned rules.
pub struct StagedWriter<'a> {
    store: &'a Store,
    tables: BTreeMap<String, TableStage>,
    /// Whether staged keys are remembered, to leave out a later row with the same key.
    remember_staged: bool,
}

impl<'a> StagedWriter<'a> {
    /// A writer whose every table is shared (content-addressed) until [`StagedWriter::own`]
    /// says otherwise.
    pub fn new(store: &'a Store) -> StagedWriter<'a> {
        StagedWriter {
            store,
            tables: BTreeMap::new(),
            remember_staged: true,
        }
    }

    /// Says that the stage never hands the same key twice (its reader de-duplicates), so
    /// the writer need not remember the keys it staged: its memory then holds only the keys
    /// stored before the stage, not one more per row written.
    pub fn rows_arrive_unique(&mut self) {
        self.remember_staged = false;
    }

    /// A writer for an ingest-like stage that owns `dataset`: its rows of `pairs` and `users`
    /// are replaced by what it writes; items, prompts and embeddings stay shared.
    pub async fn owning_dataset(
        store: &'a Store,
        dataset: &str,
    ) -> Result<StagedWriter<'a>, StoreError> {
        let mut w = StagedWriter::new(store);
        let predicate = format!("dataset = {}", sql_str(dataset));
        w.own("pairs", &predicate).await?;
        w.own("users", &predicate).await?;
        Ok(w)
    }

    /// Declares that the rows of `table` that `predicate` selects belong to this stage: on
    /// commit they are replaced by the rows staged for `table` (by none, when none are).
    /// Call before staging rows for `table`.
    pub async fn own(&mut self, table: &str, predicate: &str) -> Result<(), StoreError> {
        // Keys taken before the scope was known would count the scope's own rows as present
        // elsewhere, and its deletion would then lose them.
        if self.tables.contains_key(table) {
            return Err(StoreError::Batch {
                table: table.into(),
                message: "a scope must be owned before any of the table's rows are staged".into(),
            });
        }
        let stage = self.touch(table, Some(predicate.to_string())).await?;
        stage.scope = Some(predicate.to_string());
        Ok(())
    }

    /// The stage record of `table`, made on first use: the base version and the keys taken.
    async fn touch(
        &mut self,
        table: &str,
        scope: Option<String>,
    ) -> Result<&mut TableStage, StoreError> {
        if !self.tables.contains_key(table) {
            let spec = TableSchema::get(table)?;
            // A table an earlier version wrote gets today's schema before rows are staged.
            super::migrate::upgrade(self.store, table).await?;
            let base = self.store.dataset(table, None).await?.map(Arc::new);
            let cols: Vec<&str> = spec.key.iter().map(String::as_str).collect();
            let outside = scope.as_ref().map(|p| format!("NOT ({p})"));
            let mut keys = KeySet::default();
            if base.is_some() {
                for batch in self.store.read(table, &cols, outside.as_deref()).await? {
                    let arrays = key_columns(&batch, &cols)?;
                    for i in 0..batch.num_rows() {
                        keys.insert(key_digest(&join_key(&arrays, i)));
                    }
                }
            }
            self.tables.insert(
                table.to_string(),
                TableStage {
                    scope,
                    keys,
                    base,
                    staged: None,
                    pending: VecDeque::new(),
                    digest: RowDigest::default(),
                    stats: WriteStats::default(),
                },
            );
        }
        Ok(self.tables.get_mut(table).expect("inserted above"))
    }

    /// Stages the rows of `batch` whose key is not taken (see [`TableStage::keys`]) as
    /// uncommitted fragments of `table`. The write runs as a task, up to
    /// `WRITES_IN_FLIGHT` per table at once; their fragments join the table's in the order
    /// the batches came (see [`settle`]).
    pub async fn stage(&mut self, table: &str, batch: RecordBatch) -> Result<(), StoreError> {
        let uri = self.store.uri(table);
        let remember = self.remember_staged;
        let store = self.store;
        let stage = self.touch(table, None).await?;
        let spec = TableSchema::get(table)?;
        let cols: Vec<&str> = spec.key.iter().map(String::as_str).collect();
        let arrays = key_columns(&batch, &cols)?;
        // Rows that come unique, into a table with no key to avoid: all kept, no key made.
        let keep: Vec<bool> = if !remember && stage.keys.is_empty() {
            vec![true; batch.num_rows()]
        } else {
            (0..batch.num_rows())
                .map(|i| {
                    let k = key_digest(&join_key(&arrays, i));
                    if remember {
                        stage.keys.insert(k)
                    } else {
                        !stage.keys.contains(&k)
                    }
                })
                .collect()
        };
        let kept = keep.iter().filter(|k| **k).count();
        stage.stats.inserted += kept;
        stage.stats.existing += batch.num_rows() - kept;
        if kept == 0 {
            return Ok(());
        }
        let batch = if kept == batch.num_rows() {
            batch
        } else {
            let mask = arrow_array::BooleanArray::from(keep);
            arrow::compute::filter_record_batch(&batch, &mask).map_err(|e| StoreError::Batch {
                table: table.into(),
                message: e.to_string(),
            })?
        };
        if let Some(ds) = &stage.base {
            check_vector_width(ds, &batch)?;
        }
        let params = store.write_params(if stage.base.is_some() {
            WriteMode::Append
        } else {
            WriteMode::Create
        });
        let (base, owned, name) = (stage.base.clone(), stage.scope.is_some(), table.to_string());
        stage.pending.push_back(tokio::spawn(async move {
            // An owned scope's digest (order-independent: a sum over rows).
            let digest = if owned {
                let mut d = RowDigest::default();
                d.add(&batch, &name)?;
                Some(d)
            } else {
                None
            };
            let written = match base {
                Some(ds) => {
                    InsertBuilder::new(ds)
                        .with_params(&params)
                        .execute_uncommitted(vec![batch])
                        .await
                }
                None => {
                    InsertBuilder::new(uri.as_str())
                        .with_params(&params)
                        .execute_uncommitted(vec![batch])
                        .await
                }
            }
            .map_err(lance_err(&name))?;
            Ok((written, digest))
        }));
        while stage.pending.len() > WRITES_IN_FLIGHT {
            settle(stage, table).await?;
        }
        Ok(())
    }

    /// Stages one ingest batch: items, prompts, users, embeddings and pairs.
    pub async fn write(&mut self, batch: &records::IngestBatch) -> Result<(), StoreError> {
        let parts = [
            ("items", Some(batches::items(&batch.items)?)),
            ("prompts", Some(batches::prompts(&batch.prompts)?)),
            ("users", Some(batches::users(&batch.users)?)),
            ("embeddings", batches::embeddings(&batch.embeddings)?),
            ("pairs", Some(batches::pairs(&batch.pairs)?)),
        ];
        for (table, part) in parts {
            let Some(part) = part else { continue };
            // The four core tables always appear in the stats, even when nothing came.
            if table != "embeddings" {
                self.touch(table, None).await?;
            }
            if part.num_rows() > 0 {
                self.stage(table, part).await?;
            }
        }
        Ok(())
    }

    /// Commits every table once (content before pairs) and returns, per table, the rows
    /// staged (`inserted`), the rows left out because their key was taken (`existing`), and
    /// for an owned scope the rows it held before (`replaced`), or `unchanged` when it held
    /// exactly the staged rows and nothing was committed.
    pub async fn commit(mut self) -> Result<BTreeMap<String, WriteStats>, StoreError> {
        // Every write under way first: its fragments, in order, or its error.
        for (name, stage) in self.tables.iter_mut() {
            while !stage.pending.is_empty() {
                settle(stage, name).await?;
            }
        }
        let mut tables = std::mem::take(&mut self.tables);
        let mut names: Vec<String> = tables.keys().cloned().collect();
        names.sort_by_key(|t| {
            COMMIT_ORDER
                .iter()
                .position(|c| c == t)
                .unwrap_or(COMMIT_ORDER.len())
        });
        let mut out = BTreeMap::new();
        for name in names {
            let stage = tables.remove(&name).expect("listed above");
            match commit_table(self.store, &name, stage).await {
                Ok(stats) => {
                    out.insert(name, stats);
                }
                Err(e) => {
                    // The tables not committed yet go back, so that dropping the writer
                    // removes their staged files.
                    self.tables = tables;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }
}

/// A writer dropped before [`StagedWriter::commit`] (a failed stage) commits nothing; the
/// files it staged are removed where that is possible.
impl Drop for StagedWriter<'_> {
    fn drop(&mut self) {
        for (table, stage) in std::mem::take(&mut self.tables) {
            // Writes under way are stopped (files they had begun are not committed either).
            for task in &stage.pending {
                task.abort();
            }
            if let Some(t) = stage.staged {
                remove_staged_files(self.store, &table, &t.operation);
            }
        }
    }
}

/// Waits for the oldest write under way of `table` and adds its fragments (after those of
/// the writes before it) and its digest.
async fn settle(stage: &mut TableStage, table: &str) -> Result<(), StoreError> {
    let Some(task) = stage.pending.pop_front() else {
        return Ok(());
    };
    let (written, digest) = task.await.map_err(|e| StoreError::Batch {
        table: table.into(),
        message: format!("a write stopped: {e}"),
    })??;
    if let Some(d) = digest {
        stage.digest.merge(d);
    }
    let merged = match stage.staged.take() {
        None => written,
        Some(mut t) => {
            let more = match written.operation {
                Operation::Append { fragments } | Operation::Overwrite { fragments, .. } => {
                    fragments
                }
                other => return Err(unexpected(table, &other)),
            };
            match &mut t.operation {
                Operation::Append { fragments } | Operation::Overwrite { fragments, .. } => {
                    fragments.extend(more)
                }
                other => return Err(unexpected(table, other)),
            }
            t
        }
    };
    stage.staged = Some(merged);
    Ok(())
}

fn unexpected(table: &str, op: &Operation) -> StoreError {
    StoreError::Batch {
        table: table.into(),
        message: format!("unexpected staged operation {}", op.name()),
    }
}

/// Best-effort removal of the data files of fragments that will never be committed, on a
/// local store (on object storage they stay for `palpipe vacuum`: this runs in `drop`, which
/// cannot wait for requests).
fn remove_staged_files(store: &Store, table: &str, op: &Operation) {
    if store.is_remote() {
        return;
    }
    let fragments = match op {
        Operation::Append { fragments } | Operation::Overwrite { fragments, .. } => fragments,
        _ => return,
    };
    let root = store.root().join(format!("{table}.lance"));
    for f in fragments {
        for file in &f.files {
            for p in [root.join("data").join(&file.path), root.join(&file.path)] {
                if p.is_file() {
                    let _ = std::fs::remove_file(p);
                    break;
                }
            }
        }
    }
    // A table that was never committed: its folders go too, when nothing else is in them.
    if !store.exists(table) {
        let _ = std::fs::remove_dir(root.join("data"));
        let _ = std::fs::remove_dir(&root);
    }
}

/// The digest of the rows `predicate` selects in `ds`.
async fn scope_digest(ds: &Dataset, table: &str, predicate: &str) -> Result<RowDigest, StoreError> {
    let mut scan = ds.scan();
    scan.filter(predicate).map_err(lance_err(table))?;
    let mut stream = scan.try_into_stream().await.map_err(lance_err(table))?;
    let mut d = RowDigest::default();
    while let Some(batch) = stream.try_next().await.map_err(lance_err(table))? {
        d.add(&batch, table)?;
    }
    Ok(d)
}

async fn commit_table(
    store: &Store,
    table: &str,
    stage: TableStage,
) -> Result<WriteStats, StoreError> {
    let mut stats = stage.stats;
    let latest = store.dataset(table, None).await?.map(Arc::new);
    let Some(latest) = latest else {
        // The table does not exist: the staged write creates it.
        if let Some(t) = stage.staged {
            let uri = store.uri(table);
            let done = match store.commit_to_uri(&uri).execute(t).await {
                Ok(d) => d,
                Err(e) => return Err(store.creation_err(table, e).await),
            };
            store.record_commit(table, done.version_id());
        }
        return Ok(stats);
    };
    let staged = match stage.staged.map(|t| t.operation) {
        None => None,
        Some(Operation::Append { fragments }) => Some(fragments),
        Some(other) => {
            // Staged as the table's creation, but another writer created it meanwhile.
            remove_staged_files(store, table, &other);
            return Err(StoreError::Concurrent {
                table: table.into(),
                what: "was created by another writer while this stage ran".into(),
            });
        }
    };
    let Some(scope) = stage.scope else {
        // Shared: append what is new, if anything.
        if let Some(fragments) = staged {
            let tx = Transaction::new(
                stage
                    .base
                    .as_ref()
                    .map_or(latest.version_id(), |b| b.version_id()),
                Operation::Append { fragments },
                None,
            );
            let done = CommitBuilder::new(latest)
                .execute(tx)
                .await
                .map_err(commit_err(table))?;
            store.record_commit(table, done.version_id());
        }
        return Ok(stats);
    };
    // Owned: against the latest version, so that rows another writer put in the scope
    // meanwhile are replaced too (the stage's output is the whole scope).
    let before = scope_digest(&latest, table, &scope).await?;
    if before == stage.digest {
        stats.unchanged = true;
        if let Some(fragments) = staged {
            remove_staged_files(store, table, &Operation::Append { fragments });
        }
        return Ok(stats);
    }
    stats.replaced = before.rows as usize;
    let deletion = DeleteBuilder::new(latest.clone(), scope.as_str())
        .execute_uncommitted()
        .await
        .map_err(lance_err(table))?;
    let (updated_fragments, removed_fragment_ids) = match deletion.transaction.operation {
        Operation::Delete {
            updated_fragments,
            deleted_fragment_ids,
            ..
        } => (updated_fragments, deleted_fragment_ids),
        other => return Err(unexpected(table, &other)),
    };
    let op = Operation::Update {
        removed_fragment_ids,
        updated_fragments,
        new_fragments: staged.unwrap_or_default(),
        fields_modified: Vec::new(),
        compacted_sstables: Vec::new(),
        fields_for_preserving_frag_bitmap: Vec::new(),
        update_mode: Some(UpdateMode::RewriteRows),
        inserted_rows_filter: None,
        updated_fragment_offsets: None,
    };
    let tx = Transaction::new(latest.version_id(), op, None);
    let mut builder = CommitBuilder::new(latest.clone());
    if let Some(rows) = deletion.affected_rows {
        builder = builder.with_affected_rows(rows);
    }
    let done = builder.execute(tx).await.map_err(commit_err(table))?;
    store.record_commit(table, done.version_id());
    Ok(stats)
}

/// One scope of `table` replaced by `batch` in a single commit (none when `batch` holds
/// exactly the scope's rows already). Rows of `batch` whose key is stored outside the scope
/// are left out.
pub async fn replace_scope(
    store: &Store,
    table: &str,
    predicate: &str,
    batch: RecordBatch,
) -> Result<WriteStats, StoreError> {
    let mut w = StagedWriter::new(store);
    w.own(table, predicate).await?;
    if batch.num_rows() > 0 {
        w.stage(table, batch).await?;
    }
    let mut stats = w.commit().await?;
    Ok(stats.remove(table).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::PairRow;
    use crate::store::RollBackReport;

    fn pair(id: &str, dataset: &str, split: &str) -> PairRow {
        PairRow {
            pair_id: id.into(),
            user_id: format!("{dataset}/u"),
            prompt_id: None,
            left_id: "l".into(),
            right_id: "r".into(),
            label: 1,
            dataset: dataset.into(),
            split: split.into(),
            source_ref: None,
            weight: 1.0,
        }
    }

    /// (pair id, split) of every stored pair, sorted.
    async fn stored(store: &Store) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = store
            .read("pairs", &[], None)
            .await
            .unwrap()
            .iter()
            .flat_map(|b| batches::read_pairs(b).unwrap())
            .map(|p| (p.pair_id, p.split))
            .collect();
        out.sort();
        out
    }

    fn owned(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// Appends one pair (a commit of `store`'s handle).
    async fn add_pair(store: &Store, row: PairRow) {
        let batch = batches::pairs(&[row]).unwrap();
        store.append("pairs", batch).await.unwrap();
    }

    /// Replaces dataset `a`'s pairs by `rows`.
    async fn replace_a(store: &Store, rows: &[PairRow]) -> WriteStats {
        let batch = batches::pairs(rows).unwrap();
        replace_scope(store, "pairs", "dataset = 'a'", batch)
            .await
            .unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_scope_is_replaced_in_one_commit_and_other_rows_stay() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let store = Store::open(dir.path()).unwrap();
            let rows = [
                pair("a1", "a", "train"),
                pair("a2", "a", "test"),
                pair("b1", "b", "train"),
            ];
            store
                .append("pairs", batches::pairs(&rows).unwrap())
                .await
                .unwrap();
            let v1 = store.versions().await.unwrap()["pairs"];
            // a2 moves to train, a1 goes, a3 comes; b1 is not in the scope.
            let new = [
                pair("a2", "a", "train"),
                pair("a3", "a", "val"),
                pair("b1", "a", "x"),
            ];
            let stats = replace_a(&store, &new).await;
            assert_eq!(store.versions().await.unwrap()["pairs"], v1 + 1);
            assert_eq!(
                stored(&store).await,
                owned(&[("a2", "train"), ("a3", "val"), ("b1", "train")])
            );
            // b1's key belongs to a row outside the scope: left out, counted as present.
            assert_eq!((stats.inserted, stats.existing, stats.replaced), (2, 1, 2));
            // The same rows again: nothing to commit.
            let again = [pair("a3", "a", "val"), pair("a2", "a", "train")];
            let stats = replace_a(&store, &again).await;
            assert!(stats.unchanged);
            assert_eq!(store.versions().await.unwrap()["pairs"], v1 + 1);
        });
    }

    #[test]
    fn a_writer_dropped_before_commit_leaves_the_table_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let store = Store::open(dir.path()).unwrap();
            add_pair(&store, pair("a1", "a", "train")).await;
            let before = store.versions().await.unwrap();
            let mut w = StagedWriter::owning_dataset(&store, "a").await.unwrap();
            w.stage("pairs", batches::pairs(&[pair("a9", "a", "test")]).unwrap())
                .await
                .unwrap();
            drop(w);
            assert_eq!(store.versions().await.unwrap(), before);
            assert_eq!(stored(&store).await, owned(&[("a1", "train")]));
            let files = std::fs::read_dir(dir.path().join("pairs.lance/data")).unwrap();
            assert_eq!(files.count(), 1, "the staged data file was not removed");
        });
    }

    #[test]
    fn roll_back_undoes_own_commits_and_never_another_writers() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let mine = Store::open(dir.path()).unwrap();
            let other = Store::open(dir.path()).unwrap();
            add_pair(&mine, pair("p0", "a", "train")).await;

            // Only this process wrote since: restored.
            let before = mine.versions().await.unwrap();
            add_pair(&mine, pair("p1", "a", "train")).await;
            let user = crate::store::records::UserRow {
                user_id: "a/u".into(),
                dataset: "a".into(),
                group: None,
                role: "seen".into(),
            };
            mine.append("users", batches::users(&[user]).unwrap())
                .await
                .unwrap();
            let report = mine.roll_back(&before).await.unwrap();
            assert!(report.kept.is_empty(), "{report:?}");
            assert_eq!(stored(&mine).await, owned(&[("p0", "train")]));
            assert!(
                !mine.exists("users"),
                "a table this stage created is removed"
            );

            // Another handle committed in between: its row stays, and the report says so.
            let before = mine.versions().await.unwrap();
            add_pair(&mine, pair("p2", "a", "train")).await;
            add_pair(&other, pair("q1", "b", "train")).await;
            let report = mine.roll_back(&before).await.unwrap();
            assert_eq!(report.kept.len(), 1, "{report:?}");
            assert!(report.kept[0].contains("table 'pairs'"), "{report:?}");
            assert!(report.kept[0].contains("another writer"), "{report:?}");
            let rows = stored(&mine).await;
            assert!(
                rows.contains(&("q1".to_string(), "train".to_string())),
                "{rows:?}"
            );

            // Another writer alone: nothing of ours to undo, nothing touched.
            let before = mine.versions().await.unwrap();
            add_pair(&other, pair("q2", "b", "val")).await;
            let report = mine.roll_back(&before).await.unwrap();
            assert_eq!(report, RollBackReport::default());
            assert!(stored(&mine)
                .await
                .contains(&("q2".to_string(), "val".to_string())));
        });
    }
}
