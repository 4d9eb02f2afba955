//! AdamW with decoupled weight decay, per parameter group, with per-row masking for the user
//! logits (PAL-SPEC "Training").
//!
//! Owns: the optimiser state and step. For a row-masked parameter (the user logits W) only the
//! rows given to [`AdamW::step`] change: an absent user's logits do not drift through momentum
//! or weight decay, and each row keeps its own step count for the bias correction — what
//! PyTorch's AdamW does for the reference code's one-parameter-per-user dictionary. Does not
//! own: which rows are present (`train.rs`) or the gradients (candle's backward).
//!
//! The update runs in f64 on the host, in a fixed order, so the same inputs give bit-identical
//! weights. For each element: p ← p·(1 − lr·wd); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
//! p ← p − lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε).

use candle_core::{backprop::GradStore, DType, Tensor, Var};

use super::error::Result;

pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.999;
pub const EPS: f64 = 1e-8;

/// One optimised parameter.
struct Slot {
    var: Var,
    lr: f64,
    wd: f64,
    m: Vec<f64>,
    v: Vec<f64>,
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
        self.slots.push(Slot {
            var,
            lr,
            wd,
            m: vec![0.0; n],
            v: vec![0.0; n],
            row_len: None,
            steps: vec![0],
        });
    }

    /// Adds a 2-D parameter `[rows, row_len]` whose rows are updated only when listed.
    pub fn add_rows(&mut self, var: Var, lr: f64, wd: f64) -> Result<()> {
        let (rows, row_len) = var.as_tensor().dims2()?;
        let n = rows * row_len;
        self.slots.push(Slot {
            var,
            lr,
            wd,
            m: vec![0.0; n],
            v: vec![0.0; n],
            row_len: Some(row_len),
            steps: vec![0; rows],
        });
        Ok(())
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
            match slot.var.dtype() {
                DType::F64 => slot.step::<f64>(g, rows)?,
                _ => slot.step::<f32>(g, rows)?,
            }
        }
        Ok(())
    }
}

/// Host element types the update reads and writes (the math itself is f64).
trait Elem: candle_core::WithDType {
    fn to64(self) -> f64;
    fn from64(v: f64) -> Self;
}

impl Elem for f32 {
    fn to64(self) -> f64 {
        self as f64
    }
    fn from64(v: f64) -> Self {
        v as f32
    }
}

impl Elem for f64 {
    fn to64(self) -> f64 {
        self
    }
    fn from64(v: f64) -> Self {
        v
    }
}

impl Slot {
    fn step<T: Elem>(&mut self, g: &Tensor, rows: &[u32]) -> Result<()> {
        let t = self.var.as_tensor();
        let (shape, device) = (t.shape().clone(), t.device().clone());
        let g: Vec<T> = g.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1()?;
        let mut p: Vec<T> = t.flatten_all()?.to_vec1()?;
        match self.row_len {
            None => {
                self.steps[0] += 1;
                let step = self.steps[0];
                update(
                    &mut p,
                    &g,
                    &mut self.m,
                    &mut self.v,
                    0..g.len(),
                    step,
                    self.lr,
                    self.wd,
                );
            }
            Some(len) => {
                let mut done = vec![false; self.steps.len()];
                for &r in rows {
                    let r = r as usize;
                    if r >= done.len() || done[r] {
                        continue;
                    }
                    done[r] = true;
                    self.steps[r] += 1;
                    let step = self.steps[r];
                    update(
                        &mut p,
                        &g,
                        &mut self.m,
                        &mut self.v,
                        r * len..(r + 1) * len,
                        step,
                        self.lr,
                        self.wd,
                    );
                }
            }
        }
        self.var.set(&Tensor::from_vec(p, shape, &device)?)?;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn update<T: Elem>(
    p: &mut [T],
    g: &[T],
    m: &mut [f64],
    v: &mut [f64],
    range: std::ops::Range<usize>,
    step: u64,
    lr: f64,
    wd: f64,
) {
    let bc1 = 1.0 - BETA1.powi(step as i32);
    let bc2 = 1.0 - BETA2.powi(step as i32);
    for i in range {
        let gi = g[i].to64();
        let mut pi = p[i].to64() * (1.0 - lr * wd);
        m[i] = BETA1 * m[i] + (1.0 - BETA1) * gi;
        v[i] = BETA2 * v[i] + (1.0 - BETA2) * gi * gi;
        let m_hat = m[i] / bc1;
        let v_hat = v[i] / bc2;
        pi -= lr * m_hat / (v_hat.sqrt() + EPS);
        p[i] = T::from64(pi);
    }
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
}
