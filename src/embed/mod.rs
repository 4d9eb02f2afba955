//! embed: turns text (and images) into L2-normalised f32 vectors.
//!
//! This module owns the encoder interface ([`TextEncoder`], [`ImageEncoder`]), the one place
//! that chooses a compute device ([`device`]), where model folders are found
//! ([`resolve_model_dir`]) and the error type every encoder returns ([`EmbedError`]).
//! The encoders themselves live beside it: [`bert`] (BERT-family sentence encoders such as
//! all-MiniLM-L6-v2, mean pooled) and [`clip`] (CLIP image and text towers); [`parity`]
//! compares either with a reference implementation's vectors on any device.
//!
//! It does not cache vectors or know about tables: the store (`src/store`) keys vectors by
//! [`TextEncoder::encoder_id`], and the pipeline (`src/pipeline`) decides what to embed.
//!
//! Model folders are found, in order, from an explicit path, from `$PALPIPE_MODELS/<name>`,
//! else from `$HOME/.cache/palpipe/models/<name>`; `make setup` installs the default one.

pub mod bert;
mod bert_net;
pub mod clip;
pub mod parity;

use std::path::{Path, PathBuf};

pub use bert::{BertSentenceEncoder, DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH};
pub use clip::ClipEncoder;

/// Folder name of the default text encoder inside the models folder.
pub const MINILM_L6_V2: &str = "all-MiniLM-L6-v2";

/// Environment variable naming a folder that holds model folders (`<it>/all-MiniLM-L6-v2/`).
pub const MODELS_ENV: &str = "PALPIPE_MODELS";

/// Turns texts into unit-length vectors of [`TextEncoder::dim`] floats.
pub trait TextEncoder: Send + Sync {
    /// Names the model and its exact weights, e.g. `all-MiniLM-L6-v2:0123456789abcdef`;
    /// vectors from encoders with different ids must never be mixed.
    fn encoder_id(&self) -> &str;
    /// Length of every vector this encoder returns.
    fn dim(&self) -> usize;
    /// One L2-normalised vector per text, in input order. An empty (or all-whitespace)
    /// text is an error ([`EmbedError::EmptyText`]); an empty slice gives an empty result.
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Turns images into unit-length vectors of [`ImageEncoder::dim`] floats.
pub trait ImageEncoder: Send + Sync {
    /// Names the model and its exact weights, as [`TextEncoder::encoder_id`].
    fn encoder_id(&self) -> &str;
    /// Length of every vector this encoder returns.
    fn dim(&self) -> usize;
    /// One L2-normalised vector per image, in input order.
    fn embed_images(&self, images: &[image::DynamicImage]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Everything that can go wrong while loading or running an encoder.
///
/// Messages are lowercase, quote the file or value at fault and end with a `hint:` line
/// when the fix is known.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A model folder does not exist.
    #[error("model folder '{}' not found\nhint: run 'make setup' (or set {MODELS_ENV} to a folder holding '{model}/')", path.display())]
    MissingDir { path: PathBuf, model: String },
    /// A file of a model folder does not exist.
    #[error("model file '{}' not found\nhint: run 'make setup' (or set {MODELS_ENV} to a folder holding '{model}/')", path.display())]
    MissingFile { path: PathBuf, model: String },
    /// A file exists but cannot be read.
    #[error("cannot read '{}': {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The weights file is not a readable safetensors file.
    #[error("'{}' is not a valid safetensors file: {reason}", path.display())]
    CorruptWeights { path: PathBuf, reason: String },
    /// The weights file is readable but lacks tensors the config asks for, or has wrong shapes.
    #[error("'{}' does not match its config: {reason}", path.display())]
    WeightsMismatch { path: PathBuf, reason: String },
    /// The config file cannot be parsed or describes a model this encoder cannot run.
    #[error("unsupported config '{}': {reason}", path.display())]
    UnsupportedConfig { path: PathBuf, reason: String },
    /// The tokenizer file cannot be loaded or used.
    #[error("tokenizer '{}': {reason}", path.display())]
    Tokenizer { path: PathBuf, reason: String },
    /// A text to embed is empty or only whitespace.
    #[error("text {index} is empty; an empty text has no embedding")]
    EmptyText { index: usize },
    /// An option has a value the encoder cannot use.
    #[error("invalid {what} {value}: {reason}")]
    InvalidOption {
        what: &'static str,
        value: usize,
        reason: String,
    },
    /// An image cannot be decoded.
    #[error("cannot decode image '{what}': {reason}")]
    Image { what: String, reason: String },
    /// The device name is not one palpipe knows.
    #[error("unknown device '{0}'\nhint: use 'cpu', 'cuda' or 'cuda:N'")]
    UnknownDevice(String),
    /// A GPU was asked for but this binary was built without the `cuda` feature.
    #[error(
        "device '{0}' needs CUDA support, which this build lacks\nhint: build with --features cuda"
    )]
    CudaNotBuilt(String),
    /// A tensor operation failed while running the model.
    #[error("{context}: {source}")]
    Candle {
        context: String,
        source: candle_core::Error,
    },
    /// `$HOME` and `$PALPIPE_MODELS` are both unset, so no models folder can be found.
    #[error("cannot find the models folder: neither {MODELS_ENV} nor HOME is set\nhint: set {MODELS_ENV} to a folder holding '{0}/', or run 'make setup'")]
    NoModelsFolder(String),
}

