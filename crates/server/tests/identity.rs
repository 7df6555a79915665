//! Identity over real HTTP: principals and tokens, their revocation, tenant scope, the last-admin
//! rule, bad input, and the audit of it all, on both backends where the store is involved.

mod common;

use common::{Backend, Server, TENANT, request};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

impl Server {
    async fn create_principal(&self, body: &Value) -> common::Answer {
        self.call(
            Method::POST,
            "/v1/admin/principals",
            &self.admin,
            Some(body),
        )
        .await
    }

    async fn whoami(&self, token: &str) -> common::Answer {
        self.call(Method::GET, "/v1/auth/whoami", token, None).await
    }

    async fn principals(&self) -> Vec<Value> {
        let a = self
            .call(Method::GET, "/v1/admin/principals", &self.admin, None)
            .await;
        assert_eq!(a.status, StatusCode::OK);
        a.json()["principals"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn system_chain(&self) -> Vec<Value> {
        let a = self
            .call(
                Method::GET,
                "/v1/audit?tenant_id=_system",
                &self.admin,
                None,
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        a.json()["records"].as_array().cloned().unwrap_or_default()
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

async fn lifecycle(backend: Backend) {
    let s = Server::start_on(backend).await;
    let me = s.whoami(&s.admin).await.json();
    assert_eq!(me["name"], "bootstrap-admin");
    assert_eq!(me["role"], "admin");
    assert_eq!(me["tenants"], json!(["*"]));
    let admin_id = text(&me["principal_id"]);
    assert!(admin_id.starts_with("kp_"), "{admin_id}");

    let created = s
        .create_principal(&json!({"name": "ci-os", "role": "os", "tenants": [TENANT]}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let created = created.json();
    let id = text(&created["principal_id"]);
    let first = text(&created["token"]);
    let first_id = text(&created["token_id"]);
    assert!(first_id.starts_with("kt_"));
    assert_eq!(created["expires_at_ms"], Value::Null);
    assert_eq!(s.whoami(&first).await.json()["principal_id"], id.as_str());

    // Rotation: a second token; the first keeps working until revoked.
    let path = format!("/v1/admin/principals/{id}/tokens");
    let issued = s
        .call(
            Method::POST,
            &path,
            &s.admin,
            Some(&json!({"ttl_ms": 3_600_000})),
        )
        .await;
    assert_eq!(issued.status, StatusCode::CREATED);
    let second = text(&issued.json()["token"]);
    let second_id = text(&issued.json()["token_id"]);
    assert!(issued.json()["expires_at_ms"].as_u64().is_some());
    assert_eq!(s.whoami(&first).await.status, StatusCode::OK);
    assert_eq!(s.whoami(&second).await.status, StatusCode::OK);

    // Listings show tokens' metadata, never a token.
    let listing = s
        .call(Method::GET, "/v1/admin/principals", &s.admin, None)
        .await;
    let listed = String::from_utf8_lossy(&listing.body).to_string();
    for token in [&first, &second, &s.admin, &s.os, &s.executor] {
        assert!(!listed.contains(token.as_str()), "a token in a listing");
    }
    let ci = s
        .principals()
        .await
        .into_iter()
        .find(|p| p["principal_id"] == id.as_str())
        .expect("listed");
    assert_eq!(ci["tokens"].as_array().map(Vec::len), Some(2));
    assert_eq!(ci["revoked"], false);

    // Revoking one token: refused from the next request on; the other still works.
    let revoke = format!("/v1/admin/principals/{id}/tokens/{first_id}");
    let r = s.call(Method::DELETE, &revoke, &s.admin, None).await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!({"revoked": true}))
    );
    let refused = s.whoami(&first).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.reason(), "KMS_UNAUTHENTICATED");
    assert_eq!(s.whoami(&second).await.status, StatusCode::OK);

    // Revoking the principal ends every token of it.
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/admin/principals/{id}"),
            &s.admin,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.whoami(&second).await.status, StatusCode::UNAUTHORIZED);
    let ci = s
        .principals()
        .await
        .into_iter()
        .find(|p| p["principal_id"] == id.as_str())
        .expect("listed");
    assert_eq!(ci["revoked"], true);
    assert!(
        ci["tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|t| t["revoked"] == true)
    );

    // The system chain names who did what to whom.
    let events: Vec<(String, String, String, String)> = s
        .system_chain()
        .await
        .iter()
        .map(|r| {
            (
                text(&r["operation"]),
                text(&r["principal_id"]),
                text(&r["target_principal_id"]),
                text(&r["target_token_id"]),
            )
        })
        .collect();
    let by_admin = |op: &str, token: &str| {
        (
            op.to_owned(),
            admin_id.clone(),
            id.clone(),
            token.to_owned(),
        )
    };
    let expected = [
        by_admin("PRINCIPAL_CREATE", &first_id),
        by_admin("TOKEN_CREATE", &second_id),
        by_admin("TOKEN_REVOKE", &first_id),
        by_admin("PRINCIPAL_REVOKE", ""),
    ];
    assert_eq!(events.len(), 3 + expected.len(), "bootstrap + events");
    assert_eq!(&events[3..], &expected);
    assert!(
        events[..3]
            .iter()
            .all(|e| e.0 == "PRINCIPAL_CREATE" && e.1.is_empty())
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_and_tokens_live_and_die_on_sqlite() {
    lifecycle(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_and_tokens_live_and_die_on_postgres() {
    lifecycle(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audit_record_names_its_caller() {
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    let server = &s;
    let ids =
        |token: String| async move { text(&server.whoami(&token).await.json()["principal_id"]) };
    let (admin, os, executor) = (
        ids(s.admin.clone()).await,
        ids(s.os.clone()).await,
        ids(s.executor.clone()).await,
    );
    let mut get = request("GET_HANDLE", "k-named");
    get["requester_engine_id"] = json!("PH1.CONNECTOR");
    let handle = text(&s.kms(&get).await.json()["secret_handle"]);
    let redeemed = s
        .redeem(&json!({"tenant_id": TENANT, "secret_handle": handle}))
        .await;
    assert_eq!(redeemed.status, StatusCode::OK);
    let records = s
        .call(
            Method::GET,
            &format!("/v1/audit?tenant_id={TENANT}"),
            &s.admin,
            None,
        )
        .await
        .json()["records"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let by: Vec<(String, String)> = records
        .iter()
        .map(|r| (text(&r["operation"]), text(&r["principal_id"])))
        .collect();
    assert_eq!(
        by,
        vec![
            ("SET_POLICY".to_owned(), admin.clone()),
            ("CREATE_SECRET".to_owned(), admin),
            ("GET_HANDLE".to_owned(), os),
            ("REDEEM".to_owned(), executor),
        ]
    );
    assert_eq!(
        records[0]["policy_version"], 1,
        "SET_POLICY names its version"
    );
    assert!(
        records[1]["secret_ref"].is_string(),
        "CREATE_SECRET names its secret"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_principal_names_only_its_tenants() {
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    // Another tenant that exists, and one that does not.
    let globex = s
        .call(
            Method::PUT,
            "/v1/admin/tenants/globex/policy",
            &s.admin,
            Some(&json!({"rules": []})),
        )
        .await;
    assert_eq!(globex.status, StatusCode::OK);
    let scoped = |role: &str, name: &str| json!({"name": name, "role": role, "tenants": [TENANT]});
    let os = text(&s.create_principal(&scoped("os", "acme-os")).await.json()["token"]);
    let admin = text(
        &s.create_principal(&scoped("admin", "acme-admin"))
            .await
            .json()["token"],
    );
    let executor = text(
        &s.create_principal(&scoped("executor", "acme-exec"))
            .await
            .json()["token"],
    );

    let mut own = request("GET_HANDLE", "k-own");
    own["requester_engine_id"] = json!("PH1.CONNECTOR");
    let a = s
        .call(Method::POST, "/v1/kms/requests", &os, Some(&own))
        .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    let handle = text(&a.json()["secret_handle"]);

    let before = s.system_chain().await.len();
    let mut forbidden = Vec::new();
    for other in ["globex", "nope"] {
        let mut req = own.clone();
        req["tenant_id"] = json!(other);
        forbidden.push(
            s.call(Method::POST, "/v1/kms/requests", &os, Some(&req))
                .await,
        );
        let redeem = json!({"tenant_id": other, "secret_handle": handle});
        forbidden.push(
            s.call(
                Method::POST,
                "/v1/material/redeem",
                &executor,
                Some(&redeem),
            )
            .await,
        );
        for path in [
            format!("/v1/admin/tenants/{other}/secrets"),
            format!("/v1/admin/tenants/{other}/policy"),
            format!("/v1/audit?tenant_id={other}"),
            format!("/v1/audit/export?tenant_id={other}"),
        ] {
            forbidden.push(s.call(Method::GET, &path, &admin, None).await);
        }
        let create = json!({"secret_name": "x/y"});
        let path = format!("/v1/admin/tenants/{other}/secrets");
        forbidden.push(s.call(Method::POST, &path, &admin, Some(&create)).await);
    }
    for path in [
        "/v1/audit?tenant_id=_system",
        "/v1/audit/export",
        "/v1/admin/principals",
    ] {
        forbidden.push(s.call(Method::GET, path, &admin, None).await);
    }
    let create = json!({"name": "sneaky", "role": "admin", "tenants": ["*"]});
    forbidden.push(
        s.call(Method::POST, "/v1/admin/principals", &admin, Some(&create))
            .await,
    );
    for a in &forbidden {
        assert_eq!(
            a.status,
            StatusCode::FORBIDDEN,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.reason(), "KMS_FORBIDDEN_TENANT");
    }
    // The same answer whether or not the tenant exists (seven routes for each).
    for (exists, absent) in forbidden[..7].iter().zip(&forbidden[7..14]) {
        assert_eq!(exists.body, absent.body);
    }
    // Nothing was written anywhere: not in the system chain, not in globex's.
    assert_eq!(s.system_chain().await.len(), before);
    let globex_chain = s
        .call(Method::GET, "/v1/audit?tenant_id=globex", &s.admin, None)
        .await
        .json()["records"]
        .as_array()
        .map(Vec::len);
    assert_eq!(globex_chain, Some(1), "only its SET_POLICY");

    // The tenant listing shows the caller's tenants only.
    let listed = |token: String| {
        let s = &s;
        async move {
            s.call(Method::GET, "/v1/admin/tenants", &token, None)
                .await
                .json()["tenants"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| text(&t["tenant_id"]))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(admin.clone()).await, vec![TENANT.to_owned()]);
    assert_eq!(
        listed(s.admin.clone()).await,
        vec![TENANT.to_owned(), "globex".to_owned()]
    );
    let tenants = s
        .call(Method::GET, "/v1/admin/tenants", &s.admin, None)
        .await
        .json();
    assert_eq!(
        tenants["tenants"][0],
        json!({"tenant_id": TENANT, "policy_version": 1, "enabled": true, "secrets": 1})
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_admin_of_every_tenant_stays() {
    let s = Server::start().await;
    let me = text(&s.whoami(&s.admin).await.json()["principal_id"]);
    let revoke = |id: String, token: String| {
        let s = &s;
        async move {
            s.call(
                Method::DELETE,
                &format!("/v1/admin/principals/{id}"),
                &token,
                None,
            )
            .await
        }
    };
    let last = revoke(me.clone(), s.admin.clone()).await;
    assert_eq!(last.status, StatusCode::CONFLICT);
    assert_eq!(last.reason(), "KMS_LAST_ADMIN");
    assert_eq!(
        s.whoami(&s.admin).await.status,
        StatusCode::OK,
        "still there"
    );

    // A scoped admin does not count; a second global one does.
    let scoped = json!({"name": "acme-admin", "role": "admin", "tenants": [TENANT]});
    assert_eq!(
        s.create_principal(&scoped).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        revoke(me.clone(), s.admin.clone()).await.reason(),
        "KMS_LAST_ADMIN"
    );
    let global = s
        .create_principal(&json!({"name": "ops", "role": "admin", "tenants": ["*"]}))
        .await
        .json();
    let (ops, ops_token) = (text(&global["principal_id"]), text(&global["token"]));
    assert_eq!(revoke(me, ops_token.clone()).await.status, StatusCode::OK);
    assert_eq!(s.whoami(&s.admin).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        revoke(ops, ops_token.clone()).await.reason(),
        "KMS_LAST_ADMIN"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_principal_input_is_refused_and_creates_nothing() {
    let s = Server::start().await;
    let before = s.principals().await.len();
    let cases = [
        (
            json!({"name": "Bad Name", "role": "os", "tenants": ["*"]}),
            "name:",
        ),
        (
            json!({"name": "ok", "role": "root", "tenants": ["*"]}),
            "role:",
        ),
        (
            json!({"name": "ok", "role": "os", "tenants": []}),
            "tenants:",
        ),
        (
            json!({"name": "ok", "role": "os", "tenants": ["*", "acme"]}),
            "tenants:",
        ),
        (
            json!({"name": "ok", "role": "os", "tenants": ["ACME"]}),
            "tenants:",
        ),
        (
            json!({"name": "ok", "role": "os", "tenants": ["*"], "ttl_ms": 0}),
            "ttl_ms:",
        ),
        (
            json!({"name": "ok", "role": "os", "tenants": ["*"], "spiffe_id": "https://x/y"}),
            "spiffe_id:",
        ),
    ];
    for (body, diagnostic) in cases {
        let a = s.create_principal(&body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(a.reason(), "PH1_KMS_INPUT_SCHEMA_INVALID");
        let diagnostics = a.json()["diagnostics"].to_string();
        assert!(diagnostics.contains(diagnostic), "{body}: {diagnostics}");
    }
    let unknown_field = json!({"name": "ok", "role": "os", "tenants": ["*"], "x": 1});
    assert_eq!(
        s.create_principal(&unknown_field).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(s.principals().await.len(), before, "nothing created");

    let dup = json!({"name": "bootstrap-os", "role": "os", "tenants": ["*"]});
    let a = s.create_principal(&dup).await;
    assert_eq!(
        (a.status, a.reason().as_str()),
        (StatusCode::CONFLICT, "KMS_PRINCIPAL_EXISTS")
    );

    let unknown = format!("/v1/admin/principals/kp_{}", "0".repeat(32));
    let a = s.call(Method::DELETE, &unknown, &s.admin, None).await;
    assert_eq!(
        (a.status, a.reason().as_str()),
        (StatusCode::NOT_FOUND, "KMS_PRINCIPAL_NOT_FOUND")
    );
    let a = s
        .call(Method::POST, &format!("{unknown}/tokens"), &s.admin, None)
        .await;
    assert_eq!(a.reason(), "KMS_PRINCIPAL_NOT_FOUND");
    let a = s
        .call(Method::DELETE, "/v1/admin/principals/nope", &s.admin, None)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(s.principals().await.len(), before, "nothing created");
    assert_eq!(
        s.whoami(&s.os).await.status,
        StatusCode::OK,
        "still serving"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_counted_and_never_echoed() {
    let s = Server::start().await;
    let forged = "skms_forged-token-value-that-was-never-issued";
    for token in [forged, "", "not-bearer"] {
        let a = s.whoami(token).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert!(!String::from_utf8_lossy(&a.body).contains("forged"));
    }
    // An os token on an admin route is a role refusal, not a failed authentication.
    let a = s
        .call(Method::GET, "/v1/admin/principals", &s.os, None)
        .await;
    assert_eq!(a.reason(), "KMS_FORBIDDEN_ROLE");
    let metrics = s.raw(Method::GET, "/metrics", None, None, Vec::new()).await;
    let metrics = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        metrics.contains("selene_kms_auth_failures_total 3"),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_principal_or_token_stops_authenticating() {
    let s = Server::start().await;
    let short = s
        .create_principal(&json!({"name": "brief", "role": "os", "tenants": ["*"], "ttl_ms": 1}))
        .await
        .json();
    let expires = short["expires_at_ms"].as_u64().expect("expiry");
    let long = s
        .create_principal(&json!({"name": "lasting", "role": "os", "tenants": ["*"]}))
        .await
        .json();
    let id = text(&long["principal_id"]);
    let brief_token = s
        .call(
            Method::POST,
            &format!("/v1/admin/principals/{id}/tokens"),
            &s.admin,
            Some(&json!({"ttl_ms": 1})),
        )
        .await
        .json();
    let token_expires = brief_token["expires_at_ms"].as_u64().expect("expiry");
    // Wait for the clock, not for the server: both lifetimes are 1 ms.
    while selene_kms_server::now_ms() <= expires.max(token_expires) {
        std::hint::spin_loop();
    }
    assert_eq!(
        s.whoami(&text(&short["token"])).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        s.whoami(&text(&brief_token["token"])).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(s.whoami(&text(&long["token"])).await.status, StatusCode::OK);
    s.stop().await;
}

/// The database's writer sets the stored revocation epoch back to what it was when a node
/// remembered a token: the node must not take its memory for the truth again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_epoch_set_back_in_the_database_revives_nothing() {
    let s = Server::start_on(Backend::Postgres).await;
    let created = s
        .create_principal(&json!({"name": "ci-os", "role": "os", "tenants": [TENANT]}))
        .await
        .json();
    let (id, token) = (text(&created["principal_id"]), text(&created["token"]));
    let token_id = text(&created["token_id"]);
    let cluster = s.cluster.as_ref().expect("a PostgreSQL cluster");
    let epoch = cluster.sql("kms", "SELECT epoch FROM auth_epoch");
    assert_eq!(s.whoami(&token).await.status, StatusCode::OK, "remembered");
    let revoke = format!("/v1/admin/principals/{id}/tokens/{token_id}");
    let r = s.call(Method::DELETE, &revoke, &s.admin, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.whoami(&token).await.status, StatusCode::UNAUTHORIZED);
    cluster.sql("kms", &format!("UPDATE auth_epoch SET epoch = {epoch}"));
    assert_eq!(
        s.whoami(&token).await.status,
        StatusCode::UNAUTHORIZED,
        "the remembered authentication is not trusted again"
    );
    assert_eq!(
        s.whoami(&s.os).await.status,
        StatusCode::OK,
        "the rows still decide"
    );
    s.stop().await;
}

/// The epoch set back by one *before* a revocation: had the revocation added one, it would land
/// on the very epoch the node remembers the token at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_set_back_before_a_revocation_revives_nothing() {
    let s = Server::start_on(Backend::Postgres).await;
    let cluster = s.cluster.as_ref().expect("a PostgreSQL cluster");
    // Move the epoch off zero with one revocation, so that it can be set back.
    let first = s
        .create_principal(&json!({"name": "ci-os-1", "role": "os", "tenants": [TENANT]}))
        .await
        .json();
    let first_id = text(&first["principal_id"]);
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/admin/principals/{first_id}"),
            &s.admin,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let second = s
        .create_principal(&json!({"name": "ci-os-2", "role": "os", "tenants": [TENANT]}))
        .await
        .json();
    let (id2, token2) = (text(&second["principal_id"]), text(&second["token"]));
    assert_eq!(s.whoami(&token2).await.status, StatusCode::OK, "remembered");
    let now: u64 = cluster
        .sql("kms", "SELECT epoch FROM auth_epoch")
        .parse()
        .expect("a number");
    cluster.sql("kms", &format!("UPDATE auth_epoch SET epoch = {}", now - 1));
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/admin/principals/{id2}"),
            &s.admin,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        s.whoami(&token2).await.status,
        StatusCode::UNAUTHORIZED,
        "the revocation holds"
    );
    s.stop().await;
}

/// A request whose body arrives after its token was revoked is refused: the credential is
/// checked once the request is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_after_the_revocation_meets_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    let created = s
        .create_principal(&json!({"name": "slow-os", "role": "os", "tenants": [TENANT]}))
        .await
        .json();
    let (id, token) = (text(&created["principal_id"]), text(&created["token"]));
    let mut get = request("GET_HANDLE", "k-slow");
    get["requester_engine_id"] = json!("PH1.CONNECTOR");
    let body = serde_json::to_vec(&get).expect("json");
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/kms/requests HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head sent");
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/admin/principals/{id}"),
            &s.admin,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    stream.write_all(&body).await.expect("body sent");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        !answer.contains("secret_handle\":\"ksh"),
        "no handle issued"
    );
    s.stop().await;
}
