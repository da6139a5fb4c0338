//! A model that misbehaves on purpose, so the tests can prove that a fault fails only its own
//! request. Its config is the name of the fault (UTF-8): `loop`, `oom`, `panic`, `recursion`,
//! `wrong-shape`, `wrong-dtype`, `huge-output`, `straggler`, `huge-matmul` or
//! `undeclared-input`, or `init-loop` (whose `init` never returns, so the load's time limit
//! must end it), `info-panic` (whose `info` panics, so the load must say why) or `slow-init`
//! (whose `init` takes 500 ms, and which then behaves: a slow cold start). It serves as `faulty-<fault>`,
//! with input `x` FP32 `[-1, 1]` and output `y` FP32 `[-1, -1]`: it echoes `x`, except that a
//! batch containing the value `1.0` triggers the fault. So a test can send a bad request and
//! then a good one to the same model.

use sluice_sdk::compute::DeviceTensor;
use sluice_sdk::{Dtype, Model, ModelError, ModelInfo, Tensor, TensorSpec};
use std::hint::black_box;

/// The ways this model can fail.
#[derive(Clone, Copy)]
enum Fault {
    /// Spins forever: the host's call deadline must stop it.
    Loop,
    /// Allocates until memory runs out: the host's memory cap must stop it.
    Oom,
    /// Panics (a trap, with a message on stderr).
    Panic,
    /// Recurses without bound: the wasm stack limit must stop it.
    Recursion,
    /// Returns one row more than it was given.
    WrongShape,
    /// Returns `y` as INT64 instead of the declared FP32.
    WrongDtype,
    /// Returns 1 Mi values (4 MiB) per row: valid, but larger than a sane response limit.
    HugeOutput,
    /// Answers correctly, but only after 100 ms of work: slow only sometimes.
    Straggler,
    /// Reads an input, `z`, that it does not declare: the model's own bug, not the client's.
    UndeclaredInput,
    /// Panics in `info`: the load fails, and must show the panic message.
    InfoPanic,
    /// Takes 500 ms in `init`, then echoes every batch: each new instance is slow to start.
    SlowInit,
    /// Asks the host for a `[65536, 1] × [1, 65536]` product: 512 KiB of operands, 16 GiB of
    /// result. The host must refuse it before computing anything.
    HugeMatmul,
}

/// The configured faulty model.
pub struct Faulty {
    fault: Fault,
    name: String,
}

#[allow(unconditional_recursion)] // unbounded on purpose
fn recurse(depth: u64) -> u64 {
    // black_box keeps the compiler from turning this into a loop.
    black_box(depth) + recurse(black_box(depth + 1))
}

impl Model for Faulty {
    fn init(config: &[u8]) -> Result<Self, ModelError> {
        let name = std::str::from_utf8(config).unwrap_or("").trim();
        let fault = match name {
            "init-loop" => loop {
                // Never returns: the load's time limit ends it.
                black_box(0);
            },
            "loop" => Fault::Loop,
            "oom" => Fault::Oom,
            "panic" => Fault::Panic,
            "recursion" => Fault::Recursion,
            "wrong-shape" => Fault::WrongShape,
            "wrong-dtype" => Fault::WrongDtype,
            "huge-output" => Fault::HugeOutput,
            "straggler" => Fault::Straggler,
            "huge-matmul" => Fault::HugeMatmul,
            "undeclared-input" => Fault::UndeclaredInput,
            "info-panic" => Fault::InfoPanic,
            "slow-init" => {
                let started = std::time::Instant::now();
                while started.elapsed() < std::time::Duration::from_millis(500) {
                    black_box(0);
                }
                Fault::SlowInit
            }
            other => {
                return Err(ModelError::Internal(format!(
                    "unknown fault `{other}`; expected init-loop, info-panic, slow-init, loop, \
                     oom, panic, recursion, wrong-shape, wrong-dtype, huge-output, straggler, \
                     huge-matmul or undeclared-input"
                )));
            }
        };
        Ok(Faulty {
            fault,
            name: format!("faulty-{name}"),
        })
    }

    fn info(&self) -> ModelInfo {
        if matches!(self.fault, Fault::InfoPanic) {
            panic!("faulty model: info() panics as configured");
        }
        ModelInfo {
            name: self.name.clone(),
            version: "1".into(),
            inputs: vec![TensorSpec::new("x", Dtype::Fp32, &[-1, 1])],
            outputs: vec![TensorSpec::new("y", Dtype::Fp32, &[-1, -1])],
            max_batch: 8,
        }
    }

    fn predict(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let x = sluice_sdk::input(&inputs, "x")?;
        let values = x.to_f32()?;
        let mut rows = x.batch() as u32;
        if values.contains(&1.0) {
            match self.fault {
                Fault::Loop => loop {
                    black_box(&values);
                },
                Fault::Oom => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(black_box(vec![1u8; 1 << 20]));
                    }
                }
                Fault::Panic => panic!("faulty model: panic requested by the input"),
                Fault::UndeclaredInput => {
                    sluice_sdk::input(&inputs, "z")?;
                }
                Fault::InfoPanic => unreachable!("a model whose info() panics is never loaded"),
                Fault::SlowInit => {}
                Fault::Recursion => {
                    black_box(recurse(0));
                }
                Fault::WrongShape => rows += 1,
                Fault::WrongDtype => {
                    let y: Vec<i64> = values.iter().map(|&v| v as i64).collect();
                    return Ok(vec![Tensor::from_i64("y", &[rows, 1], &y)]);
                }
                Fault::Straggler => {
                    let started = std::time::Instant::now();
                    while started.elapsed() < std::time::Duration::from_millis(100) {
                        black_box(&values);
                    }
                }
                Fault::HugeMatmul => {
                    const SIDE: u32 = 1 << 16;
                    let ones = vec![1.0f32; SIDE as usize];
                    let column = DeviceTensor::upload(&[SIDE, 1], &ones)?;
                    let row = DeviceTensor::upload(&[1, SIDE], &ones)?;
                    column.matmul(&row)?;
                }
                Fault::HugeOutput => {
                    const WIDTH: u32 = 1 << 20;
                    let y = vec![0.5f32; (rows * WIDTH) as usize];
                    return Ok(vec![Tensor::from_f32("y", &[rows, WIDTH], &y)]);
                }
            }
        }
        let mut y = values;
        y.resize(rows as usize, 0.0);
        Ok(vec![Tensor::from_f32("y", &[rows, 1], &y)])
    }
}

sluice_sdk::export_model!(Faulty);
