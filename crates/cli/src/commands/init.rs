//! `selene-kms init`: a new store with its root key and one token per role.
//!
//! The embedded store lives in the data directory. With `--store postgres://…` the schema, the
//! service secret and the tokens go to the database, and the data directory holds only the root
//! key file, which every node of that database needs a copy of.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use selene_kms_server::provision_tokens;
use std::sync::Arc;

use selene_kms_backends::{StoreLocation, open_store};
use selene_kms_store::{ErrorKind, RootKey, Store};
use zeroize::Zeroizing;

use super::{data_dir, key_path, store_location};
use crate::config::Config;
use crate::output;

#[derive(Args)]
pub(crate) struct InitArgs {
    /// Directory for the database and the root key file (created if missing).
    #[arg(long, env = "SELENE_KMS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `postgres://…` to put the store in PostgreSQL (several nodes); default: the embedded
    /// store in the data directory.
    #[arg(long, env = "SELENE_KMS_STORE", hide_env_values = true)]
    store: Option<String>,
}

/// Tokens as (role, token), in role order.
type Tokens = Vec<(String, Zeroizing<String>)>;

/// Creates `dir`, owner-only.
fn prepare_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// The root key: `$SELENE_KMS_ROOT_KEY` when set, else a new key file in `dir`. Also says
/// whether a file was created (to remove it if initialisation then fails).
fn new_root_key(dir: &Path) -> Result<(RootKey, bool), String> {
    match RootKey::from_env().map_err(|e| e.message)? {
        Some(k) => Ok((k, false)),
        None => RootKey::create_file(&key_path(dir))
            .map(|k| (k, true))
            .map_err(|e| e.message),
    }
}

async fn tokens(store: &dyn Store) -> Result<Tokens, String> {
    Ok(provision_tokens(store)
        .await
        .map_err(|e| e.message)?
        .into_iter()
        .map(|(role, token)| (role.name().to_owned(), token))
        .collect())
}

/// Initialises a store at `location`, with its root key in `dir`, and returns it with the tokens
/// (role, token) in role order. A data directory that already holds a root key, or an embedded
/// database, is refused; so is a database that already holds a store.
pub(crate) async fn init_store(
    dir: &Path,
    location: &StoreLocation,
) -> Result<(Arc<dyn Store>, Tokens), String> {
    prepare_dir(dir)?;
    if key_path(dir).exists() || location.exists() == Some(true) {
        return Err(format!("{} is already initialised", dir.display()));
    }
    let (root, created) = new_root_key(dir)?;
    let store = match open_store(location, root, true).await {
        Ok(store) => store,
        Err(e) => {
            if created {
                let _ = std::fs::remove_file(key_path(dir));
            }
            return Err(match e.kind {
                ErrorKind::AlreadyExists => {
                    format!("{} is already initialised", location.describe())
                }
                _ => e.message,
            });
        }
    };
    let tokens = tokens(&*store).await?;
    Ok((store, tokens))
}

pub(crate) async fn run(config: &Config, args: InitArgs, json: bool) -> Result<ExitCode, String> {
    let dir = data_dir(args.data_dir, config)?;
    let location = store_location(args.store, config, &dir)?;
    let tokens = init_store(&dir, &location).await?.1;
    let store = location.describe();
    if json {
        let map: serde_json::Map<String, serde_json::Value> = tokens
            .iter()
            .map(|(role, t)| (role.clone(), serde_json::Value::from(t.as_str())))
            .collect();
        output::json(&serde_json::json!({ "data_dir": dir, "store": store, "tokens": map }));
    } else {
        println!("Initialised {store}, data directory {}.", dir.display());
        println!("Tokens (shown once, stored only as hashes):");
        let rows: Vec<Vec<String>> = tokens
            .iter()
            .map(|(role, t)| vec![role.clone(), t.to_string()])
            .collect();
        output::table(&["role", "token"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}
