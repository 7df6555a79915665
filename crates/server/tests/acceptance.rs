//! The seed's acceptance tests end to end: a real server on loopback, real HTTP, over each store
//! backend.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// For each `async fn(Backend)` named, one test per backend: `sqlite::name` and `postgres::name`.
macro_rules! on_both_backends {
    ($($test:ident),+ $(,)?) => {
        on_both_backends!(@on sqlite Sqlite $($test)+);
        on_both_backends!(@on postgres Postgres $($test)+);
    };
    (@on $module:ident $backend:ident $($test:ident)+) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(crate::common::Backend::$backend).await;
                }
            )+
        }
    };
}

on_both_backends!(
    at_kms_01_no_secret_value_in_outputs_or_audit,
    at_kms_02_rotation_produces_deterministic_version_metadata_and_is_audited,
    at_kms_03_unauthorized_requester_fails_closed_with_reason_code,
    at_kms_04_ephemeral_ttl_bounds_are_enforced_deterministically,
);

async fn at_kms_01_no_secret_value_in_outputs_or_audit(backend: Backend) {
    let s = Server::start_on(backend).await;
    // base64 of a recognisable value.
    let value = b"sk_live_AT01_value_0123456789";
    let b64 = base64_encode(value);
    s.provision("payments/stripe", Some(&b64)).await;
    let mut seen = Vec::new();
    for (i, op) in ["GET_HANDLE", "ISSUE_EPHEMERAL"].iter().enumerate() {
        let a = s.kms(&request(op, &format!("k-{i}"))).await;
        assert_eq!(a.status, StatusCode::OK);
        seen.push(a.body);
    }
    let (plan, commit) = s.plan_and_commit(&admin_request("ROTATE", "k-r")).await;
    seen.push(plan.body);
    seen.push(commit.body);
    let audit = s
        .call(
            Method::GET,
            &format!("/v1/audit?tenant_id={TENANT}&limit=1000"),
            &s.admin,
            None,
        )
        .await;
    seen.push(audit.body);
    let export = s
        .call(Method::GET, "/v1/audit/export", &s.admin, None)
        .await;
    seen.push(export.body);
    for body in &seen {
        for needle in [&value[..], b64.as_bytes()] {
            assert!(
                !body.windows(needle.len()).any(|w| w == needle),
                "value leaked"
            );
        }
    }
    s.stop().await;
}

