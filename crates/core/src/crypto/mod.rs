//! Crypto with handles: keys that never leave the KMS.
//!
//! An executor presents a handle to a key and data; [`check`] decides, as redemption does,
//! whether the handle may still be used, and grants the read of the one key version the
//! operation needs ([`MaterialGrant`]); [`perform`] then runs it. No key, data or result is
//! ever in a refusal, a record or a `Debug` form.

mod ops;
mod request;

pub use ops::{KeyUse, Output, aes_256_gcm_open, aes_256_gcm_seal, perform, public_key};
pub use request::{
    CIPHERTEXT_PREFIX, Ciphertext, CryptoOp, CryptoRequest, Data, Input, MAX_DATA_LEN, NONCE_LEN,
    RawCryptoRequest, Tag,
};

use crate::diagnostics::{Problem, Subject};
use crate::keys::ServiceKeys;
use crate::policy::Policy;
use crate::purpose::Purpose;
use crate::reason::ReasonCode;
use crate::redeem::{MaterialGrant, grant_version, purpose_mismatch, usable};
use crate::refs::{self, OpenedGrant, RefKind};
use crate::refusal::Refusal;
use crate::state::SecretSnapshot;

impl CryptoRequest {
    /// Opens the presented handle under the request's tenant (`KMS_HANDLE_INVALID` if it does
    /// not: altered, of another tenant, or not a handle at all).
    pub fn open(&self, keys: &ServiceKeys) -> Result<OpenedGrant, Refusal> {
        refs::open_grant(keys, RefKind::Handle, &self.tenant_id, &self.handle)
            .map_err(|_| Refusal::new(ReasonCode::HandleInvalid, Subject::Handle, Problem::Invalid))
    }
}

/// Checks an opened handle as redemption does (tenant enabled, secret there, handle neither
/// revoked nor expired, its version active), then the key's purpose against the operation, then
/// the version the operation uses: the handle's for `mac`, `sign`, `verify` and `encrypt`; the
/// ciphertext's for `decrypt`, which must be active too. Versions below the secret's
/// `min_decryption_version` are retired: nothing is encrypted under them any more (it could
/// never be decrypted), nor decrypted.
pub fn check(
    opened: &OpenedGrant,
    policy: Option<&Policy>,
    secret: Option<&SecretSnapshot>,
    ref_revoked: bool,
    now_ms: u64,
    input: &Input,
) -> Result<MaterialGrant, Refusal> {
    let secret = usable(opened, policy, secret, ref_revoked, now_ms)?;
    if secret.purpose != input.purpose() {
        return Err(purpose_mismatch());
    }
    // The handle's own version must be usable, whatever version the operation then uses: a
    // revoked version's handles stop, as at redemption.
    let handle_version = opened.claims.version;
    let own = grant_version(
        opened,
        secret,
        handle_version,
        (ReasonCode::HandleInvalid, Subject::Handle),
    )?;
    let retired = |version: u64| {
        (version < secret.min_decryption_version)
            .then(|| Refusal::new(ReasonCode::Revoked, Subject::Version, Problem::BelowMin))
    };
    match input {
        Input::Decrypt { ciphertext, .. } => {
            if let Some(refusal) = retired(ciphertext.version) {
                return Err(refusal);
            }
            let missing = (ReasonCode::InputSchemaInvalid, Subject::Ciphertext);
            grant_version(opened, secret, ciphertext.version, missing)
        }
        Input::Encrypt { .. } => retired(handle_version).map_or(Ok(own), Err),
        _ => Ok(own),
    }
}

/// Grants the reads an admin's public-key listing needs: every version of an Ed25519 key
/// (`KMS_PURPOSE_MISMATCH` for any other secret). Public keys reveal nothing of the seeds.
pub fn public_key_grants(
    tenant: &crate::ids::TenantId,
    name: &crate::ids::SecretName,
    secret: &SecretSnapshot,
) -> Result<Vec<MaterialGrant>, Refusal> {
    if secret.purpose != Purpose::Ed25519 {
        return Err(purpose_mismatch());
    }
    Ok((1..=secret.current_version())
        .map(|version| MaterialGrant::new(tenant.clone(), name.clone(), version, secret.purpose))
        .collect())
}
