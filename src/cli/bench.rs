//! `palpipe bench-pal` (hidden): the PAL-B training and scoring speed benchmark of issue #3;
//! `palpipe bench-clip` (hidden, at the end): CLIP image embedding throughput;
//! `palpipe bench-minilm` (hidden, at the end): MiniLM sentence embedding throughput. Each
//! takes `--device cpu|cuda` (cuda in a build with the `cuda` feature).
//!
//! Generates seeded random data in memory (no store), trains a PAL-B head for a fixed number
//! of steps after a few warm-up steps, scores comparisons with [`evaluate`], and prints one
//! JSON object: comparisons/s for training and scoring, where the training time went, peak
//! resident memory, the machine and the date. `bench/run.sh` runs it next to the PyTorch
//! yardstick `bench/pal_reference.py`, which prints the same fields.
//!
//! Data modes:
//! - `distinct`: every comparison draws its prompt and both items at random from pools of
//!   `--pool` distinct vectors (default 20,000 each; 200k × 3 × 1024 f32 would be 2.4 GB), so
//!   a batch of 256 has ~250 distinct prompts and ~500 distinct items — effectively all
//!   distinct.
//! - `repeating`: persona-like: two items (" Yes", " No") and `--prompts` prompts (default
//!   4,000); each comparison is (random user, random prompt, Yes vs No, random label).

use std::time::Instant;

use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::json;

use super::{CliError, Ctx};
use crate::embed::TextEncoder;
use crate::pal::{
    evaluate, train_on, Comparison, ComparisonSet, EvalOptions, GroupConfig, ModelConfig,
    ModelKind, Select, TrainConfig,
};

