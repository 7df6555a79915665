//! The seed's acceptance tests, AT-KMS-01..04, against the pure core.

mod common;

use common::*;
use selene_kms_core::{
    AuditRecord, Operation, ReasonCode, StateChange, ValidationStatus, audit::ChainVerifier,
};
use serde_json::json;

/// AT-KMS-01: no secret value appears in outputs or audit-facing fields. The core never holds a
/// value, so the check here is structural: every bundle field and audit field is an opaque ref, an
/// id, a number or a code, and no ref contains the tenant, the name or the version in clear.
/// (`canary.rs` feeds a known value through every path; the store and server repeat this end to
/// end with real material.)
#[test]
fn at_kms_01_no_secret_value_in_outputs_or_audit_fields() {
    let keys = keys();
    let policy = policy();
    let snapshot = secret(3);
    for op in ["GET_HANDLE", "ISSUE_EPHEMERAL"] {
        let req = parse(&request(op));
        let bundle = answer(&req, Some(&policy), Some(&snapshot), &keys, NOW);
        assert_eq!(bundle.validation_status, ValidationStatus::Ok, "{op}");
        let record = AuditRecord::for_request(&req.tenant_id, &req.context(), &bundle, NOW, false);
        let text = format!(
            "{}{}",
            serde_json::to_string(&bundle).expect("serializes"),
            serde_json::to_string(&record).expect("serializes")
        );
        for clear in ["payments/stripe", "payments", "stripe"] {
            assert!(!text.contains(clear), "{op}: {clear} appears in clear");
        }
        let handle = bundle
            .secret_handle
            .or(bundle.ephemeral_credential_ref)
            .expect("a ref was issued");
        assert!(record.handle_id.is_some() || record.credential_id.is_some());
        assert!(
            !serde_json::to_string(&record)
                .expect("serializes")
                .contains(&handle),
            "the audit record must not hold the redeemable ref"
        );
    }
}

/// AT-KMS-02: rotation produces deterministic new version metadata and is auditable.
#[test]
fn at_kms_02_rotation_is_deterministic_and_auditable() {
    let keys = keys();
    let policy = policy();
    let snapshot = secret(3);
    let mut v = admin_request("ROTATE");
    v["previous_version"] = json!(3);
    let first = simulate_then_commit(&v, &policy, &snapshot, &keys).expect("rotation allowed");
    let second = simulate_then_commit(&v, &policy, &snapshot, &keys).expect("rotation allowed");
    assert_eq!(first, second, "same request + state + keys => same bundle");
    let (bundle, change) = first;
    assert_eq!(bundle.rotated_version, Some(4));
    assert_eq!(bundle.operation, Some(Operation::Rotate));
    assert_eq!(
        change,
        StateChange::Rotate {
            new_version: 4,
            from_staged: false
        }
    );
    assert!(bundle.secret_handle.is_none() && bundle.ephemeral_credential_ref.is_none());

    let req = parse(&v);
    let mut record = AuditRecord::for_request(&req.tenant_id, &req.context(), &bundle, NOW, false);
    record.chain(1, selene_kms_core::audit::GENESIS_DIGEST);
    assert_eq!(record.rotated_version, Some(4));
    assert_eq!(record.reason_code, ReasonCode::OkMaterialIssue);
    let mut verifier = ChainVerifier::default();
    assert!(verifier.push(&record).is_ok());
}

