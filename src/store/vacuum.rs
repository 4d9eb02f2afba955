//! `vacuum`: removes what no table version needs: data files never committed (a failed
//! stage's, a killed or abandoned shard's) and old versions past a retention.
//!
//! Two passes per table. First, data files that no version's manifest references and that are
//! older than `uncommitted_older_than`, except those a pending sharded run (see
//! `shards.rs`) still lists: such a run's files are kept until its newest shard metadata is
//! older than the same age, and then the run is abandoned — its folder goes with its files.
//! Second, Lance's own cleanup of versions older than `versions_older_than` (never the latest),
//! which also removes the files only those versions used. Listing and deleting go through the
//! table's object store, so the same code serves a local folder and a bucket.

use std::collections::HashSet;
use std::time::Duration;

use futures::TryStreamExt;
use lance::dataset::cleanup::CleanupPolicyBuilder;

use super::shards::{self, ShardMetadata};
use super::{lance_err, Store, StoreError, TABLES};

/// What to remove.
#[derive(Debug, Clone, Copy)]
pub struct VacuumOptions {
    /// Unreferenced data files (and abandoned runs) older than this are removed.
    pub uncommitted_older_than: Duration,
    /// Versions older than this are removed (the latest version always stays).
    pub versions_older_than: Duration,
    /// Count what would be removed and remove nothing.
    pub dry_run: bool,
}

/// What one table gave up.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableVacuum {
    pub table: String,
    /// Data files no version references (never committed).
    pub uncommitted_files: u64,
    pub uncommitted_bytes: u64,
    /// Versions removed by Lance's cleanup, and the files and bytes that went with them.
    pub old_versions: u64,
    pub version_files: u64,
    pub version_bytes: u64,
}

/// What a vacuum removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VacuumReport {
    pub tables: Vec<TableVacuum>,
    /// Sharded runs never committed whose metadata was older than the age given.
    pub abandoned_runs: Vec<String>,
}

/// A sharded run found under `_palpipe/runs`.
struct RunFolder {
    name: String,
    /// Its folder in the store.
    dir: String,
    /// The data files its shards list.
    files: HashSet<String>,
    /// The newest shard metadata's age.
    newest_age: Option<Duration>,
}

/// Removes what no version needs; see the module documentation.
pub async fn vacuum(store: &Store, opts: VacuumOptions) -> Result<VacuumReport, StoreError> {
    let mut report = VacuumReport::default();
    // Pending runs: a young one protects its files; an old one is abandoned.
    let mut protected: HashSet<String> = HashSet::new();
    for run in pending_runs(store).await? {
        let young = run
            .newest_age
            .is_none_or(|age| age < opts.uncommitted_older_than);
        if young {
            protected.extend(run.files);
        } else {
            if !opts.dry_run {
                store.remove_dir(&run.dir).await?;
            }
            report.abandoned_runs.push(run.name);
        }
    }
    for table in TABLES {
        let Some(ds) = store.dataset(table, None).await? else {
            continue;
        };
        let mut t = TableVacuum {
            table: table.to_string(),
            ..Default::default()
        };
        // Every file any version still references.
        let mut referenced: HashSet<String> = HashSet::new();
        for v in ds.versions().await.map_err(lance_err(table))? {
            let at = ds
                .checkout_version(v.version)
                .await
                .map_err(lance_err(table))?;
            for f in at.fragments().iter() {
                referenced.extend(f.files.iter().map(|d| file_name(&d.path)));
            }
        }
        let objects = ds.object_store(None).await.map_err(lance_err(table))?;
        let data_dir = ds.data_dir();
        let cutoff = ago(opts.uncommitted_older_than);
        let listed: Vec<_> = objects
            .read_dir_all(&data_dir, None)
            .try_collect()
            .await
            .map_err(lance_err(table))?;
        for meta in listed {
            let name = file_name(meta.location.as_ref());
            if referenced.contains(&name)
                || protected.contains(&name)
                || meta.last_modified >= cutoff
            {
                continue;
            }
            if !opts.dry_run {
                objects
                    .delete(&meta.location)
                    .await
                    .map_err(lance_err(table))?;
            }
            t.uncommitted_files += 1;
            t.uncommitted_bytes += meta.size;
        }
        // Old versions, through Lance.
        let before = ago(opts.versions_older_than);
        let policy = CleanupPolicyBuilder::default()
            .before_timestamp(before)
            .build();
        let stats = if opts.dry_run {
            ds.cleanup(policy)
                .explain()
                .await
                .map_err(lance_err(table))?
                .stats
        } else {
            ds.cleanup(policy)
                .execute()
                .await
                .map_err(lance_err(table))?
        };
        t.old_versions = stats.old_versions;
        t.version_files = stats.data_files_removed
            + stats.transaction_files_removed
            + stats.index_files_removed
            + stats.deletion_files_removed;
        t.version_bytes = stats.bytes_removed;
        report.tables.push(t);
    }
    Ok(report)
}

/// The moment `age` ago (the beginning of time when that is before it).
fn ago(age: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::TimeDelta::from_std(age)
        .ok()
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

/// The last part of a path: data files are named by a unique id, so the name alone tells
/// them apart whatever prefix a listing or a manifest gives them.
fn file_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// The runs under `_palpipe/runs` that are not committed, with the files their shards list.
async fn pending_runs(store: &Store) -> Result<Vec<RunFolder>, StoreError> {
    let mut out = Vec::new();
    for e in store.list_dir(shards::RUNS_DIR).await? {
        let name = e.name;
        if !e.is_dir || shards::is_committed(store, &name).await? {
            continue;
        }
        let dir = format!("{}/{name}", shards::RUNS_DIR);
        let mut run = RunFolder {
            name,
            dir: dir.clone(),
            files: HashSet::new(),
            newest_age: None,
        };
        for f in store.list_dir(&dir).await? {
            if f.is_dir {
                continue;
            }
            let age = f
                .modified
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            run.newest_age = Some(run.newest_age.map_or(age, |a| a.min(age)));
            // A metadata file that does not parse protects nothing but still counts as recent.
            let Ok(Some(bytes)) = store.read_file(&format!("{dir}/{}", f.name)).await else {
                continue;
            };
            if let Ok(meta) = serde_json::from_slice::<ShardMetadata>(&bytes) {
                for frag in &meta.fragments {
                    run.files
                        .extend(frag.files.iter().map(|d| file_name(&d.path)));
                }
            }
        }
        out.push(run);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
