//! What both KServe v2 protocols (gRPC and REST) do alike: resolve a name to a model or an
//! application and run the inference ([`target`]), the outputs of an application
//! ([`app_outputs`]), and the model-repository extension. Both protocol modules call these,
//! so that they cannot drift apart; nothing here knows a wire format.

pub(crate) mod app_outputs;
pub(crate) mod target;

use crate::Shared;
use crate::error::ApiError;
use sluice_serving::registry::{ModelState, Residence};

pub(crate) use target::{AppParameters, InferTarget};

/// What server metadata reports as the server's name.
pub(crate) const SERVER_NAME: &str = "sluice";

/// What model metadata reports as the platform of every model.
pub(crate) const PLATFORM: &str = "sluice_wasm";

/// Whether an output is to be returned: all are when the request names none.
pub(crate) fn is_requested<'a>(
    mut requested: impl Iterator<Item = &'a str>,
    output: &str,
    none_named: bool,
) -> bool {
    none_named || requested.any(|name| name == output)
}

/// One row of the repository extension's index.
pub(crate) struct IndexEntry {
    /// The model.
    pub(crate) name: String,
    /// The version (empty for a repository model that is not loaded).
    pub(crate) version: String,
    /// Triton's state name (`READY`, `LOADING`, `UNAVAILABLE`, `UNLOADING`).
    pub(crate) state: &'static str,
    /// Why it is unavailable, if it is; for a ready version, whether it is resident.
    pub(crate) reason: String,
}

/// Triton's names for model states.
fn index_state(state: &ModelState) -> (&'static str, String) {
    match state {
        ModelState::Loading => ("LOADING", String::new()),
        ModelState::Ready => ("READY", String::new()),
        ModelState::Failed(reason) => ("UNAVAILABLE", reason.clone()),
        ModelState::Draining => ("UNLOADING", String::new()),
        ModelState::Unloaded => ("UNAVAILABLE", "unloaded".into()),
    }
}

/// A ready version's reason in the index: whether it is resident (see `Model::residence`).
fn residence_reason(residence: Residence) -> &'static str {
    match residence {
        Residence::Running => "resident",
        Residence::CodeOnly => "not resident: compiled code in memory",
        Residence::Registered => "not resident",
    }
}

/// The repository extension's index: every version the registry knows, and the repository's
/// models that are not loaded.
pub(crate) fn repository_index(
    shared: &Shared,
    ready_only: bool,
) -> Result<Vec<IndexEntry>, ApiError> {
    let mut models: Vec<IndexEntry> = shared
        .registry
        .list()
        .iter()
        .map(|e| {
            let (state, mut reason) = index_state(&e.state);
            if let (ModelState::Ready, Some(model)) = (&e.state, &e.model) {
                reason = residence_reason(model.residence()).into();
            }
            IndexEntry {
                name: e.name.clone(),
                version: e.version.clone(),
                state,
                reason,
            }
        })
        .collect();
    if let Some(repository) = &shared.repository {
        let names = repository
            .model_names()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        for name in names {
            if !models.iter().any(|m| m.name == name) {
                models.push(IndexEntry {
                    name,
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason: "unloaded".into(),
                });
            }
        }
    }
    models.retain(|m| !ready_only || m.state == "READY");
    Ok(models)
}

/// The repository extension's load: (re)loads `name` from the model repository.
pub(crate) async fn repository_load(shared: &Shared, name: &str) -> Result<(), ApiError> {
    let repository = shared.repository.as_ref().ok_or_else(|| {
        ApiError::failed_precondition(
            "this server has no model repository (start it with --repository); \
             load components with sluice.v1.Sluice/LoadModel instead",
        )
    })?;
    let report = repository
        .reload(name)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some((_, version, reason)) = report.failed.iter().find(|f| f.0 == name) {
        return Err(ApiError::invalid_argument(format!(
            "model `{name}` version {version} failed to load: {reason}"
        )));
    }
    shared.registry.get(name, None).map_err(|_| {
        ApiError::not_found(format!("model `{name}` is not in the model repository"))
    })?;
    Ok(())
}

/// The repository extension's unload: every version of `name`, and its records.
pub(crate) async fn repository_unload(shared: &Shared, name: &str) -> Result<(), ApiError> {
    shared.lifecycle.unload(name, None).await?;
    Ok(())
}
