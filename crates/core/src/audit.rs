//! Audit record shapes, the SHA-256 chain, Ed25519 checkpoints and chain verification (PH1.J,
//! PH1.EXPORT).
//!
//! Records hold ids, reason codes and opaque refs only. Handles and credentials appear as their
//! non-redeemable ids, never as the refs themselves. Each record's digest covers a canonical
//! binary encoding of every other field, including the previous record's digest; signed
//! checkpoints let a holder of the public key alone verify an export.

/// The audit public key's type, for verifiers.
pub use ed25519_dalek::VerifyingKey;
use ed25519_dalek::{Signature, Signer, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::encode::Encoder;
use crate::ids::TenantId;
use crate::keys::{Column, ServiceKeys};
use crate::principal::PrincipalId;
use crate::reason::ReasonCode;
use crate::refs::{RefKind, push_hex, ref_id};
use crate::request::{KmsRequest, RequestContext};
use crate::state::StateChange;
use crate::wire::{MaterialBundle, Operation, TombstoneTarget, ValidationStatus};

/// The `prev_digest` of a tenant's first record.
pub const GENESIS_DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What was audited.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs, reason = "names say what was done")]
pub enum AuditAction {
    GetHandle,
    IssueEphemeral,
    Rotate,
    Revoke,
    Redeem,
    CreateSecret,
    StageVersion,
    SetPolicy,
    PrincipalCreate,
    PrincipalRevoke,
    TokenCreate,
    TokenRevoke,
    PolicySimulate,
    UpdateSecret,
    Mac,
    Sign,
    Verify,
    Encrypt,
    Decrypt,
}

impl AuditAction {
    /// The wire name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::GetHandle => "GET_HANDLE",
            Self::IssueEphemeral => "ISSUE_EPHEMERAL",
            Self::Rotate => "ROTATE",
            Self::Revoke => "REVOKE",
            Self::Redeem => "REDEEM",
            Self::CreateSecret => "CREATE_SECRET",
            Self::StageVersion => "STAGE_VERSION",
            Self::SetPolicy => "SET_POLICY",
            Self::PrincipalCreate => "PRINCIPAL_CREATE",
            Self::PrincipalRevoke => "PRINCIPAL_REVOKE",
            Self::TokenCreate => "TOKEN_CREATE",
            Self::TokenRevoke => "TOKEN_REVOKE",
            Self::PolicySimulate => "POLICY_SIMULATE",
            Self::UpdateSecret => "UPDATE_SECRET",
            Self::Mac => "MAC",
            Self::Sign => "SIGN",
            Self::Verify => "VERIFY",
            Self::Encrypt => "ENCRYPT",
            Self::Decrypt => "DECRYPT",
        }
    }
}

impl From<Operation> for AuditAction {
    fn from(op: Operation) -> Self {
        match op {
            Operation::GetHandle => Self::GetHandle,
            Operation::IssueEphemeral => Self::IssueEphemeral,
            Operation::Rotate => Self::Rotate,
            Operation::Revoke => Self::Revoke,
        }
    }
}

