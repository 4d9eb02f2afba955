//! `palpipe score`, `enroll` and `serve`: the personalized reward from the command line and
//! over HTTP. The work is in `src/serve`; this file holds the flags, the input files and the
//! output formats.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{CliError, Ctx};
use crate::pal::FewShotConfig;
use crate::pipeline::progress::to_stderr;
use crate::serve::{self, Content, ScoreRequest, Scorer, ServeConfig, ServeError, UserSel};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  palpipe score --model pal-b-k4 --user u17 --prompt \"Is art essential?\" --candidate \" Yes\" --candidate \" No\"
  palpipe score --model pal-b-k4 --zero-shot --prompt \"…\" --candidate \"…\" --candidate \"…\" --best --json
  palpipe score --model pal-b-k4 --input rows.jsonl --json      # {\"user\", \"prompt\", \"candidates\"} per line
  # images, for a model trained on CLIP vectors (e.g. pipelines/pick-a-filter.yaml's paf-k2):
  palpipe score --model paf-k2 --user pick-a-filter/3 --prompt \"a red fox\" --candidate a.png --candidate b.jpg --best
  echo '{\"user\": \"pick-a-filter/3\", \"prompt\": \"a red fox\", \"candidates\": [\"a.png\", {\"id\": \"<content id>\"}]}' \\
    | palpipe score --model paf-k2 --input - --json             # paths relative to the input file

