//! The operations themselves, over a key's material: HMAC-SHA256 (RFC 2104), Ed25519
//! (RFC 8032) and AES-256-GCM, each from a library made for it. The core draws no randomness:
//! an encryption's nonce is the host's argument.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::request::{Ciphertext, Data, Input, NONCE_LEN, Tag};
use crate::diagnostics::{Problem, Subject};
use crate::encode::Encoder;
use crate::ids::{SecretName, TenantId};
use crate::material::{MATERIAL_LEN, SecretMaterial};
use crate::reason::ReasonCode;
use crate::redeem::MaterialGrant;
use crate::refusal::Refusal;

/// What an operation gives back.
pub enum Output {
    /// `mac`: the tag.
    Mac(Vec<u8>),
    /// `sign`: the signature.
    Signature(Vec<u8>),
    /// `verify`: whether the tag or signature holds.
    Valid(bool),
    /// `encrypt`: the ciphertext's wire form.
    Ciphertext(String),
    /// `decrypt`: the plaintext, wiped when dropped.
    Plaintext(Data),
}

/// A key's material that is not the 32 bytes every key purpose has: the store holds something
/// it never sealed for a key.
fn bad_key() -> Refusal {
    Refusal::new(
        ReasonCode::InternalPipelineError,
        Subject::Material,
        Problem::Invalid,
    )
}

fn key_bytes(key: &SecretMaterial) -> Result<&[u8; MATERIAL_LEN], Refusal> {
    key.expose().try_into().map_err(|_| bad_key())
}

/// HMAC takes a key of any length (RFC 2104); the store holds keys of 32 bytes.
fn hmac(key: &SecretMaterial, data: &[u8]) -> Result<Hmac<Sha256>, Refusal> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose()).map_err(|_| bad_key())?;
    mac.update(data);
    Ok(mac)
}

fn signing_key(key: &SecretMaterial) -> Result<SigningKey, Refusal> {
    Ok(SigningKey::from_bytes(key_bytes(key)?))
}

fn cipher(key: &SecretMaterial) -> Result<Aes256Gcm, Refusal> {
    Aes256Gcm::new_from_slice(key_bytes(key)?).map_err(|_| bad_key())
}

/// The raw 32-byte public key of an Ed25519 key held as its seed.
pub fn public_key(key: &SecretMaterial) -> Result<[u8; 32], Refusal> {
    Ok(signing_key(key)?.verifying_key().to_bytes())
}

/// Which key version of which secret an operation uses: what a ciphertext is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyUse {
    tenant: TenantId,
    secret_name: SecretName,
    version: u64,
}

impl KeyUse {
    /// Version `version` of `secret_name` in `tenant`.
    pub fn new(tenant: TenantId, secret_name: SecretName, version: u64) -> Self {
        Self {
            tenant,
            secret_name,
            version,
        }
    }

    /// What a grant lets the host read, before the read consumes it.
    pub fn of(grant: &MaterialGrant) -> Self {
        Self::new(
            grant.tenant().clone(),
            grant.secret_name().clone(),
            grant.version(),
        )
    }

    /// The associated data a ciphertext of this key version is sealed with: its tenant, secret
    /// and version, then the caller's. The version in a ciphertext's text is thereby
    /// authenticated: relabelled to another version (or moved to another secret) it does not
    /// open, even where two versions hold the same imported material.
    fn bound_aad(&self, aad: &[u8]) -> Vec<u8> {
        let mut e = Encoder::with_domain("selene-kms/ciphertext/v1");
        e.str(self.tenant.as_str())
            .str(self.secret_name.as_str())
            .u64(self.version)
            .bytes(aad);
        e.finish()
    }
}

/// AES-256-GCM of `plaintext` with `aad` under `key` and `nonce`: the nonce, then the ciphertext
/// and its tag.
pub fn aes_256_gcm_seal(
    key: &SecretMaterial,
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, Refusal> {
    let sealed = cipher(key)?
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| bad_key())?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens what [`aes_256_gcm_seal`] sealed with the same `aad`; the tag is checked before any
/// plaintext exists.
pub fn aes_256_gcm_open(key: &SecretMaterial, sealed: &[u8], aad: &[u8]) -> Result<Data, Refusal> {
    let (nonce, body) = sealed
        .split_at_checked(NONCE_LEN)
        .ok_or_else(undecryptable)?;
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| undecryptable())?;
    cipher(key)?
        .decrypt((&nonce).into(), Payload { msg: body, aad })
        .map(Zeroizing::new)
        .map_err(|_| undecryptable())
}

/// Runs `input` with `key`, the key version `used` names; `nonce` is used by an encryption only
/// and must be fresh from a random source for every one. The host has checked that the key's
/// purpose is the one the input needs ([`Input::purpose`]).
pub fn perform(
    key: &SecretMaterial,
    used: &KeyUse,
    input: &Input,
    nonce: [u8; NONCE_LEN],
) -> Result<Output, Refusal> {
    match input {
        Input::Mac { data } => Ok(Output::Mac(
            hmac(key, data)?.finalize().into_bytes().to_vec(),
        )),
        Input::Sign { data } => Ok(Output::Signature(
            signing_key(key)?.sign(data).to_bytes().to_vec(),
        )),
        Input::Verify {
            data,
            tag: Tag::Mac(tag),
        } => Ok(Output::Valid(hmac(key, data)?.verify_slice(tag).is_ok())),
        Input::Verify {
            data,
            tag: Tag::Signature(sig),
        } => {
            let public: VerifyingKey = signing_key(key)?.verifying_key();
            let valid = Signature::from_slice(sig)
                .is_ok_and(|sig| public.verify_strict(data, &sig).is_ok());
            Ok(Output::Valid(valid))
        }
        Input::Encrypt { plaintext, aad } => {
            let sealed = aes_256_gcm_seal(key, nonce, plaintext, &used.bound_aad(aad))?;
            Ok(Output::Ciphertext(Ciphertext::encode(
                used.version,
                &sealed,
            )))
        }
        Input::Decrypt { ciphertext, aad } => {
            aes_256_gcm_open(key, &ciphertext.sealed, &used.bound_aad(aad)).map(Output::Plaintext)
        }
    }
}

/// A ciphertext that does not open under its version's key with the given associated data.
fn undecryptable() -> Refusal {
    Refusal::new(
        ReasonCode::InputSchemaInvalid,
        Subject::Ciphertext,
        Problem::Invalid,
    )
}
