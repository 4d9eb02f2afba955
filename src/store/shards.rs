//! Sharded writes of `embeddings`: N workers each stage one shard, one commit publishes them.
//!
//! This is Lance's distributed write protocol applied to the content-addressed embedding
//! cache. A worker ([`ShardWriter`]) writes its rows as uncommitted fragments under the table's
//! `data/` folder and, last, the shard's metadata (the fragments, as JSON) under
//! `<store>/_palpipe/runs/<run>/shard-<k>-of-<n>.json`, whole (a temporary file renamed on a
//! local store, one PUT on object storage; see `location.rs`).
//! [`commit_run`] reads every shard's metadata and publishes all their fragments as one new
//! version of `embeddings`, with the run id in the transaction's properties; it refuses a run
//! with a missing shard and does nothing for a run the table's history shows committed
//! already (committing the same fragments twice would duplicate rows).
//!
//! A worker killed before its metadata is written leaves only unreferenced data files: its
//! re-run writes new ones and its metadata, and `palpipe vacuum` (`vacuum.rs`) removes the
//! orphans. Which rows a shard holds (by content id) is decided here ([`ShardSpec::owns`]);
//! what to embed and how is the embed stage's business (`src/pipeline/embed_stage.rs`).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray};
use futures::TryStreamExt;
use lance::dataset::fragment::FileFragment;
use lance::dataset::transaction::{Operation, TransactionBuilder};
use lance::dataset::{CommitBuilder, InsertBuilder, WriteMode};
use lance::table::format::Fragment;
use lance::Dataset;
use serde::{Deserialize, Serialize};

use super::{
    check_vector_width, check_width, join_key, key_columns, keyed, lance_err, Store, StoreError,
    TableSchema,
};

/// The table sharded writes go to.
const TABLE: &str = "embeddings";

/// The transaction property that names the run a commit published.
pub const RUN_PROPERTY: &str = "palpipe.run_id";

/// Errors of sharded writes. Messages name the run, the shard and the file.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("--shard '{spec}': {reason}\nhint: write K/N with 0 <= K < N (e.g. 2/4), or auto/N to take K from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX")]
    BadSpec { spec: String, reason: String },
    #[error("run id '{0}' is not allowed: use letters, digits, '.', '_' and '-' (at most 100, not starting with '.')")]
    BadRunId(String),
    #[error("run '{run}' is missing {which} of {shards} (no '{first_path}')\nhint: run `palpipe embed --shard K/{shards} --uncommitted --run-id {run}` for each missing K")]
    MissingShards {
        run: String,
        shards: usize,
        /// "shard 1" or "shards 0, 2".
        which: String,
        first_path: PathBuf,
    },
    #[error("shard metadata '{path}': {reason}")]
    BadMetadata { path: PathBuf, reason: String },
    #[error("run '{run}' has shard files for {other} shards ('{path}'), not {shards}\nhint: commit with --shards {other}, or remove the folder '{dir}' and run the shards again")]
    OtherShardCount {
        run: String,
        shards: usize,
        other: usize,
        path: PathBuf,
        dir: PathBuf,
    },
    #[error("run '{run}': {count} of its content ids are already in embeddings (first: '{first}'), committed by another run after these shards were written; committing would store them twice\nhint: remove '{dir}', run `palpipe vacuum`, and run the shards again (they skip what is stored)")]
    AlreadyStored {
        run: String,
        count: usize,
        first: String,
        dir: PathBuf,
    },
    #[error("run '{run}' is being committed by another process (claim '{claim}')\nhint: wait for that commit; if none is running (it died), remove '{claim}' and commit again")]
    CommitInProgress { run: String, claim: String },
    #[error("run '{run}' could not be committed: table 'embeddings' {what}\nhint: run `palpipe commit --run-id {run} --shards {shards}` again: the shards' files are kept, and what the other writers committed stays")]
    CommitLost {
        run: String,
        shards: usize,
        what: String,
    },
    #[error("writing '{path}': {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ShardError {
    /// The exit code this error maps to: 2 for bad flags, 1 for the rest.
    pub fn exit_code(&self) -> i32 {
        match self {
            ShardError::BadSpec { .. } | ShardError::BadRunId(_) => 2,
            _ => 1,
        }
    }
}

