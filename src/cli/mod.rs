//! The command line: argument parsing, output formats and exit codes.
//!
//! Each subcommand lives in its own file and returns `Result<(), CliError>`; `main.rs`
//! renders the error once and exits with its code. Exit codes are a contract:
//! 0 success, 1 a failure in the data or the work, 2 bad usage or invalid configuration.
//! Results go to stdout; status, warnings and progress go to stderr.

/// `println!` for results on stdout, giving back the write's error instead of panicking:
/// when a reader closes the pipe early (`palpipe score … | head -3`) the write fails with a
/// broken pipe, `?` carries it to `main`, and `main` exits 0 without a message. Evaluates
/// to `std::io::Result<()>`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

pub mod bench;
pub mod bench_image;
pub mod commit;
pub mod eval_all;
pub mod fixtures;
pub mod images;
pub mod ingest;
pub mod output;
pub mod pal_cmds;
pub mod parity;
pub mod report;
pub mod run;
pub mod score;
pub mod sql;
pub mod vacuum;
pub mod vectors;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::pipeline::progress::Printer;
use crate::store::{Store, StoreError, StoreLocation};

/// `palpipe --version`: the crate's version and the numeric backend (see
/// [`crate::NUMERIC_BACKEND`]).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (numeric backend: ",
    crate::numeric_backend!(),
    ")"
);

/// palpipe: preference data → leakage-free splits → embeddings → personalized reward models.
///
/// A store is a folder of Lance tables (items, prompts, pairs, users, embeddings, splits,
/// models, runs). Pipelines (YAML) fill it; `sql` queries it; `train`, `eval` and `adapt`
/// fit and test PAL heads on it.
#[derive(Debug, Parser)]
#[command(name = "palpipe", version = VERSION, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// The store: a folder, or s3://bucket/prefix (gs://, az:// in a build with them); default
    /// ./palstore, or the pipeline's `store:`.
    #[arg(long, global = true, env = "PALPIPE_STORE", value_name = "DIR|URI")]
    pub store: Option<PathBuf>,
    /// An option for a store on object storage, KEY=VALUE with lance's key names
    /// (aws_endpoint, aws_region, aws_access_key_id, allow_http, …); repeat for more, after
    /// the command's name. Wins over the pipeline's `store_options:` and over AWS_* variables
    /// (lance lets AWS_ALLOW_HTTP and OBJECT_STORE_CLIENT_* win over options).
    #[arg(long = "store-option", global = true, value_name = "KEY=VALUE", value_parser = store_option)]
    pub store_options: Vec<(String, String)>,
    /// No status lines or progress bars on stderr (results and errors still print).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// clap keeps only the `--store-option`s given after the command's name when some come
/// before it too (a global flag's values are replaced, not merged): refuse that rather
/// than drop options silently.
fn check_store_options_kept(cli: &Cli) -> Result<(), CliError> {
    let given = std::env::args_os()
        .skip(1)
        .filter(|a| {
            let a = a.to_string_lossy();
            a == "--store-option" || a.starts_with("--store-option=")
        })
        .count();
    if given > cli.store_options.len() {
        return Err(CliError::usage(anyhow::anyhow!(
            "{given} --store-option flags given, {} kept: some come before the command's name and some after\nhint: give every --store-option after the command's name (palpipe sql QUERY --store-option K=V …)",
            cli.store_options.len()
        )));
    }
    Ok(())
}

/// Reads one `--store-option`: `KEY=VALUE`, the key not empty.
fn store_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "expected KEY=VALUE, got '{text}' (e.g. --store-option aws_region=eu-west-1)"
        )),
    }
}

