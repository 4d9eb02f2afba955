//! `palpipe run PIPELINE.yaml`: validate, then run what changed, then print a report.

use std::path::PathBuf;

use super::{CliError, Ctx};
use crate::pipeline::{self, Override, Pipeline, RunOptions};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline file (YAML).
    pub pipeline: PathBuf,
    /// Rerun this stage even if unchanged (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
    /// Validate and print the plan: which stages would run and which are unchanged.
    #[arg(long)]
    pub dry_run: bool,
    /// Override a stage parameter: --set data.users=50, --set "pal-a-k3.training={epochs: 50}"
    /// (the value is read as YAML; repeatable).
    #[arg(long = "set", value_name = "STAGE.KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the run report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The text under `palpipe run --help`: the stage kinds, one line each, from the registry.
pub fn after_help() -> String {
    format!(
        "Stage kinds (a stage's `kind:`):\n{}",
        crate::pipeline::kinds::help_table()
    )
}

pub async fn run(ctx: &Ctx, a: RunArgs) -> Result<(), CliError> {
    let overrides = a
        .set
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::usage(anyhow::anyhow!(e)))?;
    let p = Pipeline::load(&a.pipeline, &overrides).map_err(CliError::usage)?;
    let store = ctx.store(p.store.as_deref())?;
    let opts = RunOptions {
        force: a.force.clone(),
        dry_run: a.dry_run,
    };
    let report = pipeline::run(&p, &store, &opts, ctx.printer)
        .await
        .map_err(|e| match e {
            pipeline::runner::RunError::Invalid(m) => CliError::usage(anyhow::anyhow!(m)),
            pipeline::runner::RunError::Store(s) => s.into(),
        })?;
    if a.json {
        let v = serde_json::json!({
            "run_id": report.run_id,
            "pipeline": report.pipeline,
            "store": store.root().display().to_string(),
            "stages": report.stages,
            "error": report.error,
        });
        println!("{v}");
    } else {
        let mode = if a.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        };
        println!(
            "pipeline '{}' on store '{}'{mode}",
            report.pipeline,
            store.root().display()
        );
        for s in &report.stages {
            let secs = if s.status == "done" || s.status == "failed" {
                format!(" {:>7.2}s", s.seconds)
            } else {
                String::new()
            };
            println!(
                "  {:<24} {:<13} {:<8}{secs}  {}",
                s.name, s.kind, s.status, s.summary
            );
        }
        let (done, skipped) = (
            report.stages.iter().filter(|s| s.status == "done").count(),
            report
                .stages
                .iter()
                .filter(|s| s.status == "skipped")
                .count(),
        );
        if !a.dry_run && report.error.is_none() {
            if done == 0 {
                println!("nothing to do: all {skipped} stages unchanged");
            } else {
                println!(
                    "{done} stage(s) run, {skipped} unchanged (run id {})",
                    report.run_id
                );
            }
        }
    }
    match report.error {
        Some(e) => Err(CliError::failure(anyhow::anyhow!(e))),
        None => Ok(()),
    }
}
