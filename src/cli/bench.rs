//! `palpipe bench-pal` (hidden): the PAL-B training and scoring speed benchmark of issue #3.
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
use crate::pal::{
    evaluate, train, Comparison, ComparisonSet, EvalOptions, GroupConfig, ModelConfig, ModelKind,
    Select, TrainConfig,
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
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
        train(&model_cfg, &train_cfg, &warm, None, &mut |_| {}).map_err(CliError::failure)?;
    }

    // Timed: `steps` steps. The training time is the sum of the steps' phase timers (model
    // initialisation excluded).
    let timed = take(&full, a.steps * a.batch);
    let n_timed = timed.comps.len();
    let mut last: Option<Instant> = None;
    let mut cpu_first: Option<f64> = None;
    let mut cpu_last: Option<f64> = None;
    let t_call = Instant::now();
    let (model, report) = train(&model_cfg, &train_cfg, &timed, None, &mut |p| {
        if !p.epoch_end {
            last = Some(Instant::now());
            cpu_last = process_cpu_s();
            if p.step == 1 {
                cpu_first = cpu_last;
            }
        }
    })
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
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&out).map_err(CliError::failure)?
    );
    Ok(())
}
