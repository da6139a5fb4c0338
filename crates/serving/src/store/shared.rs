//! The shared store: Redis, for servers that are replicas of one another behind a load
//! balancer (`serve --state redis://…`), so any of them serves any application with the same
//! learned policy.
//!
//! Every record is a Redis key under `sluice:` (the layout is in `docs/deploy.md`). A state
//! update is a compare-and-set in a Lua script (the stored version must be the one the update
//! started from, else it is redone on what is stored now), so concurrent feedback for one user
//! on several servers loses nothing; the script also keeps the per-application bound of user
//! states and publishes the change, all at once. Each server subscribes to those changes and
//! turns the ones other servers made into [`Change`]s; when it was cut off from Redis (a
//! command failed to reach it, or the subscription stopped answering its heartbeat) it
//! announces [`Change::Resync`] once Redis answers again, so nothing missed meanwhile stays
//! stale. Durability is Redis's: a write is acknowledged once Redis has it, and survives a
//! Redis restart when Redis fsyncs its append-only file before answering
//! (`appendonly yes`, `appendfsync always`).
//!
//! Scripts compute some key names from their arguments, which a standalone Redis (or one
//! behind Sentinel) allows and Redis Cluster does not.

use super::{Change, StoreError, decode};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::{AsyncCommands, RedisResult, Script};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::broadcast::WeakSender;
use tokio_stream::StreamExt;

/// Application name → spec (JSON).
const APPLICATIONS: &str = "sluice:applications";
/// `model \0 version` → the lifecycle's load record.
const MODELS: &str = "sluice:models";
/// Model name → its pinned default version.
const DEFAULT_VERSIONS: &str = "sluice:default_versions";
/// A counter that orders the updates of per-user states (for the bound).
const SEQUENCE: &str = "sluice:sequence";
/// The channel changes are published on.
const CHANGES: &str = "sluice:changes";

/// How long a command waits for Redis before it fails as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the subscription must answer a ping to count as alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The pause before subscribing again after the subscription was lost.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);
/// Compare-and-set attempts of one state update before it gives up as contended.
const UPDATE_ATTEMPTS: usize = 32;

/// `(app, user)` → `{v: version, s: state JSON}`; the user is empty for the application-wide
/// state. Application names have no `:`, so the user is everything after the second one.
fn state_key(app: &str, user: &str) -> String {
    format!("sluice:state:{app}:{user}")
}

/// The users of `app` that have a state, scored by when it was last updated.
fn users_key(app: &str) -> String {
    format!("sluice:users:{app}")
}

/// Which models answered one query (JSON list of links), expiring.
fn query_key(app: &str, user: &str, input: &str) -> String {
    format!("sluice:query:{app}:{input}:{user}")
}

/// Components and init configs of loaded models, by SHA-256, stored once each.
fn blob_key(sha256: &str) -> String {
    format!("sluice:blob:{sha256}")
}

/// Replaces a state if its version is the one the update read (`false` otherwise), marks the
/// user as updated most recently, drops the states beyond the bound (returning whose they
/// were) and publishes every state that changed.
///
/// KEYS: state, users, sequence. ARGV: version read, new state, user (empty: the
/// application-wide state), bound, state key prefix, channel, message prefix.
static UPDATE_STATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local version = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if version ~= tonumber(ARGV[1]) then return false end
redis.call('HSET', KEYS[1], 'v', version + 1, 's', ARGV[2])
redis.call('PUBLISH', ARGV[6], ARGV[7] .. ARGV[3])
local dropped = {}
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[3])
  local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
  if excess > 0 then
    local oldest = redis.call('ZPOPMIN', KEYS[2], excess)
    for i = 1, #oldest, 2 do
      redis.call('DEL', ARGV[5] .. oldest[i])
      redis.call('PUBLISH', ARGV[6], ARGV[7] .. oldest[i])
      dropped[#dropped + 1] = oldest[i]
    end
  end
end
return dropped
",
    )
});

/// Deletes the state of one user (`ARGV[2]` = `one`), or of every user and the
/// application-wide state, and with `ARGV[4]` = `1` the application too; publishes it.
///
/// KEYS: users, applications. ARGV: state key prefix, scope, user, delete the application,
/// application, channel, message.
static DELETE_STATES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[2] == 'one' then
  redis.call('DEL', ARGV[1] .. ARGV[3])
  redis.call('ZREM', KEYS[1], ARGV[3])
else
  for _, user in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    redis.call('DEL', ARGV[1] .. user)
  end
  redis.call('DEL', ARGV[1], KEYS[1])
  if ARGV[4] == '1' then redis.call('HDEL', KEYS[2], ARGV[5]) end
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
",
    )
});

