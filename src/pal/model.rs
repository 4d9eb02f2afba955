//! The PAL reward models on frozen embeddings (PAL-SPEC "User weights", "PAL-B", "PAL-A";
//! paper Sec. 2–3, the "Tiny" setting).
//!
//! Owns: [`PalModel`], its parameters (f, g_k or P, τ, user logits W) and the math:
//! - mixtures w_i = softmax(W_i / T) (train), or the one-hot argmax in partition mode (eval);
//! - PAL-B: z_i(x_c) = Σ_k w_ik g_k(x_c), r_i(x; x_c) = s·cos(f(x), z_i(x_c)),
//!   s = min(exp τ, 100), τ₀ = ln(1/0.07). With dp = 0 the input of g_k is constant, so each
//!   g_k is a learned vector in R^d (seeded random unit vector at init);
//! - PAL-A: a_i = Σ_k w_ik P_k, r_i(x; x_c) = −‖f([x_c; x]) − f(a_i)‖² (or the plain norm),
//!   P_k seeded random unit vectors in R^{Dp+Dx}. PAL-A has no scale τ;
//! - margins m = r_i(x_l) − r_i(x_r) for a batch, and [`PalModel::score`] for one user.
//!
//! Does not own: the loop and optimiser (`train.rs`, `optim.rs`), metrics (`evaluate.rs`),
//! files (`checkpoint.rs`).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::checkpoint::CardInfo;
use super::config::{Distance, Mode, ModelConfig, ModelKind, TrainConfig};
use super::data::{Batch, ComparisonSet};
use super::error::{PalError, Result};
use super::grad::{param, without_grad};
use super::mlp::Projector;

/// RNG streams derived from the one seed (ChaCha8 stream ids).
pub(crate) mod stream {
    pub const INIT: u64 = 1;
    pub const SHUFFLE: u64 = 2;
    pub const DROPOUT: u64 = 3;
    pub const FEW_SHOT: u64 = 4;
    pub const POSTERIOR: u64 = 5;
    pub const SIMULATE: u64 = 6;
    pub const EMPIRICAL: u64 = 7;
    pub const REFIT: u64 = 8;
    pub const MODEL_WORLD: u64 = 9;
}

/// A ChaCha8 RNG for `seed` on `stream`.
pub(crate) fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// Initial τ = ln(1/0.07) (CLIP's logit scale).
pub const TAU_INIT: f64 = 2.659_260_036_932_778_4;
/// The cap of s = exp τ.
pub const SCALE_MAX: f64 = 100.0;
// NORM_EPS2, added under square roots (norms, plain distances) so gradients stay finite at
// 0, lives with the one-pass kernel, which adds the same constant.
use palpipe_kernels::NORM_EPS2;

/// Parameter groups, each with its own learning rate and weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    Projectors,
    UserLogits,
    Prototypes,
    Scale,
}

/// A parameter with its checkpoint name and group.
#[derive(Debug, Clone)]
pub(crate) struct NamedParam {
    pub name: String,
    pub var: Var,
    pub group: Group,
}

/// The prototype side of the model.
#[derive(Debug, Clone)]
pub(crate) enum Prototypes {
    /// PAL-B with context: K projectors g_k: R^Dp → R^d.
    Mappings(Vec<Projector>),
    /// PAL-B without context: K learned vectors g_k ∈ R^d, `[K, d]`.
    Vectors(Var),
    /// PAL-A: K points P_k ∈ R^{Dp+Dx}, `[K, Dp+Dx]`.
    Points(Var),
}

/// A trained (or freshly initialised) PAL model with its users. (Not `Clone`: its parameters
/// are shared variables; reload a checkpoint for an independent copy.)
#[derive(Debug)]
pub struct PalModel {
    pub(crate) cfg: ModelConfig,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    /// Item mapping f.
    pub(crate) f: Projector,
    pub(crate) protos: Prototypes,
    /// PAL-B scale parameter τ, `[1]`.
    pub(crate) tau: Option<Var>,
    /// User logits W, `[N, K]`.
    pub(crate) logits: Var,
    pub(crate) user_ids: Vec<String>,
    pub(crate) user_rows: HashMap<String, u32>,
    pub(crate) seed: u64,
    pub(crate) train_cfg: Option<TrainConfig>,
    /// Free-form fields the caller fills for the checkpoint card (encoder id, split, metrics,
    /// run id).
    pub info: CardInfo,
}

