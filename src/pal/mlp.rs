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
        let y = x.apply_op2(self.weight.as_tensor(), LinearOp)?;
        Ok(y.broadcast_add(self.bias.as_tensor())?)
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
        let dw = grad.t()?.matmul(x)?; // [out, n] · [n, in] = [out, in]
        let dx = if x.track_op() {
            Some(grad.matmul(w)?) // [n, out] · [out, in] = [n, in]
        } else {
            None
        };
        Ok((dx, Some(dw)))
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
    /// mask RNG is given (training).
    pub fn forward(&self, x: &Tensor, mut dropout_rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let p = self.arch.dropout();
        let (hidden, last) = self.layers.split_at(self.layers.len() - 1);
        let mut h = x.clone();
        for layer in hidden {
            h = layer.forward(&h)?;
            if let (Some(rng), true) = (dropout_rng.as_deref_mut(), p > 0.0) {
                h = h.mul(&dropout_mask(rng, h.dims(), p, h.dtype(), h.device())?)?;
            }
            h = match self.arch.activation {
                Activation::Relu => h.relu()?,
                Activation::Gelu => h.gelu_erf()?,
                Activation::Linear => h,
            };
        }
        let out = last[0].forward(&h)?;
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

/// Inverted dropout mask: 0 with probability p, 1/(1−p) otherwise.
fn dropout_mask(
    rng: &mut ChaCha8Rng,
    dims: &[usize],
    p: f64,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let keep = 1.0 / (1.0 - p);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            if rng.random::<f64>() < p {
                0.0
            } else {
                keep as f32
            }
        })
        .collect();
    Ok(Tensor::from_vec(v, dims, device)?.to_dtype(dtype)?)
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
}
