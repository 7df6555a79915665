//! Bounded diagnostics from a fixed vocabulary.
//!
//! A diagnostic names a subject (a request field or a check) and a problem, both closed enums, so
//! no diagnostic can carry a request value: a secret pasted into `secret_name` never comes back.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Hard cap on diagnostics in one bundle (the seed's engine contract).
pub const MAX_DIAGNOSTICS: usize = 16;
/// Diagnostics returned when the request does not set `max_diagnostics`.
pub const DEFAULT_MAX_DIAGNOSTICS: usize = 8;

/// What a diagnostic is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(
    missing_docs,
    reason = "each variant is the wire field or check of the same name"
)]
pub enum Subject {
    Body,
    CorrelationId,
    TurnId,
    IdempotencyKey,
    TenantId,
    Operation,
    SecretName,
    RequesterEngineId,
    RequesterUserId,
    RequestedTtlMs,
    PreviousVersion,
    RevokeTarget,
    SimulationId,
    DryRun,
    MaxDiagnostics,
    RequesterAllowlist,
    Policy,
    Secret,
    Version,
    Handle,
    Credential,
    Store,
    Name,
    Role,
    Tenants,
    TtlMs,
    SpiffeId,
    PrincipalId,
    TokenId,
    Purpose,
    Material,
    MinDecryptionVersion,
    DataB64,
    SignatureB64,
    MacB64,
    PlaintextB64,
    AadB64,
    Ciphertext,
    PublicKey,
    ReasonCode,
}

/// What is wrong with the subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// A required value is absent.
    Missing,
    /// The value is empty.
    Empty,
    /// The value is longer than allowed.
    TooLong,
    /// The value has a character outside its alphabet.
    BadCharacter,
    /// The value's structure is wrong (empty path segment, `..`, wrong shape of object).
    BadShape,
    /// The value is not the JSON type expected, or the body is not JSON.
    Malformed,
    /// The field is not part of the contract.
    Unknown,
    /// The field does not apply to this operation.
    NotAllowedForOperation,
    /// A number lies outside its range.
    OutOfRange,
    /// A list has more entries than allowed.
    TooMany,
    /// No policy rule allows this.
    NoMatchingRule,
    /// The operation needs an admin user and none was given or the user is not an admin.
    AdminRequired,
    /// The engine is outside the OS-supplied allowlist.
    NotInAllowlist,
    /// The tenant has no policy or it is disabled.
    Disabled,
    /// Below the lower bound.
    BelowMin,
    /// Above the upper bound.
    AboveMax,
    /// The thing was revoked.
    Revoked,
    /// The thing expired.
    Expired,
    /// The state moved since the simulation.
    Stale,
    /// A compare-and-set value does not match.
    Mismatch,
    /// No material was staged for an imported secret.
    NotStaged,
    /// The thing does not exist.
    NotFound,
    /// A ref failed to open.
    Invalid,
    /// The store or audit chain cannot be written.
    Unavailable,
    /// The idempotency key was used for a different request.
    Reused,
}

/// One diagnostic: `subject:problem` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    /// What the diagnostic is about.
    pub subject: Subject,
    /// What is wrong with it.
    pub problem: Problem,
}

impl Diagnostic {
    /// A diagnostic about `subject`.
    pub const fn new(subject: Subject, problem: Problem) -> Self {
        Self { subject, problem }
    }

    fn parts(self) -> (&'static str, &'static str) {
        (subject_name(self.subject), problem_name(self.problem))
    }
}

