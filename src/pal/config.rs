//! Configuration of the PAL heads: model ([`ModelConfig`]), training ([`TrainConfig`]) and
//! few-shot adaptation ([`FewShotConfig`]), plus the projector architecture strings ([`Arch`]).
//!
//! Owns: the serde types (unknown fields rejected) that a pipeline YAML or a checkpoint card
//! holds, their documented defaults and validation. Does not own: the layers themselves
//! (`mlp.rs`) or the training loop (`train.rs`). PAL-SPEC "Projectors", "Losses", "Training".
//!
//! The defaults are chosen so that small heads on frozen embeddings train in seconds on a CPU
//! (the paper's synthetic ideal-point setting reaches its reported accuracy with them); they are
//! larger learning rates and more epochs than the reference code's 1-epoch text runs, which
//! fine-tune far bigger heads. The reference values are listed beside each default.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{PalError, Result};

// ---------------------------------------------------------------------------------------------
// Architecture strings
// ---------------------------------------------------------------------------------------------

/// Activation after each hidden Linear (+ Dropout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    /// The exact (erf) GELU, as PyTorch's default.
    Gelu,
    /// No activation (identity).
    Linear,
}

impl Activation {
    fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Linear => "linear",
        }
    }
}

/// A projector architecture, `mlp{L}-{relu|gelu|linear}-dropout{D}[-residual]`:
/// L hidden blocks Linear(width d) → Dropout(p) → activation, then a final Linear to d
/// (so `mlp2` has three Linear layers; `mlp0` is a single Linear). p = D / 10^len(D).
/// `residual` adds the input to the output and needs input dim = d.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arch {
    pub hidden_layers: usize,
    pub activation: Activation,
    /// The digits after `dropout`, kept to print the string back exactly.
    dropout_digits: String,
    pub residual: bool,
}

impl Arch {
    /// The dropout probability p = D / 10^len(D).
    pub fn dropout(&self) -> f64 {
        let d: f64 = self.dropout_digits.parse().unwrap_or(0.0);
        d / 10f64.powi(self.dropout_digits.len() as i32)
    }

    /// Number of Linear layers (hidden blocks + the final one).
    pub fn linear_layers(&self) -> usize {
        self.hidden_layers + 1
    }

    /// Parameter count of this projector from `d_in` to `d` (weights and biases).
    pub fn param_count(&self, d_in: usize, d: usize) -> usize {
        let mut n = 0;
        let mut fan_in = d_in;
        for _ in 0..self.linear_layers() {
            n += fan_in * d + d;
            fan_in = d;
        }
        n
    }
}

impl FromStr for Arch {
    type Err = PalError;

    fn from_str(s: &str) -> Result<Self> {
        let err = |part: &str, message: String| PalError::Arch {
            arch: s.to_string(),
            part: part.to_string(),
            message,
        };
        let parts: Vec<&str> = s.split('-').collect();
        if parts.len() < 3 || parts.len() > 4 {
            return Err(err(
                "the string",
                format!("has {} dash-separated parts, expected 3 or 4", parts.len()),
            ));
        }
        let layers = parts[0].strip_prefix("mlp").ok_or_else(|| {
            err(
                &format!("the first part '{}'", parts[0]),
                "does not start with 'mlp'".into(),
            )
        })?;
        let hidden_layers: usize = layers.parse().map_err(|_| {
            err(
                &format!("the layer count '{}'", parts[0]),
                "is not 'mlp' followed by a whole number".into(),
            )
        })?;
        let activation = match parts[1] {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "linear" => Activation::Linear,
            other => {
                return Err(err(
                    &format!("the activation '{other}'"),
                    "is not one of relu, gelu, linear".into(),
                ));
            }
        };
        let digits = parts[2].strip_prefix("dropout").ok_or_else(|| {
            err(
                &format!("the dropout part '{}'", parts[2]),
                "does not start with 'dropout'".into(),
            )
        })?;
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(err(
                &format!("the dropout part '{}'", parts[2]),
                "is not 'dropout' followed by digits (dropout0, dropout5 = 0.5, dropout25 = 0.25)"
                    .into(),
            ));
        }
        let residual = match parts.get(3) {
            None => false,
            Some(&"residual") => true,
            Some(other) => {
                return Err(err(
                    &format!("the suffix '{other}'"),
                    "is not 'residual'".into(),
                ));
            }
        };
        Ok(Arch {
            hidden_layers,
            activation,
            dropout_digits: digits.to_string(),
            residual,
        })
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mlp{}-{}-dropout{}",
            self.hidden_layers,
            self.activation.name(),
            self.dropout_digits
        )?;
        if self.residual {
            write!(f, "-residual")?;
        }
        Ok(())
    }
}

