//! Malformed requests get INVALID_ARGUMENT or NOT_FOUND with a message that names the field or
//! tensor at fault, and nothing reaches the model.

use crate::support::{TestServer, fp32};
use sluice_api::proto::{DataType, PredictRequest, Tensor};
use tonic::Code;

fn pixels(shape: &[u64], values: usize) -> Tensor {
    fp32("pixels", shape, &vec![0.0; values])
}

fn request(model: &str, version: &str, inputs: Vec<Tensor>) -> PredictRequest {
    PredictRequest {
        model: model.into(),
        version: version.into(),
        inputs,
        timeout_ms: 0,
    }
}

#[tokio::test]
async fn malformed_requests_are_refused_with_the_cause_named() {
    let mut server = TestServer::with_samples().await;
    let mut int64_pixels = pixels(&[1, 64], 128);
    int64_pixels.datatype = DataType::Int64 as i32;
    let mut unspecified = pixels(&[1, 64], 64);
    unspecified.datatype = DataType::Unspecified as i32;
    let cases = [
        (
            request("nope", "", vec![pixels(&[1, 64], 64)]),
            Code::NotFound,
            "model `nope` is not loaded",
        ),
        (
            request("digits-mlp", "7", vec![pixels(&[1, 64], 64)]),
            Code::NotFound,
            "no version `7`",
        ),
        (
            request("", "", vec![]),
            Code::InvalidArgument,
            "model: a model name is required",
        ),
        (
            request("digits-mlp", "", vec![int64_pixels]),
            Code::InvalidArgument,
            "input `pixels`: expected dtype FP32, got INT64",
        ),
        (
            request("digits-mlp", "", vec![unspecified]),
            Code::InvalidArgument,
            "inputs[`pixels`].datatype",
        ),
        (
            request("digits-mlp", "", vec![pixels(&[1, 63], 63)]),
            Code::InvalidArgument,
            "input `pixels`: expected shape [-1, 64]",
        ),
        (
            request("digits-mlp", "", vec![pixels(&[2, 64], 64)]),
            Code::InvalidArgument,
            "needs 512 bytes of data, got 256",
        ),
        (
            request("digits-mlp", "", vec![pixels(&[0, 64], 0)]),
            Code::InvalidArgument,
            "empty batch",
        ),
        (
            request("digits-mlp", "", vec![]),
            Code::InvalidArgument,
            "missing input `pixels`",
        ),
        (
            request(
                "digits-mlp",
                "",
                vec![pixels(&[1, 64], 64), fp32("extra", &[1], &[0.0])],
            ),
            Code::InvalidArgument,
            "unknown input `extra`",
        ),
        (
            request("digits-mlp", "", vec![pixels(&[300, 64], 300 * 64)]),
            Code::InvalidArgument,
            "exceeds the model's max batch of 256",
        ),
    ];
    for (request, code, message) in cases {
        let status = server.client.predict(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(message),
            "{:?} should contain {message:?}",
            status.message()
        );
    }
    // A request over the model's size limit is refused before it is queued.
    let small_limit = sluice_api::proto::LoadModelRequest {
        component: Some(sluice_api::proto::load_model_request::Component::Wasm(
            crate::support::sample_component("digits_logreg"),
        )),
        config: std::fs::read(sluice_train::params_path("digits-logreg")).unwrap(),
        name: "small-requests".into(),
        limits: Some(sluice_api::proto::ModelLimits {
            max_request_bytes: 1024,
            ..Default::default()
        }),
        ..Default::default()
    };
    server.client.load_model(small_limit).await.unwrap();
    let big = request("small-requests", "", vec![pixels(&[8, 64], 8 * 64)]);
    let status = server.client.predict(big).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("2048 bytes, over the model's limit of 1024 bytes"),
        "{}",
        status.message()
    );
    let ok = request("small-requests", "", vec![pixels(&[2, 64], 2 * 64)]);
    assert!(server.client.predict(ok).await.is_ok());

    // The model is unharmed.
    let ok = server
        .client
        .predict(request("digits-mlp", "1", vec![pixels(&[1, 64], 64)]))
        .await;
    assert!(ok.is_ok(), "{:?}", ok.err());
    server.shutdown().await;
}

/// What a client sends is quoted, never echoed whole: a megabyte of name or datatype gets the
/// status its cause deserves, with a short message (gRPC metadata would refuse a long one).
#[tokio::test]
async fn huge_values_are_quoted_not_echoed() {
    use sluice_api::inference::{self, model_infer_request::InferInputTensor};
    let mut server = TestServer::with_samples().await;
    let huge = "m".repeat(1 << 20);
    let status = server
        .client
        .predict(request(&huge, "", vec![pixels(&[1, 64], 64)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    assert!(
        status.message().len() < 512,
        "{} bytes",
        status.message().len()
    );
    assert!(
        status.message().contains("(1048576 bytes)"),
        "{}",
        status.message()
    );

    let mut kserve = inference::grpc_inference_service_client::GrpcInferenceServiceClient::new(
        server.channel().await,
    );
    let infer = inference::ModelInferRequest {
        model_name: "digits-logreg".into(),
        inputs: vec![InferInputTensor {
            name: "pixels".into(),
            datatype: "F".repeat(100_000),
            shape: vec![1, 64],
            ..Default::default()
        }],
        raw_input_contents: vec![vec![0; 256]],
        ..Default::default()
    };
    let status = kserve.model_infer(infer).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().len() < 512,
        "{} bytes",
        status.message().len()
    );
    assert!(
        status.message().contains("is not supported"),
        "{}",
        status.message()
    );
    server.shutdown().await;
}

/// A model serves under a name that fits a URL, a directory and a label: others are refused
/// at load, naming the field.
#[tokio::test]
async fn models_load_only_under_proper_names() {
    let mut server = TestServer::start(|server| server).await;
    let load = |name: &str| sluice_api::proto::LoadModelRequest {
        component: Some(sluice_api::proto::load_model_request::Component::Wasm(
            crate::support::sample_component("digits_logreg"),
        )),
        config: std::fs::read(sluice_train::params_path("digits-logreg")).unwrap(),
        name: name.into(),
        ..Default::default()
    };
    for (name, expected) in [
        ("a\0b", "contains '\\0'"),
        ("a/b", "contains '/'"),
        ("..", "is not a name"),
    ] {
        let status = server.client.load_model(load(name)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name:?}");
        assert!(
            status
                .message()
                .starts_with("cannot load the model: name: ")
                && status.message().contains(expected),
            "{name:?}: {}",
            status.message()
        );
    }
    let status = server
        .client
        .load_model(load(&"n".repeat(1 << 20)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("at most 128"),
        "{}",
        status.message()
    );
    assert!(server.models().await.is_empty(), "nothing was loaded");
    server
        .client
        .load_model(load("digits.v2_b-1"))
        .await
        .unwrap();
    server.shutdown().await;
}
