//! A file system that refuses writes under a running `selene-kms serve`, as a full disk or one
//! remounted read-only does. The fault is a file size limit of zero set on the server process
//! from outside (`prlimit`): from then on every write to a file fails (EFBIG), including writes
//! to the files the store holds open, until the limit is lifted.
//!
//! Every request that must be recorded is refused with `KMS_AUDIT_UNAVAILABLE`, nothing is
//! released and nothing half-written remains; once the fault is gone the same requests succeed
//! and the audit chain verifies.

mod common;

use std::process::Command;

use common::{Api, Node, SECRET, TENANT, describe, json_of, request, selene_kms};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Sets the soft file size limit of process `pid` (`"0"` or `"unlimited"`).
fn limit_file_size(pid: u32, soft: &str) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--fsize={soft}:unlimited"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit --fsize={soft} failed");
}

fn with_key(mut req: Value, key: &str) -> Value {
    req["idempotency_key"] = json!(key);
    req
}

/// A data directory made by `init`, a client with its tokens, and a node serving it, logging
/// into `log_file` when one is given.
async fn deployment(log_file: Option<&str>) -> (tempfile::TempDir, Api, Node) {
    let data = tempfile::tempdir().expect("tempdir");
    let init = selene_kms()
        .args(["init", "--json", "--data-dir"])
        .arg(data.path())
        .output()
        .expect("init runs");
    assert!(init.status.success(), "init failed");
    let api = Api::from_init(&serde_json::from_slice(&init.stdout).expect("init JSON"));
    let node = match log_file {
        Some(name) => Node::start_logging_to_file(data.path(), &data.path().join(name)),
        None => Node::start(data.path(), None),
    };
    api.provision(&node.url, &node.url).await;
    (data, api, node)
}

/// What `/readyz` answers.
async fn readiness(api: &Api, url: &str) -> StatusCode {
    api.call(url, Method::GET, "/readyz", None, None)
        .await
        .expect("sent")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_system_that_refuses_writes_refuses_requests_until_it_recovers() {
    let (_data, api, node) = deployment(None).await;
    let url = node.url.clone();

    // Before the fault: a handle to redeem later, and a rotation planned but not committed.
    let issued = api
        .kms(&url, &with_key(request("GET_HANDLE", false), "h-1"))
        .await
        .expect("sent");
    assert_eq!(issued.0, StatusCode::OK, "{}", describe(&issued));
    let handle = json_of(&issued)["secret_handle"]
        .as_str()
        .expect("handle")
        .to_owned();
    let mut plan = with_key(request("ROTATE", true), "rot-plan");
    plan["dry_run"] = json!(true);
    let plan = api.kms(&url, &plan).await.expect("sent");
    assert_eq!(plan.0, StatusCode::OK, "{}", describe(&plan));
    let mut commit = with_key(request("ROTATE", true), "rot");
    commit["simulation_id"] = json_of(&plan)["simulation_id"].clone();
    let records_before = api.verify_audit(&url).await;

    limit_file_size(node.child.id(), "0");
    let get = with_key(request("GET_HANDLE", false), "h-2");
    let new_secret = json!({"secret_name": "payments/other"});
    let secrets = format!("/v1/admin/tenants/{TENANT}/secrets");
    let refused = [
        ("a handle", api.kms(&url, &get).await.expect("sent")),
        ("a rotation", api.kms(&url, &commit).await.expect("sent")),
        ("a redemption", api.redeem(&url, &handle).await),
        (
            "a new secret",
            api.call(
                &url,
                Method::POST,
                &secrets,
                Some(&api.admin),
                Some(&new_secret),
            )
            .await
            .expect("sent"),
        ),
    ];
    for (what, answer) in &refused {
        assert_eq!(
            answer.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: {}",
            describe(answer)
        );
        let body = json_of(answer);
        assert_eq!(
            body["reason_code"], "KMS_AUDIT_UNAVAILABLE",
            "{what}: {body}"
        );
        for field in [
            "secret_handle",
            "secret_ref",
            "material_b64",
            "rotated_version",
        ] {
            assert!(body[field].is_null(), "{what} released {field}: {body}");
        }
    }
    assert!(
        node.log()
            .iter()
            .any(|l| l.contains("file size limit") && l.contains("ERROR")),
        "the operator is told why: {:?}",
        node.log()
    );
    let alive = api
        .call(&url, Method::GET, "/healthz", None, None)
        .await
        .expect("the server still answers");
    assert_eq!(alive.0, StatusCode::OK);
    assert_eq!(
        readiness(&api, &url).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "a node whose writes fail asks for no traffic"
    );

    limit_file_size(node.child.id(), "unlimited");
    // Nothing of the refused requests remains: one version, and the chain holds exactly the
    // records it held before (the export that counted them is a read, not recorded).
    assert_eq!(api.versions(&url).await, vec![1]);
    let listing = api
        .call(&url, Method::GET, &secrets, Some(&api.admin), None)
        .await
        .expect("sent");
    assert_eq!(
        json_of(&listing)["secrets"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(json_of(&listing)["secrets"][0]["secret_name"], SECRET);
    assert_eq!(api.verify_audit(&url).await, records_before);

    // The same requests, retried with the same keys, now succeed.
    let done = api.kms(&url, &commit).await.expect("sent");
    assert_eq!(done.0, StatusCode::OK, "{}", describe(&done));
    assert_eq!(json_of(&done)["rotated_version"], 2);
    // Ready again at once: the commit that went through clears the failure, well inside the
    // 10 s after which the failure would be forgotten anyway.
    assert_eq!(
        readiness(&api, &url).await,
        StatusCode::OK,
        "ready again once a commit succeeds"
    );
    let again = api.kms(&url, &get).await.expect("sent");
    assert_eq!(again.0, StatusCode::OK, "{}", describe(&again));
    let redeemed = api.redeem(&url, &handle).await;
    assert_eq!(redeemed.0, StatusCode::OK, "{}", describe(&redeemed));
    assert_eq!(api.versions(&url).await, vec![1, 2]);
    assert_eq!(api.verify_audit(&url).await, records_before + 3);
}

/// Regression: the log subscriber reported its own failed writes with `eprintln!`, which panics
/// when stderr fails, so with the log on the full disk every logged request died unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_on_the_failing_disk_does_not_take_requests_down() {
    let (_data, api, node) = deployment(Some("serve.log")).await;
    let url = node.url.clone();
    limit_file_size(node.child.id(), "0");
    let get = with_key(request("GET_HANDLE", false), "h-1");
    let refused = api.kms(&url, &get).await.expect("answered");
    assert_eq!(
        json_of(&refused)["reason_code"],
        "KMS_AUDIT_UNAVAILABLE",
        "{}",
        describe(&refused)
    );
    limit_file_size(node.child.id(), "unlimited");
    let served = api.kms(&url, &get).await.expect("answered");
    assert_eq!(served.0, StatusCode::OK, "{}", describe(&served));
}
