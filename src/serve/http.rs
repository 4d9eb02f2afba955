//! The HTTP server (`palpipe serve`): axum on hyper and tokio.
//!
//! Owns: the routes, their JSON shapes and limits, bearer-token checks, the request log line,
//! the scoring queue and graceful shutdown.
//!
//! - `POST /score` `{"model"?, "user", "prompt", "candidates": […]}` → `{"rewards": […]}`
//!   (`"user": null` is the zero-shot mixture);
//! - `POST /get_reward`, OpenRLHF's remote reward model shape: `{"query": […], "prompts":
//!   […], "labels": […]}` → `{"rewards": […]}`, where `labels[i]` is the user id and the
//!   response is `query[i]` less its `prompts[i]` prefix;
//! - `POST /users/{id}/enroll` `{"model"?, "comparisons": [{"prompt"?, "chosen",
//!   "rejected", "weight"?}, …], "estimator"?, "prior_scale"?, "ridge"?, "steps"?, "seed"?}`
//!   → the fitted mixture (with `offset`, the offset too) and held-out accuracy (as `palpipe
//!   enroll`);
//! - `GET /models`, `GET /health`.
//!
//! `GET /models` also reports each model's vector cache (entries, counted bytes, its bound,
//! evictions, vectors waiting for write-back and written back).
//!
//! Errors are `{"error": "…"}` with 400 (bad input, naming the field), 401 (token), 404
//! (unknown model or user), 413 (body or batch over a limit), 503 (queue full) or 500.
//! Scoring requests go through a bounded queue: one worker takes everything waiting (up to
//! `max_batch` requests), looks up their vectors together and runs them through the model in
//! one forward pass, so concurrent requests are batched rather than served one by one; a
//! full queue answers 503 at once. Does not own: scoring itself (`scorer.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::enroll::{parse_comparison, ComparisonInput};
use super::error::ServeError;
use super::scorer::{Content, ScoreRequest, Scored, Scorer, UserSel};
use crate::pal::FewShotConfig;

/// Limits and options of the server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen (127.0.0.1:8000 by default; port 0 picks a free one).
    pub addr: SocketAddr,
    /// When set, every route but `/health` wants `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Largest request body, bytes (413 above).
    pub max_body: usize,
    /// Most candidates in one `/score`, or items in one `/get_reward` (413 above).
    pub max_candidates: usize,
    /// Requests the scoring queue holds before answering 503.
    pub queue: usize,
    /// Most requests one forward pass takes from the queue.
    pub max_batch: usize,
    /// Most comparisons in one `POST /users/{id}/enroll` (413 above).
    pub max_comparisons: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            token: None,
            max_body: 1 << 20,
            max_candidates: 1024,
            queue: 256,
            max_batch: 64,
            max_comparisons: 4096,
        }
    }
}

/// Work for the queue: requests of one model and where to answer.
struct Job {
    scorer: Arc<Scorer>,
    reqs: Vec<ScoreRequest>,
    reply: oneshot::Sender<Result<Vec<Scored>, ServeError>>,
}

struct App {
    models: BTreeMap<String, Arc<Scorer>>,
    default_model: String,
    cfg: ServeConfig,
    queue: mpsc::Sender<Job>,
}

type Shared = Arc<App>;

/// An error as a JSON response.
struct ApiError(ServeError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(json!({"error": self.0.to_string()}))).into_response()
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        ApiError(e)
    }
}

type ApiResult = Result<Response, ApiError>;