/// The shared store; cheap to clone.
#[derive(Clone)]
pub(super) struct SharedStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    /// The Redis URL without credentials.
    url: String,
    /// This server's id in the changes it publishes (so it skips its own).
    node: String,
    /// Whether the last command reached Redis.
    reachable: AtomicBool,
    /// Whether a query record is on its way to an unreachable Redis (one at a time).
    probing: AtomicBool,
    changes: WeakSender<Change>,
}

/// `url` with any password taken out, for messages.
fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl SharedStore {
    /// Connects to Redis at `url` and starts following the changes other servers make.
    pub(super) async fn connect(
        url: &str,
        changes: WeakSender<Change>,
    ) -> Result<SharedStore, StoreError> {
        let shown = without_credentials(url);
        let failed = |error| StoreError::Redis {
            url: shown.clone(),
            error,
            unreachable: true,
        };
        let client = redis::Client::open(url).map_err(failed)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(failed)?;
        let node = format!("{:016x}", rand::random::<u64>());
        tokio::spawn(follow(client, node.clone(), changes.clone()));
        Ok(SharedStore {
            inner: Arc::new(Inner {
                connection,
                url: shown,
                node,
                reachable: AtomicBool::new(true),
                probing: AtomicBool::new(false),
                changes,
            }),
        })
    }

    fn connection(&self) -> ConnectionManager {
        self.inner.connection.clone()
    }

    /// A command's result as the store's, noting whether Redis was reached: the first success
    /// after a failure to reach it announces a resync.
    fn checked<T>(&self, result: RedisResult<T>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                if !self.inner.reachable.swap(true, Ordering::SeqCst) {
                    tracing::info!(redis = %self.inner.url, "the shared state is reachable again");
                    announce(&self.inner.changes, Change::Resync);
                }
                Ok(value)
            }
            Err(error) => {
                let unreachable = error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal();
                if unreachable && self.inner.reachable.swap(false, Ordering::SeqCst) {
                    tracing::warn!(redis = %self.inner.url, %error, "the shared state is unreachable");
                }
                Err(StoreError::Redis {
                    url: self.inner.url.clone(),
                    error,
                    unreachable,
                })
            }
        }
    }

    /// A change message: this node, the kind, then its parts, NUL-separated.
    fn message(&self, kind: &str, parts: &[&str]) -> Vec<u8> {
        let mut message = format!("{}\0{kind}", self.inner.node);
        for part in parts {
            message.push('\0');
            message.push_str(part);
        }
        message.into_bytes()
    }

    pub(super) async fn applications<T: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<Vec<T>, StoreError> {
        let specs: Vec<Vec<u8>> = self.checked(self.connection().hvals(APPLICATIONS).await)?;
        specs
            .iter()
            .map(|spec| decode(APPLICATIONS, spec))
            .collect()
    }

    pub(super) async fn application<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        let spec: Option<Vec<u8>> =
            self.checked(self.connection().hget(APPLICATIONS, name).await)?;
        spec.map(|spec| decode(name, &spec)).transpose()
    }

    pub(super) async fn put_application(&self, name: &str, spec: &[u8]) -> Result<(), StoreError> {
        let result = redis::pipe()
            .atomic()
            .hset(APPLICATIONS, name, spec)
            .publish(CHANGES, self.message("app", &[name]))
            .query_async::<()>(&mut self.connection())
            .await;
        self.checked(result)
    }

    /// The state of `(app, user)` and its version (0 when none is stored).
    pub(super) async fn state<T: serde::de::DeserializeOwned>(
        &self,
        app: &str,
        user: &str,
    ) -> Result<(Option<T>, u64), StoreError> {
        let key = state_key(app, user);
        let (version, state): (Option<u64>, Option<Vec<u8>>) = self.checked(
            redis::cmd("HMGET")
                .arg(&key)
                .arg("v")
                .arg("s")
                .query_async(&mut self.connection())
                .await,
        )?;
        let state = state.map(|state| decode(&key, &state)).transpose()?;
        Ok((state, version.unwrap_or(0)))
    }

    pub(super) async fn update_state<T>(
        &self,
        app: &str,
        user: &str,
        max_users: usize,
        mut update: impl FnMut(Option<T>) -> T,
    ) -> Result<(T, Vec<String>), StoreError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let message_prefix = self.message("state", &[app, ""]);
        for _ in 0..UPDATE_ATTEMPTS {
            let (stored, version) = self.state(app, user).await?;
            let next = update(stored);
            let written: Option<Vec<String>> = self.checked(
                UPDATE_STATE
                    .key(state_key(app, user))
                    .key(users_key(app))
                    .key(SEQUENCE)
                    .arg(version)
                    .arg(super::encode(&next))
                    .arg(user)
                    .arg(max_users.max(1))
                    .arg(state_key(app, ""))
                    .arg(CHANGES)
                    .arg(&message_prefix)
                    .invoke_async(&mut self.connection())
                    .await,
            )?;
            if let Some(dropped) = written {
                return Ok((next, dropped));
            }
        }
        Err(StoreError::Contended(
            format!("{app}/{user}"),
            UPDATE_ATTEMPTS,
        ))
    }

    /// Deletes the state of `user` of `app`, or (`None`) all of the application's, and with
    /// `application` the application itself.
    pub(super) async fn delete_states(
        &self,
        app: &str,
        user: Option<&str>,
        application: bool,
    ) -> Result<(), StoreError> {
        let message = match (user, application) {
            (_, true) => self.message("app", &[app]),
            (Some(user), false) => self.message("state", &[app, user]),
            (None, false) => self.message("states", &[app]),
        };
        let result = DELETE_STATES
            .key(users_key(app))
            .key(APPLICATIONS)
            .arg(state_key(app, ""))
            .arg(if user.is_some() { "one" } else { "all" })
            .arg(user.unwrap_or(""))
            .arg(if application { "1" } else { "0" })
            .arg(app)
            .arg(CHANGES)
            .arg(message)
            .invoke_async::<()>(&mut self.connection())
            .await;
        self.checked(result)
    }

    pub(super) async fn share_query(
        &self,
        app: &str,
        user: &str,
        input: &str,
        chosen: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        // While Redis is unreachable every query would hold a task for the command timeout:
        // one record at a time probes it, the others are not shared.
        let probe = !self.inner.reachable.load(Ordering::SeqCst);
        if probe && self.inner.probing.swap(true, Ordering::SeqCst) {
            return Ok(false);
        }
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let result = self
            .connection()
            .pset_ex::<_, _, ()>(query_key(app, user, input), chosen, ttl_ms)
            .await;
        if probe {
            self.inner.probing.store(false, Ordering::SeqCst);
        }
        self.checked(result).map(|()| true)
    }

    pub(super) async fn shared_query(
        &self,
        app: &str,
        user: &str,
        input: &str,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let key = query_key(app, user, input);
        let chosen: Option<Vec<u8>> = self.checked(self.connection().get(&key).await)?;
        chosen.map(|chosen| decode(&key, &chosen)).transpose()
    }

    pub(super) async fn put_model(
        &self,
        model: &str,
        version: &str,
        record: &[u8],
    ) -> Result<(), StoreError> {
        let result = redis::pipe()
            .atomic()
            .hset(MODELS, format!("{model}\0{version}"), record)
            .publish(CHANGES, self.message("model", &[model, version]))
            .query_async::<()>(&mut self.connection())
            .await;
        self.checked(result)
    }

    pub(super) async fn model(
        &self,
        model: &str,
        version: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = format!("{model}\0{version}");
        self.checked(self.connection().hget(MODELS, key).await)
    }

    pub(super) async fn models(&self) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let records: Vec<(String, Vec<u8>)> =
            self.checked(self.connection().hgetall(MODELS).await)?;
        let mut records: Vec<_> = records
            .into_iter()
            .map(|(key, record)| {
                let (model, version) = key.split_once('\0').unwrap_or((&key, ""));
                (model.to_string(), version.to_string(), record)
            })
            .collect();
        records.sort();
        Ok(records)
    }

    pub(super) async fn delete_models(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<(), StoreError> {
        let doomed: Vec<String> = match version {
            Some(version) => vec![format!("{model}\0{version}")],
            None => {
                let keys: Vec<String> = self.checked(self.connection().hkeys(MODELS).await)?;
                let prefix = format!("{model}\0");
                keys.into_iter()
                    .filter(|k| k.starts_with(&prefix))
                    .collect()
            }
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !doomed.is_empty() {
            pipe.hdel(MODELS, doomed);
        }
        match version {
            Some(version) => pipe.publish(CHANGES, self.message("model", &[model, version])),
            None => pipe
                .hdel(DEFAULT_VERSIONS, model)
                .publish(CHANGES, self.message("models", &[model])),
        };
        let result = pipe.query_async::<()>(&mut self.connection()).await;
        self.checked(result)
    }

    pub(super) async fn put_default_version(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        match version {
            Some(version) => pipe.hset(DEFAULT_VERSIONS, model, version),
            None => pipe.hdel(DEFAULT_VERSIONS, model),
        };
        let result = pipe
            .publish(CHANGES, self.message("pin", &[model]))
            .query_async::<()>(&mut self.connection())
            .await;
        self.checked(result)
    }

    pub(super) async fn default_versions(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut pins: Vec<(String, String)> =
            self.checked(self.connection().hgetall(DEFAULT_VERSIONS).await)?;
        pins.sort();
        Ok(pins)
    }

    pub(super) async fn put_blob(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let result = self
            .connection()
            .set_nx::<_, _, ()>(blob_key(key), bytes)
            .await;
        self.checked(result)
    }

    pub(super) async fn blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.checked(self.connection().get(blob_key(key)).await)
    }

    /// Deletes the blobs `keep` refuses. Blobs are one per loaded component and config, so
    /// listing their keys at once is cheap.
    pub(super) async fn retain_blobs(&self, keep: impl Fn(&str) -> bool) -> Result<(), StoreError> {
        let keys: Vec<String> = self.checked(self.connection().keys(blob_key("*")).await)?;
        let doomed: Vec<&String> = keys
            .iter()
            .filter(|key| !keep(&key[blob_key("").len()..]))
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        let result = self.connection().del::<_, ()>(doomed).await;
        self.checked(result)
    }
}