#[derive(Debug, Args)]
pub struct BenchPalArgs {
    /// Comparisons generated.
    #[arg(long, default_value_t = 200_000)]
    pub n: usize,
    /// Users.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Every comparison with its own (random) prompt and items.
    #[arg(long, conflicts_with = "repeating")]
    pub distinct: bool,
    /// Persona-like: items " Yes" / " No" and a few thousand prompts (the default mode).
    #[arg(long)]
    pub repeating: bool,
    /// Distinct vectors in each pool (prompts, items) in distinct mode.
    #[arg(long, default_value_t = 20_000)]
    pub pool: usize,
    /// Prompts in repeating mode.
    #[arg(long, default_value_t = 4000)]
    pub prompts: usize,
    /// Embedding dimension of prompts and items (Dx = Dp).
    #[arg(long, default_value_t = 1024)]
    pub dim: usize,
    /// Projector width d.
    #[arg(long, default_value_t = 1024)]
    pub d: usize,
    /// Prototypes K.
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    #[arg(long, default_value = "mlp2-relu-dropout5-residual")]
    pub arch: String,
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Warm-up steps before the timed ones (a separate run, not timed).
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Comparisons scored for the evaluation throughput.
    #[arg(long, default_value_t = 20_000)]
    pub eval_n: usize,
    /// cpu or cuda (a build with --features cuda): where the model trains and scores.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Prints a benchmark's result as one pretty JSON object on stdout.
fn print_json(out: &serde_json::Value) -> Result<(), CliError> {
    outln!(
        "{}",
        serde_json::to_string_pretty(out).map_err(CliError::failure)?
    )?;
    Ok(())
}

/// The generated data: the full set of `n` comparisons.
fn generate(a: &BenchPalArgs, distinct: bool) -> ComparisonSet {
    let mut r = ChaCha8Rng::seed_from_u64(a.seed);
    let scale = 1.0 / (a.dim as f64).sqrt();
    let vecs = |n: usize, r: &mut ChaCha8Rng| -> Vec<f32> {
        (0..n * a.dim)
            .map(|_| {
                let z: f64 = StandardNormal.sample(r);
                (z * scale) as f32
            })
            .collect()
    };
    let (n_items, n_prompts) = if distinct {
        (a.pool.max(2), a.pool.max(1))
    } else {
        (2, a.prompts.max(1))
    };
    let items = vecs(n_items, &mut r);
    let prompts = vecs(n_prompts, &mut r);
    let users = a.users.max(1);
    let comps = (0..a.n)
        .map(|_| {
            let user = r.random_range(0..users) as u32;
            let prompt = Some(r.random_range(0..n_prompts) as u32);
            let (left, right) = if distinct {
                let l = r.random_range(0..n_items) as u32;
                let mut rr = r.random_range(0..n_items - 1) as u32;
                if rr >= l {
                    rr += 1;
                }
                (l, rr)
            } else {
                (0, 1)
            };
            let y = if r.random::<bool>() { 1 } else { -1 };
            Comparison {
                user,
                prompt,
                left,
                right,
                y,
                weight: crate::pal::Weight::ONE,
            }
        })
        .collect();
    ComparisonSet {
        dx: a.dim,
        dp: a.dim,
        items,
        prompts,
        user_ids: (0..users).map(|u| format!("u{u}")).collect(),
        comps,
    }
}

/// The first `m` comparisons of `set` (they are already in random order), sharing nothing.
fn take(set: &ComparisonSet, m: usize) -> ComparisonSet {
    ComparisonSet {
        comps: set.comps[..m.min(set.comps.len())].to_vec(),
        ..set.clone()
    }
}

/// User + system CPU seconds of this process, all threads (from /proc/self/stat).
fn process_cpu_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the ")" that closes the command name: utime and stime are fields 14, 15
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Peak resident set size in MiB (VmHWM), when /proc says.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub async fn bench_pal(_ctx: &Ctx, a: BenchPalArgs) -> Result<(), CliError> {
    let distinct = a.distinct;
    let mode = if distinct { "distinct" } else { "repeating" };
    if a.batch == 0 || a.steps == 0 || a.n == 0 {
        return Err(CliError::usage(anyhow::anyhow!(
            "--n, --batch and --steps must be positive"
        )));
    }
    let device = super::open_device(&a.device)?;
    let t_gen = Instant::now();
    let full = generate(&a, distinct);
    let gen_s = t_gen.elapsed().as_secs_f64();

    let model_cfg = ModelConfig {
        kind: ModelKind::PalB,
        k: a.k,
        d: a.d,
        item_arch: a.arch.parse().map_err(CliError::usage)?,
        prototype_arch: a.arch.parse().map_err(CliError::usage)?,
        ..ModelConfig::default()
    };
    // The reference values of PAL-SPEC "Training".
    let train_cfg = TrainConfig {
        epochs: 1,
        batch_size: a.batch,
        seed: a.seed,
        projectors: GroupConfig {
            lr: 1e-4,
            weight_decay: 0.01,
        },
        user_logits: GroupConfig {
            lr: 5e-3,
            weight_decay: 0.0,
        },
        prototypes: GroupConfig {
            lr: 5e-3,
            weight_decay: 0.0,
        },
        scale: GroupConfig {
            lr: 0.1,
            weight_decay: 0.0,
        },
        select: Select::Last,
    };

    // Warm-up: a separate short run (allocator, thread pool, caches).
    if a.warmup > 0 {
        let warm = take(&full, a.warmup * a.batch);
        train_on(&model_cfg, &train_cfg, &warm, None, &mut |_| {}, &device)
            .map_err(CliError::failure)?;
    }

    // Timed: `steps` steps. The training time is the sum of the steps' phase timers (model
    // initialisation excluded).
    let timed = take(&full, a.steps * a.batch);
    let n_timed = timed.comps.len();
    let mut last: Option<Instant> = None;
    let mut cpu_first: Option<f64> = None;
    let mut cpu_last: Option<f64> = None;
    let t_call = Instant::now();
    let (model, report) = train_on(
        &model_cfg,
        &train_cfg,
        &timed,
        None,
        &mut |p| {
            if !p.epoch_end {
                last = Some(Instant::now());
                cpu_last = process_cpu_s();
                if p.step == 1 {
                    cpu_first = cpu_last;
                }
            }
        },
        &device,
    )
    .map_err(CliError::failure)?;
    let ph = report.phases;
    let step_sum = ph.gather + ph.forward + ph.backward + ph.optimizer + ph.other;
    let init_s = (last.unwrap_or(t_call) - t_call).as_secs_f64() - step_sum;
    let train_s = step_sum;
    let steps = report.steps;
    // CPU seconds (all threads) per step, from the end of step 1 to the end of the last step:
    // less sensitive than wall time to other processes on a busy machine.
    let cpu_ms_per_step = match (cpu_first, cpu_last) {
        (Some(a0), Some(a1)) if steps > 1 => Some(1000.0 * (a1 - a0) / (steps - 1) as f64),
        _ => None,
    };

    // Scoring throughput.
    let eval_set = take(&full, a.eval_n.max(1));
    let t_eval = Instant::now();
    let er = evaluate(&model, &eval_set, &EvalOptions::default()).map_err(CliError::failure)?;
    let eval_s = t_eval.elapsed().as_secs_f64();

    let per_step = |x: f64| 1000.0 * x / steps as f64;
    let out = json!({
        "tool": "palpipe",
        "device": a.device,
        "mode": mode,
        "data": if distinct {
            format!("{} comparisons; prompt and both items drawn at random from pools of {} distinct vectors each", a.n, a.pool)
        } else {
            format!("{} comparisons; items \" Yes\"/\" No\" (2 vectors), {} prompts", a.n, a.prompts)
        },
        "n": a.n,
        "users": a.users,
        "dx": a.dim, "dp": a.dim, "d": a.d, "k": a.k, "arch": a.arch,
        "batch": a.batch,
        "warmup_steps": a.warmup,
        "steps": steps,
        "params": report.params,
        "train_comparisons_per_s": n_timed as f64 / train_s,
        "train_ms_per_step": per_step(train_s),
        "train_cpu_ms_per_step": cpu_ms_per_step,
        "phases_ms_per_step": {
            "gather": per_step(ph.gather),
            "forward": per_step(ph.forward),
            "backward": per_step(ph.backward),
            "optimizer": per_step(ph.optimizer),
            "other": per_step(ph.other),
        },
        "model_init_s": init_s.max(0.0),
        "eval_n": er.n,
        "eval_comparisons_per_s": er.n as f64 / eval_s,
        "data_gen_s": gen_s,
        "peak_rss_mib": peak_rss_mib(),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "rayon_num_threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "candle_num_threads": std::env::var("CANDLE_NUM_THREADS").ok(),
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    print_json(&out)
}

/// `palpipe bench-clip`: CLIP image embedding throughput, preprocessing and model apart.
#[derive(Debug, Args)]
pub struct BenchClipArgs {
    /// JPEG images generated (in memory, from the seed).
    #[arg(long, default_value_t = 2000)]
    pub images: usize,
    /// Nominal side of the generated images; each side is drawn from 7/8..9/8 of it, so the
    /// resize and the centre crop both have work to do.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// The CLIP model folder (Hugging Face layout).
    #[arg(long, default_value = "tests/fixtures/tiny_clip")]
    pub model_dir: std::path::PathBuf,
    /// JPEG quality of the generated images.
    #[arg(long, default_value_t = 90)]
    pub quality: u8,
    /// cpu or cuda (a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// One seeded test picture: a two-colour diagonal gradient, a few soft discs and some noise
/// (smooth areas and edges, like a photo, rather than pure noise that JPEG handles badly).
fn synthetic_jpeg(r: &mut ChaCha8Rng, w: u32, h: u32, quality: u8) -> anyhow::Result<Vec<u8>> {
    let c0: [f32; 3] = std::array::from_fn(|_| r.random_range(0.0..255.0));
    let c1: [f32; 3] = std::array::from_fn(|_| r.random_range(0.0..255.0));
    let discs: Vec<(f32, f32, f32, [f32; 3])> = (0..4)
        .map(|_| {
            (
                r.random_range(0.0..w as f32),
                r.random_range(0.0..h as f32),
                r.random_range(8.0..(w.min(h) as f32 / 3.0).max(9.0)),
                std::array::from_fn(|_| r.random_range(0.0..255.0)),
            )
        })
        .collect();
    let noise: Vec<f32> = (0..(w * h) as usize)
        .map(|_| r.random_range(-12.0..12.0))
        .collect();
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let t = (x + y) as f32 / (w + h) as f32;
        let mut p: [f32; 3] = std::array::from_fn(|c| c0[c] * (1.0 - t) + c1[c] * t);
        for &(cx, cy, rad, col) in &discs {
            let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
            let a = (1.0 - (d - rad).max(0.0) / 4.0).clamp(0.0, 1.0);
            for (pc, cc) in p.iter_mut().zip(col) {
                *pc = *pc * (1.0 - a) + cc * a;
            }
        }
        let n = noise[(y * w + x) as usize];
        image::Rgb(std::array::from_fn(|c| (p[c] + n).clamp(0.0, 255.0) as u8))
    });
    let mut buf = Vec::new();
    img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
        &mut buf, quality,
    ))?;
    Ok(buf)
}

