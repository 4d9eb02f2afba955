//! report: one pipeline run rendered as Markdown tables and hand-written SVG plots.
//!
//! Pure functions over plain records (the CLI, `src/cli/report.rs`, reads them from the
//! `runs` and `models` tables and writes the files). Nothing here touches the store.
//!
//! Which models belong to a run ([`select_models`]):
//! 1. every model whose `run_id` is the run (trained by one of its `train` stages, or for
//!    `clip-score`, evaluated by one of its `eval` stages);
//! 2. for each `train` stage the run *skipped* (unchanged), the model that stage trained in
//!    the latest earlier run of the same pipeline where it ran (`done`) — preferring one
//!    with the same fingerprint — provided that model still carries that run's id (it was
//!    not retrained since). A stage's model is the model of that run named like the stage;
//!    when the stage renamed its model (`name:`), the run's unnamed-matched stages and
//!    models are paired in training order.
//!
//! 3. the zero-shot `clip-score` row, when an `eval` stage of this run ran or was skipped
//!    and the row was registered by this run or an earlier run of the same pipeline.
//!
//! Train stages whose model cannot be found (retrained by a later run, or removed) are
//! listed as notes. Metrics are the model's metrics as the store holds them now: an `eval`
//! run after the pipeline (e.g. `palpipe eval`) shows up too.
//!
//! Plots: accuracy against K per evaluated split (one series per model kind, 95% Wilson CI
//! bars, the untrained baselines — popularity, the zero-shot CLIP score — as dashed lines),
//! new users' accuracy against shots per adaptation split (zero-shot dashed), and for PAL-A models whose prototypes live in a 2-D
//! input space, the prototypes with the seen users' ideal points (the paper's Fig. D.1).
//!
//! The SVGs are small and self-contained (no fonts embedded, `sans-serif` text): every data
//! point is a `<circle class="point">`, so tools and tests can count them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

/// One stage of a run, as `runs.stages_json` records it (the runner's own record type).
pub type StageInfo = crate::pipeline::StageRecord;

/// One row of `runs`.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run_id: String,
    pub pipeline: String,
    pub pipeline_file: Option<String>,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub outcome: String,
    pub error: Option<String>,
    pub stages: Vec<StageInfo>,
}

/// One row of `models`, with its metrics parsed.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub kind: String,
    pub k: i32,
    pub encoder_id: Option<String>,
    pub train_split: String,
    pub checkpoint: String,
    pub metrics: BTreeMap<String, Value>,
    pub run_id: Option<String>,
    pub created_ms: i64,
}

/// A model that belongs to the run, and why.
#[derive(Debug, Clone)]
pub struct Selected {
    pub model: ModelInfo,
    pub why: String,
}

/// The run's models (see the module docs) and notes about train stages without one.
pub fn select_models(
    run: &RunInfo,
    runs: &[RunInfo],
    models: &[ModelInfo],
) -> (Vec<Selected>, Vec<String>) {
    let mut out: Vec<Selected> = Vec::new();
    let mut notes = Vec::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut own: Vec<&ModelInfo> = models
        .iter()
        .filter(|m| m.run_id.as_deref() == Some(run.run_id.as_str()))
        .collect();
    own.sort_by(|a, b| (a.created_ms, &a.name).cmp(&(b.created_ms, &b.name)));
    for m in own {
        taken.insert(m.name.clone());
        out.push(Selected {
            model: m.clone(),
            why: "trained in this run".into(),
        });
    }
    for st in run.stages.iter().filter(|s| s.kind == "train") {
        match st.status.as_str() {
            "done"
                if !out.iter().any(|s| s.model.name == st.name)
                    && !run_trained_renamed(run, models) =>
            {
                notes.push(format!(
                    "train stage '{}' ran here, but its model now carries another run's id (retrained since?)",
                    st.name
                ));
            }
            "skipped" => match provider_model(run, st, runs, models) {
                Some((m, from)) if !taken.contains(&m.name) => {
                    taken.insert(m.name.clone());
                    out.push(Selected {
                        model: m.clone(),
                        why: format!("stage '{}' skipped (unchanged); trained in run {from}", st.name),
                    });
                }
                Some(_) => {}
                None => notes.push(format!(
                    "train stage '{}' was skipped, and the model it trained earlier is no longer in the store under that run (retrained or removed)",
                    st.name
                )),
            },
            _ => {}
        }
    }
    // The zero-shot CLIP score has no train stage: an eval stage of this pipeline that ran
    // or was skipped as unchanged keeps the row that an earlier run of it registered.
    if run
        .stages
        .iter()
        .any(|s| s.kind == "eval" && (s.status == "done" || s.status == "skipped"))
    {
        for m in models.iter().filter(|m| m.kind == "clip-score") {
            let from = runs.iter().find(|r| {
                Some(r.run_id.as_str()) == m.run_id.as_deref()
                    && r.pipeline == run.pipeline
                    && r.started_ms <= run.started_ms
            });
            if let Some(from) = from {
                if taken.insert(m.name.clone()) {
                    out.push(Selected {
                        model: m.clone(),
                        why: format!("zero-shot baseline, registered in run {}", from.run_id),
                    });
                }
            }
        }
    }
    (out, notes)
}

/// Whether some model of this run is not named after one of its train stages (a rename).
fn run_trained_renamed(run: &RunInfo, models: &[ModelInfo]) -> bool {
    models.iter().any(|m| {
        m.run_id.as_deref() == Some(run.run_id.as_str())
            && !run
                .stages
                .iter()
                .any(|s| s.kind == "train" && s.name == m.name)
    })
}

