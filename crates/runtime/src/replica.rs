//! One instance of a model: a `Store` with its limits, the instantiated component, and the
//! model state that `init` built from the config.
//!
//! A call that traps (panic, out of memory, deadline, stack overflow) leaves the instance in an
//! unknown state, so the replica drops the whole `Store` and instantiates a fresh one from the
//! `InstancePre` (~tens of microseconds plus the model's `init`); the next call runs on it.

use crate::bindings::Model as ModelBindings;
use crate::bindings::sluice::model::types::{ModelError, Tensor as WitTensor};
use crate::convert::{info_from_wit, tensors_from_wit, tensors_to_wit};
use crate::host::{HostCall, StoreState};
use crate::{
    CallError, GraphSet, InstanceLimits, LoadError, ModelComponent, deadline_ticks, error_chain,
};
use sluice_compute::Backend;
use sluice_types::{ModelInfo, Tensor};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wasmtime::{Store, Trap};

/// Told each time an instance is replaced: the model's name and why.
pub type ReplacementObserver = Arc<dyn Fn(&str, Replacement) + Send + Sync>;

/// What every instance of one model is built from.
#[derive(Clone)]
pub struct InstanceRecipe {
    /// The compiled, linked component.
    pub component: ModelComponent,
    /// The name used in logs and errors.
    pub model: Arc<str>,
    /// Passed to `init`.
    pub config: Arc<[u8]>,
    /// Memory and time limits.
    pub limits: InstanceLimits,
    /// Where `compute` imports run.
    pub compute: Arc<dyn Backend>,
    /// The graphs `wasi:nn` gives the instances.
    pub graphs: GraphSet,
    /// Told each time an instance is replaced (for metrics).
    pub on_replace: ReplacementObserver,
}

struct Instance {
    store: Store<StoreState>,
    bindings: ModelBindings,
    _live: LiveInstance,
}

/// One in the runtime's count of live instances, for as long as the instance lives.
struct LiveInstance(Arc<AtomicUsize>);

impl LiveInstance {
    fn new(count: &Arc<AtomicUsize>) -> LiveInstance {
        count.fetch_add(1, Ordering::Relaxed);
        LiveInstance(count.clone())
    }
}

impl Drop for LiveInstance {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A model instance that survives the faults of the calls it runs.
pub struct Replica {
    recipe: InstanceRecipe,
    instance: Option<Instance>,
    /// Calls the current instance has run.
    calls: u64,
    /// Whether calls record the host calls they make ([`Replica::take_host_calls`]).
    recording: bool,
    /// The host calls of the last call, when recording.
    host_calls: Vec<HostCall>,
}

impl Replica {
    /// Instantiates the component and runs `init`; an error here means the model cannot load.
    pub fn new(recipe: InstanceRecipe) -> Result<Self, LoadError> {
        let instance = instantiate(&recipe)?;
        Ok(Replica {
            recipe,
            instance: Some(instance),
            calls: 0,
            recording: false,
            host_calls: Vec::new(),
        })
    }

    /// Makes the next calls record the host calls they make (`compute` operations and graph
    /// runs, with their times), or stop recording. Off, nothing is timed.
    pub fn record_host_calls(&mut self, on: bool) {
        self.recording = on;
    }

    /// The host calls the last call made, if it was recorded (at most
    /// [`crate::MAX_HOST_CALLS_RECORDED`]).
    pub fn take_host_calls(&mut self) -> Vec<HostCall> {
        std::mem::take(&mut self.host_calls)
    }

    /// The memory its instance holds now: linear memory and host-side tensors (0 while it
    /// has none, between a fault and the next call).
    pub fn resident_bytes(&self) -> usize {
        self.instance
            .as_ref()
            .map_or(0, |instance| instance.store.data().resident_bytes())
    }

    /// Changes the name this replica and its instances log under (known only after `info`).
    pub fn rename(&mut self, model: Arc<str>) {
        if let Some(instance) = &self.instance {
            instance.store.data().log.set_model(model.clone());
        }
        self.recipe.model = model;
    }

    /// Calls the model's `info`.
    pub fn info(&mut self) -> Result<ModelInfo, LoadError> {
        let recipe = &self.recipe;
        let instance = self
            .instance
            .as_mut()
            .ok_or_else(|| LoadError::InvalidInfo("the instance is gone".into()))?;
        arm_time_limit(&mut instance.store, recipe.limits.call_timeout);
        let result = instance
            .bindings
            .sluice_model_predictor()
            .call_info(&mut instance.store);
        let printed = instance.store.data().log.take_recent();
        result.map(info_from_wit).map_err(|trap| {
            // As for init and predict: the panic message the guest printed, not the frames.
            let memory = instance.store.data_mut().limiter.exceeded.take();
            let error = classify_trap(&trap, memory, &printed, &recipe.limits);
            LoadError::InvalidInfo(format!("info() failed: {error}"))
        })
    }

    /// Runs one batch and hands the inputs back with the result (so that a failed batch can
    /// be retried request by request). On a trap the instance is replaced before this returns,
    /// so the next call finds a healthy one.
    pub fn predict(
        &mut self,
        inputs: Vec<Tensor>,
    ) -> (Vec<Tensor>, Result<Vec<Tensor>, CallError>) {
        let inputs = tensors_to_wit(inputs);
        let result = self.call_predict(&inputs);
        (tensors_from_wit(inputs), result.map(tensors_from_wit))
    }

