//! Crypto with handles over HTTP: results checked by independent implementations (ring), keys
//! across rotations and a minimum decryption version, and every refusal with its reason code.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Creates `name` for `purpose` (with `material` imported, if given) and answers a handle to
/// its current version, issued to PH1.CONNECTOR.
async fn key(s: &Server, name: &str, purpose: &str, material: Option<&[u8]>) -> String {
    let mut body = json!({"secret_name": name, "purpose": purpose});
    if let Some(m) = material {
        body["material_b64"] = json!(STANDARD.encode(m));
    }
    let a = s
        .call(
            Method::POST,
            &format!("/v1/admin/tenants/{TENANT}/secrets"),
            &s.admin,
            Some(&body),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.json());
    handle(s, name, name).await
}

async fn handle(s: &Server, name: &str, key: &str) -> String {
    let mut req = request("GET_HANDLE", &format!("h-{key}"));
    req["secret_name"] = json!(name);
    let a = s.kms(&req).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json());
    a.json()["secret_handle"]
        .as_str()
        .expect("a handle")
        .to_owned()
}

/// `POST /v1/crypto/{op}` as the executor, with `fields` beside the tenant and handle.
async fn use_key(s: &Server, op: &str, handle: &str, fields: Value) -> Answer {
    let mut body = json!({"tenant_id": TENANT, "secret_handle": handle});
    for (k, v) in fields.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    s.call(
        Method::POST,
        &format!("/v1/crypto/{op}"),
        &s.executor,
        Some(&body),
    )
    .await
}

fn b64(v: &Value) -> Vec<u8> {
    STANDARD
        .decode(v.as_str().expect("base64 text"))
        .expect("base64")
}

/// The policy of `provision` and a credential, `payments/stripe`.
async fn started() -> Server {
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    s
}

