//! Chaos: faulty and healthy models under concurrent load at once. Every request is answered
//! with a status that names a cause; the healthy model never fails; every faulty model serves
//! good requests again afterwards.

use crate::support::{TestServer, digits_request, fp32, sample_component};
use sluice_api::proto::{
    LoadModelRequest, ModelLimits, PredictRequest, load_model_request::Component,
};
use sluice_train::Digits;
use std::collections::BTreeMap;

const FAULTS: [&str; 4] = ["panic", "loop", "oom", "straggler"];
const CLIENTS: usize = 16;
const REQUESTS_EACH: usize = 40;

fn faulty_request(fault: &str, trigger: bool) -> PredictRequest {
    let value = if trigger { 1.0 } else { 0.5 };
    PredictRequest {
        model: format!("faulty-{fault}"),
        inputs: vec![fp32("x", &[1, 1], &[value])],
        ..Default::default()
    }
}

// A multi-threaded runtime, as in `sluice serve`: guest calls run in `block_in_place`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_and_healthy_models_under_load() {
    let mut server = TestServer::with_samples().await;
    for fault in FAULTS {
        server
            .client
            .load_model(LoadModelRequest {
                component: Some(Component::Wasm(sample_component("faulty"))),
                config: fault.as_bytes().to_vec(),
                replicas: 2,
                limits: Some(ModelLimits {
                    call_timeout_ms: 150,
                    memory_bytes: 64 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let digits = Digits::load_default().unwrap();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut client = server.client.clone();
            let sample = digits.holdout[c..c + 1].to_vec();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..REQUESTS_EACH {
                    let pick = (c + i) % (FAULTS.len() + 1);
                    let (target, request) = match FAULTS.get(pick) {
                        None => (
                            "healthy".to_string(),
                            digits_request("digits-logreg", &sample),
                        ),
                        Some(fault) => {
                            let trigger = i % 4 == 0;
                            (
                                format!("{fault} (trigger: {trigger})"),
                                faulty_request(fault, trigger),
                            )
                        }
                    };
                    let outcome = match client.predict(request).await {
                        Ok(_) => "served".to_string(),
                        Err(status) => format!("{:?}", status.code()),
                    };
                    outcomes.push((target, outcome));
                }
                outcomes
            })
        })
        .collect();
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for client in clients {
        for key in client.await.unwrap() {
            *counts.entry(key).or_default() += 1;
        }
    }
    eprintln!("chaos outcomes: {counts:#?}");
    assert_eq!(
        counts.values().sum::<usize>(),
        CLIENTS * REQUESTS_EACH,
        "every request answered"
    );
    for ((target, outcome), n) in &counts {
        let allowed: &[&str] = match target.as_str() {
            "healthy" => &["served"],
            "straggler (trigger: true)" | "straggler (trigger: false)" => {
                &["served", "DeadlineExceeded"]
            }
            t if t.ends_with("(trigger: true)") => {
                &["Internal", "DeadlineExceeded", "ResourceExhausted"]
            }
            // Good requests can only wait too long behind a faulty one on the same model.
            _ => &["served", "DeadlineExceeded"],
        };
        assert!(
            allowed.contains(&outcome.as_str()),
            "{n} x {target}: {outcome}"
        );
    }
    // Afterwards every model serves a good request.
    for fault in FAULTS {
        server
            .client
            .predict(faulty_request(fault, false))
            .await
            .unwrap();
    }
    server.predicts_a_digit("digits-logreg").await;
    server.shutdown().await;
}