/// One audit record.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs, reason = "fields are listed in DESIGN.md, 'Audit read'")]
pub struct AuditRecord {
    pub seq: u64,
    pub at_ms: u64,
    pub tenant_id: String,
    /// Who acted; `None` only for records the KMS writes on its own. Records written before
    /// principals existed have none.
    #[serde(default)]
    pub principal_id: Option<String>,
    pub correlation_id: Option<String>,
    pub turn_id: Option<String>,
    pub requester_engine_id: Option<String>,
    pub requester_user_id: Option<String>,
    pub operation: Option<AuditAction>,
    pub dry_run: bool,
    pub replayed: bool,
    pub reason_code: ReasonCode,
    pub validation_status: ValidationStatus,
    pub secret_ref: Option<String>,
    pub handle_id: Option<String>,
    pub credential_id: Option<String>,
    pub tombstone_ref: Option<String>,
    pub rotated_version: Option<u64>,
    pub simulation_id: Option<String>,
    /// The version a SET_POLICY stored.
    #[serde(default)]
    pub policy_version: Option<u64>,
    /// The principal a principal or token event acted on.
    #[serde(default)]
    pub target_principal_id: Option<String>,
    /// The token a token event acted on.
    #[serde(default)]
    pub target_token_id: Option<String>,
    /// Hex SHA-256 of the canonical policy document a SET_POLICY stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_digest: Option<String>,
    /// Hex SHA-256 of the terms a CREATE_SECRET set (see [`crate::state::terms_digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms_digest: Option<String>,
    /// Whether a committed ROTATE took the staged material (and so left none staged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_staged: Option<bool>,
    /// What a REVOKE revoked (its tombstone's target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_target: Option<TombstoneTarget>,
    /// The version a REVOKE of a version revoked (a handle's or credential's version for those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_version: Option<u64>,
    /// Until when a REVOKE of a handle or credential holds (that ref's expiry); the revoked
    /// ref's id is in `handle_id` or `credential_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_until_ms: Option<u64>,
    /// Hex SHA-256 of the answer's bytes, exactly as the caller received them (a KMS request's
    /// bundle, `audit_seq` included): what a replay of the decision must give again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_digest: Option<String>,
    /// The key version a crypto operation used (a decryption: the ciphertext's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u64>,
    /// The oldest version an UPDATE_SECRET lets `decrypt` accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_decryption_version: Option<u64>,
    pub prev_digest: String,
    pub digest: String,
    /// HMAC of `digest` under a key only the KMS holds (hex): whoever can write the store but
    /// lacks the root key can neither alter nor forge nor append a record, even after the
    /// latest signed manifest. Not part of the digest, so an export verifies without the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl AuditRecord {
    /// The record of one KMS request's answer (allowed, refused or replayed). `seq`,
    /// `prev_digest` and `digest` are set when the store chains it.
    pub fn for_request(
        tenant: &TenantId,
        context: &RequestContext,
        bundle: &MaterialBundle,
        at_ms: u64,
        replayed: bool,
    ) -> Self {
        let asked = Asked {
            correlation_id: context.correlation_id.as_ref().map(|v| v.as_str()),
            turn_id: context.turn_id.as_ref().map(|v| v.as_str()),
            requester_engine_id: context.requester_engine_id.as_ref().map(|v| v.as_str()),
            requester_user_id: context.requester_user_id.as_ref().map(|v| v.as_str()),
            operation: context.operation,
        };
        Self::answering(tenant, &asked, bundle, at_ms, replayed)
    }

    /// [`AuditRecord::for_request`] for a request that validated, read from the request itself.
    pub fn for_validated(
        req: &KmsRequest,
        bundle: &MaterialBundle,
        at_ms: u64,
        replayed: bool,
    ) -> Self {
        let asked = Asked {
            correlation_id: Some(req.correlation_id.as_str()),
            turn_id: Some(req.turn_id.as_str()),
            requester_engine_id: Some(req.requester.engine.as_str()),
            requester_user_id: req.requester.user.as_ref().map(|v| v.as_str()),
            operation: Some(req.operation),
        };
        Self::answering(&req.tenant_id, &asked, bundle, at_ms, replayed)
    }

