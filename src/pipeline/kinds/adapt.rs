//! The `adapt` kind: fits new users' mixture weights from a few of their comparisons and
//! scores the rest (`crate::pipeline::pal_stages::adapt_model`, shared with `palpipe adapt`).
//! Owns the `adapt:<split>` metric of the model it names.

use super::{KindInfo, RunFuture, Scope, StageCtx, StageKind};
use crate::pipeline::pal_stages::{adapt_model, AdaptParams};

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<AdaptParams>(
    "adapt",
    "places new users in a model from a few shots; scores the rest",
    "model: pal-b-k2\nusers: synthetic-unseen\nshots: [0, 5, 20]\nsteps: 100\nseed: 0\n",
);

impl StageKind for AdaptParams {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn reads(&self) -> &'static [&'static str] {
        &["pairs", "embeddings"]
    }

    fn owns(&self, _stage_name: &str) -> Vec<Scope> {
        vec![Scope::ModelMetric {
            model: self.model.clone(),
            key: format!("adapt:{}", self.users),
        }]
    }

    fn split_refs(&self) -> Vec<(String, String)> {
        vec![("users".into(), self.users.clone())]
    }

    fn model_refs(&self) -> Vec<(String, String)> {
        vec![("model".into(), self.model.clone())]
    }

    fn describe(&self) -> String {
        format!(
            "model '{}', users of '{}', shots {:?}",
            self.model, self.users, self.shots
        )
    }

    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        Box::pin(async move {
            let rows = adapt_model(ctx.store, self).await?;
            let parts: Vec<String> = rows
                .iter()
                .map(|r| format!("{} shots {:.2}%", r.shots, 100.0 * r.accuracy))
                .collect();
            Ok(format!(
                "{} users: {}",
                rows.first().map(|r| r.users).unwrap_or(0),
                parts.join(", ")
            ))
        })
    }
}
