//! The Open Inference Protocol (KServe v2) over HTTP/REST, on its own port (default
//! 127.0.0.1:8000), with Triton's binary tensor data extension (what `tritonclient.http`
//! sends by default), the model-repository endpoints, and Prometheus metrics at `/metrics`.
//!
//! Every handler goes through the same registry calls as the gRPC services; errors are the
//! protocol's JSON body `{"error": "..."}` with the HTTP status matching the gRPC code.

use super::apps::{
    answer_json, answer_to_proto, application_json, state_json, state_to_proto, value_from_json,
    value_from_proto,
};
use super::json::{self, JsonTensor};
use super::kserve::PLATFORM;
use super::status::selection_status;
use super::status::to_status;
use super::{AppParameters, FrontendOptions, InferTarget, check_admin};
use crate::proto;
use crate::registry::{ModelState, Registry};
use crate::runtime::TensorSpec;
use crate::selection::Applications;
use crate::tensor::dtype_name;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// Header of the binary tensor data extension: the length of the JSON part of the body.
const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Clone)]
struct Api {
    registry: Arc<Registry>,
    applications: Arc<Applications>,
    options: FrontendOptions,
}

/// An error answered as `{"error": message}`.
struct HttpError(StatusCode, String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<tonic::Status> for HttpError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let code = match status.code() {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpError(code, status.message().to_string())
    }
}

fn bad_request(message: impl Into<String>) -> HttpError {
    HttpError(StatusCode::BAD_REQUEST, message.into())
}

type Result<T> = std::result::Result<T, HttpError>;

/// The REST routes.
pub fn router(registry: Arc<Registry>, options: FrontendOptions) -> Router {
    Router::new()
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({ "live": true })) }),
        )
        .route(
            "/v2/health/ready",
            get(|| async { Json(json!({ "ready": true })) }),
        )
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(metadata))
        .route("/v2/models/{name}/versions/{version}", get(metadata))
        .route("/v2/models/{name}/ready", get(ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{name}/load", post(repository_load))
        .route("/metrics", get(metrics))
        .route(
            "/v2/repository/models/{name}/unload",
            post(repository_unload),
        )
        .route("/sluice/v1/apps", get(list_apps))
        .route("/sluice/v1/apps/{app}/predict", post(predict_app))
        .route("/sluice/v1/apps/{app}/feedback", post(feedback))
        .route("/sluice/v1/apps/{app}/state", get(selection_state))
        .route(
            "/sluice/v1/apps/{app}/users/{user}/state",
            get(selection_state),
        )
        .with_state({
            let options = options.with_applications(&registry);
            Api {
                applications: options.applications(),
                registry,
                options,
            }
        })
}

/// The client's address, for the admin check; taken from plain and TLS connections alike.
#[derive(Clone, Copy)]
struct PeerAddr(SocketAddr);

/// The HTTP port's listener when it serves TLS.
type TlsTcpListener = tls_listener::TlsListener<tokio::net::TcpListener, tokio_rustls::TlsAcceptor>;

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsTcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TlsTcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Serves the REST API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    options: FrontendOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = match &options.tls {
        Some(identity) => Some(identity.rustls_config().map_err(std::io::Error::other)?),
        None => None,
    };
    let app = router(registry, options).into_make_service_with_connect_info::<PeerAddr>();
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(config) => {
            // Handshakes run concurrently, so a slow client does not hold up the others.
            let listener = TlsTcpListener::new(tokio_rustls::TlsAcceptor::from(config), listener);
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "sluice",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["model_repository", "binary_tensor_data"],
    }))
}

fn specs(specs: &[TensorSpec]) -> Value {
    specs
        .iter()
        .map(|s| json!({ "name": s.name, "datatype": dtype_name(s.dtype), "shape": s.shape }))
        .collect()
}

/// `/v2/models/{name}` or `/v2/models/{name}/versions/{version}`.
#[derive(Deserialize)]
struct ModelPath {
    name: String,
    version: Option<String>,
}

