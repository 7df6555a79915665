//! The HTTP host's bodies: JSON in to the engine's typed requests, typed answers out to JSON.
//!
//! The wire form is the contract DESIGN.md and the OpenAPI document describe; keeping it here
//! lets the engine answer in types while the bytes stay exactly what clients already parse.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use selene_kms_core::{ReasonCode, Refusal};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::engine::{AdminError, CreatedSecret, Redeemed};

/// `value` as JSON. Answers are plain data, so serialization cannot fail.
pub(super) fn json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// An admin request body. Parse errors never echo the body: serde's message can quote values.
pub(super) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|_| ReasonCode::InputSchemaInvalid.into())
}

/// `{"secret_ref", "version"}`.
pub(super) fn created(created: &CreatedSecret) -> Vec<u8> {
    json(&serde_json::json!({"secret_ref": created.secret_ref, "version": created.version}))
}

/// A refused redemption: the redemption answer's shape with every material field null.
pub(super) fn redeem_refusal(refusal: &Refusal) -> Vec<u8> {
    json(&serde_json::json!({
        "validation_status": "FAIL",
        "reason_code": refusal.reason,
        "diagnostics": refusal.diagnostics,
        "material_b64": null,
        "version": null,
        "expires_at_ms": null,
    }))
}

/// The redemption answer. The base64 text lives in zeroizing buffers until it is handed to the
/// transport.
pub(super) fn redeemed(redeemed: &Redeemed) -> Arc<[u8]> {
    let encoded = Zeroizing::new(STANDARD.encode(redeemed.material.expose()));
    let mut out = Zeroizing::new(Vec::with_capacity(encoded.len() + 96));
    out.extend_from_slice(b"{\"validation_status\":\"OK\",\"reason_code\":\"PH1_KMS_OK_MATERIAL_ISSUE\",\"material_b64\":\"");
    out.extend_from_slice(encoded.as_bytes());
    out.extend_from_slice(
        format!(
            "\",\"version\":{},\"expires_at_ms\":{}}}",
            redeemed.version, redeemed.expires_at_ms
        )
        .as_bytes(),
    );
    Arc::from(&out[..])
}
