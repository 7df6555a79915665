//! `selene-kms audit`: verify, export, tail.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use selene_kms_client::Method;
use selene_kms_core::audit::parse_public_key;
use selene_kms_core::export::{ExportChecks, verify_export};
use selene_kms_core::{AuditRecord, Manifest, TenantId};
use selene_kms_server::now_ms;
use selene_kms_store::manifest::{read_witness, witnessed};
use selene_kms_store::verify::verify_store;

use selene_kms_backends::StoreLocation;

use super::{OfflineStore, open_at};
use crate::client::{As, Client};
use crate::config::Config;
use crate::failure::Failure;
use crate::output::say;
use crate::{Connection, output};

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify the audit chains: links, digests, signed manifests and checkpoints (and, offline
    /// with the data directory, every record's MAC, and that the store's secrets, versions,
    /// policies and principals are what the chains say); names the tenant and the first bad
    /// record, a chain cut below a signed head, and a chain that is gone. Exits 1 when anything
    /// fails.
    /// The key is the pinned one (`init` wrote it to DATA_DIR/audit-public-key), never one the
    /// server being verified serves.
    #[command(
        after_help = "Examples:\n  selene-kms audit verify --public-key-file ./kms/audit-public-key   # through the server\n  selene-kms audit verify --public-key HEX --tenant acme\n  selene-kms audit verify --data-dir ./kms --witness-file /witness/kms.jsonl   # offline, on a stopped store\n  selene-kms audit verify --export audit.jsonl --public-key HEX   # a third party"
    )]
    Verify {
        /// One tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        offline: OfflineStore,
        /// Verify an export file instead of a live store.
        #[arg(long, conflicts_with = "data_dir")]
        export: Option<PathBuf>,
        /// The audit public key to trust (64 hex characters).
        #[arg(
            long,
            env = "SELENE_KMS_AUDIT_PUBLIC_KEY",
            conflicts_with = "public_key_file"
        )]
        public_key: Option<String>,
        /// A file holding the audit public key to trust (`init` wrote DATA_DIR/audit-public-key).
        #[arg(long)]
        public_key_file: Option<PathBuf>,
        /// Manifests a server appended (`serve --witness-file`): the store must still hold
        /// every head they name, or it was rolled back.
        #[arg(long)]
        witness_file: Option<PathBuf>,
        /// Report records after the latest signed manifest as not covered instead of failing
        /// (an export made without its closing manifest).
        #[arg(long)]
        allow_uncovered: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Export chains as JSON Lines (records and signed checkpoints; metadata only).
    #[command(
        after_help = "Example:\n  selene-kms audit export --tenant acme --out acme-audit.jsonl"
    )]
    Export {
        /// One tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Re-derive every decision of a tenant's chain from the chain and the inputs kept beside
    /// each record, and compare it with its record byte for byte. Exits 1 when one differs.
    #[command(
        after_help = "Examples:\n  selene-kms audit replay --tenant acme   # through the server\n  selene-kms audit replay --tenant acme --data-dir ./kms   # offline, on a stopped store"
    )]
    Replay {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Compare only the decisions after this record (the state still folds from the
        /// first).
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        #[command(flatten)]
        offline: OfflineStore,
        #[command(flatten)]
        conn: Connection,
    },
    /// Print the audit public key the server serves. To verify, trust a key pinned when the
    /// store was made (`init` wrote DATA_DIR/audit-public-key), not one a server sends.
    #[command(after_help = "Example:\n  selene-kms audit public-key > served-audit-key.txt")]
    PublicKey {
        #[command(flatten)]
        conn: Connection,
    },
    /// Print a tenant's latest records.
    #[command(after_help = "Example:\n  selene-kms audit tail --tenant acme --limit 20")]
    Tail {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Only records after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many records.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        conn: Connection,
    },
}

