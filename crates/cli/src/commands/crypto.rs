//! `selene-kms crypto`: an executor uses a key through its handle (the executor's token). The
//! key never leaves the server; data is read from a file or stdin, results printed.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use selene_kms_client::Method;
use serde_json::{Value, json};
use zeroize::{Zeroize, Zeroizing};

use super::sink::Sink;
use crate::Connection;
use crate::client::{As, Client};
use crate::config::Config;
use crate::failure::Failure;
use crate::output::{self, say};

#[derive(Subcommand)]
pub(crate) enum CryptoCommand {
    /// HMAC-SHA256 of the data with an hmac-sha256 key: the tag, base64.
    #[command(
        after_help = "Example:\n  selene-kms crypto mac acme \"$HANDLE\" --in ./payload.json"
    )]
    Mac(DataArgs),
    /// An Ed25519 signature of the data with an ed25519 key: the signature, base64.
    #[command(
        after_help = "Example:\n  selene-kms crypto sign acme \"$HANDLE\" --in ./release.tar.gz"
    )]
    Sign(DataArgs),
    /// Check a signature (--signature) or a MAC (--mac) over the data: exit 0 when it holds,
    /// 1 when it does not.
    #[command(
        after_help = "Example:\n  selene-kms crypto verify acme \"$HANDLE\" --in ./release.tar.gz --signature \"$SIG\""
    )]
    Verify {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        tag: TagArgs,
    },
    /// AES-256-GCM encryption of the data with an aes-256-gcm key: the ciphertext
    /// (`skc1:<version>:…`).
    #[command(
        after_help = "Example:\n  selene-kms crypto encrypt acme \"$HANDLE\" --in ./card.json --aad order-17"
    )]
    Encrypt {
        #[command(flatten)]
        data: DataArgs,
        /// Associated data: authenticated, not encrypted; decryption needs the same.
        #[arg(long)]
        aad: Option<String>,
    },
    /// AES-256-GCM decryption of a ciphertext (by the version it names): the raw plaintext on
    /// stdout, or into an owner-only file.
    #[command(
        after_help = "Example:\n  selene-kms crypto decrypt acme \"$HANDLE\" \"$CIPHERTEXT\" --aad order-17 --out ./card.json"
    )]
    Decrypt {
        /// Tenant.
        tenant: String,
        /// A handle to the key (`ksh2_…`), or - to read it from stdin.
        handle: String,
        /// The ciphertext (`skc1:<version>:…`).
        ciphertext: String,
        /// The associated data it was sealed with.
        #[arg(long)]
        aad: Option<String>,
        /// Write the plaintext into this file, created owner-only (it must not exist).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        conn: Connection,
    },
}

#[derive(Args)]
pub(crate) struct DataArgs {
    /// Tenant.
    tenant: String,
    /// A handle to the key (`ksh2_…`), or - to read it from stdin (then the data comes from
    /// --in).
    handle: String,
    /// The data: this file's bytes, or - for stdin (at most 64 KiB).
    #[arg(long = "in", default_value = "-")]
    input: PathBuf,
    #[command(flatten)]
    conn: Connection,
}

/// What a verification checks: exactly one.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub(crate) struct TagArgs {
    /// An Ed25519 signature, base64.
    #[arg(long)]
    signature: Option<String>,
    /// An HMAC-SHA256 tag, base64.
    #[arg(long)]
    mac: Option<String>,
}

pub(crate) async fn run(
    config: &Config,
    command: CryptoCommand,
    json: bool,
) -> Result<ExitCode, Failure> {
    match command {
        CryptoCommand::Mac(data) => use_data(config, "mac", data, json!({}), json).await,
        CryptoCommand::Sign(data) => use_data(config, "sign", data, json!({}), json).await,
        CryptoCommand::Verify { data, tag } => {
            let fields = match (tag.signature, tag.mac) {
                (Some(s), _) => json!({"signature_b64": s}),
                (_, m) => json!({"mac_b64": m}),
            };
            use_data(config, "verify", data, fields, json).await
        }
        CryptoCommand::Encrypt { data, aad } => {
            use_data(config, "encrypt", data, aad_field(aad.as_deref()), json).await
        }
        CryptoCommand::Decrypt {
            tenant,
            handle,
            ciphertext,
            aad,
            out,
            conn,
        } => {
            let client = Client::new(&conn, config)?;
            let handle = super::ref_argument(&handle)?;
            let mut fields = aad_field(aad.as_deref());
            fields["ciphertext"] = Value::from(ciphertext);
            let sink = match &out {
                Some(path) => Sink::file(path)?,
                None => Sink::Stdout,
            };
            decrypt(&client, &tenant, &handle, fields, sink, json).await
        }
    }
}

