//! `palpipe fixtures`: generated stand-ins for datasets we cannot download here.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, Ctx};
use crate::ingest::common::IngestError;
use crate::ingest::pickapic_fixtures::{self, FixtureSpec};
use crate::ingest::tldr_fixtures::{self, TldrFixtureSpec};

#[derive(Debug, Args)]
pub struct FixturesArgs {
    #[command(subcommand)]
    pub what: FixtureKind,
}

#[derive(Debug, Subcommand)]
pub enum FixtureKind {
    /// Pick-a-Pic shards in the published parquet layout, with planted leaks, ties and users.
    ///
    /// Writes DIR/v1/{train,validation,test}-*.parquet, DIR/v2/test-*.parquet and
    /// DIR/manifest.json (every planted count). Images are small JPEGs drawn from their
    /// captions ("a red circle on a blue background"); the same seed gives the same bytes.
    #[command(after_help = "\
Examples:
  palpipe fixtures pickapic --out data/pickapic-fixtures
  palpipe fixtures pickapic --out /tmp/big --rows 12000 --image-size 256 --noise 40   # ~1 GB")]
    Pickapic(PickapicArgs),
    /// Reddit TL;DR comparisons in the summarize-from-feedback JSON-lines layout.
    ///
    /// Writes DIR/comparisons/batch<N>.json and DIR/manifest.json (the planted seen, unseen
    /// and casual workers, equal-length and off-policy comparisons), the input of the
    /// `length_preference_users` stage; the same seed gives the same bytes.
    #[command(after_help = "\
Examples:
  palpipe fixtures summarize --out data/tldr-fixtures")]
    Summarize(SummarizeArgs),
}

#[derive(Debug, Args)]
pub struct SummarizeArgs {
    /// Folder to create (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Reddit posts, six summaries each.
    #[arg(long, default_value_t = TldrFixtureSpec::default().posts)]
    pub posts: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct PickapicArgs {
    /// Folder to create (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Labelled, tie-free rows in v1 train; v1 validation gets a tenth, v1 test and v2 test
    /// a fifth each (plus the leaks in v2 test).
    #[arg(long, default_value_t = FixtureSpec::default().rows)]
    pub rows: usize,
    /// v2-test rows repeating v1 train/validation content (same caption and image bytes).
    #[arg(long, default_value_t = FixtureSpec::default().leaks)]
    pub leaks: usize,
    /// Rows labelled 0.5/0.5, spread over the four splits.
    #[arg(long, default_value_t = FixtureSpec::default().ties)]
    pub ties: usize,
    /// Rows with has_label = false, spread over the four splits.
    #[arg(long, default_value_t = FixtureSpec::default().unlabeled)]
    pub unlabeled: usize,
    /// v1-train rows repeating another v1-train row.
    #[arg(long, default_value_t = FixtureSpec::default().duplicates)]
    pub duplicates: usize,
    /// v1-train rows whose second image is not a decodable JPEG.
    #[arg(long, default_value_t = FixtureSpec::default().corrupt)]
    pub corrupt: usize,
    /// Users with many labels in v1 train and v1 test (for Pick-a-Filter).
    #[arg(long, default_value_t = FixtureSpec::default().heavy_users)]
    pub heavy_users: usize,
    /// Labels of the least active heavy user; each next one has 3 more.
    #[arg(long, default_value_t = FixtureSpec::default().heavy_labels)]
    pub heavy_labels: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = FixtureSpec::default().image_size)]
    pub image_size: u32,
    /// Per-pixel noise amplitude (0-255): more noise, larger JPEGs.
    #[arg(long, default_value_t = FixtureSpec::default().noise)]
    pub noise: u8,
    /// Probability that the image the caption describes is the one preferred.
    #[arg(long, default_value_t = FixtureSpec::default().faithful)]
    pub faithful: f64,
    /// Rows per parquet shard.
    #[arg(long, default_value_t = FixtureSpec::default().shard_rows)]
    pub shard_rows: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub async fn fixtures(ctx: &Ctx, a: FixturesArgs) -> Result<(), CliError> {
    match a.what {
        FixtureKind::Pickapic(a) => pickapic(ctx, a).await,
        FixtureKind::Summarize(a) => summarize(ctx, a).await,
    }
}

async fn pickapic(ctx: &Ctx, a: PickapicArgs) -> Result<(), CliError> {
    let spec = FixtureSpec {
        rows: a.rows,
        leaks: a.leaks,
        ties: a.ties,
        unlabeled: a.unlabeled,
        duplicates: a.duplicates,
        corrupt: a.corrupt,
        heavy_users: a.heavy_users,
        heavy_labels: a.heavy_labels,
        image_size: a.image_size,
        noise: a.noise,
        faithful: a.faithful,
        shard_rows: a.shard_rows,
        seed: a.seed,
    };
    let usage = |e: IngestError| match e {
        IngestError::BadParam { .. } => CliError::usage(e),
        other => CliError::failure(other),
    };
    let total = pickapic_fixtures::total_rows(&spec).map_err(usage)?;
    let bar = ctx.printer.bar(total as u64, "rows");
    let out = a.out.clone();
    let manifest = tokio::task::spawn_blocking(move || {
        pickapic_fixtures::write(&spec, &out, |n| bar.inc(n as u64))
    })
    .await
    .map_err(CliError::failure)?
    .map_err(usage)?;
    let per: Vec<String> = manifest
        .splits
        .iter()
        .map(|(t, c)| format!("{t} {}", c.rows))
        .collect();
    ctx.printer.status(format!(
        "wrote {} shards to {} ({}; {:.1} MB of images)",
        manifest.files.len(),
        a.out.display(),
        per.join(", "),
        manifest.image_bytes as f64 / 1e6
    ));
    outln!(
        "planted: v2-leakage {}, v2-no-leakage {}, ties {}, unlabeled {}, v1-train duplicates {}, heavy users {}; see {}",
        manifest.v2_leakage,
        manifest.v2_no_leakage,
        manifest.spec.ties,
        manifest.spec.unlabeled,
        manifest.spec.duplicates,
        manifest.heavy.len(),
        a.out.join("manifest.json").display()
    )?;
    Ok(())
}

async fn summarize(ctx: &Ctx, a: SummarizeArgs) -> Result<(), CliError> {
    let spec = TldrFixtureSpec {
        posts: a.posts,
        seed: a.seed,
        ..TldrFixtureSpec::default()
    };
    let out = a.out.clone();
    let m = tokio::task::spawn_blocking(move || tldr_fixtures::write(&spec, &out))
        .await
        .map_err(CliError::failure)?
        .map_err(|e| match e {
            IngestError::BadParam { .. } => CliError::usage(e),
            other => CliError::failure(other),
        })?;
    ctx.printer.status(format!(
        "wrote {} comparisons in {} files to {}",
        m.comparisons,
        m.files.len(),
        a.out.display()
    ));
    outln!(
        "planted: {} seen, {} unseen and {} casual workers, {} equal-length and {} off-policy comparisons; see {}",
        m.seen.len(),
        m.unseen.len(),
        m.casual.len(),
        m.equal_length,
        m.off_policy,
        a.out.join("manifest.json").display()
    )?;
    Ok(())
}