    fn answering(
        tenant: &TenantId,
        asked: &Asked<'_>,
        bundle: &MaterialBundle,
        at_ms: u64,
        replayed: bool,
    ) -> Self {
        Self {
            seq: 0,
            at_ms,
            tenant_id: tenant.as_str().to_owned(),
            principal_id: None,
            correlation_id: asked.correlation_id.map(str::to_owned),
            turn_id: asked.turn_id.map(str::to_owned),
            requester_engine_id: asked.requester_engine_id.map(str::to_owned),
            requester_user_id: asked.requester_user_id.map(str::to_owned),
            operation: bundle.operation.or(asked.operation).map(AuditAction::from),
            dry_run: bundle.dry_run,
            replayed,
            reason_code: bundle.reason_code,
            validation_status: bundle.validation_status,
            secret_ref: bundle.secret_ref.clone(),
            handle_id: bundle
                .secret_handle
                .as_deref()
                .and_then(|h| ref_id(RefKind::Handle, h))
                .map(|id| id.as_str().to_owned()),
            credential_id: bundle
                .ephemeral_credential_ref
                .as_deref()
                .and_then(|c| ref_id(RefKind::Credential, c))
                .map(|id| id.as_str().to_owned()),
            tombstone_ref: bundle.revoked.as_ref().map(|t| t.tombstone_ref.clone()),
            rotated_version: bundle.rotated_version,
            simulation_id: bundle.simulation_id.clone(),
            policy_version: None,
            target_principal_id: None,
            target_token_id: None,
            policy_digest: None,
            terms_digest: None,
            took_staged: None,
            revoked_target: bundle.revoked.as_ref().map(|t| t.target),
            revoked_version: bundle.revoked.as_ref().and_then(|t| t.version),
            revoked_until_ms: None,
            bundle_digest: None,
            key_version: None,
            min_decryption_version: None,
            prev_digest: String::new(),
            digest: String::new(),
            mac: None,
        }
    }

    /// A record of an action that is not a KMS request (redemption, provisioning).
    pub fn for_action(
        tenant: &TenantId,
        action: AuditAction,
        reason_code: ReasonCode,
        at_ms: u64,
    ) -> Self {
        Self {
            seq: 0,
            at_ms,
            tenant_id: tenant.as_str().to_owned(),
            principal_id: None,
            correlation_id: None,
            turn_id: None,
            requester_engine_id: None,
            requester_user_id: None,
            operation: Some(action),
            dry_run: false,
            replayed: false,
            reason_code,
            validation_status: if reason_code.is_ok() {
                ValidationStatus::Ok
            } else {
                ValidationStatus::Fail
            },
            secret_ref: None,
            handle_id: None,
            credential_id: None,
            tombstone_ref: None,
            rotated_version: None,
            simulation_id: None,
            policy_version: None,
            target_principal_id: None,
            target_token_id: None,
            policy_digest: None,
            terms_digest: None,
            took_staged: None,
            revoked_target: None,
            revoked_version: None,
            revoked_until_ms: None,
            bundle_digest: None,
            key_version: None,
            min_decryption_version: None,
            prev_digest: String::new(),
            digest: String::new(),
            mac: None,
        }
    }

    /// The record of a committed request that makes `change`: a revocation of one handle or
    /// credential names the revoked ref's id and until when the revocation holds, and a
    /// rotation whether it took the staged material, so that the chain tells which revocations
    /// and staged material the store must hold.
    #[must_use]
    pub fn making(mut self, change: &StateChange) -> Self {
        match change {
            StateChange::RevokeHandle { id, expires_at_ms } => {
                self.handle_id = Some(id.as_str().to_owned());
                self.revoked_until_ms = Some(*expires_at_ms);
            }
            StateChange::RevokeCredential { id, expires_at_ms } => {
                self.credential_id = Some(id.as_str().to_owned());
                self.revoked_until_ms = Some(*expires_at_ms);
            }
            StateChange::Rotate { from_staged, .. } => self.took_staged = Some(*from_staged),
            _ => {}
        }
        self
    }

    /// The record of a decision answered with `bytes`.
    #[must_use]
    pub fn answered(mut self, bytes: &[u8]) -> Self {
        self.bundle_digest = Some(answer_digest(bytes));
        self
    }

    /// The record as made by `principal`.
    #[must_use]
    pub fn by(mut self, principal: &PrincipalId) -> Self {
        self.principal_id = Some(principal.as_str().to_owned());
        self
    }

