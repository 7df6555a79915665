//! `selene-kms policy`: read or replace a tenant's policy document.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;

use crate::client::{As, Client};
use crate::config::Config;
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

pub(crate) async fn run(
    config: &Config,
    command: PolicyCommand,
    json: bool,
) -> Result<ExitCode, String> {
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
                return Err(format!("policy get refused: {}", answer.describe()));
            }
            output::json(&answer.json());
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Set { tenant, file, conn } => {
            let client = Client::new(&conn, config)?;
            let doc: serde_json::Value = serde_json::from_slice(&read_input(&file)?)
                .map_err(|_| "the policy file is not JSON".to_owned())?;
            let answer = client
                .send(
                    Method::PUT,
                    &format!("/v1/admin/tenants/{tenant}/policy"),
                    As::Admin,
                    Some(&doc),
                )
                .await?;
            if !answer.status.is_success() {
                return Err(format!("policy set refused: {}", answer.describe()));
            }
            let v = answer.json();
            if json {
                output::json(&v);
            } else {
                println!(
                    "Policy of {tenant} stored as version {}.",
                    v["policy_version"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