/// Per-batch outputs of f and g_k that do not depend on the users.
pub(crate) struct Features {
    /// PAL-A: f([x_c; x]) `[U, d]`; PAL-B: f(x)/‖f(x)‖ `[U, d]`.
    pub fx: Tensor,
    /// PAL-B: g_k(x_c) `[Up, K, d]` (`[1, K, d]` when dp = 0).
    pub g: Option<Tensor>,
}

/// The user side of a batch, per comparison.
pub(crate) enum UserSide {
    /// f(a_i) per comparison, `[B, d]`.
    A(Tensor),
    /// z_i(x_c)/‖z_i(x_c)‖ per comparison `[B, d]`, and the scale s (scalar).
    B(Tensor, Tensor),
}

impl PalModel {
    /// A freshly initialised model for `user_ids` (rows in that order). `cfg` must have its
    /// dims resolved. Every initial value comes from `seed`: f, then g_k / P, then the user
    /// logits W ~ N(0, 1) (as the reference code), τ = ln(1/0.07).
    pub fn new(cfg: ModelConfig, user_ids: Vec<String>, seed: u64, dtype: DType) -> Result<Self> {
        Self::new_on(cfg, user_ids, seed, dtype, &Device::Cpu)
    }

    /// [`PalModel::new`] with its tensors on `device` (the CPU, or a CUDA GPU in a build with
    /// the `cuda` feature). The initial values are drawn on the host from `seed` as on the
    /// CPU, so both devices start from the same numbers; their training then differs in the
    /// last bits (other kernels, other summation orders).
    pub fn new_on(
        cfg: ModelConfig,
        user_ids: Vec<String>,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let device = device.clone();
        let mut user_rows = HashMap::with_capacity(user_ids.len());
        for (row, id) in user_ids.iter().enumerate() {
            if user_rows.insert(id.clone(), row as u32).is_some() {
                return Err(PalError::Data(format!("user id '{id}' appears twice")));
            }
        }
        let mut r = rng(seed, stream::INIT);
        let f = Projector::new(
            &cfg.item_arch,
            cfg.f_input_dim(),
            cfg.d,
            &mut r,
            dtype,
            &device,
        )?;
        let protos = match cfg.kind {
            ModelKind::PalB if cfg.dp > 0 => Prototypes::Mappings(
                (0..cfg.k)
                    .map(|_| {
                        Projector::new(&cfg.prototype_arch, cfg.dp, cfg.d, &mut r, dtype, &device)
                    })
                    .collect::<Result<_>>()?,
            ),
            ModelKind::PalB => Prototypes::Vectors(Var::from_tensor(&unit_rows(
                &mut r, cfg.k, cfg.d, dtype, &device,
            )?)?),
            ModelKind::PalA => Prototypes::Points(Var::from_tensor(&unit_rows(
                &mut r,
                cfg.k,
                cfg.f_input_dim(),
                dtype,
                &device,
            )?)?),
        };
        let n = user_ids.len();
        let w: Vec<f64> = (0..n * cfg.k)
            .map(|_| StandardNormal.sample(&mut r))
            .collect();
        let logits = Var::from_tensor(&Tensor::from_vec(w, (n, cfg.k), &device)?.to_dtype(dtype)?)?;
        let tau = match cfg.kind {
            ModelKind::PalB => Some(Var::from_tensor(
                &Tensor::new(&[TAU_INIT], &device)?.to_dtype(dtype)?,
            )?),
            ModelKind::PalA => None,
        };
        Ok(PalModel {
            cfg,
            dtype,
            device,
            f,
            protos,
            tau,
            logits,
            user_ids,
            user_rows,
            seed,
            train_cfg: None,
            info: CardInfo::default(),
        })
    }

    /// The model's configuration (dims resolved).
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The training configuration, when the model was trained (or loaded from a trained one).
    pub fn train_config(&self) -> Option<&TrainConfig> {
        self.train_cfg.as_ref()
    }

    /// The seed the model was initialised (and trained) with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Seen users, in row order.
    pub fn user_ids(&self) -> &[String] {
        &self.user_ids
    }

    /// The row of a seen user.
    pub fn user_row(&self, id: &str) -> Option<u32> {
        self.user_rows.get(id).copied()
    }

    /// Number of trainable parameters (including the user logits).
    pub fn param_count(&self) -> usize {
        self.params().iter().map(|p| p.var.elem_count()).sum()
    }

