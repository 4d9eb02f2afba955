//! PAL-B margins in evaluation mode (PAL-SPEC "PAL-B"), one comparison at a time.
//!
//! Composed from candle's ops, a batch of B comparisons makes about a dozen `[B, d]` tensors
//! (the gathered item rows, the user's ideal point z, its square, z/‖z‖, the two products)
//! and reads each back once. Here each comparison's z is built in a buffer of d values and
//! used at once.
//!
//! The f32 operations and their order are candle's (0.11) for the same formulas, so the
//! margins are equal bit for bit to the composed ops where candle sums a row with AVX2
//! ([`sums_like_candle`] says whether this machine is one); evaluation takes the composed
//! ops elsewhere, while training's cosines ([`pal_b_cosines`]) use this order on every CPU,
//! which there changes only the rounding. See [`sum_like_candle`]. One exception: built
//! with candle's `mkl` feature, candle sends f32 additions, squares and square roots to
//! MKL's vector math, whose rounding may differ from these IEEE operations, so a margin may
//! differ in its last bits (2 ulp in one of palpipe's test cases); still the same on every
//! run and thread count.

/// One evaluation batch of a PAL-B model with prompts, as flat row-major slices.
///
/// Rows: `fx` has one row per distinct item of the batch, `g` one `[K, d]` block per
/// distinct prompt, `w` (and `delta`) one row per distinct user of the batch; the four index
/// columns, one entry per comparison, point into them.
#[derive(Debug, Clone, Copy)]
pub struct PalBBatch<'a> {
    /// Projector width d (> 0).
    pub d: usize,
    /// Prototypes K (> 0).
    pub k: usize,
    /// f(x)/‖f(x)‖ per distinct item, `[U, d]`.
    pub fx: &'a [f32],
    /// g_k(x_c) per distinct prompt, `[Up, K, d]`.
    pub g: &'a [f32],
    /// Mixture weights per distinct user, `[Uu, K]`.
    pub w: &'a [f32],
    /// Per-user offsets δ added to z (few-shot `offset`), `[Uu, d]`, when given.
    pub delta: Option<&'a [f32]>,
    /// The reward scale s = min(e^τ, 100).
    pub scale: f32,
    /// Per comparison: the user's row of `w`.
    pub user: &'a [u32],
    /// Per comparison: the prompt's block of `g`.
    pub prompt: &'a [u32],
    /// Per comparison: the rows of `fx` of x_l and x_r.
    pub left: &'a [u32],
    pub right: &'a [u32],
}

/// ε² under the square root of a row norm, ‖z‖ = √(Σz² + ε²): palpipe's PAL heads use it
/// in every normalisation. Added as candle adds an f64 scalar to an f32 tensor:
/// `v · 1 + (1e-16 as f32)`.
pub const NORM_EPS2: f64 = 1e-16;

/// Whether candle 0.11 sums f32 rows on this machine in the order [`sum_like_candle`]
/// follows: x86-64 with AVX2, detected at run time as candle does. Elsewhere candle sums in
/// another order (plain on x86-64 without AVX2, NEON lanes on aarch64), and callers of
/// [`pal_b_margins`] that need candle's bits take candle's own ops.
pub fn sums_like_candle() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The margins m = r(x_l) − r(x_r) of every comparison of `b`, in order, where
/// r(x) = s · ⟨f(x)/‖f(x)‖, z/‖z‖⟩ and z = Σ_k w_k g_k(x_c) (+ δ). The same as
/// `reward(left) − reward(right)` of palpipe's `PalModel` composed from candle ops.
///
/// # Panics
/// When d or K is 0, the index columns differ in length, or an index or a slice length
/// does not fit the shapes; callers build `b` from tensors whose shapes they checked.
pub fn pal_b_margins(b: &PalBBatch) -> Vec<f32> {
    check(b);
    let (d, n) = (b.d, b.user.len());
    let mut z = vec![0f32; d];
    let mut tmp = vec![0f32; d];
    let mut out = Vec::with_capacity(n);
    for c in 0..n {
        unit_ideal_point(b, c, &mut z, &mut tmp);
        let rl = cosine(b, b.left[c], &z, &mut tmp) * b.scale;
        let rr = cosine(b, b.right[c], &z, &mut tmp) * b.scale;
        out.push(rl - rr);
    }
    out
}