/// Serves `scorers` (the first is the default model) until `shutdown` completes, then
/// finishes the requests in flight. `ready` gets the bound address once listening.
pub async fn serve(
    scorers: Vec<Arc<Scorer>>,
    cfg: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let default_model = scorers
        .first()
        .map(|s| s.name.clone())
        .ok_or_else(|| ServeError::bad("--model", "name at least one model to serve"))?;
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    tokio::spawn(worker(rx, cfg.max_batch.max(1)));
    // Batched write-back: what has waited long enough is written even when no request
    // comes to trigger it; what waits at shutdown is written after the last request.
    let all: Vec<Arc<Scorer>> = scorers.clone();
    let ticking = all.clone();
    // The ticker is stopped by a flag and awaited, never aborted: an abort could land in the
    // middle of a write and lose the vectors it had taken.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            for s in &ticking {
                s.flush_pending(false).await;
            }
        }
    });
    let app = Arc::new(App {
        models: scorers.into_iter().map(|s| (s.name.clone(), s)).collect(),
        default_model,
        cfg: cfg.clone(),
        queue: tx,
    });
    let router = Router::new()
        .route("/score", post(score))
        .route("/get_reward", post(get_reward))
        .route("/users/{id}/enroll", post(enroll))
        .route("/models", get(models))
        .route("/health", get(health))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(middleware::from_fn(log_line))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|e| ServeError::bad("--addr", format!("cannot listen on {}: {e}", cfg.addr)))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    ready(local);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| ServeError::Internal(format!("the server stopped: {e}")));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ticker.await;
    // What still waits is written now; another process holding the store's writer lock gets
    // a few seconds to let go before the vectors are given up (with a warning).
    for s in &all {
        for attempt in 0..8 {
            if s.flush_pending(true).await {
                break;
            }
            if attempt < 7 {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    }
    served
}

/// Takes every job waiting (up to `max_batch` requests), prepares them, and scores each
/// model's share in one forward pass.
async fn worker(mut rx: mpsc::Receiver<Job>, max_batch: usize) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut n = jobs[0].reqs.len();
        while n < max_batch {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.reqs.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        // Group by model, keeping each job's requests together.
        let mut by_model: BTreeMap<String, Vec<Job>> = BTreeMap::new();
        for j in jobs {
            by_model.entry(j.scorer.name.clone()).or_default().push(j);
        }
        for (_, group) in by_model {
            run_group(group).await;
        }
    }
}

async fn run_group(group: Vec<Job>) {
    let scorer = group[0].scorer.clone();
    // Each job prepared on its own, so one bad request fails only itself.
    let mut ready = Vec::new();
    for j in group {
        match scorer.prepare_many(&j.reqs).await {
            Ok(p) => ready.push((j, p)),
            Err(e) => {
                let _ = j.reply.send(Err(e));
            }
        }
    }
    if ready.is_empty() {
        return;
    }
    let all: Vec<_> = ready.iter().flat_map(|(_, p)| p.iter().cloned()).collect();
    let s2 = scorer.clone();
    let result = tokio::task::spawn_blocking(move || s2.score_prepared(&all))
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))
        .and_then(|r| r);
    match result {
        Ok(scored) => {
            let mut it = scored.into_iter();
            for (j, p) in ready {
                let mine: Vec<Scored> = it.by_ref().take(p.len()).collect();
                let _ = j.reply.send(Ok(mine));
            }
        }
        Err(_) => {
            // Score each job alone, so the error lands on the request that caused it.
            for (j, p) in ready {
                let s3 = scorer.clone();
                let r = tokio::task::spawn_blocking(move || s3.score_prepared(&p))
                    .await
                    .map_err(|e| ServeError::Internal(e.to_string()))
                    .and_then(|r| r);
                let _ = j.reply.send(r);
            }
        }
    }
}

/// Puts requests on the queue and waits for their rewards; 503 when the queue is full.
async fn submit(
    app: &App,
    scorer: Arc<Scorer>,
    reqs: Vec<ScoreRequest>,
) -> Result<Vec<Scored>, ServeError> {
    let (tx, rx) = oneshot::channel();
    app.queue
        .try_send(Job {
            scorer,
            reqs,
            reply: tx,
        })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServeError::Busy(format!(
                "overloaded: {} requests are waiting; retry later",
                app.cfg.queue
            )),
            mpsc::error::TrySendError::Closed(_) => {
                ServeError::Internal("the scoring worker stopped".into())
            }
        })?;
    rx.await
        .map_err(|_| ServeError::Internal("the scoring worker dropped the request".into()))?
}

