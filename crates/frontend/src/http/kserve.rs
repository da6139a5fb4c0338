//! The Open Inference Protocol (KServe v2) over HTTP/REST, with Triton's binary tensor data
//! extension (what `tritonclient.http` sends by default) and the model-repository endpoints.
//! JSON tensors become [`Tensor`]s and back directly (no protobuf in between); binary tensor
//! data is the bytes a model receives.

use super::{Result, authorize};
use crate::Shared;
use crate::connections::listener::Peer;
use crate::error::ApiError;
use crate::kserve::{
    self, AppParameters, InferTarget, PLATFORM, SERVER_NAME, is_requested, repository_index,
};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sluice_api::convert::shape_to_u32;
use sluice_api::kserve_json::{self, Elements};
use sluice_api::plain_json;
use sluice_types::{Dtype, Tensor, TensorSpec};
use std::sync::Arc;

/// Header of the binary tensor data extension: the length of the JSON part of the body (a
/// `HeaderName`, so that looking it up does not parse the name again for each request).
const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::invalid_argument(message)
}

/// The KServe v2 routes.
pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({ "live": true })) }),
        )
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(metadata))
        .route("/v2/models/{name}/versions/{version}", get(metadata))
        .route("/v2/models/{name}/ready", get(ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/v2/repository/index", post(index))
        .route("/v2/repository/models/{name}/load", post(load))
        .route("/v2/repository/models/{name}/unload", post(unload))
}

/// 200 while the server takes new work; once it drains, 400 (the protocol's "4xx means
/// false", as Triton answers), so probes and balancers stop sending to it.
async fn server_ready(State(shared): State<Arc<Shared>>) -> Response {
    let ready = shared.ready();
    let status = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::BAD_REQUEST
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["model_repository", "binary_tensor_data"],
    }))
}

fn specs(specs: &[TensorSpec]) -> Value {
    specs
        .iter()
        .map(|s| json!({ "name": s.name, "datatype": s.dtype.name(), "shape": s.shape }))
        .collect()
}

/// `/v2/models/{name}` or `/v2/models/{name}/versions/{version}`.
#[derive(Deserialize)]
struct ModelPath {
    name: String,
    version: Option<String>,
}

fn resolve(shared: &Shared, path: &ModelPath) -> Result<InferTarget> {
    Ok(InferTarget::resolve(
        &shared.registry,
        &shared.applications,
        &path.name,
        path.version.as_deref(),
    )?)
}

async fn metadata(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<ModelPath>,
) -> Result<Json<Value>> {
    let meta = resolve(&shared, &path)?.metadata(&shared.registry);
    Ok(Json(json!({
        "name": meta.name,
        "versions": meta.versions,
        "platform": PLATFORM,
        "inputs": specs(&meta.inputs),
        "outputs": specs(&meta.outputs),
    })))
}

async fn ready(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<ModelPath>,
) -> Result<Json<Value>> {
    if !resolve(&shared, &path)?.ready(&shared.registry) {
        return Err(ApiError::unavailable(format!(
            "application `{}` has no loaded model",
            path.name
        ))
        .into());
    }
    Ok(Json(json!({ "name": path.name, "ready": true })))
}

/// One input of an inference request.
struct InferInput<'a> {
    name: String,
    datatype: String,
    shape: Vec<u64>,
    parameters: serde_json::Map<String, Value>,
    data: InputData<'a>,
}

/// An input's `data`: decoded as it was parsed when its name, datatype and shape came first
/// (as Triton's clients send them), else kept as JSON text to decode once they are known.
enum InputData<'a> {
    /// None given (the data is binary, after the JSON).
    Absent,
    /// Decoded in the one pass over the body as this datatype (or why it could not be).
    Decoded(Dtype, std::result::Result<Vec<u8>, String>),
    /// The text, for fields that came in another order.
    Raw(&'a RawValue),
}

impl<'de: 'a, 'a> Deserialize<'de> for InferInput<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_map(InputVisitor(std::marker::PhantomData))
    }
}

struct InputVisitor<'a>(std::marker::PhantomData<&'a ()>);

