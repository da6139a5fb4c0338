//! Each misbehaving model fails only its own request, with a status and message naming the
//! cause; its replica is recycled so its next good request succeeds; and a healthy model
//! keeps answering throughout.

use crate::support::{TestServer, digits_request, f32_values, fp32, output, sample_component};
use sluice_api::proto::{
    LoadModelRequest, ModelLimits, PredictRequest, load_model_request::Component,
};
use sluice_train::Digits;
use tonic::Code;

/// `faulty-<fault>` with 2 replicas and tight limits so the faults hit them quickly. Only the
/// loop needs the call limit to stop it: the other faults get a loose one, so that one that
/// does real work before failing (the huge output builds 4 MiB) is not cut short by the clock
/// on a loaded machine and reported as the wrong fault.
async fn load_faulty(server: &mut TestServer, fault: &str) {
    let call_timeout_ms = if fault == "loop" { 200 } else { 5_000 };
    server
        .client
        .load_model(LoadModelRequest {
            component: Some(Component::Wasm(sample_component("faulty"))),
            config: fault.as_bytes().to_vec(),
            name: String::new(),
            replicas: 2,
            limits: Some(ModelLimits {
                call_timeout_ms,
                memory_bytes: 64 << 20,
                max_response_bytes: 1 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("loading faulty-{fault}: {s}"));
}

/// `x` holds the batch; the value 1.0 triggers the fault.
fn request(model: &str, values: &[f32]) -> PredictRequest {
    PredictRequest {
        model: model.to_string(),
        version: String::new(),
        inputs: vec![fp32("x", &[values.len() as u64, 1], values)],
        timeout_ms: 0,
    }
}

// A multi-threaded runtime, as in `sluice serve`: guest calls run in `block_in_place`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_fails_only_its_own_request() {
    let mut server = TestServer::with_samples().await;
    let faults = [
        ("loop", Code::DeadlineExceeded, "time limit"),
        ("oom", Code::ResourceExhausted, "memory limit"),
        ("panic", Code::Internal, "panic requested by the input"),
        ("recursion", Code::Internal, "stack overflow"),
        (
            "wrong-shape",
            Code::Internal,
            "output `y` has batch size 3, but the request had 2",
        ),
        (
            "wrong-dtype",
            Code::Internal,
            "output `y`: expected dtype FP32, got INT64",
        ),
        (
            "huge-output",
            Code::ResourceExhausted,
            "over its response limit of 1048576 bytes",
        ),
        (
            "undeclared-input",
            Code::Internal,
            "the model reads input `z`, which its info() does not declare",
        ),
        (
            "huge-matmul",
            Code::Internal,
            "device memory budget exceeded: 17180393472 bytes of tensors requested, limit 67108864",
        ),
    ];
    for (fault, ..) in &faults {
        load_faulty(&mut server, fault).await;
    }

    // A healthy model is queried all the while the faults happen.
    let digits = Digits::load_default().unwrap();
    let mut healthy_client = server.client.clone();
    let healthy = tokio::spawn(async move {
        let mut answered = 0;
        for sample in digits.holdout.chunks(1).take(200) {
            let response = healthy_client
                .predict(digits_request("digits-logreg", sample))
                .await;
            assert!(
                response.is_ok(),
                "the healthy model failed: {:?}",
                response.err()
            );
            answered += 1;
        }
        answered
    });

    for (fault, code, message) in faults {
        let model = format!("faulty-{fault}");
        // Before: a good request works.
        let good = server
            .client
            .predict(request(&model, &[0.5, 2.0]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(f32_values(output(&good, "y")), [0.5, 2.0]);
        // The bad request fails with its own cause, on both replicas in turn.
        for _ in 0..2 {
            let status = server
                .client
                .predict(request(&model, &[0.0, 1.0]))
                .await
                .unwrap_err();
            assert_eq!(status.code(), code, "{model}: {}", status.message());
            assert!(
                status.message().contains(message),
                "{model}: {}",
                status.message()
            );
            assert!(
                status.message().contains(&model),
                "{model}: {}",
                status.message()
            );
        }
        // After: every replica serves good requests again.
        for _ in 0..4 {
            let good = server
                .client
                .predict(request(&model, &[3.0]))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(f32_values(output(&good, "y")), [3.0]);
        }
    }
    assert_eq!(healthy.await.unwrap(), 200);
    server.shutdown().await;
}

/// A panic in `info()` refuses the load with the panic's message, as one in `init` does.
#[tokio::test]
async fn a_panic_in_info_refuses_the_load_with_the_panic_message() {
    let mut server = TestServer::start(|server| server).await;
    let status = server
        .client
        .load_model(LoadModelRequest {
            component: Some(Component::Wasm(sample_component("faulty"))),
            config: b"info-panic".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .contains("faulty model: info() panics as configured"),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains("wasm backtrace"),
        "no raw frames: {}",
        status.message()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_init_failure_refuses_the_load_with_the_model_message() {
    let mut server = TestServer::start(|server| server).await;
    let status = server
        .client
        .load_model(LoadModelRequest {
            component: Some(Component::Wasm(sample_component("faulty"))),
            config: b"no-such-fault".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("init failed"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("unknown fault `no-such-fault`"),
        "{}",
        status.message()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_replaced_after_max_calls_and_keep_answering() {
    let mut server = TestServer::start(|server| server).await;
    server
        .client
        .load_model(LoadModelRequest {
            component: Some(Component::Wasm(sample_component("digits_logreg"))),
            config: std::fs::read(sluice_train::params_path("digits-logreg")).unwrap(),
            name: "recycled".into(),
            replicas: 1,
            limits: Some(ModelLimits {
                max_calls_per_instance: 3,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let status = server.model("recycled").await;
    assert_eq!(status.limits.unwrap().max_calls_per_instance, 3);
    let digits = Digits::load_default().unwrap();
    for sample in digits.holdout.chunks(1).take(10) {
        // One at a time: each call is one batch on the single replica.
        server
            .client
            .predict(digits_request("recycled", sample))
            .await
            .expect("every call is answered, across replacements");
    }
    let metrics = server.metrics().await;
    let replaced = r#"sluice_instances_replaced_total{model="recycled",reason="max-calls"} 3"#;
    assert!(
        metrics.lines().any(|l| l == replaced),
        "ten calls at three per instance replace it three times:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("recycled"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    server.shutdown().await;
}
