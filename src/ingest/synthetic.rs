//! `synthetic`: the ideal-point simulation of PAL App. C.2 / D.2, generated from a seed.
//!
//! The model of the world, in the paper's names:
//! - K* prototypes p_k ~ N(0, I/d), redrawn as a set until every pairwise distance is ≥ δ
//!   (at most [`MAX_PROTOTYPE_ATTEMPTS`] draws, then [`IngestError::Prototypes`]);
//! - a pool of `items` items x ~ N(0, I/d), stored as f32;
//! - a true linear map f*: R^d → R^d with N(0, 1/d) entries;
//! - user i's ideal point a_i: one prototype (`partition`; users spread evenly, user u on
//!   prototype u mod K*, unseen users likewise) or Σ_k w_k p_k with w = softmax(N(0, I) logits)
//!   (`mixture`; the user's group is the prototype with the largest weight);
//! - a comparison is two distinct pool items (each unordered pair at most once per user); the
//!   user prefers the one whose image f*(x) is closer to f*(a_i), distances computed in f64 from
//!   the stored f32 item vectors (an exact tie, probability zero, goes to the first drawn).
//!
//! Output: items of kind "vector" (`bytes` = the f32 little-endian vector, id = its blake3),
//! the same vectors as embeddings under encoder id [`ENCODER_ID`], no prompts, one user row per
//! user (`group` "proto{k}"), and pairs. A seen user's first `held_out_per_user` comparisons are
//! "test", the next `val_per_user` are "val", the rest "train" (comparisons are i.i.d., so
//! position is a fair split); every comparison of the `unseen_users` is "unseen". Only items
//! some comparison uses are emitted. [`generate`] also returns the hidden truth (prototypes, f*,
//! ideal points) for tests and oracle baselines; the pipeline calls [`ingest`].
//!
//! Shared helpers (errors, seeded streams, side draws) are in `common.rs`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use rand::Rng;
use rand_distr::{Distribution, Normal, StandardNormal};
use serde::{Deserialize, Serialize};

use super::common::{
    check_dataset, orient, rng_for, IngestError, ROLE_SEEN, ROLE_UNSEEN, SPLIT_TEST, SPLIT_TRAIN,
    SPLIT_UNSEEN, SPLIT_VAL,
};
use crate::store::records::{
    content_id, pair_id, EmbeddingRow, IngestBatch, ItemRow, PairRow, UserRow,
};

/// The encoder id of the synthetic item vectors: the identity map.
pub const ENCODER_ID: &str = "synthetic-identity";

/// How many prototype sets are drawn before giving up on the distance constraint.
pub const MAX_PROTOTYPE_ATTEMPTS: usize = 100_000;

/// Where users' ideal points sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Setting {
    /// Each user sits on one prototype (the default).
    #[default]
    Partition,
    /// Each user sits in the prototypes' convex hull, w = softmax(N(0, I) logits).
    Mixture,
}

/// Parameters of a `synthetic` stage. Defaults are the paper's (App. D.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// `partition` (default) or `mixture`.
    #[serde(default)]
    pub setting: Setting,
    /// Dimension of items, prototypes and f*. Default 16.
    #[serde(default = "default_d")]
    pub d: usize,
    /// Number of true prototypes K*. Default 3.
    #[serde(default = "default_k_star")]
    pub k_star: usize,
    /// Seen users. Default 100.
    #[serde(default = "default_users")]
    pub users: usize,
    /// Comparisons per user, seen or unseen. Default 100.
    #[serde(default = "default_comparisons_per_user")]
    pub comparisons_per_user: usize,
    /// Of a seen user's comparisons, how many are "test". Default 50.
    #[serde(default = "default_held_out_per_user")]
    pub held_out_per_user: usize,
    /// Of a seen user's other comparisons, how many are "val". Default 10.
    #[serde(default = "default_val_per_user")]
    pub val_per_user: usize,
    /// Users held out for few-shot adaptation, all their comparisons "unseen". Default 20.
    #[serde(default = "default_unseen_users")]
    pub unseen_users: usize,
    /// Size of the item pool comparisons draw from. Default 1000.
    #[serde(default = "default_items")]
    pub items: usize,
    /// Minimum pairwise distance between prototypes. Default 1.0.
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Seed of every random draw. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// The `dataset` column and user-id prefix; give two synthetic stages in one store
    /// different names. Default "synthetic".
    #[serde(default = "default_dataset")]
    pub dataset: String,
}

