//! The `synthetic` kind: the PAL paper's ideal-point simulation (`crate::ingest::synthetic`)
//! written into the store. It reads no files and owns its dataset's pairs and users.

use super::{ingest_in_memory, KindInfo, RunFuture, Scope, StageCtx, StageKind};
use crate::ingest::synthetic::{self, Params};

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<Params>(
    "synthetic",
    "simulated users on ideal points (PAL App. D.2), with their vectors",
    "setting: partition\nd: 2\nk_star: 3\nusers: 10\ncomparisons_per_user: 20\nheld_out_per_user: 5\nval_per_user: 2\nunseen_users: 2\nseed: 0\n",
);

impl StageKind for Params {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn owns(&self, _stage_name: &str) -> Vec<Scope> {
        vec![Scope::Dataset(self.dataset.clone())]
    }

    fn appends(&self) -> &'static [&'static str] {
        // Its vectors are stored as the synthetic encoder's embeddings too.
        &["embeddings"]
    }

    fn describe(&self) -> String {
        format!(
            "{} users × {} comparisons, d={}, K*={}",
            self.users, self.comparisons_per_user, self.d, self.k_star
        )
    }

    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        ingest_in_memory(ctx, self, &self.dataset, synthetic::ingest)
    }
}
