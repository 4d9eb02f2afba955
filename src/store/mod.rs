//! The feature store: a folder (or an `s3://` prefix, see `location.rs`) of Lance datasets,
//! one per table (`<root>/<table>.lance`).
//!
//! Owns table layout, content-addressed writes (rows whose key exists add nothing), scoped
//! replacement (a stage's rows replaced by its new output in one commit, `staged.rs`), reading
//! tables at a version, rolling back this process's own commits after a failed stage, the
//! writer lock, and SQL over the tables (`sql.rs`). Knows nothing of models or of how a stage
//! computes its rows. Row types live in `records.rs`, their Arrow form in `batches.rs`,
//! schemas in `schema.rs`.

pub mod batches;
mod keyed;
pub mod knn;
pub mod location;
pub mod messages;
pub mod migrate;
pub mod race_hook;
pub mod records;
pub mod schema;
pub mod shards;
pub mod sql;
pub mod staged;
pub mod vacuum;
pub mod vector;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow_array::{Array, RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::DataType;
use futures::TryStreamExt;
use lance::dataset::{WriteMode, WriteParams};
use lance::Dataset;

pub use keyed::KeysSeen;
pub use location::{LocalDir, StoreEntry, StoreLocation};
pub use schema::{TableSchema, TABLES};
pub use staged::StagedWriter;

/// Errors of the store. Messages name the table, the store folder and the bad value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store path '{0}' exists and is not a folder")]
    NotAFolder(PathBuf),
    #[error("cannot create store folder '{path}': {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no store at '{path}'\nhint: {hint}")]
    NoStore { path: PathBuf, hint: String },
    #[error("store '{0}' is in use by another palpipe process\nhint: wait for it to finish, or use another --store")]
    Locked(PathBuf),
    #[error("unknown table '{0}' (tables: items, prompts, pairs, users, embeddings, splits, models, runs)")]
    UnknownTable(String),
    #[error("schema file for '{table}': {message}")]
    SchemaFile { table: String, message: String },
    #[error("building a batch for '{table}': {message}")]
    Batch { table: String, message: String },
    #[error("vector for '{content_id}' has {got} dimensions, expected {expected}")]
    VectorDim {
        content_id: String,
        expected: usize,
        got: usize,
    },
    #[error("the store's embeddings hold {have}-dimensional vectors; these have {got}\nhint: keep encoders of another width in another store (--store)")]
    StoreVectorDim { have: usize, got: usize },
    #[error("table '{table}' has no version {version} (latest is {latest})")]
    NoSuchVersion {
        table: String,
        version: u64,
        latest: u64,
    },
    #[error("table '{table}': {}", messages::without_source_locations(&source.to_string()))]
    Lance { table: String, source: lance::Error },
    #[error("{0}")]
    Sql(String),
    #[error("store '{store}': {message}")]
    Location { store: String, message: String },
    #[error("table '{table}' {what}\nhint: run the pipeline again: what the other writer committed stays, and this stage's work is redone")]
    Concurrent { table: String, what: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub(crate) fn lance_err(table: &str) -> impl FnOnce(lance::Error) -> StoreError + '_ {
    move |source| StoreError::Lance {
        table: table.to_string(),
        source,
    }
}

/// As [`lance_err`], for a commit: a table another writer created, or a commit that
/// conflicts with another writer's, becomes [`StoreError::Concurrent`].
pub(crate) fn commit_err(table: &str) -> impl FnOnce(lance::Error) -> StoreError + '_ {
    move |source| {
        match source {
        lance::Error::DatasetAlreadyExists { .. } => StoreError::Concurrent {
            table: table.to_string(),
            what: "was created by another writer while this stage ran".into(),
        },
        lance::Error::CommitConflict { .. }
        | lance::Error::IncompatibleTransaction { .. }
        | lance::Error::RetryableCommitConflict { .. } => StoreError::Concurrent {
            table: table.to_string(),
            what: format!(
                "was changed by another writer at the same time, in a way this stage's commit cannot be applied over ({})",
                messages::without_source_locations(&source.to_string())
            ),
        },
        other => lance_err(table)(other),
    }
    }
}

