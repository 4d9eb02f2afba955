//! palpipe's element-wise hot loops, in their own crate so that they are compiled at
//! `opt-level = 3` even in the dev profile, where palpipe itself is built at `opt-level = 1`
//! for compile time (the root `Cargo.toml` sets this crate's level).
//!
//! Owns: the epilogue of a PAL projector layer (bias, dropout, ReLU) forward and backward,
//! inverted-dropout masks, PAL-B margins in evaluation mode ([`pal_b_margins`]) and training's
//! cosines with their gradients ([`pal_b_cosines`], [`pal_b_cosines_backward`]), the AdamW
//! update ([`adamw_f32`]), and BERT's erf GELU ([`gelu_erf_f32`]). Each function but GELU
//! computes the same operations, in the same order, as the code it stands in for, so results
//! are equal bit for bit: palpipe's `pal::mlp` and `pal::model` tests check the epilogue,
//! masks and margins against candle's ops and element-by-element draws; AdamW, palpipe's
//! former loop, is checked against the formula here. Three exceptions: in a build where candle
//! uses MKL's vector math, [`pal_b_margins`] and [`pal_b_cosines`] may differ from candle's in
//! the last bits (their module says why); [`pal_b_cosines_backward`] is the gradient written
//! out by hand, not candle's chain of backward ops (palpipe's `pal::cosines` tests check it
//! against candle's within rounding); and [`gelu_erf_f32`] is its own approximation of erf,
//! within 1e-6 of the true GELU (tested against libm), not candle's libm-based op bit for bit.
//! No candle here: plain slices.

mod adamw;
mod gelu;
mod margins;

pub use adamw::{adamw_f32, adamw_f64, AdamWCoeffs};
pub use gelu::gelu_erf_f32;
pub use margins::{
    pal_b_cosines, pal_b_cosines_backward, pal_b_margins, sum_like_candle, sums_like_candle,
    CosineGrads, PalBBatch, NORM_EPS2,
};

use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha8Rng;

/// The forward epilogue of a Linear layer, in place: `y ← act((y + b) ⊙ mask)` for `y`
/// `[rows, width]` row by row (the product x Wᵀ already in it), `bias` `[width]`, `mask`
/// `[rows, width]` (dropout's scaled keep values) when given, act ReLU when `relu`.
///
/// Returns, when `relu`, ReLU's gate per element (1 where its input was ≥ 0, as candle's
/// ReLU gradient passes there), for [`epilogue_backward`]; an empty vector otherwise.
///
/// # Panics
/// When `width` is 0 or the lengths disagree (`y` and `mask` of `rows × width`); callers
/// check shapes first and report them as errors.
pub fn epilogue_forward(y: &mut [f32], bias: &[f32], mask: Option<&[f32]>, relu: bool) -> Vec<u8> {
    let width = bias.len();
    assert!(
        width > 0 && y.len().is_multiple_of(width),
        "epilogue: {} outputs for width {width}",
        y.len()
    );
    if let Some(mask) = mask {
        assert_eq!(mask.len(), y.len(), "epilogue: mask length");
    }
    let mut open = if relu { vec![0u8; y.len()] } else { Vec::new() };
    for (r, row) in y.chunks_exact_mut(width).enumerate() {
        let span = r * width..(r + 1) * width;
        let mask_row = mask.map(|m| &m[span.clone()]);
        for (j, v) in row.iter_mut().enumerate() {
            let mut a = *v + bias[j];
            if let Some(m) = mask_row {
                a *= m[j];
            }
            if relu {
                open[span.start + j] = u8::from(a >= 0.0);
                a = a.max(0f32);
            }
            *v = a;
        }
    }
    open
}

