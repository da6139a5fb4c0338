//! # sluice-runtime: the sandbox
//!
//! One wasmtime [`Engine`] for the process, components compiled once and cached on disk, and
//! models run as isolated instances (replicas) with hard limits. This is the only crate of
//! sluice that depends on wasmtime; above it, tensors and declarations are the plain types of
//! `sluice-types`, converted to and from the generated bindings here by moving their fields.
//!
//! - [`Runtime`] owns the engine (epoch interruption on, ticked by one host thread), the
//!   [`Linker`] with the host's imports (WASI with nothing granted, and `compute`), and the
//!   precompiled-code cache. [`Runtime::load_component`] turns bytes into a [`ModelComponent`]
//!   or a [`LoadError`] that says what is wrong; bytes already in use (another version of the
//!   same architecture with other parameters) share the one compiled component in memory,
//!   which can be dropped while no instance runs it and is read back from the precompiled
//!   cache when one is next made ([`ModelComponent::evict_code`]).
//! - `wasi:nn` (the standard interface, `wit/deps/wasi-nn`) gives instances the graphs of
//!   their model version ([`GraphSet`]), which run natively (`sluice-graphs`).
//! - [`Replica`] runs one instance: `init` with the model's config, then `predict` calls under
//!   a deadline and a memory cap; after a trap it throws the `Store` away and starts afresh.
//!   The serving layer's batcher decides what each replica runs and when.

mod component_cache;
mod convert;
mod error;
mod guest_log;
mod host;
mod nn;
mod replica;

pub(crate) use error::error_chain;
pub use error::{CallError, LoadError};
pub use host::{HostCall, MAX_HOST_CALLS_RECORDED};
pub use replica::{InstanceRecipe, Replacement, ReplacementObserver, Replica};

use host::StoreState;
use sha2::{Digest, Sha256};
use sluice_compute::Backend;
use sluice_graphs::Graph;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

/// Bindings generated from `wit/`: the host's view of the `model` world.
#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "model",
        with: {
            "sluice:model/compute.device-tensor": sluice_compute::DeviceTensor,
            "wasi:nn/tensor.tensor": crate::nn::NnTensor,
            "wasi:nn/graph.graph": crate::nn::NnGraph,
            "wasi:nn/inference.graph-execution-context": crate::nn::NnContext,
            "wasi:nn/errors.error": crate::nn::NnError,
        },
        imports: { default: trappable },
        additional_derives: [PartialEq],
    });
}

/// The graphs a model's instances may load through `wasi:nn` (`load-by-name`), by name:
/// loaded once per model version and shared by its replicas.
pub type GraphSet = Arc<BTreeMap<String, Arc<Graph>>>;

/// The interface every model must export, with the version this host speaks.
pub const PREDICTOR_INTERFACE: &str = "sluice:model/predictor@0.1.0";

/// How often the epoch ticker advances the engine's epoch: the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Limits of each instance of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceLimits {
    /// Wall-clock limit of one `predict` call inside the sandbox.
    pub call_timeout: Duration,
    /// Cap on each linear memory of an instance, and on the bytes of host compute tensors it
    /// may hold.
    pub memory_bytes: usize,
    /// Replace an instance with a fresh one after this many calls (0: never). Bounds what a
    /// guest that leaks memory per call can accumulate.
    pub max_calls_per_instance: u64,
}

impl Default for InstanceLimits {
    fn default() -> Self {
        InstanceLimits {
            call_timeout: Duration::from_secs(1),
            memory_bytes: 256 << 20,
            max_calls_per_instance: 0,
        }
    }
}

/// Settings of the runtime as a whole.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Where precompiled components are kept; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// The implementation of the `compute` import.
    pub compute: Arc<dyn Backend>,
}

impl RuntimeConfig {
    /// The default cache directory: `$XDG_CACHE_HOME/sluice` or `~/.cache/sluice`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|dir| dir.join("sluice"))
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: Self::default_cache_dir(),
            compute: Arc::new(sluice_compute::cpu::CpuBackend),
        }
    }
}

/// A compiled, linked component that implements the model world, ready to instantiate.
/// Clones share the compiled code; so do all loads of the same bytes while one is alive.
/// The code can be dropped while no instance needs it ([`ModelComponent::evict_code`]) and is
/// read back from the precompiled cache by the next instantiation.
#[derive(Clone)]
pub struct ModelComponent {
    code: Arc<Code>,
    /// Hex SHA-256 of the component bytes.
    pub sha256: String,
    preparer: Arc<Preparer>,
}

/// The compiled code of one component, shared by every load of its bytes.
struct Code {
    /// The linked code, or `None` while evicted.
    pre: Mutex<Option<Arc<bindings::ModelPre<StoreState>>>>,
    /// The size of its image (code, data and metadata), measured when it was first loaded.
    bytes: usize,
}

