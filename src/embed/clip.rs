//! clip: CLIP image and text encoders through `candle_transformers::models::clip`.
//!
//! CLIP (Radford et al. 2021, §2.4) embeds an image with a ViT and a text with a causal
//! transformer, each followed by a linear projection into a shared space; here both are
//! L2-normalised so they can be compared by dot product. The model comes from a local
//! folder in the Hugging Face layout (`config.json`, `model.safetensors`, `tokenizer.json`);
//! no weights can be downloaded on palpipe's machines.
//!
//! - Config: HF's `config.json` is mapped by hand onto candle's `ClipConfig` (which has no
//!   serde); only `quick_gelu` and layer-norm eps 1e-5 are supported (candle hard-codes both).
//! - Images: OpenAI preprocessing — RGB, shortest side resized to `image_size` (Pillow's
//!   bicubic, through `fast_image_resize`), centre crop, scaled to [0, 1], normalised with
//!   CLIP's mean and std.
//! - Text: tokenised, truncated and padded to `max_position_embeddings` (77), pooled at the
//!   first end-of-text token (found on the host, so pad ids do not matter).
//!
//! The interface, device choice and errors live in `src/embed/mod.rs`; BERT sentence
//! encoders live in `src/embed/bert.rs`. Parity with Hugging Face `transformers` is checked
//! against the committed fixture `tests/fixtures/tiny_clip` (see `make tiny-clip`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::{
    Activation, ClipTextConfig, ClipTextTransformer,
};
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use candle_transformers::models::clip::ClipConfig;
use image::DynamicImage;
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use super::{l2_normalize, read_file, require_file, weights_id, EmbedError};
use super::{ImageEncoder, TextEncoder};

/// Per-channel mean of OpenAI CLIP's training images (RGB), digits as OpenAI publishes them.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// Per-channel standard deviation of OpenAI CLIP's training images (RGB).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Default images (or texts) per forward pass.
pub const DEFAULT_CLIP_BATCH_SIZE: usize = 16;

/// A CLIP model whose image and text towers both embed into `projection_dim` floats.
pub struct ClipEncoder {
    text_model: ClipTextTransformer,
    vision_model: ClipVisionTransformer,
    text_projection: candle_nn::Linear,
    visual_projection: candle_nn::Linear,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    device: Device,
    id: String,
    config: ClipConfig,
    eot_id: u32,
    pad_id: u32,
    batch_size: usize,
}

impl std::fmt::Debug for ClipEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipEncoder")
            .field("id", &self.id)
            .field("dim", &self.config.vision_config.projection_dim)
            .field("image_size", &self.config.image_size)
            .field("device", &self.device)
            .finish()
    }
}

impl ClipEncoder {
    /// Loads CLIP from a Hugging Face–layout folder `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EmbedError> {
        if !dir.is_dir() {
            let model = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            return Err(EmbedError::MissingDir {
                path: dir.to_path_buf(),
                model: model.unwrap_or_else(|| "clip".to_string()),
            });
        }
        let config_path = require_file(dir, "config.json")?;
        let weights_path = require_file(dir, "model.safetensors")?;
        let tokenizer_path = require_file(dir, "tokenizer.json")?;

        let config = read_clip_config(&config_path)?;

        let weights = read_file(&weights_path)?;
        let id = weights_id(dir, &weights);
        let vb =
            VarBuilder::from_buffered_safetensors(weights, DType::F32, device).map_err(|e| {
                EmbedError::CorruptWeights {
                    path: weights_path.clone(),
                    reason: e.to_string(),
                }
            })?;
        let mismatch = |reason: String| EmbedError::WeightsMismatch {
            path: weights_path.clone(),
            reason,
        };
        // candle silently draws a random class embedding when the tensor is absent.
        if !vb.contains_tensor("vision_model.embeddings.class_embedding") {
            return Err(mismatch(
                "tensor 'vision_model.embeddings.class_embedding' is missing".into(),
            ));
        }
        let load = || -> candle_core::Result<_> {
            let text_model = ClipTextTransformer::new(vb.pp("text_model"), &config.text_config)?;
            let vision_model =
                ClipVisionTransformer::new(vb.pp("vision_model"), &config.vision_config)?;
            let text_projection = candle_nn::linear_no_bias(
                config.text_config.embed_dim,
                config.text_config.projection_dim,
                vb.pp("text_projection"),
            )?;
            let visual_projection = candle_nn::linear_no_bias(
                config.vision_config.embed_dim,
                config.vision_config.projection_dim,
                vb.pp("visual_projection"),
            )?;
            Ok((text_model, vision_model, text_projection, visual_projection))
        };
        let (text_model, vision_model, text_projection, visual_projection) =
            load().map_err(|e| mismatch(e.to_string()))?;

