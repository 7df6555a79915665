//! `selene-kms secret`: create, list, stage, rotate, revoke.

use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use selene_kms_client::Method;
use serde_json::{Value, json};
use zeroize::{Zeroize, Zeroizing};

use crate::client::{As, Client};
use crate::config::Config;
use crate::failure::Failure;
use crate::output::say;
use crate::{Connection, output};
use selene_kms_client::idempotency_key;

#[derive(Subcommand)]
pub(crate) enum SecretCommand {
    /// Create a secret: generated (32 random bytes) unless --material-file imports one; a
    /// credential unless --purpose makes it a key.
    #[command(
        after_help = "Examples:\n  selene-kms secret create acme payments/stripe\n  selene-kms secret create acme db/primary --material-file ./password.txt --ttl-max-ms 600000\n  selene-kms secret create acme releases/signing --purpose ed25519"
    )]
    Create(CreateArgs),
    /// The public key of every version of an Ed25519 key (raw 32 bytes, base64).
    #[command(
        name = "public-key",
        after_help = "Example:\n  selene-kms secret public-key acme releases/signing"
    )]
    PublicKey {
        /// Tenant.
        tenant: String,
        /// Secret name (an ed25519 key).
        name: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Change a key's terms: the oldest version `crypto decrypt` accepts.
    #[command(
        after_help = "Example:\n  selene-kms secret update acme payments/cards --min-decryption-version 3"
    )]
    Update {
        /// Tenant.
        tenant: String,
        /// Secret name (a key).
        name: String,
        /// Ciphertexts of older versions no longer decrypt (at most the current version).
        #[arg(long)]
        min_decryption_version: u64,
        #[command(flatten)]
        conn: Connection,
    },
    /// List a tenant's secrets and versions (metadata only, never a value).
    #[command(after_help = "Example:\n  selene-kms secret list acme")]
    List {
        /// Tenant.
        tenant: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Stage the material of an imported secret's next version: the next rotation takes it.
    #[command(
        after_help = "Example:\n  selene-kms secret stage acme db/primary --material-file ./new-password.txt\n  selene-kms secret rotate acme db/primary --user u-admin"
    )]
    Stage {
        /// Tenant.
        tenant: String,
        /// Secret name (an imported secret).
        name: String,
        /// The next version's material: this file's bytes, as they are.
        #[arg(long)]
        material_file: PathBuf,
        #[command(flatten)]
        conn: Connection,
    },
    /// Rotate: a dry run, then its commit with the simulation id (needs the os token).
    #[command(
        after_help = "Example:\n  selene-kms secret rotate acme payments/stripe --engine PH1.OS --user u-admin"
    )]
    Rotate(MutationArgs),
    /// Revoke one version (--version N), all versions (--all), one handle (--handle H) or one
    /// ephemeral credential (--credential C): dry run, then commit.
    #[command(
        after_help = "Examples:\n  selene-kms secret revoke acme payments/stripe --version 1 --engine PH1.OS --user u-admin\n  printf '%s' \"$HANDLE\" | selene-kms secret revoke acme payments/stripe --handle - --user u-admin"
    )]
    Revoke {
        #[command(flatten)]
        common: MutationArgs,
        #[command(flatten)]
        target: RevokeTarget,
    },
}

/// What a revocation revokes: exactly one.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub(crate) struct RevokeTarget {
    /// The version to revoke.
    #[arg(long)]
    version: Option<u64>,
    /// Revoke every version.
    #[arg(long)]
    all: bool,
    /// One handle (`ksh2_…`, or - to read it from stdin), until it expires.
    #[arg(long)]
    handle: Option<String>,
    /// One ephemeral credential (`kse2_…`, or - to read it from stdin), until it expires.
    #[arg(long)]
    credential: Option<String>,
}

impl RevokeTarget {
    /// The request's `revoke_target`.
    fn to_json(&self) -> Result<Value, String> {
        Ok(match (self.version, &self.handle, &self.credential) {
            (Some(v), _, _) => json!({"version": v}),
            (_, Some(h), _) => json!({"secret_handle": super::ref_argument(h)?.as_str()}),
            (_, _, Some(c)) => {
                json!({"ephemeral_credential_ref": super::ref_argument(c)?.as_str()})
            }
            _ => json!({"all_versions": true}),
        })
    }
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    /// Tenant.
    tenant: String,
    /// Secret name, e.g. payments/stripe.
    name: String,
    /// Import the material from this file (its bytes, as they are).
    #[arg(long)]
    material_file: Option<PathBuf>,
    /// Shortest ephemeral TTL, ms [default: 30000].
    #[arg(long)]
    ttl_min_ms: Option<u64>,
    /// Longest ephemeral TTL, ms [default: 3600000].
    #[arg(long)]
    ttl_max_ms: Option<u64>,
    /// Ephemeral TTL when a request names none, ms [default: 300000].
    #[arg(long)]
    ttl_default_ms: Option<u64>,
    /// What the secret is for: credential (redeemable), or a key that never leaves the KMS:
    /// hmac-sha256, ed25519 or aes-256-gcm (imported key material is exactly 32 bytes).
    #[arg(long, default_value = "credential", value_parser = purpose)]
    purpose: selene_kms_core::Purpose,
    #[command(flatten)]
    conn: Connection,
}

