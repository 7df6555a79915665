//! Secret canaries end to end: known values are provisioned, every route is driven (successes,
//! refusals, dry runs, redemptions, bad input), and the canary bytes (raw, base64, hex) must
//! appear in no response but the executor's redemption, in no log line, in no audit record or
//! export, and in no file of the data directory (or of the PostgreSQL cluster). Caller tokens
//! appear in no log line or file. Run over each store backend.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use reqwest::Method;
use serde_json::json;

const CANARY: &[u8] = b"sk_live_C4NARY_d8e1f2a3b4c5d6e7";
const STAGED: &[u8] = b"sk_live_STAGED_CANARY_99aa88bb";
/// Key material (32 bytes): a key is never redeemed, so this appears in no answer at all.
const KEY: &[u8] = b"sk_key_CANARY_4e9d1c7b2a3f5e6d80";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        value.to_vec(),
        STANDARD.encode(value).into_bytes(),
        URL_SAFE_NO_PAD.encode(value).into_bytes(),
        hex.into_bytes(),
        // A fragment, to catch partial echoes.
        value[8..20].to_vec(),
    ]
}

/// A substring search fast enough for a whole PostgreSQL cluster (tens of megabytes) in a debug
/// build, where comparing every window takes seconds.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

fn leaks(haystack: &[u8]) -> Option<String> {
    for v in [CANARY, STAGED, KEY] {
        for f in forms(v) {
            if contains(haystack, &f) {
                return Some(String::from_utf8_lossy(&f).into_owned());
            }
        }
    }
    None
}

/// The log subscriber is process-wide: it is installed once, and the tests take turns with it
/// (`TURN`), each emptying it first, so that each reads the lines of its own server.
static LOGS: OnceLock<Capture> = OnceLock::new();
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn logs() -> &'static Capture {
    LOGS.get_or_init(|| {
        let logs = Capture::default();
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .json()
            .with_writer(move || sink.clone())
            .init();
        logs
    })
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn canaries_leak_nowhere_but_the_executors_redemption() {
        super::canaries_leak_nowhere_but_the_executors_redemption(crate::common::Backend::Sqlite)
            .await;
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn canaries_leak_nowhere_but_the_executors_redemption() {
        super::canaries_leak_nowhere_but_the_executors_redemption(crate::common::Backend::Postgres)
            .await;
    }
}

/// Every file the server's store wrote, once what it committed is in them.
async fn stored_files(remains: &Remains) -> Vec<PathBuf> {
    let mut files = Vec::new();
    match &remains.cluster {
        None => {
            // The last handle on the store may go with a server task that ends a moment later;
            // scan the files only once the store has closed them, which its data-directory lock
            // shows.
            let lock = std::fs::File::open(remains.dir.path().join("kms.lock")).expect("lock file");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while lock.try_lock().is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the store never closed"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        Some(cluster) => {
            // Committed rows may so far be only in the write-ahead log; a checkpoint writes them
            // into the table files too, so that both are scanned.
            cluster.checkpoint();
            files = cluster.data_files();
            assert!(files.len() > 100, "scanned the cluster's files");
        }
    }
    for entry in std::fs::read_dir(remains.dir.path()).expect("data dir") {
        files.push(entry.expect("entry").path());
    }
    files
}

