//! `palpipe run PIPELINE.yaml`: validate, then run what changed, then print a report.
//! `palpipe run NAME` runs `pipelines/NAME(.yaml)` of the project it is run in.

use std::path::{Path, PathBuf};

use super::{CliError, Ctx};
use crate::pipeline::{self, Override, Pipeline, RunOptions};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline file (YAML), or the name of one in the project's `pipelines/` folder
    /// (`leakage-split` runs pipelines/leakage-split.yaml of the current folder or the
    /// nearest folder above it that has a `pipelines/` folder).
    pub pipeline: PathBuf,
    /// Rerun this stage even if unchanged (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
    /// Validate and print the plan: which stages would run (and why, where a stage's model or
    /// metric was replaced by hand, or it reads what a planned stage changes) and which are
    /// unchanged. Checks what it can without writing: a preferences stage's mapped columns
    /// against each file's header or first row. Every stage is checked, so one dry run names
    /// all that would fail.
    #[arg(long)]
    pub dry_run: bool,
    /// Override a stage parameter: --set data.users=50. A dotted key sets one entry of a
    /// mapping and keeps the others (--set prefs.columns.user=rater, --set
    /// pal-a-k3.training.epochs=50); a mapping value replaces the whole mapping (--set
    /// "pal-a-k3.training={epochs: 50}"). The value is read as YAML; repeatable.
    #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the run report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The text under `palpipe run --help`: the stage kinds, one line each, from the registry.
pub fn after_help() -> String {
    format!(
        "Paths: relative paths written in a pipeline file (data folders, model folders, \
         `store:`) are relative to the folder holding that file, so a pipeline runs the same \
         from any working directory; paths given with --set are relative to the current \
         folder.\n\nStage kinds (a stage's `kind:`):\n{}",
        crate::pipeline::kinds::help_table()
    )
}

/// The pipeline file `arg` names: the file itself when it exists, else `pipelines/<arg>` or
/// `pipelines/<arg>.yaml` in the current folder or the nearest folder above it that holds a
/// `pipelines/` folder. Otherwise a usage error listing the pipelines found there.
pub fn find_pipeline(arg: &Path, cwd: &Path) -> Result<PathBuf, CliError> {
    if arg.is_file() {
        return Ok(arg.to_path_buf());
    }
    let project = cwd
        .ancestors()
        .map(|d| d.join("pipelines"))
        .find(|d| d.is_dir());
    let plain = arg.components().count() == 1;
    if let (Some(dir), true) = (&project, plain) {
        let name = arg.to_string_lossy();
        for candidate in [dir.join(&*name), dir.join(format!("{name}.yaml"))] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let listing = match &project {
        Some(dir) => {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            format!(
                "\nhint: pipelines in {}: {}",
                dir.display(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        }
        None => format!(
            "\nhint: no 'pipelines' folder in {} or above it; give the pipeline file's path",
            cwd.display()
        ),
    };
    Err(CliError::usage(anyhow::anyhow!(
        "no pipeline file '{}'{listing}",
        arg.display()
    )))
}

pub async fn run(ctx: &Ctx, a: RunArgs) -> Result<(), CliError> {
    let overrides = a
        .set
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::usage(anyhow::anyhow!(e)))?;
    let cwd = std::env::current_dir().map_err(CliError::failure)?;
    let file = find_pipeline(&a.pipeline, &cwd)?;
    if file != a.pipeline {
        ctx.printer.status(format!("running {}", file.display()));
    }
    let p = Pipeline::load(&file, &overrides).map_err(CliError::usage)?;
    let opts = RunOptions {
        force: a.force.clone(),
        dry_run: a.dry_run,
    };
    run_pipeline(ctx, &p, &opts, a.json).await
}

/// Runs a parsed pipeline on the store (`--store`, else its `store:`) and prints its report
/// (a table, or one JSON object with `json`); the stage's error, if one failed, is returned.
pub async fn run_pipeline(
    ctx: &Ctx,
    p: &Pipeline,
    opts: &RunOptions,
    json: bool,
) -> Result<(), CliError> {
    let store = if opts.dry_run {
        ctx.planned_store(p.store.as_deref(), &p.store_options)?
    } else {
        ctx.store_with(p.store.as_deref(), &p.store_options)?
    };
    let report = pipeline::run(p, &store, opts, ctx.printer)
        .await
        .map_err(|e| match e {
            pipeline::runner::RunError::Invalid(m) => CliError::usage(anyhow::anyhow!(m)),
            pipeline::runner::RunError::Store(s) => s.into(),
        })?;
    // A failed stage's error wins over a failed write of the report (a closed pipe).
    let printed = print_report(&report, &store.root().display().to_string(), opts, json);
    if let Some(e) = report.error {
        return Err(CliError::failure(anyhow::anyhow!(e)));
    }
    printed.map_err(CliError::from)
}

/// The report of a run on stdout: a table (a line per stage and a summary), or one JSON
/// object with `json`.
fn print_report(
    report: &pipeline::runner::RunReport,
    store: &str,
    opts: &RunOptions,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let v = serde_json::json!({
            "run_id": report.run_id,
            "pipeline": report.pipeline,
            "store": store,
            "stages": report.stages,
            "error": report.error,
        });
        outln!("{v}")?;
    } else {
        let mode = if opts.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        };
        outln!("pipeline '{}' on store '{}'{mode}", report.pipeline, store)?;
        for s in &report.stages {
            let secs = if !opts.dry_run && (s.status == "done" || s.status == "failed") {
                format!(" {:>7.2}s", s.seconds)
            } else {
                String::new()
            };
            // A failed stage's error is the command's, printed once on stderr; stdout's
            // table points there (`--json` and the `runs` table keep it whole).
            let summary = if s.status == "failed" {
                "(the error is on stderr)"
            } else {
                s.summary.as_str()
            };
            outln!(
                "  {:<24} {:<13} {:<8}{secs}  {summary}",
                s.name,
                s.kind,
                s.status,
            )?;
        }
        let (done, skipped) = (
            report.stages.iter().filter(|s| s.status == "done").count(),
            report
                .stages
                .iter()
                .filter(|s| s.status == "skipped")
                .count(),
        );
        if !opts.dry_run && report.error.is_none() {
            if done == 0 {
                outln!("nothing to do: all {skipped} stages unchanged")?;
            } else {
                outln!(
                    "{done} stage(s) run, {skipped} unchanged (run id {})",
                    report.run_id
                )?;
            }
        }
    }
    Ok(())
}