        let tok_err = |reason: String| EmbedError::Tokenizer {
            path: tokenizer_path.clone(),
            reason,
        };
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| tok_err(e.to_string()))?;
        let max_len = config.text_config.max_position_embeddings;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| tok_err(e.to_string()))?;
        let pad_id = tokenizer.get_padding().map(|p| p.pad_id).unwrap_or(0);
        tokenizer.with_padding(None);
        let eot_id = tokenizer
            .token_to_id("<|endoftext|>")
            .ok_or_else(|| tok_err("no '<|endoftext|>' token".into()))?;

        Ok(Self {
            text_model,
            vision_model,
            text_projection,
            visual_projection,
            tokenizer,
            tokenizer_path,
            device: device.clone(),
            id,
            config,
            eot_id,
            pad_id,
            batch_size: DEFAULT_CLIP_BATCH_SIZE,
        })
    }

    /// Embeds at most `batch_size` images or texts per forward pass (default 16).
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

    /// Side of the square images the vision tower takes.
    pub fn image_size(&self) -> usize {
        self.config.image_size
    }

    /// Image features of one batch of images: preprocessed here, then [`Self::embed_pixels`].
    fn embed_image_batch(&self, images: &[&DynamicImage]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let s = self.config.image_size;
        let mut pixels = Vec::with_capacity(images.len() * 3 * s * s);
        for img in images {
            pixels.extend(preprocess_image(img, s as u32));
        }
        self.embed_pixels(pixels, images.len())
    }

    /// The model part of [`ImageEncoder::embed_images`]: L2-normalised features of `n` images
    /// already preprocessed by [`preprocess_image`] at [`Self::image_size`], their CHW floats
    /// concatenated (`n · 3 · S · S` values), in one forward pass. `palpipe bench-clip` times
    /// it apart from the preprocessing.
    pub fn embed_pixels(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
        let s = self.config.image_size;
        if pixels.len() != n * 3 * s * s {
            return Err(EmbedError::InvalidOption {
                what: "pixel count",
                value: pixels.len(),
                reason: format!("{n} images of 3×{s}×{s} need {}", n * 3 * s * s),
            });
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let x = Tensor::from_vec(pixels, (n, 3, s, s), &self.device)?; // [B, 3, S, S]
            let pooled = self.vision_model.forward(&x)?; // [B, D_v]
            let z = self.visual_projection.forward(&pooled)?; // [B, P]
            z.to_vec2::<f32>()
        };
        let mut out = run().map_err(EmbedError::candle("clip image forward pass"))?;
        out.iter_mut().for_each(|v| l2_normalize(v));
        Ok(out)
    }

    /// Text features of one batch: ids padded to 77, pooled at each text's first EOT.
    fn embed_text_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer {
                path: self.tokenizer_path.clone(),
                reason: e.to_string(),
            })?;
        let l = self.config.text_config.max_position_embeddings;
        let b = texts.len();
        let mut ids = vec![self.pad_id; b * l];
        let mut eot_at = Vec::with_capacity(b);
        for (row, e) in encodings.iter().enumerate() {
            let t = e.get_ids();
            ids[row * l..row * l + t.len()].copy_from_slice(t);
            // Pool at the first end-of-text token; a tokenizer that adds none pools at the last.
            eot_at.push(
                t.iter()
                    .position(|&i| i == self.eot_id)
                    .unwrap_or(t.len().saturating_sub(1)),
            );
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::from_vec(ids, (b, l), &self.device)?; // [B, L]
            let h = self.text_model.forward_with_mask(&ids, usize::MAX)?; // [B, L, D_t]
            let rows = eot_at
                .iter()
                .enumerate()
                .map(|(i, &p)| h.i((i, p))?.unsqueeze(0)) // [1, D_t]
                .collect::<candle_core::Result<Vec<_>>>()?;
            let pooled = Tensor::cat(&rows, 0)?; // [B, D_t]
            let z = self.text_projection.forward(&pooled)?; // [B, P]
            z.to_vec2::<f32>()
        };
        let mut out = run().map_err(EmbedError::candle("clip text forward pass"))?;
        out.iter_mut().for_each(|v| l2_normalize(v));
        Ok(out)
    }
}

