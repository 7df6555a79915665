//! `selene-kms redeem`: an executor redeems a handle or an ephemeral credential for its
//! material, the one answer of the KMS that carries a value. The value goes to stdout as its raw
//! bytes (or to an owner-only file with `--out`); with `--json`, the answer as the server gave it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use reqwest::Method;
use serde_json::json;
use zeroize::{Zeroize, Zeroizing};

use crate::client::{As, Client};
use crate::config::Config;
use crate::failure::Failure;
use crate::{Connection, output};

#[derive(Args)]
pub(crate) struct RedeemArgs {
    /// Tenant.
    tenant: String,
    /// The handle (`ksh_…`) or ephemeral credential (`kec_…`); `-` reads it from stdin, which
    /// keeps it out of the process list and the shell history.
    reference: String,
    /// Write the material into this file, created owner-only (it must not exist), instead of
    /// stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    conn: Connection,
}

/// The ref named on the command line, or read from stdin.
fn reference(given: &str) -> Result<Zeroizing<String>, Failure> {
    if given != "-" {
        return Ok(Zeroizing::new(given.to_owned()));
    }
    let mut text = Zeroizing::new(String::new());
    std::io::stdin()
        .read_line(&mut text)
        .map_err(|e| format!("reading the ref from stdin: {e}"))?;
    Ok(Zeroizing::new(text.trim().to_owned()))
}

/// Writes `material` into a new owner-only file.
fn write_owner_only(path: &Path, material: &[u8]) -> Result<(), Failure> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(material))
        .map_err(|e| Failure::from(format!("{}: {e}", path.display())))
}

pub(crate) async fn run(
    config: &Config,
    args: RedeemArgs,
    json: bool,
) -> Result<ExitCode, Failure> {
    let client = Client::new(&args.conn, config)?;
    let given = reference(&args.reference)?;
    let field = if given.starts_with("kec_") {
        "ephemeral_credential_ref"
    } else {
        "secret_handle"
    };
    let body = json!({ "tenant_id": args.tenant, field: given.as_str() });
    let mut answer = client
        .send(
            Method::POST,
            "/v1/material/redeem",
            As::Executor,
            Some(&body),
        )
        .await?;
    drop(body);
    if !answer.status.is_success() {
        return Err(answer.failure("redemption"));
    }
    if json {
        output::write(format_args!("{}\n", String::from_utf8_lossy(&answer.body)));
        answer.body.zeroize();
        return Ok(ExitCode::SUCCESS);
    }
    let encoded = Zeroizing::new(
        answer.json()["material_b64"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    answer.body.zeroize();
    let material = Zeroizing::new(
        STANDARD
            .decode(encoded.as_bytes())
            .map_err(|_| Failure::from("the answer's material is not base64"))?,
    );
    match &args.out {
        Some(path) => write_owner_only(path, &material)?,
        None => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&material).and_then(|()| out.flush());
        }
    }
    Ok(ExitCode::SUCCESS)
}
