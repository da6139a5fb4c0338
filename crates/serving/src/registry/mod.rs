//! The models this server has loaded, by name and version, and the one place a request is
//! checked, queued and its answer checked on the way to and from a model's replicas.
//!
//! A name maps to one or more versions; a request that names no version goes to the default
//! one: the version pinned with `set_default_version`, else the most recently loaded. Loading
//! a name and version that exist replaces them once the new one is ready: requests already
//! queued on the old version still finish (its replicas drain when the last request holding it
//! is answered).

mod graphs;
mod residency;

pub use graphs::{DEFAULT_GRAPH_MEMORY_BYTES, GraphEngine, GraphRequest, GraphSource};

use crate::autoscale::{self, Autoscaler, DEFAULT_SCALE_DOWN_AFTER, ReplicaRange};
use crate::batching::{
    BatchError, BatchLoad, BatchStats, Batcher, BatchingConfig, ReplicaRunner, RunnerFactory,
};
use crate::metrics::{self, ModelMetrics};
use crate::settings::ModelLimits;
use crate::telemetry;
use graphs::GraphReservation;
use opentelemetry::KeyValue;
use residency::Residency;
use sluice_graphs::GraphError;
use sluice_runtime::{InstanceRecipe, LoadError, ModelComponent, Replica, Runtime};
use sluice_types::names::{check_name, quoted};
use sluice_types::{ErrorKind, HasKind, ModelInfo, Tensor, contract};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use thiserror::Error;
use tokio::time::Instant;

/// Why a registry operation failed.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// No model has this name.
    #[error("model `{}` is not loaded", quoted(.0))]
    ModelNotFound(String),
    /// The model exists but not in this version.
    #[error("model `{name}` has no version `{}`; loaded versions: {loaded:?}", quoted(.version))]
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
        error: BatchError,
    },
    /// The component could not be loaded.
    #[error("cannot load the model: {0}")]
    Load(#[from] LoadError),
    /// A graph of the model could not be loaded.
    #[error("cannot load the model's graph `{graph}`: {error}")]
    Graph {
        /// The graph's name.
        graph: String,
        /// Why.
        error: GraphError,
    },
    /// The model's graphs do not fit the host's graph memory budget.
    #[error(
        "the model's graphs take {needed} bytes and {resident} bytes of graphs are resident, \
         over this host's graph memory budget of {budget} bytes (the server's \
         `--graph-memory-mib`)"
    )]
    GraphBudget {
        /// Bytes of the model's graphs.
        needed: u64,
        /// Bytes of graphs resident already.
        resident: u64,
        /// The budget.
        budget: u64,
    },
    /// The change would run more model instances than this host allows.
    #[error(
        "{change} would run {total} model instances on this host, over its limit of {limit} \
         (the server's `--max-instances`)"
    )]
    TooManyInstances {
        /// What was asked, e.g. "scaling `m` to 20000 replicas".
        change: String,
        /// The instances there would be.
        total: usize,
        /// The limit.
        limit: usize,
    },
    /// A scale of an autoscaled model to a count outside its range.
    #[error(
        "replicas: {replicas} is outside {min}..={max}, the range `{model}`'s replicas are \
         autoscaled in; scale within it (or load it again with another range)",
        min = range.min,
        max = range.max
    )]
    OutsideRange {
        /// The model.
        model: String,
        /// The count asked for.
        replicas: usize,
        /// Its range.
        range: ReplicaRange,
    },
}

impl HasKind for RegistryError {
    fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::ModelNotFound(_) | RegistryError::VersionNotFound { .. } => {
                ErrorKind::NotFound
            }
            RegistryError::InvalidInput { .. } | RegistryError::OutsideRange { .. } => {
                ErrorKind::InvalidArgument
            }
            RegistryError::Call { error, .. } => error.kind(),
            RegistryError::Load(load) => load.kind(),
            RegistryError::Graph { error, .. } => error.kind(),
            RegistryError::TooManyInstances { .. } | RegistryError::GraphBudget { .. } => {
                ErrorKind::ResourceExhausted
            }
        }
    }
}

