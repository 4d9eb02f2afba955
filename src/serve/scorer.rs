//! One served model: its PAL head, its encoder, its vector cache and its users.
//!
//! Owns: [`Scorer`] and the request types. A request names a user ([`UserSel`]), a prompt
//! and candidates ([`Content`]: a text, an image file, or a content id already in the store);
//! [`Scorer::prepare_many`] turns requests into mixtures and vectors, and
//! [`Scorer::score_prepared`] runs them through the model in one batch.
//!
//! Vectors come from the content-addressed cache: the id of a text or image is the blake3 of
//! its bytes (as every ingest stage computes it), looked up under the model's encoder id in
//! memory (a bounded LRU map, `cache.rs`), then in the store's `embeddings`; only what is in
//! neither is embedded, with the model's own encoder (loaded once, on first need). New
//! vectors go back to `embeddings` as the model's [`WriteBack`] policy says: after each
//! batch for `palpipe score`, so a candidate scored twice is embedded once; not at all, or
//! in batches, for `palpipe serve`. A write-back leaves out every vector another writer
//! (`palpipe embed`, a second `serve`) stored after this process first read `embeddings`
//! (see [`Scorer::open`]), so no vector is stored twice. An encoder
//! whose files are missing, or whose weights hash to another id than the one the model was
//! trained on, is [`ServeError::EncoderMissing`] naming the id and the folder looked in.
//!
//! Users: a seen user gets their trained mixture, an enrolled user (table `enrollments`,
//! written by `enroll.rs`) the mixture of their fitted logits and, when they were enrolled
//! with the `offset` estimator, their offset δ of the ideal point ([`UserParams`]),
//! [`UserSel::ZeroShot`] the mean of the seen users' mixtures; any other id is
//! [`ServeError::UnknownUser`], never a silent zero-shot.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use arrow_array::{Array, FixedSizeListArray, Float32Array, StringArray};

use super::cache::{CacheStats, Pending, VectorCache, WriteBack, DEFAULT_CACHE_MIB};
use super::error::{shown, ServeError};
use crate::embed::{self, BertSentenceEncoder, ClipEncoder, ImageEncoder, TextEncoder};
use crate::pal::{PalModel, ScoreJob};
use crate::pipeline::pal_stages::ModelEntry;
use crate::store::migrate::ENROLLMENTS_OFFSET;
use crate::store::records::{content_id, EmbeddingRow};
use crate::store::{batches, sql_list, sql_str, KeysSeen, Store, WriteStats};

/// Content ids per `IN (…)` lookup; above [`READ_ALL_ABOVE`] ids, the encoder's whole
/// vector set is read once instead.
const LOOKUP_CHUNK: usize = 1000;
const READ_ALL_ABOVE: usize = 4000;

/// A piece of content to score: a text, an image file, an image's bytes sent inline, or a
/// content id in the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    Image(PathBuf),
    /// An image's encoded bytes (PNG or JPEG) and the name errors give it (over HTTP, the
    /// field it came in, e.g. `candidates[3]`).
    ImageData {
        bytes: Vec<u8>,
        name: String,
    },
    Id(String),
}

impl Content {
    /// A prompt given as text (a flag, the reward endpoint's query): an empty or blank one is
    /// no prompt.
    pub fn prompt_text(p: &str) -> Option<Content> {
        (!p.trim().is_empty()).then(|| Content::Text(p.to_string()))
    }

    /// A text to embed; `field` names it in the error.
    ///
    /// # Errors
    /// [`ServeError::BadInput`] when it is empty or only white space (it has no embedding).
    pub(crate) fn text(s: &str, field: &str) -> Result<Content, ServeError> {
        if s.trim().is_empty() {
            return Err(ServeError::bad(
                field,
                "is an empty text; an empty text has no embedding",
            ));
        }
        Ok(Content::Text(s.to_string()))
    }

