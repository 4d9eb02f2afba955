//! Store glue for the image path's stages: `pickapic` (streaming ingest), `dedup` (the
//! leakage split) and `pick_a_filter`. The decisions live in `crate::ingest::pickapic` and
//! `crate::transform`; this file reads their inputs from the store and writes their output.

use std::collections::{BTreeMap, HashMap};

use super::stages::StageCtx;
use crate::ingest::common::IngestError;
use crate::ingest::pickapic;
use crate::store::records::{content_id, pair_id, IngestBatch, ItemRow, PairRow, UserRow};
use crate::store::{batches, sql_list, sql_str, StagedWriter, Store};
use crate::transform::{dedup, pick_a_filter};

/// The `pickapic` stage: shards are read on a blocking thread and handed over in chunks
/// (one in flight while the previous one is written), so memory stays at a few chunks
/// whatever the dataset size.
pub async fn ingest_pickapic(p: &pickapic::Params, ctx: &StageCtx<'_>) -> anyhow::Result<String> {
    let total = pickapic::count_rows(p)?;
    let bar = ctx.printer.bar(total, "rows");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<IngestBatch>(1);
    let params = p.clone();
    let reader_bar = bar.clone();
    let reader = tokio::task::spawn_blocking(move || {
        pickapic::read(
            &params,
            |chunk| {
                tx.blocking_send(chunk)
                    .map_err(|_| IngestError::Stopped("the store writer stopped".into()))
            },
            |n| reader_bar.set_position(n),
        )
    });
    // The stage owns its dataset's pairs and users: one commit per table once all is read.
    let mut writer = StagedWriter::owning_dataset(ctx.store, &p.dataset).await?;
    let mut write_error = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = writer.write(&chunk).await {
            write_error = Some(e);
            break;
        }
    }
    drop(rx);
    let read = reader.await?;
    bar.finish_and_clear();
    // On an error the writer is dropped uncommitted: the store keeps its previous rows.
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let report = read?;
    let stats = writer.commit().await?;
    for (tag, c) in &report {
        for (ranking, why) in &c.bad_examples {
            ctx.printer
                .warn(format!("{tag}: ranking_id {ranking} skipped: {why}"));
        }
    }
    Ok(format!(
        "{}; {}",
        pickapic::summarise(&report),
        super::stages::write_summary(stats.iter().map(|(t, s)| (t.as_str(), s)))
    ))
}

async fn dataset_pairs(store: &Store, dataset: &str) -> anyhow::Result<Vec<PairRow>> {
    let mut out = Vec::new();
    let filter = format!("dataset = {}", sql_str(dataset));
    for b in store.read("pairs", &[], Some(&filter)).await? {
        out.extend(batches::read_pairs(&b)?);
    }
    // Lance returns rows in storage order, which a rewrite changes: sort for a stable result.
    out.sort_by(|a, b| a.pair_id.cmp(&b.pair_id));
    Ok(out)
}

/// The `dedup` stage: tags each target pair leaked or not, rewriting only the target split.
pub async fn dedup(p: &dedup::Params, ctx: &StageCtx<'_>) -> anyhow::Result<String> {
    p.check().map_err(anyhow::Error::msg)?;
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

/// The `pick_a_filter` stage.
pub async fn pick_a_filter(
    p: &pick_a_filter::Params,
    ctx: &StageCtx<'_>,
) -> anyhow::Result<String> {
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
        super::stages::write_summary(stats.iter().map(|(t, s)| (t.as_str(), s)))
    ))
}
