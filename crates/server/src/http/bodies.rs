//! The HTTP host's bodies: JSON in to the engine's typed requests, typed answers out to JSON.
//!
//! The wire form is the contract DESIGN.md and the OpenAPI document describe; keeping it here
//! lets the engine answer in types while the bytes stay exactly what clients already parse.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use selene_kms_core::{Diagnostic, ReasonCode, Refusal, ValidationStatus};
use selene_kms_store::{SecretListing, TenantSummary};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use selene_kms_core::crypto::Output;

use crate::engine::{AdminError, CreatedSecret, CryptoAnswer, PrincipalView, Redeemed};

// The answers below are serialized from these types, so the OpenAPI document's schemas (derived
// from the same types) are the bytes' shape. Their doc comments are the schemas' descriptions.

/// `GET /v1/admin/tenants/{tenant_id}/secrets`: metadata only, never a value.
#[derive(Serialize, ToSchema)]
pub(crate) struct SecretList {
    /// Every secret of the tenant.
    #[schema(value_type = Vec<ListedSecret>)]
    secrets: Vec<SecretListing>,
}

/// One secret in a listing. Documentation of the store's listing type, which derives no schema:
/// tests parse real listings into it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SecretListing)]
#[allow(
    dead_code,
    reason = "the listing's documented shape; built only by tests that parse real listings"
)]
pub(crate) struct ListedSecret {
    /// Its name.
    secret_name: String,
    /// Its opaque ref.
    secret_ref: String,
    /// `GENERATED` or `IMPORTED`.
    kind: String,
    /// `credential`, `hmac-sha256`, `ed25519` or `aes-256-gcm`.
    purpose: String,
    /// The oldest version a key decrypts (1 for every credential).
    min_decryption_version: u64,
    /// The current version.
    current_version: u64,
    /// Every version.
    versions: Vec<ListedVersion>,
}

/// One version in a listing.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VersionListing)]
#[allow(
    dead_code,
    reason = "the listing's documented shape; built only by tests that parse real listings"
)]
pub(crate) struct ListedVersion {
    /// The version number.
    version: u64,
    /// `ACTIVE` or `REVOKED`.
    state: String,
    /// When it was created.
    created_at_ms: u64,
}

/// `POST /v1/admin/tenants/{tenant_id}/staged-versions`: staged for the next rotation.
/// Every principal, with its tokens' metadata (never a token or verifier).
#[derive(Serialize, ToSchema)]
pub(crate) struct PrincipalList {
    principals: Vec<PrincipalView>,
}

/// The tenants the caller may name.
#[derive(Serialize, ToSchema)]
pub(crate) struct TenantList {
    #[schema(value_type = Vec<ListedTenant>)]
    tenants: Vec<TenantSummary>,
}

/// One tenant: its policy version (0: none), whether its policy is set and enabled, and how
/// many secrets it has.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TenantSummary)]
#[allow(
    dead_code,
    reason = "the listing's documented shape; built only by tests that parse real listings"
)]
pub(crate) struct ListedTenant {
    tenant_id: String,
    policy_version: u64,
    enabled: bool,
    secrets: u64,
}

/// A revocation took effect.
#[derive(Serialize, ToSchema)]
pub(crate) struct Revoked {
    revoked: bool,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Staged {
    /// Always true.
    staged: bool,
}

/// `PUT /v1/admin/tenants/{tenant_id}/policy`: the stored policy's version.
#[derive(Serialize, ToSchema)]
pub(crate) struct PolicyVersion {
    /// The version the policy was stored as.
    policy_version: u64,
}

/// `POST /v1/admin/tenants/{tenant_id}/replay`: optional; an empty body replays every decision.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayRequest {
    /// Compare only the decisions after this record (the state is still folded from the
    /// chain's first record).
    #[serde(default)]
    pub(crate) after_seq: Option<u64>,
}

/// `POST /v1/admin/tenants/{tenant_id}/policy/simulate`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SimulateRequest {
    /// The candidate policy document.
    #[schema(value_type = selene_kms_core::PolicyDocument)]
    pub(crate) policy: serde_json::Value,
    /// Re-evaluate only the requests recorded after this record.
    #[serde(default)]
    pub(crate) after_seq: Option<u64>,
}

