//! Combining the answers that arrived into one answer per row: the policy's combination,
//! or the application's default output (marked as such, and counted) when no model answered
//! or the combined confidence is below the application's threshold.

use super::app::ApplicationSpec;
use super::fanout::ModelAnswer;
use super::policy::{Policy, Prediction, SelectionState};
use super::{AppAnswer, MissingModel, RowAnswer};
use crate::cache::Lookup;
use crate::metrics;

/// The application's answer from what each of `chosen` said (`None`: nothing in time).
pub(super) fn combine(
    spec: &ApplicationSpec,
    state: &SelectionState,
    chosen: &[String],
    answers: Vec<Option<(ModelAnswer, Lookup)>>,
    rows: usize,
) -> AppAnswer {
    let mut answered = Vec::new();
    let mut missing = Vec::new();
    let mut cache_hits = 0;
    let mut per_model: Vec<Option<Vec<Prediction>>> = Vec::new();
    for (link, answer) in chosen.iter().zip(answers) {
        match answer {
            Some((Ok(predictions), lookup)) => {
                cache_hits += usize::from(lookup != Lookup::Miss);
                answered.push(link.clone());
                per_model.push(Some(predictions));
            }
            Some((Err(failure), _)) => {
                missing.push(MissingModel {
                    model: link.clone(),
                    reason: format!("failed: {}", failure.message()),
                });
                per_model.push(None);
            }
            None => {
                missing.push(MissingModel {
                    model: link.clone(),
                    reason: format!("no answer within the {} ms SLO", spec.slo_ms),
                });
                per_model.push(None);
            }
        }
    }
    let row_answers = (0..rows)
        .map(|row| {
            let row_predictions: Vec<Option<Prediction>> = per_model
                .iter()
                .map(|p| p.as_ref().map(|p| p[row]))
                .collect();
            row_answer(spec, state, chosen, &row_predictions, &missing)
        })
        .collect();
    AppAnswer {
        rows: row_answers,
        queried: chosen.to_vec(),
        answered,
        missing,
        cache_hits,
    }
}

fn row_answer(
    spec: &ApplicationSpec,
    state: &SelectionState,
    chosen: &[String],
    predictions: &[Option<Prediction>],
    missing: &[MissingModel],
) -> RowAnswer {
    let default = |reason: String, kind: &str| {
        metrics::record_default_output(&spec.name, kind);
        RowAnswer {
            prediction: spec.default_output,
            confidence: 0.0,
            default_reason: Some(reason),
        }
    };
    match spec.policy.combine(state, chosen, predictions) {
        None => {
            let why: Vec<String> = missing
                .iter()
                .map(|m| format!("{}: {}", m.model, m.reason))
                .collect();
            default(
                format!("no model answered ({})", why.join("; ")),
                "no-answer",
            )
        }
        Some(combined) if combined.confidence < spec.confidence_threshold => default(
            format!(
                "confidence {:.3} is below the application's threshold {}",
                combined.confidence, spec.confidence_threshold
            ),
            "low-confidence",
        ),
        Some(combined) => RowAnswer {
            prediction: combined.prediction,
            confidence: combined.confidence,
            default_reason: None,
        },
    }
}