/// Comparison `c`'s ideal point z = Σ_k w_k g_k (+ δ) normalised, z/‖z‖, into `z`
/// (`tmp` is scratch of d values); returns ‖z‖ = √(Σz² · 1 + ε²). The f32 operations and
/// their order are candle's for `Σ_k` over dim 1 of `[B, K, d]` and `normalize_rows`.
fn unit_ideal_point(b: &PalBBatch, c: usize, z: &mut [f32], tmp: &mut [f32]) -> f32 {
    let (d, k) = (b.d, b.k);
    let u = b.user[c] as usize;
    let p = b.prompt[c] as usize;
    let w = &b.w[u * k..(u + 1) * k];
    let g = &b.g[p * k * d..(p + 1) * k * d];
    // z = Σ_k w_k g_k, summed over k from 0 as candle's sum over dim 1 of [B, K, d].
    z.fill(0.0);
    for (kk, &wk) in w.iter().enumerate() {
        for (zj, &gj) in z.iter_mut().zip(&g[kk * d..(kk + 1) * d]) {
            *zj += wk * gj;
        }
    }
    if let Some(delta) = b.delta {
        for (zj, &dj) in z.iter_mut().zip(&delta[u * d..(u + 1) * d]) {
            *zj += dj;
        }
    }
    // ‖z‖ = sqrt(Σ z² · 1 + ε²), then z/‖z‖.
    for (t, &zj) in tmp.iter_mut().zip(z.iter()) {
        *t = zj * zj;
    }
    let norm = (sum_like_candle(tmp) * 1.0 + NORM_EPS2 as f32).sqrt();
    for zj in z.iter_mut() {
        *zj /= norm;
    }
    norm
}

/// ⟨f(x)/‖f(x)‖, z/‖z‖⟩ for item row `row` of `b.fx` and the unit ideal point `zn`, summed in
/// candle's order (`tmp`: scratch of d values).
fn cosine(b: &PalBBatch, row: u32, zn: &[f32], tmp: &mut [f32]) -> f32 {
    let (d, r) = (b.d, row as usize);
    for ((t, &f), &zj) in tmp.iter_mut().zip(&b.fx[r * d..(r + 1) * d]).zip(zn) {
        *t = f * zj;
    }
    sum_like_candle(tmp)
}

/// Training's PAL-B cosines without the scale: per comparison c of `b`, the pair
/// (⟨f(x_l)/‖f(x_l)‖, z/‖z‖⟩, ⟨f(x_r)/‖f(x_r)‖, z/‖z‖⟩), `[n, 2]` row by row, with
/// z = Σ_k w_k g_k(x_c) (+ δ). `b.scale` is not used: the caller multiplies by s, so that
/// s's gradient stays with its own op. Each value is the one [`pal_b_margins`] multiplies by
/// s, bit for bit.
///
/// # Panics
/// As [`pal_b_margins`].
pub fn pal_b_cosines(b: &PalBBatch) -> Vec<f32> {
    check(b);
    let n = b.user.len();
    let mut z = vec![0f32; b.d];
    let mut tmp = vec![0f32; b.d];
    let mut out = Vec::with_capacity(2 * n);
    for c in 0..n {
        unit_ideal_point(b, c, &mut z, &mut tmp);
        out.push(cosine(b, b.left[c], &z, &mut tmp));
        out.push(cosine(b, b.right[c], &z, &mut tmp));
    }
    out
}

