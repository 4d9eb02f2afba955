//! The `length_preference_users` kind: the PAL paper's Reddit TL;DR users (Sec. D.3), seen and
//! unseen users with a synthetic preference for the longer or the shorter summary, built from
//! summarize-from-feedback comparison files (`crate::ingest::tldr`). Reads its `dir` (or
//! `path`); owns its dataset's pairs and users.

use std::path::PathBuf;

use super::{
    ingest_summary, keyed_inputs, KindInfo, ParamIssue, PathResolver, RunFuture, Scope, StageCtx,
    StageKind,
};
use crate::ingest::tldr::{self, Params};

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<Params>(
    "length_preference_users",
    "TL;DR comparisons → users who prefer longer / shorter summaries (PAL D.3)",
    "dir: ../data/tldr-fixtures/comparisons\ndataset: tldr\nseen_users: 10\nminority_ranks: [3, 4, 5]\nmin_unseen_comparisons: 100\nval_frac: 0.1\nseed: 0\n",
);

impl StageKind for Params {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn inputs(&self) -> Vec<(String, PathBuf)> {
        let key = if self.path.is_some() { "path" } else { "dir" };
        keyed_inputs(key, tldr::input_files(self))
    }

    fn resolve_paths(&mut self, resolve: &PathResolver<'_>) {
        if let Some(dir) = &mut self.dir {
            resolve("dir", dir);
        }
        if let Some(path) = &mut self.path {
            resolve("path", path);
        }
    }

    fn check(&self) -> Result<(), ParamIssue> {
        tldr::validate(self).map_err(|e| {
            let message = e.to_string();
            match e {
                crate::ingest::IngestError::BadParam { param, .. } if !param.contains(' ') => {
                    ParamIssue::new(&param, message)
                }
                _ => ParamIssue::new("", message),
            }
        })
    }

    fn owns(&self, _stage_name: &str) -> Vec<Scope> {
        vec![Scope::Dataset(self.dataset.clone())]
    }

    fn describe(&self) -> String {
        format!(
            "length-preference users ({} seen, shorter at ranks {:?}) from {}",
            self.seen_users,
            self.minority_ranks,
            self.source()
                .map(|s| s.display().to_string())
                .unwrap_or_default()
        )
    }

    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        Box::pin(async move {
            let p = self.clone();
            let (batch, report) =
                tokio::task::spawn_blocking(move || tldr::ingest_with_report(&p)).await??;
            let written = ingest_summary(ctx, &self.dataset, batch).await?;
            Ok(format!("{}; {written}", report.summary()))
        })
    }
}
