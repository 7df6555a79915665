//! Redemption rules: when may an executor exchange a handle or credential for material.
//!
//! The core decides; [`check`] answers with a [`MaterialGrant`], and the store's material read
//! takes that grant by value. As with [`AccessGrant`](crate::AccessGrant) and `issue`, a host
//! that skips the checks has no grant, so it cannot read material: the mistake does not compile.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::diagnostics::{Problem, Subject};
use crate::ids::{SecretName, TenantId};
use crate::keys::ServiceKeys;
use crate::policy::Policy;
use crate::purpose::Purpose;
use crate::reason::ReasonCode;
use crate::redacted::{Redacted, ref_fields};
use crate::refs::{self, OpenedGrant, RefKind};
use crate::refusal::Refusal;
use crate::request::MAX_REF_LEN;
use crate::state::{SecretSnapshot, VersionState};

/// A redemption request as received. Its `Debug` form hides the ref.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "fields are the wire contract's, documented in DESIGN.md"
)]
pub struct RawRedeemRequest {
    pub tenant_id: Option<String>,
    pub secret_handle: Option<String>,
    pub ephemeral_credential_ref: Option<String>,
}

/// A validated redemption request. Its `Debug` form hides the ref.
#[derive(Clone, PartialEq, Eq)]
pub struct RedeemRequest {
    /// The tenant the ref must belong to.
    pub tenant_id: TenantId,
    /// What kind of ref is presented.
    pub kind: RefKind,
    /// The ref's text.
    pub text: String,
}

impl fmt::Debug for RawRedeemRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("RawRedeemRequest");
        out.field("tenant_id", &self.tenant_id);
        ref_fields(
            &mut out,
            &self.secret_handle,
            &self.ephemeral_credential_ref,
        )
        .finish()
    }
}

impl fmt::Debug for RedeemRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedeemRequest")
            .field("tenant_id", &self.tenant_id)
            .field("kind", &self.kind)
            .field("text", &Redacted)
            .finish()
    }
}

fn schema(subject: Subject, problem: Problem) -> Refusal {
    Refusal::new(ReasonCode::InputSchemaInvalid, subject, problem)
}

impl TryFrom<RawRedeemRequest> for RedeemRequest {
    type Error = Refusal;

    fn try_from(raw: RawRedeemRequest) -> Result<Self, Refusal> {
        let tenant_id = match raw.tenant_id {
            None => {
                return Err(Refusal::new(
                    ReasonCode::UpstreamInputMissing,
                    Subject::TenantId,
                    Problem::Missing,
                ));
            }
            Some(t) => TenantId::try_from(t).map_err(|p| schema(Subject::TenantId, p))?,
        };
        let (kind, text) = match (raw.secret_handle, raw.ephemeral_credential_ref) {
            (Some(h), None) => (RefKind::Handle, h),
            (None, Some(c)) => (RefKind::Credential, c),
            (None, None) => {
                return Err(Refusal::new(
                    ReasonCode::UpstreamInputMissing,
                    Subject::Handle,
                    Problem::Missing,
                ));
            }
            (Some(_), Some(_)) => return Err(schema(Subject::Handle, Problem::BadShape)),
        };
        if text.len() > MAX_REF_LEN {
            return Err(schema(Subject::Handle, Problem::TooLong));
        }
        Ok(Self {
            tenant_id,
            kind,
            text,
        })
    }
}

impl RedeemRequest {
    /// Parses and validates a JSON body without ever echoing it.
    pub fn from_json(body: &[u8]) -> Result<Self, Refusal> {
        let raw: RawRedeemRequest =
            serde_json::from_slice(body).map_err(|_| schema(Subject::Body, Problem::Malformed))?;
        Self::try_from(raw)
    }

    /// Opens the presented ref under the request's tenant (`KMS_HANDLE_INVALID` if it does not).
    pub fn open(&self, keys: &ServiceKeys) -> Result<OpenedGrant, Refusal> {
        refs::open_grant(keys, self.kind, &self.tenant_id, &self.text).map_err(|_| {
            Refusal::new(
                ReasonCode::HandleInvalid,
                subject(self.kind),
                Problem::Invalid,
            )
        })
    }
}

fn subject(kind: RefKind) -> Subject {
    match kind {
        RefKind::Credential => Subject::Credential,
        _ => Subject::Handle,
    }
}

