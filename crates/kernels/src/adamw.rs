//! The AdamW update of one contiguous run of parameters (PAL-SPEC "Training": AdamW with
//! decoupled weight decay), element by element: each element's new value depends on its own
//! parameter, gradient and two moments only, so the loop vectorises without changing a bit.

/// The per-step constants of an AdamW update, in the float type of the parameters.
///
/// For step t (counted from 1) with learning rate lr and weight decay wd:
/// `decay = 1 − lr·wd`, `step_size = lr / (1 − β1ᵗ)`, `inv_bc2_sqrt = 1 / √(1 − β2ᵗ)`.
#[derive(Debug, Clone, Copy)]
pub struct AdamWCoeffs<T> {
    pub decay: T,
    pub b1: T,
    pub one_m_b1: T,
    pub b2: T,
    pub one_m_b2: T,
    pub step_size: T,
    pub inv_bc2_sqrt: T,
    pub eps: T,
}

macro_rules! adamw {
    ($name:ident, $t:ty) => {
        /// One AdamW step in place over equal-length slices: parameters `p`, gradients `g`,
        /// first and second moments `m`, `v`:
        /// `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
        /// `p ← p·decay − step_size · m / (√v · inv_bc2_sqrt + eps)`.
        ///
        /// # Panics
        /// When the slices' lengths differ.
        #[inline(never)]
        pub fn $name(p: &mut [$t], g: &[$t], m: &mut [$t], v: &mut [$t], k: &AdamWCoeffs<$t>) {
            let n = p.len();
            assert!(
                g.len() == n && m.len() == n && v.len() == n,
                "adamw: slices of different lengths"
            );
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *m = k.b1 * *m + k.one_m_b1 * g;
                *v = k.b2 * *v + k.one_m_b2 * (g * g);
                let denom = v.sqrt() * k.inv_bc2_sqrt + k.eps;
                *p = *p * k.decay - k.step_size * (*m / denom);
            }
        }
    };
}

adamw!(adamw_f32, f32);
adamw!(adamw_f64, f64);

#[cfg(test)]
mod tests {
    use super::*;

    /// Two steps on three elements against the formula written out by hand in f64.
    #[test]
    fn two_steps_follow_the_formula() {
        let (lr, wd, b1, b2, eps) = (0.01f64, 0.1, 0.9, 0.999, 1e-8);
        let coeffs = |t: i32| AdamWCoeffs {
            decay: 1.0 - lr * wd,
            b1,
            one_m_b1: 1.0 - b1,
            b2,
            one_m_b2: 1.0 - b2,
            step_size: lr / (1.0 - b1.powi(t)),
            inv_bc2_sqrt: 1.0 / (1.0 - b2.powi(t)).sqrt(),
            eps,
        };
        let mut p = vec![1.0f64, -2.0, 0.5];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        let grads = [[0.5f64, -1.0, 0.0], [0.25, 2.0, -3.0]];
        adamw_f64(&mut p, &grads[0], &mut m, &mut v, &coeffs(1));
        adamw_f64(&mut p, &grads[1], &mut m, &mut v, &coeffs(2));
        for i in 0..3 {
            let (g1, g2) = (grads[0][i], grads[1][i]);
            let (m1, v1) = (0.1 * g1, 0.001 * g1 * g1);
            let p1 =
                [1.0, -2.0, 0.5][i] * (1.0 - lr * wd) - lr / 0.1 * m1 / ((v1 / 0.001).sqrt() + eps);
            let (m2, v2) = (0.9 * m1 + 0.1 * g2, 0.999 * v1 + 0.001 * g2 * g2);
            let bc1 = 1.0 - 0.9f64 * 0.9;
            let bc2 = 1.0 - 0.999f64 * 0.999;
            let p2 = p1 * (1.0 - lr * wd) - lr / bc1 * m2 / ((v2 / bc2).sqrt() + eps);
            assert!((p[i] - p2).abs() < 1e-12, "element {i}: {} vs {p2}", p[i]);
            assert!((m[i] - m2).abs() < 1e-15 && (v[i] - v2).abs() < 1e-15);
        }
    }
}
