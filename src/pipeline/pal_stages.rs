//! What the `train`, `eval` and `adapt` stage kinds (`kinds/`) and the `palpipe train|eval|adapt`
//! commands share:
//! load named splits from the store, call the `pal` part, keep checkpoints under
//! `<store>/checkpoints/<model>`, and register models and their metrics in `models`.
//!
//! The popularity baseline has no weights: its card names its training split and it is
//! refitted from that split (a deterministic count) whenever it is evaluated.
//!
//! The zero-shot CLIP score (`model: clip-score`, the paper's "CLIP-H" row) has neither
//! weights nor training: it is evaluated straight from a CLIP encoder's image and caption
//! vectors, and registered in `models` (name and kind `clip-score`, with its encoder id) on
//! its first evaluation so its metrics sit beside PAL's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use arrow_array::{Array, Int32Array, Int64Array, StringArray};
use serde::{Deserialize, Serialize};

use super::features::{index_pairs, load_split, split_pairs, FeatureError, LoadedSplit};
use super::progress::Printer;
use crate::pal::{
    self, evaluate, few_shot_curve, simulate_seen, ClipScore, Comparison, ComparisonSet, Estimator,
    EvalOptions, EvalReport, FewShotConfig, GroupBound, ModelConfig, ModelKind, PalModel,
    Popularity, SimRow, TrainConfig,
};
use crate::store::batches::{self, ModelRow};
use crate::store::{now_ms, Store};

fn default_k() -> usize {
    1
}
fn default_shots() -> Vec<usize> {
    vec![0, 1, 5, 10, 20]
}
fn default_prior_scale() -> f64 {
    FewShotConfig::default().prior_scale
}
fn default_ridge() -> f64 {
    FewShotConfig::default().ridge
}
fn default_query_frac() -> f64 {
    FewShotConfig::default().query_frac
}
fn default_min_queries() -> usize {
    FewShotConfig::default().min_queries
}
fn default_steps() -> usize {
    FewShotConfig::default().steps
}
fn default_bootstrap() -> usize {
    1000
}

/// Parameters of a `train` stage (and of `palpipe train`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// The model's name in `models` (default: the stage's name).
    #[serde(default)]
    pub name: Option<String>,
    /// pal-b | pal-a | bt (the homogeneous reward: PAL-B with K = 1) | popularity
    pub model: String,
    /// Number of prototypes K ≥ 1 (default 1).
    #[serde(default = "default_k")]
    pub k: usize,
    /// Split to train on.
    pub train: String,
    /// Split that picks the checkpoint (lowest loss); optional.
    #[serde(default)]
    pub val: Option<String>,
    /// Encoder of the vectors: an exact id, or a name (`all-MiniLM-L6-v2`) when the store
    /// holds one encoder of that name. Default: the store's only encoder. Not needed for
    /// popularity.
    #[serde(default)]
    pub encoder: Option<String>,
    /// The seed of every random choice in training.
    #[serde(default)]
    pub seed: u64,
    /// Model options (d, item_arch, prototype_arch, loss, mode, temperature, norm_bound,
    /// distance); `model` and `k` above take precedence.
    #[serde(default)]
    pub config: ModelConfig,
    /// Training options (epochs, batch_size, per-group lr / weight_decay, select); `seed`
    /// above takes precedence.
    #[serde(default)]
    pub training: TrainConfig,
}

impl TrainParams {
    /// The resolved model configuration (None for popularity).
    pub fn model_config(&self) -> anyhow::Result<Option<ModelConfig>> {
        let mut cfg = self.config.clone();
        match self.model.as_str() {
            "popularity" => return Ok(None),
            "pal-a" => cfg.kind = ModelKind::PalA,
            "pal-b" => cfg.kind = ModelKind::PalB,
            "bt" => {
                if self.k != 1 {
                    anyhow::bail!(
                        "model 'bt' is the homogeneous reward (K = 1); use 'pal-b' for k = {}",
                        self.k
                    );
                }
                cfg.kind = ModelKind::PalB;
            }
            other => {
                anyhow::bail!("unknown model '{other}' (models: pal-b, pal-a, bt, popularity)")
            }
        }
        if self.k < 1 {
            anyhow::bail!("k must be at least 1 (got {})", self.k);
        }
        cfg.k = self.k;
        Ok(Some(cfg))
    }
}

/// The model name (and kind) of the zero-shot CLIP score.
pub const CLIP_SCORE: &str = "clip-score";

/// Parameters of an `eval` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalParams {
    /// A model name from `models`, or `clip-score` (the zero-shot CLIP score).
    pub model: String,
    pub split: String,
    /// For `clip-score` only: the CLIP encoder (exact id or name prefix). Default: the one
    /// encoder whose vectors cover the split's items and prompts.
    #[serde(default)]
    pub encoder: Option<String>,
    /// Bootstrap resamples over users for the users' 95% interval (0 skips it).
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
    #[serde(default)]
    pub seed: u64,
}

