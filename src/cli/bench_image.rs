//! `palpipe bench-hash` (hidden): the Pick-a-Pic reader's throughput without the store, for
//! `bench/image.sh`, which runs `b3sum` over the same shards beside it; with `--decode-only`,
//! the parquet decoding alone (the same columns, batches and threads, nothing done with the
//! rows), the floor of any reader built on arrow-rs's parquet decoder.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use arrow_array::{Array, BinaryArray, LargeBinaryArray};
use clap::Args;

use super::{CliError, Ctx};
use crate::ingest::pickapic::{self, VerifyImages};
use crate::ingest::IngestError;
use crate::transform::dedup;

#[derive(Debug, Args)]
pub struct BenchHashArgs {
    /// A folder of shards in the fixture layout (`v1/*-*.parquet`, `v2/test-*.parquet`).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// none | header | decode
    #[arg(long, default_value = "none")]
    pub verify: String,
    /// Decode the shards' columns and nothing else (no hashing, no rows, no dedup; `--verify`
    /// does not apply).
    #[arg(long, conflicts_with = "verify")]
    pub decode_only: bool,
}

pub async fn bench_hash(_ctx: &Ctx, a: BenchHashArgs) -> Result<(), CliError> {
    let verify = match a.verify.as_str() {
        "none" => VerifyImages::None,
        "header" => VerifyImages::Header,
        "decode" => VerifyImages::Decode,
        other => {
            return Err(CliError::usage(anyhow::anyhow!(
                "--verify: '{other}' is not one of none, header, decode"
            )))
        }
    };
    let mut params = pickapic::Params::new(&a.data_dir);
    params.verify_images = verify;
    if a.decode_only {
        let (bytes, rows, s) = tokio::task::spawn_blocking(move || decode_only(&params))
            .await
            .map_err(CliError::failure)?
            .map_err(CliError::failure)?;
        let json = serde_json::json!({
            "mode": "decode-only",
            "image_bytes": bytes,
            "rows": rows,
            "decode_s": s,
            "decode_mb_per_s": bytes as f64 / 1e6 / s,
        });
        outln!("{json}")?;
        return Ok(());
    }
    let result = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut pairs = Vec::new();
        let report = pickapic::read(
            &params,
            |chunk| {
                pairs.extend(chunk.pairs);
                Ok(())
            },
            |_| {},
        )?;
        let read_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let outcome = dedup::split(&pairs, &dedup::Params::default());
        let dedup_s = t.elapsed().as_secs_f64();
        Ok::<_, IngestError>((report, read_s, dedup_s, pairs.len(), outcome))
    })
    .await
    .map_err(CliError::failure)?
    .map_err(CliError::failure)?;
    let (report, read_s, dedup_s, n_pairs, outcome) = result;
    let bytes: u64 = report.values().map(|c| c.image_bytes).sum();
    let json = serde_json::json!({
        "verify": a.verify,
        "image_bytes": bytes,
        "pairs": n_pairs,
        "read_and_hash_s": read_s,
        "read_and_hash_mb_per_s": bytes as f64 / 1e6 / read_s,
        "dedup_s": dedup_s,
        "dedup_pairs_per_s": n_pairs as f64 / dedup_s.max(1e-9),
        "v2_leakage": outcome.leak,
        "v2_no_leakage": outcome.clean,
    });
    outln!("{json}")?;
    Ok(())
}

/// Decodes every shard of `p` as [`pickapic::read`] walks them (set by set, each set's
/// files taken in turn by `p.threads` threads, [`pickapic::open_reader`]'s projection and
/// batches) and only counts: returns (bytes of the two image columns, rows, seconds).
fn decode_only(p: &pickapic::Params) -> Result<(u64, u64, f64), IngestError> {
    let t = Instant::now();
    let (mut bytes, mut rows) = (0, 0);
    for set in &p.sets {
        let files = pickapic::expand(&p.data_dir, &set.files);
        let next = AtomicUsize::new(0);
        let per_thread: Vec<Result<(u64, u64), IngestError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..p.threads.clamp(1, files.len().max(1)))
                .map(|_| {
                    scope.spawn(|| -> Result<(u64, u64), IngestError> {
                        let (mut bytes, mut rows) = (0u64, 0u64);
                        while let Some(path) = files.get(next.fetch_add(1, Ordering::SeqCst)) {
                            for batch in pickapic::open_reader(path)? {
                                let batch = batch.map_err(pickapic::batch_err(path))?;
                                rows += batch.num_rows() as u64;
                                for name in ["jpg_0", "jpg_1"] {
                                    bytes += batch
                                        .column_by_name(name)
                                        .map_or(0, |c| value_bytes(c.as_ref()));
                                }
                            }
                        }
                        Ok((bytes, rows))
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("a decoding thread panicked"))
                .collect()
        });
        for r in per_thread {
            let (b, n) = r?;
            bytes += b;
            rows += n;
        }
    }
    Ok((bytes, rows, t.elapsed().as_secs_f64()))
}

/// The bytes of a binary column's values (its value buffer), 0 for other types.
fn value_bytes(a: &dyn Array) -> u64 {
    if let Some(b) = a.as_any().downcast_ref::<BinaryArray>() {
        return b.values().len() as u64;
    }
    a.as_any()
        .downcast_ref::<LargeBinaryArray>()
        .map_or(0, |b| b.values().len() as u64)
}
