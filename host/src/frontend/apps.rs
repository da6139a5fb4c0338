//! Conversions between the application messages (of `sluice.v1`, and of KServe v2 when a
//! request names an application) and the selection layer's types. Every error names the field
//! it is about.

use crate::proto;
use crate::runtime::{Dtype, Tensor};
use crate::selection::app::{ApplicationSpec, LabelKind};
use crate::selection::policy::exp3_probabilities;
use crate::selection::{AppAnswer, PolicyConfig, Prediction, SelectionState};
use serde_json::{Value as Json, json};

/// A value as a prediction; `field` names it in the error.
pub fn value_from_proto(value: Option<proto::Value>, field: &str) -> Result<Prediction, String> {
    match value.and_then(|v| v.value) {
        Some(proto::value::Value::ClassLabel(label)) => Ok(Prediction::Class(label)),
        Some(proto::value::Value::Number(number)) if number.is_finite() => {
            Ok(Prediction::Number(number))
        }
        Some(proto::value::Value::Number(number)) => {
            Err(format!("{field}: {number} is not a finite number"))
        }
        None => Err(format!("{field}: a class_label or a number is required")),
    }
}

/// A prediction as a value.
pub fn value_to_proto(prediction: Prediction) -> proto::Value {
    let value = match prediction {
        Prediction::Class(label) => proto::value::Value::ClassLabel(label),
        Prediction::Number(number) => proto::value::Value::Number(number),
    };
    proto::Value { value: Some(value) }
}

fn policy_from_proto(policy: Option<proto::Policy>) -> Result<PolicyConfig, String> {
    use crate::selection::policy::{EPSILON, EXP3_ETA, EXP3_GAMMA, EXP4_ETA};
    use proto::policy::Kind;
    Ok(match policy.and_then(|p| p.kind) {
        None => PolicyConfig::EXP3_DEFAULT,
        Some(Kind::Exp3(p)) => PolicyConfig::Exp3 {
            eta: p.eta.unwrap_or(EXP3_ETA),
            gamma: p.gamma.unwrap_or(EXP3_GAMMA),
        },
        Some(Kind::Exp4(p)) => PolicyConfig::Exp4 {
            eta: p.eta.unwrap_or(EXP4_ETA),
        },
        Some(Kind::StaticModel(p)) if p.model.is_empty() => {
            return Err("policy.static_model.model: name the linked model to use".into());
        }
        Some(Kind::StaticModel(p)) => PolicyConfig::Static { model: p.model },
        Some(Kind::EpsilonGreedy(p)) => PolicyConfig::EpsilonGreedy {
            epsilon: p.epsilon.unwrap_or(EPSILON),
        },
    })
}

fn policy_to_proto(policy: &PolicyConfig) -> proto::Policy {
    use proto::policy::{Exp3, Exp4, Kind};
    let kind = match policy {
        PolicyConfig::Exp3 { eta, gamma } => Kind::Exp3(Exp3 {
            eta: Some(*eta),
            gamma: Some(*gamma),
        }),
        PolicyConfig::Exp4 { eta } => Kind::Exp4(Exp4 { eta: Some(*eta) }),
        PolicyConfig::Static { model } => Kind::StaticModel(proto::policy::Static {
            model: model.clone(),
        }),
        PolicyConfig::EpsilonGreedy { epsilon } => {
            Kind::EpsilonGreedy(proto::policy::EpsilonGreedy {
                epsilon: Some(*epsilon),
            })
        }
    };
    proto::Policy { kind: Some(kind) }
}

/// An application message as a spec (checked further by the selection layer).
pub fn application_from_proto(
    application: Option<proto::Application>,
) -> Result<ApplicationSpec, String> {
    let a = application.ok_or("application: required")?;
    let kind = match proto::application::Kind::try_from(a.kind) {
        Ok(proto::application::Kind::Unspecified | proto::application::Kind::Class) => {
            LabelKind::Class
        }
        Ok(proto::application::Kind::Number) => LabelKind::Number,
        Err(_) => return Err(format!("application.kind: unknown kind {}", a.kind)),
    };
    Ok(ApplicationSpec {
        name: a.name,
        models: a.models,
        slo_ms: a.slo_ms,
        output: a.output,
        kind,
        default_output: value_from_proto(a.default_output, "application.default_output")?,
        policy: policy_from_proto(a.policy)?,
        confidence_threshold: a.confidence_threshold,
        seed: a.seed,
    })
}

/// A spec as an application message.
pub fn application_to_proto(spec: &ApplicationSpec) -> proto::Application {
    proto::Application {
        name: spec.name.clone(),
        models: spec.models.clone(),
        slo_ms: spec.slo_ms,
        output: spec.output.clone(),
        kind: match spec.kind {
            LabelKind::Class => proto::application::Kind::Class,
            LabelKind::Number => proto::application::Kind::Number,
        } as i32,
        default_output: Some(value_to_proto(spec.default_output)),
        policy: Some(policy_to_proto(&spec.policy)),
        confidence_threshold: spec.confidence_threshold,
        seed: spec.seed,
    }
}

