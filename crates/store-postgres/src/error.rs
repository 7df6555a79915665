//! PostgreSQL errors normalised to [`ErrorKind`], by SQLSTATE and never by message text.
//!
//! A store error names what failed and the SQLSTATE (or the kind of transport failure); it never
//! carries the server's message or detail, which can quote row values (a unique violation's
//! detail names the key).

use deadpool_postgres::PoolError;
use selene_kms_store::backend::{ErrorKind, StoreError};
use tokio_postgres::error::SqlState;

/// The kind for a SQLSTATE.
///
/// Serialization failures and deadlocks mean that a concurrent transaction (on this node or
/// another) won a race: the host re-reads and runs the request again, as for a lost
/// compare-and-set. Connection, resource, operator and lock-timeout classes mean the database
/// cannot serve now. Anything not named here is `Unavailable`: fail closed.
pub(crate) fn kind_of(code: &SqlState) -> ErrorKind {
    let code = code.code();
    match code {
        "23505" => ErrorKind::AlreadyExists,
        "40001" | "40P01" => ErrorKind::StateConflict,
        "XX001" | "XX002" => ErrorKind::Corrupt,
        _ => match code.get(..2) {
            // Integrity constraints other than uniqueness, and data exceptions (a value out of
            // range): what was asked does not fit the schema.
            Some("23" | "22") => ErrorKind::Invalid,
            // Connection exceptions (08), insufficient resources (53), operator intervention
            // (57: shutdown, cancel, timeouts), system errors (58), lock not available (55),
            // read-only transaction (25), authentication (28), and everything else.
            _ => ErrorKind::Unavailable,
        },
    }
}

/// Maps a client error, naming `what` failed.
pub(crate) fn pg_error(what: &str, e: &tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(code) => StoreError::new(
            kind_of(code),
            format!("postgres: {what}: SQLSTATE {}", code.code()),
        ),
        None => {
            // Not a server error: the client's own description is a fixed phrase ("connection
            // closed", "error performing TLS handshake"); an I/O cause adds its kind, and a TLS
            // failure its reason (an unknown issuer, a name the certificate does not hold),
            // which names no connection parameter.
            let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
            let tls = io
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map(|tls| format!(": {tls}"))
                .unwrap_or_default();
            let io = io
                .map(|io| format!(" ({:?})", io.kind()))
                .unwrap_or_default();
            StoreError::new(
                ErrorKind::Unavailable,
                format!("postgres: {what}: {e}{tls}{io}"),
            )
        }
    }
}

/// `map_err` adapter for [`pg_error`].
pub(crate) fn pg(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| pg_error(what, &e)
}

/// The same error as `Unavailable`: for writes whose failure must refuse the unit as "cannot
/// write now" whatever the cause (the audit record above all).
pub(crate) fn as_unavailable(e: StoreError) -> StoreError {
    StoreError::new(ErrorKind::Unavailable, e.message)
}

/// Maps a failure to get a pooled connection.
pub(crate) fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_error("connect", &e),
        PoolError::Timeout(_) => StoreError::new(
            ErrorKind::Unavailable,
            "postgres: timed out waiting for a connection",
        ),
        PoolError::Closed => {
            StoreError::new(ErrorKind::Unavailable, "postgres: the pool is closed")
        }
        PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => StoreError::new(
            ErrorKind::Unavailable,
            "postgres: the pool cannot create connections",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_kinds() {
        for (code, kind) in [
            (SqlState::UNIQUE_VIOLATION, ErrorKind::AlreadyExists),
            (
                SqlState::T_R_SERIALIZATION_FAILURE,
                ErrorKind::StateConflict,
            ),
            (SqlState::T_R_DEADLOCK_DETECTED, ErrorKind::StateConflict),
            (SqlState::DATA_CORRUPTED, ErrorKind::Corrupt),
            (SqlState::INDEX_CORRUPTED, ErrorKind::Corrupt),
            (SqlState::FOREIGN_KEY_VIOLATION, ErrorKind::Invalid),
            (SqlState::NOT_NULL_VIOLATION, ErrorKind::Invalid),
            (SqlState::NUMERIC_VALUE_OUT_OF_RANGE, ErrorKind::Invalid),
            (SqlState::CONNECTION_EXCEPTION, ErrorKind::Unavailable),
            (SqlState::CONNECTION_FAILURE, ErrorKind::Unavailable),
            (SqlState::ADMIN_SHUTDOWN, ErrorKind::Unavailable),
            (SqlState::CRASH_SHUTDOWN, ErrorKind::Unavailable),
            (SqlState::CANNOT_CONNECT_NOW, ErrorKind::Unavailable),
            (SqlState::DISK_FULL, ErrorKind::Unavailable),
            (SqlState::TOO_MANY_CONNECTIONS, ErrorKind::Unavailable),
            (SqlState::READ_ONLY_SQL_TRANSACTION, ErrorKind::Unavailable),
            (SqlState::LOCK_NOT_AVAILABLE, ErrorKind::Unavailable),
            (SqlState::QUERY_CANCELED, ErrorKind::Unavailable),
            (SqlState::INVALID_PASSWORD, ErrorKind::Unavailable),
            (SqlState::IO_ERROR, ErrorKind::Unavailable),
            (SqlState::RAISE_EXCEPTION, ErrorKind::Unavailable),
            (SqlState::UNDEFINED_TABLE, ErrorKind::Unavailable),
            (SqlState::from_code("ZZ999"), ErrorKind::Unavailable),
        ] {
            assert_eq!(kind_of(&code), kind, "{}", code.code());
        }
    }
}
