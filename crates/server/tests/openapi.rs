//! `/v1/openapi.json` against the server that serves it: a standard validator accepts it, every
//! documented operation is routed (and no other method on its path), and real answers have the
//! statuses and shapes the document gives them.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The validator's pinned version, as `.ci/run` installs it.
const VALIDATOR: &str = "openapi-spec-validator==0.9.0";

/// Where the validator is: `SELENE_KMS_OPENAPI_VALIDATOR`, else the virtualenv `.ci/run` makes,
/// which this test makes itself when it is missing (so that `cargo test` alone runs it on a
/// fresh machine with Python); once per test binary, whatever the number of tests asking.
fn validator() -> PathBuf {
    static INSTALLED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("SELENE_KMS_OPENAPI_VALIDATOR") {
                return PathBuf::from(path);
            }
            let venv: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../.ci/venv")
                .components()
                .collect();
            let exe = venv.join("bin/openapi-spec-validator");
            if !exe.is_file() {
                let made = Command::new("python3")
                    .arg("-m")
                    .arg("venv")
                    .arg(&venv)
                    .status();
                let pip = venv.join("bin/pip");
                let installed = made.is_ok_and(|s| s.success())
                    && Command::new(&pip)
                        .args(["install", "-q", VALIDATOR])
                        .status()
                        .is_ok_and(|s| s.success());
                assert!(
                    installed,
                    "cannot install {VALIDATOR} into {}: this test needs python3 with venv and pip",
                    venv.display()
                );
            }
            exe
        })
        .clone()
}

/// Runs the validator on `doc`; its verdict and what it said.
fn validate(doc: &Value) -> (bool, String) {
    let exe = validator();
    assert!(
        exe.is_file(),
        "the OpenAPI validator is not installed at {}. From the workspace root, run \
         `python3 -m venv .ci/venv && .ci/venv/bin/pip install openapi-spec-validator` \
         (.ci/run does this), or set SELENE_KMS_OPENAPI_VALIDATOR to an openapi-spec-validator \
         executable.",
        exe.display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(doc).expect("json")).expect("written");
    let out = Command::new(&exe)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

async fn served(s: &Server) -> Value {
    let a = s
        .raw(Method::GET, "/v1/openapi.json", None, None, Vec::new())
        .await;
    assert_eq!(a.status, StatusCode::OK);
    a.json()
}

/// The regression: the served document failed validation (parameters without a schema, `$ref`s
/// to schemas it did not hold). The validator must also refuse a document broken that way, so
/// that a validator that accepts anything cannot pass this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_passes_a_standard_validator() {
    let s = Server::start().await;
    let doc = served(&s).await;
    s.stop().await;
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..4]), Some("3.1."));
    let (ok, said) = validate(&doc);
    assert!(ok, "openapi-spec-validator refused the document:\n{said}");
    let mut dangling = doc.clone();
    dangling["components"]["schemas"]
        .as_object_mut()
        .expect("schemas")
        .remove("ReasonCode");
    let (ok, said) = validate(&dangling);
    assert!(!ok, "a dangling $ref passed the validator:\n{said}");
}

/// Every documented (method, path), with `{tenant_id}` filled in.
fn operations(doc: &Value) -> Vec<(Method, String, String, Value)> {
    let mut out = Vec::new();
    for (template, item) in doc["paths"].as_object().expect("paths") {
        for (verb, op) in item.as_object().expect("path item") {
            let method = Method::from_bytes(verb.to_uppercase().as_bytes()).expect("method");
            let path = template
                .replace("{tenant_id}", TENANT)
                .replace("{principal_id}", &format!("kp_{}", "0".repeat(32)))
                .replace("{token_id}", &format!("kt_{}", "0".repeat(32)))
                .replace("{secret_name}", "payments%2Fstripe");
            assert!(!path.contains('{'), "an unfilled parameter in {template}");
            out.push((method, template.clone(), path, op.clone()));
        }
    }
    out
}