impl Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Model configuration
// ---------------------------------------------------------------------------------------------

/// Which PAL model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelKind {
    /// Ideal points: r_i(x; x_c) = −‖f([x_c; x]) − f(a_i)‖², a_i = Σ_k w_ik P_k.
    #[serde(rename = "pal-a")]
    PalA,
    /// Prompt-conditioned preference mappings: r_i(x; x_c) = s·cos(f(x), Σ_k w_ik g_k(x_c)).
    #[serde(rename = "pal-b")]
    PalB,
}

/// Training loss on t = −y·m (PAL-SPEC "Losses").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// log(1 + exp(−t)), in the stable softplus form.
    Logistic,
    /// max(0, 1 − t).
    Hinge,
    /// Smoothed hinge, margin 1, γ = 5.
    SmoothHinge,
}

/// How user mixtures w_i are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// w_i = softmax(W_i / T) in training and evaluation.
    Mixture,
    /// Train with softmax, evaluate with the one-hot argmax (each user on one prototype).
    Partition,
}

/// PAL-A distance between f(x) and f(a_i).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// ‖·‖², the paper's form.
    Squared,
    /// ‖·‖, the reference code's form.
    Plain,
}

/// The optional penalty λ·mean(max(0, ‖z‖ − ub)) on PAL-B user points (PAL-SPEC, PAL-B).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormBound {
    /// Upper bound on ‖z‖ (reference: 4).
    #[serde(default = "default_ub")]
    pub ub: f64,
    /// Penalty weight λ (reference: 1).
    #[serde(default = "default_lambda")]
    pub lambda: f64,
}

fn default_ub() -> f64 {
    4.0
}
fn default_lambda() -> f64 {
    1.0
}

impl Default for NormBound {
    fn default() -> Self {
        NormBound {
            ub: 4.0,
            lambda: 1.0,
        }
    }
}

/// A PAL model. Serialised as is into the checkpoint card. `bt` (a plain Bradley–Terry reward
/// model) is PAL-B (or PAL-A) with `k: 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `pal-a` or `pal-b`. Default `pal-b`.
    #[serde(default = "default_kind")]
    pub kind: ModelKind,
    /// Number of prototypes K ≥ 1. Default 1.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Preference-space dimension d. Default 16 (the paper's Tiny heads use 512 on CLIP).
    #[serde(default = "default_d")]
    pub d: usize,
    /// Item mapping f. Default `mlp1-gelu-dropout0`.
    #[serde(default = "default_item_arch")]
    pub item_arch: Arch,
    /// Prototype mappings g_k of PAL-B (ignored by PAL-A, and when dp = 0, where g_k are learned
    /// vectors in R^d). Default `mlp1-gelu-dropout0`.
    #[serde(default = "default_item_arch")]
    pub prototype_arch: Arch,
    /// Default `logistic`.
    #[serde(default = "default_loss")]
    pub loss: LossKind,
    /// Default `mixture`.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Softmax temperature T > 0 of the user mixtures. Default 1.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Norm-bound penalty on PAL-B user points; off by default.
    #[serde(default)]
    pub norm_bound: Option<NormBound>,
    /// PAL-A distance. Default `squared`.
    #[serde(default = "default_distance")]
    pub distance: Distance,
    /// Item embedding dimension Dx; 0 = take it from the training data.
    #[serde(default)]
    pub dx: usize,
    /// Prompt embedding dimension Dp; 0 when the data has no context (taken from the training
    /// data when training).
    #[serde(default)]
    pub dp: usize,
}