    /// Whether `other` records the same thing: every field but the chain's own (`seq`,
    /// `prev_digest`, `digest`, `mac`) and who acted, which a replay takes from the record.
    pub fn says_the_same_as(&self, other: &Self) -> bool {
        // Destructured, so that a new field must be placed here or on the list of ignored ones.
        let Self {
            seq: _,
            at_ms,
            tenant_id,
            principal_id: _,
            correlation_id,
            turn_id,
            requester_engine_id,
            requester_user_id,
            operation,
            dry_run,
            replayed,
            reason_code,
            validation_status,
            secret_ref,
            handle_id,
            credential_id,
            tombstone_ref,
            rotated_version,
            simulation_id,
            policy_version,
            target_principal_id,
            target_token_id,
            policy_digest,
            terms_digest,
            took_staged,
            revoked_target,
            revoked_version,
            revoked_until_ms,
            bundle_digest,
            key_version,
            min_decryption_version,
            prev_digest: _,
            digest: _,
            mac: _,
        } = self;
        *at_ms == other.at_ms
            && *tenant_id == other.tenant_id
            && *correlation_id == other.correlation_id
            && *turn_id == other.turn_id
            && *requester_engine_id == other.requester_engine_id
            && *requester_user_id == other.requester_user_id
            && *operation == other.operation
            && *dry_run == other.dry_run
            && *replayed == other.replayed
            && *reason_code == other.reason_code
            && *validation_status == other.validation_status
            && *secret_ref == other.secret_ref
            && *handle_id == other.handle_id
            && *credential_id == other.credential_id
            && *tombstone_ref == other.tombstone_ref
            && *rotated_version == other.rotated_version
            && *simulation_id == other.simulation_id
            && *policy_version == other.policy_version
            && *target_principal_id == other.target_principal_id
            && *target_token_id == other.target_token_id
            && *policy_digest == other.policy_digest
            && *terms_digest == other.terms_digest
            && *took_staged == other.took_staged
            && *revoked_target == other.revoked_target
            && *revoked_version == other.revoked_version
            && *revoked_until_ms == other.revoked_until_ms
            && *bundle_digest == other.bundle_digest
            && *key_version == other.key_version
            && *min_decryption_version == other.min_decryption_version
    }

    /// Places the record at `seq` after a record whose digest is `prev_digest`, and computes its
    /// own digest.
    pub fn chain(&mut self, seq: u64, prev_digest: &str) {
        self.seq = seq;
        self.prev_digest.clear();
        self.prev_digest.push_str(prev_digest);
        self.digest = self.compute_digest();
    }

    /// Sets the record's MAC over its digest (after [`AuditRecord::chain`]).
    pub fn seal(&mut self, keys: &ServiceKeys) {
        self.mac = Some(hex(&record_mac(keys, &self.digest)));
    }

    /// Whether the record carries the MAC of its digest, compared in constant time. A record
    /// whose content no longer matches its digest fails [`ChainVerifier::push`] instead.
    pub fn mac_holds(&self, keys: &ServiceKeys) -> bool {
        self.mac
            .as_deref()
            .and_then(unhex::<32>)
            .is_some_and(|mac| {
                keys.row_mac_holds(RECORD_MAC_TABLE, &[Column::Text(&self.digest)], &mac)
            })
    }