impl Code {
    fn pre(&self) -> std::sync::MutexGuard<'_, Option<Arc<bindings::ModelPre<StoreState>>>> {
        self.pre.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ModelComponent {
    /// Bytes of the compiled code (code, data and metadata of its image), shared by every
    /// clone and every load of the same bytes; the same while it is evicted.
    pub fn code_bytes(&self) -> usize {
        self.code.bytes
    }

    /// Whether the compiled code is in memory (not evicted).
    pub fn code_resident(&self) -> bool {
        self.code.pre().is_some()
    }

    /// Drops the compiled code from memory, for every version that shares it, if it can be
    /// read back from the precompiled cache; returns whether it was in memory and is gone.
    /// Instances alive keep what they run: call it when the component has none, or nothing is
    /// freed until they end.
    pub fn evict_code(&self) -> bool {
        if !self.preparer.cache.holds(&self.sha256) {
            return false;
        }
        self.code.pre().take().is_some()
    }

    /// The linked code, read back from the precompiled cache if it was evicted (about as long
    /// as a load from the cache: well under a millisecond for the sample models).
    fn pre(&self) -> Result<Arc<bindings::ModelPre<StoreState>>, LoadError> {
        let mut slot = self.code.pre();
        if let Some(pre) = slot.as_ref() {
            return Ok(pre.clone());
        }
        let component = self
            .preparer
            .cache
            .load(&self.preparer.engine, &self.sha256)
            .ok_or_else(|| {
                LoadError::Internal(format!(
                    "the compiled code of component sha256:{} was evicted and its precompiled \
                     file can no longer be read",
                    &self.sha256[..12]
                ))
            })?;
        let pre = Arc::new(self.preparer.link(&component)?);
        self.preparer.code_reloads.fetch_add(1, Ordering::Relaxed);
        *slot = Some(pre.clone());
        Ok(pre)
    }
}

/// What a component imports and exports, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSurface {
    /// Imported interfaces and functions.
    pub imports: Vec<String>,
    /// Exported interfaces and functions.
    pub exports: Vec<String>,
}

/// The process-wide sandbox: engine, linker, cache and epoch ticker.
pub struct Runtime {
    preparer: Arc<Preparer>,
    compute: Arc<dyn Backend>,
    ticker_stop: Arc<AtomicBool>,
    /// The components in use, by SHA-256 of their bytes: a load of bytes already in use
    /// (another version, other parameters) shares their compiled code and `InstancePre`.
    resident: Mutex<HashMap<String, Weak<Code>>>,
}

/// What turns compiled code into something to instantiate, shared by the runtime and every
/// component (which reads its code back through it after an eviction).
struct Preparer {
    engine: Engine,
    linker: Linker<StoreState>,
    cache: component_cache::ComponentCache,
    /// Components prepared from their bytes (compiled, or read precompiled, and linked).
    prepared: AtomicU64,
    /// Evicted code read back from the precompiled cache.
    code_reloads: AtomicU64,
    /// Instances alive now, of every component.
    live_instances: Arc<AtomicUsize>,
}

impl Preparer {
    /// Checks that `component` implements the model world and links it.
    fn link(&self, component: &Component) -> Result<bindings::ModelPre<StoreState>, LoadError> {
        let exports = component.component_type();
        match exports.get_export(&self.engine, PREDICTOR_INTERFACE) {
            Some(e) if matches!(e.ty, ComponentItem::ComponentInstance(_)) => {}
            _ => {
                let found = surface(&self.engine, component).exports;
                return Err(LoadError::MissingPredictor {
                    expected: PREDICTOR_INTERFACE,
                    detail: if found.is_empty() {
                        "it exports nothing".to_string()
                    } else {
                        format!("it exports only {}", found.join(", "))
                    },
                });
            }
        }
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::UnsatisfiedImport(error_chain(&e)))?;
        bindings::ModelPre::new(instance_pre).map_err(|e| LoadError::MissingPredictor {
            expected: PREDICTOR_INTERFACE,
            detail: error_chain(&e),
        })
    }
}