fn default_kind() -> ModelKind {
    ModelKind::PalB
}
fn default_k() -> usize {
    1
}
fn default_d() -> usize {
    16
}
fn default_item_arch() -> Arch {
    "mlp1-gelu-dropout0".parse().expect("valid default arch")
}
fn default_loss() -> LossKind {
    LossKind::Logistic
}
fn default_mode() -> Mode {
    Mode::Mixture
}
fn default_temperature() -> f64 {
    1.0
}
fn default_distance() -> Distance {
    Distance::Squared
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            kind: default_kind(),
            k: default_k(),
            d: default_d(),
            item_arch: default_item_arch(),
            prototype_arch: default_item_arch(),
            loss: default_loss(),
            mode: default_mode(),
            temperature: default_temperature(),
            norm_bound: None,
            distance: default_distance(),
            dx: 0,
            dp: 0,
        }
    }
}

impl ModelConfig {
    /// Input dimension of f: Dp + Dx for PAL-A, Dx for PAL-B.
    pub fn f_input_dim(&self) -> usize {
        match self.kind {
            ModelKind::PalA => self.dp + self.dx,
            ModelKind::PalB => self.dx,
        }
    }

    /// Fills `dx`/`dp` from data when they are 0 and checks them otherwise.
    pub fn resolve_dims(&mut self, dx: usize, dp: usize) -> Result<()> {
        if self.dx == 0 {
            self.dx = dx;
        } else if self.dx != dx {
            return Err(PalError::Dim {
                what: "the item dimension of the data".into(),
                expected: self.dx,
                got: dx,
            });
        }
        if self.dp == 0 && dp > 0 {
            self.dp = dp;
        } else if self.dp != dp {
            return Err(PalError::Dim {
                what: "the prompt dimension of the data".into(),
                expected: self.dp,
                got: dp,
            });
        }
        Ok(())
    }

    /// Checks ranges and that residual projectors have matching dims. Dims must be resolved.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 {
            return Err(PalError::config("k", "is 0, it must be at least 1"));
        }
        if self.d == 0 {
            return Err(PalError::config("d", "is 0, it must be at least 1"));
        }
        if self.dx == 0 {
            return Err(PalError::config(
                "dx",
                "is 0: the item dimension is unknown",
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(PalError::config(
                "temperature",
                format!("is {}, it must be a positive number", self.temperature),
            ));
        }
        if let Some(nb) = &self.norm_bound {
            if !(nb.ub.is_finite() && nb.ub > 0.0) {
                return Err(PalError::config(
                    "norm_bound.ub",
                    format!("is {}, it must be positive", nb.ub),
                ));
            }
            if !(nb.lambda.is_finite() && nb.lambda >= 0.0) {
                return Err(PalError::config(
                    "norm_bound.lambda",
                    format!("is {}, it must be ≥ 0", nb.lambda),
                ));
            }
        }
        if self.item_arch.residual && self.f_input_dim() != self.d {
            return Err(PalError::config(
                "item_arch",
                format!(
                    "'{}' is residual but f maps {} dims to d = {}\nhint: drop '-residual' or set d = {}",
                    self.item_arch,
                    self.f_input_dim(),
                    self.d,
                    self.f_input_dim()
                ),
            ));
        }
        if self.kind == ModelKind::PalB
            && self.dp > 0
            && self.prototype_arch.residual
            && self.dp != self.d
        {
            return Err(PalError::config(
                "prototype_arch",
                format!(
                    "'{}' is residual but g_k maps dp = {} dims to d = {}\nhint: drop '-residual' or set d = {}",
                    self.prototype_arch, self.dp, self.d, self.dp
                ),
            ));
        }
        Ok(())
    }

    /// Number of trainable parameters for `n_users` users (f, g_k or P, τ, user logits).
    pub fn param_count(&self, n_users: usize) -> usize {
        let f = self.item_arch.param_count(self.f_input_dim(), self.d);
        let protos = match self.kind {
            ModelKind::PalA => self.k * self.f_input_dim(),
            ModelKind::PalB if self.dp == 0 => self.k * self.d,
            ModelKind::PalB => self.k * self.prototype_arch.param_count(self.dp, self.d),
        };
        let tau = usize::from(self.kind == ModelKind::PalB);
        f + protos + tau + n_users * self.k
    }
}

