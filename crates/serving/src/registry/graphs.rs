//! The graphs of model versions: loaded natively once per version (before its first
//! instance, whose `init` may load them by name), shared by its replicas through `wasi:nn`,
//! and counted against the host's graph memory budget until the version is gone.

use crate::registry::RegistryError;
use sluice_graphs::{Graph, GraphError, OnnxRuntime};
use sluice_runtime::GraphSet;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The default budget of graph memory on a host: 8 GiB.
pub const DEFAULT_GRAPH_MEMORY_BYTES: u64 = 8 << 30;

/// Where a graph comes from.
#[derive(Debug, Clone)]
pub enum GraphSource {
    /// An ONNX file (its external weights are read from beside it).
    File(PathBuf),
    /// An ONNX graph's bytes, weights inside.
    Bytes(Arc<[u8]>),
    /// A graph loaded already (to read its signature first).
    Loaded(Arc<Graph>),
}

/// One graph of a model version, under the name the guest loads it by.
#[derive(Debug, Clone)]
pub struct GraphRequest {
    /// The name for `load-by-name`.
    pub name: String,
    /// Where it comes from.
    pub source: GraphSource,
}

/// The engine graphs run on, and the budget they are loaded under.
pub struct GraphEngine {
    onnx: Result<OnnxRuntime, String>,
    budget_bytes: u64,
    resident_bytes: Mutex<u64>,
}

impl GraphEngine {
    /// Graphs on `onnx` (or, where it could not be opened, the reason, which loads that need
    /// a graph report), at most `budget_bytes` of them resident.
    pub fn new(onnx: Result<OnnxRuntime, String>, budget_bytes: u64) -> Self {
        GraphEngine {
            onnx,
            budget_bytes,
            resident_bytes: Mutex::new(0),
        }
    }

    /// No engine: a model that needs a graph cannot load.
    pub fn none() -> Self {
        GraphEngine::new(
            Err("this server was started without a graph engine".into()),
            DEFAULT_GRAPH_MEMORY_BYTES,
        )
    }

    /// ONNX Runtime, if the server has it.
    pub fn onnx(&self) -> Result<&OnnxRuntime, GraphError> {
        self.onnx
            .as_ref()
            .map_err(|reason| GraphError::Unavailable(reason.clone()))
    }

    /// The budget, and the bytes of graphs resident now.
    pub fn usage(&self) -> (u64, u64) {
        (self.budget_bytes, *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.resident_bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Loads one graph (slow: seconds for a large one; call it off the async executor).
    pub fn open(&self, source: &GraphSource) -> Result<Arc<Graph>, GraphError> {
        Ok(match source {
            GraphSource::Loaded(graph) => graph.clone(),
            GraphSource::File(path) => Arc::new(self.onnx()?.load_file(path)?),
            GraphSource::Bytes(bytes) => Arc::new(self.onnx()?.load_bytes(bytes)?),
        })
    }

    /// Loads a version's graphs and reserves their memory; the reservation lasts as long as
    /// the returned [`GraphReservation`].
    pub(crate) fn load_set(
        self: &Arc<Self>,
        requests: &[GraphRequest],
    ) -> Result<(GraphSet, GraphReservation), RegistryError> {
        let mut graphs = BTreeMap::new();
        for request in requests {
            let graph = self
                .open(&request.source)
                .map_err(|error| RegistryError::Graph {
                    graph: request.name.clone(),
                    error,
                })?;
            graphs.insert(request.name.clone(), graph);
        }
        let bytes: u64 = graphs.values().map(|g| g.resident_bytes).sum();
        let mut resident = self.lock();
        if *resident + bytes > self.budget_bytes {
            return Err(RegistryError::GraphBudget {
                needed: bytes,
                resident: *resident,
                budget: self.budget_bytes,
            });
        }
        *resident += bytes;
        drop(resident);
        let reservation = GraphReservation {
            engine: self.clone(),
            bytes,
        };
        Ok((Arc::new(graphs), reservation))
    }
}

/// Graph memory held by one model version, given back when it is dropped.
pub(crate) struct GraphReservation {
    engine: Arc<GraphEngine>,
    bytes: u64,
}

impl Drop for GraphReservation {
    fn drop(&mut self) {
        *self.engine.lock() -= self.bytes;
    }
}
