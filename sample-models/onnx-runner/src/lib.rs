//! Serves any ONNX graph inside the sandbox: the init config *is* the `.onnx` file, which
//! tract (a pure-Rust ONNX engine) loads, optimizes and runs. `info()` reports the graph's real
//! inputs and outputs. A dimension the graph leaves open (a batch dimension `N` or `None` in
//! the exporter) is declared `-1`, and any batch size runs; a graph whose batch dimension is
//! fixed at 1 is declared `-1` with a `max_batch` of 1, so it is served one row per call.
//!
//! This is how a scikit-learn or PyTorch model is served without writing Rust:
//! `sluice load --onnx model.onnx`.

use sluice_sdk::{Dtype, Model, ModelError, ModelInfo, Tensor, TensorSpec};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// A loaded, optimized graph, and its run state (made once, reused by every call).
pub struct OnnxRunner {
    state: tract_onnx::tract_core::model::TypedSimpleState,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    max_batch: u32,
}

fn internal(context: &str, error: impl std::fmt::Display) -> ModelError {
    let message = format!("{context}: {error}");
    let hint = export_hint(&message);
    ModelError::Internal(format!("{message}{hint}"))
}

/// What to change when tract lacks an operator: the exporter's option that avoids it (for the
/// two scikit-learn's exporter emits by default), or the native runner, which has them all.
fn export_hint(message: &str) -> String {
    let native = "or serve the graph natively (--onnx-runner native: ONNX Runtime has it)";
    if message.contains("Unimplemented(ZipMap)") {
        format!(
            "; ZipMap is how skl2onnx returns a classifier's probabilities unless told not to: \
             convert with options={{id(classifier): {{\"zipmap\": False}}}} to get a tensor, {native}"
        )
    } else if message.contains("Unimplemented(Scaler)") {
        format!(
            "; Scaler is how skl2onnx converts a StandardScaler unless told not to: convert with \
             options={{id(scaler): {{\"div\": \"div\"}}}} (plain Sub and Div), {native}"
        )
    } else if let Some(start) = message.find("Unimplemented(") {
        let op = &message[start + "Unimplemented(".len()..];
        let op = &op[..op.find(')').unwrap_or(op.len())];
        format!(
            "; the sandboxed runner (tract) has no `{op}`: export the model without it, {native}"
        )
    } else {
        String::new()
    }
}

fn dtype_of(datum: DatumType) -> Option<Dtype> {
    Some(match datum {
        DatumType::F32 => Dtype::Fp32,
        DatumType::F64 => Dtype::Fp64,
        DatumType::I32 => Dtype::Int32,
        DatumType::I64 => Dtype::Int64,
        DatumType::U8 => Dtype::Uint8,
        DatumType::Bool => Dtype::Boolean,
        _ => return None,
    })
}

fn datum_of(dtype: Dtype) -> Option<DatumType> {
    Some(match dtype {
        Dtype::Fp32 => DatumType::F32,
        Dtype::Fp64 => DatumType::F64,
        Dtype::Int32 => DatumType::I32,
        Dtype::Int64 => DatumType::I64,
        Dtype::Uint8 => DatumType::U8,
        Dtype::Boolean => DatumType::Bool,
        Dtype::Bytes => return None,
    })
}

/// The spec of one outlet of the optimized model: concrete dimensions as they are, symbolic
/// ones as -1.
fn spec(model: &TypedModel, outlet: OutletId, name: &str) -> Result<TensorSpec, ModelError> {
    let fact = model
        .outlet_fact(outlet)
        .map_err(|e| internal("reading the graph", e))?;
    let dtype = dtype_of(fact.datum_type).ok_or_else(|| {
        ModelError::Internal(format!(
            "`{name}` is {:?}; sluice tensors are f32, f64, i32, i64, u8 or bool",
            fact.datum_type
        ))
    })?;
    let shape: Vec<i64> = fact
        .shape
        .iter()
        .map(|d| d.to_i64().unwrap_or(-1))
        .collect();
    Ok(TensorSpec::new(name, dtype, &shape))
}

