//! The one place errors become wire statuses: an [`ErrorKind`] maps to a gRPC code and to an
//! HTTP status here and nowhere else, so every service of both protocols answers a given
//! failure alike.

use crate::error::ApiError;
use axum::http::StatusCode;
use sluice_types::ErrorKind;
use tonic::{Code, Status};

/// The gRPC code of a kind of failure.
pub fn grpc_code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The HTTP status of a kind of failure (KServe v2 REST and the sluice REST API).
pub fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::InvalidArgument | ErrorKind::FailedPrecondition => StatusCode::BAD_REQUEST,
        ErrorKind::AlreadyExists => StatusCode::CONFLICT,
        ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The longest message sent back, in bytes: a message quotes what a client sent, and a status
/// must fit gRPC's metadata limits whatever the client sent.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// `message` cut to [`MAX_MESSAGE_BYTES`] (at a character boundary), marked when cut.
pub fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES - 16;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" … (cut)");
    }
    message
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        Status::new(grpc_code(error.kind), bounded(error.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_runtime::{CallError, LoadError};
    use sluice_serving::batching::BatchError;
    use sluice_serving::registry::RegistryError;
    use std::time::Duration;

    fn call(error: BatchError) -> RegistryError {
        RegistryError::Call {
            model: "m".into(),
            error,
        }
    }

    #[test]
    fn faults_map_to_distinct_codes_with_the_model_named() {
        let cases = [
            (
                call(BatchError::Call(CallError::Timeout {
                    limit: Duration::from_millis(5),
                })),
                Code::DeadlineExceeded,
            ),
            (
                call(BatchError::Call(CallError::MemoryExhausted("x".into()))),
                Code::ResourceExhausted,
            ),
            (
                call(BatchError::QueueFull { capacity: 1 }),
                Code::ResourceExhausted,
            ),
            (
                call(BatchError::Call(CallError::Trapped("x".into()))),
                Code::Internal,
            ),
            (
                call(BatchError::Call(CallError::RejectedInput("x".into()))),
                Code::InvalidArgument,
            ),
            (RegistryError::ModelNotFound("m".into()), Code::NotFound),
            (
                RegistryError::Load(LoadError::NotAComponent("x".into())),
                Code::InvalidArgument,
            ),
        ];
        for (error, code) in cases {
            let status = Status::from(ApiError::from(error));
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(status.message().contains('m'), "{}", status.message());
        }
    }

    #[test]
    fn every_kind_has_a_code_and_a_status() {
        for kind in ErrorKind::ALL {
            assert_eq!(format!("{:?}", grpc_code(kind)), kind.label());
            assert!(http_status(kind).is_client_error() || http_status(kind).is_server_error());
        }
    }
}