async fn canaries_leak_nowhere_but_the_executors_redemption(backend: Backend) {
    let _turn = TURN.lock().await;
    let logs = logs();
    logs.0.lock().expect("log buffer").clear();

    let s = Server::start_on(backend).await;
    s.provision("canary/imported", Some(&STANDARD.encode(CANARY)))
        .await;
    let admin = s.admin.clone();
    let mut responses: Vec<(String, Vec<u8>)> = Vec::new();
    let mut push = |what: &str, a: Answer| responses.push((what.to_owned(), a.body));

    // Stage and rotate: the staged canary becomes version 2.
    let a = s
        .call(
            Method::POST,
            &format!("/v1/admin/tenants/{TENANT}/staged-versions"),
            &admin,
            Some(
                &json!({"secret_name": "canary/imported", "material_b64": STANDARD.encode(STAGED)}),
            ),
        )
        .await;
    assert_eq!(a.status.as_u16(), 202);
    push("stage", a);
    let mut req = request("GET_HANDLE", "c-1");
    req["secret_name"] = json!("canary/imported");
    let handle_answer = s.kms(&req).await;
    let handle = handle_answer.json()["secret_handle"]
        .as_str()
        .expect("handle")
        .to_owned();
    push("get_handle", handle_answer);
    let mut eph = request("ISSUE_EPHEMERAL", "c-2");
    eph["secret_name"] = json!("canary/imported");
    let eph_answer = s.kms(&eph).await;
    let credential = eph_answer.json()["ephemeral_credential_ref"]
        .as_str()
        .expect("cred")
        .to_owned();
    push("ephemeral", eph_answer);
    let mut rotate = admin_request("ROTATE", "c-3");
    rotate["secret_name"] = json!("canary/imported");
    let (plan, commit) = s.plan_and_commit(&rotate).await;
    assert_eq!(commit.json()["rotated_version"], 2);
    push("rotate plan", plan);
    push("rotate commit", commit);
    // Refusals and bad input that carry the canary in request fields.
    let canary_text = String::from_utf8_lossy(CANARY).into_owned();
    for (i, body) in [
        json!({"secret_name": canary_text, "tenant_id": TENANT}),
        json!({"correlation_id": "c", "turn_id": "t", "idempotency_key": "k-x", "tenant_id": TENANT,
               "operation": "GET_HANDLE", "secret_name": canary_text, "requester_engine_id": "PH1.CONNECTOR"}),
        json!({"unknown": canary_text}),
        json!({"correlation_id": "c", "turn_id": "t", "idempotency_key": "k-y", "tenant_id": TENANT,
               "operation": "REVOKE", "secret_name": "canary/imported", "requester_engine_id": "PH1.OS",
               "requester_user_id": "u-admin", "revoke_target": {"secret_handle": canary_text}, "dry_run": true}),
    ]
    .iter()
    .enumerate()
    {
        let a = s.kms(body).await;
        assert!(a.status.is_client_error(), "bad input {i} answered {}", a.status);
        push("bad input", a);
    }
    let a = s
        .call(
            Method::POST,
            &format!("/v1/admin/tenants/{TENANT}/secrets"),
            &admin,
            Some(&json!({"secret_name": canary_text, "material_b64": STANDARD.encode(CANARY)})),
        )
        .await;
    assert_eq!(a.status.as_u16(), 400);
    push("bad create", a);
    let a = s
        .redeem(&json!({"tenant_id": TENANT, "secret_handle": canary_text}))
        .await;
    push("bad redeem", a);
    // Keys of every purpose, imported with the key canary and used through handles.
    for (purpose, op, fields) in [
        ("hmac-sha256", "mac", json!({"data_b64": "ZGF0YQ=="})),
        ("ed25519", "sign", json!({"data_b64": "ZGF0YQ=="})),
        (
            "aes-256-gcm",
            "encrypt",
            json!({"plaintext_b64": "ZGF0YQ==", "aad_b64": "YQ=="}),
        ),
    ] {
        let name = format!("canary/{purpose}");
        let a = s
            .call(
                Method::POST,
                &format!("/v1/admin/tenants/{TENANT}/secrets"),
                &admin,
                Some(&json!({"secret_name": name, "purpose": purpose,
                             "material_b64": STANDARD.encode(KEY)})),
            )
            .await;
        assert_eq!(a.status.as_u16(), 201, "{purpose}");
        let mut req = request("GET_HANDLE", &format!("c-{purpose}"));
        req["secret_name"] = json!(name);
        let key_handle = s.kms(&req).await.json()["secret_handle"].clone();
        let mut body = json!({"tenant_id": TENANT, "secret_handle": key_handle});
        for (k, v) in fields.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let used = s
            .call(
                Method::POST,
                &format!("/v1/crypto/{op}"),
                &s.executor,
                Some(&body),
            )
            .await;
        assert_eq!(used.status.as_u16(), 200, "{op}");
        let (check, more) = match op {
            "mac" => (
                "verify",
                json!({"data_b64": "ZGF0YQ==", "mac_b64": used.json()["mac_b64"]}),
            ),
            "sign" => (
                "verify",
                json!({"data_b64": "ZGF0YQ==", "signature_b64": used.json()["signature_b64"]}),
            ),
            _ => (
                "decrypt",
                json!({"ciphertext": used.json()["ciphertext"], "aad_b64": "YQ=="}),
            ),
        };
        push(op, used);
        let mut body = json!({"tenant_id": TENANT, "secret_handle": key_handle});
        for (k, v) in more.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let a = s
            .call(
                Method::POST,
                &format!("/v1/crypto/{check}"),
                &s.executor,
                Some(&body),
            )
            .await;
        assert_eq!(a.status.as_u16(), 200, "{check}");
        push(check, a);
        let refused = s
            .redeem(&json!({"tenant_id": TENANT, "secret_handle": key_handle}))
            .await;
        assert_eq!(refused.reason(), "KMS_PURPOSE_MISMATCH");
        push("key redemption", refused);
    }
    let a = s
        .call(
            Method::GET,
            &format!("/v1/admin/tenants/{TENANT}/secrets/canary%2Fed25519/public-key"),
            &admin,
            None,
        )
        .await;
    assert_eq!(a.status.as_u16(), 200);
    push("public key", a);
    // Reads.
    for path in [
        format!("/v1/admin/tenants/{TENANT}/secrets"),
        format!("/v1/admin/tenants/{TENANT}/policy"),
        format!("/v1/audit?tenant_id={TENANT}&limit=1000"),
        "/v1/audit/export".to_owned(),
    ] {
        let a = s.call(Method::GET, &path, &admin, None).await;
        assert_eq!(a.status.as_u16(), 200, "{path}");
        push(&path, a);
    }
    for path in ["/metrics", "/healthz", "/readyz", "/v1/openapi.json"] {
        let a = s.raw(Method::GET, path, None, None, Vec::new()).await;
        push(path, a);
    }
    // Redemptions: the only answers that may carry a value.
    let redeemed = s
        .redeem(&json!({"tenant_id": TENANT, "secret_handle": handle}))
        .await;
    assert_eq!(redeemed.status.as_u16(), 200);
    let material = STANDARD
        .decode(redeemed.json()["material_b64"].as_str().expect("material"))
        .expect("base64");
    assert_eq!(material, CANARY, "the handle redeems version 1");
    let derived = s
        .redeem(&json!({"tenant_id": TENANT, "ephemeral_credential_ref": credential}))
        .await;
    assert_eq!(derived.status.as_u16(), 200);
    assert!(
        leaks(&derived.body).is_none(),
        "an ephemeral credential is derived, not the parent"
    );
    // Refused redemption by a non-executor carries nothing.
    let a = s
        .call(
            Method::POST,
            "/v1/material/redeem",
            &s.os,
            Some(&json!({"tenant_id": TENANT, "secret_handle": handle})),
        )
        .await;
    assert_eq!(a.status.as_u16(), 403);
    push("redeem as os", a);

    for (what, body) in &responses {
        assert_eq!(leaks(body), None, "response to {what} leaks the canary");
    }
    let tokens = [s.os.clone(), s.admin.clone(), s.executor.clone()];
    let remains = s.stop().await;
    let files = stored_files(&remains).await;
    let logged = logs.0.lock().expect("logs").clone();
    assert!(!logged.is_empty(), "the server logged something");
    assert_eq!(leaks(&logged), None, "a log line leaks the canary");
    for token in &tokens {
        assert!(
            !contains(&logged, token.as_bytes()),
            "a log line holds a token"
        );
    }
    for path in &files {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            // PostgreSQL deletes some files of its own (temporary statistics) at any moment.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        assert_eq!(leaks(&bytes), None, "{} holds the canary", path.display());
        for token in &tokens {
            assert!(
                !contains(&bytes, token.as_bytes()),
                "{} holds a token in clear",
                path.display()
            );
        }
    }
}
