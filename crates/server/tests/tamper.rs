//! The storage boundary for credentials: someone who can write the database but lacks the root
//! key cannot make a token authenticate by writing a verifier row, whatever they hash it with.

mod common;

use std::sync::Arc;

use common::Server;
use reqwest::{Method, StatusCode};
use selene_kms_backends::{StoreLocation, open_store};
use selene_kms_server::{Engine, ServeOptions, serve};
use selene_kms_store::RootKey;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// What an attacker can write: a token they choose, stored under verifiers they can compute.
const FORGED: &str = "skms_attacker-chosen-token-value-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_row_written_without_the_root_key_never_authenticates() {
    let s = Server::start().await;
    let me: Value = s
        .call(Method::GET, "/v1/auth/whoami", &s.admin, None)
        .await
        .json();
    let admin_id = me["principal_id"].as_str().expect("id").to_owned();
    let admin_token = s.admin.clone();
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
            "INSERT INTO principal_tokens (token_id, principal_id, verifier, created_at_ms)
             VALUES (?1, ?2, ?3, 0)",
            (format!("kt_{i:032}"), &admin_id, &verifier[..]),
        )
        .expect("rows written");
    }
    drop(conn);

    let root = RootKey::load_file(&remains.dir.path().join("root.key")).expect("root key");
    let store = open_store(&StoreLocation::Embedded(db), root, false)
        .await
        .expect("reopened");
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
    // The store itself is intact: the real token still authenticates.
    assert_eq!(
        whoami(&admin_token).await.expect("sent").status(),
        StatusCode::OK
    );
    listening.shutdown().await.expect("clean shutdown");
}