const EXAMPLES: &str = "\
Examples:
  palpipe run pipelines/synthetic.yaml --store /tmp/s
  palpipe sql \"SELECT split, count(*) FROM pairs GROUP BY split\" --store /tmp/s
  palpipe tables --store /tmp/s
  palpipe eval --model pal-a-k3 --split synthetic-test --store /tmp/s
  palpipe report --run latest --out /tmp/report --store /tmp/s
  palpipe run leakage-split          # pipelines/leakage-split.yaml, found by name
  palpipe eval --split v2-no-leakage --store palstore-leakage   # every model, best first
  palpipe score --model pal-b-k4 --user u17 --prompt \"…\" --candidate \"…\" --candidate \"…\"
  palpipe serve --model pal-b-k4     # HTTP on 127.0.0.1:8000, OpenRLHF's /get_reward

Exit codes: 0 ok, 1 failure in the data or the work, 2 bad usage or configuration.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline file: validate it, then run each stage whose inputs changed.
    ///
    /// A stage whose inputs, parameters and the tables and models it reads are as at its last
    /// run is skipped, unless the model or metric it owns no longer holds what that run left
    /// (`palpipe train`, `eval` or `adapt` by hand under the same name): then it runs again.
    #[command(after_help = run::after_help())]
    Run(run::RunArgs),
    /// Read your own preference data (a file, glob or folder) into the store's pairs.
    Ingest(ingest::IngestArgs),
    /// Run a read-only SQL query over the store's tables.
    Sql(sql::SqlArgs),
    /// List the store's tables with their current version and row count.
    Tables(sql::TablesArgs),
    /// Train a PAL head (or a baseline) on a named split.
    ///
    /// Under the name of a pipeline's train stage, it replaces that stage's model; the
    /// pipeline's next run trains the stage's own again.
    Train(pal_cmds::TrainArgs),
    /// Evaluate a trained model (or the zero-shot CLIP score), or every one that can, on a named split.
    ///
    /// Records the result as the model's metric for the split (in `models.metrics_json`); if a
    /// pipeline's eval stage owns that metric and this one differs, the pipeline's next run
    /// runs that stage again.
    Eval(pal_cmds::EvalArgs),
    /// Fit new users' mixture weights from a few of their comparisons and score the rest.
    ///
    /// Records its result as the model's `adapt:<users>` metric (in `models.metrics_json`),
    /// replacing an adapt stage's for the same users (the pipeline's next run runs that stage
    /// again, to put its own back); `enroll --estimator auto` reads it.
    Adapt(pal_cmds::AdaptArgs),
    /// Train and evaluate a model for several K (and seeds) and print one table.
    Sweep(pal_cmds::SweepArgs),
    /// Score candidates for one user with a PAL model (best-of-n), from flags or JSON lines.
    Score(score::ScoreArgs),
    /// Enroll a new user into a model from their comparisons (their mixture is fitted and stored).
    Enroll(score::EnrollArgs),
    /// Serve models over HTTP: /score, /get_reward (OpenRLHF), /users/{id}/enroll, /models, /health.
    Serve(score::ServeArgs),
    /// Embed text items and prompts (and, with CLIP, images) into `embeddings`, skipping what is cached.
    Embed(vectors::EmbedArgs),
    /// Build a vector index over `embeddings`.
    Index(vectors::IndexArgs),
    /// Find the stored texts nearest to a query text.
    Search(vectors::SearchArgs),
    /// Publish the shards of a sharded `embed` run as one new version of `embeddings`.
    Commit(commit::CommitArgs),
    /// Remove data files never committed and table versions past a retention.
    Vacuum(vacuum::VacuumArgs),
    /// Generate stand-in datasets (Pick-a-Pic shards) for tests and demos.
    Fixtures(fixtures::FixturesArgs),
    /// Write one image item to a PNG file.
    ShowImage(images::ShowImageArgs),
    /// Write an HTML page of source images beside their derived (e.g. colour-filtered) versions.
    ContactSheet(images::ContactSheetArgs),
    /// Write a run's report: Markdown tables of its models, metrics and stages, and SVG plots.
    Report(report::ReportArgs),
    #[command(hide = true)]
    BenchPal(bench::BenchPalArgs),
    #[command(hide = true)]
    BenchHash(bench_image::BenchHashArgs),
    #[command(hide = true)]
    BenchClip(bench::BenchClipArgs),
    /// all-MiniLM-L6-v2 sentences/s on JSON-lines texts (a benchmark; `--device cuda` on a GPU).
    #[command(hide = true)]
    BenchMinilm(bench::BenchMinilmArgs),
    /// Compare an encoder's vectors with a reference implementation's (a device check).
    ///
    /// Prints `cosine<TAB>input` per vector on stdout and a summary on stderr; exits 1 when
    /// a cosine is below --min-cosine. Examples:
    ///   palpipe parity --encoder clip --device cuda
    ///   palpipe parity --encoder minilm --model-dir ~/.cache/palpipe/models/all-MiniLM-L6-v2
    #[command(hide = true, verbatim_doc_comment)]
    Parity(parity::ParityArgs),
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub error: anyhow::Error,
}

