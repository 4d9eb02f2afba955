//! The `pickapic` kind: Pick-a-Pic parquet shards streamed into the store
//! (`crate::ingest::pickapic` decides; this file writes). Shards are read on a blocking
//! thread and handed over in chunks (one in flight while the previous one is written), so
//! memory stays at a few chunks whatever the dataset size. Owns its dataset's pairs and
//! users; images and captions go to the shared, content-addressed `items` and `prompts`.

use std::path::PathBuf;

use super::{
    ingest_streamed, keyed_inputs, write_summary, KindInfo, PathResolver, RunFuture, Scope,
    StageCtx, StageKind,
};
use crate::ingest::common::IngestError;
use crate::ingest::pickapic::{self, Params};

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<Params>(
    "pickapic",
    "Pick-a-Pic parquet shards (published v1/v2 layout), streamed",
    "data_dir: ../data/pickapic-fixtures\nsets:\n  - {version: v1, split: train, files: \"v1/train-*.parquet\"}\n  - {version: v2, split: test, files: \"v2/test-*.parquet\"}\nverify_images: header\ndataset: pickapic\nchunk_mb: 16\n",
);

impl StageKind for Params {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn inputs(&self) -> Vec<(String, PathBuf)> {
        keyed_inputs("data_dir", pickapic::input_files(self))
    }

    fn resolve_paths(&mut self, resolve: &PathResolver<'_>) {
        resolve("data_dir", &mut self.data_dir);
    }

    fn owns(&self, _stage_name: &str) -> Vec<Scope> {
        vec![Scope::Dataset(self.dataset.clone())]
    }

    fn describe(&self) -> String {
        format!(
            "Pick-a-Pic shards {} from {}",
            self.sets
                .iter()
                .map(|s| s.tag())
                .collect::<Vec<_>>()
                .join(", "),
            self.data_dir.display()
        )
    }

    fn missing_input_hint(&self, key: &str) -> Option<String> {
        (key == "data_dir").then(|| {
            format!(
                "hint: for stand-in shards run 'palpipe fixtures pickapic --out {}' (or put a 'fixtures' stage before this one)",
                self.data_dir.display()
            )
        })
    }

    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        Box::pin(ingest(self, ctx))
    }
}

/// The `pickapic` stage: shards are read on a blocking thread and handed over in chunks
/// (one in flight while the previous one is written), so memory stays at a few chunks
/// whatever the dataset size.
async fn ingest(p: &Params, ctx: &StageCtx<'_>) -> anyhow::Result<String> {
    let total = pickapic::count_rows(p)?;
    let bar = ctx.printer.bar(total, "rows");
    let params = p.clone();
    let reader_bar = bar.clone();
    let result = ingest_streamed(ctx, &p.dataset, false, move |tx| {
        pickapic::read(
            &params,
            |chunk| {
                tx.blocking_send(chunk)
                    .map_err(|_| IngestError::Stopped("the store writer stopped".into()))
            },
            |n| reader_bar.set_position(n),
        )
    })
    .await;
    bar.finish_and_clear();
    let (report, stats) = result?;
    for (tag, c) in &report {
        for (ranking, why) in &c.bad_examples {
            ctx.printer
                .warn(format!("{tag}: ranking_id {ranking} skipped: {why}"));
        }
    }
    Ok(format!(
        "{}; {}",
        pickapic::summarise(&report),
        write_summary(stats.iter().map(|(t, s)| (t.as_str(), s)))
    ))
}
