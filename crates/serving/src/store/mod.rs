//! The durable state of a server: applications, selection state, and the models loaded
//! through the API (with their default-version pins), so a restart, even after `kill -9`,
//! comes back as it was.
//!
//! Two backends behind one API. The default is [`local`], an embedded redb file that only this
//! process opens. With `serve --state redis://…` it is [`shared`]: Redis, so that several
//! servers (replicas behind one load balancer) serve the same applications with the same
//! learned policy. Both make a change durable before the call returns, and both update one
//! (application, user) state atomically: the local store in one transaction, Redis by
//! compare-and-set, so two replicas taking feedback for one user at once lose neither update.
//! What the shared store changes on behalf of another replica is announced as a [`Change`],
//! so each replica drops what it holds in memory that is no longer true.
//!
//! The store knows the layout of its records, not what they mean: callers own their schemas
//! (selection its specs and states, the lifecycle its load records), as JSON, so fields can be
//! added without a migration.

mod local;
mod shared;

use local::LocalStore;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared::SharedStore;
use sluice_types::{ErrorKind, HasKind};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

/// Why the store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Another process has the file open.
    #[error(
        "the state store {0} is in use by another sluice server; give each server its own \
         --state-dir (or share state through Redis with --state redis://…)"
    )]
    InUse(String),
    /// The file exists but is empty: not a store, and not to be taken for a new one.
    #[error(
        "the state store {0} is an empty file, not a store: sluice will not start afresh over \
         it. Restore it from a backup, or remove it to start with no applications and no \
         learned state"
    )]
    Empty(String),
    /// redb failed (I/O, corruption it detected).
    #[error("state store: {0}")]
    Database(#[from] redb::Error),
    /// The thread running the operation failed (it panicked, or the runtime is shutting
    /// down); whether the change was made is unknown.
    #[error("state store: the operation's thread failed: {0}")]
    Task(String),
    /// A record does not parse.
    #[error("state store: record `{key}` is unreadable: {error}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The parse error.
        error: serde_json::Error,
    },
    /// Redis did not answer, or refused; `unreachable` when it could not be reached (the
    /// change may or may not have been made, and retrying is safe).
    #[error("shared state (Redis at {url}): {error}")]
    Redis {
        /// The server, without credentials.
        url: String,
        /// What went wrong.
        error: redis::RedisError,
        /// Whether Redis could not be reached (rather than refusing the command).
        unreachable: bool,
    },
    /// Other replicas kept changing the same state while this one tried to.
    #[error(
        "shared state: the selection state of `{0}` changed under {1} attempts in a row; retry"
    )]
    Contended(String, usize),
}

impl HasKind for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::InUse(_) | StoreError::Contended(..) => ErrorKind::Unavailable,
            StoreError::Redis { unreachable, .. } if *unreachable => ErrorKind::Unavailable,
            StoreError::Empty(_) => ErrorKind::FailedPrecondition,
            StoreError::Database(_)
            | StoreError::Corrupt { .. }
            | StoreError::Task(_)
            | StoreError::Redis { .. } => ErrorKind::Internal,
        }
    }
}

/// A change made by another server sharing the store; what a server holds in memory of it is
/// stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The application was registered, changed or deleted.
    Application(String),
    /// The selection state of one user of the application (`Some`), or of all its users and
    /// the application-wide state (`None`), changed.
    States {
        /// The application.
        app: String,
        /// The user, or every user.
        user: Option<String>,
    },
    /// A model version was recorded as loaded (or its record changed: its replicas), or was
    /// unloaded; every version of the model with `None` (unloaded).
    Model {
        /// The model.
        name: String,
        /// The version, or every version.
        version: Option<String>,
    },
    /// The default version of the model was pinned or unpinned.
    DefaultVersion(String),
    /// Changes may have been missed (this server was cut off from the store, or fell behind):
    /// everything held in memory is to be read again.
    Resync,
}

/// What holds in memory a part of what a store keeps, and drops or reloads it when another
/// server changes it.
pub trait Follower: Send + Sync + 'static {
    /// Makes what `change` touched true again in memory; changes about other things are
    /// ignored.
    fn apply(&self, change: Change) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// How many changes a slow follower may fall behind before it is told to resync.
const CHANGES_BUFFERED: usize = 1024;

/// The store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    changes: broadcast::Sender<Change>,
}

#[derive(Clone)]
enum Backend {
    Local(LocalStore),
    Shared(SharedStore),
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

/// Runs an operation of the embedded store off the async threads (a commit waits for fsync).
async fn blocking<T: Send + 'static>(
    store: &LocalStore,
    op: impl FnOnce(&LocalStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || op(&store))
        .await
        .unwrap_or_else(|e| Err(StoreError::Task(e.to_string())))
}

