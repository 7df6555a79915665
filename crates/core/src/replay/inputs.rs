//! What a decision was made from: kept beside its audit record, sealed like material, so that
//! the chain and these inputs alone determine every state the core saw.

use serde::{Deserialize, Serialize};

use crate::policy::PolicyDocument;
use crate::purpose::Purpose;
use crate::state::{SecretKind, TtlBounds};
use crate::wire::RawKmsRequest;

/// The inputs of one audited decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionInputs {
    /// A KMS request, allowed or refused, schema refusals included.
    Request(Box<RequestInputs>),
    /// A SET_POLICY: the document stored.
    Policy(PolicyInputs),
    /// A CREATE_SECRET: the secret's terms, never its material.
    Secret(SecretTerms),
}

/// What a KMS request's decision read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestInputs {
    /// The request as received (a validated one in canonical form).
    pub request: RawKmsRequest,
    /// The version of the tenant's policy the decision read; `None`: it had none, or the
    /// request was refused before any was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    /// The state version of the secret snapshot the decision read; `None`: no such secret, or
    /// none was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_version: Option<u64>,
    /// The secret's current version in that snapshot: what a handle or credential is issued
    /// from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// What the decision found under its idempotency key.
    pub key: KeySeen,
    /// Whether the answer was kept under the key (set by the store as it commits).
    #[serde(default)]
    pub keyed: bool,
}

impl RequestInputs {
    /// A request refused at schema time: it read nothing.
    pub fn rejected(request: RawKmsRequest) -> Self {
        Self {
            request,
            policy_version: None,
            state_version: None,
            current_version: None,
            key: KeySeen::Free,
            keyed: false,
        }
    }
}

/// What a decision found under its idempotency key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySeen {
    /// Nothing (or the key was not read: a fresh key needs no read).
    Free,
    /// An answer to the same request (same fingerprint).
    Same,
    /// An answer to another request.
    Other,
}

/// The policy a SET_POLICY stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInputs {
    /// The document, as stored.
    pub document: PolicyDocument,
}

/// A secret's terms as created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretTerms {
    /// `GENERATED` or `IMPORTED`.
    pub kind: String,
    /// Shortest ephemeral TTL.
    pub ttl_min_ms: u64,
    /// Longest ephemeral TTL.
    pub ttl_max_ms: u64,
    /// Default ephemeral TTL.
    pub ttl_default_ms: u64,
    /// Lifetime of handles.
    pub handle_ttl_ms: u64,
    /// What the secret is for (absent: a credential, as every secret was before keys).
    #[serde(default, skip_serializing_if = "is_credential")]
    pub purpose: Purpose,
}

fn is_credential(purpose: &Purpose) -> bool {
    !purpose.is_key()
}

impl SecretTerms {
    /// The terms of a new secret.
    pub fn new(kind: SecretKind, ttl: &TtlBounds, handle_ttl_ms: u64, purpose: Purpose) -> Self {
        Self {
            kind: kind.name().to_owned(),
            ttl_min_ms: ttl.min_ms,
            ttl_max_ms: ttl.max_ms,
            ttl_default_ms: ttl.default_ms,
            handle_ttl_ms,
            purpose,
        }
    }

    /// The kind and bounds, when they make sense.
    pub fn parts(&self) -> Option<(SecretKind, TtlBounds)> {
        let kind = SecretKind::from_name(&self.kind)?;
        let ttl = TtlBounds::new(self.ttl_min_ms, self.ttl_max_ms, self.ttl_default_ms)?;
        Some((kind, ttl))
    }
}

/// The encoding's length is a multiple of this.
pub const PADDED_TO: usize = 128;

impl DecisionInputs {
    /// The canonical encoding kept (sealed) beside the record, padded with spaces to a
    /// multiple of [`PADDED_TO`] bytes so that the sealed length tells little of the lengths of
    /// the names inside (which refs take care to hide).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain data with string keys: serialization cannot fail.
        let mut bytes = serde_json::to_vec(self).unwrap_or_default();
        let padded = bytes.len().div_ceil(PADDED_TO) * PADDED_TO;
        bytes.resize(padded, b' ');
        bytes
    }

    /// Parses [`DecisionInputs::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Operation;

    #[test]
    fn every_kind_of_inputs_reads_back_as_kept() {
        let request = RawKmsRequest {
            tenant_id: Some("acme".into()),
            operation: Some(Operation::GetHandle),
            requested_ttl_ms: Some(5),
            ..RawKmsRequest::default()
        };
        let document: PolicyDocument =
            serde_json::from_str(r#"{"rules": [], "admins": ["u"]}"#).expect("document");
        let all = [
            DecisionInputs::Request(Box::new(RequestInputs {
                request: request.clone(),
                policy_version: Some(3),
                state_version: Some(9),
                current_version: Some(2),
                key: KeySeen::Other,
                keyed: true,
            })),
            DecisionInputs::Request(Box::new(RequestInputs::rejected(request))),
            DecisionInputs::Policy(PolicyInputs { document }),
            DecisionInputs::Secret(SecretTerms::new(
                SecretKind::Imported,
                &TtlBounds::DEFAULT,
                7,
                Purpose::Credential,
            )),
            DecisionInputs::Secret(SecretTerms::new(
                SecretKind::Generated,
                &TtlBounds::DEFAULT,
                7,
                Purpose::Ed25519,
            )),
        ];
        for inputs in all {
            let bytes = inputs.to_bytes();
            assert_eq!(bytes.len() % PADDED_TO, 0);
            assert_eq!(
                DecisionInputs::from_bytes(&bytes),
                Some(inputs),
                "{bytes:?}"
            );
        }
        assert_eq!(
            DecisionInputs::from_bytes(br#"{"secret":{"kind":"X"}}"#),
            None
        );
    }
}