// ---------------------------------------------------------------------------------------------
// Training configuration
// ---------------------------------------------------------------------------------------------

/// Learning rate and decoupled weight decay of one parameter group.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
}

/// Which weights training returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    /// The end of the epoch with the lowest validation loss (the last epoch without a
    /// validation set).
    BestVal,
    /// The last epoch.
    Last,
}

/// How to train. Defaults (reference values in brackets) are tuned for small heads on frozen
/// embeddings: a few thousand to a few hundred thousand comparisons, seconds to minutes on CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training comparisons. Default 30 [1 for text, 10 for images].
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Comparisons per step. Default 64 [4].
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// The one seed every random choice derives from. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// f and g_k. Default lr 3e-3, wd 0.01 [1e-4, 0.01].
    #[serde(default = "default_projectors")]
    pub projectors: GroupConfig,
    /// User logits W. Default lr 5e-2, wd 0 [5e-3, 0].
    #[serde(default = "default_user_logits")]
    pub user_logits: GroupConfig,
    /// PAL-A prototypes P (and PAL-B's g_k vectors when dp = 0). Default lr 5e-3, wd 0 [same].
    #[serde(default = "default_prototypes")]
    pub prototypes: GroupConfig,
    /// PAL-B scale τ. Default lr 0.1, wd 0 [same].
    #[serde(default = "default_scale")]
    pub scale: GroupConfig,
    /// Default `best-val` (lowest validation loss, checked at the end of each epoch).
    #[serde(default = "default_select")]
    pub select: Select,
}

fn default_epochs() -> usize {
    30
}
fn default_batch() -> usize {
    64
}
fn default_projectors() -> GroupConfig {
    GroupConfig {
        lr: 3e-3,
        weight_decay: 0.01,
    }
}
fn default_user_logits() -> GroupConfig {
    GroupConfig {
        lr: 5e-2,
        weight_decay: 0.0,
    }
}
fn default_prototypes() -> GroupConfig {
    GroupConfig {
        lr: 5e-3,
        weight_decay: 0.0,
    }
}
fn default_scale() -> GroupConfig {
    GroupConfig {
        lr: 0.1,
        weight_decay: 0.0,
    }
}
fn default_select() -> Select {
    Select::BestVal
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: default_epochs(),
            batch_size: default_batch(),
            seed: 0,
            projectors: default_projectors(),
            user_logits: default_user_logits(),
            prototypes: default_prototypes(),
            scale: default_scale(),
            select: default_select(),
        }
    }
}

impl TrainConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        count_in("epochs", self.epochs, 1..=MAX_EPOCHS, "")?;
        count_in("batch_size", self.batch_size, 1..=usize::MAX, "")?;
        for (name, g) in [
            ("projectors", &self.projectors),
            ("user_logits", &self.user_logits),
            ("prototypes", &self.prototypes),
            ("scale", &self.scale),
        ] {
            if !(g.lr.is_finite() && g.lr >= 0.0) {
                return Err(PalError::config(
                    &format!("{name}.lr"),
                    format!("is {}, it must be ≥ 0", g.lr),
                ));
            }
            if !(g.weight_decay.is_finite() && g.weight_decay >= 0.0) {
                return Err(PalError::config(
                    &format!("{name}.weight_decay"),
                    format!("is {}, it must be ≥ 0", g.weight_decay),
                ));
            }
        }
        Ok(())
    }
}

