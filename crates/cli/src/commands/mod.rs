//! One module per command.

pub(crate) mod audit;
pub(crate) mod init;
pub(crate) mod policy;
pub(crate) mod quickstart;
pub(crate) mod request;
pub(crate) mod secret;
pub(crate) mod serve;

use std::path::{Path, PathBuf};

use selene_kms_store::{RootKey, SqliteOptions, SqliteStore};

use crate::config::Config;

/// The database file inside a data directory.
pub(crate) fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kms.db")
}

/// The root key file inside a data directory.
pub(crate) fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("root.key")
}

/// The data directory from the flag, else the config file.
pub(crate) fn data_dir(flag: Option<PathBuf>, config: &Config) -> Result<PathBuf, String> {
    flag.or_else(|| config.server.data_dir.clone())
        .ok_or_else(|| "no data directory: pass --data-dir or set [server].data_dir".to_owned())
}

/// The root key: `$SELENE_KMS_ROOT_KEY` when set, else the data directory's key file.
pub(crate) fn root_key(data_dir: &Path) -> Result<RootKey, String> {
    match RootKey::from_env().map_err(|e| e.message)? {
        Some(k) => Ok(k),
        None => RootKey::load_file(&key_path(data_dir)).map_err(|e| e.message),
    }
}

/// Opens the embedded store of an initialised data directory.
pub(crate) fn open_store(data_dir: &Path) -> Result<SqliteStore, String> {
    let root = root_key(data_dir)?;
    SqliteStore::open(
        &SqliteOptions {
            path: db_path(data_dir),
            create: false,
        },
        root,
    )
    .map_err(|e| e.message)
}

/// A fresh idempotency key for commands that send KMS requests.
pub(crate) fn fresh_key(prefix: &str) -> String {
    let bytes = selene_kms_store::random_key()
        .map(|k| k[..8].to_vec())
        .unwrap_or_default();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{}-{hex}", selene_kms_store::now_ms())
}