/// Which of N shards a worker embeds: K counts from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    pub index: usize,
    pub count: usize,
}

/// The environment variables `auto/N` takes K from, in order: a Slurm array task's index, a
/// Kubernetes Indexed Job's completion index.
pub const INDEX_VARIABLES: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

impl ShardSpec {
    /// Parses `K/N`, or `auto/N` with K from the first of [`INDEX_VARIABLES`] that `env`
    /// knows.
    pub fn parse(
        spec: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ShardSpec, ShardError> {
        let bad = |reason: String| ShardError::BadSpec {
            spec: spec.to_string(),
            reason,
        };
        let (k, n) = spec
            .split_once('/')
            .ok_or_else(|| bad("expected K/N".into()))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| bad(format!("'{n}' is not a shard count")))?;
        if count == 0 {
            return Err(bad("the shard count must be at least 1".into()));
        }
        let (index_text, from) = if k.trim() == "auto" {
            INDEX_VARIABLES
                .iter()
                .find_map(|v| env(v).map(|value| (value, format!(" (from {v})"))))
                .ok_or_else(|| {
                    bad(format!(
                        "K is 'auto' but none of {} is set",
                        INDEX_VARIABLES.join(", ")
                    ))
                })?
        } else {
            (k.to_string(), String::new())
        };
        let index: usize = index_text
            .trim()
            .parse()
            .map_err(|_| bad(format!("'{index_text}'{from} is not a shard index")))?;
        if index >= count {
            return Err(bad(format!(
                "shard index {index}{from} is not below the shard count {count}"
            )));
        }
        Ok(ShardSpec { index, count })
    }

    /// Whether this shard holds `content_id`: its blake3 hash, taken as a number, modulo N.
    /// Depends on nothing but the id, so every worker agrees and shards never overlap.
    pub fn owns(&self, content_id: &str) -> bool {
        shard_of(content_id, self.count) == self.index
    }
}

/// The shard (0..n) of a content id.
pub fn shard_of(content_id: &str, n: usize) -> usize {
    let h = blake3::hash(content_id.as_bytes());
    let mut word = [0u8; 8];
    word.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(word) % n.max(1) as u64) as usize
}

/// Checks a run id: it names a folder, so a plain name.
pub fn check_run_id(run: &str) -> Result<(), ShardError> {
    let ok = !run.is_empty()
        && run.len() <= 100
        && !run.starts_with('.')
        && run
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ShardError::BadRunId(run.to_string()))
    }
}

/// The store folder holding every run's shard metadata.
pub const RUNS_DIR: &str = "_palpipe/runs";

/// The folder holding every run's shard metadata (a path or URI, for messages).
pub fn runs_dir(store: &Store) -> PathBuf {
    PathBuf::from(store.describe(RUNS_DIR))
}

/// The store file of one shard's metadata.
fn shard_rel(run: &str, spec: ShardSpec) -> String {
    format!(
        "{RUNS_DIR}/{run}/shard-{}-of-{}.json",
        spec.index, spec.count
    )
}

/// The metadata file of one shard of a run (a path or URI, for messages).
pub fn shard_path(store: &Store, run: &str, spec: ShardSpec) -> PathBuf {
    PathBuf::from(store.describe(&shard_rel(run, spec)))
}

/// What a worker staged: written last, so its presence means the shard is complete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardMetadata {
    pub run_id: String,
    pub shard: usize,
    pub shards: usize,
    pub table: String,
    /// The encoder whose vectors the shard holds (`None` when it holds no rows).
    pub encoder_id: Option<String>,
    pub rows: usize,
    /// The width of the shard's vectors (`None` when it holds no rows).
    #[serde(default)]
    pub dim: Option<usize>,
    /// The table's version the worker read the cache from (`None`: it did not exist).
    pub base_version: Option<u64>,
    /// Milliseconds since the Unix epoch, when the metadata was written.
    pub written_ms: i64,
    /// The uncommitted fragments, as Lance describes them.
    pub fragments: Vec<Fragment>,
}

