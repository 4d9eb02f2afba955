//! The `preferences` kind: your own pairwise preference data (`crate::ingest::preferences`
//! reads it; this file writes). Files are read on a blocking thread into sorted runs (spilled
//! to temporary files past a budget), merged one row per id and handed over in chunks (one
//! in flight while the previous one is written), so memory stays flat in the file size.
//! Owns its dataset's pairs and users; texts, images and prompts go to the shared,
//! content-addressed `items` and `prompts`. `palpipe ingest` runs this kind.

use std::path::PathBuf;

use super::{
    ingest_streamed, keyed_inputs, write_summary, KindInfo, ParamIssue, PathResolver, RunFuture,
    Scope, StageCtx, StageKind,
};
use crate::ingest::preferences::{self, Params, PrefError};

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<Params>(
    "preferences",
    "your own preference data (parquet, csv, jsonl; pairwise, best_of_k, ratings)",
    "dataset: my-ratings\npath: ../data/ratings.csv.gz\nformat: csv\nlayout: ratings\ncolumns:\n  user: rater_id\n  group: [conversation_id, turn]\n  prompt: question\n  response: answer\n  score: score\n  split: {constant: train}\nmin_gap: 1.0\nstrict: true\nitems: text\nseed: 0\n",
);

impl StageKind for Params {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn inputs(&self) -> Vec<(String, PathBuf)> {
        keyed_inputs("path", preferences::input_files(self))
    }

    fn resolve_paths(&mut self, resolve: &PathResolver<'_>) {
        resolve("path", &mut self.path);
    }

    fn owns(&self, _stage_name: &str) -> Vec<Scope> {
        vec![Scope::Dataset(self.dataset.clone())]
    }

    fn describe(&self) -> String {
        let how = match &self.preset {
            Some(p) => format!("preset {p}"),
            None => format!("{:?}", self.layout.unwrap_or_default()).to_lowercase(),
        };
        format!(
            "preferences '{}' from {} ({how})",
            self.dataset,
            self.path.display()
        )
    }

    fn check(&self) -> Result<(), ParamIssue> {
        match preferences::mapping(self) {
            Ok(_) => Ok(()),
            Err(PrefError::Param { key, message }) => Err(ParamIssue::new(&key, message)),
            Err(e) => Err(ParamIssue::new("", e.to_string())),
        }
    }

    fn dry_check(&self) -> anyhow::Result<()> {
        preferences::check_headers(self)?;
        Ok(())
    }

    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        Box::pin(ingest(self, ctx))
    }
}

/// Reads on a blocking thread, writes chunks as they come, commits once at the end; on any
/// error nothing is committed and the store keeps its previous rows.
async fn ingest(p: &Params, ctx: &StageCtx<'_>) -> anyhow::Result<String> {
    let params = p.clone();
    let (report, stats) = ingest_streamed(ctx, &p.dataset, true, move |tx| {
        preferences::read(&params, |chunk| {
            tx.blocking_send(chunk).map_err(|_| PrefError::Stopped)
        })
    })
    .await?;
    for (why, d) in &report.dropped {
        if why.starts_with("missing '") {
            ctx.printer.warn(format!(
                "{} rows dropped: {why} (first: {})",
                d.rows, d.first
            ));
        }
    }
    Ok(format!(
        "{}; {}",
        report.summary(),
        write_summary(stats.iter().map(|(t, s)| (t.as_str(), s)))
    ))
}