/// How many rows a write added, and how many it found already present. For a scope a stage
/// owns: how many rows it held before and were replaced, or that it already held exactly
/// these rows (nothing committed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    pub inserted: usize,
    pub existing: usize,
    pub replaced: usize,
    pub unchanged: bool,
}

/// Handle to a store (a folder, or a prefix on object storage). Clones share the record of
/// the versions this process committed (see [`Store::roll_back`]).
#[derive(Debug, Clone)]
pub struct Store {
    /// The folder; for a remote store its URI as a path, for messages only.
    root: PathBuf,
    location: StoreLocation,
    /// Lance's object stores, opened once per bucket and options for this handle's files.
    registry: Arc<lance::io::ObjectStoreRegistry>,
    commits: Arc<Mutex<BTreeMap<String, BTreeSet<u64>>>>,
}

/// What [`Store::roll_back`] did not undo, and why: one line per table, for the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollBackReport {
    /// Tables brought back to their earlier version (or removed, when they were new).
    pub restored: Vec<String>,
    /// "table 'pairs': …" for each table left as it is because another writer committed to
    /// it after the stage began.
    pub kept: Vec<String>,
}

/// Held while a process writes to a local store; dropping it releases the lock. On object
/// storage there is no lock: every stage commits through Lance's conditional commit.
#[derive(Debug)]
pub struct StoreLock {
    _file: Option<File>,
}

impl Store {
    fn remote(location: StoreLocation) -> Store {
        Store {
            root: PathBuf::from(location.display()),
            location,
            registry: Arc::default(),
            commits: Arc::default(),
        }
    }

    fn local(root: PathBuf) -> Store {
        Store {
            location: StoreLocation::Local(root.clone()),
            root,
            registry: Arc::default(),
            commits: Arc::default(),
        }
    }

