//! The live selection states, one per (application, user): loaded from the store on first use,
//! shared by the calls that use them, and bounded in memory. Beyond the bound the least
//! recently used states that no call holds are dropped; every state is in the store, and comes
//! back from it when needed. An update is made in the store first (atomically there, against
//! what other servers sharing it may have stored meanwhile), then made live.

use super::policy::SelectionState;
use crate::store::{Store, StoreError};
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
    max_stored_users: usize,
}

impl StateCache {
    /// A cache of at most `capacity` idle states, backed by `store`, which keeps at most
    /// `max_stored_users` per-user states of each application.
    pub(super) fn new(store: Store, capacity: usize, max_stored_users: usize) -> StateCache {
        StateCache {
            store,
            states: Mutex::new(lru::LruCache::unbounded()),
            capacity: capacity.max(1),
            max_stored_users,
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
        let stored: Option<SelectionState> = self.store.state(app, user).await?;
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

    /// Replaces the state of `(app, user)` by `update` of the stored one, durably and
    /// atomically, and returns it (the caller makes it live). Past the bound of per-user
    /// states, those updated least recently are dropped, from the store and from memory:
    /// those users start again from the application-wide state.
    pub(super) async fn update(
        &self,
        app: &str,
        user: &str,
        update: impl FnMut(Option<SelectionState>) -> SelectionState + Send + 'static,
    ) -> Result<SelectionState, StoreError> {
        let max_users = self.max_stored_users;
        let (next, dropped) = self
            .store
            .update_state(app, user, max_users, update)
            .await?;
        for user in &dropped {
            self.forget(app, Some(user));
        }
        if !dropped.is_empty() {
            tracing::info!(
                app,
                users = dropped.len(),
                limit = max_users,
                "per-user states dropped at the bound, least recently updated first"
            );
        }
        Ok(next)
    }

    /// Forgets what was learned for one user of `app`, or for all of them (`None`): in the
    /// store, then in memory.
    pub(super) async fn reset(&self, app: &str, user: Option<&str>) -> Result<(), StoreError> {
        self.store.delete_states(app, user).await?;
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

    /// Drops every state from memory (they may all be stale).
    pub(super) fn forget_all(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_bound_the_least_recently_updated_users_are_dropped() {
        let cache = StateCache::new(Store::in_memory(), 100, 2);
        let learned = |n| SelectionState {
            feedback_count: n,
            ..SelectionState::default()
        };
        let persist = |user: &'static str, state: SelectionState| {
            cache.update("app", user, move |_| state.clone())
        };
        persist("alice", learned(1)).await.unwrap();
        persist("bob", learned(2)).await.unwrap();
        persist("", learned(9)).await.unwrap();
        persist("alice", learned(3)).await.unwrap();
        persist("carol", learned(4)).await.unwrap();
        let stored = async |user: &'static str| {
            cache
                .store
                .state::<SelectionState>("app", user)
                .await
                .unwrap()
        };
        assert_eq!(stored("bob").await, None, "bob was updated least recently");
        assert_eq!(stored("alice").await.unwrap().feedback_count, 3);
        assert_eq!(stored("carol").await.unwrap().feedback_count, 4);
        assert_eq!(
            stored("").await.unwrap().feedback_count,
            9,
            "the app's own state stays"
        );
        // Bob comes back as a new user, and the oldest (alice) gives way.
        let bob = cache.get("app", "bob").await.unwrap();
        assert_eq!(bob.lock().await.feedback_count, 0);
        persist("bob", learned(5)).await.unwrap();
        assert_eq!(stored("alice").await, None);
        // Forgetting a user frees its place.
        cache.reset("app", Some("carol")).await.unwrap();
        persist("dave", learned(6)).await.unwrap();
        assert_eq!(stored("bob").await.unwrap().feedback_count, 5);
    }

    #[tokio::test]
    async fn idle_states_leave_memory_and_come_back_from_the_store() {
        let cache = StateCache::new(Store::in_memory(), 1, 10);
        let alice = cache.get("app", "alice").await.unwrap();
        {
            let mut state = alice.lock().await;
            state.feedback_count = 5;
            let stored = state.clone();
            *state = cache
                .update("app", "alice", move |_| stored.clone())
                .await
                .unwrap();
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
