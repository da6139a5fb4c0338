//! The kind of an error, defined once at the bottom so that every layer can say what went
//! wrong without knowing any protocol. The frontend maps each kind to a gRPC code and an HTTP
//! status (the only place that happens); metrics label failures with [`ErrorKind::label`].

/// What kind of failure an error is, in the terms a caller acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or does not fit what it addresses.
    InvalidArgument,
    /// What the request names does not exist.
    NotFound,
    /// What the request would create exists already.
    AlreadyExists,
    /// The target is not in a state that allows the request.
    FailedPrecondition,
    /// A bound was hit (queue, memory, size).
    ResourceExhausted,
    /// The request's deadline or a time limit passed.
    DeadlineExceeded,
    /// The service cannot answer now; retrying later may work.
    Unavailable,
    /// The caller is not allowed to make this request.
    PermissionDenied,
    /// The caller did not say who it is.
    Unauthenticated,
    /// The server or a model failed.
    Internal,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::FailedPrecondition,
        ErrorKind::ResourceExhausted,
        ErrorKind::DeadlineExceeded,
        ErrorKind::Unavailable,
        ErrorKind::PermissionDenied,
        ErrorKind::Unauthenticated,
        ErrorKind::Internal,
    ];

    /// The label metrics use (`InvalidArgument`, `NotFound`, ...).
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "InvalidArgument",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::AlreadyExists => "AlreadyExists",
            ErrorKind::FailedPrecondition => "FailedPrecondition",
            ErrorKind::ResourceExhausted => "ResourceExhausted",
            ErrorKind::DeadlineExceeded => "DeadlineExceeded",
            ErrorKind::Unavailable => "Unavailable",
            ErrorKind::PermissionDenied => "PermissionDenied",
            ErrorKind::Unauthenticated => "Unauthenticated",
            ErrorKind::Internal => "Internal",
        }
    }
}

/// An error that knows its [`ErrorKind`].
pub trait HasKind {
    /// The kind of this error.
    fn kind(&self) -> ErrorKind;
}
