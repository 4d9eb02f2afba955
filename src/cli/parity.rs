//! `palpipe parity`: an encoder's vectors against a committed reference, on any device.
//!
//! The check itself lives in `embed::parity`; this file parses the flags, prints one line per
//! input (cosine, then what was embedded) and fails when any cosine is below the threshold.
//! It exists so that a CUDA build can be checked on a GPU machine with nothing but the binary
//! and the fixtures (`scripts/device-check.sh`).

use std::path::PathBuf;

use crate::embed::parity::{self, ParityError, ParityReport, MIN_COSINE};

use super::{CliError, Ctx};

/// Which reference to check against.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ParityEncoder {
    /// A CLIP folder holding the model and `expected.json` (transformers' vectors).
    Clip,
    /// all-MiniLM-L6-v2 against `tests/fixtures/minilm/expected.json` (numpy's vectors).
    Minilm,
}

/// The flags of `palpipe parity` (its help is on `Command::Parity`).
#[derive(Debug, clap::Args)]
pub struct ParityArgs {
    #[arg(long, value_enum)]
    pub encoder: ParityEncoder,
    /// clip: the fixture folder (model files and expected.json; default
    /// tests/fixtures/tiny_clip). minilm: the model folder (default: the models folder).
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// minilm: the reference vectors.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "tests/fixtures/minilm/expected.json"
    )]
    pub expected: PathBuf,
    /// cpu, cuda or cuda:N (cuda needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The lowest cosine that passes.
    #[arg(long, default_value_t = MIN_COSINE)]
    pub min_cosine: f64,
    /// One JSON object (the report) instead of lines.
    #[arg(long)]
    pub json: bool,
}

pub async fn parity(ctx: &Ctx, a: ParityArgs) -> Result<(), CliError> {
    let device = super::open_device(&a.device)?;
    let report = match a.encoder {
        ParityEncoder::Clip => {
            let dir = a
                .model_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("tests/fixtures/tiny_clip"));
            parity::check_clip(&dir, &device)
        }
        ParityEncoder::Minilm => parity::check_minilm(a.model_dir.as_deref(), &a.expected, &device),
    }
    .map_err(|e| match e {
        ParityError::Fixture { .. } => CliError::usage(e),
        ParityError::Embed(_) => CliError::failure(e),
    })?;
    let Some(lowest) = report.lowest() else {
        return Err(CliError::usage(anyhow::anyhow!(
            "parity fixture '{}' holds no inputs",
            report.fixture.display()
        )));
    };
    let summary = format!(
        "{} on {}: {} vectors, lowest cosine {:.7} ({})",
        report.encoder_id,
        a.device,
        report.agreements.len(),
        lowest.cosine,
        lowest.input
    );
    print_report(&report, a.json)?;

    let below = report.below(a.min_cosine);
    if !below.is_empty() {
        return Err(CliError::failure(anyhow::anyhow!(
            "{summary}: {} below {}",
            below.len(),
            a.min_cosine
        )));
    }
    ctx.printer
        .status(format!("{summary}: all ≥ {}", a.min_cosine));
    Ok(())
}

/// Writes the report to stdout in one piece (a closed pipe is `main`'s to handle).
fn print_report(report: &ParityReport, json: bool) -> Result<(), CliError> {
    use std::io::Write;
    let text = if json {
        serde_json::to_string(report).map_err(CliError::failure)? + "\n"
    } else {
        report
            .agreements
            .iter()
            .map(|g| format!("{:.7}\t{}\n", g.cosine, g.input))
            .collect()
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(CliError::failure)
}
