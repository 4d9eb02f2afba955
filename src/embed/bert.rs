//! bert: BERT-family sentence encoders (all-MiniLM-L6-v2 by default) through candle.
//!
//! A sentence vector is the mean of BERT's last hidden states over the real (unmasked)
//! tokens, scaled to unit length — sentence-transformers' `Transformer → Pooling(mean) →
//! Normalize` stack (Reimers & Gurevych 2019, §3). The network itself is in `bert_net.rs`
//! (candle-transformers' BERT, run by palpipe for speed on the CPU); this file owns loading a
//! model folder (`config.json`, `model.safetensors`, `tokenizer.json`), tokenising, batching
//! and pooling.
//!
//! Tokenisation: the `tokenizer.json` shipped with all-MiniLM-L6-v2 pads and truncates to a
//! fixed 128 tokens; here truncation is [`DEFAULT_MAX_LENGTH`] (256, as sentence-transformers'
//! `max_seq_length`) and padding is to the longest text of each batch. Texts are sorted by
//! token count before batching (less padding) and vectors come back in input order.
//!
//! Parity with an independent numpy implementation (`scripts/minilm_reference.py`) is
//! tested against `tests/fixtures/minilm/expected.json`. The interface and device choice
//! live in `src/embed/mod.rs`; CLIP lives in `src/embed/clip.rs`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::bert_net::BertNet;
use super::{l2_normalize, read_file, require_file, resolve_model_dir, weights_id, EmbedError};
use super::{TextEncoder, MINILM_L6_V2};

/// Default maximum tokens per text, special tokens included (sentence-transformers' 256).
pub const DEFAULT_MAX_LENGTH: usize = 256;

/// Default texts per forward pass. On the 2-core dev CPU (2026-11, shared with builds, so
/// noisy), 1000 Persona statements (12,321 tokens), best of 3 rounds in two runs:
/// batch 1: 33–43 sentences/s, 16: 78–150, 32: 88–191, 64: 88–187, 128: 78
/// (then measured with an ignored test; today `palpipe bench-minilm --batch N`). 32 is as fast as 64 and pads less on mixed lengths.
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// A BERT sentence encoder loaded from a Hugging Face–layout folder.
pub struct BertSentenceEncoder {
    model: BertNet,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    device: Device,
    /// `<folder>:<blake3-16>` of the weights, without the max-length suffix.
    base_id: String,
    /// What [`TextEncoder::encoder_id`] returns.
    id: String,
    hidden_size: usize,
    max_position_embeddings: usize,
    max_length: usize,
    batch_size: usize,
    pad_id: u32,
    pad_type_id: u32,
}

impl std::fmt::Debug for BertSentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertSentenceEncoder")
            .field("id", &self.id)
            .field("dim", &self.hidden_size)
            .field("max_length", &self.max_length)
            .field("batch_size", &self.batch_size)
            .field("device", &self.device)
            .finish()
    }
}

impl BertSentenceEncoder {
    /// Loads all-MiniLM-L6-v2 from `explicit` (the model folder itself) or, when `None`,
    /// from `$PALPIPE_MODELS/all-MiniLM-L6-v2`, else `~/.cache/palpipe/models/all-MiniLM-L6-v2`.
    pub fn load_minilm(explicit: Option<&Path>, device: &Device) -> Result<Self, EmbedError> {
        let dir = resolve_model_dir(explicit, MINILM_L6_V2)?;
        Self::load(&dir, device)
    }