/// A key of an input object, told apart without copying it (serde's `Cow<str>` keys are
/// always copied into a `String`).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum InputField {
    Name,
    Datatype,
    Shape,
    Parameters,
    Data,
    #[serde(other)]
    Other,
}

impl<'de: 'a, 'a> serde::de::Visitor<'de> for InputVisitor<'a> {
    type Value = InferInput<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an input tensor {\"name\", \"datatype\", \"shape\", \"data\"}")
    }

    fn visit_map<M: serde::de::MapAccess<'de>>(
        self,
        mut map: M,
    ) -> std::result::Result<Self::Value, M::Error> {
        use serde::de::Error;
        let (mut name, mut datatype, mut shape, mut parameters) = (None, None, None, None);
        let mut data = InputData::Absent;
        let mut dims: Option<Vec<u32>> = None;
        while let Some(key) = map.next_key::<InputField>()? {
            match key {
                InputField::Name => name = Some(map.next_value::<String>()?),
                InputField::Datatype => datatype = Some(map.next_value::<String>()?),
                InputField::Shape => {
                    let given: Vec<u64> = map.next_value()?;
                    dims = given.iter().map(|&d| u32::try_from(d).ok()).collect();
                    shape = Some(given);
                }
                InputField::Parameters => parameters = Some(map.next_value()?),
                InputField::Data => {
                    let seed = match (&name, &datatype, &dims) {
                        (Some(name), Some(datatype), Some(dims)) => {
                            kserve_json::DataSeed::new(name, datatype, dims)
                        }
                        _ => None,
                    };
                    data = match seed {
                        Some(seed) => InputData::Decoded(seed.dtype(), map.next_value_seed(seed)?),
                        None => InputData::Raw(map.next_value()?),
                    };
                }
                InputField::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(InferInput {
            name: name.ok_or_else(|| M::Error::missing_field("name"))?,
            datatype: datatype.ok_or_else(|| M::Error::missing_field("datatype"))?,
            shape: shape.ok_or_else(|| M::Error::missing_field("shape"))?,
            parameters: parameters.unwrap_or_default(),
            data,
        })
    }
}

#[derive(Deserialize)]
struct InferOutput {
    name: String,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct InferRequest<'a> {
    id: Option<String>,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
    #[serde(borrow)]
    inputs: Vec<InferInput<'a>>,
    #[serde(default)]
    outputs: Vec<InferOutput>,
}

fn flag(parameters: &serde_json::Map<String, Value>, key: &str) -> bool {
    parameters
        .get(key)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The `Inference-Header-Content-Length` header, if present; taken without copying the
/// request's other headers (axum's `HeaderMap` extractor clones them all).
struct HeaderLength(Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for HeaderLength {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &S,
    ) -> std::result::Result<HeaderLength, Self::Rejection> {
        Ok(HeaderLength(parts.headers.get(HEADER_LENGTH).cloned()))
    }
}

/// Splits a body into its JSON part and the binary data that follows it (if the
/// `Inference-Header-Content-Length` header is present).
fn split_body<'a>(length: &HeaderLength, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8])> {
    let Some(value) = &length.0 else {
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
    State(shared): State<Arc<Shared>>,
    Path(path): Path<ModelPath>,
    header_length: HeaderLength,
    body: Bytes,
) -> Result<Response> {
    let target = resolve(&shared, &path)?;
    let (header, binary) = split_body(&header_length, &body)?;
    let request = parse_request(header, binary)?;
    let inputs = request.inputs;
    target.check_requested_outputs(request.outputs.iter().map(|o| o.name.as_str()))?;
    let parameters = AppParameters {
        user_id: request
            .parameters
            .get("user_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        bypass_cache: flag(&request.parameters, "bypass_cache"),
    };
    let inferred = target
        .infer(&shared.applications, inputs, parameters)
        .await?;
    let all_binary = flag(&request.parameters, "binary_data_output");
    let (outputs, appended) = encode_outputs(&inferred.outputs, &request.outputs, all_binary);
    let answer = InferResponse {
        model_name: &inferred.name,
        model_version: &inferred.version,
        id: request.id,
        parameters: (!inferred.parameters.is_empty()).then(|| {
            inferred
                .parameters
                .iter()
                .map(|(key, value)| (key.to_string(), Value::String(value.clone())))
                .collect()
        }),
        outputs,
    };
    let mut header = Vec::with_capacity(answer_capacity(&answer.outputs));
    serde_json::to_writer(&mut header, &answer).expect("JSON serializes");
    if appended.is_empty() {
        return Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            header,
        )
            .into_response());
    }
    let header_length = header.len();
    let mut body = header;
    body.extend_from_slice(&appended);
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(HEADER_LENGTH, HeaderValue::from(header_length));
    Ok(response)
}

/// The request's inputs as tensors: JSON `data`, or (with `binary_data_size`) the next bytes
/// of the binary part of the body.
fn decode_inputs(inputs: Vec<InferInput<'_>>, mut binary: &[u8]) -> Result<Vec<Tensor>> {
    let mut tensors = Vec::with_capacity(inputs.len());
    for input in inputs {
        let size = input
            .parameters
            .get("binary_data_size")
            .and_then(Value::as_u64);
        let tensor = match size {
            Some(size) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(bad_request(format!(
                        "input `{}`: binary_data_size {size} is past the end of the body",
                        input.name
                    ))
                    .into());
                }
                let (data, rest) = binary.split_at(size);
                binary = rest;
                let dtype = Dtype::parse(&input.datatype).ok_or_else(|| {
                    bad_request(format!(
                        "input `{}`: {}",
                        input.name,
                        Dtype::unsupported(&input.datatype)
                    ))
                })?;
                Tensor {
                    shape: shape_to_u32(&input.name, &input.shape).map_err(bad_request)?,
                    name: input.name,
                    dtype,
                    data: data.to_vec(),
                }
            }
            None => match input.data {
                InputData::Decoded(dtype, data) => Tensor {
                    data: data.map_err(bad_request)?,
                    dtype,
                    shape: shape_to_u32(&input.name, &input.shape).map_err(bad_request)?,
                    name: input.name,
                },
                InputData::Raw(data) => {
                    kserve_json::decode(input.name, &input.datatype, &input.shape, data.get())
                        .map_err(bad_request)?
                }
                InputData::Absent => {
                    kserve_json::decode(input.name, &input.datatype, &input.shape, "[]")
                        .map_err(bad_request)?
                }
            },
        };
        tensors.push(tensor);
    }
    Ok(tensors)
}

