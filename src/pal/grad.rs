//! Whether the model's parameters take part in autograd, per thread, like PyTorch's
//! `torch.no_grad()`.
//!
//! candle records an operation's inputs in its output whenever an input is a variable or was
//! itself recorded, so a forward pass from the parameters (`Var`s) keeps every intermediate
//! tensor alive until its final output is dropped. Training needs that graph; evaluation and
//! scoring do not. Inside [`without_grad`], [`param`] hands out the parameters detached, so
//! candle records nothing and an intermediate is freed when its last handle goes, usually
//! right after the next operation. The numbers computed are the same bit for bit: only what
//! is kept for a backward pass changes. The switch is the calling thread's: a thread started
//! inside [`without_grad`] tracks again (none is; candle's own worker threads never call
//! [`param`]).

use std::cell::Cell;

use candle_core::{Tensor, Var};

thread_local! {
    /// False inside [`without_grad`] on this thread.
    static TRACKING: Cell<bool> = const { Cell::new(true) };
}

/// A parameter as it enters a computation: the variable itself (gradients reach it), or
/// inside [`without_grad`] a detached view of the same storage (no copy, no gradient).
pub(crate) fn param(v: &Var) -> Tensor {
    if TRACKING.with(Cell::get) {
        v.as_tensor().clone()
    } else {
        v.as_tensor().detach()
    }
}

/// Runs `f` with the parameters detached on this thread ([`param`]); the previous state comes
/// back when `f` returns or unwinds, so calls nest. For evaluation paths only: a loss built
/// inside has no gradient for any parameter.
pub(crate) fn without_grad<T>(f: impl FnOnce() -> T) -> T {
    /// Restores the tracking state when dropped.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            TRACKING.with(|t| t.set(self.0));
        }
    }
    let _restore = Restore(TRACKING.with(|t| t.replace(false)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn parameters_are_detached_only_inside_and_the_state_nests() {
        let v = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        // Outside: the variable itself, so a loss from it has a gradient for it.
        let loss = param(&v).sqr().unwrap().sum_all().unwrap();
        assert!(loss.backward().unwrap().get(v.as_tensor()).is_some());
        let inner = without_grad(|| {
            let nested = without_grad(|| param(&v).track_op());
            // Still detached after the nested call returned.
            (
                nested,
                param(&v).track_op(),
                param(&v).sqr().unwrap().track_op(),
            )
        });
        assert_eq!(inner, (false, false, false));
        // The state is back after the call.
        assert!(param(&v).track_op());
        // And after a panic inside.
        let caught = std::panic::catch_unwind(|| without_grad(|| panic!("inside")));
        assert!(caught.is_err());
        assert!(param(&v).track_op());
    }
}
