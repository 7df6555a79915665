//! `selene-kms policy`: read or replace a tenant's policy document.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use selene_kms_client::Method;
use selene_kms_core::replay::PolicyImpact;

use crate::client::{As, Client};
use crate::config::Config;
use crate::failure::Failure;
use crate::output::say;
use crate::{Connection, output};

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Print a tenant's policy document.
    #[command(after_help = "Example:\n  selene-kms policy get acme")]
    Get {
        /// Tenant.
        tenant: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Replace a tenant's policy with a JSON document (a file, or - for stdin).
    #[command(
        after_help = "Example policy (deny by default):\n  {\"rules\": [{\"secret_names\": [\"payments/*\"], \"engines\": [\"PH1.CONNECTOR\"],\n              \"operations\": [\"GET_HANDLE\", \"ISSUE_EPHEMERAL\"]}],\n   \"admins\": [\"u-admin\"], \"require_admin_for_rotation\": true, \"enabled\": true}\n\n  selene-kms policy set acme policy.json"
    )]
    Set {
        /// Tenant.
        tenant: String,
        /// Policy document.
        file: PathBuf,
        /// Apply nothing: print the document's impact on every recorded request instead.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show a candidate policy's impact before applying it: every recorded request (after
    /// --after-seq) re-evaluated under it, with the ones whose access changes. Applies nothing.
    #[command(after_help = "Example:\n  selene-kms policy simulate acme candidate.json")]
    Simulate {
        /// Tenant.
        tenant: String,
        /// Candidate policy document (a file, or - for stdin).
        file: PathBuf,
        /// Only the requests recorded after this record.
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        #[command(flatten)]
        conn: Connection,
    },
}

pub(crate) fn read_input(path: &std::path::Path) -> Result<Vec<u8>, String> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .map_err(|e| format!("stdin: {e}"))?;
        Ok(buf)
    } else {
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn read_document(file: &std::path::Path) -> Result<serde_json::Value, String> {
    serde_json::from_slice(&read_input(file)?).map_err(|_| "the policy file is not JSON".to_owned())
}

/// Prints a candidate's impact on the requests recorded after `after_seq`; applies nothing.
async fn simulate(
    config: &Config,
    conn: &Connection,
    tenant: &str,
    file: &std::path::Path,
    after_seq: u64,
    json: bool,
) -> Result<ExitCode, Failure> {
    let client = Client::new(conn, config)?;
    let body = serde_json::json!({"policy": read_document(file)?, "after_seq": after_seq});
    let answer = client
        .send(
            Method::POST,
            &format!("/v1/admin/tenants/{tenant}/policy/simulate"),
            As::Admin,
            Some(&body),
        )
        .await?;
    if !answer.status.is_success() {
        return Err(answer.failure("policy simulation"));
    }
    let impact = answer.json();
    if json {
        output::json(&impact);
        return Ok(ExitCode::SUCCESS);
    }
    let impact: PolicyImpact = serde_json::from_value(impact)
        .map_err(|_| "the server's policy impact does not parse".to_owned())?;
    say!(
        "Under the candidate, of {} recorded requests of {tenant}: {} allowed would be denied, {} denied would be allowed. Nothing was applied.",
        impact.evaluated,
        impact.allow_to_deny,
        impact.deny_to_allow
    );
    if impact.not_evaluated > 0 {
        say!(
            "{} recorded requests could not be evaluated (their inputs are missing or do not open).",
            impact.not_evaluated
        );
    }
    if let Some(broken) = &impact.broken {
        say!("The chain does not hold: {broken}; nothing from there on was evaluated.");
    }
    let rows: Vec<Vec<String>> = impact
        .changes
        .iter()
        .map(|c| {
            vec![
                c.seq.to_string(),
                c.operation.name().to_owned(),
                c.secret_name.clone(),
                c.requester_engine_id.clone(),
                c.requester_user_id.clone().unwrap_or_else(|| "-".into()),
                format!("{:?} -> {:?}", c.was, c.now).to_uppercase(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        output::table(
            &["seq", "operation", "secret", "engine", "user", "access"],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run(
    config: &Config,
    command: PolicyCommand,
    json: bool,
) -> Result<ExitCode, Failure> {
    match command {
        PolicyCommand::Get { tenant, conn } => {
            let client = Client::new(&conn, config)?;
            let answer = client
                .send(
                    Method::GET,
                    &format!("/v1/admin/tenants/{tenant}/policy"),
                    As::Admin,
                    None,
                )
                .await?;
            if !answer.status.is_success() {
                return Err(answer.failure("policy get"));
            }
            output::json(&answer.json());
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Simulate {
            tenant,
            file,
            after_seq,
            conn,
        } => simulate(config, &conn, &tenant, &file, after_seq, json).await,
        PolicyCommand::Set {
            tenant,
            file,
            dry_run: true,
            conn,
        } => simulate(config, &conn, &tenant, &file, 0, json).await,
        PolicyCommand::Set {
            tenant, file, conn, ..
        } => {
            let client = Client::new(&conn, config)?;
            let doc = read_document(&file)?;
            let answer = client
                .send(
                    Method::PUT,
                    &format!("/v1/admin/tenants/{tenant}/policy"),
                    As::Admin,
                    Some(&doc),
                )
                .await?;
            if !answer.status.is_success() {
                return Err(answer.failure("policy set"));
            }
            let v = answer.json();
            if json {
                output::json(&v);
            } else {
                say!(
                    "Policy of {tenant} stored as version {}.",
                    v["policy_version"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
