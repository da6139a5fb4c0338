//! Batching over real gRPC with real components: a concurrent burst is answered in full with
//! each caller's own rows; full queues refuse at once; expired requests are not run; the
//! queue gauges count what waits and what runs; replicas scale while serving without losing a
//! request, and a model with a replica range gets replicas under load and gives them back when
//! idle.

use crate::support::{TestServer, digits_request, f32_values, fp32, output, sample_component};
use sluice_api::proto::{
    BatchingConfig, LoadModelRequest, ModelLimits, PredictRequest, ScaleModelRequest,
    batching_config::Mode, load_model_request::Component,
};
use sluice_train::Digits;
use std::time::Duration;
use tonic::Code;

fn logreg(name: &str, replicas: u32, batching: BatchingConfig) -> LoadModelRequest {
    LoadModelRequest {
        component: Some(Component::Wasm(sample_component("digits_logreg"))),
        config: std::fs::read(sluice_train::params_path("digits-logreg")).unwrap(),
        name: name.into(),
        replicas,
        batching: Some(batching),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_concurrent_burst_is_batched_and_each_caller_gets_its_own_rows() {
    let mut server = TestServer::start(|server| server).await;
    let static_delayed = BatchingConfig {
        mode: Mode::Static as i32,
        static_batch_size: 32,
        max_delay_us: 20_000,
        ..Default::default()
    };
    server
        .client
        .load_model(logreg("batched", 1, static_delayed))
        .await
        .unwrap();
    server
        .client
        .load_model(logreg(
            "alone",
            1,
            BatchingConfig {
                mode: Mode::Static as i32,
                static_batch_size: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    let digits = Digits::load_default().unwrap();
    // 60 callers with 1 to 3 rows each, all at once.
    let requests: Vec<_> = (0..60)
        .map(|i| {
            let start = (i * 5) % 300;
            digits.holdout[start..start + 1 + i % 3].to_vec()
        })
        .collect();
    let calls: Vec<_> = requests
        .iter()
        .map(|rows| {
            let mut client = server.client.clone();
            let request = digits_request("batched", rows);
            tokio::spawn(async move { client.predict(request).await.unwrap().into_inner() })
        })
        .collect();
    for (call, rows) in calls.into_iter().zip(&requests) {
        let batched = call.await.unwrap();
        let alone = server
            .client
            .predict(digits_request("alone", rows))
            .await
            .unwrap()
            .into_inner();
        let (got, want) = (
            output(&batched, "probabilities"),
            output(&alone, "probabilities"),
        );
        assert_eq!(got.shape, [rows.len() as u64, 10]);
        assert_eq!(
            f32_values(got),
            f32_values(want),
            "a caller got someone else's rows"
        );
        assert_eq!(output(&batched, "label").data, output(&alone, "label").data);
    }
    let batched = server.model("batched").await;
    assert_eq!(
        batched.rows_run,
        requests.iter().map(|r| r.len() as u64).sum::<u64>()
    );
    assert!(
        batched.batches_run < 30,
        "60 concurrent requests ran in {} batches",
        batched.batches_run
    );
    server.shutdown().await;
}

/// `faulty-loop` with one replica: a request containing 1.0 keeps it busy for `call_ms`.
async fn busy_model(server: &mut TestServer, queue_capacity: u32, call_ms: u64) {
    server
        .client
        .load_model(LoadModelRequest {
            component: Some(Component::Wasm(sample_component("faulty"))),
            config: b"loop".to_vec(),
            replicas: 1,
            limits: Some(ModelLimits {
                call_timeout_ms: call_ms,
                queue_capacity,
                ..Default::default()
            }),
            batching: Some(BatchingConfig {
                mode: Mode::Static as i32,
                static_batch_size: 1,
                slo_ms: 10_000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut client = server.client.clone();
    tokio::spawn(async move {
        let _ = client.predict(request(&[1.0], 0)).await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await; // the replica is now looping
}

fn request(values: &[f32], timeout_ms: u64) -> PredictRequest {
    PredictRequest {
        model: "faulty-loop".into(),
        version: String::new(),
        inputs: vec![fp32("x", &[values.len() as u64, 1], values)],
        timeout_ms,
    }
}

#[tokio::test]
async fn full_queues_refuse_at_once_and_expired_requests_are_not_run() {
    let mut server = TestServer::start(|server| server).await;
    busy_model(&mut server, 2, 1500).await;

    // Expires while waiting behind the loop: answered without running.
    let status = server
        .client
        .predict(request(&[5.0], 50))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains("deadline passed before a replica could run it")
    );

    // The expired request left the queue; two fit in it; the third is refused at once.
    let queued: Vec<_> = (0..2)
        .map(|i| {
            let mut client = server.client.clone();
            tokio::spawn(async move { client.predict(request(&[10.0 + i as f32], 0)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let status = server.client.predict(request(&[3.0], 0)).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("queues are full"),
        "{}",
        status.message()
    );
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "refused without waiting for the loop"
    );
    // Once the loop is stopped, the queued requests are served.
    for (i, call) in queued.into_iter().enumerate() {
        let answer = call.await.unwrap().unwrap().into_inner();
        assert_eq!(f32_values(output(&answer, "y")), [10.0 + i as f32]);
    }
    server.shutdown().await;
}

/// The value of `metric` for `faulty-loop` in the server's Prometheus text.
async fn gauge(server: &TestServer, metric: &str) -> Option<i64> {
    let text = server.metrics().await;
    let prefix = format!("{metric}{{model=\"faulty-loop\",");
    text.lines()
        .find(|line| line.starts_with(&prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn the_queue_gauges_count_what_waits_and_what_runs() {
    let mut server = TestServer::start(|server| server).await;
    busy_model(&mut server, 8, 1500).await;
    // Three quick requests wait behind the loop (batches of one row).
    let queued: Vec<_> = (0..3)
        .map(|i| {
            let mut client = server.client.clone();
            tokio::spawn(async move { client.predict(request(&[10.0 + i as f32], 0)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gauge(&server, "sluice_queued_requests").await, Some(3));
    assert_eq!(gauge(&server, "sluice_in_flight_requests").await, Some(4));
    for call in queued {
        call.await.unwrap().unwrap();
    }
    // The loop was stopped by its time limit, and every request has its answer.
    assert_eq!(gauge(&server, "sluice_queued_requests").await, Some(0));
    assert_eq!(gauge(&server, "sluice_in_flight_requests").await, Some(0));
    server.shutdown().await;
}

#[tokio::test]
async fn scaling_replicas_under_load_loses_nothing() {
    let mut server = TestServer::start(|server| server).await;
    server
        .client
        .load_model(logreg("scaled", 1, BatchingConfig::default()))
        .await
        .unwrap();
    let digits = Digits::load_default().unwrap();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let mut client = server.client.clone();
            let rows = digits.holdout[c * 10..c * 10 + 2].to_vec();
            tokio::spawn(async move {
                for _ in 0..150 {
                    client
                        .predict(digits_request("scaled", &rows))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for replicas in [3, 1, 2] {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let scaled = server
            .client
            .scale_model(ScaleModelRequest {
                name: "scaled".into(),
                version: String::new(),
                replicas,
            })
            .await
            .unwrap()
            .into_inner()
            .model
            .unwrap();
        assert_eq!(scaled.replicas, replicas);
        assert_eq!(scaled.batch_sizes.len(), replicas as usize);
    }
    for client in clients {
        client.await.unwrap();
    }
    let scaled = server.model("scaled").await;
    assert_eq!(
        scaled.rows_run,
        8 * 150 * 2,
        "every request ran exactly once"
    );
    let status = server
        .client
        .scale_model(ScaleModelRequest {
            name: "scaled".into(),
            version: String::new(),
            replicas: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    server.shutdown().await;
}

/// `fixed-cost` spending about 20 ms a call (40 million iterations take 0.7 ms), one request per call, autoscaled from 1 to 3
/// replicas: eight clients in a closed loop make requests wait past half the 100 ms SLO, so
/// replicas are added, up to the max and no further; once they stop, the spare replicas go
/// after the (1 s) scale-down delay, down to the min.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_a_replica_range_grows_under_load_and_shrinks_when_idle() {
    let compute = sluice_runtime::RuntimeConfig::default().compute;
    let registry = crate::support::registry_with(compute, |registry| {
        registry.with_scale_down_after(Duration::from_secs(1))
    });
    let mut server = TestServer::start_with(registry, |server| server, None).await;
    let request = |min_replicas, max_replicas| LoadModelRequest {
        component: Some(Component::Wasm(sample_component("fixed_cost"))),
        config: b"1200000000".to_vec(),
        name: "elastic".into(),
        replicas: 1,
        min_replicas,
        max_replicas,
        batching: Some(BatchingConfig {
            mode: Mode::Static as i32,
            static_batch_size: 1,
            slo_ms: 100,
            ..Default::default()
        }),
        ..Default::default()
    };
    let refused = server.client.load_model(request(4, 2)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("min_replicas"), "{refused:?}");
    server.client.load_model(request(1, 3)).await.unwrap();
    let status = server.model("elastic").await;
    assert_eq!(
        (status.replicas, status.min_replicas, status.max_replicas),
        (1, 1, 3)
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (mut client, stop) = (server.client.clone(), stop.clone());
        clients.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .predict(PredictRequest {
                        model: "elastic".into(),
                        inputs: vec![fp32("x", &[1, 1], &[1.0])],
                        timeout_ms: 30_000,
                        ..Default::default()
                    })
                    .await
                    .expect("no request fails while replicas are added");
            }
        });
    }
    until(&mut server, "elastic", |replicas| replicas == 3).await;
    let outside = server
        .client
        .scale_model(ScaleModelRequest {
            name: "elastic".into(),
            replicas: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(outside.code(), Code::InvalidArgument);
    assert!(outside.message().contains("outside 1..=3"), "{outside:?}");
    // Still pressed (three replicas share two cores), but at the max.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            server.model("elastic").await.replicas,
            3,
            "never beyond the max"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(client) = clients.join_next().await {
        client.unwrap();
    }
    until(&mut server, "elastic", |replicas| replicas == 1).await;
}

/// Polls `model`'s replicas (for up to 60 s) until `reached` holds; returns the count.
async fn until(server: &mut TestServer, model: &str, reached: impl Fn(u32) -> bool) -> u32 {
    let started = std::time::Instant::now();
    loop {
        let replicas = server.model(model).await.replicas;
        if reached(replicas) {
            return replicas;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still {replicas} replicas after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A model whose range starts at 0 goes to zero replicas when idle (after the 1 s scale-down
/// delay), and eight requests that then arrive at once start one replica, not eight, and are
/// all answered; the cold start is in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_model_scales_to_zero_and_the_next_requests_start_one_replica() {
    let compute = sluice_runtime::RuntimeConfig::default().compute;
    let registry = crate::support::registry_with(compute, |registry| {
        registry.with_scale_down_after(Duration::from_secs(1))
    });
    let mut server = TestServer::start_with(registry, |server| server, None).await;
    let mut request = logreg("dozing", 1, BatchingConfig::default());
    (request.min_replicas, request.max_replicas) = (0, 2);
    server.client.load_model(request).await.unwrap();
    until(&mut server, "dozing", |replicas| replicas == 0).await;
    let digits = Digits::load_default().unwrap();
    let mut clients = tokio::task::JoinSet::new();
    for sample in digits.holdout[..8].iter().cloned() {
        let mut client = server.client.clone();
        clients.spawn(async move {
            client
                .predict(digits_request("dozing", &[sample]))
                .await
                .expect("a request to a model scaled to zero is answered")
        });
    }
    while let Some(answer) = clients.join_next().await {
        answer.unwrap();
    }
    assert_eq!(
        server.model("dozing").await.replicas,
        1,
        "one cold start, not eight"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("sluice_cold_start_seconds_count{model=\"dozing\"} 1"),
        "{metrics}"
    );
}

/// A cold start slower than a request's deadline fails that request with `DEADLINE_EXCEEDED`
/// when its deadline passes, not after the start; the start goes on, and a request that can
/// wait is answered by the replica it started (one cold start for both).
#[tokio::test]
async fn a_cold_start_past_a_requests_deadline_fails_it_and_goes_on_for_the_next() {
    let mut server = TestServer::start(|server| server).await;
    // Its init takes 500 ms; it starts with no replica.
    server
        .client
        .load_model(LoadModelRequest {
            component: Some(Component::Wasm(sample_component("faulty"))),
            config: b"slow-init".to_vec(),
            replicas: 0,
            min_replicas: 0,
            max_replicas: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(server.model("faulty-slow-init").await.replicas, 0);
    let request = |timeout_ms: u64| PredictRequest {
        model: "faulty-slow-init".into(),
        inputs: vec![fp32("x", &[1, 1], &[0.5])],
        timeout_ms,
        ..Default::default()
    };
    let status = server.client.predict(request(50)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // Refused while the replica was still starting (had it waited for the start, the
    // replica would be serving by now).
    assert_eq!(server.model("faulty-slow-init").await.replicas, 0);
    let answer = server
        .client
        .predict(request(5_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f32_values(output(&answer, "y")), [0.5]);
    assert_eq!(server.model("faulty-slow-init").await.replicas, 1);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("sluice_cold_start_seconds_count{model=\"faulty-slow-init\"} 1"),
        "{metrics}"
    );
    server.shutdown().await;
}