/// The model a skipped train stage trained in an earlier run, and that run's id.
fn provider_model<'a>(
    run: &RunInfo,
    st: &StageInfo,
    runs: &'a [RunInfo],
    models: &'a [ModelInfo],
) -> Option<(&'a ModelInfo, &'a str)> {
    let earlier = |same_fp: bool| {
        runs.iter()
            .filter(|r| {
                r.pipeline == run.pipeline
                    && r.run_id != run.run_id
                    && r.started_ms <= run.started_ms
                    && r.stages.iter().any(|s| {
                        s.name == st.name
                            && s.kind == "train"
                            && s.status == "done"
                            && (!same_fp || s.fingerprint == st.fingerprint)
                    })
            })
            .max_by_key(|r| r.started_ms)
    };
    let provider = earlier(true).or_else(|| earlier(false))?;
    let mut theirs: Vec<&ModelInfo> = models
        .iter()
        .filter(|m| m.run_id.as_deref() == Some(provider.run_id.as_str()))
        .collect();
    theirs.sort_by(|a, b| (a.created_ms, &a.name).cmp(&(b.created_ms, &b.name)));
    if let Some(m) = theirs.iter().find(|m| m.name == st.name) {
        return Some((m, &provider.run_id));
    }
    // Renamed models: pair the provider's done train stages without a same-named model
    // with its models without a same-named stage, in order.
    let stages: Vec<&StageInfo> = provider
        .stages
        .iter()
        .filter(|s| s.kind == "train" && s.status == "done")
        .filter(|s| !theirs.iter().any(|m| m.name == s.name))
        .collect();
    let unnamed: Vec<&&ModelInfo> = theirs
        .iter()
        .filter(|m| {
            !provider
                .stages
                .iter()
                .any(|s| s.kind == "train" && s.name == m.name)
        })
        .collect();
    if stages.len() != unnamed.len() {
        return None;
    }
    let i = stages.iter().position(|s| s.name == st.name)?;
    Some((unnamed[i], &provider.run_id))
}

/// One evaluation of a model on a split (a non-`adapt:` key of its metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalPoint {
    pub model: String,
    pub kind: String,
    pub k: i32,
    pub split: String,
    pub accuracy: f64,
    pub ci95: Option<(f64, f64)>,
    pub ci95_users: Option<(f64, f64)>,
    pub n: Option<u64>,
    pub ties: Option<u64>,
    pub per_user: Option<(f64, f64, u64)>,
}

/// One row of an adaptation result (an `adapt:<split>` key).
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptPoint {
    pub model: String,
    pub kind: String,
    pub k: i32,
    pub split: String,
    pub shots: u64,
    pub users: u64,
    pub accuracy: f64,
    pub zero_shot: f64,
    /// 95% interval: over users when the row has one, else Wilson over comparisons.
    pub ci95: Option<(f64, f64)>,
    /// The oracle mixture's accuracy on the same queries (a bound), when recorded.
    pub oracle: Option<f64>,
    /// The model's accuracy on the seen users' test split, when recorded.
    pub seen: Option<f64>,
}

fn pair(v: &Value) -> Option<(f64, f64)> {
    let a = v.as_array()?;
    Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?))
}

/// Every evaluation and adaptation row of the selected models.
pub fn points(models: &[Selected]) -> (Vec<EvalPoint>, Vec<AdaptPoint>) {
    let mut evals = Vec::new();
    let mut adapts = Vec::new();
    for s in models {
        let m = &s.model;
        for (key, v) in &m.metrics {
            if let Some(split) = key.strip_prefix("adapt:") {
                for row in v.as_array().into_iter().flatten() {
                    let (Some(shots), Some(acc)) =
                        (row["shots"].as_u64(), row["accuracy"].as_f64())
                    else {
                        continue;
                    };
                    adapts.push(AdaptPoint {
                        model: m.name.clone(),
                        kind: m.kind.clone(),
                        k: m.k,
                        split: split.to_string(),
                        shots,
                        users: row["users"].as_u64().unwrap_or(0),
                        accuracy: acc,
                        zero_shot: row["zero_shot_accuracy"].as_f64().unwrap_or(f64::NAN),
                        ci95: pair(&row["ci95_users"]).or_else(|| pair(&row["report"]["ci95"])),
                        oracle: row["oracle_accuracy"].as_f64(),
                        seen: row["seen_accuracy"].as_f64(),
                    });
                }
            } else if let Some(acc) = v["accuracy"].as_f64() {
                let pu = &v["per_user"];
                evals.push(EvalPoint {
                    model: m.name.clone(),
                    kind: m.kind.clone(),
                    k: m.k,
                    split: key.clone(),
                    accuracy: acc,
                    ci95: pair(&v["ci95"]),
                    ci95_users: pair(&v["ci95_users"]),
                    n: v["n"].as_u64(),
                    ties: v["ties"].as_u64(),
                    per_user: match (pu["mean"].as_f64(), pu["std"].as_f64()) {
                        (Some(a), Some(b)) => Some((a, b, pu["users"].as_u64().unwrap_or(0))),
                        _ => None,
                    },
                });
            }
        }
    }
    evals.sort_by(|a, b| {
        (&a.split, &a.kind, a.k, &a.model).cmp(&(&b.split, &b.kind, b.k, &b.model))
    });
    adapts.sort_by(|a, b| (&a.split, &a.model, a.shots).cmp(&(&b.split, &b.model, b.shots)));
    (evals, adapts)
}

/// A file-name-safe form of a split or model name.
pub fn slug(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        "_".into()
    } else {
        out
    }
}

/// The plot files of a report: (file name, SVG text, caption).
pub struct Plot {
    pub file: String,
    pub svg: String,
    pub caption: String,
}

