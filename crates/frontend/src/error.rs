//! The error every handler of every protocol returns before it becomes a wire status: an
//! [`ErrorKind`] and a message. Errors of the layers below convert into it through their
//! [`HasKind`]; the frontend's own checks make one with a constructor. [`crate::status`] turns
//! it into a gRPC status or an HTTP answer.

use sluice_types::{ErrorKind, HasKind};
use std::fmt::Display;

/// A failed request, in protocol-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What went wrong, naming the field or the thing.
    pub message: String,
}

impl<E: HasKind + Display> From<E> for ApiError {
    fn from(error: E) -> ApiError {
        ApiError {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

impl ApiError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    /// The request is malformed; the message names the field.
    pub fn invalid_argument(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::InvalidArgument, message)
    }

    /// What the request names does not exist.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::NotFound, message)
    }

    /// The server is not in a state that allows the request.
    pub fn failed_precondition(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::FailedPrecondition, message)
    }

    /// The target cannot answer now.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Unavailable, message)
    }

    /// A bound on what the server holds was reached.
    pub fn resource_exhausted(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::ResourceExhausted, message)
    }

    /// The request took too long.
    pub fn deadline_exceeded(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::DeadlineExceeded, message)
    }

    /// The server failed.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Internal, message)
    }

    /// The caller is not allowed.
    pub fn permission_denied(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::PermissionDenied, message)
    }

    /// The caller did not authenticate.
    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Unauthenticated, message)
    }
}
