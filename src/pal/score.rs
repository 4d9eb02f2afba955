//! Batched scoring: the rewards r_i(x; x_c) of many (user mixture, prompt, candidates) jobs
//! in one forward pass of f and g_k (PAL-SPEC "Scoring"; paper Sec. 3, the reward of a user).
//!
//! Owns: [`ScoreJob`] and [`PalModel::score_batch`], the path `palpipe score` and the HTTP
//! server (`src/serve`) take. The math is the one `evaluate` uses for margins (features, the
//! user side from the mixture table, then the reward of the left item), so
//! sign(r(x_l) − r(x_r)) from here is eval's prediction. Does not own: where mixtures come
//! from (seen, enrolled or zero-shot users: `src/serve`) or how vectors are made.

use candle_core::{DType, Tensor};

use super::data::{Comparison, ComparisonSet};
use super::error::{PalError, Result};
use super::grad::without_grad;
use super::model::PalModel;

/// One scoring request: a user's mixture w (length K, on the simplex), their offset δ of the
/// ideal point when they have one, the prompt vector x_c (exactly when the model has context,
/// dp > 0) and the candidate vectors x.
#[derive(Debug, Clone)]
pub struct ScoreJob<'a> {
    pub mixture: &'a [f64],
    /// A user enrolled with the `offset` estimator: δ, [`PalModel::offset_dim`] values (d
    /// for PAL-B, added to z = Σ_k w_k g_k(x_c) before it is normalised; Dp + Dx for PAL-A,
    /// added to a = Σ_k w_k P_k). `None`: the mixture alone.
    pub offset: Option<&'a [f32]>,
    pub prompt: Option<&'a [f32]>,
    pub candidates: Vec<&'a [f32]>,
}

/// Comparisons gathered per forward pass (as evaluation does).
const CHUNK: usize = 4096;

impl PalModel {
    /// The rewards of every job's candidates, in job and candidate order (evaluation mode).
    /// A model without context (dp = 0) ignores the prompts. Dimensions are checked per job.
    /// When any job has an offset, the others get δ = 0, which adds exactly nothing: their
    /// rewards are the same bits as without.
    pub fn score_batch(&self, jobs: &[ScoreJob<'_>]) -> Result<Vec<Vec<f32>>> {
        let (k, dx, dp) = (self.cfg.k, self.cfg.dx, self.cfg.dp);
        let offsets = self.offset_table(jobs)?;
        let mut table = Vec::with_capacity(jobs.len() * k);
        let mut items = Vec::new();
        let mut prompts = Vec::new();
        let mut comps = Vec::new();
        for (j, job) in jobs.iter().enumerate() {
            if job.mixture.len() != k {
                return Err(PalError::Dim {
                    what: format!("the mixture of job {j}"),
                    expected: k,
                    got: job.mixture.len(),
                });
            }
            table.extend_from_slice(job.mixture);
            let prompt = if dp == 0 {
                None
            } else {
                let p = job.prompt.ok_or_else(|| PalError::Dim {
                    what: format!("the prompt vector of job {j} (none given)"),
                    expected: dp,
                    got: 0,
                })?;
                if p.len() != dp {
                    return Err(PalError::Dim {
                        what: format!("the prompt vector of job {j}"),
                        expected: dp,
                        got: p.len(),
                    });
                }
                prompts.extend_from_slice(p);
                Some(j as u32)
            };
            for (i, c) in job.candidates.iter().enumerate() {
                if c.len() != dx {
                    return Err(PalError::Dim {
                        what: format!("candidate {i} of job {j}"),
                        expected: dx,
                        got: c.len(),
                    });
                }
                let row = (items.len() / dx) as u32;
                items.extend_from_slice(c);
                comps.push(Comparison {
                    user: j as u32,
                    prompt,
                    left: row,
                    right: row,
                    y: 1,
                    weight: crate::pal::Weight::ONE,
                });
            }
        }
        let mut out: Vec<Vec<f32>> = jobs
            .iter()
            .map(|j| Vec::with_capacity(j.candidates.len()))
            .collect();
        if comps.is_empty() {
            return Ok(out);
        }
        let set = ComparisonSet {
            dx,
            dp,
            items,
            prompts,
            user_ids: (0..jobs.len()).map(|j| j.to_string()).collect(),
            comps,
        };
        set.validate()?;
        let table = Tensor::from_vec(table, (jobs.len(), k), &self.device)?.to_dtype(self.dtype)?;
        let idx: Vec<usize> = (0..set.comps.len()).collect();
        // Scoring only: no intermediate is held for a backward pass (`grad`).
        without_grad(|| -> Result<()> {
            for chunk in idx.chunks(CHUNK) {
                let batch = self.gather(&set, chunk, &|u| u)?;
                let users = Tensor::new(batch.users.as_slice(), &self.device)?;
                let w = table.index_select(&users, 0)?; // [Uu, K]
                let delta = match &offsets {
                    Some(o) => Some(o.index_select(&users, 0)?), // [Uu, D]
                    None => None,
                };
                let feats = self.features(&batch, None)?;
                let (side, _) = self.user_side_with(&feats, &batch, &w, delta.as_ref(), None)?;
                let r = self
                    .reward(&feats, &side, &batch.left)?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?;
                for (&c, v) in chunk.iter().zip(r) {
                    out[set.comps[c].user as usize].push(v);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The jobs' offsets as one `[jobs, D]` table (zeros for a job without one), or `None`
    /// when no job has an offset.
    fn offset_table(&self, jobs: &[ScoreJob<'_>]) -> Result<Option<Tensor>> {
        if jobs.iter().all(|j| j.offset.is_none()) {
            return Ok(None);
        }
        let dim = self.offset_dim();
        let mut rows = vec![0f32; jobs.len() * dim];
        for (j, job) in jobs.iter().enumerate() {
            if let Some(o) = job.offset {
                if o.len() != dim {
                    return Err(PalError::Dim {
                        what: format!("the offset of job {j}"),
                        expected: dim,
                        got: o.len(),
                    });
                }
                rows[j * dim..(j + 1) * dim].copy_from_slice(o);
            }
        }
        let t = Tensor::from_vec(rows, (jobs.len(), dim), &self.device)?.to_dtype(self.dtype)?;
        Ok(Some(t))
    }

    /// The evaluation mixture of user logits W_i (length K): softmax(W_i / T), or the one-hot
    /// argmax in partition mode, as for a seen user.
    pub fn mixture_of_logits(&self, logits: &[f32]) -> Result<Vec<f64>> {
        if logits.len() != self.cfg.k {
            return Err(PalError::Dim {
                what: "the user logits".into(),
                expected: self.cfg.k,
                got: logits.len(),
            });
        }
        let t = Tensor::from_vec(logits.to_vec(), (1, self.cfg.k), &self.device)?
            .to_dtype(self.dtype)?;
        Ok(self
            .eval_mixture(&t)?
            .get(0)?
            .to_dtype(DType::F64)?
            .to_vec1()?)
    }
}
