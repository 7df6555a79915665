//! Replay and policy impact over HTTP, on both stores: mixed traffic replays with no
//! difference, an altered decision is named by its place in the chain, and a policy
//! simulation over known traffic counts exactly and changes nothing.

mod common;

use common::{Backend, Server, TENANT, admin_request, request};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const REPLAY: &str = "/v1/admin/tenants/acme/replay";
const SIMULATE: &str = "/v1/admin/tenants/acme/policy/simulate";

impl Server {
    async fn replay(&self, body: Option<&Value>) -> common::Answer {
        self.call(Method::POST, REPLAY, &self.admin, body).await
    }

    async fn simulate(&self, body: &Value) -> common::Answer {
        self.call(Method::POST, SIMULATE, &self.admin, Some(body))
            .await
    }

    async fn put_policy(&self, policy: &Value) {
        let path = format!("/v1/admin/tenants/{TENANT}/policy");
        let a = self
            .call(Method::PUT, &path, &self.admin, Some(policy))
            .await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
    }

    async fn admin_post(&self, what: &str, body: &Value) -> common::Answer {
        let path = format!("/v1/admin/tenants/{TENANT}/{what}");
        self.call(Method::POST, &path, &self.admin, Some(body))
            .await
    }

    /// Every record of the tenant's chain.
    async fn records(&self) -> Vec<Value> {
        let path = format!("/v1/audit?tenant_id={TENANT}&limit=1000");
        let page = self.call(Method::GET, &path, &self.admin, None).await;
        assert_eq!(page.status, StatusCode::OK);
        page.json()["records"].as_array().cloned().expect("records")
    }
}

fn policy(enabled: bool) -> Value {
    json!({
        "rules": [
            {"secret_names": ["payments/*"], "engines": ["PH1.CONNECTOR"], "operations": ["GET_HANDLE", "ISSUE_EPHEMERAL"]},
            {"secret_names": ["*"], "engines": ["PH1.OS"], "operations": ["GET_HANDLE", "ROTATE", "REVOKE"]}
        ],
        "admins": ["u-admin"],
        "enabled": enabled
    })
}

fn with(mut req: Value, field: &str, value: Value) -> Value {
    req[field] = value;
    req
}

