//! The trainer (PAL-SPEC "Training"; paper Sec. 3, reference code's Lightning loop).
//!
//! Owns: [`train`] — shuffled mini-batches of comparisons (not ordered by user), the batch loss
//! Σ w·ℓ(t) / Σ w (the plain mean when the weights are equal; see `loss::weighted_mean`) (+ the optional norm-bound penalty), AdamW per parameter group with the user
//! logits updated only for the batch's users, seeded dropout, checkpoint selection by the lowest
//! validation loss, and progress reporting. Everything random derives from
//! [`TrainConfig::seed`], so the same config, data and seed give bit-identical weights.
//! Does not own: the model math (`model.rs`) or evaluation metrics (`evaluate.rs`).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::config::{ModelConfig, Select, TrainConfig};
use super::data::ComparisonSet;
use super::error::Result;
use super::grad::GradTape;
use super::loss;
use super::model::{rng, stream, Group, PalModel};
use super::optim::AdamW;

/// Reported after every step (and once more at the end of each epoch, with `epoch_end`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainProgress {
    /// 1-based epoch.
    pub epoch: usize,
    pub epochs: usize,
    /// Steps done so far, over all epochs.
    pub step: usize,
    pub total_steps: usize,
    /// Loss of the last batch.
    pub batch_loss: f64,
    /// Mean batch loss so far in this epoch.
    pub epoch_loss: f64,
    /// Validation loss, on the end-of-epoch report when there is a validation set.
    pub val_loss: Option<f64>,
    pub epoch_end: bool,
}

/// One epoch of history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    /// Mean training batch loss over the epoch (training mode).
    pub train_loss: f64,
    /// Validation loss (evaluation mode), when there is a validation set.
    pub val_loss: Option<f64>,
}

/// What training did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub epochs: Vec<EpochRecord>,
    /// The epoch whose weights were kept (1-based).
    pub best_epoch: usize,
    pub best_val_loss: Option<f64>,
    pub steps: usize,
    pub n_train: usize,
    pub n_val: usize,
    pub n_users: usize,
    pub params: usize,
    /// Wall-clock seconds (not part of the reproducible output).
    pub seconds: f64,
    /// Where the training steps spent their wall-clock time (not saved, not reproducible).
    #[serde(skip)]
    pub phases: PhaseTimes,
}

/// Wall-clock seconds spent in each part of the training steps, summed over all steps
/// (timing only; used by `palpipe bench-pal`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseTimes {
    /// Gathering the batch's distinct rows into tensors.
    pub gather: f64,
    /// Forward pass through the loss.
    pub forward: f64,
    /// Backward pass (candle's autograd).
    pub backward: f64,
    /// The AdamW update.
    pub optimizer: f64,
    /// Reading the batch loss back and reporting progress.
    pub other: f64,
}