Reward = r_i(x; x_c), the number `palpipe eval` compares (PAL-B: s·cos(f(x), z_i(x_c));
PAL-A: −‖f([x_c; x]) − f(a_i)‖²); higher is preferred. Texts (or, for a model on CLIP
vectors, image files) are embedded with the model's own encoder through the store's
`embeddings` cache: a candidate scored twice is embedded once. A candidate can also be a
stored item, {\"id\": CONTENT_ID}, in --input. Users: a user the model was trained on, a user
enrolled with `palpipe enroll`, or --zero-shot (the seen users' mean mixture). With --json,
one line per candidate: {\"candidate\": i, \"reward\": r} (and \"row\": j with --input).")]
pub struct ScoreArgs {
    /// A PAL model from the `models` table.
    #[arg(long)]
    pub model: String,
    /// The user whose reward to compute (seen in training, or enrolled).
    #[arg(long, conflicts_with = "zero_shot")]
    pub user: Option<String>,
    /// Score with the zero-shot mixture (the mean of the seen users' mixtures).
    #[arg(long)]
    pub zero_shot: bool,
    /// The prompt (context) the candidates answer.
    #[arg(long, conflicts_with = "input")]
    pub prompt: Option<String>,
    /// A candidate: a text, or an image file for a model on CLIP vectors (repeatable).
    #[arg(long, conflicts_with = "input")]
    pub candidate: Vec<String>,
    /// JSON lines {"user"?, "prompt", "candidates": [...]} (a file, or - for stdin); a
    /// line without "user" takes --user / --zero-shot.
    #[arg(long)]
    pub input: Option<String>,
    /// One JSON line per candidate instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only the best candidate (of each row).
    #[arg(long, conflicts_with = "top")]
    pub best: bool,
    /// Only the N best candidates (of each row), best first.
    #[arg(long)]
    pub top: Option<usize>,
    /// The encoder's folder (default $PALPIPE_MODELS/<name> or ~/.cache/palpipe/models/<name>).
    #[arg(long)]
    pub encoder_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  palpipe enroll --model pal-b-k4 --user alice --comparisons alice.jsonl
  cat alice.jsonl | palpipe enroll --model pal-b-k4 --user alice --comparisons - --json
  # images (a model on CLIP vectors): {\"prompt\": \"a red fox\", \"chosen\": \"fox1.png\", \"rejected\": \"fox2.png\"}
  palpipe enroll --model paf-k2 --user carol --comparisons carol-images.jsonl
  # the mixture plus an offset of the ideal point (what `palpipe adapt` found best on Polis)
  palpipe enroll --model pal-b-k4 --user dave --comparisons dave.jsonl --estimator offset --ridge 100

Each line of the comparisons is {\"prompt\": …, \"chosen\": …, \"rejected\": …}: texts, or image
files (relative to the file's folder) for a model on CLIP vectors, or {\"id\": CONTENT_ID}; an
optional \"weight\" (a positive number, 1 by default) counts the line as that many copies. The
user's K mixture logits are fitted with the model's shared parts frozen (the new-user estimator
of `palpipe adapt`, by default the one its seen-user simulation chose for the model; with
--estimator offset also an offset of the user's ideal point) and stored
in the `enrollments` table: `score` and `serve` know the user from then on, offset included; the
model itself is not changed. Enrolling again refits and replaces the user. With
10 or more comparisons, a fifth of them is held out and scored by a fit on the others (the
accuracy printed); the stored fit uses all of them.")]
pub struct EnrollArgs {
    /// A PAL model from the `models` table.
    #[arg(long)]
    pub model: String,
    /// The new user's id.
    #[arg(long)]
    pub user: String,
    /// JSON lines of the user's comparisons (a file, or - for stdin).
    #[arg(long)]
    pub comparisons: String,
    /// How the user is estimated: auto (the estimator, prior scale and ridge that `palpipe
    /// adapt --tune-split` chose for this model by its seen-user simulation, when it has
    /// run; empirical otherwise), empirical (the posterior mean under the seen users' own
    /// mixtures as the prior), posterior (the posterior mean under a Gaussian prior learned
    /// from the seen users), map, mle (no prior), or offset (empirical's mixture plus a
    /// ridge-penalised offset of the user's ideal point, stored and used in scoring); as
    /// `palpipe adapt --estimator`.
    #[arg(long, default_value = "auto")]
    pub estimator: crate::pal::Estimator,
    /// Prior scale of map / posterior / empirical / offset (default 1; `palpipe adapt
    /// --tune-split` reports the best one for a model). With auto and a recorded choice, the
    /// choice's scale is used instead (as are its ridge and steps): name the estimator to set
    /// them yourself.
    #[arg(long)]
    pub prior_scale: Option<f64>,
    /// Ridge strength λ of offset's penalty (default 100; larger keeps the offset smaller,
    /// inf none; `palpipe adapt --tune-split` reports the best one).
    #[arg(long)]
    pub ridge: Option<f64>,
    /// Gradient steps of the map and mle fits, and of offset's fit of δ (at most 100000).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed choosing the held-out comparisons.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the outcome as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The encoder's folder (as for score).
    #[arg(long)]
    pub encoder_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  palpipe serve --model pal-b-k4
  palpipe serve --model pal-b-k4 --model pal-a-k4 --addr 127.0.0.1:8000 --token-file token.txt
  curl -s localhost:8000/score -d '{\"user\": \"u17\", \"prompt\": \"…\", \"candidates\": [\"…\", \"…\"]}'
  palpipe serve --model paf-k2 --write-back --cache-mib 1024     # images; keep new vectors
  curl -s localhost:8000/score -d '{\"user\": \"pick-a-filter/3\", \"prompt\": \"a red fox\",
    \"candidates\": [{\"id\": \"<content id of a stored image>\"}, {\"image_base64\": \"'$(base64 -w0 fox.png)'\"}]}'

Routes: POST /score, POST /get_reward (OpenRLHF's remote reward model: {\"query\", \"prompts\",
\"labels\"} with labels[i] = the user id; OpenRLHF: --remote_rm_url http://HOST:8000/get_reward
--label_key USER_COLUMN), POST /users/{id}/enroll, GET /models, GET /health. Errors are JSON
{\"error\": …} with 400, 401, 404, 413, 503. Concurrent requests are batched through the
model. Images come by content id or inline ({\"image_base64\": …}); the server opens no file a
request names. Vectors are cached in memory (LRU, --cache-mib); vectors embedded while serving
are written to the store only with --write-back, in batches. SIGINT or SIGTERM stops it after
the requests in flight. See docs/serve.md.")]
pub struct ServeArgs {
    /// A model to serve (repeatable; the first is the default of requests that name none).
    #[arg(long, required = true)]
    pub model: Vec<String>,
    /// Address to listen on (port 0: any free port, printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,
    /// A file holding the bearer token clients must send (Authorization: Bearer …).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Serve a non-loopback --addr without --token-file (a trusted private network only:
    /// OpenRLHF's remote reward client sends no token).
    #[arg(long)]
    pub no_token: bool,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Most candidates per /score request (or samples per /get_reward).
    #[arg(long, default_value_t = 1024)]
    pub max_candidates: usize,
    /// Requests waiting for the model before the server answers 503.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Most requests scored in one forward pass.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Most comparisons per POST /users/{id}/enroll.
    #[arg(long, default_value_t = 4096)]
    pub max_comparisons: usize,
    /// Bound of each model's in-memory vector cache, MiB (least recently used vectors are
    /// dropped first; they are read or embedded again when needed).
    #[arg(long, default_value_t = serve::DEFAULT_CACHE_MIB)]
    pub cache_mib: f64,
    /// Write vectors embedded while serving to the store's `embeddings` (in batches: see
    /// --write-back-every and --write-back-secs; the rest at shutdown). Without it the
    /// server does not write embeddings.
    #[arg(long)]
    pub write_back: bool,
    /// With --write-back: write once this many new vectors wait.
    #[arg(long, default_value_t = 4096)]
    pub write_back_every: usize,
    /// With --write-back: write what waits once the oldest has waited this long, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub write_back_secs: f64,
    /// The encoder's folder (as for score).
    #[arg(long)]
    pub encoder_dir: Option<PathBuf>,
}

fn cli_err(e: ServeError) -> CliError {
    CliError {
        code: e.exit_code(),
        error: e.into(),
    }
}

/// A file's text, or stdin's for `-`, with the folder relative paths in it are taken from.
fn read_input(arg: &str, flag: &str) -> Result<(String, Option<PathBuf>), CliError> {
    if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::failure(anyhow::anyhow!("cannot read stdin: {e}")))?;
        return Ok((s, None));
    }
    let p = Path::new(arg);
    let text = std::fs::read_to_string(p).map_err(|e| {
        CliError::usage(anyhow::anyhow!(
            "{flag}: cannot read '{}': {e}",
            p.display()
        ))
    })?;
    Ok((text, p.parent().map(Path::to_path_buf)))
}

/// The requests of `--input`: one per non-blank line.
fn input_requests(
    text: &str,
    base: Option<&Path>,
    source: &str,
    default_user: &Option<UserSel>,
    images: bool,
) -> Result<Vec<ScoreRequest>, ServeError> {
    let mut out = Vec::new();
    for (at, v) in serve::json_lines(text, source)? {
        let obj = v.as_object().ok_or_else(|| {
            ServeError::bad(
                &at,
                "must be an object {\"user\", \"prompt\", \"candidates\"}",
            )
        })?;
        for k in obj.keys() {
            if !matches!(k.as_str(), "user" | "prompt" | "candidates") {
                return Err(ServeError::bad(
                    &at,
                    format!(
                        "unknown key '{}' (keys: user, prompt, candidates)",
                        serve::error::shown(k)
                    ),
                ));
            }
        }
        let user = match obj.get("user") {
            Some(serde_json::Value::String(u)) => UserSel::Id(u.clone()),
            Some(serde_json::Value::Null) => UserSel::ZeroShot,
            None => default_user.clone().ok_or_else(|| {
                ServeError::bad(
                    format!("{at}: user"),
                    "is missing, and neither --user nor --zero-shot is given",
                )
            })?,
            Some(_) => return Err(ServeError::bad(format!("{at}: user"), "must be a string")),
        };
        let prompt = (serve::scorer::given_prompt(obj.get("prompt")))
            .map(|p| Content::from_json(p, false, &format!("{at}: prompt")))
            .transpose()?;
        let cands = obj
            .get("candidates")
            .and_then(|c| c.as_array())
            .ok_or_else(|| {
                ServeError::bad(format!("{at}: candidates"), "is missing or not an array")
            })?;
        if cands.is_empty() {
            return Err(ServeError::bad(format!("{at}: candidates"), "is empty"));
        }
        let candidates = cands
            .iter()
            .enumerate()
            .map(|(j, c)| {
                Content::from_json(c, images, &format!("{at}: candidates[{j}]")).map(|c| match c {
                    Content::Image(p) => Content::Image(serve::scorer::relative_to(base, p)),
                    other => other,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push(ScoreRequest {
            user,
            prompt,
            candidates,
        });
    }
    if out.is_empty() {
        return Err(ServeError::bad(source, "holds no rows"));
    }
    Ok(out)
}

pub async fn score(ctx: &Ctx, a: ScoreArgs) -> Result<(), CliError> {
    let store = ctx.existing_store().await?;
    let default_user = match (&a.user, a.zero_shot) {
        (Some(u), _) => Some(UserSel::Id(u.clone())),
        (None, true) => Some(UserSel::ZeroShot),
        (None, false) => None,
    };
    if a.input.is_none() {
        if default_user.is_none() {
            return Err(CliError::usage(anyhow::anyhow!(
                "give --user ID or --zero-shot\nhint: palpipe score --model M --user ID --prompt TEXT --candidate TEXT --candidate TEXT"
            )));
        }
        if a.candidate.is_empty() {
            return Err(CliError::usage(anyhow::anyhow!(
                "no candidates: give --candidate (repeatable) or --input FILE"
            )));
        }
    }
    if a.top == Some(0) {
        return Err(CliError::usage(anyhow::anyhow!("--top must be at least 1")));
    }
    let scorer = Scorer::open(&store, &a.model, a.encoder_dir.clone())
        .await
        .map_err(cli_err)?;
    let images = scorer.images();
    let (reqs, texts) = match &a.input {
        Some(input) => {
            let (text, base) = read_input(input, "--input")?;
            let source = if input == "-" {
                "stdin"
            } else {
                input.as_str()
            };
            let reqs = input_requests(&text, base.as_deref(), source, &default_user, images)
                .map_err(cli_err)?;
            (reqs, None)
        }
        None => {
            let candidates: Vec<Content> = (a.candidate.iter().enumerate())
                .map(|(i, c)| match images {
                    true => Ok(Content::Image(PathBuf::from(c))),
                    false => Content::text(c, &format!("--candidate {}", i + 1)),
                })
                .collect::<Result<_, _>>()
                .map_err(cli_err)?;
            let req = ScoreRequest {
                user: default_user.clone().expect("checked above"),
                prompt: a.prompt.as_deref().and_then(Content::prompt_text),
                candidates,
            };
            (vec![req], Some(a.candidate.clone()))
        }
    };
    let prepared = scorer.prepare_many(&reqs).await.map_err(cli_err)?;
    let scorer = Arc::new(scorer);
    let s2 = scorer.clone();
    let scored = tokio::task::spawn_blocking(move || s2.score_prepared(&prepared))
        .await
        .map_err(|e| CliError::failure(anyhow::Error::from(e)))?
        .map_err(cli_err)?;
    let many = a.input.is_some();
    let keep = if a.best { Some(1) } else { a.top };
    if !a.json {
        if many {
            outln!("{:>5} {:>9} {:>12}", "row", "candidate", "reward")?;
        } else if keep.is_some() {
            outln!("{:>4} {:>9} {:>12}  text", "rank", "candidate", "reward")?;
        } else {
            outln!("{:>9} {:>12}  text", "candidate", "reward")?;
        }
    }
    for (row, s) in scored.iter().enumerate() {
        let mut order: Vec<usize> = (0..s.rewards.len()).collect();
        if keep.is_some() {
            // Best first; equal rewards keep input order.
            order.sort_by(|&x, &y| s.rewards[y].total_cmp(&s.rewards[x]));
            if let Some(k) = keep {
                order.truncate(k);
            }
        }
        for (rank, &i) in order.iter().enumerate() {
            let truncated = s.truncated.contains(&i);
            if a.json {
                let mut v = serde_json::json!({"candidate": i, "reward": s.rewards[i]});
                if many {
                    v["row"] = row.into();
                }
                if truncated {
                    v["truncated"] = true.into();
                }
                outln!("{v}")?;
            } else if many {
                outln!(
                    "{row:>5} {i:>9} {:>12.6}{}",
                    s.rewards[i],
                    if truncated { "  (truncated)" } else { "" }
                )?;
            } else {
                let text = texts
                    .as_ref()
                    .and_then(|t| t.get(i))
                    .map(|t| t.replace('\n', " "))
                    .unwrap_or_default();
                let shown: String = text.chars().take(60).collect();
                let note = if truncated {
                    "  (truncated to the encoder's token limit)"
                } else {
                    ""
                };
                let rank = if keep.is_some() {
                    format!("{:>4} ", rank + 1)
                } else {
                    String::new()
                };
                outln!("{rank}{i:>9} {:>12.6}  {shown}{note}", s.rewards[i])?;
            }
        }
        if s.prompt_truncated {
            ctx.printer.warn(format!(
                "row {row}: the prompt is longer than the encoder's token limit and was truncated"
            ));
        }
    }
    Ok(())
}

pub async fn enroll(ctx: &Ctx, a: EnrollArgs) -> Result<(), CliError> {
    let store = ctx.existing_store().await?;
    let scorer = Scorer::open(&store, &a.model, a.encoder_dir.clone())
        .await
        .map_err(cli_err)?;
    let (text, base) = read_input(&a.comparisons, "--comparisons")?;
    let source = if a.comparisons == "-" {
        "stdin"
    } else {
        a.comparisons.as_str()
    };
    let comps = serve::parse_comparisons(&text, scorer.images(), base.as_deref(), source)
        .map_err(cli_err)?;
    let d = FewShotConfig::default();
    let cfg = FewShotConfig {
        steps: a.steps.unwrap_or(d.steps),
        estimator: a.estimator,
        prior_scale: a.prior_scale.unwrap_or(d.prior_scale),
        ridge: a.ridge.unwrap_or(d.ridge),
        seed: a.seed,
        ..d
    };
    let out = scorer
        .enroll(&a.user, &comps, &cfg)
        .await
        .map_err(cli_err)?;
    if a.json {
        outln!("{}", serde_json::json!(out))?;
        return Ok(());
    }
    let w: Vec<String> = out.mixture.iter().map(|x| format!("{x:.3}")).collect();
    let acc = match out.held_out_accuracy {
        Some(acc) => format!(
            "held-out accuracy {:.1}% on {} comparisons (a fit on the other {})",
            100.0 * acc,
            out.held_out,
            out.comparisons - out.held_out
        ),
        None => format!(
            "no held-out accuracy (fewer than {} comparisons)",
            serve::enroll::MIN_FOR_HELD_OUT
        ),
    };
    let offset = match out.offset_norm {
        Some(n) => format!(", offset norm {n:.3}"),
        None => String::new(),
    };
    let ridge = match out.ridge {
        Some(r) => format!(", ridge {r}"),
        None => String::new(),
    };
    let how = match &out.chosen_by {
        Some(metric) => format!(
            " (prior scale {}{ridge}; auto: chosen by the seen-user simulation recorded in {metric})",
            out.prior_scale
        ),
        None => format!(" (prior scale {}{ridge})", out.prior_scale),
    };
    outln!(
        "{} '{}' into '{}' from {} comparisons: mixture [{}]{offset}; estimator {}{how}; {acc}",
        if out.replaced {
            "re-enrolled"
        } else {
            "enrolled"
        },
        serve::error::shown(&out.user),
        out.model,
        out.comparisons,
        w.join(", "),
        out.estimator,
    )?;
    Ok(())
}

pub async fn serve_cmd(ctx: &Ctx, a: ServeArgs) -> Result<(), CliError> {
    let store = ctx.existing_store().await?;
    let token = match &a.token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| {
                CliError::usage(anyhow::anyhow!(
                    "--token-file: cannot read '{}': {e}",
                    p.display()
                ))
            })?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(CliError::usage(anyhow::anyhow!(
                    "--token-file: '{}' is empty",
                    p.display()
                )));
            }
            Some(t)
        }
        None => None,
    };
    // Anyone who can connect can enrol users (a write to the store): off the loopback
    // interface a token is required.
    if token.is_none() && !a.no_token && !a.addr.ip().is_loopback() {
        return Err(CliError::usage(anyhow::anyhow!(
            "--addr {} is reachable from other machines and no --token-file was given\nhint: give --token-file FILE (clients send 'Authorization: Bearer <token>'), bind 127.0.0.1, or on a trusted private network say --no-token",
            a.addr
        )));
    }
    if !(a.cache_mib >= 0.0 && a.cache_mib.is_finite()) {
        return Err(CliError::usage(anyhow::anyhow!(
            "--cache-mib {} is not a size: give MiB, 0 or more",
            a.cache_mib
        )));
    }
    if a.write_back
        && (a.write_back_every == 0 || a.write_back_secs.is_nan() || a.write_back_secs <= 0.0)
    {
        return Err(CliError::usage(anyhow::anyhow!(
            "--write-back-every {} / --write-back-secs {}: both must be above 0",
            a.write_back_every,
            a.write_back_secs
        )));
    }
    let write_back = if a.write_back {
        serve::WriteBack::Batched {
            every: a.write_back_every,
            secs: a.write_back_secs,
        }
    } else {
        serve::WriteBack::Off
    };
    let mut scorers = Vec::new();
    for m in &a.model {
        let s = Scorer::open(&store, m, a.encoder_dir.clone())
            .await
            .map_err(cli_err)?
            .with_cache_mib(a.cache_mib)
            .with_write_back(write_back);
        // Load the encoder once, now; a model whose vectors no encoder can make still
        // serves candidates given by content id.
        let s = Arc::new(s);
        let s2 = s.clone();
        let warm = tokio::task::spawn_blocking(move || s2.warm_up())
            .await
            .map_err(|e| CliError::failure(anyhow::Error::from(e)))?;
        if let Err(e) = warm {
            ctx.printer.warn(format!("model '{m}': {e}"));
        }
        scorers.push(s);
    }
    let cfg = ServeConfig {
        addr: a.addr,
        token,
        max_body: a.max_body,
        max_candidates: a.max_candidates,
        queue: a.queue,
        max_batch: a.max_batch,
        max_comparisons: a.max_comparisons,
    };
    let stop = Arc::new(tokio::sync::Notify::new());
    let s2 = stop.clone();
    ctrlc::set_handler(move || {
        to_stderr(format_args!("stopping: finishing the requests in flight"));
        s2.notify_one();
    })
    .map_err(|e| CliError::failure(anyhow::anyhow!("cannot catch SIGINT/SIGTERM: {e}")))?;
    let names = a.model.join(", ");
    serve::serve(
        scorers,
        cfg,
        async move { stop.notified().await },
        move |addr| {
            // Always printed (tests and scripts read the port from it), even with --quiet.
            to_stderr(format_args!(
                "palpipe serve: listening on http://{addr} (models: {names})"
            ));
        },
    )
    .await
    .map_err(cli_err)?;
    to_stderr(format_args!("palpipe serve: stopped"));
    Ok(())
}
