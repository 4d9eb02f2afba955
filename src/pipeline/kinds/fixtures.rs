//! The `fixtures` kind: writes the Pick-a-Pic stand-in shards (what `palpipe fixtures
//! pickapic` writes, `crate::ingest::pickapic_fixtures`) into its `out` folder when they are
//! absent, and does nothing when they are present (the folder has a `manifest.json`). It
//! lets the shipped image pipelines run on a fresh clone with nothing done first; with real
//! data, delete the stage or point the ingest's `data_dir` elsewhere.
//!
//! It owns its folder, outside the store. Later stages name the shards as inputs, so they
//! enter those stages' fingerprints like any input file; the validator does not ask for
//! inputs under a folder an earlier `fixtures` stage makes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{KindInfo, PathResolver, RunFuture, Scope, StageCtx, StageKind};
use crate::ingest::pickapic_fixtures::{self, FixtureSpec};

fn default_rows() -> usize {
    FixtureSpec::default().rows
}

/// Parameters of a `fixtures` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The folder to fill (relative paths: against the pipeline file's folder). Required.
    pub out: PathBuf,
    /// Labelled, tie-free v1-train rows (as `palpipe fixtures pickapic --rows`). Default 1500.
    #[serde(default = "default_rows")]
    pub rows: usize,
    #[serde(default)]
    pub seed: u64,
}

impl Params {
    fn manifest(&self) -> PathBuf {
        self.out.join("manifest.json")
    }

    fn spec(&self) -> FixtureSpec {
        FixtureSpec {
            rows: self.rows,
            seed: self.seed,
            ..FixtureSpec::default()
        }
    }
}

/// Whether `out` already holds a fixture set made with `spec` (its `manifest.json` says so):
/// true when it does, false when `out` is absent or empty; an error when it holds one made
/// with other parameters (`params` names this stage's), which would leave the fixtures and all
/// that is read from them out of step with the pipeline, or files that are not a fixture set.
pub(crate) fn fixtures_present(
    out: &Path,
    spec: &serde_json::Value,
    what: &str,
    params: &str,
) -> anyhow::Result<bool> {
    let manifest = out.join("manifest.json");
    if manifest.is_file() {
        let text = std::fs::read_to_string(&manifest)?;
        let stored: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("'{}': not a fixture manifest: {e}", manifest.display())
        })?;
        if stored.get("spec") != Some(spec) {
            anyhow::bail!(
                "'{}' holds {what} made with other parameters than this stage's ({params})\nhint: delete that folder to make them anew, or point 'out' elsewhere",
                out.display()
            );
        }
        return Ok(true);
    }
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "'{}' holds files but no manifest.json, so it is not a fixture set\nhint: empty that folder, or point 'out' elsewhere",
            out.display()
        );
    }
    Ok(false)
}

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<Params>(
    "fixtures",
    "writes Pick-a-Pic stand-in shards into 'out' when absent, else nothing",
    "out: ../data/pickapic-fixtures\nrows: 1500\nseed: 0\n",
);

impl StageKind for Params {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn resolve_paths(&mut self, resolve: &PathResolver<'_>) {
        resolve("out", &mut self.out);
    }

    fn owns(&self, _stage_name: &str) -> Vec<Scope> {
        vec![Scope::Folder(self.out.clone())]
    }

    fn makes(&self) -> Vec<PathBuf> {
        vec![self.out.clone()]
    }

    fn describe(&self) -> String {
        if self.manifest().is_file() {
            format!("Pick-a-Pic stand-ins in {} (present)", self.out.display())
        } else {
            format!(
                "Pick-a-Pic stand-ins into {} ({} v1-train rows, seed {})",
                self.out.display(),
                self.rows,
                self.seed
            )
        }
    }

    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        Box::pin(async move {
            let params = format!("rows {}, seed {}", self.rows, self.seed);
            let wanted = serde_json::to_value(self.spec())?;
            if fixtures_present(&self.out, &wanted, "stand-in shards", &params)? {
                return Ok(format!(
                    "present in {}: nothing written",
                    self.out.display()
                ));
            }
            let spec = self.spec();
            let total = pickapic_fixtures::total_rows(&spec)?;
            let bar = ctx.printer.bar(total as u64, "rows");
            let out = self.out.clone();
            let manifest = tokio::task::spawn_blocking(move || {
                pickapic_fixtures::write(&spec, &out, |n| bar.inc(n as u64))
            })
            .await??;
            Ok(format!(
                "wrote {} shards to {} (planted: v2-leakage {}, v2-no-leakage {})",
                manifest.files.len(),
                self.out.display(),
                manifest.v2_leakage,
                manifest.v2_no_leakage
            ))
        })
    }
}