fn aad_field(aad: Option<&str>) -> Value {
    match aad {
        Some(text) => json!({"aad_b64": STANDARD.encode(text.as_bytes())}),
        None => json!({}),
    }
}

/// Reads the data: a file, or stdin for `-`.
fn read_data(input: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut data = Zeroizing::new(Vec::new());
    if input.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| format!("reading the data from stdin: {e}"))?;
    } else {
        let mut file =
            std::fs::File::open(input).map_err(|e| format!("--in {}: {e}", input.display()))?;
        file.read_to_end(&mut data)
            .map_err(|e| format!("--in {}: {e}", input.display()))?;
    }
    Ok(data)
}

/// The body of a crypto request: tenant, handle, and the operation's fields.
fn body(tenant: &str, handle: &str, fields: Value) -> Value {
    let mut body = json!({"tenant_id": tenant, "secret_handle": handle});
    for (k, v) in fields.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    body
}

/// `mac`, `sign`, `verify` and `encrypt`: the data, then one line of result.
async fn use_data(
    config: &Config,
    op: &str,
    args: DataArgs,
    mut fields: Value,
    json_out: bool,
) -> Result<ExitCode, Failure> {
    if args.handle == "-" && args.input.as_os_str() == "-" {
        return Err(Failure::from(
            "the handle and the data cannot both come from stdin: give the data with --in FILE"
                .to_owned(),
        ));
    }
    let client = Client::new(&args.conn, config)?;
    let handle = super::ref_argument(&args.handle)?;
    let data = read_data(&args.input)?;
    let field = if op == "encrypt" {
        "plaintext_b64"
    } else {
        "data_b64"
    };
    fields[field] = Value::from(STANDARD.encode(&*data));
    let mut request = body(&args.tenant, &handle, fields);
    let sent = client
        .send(
            Method::POST,
            &format!("/v1/crypto/{op}"),
            As::Executor,
            Some(&request),
        )
        .await;
    // The request's copy of the data goes as soon as it is sent.
    if let Some(Value::String(text)) = request.get_mut(field) {
        text.zeroize();
    }
    let answer = sent?;
    if !answer.status.is_success() {
        return Err(answer.failure(op));
    }
    let v = answer.json();
    let held = op != "verify" || v["valid"] == true;
    if json_out {
        output::json(&v);
    } else {
        let shown = match op {
            "mac" => v["mac_b64"].as_str().unwrap_or_default().to_owned(),
            "sign" => v["signature_b64"].as_str().unwrap_or_default().to_owned(),
            "encrypt" => v["ciphertext"].as_str().unwrap_or_default().to_owned(),
            _ if held => format!("valid (key version {})", v["version"]),
            _ => format!("invalid (key version {})", v["version"]),
        };
        say!("{shown}");
    }
    Ok(if held {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `decrypt`: the plaintext into `sink` (or the answer as the server gave it, with `--json`).
async fn decrypt(
    client: &Client,
    tenant: &str,
    handle: &str,
    fields: Value,
    sink: Sink<'_>,
    json: bool,
) -> Result<ExitCode, Failure> {
    let request = body(tenant, handle, fields);
    let sent = client
        .send(
            Method::POST,
            "/v1/crypto/decrypt",
            As::Executor,
            Some(&request),
        )
        .await;
    let mut answer = match sent {
        Ok(answer) if answer.status.is_success() => answer,
        Ok(refused) => {
            sink.discard();
            return Err(refused.failure("decrypt"));
        }
        Err(e) => {
            sink.discard();
            return Err(e);
        }
    };
    let plaintext = {
        let v = answer.json();
        let encoded = Zeroizing::new(v["plaintext_b64"].as_str().map(str::to_owned));
        encoded
            .as_deref()
            .and_then(|t| STANDARD.decode(t).ok())
            .map(Zeroizing::new)
    };
    let outcome = match plaintext {
        None => {
            sink.discard();
            Err(Failure::Unreachable {
                reason_code: None,
                message: "the server's answer carries no plaintext".to_owned(),
            })
        }
        Some(_) if json => sink.write(&answer.body),
        Some(plain) => sink.write(&plain),
    };
    answer.body.zeroize();
    outcome.map(|()| ExitCode::SUCCESS)
}