/// How a new user's K logits are estimated from their comparisons (PAL-SPEC "Users the model
/// has not seen").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Estimator {
    /// Whichever of the others wins the simulated few-shot on the seen users (when a split of
    /// seen users' comparisons is given to simulate on; `offset` only when strictly better
    /// than every mixture-only candidate); `empirical` otherwise.
    #[default]
    Auto,
    /// The maximum a posteriori logits under a Gaussian prior learned from the seen users'
    /// logits, centred so that no comparison at all gives the zero-shot mixture.
    Map,
    /// The posterior mean of the mixture w under the same prior (seeded importance sampling).
    Posterior,
    /// The posterior mean of w under an empirical prior: one atom per seen user (their own
    /// fitted logits), each blurred by a narrow Gaussian (`prior_scale` × a quarter of the
    /// seen users' logit spread) so that any mixture stays reachable. No comparison gives the
    /// seen users' mean mixture, i.e. zero-shot.
    Empirical,
    /// The original method: uniform start, mean loss, no prior, a fixed number of steps.
    Mle,
    /// `empirical`'s mixture AND a per-user offset δ added to the user's ideal point (PAL-B:
    /// z = Σ_k w_k g_k(x_c) + δ; PAL-A: a = Σ_k w_k P_k + δ), fitted with the mixture held
    /// fixed under a ridge penalty of strength `ridge`; `ridge` = ∞ is `empirical` exactly.
    /// Reaches ideal points off the prototypes' span, which no mixture can. Checkpoints hold
    /// the seen users' mixtures only; an enrolled user's δ is stored in `enrollments`
    /// ([`super::fit_enrolled_user`]) and added by scoring.
    Offset,
}

impl Estimator {
    /// The name used in configs and output.
    pub fn name(self) -> &'static str {
        match self {
            Estimator::Auto => "auto",
            Estimator::Map => "map",
            Estimator::Posterior => "posterior",
            Estimator::Empirical => "empirical",
            Estimator::Mle => "mle",
            Estimator::Offset => "offset",
        }
    }
}

impl fmt::Display for Estimator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Estimator {
    type Err = PalError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Estimator::Auto),
            "map" => Ok(Estimator::Map),
            "posterior" => Ok(Estimator::Posterior),
            "empirical" => Ok(Estimator::Empirical),
            "mle" => Ok(Estimator::Mle),
            "offset" => Ok(Estimator::Offset),
            other => Err(PalError::config(
                "estimator",
                format!(
                    "is '{other}', expected one of auto, map, posterior, empirical, mle, offset"
                ),
            )),
        }
    }
}

/// Few-shot adaptation of unseen users (PAL-SPEC "Users the model has not seen").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FewShotConfig {
    /// The estimator of a new user's logits. Default `auto`.
    #[serde(default)]
    pub estimator: Estimator,
    /// Multiplies the prior's standard deviations (`map`, `posterior`; for `empirical`, the
    /// blur around each seen user's atom): above 1 trusts the shots more, below 1 the seen
    /// users more. Default 1.
    #[serde(default = "default_prior_scale")]
    pub prior_scale: f64,
    /// Ridge strength λ of `offset`: the penalty (λ/2)·‖δ/ρ‖² on a user's offset δ, ρ the
    /// prototypes' root-mean-square norm (so λ is free of the embedding's scale); larger
    /// keeps the user nearer their mixture, `.inf` (∞) is `empirical` exactly; a finite value
    /// must be at most [`MAX_RIDGE`] (1e12). Default 100.
    #[serde(default = "default_ridge")]
    pub ridge: f64,
    /// Full-batch AdamW steps on the new logits (`map`, `mle`; a fixed number: no held-out
    /// data decides) and on `offset`'s δ, at most [`MAX_FS_STEPS`]. Default 300.
    #[serde(default = "default_fs_steps")]
    pub steps: usize,
    /// Learning rate of those steps. Default 0.05.
    #[serde(default = "default_fs_lr")]
    pub lr: f64,
    /// Prior draws of the importance sampler (`posterior`; `empirical` takes at least one per
    /// seen user, at most this many seen users); at most [`MAX_FS_SAMPLES`]. Default 512.
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Share of each user's comparisons (with [`QueriesBy::Item`], of the items they
    /// compared) held out as that user's fixed query set. Default 0.5.
    #[serde(default = "default_query_frac")]
    pub query_frac: f64,
    /// Fewest queries per user: by pair, the queries are raised to it; by item, users with
    /// fewer are excluded. Default 10.
    #[serde(default = "default_min_queries")]
    pub min_queries: usize,
    /// What a user's queries are drawn by: `pair` (default: a share of their comparisons) or
    /// `item` (a share of the items they compared; see [`QueriesBy`]).
    #[serde(default, skip_serializing_if = "QueriesBy::is_pair")]
    pub queries_by: QueriesBy,
    /// Seed for the query sets, the shots and the sampler. Default 0.
    #[serde(default)]
    pub seed: u64,
}

