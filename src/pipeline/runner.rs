//! Runs a validated pipeline against a store: one stage at a time, in file order.
//!
//! Each stage has a fingerprint (blake3 of its kind, its typed parameters, the contents of
//! its input files (size and modification time for files over 256 MiB) and the versions of
//! the tables it reads, or for stages that rewrite part of a table they read, the content of
//! that part). A stage whose fingerprint matches its last successful run in this pipeline,
//! before or after that run, is skipped, unless a model or model metric it owns has been
//! replaced since by a command outside the pipeline (`palpipe train`, `eval`, `adapt` by
//! hand): then it runs again, so that the store ends as a fresh run leaves it. Stages stage
//! their rows and commit each table once at their end, so a failing stage mostly leaves
//! nothing to undo; what this process did commit during a failed stage is rolled back, table
//! by table, unless another writer committed to that table in between (its commit is kept,
//! and the failure says so). The run stops there; it is recorded in `runs` either way, with
//! the error text.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::kinds::StageCtx;
use super::progress::Printer;
use super::spec::{Pipeline, Stage};
use crate::store::batches::{self, RunRow, SplitRow};
use crate::store::{now_ms, sql, Store, StoreError};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stages to rerun even when unchanged.
    pub force: Vec<String>,
    pub dry_run: bool,
}

/// What happened to one stage in one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub fingerprint: String,
    /// The fingerprint again after the stage ran, for stages that write tables they read
    /// (`dedup`, `pick_a_filter`): the state it left counts as unchanged too.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint_after: String,
    /// A digest of the models and metrics the stage owns, as its run left them
    /// (`owned_digest`); empty for stages that own neither, and in records of earlier
    /// versions (not checked until the stage runs again).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owned: String,
    /// done | skipped | failed | not-run | planned
    pub status: String,
    #[serde(default)]
    pub seconds: f64,
    #[serde(default)]
    pub summary: String,
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: String,
    pub pipeline: String,
    pub stages: Vec<StageRecord>,
    pub error: Option<String>,
}