fn announce(changes: &WeakSender<Change>, change: Change) {
    if let Some(changes) = changes.upgrade() {
        // No receiver is not an error: nothing holds state to drop.
        let _ = changes.send(change);
    }
}

/// What a published message says changed, unless this node published it.
fn parse_change(node: &str, message: &[u8]) -> Option<Change> {
    let message = std::str::from_utf8(message).ok()?;
    let mut parts = message.split('\0');
    if parts.next()? == node {
        return None;
    }
    let kind = parts.next()?;
    let app = parts.next()?.to_string();
    match kind {
        "app" => Some(Change::Application(app)),
        "state" => Some(Change::States {
            app,
            user: Some(parts.next()?.to_string()),
        }),
        "states" => Some(Change::States { app, user: None }),
        "model" => Some(Change::Model {
            name: app,
            version: Some(parts.next()?.to_string()),
        }),
        "models" => Some(Change::Model {
            name: app,
            version: None,
        }),
        "pin" => Some(Change::DefaultVersion(app)),
        _ => None,
    }
}

async fn subscribe(client: &redis::Client) -> RedisResult<PubSub> {
    let connecting = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(CHANGES).await?;
        Ok(pubsub)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()))
}

/// Follows the changes other servers publish, for as long as the store lives: subscribes,
/// pings the subscription every [`HEARTBEAT`], and when it stops answering subscribes again
/// and announces a resync (changes published meanwhile were missed).
async fn follow(client: redis::Client, node: String, changes: WeakSender<Change>) {
    let mut first = true;
    let mut failing = false;
    loop {
        if changes.upgrade().is_none() {
            return;
        }
        match subscribe(&client).await {
            Ok(pubsub) => {
                if !first {
                    tracing::info!("following the shared state's changes again");
                    announce(&changes, Change::Resync);
                }
                first = false;
                failing = false;
                let (mut sink, mut stream) = pubsub.split();
                let mut heartbeat = tokio::time::interval(HEARTBEAT);
                loop {
                    tokio::select! {
                        message = stream.next() => {
                            let Some(message) = message else { break };
                            if let Some(change) = parse_change(&node, message.get_payload_bytes()) {
                                if changes.upgrade().is_none() {
                                    return;
                                }
                                announce(&changes, change);
                            }
                        }
                        _ = heartbeat.tick() => {
                            if changes.upgrade().is_none() {
                                return;
                            }
                            let ping = tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>());
                            if !matches!(ping.await, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                tracing::warn!(
                    "lost the subscription to the shared state's changes; resubscribing"
                );
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "cannot subscribe to the shared state's changes; retrying");
                }
                failing = true;
                first = false;
            }
        }
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_not_shown() {
        assert_eq!(
            without_credentials("redis://:secret@redis:6379/0"),
            "redis://redis:6379/0"
        );
        assert_eq!(
            without_credentials("redis://redis:6379"),
            "redis://redis:6379"
        );
    }

    #[test]
    fn changes_name_what_changed_and_skip_our_own() {
        assert_eq!(
            parse_change("me", b"other\0state\0app\0user:with:colons"),
            Some(Change::States {
                app: "app".into(),
                user: Some("user:with:colons".into())
            })
        );
        assert_eq!(
            parse_change("me", b"other\0app\0digits"),
            Some(Change::Application("digits".into()))
        );
        assert_eq!(
            parse_change("me", b"other\0model\0digits\x003"),
            Some(Change::Model {
                name: "digits".into(),
                version: Some("3".into())
            })
        );
        assert_eq!(parse_change("me", b"me\0app\0digits"), None);
    }
}
