//! `selene-kms init`: a new store with its root key and one token per role.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use selene_kms_server::provision_tokens;
use selene_kms_store::{RootKey, SqliteOptions, SqliteStore};

use super::{data_dir, db_path, key_path};
use crate::config::Config;
use crate::output;

#[derive(Args)]
pub(crate) struct InitArgs {
    /// Directory for the database and the root key file (created if missing).
    #[arg(long, env = "SELENE_KMS_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// Creates the store at `dir` and returns the tokens (role, token) in role order.
pub(crate) async fn init_store(
    dir: &std::path::Path,
) -> Result<(SqliteStore, Vec<(String, zeroize::Zeroizing<String>)>), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    if db_path(dir).exists() {
        return Err(format!("{} is already initialised", dir.display()));
    }
    let root = match RootKey::from_env().map_err(|e| e.message)? {
        Some(k) => k,
        None => RootKey::create_file(&key_path(dir)).map_err(|e| e.message)?,
    };
    let store = SqliteStore::open(
        &SqliteOptions {
            path: db_path(dir),
            create: true,
        },
        root,
    )
    .map_err(|e| e.message)?;
    let tokens = provision_tokens(&store)
        .await
        .map_err(|e| e.message)?
        .into_iter()
        .map(|(role, token)| (role.name().to_owned(), token))
        .collect();
    Ok((store, tokens))
}

pub(crate) async fn run(config: &Config, args: InitArgs, json: bool) -> Result<ExitCode, String> {
    let dir = data_dir(args.data_dir, config)?;
    let (_store, tokens) = init_store(&dir).await?;
    if json {
        let map: serde_json::Map<String, serde_json::Value> = tokens
            .iter()
            .map(|(role, t)| (role.clone(), serde_json::Value::from(t.as_str())))
            .collect();
        output::json(&serde_json::json!({ "data_dir": dir, "tokens": map }));
    } else {
        println!("Initialised {}.", dir.display());
        println!("Tokens (shown once, stored only as hashes):");
        let rows: Vec<Vec<String>> = tokens
            .iter()
            .map(|(role, t)| vec![role.clone(), t.to_string()])
            .collect();
        output::table(&["role", "token"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}
