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
//!
//! Also here: the [`GradTape`] a training step records its fused layers' weight and bias
//! gradients on, past candle's gradient store (see there).

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

thread_local! {
    /// False inside [`without_grad`] on this thread.
    static TRACKING: Cell<bool> = const { Cell::new(true) };
    /// The tape layers built on this thread record on, inside [`GradTape::record`].
    static TAPE: RefCell<Option<GradTape>> = const { RefCell::new(None) };
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

/// Parameter gradients handed straight to the optimizer instead of through candle's
/// backward pass.
///
/// candle's backward pass sums every gradient it is given into a tensor it starts from
/// `zeros_like` (`0 + g`): for a `[1024, 1024]` weight that is two fresh 4 MiB tensors, a
/// memset and an addition each step, per weight. A fused layer built inside
/// [`GradTape::record`] returns no gradient for its weight and bias to candle and records
/// them here instead; after `backward`, [`GradTape::drain_into`] puts them into the gradient
/// store under their variables, so the optimizer reads them as before. A parameter used by
/// several fused layers built under the tape is summed here in the order candle's pass would
/// sum it, so the values are candle's; the only difference is that a gradient of −0 stays −0
/// (candle's `0 + g` makes it +0), which an AdamW step cannot tell apart in practice. A
/// parameter also used outside fused layers gets candle's sum plus the tape's, which may
/// differ from candle's order in the last bits (no PAL model does this). The tape sums every
/// backward pass since it was last drained: use one tape per step and drain it after
/// `backward`.
#[derive(Debug, Clone, Default)]
pub(crate) struct GradTape(Arc<Mutex<Vec<(Tensor, Tensor)>>>);

impl GradTape {
    /// Runs `f` with this tape current on this thread: fused layers built inside record their
    /// parameters' gradients on it. The previous tape comes back when `f` returns or unwinds.
    pub(crate) fn record<T>(&self, f: impl FnOnce() -> T) -> T {
        /// Restores the previous tape when dropped.
        struct Restore(Option<GradTape>);
        impl Drop for Restore {
            fn drop(&mut self) {
                TAPE.with(|t| *t.borrow_mut() = self.0.take());
            }
        }
        let _restore = Restore(TAPE.with(|t| t.borrow_mut().replace(self.clone())));
        f()
    }

    /// The tape current on this thread, if any ([`GradTape::record`]).
    pub(crate) fn current() -> Option<GradTape> {
        TAPE.with(|t| t.borrow().clone())
    }

    /// Adds `grad` to what the tape holds for the variable `param` (the first gradient as it
    /// is, later ones summed onto it).
    pub(crate) fn add(&self, param: &Tensor, grad: Tensor) -> candle_core::Result<()> {
        let mut held = self.held()?;
        match held.iter_mut().find(|(p, _)| p.id() == param.id()) {
            Some((_, sum)) => *sum = sum.add(&grad)?,
            None => held.push((param.clone(), grad)),
        }
        Ok(())
    }

    /// Moves the tape's gradients into `grads` under their variables, emptying the tape; a
    /// variable `grads` already holds a gradient for (a use outside the fused layers) gets
    /// the sum.
    pub(crate) fn drain_into(&self, grads: &mut GradStore) -> candle_core::Result<()> {
        let held = std::mem::take(&mut *self.held()?);
        for (param, grad) in held {
            let sum = match grads.remove(&param) {
                Some(other) => other.add(&grad)?,
                None => grad,
            };
            grads.insert(&param, sum);
        }
        Ok(())
    }

    /// The (parameter, gradient) pairs the tape holds, locked.
    fn held(&self) -> candle_core::Result<std::sync::MutexGuard<'_, Vec<(Tensor, Tensor)>>> {
        self.0
            .lock()
            .map_err(|_| candle_core::Error::Msg("gradient tape poisoned".into()))
    }
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
