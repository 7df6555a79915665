//! `selene-kms request`: send one KMS request as the `os` caller and print the bundle.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::policy::read_input;
use crate::client::Client;
use crate::config::Config;
use crate::failure::Failure;
use crate::{Connection, output};

#[derive(Args)]
pub(crate) struct RequestArgs {
    /// The request (JSON), or - for stdin.
    file: PathBuf,
    #[command(flatten)]
    conn: Connection,
}

pub(crate) async fn run(
    config: &Config,
    args: RequestArgs,
    _json: bool,
) -> Result<ExitCode, Failure> {
    let client = Client::new(&args.conn, config)?;
    let body: serde_json::Value = serde_json::from_slice(&read_input(&args.file)?)
        .map_err(|_| "the request is not JSON".to_owned())?;
    let answer = client.kms(&body).await?;
    let bundle = answer.json();
    output::json(&bundle);
    // Exit 0 only for an OK bundle: scripts fail closed too. The bundle is the output either
    // way; a failing server (5xx) is told apart from a refusal.
    Ok(if bundle["validation_status"] == "OK" {
        ExitCode::SUCCESS
    } else if answer.status.is_server_error() {
        ExitCode::from(3)
    } else {
        ExitCode::from(1)
    })
}