async fn audit(s: &Server) -> Vec<Value> {
    let a = s
        .call(
            Method::GET,
            &format!("/v1/audit?tenant_id={TENANT}&limit=1000"),
            &s.admin,
            None,
        )
        .await;
    a.json()["records"].as_array().expect("records").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_equals_a_reference_implementation_over_imported_material() {
    let s = started().await;
    let material = [0x6b_u8; 32];
    let h = key(&s, "payments/mac", "hmac-sha256", Some(&material)).await;
    let reference = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &material);
    for data in [&b""[..], b"hello", &[0xa5; 64 * 1024]] {
        let a = use_key(&s, "mac", &h, json!({"data_b64": STANDARD.encode(data)})).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json());
        let tag = b64(&a.json()["mac_b64"]);
        assert_eq!(tag, ring::hmac::sign(&reference, data).as_ref());
        assert_eq!(a.json()["version"], 1);
        let checked = |tag: &[u8]| json!({"data_b64": STANDARD.encode(data), "mac_b64": STANDARD.encode(tag)});
        let valid = use_key(&s, "verify", &h, checked(&tag)).await;
        assert_eq!(valid.json()["valid"], true);
        let mut altered = tag.clone();
        altered[31] ^= 0x80;
        let invalid = use_key(&s, "verify", &h, checked(&altered)).await;
        assert_eq!(invalid.json()["valid"], false);
    }
    // One byte over 64 KiB is too large, and used nowhere.
    let before = audit(&s).await.len();
    let over = STANDARD.encode(vec![0_u8; 64 * 1024 + 1]);
    let a = use_key(&s, "mac", &h, json!({"data_b64": over})).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.reason(), "KMS_PAYLOAD_TOO_LARGE");
    assert_eq!(
        audit(&s).await.len(),
        before,
        "nothing used, nothing recorded"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_signatures_verify_with_an_independent_implementation() {
    let s = started().await;
    let h1 = key(&s, "payments/sign", "ed25519", None).await;
    let data = b"a release manifest";
    let sign = |h: String| {
        let s = &s;
        async move {
            let a = use_key(s, "sign", &h, json!({"data_b64": STANDARD.encode(data)})).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.json());
            (b64(&a.json()["signature_b64"]), a.json()["version"].clone())
        }
    };
    let (sig1, v1) = sign(h1.clone()).await;
    assert_eq!(v1, 1);
    let mut rotate = admin_request("ROTATE", "rotate-sign");
    rotate["secret_name"] = json!("payments/sign");
    let (_, done) = s.plan_and_commit(&rotate).await;
    assert_eq!(done.json()["rotated_version"], 2, "{}", done.json());
    let h2 = handle(&s, "payments/sign", "sign-2").await;
    let (sig2, v2) = sign(h2).await;
    assert_eq!(v2, 2);
    let listed = s
        .call(
            Method::GET,
            &format!("/v1/admin/tenants/{TENANT}/secrets/payments%2Fsign/public-key"),
            &s.admin,
            None,
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.json());
    let versions = listed.json()["versions"]
        .as_array()
        .expect("versions")
        .clone();
    assert_eq!(versions.len(), 2);
    for (entry, sig) in versions.iter().zip([&sig1, &sig2]) {
        let public = b64(&entry["public_key_b64"]);
        assert_eq!(public.len(), 32);
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public);
        key.verify(data, sig)
            .expect("ring verifies the KMS's signature");
        assert!(key.verify(b"another manifest", sig).is_err());
    }
    let check = json!({"data_b64": STANDARD.encode(data), "signature_b64": STANDARD.encode(&sig1)});
    let valid = use_key(&s, "verify", &h1, check).await;
    assert_eq!(valid.json(), json!({"valid": true, "version": 1}));
    // A public key of anything but an Ed25519 key is a purpose mismatch.
    let credential = s
        .call(
            Method::GET,
            &format!("/v1/admin/tenants/{TENANT}/secrets/payments%2Fstripe/public-key"),
            &s.admin,
            None,
        )
        .await;
    assert_eq!(credential.reason(), "KMS_PURPOSE_MISMATCH");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ciphertexts_open_across_a_rotation_until_their_version_is_retired() {
    let s = started().await;
    let h1 = key(&s, "payments/enc", "aes-256-gcm", None).await;
    let aad = STANDARD.encode(b"order-17");
    let encrypt = |h: String, plain: &'static [u8]| {
        let (s, aad) = (&s, aad.clone());
        async move {
            let body = json!({"plaintext_b64": STANDARD.encode(plain), "aad_b64": aad});
            let a = use_key(s, "encrypt", &h, body).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.json());
            a.json()["ciphertext"]
                .as_str()
                .expect("ciphertext")
                .to_owned()
        }
    };
    let ct1 = encrypt(h1.clone(), b"first").await;
    assert!(ct1.starts_with("skc1:1:"), "{ct1}");
    assert_ne!(
        encrypt(h1.clone(), b"first").await,
        ct1,
        "a fresh nonce each time"
    );
    let mut rotate = admin_request("ROTATE", "rotate-enc");
    rotate["secret_name"] = json!("payments/enc");
    s.plan_and_commit(&rotate).await;
    let h2 = handle(&s, "payments/enc", "enc-2").await;
    let ct2 = encrypt(h2.clone(), b"second").await;
    assert!(ct2.starts_with("skc1:2:"), "{ct2}");
    let decrypt = |ct: &str, aad: &str| {
        let body = json!({"ciphertext": ct, "aad_b64": aad});
        use_key(&s, "decrypt", &h2, body)
    };
    // The ciphertext's version decides, not the handle's.
    let opened = decrypt(&ct1, &aad).await;
    assert_eq!(opened.json()["version"], 1, "{}", opened.json());
    assert_eq!(b64(&opened.json()["plaintext_b64"]), b"first");
    let wrong_aad = decrypt(&ct1, &STANDARD.encode(b"order-18")).await;
    assert_eq!(
        (wrong_aad.status, wrong_aad.json()["diagnostics"].clone()),
        (StatusCode::BAD_REQUEST, json!(["ciphertext:invalid"]))
    );
    let enc = format!("/v1/admin/tenants/{TENANT}/secrets/payments%2Fenc");
    let patch = |v: u64| {
        let body = json!({"min_decryption_version": v});
        let (s, enc) = (&s, enc.clone());
        async move { s.call(Method::PATCH, &enc, &s.admin, Some(&body)).await }
    };
    let patched = patch(2).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.json());
    assert_eq!(
        patched.json(),
        json!({"secret_name": "payments/enc", "min_decryption_version": 2})
    );
    let retired = decrypt(&ct1, &aad).await;
    assert_eq!(
        (retired.status, retired.reason()),
        (StatusCode::GONE, "KMS_REVOKED".to_owned())
    );
    // Nothing more is sealed under a retired version: it could never be opened.
    let body = json!({"plaintext_b64": STANDARD.encode(b"late")});
    let late = use_key(&s, "encrypt", &h1, body).await;
    assert_eq!(late.json()["diagnostics"], json!(["version:below_min"]));
    assert_eq!(
        b64(&decrypt(&ct2, &aad).await.json()["plaintext_b64"]),
        b"second"
    );
    assert_eq!(patch(3).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(patch(1).await.status, StatusCode::OK);
    assert_eq!(decrypt(&ct1, &aad).await.status, StatusCode::OK);
    // Revoking version 2 stops its encryptions and decryptions at once.
    let mut revoke = admin_request("REVOKE", "revoke-enc");
    revoke["secret_name"] = json!("payments/enc");
    revoke["revoke_target"] = json!({"version": 2});
    let (_, done) = s.plan_and_commit(&revoke).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.json());
    assert_eq!(decrypt(&ct2, &aad).await.reason(), "KMS_REVOKED");
    let body = json!({"plaintext_b64": STANDARD.encode(b"x")});
    assert_eq!(
        use_key(&s, "encrypt", &h2, body).await.reason(),
        "KMS_REVOKED"
    );
    // Its handles stop altogether, as at redemption; a handle to version 1 still decrypts.
    assert_eq!(decrypt(&ct1, &aad).await.reason(), "KMS_REVOKED");
    let body = json!({"ciphertext": ct1, "aad_b64": aad});
    assert_eq!(
        use_key(&s, "decrypt", &h1, body).await.status,
        StatusCode::OK
    );

    // Every use is on record with the key version and the handle's id, never the data.
    let records = audit(&s).await;
    let uses: Vec<(String, Value)> = records
        .iter()
        .filter(|r| ["ENCRYPT", "DECRYPT"].contains(&r["operation"].as_str().unwrap_or("")))
        .map(|r| {
            (
                r["operation"].as_str().unwrap_or("").to_owned(),
                r["key_version"].clone(),
            )
        })
        .collect();
    assert!(uses.contains(&("ENCRYPT".to_owned(), json!(1))));
    assert!(uses.contains(&("DECRYPT".to_owned(), json!(2))));
    let page = serde_json::to_string(&records).expect("json");
    for secret in [&ct1, &ct2, &aad, &STANDARD.encode(b"first"), &h1] {
        assert!(!page.contains(secret.as_str()), "the audit holds {secret}");
    }
    assert!(
        records
            .iter()
            .any(|r| r["operation"] == "UPDATE_SECRET" && r["min_decryption_version"] == 2)
    );
    let replay = s
        .call(
            Method::POST,
            &format!("/v1/admin/tenants/{TENANT}/replay"),
            &s.admin,
            None,
        )
        .await;
    assert_eq!(replay.json()["differ"], 0, "{}", replay.json());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_credentials_are_held_to_their_purpose_and_scope() {
    let s = started().await;
    let mac = key(&s, "payments/mac", "hmac-sha256", None).await;
    let credential = handle(&s, "payments/stripe", "cred").await;
    let data = json!({"data_b64": STANDARD.encode(b"d")});
    // A credential is never used for crypto; a key is never redeemed, nor issued as a
    // credential; a key of one purpose does not do another's work.
    for (op, h) in [("mac", &credential), ("sign", &mac), ("encrypt", &mac)] {
        let fields = match op {
            "encrypt" => json!({"plaintext_b64": "ZA=="}),
            _ => data.clone(),
        };
        let a = use_key(&s, op, h, fields).await;
        assert_eq!(
            (a.status, a.reason()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "KMS_PURPOSE_MISMATCH".to_owned()
            ),
            "{op}"
        );
    }
    let redeemed = s
        .redeem(&json!({"tenant_id": TENANT, "secret_handle": mac}))
        .await;
    assert_eq!(redeemed.reason(), "KMS_PURPOSE_MISMATCH");
    assert!(redeemed.json()["material_b64"].is_null());
    let mut issue = request("ISSUE_EPHEMERAL", "eph-mac");
    issue["secret_name"] = json!("payments/mac");
    let issued = s.kms(&issue).await;
    assert_eq!(issued.reason(), "KMS_PURPOSE_MISMATCH");
    assert!(issued.json()["ephemeral_credential_ref"].is_null());

    // Bad input: each a 4xx with its reason, recorded nowhere.
    let before = audit(&s).await.len();
    for (op, fields, status, diagnostic) in [
        (
            "mac",
            json!({"data_b64": "not base64!"}),
            400,
            "data_b64:malformed",
        ),
        ("mac", json!({}), 400, "data_b64:missing"),
        (
            "sign",
            json!({"data_b64": "ZA==", "plaintext_b64": "ZA=="}),
            400,
            "plaintext_b64:not_allowed_for_operation",
        ),
        (
            "decrypt",
            json!({"ciphertext": "skc1:1:@@"}),
            400,
            "ciphertext:malformed",
        ),
        (
            "decrypt",
            json!({"ciphertext": "skc2:1:AAAA"}),
            400,
            "ciphertext:malformed",
        ),
        (
            "verify",
            json!({"data_b64": "ZA=="}),
            400,
            "signature_b64:missing",
        ),
        (
            "mac",
            json!({"data_b64": "ZA==", "extra": 1}),
            400,
            "body:malformed",
        ),
    ] {
        let a = use_key(&s, op, &mac, fields).await;
        assert_eq!(a.status.as_u16(), status, "{op}: {}", a.json());
        assert_eq!(a.json()["diagnostics"], json!([diagnostic]), "{op}");
    }
    let unknown = use_key(&s, "hash", &mac, data.clone()).await;
    assert_eq!(
        (unknown.status, unknown.reason()),
        (StatusCode::NOT_FOUND, "KMS_ROUTE_NOT_FOUND".to_owned())
    );
    assert_eq!(audit(&s).await.len(), before, "bad input is used nowhere");

    // Only the executor uses keys; a handle opens only in its own tenant.
    let as_os = s
        .call(
            Method::POST,
            "/v1/crypto/mac",
            &s.os,
            Some(&json!({"tenant_id": TENANT, "secret_handle": mac, "data_b64": "ZA=="})),
        )
        .await;
    assert_eq!(as_os.reason(), "KMS_FORBIDDEN_ROLE");
    let foreign = s
        .call(
            Method::POST,
            "/v1/crypto/mac",
            &s.executor,
            Some(&json!({"tenant_id": "globex", "secret_handle": mac, "data_b64": "ZA=="})),
        )
        .await;
    assert_eq!(foreign.reason(), "KMS_HANDLE_INVALID");

    // A revoked handle, then a disabled tenant, stop every use.
    let mut revoke = admin_request("REVOKE", "revoke-mac-handle");
    revoke["secret_name"] = json!("payments/mac");
    revoke["revoke_target"] = json!({"secret_handle": mac});
    let (_, done) = s.plan_and_commit(&revoke).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.json());
    assert_eq!(
        use_key(&s, "mac", &mac, data.clone()).await.reason(),
        "KMS_REVOKED"
    );
    let fresh = handle(&s, "payments/mac", "mac-2").await;
    assert_eq!(
        use_key(&s, "mac", &fresh, data.clone()).await.status,
        StatusCode::OK
    );
    let disabled = json!({"enabled": false, "rules": [], "admins": ["u-admin"]});
    s.call(
        Method::PUT,
        &format!("/v1/admin/tenants/{TENANT}/policy"),
        &s.admin,
        Some(&disabled),
    )
    .await;
    assert_eq!(
        use_key(&s, "mac", &fresh, data).await.reason(),
        "KMS_DISABLED"
    );
    // A key's imported material is exactly 32 bytes.
    let short = s
        .call(
            Method::POST,
            &format!("/v1/admin/tenants/{TENANT}/secrets"),
            &s.admin,
            Some(
                &json!({"secret_name": "payments/short", "purpose": "aes-256-gcm",
                         "material_b64": STANDARD.encode([1_u8; 31])}),
            ),
        )
        .await;
    assert_eq!(short.json()["diagnostics"], json!(["material:bad_shape"]));
    s.stop().await;
}

