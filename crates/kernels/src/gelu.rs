//! GELU in its exact (erf) form, `gelu(x) = x·Φ(x) = ½·x·(1 + erf(x/√2))` (Hendrycks &
//! Gimpel 2016), BERT's `hidden_act: "gelu"`, written so that LLVM vectorises the loop: no
//! libm call and no branch per element. candle's own `gelu_erf` calls libm's scalar `erff`
//! once per element; in MiniLM that was 44% of the main thread's samples under `perf`.
//!
//! Φ goes through the complementary error function of z = |x|/√2 ≥ 0, in the Chebyshev-fitted
//! form of Numerical Recipes (2nd ed., §6.2, `erfcc`), whose fractional error is below
//! 1.2·10⁻⁷ for every z ≥ 0:
//!
//! `erfc(z) ≈ t·exp(−z² + P(t))`, `t = 1/(1 + z/2)`, P of degree 9 (its coefficients below).
//!
//! Then `gelu(x) = x·(1 − erfc(z)/2)` for x ≥ 0 and `x·erfc(z)/2` for x < 0: no cancellation
//! on either side (far out on the negative side `1 + erf` would lose every digit). The
//! accuracy is tested against libm's f64 `erfc`; what limits it is the f32 rounding of the
//! exponent −z² + P(t), whose absolute error becomes a relative error of e^(…).

use std::f32::consts::{FRAC_1_SQRT_2, LOG2_E};

/// P(t) of `erfcc`, highest degree first (Horner's scheme runs from here). Written as
/// published; f32 keeps the nearest value of each.
#[allow(clippy::excessive_precision)]
const ERFC_P: [f32; 10] = [
    0.170_872_77,
    -0.822_152_23,
    1.488_515_87,
    -1.135_203_98,
    0.278_868_07,
    -0.186_288_06,
    0.096_784_18,
    0.374_091_96,
    1.000_023_68,
    -1.265_512_23,
];

/// `y = gelu(x)` element by element, exact (erf) form, for equal-length slices.
///
/// Relative error below 10⁻⁶ for x ≥ −4 and absolute error below 10⁻⁹ for x < −4 (where
/// |y| < 1.3·10⁻⁴); candle's libm-based `gelu_erf` is within a few ulp of the true value,
/// so the two differ in the last bits. NaN gives NaN, +∞ gives +∞ and −∞ gives NaN (−∞·0, as
/// candle's). On x86-64 the loop runs 16 lanes wide with AVX-512, 8 with AVX2 and FMA
/// (detected at run time), else 4; the result is the same bit for bit on every path (the same
/// IEEE operations, none fused).
///
/// # Panics
/// When the slices' lengths differ.
pub fn gelu_erf_f32(x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "gelu: slices of different lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for (checked above).
            unsafe { gelu_avx512(x, y) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            unsafe { gelu_avx2(x, y) };
            return;
        }
    }
    gelu_plain(x, y);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gelu_avx512(x: &[f32], y: &mut [f32]) {
    gelu_loop(x, y);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gelu_avx2(x: &[f32], y: &mut [f32]) {
    gelu_loop(x, y);
}

#[inline(never)]
fn gelu_plain(x: &[f32], y: &mut [f32]) {
    gelu_loop(x, y);
}

#[inline(always)]
fn gelu_loop(x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = gelu(v);
    }
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    let z = x.abs() * FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    // z² as x²/2: one rounding instead of two.
    let z2 = x * x * 0.5;
    let mut p = ERFC_P[0];
    for &c in &ERFC_P[1..] {
        p = p * t + c;
    }
    let half_erfc = 0.5 * t * exp_at_most_one(p - z2);
    if x >= 0.0 {
        x * (1.0 - half_erfc)
    } else {
        x * half_erfc
    }
}

