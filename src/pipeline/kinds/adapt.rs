//! The `adapt` kind: fits new users' mixture weights from a few of their comparisons and
//! scores each user's fixed queries at every shot count, beside zero-shot, the oracle mixture
//! (in-sample and held out) and the seen users' accuracy (`crate::pipeline::pal_stages::adapt_model`, shared with
//! `palpipe adapt`).
//! Owns the `adapt:<split>` metric of the model it names.

use super::{KindInfo, ParamIssue, RunFuture, Scope, StageCtx, StageKind};
use crate::pipeline::pal_stages::{adapt_model, AdaptParams};

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<AdaptParams>(
    "adapt",
    "places new users in a model from a few shots; scores their fixed queries",
    "model: pal-b-k2\nusers: synthetic-unseen\nshots: [0, 5, 20]\nseed: 0\ntune_split: synthetic-train\nseen_split: synthetic-test\n",
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
        let mut v = vec![("users".into(), self.users.clone())];
        if let Some(t) = &self.tune_split {
            v.push(("tune_split".into(), t.clone()));
        }
        if let Some(t) = &self.seen_split {
            v.push(("seen_split".into(), t.clone()));
        }
        v
    }

    fn model_refs(&self) -> Vec<(String, String)> {
        vec![("model".into(), self.model.clone())]
    }

    fn uses_numeric_backend(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!(
            "model '{}', users of '{}', shots {:?}{}",
            self.model,
            self.users,
            self.shot_counts(),
            if self.queries_by.is_pair() {
                ""
            } else {
                ", queries by item"
            }
        )
    }

    /// The few-shot settings in range (`ridge`, `prior_scale`, `query_frac`, ...) and `shots`
    /// not empty, before anything runs.
    fn check(&self) -> Result<(), ParamIssue> {
        self.check_params()
    }

    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        Box::pin(async move {
            let out = adapt_model(ctx.store, self, Default::default()).await?;
            if let Some(w) = out.single_prototype_warning(&self.model) {
                ctx.printer.warn(w);
            }
            let rows = &out.rows;
            let parts: Vec<String> = rows
                .iter()
                .map(|r| format!("{} shots {:.2}%", r.shots, 100.0 * r.accuracy))
                .collect();
            let first = rows.first();
            let mut msg = format!(
                "{} users ({} excluded), {} queries{}, {}: {}; oracle {:.2}% (held-out {:.2}%)",
                first.map(|r| r.users).unwrap_or(0),
                first.map(|r| r.skipped_users).unwrap_or(0),
                first.map(|r| r.n).unwrap_or(0),
                if self.queries_by.is_pair() {
                    ""
                } else {
                    " by item"
                },
                first.map(|r| r.estimator.name()).unwrap_or("map"),
                parts.join(", "),
                100.0 * first.map(|r| r.oracle_accuracy).unwrap_or(f64::NAN),
                100.0 * first.map(|r| r.heldout_oracle_accuracy).unwrap_or(f64::NAN)
            );
            if let Some(s) = first.and_then(|r| r.seen_accuracy) {
                msg.push_str(&format!("; seen {:.2}%", 100.0 * s));
            }
            Ok(msg)
        })
    }
}