/// A policy's state as a message, with Exp3's draw probabilities.
pub fn state_to_proto(
    spec: &ApplicationSpec,
    user: &str,
    state: &SelectionState,
) -> proto::SelectionState {
    let weights: Vec<f64> = spec.models.iter().map(|m| state.arms[m].weight).collect();
    let probabilities = match spec.policy {
        PolicyConfig::Exp3 { gamma, .. } => exp3_probabilities(&weights, gamma),
        _ => vec![0.0; weights.len()],
    };
    proto::SelectionState {
        app: spec.name.clone(),
        user_id: user.to_string(),
        policy: spec.policy.name().to_string(),
        arms: spec
            .models
            .iter()
            .zip(probabilities)
            .map(|(model, probability)| {
                let arm = &state.arms[model];
                proto::ArmState {
                    model: model.clone(),
                    weight: arm.weight,
                    probability,
                    observations: arm.observations,
                    mean_loss: arm.mean_loss(),
                }
            })
            .collect(),
        feedback_count: state.feedback_count,
    }
}

/// An application's answer as a message.
pub fn answer_to_proto(answer: AppAnswer) -> proto::PredictAppResponse {
    let all_default = answer.rows.iter().all(|r| r.default_reason.is_some());
    let default_reason = if all_default {
        answer
            .rows
            .first()
            .and_then(|r| r.default_reason.clone())
            .unwrap_or_default()
    } else {
        String::new()
    };
    proto::PredictAppResponse {
        predictions: answer
            .rows
            .into_iter()
            .map(|row| proto::RowPrediction {
                value: Some(value_to_proto(row.prediction)),
                confidence: row.confidence,
                default: row.default_reason.is_some(),
                default_reason: row.default_reason.unwrap_or_default(),
            })
            .collect(),
        models_queried: answer.queried,
        models_answered: answer.answered,
        missing: answer
            .missing
            .into_iter()
            .map(|m| proto::MissingModel {
                model: m.model,
                reason: m.reason,
            })
            .collect(),
        default: all_default,
        default_reason,
        cache_hits: answer.cache_hits as u32,
    }
}

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
pub fn output_specs(spec: &ApplicationSpec) -> Vec<crate::runtime::TensorSpec> {
    [value_dtype(spec.kind), Dtype::Fp64, Dtype::Boolean]
        .into_iter()
        .zip(output_names(spec))
        .map(|(dtype, name)| crate::runtime::TensorSpec {
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

/// A value as JSON: an integer for a class label, a float for a number.
pub fn value_json(value: Option<&proto::Value>) -> Json {
    match value.and_then(|v| v.value) {
        Some(proto::value::Value::ClassLabel(label)) => json!(label),
        Some(proto::value::Value::Number(number)) => json!(number),
        None => Json::Null,
    }
}

/// A JSON label as a value: an integer is a class label, any other number a number.
pub fn value_from_json(value: &Json, field: &str) -> Result<proto::Value, String> {
    let value = match (value.as_i64(), value.as_f64()) {
        (Some(label), _) => proto::value::Value::ClassLabel(label),
        (None, Some(number)) => proto::value::Value::Number(number),
        _ => {
            return Err(format!(
                "{field}: expected a class label or a number, got {value}"
            ));
        }
    };
    Ok(proto::Value { value: Some(value) })
}

/// An application's answer as JSON (the REST API and `sluice apps predict` print this).
pub fn answer_json(answer: &proto::PredictAppResponse) -> Json {
    json!({
        "predictions": answer.predictions.iter().map(|p| json!({
            "value": value_json(p.value.as_ref()),
            "confidence": p.confidence,
            "default": p.default,
            "default_reason": p.default_reason,
        })).collect::<Vec<_>>(),
        "models_queried": answer.models_queried,
        "models_answered": answer.models_answered,
        "missing": answer.missing.iter()
            .map(|m| json!({"model": m.model, "reason": m.reason}))
            .collect::<Vec<_>>(),
        "default": answer.default,
        "default_reason": answer.default_reason,
        "cache_hits": answer.cache_hits,
    })
}

/// A selection state as JSON.
pub fn state_json(state: &proto::SelectionState) -> Json {
    json!({
        "app": state.app,
        "user_id": state.user_id,
        "policy": state.policy,
        "feedback_count": state.feedback_count,
        "arms": state.arms.iter().map(|a| json!({
            "model": a.model,
            "weight": a.weight,
            "probability": a.probability,
            "observations": a.observations,
            "mean_loss": a.mean_loss,
        })).collect::<Vec<_>>(),
    })
}

/// An application as JSON.
pub fn application_json(spec: &ApplicationSpec) -> Json {
    json!({
        "name": spec.name,
        "models": spec.models,
        "slo_ms": spec.slo_ms,
        "output": spec.output,
        "kind": spec.kind.name(),
        "default_output": value_json(Some(&value_to_proto(spec.default_output))),
        "policy": serde_json::to_value(&spec.policy).expect("policies serialize"),
        "confidence_threshold": spec.confidence_threshold,
    })
}
