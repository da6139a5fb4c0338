//! The host compute backends side by side: each operation on the CPU backend and on the GPU
//! backend (the best adapter wgpu finds, software ones included), and end-to-end `predict` of
//! the MLP and the CNN components with their imports on each backend.
//!
//! Matmul's throughput is reported in elements of `2·n³`, so criterion's `Gelem/s` reads as
//! GFLOP/s. A GPU operation only queues work; its timing includes waiting for the queue.
//! `SLUICE_BENCH_LARGE=1` adds matmul at 4096² (minutes on a CPU, for GPU machines), and
//! `SLUICE_BENCH_BACKENDS=gpu` (or `cpu`) benches one backend only.
//!
//! Run: `cargo bench -p sluice-benches --bench compute`, or `benches/gpu/run.sh`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_compute::cpu::CpuBackend;
use sluice_compute::gpu::{Adapters, GpuBackend};
use sluice_compute::{Backend, ComputeError, DeviceTensor};
use sluice_runtime::Replica;
use std::hint::black_box;
use std::sync::Arc;

mod common;
use common::{cached_runtime, call, pixels, pixels_tensor, sample_recipe};

/// A backend under test, and how to wait until its queued work is done.
struct Subject {
    label: &'static str,
    backend: Arc<dyn Backend>,
    gpu: Option<Arc<GpuBackend>>,
}

impl Subject {
    fn finish(&self) {
        if let Some(gpu) = &self.gpu {
            gpu.wait_idle().unwrap();
        }
    }
}

fn subjects() -> Vec<Subject> {
    let wanted = std::env::var("SLUICE_BENCH_BACKENDS").unwrap_or_else(|_| "cpu,gpu".into());
    let mut subjects = Vec::new();
    if wanted.contains("cpu") {
        subjects.push(Subject {
            label: "cpu",
            backend: Arc::new(CpuBackend),
            gpu: None,
        });
    }
    if wanted.contains("gpu") {
        match GpuBackend::open(Adapters::AnyKind) {
            Ok(gpu) => {
                let gpu = Arc::new(gpu);
                eprintln!("gpu backend: {}", gpu.name());
                subjects.push(Subject {
                    label: "gpu",
                    backend: gpu.clone(),
                    gpu: Some(gpu),
                });
            }
            Err(e) => eprintln!("no gpu backend to bench: {e}"),
        }
    }
    subjects
}

fn ramp(backend: &dyn Backend, shape: &[usize]) -> DeviceTensor {
    let len = shape.iter().product();
    let values = (0..len).map(|i| ((i % 17) as f32 - 8.0) * 0.125).collect();
    backend.upload(shape.to_vec(), values).unwrap()
}

/// Times `op` on each subject (operands made by `inputs`), waiting for the GPU each time.
fn bench_op(
    c: &mut Criterion,
    subjects: &[Subject],
    group_name: &str,
    size: usize,
    throughput: Throughput,
    inputs: impl Fn(&dyn Backend) -> Vec<DeviceTensor>,
    op: impl Fn(&dyn Backend, &[DeviceTensor]) -> Result<DeviceTensor, ComputeError>,
) {
    let mut group = c.benchmark_group(group_name);
    group.throughput(throughput);
    group.sample_size(10);
    for subject in subjects {
        let operands = inputs(subject.backend.as_ref());
        group.bench_function(BenchmarkId::new(subject.label, size), |b| {
            b.iter(|| {
                let out = op(subject.backend.as_ref(), black_box(&operands)).unwrap();
                subject.finish();
                out
            })
        });
    }
    group.finish();
}

fn ops(c: &mut Criterion) {
    let subjects = subjects();
    let mut sizes = vec![64usize, 256, 1024];
    if std::env::var_os("SLUICE_BENCH_LARGE").is_some() {
        sizes.push(4096);
    }
    for n in sizes {
        bench_op(
            c,
            &subjects,
            "matmul",
            n,
            Throughput::Elements(2 * (n as u64).pow(3)),
            |b| vec![ramp(b, &[n, n]), ramp(b, &[n, n])],
            |b, t| b.matmul(&t[0], &t[1]),
        );
    }
    let rows = 4096;
    let elementwise = Throughput::Elements((rows * 256) as u64);
    let matrix = |b: &dyn Backend| vec![ramp(b, &[rows, 256]), ramp(b, &[256])];
    bench_op(
        c,
        &subjects,
        "add",
        rows,
        elementwise.clone(),
        matrix,
        |b, t| b.add(&t[0], &t[1]),
    );
    bench_op(
        c,
        &subjects,
        "relu",
        rows,
        elementwise.clone(),
        matrix,
        |b, t| b.relu(&t[0]),
    );
    bench_op(
        c,
        &subjects,
        "softmax",
        rows,
        elementwise,
        matrix,
        |b, t| b.softmax(&t[0]),
    );
    // The digits CNN's layers at batch 256: 8 filters of 3×3 over 8×8 images, then 2×2 pooling.
    let batch = 256;
    bench_op(
        c,
        &subjects,
        "conv2d",
        batch,
        Throughput::Elements(batch as u64),
        |b| vec![ramp(b, &[batch, 1, 8, 8]), ramp(b, &[8, 1, 3, 3])],
        |b, t| b.conv2d(&t[0], &t[1], 1),
    );
    bench_op(
        c,
        &subjects,
        "max_pool",
        batch,
        Throughput::Elements(batch as u64),
        |b| vec![ramp(b, &[batch, 8, 8, 8])],
        |b, t| b.max_pool(&t[0], 2),
    );
}

/// `predict` of the MLP and CNN components, their compute imports on each backend.
fn predict(c: &mut Criterion) {
    let mut group = c.benchmark_group("predict");
    for subject in subjects() {
        let runtime = cached_runtime(subject.backend.clone());
        for (component, model) in [("digits_mlp", "digits-mlp"), ("digits_cnn", "digits-cnn")] {
            let mut replica = Replica::new(sample_recipe(&runtime, component, model)).unwrap();
            for rows in [1usize, 256] {
                let inputs = [pixels_tensor(&pixels(rows))];
                group.throughput(Throughput::Elements(rows as u64));
                let id = BenchmarkId::new(format!("{model}/{}", subject.label), rows);
                group.bench_function(id, |b| {
                    let mut inputs = inputs.to_vec();
                    b.iter(|| black_box(call(&mut replica, &mut inputs)))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, ops, predict);
criterion_main!(benches);
