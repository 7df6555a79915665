//! One module per command.

pub(crate) mod audit;
pub(crate) mod backup;
pub(crate) mod crypto;
pub(crate) mod init;
pub(crate) mod policy;
pub(crate) mod principal;
pub(crate) mod quickstart;
pub(crate) mod redeem;
pub(crate) mod replay;
pub(crate) mod request;
pub(crate) mod root_key;
pub(crate) mod secret;
pub(crate) mod serve;
pub(crate) mod sink;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use selene_kms_backends::{StoreLocation, open_store};
use selene_kms_store::{RootKey, Store};

use crate::config::Config;

/// Where a server's state lives: `--store` / `$SELENE_KMS_STORE`, else `[server].store`, else
/// the embedded store in the data directory. A value that is not a PostgreSQL URL is refused
/// without being echoed (it may hold a password).
pub(crate) fn store_location(
    flag: Option<String>,
    config: &Config,
    data_dir: &Path,
) -> Result<StoreLocation, String> {
    let value = flag.or_else(|| config.server.store.as_ref().map(|s| s.0.clone()));
    StoreLocation::parse(value.as_deref(), db_path(data_dir)).map_err(|e| e.message)
}

/// A store read directly rather than through a server (`audit verify`, `audit replay`).
#[derive(clap::Args)]
pub(crate) struct OfflineStore {
    /// Read a store directly rather than through a server: the embedded store must be
    /// stopped; with --store, the data directory only supplies the root key.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// With --data-dir: a PostgreSQL store (postgres://…) instead of the embedded one.
    #[arg(
        long,
        env = "SELENE_KMS_STORE",
        hide_env_values = true,
        requires = "data_dir"
    )]
    pub(crate) store: Option<String>,
}

impl OfflineStore {
    /// The data directory and where its store lives, when the store is read offline.
    pub(crate) fn location(
        self,
        config: &Config,
    ) -> Result<Option<(PathBuf, StoreLocation)>, String> {
        let Some(dir) = self.data_dir else {
            return Ok(None);
        };
        let location = store_location(self.store, config, &dir)?;
        Ok(Some((dir, location)))
    }
}

/// Opens the initialised store at `location`, with the root key of `data_dir`.
pub(crate) async fn open_at(
    location: &StoreLocation,
    data_dir: &Path,
) -> Result<Arc<dyn Store>, String> {
    open_store(location, root_key(data_dir)?, false)
        .await
        .map_err(|e| e.message)
}

/// The database file inside a data directory.
pub(crate) fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kms.db")
}

/// The root key file inside a data directory.
pub(crate) fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("root.key")
}

/// A file whose presence says that this data directory has held its store with record MACs: a
/// store it then finds with records that lack one had them stripped, and `init` seals nothing.
/// It lives beside the root key, out of reach of whoever can only write the database.
fn record_macs_mark(data_dir: &Path) -> PathBuf {
    data_dir.join("records-carry-macs")
}

/// Marks the data directory (see [`record_macs_mark`]).
pub(crate) fn mark_record_macs(data_dir: &Path) -> Result<(), String> {
    let mark = record_macs_mark(data_dir);
    std::fs::write(
        &mark,
        "the store of this data directory writes audit records with MACs\n",
    )
    .map_err(|e| format!("cannot write {}: {e}", mark.display()))
}

/// Whether the data directory is marked (see [`record_macs_mark`]); a directory that cannot
/// be read counts as marked.
pub(crate) fn record_macs_marked(data_dir: &Path) -> bool {
    record_macs_mark(data_dir).try_exists().unwrap_or(true)
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
        None if !key_path(data_dir).exists() => Err(format!(
            "{} is not initialised (it has no root.key): run `selene-kms init --data-dir {}` \
             first, or set {} to the store's root key",
            data_dir.display(),
            data_dir.display(),
            selene_kms_store::ROOT_KEY_ENV
        )),
        None => RootKey::load_file(&key_path(data_dir)).map_err(|e| e.message),
    }
}

/// A ref named on the command line, or `-` to read it from stdin (which keeps it out of the
/// process list and the shell history).
pub(crate) fn ref_argument(given: &str) -> Result<zeroize::Zeroizing<String>, String> {
    if given != "-" {
        return Ok(zeroize::Zeroizing::new(given.to_owned()));
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_line(&mut text)
        .map_err(|e| format!("reading the ref from stdin: {e}"))?;
    Ok(zeroize::Zeroizing::new(text.trim().to_owned()))
}

/// A new file, readable by its owner only from its creation; refused if the name is taken
/// (a symlink included), so nothing is ever written over.
pub(crate) fn create_owner_only(path: &Path) -> Result<std::fs::File, String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreUrl;

    const URL: &str = "postgres://kms:s3cret@db/kms";

    fn config_with(store: Option<&str>) -> Config {
        let mut config = Config::default();
        config.server.store = store.map(|s| StoreUrl(s.to_owned()));
        config
    }

    #[test]
    fn the_store_comes_from_the_flag_then_the_config_else_is_embedded() {
        let dir = Path::new("/d");
        let none = config_with(None);
        assert_eq!(
            store_location(None, &none, dir),
            Ok(StoreLocation::Embedded(db_path(dir)))
        );
        let configured = config_with(Some(URL));
        assert_eq!(
            store_location(None, &configured, dir),
            Ok(StoreLocation::Postgres(URL.to_owned()))
        );
        let flag = "postgresql://other/kms".to_owned();
        assert_eq!(
            store_location(Some(flag.clone()), &configured, dir),
            Ok(StoreLocation::Postgres(flag))
        );
    }

    #[test]
    fn store_urls_are_never_shown_with_their_password() {
        let refused = store_location(
            Some("mysql://u:s3cret@h".into()),
            &Config::default(),
            Path::new("/d"),
        );
        assert!(refused.is_err_and(|e| !e.contains("s3cret")));
        let described = StoreLocation::Postgres(URL.into()).describe();
        assert_eq!(described, "postgres://kms:***@db/kms");
        let debug = format!("{:?}", config_with(Some(URL)));
        assert!(debug.contains("postgres://kms:***@db/kms"), "{debug}");
        assert!(!debug.contains("s3cret"));
    }
}
