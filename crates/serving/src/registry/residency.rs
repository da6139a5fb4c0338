//! Registered is not resident: under a memory budget (`serve --memory-budget`), the models
//! that may scale to zero (`min_replicas = 0`) and are not being used lose their instances,
//! least recently used first, until what the server holds fits again. A request to such a
//! model starts a replica as after any scale to zero (one start however many requests wait,
//! `DEADLINE_EXCEEDED` for a request whose deadline the start cannot make).
//!
//! When taking instances is not enough, the compiled code of components none of whose
//! versions has a replica goes too, least recently used first; the next request to one reads
//! it back from the precompiled cache (code that is not in the cache, with `--cache-dir` off,
//! stays).
//!
//! What a model holds is estimated, not read from the allocator: each replica as much as its
//! first instance held after `init` (linear memory and host-side tensors), and its compiled
//! code once per distinct component (equal bytes share one copy, see
//! `Runtime::load_component`). The budget is checked every autoscaler tick, so a burst of
//! cold starts may pass it until the next one.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What one model version costs to keep resident, and when it was last asked for.
pub(super) struct Residency {
    /// Memory one replica holds (its first instance's, after `init`).
    pub(super) instance_bytes: u64,
    /// When a request last reached it, as nanoseconds since [`EPOCH`].
    last_used: AtomicU64,
}

/// The origin of `last_used` (an `Instant` cannot live in an atomic).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Residency {
    pub(super) fn new(instance_bytes: u64) -> Residency {
        let residency = Residency {
            instance_bytes,
            last_used: AtomicU64::new(0),
        };
        residency.touch(Instant::now());
        residency
    }

    /// Records a request that arrived `at` (the time the request path reads anyway).
    pub(super) fn touch(&self, at: Instant) {
        let since = at.saturating_duration_since(*EPOCH);
        self.last_used
            .store(since.as_nanos() as u64, Ordering::Relaxed);
    }

    /// When it was last asked for, in nanoseconds since [`EPOCH`] (larger is more recent).
    pub(super) fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }
}

/// A resident model the budget may take instances from, or a component whose code it may
/// drop.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Candidate {
    /// Bytes its replicas (or its code) hold.
    pub(super) bytes: u64,
    /// See [`Residency::last_used`].
    pub(super) last_used: u64,
}

/// Which of `candidates` (by index) to scale to zero so that `resident` bytes fit `budget`:
/// the least recently used first, as few as needed. If even all of them do not make it fit,
/// all of them.
pub(super) fn evictions(candidates: &[Candidate], resident: u64, budget: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| candidates[i].last_used);
    let mut over = resident.saturating_sub(budget);
    order
        .into_iter()
        .take_while(|&i| {
            let evict = over > 0;
            over = over.saturating_sub(candidates[i].bytes);
            evict
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(bytes: u64, last_used: u64) -> Candidate {
        Candidate { bytes, last_used }
    }

    #[test]
    fn nothing_is_evicted_within_the_budget() {
        let candidates = [candidate(10, 1), candidate(10, 2)];
        assert!(evictions(&candidates, 100, 100).is_empty());
        assert!(evictions(&candidates, 50, 100).is_empty());
    }

    #[test]
    fn the_least_recently_used_go_first_and_no_more_than_needed() {
        // Used in the order 2, 0, 3, 1; 25 bytes over the budget.
        let candidates = [
            candidate(10, 20),
            candidate(10, 40),
            candidate(10, 10),
            candidate(10, 30),
        ];
        assert_eq!(evictions(&candidates, 125, 100), [2, 0, 3]);
        assert_eq!(evictions(&candidates, 101, 100), [2]);
        assert_eq!(evictions(&candidates, 110, 100), [2]);
    }

    #[test]
    fn when_not_enough_can_go_everything_that_can_goes() {
        let candidates = [candidate(10, 2), candidate(10, 1)];
        assert_eq!(evictions(&candidates, 500, 100), [1, 0]);
    }
}