    /// The current scale s = min(exp τ, 100) (PAL-B; 1 for PAL-A, which has none).
    pub fn scale(&self) -> Result<f64> {
        match &self.tau {
            Some(t) => Ok(t.as_tensor().to_dtype(DType::F64)?.to_vec1::<f64>()?[0]
                .exp()
                .min(SCALE_MAX)),
            None => Ok(1.0),
        }
    }

    /// Every parameter with its name and group, in a fixed order.
    pub(crate) fn params(&self) -> Vec<NamedParam> {
        let mut out = Vec::new();
        let mut push =
            |name: String, var: Var, group: Group| out.push(NamedParam { name, var, group });
        for (n, v) in self.f.named_vars("f") {
            push(n, v, Group::Projectors);
        }
        match &self.protos {
            Prototypes::Mappings(gs) => {
                for (k, g) in gs.iter().enumerate() {
                    for (n, v) in g.named_vars(&format!("g.{k}")) {
                        push(n, v, Group::Projectors);
                    }
                }
            }
            Prototypes::Vectors(v) => push("g_vectors".into(), v.clone(), Group::Prototypes),
            Prototypes::Points(v) => push("prototypes".into(), v.clone(), Group::Prototypes),
        }
        if let Some(t) = &self.tau {
            push("tau".into(), t.clone(), Group::Scale);
        }
        push("user_logits".into(), self.logits.clone(), Group::UserLogits);
        out
    }

    // -----------------------------------------------------------------------------------------
    // Mixtures
    // -----------------------------------------------------------------------------------------

    /// Training mixtures w = softmax(W / T), `[n, K]`.
    pub(crate) fn train_mixture(&self, logits: &Tensor) -> Result<Tensor> {
        softmax_rows(&(logits / self.cfg.temperature)?)
    }

    /// Evaluation mixtures: softmax(W / T), or the one-hot argmax in partition mode.
    pub(crate) fn eval_mixture(&self, logits: &Tensor) -> Result<Tensor> {
        match self.cfg.mode {
            Mode::Mixture => self.train_mixture(logits),
            Mode::Partition => {
                let l = logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
                let k = self.cfg.k;
                let mut v = vec![0f64; l.len() * k];
                for (i, row) in l.iter().enumerate() {
                    v[i * k + argmax(row)] = 1.0;
                }
                Ok(Tensor::from_vec(v, (l.len(), k), &self.device)?.to_dtype(self.dtype)?)
            }
        }
    }

    /// Evaluation mixtures of every seen user, `[N, K]`, followed by one more row: the mean of
    /// them, the zero-shot mixture used for unknown users (uniform when there are no users).
    pub(crate) fn mixture_table(&self) -> Result<Tensor> {
        let k = self.cfg.k;
        if self.user_ids.is_empty() {
            return Ok(Tensor::full(1.0 / k as f64, (1, k), &self.device)?.to_dtype(self.dtype)?);
        }
        let w = self.eval_mixture(self.logits.as_tensor())?; // [N, K]
        let mean = w.mean_keepdim(0)?; // [1, K]
        Ok(Tensor::cat(&[&w, &mean], 0)?.detach())
    }

    /// The zero-shot mixture: the mean of the seen users' evaluation mixtures.
    pub fn zero_shot_mixture(&self) -> Result<Vec<f64>> {
        let t = self.mixture_table()?;
        let n = t.dim(0)?;
        Ok(t.get(n - 1)?.to_dtype(DType::F64)?.to_vec1()?)
    }

    /// The evaluation mixture of a seen user, or the zero-shot mixture for an unknown one.
    pub fn mixture(&self, user_id: &str) -> Result<Vec<f64>> {
        let t = self.mixture_table()?;
        let row = match self.user_row(user_id) {
            Some(r) => r as usize,
            None => t.dim(0)? - 1,
        };
        Ok(t.get(row)?.to_dtype(DType::F64)?.to_vec1()?)
    }

    // -----------------------------------------------------------------------------------------
    // Forward
    // -----------------------------------------------------------------------------------------

    /// Gathers a batch in the layout this model reads.
    pub(crate) fn gather(
        &self,
        set: &ComparisonSet,
        idx: &[usize],
        user_row: &dyn Fn(u32) -> u32,
    ) -> Result<Batch> {
        Batch::gather(
            set,
            idx,
            user_row,
            self.cfg.kind == ModelKind::PalA,
            self.dtype,
            &self.device,
        )
    }

