//! Overload: a burst far above what one replica can serve is answered in full — served,
//! `RESOURCE_EXHAUSTED` (queue full) or `DEADLINE_EXCEEDED` (waited past its deadline) — with
//! nothing lost or failing otherwise, and the model serves normally right after.

use crate::support::{TestServer, digits_request, sample_component};
use sluice_api::proto::load_model_request::Component;
use sluice_api::proto::{BatchingConfig, LoadModelRequest, ModelLimits, batching_config::Mode};
use sluice_train::Digits;
use std::collections::BTreeMap;
use tonic::Code;

const BURST: usize = 3000;

#[tokio::test]
async fn a_burst_is_answered_in_full_and_the_model_recovers() {
    let mut server = TestServer::start(|server| server).await;
    server
        .client
        .load_model(LoadModelRequest {
            component: Some(Component::Wasm(sample_component("digits_logreg"))),
            config: std::fs::read(sluice_train::params_path("digits-logreg")).unwrap(),
            name: "small".into(),
            replicas: 1,
            limits: Some(ModelLimits {
                queue_capacity: 32,
                ..Default::default()
            }),
            batching: Some(BatchingConfig {
                mode: Mode::Static as i32,
                static_batch_size: 4,
                slo_ms: 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let digits = Digits::load_default().unwrap();
    let calls: Vec<_> = (0..BURST)
        .map(|i| {
            let mut client = server.client.clone();
            let request = digits_request("small", &digits.holdout[i % 300..i % 300 + 1]);
            tokio::spawn(async move {
                client
                    .predict(request)
                    .await
                    .map(drop)
                    .map_err(|s| s.code())
            })
        })
        .collect();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for call in calls {
        let outcome = match call.await.unwrap() {
            Ok(()) => "served".to_string(),
            Err(code) => format!("{code:?}"),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    eprintln!("{BURST} requests at once: {outcomes:?}");
    assert_eq!(
        outcomes.values().sum::<usize>(),
        BURST,
        "every request was answered"
    );
    let expected = [
        "served",
        &format!("{:?}", Code::ResourceExhausted),
        &format!("{:?}", Code::DeadlineExceeded),
    ];
    assert!(
        outcomes.keys().all(|k| expected.contains(&k.as_str())),
        "only served, queue-full or deadline answers: {outcomes:?}"
    );
    assert!(
        outcomes.get("served").copied().unwrap_or(0) > 0,
        "{outcomes:?}"
    );
    assert!(
        outcomes.get("served").copied().unwrap_or(0) < BURST,
        "the burst overloaded the model: {outcomes:?}"
    );
    // Right after the burst the model answers normally.
    for sample in digits.holdout.chunks(1).take(20) {
        server
            .client
            .predict(digits_request("small", sample))
            .await
            .unwrap();
    }
    server.shutdown().await;
}
