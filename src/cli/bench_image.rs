//! `palpipe bench-hash` (hidden): the Pick-a-Pic reader's throughput without the store, for
//! `bench/image.sh`, which runs `b3sum` over the same shards beside it.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::{CliError, Ctx};
use crate::ingest::pickapic::{self, VerifyImages};
use crate::transform::dedup;

#[derive(Debug, Args)]
pub struct BenchHashArgs {
    /// A folder of shards in the fixture layout (`v1/*-*.parquet`, `v2/test-*.parquet`).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// none | header | decode
    #[arg(long, default_value = "none")]
    pub verify: String,
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
        Ok::<_, crate::ingest::IngestError>((report, read_s, dedup_s, pairs.len(), outcome))
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
    println!("{json}");
    Ok(())
}