impl OnnxRunner {
    /// Loads and optimizes an ONNX graph. An input dimension the graph leaves unknown becomes
    /// the symbol `N`, so the plan runs for any batch size.
    pub fn from_onnx(mut onnx: &[u8]) -> Result<OnnxRunner, ModelError> {
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut onnx)
            .map_err(|e| internal("the config is not a readable ONNX graph", e))?;
        let batch = model.symbols.sym("N");
        for index in 0..model.inputs.len() {
            let fact = model
                .input_fact(index)
                .map_err(|e| internal("reading an input", e))?
                .clone();
            let datum = fact.datum_type.concretize().unwrap_or(DatumType::F32);
            if !fact.shape.is_open() {
                let dims: TVec<TDim> = fact
                    .shape
                    .dims()
                    .map(|d| d.concretize().unwrap_or_else(|| batch.clone().into()))
                    .collect();
                model = model
                    .with_input_fact(index, InferenceFact::dt_shape(datum, dims))
                    .map_err(|e| internal("fixing an input's shape", e))?;
            }
        }
        let typed = model
            .into_optimized()
            .map_err(|e| internal("optimizing the graph", e))?;
        let name_of = |outlet: OutletId| {
            typed
                .outlet_label(outlet)
                .map(str::to_string)
                .unwrap_or_else(|| typed.node(outlet.node).name.clone())
        };
        let mut inputs = typed
            .input_outlets()
            .map_err(|e| internal("reading the inputs", e))?
            .iter()
            .map(|&o| spec(&typed, o, &typed.node(o.node).name))
            .collect::<Result<Vec<_>, _>>()?;
        let mut outputs = typed
            .output_outlets()
            .map_err(|e| internal("reading the outputs", e))?
            .iter()
            .map(|&o| spec(&typed, o, &name_of(o)))
            .collect::<Result<Vec<_>, _>>()?;
        let state = std::sync::Arc::new(
            typed
                .into_runnable()
                .map_err(|e| internal("planning the graph", e))?,
        )
        .spawn()
        .map_err(|e| internal("planning the graph", e))?;
        // The batch is the first dimension, open (-1) for sluice; fixed at 1 it still is,
        // one row per call. Other sizes are left as they are, and the load says why.
        let mut max_batch = 1024;
        for spec in inputs.iter_mut().chain(outputs.iter_mut()) {
            if spec.shape.first() == Some(&1) {
                spec.shape[0] = -1;
                max_batch = 1;
            }
        }
        Ok(OnnxRunner {
            state,
            inputs,
            outputs,
            max_batch,
        })
    }

    /// Runs the graph on tensors already checked against [`Model::info`].
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let mut values: TVec<TValue> = TVec::new();
        for spec in &self.inputs {
            let tensor = sluice_sdk::input(inputs, &spec.name)?;
            let datum = datum_of(tensor.dtype).expect("declared dtypes are numeric");
            let shape: Vec<usize> = tensor.shape.iter().map(|&d| d as usize).collect();
            let value = unsafe {
                // The host checked the data length against the shape and dtype.
                tract_onnx::prelude::Tensor::from_raw_dt(datum, &shape, &tensor.data)
            }
            .map_err(|e| ModelError::InvalidInput(format!("input `{}`: {e}", spec.name)))?;
            values.push(value.into_tvalue());
        }
        let results = self
            .state
            .run(values)
            .map_err(|e| internal("running the graph", e))?;
        results
            .into_iter()
            .zip(&self.outputs)
            .map(|(value, spec)| {
                let tensor = value.into_tensor();
                let data = tensor.as_bytes().to_vec();
                Ok(Tensor {
                    name: spec.name.clone(),
                    dtype: spec.dtype,
                    shape: tensor.shape().iter().map(|&d| d as u32).collect(),
                    data,
                })
            })
            .collect()
    }
}

impl Model for OnnxRunner {
    fn init(config: &[u8]) -> Result<Self, ModelError> {
        OnnxRunner::from_onnx(config)
    }

    fn info(&self) -> ModelInfo {
        ModelInfo {
            name: "onnx-model".into(),
            version: "1".into(),
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            max_batch: self.max_batch,
        }
    }

    fn predict(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        self.run(&inputs)
    }
}

sluice_sdk::export_model!(OnnxRunner);