impl ImageEncoder for ClipEncoder {
    fn encoder_id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        self.config.vision_config.projection_dim
    }

    fn embed_images(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch_size) {
            let refs: Vec<&DynamicImage> = chunk.iter().collect();
            out.extend(self.embed_image_batch(&refs)?);
        }
        Ok(out)
    }
}

impl TextEncoder for ClipEncoder {
    fn encoder_id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        self.config.text_config.projection_dim
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if let Some(index) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(EmbedError::EmptyText { index });
        }
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.batch_size) {
            out.extend(self.embed_text_batch(chunk)?);
        }
        Ok(out)
    }
}

/// The largest side, in pixels, of an image [`decode_image`] accepts.
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// The most memory, in bytes, one decode may allocate (256 MiB: an 8192² RGBA image).
pub const MAX_IMAGE_ALLOC: u64 = 256 << 20;

/// Decodes an encoded image (PNG or JPEG); `what` names it in the error. Sides over
/// [`MAX_IMAGE_SIDE`] or a decode needing more than [`MAX_IMAGE_ALLOC`] bytes are errors, so
/// a small compressed file cannot expand into gigabytes.
pub fn decode_image(bytes: &[u8], what: &str) -> Result<DynamicImage, EmbedError> {
    let bad = |reason: String| EmbedError::Image {
        what: what.to_string(),
        reason,
    };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    reader.decode().map_err(|e| bad(e.to_string()))
}

/// OpenAI CLIP preprocessing: RGB, shortest side → `size` (bicubic), centre crop
/// `size`×`size`, [0, 1], minus [`CLIP_MEAN`], over [`CLIP_STD`]. Returns CHW floats,
/// `3 · size · size` of them.
///
/// The resize is Pillow's bicubic convolution (Catmull-Rom, a = −0.5, the kernel widened by
/// the scale when shrinking, 8-bit results between the two passes), as `transformers`'
/// CLIPImageProcessor (Pillow backend) and OpenAI's torchvision `Resize` on PIL images do it,
/// through `fast_image_resize`, which follows Pillow's algorithm. The horizontal pass computes
/// the crop's columns only (of every row), the vertical pass its rows: each is asked for as a
/// source window of the same kernel, whose taps are clipped at the image's edges, not the
/// window's, so the result is the crop of the full resize.
/// Checked against CLIPImageProcessor's pixels in `tests/fixtures/clip_preprocess`.
///
/// The crop's offsets follow torchvision's `CenterCrop` (OpenAI's CLIP): `round((n − size) /
/// 2)`, ties to even. `transformers` floors them (`(n − size) // 2`), so where `n − size` is
/// odd and its half rounds up, its crop sits one pixel to the left or top of this one.
pub fn preprocess_image(img: &DynamicImage, size: u32) -> Vec<f32> {
    let owned;
    let rgb = match img.as_rgb8() {
        Some(rgb) => rgb,
        None => {
            owned = img.to_rgb8();
            &owned
        }
    };
    let n = (size * size) as usize;
    let mut out = vec![0f32; 3 * n];
    if rgb.width() == 0 || rgb.height() == 0 || size == 0 {
        return out; // nothing to resample; no decoder yields such an image
    }
    for (i, p) in resize_centre_crop(rgb, size).chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * n + i] = (p[c] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    out
}

