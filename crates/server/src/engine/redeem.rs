//! Redemption: the one path on which a secret value leaves, to an executor.
//!
//! The redemption is audited (refs only) *before* the value is released: if the record cannot be
//! written, nothing is released.

use selene_kms_core::redeem::{self, RedeemRequest};
use std::sync::Arc;

use selene_kms_core::{
    AuditAction, AuditRecord, OpenedGrant, ReasonCode, RefKind, Refusal, SecretMaterial,
    SecretSnapshot, TenantId,
};
use selene_kms_store::{StoreError, StoredPolicy};

use super::{Caller, Engine};
use crate::store_error::refusal_for;

/// What a redemption releases: the material and what bounds its use.
///
/// Like [`SecretMaterial`] it is neither `Debug`, `Serialize` nor `Clone`, so nothing but a
/// deliberate [`SecretMaterial::expose`] carries the value on; the material is zeroized when
/// dropped.
pub struct Redeemed {
    /// The value: the version's material for a handle, a derived value for a credential.
    pub material: SecretMaterial,
    /// The version the ref is bound to.
    pub version: u64,
    /// When the ref expires, in ms since the epoch.
    pub expires_at_ms: u64,
}

/// A store failure, refused by the one mapping.
pub(super) fn store_refusal(e: StoreError) -> Refusal {
    Refusal::bare(refusal_for(&e))
}

impl Engine {
    /// Redeems a handle or credential for its material (executor callers only; the host checks
    /// the role). A refusal carries its reason code and diagnostics, never the ref. A tenant
    /// outside the caller's scope is refused before anything is read, and not audited there.
    pub async fn redeem(
        &self,
        caller: &Caller,
        req: &RedeemRequest,
        now_ms: u64,
    ) -> Result<Redeemed, Refusal> {
        caller.may_name(&req.tenant_id).map_err(Refusal::bare)?;
        let keys = self.store.keys().clone();
        let opened = match req.open(&keys) {
            Ok(o) => o,
            Err(refusal) => {
                return self
                    .audited_refusal(caller, &req.tenant_id, None, req.kind, refusal, now_ms)
                    .await;
            }
        };
        let claims = opened.claims();
        let read = self.ref_state(&req.tenant_id, &opened).await?;
        let policy = read.policy.as_ref().map(|p| p.policy.as_ref());
        let secret = read.secret.as_deref();
        let grant = match redeem::check(&opened, policy, secret, read.revoked, now_ms) {
            Ok(grant) => grant,
            Err(refusal) => {
                let opened = Some(&opened);
                return self
                    .audited_refusal(caller, &req.tenant_id, opened, req.kind, refusal, now_ms)
                    .await;
            }
        };
        let material = self.store.material(grant).await.map_err(store_refusal)?;
        let material = match req.kind {
            RefKind::Credential => {
                material.derive_ephemeral(&keys, opened.id(), opened.generation())
            }
            _ => material,
        };
        let mut audit = use_record(
            caller,
            &req.tenant_id,
            AuditAction::Redeem,
            Some(&opened),
            req.kind,
            ReasonCode::OkMaterialIssue,
            now_ms,
        );
        audit.secret_ref = secret.map(|s| s.secret_ref.clone());
        // Not audited, not released.
        self.audit_only(&req.tenant_id, audit, None)
            .await
            .map_err(store_refusal)?;
        Ok(Redeemed {
            material,
            version: claims.version,
            expires_at_ms: claims.expires_at_ms,
        })
    }

    async fn audited_refusal(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        opened: Option<&OpenedGrant>,
        kind: RefKind,
        refusal: Refusal,
        now_ms: u64,
    ) -> Result<Redeemed, Refusal> {
        let audit = use_record(
            caller,
            tenant,
            AuditAction::Redeem,
            opened,
            kind,
            refusal.reason,
            now_ms,
        );
        self.audit_only(tenant, audit, None)
            .await
            .map_err(store_refusal)?;
        Err(refusal)
    }
}

/// What a use of a ref (a redemption or a crypto operation) reads before it is decided: the
/// secret the ref names, whether the ref was revoked on its own, and the tenant's policy.
pub(super) struct RefState {
    pub(super) secret: Option<Arc<SecretSnapshot>>,
    pub(super) revoked: bool,
    pub(super) policy: Option<StoredPolicy>,
}

impl Engine {
    /// The reads behind a use of `opened` in `tenant`.
    pub(super) async fn ref_state(
        &self,
        tenant: &TenantId,
        opened: &OpenedGrant,
    ) -> Result<RefState, Refusal> {
        let secret = self
            .store
            .secret(tenant, &opened.claims().secret_name)
            .await
            .map_err(store_refusal)?;
        let revoked = self
            .store
            .is_revoked(tenant, opened.id())
            .await
            .map_err(store_refusal)?;
        let policy = self.store.policy(tenant).await.map_err(store_refusal)?;
        Ok(RefState {
            secret,
            revoked,
            policy,
        })
    }
}

/// The record of one use of a ref: who used it, which requester it was issued to, and its
/// non-redeemable id; never the ref, the value, the data or a result.
pub(super) fn use_record(
    caller: &Caller,
    tenant: &TenantId,
    action: AuditAction,
    opened: Option<&OpenedGrant>,
    kind: RefKind,
    reason: ReasonCode,
    now_ms: u64,
) -> AuditRecord {
    let mut r = AuditRecord::for_action(tenant, action, reason, now_ms).by(&caller.principal_id);
    if let Some(o) = opened {
        r.requester_engine_id = Some(o.claims().engine.to_string());
        r.requester_user_id = o.claims().user.as_ref().map(ToString::to_string);
        let id = Some(o.id().as_str().to_owned());
        match kind {
            RefKind::Credential => r.credential_id = id,
            _ => r.handle_id = id,
        }
    }
    r
}
