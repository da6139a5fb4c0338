//! The prediction cache: model outputs keyed by (model, version, digest of the input tensors),
//! bounded by a byte budget with least-recently-used eviction.
//!
//! It sits between model selection and the batching queues (Clipper's design). Besides saving
//! repeated work it does two jobs: identical queries that are in flight at the same time run
//! once and every caller gets that answer (coalescing), and it remembers what each model said
//! for recent inputs, so feedback on an input can be joined with each model's prediction
//! without running the models again. Failures are never cached: the next request retries.

use crate::registry::RegistryError;
use lru::LruCache;
use sha2::{Digest, Sha256};
use sluice_types::Tensor;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The first 16 bytes of a SHA-256 over every input tensor's name, dtype, shape and data.
pub type InputDigest = [u8; 16];

/// What a cached prediction is: the model's output tensors for one request.
pub type Outputs = Arc<Vec<Tensor>>;

/// A model's failure, shared by every caller that waited on the same computation.
pub type SharedError = Arc<RegistryError>;

/// Bookkeeping per entry on top of its tensor bytes (key, map slot, tensor headers).
const ENTRY_OVERHEAD_BYTES: usize = 128;

/// Digests a request's inputs. Names, dtypes and shapes are included, so the same bytes under
/// another shape are another input.
pub fn digest_inputs(inputs: &[Tensor]) -> InputDigest {
    let mut hasher = Sha256::new();
    for tensor in inputs {
        hasher.update((tensor.name.len() as u64).to_le_bytes());
        hasher.update(tensor.name.as_bytes());
        hasher.update([tensor.dtype as u8]);
        hasher.update((tensor.shape.len() as u64).to_le_bytes());
        for dim in &tensor.shape {
            hasher.update(dim.to_le_bytes());
        }
        hasher.update((tensor.data.len() as u64).to_le_bytes());
        hasher.update(&tensor.data);
    }
    let mut digest = [0; 16];
    digest.copy_from_slice(&hasher.finalize()[..16]);
    digest
}

/// Which prediction an entry holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The model's name.
    pub model: String,
    /// The version that computed it.
    pub version: String,
    /// The request's inputs.
    pub input: InputDigest,
}

/// How [`PredictionCache::get_or_compute`] came by its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Found in the cache.
    Hit,
    /// Computed by this caller.
    Miss,
    /// Another caller was computing the same key; this one waited for its answer.
    Coalesced,
}

impl Lookup {
    /// `hit`, `miss` or `coalesced` (the metric's label).
    pub fn label(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Coalesced => "coalesced",
        }
    }
}

/// Counters since the cache was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers found in the cache.
    pub hits: u64,
    /// Answers computed.
    pub misses: u64,
    /// Answers shared with an identical request in flight.
    pub coalesced: u64,
    /// Entries held now.
    pub entries: usize,
    /// Bytes held now (tensor data plus a fixed overhead per entry).
    pub bytes: usize,
}

type InFlight = watch::Receiver<Option<Result<Outputs, SharedError>>>;

struct Inner {
    entries: LruCache<CacheKey, (Outputs, usize)>,
    bytes: usize,
    in_flight: HashMap<CacheKey, InFlight>,
}

/// The cache; share it behind an `Arc`.
pub struct PredictionCache {
    budget_bytes: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
}

/// Removes a leader's in-flight slot when it finishes or is cancelled; a cancelled leader's
/// followers see the channel close and retry.
struct LeaderGuard<'a> {
    cache: &'a PredictionCache,
    key: CacheKey,
    receiver: InFlight,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        if inner
            .in_flight
            .get(&self.key)
            .is_some_and(|r| r.same_channel(&self.receiver))
        {
            inner.in_flight.remove(&self.key);
        }
    }
}

fn entry_bytes(outputs: &[Tensor]) -> usize {
    ENTRY_OVERHEAD_BYTES
        + outputs
            .iter()
            .map(|t| t.data.len() + t.name.len() + 4 * t.shape.len())
            .sum::<usize>()
}

