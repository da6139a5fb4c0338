//! The same kernel tests for both backends: every operation on the GPU against the CPU backend,
//! on random shapes (odd sizes, sizes that are not multiples of the matmul tile), and the
//! shape errors both must give.
//!
//! The GPU tests need an adapter. In CI that is Mesa's lavapipe (`.ci/run` installs it) and
//! the tests must run: with `CI` set, a missing adapter fails them. Elsewhere they are skipped
//! with a message when no adapter exists.

use super::cpu::CpuBackend;
use super::gpu::{Adapters, GpuBackend};
use super::{Backend, ComputeError, DeviceTensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;

/// The GPU backend shared by the tests (opening one takes a while on lavapipe), or `None`
/// (with a message) where there is no adapter and `CI` is unset.
fn gpu() -> Option<&'static GpuBackend> {
    static GPU: OnceLock<Result<GpuBackend, ComputeError>> = OnceLock::new();
    match GPU.get_or_init(|| GpuBackend::open(Adapters::AnyKind)) {
        Ok(backend) => Some(backend),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping a gpu test: {e}");
            None
        }
        Err(e) => panic!("CI is set, so the gpu tests must run, but: {e}"),
    }
}

/// Largest difference allowed, relative to the value's magnitude (at least 1). The backends
/// sum in different orders; fp32 rounding differs by a few ulps per term.
const TOLERANCE: f32 = 1e-4;

fn random(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

/// Runs `op` on both backends with the same inputs and compares the outputs.
fn same_on_both(
    gpu: &GpuBackend,
    inputs: &[(Vec<usize>, Vec<f32>)],
    op: impl Fn(&dyn Backend, &[DeviceTensor]) -> Result<DeviceTensor, ComputeError>,
) {
    let run = |backend: &dyn Backend| {
        let tensors: Vec<DeviceTensor> = inputs
            .iter()
            .map(|(shape, data)| backend.upload(shape.clone(), data.clone()).unwrap())
            .collect();
        let out = op(backend, &tensors).unwrap();
        (out.shape().to_vec(), backend.read(&out).unwrap())
    };
    let (cpu_shape, cpu_values) = run(&CpuBackend);
    let (gpu_shape, gpu_values) = run(gpu);
    let shapes: Vec<_> = inputs.iter().map(|(s, _)| s).collect();
    assert_eq!(gpu_shape, cpu_shape, "output shape for inputs {shapes:?}");
    for (i, (g, c)) in gpu_values.iter().zip(&cpu_values).enumerate() {
        assert!(
            (g - c).abs() <= TOLERANCE * c.abs().max(1.0),
            "inputs {shapes:?}: value {i} is {g} on the gpu and {c} on the cpu"
        );
    }
}

#[test]
fn matmul_matches_the_cpu_on_random_shapes() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(5);
    let mut shapes = vec![
        (1, 1, 1),
        (64, 64, 64),
        (65, 17, 129),
        (3, 200, 1),
        (130, 64, 10),
    ];
    shapes.extend((0..6).map(|_| {
        (
            rng.random_range(1..150),
            rng.random_range(1..150),
            rng.random_range(1..150),
        )
    }));
    for (m, k, n) in shapes {
        let a = (vec![m, k], random(&mut rng, m * k));
        let b = (vec![k, n], random(&mut rng, k * n));
        same_on_both(gpu, &[a, b], |backend, t| backend.matmul(&t[0], &t[1]));
    }
}

#[test]
fn elementwise_ops_match_the_cpu_on_random_shapes() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(6);
    for (rows, width) in [(1, 1), (3, 10), (257, 3), (1000, 77)] {
        let a = (vec![rows, width], random(&mut rng, rows * width));
        let same = (vec![rows, width], random(&mut rng, rows * width));
        let row = (vec![width], random(&mut rng, width));
        same_on_both(gpu, &[a.clone(), same], |backend, t| {
            backend.add(&t[0], &t[1])
        });
        same_on_both(gpu, &[a.clone(), row], |backend, t| {
            backend.add(&t[0], &t[1])
        });
        same_on_both(gpu, std::slice::from_ref(&a), |backend, t| {
            backend.relu(&t[0])
        });
        same_on_both(gpu, &[a], |backend, t| backend.softmax(&t[0]));
    }
}