/// One accuracy-against-K plot per evaluated split, one per adaptation split.
pub fn plots(run: &RunInfo, evals: &[EvalPoint], adapts: &[AdaptPoint]) -> Vec<Plot> {
    let mut out = Vec::new();
    let splits: BTreeSet<&str> = evals.iter().map(|e| e.split.as_str()).collect();
    for split in splits {
        let here: Vec<&EvalPoint> = evals.iter().filter(|e| e.split == split).collect();
        out.push(Plot {
            file: format!("accuracy-vs-k-{}.svg", slug(split)),
            svg: accuracy_vs_k_svg(&run.pipeline, split, &here),
            caption: format!("Accuracy against K on '{split}' (95% Wilson CI over comparisons)"),
        });
    }
    let splits: BTreeSet<&str> = adapts.iter().map(|a| a.split.as_str()).collect();
    for split in splits {
        let here: Vec<&AdaptPoint> = adapts.iter().filter(|a| a.split == split).collect();
        out.push(Plot {
            file: format!("adapt-{}.svg", slug(split)),
            svg: shots_svg(&run.pipeline, split, &here),
            caption: format!("New users' accuracy on '{split}' against shots per user"),
        });
    }
    out
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

fn ci(c: Option<(f64, f64)>) -> String {
    c.map(|(lo, hi)| format!("[{:.2}, {:.2}]", 100.0 * lo, 100.0 * hi))
        .unwrap_or_else(|| "–".into())
}

/// Text safe inside a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// The report's Markdown.
pub fn markdown(
    run: &RunInfo,
    selected: &[Selected],
    notes: &[String],
    evals: &[EvalPoint],
    adapts: &[AdaptPoint],
    plots: &[Plot],
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Run report: `{}`\n", run.run_id);
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| pipeline | `{}` |", cell(&run.pipeline));
    if let Some(f) = &run.pipeline_file {
        let _ = writeln!(md, "| pipeline file | `{}` |", cell(f));
    }
    let _ = writeln!(md, "| started | {} |", utc(run.started_ms));
    let _ = writeln!(
        md,
        "| wall time | {:.1} s |",
        (run.finished_ms - run.started_ms) as f64 / 1000.0
    );
    let _ = writeln!(md, "| outcome | {} |", cell(&run.outcome));
    if let Some(e) = &run.error {
        let _ = writeln!(md, "| error | {} |", cell(e));
    }
    md.push('\n');

    let _ = writeln!(md, "## Models\n");
    if selected.is_empty() {
        let _ = writeln!(md, "This run trained no models.\n");
    } else {
        let _ = writeln!(
            md,
            "Models trained by this run, or by an earlier run of the same pipeline for train stages this run skipped as unchanged. Metrics are as the store holds them now.\n"
        );
        let _ = writeln!(
            md,
            "| model | kind | K | encoder | train split | checkpoint | trained | from |"
        );
        let _ = writeln!(md, "|---|---|---:|---|---|---|---|---|");
        for s in selected {
            let m = &s.model;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&m.name),
                cell(&m.kind),
                m.k,
                cell(m.encoder_id.as_deref().unwrap_or("–")),
                cell(&m.train_split),
                cell(if m.checkpoint.is_empty() {
                    "–"
                } else {
                    &m.checkpoint
                }),
                utc(m.created_ms),
                cell(&s.why)
            );
        }
        md.push('\n');
    }
    for n in notes {
        let _ = writeln!(md, "> note: {}\n", cell(n));
    }

    let _ = writeln!(md, "## Evaluation\n");
    if evals.is_empty() {
        let _ = writeln!(md, "No model of this run has been evaluated.\n");
    } else {
        let _ = writeln!(
            md,
            "Accuracy over held-out comparisons; 95% CI: Wilson over comparisons, and bootstrap over users; per user: mean ± std of users' accuracies.\n"
        );
        let _ = writeln!(
            md,
            "| model | kind | K | split | accuracy | 95% CI | 95% CI (users) | n | ties | per user (mean ± std) | users |"
        );
        let _ = writeln!(md, "|---|---|---:|---|---:|---|---|---:|---:|---|---:|");
        for e in evals {
            let pu = e
                .per_user
                .map(|(m, s, _)| format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * s))
                .unwrap_or_else(|| "–".into());
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&e.model),
                cell(&e.kind),
                e.k,
                cell(&e.split),
                pct(e.accuracy),
                ci(e.ci95),
                ci(e.ci95_users),
                e.n.map(|x| x.to_string()).unwrap_or_else(|| "–".into()),
                e.ties.map(|x| x.to_string()).unwrap_or_else(|| "–".into()),
                pu,
                e.per_user
                    .map(|p| p.2.to_string())
                    .unwrap_or_else(|| "–".into()),
            );
        }
        md.push('\n');
    }

    if !adapts.is_empty() {
        let _ = writeln!(md, "## Adaptation to new users\n");
        let _ = writeln!(
            md,
            "Each new user's mixture weights fitted from `shots` of their comparisons and scored on a fixed query set of that user's comparisons, the same at every shot count; zero-shot uses the seen users' mean mixture; the oracle mixture is fitted on the queries too (a bound, not a result); seen is the model's accuracy on the seen users' test split. CIs over users when recorded.\n"
        );
        let _ = writeln!(
            md,
            "| model | users split | shots | users | accuracy | 95% CI | zero-shot | oracle (bound) | seen |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---|---:|---:|---:|");
        for a in adapts {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&a.model),
                cell(&a.split),
                a.shots,
                a.users,
                pct(a.accuracy),
                ci(a.ci95),
                if a.zero_shot.is_finite() {
                    pct(a.zero_shot)
                } else {
                    "–".into()
                },
                a.oracle.map(pct).unwrap_or_else(|| "–".into()),
                a.seen.map(pct).unwrap_or_else(|| "–".into())
            );
        }
        md.push('\n');
    }

    if !plots.is_empty() {
        let _ = writeln!(md, "## Plots\n");
        for p in plots {
            let _ = writeln!(md, "### {}\n\n![{}]({})\n", p.caption, p.caption, p.file);
        }
    }

    let _ = writeln!(md, "## Stages\n");
    let _ = writeln!(md, "| stage | kind | status | seconds | summary |");
    let _ = writeln!(md, "|---|---|---|---:|---|");
    for s in &run.stages {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {} |",
            cell(&s.name),
            cell(&s.kind),
            cell(&s.status),
            s.seconds,
            cell(&s.summary)
        );
    }
    md
}