/// Writes one shard's rows as uncommitted fragments of `embeddings`, then its metadata.
pub struct ShardWriter<'a> {
    store: &'a Store,
    run: String,
    spec: ShardSpec,
    base: Option<Arc<Dataset>>,
    fragments: Vec<Fragment>,
    rows: usize,
    dim: Option<usize>,
    encoder_id: Option<String>,
}

impl<'a> ShardWriter<'a> {
    /// A writer for shard `spec` of run `run`, reading the table as it is now.
    pub async fn new(
        store: &'a Store,
        run: &str,
        spec: ShardSpec,
    ) -> Result<ShardWriter<'a>, ShardError> {
        check_run_id(run)?;
        let base = store.dataset(TABLE, None).await?.map(Arc::new);
        Ok(ShardWriter {
            store,
            run: run.to_string(),
            spec,
            base,
            fragments: Vec::new(),
            rows: 0,
            dim: None,
            encoder_id: None,
        })
    }

    /// The shard this writer writes.
    pub fn spec(&self) -> ShardSpec {
        self.spec
    }

    /// The table as this writer read it (`None` when it does not exist yet).
    pub fn base(&self) -> Option<&Dataset> {
        self.base.as_deref()
    }

    /// Writes `batch` (rows of `embeddings`) as uncommitted fragments.
    pub async fn stage(&mut self, batch: RecordBatch, encoder_id: &str) -> Result<(), ShardError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if let Some(ds) = &self.base {
            check_vector_width(ds, &batch)?;
        }
        let rows = batch.num_rows();
        let dim = super::vector_width(&batch.schema());
        let written = match &self.base {
            Some(ds) => {
                let params = self.store.write_params(WriteMode::Append);
                InsertBuilder::new(ds.clone())
                    .with_params(&params)
                    .execute_uncommitted(vec![batch])
                    .await
            }
            None => {
                let params = self.store.write_params(WriteMode::Create);
                InsertBuilder::new(self.store.uri(TABLE).as_str())
                    .with_params(&params)
                    .execute_uncommitted(vec![batch])
                    .await
            }
        }
        .map_err(lance_err(TABLE))?;
        match written.operation {
            Operation::Append { fragments } | Operation::Overwrite { fragments, .. } => {
                self.fragments.extend(fragments)
            }
            other => {
                return Err(StoreError::Batch {
                    table: TABLE.into(),
                    message: format!("unexpected staged operation {}", other.name()),
                }
                .into())
            }
        }
        self.rows += rows;
        self.dim = self.dim.or(dim);
        self.encoder_id = Some(encoder_id.to_string());
        Ok(())
    }

    /// Writes the shard's metadata (replacing an earlier attempt's) and returns its path.
    pub async fn finish(self) -> Result<PathBuf, ShardError> {
        let meta = ShardMetadata {
            run_id: self.run.clone(),
            shard: self.spec.index,
            shards: self.spec.count,
            table: TABLE.into(),
            encoder_id: self.encoder_id,
            rows: self.rows,
            dim: self.dim,
            base_version: self.base.as_ref().map(|d| d.version_id()),
            written_ms: super::now_ms(),
            fragments: self.fragments,
        };
        let path = shard_path(self.store, &self.run, self.spec);
        let text = serde_json::to_string_pretty(&meta).map_err(|e| ShardError::BadMetadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        self.store
            .write_file(&shard_rel(&self.run, self.spec), text.as_bytes())
            .await?;
        Ok(path)
    }
}

/// What [`commit_run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// All shards published as this version of `embeddings`.
    Committed {
        version: u64,
        rows: usize,
        fragments: usize,
    },
    /// The run was committed before, as this version; nothing was done.
    AlreadyCommitted { version: u64 },
    /// Every shard was empty: nothing to commit, no version made.
    Empty,
}

/// The marker a committed run leaves beside its shards, so that the run is still known as
/// committed after `vacuum` has removed the version that carries its id.
fn committed_marker(run: &str) -> String {
    format!("{RUNS_DIR}/{run}/committed.json")
}

