//! `selene-kms root-key rotate`: rewrap every data key and the service secret under a new root
//! key, then replace the key file. Material is not re-encrypted.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use selene_kms_store::{ErrorKind, ROOT_KEY_ENV, RootKey};

use super::{data_dir, key_path, open_at, store_location};
use crate::config::Config;
use crate::failure::Failure;
use crate::output;
use crate::output::say;

#[derive(Args)]
pub(crate) struct RotateArgs {
    /// Data directory holding the root key file (for the embedded store: stop its server first).
    #[arg(long, env = "SELENE_KMS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL store (postgres://…) instead of the embedded one.
    #[arg(long, env = "SELENE_KMS_STORE", hide_env_values = true)]
    store: Option<String>,
}

pub(crate) async fn rotate(
    config: &Config,
    args: RotateArgs,
    json: bool,
) -> Result<ExitCode, Failure> {
    if std::env::var_os(ROOT_KEY_ENV).is_some() {
        return Err(format!(
            "the root key comes from ${ROOT_KEY_ENV}: rotation writes the new key to the data directory's key file, so unset it first"
        ).into());
    }
    let dir = data_dir(args.data_dir, config)?;
    let location = store_location(args.store, config, &dir)?;
    let current = key_path(&dir);
    let staged = dir.join("root.key.new");
    let new_root = RootKey::create_file(&staged).map_err(|e| e.message)?;
    // `Ok(Err(_))`: the rotation itself failed; `Err(_)`: the store did not open.
    let rotated = match open_at(&location, &dir).await {
        Ok(store) => Ok(store.rotate_root_key(new_root).await),
        Err(e) => Err(e),
    };
    let tenants = match rotated {
        Ok(Ok(n)) => n,
        // The commit or its flush failed: the rotation may still be in the log, and then the
        // store opens only with the new key. Keep both.
        Ok(Err(e)) if e.kind == ErrorKind::Unavailable => {
            return Err(format!(
                "root key rotation failed and may or may not have taken effect ({}): both keys are kept. \
                 If the store no longer opens with {}, move {} in its place.",
                e.message,
                current.display(),
                staged.display()
            ).into());
        }
        Ok(Err(e)) => {
            let _ = std::fs::remove_file(&staged);
            return Err(format!("root key not rotated: {}", e.message).into());
        }
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(format!("root key not rotated: {e}").into());
        }
    };
    // The store now only opens with the new key: put it in place atomically.
    std::fs::rename(&staged, &current).map_err(|e| {
        format!(
            "the store was rewrapped but the new key is still at {}: move it to {} ({e})",
            staged.display(),
            current.display()
        )
    })?;
    if json {
        output::json(&serde_json::json!({"rotated": true, "data_keys_rewrapped": tenants}));
    } else {
        say!(
            "Root key rotated: {tenants} tenant data keys and the service secret rewrapped; material untouched."
        );
        if location.is_shared() {
            say!("Copy {} to every node and restart them.", current.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
