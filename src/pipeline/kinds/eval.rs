//! The `eval` kind: scores a stored model (or the zero-shot CLIP score) on a named split and
//! records the metrics under the split's name (`crate::pipeline::pal_stages::eval_model`,
//! shared with `palpipe eval`). Owns that one metric of that model.

use super::{KindInfo, RunFuture, Scope, StageCtx, StageKind};
use crate::pipeline::pal_stages::{eval_model, one_line, EvalParams, CLIP_SCORE};

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<EvalParams>(
    "eval",
    "scores a stored model (or clip-score) on a split, with 95% intervals",
    "model: pal-b-k2\nsplit: synthetic-test\nbootstrap: 200\nseed: 1\n",
);

impl StageKind for EvalParams {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn reads(&self) -> &'static [&'static str] {
        &["pairs", "embeddings"]
    }

    fn owns(&self, _stage_name: &str) -> Vec<Scope> {
        vec![Scope::ModelMetric {
            model: self.model.clone(),
            key: self.split.clone(),
        }]
    }

    fn split_refs(&self) -> Vec<(String, String)> {
        vec![("split".into(), self.split.clone())]
    }

    fn model_refs(&self) -> Vec<(String, String)> {
        // The CLIP score is no stored model: its encoder and vectors are in the fingerprint.
        if self.model == CLIP_SCORE {
            Vec::new()
        } else {
            vec![("model".into(), self.model.clone())]
        }
    }

    fn uses_numeric_backend(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("model '{}' on split '{}'", self.model, self.split)
    }

    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        Box::pin(async move {
            Ok(one_line(
                &eval_model(ctx.store, self, Some(ctx.run_id)).await?,
            ))
        })
    }
}
