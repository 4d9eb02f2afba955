//! Projectors: the MLPs f and g_k named by an [`Arch`] string (PAL-SPEC "Projectors").
//!
//! Owns: the layers (Linear → Dropout → activation blocks, a final Linear, optional residual),
//! their PyTorch-style initialisation U(±1/√fan_in) drawn from our own seeded RNG (the CPU
//! device cannot be seeded), and dropout masks drawn from a seeded RNG. Does not own: which
//! projector plays which role (`model.rs`).

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::config::{Activation, Arch};
use super::error::Result;
use super::grad::{param, GradTape};

/// A tensor of `shape` with entries U(−bound, bound) from `rng`.
pub(crate) fn uniform(
    rng: &mut ChaCha8Rng,
    shape: &[usize],
    bound: f64,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    Ok(Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?)
}

/// One Linear layer, y = x Wᵀ + b, W `[out, in]`, b `[out]`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub weight: Var,
    pub bias: Var,
}

impl Linear {
    fn new(
        rng: &mut ChaCha8Rng,
        d_in: usize,
        d_out: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let bound = 1.0 / (d_in as f64).sqrt();
        let weight = Var::from_tensor(&uniform(rng, &[d_out, d_in], bound, dtype, device)?)?;
        let bias = Var::from_tensor(&uniform(rng, &[d_out], bound, dtype, device)?)?;
        Ok(Linear { weight, bias })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // [n, in] · [in, out] → [n, out]
        let y = x.apply_op2(&param(&self.weight), LinearOp)?;
        Ok(y.broadcast_add(&param(&self.bias))?)
    }

    /// `act((x Wᵀ + b) ⊙ mask)` as one autograd node ([`FusedLinear`]): CPU and f32 only.
    /// `mask` holds `rows × out` values row by row; `relu` picks ReLU or no activation.
    fn forward_fused(&self, x: &Tensor, mask: Option<Vec<f32>>, relu: bool) -> Result<Tensor> {
        let op = FusedLinear {
            mask,
            relu,
            relu_open: std::sync::OnceLock::new(),
            tape: GradTape::current(),
        };
        Ok(x.apply_op3(&param(&self.weight), &param(&self.bias), op)?)
    }
}

/// y = x Wᵀ as one autograd node (x `[n, in]`, W `[out, in]`). The same matmul as
/// `x.matmul(&W.t())`, but its backward computes dW = gᵀx directly in W's layout (no
/// transposed copy) and skips dx when x is data (the first layer's input), which candle's
/// generic matmul backward always computes.
struct LinearOp;

impl candle_core::CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "pal-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        linear_fwd(s1, l1, s2, l2)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CudaStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        linear_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // No dW for a detached weight (a projector frozen while its input is trained).
        let dw = match w.track_op() {
            true => Some(grad.t()?.matmul(x)?), // [out, n] · [n, in] = [out, in]
            false => None,
        };
        let dx = if x.track_op() {
            Some(grad.matmul(w)?) // [n, out] · [out, in] = [n, in]
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// x Wᵀ on any backend's storage (the CPU's, or a CUDA GPU's through cuBLAS): one matmul
/// that reads W through a transposed layout instead of copying it.
fn linear_fwd<S: candle_core::backend::BackendStorage>(
    s1: &S,
    l1: &candle_core::Layout,
    s2: &S,
    l2: &candle_core::Layout,
) -> candle_core::Result<(S, candle_core::Shape)> {
    let (&[m, k], &[n, k2]) = (l1.dims(), l2.dims()) else {
        candle_core::bail!("pal-linear: expected 2-D input and weight")
    };
    if k != k2 {
        candle_core::bail!("pal-linear: input width {k} but weight width {k2}")
    }
    let wt = l2.transpose(0, 1)?;
    let out = s1.matmul(s2, (1, m, n, k), l1, &wt)?;
    Ok((out, (m, n).into()))
}

/// One Linear layer with its bias, dropout and activation as a single autograd node on the
/// CPU: y = act((x Wᵀ + b) ⊙ mask), x `[n, in]`, W `[out, in]`, b `[out]`, mask `[n, out]`
/// (optional), act ReLU or the identity.
///
/// The numbers are those of the composed ops (`LinearOp`, `broadcast_add`, `mul`, `relu`)
/// bit for bit, forward and backward: the same f32 operations in the same order, including
/// candle's gradient accumulation (`0 + g`, which only turns −0 into +0), except that under
/// a [`GradTape`] the weight's and bias's gradients skip that accumulation. What it saves is
/// the composed graph's intermediate tensors: each of the three extra nodes allocated and
/// swept an `[n, out]` tensor forward and several backward (candle starts every gradient
/// from `zeros_like` and adds to it), which was a large part of a training step.
struct FusedLinear {
    /// Dropout's scaled keep mask, `n × out` values row by row.
    mask: Option<Vec<f32>>,
    relu: bool,
    /// Set by the forward: 1 where ReLU's input was ≥ 0 (candle's ReLU gradient passes
    /// there), for the backward.
    relu_open: std::sync::OnceLock<Vec<u8>>,
    /// Where the weight's and bias's gradients go when the layer was built inside
    /// [`GradTape::record`] (training); otherwise they go back to candle.
    tape: Option<GradTape>,
}

/// The f32 values a CPU storage holds for a contiguous layout.
fn cpu_f32<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        (candle_core::CpuStorage::F32(_), None) => {
            candle_core::bail!("pal-linear-fused: expected a contiguous tensor")
        }
        _ => candle_core::bail!("pal-linear-fused: expected f32"),
    }
}

