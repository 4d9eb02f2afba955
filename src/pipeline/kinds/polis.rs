//! The `polis` kind: one Polis conversation's votes (`crate::ingest::polis`) as pairs.
//! Reads the export's CSV files (the votes from `votes.csv`, or from the wide
//! `participants-votes.csv` when it is alone; the wide file also gives the voters' groups);
//! owns the dataset `polis/<conversation>`.

use std::path::PathBuf;

use super::{
    ingest_summary, keyed_inputs, KindInfo, PathResolver, RunFuture, Scope, StageCtx, StageKind,
};
use crate::ingest::polis::{self, Params};

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<Params>(
    "polis",
    "a Polis conversation export (CSV): agree over disagree per voter",
    "dir: ../shared/data/polis/scoop-hivemind.taxes\nmax_pairs_per_user: 200\nmin_pairs_per_user: 20\nunseen_frac: 0.2\ntest_frac: 0.2\nval_frac: 0.1\nseed: 0\n",
);

impl StageKind for Params {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn inputs(&self) -> Vec<(String, PathBuf)> {
        keyed_inputs("dir", polis::input_files(self))
    }

    fn resolve_paths(&mut self, resolve: &PathResolver<'_>) {
        resolve("dir", &mut self.dir);
    }

    fn owns(&self, _stage_name: &str) -> Vec<Scope> {
        // The dataset is named after the folder; an unnamable folder fails at run time.
        polis::dataset_name(self)
            .map(|d| vec![Scope::Dataset(d)])
            .unwrap_or_default()
    }

    fn describe(&self) -> String {
        match self.split_by {
            polis::SplitBy::Pair => format!("conversation {}", self.dir.display()),
            polis::SplitBy::Statement => {
                format!("conversation {}, split by statement", self.dir.display())
            }
        }
    }

    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        Box::pin(async move {
            let p = self.clone();
            let (batch, report) =
                tokio::task::spawn_blocking(move || polis::ingest_with_report(&p)).await??;
            for w in report.warnings() {
                ctx.printer.warn(w);
            }
            let written = ingest_summary(ctx, &polis::dataset_name(self)?, batch).await?;
            Ok(format!("{}; {written}", report.summary()))
        })
    }
}