/// Errors that stop a run before or while it works.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration found before any work (exit code 2).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs `p` on `store`. A failed stage is reported in the returned record (and `error`),
/// not as an `Err`: the run itself was recorded.
pub async fn run(
    p: &Pipeline,
    store: &Store,
    opts: &RunOptions,
    printer: Printer,
) -> Result<RunReport, RunError> {
    for f in &opts.force {
        if !p.stages.iter().any(|s| &s.name == f) {
            return Err(RunError::Invalid(format!(
                "--force names stage '{f}', which this pipeline does not have"
            )));
        }
    }
    let _lock = if opts.dry_run {
        None
    } else {
        Some(store.lock()?)
    };
    check_references(p, store).await?;
    if !opts.dry_run {
        // A store an earlier version wrote gets today's schema first, whichever stages run
        // (a re-run that skips every stage still ends as a fresh run would).
        // Said even when quiet: the store changed.
        if let Some(done) = crate::store::migrate::upgrade(store, "pairs").await? {
            printer.warn(done.to_string());
        }
    }
    let started = now_ms();
    let run_id = format!("{}-{}", p.name, started);
    let versions_before = store.versions().await?;
    let previous = last_fingerprints(store, &p.name).await?;

    if !opts.dry_run {
        save_splits(p, store).await?;
    }
    let mut records = Vec::new();
    let mut error = None;
    // What the stages planned so far in a dry run will make (see `StageKind::makes`), the
    // models they train and the tables whose rows they own.
    let mut planned_makes: Vec<std::path::PathBuf> = Vec::new();
    let mut planned_models: Vec<String> = Vec::new();
    let mut planned_tables: Vec<&str> = Vec::new();
    // A dry run checks every stage, so that one pass names every stage that would fail.
    let mut dry_failures: Vec<String> = Vec::new();
    for stage in &p.stages {
        let kind = stage.params.kind().to_string();
        let fp = fingerprint(stage, store, &p.splits).await?;
        let last = previous.get(&stage.name);
        let known = last.is_some_and(|last| last.fingerprints.contains(&fp));
        // A stage otherwise unchanged whose model or metric a command outside this pipeline
        // replaced (`palpipe train`, `eval` or `adapt` by hand) runs again, so that the store
        // ends as a fresh run of the pipeline leaves it.
        let replaced = match last {
            Some(last) if known && !last.owned.is_empty() => {
                owned_digest(stage, store).await? != last.owned
            }
            _ => false,
        };
        // A dry run does not run the stages it plans, so what they would change is not in
        // the fingerprints of the stages after them: a model a planned stage trains, the
        // rows a planned ingest or transform writes, the vectors a planned `embed` adds.
        let reads_planned = (stage.params.model_refs().iter())
            .any(|(_, model)| planned_models.contains(model))
            || (stage.params.reads().iter()).any(|t| planned_tables.contains(t))
            || (stage.params.read_scopes().iter()).any(|r| planned_tables.contains(&r.table));
        let after_planned = opts.dry_run && reads_planned;
        let unchanged = known && !replaced && !after_planned && !opts.force.contains(&stage.name);
        let mut rec = StageRecord {
            name: stage.name.clone(),
            kind,
            fingerprint: fp,
            fingerprint_after: String::new(),
            owned: String::new(),
            status: String::new(),
            seconds: 0.0,
            summary: String::new(),
        };
        if error.is_some() {
            rec.status = "not-run".into();
        } else if unchanged {
            rec.status = "skipped".into();
            rec.summary = "unchanged since its last run".into();
        } else if opts.dry_run {
            // Files an earlier stage of this plan makes are not there yet (or not as they
            // will be): a stage reading them is planned unchecked.
            let made_by_the_plan = (stage.params.inputs().iter())
                .any(|(_, input)| planned_makes.iter().any(|m| input.starts_with(m)));
            planned_makes.extend(stage.params.makes());
            let checked = match made_by_the_plan {
                true => Ok(()),
                false => stage.params.dry_check(),
            };
            match checked {
                Ok(()) => {
                    rec.status = "planned".into();
                    rec.summary = stage.params.describe();
                    if replaced {
                        rec.summary.push_str(&format!(
                            " ({} changed outside this pipeline since its last run)",
                            owned_names(stage)
                        ));
                    } else if after_planned && known {
                        rec.summary
                            .push_str(" (it reads what a stage planned before it may change)");
                    }
                    planned_tables.extend(stage.params.appends());
                    for scope in stage.params.owns(&stage.name) {
                        use super::kinds::Scope;
                        match scope {
                            Scope::Model(name) => planned_models.push(name),
                            Scope::Dataset(_) => {
                                planned_tables.extend(["pairs", "users", "items", "prompts"])
                            }
                            Scope::SplitTags { .. } => planned_tables.push("pairs"),
                            Scope::ModelMetric { .. } | Scope::Folder(_) => {}
                        }
                    }
                }
                Err(e) => {
                    rec.status = "failed".into();
                    let msg = format!(
                        "stage '{}' ({}) would fail: {}",
                        stage.name,
                        rec.kind,
                        crate::store::messages::error_chain(&e)
                    );
                    rec.summary = msg.clone();
                    dry_failures.push(msg);
                }
            }
        } else {
            if replaced {
                printer.status(format!(
                    "stage '{}': {} changed outside this pipeline since its last run; running it again",
                    stage.name,
                    owned_names(stage)
                ));
            }
            printer.status(format!("stage '{}' ({}) …", stage.name, rec.kind));
            let before = store.versions().await?;
            let t = Instant::now();
            let ctx = StageCtx {
                store,
                pipeline: p,
                stage_name: &stage.name,
                run_id: &run_id,
                printer,
            };
            let result = stage.params.run(&ctx).await;
            rec.seconds = t.elapsed().as_secs_f64();
            match result {
                Ok(summary) => {
                    rec.status = "done".into();
                    rec.summary = summary;
                    if replaced {
                        rec.summary.push_str(&format!(
                            " (run again: {} changed outside this pipeline)",
                            owned_names(stage)
                        ));
                    }
                    if !stage.params.reads().is_empty() || !stage.params.read_scopes().is_empty() {
                        let after = fingerprint(stage, store, &p.splits).await?;
                        if after != rec.fingerprint {
                            rec.fingerprint_after = after;
                        }
                    }
                }
                Err(e) => {
                    let undo = store.roll_back(&before).await?;
                    rec.status = "failed".into();
                    let mut msg = format!(
                        "stage '{}' ({}) failed: {}",
                        stage.name,
                        rec.kind,
                        crate::store::messages::error_chain(&e)
                    );
                    for kept in &undo.kept {
                        msg.push_str(&format!("\nwarning: {kept}"));
                    }
                    rec.summary = msg.clone();
                    error = Some(msg);
                }
            }
        }
        records.push(rec);
    }
    if error.is_none() {
        error = dry_run_error(&dry_failures);
    }
    if !opts.dry_run {
        // What each stage that ran owns, as the whole run left it (a later stage may rewrite
        // a row an earlier one owns part of: two stages' metrics of one model).
        // A store that cannot be read now leaves the digest empty (not checked next run)
        // rather than the run unrecorded.
        for (stage, rec) in p.stages.iter().zip(records.iter_mut()) {
            if rec.status == "done" {
                match owned_digest(stage, store).await {
                    Ok(digest) => rec.owned = digest,
                    Err(e) => printer.warn(format!(
                        "stage '{}': could not read its model or metric back ({e}); the next run does not check them",
                        stage.name
                    )),
                }
            }
        }
        let versions_after = store.versions().await?;
        let row = RunRow {
            run_id: run_id.clone(),
            pipeline: p.name.clone(),
            pipeline_file: Some(p.file.display().to_string()),
            started_ms: started,
            finished_ms: now_ms(),
            outcome: if error.is_some() {
                "failed".into()
            } else {
                "ok".into()
            },
            error: error.clone(),
            stages_json: serde_json::to_string(&records).unwrap_or_default(),
            versions_before_json: serde_json::to_string(&versions_before).unwrap_or_default(),
            versions_after_json: serde_json::to_string(&versions_after).unwrap_or_default(),
        };
        store.append("runs", batches::runs(&[row])?).await?;
    }
    Ok(RunReport {
        run_id,
        pipeline: p.name.clone(),
        stages: records,
        error,
    })
}

