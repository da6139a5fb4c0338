//! The Open Inference Protocol (KServe v2) over HTTP/REST, on its own port (default
//! 127.0.0.1:8000), with Triton's binary tensor data extension (what `tritonclient.http`
//! sends by default), the model-repository endpoints, and Prometheus metrics at `/metrics`.
//!
//! Every handler goes through the same registry calls as the gRPC services; errors are the
//! protocol's JSON body `{"error": "..."}` with the HTTP status matching the gRPC code.

use super::json::{self, JsonTensor};
use super::kserve::PLATFORM;
use super::status::to_status;
use super::{FrontendOptions, check_admin};
use crate::proto;
use crate::registry::{ModelState, Registry};
use crate::runtime::TensorSpec;
use crate::tensor::dtype_name;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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
        .with_state(Api { registry, options })
}

/// Serves the REST API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    options: FrontendOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(registry, options).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
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
    let model = api
        .registry
        .get(&path.name, path.version.as_deref())
        .map_err(to_status)?;
    let versions = api.registry.ready_versions(&model.name);
    Ok(Json(json!({
        "name": model.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": specs(&model.info.inputs),
        "outputs": specs(&model.info.outputs),
    })))
}

async fn ready(State(api): State<Api>, Path(path): Path<ModelPath>) -> Result<Json<Value>> {
    api.registry
        .get(&path.name, path.version.as_deref())
        .map_err(to_status)?;
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
    let model = api.registry.get(name, version).map_err(to_status)?;
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
    super::check_requested_outputs(&model, request.outputs.iter().map(|o| o.name.as_str()))?;
    let all_binary = flag(&request.parameters, "binary_data_output");
    let outputs = super::predict(&model, inputs, None).await?;
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
        "model_name": model.name,
        "model_version": model.version,
        "outputs": json_outputs,
    });
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    admin(&api, &headers, peer)?;
    super::kserve::repository_load(&api.registry, api.options.repository.as_deref(), &name).await?;
    Ok(Json(json!({})))
}

async fn repository_unload(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    admin(&api, &headers, peer)?;
    api.registry.unload(&name, None).map_err(to_status)?;
    Ok(Json(json!({})))
}