/// Parameters of an `adapt` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptParams {
    pub model: String,
    /// Split holding the new users' comparisons.
    pub users: String,
    /// Shots per user to try, in any order (taken ascending, each once); 0 is zero-shot (the
    /// seen users' mean mixture).
    #[serde(default = "default_shots")]
    pub shots: Vec<usize>,
    /// Steps fitting each new user's K logits (`map`, `mle`) and `offset`'s δ; at most
    /// 100,000.
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default)]
    pub seed: u64,
    /// auto | map | posterior | empirical | mle | offset (see `pal::Estimator`). Default auto: the winner of the
    /// simulation on `tune_split` when one is named, `empirical` otherwise.
    #[serde(default)]
    pub estimator: Estimator,
    /// Prior scale of `map` / `posterior` / `empirical` / `offset` when no `tune_split` picks it. Default 1.
    #[serde(default = "default_prior_scale")]
    pub prior_scale: f64,
    /// Ridge strength λ of `offset` when no `tune_split` picks it (∞: no offset). Default 100.
    #[serde(default = "default_ridge")]
    pub ridge: f64,
    /// Split of SEEN users' comparisons (their training or validation pairs) on which a
    /// simulated few-shot picks the estimator and prior scale. Optional.
    #[serde(default)]
    pub tune_split: Option<String>,
    /// Split of seen users' test comparisons whose accuracy is reported beside the curve.
    #[serde(default)]
    pub seen_split: Option<String>,
    /// Share of each new user's comparisons (with `queries_by: item`, of the items they
    /// compared) held out as fixed queries. Default 0.5.
    #[serde(default = "default_query_frac")]
    pub query_frac: f64,
    /// Fewest queries per new user: by pair, the queries are raised to it; by item, users
    /// with fewer are excluded. Default 10.
    #[serde(default = "default_min_queries")]
    pub min_queries: usize,
    /// `pair` (default) or `item`: draw each new user's queries by item, so that no query
    /// item is among their shots (see `pal::QueriesBy`).
    #[serde(default, skip_serializing_if = "pal::QueriesBy::is_pair")]
    pub queries_by: pal::QueriesBy,
}

impl AdaptParams {
    /// The few-shot configuration these parameters give (before a `tune_split` picks the
    /// estimator, prior scale and ridge).
    pub fn fewshot_config(&self) -> FewShotConfig {
        FewShotConfig {
            estimator: self.estimator,
            prior_scale: self.prior_scale,
            ridge: self.ridge,
            steps: self.steps,
            seed: self.seed,
            query_frac: self.query_frac,
            min_queries: self.min_queries,
            queries_by: self.queries_by,
            ..FewShotConfig::default()
        }
    }

    /// The shot counts as the curve takes them: ascending, each once (`shots: [20, 5, 5]` is
    /// 5, 20).
    pub fn shot_counts(&self) -> Vec<usize> {
        let mut shots = self.shots.clone();
        shots.sort_unstable();
        shots.dedup();
        shots
    }

    /// The checks of [`FewShotConfig::validate`] and a non-empty `shots`, naming the key at
    /// fault, so that a pipeline file is refused (with the key's line) before anything runs.
    pub fn check_params(&self) -> Result<(), crate::transform::ParamIssue> {
        use crate::transform::ParamIssue;
        if self.shots.is_empty() {
            return Err(ParamIssue::new(
                "shots",
                "'shots' is empty, give at least one shot count (0 is zero-shot)",
            ));
        }
        match self.fewshot_config().validate() {
            Ok(()) => Ok(()),
            Err(pal::PalError::Config { field, message }) => {
                Err(ParamIssue::new(&field, format!("'{field}' {message}")))
            }
            Err(e) => Err(ParamIssue::new("", e.to_string())),
        }
    }
}

/// A registered model, as `models` holds it.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub row: ModelRow,
}

impl ModelEntry {
    /// The model named `name`; an error that lists the stored models when there is none.
    pub async fn find(store: &Store, name: &str) -> anyhow::Result<ModelEntry> {
        if let Some(entry) = ModelEntry::lookup(store, name).await? {
            return Ok(entry);
        }
        let known = model_names(store).await?;
        anyhow::bail!(
            "no model named '{name}' in the store (models: {})\nhint: train one with 'palpipe train' or a 'train' stage",
            if known.is_empty() { "none yet".to_string() } else { known.join(", ") }
        )
    }

    /// The model named `name`, `None` when `models` has no such row (or no `models` table
    /// exists yet).
    ///
    /// # Errors
    /// A store that cannot be read.
    pub async fn lookup(
        store: &Store,
        name: &str,
    ) -> Result<Option<ModelEntry>, crate::store::StoreError> {
        let filter = format!("name = '{}'", name.replace('\'', "''"));
        for b in store.read("models", &[], Some(&filter)).await? {
            if b.num_rows() == 0 {
                continue;
            }
            let s = |c: &str| -> Option<String> {
                let a = b
                    .column_by_name(c)?
                    .as_any()
                    .downcast_ref::<StringArray>()?;
                (!a.is_null(0)).then(|| a.value(0).to_string())
            };
            let k = b
                .column_by_name("k")
                .and_then(|a| a.as_any().downcast_ref::<Int32Array>())
                .map(|a| a.value(0))
                .unwrap_or(1);
            let created = b
                .column_by_name("created_ms")
                .and_then(|a| a.as_any().downcast_ref::<Int64Array>())
                .map(|a| a.value(0))
                .unwrap_or(0);
            return Ok(Some(ModelEntry {
                row: ModelRow {
                    name: name.to_string(),
                    kind: s("kind").unwrap_or_default(),
                    k,
                    encoder_id: s("encoder_id"),
                    train_split: s("train_split").unwrap_or_default(),
                    checkpoint: s("checkpoint").unwrap_or_default(),
                    card_json: s("card_json").unwrap_or_default(),
                    metrics_json: s("metrics_json"),
                    run_id: s("run_id"),
                    created_ms: created,
                },
            }));
        }
        Ok(None)
    }

