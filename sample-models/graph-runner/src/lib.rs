//! The component behind `sluice load --onnx` when the server runs graphs natively: it loads
//! the model's graph `model` through `wasi:nn` and passes each batch through it unchanged.
//!
//! It knows nothing of the graph until `init`: its config, written by the server from the
//! graph's signature, is one line per item:
//!
//! ```text
//! name onnx-model
//! max-batch 1024
//! input input_ids INT64 -1,-1
//! output last_hidden_state FP32 -1,-1,384
//! ```

use sluice_sdk::nn::Graph;
use sluice_sdk::{Dtype, Model, ModelError, ModelInfo, Tensor, TensorSpec};

/// The name of the graph the server gives this runner.
const GRAPH: &str = "model";

struct GraphRunner {
    graph: Graph,
    info: ModelInfo,
}

fn parse_spec(words: &[&str]) -> Result<TensorSpec, String> {
    let [name, dtype, shape] = words else {
        return Err(format!(
            "expected `NAME DTYPE DIMS`, found `{}`",
            words.join(" ")
        ));
    };
    let dtype = dtype_named(dtype).ok_or_else(|| format!("unknown dtype `{dtype}`"))?;
    let shape = shape
        .split(',')
        .map(|d| {
            d.parse::<i64>()
                .map_err(|e| format!("dimension `{d}`: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TensorSpec::new(name, dtype, &shape))
}

fn dtype_named(name: &str) -> Option<Dtype> {
    Some(match name {
        "FP32" => Dtype::Fp32,
        "FP64" => Dtype::Fp64,
        "INT32" => Dtype::Int32,
        "INT64" => Dtype::Int64,
        "UINT8" => Dtype::Uint8,
        "BOOL" => Dtype::Boolean,
        _ => return None,
    })
}

fn parse_config(config: &str) -> Result<ModelInfo, String> {
    let mut info = ModelInfo {
        name: "onnx-model".into(),
        version: "1".into(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        max_batch: 1024,
    };
    for (number, line) in config.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = |e: String| format!("config line {}: {e}", number + 1);
        match words.as_slice() {
            [] => {}
            ["name", name] => info.name = name.to_string(),
            ["version", version] => info.version = version.to_string(),
            ["max-batch", n] => info.max_batch = n.parse().map_err(|e| at(format!("{e}")))?,
            ["input", rest @ ..] => info.inputs.push(parse_spec(rest).map_err(at)?),
            ["output", rest @ ..] => info.outputs.push(parse_spec(rest).map_err(at)?),
            _ => return Err(at(format!("unknown item `{line}`"))),
        }
    }
    Ok(info)
}

impl Model for GraphRunner {
    fn init(config: &[u8]) -> Result<Self, ModelError> {
        let config = std::str::from_utf8(config)
            .map_err(|e| ModelError::Internal(format!("the config is not UTF-8: {e}")))?;
        let info = parse_config(config).map_err(ModelError::Internal)?;
        Ok(GraphRunner {
            graph: Graph::load(GRAPH)?,
            info,
        })
    }

    fn info(&self) -> ModelInfo {
        self.info.clone()
    }

    fn predict(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let mut outputs = self.graph.compute(&inputs)?;
        // In the declared order (the graph's own).
        let mut ordered = Vec::with_capacity(self.info.outputs.len());
        for spec in &self.info.outputs {
            let at = outputs
                .iter()
                .position(|t| t.name == spec.name)
                .ok_or_else(|| {
                    ModelError::Internal(format!("the graph returned no output `{}`", spec.name))
                })?;
            let mut tensor = outputs.swap_remove(at);
            if spec.dtype == Dtype::Boolean {
                tensor.dtype = Dtype::Boolean;
            }
            ordered.push(tensor);
        }
        Ok(ordered)
    }
}

sluice_sdk::export_model!(GraphRunner);
