//! What a secret is for: a credential an executor redeems, or a key the KMS uses on a caller's
//! behalf and never releases.

use serde::{Deserialize, Serialize};

use crate::material::MATERIAL_LEN;

/// A secret's purpose, set when it is created and never changed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Purpose {
    /// Redeemable material (the v1 behaviour).
    #[default]
    #[serde(rename = "credential")]
    Credential,
    /// An HMAC-SHA256 key: `mac` and `verify` with `mac_b64`.
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// An Ed25519 signing key, held as its 32-byte seed: `sign` and `verify` with
    /// `signature_b64`, and a public key.
    #[serde(rename = "ed25519")]
    Ed25519,
    /// An AES-256-GCM key: `encrypt` and `decrypt`.
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

impl Purpose {
    /// Every purpose, in a fixed order.
    pub const ALL: [Self; 4] = [
        Self::Credential,
        Self::HmacSha256,
        Self::Ed25519,
        Self::Aes256Gcm,
    ];

    /// The wire and storage name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Credential => "credential",
            Self::HmacSha256 => "hmac-sha256",
            Self::Ed25519 => "ed25519",
            Self::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// Parses [`Purpose::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether this is a key that never leaves the KMS.
    pub const fn is_key(self) -> bool {
        !matches!(self, Self::Credential)
    }

    /// Whether `len` bytes of material fit this purpose: a key is exactly 32 bytes, a
    /// credential anything the import limits allow.
    pub const fn fits(self, len: usize) -> bool {
        !self.is_key() || len == MATERIAL_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_the_wire() {
        for purpose in Purpose::ALL {
            assert_eq!(Purpose::from_name(purpose.name()), Some(purpose));
            let json = serde_json::to_string(&purpose).expect("serializes");
            assert_eq!(json, format!("\"{}\"", purpose.name()));
        }
        assert_eq!(Purpose::from_name("rsa"), None);
        assert_eq!(Purpose::default(), Purpose::Credential);
    }

    #[test]
    fn only_keys_are_held_to_32_bytes() {
        assert!(Purpose::Credential.fits(7));
        for key in [Purpose::HmacSha256, Purpose::Ed25519, Purpose::Aes256Gcm] {
            assert!(key.is_key());
            assert!(key.fits(32));
            assert!(!key.fits(31) && !key.fits(33));
        }
    }
}
