//! The bundled digits models served over real gRPC: accurate on held-out data, numerically
//! the same as the trainer's native forward pass, and visible through ListModels, health and
//! reflection.

use crate::support::{TestServer, digits_request, f32_values, i64_values, output};
use sluice_api::proto::PredictResponse;
use sluice_sdk::params::{self, Param};
use sluice_train::Digits;
use sluice_train::cnn::CnnParams;
use sluice_train::logreg::LogRegParams;
use sluice_train::mlp::MlpParams;

async fn predict_all(
    server: &mut TestServer,
    model: &str,
    digits: &Digits,
) -> Vec<PredictResponse> {
    let mut responses = Vec::new();
    for batch in digits.holdout.chunks(100) {
        let response = server
            .client
            .predict(digits_request(model, batch))
            .await
            .unwrap();
        responses.push(response.into_inner());
    }
    responses
}

/// Parameters as the components received them, decoded natively.
fn committed(model: &str) -> Vec<Param> {
    params::decode(&std::fs::read(sluice_train::params_path(model)).unwrap()).unwrap()
}

fn take(params: &[Param], name: &str) -> Vec<f32> {
    params
        .iter()
        .find(|p| p.name == name)
        .unwrap()
        .values
        .clone()
}

#[tokio::test]
async fn digits_models_are_accurate_and_match_the_native_forward_pass() {
    let digits = Digits::load_default().unwrap();
    let mut server = TestServer::with_samples().await;

    let logreg_params = committed("digits-logreg");
    let logreg = LogRegParams {
        weights: take(&logreg_params, "weights"),
        bias: take(&logreg_params, "bias"),
    };
    let mlp_params = committed("digits-mlp");
    let mlp = MlpParams {
        w1: take(&mlp_params, "w1"),
        b1: take(&mlp_params, "b1"),
        w2: take(&mlp_params, "w2"),
        b2: take(&mlp_params, "b2"),
    };
    let cnn_params = committed("digits-cnn");
    let cnn = CnnParams {
        dense: LogRegParams {
            weights: take(&cnn_params, "weights"),
            bias: take(&cnn_params, "bias"),
        },
    };
    assert_eq!(
        take(&cnn_params, "filters"),
        cnn.to_params()[0].values,
        "the committed filters are the trainer's"
    );
    type Forward<'a> = Box<dyn Fn(&[f32]) -> Vec<f32> + 'a>;
    let natives: [(&str, Forward); 3] = [
        ("digits-logreg", Box::new(|x| logreg.probabilities(x))),
        ("digits-mlp", Box::new(|x| mlp.probabilities(x))),
        ("digits-cnn", Box::new(|x| cnn.probabilities(x))),
    ];

    for (model, native) in natives {
        let responses = predict_all(&mut server, model, &digits).await;
        let mut correct = 0;
        let mut rows = digits.holdout.iter();
        for response in &responses {
            assert_eq!(response.model, model);
            let probabilities = f32_values(output(response, "probabilities"));
            let labels = i64_values(output(response, "label"));
            assert_eq!(probabilities.len(), labels.len() * 10);
            for (p, &label) in probabilities.chunks_exact(10).zip(&labels) {
                let sample = rows.next().unwrap();
                let expected = native(&sample.pixels);
                for (got, want) in p.iter().zip(&expected) {
                    assert!((got - want).abs() < 1e-4, "{model}: {got} vs native {want}");
                }
                assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
                correct += usize::from(label as usize == sample.label);
            }
        }
        assert!(rows.next().is_none(), "every held-out row was answered");
        let accuracy = correct as f64 / digits.holdout.len() as f64;
        assert!(accuracy >= 0.95, "{model}: held-out accuracy {accuracy}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn list_models_describes_the_loaded_models() {
    let mut server = TestServer::with_samples().await;
    let models = server.models().await;
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["digits-cnn", "digits-logreg", "digits-mlp"]);
    for m in &models {
        assert_eq!(m.replicas, 2);
        assert_eq!(m.max_batch, 256);
        assert!(m.is_default_version);
        assert_eq!(m.inputs[0].name, "pixels");
        assert_eq!(m.inputs[0].shape, [-1, 64]);
        assert_eq!(m.component_sha256.len(), 64);
        assert!(m.limits.unwrap().call_timeout_ms > 0);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn health_and_reflection_answer_generic_tools() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = TestServer::with_samples().await;
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "sluice.v1.Sluice".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        services.contains(&"sluice.v1.Sluice".to_string()),
        "{services:?}"
    );
    assert!(
        services.contains(&"grpc.health.v1.Health".to_string()),
        "{services:?}"
    );

    // The older v1alpha service, which Python's grpcio-reflection and other tools speak.
    use tonic_reflection::pb::v1alpha;
    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "inference.GRPCInferenceService".into(),
            ),
        ),
    };
    let mut stream = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection is served")
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    match response.message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
            files,
        )) => assert!(!files.file_descriptor_proto.is_empty()),
        other => panic!("expected the file of KServe's service, got {other:?}"),
    }
    server.shutdown().await;
}