/// One output of an inference response: its data in JSON, or its size when the data follows
/// the JSON part as binary.
#[derive(Serialize)]
struct OutputJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [u32],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Elements<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<serde_json::Map<String, Value>>,
    outputs: Vec<OutputJson<'a>>,
}

/// Room for a JSON answer, so that writing it does not grow the buffer step by step: the
/// envelope, and for each output its name and four characters for each byte of data (an
/// FP32's four bytes print as at most 15 characters and a comma; wider types as fewer).
fn answer_capacity(outputs: &[OutputJson]) -> usize {
    let output =
        |o: &OutputJson| 96 + o.name.len() + o.data.as_ref().map_or(0, |d| 4 * d.0.data.len());
    128 + outputs.iter().map(output).sum::<usize>()
}

/// What the handler uses of a request, from either reader.
struct ParsedRequest {
    id: Option<String>,
    parameters: serde_json::Map<String, Value>,
    outputs: Vec<InferOutput>,
    inputs: Vec<Tensor>,
}

/// The request in the plain form (JSON numbers, no parameters, no binary part) in one pass
/// over its bytes ([`plain_json`]); any other through serde, whose errors name the field.
fn parse_request(header: &[u8], binary: &[u8]) -> Result<ParsedRequest> {
    if let Some((id, inputs)) = binary
        .is_empty()
        .then(|| plain_json::plain_request(header))
        .flatten()
    {
        return Ok(ParsedRequest {
            id,
            parameters: serde_json::Map::new(),
            outputs: Vec::new(),
            inputs,
        });
    }
    let request: InferRequest = serde_json::from_slice(header).map_err(|e| {
        bad_request(format!(
            "the request body is not a valid inference request: {e}"
        ))
    })?;
    Ok(ParsedRequest {
        id: request.id,
        parameters: request.parameters,
        outputs: request.outputs,
        inputs: decode_inputs(request.inputs, binary)?,
    })
}

