//! What a call answered, and the typed answers that need more care than JSON.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::de::DeserializeOwned;
use zeroize::{Zeroize, Zeroizing};

use crate::error::Error;

/// An answer as sent: its status and body.
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// A success's body as `T`; any other answer is an [`Error`].
    pub(crate) fn parse<T: DeserializeOwned>(self) -> Result<T, Error> {
        if !self.is_success() {
            return Err(Error::from_answer(self.status, &self.body));
        }
        serde_json::from_slice(&self.body)
            .map_err(|_| Error::Invalid("the answer is not the expected JSON".to_owned()))
    }

    /// A success's body as text.
    pub(crate) fn text(self) -> Result<String, Error> {
        if !self.is_success() {
            return Err(Error::from_answer(self.status, &self.body));
        }
        String::from_utf8(self.body).map_err(|_| Error::Invalid("the answer is not UTF-8".into()))
    }

    /// A redemption's answer; its body is wiped once read.
    pub(crate) fn redeemed(mut self) -> Result<Redeemed, Error> {
        let outcome = if self.is_success() {
            Redeemed::from_json(&self.body)
        } else {
            Err(Error::from_answer(self.status, &self.body))
        };
        self.body.zeroize();
        outcome
    }
}

/// A redeemed value: the material of a handle's version, or a credential's derived value. Not
/// `Debug`, not `Clone`; wiped when dropped.
pub struct Redeemed {
    material: Zeroizing<Vec<u8>>,
    /// The version the ref is bound to.
    pub version: u64,
    /// When the ref expires, in ms since the epoch.
    pub expires_at_ms: u64,
}

impl Redeemed {
    fn from_json(body: &[u8]) -> Result<Self, Error> {
        // Borrowed from the body (which the caller wipes): no copy of the encoded value.
        #[derive(serde::Deserialize)]
        struct Wire<'a> {
            material_b64: &'a str,
            version: u64,
            expires_at_ms: u64,
        }
        let wire: Wire<'_> = serde_json::from_slice(body)
            .map_err(|_| Error::Invalid("the answer carries no material".to_owned()))?;
        let material = Zeroizing::new(
            STANDARD
                .decode(wire.material_b64.as_bytes())
                .map_err(|_| Error::Invalid("the answer's material is not base64".to_owned()))?,
        );
        if material.is_empty() {
            return Err(Error::Invalid("the answer carries no material".to_owned()));
        }
        Ok(Self {
            material,
            version: wire.version,
            expires_at_ms: wire.expires_at_ms,
        })
    }

    /// The value: use it, do not keep it.
    pub fn expose(&self) -> &[u8] {
        &self.material
    }
}

/// What a crypto operation gave back. A decryption's plaintext is wiped when dropped; nothing
/// here is `Debug`.
pub enum Used {
    /// `mac`: the HMAC-SHA256 tag.
    Mac {
        /// The tag.
        mac: Vec<u8>,
        /// The key version used.
        version: u64,
    },
    /// `sign`: the Ed25519 signature.
    Signature {
        /// The signature.
        signature: Vec<u8>,
        /// The key version used.
        version: u64,
    },
    /// `verify`: whether the signature or tag holds.
    Verified {
        /// Whether it holds.
        valid: bool,
        /// The key version used.
        version: u64,
    },
    /// `encrypt`: the ciphertext, `skc1:<version>:…`.
    Encrypted {
        /// The ciphertext.
        ciphertext: String,
        /// The key version used.
        version: u64,
    },
    /// `decrypt`: the plaintext.
    Decrypted(Plaintext),
}

/// A decrypted plaintext: not `Debug`, not `Clone`; wiped when dropped.
pub struct Plaintext {
    bytes: Zeroizing<Vec<u8>>,
    /// The ciphertext's key version.
    pub version: u64,
}

impl Plaintext {
    /// The plaintext: use it, do not keep it.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }
}

impl Used {
    /// Reads the answer of `op` (`mac`, `sign`, `verify`, `encrypt`, `decrypt`).
    fn from_json(op: &str, body: &[u8]) -> Result<Self, Error> {
        // Borrowed from the body (which the caller wipes): no copy of an encoded plaintext.
        #[derive(serde::Deserialize)]
        struct Wire<'a> {
            version: u64,
            #[serde(borrow)]
            mac_b64: Option<&'a str>,
            signature_b64: Option<&'a str>,
            valid: Option<bool>,
            ciphertext: Option<&'a str>,
            plaintext_b64: Option<&'a str>,
        }
        let invalid = || Error::Invalid(format!("the answer is not a {op} answer"));
        let wire: Wire<'_> = serde_json::from_slice(body).map_err(|_| invalid())?;
        let decode = |text: Option<&str>| {
            text.and_then(|t| STANDARD.decode(t.as_bytes()).ok())
                .ok_or_else(invalid)
        };
        let version = wire.version;
        Ok(match op {
            "mac" => Self::Mac {
                mac: decode(wire.mac_b64)?,
                version,
            },
            "sign" => Self::Signature {
                signature: decode(wire.signature_b64)?,
                version,
            },
            "verify" => Self::Verified {
                valid: wire.valid.ok_or_else(invalid)?,
                version,
            },
            "encrypt" => Self::Encrypted {
                ciphertext: wire.ciphertext.ok_or_else(invalid)?.to_owned(),
                version,
            },
            "decrypt" => Self::Decrypted(Plaintext {
                bytes: Zeroizing::new(decode(wire.plaintext_b64)?),
                version,
            }),
            _ => return Err(invalid()),
        })
    }
}

impl Answer {
    /// A crypto operation's answer; its body is wiped once read.
    pub(crate) fn used(mut self, op: &str) -> Result<Used, Error> {
        let outcome = if self.is_success() {
            Used::from_json(op, &self.body)
        } else {
            Err(Error::from_answer(self.status, &self.body))
        };
        self.body.zeroize();
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crypto_answer_is_read_by_its_operation() {
        let answer = |body: &[u8]| Answer {
            status: 200,
            body: body.to_vec(),
        };
        let decrypted = answer(br#"{"plaintext_b64":"aGk=","version":3}"#).used("decrypt");
        assert!(
            matches!(decrypted, Ok(Used::Decrypted(p)) if p.expose() == b"hi" && p.version == 3)
        );
        let verified = answer(br#"{"valid":false,"version":1}"#).used("verify");
        assert!(matches!(
            verified,
            Ok(Used::Verified {
                valid: false,
                version: 1
            })
        ));
        assert!(
            answer(br#"{"mac_b64":"aGk=","version":1}"#)
                .used("sign")
                .is_err()
        );
        assert!(answer(b"<html>proxy</html>").used("mac").is_err());
    }

    #[test]
    fn a_redemption_without_material_is_an_error_not_an_empty_value() {
        let answer = |body: &[u8]| Answer {
            status: 200,
            body: body.to_vec(),
        };
        let good = answer(br#"{"material_b64":"c2VjcmV0","version":2,"expires_at_ms":9}"#)
            .redeemed()
            .map(|r| (r.expose().to_vec(), r.version));
        assert_eq!(good.ok(), Some((b"secret".to_vec(), 2)));
        assert!(answer(b"<html>proxy</html>").redeemed().is_err());
        assert!(
            answer(br#"{"material_b64":"","version":1,"expires_at_ms":1}"#)
                .redeemed()
                .is_err()
        );
    }
}