impl EmbedError {
    pub(crate) fn candle(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Self {
        let context = context.into();
        // candle attaches a backtrace to its errors when RUST_BACKTRACE is set: a user-facing
        // message keeps what went wrong and leaves the backtrace out.
        move |source| EmbedError::Candle {
            context,
            source: match source {
                candle_core::Error::WithBacktrace { inner, .. } => *inner,
                other => other,
            },
        }
    }
}

/// Chooses the compute device: `"cpu"`, `"cuda"` (GPU 0) or `"cuda:N"`.
///
/// This is the only place palpipe picks a device. Asking for CUDA from a build without the
/// `cuda` cargo feature is an error that names the feature.
pub fn device(name: &str) -> Result<candle_core::Device, EmbedError> {
    let name = name.trim();
    if name.eq_ignore_ascii_case("cpu") {
        return Ok(candle_core::Device::Cpu);
    }
    let ordinal = if name.eq_ignore_ascii_case("cuda") {
        0
    } else if let Some(n) = name.strip_prefix("cuda:") {
        n.parse::<usize>()
            .map_err(|_| EmbedError::UnknownDevice(name.to_string()))?
    } else {
        return Err(EmbedError::UnknownDevice(name.to_string()));
    };
    cuda_device(name, ordinal)
}

#[cfg(feature = "cuda")]
fn cuda_device(name: &str, ordinal: usize) -> Result<candle_core::Device, EmbedError> {
    candle_core::Device::new_cuda(ordinal).map_err(EmbedError::candle(format!(
        "cannot open device '{name}' (a GPU and its driver are needed; `nvidia-smi` lists them)"
    )))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(name: &str, _ordinal: usize) -> Result<candle_core::Device, EmbedError> {
    Err(EmbedError::CudaNotBuilt(name.to_string()))
}

/// The folder holding model folders: `$PALPIPE_MODELS`, else `$HOME/.cache/palpipe/models`.
///
/// `model` only names what is being looked for in the error when neither variable is set.
pub fn models_root(model: &str) -> Result<PathBuf, EmbedError> {
    if let Some(dir) = std::env::var_os(MODELS_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home)
            .join(".cache")
            .join("palpipe")
            .join("models")),
        None => Err(EmbedError::NoModelsFolder(model.to_string())),
    }
}

/// Finds the folder of model `name`: `explicit` when given (the model folder itself), else
/// `<models_root>/<name>`. The folder must exist; its files are checked when loading.
pub fn resolve_model_dir(explicit: Option<&Path>, name: &str) -> Result<PathBuf, EmbedError> {
    let dir = match explicit {
        Some(p) => p.to_path_buf(),
        None => models_root(name)?.join(name),
    };
    if !dir.is_dir() {
        return Err(EmbedError::MissingDir {
            path: dir,
            model: name.to_string(),
        });
    }
    Ok(dir)
}

/// `dir/file`, or [`EmbedError::MissingFile`] naming it.
pub(crate) fn require_file(dir: &Path, file: &str) -> Result<PathBuf, EmbedError> {
    let path = dir.join(file);
    if !path.is_file() {
        let model = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        return Err(EmbedError::MissingFile { path, model });
    }
    Ok(path)
}

/// Reads a whole file, mapping errors to [`EmbedError::Io`].
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, EmbedError> {
    std::fs::read(path).map_err(|source| EmbedError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// `<folder name>:<first 16 hex digits of blake3(weights)>`.
pub(crate) fn weights_id(dir: &Path, weights: &[u8]) -> String {
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".to_string());
    let hash = blake3::hash(weights).to_hex();
    format!("{name}:{}", &hash.as_str()[..16])
}

/// Scales `v` to unit length in place (a zero vector stays zero).
pub(crate) fn l2_normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x = (*x as f64 / norm) as f32;
        }
    }
}

/// Cosine similarity of two vectors (in f64).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_errors_keep_their_message_and_drop_backtraces() {
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("boom".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let e = EmbedError::candle("running the model")(e);
        assert_eq!(e.to_string(), "running the model: boom");
    }

    #[test]
    fn device_cpu_and_unknown() {
        assert!(matches!(device("cpu"), Ok(candle_core::Device::Cpu)));
        assert!(matches!(device("CPU"), Ok(candle_core::Device::Cpu)));
        let e = device("tpu").unwrap_err();
        assert!(e.to_string().contains("unknown device 'tpu'"), "{e}");
        assert!(matches!(
            device("cuda:x"),
            Err(EmbedError::UnknownDevice(_))
        ));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn device_cuda_without_feature_names_the_feature() {
        let e = device("cuda").unwrap_err();
        assert!(e.to_string().contains("build with --features cuda"), "{e}");
        let e = device("cuda:1").unwrap_err();
        assert!(e.to_string().contains("'cuda:1'"), "{e}");
    }

    #[test]
    fn missing_model_dir_names_it_and_hints_setup() {
        let e = resolve_model_dir(Some(Path::new("/nonexistent/palpipe-model")), MINILM_L6_V2)
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("model folder '/nonexistent/palpipe-model' not found"),
            "{msg}"
        );
        assert!(msg.contains("run 'make setup'"), "{msg}");
    }

    #[test]
    fn l2_normalize_and_cosine() {
        let mut v = vec![3.0f32, 4.0];
        l2_normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
        assert!((cosine(&v, &[6.0, 8.0]) - 1.0).abs() < 1e-12);
        let mut z = vec![0.0f32; 3];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }
}
