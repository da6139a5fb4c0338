//! The fixed costs under every request and every model (issue 10's floors), each alone:
//!
//! - `cache-hit`: digesting a request's inputs and finding its prediction in the cache;
//! - `tensor-conversion`: protobuf tensors to the runtime's and back (one request's inputs
//!   and outputs), at batch 1 and 64;
//! - `replica-call` against `queued-predict`: the same batch-1 call straight on a replica, and
//!   through the model's queue, batcher and worker thread (their difference is the queueing);
//! - `grpc/server-live` against `grpc/model-infer`: a loopback gRPC round trip that does
//!   nothing, and one KServe `ModelInfer` of the logistic regression (the transport's share);
//! - `cold-start/*`: from a component file's bytes to the first answer, compiling with
//!   Cranelift, and from precompiled code in the on-disk cache.
//!
//! Run: `cargo bench -p sluice-benches --bench floors`. Figures go to `docs/benchmarks.md`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sluice_api::convert::{tensor_from_proto, tensor_to_proto};
use sluice_api::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use sluice_api::inference::{self, model_infer_request::InferInputTensor};
use sluice_frontend::Server;
use sluice_runtime::{Replica, Runtime, RuntimeConfig};
use sluice_serving::ModelLimits;
use sluice_serving::batching::{BatchMode, BatchingConfig};
use sluice_serving::cache::{CacheKey, PredictionCache, digest_inputs};
use sluice_serving::registry::{LoadRequest, Registry};
use sluice_train::params_path;
use sluice_types::Tensor;
use std::hint::black_box;
use std::sync::Arc;

mod common;
use common::{call, component_bytes, default_runtime, pixels, pixels_tensor, sample_recipe};

/// The logistic regression without batching (one request per call), on `runtime`.
fn logreg_request() -> LoadRequest {
    LoadRequest {
        component: component_bytes("digits_logreg"),
        config: std::fs::read(params_path("digits-logreg")).unwrap(),
        graphs: Vec::new(),
        name: None,
        version: None,
        replicas: 1,
        autoscale: None,
        limits: ModelLimits::default(),
        batching: BatchingConfig {
            mode: BatchMode::Static { size: 1 },
            ..BatchingConfig::default()
        },
    }
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn in_process(c: &mut Criterion) {
    let one = vec![pixels_tensor(&pixels(1))];
    let cache = PredictionCache::new(64 << 20);
    let key = |inputs: &[Tensor]| CacheKey {
        model: "digits-logreg".into(),
        version: "1".into(),
        input: digest_inputs(inputs),
    };
    let runtime = default_runtime();
    let mut replica =
        Replica::new(sample_recipe(&runtime, "digits_logreg", "digits-logreg")).unwrap();
    let mut inputs = one.clone();
    cache.insert(key(&one), Arc::new(call(&mut replica, &mut inputs)));
    let mut group = c.benchmark_group("floors");
    group.bench_function("cache-hit", |b| {
        b.iter(|| black_box(cache.get(&key(black_box(&one))).unwrap()))
    });
    for rows in [1usize, 64] {
        let mut inputs = vec![pixels_tensor(&pixels(rows))];
        let outputs = call(&mut replica, &mut inputs);
        let proto_inputs: Vec<_> = inputs.iter().cloned().map(tensor_to_proto).collect();
        group.bench_with_input(
            BenchmarkId::new("tensor-conversion", rows),
            &(proto_inputs, outputs),
            |b, (proto_inputs, outputs)| {
                b.iter(|| {
                    let decoded: Vec<_> = proto_inputs
                        .iter()
                        .cloned()
                        .map(|t| tensor_from_proto(t).unwrap())
                        .collect();
                    let encoded: Vec<_> = outputs.iter().cloned().map(tensor_to_proto).collect();
                    black_box((decoded, encoded))
                })
            },
        );
    }
    group.bench_function("replica-call", |b| {
        let mut inputs = one.clone();
        b.iter(|| black_box(call(&mut replica, &mut inputs)))
    });
    let rt = tokio_runtime();
    let registry = Registry::new(Arc::new(default_runtime()));
    let model = rt.block_on(registry.load(logreg_request())).unwrap();
    group.bench_function("queued-predict", |b| {
        b.iter(|| black_box(rt.block_on(model.predict(one.clone(), None)).unwrap()))
    });
    group.finish();
}

fn grpc(c: &mut Criterion) {
    let rt = tokio_runtime();
    let registry = Arc::new(Registry::new(Arc::new(default_runtime())));
    rt.block_on(registry.load(logreg_request())).unwrap();
    let loopback = "127.0.0.1:0".parse().unwrap();
    let server = rt
        .block_on(async {
            Server::builder(registry)
                .build()
                .await
                .unwrap()
                .start(loopback, loopback)
                .await
        })
        .unwrap();
    let mut client = rt
        .block_on(GrpcInferenceServiceClient::connect(server.url()))
        .unwrap();
    let one = pixels_tensor(&pixels(1));
    let infer = inference::ModelInferRequest {
        model_name: "digits-logreg".into(),
        inputs: vec![InferInputTensor {
            name: one.name.clone(),
            datatype: "FP32".into(),
            shape: vec![1, 64],
            ..Default::default()
        }],
        raw_input_contents: vec![one.data.clone()],
        ..Default::default()
    };
    let mut group = c.benchmark_group("floors/grpc");
    group.bench_function("server-live", |b| {
        b.iter(|| {
            rt.block_on(client.server_live(inference::ServerLiveRequest {}))
                .unwrap()
        })
    });
    group.bench_function("model-infer", |b| {
        b.iter(|| rt.block_on(client.model_infer(infer.clone())).unwrap())
    });
    group.finish();
    rt.block_on(server.shutdown()).unwrap();
}

fn cold_start(c: &mut Criterion) {
    let rt = tokio_runtime();
    let one = vec![pixels_tensor(&pixels(1))];
    let compiling = Arc::new(
        Runtime::new(RuntimeConfig {
            cache_dir: None,
            ..RuntimeConfig::default()
        })
        .unwrap(),
    );
    let precompiled = Arc::new(common::cached_runtime(RuntimeConfig::default().compute));
    // Warm the on-disk cache once, so the precompiled runs find the code.
    precompiled
        .load_component(&component_bytes("digits_logreg"))
        .unwrap();
    let mut group = c.benchmark_group("floors/cold-start");
    group.sample_size(10);
    for (label, runtime) in [("compile", &compiling), ("precompiled", &precompiled)] {
        group.bench_function(label, |b| {
            b.iter(|| {
                // A fresh registry each time: nothing is loaded, only the disk cache is warm.
                let registry = Registry::new(runtime.clone());
                rt.block_on(async {
                    let model = registry.load(logreg_request()).await.unwrap();
                    model.predict(one.clone(), None).await.unwrap()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, in_process, grpc, cold_start);
criterion_main!(benches);
