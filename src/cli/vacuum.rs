//! `palpipe vacuum`: removes data files never committed and old table versions (the work is
//! in `src/store/vacuum.rs`).

use std::time::Duration;

use super::{CliError, Ctx};
use crate::store::vacuum::{vacuum as run_vacuum, VacuumOptions};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  palpipe vacuum --dry-run\n  palpipe vacuum --older-than 2h --versions-older-than 30d\n\nAges are a number and a unit: s, m, h or d (e.g. 90m, 1d). A file younger than\n--older-than may belong to a stage or a shard still running, so it stays. A sharded run\nnever committed keeps its files until its newest shard is older than --older-than; then its\nfiles and its folder under _palpipe/runs go. The latest version of a table always stays."
)]
pub struct VacuumArgs {
    /// Remove data files no version references once they are older than this.
    #[arg(long, default_value = "1d", value_parser = parse_age)]
    pub older_than: Duration,
    /// Remove versions older than this (Lance's cleanup; the latest always stays).
    #[arg(long, default_value = "7d", value_parser = parse_age)]
    pub versions_older_than: Duration,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `90m`, `1d`, `0s`: a whole number and a unit (s, m, h, d).
fn parse_age(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| {
        format!("'{s}' is not an age: expected a number and a unit, e.g. 90m or 1d")
    })?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "'{s}': unknown unit '{other}' (use s, m, h or d, e.g. 90m or 1d)"
            ))
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

pub async fn vacuum(ctx: &Ctx, a: VacuumArgs) -> Result<(), CliError> {
    let store = ctx.existing_store().await?;
    // A vacuum must not run beside a writer of this machine: a stage's staged files are young,
    // but its commit could read a version being removed.
    let _lock = store.lock()?;
    let opts = VacuumOptions {
        uncommitted_older_than: a.older_than,
        versions_older_than: a.versions_older_than,
        dry_run: a.dry_run,
    };
    let report = run_vacuum(&store, opts).await?;
    let verb = if a.dry_run { "would remove" } else { "removed" };
    let (mut files, mut bytes, mut versions) = (0u64, 0u64, 0u64);
    for t in &report.tables {
        if t.uncommitted_files + t.old_versions + t.version_files == 0 {
            continue;
        }
        outln!(
            "{}: {verb} {} uncommitted data files ({} bytes), {} old versions ({} files, {} bytes)",
            t.table,
            t.uncommitted_files,
            t.uncommitted_bytes,
            t.old_versions,
            t.version_files,
            t.version_bytes
        )?;
        files += t.uncommitted_files + t.version_files;
        bytes += t.uncommitted_bytes + t.version_bytes;
        versions += t.old_versions;
    }
    for r in &report.abandoned_runs {
        outln!("run '{r}': never committed; {verb} its shard metadata")?;
    }
    outln!(
        "total: {verb} {files} files ({bytes} bytes), {versions} old versions, {} abandoned runs",
        report.abandoned_runs.len()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_age;
    use std::time::Duration;

    #[test]
    fn ages_read_as_a_number_and_a_unit() {
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_age("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_age("1w").unwrap_err().contains("unknown unit 'w'"));
        assert!(parse_age("d").unwrap_err().contains("not an age"));
    }
}