    /// Merges `value` under `key` into the model's metrics and saves the row.
    async fn record_metric(
        mut self,
        store: &Store,
        key: &str,
        value: serde_json::Value,
    ) -> anyhow::Result<()> {
        let mut metrics: BTreeMap<String, serde_json::Value> = self
            .row
            .metrics_json
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        metrics.insert(key.to_string(), value);
        self.row.metrics_json = Some(serde_json::to_string(&metrics)?);
        store
            .upsert("models", batches::models(&[self.row])?)
            .await?;
        Ok(())
    }

    async fn load_pal(&self, store: &Store) -> anyhow::Result<PalModel> {
        if self.row.kind == "popularity" {
            anyhow::bail!(
                "model '{}' is the popularity baseline, which has no users to adapt",
                self.row.name
            );
        }
        load_checkpoint(store, &self.row.checkpoint).await
    }
}

async fn model_names(store: &Store) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for b in store.read("models", &["name"], None).await? {
        if let Some(a) = b.column(0).as_any().downcast_ref::<StringArray>() {
            out.extend((0..a.len()).map(|i| a.value(i).to_string()));
        }
    }
    out.sort();
    Ok(out)
}

/// Every encoder id in `embeddings`, sorted.
async fn encoder_ids(store: &Store) -> anyhow::Result<Vec<String>> {
    let r = crate::store::sql::query(
        store,
        "SELECT DISTINCT encoder_id FROM embeddings ORDER BY encoder_id",
        &BTreeMap::new(),
    )
    .await?;
    let mut ids = Vec::new();
    for b in &r.batches {
        if let Some(a) = b.column(0).as_any().downcast_ref::<StringArray>() {
            ids.extend((0..a.len()).map(|i| a.value(i).to_string()));
        }
    }
    Ok(ids)
}

/// The one encoder whose vectors the store holds (so a pipeline that embeds with a model
/// the user points at need not repeat its id); an error when there are none or several.
pub async fn only_encoder(store: &Store) -> anyhow::Result<String> {
    let ids = encoder_ids(store).await?;
    match ids.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("the store holds no vectors yet\nhint: run an 'embed' stage first"),
        many => anyhow::bail!(
            "the store holds vectors of {} encoders ({}); name one with 'encoder'",
            many.len(),
            many.join(", ")
        ),
    }
}

/// An encoder id from an exact id or a unique name prefix (`all-MiniLM-L6-v2`).
pub async fn resolve_encoder(store: &Store, encoder: &str) -> anyhow::Result<String> {
    let ids = encoder_ids(store).await?;
    if ids.iter().any(|i| i == encoder) {
        return Ok(encoder.to_string());
    }
    let prefix = format!("{encoder}:");
    let matches: Vec<&String> = ids.iter().filter(|i| i.starts_with(&prefix)).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(FeatureError::NoEncoder {
            encoder: encoder.to_string(),
            known: if ids.is_empty() {
                "none yet".into()
            } else {
                ids.join(", ")
            },
        }
        .into()),
        many => anyhow::bail!(
            "encoder '{encoder}' is ambiguous: the store holds {}; give the full id",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Evaluates the popularity baseline trained on `train_split` on `split`.
async fn popularity_eval(
    store: &Store,
    train_split: &str,
    split: &str,
    opts: &EvalOptions,
) -> anyhow::Result<EvalReport> {
    // Popularity needs identities, not embeddings: each distinct item of both splits
    // becomes a one-number "vector" (its row, in id order).
    let train_pairs = split_pairs(store, train_split).await?;
    let test_pairs = split_pairs(store, split).await?;
    let items: HashMap<&str, u32> = train_pairs
        .iter()
        .chain(test_pairs.iter())
        .flat_map(|p| [p.left_id.as_str(), p.right_id.as_str()])
        .collect::<std::collections::BTreeSet<&str>>()
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i as u32))
        .collect();
    let vectors: Vec<f32> = (0..items.len()).map(|i| i as f32).collect();
    let build = |pairs: &[super::features::PairRef]| -> anyhow::Result<ComparisonSet> {
        let ix = index_pairs(pairs);
        let row = |r: u32| items[ix.item_ids[r as usize].as_str()];
        let comps = ix
            .comps
            .iter()
            .map(|c| Comparison {
                prompt: None,
                left: row(c.left),
                right: row(c.right),
                ..*c
            })
            .collect();
        Ok(ComparisonSet::new(
            1,
            0,
            vectors.clone(),
            Vec::new(),
            ix.user_ids,
            comps,
        )?)
    };
    let fitted = Popularity::fit(&build(&train_pairs)?)?;
    Ok(fitted.evaluate(&build(&test_pairs)?, opts)?)
}

/// What a train call produced.
pub struct Trained {
    pub summary: String,
    pub card_json: String,
}

