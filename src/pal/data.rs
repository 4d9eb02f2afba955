//! In-memory comparison data for the PAL heads (PAL-SPEC "Setting").
//!
//! Owns: [`ComparisonSet`], the matrices of frozen embeddings (items x, prompts x_c) with the
//! comparisons (user i, x_c, x_l, x_r, y) as *indices* into them, so memory stays at the size
//! of the embeddings however many pairs share an item; its validation; and the per-batch
//! gathering of the distinct rows a batch needs ([`Batch`]). Does not own: where the data comes
//! from (the store and the CLI build these sets) or any model math (`model.rs`).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::error::{PalError, Result};

/// A comparison's weight in the training loss (PAL-SPEC "Losses": the batch loss is
/// Σ w·ℓ / Σ w). Positive and finite where it comes from the store; compared and ordered by
/// [`f32::total_cmp`], so that the rows holding one can be sorted and compared.
#[derive(Debug, Clone, Copy)]
pub struct Weight(pub f32);

impl Weight {
    /// The weight of a comparison whose data gives none.
    pub const ONE: Weight = Weight(1.0);
}

impl Default for Weight {
    fn default() -> Self {
        Weight::ONE
    }
}

impl PartialEq for Weight {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}

impl Eq for Weight {}

impl PartialOrd for Weight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Weight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One pairwise comparison, all fields indices into its [`ComparisonSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    /// Row in [`ComparisonSet::user_ids`].
    pub user: u32,
    /// Row of the context x_c in [`ComparisonSet::prompts`]; `None` exactly when `dp == 0`.
    pub prompt: Option<u32>,
    /// Row of the left item x_l in [`ComparisonSet::items`].
    pub left: u32,
    /// Row of the right item x_r in [`ComparisonSet::items`].
    pub right: u32,
    /// −1 when the left item is preferred, +1 when the right one is.
    pub y: i8,
    /// Its weight in the training loss ([`Weight::ONE`] unless the data gives one).
    pub weight: Weight,
}

/// Comparisons over shared embedding matrices.
#[derive(Debug, Clone, Default)]
pub struct ComparisonSet {
    /// Item embedding dimension Dx.
    pub dx: usize,
    /// Prompt (context) dimension Dp; 0 when the data has no context.
    pub dp: usize,
    /// `n_items * dx` values, row-major.
    pub items: Vec<f32>,
    /// `n_prompts * dp` values, row-major (empty when `dp == 0`).
    pub prompts: Vec<f32>,
    /// User row → external user id (unique).
    pub user_ids: Vec<String>,
    /// The comparisons.
    pub comps: Vec<Comparison>,
}

impl ComparisonSet {
    /// Builds and validates a set (see [`ComparisonSet::validate`]).
    pub fn new(
        dx: usize,
        dp: usize,
        items: Vec<f32>,
        prompts: Vec<f32>,
        user_ids: Vec<String>,
        comps: Vec<Comparison>,
    ) -> Result<Self> {
        let set = ComparisonSet {
            dx,
            dp,
            items,
            prompts,
            user_ids,
            comps,
        };
        set.validate()?;
        Ok(set)
    }

    /// Number of item rows.
    pub fn n_items(&self) -> usize {
        self.items.len().checked_div(self.dx).unwrap_or(0)
    }

    /// Number of prompt rows.
    pub fn n_prompts(&self) -> usize {
        self.prompts.len().checked_div(self.dp).unwrap_or(0)
    }

    /// Number of users.
    pub fn n_users(&self) -> usize {
        self.user_ids.len()
    }

    /// The embedding of item row `i`.
    pub fn item(&self, i: u32) -> &[f32] {
        let i = i as usize;
        &self.items[i * self.dx..(i + 1) * self.dx]
    }

    /// The embedding of prompt row `i` (empty when `dp == 0`).
    pub fn prompt(&self, i: u32) -> &[f32] {
        let i = i as usize;
        &self.prompts[i * self.dp..(i + 1) * self.dp]
    }

    /// Checks dims, indices, labels, finiteness, unique user ids and that there is at least one
    /// comparison; the error names the first offending row.
    pub fn validate(&self) -> Result<()> {
        if self.dx == 0 {
            return Err(PalError::Data("item dimension 'dx' is 0".into()));
        }
        if !self.items.len().is_multiple_of(self.dx) {
            return Err(PalError::Data(format!(
                "items hold {} values, not a multiple of dx = {}",
                self.items.len(),
                self.dx
            )));
        }
        if self.dp == 0 && !self.prompts.is_empty() {
            return Err(PalError::Data("prompts are given but dp = 0".into()));
        }
        if self.dp > 0 && !self.prompts.len().is_multiple_of(self.dp) {
            return Err(PalError::Data(format!(
                "prompts hold {} values, not a multiple of dp = {}",
                self.prompts.len(),
                self.dp
            )));
        }
        if self.comps.is_empty() {
            return Err(PalError::Data("the set has no comparisons".into()));
        }
        if let Some(i) = self.items.iter().position(|v| !v.is_finite()) {
            return Err(PalError::Data(format!(
                "item row {} holds a NaN or infinite value",
                i / self.dx
            )));
        }
        if let Some(i) = self.prompts.iter().position(|v| !v.is_finite()) {
            return Err(PalError::Data(format!(
                "prompt row {} holds a NaN or infinite value",
                i / self.dp
            )));
        }
        let mut seen = HashMap::with_capacity(self.user_ids.len());
        for (row, id) in self.user_ids.iter().enumerate() {
            if let Some(first) = seen.insert(id.as_str(), row) {
                return Err(PalError::Data(format!(
                    "user id '{id}' appears twice (rows {first} and {row})"
                )));
            }
        }
        let (n_items, n_prompts, n_users) = (self.n_items(), self.n_prompts(), self.n_users());
        for (i, c) in self.comps.iter().enumerate() {
            if c.user as usize >= n_users {
                return Err(PalError::Data(format!(
                    "comparison {i}: user row {} out of range ({n_users} users)",
                    c.user
                )));
            }
            for (side, idx) in [("left", c.left), ("right", c.right)] {
                if idx as usize >= n_items {
                    return Err(PalError::Data(format!(
                        "comparison {i}: {side} item row {idx} out of range ({n_items} items)"
                    )));
                }
            }
            match (c.prompt, self.dp) {
                (None, 0) => {}
                (Some(_), 0) => {
                    return Err(PalError::Data(format!(
                        "comparison {i} has a prompt but dp = 0"
                    )));
                }
                (None, dp) => {
                    return Err(PalError::Data(format!(
                        "comparison {i} has no prompt but dp = {dp}"
                    )));
                }
                (Some(p), _) if p as usize >= n_prompts => {
                    return Err(PalError::Data(format!(
                        "comparison {i}: prompt row {p} out of range ({n_prompts} prompts)"
                    )));
                }
                _ => {}
            }
            if !(c.weight.0.is_finite() && c.weight.0 > 0.0) {
                return Err(PalError::Data(format!(
                    "comparison {i}: weight {} is not a positive finite number",
                    c.weight.0
                )));
            }
            if c.y != -1 && c.y != 1 {
                return Err(PalError::Data(format!(
                    "comparison {i}: label y = {} is not -1 or +1",
                    c.y
                )));
            }
        }
        Ok(())
    }

    /// The comparisons of each user row, in set order.
    pub fn by_user(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.n_users()];
        for (i, c) in self.comps.iter().enumerate() {
            out[c.user as usize].push(i);
        }
        out
    }
}

/// The distinct rows one batch of comparisons needs, gathered once, and the indices that map
/// each comparison back to them. For PAL-B the item rows are x; for PAL-A they are the
/// concatenations [x_c ; x] (just x when dp == 0), one per distinct (prompt, item) pair.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Distinct item inputs of f, `[U, d_in]`.
    pub item_rows: Tensor,
    /// Distinct prompts, `[Up, dp]`; `None` for PAL-A or when dp == 0.
    pub prompt_rows: Option<Tensor>,
    /// Per comparison: row of x_l / x_r in `item_rows`, `[B]` u32.
    pub left: Tensor,
    pub right: Tensor,
    /// Per comparison: row in `prompt_rows` (zeros when there are none), `[B]` u32.
    pub prompt: Tensor,
    /// Per comparison: row in `users`, `[B]` u32.
    pub user: Tensor,
    /// Distinct mixture rows used by the batch, in first-seen order.
    pub users: Vec<u32>,
    /// Labels y, `[B]`.
    pub y: Tensor,
    /// Per comparison: its weight in the loss (see [`crate::pal::Weight`]).
    pub weights: Vec<f32>,
}

impl Batch {
    /// Gathers a batch. `user_row` maps a comparison's user row in `set` to a row of the mixture
    /// matrix the caller will pass to the model; `concat_prompt` selects PAL-A inputs.
    pub(crate) fn gather(
        set: &ComparisonSet,
        idx: &[usize],
        user_row: &dyn Fn(u32) -> u32,
        concat_prompt: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<Batch> {
        let b = idx.len();
        let dp = set.dp;
        let d_in = if concat_prompt { dp + set.dx } else { set.dx };
        // key: (prompt or u32::MAX, item) for PAL-A, (u32::MAX, item) for PAL-B
        let mut item_map: HashMap<(u32, u32), u32> = HashMap::with_capacity(2 * b);
        let mut item_vals: Vec<f32> = Vec::new();
        let mut prompt_map: HashMap<u32, u32> = HashMap::new();
        let mut prompt_vals: Vec<f32> = Vec::new();
        let mut user_map: HashMap<u32, u32> = HashMap::new();
        let mut users = Vec::new();
        let mut weights = Vec::with_capacity(b);
        let (mut left, mut right, mut prompt, mut user, mut y) = (
            Vec::with_capacity(b),
            Vec::with_capacity(b),
            Vec::with_capacity(b),
            Vec::with_capacity(b),
            Vec::with_capacity(b),
        );
        for &i in idx {
            let c = &set.comps[i];
            let p_key = if concat_prompt {
                c.prompt.unwrap_or(u32::MAX)
            } else {
                u32::MAX
            };
            let mut item_of = |item: u32| -> u32 {
                let next = item_map.len() as u32;
                *item_map.entry((p_key, item)).or_insert_with(|| {
                    if concat_prompt {
                        if let Some(p) = c.prompt {
                            item_vals.extend_from_slice(set.prompt(p));
                        }
                    }
                    item_vals.extend_from_slice(set.item(item));
                    next
                })
            };
            left.push(item_of(c.left));
            right.push(item_of(c.right));
            let p = match (concat_prompt, c.prompt) {
                (false, Some(p)) => {
                    let next = prompt_map.len() as u32;
                    *prompt_map.entry(p).or_insert_with(|| {
                        prompt_vals.extend_from_slice(set.prompt(p));
                        next
                    })
                }
                _ => 0,
            };
            prompt.push(p);
            let row = user_row(c.user);
            let next = user_map.len() as u32;
            user.push(*user_map.entry(row).or_insert_with(|| {
                users.push(row);
                next
            }));
            y.push(c.y as f32);
            weights.push(c.weight.0);
        }
        let n_rows = item_map.len();
        let item_rows = Tensor::from_vec(item_vals, (n_rows, d_in), device)?.to_dtype(dtype)?;
        let prompt_rows = if !concat_prompt && dp > 0 {
            let n = prompt_map.len();
            Some(Tensor::from_vec(prompt_vals, (n, dp), device)?.to_dtype(dtype)?)
        } else {
            None
        };
        Ok(Batch {
            item_rows,
            prompt_rows,
            left: Tensor::from_vec(left, b, device)?,
            right: Tensor::from_vec(right, b, device)?,
            prompt: Tensor::from_vec(prompt, b, device)?,
            user: Tensor::from_vec(user, b, device)?,
            users,
            y: Tensor::from_vec(y, b, device)?.to_dtype(dtype)?,
            weights,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ComparisonSet {
        ComparisonSet {
            dx: 2,
            dp: 0,
            items: vec![0.0, 1.0, 1.0, 0.0, 0.5, 0.5],
            prompts: vec![],
            user_ids: vec!["a".into(), "b".into()],
            comps: vec![
                Comparison {
                    user: 0,
                    prompt: None,
                    left: 0,
                    right: 1,
                    y: -1,
                    weight: crate::pal::Weight::ONE,
                },
                Comparison {
                    user: 1,
                    prompt: None,
                    left: 1,
                    right: 2,
                    y: 1,
                    weight: crate::pal::Weight::ONE,
                },
                Comparison {
                    user: 0,
                    prompt: None,
                    left: 2,
                    right: 0,
                    y: 1,
                    weight: crate::pal::Weight::ONE,
                },
            ],
        }
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(tiny().validate().is_ok());
        let mut s = tiny();
        s.items[3] = f32::NAN;
        assert!(s.validate().unwrap_err().to_string().contains("item row 1"));
        let mut s = tiny();
        s.comps[1].y = 0;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("comparison 1"));
        let mut s = tiny();
        s.comps.clear();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no comparisons"));
        let mut s = tiny();
        s.user_ids[1] = "a".into();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("'a' appears twice"));
        let mut s = tiny();
        s.comps[0].prompt = Some(0);
        assert!(s.validate().unwrap_err().to_string().contains("dp = 0"));
    }

    #[test]
    fn batch_gathers_each_distinct_item_once() {
        let s = tiny();
        let b = Batch::gather(&s, &[0, 1, 2], &|u| u, false, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(b.item_rows.dims(), &[3, 2]);
        assert_eq!(b.left.to_vec1::<u32>().unwrap(), vec![0, 1, 2]);
        assert_eq!(b.right.to_vec1::<u32>().unwrap(), vec![1, 2, 0]);
        assert_eq!(b.users, vec![0, 1]);
        assert_eq!(b.user.to_vec1::<u32>().unwrap(), vec![0, 1, 0]);
    }
}