/// The version of `ds` whose transaction carries run id `run`, newest first.
pub async fn committed_version(ds: &Dataset, run: &str) -> Result<Option<u64>, StoreError> {
    let versions = ds.versions().await.map_err(lance_err(TABLE))?;
    for v in versions.iter().rev() {
        // A version whose transaction file was cleaned up says nothing either way.
        let Ok(Some(tx)) = ds.read_transaction_by_version(v.version).await else {
            continue;
        };
        let props = tx.transaction_properties.as_deref();
        if props.and_then(|p| p.get(RUN_PROPERTY)).map(String::as_str) == Some(run) {
            return Ok(Some(v.version));
        }
    }
    Ok(None)
}

/// Publishes every shard of run `run` as one new version of `embeddings`. See the module
/// documentation.
pub async fn commit_run(
    store: &Store,
    run: &str,
    shards: usize,
) -> Result<CommitOutcome, ShardError> {
    check_run_id(run)?;
    if shards == 0 {
        return Err(ShardError::BadSpec {
            spec: format!("--shards {shards}"),
            reason: "the shard count must be at least 1".into(),
        });
    }
    let latest = store.dataset(TABLE, None).await?.map(Arc::new);
    if let Some(ds) = &latest {
        if let Some(version) = committed_version(ds, run).await? {
            return Ok(CommitOutcome::AlreadyCommitted { version });
        }
    }
    if let Some(version) = read_marker(store, run).await? {
        return Ok(CommitOutcome::AlreadyCommitted { version });
    }
    let metas = read_shards(store, run, shards).await?;
    let fragments: Vec<Fragment> = metas.iter().flat_map(|m| m.fragments.clone()).collect();
    let rows: usize = metas.iter().map(|m| m.rows).sum();
    if fragments.is_empty() {
        return Ok(CommitOutcome::Empty);
    }
    let mut keys = HashSet::new();
    if let Some(ds) = &latest {
        // The table may have been created (by another encoder) after the shards were staged.
        check_width(ds, metas.iter().find_map(|m| m.dim))?;
        keys = refuse_stored(ds, run, &metas, &fragments, store).await?;
    }
    super::race_hook::pause("commit-checked").await;
    let mut props = HashMap::new();
    props.insert(RUN_PROPERTY.to_string(), run.to_string());
    props.insert("palpipe.shards".to_string(), shards.to_string());
    let props = Some(Arc::new(props));
    let count = fragments.len();
    // On object storage no lock serialises two commits of one run: the first to create
    // the claim (a conditional create) commits, the other is refused.
    let claim = format!("{RUNS_DIR}/{run}/commit-claim.json");
    if store.is_remote() {
        let text = serde_json::json!({"run_id": run, "pid": std::process::id(), "written_ms": super::now_ms()});
        if !store
            .create_file(&claim, text.to_string().as_bytes())
            .await?
        {
            if let Some(version) = read_marker(store, run).await? {
                return Ok(CommitOutcome::AlreadyCommitted { version });
            }
            return Err(ShardError::CommitInProgress {
                run: run.into(),
                claim: store.describe(&claim),
            });
        }
    }
    let done = publish(store, latest.as_ref(), &metas, run, fragments, props, &keys).await;
    let done = match done {
        Ok(d) => d,
        Err(e) => {
            if store.is_remote() {
                let _ = store.remove_file(&claim).await;
            }
            return Err(e);
        }
    };
    let version = done.version_id();
    store.record_commit(TABLE, version);
    let marker = serde_json::json!({"run_id": run, "version": version, "shards": shards});
    store
        .write_file(&committed_marker(run), marker.to_string().as_bytes())
        .await?;
    Ok(CommitOutcome::Committed {
        version,
        rows,
        fragments: count,
    })
}

/// Commits the shards' fragments: an addition to the table, or its first version.
///
/// The addition is keyed (`keyed.rs`: an `Update` carrying the filter of the `keys` it adds),
/// so that lance refuses it over a commit that stored one of its vectors since `latest`, the
/// version [`refuse_stored`] checked; a plain `Append` would be rebased over such a commit and
/// store the vector twice. On that refusal the keys added since are read: when one of the
/// run's is among them the run is refused ([`ShardError::AlreadyStored`]: re-run the shards),
/// otherwise (another writer's other keys, or the filter's false positive) it is tried again
/// at the newer version. Refusing, rather than rewriting the shards' fragments without those
/// rows, keeps the commit a pure publication of the files the shards wrote and described,
/// costs no rewrite of a run's every vector, and says the same as the check before the commit
/// when the same happened earlier.
/// A sharded commit that lost to other writers, with the hint that fits it (commit again;
/// the shards are kept), where a stage's would say to run the pipeline again.
fn lost(run: &str, metas: &[ShardMetadata], e: StoreError) -> ShardError {
    match e {
        StoreError::Concurrent { what, .. } => ShardError::CommitLost {
            run: run.to_string(),
            shards: metas.first().map_or(metas.len(), |m| m.shards),
            what,
        },
        other => other.into(),
    }
}