// ---------------------------------------------------------------------------------------
// SVG

const W: f64 = 820.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 280.0; // legend column
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `v` with as many decimals as `step` needs (2.5 → 1, 0.25 → 2).
fn tick_label(v: f64, step: f64) -> String {
    let d = (0..4)
        .find(|&d| {
            let x = step * 10f64.powi(d);
            (x - x.round()).abs() < 1e-6
        })
        .unwrap_or(4) as usize;
    format!("{v:.d$}")
}

/// A "nice" tick step for a range of `span` with about `n` ticks.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// The y range (in %) covering `vals`, padded and snapped to ticks, within [0, 100].
fn y_range(vals: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 100.0, 10.0);
    }
    let pad = ((hi - lo) * 0.1).max(2.0);
    let (lo, hi) = ((lo - pad).max(0.0), (hi + pad).min(100.0));
    let step = nice_step(hi - lo, 6.0);
    let lo = (lo / step).floor() * step;
    let hi = ((hi / step).ceil() * step).min(100.0);
    (lo, hi.max(lo + step), step)
}

struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        H - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)
    }
}

/// The frame, grid, ticks, axis labels and title. `xticks` are (value, label).
fn axes(
    s: &mut String,
    f: &Frame,
    ystep: f64,
    xticks: &[(f64, String)],
    title: &str,
    xlabel: &str,
    ylabel: &str,
) {
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="{W}" height="{H}" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="28" font-size="15" font-weight="bold" text-anchor="middle">{}</text>"##,
        (LEFT + W - RIGHT) / 2.0,
        esc(title)
    );
    let (l, r, t, b) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
    let mut y = f.y0;
    while y <= f.y1 + 1e-9 {
        let py = f.py(y);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{py:.1}" x2="{r}" y2="{py:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            l - 6.0,
            py + 4.0,
            tick_label(y, ystep)
        );
        y += ystep;
    }
    for (x, label) in xticks {
        let px = f.px(*x);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{t}" x2="{px:.1}" y2="{b}" stroke="#f0f0f0"/><line x1="{px:.1}" y1="{b}" x2="{px:.1}" y2="{:.1}" stroke="#333333"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            b + 5.0,
            b + 19.0,
            esc(label)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{l}" y="{t}" width="{:.1}" height="{:.1}" fill="none" stroke="#333333"/>"##,
        r - l,
        b - t
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
        (l + r) / 2.0,
        H - 18.0,
        esc(xlabel)
    );
    let _ = writeln!(
        s,
        r##"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"##,
        (t + b) / 2.0,
        (t + b) / 2.0,
        esc(ylabel)
    );
}

/// One legend entry at row `i`: a line (dashed or not) with an optional marker.
fn legend(s: &mut String, i: usize, color: &str, dashed: bool, marker: bool, label: &str) {
    legend_styled(s, i, color, dashed.then_some("6 4"), marker, label);
}

/// A legend row whose line has the dash pattern `dash` (solid when `None`).
fn legend_styled(
    s: &mut String,
    i: usize,
    color: &str,
    dash: Option<&str>,
    marker: bool,
    label: &str,
) {
    let x = W - RIGHT + 16.0;
    let y = TOP + 8.0 + 20.0 * i as f64;
    let dash = dash
        .map(|d| format!(r#" stroke-dasharray="{d}""#))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        r##"<g class="legend"><line x1="{x}" y1="{y}" x2="{:.1}" y2="{y}" stroke="{color}" stroke-width="2"{dash}/>{}<text x="{:.1}" y="{:.1}">{}</text></g>"##,
        x + 26.0,
        if marker {
            format!(
                r##"<rect x="{:.1}" y="{:.1}" width="6" height="6" fill="{color}"/>"##,
                x + 10.0,
                y - 3.0
            )
        } else {
            String::new()
        },
        x + 32.0,
        y + 4.0,
        esc(label)
    );
}

fn error_bar(s: &mut String, color: &str, px: f64, lo: f64, hi: f64) {
    let _ = writeln!(
        s,
        r##"<path class="errorbar" d="M{px:.1} {lo:.1}V{hi:.1}M{:.1} {lo:.1}H{:.1}M{:.1} {hi:.1}H{:.1}" stroke="{color}" stroke-width="1.2" fill="none"/>"##,
        px - 4.0,
        px + 4.0,
        px - 4.0,
        px + 4.0
    );
}

fn polyline(s: &mut String, color: &str, pts: &[(f64, f64)]) {
    if pts.len() < 2 {
        return;
    }
    let p: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"##,
        p.join(" ")
    );
}