/// AT-KMS-03: an unauthorized requester fails closed with a reason code, whether or not the
/// secret exists, and whatever the request claims about itself.
#[test]
fn at_kms_03_unauthorized_requester_fails_closed_with_reason_code() {
    let keys = keys();
    let policy = policy();
    let snapshot = secret(1);
    let mut stranger = request("GET_HANDLE");
    stranger["requester_engine_id"] = json!("PH1.STRANGER");
    let req = parse(&stranger);
    let with = answer(&req, Some(&policy), Some(&snapshot), &keys, NOW);
    let without = answer(&req, Some(&policy), None, &keys, NOW);
    assert_eq!(with.reason_code, ReasonCode::NotAuthorized);
    assert_eq!(with, without, "existence must not leak");
    assert_eq!(with.validation_status, ValidationStatus::Fail);
    assert!(with.secret_ref.is_none() && with.secret_handle.is_none());

    // Allowed engine, but rotation without an admin user.
    let mut no_admin = admin_request("ROTATE");
    no_admin["requester_user_id"] = json!("u-42");
    let bundle = answer(
        &parse(&no_admin),
        Some(&policy),
        Some(&snapshot),
        &keys,
        NOW,
    );
    assert_eq!(bundle.reason_code, ReasonCode::NotAuthorized);
    no_admin
        .as_object_mut()
        .map(|o| o.remove("requester_user_id"));
    let bundle = answer(
        &parse(&no_admin),
        Some(&policy),
        Some(&snapshot),
        &keys,
        NOW,
    );
    assert_eq!(bundle.reason_code, ReasonCode::NotAuthorized);

    // An allowlist can only narrow.
    let mut narrowed = request("GET_HANDLE");
    narrowed["requester_allowlist"] = json!(["PH1.OTHER"]);
    let bundle = answer(
        &parse(&narrowed),
        Some(&policy),
        Some(&snapshot),
        &keys,
        NOW,
    );
    assert_eq!(bundle.reason_code, ReasonCode::NotAuthorized);
    let mut widened = stranger.clone();
    widened["requester_allowlist"] = json!(["PH1.STRANGER"]);
    let bundle = answer(&parse(&widened), Some(&policy), Some(&snapshot), &keys, NOW);
    assert_eq!(bundle.reason_code, ReasonCode::NotAuthorized);

    // A tenant with no policy, or a disabled one, is refused before anything else.
    let bundle = answer(&req, None, Some(&snapshot), &keys, NOW);
    assert_eq!(bundle.reason_code, ReasonCode::Disabled);
    let mut doc = policy.document().clone();
    doc.enabled = false;
    let disabled = selene_kms_core::Policy::try_from(&doc).expect("valid");
    let bundle = answer(
        &parse(&request("GET_HANDLE")),
        Some(&disabled),
        Some(&snapshot),
        &keys,
        NOW,
    );
    assert_eq!(bundle.reason_code, ReasonCode::Disabled);
}

/// AT-KMS-04: ephemeral TTL bounds are enforced deterministically.
#[test]
fn at_kms_04_ephemeral_ttl_bounds_are_enforced_deterministically() {
    let keys = keys();
    let policy = policy();
    let snapshot = secret(1);
    let bounds = snapshot.ttl;
    let cases = [
        (Some(bounds.min_ms - 1), ReasonCode::TtlOutOfBounds),
        (Some(bounds.min_ms), ReasonCode::OkMaterialIssue),
        (Some(bounds.max_ms), ReasonCode::OkMaterialIssue),
        (Some(bounds.max_ms + 1), ReasonCode::TtlOutOfBounds),
        (None, ReasonCode::OkMaterialIssue),
    ];
    for (ttl, expected) in cases {
        let mut v = request("ISSUE_EPHEMERAL");
        if let Some(ttl) = ttl {
            v["requested_ttl_ms"] = json!(ttl);
        }
        let req = parse(&v);
        let a = answer(&req, Some(&policy), Some(&snapshot), &keys, NOW);
        let b = answer(&req, Some(&policy), Some(&snapshot), &keys, NOW);
        assert_eq!(a, b, "deterministic for {ttl:?}");
        assert_eq!(a.reason_code, expected, "{ttl:?}");
        if expected.is_ok() {
            let effective = ttl.unwrap_or(bounds.default_ms);
            assert_eq!(a.expires_at_ms, Some(NOW + effective));
            assert!(a.ephemeral_credential_ref.is_some());
        } else {
            assert_eq!(a.expires_at_ms, None);
            assert_eq!(a.ephemeral_credential_ref, None);
        }
    }
}
