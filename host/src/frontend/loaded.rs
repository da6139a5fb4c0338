//! Models loaded through the API survive restarts. Each acknowledged `LoadModel` is recorded
//! in the store as the request that made it (with the component's bytes, whatever the caller
//! sent), and `ScaleModel`, `UnloadModel` (also through the repository extension) and
//! `SetDefaultVersion` keep the record current. At start, [`restore`] replays the records on
//! top of the model repository.

use super::convert::{batching_from_proto, limits_from_proto};
use super::status::to_status;
use super::{FrontendOptions, non_empty};
use crate::proto::{self, load_model_request::Component};
use crate::registry::{LoadRequest, Model, Registry};
use crate::store::{Store, StoreError};
use prost::Message;
use std::sync::Arc;
use tonic::Status;

fn store_status(error: StoreError) -> Status {
    Status::internal(format!(
        "the change was made but could not be recorded for restarts: {error}"
    ))
}

/// Runs `op` on the server's store, off the async threads; a failure becomes the call's status.
async fn in_store<T: Send + 'static>(
    options: &FrontendOptions,
    op: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    let store = options.store();
    crate::store::blocking(move || op(&store))
        .await
        .map_err(store_status)
}

/// Loads the model a `LoadModelRequest` describes. Returns it with the request rewritten to
/// carry the component's bytes (what gets recorded).
async fn load(
    registry: &Registry,
    options: &FrontendOptions,
    mut request: proto::LoadModelRequest,
) -> Result<(Arc<Model>, proto::LoadModelRequest), Status> {
    // What gets recorded: the bytes sent (a path becomes the file's bytes; an ONNX graph
    // stays a graph, not a copy of the runner).
    let (component, config, recorded) = match request.component.take() {
        Some(Component::Wasm(bytes)) => (
            bytes.clone(),
            request.config.clone(),
            Component::Wasm(bytes),
        ),
        Some(Component::Path(path)) => {
            let bytes = tokio::fs::read(&path).await.map_err(|e| {
                Status::invalid_argument(format!("path: cannot read `{path}` on the server: {e}"))
            })?;
            (
                bytes.clone(),
                request.config.clone(),
                Component::Wasm(bytes),
            )
        }
        Some(Component::Onnx(graph)) => {
            if !request.config.is_empty() {
                return Err(Status::invalid_argument(
                    "config: must be empty with `onnx` (the graph is the runner's config)",
                ));
            }
            (
                crate::bundled::ONNX_RUNNER.to_vec(),
                graph.clone(),
                Component::Onnx(graph),
            )
        }
        None => {
            return Err(Status::invalid_argument(
                "component: give `path` (on the server), `wasm` (the bytes) or `onnx` (a graph)",
            ));
        }
    };
    let batching = batching_from_proto(request.batching, options.default_batching)
        .map_err(Status::invalid_argument)?;
    let model = registry
        .load(LoadRequest {
            component,
            config,
            name: non_empty(request.name.clone()),
            version: non_empty(request.version.clone()),
            replicas: request.replicas.max(1) as usize,
            limits: limits_from_proto(request.limits, options.default_limits),
            batching,
        })
        .await
        .map_err(to_status)?;
    request.component = Some(recorded);
    Ok((model, request))
}

/// `LoadModel`: loads, then records the request under the served name and version.
pub(super) async fn load_and_record(
    registry: &Registry,
    options: &FrontendOptions,
    request: proto::LoadModelRequest,
) -> Result<Arc<Model>, Status> {
    let (model, mut request) = load(registry, options, request).await?;
    // Recorded under the names it serves as, so a replay cannot land elsewhere.
    request.name = model.name.clone();
    request.version = model.version.clone();
    let (name, version) = (model.name.clone(), model.version.clone());
    in_store(options, move |store| {
        store.put_model(&name, &version, &request.encode_to_vec())
    })
    .await?;
    Ok(model)
}

/// After `UnloadModel`: forgets one version, or the whole model.
pub(super) async fn forget(
    options: &FrontendOptions,
    name: &str,
    version: Option<&str>,
) -> Result<(), Status> {
    let (name, version) = (name.to_string(), version.map(str::to_string));
    in_store(options, move |store| {
        store.delete_models(&name, version.as_deref())
    })
    .await
}

/// After `ScaleModel`: a recorded model comes back with its new replica count.
pub(super) async fn record_scale(
    options: &FrontendOptions,
    model: &Model,
    replicas: u32,
) -> Result<(), Status> {
    let (name, version) = (model.name.clone(), model.version.clone());
    in_store(options, move |store| {
        if let Some(bytes) = store.model(&name, &version)? {
            let mut request = proto::LoadModelRequest::decode(bytes.as_slice())
                .expect("the store holds what this module wrote");
            request.replicas = replicas;
            store.put_model(&name, &version, &request.encode_to_vec())?;
        }
        Ok(())
    })
    .await
}

/// After `SetDefaultVersion`: pins (or unpins) the default version.
pub(super) async fn record_default(
    options: &FrontendOptions,
    name: &str,
    version: Option<&str>,
) -> Result<(), Status> {
    let (name, version) = (name.to_string(), version.map(str::to_string));
    in_store(options, move |store| {
        store.put_default_version(&name, version.as_deref())
    })
    .await
}

/// What [`restore`] brought back.
#[derive(Debug, Default)]
pub struct Restored {
    /// `name@version` of each model loaded again.
    pub loaded: Vec<String>,
    /// Records that failed to load, with the reason (they stay recorded).
    pub failed: Vec<(String, String)>,
}

/// Loads every recorded model again and re-applies the default-version pins. A record that
/// fails (a component this build cannot run any more, say) is reported and skipped.
pub async fn restore(
    registry: &Registry,
    options: &FrontendOptions,
    store: &Store,
) -> Result<Restored, StoreError> {
    let mut restored = Restored::default();
    for (name, version, bytes) in store.models()? {
        let label = format!("{name}@{version}");
        let Ok(request) = proto::LoadModelRequest::decode(bytes.as_slice()) else {
            restored.failed.push((label, "an unreadable record".into()));
            continue;
        };
        match load(registry, options, request).await {
            Ok((model, _)) => restored
                .loaded
                .push(format!("{}@{}", model.name, model.version)),
            Err(status) => restored.failed.push((label, status.message().to_string())),
        }
    }
    for (name, version) in store.default_versions()? {
        if let Err(e) = registry.set_default_version(&name, Some(&version)) {
            restored.failed.push((name, e.to_string()));
        }
    }
    Ok(restored)
}
