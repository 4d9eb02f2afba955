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
use lance::dataset::transaction::{Operation, Transaction};
use lance::dataset::{CommitBuilder, DeleteBuilder, InsertBuilder, WriteMode};
use lance::Dataset;

use super::schema::without_field_metadata;
use super::{
    batches, check_vector_width, commit_err, join_key, key_columns, keyed, lance_err, records,
    sql_str, Store, StoreError, TableSchema, WriteStats,
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
/// Never stored: the two digests a commit compares are made by the same binary in that
/// commit, so the row encoding they hash need not stay the same across versions.
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

    /// The digest without the rows of `other` (a subset of these rows).
    fn subtract(&mut self, other: RowDigest) {
        self.rows -= other.rows;
        for (slot, part) in self.sum.iter_mut().zip(other.sum) {
            *slot = slot.wrapping_sub(part);
        }
    }

    /// [`RowDigest::add`] when `digest`, else only counts the rows.
    fn add_or_count(
        &mut self,
        batch: &RecordBatch,
        table: &str,
        digest: bool,
    ) -> Result<(), StoreError> {
        if digest {
            self.add(batch, table)
        } else {
            self.rows += batch.num_rows() as u64;
            Ok(())
        }
    }

    /// Adds every row of `batch`, its columns taken in name order, each row as Arrow's row
    /// format encodes it (`arrow::row`: a byte string per row that tells apart every value
    /// and null of the columns' types, so equal rows and only equal rows encode alike).
    fn add(&mut self, batch: &RecordBatch, table: &str) -> Result<(), StoreError> {
        let batch_err = |e: arrow_schema::ArrowError| StoreError::Batch {
            table: table.into(),
            message: e.to_string(),
        };
        let schema = batch.schema();
        let mut order: Vec<usize> = (0..batch.num_columns()).collect();
        order.sort_by(|a, b| schema.field(*a).name().cmp(schema.field(*b).name()));
        let fields = order
            .iter()
            .map(|&i| arrow::row::SortField::new(schema.field(i).data_type().clone()))
            .collect();
        let columns: Vec<_> = order.iter().map(|&i| batch.column(i).clone()).collect();
        let converter = arrow::row::RowConverter::new(fields).map_err(batch_err)?;
        // A slice of rows at a time: the encoded rows are a copy of the cells they hold.
        let mut rows = converter.empty_rows(DIGEST_SLICE_ROWS, 0);
        for start in (0..batch.num_rows()).step_by(DIGEST_SLICE_ROWS) {
            let len = DIGEST_SLICE_ROWS.min(batch.num_rows() - start);
            let slice: Vec<_> = columns.iter().map(|c| c.slice(start, len)).collect();
            rows.clear();
            converter.append(&mut rows, &slice).map_err(batch_err)?;
            for row in rows.iter() {
                let bytes = blake3::hash(row.as_ref());
                for (slot, part) in self.sum.iter_mut().zip(bytes.as_bytes().chunks_exact(8)) {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(part);
                    *slot = slot.wrapping_add(u64::from_le_bytes(word));
                }
                self.rows += 1;
            }
        }
        Ok(())
    }
}

/// Rows encoded at once by [`RowDigest::add`].
const DIGEST_SLICE_ROWS: usize = 1024;

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
    /// The staged rows of an owned scope: their count, and their sum when `digest_rows`.
    digest: RowDigest,
    /// Whether the staged rows are digested as they are staged, not only counted: where the
    /// scope held rows when the stage first read the table (a re-run, whose rows may all be
    /// there already). Where it held none (a first run), the commit compares counts, and
    /// digests both sides only when another writer filled the scope meanwhile with as many
    /// rows as were staged; so the outcome is the one digests throughout would give.
    digest_rows: bool,
    /// The keys of the rows staged, for the commit's conflict check (see `keyed.rs`).
    added: keyed::AddedKeys,
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
    /// Whether the keys stored when a table is first touched are read, to leave out rows
    /// whose key is stored already (see [`StagedWriter::adding`]).
    read_stored_keys: bool,
}

