//! `selene-kms redeem`: an executor redeems a handle or an ephemeral credential for its
//! material, the one answer of the KMS that carries a value. The value goes to stdout as its raw
//! bytes (or to an owner-only file with `--out`); with `--json`, the answer as the server gave it.

use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use selene_kms_client::Method;
use serde_json::json;
use zeroize::{Zeroize, Zeroizing};

use super::sink::Sink;
use crate::Connection;
use crate::client::{Answer, As, Client};
use crate::config::Config;
use crate::failure::Failure;

#[derive(Args)]
pub(crate) struct RedeemArgs {
    /// Tenant.
    tenant: String,
    /// The handle (`ksh2_…`) or ephemeral credential (`kse2_…`); `-` reads it from stdin, which
    /// keeps it out of the process list and the shell history.
    reference: String,
    /// Write the material into this file, created owner-only (it must not exist), instead of
    /// stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    conn: Connection,
}

/// The material an answer carries; none when it carries none (a proxy's page, a body cut short).
fn material_of(answer: &Answer) -> Option<Zeroizing<Vec<u8>>> {
    let encoded = Zeroizing::new(answer.json()["material_b64"].as_str()?.to_owned());
    let material = Zeroizing::new(STANDARD.decode(encoded.as_bytes()).ok()?);
    (!material.is_empty()).then_some(material)
}

pub(crate) async fn run(
    config: &Config,
    args: RedeemArgs,
    json: bool,
) -> Result<ExitCode, Failure> {
    let client = Client::new(&args.conn, config)?;
    let given = super::ref_argument(&args.reference)?;
    let sink = match &args.out {
        // Made before the ref is redeemed: a ref is spent only on a file that can be written.
        Some(path) => Sink::file(path)?,
        None => Sink::Stdout,
    };
    let field = match selene_kms_core::RefKind::of(&given) {
        Some(selene_kms_core::RefKind::Credential) => "ephemeral_credential_ref",
        _ => "secret_handle",
    };
    let body = json!({ "tenant_id": args.tenant, field: given.as_str() });
    let sent = client
        .send(
            Method::POST,
            "/v1/material/redeem",
            As::Executor,
            Some(&body),
        )
        .await;
    drop(body);
    let mut answer = match sent {
        Ok(answer) if answer.status.is_success() => answer,
        Ok(refused) => {
            sink.discard();
            return Err(refused.failure("redemption"));
        }
        Err(e) => {
            sink.discard();
            return Err(e);
        }
    };
    let outcome = match material_of(&answer) {
        None => {
            sink.discard();
            Err(Failure::Unreachable {
                reason_code: None,
                message: "the server's answer carries no material".to_owned(),
            })
        }
        Some(_) if json => sink.write(&answer.body),
        Some(material) => sink.write(&material),
    };
    answer.body.zeroize();
    outcome.map(|()| ExitCode::SUCCESS)
}
