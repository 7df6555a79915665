//! Secret material: the one type that holds a secret value.
//!
//! It has a private field and implements neither `Debug`, `Display`, `Serialize` nor `Clone`, so
//! no formatting, logging or serialization path can carry a value; it is zeroized on drop.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use hmac::Mac;

use crate::keys::ServiceKeys;
use crate::refs::{RefGeneration, RefId};

/// Length of generated material and of derived ephemeral credentials.
pub const MATERIAL_LEN: usize = 32;
/// Largest material an admin may import.
pub const MAX_MATERIAL_LEN: usize = 8192;

/// A secret value.
pub struct SecretMaterial(Zeroizing<Vec<u8>>);

impl SecretMaterial {
    /// Takes ownership of `bytes`; they are zeroized when the material is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into new material.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// The value. Callers are the sealing code of the store (which encrypts it at once) and the
    /// redemption path (the one place a value leaves, to an authenticated executor).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ephemeral credential value for one issued credential: HKDF-SHA256 of this version's
    /// material, so every issuance yields a distinct value and none reveals the parent. The salt
    /// is a keyed PRF of the credential's id under a key of the store, so a redeemed value and
    /// its id give no offline test of a guessed parent. Credentials of the first ref generation
    /// were salted with the bare id; they keep their values until they expire.
    pub fn derive_ephemeral(
        &self,
        keys: &ServiceKeys,
        credential: &RefId,
        generation: RefGeneration,
    ) -> Self {
        let salt = match generation {
            RefGeneration::First => credential.as_str().as_bytes().to_vec(),
            RefGeneration::Second => {
                let mut mac = keys.ephemeral.clone();
                mac.update(b"selene-kms/ephemeral-salt/v2");
                mac.update(credential.as_str().as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
        };
        let hk = Hkdf::<Sha256>::new(Some(&salt), self.expose());
        let mut out = Zeroizing::new(vec![0u8; MATERIAL_LEN]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit, so expand cannot fail.
        let _ = hk.expand(b"selene-kms/ephemeral-credential/v1", &mut out);
        Self(out)
    }
}
