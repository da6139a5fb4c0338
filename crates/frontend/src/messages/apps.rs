//! Applications, their answers and their selection states as `sluice.v1` messages.

use sluice_api::proto;
use sluice_serving::selection::app::{ApplicationSpec, LabelKind};
use sluice_serving::selection::policy::exp3_probabilities;
use sluice_serving::selection::{AppAnswer, PolicyConfig, Prediction, SelectionState};

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
    use proto::policy::Kind;
    use sluice_serving::selection::policy::{EPSILON, EXP3_ETA, EXP3_GAMMA, EXP4_ETA};
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