    /// Loads a BERT-family sentence encoder from `dir` (`config.json`, `model.safetensors`,
    /// `tokenizer.json`), with max length [`DEFAULT_MAX_LENGTH`] and batch size
    /// [`DEFAULT_BATCH_SIZE`].
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EmbedError> {
        if !dir.is_dir() {
            let model = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            return Err(EmbedError::MissingDir {
                path: dir.to_path_buf(),
                model: model.unwrap_or_else(|| MINILM_L6_V2.to_string()),
            });
        }
        let config_path = require_file(dir, "config.json")?;
        let weights_path = require_file(dir, "model.safetensors")?;
        let tokenizer_path = require_file(dir, "tokenizer.json")?;

        let config = read_config(&config_path)?;

        let weights = read_file(&weights_path)?;
        let base_id = weights_id(dir, &weights);
        let vb =
            VarBuilder::from_buffered_safetensors(weights, DType::F32, device).map_err(|e| {
                EmbedError::CorruptWeights {
                    path: weights_path.clone(),
                    reason: e.to_string(),
                }
            })?;
        let model = BertNet::load(vb, &config).map_err(|e| EmbedError::WeightsMismatch {
            path: weights_path.clone(),
            reason: e.to_string(),
        })?;

        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| EmbedError::Tokenizer {
                path: tokenizer_path.clone(),
                reason: e.to_string(),
            })?;
        let (pad_id, pad_type_id) = match tokenizer.get_padding() {
            Some(PaddingParams {
                pad_id,
                pad_type_id,
                ..
            }) => (*pad_id, *pad_type_id),
            None => (
                tokenizer
                    .token_to_id("[PAD]")
                    .unwrap_or(config.pad_token_id as u32),
                0,
            ),
        };

        let mut encoder = Self {
            model,
            tokenizer,
            tokenizer_path,
            device: device.clone(),
            id: base_id.clone(),
            base_id,
            hidden_size: config.hidden_size,
            max_position_embeddings: config.max_position_embeddings,
            max_length: 0,
            batch_size: DEFAULT_BATCH_SIZE,
            pad_id,
            pad_type_id,
        };
        encoder.set_max_length(DEFAULT_MAX_LENGTH.min(config.max_position_embeddings))?;
        Ok(encoder)
    }

    /// Truncates texts to `max_length` tokens, special tokens included (default 256; at
    /// most the model's `max_position_embeddings`). A length other than 256 changes the
    /// vectors of long texts, so it is appended to [`TextEncoder::encoder_id`] as `@N`.
    pub fn with_max_length(mut self, max_length: usize) -> Result<Self, EmbedError> {
        self.set_max_length(max_length)?;
        Ok(self)
    }

    /// Embeds at most `batch_size` texts per forward pass (default [`DEFAULT_BATCH_SIZE`]).
    /// Only speed and memory depend on it.
    pub fn with_batch_size(mut self, batch_size: usize) -> Result<Self, EmbedError> {
        if batch_size == 0 {
            return Err(EmbedError::InvalidOption {
                what: "batch size",
                value: 0,
                reason: "must be at least 1".into(),
            });
        }
        self.batch_size = batch_size;
        Ok(self)
    }

    /// Current maximum tokens per text.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Current texts per forward pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token count of each text after truncation, special tokens included.
    pub fn count_tokens(&self, texts: &[&str]) -> Result<Vec<usize>, EmbedError> {
        Ok(self.tokenize(texts)?.iter().map(|e| e.len()).collect())
    }

    fn set_max_length(&mut self, max_length: usize) -> Result<(), EmbedError> {
        if max_length < 2 || max_length > self.max_position_embeddings {
            return Err(EmbedError::InvalidOption {
                what: "max length",
                value: max_length,
                reason: format!(
                    "must be between 2 and the model's max_position_embeddings ({})",
                    self.max_position_embeddings
                ),
            });
        }
        let truncation = TruncationParams {
            max_length,
            ..Default::default()
        };
        self.tokenizer
            .with_truncation(Some(truncation))
            .map_err(|e| EmbedError::Tokenizer {
                path: self.tokenizer_path.clone(),
                reason: e.to_string(),
            })?;
        // Padding is done per batch in `embed_sorted`, to the batch's longest text.
        self.tokenizer.with_padding(None);
        self.max_length = max_length;
        self.id = if max_length == DEFAULT_MAX_LENGTH {
            self.base_id.clone()
        } else {
            format!("{}@{max_length}", self.base_id)
        };
        Ok(())
    }

    /// Token ids and type ids per text, truncated, unpadded.
    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoded>, EmbedError> {
        if let Some(index) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(EmbedError::EmptyText { index });
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer {
                path: self.tokenizer_path.clone(),
                reason: e.to_string(),
            })?;
        Ok(encodings
            .into_iter()
            .map(|e| Encoded {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
            })
            .collect())
    }

    /// Mean-pooled, unit-length vectors of one batch of encodings (any lengths).
    fn embed_batch(&self, batch: &[&Encoded]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let b = batch.len();
        let l = batch.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = vec![self.pad_id; b * l];
        let mut type_ids = vec![self.pad_type_id; b * l];
        let mut mask = vec![0u32; b * l];
        for (row, e) in batch.iter().enumerate() {
            let n = e.len();
            ids[row * l..row * l + n].copy_from_slice(&e.ids);
            type_ids[row * l..row * l + n].copy_from_slice(&e.type_ids);
            mask[row * l..row * l + n].fill(1);
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::from_vec(ids, (b, l), &self.device)?; // [B, L]
            let type_ids = Tensor::from_vec(type_ids, (b, l), &self.device)?; // [B, L]
            let mask = Tensor::from_vec(mask, (b, l), &self.device)?; // [B, L]
            let h = self.model.forward(&ids, &type_ids, &mask)?; // [B, L, H]
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // [B, L, 1]
            let summed = h.broadcast_mul(&m)?.sum(1)?; // [B, H]
            let counts = m.sum(1)?; // [B, 1]
            let mean = summed.broadcast_div(&counts)?; // [B, H]
            mean.to_vec2::<f32>()
        };
        let mut vectors = run().map_err(EmbedError::candle("bert forward pass"))?;
        for v in vectors.iter_mut() {
            l2_normalize(v);
        }
        Ok(vectors)
    }
}

