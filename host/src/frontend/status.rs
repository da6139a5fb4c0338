//! The one place errors become gRPC statuses, so every service answers a given failure with
//! the same code and message.

use crate::registry::RegistryError;
use crate::runtime::{CallError, LoadError};
use crate::selection::{SelectionError, StoreError};
use tonic::{Code, Status};

/// The status a registry error is answered with.
pub fn to_status(error: RegistryError) -> Status {
    Status::new(code(&error), error.to_string())
}

/// The gRPC code of a registry error.
pub fn code(error: &RegistryError) -> Code {
    match error {
        RegistryError::ModelNotFound(_) | RegistryError::VersionNotFound { .. } => Code::NotFound,
        RegistryError::InvalidInput { .. } => Code::InvalidArgument,
        RegistryError::Call { error, .. } => match error {
            CallError::RejectedInput(_) => Code::InvalidArgument,
            CallError::Timeout { .. } | CallError::DeadlineExceeded => Code::DeadlineExceeded,
            CallError::MemoryExhausted(_)
            | CallError::QueueFull { .. }
            | CallError::ResponseTooLarge { .. } => Code::ResourceExhausted,
            CallError::Unavailable(_) => Code::Unavailable,
            CallError::ModelFailed(_) | CallError::Trapped(_) | CallError::InvalidOutput(_) => {
                Code::Internal
            }
        },
        RegistryError::Load(load) => match load {
            LoadError::Io(_) => Code::Internal,
            _ => Code::InvalidArgument,
        },
    }
}

/// The status a selection (application) error is answered with.
pub fn selection_status(error: SelectionError) -> Status {
    let code = match &error {
        SelectionError::AppNotFound(_) | SelectionError::NotLinked { .. } => Code::NotFound,
        SelectionError::AppExists(_) | SelectionError::AlreadyLinked { .. } => Code::AlreadyExists,
        SelectionError::InvalidArgument(_) => Code::InvalidArgument,
        SelectionError::NoModels(_) => Code::FailedPrecondition,
        SelectionError::Registry(registry) => code(registry),
        SelectionError::Store(StoreError::InUse(_)) => Code::Unavailable,
        SelectionError::Store(_) => Code::Internal,
    };
    Status::new(code, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn call(error: CallError) -> RegistryError {
        RegistryError::Call {
            model: "m".into(),
            error,
        }
    }

    #[test]
    fn faults_map_to_distinct_codes_with_the_model_named() {
        let cases = [
            (
                call(CallError::Timeout {
                    limit: Duration::from_millis(5),
                }),
                Code::DeadlineExceeded,
            ),
            (
                call(CallError::MemoryExhausted("x".into())),
                Code::ResourceExhausted,
            ),
            (
                call(CallError::QueueFull { capacity: 1 }),
                Code::ResourceExhausted,
            ),
            (call(CallError::Trapped("x".into())), Code::Internal),
            (
                call(CallError::RejectedInput("x".into())),
                Code::InvalidArgument,
            ),
            (RegistryError::ModelNotFound("m".into()), Code::NotFound),
            (
                RegistryError::Load(LoadError::NotAComponent("x".into())),
                Code::InvalidArgument,
            ),
        ];
        for (error, code) in cases {
            let status = to_status(error);
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(status.message().contains('m'), "{}", status.message());
        }
    }
}
