//! `palpipe eval --split S` without `--model`: every stored model that can score the split,
//! plus the zero-shot CLIP score when the split compares images, one row each, best first.
//!
//! Each model goes through the same call as `palpipe eval --model X` (so a row equals that
//! command's result and its metrics are recorded the same way); a model that cannot score
//! the split (vectors of another encoder, items never embedded, …) is skipped with its
//! reason on stderr. The single-model command lives in `pal_cmds.rs`.

use arrow_array::{Array, Int32Array, StringArray};

use super::{render_error, CliError, Ctx};
use crate::pal::EvalReport;
use crate::pipeline::features::split_sql;
use crate::pipeline::pal_stages::{self, EvalParams, CLIP_SCORE};
use crate::store::Store;

/// One stored model as the `models` table lists it.
struct Candidate {
    name: String,
    kind: String,
    k: i32,
}

/// One scored model.
struct Row {
    model: Candidate,
    report: EvalReport,
}

/// What `eval` without `--model` needs from the command line.
pub struct AllModels<'a> {
    pub split: &'a str,
    /// For the CLIP score only (as `--encoder` with `--model clip-score`).
    pub encoder: Option<&'a str>,
    pub bootstrap: usize,
    pub seed: u64,
    pub json: bool,
}

/// Evaluates every model that can score `a.split` and prints the table (or JSON lines).
pub async fn eval_all(ctx: &Ctx, store: &Store, a: AllModels<'_>) -> Result<(), CliError> {
    // An unknown split is bad usage for every model alike: say so once.
    split_sql(store, a.split).await.map_err(CliError::usage)?;
    let images = split_has_images(store, a.split).await?;
    let mut candidates = stored_models(store).await?;
    if images && !candidates.iter().any(|c| c.name == CLIP_SCORE) {
        candidates.push(Candidate {
            name: CLIP_SCORE.into(),
            kind: CLIP_SCORE.into(),
            k: 1,
        });
    }
    let mut rows = Vec::new();
    let mut skipped = 0;
    for c in candidates {
        if c.name == CLIP_SCORE && !images {
            skipped += 1;
            ctx.printer.warn(format!(
                "skipped '{CLIP_SCORE}': split '{}' compares no images",
                a.split
            ));
            continue;
        }
        let p = EvalParams {
            model: c.name.clone(),
            split: a.split.to_string(),
            encoder: (c.name == CLIP_SCORE)
                .then(|| a.encoder.map(str::to_string))
                .flatten(),
            bootstrap: a.bootstrap,
            seed: a.seed,
        };
        ctx.printer.status(format!("evaluating '{}'", c.name));
        match pal_stages::eval_model(store, &p, None).await {
            Ok(report) => rows.push(Row { model: c, report }),
            Err(e) => {
                skipped += 1;
                // The reason's first line: hints belong to the single-model command.
                let why = render_error(&e);
                let why = why.lines().next().unwrap_or_default();
                ctx.printer.warn(format!("skipped '{}': {why}", c.name));
            }
        }
    }
    if rows.is_empty() {
        return Err(CliError::failure(anyhow::anyhow!(
            "no stored model can score split '{}' ({skipped} skipped)\nhint: train one on vectors of the split's items, e.g. with a 'train' stage, then rerun",
            a.split
        )));
    }
    // Best first; equal accuracies in name order, so the output is stable.
    rows.sort_by(|x, y| {
        y.report
            .accuracy
            .total_cmp(&x.report.accuracy)
            .then_with(|| x.model.name.cmp(&y.model.name))
    });
    if a.json {
        for r in &rows {
            let mut v = pal_stages::summary_json(&r.report);
            v["model"] = r.model.name.clone().into();
            v["kind"] = r.model.kind.clone().into();
            v["k"] = r.model.k.into();
            v["split"] = a.split.into();
            outln!("{v}")?;
        }
    } else {
        print_table(a.split, a.bootstrap, &rows)?;
    }
    Ok(())
}

fn print_table(split: &str, bootstrap: usize, rows: &[Row]) -> std::io::Result<()> {
    // Columns as wide as their widest value or their header.
    let widest = |header: &str, value: fn(&Row) -> &str| {
        rows.iter()
            .map(|r| value(r).chars().count())
            .fold(header.len(), usize::max)
    };
    let width = widest("model", |r| &r.model.name);
    let kind_width = widest("kind", |r| &r.model.kind);
    let pct = |lo: f64, hi: f64| format!("[{:.2}, {:.2}]", 100.0 * lo, 100.0 * hi);
    outln!("split '{split}', best first")?;
    outln!(
        "{:<width$}  {:<kind_width$} {:>2} {:>9} {:>16} {:>16} {:>7} {:>6}",
        "model",
        "kind",
        "K",
        "accuracy",
        "95% CI",
        "users' 95% CI",
        "n",
        "users"
    )?;
    for r in rows {
        let rep = &r.report;
        let users_ci = rep
            .ci95_users
            .as_ref()
            .map(|c| pct(c.lo, c.hi))
            .unwrap_or_else(|| "-".into());
        outln!(
            "{:<width$}  {:<kind_width$} {:>2} {:>8.2}% {:>16} {:>16} {:>7} {:>6}",
            r.model.name,
            r.model.kind,
            r.model.k,
            100.0 * rep.accuracy,
            pct(rep.ci95.lo, rep.ci95.hi),
            users_ci,
            rep.n,
            rep.users.len()
        )?;
    }
    outln!(
        "95% CI: Wilson over comparisons; users' 95% CI: bootstrap over users ({bootstrap} resamples)"
    )?;
    let unseen: Vec<String> = rows
        .iter()
        .filter(|r| r.report.unknown_users > 0)
        .map(|r| {
            format!(
                "{} {} of {}",
                r.model.name,
                r.report.unknown_users,
                r.report.users.len()
            )
        })
        .collect();
    if !unseen.is_empty() {
        outln!(
            "users not seen in training (scored with the mean mixture): {}",
            unseen.join(", ")
        )?;
    }
    Ok(())
}

/// The models in `models`, in name order.
async fn stored_models(store: &Store) -> Result<Vec<Candidate>, CliError> {
    let mut out = Vec::new();
    for b in store.read("models", &["name", "kind", "k"], None).await? {
        let name = b.column(0).as_any().downcast_ref::<StringArray>();
        let kind = b.column(1).as_any().downcast_ref::<StringArray>();
        let k = b.column(2).as_any().downcast_ref::<Int32Array>();
        let (Some(name), Some(kind)) = (name, kind) else {
            continue;
        };
        for i in 0..b.num_rows() {
            out.push(Candidate {
                name: name.value(i).to_string(),
                kind: if kind.is_null(i) {
                    String::new()
                } else {
                    kind.value(i).to_string()
                },
                k: k.filter(|k| !k.is_null(i)).map(|k| k.value(i)).unwrap_or(1),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Whether the split's comparisons are between image items (what the CLIP score needs).
async fn split_has_images(store: &Store, split: &str) -> Result<bool, CliError> {
    let q = split_sql(store, split).await.map_err(CliError::usage)?;
    let probe = format!(
        "SELECT 1 FROM ({q}) s JOIN items i ON i.item_id = s.left_id WHERE i.kind = 'image' LIMIT 1"
    );
    let r = crate::store::sql::query(store, &probe, &Default::default()).await?;
    Ok(r.batches.iter().any(|b| b.num_rows() > 0))
}