impl Runtime {
    /// Builds the engine and linker and starts the epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Self, LoadError> {
        let mut wasm_config = Config::new();
        wasm_config.epoch_interruption(true);
        wasm_config.wasm_component_model(true);
        let engine = Engine::new(&wasm_config).map_err(|e| LoadError::Invalid(error_chain(&e)))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .and_then(|()| {
                bindings::Model::add_to_linker::<StoreState, HasSelf<StoreState>>(
                    &mut linker,
                    |state| state,
                )
            })
            .map_err(|e| LoadError::Invalid(error_chain(&e)))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), ticker_stop.clone())
            .map_err(|e| LoadError::Internal(format!("starting the epoch ticker thread: {e}")))?;
        Ok(Runtime {
            preparer: Arc::new(Preparer {
                cache: component_cache::ComponentCache::new(config.cache_dir, &engine),
                engine,
                linker,
                prepared: AtomicU64::new(0),
                code_reloads: AtomicU64::new(0),
                live_instances: Arc::default(),
            }),
            compute: config.compute,
            ticker_stop,
            resident: Mutex::default(),
        })
    }

    fn component(&self, code: Arc<Code>, sha256: String) -> ModelComponent {
        ModelComponent {
            code,
            sha256,
            preparer: self.preparer.clone(),
        }
    }

    /// Model instances alive now, over every component and replica (a counter: reading it
    /// costs one atomic load however many models are loaded).
    pub fn live_instances(&self) -> usize {
        self.preparer.live_instances.load(Ordering::Relaxed)
    }

    fn resident(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<Code>>> {
        self.resident.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many times a load prepared a component from its bytes (compiled it, or read it
    /// precompiled, and linked it) rather than sharing one in use.
    pub fn components_prepared(&self) -> u64 {
        self.preparer.prepared.load(Ordering::Relaxed)
    }

    /// How many times evicted code was read back from the precompiled cache.
    pub fn code_reloads(&self) -> u64 {
        self.preparer.code_reloads.load(Ordering::Relaxed)
    }

    /// How many distinct components have compiled code in memory, however many model
    /// versions use each (evicted code does not count).
    pub fn resident_components(&self) -> usize {
        self.resident()
            .values()
            .filter_map(Weak::upgrade)
            .filter(|code| code.pre().is_some())
            .count()
    }

    /// The compute backend models run their imports on.
    pub fn compute(&self) -> &Arc<dyn Backend> {
        &self.compute
    }

    /// Compiles (or loads from the cache) `bytes`, checks that it implements the model world,
    /// and links it. Slow on a cache miss (Cranelift): call it off the async executor.
    pub fn load_component(&self, bytes: &[u8]) -> Result<ModelComponent, LoadError> {
        let sha256 = hex(&Sha256::digest(bytes));
        if let Some(code) = self.resident().get(&sha256).and_then(Weak::upgrade) {
            return Ok(self.component(code, sha256));
        }
        let component = self.compile(bytes, &sha256)?;
        let pre = self.preparer.link(&component)?;
        let image = component.image_range();
        let code = Arc::new(Code {
            pre: Mutex::new(Some(Arc::new(pre))),
            bytes: (image.end as usize).saturating_sub(image.start as usize),
        });
        let mut resident = self.resident();
        // Two first loads of the same bytes may race: the one that finishes first is shared.
        if let Some(code) = resident.get(&sha256).and_then(Weak::upgrade) {
            return Ok(self.component(code, sha256));
        }
        resident.retain(|_, code| code.strong_count() > 0);
        self.preparer.prepared.fetch_add(1, Ordering::Relaxed);
        resident.insert(sha256.clone(), Arc::downgrade(&code));
        Ok(self.component(code, sha256))
    }

    /// Lists a component's imports and exports without instantiating it.
    pub fn inspect(&self, bytes: &[u8]) -> Result<ComponentSurface, LoadError> {
        let sha256 = hex(&Sha256::digest(bytes));
        let component = self.compile(bytes, &sha256)?;
        Ok(surface(&self.preparer.engine, &component))
    }

    fn compile(&self, bytes: &[u8], sha256: &str) -> Result<Component, LoadError> {
        if wasmparser::Parser::is_core_wasm(bytes) {
            return Err(LoadError::NotAComponent(
                "this is a core WebAssembly module; build the model for wasm32-wasip2 (or wrap \
                 it with `wasm-tools component new`)"
                    .into(),
            ));
        }
        if bytes.starts_with(b"\x7fELF") || bytes.starts_with(&[0xcf, 0xfa, 0xed, 0xfe]) {
            return Err(LoadError::NotAComponent(
                "this is a native shared library, built for this machine, not a WebAssembly \
                 component: build the model with `sluice build` (or `cargo build --target \
                 wasm32-wasip2`)"
                    .into(),
            ));
        }
        if !wasmparser::Parser::is_component(bytes) {
            return Err(LoadError::NotAComponent(format!(
                "the file does not start with the WebAssembly magic `\\0asm` ({} bytes)",
                bytes.len()
            )));
        }
        self.preparer
            .cache
            .get_or_compile(&self.preparer.engine, bytes, sha256)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A component's imports and exports, by name.
fn surface(engine: &Engine, component: &Component) -> ComponentSurface {
    let ty = component.component_type();
    ComponentSurface {
        imports: ty.imports(engine).map(|(n, _)| n.to_string()).collect(),
        exports: ty.exports(engine).map(|(n, _)| n.to_string()).collect(),
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until `stop` is set. Instances whose
/// deadline (a number of ticks) passes trap with `Trap::Interrupt` at their next check.
fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("sluice-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .map(drop)
}

/// Ticks that cover `timeout`, rounded up, plus one for the tick in progress.
fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64).saturating_add(1)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_ticks_round_up() {
        assert_eq!(deadline_ticks(Duration::from_millis(1)), 2);
        assert_eq!(deadline_ticks(Duration::from_micros(1500)), 3);
        assert_eq!(deadline_ticks(Duration::from_secs(1)), 1001);
    }

    #[test]
    fn non_components_are_refused_with_the_reason() {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: None,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let core_module = b"\0asm\x01\0\0\0";
        match runtime.load_component(core_module) {
            Err(LoadError::NotAComponent(m)) => assert!(m.contains("core WebAssembly module")),
            other => panic!("unexpected {:?}", other.err()),
        }
        match runtime.load_component(b"hello, world") {
            Err(LoadError::NotAComponent(m)) => assert!(m.contains("magic")),
            other => panic!("unexpected {:?}", other.err()),
        }
    }
}
