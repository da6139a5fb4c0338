//! What a KServe request that names an application gets back: the application's output
//! (INT64 labels or FP64 numbers), `confidence` (FP64) and `default` (BOOL) tensors, one
//! element per row, and response parameters saying which models answered.

use sluice_serving::selection::app::{ApplicationSpec, LabelKind};
use sluice_serving::selection::{AppAnswer, Prediction};
use sluice_types::{Dtype, Tensor, TensorSpec};

/// KServe output names of an application's answer, besides the application's own output.
pub const CONFIDENCE_OUTPUT: &str = "confidence";
/// See [`CONFIDENCE_OUTPUT`].
pub const DEFAULT_OUTPUT: &str = "default";

/// The outputs an application answers a KServe request with: its output (INT64 labels or
/// FP64 numbers), `confidence` (FP64) and `default` (BOOL), one element per row.
pub fn output_names(spec: &ApplicationSpec) -> [&str; 3] {
    [spec.output.as_str(), CONFIDENCE_OUTPUT, DEFAULT_OUTPUT]
}

/// The dtype an application's answers travel as: INT64 labels or FP64 numbers.
fn value_dtype(kind: LabelKind) -> Dtype {
    match kind {
        LabelKind::Class => Dtype::Int64,
        LabelKind::Number => Dtype::Fp64,
    }
}

/// The specs of [`output_names`], with a variable batch dimension.
pub fn output_specs(spec: &ApplicationSpec) -> Vec<TensorSpec> {
    [value_dtype(spec.kind), Dtype::Fp64, Dtype::Boolean]
        .into_iter()
        .zip(output_names(spec))
        .map(|(dtype, name)| TensorSpec {
            name: name.to_string(),
            dtype,
            shape: vec![-1],
        })
        .collect()
}

/// An application's answer as KServe output tensors (see [`output_names`]).
pub fn answer_tensors(spec: &ApplicationSpec, answer: &AppAnswer) -> Vec<Tensor> {
    let rows = answer.rows.len() as u32;
    let tensor = |name: &str, dtype, data: Vec<u8>| Tensor {
        name: name.to_string(),
        dtype,
        shape: vec![rows],
        data,
    };
    // The predictions have the application's kind (checked at registration and when the
    // models' answers are read), so each is encoded as that kind's dtype.
    let values = answer
        .rows
        .iter()
        .flat_map(|r| match r.prediction {
            Prediction::Class(label) => label.to_le_bytes(),
            Prediction::Number(n) => n.to_le_bytes(),
        })
        .collect();
    vec![
        tensor(&spec.output, value_dtype(spec.kind), values),
        tensor(
            CONFIDENCE_OUTPUT,
            Dtype::Fp64,
            answer
                .rows
                .iter()
                .flat_map(|r| r.confidence.to_le_bytes())
                .collect(),
        ),
        tensor(
            DEFAULT_OUTPUT,
            Dtype::Boolean,
            answer
                .rows
                .iter()
                .map(|r| u8::from(r.default_reason.is_some()))
                .collect(),
        ),
    ]
}

/// Response parameters of an application's KServe answer: `models_answered` and `missing`
/// (`model: reason` pairs), comma- and semicolon-separated strings.
pub fn answer_parameters(answer: &AppAnswer) -> Vec<(&'static str, String)> {
    let missing: Vec<String> = answer
        .missing
        .iter()
        .map(|m| format!("{}: {}", m.model, m.reason))
        .collect();
    vec![
        ("models_answered", answer.answered.join(",")),
        ("missing", missing.join("; ")),
    ]
}
