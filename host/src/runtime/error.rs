//! Errors of loading a component and of running a call in it. Callers branch on the variant
//! (the frontend maps each to a gRPC status), so each names its cause precisely.

use std::time::Duration;
use thiserror::Error;

/// Why a component could not be loaded as a model.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The bytes are not a WebAssembly component at all.
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// wasmtime could not compile or validate the component.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// The component does not export the `predictor` interface this host calls.
    #[error(
        "the component does not implement `{expected}`: {detail}. Build it with sluice-sdk's \
         `export_model!` against wit/ of this version"
    )]
    MissingPredictor {
        /// The interface that was looked for.
        expected: &'static str,
        /// What was found instead.
        detail: String,
    },
    /// The component imports something the host does not provide.
    #[error("the component imports an interface the host does not provide: {0}")]
    UnsatisfiedImport(String),
    /// The model's `init` returned an error or trapped.
    #[error("the model's init failed: {0}")]
    InitFailed(String),
    /// The model's `info` is unusable.
    #[error("the model's info() is invalid: {0}")]
    InvalidInfo(String),
    /// Reading the component or its precompiled form failed.
    #[error("{0}")]
    Io(String),
}

/// Why one call into a model failed. The model and host keep serving after each of these.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CallError {
    /// The model returned `model-error.invalid-input`.
    #[error("the model rejected the input: {0}")]
    RejectedInput(String),
    /// The model returned `model-error.internal`.
    #[error("the model reported an error: {0}")]
    ModelFailed(String),
    /// The call ran past the model's time limit and was stopped.
    #[error("the model ran longer than its {limit:?} time limit and was stopped")]
    Timeout {
        /// The per-call limit.
        limit: Duration,
    },
    /// The model tried to use more memory than its limit.
    #[error("the model exceeded its memory limit: {0}")]
    MemoryExhausted(String),
    /// The model trapped (panicked, hit `unreachable`, overflowed its stack, ...).
    #[error("the model trapped: {0}")]
    Trapped(String),
    /// The model's answer to one request is larger than the model's response limit.
    #[error("the model's answer is {bytes} bytes, over its response limit of {limit} bytes")]
    ResponseTooLarge {
        /// The size of the answer.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The model's answer does not match what it declared.
    #[error("the model returned an invalid output: {0}")]
    InvalidOutput(String),
    /// The request's deadline passed while it waited; it was not run.
    #[error("the request's deadline passed before a replica could run it")]
    DeadlineExceeded,
    /// Every replica's queue is full; the request was not run.
    #[error("the model's queues are full ({capacity} requests waiting per replica)")]
    QueueFull {
        /// The queue bound.
        capacity: usize,
    },
    /// No replica could run the request (e.g. re-instantiation after a fault failed).
    #[error("the model is unavailable: {0}")]
    Unavailable(String),
}

/// Joins an error's chain into one line: `outer: inner: root`.
pub(crate) fn error_chain(error: &wasmtime::Error) -> String {
    error
        .chain()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