impl<'a> StagedWriter<'a> {
    /// A writer whose every table is shared (content-addressed) until [`StagedWriter::own`]
    /// says otherwise.
    pub fn new(store: &'a Store) -> StagedWriter<'a> {
        StagedWriter {
            store,
            tables: BTreeMap::new(),
            remember_staged: true,
            read_stored_keys: true,
        }
    }

    /// A writer for rows its caller has already checked against the store (the chunks of
    /// an embedding run): the keys stored are not read again; only what other writers add
    /// while the writer runs, and keys repeated among its own rows, are left out.
    pub fn adding(store: &'a Store) -> StagedWriter<'a> {
        let mut w = StagedWriter::new(store);
        w.read_stored_keys = false;
        w
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
            if base.is_some() && self.read_stored_keys {
                for batch in self.store.read(table, &cols, outside.as_deref()).await? {
                    let arrays = key_columns(&batch, &cols)?;
                    for i in 0..batch.num_rows() {
                        keys.insert(key_digest(&join_key(&arrays, i)));
                    }
                }
            }
            let digest_rows = match (&scope, &base) {
                (Some(p), Some(ds)) => {
                    ds.count_rows(Some(p.clone()))
                        .await
                        .map_err(lance_err(table))?
                        > 0
                }
                _ => false,
            };
            self.tables.insert(
                table.to_string(),
                TableStage {
                    scope,
                    keys,
                    base,
                    staged: None,
                    pending: VecDeque::new(),
                    digest: RowDigest::default(),
                    digest_rows,
                    added: keyed::AddedKeys::default(),
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
        for (i, _) in keep.iter().enumerate().filter(|(_, k)| **k) {
            stage.added.add(join_key(&arrays, i));
        }
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
        let appending = store.write_params(WriteMode::Append);
        let (base, owned, name) = (stage.base.clone(), stage.scope.is_some(), table.to_string());
        let digest_rows = stage.digest_rows;
        stage.pending.push_back(tokio::spawn(async move {
            // An owned scope's digest (order-independent: a sum over rows).
            let digest = if owned {
                let mut d = RowDigest::default();
                d.add_or_count(&batch, &name, digest_rows)?;
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
                None => match InsertBuilder::new(uri.as_str())
                    .with_params(&params)
                    .execute_uncommitted(vec![batch.clone()])
                    .await
                {
                    // Another writer created the table since this stage looked: the rows are
                    // staged as an addition to it (the commit leaves out the keys stored there).
                    Err(lance::Error::DatasetAlreadyExists { .. }) => {
                        InsertBuilder::new(uri.as_str())
                            .with_params(&appending)
                            .execute_uncommitted(vec![batch])
                            .await
                    }
                    other => other,
                },
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
        if let Some((table, _)) =
            (batch.columns.iter()).find(|(t, _)| !parts.iter().any(|(name, _)| name == t))
        {
            return Err(StoreError::Batch {
                table: table.to_string(),
                message: "an ingest batch holds columns of a table it cannot write".into(),
            });
        }
        for (table, part) in parts {
            let Some(part) = part else { continue };
            // The four core tables always appear in the stats, even when nothing came.
            if table != "embeddings" {
                self.touch(table, None).await?;
            }
            if part.num_rows() > 0 {
                self.stage(table, part).await?;
            }
            for (_, columns) in batch.columns.iter().filter(|(t, _)| *t == table) {
                let part = batches::build(table, None, columns.clone())?;
                if part.num_rows() > 0 {
                    self.stage(table, part).await?;
                }
            }
        }
        Ok(())
    }

    /// Commits every table once (content before pairs) and returns, per table, the rows
    /// staged (`inserted`), the rows left out because their key was taken (`existing`), and
    /// for an owned scope the rows it held before (`replaced`), or `unchanged` when it held
    /// exactly the staged rows and nothing was committed.
    pub async fn commit(self) -> Result<BTreeMap<String, WriteStats>, StoreError> {
        self.commit_seen(&mut BTreeMap::new()).await
    }

    /// As [`StagedWriter::commit`], for a writer that adds rows over several commits: `seen`
    /// holds, per table, what its earlier commits (or the read its rows were checked against)
    /// covered, used instead of the table as this writer first read it, and comes back
    /// updated. Rows whose key is taken in `seen` already must be left out before staging
    /// (see [`Store::append_seen`]): a commit leaves out only keys it finds new.
    pub(crate) async fn commit_seen(
        mut self,
        seen: &mut BTreeMap<String, keyed::KeysSeen>,
    ) -> Result<BTreeMap<String, WriteStats>, StoreError> {
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
            let mut checked = seen
                .remove(&name)
                .unwrap_or_else(|| keyed::KeysSeen::at(stage.base.as_deref()));
            match commit_table(self.store, &name, stage, &mut checked).await {
                Ok(stats) => {
                    seen.insert(name.clone(), checked);
                    out.insert(name, stats);
                }
                Err(e) => {
                    // What was read stays valid (keys taken only grow; fragments count as
                    // seen only once read or committed): a writer that goes on after the
                    // error keeps it rather than reading the whole table again.
                    seen.insert(name, checked);
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
pub(crate) fn remove_staged_files(store: &Store, table: &str, op: &Operation) {
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

/// The digest of uncommitted `fragments` of `table` (read through `latest`).
async fn staged_digest(
    latest: &Dataset,
    table: &str,
    fragments: &[lance::table::format::Fragment],
) -> Result<RowDigest, StoreError> {
    let mut stream = keyed::staged_rows(latest, table, fragments).await?;
    let mut d = RowDigest::default();
    while let Some(batch) = stream.try_next().await.map_err(lance_err(table))? {
        d.add(&batch, table)?;
    }
    Ok(d)
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

/// Commits what `stage` staged for `table`: keyed (see `keyed.rs`), leaving out rows whose
/// key another writer added in a fragment `seen` has not seen, trying again while other
/// writers' commits win (see [`keyed::Backoff`]). `seen` comes back with this commit's
/// fragments and what was read.
async fn commit_table(
    store: &Store,
    table: &str,
    stage: TableStage,
    seen: &mut keyed::KeysSeen,
) -> Result<WriteStats, StoreError> {
    let mut stats = stage.stats;
    let latest = store.dataset(table, None).await?.map(Arc::new);
    let mut fragments = match stage.staged.map(|t| t.operation) {
        None => Vec::new(),
        Some(Operation::Append { fragments }) => fragments,
        Some(Operation::Overwrite {
            fragments,
            schema,
            config_upsert_values,
            initial_bases,
        }) => {
            let create = Operation::Overwrite {
                fragments: fragments.clone(),
                schema: schema.clone(),
                config_upsert_values,
                initial_bases,
            };
            let created = match &latest {
                None => {
                    // The table does not exist: the staged write creates it.
                    let t = Transaction::new(0, create, None);
                    let uri = store.uri(table);
                    match store.commit_to_uri(&uri).execute(t).await {
                        Ok(done) => {
                            store.record_commit(table, done.version_id());
                            seen.own(&done, &fragments);
                            return Ok(stats);
                        }
                        Err(e) => match store.creation_err(table, e).await {
                            StoreError::Concurrent { .. } => {
                                store.dataset(table, None).await?.map(Arc::new)
                            }
                            other => return Err(other),
                        },
                    }
                }
                Some(ds) => Some(ds.clone()),
            };
            // Another writer created the table while this stage ran. Fragments written for
            // a table of the same columns are rows of theirs too: they are added to it, less
            // the keys stored there (all of them are new to this stage).
            // A field's metadata (the codec a column is stored with, which a palpipe of
            // another version may not name) does not make it another column.
            let same_columns = created.as_ref().is_some_and(|ds| {
                without_field_metadata(&arrow_schema::Schema::from(ds.schema())).fields()
                    == without_field_metadata(&arrow_schema::Schema::from(&schema)).fields()
            });
            if !same_columns {
                remove_staged_files(store, table, &Operation::Append { fragments });
                return Err(StoreError::Concurrent {
                    table: table.into(),
                    what: "was created by another writer while this stage ran, with other columns"
                        .into(),
                });
            }
            // Its fragments are new to this writer, whatever their ids.
            seen.forget_fragments();
            fragments
        }
        Some(other) => return Err(unexpected(table, &other)),
    };
    let Some(mut latest) = (match latest {
        Some(ds) => Some(ds),
        None => store.dataset(table, None).await?.map(Arc::new),
    }) else {
        // Nothing staged for a table that does not exist.
        return Ok(stats);
    };
    // A shared table with nothing new to add: no commit, and no scan of other writers' keys.
    if stage.scope.is_none() && fragments.is_empty() {
        return Ok(stats);
    }
    let mut digest = stage.digest;
    let mut backoff = keyed::Backoff::new();
    loop {
        // Keys other writers added since the rows were checked: those rows are left out.
        let taken = seen
            .catch_up(&latest, table, stage.scope.as_deref())
            .await?;
        let out = keyed::leave_out(store, &latest, table, fragments, &taken).await?;
        fragments = out.fragments;
        for b in &out.dropped {
            stats.inserted = stats.inserted.saturating_sub(b.num_rows());
            stats.existing += b.num_rows();
            if stage.scope.is_some() {
                let mut d = RowDigest::default();
                d.add_or_count(b, table, stage.digest_rows)?;
                digest.subtract(d);
            }
        }
        let filter = stage.added.filter(&latest, table)?;
        let mut builder = CommitBuilder::new(latest.clone());
        let op = match &stage.scope {
            // Shared: add what is new, if anything.
            None => {
                if fragments.is_empty() {
                    return Ok(stats);
                }
                keyed::keyed_update(fragments.clone(), Vec::new(), Vec::new(), filter)
            }
            // Owned: against the latest version, so that rows another writer put in the
            // scope meanwhile are replaced too (the stage's output is the whole scope).
            Some(scope) => {
                let (same, before_rows) = if stage.digest_rows {
                    let before = scope_digest(&latest, table, scope).await?;
                    (before == digest, before.rows)
                } else {
                    // Only counted so far: digested when the counts leave it open (another
                    // writer filled the scope meanwhile with as many rows as were staged).
                    let rows = (latest.count_rows(Some(scope.clone())).await)
                        .map_err(lance_err(table))? as u64;
                    let same = rows == digest.rows
                        && (rows == 0
                            || scope_digest(&latest, table, scope).await?
                                == staged_digest(&latest, table, &fragments).await?);
                    (same, rows)
                };
                if same {
                    stats.unchanged = true;
                    remove_staged_files(store, table, &Operation::Append { fragments });
                    return Ok(stats);
                }
                stats.replaced = before_rows as usize;
                let deletion = DeleteBuilder::new(latest.clone(), scope.as_str())
                    .execute_uncommitted()
                    .await
                    .map_err(lance_err(table))?;
                let (updated, removed) = match deletion.transaction.operation {
                    Operation::Delete {
                        updated_fragments,
                        deleted_fragment_ids,
                        ..
                    } => (updated_fragments, deleted_fragment_ids),
                    other => return Err(unexpected(table, &other)),
                };
                if let Some(rows) = deletion.affected_rows {
                    builder = builder.with_affected_rows(rows);
                }
                keyed::keyed_update(fragments.clone(), updated, removed, filter)
            }
        };
        let tx = Transaction::new(latest.version_id(), op, None);
        match builder.execute(tx).await {
            Ok(done) => {
                store.record_commit(table, done.version_id());
                seen.own(&done, &fragments);
                return Ok(stats);
            }
            Err(e) if keyed::lost_to_another_writer(&e) => {
                match keyed::after_lost_try(store, table, &mut backoff).await? {
                    Some(ds) => latest = ds,
                    None => {
                        remove_staged_files(store, table, &Operation::Append { fragments });
                        return Err(keyed::tries_spent(table, &backoff));
                    }
                }
            }
            Err(e) => return Err(commit_err(table)(e)),
        }
    }
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

    /// The digest of a batch of two string columns and one float column.
    fn digest_of(rows: &[(Option<&str>, &str, f32)]) -> RowDigest {
        use arrow_array::{ArrayRef, Float32Array, StringArray};
        let a: ArrayRef = Arc::new(StringArray::from(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        ));
        let b: ArrayRef = Arc::new(StringArray::from(
            rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        ));
        let w: ArrayRef = Arc::new(Float32Array::from(
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        ));
        // Columns out of name order: the digest takes them by name.
        let batch = RecordBatch::try_from_iter([("b", b), ("w", w), ("a", a)]).unwrap();
        let mut d = RowDigest::default();
        d.add(&batch, "t").unwrap();
        d
    }

    /// Row digests are a multiset's: order and batching do not count, while a null against an
    /// empty string, text moved from one column to the next, −0 against +0 and one row more
    /// all do; a digest less a subset's is the rest's.
    #[test]
    fn row_digests_tell_rows_apart_whatever_their_order() {
        let rows = [
            (Some("x"), "y", 1.0),
            (None, "", 0.0),
            (Some("ab"), "c", 2.5),
        ];
        let whole = digest_of(&rows);
        let reversed: Vec<_> = rows.iter().rev().copied().collect();
        assert_eq!(digest_of(&reversed), whole);
        let mut parts = digest_of(&rows[..1]);
        parts.merge(digest_of(&rows[1..]));
        assert_eq!(parts, whole);
        let mut rest = whole;
        rest.subtract(digest_of(&rows[..1]));
        assert_eq!(rest, digest_of(&rows[1..]));
        assert_eq!(whole.rows, 3);
        for changed in [
            [
                (Some("x"), "y", 1.0),
                (Some(""), "", 0.0),
                (Some("ab"), "c", 2.5),
            ],
            [
                (Some("x"), "y", 1.0),
                (None, "", 0.0),
                (Some("a"), "bc", 2.5),
            ],
            [
                (Some("x"), "y", 1.0),
                (None, "", -0.0),
                (Some("ab"), "c", 2.5),
            ],
            [
                (Some("x"), "y", 1.0),
                (None, "", 0.0),
                (Some("ab"), "c", 2.25),
            ],
        ] {
            assert_ne!(digest_of(&changed), whole, "{changed:?}");
        }
        let mut more = rows.to_vec();
        more.push((Some("x"), "y", 1.0));
        assert_ne!(digest_of(&more), whole);
        // A batch longer than the slice it is encoded in: the sum of its rows' digests.
        let texts: Vec<String> = (0..2 * DIGEST_SLICE_ROWS + 5)
            .map(|i| i.to_string())
            .collect();
        let many: Vec<_> = texts.iter().map(|t| (Some(t.as_str()), "", 1.0)).collect();
        let mut one_by_one = RowDigest::default();
        for row in &many {
            one_by_one.merge(digest_of(std::slice::from_ref(row)));
        }
        assert_eq!(digest_of(&many), one_by_one);
        assert_eq!(one_by_one.rows, many.len() as u64);
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

    /// The columns of hex ids are stored with the codec their schema file names (Lance keeps
    /// it as the field's metadata), and a table written before that, without it, takes
    /// rows that carry it: every row reads back as written, in both.
    #[test]
    fn hex_id_codec_is_stored_and_an_older_table_takes_new_rows() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let hexes: Vec<String> = (0..300)
                .map(|i: u32| crate::store::records::content_id(&i.to_le_bytes()))
                .collect();
            let rows: Vec<PairRow> = hexes.iter().map(|h| pair(h, "a", "train")).collect();
            let mut expected: Vec<(String, String)> = hexes
                .iter()
                .map(|h| (h.clone(), "train".to_string()))
                .collect();
            expected.sort();

            let new = Store::open(dir.path().join("new")).unwrap();
            new.append("pairs", batches::pairs(&rows).unwrap())
                .await
                .unwrap();
            let ds = new.dataset("pairs", None).await.unwrap().unwrap();
            let meta = &ds.schema().field("pair_id").unwrap().metadata;
            assert_eq!(
                meta.get("lance-encoding:compression").map(String::as_str),
                Some("zstd")
            );
            assert!(ds.schema().field("user_id").unwrap().metadata.is_empty());
            assert_eq!(stored(&new).await, expected);

            // A table as palpipe wrote it before the codec: no field metadata.
            let old = Store::open(dir.path().join("old")).unwrap();
            let first = batches::pairs(&rows[..100]).unwrap();
            let bare = RecordBatch::try_new(
                without_field_metadata(&first.schema()),
                first.columns().to_vec(),
            )
            .unwrap();
            old.append("pairs", bare).await.unwrap();
            let ds = old.dataset("pairs", None).await.unwrap().unwrap();
            assert!(ds.schema().field("pair_id").unwrap().metadata.is_empty());
            old.append("pairs", batches::pairs(&rows[100..]).unwrap())
                .await
                .unwrap();
            assert_eq!(stored(&old).await, expected);
            // It keeps its own schema: Lance encodes the new rows by it.
            let ds = old.dataset("pairs", None).await.unwrap().unwrap();
            assert!(ds.schema().field("pair_id").unwrap().metadata.is_empty());
        });
    }

    fn item(id: &str) -> crate::store::records::ItemRow {
        crate::store::records::ItemRow {
            item_id: id.into(),
            kind: "text".into(),
            text: Some(format!("text of {id}")),
            bytes: None,
            source: "t".into(),
            parent_id: None,
        }
    }

    /// Item ids stored, sorted, duplicates kept.
    async fn item_ids(store: &Store) -> Vec<String> {
        let mut out = Vec::new();
        for b in store.read("items", &["item_id"], None).await.unwrap() {
            let a = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            out.extend(a.iter().flatten().map(str::to_string));
        }
        out.sort();
        out
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn two_writers_adding_the_same_items_store_each_once() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            // Two handles on one store, as two processes without a lock (object storage).
            let a = Store::open(dir.path()).unwrap();
            let b = Store::open(dir.path()).unwrap();
            a.append("items", batches::items(&[item("i0")]).unwrap())
                .await
                .unwrap();
            // Both read the table before either commits; i1 and i2 are new to both.
            let mut wa = StagedWriter::new(&a);
            let mut wb = StagedWriter::new(&b);
            let rows = |v: &[&str]| {
                batches::items(&v.iter().map(|i| item(i)).collect::<Vec<_>>()).unwrap()
            };
            wa.stage("items", rows(&["i0", "i1", "i2"])).await.unwrap();
            wb.stage("items", rows(&["i2", "i3", "i1", "i0"]))
                .await
                .unwrap();
            let sa = wa.commit().await.unwrap()["items"];
            let v = a.versions().await.unwrap()["items"];
            // b finds the keys a added since b read the table: i1 and i2 are left out of its
            // staged file (rewritten), i3 goes in.
            let sb = wb.commit().await.unwrap()["items"];
            assert_eq!((sa.inserted, sa.existing), (2, 1));
            assert_eq!((sb.inserted, sb.existing), (1, 3));
            assert_eq!(a.versions().await.unwrap()["items"], v + 1);
            assert_eq!(item_ids(&a).await, ids(&["i0", "i1", "i2", "i3"]));
            // Its rewritten rows are whole rows: i3's text came through.
            let text = a
                .read("items", &["text"], Some("item_id = 'i3'"))
                .await
                .unwrap();
            let t = text[0]
                .column(0)
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            assert_eq!(t.value(0), "text of i3");
            // The files of the rows left out were removed: one data file per commit remains.
            let files = std::fs::read_dir(dir.path().join("items.lance/data")).unwrap();
            assert_eq!(files.count(), 3);

            // Nothing new left after the overlap: no commit at all.
            let mut wa = StagedWriter::new(&a);
            let mut wb = StagedWriter::new(&b);
            wa.stage("items", rows(&["i4"])).await.unwrap();
            wb.stage("items", rows(&["i4"])).await.unwrap();
            wa.commit().await.unwrap();
            let v = a.versions().await.unwrap()["items"];
            let sb = wb.commit().await.unwrap()["items"];
            assert_eq!((sb.inserted, sb.existing), (0, 1));
            assert_eq!(a.versions().await.unwrap()["items"], v);
            assert_eq!(item_ids(&a).await, ids(&["i0", "i1", "i2", "i3", "i4"]));
        });
    }

    #[test]
    fn two_writers_creating_a_table_with_the_same_items_store_each_once() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let a = Store::open(dir.path()).unwrap();
            let b = Store::open(dir.path()).unwrap();
            let mut wa = StagedWriter::new(&a);
            let mut wb = StagedWriter::new(&b);
            let rows = |v: &[&str]| {
                batches::items(&v.iter().map(|i| item(i)).collect::<Vec<_>>()).unwrap()
            };
            wa.stage("items", rows(&["i1", "i2"])).await.unwrap();
            wb.stage("items", rows(&["i2", "i3"])).await.unwrap();
            wa.commit().await.unwrap();
            // b staged the table's creation; a created it first: b's new row joins a's table.
            let sb = wb.commit().await.unwrap()["items"];
            assert_eq!((sb.inserted, sb.existing), (1, 1));
            assert_eq!(a.versions().await.unwrap()["items"], 2);
            assert_eq!(item_ids(&a).await, ids(&["i1", "i2", "i3"]));
        });
    }

    #[test]
    fn two_writers_owning_one_empty_scope_leave_one_writers_rows() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let a = Store::open(dir.path()).unwrap();
            let b = Store::open(dir.path()).unwrap();
            add_pair(&a, pair("b1", "b", "train")).await;
            // Both own dataset a, empty when both read it, and stage the same pairs.
            let mut wa = StagedWriter::new(&a);
            wa.own("pairs", "dataset = 'a'").await.unwrap();
            let mut wb = StagedWriter::new(&b);
            wb.own("pairs", "dataset = 'a'").await.unwrap();
            let rows = [pair("a1", "a", "train"), pair("a2", "a", "test")];
            wa.stage("pairs", batches::pairs(&rows).unwrap())
                .await
                .unwrap();
            wb.stage("pairs", batches::pairs(&rows).unwrap())
                .await
                .unwrap();
            wa.commit().await.unwrap();
            let v = a.versions().await.unwrap()["pairs"];
            // b's commit is refused by lance (a's keys), then b finds the scope holds exactly
            // its rows already: nothing to commit.
            let sb = wb.commit().await.unwrap()["pairs"];
            assert!(sb.unchanged, "{sb:?}");
            assert_eq!(a.versions().await.unwrap()["pairs"], v);
            assert_eq!(
                stored(&a).await,
                owned(&[("a1", "train"), ("a2", "test"), ("b1", "train")])
            );
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