/// torchvision `Resize(size)` then `CenterCrop(size)` of an RGB image: the short side becomes
/// `size`, the long one `int(size · long / short)`; the crop's offsets are
/// `round((n − size) / 2)`, ties to even. Returns `size × size` RGB bytes, row-major.
/// `rgb` and `size` must not be empty.
fn resize_centre_crop(rgb: &image::RgbImage, size: u32) -> Vec<u8> {
    use fast_image_resize::images::{Image, ImageRef};
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions};
    let (w, h) = rgb.dimensions();
    let (nw, nh) = if w <= h {
        (size, ((size as u64 * h as u64) / w as u64).max(1) as u32)
    } else {
        (((size as u64 * w as u64) / h as u64).max(1) as u32, size)
    };
    let left = ((nw.saturating_sub(size)) as f64 / 2.0).round_ties_even() as u32;
    let top = ((nh.saturating_sub(size)) as f64 / 2.0).round_ties_even() as u32;
    if (nw, nh) == rgb.dimensions() {
        // No resampling (Pillow returns a copy when the size is unchanged): crop only.
        let (w, row) = (w as usize, 3 * size as usize);
        let mut out = Vec::with_capacity(row * size as usize);
        for y in top..top + size {
            let start = 3 * (y as usize * w + left as usize);
            out.extend_from_slice(&rgb.as_raw()[start..start + row]);
        }
        return out;
    }
    // The crop [left, left + size) × [top, top + size) of the resized image, in source
    // pixels, resampled as Pillow does it: the horizontal pass first, rounded to 8 bits, then
    // the vertical one. (Asked for both at once, the resizer would run the vertical pass
    // first, which rounds and clips the overshoot of the cubic elsewhere: up to 3 steps off
    // Pillow when enlarging a noisy image.)
    let (x0, width) = source_window(left, size, w, nw);
    let (y0, height) = source_window(top, size, h, nh);
    let cubic = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    let mut resizer = fast_image_resize::Resizer::new();
    // Buffers of w·h·3 and size·h·3, size·size·3 bytes of one pixel type, and windows inside
    // their images (`source_window`): the resizer has nothing to refuse.
    let src = ImageRef::new(w, h, rgb.as_raw(), PixelType::U8x3)
        .expect("an RGB image's buffer holds width × height pixels");
    let mut rows = Image::new(size, h, PixelType::U8x3);
    resizer
        .resize(&src, &mut rows, &cubic.crop(x0, 0.0, width, h as f64))
        .expect("8-bit RGB both, the window inside the image");
    let mut out = Image::new(size, size, PixelType::U8x3);
    resizer
        .resize(&rows, &mut out, &cubic.crop(0.0, y0, size as f64, height))
        .expect("8-bit RGB both, the window inside the image");
    out.into_vec()
}

/// The source pixels `[start, start + len)` that the resized pixels `[offset, offset + size)`
/// cover, for a side of `n` source pixels resized to `resized`: `offset · n / resized` and
/// `size · n / resized`, each from exact integer products, so that a window reaching the
/// resized side's end ends exactly at `n` (computed as `offset · (n / resized)`, 224 · (29 /
/// 224) is 29.000000000000004, past the image, which the resizer refuses).
fn source_window(offset: u32, size: u32, n: u32, resized: u32) -> (f64, f64) {
    let at = |i: u32| (i as u64 * n as u64) as f64 / resized as f64;
    let (start, end) = (at(offset), at(offset + size));
    // `end` is exact when it equals `n` (n · resized / resized), and then `start` is 0 (a
    // crop reaching the end starts at 0, the crop being centred and at most one pixel off).
    (start, end - start)
}