#[test]
fn conv2d_and_max_pool_match_the_cpu_on_random_shapes() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(7);
    for (n, c, h, w, f, k, pad) in [
        (1, 1, 8, 8, 8, 3, 1),
        (3, 2, 5, 6, 3, 3, 0),
        (2, 3, 7, 5, 4, 2, 2),
        (17, 8, 4, 4, 16, 3, 1),
    ] {
        let x = (vec![n, c, h, w], random(&mut rng, n * c * h * w));
        let filters = (vec![f, c, k, k], random(&mut rng, f * c * k * k));
        same_on_both(gpu, &[x.clone(), filters], |backend, t| {
            backend.conv2d(&t[0], &t[1], pad)
        });
        for size in [1, 2, 3] {
            if size <= h.min(w) {
                same_on_both(gpu, std::slice::from_ref(&x), |backend, t| {
                    backend.max_pool(&t[0], size)
                });
            }
        }
    }
}

#[test]
fn a_cnn_forward_pass_stays_on_the_gpu_and_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = StdRng::seed_from_u64(8);
    let inputs = [
        (vec![5, 1, 8, 8], random(&mut rng, 5 * 64)),
        (vec![4, 1, 3, 3], random(&mut rng, 4 * 9)),
        (vec![64, 10], random(&mut rng, 640)),
        (vec![10], random(&mut rng, 10)),
    ];
    same_on_both(gpu, &inputs, |backend, t| {
        let conv = backend.relu(&backend.conv2d(&t[0], &t[1], 1)?)?;
        let pooled = backend.max_pool(&conv, 2)?;
        let flat = backend.reshape(&pooled, &[5, 64])?;
        let logits = backend.add(&backend.matmul(&flat, &t[2])?, &t[3])?;
        backend.softmax(&logits)
    });
}

#[test]
fn both_backends_refuse_the_same_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    for backend in [&CpuBackend as &dyn Backend, gpu] {
        let t = |shape: &[usize]| {
            backend
                .upload(shape.to_vec(), vec![0.5; shape.iter().product()])
                .unwrap()
        };
        let errors = [
            backend.matmul(&t(&[2, 3]), &t(&[2, 3])),
            backend.add(&t(&[2, 3]), &t(&[2])),
            backend.conv2d(&t(&[1, 2, 4, 4]), &t(&[1, 1, 3, 3]), 0),
            backend.max_pool(&t(&[1, 1, 2, 2]), 3),
            backend.reshape(&t(&[2, 3]), &[4]),
        ];
        for error in errors {
            assert!(
                matches!(error, Err(ComputeError::Shape(_))),
                "{}: {error:?}",
                backend.name()
            );
        }
        assert!(backend.upload(vec![2, 2], vec![1.0; 3]).is_err());
    }
}

#[test]
fn a_tensor_given_to_the_other_backend_is_an_error_not_a_crash() {
    let Some(gpu) = gpu() else { return };
    let on_cpu = CpuBackend.upload(vec![2], vec![1.0, 2.0]).unwrap();
    let on_gpu = gpu.upload(vec![2], vec![1.0, 2.0]).unwrap();
    assert!(matches!(
        gpu.relu(&on_cpu),
        Err(ComputeError::WrongBackend { .. })
    ));
    assert!(matches!(
        CpuBackend.relu(&on_gpu),
        Err(ComputeError::WrongBackend { .. })
    ));
}

#[test]
fn gpu_buffers_are_pooled_and_reused() {
    if gpu().is_none() {
        return;
    }
    // A backend of its own: the shared one's pool changes under the tests running beside it.
    let gpu = GpuBackend::open(Adapters::AnyKind).unwrap();
    let tensor = gpu.upload(vec![1000], vec![1.0; 1000]).unwrap();
    let idle_before = gpu.idle_pool_bytes();
    drop(tensor);
    let idle_after_drop = gpu.idle_pool_bytes();
    assert!(idle_after_drop > idle_before, "a dropped buffer is kept");
    let again = gpu.upload(vec![900], vec![2.0; 900]).unwrap();
    assert_eq!(gpu.idle_pool_bytes(), idle_before, "and handed out again");
    assert_eq!(gpu.read(&again).unwrap(), vec![2.0; 900]);
}

#[test]
fn a_gpu_validation_error_fails_the_call_instead_of_panicking() {
    let Some(gpu) = gpu() else { return };
    // Small operands whose product needs a 4 TiB output buffer, more than any device allows:
    // wgpu refuses it, the error scope catches that, and the call returns an error.
    let side = 1 << 20;
    let a = gpu.upload(vec![side, 1], vec![1.0; side]).unwrap();
    let b = gpu.upload(vec![1, side], vec![1.0; side]).unwrap();
    let huge = gpu.matmul(&a, &b);
    assert!(matches!(huge, Err(ComputeError::Gpu(_))), "{huge:?}");
    // The backend still works afterwards.
    let x = gpu.upload(vec![2], vec![-1.0, 1.0]).unwrap();
    assert_eq!(gpu.read(&gpu.relu(&x).unwrap()).unwrap(), vec![0.0, 1.0]);
}
