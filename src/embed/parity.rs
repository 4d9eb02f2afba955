//! Parity: how closely an encoder's vectors agree with the vectors a reference
//! implementation gave for the same inputs.
//!
//! The references are committed fixtures: `tests/fixtures/tiny_clip/expected.json` (Hugging
//! Face `transformers` on a tiny random CLIP, written by `make tiny-clip`) and
//! `tests/fixtures/minilm/expected.json` (a float64 numpy BERT on all-MiniLM-L6-v2's weights,
//! written by `scripts/minilm_reference.py`). The check is device independent: the unit tests
//! run it on the CPU, `palpipe parity --device cuda` runs the same code on a GPU, which is how
//! a CUDA build is checked on a lent GPU machine (`scripts/device-check.sh`).

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Deserialize;

use super::clip::decode_image;
use super::{cosine, BertSentenceEncoder, ClipEncoder, EmbedError, ImageEncoder, TextEncoder};

/// The cosine every vector must reach, as the issue asks (the CPU reaches 1 − 1e-6 or better).
pub const MIN_COSINE: f64 = 0.9999;

/// One input and the cosine of our vector with the reference's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Agreement {
    /// What was embedded: `image <file>` or `text <first 60 characters>`.
    pub input: String,
    pub cosine: f64,
}

/// Every input of one fixture, embedded on one device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParityReport {
    pub fixture: PathBuf,
    pub encoder_id: String,
    pub agreements: Vec<Agreement>,
}

impl ParityReport {
    /// The input that agrees least, if there is any input.
    pub fn lowest(&self) -> Option<&Agreement> {
        self.agreements
            .iter()
            .min_by(|a, b| a.cosine.total_cmp(&b.cosine))
    }

    /// The inputs whose cosine is below `min` (a NaN cosine counts as below).
    pub fn below(&self, min: f64) -> Vec<&Agreement> {
        self.agreements
            .iter()
            .filter(|a| a.cosine.is_nan() || a.cosine < min)
            .collect()
    }
}

/// A fixture that cannot be used, or an encoder that fails on it.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error("parity fixture '{}': {reason}", path.display())]
    Fixture { path: PathBuf, reason: String },
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

#[derive(Deserialize)]
struct ClipFixture {
    images: Vec<ClipImage>,
    texts: Vec<ClipText>,
}

