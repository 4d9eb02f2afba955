//! PAL-B's cosines in training as one autograd node (PAL-SPEC "PAL-B": r_i(x; x_c) =
//! s · ⟨f(x)/‖f(x)‖, z_i/‖z_i‖⟩ with z_i = Σ_k w_ik g_k(x_c)).
//!
//! Owns: [`cosines`], the pair of cosines of each comparison of a batch computed from the
//! distinct rows (f̂ per item, g_k per prompt, w per user) with its gradient written out by
//! hand ([`palpipe_kernels::pal_b_cosines_backward`]). Composed from candle's ops, the same
//! values gather `[B, K, d]` prompt rows, sum them over a middle dimension, normalise, and
//! gather `[B, d]` item rows twice; the backward pass then sweeps a dozen `[B, d]` and
//! `[B, K, d]` tensors, mostly on one thread, and that was about a tenth of a training step
//! where content repeats. Does not own: the scale s (the caller multiplies by it, so τ's
//! gradient stays candle's), δ offsets or the norm-bound penalty (callers with them take the
//! composed ops), or any device but the CPU.
//!
//! The forward values equal the composed ops' bit for bit where candle sums rows with AVX2
//! and the build is not the `mkl` one (there candle's vector math may round the last bits
//! differently; see `palpipe_kernels::margins`), and within rounding elsewhere; the
//! gradients are the same formulas in another order, equal within rounding (tested against
//! candle's backward).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::error::Result;

/// The comparisons of a batch as rows of the distinct tensors the op reads.
struct Cosines {
    d: usize,
    k: usize,
    user: Vec<u32>,
    prompt: Vec<u32>,
    left: Vec<u32>,
    right: Vec<u32>,
}

/// Per comparison c, `[B, 2]`: (⟨f̂(x_l), ẑ⟩, ⟨f̂(x_r), ẑ⟩) where f̂ = `fx` rows `left[c]`
/// and `right[c]` (`fx` `[U, d]`, already normalised), ẑ = z/‖z‖ and
/// z = Σ_k `w`[user[c], k] · `g`[prompt[c], k] (`g` `[Up, K, d]`, `w` `[Uu, K]`).
///
/// `idx` is `[user, prompt, left, right]`, each a u32 column `[B]` of row indices into `w`,
/// `g`, `fx` and `fx`.
///
/// Returns `None` where the op does not apply: a tensor off the CPU or not f32, shapes other
/// than these (K or d of 0 included), or an index past its table's rows (the caller then
/// composes candle's ops, which report a bad index their own way).
///
/// # Errors
/// candle's, where an index column is not a rank-1 u32 tensor or the op fails.
pub(crate) fn cosines(
    fx: &Tensor,
    g: &Tensor,
    w: &Tensor,
    idx: [&Tensor; 4],
) -> Result<Option<Tensor>> {
    let on_cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if !(on_cpu_f32(fx) && on_cpu_f32(g) && on_cpu_f32(w)) || g.rank() != 3 || fx.rank() != 2 {
        return Ok(None);
    }
    let (_, k, d) = g.dims3()?;
    if k == 0 || d == 0 || fx.dim(1)? != d || w.rank() != 2 || w.dim(1)? != k {
        return Ok(None);
    }
    let [user, prompt, left, right] = idx.map(|t| t.to_vec1::<u32>());
    let op = Cosines {
        d,
        k,
        user: user?,
        prompt: prompt?,
        left: left?,
        right: right?,
    };
    let n = op.user.len();
    let fits = |ix: &[u32], rows: usize| ix.len() == n && ix.iter().all(|&i| (i as usize) < rows);
    if !(fits(&op.prompt, g.dim(0)?)
        && fits(&op.user, w.dim(0)?)
        && fits(&op.left, fx.dim(0)?)
        && fits(&op.right, fx.dim(0)?))
    {
        return Ok(None);
    }
    let (fx, g, w) = (fx.contiguous()?, g.contiguous()?, w.contiguous()?);
    Ok(Some(fx.apply_op3(&g, &w, op)?))
}

