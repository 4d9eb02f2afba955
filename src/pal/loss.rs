//! The three comparison losses of PAL-SPEC "Losses", on t = −y·m (t > 0 when the model agrees
//! with the label; m = r(x_l) − r(x_r), y = −1 when the left item is preferred).
//!
//! Owns: per-comparison loss tensors and their weighted batch mean Σ w·ℓ / Σ w
//! ([`weighted_mean`]). Does not own: the margins (`model.rs`) or the penalties (`train.rs`).

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

/// Σ w·ℓ / c with c = max(1, max w), and c: the weighted negative log-likelihood of the
/// likelihood-based few-shot estimators (a comparison of weight w counts as w independent
/// copies of it), divided by c so that it cannot overflow (every weight divided by c is at
/// most 1). The caller divides the rest of its objective (the prior) by the same c, which
/// leaves the minimiser where it was. With every weight 1.0 (data without weights) it is the
/// plain sum Σ ℓ, computed as the plain sum, and c = 1.
pub(crate) fn weighted_sum(per: &Tensor, weights: &[f32]) -> Result<(Tensor, f64)> {
    if weights.iter().all(|&w| w == 1.0) {
        return Ok((per.sum_all()?, 1.0));
    }
    let (scaled, c) = scaled_weights(weights);
    let c = c.max(1.0);
    let scaled: Vec<f64> = if c == 1.0 {
        weights.iter().map(|&w| f64::from(w)).collect()
    } else {
        scaled
    };
    let w = Tensor::new(scaled.as_slice(), per.device())?.to_dtype(per.dtype())?;
    Ok((per.mul(&w)?.sum_all()?, c))
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
        let (sum, c) = weighted_sum(&per, &[1e38, 3e38]).unwrap();
        let sum = sum.to_scalar::<f32>().unwrap();
        assert_eq!(c, f64::from(3e38f32));
        // Σ w·ℓ / c = 10/3 + 20 = 23.33…
        assert!((f64::from(sum) - 70.0 / 3.0).abs() < 1e-4, "{sum}");
        // Weights all 1.0: the plain sum, c = 1; weights below 1 are not scaled up.
        let (plain, c1) = weighted_sum(&per, &[1.0, 1.0]).unwrap();
        assert_eq!(plain.to_scalar::<f32>().unwrap(), 30.0);
        assert_eq!(c1, 1.0);
        let (half, ch) = weighted_sum(&per, &[0.5, 0.25]).unwrap();
        assert_eq!(half.to_scalar::<f32>().unwrap(), 10.0);
        assert_eq!(ch, 1.0);
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