pub async fn bench_clip(_ctx: &Ctx, a: BenchClipArgs) -> Result<(), CliError> {
    use crate::embed::clip::{decode_image, preprocess_image, ClipEncoder};
    use crate::embed::ImageEncoder;

    if a.images == 0 || a.batch == 0 || !(8..=16_384).contains(&a.size) {
        return Err(CliError::usage(anyhow::anyhow!(
            "--images and --batch must be positive and --size between 8 and 16384"
        )));
    }
    let device = super::open_device(&a.device)?;
    let t_load = Instant::now();
    let enc = ClipEncoder::load(&a.model_dir, &device)
        .and_then(|e| e.with_batch_size(a.batch))
        .map_err(CliError::failure)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let s = enc.image_size();

    // The inputs: JPEG bytes, generated once (not timed as part of either throughput).
    let t_gen = Instant::now();
    let mut r = ChaCha8Rng::seed_from_u64(a.seed);
    let (lo, hi) = (a.size * 7 / 8, a.size * 9 / 8);
    let mut jpegs = Vec::with_capacity(a.images);
    let mut pixels_in = 0u64;
    for _ in 0..a.images {
        let (w, h) = (r.random_range(lo..=hi), r.random_range(lo..=hi));
        pixels_in += (w * h) as u64;
        jpegs.push(synthetic_jpeg(&mut r, w, h, a.quality).map_err(CliError::failure)?);
    }
    let gen_s = t_gen.elapsed().as_secs_f64();
    let jpeg_bytes: usize = jpegs.iter().map(Vec::len).sum();

    // Warm-up: one batch through the whole path (allocator, thread pool), checked against
    // ImageEncoder::embed_images, so the split timing below embeds what the encoder embeds.
    let warm: Vec<image::DynamicImage> = jpegs[..a.batch.min(a.images)]
        .iter()
        .map(|b| decode_image(b, "generated"))
        .collect::<Result<_, _>>()
        .map_err(CliError::failure)?;
    let whole = enc.embed_images(&warm).map_err(CliError::failure)?;
    let pixels: Vec<f32> = warm
        .iter()
        .flat_map(|img| preprocess_image(img, s as u32))
        .collect();
    let split = enc
        .embed_pixels(pixels, warm.len())
        .map_err(CliError::failure)?;
    let max_abs_diff = whole
        .iter()
        .flatten()
        .zip(split.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    drop(warm);

    // Timed: batch by batch, decode → preprocess (CPU, one thread, as embed_images does),
    // then the model on the preprocessed batch.
    let (mut decode_s, mut preprocess_s, mut model_s) = (0.0, 0.0, 0.0);
    let mut embedded = 0usize;
    for chunk in jpegs.chunks(a.batch) {
        let t = Instant::now();
        let imgs: Vec<image::DynamicImage> = chunk
            .iter()
            .map(|b| decode_image(b, "generated"))
            .collect::<Result<_, _>>()
            .map_err(CliError::failure)?;
        decode_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut pixels = Vec::with_capacity(imgs.len() * 3 * s * s);
        for img in &imgs {
            pixels.extend(preprocess_image(img, s as u32));
        }
        preprocess_s += t.elapsed().as_secs_f64();
        drop(imgs);
        let t = Instant::now();
        let v = enc
            .embed_pixels(pixels, chunk.len())
            .map_err(CliError::failure)?;
        model_s += t.elapsed().as_secs_f64();
        embedded += v.len();
    }
    let n = embedded as f64;
    let prep_s = decode_s + preprocess_s;
    let out = json!({
        "tool": "palpipe",
        "what": "CLIP image embedding: JPEG decode + resize/crop/normalise (crate::embed::clip::decode_image, preprocess_image) and the model (ClipEncoder::embed_pixels) timed apart",
        "model_dir": a.model_dir.display().to_string(),
        "encoder_id": ImageEncoder::encoder_id(&enc),
        "image_size": s,
        "dim": ImageEncoder::dim(&enc),
        "device": a.device,
        "images": embedded,
        "nominal_side": a.size,
        "mean_input_pixels": pixels_in as f64 / a.images as f64,
        "jpeg_quality": a.quality,
        "mean_jpeg_kib": jpeg_bytes as f64 / a.images as f64 / 1024.0,
        "batch": a.batch,
        "decode_images_per_s": n / decode_s,
        "resize_crop_normalise_images_per_s": n / preprocess_s,
        "preprocess_images_per_s": n / prep_s,
        "model_images_per_s": n / model_s,
        "total_images_per_s": n / (prep_s + model_s),
        "seconds": {
            "decode": decode_s,
            "resize_crop_normalise": preprocess_s,
            "model": model_s,
            "model_load": load_s,
            "generate_jpegs": gen_s,
        },
        "warmup_check_max_abs_diff_vs_embed_images": max_abs_diff,
        "peak_rss_mib": peak_rss_mib(),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "rayon_num_threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "candle_num_threads": std::env::var("CANDLE_NUM_THREADS").ok(),
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    print_json(&out)
}

/// `palpipe bench-minilm`: all-MiniLM-L6-v2 sentence embedding throughput on a JSON-lines file
/// of texts, the work `palpipe embed` does per batch (tokenise, forward, mean pooling, L2
/// normalisation), without the store.
#[derive(Debug, Args)]
pub struct BenchMinilmArgs {
    /// JSON-lines files; each line's `--field` is one text (default: the persona statements).
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
    /// The field of each JSON line that holds the text.
    #[arg(long, default_value = "statement")]
    pub field: String,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Timed passes over all the texts (after one warm-up pass over the first 64).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The model folder (default ~/.cache/palpipe/models/all-MiniLM-L6-v2).
    #[arg(long)]
    pub model_dir: Option<std::path::PathBuf>,
    /// cpu or cuda (a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The texts of `files`: field `field` of every non-blank JSON line; an error names the file
/// and line.
fn read_texts(files: &[std::path::PathBuf], field: &str) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let mut texts = Vec::new();
    for f in files {
        let body =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for (i, line) in body
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a JSON line", f.display(), i + 1))?;
            let t = v
                .get(field)
                .and_then(|t| t.as_str())
                .with_context(|| format!("{}:{}: no string field '{field}'", f.display(), i + 1))?;
            texts.push(t.to_string());
        }
    }
    anyhow::ensure!(!texts.is_empty(), "no texts in the given files");
    Ok(texts)
}

pub async fn bench_minilm(_ctx: &Ctx, a: BenchMinilmArgs) -> Result<(), CliError> {
    if a.rounds == 0 {
        return Err(CliError::usage(anyhow::anyhow!(
            "--rounds must be positive"
        )));
    }
    let texts = read_texts(&a.files, &a.field).map_err(CliError::usage)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let device = super::open_device(&a.device)?;
    let enc = crate::embed::bert::BertSentenceEncoder::load_minilm(a.model_dir.as_deref(), &device)
        .map_err(CliError::failure)?;
    let enc = enc.with_batch_size(a.batch).map_err(CliError::usage)?;
    let tokens: usize = enc
        .count_tokens(&refs)
        .map_err(CliError::failure)?
        .iter()
        .sum();
    enc.embed_texts(&refs[..refs.len().min(64)])
        .map_err(CliError::failure)?; // warm-up: kernels, allocator, thread pools
    let mut secs = Vec::with_capacity(a.rounds);
    for _ in 0..a.rounds {
        let t = Instant::now();
        let v = enc.embed_texts(&refs).map_err(CliError::failure)?;
        secs.push(t.elapsed().as_secs_f64());
        if v.len() != refs.len() {
            return Err(CliError::failure(anyhow::anyhow!(
                "{} vectors for {} texts",
                v.len(),
                refs.len()
            )));
        }
    }
    secs.sort_by(f64::total_cmp);
    let n = refs.len() as f64;
    let out = json!({
        "tool": "palpipe",
        "device": a.device,
        "batch": a.batch,
        "statements": refs.len(),
        "tokens": tokens,
        "files": a.files.len(),
        "rounds": a.rounds,
        "seconds": secs,
        "best_sentences_per_s": n / secs[0],
        "median_sentences_per_s": n / secs[secs.len() / 2],
        "peak_rss_mib": peak_rss_mib(),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "rayon_num_threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "candle_num_threads": std::env::var("CANDLE_NUM_THREADS").ok(),
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    print_json(&out)
}
