//! The control plane of models loaded through the API: they survive restarts. Each
//! acknowledged load is recorded in the store ([`LoadRecord`], with the component and init
//! config stored once by content), and scaling, unloading and default-version pins keep the
//! record current. At start, [`Lifecycle::restore`] replays the records on top of the model
//! repository.
//!
//! A record keeps the settings as the request gave them (what it left unset takes the server's
//! defaults again at restart), and the bytes that were sent: a path becomes the file's bytes,
//! and an ONNX graph stays a graph, not a copy of the runner.

use crate::autoscale::{ReplicaRange, starting_replicas};
use crate::batching::BatchingConfig;
use crate::onnx::{OnnxError, OnnxGraph, OnnxRunner, OnnxRunners};
use crate::registry::{LoadRequest, Model, Registry, RegistryError};
use crate::settings::{BatchingRequest, LimitsRequest, ModelLimits};
use crate::store::{Change, Follower, Store, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_types::{ErrorKind, HasKind};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Why a lifecycle operation failed.
#[derive(Debug, Error)]
pub enum LifecycleError {
    /// The request is malformed; the message starts with the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The change was made but could not be recorded.
    #[error("the change was made but could not be recorded for restarts: {0}")]
    Record(#[from] StoreError),
}

impl From<OnnxError> for LifecycleError {
    fn from(error: OnnxError) -> Self {
        match error {
            OnnxError::Invalid(_) => LifecycleError::InvalidArgument(error.to_string()),
            OnnxError::Registry(e) => LifecycleError::Registry(e),
        }
    }
}

impl HasKind for LifecycleError {
    fn kind(&self) -> ErrorKind {
        match self {
            LifecycleError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            LifecycleError::Registry(e) => e.kind(),
            LifecycleError::Record(_) => ErrorKind::Internal,
        }
    }
}

/// Where a model's code comes from.
#[derive(Debug, Clone)]
pub enum ComponentSource {
    /// A component's bytes.
    Wasm(Vec<u8>),
    /// A component file on the server.
    Path(PathBuf),
    /// An ONNX graph, served by one of the ONNX runner components.
    Onnx {
        /// The graph's bytes (weights inside).
        graph: Vec<u8>,
        /// Where it runs.
        runner: OnnxRunner,
    },
}

/// A load request as the API gives it.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The code.
    pub source: ComponentSource,
    /// Passed to the model's `init` (must be empty for an ONNX graph).
    pub config: Vec<u8>,
    /// Serve under this name instead of the model's own.
    pub name: Option<String>,
    /// Serve as this version instead of the one the model declares.
    pub version: Option<String>,
    /// Instances to run (at least 1); where an autoscaled model starts.
    pub replicas: usize,
    /// The range the replicas are autoscaled in (`None`: `replicas`, fixed).
    pub autoscale: Option<ReplicaRange>,
    /// Limits; what is unset takes the server's default.
    pub limits: LimitsRequest,
    /// Batching; what is unset takes the server's default.
    pub batching: BatchingRequest,
}

/// What the store keeps of an acknowledged load (JSON; the bytes are blobs by SHA-256).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadRecord {
    /// `wasm` (a component) or `onnx` (a graph for the ONNX runner).
    pub kind: RecordedKind,
    /// SHA-256 of the component or graph.
    pub code_sha256: String,
    /// SHA-256 of the init config.
    pub config_sha256: String,
    /// Replicas.
    pub replicas: usize,
    /// Limits as requested.
    pub limits: LimitsRequest,
    /// Batching as requested.
    pub batching: BatchingRequest,
    /// Where an ONNX graph runs (records written before there was a choice: `auto`).
    #[serde(default)]
    pub onnx_runner: OnnxRunner,
    /// The range the replicas are autoscaled in (records written before there were ranges:
    /// none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<ReplicaRange>,
}

/// The kind of code a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordedKind {
    /// A component.
    Wasm,
    /// An ONNX graph.
    Onnx,
}

