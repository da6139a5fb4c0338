//! The host side of the standard `wasi:nn` interfaces (`wit/deps/wasi-nn`): a guest loads a
//! graph by name, makes tensors, and calls `compute`; the graph runs natively
//! ([`sluice_graphs::Graph`]), outside the sandbox, on the host's threads.
//!
//! sluice implements the interfaces itself rather than through `wasmtime-wasi-nn`, for three
//! things a serving host needs and that crate does not do: every tensor a guest makes or gets
//! back is counted against the instance's memory cap (a guest cannot grow host memory without
//! bound by making tensors), graphs come only from the model's own files (`load` of bytes is
//! refused: the operator, not the guest, decides what the host parses), and the graphs are
//! the model version's, loaded once and shared by its replicas.

use crate::bindings::wasi::nn::errors::{self, ErrorCode};
use crate::bindings::wasi::nn::graph::{self, ExecutionTarget, GraphBuilder, GraphEncoding};
use crate::bindings::wasi::nn::inference::{self, NamedTensor};
use crate::bindings::wasi::nn::tensor::{self, TensorType};
use crate::host::StoreState;
use sluice_graphs::Graph;
use sluice_types::{Dtype, Tensor};
use std::sync::Arc;
use wasmtime::component::Resource;

/// A `wasi:nn` tensor: its elements as the guest gave them or the graph returned them.
pub struct NnTensor {
    dimensions: Vec<u32>,
    ty: TensorType,
    data: Vec<u8>,
}

/// A graph a guest has loaded (shared with every other instance of the model).
pub struct NnGraph(Arc<Graph>);

/// An execution context: the graph it runs.
pub struct NnContext(Arc<Graph>);

/// A `wasi:nn` error: its code and what happened.
pub struct NnError {
    code: ErrorCode,
    message: String,
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

impl StoreState {
    /// Hands the guest an error resource.
    fn nn_error<T>(&mut self, code: ErrorCode, message: impl Into<String>) -> NnResult<T> {
        let message = message.into();
        tracing::debug!(?code, %message, "wasi:nn error");
        Ok(Err(self.table().push(NnError { code, message })?))
    }

    /// Stores a tensor if the instance's budget allows it.
    fn keep_tensor(&mut self, tensor: NnTensor) -> Result<Resource<NnTensor>, String> {
        self.fits(tensor.data.len()).map_err(|e| e.to_string())?;
        self.hold(tensor.data.len());
        self.table().push(tensor).map_err(|e| e.to_string())
    }
}

fn dtype_of(ty: TensorType) -> Option<Dtype> {
    Some(match ty {
        TensorType::Fp32 => Dtype::Fp32,
        TensorType::Fp64 => Dtype::Fp64,
        TensorType::U8 => Dtype::Uint8,
        TensorType::I32 => Dtype::Int32,
        TensorType::I64 => Dtype::Int64,
        TensorType::Fp16 | TensorType::Bf16 => return None,
    })
}

fn tensor_type_of(dtype: Dtype) -> Option<TensorType> {
    Some(match dtype {
        Dtype::Fp32 => TensorType::Fp32,
        Dtype::Fp64 => TensorType::Fp64,
        Dtype::Uint8 | Dtype::Boolean => TensorType::U8,
        Dtype::Int32 => TensorType::I32,
        Dtype::Int64 => TensorType::I64,
        Dtype::Bytes => return None,
    })
}

impl tensor::Host for StoreState {}

impl tensor::HostTensor for StoreState {
    fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<NnTensor>> {
        // The constructor has no error in the interface: a tensor over the budget traps the
        // call, reported as memory exhaustion like a linear memory that cannot grow.
        self.keep_tensor(NnTensor {
            dimensions,
            ty,
            data,
        })
        .map_err(|message| {
            self.limiter.exceeded = Some(format!("wasi:nn tensor: {message}"));
            wasmtime::Error::msg(message)
        })
    }

    fn dimensions(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table().get(&tensor)?.dimensions.clone())
    }

    fn ty(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<TensorType> {
        Ok(self.table().get(&tensor)?.ty)
    }

    fn data(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table().get(&tensor)?.data.clone())
    }

    fn drop(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<()> {
        let tensor = self.table().delete(tensor)?;
        self.release(tensor.data.len());
        Ok(())
    }
}

impl graph::Host for StoreState {
    fn load(
        &mut self,
        _builder: Vec<GraphBuilder>,
        _encoding: GraphEncoding,
        _target: ExecutionTarget,
    ) -> NnResult<Resource<NnGraph>> {
        self.nn_error(
            ErrorCode::UnsupportedOperation,
            "graphs come from the model's files on the host: use `load-by-name` with the name \
             of one of them (a guest may not hand the host a graph to parse)",
        )
    }

    fn load_by_name(&mut self, name: String) -> NnResult<Resource<NnGraph>> {
        match self.graphs.get(&name).cloned() {
            Some(graph) => Ok(Ok(self.table().push(NnGraph(graph))?)),
            None => {
                let known: Vec<&str> = self.graphs.keys().map(String::as_str).collect();
                let message = if known.is_empty() {
                    format!("no graph `{name}`: this model was loaded with no graphs")
                } else {
                    format!("no graph `{name}`; this model has {}", known.join(", "))
                };
                self.nn_error(ErrorCode::NotFound, message)
            }
        }
    }
}

impl graph::HostGraph for StoreState {
    fn init_execution_context(
        &mut self,
        graph: Resource<NnGraph>,
    ) -> NnResult<Resource<NnContext>> {
        let graph = self.table().get(&graph)?.0.clone();
        Ok(Ok(self.table().push(NnContext(graph))?))
    }

