//! The Open Inference Protocol (KServe v2) over gRPC, with a plain tonic client built from the
//! same proto: health, metadata, inference with raw and typed inputs, requested outputs,
//! versions, errors, and the repository extension.

use crate::support::{TestServer, digits_request, registry_on, sample_component};
use sluice_api::inference::{
    self, InferTensorContents,
    grpc_inference_service_client::GrpcInferenceServiceClient,
    model_infer_request::{InferInputTensor, InferRequestedOutputTensor},
};
use sluice_runtime::RuntimeConfig;
use sluice_serving::ModelLimits;
use sluice_serving::batching::BatchingConfig;
use sluice_serving::repository::Repository;
use sluice_train::Digits;
use std::path::Path;
use std::sync::Arc;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::CACHE;

async fn client(server: &TestServer) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(server.channel().await)
}

fn pixels(rows: usize) -> Vec<f32> {
    let digits = Digits::load_default().unwrap();
    digits.holdout[..rows]
        .iter()
        .flat_map(|s| s.pixels.clone())
        .collect()
}

fn infer(model: &str, rows: usize, raw: bool) -> inference::ModelInferRequest {
    let values = pixels(rows);
    let mut input = InferInputTensor {
        name: "pixels".into(),
        datatype: "FP32".into(),
        shape: vec![rows as i64, 64],
        ..Default::default()
    };
    let mut raw_input_contents = Vec::new();
    if raw {
        raw_input_contents.push(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    } else {
        input.contents = Some(InferTensorContents {
            fp32_contents: values,
            ..Default::default()
        });
    }
    inference::ModelInferRequest {
        model_name: model.into(),
        id: "req-1".into(),
        inputs: vec![input],
        raw_input_contents,
        ..Default::default()
    }
}

#[tokio::test]
async fn health_metadata_and_inference() {
    let server = TestServer::with_samples().await;
    let mut kserve = client(&server).await;
    assert!(
        kserve
            .server_live(inference::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        kserve
            .server_ready(inference::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    for (name, version, expected) in [
        ("digits-mlp", "", true),
        ("digits-mlp", "1", true),
        ("digits-mlp", "9", false),
        ("nope", "", false),
    ] {
        let request = inference::ModelReadyRequest {
            name: name.into(),
            version: version.into(),
        };
        let ready = kserve
            .model_ready(request)
            .await
            .unwrap()
            .into_inner()
            .ready;
        assert_eq!(ready, expected, "{name} {version:?}");
    }

    let meta = kserve
        .server_metadata(inference::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "sluice");
    assert!(meta.extensions.contains(&"model_repository".to_string()));
    let meta = kserve
        .model_metadata(inference::ModelMetadataRequest {
            name: "digits-mlp".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (meta.name.as_str(), meta.versions.as_slice()),
        ("digits-mlp", &["1".to_string()][..])
    );
    assert_eq!(meta.inputs[0].datatype, "FP32");
    assert_eq!(meta.inputs[0].shape, [-1, 64]);
    assert_eq!(
        meta.outputs
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        ["probabilities", "label"]
    );

    // Raw and typed inputs give the same answer, returned as raw_output_contents.
    let raw = kserve
        .model_infer(infer("digits-mlp", 3, true))
        .await
        .unwrap()
        .into_inner();
    let typed = kserve
        .model_infer(infer("digits-mlp", 3, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raw.raw_output_contents, typed.raw_output_contents);
    assert_eq!(
        (
            raw.model_name.as_str(),
            raw.model_version.as_str(),
            raw.id.as_str()
        ),
        ("digits-mlp", "1", "req-1")
    );
    let label = raw.outputs.iter().position(|o| o.name == "label").unwrap();
    assert_eq!(raw.outputs[label].datatype, "INT64");
    assert_eq!(raw.outputs[label].shape, [3]);
    let labels: Vec<i64> = raw.raw_output_contents[label]
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    // The same rows through the sluice API give the same bytes.
    let digits = Digits::load_default().unwrap();
    let mut sluice_client = server.client.clone();
    let direct = sluice_client
        .predict(digits_request("digits-mlp", &digits.holdout[..3]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        labels,
        crate::support::i64_values(crate::support::output(&direct, "label"))
    );

    // Only the requested outputs come back.
    let mut only_label = infer("digits-mlp", 1, true);
    only_label.outputs = vec![InferRequestedOutputTensor {
        name: "label".into(),
        ..Default::default()
    }];
    let answer = kserve.model_infer(only_label).await.unwrap().into_inner();
    assert_eq!(answer.outputs.len(), 1);
    assert_eq!(answer.raw_output_contents.len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn errors_follow_the_protocol() {
    let server = TestServer::with_samples().await;
    let mut kserve = client(&server).await;
    let mut wrong_dtype = infer("digits-mlp", 1, true);
    wrong_dtype.inputs[0].datatype = "INT32".into();
    let mut wrong_shape = infer("digits-mlp", 1, true);
    wrong_shape.inputs[0].shape = vec![1, 32];
    let mut unknown_output = infer("digits-mlp", 1, true);
    unknown_output.outputs = vec![InferRequestedOutputTensor {
        name: "z".into(),
        ..Default::default()
    }];
    let mut extra_raw = infer("digits-mlp", 1, true);
    extra_raw.raw_input_contents.push(Vec::new());
    let mut bad_version = infer("digits-mlp", 1, true);
    bad_version.model_version = "7".into();
    let cases = [
        (
            infer("nope", 1, true),
            Code::NotFound,
            "model `nope` is not loaded",
        ),
        (bad_version, Code::NotFound, "no version `7`"),
        (
            wrong_dtype,
            Code::InvalidArgument,
            "input `pixels`: expected dtype FP32, got INT32",
        ),
        (
            wrong_shape,
            Code::InvalidArgument,
            "input `pixels`: expected shape [-1, 64]",
        ),
        (
            unknown_output,
            Code::InvalidArgument,
            "requested output `z`",
        ),
        (
            extra_raw,
            Code::InvalidArgument,
            "raw_input_contents has 2 entries for 1 inputs",
        ),
    ];
    for (request, code, message) in cases {
        let status = kserve.model_infer(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(message),
            "{:?} should contain {message:?}",
            status.message()
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_repository_extension_loads_and_unloads() {
    let dir = Path::new(CACHE).join("repositories").join("kserve");
    let _ = std::fs::remove_dir_all(&dir);
    let version = dir.join("logreg").join("1");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::write(
        version.join("model.wasm"),
        sample_component("digits_logreg"),
    )
    .unwrap();
    std::fs::copy(
        sluice_train::params_path("digits-logreg"),
        version.join("params.slpm"),
    )
    .unwrap();
    std::fs::write(version.join("config.toml"), "config = \"params.slpm\"\n").unwrap();

    let registry = registry_on(RuntimeConfig::default().compute);
    let repository = Arc::new(Repository::new(
        dir.clone(),
        registry.clone(),
        ModelLimits::default(),
        BatchingConfig::default(),
    ));
    let server =
        TestServer::start_with(registry, move |server| server.repository(repository), None).await;
    let mut kserve = GrpcInferenceServiceClient::new(server.channel().await);

    let index = |ready| inference::RepositoryIndexRequest {
        repository_name: String::new(),
        ready,
    };
    let listed = kserve
        .repository_index(index(false))
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].state.as_str()),
        ("logreg", "UNAVAILABLE")
    );
    assert!(
        kserve
            .repository_index(index(true))
            .await
            .unwrap()
            .into_inner()
            .models
            .is_empty()
    );

    let load = |name: &str| inference::RepositoryModelLoadRequest {
        model_name: name.into(),
        ..Default::default()
    };
    kserve.repository_model_load(load("logreg")).await.unwrap();
    let listed = kserve
        .repository_index(index(true))
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(
        (listed[0].version.as_str(), listed[0].state.as_str()),
        ("1", "READY")
    );
    kserve.model_infer(infer("logreg", 2, true)).await.unwrap();

    let status = kserve
        .repository_model_load(load("missing"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());

    let unload = inference::RepositoryModelUnloadRequest {
        model_name: "logreg".into(),
        ..Default::default()
    };
    kserve.repository_model_unload(unload).await.unwrap();
    let status = kserve
        .model_infer(infer("logreg", 1, true))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // Loading again works although the files did not change.
    kserve.repository_model_load(load("logreg")).await.unwrap();
    kserve.model_infer(infer("logreg", 1, true)).await.unwrap();

    // Without a repository the extension says so.
    let without = TestServer::start(|server| server).await;
    let mut plain = client(&without).await;
    let status = plain
        .repository_model_load(load("logreg"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    without.shutdown().await;
    server.shutdown().await;
}
