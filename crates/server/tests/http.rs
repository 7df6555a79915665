//! The HTTP surface: bad input, roles on every route, idempotency, TLS and mTLS, OpenAPI.

mod common;

use std::sync::Arc;

use common::*;
use reqwest::{Method, StatusCode};
use selene_kms_server::ServeOptions;
use serde_json::{Value, json};

/// What is sent, with which content type, and the status and reason expected.
type Case = (
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_with_a_reason_code_and_the_server_keeps_serving() {
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    let os = s.os.clone();
    let good = serde_json::to_vec(&request("GET_HANDLE", "k-ok")).expect("json");
    let mut cases: Vec<Case> = vec![
        (
            "malformed",
            Some("application/json"),
            b"{\"tenant_id\":".to_vec(),
            400,
            "PH1_KMS_INPUT_SCHEMA_INVALID",
        ),
        (
            "not an object",
            Some("application/json"),
            b"[1,2,3]".to_vec(),
            400,
            "PH1_KMS_INPUT_SCHEMA_INVALID",
        ),
        (
            "wrong type",
            Some("application/json"),
            br#"{"tenant_id":5}"#.to_vec(),
            400,
            "PH1_KMS_INPUT_SCHEMA_INVALID",
        ),
        (
            "unknown field",
            Some("application/json"),
            br#"{"tenant_id":"acme","x":1}"#.to_vec(),
            400,
            "PH1_KMS_INPUT_SCHEMA_INVALID",
        ),
        (
            "duplicate key",
            Some("application/json"),
            br#"{"tenant_id":"acme","tenant_id":"b"}"#.to_vec(),
            400,
            "PH1_KMS_INPUT_SCHEMA_INVALID",
        ),
        (
            "invalid utf-8",
            Some("application/json"),
            b"{\"tenant_id\":\"\xff\xfe\"}".to_vec(),
            400,
            "PH1_KMS_INPUT_SCHEMA_INVALID",
        ),
        (
            "deep nesting",
            Some("application/json"),
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            400,
            "PH1_KMS_INPUT_SCHEMA_INVALID",
        ),
        (
            "missing fields",
            Some("application/json"),
            br#"{"tenant_id":"acme"}"#.to_vec(),
            400,
            "PH1_KMS_UPSTREAM_INPUT_MISSING",
        ),
        (
            "wrong content type",
            Some("text/plain"),
            good.clone(),
            415,
            "KMS_UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            "no content type",
            None,
            good.clone(),
            415,
            "KMS_UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            "oversized",
            Some("application/json"),
            vec![b' '; 70 * 1024],
            413,
            "KMS_PAYLOAD_TOO_LARGE",
        ),
    ];
    for (field, value) in [
        ("secret_name", json!("../etc/passwd")),
        ("secret_name", json!("Payments/Stripe")),
        ("tenant_id", json!("ACME")),
        ("requester_engine_id", json!("has space")),
        ("idempotency_key", json!("")),
        ("operation", json!("DELETE")),
        ("requested_ttl_ms", json!(-1)),
    ] {
        let mut v = request("GET_HANDLE", "k-bad");
        v[field] = value;
        cases.push((
            "invalid name",
            Some("application/json"),
            serde_json::to_vec(&v).expect("json"),
            400,
            "PH1_KMS_INPUT_SCHEMA_INVALID",
        ));
    }
    for (what, ct, body, status, reason) in cases {
        let a = s
            .raw(Method::POST, "/v1/kms/requests", Some(&os), ct, body)
            .await;
        assert_eq!(
            a.status.as_u16(),
            status,
            "{what}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.reason(), reason, "{what}");
        assert!(s.healthy().await, "the server keeps serving after {what}");
    }
    // A refusal of a KMS request is bundle-shaped.
    let a = s
        .raw(
            Method::POST,
            "/v1/kms/requests",
            Some(&os),
            Some("application/json"),
            br#"{"tenant_id":"acme"}"#.to_vec(),
        )
        .await;
    let b = a.json();
    assert_eq!(b["validation_status"], "FAIL");
    assert!(b["diagnostics"].as_array().is_some_and(|d| !d.is_empty()));
    // Unknown routes and methods.
    let a = s
        .raw(Method::GET, "/v2/nothing", None, None, Vec::new())
        .await;
    assert_eq!(
        (a.status, a.reason()),
        (StatusCode::NOT_FOUND, "KMS_ROUTE_NOT_FOUND".into())
    );
    let a = s
        .raw(
            Method::DELETE,
            "/v1/kms/requests",
            Some(&os),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(
        (a.status, a.reason()),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "KMS_METHOD_NOT_ALLOWED".into()
        )
    );
    // Admin bad input.
    let admin = s.admin.clone();
    for (path, body) in [
        (
            format!("/v1/admin/tenants/{TENANT}/secrets"),
            json!({"secret_name": "ok/name", "material_b64": "***"}),
        ),
        (
            format!("/v1/admin/tenants/{TENANT}/secrets"),
            json!({"secret_name": "ok/name", "ephemeral_ttl_ms": {"min": 10, "max": 5, "default": 7}}),
        ),
        (
            "/v1/admin/tenants/BAD/secrets".to_owned(),
            json!({"secret_name": "ok"}),
        ),
        (
            format!("/v1/admin/tenants/{TENANT}/staged-versions"),
            json!({"secret_name": "payments/stripe"}),
        ),
    ] {
        let a = s.call(Method::POST, &path, &admin, Some(&body)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path} {body}");
        assert!(!a.reason().is_empty());
        assert!(s.healthy().await);
    }
    let a = s
        .call(
            Method::PUT,
            &format!("/v1/admin/tenants/{TENANT}/policy"),
            &admin,
            Some(&json!({"rules": "all"})),
        )
        .await;
    assert_eq!(
        (a.status, a.reason()),
        (
            StatusCode::BAD_REQUEST,
            "PH1_KMS_INPUT_SCHEMA_INVALID".into()
        )
    );
    let a = s
        .call(
            Method::GET,
            "/v1/audit?tenant_id=acme&limit=abc",
            &admin,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = s.call(Method::GET, "/v1/audit", &admin, None).await;
    assert_eq!(a.reason(), "PH1_KMS_UPSTREAM_INPUT_MISSING");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_the_token_and_the_role() {
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    let routes: Vec<(Method, String, &str)> = vec![
        (Method::POST, "/v1/kms/requests".into(), "os"),
        (Method::POST, "/v1/material/redeem".into(), "executor"),
        (
            Method::POST,
            format!("/v1/admin/tenants/{TENANT}/secrets"),
            "admin",
        ),
        (
            Method::GET,
            format!("/v1/admin/tenants/{TENANT}/secrets"),
            "admin",
        ),
        (
            Method::POST,
            format!("/v1/admin/tenants/{TENANT}/staged-versions"),
            "admin",
        ),
        (
            Method::PUT,
            format!("/v1/admin/tenants/{TENANT}/policy"),
            "admin",
        ),
        (
            Method::GET,
            format!("/v1/admin/tenants/{TENANT}/policy"),
            "admin",
        ),
        (
            Method::GET,
            format!("/v1/audit?tenant_id={TENANT}"),
            "admin",
        ),
        (Method::GET, "/v1/audit/export".into(), "admin"),
    ];
    let tokens = [
        ("os", s.os.clone()),
        ("executor", s.executor.clone()),
        ("admin", s.admin.clone()),
    ];
    for (method, path, role) in &routes {
        let body = b"{}".to_vec();
        let none = s
            .raw(
                method.clone(),
                path,
                None,
                Some("application/json"),
                body.clone(),
            )
            .await;
        assert_eq!(
            (none.status, none.reason()),
            (StatusCode::UNAUTHORIZED, "KMS_UNAUTHENTICATED".into()),
            "{path} without a token"
        );
        let bad = s
            .raw(
                method.clone(),
                path,
                Some("skms_os_forged"),
                Some("application/json"),
                body.clone(),
            )
            .await;
        assert_eq!(
            bad.status,
            StatusCode::UNAUTHORIZED,
            "{path} with a bad token"
        );
        for (other, token) in &tokens {
            if other == role {
                continue;
            }
            let a = s
                .raw(
                    method.clone(),
                    path,
                    Some(token),
                    Some("application/json"),
                    body.clone(),
                )
                .await;
            assert_eq!(
                (a.status, a.reason()),
                (StatusCode::FORBIDDEN, "KMS_FORBIDDEN_ROLE".into()),
                "{path} as {other}"
            );
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_replays_byte_for_byte_and_refuses_a_reused_key() {
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    let req = request("GET_HANDLE", "idem-1");
    let first = s.kms(&req).await;
    let mut same = req.clone();
    same["correlation_id"] = json!("c-other");
    same["max_diagnostics"] = json!(3);
    let again = s.kms(&same).await;
    assert_eq!(first.body, again.body);
    let mut different = req.clone();
    different["operation"] = json!("ISSUE_EPHEMERAL");
    let a = s.kms(&different).await;
    assert_eq!(
        (a.status.as_u16(), a.reason()),
        (422, "KMS_IDEMPOTENCY_CONFLICT".into())
    );
    // Concurrent duplicates: one answer, byte for byte.
    let req = request("GET_HANDLE", "idem-2");
    let s = Arc::new(s);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (s, req) = (s.clone(), req.clone());
        tasks.push(tokio::spawn(async move { s.kms(&req).await.body }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.expect("task"));
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_redemption_rules_hold_over_http() {
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    let handle = s.kms(&request("GET_HANDLE", "r-1")).await.json()["secret_handle"].clone();
    let ok = s
        .redeem(&json!({"tenant_id": TENANT, "secret_handle": handle}))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    // Another tenant's name for the same handle does not open it.
    let foreign = s
        .redeem(&json!({"tenant_id": "globex", "secret_handle": handle}))
        .await;
    assert_eq!(
        (foreign.status.as_u16(), foreign.reason()),
        (400, "KMS_HANDLE_INVALID".into())
    );
    // An altered handle does not open.
    let mut altered = handle.as_str().expect("text").to_owned();
    altered.replace_range(20..21, if &altered[20..21] == "A" { "B" } else { "A" });
    let a = s
        .redeem(&json!({"tenant_id": TENANT, "secret_handle": altered}))
        .await;
    assert_eq!(a.reason(), "KMS_HANDLE_INVALID");
    // Revoke all versions: the handle is refused, as is any new one.
    let mut revoke = admin_request("REVOKE", "r-2");
    revoke["revoke_target"] = json!({"all_versions": true});
    let (_, commit) = s.plan_and_commit(&revoke).await;
    assert_eq!(commit.json()["revoked"]["target"], "ALL_VERSIONS");
    let a = s
        .redeem(&json!({"tenant_id": TENANT, "secret_handle": handle}))
        .await;
    assert_eq!((a.status.as_u16(), a.reason()), (410, "KMS_REVOKED".into()));
    let a = s.kms(&request("GET_HANDLE", "r-3")).await;
    assert_eq!(a.reason(), "KMS_REVOKED");
    // A commit without a simulation is refused.
    let mut rotate = admin_request("ROTATE", "r-4");
    rotate["previous_version"] = json!(1);
    let a = s.kms(&rotate).await;
    assert_eq!(
        (a.status.as_u16(), a.reason()),
        (409, "KMS_SIMULATION_REQUIRED".into())
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_and_requires_client_certificates_with_a_client_ca() {
    let pki = Pki::new();
    let tls = pki.server(true);
    let s = Server::start_with(ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls: Some(tls),
        ..ServeOptions::default()
    })
    .await;
    let url = s.url.replace("127.0.0.1", "localhost");
    // Without a client certificate the handshake fails.
    let anonymous = pki.http(None);
    assert!(
        anonymous
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_err()
    );
    // With one, HTTPS works.
    let name = rcgen::SanType::DnsName("executor".try_into().expect("name"));
    let mutual = pki.http(Some(pki.client(vec![name])));
    let r = mutual
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("https");
    assert_eq!(r.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_a_public_address_needs_an_explicit_opt_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = selene_kms_store::RootKey::create_file(&dir.path().join("root.key")).expect("key");
    let location = selene_kms_backends::StoreLocation::Embedded(dir.path().join("kms.db"));
    let store = selene_kms_backends::open_store(&location, root, true)
        .await
        .expect("store");
    let engine = Arc::new(selene_kms_server::Engine::new(store));
    let refused = selene_kms_server::serve(
        engine,
        ServeOptions {
            listen: "0.0.0.0:0".parse().expect("addr"),
            ..ServeOptions::default()
        },
    )
    .await;
    assert!(refused.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_metrics_and_health_are_served() {
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    s.kms(&request("GET_HANDLE", "m-1")).await;
    let doc = s
        .raw(Method::GET, "/v1/openapi.json", None, None, Vec::new())
        .await
        .json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for schema in [
        "RawKmsRequest",
        "MaterialBundle",
        "PolicyDocument",
        "AuditRecord",
        "RawRedeemRequest",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
    assert!(doc["paths"]["/v1/kms/requests"]["post"].is_object());
    assert!(
        doc["components"]["schemas"]["MaterialBundle"]["properties"]["reason_code"].is_object()
    );
    let metrics = String::from_utf8(
        s.raw(Method::GET, "/metrics", None, None, Vec::new())
            .await
            .body,
    )
    .expect("text");
    assert!(metrics.contains("selene_kms_requests_total{operation=\"GET_HANDLE\",reason_code=\"PH1_KMS_OK_MATERIAL_ISSUE\"} 1"));
    assert!(metrics.lines().any(|l| {
        l.starts_with("selene_kms_request_duration_seconds_bucket{") && l.contains("route=\"kms\"")
    }));
    assert!(metrics.ends_with("# EOF\n"), "OpenMetrics text");
    assert!(metrics.contains("selene_kms_commit_batch_size_count"));
    // The server signed its first manifest before it served anything.
    assert!(metric(&metrics, "selene_kms_manifests_signed_total").is_some_and(|n| n >= 1));
    assert_eq!(
        metric(&metrics, "selene_kms_manifest_failures_total"),
        Some(0)
    );
    assert!(metric(&metrics, "selene_kms_manifest_signed_at_seconds").is_some_and(|t| t > 0));
    // The day-2 families: the build, readiness, the store's failures and flushes, connections.
    assert!(metrics.contains(&format!(
        "selene_kms_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    assert_eq!(metric(&metrics, "selene_kms_ready"), Some(1));
    assert_eq!(
        metric(&metrics, "selene_kms_commit_failures_total"),
        Some(0)
    );
    assert_eq!(metric(&metrics, "selene_kms_auth_failures_total"), Some(0));
    assert!(
        metric(&metrics, "selene_kms_fsync_seconds_count").is_some_and(|n| n >= 1),
        "the commits above were flushed"
    );
    assert!(
        metric(&metrics, "selene_kms_open_connections").is_some_and(|n| n >= 1),
        "this scrape's own connection is open"
    );
    let ready = s.raw(Method::GET, "/readyz", None, None, Vec::new()).await;
    assert_eq!(ready.status, StatusCode::OK);
    s.stop().await;
}

/// Disabling a tenant stops every use of its outstanding handles, and the policy's
/// `not_before_ms` refuses every handle issued before it as revoked (the tenant-wide brake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_tenant_or_the_brake_stops_redemption() {
    async fn put_policy(s: &Server, extra: Value) {
        let mut policy = json!({
            "rules": [{"secret_names": ["*"], "engines": ["PH1.CONNECTOR"], "operations": ["GET_HANDLE"]}]
        });
        for (k, v) in extra.as_object().expect("object") {
            policy[k] = v.clone();
        }
        let path = format!("/v1/admin/tenants/{TENANT}/policy");
        let a = s.call(Method::PUT, &path, &s.admin, Some(&policy)).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    let handle = s.kms(&request("GET_HANDLE", "d-1")).await.json()["secret_handle"].clone();
    let body = json!({"tenant_id": TENANT, "secret_handle": handle});
    assert_eq!(s.redeem(&body).await.status, StatusCode::OK);
    put_policy(&s, json!({"enabled": false})).await;
    let a = s.redeem(&body).await;
    assert_eq!(
        (a.status.as_u16(), a.reason()),
        (403, "KMS_DISABLED".into())
    );
    put_policy(&s, json!({"enabled": true})).await;
    assert_eq!(
        s.redeem(&body).await.status,
        StatusCode::OK,
        "enabled again"
    );
    let brake = selene_kms_server::now_ms() + 1;
    put_policy(&s, json!({ "not_before_ms": brake })).await;
    let a = s.redeem(&body).await;
    assert_eq!((a.status.as_u16(), a.reason()), (410, "KMS_REVOKED".into()));
    s.stop().await;
}

/// The v1 contract: every refusal on `POST /v1/kms/requests` is a refusal bundle. Those of
/// authentication, role, content type and size once answered `{reason_code, message}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_refusals_before_the_request_is_read_are_bundles_too() {
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    let good = serde_json::to_vec(&request("GET_HANDLE", "k-shape")).expect("json");
    let json_ct = Some("application/json");
    // What stops it, the token and content type sent, the body, and the status and reason.
    type Stop<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Vec<u8>,
        u16,
        &'a str,
    );
    let cases: Vec<Stop<'_>> = vec![
        (
            "no token",
            None,
            json_ct,
            good.clone(),
            401,
            "KMS_UNAUTHENTICATED",
        ),
        (
            "unknown token",
            Some("skms_os_forged"),
            json_ct,
            good.clone(),
            401,
            "KMS_UNAUTHENTICATED",
        ),
        // Authentication comes first, whatever the body: an unknown token or a wrong role with
        // a body of another type is refused unread (an oversized one: see
        // `authentication_comes_before_the_body_is_read`).
        (
            "unknown token, not json",
            Some("skms_os_forged"),
            Some("text/plain"),
            good.clone(),
            401,
            "KMS_UNAUTHENTICATED",
        ),
        (
            "admin token, not json",
            Some(&s.admin),
            Some("text/plain"),
            good.clone(),
            403,
            "KMS_FORBIDDEN_ROLE",
        ),
        (
            "admin token",
            Some(&s.admin),
            json_ct,
            good.clone(),
            403,
            "KMS_FORBIDDEN_ROLE",
        ),
        (
            "executor token",
            Some(&s.executor),
            json_ct,
            good.clone(),
            403,
            "KMS_FORBIDDEN_ROLE",
        ),
        (
            "oversized",
            Some(&s.os),
            json_ct,
            vec![b' '; 70 * 1024],
            413,
            "KMS_PAYLOAD_TOO_LARGE",
        ),
        (
            "not json",
            Some(&s.os),
            Some("text/plain"),
            good.clone(),
            415,
            "KMS_UNSUPPORTED_MEDIA_TYPE",
        ),
    ];
    for (what, token, ct, body, status, reason) in cases {
        let a = s
            .raw(Method::POST, "/v1/kms/requests", token, ct, body)
            .await;
        assert_eq!(a.status.as_u16(), status, "{what}");
        let b = a.json();
        assert_eq!(b["validation_status"], "FAIL", "{what}: {b}");
        assert_eq!(b["reason_code"], reason, "{what}");
        assert!(
            b.get("message").is_none(),
            "{what}: not an admin error: {b}"
        );
        // Parses as the bundle type itself: every field of the contract, nothing else.
        let bundle: selene_kms_core::MaterialBundle =
            serde_json::from_value(b.clone()).expect("a bundle");
        assert!(!bundle.is_ok());
        for field in [
            "operation",
            "secret_ref",
            "secret_handle",
            "ephemeral_credential_ref",
            "expires_at_ms",
            "rotated_version",
            "revoked",
            "simulation_id",
            "audit_seq",
        ] {
            assert!(b[field].is_null(), "{what}: {field} in {b}");
        }
        assert_eq!(b["dry_run"], false, "{what}");
    }
    // A 401 still says how to authenticate.
    let r = s
        .http
        .post(format!("{}/v1/kms/requests", s.url))
        .header("content-type", "application/json")
        .body(good)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    // Admin routes keep their error shape.
    let a = s
        .raw(
            Method::GET,
            &format!("/v1/admin/tenants/{TENANT}/policy"),
            None,
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["message"].as_str().map(str::is_empty), Some(false));
    s.stop().await;
}

/// REASON_CODES.md: a dry run of GET_HANDLE or ISSUE_EPHEMERAL issues nothing and answers
/// `PH1_KMS_OK_ACCESS_EVALUATE` (it once answered `PH1_KMS_OK_MATERIAL_ISSUE`); the commit
/// still answers `PH1_KMS_OK_MATERIAL_ISSUE`, and so does a ROTATE's dry run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_of_reads_answer_access_evaluate_over_http() {
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    for op in ["GET_HANDLE", "ISSUE_EPHEMERAL"] {
        let mut req = request(op, &format!("dry-{op}"));
        req["dry_run"] = json!(true);
        let a = s.kms(&req).await;
        assert_eq!(
            (a.status, a.reason()),
            (StatusCode::OK, "PH1_KMS_OK_ACCESS_EVALUATE".to_owned()),
            "{op} dry run"
        );
        assert_eq!(a.json()["validation_status"], "OK");
        let a = s.kms(&request(op, &format!("commit-{op}"))).await;
        assert_eq!(a.reason(), "PH1_KMS_OK_MATERIAL_ISSUE", "{op} commit");
    }
    let (plan, done) = s
        .plan_and_commit(&admin_request("ROTATE", "dry-rotate"))
        .await;
    assert_eq!(plan.reason(), "PH1_KMS_OK_MATERIAL_ISSUE");
    assert_eq!(done.reason(), "PH1_KMS_OK_MATERIAL_ISSUE");
    let metrics = String::from_utf8(
        s.raw(Method::GET, "/metrics", None, None, Vec::new())
            .await
            .body,
    )
    .expect("text");
    assert!(metrics.contains(
        "selene_kms_requests_total{operation=\"GET_HANDLE\",reason_code=\"PH1_KMS_OK_ACCESS_EVALUATE\"} 1"
    ));
    s.stop().await;
}

/// A request that announces a body larger than the limit is answered by its credential first:
/// 401 for an unknown token, 403 for a wrong role, before a byte of the body is sent (413 is
/// for a caller that may send one: `bad_input_gets_a_4xx_with_a_reason_code_…`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_comes_before_the_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start().await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    for (token, status) in [("skms_os_forged", "401"), (s.admin.as_str(), "403")] {
        let mut c = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let head = format!(
            "POST /v1/kms/requests HTTP/1.1\r\nHost: kms\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 71680\r\n\r\n"
        );
        c.write_all(head.as_bytes()).await.expect("head sent");
        let mut answer = vec![0u8; 12];
        c.read_exact(&mut answer).await.expect("an answer");
        assert_eq!(
            String::from_utf8_lossy(&answer),
            format!("HTTP/1.1 {status}"),
            "{token}"
        );
    }
    s.stop().await;
}

/// The console's routes hold the same lines as the rest: the admin requests route takes admins
/// only, mutations only, and only the tenant of its path, within the caller's scope; audit
/// filters name real operations and reasons; a verification is scoped too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consoles_routes_keep_role_tenant_and_operation() {
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    let path = format!("/v1/admin/tenants/{TENANT}/requests");
    let send = |token: String, body: Value| {
        let (s, path) = (&s, path.clone());
        async move { s.call(Method::POST, &path, &token, Some(&body)).await }
    };
    let mut rotate = admin_request("ROTATE", "console-rotate");
    rotate["dry_run"] = json!(true);
    let planned = send(s.admin.clone(), rotate.clone()).await;
    assert_eq!(
        planned.json()["validation_status"],
        "OK",
        "{}",
        planned.json()
    );
    let as_os = send(s.os.clone(), rotate.clone()).await;
    assert_eq!(as_os.reason(), "KMS_FORBIDDEN_ROLE");
    for op in ["GET_HANDLE", "ISSUE_EPHEMERAL"] {
        let mut read = request(op, &format!("console-{op}"));
        read["dry_run"] = json!(true);
        let refused = send(s.admin.clone(), read).await;
        assert_eq!(refused.reason(), "KMS_FORBIDDEN_ROLE", "{op}");
        assert_eq!(refused.json()["validation_status"], "FAIL");
    }
    let mut elsewhere = rotate.clone();
    elsewhere["tenant_id"] = json!("globex");
    let mismatch = send(s.admin.clone(), elsewhere).await;
    assert_eq!(mismatch.reason(), "PH1_KMS_INPUT_SCHEMA_INVALID");
    // An admin of another tenant only.
    let made = s
        .call(
            Method::POST,
            "/v1/admin/principals",
            &s.admin,
            Some(&json!({"name": "globex-admin", "role": "admin", "tenants": ["globex"]})),
        )
        .await;
    let scoped = made.json()["token"].as_str().expect("token").to_owned();
    let foreign = send(scoped.clone(), rotate).await;
    assert_eq!(foreign.reason(), "KMS_FORBIDDEN_TENANT");
    let verify = s
        .call(
            Method::GET,
            &format!("/v1/audit/verify?tenant_id={TENANT}"),
            &scoped,
            None,
        )
        .await;
    assert_eq!(verify.reason(), "KMS_FORBIDDEN_TENANT");
    // Filters: an unknown operation or reason is refused, a known one keeps only its records.
    for (query, diagnostic) in [
        ("operation=ROTATED", "operation:unknown"),
        ("reason_code=KMS_NOPE", "reason_code:unknown"),
    ] {
        let a = s
            .call(
                Method::GET,
                &format!("/v1/audit?tenant_id={TENANT}&{query}"),
                &s.admin,
                None,
            )
            .await;
        assert_eq!(a.json()["diagnostics"], json!([diagnostic]), "{query}");
    }
    let page = s
        .call(
            Method::GET,
            &format!("/v1/audit?tenant_id={TENANT}&operation=ROTATE&limit=10"),
            &s.admin,
            None,
        )
        .await
        .json();
    let records = page["records"].as_array().expect("records");
    assert!(!records.is_empty());
    assert!(records.iter().all(|r| r["operation"] == "ROTATE"), "{page}");
    assert_eq!(
        page["next_after_seq"],
        Value::Null,
        "the chain ends within the scan"
    );
    s.stop().await;
}

/// A verification on the server reads the witness file it appends to: a witness that holds
/// verifies, one whose manifest was altered does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_checks_the_servers_witness_file() {
    let witness_dir = tempfile::tempdir().expect("dir");
    let witness = witness_dir.path().join("witness.jsonl");
    let s = Server::start_with(ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        witness_file: Some(witness.clone()),
        ..ServeOptions::default()
    })
    .await;
    s.provision("payments/stripe", None).await;
    // The server signs a manifest within a second of its chains moving.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_to_string(&witness).map_or(true, |t| t.trim().is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no manifest witnessed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let key = s
        .raw(Method::GET, "/v1/audit/public-key", None, None, Vec::new())
        .await
        .json()["audit_public_key"]
        .as_str()
        .expect("key")
        .to_owned();
    let path = format!("/v1/audit/verify?tenant_id={TENANT}&public_key={key}");
    let verify = || s.call(Method::GET, &path, &s.admin, None);
    let held = verify().await.json();
    assert_eq!(held["verified"], true, "{held}");
    let text = std::fs::read_to_string(&witness).expect("witness");
    let line = text.lines().next().expect("a manifest");
    let mut manifest: Value = serde_json::from_str(line).expect("JSON");
    manifest["seq"] = json!(manifest["seq"].as_u64().expect("seq") + 1000);
    std::fs::write(&witness, format!("{manifest}\n{text}")).expect("altered");
    let broken = verify().await.json();
    assert_eq!(broken["verified"], false, "{broken}");
    assert!(
        broken["problem"]
            .as_str()
            .is_some_and(|p| p.contains("witness")),
        "{broken}"
    );
    s.stop().await;
}