fn point(s: &mut String, color: &str, px: f64, py: f64, title: &str) {
    let _ = writeln!(
        s,
        r##"<circle class="point" cx="{px:.1}" cy="{py:.1}" r="4" fill="{color}" stroke="#ffffff"><title>{}</title></circle>"##,
        esc(title)
    );
}

fn hline(s: &mut String, f: &Frame, color: &str, y: f64) {
    hline_styled(s, f, "baseline", color, "6 4", y);
}

/// A horizontal reference line across the plot at accuracy `y`, of class `class`.
fn hline_styled(s: &mut String, f: &Frame, class: &str, color: &str, dash: &str, y: f64) {
    let py = f.py(y);
    let _ = writeln!(
        s,
        r##"<line class="{class}" x1="{LEFT}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="{color}" stroke-width="1.5" stroke-dasharray="{dash}"/>"##,
        W - RIGHT
    );
}

/// Model kinds that have no K: drawn as dashed lines across the K plot, not as points.
pub const BASELINE_KINDS: [&str; 2] = ["popularity", "clip-score"];

/// Accuracy (%) against K, one series per model kind, the baselines (popularity, the CLIP
/// score) as dashed lines. Draws one `circle.point` per model that is not a baseline.
pub fn accuracy_vs_k_svg(pipeline: &str, split: &str, evals: &[&EvalPoint]) -> String {
    let (base, pts): (Vec<&&EvalPoint>, Vec<&&EvalPoint>) = evals
        .iter()
        .partition(|e| BASELINE_KINDS.contains(&e.kind.as_str()));
    let ys = evals.iter().flat_map(|e| {
        let (lo, hi) = e.ci95.unwrap_or((e.accuracy, e.accuracy));
        [100.0 * e.accuracy, 100.0 * lo, 100.0 * hi]
    });
    let (y0, y1, ystep) = y_range(ys);
    let kmin = pts.iter().map(|e| e.k).min().unwrap_or(1);
    let kmax = pts.iter().map(|e| e.k).max().unwrap_or(1).max(kmin);
    let f = Frame {
        x0: kmin as f64 - 0.5,
        x1: kmax as f64 + 0.5,
        y0,
        y1,
    };
    let kstep = ((kmax - kmin) / 10 + 1).max(1);
    let xticks: Vec<(f64, String)> = (kmin..=kmax)
        .step_by(kstep as usize)
        .map(|k| (k as f64, k.to_string()))
        .collect();
    let mut s = String::new();
    axes(
        &mut s,
        &f,
        ystep,
        &xticks,
        &format!("{pipeline}: accuracy against K on '{split}'"),
        "K (number of prototypes)",
        "accuracy (%), 95% CI",
    );
    let mut row = 0;
    for b in base.iter() {
        let color = if b.kind == "popularity" {
            "#555555"
        } else {
            "#8c564b"
        };
        hline(&mut s, &f, color, 100.0 * b.accuracy);
        legend(
            &mut s,
            row,
            color,
            true,
            false,
            &format!("{} ({}) {:.1}%", b.model, b.kind, 100.0 * b.accuracy),
        );
        row += 1;
    }
    let kinds: BTreeSet<&str> = pts.iter().map(|e| e.kind.as_str()).collect();
    let n_kinds = kinds.len().max(1);
    for (ci_, kind) in kinds.iter().enumerate() {
        let color = COLORS[ci_ % COLORS.len()];
        let mut series: Vec<&&&EvalPoint> = pts.iter().filter(|e| e.kind == *kind).collect();
        series.sort_by(|a, b| (a.k, &a.model).cmp(&(b.k, &b.model)));
        // Small horizontal offsets keep overlapping families' error bars apart.
        let off = if n_kinds > 1 {
            (ci_ as f64 - (n_kinds - 1) as f64 / 2.0) * 0.06
        } else {
            0.0
        };
        let line: Vec<(f64, f64)> = series
            .iter()
            .map(|e| (f.px(e.k as f64 + off), f.py(100.0 * e.accuracy)))
            .collect();
        polyline(&mut s, color, &line);
        for e in &series {
            let px = f.px(e.k as f64 + off);
            if let Some((lo, hi)) = e.ci95 {
                error_bar(&mut s, color, px, f.py(100.0 * lo), f.py(100.0 * hi));
            }
            point(
                &mut s,
                color,
                px,
                f.py(100.0 * e.accuracy),
                &format!(
                    "{} (K={}): {:.2}% {}",
                    e.model,
                    e.k,
                    100.0 * e.accuracy,
                    ci(e.ci95)
                ),
            );
        }
        legend(&mut s, row, color, false, true, kind);
        row += 1;
    }
    s.push_str("</svg>\n");
    s
}

