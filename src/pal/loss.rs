//! The three comparison losses of PAL-SPEC "Losses", on t = −y·m (t > 0 when the model agrees
//! with the label; m = r(x_l) − r(x_r), y = −1 when the left item is preferred).
//!
//! Owns: per-comparison loss tensors, their weighted batch mean Σ w·ℓ / Σ w
//! ([`weighted_mean`]) and the per-user weighting of the few-shot objectives ([`UserScale`],
//! [`user_mean_coefs`]). Does not own: the margins (`model.rs`) or the penalties (`train.rs`).

use candle_core::Tensor;

use super::config::LossKind;
use super::error::Result;

/// γ of the smoothed hinge.
pub const SMOOTH_HINGE_GAMMA: f64 = 5.0;

/// t = −y·m, `[B]`.
pub(crate) fn agreement(m: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(m.mul(y)?.neg()?)
}

/// Per-comparison losses `[B]` for agreements t `[B]`.
pub(crate) fn per_comparison(kind: LossKind, t: &Tensor) -> Result<Tensor> {
    match kind {
        // log(1 + e^{−t}) = max(−t, 0) + log(1 + e^{−|t|}): never overflows, never log(0).
        LossKind::Logistic => {
            let neg_t = t.neg()?;
            let tail = (t.abs()?.neg()?.exp()? + 1.0)?.log()?;
            Ok((neg_t.relu()? + tail)?)
        }
        // max(0, 1 − t)
        LossKind::Hinge => Ok(t.affine(-1.0, 1.0)?.relu()?),
        // u = 1 − t: u²/(2γ) for 0 ≤ u ≤ γ, 0 below, u − γ/2 above (continuous, C¹).
        LossKind::SmoothHinge => {
            let g = SMOOTH_HINGE_GAMMA;
            let u = t.affine(-1.0, 1.0)?;
            let quad = (u.relu()?.sqr()? / (2.0 * g))?;
            let lin = (&u - g / 2.0)?;
            let far = u.gt(g)?;
            Ok(far.where_cond(&lin, &quad)?)
        }
    }
}

/// The batch loss Σ w·ℓ / Σ w of per-comparison losses `per` `[B]` with weights `weights`
/// (one per comparison, positive). When every weight is the same, that is the plain mean,
/// and it is computed as the plain mean, so data without weights (all 1.0) trains bit for
/// bit as it did before weights existed, and scaling every weight changes nothing.
///
/// Otherwise the weights are first divided by the batch's largest weight (in f64, then
/// rounded once to the loss's dtype): Σ (w/w_max)·ℓ / Σ (w/w_max) equals Σ w·ℓ / Σ w in exact
/// arithmetic, but every scaled weight is at most 1, so the sum cannot overflow however large
/// the weights are (ingest accepts any finite weight, up to f32's 3.4e38, where Σ w·ℓ in f32
/// would be infinite). Weights whose ratios are powers of two give the same bits as the
/// unscaled sum; other ratios may differ from it in the last bit.
pub(crate) fn weighted_mean(per: &Tensor, weights: &[f32]) -> Result<Tensor> {
    if weights.windows(2).all(|p| p[0] == p[1]) {
        return Ok(per.mean_all()?);
    }
    let (scaled, _) = scaled_weights(weights);
    let total: f64 = scaled.iter().sum();
    let w = Tensor::new(scaled.as_slice(), per.device())?.to_dtype(per.dtype())?;
    Ok((per.mul(&w)?.sum_all()? / total)?)
}

/// Per-user scaling of the few-shot objectives, which fit many users' independent rows in one
/// sum: each user u is divided by their own c_u = max(1, the largest weight of their
/// comparisons), so no weight divided by it exceeds 1 (no overflow, however large) and no
/// user's terms shrink because of another user's weights (AdamW's ε would then freeze that
/// user at their start). Dividing one user's whole objective (shots and prior) by a constant
/// leaves their minimiser where it was.
pub(crate) struct UserScale {
    /// Per comparison w_i / c_u(i), `[B]`; `None` when every weight is 1.0 (the plain sum).
    coef: Option<Tensor>,
    /// Per user 1 / c_u, `[U]`; `None` when every c_u is 1 (the plain sum of per-user terms).
    inv_c: Option<Tensor>,
}