/// What to load.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// The component's bytes.
    pub component: Vec<u8>,
    /// Passed to the model's `init`.
    pub config: Vec<u8>,
    /// Graphs its instances load through `wasi:nn`.
    pub graphs: Vec<GraphRequest>,
    /// Serve under this name instead of the model's own.
    pub name: Option<String>,
    /// Serve as this version instead of the one the model declares.
    pub version: Option<String>,
    /// Instances to run (at least 1).
    pub replicas: usize,
    /// Limits of the instances and the queues.
    pub limits: ModelLimits,
    /// How requests are batched.
    pub batching: BatchingConfig,
    /// The range the server's autoscaler keeps the replicas in (`None`: `replicas`, fixed).
    pub autoscale: Option<ReplicaRange>,
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
    /// The names of its graphs.
    pub graphs: Vec<String>,
    metrics: Arc<ModelMetrics>,
    /// Its graphs' share of the graph memory budget, released with the model.
    _graph_memory: GraphReservation,
    batcher: Batcher<ReplicaRunner>,
    /// Sizes the replicas by load, when the model has a range.
    autoscaler: Option<Mutex<Autoscaler>>,
    /// What it costs to keep resident, and when it was last used (for the memory budget).
    residency: Residency,
    /// Its compiled code, which the memory budget may evict while it has no replica.
    component: ModelComponent,
}

impl Model {
    /// Its requests and latency so far (for the live dashboard).
    pub fn traffic(&self) -> metrics::Traffic {
        self.metrics.traffic()
    }

    /// The range its replicas are autoscaled in, if they are.
    pub fn replica_range(&self) -> Option<ReplicaRange> {
        let autoscaler = self.autoscaler.as_ref()?;
        Some(autoscaler.lock().unwrap_or_else(|p| p.into_inner()).range())
    }

    /// Number of replicas taking requests.
    pub fn replicas(&self) -> usize {
        self.batcher.replicas()
    }

    /// Memory one replica holds, as its first instance did after `init` (linear memory and
    /// host-side tensors): the estimate the memory budget counts per replica.
    pub fn instance_bytes(&self) -> u64 {
        self.residency.instance_bytes
    }

    /// Memory its compiled code takes (shared with every version of the same component).
    pub fn code_bytes(&self) -> u64 {
        self.component.code_bytes() as u64
    }

    /// Whether it is resident: it has a replica running, or its compiled code is in memory
    /// (its next request starts a replica without reading the code back from disk).
    pub fn residence(&self) -> Residence {
        if self.replicas() > 0 {
            Residence::Running
        } else if self.component.code_resident() {
            Residence::CodeOnly
        } else {
            Residence::Registered
        }
    }

    /// The memory its replicas hold by that estimate: 0 when it has none (scaled to zero,
    /// or evicted under the memory budget).
    pub fn resident_bytes(&self) -> u64 {
        self.residency.instance_bytes * self.replicas() as u64
    }