/// Trains and registers model `name` (replacing a model of that name).
pub async fn train_model(
    store: &Store,
    name: &str,
    p: &TrainParams,
    run_id: Option<&str>,
    printer: Printer,
) -> anyhow::Result<Trained> {
    if name == CLIP_SCORE {
        anyhow::bail!("the model name '{CLIP_SCORE}' is reserved for the zero-shot CLIP score\nhint: choose another --name");
    }
    // Training's ranges (epochs, batch size, learning rates) before any data is read.
    p.training.validate()?;
    let Some(mut cfg) = p.model_config()? else {
        // popularity: check the split loads, record what it needs.
        let n_train = split_pairs(store, &p.train).await?.len();
        let card =
            serde_json::json!({"model": "popularity", "train_split": p.train, "n_train": n_train});
        let row = ModelRow {
            name: name.to_string(),
            kind: "popularity".into(),
            k: 1,
            encoder_id: None,
            train_split: p.train.clone(),
            checkpoint: String::new(),
            card_json: card.to_string(),
            metrics_json: None,
            run_id: run_id.map(str::to_string),
            created_ms: now_ms(),
        };
        store.upsert("models", batches::models(&[row])?).await?;
        return Ok(Trained {
            summary: format!("popularity over {n_train} comparisons"),
            card_json: card.to_string(),
        });
    };
    let encoder = match p.encoder.as_deref() {
        Some(e) => resolve_encoder(store, e).await?,
        None => only_encoder(store).await.map_err(|e| {
            e.context(format!(
                "model '{}' needs 'encoder' (the vectors to train on)",
                p.model
            ))
        })?,
    };
    let train: LoadedSplit = load_split(store, &p.train, &encoder).await?;
    let val = match &p.val {
        Some(v) => Some(load_split(store, v, &encoder).await?),
        None => None,
    };
    cfg.dx = 0;
    cfg.dp = 0;
    let mut tcfg = p.training.clone();
    tcfg.seed = p.seed;
    let steps_per_epoch = train.set.comps.len().div_ceil(tcfg.batch_size.max(1));
    let bar = printer.bar(
        steps_per_epoch.saturating_mul(tcfg.epochs) as u64,
        "training",
    );
    let bar2 = bar.clone();
    let (mut model, report) = tokio::task::spawn_blocking(move || {
        pal::train(
            &cfg,
            &tcfg,
            &train.set,
            val.as_ref().map(|v| &v.set),
            &mut |pr| {
                bar2.set_position(pr.step as u64);
            },
        )
    })
    .await??;
    bar.finish_and_clear();
    model.info.encoder_id = Some(encoder.clone());
    model.info.train_split = Some(p.train.clone());
    model.info.run_id = run_id.map(str::to_string);
    model
        .info
        .extra
        .insert("train_report".into(), serde_json::to_value(&report)?);
    let rel = PathBuf::from("checkpoints").join(name);
    store
        .save_dir(&format!("checkpoints/{name}"), |dir| Ok(model.save(dir)?))
        .await?;
    let card_json = serde_json::to_string(&model.card())?;
    let row = ModelRow {
        name: name.to_string(),
        kind: p.model.clone(),
        k: p.k as i32,
        encoder_id: Some(encoder),
        train_split: p.train.clone(),
        checkpoint: rel.to_string_lossy().into_owned(),
        card_json: card_json.clone(),
        metrics_json: None,
        run_id: run_id.map(str::to_string),
        created_ms: now_ms(),
    };
    store.upsert("models", batches::models(&[row])?).await?;
    let val_part = report
        .best_val_loss
        .map(|l| format!(", val loss {l:.4}"))
        .unwrap_or_default();
    Ok(Trained {
        summary: format!(
            "{} K={} ({} params) on {} comparisons, {} users; best epoch {}/{}{val_part}",
            p.model,
            p.k,
            report.params,
            report.n_train,
            report.n_users,
            report.best_epoch,
            report.epochs.len()
        ),
        card_json,
    })
}

/// Evaluates model `name` on `split` and records the metrics under the split's name.
/// `run_id` is the pipeline run evaluating it (it only marks a `clip-score` row it creates).
pub async fn eval_model(
    store: &Store,
    p: &EvalParams,
    run_id: Option<&str>,
) -> anyhow::Result<EvalReport> {
    let opts = EvalOptions {
        bootstrap_reps: p.bootstrap,
        seed: p.seed,
    };
    if p.model == CLIP_SCORE {
        return clip_score_eval(store, p, &opts, run_id).await;
    }
    if p.encoder.is_some() {
        anyhow::bail!(
            "'encoder' is only for model '{CLIP_SCORE}'; model '{}' uses the encoder it was trained on",
            p.model
        );
    }
    let entry = ModelEntry::find(store, &p.model).await?;
    let report = if entry.row.kind == "popularity" {
        popularity_eval(store, &entry.row.train_split, &p.split, &opts).await?
    } else {
        let model = entry.load_pal(store).await?;
        let encoder = entry.row.encoder_id.clone().unwrap_or_default();
        let data = load_split(store, &p.split, &encoder).await?;
        tokio::task::spawn_blocking(move || evaluate(&model, &data.set, &opts)).await??
    };
    entry
        .record_metric(store, &p.split, summary_json(&report))
        .await?;
    Ok(report)
}

