//! `palpipe ingest PATH --dataset NAME …`: one-off ingest of your own preference data. The
//! flags are the `preferences` stage's parameters; the command writes them as a one-stage
//! pipeline and runs it, so it reads, checks and writes exactly as that stage does
//! (relative paths are relative to the current folder).

use std::path::PathBuf;

use serde_yaml::{Mapping, Value};

use super::run::run_pipeline;
use super::{CliError, Ctx};
use crate::pipeline::{Pipeline, RunOptions, SpecErrors};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  palpipe ingest comparisons/ --dataset tldr --preset summarize-from-feedback
  palpipe ingest 'data/train-*.parquet' --dataset mine --column user=annotator \\
      --column chosen=chosen --column rejected=rejected
  palpipe ingest ratings.csv --dataset r --layout ratings --column user=rater \\
      --column group=question --column response=answer --column score=stars --min-gap 1
  palpipe ingest hh.jsonl.gz --dataset hh --preset hh-rlhf
  palpipe ingest votes.jsonl --dataset mine --column user=rater --column chosen=a \\
      --column rejected=b --column weight=confidence")]
pub struct IngestArgs {
    /// A file, a glob (quoted) or a folder (the Hugging Face datasets layout).
    pub path: PathBuf,
    /// The dataset name its pairs and users get (and the prefix of user ids). Ingesting
    /// again under the same name replaces that dataset's pairs and users with these files'.
    #[arg(long)]
    pub dataset: String,
    /// parquet, csv, tsv, jsonl or json (default: from each file's extension).
    #[arg(long)]
    pub format: Option<String>,
    /// pairwise (default), best_of_k or ratings.
    #[arg(long)]
    pub layout: Option<String>,
    /// A preset: summarize-from-feedback, hh-rlhf, prism, community-alignment.
    #[arg(long)]
    pub preset: Option<String>,
    /// KEY=COLUMN (a dotted path, a YAML list, or {constant: NAME}); repeatable. Keys:
    /// user, prompt, chosen, rejected, left, right, label, responses, preferred, response,
    /// score, group, split, id, weight (a positive number per row that weighs its
    /// comparisons in the PAL loss, Σ w·loss / Σ w; default 1.0; rows with a missing, NaN,
    /// negative or zero weight are dropped and counted; not for the ratings layout).
    #[arg(long = "column", value_name = "KEY=COLUMN")]
    pub columns: Vec<String>,
    /// index (0/1), sign (-1/+1) or scores (two label columns).
    #[arg(long)]
    pub label_convention: Option<String>,
    /// ratings: the smallest score difference that makes a pair.
    #[arg(long)]
    pub min_gap: Option<f64>,
    /// A mapped path missing in a row is an error instead of a counted drop.
    #[arg(long)]
    pub strict: bool,
    /// text (default) or image: what string items are.
    #[arg(long)]
    pub items: Option<String>,
    /// Seeds the side of each chosen/rejected pair's preferred item.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Check the flags and each file's columns (its header or first row) against the
    /// mapping, and print the plan; nothing is written.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

/// The stage the flags describe, as the YAML mapping a pipeline file would hold.
fn stage(a: &IngestArgs) -> Result<Mapping, CliError> {
    let mut m = Mapping::new();
    m.insert(s("name"), s("ingest"));
    m.insert(s("kind"), s("preferences"));
    m.insert(s("dataset"), s(&a.dataset));
    m.insert(s("path"), s(&a.path.to_string_lossy()));
    for (key, v) in [
        ("format", &a.format),
        ("layout", &a.layout),
        ("preset", &a.preset),
        ("label_convention", &a.label_convention),
        ("items", &a.items),
    ] {
        if let Some(v) = v {
            m.insert(s(key), s(v));
        }
    }
    if let Some(g) = a.min_gap {
        m.insert(s("min_gap"), Value::from(g));
    }
    if let Some(seed) = a.seed {
        m.insert(s("seed"), Value::from(seed));
    }
    if a.strict {
        m.insert(s("strict"), Value::Bool(true));
    }
    if !a.columns.is_empty() {
        let mut cols = Mapping::new();
        for c in &a.columns {
            let (k, v) = c.split_once('=').ok_or_else(|| {
                CliError::usage(anyhow::anyhow!(
                    "--column '{c}': expected KEY=COLUMN, e.g. --column user=worker"
                ))
            })?;
            // A list or a {constant: …} mapping is YAML; anything else is the column's name.
            let value = if v.trim_start().starts_with(['[', '{']) {
                serde_yaml::from_str(v)
                    .map_err(|e| CliError::usage(anyhow::anyhow!("--column '{c}': value: {e}")))?
            } else {
                s(v)
            };
            cols.insert(s(k.trim()), value);
        }
        m.insert(s("columns"), Value::Mapping(cols));
    }
    Ok(m)
}

/// Runs the one-stage pipeline the flags make.
pub async fn ingest(ctx: &Ctx, a: IngestArgs) -> Result<(), CliError> {
    let mut doc = Mapping::new();
    doc.insert(s("name"), s("ingest"));
    doc.insert(
        s("stages"),
        Value::Sequence(vec![Value::Mapping(stage(&a)?)]),
    );
    let text = serde_yaml::to_string(&doc).map_err(CliError::failure)?;
    let cwd = std::env::current_dir().map_err(CliError::failure)?;
    // Relative paths of a pipeline are relative to its file's folder: here, the current one.
    let p = Pipeline::parse(&cwd.join("palpipe-ingest"), &text, &[])
        .map_err(|e| CliError::usage(in_flags_words(&e)))?;
    let opts = RunOptions {
        force: Vec::new(),
        dry_run: a.dry_run,
    };
    run_pipeline(ctx, &p, &opts, a.json).await
}

/// The stage's problems in the words of the command line: `palpipe ingest` has no pipeline
/// file, so each problem names the flag (or the PATH argument) its value came from instead of
/// a line of a file, e.g. `--column usr=…: unknown column key 'usr'`.
fn in_flags_words(errors: &SpecErrors) -> anyhow::Error {
    let lines: Vec<String> = (errors.0.iter())
        .map(|e| {
            let key = e.key.strip_prefix("stages.0").unwrap_or(&e.key);
            let key = key.strip_prefix('.').unwrap_or(key);
            let flag = match key.split_once('.') {
                Some(("columns", column)) => format!("--column {column}=…"),
                _ if key == "columns" => "--column".to_string(),
                _ if key == "path" => "PATH".to_string(),
                _ if key.is_empty() || key.contains('.') => String::new(),
                _ => format!("--{}", key.replace('_', "-")),
            };
            match flag.is_empty() {
                true => e.message.clone(),
                false => format!("{flag}: {}", e.message),
            }
        })
        .collect();
    anyhow::anyhow!(lines.join("\n"))
}