/// The requested outputs (all when none are named), each in JSON or, when asked for, as
/// binary data appended after the JSON part.
fn encode_outputs<'a>(
    outputs: &'a [Tensor],
    requested: &[InferOutput],
    all_binary: bool,
) -> (Vec<OutputJson<'a>>, Vec<u8>) {
    let mut json_outputs = Vec::with_capacity(outputs.len());
    let mut appended = Vec::new();
    for t in outputs {
        let names = requested.iter().map(|o| o.name.as_str());
        if !is_requested(names, &t.name, requested.is_empty()) {
            continue;
        }
        let binary = all_binary
            || requested
                .iter()
                .find(|o| o.name == t.name)
                .is_some_and(|o| flag(&o.parameters, "binary_data"));
        let (parameters, data) = if binary {
            appended.extend_from_slice(&t.data);
            (
                Some(BinarySize {
                    binary_data_size: t.data.len(),
                }),
                None,
            )
        } else {
            (None, Some(Elements(t)))
        };
        json_outputs.push(OutputJson {
            name: &t.name,
            datatype: t.dtype.name(),
            shape: &t.shape,
            parameters,
            data,
        });
    }
    (json_outputs, appended)
}

async fn index(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Json<Value>> {
    let ready_only = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("ready").and_then(Value::as_bool))
        .unwrap_or(false);
    let index = repository_index(&shared, ready_only)?;
    Ok(Json(
        index
            .into_iter()
            .map(|m| json!({ "name": m.name, "version": m.version, "state": m.state, "reason": m.reason }))
            .collect(),
    ))
}

async fn load(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    authorize(&shared, &headers, peer.addr())?;
    kserve::repository_load(&shared, &name).await?;
    Ok(Json(json!({})))
}

async fn unload(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    authorize(&shared, &headers, peer.addr())?;
    kserve::repository_unload(&shared, &name).await?;
    Ok(Json(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(body: &str) -> std::result::Result<Vec<Tensor>, String> {
        let request: InferRequest = serde_json::from_str(body).map_err(|e| e.to_string())?;
        decode_inputs(request.inputs, &[]).map_err(|e| e.0.message)
    }

    /// `data` is decoded in the one pass when name, datatype and shape come first, and kept as
    /// text to decode after when they come later: the same tensor, and the same errors.
    #[test]
    fn data_decodes_alike_in_either_field_order() {
        let first = r#"{"inputs":[{"name":"x","datatype":"INT32","shape":[2],"data":[1,2]}]}"#;
        let last = r#"{"inputs":[{"data":[1,2],"shape":[2],"datatype":"INT32","name":"x"}]}"#;
        let (a, b) = (inputs(first).unwrap(), inputs(last).unwrap());
        assert_eq!(a, b);
        assert_eq!(a[0].data, [1, 0, 0, 0, 2, 0, 0, 0]);
        for order in [
            r#"{"inputs":[{"name":"x","datatype":"INT32","shape":[3],"data":[1,"a",{"b":1}]}]}"#,
            r#"{"inputs":[{"data":[1,"a",{"b":1}],"name":"x","datatype":"INT32","shape":[3]}]}"#,
        ] {
            let error = inputs(order).unwrap_err();
            assert!(
                error.contains(r#"tensor `x`: element 1 ("a") is not a valid INT32"#),
                "{error}"
            );
        }
        let short = r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[3],"data":[1]}]}"#;
        assert!(
            inputs(short)
                .unwrap_err()
                .contains("holds 3 elements but data has 1")
        );
        let missing = r#"{"inputs":[{"name":"x","shape":[1],"data":[1]}]}"#;
        assert!(
            inputs(missing)
                .unwrap_err()
                .contains("missing field `datatype`")
        );
    }
}