/// The encoder whose vectors cover every item and prompt of `split` (or the one given).
async fn clip_score_encoder(
    store: &Store,
    split: &str,
    given: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(e) = given {
        return resolve_encoder(store, e).await;
    }
    let pairs = split_pairs(store, split).await?;
    let mut need: HashSet<String> = HashSet::new();
    for p in &pairs {
        need.insert(p.left_id.clone());
        need.insert(p.right_id.clone());
        if let Some(x) = &p.prompt_id {
            need.insert(x.clone());
        }
    }
    let mut have: BTreeMap<String, usize> = BTreeMap::new();
    for b in store
        .read("embeddings", &["content_id", "encoder_id"], None)
        .await?
    {
        let c = b.column(0).as_any().downcast_ref::<StringArray>();
        let e = b.column(1).as_any().downcast_ref::<StringArray>();
        let (Some(c), Some(e)) = (c, e) else {
            continue;
        };
        for i in 0..b.num_rows() {
            let n = have.entry(e.value(i).to_string()).or_default();
            if need.contains(c.value(i)) {
                *n += 1;
            }
        }
    }
    // (content_id, encoder_id) is the key, so a count equal to `need` covers them all.
    let covering: Vec<&String> = have
        .iter()
        .filter(|(_, n)| **n == need.len())
        .map(|(e, _)| e)
        .collect();
    match covering.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(FeatureError::NoCoveringEncoder {
            split: split.to_string(),
            known: if have.is_empty() {
                "none yet".into()
            } else {
                have.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        }
        .into()),
        many => Err(FeatureError::AmbiguousEncoder {
            split: split.to_string(),
            ids: many
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into()),
    }
}

/// Evaluates the zero-shot CLIP score on `p.split` and records it as model `clip-score`.
async fn clip_score_eval(
    store: &Store,
    p: &EvalParams,
    opts: &EvalOptions,
    run_id: Option<&str>,
) -> anyhow::Result<EvalReport> {
    let pairs = split_pairs(store, &p.split).await?;
    let bare: Vec<&super::features::PairRef> =
        pairs.iter().filter(|x| x.prompt_id.is_none()).collect();
    if let Some(first) = bare.first() {
        return Err(FeatureError::NoPrompt {
            split: p.split.clone(),
            count: bare.len(),
            example: format!(
                "user '{}', items '{}' and '{}'",
                first.user_id, first.left_id, first.right_id
            ),
        }
        .into());
    }
    let encoder = clip_score_encoder(store, &p.split, p.encoder.as_deref()).await?;
    let data = load_split(store, &p.split, &encoder).await?;
    let opts = opts.clone();
    let report =
        tokio::task::spawn_blocking(move || ClipScore.evaluate(&data.set, &opts)).await??;
    // The row keeps its metrics (and creation time) while the encoder stays the same;
    // another encoder starts a fresh row, so no metric is labelled with the wrong encoder.
    let entry = match ModelEntry::find(store, CLIP_SCORE).await {
        Ok(mut e) if e.row.encoder_id.as_deref() == Some(encoder.as_str()) => {
            // A pipeline run that evaluates it claims it (its report shows it);
            // `palpipe eval` leaves the row's run alone.
            if let Some(r) = run_id {
                e.row.run_id = Some(r.to_string());
            }
            e
        }
        _ => ModelEntry {
            row: ModelRow {
                name: CLIP_SCORE.into(),
                kind: CLIP_SCORE.into(),
                k: 1,
                encoder_id: Some(encoder.clone()),
                train_split: String::new(),
                checkpoint: String::new(),
                card_json: serde_json::json!({
                    "model": CLIP_SCORE,
                    "encoder_id": encoder,
                    "score": "cos(image vector, prompt vector)",
                    "trained": false,
                })
                .to_string(),
                metrics_json: None,
                run_id: run_id.map(str::to_string),
                created_ms: now_ms(),
            },
        },
    };
    entry
        .record_metric(store, &p.split, summary_json(&report))
        .await?;
    Ok(report)
}

/// The report without its per-user and per-comparison lists (those go to --json output).
pub fn summary_json(r: &EvalReport) -> serde_json::Value {
    serde_json::json!({
        "accuracy": r.accuracy,
        "ci95": [r.ci95.lo, r.ci95.hi],
        "ci95_users": r.ci95_users.as_ref().map(|c| [c.lo, c.hi]),
        "n": r.n,
        "ties": r.ties,
        "per_user": {"mean": r.per_user.mean, "std": r.per_user.std, "users": r.users.len()},
        "unknown_users": r.unknown_users,
        "mixture": r.mixture,
    })
}

pub fn one_line(r: &EvalReport) -> String {
    format!(
        "accuracy {:.2}% (95% CI {:.2}-{:.2}, Wilson over comparisons) n={} ties={}; per user {:.2} ± {:.2} over {} users",
        100.0 * r.accuracy,
        100.0 * r.ci95.lo,
        100.0 * r.ci95.hi,
        r.n,
        r.ties,
        100.0 * r.per_user.mean,
        100.0 * r.per_user.std,
        r.users.len()
    )
}

/// One row of an adaptation result (one N). Every row of a result carries the same `n`,
/// `oracle_accuracy` and `seen_accuracy`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdaptRow {
    pub shots: usize,
    pub users: usize,
    /// Users without enough comparisons for the queries and the largest N (excluded at every N).
    pub skipped_users: usize,
    /// Query comparisons scored (the same at every N).
    pub n: usize,
    /// What the queries were drawn by (`pair`, the default, is not written).
    #[serde(skip_serializing_if = "pal::QueriesBy::is_pair")]
    pub queries_by: pal::QueriesBy,
    pub report: serde_json::Value,
    pub accuracy: f64,
    /// 95% bootstrap interval over users.
    pub ci95_users: Option<[f64; 2]>,
    pub zero_shot_accuracy: f64,
    /// The same queries with each user's oracle mixture, fitted on all of the user's
    /// comparisons, the queries too (an in-sample bound, optimistic; not a result).
    pub oracle_accuracy: f64,
    /// The same queries with each user's held-out oracle mixture, fitted on every comparison
    /// but the queries (the most shots the protocol could give).
    pub heldout_oracle_accuracy: f64,
    /// The same queries with the estimator fitted on every comparison but the queries.
    pub heldout_estimator_accuracy: f64,
    /// The model's accuracy on `seen_split`, when given.
    pub seen_accuracy: Option<f64>,
    pub estimator: Estimator,
    pub prior_scale: f64,
    /// `offset`'s ridge strength λ (absent for the other estimators; ∞ is written "inf").
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::pal::ridge_json::serialize"
    )]
    pub ridge: Option<f64>,
    /// Gradient steps of the map and mle fits and of offset's δ (the settings' `steps`).
    pub steps: usize,
    /// The estimator asked for (`auto` or a named one).
    pub asked: Estimator,
    /// Whether the simulated few-shot on seen users (`tune_split`) chose `estimator`,
    /// `prior_scale` and `ridge`; false when they are the settings as given. An `auto` row
    /// chosen by simulation is what `palpipe enroll --estimator auto` takes ([`AutoChoice`]).
    pub chosen_by_simulation: bool,
}