impl candle_core::CustomOp3 for FusedLinear {
    fn name(&self) -> &'static str {
        "pal-linear-fused"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (out, shape) = linear_fwd(s1, l1, s2, l2)?;
        let candle_core::CpuStorage::F32(mut y) = out else {
            candle_core::bail!("pal-linear-fused: expected f32")
        };
        let bias = cpu_f32(s3, l3)?;
        let width = bias.len();
        if width == 0 {
            candle_core::bail!("pal-linear-fused: a layer of width 0")
        }
        if y.len() != shape.elem_count() || shape.dims().last() != Some(&width) {
            candle_core::bail!("pal-linear-fused: bias of {width} for an output of {shape:?}")
        }
        if let Some(mask) = &self.mask {
            if mask.len() != y.len() {
                candle_core::bail!(
                    "pal-linear-fused: mask of {} for {} outputs",
                    mask.len(),
                    y.len()
                )
            }
        }
        let open = palpipe_kernels::epilogue_forward(&mut y, bias, self.mask.as_deref(), self.relu);
        if self.relu && self.relu_open.set(open).is_err() {
            // A node's forward runs once; a second run would leave a stale gate.
            candle_core::bail!("pal-linear-fused: forward ran twice")
        }
        Ok((candle_core::CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let width = w.dim(0)?;
        // The gradient at x Wᵀ + b, as the composed graph accumulates it node by node.
        let (g, db) = {
            let (storage, layout) = grad.storage_and_layout();
            let candle_core::Storage::Cpu(s) = &*storage else {
                candle_core::bail!("pal-linear-fused: expected a CPU gradient")
            };
            let g = cpu_f32(s, layout)?;
            let open = match (self.relu, self.relu_open.get()) {
                (true, Some(open)) => Some(open),
                (true, None) => candle_core::bail!("pal-linear-fused: backward before forward"),
                (false, _) => None,
            };
            let lengths_agree = open.is_none_or(|o| o.len() == g.len())
                && self.mask.as_ref().is_none_or(|m| m.len() == g.len());
            if width == 0 || !g.len().is_multiple_of(width) || !lengths_agree {
                candle_core::bail!(
                    "pal-linear-fused: gradient of {} for width {width}",
                    g.len()
                )
            }
            palpipe_kernels::epilogue_backward(
                g,
                width,
                open.map(Vec::as_slice),
                self.mask.as_deref(),
            )
        };
        let g = Tensor::from_vec(g, grad.dims(), grad.device())?;
        let dx = if x.track_op() {
            Some(g.matmul(w)?) // [n, out] · [out, in] = [n, in]
        } else {
            None
        };
        // A detached weight and bias (the projector frozen) get no gradient.
        if !w.track_op() && !b.track_op() {
            return Ok((dx, None, None));
        }
        let db = Tensor::from_vec(db, width, g.device())?;
        let dw = g.t()?.matmul(x)?; // [out, n] · [n, in] = [out, in]
        match &self.tape {
            Some(tape) if w.is_variable() && b.is_variable() => {
                // Detached: the tape must not hold this step's graph (x's op) alive.
                tape.add(w, dw.detach())?;
                tape.add(b, db.detach())?;
                Ok((dx, None, None))
            }
            _ => Ok((dx, Some(dw), Some(db))),
        }
    }
}

/// An MLP projector from `d_in` to `d`.
#[derive(Debug, Clone)]
pub(crate) struct Projector {
    pub arch: Arch,
    pub layers: Vec<Linear>,
}

impl Projector {
    /// Initialises every layer in order (weights then bias, layer by layer) from `rng`.
    pub fn new(
        arch: &Arch,
        d_in: usize,
        d: usize,
        rng: &mut ChaCha8Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(arch.linear_layers());
        let mut fan_in = d_in;
        for _ in 0..arch.linear_layers() {
            layers.push(Linear::new(rng, fan_in, d, dtype, device)?);
            fan_in = d;
        }
        Ok(Projector {
            arch: arch.clone(),
            layers,
        })
    }