impl UserScale {
    /// The scales of comparisons with weights `weights` whose users (in `0..n_users`) are
    /// `owner`; tensors in the dtype and on the device of `like`.
    pub(crate) fn new(
        weights: &[f32],
        owner: &[u32],
        n_users: usize,
        like: &Tensor,
    ) -> Result<UserScale> {
        if weights.iter().all(|&w| w == 1.0) {
            return Ok(UserScale {
                coef: None,
                inv_c: None,
            });
        }
        let mut c = vec![1f64; n_users];
        for (&w, &u) in weights.iter().zip(owner) {
            c[u as usize] = c[u as usize].max(f64::from(w));
        }
        let coef: Vec<f64> = weights
            .iter()
            .zip(owner)
            .map(|(&w, &u)| {
                let cu = c[u as usize];
                if cu == 1.0 {
                    f64::from(w)
                } else {
                    f64::from(w) / cu
                }
            })
            .collect();
        let to = |v: Vec<f64>| -> Result<Tensor> {
            Ok(Tensor::new(v.as_slice(), like.device())?.to_dtype(like.dtype())?)
        };
        let inv_c = if c.iter().all(|&x| x == 1.0) {
            None
        } else {
            Some(to(c.iter().map(|x| 1.0 / x).collect())?)
        };
        Ok(UserScale {
            coef: Some(to(coef)?),
            inv_c,
        })
    }

    /// Σ_i (w_i / c_u(i))·ℓ_i of per-comparison losses `per` `[B]`: the weighted negative
    /// log-likelihood of the likelihood-based estimators (a comparison of weight w counts as
    /// w copies of it), each user's part divided by their c_u. Every weight 1.0 (data without
    /// weights): the plain sum Σ ℓ, computed as the plain sum.
    pub(crate) fn sum(&self, per: &Tensor) -> Result<Tensor> {
        match &self.coef {
            None => Ok(per.sum_all()?),
            Some(w) => Ok(per.mul(w)?.sum_all()?),
        }
    }

    /// Σ_u (Σ_j t_uj) / c_u of per-user terms `t` `[U, J]` (a user's prior, one row per
    /// user), so that they are divided as their shots are; every c_u = 1: the plain sum of
    /// every element, computed as such.
    pub(crate) fn per_user(&self, t: &Tensor) -> Result<Tensor> {
        match &self.inv_c {
            None => Ok(t.sum_all()?),
            Some(ic) => Ok(t.sum(1)?.mul(ic)?.sum_all()?),
        }
    }
}

/// The coefficients a_i of `mle`'s objective Σ a_i·ℓ_i when several users are fitted in one
/// sum: each user's weighted mean Σ_u w·ℓ / Σ_u w, weighed by the user's share n_u / N of the
/// comparisons, so that the objective is the plain mean when the weights are equal and no
/// user's part depends on another user's weights. `None` when every weight is the same: the
/// caller takes the plain mean (bit for bit as before weights existed). Each user's weights
/// are divided by their largest first, so no sum overflows.
pub(crate) fn user_mean_coefs(weights: &[f32], owner: &[u32], n_users: usize) -> Option<Vec<f64>> {
    if weights.windows(2).all(|p| p[0] == p[1]) {
        return None;
    }
    let mut max = vec![0f64; n_users];
    let mut n = vec![0f64; n_users];
    for (&w, &u) in weights.iter().zip(owner) {
        max[u as usize] = max[u as usize].max(f64::from(w));
        n[u as usize] += 1.0;
    }
    let scaled: Vec<f64> = weights
        .iter()
        .zip(owner)
        .map(|(&w, &u)| f64::from(w) / max[u as usize])
        .collect();
    let mut total = vec![0f64; n_users];
    for (&s, &u) in scaled.iter().zip(owner) {
        total[u as usize] += s;
    }
    let all = weights.len() as f64;
    Some(
        scaled
            .iter()
            .zip(owner)
            .map(|(&s, &u)| (n[u as usize] / all) * s / total[u as usize])
            .collect(),
    )
}