/// Adapted accuracy (%) against shots (x on a log(1 + shots) scale), one series per model,
/// with each model's zero-shot level (the seen users' mean mixture, scored on the same
/// comparisons) as a dashed line. One `circle.point` per row.
pub fn shots_svg(pipeline: &str, split: &str, rows: &[&AdaptPoint]) -> String {
    let tx = |shots: u64| (1.0 + shots as f64).ln();
    let ys = rows.iter().flat_map(|r| {
        let (lo, hi) = r.ci95.unwrap_or((r.accuracy, r.accuracy));
        [
            100.0 * r.accuracy,
            100.0 * lo,
            100.0 * hi,
            100.0 * r.zero_shot,
        ]
        .into_iter()
        .chain(r.oracle.map(|o| 100.0 * o))
        .chain(r.seen.map(|o| 100.0 * o))
        .filter(|y| y.is_finite())
        .collect::<Vec<f64>>()
    });
    let (y0, y1, ystep) = y_range(ys);
    let shots: BTreeSet<u64> = rows.iter().map(|r| r.shots).collect();
    let (smin, smax) = (
        shots.iter().next().copied().unwrap_or(0),
        shots.iter().last().copied().unwrap_or(1),
    );
    let (a, b) = (tx(smin), tx(smax).max(tx(smin) + 0.5));
    let pad = (b - a) * 0.06;
    let f = Frame {
        x0: a - pad,
        x1: b + pad,
        y0,
        y1,
    };
    let xticks: Vec<(f64, String)> = shots.iter().map(|&n| (tx(n), n.to_string())).collect();
    let mut s = String::new();
    axes(
        &mut s,
        &f,
        ystep,
        &xticks,
        &format!("{pipeline}: new users ('{split}') against shots"),
        "shots per user (log(1 + shots) scale)",
        "accuracy (%), 95% CI",
    );
    let models: Vec<&str> = {
        let mut seen = Vec::new();
        for r in rows {
            if !seen.contains(&r.model.as_str()) {
                seen.push(r.model.as_str());
            }
        }
        seen
    };
    let mut row = 0;
    for (i, m) in models.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut series: Vec<&&AdaptPoint> = rows.iter().filter(|r| r.model == *m).collect();
        series.sort_by_key(|r| r.shots);
        // Zero-shot is scored on the same held-out comparisons as each row, so it can move
        // a little with the shots: a dashed line through each row's zero-shot accuracy.
        let zeros: Vec<(f64, f64)> = series
            .iter()
            .filter(|r| r.zero_shot.is_finite())
            .map(|r| (f.px(tx(r.shots)), f.py(100.0 * r.zero_shot)))
            .collect();
        let zero = (!zeros.is_empty()).then(|| {
            let z: Vec<f64> = series
                .iter()
                .map(|r| r.zero_shot)
                .filter(|z| z.is_finite())
                .collect();
            z.iter().sum::<f64>() / z.len() as f64
        });
        if zeros.len() == 1 {
            hline(&mut s, &f, color, 100.0 * zero.unwrap_or(0.0));
        } else if !zeros.is_empty() {
            let p: Vec<String> = zeros
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = writeln!(
                s,
                r##"<polyline class="zero-shot" points="{}" fill="none" stroke="{color}" stroke-width="1.5" stroke-dasharray="6 4"/>"##,
                p.join(" ")
            );
            for (x, y) in &zeros {
                let _ = writeln!(
                    s,
                    r##"<rect class="zero-shot-point" x="{:.1}" y="{:.1}" width="6" height="6" fill="#ffffff" stroke="{color}"/>"##,
                    x - 3.0,
                    y - 3.0
                );
            }
        }
        let line: Vec<(f64, f64)> = series
            .iter()
            .map(|r| (f.px(tx(r.shots)), f.py(100.0 * r.accuracy)))
            .collect();
        polyline(&mut s, color, &line);
        for r in &series {
            let px = f.px(tx(r.shots));
            if let Some((lo, hi)) = r.ci95 {
                error_bar(&mut s, color, px, f.py(100.0 * lo), f.py(100.0 * hi));
            }
            point(
                &mut s,
                color,
                px,
                f.py(100.0 * r.accuracy),
                &format!(
                    "{} {} shots: {:.2}% over {} users",
                    r.model,
                    r.shots,
                    100.0 * r.accuracy,
                    r.users
                ),
            );
        }
        legend(
            &mut s,
            row,
            color,
            false,
            true,
            &format!("{m} (K={})", series[0].k),
        );
        row += 1;
        if let Some(z) = zero {
            legend(
                &mut s,
                row,
                color,
                true,
                false,
                &format!("{m} zero-shot (mean {:.1}%)", 100.0 * z),
            );
            row += 1;
        }
        // The oracle mixture (a bound, dotted) and the seen users' accuracy (dashed).
        let refs = [
            (
                series.iter().find_map(|r| r.oracle),
                "oracle",
                "2 3",
                "oracle mixture, a bound",
            ),
            (
                series.iter().find_map(|r| r.seen),
                "seen",
                "12 4",
                "seen users",
            ),
        ];
        for (v, class, dash, what) in refs {
            let Some(v) = v else { continue };
            hline_styled(&mut s, &f, class, color, dash, 100.0 * v);
            legend_styled(
                &mut s,
                row,
                color,
                Some(dash),
                false,
                &format!("{m} {what} ({:.1}%)", 100.0 * v),
            );
            row += 1;
        }
    }
    s.push_str("</svg>\n");
    s
}

/// A PAL-A model with d = 2 in its input space (the paper's Fig. D.1): items, the learned
/// prototypes P_k, and each seen user's ideal point Σ_k w_k P_k, coloured by the user's
/// group (for synthetic data, the true prototype).
#[derive(Debug, Clone)]
pub struct ProtoPlot {
    pub model: String,
    pub items: Vec<(f64, f64)>,
    pub prototypes: Vec<(f64, f64)>,
    /// (x, y, group)
    pub users: Vec<(f64, f64, String)>,
}

