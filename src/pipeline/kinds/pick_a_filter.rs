//! The `pick_a_filter` kind: Pick-a-Filter (PAL App. D.6; `crate::transform::pick_a_filter`
//! decides). Reads the source dataset's train and test pairs and their images, writes the
//! colour-filtered images (shared, content-addressed `items`) and owns its own dataset's
//! pairs and users.

use std::collections::{BTreeMap, HashMap};

use super::{
    dataset_pairs, write_summary, KindInfo, ParamIssue, ReadScope, RunFuture, Scope, StageCtx,
    StageKind,
};
use crate::store::records::{content_id, pair_id, IngestBatch, ItemRow, PairRow, UserRow};
use crate::store::{sql_str, StagedWriter};
use crate::transform::pick_a_filter::{self, Params};

/// The registry entry.
pub const KIND: KindInfo = KindInfo::of::<Params>(
    "pick_a_filter",
    "Pick-a-Filter (PAL App. D.6): two user groups made by colour filters",
    "source_dataset: pickapic\ndataset: pick-a-filter\ntrain: v1-train\ntest: v1-test\nmin_labels: 50\nseen_users: 12\nbeta: 0.5\nfilters:\n  - {name: cool, tint: [0, 60, 255], strength: 0.4}\n  - {name: warm, tint: [255, 60, 0], strength: 0.4}\nval_frac: 0.1\nseed: 0\n",
);

impl StageKind for Params {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn read_scopes(&self) -> Vec<ReadScope> {
        vec![ReadScope {
            table: "pairs",
            predicate: format!(
                "dataset = {} AND split IN ({}, {})",
                sql_str(&self.source_dataset),
                sql_str(&self.train),
                sql_str(&self.test)
            ),
            columns: &["pair_id", "split"],
        }]
    }

    fn owns(&self, _stage_name: &str) -> Vec<Scope> {
        vec![Scope::Dataset(self.dataset.clone())]
    }

    fn describe(&self) -> String {
        format!(
            "Pick-a-Filter from '{}', beta {}, filters {} / {}",
            self.source_dataset,
            self.beta,
            self.filters.first().map_or("?", |f| f.name.as_str()),
            self.filters.get(1).map_or("?", |f| f.name.as_str())
        )
    }

    fn check(&self) -> Result<(), ParamIssue> {
        Params::check(self)
    }

    fn run<'a>(&'a self, ctx: &'a StageCtx<'a>) -> RunFuture<'a> {
        Box::pin(filter(self, ctx))
    }
}