    fn call_predict(&mut self, inputs: &[WitTensor]) -> Result<Vec<WitTensor>, CallError> {
        let instance = match &mut self.instance {
            Some(instance) => instance,
            None => self.instance.insert(
                instantiate(&self.recipe).map_err(|e| CallError::Unavailable(e.to_string()))?,
            ),
        };
        arm_time_limit(&mut instance.store, self.recipe.limits.call_timeout);
        instance.store.data_mut().host_calls = self.recording.then(Vec::new);
        let result = instance
            .bindings
            .sluice_model_predictor()
            .call_predict(&mut instance.store, inputs);
        self.host_calls = instance
            .store
            .data_mut()
            .host_calls
            .take()
            .unwrap_or_default();
        let printed = instance.store.data().log.take_recent();
        self.calls += 1;
        let answer = match result {
            Ok(Ok(outputs)) => Ok(outputs),
            Ok(Err(ModelError::InvalidInput(message))) => Err(CallError::RejectedInput(message)),
            Ok(Err(ModelError::Internal(message))) => Err(CallError::ModelFailed(message)),
            Err(trap) => {
                let memory = instance.store.data_mut().limiter.exceeded.take();
                let error = classify_trap(&trap, memory, &printed, &self.recipe.limits);
                tracing::warn!(model = %self.recipe.model, %error, details = %error_chain(&trap),
                    "discarding the instance after a fault");
                self.replace(Replacement::Fault);
                return Err(error);
            }
        };
        let limit = self.recipe.limits.max_calls_per_instance;
        if limit > 0 && self.calls >= limit {
            self.replace(Replacement::MaxCalls);
        }
        answer
    }

    /// Drops the current instance and makes a fresh one from the `InstancePre` (with `init`);
    /// if that fails, the next call tries again.
    fn replace(&mut self, why: Replacement) {
        (self.recipe.on_replace)(&self.recipe.model, why);
        self.calls = 0;
        self.instance = match instantiate(&self.recipe) {
            Ok(fresh) => Some(fresh),
            Err(e) => {
                tracing::error!(model = %self.recipe.model, error = %e,
                    "re-instantiation failed; will retry on the next request");
                None
            }
        };
    }
}

/// Why an instance was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replacement {
    /// The call trapped (or ran out of time or memory): the `Store` is unusable.
    Fault,
    /// The instance ran `max_calls_per_instance` calls.
    MaxCalls,
}

impl Replacement {
    /// `fault` or `max-calls` (the metric's label).
    pub fn label(self) -> &'static str {
        match self {
            Replacement::Fault => "fault",
            Replacement::MaxCalls => "max-calls",
        }
    }
}

fn instantiate(recipe: &InstanceRecipe) -> Result<Instance, LoadError> {
    let state = StoreState::new(
        recipe.model.clone(),
        recipe.limits.memory_bytes,
        recipe.compute.clone(),
        recipe.graphs.clone(),
    );
    let pre = recipe.component.pre()?;
    let mut store = Store::new(pre.engine(), state);
    store.limiter(|state| &mut state.limiter);
    arm_time_limit(&mut store, recipe.limits.call_timeout);
    let bindings = pre
        .instantiate(&mut store)
        .map_err(|e| LoadError::InitFailed(format!("instantiation failed: {}", error_chain(&e))))?;
    let init = bindings
        .sluice_model_predictor()
        .call_init(&mut store, &recipe.config);
    let printed = store.data().log.take_recent();
    match init {
        Ok(Ok(())) => Ok(Instance {
            store,
            bindings,
            _live: LiveInstance::new(&recipe.component.preparer.live_instances),
        }),
        Ok(Err(ModelError::InvalidInput(m) | ModelError::Internal(m))) => {
            Err(LoadError::InitFailed(m))
        }
        Err(trap) => {
            let memory = store.data_mut().limiter.exceeded.take();
            Err(LoadError::InitFailed(
                classify_trap(&trap, memory, &printed, &recipe.limits).to_string(),
            ))
        }
    }
}

/// Arms the time limit of the next call into `store`: the epoch deadline stops the guest's own
/// code, and graph runs (host calls, which the epoch cannot interrupt) are stopped at the same
/// moment.
fn arm_time_limit(store: &mut Store<StoreState>, limit: Duration) {
    store.set_epoch_deadline(deadline_ticks(limit));
    store.data_mut().call_deadline = Instant::now().checked_add(limit);
}

/// Names the cause of a trap: the deadline, the memory cap, or the trap itself together with
/// the last lines the guest printed (where a Rust panic message lands).
fn classify_trap(
    trap: &wasmtime::Error,
    memory_exceeded: Option<String>,
    printed: &[String],
    limits: &InstanceLimits,
) -> CallError {
    if let Some(message) = memory_exceeded {
        return CallError::MemoryExhausted(message);
    }
    let mut message = match trap.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => {
            return CallError::Timeout {
                limit: limits.call_timeout,
            };
        }
        Some(Trap::StackOverflow) => {
            "stack overflow (the wasm call stack is exhausted)".to_string()
        }
        // The trap code alone; the wasm backtrace goes to the log, not to the client.
        Some(trap) => trap.to_string(),
        None => trap.root_cause().to_string(),
    };
    if !printed.is_empty() {
        message.push_str("; the model printed: ");
        message.push_str(&printed.join(" | "));
    }
    CallError::Trapped(message)
}