impl PredictionCache {
    /// A cache holding at most `budget_bytes` of predictions (0 disables storing, but
    /// coalescing of in-flight requests still works).
    pub fn new(budget_bytes: usize) -> Self {
        PredictionCache {
            budget_bytes,
            inner: Mutex::new(Inner {
                entries: LruCache::unbounded(),
                bytes: 0,
                in_flight: HashMap::new(),
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The lock guards plain data and no code under it panics: recover from poisoning.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached prediction for `key`, if any (marks it recently used).
    pub fn get(&self, key: &CacheKey) -> Option<Outputs> {
        self.lock()
            .entries
            .get(key)
            .map(|(outputs, _)| outputs.clone())
    }

    /// Stores a prediction, evicting the least recently used ones beyond the budget. A
    /// prediction larger than the whole budget is not stored.
    pub fn insert(&self, key: CacheKey, outputs: Outputs) {
        let size = entry_bytes(&outputs);
        if size > self.budget_bytes {
            return;
        }
        let mut inner = self.lock();
        if let Some((_, old)) = inner.entries.put(key, (outputs, size)) {
            inner.bytes -= old;
        }
        inner.bytes += size;
        while inner.bytes > self.budget_bytes {
            match inner.entries.pop_lru() {
                Some((_, (_, evicted))) => inner.bytes -= evicted,
                None => break,
            }
        }
    }

    /// The prediction for `key`: from the cache, from an identical request already running, or
    /// by running `compute` (and caching its result). With `bypass`, the cache and in-flight
    /// requests are not consulted, but the fresh result is still stored.
    pub async fn get_or_compute<F, Fut>(
        &self,
        key: CacheKey,
        bypass: bool,
        compute: F,
    ) -> (Result<Outputs, SharedError>, Lookup)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<Tensor>, RegistryError>>,
    {
        if bypass {
            self.misses.fetch_add(1, Ordering::Relaxed);
            let result = compute().await.map(Arc::new).map_err(Arc::new);
            if let Ok(outputs) = &result {
                self.insert(key, outputs.clone());
            }
            return (result, Lookup::Miss);
        }
        loop {
            let step = {
                let mut inner = self.lock();
                if let Some((outputs, _)) = inner.entries.get(&key) {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return (Ok(outputs.clone()), Lookup::Hit);
                }
                match inner.in_flight.get(&key) {
                    Some(receiver) => Err(receiver.clone()),
                    None => {
                        let (sender, receiver) = watch::channel(None);
                        inner.in_flight.insert(key.clone(), receiver.clone());
                        Ok((sender, receiver))
                    }
                }
            };
            match step {
                Ok((sender, receiver)) => return self.lead(key, sender, receiver, compute).await,
                Err(mut receiver) => {
                    // A closed channel means the leader was cancelled: go round and retry.
                    if let Ok(answer) = receiver.wait_for(Option::is_some).await {
                        let answer = answer.clone().expect("waited for Some");
                        self.coalesced.fetch_add(1, Ordering::Relaxed);
                        return (answer, Lookup::Coalesced);
                    }
                }
            }
        }
    }

    async fn lead<F, Fut>(
        &self,
        key: CacheKey,
        sender: watch::Sender<Option<Result<Outputs, SharedError>>>,
        receiver: InFlight,
        compute: F,
    ) -> (Result<Outputs, SharedError>, Lookup)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<Tensor>, RegistryError>>,
    {
        let guard = LeaderGuard {
            cache: self,
            key,
            receiver,
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        let result = compute().await.map(Arc::new).map_err(Arc::new);
        if let Ok(outputs) = &result {
            self.insert(guard.key.clone(), outputs.clone());
        }
        // Followers may all have gone; a send with no receiver left is fine.
        let _ = sender.send(Some(result.clone()));
        drop(guard);
        (result, Lookup::Miss)
    }

    /// The counters and the current size.
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            coalesced: self.coalesced.load(Ordering::Relaxed),
            entries: inner.entries.len(),
            bytes: inner.bytes,
        }
    }
}

#[cfg(test)]
mod tests;