/// `GET /v1/audit/public-key`.
#[derive(Serialize, ToSchema)]
pub(crate) struct AuditPublicKey {
    /// The Ed25519 public key that verifies audit checkpoints.
    audit_public_key: String,
}

/// `/healthz` and `/readyz`: `ok`, `ready` or `unavailable`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Status {
    /// The state.
    #[schema(value_type = String)]
    status: &'static str,
}

/// A redemption refused: the redemption answer's shape with every material field null.
#[derive(Serialize, ToSchema)]
pub(crate) struct RedeemRefusal {
    /// Always `FAIL`.
    validation_status: ValidationStatus,
    /// Why.
    reason_code: ReasonCode,
    /// `subject:problem` codes from a fixed vocabulary.
    #[schema(value_type = Vec<String>)]
    diagnostics: Vec<Diagnostic>,
    /// Always null.
    #[schema(value_type = Option<String>)]
    material_b64: Option<()>,
    /// Always null.
    #[schema(value_type = Option<u64>)]
    version: Option<()>,
    /// Always null.
    #[schema(value_type = Option<u64>)]
    expires_at_ms: Option<()>,
}

/// The material redeemed. Written by hand into zeroizing buffers ([`redeemed`]); this type
/// documents the shape, and a test parses real answers into it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "the answer's documented shape; built only by tests that parse real answers"
)]
pub(crate) struct RedeemAnswer {
    /// Always `OK`.
    validation_status: ValidationStatus,
    /// Always `PH1_KMS_OK_MATERIAL_ISSUE`.
    reason_code: ReasonCode,
    /// The material, standard base64.
    material_b64: String,
    /// The version it is of.
    version: u64,
    /// When the handle or credential it was redeemed with expires.
    expires_at_ms: u64,
}

/// `POST /v1/crypto/mac`.
#[derive(Serialize, ToSchema)]
pub(crate) struct MacAnswer {
    /// The HMAC-SHA256 tag, standard base64.
    mac_b64: String,
    /// The key version used.
    version: u64,
}

/// `POST /v1/crypto/sign`.
#[derive(Serialize, ToSchema)]
pub(crate) struct SignAnswer {
    /// The Ed25519 signature, standard base64.
    signature_b64: String,
    /// The key version used.
    version: u64,
}

/// `POST /v1/crypto/verify`.
#[derive(Serialize, ToSchema)]
pub(crate) struct VerifyAnswer {
    /// Whether the signature or MAC holds.
    valid: bool,
    /// The key version used.
    version: u64,
}

/// `POST /v1/crypto/encrypt`.
#[derive(Serialize, ToSchema)]
pub(crate) struct EncryptAnswer {
    /// `skc1:<version>:<base64url of nonce, ciphertext and tag>`.
    ciphertext: String,
    /// The key version used.
    version: u64,
}

/// `POST /v1/crypto/decrypt`. Built by hand into a wiped buffer (see [`crypto_answer`]); tests
/// parse real answers into it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "the answer's documented shape; built only by tests that parse real answers"
)]
pub(crate) struct DecryptAnswer {
    /// The plaintext, standard base64.
    plaintext_b64: String,
    /// The ciphertext's key version.
    version: u64,
}

/// A crypto operation's answer. A decryption's plaintext goes into a buffer of exactly its
/// final size, wiped when the connection is done with it.
pub(super) fn crypto_answer(answer: &CryptoAnswer) -> Wiped {
    let version = answer.version;
    let plain = match &answer.output {
        Output::Mac(tag) => {
            let mac_b64 = STANDARD.encode(tag);
            return Wiped(Zeroizing::new(json(&MacAnswer { mac_b64, version })));
        }
        Output::Signature(sig) => {
            let signature_b64 = STANDARD.encode(sig);
            return Wiped(Zeroizing::new(json(&SignAnswer {
                signature_b64,
                version,
            })));
        }
        Output::Valid(valid) => {
            let valid = *valid;
            return Wiped(Zeroizing::new(json(&VerifyAnswer { valid, version })));
        }
        Output::Ciphertext(ciphertext) => {
            let ciphertext = ciphertext.clone();
            return Wiped(Zeroizing::new(json(&EncryptAnswer {
                ciphertext,
                version,
            })));
        }
        Output::Plaintext(plain) => plain,
    };
    const PREFIX: &[u8] = b"{\"plaintext_b64\":\"";
    let encoded = Zeroizing::new(STANDARD.encode(plain));
    let suffix = format!("\",\"version\":{version}}}");
    exact(&[PREFIX, encoded.as_bytes(), suffix.as_bytes()])
}

