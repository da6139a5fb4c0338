//! Recent queries: for each (application, user, input digest) the models that answered it, so
//! that feedback on that input teaches the policy about the models it actually chose.

use crate::cache::InputDigest;
use std::num::NonZeroUsize;
use std::sync::Mutex;

type QueryKey = (String, String, InputDigest);

/// The last queries, least recently used forgotten first.
pub(super) struct RecentQueries {
    queries: Mutex<lru::LruCache<QueryKey, Vec<String>>>,
}

impl RecentQueries {
    /// Remembers up to `capacity` queries.
    pub(super) fn new(capacity: NonZeroUsize) -> RecentQueries {
        RecentQueries {
            queries: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<QueryKey, Vec<String>>> {
        self.queries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `chosen` (links) were asked for this query.
    pub(super) fn remember(&self, app: &str, user: &str, input: InputDigest, chosen: Vec<String>) {
        self.lock()
            .put((app.to_string(), user.to_string(), input), chosen);
    }

    /// The links asked for this query, if it is still remembered.
    pub(super) fn chosen(&self, app: &str, user: &str, input: InputDigest) -> Option<Vec<String>> {
        self.lock()
            .get(&(app.to_string(), user.to_string(), input))
            .cloned()
    }
}