/// The error of a dry run from the messages of the stages that would fail, in plan order:
/// one stage's message as it is; several under a line that counts them, so that the first
/// line says how many and each stage's message (with its `hint:` lines) follows.
fn dry_run_error(failures: &[String]) -> Option<String> {
    match failures {
        [] => None,
        [one] => Some(one.clone()),
        many => Some(format!(
            "{} stages would fail\n{}",
            many.len(),
            many.join("\n")
        )),
    }
}

/// blake3 of the stage's kind, typed parameters, input file contents and read versions.
async fn fingerprint(
    stage: &Stage,
    store: &Store,
    pipeline_splits: &BTreeMap<String, String>,
) -> Result<String, RunError> {
    let mut h = blake3::Hasher::new();
    h.update(stage.params.kind().as_bytes());
    h.update(format!("{:?}", stage.params).as_bytes());
    // Only a backend other than candle's own enters, so that the plain build's
    // fingerprints stay what they were before backends were told apart.
    if stage.params.uses_numeric_backend() && crate::NUMERIC_BACKEND != "candle" {
        h.update(format!("numeric backend {};", crate::NUMERIC_BACKEND).as_bytes());
    }
    for (_, path) in stage.params.inputs() {
        h.update(path.to_string_lossy().as_bytes());
        hash_path(&mut h, &path)?;
    }
    // What the stage makes: deleting it (or changing it) makes the stage run again.
    for path in stage.params.makes() {
        h.update(format!("makes {} exists={};", path.display(), path.exists()).as_bytes());
        hash_path(&mut h, &path)?;
    }
    let versions = store.versions().await?;
    for t in stage.params.reads() {
        h.update(format!("{t}={:?};", versions.get(*t)).as_bytes());
    }
    for scope in stage.params.read_scopes() {
        let (table, predicate) = (scope.table, &scope.predicate);
        h.update(format!("scope {table} WHERE {predicate};").as_bytes());
        let mut rows: Vec<String> = Vec::new();
        for b in store.read(table, scope.columns, Some(predicate)).await? {
            let cols: Vec<&arrow_array::StringArray> = (0..b.num_columns())
                .filter_map(|i| b.column(i).as_any().downcast_ref())
                .collect();
            for i in 0..b.num_rows() {
                rows.push(
                    cols.iter()
                        .map(|c| c.value(i))
                        .collect::<Vec<_>>()
                        .join("\u{1f}"),
                );
            }
        }
        // Storage order changes when rows are rewritten; the content does not.
        rows.sort_unstable();
        for r in rows {
            h.update(r.as_bytes());
            h.update(b"\n");
        }
    }
    let splits = stored_splits(store).await?;
    for (_, split) in stage.params.split_refs() {
        let sql = pipeline_splits.get(&split).or_else(|| splits.get(&split));
        h.update(format!("split {split}={sql:?};").as_bytes());
    }
    // A model is identified by when it was trained, not by the version of `models`
    // (evaluations record their metrics there, which must not make them rerun).
    for (_, model) in stage.params.model_refs() {
        let trained = match super::pal_stages::ModelEntry::find(store, &model).await {
            Ok(m) => format!("{}@{}", m.row.checkpoint, m.row.created_ms),
            Err(_) => "absent".to_string(),
        };
        h.update(format!("model {model}={trained};").as_bytes());
    }
    Ok(h.finalize().to_hex()[..32].to_string())
}