/// Which gradients [`pal_b_cosines_backward`] computes (an input that is data, or frozen,
/// needs none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CosineGrads {
    pub fx: bool,
    pub g: bool,
    pub w: bool,
}

/// The gradients of [`pal_b_cosines`] for the upstream gradient `grad` (`[n, 2]`, the
/// loss's derivative by each cosine): `(d fx [U, d], d g [Up, K, d], d w [Uu, K])`, each
/// empty where `want` says it is not needed. δ gets none (callers with δ take candle's ops).
///
/// Per comparison, with a = grad_l · f̂(x_l) + grad_r · f̂(x_r) the derivative by z/‖z‖:
/// d f̂(x_l) += grad_l · z/‖z‖, d f̂(x_r) += grad_r · z/‖z‖,
/// dz = (a − (z/‖z‖) ⟨z/‖z‖, a⟩) / ‖z‖ (the normalisation's Jacobian),
/// d g_k(x_c) += w_k dz and d w_k += ⟨g_k(x_c), dz⟩. The comparisons are added in order, one
/// thread, so the sums are the same on every run.
///
/// # Panics
/// As [`pal_b_margins`], and when `grad` does not hold 2 values per comparison.
pub fn pal_b_cosines_backward(
    b: &PalBBatch,
    grad: &[f32],
    want: CosineGrads,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    check(b);
    let (d, k, n) = (b.d, b.k, b.user.len());
    assert_eq!(grad.len(), 2 * n, "pal_b_cosines_backward: gradient length");
    let sized = |on: bool, len: usize| if on { vec![0f32; len] } else { Vec::new() };
    let mut dfx = sized(want.fx, b.fx.len());
    let mut dg = sized(want.g, b.g.len());
    let mut dw = sized(want.w, b.w.len());
    if !(want.fx || want.g || want.w) {
        return (dfx, dg, dw);
    }
    let mut zn = vec![0f32; d];
    let mut a = vec![0f32; d];
    for c in 0..n {
        let norm = unit_ideal_point(b, c, &mut zn, &mut a);
        let (gl, gr) = (grad[2 * c], grad[2 * c + 1]);
        let (l, r) = (b.left[c] as usize, b.right[c] as usize);
        let (fl, fr) = (&b.fx[l * d..(l + 1) * d], &b.fx[r * d..(r + 1) * d]);
        let mut dot = 0f32;
        for j in 0..d {
            a[j] = gl * fl[j] + gr * fr[j];
            dot += zn[j] * a[j];
        }
        if want.fx {
            for (x, &v) in dfx[l * d..(l + 1) * d].iter_mut().zip(&zn) {
                *x += gl * v;
            }
            for (x, &v) in dfx[r * d..(r + 1) * d].iter_mut().zip(&zn) {
                *x += gr * v;
            }
        }
        if !(want.g || want.w) {
            continue;
        }
        // a becomes dz.
        for (aj, &v) in a.iter_mut().zip(&zn) {
            *aj = (*aj - v * dot) / norm;
        }
        let (u, p) = (b.user[c] as usize, b.prompt[c] as usize);
        for kk in 0..k {
            let span = (p * k + kk) * d..(p * k + kk + 1) * d;
            if want.g {
                let wk = b.w[u * k + kk];
                for (x, &v) in dg[span.clone()].iter_mut().zip(&a) {
                    *x += wk * v;
                }
            }
            if want.w {
                let gk = &b.g[span];
                dw[u * k + kk] += gk.iter().zip(&a).map(|(x, y)| x * y).sum::<f32>();
            }
        }
    }
    (dfx, dg, dw)
}

