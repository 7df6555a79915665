//! The wire contract (v1): the raw request as the OS sends it and the `kms_material_bundle`.
//!
//! Raw types are what the caller typed; [`crate::request::KmsRequest`] is what the core acts on.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::diagnostics::Diagnostic;
use crate::reason::ReasonCode;
use crate::redacted::ref_fields;

/// The four operations of the seed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Operation {
    /// An opaque, redeemable handle to the current version.
    GetHandle,
    /// An ephemeral credential derived from the current version, with a bounded TTL.
    IssueEphemeral,
    /// A new version; returns its number only.
    Rotate,
    /// Revokes a version, all versions, a handle or a credential.
    Revoke,
}

impl Operation {
    /// The wire name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::GetHandle => "GET_HANDLE",
            Self::IssueEphemeral => "ISSUE_EPHEMERAL",
            Self::Rotate => "ROTATE",
            Self::Revoke => "REVOKE",
        }
    }

    /// Whether the operation changes state and so is simulation-gated.
    pub const fn is_mutation(self) -> bool {
        matches!(self, Self::Rotate | Self::Revoke)
    }

    /// All operations, in wire order.
    pub const ALL: [Self; 4] = [
        Self::GetHandle,
        Self::IssueEphemeral,
        Self::Rotate,
        Self::Revoke,
    ];
}

/// A KMS request as received. Every field is optional here so that a missing one is reported as
/// `PH1_KMS_UPSTREAM_INPUT_MISSING` rather than as a parse failure.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "fields are the wire contract's, documented in DESIGN.md"
)]
pub struct RawKmsRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requester_engine_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requester_user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_ttl_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoke_target: Option<RawRevokeTarget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_diagnostics: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requester_allowlist: Option<Vec<String>>,
}

/// `revoke_target` as received: exactly one field must be set.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "fields are the wire contract's, documented in DESIGN.md"
)]
pub struct RawRevokeTarget {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_versions: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_handle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral_credential_ref: Option<String>,
}

impl fmt::Debug for RawRevokeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("RawRevokeTarget");
        out.field("version", &self.version)
            .field("all_versions", &self.all_versions);
        ref_fields(
            &mut out,
            &self.secret_handle,
            &self.ephemeral_credential_ref,
        )
        .finish()
    }
}

/// `OK` or `FAIL`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ValidationStatus {
    /// The request was allowed and its outputs may be forwarded.
    Ok,
    /// Refused: the OS fails closed and forwards nothing.
    Fail,
}

/// What a revocation revoked.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TombstoneTarget {
    /// One version.
    Version,
    /// Every version of the secret.
    AllVersions,
    /// One handle.
    Handle,
    /// One ephemeral credential.
    EphemeralCredential,
}

impl TombstoneTarget {
    /// The wire name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Version => "VERSION",
            Self::AllVersions => "ALL_VERSIONS",
            Self::Handle => "HANDLE",
            Self::EphemeralCredential => "EPHEMERAL_CREDENTIAL",
        }
    }
}

/// The revocation tombstone returned by REVOKE.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// Opaque id of this revocation.
    pub tombstone_ref: String,
    /// What was revoked.
    pub target: TombstoneTarget,
    /// The version revoked, for a version target; the handle's or credential's version otherwise.
    pub version: Option<u64>,
}

/// The `kms_material_bundle`: the engine's only answer to a KMS request. Its `Debug` form
/// hides the handle and the credential ref, which redeem material.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "fields are the wire contract's, documented in DESIGN.md"
)]
pub struct MaterialBundle {
    pub validation_status: ValidationStatus,
    pub reason_code: ReasonCode,
    /// `subject:problem` codes from a fixed vocabulary.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub diagnostics: Vec<Diagnostic>,
    pub operation: Option<Operation>,
    pub secret_ref: Option<String>,
    pub secret_handle: Option<String>,
    pub ephemeral_credential_ref: Option<String>,
    pub expires_at_ms: Option<u64>,
    pub rotated_version: Option<u64>,
    pub revoked: Option<Tombstone>,
    pub dry_run: bool,
    pub simulation_id: Option<String>,
    pub audit_seq: Option<u64>,
}

impl fmt::Debug for MaterialBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("MaterialBundle");
        out.field("validation_status", &self.validation_status)
            .field("reason_code", &self.reason_code)
            .field("diagnostics", &self.diagnostics)
            .field("operation", &self.operation)
            .field("secret_ref", &self.secret_ref);
        ref_fields(
            &mut out,
            &self.secret_handle,
            &self.ephemeral_credential_ref,
        )
        .field("expires_at_ms", &self.expires_at_ms)
        .field("rotated_version", &self.rotated_version)
        .field("revoked", &self.revoked)
        .field("dry_run", &self.dry_run)
        .field("simulation_id", &self.simulation_id)
        .field("audit_seq", &self.audit_seq)
        .finish()
    }
}

impl MaterialBundle {
    /// A refusal: every material field null, the operation and dry-run flag echoed.
    pub fn refusal(
        reason_code: ReasonCode,
        diagnostics: Vec<Diagnostic>,
        operation: Option<Operation>,
        dry_run: bool,
    ) -> Self {
        Self {
            validation_status: ValidationStatus::Fail,
            reason_code,
            diagnostics,
            operation,
            secret_ref: None,
            secret_handle: None,
            ephemeral_credential_ref: None,
            expires_at_ms: None,
            rotated_version: None,
            revoked: None,
            dry_run,
            simulation_id: None,
            audit_seq: None,
        }
    }

    /// Whether the OS may forward this bundle's outputs.
    pub fn is_ok(&self) -> bool {
        self.validation_status == ValidationStatus::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_that_a_bundle_carries_refs_but_not_the_refs() {
        let mut bundle =
            MaterialBundle::refusal(ReasonCode::OkMaterialIssue, Vec::new(), None, false);
        bundle.secret_handle = Some("ksh1_handle-bytes".to_owned());
        bundle.ephemeral_credential_ref = Some("kec1_credential-bytes".to_owned());
        let shown = format!("{bundle:?}");
        assert!(!shown.contains("handle-bytes"), "{shown}");
        assert!(!shown.contains("credential-bytes"), "{shown}");
        assert!(shown.contains("secret_handle: Some(<redacted>)"), "{shown}");
        assert!(shown.contains("OkMaterialIssue"), "{shown}");
        let target = RawRevokeTarget {
            secret_handle: Some("ksh1_handle-bytes".to_owned()),
            ..RawRevokeTarget::default()
        };
        let shown = format!("{target:?}");
        assert!(!shown.contains("handle-bytes"), "{shown}");
        assert!(shown.contains("secret_handle: Some(<redacted>)"), "{shown}");
    }
}
