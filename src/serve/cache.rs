//! The in-memory side of a served model's vector cache, and how new vectors reach the store.
//!
//! Owns: [`VectorCache`], a least-recently-used map from content id to vector bounded by an
//! estimate of the memory it holds (a vector's 4 bytes per value, its id and a fixed
//! per-entry overhead); [`WriteBack`], the policy for vectors embedded while scoring; and
//! [`Pending`], the vectors that wait for a batched write-back. Does not own: the store
//! lookups and the writes themselves (`scorer.rs`).
//!
//! Eviction never changes a reward: a vector that falls out of memory is read again from
//! `embeddings`, or embedded again (the encoders are deterministic).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Default bound of the vector cache, MiB (about 170,000 MiniLM or 125,000 CLIP vectors).
pub const DEFAULT_CACHE_MIB: f64 = 256.0;

/// Bytes an entry is counted for beyond its values and its id (map slots, the `Arc`, the
/// recency index).
const ENTRY_OVERHEAD: usize = 96;

/// What one cached vector is counted for, bytes.
pub fn entry_bytes(id: &str, v: &[f32]) -> usize {
    id.len() + 4 * v.len() + ENTRY_OVERHEAD
}

/// Where vectors embedded while scoring go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WriteBack {
    /// Appended to `embeddings` after each batch that embedded something (`palpipe score`
    /// and `enroll`: one run, one commit).
    Immediate,
    /// Kept in memory only (`palpipe serve` without `--write-back`): the store is not
    /// written while serving.
    Off,
    /// Collected and appended in one commit once `every` vectors wait or the oldest has
    /// waited `secs` seconds, and at shutdown (`palpipe serve --write-back`).
    Batched { every: usize, secs: f64 },
}

/// Counters of a vector cache, as `GET /models` reports them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub limit_bytes: usize,
    pub evictions: u64,
    /// Vectors waiting for a batched write-back.
    pub pending_write_back: usize,
    /// Vectors appended to `embeddings` by this process.
    pub written_back: u64,
    /// Vectors this process embedded but did not append, because another writer had stored
    /// them since this process looked them up.
    pub already_stored: u64,
}

/// A least-recently-used vector map whose counted bytes never exceed its limit.
#[derive(Debug)]
pub struct VectorCache {
    limit: usize,
    map: HashMap<String, (Arc<Vec<f32>>, u64)>,
    /// Recency stamp → id; the smallest stamp is the least recently used.
    order: BTreeMap<u64, String>,
    clock: u64,
    bytes: usize,
    evictions: u64,
}

impl VectorCache {
    /// An empty cache holding at most `limit` counted bytes.
    pub fn new(limit: usize) -> VectorCache {
        VectorCache {
            limit,
            map: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
            bytes: 0,
            evictions: 0,
        }
    }

    /// A bound given in MiB (fractions allowed) as bytes.
    pub fn limit_of_mib(mib: f64) -> usize {
        (mib.max(0.0) * 1024.0 * 1024.0).round() as usize
    }

    fn stamp(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The vector of `id`, marking it as the most recently used.
    pub fn get(&mut self, id: &str) -> Option<Arc<Vec<f32>>> {
        let now = self.stamp();
        let (v, at) = self.map.get_mut(id)?;
        let old = std::mem::replace(at, now);
        let v = v.clone();
        if let Some(key) = self.order.remove(&old) {
            self.order.insert(now, key);
        }
        Some(v)
    }

    /// Adds (or refreshes) `id`, then drops the least recently used entries until the
    /// counted bytes are within the limit. An entry larger than the whole limit is not kept.
    pub fn insert(&mut self, id: &str, v: Arc<Vec<f32>>) {
        if self.get(id).is_some() {
            return;
        }
        let cost = entry_bytes(id, &v);
        if cost > self.limit {
            return;
        }
        let now = self.stamp();
        self.map.insert(id.to_string(), (v, now));
        self.order.insert(now, id.to_string());
        self.bytes += cost;
        while self.bytes > self.limit {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((v, _)) = self.map.remove(&oldest) {
                self.bytes -= entry_bytes(&oldest, &v);
                self.evictions += 1;
            }
        }
    }

    /// Entries, counted bytes, the limit and evictions so far.
    pub fn stats(&self) -> (usize, usize, usize, u64) {
        (self.map.len(), self.bytes, self.limit, self.evictions)
    }
}

/// Vectors waiting for a batched write-back, findable while they wait.
#[derive(Debug, Default)]
pub struct Pending {
    rows: Vec<(String, Arc<Vec<f32>>)>,
    index: HashMap<String, Arc<Vec<f32>>>,
    since: Option<Instant>,
    /// Vectors written back so far.
    pub written: u64,
    /// Vectors a write-back left out so far, another writer having stored them first.
    pub already_stored: u64,
}

impl Pending {
    /// The waiting vector of `id`, if any.
    pub fn get(&self, id: &str) -> Option<Arc<Vec<f32>>> {
        self.index.get(id).cloned()
    }

    /// Adds vectors not already waiting.
    pub fn add(&mut self, new: &[(String, Arc<Vec<f32>>)]) {
        for (id, v) in new {
            if self.index.contains_key(id) {
                continue;
            }
            self.index.insert(id.clone(), v.clone());
            self.rows.push((id.clone(), v.clone()));
        }
        if !self.rows.is_empty() && self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Whether a write is due under `policy` (always false but for [`WriteBack::Batched`]).
    pub fn due(&self, policy: WriteBack) -> bool {
        match policy {
            WriteBack::Batched { every, secs } => {
                !self.rows.is_empty()
                    && (self.rows.len() >= every.max(1)
                        || self
                            .since
                            .is_some_and(|t| t.elapsed() >= Duration::from_secs_f64(secs.max(0.0))))
            }
            _ => false,
        }
    }

    /// Takes every waiting vector, oldest first.
    pub fn take(&mut self) -> Vec<(String, Arc<Vec<f32>>)> {
        self.index.clear();
        self.since = None;
        std::mem::take(&mut self.rows)
    }
}