/// Proof that redemption's checks allowed one version of one secret to be read. Only [`check`]
/// makes one; the store's material read consumes it, so one check allows one read.
///
/// It has private fields and is neither `Clone` nor constructible outside the core:
///
/// ```compile_fail
/// use selene_kms_core::{MaterialGrant, SecretName, TenantId};
/// let grant = MaterialGrant {
///     tenant: TenantId::try_from("acme").unwrap(),
///     secret_name: SecretName::try_from("db/password").unwrap(),
///     version: 1,
/// };
/// ```
///
/// ```compile_fail
/// fn twice(grant: &selene_kms_core::MaterialGrant) -> selene_kms_core::MaterialGrant {
///     grant.clone()
/// }
/// ```
pub struct MaterialGrant {
    tenant: TenantId,
    secret_name: SecretName,
    version: u64,
    purpose: Purpose,
}

impl MaterialGrant {
    /// A grant of one version; only the core's checks call it.
    pub(crate) fn new(
        tenant: TenantId,
        secret_name: SecretName,
        version: u64,
        purpose: Purpose,
    ) -> Self {
        Self {
            tenant,
            secret_name,
            version,
            purpose,
        }
    }

    /// The tenant whose material may be read.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The secret whose material may be read.
    pub fn secret_name(&self) -> &SecretName {
        &self.secret_name
    }

    /// The one version that may be read.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The secret's purpose, as the snapshot the grant was checked against says: the store
    /// opens material only under the purpose it was sealed for, so a purpose changed in the
    /// database opens nothing.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }
}

/// Checks an opened ref against the secret's state, its own revocation and the request time; if
/// redemption is allowed, grants the read of the version the ref is bound to. A key's material
/// never leaves: its refs are refused with `KMS_PURPOSE_MISMATCH`.
///
/// `secret` and `ref_revoked` are the host's reads for the ref's tenant, secret and id.
pub fn check(
    opened: &OpenedGrant,
    policy: Option<&Policy>,
    secret: Option<&SecretSnapshot>,
    ref_revoked: bool,
    now_ms: u64,
) -> Result<MaterialGrant, Refusal> {
    let secret = usable(opened, policy, secret, ref_revoked, now_ms)?;
    if secret.purpose.is_key() {
        return Err(purpose_mismatch());
    }
    let missing = (ReasonCode::HandleInvalid, subject(opened.kind));
    grant_version(opened, secret, opened.claims.version, missing)
}

/// A secret used for what its purpose does not allow.
pub(crate) fn purpose_mismatch() -> Refusal {
    Refusal::new(
        ReasonCode::PurposeMismatch,
        Subject::Purpose,
        Problem::Mismatch,
    )
}

/// The secret an opened ref may still be used on: its tenant is enabled, the secret exists, and
/// the ref is neither revoked (by itself or by the tenant's brake) nor outside its lifetime.
pub(crate) fn usable<'s>(
    opened: &OpenedGrant,
    policy: Option<&Policy>,
    secret: Option<&'s SecretSnapshot>,
    ref_revoked: bool,
    now_ms: u64,
) -> Result<&'s SecretSnapshot, Refusal> {
    let subject = subject(opened.kind);
    // A disabled tenant (or one with no policy) stops every use, redemption included.
    let policy = policy
        .filter(|p| p.enabled())
        .ok_or_else(|| Refusal::new(ReasonCode::Disabled, Subject::Policy, Problem::Disabled))?;
    let secret = secret.ok_or_else(|| {
        Refusal::new(
            ReasonCode::SecretNotFound,
            Subject::Secret,
            Problem::NotFound,
        )
    })?;
    if ref_revoked {
        return Err(Refusal::new(ReasonCode::Revoked, subject, Problem::Revoked));
    }
    let claims = &opened.claims;
    if policy
        .not_before_ms()
        .is_some_and(|brake| claims.issued_at_ms < brake)
    {
        return Err(Refusal::new(ReasonCode::Revoked, subject, Problem::Revoked));
    }
    if now_ms < claims.issued_at_ms || now_ms > claims.expires_at_ms {
        return Err(Refusal::new(ReasonCode::Expired, subject, Problem::Expired));
    }
    Ok(secret)
}

/// Grants the read of `version` of the opened ref's secret if that version is active. A revoked
/// version is refused; one the secret does not have is refused as `missing` names, invalid.
pub(crate) fn grant_version(
    opened: &OpenedGrant,
    secret: &SecretSnapshot,
    version: u64,
    missing: (ReasonCode, Subject),
) -> Result<MaterialGrant, Refusal> {
    match secret.version_state(version) {
        Some(VersionState::Active) => Ok(MaterialGrant::new(
            opened.tenant.clone(),
            opened.claims.secret_name.clone(),
            version,
            secret.purpose,
        )),
        Some(VersionState::Revoked) => Err(Refusal::new(
            ReasonCode::Revoked,
            Subject::Version,
            Problem::Revoked,
        )),
        None => Err(Refusal::new(missing.0, missing.1, Problem::Invalid)),
    }
}
