//! `KMS_MATERIAL_ISSUE`: turns an [`AccessGrant`] and a state snapshot into a bundle and the state
//! change a commit would make, or a refusal.
//!
//! Order (DESIGN.md, steps 6–8): existence, the simulation gate for ROTATE/REVOKE commits, then
//! the operation's own preconditions. Dry runs show what the commit would give, with a
//! `simulation_id`, but never a usable handle or credential; a dry run of GET_HANDLE or
//! ISSUE_EPHEMERAL answers `PH1_KMS_OK_ACCESS_EVALUATE`, since it issues nothing.
//!
//! Only [`issue`] seals handles and credentials and computes simulation ids; neither is reachable
//! from outside the core, so a commit cannot present an id that no dry run produced:
//!
//! ```compile_fail
//! use selene_kms_core::simulation::simulation_id;
//! ```

use crate::diagnostics::{Problem, Subject};
use crate::ids::TenantId;
use crate::keys::ServiceKeys;
use crate::policy::AccessGrant;
use crate::reason::ReasonCode;
use crate::refs::{self, GrantClaims, RefKind};
use crate::refusal::Refusal;
use crate::request::{KmsRequest, MAX_VERSION, RevokeTarget};
use crate::simulation;
use crate::state::{SecretKind, SecretSnapshot, StateChange, VersionState};
use crate::wire::{MaterialBundle, Operation, Tombstone, TombstoneTarget, ValidationStatus};

/// What a successful issue produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The bundle to return (its `audit_seq` is set by the host after commit).
    pub bundle: MaterialBundle,
    /// The change to commit with the audit record; [`StateChange::None`] for dry runs.
    pub change: StateChange,
}

fn ok_bundle(request: &KmsRequest, secret_ref: String) -> MaterialBundle {
    MaterialBundle {
        validation_status: ValidationStatus::Ok,
        reason_code: ReasonCode::OkMaterialIssue,
        diagnostics: Vec::new(),
        operation: Some(request.operation),
        secret_ref: Some(secret_ref),
        secret_handle: None,
        ephemeral_credential_ref: None,
        expires_at_ms: None,
        rotated_version: None,
        revoked: None,
        dry_run: request.dry_run,
        simulation_id: None,
        audit_seq: None,
    }
}

fn refuse(reason: ReasonCode, subject: Subject, problem: Problem) -> Refusal {
    Refusal::new(reason, subject, problem)
}

/// The current version, if it is usable.
fn usable_current(secret: &SecretSnapshot) -> Result<u64, Refusal> {
    let current = secret.current_version();
    match secret.version_state(current) {
        Some(VersionState::Active) => Ok(current),
        Some(VersionState::Revoked) => Err(refuse(
            ReasonCode::Revoked,
            Subject::Version,
            Problem::Revoked,
        )),
        None => Err(refuse(
            ReasonCode::SecretNotFound,
            Subject::Secret,
            Problem::NotFound,
        )),
    }
}

/// Simulation gate: a commit of a mutation must present the simulation id of the same fields at
/// the current state.
fn check_simulation(
    keys: &ServiceKeys,
    request: &KmsRequest,
    secret: &SecretSnapshot,
) -> Result<(), Refusal> {
    if request.dry_run || !request.operation.is_mutation() {
        return Ok(());
    }
    match &request.simulation_id {
        None => Err(refuse(
            ReasonCode::SimulationRequired,
            Subject::SimulationId,
            Problem::Missing,
        )),
        Some(id) if simulation::matches(keys, request, secret.state_version, id) => Ok(()),
        Some(_) => Err(refuse(
            ReasonCode::SimulationStale,
            Subject::SimulationId,
            Problem::Stale,
        )),
    }
}