    fn drop(&mut self, graph: Resource<NnGraph>) -> wasmtime::Result<()> {
        self.table().delete(graph)?;
        Ok(())
    }
}

impl inference::Host for StoreState {}

impl inference::HostGraphExecutionContext for StoreState {
    fn compute(
        &mut self,
        context: Resource<NnContext>,
        inputs: Vec<NamedTensor>,
    ) -> NnResult<Vec<NamedTensor>> {
        let graph = self.table().get(&context)?.0.clone();
        let mut tensors = Vec::with_capacity(inputs.len());
        for (name, handle) in inputs {
            // The inputs are consumed, as the interface says: the guest's handles go away.
            let NnTensor {
                dimensions,
                ty,
                data,
            } = self.table().delete(handle)?;
            self.release(data.len());
            let Some(dtype) = dtype_of(ty) else {
                return self.nn_error(
                    ErrorCode::InvalidArgument,
                    format!("input `{name}`: {ty:?} tensors are not supported; use FP32, FP64, U8, I32 or I64"),
                );
            };
            tensors.push(Tensor {
                name,
                dtype,
                shape: dimensions,
                data,
            });
        }
        let deadline = self.call_deadline;
        let ran = self.timed("wasi-nn.compute", |_| graph.run(&tensors, deadline));
        let outputs = match ran {
            Ok(outputs) => outputs,
            // Stopped at the call's time limit: the call ends as the epoch would have ended
            // it, a timeout, and the instance is replaced.
            Err(sluice_graphs::GraphError::TimedOut) => {
                return Err(wasmtime::Error::new(wasmtime::Trap::Interrupt));
            }
            Err(e @ sluice_graphs::GraphError::BadInput(_)) => {
                return self.nn_error(ErrorCode::InvalidArgument, e.to_string());
            }
            Err(e) => return self.nn_error(ErrorCode::RuntimeError, e.to_string()),
        };
        let mut named = Vec::with_capacity(outputs.len());
        for output in outputs {
            let ty = tensor_type_of(output.dtype).expect("graphs return no BYTES");
            let tensor = NnTensor {
                dimensions: output.shape,
                ty,
                data: output.data,
            };
            match self.keep_tensor(tensor) {
                Ok(handle) => named.push((output.name, handle)),
                Err(message) => {
                    for (_, handle) in named {
                        tensor::HostTensor::drop(self, handle)?;
                    }
                    return self.nn_error(
                        ErrorCode::TooLarge,
                        format!("output `{}`: {message}", output.name),
                    );
                }
            }
        }
        Ok(Ok(named))
    }

    fn drop(&mut self, context: Resource<NnContext>) -> wasmtime::Result<()> {
        self.table().delete(context)?;
        Ok(())
    }
}

impl errors::Host for StoreState {}

impl errors::HostError for StoreState {
    fn code(&mut self, error: Resource<NnError>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table().get(&error)?.code)
    }

    fn data(&mut self, error: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table().get(&error)?.message.clone())
    }

    fn drop(&mut self, error: Resource<NnError>) -> wasmtime::Result<()> {
        self.table().delete(error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::wasi::nn::graph::Host as _;
    use crate::bindings::wasi::nn::tensor::HostTensor;
    use crate::{GraphSet, host::StoreState};
    use sluice_compute::cpu::CpuBackend;

    fn state(memory_bytes: usize) -> StoreState {
        StoreState::new(
            "m".into(),
            memory_bytes,
            Arc::new(CpuBackend),
            GraphSet::default(),
        )
    }

    #[test]
    fn tensors_count_against_the_instance_memory_and_are_given_back() {
        let mut state = state(1 << 20);
        let half = vec![0u8; 512 << 10];
        let first = HostTensor::new(&mut state, vec![1, 1 << 17], TensorType::Fp32, half.clone())
            .expect("half the budget fits");
        let second = HostTensor::new(&mut state, vec![1, 1 << 17], TensorType::Fp32, half.clone())
            .expect("the other half fits");
        // One byte more traps, reported as memory exhaustion.
        let refused = HostTensor::new(&mut state, vec![1], TensorType::U8, vec![0]);
        assert!(refused.is_err());
        let exceeded = state
            .limiter
            .exceeded
            .take()
            .expect("recorded as memory exhaustion");
        assert!(exceeded.starts_with("wasi:nn tensor:"), "{exceeded}");
        // Dropping a tensor gives its bytes back.
        HostTensor::drop(&mut state, first).unwrap();
        HostTensor::new(&mut state, vec![1, 1 << 17], TensorType::Fp32, half)
            .expect("fits again once one is dropped");
        HostTensor::drop(&mut state, second).unwrap();
    }

    #[test]
    fn graphs_come_only_by_name_from_the_model() {
        let mut state = state(1 << 20);
        let refused = state
            .load(
                vec![b"any bytes".to_vec()],
                GraphEncoding::Onnx,
                ExecutionTarget::Cpu,
            )
            .unwrap()
            .expect_err("load of bytes is refused");
        let error = state.table().get(&refused).unwrap();
        assert_eq!(error.code, ErrorCode::UnsupportedOperation);
        assert!(error.message.contains("load-by-name"), "{}", error.message);
        let missing = state
            .load_by_name("encoder".into())
            .unwrap()
            .expect_err("no such graph");
        let error = state.table().get(&missing).unwrap();
        assert_eq!(error.code, ErrorCode::NotFound);
        assert_eq!(
            error.message,
            "no graph `encoder`: this model was loaded with no graphs"
        );
    }
}