/// The CPU storage of a tensor's storage.
fn cpu(s: &candle_core::Storage) -> candle_core::Result<&CpuStorage> {
    match s {
        candle_core::Storage::Cpu(c) => Ok(c),
        _ => candle_core::bail!("pal-b-cosines: expected the CPU"),
    }
}

/// The f32 values of a contiguous CPU storage.
fn values<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("pal-b-cosines: expected contiguous f32 values"),
    }
}

impl Cosines {
    /// The kernel's view of the batch over the three inputs' values.
    fn batch<'a>(
        &'a self,
        fx: &'a [f32],
        g: &'a [f32],
        w: &'a [f32],
    ) -> palpipe_kernels::PalBBatch<'a> {
        palpipe_kernels::PalBBatch {
            d: self.d,
            k: self.k,
            fx,
            g,
            w,
            delta: None,
            scale: 1.0,
            user: &self.user,
            prompt: &self.prompt,
            left: &self.left,
            right: &self.right,
        }
    }
}

impl CustomOp3 for Cosines {
    fn name(&self) -> &'static str {
        "pal-b-cosines"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (fx, g, w) = (values(s1, l1)?, values(s2, l2)?, values(s3, l3)?);
        let out = palpipe_kernels::pal_b_cosines(&self.batch(fx, g, w));
        Ok((CpuStorage::F32(out), Shape::from((self.user.len(), 2))))
    }

    fn bwd(
        &self,
        fx: &Tensor,
        g: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want = palpipe_kernels::CosineGrads {
            fx: fx.track_op(),
            g: g.track_op(),
            w: w.track_op(),
        };
        let grad = grad.contiguous()?;
        let (dfx, dg, dw) = {
            // The inputs are the contiguous tensors `cosines` applied the op to.
            let (sf, lf) = fx.storage_and_layout();
            let (sg, lg) = g.storage_and_layout();
            let (sw, lw) = w.storage_and_layout();
            let (sd, ld) = grad.storage_and_layout();
            let (vf, vg, vw) = (
                values(cpu(&sf)?, lf)?,
                values(cpu(&sg)?, lg)?,
                values(cpu(&sw)?, lw)?,
            );
            let vd = values(cpu(&sd)?, ld)?;
            palpipe_kernels::pal_b_cosines_backward(&self.batch(vf, vg, vw), vd, want)
        };
        let dev = fx.device();
        let back = |on: bool, v: Vec<f32>, like: &Tensor| -> candle_core::Result<Option<Tensor>> {
            match on {
                true => Ok(Some(Tensor::from_vec(v, like.dims(), dev)?)),
                false => Ok(None),
            }
        };
        Ok((
            back(want.fx, dfx, fx)?,
            back(want.g, dg, g)?,
            back(want.w, dw, w)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pal::model::{normalize_rows, softmax_rows};
    use candle_core::{DType, Device, Var, D};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rng: &mut ChaCha8Rng, shape: &[usize]) -> Var {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn column(v: &[u32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    /// The node against the same formula composed from candle's ops (the composition
    /// `PalModel` used before it): forward values equal (bit for bit where candle sums rows
    /// with AVX2 and its vector math is its own), and the gradients of fx, g and w equal
    /// within 1e-5 relative to the largest, for a loss that weighs every cosine differently.
    /// Users, prompts and items repeat across comparisons, so the gradients add up over
    /// comparisons; one item row and one prompt row are never used (their gradient is 0).
    #[test]
    fn the_node_gives_the_composed_ops_values_and_gradients() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (d, k) = (40, 3);
        let fx_raw = random(&mut rng, &[5, d]);
        let g = random(&mut rng, &[4, k, d]);
        let logits = random(&mut rng, &[3, k]);
        let user = [0u32, 2, 1, 0, 2, 2, 1];
        let prompt = [1u32, 0, 2, 1, 1, 0, 2];
        let left = [0u32, 1, 3, 2, 0, 3, 1];
        let right = [1u32, 0, 2, 3, 3, 1, 0];
        let weights: Vec<f32> = (0..2 * user.len()).map(|i| 0.3 + i as f32 * 0.7).collect();
        let weights = Tensor::from_vec(weights, (user.len(), 2), &Device::Cpu).unwrap();
        let (u, p, l, r) = (
            column(&user),
            column(&prompt),
            column(&left),
            column(&right),
        );

        let run = |fused: bool| {
            let fx = normalize_rows(fx_raw.as_tensor()).unwrap();
            let w = softmax_rows(logits.as_tensor()).unwrap();
            let cos = if fused {
                cosines(&fx, g.as_tensor(), &w, [&u, &p, &l, &r])
                    .unwrap()
                    .expect("the node applies on the CPU in f32")
            } else {
                let wb = w.index_select(&u, 0).unwrap(); // [B, K]
                let gb = g.as_tensor().index_select(&p, 0).unwrap(); // [B, K, d]
                let z = wb
                    .unsqueeze(2)
                    .unwrap()
                    .broadcast_mul(&gb)
                    .unwrap()
                    .sum(1)
                    .unwrap();
                let zn = normalize_rows(&z).unwrap();
                let side = |idx: &Tensor| {
                    let f = fx.index_select(idx, 0).unwrap();
                    (f * &zn).unwrap().sum_keepdim(D::Minus1).unwrap()
                };
                Tensor::cat(&[side(&l), side(&r)], 1).unwrap()
            };
            let loss = (&cos * &weights).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let grad_of = |v: &Var| flat(grads.get(v.as_tensor()).expect("a gradient"));
            (
                flat(&cos),
                [grad_of(&fx_raw), grad_of(&g), grad_of(&logits)],
            )
        };
        let ((fused, fused_grads), (composed, composed_grads)) = (run(true), run(false));
        assert_eq!(fused.len(), 2 * user.len());
        if palpipe_kernels::sums_like_candle() && !cfg!(feature = "mkl") {
            assert_eq!(fused, composed, "forward values bit for bit");
        } else {
            for (a, b) in fused.iter().zip(&composed) {
                assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
            }
        }
        for (name, (a, b)) in ["fx", "g", "w"]
            .iter()
            .zip(fused_grads.iter().zip(&composed_grads))
        {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{name}: a gradient that is not all zero");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!((x - y).abs() <= 1e-5 * scale, "{name}[{i}]: {x} vs {y}");
            }
        }
        // Item row 4 and prompt row 3 are in no comparison.
        assert!(fused_grads[0][4 * d..5 * d].iter().all(|v| *v == 0.0));
        assert!(fused_grads[1][3 * k * d..].iter().all(|v| *v == 0.0));
    }

    /// Where the node does not apply, `cosines` says so instead of failing: f64 values, and
    /// an index past the rows.
    #[test]
    fn the_node_declines_what_it_cannot_compute() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let fx = random(&mut rng, &[2, 4]).as_tensor().clone();
        let g = random(&mut rng, &[2, 2, 4]).as_tensor().clone();
        let w = random(&mut rng, &[1, 2]).as_tensor().clone();
        let (z, o) = (column(&[0]), column(&[1]));
        let ok = cosines(&fx, &g, &w, [&z, &o, &z, &o]).unwrap();
        assert_eq!(ok.unwrap().dims(), &[1, 2]);
        let f64x = fx.to_dtype(DType::F64).unwrap();
        assert!(cosines(&f64x, &g, &w, [&z, &o, &z, &o]).unwrap().is_none());
        let past = column(&[2]);
        assert!(cosines(&fx, &g, &w, [&z, &past, &z, &o]).unwrap().is_none());
    }
}