/// The estimator settings a seen-user simulation chose for a model under `auto`, as its
/// `adapt:<users>` metric records them: what enrolment's `auto` uses (PAL-SPEC "Users the
/// model has not seen"; issue 14: a new user is enrolled as adaptation would fit them).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoChoice {
    /// The metric it comes from, `adapt:<users>`.
    pub metric: String,
    /// The estimator the simulation chose (never `auto`).
    pub estimator: Estimator,
    /// The prior scale the simulation chose for it.
    pub prior_scale: f64,
    /// `offset`'s ridge strength λ (∞ allowed); `None` for the other estimators.
    pub ridge: Option<f64>,
    /// The gradient steps adaptation ran with (`None` in rows that do not say).
    pub steps: Option<usize>,
    /// Unseen users that adaptation scored (the tie-break between several metrics).
    pub users: u64,
}

/// The fields of a recorded [`AdaptRow`] that [`AutoChoice`] reads (the others are ignored);
/// `asked` and `steps` are absent in rows of an earlier palpipe.
#[derive(Deserialize)]
struct RecordedRow {
    #[serde(default)]
    users: u64,
    asked: Option<Estimator>,
    #[serde(default)]
    chosen_by_simulation: bool,
    estimator: Estimator,
    prior_scale: f64,
    #[serde(default, with = "crate::pal::ridge_json")]
    ridge: Option<f64>,
    steps: Option<usize>,
}

impl AutoChoice {
    /// The choice recorded in a model's `metrics_json`: among its `adapt:*` metrics whose rows
    /// say `asked: auto` and `chosen_by_simulation: true`, the one adapted on the most users
    /// (ties: the first metric name in order). `None` when there is none (no adaptation with
    /// a `tune_split` has run, or only with a named estimator, or the metrics came from a
    /// palpipe that did not record how the estimator was chosen) or the JSON is not readable.
    pub fn from_metrics(metrics_json: &str) -> Option<AutoChoice> {
        let metrics: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(metrics_json).ok()?;
        let mut best: Option<AutoChoice> = None;
        for (key, rows) in metrics {
            if !key.starts_with("adapt:") {
                continue;
            }
            // The first row speaks for the result: every row carries the same settings.
            let Ok(rows) = serde_json::from_value::<Vec<RecordedRow>>(rows) else {
                continue;
            };
            let Some(row) = rows.into_iter().next() else {
                continue;
            };
            let simulated = row.asked == Some(Estimator::Auto) && row.chosen_by_simulation;
            if !simulated || best.as_ref().is_some_and(|b| b.users >= row.users) {
                continue;
            }
            best = Some(AutoChoice {
                metric: key,
                estimator: row.estimator,
                prior_scale: row.prior_scale,
                ridge: row.ridge,
                steps: row.steps,
                users: row.users,
            });
        }
        best
    }

    /// `cfg` with this choice's estimator, prior scale and (when recorded) ridge and steps;
    /// steps recorded by a palpipe without their bound are held to [`pal::MAX_FS_STEPS`].
    pub fn apply(&self, cfg: &FewShotConfig) -> FewShotConfig {
        let mut out = cfg.clone();
        out.estimator = self.estimator;
        out.prior_scale = self.prior_scale;
        if let Some(r) = self.ridge {
            out.ridge = r;
        }
        if let Some(n) = self.steps {
            out.steps = n.min(pal::MAX_FS_STEPS);
        }
        out
    }
}

/// The whole outcome of an adaptation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdaptOutcome {
    pub rows: Vec<AdaptRow>,
    pub zero_shot: serde_json::Value,
    pub oracle: serde_json::Value,
    pub heldout_oracle: serde_json::Value,
    pub heldout_estimator: serde_json::Value,
    pub seen: Option<serde_json::Value>,
    /// The known-group bound (only when asked for; see [`crate::pal::group_bound`]).
    pub group_bound: Option<GroupBound>,
    /// Seen users re-placed from N shots (only when asked for; see [`crate::pal::refit_seen`]).
    pub refit_seen: Option<pal::SeenRefit>,
    /// The model world (only when asked for; see [`crate::pal::model_world`]).
    pub model_world: Option<pal::ModelWorld>,
    /// The simulated few-shot on seen users (empty without `tune_split`).
    pub simulation: Vec<SimRow>,
    /// The model's number of prototypes K.
    pub k: usize,
}

impl AdaptOutcome {
    /// A warning for a model with one prototype (K = 1, a plain Bradley–Terry reward model)
    /// adapted by a mixture-only estimator: every user's mixture is that prototype, so a new
    /// user's shots move nothing and every N scores as zero-shot. `None` for K ≥ 2, and for
    /// `offset`, which moves each user's ideal point off the prototype.
    pub fn single_prototype_warning(&self, model: &str) -> Option<String> {
        let estimator = self.rows.first()?.estimator;
        (self.k == 1 && estimator != pal::Estimator::Offset).then(|| {
            format!(
                "model '{model}' has K = 1: every user's mixture is its one prototype, so the {} estimator moves nothing and every N scores as zero-shot\nhint: adapt a model trained with k of 2 or more, or use the offset estimator (a per-user offset of the ideal point)",
                estimator.name()
            )
        })
    }
}