/// Trains a PAL model (f32) on `data`; `val` (optional) picks the checkpoint. The model's
/// users are `data.user_ids`, rows in that order; dims left 0 in `model_cfg` are taken from
/// the data. `progress` is called after every step.
pub fn train(
    model_cfg: &ModelConfig,
    train_cfg: &TrainConfig,
    data: &ComparisonSet,
    val: Option<&ComparisonSet>,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<(PalModel, TrainReport)> {
    train_on(model_cfg, train_cfg, data, val, progress, &Device::Cpu)
}

/// [`train`] on a chosen device: the CPU, or a CUDA GPU in a build with the `cuda` feature
/// (`palpipe bench-pal --device cuda`). The same seed gives the same initial values and the
/// same batches on both; the trained weights differ in the last bits (other kernels).
pub fn train_on(
    model_cfg: &ModelConfig,
    train_cfg: &TrainConfig,
    data: &ComparisonSet,
    val: Option<&ComparisonSet>,
    progress: &mut dyn FnMut(TrainProgress),
    device: &Device,
) -> Result<(PalModel, TrainReport)> {
    train_dtype(
        model_cfg,
        train_cfg,
        data,
        val,
        progress,
        DType::F32,
        device,
    )
}

/// [`train`] with a chosen float type.
fn train_dtype(
    model_cfg: &ModelConfig,
    train_cfg: &TrainConfig,
    data: &ComparisonSet,
    val: Option<&ComparisonSet>,
    progress: &mut dyn FnMut(TrainProgress),
    dtype: DType,
    device: &Device,
) -> Result<(PalModel, TrainReport)> {
    let started = Instant::now();
    train_cfg.validate()?;
    data.validate()?;
    let mut cfg = model_cfg.clone();
    cfg.resolve_dims(data.dx, data.dp)?;
    cfg.validate()?;
    if let Some(v) = val {
        v.validate()?;
    }
    let mut model = PalModel::new_on(cfg, data.user_ids.clone(), train_cfg.seed, dtype, device)?;
    if let Some(v) = val {
        model.check_dims(v)?;
    }
    model.train_cfg = Some(train_cfg.clone());

    let mut opt = AdamW::new();
    for p in model.params() {
        let g = match p.group {
            Group::Projectors => &train_cfg.projectors,
            Group::UserLogits => &train_cfg.user_logits,
            Group::Prototypes => &train_cfg.prototypes,
            Group::Scale => &train_cfg.scale,
        };
        match p.group {
            Group::UserLogits => opt.add_rows(p.var, g.lr, g.weight_decay)?,
            _ => opt.add(p.var, g.lr, g.weight_decay),
        }
    }

    let mut shuffle_rng = rng(train_cfg.seed, stream::SHUFFLE);
    let mut dropout_rng = rng(train_cfg.seed, stream::DROPOUT);
    let n = data.comps.len();
    let steps_per_epoch = n.div_ceil(train_cfg.batch_size);
    let total_steps = steps_per_epoch.saturating_mul(train_cfg.epochs);
    let mut order: Vec<usize> = (0..n).collect();
    let mut history = Vec::with_capacity(train_cfg.epochs.min(1 << 12));
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    let mut step = 0;
    let mut phases = PhaseTimes::default();

    // On a GPU the kernels run asynchronously: each phase timer waits for its work (a no-op
    // on the CPU), so the phases say where the time went.
    let dev = model.device.clone();
    for epoch in 1..=train_cfg.epochs {
        order.shuffle(&mut shuffle_rng);
        let mut loss_sum = 0.0;
        for (i, chunk) in order.chunks(train_cfg.batch_size).enumerate() {
            let t0 = Instant::now();
            let batch = model.gather(data, chunk, &|u| u)?;
            dev.synchronize()?;
            let t1 = Instant::now();
            let users = Tensor::new(batch.users.as_slice(), &model.device)?;
            let logits = model.logits.as_tensor().index_select(&users, 0)?; // [Uu, K]
            let w = model.train_mixture(&logits)?;
            // The projectors' weight and bias gradients go straight to the optimizer.
            let tape = GradTape::default();
            let (m, penalty) = tape.record(|| model.margins(&batch, &w, Some(&mut dropout_rng)))?;
            let t = loss::agreement(&m, &batch.y)?;
            let per = loss::per_comparison(model.cfg.loss, &t)?;
            let mut l = loss::weighted_mean(&per, &batch.weights)?;
            if let Some(p) = penalty {
                l = (l + p)?;
            }
            dev.synchronize()?;
            let t2 = Instant::now();
            let mut grads = l.backward()?;
            tape.drain_into(&mut grads)?;
            dev.synchronize()?;
            let t3 = Instant::now();
            opt.step(&grads, &batch.users)?;
            drop(grads);
            dev.synchronize()?;
            let t4 = Instant::now();
            let batch_loss = l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            loss_sum += batch_loss;
            step += 1;
            progress(TrainProgress {
                epoch,
                epochs: train_cfg.epochs,
                step,
                total_steps,
                batch_loss,
                epoch_loss: loss_sum / (i + 1) as f64,
                val_loss: None,
                epoch_end: false,
            });
            let t5 = Instant::now();
            phases.gather += (t1 - t0).as_secs_f64();
            phases.forward += (t2 - t1).as_secs_f64();
            phases.backward += (t3 - t2).as_secs_f64();
            phases.optimizer += (t4 - t3).as_secs_f64();
            phases.other += (t5 - t4).as_secs_f64();
        }
        let train_loss = loss_sum / steps_per_epoch as f64;
        let val_loss = match val {
            Some(v) => Some(mean_loss(&model, v)?),
            None => None,
        };
        history.push(EpochRecord {
            epoch,
            train_loss,
            val_loss,
        });
        progress(TrainProgress {
            epoch,
            epochs: train_cfg.epochs,
            step,
            total_steps,
            batch_loss: train_loss,
            epoch_loss: train_loss,
            val_loss,
            epoch_end: true,
        });
        if let (Some(vl), Select::BestVal) = (val_loss, train_cfg.select) {
            if best.as_ref().is_none_or(|(b, _, _)| vl < *b) {
                best = Some((vl, epoch, model.snapshot()?));
            }
        }
    }

    let (best_epoch, best_val_loss) = match best {
        Some((vl, epoch, values)) => {
            model.restore(&values)?;
            (epoch, Some(vl))
        }
        None => (train_cfg.epochs, history.last().and_then(|h| h.val_loss)),
    };
    let report = TrainReport {
        epochs: history,
        best_epoch,
        best_val_loss,
        steps: step,
        n_train: n,
        n_val: val.map_or(0, |v| v.comps.len()),
        n_users: model.user_ids.len(),
        params: model.param_count(),
        seconds: started.elapsed().as_secs_f64(),
        phases,
    };
    Ok((model, report))
}

/// Mean loss ℓ(t) over every comparison of `set` in evaluation mode (no penalty), weighted
/// as in training (Σ w·ℓ / Σ w): the validation loss. Unknown users get the zero-shot
/// mixture.
pub fn mean_loss(model: &PalModel, set: &ComparisonSet) -> Result<f64> {
    let (margins, _) = model.margins_for(set)?;
    let m = Tensor::new(margins.as_slice(), &model.device)?.to_dtype(DType::F64)?;
    let y: Vec<f64> = set.comps.iter().map(|c| c.y as f64).collect();
    let y = Tensor::new(y.as_slice(), &model.device)?;
    let t = loss::agreement(&m, &y)?;
    let weights: Vec<f32> = set.comps.iter().map(|c| c.weight.0).collect();
    let per = loss::per_comparison(model.cfg.loss, &t)?;
    Ok(loss::weighted_mean(&per, &weights)?.to_scalar::<f64>()?)
}
