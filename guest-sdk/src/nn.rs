//! Graphs the host runs natively, through the standard `wasi:nn` interfaces.
//!
//! A model's own code (tokenizing, pooling, post-processing) runs in the sandbox; the graph
//! (an ONNX file in the model's directory) runs on the host at native speed. Load it by name
//! once, in [`crate::Model::init`], then call [`Graph::compute`] for each batch:
//!
//! ```no_run
//! # use sluice_sdk::{Dtype, ModelError, Tensor};
//! # fn demo() -> Result<(), ModelError> {
//! let graph = sluice_sdk::nn::Graph::load("encoder")?;
//! let ids = Tensor::from_i64("input_ids", &[1, 3], &[101, 7592, 102]);
//! let outputs = graph.compute(&[ids])?;
//! # Ok(()) }
//! ```
//!
//! The raw bindings are in [`raw`] for authors who want them (a guest written against the
//! standard, with no sluice SDK, runs unchanged).

use crate::{Dtype, ModelError, Tensor};

/// The `wasi:nn` bindings (the interfaces `tensor`, `graph`, `inference`, `errors`).
pub use crate::bindings::wasi::nn as raw;
use raw::tensor::TensorType;

/// A graph loaded by name, with an execution context to run it.
pub struct Graph {
    name: String,
    // The context borrows nothing from the graph, but the graph must outlive it.
    context: raw::inference::GraphExecutionContext,
    _graph: raw::graph::Graph,
}

/// Turns a `wasi:nn` error into the model's error: whatever the graph refuses is the model's
/// doing (it built the tensors), so it is internal, never blamed on the client.
fn model_error(what: &str, error: raw::errors::Error) -> ModelError {
    ModelError::Internal(format!(
        "wasi:nn {what}: {:?}: {}",
        error.code(),
        error.data()
    ))
}

fn tensor_type(dtype: Dtype) -> Result<TensorType, ModelError> {
    Ok(match dtype {
        Dtype::Fp32 => TensorType::Fp32,
        Dtype::Fp64 => TensorType::Fp64,
        Dtype::Int32 => TensorType::I32,
        Dtype::Int64 => TensorType::I64,
        Dtype::Uint8 | Dtype::Boolean => TensorType::U8,
        Dtype::Bytes => {
            return Err(ModelError::Internal(
                "wasi:nn: BYTES tensors cannot go into a graph".into(),
            ));
        }
    })
}

fn dtype(ty: TensorType) -> Result<Dtype, ModelError> {
    Ok(match ty {
        TensorType::Fp32 => Dtype::Fp32,
        TensorType::Fp64 => Dtype::Fp64,
        TensorType::I32 => Dtype::Int32,
        TensorType::I64 => Dtype::Int64,
        TensorType::U8 => Dtype::Uint8,
        other => {
            return Err(ModelError::Internal(format!(
                "wasi:nn: the graph returned {other:?}, which sluice tensors cannot hold"
            )));
        }
    })
}

impl Graph {
    /// Loads the model's graph `name` (an ONNX file of the model; see the model authors'
    /// guide for where it goes).
    pub fn load(name: &str) -> Result<Graph, ModelError> {
        let graph = raw::graph::load_by_name(name)
            .map_err(|e| model_error(&format!("graph `{name}`"), e))?;
        let context = graph
            .init_execution_context()
            .map_err(|e| model_error(&format!("graph `{name}`"), e))?;
        Ok(Graph {
            name: name.to_string(),
            context,
            _graph: graph,
        })
    }

    /// Runs the graph: `inputs` by name (each tensor's `name` is the graph input it fills);
    /// returns every output of the graph, named.
    pub fn compute(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let named = inputs
            .iter()
            .map(|t| {
                let tensor = raw::tensor::Tensor::new(&t.shape, tensor_type(t.dtype)?, &t.data);
                Ok((t.name.clone(), tensor))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let outputs = self
            .context
            .compute(named)
            .map_err(|e| model_error(&format!("running `{}`", self.name), e))?;
        outputs
            .into_iter()
            .map(|(name, tensor)| {
                Ok(Tensor {
                    name,
                    dtype: dtype(tensor.ty())?,
                    shape: tensor.dimensions(),
                    data: tensor.data(),
                })
            })
            .collect()
    }
}