/// HF `CLIPConfig` fields this encoder reads; defaults are HF's.
#[derive(Debug, Deserialize)]
struct HfClipConfig {
    #[serde(default)]
    text_config: HfTextConfig,
    #[serde(default)]
    vision_config: HfVisionConfig,
    #[serde(default = "default_projection_dim")]
    projection_dim: usize,
    #[serde(default = "default_logit_scale")]
    logit_scale_init_value: f32,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct HfTextConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    hidden_act: String,
    layer_norm_eps: f64,
}

impl Default for HfTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct HfVisionConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_channels: usize,
    image_size: usize,
    patch_size: usize,
    hidden_act: String,
    layer_norm_eps: f64,
}

impl Default for HfVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

fn default_projection_dim() -> usize {
    512
}

fn default_logit_scale() -> f32 {
    2.6592
}

/// Maps HF's `config.json` onto candle's `ClipConfig`, rejecting what candle cannot run.
fn read_clip_config(path: &Path) -> Result<ClipConfig, EmbedError> {
    let bytes = read_file(path)?;
    let unsupported = |reason: String| EmbedError::UnsupportedConfig {
        path: path.to_path_buf(),
        reason,
    };
    let hf: HfClipConfig =
        serde_json::from_slice(&bytes).map_err(|e| unsupported(e.to_string()))?;
    let (t, v) = (&hf.text_config, &hf.vision_config);
    for (tower, act, eps) in [
        ("text", &t.hidden_act, t.layer_norm_eps),
        ("vision", &v.hidden_act, v.layer_norm_eps),
    ] {
        if act != "quick_gelu" {
            return Err(unsupported(format!(
                "{tower} hidden_act '{act}' (only 'quick_gelu' is supported)"
            )));
        }
        if (eps - 1e-5).abs() > 1e-12 {
            return Err(unsupported(format!(
                "{tower} layer_norm_eps {eps} (only 1e-5 is supported)"
            )));
        }
    }
    for (tower, hidden, heads) in [
        ("text", t.hidden_size, t.num_attention_heads),
        ("vision", v.hidden_size, v.num_attention_heads),
    ] {
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(unsupported(format!(
                "{tower} hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            )));
        }
    }
    if v.num_channels != 3 {
        return Err(unsupported(format!(
            "vision num_channels {} (only RGB, 3)",
            v.num_channels
        )));
    }
    if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
        return Err(unsupported(format!(
            "vision image_size {} is not a multiple of patch_size {}",
            v.image_size, v.patch_size
        )));
    }
    if t.max_position_embeddings < 2 {
        return Err(unsupported(format!(
            "text max_position_embeddings {}",
            t.max_position_embeddings
        )));
    }
    Ok(ClipConfig {
        text_config: ClipTextConfig {
            vocab_size: t.vocab_size,
            embed_dim: t.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: t.intermediate_size,
            max_position_embeddings: t.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: t.num_attention_heads,
            projection_dim: hf.projection_dim,
        },
        vision_config: ClipVisionConfig {
            embed_dim: v.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            projection_dim: hf.projection_dim,
            num_channels: v.num_channels,
            image_size: v.image_size,
            patch_size: v.patch_size,
        },
        logit_scale_init_value: hf.logit_scale_init_value,
        image_size: v.image_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_config_maps_hf_fields_and_rejects_gelu() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"projection_dim": 16, "text_config": {"hidden_size": 32, "num_attention_heads": 4,
               "vocab_size": 100, "max_position_embeddings": 77},
               "vision_config": {"hidden_size": 48, "num_attention_heads": 4, "image_size": 32,
               "patch_size": 8}}"#,
        )
        .unwrap();
        let c = read_clip_config(&p).unwrap();
        assert_eq!(c.text_config.embed_dim, 32);
        assert_eq!(c.vision_config.embed_dim, 48);
        assert_eq!(c.text_config.projection_dim, 16);
        assert_eq!(c.vision_config.projection_dim, 16);
        assert_eq!(c.image_size, 32);
        std::fs::write(&p, r#"{"vision_config": {"hidden_act": "gelu"}}"#).unwrap();
        let e = read_clip_config(&p).unwrap_err();
        assert!(e.to_string().contains("hidden_act 'gelu'"), "{e}");
    }

    #[test]
    fn preprocess_crops_centre_and_normalises() {
        // 4×2 image: left half black, right half white; shortest side 2 → crop 2×2 centre.
        let mut img = image::RgbImage::new(4, 2);
        for y in 0..2 {
            for x in 2..4 {
                img.put_pixel(x, y, image::Rgb([255, 255, 255]));
            }
        }
        let px = preprocess_image(&DynamicImage::ImageRgb8(img), 2);
        assert_eq!(px.len(), 3 * 4);
        let black = (0.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        let white = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        // centre crop of columns 1..3: column 1 black, column 2 white
        assert!(
            (px[0] - black).abs() < 1e-6 && (px[1] - white).abs() < 1e-6,
            "{px:?}"
        );
    }

    /// Parity of the resize with Pillow: `tests/fixtures/clip_preprocess` holds PNGs whose
    /// sizes need resampling (shrunk by up to 5, enlarged, both orientations, an odd crop
    /// offset) and the pixel values `transformers`' CLIPImageProcessor (Pillow backend) gave
    /// for them (`make clip-preprocess-fixture`). Both sides round to 8 bits after each of
    /// the two passes, with fixed-point weights of their own precision, so a value may differ
    /// by one 8-bit step (measured: 785 of the 15,360 values, 5%); at least 90% must agree
    /// exactly.
    #[test]
    fn preprocessing_matches_clip_image_processor() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_preprocess");
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
        let size = expected["image_size"].as_u64().unwrap() as u32;
        let step = 1.0 / 255.0 / CLIP_STD.iter().fold(f32::MAX, |a, &b| a.min(b));
        let (mut values, mut exact) = (0usize, 0usize);
        let images = expected["images"].as_array().unwrap();
        assert_eq!(images.len(), 5);
        for case in images {
            let file = case["file"].as_str().unwrap();
            let bytes = std::fs::read(dir.join(file)).unwrap();
            let img = decode_image(&bytes, file).unwrap();
            assert_eq!(
                (img.width() as u64, img.height() as u64),
                (
                    case["width"].as_u64().unwrap(),
                    case["height"].as_u64().unwrap()
                )
            );
            let want: Vec<f32> = case["pixel_values"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|c| c.as_array().unwrap())
                .flat_map(|r| r.as_array().unwrap())
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let got = preprocess_image(&img, size);
            assert_eq!(got.len(), want.len(), "{file}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1.01 * step,
                    "{file}: value {i}: {g} vs CLIPImageProcessor's {w} (more than one 8-bit step)"
                );
                exact += usize::from((g - w).abs() < 1e-4);
            }
            values += want.len();
        }
        assert!(
            exact as f64 >= 0.90 * values as f64,
            "only {exact} of {values} values equal CLIPImageProcessor's"
        );
    }

    /// Real CLIPs take 224 or 336 px, where `n / 224` is not exact in binary: a crop window
    /// computed as `offset · (n / resized)` ended past the image (29 × 29 at 224: 29 +
    /// 4e-15) and the resizer refused it. Every size here must resize, crop and normalise.
    #[test]
    fn preprocessing_takes_any_image_size_at_224_and_336() {
        let sides = [1, 2, 29, 40, 100, 223, 224, 225, 232, 300, 333, 448, 449];
        let lo = (0.0 - CLIP_MEAN[2]) / CLIP_STD[2];
        let hi = (1.0 - CLIP_MEAN[2]) / CLIP_STD[2];
        for size in [224u32, 336] {
            for &w in &sides {
                for &h in &sides {
                    let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
                        image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 255])
                    }));
                    let px = preprocess_image(&img, size);
                    assert_eq!(px.len(), (3 * size * size) as usize, "{w}×{h} at {size}");
                    // The blue channel is 255 everywhere: the cubic's overshoot cannot move it.
                    let blue = &px[2 * (size * size) as usize..];
                    assert!(
                        blue.iter().all(|v| (v - hi).abs() < 1e-5 && *v > lo),
                        "{w}×{h} at {size}: blue not 1.0 after normalising"
                    );
                }
            }
        }
    }

    #[test]
    fn missing_clip_folder_is_named() {
        let e = ClipEncoder::load(Path::new("/nonexistent/clip-vit"), &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/clip-vit"), "{e}");
    }

    const TINY_CLIP_CONFIG: &str = r#"{"projection_dim": 16,
        "text_config": {"vocab_size": 9, "hidden_size": 32, "intermediate_size": 64,
          "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77,
          "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
          "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}}"#;

    /// Word-level stand-in for CLIP's BPE tokenizer; as in CLIP, end-of-text is the largest id.
    const TINY_TOKENIZER: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
          {"id": 0, "content": "<|startoftext|>", "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": false, "special": true},
          {"id": 8, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": false, "special": true}],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "TemplateProcessing",
          "single": [{"SpecialToken": {"id": "<|startoftext|>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
          "pair": [{"SpecialToken": {"id": "<|startoftext|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}},
                   {"Sequence": {"id": "B", "type_id": 1}},
                   {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
          "special_tokens": {
            "<|startoftext|>": {"id": "<|startoftext|>", "ids": [0], "tokens": ["<|startoftext|>"]},
            "<|endoftext|>": {"id": "<|endoftext|>", "ids": [8], "tokens": ["<|endoftext|>"]}}},
        "decoder": null,
        "model": {"type": "WordLevel", "unk_token": "[UNK]",
          "vocab": {"<|startoftext|>": 0, "[UNK]": 1, "a": 2, "photo": 3, "of": 4, "cat": 5,
                    "dog": 6, "red": 7, "<|endoftext|>": 8}}}"#;

    /// A randomly initialised tiny CLIP in a temp folder, plus candle's own `ClipModel` on
    /// the same weights for cross-checks.
    fn tiny_clip() -> (
        tempfile::TempDir,
        candle_transformers::models::clip::ClipModel,
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), TINY_CLIP_CONFIG).unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), TINY_TOKENIZER).unwrap();
        let config = read_clip_config(&dir.path().join("config.json")).unwrap();
        let varmap = candle_nn::VarMap::new();
        let dev = Device::Cpu;
        varmap
            .get(
                32,
                "vision_model.embeddings.class_embedding",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
                DType::F32,
                &dev,
            )
            .unwrap();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let reference = candle_transformers::models::clip::ClipModel::new(vb, &config).unwrap();
        varmap.save(dir.path().join("model.safetensors")).unwrap();
        (dir, reference)
    }

    fn test_image(w: u32, h: u32, seed: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            let v = |k: u32| ((x * 7 + y * 13 + seed * 31 + k * 59) % 256) as u8;
            image::Rgb([v(0), v(1), v(2)])
        }))
    }

    #[test]
    fn tiny_clip_matches_candle_clip_model() {
        let (dir, reference) = tiny_clip();
        let enc = ClipEncoder::load(dir.path(), &Device::Cpu)
            .unwrap()
            .with_batch_size(2)
            .unwrap();
        assert_eq!(ImageEncoder::dim(&enc), 16);
        assert_eq!(TextEncoder::dim(&enc), 16);
        assert!(ImageEncoder::encoder_id(&enc).contains(':'));

        // Text: pooled at EOT whatever the batch; same as candle's argmax pooling on
        // zero-padded ids.
        let texts = ["a photo of a red cat", "dog", "A Photo of a Dog"];
        let got = enc.embed_texts(&texts).unwrap();
        let alone = enc.embed_texts(&["dog"]).unwrap();
        assert!(crate::embed::cosine(&got[1], &alone[0]) > 0.999_999);
        let ids: Vec<u32> = [0, 2, 3, 4, 2, 7, 5, 8]
            .into_iter()
            .chain(std::iter::repeat_n(0, 77 - 8))
            .collect();
        let ids = Tensor::from_vec(ids, (1, 77), &Device::Cpu).unwrap();
        let want = reference
            .get_text_features(&ids)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let c = crate::embed::cosine(&got[0], &want[0]);
        assert!(c > 0.999_999, "text vs candle ClipModel: {c}");

        // Images: preprocessing then candle's image features.
        let images = [
            test_image(40, 30, 1),
            test_image(32, 32, 2),
            test_image(20, 50, 3),
        ];
        let got = enc.embed_images(&images).unwrap();
        assert_eq!(got.len(), 3);
        for (img, v) in images.iter().zip(&got) {
            let px =
                Tensor::from_vec(preprocess_image(img, 32), (1, 3, 32, 32), &Device::Cpu).unwrap();
            let want = reference
                .get_image_features(&px)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let c = crate::embed::cosine(v, &want[0]);
            assert!(c > 0.999_999, "image vs candle ClipModel: {c}");
            let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
        }
        assert!(enc.embed_texts(&[""]).is_err());
    }

    /// Parity with Hugging Face `transformers`: `tests/fixtures/tiny_clip` holds a tiny,
    /// randomly initialised CLIP (HF layout, byte-level BPE tokenizer), four PNGs and four
    /// captions, and the L2-normalised `get_image_features` / `get_text_features` that
    /// transformers gave for them (`expected.json`). The fixture was generated by
    /// `tests/fixtures/make_tiny_clip.py` (`make tiny-clip`). Three images are 32×32 and one
    /// is 48×32, so preprocessing is at most an integer centre crop: no resampling (which
    /// `preprocessing_matches_clip_image_processor` checks apart, to within an 8-bit step).
    #[test]
    fn tiny_clip_matches_transformers_fixture() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_clip");
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
        let enc = ClipEncoder::load(&dir, &Device::Cpu)
            .unwrap()
            .with_batch_size(3)
            .unwrap();
        assert_eq!(ImageEncoder::dim(&enc), 16);
        let floats = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };

        let images = expected["images"].as_array().unwrap();
        assert_eq!(images.len(), 4);
        let decoded: Vec<DynamicImage> = images
            .iter()
            .map(|e| {
                let f = e["file"].as_str().unwrap();
                decode_image(&std::fs::read(dir.join(f)).unwrap(), f).unwrap()
            })
            .collect();
        let got = enc.embed_images(&decoded).unwrap();
        for (e, v) in images.iter().zip(&got) {
            let c = crate::embed::cosine(v, &floats(&e["embedding"]));
            eprintln!("image {}: cosine {c:.7}", e["file"]);
            assert!(
                c > 0.9999,
                "image {} vs transformers: cosine {c}",
                e["file"]
            );
        }
        // The model part alone (what `palpipe bench-clip` times) gives the same vectors.
        let pixels: Vec<f32> = decoded
            .iter()
            .flat_map(|img| preprocess_image(img, 32))
            .collect();
        assert!(enc.embed_pixels(pixels[1..].to_vec(), 4).is_err());
        // (One pass of 4 here, passes of 3 + 1 above: equal up to rounding.)
        let alone = enc.embed_pixels(pixels, 4).unwrap();
        assert_eq!(alone.len(), 4);
        for (a, b) in alone.iter().zip(&got) {
            assert!(crate::embed::cosine(a, b) > 0.999_999);
        }
        assert!(enc.embed_pixels(Vec::new(), 0).unwrap().is_empty());

        let texts = expected["texts"].as_array().unwrap();
        assert_eq!(texts.len(), 4);
        let captions: Vec<&str> = texts.iter().map(|e| e["text"].as_str().unwrap()).collect();
        for (e, cap) in texts.iter().zip(&captions) {
            let ids = enc.tokenizer.encode(*cap, true).unwrap().get_ids().to_vec();
            let want: Vec<u32> = e["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, want, "token ids of {cap:?}");
        }
        let got = enc.embed_texts(&captions).unwrap();
        for (e, v) in texts.iter().zip(&got) {
            let c = crate::embed::cosine(v, &floats(&e["embedding"]));
            eprintln!("text {}: cosine {c:.7}", e["text"]);
            assert!(c > 0.9999, "text {} vs transformers: cosine {c}", e["text"]);
        }
    }
}
