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

#[cfg(test)]
mod tests {
    use super::*;

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
