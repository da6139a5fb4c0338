//! The HTTP port (default 127.0.0.1:8000): KServe v2 REST with Triton's binary tensor data
//! extension ([`kserve`]), the sluice application API in JSON under `/sluice/v1/apps`
//! ([`apps`]), Prometheus metrics at `/metrics`, and a live dashboard at `/dashboard`
//! ([`dashboard`]).
//!
//! Errors are the protocol's JSON body `{"error": "..."}` with the HTTP status of their kind
//! (see [`crate::status`]).

mod apps;
mod dashboard;
mod kserve;

use crate::Shared;
use crate::admin::check_admin;
use crate::connections::Connections;
use crate::connections::listener::{Admitting, Peer, TlsAdmitting};
use crate::connections::requests::{Limited, Protocol};
use crate::error::ApiError;
use crate::status::http_status;
use crate::tls::TlsIdentity;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sluice_serving::metrics::VersionGauges;
use sluice_serving::registry::ModelState;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// An error answered as `{"error": message}` with the status of its kind.
pub(crate) struct HttpError(ApiError);

impl<E: Into<ApiError>> From<E> for HttpError {
    fn from(error: E) -> HttpError {
        HttpError(error.into())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = http_status(self.0.kind);
        let message = crate::status::bounded(self.0.message);
        (status, Json(json!({ "error": message }))).into_response()
    }
}

pub(crate) type Result<T> = std::result::Result<T, HttpError>;

/// Checks an admin call's credentials (see [`check_admin`]).
pub(crate) fn authorize(shared: &Shared, headers: &HeaderMap, peer: SocketAddr) -> Result<()> {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    Ok(check_admin(
        shared.admin_token.as_deref(),
        authorization,
        Some(peer),
    )?)
}

/// The largest request body accepted, the same bound as a gRPC message: room for 16 MiB of
/// tensors (each model's default `max_request_bytes`) written out as JSON.
pub const MAX_BODY_BYTES: usize = crate::MAX_MESSAGE_BYTES;

/// Every route of the HTTP port (its layers are added by [`serve`], all in one
/// `Router::layer`).
pub(crate) fn router(shared: Shared) -> Router {
    kserve::routes()
        .merge(apps::routes())
        .merge(dashboard::routes())
        .route("/metrics", get(metrics))
        .with_state(Arc::new(shared))
}

/// A body over the limit is refused by axum's extractor in plain text; the protocol's
/// refusals are JSON, so it becomes one.
async fn json_refusals(response: Response) -> Response {
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    let error = json!({
        "error": format!("the request body is over the limit of {MAX_BODY_BYTES} bytes")
    });
    (StatusCode::PAYLOAD_TOO_LARGE, Json(error)).into_response()
}

/// The HTTP port as the connection limits see it: one message per body, refusals in JSON.
#[derive(Clone)]
pub(crate) struct Http;

impl Protocol for Http {
    type Body = axum::body::Body;
    const GRPC_FRAMING: bool = false;

    fn wrap(
        body: impl http_body::Body<Data = bytes::Bytes, Error = BoxError> + Send + 'static,
    ) -> axum::body::Body {
        axum::body::Body::new(body)
    }

    fn refusal(error: ApiError) -> Response {
        HttpError(error).into_response()
    }

    fn peer<B>(request: &axum::http::Request<B>) -> Option<&Peer> {
        request
            .extensions()
            .get::<ConnectInfo<Peer>>()
            .map(|ConnectInfo(peer)| peer)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves the HTTP port on `listener` until `shutdown` resolves, under `connections`' limits.
pub(crate) async fn serve(
    listener: Admitting,
    shared: Shared,
    tls: Option<TlsIdentity>,
    connections: Arc<Connections>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = match &tls {
        Some(identity) => Some(identity.rustls_config().map_err(std::io::Error::other)?),
        None => None,
    };
    // One `Router::layer` for all of them, outermost first: axum boxes every route again for
    // each call of it, which cost a request about 2,500 instructions (callgrind) per call.
    let layers = tower::ServiceBuilder::new()
        .layer(Limited::<Http>::new(connections.clone()))
        .layer(crate::traces::Traced::http())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(json_refusals));
    let app = router(shared)
        .layer(layers)
        .into_make_service_with_connect_info::<Peer>();
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(config) => {
            // Handshakes run concurrently, so a slow client does not hold up the others.
            let listener: TlsAdmitting =
                tls_listener::builder(tokio_rustls::TlsAcceptor::from(config))
                    .handshake_timeout(connections.limits().header_timeout)
                    .listen(listener);
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Prometheus text format.
async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let versions = shared.registry.list().into_iter().filter_map(|e| {
        let model = e.model.filter(|_| e.state == ModelState::Ready)?;
        let load = model.load();
        Some(VersionGauges {
            model: e.name,
            version: e.version,
            replicas: model.replicas(),
            queued: load.queued,
            in_flight: load.in_flight,
            resident_bytes: model.resident_bytes(),
            residence: model.residence().label(),
        })
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        sluice_serving::metrics::render(versions),
    )
}