pub(crate) async fn run(
    config: &Config,
    command: AuditCommand,
    json: bool,
) -> Result<ExitCode, Failure> {
    match command {
        AuditCommand::Verify {
            tenant,
            offline,
            export,
            public_key,
            public_key_file,
            witness_file,
            allow_uncovered,
            conn,
        } => {
            let witness = witness_file.as_deref().map(read_witness).transpose()?;
            if let Some((dir, location)) = offline.location(config)? {
                let offline = Offline {
                    tenant: tenant.as_deref(),
                    witness: witness.as_deref(),
                    json,
                };
                return verify_offline(&location, &dir, offline).await;
            }
            let key = parse_public_key(&pinned_key(public_key, public_key_file)?)
                .ok_or("the public key is not 64 hex characters")?;
            let checks = ExportChecks {
                allow_uncovered,
                witnessed: witnessed(witness.as_deref().unwrap_or_default(), &key)?,
                tenant: tenant.clone(),
            };
            let text = match export {
                Some(path) => std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
                None => fetch_export(&Client::new(&conn, config)?, tenant.as_deref()).await?,
            };
            match verify_export(&text, &key, &checks) {
                Ok(summary) => {
                    if json {
                        output::json(&serde_json::json!({
                            "verified": true,
                            "records": summary.records,
                            "manifests": summary.manifests,
                            "checkpoints": summary.checkpoints,
                            "uncovered": summary.uncovered,
                        }));
                    } else {
                        say!(
                            "Audit chain verified: {} records, {} signed manifests, {} signed checkpoints{}.",
                            summary.records,
                            summary.manifests,
                            summary.checkpoints,
                            if summary.uncovered > 0 {
                                format!(
                                    "; {} records not covered by a signature",
                                    summary.uncovered
                                )
                            } else {
                                String::new()
                            }
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    if json {
                        output::json(
                            &serde_json::json!({"verified": false, "error": e.to_string()}),
                        );
                    } else {
                        say!("Audit chain BROKEN: {e}");
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCommand::Replay {
            tenant,
            after_seq,
            offline,
            conn,
        } => {
            let at = super::replay::ReplayAt {
                tenant,
                after_seq,
                offline,
                conn,
            };
            super::replay::run(config, at, json).await
        }
        AuditCommand::Export { tenant, out, conn } => {
            let client = Client::new(&conn, config)?;
            let text = fetch_export(&client, tenant.as_deref()).await?;
            match out {
                Some(path) => {
                    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?
                }
                None => output::write(format_args!("{text}")),
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::PublicKey { conn } => {
            let client = Client::new(&conn, config)?;
            let answer = client
                .send(Method::GET, "/v1/audit/public-key", As::Anyone, None)
                .await?;
            if !answer.status.is_success() {
                return Err(answer.failure("public key read"));
            }
            let v = answer.json();
            if json {
                output::json(&v);
            } else {
                say!("{}", v["audit_public_key"].as_str().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Tail {
            tenant,
            after,
            limit,
            conn,
        } => {
            let client = Client::new(&conn, config)?;
            let path = format!("/v1/audit?tenant_id={tenant}&after_seq={after}&limit={limit}");
            let answer = client.send(Method::GET, &path, As::Admin, None).await?;
            if !answer.status.is_success() {
                return Err(answer.failure("audit read"));
            }
            let v = answer.json();
            if json {
                output::json(&v);
                return Ok(ExitCode::SUCCESS);
            }
            let records: Vec<AuditRecord> =
                serde_json::from_value(v["records"].clone()).unwrap_or_default();
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| {
                    vec![
                        r.seq.to_string(),
                        r.operation.map_or("-", |o| o.name()).to_owned(),
                        r.requester_engine_id.clone().unwrap_or_else(|| "-".into()),
                        r.reason_code.name().to_owned(),
                        if r.dry_run {
                            "dry-run".into()
                        } else {
                            String::new()
                        },
                        output::short(&r.digest),
                    ]
                })
                .collect();
            output::table(
                &["seq", "operation", "engine", "reason", "", "digest"],
                &rows,
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The key to verify with: given, or read from a pinned file. Never fetched from the server
/// being verified, which would sign whatever head it holds.
fn pinned_key(hex: Option<String>, file: Option<PathBuf>) -> Result<String, String> {
    match (hex, file) {
        (Some(hex), _) => Ok(hex),
        (None, Some(path)) => {
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
        }
        (None, None) => Err(
            "give the pinned audit key: --public-key HEX or --public-key-file \
             DATA_DIR/audit-public-key (a key the verified server serves proves nothing)"
                .to_owned(),
        ),
    }
}

async fn fetch_export(client: &Client, tenant: Option<&str>) -> Result<String, Failure> {
    let path = match tenant {
        Some(t) => format!("/v1/audit/export?tenant_id={t}"),
        None => "/v1/audit/export".to_owned(),
    };
    let answer = client.send(Method::GET, &path, As::Admin, None).await?;
    if !answer.status.is_success() {
        return Err(answer.failure("export"));
    }
    String::from_utf8(answer.body).map_err(|_| Failure::from("the export is not UTF-8"))
}

/// What an offline verification covers.
struct Offline<'a> {
    tenant: Option<&'a str>,
    witness: Option<&'a [Manifest]>,
    json: bool,
}

async fn verify_offline(
    location: &StoreLocation,
    dir: &std::path::Path,
    what: Offline<'_>,
) -> Result<ExitCode, Failure> {
    let store = open_at(location, dir).await?;
    let tenant = what
        .tenant
        .map(|t| TenantId::chain(t).map_err(|_| "invalid tenant id".to_owned()))
        .transpose()?;
    let key = store.keys().audit_verifying_key();
    let witnessed = witnessed(what.witness.unwrap_or_default(), &key)?;
    let report = verify_store(&*store, tenant.as_ref(), &witnessed, now_ms())
        .await
        .map_err(|e| e.message)?;
    if what.json {
        let list: Vec<_> = report
            .chains
            .iter()
            .map(|r| {
                serde_json::json!({
                    "tenant_id": r.tenant.as_str(),
                    "records": r.records,
                    "checkpoints": r.checkpoints,
                    "manifested_seq": r.manifested,
                    "broken": r.broken.map(|b| b.to_string()),
                    "state_differs": r.differs,
                })
            })
            .collect();
        output::json(&serde_json::json!({
            "verified": report.holds(),
            "manifests": report.manifests,
            "manifests_broken": report.manifests_broken.as_ref().map(ToString::to_string),
            "tenants": list,
        }));
    } else {
        let rows: Vec<Vec<String>> = report
            .chains
            .iter()
            .map(|r| {
                vec![
                    r.tenant.to_string(),
                    r.records.to_string(),
                    r.manifested.to_string(),
                    match (&r.broken, &r.differs) {
                        (Some(b), _) => b.to_string(),
                        (None, Some(d)) => format!("state differs: {d}"),
                        (None, None) => "ok".into(),
                    },
                ]
            })
            .collect();
        output::table(&["tenant", "records", "manifested", "status"], &rows);
        match &report.manifests_broken {
            Some(e) => say!("Manifests BROKEN after {} that hold: {e}", report.manifests),
            None => say!("{} signed manifests hold.", report.manifests),
        }
    }
    Ok(if report.holds() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
