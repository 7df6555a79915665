//! `Debug` output for the types that carry redeemable refs (handles and credential refs): it
//! shows whether a ref is there, never the ref, so that a `{:?}` in a log cannot leak one.

use std::fmt;

/// Stands in for a redeemable ref.
pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `Some(<redacted>)` for a ref that is there, `None` otherwise.
fn presence(value: &Option<String>) -> Option<Redacted> {
    value.as_ref().map(|_| Redacted)
}

/// Adds the wire contract's two redeemable-ref fields, `secret_handle` and
/// `ephemeral_credential_ref`, each shown only as present or not.
pub(crate) fn ref_fields<'s, 'a, 'b>(
    out: &'s mut fmt::DebugStruct<'a, 'b>,
    secret_handle: &Option<String>,
    ephemeral_credential_ref: &Option<String>,
) -> &'s mut fmt::DebugStruct<'a, 'b> {
    out.field("secret_handle", &presence(secret_handle)).field(
        "ephemeral_credential_ref",
        &presence(ephemeral_credential_ref),
    )
}

#[cfg(test)]
mod tests {
    use crate::redeem::{RawRedeemRequest, RedeemRequest};
    use crate::refs::RefKind;
    use crate::request::KmsRequest;

    const HANDLE: &str = "ksh1_handle-bytes";

    fn assert_hidden(shown: &str) {
        assert!(!shown.contains("handle-bytes"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn a_revocation_request_does_not_show_its_handle() {
        let body = serde_json::json!({
            "correlation_id": "c-1", "turn_id": "t-1", "idempotency_key": "k-1",
            "tenant_id": "acme", "operation": "REVOKE", "secret_name": "payments/stripe",
            "requester_engine_id": "PH1.CONNECTOR", "dry_run": true,
            "revoke_target": {"secret_handle": HANDLE}
        });
        let raw: crate::wire::RawKmsRequest = serde_json::from_value(body.clone()).expect("raw");
        assert_hidden(&format!("{raw:?}"));
        let bytes = serde_json::to_vec(&body).expect("json");
        let req = KmsRequest::from_json(&bytes).expect("valid");
        assert_hidden(&format!("{req:?}"));
    }

    #[test]
    fn a_redemption_request_does_not_show_its_ref() {
        let raw = RawRedeemRequest {
            tenant_id: Some("acme".to_owned()),
            secret_handle: Some(HANDLE.to_owned()),
            ephemeral_credential_ref: None,
        };
        assert_hidden(&format!("{raw:?}"));
        let req = RedeemRequest::try_from(raw).expect("valid");
        assert_eq!(req.kind, RefKind::Handle);
        assert_hidden(&format!("{req:?}"));
    }
}