fn default_d() -> usize {
    16
}
fn default_k_star() -> usize {
    3
}
fn default_users() -> usize {
    100
}
fn default_comparisons_per_user() -> usize {
    100
}
fn default_held_out_per_user() -> usize {
    50
}
fn default_val_per_user() -> usize {
    10
}
fn default_unseen_users() -> usize {
    20
}
fn default_items() -> usize {
    1000
}
fn default_delta() -> f64 {
    1.0
}
fn default_dataset() -> String {
    "synthetic".to_string()
}

impl Default for Params {
    fn default() -> Self {
        Params {
            setting: Setting::default(),
            d: default_d(),
            k_star: default_k_star(),
            users: default_users(),
            comparisons_per_user: default_comparisons_per_user(),
            held_out_per_user: default_held_out_per_user(),
            val_per_user: default_val_per_user(),
            unseen_users: default_unseen_users(),
            items: default_items(),
            delta: default_delta(),
            seed: 0,
            dataset: default_dataset(),
        }
    }
}

/// The hidden truth behind a generated dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    /// K* prototypes, each of length d.
    pub prototypes: Vec<Vec<f64>>,
    /// f* as d rows of d: f*(x)_r = Σ_c f_star[r][c] · x_c.
    pub f_star: Vec<Vec<f64>>,
    /// Every user, seen then unseen, in user-id order.
    pub users: Vec<TrueUser>,
}

/// One synthetic user's place in the world.
#[derive(Debug, Clone, PartialEq)]
pub struct TrueUser {
    pub user_id: String,
    /// Mixture weights over the prototypes (one-hot in the partition setting).
    pub weights: Vec<f64>,
    /// a_i = Σ_k w_k p_k.
    pub ideal_point: Vec<f64>,
}

/// A synthetic stage reads no files.
pub fn input_files(_params: &Params) -> Vec<PathBuf> {
    Vec::new()
}

/// Generates the dataset (what the pipeline calls).
pub fn ingest(params: &Params) -> Result<IngestBatch, IngestError> {
    generate(params).map(|(batch, _)| batch)
}

fn validate(p: &Params) -> Result<(), IngestError> {
    if p.d == 0 {
        return Err(IngestError::bad_param("d", p.d, "at least 1"));
    }
    if p.k_star == 0 {
        return Err(IngestError::bad_param("k_star", p.k_star, "at least 1"));
    }
    if p.users == 0 {
        return Err(IngestError::bad_param("users", p.users, "at least 1"));
    }
    if p.items < 2 {
        return Err(IngestError::bad_param(
            "items",
            p.items,
            "at least 2, so a comparison has two items",
        ));
    }
    let distinct_pairs = p.items.saturating_mul(p.items - 1) / 2;
    if p.comparisons_per_user == 0 || p.comparisons_per_user > distinct_pairs {
        return Err(IngestError::bad_param(
            "comparisons_per_user",
            p.comparisons_per_user,
            &format!(
                "between 1 and {distinct_pairs}, the distinct pairs of {} items",
                p.items
            ),
        ));
    }
    if p.held_out_per_user + p.val_per_user >= p.comparisons_per_user {
        return Err(IngestError::bad_param(
            "held_out_per_user + val_per_user",
            p.held_out_per_user + p.val_per_user,
            &format!(
                "fewer than comparisons_per_user ({}), so seen users keep train comparisons",
                p.comparisons_per_user
            ),
        ));
    }
    if !p.delta.is_finite() || p.delta < 0.0 {
        return Err(IngestError::bad_param(
            "delta",
            p.delta,
            "a finite distance >= 0",
        ));
    }
    check_dataset(&p.dataset)
}