fn ci_users(r: &EvalReport) -> Option<[f64; 2]> {
    r.ci95_users.as_ref().map(|c| [c.lo, c.hi])
}

/// Each user's group (`users.group_name`), where set.
pub async fn user_groups(
    store: &Store,
) -> Result<BTreeMap<String, String>, crate::store::StoreError> {
    let mut out = BTreeMap::new();
    for b in store
        .read("users", &["user_id", "group_name"], None)
        .await?
    {
        let col = |name: &str| {
            b.column_by_name(name)
                .and_then(|a| a.as_any().downcast_ref::<StringArray>())
        };
        let (Some(u), Some(g)) = (col("user_id"), col("group_name")) else {
            continue;
        };
        for i in 0..b.num_rows() {
            if !u.is_null(i) && !g.is_null(i) {
                out.insert(u.value(i).to_string(), g.value(i).to_string());
            }
        }
    }
    Ok(out)
}

/// Diagnostics [`adapt_model`] computes beside the curve only when asked (reported, not
/// recorded in the model's metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct AdaptDiagnostics {
    /// The known-group bound on the same queries and shots, from the users' groups in
    /// `users` ([`crate::pal::group_bound`]).
    pub group_bound: bool,
    /// Seen users re-placed from N of their `tune_split` comparisons and scored on their
    /// `seen_split` comparisons ([`crate::pal::refit_seen`]); needs both splits.
    pub refit_seen: bool,
    /// The model world: the same protocol on labels drawn from the model at seen users'
    /// mixtures, with the Bayes-optimal N-shot accuracy ([`crate::pal::model_world`]).
    pub model_world: bool,
}

/// Adapts the users of `p.users` for every shot count under the fixed-query protocol and
/// records the rows as the model's `adapt:<users>` metric, with the diagnostics `diag` asks
/// for (reported, not recorded).
pub async fn adapt_model(
    store: &Store,
    p: &AdaptParams,
    diag: AdaptDiagnostics,
) -> anyhow::Result<AdaptOutcome> {
    // The settings' ranges before the model and the splits are read.
    p.fewshot_config().validate()?;
    let entry = ModelEntry::find(store, &p.model).await?;
    let model = entry.load_pal(store).await?;
    let encoder = entry.row.encoder_id.clone().unwrap_or_default();
    let data = load_split(store, &p.users, &encoder).await?;
    let seen: HashSet<&str> = model.user_ids().iter().map(String::as_str).collect();
    let overlap: Vec<&String> = data
        .set
        .user_ids
        .iter()
        .filter(|u| seen.contains(u.as_str()))
        .collect();
    if let Some(first) = overlap.first() {
        anyhow::bail!(
            "split '{}' holds {} user(s) that model '{}' saw in training (first: '{first}'); adapt is for new users\nhint: select only unseen users, e.g. split = 'unseen'",
            p.users,
            overlap.len(),
            p.model
        );
    }
    let tune = match &p.tune_split {
        Some(s) => Some(load_split(store, s, &encoder).await?),
        None => None,
    };
    let seen_data = match &p.seen_split {
        Some(s) => Some(load_split(store, s, &encoder).await?),
        None => None,
    };
    for (what, d) in [("tune_split", &tune), ("seen_split", &seen_data)] {
        if let Some(d) = d {
            if let Some(u) = d.set.user_ids.iter().find(|u| !seen.contains(u.as_str())) {
                anyhow::bail!(
                    "{what}: user '{u}' is not one model '{}' was trained on; this split must hold seen users only\nhint: name a split of the training users, e.g. their 'val' or 'train' pairs",
                    p.model
                );
            }
        }
    }
    if diag.refit_seen {
        let (Some(t), Some(s)) = (&tune, &seen_data) else {
            anyhow::bail!(
                "re-placing seen users needs both a tune_split (their shots) and a seen_split (their queries)\nhint: name both, e.g. the seen users' 'train' and 'test' pairs"
            );
        };
        if p.tune_split == p.seen_split {
            anyhow::bail!(
                "re-placing seen users takes their shots from tune_split and scores seen_split: the two must differ, or the shots would be among the queries\nhint: e.g. tune_split 'train' (or 'val') and seen_split 'test'"
            );
        }
        // Before minutes of fitting: that some seen user has enough shots for the largest N.
        let maxn = p.shots.iter().copied().max().unwrap_or(0);
        pal::refit_seen_users(&t.set, &s.set, maxn)?;
    }
    let groups = if diag.group_bound {
        Some(user_groups(store).await?)
    } else {
        None
    };
    let shots = p.shot_counts();
    let k = model.config().k;
    let base = p.fewshot_config();
    let out = tokio::task::spawn_blocking(move || -> anyhow::Result<AdaptOutcome> {
        let opts = EvalOptions {
            bootstrap_reps: 1000,
            seed: base.seed,
        };
        let mut cfg = base.clone();
        let mut simulation = Vec::new();
        let mut chosen_by_simulation = false;
        if let Some(t) = &tune {
            simulation = simulate_seen(&model, &t.set, &shots, &base)?;
            if let Some((e, s, ridge)) = pal::choose(&simulation, base.estimator) {
                cfg.estimator = e;
                cfg.prior_scale = s;
                if let Some(r) = ridge {
                    cfg.ridge = r;
                }
                chosen_by_simulation = true;
            }
        }
        let seen = match &seen_data {
            Some(d) => Some(evaluate(&model, &d.set, &opts)?),
            None => None,
        };
        let curve = few_shot_curve(&model, &data.set, &shots, &cfg, &opts)?;
        let group_bound = match &groups {
            Some(g) => Some(pal::group_bound(&model, &data.set, &shots, &cfg, &opts, g)?),
            None => None,
        };
        let refit_seen = match (&tune, &seen_data) {
            (Some(t), Some(s)) if diag.refit_seen => Some(pal::refit_seen(
                &model, &t.set, &s.set, &shots, &cfg, &opts,
            )?),
            _ => None,
        };
        let model_world = if diag.model_world {
            Some(pal::model_world(&model, &data.set, &shots, &cfg, &opts)?)
        } else {
            None
        };
        let rows = curve
            .points
            .iter()
            .map(|pt| AdaptRow {
                shots: pt.shots,
                users: curve.user_ids.len(),
                skipped_users: curve.excluded_users.len(),
                n: pt.adapted.n,
                queries_by: cfg.queries_by,
                report: summary_json(&pt.adapted),
                accuracy: pt.adapted.accuracy,
                ci95_users: ci_users(&pt.adapted),
                zero_shot_accuracy: curve.zero_shot.accuracy,
                oracle_accuracy: curve.oracle.accuracy,
                heldout_oracle_accuracy: curve.heldout_oracle.accuracy,
                heldout_estimator_accuracy: curve.heldout_estimator.accuracy,
                seen_accuracy: seen.as_ref().map(|r| r.accuracy),
                estimator: curve.estimator,
                prior_scale: curve.prior_scale,
                ridge: curve.ridge,
                steps: cfg.steps,
                asked: base.estimator,
                chosen_by_simulation,
            })
            .collect();
        Ok(AdaptOutcome {
            rows,
            zero_shot: summary_json(&curve.zero_shot),
            oracle: summary_json(&curve.oracle),
            heldout_oracle: summary_json(&curve.heldout_oracle),
            heldout_estimator: summary_json(&curve.heldout_estimator),
            seen: seen.as_ref().map(summary_json),
            group_bound,
            refit_seen,
            model_world,
            simulation,
            k,
        })
    })
    .await??;
    entry
        .record_metric(
            store,
            &format!("adapt:{}", p.users),
            serde_json::to_value(&out.rows)?,
        )
        .await?;
    Ok(out)
}