    /// The digest of every field but `digest` and `mac`, over a canonical binary encoding.
    pub fn compute_digest(&self) -> String {
        let mut e = Encoder::with_domain("selene-kms/audit-record/v1");
        e.u64(self.seq)
            .u64(self.at_ms)
            .str(&self.tenant_id)
            .opt_str(self.correlation_id.as_deref())
            .opt_str(self.turn_id.as_deref())
            .opt_str(self.requester_engine_id.as_deref())
            .opt_str(self.requester_user_id.as_deref())
            .opt_str(self.operation.map(AuditAction::name))
            .u8(u8::from(self.dry_run))
            .u8(u8::from(self.replayed))
            .str(self.reason_code.name())
            .u8(u8::from(self.validation_status == ValidationStatus::Ok))
            .opt_str(self.secret_ref.as_deref())
            .opt_str(self.handle_id.as_deref())
            .opt_str(self.credential_id.as_deref())
            .opt_str(self.tombstone_ref.as_deref())
            .opt_u64(self.rotated_version)
            .opt_str(self.simulation_id.as_deref())
            .str(&self.prev_digest);
        // Fields added after the first release are encoded after the others, and only when one
        // is set, so records written before them keep their digests. The encoding stays
        // unambiguous: every field is length- or tag-prefixed, so trailing bytes are never
        // part of `prev_digest`.
        // A later group is encoded only with every earlier one before it, so each record has
        // one encoding.
        let keyed = self.key_version.is_some() || self.min_decryption_version.is_some();
        let answered = keyed || self.bundle_digest.is_some();
        let newest = answered
            || [
                self.revoked_until_ms.is_some(),
                self.terms_digest.is_some(),
                self.took_staged.is_some(),
            ]
            .contains(&true);
        let later = newest
            || [
                self.policy_digest.is_some(),
                self.revoked_target.is_some(),
                self.revoked_version.is_some(),
            ]
            .contains(&true);
        let added = [
            self.principal_id.is_some(),
            self.policy_version.is_some(),
            self.target_principal_id.is_some(),
            self.target_token_id.is_some(),
        ]
        .contains(&true);
        if added || later {
            e.opt_str(self.principal_id.as_deref())
                .opt_u64(self.policy_version)
                .opt_str(self.target_principal_id.as_deref())
                .opt_str(self.target_token_id.as_deref());
        }
        if later {
            e.opt_str(self.policy_digest.as_deref())
                .opt_str(self.revoked_target.map(TombstoneTarget::name))
                .opt_u64(self.revoked_version);
        }
        if newest {
            e.opt_u64(self.revoked_until_ms)
                .opt_str(self.terms_digest.as_deref())
                .opt_u64(self.took_staged.map(u64::from));
        }
        if answered {
            e.opt_str(self.bundle_digest.as_deref());
        }
        if keyed {
            e.opt_u64(self.key_version)
                .opt_u64(self.min_decryption_version);
        }
        hex(&Sha256::digest(e.as_slice()))
    }
}

/// The `bundle_digest` of an answer's bytes.
pub fn answer_digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Who asked what, as a record of a KMS request names it.
struct Asked<'a> {
    correlation_id: Option<&'a str>,
    turn_id: Option<&'a str>,
    requester_engine_id: Option<&'a str>,
    requester_user_id: Option<&'a str>,
    operation: Option<Operation>,
}

/// What a record's MAC is domain-separated by among the store's row MACs.
const RECORD_MAC_TABLE: &str = "audit";

fn record_mac(keys: &ServiceKeys, digest: &str) -> [u8; 32] {
    keys.row_mac(RECORD_MAC_TABLE, &[Column::Text(digest)])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        push_hex(&mut s, *b);
    }
    s
}

pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let bytes = s.as_bytes();
    if bytes.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// A signed statement that a tenant's chain had `digest` at `seq`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The chain's tenant.
    pub tenant_id: String,
    /// The record the checkpoint covers, and every record before it.
    pub seq: u64,
    /// That record's digest.
    pub digest: String,
    /// Signing time.
    pub at_ms: u64,
    /// The Ed25519 public key, hex.
    pub public_key: String,
    /// The Ed25519 signature, hex.
    pub signature: String,
}

fn checkpoint_message(tenant: &str, seq: u64, digest: &str, at_ms: u64) -> Vec<u8> {
    let mut e = Encoder::with_domain("selene-kms/audit-checkpoint/v1");
    e.str(tenant).u64(seq).str(digest).u64(at_ms);
    e.finish()
}

