//! AdamW with decoupled weight decay, per parameter group, with per-row masking for the user
//! logits (PAL-SPEC "Training").
//!
//! Owns: the optimiser state and step. For a row-masked parameter (the user logits W) only the
//! rows given to [`AdamW::step`] change: an absent user's logits do not drift through momentum
//! or weight decay, and each row keeps its own step count for the bias correction — what
//! PyTorch's AdamW does for the reference code's one-parameter-per-user dictionary. Does not
//! own: which rows are present (`train.rs`) or the gradients (candle's backward).
//!
//! The update runs in the parameter's own float type (f32 for trained models, as PyTorch),
//! in place in the variable's storage (a candle in-place op, no copies of the weights), with
//! the moments kept beside it in the same type. Large parameters are split into contiguous
//! chunks updated on separate threads; every element's arithmetic is the same whatever the
//! split, so the same inputs give bit-identical weights. For each element, as PyTorch's AdamW:
//! p ← p·(1 − lr·wd); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
//! p ← p − (lr/(1−β₁ᵗ))·m / (√v/√(1−β₂ᵗ) + ε).

use std::cell::RefCell;
use std::ops::Range;

use candle_core::{backprop::GradStore, CpuStorage, DType, Layout, Tensor, Var};

use super::error::Result;

pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.999;
pub const EPS: f64 = 1e-8;

/// Parameters with at least this many elements are updated on several threads.
const PARALLEL_MIN: usize = 1 << 16;

/// Adam moments in the parameter's float type.
enum Moments {
    F32 { m: Vec<f32>, v: Vec<f32> },
    F64 { m: Vec<f64>, v: Vec<f64> },
}

impl Moments {
    fn new(dtype: DType, n: usize) -> Moments {
        match dtype {
            DType::F64 => Moments::F64 {
                m: vec![0.0; n],
                v: vec![0.0; n],
            },
            _ => Moments::F32 {
                m: vec![0.0; n],
                v: vec![0.0; n],
            },
        }
    }
}

/// One optimised parameter.
struct Slot {
    var: Var,
    lr: f64,
    wd: f64,
    moments: Moments,
    /// Row length when row-masked (`[rows, row_len]`), else `None`.
    row_len: Option<usize>,
    /// Step count per row (one entry when not row-masked).
    steps: Vec<u64>,
}

/// AdamW over a list of parameters, each with its own lr and weight decay.
pub(crate) struct AdamW {
    slots: Vec<Slot>,
}

impl AdamW {
    pub fn new() -> Self {
        AdamW { slots: Vec::new() }
    }

    /// Adds a parameter updated whole at every step.
    pub fn add(&mut self, var: Var, lr: f64, wd: f64) {
        let n = var.elem_count();
        let moments = Moments::new(var.dtype(), n);
        self.slots.push(Slot {
            var,
            lr,
            wd,
            moments,
            row_len: None,
            steps: vec![0],
        });
    }

    /// Adds a 2-D parameter `[rows, row_len]` whose rows are updated only when listed.
    pub fn add_rows(&mut self, var: Var, lr: f64, wd: f64) -> Result<()> {
        let (rows, row_len) = var.as_tensor().dims2()?;
        let moments = Moments::new(var.dtype(), rows * row_len);
        self.slots.push(Slot {
            var,
            lr,
            wd,
            moments,
            row_len: Some(row_len),
            steps: vec![0; rows],
        });
        Ok(())
    }

    /// Sets the learning rate of every parameter (for a schedule that lowers it as the steps
    /// go: a fixed rate leaves Adam's iterates jittering about the optimum by about the rate).
    pub fn set_lr(&mut self, lr: f64) {
        for slot in &mut self.slots {
            slot.lr = lr;
        }
    }

    /// One step. `rows` lists the rows of the row-masked parameters to update (the users
    /// present in the batch; duplicates are ignored). Parameters without a gradient are left
    /// alone.
    pub fn step(&mut self, grads: &GradStore, rows: &[u32]) -> Result<()> {
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            if slot.lr == 0.0 {
                continue;
            }
            slot.step(g, rows)?;
        }
        Ok(())
    }
}

