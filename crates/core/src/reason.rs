//! The reason-code registry: every code once, with its HTTP status and one-line meaning.
//!
//! Hosts map a refusal to a status with [`ReasonCode::http_status`]; nothing anywhere decides a
//! status by looking at message text.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Every reason code the engine can answer with.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
#[allow(missing_docs, reason = "each variant is documented once, in REGISTRY")]
pub enum ReasonCode {
    #[serde(rename = "PH1_KMS_OK_ACCESS_EVALUATE")]
    OkAccessEvaluate,
    #[serde(rename = "PH1_KMS_OK_MATERIAL_ISSUE")]
    OkMaterialIssue,
    #[serde(rename = "PH1_KMS_INPUT_SCHEMA_INVALID")]
    InputSchemaInvalid,
    #[serde(rename = "PH1_KMS_UPSTREAM_INPUT_MISSING")]
    UpstreamInputMissing,
    #[serde(rename = "KMS_NOT_AUTHORIZED")]
    NotAuthorized,
    #[serde(rename = "KMS_SECRET_NOT_FOUND")]
    SecretNotFound,
    #[serde(rename = "KMS_TTL_OUT_OF_BOUNDS")]
    TtlOutOfBounds,
    #[serde(rename = "KMS_ROTATION_FAILED")]
    RotationFailed,
    #[serde(rename = "PH1_KMS_VALIDATION_FAILED")]
    ValidationFailed,
    #[serde(rename = "PH1_KMS_INTERNAL_PIPELINE_ERROR")]
    InternalPipelineError,
    #[serde(rename = "KMS_REVOKED")]
    Revoked,
    #[serde(rename = "KMS_EXPIRED")]
    Expired,
    #[serde(rename = "KMS_HANDLE_INVALID")]
    HandleInvalid,
    #[serde(rename = "KMS_VERSION_CONFLICT")]
    VersionConflict,
    #[serde(rename = "KMS_IDEMPOTENCY_CONFLICT")]
    IdempotencyConflict,
    #[serde(rename = "KMS_IDEMPOTENCY_IN_FLIGHT")]
    IdempotencyInFlight,
    #[serde(rename = "KMS_SIMULATION_REQUIRED")]
    SimulationRequired,
    #[serde(rename = "KMS_SIMULATION_STALE")]
    SimulationStale,
    #[serde(rename = "KMS_UNAUTHENTICATED")]
    Unauthenticated,
    #[serde(rename = "KMS_FORBIDDEN_ROLE")]
    ForbiddenRole,
    #[serde(rename = "KMS_DISABLED")]
    Disabled,
    #[serde(rename = "KMS_AUDIT_UNAVAILABLE")]
    AuditUnavailable,
    #[serde(rename = "KMS_PAYLOAD_TOO_LARGE")]
    PayloadTooLarge,
    #[serde(rename = "KMS_UNSUPPORTED_MEDIA_TYPE")]
    UnsupportedMediaType,
    #[serde(rename = "KMS_ROUTE_NOT_FOUND")]
    RouteNotFound,
    #[serde(rename = "KMS_METHOD_NOT_ALLOWED")]
    MethodNotAllowed,
    #[serde(rename = "KMS_SECRET_EXISTS")]
    SecretExists,
    #[serde(rename = "KMS_POLICY_NOT_FOUND")]
    PolicyNotFound,
    #[serde(rename = "KMS_FORBIDDEN_TENANT")]
    ForbiddenTenant,
    #[serde(rename = "KMS_LAST_ADMIN")]
    LastAdmin,
    #[serde(rename = "KMS_PRINCIPAL_EXISTS")]
    PrincipalExists,
    #[serde(rename = "KMS_PRINCIPAL_NOT_FOUND")]
    PrincipalNotFound,
    #[serde(rename = "KMS_PURPOSE_MISMATCH")]
    PurposeMismatch,
}

/// One registry entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReasonInfo {
    /// The code.
    pub code: ReasonCode,
    /// Its wire name.
    pub name: &'static str,
    /// The HTTP status a host answers with.
    pub http_status: u16,
    /// What it means, in one line.
    pub meaning: &'static str,
}

macro_rules! registry {
    ($($code:ident, $name:literal, $status:literal, $meaning:literal;)*) => {
        /// The registry, one entry per code, in the enum's order.
        pub const REGISTRY: &[ReasonInfo] = &[$(*ReasonCode::$code.info(),)*];

        impl ReasonCode {
            /// This code's registry entry; the match makes the mapping total.
            pub const fn info(self) -> &'static ReasonInfo {
                match self {
                    $(ReasonCode::$code => &ReasonInfo {
                        code: ReasonCode::$code,
                        name: $name,
                        http_status: $status,
                        meaning: $meaning,
                    },)*
                }
            }
        }
    };
}

