//! The embedded store, one redb file: the default, for a server that keeps its state to
//! itself. redb commits are ACID and fsync'd before `commit` returns, so once the server
//! acknowledges a change it survives `kill -9` and power loss, and a crash mid-write leaves the
//! previous committed state. Its API is synchronous; [`super::Store`] runs it off the async
//! threads.

use super::{StoreError, decode, encode};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;

/// Application name → its spec (JSON).
const APPLICATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("applications");
/// `app \0 user` → selection state (JSON); the user is empty for the application-wide state.
const STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("selection_state");
/// `(app, sequence)` → user: the per-user states of each application in the order they were
/// last updated, oldest first, so the oldest can give way at the bound.
const STATE_ORDER: TableDefinition<(&str, u64), &str> =
    TableDefinition::new("selection_state_order");
/// `app \0 user` → that user's key in [`STATE_ORDER`].
const STATE_SEQUENCE: TableDefinition<&str, u64> = TableDefinition::new("selection_state_sequence");
/// Application → how many per-user states it has.
const USER_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("selection_user_counts");
/// `model \0 version` → how it was loaded (the lifecycle's record).
const MODELS: TableDefinition<&str, &[u8]> = TableDefinition::new("loaded_models");
/// SHA-256 (hex) → bytes: components and init configs of loaded models, stored once each.
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
/// Model name → its pinned default version.
const DEFAULT_VERSIONS: TableDefinition<&str, &str> = TableDefinition::new("default_versions");

fn db_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Database(error.into())
}

/// The embedded store; cheap to clone.
#[derive(Clone)]
pub(super) struct LocalStore {
    db: Arc<Database>,
}

/// A key of two parts; names never contain NUL, so the split is unambiguous.
fn pair_key(app: &str, user: &str) -> String {
    format!("{app}\0{user}")
}

/// Every key whose first part is `first`: between "first\0" and "first\x01".
fn first_part_range(first: &str) -> (String, String) {
    (format!("{first}\0"), format!("{first}\u{1}"))
}