#[derive(Deserialize)]
struct ClipImage {
    file: String,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct ClipText {
    text: String,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct MinilmFixture {
    items: Vec<MinilmItem>,
}

#[derive(Deserialize)]
struct MinilmItem {
    sentence: String,
    vector: Vec<f32>,
}

fn read_fixture<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ParityError> {
    let bytes = std::fs::read(path).map_err(|e| ParityError::Fixture {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ParityError::Fixture {
        path: path.to_path_buf(),
        reason: format!("not the expected JSON: {e}"),
    })
}

fn agreements(
    fixture: &Path,
    inputs: Vec<String>,
    got: &[Vec<f32>],
    want: &[&[f32]],
) -> Result<Vec<Agreement>, ParityError> {
    let mut out = Vec::with_capacity(inputs.len());
    for ((input, g), w) in inputs.into_iter().zip(got).zip(want) {
        if g.len() != w.len() {
            return Err(ParityError::Fixture {
                path: fixture.to_path_buf(),
                reason: format!(
                    "{input}: the reference vector has {} dimensions, the encoder gives {}",
                    w.len(),
                    g.len()
                ),
            });
        }
        out.push(Agreement {
            cosine: cosine(g, w),
            input,
        });
    }
    Ok(out)
}

fn text_label(text: &str) -> String {
    let short: String = text.chars().take(60).collect();
    if short.len() < text.len() {
        format!("text {short:?}…")
    } else {
        format!("text {short:?}")
    }
}

/// Embeds the CLIP fixture folder's images (`file`, read from beside `expected.json`) and
/// captions with the model in that folder, on `device`.
pub fn check_clip(dir: &Path, device: &Device) -> Result<ParityReport, ParityError> {
    let path = dir.join("expected.json");
    let fx: ClipFixture = read_fixture(&path)?;
    let enc = ClipEncoder::load(dir, device)?;

    let mut images = Vec::with_capacity(fx.images.len());
    for e in &fx.images {
        let file = dir.join(&e.file);
        let bytes = std::fs::read(&file).map_err(|source| EmbedError::Io {
            path: file.clone(),
            source,
        })?;
        images.push(decode_image(&bytes, &e.file)?);
    }
    let got = enc.embed_images(&images)?;
    let want: Vec<&[f32]> = fx.images.iter().map(|e| e.embedding.as_slice()).collect();
    let labels = fx.images.iter().map(|e| format!("image {}", e.file));
    let mut all = agreements(&path, labels.collect(), &got, &want)?;

    let captions: Vec<&str> = fx.texts.iter().map(|e| e.text.as_str()).collect();
    let got = enc.embed_texts(&captions)?;
    let want: Vec<&[f32]> = fx.texts.iter().map(|e| e.embedding.as_slice()).collect();
    let labels = captions.iter().map(|t| text_label(t));
    all.extend(agreements(&path, labels.collect(), &got, &want)?);

    Ok(ParityReport {
        fixture: path,
        encoder_id: ImageEncoder::encoder_id(&enc).to_string(),
        agreements: all,
    })
}

/// Embeds the MiniLM fixture's sentences with the MiniLM model (`model_dir`, else the
/// default models folder) on `device`.
pub fn check_minilm(
    model_dir: Option<&Path>,
    expected: &Path,
    device: &Device,
) -> Result<ParityReport, ParityError> {
    let fx: MinilmFixture = read_fixture(expected)?;
    let enc = BertSentenceEncoder::load_minilm(model_dir, device)?;
    let texts: Vec<&str> = fx.items.iter().map(|i| i.sentence.as_str()).collect();
    let got = enc.embed_texts(&texts)?;
    let want: Vec<&[f32]> = fx.items.iter().map(|i| i.vector.as_slice()).collect();
    let labels = texts.iter().map(|t| text_label(t));
    Ok(ParityReport {
        fixture: expected.to_path_buf(),
        encoder_id: enc.encoder_id().to_string(),
        agreements: agreements(expected, labels.collect(), &got, &want)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_clip() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_clip")
    }

    /// A copy of the tiny CLIP fixture in a temp folder, with its `expected.json` path and
    /// contents, for tests that change the reference.
    fn tiny_clip_copy() -> (tempfile::TempDir, PathBuf, serde_json::Value) {
        let dir = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(tiny_clip()).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
        let path = dir.path().join("expected.json");
        let doc = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        (dir, path, doc)
    }

    #[test]
    fn clip_fixture_agrees_on_the_cpu() {
        let r = check_clip(&tiny_clip(), &Device::Cpu).unwrap();
        assert_eq!(r.agreements.len(), 8, "4 images and 4 captions");
        assert!(r.below(MIN_COSINE).is_empty(), "{:?}", r.agreements);
        assert!(r.encoder_id.starts_with("tiny_clip:"), "{}", r.encoder_id);
        assert!(r.lowest().unwrap().cosine > 0.99999);
    }

    #[test]
    fn a_changed_reference_vector_is_reported_below() {
        let (dir, path, mut doc) = tiny_clip_copy();
        // Negate the second caption's reference vector: cosine −1 for that input alone.
        for x in doc["texts"][1]["embedding"].as_array_mut().unwrap() {
            *x = serde_json::json!(-x.as_f64().unwrap());
        }
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();

        let r = check_clip(dir.path(), &Device::Cpu).unwrap();
        let below = r.below(MIN_COSINE);
        assert_eq!(below.len(), 1, "{:?}", r.agreements);
        assert!(below[0].input.starts_with("text "), "{}", below[0].input);
        assert!((below[0].cosine + 1.0).abs() < 1e-5, "{}", below[0].cosine);
        assert_eq!(r.lowest().unwrap().input, below[0].input);
    }

    #[test]
    fn a_missing_or_malformed_fixture_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_clip(dir.path(), &Device::Cpu).unwrap_err();
        assert!(matches!(e, ParityError::Fixture { .. }), "{e}");
        assert!(e.to_string().contains("expected.json"), "{e}");

        let bad = dir.path().join("minilm.json");
        std::fs::write(&bad, b"{\"items\": 3}").unwrap();
        let e = check_minilm(None, &bad, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("minilm.json"), "{e}");
        assert!(e.to_string().contains("not the expected JSON"), "{e}");
    }

    #[test]
    fn a_reference_of_another_dimension_is_an_error_not_a_cosine() {
        let (dir, path, mut doc) = tiny_clip_copy();
        doc["images"][0]["embedding"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(0.0));
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let e = check_clip(dir.path(), &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("17 dimensions"), "{e}");
    }

    #[test]
    fn minilm_fixture_agrees_on_the_cpu() {
        let expected =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm/expected.json");
        let r = match check_minilm(None, &expected, &Device::Cpu) {
            Ok(r) => r,
            Err(e) => panic!("the all-MiniLM-L6-v2 parity needs the model: {e}"),
        };
        assert!(r.agreements.len() >= 10, "{}", r.agreements.len());
        assert!(r.below(MIN_COSINE).is_empty(), "{:?}", r.lowest());
    }
}