/// A digest of the models and model metrics a stage owns, as the store holds them now: each
/// owned model's checkpoint and training time, each owned metric's recorded value (numbers to
/// 10 significant digits, so that a value re-read and re-written by a later metric's write
/// digests alike). Empty when the stage owns neither. Rows of datasets are not digested
/// (reading every pair of a dataset on each run would cost as much as the stage).
async fn owned_digest(stage: &Stage, store: &Store) -> Result<String, RunError> {
    use super::kinds::Scope;
    use super::pal_stages::ModelEntry;
    let mut h = blake3::Hasher::new();
    let mut any = false;
    for scope in stage.params.owns(&stage.name) {
        let part = match &scope {
            Scope::Model(name) => match ModelEntry::lookup(store, name).await? {
                Some(m) => format!("model {name}={}@{};", m.row.checkpoint, m.row.created_ms),
                None => format!("model {name} absent;"),
            },
            Scope::ModelMetric { model, key } => {
                let value = ModelEntry::lookup(store, model)
                    .await?
                    .and_then(|m| m.row.metrics_json)
                    .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
                    .and_then(|v| v.get(key).map(canonical_json));
                format!("metric {model}/{key}={value:?};")
            }
            _ => continue,
        };
        any = true;
        h.update(part.as_bytes());
    }
    Ok(if any {
        h.finalize().to_hex()[..32].to_string()
    } else {
        String::new()
    })
}

/// `v` as text with every number written to 10 significant digits (keys in order, as
/// serde_json's maps keep them sorted).
fn canonical_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() => format!("{x:.9e}"),
            _ => n.to_string(),
        },
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", parts.join(","))
        }
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k:?}:{}", canonical_json(v)))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        other => other.to_string(),
    }
}

/// The models and metrics `owned_digest` covers, for a message: "model 'm'", "metric
/// 'adapt:u' of model 'm'".
fn owned_names(stage: &Stage) -> String {
    use super::kinds::Scope;
    let names: Vec<String> = stage
        .params
        .owns(&stage.name)
        .iter()
        .filter_map(|scope| match scope {
            Scope::Model(name) => Some(format!("model '{name}'")),
            Scope::ModelMetric { model, key } => Some(format!("metric '{key}' of model '{model}'")),
            _ => None,
        })
        .collect();
    names.join(", ")
}

/// What a stage's latest successful run in a pipeline left: its fingerprints (before, and
/// after where it differs) and the digest of its models and metrics (`owned_digest`).
#[derive(Debug)]
struct LastRun {
    fingerprints: Vec<String>,
    owned: String,
}

/// Files above this size enter a fingerprint by size and modification time, not content:
/// hashing hundreds of GB of image shards on every run would cost minutes.
const HASH_CONTENT_UP_TO: u64 = 256 << 20;

fn hash_file(h: &mut blake3::Hasher, path: &std::path::Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.len() > HASH_CONTENT_UP_TO {
        let mtime = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.update(format!("size={} mtime={mtime};", meta.len()).as_bytes());
    } else {
        h.update_reader(std::fs::File::open(path)?)?;
    }
    Ok(())
}