registry! {
    OkAccessEvaluate, "PH1_KMS_OK_ACCESS_EVALUATE", 200, "Access evaluated and allowed (dry runs of GET_HANDLE and ISSUE_EPHEMERAL).";
    OkMaterialIssue, "PH1_KMS_OK_MATERIAL_ISSUE", 200, "Material issued: a handle, a credential, a rotation or a revocation.";
    InputSchemaInvalid, "PH1_KMS_INPUT_SCHEMA_INVALID", 400, "The request is not valid JSON of the contract's shape.";
    UpstreamInputMissing, "PH1_KMS_UPSTREAM_INPUT_MISSING", 400, "A field the OS must supply is missing.";
    NotAuthorized, "KMS_NOT_AUTHORIZED", 403, "The requester may not do this (same answer whether or not the secret exists).";
    SecretNotFound, "KMS_SECRET_NOT_FOUND", 404, "No such secret in this tenant.";
    TtlOutOfBounds, "KMS_TTL_OUT_OF_BOUNDS", 422, "The requested TTL lies outside the secret's bounds.";
    RotationFailed, "KMS_ROTATION_FAILED", 422, "The rotation cannot proceed (imported secret with no staged material).";
    ValidationFailed, "PH1_KMS_VALIDATION_FAILED", 422, "The request is well-formed but does not fit the secret's state.";
    InternalPipelineError, "PH1_KMS_INTERNAL_PIPELINE_ERROR", 500, "An internal error; nothing was issued or changed.";
    Revoked, "KMS_REVOKED", 410, "The handle, credential or version was revoked.";
    Expired, "KMS_EXPIRED", 410, "The handle or credential has expired.";
    HandleInvalid, "KMS_HANDLE_INVALID", 400, "The opaque ref does not open: altered, truncated or from another tenant or store.";
    VersionConflict, "KMS_VERSION_CONFLICT", 409, "previous_version does not match the current version.";
    IdempotencyConflict, "KMS_IDEMPOTENCY_CONFLICT", 422, "The idempotency key was already used for a different request.";
    IdempotencyInFlight, "KMS_IDEMPOTENCY_IN_FLIGHT", 409, "A request with this idempotency key is still being committed.";
    SimulationRequired, "KMS_SIMULATION_REQUIRED", 409, "A ROTATE or REVOKE commit needs the simulation_id of its dry run.";
    SimulationStale, "KMS_SIMULATION_STALE", 409, "The simulation_id was made for other fields or an older state.";
    Unauthenticated, "KMS_UNAUTHENTICATED", 401, "No credential, or one that is unknown, expired or revoked.";
    ForbiddenRole, "KMS_FORBIDDEN_ROLE", 403, "The caller's role may not use this route.";
    Disabled, "KMS_DISABLED", 403, "The tenant has no policy or its policy is disabled.";
    AuditUnavailable, "KMS_AUDIT_UNAVAILABLE", 503, "The audit record could not be written; nothing changed.";
    PayloadTooLarge, "KMS_PAYLOAD_TOO_LARGE", 413, "The request body is larger than allowed.";
    UnsupportedMediaType, "KMS_UNSUPPORTED_MEDIA_TYPE", 415, "The request body is not application/json.";
    RouteNotFound, "KMS_ROUTE_NOT_FOUND", 404, "No such route.";
    MethodNotAllowed, "KMS_METHOD_NOT_ALLOWED", 405, "The route does not take this method.";
    SecretExists, "KMS_SECRET_EXISTS", 409, "A secret of that name already exists in this tenant.";
    PolicyNotFound, "KMS_POLICY_NOT_FOUND", 404, "The tenant has no policy yet.";
    ForbiddenTenant, "KMS_FORBIDDEN_TENANT", 403, "The caller's principal is not scoped to this tenant (same answer whether or not it exists).";
    LastAdmin, "KMS_LAST_ADMIN", 409, "The last live admin principal for every tenant cannot be revoked.";
    PrincipalExists, "KMS_PRINCIPAL_EXISTS", 409, "A principal with that name or SPIFFE id already exists.";
    PrincipalNotFound, "KMS_PRINCIPAL_NOT_FOUND", 404, "No such principal, or no such token of it.";
    PurposeMismatch, "KMS_PURPOSE_MISMATCH", 422, "The secret's purpose does not allow this use: a key is never redeemed, a credential never used for crypto.";
}

impl ReasonCode {
    /// The wire name.
    pub const fn name(self) -> &'static str {
        self.info().name
    }

    /// The HTTP status a host answers with.
    pub const fn http_status(self) -> u16 {
        self.info().http_status
    }

    /// Whether this code means the request succeeded.
    pub const fn is_ok(self) -> bool {
        matches!(self, Self::OkAccessEvaluate | Self::OkMaterialIssue)
    }

    /// Looks a code up by its wire name.
    pub fn from_name(name: &str) -> Option<Self> {
        REGISTRY.iter().find(|i| i.name == name).map(|i| i.code)
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_total_unique_and_matches_serde() {
        for (i, entry) in REGISTRY.iter().enumerate() {
            assert_eq!(entry.code.info(), entry, "lookup of {}", entry.name);
            assert_eq!(entry.code as usize, i, "registry order follows the enum");
            let json = serde_json::to_string(&entry.code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", entry.name));
            assert_eq!(ReasonCode::from_name(entry.name), Some(entry.code));
            assert!(!entry.meaning.is_empty());
        }
        let mut names: Vec<_> = REGISTRY.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
    }

    #[test]
    fn statuses_follow_the_design() {
        assert_eq!(ReasonCode::InputSchemaInvalid.http_status(), 400);
        assert_eq!(ReasonCode::Unauthenticated.http_status(), 401);
        assert_eq!(ReasonCode::NotAuthorized.http_status(), 403);
        assert_eq!(ReasonCode::Disabled.http_status(), 403);
        assert_eq!(ReasonCode::SecretNotFound.http_status(), 404);
        assert_eq!(ReasonCode::SimulationStale.http_status(), 409);
        assert_eq!(ReasonCode::Revoked.http_status(), 410);
        assert_eq!(ReasonCode::TtlOutOfBounds.http_status(), 422);
        assert_eq!(ReasonCode::AuditUnavailable.http_status(), 503);
    }

    /// The registry documented in REASON_CODES.md is this one, code for code.
    #[test]
    fn reason_codes_doc_matches_the_registry() {
        let doc = include_str!("../../../REASON_CODES.md");
        for entry in REGISTRY {
            let row = format!(
                "| `{}` | {} | {} |",
                entry.name, entry.http_status, entry.meaning
            );
            assert!(doc.contains(&row), "REASON_CODES.md lacks the row {row}");
        }
    }
}