/// One tokenised text.
struct Encoded {
    ids: Vec<u32>,
    type_ids: Vec<u32>,
}

impl Encoded {
    fn len(&self) -> usize {
        self.ids.len()
    }
}

impl TextEncoder for BertSentenceEncoder {
    fn encoder_id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        self.hidden_size
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encoded = self.tokenize(texts)?;
        // Sort by token count (stable, ties by input position) so batches pad little.
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| encoded[i].len());
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); encoded.len()];
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<&Encoded> = chunk.iter().map(|&i| &encoded[i]).collect();
            let vectors = self.embed_batch(&batch)?;
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

/// Parses `config.json` into candle's BERT config and checks what this encoder relies on.
fn read_config(path: &Path) -> Result<Config, EmbedError> {
    let bytes = read_file(path)?;
    let unsupported = |reason: String| EmbedError::UnsupportedConfig {
        path: path.to_path_buf(),
        reason,
    };
    let config: Config = serde_json::from_slice(&bytes).map_err(|e| unsupported(e.to_string()))?;
    if let Some(t) = config.model_type.as_deref() {
        if matches!(t, "roberta" | "xlm-roberta" | "camembert") {
            return Err(unsupported(format!(
                "model_type '{t}' is not supported: RoBERTa-family models number positions from pad_token_id + 1, and this encoder runs BERT's 0, 1, 2, …"
            )));
        }
        if t != "bert" {
            return Err(unsupported(format!(
                "model_type '{t}' is not a BERT encoder"
            )));
        }
    }
    if config.hidden_size == 0
        || config.num_attention_heads == 0
        || !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
    {
        return Err(unsupported(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            config.hidden_size, config.num_attention_heads
        )));
    }
    if config.max_position_embeddings < 2 {
        return Err(unsupported(format!(
            "max_position_embeddings {} is too small",
            config.max_position_embeddings
        )));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::cosine;

    const MAN_EATING_FOOD: &str = "A man is eating food.";
    const MAN_EATING_BREAD: &str = "A man is eating a piece of bread.";

    /// The MiniLM model, or a failure that says how to get it: these tests must not pass
    /// silently on a machine without the model.
    fn minilm() -> BertSentenceEncoder {
        match BertSentenceEncoder::load_minilm(None, &Device::Cpu) {
            Ok(m) => m,
            Err(e) => panic!("the all-MiniLM-L6-v2 tests need the model: {e}"),
        }
    }

    struct Fixture {
        sentences: Vec<String>,
        tokens: Vec<usize>,
        vectors: Vec<Vec<f32>>,
        cosine_0_1: f64,
    }

    fn fixture() -> Fixture {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm/expected.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read '{}': {e}", path.display()));
        let doc: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
        let items = doc["items"].as_array().expect("items");
        Fixture {
            sentences: items
                .iter()
                .map(|i| i["sentence"].as_str().unwrap().to_string())
                .collect(),
            tokens: items
                .iter()
                .map(|i| i["tokens"].as_u64().unwrap() as usize)
                .collect(),
            vectors: items
                .iter()
                .map(|i| {
                    let v = i["vector"].as_array().unwrap();
                    v.iter().map(|x| x.as_f64().unwrap() as f32).collect()
                })
                .collect(),
            cosine_0_1: doc["cosine_0_1"].as_f64().unwrap(),
        }
    }

    #[test]
    fn minilm_matches_numpy_reference() {
        let enc = minilm();
        let fx = fixture();
        let texts: Vec<&str> = fx.sentences.iter().map(String::as_str).collect();
        assert_eq!(
            enc.count_tokens(&texts).unwrap(),
            fx.tokens,
            "token counts differ from numpy"
        );
        let got = enc.embed_texts(&texts).unwrap();
        assert_eq!(got.len(), fx.vectors.len());
        let worst = got
            .iter()
            .zip(&fx.vectors)
            .map(|(g, w)| cosine(g, w))
            .fold(1.0, f64::min);
        let max_abs = got
            .iter()
            .flatten()
            .zip(fx.vectors.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "candle vs numpy, {} sentences: lowest cosine 1 - {:.1e}, max |diff| {max_abs:.1e}",
            got.len(),
            1.0 - worst
        );
        for (i, (g, want)) in got.iter().zip(&fx.vectors).enumerate() {
            assert_eq!(g.len(), 384);
            let c = cosine(g, want);
            let max_abs = g
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                c > 0.9999,
                "sentence {i} ({} tokens) cosine to numpy {c:.7}, max |diff| {max_abs:.2e}: {:?}",
                fx.tokens[i],
                &texts[i][..texts[i].len().min(50)]
            );
            let norm = g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "sentence {i} norm {norm}");
        }
    }

    #[test]
    fn minilm_man_eating_cosine_is_reference() {
        let enc = minilm();
        let v = enc
            .embed_texts(&[MAN_EATING_FOOD, MAN_EATING_BREAD])
            .unwrap();
        let c = cosine(&v[0], &v[1]);
        eprintln!("candle cosine(man eating food, bread) = {c:.6}");
        assert!((c - 0.7553).abs() < 0.001, "cosine {c:.6}, expected 0.7553");
        assert!(
            (c - fixture().cosine_0_1).abs() < 1e-4,
            "cosine {c:.6} vs numpy"
        );
    }

    #[test]
    fn minilm_truncates_at_256_not_128() {
        let enc = minilm();
        let fx = fixture();
        // The fixture holds one text of 128..256 tokens and one cut at 256.
        let mid = fx
            .tokens
            .iter()
            .position(|&n| n > 128 && n < 256)
            .expect("a 129..255 text");
        let long = fx
            .tokens
            .iter()
            .position(|&n| n == 256)
            .expect("a 256-token text");
        let texts = [fx.sentences[mid].as_str(), fx.sentences[long].as_str()];
        assert_eq!(enc.count_tokens(&texts).unwrap(), vec![fx.tokens[mid], 256]);
        let at_256 = enc.embed_texts(&texts).unwrap();
        let enc128 = enc.with_max_length(128).unwrap();
        assert!(
            enc128.encoder_id().ends_with("@128"),
            "{}",
            enc128.encoder_id()
        );
        assert_eq!(enc128.count_tokens(&texts).unwrap(), vec![128, 128]);
        let at_128 = enc128.embed_texts(&texts).unwrap();
        let c = cosine(&at_256[0], &at_128[0]);
        assert!(
            c < 0.999,
            "truncating at 128 should change a {}-token text: {c}",
            fx.tokens[mid]
        );
        assert!(cosine(&at_256[0], &fx.vectors[mid]) > 0.9999);
    }

    #[test]
    fn minilm_order_batch_and_repeat_invariant() {
        let enc = minilm();
        let fx = fixture();
        let texts: Vec<&str> = fx.sentences.iter().map(String::as_str).collect();
        let first = enc.embed_texts(&texts).unwrap();
        let again = enc.embed_texts(&texts).unwrap();
        assert_eq!(first, again, "same input must give bit-identical output");
        let reversed: Vec<&str> = texts.iter().rev().copied().collect();
        let enc1 = enc.with_batch_size(1).unwrap();
        let one_by_one = enc1.embed_texts(&reversed).unwrap();
        for (i, v) in one_by_one.iter().rev().enumerate() {
            let c = cosine(v, &first[i]);
            assert!(c > 0.99999, "text {i}: batch of 1 vs batched cosine {c}");
        }
    }

    #[test]
    fn minilm_id_dim_and_empty_inputs() {
        let enc = minilm();
        assert_eq!(enc.dim(), 384);
        let id = enc.encoder_id();
        let hex = id
            .strip_prefix("all-MiniLM-L6-v2:")
            .unwrap_or_else(|| panic!("id {id}"));
        assert_eq!(hex.len(), 16);
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{id}"
        );
        assert!(enc.embed_texts(&[]).unwrap().is_empty());
        let e = enc.embed_texts(&["fine", "  "]).unwrap_err();
        assert!(matches!(e, EmbedError::EmptyText { index: 1 }), "{e}");
        assert!(enc.with_batch_size(0).is_err());
    }

    const TINY_CONFIG: &str = r#"{"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
        "num_attention_heads": 12, "intermediate_size": 1536, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "model_type": "bert"}"#;

    fn temp_model(config: &str, weights: Option<&[u8]>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        if let Some(w) = weights {
            std::fs::write(dir.path().join("model.safetensors"), w).unwrap();
        }
        dir
    }

    #[test]
    fn missing_weights_file_is_named() {
        let dir = temp_model(TINY_CONFIG, None);
        let e = BertSentenceEncoder::load(dir.path(), &Device::Cpu).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, EmbedError::MissingFile { .. }), "{msg}");
        assert!(
            msg.contains("model.safetensors") && msg.contains("make setup"),
            "{msg}"
        );
    }

    #[test]
    fn corrupt_weights_are_reported() {
        let dir = temp_model(
            TINY_CONFIG,
            Some(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"),
        );
        let e = BertSentenceEncoder::load(dir.path(), &Device::Cpu).unwrap_err();
        assert!(matches!(e, EmbedError::CorruptWeights { .. }), "{e}");
        assert!(e.to_string().contains("model.safetensors"), "{e}");
    }

    #[test]
    fn weights_not_matching_config_are_reported() {
        let dir = temp_model(TINY_CONFIG, None);
        let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        let tensors = std::collections::HashMap::from([("unrelated.weight".to_string(), t)]);
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
        let e = BertSentenceEncoder::load(dir.path(), &Device::Cpu).unwrap_err();
        assert!(matches!(e, EmbedError::WeightsMismatch { .. }), "{e}");
    }

    #[test]
    fn unsupported_config_is_reported() {
        let bad_act = TINY_CONFIG.replace("\"gelu\"", "\"swish\"");
        let dir = temp_model(&bad_act, Some(b"unused"));
        let e = BertSentenceEncoder::load(dir.path(), &Device::Cpu).unwrap_err();
        assert!(matches!(e, EmbedError::UnsupportedConfig { .. }), "{e}");
        assert!(e.to_string().contains("config.json"), "{e}");
        let gpt = TINY_CONFIG.replace("\"bert\"", "\"gpt2\"");
        let dir = temp_model(&gpt, Some(b"unused"));
        let e = BertSentenceEncoder::load(dir.path(), &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("model_type 'gpt2'"), "{e}");
        // RoBERTa numbers positions otherwise: refused rather than embedded wrongly.
        let roberta = TINY_CONFIG.replace("\"bert\"", "\"roberta\"");
        let dir = temp_model(&roberta, Some(b"unused"));
        let e = BertSentenceEncoder::load(dir.path(), &Device::Cpu).unwrap_err();
        assert!(
            e.to_string()
                .contains("model_type 'roberta' is not supported"),
            "{e}"
        );
    }
}