/// A handle outside its lifetime is refused, as at redemption: the engine takes the clock as an
/// argument, so the lifetime is crossed without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_is_used_only_within_its_lifetime() {
    use selene_kms_core::crypto::{CryptoOp, CryptoRequest};
    use selene_kms_core::{PrincipalId, PrincipalName, Role};
    use selene_kms_server::{Caller, Engine, now_ms};

    let s = started().await;
    let h = key(&s, "payments/mac", "hmac-sha256", None).await;
    let engine = Engine::new(s.store.clone());
    let name = PrincipalName::try_from("in-process").expect("name");
    let executor = Caller::asserted(PrincipalId::from_random([9; 16]), name, Role::Executor);
    let body = json!({"tenant_id": TENANT, "secret_handle": h, "data_b64": "ZA=="});
    let req = CryptoRequest::from_json(CryptoOp::Mac, body.to_string().as_bytes()).expect("valid");
    let now = now_ms();
    assert!(engine.crypto(&executor, &req, now).await.is_ok());
    let hour = 3_600_000;
    for at in [now + 2 * hour, now - hour] {
        let refused = engine
            .crypto(&executor, &req, at)
            .await
            .err()
            .expect("refused");
        assert_eq!(refused.reason.name(), "KMS_EXPIRED", "at {at}");
    }
    s.stop().await;
}
