//! The JSON form of the application messages: what `/sluice/v1/apps/...` answers and what
//! `sluice apps` prints. It is defined on the `sluice.v1` messages, so the REST API and the
//! command line (which gets those messages over gRPC) print the same thing.

use super::apps::value_to_proto;
use serde_json::{Value as Json, json};
use sluice_api::proto;
use sluice_serving::selection::app::ApplicationSpec;

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