/// The body as JSON, within the size limit (a Content-Length over it is refused before
/// anything is read).
async fn body_json(app: &App, req: Request) -> Result<Value, ServeError> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.cfg.max_body as u64) {
        return Err(ServeError::TooLarge(format!(
            "the request body is over {} bytes (--max-body)",
            app.cfg.max_body
        )));
    }
    let body: Body = req.into_body();
    let bytes: Bytes = axum::body::to_bytes(body, app.cfg.max_body)
        .await
        .map_err(|e| {
            let too_big = std::error::Error::source(&e)
                .map(|s| s.to_string().contains("length limit"))
                .unwrap_or(false)
                || e.to_string().contains("length limit");
            if too_big {
                ServeError::TooLarge(format!(
                    "the request body is over {} bytes (--max-body)",
                    app.cfg.max_body
                ))
            } else {
                ServeError::bad("body", format!("cannot be read: {e}"))
            }
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ServeError::bad("body", format!("is not valid JSON: {e}")))
}

fn model_of(app: &App, v: &Value) -> Result<Arc<Scorer>, ServeError> {
    let name = match v.get("model") {
        None | Some(Value::Null) => app.default_model.as_str(),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ServeError::bad("model", "must be a string")),
    };
    app.models.get(name).cloned().ok_or_else(|| {
        ServeError::UnknownModel(format!(
            "model '{}' is not served (serving: {})",
            super::error::shown(name),
            app.models.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })
}

fn array_field<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>, ServeError> {
    match v.get(key) {
        None => Err(ServeError::bad(key, "is missing")),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(ServeError::bad(key, "must be an array")),
    }
}

async fn score(State(app): State<Shared>, req: Request) -> ApiResult {
    let v = body_json(&app, req).await?;
    if !v.is_object() {
        return Err(ServeError::bad("body", "must be a JSON object").into());
    }
    let scorer = model_of(&app, &v)?;
    let user = match v.get("user") {
        None => return Err(ServeError::bad("user", "is missing (null scores zero-shot)").into()),
        Some(Value::Null) => UserSel::ZeroShot,
        Some(Value::String(s)) => UserSel::Id(s.clone()),
        Some(_) => return Err(ServeError::bad("user", "must be a string or null").into()),
    };
    let prompt = match v.get("prompt") {
        None | Some(Value::Null) => None,
        Some(p) => Some(no_file(Content::from_json(p, false, "prompt")?, "prompt")?),
    };
    let cands = array_field(&v, "candidates")?;
    if cands.is_empty() {
        return Err(ServeError::bad("candidates", "is empty; give at least one").into());
    }
    if cands.len() > app.cfg.max_candidates {
        return Err(ServeError::TooLarge(format!(
            "'candidates' holds {} candidates; the limit is {} per request (--max-candidates); split them over several requests",
            cands.len(),
            app.cfg.max_candidates
        ))
        .into());
    }
    let images = scorer.images();
    let candidates = cands
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let field = format!("candidates[{i}]");
            Content::from_json(c, images, &field).and_then(|c| no_file(c, &field))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let name = scorer.name.clone();
    let mut out = submit(
        &app,
        scorer,
        vec![ScoreRequest {
            user: user.clone(),
            prompt,
            candidates,
        }],
    )
    .await?;
    let s = out.remove(0);
    let mut resp = json!({
        "model": name,
        "user": match user { UserSel::Id(u) => Value::String(u), UserSel::ZeroShot => Value::Null },
        "rewards": s.rewards,
    });
    if !s.truncated.is_empty() {
        resp["truncated"] = json!(s.truncated);
    }
    if s.prompt_truncated {
        resp["prompt_truncated"] = json!(true);
    }
    Ok(Json(resp).into_response())
}

async fn get_reward(State(app): State<Shared>, req: Request) -> ApiResult {
    let v = body_json(&app, req).await?;
    let scorer = model_of(&app, &v)?;
    let query = array_field(&v, "query")?;
    let prompts = array_field(&v, "prompts")?;
    let labels = array_field(&v, "labels")?;
    if prompts.len() != query.len() || labels.len() != query.len() {
        return Err(ServeError::bad(
            "prompts",
            format!(
                "'query', 'prompts' and 'labels' must have one entry each per sample (got {}, {}, {})",
                query.len(),
                prompts.len(),
                labels.len()
            ),
        )
        .into());
    }
    if query.len() > app.cfg.max_candidates {
        return Err(ServeError::TooLarge(format!(
            "'query' holds {} samples; the limit is {} per request (--max-candidates)",
            query.len(),
            app.cfg.max_candidates
        ))
        .into());
    }
    let mut reqs = Vec::with_capacity(query.len());
    for i in 0..query.len() {
        let q = query[i]
            .as_str()
            .ok_or_else(|| ServeError::bad(format!("query[{i}]"), "must be a string"))?;
        let p = prompts[i]
            .as_str()
            .ok_or_else(|| ServeError::bad(format!("prompts[{i}]"), "must be a string"))?;
        let user = labels[i].as_str().ok_or_else(|| {
            ServeError::bad(format!("labels[{i}]"), "must be a string (the user id)")
        })?;
        let response = q.strip_prefix(p).ok_or_else(|| {
            ServeError::bad(
                format!("query[{i}]"),
                format!("does not start with prompts[{i}]; the response is query[{i}] with the prompt removed"),
            )
        })?;
        if response.trim().is_empty() {
            return Err(ServeError::bad(
                format!("query[{i}]"),
                "holds no response after its prompt",
            )
            .into());
        }
        reqs.push(ScoreRequest {
            user: UserSel::Id(user.to_string()),
            prompt: Content::prompt_text(p),
            candidates: vec![Content::Text(response.to_string())],
        });
    }
    if reqs.is_empty() {
        return Ok(Json(json!({"rewards": [], "scores": []})).into_response());
    }
    let scored = submit(&app, scorer, reqs).await?;
    let rewards: Vec<f32> = scored.iter().map(|s| s.rewards[0]).collect();
    let truncated: Vec<usize> = scored
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.truncated.is_empty())
        .map(|(i, _)| i)
        .collect();
    let mut resp = json!({"rewards": rewards, "scores": rewards});
    if !truncated.is_empty() {
        resp["truncated"] = json!(truncated);
    }
    Ok(Json(resp).into_response())
}