impl CliError {
    pub fn usage(e: impl Into<anyhow::Error>) -> CliError {
        CliError {
            code: 2,
            error: e.into(),
        }
    }
    pub fn failure(e: impl Into<anyhow::Error>) -> CliError {
        CliError {
            code: 1,
            error: e.into(),
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> CliError {
        let code = match e {
            StoreError::NotAFolder(_)
            | StoreError::Location { .. }
            | StoreError::Sql(_)
            | StoreError::UnknownTable(_)
            | StoreError::NoSuchVersion { .. } => 2,
            _ => 1,
        };
        CliError {
            code,
            error: e.into(),
        }
    }
}

/// A failed write of results on stdout (`outln!`), a failure of the work (exit 1); a broken
/// pipe among them is turned into a quiet exit 0 by `main`. Meant for those writes only:
/// other I/O errors need the file they concern as context.
impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError::failure(e)
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> CliError {
        CliError::failure(e)
    }
}

/// Shared context every subcommand gets: where the store is and how to print.
pub struct Ctx {
    pub store_flag: Option<PathBuf>,
    /// `--store-option KEY=VALUE`s, in the order given (a later one wins).
    pub store_options: Vec<(String, String)>,
    pub printer: Printer,
}

impl Ctx {
    /// Where the store is: --store / PALPIPE_STORE, else `fallback` (a pipeline's `store:`),
    /// else ./palstore; a remote store gets `options` (a pipeline's `store_options:`) with
    /// the `--store-option`s over them. `--store-option` with a folder is bad usage.
    fn location(
        &self,
        fallback: Option<&str>,
        options: &BTreeMap<String, String>,
    ) -> Result<StoreLocation, CliError> {
        let text = match (&self.store_flag, fallback) {
            (Some(flag), _) => flag.to_string_lossy().into_owned(),
            (None, Some(f)) => f.to_string(),
            (None, None) => "palstore".to_string(),
        };
        // The pipeline's options, less those a `--store-option` names (in any case: lance
        // reads `AWS_REGION` and `aws_region` as one key), then the flags.
        let mut options = options.clone();
        options.retain(|k, _| {
            !self
                .store_options
                .iter()
                .any(|(flag, _)| flag.eq_ignore_ascii_case(k))
        });
        options.extend(self.store_options.iter().cloned());
        let location = StoreLocation::parse(&text, &options)?;
        if !location.is_remote() && !self.store_options.is_empty() {
            return Err(CliError::usage(anyhow::anyhow!(
                "--store-option is for stores on object storage, and the store '{}' is a folder\nhint: leave out --store-option, or use --store s3://bucket/prefix",
                location.display()
            )));
        }
        Ok(location)
    }

    /// The store a writing command (run, embed) fills, created when it does not exist.
    pub fn store(&self, fallback: Option<&str>) -> Result<Store, CliError> {
        self.store_with(fallback, &BTreeMap::new())
    }

    /// As [`Ctx::store`], with a pipeline's `store_options:`.
    pub fn store_with(
        &self,
        fallback: Option<&str>,
        options: &BTreeMap<String, String>,
    ) -> Result<Store, CliError> {
        Ok(Store::open_at(self.location(fallback, options)?)?)
    }