fn subject_name(s: Subject) -> &'static str {
    match s {
        Subject::Body => "body",
        Subject::CorrelationId => "correlation_id",
        Subject::TurnId => "turn_id",
        Subject::IdempotencyKey => "idempotency_key",
        Subject::TenantId => "tenant_id",
        Subject::Operation => "operation",
        Subject::SecretName => "secret_name",
        Subject::RequesterEngineId => "requester_engine_id",
        Subject::RequesterUserId => "requester_user_id",
        Subject::RequestedTtlMs => "requested_ttl_ms",
        Subject::PreviousVersion => "previous_version",
        Subject::RevokeTarget => "revoke_target",
        Subject::SimulationId => "simulation_id",
        Subject::DryRun => "dry_run",
        Subject::MaxDiagnostics => "max_diagnostics",
        Subject::RequesterAllowlist => "requester_allowlist",
        Subject::Policy => "policy",
        Subject::Secret => "secret",
        Subject::Version => "version",
        Subject::Handle => "handle",
        Subject::Credential => "credential",
        Subject::Store => "store",
        Subject::Name => "name",
        Subject::Role => "role",
        Subject::Tenants => "tenants",
        Subject::TtlMs => "ttl_ms",
        Subject::SpiffeId => "spiffe_id",
        Subject::PrincipalId => "principal_id",
        Subject::TokenId => "token_id",
        Subject::Purpose => "purpose",
        Subject::Material => "material",
        Subject::MinDecryptionVersion => "min_decryption_version",
        Subject::DataB64 => "data_b64",
        Subject::SignatureB64 => "signature_b64",
        Subject::MacB64 => "mac_b64",
        Subject::PlaintextB64 => "plaintext_b64",
        Subject::AadB64 => "aad_b64",
        Subject::Ciphertext => "ciphertext",
        Subject::PublicKey => "public_key",
        Subject::ReasonCode => "reason_code",
    }
}

fn problem_name(p: Problem) -> &'static str {
    match p {
        Problem::Missing => "missing",
        Problem::Empty => "empty",
        Problem::TooLong => "too_long",
        Problem::BadCharacter => "bad_character",
        Problem::BadShape => "bad_shape",
        Problem::Malformed => "malformed",
        Problem::Unknown => "unknown",
        Problem::NotAllowedForOperation => "not_allowed_for_operation",
        Problem::OutOfRange => "out_of_range",
        Problem::TooMany => "too_many",
        Problem::NoMatchingRule => "no_matching_rule",
        Problem::AdminRequired => "admin_required",
        Problem::NotInAllowlist => "not_in_allowlist",
        Problem::Disabled => "disabled",
        Problem::BelowMin => "below_min",
        Problem::AboveMax => "above_max",
        Problem::Revoked => "revoked",
        Problem::Expired => "expired",
        Problem::Stale => "stale",
        Problem::Mismatch => "mismatch",
        Problem::NotStaged => "not_staged",
        Problem::NotFound => "not_found",
        Problem::Invalid => "invalid",
        Problem::Unavailable => "unavailable",
        Problem::Reused => "reused",
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, p) = self.parts();
        write!(f, "{s}:{p}")
    }
}

impl Serialize for Diagnostic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Diagnostic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        let (s, p) = text
            .split_once(':')
            .ok_or_else(|| serde::de::Error::custom("diagnostic is not subject:problem"))?;
        let subject = Subject::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(s))?;
        let problem = Problem::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(p))?;
        Ok(Self { subject, problem })
    }
}

/// Keeps at most `limit` diagnostics (itself capped at [`MAX_DIAGNOSTICS`]), first ones first.
pub fn bound(mut diagnostics: Vec<Diagnostic>, limit: usize) -> Vec<Diagnostic> {
    diagnostics.truncate(limit.min(MAX_DIAGNOSTICS));
    diagnostics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_round_trip_through_their_wire_form() {
        let d = Diagnostic::new(Subject::SecretName, Problem::BadCharacter);
        let json = serde_json::to_string(&d).unwrap_or_default();
        assert_eq!(json, "\"secret_name:bad_character\"");
        let back: Diagnostic = serde_json::from_str(&json)
            .unwrap_or(Diagnostic::new(Subject::Body, Problem::Malformed));
        assert_eq!(back, d);
    }

    #[test]
    fn bound_caps_at_the_contract_maximum() {
        let many = vec![Diagnostic::new(Subject::Body, Problem::Malformed); 40];
        assert_eq!(bound(many.clone(), 100).len(), MAX_DIAGNOSTICS);
        assert_eq!(bound(many, 3).len(), 3);
    }
}
