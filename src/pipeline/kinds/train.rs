//! The `train` kind: fits a PAL head (or a baseline) on a named split and registers it
//! (`crate::pipeline::pal_stages::train_model`, shared with `palpipe train`). Owns its model's
//! row in `models` and its checkpoint folder.

use super::{KindInfo, RunFuture, Scope, StageCtx, StageKind};
use crate::pipeline::pal_stages::{train_model, TrainParams};

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<TrainParams>(
    "train",
    "fits PAL-A/PAL-B, the BT reward or popularity on a split; registers it",
    "name: pal-b-k2\nmodel: pal-b\nk: 2\ntrain: synthetic-train\nval: synthetic-val\nencoder: synthetic-identity\nseed: 0\nconfig: {d: 2}\ntraining: {epochs: 3}\n",
);

impl StageKind for TrainParams {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    // Train, eval and adapt also hash the SQL of the splits and the identity of the model
    // they name (see the runner), not the versions of `splits` and `models`.
    fn reads(&self) -> &'static [&'static str] {
        &["pairs", "embeddings"]
    }

    fn owns(&self, stage_name: &str) -> Vec<Scope> {
        vec![Scope::Model(
            self.model_name(stage_name).unwrap_or_default(),
        )]
    }

    fn split_refs(&self) -> Vec<(String, String)> {
        let mut v = vec![("train".to_string(), self.train.clone())];
        if let Some(s) = &self.val {
            v.push(("val".into(), s.clone()));
        }
        v
    }

    /// Its `name`, else the stage's name.
    fn model_name(&self, stage_name: &str) -> Option<String> {
        Some(self.name.clone().unwrap_or_else(|| stage_name.to_string()))
    }

    fn uses_numeric_backend(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("{} K={} on '{}'", self.model, self.k, self.train)
    }

    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        Box::pin(async move {
            let name = self
                .name
                .clone()
                .unwrap_or_else(|| ctx.stage_name.to_string());
            Ok(
                train_model(ctx.store, &name, self, Some(ctx.run_id), ctx.printer)
                    .await?
                    .summary,
            )
        })
    }
}