/// Draws the K* prototypes: whole sets from N(0, I/d) until all pairwise distances are ≥ δ.
fn draw_prototypes(p: &Params) -> Result<Vec<Vec<f64>>, IngestError> {
    let mut rng = rng_for(p.seed, "prototypes");
    let normal =
        Normal::new(0.0, (1.0 / p.d as f64).sqrt()).expect("a positive standard deviation");
    for _ in 0..MAX_PROTOTYPE_ATTEMPTS {
        let protos: Vec<Vec<f64>> = (0..p.k_star)
            .map(|_| (0..p.d).map(|_| normal.sample(&mut rng)).collect())
            .collect();
        let separated = (0..p.k_star)
            .all(|a| (a + 1..p.k_star).all(|b| distance(&protos[a], &protos[b]) >= p.delta));
        if separated {
            return Ok(protos);
        }
    }
    Err(IngestError::Prototypes {
        k_star: p.k_star,
        delta: p.delta,
        attempts: MAX_PROTOTYPE_ATTEMPTS,
    })
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// y = F x for F given as rows.
fn apply(f: &[Vec<f64>], x: &[f64]) -> Vec<f64> {
    f.iter()
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

/// The f32 little-endian bytes of a vector: the stored content of a "vector" item.
pub fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The unordered pair (i < j) at position `k` of the lexicographic list of pairs of `n` items.
fn pair_at(k: usize, n: usize) -> (usize, usize) {
    // offset(i) = number of pairs whose first index is below i.
    let offset = |i: usize| i * n - i * (i + 1) / 2;
    let (mut lo, mut hi) = (0usize, n - 1); // the answer i lies in [lo, hi)
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if offset(mid) <= k {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo, k - offset(lo) + lo + 1)
}

/// Generates the dataset and returns the truth behind it.
pub fn generate(p: &Params) -> Result<(IngestBatch, Truth), IngestError> {
    validate(p)?;
    let prototypes = draw_prototypes(p)?;
    let normal =
        Normal::new(0.0, (1.0 / p.d as f64).sqrt()).expect("a positive standard deviation");

    let mut rng = rng_for(p.seed, "f_star");
    let f_star: Vec<Vec<f64>> = (0..p.d)
        .map(|_| (0..p.d).map(|_| normal.sample(&mut rng)).collect())
        .collect();

    let mut rng = rng_for(p.seed, "items");
    let pool: Vec<Vec<f32>> = (0..p.items)
        .map(|_| (0..p.d).map(|_| normal.sample(&mut rng) as f32).collect())
        .collect();
    let images: Vec<Vec<f64>> = pool
        .iter()
        .map(|x| apply(&f_star, &x.iter().map(|&v| v as f64).collect::<Vec<_>>()))
        .collect();
    let ids: Vec<String> = pool.iter().map(|x| content_id(&vector_bytes(x))).collect();

    let n_pairs = p.items * (p.items - 1) / 2;
    let mut batch = IngestBatch::default();
    let mut truth_users = Vec::new();
    let mut used = BTreeSet::new();
    let mut used_order = Vec::new();
    let total = p.users + p.unseen_users;
    for u in 0..total {
        let seen = u < p.users;
        let user_id = format!("{}/u{:04}", p.dataset, u);
        let mut rng = rng_for(p.seed, &format!("user:{user_id}"));
        let weights: Vec<f64> = match p.setting {
            Setting::Partition => {
                let k = (if seen { u } else { u - p.users }) % p.k_star;
                (0..p.k_star)
                    .map(|j| if j == k { 1.0 } else { 0.0 })
                    .collect()
            }
            Setting::Mixture => {
                let logits: Vec<f64> = (0..p.k_star)
                    .map(|_| StandardNormal.sample(&mut rng))
                    .collect();
                softmax(&logits)
            }
        };
        let group = argmax(&weights);
        let ideal_point: Vec<f64> = (0..p.d)
            .map(|c| (0..p.k_star).map(|k| weights[k] * prototypes[k][c]).sum())
            .collect();
        let target = apply(&f_star, &ideal_point);

        let picks = rand::seq::index::sample(&mut rng, n_pairs, p.comparisons_per_user);
        for (rank, k) in picks.into_iter().enumerate() {
            let (i, j) = pair_at(k, p.items);
            // Draw order within the pair, then the user's preference.
            let (first, second) = if rng.random_bool(0.5) { (i, j) } else { (j, i) };
            let (pref, other) =
                if distance(&images[second], &target) < distance(&images[first], &target) {
                    (second, first)
                } else {
                    (first, second)
                };
            let (left, right, label) = orient(&ids[pref], &ids[other], &mut rng);
            let split = if !seen {
                SPLIT_UNSEEN
            } else if rank < p.held_out_per_user {
                SPLIT_TEST
            } else if rank < p.held_out_per_user + p.val_per_user {
                SPLIT_VAL
            } else {
                SPLIT_TRAIN
            };
            for idx in [pref, other] {
                if used.insert(idx) {
                    used_order.push(idx);
                }
            }
            batch.pairs.push(PairRow {
                pair_id: pair_id(&user_id, None, left, right, &label.to_string()),
                user_id: user_id.clone(),
                prompt_id: None,
                left_id: left.to_string(),
                right_id: right.to_string(),
                label,
                dataset: p.dataset.clone(),
                split: split.to_string(),
                source_ref: Some(format!("item{pref}>item{other}")),
                weight: 1.0,
            });
        }
        batch.users.push(UserRow {
            user_id: user_id.clone(),
            dataset: p.dataset.clone(),
            group: Some(format!("proto{group}")),
            role: if seen { ROLE_SEEN } else { ROLE_UNSEEN }.to_string(),
        });
        truth_users.push(TrueUser {
            user_id,
            weights,
            ideal_point,
        });
    }
    for idx in used_order {
        batch.items.push(ItemRow {
            item_id: ids[idx].clone(),
            kind: "vector".to_string(),
            text: None,
            bytes: Some(vector_bytes(&pool[idx])),
            source: p.dataset.clone(),
            parent_id: None,
        });
        batch.embeddings.push(EmbeddingRow {
            content_id: ids[idx].clone(),
            encoder_id: ENCODER_ID.to_string(),
            vector: pool[idx].clone(),
        });
    }
    Ok((
        batch,
        Truth {
            prototypes,
            f_star,
            users: truth_users,
        },
    ))
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn argmax(w: &[f64]) -> usize {
    let mut best = 0;
    for (k, &v) in w.iter().enumerate() {
        if v > w[best] {
            best = k;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap, HashSet};

    fn small(setting: Setting, seed: u64) -> Params {
        Params {
            setting,
            users: 30,
            unseen_users: 6,
            items: 200,
            seed,
            ..Params::default()
        }
    }

    fn decode(bytes: &[u8]) -> Vec<f64> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect()
    }

    /// The user's true preference, computed here from scratch: squared distance of f*(x) to
    /// f*(a) for both items.
    fn truth_label(truth: &Truth, a: &[f64], left: &[f64], right: &[f64]) -> i8 {
        let d = truth.f_star.len();
        let mut dl = 0.0;
        let mut dr = 0.0;
        for r in 0..d {
            let mut fa = 0.0;
            let mut fl = 0.0;
            let mut fr = 0.0;
            for c in 0..d {
                fa += truth.f_star[r][c] * a[c];
                fl += truth.f_star[r][c] * left[c];
                fr += truth.f_star[r][c] * right[c];
            }
            dl += (fl - fa).powi(2);
            dr += (fr - fa).powi(2);
        }
        if dl < dr {
            -1
        } else {
            1
        }
    }

    #[test]
    fn pair_at_enumerates_every_pair_once() {
        for n in 2..12 {
            let all: Vec<(usize, usize)> = (0..n * (n - 1) / 2).map(|k| pair_at(k, n)).collect();
            let expect: Vec<(usize, usize)> = (0..n)
                .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                .collect();
            assert_eq!(all, expect, "n={n}");
        }
    }

    #[test]
    fn counts_splits_and_roles() {
        let p = small(Setting::Partition, 7);
        let batch = ingest(&p).unwrap();
        assert_eq!(batch.users.len(), 36);
        assert_eq!(batch.pairs.len(), 36 * 100);
        let mut per_user: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
        for pair in &batch.pairs {
            *per_user
                .entry(&pair.user_id)
                .or_default()
                .entry(&pair.split)
                .or_default() += 1;
            assert!(pair.prompt_id.is_none());
            assert_eq!(pair.dataset, "synthetic");
        }
        let roles: HashMap<&str, &str> = batch
            .users
            .iter()
            .map(|u| (u.user_id.as_str(), u.role.as_str()))
            .collect();
        for (user, splits) in &per_user {
            if roles[user] == "seen" {
                assert_eq!(splits.get("test"), Some(&50), "{user}");
                assert_eq!(splits.get("val"), Some(&10), "{user}");
                assert_eq!(splits.get("train"), Some(&40), "{user}");
            } else {
                assert_eq!(roles[user], "unseen");
                assert_eq!(splits.get("unseen"), Some(&100), "{user}");
                assert_eq!(splits.len(), 1);
            }
        }
        assert_eq!(roles.values().filter(|r| **r == "unseen").count(), 6);
        // Partition: users spread evenly over the prototypes.
        let mut groups: BTreeMap<&str, usize> = BTreeMap::new();
        for u in batch.users.iter().filter(|u| u.role == "seen") {
            *groups.entry(u.group.as_deref().unwrap()).or_default() += 1;
        }
        assert_eq!(
            groups.values().copied().collect::<Vec<_>>(),
            vec![10, 10, 10]
        );
        // Pair ids unique; user ids unique.
        assert_eq!(
            batch
                .pairs
                .iter()
                .map(|p| &p.pair_id)
                .collect::<HashSet<_>>()
                .len(),
            batch.pairs.len()
        );
        assert_eq!(
            batch
                .users
                .iter()
                .map(|u| &u.user_id)
                .collect::<HashSet<_>>()
                .len(),
            36
        );
    }

    #[test]
    fn items_and_embeddings_are_content_addressed_vectors() {
        let batch = ingest(&small(Setting::Mixture, 3)).unwrap();
        let items: HashMap<&str, &ItemRow> = batch
            .items
            .iter()
            .map(|i| (i.item_id.as_str(), i))
            .collect();
        assert_eq!(items.len(), batch.items.len(), "items are emitted once");
        assert_eq!(batch.embeddings.len(), batch.items.len());
        for e in &batch.embeddings {
            let item = items[e.content_id.as_str()];
            assert_eq!(e.encoder_id, "synthetic-identity");
            assert_eq!(e.vector.len(), 16);
            let bytes = item.bytes.as_ref().unwrap();
            assert_eq!(blake3::hash(bytes).to_hex().to_string(), item.item_id);
            assert_eq!(
                decode(bytes),
                e.vector.iter().map(|&v| v as f64).collect::<Vec<_>>()
            );
            assert_eq!(item.kind, "vector");
        }
        for pair in &batch.pairs {
            assert!(
                items.contains_key(pair.left_id.as_str())
                    && items.contains_key(pair.right_id.as_str())
            );
            assert_ne!(pair.left_id, pair.right_id);
        }
        // Item variance is about 1/d per coordinate.
        let all: Vec<f32> = batch
            .embeddings
            .iter()
            .flat_map(|e| e.vector.clone())
            .collect();
        let var = all.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / all.len() as f64;
        assert!((var - 1.0 / 16.0).abs() < 0.01, "{var}");
    }

    #[test]
    fn labels_are_balanced() {
        for setting in [Setting::Partition, Setting::Mixture] {
            let batch = ingest(&small(setting, 11)).unwrap();
            let left = batch.pairs.iter().filter(|p| p.label == -1).count() as f64
                / batch.pairs.len() as f64;
            assert!((0.47..0.53).contains(&left), "{setting:?}: {left}");
            assert!(batch.pairs.iter().all(|p| p.label == -1 || p.label == 1));
        }
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let a = ingest(&small(Setting::Mixture, 5)).unwrap();
        let b = ingest(&small(Setting::Mixture, 5)).unwrap();
        let c = ingest(&small(Setting::Mixture, 6)).unwrap();
        assert_eq!(a.pairs, b.pairs);
        assert_eq!(a.items, b.items);
        assert_eq!(a.users, b.users);
        assert_ne!(a.pairs, c.pairs);
    }

    #[test]
    fn true_prototype_reproduces_every_label() {
        let p = small(Setting::Partition, 21);
        let (batch, truth) = generate(&p).unwrap();
        let vectors: HashMap<&str, Vec<f64>> = batch
            .items
            .iter()
            .map(|i| (i.item_id.as_str(), decode(i.bytes.as_ref().unwrap())))
            .collect();
        let groups: HashMap<&str, usize> = batch
            .users
            .iter()
            .map(|u| {
                (
                    u.user_id.as_str(),
                    u.group.as_ref().unwrap()["proto".len()..].parse().unwrap(),
                )
            })
            .collect();
        // Prototypes are separated by delta.
        for a in 0..3 {
            for b in a + 1..3 {
                let d: f64 = truth.prototypes[a]
                    .iter()
                    .zip(&truth.prototypes[b])
                    .map(|(x, y)| (x - y).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!(d >= 1.0);
            }
        }
        for pair in &batch.pairs {
            let proto = &truth.prototypes[groups[pair.user_id.as_str()]];
            let want = truth_label(
                &truth,
                proto,
                &vectors[pair.left_id.as_str()],
                &vectors[pair.right_id.as_str()],
            );
            assert_eq!(pair.label, want, "{}", pair.pair_id);
        }
    }

    #[test]
    fn mixture_ideal_points_reproduce_labels_and_prototypes_do_not() {
        let p = small(Setting::Mixture, 4);
        let (batch, truth) = generate(&p).unwrap();
        let vectors: HashMap<&str, Vec<f64>> = batch
            .items
            .iter()
            .map(|i| (i.item_id.as_str(), decode(i.bytes.as_ref().unwrap())))
            .collect();
        let users: HashMap<&str, &TrueUser> = truth
            .users
            .iter()
            .map(|u| (u.user_id.as_str(), u))
            .collect();
        let mut agree_dominant = 0;
        for pair in &batch.pairs {
            let tu = users[pair.user_id.as_str()];
            let sum: f64 = tu.weights.iter().sum();
            assert!((sum - 1.0).abs() < 1e-9);
            let l = &vectors[pair.left_id.as_str()];
            let r = &vectors[pair.right_id.as_str()];
            assert_eq!(pair.label, truth_label(&truth, &tu.ideal_point, l, r));
            let k = argmax(&tu.weights);
            if truth_label(&truth, &truth.prototypes[k], l, r) == pair.label {
                agree_dominant += 1;
            }
        }
        // The dominant prototype explains most but not all labels of a mixture user.
        let frac = agree_dominant as f64 / batch.pairs.len() as f64;
        assert!(frac > 0.6 && frac < 0.99, "{frac}");
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases: Vec<(Params, &str)> = vec![
            (
                Params {
                    d: 0,
                    ..Params::default()
                },
                "'d'",
            ),
            (
                Params {
                    held_out_per_user: 95,
                    ..Params::default()
                },
                "held_out_per_user + val_per_user",
            ),
            (
                Params {
                    items: 1,
                    ..Params::default()
                },
                "'items'",
            ),
            (
                Params {
                    items: 10,
                    ..Params::default()
                },
                "comparisons_per_user",
            ),
            (
                Params {
                    delta: -1.0,
                    ..Params::default()
                },
                "'delta'",
            ),
        ];
        for (p, needle) in cases {
            let err = ingest(&p).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let err = ingest(&Params {
            d: 2,
            k_star: 40,
            delta: 3.0,
            users: 3,
            ..Params::default()
        })
        .unwrap_err();
        assert!(matches!(err, IngestError::Prototypes { .. }), "{err}");
        assert!(err.to_string().contains("hint:"));
    }

    #[test]
    fn params_round_trip_through_yaml_with_defaults() {
        let p: Params = serde_yaml::from_str("setting: mixture\nd: 2\nseed: 9\n").unwrap();
        assert_eq!(
            p,
            Params {
                setting: Setting::Mixture,
                d: 2,
                seed: 9,
                ..Params::default()
            }
        );
        let back: Params = serde_yaml::from_str(&serde_yaml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let empty: Params = serde_yaml::from_str("{}").unwrap();
        assert_eq!(empty, Params::default());
        let err = serde_yaml::from_str::<Params>("dims: 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dims"), "{err}");
        assert!(serde_yaml::from_str::<Params>("setting: blend\n").is_err());
        assert!(input_files(&p).is_empty());
    }
}