fn purpose(name: &str) -> Result<selene_kms_core::Purpose, String> {
    selene_kms_core::Purpose::from_name(name)
        .ok_or_else(|| "one of credential, hmac-sha256, ed25519, aes-256-gcm".to_owned())
}

#[derive(Args)]
pub(crate) struct MutationArgs {
    /// Tenant.
    tenant: String,
    /// Secret name.
    name: String,
    /// Requester engine id asserted by this (os) caller.
    #[arg(long, default_value = "PH1.OS")]
    engine: String,
    /// Requester user id (an admin, when the policy requires one).
    #[arg(long)]
    user: Option<String>,
    /// Compare-and-set: rotate only if this is the current version.
    #[arg(long)]
    previous_version: Option<u64>,
    /// Only the dry run: show the plan and commit nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    conn: Connection,
}

pub(crate) async fn run(
    config: &Config,
    command: SecretCommand,
    json: bool,
) -> Result<ExitCode, Failure> {
    match command {
        SecretCommand::Create(a) => create(config, a, json).await,
        SecretCommand::List { tenant, conn } => {
            list(&Client::new(&conn, config)?, &tenant, json).await
        }
        SecretCommand::Stage {
            tenant,
            name,
            material_file,
            conn,
        } => stage(config, &conn, &tenant, &name, &material_file, json).await,
        SecretCommand::PublicKey { tenant, name, conn } => {
            public_keys(&Client::new(&conn, config)?, &tenant, &name, json).await
        }
        SecretCommand::Update {
            tenant,
            name,
            min_decryption_version,
            conn,
        } => {
            let client = Client::new(&conn, config)?;
            let body = json!({"min_decryption_version": min_decryption_version});
            let path = selene_kms_client::secret_path(&tenant, &name);
            let answer = client
                .send(Method::PATCH, &path, As::Admin, Some(&body))
                .await?;
            if !answer.status.is_success() {
                return Err(answer.failure("update"));
            }
            if json {
                output::json(&answer.json());
            } else {
                say!("{name} in {tenant} decrypts versions {min_decryption_version} and later.");
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretCommand::Rotate(m) => mutate(config, m, "ROTATE", None, json).await,
        SecretCommand::Revoke { common, target } => {
            mutate(config, common, "REVOKE", Some(target.to_json()?), json).await
        }
    }
}

async fn create(config: &Config, a: CreateArgs, json_out: bool) -> Result<ExitCode, Failure> {
    let client = Client::new(&a.conn, config)?;
    let mut body = json!({"secret_name": a.name, "purpose": a.purpose.name()});
    if let Some(path) = &a.material_file {
        let bytes =
            Zeroizing::new(std::fs::read(path).map_err(|e| format!("--material-file: {e}"))?);
        body["material_b64"] = Value::from(STANDARD.encode(&*bytes));
    }
    if a.ttl_min_ms.is_some() || a.ttl_max_ms.is_some() || a.ttl_default_ms.is_some() {
        body["ephemeral_ttl_ms"] = json!({
            "min": a.ttl_min_ms.unwrap_or(30_000),
            "max": a.ttl_max_ms.unwrap_or(3_600_000),
            "default": a.ttl_default_ms.unwrap_or(300_000),
        });
    }
    let path = format!("/v1/admin/tenants/{}/secrets", a.tenant);
    let answer = client
        .send(Method::POST, &path, As::Admin, Some(&body))
        .await?;
    drop(body);
    if !answer.status.is_success() {
        return Err(answer.failure("create"));
    }
    let v = answer.json();
    if json_out {
        output::json(&v);
    } else {
        say!(
            "Created {} in {} (version 1, {}).",
            a.name,
            a.tenant,
            a.purpose.name()
        );
        say!("secret_ref: {}", v["secret_ref"].as_str().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

async fn stage(
    config: &Config,
    conn: &Connection,
    tenant: &str,
    name: &str,
    material_file: &std::path::Path,
    json_out: bool,
) -> Result<ExitCode, Failure> {
    let client = Client::new(conn, config)?;
    let bytes =
        Zeroizing::new(std::fs::read(material_file).map_err(|e| format!("--material-file: {e}"))?);
    let mut body = json!({"secret_name": name});
    body["material_b64"] = Value::from(STANDARD.encode(&*bytes));
    let path = format!("/v1/admin/tenants/{tenant}/staged-versions");
    let answer = client
        .send(Method::POST, &path, As::Admin, Some(&body))
        .await;
    // The request's copy of the material goes as soon as it is sent.
    if let Some(Value::String(text)) = body.get_mut("material_b64") {
        text.zeroize();
    }
    let answer = answer?;
    if !answer.status.is_success() {
        return Err(answer.failure("stage"));
    }
    if json_out {
        output::json(&answer.json());
    } else {
        say!("Staged the next version of {name} in {tenant}: the next rotation takes it.");
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(client: &Client, tenant: &str, json_out: bool) -> Result<ExitCode, Failure> {
    let path = format!("/v1/admin/tenants/{tenant}/secrets");
    let answer = client.send(Method::GET, &path, As::Admin, None).await?;
    if !answer.status.is_success() {
        return Err(answer.failure("list"));
    }
    let v = answer.json();
    if json_out {
        output::json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = v["secrets"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|s| {
                    let versions = s["versions"]
                        .as_array()
                        .map(|vs| {
                            vs.iter()
                                .map(|x| {
                                    format!(
                                        "{}:{}",
                                        x["version"],
                                        x["state"].as_str().unwrap_or("?")
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    vec![
                        s["secret_name"].as_str().unwrap_or("").to_owned(),
                        s["kind"].as_str().unwrap_or("").to_owned(),
                        s["purpose"].as_str().unwrap_or("").to_owned(),
                        s["current_version"].to_string(),
                        versions,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    output::table(&["name", "kind", "purpose", "current", "versions"], &rows);
    Ok(ExitCode::SUCCESS)
}

async fn public_keys(
    client: &Client,
    tenant: &str,
    name: &str,
    json_out: bool,
) -> Result<ExitCode, Failure> {
    let path = format!(
        "{}/public-key",
        selene_kms_client::secret_path(tenant, name)
    );
    let answer = client.send(Method::GET, &path, As::Admin, None).await?;
    if !answer.status.is_success() {
        return Err(answer.failure("public-key"));
    }
    let v = answer.json();
    if json_out {
        output::json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = v["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            vec![
                k["version"].to_string(),
                k["public_key_b64"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    output::table(&["version", "public key (base64)"], &rows);
    Ok(ExitCode::SUCCESS)
}

/// Dry run, then commit with the simulation id.
async fn mutate(
    config: &Config,
    m: MutationArgs,
    operation: &str,
    target: Option<Value>,
    json_out: bool,
) -> Result<ExitCode, Failure> {
    let client = Client::new(&m.conn, config)?;
    let mut request = json!({
        "correlation_id": idempotency_key("cli"), "turn_id": "cli",
        "tenant_id": m.tenant, "operation": operation, "secret_name": m.name,
        "requester_engine_id": m.engine,
    });
    if let Some(u) = &m.user {
        request["requester_user_id"] = Value::from(u.as_str());
    }
    if let Some(p) = m.previous_version {
        request["previous_version"] = Value::from(p);
    }
    if let Some(t) = target {
        request["revoke_target"] = t;
    }
    let mut dry = request.clone();
    dry["dry_run"] = Value::from(true);
    dry["idempotency_key"] = Value::from(idempotency_key("cli-plan"));
    let plan = client.kms(&dry).await?;
    let plan_bundle = plan.json();
    if plan_bundle["validation_status"] != "OK" {
        return Err(plan.failure(&format!("{operation} (dry run)")));
    }
    if m.dry_run {
        if json_out {
            output::json(&plan_bundle);
        } else {
            say!(
                "Dry run: {operation} of {} would be allowed ({}); nothing committed.\nsimulation_id: {}",
                m.name,
                plan_bundle["reason_code"].as_str().unwrap_or("?"),
                plan_bundle["simulation_id"].as_str().unwrap_or("")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    request["simulation_id"] = plan_bundle["simulation_id"].clone();
    request["idempotency_key"] = Value::from(idempotency_key("cli"));
    let commit = client.kms(&request).await?;
    let bundle = commit.json();
    if bundle["validation_status"] != "OK" {
        return Err(commit.failure(&format!("{operation} (commit)")));
    }
    if json_out {
        output::json(&bundle);
    } else {
        match operation {
            "ROTATE" => say!(
                "Rotated {} to version {}.",
                m.name,
                bundle["rotated_version"]
            ),
            _ => say!(
                "Revoked ({}): tombstone {}",
                bundle["revoked"]["target"].as_str().unwrap_or("?"),
                output::short(bundle["revoked"]["tombstone_ref"].as_str().unwrap_or(""))
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}