    /// The store a dry run plans against: as [`Ctx::store`], but nothing is created.
    pub fn planned_store(
        &self,
        fallback: Option<&str>,
        options: &BTreeMap<String, String>,
    ) -> Result<Store, CliError> {
        Ok(Store::open_for_plan_at(self.location(fallback, options)?)?)
    }

    /// The store a command reads (sql, tables, eval, search, …): it must exist already; a
    /// missing folder (or a prefix with no table) is an error (exit 1) and nothing is
    /// created.
    pub async fn existing_store(&self) -> Result<Store, CliError> {
        Ok(Store::open_existing_at(self.location(None, &BTreeMap::new())?).await?)
    }
}

/// The compute device named by a `--device` flag: an unknown name, or `cuda` in a build
/// without it, is bad usage (2); a CUDA device that cannot be opened is a failure (1).
pub fn open_device(name: &str) -> Result<candle_core::Device, CliError> {
    crate::embed::device(name).map_err(|e| match e {
        crate::embed::EmbedError::Candle { .. } => CliError::failure(e),
        _ => CliError::usage(e),
    })
}

/// An error as a user reads it: `outer: cause: …` on one line, then any hints on their own
/// lines (see [`crate::store::messages::error_chain`], which this names for the CLI).
pub fn render_error(e: &anyhow::Error) -> String {
    crate::store::messages::error_chain(e)
}

pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::failure)
}

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> Result<(), CliError> {
    check_store_options_kept(&cli)?;
    let ctx = Ctx {
        store_flag: cli.store,
        store_options: cli.store_options,
        printer: Printer::new(cli.quiet),
    };
    let rt = runtime()?;
    rt.block_on(async move {
        match cli.command {
            Command::Run(a) => run::run(&ctx, a).await,
            Command::Ingest(a) => ingest::ingest(&ctx, a).await,
            Command::Sql(a) => sql::sql(&ctx, a).await,
            Command::Tables(a) => sql::tables(&ctx, a).await,
            Command::Train(a) => pal_cmds::train(&ctx, a).await,
            Command::Eval(a) => pal_cmds::eval(&ctx, a).await,
            Command::Adapt(a) => pal_cmds::adapt(&ctx, a).await,
            Command::Sweep(a) => pal_cmds::sweep(&ctx, a).await,
            Command::Score(a) => score::score(&ctx, a).await,
            Command::Enroll(a) => score::enroll(&ctx, a).await,
            Command::Serve(a) => score::serve_cmd(&ctx, a).await,
            Command::Embed(a) => vectors::embed(&ctx, a).await,
            Command::Index(a) => vectors::index(&ctx, a).await,
            Command::Search(a) => vectors::search(&ctx, a).await,
            Command::Commit(a) => commit::commit(&ctx, a).await,
            Command::Vacuum(a) => vacuum::vacuum(&ctx, a).await,
            Command::ShowImage(a) => images::show_image(&ctx, a).await,
            Command::ContactSheet(a) => images::contact_sheet(&ctx, a).await,
            Command::Report(a) => report::report(&ctx, a).await,
            Command::Fixtures(a) => fixtures::fixtures(&ctx, a).await,
            Command::BenchPal(a) => bench::bench_pal(&ctx, a).await,
            Command::BenchHash(a) => bench_image::bench_hash(&ctx, a).await,
            Command::BenchClip(a) => bench::bench_clip(&ctx, a).await,
            Command::BenchMinilm(a) => bench::bench_minilm(&ctx, a).await,
            Command::Parity(a) => parity::parity(&ctx, a).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::render_error;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open device 'cuda': {source}")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::other("no device");
        let e = anyhow::Error::new(Outer { source: io });
        assert_eq!(render_error(&e), "cannot open device 'cuda': no device");

        let e = anyhow::Error::new(std::io::Error::other("disk full")).context("writing 'x'");
        assert_eq!(render_error(&e), "writing 'x': disk full");
        assert_eq!(
            render_error(&anyhow::anyhow!("")),
            "unknown error",
            "an empty message still says something"
        );
    }
}
