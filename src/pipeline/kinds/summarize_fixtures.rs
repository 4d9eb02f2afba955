//! The `summarize_fixtures` kind: writes stand-in comparisons in the layout of the
//! summarize-from-feedback release (`crate::ingest::tldr_fixtures`) into its `out` folder
//! when they are absent, and does nothing when they are present with the same parameters (a
//! `manifest.json` with another spec is an error). It lets `pipelines/tldr.yaml` run on a
//! fresh clone; with the real release, point the next stage's `dir` at its `comparisons/`.
//!
//! It owns its folder, outside the store, as the Pick-a-Pic `fixtures` kind does.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::fixtures::fixtures_present;
use super::{KindInfo, PathResolver, RunFuture, Scope, StageCtx, StageKind};
use crate::ingest::tldr_fixtures::{self, TldrFixtureSpec};

fn default_posts() -> usize {
    TldrFixtureSpec::default().posts
}

/// Parameters of a `summarize_fixtures` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The folder to fill (relative paths: against the pipeline file's folder). Required.
    pub out: PathBuf,
    /// Reddit posts, six summaries each. Default 240.
    #[serde(default = "default_posts")]
    pub posts: usize,
    #[serde(default)]
    pub seed: u64,
}

impl Params {
    fn manifest(&self) -> PathBuf {
        self.out.join("manifest.json")
    }

    fn spec(&self) -> TldrFixtureSpec {
        TldrFixtureSpec {
            posts: self.posts,
            seed: self.seed,
            ..TldrFixtureSpec::default()
        }
    }
}

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<Params>(
    "summarize_fixtures",
    "writes summarize-from-feedback stand-in comparisons into 'out' when absent",
    "out: ../data/tldr-fixtures\nposts: 240\nseed: 0\n",
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
            format!("TL;DR stand-ins in {} (present)", self.out.display())
        } else {
            format!(
                "TL;DR stand-ins into {} ({} posts, seed {})",
                self.out.display(),
                self.posts,
                self.seed
            )
        }
    }

    fn run<'a>(&'a self, _ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        Box::pin(async move {
            let params = format!("posts {}, seed {}", self.posts, self.seed);
            let wanted = serde_json::to_value(self.spec())?;
            if fixtures_present(&self.out, &wanted, "stand-in comparisons", &params)? {
                return Ok(format!(
                    "present in {}: nothing written",
                    self.out.display()
                ));
            }
            let spec = self.spec();
            let out = self.out.clone();
            let m =
                tokio::task::spawn_blocking(move || tldr_fixtures::write(&spec, &out)).await??;
            Ok(format!(
                "wrote {} comparisons in {} files to {} (planted: {} seen, {} unseen and {} casual workers, {} equal-length, {} off-policy)",
                m.comparisons,
                m.files.len(),
                self.out.display(),
                m.seen.len(),
                m.unseen.len(),
                m.casual.len(),
                m.equal_length,
                m.off_policy
            ))
        })
    }
}