/// `KMS_MATERIAL_ISSUE`.
pub fn issue(
    grant: AccessGrant<'_>,
    secret: Option<&SecretSnapshot>,
    keys: &ServiceKeys,
) -> Result<Issued, Refusal> {
    let request = grant.request();
    let now_ms = grant.now_ms();
    let ttl_ms = grant.ttl_ms();
    let secret = secret.ok_or_else(|| {
        refuse(
            ReasonCode::SecretNotFound,
            Subject::Secret,
            Problem::NotFound,
        )
    })?;
    check_simulation(keys, request, secret)?;
    let mut bundle = ok_bundle(request, grant.into_secret_ref());
    let change = match request.operation {
        Operation::GetHandle | Operation::IssueEphemeral => {
            if ttl_ms.is_some() && secret.purpose.is_key() {
                // A credential derived from a key would be a value that leaves: keys are used
                // through handles only.
                return Err(refuse(
                    ReasonCode::PurposeMismatch,
                    Subject::Purpose,
                    Problem::Mismatch,
                ));
            }
            let version = usable_current(secret)?;
            let (kind, lifetime) = match ttl_ms {
                Some(ttl) => (RefKind::Credential, ttl),
                None => (RefKind::Handle, secret.handle_ttl_ms),
            };
            let expires_at_ms = now_ms.saturating_add(lifetime);
            bundle.expires_at_ms = Some(expires_at_ms);
            if !request.dry_run {
                let claims = GrantClaims {
                    secret_name: request.secret_name.clone(),
                    version,
                    engine: request.requester.engine.clone(),
                    user: request.requester.user.clone(),
                    issued_at_ms: now_ms,
                    expires_at_ms,
                };
                let sealed = refs::seal_grant(
                    keys,
                    kind,
                    &request.tenant_id,
                    &request.idempotency_key,
                    &claims,
                );
                match kind {
                    RefKind::Credential => bundle.ephemeral_credential_ref = Some(sealed),
                    _ => bundle.secret_handle = Some(sealed),
                }
            }
            StateChange::None
        }
        Operation::Rotate => {
            let current = secret.current_version();
            if request.previous_version.is_some_and(|p| p != current) {
                return Err(refuse(
                    ReasonCode::VersionConflict,
                    Subject::PreviousVersion,
                    Problem::Mismatch,
                ));
            }
            let from_staged = secret.kind == SecretKind::Imported;
            if from_staged && !secret.staged {
                return Err(refuse(
                    ReasonCode::RotationFailed,
                    Subject::Secret,
                    Problem::NotStaged,
                ));
            }
            let new_version = current
                .checked_add(1)
                .filter(|v| *v <= MAX_VERSION)
                .ok_or_else(|| {
                    refuse(
                        ReasonCode::ValidationFailed,
                        Subject::Version,
                        Problem::OutOfRange,
                    )
                })?;
            bundle.rotated_version = Some(new_version);
            StateChange::Rotate {
                new_version,
                from_staged,
            }
        }
        Operation::Revoke => {
            let (tombstone, change) = revoke(keys, request, secret)?;
            bundle.revoked = Some(tombstone);
            change
        }
    };
    if request.dry_run {
        // A dry run of a read issues nothing: it reports the access evaluation (REASON_CODES.md).
        // A dry run of a mutation keeps the code its commit would give, as the plan it shows.
        if !request.operation.is_mutation() {
            bundle.reason_code = ReasonCode::OkAccessEvaluate;
        }
        bundle.simulation_id = Some(simulation::simulation_id(
            keys,
            request,
            secret.state_version,
        ));
        return Ok(Issued {
            bundle,
            change: StateChange::None,
        });
    }
    Ok(Issued { bundle, change })
}

fn revoke(
    keys: &ServiceKeys,
    request: &KmsRequest,
    secret: &SecretSnapshot,
) -> Result<(Tombstone, StateChange), Refusal> {
    let tenant = &request.tenant_id;
    let tombstone = |target, target_id: &str, version| Tombstone {
        tombstone_ref: refs::tombstone_ref(
            keys,
            tenant,
            &request.secret_name,
            target,
            target_id,
            secret.state_version,
        ),
        target,
        version,
    };
    let revoked = || refuse(ReasonCode::Revoked, Subject::RevokeTarget, Problem::Revoked);
    match &request.revoke_target {
        Some(RevokeTarget::Version(v)) => match secret.version_state(*v) {
            None => Err(refuse(
                ReasonCode::ValidationFailed,
                Subject::RevokeTarget,
                Problem::NotFound,
            )),
            Some(VersionState::Revoked) => Err(revoked()),
            Some(VersionState::Active) => Ok((
                tombstone(TombstoneTarget::Version, &v.to_string(), Some(*v)),
                StateChange::RevokeVersion(*v),
            )),
        },
        Some(RevokeTarget::AllVersions) => {
            if secret.versions.iter().all(|s| *s == VersionState::Revoked) {
                return Err(revoked());
            }
            Ok((
                tombstone(TombstoneTarget::AllVersions, "*", None),
                StateChange::RevokeAllVersions,
            ))
        }
        Some(RevokeTarget::Handle(text)) => {
            let opened = open_for(keys, tenant, request, RefKind::Handle, text)?;
            Ok((
                tombstone(
                    TombstoneTarget::Handle,
                    opened.id.as_str(),
                    Some(opened.claims.version),
                ),
                StateChange::RevokeHandle {
                    id: opened.id,
                    expires_at_ms: opened.claims.expires_at_ms,
                },
            ))
        }
        Some(RevokeTarget::Credential(text)) => {
            let opened = open_for(keys, tenant, request, RefKind::Credential, text)?;
            Ok((
                tombstone(
                    TombstoneTarget::EphemeralCredential,
                    opened.id.as_str(),
                    Some(opened.claims.version),
                ),
                StateChange::RevokeCredential {
                    id: opened.id,
                    expires_at_ms: opened.claims.expires_at_ms,
                },
            ))
        }
        // Validation guarantees a target on REVOKE; fail closed regardless.
        None => Err(refuse(
            ReasonCode::UpstreamInputMissing,
            Subject::RevokeTarget,
            Problem::Missing,
        )),
    }
}

/// Opens a handle or credential named in a REVOKE: it must be this tenant's and this secret's.
fn open_for(
    keys: &ServiceKeys,
    tenant: &TenantId,
    request: &KmsRequest,
    kind: RefKind,
    text: &str,
) -> Result<refs::OpenedGrant, Refusal> {
    let subject = match kind {
        RefKind::Credential => Subject::Credential,
        _ => Subject::Handle,
    };
    let invalid = || refuse(ReasonCode::HandleInvalid, subject, Problem::Invalid);
    let opened = refs::open_grant(keys, kind, tenant, text).map_err(|_| invalid())?;
    if opened.claims.secret_name != request.secret_name {
        return Err(invalid());
    }
    Ok(opened)
}
