//! Models from other frameworks, in process (no gRPC): the onnx-runner (tract) natively vs as
//! a component, on the two exported digits graphs at batch 1 and 64; and the Python-authored
//! logistic regression (componentize-py) against the Rust one, per call and per instance.
//!
//! Run: `cargo bench -p sluice-benches --bench frameworks`. The Python part needs the component
//! built by `sample-models/python-logreg/build.sh` (path in `SLUICE_PYTHON_MODEL`, default
//! `target/python_logreg.wasm`); without it that part is skipped with a message.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use onnx_runner::OnnxRunner;
use sluice_runtime::Replica;
use sluice_samples::ONNX_RUNNER;
use sluice_train::params_path;
use sluice_types::Tensor;
use std::hint::black_box;
use std::path::PathBuf;

mod common;
use common::{call, component_bytes, default_runtime, pixels, pixels_tensor, recipe};

fn pixels_input(rows: usize) -> Vec<Tensor> {
    vec![pixels_tensor(&pixels(rows))]
}

fn onnx_file(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../sample-models/onnx/{name}.onnx")),
    )
    .unwrap()
}

/// The SDK's tensor type is the guest's binding; the native runner takes the same fields.
fn sdk_tensors(tensors: &[Tensor]) -> Vec<sluice_sdk::Tensor> {
    tensors
        .iter()
        .map(|t| sluice_sdk::Tensor {
            name: t.name.clone(),
            dtype: sluice_sdk::Dtype::Fp32,
            shape: t.shape.clone(),
            data: t.data.clone(),
        })
        .collect()
}

fn onnx(c: &mut Criterion) {
    let runtime = default_runtime();
    let mut group = c.benchmark_group("onnx");
    for model in ["digits-sklearn", "digits-cnn"] {
        let graph = onnx_file(model);
        let mut native = OnnxRunner::from_onnx(&graph).unwrap();
        let mut sandboxed = Replica::new(recipe(&runtime, ONNX_RUNNER, model, graph)).unwrap();
        for rows in [1usize, 64] {
            let inputs = pixels_input(rows);
            let native_inputs = sdk_tensors(&inputs);
            group.throughput(Throughput::Elements(rows as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{model}-native"), rows),
                &native_inputs,
                |b, inputs| b.iter(|| black_box(native.run(black_box(inputs)).unwrap())),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{model}-component"), rows),
                &inputs,
                |b, inputs| {
                    let mut inputs = inputs.to_vec();
                    b.iter(|| black_box(call(&mut sandboxed, &mut inputs)))
                },
            );
        }
    }
    let recipe = recipe(&runtime, ONNX_RUNNER, "digits-cnn", onnx_file("digits-cnn"));
    group.bench_function("onnx-runner instantiate+init (cnn)", |b| {
        b.iter(|| black_box(Replica::new(recipe.clone()).unwrap()))
    });
    group.finish();
}

fn python(c: &mut Criterion) {
    let path = std::env::var("SLUICE_PYTHON_MODEL").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/python_logreg.wasm"),
        PathBuf::from,
    );
    let Ok(python) = std::fs::read(&path) else {
        eprintln!(
            "skipping the Python benchmarks: no {} (build it with \
             sample-models/python-logreg/build.sh)",
            path.display()
        );
        return;
    };
    let runtime = default_runtime();
    let params = std::fs::read(params_path("digits-logreg")).unwrap();
    let rust = component_bytes("digits_logreg");
    let python = recipe(&runtime, &python, "python-logreg", params.clone());
    let rust = recipe(&runtime, &rust, "digits-logreg", params);
    let mut group = c.benchmark_group("python");
    for (name, recipe) in [("python-logreg", &python), ("rust-logreg", &rust)] {
        let mut replica = Replica::new(recipe.clone()).unwrap();
        for rows in [1usize, 64] {
            let inputs = pixels_input(rows);
            group.throughput(Throughput::Elements(rows as u64));
            group.bench_with_input(BenchmarkId::new(name, rows), &inputs, |b, inputs| {
                let mut inputs = inputs.to_vec();
                b.iter(|| black_box(call(&mut replica, &mut inputs)))
            });
        }
    }
    group.sample_size(20);
    group.bench_function("python-logreg instantiate+init", |b| {
        b.iter(|| black_box(Replica::new(python.clone()).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, onnx, python);
criterion_main!(benches);
