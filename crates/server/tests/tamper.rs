//! The storage boundary: someone who can write the database but lacks the root key cannot make a
//! token authenticate by writing a verifier row, whatever they hash it with, nor widen a
//! credential by editing, moving or inserting the rows that say what it may do; nor cut or
//! extend an audit chain without the export a third party verifies naming it.

mod common;

use std::sync::Arc;

use common::Server;
use reqwest::{Method, StatusCode};
use selene_kms_backends::{StoreLocation, open_store};
use selene_kms_core::export::{ExportChecks, ExportError, verify_export};
use selene_kms_core::{ChainBreak, SpiffeId};
use selene_kms_server::{Engine, ServeOptions, serve};
use selene_kms_store::{ErrorKind, RootKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The embedded store left by `remains`, served again after the attacker's edits.
async fn reopen(remains: &common::Remains) -> selene_kms_server::Listening {
    let root = RootKey::load_file(&remains.dir.path().join("root.key")).expect("root key");
    let db = remains.dir.path().join("kms.db");
    let store = open_store(&StoreLocation::Embedded(db), root, false)
        .await
        .expect("reopened");
    serve(
        Arc::new(Engine::new(store)),
        ServeOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..ServeOptions::default()
        },
    )
    .await
    .expect("serves")
}

/// The text a running server answers to `GET path`, with `token` as the bearer if given.
async fn get_text(
    listening: &selene_kms_server::Listening,
    path: &str,
    token: Option<&str>,
) -> String {
    let mut request = reqwest::Client::new().get(format!("http://{}{path}", listening.addr));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text")
}

/// The Prometheus exposition of a running server.
async fn metrics_of(listening: &selene_kms_server::Listening) -> String {
    get_text(listening, "/metrics", None).await
}