async fn at_kms_02_rotation_produces_deterministic_version_metadata_and_is_audited(
    backend: Backend,
) {
    let s = Server::start_on(backend).await;
    s.provision("payments/stripe", None).await;
    let mut req = admin_request("ROTATE", "rot-1");
    req["previous_version"] = json!(1);
    let (plan, commit) = s.plan_and_commit(&req).await;
    assert_eq!(plan.json()["rotated_version"], 2);
    assert_eq!(commit.status, StatusCode::OK);
    let bundle = commit.json();
    assert_eq!(bundle["rotated_version"], 2);
    assert_eq!(bundle["secret_handle"], serde_json::Value::Null);
    // A retry of the commit is the same bundle, byte for byte, and makes no second version.
    let mut retry = req.clone();
    retry["simulation_id"] = plan.json()["simulation_id"].clone();
    let again = s.kms(&retry).await;
    assert_eq!(again.body, commit.body);
    // A second rotation with the old simulation is stale.
    let mut stale = req.clone();
    stale["idempotency_key"] = json!("rot-2");
    stale["simulation_id"] = plan.json()["simulation_id"].clone();
    let a = s.kms(&stale).await;
    assert_eq!(
        (a.status, a.reason()),
        (StatusCode::CONFLICT, "KMS_SIMULATION_STALE".to_owned())
    );
    let list = s
        .call(
            Method::GET,
            &format!("/v1/admin/tenants/{TENANT}/secrets"),
            &s.admin,
            None,
        )
        .await;
    assert_eq!(list.json()["secrets"][0]["current_version"], 2);
    // The audit chain holds the rotation with its version and no value.
    let audit = s
        .call(
            Method::GET,
            &format!("/v1/audit?tenant_id={TENANT}"),
            &s.admin,
            None,
        )
        .await;
    let records = audit.json()["records"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let seq = bundle["audit_seq"].as_u64().expect("audit_seq");
    let rec = records
        .iter()
        .find(|r| r["seq"] == seq)
        .expect("record of the commit");
    assert_eq!(rec["operation"], "ROTATE");
    assert_eq!(rec["rotated_version"], 2);
    assert_eq!(rec["reason_code"], "PH1_KMS_OK_MATERIAL_ISSUE");
    assert!(
        records.iter().any(|r| r["replayed"] == true),
        "the retry is audited as a replay"
    );
    s.stop().await;
}

async fn at_kms_03_unauthorized_requester_fails_closed_with_reason_code(backend: Backend) {
    let s = Server::start_on(backend).await;
    s.provision("payments/stripe", None).await;
    let mut stranger = request("GET_HANDLE", "k-s1");
    stranger["requester_engine_id"] = json!("PH1.STRANGER");
    let existing = s.kms(&stranger).await;
    stranger["secret_name"] = json!("payments/does-not-exist");
    stranger["idempotency_key"] = json!("k-s2");
    let missing = s.kms(&stranger).await;
    for a in [&existing, &missing] {
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        let b = a.json();
        assert_eq!(b["reason_code"], "KMS_NOT_AUTHORIZED");
        assert_eq!(b["validation_status"], "FAIL");
        for field in [
            "secret_ref",
            "secret_handle",
            "ephemeral_credential_ref",
            "rotated_version",
            "revoked",
        ] {
            assert_eq!(b[field], serde_json::Value::Null, "{field} must be null");
        }
    }
    let strip = |v: serde_json::Value| {
        let mut v = v;
        v["audit_seq"] = serde_json::Value::Null;
        v
    };
    assert_eq!(
        strip(existing.json()),
        strip(missing.json()),
        "existence does not leak"
    );
    // Rotation without an admin user is refused.
    let mut no_admin = admin_request("ROTATE", "k-s3");
    no_admin["requester_user_id"] = json!("u-42");
    let (plan, _) = s.plan_and_commit(&no_admin).await;
    assert_eq!(plan.reason(), "KMS_NOT_AUTHORIZED");
    // The body cannot widen access: an allowlist naming the stranger changes nothing.
    let mut widened = request("GET_HANDLE", "k-s4");
    widened["requester_engine_id"] = json!("PH1.STRANGER");
    widened["requester_allowlist"] = json!(["PH1.STRANGER"]);
    assert_eq!(s.kms(&widened).await.reason(), "KMS_NOT_AUTHORIZED");
    // A tenant without a policy is disabled.
    let mut other = request("GET_HANDLE", "k-s5");
    other["tenant_id"] = json!("globex");
    let a = s.kms(&other).await;
    assert_eq!(
        (a.status, a.reason()),
        (StatusCode::FORBIDDEN, "KMS_DISABLED".to_owned())
    );
    s.stop().await;
}

async fn at_kms_04_ephemeral_ttl_bounds_are_enforced_deterministically(backend: Backend) {
    let s = Server::start_on(backend).await;
    s.provision("payments/stripe", None).await;
    for (i, (ttl, status, reason)) in [
        (29_999u64, 422, "KMS_TTL_OUT_OF_BOUNDS"),
        (30_000, 200, "PH1_KMS_OK_MATERIAL_ISSUE"),
        (3_600_000, 200, "PH1_KMS_OK_MATERIAL_ISSUE"),
        (3_600_001, 422, "KMS_TTL_OUT_OF_BOUNDS"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = request("ISSUE_EPHEMERAL", &format!("ttl-{i}"));
        req["requested_ttl_ms"] = json!(ttl);
        let first = s.kms(&req).await;
        let second = s.kms(&req).await;
        assert_eq!(first.status.as_u16(), status, "{ttl}");
        assert_eq!(first.reason(), reason);
        assert_eq!(first.body, second.body, "a retry is answered byte for byte");
        if status == 200 {
            let b = first.json();
            let issued = b["expires_at_ms"].as_u64().expect("expiry");
            assert!(b["ephemeral_credential_ref"].is_string());
            assert!(issued >= ttl, "expiry is issue time + ttl");
        }
    }
    s.stop().await;
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