/// What [`Lifecycle::restore`] brought back.
#[derive(Debug, Default)]
pub struct Restored {
    /// `name@version` of each model loaded again.
    pub loaded: Vec<String>,
    /// Records that failed to load, with the reason (they stay recorded).
    pub failed: Vec<(String, String)>,
}

/// Loads, unloads, scales and pins models, recording each acknowledged change.
pub struct Lifecycle {
    registry: Arc<Registry>,
    store: Store,
    default_limits: ModelLimits,
    default_batching: BatchingConfig,
    onnx_runners: OnnxRunners,
    /// The versions this server loaded from records (its own loads through the API, those
    /// restored, those another server sharing the store loaded): the ones it unloads when their
    /// record goes.
    recorded: Mutex<BTreeSet<(String, String)>>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Lifecycle {
    /// The lifecycle of `registry`'s models, recorded in `store`; loads take what they leave
    /// unset from the defaults, and ONNX graphs run on `onnx_runners` (none: ONNX loads are
    /// refused).
    pub fn new(
        registry: Arc<Registry>,
        store: Store,
        defaults: (ModelLimits, BatchingConfig),
        onnx_runners: OnnxRunners,
    ) -> Lifecycle {
        Lifecycle {
            registry,
            store,
            default_limits: defaults.0,
            default_batching: defaults.1,
            onnx_runners,
            recorded: Mutex::new(BTreeSet::new()),
        }
    }

    /// Follows what other servers sharing the store load, scale, unload and pin, for as long
    /// as the lifecycle lives (nothing with the embedded store).
    pub fn follow_changes(self: &Arc<Self>) {
        self.store.clone().follow(self);
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, String)>> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes this server hold `name` `version` as its record says: loaded (from the recorded
    /// bytes) with the recorded replicas, or unloaded when the record is gone.
    async fn follow_record(&self, name: &str, version: &str) -> Result<(), StoreError> {
        let record = self.store.model(name, version).await?;
        let key = (name.to_string(), version.to_string());
        match (record, self.registry.get(name, Some(version))) {
            (Some(bytes), Ok(model)) => {
                // An autoscaled model's count is its own autoscaler's business on each server.
                let wanted = decode_record(&bytes)
                    .ok()
                    .filter(|_| model.replica_range().is_none())
                    .map(|r| r.replicas);
                if let Some(replicas) = wanted.filter(|&r| r != model.replicas())
                    && let Err(error) = self.registry.scale(&model, replicas).await
                {
                    tracing::warn!(model = name, version, %error, "could not scale as another server did");
                }
                self.recorded().insert(key);
            }
            (Some(bytes), Err(_)) => match self.restore_one(name, version, &bytes).await {
                Ok(_) => {
                    tracing::info!(model = name, version, "loaded, as another server did");
                    self.recorded().insert(key);
                }
                Err(reason) => {
                    tracing::warn!(model = name, version, %reason, "could not load what another server loaded");
                }
            },
            (None, Ok(_)) if self.recorded().remove(&key) => {
                // Already gone is as good as unloaded.
                let _ = self.registry.unload(name, Some(version));
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// Applies the pinned default version of `name` as stored.
    async fn follow_pin(&self, name: &str) -> Result<(), StoreError> {
        let pins = self.store.default_versions().await?;
        let pin = pins.iter().find(|(model, _)| model == name);
        let pinned = pin.map(|(_, version)| version.as_str());
        if let Err(error) = self.registry.set_default_version(name, pinned) {
            tracing::warn!(model = name, %error, "could not pin the default version as another server did");
        }
        Ok(())
    }

    /// Loads a model, then records the load under the name and version it serves as (so a
    /// replay cannot land elsewhere). The load finishes, and is recorded, even if the caller
    /// stops waiting for it.
    pub async fn load(self: &Arc<Self>, spec: LoadSpec) -> Result<Arc<Model>, LifecycleError> {
        let lifecycle = self.clone();
        crate::to_completion(async move { lifecycle.load_now(spec).await }).await
    }

    async fn load_now(&self, spec: LoadSpec) -> Result<Arc<Model>, LifecycleError> {
        let (kind, code, onnx_runner) = match spec.source {
            ComponentSource::Wasm(bytes) => (RecordedKind::Wasm, bytes, OnnxRunner::Auto),
            ComponentSource::Path(path) => {
                let bytes = read_component_file(&path).await?;
                (RecordedKind::Wasm, bytes, OnnxRunner::Auto)
            }
            ComponentSource::Onnx { graph, runner } => {
                if !spec.config.is_empty() {
                    return Err(LifecycleError::InvalidArgument(
                        "config: must be empty with `onnx` (the graph is the runner's config)"
                            .into(),
                    ));
                }
                (RecordedKind::Onnx, graph, runner)
            }
        };
        let record = LoadRecord {
            kind,
            code_sha256: sha256_hex(&code),
            config_sha256: sha256_hex(&spec.config),
            replicas: starting_replicas(spec.replicas, spec.autoscale),
            autoscale: spec.autoscale,
            limits: spec.limits,
            batching: spec.batching,
            onnx_runner,
        };
        let model = self
            .load_recorded(
                &record,
                code.clone(),
                spec.config.clone(),
                spec.name,
                spec.version,
            )
            .await?;
        self.store.put_blob(&record.code_sha256, code).await?;
        self.store
            .put_blob(&record.config_sha256, spec.config)
            .await?;
        self.store
            .put_model(&model.name, &model.version, encode_record(&record))
            .await?;
        self.recorded()
            .insert((model.name.clone(), model.version.clone()));
        Ok(model)
    }

    /// Loads what a record describes, from its bytes.
    async fn load_recorded(
        &self,
        record: &LoadRecord,
        code: Vec<u8>,
        config: Vec<u8>,
        name: Option<String>,
        version: Option<String>,
    ) -> Result<Arc<Model>, LifecycleError> {
        let (component, config, graphs) = match record.kind {
            RecordedKind::Wasm => (code, config, Vec::new()),
            RecordedKind::Onnx => {
                let engine = self.registry.graph_engine();
                let onnx = self
                    .onnx_runners
                    .model(engine, OnnxGraph::Bytes(code), record.onnx_runner)
                    .await?;
                (onnx.component, onnx.config, onnx.graphs)
            }
        };
        let batching = record
            .batching
            .resolve(self.default_batching)
            .map_err(LifecycleError::InvalidArgument)?;
        Ok(self
            .registry
            .load(LoadRequest {
                component,
                config,
                graphs,
                name,
                version,
                replicas: record.replicas,
                autoscale: record.autoscale,
                limits: record.limits.resolve(self.default_limits),
                batching,
            })
            .await?)
    }

    /// Unloads one version of `name`, or all of them (`None`), and forgets their records
    /// (even if the caller stops waiting); returns the versions removed.
    pub async fn unload(
        self: &Arc<Self>,
        name: &str,
        version: Option<&str>,
    ) -> Result<Vec<String>, LifecycleError> {
        let removed = self.registry.unload(name, version)?;
        self.recorded()
            .retain(|(model, v)| model != name || !removed.contains(v));
        let (name, version) = (name.to_string(), version.map(str::to_string));
        let store = self.store.clone();
        crate::to_completion(async move {
            store.delete_models(&name, version.as_deref()).await?;
            collect_blobs(&store).await
        })
        .await?;
        Ok(removed)
    }

    /// Changes the replicas of `model` (all or none of the new ones start, and the change
    /// finishes even if the caller stops waiting); a recorded model comes back with the new
    /// count.
    pub async fn scale(
        self: &Arc<Self>,
        model: Arc<Model>,
        replicas: usize,
    ) -> Result<(), LifecycleError> {
        let lifecycle = self.clone();
        crate::to_completion(async move { lifecycle.scale_now(&model, replicas).await }).await
    }

    async fn scale_now(&self, model: &Model, replicas: usize) -> Result<(), LifecycleError> {
        self.registry.scale(model, replicas).await?;
        let (name, version) = (&model.name, &model.version);
        let Some(bytes) = self.store.model(name, version).await? else {
            return Ok(());
        };
        // A record this build cannot read is left as it is (restore reports it).
        if let Ok(mut record) = decode_record(&bytes) {
            record.replicas = replicas;
            self.store
                .put_model(name, version, encode_record(&record))
                .await?;
        }
        Ok(())
    }

    /// Pins (or with `None` unpins) the default version of `name`, and records the pin.
    pub async fn set_default_version(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(), LifecycleError> {
        self.registry.set_default_version(name, version)?;
        Ok(self.store.put_default_version(name, version).await?)
    }

    /// Loads every recorded model again and re-applies the default-version pins. A record that
    /// fails (a component this build cannot run any more, say) is reported and skipped. A
    /// record that is not a [`LoadRecord`] is offered to `legacy`, which may read it as the
    /// load request an earlier version recorded; it is then loaded and recorded anew.
    pub async fn restore(
        &self,
        legacy: impl Fn(&[u8]) -> Option<LoadSpec>,
    ) -> Result<Restored, StoreError> {
        let mut restored = Restored::default();
        let records = self.store.models().await?;
        for (name, version, bytes) in records {
            let label = format!("{name}@{version}");
            let earlier = decode_record(&bytes)
                .is_err()
                .then(|| legacy(&bytes))
                .flatten();
            let result = match earlier {
                Some(spec) => {
                    let spec = LoadSpec {
                        name: Some(name.clone()),
                        version: Some(version.clone()),
                        ..spec
                    };
                    self.load_now(spec).await.map_err(|e| e.to_string())
                }
                None => self.restore_one(&name, &version, &bytes).await,
            };
            match result {
                Ok(model) => {
                    self.recorded()
                        .insert((model.name.clone(), model.version.clone()));
                    restored
                        .loaded
                        .push(format!("{}@{}", model.name, model.version));
                }
                Err(reason) => restored.failed.push((label, reason)),
            }
        }
        for (name, version) in self.store.default_versions().await? {
            if let Err(e) = self.registry.set_default_version(&name, Some(&version)) {
                restored.failed.push((name, e.to_string()));
            }
        }
        Ok(restored)
    }

    async fn restore_one(
        &self,
        name: &str,
        version: &str,
        bytes: &[u8],
    ) -> Result<Arc<Model>, String> {
        let record = decode_record(bytes)
            .map_err(|e| format!("an unreadable record (written by another sluice?): {e}"))?;
        let blob = async |sha256| self.store.blob(sha256).await.map_err(|e| e.to_string());
        let (Some(code), Some(config)) = (
            blob(&record.code_sha256).await?,
            blob(&record.config_sha256).await?,
        ) else {
            return Err("the record's component or config is missing from the store".into());
        };
        self.load_recorded(
            &record,
            code,
            config,
            Some(name.to_string()),
            Some(version.to_string()),
        )
        .await
        .map_err(|e| e.to_string())
    }
}

/// What another server changed in the shared store: this server loads, scales, unloads and
/// pins the same.
impl Follower for Lifecycle {
    async fn apply(&self, change: Change) -> Result<(), StoreError> {
        match change {
            Change::Model {
                name,
                version: Some(version),
            } => self.follow_record(&name, &version).await,
            Change::Model {
                name,
                version: None,
            } => {
                let versions: Vec<String> = self
                    .recorded()
                    .iter()
                    .filter(|(model, _)| *model == name)
                    .map(|(_, version)| version.clone())
                    .collect();
                for version in versions {
                    self.follow_record(&name, &version).await?;
                }
                Ok(())
            }
            Change::DefaultVersion(name) => self.follow_pin(&name).await,
            Change::Resync => {
                let records = self.store.models().await?;
                let mut held: BTreeSet<(String, String)> = self.recorded().clone();
                for (name, version, _) in &records {
                    held.insert((name.clone(), version.clone()));
                }
                for (name, version) in held {
                    self.follow_record(&name, &version).await?;
                }
                for (name, _) in self.store.default_versions().await? {
                    self.follow_pin(&name).await?;
                }
                Ok(())
            }
            Change::Application(_) | Change::States { .. } => Ok(()),
        }
    }
}

fn encode_record(record: &LoadRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("load records serialize")
}

fn decode_record(bytes: &[u8]) -> Result<LoadRecord, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Deletes the blobs no record refers to any more.
async fn collect_blobs(store: &Store) -> Result<(), StoreError> {
    let referenced: BTreeSet<String> = store
        .models()
        .await?
        .iter()
        .filter_map(|(_, _, bytes)| decode_record(bytes).ok())
        .flat_map(|r| [r.code_sha256, r.config_sha256])
        .collect();
    store
        .retain_blobs(move |sha256| referenced.contains(sha256))
        .await
}

/// The largest component file a load reads from the server's disk (the bound of a component
/// sent in a message, too).
pub const MAX_COMPONENT_FILE_BYTES: u64 = 64 << 20;

/// Reads a component file named in a load request: a regular file (a FIFO or a device would
/// block the load or never end), of at most [`MAX_COMPONENT_FILE_BYTES`].
async fn read_component_file(path: &std::path::Path) -> Result<Vec<u8>, LifecycleError> {
    use tokio::io::AsyncReadExt;
    let refuse = |why: String| {
        LifecycleError::InvalidArgument(format!("path: `{}` on the server {why}", path.display()))
    };
    let unreadable = |e: std::io::Error| {
        LifecycleError::InvalidArgument(format!(
            "path: cannot read `{}` on the server: {e}",
            path.display()
        ))
    };
    let metadata = tokio::fs::metadata(path).await.map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    if metadata.len() > MAX_COMPONENT_FILE_BYTES {
        return Err(refuse(format!(
            "is {} bytes, over the limit of {MAX_COMPONENT_FILE_BYTES}",
            metadata.len()
        )));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    tokio::fs::File::open(path)
        .await
        .map_err(unreadable)?
        .take(MAX_COMPONENT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_COMPONENT_FILE_BYTES {
        return Err(refuse(format!(
            "grew past the limit of {MAX_COMPONENT_FILE_BYTES} bytes while it was read"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ModeRequest;
    use std::time::Duration;

    #[test]
    fn records_round_trip_as_json() {
        let record = LoadRecord {
            kind: RecordedKind::Onnx,
            code_sha256: sha256_hex(b"graph"),
            config_sha256: sha256_hex(b""),
            replicas: 3,
            limits: LimitsRequest {
                call_timeout: Some(Duration::from_millis(250)),
                ..LimitsRequest::default()
            },
            batching: BatchingRequest {
                mode: Some(ModeRequest::Static(8)),
                ..BatchingRequest::default()
            },
            onnx_runner: OnnxRunner::Sandbox,
            autoscale: Some(ReplicaRange { min: 2, max: 5 }),
        };
        assert_eq!(decode_record(&encode_record(&record)).unwrap(), record);
        assert!(
            decode_record(b"\x0a\x03abc").is_err(),
            "protobuf is refused"
        );
    }

    #[tokio::test]
    async fn blobs_no_record_uses_are_collected() {
        let store = Store::in_memory();
        let record = |code: &[u8]| LoadRecord {
            kind: RecordedKind::Wasm,
            code_sha256: sha256_hex(code),
            config_sha256: sha256_hex(b""),
            replicas: 1,
            limits: LimitsRequest::default(),
            batching: BatchingRequest::default(),
            onnx_runner: OnnxRunner::Auto,
            autoscale: None,
        };
        for (version, code) in [("1", b"one".as_slice()), ("2", b"two".as_slice())] {
            store
                .put_blob(&sha256_hex(code), code.to_vec())
                .await
                .unwrap();
            store
                .put_model("m", version, encode_record(&record(code)))
                .await
                .unwrap();
        }
        store.put_blob(&sha256_hex(b""), Vec::new()).await.unwrap();
        store.delete_models("m", Some("2")).await.unwrap();
        collect_blobs(&store).await.unwrap();
        let blob = async |code: &[u8]| store.blob(&sha256_hex(code)).await.unwrap();
        assert_eq!(blob(b"one").await, Some(b"one".to_vec()));
        assert_eq!(blob(b"two").await, None);
        assert_eq!(blob(b"").await, Some(Vec::new()));
    }
}
