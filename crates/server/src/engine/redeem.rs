//! `POST /v1/material/redeem`: the one path on which a secret value leaves, to an executor.
//!
//! The redemption is audited (refs only) *before* the value is released: if the record cannot be
//! written, nothing is released.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use selene_kms_core::redeem::{self, RedeemRequest};
use selene_kms_core::{
    AuditAction, AuditRecord, OpenedGrant, ReasonCode, RefKind, Refusal, SecretMaterial, TenantId,
};
use zeroize::Zeroizing;

use super::{Engine, Reply};
use crate::store_error::refusal_for;

const OP: Option<&str> = Some("REDEEM");

fn refusal_body(refusal: &Refusal) -> Arc<[u8]> {
    let body = serde_json::json!({
        "validation_status": "FAIL",
        "reason_code": refusal.reason,
        "diagnostics": refusal.diagnostics,
        "material_b64": null,
        "version": null,
        "expires_at_ms": null,
    });
    serde_json::to_vec(&body).unwrap_or_default().into()
}

fn refused(refusal: Refusal) -> Reply {
    Reply {
        status: refusal.reason.http_status(),
        reason: refusal.reason,
        operation: OP,
        body: refusal_body(&refusal),
    }
}

/// Builds the redemption answer. The base64 text lives in zeroizing buffers until it is handed
/// to the transport.
fn material_body(material: &SecretMaterial, version: u64, expires_at_ms: u64) -> Arc<[u8]> {
    let encoded = Zeroizing::new(STANDARD.encode(material.expose()));
    let mut out = Zeroizing::new(Vec::with_capacity(encoded.len() + 96));
    out.extend_from_slice(b"{\"validation_status\":\"OK\",\"reason_code\":\"PH1_KMS_OK_MATERIAL_ISSUE\",\"material_b64\":\"");
    out.extend_from_slice(encoded.as_bytes());
    out.extend_from_slice(
        format!("\",\"version\":{version},\"expires_at_ms\":{expires_at_ms}}}").as_bytes(),
    );
    Arc::from(&out[..])
}

impl Engine {
    /// Redeems a handle or credential for its material (executor callers only; the host checks
    /// the role).
    pub async fn redeem(&self, body: &[u8], now_ms: u64) -> Reply {
        let req = match RedeemRequest::from_json(body) {
            Ok(r) => r,
            Err(refusal) => return refused(refusal),
        };
        let keys = self.store.keys().clone();
        let opened = match req.open(&keys) {
            Ok(o) => o,
            Err(refusal) => {
                return self
                    .audited_refusal(&req.tenant_id, None, req.kind, refusal, now_ms)
                    .await;
            }
        };
        let claims = opened.claims();
        let secret = match self.store.secret(&req.tenant_id, &claims.secret_name).await {
            Ok(s) => s,
            Err(e) => return refused(Refusal::bare(refusal_for(&e))),
        };
        let revoked = match self.store.is_revoked(&req.tenant_id, opened.id()).await {
            Ok(r) => r,
            Err(e) => return refused(Refusal::bare(refusal_for(&e))),
        };
        let grant = match redeem::check(&opened, secret.as_deref(), revoked, now_ms) {
            Ok(grant) => grant,
            Err(refusal) => {
                return self
                    .audited_refusal(&req.tenant_id, Some(&opened), req.kind, refusal, now_ms)
                    .await;
            }
        };
        let material = match self.store.material(grant).await {
            Ok(m) => m,
            Err(e) => return refused(Refusal::bare(refusal_for(&e))),
        };
        let material = match req.kind {
            RefKind::Credential => material.derive_ephemeral(opened.id()),
            _ => material,
        };
        let audit = record(
            &req.tenant_id,
            Some(&opened),
            req.kind,
            ReasonCode::OkMaterialIssue,
            now_ms,
            secret.as_deref().map(|s| s.secret_ref.clone()),
        );
        // Not audited, not released.
        if let Err(e) = self.audit_only(&req.tenant_id, audit).await {
            return refused(Refusal::bare(refusal_for(&e)));
        }
        Reply {
            status: 200,
            reason: ReasonCode::OkMaterialIssue,
            operation: OP,
            body: material_body(&material, claims.version, claims.expires_at_ms),
        }
    }

    async fn audited_refusal(
        &self,
        tenant: &TenantId,
        opened: Option<&OpenedGrant>,
        kind: RefKind,
        refusal: Refusal,
        now_ms: u64,
    ) -> Reply {
        let audit = record(tenant, opened, kind, refusal.reason, now_ms, None);
        if let Err(e) = self.audit_only(tenant, audit).await {
            return refused(Refusal::bare(refusal_for(&e)));
        }
        refused(refusal)
    }
}

fn record(
    tenant: &TenantId,
    opened: Option<&OpenedGrant>,
    kind: RefKind,
    reason: ReasonCode,
    now_ms: u64,
    secret_ref: Option<String>,
) -> AuditRecord {
    let mut r = AuditRecord::for_action(tenant, AuditAction::Redeem, reason, now_ms);
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