    /// Applies the projector to `x` `[n, d_in]` → `[n, d]`. Dropout is active only when a
    /// mask RNG is given (training). On the CPU in f32 with ReLU or no activation, each
    /// layer is one fused autograd node ([`FusedLinear`]); elsewhere (a GPU, f64, GELU) the
    /// layers are composed from candle's own ops. Both give the same numbers bit for bit.
    pub fn forward(&self, x: &Tensor, dropout_rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        self.forward_path(x, dropout_rng, self.fuses(x))
    }

    /// Whether [`Projector::forward`] takes the fused path for `x`.
    fn fuses(&self, x: &Tensor) -> bool {
        x.device().is_cpu() && x.dtype() == DType::F32 && self.arch.activation != Activation::Gelu
    }

    /// [`Projector::forward`] with the path chosen by the caller (`fused` needs the CPU, f32
    /// and ReLU or no activation).
    fn forward_path(
        &self,
        x: &Tensor,
        mut dropout_rng: Option<&mut ChaCha8Rng>,
        fused: bool,
    ) -> Result<Tensor> {
        let p = self.arch.dropout();
        let relu = self.arch.activation == Activation::Relu;
        let (hidden, last) = self.layers.split_at(self.layers.len() - 1);
        let mut h = x.clone();
        for layer in hidden {
            // The mask is drawn for the layer's output [rows, out], row by row, in both paths.
            let mask = match (dropout_rng.as_deref_mut(), p > 0.0) {
                (Some(rng), true) => {
                    let n = h.dim(0)? * layer.weight.dim(0)?;
                    Some(dropout_values(rng, n, p, mask_threads()))
                }
                _ => None,
            };
            if fused {
                h = layer.forward_fused(&h, mask, relu)?;
                continue;
            }
            h = layer.forward(&h)?;
            if let Some(mask) = mask {
                let mask = Tensor::from_vec(mask, h.dims(), h.device())?.to_dtype(h.dtype())?;
                h = h.mul(&mask)?;
            }
            h = match self.arch.activation {
                Activation::Relu => h.relu()?,
                Activation::Gelu => h.gelu_erf()?,
                Activation::Linear => h,
            };
        }
        let out = if fused {
            last[0].forward_fused(&h, None, false)?
        } else {
            last[0].forward(&h)?
        };
        if self.arch.residual {
            Ok((x + out)?)
        } else {
            Ok(out)
        }
    }