async fn enroll(State(app): State<Shared>, Path(id): Path<String>, req: Request) -> ApiResult {
    let v = body_json(&app, req).await?;
    let scorer = model_of(&app, &v)?;
    let comps = array_field(&v, "comparisons")?;
    if comps.is_empty() {
        return Err(ServeError::bad("comparisons", "is empty").into());
    }
    if comps.len() > app.cfg.max_comparisons {
        return Err(ServeError::TooLarge(format!(
            "'comparisons' holds {}; the limit is {} per request (--max-comparisons)",
            comps.len(),
            app.cfg.max_comparisons
        ))
        .into());
    }
    let images = scorer.images();
    let parsed = comps
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let at = format!("comparisons[{i}]");
            let c = parse_comparison(c, images, None, &at)?;
            Ok(ComparisonInput {
                prompt: c
                    .prompt
                    .map(|p| no_file(p, &format!("{at}: prompt")))
                    .transpose()?,
                chosen: no_file(c.chosen, &format!("{at}: chosen"))?,
                rejected: no_file(c.rejected, &format!("{at}: rejected"))?,
                weight: c.weight,
            })
        })
        .collect::<Result<Vec<_>, ServeError>>()?;
    let out = scorer.enroll(&id, &parsed, &fit_settings(&v)?).await?;
    Ok(Json(json!(out)).into_response())
}

/// The keys of an enrolment request's body.
const ENROLL_KEYS: [&str; 7] = [
    "model",
    "comparisons",
    "estimator",
    "prior_scale",
    "ridge",
    "steps",
    "seed",
];