async fn metadata(State(api): State<Api>, Path(path): Path<ModelPath>) -> Result<Json<Value>> {
    let target = InferTarget::resolve(
        &api.registry,
        &api.applications,
        &path.name,
        path.version.as_deref(),
    )?;
    let meta = target.metadata(&api.registry);
    Ok(Json(json!({
        "name": meta.name,
        "versions": meta.versions,
        "platform": PLATFORM,
        "inputs": specs(&meta.inputs),
        "outputs": specs(&meta.outputs),
    })))
}

async fn ready(State(api): State<Api>, Path(path): Path<ModelPath>) -> Result<Json<Value>> {
    let target = InferTarget::resolve(
        &api.registry,
        &api.applications,
        &path.name,
        path.version.as_deref(),
    )?;
    if !target.ready(&api.registry) {
        return Err(HttpError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("application `{}` has no loaded model", path.name),
        ));
    }
    Ok(Json(json!({ "name": path.name, "ready": true })))
}

#[derive(Deserialize)]
struct InferInput {
    name: String,
    datatype: String,
    shape: Vec<u64>,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize)]
struct InferOutput {
    name: String,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct InferRequest {
    id: Option<String>,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Vec<InferOutput>,
}

fn flag(parameters: &serde_json::Map<String, Value>, key: &str) -> bool {
    parameters
        .get(key)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Splits a body into its JSON part and the binary data that follows it (if the
/// `Inference-Header-Content-Length` header is present).
fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8])> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok((body, &[]));
    };
    let length: usize = value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n <= body.len())
        .ok_or_else(|| bad_request(format!("{HEADER_LENGTH}: not a length within the body")))?;
    Ok(body.split_at(length))
}

async fn infer(
    State(api): State<Api>,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    run_infer(&api, &path.name, path.version.as_deref(), &headers, &body).await
}

async fn run_infer(
    api: &Api,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response> {
    let target = InferTarget::resolve(&api.registry, &api.applications, name, version)?;
    let (header, mut binary) = split_body(headers, body)?;
    let request: InferRequest = serde_json::from_slice(header).map_err(|e| {
        bad_request(format!(
            "the request body is not a valid inference request: {e}"
        ))
    })?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let tensor = match input
            .parameters
            .get("binary_data_size")
            .and_then(Value::as_u64)
        {
            Some(size) => {
                let size = size as usize;
                if size > binary.len() {
                    return Err(bad_request(format!(
                        "input `{}`: binary_data_size {size} is past the end of the body",
                        input.name
                    )));
                }
                let (data, rest) = binary.split_at(size);
                binary = rest;
                let dtype = crate::tensor::parse_dtype(&input.datatype).ok_or_else(|| {
                    bad_request(format!(
                        "input `{}`: datatype `{}` is not supported",
                        input.name, input.datatype
                    ))
                })?;
                proto::Tensor {
                    name: input.name,
                    datatype: super::convert::dtype_to_proto(dtype) as i32,
                    shape: input.shape,
                    data: data.to_vec(),
                }
            }
            None => json::encode(JsonTensor {
                name: input.name,
                datatype: input.datatype,
                shape: input.shape,
                data: input.data,
            })
            .map_err(|e| bad_request(format!("{e:#}")))?,
        };
        inputs.push(super::convert::tensor_from_proto(tensor).map_err(bad_request)?);
    }
    target.check_requested_outputs(request.outputs.iter().map(|o| o.name.as_str()))?;
    let all_binary = flag(&request.parameters, "binary_data_output");
    let parameters = AppParameters {
        user_id: request
            .parameters
            .get("user_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        bypass_cache: flag(&request.parameters, "bypass_cache"),
    };
    let inferred = target.infer(&api.applications, inputs, parameters).await?;
    let outputs = inferred.outputs;
    let mut json_outputs = Vec::new();
    let mut appended = Vec::new();
    for t in outputs {
        let binary = match request.outputs.iter().find(|o| o.name == t.name) {
            Some(wanted) => flag(&wanted.parameters, "binary_data") || all_binary,
            None if request.outputs.is_empty() => all_binary,
            None => continue,
        };
        let t = super::convert::tensor_to_proto(t);
        if binary {
            json_outputs.push(json!({
                "name": t.name,
                "datatype": dtype_name(super::convert::dtype_from_proto(t.datatype).expect("a model dtype")),
                "shape": t.shape,
                "parameters": { "binary_data_size": t.data.len() },
            }));
            appended.extend_from_slice(&t.data);
        } else {
            let decoded = json::decode(&t)
                .map_err(|e| HttpError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            json_outputs.push(serde_json::to_value(decoded).expect("JSON tensors serialize"));
        }
    }
    let mut answer = json!({
        "model_name": inferred.name,
        "model_version": inferred.version,
        "outputs": json_outputs,
    });
    if !inferred.parameters.is_empty() {
        answer["parameters"] = inferred
            .parameters
            .into_iter()
            .map(|(key, value)| (key.to_string(), Value::String(value)))
            .collect();
    }
    if let Some(id) = request.id {
        answer["id"] = Value::String(id);
    }
    let header = serde_json::to_vec(&answer).expect("JSON serializes");
    if appended.is_empty() {
        return Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            header,
        )
            .into_response());
    }
    let mut body = header.clone();
    body.extend_from_slice(&appended);
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(HEADER_LENGTH, HeaderValue::from(header.len()));
    Ok(response)
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
            bad_request(format!(
                "the body must be {{\"inputs\": [...], \"user_id\"?, \"labels\"?}}: {e}"
            ))
        })
    }

    fn tensors(&mut self) -> Result<Vec<crate::runtime::Tensor>> {
        std::mem::take(&mut self.inputs)
            .into_iter()
            .map(|t| {
                let t = json::encode(t).map_err(|e| bad_request(format!("inputs: {e:#}")))?;
                super::convert::tensor_from_proto(t).map_err(bad_request)
            })
            .collect()
    }
}

