//! Baselines to read PAL's numbers against.
//!
//! Owns: [`Popularity`] — every item's win rate on the training comparisons (an item never seen
//! in training gets 0.5); it predicts the item with the higher rate, equal rates are a tie
//! (counted wrong), and it reports through the same [`EvalReport`] as PAL. Items are matched
//! across sets by their embedding's content (blake3 of the f32 bits), since embeddings are
//! cached by content and a set's row numbers are local to it.
//!
//! [`ClipScore`] is the paper's zero-shot "CLIP-H" row: no training at all, each item scores
//! the cosine of its image vector with its comparison's prompt (caption) vector, both from
//! the same CLIP model; it reports through the same [`EvalReport`].
//!
//! The other baseline, `bt` (the homogeneous Bradley–Terry reward model), needs no code: it is
//! a PAL model with K = 1.

use std::collections::HashMap;

use super::data::ComparisonSet;
use super::error::{PalError, Result};
use super::evaluate::{report_from_margins, EvalOptions, EvalReport};

/// Win counts per item (keyed by the content hash of its embedding).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Popularity {
    counts: HashMap<u128, (u32, u32)>,
}

fn key(v: &[f32]) -> u128 {
    let mut h = blake3::Hasher::new();
    for x in v {
        h.update(&x.to_bits().to_le_bytes());
    }
    let bytes = h.finalize();
    u128::from_le_bytes(bytes.as_bytes()[..16].try_into().expect("16 bytes"))
}

impl Popularity {
    /// Counts wins and appearances of every item in `train`.
    pub fn fit(train: &ComparisonSet) -> Result<Self> {
        train.validate()?;
        let keys: Vec<u128> = (0..train.n_items() as u32)
            .map(|i| key(train.item(i)))
            .collect();
        let mut counts: HashMap<u128, (u32, u32)> = HashMap::new();
        for c in &train.comps {
            let (winner, loser) = if c.y < 0 {
                (c.left, c.right)
            } else {
                (c.right, c.left)
            };
            let w = counts.entry(keys[winner as usize]).or_default();
            w.0 += 1;
            w.1 += 1;
            counts.entry(keys[loser as usize]).or_default().1 += 1;
        }
        Ok(Popularity { counts })
    }

    /// Number of distinct items seen in training.
    pub fn n_items(&self) -> usize {
        self.counts.len()
    }

    /// The win rate of an item embedding (0.5 when never seen in training).
    pub fn rate(&self, item: &[f32]) -> f64 {
        match self.counts.get(&key(item)) {
            Some(&(wins, n)) if n > 0 => wins as f64 / n as f64,
            _ => 0.5,
        }
    }

    /// Evaluates on `set`: margin = rate(x_l) − rate(x_r). Every user counts as known; there is
    /// no mixture summary.
    pub fn evaluate(&self, set: &ComparisonSet, opts: &EvalOptions) -> Result<EvalReport> {
        set.validate()?;
        let rates: Vec<f64> = (0..set.n_items() as u32)
            .map(|i| self.rate(set.item(i)))
            .collect();
        let margins: Vec<f32> = set
            .comps
            .iter()
            .map(|c| (rates[c.left as usize] - rates[c.right as usize]) as f32)
            .collect();
        Ok(report_all_known(set, &margins, opts))
    }
}

/// The zero-shot CLIP score: r(x, x_c) = cos(CLIP_image(x), CLIP_text(x_c)).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClipScore;

