//! The models this server has loaded, by name and version, and the one place a request is
//! checked, queued and its answer checked on the way to and from a model's replicas.
//!
//! A name maps to one or more versions; a request that names no version goes to the default
//! one, the most recently loaded. Loading a name and version that exist replaces them: requests
//! already queued on the old version still finish (its replicas drain when the last request
//! holding it is answered).

use crate::batching::{BatchStats, Batcher, BatchingConfig, ReplicaRunner, RunnerFactory};
use crate::runtime::replica::{InstanceRecipe, Replica};
use crate::runtime::{CallError, LoadError, ModelInfo, ModelLimits, Runtime, Tensor};
use crate::tensor;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use thiserror::Error;
use tokio::time::Instant;

/// Why a registry operation failed.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// No model has this name.
    #[error("model `{0}` is not loaded")]
    ModelNotFound(String),
    /// The model exists but not in this version.
    #[error("model `{name}` has no version `{version}`; loaded versions: {loaded:?}")]
    VersionNotFound {
        /// The model.
        name: String,
        /// The version asked for.
        version: String,
        /// The versions that exist.
        loaded: Vec<String>,
    },
    /// The request does not fit the model's declared inputs.
    #[error("invalid request for model `{model}`: {message}")]
    InvalidInput {
        /// The model.
        model: String,
        /// What is wrong, naming the tensor.
        message: String,
    },
    /// The call into the model failed.
    #[error("model `{model}`: {error}")]
    Call {
        /// The model.
        model: String,
        /// The cause.
        error: CallError,
    },
    /// The component could not be loaded.
    #[error("cannot load the model: {0}")]
    Load(#[from] LoadError),
}

/// What to load.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// The component's bytes.
    pub component: Vec<u8>,
    /// Passed to the model's `init`.
    pub config: Vec<u8>,
    /// Serve under this name instead of the model's own.
    pub name: Option<String>,
    /// Instances to run (at least 1).
    pub replicas: usize,
    /// Limits of the instances and the queues.
    pub limits: ModelLimits,
    /// How requests are batched.
    pub batching: BatchingConfig,
}

/// A loaded model version: its description and its running replicas.
pub struct Model {
    /// The name it is served under.
    pub name: String,
    /// Its version label (from `info()`).
    pub version: String,
    /// What the model declared.
    pub info: Arc<ModelInfo>,
    /// Limits in force.
    pub limits: ModelLimits,
    /// Hex SHA-256 of the component.
    pub sha256: String,
    batcher: Batcher<ReplicaRunner>,
}

impl Model {
    /// Number of replicas taking requests.
    pub fn replicas(&self) -> usize {
        self.batcher.replicas()
    }

    /// The batching settings.
    pub fn batching(&self) -> BatchingConfig {
        self.batcher.config()
    }

    /// The live batch size limit of each replica.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.batcher.batch_sizes()
    }

    /// Batches and rows run so far.
    pub fn stats(&self) -> BatchStats {
        self.batcher.stats()
    }

    /// Checks `inputs`, queues them on the replica expected to answer soonest, and returns
    /// the outputs (checked against the model's declaration by the replica's worker). The
    /// request must be answered by `deadline`, by default now + the model's SLO.
    pub async fn predict(
        &self,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Tensor>, RegistryError> {
        let (inputs, rows) = tensor::check_inputs(&self.info, inputs).map_err(|message| {
            RegistryError::InvalidInput {
                model: self.name.clone(),
                message,
            }
        })?;
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.batching().slo);
        self.batcher
            .submit(inputs, rows, deadline)
            .await
            .map_err(|error| RegistryError::Call {
                model: self.name.clone(),
                error,
            })
    }

    /// Changes the number of replicas without dropping requests.
    pub async fn scale(&self, replicas: usize) -> Result<(), RegistryError> {
        Ok(self.batcher.scale(replicas).await?)
    }
}

#[derive(Default)]
struct Versions {
    /// In load order; the last is the default.
    loaded: Vec<Arc<Model>>,
}

impl Versions {
    fn labels(&self) -> Vec<String> {
        self.loaded.iter().map(|m| m.version.clone()).collect()
    }
}

/// All loaded models.
pub struct Registry {
    runtime: Arc<Runtime>,
    models: RwLock<BTreeMap<String, Versions>>,
}