/// What an attacker can write: a token they choose, stored under verifiers they can compute.
const FORGED: &str = "skms_attacker-chosen-token-value-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_rows_written_edited_or_moved_without_the_root_key_authenticate_nobody() {
    let s = Server::start().await;
    let me: Value = s
        .call(Method::GET, "/v1/auth/whoami", &s.admin, None)
        .await
        .json();
    let admin_id = me["principal_id"].as_str().expect("id").to_owned();
    let os_me: Value = s
        .call(Method::GET, "/v1/auth/whoami", &s.os, None)
        .await
        .json();
    let os_id = os_me["principal_id"].as_str().expect("id").to_owned();
    let (admin_token, os_token, executor_token) =
        (s.admin.clone(), s.os.clone(), s.executor.clone());
    let remains = s.stop().await;
    let db = remains.dir.path().join("kms.db");

    // The attacker's rows: the forged token under the old unkeyed hash, under a plain SHA-256,
    // and under an HMAC with a key of their own, each for the bootstrap admin.
    let legacy: [u8; 32] = Sha256::new()
        .chain_update(b"selene-kms/caller-token/v1")
        .chain_update(FORGED)
        .finalize()
        .into();
    let plain: [u8; 32] = Sha256::digest(FORGED.as_bytes()).into();
    let own_key: [u8; 32] = Sha256::new()
        .chain_update([0x5a; 32])
        .chain_update(b"selene-kms/caller-token/v2")
        .chain_update(FORGED)
        .finalize()
        .into();
    let conn = rusqlite::Connection::open(&db).expect("the attacker opens the file");
    for (i, verifier) in [legacy, plain, own_key].iter().enumerate() {
        conn.execute(
            "INSERT INTO principal_tokens (token_id, principal_id, verifier, created_at_ms, mac)
             VALUES (?1, ?2, ?3, 0, ?4)",
            (
                format!("kt_{i:032}"),
                &admin_id,
                &verifier[..],
                &verifier[..],
            ),
        )
        .expect("rows written");
    }
    // The os principal made an admin of every tenant, under its old MAC.
    conn.execute(
        "UPDATE principals SET role = 'admin', tenants = '[\"*\"]' WHERE principal_id = ?1",
        [&os_id],
    )
    .expect("row edited");
    // The executor's verifier moved onto the admin's token row (and its own row given another).
    let verifier_of = |principal: &str| -> Vec<u8> {
        conn.query_row(
            "SELECT verifier FROM principal_tokens WHERE principal_id = ?1",
            [principal],
            |r| r.get(0),
        )
        .expect("a token row")
    };
    let executor_id: String = conn
        .query_row(
            "SELECT principal_id FROM principals WHERE name = 'bootstrap-executor'",
            [],
            |r| r.get(0),
        )
        .expect("executor");
    let executor_verifier = verifier_of(&executor_id);
    conn.execute(
        "UPDATE principal_tokens SET verifier = x'00' WHERE principal_id = ?1",
        [&executor_id],
    )
    .expect("moved away");
    conn.execute(
        "UPDATE principal_tokens SET verifier = ?1 WHERE principal_id = ?2 AND created_at_ms > 0",
        (&executor_verifier, &admin_id),
    )
    .expect("moved onto the admin's row");
    // A principal bound to a SPIFFE id the attacker holds a certificate for.
    conn.execute(
        "INSERT INTO principals (principal_id, name, role, tenants, spiffe_id, created_at_ms, mac)
         VALUES (?1, 'intruder', 'admin', '[\"*\"]', 'spiffe://example.org/intruder', 0, ?2)",
        (format!("kp_{}", "1".repeat(32)), &[0u8; 32][..]),
    )
    .expect("row inserted");
    drop(conn);

    let root = RootKey::load_file(&remains.dir.path().join("root.key")).expect("root key");
    let store = open_store(&StoreLocation::Embedded(db), root, false)
        .await
        .expect("reopened");
    let spiffe = SpiffeId::try_from("spiffe://example.org/intruder").expect("spiffe id");
    let bound = store
        .principal_by_spiffe(&spiffe)
        .await
        .expect_err("refused");
    assert_eq!(
        bound.kind,
        ErrorKind::Corrupt,
        "an inserted binding fails its MAC"
    );
    let listening = serve(
        Arc::new(Engine::new(store)),
        ServeOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..ServeOptions::default()
        },
    )
    .await
    .expect("serves");
    let http = reqwest::Client::new();
    let whoami = |token: &str| {
        http.get(format!("http://{}/v1/auth/whoami", listening.addr))
            .bearer_auth(token)
            .send()
    };
    let forged = whoami(FORGED).await.expect("sent");
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let body: Value = forged.json().await.expect("json");
    assert_eq!(
        body,
        json!({"reason_code": "KMS_UNAUTHENTICATED",
        "message": "No credential, or one that is unknown, expired or revoked."})
    );
    // Neither the widened os principal nor the moved verifier speaks for anyone now: the rows
    // fail their MACs (and the admin's real token no longer finds its row).
    for token in [&os_token, &executor_token, &admin_token] {
        let r = whoami(token).await.expect("sent");
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "a tampered credential"
        );
    }
    let metrics = metrics_of(&listening).await;
    assert!(
        metrics.contains("selene_kms_auth_failures_total 4"),
        "{metrics}"
    );
    listening.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_chain_cut_or_extended_in_the_database_fails_the_exports_verification() {
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    for i in 0..4 {
        let answer = s
            .kms(&common::request("GET_HANDLE", &format!("k{i}")))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let admin = s.admin.clone();
    let key = selene_kms_core::audit::parse_public_key(&selene_kms_core::audit::public_key_hex(
        s.store.keys(),
    ))
    .expect("key");
    // A clean stop signs a last manifest naming every record.
    let remains = s.stop().await;
    let conn = rusqlite::Connection::open(remains.dir.path().join("kms.db")).expect("open");
    let head: i64 = conn
        .query_row(
            "SELECT MAX(seq) FROM audit WHERE tenant_id = 'acme'",
            [],
            |r| r.get(0),
        )
        .expect("head");

    let verify_acme = |text: &str, allow_uncovered: bool| {
        let checks = ExportChecks {
            allow_uncovered,
            tenant: Some("acme".into()),
            ..ExportChecks::default()
        };
        verify_export(text, &key, &checks).map(drop)
    };
    let acme_broken = |broken| {
        Err(ExportError::Chain {
            tenant: "acme".into(),
            broken,
        })
    };

    // Two records cut from the tail, below the head the last manifest signed.
    let tail: Vec<(i64, String)> = conn
        .prepare("SELECT seq, record FROM audit WHERE tenant_id = 'acme' AND seq > ?1")
        .expect("prepare")
        .query_map([head - 2], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    conn.execute(
        "DELETE FROM audit WHERE tenant_id = 'acme' AND seq > ?1",
        [head - 2],
    )
    .expect("cut");
    let listening = reopen(&remains).await;
    let text = get_text(&listening, "/v1/audit/export?tenant_id=acme", Some(&admin)).await;
    assert_eq!(
        verify_acme(&text, true),
        acme_broken(ChainBreak::Cut {
            seq: u64::try_from(head - 1).expect("seq")
        })
    );
    // Nor does the server sign a manifest over the cut chain, from its start (counted) to its
    // stop.
    let metrics = metrics_of(&listening).await;
    assert!(
        common::metric(&metrics, "selene_kms_manifest_failures_total").is_some_and(|n| n >= 1),
        "{metrics}"
    );
    assert_eq!(
        common::metric(&metrics, "selene_kms_manifests_signed_total"),
        Some(0)
    );
    let refused = listening
        .shutdown()
        .await
        .expect_err("no manifest over a cut chain");
    assert!(refused.to_string().contains("acme"), "{refused}");

    // Put back, then one record appended with a correct link and digest but no MAC: the server
    // will not close the export with its signature, so the record stays uncovered.
    for (seq, record) in &tail {
        conn.execute(
            "INSERT INTO audit (tenant_id, seq, record) VALUES ('acme', ?1, ?2)",
            (seq, record),
        )
        .expect("put back");
    }
    let mut forged: selene_kms_core::AuditRecord =
        serde_json::from_str(&tail.last().expect("a record").1).expect("record");
    let prev = forged.digest.clone();
    forged.chain(forged.seq + 1, &prev);
    forged.mac = None;
    conn.execute(
        "INSERT INTO audit (tenant_id, seq, record) VALUES ('acme', ?1, ?2)",
        (head + 1, serde_json::to_string(&forged).expect("json")),
    )
    .expect("appended");
    let listening = reopen(&remains).await;
    let text = get_text(&listening, "/v1/audit/export?tenant_id=acme", Some(&admin)).await;
    assert_eq!(
        verify_acme(&text, false),
        acme_broken(ChainBreak::Unsigned {
            seq: u64::try_from(head).expect("seq")
        })
    );
    // The forged head is never signed over, nor chained after.
    let refused = listening
        .shutdown()
        .await
        .expect_err("no manifest over a forged head");
    assert!(
        refused.to_string().contains("not written by the KMS"),
        "{refused}"
    );
}