/// Every kind of decision the chain records, each answered as the contract says.
async fn mixed_traffic(s: &Server) {
    s.put_policy(&policy(true)).await;
    let created = s
        .admin_post("secrets", &json!({"secret_name": "payments/stripe"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let imported = json!({
        "secret_name": "payments/imported", "material_b64": "aW1wb3J0ZWQtb25l",
        "ephemeral_ttl_ms": {"min": 1000, "max": 60000, "default": 5000},
        "handle_ttl_ms": 120000
    });
    assert_eq!(
        s.admin_post("secrets", &imported).await.status,
        StatusCode::CREATED
    );

    // Allowed, refused by authorization, by TTL bounds, at schema time, for a missing secret.
    let handle = s.kms(&request("GET_HANDLE", "h-1")).await;
    assert_eq!(handle.reason(), "PH1_KMS_OK_MATERIAL_ISSUE");
    let stranger = with(
        request("GET_HANDLE", "h-2"),
        "requester_engine_id",
        json!("PH1.OTHER"),
    );
    assert_eq!(s.kms(&stranger).await.reason(), "KMS_NOT_AUTHORIZED");
    let short = with(
        request("ISSUE_EPHEMERAL", "e-1"),
        "requested_ttl_ms",
        json!(1),
    );
    assert_eq!(s.kms(&short).await.reason(), "KMS_TTL_OUT_OF_BOUNDS");
    let imported_credential = with(
        with(
            request("ISSUE_EPHEMERAL", "e-2"),
            "secret_name",
            json!("payments/imported"),
        ),
        "requested_ttl_ms",
        json!(2000),
    );
    assert!(s.kms(&imported_credential).await.status.is_success());
    let mut unnamed = request("GET_HANDLE", "s-1");
    unnamed.as_object_mut().map(|o| o.remove("secret_name"));
    assert_eq!(
        s.kms(&unnamed).await.reason(),
        "PH1_KMS_UPSTREAM_INPUT_MISSING"
    );
    let missing = with(
        request("GET_HANDLE", "m-1"),
        "secret_name",
        json!("payments/none"),
    );
    assert_eq!(s.kms(&missing).await.reason(), "KMS_SECRET_NOT_FOUND");
    let dry = with(request("GET_HANDLE", "d-1"), "dry_run", json!(true));
    assert_eq!(s.kms(&dry).await.reason(), "PH1_KMS_OK_ACCESS_EVALUATE");

    // Idempotent replays: the same request again, and another request under a used key.
    assert_eq!(s.kms(&request("GET_HANDLE", "h-1")).await.body, handle.body);
    assert_eq!(s.kms(&stranger).await.reason(), "KMS_NOT_AUTHORIZED");
    let reused = with(
        request("ISSUE_EPHEMERAL", "h-1"),
        "requested_ttl_ms",
        json!(60_000),
    );
    assert_eq!(s.kms(&reused).await.reason(), "KMS_IDEMPOTENCY_CONFLICT");

    // Rotations: committed, a stale plan, a version conflict, a missing plan, from staged
    // material, and a retry of a commit.
    let rotate = admin_request("ROTATE", "r-1");
    let (plan, done) = s.plan_and_commit(&rotate).await;
    assert_eq!(done.json()["rotated_version"], json!(2));
    let mut stale = admin_request("ROTATE", "r-2");
    stale["simulation_id"] = plan.json()["simulation_id"].clone();
    assert_eq!(s.kms(&stale).await.reason(), "KMS_SIMULATION_STALE");
    let conflict = with(admin_request("ROTATE", "r-3"), "previous_version", json!(1));
    let (refused, _) = s.plan_and_commit(&conflict).await;
    assert_eq!(refused.reason(), "KMS_VERSION_CONFLICT");
    assert_eq!(
        s.kms(&admin_request("ROTATE", "r-4")).await.reason(),
        "KMS_SIMULATION_REQUIRED"
    );
    let mut retry = rotate.clone();
    retry["simulation_id"] = plan.json()["simulation_id"].clone();
    assert_eq!(
        s.kms(&retry).await.body,
        done.body,
        "the stored answer again"
    );
    let stage = json!({"secret_name": "payments/imported", "material_b64": "aW1wb3J0ZWQtdHdv"});
    assert_eq!(
        s.admin_post("staged-versions", &stage).await.status,
        StatusCode::ACCEPTED
    );
    let from_staged = with(
        admin_request("ROTATE", "r-5"),
        "secret_name",
        json!("payments/imported"),
    );
    let (_, done) = s.plan_and_commit(&from_staged).await;
    assert_eq!(done.json()["rotated_version"], json!(2));
    let unstaged = with(
        admin_request("ROTATE", "r-6"),
        "secret_name",
        json!("payments/imported"),
    );
    assert_eq!(
        s.kms(&with(unstaged, "dry_run", json!(true)))
            .await
            .reason(),
        "KMS_ROTATION_FAILED"
    );

    // A redemption, then revocations of the handle, of version 1, and of a version twice.
    let handle_ref = handle.json()["secret_handle"].clone();
    let redeemed = s
        .redeem(&json!({"tenant_id": TENANT, "secret_handle": handle_ref}))
        .await;
    assert_eq!(redeemed.status, StatusCode::OK);
    let revoke_handle = with(
        admin_request("REVOKE", "v-1"),
        "revoke_target",
        json!({"secret_handle": handle_ref}),
    );
    assert!(
        s.plan_and_commit(&revoke_handle)
            .await
            .1
            .status
            .is_success()
    );
    let revoke_v1 = with(
        admin_request("REVOKE", "v-2"),
        "revoke_target",
        json!({"version": 1}),
    );
    assert!(s.plan_and_commit(&revoke_v1).await.1.status.is_success());
    let again = with(
        admin_request("REVOKE", "v-3"),
        "revoke_target",
        json!({"version": 1}),
    );
    assert_eq!(s.plan_and_commit(&again).await.0.reason(), "KMS_REVOKED");

    // A disabled phase, and the tenant enabled again: two more policy changes.
    s.put_policy(&policy(false)).await;
    assert_eq!(
        s.kms(&request("GET_HANDLE", "x-1")).await.reason(),
        "KMS_DISABLED"
    );
    s.put_policy(&policy(true)).await;
    assert!(
        s.kms(&request("GET_HANDLE", "x-2"))
            .await
            .status
            .is_success()
    );
}

async fn replays_without_a_difference(backend: Backend) {
    let s = Server::start_on(backend).await;
    mixed_traffic(&s).await;
    let records = s.records().await;
    let requests = records
        .iter()
        .filter(|r| {
            matches!(
                r["operation"].as_str(),
                None | Some("GET_HANDLE" | "ISSUE_EPHEMERAL" | "ROTATE" | "REVOKE")
            )
        })
        .count() as u64;
    let report = s.replay(None).await;
    assert_eq!(
        report.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&report.body)
    );
    let report = report.json();
    assert_eq!(report["first_difference"], Value::Null, "{report:#}");
    assert_eq!(report["tenant_id"], json!(TENANT));
    assert_eq!(report["records"], json!(records.len()));
    assert_eq!(report["decisions"], json!(requests));
    assert_eq!(report["matched"], json!(requests));
    assert_eq!(report["differ"], json!(0));
    assert!(requests >= 25, "the traffic made {requests} decisions");

    // From a later record: the state still folds from the first.
    let after = records.len() as u64 - 5;
    let tail = s.replay(Some(&json!({"after_seq": after}))).await.json();
    assert_eq!(tail["records"], json!(5), "{tail:#}");
    assert_eq!(tail["differ"], json!(0), "{tail:#}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_traffic_replays_without_a_difference_on_sqlite() {
    replays_without_a_difference(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_traffic_replays_without_a_difference_on_postgres() {
    replays_without_a_difference(Backend::Postgres).await;
}

/// The seq of the first record whose reason is `reason`.
fn seq_of(records: &[Value], reason: &str) -> i64 {
    records
        .iter()
        .find(|r| r["reason_code"] == json!(reason))
        .and_then(|r| r["seq"].as_i64())
        .expect("a record with that reason")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_record_or_decision_is_named_by_its_seq() {
    let s = Server::start().await;
    mixed_traffic(&s).await;
    let records = s.records().await;
    let db = rusqlite::Connection::open(s.dir.path().join("kms.db")).expect("database");

    // A refusal rewritten as a success in the stored record: the chain stops holding there, and
    // nothing after it is replayed.
    let refused = seq_of(&records, "KMS_NOT_AUTHORIZED");
    let stored: String = db
        .query_row(
            "SELECT record FROM audit WHERE tenant_id = ?1 AND seq = ?2",
            (TENANT, refused),
            |r| r.get(0),
        )
        .expect("record");
    let forged = stored.replace("KMS_NOT_AUTHORIZED", "PH1_KMS_OK_MATERIAL_ISSUE");
    db.execute(
        "UPDATE audit SET record = ?1 WHERE tenant_id = ?2 AND seq = ?3",
        (&forged, TENANT, refused),
    )
    .expect("rewrite");
    let report = s.replay(None).await.json();
    let broken = report["broken"].as_str().unwrap_or_default();
    assert!(broken.contains(&format!("record {refused}")), "{report:#}");
    assert_eq!(report["records"], json!(refused - 1), "{report:#}");
    assert_eq!(report["differ"], json!(0), "{report:#}");
    db.execute(
        "UPDATE audit SET record = ?1 WHERE tenant_id = ?2 AND seq = ?3",
        (&stored, TENANT, refused),
    )
    .expect("restore");

    // The inputs of an allowed GET_HANDLE moved beside another record: they open only beside
    // their own.
    let allowed = seq_of(&records, "PH1_KMS_OK_ACCESS_EVALUATE");
    let moved: Vec<u8> = db
        .query_row(
            "SELECT sealed FROM decision_inputs i JOIN audit a ON a.id = i.audit_id
             WHERE a.tenant_id = ?1 AND a.seq = ?2",
            (TENANT, refused),
            |r| r.get(0),
        )
        .expect("inputs");
    db.execute(
        "UPDATE decision_inputs SET sealed = ?1
         WHERE audit_id = (SELECT id FROM audit WHERE tenant_id = ?2 AND seq = ?3)",
        (&moved, TENANT, allowed),
    )
    .expect("move inputs");
    let report = s.replay(None).await.json();
    assert_eq!(report["broken"], Value::Null, "{report:#}");
    assert_eq!(report["differ"], json!(1), "{report:#}");
    assert_eq!(
        report["first_difference"]["seq"],
        json!(allowed),
        "{report:#}"
    );
    assert_eq!(report["first_difference"]["replayed"], Value::Null);
    let no_refs = serde_json::to_string(&report).expect("json");
    assert!(
        !no_refs.contains("ksh"),
        "a replay shows no handle: {no_refs}"
    );
    s.stop().await;
}

/// Whoever can write the database sets a tenant's policy back to an earlier, enabled version
/// while the chain says it is disabled: the grant it obtains is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_from_a_policy_set_back_in_the_database_is_named() {
    let s = Server::start_on(Backend::Postgres).await;
    s.provision("payments/stripe", None).await;
    let cluster = s.cluster.as_ref().expect("a PostgreSQL cluster");
    let enabled = cluster.sql(
        "kms",
        "SELECT policy_json FROM tenants WHERE tenant_id = 'acme'",
    );
    s.put_policy(&policy(false)).await;
    assert_eq!(
        s.kms(&request("GET_HANDLE", "g-1")).await.reason(),
        "KMS_DISABLED"
    );
    cluster.sql(
        "kms",
        &format!(
            "UPDATE tenants SET policy_version = 1, policy_json = $j${}$j$ WHERE tenant_id = 'acme'",
            enabled.trim()
        ),
    );
    let granted = s.kms(&request("GET_HANDLE", "g-2")).await;
    assert_eq!(
        granted.reason(),
        "PH1_KMS_OK_MATERIAL_ISSUE",
        "the store was set back"
    );
    let seq = granted.json()["audit_seq"].clone();
    let report = s.replay(None).await.json();
    assert_eq!(report["differ"], json!(1), "{report:#}");
    assert_eq!(report["first_difference"]["seq"], seq, "{report:#}");
    let why = report["first_difference"]["why"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("set back"), "{why}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_simulation_counts_exactly_and_changes_nothing() {
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    let start = s.records().await.len() as u64;
    for i in 0..7 {
        assert!(
            s.kms(&request("GET_HANDLE", &format!("a-{i}")))
                .await
                .status
                .is_success()
        );
    }
    for i in 0..3 {
        let other = with(
            request("GET_HANDLE", &format!("b-{i}")),
            "requester_engine_id",
            json!("PH1.OTHER"),
        );
        assert_eq!(s.kms(&other).await.reason(), "KMS_NOT_AUTHORIZED");
    }
    let mut unnamed = request("GET_HANDLE", "s-1");
    unnamed.as_object_mut().map(|o| o.remove("secret_name"));
    assert_eq!(
        s.kms(&unnamed).await.reason(),
        "PH1_KMS_UPSTREAM_INPUT_MISSING"
    );
    // The candidate moves the connector's access to PH1.OTHER.
    let candidate = json!({
        "rules": [{"secret_names": ["payments/*"], "engines": ["PH1.OTHER"], "operations": ["GET_HANDLE"]}]
    });
    let before_policy = s
        .call(Method::GET, "/v1/admin/tenants/acme/policy", &s.admin, None)
        .await
        .body;
    let impact = s.simulate(&json!({"policy": candidate})).await;
    assert_eq!(
        impact.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&impact.body)
    );
    let impact = impact.json();
    assert_eq!(impact["evaluated"], json!(10), "{impact:#}");
    assert_eq!(impact["allow_to_deny"], json!(7));
    assert_eq!(impact["deny_to_allow"], json!(3));
    let changes = impact["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 10);
    let first = &changes[0];
    assert_eq!(first["seq"], json!(start + 1));
    assert_eq!(first["operation"], json!("GET_HANDLE"));
    assert_eq!(first["secret_name"], json!("payments/stripe"));
    assert_eq!(first["requester_engine_id"], json!("PH1.CONNECTOR"));
    assert_eq!(first["requester_user_id"], json!("u-42"));
    assert_eq!(
        (&first["was"], &first["now"]),
        (&json!("ALLOW"), &json!("DENY"))
    );
    assert_eq!(changes[9]["was"], json!("DENY"));

    // Only the last three requests after `after_seq`.
    let tail = s
        .simulate(&json!({"policy": candidate, "after_seq": start + 7}))
        .await
        .json();
    assert_eq!(
        (
            &tail["evaluated"],
            &tail["allow_to_deny"],
            &tail["deny_to_allow"]
        ),
        (&json!(3), &json!(0), &json!(3)),
        "{tail:#}"
    );

    // Nothing changed but two POLICY_SIMULATE records.
    let after_policy = s
        .call(Method::GET, "/v1/admin/tenants/acme/policy", &s.admin, None)
        .await
        .body;
    assert_eq!(before_policy, after_policy);
    let records = s.records().await;
    let simulations: Vec<_> = records
        .iter()
        .filter(|r| r["operation"] == json!("POLICY_SIMULATE"))
        .collect();
    assert_eq!(simulations.len(), 2);
    assert!(simulations[0]["policy_digest"].is_string());
    assert!(
        s.kms(&request("GET_HANDLE", "a-after"))
            .await
            .status
            .is_success()
    );

    // Bad input changes nothing: an unknown tenant, an invalid policy, `after_seq` past the head.
    let length = s.records().await.len();
    let unknown = s
        .call(
            Method::POST,
            "/v1/admin/tenants/nobody/policy/simulate",
            &s.admin,
            Some(&json!({"policy": candidate})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(!unknown.reason().is_empty());
    let invalid = s
        .simulate(&json!({"policy": {"rules": [{"engines": []}]}}))
        .await;
    assert!(invalid.status.is_client_error(), "{}", invalid.status);
    assert!(!invalid.reason().is_empty());
    let past = s
        .simulate(&json!({"policy": candidate, "after_seq": 1_000_000}))
        .await;
    assert_eq!(past.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(past.reason(), "PH1_KMS_VALIDATION_FAILED");
    let past = s.replay(Some(&json!({"after_seq": 1_000_000}))).await;
    assert_eq!(past.status, StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = s
        .call(
            Method::POST,
            "/v1/admin/tenants/nobody/replay",
            &s.admin,
            None,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let bad_body = s.replay(Some(&json!({"after": 1}))).await;
    assert_eq!(bad_body.status, StatusCode::BAD_REQUEST);
    let not_admin = s.call(Method::POST, REPLAY, &s.os, None).await;
    assert_eq!(not_admin.status, StatusCode::FORBIDDEN);
    assert_eq!(s.records().await.len(), length, "bad input wrote nothing");
    s.stop().await;
}

/// Handles asked for while the secret rotates are granted (a rotation does not void the version
/// a handle was issued from), and the whole race replays without a difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handles_granted_while_the_secret_rotates_replay_without_a_difference() {
    let s = std::sync::Arc::new(Server::start().await);
    s.put_policy(&policy(true)).await;
    let created = s
        .admin_post("secrets", &json!({"secret_name": "payments/stripe"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut reasons = Vec::new();
            for i in 0..15 {
                let key = format!("w{worker}-{i}");
                if worker % 2 == 0 {
                    let (_, done) = s.plan_and_commit(&admin_request("ROTATE", &key)).await;
                    reasons.push(done.reason());
                } else {
                    reasons.push(s.kms(&request("GET_HANDLE", &key)).await.reason());
                }
            }
            reasons
        }));
    }
    for task in tasks {
        for reason in task.await.expect("worker") {
            assert!(
                ["PH1_KMS_OK_MATERIAL_ISSUE", "KMS_SIMULATION_STALE"].contains(&reason.as_str()),
                "{reason}"
            );
        }
    }
    let report = s.replay(None).await.json();
    assert_eq!(report["differ"], json!(0), "{report:#}");
    assert_eq!(report["decisions"], report["matched"]);
}