/// The fit settings of an enrolment request, each optional as `palpipe enroll`'s flags:
/// `"estimator"` (auto, map, posterior, empirical, mle, offset), `"prior_scale"` (a number),
/// `"ridge"` (a number, or "inf" for no offset), `"steps"` and `"seed"` (whole numbers;
/// steps at most 100,000, checked with the other ranges when the fit starts). A key the body
/// should not have is refused, naming it.
fn fit_settings(v: &Value) -> Result<FewShotConfig, ServeError> {
    if let Some(obj) = v.as_object() {
        if let Some(k) = obj.keys().find(|k| !ENROLL_KEYS.contains(&k.as_str())) {
            return Err(ServeError::bad(
                super::error::shown(k),
                format!(
                    "is not a key of an enrolment (keys: {})",
                    ENROLL_KEYS.join(", ")
                ),
            ));
        }
    }
    let mut cfg = FewShotConfig::default();
    let given = |k: &str| v.get(k).filter(|x| !x.is_null());
    let whole = |k: &str| -> Result<Option<u64>, ServeError> {
        given(k)
            .map(|x| {
                x.as_u64()
                    .ok_or_else(|| ServeError::bad(k, "must be a whole number, 0 or more"))
            })
            .transpose()
    };
    if let Some(n) = whole("steps")? {
        // Beyond usize (a 32-bit build) it is past the bound in any case.
        cfg.steps = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = whole("seed")? {
        cfg.seed = n;
    }
    if let Some(e) = given("estimator") {
        let name = e.as_str().ok_or_else(|| {
            ServeError::bad(
                "estimator",
                "must be a string: auto, map, posterior, empirical, mle or offset",
            )
        })?;
        cfg.estimator = name.parse().map_err(ServeError::settings)?;
    }
    if let Some(x) = given("prior_scale") {
        cfg.prior_scale = x
            .as_f64()
            .ok_or_else(|| ServeError::bad("prior_scale", "must be a number"))?;
    }
    if let Some(x) = given("ridge") {
        cfg.ridge = match x.as_str() {
            Some("inf") => f64::INFINITY,
            _ => x
                .as_f64()
                .ok_or_else(|| ServeError::bad("ridge", "must be a number or \"inf\""))?,
        };
    }
    Ok(cfg)
}

async fn models(State(app): State<Shared>) -> ApiResult {
    let list: Vec<Value> = app
        .models
        .values()
        .map(|s| {
            let c = s.model.config();
            json!({
                "name": s.name, "kind": s.kind, "k": c.k, "encoder_id": s.encoder_id,
                "dx": c.dx, "dp": c.dp, "seen_users": s.model.user_ids().len(),
                "enrolled_users": s.enrolled_count(), "default": s.name == app.default_model,
                "cache": s.cache_stats(),
            })
        })
        .collect();
    Ok(Json(json!({"models": list})).into_response())
}

async fn health(State(app): State<Shared>) -> ApiResult {
    Ok(
        Json(json!({"status": "ok", "models": app.models.keys().collect::<Vec<_>>()}))
            .into_response(),
    )
}

async fn not_found(req: Request) -> ApiResult {
    Err(ServeError::UnknownModel(format!(
        "no route {} {} (routes: POST /score, POST /get_reward, POST /users/{{id}}/enroll, GET /models, GET /health)",
        req.method(),
        req.uri().path()
    ))
    .into())
}

/// Over HTTP an image is the content id of an image already in the store: the server never
/// opens a file a client names (which would let any client read or probe the server's disk).
fn no_file(c: Content, field: &str) -> Result<Content, ServeError> {
    match c {
        Content::Image(_) => Err(ServeError::bad(
            field,
            "names a file; over HTTP give an image as {\"id\": CONTENT_ID} of an image already in the store (only the palpipe CLI reads image files)",
        )),
        other => Ok(other),
    }
}

/// The same 32-byte digest for equal texts; comparing digests takes the same time wherever
/// two tokens differ, so response times do not reveal how much of a guess was right.
fn token_digest(t: &str) -> [u8; 32] {
    *blake3::hash(t.as_bytes()).as_bytes()
}

/// Bearer-token check (every route but /health) when a token is configured.
async fn auth(State(app): State<Shared>, headers: HeaderMap, req: Request, next: Next) -> Response {
    if let Some(token) = &app.cfg.token {
        if req.uri().path() != "/health" {
            let given = headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.strip_prefix("Bearer "));
            let ok = given.is_some_and(|g| token_digest(g.trim()) == token_digest(token));
            if !ok {
                return (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "missing or wrong bearer token\nhint: send 'Authorization: Bearer <the token in --token-file>'"})),
                )
                    .into_response();
            }
        }
    }
    next.run(req).await
}

/// One line per request on stderr: method, path, status, milliseconds.
async fn log_line(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let t = Instant::now();
    let resp = next.run(req).await;
    crate::pipeline::progress::to_stderr(format_args!(
        "{method} {path} {} {:.1}ms",
        resp.status().as_u16(),
        t.elapsed().as_secs_f64() * 1000.0
    ));
    resp
}
