//! The live dashboard on the HTTP port: `GET /dashboard` is one HTML page (CSS and JavaScript
//! inline, embedded in the binary: no CDN, no build step) that polls
//! `GET /sluice/v1/dashboard` every second and draws what it says. Both are read-only and
//! behind the admin guard (loopback peers, or the admin token: sent as a bearer header, or,
//! for a browser's first request, as `?token=`).
//!
//! The snapshot holds counters since start (requests, the latency histogram), so the page
//! computes throughput and percentiles over the last interval from two snapshots; the server
//! keeps no history.

use super::{Result, authorize};
use crate::Shared;
use crate::connections::listener::Peer;
use crate::messages::apps::state_to_proto;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_serving::registry::ModelState;
use std::sync::Arc;

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// The dashboard routes.
pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/sluice/v1/dashboard", get(snapshot))
}

#[derive(Deserialize)]
struct PageQuery {
    token: Option<String>,
}

/// The admin check, taking the token from the query when the browser sent no header.
fn authorize_browser(
    shared: &Shared,
    headers: &HeaderMap,
    peer: &Peer,
    token: Option<&str>,
) -> Result<()> {
    let mut headers = headers.clone();
    if let Some(value) = token
        .filter(|_| !headers.contains_key("authorization"))
        .and_then(|token| format!("Bearer {token}").parse().ok())
    {
        headers.insert("authorization", value);
    }
    authorize(shared, &headers, peer.addr())
}

async fn page(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(query): Query<PageQuery>,
    headers: HeaderMap,
) -> Result<impl IntoResponse> {
    authorize_browser(&shared, &headers, &peer, query.token.as_deref())?;
    Ok((
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    ))
}

/// Everything the page shows, now.
async fn snapshot(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(query): Query<PageQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    authorize_browser(&shared, &headers, &peer, query.token.as_deref())?;
    let models: Vec<Value> = shared
        .registry
        .list()
        .into_iter()
        .map(|entry| {
            let state = match entry.state {
                ModelState::Loading => "loading",
                ModelState::Ready => "ready",
                ModelState::Failed(_) => "failed",
                ModelState::Draining => "draining",
                ModelState::Unloaded => "unloaded",
            };
            let Some(model) = entry.model.filter(|_| entry.state == ModelState::Ready) else {
                return json!({ "name": entry.name, "version": entry.version, "state": state });
            };
            let (load, traffic, range) = (model.load(), model.traffic(), model.replica_range());
            json!({
                "name": entry.name,
                "version": entry.version,
                "state": state,
                "default": entry.is_default,
                "replicas": model.replicas(),
                "min_replicas": range.map(|r| r.min),
                "max_replicas": range.map(|r| r.max),
                "batch_sizes": model.batch_sizes(),
                "queued": load.queued,
                "in_flight": load.in_flight,
                "requests": traffic.requests,
                "latency": traffic.latency,
            })
        })
        .collect();
    let mut applications = Vec::new();
    for spec in shared.applications.list() {
        let (spec, state) = shared.applications.selection_state(&spec.name, "").await?;
        let state = state_to_proto(&spec, "", &state);
        applications.push(json!({
            "name": spec.name,
            "policy": state.policy,
            "feedback_count": state.feedback_count,
            "default_outputs": sluice_serving::metrics::default_outputs(&spec.name),
            "arms": state.arms.iter().map(|arm| json!({
                "model": arm.model,
                "weight": arm.weight,
                "probability": arm.probability,
                "observations": arm.observations,
                "mean_loss": arm.mean_loss,
            })).collect::<Vec<_>>(),
        }));
    }
    Ok(Json(json!({
        "compute": shared.registry.runtime().compute().name(),
        "models": models,
        "applications": applications,
    })))
}