impl Checkpoint {
    /// Signs the chain head `(seq, digest)` of `tenant`.
    pub fn sign(keys: &ServiceKeys, tenant: &str, seq: u64, digest: &str, at_ms: u64) -> Self {
        let message = checkpoint_message(tenant, seq, digest, at_ms);
        let signature = keys.audit_signing.sign(&message);
        Self {
            tenant_id: tenant.to_owned(),
            seq,
            digest: digest.to_owned(),
            at_ms,
            public_key: hex(keys.audit_verifying_key().as_bytes()),
            signature: hex(&signature.to_bytes()),
        }
    }

    /// Whether the signature is valid under `key` (which must also be the key named inside).
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        if self.public_key != hex(key.as_bytes()) {
            return false;
        }
        let Some(sig) = unhex::<64>(&self.signature) else {
            return false;
        };
        let message = checkpoint_message(&self.tenant_id, self.seq, &self.digest, self.at_ms);
        key.verify(&message, &Signature::from_bytes(&sig)).is_ok()
    }
}

/// Parses a hex-encoded Ed25519 public key, as printed by the KMS.
pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(&unhex::<32>(text.trim())?).ok()
}

/// Hex form of the audit public key.
pub fn public_key_hex(keys: &ServiceKeys) -> String {
    hex(keys.audit_verifying_key().as_bytes())
}

/// How a chain is broken, at the first bad record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// The record's content does not match its digest (altered).
    #[error("record {seq}: digest does not match its content")]
    DigestMismatch {
        /// The bad record.
        seq: u64,
    },
    /// The record expected at `seq` is missing, out of order, or forked from another chain.
    #[error("record {seq}: missing, out of order, or not linked to the previous record")]
    Discontinuity {
        /// The bad record.
        seq: u64,
    },
    /// The record's MAC is missing or wrong: it was written without the KMS's key.
    #[error("record {seq}: its MAC is missing or wrong (not written by the KMS)")]
    Unauthenticated {
        /// The bad record.
        seq: u64,
    },
    /// The record is not the one a signed manifest (or a witness) names at this position.
    #[error("record {seq}: differs from the head a signed manifest names")]
    Diverges {
        /// The bad record.
        seq: u64,
    },
    /// Records a signed manifest (or a witness) names are gone: the chain was cut, or all of
    /// it removed (`seq` 1).
    #[error("records from {seq} on are gone, below a head a signed manifest names")]
    Cut {
        /// The first missing record.
        seq: u64,
    },
    /// A checkpoint's signature or digest does not hold.
    #[error("checkpoint at record {seq}: signature or digest does not hold")]
    BadCheckpoint {
        /// The record the checkpoint names.
        seq: u64,
    },
    /// Records after the last signed manifest or checkpoint are not covered by any signature.
    #[error("records after {seq} are not covered by a signed manifest")]
    Unsigned {
        /// The last covered record (0 for none).
        seq: u64,
    },
}

/// Checks one tenant's records in order.
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    next_seq: u64,
    prev_digest: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            next_seq: 1,
            prev_digest: GENESIS_DIGEST.to_owned(),
        }
    }
}

impl ChainVerifier {
    /// Checks the next record.
    pub fn push(&mut self, record: &AuditRecord) -> Result<(), ChainBreak> {
        if record.seq != self.next_seq || record.prev_digest != self.prev_digest {
            // Name the position where the expected record is missing or out of place.
            return Err(ChainBreak::Discontinuity { seq: self.next_seq });
        }
        if record.compute_digest() != record.digest {
            return Err(ChainBreak::DigestMismatch { seq: record.seq });
        }
        self.next_seq = record.seq.saturating_add(1);
        self.prev_digest.clone_from(&record.digest);
        Ok(())
    }

    /// The last verified record: `(seq, digest)`.
    pub fn head(&self) -> (u64, &str) {
        (self.next_seq.saturating_sub(1), &self.prev_digest)
    }
}
