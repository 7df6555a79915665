//! Provisioning and audit reads (role `admin`). Every change is committed with its audit record;
//! every failure is an [`AdminError`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use selene_kms_core::material::MAX_MATERIAL_LEN;
use selene_kms_core::replay::{PolicyInputs, SecretTerms};
use selene_kms_core::state::{DEFAULT_HANDLE_TTL_MS, terms_digest};
use selene_kms_core::{
    AuditAction, AuditRecord, DecisionInputs, Diagnostic, Policy, PolicyDocument, Problem, Purpose,
    ReasonCode, SecretKind, SecretMaterial, SecretName, Subject, TenantId, TtlBounds, refs,
};
use selene_kms_store::{Change, CommitUnit, NewSecret, SecretListing, StoreError};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Caller, Engine};
use crate::store_error::refusal_for;

/// Most audit records one read returns.
pub(crate) const MAX_AUDIT_PAGE: usize = 1000;
/// Most audit records one filtered read looks at.
pub(crate) const MAX_AUDIT_SCAN: usize = 10_000;

/// Which records an audit read keeps: those of one operation, requester engine and reason code,
/// each when given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// The operation.
    pub operation: Option<AuditAction>,
    /// The requester engine id.
    pub engine: Option<String>,
    /// The reason code.
    pub reason_code: Option<ReasonCode>,
}

impl AuditFilter {
    fn keeps_all(&self) -> bool {
        self.operation.is_none() && self.engine.is_none() && self.reason_code.is_none()
    }

    fn keeps(&self, r: &AuditRecord) -> bool {
        self.operation.is_none_or(|o| r.operation == Some(o))
            && self
                .engine
                .as_deref()
                .is_none_or(|e| r.requester_engine_id.as_deref() == Some(e))
            && self.reason_code.is_none_or(|c| r.reason_code == c)
    }
}

/// A page of audit records, and where the next page starts (`None`: the chain ends here).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// The records.
    pub records: Vec<AuditRecord>,
    /// The `after_seq` of the next page, when there may be one.
    pub next_after_seq: Option<u64>,
}

impl AuditPage {
    fn of(records: Vec<AuditRecord>, next_after_seq: Option<u64>) -> Self {
        Self {
            records,
            next_after_seq,
        }
    }
}

/// Where the key a verification checks the store's signatures against came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The key `init` pinned in the data directory, read when the server started.
    Pinned,
    /// A key the caller gave.
    Given,
}

impl KeySource {
    /// How an answer names it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::Given => "given",
        }
    }
}

/// `GET /v1/audit/verify`: whether a tenant's chain verifies, against which key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Verification {
    /// The chain verified.
    pub tenant_id: String,
    /// Whether the chain, the store's state and the signing key all hold.
    pub verified: bool,
    /// Records verified.
    pub records: u64,
    /// The last record the latest signed manifest names.
    pub manifested: u64,
    /// `pinned` or `given`.
    pub key: &'static str,
    /// What does not hold, if anything.
    pub problem: Option<String>,
}
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
    /// What the secret is for (default `credential`). A key's imported material is exactly 32
    /// bytes (an Ed25519 key: its seed).
    pub purpose: Option<Purpose>,
}

/// `PATCH /v1/admin/tenants/{tenant_id}/secrets/{secret_name}`.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSecretRequest {
    /// The oldest version `decrypt` accepts: at least 1, at most the key's current version.
    pub min_decryption_version: Option<u64>,
}

/// A secret's terms after an update; also the body of its `PATCH`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UpdatedSecret {
    /// The secret.
    pub secret_name: String,
    /// The oldest version `decrypt` accepts.
    pub min_decryption_version: u64,
}

/// The public keys of an Ed25519 key, one per version; also the body of its `GET`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PublicKeys {
    /// Every version, oldest first.
    pub versions: Vec<PublicKey>,
}