/// Loads the checkpoint stored at `rel` (a folder of the store, local or remote).
pub async fn load_checkpoint(store: &Store, rel: &str) -> anyhow::Result<PalModel> {
    let dir = store.local_dir(rel).await?;
    Ok(PalModel::load(&dir.path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `adapt:*` metric's first row, as `adapt_model` records it.
    fn row(asked: &str, simulated: bool, estimator: &str, users: u64, ridge: &str) -> String {
        format!(
            r#"[{{"shots": 0, "users": {users}, "asked": "{asked}", "chosen_by_simulation": {simulated}, "estimator": "{estimator}", "prior_scale": 0.5, "steps": 40{ridge}}}]"#
        )
    }

    #[test]
    fn auto_choice_takes_the_simulated_auto_row_of_the_most_users() {
        let metrics = format!(
            r#"{{"accuracy:te": 0.9, "adapt:a": {}, "adapt:b": {}, "adapt:c": {}, "adapt:d": {}}}"#,
            row("auto", true, "empirical", 5, ""),
            row("auto", true, "offset", 9, r#", "ridge": "inf""#),
            // more users, but a named estimator, or settings as given: not auto's choice
            row("map", true, "map", 50, ""),
            row("auto", false, "empirical", 50, ""),
        );
        let c = AutoChoice::from_metrics(&metrics).unwrap();
        assert_eq!(c.metric, "adapt:b");
        assert_eq!(c.estimator, Estimator::Offset);
        assert_eq!(c.ridge, Some(f64::INFINITY));
        assert_eq!((c.prior_scale, c.steps), (0.5, Some(40)));
        let cfg = c.apply(&FewShotConfig::default());
        assert_eq!(
            (cfg.estimator, cfg.prior_scale, cfg.ridge, cfg.steps),
            (Estimator::Offset, 0.5, f64::INFINITY, 40)
        );
        // A tie in users goes to the first metric name.
        let tie = format!(
            r#"{{"adapt:x": {}, "adapt:y": {}}}"#,
            row("auto", true, "posterior", 7, ""),
            row("auto", true, "map", 7, "")
        );
        let c = AutoChoice::from_metrics(&tie).unwrap();
        assert_eq!(
            (c.metric.as_str(), c.estimator),
            ("adapt:x", Estimator::Posterior)
        );
        // Rows of an earlier palpipe (no `asked`), no adapt metric, or unreadable JSON: none.
        let old = r#"{"adapt:a": [{"users": 3, "estimator": "offset", "prior_scale": 1.0, "ridge": 100.0}]}"#;
        assert_eq!(AutoChoice::from_metrics(old), None);
        assert_eq!(AutoChoice::from_metrics(r#"{"accuracy:te": 0.9}"#), None);
        assert_eq!(AutoChoice::from_metrics("not json"), None);
        // Steps recorded before they had a bound are held to it, so the choice still fits.
        let many = AutoChoice {
            steps: Some(5_000_000),
            ..c
        };
        let cfg = many.apply(&FewShotConfig::default());
        assert_eq!(cfg.steps, 100_000);
        assert!(cfg.validate().is_ok());
    }
}
