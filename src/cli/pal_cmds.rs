//! `palpipe train`, `eval` and `adapt`: the same code the pipeline stages call, with flags.

use serde_yaml::{Mapping, Value};

use super::{CliError, Ctx};
use crate::pipeline::pal_stages::{self, AdaptParams, EvalParams, TrainParams};
use crate::pipeline::spec::{read_params, ParamError};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  palpipe train --name pal-b-k2 --model pal-b --k 2 --train persona-train --val persona-val --encoder all-MiniLM-L6-v2"
)]
pub struct TrainArgs {
    /// Name to register the model under in `models`.
    #[arg(long)]
    pub name: String,
    /// pal-b | pal-a | bt (homogeneous reward, K = 1) | popularity
    #[arg(long, default_value = "pal-b")]
    pub model: String,
    /// Number of prototypes K.
    #[arg(long, default_value_t = 1)]
    pub k: usize,
    /// Split to train on (a name from the `splits` table).
    #[arg(long)]
    pub train: String,
    /// Split that picks the checkpoint by lowest loss.
    #[arg(long)]
    pub val: Option<String>,
    /// Encoder id, or a name when the store holds one encoder of that name.
    #[arg(long)]
    pub encoder: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Preference-space dimension d.
    #[arg(long)]
    pub d: Option<usize>,
    /// Projector architecture for f and g_k, e.g. mlp2-gelu-dropout0 or mlp2-relu-dropout5-residual.
    #[arg(long)]
    pub arch: Option<String>,
    /// logistic | hinge | smooth-hinge
    #[arg(long)]
    pub loss: Option<String>,
    /// mixture | partition
    #[arg(long)]
    pub mode: Option<String>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  palpipe eval --split v2-no-leakage                 # every model that can score it, best first\n  palpipe eval --model pal-b-k2 --split persona-test\n  palpipe eval --model clip-score --split pickapic-test --encoder clip-vit-h-14\n\nWithout --model, each stored model (and the CLIP score when the split compares images) is\nevaluated as --model would, one row each, best first; a model that cannot score the split\n(vectors of another encoder, items not embedded, …) is skipped with its reason on stderr.\n\n--model clip-score is the zero-shot CLIP score (the paper's CLIP-H row): each image scores\nthe cosine of its CLIP vector with its comparison's prompt (caption) vector. It needs the\nsplit's images and prompts embedded with one CLIP encoder (palpipe embed --encoder clip);\nits metrics are recorded in `models` under the name clip-score."
)]
pub struct EvalArgs {
    /// A model name from the `models` table, or clip-score (the zero-shot CLIP score).
    /// Default: every stored model that can score the split, as a table, best first.
    #[arg(long)]
    pub model: Option<String>,
    /// A split name from the `splits` table.
    #[arg(long)]
    pub split: String,
    /// For clip-score: the CLIP encoder (an id, or a name when the store holds one encoder
    /// of that name). Default: the one encoder with vectors for all the split's items and prompts.
    #[arg(long)]
    pub encoder: Option<String>,
    /// Print one JSON object (accuracy, ci95, n, ties, per_user, …) instead of a line;
    /// without --model, one JSON line per model, best first.
    #[arg(long)]
    pub json: bool,
    /// Bootstrap resamples over users for the users' interval.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, clap::Args)]
pub struct AdaptArgs {
    /// A PAL model name from the `models` table.
    #[arg(long)]
    pub model: String,
    /// Split holding the new users' comparisons.
    #[arg(long)]
    pub users: String,
    /// Shots per user, comma-separated, in any order (taken ascending; a repeated count is
    /// taken once); 0 is zero-shot (the seen users' mean mixture).
    #[arg(long, value_delimiter = ',', default_value = "0,1,5,10,20")]
    pub shots: Vec<usize>,
    /// Steps fitting each new user's logits (map, mle) and offset's δ (at most 100000).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto | map | posterior | empirical | mle | offset. auto: the winner of the simulation on --tune-split, else empirical.
    #[arg(long, default_value = "auto")]
    pub estimator: crate::pal::Estimator,
    /// Prior scale of map / posterior / empirical / offset when no --tune-split picks it.
    #[arg(long)]
    pub prior_scale: Option<f64>,
    /// Ridge strength of offset when no --tune-split picks it (inf: no offset; default 100).
    #[arg(long)]
    pub ridge: Option<f64>,
    /// Split of SEEN users' comparisons (e.g. their training pairs) to simulate few-shot on.
    #[arg(long)]
    pub tune_split: Option<String>,
    /// Split of seen users' test comparisons whose accuracy is shown beside the curve.
    #[arg(long)]
    pub seen_split: Option<String>,
    /// Share of each new user's comparisons (with --queries-by item, of the items they
    /// compared) held out as fixed queries.
    #[arg(long)]
    pub query_frac: Option<f64>,
    /// Fewest queries per new user (by item, users with fewer are left out).
    #[arg(long)]
    pub min_queries: Option<usize>,
    /// pair | item. pair: a share of each new user's comparisons are their queries. item: a
    /// share of the items they compared are query items, the queries are their comparisons of
    /// two query items and the shots those of two other items (comparisons across are
    /// unused), so no query item is among the shots; fewer comparisons remain for either.
    #[arg(long, default_value = "pair")]
    pub queries_by: crate::pal::QueriesBy,
    /// Also report the known-group bound: the same queries scored from a posterior over the
    /// groups of `users.group_name` (e.g. Persona's personas) given the same shots, and with
    /// each user's true group. A diagnostic: it reads the true groups.
    #[arg(long)]
    pub group_bound: bool,
    /// Also re-place the SEEN users from N of their --tune-split comparisons (the same
    /// estimator and settings as the curve) and score all of their --seen-split comparisons,
    /// beside their trained mixtures on the same queries: what N comparisons are worth for
    /// users the model knows, the yardstick for new users at N. Needs both splits.
    #[arg(long, requires_all = ["tune_split", "seen_split"])]
    pub refit_seen: bool,
    /// Also run the model world: the same users, queries and shots, but each new user's labels
    /// drawn from the model at a seen user's mixture (drawn with --seed), so that PAL holds
    /// exactly. Reports the Bayes-optimal accuracy from N shots (the posterior over the seen
    /// users' mixtures; no estimator does better in expectation), the accuracy of each user's
    /// true mixture, and the estimator's curve and oracles on the drawn labels: how close N
    /// shots can come to the oracle where the model is right. One draw: read it with its
    /// intervals. A diagnostic: it records nothing.
    #[arg(long)]
    pub model_world: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn set(m: &mut Mapping, key: &str, v: impl Into<Value>) {
    m.insert(Value::String(key.into()), v.into());
}

fn params<T: serde::de::DeserializeOwned>(m: Mapping) -> Result<T, CliError> {
    read_params(Value::Mapping(m)).map_err(|e| match e {
        ParamError::Invalid { path, message } => CliError::usage(anyhow::anyhow!(
            "--{}: {message}",
            path.replace(['.', '_'], "-")
        )),
        ParamError::UnknownKind => CliError::usage(anyhow::anyhow!("bad arguments")),
    })
}

impl TrainArgs {
    /// The flags as a `train` stage's parameters, checked as a pipeline would check them.
    fn to_params(&self) -> Result<TrainParams, CliError> {
        let a = self;
        let mut m = Mapping::new();
        set(&mut m, "model", a.model.clone());
        set(&mut m, "k", a.k as u64);
        set(&mut m, "train", a.train.clone());
        if let Some(v) = &a.val {
            set(&mut m, "val", v.clone());
        }
        if let Some(e) = &a.encoder {
            set(&mut m, "encoder", e.clone());
        }
        set(&mut m, "seed", a.seed);
        let mut config = Mapping::new();
        if let Some(d) = a.d {
            set(&mut config, "d", d as u64);
        }
        if let Some(arch) = &a.arch {
            set(&mut config, "item_arch", arch.clone());
            set(&mut config, "prototype_arch", arch.clone());
        }
        if let Some(l) = &a.loss {
            set(&mut config, "loss", l.clone());
        }
        if let Some(mo) = &a.mode {
            set(&mut config, "mode", mo.clone());
        }
        let mut training = Mapping::new();
        if let Some(e) = a.epochs {
            set(&mut training, "epochs", e as u64);
        }
        if let Some(b) = a.batch_size {
            set(&mut training, "batch_size", b as u64);
        }
        set(&mut m, "config", Value::Mapping(config));
        set(&mut m, "training", Value::Mapping(training));
        let p: TrainParams = params(m)?;
        p.model_config().map_err(CliError::usage)?;
        Ok(p)
    }
}

pub async fn train(ctx: &Ctx, a: TrainArgs) -> Result<(), CliError> {
    let p = a.to_params()?;
    let store = ctx.existing_store().await?;
    let _lock = store.lock()?;
    let before = store.versions().await?;
    match pal_stages::train_model(&store, &a.name, &p, None, ctx.printer).await {
        Ok(t) => {
            outln!("trained '{}': {}", a.name, t.summary)?;
            Ok(())
        }
        Err(e) => {
            // Only this process's own commits are undone; say which tables kept theirs.
            for kept in store.roll_back(&before).await?.kept {
                ctx.printer.warn(kept);
            }
            Err(classify(e))
        }
    }
}

/// Usage errors (bad configuration, unknown names) exit 2; the rest exit 1.
fn classify(e: anyhow::Error) -> CliError {
    let usage = e.chain().any(|c| {
        c.downcast_ref::<crate::pal::PalError>()
            .is_some_and(|p| p.is_usage())
            || c.downcast_ref::<crate::pipeline::features::FeatureError>()
                .is_some_and(|f| {
                    matches!(
                        f,
                        crate::pipeline::features::FeatureError::NoSplit { .. }
                            | crate::pipeline::features::FeatureError::NoEncoder { .. }
                            | crate::pipeline::features::FeatureError::NoCoveringEncoder { .. }
                            | crate::pipeline::features::FeatureError::AmbiguousEncoder { .. }
                    )
                })
    }) || {
        let m = e.to_string();
        m.starts_with("no model named")
            || m.starts_with("'encoder' is only for")
            || m.starts_with("the model name 'clip-score' is reserved")
            || (m.starts_with("encoder '") && m.contains("is ambiguous"))
            || m.contains("this split must hold seen users only")
    };
    CliError {
        code: if usage { 2 } else { 1 },
        error: e,
    }
}

pub async fn eval(ctx: &Ctx, a: EvalArgs) -> Result<(), CliError> {
    let store = ctx.existing_store().await?;
    let _lock = store.lock()?;
    let Some(model) = a.model.clone() else {
        let all = super::eval_all::AllModels {
            split: &a.split,
            encoder: a.encoder.as_deref(),
            bootstrap: a.bootstrap,
            seed: a.seed,
            json: a.json,
        };
        return super::eval_all::eval_all(ctx, &store, all).await;
    };
    let p = EvalParams {
        model: model.clone(),
        split: a.split.clone(),
        encoder: a.encoder.clone(),
        bootstrap: a.bootstrap,
        seed: a.seed,
    };
    let r = pal_stages::eval_model(&store, &p, None)
        .await
        .map_err(classify)?;
    if a.json {
        let mut v = pal_stages::summary_json(&r);
        v["per_user"]["users_detail"] = serde_json::to_value(&r.users).unwrap_or_default();
        v["model"] = model.clone().into();
        v["split"] = a.split.clone().into();
        outln!("{v}")?;
    } else {
        outln!("{model} on '{}': {}", a.split, pal_stages::one_line(&r))?;
        if let Some(ci) = &r.ci95_users {
            outln!(
                "  95% CI over users (bootstrap, {} resamples): [{:.2}, {:.2}]",
                a.bootstrap,
                100.0 * ci.lo,
                100.0 * ci.hi
            )?;
        }
        if let Some(m) = &r.mixture {
            let w: Vec<String> = m.mean_weight.iter().map(|x| format!("{x:.2}")).collect();
            outln!(
                "  mixtures (K={}): mean weights [{}], users per top prototype {:?}, mean max weight {:.2}",
                m.k,
                w.join(", "),
                m.argmax_users,
                m.mean_max_weight
            )?;
        }
    }
    Ok(())
}

pub async fn adapt(ctx: &Ctx, a: AdaptArgs) -> Result<(), CliError> {
    let store = ctx.existing_store().await?;
    let _lock = store.lock()?;
    let d = crate::pal::FewShotConfig::default();
    let p = AdaptParams {
        model: a.model.clone(),
        users: a.users.clone(),
        shots: a.shots.clone(),
        steps: a.steps.unwrap_or(d.steps),
        seed: a.seed,
        estimator: a.estimator,
        prior_scale: a.prior_scale.unwrap_or(d.prior_scale),
        ridge: a.ridge.unwrap_or(d.ridge),
        tune_split: a.tune_split.clone(),
        seen_split: a.seen_split.clone(),
        query_frac: a.query_frac.unwrap_or(d.query_frac),
        min_queries: a.min_queries.unwrap_or(d.min_queries),
        queries_by: a.queries_by,
    };
    let diag = pal_stages::AdaptDiagnostics {
        group_bound: a.group_bound,
        refit_seen: a.refit_seen,
        model_world: a.model_world,
    };
    let out = pal_stages::adapt_model(&store, &p, diag)
        .await
        .map_err(classify)?;
    if let Some(w) = out.single_prototype_warning(&a.model) {
        ctx.printer.warn(w);
    }
    let first = out.rows.first();
    if a.json {
        outln!(
            "{}",
            serde_json::json!({
                "model": a.model,
                "users": a.users,
                "results": out.rows,
                "oracle_accuracy": first.map(|r| r.oracle_accuracy),
                "heldout_oracle_accuracy": first.map(|r| r.heldout_oracle_accuracy),
                "heldout_estimator_accuracy": first.map(|r| r.heldout_estimator_accuracy),
                "seen_accuracy": first.and_then(|r| r.seen_accuracy),
                "zero_shot": out.zero_shot,
                "oracle": out.oracle,
                "heldout_oracle": out.heldout_oracle,
                "heldout_estimator": out.heldout_estimator,
                "seen": out.seen,
                "group_bound": out.group_bound.as_ref().map(group_bound_json),
                "refit_seen": out.refit_seen.as_ref().map(refit_seen_json),
                "model_world": out.model_world.as_ref().map(model_world_json),
                "simulation": out.simulation,
            })
        )?;
        return Ok(());
    }
    let ci = ci_text;
    let ci_of = |v: &serde_json::Value| {
        v["ci95_users"]
            .as_array()
            .and_then(|a| Some([a.first()?.as_f64()?, a.get(1)?.as_f64()?]))
    };
    if let Some(r) = first {
        outln!(
            "{} users ({} excluded: too few comparisons), {} queries each N{}; estimator {} (prior scale {}{})",
            r.users,
            r.skipped_users,
            r.n,
            if r.queries_by.is_pair() { "" } else { " (drawn by item)" },
            r.estimator,
            r.prior_scale,
            r.ridge.map(|l| format!(", ridge {l}")).unwrap_or_default()
        )?;
    }
    if !out.simulation.is_empty() {
        outln!("simulated few-shot on seen users (mean query accuracy over N):")?;
        for s in &out.simulation {
            let per: Vec<String> = s
                .per_shots
                .iter()
                .map(|(n, acc)| format!("{n}: {:.2}%", 100.0 * acc))
                .collect();
            outln!(
                "  {:<9} scale {:<4}{} {:>6.2}%  ({}; {} users)",
                s.estimator.name(),
                s.prior_scale,
                s.ridge.map(|l| format!(" ridge {l}")).unwrap_or_default(),
                100.0 * s.accuracy,
                per.join(", "),
                s.users
            )?;
        }
    }
    let table_header = || -> std::io::Result<()> {
        outln!(
            "{:>10} {:>10} {:>18}",
            "shots",
            "accuracy",
            "95% CI over users"
        )
    };
    table_header()?;
    // 0 shots is the zero-shot mixture itself: asked for, its row is the zero-shot row.
    let asked_zero = out.rows.iter().any(|r| r.shots == 0);
    if let (Some(r), false) = (first, asked_zero) {
        outln!(
            "{:>10} {:>9.2}% {:>18}",
            "zero-shot",
            100.0 * r.zero_shot_accuracy,
            ci(ci_of(&out.zero_shot))
        )?;
    }
    for r in &out.rows {
        let n = shots_label(r.shots);
        outln!(
            "{:>10} {:>9.2}% {:>18}",
            n,
            100.0 * r.accuracy,
            ci(r.ci95_users)
        )?;
    }
    if let Some(r) = first {
        outln!(
            "{:>10} {:>9.2}% {:>18}  (bound: mixture fitted by maximum likelihood on all comparisons, queries too)",
            "oracle",
            100.0 * r.oracle_accuracy,
            ci(ci_of(&out.oracle))
        )?;
        outln!(
            "{:>10} {:>9.2}% {:>18}  (reference: that fit on all shots, no query)",
            "held-out",
            100.0 * r.heldout_oracle_accuracy,
            ci(ci_of(&out.heldout_oracle))
        )?;
        outln!(
            "{:>10} {:>9.2}% {:>18}  (the estimator given all shots, no query)",
            "all shots",
            100.0 * r.heldout_estimator_accuracy,
            ci(ci_of(&out.heldout_estimator))
        )?;
    }
    if let Some(g) = &out.group_bound {
        let users = users_ci_text;
        outln!(
            "known-group bound (groups {}; posterior over groups from the same shots):",
            g.groups.join(", ")
        )?;
        outln!(
            "{:>10} {:>10} {:>18} {:>10} {:>9}",
            "shots",
            "posterior",
            "95% CI over users",
            "argmax",
            "hit rate"
        )?;
        for pt in &g.points {
            outln!(
                "{:>10} {:>9.2}% {:>18} {:>9.2}% {:>8.1}%",
                pt.shots,
                100.0 * pt.posterior.accuracy,
                users(&pt.posterior),
                100.0 * pt.argmax.accuracy,
                100.0 * pt.hit_rate
            )?;
        }
        outln!(
            "{:>10} {:>9.2}% {:>18}  (each user's true group)",
            "true",
            100.0 * g.true_group.accuracy,
            users(&g.true_group)
        )?;
    }
    if let Some(r) = &out.refit_seen {
        let users = users_ci_text;
        outln!(
            "seen users re-placed from N '{}' comparisons ({} users, {} excluded; {} '{}' queries each N):",
            a.tune_split.as_deref().unwrap_or(""),
            r.user_ids.len(),
            r.excluded_users.len(),
            r.queries,
            a.seen_split.as_deref().unwrap_or("")
        )?;
        table_header()?;
        for pt in &r.points {
            let n = shots_label(pt.shots);
            outln!(
                "{:>10} {:>9.2}% {:>18}",
                n,
                100.0 * pt.refit.accuracy,
                users(&pt.refit)
            )?;
        }
        outln!(
            "{:>10} {:>9.2}% {:>18}  (the same users and queries, trained mixtures)",
            "trained",
            100.0 * r.trained.accuracy,
            users(&r.trained)
        )?;
    }
    if let Some(s) = &out.seen {
        outln!(
            "{:>10} {:>9.2}% {:>18}  (seen users on '{}')",
            "seen",
            100.0 * s["accuracy"].as_f64().unwrap_or(f64::NAN),
            ci(ci_of(s)),
            a.seen_split.as_deref().unwrap_or("")
        )?;
    }
    if let Some(w) = &out.model_world {
        print_model_world(w, first.is_some_and(|r| !r.queries_by.is_pair()))?;
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  palpipe sweep --model pal-b --k 1,2,3,4 --seeds 0,1,2 --train persona-train --val persona-val --test persona-test --encoder all-MiniLM-L6-v2"
)]
pub struct SweepArgs {
    /// pal-b | pal-a
    #[arg(long, default_value = "pal-b")]
    pub model: String,
    /// Values of K to train, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4")]
    pub k: Vec<usize>,
    /// Seeds to repeat each K with; the table shows mean ± std over them.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    #[arg(long)]
    pub train: String,
    #[arg(long)]
    pub val: Option<String>,
    /// Split to evaluate on.
    #[arg(long)]
    pub test: String,
    #[arg(long)]
    pub encoder: String,
    /// Models are registered as PREFIX-k{K}-s{SEED}.
    #[arg(long, default_value = "sweep")]
    pub prefix: String,
    /// Preference-space dimension d.
    #[arg(long)]
    pub d: Option<usize>,
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Print JSON lines (one per K) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Trains and evaluates every (K, seed), then prints one row per K.
pub async fn sweep(ctx: &Ctx, a: SweepArgs) -> Result<(), CliError> {
    let store = ctx.existing_store().await?;
    let _lock = store.lock()?;
    let mut rows = Vec::new();
    for &k in &a.k {
        let mut accs = Vec::new();
        let mut last_ci = None;
        for &seed in &a.seeds {
            let p = TrainArgs {
                name: String::new(),
                model: a.model.clone(),
                k,
                train: a.train.clone(),
                val: a.val.clone(),
                encoder: Some(a.encoder.clone()),
                seed,
                d: a.d,
                arch: None,
                loss: None,
                mode: None,
                epochs: a.epochs,
                batch_size: None,
            }
            .to_params()?;
            let name = format!("{}-k{k}-s{seed}", a.prefix);
            ctx.printer.status(format!("training {name}"));
            pal_stages::train_model(&store, &name, &p, None, ctx.printer)
                .await
                .map_err(classify)?;
            let e = EvalParams {
                model: name,
                split: a.test.clone(),
                encoder: None,
                bootstrap: 0,
                seed,
            };
            let r = pal_stages::eval_model(&store, &e, None)
                .await
                .map_err(classify)?;
            accs.push(r.accuracy);
            last_ci = Some(r.ci95);
        }
        let ms = crate::eval::metrics::mean_std(&accs);
        rows.push((k, ms, last_ci));
    }
    for (k, ms, ci) in &rows {
        if a.json {
            outln!(
                "{}",
                serde_json::json!({"k": k, "accuracy_mean": ms.mean, "accuracy_std": ms.std, "seeds": ms.count, "ci95_last_seed": ci.map(|c| [c.lo, c.hi])})
            )?;
        }
    }
    if !a.json {
        outln!(
            "{:>3} {:>10} {:>8} {:>6} {:>22}",
            "K",
            "accuracy",
            "std",
            "seeds",
            "95% CI (one seed)"
        )?;
        for (k, ms, ci) in &rows {
            let ci = ci
                .map(|c| format!("[{:.2}, {:.2}]", 100.0 * c.lo, 100.0 * c.hi))
                .unwrap_or_default();
            outln!(
                "{k:>3} {:>9.2}% {:>8.2} {:>6} {ci:>22}",
                100.0 * ms.mean,
                100.0 * ms.std,
                ms.count
            )?;
        }
    }
    Ok(())
}

/// Seen users re-placed from N shots as `--json` prints it: reports without their per-user
/// lists; `ridge` ("inf" for ∞) only for `offset`.
fn refit_seen_json(r: &crate::pal::SeenRefit) -> serde_json::Value {
    serde_json::json!({
        "estimator": r.estimator,
        "prior_scale": r.prior_scale,
        "ridge": r.ridge.map(|l| if l.is_finite() { serde_json::json!(l) } else { serde_json::json!("inf") }),
        "users": r.user_ids.len(),
        "excluded_users": r.excluded_users.len(),
        "n": r.queries,
        "points": r.points.iter().map(|p| serde_json::json!({
            "shots": p.shots,
            "accuracy": p.refit.accuracy,
            "report": pal_stages::summary_json(&p.refit),
        })).collect::<Vec<_>>(),
        "trained_accuracy": r.trained.accuracy,
        "trained": pal_stages::summary_json(&r.trained),
    })
}

/// A 95% interval in percent, `[lo, hi]`, or `-` without one.
fn ci_text(c: Option<[f64; 2]>) -> String {
    c.map(|[lo, hi]| format!("[{:.2}, {:.2}]", 100.0 * lo, 100.0 * hi))
        .unwrap_or_else(|| "-".into())
}

/// A report's 95% interval over users, as [`ci_text`] writes it.
fn users_ci_text(r: &crate::pal::EvalReport) -> String {
    ci_text(r.ci95_users.as_ref().map(|c| [c.lo, c.hi]))
}

/// A shot count as the tables label it: 0 is the zero-shot row.
fn shots_label(n: usize) -> String {
    match n {
        0 => "zero-shot".to_string(),
        n => n.to_string(),
    }
}

/// The model world as the text table prints it: per N the Bayes-optimal accuracy and the
/// estimator's, both on the drawn labels, then the oracles and the true mixtures.
fn print_model_world(w: &crate::pal::ModelWorld, by_item: bool) -> std::io::Result<()> {
    let pct = |r: &crate::pal::EvalReport| format!("{:.2}%", 100.0 * r.accuracy);
    let users = users_ci_text;
    let c = &w.curve;
    outln!(
        "model world (labels drawn from the model at the mixtures of {} seen users; {} users, {} queries each N{}):",
        w.atoms,
        c.user_ids.len(),
        c.queries,
        if by_item { " (drawn by item)" } else { "" }
    )?;
    outln!(
        "  Bayes: the prediction averaged over those mixtures, each weighed by how well it explains"
    )?;
    outln!(
        "  the N shots (at 0 shots, all alike): best in expectation; one draw may fall under the estimator"
    )?;
    outln!(
        "{:>10} {:>10} {:>18} {:>10} {:>18}",
        "shots",
        "Bayes",
        "95% CI over users",
        c.estimator.name(),
        "95% CI over users"
    )?;
    for (b, e) in w.points.iter().zip(&c.points) {
        let n = shots_label(b.shots);
        outln!(
            "{:>10} {:>10} {:>18} {:>10} {:>18}",
            n,
            pct(&b.bayes),
            users(&b.bayes),
            pct(&e.adapted),
            users(&e.adapted)
        )?;
    }
    for (name, r, what) in [
        (
            "oracle",
            &c.oracle,
            "in-sample maximum likelihood on the drawn labels",
        ),
        (
            "held-out",
            &c.heldout_oracle,
            "that fit on all shots, no query",
        ),
        ("true", &w.truth, "each user's true mixture"),
    ] {
        outln!(
            "{:>10} {:>10} {:>18} {:>10} {:>18}  ({what})",
            name,
            "",
            "",
            pct(r),
            users(r)
        )?;
    }
    Ok(())
}

/// The model world as `--json` prints it: reports without their per-user lists.
fn model_world_json(w: &crate::pal::ModelWorld) -> serde_json::Value {
    let c = &w.curve;
    serde_json::json!({
        "atoms": w.atoms,
        "users": c.user_ids.len(),
        "truths": c.user_ids.iter().zip(&w.truths).map(|(u, t)| serde_json::json!({"user": u, "true_mixture_of": t})).collect::<Vec<_>>(),
        "n": c.queries,
        "estimator": c.estimator,
        "points": w.points.iter().zip(&c.points).map(|(b, e)| serde_json::json!({
            "shots": b.shots,
            "bayes_accuracy": b.bayes.accuracy,
            "bayes": pal_stages::summary_json(&b.bayes),
            "estimator_accuracy": e.adapted.accuracy,
            "estimator": pal_stages::summary_json(&e.adapted),
        })).collect::<Vec<_>>(),
        "zero_shot_accuracy": c.zero_shot.accuracy,
        "oracle_accuracy": c.oracle.accuracy,
        "oracle": pal_stages::summary_json(&c.oracle),
        "heldout_oracle_accuracy": c.heldout_oracle.accuracy,
        "heldout_oracle": pal_stages::summary_json(&c.heldout_oracle),
        "truth_accuracy": w.truth.accuracy,
        "truth": pal_stages::summary_json(&w.truth),
    })
}

/// The known-group bound as `--json` prints it: reports without their per-user lists.
fn group_bound_json(g: &crate::pal::GroupBound) -> serde_json::Value {
    serde_json::json!({
        "groups": g.groups,
        "seen_per_group": g.seen_per_group,
        "users": g.user_ids.len(),
        "n": g.queries,
        "points": g.points.iter().map(|p| serde_json::json!({
            "shots": p.shots,
            "posterior_accuracy": p.posterior.accuracy,
            "posterior": pal_stages::summary_json(&p.posterior),
            "argmax_accuracy": p.argmax.accuracy,
            "argmax": pal_stages::summary_json(&p.argmax),
            "hit_rate": p.hit_rate,
        })).collect::<Vec<_>>(),
        "true_group_accuracy": g.true_group.accuracy,
        "true_group": pal_stages::summary_json(&g.true_group),
    })
}
