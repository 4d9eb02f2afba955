//! Checkpoints: a folder with `weights.safetensors` and `card.json`.
//!
//! Owns: [`ModelCard`] (the JSON card: format, model config with its kind, K, dims and
//! architectures, training config, seed, parameter count, user id → row map, and the free-form
//! [`CardInfo`] the caller fills: encoder id, training split, run id, metrics) and
//! [`PalModel::save`] / [`PalModel::load`]. Weights are stored as f32 under the names of
//! `PalModel::params` (`f.{layer}.weight|bias`, `g.{k}.{layer}.weight|bias`, `g_vectors`,
//! `prototypes`, `tau`, `user_logits`). Does not own: the store's `models` table (`src/store`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::config::{ModelConfig, TrainConfig};
use super::error::{PalError, Result};
use super::model::PalModel;

/// Card format tag; bumped on incompatible changes.
pub const CARD_FORMAT: &str = "palpipe-pal/1";
/// File names inside a checkpoint folder.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const CARD_FILE: &str = "card.json";

/// Free-form facts about a model that the caller records in its card.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardInfo {
    /// The encoder that made the embeddings (name + weights hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_id: Option<String>,
    /// The training split's name (or query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_split: Option<String>,
    /// The run that produced the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Metrics (any JSON), e.g. the evaluation report.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, serde_json::Value>,
    /// Anything else.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The JSON card written beside the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// [`CARD_FORMAT`].
    pub format: String,
    /// Kind, K, d, dx, dp, architectures, loss, mode, … (dims resolved).
    pub model: ModelConfig,
    /// How it was trained (None for an untrained model).
    pub train: Option<TrainConfig>,
    pub seed: u64,
    pub params: usize,
    /// User id → row of the user logits.
    pub users: BTreeMap<String, u32>,
    /// The caller's facts (encoder id, training split, run id, metrics, extra).
    #[serde(default)]
    pub info: CardInfo,
}

impl PalModel {
    /// The card describing this model.
    pub fn card(&self) -> ModelCard {
        ModelCard {
            format: CARD_FORMAT.to_string(),
            model: self.cfg.clone(),
            train: self.train_cfg.clone(),
            seed: self.seed,
            params: self.param_count(),
            users: self
                .user_ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.clone(), i as u32))
                .collect(),
            info: self.info.clone(),
        }
    }

    /// Writes `dir/weights.safetensors` (f32) and `dir/card.json`, creating `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| PalError::io(dir, e))?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for p in self.params() {
            tensors.insert(p.name, p.var.as_tensor().to_dtype(DType::F32)?);
        }
        let weights = dir.join(WEIGHTS_FILE);
        candle_core::safetensors::save(&tensors, &weights)?;
        let card = serde_json::to_string_pretty(&self.card())
            .map_err(|e| PalError::checkpoint(dir, format!("cannot serialise the card: {e}")))?;
        let card_path = dir.join(CARD_FILE);
        std::fs::write(&card_path, card + "\n").map_err(|e| PalError::io(&card_path, e))?;
        Ok(())
    }

    /// Reads a checkpoint written by [`PalModel::save`]; scores are identical to the saved
    /// model's. Every tensor named by the card's config must be present with its shape.
    pub fn load(dir: &Path) -> Result<PalModel> {
        let card_path = dir.join(CARD_FILE);
        let text = std::fs::read_to_string(&card_path).map_err(|e| PalError::io(&card_path, e))?;
        let card: ModelCard = serde_json::from_str(&text)
            .map_err(|e| PalError::checkpoint(dir, format!("'{CARD_FILE}' does not parse: {e}")))?;
        if card.format != CARD_FORMAT {
            return Err(PalError::checkpoint(
                dir,
                format!("card format '{}' is not '{CARD_FORMAT}'", card.format),
            ));
        }
        let mut ids = vec![None; card.users.len()];
        for (id, &row) in &card.users {
            match ids.get_mut(row as usize) {
                Some(slot @ None) => *slot = Some(id.clone()),
                _ => {
                    return Err(PalError::checkpoint(
                        dir,
                        format!("user '{id}' has a bad or repeated row {row}"),
                    ))
                }
            }
        }
        let ids: Vec<String> = ids
            .into_iter()
            .map(|s| s.expect("every row filled"))
            .collect();
        let mut model =
            PalModel::new(card.model.clone(), ids, card.seed, DType::F32).map_err(|e| {
                PalError::checkpoint(dir, format!("the card's model does not build: {e}"))
            })?;
        model.train_cfg = card.train.clone();
        model.info = card.info.clone();
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.exists() {
            return Err(PalError::checkpoint(
                dir,
                format!("'{WEIGHTS_FILE}' is missing"),
            ));
        }
        let mut tensors = candle_core::safetensors::load(&weights, &model.device)?;
        for p in model.params() {
            let t = tensors.remove(&p.name).ok_or_else(|| {
                PalError::checkpoint(
                    dir,
                    format!("tensor '{}' is missing from '{WEIGHTS_FILE}'", p.name),
                )
            })?;
            if t.dims() != p.var.as_tensor().dims() {
                return Err(PalError::checkpoint(
                    dir,
                    format!(
                        "tensor '{}' has shape {:?}, the card implies {:?}",
                        p.name,
                        t.dims(),
                        p.var.as_tensor().dims()
                    ),
                ));
            }
            p.var.set(&t.to_dtype(DType::F32)?)?;
        }
        if let Some(name) = tensors.keys().min() {
            return Err(PalError::checkpoint(
                dir,
                format!("unexpected tensor '{name}' in '{WEIGHTS_FILE}'"),
            ));
        }
        Ok(model)
    }
}