impl Store {
    fn with(backend: Backend) -> Store {
        Store {
            backend,
            changes: broadcast::channel(CHANGES_BUFFERED).0,
        }
    }

    /// Opens (or creates) the embedded store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store::with(Backend::Local(LocalStore::open(path)?)))
    }

    /// A store that lives in memory only (tests, `serve --no-state`).
    pub fn in_memory() -> Store {
        Store::with(Backend::Local(LocalStore::in_memory()))
    }

    /// Connects to the Redis server at `url` (`redis://[:PASSWORD@]HOST:PORT/DB`, or
    /// `redis+unix:///PATH`), shared with other servers; fails if it cannot be reached now.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let changes = broadcast::channel(CHANGES_BUFFERED).0;
        let shared = SharedStore::connect(url, changes.downgrade()).await?;
        Ok(Store {
            backend: Backend::Shared(shared),
            changes,
        })
    }

    /// Applies to `follower`, for as long as it lives, the changes other servers make (with
    /// the embedded store there are none, and nothing is started). Falling behind is a
    /// resync; a change that cannot be applied now (the store is unreachable again) is
    /// followed by a resync once the store answers.
    pub fn follow<F: Follower>(&self, follower: &Arc<F>) {
        if !self.is_shared() {
            return;
        }
        let mut changes = self.changes.subscribe();
        let follower = Arc::downgrade(follower);
        tokio::spawn(async move {
            loop {
                let change = match changes.recv().await {
                    Ok(change) => change,
                    Err(RecvError::Lagged(_)) => Change::Resync,
                    Err(RecvError::Closed) => return,
                };
                let Some(follower) = follower.upgrade() else {
                    return;
                };
                if let Err(error) = follower.apply(change.clone()).await {
                    tracing::warn!(%error, ?change, "a change made by another server could not be applied");
                }
            }
        });
    }

    /// Every registered application.
    pub async fn applications<T: DeserializeOwned + Send + 'static>(
        &self,
    ) -> Result<Vec<T>, StoreError> {
        match &self.backend {
            Backend::Local(store) => blocking(store, |s| s.applications()).await,
            Backend::Shared(store) => store.applications().await,
        }
    }

    /// The application `name`, if registered.
    pub async fn application<T: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        let name = name.to_string();
        match &self.backend {
            Backend::Local(store) => blocking(store, move |s| s.application(&name)).await,
            Backend::Shared(store) => store.application(&name).await,
        }
    }

    /// Stores (or replaces) the application `name`; durable when this returns.
    pub async fn put_application(
        &self,
        name: &str,
        spec: &impl Serialize,
    ) -> Result<(), StoreError> {
        let (name, spec) = (name.to_string(), encode(spec));
        match &self.backend {
            Backend::Local(store) => {
                blocking(store, move |s| s.put_application(&name, &spec)).await
            }
            Backend::Shared(store) => store.put_application(&name, &spec).await,
        }
    }

    /// Removes an application and all its selection state, at once.
    pub async fn delete_application(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        match &self.backend {
            Backend::Local(store) => blocking(store, move |s| s.delete_application(&name)).await,
            Backend::Shared(store) => store.delete_states(&name, None, true).await,
        }
    }

    /// The selection state of `(app, user)`, if any was stored.
    pub async fn state<T: DeserializeOwned + Send + 'static>(
        &self,
        app: &str,
        user: &str,
    ) -> Result<Option<T>, StoreError> {
        let (app, user) = (app.to_string(), user.to_string());
        match &self.backend {
            Backend::Local(store) => blocking(store, move |s| s.state(&app, &user)).await,
            Backend::Shared(store) => Ok(store.state(&app, &user).await?.0),
        }
    }

    /// Replaces the selection state of `(app, user)` by `update` of the stored one, atomically
    /// (with a shared store `update` may run more than once, each time on what another server
    /// stored meanwhile); durable when this returns. An application keeps at most
    /// `max_users` per-user states: storing one more drops those updated least recently, at
    /// once, and returns whose they were. The application-wide state (user `""`) is not
    /// counted.
    pub async fn update_state<T>(
        &self,
        app: &str,
        user: &str,
        max_users: usize,
        mut update: impl FnMut(Option<T>) -> T + Send + 'static,
    ) -> Result<(T, Vec<String>), StoreError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let (app, user) = (app.to_string(), user.to_string());
        match &self.backend {
            Backend::Local(store) => {
                blocking(store, move |s| {
                    s.update_state(&app, &user, max_users, &mut update)
                })
                .await
            }
            Backend::Shared(store) => store.update_state(&app, &user, max_users, update).await,
        }
    }

    /// Forgets the state of one user of `app`, or (with `None`) of all its users and the
    /// application-wide state.
    pub async fn delete_states(&self, app: &str, user: Option<&str>) -> Result<(), StoreError> {
        let (app, user) = (app.to_string(), user.map(str::to_string));
        match &self.backend {
            Backend::Local(store) => {
                blocking(store, move |s| s.delete_states(&app, user.as_deref())).await
            }
            Backend::Shared(store) => store.delete_states(&app, user.as_deref(), false).await,
        }
    }

    /// Whether what one server remembers of a query must be shared for feedback that reaches
    /// another ([`share_query`](Self::share_query)).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Shared(_))
    }

    /// Records, for `ttl`, which models answered the query `input` (a digest) of `(app,
    /// user)`, so feedback on it that reaches another server joins against them; returns
    /// whether it was recorded. Best effort: while Redis is unreachable one record at a time
    /// tries it and the others are dropped, so queries cannot pile up tasks waiting on it. A
    /// no-op with the embedded store (the server's memory is the only place feedback is
    /// joined).
    pub async fn share_query(
        &self,
        app: &str,
        user: &str,
        input: &str,
        chosen: &[String],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Local(_) => Ok(false),
            Backend::Shared(store) => {
                store
                    .share_query(app, user, input, &encode(&chosen), ttl)
                    .await
            }
        }
    }

    /// The models that answered the query `input` of `(app, user)`, if another server shared
    /// it and it has not expired.
    pub async fn shared_query(
        &self,
        app: &str,
        user: &str,
        input: &str,
    ) -> Result<Option<Vec<String>>, StoreError> {
        match &self.backend {
            Backend::Local(_) => Ok(None),
            Backend::Shared(store) => store.shared_query(app, user, input).await,
        }
    }

    /// Records how `model` `version` was loaded (replacing an earlier record).
    pub async fn put_model(
        &self,
        model: &str,
        version: &str,
        record: Vec<u8>,
    ) -> Result<(), StoreError> {
        let (model, version) = (model.to_string(), version.to_string());
        match &self.backend {
            Backend::Local(store) => {
                blocking(store, move |s| s.put_model(&model, &version, &record)).await
            }
            Backend::Shared(store) => store.put_model(&model, &version, &record).await,
        }
    }

    /// The record of `model` `version`, if any.
    pub async fn model(&self, model: &str, version: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (model, version) = (model.to_string(), version.to_string());
        match &self.backend {
            Backend::Local(store) => blocking(store, move |s| s.model(&model, &version)).await,
            Backend::Shared(store) => store.model(&model, &version).await,
        }
    }

    /// Every load record as (model, version, record), by model, then version.
    pub async fn models(&self) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        match &self.backend {
            Backend::Local(store) => blocking(store, |s| s.models()).await,
            Backend::Shared(store) => store.models().await,
        }
    }

    /// Forgets one version of `model`, or all of them and its default pin (`None`).
    pub async fn delete_models(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<(), StoreError> {
        let (model, version) = (model.to_string(), version.map(str::to_string));
        match &self.backend {
            Backend::Local(store) => {
                blocking(store, move |s| s.delete_models(&model, version.as_deref())).await
            }
            Backend::Shared(store) => store.delete_models(&model, version.as_deref()).await,
        }
    }

    /// Pins (or, with `None`, unpins) the default version of `model`.
    pub async fn put_default_version(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<(), StoreError> {
        let (model, version) = (model.to_string(), version.map(str::to_string));
        match &self.backend {
            Backend::Local(store) => {
                blocking(store, move |s| {
                    s.put_default_version(&model, version.as_deref())
                })
                .await
            }
            Backend::Shared(store) => store.put_default_version(&model, version.as_deref()).await,
        }
    }

    /// Every pinned default version: (model, version).
    pub async fn default_versions(&self) -> Result<Vec<(String, String)>, StoreError> {
        match &self.backend {
            Backend::Local(store) => blocking(store, |s| s.default_versions()).await,
            Backend::Shared(store) => store.default_versions().await,
        }
    }

    /// Stores `bytes` under their SHA-256 `key` (a no-op when present).
    pub async fn put_blob(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let key = key.to_string();
        match &self.backend {
            Backend::Local(store) => blocking(store, move |s| s.put_blob(&key, &bytes)).await,
            Backend::Shared(store) => store.put_blob(&key, &bytes).await,
        }
    }

    /// The bytes stored under `key`, if any.
    pub async fn blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_string();
        match &self.backend {
            Backend::Local(store) => blocking(store, move |s| s.blob(&key)).await,
            Backend::Shared(store) => store.blob(&key).await,
        }
    }

    /// Deletes every blob whose key `keep` refuses.
    pub async fn retain_blobs(
        &self,
        keep: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local(store) => blocking(store, move |s| s.retain_blobs(keep)).await,
            Backend::Shared(store) => store.retain_blobs(keep).await,
        }
    }
}
