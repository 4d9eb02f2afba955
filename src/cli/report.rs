//! `palpipe report`: one run's models, metrics and stages as Markdown plus SVG plots.
//!
//! Reads `runs` and `models`; the rendering (and which models belong to a run) lives in
//! `crate::eval::report`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow_array::{Array, Int32Array, Int64Array, RecordBatch, StringArray};

use super::{CliError, Ctx};
use crate::eval::report::{self as rep, ModelInfo, RunInfo, StageInfo};
use crate::store::Store;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  palpipe report --run latest --store /tmp/s --out docs/results/synthetic\n\nWrites OUT/report.md and one SVG per evaluated split (accuracy against K) and per\nadaptation split (accuracy against shots), plus a prototype plot per PAL-A model with\n2-D inputs. The report covers the models this run trained,\nand, for train stages it skipped as unchanged, the models an earlier run of the same\npipeline trained for them."
)]
pub struct ReportArgs {
    /// A run id from the `runs` table, or `latest` for the newest run.
    #[arg(long, default_value = "latest")]
    pub run: String,
    /// Folder to write report.md and the plots into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Skip the prototype plots of PAL-A models with 2-D inputs.
    #[arg(long)]
    pub no_prototypes: bool,
}

/// Each user's group (`users.group_name`), where set.
async fn user_groups(store: &Store) -> Result<BTreeMap<String, String>, CliError> {
    Ok(crate::pipeline::pal_stages::user_groups(store).await?)
}

/// The prototype plot of a PAL-A model whose prototypes live in a 2-D input space (no
/// prompt part): items from `embeddings` under the model's encoder, P_k from the
/// checkpoint, and each seen user at Σ_k w_k P_k with their evaluation mixture w.
/// `None` when the model is not of that shape.
async fn prototype_plot(
    store: &Store,
    m: &ModelInfo,
    groups: &BTreeMap<String, String>,
) -> anyhow::Result<Option<rep::ProtoPlot>> {
    if m.checkpoint.is_empty() {
        return Ok(None);
    }
    let dir = store.local_dir(&m.checkpoint).await?;
    let weights = dir.path.join(crate::pal::WEIGHTS_FILE);
    if !weights.is_file() {
        return Ok(None);
    }
    let tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu)?;
    let Some(p) = tensors.get("prototypes") else {
        return Ok(None);
    };
    if p.dims().len() != 2 || p.dims()[1] != 2 {
        return Ok(None);
    }
    let protos: Vec<Vec<f64>> = p.to_dtype(candle_core::DType::F64)?.to_vec2()?;
    let protos: Vec<(f64, f64)> = protos.iter().map(|r| (r[0], r[1])).collect();
    let model = crate::pal::PalModel::load(&dir.path)?;
    let mut users = Vec::new();
    for u in model.user_ids() {
        let w = model.mixture(u)?;
        let (mut x, mut y) = (0.0, 0.0);
        for (wk, (px, py)) in w.iter().zip(&protos) {
            x += wk * px;
            y += wk * py;
        }
        users.push((x, y, groups.get(u).cloned().unwrap_or_else(|| "-".into())));
    }
    let mut items = Vec::new();
    if let Some(enc) = &m.encoder_id {
        let filter = format!("encoder_id = '{}'", enc.replace('\'', "''"));
        for b in store.read("embeddings", &["vector"], Some(&filter)).await? {
            let Some(v) = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow_array::FixedSizeListArray>()
            else {
                continue;
            };
            if v.value_length() != 2 {
                return Ok(None);
            }
            for i in 0..v.len() {
                let row = v.value(i);
                if let Some(x) = row.as_any().downcast_ref::<arrow_array::Float32Array>() {
                    items.push((x.value(0) as f64, x.value(1) as f64));
                }
            }
        }
    }
    Ok(Some(rep::ProtoPlot {
        model: m.name.clone(),
        items,
        prototypes: protos,
        users,
    }))
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    b.column_by_name(name)?
        .as_any()
        .downcast_ref::<StringArray>()
}

fn get(a: Option<&StringArray>, i: usize) -> Option<String> {
    a.and_then(|a| (!a.is_null(i)).then(|| a.value(i).to_string()))
}

fn int64(b: &RecordBatch, name: &str, i: usize) -> i64 {
    b.column_by_name(name)
        .and_then(|a| a.as_any().downcast_ref::<Int64Array>())
        .map(|a| a.value(i))
        .unwrap_or(0)
}