    /// Reads a JSON value: a string (a text, or an image path when `images`), or an object
    /// `{"text": …}`, `{"image": PATH}`, `{"image_base64": BASE64}` (an image's PNG or JPEG
    /// bytes) or `{"id": CONTENT_ID}`. `field` names it in errors.
    pub fn from_json(
        v: &serde_json::Value,
        images: bool,
        field: &str,
    ) -> Result<Content, ServeError> {
        match v {
            serde_json::Value::String(s) if images => Ok(Content::Image(PathBuf::from(s))),
            serde_json::Value::String(s) => Content::text(s, field),
            serde_json::Value::Object(m) if m.len() == 1 => {
                let (k, val) = m.iter().next().expect("one entry");
                let s = val
                    .as_str()
                    .ok_or_else(|| ServeError::bad(format!("{field}.{k}"), "must be a string"))?;
                match k.as_str() {
                    "text" => Content::text(s, &format!("{field}.text")),
                    "image" => Ok(Content::Image(PathBuf::from(s))),
                    "image_base64" => {
                        use base64::Engine as _;
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(s.trim())
                            .map_err(|e| {
                                ServeError::bad(
                                    format!("{field}.image_base64"),
                                    format!("is not valid base64: {e}"),
                                )
                            })?;
                        Ok(Content::ImageData {
                            bytes,
                            name: field.to_string(),
                        })
                    }
                    "id" => Ok(Content::Id(s.to_string())),
                    other => Err(ServeError::bad(
                        field,
                        format!(
                            "unknown key '{}' (use text, image, image_base64 or id)",
                            shown(other)
                        ),
                    )),
                }
            }
            _ => Err(ServeError::bad(
                field,
                "must be a string or an object {\"text\"|\"image\"|\"image_base64\"|\"id\": …}",
            )),
        }
    }
}

/// The `prompt` value of a request or comparison line when it gives one: absent, `null` and an
/// empty or blank text are no prompt (as [`Content::prompt_text`] reads a prompt given as
/// text); anything else is left to [`Content::from_json`] to read or refuse.
pub fn given_prompt(v: Option<&serde_json::Value>) -> Option<&serde_json::Value> {
    match v? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) if s.trim().is_empty() => None,
        given => Some(given),
    }
}

/// Whose reward: a user id, or the zero-shot mixture.
#[derive(Debug, Clone, PartialEq)]
pub enum UserSel {
    Id(String),
    ZeroShot,
}

/// One scoring request.
#[derive(Debug, Clone)]
pub struct ScoreRequest {
    pub user: UserSel,
    pub prompt: Option<Content>,
    pub candidates: Vec<Content>,
}

/// A request made ready for the model: the mixture and the vectors.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub user: UserParams,
    pub prompt: Option<Arc<Vec<f32>>>,
    pub candidates: Vec<Arc<Vec<f32>>>,
    /// Indices of candidates whose text was longer than the encoder's token limit (their
    /// vectors are of the truncated text).
    pub truncated: Vec<usize>,
    /// Whether the prompt was truncated.
    pub prompt_truncated: bool,
}

/// What scoring needs of a user: their mixture w (K values) and, for a user enrolled with
/// the `offset` estimator, their offset δ of the ideal point ([`ScoreJob::offset`]).
#[derive(Debug, Clone, PartialEq)]
pub struct UserParams {
    pub mixture: Vec<f64>,
    pub offset: Option<Vec<f32>>,
}

/// A request's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub rewards: Vec<f32>,
    pub truncated: Vec<usize>,
    pub prompt_truncated: bool,
}

/// A loaded encoder of either family.
// Both variants are large and differ by a few hundred bytes (a loaded model's handles):
// one lives per served encoder, never moved on a hot path, so boxing either buys nothing.
#[allow(clippy::large_enum_variant)]
enum Loaded {
    Bert(BertSentenceEncoder),
    Clip(ClipEncoder),
}

impl Loaded {
    fn text(&self) -> &dyn TextEncoder {
        match self {
            Loaded::Bert(e) => e,
            Loaded::Clip(e) => e,
        }
    }
}

/// One served model.
pub struct Scorer {
    /// The model's name in `models`.
    pub name: String,
    /// `pal-a` or `pal-b`.
    pub kind: String,
    pub model: PalModel,
    /// The encoder the model's vectors came from (name + weights hash).
    pub encoder_id: String,
    encoder_dir: Option<PathBuf>,
    encoder: Mutex<Option<Arc<Loaded>>>,
    store: Store,
    cache: Mutex<VectorCache>,
    write_back: WriteBack,
    pending: Mutex<Pending>,
    /// What every write-back checks its vectors against: `embeddings` as it was when the
    /// scorer was opened, before any read of it, and the keys stored since (see
    /// [`Scorer::open`]).
    seen: tokio::sync::Mutex<KeysSeen>,
    /// Enrolled users by id: the mixture of their fitted logits (computed once, when read)
    /// and their offset.
    enrolled: RwLock<HashMap<String, UserParams>>,
}