/// How a user's fixed queries are set apart from their shots (issue 14's protocol).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueriesBy {
    /// A seeded share (`query_frac`, at least `min_queries`) of the user's comparisons; the
    /// shots are the rest, so a query's items are usually among the shots' too.
    #[default]
    Pair,
    /// A seeded share (`query_frac`) of the ITEMS the user compared: the queries are the
    /// user's comparisons of two such items, the shots those of two other items, and
    /// comparisons across the two are used for neither. No query item is in any shot, as when
    /// seen users' test pairs are split by item (the polis stage's `split_by: statement`).
    Item,
}

impl QueriesBy {
    /// Whether this is the default, [`QueriesBy::Pair`].
    pub fn is_pair(&self) -> bool {
        *self == QueriesBy::Pair
    }
}

impl FromStr for QueriesBy {
    type Err = PalError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pair" => Ok(QueriesBy::Pair),
            "item" => Ok(QueriesBy::Item),
            other => Err(PalError::config(
                "queries_by",
                format!("is '{other}', expected pair or item"),
            )),
        }
    }
}

fn default_prior_scale() -> f64 {
    1.0
}
/// The most training epochs (`epochs`): far past any run that ends in a useful time, and low
/// enough that every step count derived from it fits its type.
pub const MAX_EPOCHS: usize = 1_000_000;

/// The most full-batch AdamW steps of one few-shot fit (`steps`): a bound so that one
/// request (an enrolment sent to `palpipe serve`, say) cannot hold a worker for days.
pub const MAX_FS_STEPS: usize = 100_000;

/// The most prior draws of the few-shot sampler (`samples`): memory and time grow with them,
/// so an absurd count would exhaust memory rather than help.
pub const MAX_FS_SAMPLES: usize = 1_000_000;

/// The largest finite `ridge`: stronger ones hold the offset at 0 in any case, and above about
/// 4e20 the penalty's gradient squared overflows f32 (NaN offsets). `.inf` stays allowed.
pub const MAX_RIDGE: f64 = 1e12;

/// JSON form of an optional ridge strength λ: a number, or the string "inf" for λ = ∞ (JSON
/// has no infinity; serde_json would write `null`, which reads back as "no ridge"). Reads
/// numbers, "inf" and null / absence (`None`). Use with `#[serde(default, with = ...)]`.
pub mod ridge_json {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `None` as null, ∞ as "inf", any other λ as a number.
    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(x) if x.is_infinite() && *x > 0.0 => s.serialize_some("inf"),
            Some(x) => s.serialize_some(x),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Num(f64),
        Text(String),
    }

    /// Reads a number, "inf" or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Option::<Repr>::deserialize(d)? {
            None => Ok(None),
            Some(Repr::Num(x)) => Ok(Some(x)),
            Some(Repr::Text(t)) if t == "inf" => Ok(Some(f64::INFINITY)),
            Some(Repr::Text(t)) => Err(serde::de::Error::custom(format!(
                "ridge is '{t}', expected a number or \"inf\""
            ))),
        }
    }
}

fn default_ridge() -> f64 {
    100.0
}
fn default_fs_steps() -> usize {
    300
}
fn default_fs_lr() -> f64 {
    0.05
}
fn default_samples() -> usize {
    512
}
fn default_query_frac() -> f64 {
    0.5
}
fn default_min_queries() -> usize {
    10
}

impl Default for FewShotConfig {
    fn default() -> Self {
        FewShotConfig {
            estimator: Estimator::default(),
            prior_scale: default_prior_scale(),
            ridge: default_ridge(),
            steps: default_fs_steps(),
            lr: default_fs_lr(),
            samples: default_samples(),
            query_frac: default_query_frac(),
            min_queries: default_min_queries(),
            queries_by: QueriesBy::Pair,
            seed: 0,
        }
    }
}