async fn list_apps(State(api): State<Api>) -> Json<Value> {
    let apps: Vec<Value> = api
        .applications
        .list()
        .iter()
        .map(application_json)
        .collect();
    Json(json!({ "applications": apps }))
}

async fn predict_app(
    State(api): State<Api>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Json<Value>> {
    let mut request = AppRequest::parse(&body)?;
    let inputs = request.tensors()?;
    let answer = api
        .applications
        .predict(&app, &request.user_id, inputs, request.bypass_cache)
        .await
        .map_err(selection_status)?;
    Ok(Json(answer_json(&answer_to_proto(answer))))
}

async fn feedback(
    State(api): State<Api>,
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
        .map_err(bad_request)?;
    let outcome = api
        .applications
        .feedback(&app, &request.user_id, inputs, labels)
        .await
        .map_err(selection_status)?;
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
    State(api): State<Api>,
    Path(path): Path<StatePath>,
) -> Result<Json<Value>> {
    let user = path.user.unwrap_or_default();
    let (spec, state) = api
        .applications
        .selection_state(&path.app, &user)
        .await
        .map_err(selection_status)?;
    Ok(Json(state_json(&state_to_proto(&spec, &user, &state))))
}

/// Prometheus text format.
async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    let replicas = api.registry.list().into_iter().filter_map(|e| {
        let model = e.model.filter(|_| e.state == ModelState::Ready)?;
        Some((e.name, e.version, model.replicas()))
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(replicas),
    )
}

fn admin(api: &Api, headers: &HeaderMap, peer: SocketAddr) -> Result<()> {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    Ok(check_admin(&api.options, authorization, Some(peer))?)
}

async fn repository_index(State(api): State<Api>, body: Bytes) -> Result<Json<Value>> {
    let ready_only = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("ready").and_then(Value::as_bool))
        .unwrap_or(false);
    let index = super::kserve::repository_index(
        &api.registry,
        api.options.repository.as_deref(),
        ready_only,
    )?;
    Ok(Json(
        index
            .into_iter()
            .map(|m| json!({ "name": m.name, "version": m.version, "state": m.state, "reason": m.reason }))
            .collect(),
    ))
}

async fn repository_load(
    State(api): State<Api>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    admin(&api, &headers, peer)?;
    super::kserve::repository_load(&api.registry, api.options.repository.as_deref(), &name).await?;
    Ok(Json(json!({})))
}

async fn repository_unload(
    State(api): State<Api>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    admin(&api, &headers, peer)?;
    api.registry.unload(&name, None).map_err(to_status)?;
    super::loaded::forget(&api.options, &name, None).await?;
    Ok(Json(json!({})))
}