    /// The requests it holds now (queued, in flight).
    pub fn load(&self) -> BatchLoad {
        self.batcher.load()
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

    /// Why the model cannot answer now (every replica died and none could be started again);
    /// `None` while it serves.
    pub fn unavailable(&self) -> Option<String> {
        self.batcher.unavailable()
    }

    /// Checks `inputs`, queues them on the replica expected to answer soonest, and returns
    /// the outputs (checked against the model's declaration by the replica's worker). The
    /// request must be answered by `deadline`, by default now + the model's SLO. Every
    /// request is counted in the metrics, with the kind of its failure if it fails.
    pub async fn predict(
        &self,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Tensor>, RegistryError> {
        let started = std::time::Instant::now();
        self.residency.touch(started);
        let span = telemetry::LayerSpan::start("model", || {
            vec![
                KeyValue::new("sluice.model", self.name.clone()),
                KeyValue::new("sluice.model.version", self.version.clone()),
            ]
        });
        let result = span
            .run_or_fail(self.checked_predict(inputs, deadline))
            .await;
        let failure = result.as_ref().err().map(HasKind::kind);
        self.metrics.record_request(started.elapsed(), failure);
        result
    }

    async fn checked_predict(
        &self,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Tensor>, RegistryError> {
        let bytes: usize = inputs.iter().map(|t| t.data.len()).sum();
        if bytes > self.limits.max_request_bytes {
            return Err(RegistryError::InvalidInput {
                model: self.name.clone(),
                message: format!(
                    "the request's inputs are {bytes} bytes, over the model's limit of {} bytes",
                    self.limits.max_request_bytes
                ),
            });
        }
        let (inputs, rows) = contract::check_inputs(&self.info, inputs).map_err(|message| {
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
}

/// How much of a ready model version is in memory (see [`Model::residence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residence {
    /// It has replicas taking requests.
    Running,
    /// No replica, but its compiled code is in memory.
    CodeOnly,
    /// Only registered: neither replicas nor code (evicted under the memory budget); its next
    /// request reads the code back from the precompiled cache and starts a replica.
    Registered,
}

impl Residence {
    /// Its name in metrics and the APIs: `running`, `code-only` or `registered`.
    pub fn label(self) -> &'static str {
        match self {
            Residence::Running => "running",
            Residence::CodeOnly => "code-only",
            Residence::Registered => "registered",
        }
    }
}

/// Where a model version is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelState {
    /// Being compiled and instantiated (repository loads, whose name and version are known
    /// before the component is read).
    Loading,
    /// Serving.
    Ready,
    /// It cannot serve: the last attempt to load it failed (an older version, if any, keeps
    /// serving), or every replica died and none could be started again (it is retried).
    Failed(String),
    /// Unloaded, but requests it accepted are still being answered.
    Draining,
    /// Unloaded and drained (the most recent ones are remembered).
    Unloaded,
}

/// One row of [`Registry::list`].
pub struct ModelEntry {
    /// The model's name.
    pub name: String,
    /// The version label.
    pub version: String,
    /// Its state.
    pub state: ModelState,
    /// The running model (ready or draining).
    pub model: Option<Arc<Model>>,
    /// Whether requests without a version go to it.
    pub is_default: bool,
}

/// How many retired versions `list` remembers.
const RETIRED_REMEMBERED: usize = 64;

/// A version taken out of service.
struct Retired {
    name: String,
    version: String,
    model: Weak<Model>,
}

#[derive(Default)]
struct Versions {
    /// Ready versions, in load order.
    loaded: Vec<Arc<Model>>,
    /// The version set with `set_default_version`; otherwise the last loaded is the default.
    pinned: Option<String>,
    /// Versions being loaded.
    loading: Vec<String>,
    /// Versions whose last load failed, with the reason.
    failed: BTreeMap<String, String>,
}

impl Versions {
    fn labels(&self) -> Vec<String> {
        self.loaded.iter().map(|m| m.version.clone()).collect()
    }

    fn default_model(&self) -> Option<&Arc<Model>> {
        let pinned = self.pinned.as_deref();
        pinned
            .and_then(|v| self.loaded.iter().find(|m| m.version == v))
            .or_else(|| self.loaded.last())
    }

    fn is_empty(&self) -> bool {
        self.loaded.is_empty() && self.loading.is_empty() && self.failed.is_empty()
    }
}

/// The model instances a host runs by default, over all models and replicas. Each reserves
/// its address space and a few memory maps: a `ScaleModel` to 20 000 replicas ran into the
/// kernel's per-process map limit at 16 345 instances (and wasmtime's threads then failed),
/// so the bound stays well below it.
pub const DEFAULT_MAX_INSTANCES: usize = 4096;

/// All loaded models.
pub struct Registry {
    runtime: Arc<Runtime>,
    graphs: Arc<GraphEngine>,
    max_instances: usize,
    models: RwLock<BTreeMap<String, Versions>>,
    /// Versions taken out of service, most recent last: draining while a request still holds
    /// them, then unloaded.
    retired: Mutex<Vec<Retired>>,
    /// How long an autoscaled model must have a replica to spare before one is removed.
    scale_down_after: Duration,
    /// Bytes the models' instances and code may hold before idle ones are evicted.
    memory_budget: Option<u64>,
}

impl Registry {
    /// An empty registry whose models run on `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Registry {
            runtime,
            graphs: Arc::new(GraphEngine::none()),
            max_instances: DEFAULT_MAX_INSTANCES,
            models: RwLock::default(),
            retired: Mutex::default(),
            scale_down_after: DEFAULT_SCALE_DOWN_AFTER,
            memory_budget: None,
        }
    }

    /// Keeps what the models hold (their replicas' instances and their compiled code, as
    /// [`Model::resident_bytes`] and [`Model::code_bytes`] estimate it) within `bytes`:
    /// past it, models that may scale to zero and hold no request lose their replicas, and
    /// then idle components their code, least recently used first (see
    /// [`Registry::enforce_memory_budget`]).
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// The memory budget, if there is one.
    pub fn memory_budget(&self) -> Option<u64> {
        self.memory_budget
    }

    /// What the loaded models hold by the budget's estimate: every resident replica, and the
    /// code of every distinct component in memory once.
    pub fn resident_bytes(&self) -> u64 {
        let models = self.read();
        let loaded = || models.values().flat_map(|versions| &versions.loaded);
        // Once per distinct component (versions of one share its code, and asking whether it
        // is in memory takes a lock).
        let mut code: BTreeMap<&str, u64> = BTreeMap::new();
        for model in loaded() {
            code.entry(&model.sha256).or_insert_with(|| {
                let resident = model.component.code_resident();
                if resident { model.code_bytes() } else { 0 }
            });
        }
        loaded().map(|m| m.resident_bytes()).sum::<u64>() + code.values().sum::<u64>()
    }

    /// If the models hold more than the memory budget, scales to zero the least recently
    /// used of those that may scale to zero (`min_replicas = 0`) and hold no request, as few
    /// as it takes to fit; then, if that was not enough, drops the compiled code of the least
    /// recently used components none of whose versions has a replica or a request (it is read
    /// back from the precompiled cache when one is asked for again). Returns the versions
    /// scaled to zero (name, version). Runs every [`autoscale::TICK`] with the autoscaler.
    pub async fn enforce_memory_budget(&self) -> Vec<(String, String)> {
        let Some(budget) = self.memory_budget else {
            return Vec::new();
        };
        let resident = self.resident_bytes();
        if resident <= budget {
            return Vec::new();
        }
        let loaded: Vec<Arc<Model>> = self
            .read()
            .values()
            .flat_map(|versions| versions.loaded.iter())
            .cloned()
            .collect();
        let candidates: Vec<&Arc<Model>> = loaded
            .iter()
            .filter(|model| {
                model.replicas() > 0
                    && model.replica_range().is_some_and(|range| range.min == 0)
                    && model.load().in_flight == 0
            })
            .collect();
        let costs: Vec<residency::Candidate> = candidates
            .iter()
            .map(|model| residency::Candidate {
                bytes: model.resident_bytes(),
                last_used: model.residency.last_used(),
            })
            .collect();
        let mut evicted = Vec::new();
        for index in residency::evictions(&costs, resident, budget) {
            let model = candidates[index];
            match self.scale(model, 0).await {
                Ok(()) => {
                    model.metrics.record_eviction();
                    tracing::info!(model = %model.name, version = %model.version,
                        freed_bytes = costs[index].bytes, resident, budget,
                        "evicted under the memory budget");
                    evicted.push((model.name.clone(), model.version.clone()));
                }
                Err(error) => tracing::warn!(model = %model.name, version = %model.version,
                    %error, "could not evict under the memory budget"),
            }
        }
        self.evict_code(&loaded, budget);
        evicted
    }

    /// The second step of [`Registry::enforce_memory_budget`]: code of idle components, least
    /// recently used first, until the models fit `budget` (or no more can go).
    fn evict_code(&self, loaded: &[Arc<Model>], budget: u64) {
        let resident = self.resident_bytes();
        if resident <= budget {
            return;
        }
        // By component: whether every version of it is idle, and when one was last used.
        let mut components: BTreeMap<&str, (&Model, bool, u64)> = BTreeMap::new();
        for model in loaded {
            let idle = model.replicas() == 0 && model.load().in_flight == 0;
            let last_used = model.residency.last_used();
            let entry = components
                .entry(&model.sha256)
                .or_insert((model, true, last_used));
            entry.1 &= idle;
            entry.2 = entry.2.max(last_used);
        }
        let idle: Vec<(&Model, u64)> = components
            .into_values()
            .filter(|&(model, idle, _)| idle && model.component.code_resident())
            .map(|(model, _, last_used)| (model, last_used))
            .collect();
        let costs: Vec<residency::Candidate> = idle
            .iter()
            .map(|&(model, last_used)| residency::Candidate {
                bytes: model.code_bytes(),
                last_used,
            })
            .collect();
        for index in residency::evictions(&costs, resident, budget) {
            let model = idle[index].0;
            if model.component.evict_code() {
                metrics::record_code_eviction();
                tracing::info!(component = %model.sha256, freed_bytes = costs[index].bytes,
                    resident, budget, "compiled code evicted under the memory budget");
            }
        }
    }

    /// Removes a replica of an autoscaled model once one has been spare for `delay` (default
    /// [`DEFAULT_SCALE_DOWN_AFTER`]).
    pub fn with_scale_down_after(mut self, delay: Duration) -> Self {
        self.scale_down_after = delay;
        self
    }

    /// Sizes the replicas of the models loaded with a [`ReplicaRange`] by their load, every
    /// [`autoscale::TICK`], for as long as the registry lives (see [`crate::autoscale`]), and
    /// then keeps to the memory budget, if there is one.
    pub fn start_autoscaler(self: &Arc<Self>) {
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(autoscale::TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                registry.autoscale_once().await;
                registry.enforce_memory_budget().await;
            }
        });
    }

    /// One round of the autoscaler over every model that has a range.
    async fn autoscale_once(&self) {
        let autoscaled: Vec<Arc<Model>> = self
            .read()
            .values()
            .flat_map(|versions| versions.loaded.iter())
            .filter(|model| model.autoscaler.is_some())
            .cloned()
            .collect();
        for model in autoscaled {
            let Some(autoscaler) = &model.autoscaler else {
                continue;
            };
            let load = model.load();
            let sample = autoscale::Sample {
                at: tokio::time::Instant::now(),
                replicas: model.replicas(),
                queued: load.queued,
                in_flight: load.in_flight,
                oldest_wait: load.oldest_wait,
                slo: model.batching().slo,
            };
            let wanted = autoscaler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .decide(sample);
            let Some(replicas) = wanted else { continue };
            match self.scale(&model, replicas).await {
                Ok(()) => tracing::info!(model = %model.name, version = %model.version,
                    from = sample.replicas, to = replicas, queued = load.queued,
                    oldest_wait_ms = load.oldest_wait.as_millis() as u64, "autoscaled"),
                Err(error) => tracing::warn!(model = %model.name, version = %model.version,
                    to = replicas, %error, "could not autoscale"),
            }
        }
    }

    /// Runs at most `limit` model instances (all models, all replicas); loads and scales
    /// beyond it are refused. Default [`DEFAULT_MAX_INSTANCES`].
    pub fn with_max_instances(mut self, limit: usize) -> Self {
        self.max_instances = limit.max(1);
        self
    }

    /// Loads models' graphs on `engine` (default: none, and a model with graphs fails to
    /// load).
    pub fn with_graph_engine(mut self, engine: GraphEngine) -> Self {
        self.graphs = Arc::new(engine);
        self
    }

    /// The engine models' graphs run on.
    pub fn graph_engine(&self) -> &Arc<GraphEngine> {
        &self.graphs
    }

    /// The runtime the models run on.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Refuses a change that adds `adding` instances to those running, if the total would
    /// pass the limit.
    fn check_instances(
        &self,
        change: impl FnOnce() -> String,
        adding: usize,
    ) -> Result<(), RegistryError> {
        // The runtime's count, not a sum over the models: a check per load must not cost a
        // pass over thousands of them.
        let running = self.runtime.live_instances();
        let total = running.saturating_add(adding);
        if total > self.max_instances {
            return Err(RegistryError::TooManyInstances {
                change: change(),
                total,
                limit: self.max_instances,
            });
        }
        Ok(())
    }

    /// Changes the number of replicas of `model` without dropping requests. New replicas all
    /// start before any takes requests; if one cannot, none is added and the reason is
    /// returned. An autoscaled model is only scaled within its range (the autoscaler goes on
    /// from the new count); one whose range starts at 0 may be scaled to zero.
    pub async fn scale(&self, model: &Model, replicas: usize) -> Result<(), RegistryError> {
        let range = model.replica_range();
        // Zero only for a model whose range allows it (it scales to zero when idle).
        let replicas = if range.is_some_and(|r| r.min == 0) {
            replicas
        } else {
            replicas.max(1)
        };
        if let Some(range) = range
            && range.clamp(replicas) != replicas
        {
            return Err(RegistryError::OutsideRange {
                model: model.name.clone(),
                replicas,
                range,
            });
        }
        let adding = replicas.saturating_sub(model.replicas());
        self.check_instances(
            || format!("scaling `{}` to {replicas} replicas", model.name),
            adding,
        )?;
        Ok(model.batcher.scale(replicas).await?)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Versions>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Versions>> {
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Compiles, instantiates and initialises a model (on a blocking thread), then adds it;
    /// unless another version is pinned it becomes the default of its name. A version that
    /// exists is replaced once the new one is ready. When the request names both the model
    /// and the version, the load shows as `Loading` meanwhile and a failure is recorded as
    /// `Failed` for `list`; versions already serving are not touched by a failure.
    pub async fn load(&self, mut request: LoadRequest) -> Result<Arc<Model>, RegistryError> {
        if let Some(range) = request.autoscale {
            request.replicas = range.clamp(request.replicas);
        }
        // Asked to start with none: the first replica answers `info()`, then goes.
        let start_at_zero = request.replicas == 0 && request.autoscale.is_some();
        let replicas = request.replicas.max(1);
        self.check_instances(|| format!("loading {replicas} replicas"), replicas)?;
        let known = request.name.clone().zip(request.version.clone());
        let loading = known
            .as_ref()
            .map(|(name, version)| Loading::start(self, name, version));
        let (runtime, graphs) = (self.runtime.clone(), self.graphs.clone());
        let scale_down_after = self.scale_down_after;
        let built = tokio::task::spawn_blocking(move || {
            build_model(&runtime, &graphs, request, scale_down_after)
        })
        .await
        .unwrap_or_else(|e| {
            Err(RegistryError::Load(LoadError::Internal(format!(
                "the load task failed: {e}"
            ))))
        });
        let (model, replaced) = {
            let mut models = self.write();
            if let Some(loading) = loading {
                loading.finish(&mut models, built.as_ref().err());
            }
            let model = Arc::new(built?);
            let versions = models.entry(model.name.clone()).or_default();
            let replaced: Vec<Arc<Model>> = versions
                .loaded
                .extract_if(.., |m| m.version == model.version)
                .collect();
            versions.loaded.push(model.clone());
            (model, replaced)
        };
        self.drain(replaced);
        if start_at_zero {
            model.batcher.scale(0).await?;
        }
        tracing::info!(model = %model.name, version = %model.version, replicas = model.replicas(),
            sha256 = %model.sha256, "model loaded");
        Ok(model)
    }

    /// Remembers versions taken out of service, to list them as draining, then unloaded.
    fn drain(&self, models: Vec<Arc<Model>>) {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.extend(models.iter().map(|m| Retired {
            name: m.name.clone(),
            version: m.version.clone(),
            model: Arc::downgrade(m),
        }));
        let excess = retired.len().saturating_sub(RETIRED_REMEMBERED);
        retired.drain(..excess);
    }

    /// The model `name` in `version`, or its default version.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<Model>, RegistryError> {
        let models = self.read();
        let versions = models
            .get(name)
            .filter(|v| !v.loaded.is_empty())
            .ok_or_else(|| RegistryError::ModelNotFound(name.to_string()))?;
        let found = match version {
            None => versions.default_model(),
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

    /// The ready versions of `name`, in load order.
    pub fn ready_versions(&self, name: &str) -> Vec<String> {
        self.read()
            .get(name)
            .map(Versions::labels)
            .unwrap_or_default()
    }

    /// Makes `version` the default of `name` (roll back or forward), atomically: a request
    /// sees either the old default or the new one. `None` returns to "the last loaded".
    pub fn set_default_version(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(), RegistryError> {
        let mut models = self.write();
        let versions = models
            .get_mut(name)
            .filter(|v| !v.loaded.is_empty())
            .ok_or_else(|| RegistryError::ModelNotFound(name.to_string()))?;
        if let Some(v) = version
            && !versions.loaded.iter().any(|m| m.version == v)
        {
            return Err(RegistryError::VersionNotFound {
                name: name.to_string(),
                version: v.to_string(),
                loaded: versions.labels(),
            });
        }
        versions.pinned = version.map(str::to_string);
        tracing::info!(model = name, version = ?version, "default version set");
        Ok(())
    }

    /// Unloads one version, or all versions when `version` is `None`; returns the versions
    /// removed. Requests already queued on them still finish (they show as `Draining`).
    pub fn unload(&self, name: &str, version: Option<&str>) -> Result<Vec<String>, RegistryError> {
        let mut models = self.write();
        let versions = models
            .get_mut(name)
            .ok_or_else(|| RegistryError::ModelNotFound(name.to_string()))?;
        let removed = match version {
            None => {
                versions.failed.clear();
                std::mem::take(&mut versions.loaded)
            }
            Some(v) => {
                let failed = versions.failed.remove(v).is_some();
                let index = versions.loaded.iter().position(|m| m.version == v);
                match index {
                    Some(index) => vec![versions.loaded.remove(index)],
                    None if failed => Vec::new(),
                    None => {
                        return Err(RegistryError::VersionNotFound {
                            name: name.to_string(),
                            version: v.to_string(),
                            loaded: versions.labels(),
                        });
                    }
                }
            }
        };
        if versions
            .pinned
            .as_deref()
            .is_some_and(|p| !versions.loaded.iter().any(|m| m.version == p))
        {
            versions.pinned = None;
        }
        if versions.is_empty() {
            models.remove(name);
        }
        drop(models);
        let labels: Vec<String> = removed.iter().map(|m| m.version.clone()).collect();
        self.drain(removed);
        tracing::info!(model = name, versions = ?labels, "model unloaded");
        Ok(labels)
    }

    /// Every version the registry knows of: ready, loading, failed, then the recently
    /// retired (draining or unloaded).
    pub fn list(&self) -> Vec<ModelEntry> {
        let mut entries = Vec::new();
        for (name, versions) in self.read().iter() {
            let default = versions.default_model();
            for model in &versions.loaded {
                entries.push(ModelEntry {
                    name: name.clone(),
                    version: model.version.clone(),
                    state: model
                        .unavailable()
                        .map_or(ModelState::Ready, ModelState::Failed),
                    is_default: default.is_some_and(|d| Arc::ptr_eq(d, model)),
                    model: Some(model.clone()),
                });
            }
            let others = versions
                .loading
                .iter()
                .map(|v| (v, ModelState::Loading))
                .chain(
                    versions
                        .failed
                        .iter()
                        .map(|(v, why)| (v, ModelState::Failed(why.clone()))),
                );
            for (version, state) in others {
                entries.push(ModelEntry {
                    name: name.clone(),
                    version: version.clone(),
                    state,
                    model: None,
                    is_default: false,
                });
            }
        }
        let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        for r in retired.iter() {
            let model = r.model.upgrade();
            let serving = entries.iter().any(|e| {
                e.name == r.name && e.version == r.version && e.state == ModelState::Ready
            });
            if model.is_none() && serving {
                continue; // replaced by a reload and drained: nothing to report
            }
            entries.push(ModelEntry {
                name: r.name.clone(),
                version: r.version.clone(),
                state: if model.is_some() {
                    ModelState::Draining
                } else {
                    ModelState::Unloaded
                },
                model,
                is_default: false,
            });
        }
        entries
    }
}

/// A version shown as `Loading` while a load names it; if the load is dropped before it
/// finishes, the version stops showing as loading.
struct Loading<'a> {
    registry: &'a Registry,
    name: String,
    version: String,
    finished: bool,
}

impl<'a> Loading<'a> {
    fn start(registry: &'a Registry, name: &str, version: &str) -> Self {
        registry
            .write()
            .entry(name.to_string())
            .or_default()
            .loading
            .push(version.to_string());
        Loading {
            registry,
            name: name.to_string(),
            version: version.to_string(),
            finished: false,
        }
    }

    /// Ends the loading state, recording the failure (or clearing an older one).
    fn finish(mut self, models: &mut BTreeMap<String, Versions>, failure: Option<&RegistryError>) {
        let versions = models.entry(self.name.clone()).or_default();
        versions.loading.retain(|v| *v != self.version);
        match failure {
            None => versions.failed.remove(&self.version),
            Some(e) => versions.failed.insert(self.version.clone(), e.to_string()),
        };
        self.finished = true;
    }
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut models = self.registry.write();
        if let Some(versions) = models.get_mut(&self.name) {
            versions.loading.retain(|v| *v != self.version);
            if versions.is_empty() {
                models.remove(&self.name);
            }
        }
    }
}

/// Compiles and instantiates a model; runs on a blocking thread inside the tokio runtime (the
/// replicas' workers are tokio tasks).
fn build_model(
    runtime: &Runtime,
    graphs: &Arc<GraphEngine>,
    request: LoadRequest,
    scale_down_after: Duration,
) -> Result<Model, RegistryError> {
    let component = runtime.load_component(&request.component)?;
    let handle = component.clone();
    let (graph_set, graph_memory) = graphs.load_set(&request.graphs)?;
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
        limits: request.limits.instance(),
        compute: runtime.compute().clone(),
        graphs: graph_set.clone(),
        on_replace: Arc::new(|model, why| metrics::record_instance_replaced(model, why.label())),
    };
    let mut first = Replica::new(recipe.clone())?;
    let info = first.info()?;
    contract::check_info(&info).map_err(LoadError::InvalidInfo)?;
    let name = request.name.unwrap_or_else(|| info.name.clone());
    let version = request.version.unwrap_or_else(|| info.version.clone());
    check_name("name", &name)
        .and_then(|()| check_name("version", &version))
        .map_err(LoadError::InvalidName)?;
    recipe.model = name.as_str().into();
    first.rename(recipe.model.clone());
    let metrics = Arc::new(ModelMetrics::new(recipe.model.clone()));
    let factory: RunnerFactory<ReplicaRunner> =
        Arc::new(move || Replica::new(recipe.clone()).map(ReplicaRunner::new));
    let residency = Residency::new(first.resident_bytes() as u64);
    let mut runners = vec![ReplicaRunner::new(first)];
    for _ in 1..request.replicas.max(1) {
        runners.push(factory()?);
    }
    let info = Arc::new(info);
    let batcher = Batcher::start(
        metrics.clone(),
        runners,
        factory,
        request.batching,
        info.clone(),
        &request.limits,
    );
    Ok(Model {
        name,
        version,
        info,
        limits: request.limits,
        sha256,
        graphs: graph_set.keys().cloned().collect(),
        metrics,
        _graph_memory: graph_memory,
        batcher,
        autoscaler: request
            .autoscale
            .map(|range| Mutex::new(Autoscaler::new(range, scale_down_after))),
        residency,
        component: handle,
    })
}
