//! Content fingerprints of comparisons and the leakage split.
//!
//! A pair's fingerprint is blake3 over its caption (through the caption's content hash, the
//! prompt id) and the content hashes of its two images, the two in sorted order so that
//! showing the same images the other way round is the same pair. Row ids (`ranking_id`) and
//! users play no part: two rows with the same caption and images are the same content.
//!
//! The leakage split: a target pair (Pick-a-Pic v2 test) whose fingerprint occurs in a
//! reference split (v1 train or validation) is tagged `leak_tag`, every other target pair
//! `clean_tag`. Exact duplicates inside one split are counted as well.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::ParamIssue;
use crate::store::records::PairRow;

fn default_dataset() -> String {
    "pickapic".into()
}
fn default_reference() -> Vec<String> {
    vec!["v1-train".into(), "v1-validation".into()]
}
fn default_target() -> String {
    "v2-test".into()
}
fn default_leak() -> String {
    "v2-leakage".into()
}
fn default_clean() -> String {
    "v2-no-leakage".into()
}

/// Parameters of a `dedup` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The `dataset` of the pairs to look at. Default "pickapic".
    #[serde(default = "default_dataset")]
    pub dataset: String,
    /// Split tags whose content counts as seen. Default [v1-train, v1-validation].
    #[serde(default = "default_reference")]
    pub reference: Vec<String>,
    /// The split tag to divide. Default "v2-test".
    #[serde(default = "default_target")]
    pub target: String,
    /// Tag of target pairs whose content occurs in the reference. Default "v2-leakage".
    #[serde(default = "default_leak")]
    pub leak_tag: String,
    /// Tag of the other target pairs. Default "v2-no-leakage".
    #[serde(default = "default_clean")]
    pub clean_tag: String,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            dataset: default_dataset(),
            reference: default_reference(),
            target: default_target(),
            leak_tag: default_leak(),
            clean_tag: default_clean(),
        }
    }
}

impl Params {
    /// The tags a target pair may carry (before or after a run).
    pub fn target_tags(&self) -> [&str; 3] {
        [&self.target, &self.leak_tag, &self.clean_tag]
    }

    /// Checks the tags and reference, naming the key at fault.
    pub fn check(&self) -> Result<(), ParamIssue> {
        let tags = self.target_tags();
        if tags[0] == tags[1] || tags[1] == tags[2] || tags[0] == tags[2] {
            let key = if tags[1] == tags[2] {
                "clean_tag"
            } else {
                "leak_tag"
            };
            return Err(ParamIssue::new(
                key,
                "target, leak_tag and clean_tag must be three different tags",
            ));
        }
        if let Some(r) = self.reference.iter().find(|r| tags.contains(&r.as_str())) {
            return Err(ParamIssue::new(
                "reference",
                format!("reference split '{r}' is also the target or one of its tags"),
            ));
        }
        if self.reference.is_empty() {
            return Err(ParamIssue::new(
                "reference",
                "reference must name at least one split",
            ));
        }
        Ok(())
    }
}

/// blake3 over the caption's hash and the two image hashes in sorted order.
pub fn fingerprint(prompt_id: Option<&str>, a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = blake3::Hasher::new();
    h.update(b"palpipe-pair-content");
    for part in [prompt_id.unwrap_or(""), lo, hi] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    h.finalize().to_hex().to_string()
}

/// What the leakage split decided.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Target pairs with their new tag, for the pairs whose tag changes.
    pub retag: Vec<(usize, String)>,
    pub leak: usize,
    pub clean: usize,
    /// Per split (the target's tags counted as the target): rows beyond the first with the
    /// same fingerprint.
    pub duplicates: BTreeMap<String, usize>,
}

/// Decides the tag of every target pair in `pairs` (all pairs of the dataset).
pub fn split(pairs: &[PairRow], p: &Params) -> Outcome {
    let tags = p.target_tags();
    let seen: HashSet<String> = pairs
        .iter()
        .filter(|r| p.reference.contains(&r.split))
        .map(|r| fingerprint(r.prompt_id.as_deref(), &r.left_id, &r.right_id))
        .collect();
    let mut out = Outcome::default();
    let mut per_split: HashMap<&str, HashSet<String>> = HashMap::new();
    for (i, r) in pairs.iter().enumerate() {
        let fp = fingerprint(r.prompt_id.as_deref(), &r.left_id, &r.right_id);
        let is_target = tags.contains(&r.split.as_str());
        let group = if is_target { tags[0] } else { r.split.as_str() };
        let fresh = per_split.entry(group).or_default().insert(fp.clone());
        *out.duplicates.entry(group.to_string()).or_default() += usize::from(!fresh);
        if is_target {
            let tag = if seen.contains(&fp) {
                out.leak += 1;
                &p.leak_tag
            } else {
                out.clean += 1;
                &p.clean_tag
            };
            if &r.split != tag {
                out.retag.push((i, tag.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(split: &str, prompt: &str, l: &str, r: &str) -> PairRow {
        PairRow {
            pair_id: format!("{split}{prompt}{l}{r}"),
            user_id: "u".into(),
            prompt_id: Some(prompt.into()),
            left_id: l.into(),
            right_id: r.into(),
            label: 1,
            dataset: "pickapic".into(),
            split: split.into(),
            source_ref: None,
            weight: 1.0,
        }
    }

    #[test]
    fn image_order_does_not_matter_and_the_caption_does() {
        assert_eq!(
            fingerprint(Some("c"), "a", "b"),
            fingerprint(Some("c"), "b", "a")
        );
        assert_ne!(
            fingerprint(Some("c"), "a", "b"),
            fingerprint(Some("d"), "a", "b")
        );
    }

    #[test]
    fn leaks_are_found_and_a_second_run_changes_nothing() {
        let p = Params::default();
        let mut pairs = vec![
            pair("v1-train", "c1", "a", "b"),
            pair("v1-validation", "c2", "c", "d"),
            pair("v1-test", "c3", "e", "f"),
            pair("v2-test", "c1", "b", "a"), // leak (swapped)
            pair("v2-test", "c2", "c", "d"), // leak
            pair("v2-test", "c3", "e", "f"), // only in v1 test: clean
            pair("v2-test", "c9", "x", "y"), // clean
            pair("v2-test", "c9", "y", "x"), // clean, duplicate in the split
        ];
        let o = split(&pairs, &p);
        assert_eq!((o.leak, o.clean), (2, 3));
        assert_eq!(o.duplicates["v2-test"], 1);
        assert_eq!(o.duplicates["v1-train"], 0);
        for (i, tag) in &o.retag {
            pairs[*i].split = tag.clone();
        }
        let again = split(&pairs, &p);
        assert_eq!((again.leak, again.clean), (2, 3));
        assert!(again.retag.is_empty());
    }
}
