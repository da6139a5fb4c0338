//! The live selection states, one per (application, user): loaded from the store on first use,
//! shared by the calls that use them, and bounded in memory. Beyond the bound the least
//! recently used states that no call holds are dropped; every state is in the store, and comes
//! back from it when needed.

use super::policy::SelectionState;
use crate::store::{Store, StoreError, blocking};
use std::sync::{Arc, Mutex};

/// `(application, user)`; the user is empty for the application-wide state.
type StateKey = (String, String);

/// One live state; a call holds its lock while it reads or updates it.
pub(super) type SharedState = Arc<tokio::sync::Mutex<SelectionState>>;

/// The states in memory.
pub(super) struct StateCache {
    store: Store,
    states: Mutex<lru::LruCache<StateKey, SharedState>>,
    capacity: usize,
}

impl StateCache {
    /// A cache of at most `capacity` idle states, backed by `store`.
    pub(super) fn new(store: Store, capacity: usize) -> StateCache {
        StateCache {
            store,
            states: Mutex::new(lru::LruCache::unbounded()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<StateKey, SharedState>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live state of `(app, user)`, loaded from the store on first use.
    pub(super) async fn get(&self, app: &str, user: &str) -> Result<SharedState, StoreError> {
        let key = (app.to_string(), user.to_string());
        if let Some(state) = self.lock().get(&key) {
            return Ok(state.clone());
        }
        let store = self.store.clone();
        let (a, u) = key.clone();
        let stored: Option<SelectionState> = blocking(move || store.state(&a, &u)).await?;
        let mut states = self.lock();
        // Another caller may have loaded it meanwhile: keep theirs.
        let state = states
            .get_or_insert(key, || {
                Arc::new(tokio::sync::Mutex::new(stored.unwrap_or_default()))
            })
            .clone();
        // Over the bound: drop the least recently used states that no call holds. One in use
        // stays, so two copies of a state are never live at once.
        let excess = states.len().saturating_sub(self.capacity);
        let idle: Vec<StateKey> = states
            .iter()
            .rev()
            .filter(|(_, s)| Arc::strong_count(s) == 1)
            .take(excess)
            .map(|(key, _)| key.clone())
            .collect();
        for key in idle {
            states.pop(&key);
        }
        Ok(state)
    }

    /// Stores the state of `(app, user)` durably.
    pub(super) async fn persist(
        &self,
        app: &str,
        user: &str,
        state: SelectionState,
    ) -> Result<(), StoreError> {
        let store = self.store.clone();
        let (a, u) = (app.to_string(), user.to_string());
        blocking(move || store.put_state(&a, &u, &state)).await
    }

    /// Forgets what was learned for one user of `app`, or for all of them (`None`): in the
    /// store, then in memory.
    pub(super) async fn reset(&self, app: &str, user: Option<&str>) -> Result<(), StoreError> {
        let store = self.store.clone();
        let (name, who) = (app.to_string(), user.map(str::to_string));
        blocking(move || store.delete_states(&name, who.as_deref())).await?;
        self.forget(app, user);
        Ok(())
    }

    /// Drops the states of `app` (or of one of its users) from memory.
    pub(super) fn forget(&self, app: &str, user: Option<&str>) {
        let mut states = self.lock();
        let doomed: Vec<StateKey> = states
            .iter()
            .map(|(key, _)| key)
            .filter(|(a, u)| a == app && user.is_none_or(|user| user == u))
            .cloned()
            .collect();
        for key in doomed {
            states.pop(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_states_leave_memory_and_come_back_from_the_store() {
        let cache = StateCache::new(Store::in_memory(), 1);
        let alice = cache.get("app", "alice").await.unwrap();
        {
            let mut state = alice.lock().await;
            state.feedback_count = 5;
            cache.persist("app", "alice", state.clone()).await.unwrap();
        }
        // Alice's state is in use: bob's arrival must not drop it.
        let bob = cache.get("app", "bob").await.unwrap();
        assert!(Arc::ptr_eq(
            &alice,
            &cache.get("app", "alice").await.unwrap()
        ));
        drop((alice, bob));
        // Now idle, alice's state gives way to carol's, and comes back from the store.
        cache.get("app", "carol").await.unwrap();
        assert!(cache.lock().len() <= 2, "bounded once states are idle");
        let again = cache.get("app", "alice").await.unwrap();
        assert_eq!(again.lock().await.feedback_count, 5);
    }
}