/// `parts` one after the other, in a wiped buffer of exactly their length: a buffer that grew
/// would leave a copy of what it held behind, unwiped, in the allocation it outgrew.
fn exact(parts: &[&[u8]]) -> Wiped {
    let mut out = Zeroizing::new(Vec::with_capacity(parts.iter().map(|p| p.len()).sum()));
    for part in parts {
        out.extend_from_slice(part);
    }
    debug_assert_eq!(out.len(), out.capacity());
    Wiped(out)
}

/// `value` as JSON. Answers are plain data, so serialization cannot fail.
pub(super) fn json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// An admin request body. Parse errors never echo the body: serde's message can quote values.
/// An optional body: none at all reads as the type's default.
pub(super) fn parse_optional<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, AdminError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    parse(body)
}

pub(super) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|_| ReasonCode::InputSchemaInvalid.into())
}

/// `{"secret_ref", "version"}`.
pub(super) fn created(created: &CreatedSecret) -> Vec<u8> {
    json(created)
}

/// `{"secrets": [...]}`.
pub(super) fn secrets(secrets: Vec<SecretListing>) -> Vec<u8> {
    json(&SecretList { secrets })
}

/// `{"staged": true}`.
pub(super) fn principals(principals: Vec<PrincipalView>) -> Vec<u8> {
    json(&PrincipalList { principals })
}

pub(super) fn tenants(tenants: Vec<TenantSummary>) -> Vec<u8> {
    json(&TenantList { tenants })
}

pub(super) fn revoked() -> Vec<u8> {
    json(&Revoked { revoked: true })
}

pub(super) fn staged() -> Vec<u8> {
    json(&Staged { staged: true })
}

/// `{"policy_version": n}`.
pub(super) fn policy_version(policy_version: u64) -> Vec<u8> {
    json(&PolicyVersion { policy_version })
}

/// `{"audit_public_key": "..."}`.
pub(super) fn audit_public_key(audit_public_key: String) -> Vec<u8> {
    json(&AuditPublicKey { audit_public_key })
}

/// `{"status": "..."}`.
pub(super) fn status(status: &'static str) -> Vec<u8> {
    json(&Status { status })
}

/// A refused redemption: the redemption answer's shape with every material field null.
pub(super) fn redeem_refusal(refusal: &Refusal) -> Vec<u8> {
    json(&RedeemRefusal {
        validation_status: ValidationStatus::Fail,
        reason_code: refusal.reason,
        diagnostics: refusal.diagnostics.clone(),
        material_b64: None,
        version: None,
        expires_at_ms: None,
    })
}

/// The redemption answer. The base64 text lives in zeroizing buffers until it is handed to the
/// transport.
/// A body that held material: wiped when the last holder (the connection, once it has written
/// it) drops it.
pub(super) struct Wiped(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

pub(super) fn redeemed(redeemed: &Redeemed) -> Wiped {
    const PREFIX: &[u8] =
        b"{\"validation_status\":\"OK\",\"reason_code\":\"PH1_KMS_OK_MATERIAL_ISSUE\",\"material_b64\":\"";
    let encoded = Zeroizing::new(STANDARD.encode(redeemed.material.expose()));
    let suffix = format!(
        "\",\"version\":{},\"expires_at_ms\":{}}}",
        redeemed.version, redeemed.expires_at_ms
    );
    exact(&[PREFIX, encoded.as_bytes(), suffix.as_bytes()])
}