impl Scorer {
    /// Loads model `name` from the store, with its enrolled users. `encoder_dir` is the
    /// encoder's folder when it is not `$PALPIPE_MODELS/<name>` (or ~/.cache/palpipe/models).
    ///
    /// The scorer records the version of `embeddings` as it opens, before any read of it: the
    /// [`KeysSeen`] every write-back commits with ([`Store::append_seen`]), which leaves out
    /// each vector whose key was added in a fragment not in that version. Why one record,
    /// taken before every read, serves every later write-back:
    /// - a vector is written back only when a read of `embeddings` did not find it, and every
    ///   read comes after this record, so it sees at least the recorded version: a key in
    ///   the recorded fragments was found, never embedded, and those fragments need no check;
    /// - every fragment added since is read by the next write-back (`catch_up`), so a key
    ///   another writer added after the record, before or after the read that missed it, or
    ///   while the write-back's commit is being tried, is left out; the keys taken only grow
    ///   (other writers' fragments stay stored: a compaction's rewritten fragments are new
    ///   ids, whose keys are all stored, so taking them is right too);
    /// - this scorer's own commits record their fragments as seen (`commit_seen` calls
    ///   `KeysSeen::own` on each success), so their fragments are not read back; their keys
    ///   are counted as taken instead ([`Scorer::append_vectors`]), so a lookup of this
    ///   process that missed a vector while the commit storing it was in flight (an enrol
    ///   beside a batch, or an evicted vector during a flush) does not store it again; a
    ///   commit that failed (or whose answer was lost) records nothing, so if it did land,
    ///   its vectors, put back to wait, are found taken by the next try and left out.
    ///
    /// A write-back that fails keeps what was read (see `commit_seen`). The keys taken (other
    /// writers' and this scorer's own) are kept for the scorer's life (memory that grows
    /// with them).
    pub async fn open(
        store: &Store,
        name: &str,
        encoder_dir: Option<PathBuf>,
    ) -> Result<Scorer, ServeError> {
        let entry = ModelEntry::find(store, name)
            .await
            .map_err(|e| ServeError::UnknownModel(crate::store::messages::error_chain(&e)))?;
        let row = entry.row;
        if row.kind == "popularity" || row.kind == "clip-score" {
            return Err(ServeError::UnknownModel(format!(
                "model '{name}' is the {} baseline, which has no per-user reward to score\nhint: score with a PAL model (pal-a, pal-b or bt)",
                row.kind
            )));
        }
        let dir = store
            .local_dir(&row.checkpoint)
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))?;
        let model = tokio::task::spawn_blocking(move || PalModel::load(&dir.path))
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))??;
        let seen = KeysSeen::at(store.dataset("embeddings", None).await?.as_ref());
        let encoder_id = row
            .encoder_id
            .clone()
            .or_else(|| model.info.encoder_id.clone())
            .unwrap_or_default();
        let s = Scorer {
            name: name.to_string(),
            kind: row.kind.clone(),
            model,
            encoder_id,
            encoder_dir,
            encoder: Mutex::new(None),
            store: store.clone(),
            cache: Mutex::new(VectorCache::new(VectorCache::limit_of_mib(
                DEFAULT_CACHE_MIB,
            ))),
            write_back: WriteBack::Immediate,
            pending: Mutex::new(Pending::default()),
            seen: tokio::sync::Mutex::new(seen),
            enrolled: RwLock::new(HashMap::new()),
        };
        s.reload_enrolled(None).await?;
        Ok(s)
    }

    /// The store the model lives in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Bounds the in-memory vector cache to `mib` MiB (counted as [`cache::entry_bytes`]).
    ///
    /// [`cache::entry_bytes`]: super::cache::entry_bytes
    pub fn with_cache_mib(mut self, mib: f64) -> Scorer {
        self.cache = Mutex::new(VectorCache::new(VectorCache::limit_of_mib(mib)));
        self
    }

    /// Sets where vectors embedded while scoring go (default [`WriteBack::Immediate`]).
    pub fn with_write_back(mut self, policy: WriteBack) -> Scorer {
        self.write_back = policy;
        self
    }

    /// The vector cache's counters.
    pub fn cache_stats(&self) -> CacheStats {
        let (entries, bytes, limit_bytes, evictions) =
            self.cache.lock().expect("vector cache lock").stats();
        let pending = self.pending.lock().expect("pending vectors lock");
        CacheStats {
            entries,
            bytes,
            limit_bytes,
            evictions,
            pending_write_back: pending.len(),
            written_back: pending.written,
            already_stored: pending.already_stored,
        }
    }

    /// Writes the vectors waiting for a batched write-back, when they are due (`force`: now,
    /// whatever is waiting: at shutdown). Flushes of every model in this process take turns
    /// (they share the store's writer lock); vectors a write could not store (the lock held
    /// by another process, a failed append) go back to wait for the next flush; those
    /// another writer stored meanwhile are left out (counted as already stored). Returns
    /// whether nothing is left waiting.
    pub async fn flush_pending(&self, force: bool) -> bool {
        static FLUSHES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        // Nothing waits or nothing is due: done, without touching the shared turn.
        {
            let p = self.pending.lock().expect("pending vectors lock");
            if p.is_empty() {
                return true;
            }
            if !(force || p.due(self.write_back)) {
                return false;
            }
        }
        // A request's flush never waits behind another flush's write (the ticker comes back
        // to what it leaves); only a forced one, at shutdown, waits for its turn.
        let _turn = if force {
            FLUSHES.lock().await
        } else {
            match FLUSHES.try_lock() {
                Ok(turn) => turn,
                Err(_) => return false,
            }
        };
        let rows = {
            let mut p = self.pending.lock().expect("pending vectors lock");
            if p.is_empty() {
                return true;
            }
            p.take()
        };
        // Tests hold the flush here, its vectors taken and not yet stored, while a lookup of
        // the same process misses them.
        crate::store::race_hook::pause("serve-write-back").await;
        let stored = self.append_vectors(&rows).await;
        let mut p = self.pending.lock().expect("pending vectors lock");
        if !stored {
            p.add(&rows);
        }
        stored && p.is_empty()
    }

    /// Whether candidates given as plain strings are image paths (the encoder is CLIP).
    pub fn images(&self) -> bool {
        let name = self.encoder_name();
        name != embed::MINILM_L6_V2 && name != crate::ingest::synthetic::ENCODER_ID
    }

    fn encoder_name(&self) -> &str {
        self.encoder_id
            .split(':')
            .next()
            .unwrap_or(&self.encoder_id)
    }

    /// Number of enrolled users.
    pub fn enrolled_count(&self) -> usize {
        self.enrolled.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Rereads the enrolled users of this model (only `user` when given) from the store. A
    /// table written before `offset_json` existed reads as users without an offset.
    pub async fn reload_enrolled(&self, user: Option<&str>) -> Result<(), ServeError> {
        let mut filter = format!("model = {}", sql_str(&self.name));
        if let Some(u) = user {
            filter.push_str(&format!(" AND user_id = {}", sql_str(u)));
        }
        let has_offset = match self.store.dataset("enrollments", None).await? {
            Some(ds) => ds.schema().field(ENROLLMENTS_OFFSET).is_some(),
            None => return Ok(()),
        };
        let mut columns = vec!["user_id", "logits_json"];
        if has_offset {
            columns.push(ENROLLMENTS_OFFSET);
        }
        let mut found = Vec::new();
        for b in self
            .store
            .read("enrollments", &columns, Some(&filter))
            .await?
        {
            let strings = |i: usize| b.column(i).as_any().downcast_ref::<StringArray>();
            let (Some(u), Some(l)) = (strings(0), strings(1)) else {
                continue;
            };
            let o = if has_offset { strings(2) } else { None };
            for i in 0..b.num_rows() {
                let user = shown(u.value(i));
                let bad = |column: &str, why: String| {
                    ServeError::Internal(format!(
                        "enrollments: {column} of user '{user}' (model '{}') {why}",
                        self.name
                    ))
                };
                let parse = |column: &str, text: &str, want: usize| {
                    let v: Vec<f32> = serde_json::from_str(text)
                        .map_err(|e| bad(column, format!("is not a JSON list of numbers: {e}")))?;
                    if v.len() != want {
                        return Err(bad(
                            column,
                            format!("holds {} values, the model needs {want}", v.len()),
                        ));
                    }
                    Ok(v)
                };
                let logits = parse("logits_json", l.value(i), self.model.config().k)?;
                let offset = match o {
                    Some(o) if o.is_valid(i) => Some(parse(
                        ENROLLMENTS_OFFSET,
                        o.value(i),
                        self.model.offset_dim(),
                    )?),
                    _ => None,
                };
                let mixture = self.model.mixture_of_logits(&logits)?;
                found.push((u.value(i).to_string(), UserParams { mixture, offset }));
            }
        }
        let mut map = self.enrolled.write().expect("enrolled users lock");
        for (u, fit) in found {
            map.insert(u, fit);
        }
        Ok(())
    }

    /// Records an enrolled user's mixture and offset in memory (after their fit was written
    /// to the store).
    pub fn set_enrolled(&self, user: &str, params: UserParams) {
        if let Ok(mut m) = self.enrolled.write() {
            m.insert(user.to_string(), params);
        }
    }

    /// What scoring needs of a user: seen, enrolled (rereading the store once on a miss, so
    /// that a user enrolled by another process is found) or zero-shot.
    pub async fn user(&self, user: &UserSel) -> Result<UserParams, ServeError> {
        let mixture_only = |mixture| UserParams {
            mixture,
            offset: None,
        };
        let id = match user {
            UserSel::ZeroShot => return Ok(mixture_only(self.model.zero_shot_mixture()?)),
            UserSel::Id(id) => id,
        };
        if self.model.user_row(id).is_some() {
            return Ok(mixture_only(self.model.mixture(id)?));
        }
        if let Some(p) = self.enrolled_user(id) {
            return Ok(p);
        }
        self.reload_enrolled(Some(id)).await?;
        self.enrolled_user(id)
            .ok_or_else(|| ServeError::UnknownUser {
                model: self.name.clone(),
                user: shown(id),
                suggestion: self.likely_user(id).map(|u| shown(&u)),
            })
    }

    /// The known user (seen or enrolled) that `id` likely means: the one whose id is `id`
    /// under a dataset prefix (`mine/w01` for `w01`; ids carry their dataset's name). `None`
    /// when none or several are. Never a user whose id merely looks alike: that would be
    /// another person's preferences. One pass over the ids, nothing copied.
    fn likely_user(&self, id: &str) -> Option<String> {
        let under_a_prefix = |k: &&str| {
            (k.strip_suffix(id))
                .and_then(|head| head.strip_suffix('/'))
                .is_some_and(|dataset| !dataset.is_empty())
        };
        let enrolled = self.enrolled.read().ok();
        let enrolled_ids = enrolled.iter().flat_map(|m| m.keys()).map(String::as_str);
        let seen_ids = self.model.user_ids().iter().map(String::as_str);
        let mut found: Option<&str> = None;
        for k in seen_ids.chain(enrolled_ids).filter(under_a_prefix) {
            match found {
                Some(f) if f != k => return None,
                _ => found = Some(k),
            }
        }
        found.map(str::to_string)
    }

    fn enrolled_user(&self, id: &str) -> Option<UserParams> {
        self.enrolled.read().ok().and_then(|m| m.get(id).cloned())
    }

    /// The encoder, loaded on first use and checked against the model's encoder id.
    fn encoder(&self) -> Result<Arc<Loaded>, ServeError> {
        let mut slot = self.encoder.lock().expect("encoder lock");
        if let Some(e) = slot.as_ref() {
            return Ok(e.clone());
        }
        let name = self.encoder_name().to_string();
        let dir = match &self.encoder_dir {
            Some(d) => d.clone(),
            None => embed::models_root(&name)
                .map_err(|e| self.missing(PathBuf::from(&name), e.to_string()))?
                .join(&name),
        };
        if self.encoder_id.is_empty() || name == crate::ingest::synthetic::ENCODER_ID {
            return Err(self.missing(
                dir,
                "the model's vectors were not made by an encoder palpipe can run; give candidates by content id ({\"id\": …})".into(),
            ));
        }
        let device = candle_core::Device::Cpu;
        let loaded = if name == embed::MINILM_L6_V2 {
            let mut enc = BertSentenceEncoder::load(&dir, &device)
                .map_err(|e| self.missing(dir.clone(), e.to_string()))?;
            // An id ending in `@N` was made with N tokens kept per text.
            if let Some(n) = self
                .encoder_id
                .rsplit_once('@')
                .and_then(|(_, n)| n.parse::<usize>().ok())
            {
                enc = enc
                    .with_max_length(n)
                    .map_err(|e| self.missing(dir.clone(), e.to_string()))?;
            }
            Loaded::Bert(enc)
        } else {
            Loaded::Clip(
                ClipEncoder::load(&dir, &device)
                    .map_err(|e| self.missing(dir.clone(), e.to_string()))?,
            )
        };
        let got = loaded.text().encoder_id().to_string();
        if got != self.encoder_id {
            return Err(self.missing(
                dir,
                format!(
                    "the weights there are encoder '{got}', not the one the model was trained on"
                ),
            ));
        }
        let e = Arc::new(loaded);
        *slot = Some(e.clone());
        Ok(e)
    }

    fn missing(&self, looked: PathBuf, reason: String) -> ServeError {
        ServeError::EncoderMissing {
            encoder: self.encoder_id.clone(),
            looked,
            reason,
        }
    }

    /// Loads the encoder now (the server does so at start), when the model has one.
    pub fn warm_up(&self) -> Result<(), ServeError> {
        self.encoder().map(|_| ())
    }

    /// Mixtures and vectors for many requests, with one vector lookup for all of them.
    pub async fn prepare_many(&self, reqs: &[ScoreRequest]) -> Result<Vec<Prepared>, ServeError> {
        // Users first: an unknown one fails before anything is embedded.
        let mut users = Vec::with_capacity(reqs.len());
        for r in reqs {
            users.push(self.user(&r.user).await?);
        }
        let mut contents: Vec<&Content> = Vec::new();
        for r in reqs {
            contents.extend(r.prompt.iter());
            contents.extend(r.candidates.iter());
        }
        let (vectors, truncated) = self.vectors(&contents).await?;
        let mut at = 0;
        let mut out = Vec::with_capacity(reqs.len());
        for (r, user) in reqs.iter().zip(users) {
            let (prompt, prompt_truncated) = match &r.prompt {
                Some(_) => {
                    at += 1;
                    (Some(vectors[at - 1].clone()), truncated[at - 1])
                }
                None => (None, false),
            };
            let n = r.candidates.len();
            let candidates = vectors[at..at + n].to_vec();
            let trunc = (0..n).filter(|&i| truncated[at + i]).collect();
            at += n;
            out.push(Prepared {
                user,
                prompt,
                candidates,
                truncated: trunc,
                prompt_truncated,
            });
        }
        Ok(out)
    }

    /// Rewards of prepared requests, in one forward pass (blocking: call it off the async
    /// threads for large batches).
    pub fn score_prepared(&self, prepared: &[Prepared]) -> Result<Vec<Scored>, ServeError> {
        let uses_prompt = self.model.config().dp > 0;
        let jobs: Vec<ScoreJob<'_>> = prepared
            .iter()
            .map(|p| ScoreJob {
                mixture: &p.user.mixture,
                offset: p.user.offset.as_deref(),
                prompt: if uses_prompt {
                    p.prompt.as_ref().map(|v| v.as_slice())
                } else {
                    None
                },
                candidates: p.candidates.iter().map(|v| v.as_slice()).collect(),
            })
            .collect();
        if uses_prompt {
            if let Some(i) = prepared.iter().position(|p| p.prompt.is_none()) {
                return Err(ServeError::bad(
                    if prepared.len() > 1 {
                        format!("request {i}: prompt")
                    } else {
                        "prompt".into()
                    },
                    format!(
                        "is missing; model '{}' scores candidates for a prompt",
                        self.name
                    ),
                ));
            }
        }
        let rewards = self.model.score_batch(&jobs)?;
        Ok(rewards
            .into_iter()
            .zip(prepared)
            .map(|(rewards, p)| Scored {
                rewards,
                truncated: p.truncated.clone(),
                prompt_truncated: p.prompt_truncated,
            })
            .collect())
    }

    /// Vectors of `contents` under the model's encoder, in order, with whether each text
    /// was truncated: the memory cache, then `embeddings`, then the encoder (whose new
    /// vectors are written to `embeddings`).
    pub async fn vectors(
        &self,
        contents: &[&Content],
    ) -> Result<(Vec<Arc<Vec<f32>>>, Vec<bool>), ServeError> {
        // Content ids (image files are read here).
        let mut ids = Vec::with_capacity(contents.len());
        // content id → (the name errors give the image, its bytes)
        let mut image_bytes: HashMap<String, (String, Vec<u8>)> = HashMap::new();
        for c in contents {
            ids.push(match c {
                Content::Text(t) => content_id(t.as_bytes()),
                Content::Id(id) => id.clone(),
                Content::Image(p) => {
                    let bytes = std::fs::read(p).map_err(|e| {
                        ServeError::File(format!("cannot read image '{}': {e}", p.display()))
                    })?;
                    let id = content_id(&bytes);
                    image_bytes.insert(id.clone(), (p.display().to_string(), bytes));
                    id
                }
                Content::ImageData { bytes, name } => {
                    let id = content_id(bytes);
                    image_bytes
                        .entry(id.clone())
                        .or_insert_with(|| (name.clone(), bytes.clone()));
                    id
                }
            });
        }
        // Memory (the cache, then vectors waiting to be written), then the store. `found`
        // holds every vector of this call, so what the bounded cache evicts meanwhile does
        // not matter here.
        let mut found: HashMap<String, Arc<Vec<f32>>> = HashMap::new();
        {
            let mut cache = self.cache.lock().expect("vector cache lock");
            let pending = self.pending.lock().expect("pending vectors lock");
            for id in &ids {
                if found.contains_key(id) {
                    continue;
                }
                if let Some(v) = cache.get(id).or_else(|| pending.get(id)) {
                    found.insert(id.clone(), v);
                }
            }
        }
        let wanted: Vec<String> = ids
            .iter()
            .filter(|id| !found.contains_key(*id))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !wanted.is_empty() {
            for (id, v) in self.read_vectors(&wanted).await? {
                found.insert(id, Arc::new(v));
            }
            // Tests hold the process here while another writer stores vectors it missed.
            crate::store::race_hook::pause("serve-cache-read").await;
        }
        // The encoder, for what is in neither (and to tell which texts it truncates).
        let mut texts: Vec<(String, String)> = Vec::new();
        let mut images: Vec<(String, String, Vec<u8>)> = Vec::new();
        let mut seen = HashSet::new();
        for (c, id) in contents.iter().zip(&ids) {
            if found.contains_key(id) || !seen.insert(id.clone()) {
                continue;
            }
            match c {
                Content::Text(t) => texts.push((id.clone(), t.clone())),
                Content::Image(_) | Content::ImageData { .. } => {
                    let (name, b) = image_bytes.remove(id).expect("read above");
                    images.push((id.clone(), name, b));
                }
                Content::Id(id) => {
                    return Err(ServeError::NoVector {
                        id: id.clone(),
                        encoder: self.encoder_id.clone(),
                    })
                }
            }
        }
        let has_text = contents.iter().any(|c| matches!(c, Content::Text(_)));
        let encoder = if !texts.is_empty() || !images.is_empty() {
            Some(self.encoder()?)
        } else if has_text {
            self.encoder().ok()
        } else {
            None
        };
        if !texts.is_empty() || !images.is_empty() {
            let enc = encoder.clone().expect("loaded above");
            let new = tokio::task::spawn_blocking(move || embed_new(&enc, texts, images))
                .await
                .map_err(|e| ServeError::Internal(e.to_string()))??;
            let new: Vec<(String, Arc<Vec<f32>>)> =
                new.into_iter().map(|(id, v)| (id, Arc::new(v))).collect();
            match self.write_back {
                WriteBack::Immediate => {
                    self.append_vectors(&new).await;
                }
                WriteBack::Off => {}
                WriteBack::Batched { .. } => {
                    self.pending.lock().expect("pending vectors lock").add(&new);
                    self.flush_pending(false).await;
                }
            }
            for (id, v) in new {
                found.insert(id, v);
            }
        }
        let truncated = match encoder.as_deref() {
            Some(Loaded::Bert(b)) => {
                let all: Vec<&str> = contents
                    .iter()
                    .map(|c| match c {
                        Content::Text(t) => t.as_str(),
                        _ => "x",
                    })
                    .collect();
                let counts = b.count_tokens(&all).unwrap_or_default();
                contents
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        matches!(c, Content::Text(_))
                            && counts.get(i).is_some_and(|&n| n >= b.max_length())
                    })
                    .collect()
            }
            _ => vec![false; contents.len()],
        };
        {
            let mut cache = self.cache.lock().expect("vector cache lock");
            for id in &ids {
                cache.insert(id, found[id].clone());
            }
        }
        let vectors = ids
            .iter()
            .map(|id| found.get(id).cloned().expect("every id found or embedded"))
            .collect();
        Ok((vectors, truncated))
    }

    /// Vectors of `ids` under the model's encoder from `embeddings` (those it holds).
    async fn read_vectors(&self, ids: &[String]) -> Result<Vec<(String, Vec<f32>)>, ServeError> {
        let enc = format!("encoder_id = {}", sql_str(&self.encoder_id));
        let filters: Vec<String> = if ids.len() > READ_ALL_ABOVE {
            vec![enc]
        } else {
            ids.chunks(LOOKUP_CHUNK)
                .map(|c| format!("{enc} AND content_id IN ({})", sql_list(c)))
                .collect()
        };
        let wanted: HashSet<&String> = ids.iter().collect();
        let mut out = Vec::new();
        for f in filters {
            for b in self
                .store
                .read("embeddings", &["content_id", "vector"], Some(&f))
                .await?
            {
                let (Some(c), Some(v)) = (
                    b.column(0).as_any().downcast_ref::<StringArray>(),
                    b.column(1).as_any().downcast_ref::<FixedSizeListArray>(),
                ) else {
                    continue;
                };
                for i in 0..b.num_rows() {
                    if !wanted.contains(&c.value(i).to_string()) {
                        continue;
                    }
                    let row = v.value(i);
                    if let Some(f) = row.as_any().downcast_ref::<Float32Array>() {
                        out.push((c.value(i).to_string(), f.values().to_vec()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Appends vectors to `embeddings` in one keyed commit when the store's writer lock is
    /// free (true when written), leaving out those another writer stored since this scorer
    /// first read `embeddings` (counted in [`CacheStats::already_stored`]); otherwise they
    /// stay in memory only (the next run embeds them again) and a line says so.
    async fn append_vectors(&self, new: &[(String, Arc<Vec<f32>>)]) -> bool {
        let rows: Vec<EmbeddingRow> = new
            .iter()
            .map(|(id, v)| EmbeddingRow {
                content_id: id.clone(),
                encoder_id: self.encoder_id.clone(),
                vector: v.as_ref().clone(),
            })
            .collect();
        let result = async {
            let _lock = self.store.lock()?;
            let Some(b) = batches::embeddings(&rows)? else {
                return Ok(WriteStats::default());
            };
            let mut seen = self.seen.lock().await;
            let keys = crate::store::row_keys("embeddings", &b)?;
            let stats = self.store.append_seen("embeddings", b, &mut seen).await?;
            // Every one of these is stored now (by this commit or another writer's): count
            // them as taken, so that a lookup of this process that missed one while this
            // commit was in flight does not store it again later.
            seen.take(keys);
            Ok::<WriteStats, crate::store::StoreError>(stats)
        }
        .await;
        match result {
            Ok(stats) => {
                let mut p = self.pending.lock().expect("pending vectors lock");
                p.written += stats.inserted as u64;
                p.already_stored += stats.existing as u64;
                true
            }
            Err(e) => {
                crate::pipeline::progress::to_stderr(format_args!(
                    "warning: {} new vector(s) not cached in the store: {e}",
                    rows.len()
                ));
                false
            }
        }
    }
}

/// Embeds texts and decoded images with `enc`: (content id, vector) pairs.
fn embed_new(
    enc: &Loaded,
    texts: Vec<(String, String)>,
    images: Vec<(String, String, Vec<u8>)>,
) -> Result<Vec<(String, Vec<f32>)>, ServeError> {
    let mut out = Vec::with_capacity(texts.len() + images.len());
    if !texts.is_empty() {
        let refs: Vec<&str> = texts.iter().map(|(_, t)| t.as_str()).collect();
        let v = enc.text().embed_texts(&refs)?;
        out.extend(texts.iter().map(|(id, _)| id.clone()).zip(v));
    }
    if !images.is_empty() {
        let Loaded::Clip(clip) = enc else {
            return Err(ServeError::bad(
                "candidates",
                "images need a model trained on CLIP vectors",
            ));
        };
        // A few decoded images at a time: a decoded image can be far larger than its bytes.
        for chunk in images.chunks(8) {
            let mut decoded = Vec::with_capacity(chunk.len());
            for (_, name, bytes) in chunk {
                decoded.push(
                    embed::clip::decode_image(bytes, name)
                        .map_err(|e| ServeError::File(e.to_string()))?,
                );
            }
            let v = clip.embed_images(&decoded)?;
            out.extend(chunk.iter().map(|(id, _, _)| id.clone()).zip(v));
        }
    }
    Ok(out)
}

/// A path given relative to `base` (a comparisons or input file's folder) when relative.
pub fn relative_to(base: Option<&Path>, p: PathBuf) -> PathBuf {
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p,
    }
}
