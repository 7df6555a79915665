//! Tenant isolation and store isolation: tenant A cannot resolve, redeem, rotate, revoke or learn
//! of tenant B's secrets through any route, and refs of one store are refused by another.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn provision_tenant(s: &Server, tenant: &str) {
    let policy = json!({
        "rules": [{"secret_names": ["*"], "engines": ["PH1.CONNECTOR", "PH1.OS"],
                   "operations": ["GET_HANDLE", "ISSUE_EPHEMERAL", "ROTATE", "REVOKE"]}],
        "admins": ["u-admin"]
    });
    let a = s
        .call(
            Method::PUT,
            &format!("/v1/admin/tenants/{tenant}/policy"),
            &s.admin,
            Some(&policy),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = s
        .call(
            Method::POST,
            &format!("/v1/admin/tenants/{tenant}/secrets"),
            &s.admin,
            Some(&json!({"secret_name": "payments/stripe"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
}

fn in_tenant(op: &str, tenant: &str, key: &str) -> serde_json::Value {
    let mut v = admin_request(op, key);
    v["tenant_id"] = json!(tenant);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_refs_are_useless_in_another() {
    let s = Server::start().await;
    provision_tenant(&s, "acme").await;
    provision_tenant(&s, "globex").await;
    let a = s.kms(&in_tenant("GET_HANDLE", "acme", "i-1")).await;
    let handle = a.json()["secret_handle"].clone();
    let a = s.kms(&in_tenant("ISSUE_EPHEMERAL", "acme", "i-2")).await;
    let credential = a.json()["ephemeral_credential_ref"].clone();

    // Redeem under the other tenant: the ref does not open.
    for body in [
        json!({"tenant_id": "globex", "secret_handle": handle}),
        json!({"tenant_id": "globex", "ephemeral_credential_ref": credential}),
    ] {
        let r = s.redeem(&body).await;
        assert_eq!(
            (r.status.as_u16(), r.reason()),
            (400, "KMS_HANDLE_INVALID".into())
        );
    }
    // Revoke it through the other tenant: refused, and the handle still works in its own tenant.
    let mut revoke = in_tenant("REVOKE", "globex", "i-3");
    revoke["revoke_target"] = json!({"secret_handle": handle});
    let (plan, _) = s.plan_and_commit(&revoke).await;
    assert_eq!(plan.reason(), "KMS_HANDLE_INVALID");
    let r = s
        .redeem(&json!({"tenant_id": "acme", "secret_handle": handle}))
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // Rotating globex's secret leaves acme's alone.
    let (_, commit) = s
        .plan_and_commit(&in_tenant("ROTATE", "globex", "i-4"))
        .await;
    assert_eq!(commit.json()["rotated_version"], 2);
    let list = s
        .call(
            Method::GET,
            "/v1/admin/tenants/acme/secrets",
            &s.admin,
            None,
        )
        .await;
    assert_eq!(list.json()["secrets"][0]["current_version"], 1);

    // The same name has different refs in the two tenants; listings and chains never mix.
    let ref_a = s.kms(&in_tenant("GET_HANDLE", "acme", "i-5")).await.json()["secret_ref"].clone();
    let ref_b = s
        .kms(&in_tenant("GET_HANDLE", "globex", "i-6"))
        .await
        .json()["secret_ref"]
        .clone();
    assert_ne!(ref_a, ref_b);
    let audit = s
        .call(
            Method::GET,
            "/v1/audit?tenant_id=acme&limit=1000",
            &s.admin,
            None,
        )
        .await;
    let records = audit.json()["records"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!records.is_empty());
    assert!(records.iter().all(|r| r["tenant_id"] == "acme"));
    assert!(!audit.body.windows(6).any(|w| w == b"globex"));

    // A tenant without a policy learns nothing, whether or not the name exists elsewhere.
    let a = s.kms(&in_tenant("GET_HANDLE", "initech", "i-7")).await;
    assert_eq!(a.reason(), "KMS_DISABLED");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refs_of_one_store_are_refused_by_another() {
    let first = Server::start().await;
    let second = Server::start().await;
    for s in [&first, &second] {
        provision_tenant(s, TENANT).await;
    }
    let handle = first
        .kms(&in_tenant("GET_HANDLE", TENANT, "x-1"))
        .await
        .json()["secret_handle"]
        .clone();
    let r = second
        .redeem(&json!({"tenant_id": TENANT, "secret_handle": handle}))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.reason()),
        (400, "KMS_HANDLE_INVALID".into())
    );
    let sim = first
        .kms(&{
            let mut v = in_tenant("ROTATE", TENANT, "x-2");
            v["dry_run"] = json!(true);
            v
        })
        .await
        .json()["simulation_id"]
        .clone();
    let mut commit = in_tenant("ROTATE", TENANT, "x-3");
    commit["simulation_id"] = sim;
    let r = second.kms(&commit).await;
    assert_eq!(
        r.reason(),
        "KMS_SIMULATION_STALE",
        "a plan of another store does not commit here"
    );
    first.stop().await;
    second.stop().await;
}