    /// The variables with their names under `prefix` (`{prefix}.{layer}.weight|bias`).
    pub fn named_vars(&self, prefix: &str) -> Vec<(String, Var)> {
        let mut out = Vec::with_capacity(2 * self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            out.push((format!("{prefix}.{i}.weight"), l.weight.clone()));
            out.push((format!("{prefix}.{i}.bias"), l.bias.clone()));
        }
        out
    }
}

/// Inverted dropout mask values, `n` of them in row-major order: 0 with probability p,
/// 1/(1−p) otherwise (one `f64` draw from `rng` each, as `rng.random::<f64>() < p`), drawn
/// on up to `threads` threads with the same values whatever their number.
fn dropout_values(rng: &mut ChaCha8Rng, n: usize, p: f64, threads: usize) -> Vec<f32> {
    palpipe_kernels::dropout_mask(rng, n, p, threads)
}

/// Threads for drawing dropout masks: the count candle uses for its matrix products
/// (`RAYON_NUM_THREADS` when set, else the cores this process may run on), at most 8.
fn mask_threads() -> usize {
    candle_core::utils::get_num_threads().min(8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn init_is_seeded_and_bounded() {
        let arch: Arch = "mlp2-gelu-dropout0".parse().unwrap();
        let mut r1 = ChaCha8Rng::seed_from_u64(7);
        let mut r2 = ChaCha8Rng::seed_from_u64(7);
        let a = Projector::new(&arch, 9, 4, &mut r1, DType::F32, &Device::Cpu).unwrap();
        let b = Projector::new(&arch, 9, 4, &mut r2, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(a.layers.len(), 3);
        let wa = a.layers[0]
            .weight
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let wb = b.layers[0]
            .weight
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(wa, wb);
        assert!(wa.iter().all(|w| w.abs() <= 1.0 / 3.0));
        let x = Tensor::ones((5, 9), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(a.forward(&x, None).unwrap().dims(), &[5, 4]);
    }

    #[test]
    fn dropout_only_in_training() {
        let arch: Arch = "mlp1-relu-dropout5".parse().unwrap();
        let mut r = ChaCha8Rng::seed_from_u64(1);
        let p = Projector::new(&arch, 3, 8, &mut r, DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::ones((4, 3), DType::F32, &Device::Cpu).unwrap();
        let e1 = p.forward(&x, None).unwrap().to_vec2::<f32>().unwrap();
        let e2 = p.forward(&x, None).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(e1, e2);
        let mut d = ChaCha8Rng::seed_from_u64(2);
        let t = p
            .forward(&x, Some(&mut d))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_ne!(t, e1);
    }

    /// The fused layers against the composed candle ops they replace: outputs and every
    /// gradient (weights, biases, and the input when it is a variable) equal bit for bit,
    /// with and without dropout, for ReLU and for no activation, with a residual; and with
    /// zero biases and an all-zero input row, where ReLU's input is exactly 0 and its
    /// gradient passes (candle's gate is `≥ 0`), so a `> 0` gate would change the biases'
    /// and the input's gradients.
    #[test]
    fn fused_layers_equal_the_composed_ops_bit_for_bit() {
        for (arch, train, zero_row, x_var) in [
            ("mlp2-relu-dropout5-residual", true, false, true),
            ("mlp2-relu-dropout5-residual", false, false, true),
            ("mlp1-linear-dropout3", true, false, true),
            ("mlp0-relu-dropout0", true, false, true),
            ("mlp2-relu-dropout0-residual", true, true, true),
            ("mlp2-relu-dropout5", true, false, false),
            ("mlp2-relu-dropout5-residual", true, true, true),
        ] {
            let arch: Arch = arch.parse().unwrap();
            let mut init = ChaCha8Rng::seed_from_u64(11);
            let p = Projector::new(&arch, 16, 16, &mut init, DType::F32, &Device::Cpu).unwrap();
            let mut x = uniform(&mut init, &[9, 16], 2.0, DType::F32, &Device::Cpu).unwrap();
            if zero_row {
                for l in &p.layers {
                    l.bias.set(&l.bias.zeros_like().unwrap()).unwrap();
                }
                let zero = Tensor::zeros((1, 16), DType::F32, &Device::Cpu).unwrap();
                x = Tensor::cat(&[&zero, &x.narrow(0, 1, 8).unwrap()], 0).unwrap();
            }
            let x = Var::from_tensor(&x).unwrap();
            let input = if x_var {
                x.as_tensor().clone()
            } else {
                x.as_tensor().detach()
            };
            let c = uniform(&mut init, &[9, 16], 1.0, DType::F32, &Device::Cpu).unwrap();
            let run = |fused: bool| {
                let mut rng = ChaCha8Rng::seed_from_u64(5);
                let y = p
                    .forward_path(&input, train.then_some(&mut rng), fused)
                    .unwrap();
                let grads = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
                let mut got = vec![y.flatten_all().unwrap().to_vec1::<f32>().unwrap()];
                let mut tensors: Vec<Tensor> = p
                    .named_vars("f")
                    .into_iter()
                    .map(|(_, v)| v.as_tensor().clone())
                    .collect();
                if x_var {
                    tensors.push(input.clone());
                } else {
                    assert!(grads.get(&input).is_none(), "no gradient for data");
                }
                for t in tensors {
                    let g = grads.get(&t).expect("a gradient for every variable");
                    got.push(g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                }
                got
            };
            let (fused, composed) = (run(true), run(false));
            assert_eq!(fused.len(), composed.len());
            for (a, b) in fused.iter().zip(&composed) {
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(a),
                    bits(b),
                    "{arch:?}, train {train}, zero row {zero_row}"
                );
            }
            // Not vacuous: the output is not all zeros.
            assert!(fused[0].iter().any(|v| *v != 0.0));
        }
    }

    /// Gradients recorded on a [`GradTape`] equal the ones candle's backward pass returns
    /// without it, value for value (−0 and +0 count as equal: the tape skips candle's `0 + g`),
    /// when the same projector runs twice in one graph (its gradients summed over both uses)
    /// and with dropout; before the tape is drained candle's store holds none of them, and
    /// the drained tape is empty.
    #[test]
    fn a_gradient_tape_gives_candles_gradients() {
        let arch: Arch = "mlp2-relu-dropout5-residual".parse().unwrap();
        let mut init = ChaCha8Rng::seed_from_u64(21);
        let p = Projector::new(&arch, 16, 16, &mut init, DType::F32, &Device::Cpu).unwrap();
        let a = uniform(&mut init, &[7, 16], 2.0, DType::F32, &Device::Cpu).unwrap();
        let b = uniform(&mut init, &[5, 16], 2.0, DType::F32, &Device::Cpu).unwrap();
        let c = uniform(&mut init, &[12, 16], 1.0, DType::F32, &Device::Cpu).unwrap();
        let vars: Vec<Tensor> = p
            .named_vars("f")
            .into_iter()
            .map(|(_, v)| v.as_tensor().clone())
            .collect();
        let run = |tape: Option<&GradTape>| {
            let mut rng = ChaCha8Rng::seed_from_u64(8);
            let mut forward = || {
                let ya = p.forward(&a, Some(&mut rng)).unwrap();
                let yb = p.forward(&b, Some(&mut rng)).unwrap();
                Tensor::cat(&[&ya, &yb], 0).unwrap()
            };
            let y = match tape {
                Some(t) => t.record(forward),
                None => forward(),
            };
            let mut grads = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
            if let Some(t) = tape {
                for v in &vars {
                    assert!(
                        grads.get(v).is_none(),
                        "recorded on the tape, not in candle's"
                    );
                }
                t.drain_into(&mut grads).unwrap();
                let ids = |g: &candle_core::backprop::GradStore| {
                    vars.iter()
                        .map(|v| g.get(v).unwrap().id())
                        .collect::<Vec<_>>()
                };
                let before = ids(&grads);
                t.drain_into(&mut grads).unwrap();
                assert_eq!(ids(&grads), before, "a drained tape adds nothing");
            }
            vars.iter()
                .map(|v| {
                    grads
                        .get(v)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        let tape = GradTape::default();
        let (taped, plain) = (run(Some(&tape)), run(None));
        assert_eq!(taped, plain);
        assert!(plain.iter().all(|g| g.iter().any(|v| *v != 0.0)));
        // Outside `record`, layers give their gradients back to candle.
        assert!(GradTape::current().is_none());
    }

    /// With the projector frozen (its parameters detached by [`super::super::grad::without_grad`]),
    /// an input that is a variable gets the same gradient as with the projector trained, and
    /// the gradient store holds none for the detached weights (a layer that still computed
    /// dW for them would leave it there), on the fused path and the composed one.
    #[test]
    fn a_frozen_projector_passes_the_input_gradient_alone() {
        use super::super::grad::without_grad;
        let arch: Arch = "mlp2-relu-dropout0-residual".parse().unwrap();
        let mut init = ChaCha8Rng::seed_from_u64(5);
        let p = Projector::new(&arch, 16, 16, &mut init, DType::F32, &Device::Cpu).unwrap();
        let x = uniform(&mut init, &[6, 16], 2.0, DType::F32, &Device::Cpu).unwrap();
        let x = Var::from_tensor(&x).unwrap();
        let c = uniform(&mut init, &[6, 16], 1.0, DType::F32, &Device::Cpu).unwrap();
        for fused in [true, false] {
            let grads = |frozen: bool| {
                let forward = || p.forward_path(x.as_tensor(), None, fused).unwrap();
                let y = match frozen {
                    true => without_grad(forward),
                    false => forward(),
                };
                (&y * &c).unwrap().sum_all().unwrap().backward().unwrap()
            };
            let (frozen, trained) = (grads(true), grads(false));
            let dx = |g: &candle_core::backprop::GradStore| {
                let t = g.get(x.as_tensor()).unwrap();
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            assert_eq!(dx(&frozen), dx(&trained), "fused {fused}");
            let vars = p.named_vars("f");
            for (name, v) in &vars {
                assert!(trained.get(v.as_tensor()).is_some(), "{name}");
            }
            // None for the detached copies: of the weights and biases on the fused path, of
            // the weights on the composed one (there candle's own `broadcast_add` still
            // gives the detached biases a gradient).
            let skipped = if fused { vars.len() } else { vars.len() / 2 };
            assert_eq!(
                frozen.get_ids().count(),
                trained.get_ids().count() - skipped,
                "fused {fused}"
            );
        }
    }

    /// The block-wise dropout draw against the element-by-element one it replaced
    /// (`rng.random::<f64>() < p` per value): the same masks, and the RNG left at the same
    /// place, for lengths around the block size and an RNG whose position is odd in 32-bit
    /// words (a 64-bit draw across two ChaCha blocks).
    #[test]
    fn dropout_masks_equal_element_by_element_draws() {
        use rand::RngCore;
        let by_element = |rng: &mut ChaCha8Rng, n: usize, p: f64| -> Vec<f32> {
            let keep = (1.0 / (1.0 - p)) as f32;
            (0..n)
                .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
                .collect()
        };
        for (n, p, skew) in [
            (0, 0.5, 0),
            (1, 0.5, 1),
            (7, 0.3, 0),
            (1024, 0.5, 1),
            (1025, 0.5, 0),
            (3001, 0.1, 1),
            (5000, 0.999, 3),
            (200_003, 0.5, 1),
            (300_000, 0.25, 0),
        ] {
            let mut a = ChaCha8Rng::seed_from_u64(9);
            let mut b = ChaCha8Rng::seed_from_u64(9);
            for _ in 0..skew {
                a.next_u32();
                b.next_u32();
            }
            // Three threads for a large mask: parts of the stream drawn apart, then joined.
            let got = dropout_values(&mut a, n, p, 3);
            let want = by_element(&mut b, n, p);
            assert_eq!(got.len(), n);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "n {n}, p {p}, skew {skew}");
            for _ in 0..100 {
                assert_eq!(a.next_u64(), b.next_u64(), "the RNG moved on alike");
            }
            let again = dropout_values(&mut a, 70_001, p, 2);
            assert_eq!(bits(&again), bits(&by_element(&mut b, 70_001, p)));
            assert_eq!(a, b, "the same stream position");
            if n > 100 {
                let dropped = got.iter().filter(|v| **v == 0.0).count() as f64 / n as f64;
                assert!((dropped - p).abs() < 0.05, "dropped {dropped} for p {p}");
            }
        }
    }

    /// A large mask is the same whatever the number of threads drawing it.
    #[test]
    fn dropout_masks_do_not_depend_on_threads() {
        let draw = |threads: usize| {
            let mut r = ChaCha8Rng::seed_from_u64(4);
            let mask = dropout_values(&mut r, 1_000_003, 0.5, threads);
            (mask.iter().map(|f| f.to_bits()).collect::<Vec<_>>(), r)
        };
        let (one, r1) = draw(1);
        for threads in [0, 2, 3, 16, 64] {
            let (many, r) = draw(threads);
            assert!(one == many, "{threads} threads");
            assert_eq!(r, r1, "{threads} threads: the same stream position");
        }
    }

    /// `forward` takes the fused path on the CPU in f32 with ReLU or no activation, and the
    /// composed one for GELU or f64.
    #[test]
    fn the_cpu_takes_the_fused_path() {
        let mut init = ChaCha8Rng::seed_from_u64(3);
        let f32x = Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap();
        let f64x = Tensor::ones((2, 4), DType::F64, &Device::Cpu).unwrap();
        for (arch, x, want) in [
            ("mlp1-relu-dropout0", &f32x, true),
            ("mlp1-linear-dropout1", &f32x, true),
            ("mlp1-gelu-dropout0", &f32x, false),
            ("mlp1-relu-dropout0", &f64x, false),
        ] {
            let arch: Arch = arch.parse().unwrap();
            let p = Projector::new(&arch, 4, 4, &mut init, x.dtype(), &Device::Cpu).unwrap();
            assert_eq!(p.fuses(x), want, "{arch:?} {:?}", x.dtype());
        }
    }
}
