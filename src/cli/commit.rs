//! `palpipe commit`: publishes the shards of a sharded embedding run as one version of
//! `embeddings` (the protocol lives in `src/store/shards.rs`).

use std::time::Instant;

use super::vectors::shard_err;
use super::{CliError, Ctx};
use crate::store::shards::{commit_run, CommitOutcome};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  palpipe embed --shard 0/4 --uncommitted --run-id r1   # one per shard, anywhere\n  palpipe commit --run-id r1 --shards 4\n\nA missing shard is refused, naming it. A run already committed (its id is in the\ntransaction properties of a version of embeddings) is not committed again."
)]
pub struct CommitArgs {
    /// The run to publish (as given to `palpipe embed --run-id`).
    #[arg(long)]
    pub run_id: String,
    /// How many shards the run has (the N of --shard K/N).
    #[arg(long)]
    pub shards: usize,
}

pub async fn commit(ctx: &Ctx, a: CommitArgs) -> Result<(), CliError> {
    let store = ctx.existing_store().await?;
    let _lock = store.lock()?;
    let started = Instant::now();
    let outcome = commit_run(&store, &a.run_id, a.shards)
        .await
        .map_err(shard_err)?;
    let run = &a.run_id;
    match outcome {
        CommitOutcome::Committed {
            version,
            rows,
            fragments,
        } => outln!(
            "run '{run}': committed {rows} rows of {} shards ({fragments} fragments) as embeddings version {version} in {:.3} s",
            a.shards,
            started.elapsed().as_secs_f64()
        )?,
        CommitOutcome::AlreadyCommitted { version } => outln!(
            "run '{run}' is already committed (embeddings version {version}); nothing to do"
        )?,
        CommitOutcome::Empty => {
            outln!("run '{run}': its {} shards hold no rows; nothing to commit", a.shards)?
        }
    }
    Ok(())
}