fn hash_path(h: &mut blake3::Hasher, path: &std::path::Path) -> Result<(), RunError> {
    let io = |e: std::io::Error| {
        RunError::Invalid(format!("cannot read input '{}': {e}", path.display()))
    };
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            if e.is_file() {
                h.update(e.to_string_lossy().as_bytes());
                hash_file(h, &e).map_err(io)?;
            }
        }
    } else if path.is_file() {
        hash_file(h, path).map_err(io)?;
    }
    Ok(())
}

/// The fingerprints (before, and after where it differs) of each stage's latest successful
/// run in pipeline `name`.
async fn last_fingerprints(
    store: &Store,
    name: &str,
) -> Result<BTreeMap<String, LastRun>, RunError> {
    use arrow_array::{Array, Int64Array, StringArray};
    let filter = format!("pipeline = '{}'", name.replace('\'', "''"));
    let mut rows: Vec<(i64, String)> = Vec::new();
    for b in store
        .read("runs", &["started_ms", "stages_json"], Some(&filter))
        .await?
    {
        let t = b.column(0).as_any().downcast_ref::<Int64Array>();
        let s = b.column(1).as_any().downcast_ref::<StringArray>();
        if let (Some(t), Some(s)) = (t, s) {
            for i in 0..b.num_rows() {
                if !s.is_null(i) {
                    rows.push((t.value(i), s.value(i).to_string()));
                }
            }
        }
    }
    rows.sort_by_key(|r| r.0);
    let mut out = BTreeMap::new();
    for (_, json) in rows {
        let recs: Vec<StageRecord> = serde_json::from_str(&json).unwrap_or_default();
        for r in recs {
            if r.status == "done" {
                let mut fingerprints = vec![r.fingerprint];
                if !r.fingerprint_after.is_empty() {
                    fingerprints.push(r.fingerprint_after);
                }
                let owned = r.owned;
                out.insert(
                    r.name,
                    LastRun {
                        fingerprints,
                        owned,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// Saves the pipeline's splits that are new or changed (so an unchanged rerun writes nothing).
async fn save_splits(p: &Pipeline, store: &Store) -> Result<(), RunError> {
    let stored = stored_splits(store).await?;
    let now = now_ms();
    let changed: Vec<SplitRow> = p
        .splits
        .iter()
        .filter(|(n, q)| stored.get(*n) != Some(*q))
        .map(|(n, q)| SplitRow {
            name: n,
            sql: q,
            pipeline: Some(&p.name),
            created_ms: now,
        })
        .collect();
    if !changed.is_empty() {
        store.upsert("splits", batches::splits(&changed)?).await?;
    }
    Ok(())
}

/// name → SQL of every split in the store.
pub async fn stored_splits(store: &Store) -> Result<BTreeMap<String, String>, StoreError> {
    use arrow_array::{Array, StringArray};
    let mut out = BTreeMap::new();
    for b in store.read("splits", &["name", "sql"], None).await? {
        let n = b.column(0).as_any().downcast_ref::<StringArray>();
        let q = b.column(1).as_any().downcast_ref::<StringArray>();
        if let (Some(n), Some(q)) = (n, q) {
            for i in 0..b.num_rows() {
                out.insert(n.value(i).to_string(), q.value(i).to_string());
            }
        }
    }
    Ok(out)
}

/// Splits named by stages exist (in the pipeline or the store), and split SQL plans
/// against the tables; checked before any work so a typo costs nothing.
async fn check_references(p: &Pipeline, store: &Store) -> Result<(), RunError> {
    let stored = stored_splits(store).await?;
    let mut problems = Vec::new();
    for s in &p.stages {
        for (key, split) in s.params.split_refs() {
            if !p.splits.contains_key(&split) && !stored.contains_key(&split) {
                let line = s.line.map(|l| format!(":{l}")).unwrap_or_default();
                problems.push(format!(
                    "{}{line}: stage '{}' '{key}' names split '{split}', which is neither in this pipeline's 'splits' nor in the store",
                    p.file.display(),
                    s.name
                ));
            }
        }
    }
    let ctx = sql::session(store, &BTreeMap::new()).await?;
    for (name, q) in &p.splits {
        let opts = datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false);
        if let Err(e) = ctx.sql_with_options(q, opts).await {
            problems.push(format!("{}: split '{name}': {e}", p.file.display()));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RunError::Invalid(problems.join("\n")))
    }
}
