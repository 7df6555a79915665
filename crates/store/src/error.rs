//! Backend errors, normalised to a small kind that the host maps to reason codes.
//!
//! Messages name what failed, never a value: no material, no token, no connection password.

/// What went wrong, independent of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The secret's state moved since the snapshot the change was computed from.
    StateConflict,
    /// The idempotency key is already taken (a concurrent or earlier request).
    IdempotencyTaken,
    /// The secret already exists.
    AlreadyExists,
    /// The thing does not exist.
    NotFound,
    /// The store cannot be written or read now (disk full, read-only, database gone, network).
    Unavailable,
    /// Stored data failed authentication or does not parse: tampering or corruption.
    Corrupt,
    /// The request does not fit the store's rules (e.g. material too large).
    Invalid,
    /// The principal is the last live admin for every tenant, and may not be revoked.
    LastAdmin,
}

/// A store error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct StoreError {
    /// The normalised kind.
    pub kind: ErrorKind,
    /// What failed, for the server log. Never contains a value.
    pub message: String,
}

impl StoreError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Short-hand for results of store calls.
pub type StoreResult<T> = Result<T, StoreError>;
