//! Redemption: the one path on which a secret value leaves, to an executor.
//!
//! The redemption is audited (refs only) *before* the value is released: if the record cannot be
//! written, nothing is released.

use selene_kms_core::redeem::{self, RedeemRequest};
use selene_kms_core::{
    AuditAction, AuditRecord, OpenedGrant, ReasonCode, RefKind, Refusal, SecretMaterial, TenantId,
};

use selene_kms_store::StoreError;

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
fn store_refusal(e: StoreError) -> Refusal {
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
        let secret = self
            .store
            .secret(&req.tenant_id, &claims.secret_name)
            .await
            .map_err(store_refusal)?;
        let revoked = self
            .store
            .is_revoked(&req.tenant_id, opened.id())
            .await
            .map_err(store_refusal)?;
        let policy = self
            .store
            .policy(&req.tenant_id)
            .await
            .map_err(store_refusal)?;
        let policy = policy.as_ref().map(|p| p.policy.as_ref());
        let grant = match redeem::check(&opened, policy, secret.as_deref(), revoked, now_ms) {
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
        let audit = record(
            caller,
            &req.tenant_id,
            Some(&opened),
            req.kind,
            ReasonCode::OkMaterialIssue,
            now_ms,
            secret.as_deref().map(|s| s.secret_ref.clone()),
        );
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
        let audit = record(caller, tenant, opened, kind, refusal.reason, now_ms, None);
        self.audit_only(tenant, audit, None)
            .await
            .map_err(store_refusal)?;
        Err(refusal)
    }
}

fn record(
    caller: &Caller,
    tenant: &TenantId,
    opened: Option<&OpenedGrant>,
    kind: RefKind,
    reason: ReasonCode,
    now_ms: u64,
    secret_ref: Option<String>,
) -> AuditRecord {
    let mut r = AuditRecord::for_action(tenant, AuditAction::Redeem, reason, now_ms)
        .by(&caller.principal_id);
    r.secret_ref = secret_ref;
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