/// One version's public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PublicKey {
    /// The version.
    pub version: u64,
    /// The raw 32-byte Ed25519 public key, standard base64.
    pub public_key_b64: String,
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

// The doc comment below is the OpenAPI schema's description, so it stays as the wire sees it:
// this is also the error of every admin call.
/// An admin error body: `{"reason_code", "message"}`, and the `diagnostics` that say which
/// field broke which rule when a body is invalid; the message is the registry's meaning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdminError {
    /// The reason code.
    pub reason_code: ReasonCode,
    /// What it means.
    pub message: String,
    /// Which field broke which rule (`field:problem`), never a value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub diagnostics: Vec<Diagnostic>,
}

impl From<ReasonCode> for AdminError {
    fn from(reason: ReasonCode) -> Self {
        Self {
            reason_code: reason,
            message: reason.info().meaning.to_owned(),
            diagnostics: Vec::new(),
        }
    }
}

impl AdminError {
    /// An invalid body: `subject` broke the rule `problem`.
    pub fn invalid(subject: Subject, problem: Problem) -> Self {
        Self {
            diagnostics: vec![Diagnostic::new(subject, problem)],
            ..ReasonCode::InputSchemaInvalid.into()
        }
    }
}

impl From<StoreError> for AdminError {
    /// By the one mapping from store failures to reason codes.
    fn from(e: StoreError) -> Self {
        refusal_for(&e).into()
    }
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason_code.name())
    }
}

impl std::error::Error for AdminError {}

/// A secret just created; also the body of `POST /v1/admin/tenants/{tenant_id}/secrets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = SecretCreated)]
pub struct CreatedSecret {
    /// Its opaque ref (what audit records and listings name it by).
    pub secret_ref: String,
    /// Its first version.
    pub version: u64,
}

/// Decodes imported material and wipes the base64 text it came in.
fn decode_material(b64: String) -> Result<SecretMaterial, AdminError> {
    let b64 = Zeroizing::new(b64);
    let bytes = Zeroizing::new(
        STANDARD
            .decode(b64.trim())
            .map_err(|_| AdminError::from(ReasonCode::InputSchemaInvalid))?,
    );
    if bytes.is_empty() || bytes.len() > MAX_MATERIAL_LEN {
        return Err(ReasonCode::InputSchemaInvalid.into());
    }
    Ok(SecretMaterial::from_slice(&bytes))
}

fn secret_name(raw: String) -> Result<SecretName, AdminError> {
    SecretName::try_from(raw).map_err(|_| ReasonCode::InputSchemaInvalid.into())
}

fn audit(caller: &Caller, tenant: &TenantId, action: AuditAction, at_ms: u64) -> AuditRecord {
    AuditRecord::for_action(tenant, action, ReasonCode::OkMaterialIssue, at_ms)
        .by(&caller.principal_id)
}