    /// Opens the store at `location` for writing: a local folder is created when it does
    /// not exist; a remote prefix needs nothing made (its bucket must exist).
    pub fn open_at(location: StoreLocation) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Local(p) => Store::open(p),
            remote => Ok(Store::remote(remote)),
        }
    }

    /// As [`Store::open_for_plan`], at `location`.
    pub fn open_for_plan_at(location: StoreLocation) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Local(p) => Store::open_for_plan(p),
            remote => Ok(Store::remote(remote)),
        }
    }

    /// As [`Store::open_existing`], at `location`: a remote prefix must hold a table.
    pub async fn open_existing_at(location: StoreLocation) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Local(p) => Store::open_existing(p),
            remote => {
                let store = Store::remote(remote);
                let entries = store.list_dir("").await?;
                if !entries.iter().any(|e| {
                    e.name
                        .strip_suffix(".lance")
                        .is_some_and(|t| TABLES.contains(&t))
                }) {
                    return Err(StoreError::NoStore {
                        path: store.root.clone(),
                        hint: format!(
                            "no tables under that prefix\nhint: to make one, run a pipeline: palpipe run PIPELINE.yaml --store {}",
                            store.location.display()
                        ),
                    });
                }
                Ok(store)
            }
        }
    }

    /// Where the store is.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// Whether the store is on object storage.
    pub fn is_remote(&self) -> bool {
        self.location.is_remote()
    }

    /// Lance's object-store parameters for a remote store (`None`: a local folder).
    pub(crate) fn store_params(&self) -> Option<lance::io::ObjectStoreParams> {
        match &self.location {
            StoreLocation::Remote(r) => Some(r.params()),
            StoreLocation::Local(_) => None,
        }
    }

    /// Write parameters in `mode`, with the store's object-store options.
    pub(crate) fn write_params(&self, mode: WriteMode) -> WriteParams {
        WriteParams {
            mode,
            store_params: self.store_params(),
            // The batches we hand Lance are built for the write and dropped after it, so its
            // encoder may keep them while a page fills instead of copying each one (Lance's
            // default, meant for arrays that share a larger buffer); the bytes written are
            // the same either way.
            file_writer_options: Some(lance_file::writer::FileWriterOptions {
                keep_original_array: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The commit that creates a table (an `Overwrite` read at version 0). Without retries:
    /// lance would otherwise rebase an overwrite over a table another writer created
    /// meanwhile, replacing that writer's rows; in this strict mode it fails instead (see
    /// [`Store::creation_err`]).
    pub(crate) fn commit_to_uri<'a>(&self, uri: &'a str) -> lance::dataset::CommitBuilder<'a> {
        let b = lance::dataset::CommitBuilder::new(uri).with_max_retries(0);
        match self.store_params() {
            Some(p) => b.with_store_params(p),
            None => b,
        }
    }

    /// The error of a failed creation of `table`: when the table exists now, another writer
    /// created it first ([`StoreError::Concurrent`]); otherwise lance's error.
    pub(crate) async fn creation_err(&self, table: &str, source: lance::Error) -> StoreError {
        if self.has_table(table).await.unwrap_or(false) {
            return StoreError::Concurrent {
                table: table.to_string(),
                what: "was created by another writer while this stage ran".into(),
            };
        }
        commit_err(table)(source)
    }

    /// Opens the store at `root`, creating the folder when it does not exist.
    pub fn open(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        let root = root.as_ref().to_path_buf();
        if root.exists() && !root.is_dir() {
            return Err(StoreError::NotAFolder(root));
        }
        std::fs::create_dir_all(&root).map_err(|source| StoreError::Create {
            path: root.clone(),
            source,
        })?;
        Ok(Store::local(root))
    }

    /// Notes that this process committed `version` of `table`.
    pub(crate) fn record_commit(&self, table: &str, version: u64) {
        if let Ok(mut log) = self.commits.lock() {
            log.entry(table.to_string()).or_default().insert(version);
        }
    }

    /// The versions of `table` this process committed.
    fn own_commits(&self, table: &str) -> BTreeSet<u64> {
        self.commits
            .lock()
            .ok()
            .and_then(|log| log.get(table).cloned())
            .unwrap_or_default()
    }

    /// The store at `root` as it is, for planning (`palpipe run --dry-run`): nothing is created,
    /// and a folder that does not exist yet reads as a store with no tables.
    pub fn open_for_plan(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        let root = root.as_ref().to_path_buf();
        if root.exists() && !root.is_dir() {
            return Err(StoreError::NotAFolder(root));
        }
        Ok(Store::local(root))
    }

    /// Opens the store at `root` for reading: a folder that does not exist is an error
    /// ([`StoreError::NoStore`], whose hint names the stores beside it) and nothing is
    /// created. An existing empty folder is a store with no tables yet.
    pub fn open_existing(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        let root = root.as_ref().to_path_buf();
        if root.is_dir() {
            return Ok(Store::local(root));
        }
        if root.exists() {
            return Err(StoreError::NotAFolder(root));
        }
        let nearby = stores_beside(&root);
        let make = format!(
            "to make one, run a pipeline: palpipe run PIPELINE.yaml --store {}",
            root.display()
        );
        let hint = if nearby.is_empty() {
            make
        } else {
            let names: Vec<String> = nearby.iter().map(|p| p.display().to_string()).collect();
            format!("stores nearby: {}\nhint: {make}", names.join(", "))
        };
        Err(StoreError::NoStore { path: root, hint })
    }

    /// The store folder; for a remote store its URI as a path, good for messages only (its
    /// files go through [`Store::read_file`] and the other methods of `location.rs`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the writer lock of a local store, failing at once when another process holds
    /// it. On object storage there is nothing to take (see [`StoreLock`]).
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        if self.is_remote() {
            return Ok(StoreLock { _file: None });
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".palpipe.lock"))?;
        match file.try_lock() {
            Ok(()) => Ok(StoreLock { _file: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(self.root.clone())),
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    pub(crate) fn uri(&self, table: &str) -> String {
        match &self.location {
            StoreLocation::Remote(r) => format!("{}/{table}.lance", r.uri),
            StoreLocation::Local(root) => root
                .join(format!("{table}.lance"))
                .to_string_lossy()
                .into_owned(),
        }
    }

    /// Whether a local store holds `table` (always false for a remote store: see
    /// [`Store::has_table`]).
    pub fn exists(&self, table: &str) -> bool {
        !self.is_remote()
            && self
                .root
                .join(format!("{table}.lance"))
                .join("_versions")
                .is_dir()
    }

    /// Whether the store holds `table` (a version of it has been committed).
    pub async fn has_table(&self, table: &str) -> Result<bool, StoreError> {
        if !self.is_remote() {
            return Ok(self.exists(table));
        }
        let versions = self.list_dir(&format!("{table}.lance/_versions")).await?;
        Ok(versions.iter().any(|e| !e.is_dir))
    }

    /// The dataset of `table` at its latest version (or `version`), `None` when the table
    /// has not been written yet.
    pub async fn dataset(
        &self,
        table: &str,
        version: Option<u64>,
    ) -> Result<Option<Dataset>, StoreError> {
        TableSchema::get(table)?;
        if !self.has_table(table).await? {
            return Ok(None);
        }
        let mut builder = lance::dataset::builder::DatasetBuilder::from_uri(self.uri(table));
        if let StoreLocation::Remote(r) = &self.location {
            builder = builder.with_storage_options(r.options.clone().into_iter().collect());
        }
        let ds = builder.load().await.map_err(lance_err(table))?;
        match version {
            None => Ok(Some(ds)),
            Some(v) => {
                let latest = ds.version_id();
                if v == 0 || v > latest {
                    return Err(StoreError::NoSuchVersion {
                        table: table.into(),
                        version: v,
                        latest,
                    });
                }
                Ok(Some(
                    ds.checkout_version(v).await.map_err(lance_err(table))?,
                ))
            }
        }
    }

    /// The latest version of every table that exists.
    pub async fn versions(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut out = BTreeMap::new();
        for t in TABLES {
            if let Some(ds) = self.dataset(t, None).await? {
                out.insert(t.to_string(), ds.version_id());
            }
        }
        Ok(out)
    }

    /// Rows in `table` (0 when it does not exist).
    pub async fn count(&self, table: &str, filter: Option<String>) -> Result<usize, StoreError> {
        match self.dataset(table, None).await? {
            None => Ok(0),
            Some(ds) => ds.count_rows(filter).await.map_err(lance_err(table)),
        }
    }

    /// Reads `columns` of `table` (all when empty), optionally filtered by a SQL predicate.
    pub async fn read(
        &self,
        table: &str,
        columns: &[&str],
        filter: Option<&str>,
    ) -> Result<Vec<RecordBatch>, StoreError> {
        let Some(ds) = self.dataset(table, None).await? else {
            return Ok(Vec::new());
        };
        let mut scan = ds.scan();
        if !columns.is_empty() {
            scan.project(columns).map_err(lance_err(table))?;
        }
        if let Some(f) = filter {
            scan.filter(f).map_err(lance_err(table))?;
        }
        let stream = scan.try_into_stream().await.map_err(lance_err(table))?;
        stream.try_collect().await.map_err(lance_err(table))
    }

    /// (item id, bytes) of the given items, in `ids` order; an id that is not stored, or
    /// whose item has no bytes, gets `None`. One scan for all of them: callers pass a few
    /// hundred ids at a time.
    pub async fn item_bytes(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, StoreError> {
        let filter = format!("item_id IN ({})", sql_list(ids));
        let mut found = HashMap::new();
        for b in self
            .read("items", &["item_id", "bytes"], Some(&filter))
            .await?
        {
            let i = b.column(0).as_any().downcast_ref::<StringArray>();
            let v = b
                .column(1)
                .as_any()
                .downcast_ref::<arrow_array::LargeBinaryArray>();
            let (Some(i), Some(v)) = (i, v) else {
                return Err(StoreError::Batch {
                    table: "items".into(),
                    message: "unexpected column types for item_id / bytes".into(),
                });
            };
            for r in 0..b.num_rows() {
                found.insert(
                    i.value(r).to_string(),
                    (!v.is_null(r)).then(|| v.value(r).to_vec()),
                );
            }
        }
        Ok(ids
            .iter()
            .map(|id| (id.clone(), found.remove(id).flatten()))
            .collect())
    }

    /// Replaces the rows whose key matches a row of `batch`, and adds the rest, in one
    /// commit (none when those rows are stored already, exactly).
    pub async fn upsert(&self, table: &str, batch: RecordBatch) -> Result<(), StoreError> {
        let spec = TableSchema::get(table)?;
        if spec.key.len() != 1 {
            return Err(StoreError::Batch {
                table: table.into(),
                message: "upsert needs a single-column key".into(),
            });
        }
        let arrays = key_columns(&batch, &[spec.key[0].as_str()])?;
        let list: Vec<String> = (0..batch.num_rows())
            .map(|i| sql_str(&join_key(&arrays, i)))
            .collect();
        if list.is_empty() {
            return Ok(());
        }
        let pred = format!("{} IN ({})", spec.key[0], list.join(", "));
        self.replace_where(table, &pred, batch).await
    }

    /// Deletes the rows `predicate` selects and appends `batch` in their place, in one
    /// commit (none when they are exactly these rows already).
    pub async fn replace_where(
        &self,
        table: &str,
        predicate: &str,
        batch: RecordBatch,
    ) -> Result<(), StoreError> {
        staged::replace_scope(self, table, predicate, batch).await?;
        Ok(())
    }

    /// Appends `batch` as one commit, creating the table when it does not exist (or
    /// appending to it when another writer created it meanwhile).
    /// On a content-addressed table (`items`, `prompts`, `embeddings`) the commit is keyed
    /// (see `keyed.rs`): a row whose key another writer adds at the same moment is left out.
    pub async fn append(&self, table: &str, batch: RecordBatch) -> Result<(), StoreError> {
        migrate::upgrade(self, table).await?;
        if keyed::SHARED.contains(&table) {
            let mut w = StagedWriter::adding(self);
            w.stage(table, batch).await?;
            w.commit().await?;
            return Ok(());
        }
        let existing = self.dataset(table, None).await?;
        if let Some(ds) = &existing {
            check_vector_width(ds, &batch)?;
        }
        if existing.is_none() {
            let uri = self.uri(table);
            let staged = lance::dataset::InsertBuilder::new(uri.as_str())
                .with_params(&self.write_params(WriteMode::Create))
                .execute_uncommitted(vec![batch.clone()])
                .await
                .map_err(lance_err(table))?;
            match self.commit_to_uri(&uri).execute(staged).await {
                Ok(ds) => {
                    self.record_commit(table, ds.version_id());
                    return Ok(());
                }
                // Created by another writer meanwhile: append to theirs (the files staged
                // for the creation are left for `vacuum`).
                Err(e) => match self.creation_err(table, e).await {
                    StoreError::Concurrent { .. } => {
                        if let Some(ds) = self.dataset(table, None).await? {
                            check_vector_width(&ds, &batch)?;
                        }
                    }
                    other => return Err(other),
                },
            }
        }
        let reader = RecordBatchIterator::new(vec![Ok(batch.clone())], batch.schema());
        let ds = Dataset::write(
            reader,
            self.uri(table).as_str(),
            Some(self.write_params(WriteMode::Append)),
        )
        .await
        .map_err(commit_err(table))?;
        self.record_commit(table, ds.version_id());
        Ok(())
    }

    /// Adds the rows of `batch` to a content-addressed table (`items`, `prompts`,
    /// `embeddings`) in one keyed commit, for a writer that adds, over several commits, rows
    /// it checked against the table once (the chunks of an embedding run): a row whose key
    /// another writer added since that check is left out, whether it landed before this
    /// commit began or while it ran. `seen` starts as [`KeysSeen::at`] the version the rows
    /// were checked against and is passed from one call to the next. Returns the rows added
    /// (`inserted`) and left out (`existing`).
    pub async fn append_seen(
        &self,
        table: &str,
        batch: RecordBatch,
        seen: &mut KeysSeen,
    ) -> Result<WriteStats, StoreError> {
        let keep: Vec<bool> = row_keys(table, &batch)?
            .iter()
            .map(|k| !seen.is_taken(k))
            .collect();
        let taken = keep.iter().filter(|k| !**k).count();
        let batch = if taken == 0 {
            batch
        } else {
            arrow::compute::filter_record_batch(&batch, &arrow_array::BooleanArray::from(keep))
                .map_err(|e| StoreError::Batch {
                    table: table.into(),
                    message: e.to_string(),
                })?
        };
        let mut stats = WriteStats::default();
        if batch.num_rows() > 0 {
            let mut w = StagedWriter::adding(self);
            w.stage(table, batch).await?;
            let mut tables = BTreeMap::from([(table.to_string(), std::mem::take(seen))]);
            let done = w.commit_seen(&mut tables).await;
            *seen = tables.remove(table).unwrap_or_default();
            stats = done?.remove(table).unwrap_or_default();
        }
        stats.existing += taken;
        Ok(stats)
    }

    /// Undoes this process's commits since `before` (table → version; a table absent there
    /// did not exist): a table whose every version since is one this process made is
    /// restored to its version in `before` (or removed, when it did not exist). A table
    /// another writer committed to in between is left as it is (restoring would undo that
    /// commit too) and named in the report's `kept`; a table this process did not commit to
    /// is not touched. On object storage nothing is restored or removed (every table this
    /// process committed to is named in `kept`): without a lock, no check can keep a restore
    /// from undoing a commit that lands after it.
    pub async fn roll_back(
        &self,
        before: &BTreeMap<String, u64>,
    ) -> Result<RollBackReport, StoreError> {
        let mut report = RollBackReport::default();
        for (table, now) in self.versions().await? {
            let from = before.get(&table).copied().unwrap_or(0);
            if now <= from {
                continue;
            }
            let ours = self.own_commits(&table);
            let since: Vec<u64> = (from + 1..=now).collect();
            let mine: Vec<u64> = since.iter().copied().filter(|v| ours.contains(v)).collect();
            if mine.is_empty() {
                continue;
            }
            let foreign: Vec<u64> = since
                .iter()
                .copied()
                .filter(|v| !ours.contains(v))
                .collect();
            if self.is_remote() {
                // On object storage nothing serialises writers: between any check and a
                // restore (which lance rebases over whatever landed) another writer may commit,
                // and rolling back a shared table could drop items its pairs point at. A failed
                // stage's commits stay; the next run redoes the stage and replaces its scope.
                report.kept.push(format!(
                    "table '{table}' was not rolled back: on object storage a restore could undo another writer's commit; this stage's version{} {} stay{} until the pipeline runs again",
                    plural(mine.len()),
                    join_versions(&mine),
                    if mine.len() == 1 { "s" } else { "" },
                ));
                continue;
            }
            if !foreign.is_empty() {
                report.kept.push(format!(
                    "table '{table}' was not rolled back: another writer committed version{} {} after this stage began, and restoring version {from} would undo it; this stage's version{} {} stay{}",
                    plural(foreign.len()),
                    join_versions(&foreign),
                    plural(mine.len()),
                    join_versions(&mine),
                    if mine.len() == 1 { "s" } else { "" },
                ));
                continue;
            }
            if from == 0 {
                self.remove_dir(&format!("{table}.lance")).await?;
                // A table made again later starts its versions at 1: none of those is ours yet.
                if let Ok(mut log) = self.commits.lock() {
                    log.remove(&table);
                }
            } else if let Some(mut ds) = self.dataset(&table, Some(from)).await? {
                ds.restore().await.map_err(lance_err(&table))?;
                self.record_commit(&table, ds.version_id());
            }
            report.restored.push(table);
        }
        Ok(report)
    }
}

/// Whether `dir` looks like a store: a folder holding at least one `<table>.lance`.
pub fn is_store(dir: &Path) -> bool {
    TABLES
        .iter()
        .any(|t| dir.join(format!("{t}.lance")).is_dir())
}

/// Stores in the folder that would hold `path` (its parent, or the working folder), sorted
/// by name, at most five: what a mistyped `--store` probably meant.
fn stores_beside(path: &Path) -> Vec<PathBuf> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir() && is_store(p))
        .map(|p| {
            // `./palstore-x` reads better as `palstore-x` when the user gave a bare name.
            if parent == Path::new(".") {
                p.strip_prefix(".").map(Path::to_path_buf).unwrap_or(p)
            } else {
                p
            }
        })
        .collect();
    found.sort();
    found.truncate(5);
    found
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn join_versions(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// The width of a `FixedSizeList` vector column, if the schema has one.
pub fn vector_width(schema: &arrow_schema::Schema) -> Option<usize> {
    schema.fields().iter().find_map(|f| match f.data_type() {
        DataType::FixedSizeList(_, n) => Some(*n as usize),
        _ => None,
    })
}

fn check_vector_width(ds: &Dataset, batch: &RecordBatch) -> Result<(), StoreError> {
    check_width(ds, vector_width(&batch.schema()))
}

/// Refuses vectors `got` wide for a table whose vector column has another width.
fn check_width(ds: &Dataset, got: Option<usize>) -> Result<(), StoreError> {
    let have = vector_width(&arrow_schema::Schema::from(ds.schema()));
    match (have, got) {
        (Some(have), Some(got)) if have != got => Err(StoreError::StoreVectorDim { have, got }),
        _ => Ok(()),
    }
}

fn key_columns<'a>(
    batch: &'a RecordBatch,
    cols: &[&str],
) -> Result<Vec<&'a StringArray>, StoreError> {
    cols.iter()
        .map(|c| {
            batch
                .column_by_name(c)
                .and_then(|a| a.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| StoreError::Batch {
                    table: String::new(),
                    message: format!("key column '{c}' is missing or not text"),
                })
        })
        .collect()
}

/// The key of each row of `batch`, a batch of `table`'s rows: its key columns joined, the
/// form [`KeysSeen`] takes keys in (it holds their digests). Errors: `table` is not a content-addressed table, or a key
/// column is missing or not a string column.
pub(crate) fn row_keys(table: &str, batch: &RecordBatch) -> Result<Vec<String>, StoreError> {
    let spec = TableSchema::get(table)?;
    let cols: Vec<&str> = spec.key.iter().map(String::as_str).collect();
    let arrays = key_columns(batch, &cols)?;
    Ok((0..batch.num_rows())
        .map(|i| join_key(&arrays, i))
        .collect())
}

fn join_key(arrays: &[&StringArray], row: usize) -> String {
    let parts: Vec<&str> = arrays
        .iter()
        .map(|a| if a.is_null(row) { "" } else { a.value(row) })
        .collect();
    parts.join("\u{1f}")
}

/// A SQL string literal: `it's` → `'it''s'`.
pub fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A comma-separated list of SQL string literals, for `col IN (…)`.
pub fn sql_list<S: AsRef<str>>(values: &[S]) -> String {
    values
        .iter()
        .map(|v| sql_str(v.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Writes one ingest batch for a stage that owns `dataset` (see [`StagedWriter`]): its rows
/// of `pairs` and `users` are replaced, items, prompts and embeddings merged on their keys, one
/// commit per table. Returns what each table gained.
pub async fn write_ingest(
    store: &Store,
    dataset: &str,
    batch: &records::IngestBatch,
) -> Result<BTreeMap<String, WriteStats>, StoreError> {
    let mut w = StagedWriter::owning_dataset(store, dataset).await?;
    w.write(batch).await?;
    w.commit().await
}