/// The router and the document list the same routes: each documented operation reaches a
/// handler, asks for a token exactly when the document says so, and every other method on a
/// documented path is 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed_and_no_other_method_is() {
    let s = Server::start().await;
    let doc = served(&s).await;
    let ops = operations(&doc);
    assert!(ops.len() >= 15, "{} operations", ops.len());
    for (method, template, path, op) in &ops {
        let a = s.raw(method.clone(), path, None, None, Vec::new()).await;
        let reason = a.reason();
        assert!(
            !["KMS_ROUTE_NOT_FOUND", "KMS_METHOD_NOT_ALLOWED"].contains(&reason.as_str()),
            "{method} {template} is documented but not routed: {reason}"
        );
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        assert_eq!(
            a.status == StatusCode::UNAUTHORIZED,
            secured,
            "{method} {template}: the document says token {secured}, the server answered {}",
            a.status
        );
    }
    let documented: BTreeSet<(String, String)> = ops
        .iter()
        .map(|(m, t, _, _)| (m.to_string(), t.clone()))
        .collect();
    for (_, template, path, _) in &ops {
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            if documented.contains(&(method.to_string(), template.clone())) {
                continue;
            }
            let a = s.raw(method.clone(), path, None, None, Vec::new()).await;
            assert_eq!(
                (a.status, a.reason()),
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    "KMS_METHOD_NOT_ALLOWED".to_owned()
                ),
                "{method} {template} is routed but not documented"
            );
        }
    }
    s.stop().await;
}

/// Whether `v` is of JSON Schema type `t`.
fn of_type(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => false,
    }
}

