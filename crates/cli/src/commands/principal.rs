//! `selene-kms principal` and `selene-kms whoami`: who may call, with which tokens.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use selene_kms_client::Method;
use serde_json::{Value, json};

use selene_kms_server::{Engine, now_ms};

use super::{data_dir, open_at, store_location};
use crate::client::{As, Client};
use crate::config::Config;
use crate::failure::Failure;
use crate::output::say;
use crate::{Connection, output};

#[derive(Subcommand)]
pub(crate) enum PrincipalCommand {
    /// Create a principal; its first token is printed once.
    #[command(
        after_help = "Examples:\n  selene-kms principal create ci-deployer --role admin --tenant acme --ttl 30d\n  selene-kms principal create payments-os --role os --tenant acme --tenant globex\n  selene-kms principal create ops --role admin --tenant '*'\n  selene-kms principal create executor-1 --role executor --tenant acme \\\n      --spiffe-id spiffe://example.org/ns/prod/sa/executor"
    )]
    Create {
        /// Its name: `[a-z0-9][a-z0-9._-]{0,63}`, unique among live principals.
        name: String,
        /// `admin`, `os` or `executor`.
        #[arg(long)]
        role: String,
        /// A tenant it may name (repeat for several; `*` for every tenant).
        #[arg(long = "tenant", required = true)]
        tenants: Vec<String>,
        /// Lifetime: a number with ms, s, m, h or d (e.g. 30d); none: until revoked.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
        /// A `spiffe://…` id: client certificates with this URI SAN authenticate as it.
        #[arg(long)]
        spiffe_id: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
    /// List principals and their tokens (never a token itself).
    #[command(after_help = "Example:\n  selene-kms principal list")]
    List {
        #[command(flatten)]
        conn: Connection,
    },
    /// Revoke a principal and every token of it, on every node at once.
    #[command(after_help = "Example:\n  selene-kms principal revoke kp_0123…")]
    Revoke {
        /// The principal's id.
        id: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Issue or revoke a principal's tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Offline, with the root key: create an admin of every tenant when no admin credential is
    /// left; its token is printed once (the embedded store's server must be stopped).
    #[command(
        after_help = "Example:\n  selene-kms principal recover ops-recovery --data-dir ./kms"
    )]
    Recover {
        /// The new admin's name.
        name: String,
        /// Data directory holding the root key (and the embedded store).
        #[arg(long, env = "SELENE_KMS_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// A PostgreSQL store (postgres://…) instead of the embedded one.
        #[arg(long, env = "SELENE_KMS_STORE", hide_env_values = true)]
        store: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Issue another token (printed once); older tokens work until revoked.
    #[command(
        after_help = "Example (rotate a leaked token):\n  selene-kms principal token create kp_0123… --ttl 90d\n  selene-kms principal token revoke kp_0123… kt_4567…"
    )]
    Create {
        /// The principal's id.
        id: String,
        /// Lifetime: a number with ms, s, m, h or d; none: until revoked.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Revoke one token, on every node at once.
    #[command(after_help = "Example:\n  selene-kms principal token revoke kp_0123… kt_4567…")]
    Revoke {
        /// The principal's id.
        id: String,
        /// The token's id.
        token_id: String,
        #[command(flatten)]
        conn: Connection,
    },
}

/// `selene-kms whoami`.
#[derive(Args)]
pub(crate) struct WhoamiArgs {
    /// Whose token to use: `admin` (SELENE_KMS_ADMIN_TOKEN), `os` or `executor`.
    #[arg(long, default_value = "admin")]
    role: String,
    #[command(flatten)]
    conn: Connection,
}

/// A lifetime in ms from `30d`, `12h`, `15m`, `90s` or `500ms`.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("give a unit: ms, s, m, h or d (e.g. 30d)")?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| "not a number".to_owned())?;
    let scale: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err("the unit is ms, s, m, h or d".to_owned()),
    };
    number
        .checked_mul(scale)
        .filter(|ms| *ms > 0)
        .ok_or_else(|| "out of range".to_owned())
}

