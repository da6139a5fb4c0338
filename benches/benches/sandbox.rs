//! What the sandbox costs, in process (no gRPC): the digits logistic regression as plain Rust
//! vs the same code as a component (batch 1 and 64), the MLP and the CNN whose layers run on
//! the host compute import (batch 1, 64 and 256), and the fixed costs of a model's lifecycle:
//! instantiate + init, loading a precompiled component, compiling one from scratch.
//!
//! Run: `cargo bench -p sluice-benches`. Figures go to `docs/benchmarks.md`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use digits_logreg::{CLASSES, LogReg};
use sluice::bundled::SAMPLE_WASM_DIR;
use sluice::runtime::replica::{InstanceRecipe, Replica};
use sluice::runtime::{Dtype, ModelLimits, Runtime, RuntimeConfig, Tensor};
use sluice_train::{Digits, params_path};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

fn component_bytes(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(SAMPLE_WASM_DIR).join(format!("{name}.wasm"))).unwrap()
}

fn cached_runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-cache")),
        ..RuntimeConfig::default()
    })
    .unwrap()
}

fn recipe(runtime: &Runtime, component: &str, model: &str) -> InstanceRecipe {
    InstanceRecipe {
        component: runtime.load_component(&component_bytes(component)).unwrap(),
        model: model.into(),
        config: std::fs::read(params_path(model)).unwrap().into(),
        limits: ModelLimits::default(),
        compute: runtime.compute().clone(),
    }
}

/// The first `rows` held-out images, flattened.
fn pixels(rows: usize) -> Vec<f32> {
    let digits = Digits::load_default().unwrap();
    digits.holdout[..rows]
        .iter()
        .flat_map(|s| s.pixels.iter().copied())
        .collect()
}

fn pixels_tensor(values: &[f32]) -> Tensor {
    Tensor {
        name: "pixels".into(),
        dtype: Dtype::Fp32,
        shape: vec![(values.len() / 64) as u32, 64],
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn predict(c: &mut Criterion) {
    let runtime = cached_runtime();
    let config = std::fs::read(params_path("digits-logreg")).unwrap();
    let native = LogReg::from_config(&config).unwrap();
    let mut logreg = Replica::new(recipe(&runtime, "digits_logreg", "digits-logreg")).unwrap();
    let mut mlp = Replica::new(recipe(&runtime, "digits_mlp", "digits-mlp")).unwrap();
    let mut cnn = Replica::new(recipe(&runtime, "digits_cnn", "digits-cnn")).unwrap();

    let mut group = c.benchmark_group("predict");
    for rows in [1usize, 64, 256] {
        let x = pixels(rows);
        let inputs = [pixels_tensor(&x)];
        group.throughput(Throughput::Elements(rows as u64));
        for (name, replica) in [("mlp-component", &mut mlp), ("cnn-component", &mut cnn)] {
            group.bench_with_input(BenchmarkId::new(name, rows), &inputs, |b, inputs| {
                b.iter(|| black_box(replica.predict(black_box(inputs)).unwrap()))
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
            |b, inputs| b.iter(|| black_box(logreg.predict(black_box(inputs)).unwrap())),
        );
    }
    group.finish();
}

fn lifecycle(c: &mut Criterion) {
    let runtime = cached_runtime();
    let logreg = recipe(&runtime, "digits_logreg", "digits-logreg");
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