impl FewShotConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(PalError::config(
                "lr",
                format!("is {}, it must be ≥ 0", self.lr),
            ));
        }
        if !(self.prior_scale.is_finite() && self.prior_scale > 0.0) {
            return Err(PalError::config(
                "prior_scale",
                format!("is {}, it must be > 0", self.prior_scale),
            ));
        }
        if self.ridge.is_nan() || self.ridge <= 0.0 {
            return Err(PalError::config(
                "ridge",
                format!(
                    "is {}, it must be > 0 (inf allowed: no offset; .inf in YAML)",
                    self.ridge
                ),
            ));
        }
        if self.ridge.is_finite() && self.ridge > MAX_RIDGE {
            return Err(PalError::config(
                "ridge",
                format!(
                    "is {}, it must be at most {MAX_RIDGE:e}\nhint: so strong a ridge holds the offset at 0; write inf (.inf in YAML) for no offset",
                    self.ridge
                ),
            ));
        }
        if !(self.query_frac > 0.0 && self.query_frac < 1.0) {
            return Err(PalError::config(
                "query_frac",
                format!(
                    "is {}, it must be between 0 and 1 (exclusive)",
                    self.query_frac
                ),
            ));
        }
        count_in(
            "samples",
            self.samples,
            1..=MAX_FS_SAMPLES,
            "the default 512 already averages well; memory and time grow with the draws",
        )?;
        count_in(
            "steps",
            self.steps,
            0..=MAX_FS_STEPS,
            "the default is 300; a few-shot fit has K logits (and offset's d values) to find, and rarely moves after a few hundred steps",
        )
    }
}