    /// f over the distinct item rows and g_k over the distinct prompts. Dropout is on when a
    /// mask RNG is given.
    pub(crate) fn features(
        &self,
        batch: &Batch,
        mut rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Features> {
        let fx = self.f.forward(&batch.item_rows, rng.as_deref_mut())?; // [U, d]
        match (&self.cfg.kind, &self.protos) {
            (ModelKind::PalA, _) => Ok(Features { fx, g: None }),
            (ModelKind::PalB, Prototypes::Mappings(gs)) => {
                let prompts = batch.prompt_rows.as_ref().ok_or_else(|| {
                    PalError::Data("a PAL-B model with dp > 0 needs prompts".into())
                })?;
                let mut per_k = Vec::with_capacity(gs.len());
                for g in gs {
                    per_k.push(g.forward(prompts, rng.as_deref_mut())?); // [Up, d]
                }
                let g = Tensor::stack(&per_k, 1)?; // [Up, K, d]
                Ok(Features {
                    fx: normalize_rows(&fx)?,
                    g: Some(g),
                })
            }
            (ModelKind::PalB, Prototypes::Vectors(v)) => {
                let g = param(v).unsqueeze(0)?; // [1, K, d]
                Ok(Features {
                    fx: normalize_rows(&fx)?,
                    g: Some(g),
                })
            }
            (ModelKind::PalB, Prototypes::Points(_)) => {
                unreachable!("PAL-B has no prototype points")
            }
        }
    }

    /// The user side for each comparison, from the mixtures `w` `[Uu, K]` of the batch's
    /// distinct users, and the norm-bound penalty when configured.
    pub(crate) fn user_side(
        &self,
        feats: &Features,
        batch: &Batch,
        w: &Tensor,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<(UserSide, Option<Tensor>)> {
        self.user_side_with(feats, batch, w, None, rng)
    }

    /// The dimension of a user's ideal point, where a per-user offset δ is added (few-shot
    /// `offset`): d for PAL-B (z_i = Σ_k w_ik g_k(x_c) + δ_i, before it is normalised), Dp + Dx
    /// for PAL-A (a_i = Σ_k w_ik P_k + δ_i, in f's input space).
    pub fn offset_dim(&self) -> usize {
        match self.cfg.kind {
            ModelKind::PalB => self.cfg.d,
            ModelKind::PalA => self.cfg.f_input_dim(),
        }
    }

    /// [`PalModel::user_side`] with an optional offset δ per distinct user (`[Uu, D]`,
    /// [`PalModel::offset_dim`]) added to the mixture's ideal point.
    pub(crate) fn user_side_with(
        &self,
        feats: &Features,
        batch: &Batch,
        w: &Tensor,
        delta: Option<&Tensor>,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<(UserSide, Option<Tensor>)> {
        match &self.protos {
            Prototypes::Points(p) => {
                let a = w.matmul(&param(p))?; // [Uu, Dp+Dx]: a_i = Σ_k w_ik P_k
                let a = match delta {
                    Some(dl) => (a + dl)?,
                    None => a,
                };
                let fa = self.f.forward(&a, rng)?; // [Uu, d]
                let fa_b = fa.index_select(&batch.user, 0)?; // [B, d]
                Ok((UserSide::A(fa_b), None))
            }
            _ => {
                let g = feats.g.as_ref().expect("PAL-B features carry g");
                let z = if g.dim(0)? == 1 {
                    // dp = 0: z_i = Σ_k w_ik g_k depends on the user only.
                    let zu = w.matmul(&g.squeeze(0)?)?; // [Uu, d]
                    let zu = match delta {
                        Some(dl) => (zu + dl)?,
                        None => zu,
                    };
                    zu.index_select(&batch.user, 0)? // [B, d]
                } else {
                    let wb = w.index_select(&batch.user, 0)?; // [B, K]
                    let gb = g.index_select(&batch.prompt, 0)?; // [B, K, d]
                    let zb = wb.unsqueeze(2)?.broadcast_mul(&gb)?.sum(1)?; // [B, d]
                    match delta {
                        Some(dl) => (zb + dl.index_select(&batch.user, 0)?)?,
                        None => zb,
                    }
                };
                let penalty = match &self.cfg.norm_bound {
                    Some(nb) => {
                        let norm = (z.sqr()?.sum(D::Minus1)? + NORM_EPS2)?.sqrt()?; // [B]
                        Some(((norm - nb.ub)?.relu()?.mean_all()? * nb.lambda)?)
                    }
                    None => None,
                };
                Ok((
                    UserSide::B(normalize_rows(&z)?, self.reward_scale()?),
                    penalty,
                ))
            }
        }
    }

    /// PAL-B's reward scale s = min(e^τ, 100), a scalar tensor.
    fn reward_scale(&self) -> Result<Tensor> {
        let tau = self.tau.as_ref().expect("PAL-B has τ");
        Ok(param(tau).exp()?.minimum(SCALE_MAX)?.squeeze(0)?)
    }

    /// Rewards r_i(x; x_c) `[B]` of the items `idx` (rows of `feats.fx`) against the user side.
    pub(crate) fn reward(&self, feats: &Features, side: &UserSide, idx: &Tensor) -> Result<Tensor> {
        let fx = feats.fx.index_select(idx, 0)?; // [B, d]
        match side {
            UserSide::A(fa) => {
                let sq = (fx - fa)?.sqr()?.sum(D::Minus1)?; // [B]: ‖f(x) − f(a_i)‖²
                let dist = match self.cfg.distance {
                    Distance::Squared => sq,
                    Distance::Plain => (sq + NORM_EPS2)?.sqrt()?,
                };
                Ok(dist.neg()?)
            }
            UserSide::B(zn, s) => {
                let cos = (fx * zn)?.sum(D::Minus1)?; // [B]
                Ok(cos.broadcast_mul(s)?)
            }
        }
    }

    /// Margins m = r(x_l) − r(x_r) `[B]` and the optional penalty, for mixtures `w` of the
    /// batch's users. Training mode when `rng` is given (dropout).
    pub(crate) fn margins(
        &self,
        batch: &Batch,
        w: &Tensor,
        mut rng: Option<&mut ChaCha8Rng>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let feats = self.features(batch, rng.as_deref_mut())?;
        self.margins_from(&feats, batch, w, rng)
    }

    /// [`PalModel::margins`] on precomputed features.
    pub(crate) fn margins_from(
        &self,
        feats: &Features,
        batch: &Batch,
        w: &Tensor,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        self.margins_offset(feats, batch, w, None, rng)
    }

    /// [`PalModel::margins_from`] with an optional offset δ per distinct user of the batch
    /// (`[Uu, D]`; see [`PalModel::user_side_with`]). Without δ and a norm bound, PAL-B takes
    /// the fused cosines node ([`super::cosines::cosines`]) where it applies; otherwise
    /// [`PalModel::margins_composed`].
    pub(crate) fn margins_offset(
        &self,
        feats: &Features,
        batch: &Batch,
        w: &Tensor,
        delta: Option<&Tensor>,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if delta.is_none() && self.cfg.norm_bound.is_none() {
            if let Some(m) = self.pal_b_margins_fused(feats, batch, w)? {
                return Ok((m, None));
            }
        }
        self.margins_composed(feats, batch, w, delta, rng)
    }

    /// [`PalModel::margins_offset`] through candle's composed ops only (the user side, then
    /// each item's reward), never the fused cosines node: what that node is checked against.
    pub(crate) fn margins_composed(
        &self,
        feats: &Features,
        batch: &Batch,
        w: &Tensor,
        delta: Option<&Tensor>,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (side, penalty) = self.user_side_with(feats, batch, w, delta, rng)?;
        let rl = self.reward(feats, &side, &batch.left)?;
        let rr = self.reward(feats, &side, &batch.right)?;
        Ok(((rl - rr)?, penalty))
    }

    /// PAL-B margins with prompts through one autograd node for the cosines
    /// ([`super::cosines::cosines`]), then r = s · cos and m = r_l − r_r as the composed ops
    /// do; `None` where that node does not apply (PAL-A, one prompt row, a GPU, f64, an index
    /// past its table).
    fn pal_b_margins_fused(
        &self,
        feats: &Features,
        batch: &Batch,
        w: &Tensor,
    ) -> Result<Option<Tensor>> {
        let Some(g) = feats.g.as_ref() else {
            return Ok(None);
        };
        if self.cfg.kind != ModelKind::PalB || g.rank() != 3 || g.dim(0)? < 2 {
            return Ok(None);
        }
        let idx = [&batch.user, &batch.prompt, &batch.left, &batch.right];
        let Some(cos) = super::cosines::cosines(&feats.fx, g, w, idx)? else {
            return Ok(None);
        };
        let r = cos.broadcast_mul(&self.reward_scale()?)?; // [B, 2]: r(x_l), r(x_r)
        Ok(Some((r.narrow(1, 0, 1)? - r.narrow(1, 1, 1)?)?.squeeze(1)?))
    }

    /// Evaluation-mode margins for every comparison of `set`, in order, computed in chunks.
    /// Users are matched by id; unknown users get the zero-shot mixture. Returns the margins
    /// and, per set user row, whether the model knew the user.
    pub fn margins_for(&self, set: &ComparisonSet) -> Result<(Vec<f32>, Vec<bool>)> {
        self.check_dims(set)?;
        let table = self.mixture_table()?;
        let unknown = self.user_ids.len() as u32;
        let rows: Vec<u32> = set
            .user_ids
            .iter()
            .map(|id| self.user_row(id).unwrap_or(unknown))
            .collect();
        let known = rows.iter().map(|&r| r != unknown).collect();
        let margins = self.margins_with_table(
            set,
            &table,
            &|u| rows[u as usize],
            (0..set.comps.len()).collect(),
        )?;
        Ok((margins, known))
    }

    /// Evaluation-mode margins of the comparisons `idx` with mixture rows of `table`.
    pub(crate) fn margins_with_table(
        &self,
        set: &ComparisonSet,
        table: &Tensor,
        user_row: &dyn Fn(u32) -> u32,
        idx: Vec<usize>,
    ) -> Result<Vec<f32>> {
        self.margins_with_offsets(set, table, None, user_row, idx)
    }

    /// [`PalModel::margins_with_table`] with, when given, an offset row per mixture row
    /// (`offsets` `[rows, D]`, the same row numbers as `table`).
    pub(crate) fn margins_with_offsets(
        &self,
        set: &ComparisonSet,
        table: &Tensor,
        offsets: Option<&Tensor>,
        user_row: &dyn Fn(u32) -> u32,
        idx: Vec<usize>,
    ) -> Result<Vec<f32>> {
        const CHUNK: usize = 4096;
        let mut out = Vec::with_capacity(idx.len());
        // Evaluation only: the table and offsets enter as constants too, so that no
        // intermediate is held for a backward pass (`grad`).
        let (table, offsets) = (table.detach(), offsets.map(Tensor::detach));
        without_grad(|| -> Result<()> {
            for chunk in idx.chunks(CHUNK) {
                let batch = self.gather(set, chunk, user_row)?;
                let users = Tensor::new(batch.users.as_slice(), &self.device)?;
                let w = table.index_select(&users, 0)?;
                let delta = match &offsets {
                    Some(o) => Some(o.index_select(&users, 0)?),
                    None => None,
                };
                let feats = self.features(&batch, None)?;
                out.extend(self.eval_margins(&feats, &batch, &w, delta.as_ref())?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Evaluation margins of one batch, `[B]`: for PAL-B on the CPU in f32 with more than one
    /// prompt row, one pass per comparison ([`palpipe_kernels::pal_b_margins`], the same
    /// numbers as the composed ops without their `[B, d]` intermediates; in the `mkl` build
    /// the same up to the last bits); otherwise [`PalModel::margins_offset`].
    pub(crate) fn eval_margins(
        &self,
        feats: &Features,
        batch: &Batch,
        w: &Tensor,
        delta: Option<&Tensor>,
    ) -> Result<Vec<f32>> {
        if let Some(m) = self.pal_b_margins_in_one_pass(feats, batch, w, delta)? {
            return Ok(m);
        }
        let (m, _) = self.margins_offset(feats, batch, w, delta, None)?;
        Ok(m.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    /// [`PalModel::eval_margins`]'s one-pass path, or `None` where it does not apply (PAL-A,
    /// one prompt row, a GPU, f64, a CPU where candle does not sum with AVX2, or shapes
    /// other than the model's).
    pub(crate) fn pal_b_margins_in_one_pass(
        &self,
        feats: &Features,
        batch: &Batch,
        w: &Tensor,
        delta: Option<&Tensor>,
    ) -> Result<Option<Vec<f32>>> {
        let Some(g) = feats.g.as_ref() else {
            return Ok(None);
        };
        let (d, k) = (self.cfg.d, self.cfg.k);
        // The kernel sums rows in candle's AVX2 order: elsewhere, candle's ops. One prompt
        // row (dp = 0, or a batch with one prompt): z comes from a matrix product there,
        // whose rounding the kernel does not follow.
        let shapes_fit = palpipe_kernels::sums_like_candle()
            && g.rank() == 3
            && feats.fx.rank() == 2
            && w.rank() == 2
            && g.dim(0)? > 1
            && g.dims()[1..] == [k, d]
            && feats.fx.dims().get(1) == Some(&d)
            && w.dims().get(1) == Some(&k)
            && delta.is_none_or(|t| t.dims() == [w.dim(0).unwrap_or(0), d]);
        if !shapes_fit {
            return Ok(None);
        }
        let scale = self.reward_scale()?;
        if scale.dtype() != DType::F32 {
            return Ok(None);
        }
        let scale = scale.to_scalar::<f32>()?;
        let (user, prompt) = (batch.user.to_vec1::<u32>()?, batch.prompt.to_vec1::<u32>()?);
        let (left, right) = (batch.left.to_vec1::<u32>()?, batch.right.to_vec1::<u32>()?);
        let fx = feats.fx.contiguous()?;
        let g = g.contiguous()?;
        let w = w.contiguous()?;
        let delta = delta.map(Tensor::contiguous).transpose()?;
        let (Some(fx_v), Some(g_v), Some(w_v)) =
            (F32View::of(&fx), F32View::of(&g), F32View::of(&w))
        else {
            return Ok(None);
        };
        let delta_v = match &delta {
            Some(t) => match F32View::of(t) {
                Some(v) => Some(v),
                None => return Ok(None),
            },
            None => None,
        };
        Ok(Some(palpipe_kernels::pal_b_margins(
            &palpipe_kernels::PalBBatch {
                d,
                k,
                fx: fx_v.slice(),
                g: g_v.slice(),
                w: w_v.slice(),
                delta: delta_v.as_ref().map(F32View::slice),
                scale,
                user: &user,
                prompt: &prompt,
                left: &left,
                right: &right,
            },
        )))
    }

    pub(crate) fn check_dims(&self, set: &ComparisonSet) -> Result<()> {
        if set.dx != self.cfg.dx {
            return Err(PalError::Dim {
                what: "the item dimension of the data".into(),
                expected: self.cfg.dx,
                got: set.dx,
            });
        }
        if set.dp != self.cfg.dp {
            return Err(PalError::Dim {
                what: "the prompt dimension of the data".into(),
                expected: self.cfg.dp,
                got: set.dp,
            });
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Scoring
    // -----------------------------------------------------------------------------------------

    /// Rewards r_i(x; x_c) of `candidates` for one user (evaluation mode): higher is preferred.
    /// An unknown `user_id` gets the zero-shot mixture (the mean of the seen users' mixtures).
    /// `prompt_vec` is required exactly when the model has context (dp > 0).
    pub fn score(
        &self,
        user_id: &str,
        prompt_vec: Option<&[f32]>,
        candidates: &[&[f32]],
    ) -> Result<Vec<f32>> {
        let w = Tensor::new(self.mixture(user_id)?.as_slice(), &self.device)?
            .to_dtype(self.dtype)?
            .unsqueeze(0)?; // [1, K]
        self.score_with_mixture(&w, prompt_vec, candidates)
    }

    /// [`PalModel::score`] with an explicit mixture w (length K, on the simplex).
    pub fn score_mixture(
        &self,
        w: &[f64],
        prompt_vec: Option<&[f32]>,
        candidates: &[&[f32]],
    ) -> Result<Vec<f32>> {
        if w.len() != self.cfg.k {
            return Err(PalError::Dim {
                what: "the mixture length".into(),
                expected: self.cfg.k,
                got: w.len(),
            });
        }
        let w = Tensor::new(w, &self.device)?
            .to_dtype(self.dtype)?
            .unsqueeze(0)?;
        self.score_with_mixture(&w, prompt_vec, candidates)
    }

    fn score_with_mixture(
        &self,
        w: &Tensor,
        prompt_vec: Option<&[f32]>,
        candidates: &[&[f32]],
    ) -> Result<Vec<f32>> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let prompt = match (prompt_vec, self.cfg.dp) {
            (None, 0) => None,
            (Some(p), dp) if p.len() == dp && dp > 0 => Some(p),
            (Some(p), 0) => {
                return Err(PalError::Dim {
                    what: "the prompt vector (the model has no context)".into(),
                    expected: 0,
                    got: p.len(),
                })
            }
            (Some(p), dp) => {
                return Err(PalError::Dim {
                    what: "the prompt vector".into(),
                    expected: dp,
                    got: p.len(),
                })
            }
            (None, dp) => {
                return Err(PalError::Dim {
                    what: "the prompt vector (none given)".into(),
                    expected: dp,
                    got: 0,
                })
            }
        };
        let mut items = Vec::with_capacity(candidates.len() * self.cfg.dx);
        for (i, c) in candidates.iter().enumerate() {
            if c.len() != self.cfg.dx {
                return Err(PalError::Dim {
                    what: format!("candidate {i}"),
                    expected: self.cfg.dx,
                    got: c.len(),
                });
            }
            items.extend_from_slice(c);
        }
        let set = ComparisonSet {
            dx: self.cfg.dx,
            dp: self.cfg.dp,
            items,
            prompts: prompt.map(|p| p.to_vec()).unwrap_or_default(),
            user_ids: vec![String::new()],
            comps: (0..candidates.len() as u32)
                .map(|i| super::data::Comparison {
                    user: 0,
                    prompt: prompt.map(|_| 0),
                    left: i,
                    right: i,
                    y: 1,
                    weight: crate::pal::Weight::ONE,
                })
                .collect(),
        };
        set.validate()?;
        let idx: Vec<usize> = (0..candidates.len()).collect();
        let batch = self.gather(&set, &idx, &|_| 0)?;
        let w = w.detach();
        without_grad(|| {
            let feats = self.features(&batch, None)?;
            let (side, _) = self.user_side(&feats, &batch, &w, None)?;
            let r = self.reward(&feats, &side, &batch.left)?;
            Ok(r.to_dtype(DType::F32)?.to_vec1()?)
        })
    }

    /// Adds users with given logits (e.g. from few-shot adaptation) so that they can be scored
    /// and saved. Fails on an id the model already has.
    pub fn add_users(&mut self, ids: &[String], logits: &[f32]) -> Result<()> {
        let k = self.cfg.k;
        if logits.len() != ids.len() * k {
            return Err(PalError::Dim {
                what: "the new users' logits".into(),
                expected: ids.len() * k,
                got: logits.len(),
            });
        }
        for id in ids {
            if self.user_rows.contains_key(id) {
                return Err(PalError::Data(format!(
                    "user id '{id}' is already in the model"
                )));
            }
        }
        let n = self.user_ids.len();
        let new = Tensor::from_vec(logits.to_vec(), (ids.len(), k), &self.device)?
            .to_dtype(self.dtype)?;
        let all = Tensor::cat(&[self.logits.as_tensor(), &new], 0)?;
        self.logits = Var::from_tensor(&all)?;
        for (i, id) in ids.iter().enumerate() {
            self.user_rows.insert(id.clone(), (n + i) as u32);
            self.user_ids.push(id.clone());
        }
        Ok(())
    }

    /// A deep copy of every parameter value (for checkpoint selection).
    pub(crate) fn snapshot(&self) -> Result<Vec<Tensor>> {
        Ok(self
            .params()
            .iter()
            .map(|p| p.var.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?)
    }

    /// Restores values taken by [`PalModel::snapshot`].
    pub(crate) fn restore(&self, values: &[Tensor]) -> Result<()> {
        for (p, v) in self.params().iter().zip(values) {
            p.var.set(v)?;
        }
        Ok(())
    }
}

/// Row-wise softmax, the max subtracted (and detached) for stability: `[n, K]`.
pub(crate) fn softmax_rows(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// The f32 values of a contiguous CPU tensor, borrowed for as long as the view lives.
struct F32View<'a> {
    storage: candle_core::StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> F32View<'a> {
    /// `None` for a tensor on a GPU, of another dtype, or not contiguous.
    fn of(t: &'a Tensor) -> Option<Self> {
        let (storage, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        matches!(
            &*storage,
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(_))
        )
        .then_some(F32View {
            storage,
            start,
            end,
        })
    }

    fn slice(&self) -> &[f32] {
        match &*self.storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => &v[self.start..self.end],
            _ => unreachable!("F32View::of admits CPU f32 storage only"),
        }
    }
}

/// x / ‖x‖ per row (‖x‖ = √(Σx² + 1e-16)).
pub(crate) fn normalize_rows(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + NORM_EPS2)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

/// Index of the largest value (the first on ties).
pub(crate) fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// `n` seeded random unit vectors in R^dim, `[n, dim]`.
fn unit_rows(
    r: &mut ChaCha8Rng,
    n: usize,
    dim: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mut v = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let row: Vec<f64> = (0..dim).map(|_| StandardNormal.sample(r)).collect();
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        v.extend(row.iter().map(|x| x / norm));
    }
    Ok(Tensor::from_vec(v, (n, dim), device)?.to_dtype(dtype)?)
}
