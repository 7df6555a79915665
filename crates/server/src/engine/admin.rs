//! Provisioning and audit reads (role `admin`). Every change is committed with its audit record.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use selene_kms_core::material::MAX_MATERIAL_LEN;
use selene_kms_core::state::DEFAULT_HANDLE_TTL_MS;
use selene_kms_core::{
    AuditAction, AuditRecord, Policy, ReasonCode, SecretKind, SecretMaterial, SecretName, TenantId,
    TtlBounds, refs,
};
use selene_kms_store::{Change, CommitUnit, NewSecret, StoreError};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Engine, Reply};
use crate::store_error::refusal_for;

/// Most audit records one read returns.
pub(crate) const MAX_AUDIT_PAGE: usize = 1000;
/// Audit records one read returns by default.
pub(crate) const DEFAULT_AUDIT_PAGE: usize = 100;

/// TTL bounds as an admin sends them.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TtlRequest {
    /// Shortest TTL, in ms.
    pub min: u64,
    /// Longest TTL, in ms.
    pub max: u64,
    /// TTL when a request names none, in ms.
    pub default: u64,
}

/// `POST /v1/admin/tenants/{tenant_id}/secrets`. Carries material, so it is only ever
/// deserialized; the base64 text is zeroized once decoded.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSecretRequest {
    /// The secret's name.
    pub secret_name: String,
    /// Material to import (base64); without it the KMS generates 32 random bytes.
    pub material_b64: Option<String>,
    /// Ephemeral TTL bounds (defaults: min 30 s, max 1 h, default 5 min).
    pub ephemeral_ttl_ms: Option<TtlRequest>,
    /// Handle lifetime in ms (default 1 h).
    pub handle_ttl_ms: Option<u64>,
}

/// `POST /v1/admin/tenants/{tenant_id}/staged-versions`. Carries material, so it is only ever
/// deserialized; the base64 text is zeroized once decoded.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StageRequest {
    /// The (imported) secret.
    pub secret_name: String,
    /// The next version's material, base64.
    pub material_b64: String,
}

/// An admin error body: `{"reason_code", "message"}`; the message is the registry's meaning.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdminError {
    /// The reason code.
    pub reason_code: ReasonCode,
    /// What it means.
    pub message: String,
}

/// An admin error reply.
pub(crate) fn admin_error(reason: ReasonCode) -> Reply {
    let body = AdminError {
        reason_code: reason,
        message: reason.info().meaning.to_owned(),
    };
    Reply {
        status: reason.http_status(),
        reason,
        operation: None,
        body: serde_json::to_vec(&body).unwrap_or_default().into(),
    }
}

fn ok(status: u16, body: &impl Serialize) -> Reply {
    Reply {
        status,
        reason: ReasonCode::OkMaterialIssue,
        operation: None,
        body: serde_json::to_vec(body).unwrap_or_default().into(),
    }
}

fn from_store(e: &StoreError) -> Reply {
    admin_error(refusal_for(e))
}

/// Decodes imported material and wipes the base64 text it came in.
fn decode_material(b64: String) -> Result<SecretMaterial, Reply> {
    let b64 = Zeroizing::new(b64);
    let bytes = Zeroizing::new(
        STANDARD
            .decode(b64.trim())
            .map_err(|_| admin_error(ReasonCode::InputSchemaInvalid))?,
    );
    if bytes.is_empty() || bytes.len() > MAX_MATERIAL_LEN {
        return Err(admin_error(ReasonCode::InputSchemaInvalid));
    }
    Ok(SecretMaterial::from_slice(&bytes))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|_| admin_error(ReasonCode::InputSchemaInvalid))
}

fn audit(tenant: &TenantId, action: AuditAction, at_ms: u64) -> AuditRecord {
    AuditRecord::for_action(tenant, action, ReasonCode::OkMaterialIssue, at_ms)
}

