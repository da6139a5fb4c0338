//! What the sandbox costs, in process (no gRPC): the digits logistic regression as plain Rust
//! vs the same code as a component (batch 1 and 64), the MLP and the CNN whose layers run on
//! the host compute import (batch 1, 64 and 256), and the fixed costs of a model's lifecycle:
//! instantiate + init, loading a precompiled component, compiling one from scratch.
//!
//! Run: `cargo bench -p sluice-benches`. Figures go to `docs/benchmarks.md`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use digits_logreg::{CLASSES, LogReg};
use sluice_runtime::{Replica, Runtime, RuntimeConfig};
use sluice_train::params_path;
use std::hint::black_box;
use std::sync::Arc;

mod common;
use common::{call, component_bytes, default_runtime, pixels, pixels_tensor, sample_recipe};

fn predict(c: &mut Criterion) {
    let runtime = default_runtime();
    let config = std::fs::read(params_path("digits-logreg")).unwrap();
    let native = LogReg::from_config(&config).unwrap();
    let mut logreg =
        Replica::new(sample_recipe(&runtime, "digits_logreg", "digits-logreg")).unwrap();
    let mut mlp = Replica::new(sample_recipe(&runtime, "digits_mlp", "digits-mlp")).unwrap();
    let mut cnn = Replica::new(sample_recipe(&runtime, "digits_cnn", "digits-cnn")).unwrap();

    let mut group = c.benchmark_group("predict");
    for rows in [1usize, 64, 256] {
        let x = pixels(rows);
        let inputs = [pixels_tensor(&x)];
        group.throughput(Throughput::Elements(rows as u64));
        for (name, replica) in [("mlp-component", &mut mlp), ("cnn-component", &mut cnn)] {
            group.bench_with_input(BenchmarkId::new(name, rows), &inputs, |b, inputs| {
                let mut inputs = inputs.to_vec();
                b.iter(|| black_box(call(replica, &mut inputs)))
            });
        }
        if rows == 256 {
            continue;
        }
        group.bench_with_input(BenchmarkId::new("logreg-native", rows), &x, |b, x| {
            let mut probabilities = vec![0.0; rows * CLASSES];
            b.iter(|| black_box(native.predict_batch(black_box(x), &mut probabilities)))
        });
        group.bench_with_input(
            BenchmarkId::new("logreg-component", rows),
            &inputs,
            |b, inputs| {
                let mut inputs = inputs.to_vec();
                b.iter(|| black_box(call(&mut logreg, &mut inputs)))
            },
        );
    }
    group.finish();
}

fn lifecycle(c: &mut Criterion) {
    let runtime = default_runtime();
    let logreg = sample_recipe(&runtime, "digits_logreg", "digits-logreg");
    let bytes = component_bytes("digits_logreg");
    let uncached = Runtime::new(RuntimeConfig {
        cache_dir: None,
        compute: Arc::clone(runtime.compute()),
    })
    .unwrap();

    let mut group = c.benchmark_group("lifecycle");
    group.bench_function("instantiate+init", |b| {
        b.iter(|| black_box(Replica::new(logreg.clone()).unwrap()))
    });
    group.bench_function("load-precompiled", |b| {
        b.iter(|| black_box(runtime.load_component(black_box(&bytes)).unwrap()))
    });
    group.sample_size(10);
    group.bench_function("compile", |b| {
        b.iter(|| black_box(uncached.load_component(black_box(&bytes)).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, predict, lifecycle);
criterion_main!(benches);