impl Engine {
    /// Creates a secret (generated, or imported from `material_b64`).
    pub async fn create_secret(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        req: NewSecretRequest,
        now_ms: u64,
    ) -> Result<CreatedSecret, AdminError> {
        caller.may_name(tenant)?;
        let name = secret_name(req.secret_name)?;
        let ttl = match req.ephemeral_ttl_ms {
            None => TtlBounds::DEFAULT,
            Some(t) => TtlBounds::new(t.min, t.max, t.default)
                .ok_or(AdminError::from(ReasonCode::InputSchemaInvalid))?,
        };
        let handle_ttl_ms = req.handle_ttl_ms.unwrap_or(DEFAULT_HANDLE_TTL_MS);
        if handle_ttl_ms == 0 || handle_ttl_ms > selene_kms_core::request::MAX_TTL_MS {
            return Err(ReasonCode::InputSchemaInvalid.into());
        }
        let purpose = req.purpose.unwrap_or_default();
        let (kind, material) = match req.material_b64.map(decode_material).transpose()? {
            None => (SecretKind::Generated, crate::generate_material()?),
            Some(m) => (SecretKind::Imported, m),
        };
        if !purpose.fits(material.len()) {
            return Err(AdminError::invalid(Subject::Material, Problem::BadShape));
        }
        let secret_ref = refs::secret_ref(self.store.keys(), tenant, &name);
        let mut record = audit(caller, tenant, AuditAction::CreateSecret, now_ms);
        record.secret_ref = Some(secret_ref.clone());
        record.terms_digest = Some(terms_digest(kind, &ttl, handle_ttl_ms, purpose));
        let terms = SecretTerms::new(kind, &ttl, handle_ttl_ms, purpose);
        let unit = CommitUnit {
            tenant: tenant.clone(),
            change: Change::CreateSecret(NewSecret {
                name,
                kind,
                material,
                ttl,
                handle_ttl_ms,
                purpose,
            }),
            audit: record,
            idempotency: None,
            bundle: None,
            inputs: Some(DecisionInputs::Secret(terms)),
        };
        self.store.commit(unit).await?;
        Ok(CreatedSecret {
            secret_ref,
            version: 1,
        })
    }

    /// Lists a tenant's secrets: metadata only.
    pub async fn list_secrets(
        &self,
        caller: &Caller,
        tenant: &TenantId,
    ) -> Result<Vec<SecretListing>, AdminError> {
        caller.may_name(tenant)?;
        self.store
            .list_secrets(tenant)
            .await
            .map_err(AdminError::from)
    }

    /// Stages material for the next rotation of an imported secret.
    pub async fn stage(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        req: StageRequest,
        now_ms: u64,
    ) -> Result<(), AdminError> {
        caller.may_name(tenant)?;
        let name = secret_name(req.secret_name)?;
        let material = decode_material(req.material_b64)?;
        let mut record = audit(caller, tenant, AuditAction::StageVersion, now_ms);
        record.secret_ref = Some(refs::secret_ref(self.store.keys(), tenant, &name));
        let unit = CommitUnit {
            tenant: tenant.clone(),
            change: Change::StageMaterial { name, material },
            audit: record,
            idempotency: None,
            bundle: None,
            inputs: None,
        };
        self.store.commit(unit).await?;
        Ok(())
    }

    /// Changes a key's terms: its minimum decryption version. A credential has none
    /// (`KMS_PURPOSE_MISMATCH`); a version the key does not have is invalid.
    pub async fn update_secret(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        name: &str,
        req: UpdateSecretRequest,
        now_ms: u64,
    ) -> Result<UpdatedSecret, AdminError> {
        caller.may_name(tenant)?;
        let name = secret_name(name.to_owned())?;
        let version = req
            .min_decryption_version
            .ok_or_else(|| AdminError::invalid(Subject::MinDecryptionVersion, Problem::Missing))?;
        let secret = self.key(tenant, &name).await?;
        if version == 0 || version > secret.current_version() {
            return Err(AdminError::invalid(
                Subject::MinDecryptionVersion,
                Problem::OutOfRange,
            ));
        }
        let mut record = audit(caller, tenant, AuditAction::UpdateSecret, now_ms);
        record.secret_ref = Some(secret.secret_ref.clone());
        record.min_decryption_version = Some(version);
        let unit = CommitUnit {
            tenant: tenant.clone(),
            change: Change::SetMinDecryptionVersion {
                name: name.clone(),
                version,
            },
            audit: record,
            idempotency: None,
            bundle: None,
            inputs: None,
        };
        self.store.commit(unit).await?;
        Ok(UpdatedSecret {
            secret_name: name.as_str().to_owned(),
            min_decryption_version: version,
        })
    }