/// The prototype plot: grey items, black prototype crosses, users coloured by group on top
/// (one `circle.point` per user; prototypes are `path.prototype`).
pub fn prototypes_svg(pipeline: &str, p: &ProtoPlot) -> String {
    let all = || {
        p.items
            .iter()
            .copied()
            .chain(p.prototypes.iter().copied())
            .chain(p.users.iter().map(|u| (u.0, u.1)))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for (x, y) in all() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (-1.0, 1.0, -1.0, 1.0);
    }
    let xs = nice_step((x1 - x0).max(1e-6), 6.0);
    let ys = nice_step((y1 - y0).max(1e-6), 6.0);
    let f = Frame {
        x0: (x0 / xs).floor() * xs,
        x1: ((x1 / xs).ceil() * xs).max((x0 / xs).floor() * xs + xs),
        y0: (y0 / ys).floor() * ys,
        y1: ((y1 / ys).ceil() * ys).max((y0 / ys).floor() * ys + ys),
    };
    let mut xticks = Vec::new();
    let mut x = f.x0;
    while x <= f.x1 + 1e-9 {
        xticks.push((x, tick_label(x, xs)));
        x += xs;
    }
    let mut s = String::new();
    axes(
        &mut s,
        &f,
        ys,
        &xticks,
        &format!("{pipeline}: {} prototypes and users (input space)", p.model),
        "x₁",
        "x₂",
    );
    for (x, y) in &p.items {
        let _ = writeln!(
            s,
            r##"<circle class="item" cx="{:.1}" cy="{:.1}" r="1.6" fill="#bbbbbb"/>"##,
            f.px(*x),
            f.py(*y)
        );
    }
    let groups: Vec<&str> = {
        let mut g: Vec<&str> = p.users.iter().map(|u| u.2.as_str()).collect();
        g.sort();
        g.dedup();
        g
    };
    for (k, (x, y)) in p.prototypes.iter().enumerate() {
        let (px, py) = (f.px(*x), f.py(*y));
        let _ = writeln!(
            s,
            r##"<path class="prototype" d="M{:.1} {:.1}L{:.1} {:.1}M{:.1} {:.1}L{:.1} {:.1}" stroke="#000000" stroke-width="2"><title>prototype {k}: ({x:.3}, {y:.3})</title></path><text x="{:.1}" y="{:.1}" font-weight="bold">P{k}</text>"##,
            px - 7.0,
            py - 7.0,
            px + 7.0,
            py + 7.0,
            px - 7.0,
            py + 7.0,
            px + 7.0,
            py - 7.0,
            px + 9.0,
            py - 8.0
        );
    }
    for (x, y, g) in &p.users {
        let i = groups.iter().position(|h| h == g).unwrap_or(0);
        point(
            &mut s,
            COLORS[i % COLORS.len()],
            f.px(*x),
            f.py(*y),
            &format!("user of group {g}"),
        );
    }
    let mut row = 0;
    legend(
        &mut s,
        row,
        "#bbbbbb",
        false,
        true,
        &format!("items ({})", p.items.len()),
    );
    row += 1;
    legend(
        &mut s,
        row,
        "#000000",
        false,
        false,
        &format!("learned prototypes P_k (K={})", p.prototypes.len()),
    );
    row += 1;
    for (i, g) in groups.iter().enumerate() {
        let n = p.users.iter().filter(|u| u.2 == *g).count();
        legend(
            &mut s,
            row,
            COLORS[i % COLORS.len()],
            false,
            true,
            &format!("users {g} ({n}): Σ w_k P_k"),
        );
        row += 1;
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, kind: &str, status: &str, fp: &str) -> StageInfo {
        StageInfo {
            name: name.into(),
            kind: kind.into(),
            fingerprint: fp.into(),
            fingerprint_after: String::new(),
            owned: String::new(),
            status: status.into(),
            seconds: 1.0,
            summary: "s".into(),
        }
    }

    fn run(id: &str, t: i64, stages: Vec<StageInfo>) -> RunInfo {
        RunInfo {
            run_id: id.into(),
            pipeline: "p".into(),
            pipeline_file: None,
            started_ms: t,
            finished_ms: t + 10,
            outcome: "ok".into(),
            error: None,
            stages,
        }
    }

    fn model(name: &str, kind: &str, k: i32, run: &str, t: i64, metrics: Value) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            kind: kind.into(),
            k,
            encoder_id: None,
            train_split: "tr".into(),
            checkpoint: format!("checkpoints/{name}"),
            metrics: serde_json::from_value(metrics).unwrap(),
            run_id: Some(run.into()),
            created_ms: t,
        }
    }

    #[test]
    fn skipped_stages_take_the_model_of_the_run_that_trained_it() {
        let r1 = run(
            "p-1",
            1,
            vec![
                stage("a", "train", "done", "fa"),
                stage("b", "train", "done", "fb"),
            ],
        );
        let r2 = run(
            "p-2",
            2,
            vec![
                stage("a", "train", "skipped", "fa"),
                stage("b", "train", "done", "fb2"),
            ],
        );
        let ms = vec![
            model("a", "pal-a", 1, "p-1", 1, serde_json::json!({})),
            model("b", "pal-a", 3, "p-2", 2, serde_json::json!({})),
            model("other", "pal-a", 3, "q-1", 0, serde_json::json!({})),
        ];
        let runs = vec![r1, r2.clone()];
        let (sel, notes) = select_models(&r2, &runs, &ms);
        let names: Vec<&str> = sel.iter().map(|s| s.model.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert!(notes.is_empty(), "{notes:?}");
        // a model retrained by another run since is not claimed
        let ms2 = vec![model("a", "pal-a", 1, "p-9", 9, serde_json::json!({}))];
        let (sel, notes) = select_models(&r2, &runs, &ms2);
        assert!(sel.is_empty());
        assert_eq!(notes.len(), 2);
    }

    #[test]
    fn renamed_models_pair_with_their_stages_in_order() {
        let r1 = run(
            "p-1",
            1,
            vec![
                stage("s1", "train", "done", "f1"),
                stage("s2", "train", "done", "f2"),
            ],
        );
        let r2 = run(
            "p-2",
            2,
            vec![
                stage("s1", "train", "skipped", "f1"),
                stage("s2", "train", "skipped", "f2"),
            ],
        );
        let ms = vec![
            model("x", "pal-a", 1, "p-1", 1, serde_json::json!({})),
            model("y", "pal-a", 2, "p-1", 2, serde_json::json!({})),
        ];
        let runs = vec![r1, r2.clone()];
        let (sel, _) = select_models(&r2, &runs, &ms);
        let names: Vec<&str> = sel.iter().map(|s| s.model.name.as_str()).collect();
        assert_eq!(names, ["x", "y"]);
    }

    #[test]
    fn plots_have_one_point_per_model_and_row() {
        let r = run("p-1", 1, vec![]);
        let ev = |a: f64| serde_json::json!({"accuracy": a, "ci95": [a - 0.02, a + 0.02], "n": 100, "per_user": {"mean": a, "std": 0.1, "users": 10}});
        let ms = vec![
            Selected {
                model: model(
                    "k1",
                    "pal-a",
                    1,
                    "p-1",
                    1,
                    serde_json::json!({"te": ev(0.6)}),
                ),
                why: String::new(),
            },
            Selected {
                model: model(
                    "k3",
                    "pal-a",
                    3,
                    "p-1",
                    2,
                    serde_json::json!({"te": ev(0.8), "adapt:un": [
                {"shots": 0, "users": 5, "accuracy": 0.6, "zero_shot_accuracy": 0.6, "report": {"ci95": [0.5, 0.7]}, "ci95_users": [0.45, 0.75], "oracle_accuracy": 0.9, "seen_accuracy": 0.85},
                {"shots": 10, "users": 5, "accuracy": 0.75, "zero_shot_accuracy": 0.6, "report": {"ci95": [0.7, 0.8]}, "oracle_accuracy": 0.9, "seen_accuracy": 0.85},
                {"shots": 40, "users": 5, "accuracy": 0.8, "zero_shot_accuracy": 0.6, "report": {}, "oracle_accuracy": 0.9, "seen_accuracy": 0.85}]}),
                ),
                why: String::new(),
            },
            Selected {
                model: model(
                    "b3",
                    "pal-b",
                    3,
                    "p-1",
                    3,
                    serde_json::json!({"te": ev(0.7)}),
                ),
                why: String::new(),
            },
            Selected {
                model: model(
                    "pop",
                    "popularity",
                    1,
                    "p-1",
                    4,
                    serde_json::json!({"te": ev(0.55)}),
                ),
                why: String::new(),
            },
        ];
        let (evals, adapts) = points(&ms);
        assert_eq!(evals.len(), 4);
        assert_eq!(adapts.len(), 3);
        let ps = plots(&r, &evals, &adapts);
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].file, "accuracy-vs-k-te.svg");
        assert_eq!(ps[0].svg.matches("class=\"point\"").count(), 3);
        assert_eq!(ps[0].svg.matches("class=\"baseline\"").count(), 1);
        assert_eq!(ps[1].svg.matches("class=\"point\"").count(), 3);
        // the oracle bound and the seen users' accuracy are one line each
        assert_eq!(ps[1].svg.matches("class=\"oracle\"").count(), 1);
        assert_eq!(ps[1].svg.matches("class=\"seen\"").count(), 1);
        assert!(ps[1].svg.contains("oracle mixture, a bound (90.0%)"));
        // a row's CI over users is preferred to the Wilson interval over comparisons
        let a0 = adapts.iter().find(|a| a.shots == 0).unwrap();
        assert_eq!(a0.ci95, Some((0.45, 0.75)));
        assert_eq!((a0.oracle, a0.seen), (Some(0.9), Some(0.85)));
        for p in &ps {
            assert!(p.svg.starts_with("<svg"));
            assert!(p.svg.trim_end().ends_with("</svg>"));
            assert_eq!(p.svg.matches("<svg").count(), 1);
        }
        let md = markdown(&r, &ms, &[], &evals, &adapts, &ps);
        for m in [
            "k1",
            "k3",
            "b3",
            "pop",
            "80.00%",
            "55.00%",
            "90.00%",
            "85.00%",
            "accuracy-vs-k-te.svg",
        ] {
            assert!(md.contains(m), "{m} missing from\n{md}");
        }
    }

    #[test]
    fn tick_labels_have_the_decimals_their_step_needs() {
        assert_eq!(tick_label(70.0, 5.0), "70");
        assert_eq!(tick_label(72.5, 2.5), "72.5");
        assert_eq!(tick_label(0.25, 0.25), "0.25");
    }

    #[test]
    fn prototype_plot_draws_each_user_and_prototype() {
        let p = ProtoPlot {
            model: "m".into(),
            items: vec![(0.0, 0.0), (1.0, -1.0)],
            prototypes: vec![(0.5, 0.5), (-0.5, 0.2), (0.0, -0.7)],
            users: vec![(0.1, 0.1, "g0".into()), (0.2, 0.0, "g1".into())],
        };
        let svg = prototypes_svg("p", &p);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("class=\"point\"").count(), 2);
        assert_eq!(svg.matches("class=\"prototype\"").count(), 3);
        assert_eq!(svg.matches("class=\"item\"").count(), 2);
    }

    #[test]
    fn y_range_is_padded_and_within_percent() {
        let (lo, hi, step) = y_range([55.0, 80.0].into_iter());
        assert!(
            lo <= 53.0 && (82.0..=100.0).contains(&hi) && step > 0.0,
            "{lo} {hi} {step}"
        );
        assert_eq!(y_range(std::iter::empty()), (0.0, 100.0, 10.0));
        let (_, hi, _) = y_range([99.5].into_iter());
        assert_eq!(hi, 100.0);
    }
}