impl Engine {
    /// Creates a secret (generated, or imported from `material_b64`).
    pub async fn create_secret(&self, tenant: &TenantId, body: &[u8], now_ms: u64) -> Reply {
        let req: NewSecretRequest = match parse(body) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let Ok(name) = SecretName::try_from(req.secret_name) else {
            return admin_error(ReasonCode::InputSchemaInvalid);
        };
        let ttl = match req.ephemeral_ttl_ms {
            None => TtlBounds::DEFAULT,
            Some(t) => match TtlBounds::new(t.min, t.max, t.default) {
                Some(b) => b,
                None => return admin_error(ReasonCode::InputSchemaInvalid),
            },
        };
        let handle_ttl_ms = req.handle_ttl_ms.unwrap_or(DEFAULT_HANDLE_TTL_MS);
        if handle_ttl_ms == 0 || handle_ttl_ms > selene_kms_core::request::MAX_TTL_MS {
            return admin_error(ReasonCode::InputSchemaInvalid);
        }
        let (kind, material) = match req.material_b64.map(decode_material) {
            None => (SecretKind::Generated, None),
            Some(Ok(m)) => (SecretKind::Imported, Some(m)),
            Some(Err(e)) => return e,
        };
        let secret_ref = refs::secret_ref(self.store.keys(), tenant, &name);
        let mut record = audit(tenant, AuditAction::CreateSecret, now_ms);
        record.secret_ref = Some(secret_ref.clone());
        let unit = CommitUnit {
            tenant: tenant.clone(),
            change: Change::CreateSecret(NewSecret {
                name,
                kind,
                material,
                ttl,
                handle_ttl_ms,
            }),
            audit: record,
            idempotency: None,
            bundle: None,
        };
        match self.store.commit(unit).await {
            Ok(_) => ok(
                201,
                &serde_json::json!({"secret_ref": secret_ref, "version": 1}),
            ),
            Err(e) => from_store(&e),
        }
    }

    /// Lists a tenant's secrets: metadata only.
    pub async fn list_secrets(&self, tenant: &TenantId) -> Reply {
        match self.store.list_secrets(tenant).await {
            Ok(secrets) => ok(200, &serde_json::json!({ "secrets": secrets })),
            Err(e) => from_store(&e),
        }
    }

    /// Stages material for the next rotation of an imported secret.
    pub async fn stage(&self, tenant: &TenantId, body: &[u8], now_ms: u64) -> Reply {
        let req: StageRequest = match parse(body) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let Ok(name) = SecretName::try_from(req.secret_name) else {
            return admin_error(ReasonCode::InputSchemaInvalid);
        };
        let material = match decode_material(req.material_b64) {
            Ok(m) => m,
            Err(e) => return e,
        };
        let mut record = audit(tenant, AuditAction::StageVersion, now_ms);
        record.secret_ref = Some(refs::secret_ref(self.store.keys(), tenant, &name));
        let unit = CommitUnit {
            tenant: tenant.clone(),
            change: Change::StageMaterial { name, material },
            audit: record,
            idempotency: None,
            bundle: None,
        };
        match self.store.commit(unit).await {
            Ok(_) => ok(202, &serde_json::json!({"staged": true})),
            Err(e) => from_store(&e),
        }
    }

    /// Replaces a tenant's policy.
    pub async fn put_policy(&self, tenant: &TenantId, body: &[u8], now_ms: u64) -> Reply {
        let policy = match Policy::from_json(body) {
            Ok(p) => p,
            Err(refusal) => return admin_error(refusal.reason),
        };
        let unit = CommitUnit {
            tenant: tenant.clone(),
            change: Change::PutPolicy(policy.document().clone()),
            audit: audit(tenant, AuditAction::SetPolicy, now_ms),
            idempotency: None,
            bundle: None,
        };
        match self.store.commit(unit).await {
            Ok(r) => ok(
                200,
                &serde_json::json!({"policy_version": r.policy_version}),
            ),
            Err(e) => from_store(&e),
        }
    }

    /// A tenant's policy document.
    pub async fn get_policy(&self, tenant: &TenantId) -> Reply {
        match self.store.policy_document(tenant).await {
            Ok(Some((doc, _))) => ok(200, &doc),
            Ok(None) => admin_error(ReasonCode::PolicyNotFound),
            Err(e) => from_store(&e),
        }
    }

    /// A page of a tenant's audit chain.
    pub async fn audit_page(&self, tenant: &TenantId, after_seq: u64, limit: usize) -> Reply {
        let limit = limit.clamp(1, MAX_AUDIT_PAGE);
        match self.store.audit_records(tenant, after_seq, limit).await {
            Ok(records) => ok(200, &serde_json::json!({ "records": records })),
            Err(e) => from_store(&e),
        }
    }

    /// The JSON Lines export of one tenant's chain (or all), with signed checkpoints.
    pub async fn audit_export(&self, tenant: Option<&TenantId>, now_ms: u64) -> Reply {
        let mut out = Vec::new();
        match selene_kms_store::verify::export(&*self.store, tenant, now_ms, &mut out).await {
            Ok(_) => Reply {
                status: 200,
                reason: ReasonCode::OkMaterialIssue,
                operation: None,
                body: Arc::from(out),
            },
            Err(e) => from_store(&e),
        }
    }

    /// The audit checkpoints' public key (hex), safe to publish.
    pub fn audit_public_key(&self) -> String {
        selene_kms_core::audit::public_key_hex(self.store.keys())
    }
}
