//! ONNX graphs served with no guest code: the graph and one of the two runner components the
//! server bundles. The native runner passes each batch to the graph, which ONNX Runtime runs
//! on the host through `wasi:nn` (the host parses the graph); the sandboxed runner is tract
//! compiled to WebAssembly, with the graph as its init config (the host never parses it).
//! Both `sluice load --onnx` (the lifecycle) and a repository version directory holding
//! `model.onnx` and no component (the repository) come through here.

use crate::registry::{GraphEngine, GraphRequest, GraphSource, RegistryError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;

/// Where an ONNX graph runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnnxRunner {
    /// Natively if the server has ONNX Runtime, else in the sandbox.
    #[default]
    Auto,
    /// Natively, by ONNX Runtime on the host, through `wasi:nn` (the host parses the graph).
    Native,
    /// Inside the sandbox, by tract compiled to WebAssembly (slower; the host never parses
    /// the graph).
    Sandbox,
}

/// The components that serve ONNX graphs.
#[derive(Clone, Default)]
pub struct OnnxRunners {
    /// Runs the graph (its init config) with tract inside the sandbox.
    pub sandboxed: Option<Arc<[u8]>>,
    /// Passes batches to the graph `model`, run natively through `wasi:nn`.
    pub native: Option<Arc<[u8]>>,
}

/// An ONNX graph to serve.
pub enum OnnxGraph {
    /// Its bytes, weights inside (what the API receives).
    Bytes(Vec<u8>),
    /// A file on the server; weights kept beside it as external data are read natively
    /// (the sandboxed runner gets the file's bytes only).
    File(PathBuf),
}

/// Why a graph cannot be served.
#[derive(Debug, Error)]
pub enum OnnxError {
    /// The request cannot be served as asked (no such runner, a graph sluice cannot batch).
    #[error("onnx: {0}")]
    Invalid(String),
    /// The graph did not load.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// What the registry loads for a graph: a runner component, its init config, its graphs.
pub struct OnnxModel {
    /// The runner component.
    pub component: Vec<u8>,
    /// Its init config: the graph (sandboxed) or the graph's signature (native).
    pub config: Vec<u8>,
    /// The graph `model`, for the native runner.
    pub graphs: Vec<GraphRequest>,
}

impl OnnxRunners {
    /// The model that serves `graph` on `runner`; with [`OnnxRunner::Auto`], natively when
    /// `engine` has ONNX Runtime.
    pub async fn model(
        &self,
        engine: &Arc<GraphEngine>,
        graph: OnnxGraph,
        runner: OnnxRunner,
    ) -> Result<OnnxModel, OnnxError> {
        let native = match runner {
            OnnxRunner::Sandbox => false,
            OnnxRunner::Native => true,
            OnnxRunner::Auto => self.native.is_some() && engine.onnx().is_ok(),
        };
        if !native {
            let sandboxed = self.sandboxed.as_ref().ok_or_else(|| {
                OnnxError::Invalid(
                    "this server has no sandboxed ONNX runner; load with the native one".into(),
                )
            })?;
            let bytes = match graph {
                OnnxGraph::Bytes(bytes) => bytes,
                OnnxGraph::File(path) => std::fs::read(&path)
                    .map_err(|e| OnnxError::Invalid(format!("reading {}: {e}", path.display())))?,
            };
            return Ok(OnnxModel {
                component: sandboxed.to_vec(),
                config: bytes,
                graphs: Vec::new(),
            });
        }
        let component = self.native.as_ref().ok_or_else(|| {
            OnnxError::Invalid("this server has no native ONNX runner; load in the sandbox".into())
        })?;
        // Loaded here to read its signature (the runner's config), then handed to the model
        // as it is: the graph is parsed once.
        let source = match graph {
            OnnxGraph::Bytes(bytes) => GraphSource::Bytes(bytes.into()),
            OnnxGraph::File(path) => GraphSource::File(path),
        };
        let engine = engine.clone();
        let loaded = tokio::task::spawn_blocking(move || engine.open(&source))
            .await
            .map_err(|e| {
                RegistryError::Load(sluice_runtime::LoadError::Internal(format!(
                    "the graph's load task failed: {e}"
                )))
            })?
            .map_err(|error| RegistryError::Graph {
                graph: "model".into(),
                error,
            })?;
        let config = runner_config(&loaded).map_err(OnnxError::Invalid)?;
        Ok(OnnxModel {
            component: component.to_vec(),
            config: config.into_bytes(),
            graphs: vec![GraphRequest {
                name: "model".into(),
                source: GraphSource::Loaded(loaded),
            }],
        })
    }
}

/// The native runner's config: the graph's signature, with the batch dimension free. A graph
/// whose first dimension is fixed at 1 is served one row per call.
fn runner_config(graph: &sluice_graphs::Graph) -> Result<String, String> {
    let mut max_batch = 1024;
    let mut lines = vec!["name onnx-model".to_string()];
    for (kind, specs) in [("input", &graph.inputs), ("output", &graph.outputs)] {
        for spec in specs {
            let mut shape = spec.shape.clone();
            match shape.first().copied() {
                Some(-1) => {}
                Some(1) => {
                    max_batch = 1;
                    shape[0] = -1;
                }
                Some(n) => {
                    return Err(format!(
                        "{kind} `{}` has a first dimension fixed at {n}; sluice batches along \
                         the first dimension, so export the graph with it dynamic",
                        spec.name
                    ));
                }
                None => {
                    return Err(format!(
                        "{kind} `{}` is a scalar; sluice needs a batch dimension first",
                        spec.name
                    ));
                }
            }
            let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
            lines.push(format!(
                "{kind} {} {} {}",
                spec.name,
                spec.dtype.name(),
                dims.join(",")
            ));
        }
    }
    lines.push(format!("max-batch {max_batch}"));
    Ok(lines.join("\n"))
}