/// Sends one admin request; a refusal becomes the command's error.
async fn admin(
    conn: &Connection,
    config: &Config,
    method: Method,
    path: &str,
    body: Option<&Value>,
    what: &str,
) -> Result<Value, Failure> {
    let answer = Client::new(conn, config)?
        .send(method, path, As::Admin, body)
        .await?;
    if answer.status.is_success() {
        Ok(answer.json())
    } else {
        Err(answer.failure(what))
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub(crate) async fn run(
    config: &Config,
    command: PrincipalCommand,
    json_out: bool,
) -> Result<ExitCode, Failure> {
    let (v, say) = match command {
        PrincipalCommand::Create {
            name,
            role,
            tenants,
            ttl,
            spiffe_id,
            conn,
        } => {
            let body = json!({"name": name, "role": role, "tenants": tenants,
                              "ttl_ms": ttl, "spiffe_id": spiffe_id});
            let v = admin(
                &conn,
                config,
                Method::POST,
                "/v1/admin/principals",
                Some(&body),
                "principal create",
            )
            .await?;
            let say = format!(
                "Principal {} ({}) created, role {}, tenants {}.\nToken {} (shown once): {}",
                text(&v["name"]),
                text(&v["principal_id"]),
                text(&v["role"]),
                text(&v["tenants"]),
                text(&v["token_id"]),
                text(&v["token"]),
            );
            (v, say)
        }
        PrincipalCommand::List { conn } => {
            let v = admin(
                &conn,
                config,
                Method::GET,
                "/v1/admin/principals",
                None,
                "principal list",
            )
            .await?;
            if !json_out {
                let rows: Vec<Vec<String>> = v["principals"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let tokens = p["tokens"]
                            .as_array()
                            .map_or(0, |t| t.iter().filter(|t| t["revoked"] == false).count());
                        vec![
                            text(&p["principal_id"]),
                            text(&p["name"]),
                            text(&p["role"]),
                            text(&p["tenants"]),
                            text(&p["revoked"]),
                            tokens.to_string(),
                            text(&p["spiffe_id"]),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "principal_id",
                        "name",
                        "role",
                        "tenants",
                        "revoked",
                        "live_tokens",
                        "spiffe_id",
                    ],
                    &rows,
                );
                return Ok(ExitCode::SUCCESS);
            }
            (v, String::new())
        }
        PrincipalCommand::Revoke { id, conn } => {
            let path = format!("/v1/admin/principals/{id}");
            let v = admin(
                &conn,
                config,
                Method::DELETE,
                &path,
                None,
                "principal revoke",
            )
            .await?;
            (v, format!("Principal {id} and every token of it revoked."))
        }
        PrincipalCommand::Token(TokenCommand::Create { id, ttl, conn }) => {
            let path = format!("/v1/admin/principals/{id}/tokens");
            let body = json!({"ttl_ms": ttl});
            let v = admin(
                &conn,
                config,
                Method::POST,
                &path,
                Some(&body),
                "token create",
            )
            .await?;
            let say = format!(
                "Token {} of {id} (shown once): {}",
                text(&v["token_id"]),
                text(&v["token"])
            );
            (v, say)
        }
        PrincipalCommand::Recover {
            name,
            data_dir: dir,
            store,
        } => {
            let dir = data_dir(dir, config)?;
            let location = store_location(store, config, &dir)?;
            let opened = open_at(&location, &dir).await?;
            let created = Engine::new(opened)
                .recover_admin(&name, now_ms())
                .await
                .map_err(|e| format!("principal recover refused: {e}"))?;
            let v = serde_json::to_value(&created).map_err(|e| e.to_string())?;
            let say = format!(
                "Admin {} ({}) created for every tenant.\nToken {} (shown once): {}",
                text(&v["name"]),
                text(&v["principal_id"]),
                text(&v["token_id"]),
                text(&v["token"]),
            );
            (v, say)
        }
        PrincipalCommand::Token(TokenCommand::Revoke { id, token_id, conn }) => {
            let path = format!("/v1/admin/principals/{id}/tokens/{token_id}");
            let v = admin(&conn, config, Method::DELETE, &path, None, "token revoke").await?;
            (v, format!("Token {token_id} of {id} revoked."))
        }
    };
    if json_out {
        output::json(&v);
    } else {
        say!("{say}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `selene-kms whoami`: the principal a role's token authenticates as.
pub(crate) async fn whoami(
    config: &Config,
    args: WhoamiArgs,
    json_out: bool,
) -> Result<ExitCode, Failure> {
    let who = match args.role.as_str() {
        "admin" => As::Admin,
        "os" => As::Os,
        "executor" => As::Executor,
        _ => return Err("--role is admin, os or executor".to_owned().into()),
    };
    let answer = Client::new(&args.conn, config)?
        .send(Method::GET, "/v1/auth/whoami", who, None)
        .await?;
    if !answer.status.is_success() {
        return Err(answer.failure("whoami"));
    }
    let v = answer.json();
    if json_out {
        output::json(&v);
    } else {
        say!(
            "{} ({}), role {}, tenants {}, expires {}",
            text(&v["name"]),
            text(&v["principal_id"]),
            text(&v["role"]),
            text(&v["tenants"]),
            text(&v["expires_at_ms"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_take_a_unit() {
        assert_eq!(parse_ttl("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_ttl("12h"), Ok(12 * 3_600_000));
        assert_eq!(parse_ttl("15m"), Ok(15 * 60_000));
        assert_eq!(parse_ttl("90s"), Ok(90_000));
        assert_eq!(parse_ttl("500ms"), Ok(500));
        for bad in ["30", "d", "0s", "3w", "-1d", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
