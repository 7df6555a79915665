//! `selene-kms quickstart`: the whole job on a fresh temporary store, over real HTTP on loopback,
//! as a user would see it. Secret values are never printed; only their length.

use std::process::ExitCode;
use std::sync::Arc;

use selene_kms_client::Method;
use serde_json::{Value, json};

use selene_kms_backends::StoreLocation;

use super::db_path;
use super::init::{init_store, public_key_path};
use crate::client::{Answer, As, Client};
use crate::output;
use crate::output::say;
use selene_kms_server::{Engine, ServeOptions, serve};

const TENANT: &str = "acme";
const SECRET: &str = "payments/stripe";

/// Collects the steps for `--json` and prints them as they happen otherwise.
struct Report {
    json: bool,
    steps: Vec<Value>,
}

impl Report {
    fn step(&mut self, title: &str, answer: &Answer, detail: String) {
        let bundle = answer.json();
        let reason = bundle["reason_code"].as_str().unwrap_or("-").to_owned();
        if self.json {
            self.steps.push(json!({"step": title, "status": answer.status.as_u16(), "reason_code": reason, "detail": detail}));
        } else {
            say!(
                "  {title:<46} {:>3} {reason:<28} {detail}",
                answer.status.as_u16()
            );
        }
    }

    fn note(&mut self, text: &str) {
        if !self.json {
            say!("{text}");
        }
    }
}

fn request(op: &str, engine: &str, user: Option<&str>, key: &str) -> Value {
    let mut v = json!({
        "correlation_id": format!("qs-{key}"), "turn_id": "quickstart", "idempotency_key": key,
        "tenant_id": TENANT, "operation": op, "secret_name": SECRET, "requester_engine_id": engine,
    });
    if let Some(u) = user {
        v["requester_user_id"] = Value::from(u);
    }
    v
}

fn expect(answer: &Answer, status: u16, what: &str) -> Result<Value, String> {
    if answer.status.as_u16() == status {
        Ok(answer.json())
    } else {
        Err(format!(
            "quickstart step '{what}' answered {} instead of {status}",
            selene_kms_client::Error::from_answer(answer.status.as_u16(), &answer.body)
        ))
    }
}

/// Dry run, then commit with the plan's simulation id.
async fn plan_and_commit(
    client: &Client,
    report: &mut Report,
    mut req: Value,
    label: &str,
    key: &str,
) -> Result<Value, String> {
    let mut dry = req.clone();
    dry["dry_run"] = Value::from(true);
    dry["idempotency_key"] = Value::from(format!("{key}-plan"));
    let plan = client.kms(&dry).await?;
    let p = expect(&plan, 200, label)?;
    report.step(
        &format!("{label} (dry run)"),
        &plan,
        format!(
            "simulation_id {}",
            output::short(p["simulation_id"].as_str().unwrap_or(""))
        ),
    );
    req["simulation_id"] = p["simulation_id"].clone();
    let commit = client.kms(&req).await?;
    let c = expect(&commit, 200, label)?;
    let outcome = match (
        c["rotated_version"].as_u64(),
        c["revoked"]["target"].as_str(),
    ) {
        (Some(v), _) => format!("rotated_version {v}"),
        (_, Some(t)) => format!("tombstone for {t}"),
        _ => String::new(),
    };
    report.step(
        &format!("{label} (commit)"),
        &commit,
        format!("{outcome}, audit_seq {}", c["audit_seq"]),
    );
    Ok(c)
}

pub(crate) async fn run(json_out: bool) -> Result<ExitCode, String> {
    let dir = tempfile::Builder::new()
        .prefix("selene-kms-quickstart-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let mut report = Report {
        json: json_out,
        steps: Vec::new(),
    };
    let location = StoreLocation::Embedded(db_path(dir.path()));
    let (store, made) = init_store(dir.path(), &location).await?;
    let token = |role: &str| {
        made.iter()
            .find(|b| b.role == role)
            .map(|b| b.token.to_string())
            .unwrap_or_default()
    };
    let engine = Arc::new(Engine::new(store.clone()));
    let options = ServeOptions {
        listen: "127.0.0.1:0".parse().map_err(|_| "address")?,
        ..ServeOptions::default()
    };
    let listening = serve(engine, options).await.map_err(|e| e.to_string())?;
    let url = format!("http://{}", listening.addr);
    report.note(&format!(
        "selene-kms quickstart: temporary store, server on {url}\n"
    ));
    let client = Client::with_tokens(url, token("admin"), token("os"), token("executor"))?;

    let outcome = walk(&client, &public_key_path(dir.path()), &mut report).await;
    listening.shutdown().await.map_err(|e| e.to_string())?;
    drop(store);
    outcome?;
    if json_out {
        output::json(&json!({"ok": true, "steps": report.steps}));
    } else {
        say!("\nDone: every operation answered as expected, and the audit chain verifies.");
    }
    Ok(ExitCode::SUCCESS)
}