impl Registry {
    /// An empty registry whose models run on `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Registry {
            runtime,
            models: RwLock::default(),
        }
    }

    /// The runtime models run on.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Compiles, instantiates and initialises a model, then makes it the default version of
    /// its name. Compilation runs on a blocking thread.
    pub async fn load(&self, request: LoadRequest) -> Result<Arc<Model>, RegistryError> {
        let runtime = self.runtime.clone();
        let model = tokio::task::spawn_blocking(move || build_model(&runtime, request))
            .await
            .map_err(|e| LoadError::Io(format!("the load task failed: {e}")))??;
        let model = Arc::new(model);
        let mut models = self.models.write().unwrap_or_else(|p| p.into_inner());
        let versions = models.entry(model.name.clone()).or_default();
        versions.loaded.retain(|m| m.version != model.version);
        versions.loaded.push(model.clone());
        tracing::info!(model = %model.name, version = %model.version, replicas = model.replicas(),
            sha256 = %model.sha256, "model loaded");
        Ok(model)
    }

    /// The model `name` in `version`, or its default version.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<Model>, RegistryError> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        let versions = models
            .get(name)
            .ok_or_else(|| RegistryError::ModelNotFound(name.to_string()))?;
        let found = match version {
            None => versions.loaded.last(),
            Some(v) => versions.loaded.iter().find(|m| m.version == v),
        };
        found
            .cloned()
            .ok_or_else(|| RegistryError::VersionNotFound {
                name: name.to_string(),
                version: version.unwrap_or_default().to_string(),
                loaded: versions.labels(),
            })
    }

    /// Unloads one version, or all versions when `version` is `None`; returns the versions
    /// removed. Requests already queued on them still finish.
    pub fn unload(&self, name: &str, version: Option<&str>) -> Result<Vec<String>, RegistryError> {
        let mut models = self.models.write().unwrap_or_else(|p| p.into_inner());
        let versions = models
            .get_mut(name)
            .ok_or_else(|| RegistryError::ModelNotFound(name.to_string()))?;
        let removed = match version {
            None => std::mem::take(&mut versions.loaded),
            Some(v) => {
                let index = versions
                    .loaded
                    .iter()
                    .position(|m| m.version == v)
                    .ok_or_else(|| RegistryError::VersionNotFound {
                        name: name.to_string(),
                        version: v.to_string(),
                        loaded: versions.labels(),
                    })?;
                vec![versions.loaded.remove(index)]
            }
        };
        if versions.loaded.is_empty() {
            models.remove(name);
        }
        let labels: Vec<String> = removed.iter().map(|m| m.version.clone()).collect();
        tracing::info!(model = name, versions = ?labels, "model unloaded");
        Ok(labels)
    }

    /// Every loaded version, by name, with a flag for the default version of each name.
    pub fn list(&self) -> Vec<(Arc<Model>, bool)> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models
            .values()
            .flat_map(|versions| {
                let count = versions.loaded.len();
                versions
                    .loaded
                    .iter()
                    .enumerate()
                    .map(move |(i, m)| (m.clone(), i + 1 == count))
            })
            .collect()
    }
}

/// Compiles and instantiates a model; runs on a blocking thread inside the tokio runtime (the
/// replicas' workers are tokio tasks).
fn build_model(runtime: &Runtime, request: LoadRequest) -> Result<Model, LoadError> {
    let component = runtime.load_component(&request.component)?;
    let sha256 = component.sha256.clone();
    // Until info() names the model, its first instance logs under the operator's name or the
    // component's digest.
    let provisional = request
        .name
        .clone()
        .unwrap_or_else(|| format!("sha256:{}", &sha256[..12]));
    let mut recipe = InstanceRecipe {
        component,
        model: provisional.into(),
        config: request.config.into(),
        limits: request.limits,
        compute: runtime.compute().clone(),
    };
    let mut first = Replica::new(recipe.clone())?;
    let info = first.info()?;
    tensor::check_info(&info).map_err(LoadError::InvalidInfo)?;
    let name = request.name.unwrap_or_else(|| info.name.clone());
    recipe.model = name.as_str().into();
    first.rename(recipe.model.clone());
    let factory: RunnerFactory<ReplicaRunner> =
        Arc::new(move || Replica::new(recipe.clone()).map(ReplicaRunner::new));
    let mut runners = vec![ReplicaRunner::new(first)];
    for _ in 1..request.replicas.max(1) {
        runners.push(factory()?);
    }
    let info = Arc::new(info);
    let batcher = Batcher::start(
        runners,
        factory,
        request.batching,
        info.clone(),
        request.limits.queue_capacity,
    );
    Ok(Model {
        name,
        version: info.version.clone(),
        info,
        limits: request.limits,
        sha256,
        batcher,
    })
}