/// Checks `v` against `schema` (the subset of JSON Schema the document uses), strictly: an
/// object key the schema does not list is a difference between the document and the server.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/components/schemas/")
            .ok_or_else(|| format!("{at}: foreign $ref {r}"))?;
        let target = &doc["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: dangling $ref {r}"));
        }
        return check(doc, target, v, at);
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let matched = options
            .iter()
            .filter(|o| check(doc, o, v, at).is_ok())
            .count();
        if matched != 1 {
            return Err(format!("{at}: {v} matches {matched} of oneOf {options:?}"));
        }
    }
    for all in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        check(doc, all, v, at)?;
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(|o| check(doc, o, v, at).is_ok())
    {
        return Err(format!("{at}: {v} matches nothing in anyOf"));
    }
    match schema.get("type") {
        Some(Value::String(t)) if !of_type(t, v) => {
            return Err(format!("{at}: {v} is not of type {t}"));
        }
        Some(Value::Array(ts)) if !ts.iter().filter_map(Value::as_str).any(|t| of_type(t, v)) => {
            return Err(format!("{at}: {v} is not of types {ts:?}"));
        }
        _ => {}
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        return Err(format!("{at}: {v} not in {allowed:?}"));
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64())
        && n < min
    {
        return Err(format!("{at}: {n} below {min}"));
    }
    if let Value::Object(fields) = v {
        let props = schema.get("properties").and_then(Value::as_object);
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !fields.contains_key(required) {
                return Err(format!("{at}: missing {required}"));
            }
        }
        if let Some(props) = props {
            for (k, field) in fields {
                let p = props
                    .get(k)
                    .ok_or_else(|| format!("{at}: {k} is not in the document"))?;
                check(doc, p, field, &format!("{at}.{k}"))?;
            }
        }
    }
    if let (Value::Array(items), Some(item)) = (v, schema.get("items")) {
        for (i, x) in items.iter().enumerate() {
            check(doc, item, x, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// An answer, with its media type.
struct Seen {
    status: StatusCode,
    media: String,
    body: Vec<u8>,
}

/// Holds every answer to the document: its status is documented for its operation, with the
/// media type it came in and a schema its body satisfies.
struct Conformance {
    doc: Value,
    /// (method, template) of every operation seen answering its success status.
    succeeded: BTreeSet<(String, String)>,
    /// Values for the path parameters other than `{tenant_id}`.
    ids: Vec<(&'static str, String)>,
}

impl Conformance {
    async fn send(
        &mut self,
        s: &Server,
        method: Method,
        template: &str,
        query: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Value {
        let path = self
            .ids
            .iter()
            .fold(template.replace("{tenant_id}", TENANT), |p, (k, v)| {
                p.replace(k, v)
            });
        let mut req = s
            .http
            .request(method.clone(), format!("{}{path}{query}", s.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await.expect("sent");
        let seen = Seen {
            status: r.status(),
            media: r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .unwrap_or("")
                .to_owned(),
            body: r.bytes().await.expect("body").to_vec(),
        };
        self.holds(&method, template, &seen)
    }

    fn holds(&mut self, method: &Method, template: &str, seen: &Seen) -> Value {
        let what = format!("{method} {template} → {}", seen.status);
        let op = &self.doc["paths"][template][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{what}: not documented");
        let responses = op["responses"].as_object().expect("responses");
        let status = seen.status.as_str();
        let response = responses
            .get(status)
            .unwrap_or_else(|| panic!("{what}: status not documented"));
        let content = &response["content"][&seen.media];
        assert!(
            content.is_object(),
            "{what}: media type {} not documented",
            seen.media
        );
        let value = if seen.media == "application/json" {
            let v: Value = serde_json::from_slice(&seen.body).expect("json body");
            if let Err(e) = check(&self.doc, &content["schema"], &v, "body") {
                panic!("{what}: {e}");
            }
            v
        } else {
            Value::String(String::from_utf8(seen.body.clone()).expect("text"))
        };
        if seen.status.is_success() {
            self.succeeded
                .insert((method.as_str().to_lowercase(), template.to_owned()));
        }
        value
    }
}

/// Every route answers, at its documented success status, a body of its documented shape; so do
/// the refusals sampled here. Each documented operation must be exercised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_have_the_statuses_and_shapes_the_document_gives() {
    let s = Server::start().await;
    let doc = served(&s).await;
    let mut c = Conformance {
        doc: doc.clone(),
        succeeded: BTreeSet::new(),
        ids: Vec::new(),
    };
    let (admin, os, executor) = (s.admin.clone(), s.os.clone(), s.executor.clone());
    let (a, o, e) = (
        Some(admin.as_str()),
        Some(os.as_str()),
        Some(executor.as_str()),
    );
    let policy = json!({
        "rules": [
            {"secret_names": ["payments/*"], "engines": ["PH1.CONNECTOR"], "operations": ["GET_HANDLE", "ISSUE_EPHEMERAL"]},
            {"secret_names": ["*"], "engines": ["PH1.OS"], "operations": ["GET_HANDLE", "ROTATE", "REVOKE"]}
        ],
        "admins": ["u-admin"]
    });
    let secrets = "/v1/admin/tenants/{tenant_id}/secrets";
    let policy_path = "/v1/admin/tenants/{tenant_id}/policy";
    let kms = "/v1/kms/requests";
    let redeem = "/v1/material/redeem";

    // Admin routes.
    let put = c
        .send(&s, Method::PUT, policy_path, "", a, Some(&policy))
        .await;
    assert!(put["policy_version"].is_u64());
    c.send(&s, Method::GET, policy_path, "", a, None).await;
    let impact = c
        .send(
            &s,
            Method::POST,
            "/v1/admin/tenants/{tenant_id}/policy/simulate",
            "",
            a,
            Some(&json!({"policy": policy})),
        )
        .await;
    assert_eq!(impact["evaluated"], 0);
    let replay = "/v1/admin/tenants/{tenant_id}/replay";
    let replayed = c
        .send(
            &s,
            Method::POST,
            replay,
            "",
            a,
            Some(&json!({"after_seq": 0})),
        )
        .await;
    assert_eq!(replayed["differ"], 0);
    let created = c
        .send(
            &s,
            Method::POST,
            secrets,
            "",
            a,
            Some(&json!({"secret_name": "payments/stripe"})),
        )
        .await;
    assert_eq!(created["version"], 1);
    let imported =
        json!({"secret_name": "payments/imported", "material_b64": STANDARD.encode([7u8; 32])});
    c.send(&s, Method::POST, secrets, "", a, Some(&imported))
        .await;
    let staged =
        json!({"secret_name": "payments/imported", "material_b64": STANDARD.encode([8u8; 32])});
    c.send(
        &s,
        Method::POST,
        "/v1/admin/tenants/{tenant_id}/staged-versions",
        "",
        a,
        Some(&staged),
    )
    .await;

    // KMS requests, each operation, dry run and commit.
    let handle = c
        .send(
            &s,
            Method::POST,
            kms,
            "",
            o,
            Some(&request("GET_HANDLE", "c-h")),
        )
        .await;
    let mut dry = request("ISSUE_EPHEMERAL", "c-e-dry");
    dry["dry_run"] = json!(true);
    c.send(&s, Method::POST, kms, "", o, Some(&dry)).await;
    let credential = c
        .send(
            &s,
            Method::POST,
            kms,
            "",
            o,
            Some(&request("ISSUE_EPHEMERAL", "c-e")),
        )
        .await;
    let redeemed = c
        .send(
            &s,
            Method::POST,
            redeem,
            "",
            e,
            Some(&json!({"tenant_id": TENANT, "ephemeral_credential_ref": credential["ephemeral_credential_ref"]})),
        )
        .await;
    assert!(redeemed["material_b64"].is_string());
    for (op, key, extra) in [
        ("ROTATE", "c-r", json!({})),
        ("REVOKE", "c-v", json!({"revoke_target": {"version": 1}})),
    ] {
        let mut req = admin_request(op, key);
        for (k, v) in extra.as_object().into_iter().flatten() {
            req[k] = v.clone();
        }
        let mut plan = req.clone();
        plan["dry_run"] = json!(true);
        plan["idempotency_key"] = json!(format!("{key}-plan"));
        let p = c.send(&s, Method::POST, kms, "", o, Some(&plan)).await;
        req["simulation_id"] = p["simulation_id"].clone();
        let done = c.send(&s, Method::POST, kms, "", o, Some(&req)).await;
        assert_eq!(done["validation_status"], "OK", "{op}: {done}");
    }

    // Redemption of a handle to a version now revoked.
    let refused = c
        .send(
            &s,
            Method::POST,
            redeem,
            "",
            e,
            Some(&json!({"tenant_id": TENANT, "secret_handle": handle["secret_handle"]})),
        )
        .await;
    assert_eq!(refused["validation_status"], "FAIL");

    // Reads and the open routes.
    let listed = c.send(&s, Method::GET, secrets, "", a, None).await;
    assert_eq!(listed["secrets"].as_array().map(Vec::len), Some(2));
    let page = c
        .send(
            &s,
            Method::GET,
            "/v1/audit",
            "?tenant_id=acme&limit=50",
            a,
            None,
        )
        .await;
    assert!(page["records"].as_array().is_some_and(|r| r.len() > 5));
    c.send(
        &s,
        Method::GET,
        "/v1/audit/export",
        "?tenant_id=acme",
        a,
        None,
    )
    .await;
    for path in [
        "/v1/audit/public-key",
        "/healthz",
        "/readyz",
        "/v1/noop",
        "/metrics",
        "/v1/openapi.json",
        "/ui/",
        "/ui/app.js",
        "/ui/app.css",
    ] {
        c.send(&s, Method::GET, path, "", None, None).await;
    }
    // The console's own routes: a rotation's dry run by an admin, a chain's verification
    // against a key given (this server has none pinned), and without one.
    let mut plan = admin_request("ROTATE", "c-admin-plan");
    plan["dry_run"] = json!(true);
    let planned = c
        .send(
            &s,
            Method::POST,
            "/v1/admin/tenants/{tenant_id}/requests",
            "",
            a,
            Some(&plan),
        )
        .await;
    assert_eq!(planned["validation_status"], "OK", "{planned}");
    let key = c
        .send(&s, Method::GET, "/v1/audit/public-key", "", None, None)
        .await;
    let key = key["audit_public_key"].as_str().expect("key").to_owned();
    let verified = c
        .send(
            &s,
            Method::GET,
            "/v1/audit/verify",
            &format!("?tenant_id=acme&public_key={key}"),
            a,
            None,
        )
        .await;
    assert_eq!(verified["key"], "given", "{verified}");
    let unpinned = c
        .send(
            &s,
            Method::GET,
            "/v1/audit/verify",
            "?tenant_id=acme",
            a,
            None,
        )
        .await;
    assert_eq!(unpinned["diagnostics"], json!(["public_key:missing"]));

    // Refusals: bundles on the KMS route whatever stops them, admin errors elsewhere.
    let refusal = c
        .send(
            &s,
            Method::POST,
            kms,
            "",
            None,
            Some(&request("GET_HANDLE", "c-x")),
        )
        .await;
    assert_eq!(refusal["reason_code"], "KMS_UNAUTHENTICATED");
    let mut foreign = request("GET_HANDLE", "c-y");
    foreign["secret_name"] = json!("payments/missing");
    c.send(&s, Method::POST, kms, "", o, Some(&foreign)).await;
    let exists = c
        .send(
            &s,
            Method::POST,
            secrets,
            "",
            a,
            Some(&json!({"secret_name": "payments/stripe"})),
        )
        .await;
    assert_eq!(exists["reason_code"], "KMS_SECRET_EXISTS");
    c.send(&s, Method::GET, "/v1/audit", "", a, None).await;
    c.send(&s, Method::POST, redeem, "", None, Some(&json!({})))
        .await;

    // Identity: principals, tokens, whoami, the tenant listing, and their refusals.
    let principals = "/v1/admin/principals";
    let principal = "/v1/admin/principals/{principal_id}";
    let new = json!({"name": "doc-os", "role": "os", "tenants": [TENANT],
                     "spiffe_id": "spiffe://example.org/os"});
    let made = c
        .send(&s, Method::POST, principals, "", a, Some(&new))
        .await;
    assert!(made["token"].is_string());
    let exists = c
        .send(&s, Method::POST, principals, "", a, Some(&new))
        .await;
    assert_eq!(exists["reason_code"], "KMS_PRINCIPAL_EXISTS");
    let bad = json!({"name": "Doc", "role": "os", "tenants": ["*"]});
    let bad = c
        .send(&s, Method::POST, principals, "", a, Some(&bad))
        .await;
    assert_eq!(bad["diagnostics"], json!(["name:bad_character"]));
    c.send(&s, Method::GET, principals, "", a, None).await;
    c.ids.push((
        "{principal_id}",
        made["principal_id"].as_str().unwrap_or_default().to_owned(),
    ));
    let tokens = "/v1/admin/principals/{principal_id}/tokens";
    let issued = c
        .send(
            &s,
            Method::POST,
            tokens,
            "",
            a,
            Some(&json!({"ttl_ms": 60_000})),
        )
        .await;
    c.ids.push((
        "{token_id}",
        issued["token_id"].as_str().unwrap_or_default().to_owned(),
    ));
    c.send(
        &s,
        Method::DELETE,
        "/v1/admin/principals/{principal_id}/tokens/{token_id}",
        "",
        a,
        None,
    )
    .await;
    let me = c
        .send(&s, Method::GET, "/v1/auth/whoami", "", o, None)
        .await;
    c.send(&s, Method::GET, "/v1/admin/tenants", "", a, None)
        .await;
    c.send(&s, Method::GET, "/v1/audit", "?tenant_id=_system", a, None)
        .await;
    c.send(&s, Method::DELETE, principal, "", a, None).await;
    let admin_id = c
        .send(&s, Method::GET, "/v1/auth/whoami", "", a, None)
        .await;
    c.ids[0].1 = admin_id["principal_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let last = c.send(&s, Method::DELETE, principal, "", a, None).await;
    assert_eq!(last["reason_code"], "KMS_LAST_ADMIN");
    c.ids[0].1 = format!("kp_{}", "0".repeat(32));
    let missing = c.send(&s, Method::DELETE, principal, "", a, None).await;
    assert_eq!(missing["reason_code"], "KMS_PRINCIPAL_NOT_FOUND");
    assert_eq!(me["role"], "os");

    // Keys: one of each purpose, used through handles; a public key; a minimum decryption
    // version; and a key's handle refused at redemption.
    let mut handles = Vec::new();
    for (name, purpose) in [
        ("payments/sign", "ed25519"),
        ("payments/mac", "hmac-sha256"),
        ("payments/enc", "aes-256-gcm"),
    ] {
        let new = json!({"secret_name": name, "purpose": purpose});
        c.send(&s, Method::POST, secrets, "", a, Some(&new)).await;
        let mut get = request("GET_HANDLE", &format!("c-{purpose}"));
        get["secret_name"] = json!(name);
        let got = c.send(&s, Method::POST, kms, "", o, Some(&get)).await;
        handles.push(got["secret_handle"].clone());
    }
    let (sign_h, mac_h, enc_h) = (&handles[0], &handles[1], &handles[2]);
    let data = STANDARD.encode(b"to be signed");
    let with = |h: &Value, more: Value| {
        let mut body = json!({"tenant_id": TENANT, "secret_handle": h});
        for (k, v) in more.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        body
    };
    let crypto = |op: &str| format!("/v1/crypto/{op}");
    let signed = c
        .send(
            &s,
            Method::POST,
            &crypto("sign"),
            "",
            e,
            Some(&with(sign_h, json!({"data_b64": data}))),
        )
        .await;
    let maced = c
        .send(
            &s,
            Method::POST,
            &crypto("mac"),
            "",
            e,
            Some(&with(mac_h, json!({"data_b64": data}))),
        )
        .await;
    let check = json!({"data_b64": data, "signature_b64": signed["signature_b64"]});
    let verified = c
        .send(
            &s,
            Method::POST,
            &crypto("verify"),
            "",
            e,
            Some(&with(sign_h, check)),
        )
        .await;
    assert_eq!(verified["valid"], true);
    let sealed = c
        .send(
            &s,
            Method::POST,
            &crypto("encrypt"),
            "",
            e,
            Some(&with(enc_h, json!({"plaintext_b64": data}))),
        )
        .await;
    let opened = c
        .send(
            &s,
            Method::POST,
            &crypto("decrypt"),
            "",
            e,
            Some(&with(enc_h, json!({"ciphertext": sealed["ciphertext"]}))),
        )
        .await;
    assert_eq!(opened["plaintext_b64"], json!(data));
    let mismatch = c
        .send(
            &s,
            Method::POST,
            &crypto("mac"),
            "",
            e,
            Some(&with(sign_h, json!({"data_b64": data}))),
        )
        .await;
    assert_eq!(mismatch["reason_code"], "KMS_PURPOSE_MISMATCH");
    assert!(maced["mac_b64"].is_string());
    let not_redeemed = c
        .send(
            &s,
            Method::POST,
            redeem,
            "",
            e,
            Some(&json!({"tenant_id": TENANT, "secret_handle": mac_h})),
        )
        .await;
    assert_eq!(not_redeemed["reason_code"], "KMS_PURPOSE_MISMATCH");
    let secret = "/v1/admin/tenants/{tenant_id}/secrets/{secret_name}";
    c.ids.push(("{secret_name}", "payments%2Fsign".to_owned()));
    let keys = c
        .send(
            &s,
            Method::GET,
            &format!("{secret}/public-key"),
            "",
            a,
            None,
        )
        .await;
    assert_eq!(keys["versions"][0]["version"], 1);
    let patched = c
        .send(
            &s,
            Method::PATCH,
            secret,
            "",
            a,
            Some(&json!({"min_decryption_version": 1})),
        )
        .await;
    assert_eq!(patched["min_decryption_version"], 1);
    let out_of_range = c
        .send(
            &s,
            Method::PATCH,
            secret,
            "",
            a,
            Some(&json!({"min_decryption_version": 2})),
        )
        .await;
    assert_eq!(
        out_of_range["diagnostics"],
        json!(["min_decryption_version:out_of_range"])
    );

    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, t, _, _)| (m.as_str().to_lowercase(), t))
        .collect();
    assert_eq!(
        c.succeeded, documented,
        "every documented operation is exercised at its success status"
    );
    s.stop().await;
}
