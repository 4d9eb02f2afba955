//! The `dedup` kind: the Pick-a-Pic leakage split (`crate::transform::dedup` decides).
//! Reads its dataset's pairs and re-tags the target split's pairs leaked or clean, rewriting
//! only those rows: it owns the target's split tags.

use super::{
    dataset_pairs, KindInfo, ParamIssue, ReadScope, RunFuture, Scope, StageCtx, StageKind,
};
use crate::store::records::PairRow;
use crate::store::{batches, sql_list, sql_str};
use crate::transform::dedup::{self, Params};

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<Params>(
    "dedup",
    "the leakage split: target pairs seen in a reference split are tagged leaked",
    "dataset: pickapic\nreference: [v1-train, v1-validation]\ntarget: v2-test\nleak_tag: v2-leakage\nclean_tag: v2-no-leakage\n",
);

impl StageKind for Params {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn read_scopes(&self) -> Vec<ReadScope> {
        // It reads part of `pairs` and writes other rows of it: its content, not the
        // table's version, enters the fingerprint.
        vec![ReadScope {
            table: "pairs",
            predicate: format!("dataset = {}", sql_str(&self.dataset)),
            columns: &["pair_id", "split"],
        }]
    }

    fn owns(&self, _stage_name: &str) -> Vec<Scope> {
        vec![Scope::SplitTags {
            dataset: self.dataset.clone(),
            tags: self.target_tags().iter().map(|t| t.to_string()).collect(),
        }]
    }

    fn describe(&self) -> String {
        format!(
            "split '{}' of '{}' by content seen in {:?}",
            self.target, self.dataset, self.reference
        )
    }

    fn check(&self) -> Result<(), ParamIssue> {
        Params::check(self)
    }

    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        Box::pin(retag(self, ctx))
    }
}

/// The `dedup` stage: tags each target pair leaked or not, rewriting only the target split.
async fn retag(p: &Params, ctx: &StageCtx<'_>) -> anyhow::Result<String> {
    p.check()?;
    let mut pairs = dataset_pairs(ctx.store, &p.dataset).await?;
    let tags = p.target_tags();
    if !pairs.iter().any(|r| tags.contains(&r.split.as_str())) {
        anyhow::bail!(
            "dataset '{}' has no pairs in split '{}' (nor '{}' / '{}')",
            p.dataset,
            p.target,
            p.leak_tag,
            p.clean_tag
        );
    }
    let outcome = dedup::split(&pairs, p);
    if !outcome.retag.is_empty() {
        for (i, tag) in &outcome.retag {
            pairs[*i].split = tag.clone();
        }
        let target: Vec<PairRow> = pairs
            .into_iter()
            .filter(|r| tags.contains(&r.split.as_str()))
            .collect();
        let predicate = format!(
            "dataset = {} AND split IN ({})",
            sql_str(&p.dataset),
            sql_list(&tags)
        );
        ctx.store
            .replace_where("pairs", &predicate, batches::pairs(&target)?)
            .await?;
    }
    let dups: Vec<String> = outcome
        .duplicates
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    Ok(format!(
        "{}: {} {}, {} {} ({} retagged); exact duplicates within a split: {}",
        p.target,
        p.leak_tag,
        outcome.leak,
        p.clean_tag,
        outcome.clean,
        outcome.retag.len(),
        dups.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_names_the_key_at_fault() {
        let p = super::Params {
            reference: vec!["v2-test".into()],
            ..Default::default()
        };
        assert_eq!(p.check().unwrap_err().key, "reference");
        let mut p = super::Params::default();
        p.clean_tag = p.leak_tag.clone();
        assert_eq!(p.check().unwrap_err().key, "clean_tag");
    }
}
