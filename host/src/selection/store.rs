//! The durable store of applications and selection state, in one redb file.
//!
//! redb commits are ACID and fsync'd before `commit` returns, so once the server acknowledges
//! a registration or a feedback event it survives `kill -9` and power loss, and a crash
//! mid-write leaves the previous committed state. Records are JSON, so a store can be read
//! with any redb tool and fields can be added without a migration.

use super::SelectionState;
use super::app::ApplicationSpec;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// Application name → its spec (JSON).
const APPLICATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("applications");
/// `app \0 user` → selection state (JSON); the user is empty for the application-wide state.
const STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("selection_state");

/// Why the store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Another process has the file open.
    #[error(
        "the state store {0} is in use by another sluice server; give each server its own \
         --state-dir"
    )]
    InUse(String),
    /// redb failed (I/O, corruption it detected).
    #[error("state store: {0}")]
    Database(#[from] redb::Error),
    /// A record does not parse.
    #[error("state store: record `{key}` is unreadable: {error}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The parse error.
        error: serde_json::Error,
    },
}

fn db_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Database(error.into())
}

/// The store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

fn state_key(app: &str, user: &str) -> String {
    format!("{app}\0{user}")
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        key: key.replace('\0', "/"),
        error,
    })
}

fn encode(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("specs and states serialize")
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::InUse(path.display().to_string())
            }
            other => db_error(other),
        })?;
        let store = Store { db: Arc::new(db) };
        store.create_tables()?;
        Ok(store)
    }

    /// A store that lives in memory only (tests, `serve --no-state`).
    pub fn in_memory() -> Store {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database opens");
        let store = Store { db: Arc::new(db) };
        store.create_tables().expect("tables in memory");
        store
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        txn.open_table(APPLICATIONS).map_err(db_error)?;
        txn.open_table(STATES).map_err(db_error)?;
        txn.commit().map_err(db_error)
    }

    /// Every registered application.
    pub fn applications(&self) -> Result<Vec<ApplicationSpec>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(APPLICATIONS).map_err(db_error)?;
        let mut specs = Vec::new();
        for entry in table.iter().map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            specs.push(decode(key.value(), value.value())?);
        }
        Ok(specs)
    }

    /// Stores (or replaces) an application's spec; durable when this returns.
    pub fn put_application(&self, spec: &ApplicationSpec) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        txn.open_table(APPLICATIONS)
            .map_err(db_error)?
            .insert(spec.name.as_str(), encode(spec).as_slice())
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
    pub fn state(&self, app: &str, user: &str) -> Result<Option<SelectionState>, StoreError> {
        let key = state_key(app, user);
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(STATES).map_err(db_error)?;
        match table.get(key.as_str()).map_err(db_error)? {
            Some(value) => Ok(Some(decode(&key, value.value())?)),
            None => Ok(None),
        }
    }

    /// Stores the selection state of `(app, user)`; durable when this returns.
    pub fn put_state(
        &self,
        app: &str,
        user: &str,
        state: &SelectionState,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        txn.open_table(STATES)
            .map_err(db_error)?
            .insert(state_key(app, user).as_str(), encode(state).as_slice())
            .map_err(db_error)?;
        txn.commit().map_err(db_error)
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
        match user {
            Some(user) => {
                table
                    .remove(state_key(app, user).as_str())
                    .map_err(db_error)?;
            }
            None => {
                // Every key of this app lies between "app\0" and "app\x01".
                let (from, to) = (format!("{app}\0"), format!("{app}\u{1}"));
                table
                    .retain_in(from.as_str()..to.as_str(), |_, _| false)
                    .map_err(db_error)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_are_removed_per_user_or_per_app() {
        let dir = std::env::temp_dir().join(format!("sluice-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.redb");
        let _ = std::fs::remove_file(&path);
        let mut state = SelectionState::default();
        state.sync(&["a".to_string()]);
        state.feedback_count = 3;
        {
            let store = Store::open(&path).unwrap();
            store.put_state("app", "", &state).unwrap();
            store.put_state("app", "alice", &state).unwrap();
            store.put_state("apple", "", &state).unwrap();
            store.delete_states("app", Some("alice")).unwrap();
            assert_eq!(store.state("app", "alice").unwrap(), None);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.state("app", "").unwrap(), Some(state.clone()));
        store.delete_states("app", None).unwrap();
        assert_eq!(store.state("app", "").unwrap(), None);
        assert!(
            store.state("apple", "").unwrap().is_some(),
            "a prefix of another app's name is another app"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
