//! Why a selection call failed, and what kind of failure each cause is.

use crate::registry::RegistryError;
use crate::store::StoreError;
use sluice_types::{ErrorKind, HasKind};
use thiserror::Error;

/// Why a selection call failed.
#[derive(Debug, Error)]
pub enum SelectionError {
    /// No application has this name.
    #[error("application `{}` is not registered", sluice_types::names::quoted(.0))]
    AppNotFound(String),
    /// Registering a name that exists.
    #[error("application `{0}` is already registered")]
    AppExists(String),
    /// Linking a model that is linked already.
    #[error("model `{model}` is already linked to application `{app}`")]
    AlreadyLinked {
        /// The application.
        app: String,
        /// The link.
        model: String,
    },
    /// Unlinking a model that is not linked.
    #[error("model `{model}` is not linked to application `{app}` (linked: {linked:?})")]
    NotLinked {
        /// The application.
        app: String,
        /// The link.
        model: String,
        /// What is linked.
        linked: Vec<String>,
    },
    /// The request is malformed; the message starts with the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The application cannot answer yet.
    #[error("application `{0}` has no linked models; link one with `sluice apps link {0} MODEL`")]
    NoModels(String),
    /// A linked model is missing or failed in a way that concerns the request as a whole.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The durable store failed; the change was not made.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HasKind for SelectionError {
    fn kind(&self) -> ErrorKind {
        match self {
            SelectionError::AppNotFound(_) | SelectionError::NotLinked { .. } => {
                ErrorKind::NotFound
            }
            SelectionError::AppExists(_) | SelectionError::AlreadyLinked { .. } => {
                ErrorKind::AlreadyExists
            }
            SelectionError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            SelectionError::NoModels(_) => ErrorKind::FailedPrecondition,
            SelectionError::Registry(registry) => registry.kind(),
            SelectionError::Store(store) => store.kind(),
        }
    }
}
