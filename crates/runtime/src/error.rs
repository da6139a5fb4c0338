//! Errors of loading a component and of running a call in it. Callers branch on the variant,
//! so each names its cause precisely; [`HasKind`] says what kind of failure each is.

use sluice_types::{ErrorKind, HasKind};
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
    /// The name or version it would serve under is not one (the message names the field).
    #[error("{0}")]
    InvalidName(String),
    /// A task of the host's failed while loading (a panic, a runtime shutting down).
    #[error("{0}")]
    Internal(String),
}

impl HasKind for LoadError {
    fn kind(&self) -> ErrorKind {
        match self {
            LoadError::Internal(_) => ErrorKind::Internal,
            _ => ErrorKind::InvalidArgument,
        }
    }
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
    /// No replica could run the request (e.g. re-instantiation after a fault failed).
    #[error("the model is unavailable: {0}")]
    Unavailable(String),
}

impl HasKind for CallError {
    fn kind(&self) -> ErrorKind {
        match self {
            CallError::RejectedInput(_) => ErrorKind::InvalidArgument,
            CallError::Timeout { .. } => ErrorKind::DeadlineExceeded,
            CallError::MemoryExhausted(_) => ErrorKind::ResourceExhausted,
            CallError::Unavailable(_) => ErrorKind::Unavailable,
            CallError::ModelFailed(_) | CallError::Trapped(_) => ErrorKind::Internal,
        }
    }
}

/// Joins an error's chain into one line: `outer: inner: root`.
pub(crate) fn error_chain(error: &wasmtime::Error) -> String {
    error
        .chain()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