async fn publish(
    store: &Store,
    latest: Option<&Arc<Dataset>>,
    metas: &[ShardMetadata],
    run: &str,
    fragments: Vec<Fragment>,
    props: Option<Arc<HashMap<String, String>>>,
    keys: &HashSet<String>,
) -> Result<Dataset, ShardError> {
    let done = match latest {
        Some(ds) => {
            let mut added = keyed::AddedKeys::default();
            for k in keys {
                added.add(k.clone());
            }
            let mut seen = keyed::KeysSeen::at(Some(ds.as_ref()));
            let mut latest = ds.clone();
            let mut backoff = keyed::Backoff::new();
            loop {
                let taken = seen.catch_up(&latest, TABLE, None).await?;
                let clash: Vec<&String> = keys.iter().filter(|k| taken.contains(*k)).collect();
                if let Some(first) = clash.iter().min() {
                    return Err(ShardError::AlreadyStored {
                        run: run.into(),
                        count: clash.len(),
                        first: first.split('\u{1f}').next().unwrap_or("").to_string(),
                        dir: runs_dir(store).join(run),
                    });
                }
                let op = keyed::keyed_update(
                    fragments.clone(),
                    Vec::new(),
                    Vec::new(),
                    added.filter(&latest, TABLE)?,
                );
                let tx = TransactionBuilder::new(latest.version_id(), op)
                    .transaction_properties(props.clone())
                    .build();
                match CommitBuilder::new(latest.clone()).execute(tx).await {
                    Ok(d) => break d,
                    Err(e) if keyed::lost_to_another_writer(&e) => {
                        match keyed::after_lost_try(store, TABLE, &mut backoff).await? {
                            Some(d) => latest = d,
                            None => {
                                return Err(lost(run, metas, keyed::tries_spent(TABLE, &backoff)))
                            }
                        }
                    }
                    Err(e) => return Err(lost(run, metas, super::commit_err(TABLE)(e))),
                }
            }
        }
        None => {
            // The table is new: the shards' fragments become its first version, with the
            // schema a creating write of these rows gets.
            let dim = vector_width_of(metas, store, run)?;
            let schema = TableSchema::get(TABLE)?.arrow(Some(dim))?;
            let params = store.write_params(WriteMode::Create);
            let template = InsertBuilder::new(store.uri(TABLE).as_str())
                .with_params(&params)
                .execute_uncommitted(vec![RecordBatch::new_empty(schema)])
                .await
                .map_err(lance_err(TABLE))?;
            let op = match template.operation {
                Operation::Overwrite {
                    schema,
                    config_upsert_values,
                    initial_bases,
                    ..
                } => Operation::Overwrite {
                    fragments,
                    schema,
                    config_upsert_values,
                    initial_bases,
                },
                other => {
                    return Err(StoreError::Batch {
                        table: TABLE.into(),
                        message: format!("unexpected creating operation {}", other.name()),
                    }
                    .into())
                }
            };
            let tx = TransactionBuilder::new(0, op)
                .transaction_properties(props)
                .build();
            let uri = store.uri(TABLE);
            match store.commit_to_uri(&uri).execute(tx).await {
                Ok(d) => d,
                Err(e) => return Err(store.creation_err(TABLE, e).await.into()),
            }
        }
    };
    Ok(done)
}

/// The version a committed run's marker names, if it has one.
async fn read_marker(store: &Store, run: &str) -> Result<Option<u64>, StoreError> {
    let Some(bytes) = store.read_file(&committed_marker(run)).await? else {
        return Ok(None);
    };
    let v: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    Ok(v.and_then(|v| v["version"].as_u64()))
}