impl Slot {
    fn step(&mut self, g: &Tensor, rows: &[u32]) -> Result<()> {
        // The element ranges to update, each with its step count.
        let ranges: Vec<(Range<usize>, u64)> = match self.row_len {
            None => {
                self.steps[0] += 1;
                vec![(0..self.var.elem_count(), self.steps[0])]
            }
            Some(len) => {
                let mut done = vec![false; self.steps.len()];
                let mut out = Vec::new();
                for &r in rows {
                    let r = r as usize;
                    if r >= done.len() || done[r] {
                        continue;
                    }
                    done[r] = true;
                    self.steps[r] += 1;
                    out.push((r * len..(r + 1) * len, self.steps[r]));
                }
                out
            }
        };
        if ranges.is_empty() {
            return Ok(());
        }
        let t = self.var.as_tensor();
        let (lr, wd) = (self.lr, self.wd);
        // The moments live in host memory, and the update is a CPU kernel: a parameter on a
        // GPU comes to the host with its gradient, is updated there, and goes back (two
        // copies per parameter per step; the same numbers as on the CPU).
        let on_host = t.device().is_cpu();
        let p = if on_host {
            t.clone()
        } else {
            t.to_device(&candle_core::Device::Cpu)?
        };
        let g = g
            .to_device(&candle_core::Device::Cpu)?
            .to_dtype(t.dtype())?
            .contiguous()?;
        match &mut self.moments {
            Moments::F32 { m, v } => p.inplace_op2(&g, &Update::new(m, v, ranges, lr, wd))?,
            Moments::F64 { m, v } => p.inplace_op2(&g, &Update::new(m, v, ranges, lr, wd))?,
        }
        if !on_host {
            self.var.set(&p.to_device(t.device())?)?;
        }
        Ok(())
    }
}

/// Float types the update runs in.
trait Float: candle_core::WithDType + Send + Sync {
    fn of(v: f64) -> Self;
    /// The kernel of one AdamW step in this type ([`palpipe_kernels::adamw_f32`]).
    fn adamw(p: &mut [Self], g: &[Self], m: &mut [Self], v: &mut [Self], k: &Coeffs<Self>);
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
}

impl Float for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn adamw(p: &mut [Self], g: &[Self], m: &mut [Self], v: &mut [Self], k: &Coeffs<Self>) {
        palpipe_kernels::adamw_f32(p, g, m, v, k)
    }
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
}

impl Float for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn adamw(p: &mut [Self], g: &[Self], m: &mut [Self], v: &mut [Self], k: &Coeffs<Self>) {
        palpipe_kernels::adamw_f64(p, g, m, v, k)
    }
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
}

/// The in-place AdamW update of one parameter (candle in-place op: dst = the parameter,
/// src = its gradient), over the given element ranges.
struct Update<'a, T> {
    moments: RefCell<(&'a mut [T], &'a mut [T])>,
    ranges: Vec<(Range<usize>, u64)>,
    lr: f64,
    wd: f64,
}

impl<'a, T: Float> Update<'a, T> {
    fn new(
        m: &'a mut [T],
        v: &'a mut [T],
        ranges: Vec<(Range<usize>, u64)>,
        lr: f64,
        wd: f64,
    ) -> Self {
        Update {
            moments: RefCell::new((m, v)),
            ranges,
            lr,
            wd,
        }
    }
}

impl<T: Float> candle_core::InplaceOp2 for Update<'_, T> {
    fn name(&self) -> &'static str {
        "pal-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("pal-adamw: parameter and gradient must be contiguous")
        };
        let (Some(p), Some(g)) = (T::slice_mut(s1), T::slice(s2)) else {
            candle_core::bail!("pal-adamw: unexpected storage type")
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut guard = self.moments.borrow_mut();
        let (m, v) = &mut *guard;
        if p.len() != g.len() || p.len() != m.len() {
            candle_core::bail!("pal-adamw: shape mismatch")
        }
        for (range, step) in &self.ranges {
            let k = coeffs::<T>(*step, self.lr, self.wd);
            let r = range.clone();
            update_par(
                &mut p[r.clone()],
                &g[r.clone()],
                &mut m[r.clone()],
                &mut v[r],
                &k,
            );
        }
        Ok(())
    }
}