    /// The public key of every version of an Ed25519 key (`KMS_PURPOSE_MISMATCH` for any other
    /// secret). Reading them reveals nothing of a seed and changes nothing, so it is not audited.
    pub async fn public_keys(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        name: &str,
    ) -> Result<PublicKeys, AdminError> {
        caller.may_name(tenant)?;
        let name = secret_name(name.to_owned())?;
        let secret = self.key(tenant, &name).await?;
        let grants = selene_kms_core::crypto::public_key_grants(tenant, &name, &secret)
            .map_err(|r| AdminError::from(r.reason))?;
        let mut versions = Vec::with_capacity(grants.len());
        for grant in grants {
            let version = grant.version();
            let seed = self.store.material(grant).await?;
            let public = selene_kms_core::crypto::public_key(&seed)
                .map_err(|r| AdminError::from(r.reason))?;
            versions.push(PublicKey {
                version,
                public_key_b64: STANDARD.encode(public),
            });
        }
        Ok(PublicKeys { versions })
    }

    /// A secret that must be a key (`KMS_SECRET_NOT_FOUND`, `KMS_PURPOSE_MISMATCH`).
    async fn key(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> Result<std::sync::Arc<selene_kms_core::SecretSnapshot>, AdminError> {
        let secret = self
            .store
            .secret(tenant, name)
            .await?
            .ok_or(AdminError::from(ReasonCode::SecretNotFound))?;
        if !secret.purpose.is_key() {
            return Err(ReasonCode::PurposeMismatch.into());
        }
        Ok(secret)
    }

    /// Replaces a tenant's policy; answers the new policy version. It takes the validated
    /// [`Policy`] (see `Policy::try_from(&PolicyDocument)`), so a document that names no valid
    /// engine or secret pattern never reaches the store.
    pub async fn put_policy(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        policy: &Policy,
        now_ms: u64,
    ) -> Result<u64, AdminError> {
        caller.may_name(tenant)?;
        let unit = CommitUnit {
            tenant: tenant.clone(),
            change: Change::PutPolicy(policy.document().clone()),
            audit: audit(caller, tenant, AuditAction::SetPolicy, now_ms),
            idempotency: None,
            bundle: None,
            inputs: Some(DecisionInputs::Policy(PolicyInputs {
                document: policy.document().clone(),
            })),
        };
        let receipt = self.store.commit(unit).await?;
        // A store numbers every policy it writes; a receipt without a number is a store bug.
        receipt.policy_version.ok_or_else(|| {
            tracing::error!("a policy commit came back without a policy version");
            ReasonCode::InternalPipelineError.into()
        })
    }

    /// A tenant's policy document (`KMS_POLICY_NOT_FOUND` when it has none).
    pub async fn get_policy(
        &self,
        caller: &Caller,
        tenant: &TenantId,
    ) -> Result<PolicyDocument, AdminError> {
        caller.may_name(tenant)?;
        match self.store.policy_document(tenant).await {
            Ok(Some((doc, _))) => Ok(doc),
            Ok(None) => Err(ReasonCode::PolicyNotFound.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// A page of a tenant's audit chain: records after `after_seq` that `filter` keeps, at most
    /// `limit` (clamped to 1..=1000), scanning at most 10,000 records so that one read
    /// stays bounded. The page says where the next one starts, when there may be one.
    pub async fn audit_page(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
        filter: &AuditFilter,
    ) -> Result<AuditPage, AdminError> {
        caller.may_name(tenant)?;
        let limit = limit.clamp(1, MAX_AUDIT_PAGE);
        let batch_len = if filter.keeps_all() {
            limit
        } else {
            MAX_AUDIT_PAGE
        };
        let mut records = Vec::new();
        let (mut cursor, mut scanned) = (after_seq, 0);
        loop {
            let batch = self.store.audit_records(tenant, cursor, batch_len).await?;
            let ended = batch.len() < batch_len;
            for record in batch {
                cursor = record.seq;
                scanned += 1;
                if filter.keeps(&record) {
                    records.push(record);
                    if records.len() == limit {
                        return Ok(AuditPage::of(records, Some(cursor)));
                    }
                }
            }
            if ended {
                return Ok(AuditPage::of(records, None));
            }
            if scanned >= MAX_AUDIT_SCAN {
                return Ok(AuditPage::of(records, Some(cursor)));
            }
        }
    }

    /// Verifies a tenant's chain (links, digests, record MACs, the signed manifests, what a
    /// witness file names, and the store's state against the chain) and whether the store signs
    /// with `key`: the key pinned when the store was made, or one the caller gives.
    pub async fn audit_verification(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        key: (&str, KeySource),
        witness_file: Option<&std::path::Path>,
        now_ms: u64,
    ) -> Result<Verification, AdminError> {
        caller.may_name(tenant)?;
        let (key, source) = key;
        // The manifests a witness file holds (beyond the database's reach): the store must still
        // hold every head they name, or it was rolled back.
        let witness = match (witness_file, selene_kms_core::audit::parse_public_key(key)) {
            (Some(path), Some(public)) => selene_kms_store::manifest::read_witness(path)
                .and_then(|manifests| selene_kms_store::manifest::witnessed(&manifests, &public)),
            (Some(_), None) => Err("the key is not 64 hex characters".to_owned()),
            (None, _) => Ok(selene_kms_core::manifest::Witnessed::default()),
        };
        let witnessed = match witness {
            Ok(witnessed) => witnessed,
            Err(problem) => {
                return Ok(Verification {
                    tenant_id: tenant.as_str().to_owned(),
                    verified: false,
                    records: 0,
                    manifested: 0,
                    key: source.name(),
                    problem: Some(problem),
                });
            }
        };
        let report =
            selene_kms_store::verify::verify_store(&*self.store, Some(tenant), &witnessed, now_ms)
                .await?;
        let chain = report
            .chains
            .into_iter()
            .next()
            .ok_or(AdminError::from(ReasonCode::InternalPipelineError))?;
        let signs_with = selene_kms_core::audit::public_key_hex(self.store.keys());
        let problem = if !signs_with.eq_ignore_ascii_case(key.trim()) {
            Some(format!(
                "the store signs with another key than the {} one",
                source.name()
            ))
        } else if let Some(broken) = &report.manifests_broken {
            Some(format!("the signed manifests break: {broken}"))
        } else if let Some(broken) = &chain.broken {
            Some(format!("the chain breaks at {broken}"))
        } else {
            chain.differs.clone()
        };
        let report = chain;
        Ok(Verification {
            tenant_id: tenant.as_str().to_owned(),
            verified: problem.is_none(),
            records: report.records,
            manifested: report.manifested,
            key: source.name(),
            problem,
        })
    }

    /// The JSON Lines export of one tenant's chain (or of every chain, the system chain
    /// included, for a caller of every tenant), with signed checkpoints and manifests. The export is a file
    /// format that verifiers read line by line, so its typed form is its bytes.
    pub async fn audit_export(
        &self,
        caller: &Caller,
        tenant: Option<&TenantId>,
        now_ms: u64,
    ) -> Result<Vec<u8>, AdminError> {
        match tenant {
            Some(tenant) => caller.may_name(tenant)?,
            None if !caller.is_global() => return Err(ReasonCode::ForbiddenTenant.into()),
            None => {}
        }
        let mut out = Vec::new();
        let exported =
            selene_kms_store::verify::export(&*self.store, tenant, now_ms, &mut out).await?;
        if let Some((tenant, broken)) = exported.broken {
            // Written without its closing manifest: it verifies only as far as the store's
            // own manifests vouch, and `audit verify` names the break.
            tracing::error!(%tenant, %broken, "audit export met a broken chain");
        }
        Ok(out)
    }

    /// The audit checkpoints' public key (hex), safe to publish.
    pub fn audit_public_key(&self) -> String {
        selene_kms_core::audit::public_key_hex(self.store.keys())
    }
}