/// A configuration error for count `field` outside `range` ("is N, it must be at least L",
/// or "at most M" followed by `hint` when one is given); `Ok` inside it.
fn count_in(
    field: &str,
    value: usize,
    range: std::ops::RangeInclusive<usize>,
    hint: &str,
) -> Result<()> {
    let (least, most) = (*range.start(), *range.end());
    if value < least {
        return Err(PalError::config(
            field,
            format!("is {value}, it must be at least {least}"),
        ));
    }
    if value > most {
        let hint = match hint {
            "" => String::new(),
            h => format!("\nhint: {h}"),
        };
        return Err(PalError::config(
            field,
            format!("is {value}, it must be at most {most}{hint}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// λ = ∞ is written "inf" (not null, which reads back as no ridge) and reads back as ∞;
    /// finite λ and None round-trip as themselves; other text is refused.
    #[test]
    fn ridge_json_round_trips_infinity() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct R {
            #[serde(default, with = "ridge_json")]
            ridge: Option<f64>,
        }
        let inf = serde_json::to_string(&R {
            ridge: Some(f64::INFINITY),
        })
        .unwrap();
        assert_eq!(inf, r#"{"ridge":"inf"}"#);
        let back: R = serde_json::from_str(&inf).unwrap();
        assert_eq!(back.ridge, Some(f64::INFINITY));
        for r in [None, Some(100.0), Some(0.5)] {
            let text = serde_json::to_string(&R { ridge: r }).unwrap();
            assert_eq!(serde_json::from_str::<R>(&text).unwrap().ridge, r, "{text}");
        }
        assert_eq!(serde_json::from_str::<R>("{}").unwrap().ridge, None);
        let err = serde_json::from_str::<R>(r#"{"ridge":"big"}"#).unwrap_err();
        assert!(err.to_string().contains("'big'"), "{err}");
    }

    /// A finite ridge above the bound is refused, naming the key; ∞ and the bound pass.
    #[test]
    fn ridge_above_the_bound_is_refused() {
        let with = |ridge: f64| FewShotConfig {
            ridge,
            ..FewShotConfig::default()
        };
        assert!(with(f64::INFINITY).validate().is_ok());
        assert!(with(1e12).validate().is_ok());
        for bad in [1e13, 5e20, -1.0, 0.0, f64::NAN] {
            let e = with(bad).validate().unwrap_err().to_string();
            assert!(e.contains("'ridge'"), "{bad}: {e}");
        }
        let e = with(1e13).validate().unwrap_err().to_string();
        assert!(e.contains("at most 1e12") && e.contains("hint:"), "{e}");
    }

    #[test]
    fn epochs_have_an_upper_bound() {
        let with = |epochs: usize| TrainConfig {
            epochs,
            ..TrainConfig::default()
        };
        assert!(with(1_000_000).validate().is_ok());
        for bad in [1_000_001, usize::MAX] {
            let e = with(bad).validate().unwrap_err().to_string();
            assert!(
                e.contains("'epochs'") && e.contains("at most 1000000"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn few_shot_steps_and_samples_have_an_upper_bound() {
        let ok = FewShotConfig {
            steps: 100_000,
            samples: 1_000_000,
            ..FewShotConfig::default()
        };
        assert!(ok.validate().is_ok());
        for (cfg, field, shown) in [
            (
                FewShotConfig {
                    steps: 100_001,
                    ..ok.clone()
                },
                "'steps'",
                "is 100001, it must be at most 100000",
            ),
            (
                FewShotConfig {
                    samples: usize::MAX,
                    ..ok.clone()
                },
                "'samples'",
                "must be at most 1000000",
            ),
        ] {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(shown), "{e}");
        }
    }

    #[test]
    fn arch_parses_and_prints_back() {
        for s in [
            "mlp2-gelu-dropout0",
            "mlp2-relu-dropout5-residual",
            "mlp0-linear-dropout25",
        ] {
            let a: Arch = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        let a: Arch = "mlp2-relu-dropout5-residual".parse().unwrap();
        assert_eq!(a.hidden_layers, 2);
        assert_eq!(a.linear_layers(), 3);
        assert!((a.dropout() - 0.5).abs() < 1e-12);
        assert!(a.residual);
        let a: Arch = "mlp1-gelu-dropout25".parse().unwrap();
        assert!((a.dropout() - 0.25).abs() < 1e-12);
    }

    #[test]
    fn arch_errors_name_the_bad_part() {
        let cases = [
            ("mlpx-gelu-dropout0", "layer count 'mlpx'"),
            ("cnn2-gelu-dropout0", "first part 'cnn2'"),
            ("mlp2-tanh-dropout0", "activation 'tanh'"),
            ("mlp2-gelu-drop5", "dropout part 'drop5'"),
            ("mlp2-gelu-dropout0.5", "dropout part 'dropout0.5'"),
            ("mlp2-gelu-dropout0-skip", "suffix 'skip'"),
            ("mlp2-gelu", "has 2 dash-separated parts"),
        ];
        for (s, want) in cases {
            let e = s.parse::<Arch>().unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
            assert!(e.contains(&format!("'{s}'")), "{s}: {e}");
        }
    }

    #[test]
    fn configs_reject_unknown_fields_and_round_trip() {
        let m: ModelConfig =
            serde_json::from_str(r#"{"kind":"pal-a","k":3,"item_arch":"mlp1-relu-dropout0"}"#)
                .unwrap();
        assert_eq!(m.kind, ModelKind::PalA);
        assert_eq!(m.k, 3);
        let back: ModelConfig = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert!(serde_json::from_str::<ModelConfig>(r#"{"kk":3}"#).is_err());
        let e = serde_json::from_str::<ModelConfig>(r#"{"item_arch":"mlp1-tanh-dropout0"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("activation 'tanh'"), "{e}");
        let t: TrainConfig =
            serde_json::from_str(r#"{"epochs":3,"user_logits":{"lr":0.1}}"#).unwrap();
        assert_eq!(t.epochs, 3);
        assert_eq!(t.user_logits.weight_decay, 0.0);
        assert!(serde_json::from_str::<TrainConfig>(r#"{"lr":3}"#).is_err());
        let f: FewShotConfig =
            serde_json::from_str(r#"{"estimator":"posterior","steps":40}"#).unwrap();
        assert_eq!(f.estimator, Estimator::Posterior);
        assert_eq!(f.steps, 40);
        assert!(serde_json::from_str::<FewShotConfig>(r#"{"estimator":"mean"}"#).is_err());
    }

    #[test]
    fn param_count_counts_three_linears_for_mlp2() {
        let m = ModelConfig {
            kind: ModelKind::PalB,
            k: 2,
            d: 512,
            item_arch: "mlp2-gelu-dropout0".parse().unwrap(),
            prototype_arch: "mlp2-gelu-dropout0".parse().unwrap(),
            dx: 1024,
            dp: 1024,
            ..ModelConfig::default()
        };
        let one = (1024 * 512 + 512) + 2 * (512 * 512 + 512);
        assert_eq!(m.param_count(10), 3 * one + 1 + 10 * 2);
    }
}