impl LocalStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<LocalStore, StoreError> {
        // redb would take an empty file for a new store, and everything that was in it (a file
        // truncated by a faulty disk or a careless copy) would be gone without a word.
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            return Err(StoreError::Empty(path.display().to_string()));
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::InUse(path.display().to_string())
            }
            other => db_error(other),
        })?;
        let store = LocalStore { db: Arc::new(db) };
        store.create_tables()?;
        Ok(store)
    }

    /// A store that lives in memory only (tests, `serve --no-state`).
    pub fn in_memory() -> LocalStore {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database opens");
        let store = LocalStore { db: Arc::new(db) };
        store.create_tables().expect("tables in memory");
        store
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        txn.open_table(APPLICATIONS).map_err(db_error)?;
        txn.open_table(STATES).map_err(db_error)?;
        txn.open_table(STATE_ORDER).map_err(db_error)?;
        txn.open_table(STATE_SEQUENCE).map_err(db_error)?;
        txn.open_table(USER_COUNTS).map_err(db_error)?;
        txn.open_table(MODELS).map_err(db_error)?;
        txn.open_table(DEFAULT_VERSIONS).map_err(db_error)?;
        txn.open_table(BLOBS).map_err(db_error)?;
        txn.commit().map_err(db_error)
    }

    /// Every registered application, by name.
    pub fn applications<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(APPLICATIONS).map_err(db_error)?;
        let mut specs = Vec::new();
        for entry in table.iter().map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            specs.push(decode(key.value(), value.value())?);
        }
        Ok(specs)
    }

    /// The application `name`, if registered.
    pub fn application<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(APPLICATIONS).map_err(db_error)?;
        match table.get(name).map_err(db_error)? {
            Some(value) => Ok(Some(decode(name, value.value())?)),
            None => Ok(None),
        }
    }

    /// Stores (or replaces) the application `name`; durable when this returns.
    pub fn put_application(&self, name: &str, spec: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        txn.open_table(APPLICATIONS)
            .map_err(db_error)?
            .insert(name, spec)
            .map_err(db_error)?;
        txn.commit().map_err(db_error)
    }

    /// Removes an application and all its selection state, in one transaction.
    pub fn delete_application(&self, name: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        txn.open_table(APPLICATIONS)
            .map_err(db_error)?
            .remove(name)
            .map_err(db_error)?;
        Self::remove_states(&txn, name, None)?;
        txn.commit().map_err(db_error)
    }

    /// The selection state of `(app, user)`, if any was stored.
    pub fn state<T: DeserializeOwned>(
        &self,
        app: &str,
        user: &str,
    ) -> Result<Option<T>, StoreError> {
        let key = pair_key(app, user);
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(STATES).map_err(db_error)?;
        match table.get(key.as_str()).map_err(db_error)? {
            Some(value) => Ok(Some(decode(&key, value.value())?)),
            None => Ok(None),
        }
    }

    /// Replaces the selection state of `(app, user)` by `update` of the stored one, in one
    /// transaction; durable when this returns. An application keeps at most `max_users`
    /// per-user states: storing one more drops the states updated least recently, in the same
    /// transaction, and returns whose they were. The application-wide state (user `""`) is
    /// not counted.
    pub fn update_state<T: Serialize + DeserializeOwned>(
        &self,
        app: &str,
        user: &str,
        max_users: usize,
        update: impl FnOnce(Option<T>) -> T,
    ) -> Result<(T, Vec<String>), StoreError> {
        let key = pair_key(app, user);
        let txn = self.db.begin_write().map_err(db_error)?;
        let next = {
            let mut states = txn.open_table(STATES).map_err(db_error)?;
            let stored = match states.get(key.as_str()).map_err(db_error)? {
                Some(value) => Some(decode(&key, value.value())?),
                None => None,
            };
            let next = update(stored);
            states
                .insert(key.as_str(), encode(&next).as_slice())
                .map_err(db_error)?;
            next
        };
        let dropped = if user.is_empty() {
            Vec::new()
        } else {
            Self::mark_updated(&txn, app, user, max_users.max(1))?
        };
        txn.commit().map_err(db_error)?;
        Ok((next, dropped))
    }

    /// Moves `user` to the newest end of `app`'s order, and drops the oldest states beyond
    /// `max_users`; returns the users dropped.
    fn mark_updated(
        txn: &redb::WriteTransaction,
        app: &str,
        user: &str,
        max_users: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut order = txn.open_table(STATE_ORDER).map_err(db_error)?;
        let mut sequences = txn.open_table(STATE_SEQUENCE).map_err(db_error)?;
        let mut counts = txn.open_table(USER_COUNTS).map_err(db_error)?;
        let key = pair_key(app, user);
        let earlier = sequences
            .get(key.as_str())
            .map_err(db_error)?
            .map(|s| s.value());
        let mut count = counts.get(app).map_err(db_error)?.map_or(0, |c| c.value());
        match earlier {
            Some(sequence) => {
                order.remove((app, sequence)).map_err(db_error)?;
            }
            None => count += 1,
        }
        let of_app = (app, 0)..=(app, u64::MAX);
        let newest = order.range(of_app.clone()).map_err(db_error)?.next_back();
        let sequence = match newest.transpose().map_err(db_error)? {
            Some((key, _)) => key.value().1 + 1,
            None => 0,
        };
        order.insert((app, sequence), user).map_err(db_error)?;
        sequences.insert(key.as_str(), sequence).map_err(db_error)?;
        let mut dropped = Vec::new();
        let mut states = txn.open_table(STATES).map_err(db_error)?;
        while count > max_users as u64 {
            let oldest = order.range(of_app.clone()).map_err(db_error)?.next();
            let Some((sequence, oldest_user)) = oldest
                .transpose()
                .map_err(db_error)?
                .map(|(key, user)| (key.value().1, user.value().to_string()))
            else {
                break;
            };
            order.remove((app, sequence)).map_err(db_error)?;
            let pair = pair_key(app, &oldest_user);
            sequences.remove(pair.as_str()).map_err(db_error)?;
            states.remove(pair.as_str()).map_err(db_error)?;
            dropped.push(oldest_user);
            count -= 1;
        }
        counts.insert(app, count).map_err(db_error)?;
        Ok(dropped)
    }

    /// Forgets the state of one user of `app`, or (with `None`) of all its users and the
    /// application-wide state.
    pub fn delete_states(&self, app: &str, user: Option<&str>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        Self::remove_states(&txn, app, user)?;
        txn.commit().map_err(db_error)
    }

    fn remove_states(
        txn: &redb::WriteTransaction,
        app: &str,
        user: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut table = txn.open_table(STATES).map_err(db_error)?;
        let mut order = txn.open_table(STATE_ORDER).map_err(db_error)?;
        let mut sequences = txn.open_table(STATE_SEQUENCE).map_err(db_error)?;
        let mut counts = txn.open_table(USER_COUNTS).map_err(db_error)?;
        match user {
            Some(user) => {
                let key = pair_key(app, user);
                table.remove(key.as_str()).map_err(db_error)?;
                let sequence = sequences.remove(key.as_str()).map_err(db_error)?;
                if let Some(sequence) = sequence.map(|s| s.value()) {
                    order.remove((app, sequence)).map_err(db_error)?;
                    let count = counts.get(app).map_err(db_error)?.map_or(0, |c| c.value());
                    counts
                        .insert(app, count.saturating_sub(1))
                        .map_err(db_error)?;
                }
            }
            None => {
                let (from, to) = first_part_range(app);
                let range = from.as_str()..to.as_str();
                table
                    .retain_in(range.clone(), |_, _| false)
                    .map_err(db_error)?;
                sequences.retain_in(range, |_, _| false).map_err(db_error)?;
                order
                    .retain_in((app, 0)..=(app, u64::MAX), |_, _| false)
                    .map_err(db_error)?;
                counts.remove(app).map_err(db_error)?;
            }
        }
        Ok(())
    }
}