/// The backward epilogue of a Linear layer: from the gradient `grad` `[rows, width]` at the
/// layer's output, the gradient at `x Wᵀ + b` (returned first, `[rows, width]`) and the bias
/// gradient (second, `[width]`: its column sums).
///
/// The arithmetic is candle's for the composed graph (ReLU, dropout's multiply, the
/// broadcast add), accumulation included: each node's gradient is `0 + g` (which turns −0
/// into +0), and the bias gradient sums rows in order from +0 as candle's dim-0 sum does.
/// `open` is [`epilogue_forward`]'s gate (`Some` when the layer has ReLU), `mask` its mask.
///
/// # Panics
/// When `width` is 0 or the lengths disagree.
pub fn epilogue_backward(
    grad: &[f32],
    width: usize,
    open: Option<&[u8]>,
    mask: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    assert!(
        width > 0 && grad.len().is_multiple_of(width),
        "epilogue: {} gradients for width {width}",
        grad.len()
    );
    if let Some(open) = open {
        assert_eq!(open.len(), grad.len(), "epilogue: gate length");
    }
    if let Some(mask) = mask {
        assert_eq!(mask.len(), grad.len(), "epilogue: mask length");
    }
    let mut out = vec![0f32; grad.len()];
    let mut db = vec![0f32; width];
    for (r, (g_row, o_row)) in grad
        .chunks_exact(width)
        .zip(out.chunks_exact_mut(width))
        .enumerate()
    {
        let span = r * width..(r + 1) * width;
        let open_row = open.map(|o| &o[span.clone()]);
        let mask_row = mask.map(|m| &m[span]);
        for (j, ((&g, o), acc)) in g_row.iter().zip(o_row).zip(&mut db).enumerate() {
            let mut t = g;
            if let Some(open) = open_row {
                t = 0.0 + t * f32::from(open[j]);
            }
            if let Some(m) = mask_row {
                t = 0.0 + t * m[j];
            }
            let t = 0.0 + t;
            *o = t;
            *acc += t;
        }
    }
    (out, db)
}

/// Inverted-dropout mask values, `n` of them: 0 with probability `p`, `1 / (1 − p)`
/// otherwise, one 64-bit word of `rng` per value, in order; `rng` is left after the last.
///
/// Each value is decided exactly as `rng.random::<f64>() < p` with rand 0.9 (the top 53 bits
/// of the word times 2⁻⁵³), so the masks, and everything trained with them, are the ones an
/// element-by-element draw gives. The words are read in blocks, and for large `n` by up to
/// `threads` threads (at most 16), each seeking ChaCha's stream to its own part
/// (`set_word_pos`): the same words in the same places whatever `threads` is, or whether a
/// thread could be started.
pub fn dropout_mask(rng: &mut ChaCha8Rng, n: usize, p: f64, threads: usize) -> Vec<f32> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let parts = threads
        .clamp(1, 16)
        .min(n.div_ceil(PARALLEL_MIN_DRAWS))
        .max(1);
    if parts == 1 {
        let mut out = vec![0f32; n];
        fill_mask(rng, &mut out, p, keep);
        return out;
    }
    // Two 32-bit words per value; part i starts at value i * chunk.
    let start = rng.get_word_pos();
    let chunk = n.div_ceil(parts);
    let draw_part = |i: usize| {
        let mut r = rng.clone();
        r.set_word_pos(start + 2 * (i * chunk) as u128);
        let mut part = vec![0f32; chunk.min(n - i * chunk)];
        fill_mask(&mut r, &mut part, p, keep);
        part
    };
    let out = std::thread::scope(|s| {
        // Parts 1.. on their own threads (a part whose thread cannot start is drawn here:
        // each part seeks its own place in the stream, so who draws it does not matter).
        let handles: Vec<_> = (1..parts)
            .map(|i| std::thread::Builder::new().spawn_scoped(s, move || draw_part(i)))
            .collect();
        let mut out = draw_part(0);
        out.reserve(n - out.len());
        for (i, handle) in (1..parts).zip(handles) {
            let part = match handle.map(|h| h.join()) {
                Ok(Ok(part)) => part,
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(_) => draw_part(i),
            };
            out.extend_from_slice(&part);
        }
        out
    });
    rng.set_word_pos(start + 2 * n as u128);
    out
}

/// Below this many values a dropout mask is drawn on one thread.
const PARALLEL_MIN_DRAWS: usize = 1 << 16;

/// [`dropout_mask`]'s values for `out`, drawn from `rng` in order.
fn fill_mask(rng: &mut ChaCha8Rng, out: &mut [f32], p: f64, keep: f32) {
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    const BLOCK: usize = 1024;
    let mut bytes = [0u8; 8 * BLOCK];
    for part in out.chunks_mut(BLOCK) {
        let buf = &mut bytes[..8 * part.len()];
        rng.fill_bytes(buf);
        for (v, w) in part.iter_mut().zip(buf.chunks_exact(8)) {
            let word = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            let u = (word >> 11) as f64 * SCALE;
            *v = if u < p { 0.0 } else { keep };
        }
    }
}