impl ClipScore {
    /// Evaluates on `set`, whose items are image vectors and whose prompts are caption vectors
    /// of the same model: margin = cos(x_l, x_c) − cos(x_r, x_c). Every comparison needs a
    /// prompt; every user counts as known; there is no mixture summary.
    pub fn evaluate(&self, set: &ComparisonSet, opts: &EvalOptions) -> Result<EvalReport> {
        set.validate()?;
        if set.dp != set.dx {
            return Err(PalError::Dim {
                what: "the prompt vectors".into(),
                expected: set.dx,
                got: set.dp,
            });
        }
        let mut margins = Vec::with_capacity(set.comps.len());
        for (i, c) in set.comps.iter().enumerate() {
            let Some(p) = c.prompt else {
                return Err(PalError::Data(format!(
                    "comparison {i} has no prompt; the CLIP score compares images with their prompt"
                )));
            };
            let x_c = set.prompt(p);
            let s_l = crate::embed::cosine(set.item(c.left), x_c);
            let s_r = crate::embed::cosine(set.item(c.right), x_c);
            margins.push((s_l - s_r) as f32);
        }
        Ok(report_all_known(set, &margins, opts))
    }
}

/// The report of a scorer that knows every user and has no mixture to summarise.
fn report_all_known(set: &ComparisonSet, margins: &[f32], opts: &EvalOptions) -> EvalReport {
    let known = vec![true; set.n_users()];
    report_from_margins(&set.user_ids, &set.comps, margins, &known, None, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pal::data::Comparison;

    #[test]
    fn popularity_predicts_the_frequent_winner() {
        let items = vec![0.0, 1.0, 2.0, 3.0];
        let c = |left, right, y| Comparison {
            user: 0,
            prompt: None,
            left,
            right,
            y,
            weight: crate::pal::Weight::ONE,
        };
        let train = ComparisonSet {
            dx: 1,
            dp: 0,
            items: items.clone(),
            prompts: vec![],
            user_ids: vec!["u".into()],
            comps: vec![c(0, 1, -1), c(0, 2, -1), c(1, 2, -1)],
        };
        let p = Popularity::fit(&train).unwrap();
        assert_eq!(p.rate(&[0.0]), 1.0);
        assert_eq!(p.rate(&[2.0]), 0.0);
        assert_eq!(p.rate(&[3.0]), 0.5);
        // a test set with its own row order: item rows reversed
        let test = ComparisonSet {
            dx: 1,
            dp: 0,
            items: vec![3.0, 2.0, 1.0, 0.0],
            prompts: vec![],
            user_ids: vec!["v".into()],
            comps: vec![c(3, 2, -1), c(1, 2, -1), c(0, 1, 1), c(0, 0, 1)],
        };
        let r = p.evaluate(&test, &EvalOptions::default()).unwrap();
        assert_eq!(r.n, 4);
        assert_eq!(r.correct, 1); // only the first (rate 1 vs 0.5, left preferred) is right
        assert_eq!(r.ties, 1);
    }

    #[test]
    fn clip_score_prefers_the_item_closer_to_the_prompt() {
        let c = |prompt, left, right, y| Comparison {
            user: 0,
            prompt: Some(prompt),
            left,
            right,
            y,
            weight: crate::pal::Weight::ONE,
        };
        // items: along x, along y, diagonal; prompts: along x, along y
        let set = ComparisonSet {
            dx: 2,
            dp: 2,
            items: vec![1.0, 0.0, 0.0, 2.0, 1.0, 1.0],
            prompts: vec![3.0, 0.0, 0.0, 1.0],
            user_ids: vec!["u".into()],
            comps: vec![
                c(0, 0, 1, -1), // prompt x: left (x) closer, left preferred: right
                c(1, 0, 1, -1), // prompt y: right (y) closer, left preferred: wrong
                c(1, 2, 1, 1),  // prompt y: right closer, right preferred: right
                c(0, 2, 2, 1),  // same item: a tie, wrong
            ],
        };
        let r = ClipScore.evaluate(&set, &EvalOptions::default()).unwrap();
        assert_eq!((r.n, r.correct, r.ties), (4, 2, 1));
        assert!((r.outcomes[0].margin - 1.0).abs() < 1e-6);
        assert!((r.outcomes[2].margin + (1.0 - 0.5f32.sqrt())).abs() < 1e-6);
        let mut bare = set.clone();
        bare.dp = 0;
        bare.prompts.clear();
        bare.comps.iter_mut().for_each(|c| c.prompt = None);
        assert!(ClipScore.evaluate(&bare, &EvalOptions::default()).is_err());
    }
}