/// The shape checks of [`pal_b_margins`].
fn check(b: &PalBBatch) {
    let (d, k) = (b.d, b.k);
    assert!(d > 0 && k > 0, "pal_b_margins: d = {d}, K = {k}");
    let n = b.user.len();
    assert!(
        b.prompt.len() == n && b.left.len() == n && b.right.len() == n,
        "pal_b_margins: index columns of different lengths"
    );
    assert!(
        b.fx.len().is_multiple_of(d)
            && b.g.len().is_multiple_of(k * d)
            && b.w.len().is_multiple_of(k),
        "pal_b_margins: slice lengths do not fit d = {d}, K = {k}"
    );
    if let Some(delta) = b.delta {
        assert_eq!(delta.len() / d, b.w.len() / k, "pal_b_margins: δ rows");
    }
}

/// The sum of `row` in the order candle 0.11 sums a contiguous f32 row with AVX2 (its
/// `cpu::avx::vec_sum`): four 8-lane accumulators over blocks of 32, folded as
/// (a₀ + a₁) + (a₂ + a₃), then the lanes as ((l₀ + l₄) + (l₁ + l₅)) + ((l₂ + l₆) + (l₃ + l₇)),
/// then the last `len mod 32` values one by one. Written in plain Rust; the compiler
/// vectorises the lanes.
pub fn sum_like_candle(row: &[f32]) -> f32 {
    let np = row.len() - row.len() % 32;
    let mut acc = [[0f32; 8]; 4];
    for block in row[..np].chunks_exact(32) {
        for (j, lanes) in acc.iter_mut().enumerate() {
            for (l, a) in lanes.iter_mut().enumerate() {
                *a += block[8 * j + l];
            }
        }
    }
    let mut x = [0f32; 8];
    for (l, v) in x.iter_mut().enumerate() {
        *v = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
    }
    let t0 = [x[0] + x[4], x[1] + x[5], x[2] + x[6], x[3] + x[7]];
    let mut s = (t0[0] + t0[1]) + (t0[2] + t0[3]);
    for &v in &row[np..] {
        s += v;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_fold_in_candles_order() {
        // 1e8 + 1 rounds to 1e8 in f32, so the order decides whether the 1 survives.
        let mut row = vec![0f32; 37];
        row[0] = 1e8; // lane 0 of accumulator 0
        row[1] = 1.0; // lane 1 of accumulator 0
        row[8] = -1e8; // lane 0 of accumulator 1: cancels lane 0 before the lanes meet
        row[36] = 0.5; // the tail, added last

        // candle's order: lane 0 = 1e8 − 1e8 = 0, lane 1 = 1, then + 0.5. In plain order
        // the 1 would be lost: (1e8 + 1) − 1e8 = 0, then 0.5.
        assert_eq!(sum_like_candle(&row), 1.5);
        // Shorter than a block: the plain order from 0.
        assert_eq!(sum_like_candle(&[1.0, 2.0, 3.0]), 6.0);
        assert_eq!(sum_like_candle(&[]), 0.0);
    }

    #[test]
    fn margins_follow_the_formula() {
        // d = 2, K = 2, one prompt, one user, two items; the expected values by hand.
        let b = PalBBatch {
            d: 2,
            k: 2,
            fx: &[1.0, 0.0, 0.0, 1.0],
            g: &[3.0, 0.0, 0.0, 4.0],
            w: &[1.0, 1.0],
            delta: None,
            scale: 2.0,
            user: &[0, 0],
            prompt: &[0, 0],
            left: &[0, 1],
            right: &[1, 1],
        };
        // z = (3, 4), ‖z‖ = 5, z/‖z‖ = (0.6, 0.8): r(x₀) = 1.2, r(x₁) = 1.6.
        let m = pal_b_margins(&b);
        assert!((m[0] - (1.2 - 1.6)).abs() < 1e-6, "{m:?}");
        assert_eq!(m[1], 0.0);
        // An offset δ = (−3, 0) makes z = (0, 4): r(x₀) = 0, r(x₁) = 2.
        let with = PalBBatch {
            delta: Some(&[-3.0, 0.0]),
            ..b
        };
        assert_eq!(pal_b_margins(&with)[0], -2.0);
    }
}