/// The per-step constants of the update (the kernel's type).
type Coeffs<T> = palpipe_kernels::AdamWCoeffs<T>;

/// The constants of step `step` (from 1) at learning rate `lr` and weight decay `wd`.
fn coeffs<T: Float>(step: u64, lr: f64, wd: f64) -> Coeffs<T> {
    let bc1 = 1.0 - BETA1.powi(step as i32);
    let bc2 = 1.0 - BETA2.powi(step as i32);
    Coeffs {
        decay: T::of(1.0 - lr * wd),
        b1: T::of(BETA1),
        one_m_b1: T::of(1.0 - BETA1),
        b2: T::of(BETA2),
        one_m_b2: T::of(1.0 - BETA2),
        step_size: T::of(lr / bc1),
        inv_bc2_sqrt: T::of(1.0 / bc2.sqrt()),
        eps: T::of(EPS),
    }
}

/// One AdamW step ([`Float::adamw`], the kernels crate's loop, built at opt-level 3 even in
/// the dev profile) split into contiguous chunks on separate threads for large parameters.
fn update_par<T: Float>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], k: &Coeffs<T>) {
    let n = p.len();
    let threads = threads();
    if n < PARALLEL_MIN || threads < 2 {
        T::adamw(p, g, m, v, k);
        return;
    }
    let chunk = n.div_ceil(threads);
    std::thread::scope(|s| {
        let parts = p
            .chunks_mut(chunk)
            .zip(g.chunks(chunk))
            .zip(m.chunks_mut(chunk))
            .zip(v.chunks_mut(chunk));
        for (((p, g), m), v) in parts {
            s.spawn(move || T::adamw(p, g, m, v, k));
        }
    });
}

fn threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn absent_rows_do_not_move() {
        let w = Var::from_tensor(&Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap())
            .unwrap();
        let mut opt = AdamW::new();
        opt.add_rows(w.clone(), 0.1, 0.5).unwrap();
        for step in 0..3 {
            let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            // row 1 present only in the first step
            let rows: &[u32] = if step == 0 { &[0, 1] } else { &[0] };
            opt.step(&grads, rows).unwrap();
        }
        let v = w.as_tensor().to_vec2::<f32>().unwrap();
        assert!(v[0][0] < 1.0);
        let after_first = v[1].clone();
        // one step of AdamW from (3, 4): decay then a step of lr against the sign
        let expect = |p: f64| (p * (1.0 - 0.1 * 0.5) - 0.1 * 1.0 / (1.0 + 1e-8 / 1.0)) as f32;
        assert!((after_first[0] - expect(3.0)).abs() < 1e-5);
        assert!((after_first[1] - expect(4.0)).abs() < 1e-5);
    }

    #[test]
    fn threaded_update_matches_the_formula() {
        // large enough to be split across threads
        let n = 3 * PARALLEL_MIN + 5;
        let p0: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) / 10.0).collect();
        let w = Var::from_tensor(&Tensor::new(p0.as_slice(), &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new();
        opt.add(w.clone(), 0.01, 0.1);
        let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&grads, &[]).unwrap();
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        for (i, (&p, &q)) in p0.iter().zip(&got).enumerate() {
            let (p, g) = (p as f64, 2.0 * p as f64);
            let m = 0.1 * g / 0.1;
            let v = (0.001 * g * g / 0.001).sqrt();
            let want = p * (1.0 - 0.01 * 0.1) - 0.01 * m / (v + 1e-8);
            assert!((q as f64 - want).abs() < 1e-5, "element {i}: {q} vs {want}");
        }
    }
}
