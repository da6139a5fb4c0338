//! The sluice application API in JSON, under `/sluice/v1/apps`: list, predict through
//! selection, feedback, and selection state. The JSON is that of the `sluice.v1` messages
//! (see [`crate::messages::json`]), which `sluice apps` prints too.

use super::Result;
use crate::Shared;
use crate::error::ApiError;
use crate::messages::apps::{answer_to_proto, state_to_proto, value_from_proto};
use crate::messages::json::{answer_json, application_json, state_json, value_from_json};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use opentelemetry::KeyValue;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_api::kserve_json::JsonTensor;
use sluice_serving::telemetry;
use sluice_types::Tensor;
use std::sync::Arc;

/// The application routes.
pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/sluice/v1/apps", get(list_apps))
        .route("/sluice/v1/apps/{app}/predict", post(predict_app))
        .route("/sluice/v1/apps/{app}/feedback", post(feedback))
        .route("/sluice/v1/apps/{app}/state", get(selection_state))
        .route(
            "/sluice/v1/apps/{app}/users/{user}/state",
            get(selection_state),
        )
}

/// The body of `POST /sluice/v1/apps/{app}/predict` and `.../feedback`.
#[derive(Deserialize)]
struct AppRequest {
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    bypass_cache: bool,
    inputs: Vec<JsonTensor>,
    /// Feedback only: one label per row.
    #[serde(default)]
    labels: Vec<Value>,
}

impl AppRequest {
    fn parse(body: &[u8]) -> Result<AppRequest> {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid_argument(format!(
                "the body must be {{\"inputs\": [...], \"user_id\"?, \"labels\"?}}: {e}"
            ))
            .into()
        })
    }

    fn tensors(&mut self) -> Result<Vec<Tensor>> {
        std::mem::take(&mut self.inputs)
            .into_iter()
            .map(|t| {
                t.into_tensor()
                    .map_err(|e| ApiError::invalid_argument(format!("inputs: {e}")).into())
            })
            .collect()
    }
}

async fn list_apps(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let apps: Vec<Value> = shared
        .applications
        .list()
        .iter()
        .map(application_json)
        .collect();
    Json(json!({ "applications": apps }))
}

async fn predict_app(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    telemetry::annotate(|| vec![KeyValue::new("sluice.application", app.clone())]);
    let mut request = AppRequest::parse(&body)?;
    let inputs = request.tensors()?;
    let answer = shared
        .applications
        .predict(&app, &request.user_id, inputs, request.bypass_cache)
        .await?;
    Ok(Json(answer_json(&answer_to_proto(answer))))
}

async fn feedback(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let mut request = AppRequest::parse(&body)?;
    let inputs = request.tensors()?;
    let labels = request
        .labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let field = format!("labels[{i}]");
            value_from_proto(Some(value_from_json(label, &field)?), &field)
        })
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(ApiError::invalid_argument)?;
    let outcome = shared
        .applications
        .feedback(&app, &request.user_id, inputs, labels)
        .await?;
    let losses: serde_json::Map<String, Value> = outcome
        .losses
        .iter()
        .map(|(model, loss)| (model.clone(), json!(loss)))
        .collect();
    let state = state_to_proto(&outcome.spec, &request.user_id, &outcome.state);
    Ok(Json(json!({
        "losses": losses,
        "chosen": outcome.chosen,
        "state": state_json(&state),
    })))
}

#[derive(Deserialize)]
struct StatePath {
    app: String,
    user: Option<String>,
}

async fn selection_state(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<StatePath>,
) -> Result<Json<Value>> {
    let user = path.user.unwrap_or_default();
    let (spec, state) = shared
        .applications
        .selection_state(&path.app, &user)
        .await?;
    Ok(Json(state_json(&state_to_proto(&spec, &user, &state))))
}