async fn read_runs(store: &Store) -> Result<Vec<RunInfo>, CliError> {
    let mut out = Vec::new();
    for b in store.read("runs", &[], None).await? {
        let (id, pipe, file, outcome, err, stages) = (
            col(&b, "run_id"),
            col(&b, "pipeline"),
            col(&b, "pipeline_file"),
            col(&b, "outcome"),
            col(&b, "error"),
            col(&b, "stages_json"),
        );
        for i in 0..b.num_rows() {
            let stages: Vec<StageInfo> = get(stages, i)
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default();
            out.push(RunInfo {
                run_id: get(id, i).unwrap_or_default(),
                pipeline: get(pipe, i).unwrap_or_default(),
                pipeline_file: get(file, i),
                started_ms: int64(&b, "started_ms", i),
                finished_ms: int64(&b, "finished_ms", i),
                outcome: get(outcome, i).unwrap_or_default(),
                error: get(err, i),
                stages,
            });
        }
    }
    out.sort_by(|a, b| (a.started_ms, &a.run_id).cmp(&(b.started_ms, &b.run_id)));
    Ok(out)
}

async fn read_models(store: &Store) -> Result<Vec<ModelInfo>, CliError> {
    let mut out = Vec::new();
    for b in store.read("models", &[], None).await? {
        let k = b
            .column_by_name("k")
            .and_then(|a| a.as_any().downcast_ref::<Int32Array>());
        for i in 0..b.num_rows() {
            let metrics: BTreeMap<String, serde_json::Value> = get(col(&b, "metrics_json"), i)
                .and_then(|m| serde_json::from_str(&m).ok())
                .unwrap_or_default();
            out.push(ModelInfo {
                name: get(col(&b, "name"), i).unwrap_or_default(),
                kind: get(col(&b, "kind"), i).unwrap_or_default(),
                k: k.map(|a| a.value(i)).unwrap_or(1),
                encoder_id: get(col(&b, "encoder_id"), i),
                train_split: get(col(&b, "train_split"), i).unwrap_or_default(),
                checkpoint: get(col(&b, "checkpoint"), i).unwrap_or_default(),
                metrics,
                run_id: get(col(&b, "run_id"), i),
                created_ms: int64(&b, "created_ms", i),
            });
        }
    }
    Ok(out)
}

pub async fn report(ctx: &Ctx, a: ReportArgs) -> Result<(), CliError> {
    let store = ctx.existing_store().await?;
    let runs = read_runs(&store).await?;
    let run = if a.run == "latest" {
        runs.last().cloned().ok_or_else(|| {
            CliError::usage(anyhow::anyhow!(
                "the store has no runs yet\nhint: run a pipeline first with 'palpipe run PIPELINE.yaml'"
            ))
        })?
    } else {
        match runs.iter().find(|r| r.run_id == a.run) {
            Some(r) => r.clone(),
            None => {
                let known: Vec<&str> = runs.iter().rev().map(|r| r.run_id.as_str()).collect();
                return Err(CliError::usage(anyhow::anyhow!(
                    "no run '{}' in the store (runs, newest first: {})\nhint: use --run latest for the newest",
                    a.run,
                    if known.is_empty() { "none yet".to_string() } else { known.join(", ") }
                )));
            }
        }
    };
    let models = read_models(&store).await?;
    let (selected, notes) = rep::select_models(&run, &runs, &models);
    let (evals, adapts) = rep::points(&selected);
    let mut plots = rep::plots(&run, &evals, &adapts);
    let mut notes = notes;
    if !a.no_prototypes {
        let groups = user_groups(&store).await.unwrap_or_default();
        for s in selected.iter().filter(|s| s.model.kind == "pal-a") {
            match prototype_plot(&store, &s.model, &groups).await {
                Ok(Some(p)) => plots.push(rep::Plot {
                    file: format!("prototypes-{}.svg", rep::slug(&p.model)),
                    svg: rep::prototypes_svg(&run.pipeline, &p),
                    caption: format!(
                        "Learned prototypes of '{}' with the seen users' ideal points (d = 2)",
                        p.model
                    ),
                }),
                Ok(None) => {}
                Err(e) => notes.push(format!(
                    "no prototype plot for '{}': {}",
                    s.model.name,
                    crate::store::messages::error_chain(&e)
                )),
            }
        }
    }
    let md = rep::markdown(&run, &selected, &notes, &evals, &adapts, &plots);

    let io = |e: std::io::Error, p: &std::path::Path| {
        CliError::failure(anyhow::anyhow!("cannot write '{}': {e}", p.display()))
    };
    if a.out.exists() && !a.out.is_dir() {
        return Err(CliError::usage(anyhow::anyhow!(
            "--out '{}' exists and is not a folder",
            a.out.display()
        )));
    }
    std::fs::create_dir_all(&a.out).map_err(|e| io(e, &a.out))?;
    let path = a.out.join("report.md");
    std::fs::write(&path, md).map_err(|e| io(e, &path))?;
    for p in &plots {
        let path = a.out.join(&p.file);
        std::fs::write(&path, &p.svg).map_err(|e| io(e, &path))?;
    }
    ctx.printer.status(format!(
        "run {}: {} models, {} evaluations, {} adaptation rows",
        run.run_id,
        selected.len(),
        evals.len(),
        adapts.len()
    ));
    outln!("{}", a.out.join("report.md").display())?;
    for p in &plots {
        outln!("{}", a.out.join(&p.file).display())?;
    }
    Ok(())
}
