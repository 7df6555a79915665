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
use crate::material::{MATERIAL_LEN, SecretMaterial};
use crate::reason::ReasonCode;
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

/// Runs `input` with `key`, of the key version `version`; `nonce` is used by an encryption only
/// and must be fresh from a random source for every one. The host has checked that the key's
/// purpose is the one the input needs ([`Input::purpose`]).
pub fn perform(
    key: &SecretMaterial,
    version: u64,
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
            Ok(Output::Ciphertext(Ciphertext::encode(version, &out)))
        }
        Input::Decrypt { ciphertext, aad } => {
            let (nonce, sealed) = ciphertext
                .sealed
                .split_at_checked(NONCE_LEN)
                .ok_or_else(undecryptable)?;
            let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| undecryptable())?;
            cipher(key)?
                .decrypt((&nonce).into(), Payload { msg: sealed, aad })
                .map(|plain| Output::Plaintext(Zeroizing::new(plain)))
                .map_err(|_| undecryptable())
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