async fn walk(
    client: &Client,
    pinned_key: &std::path::Path,
    report: &mut Report,
) -> Result<(), String> {
    report.note("Provisioning (admin):");
    let policy = json!({
        "rules": [
            {"secret_names": ["payments/*"], "engines": ["PH1.CONNECTOR"], "operations": ["GET_HANDLE", "ISSUE_EPHEMERAL"]},
            {"secret_names": ["*"], "engines": ["PH1.OS"], "operations": ["ROTATE", "REVOKE"]}
        ],
        "admins": ["u-admin"], "require_admin_for_rotation": true, "enabled": true
    });
    let a = client
        .send(
            Method::PUT,
            &format!("/v1/admin/tenants/{TENANT}/policy"),
            As::Admin,
            Some(&policy),
        )
        .await?;
    let v = expect(&a, 200, "policy")?;
    report.step(
        "set policy of tenant acme",
        &a,
        format!("policy_version {}", v["policy_version"]),
    );
    let a = client
        .send(
            Method::POST,
            &format!("/v1/admin/tenants/{TENANT}/secrets"),
            As::Admin,
            Some(&json!({"secret_name": SECRET})),
        )
        .await?;
    let v = expect(&a, 201, "create secret")?;
    report.step(
        "create secret payments/stripe (generated)",
        &a,
        format!(
            "secret_ref {}",
            output::short(v["secret_ref"].as_str().unwrap_or(""))
        ),
    );

    report.note("\nKMS requests (os caller, on behalf of engines):");
    let a = client
        .kms(&request(
            "GET_HANDLE",
            "PH1.CONNECTOR",
            Some("u-42"),
            "qs-1",
        ))
        .await?;
    let handle_bundle = expect(&a, 200, "GET_HANDLE")?;
    let handle = handle_bundle["secret_handle"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    report.step(
        "GET_HANDLE by PH1.CONNECTOR",
        &a,
        format!("handle {}", output::short(&handle)),
    );

    let mut eph = request("ISSUE_EPHEMERAL", "PH1.CONNECTOR", Some("u-42"), "qs-2");
    eph["requested_ttl_ms"] = Value::from(60_000);
    let a = client.kms(&eph).await?;
    let e = expect(&a, 200, "ISSUE_EPHEMERAL")?;
    report.step(
        "ISSUE_EPHEMERAL, ttl 60 s",
        &a,
        format!("expires_at_ms {}", e["expires_at_ms"]),
    );
    let mut too_long = request("ISSUE_EPHEMERAL", "PH1.CONNECTOR", Some("u-42"), "qs-3");
    too_long["requested_ttl_ms"] = Value::from(86_400_000);
    let a = client.kms(&too_long).await?;
    expect(&a, 422, "TTL out of bounds")?;
    report.step(
        "ISSUE_EPHEMERAL, ttl 24 h (refused)",
        &a,
        "outside the secret's bounds".into(),
    );

    let mut rotate = request("ROTATE", "PH1.OS", Some("u-admin"), "qs-4");
    rotate["previous_version"] = Value::from(1);
    plan_and_commit(client, report, rotate, "ROTATE", "qs-4").await?;

    let mut revoke = request("REVOKE", "PH1.OS", Some("u-admin"), "qs-5");
    revoke["revoke_target"] = json!({"secret_handle": handle});
    plan_and_commit(client, report, revoke, "REVOKE the handle", "qs-5").await?;

    let mut stranger = request("GET_HANDLE", "PH1.STRANGER", None, "qs-6");
    stranger["secret_name"] = Value::from("payments/stripe");
    let a = client.kms(&stranger).await?;
    expect(&a, 403, "unauthorized")?;
    report.step(
        "GET_HANDLE by PH1.STRANGER (refused)",
        &a,
        "no policy rule allows it".into(),
    );

    report.note("\nRedemption (executor caller, at the point of use):");
    let a = client
        .send(
            Method::POST,
            "/v1/material/redeem",
            As::Executor,
            Some(&json!({"tenant_id": TENANT, "secret_handle": handle})),
        )
        .await?;
    expect(&a, 410, "redeem revoked")?;
    report.step(
        "redeem the revoked handle (refused)",
        &a,
        "revocation holds".into(),
    );
    let a = client
        .kms(&request(
            "GET_HANDLE",
            "PH1.CONNECTOR",
            Some("u-42"),
            "qs-7",
        ))
        .await?;
    let fresh = expect(&a, 200, "GET_HANDLE")?;
    let a = client
        .send(
            Method::POST,
            "/v1/material/redeem",
            As::Executor,
            Some(&json!({"tenant_id": TENANT, "secret_handle": fresh["secret_handle"]})),
        )
        .await?;
    let m = expect(&a, 200, "redeem")?;
    let len = m["material_b64"].as_str().map_or(0, |b| {
        b.len() / 4 * 3 - b.bytes().rev().take_while(|c| *c == b'=').count()
    });
    report.step(
        "redeem a fresh handle",
        &a,
        format!("version {}, {len} bytes (value not shown)", m["version"]),
    );
    let a = client
        .send(
            Method::POST,
            "/v1/material/redeem",
            As::Os,
            Some(&json!({"tenant_id": TENANT, "secret_handle": fresh["secret_handle"]})),
        )
        .await?;
    expect(&a, 403, "redeem as os")?;
    report.step(
        "redeem as the os caller (refused)",
        &a,
        "only executors redeem".into(),
    );

    report.note("\nAudit (admin):");
    // The key `init` pinned in the data directory, not one the server serves.
    let key =
        std::fs::read_to_string(pinned_key).map_err(|e| format!("the pinned audit key: {e}"))?;
    let export = client
        .send(
            Method::GET,
            &format!("/v1/audit/export?tenant_id={TENANT}"),
            As::Admin,
            None,
        )
        .await?;
    let text = String::from_utf8(export.body.clone()).map_err(|_| "export is not UTF-8")?;
    let public = selene_kms_core::audit::parse_public_key(&key).ok_or("no public key")?;
    let summary = selene_kms_core::export::verify_export(&text, &public, &Default::default())
        .map_err(|e| format!("audit chain broken: {e}"))?;
    report.step(
        "verify the exported chain with the pinned public key",
        &export,
        format!(
            "{} records, {} signed manifests: verified",
            summary.records, summary.manifests
        ),
    );
    Ok(())
}
