//! The one mapping from a store failure to the reason code a host answers with.
//!
//! The HTTP status is the code's own, from the registry in core. Every path that turns a
//! [`StoreError`] into an answer goes through [`reason_for`]; a path that must do something else
//! with a kind (the KMS pipeline retries a commit that lost a race) handles that kind first, as
//! control flow, and hands the rest here.

use selene_kms_core::ReasonCode;
use selene_kms_store::{ErrorKind, StoreError};

/// The reason code for a store failure of `kind`. The match has no wildcard arm, so a new kind
/// does not compile until it is mapped here.
pub(crate) const fn reason_for(kind: ErrorKind) -> ReasonCode {
    match kind {
        // The secret moved under a mutation computed from an older state.
        ErrorKind::StateConflict => ReasonCode::SimulationStale,
        ErrorKind::IdempotencyTaken => ReasonCode::IdempotencyInFlight,
        ErrorKind::AlreadyExists => ReasonCode::SecretExists,
        ErrorKind::NotFound => ReasonCode::SecretNotFound,
        // Nothing is written without its audit record, so nothing changed.
        ErrorKind::Unavailable => ReasonCode::AuditUnavailable,
        ErrorKind::Corrupt => ReasonCode::InternalPipelineError,
        // Well-formed, but not what the stored state allows (e.g. staging material for a
        // generated secret).
        ErrorKind::Invalid => ReasonCode::ValidationFailed,
        ErrorKind::LastAdmin => ReasonCode::LastAdmin,
    }
}

/// [`refusal_for`], as the principal routes answer: what exists or is missing there is a
/// principal or token, not a secret.
pub(crate) fn principal_refusal_for(e: &StoreError) -> ReasonCode {
    match e.kind {
        ErrorKind::AlreadyExists => ReasonCode::PrincipalExists,
        ErrorKind::NotFound => ReasonCode::PrincipalNotFound,
        _ => refusal_for(e),
    }
}

/// [`reason_for`] the error, logged: server-side faults as warnings, refusals at debug level.
/// The message names what failed, never a value.
pub(crate) fn refusal_for(e: &StoreError) -> ReasonCode {
    let reason = reason_for(e.kind);
    if reason.http_status() >= 500 {
        tracing::warn!(kind = ?e.kind, error = %e.message, %reason, "store failure; request refused");
    } else {
        tracing::debug!(kind = ?e.kind, error = %e.message, %reason, "store refused the request");
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind, with the answer the design gives it. The match below stops compiling when a
    /// kind is added, pointing here.
    const EXPECTED: [(ErrorKind, ReasonCode, u16); 8] = [
        (ErrorKind::StateConflict, ReasonCode::SimulationStale, 409),
        (
            ErrorKind::IdempotencyTaken,
            ReasonCode::IdempotencyInFlight,
            409,
        ),
        (ErrorKind::AlreadyExists, ReasonCode::SecretExists, 409),
        (ErrorKind::NotFound, ReasonCode::SecretNotFound, 404),
        (ErrorKind::Unavailable, ReasonCode::AuditUnavailable, 503),
        (ErrorKind::Corrupt, ReasonCode::InternalPipelineError, 500),
        (ErrorKind::Invalid, ReasonCode::ValidationFailed, 422),
        (ErrorKind::LastAdmin, ReasonCode::LastAdmin, 409),
    ];

    const fn listed(kind: ErrorKind) -> bool {
        match kind {
            ErrorKind::StateConflict
            | ErrorKind::IdempotencyTaken
            | ErrorKind::AlreadyExists
            | ErrorKind::NotFound
            | ErrorKind::Unavailable
            | ErrorKind::Corrupt
            | ErrorKind::Invalid
            | ErrorKind::LastAdmin => true,
        }
    }

    #[test]
    fn every_kind_maps_to_its_code_and_status() {
        for (kind, reason, status) in EXPECTED {
            assert!(listed(kind));
            assert_eq!(reason_for(kind), reason, "{kind:?}");
            assert_eq!(reason_for(kind).http_status(), status, "{kind:?}");
        }
        let mut kinds: Vec<String> = EXPECTED.iter().map(|e| format!("{:?}", e.0)).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), EXPECTED.len(), "each kind once");
    }

    #[test]
    fn only_faults_of_the_store_itself_are_5xx() {
        for (kind, _, _) in EXPECTED {
            let server_side = matches!(kind, ErrorKind::Unavailable | ErrorKind::Corrupt);
            assert_eq!(
                reason_for(kind).http_status() >= 500,
                server_side,
                "{kind:?}"
            );
        }
    }
}