/// The `pick_a_filter` stage.
async fn filter(p: &Params, ctx: &StageCtx<'_>) -> anyhow::Result<String> {
    let source = dataset_pairs(ctx.store, &p.source_dataset).await?;
    if source.is_empty() {
        anyhow::bail!(
            "no pairs of dataset '{}' in the store\nhint: run a 'pickapic' stage first",
            p.source_dataset
        );
    }
    let plan = pick_a_filter::plan(&source, p).map_err(anyhow::Error::msg)?;
    let jobs = plan.jobs(&source);
    // The stage owns its dataset's pairs and users; filtered images are shared content.
    let mut writer = StagedWriter::owning_dataset(ctx.store, &p.dataset).await?;

    // The filtered images, written a few hundred at a time.
    let bar = ctx.printer.bar(jobs.len() as u64, "filtering");
    let mut made: HashMap<(String, usize), String> = HashMap::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut by_item: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (item, f) in &jobs {
        by_item.entry(item.clone()).or_default().push(*f);
    }
    let items: Vec<String> = by_item.keys().cloned().collect();
    for chunk in items.chunks(256) {
        let mut rows: Vec<ItemRow> = Vec::new();
        for (id, bytes) in ctx.store.item_bytes(chunk).await? {
            for &f in &by_item[&id] {
                let filter = &p.filters[f];
                match bytes.as_deref().map(|b| filter.apply_to_bytes(b)) {
                    Some(Ok(out)) => {
                        let new_id = content_id(&out);
                        made.insert((id.clone(), f), new_id.clone());
                        rows.push(ItemRow {
                            item_id: new_id,
                            kind: "image".into(),
                            text: None,
                            bytes: Some(out),
                            source: format!("{}/{}", p.dataset, filter.name),
                            parent_id: Some(id.clone()),
                        });
                    }
                    Some(Err(e)) => failed.push((id.clone(), e.to_string())),
                    None => failed.push((id.clone(), "no such item, or it has no bytes".into())),
                }
                bar.inc(1);
            }
        }
        writer
            .write(&IngestBatch {
                items: rows,
                ..Default::default()
            })
            .await?;
    }
    bar.finish_and_clear();

    // Users and pairs.
    let mut out = IngestBatch::default();
    for u in &plan.users {
        out.users.push(UserRow {
            user_id: p.user_id(&u.source_id),
            dataset: p.dataset.clone(),
            group: Some(format!("G{}-{}", u.group + 1, p.filters[u.group].name)),
            role: if u.seen { "seen" } else { "unseen" }.into(),
        });
    }
    let mut skipped = 0;
    let (mut winners, mut losers) = (0, 0);
    for planned in &plan.pairs {
        let src = &source[planned.source];
        let (mut left, mut right) = (src.left_id.clone(), src.right_id.clone());
        if let Some((item, f)) = pick_a_filter::filtered_item(src, planned.change) {
            let Some(new_id) = made.get(&(item.to_string(), f)) else {
                skipped += 1;
                continue;
            };
            if left == item {
                left = new_id.clone();
            } else {
                right = new_id.clone();
            }
            match planned.change {
                pick_a_filter::Change::Winner(_) => winners += 1,
                _ => losers += 1,
            }
        }
        let user = p.user_id(&src.user_id);
        out.pairs.push(PairRow {
            pair_id: pair_id(
                &user,
                src.prompt_id.as_deref(),
                &left,
                &right,
                &format!("pick-a-filter:{}", src.pair_id),
            ),
            user_id: user,
            prompt_id: src.prompt_id.clone(),
            left_id: left,
            right_id: right,
            label: src.label,
            dataset: p.dataset.clone(),
            split: planned.split.to_string(),
            source_ref: Some(src.pair_id.clone()),
            weight: src.weight,
        });
    }
    for (id, why) in failed.iter().take(5) {
        ctx.printer
            .warn(format!("pick_a_filter: item {id} not filtered: {why}"));
    }
    writer.write(&out).await?;
    let stats = writer.commit().await?;
    let seen = plan.users.iter().filter(|u| u.seen).count();
    let g1 = plan.users.iter().filter(|u| u.group == 0).count();
    let splits: Vec<String> = plan
        .split_counts()
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    Ok(format!(
        "{} users (G1 {} {}, G2 {} {}; {} seen, {} unseen; {} had both splits but too few labels); pairs: {}; filtered winners {}, losers {}{}; {}",
        plan.users.len(),
        p.filters[0].name,
        g1,
        p.filters[1].name,
        plan.users.len() - g1,
        seen,
        plan.users.len() - seen,
        plan.too_few_labels,
        splits.join(", "),
        winners,
        losers,
        if skipped > 0 {
            format!(", {skipped} pairs skipped (an image could not be filtered)")
        } else {
            String::new()
        },
        write_summary(stats.iter().map(|(t, s)| (t.as_str(), s)))
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_names_the_key_at_fault() {
        let v: serde_yaml::Value = serde_yaml::from_str(super::KIND.example).unwrap();
        let p: super::Params = serde_yaml::from_value(v).unwrap();
        for (edit, key) in [
            ("beta", "beta"),
            ("val_frac", "val_frac"),
            ("filters", "filters"),
            ("seen_users", "seen_users"),
            ("train", "train"),
            ("dataset", "dataset"),
        ] {
            let mut q = p.clone();
            match edit {
                "beta" => q.beta = 1.5,
                "val_frac" => q.val_frac = 1.0,
                "filters" => q.filters.truncate(1),
                "seen_users" => q.seen_users = 0,
                "dataset" => q.dataset = q.source_dataset.clone(),
                _ => q.test = q.train.clone(),
            }
            assert_eq!(q.check().unwrap_err().key, key);
        }
    }
}
