//! The client against a real server on loopback: every kind of route, typed answers, refusals
//! with their reason codes, and a server that is not there.

use std::sync::Arc;

use selene_kms_backends::{StoreLocation, open_store};
use selene_kms_client::{
    Client, CryptoOp, Error, Operation, PolicyDocument, RawCryptoRequest, RevokeTarget, Used,
    kms_request,
};
use selene_kms_core::Role;
use selene_kms_server::{Engine, ServeOptions, now_ms, serve};
use selene_kms_store::RootKey;

struct Served {
    _dir: tempfile::TempDir,
    url: String,
    admin: String,
    os: String,
    executor: String,
    listening: selene_kms_server::Listening,
}

async fn served() -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = RootKey::create_file(&dir.path().join("root.key")).expect("root key");
    let location = StoreLocation::Embedded(dir.path().join("kms.db"));
    let store = open_store(&location, root, true).await.expect("store");
    let engine = Arc::new(Engine::new(store));
    let made = engine.bootstrap(now_ms()).await.expect("principals");
    let token = |role: Role| {
        made.0
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, p)| p.token.expose().to_owned())
            .expect("a principal per role")
    };
    let listening = serve(
        engine,
        ServeOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..ServeOptions::default()
        },
    )
    .await
    .expect("serves");
    Served {
        url: format!("http://{}", listening.addr),
        admin: token(Role::Admin),
        os: token(Role::Os),
        executor: token(Role::Executor),
        _dir: dir,
        listening,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_speaks_every_kind_of_route() {
    let s = served().await;
    let anyone = Client::builder(&s.url).build().expect("client");
    let admin = anyone.with_token(&s.admin);
    let os = anyone.with_token(&s.os);
    let executor = anyone.with_token(&s.executor);
    assert!(anyone.healthy().await.expect("healthz"));
    assert!(anyone.ready().await.expect("readyz"));

    let policy: PolicyDocument = serde_json::from_value(serde_json::json!({
        "rules": [
            {"secret_names": ["payments/*"], "engines": ["PH1.CONNECTOR"], "operations": ["GET_HANDLE", "ISSUE_EPHEMERAL"]},
            {"secret_names": ["*"], "engines": ["PH1.OS"], "operations": ["ROTATE", "REVOKE"]}
        ],
        "admins": ["u-admin"]
    }))
    .expect("policy");
    let stored = admin.put_policy("acme", &policy).await.expect("policy");
    assert_eq!(stored["policy_version"], 1);
    assert_eq!(admin.policy("acme").await.expect("read back"), policy);
    let created = admin
        .create_secret(
            "acme",
            &serde_json::json!({"secret_name": "payments/stripe", "material_b64": "c2tfdGVzdA=="}),
        )
        .await
        .expect("secret");
    assert_eq!(created["version"], 1);

    // A handle, redeemed by the executor.
    let request = kms_request(
        "acme",
        Operation::GetHandle,
        "payments/stripe",
        "PH1.CONNECTOR",
    );
    let bundle = os.kms(&request).await.expect("granted");
    let handle = bundle.secret_handle.clone().expect("a handle");
    assert_eq!(
        os.kms(&request).await.expect("a retry"),
        bundle,
        "the same key answers the same bundle"
    );
    let redeemed = executor.redeem("acme", &handle).await.expect("redeemed");
    assert_eq!(redeemed.expose(), b"sk_test");
    assert_eq!(redeemed.version, 1);
    // An ephemeral credential: a value derived from the version, never the version's own.
    let mut issue = kms_request(
        "acme",
        Operation::IssueEphemeral,
        "payments/stripe",
        "PH1.CONNECTOR",
    );
    issue.requested_ttl_ms = Some(60_000);
    let issued = os.kms(&issue).await.expect("issued");
    let credential = issued.ephemeral_credential_ref.expect("a credential");
    let derived = executor
        .redeem("acme", &credential)
        .await
        .expect("redeemed");
    assert_eq!(derived.version, 1);
    assert!(!derived.expose().is_empty());
    assert_ne!(derived.expose(), b"sk_test");

    // A rotation through its plan, and a revocation of the handle.
    admin
        .stage("acme", "payments/stripe", b"sk_next")
        .await
        .expect("staged");
    let mut rotate = kms_request("acme", Operation::Rotate, "payments/stripe", "PH1.OS");
    rotate.requester_user_id = Some("u-admin".to_owned());
    let rotated = os.plan_and_commit(&rotate).await.expect("rotated");
    assert_eq!(rotated.rotated_version, Some(2));
    let mut revoke = kms_request("acme", Operation::Revoke, "payments/stripe", "PH1.OS");
    revoke.requester_user_id = Some("u-admin".to_owned());
    revoke.revoke_target = Some(RevokeTarget {
        secret_handle: Some(handle.clone()),
        ..RevokeTarget::default()
    });
    os.plan_and_commit(&revoke).await.expect("revoked");

    // Refusals carry their reason codes.
    let refused = executor.redeem("acme", &handle).await.err();
    assert_eq!(
        refused.as_ref().and_then(Error::reason_code),
        Some("KMS_REVOKED")
    );
    let stranger = kms_request("acme", Operation::GetHandle, "payments/stripe", "PH1.OTHER");
    match os.kms(&stranger).await {
        Err(Error::Refused {
            status,
            reason_code,
            body,
            ..
        }) => {
            assert_eq!(status, 403);
            assert_eq!(reason_code.as_deref(), Some("KMS_NOT_AUTHORIZED"));
            assert_eq!(body["validation_status"], "FAIL", "the refusal bundle");
        }
        other => panic!("not a refusal: {other:?}"),
    }
    assert_eq!(
        admin
            .redeem("acme", &handle)
            .await
            .err()
            .as_ref()
            .and_then(Error::reason_code),
        Some("KMS_FORBIDDEN_ROLE"),
        "an admin cannot redeem"
    );

    // Keys: used through handles, never redeemed.
    for (name, purpose) in [("payments/enc", "aes-256-gcm"), ("payments/sig", "ed25519")] {
        let body = serde_json::json!({"secret_name": name, "purpose": purpose});
        admin.create_secret("acme", &body).await.expect("a key");
    }
    let key_handle = |name: &'static str| {
        let os = os.clone();
        async move {
            let request = kms_request("acme", Operation::GetHandle, name, "PH1.CONNECTOR");
            let bundle = os.kms(&request).await.expect("granted");
            bundle.secret_handle.expect("a handle")
        }
    };
    let enc = key_handle("payments/enc").await;
    let use_enc = |fields: serde_json::Value| {
        let mut body = serde_json::json!({"tenant_id": "acme", "secret_handle": enc});
        for (k, v) in fields.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        serde_json::from_value::<RawCryptoRequest>(body).expect("a crypto request")
    };
    let sealed = executor
        .crypto(
            CryptoOp::Encrypt,
            &use_enc(serde_json::json!({"plaintext_b64": "aGk="})),
        )
        .await
        .expect("encrypted");
    let Used::Encrypted {
        ciphertext,
        version,
    } = sealed
    else {
        panic!("not a ciphertext");
    };
    assert_eq!(version, 1);
    let opened = executor
        .crypto(
            CryptoOp::Decrypt,
            &use_enc(serde_json::json!({"ciphertext": ciphertext})),
        )
        .await
        .expect("decrypted");
    assert!(matches!(opened, Used::Decrypted(p) if p.expose() == b"hi"));
    let mismatch = executor.redeem("acme", &enc).await.err();
    assert_eq!(
        mismatch.as_ref().and_then(Error::reason_code),
        Some("KMS_PURPOSE_MISMATCH")
    );
    let keys = admin
        .public_keys("acme", "payments/sig")
        .await
        .expect("keys");
    assert_eq!(keys["versions"][0]["version"], 1);
    let patched = admin
        .update_secret(
            "acme",
            "payments/enc",
            &serde_json::json!({"min_decryption_version": 1}),
        )
        .await
        .expect("patched");
    assert_eq!(patched["min_decryption_version"], 1);

    // The audit, principals, operations.
    let records = admin.audit("acme", 0, 1000).await.expect("audit");
    assert!(records.len() >= 6, "{}", records.len());
    let export = admin.audit_export(Some("acme")).await.expect("export");
    assert!(export.lines().count() >= records.len());
    let key = anyone.audit_public_key().await.expect("public key");
    assert_eq!(key.len(), 64);
    let whoami = os.whoami().await.expect("whoami");
    assert_eq!(whoami["role"], "os");
    let principals = admin.principals().await.expect("principals");
    assert_eq!(principals["principals"].as_array().map(Vec::len), Some(3));
    let simulated = admin
        .simulate_policy("acme", &policy, None)
        .await
        .expect("impact");
    assert_eq!(simulated["allow_to_deny"], 0);
    let replayed = admin.replay("acme", None).await.expect("replay");
    assert_eq!(replayed["differ"], 0, "{replayed}");
    assert!(
        anyone
            .metrics()
            .await
            .expect("metrics")
            .contains("selene_kms_build_info")
    );
    assert_eq!(anyone.openapi().await.expect("openapi")["openapi"], "3.1.0");
    s.listening.shutdown().await.expect("stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_there_is_unreachable_after_the_retries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let client = Client::builder(&url).retries(1).build().expect("client");
    let error = client.whoami().await.expect_err("nobody there");
    assert!(error.is_transient());
    assert!(matches!(error, Error::Unreachable(_)));
    assert!(error.to_string().contains("cannot reach"), "{error}");
    assert!(
        Client::builder(&url)
            .ca_certificate_pem(b"not pem".to_vec())
            .build()
            .is_err()
    );
}