/// e^y for y ≤ ~0.7 (here y = P(t) − z² ≤ 3·10⁻⁸), with relative error near one ulp down
/// to y = −87; below that the result is e^−87 ≈ 1.6·10⁻³⁸ instead of a smaller number, which
/// changes no GELU value by more than 10⁻³⁷.
///
/// y = n·ln 2 + r with n = round(y/ln 2) and |r| ≤ ln 2 / 2 (ln 2 split in two parts, so that
/// r is exact to f32 precision); e^r by its Taylor series to r⁷ (remainder below 6·10⁻⁹ of the
/// value); 2ⁿ from the exponent bits.
#[inline(always)]
fn exp_at_most_one(y: f32) -> f32 {
    // ln 2 = LN2_HI + LN2_LO, LN2_HI with few mantissa bits so that n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to an integer, held in the low mantissa bits (|n| < 2²²).
    const SHIFT: f32 = 12_582_912.0;
    let y = y.max(-87.0);
    let k = y * LOG2_E + SHIFT;
    let n = k - SHIFT;
    let r = (y - n * LN2_HI) - n * LN2_LO;
    let e_r = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    // n + 127 (the biased exponent) in the exponent field; wrapping arithmetic, so that
    // no overflow check (on in the dev profile) stops the loop from vectorising.
    let biased = k.to_bits().wrapping_sub(SHIFT.to_bits()).wrapping_add(127);
    let two_n = f32::from_bits(biased << 23);
    e_r * two_n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GELU in f64 from libm's erfc, the same split by sign (no cancellation).
    fn reference(x: f64) -> f64 {
        let c = libm::erfc(x.abs() / std::f64::consts::SQRT_2);
        if x >= 0.0 {
            x * (1.0 - 0.5 * c)
        } else {
            x * 0.5 * c
        }
    }

    #[test]
    fn gelu_is_within_its_stated_error_of_libm() {
        // Every 1/4096 from −14 to 14 (GELU(−14) ≈ −1e−43 is subnormal beyond).
        let xs: Vec<f32> = (-14 * 4096..=14 * 4096)
            .map(|i| i as f32 / 4096.0)
            .collect();
        let mut ys = vec![0f32; xs.len()];
        gelu_erf_f32(&xs, &mut ys);
        let (mut worst_rel, mut worst_abs) = ((0f64, 0f32), (0f64, 0f32));
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = reference(x as f64);
            let abs = (y as f64 - want).abs();
            if x < -4.0 && abs > worst_abs.0 {
                worst_abs = (abs, x);
            }
            if x >= -4.0 && want != 0.0 && abs / want.abs() > worst_rel.0 {
                worst_rel = (abs / want.abs(), x);
            }
        }
        eprintln!(
            "gelu: worst relative error {worst_rel:?} (x ≥ −4), absolute {worst_abs:?} (x < −4)"
        );
        assert!(
            worst_rel.0 < 1e-6,
            "relative error {:.2e} at x = {}",
            worst_rel.0,
            worst_rel.1
        );
        assert!(
            worst_abs.0 < 1e-9,
            "absolute error {:.2e} at x = {}",
            worst_abs.0,
            worst_abs.1
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_wide_loops_give_the_plain_loops_bits() {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            eprintln!("skip: this CPU has no AVX2/FMA");
            return;
        }
        // A spread of values, then the edges: infinities, NaN, ±0, huge, subnormal.
        let mut xs: Vec<f32> = (0..100_003)
            .map(|i| (i as f32 * 0.618_034).sin() * 12.0)
            .collect();
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            0.0,
            -0.0,
            1e30,
            -1e30,
            1e-40,
            -1e-40,
        ]);
        let same = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .all(|(p, q)| p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()))
        };
        let mut plain = vec![0f32; xs.len()];
        gelu_plain(&xs, &mut plain);
        let mut wide = vec![f32::NAN; xs.len()];
        // SAFETY: the features were detected above.
        unsafe { gelu_avx2(&xs, &mut wide) };
        assert!(
            same(&wide, &plain),
            "the AVX2 loop and the plain loop differ"
        );
        if std::arch::is_x86_feature_detected!("avx512f") {
            wide.fill(f32::NAN);
            // SAFETY: detected just above.
            unsafe { gelu_avx512(&xs, &mut wide) };
            assert!(
                same(&wide, &plain),
                "the AVX-512 loop and the plain loop differ"
            );
        } else {
            eprintln!("this CPU has no AVX-512: that loop is not checked");
        }
    }

    #[test]
    #[allow(clippy::excessive_precision)]
    fn known_values_and_edges() {
        let xs = [0.0f32, 1.0, -1.0, 3.0, -3.0, 30.0, -30.0, f32::NAN];
        let mut ys = [9f32; 8];
        gelu_erf_f32(&xs, &mut ys);
        // Φ(1) = 0.841344746…, Φ(−3) = 0.001349898… (normal tables).
        assert_eq!(ys[0], 0.0);
        assert!((ys[1] - 0.841_344_75).abs() < 1e-6, "{}", ys[1]);
        assert!((ys[2] + 0.158_655_25).abs() < 1e-6, "{}", ys[2]);
        assert!((ys[4] + 3.0 * 0.001_349_898).abs() < 1e-8, "{}", ys[4]);
        assert_eq!(ys[5], 30.0);
        assert!(ys[6] <= 0.0 && ys[6] > -1e-36, "{}", ys[6]);
        assert!(ys[7].is_nan());
    }
}