impl LocalStore {
    /// Records how `model` `version` was loaded (replacing an earlier record).
    pub fn put_model(&self, model: &str, version: &str, request: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        txn.open_table(MODELS)
            .map_err(db_error)?
            .insert(pair_key(model, version).as_str(), request)
            .map_err(db_error)?;
        txn.commit().map_err(db_error)
    }

    /// The record of `model` `version`, if any.
    pub fn model(&self, model: &str, version: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(MODELS).map_err(db_error)?;
        let value = table
            .get(pair_key(model, version).as_str())
            .map_err(db_error)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Every load record as (model, version, record), by model, then version.
    pub fn models(&self) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(MODELS).map_err(db_error)?;
        let mut requests = Vec::new();
        for entry in table.iter().map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            let (model, version) = key.value().split_once('\0').unwrap_or((key.value(), ""));
            requests.push((
                model.to_string(),
                version.to_string(),
                value.value().to_vec(),
            ));
        }
        Ok(requests)
    }

    /// Forgets one version of `model`, or all of them and its default pin (`None`).
    pub fn delete_models(&self, model: &str, version: Option<&str>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut table = txn.open_table(MODELS).map_err(db_error)?;
            match version {
                Some(version) => {
                    table
                        .remove(pair_key(model, version).as_str())
                        .map_err(db_error)?;
                }
                None => {
                    let (from, to) = first_part_range(model);
                    table
                        .retain_in(from.as_str()..to.as_str(), |_, _| false)
                        .map_err(db_error)?;
                    txn.open_table(DEFAULT_VERSIONS)
                        .map_err(db_error)?
                        .remove(model)
                        .map_err(db_error)?;
                }
            }
        }
        txn.commit().map_err(db_error)
    }

    /// Pins (or, with `None`, unpins) the default version of `model`.
    pub fn put_default_version(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut table = txn.open_table(DEFAULT_VERSIONS).map_err(db_error)?;
            match version {
                Some(version) => table.insert(model, version).map(drop),
                None => table.remove(model).map(drop),
            }
            .map_err(db_error)?;
        }
        txn.commit().map_err(db_error)
    }

    /// Stores `bytes` under their SHA-256 `key` (a no-op when present).
    pub fn put_blob(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut table = txn.open_table(BLOBS).map_err(db_error)?;
            if table.get(key).map_err(db_error)?.is_none() {
                table.insert(key, bytes).map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)
    }

    /// The bytes stored under `key`, if any.
    pub fn blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(BLOBS).map_err(db_error)?;
        let value = table.get(key).map_err(db_error)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Deletes every blob whose key `keep` refuses.
    pub fn retain_blobs(&self, keep: impl Fn(&str) -> bool) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        txn.open_table(BLOBS)
            .map_err(db_error)?
            .retain(|key, _| keep(key))
            .map_err(db_error)?;
        txn.commit().map_err(db_error)
    }

    /// Every pinned default version: (model, version).
    pub fn default_versions(&self) -> Result<Vec<(String, String)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(DEFAULT_VERSIONS).map_err(db_error)?;
        let mut pins = Vec::new();
        for entry in table.iter().map_err(db_error)? {
            let (model, version) = entry.map_err(db_error)?;
            pins.push((model.value().to_string(), version.value().to_string()));
        }
        Ok(pins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &LocalStore, app: &str, user: &str, state: &serde_json::Value) {
        store
            .update_state(app, user, 10, |_: Option<serde_json::Value>| state.clone())
            .unwrap();
    }

    #[test]
    fn states_round_trip_and_are_removed_per_user_or_per_app() {
        let dir = std::env::temp_dir().join(format!("sluice-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.redb");
        let _ = std::fs::remove_file(&path);
        let state = serde_json::json!({ "weights": [1.0, 2.0], "feedback_count": 3 });
        {
            let store = LocalStore::open(&path).unwrap();
            put(&store, "app", "", &state);
            put(&store, "app", "alice", &state);
            put(&store, "apple", "", &state);
            store.delete_states("app", Some("alice")).unwrap();
            assert_eq!(
                store.state::<serde_json::Value>("app", "alice").unwrap(),
                None
            );
        }
        let store = LocalStore::open(&path).unwrap();
        assert_eq!(store.state("app", "").unwrap(), Some(state.clone()));
        store.delete_states("app", None).unwrap();
        assert_eq!(store.state::<serde_json::Value>("app", "").unwrap(), None);
        assert!(
            store
                .state::<serde_json::Value>("apple", "")
                .unwrap()
                .is_some(),
            "a prefix of another app's name is another app"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_file_is_refused_not_taken_for_a_new_store() {
        let dir = std::env::temp_dir().join(format!("sluice-store-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.redb");
        std::fs::write(&path, b"").unwrap();
        match LocalStore::open(&path) {
            Err(StoreError::Empty(shown)) => assert_eq!(shown, path.display().to_string()),
            Err(other) => panic!("unexpected {other}"),
            Ok(_) => panic!("an empty file opened as a store"),
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "the file is left as it was"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(
            LocalStore::open(&path).is_ok(),
            "a missing file is a new store"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loaded_models_and_pins_are_recorded_and_forgotten() {
        let store = LocalStore::in_memory();
        store.put_model("m", "1", b"one").unwrap();
        store.put_model("m", "2", b"two").unwrap();
        store.put_model("mm", "1", b"other").unwrap();
        store.put_default_version("m", Some("1")).unwrap();
        assert_eq!(store.models().unwrap().len(), 3);
        store.delete_models("m", Some("2")).unwrap();
        assert_eq!(store.model("m", "2").unwrap(), None);
        assert_eq!(
            store.default_versions().unwrap(),
            vec![("m".into(), "1".into())]
        );
        store.delete_models("m", None).unwrap();
        let left = store.models().unwrap();
        assert_eq!(left, vec![("mm".into(), "1".into(), b"other".to_vec())]);
        assert!(store.default_versions().unwrap().is_empty());
    }
}