/// Whether run `run` has been committed (by the table's history or its marker).
pub async fn is_committed(store: &Store, run: &str) -> Result<bool, StoreError> {
    if read_marker(store, run).await?.is_some() {
        return Ok(true);
    }
    match store.dataset(TABLE, None).await? {
        Some(ds) => Ok(committed_version(&ds, run).await?.is_some()),
        None => Ok(false),
    }
}

/// The metadata of shards 0..n of `run`, each checked against its name; refuses missing
/// shards (naming them all) and shard files of another count.
async fn read_shards(store: &Store, run: &str, n: usize) -> Result<Vec<ShardMetadata>, ShardError> {
    let dir_rel = format!("{RUNS_DIR}/{run}");
    let dir = PathBuf::from(store.describe(&dir_rel));
    let entries = store.list_dir(&dir_rel).await?;
    {
        for e in entries.iter().filter(|e| !e.is_dir) {
            let name = e.name.clone();
            let other = name
                .strip_suffix(".json")
                .and_then(|s| s.rsplit_once("-of-"))
                .and_then(|(_, m)| m.parse::<usize>().ok());
            if let Some(other) = other.filter(|m| *m != n) {
                return Err(ShardError::OtherShardCount {
                    run: run.into(),
                    shards: n,
                    other,
                    path: dir.join(&name),
                    dir: dir.clone(),
                });
            }
        }
    }
    let paths: Vec<PathBuf> = (0..n)
        .map(|k| shard_path(store, run, ShardSpec { index: k, count: n }))
        .collect();
    let names: HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let missing: Vec<usize> = (0..n)
        .filter(|k| !names.contains(format!("shard-{k}-of-{n}.json").as_str()))
        .collect();
    if let Some(first) = missing.first() {
        let list: Vec<String> = missing.iter().map(usize::to_string).collect();
        let which = match list.len() {
            1 => format!("shard {}", list[0]),
            _ => format!("shards {}", list.join(", ")),
        };
        return Err(ShardError::MissingShards {
            run: run.into(),
            shards: n,
            which,
            first_path: paths[*first].clone(),
        });
    }
    let mut out = Vec::with_capacity(n);
    let mut encoder: Option<String> = None;
    for (k, path) in paths.iter().enumerate() {
        let bad = |reason: String| ShardError::BadMetadata {
            path: path.clone(),
            reason,
        };
        let rel = shard_rel(run, ShardSpec { index: k, count: n });
        let bytes = store
            .read_file(&rel)
            .await?
            .ok_or_else(|| bad("it is gone".into()))?;
        let meta: ShardMetadata = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if meta.run_id != run || meta.shard != k || meta.shards != n || meta.table != TABLE {
            return Err(bad(format!(
                "it describes shard {}/{} of run '{}' (table '{}')",
                meta.shard, meta.shards, meta.run_id, meta.table
            )));
        }
        match (&encoder, &meta.encoder_id) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad(format!(
                    "its vectors are from encoder '{b}', another shard's from '{a}'"
                )))
            }
            (None, Some(b)) => encoder = Some(b.clone()),
            _ => {}
        }
        out.push(meta);
    }
    Ok(out)
}

/// The vector width the shards wrote (every shard of a run has one encoder).
fn vector_width_of(metas: &[ShardMetadata], store: &Store, run: &str) -> Result<usize, ShardError> {
    metas
        .iter()
        .find_map(|m| m.dim)
        .ok_or_else(|| ShardError::BadMetadata {
            path: runs_dir(store).join(run),
            reason: "no shard records the width of its vectors".into(),
        })
}