/// The weights divided by the largest of them (in f64), and that largest weight.
fn scaled_weights(weights: &[f32]) -> (Vec<f64>, f64) {
    let max = weights.iter().map(|&w| f64::from(w)).fold(0.0, f64::max);
    if max == 0.0 {
        return (weights.iter().map(|&w| f64::from(w)).collect(), 1.0);
    }
    (weights.iter().map(|&w| f64::from(w) / max).collect(), max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn eval(kind: LossKind, ts: &[f64]) -> Vec<f64> {
        let t = Tensor::new(ts, &Device::Cpu).unwrap();
        per_comparison(kind, &t)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn logistic_is_stable_softplus() {
        let l = eval(LossKind::Logistic, &[0.0, 2.0, -2.0, 1000.0, -1000.0]);
        assert!((l[0] - 2f64.ln()).abs() < 1e-12);
        assert!((l[1] - (1.0 + (-2f64).exp()).ln()).abs() < 1e-12);
        assert!((l[2] - (1.0 + 2f64.exp()).ln()).abs() < 1e-12);
        assert_eq!(l[3], 0.0);
        assert!((l[4] - 1000.0).abs() < 1e-9);
    }

    /// Σ w·ℓ / Σ w against the same sum written out by hand; equal weights give the mean.
    #[test]
    fn weighted_mean_is_the_weighted_average() {
        let per = Tensor::new(&[1.0f64, 4.0, 10.0], &Device::Cpu).unwrap();
        let got = weighted_mean(&per, &[2.0, 1.0, 0.5])
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        // (2·1 + 1·4 + 0.5·10) / 3.5 = 11 / 3.5
        assert!((got - 11.0 / 3.5).abs() < 1e-12, "{got}");
        let same = weighted_mean(&per, &[3.0, 3.0, 3.0])
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((same - 5.0).abs() < 1e-12, "{same}");
    }

    /// Weights near f32's largest number: (1e38·10 + 3e38·20) / 4e38 = 17.5, which the
    /// unscaled f32 sum (7e39) cannot hold; the weighted sum divides by c = 3e38 and says so.
    #[test]
    fn huge_weights_do_not_overflow() {
        let per = Tensor::new(&[10.0f32, 20.0], &Device::Cpu).unwrap();
        let unscaled = per
            .mul(&Tensor::new(&[1e38f32, 3e38], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(unscaled.is_infinite(), "{unscaled}");
        let got = weighted_mean(&per, &[1e38, 3e38])
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((got - 17.5).abs() < 1e-5, "{got}");
        // One user: Σ w·ℓ / c with c = 3e38, i.e. 10/3 + 20 = 23.33…
        let one = UserScale::new(&[1e38, 3e38], &[0, 0], 1, &per).unwrap();
        let sum = one.sum(&per).unwrap().to_scalar::<f32>().unwrap();
        assert!((f64::from(sum) - 70.0 / 3.0).abs() < 1e-4, "{sum}");
        // Weights all 1.0: the plain sum; weights below 1 are not scaled up.
        let plain = UserScale::new(&[1.0, 1.0], &[0, 0], 1, &per).unwrap();
        assert_eq!(plain.sum(&per).unwrap().to_scalar::<f32>().unwrap(), 30.0);
        let half = UserScale::new(&[0.5, 0.25], &[0, 0], 1, &per).unwrap();
        assert_eq!(half.sum(&per).unwrap().to_scalar::<f32>().unwrap(), 10.0);
    }

    /// Two users, each divided by their own largest weight: user 0 (weights 1e30, 2e30) by
    /// 2e30, user 1 (weight 3, below it 1) by 3; per-user terms by the same.
    #[test]
    fn each_user_is_scaled_by_their_own_weights() {
        let per = Tensor::new(&[10.0f64, 20.0, 5.0, 7.0], &Device::Cpu).unwrap();
        let s = UserScale::new(&[1e30, 2e30, 3.0, 1.0], &[0, 0, 1, 1], 2, &per).unwrap();
        let got = s.sum(&per).unwrap().to_scalar::<f64>().unwrap();
        // 10·0.5 + 20·1 + 5·1 + 7/3
        assert!((got - (25.0 + 5.0 + 7.0 / 3.0)).abs() < 1e-9, "{got}");
        let t = Tensor::new(&[[1.0f64, 3.0], [2.0, 4.0]], &Device::Cpu).unwrap();
        let got = s.per_user(&t).unwrap().to_scalar::<f64>().unwrap();
        assert!((got - (4.0 / 2e30 + 2.0)).abs() < 1e-12, "{got}");
        // mle: (2/4)·(1·10 + 2·20)/3 + (2/4)·(3·5 + 1·7)/4
        let a = user_mean_coefs(&[1e30, 2e30, 3.0, 1.0], &[0, 0, 1, 1], 2).unwrap();
        let got: f64 = a
            .iter()
            .zip([10.0, 20.0, 5.0, 7.0])
            .map(|(a, l)| a * l)
            .sum();
        assert!(
            (got - (0.5 * 50.0 / 3.0 + 0.5 * 22.0 / 4.0)).abs() < 1e-9,
            "{got}"
        );
        assert!(user_mean_coefs(&[2.0, 2.0], &[0, 1], 2).is_none());
    }

    #[test]
    fn hinge_and_smooth_hinge_values() {
        assert_eq!(
            eval(LossKind::Hinge, &[2.0, 1.0, 0.0, -3.0]),
            vec![0.0, 0.0, 1.0, 4.0]
        );
        let s = eval(LossKind::SmoothHinge, &[2.0, 0.0, -4.0, -9.0]);
        assert_eq!(s[0], 0.0);
        assert!((s[1] - 0.1).abs() < 1e-12); // u = 1: 1/10
        assert!((s[2] - 2.5).abs() < 1e-12); // u = 5 = γ: 25/10 = γ/2
        assert!((s[3] - 7.5).abs() < 1e-12); // u = 10: 10 − 2.5
    }
}
