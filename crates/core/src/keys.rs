//! Keys the core uses, all derived from one 256-bit service secret supplied by the host.
//!
//! The service secret is random per store (made by `init`) and kept wrapped by the root key, so a
//! root-key rotation leaves every ref valid, while refs of one store never open in another.

use aes_gcm_siv::{Aes256GcmSiv, KeyInit};
use ed25519_dalek::{SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::encode::Encoder;

/// Length of every symmetric key here.
pub const KEY_LEN: usize = 32;

/// The 256-bit service secret. No `Debug`, `Clone` or `Serialize`; zeroized on drop.
pub struct ServiceSecret(Zeroizing<[u8; KEY_LEN]>);

impl ServiceSecret {
    /// Wraps raw bytes (from the key store or from tests).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw bytes, for the store to wrap under the root key.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// The derived keys. No `Debug` or `Clone`; each part zeroizes itself on drop.
pub struct ServiceKeys {
    pub(crate) refs: Aes256GcmSiv,
    pub(crate) simulation: Hmac<Sha256>,
    pub(crate) audit_signing: SigningKey,
    token_verifiers: Hmac<Sha256>,
    row_macs: Hmac<Sha256>,
    pub(crate) ref_nonces: Hmac<Sha256>,
    pub(crate) ephemeral: Hmac<Sha256>,
}

/// One column of a stored row, as [`ServiceKeys::row_mac`] encodes it.
#[derive(Clone, Copy, Debug)]
pub enum Column<'a> {
    /// Text.
    Text(&'a str),
    /// Text or NULL.
    OptText(Option<&'a str>),
    /// A number.
    Number(u64),
    /// A number or NULL.
    OptNumber(Option<u64>),
    /// Bytes.
    Bytes(&'a [u8]),
}

fn derive(hk: &Hkdf<Sha256>, label: &str) -> Zeroizing<[u8; KEY_LEN]> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
    let _ = hk.expand(label.as_bytes(), out.as_mut());
    out
}

impl ServiceKeys {
    /// Derives every key from the service secret with HKDF-SHA256 and distinct labels.
    pub fn derive(secret: &ServiceSecret) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"selene-kms/service-keys/v1"), secret.expose());
        let refs_key = derive(&hk, "opaque-refs/aes-256-gcm-siv");
        let sim_key = derive(&hk, "simulation-id/hmac-sha256");
        let verifier_key = derive(&hk, "caller-token-verifiers/hmac-sha256");
        let row_key = derive(&hk, "state-rows/hmac-sha256");
        let nonce_key = derive(&hk, "ref-nonces/hmac-sha256");
        let ephemeral_key = derive(&hk, "ephemeral-credentials/hmac-sha256");
        let mut sign_seed = derive(&hk, "audit-checkpoints/ed25519");
        let audit_signing = SigningKey::from_bytes(&sign_seed);
        sign_seed.zeroize();
        Self {
            refs: Aes256GcmSiv::new((&*refs_key).into()),
            simulation: hmac_key(&sim_key),
            audit_signing,
            token_verifiers: hmac_key(&verifier_key),
            row_macs: hmac_key(&row_key),
            ref_nonces: hmac_key(&nonce_key),
            ephemeral: hmac_key(&ephemeral_key),
        }
    }

    /// A MAC over a stored row of `table`: its columns, in a canonical length-prefixed encoding,
    /// under a key only the KMS holds. Whoever can write the database but lacks the root key
    /// cannot forge, edit or swap such a row without failing [`ServiceKeys::row_mac_holds`].
    pub fn row_mac(&self, table: &str, columns: &[Column<'_>]) -> [u8; KEY_LEN] {
        let mut e = Encoder::with_domain("selene-kms/state-row/v1");
        e.str(table);
        for column in columns {
            match *column {
                Column::Text(t) => e.str(t),
                Column::OptText(t) => e.opt_str(t),
                Column::Number(n) => e.u64(n),
                Column::OptNumber(n) => e.opt_u64(n),
                Column::Bytes(b) => e.bytes(b),
            };
        }
        let mut mac = self.row_macs.clone();
        mac.update(e.as_slice());
        mac.finalize().into_bytes().into()
    }

    /// Whether `stored` is the row's MAC, compared in constant time.
    pub fn row_mac_holds(&self, table: &str, columns: &[Column<'_>], stored: &[u8]) -> bool {
        let expected = self.row_mac(table, columns);
        bool::from(expected.as_slice().ct_eq(stored))
    }

    /// What a caller token is stored and looked up as: HMAC-SHA256 under a key derived from the
    /// service secret, so a row written by someone without the root key never matches a token,
    /// and a stolen table tests no guess offline. Tokens carry 256 random bits, so one MAC is
    /// enough (nothing is gained by stretching). Lookups go by this value through an index: the
    /// raw token is never compared, and its MAC cannot be steered toward a stored one.
    pub fn token_verifier(&self, token: &str) -> [u8; KEY_LEN] {
        let mut mac = self.token_verifiers.clone();
        mac.update(b"selene-kms/caller-token/v2");
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The public key that verifies audit checkpoints; safe to publish.
    pub fn audit_verifying_key(&self) -> VerifyingKey {
        self.audit_signing.verifying_key()
    }
}

/// An HMAC-SHA256 instance keyed with 32 bytes. A key shorter than the 64-byte block is
/// zero-padded by HMAC's definition (RFC 2104), so padding it here gives the same MAC and makes
/// construction infallible.
fn hmac_key(key: &[u8; KEY_LEN]) -> Hmac<Sha256> {
    let mut block = Zeroizing::new([0u8; 64]);
    for (b, k) in block.iter_mut().zip(key) {
        *b = *k;
    }
    <Hmac<Sha256> as KeyInit>::new((&*block).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(byte: u8) -> ServiceKeys {
        ServiceKeys::derive(&ServiceSecret::from_bytes([byte; KEY_LEN]))
    }

    #[test]
    fn a_row_mac_holds_only_for_its_own_row_table_and_store() {
        let k = keys(1);
        let row = [
            Column::Text("kp_1"),
            Column::OptNumber(None),
            Column::Bytes(b"v"),
        ];
        let mac = k.row_mac("principals", &row);
        assert!(k.row_mac_holds("principals", &row, &mac));
        assert!(
            !k.row_mac_holds("principal_tokens", &row, &mac),
            "another table"
        );
        assert!(
            !keys(2).row_mac_holds("principals", &row, &mac),
            "another store"
        );
        let edited = [
            Column::Text("kp_1"),
            Column::OptNumber(Some(0)),
            Column::Bytes(b"v"),
        ];
        assert!(
            !k.row_mac_holds("principals", &edited, &mac),
            "NULL is not 0"
        );
        let empty = [Column::OptText(Some("")), Column::Bytes(b"")];
        let null = [Column::OptText(None), Column::Bytes(b"")];
        assert_ne!(k.row_mac("t", &empty), k.row_mac("t", &null));
        assert!(
            !k.row_mac_holds("principals", &row, &mac[..31]),
            "a short tag"
        );
    }

    #[test]
    fn token_verifiers_are_keyed_per_store() {
        assert_eq!(keys(1).token_verifier("t"), keys(1).token_verifier("t"));
        assert_ne!(keys(1).token_verifier("t"), keys(2).token_verifier("t"));
        assert_ne!(keys(1).token_verifier("t"), keys(1).token_verifier("u"));
    }
}