/// Refuses the commit when a content id the shards staged is stored in `ds` already for
/// their encoder (another run committed it since), or staged twice. Returns the keys of the
/// staged rows (content id and encoder, as the table's key joins them).
async fn refuse_stored(
    ds: &Arc<Dataset>,
    run: &str,
    metas: &[ShardMetadata],
    fragments: &[Fragment],
    store: &Store,
) -> Result<HashSet<String>, ShardError> {
    let mut keys = HashSet::new();
    let Some(encoder) = metas.iter().find_map(|m| m.encoder_id.clone()) else {
        return Ok(keys);
    };
    let filter = format!("encoder_id = {}", super::sql_str(&encoder));
    let mut stored = HashSet::new();
    let mut scan = ds.scan();
    scan.project(&["content_id"]).map_err(lance_err(TABLE))?;
    scan.filter(&filter).map_err(lance_err(TABLE))?;
    let mut stream = scan.try_into_stream().await.map_err(lance_err(TABLE))?;
    while let Some(b) = stream.try_next().await.map_err(lance_err(TABLE))? {
        if let Some(a) = b.column(0).as_any().downcast_ref::<StringArray>() {
            stored.extend((0..a.len()).map(|i| a.value(i).to_string()));
        }
    }
    let mut seen = HashSet::new();
    let (mut count, mut first) = (0usize, None);
    for f in fragments {
        let frag = FileFragment::new(ds.clone(), f.clone());
        let mut scan = frag.scan();
        scan.project(&["content_id", "encoder_id"])
            .map_err(lance_err(TABLE))?;
        let batches: Vec<RecordBatch> = scan
            .try_into_stream()
            .await
            .map_err(lance_err(TABLE))?
            .try_collect()
            .await
            .map_err(lance_err(TABLE))?;
        for b in batches {
            let arrays = key_columns(&b, &["content_id", "encoder_id"])?;
            let a = arrays[0];
            for i in 0..a.len() {
                keys.insert(join_key(&arrays, i));
                let id = a.value(i);
                if stored.contains(id) || !seen.insert(id.to_string()) {
                    count += 1;
                    first.get_or_insert_with(|| id.to_string());
                }
            }
        }
    }
    match first {
        None => Ok(keys),
        Some(first) => Err(ShardError::AlreadyStored {
            run: run.into(),
            count,
            first,
            dir: runs_dir(store).join(run),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn shard_specs_parse_from_flags_and_scheduler_variables() {
        assert_eq!(
            ShardSpec::parse("2/4", env(&[])).unwrap(),
            ShardSpec { index: 2, count: 4 }
        );
        let slurm = [("SLURM_ARRAY_TASK_ID", "3")];
        assert_eq!(ShardSpec::parse("auto/4", env(&slurm)).unwrap().index, 3);
        let k8s = [("JOB_COMPLETION_INDEX", "1")];
        assert_eq!(ShardSpec::parse("auto/2", env(&k8s)).unwrap().index, 1);
        for (spec, vars, says) in [
            ("4/4", &[][..], "not below the shard count 4"),
            ("1/0", &[][..], "at least 1"),
            ("x/2", &[][..], "'x' is not a shard index"),
            ("2", &[][..], "expected K/N"),
            ("auto/2", &[][..], "none of SLURM_ARRAY_TASK_ID"),
            (
                "auto/2",
                &[("SLURM_ARRAY_TASK_ID", "5")][..],
                "(from SLURM_ARRAY_TASK_ID)",
            ),
        ] {
            let e = ShardSpec::parse(spec, env(vars)).unwrap_err().to_string();
            assert!(e.contains(says), "{spec}: {e}");
            assert!(e.contains("hint:"), "{e}");
        }
    }

    #[test]
    fn every_id_falls_in_exactly_one_shard() {
        let n = 4;
        let mut sizes = [0usize; 4];
        for i in 0..400 {
            let id = format!("content-{i}");
            let owners: Vec<usize> = (0..n)
                .filter(|k| {
                    ShardSpec {
                        index: *k,
                        count: n,
                    }
                    .owns(&id)
                })
                .collect();
            assert_eq!(owners.len(), 1, "{id}: {owners:?}");
            sizes[owners[0]] += 1;
        }
        // A hash spreads 400 ids over 4 shards; none is starved (expected 100 each).
        assert!(sizes.iter().all(|s| *s > 50), "{sizes:?}");
    }

    #[test]
    fn run_ids_are_plain_names() {
        for ok in ["r1", "2026-11-30.a_b"] {
            check_run_id(ok).unwrap();
        }
        for bad in ["", "../x", ".hidden", "a/b", "a b"] {
            assert!(check_run_id(bad).is_err(), "{bad:?}");
        }
    }
}
