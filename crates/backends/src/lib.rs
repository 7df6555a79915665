//! `selene-kms-backends`: every store backend, opened by where the store lives, so that a host
//! (the command line, a test, an embedder) names a location and gets a [`Store`] without
//! matching on backends itself.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use selene_kms_store::{ErrorKind, RootKey, Store, StoreError, StoreResult};
use selene_kms_store_postgres::PostgresStore;
pub use selene_kms_store_postgres::redact;
use selene_kms_store_sqlite::{SqliteOptions, SqliteStore};

/// Where a store lives.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded store: one SQLite database file.
    Embedded(PathBuf),
    /// A PostgreSQL database shared by several nodes, by its connection URL.
    Postgres(String),
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl StoreLocation {
    /// The store a `--store` value names: none is the embedded store at `embedded`, a
    /// `postgres://` or `postgresql://` URL is PostgreSQL, anything else is refused.
    pub fn parse(store: Option<&str>, embedded: PathBuf) -> StoreResult<Self> {
        match store {
            None => Ok(Self::Embedded(embedded)),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres(url.to_owned()))
            }
            Some(_) => Err(StoreError::new(
                ErrorKind::Invalid,
                "--store takes a postgres:// URL (leave it out for the embedded store)",
            )),
        }
    }

    /// How to name it in output and logs: never with a password.
    pub fn describe(&self) -> String {
        match self {
            Self::Embedded(path) => path.display().to_string(),
            Self::Postgres(url) => redact(url),
        }
    }

    /// Whether several nodes may share it (each then needs a copy of a rotated root key).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Whether a store was initialised here, as far as can be told without opening it: the
    /// embedded database file exists (a PostgreSQL database must be asked, so `None`).
    pub fn exists(&self) -> Option<bool> {
        match self {
            Self::Embedded(path) => Some(path.exists()),
            Self::Postgres(_) => None,
        }
    }
}

/// Copies the store at `location` into `out` while it may be serving (see
/// `selene_kms_store_sqlite::backup`); answers the copy's size in bytes. A PostgreSQL store is
/// backed up with PostgreSQL's own tools, which also know its replicas and its log archive.
pub fn backup(location: &StoreLocation, out: &std::path::Path) -> StoreResult<u64> {
    match location {
        StoreLocation::Embedded(path) => selene_kms_store_sqlite::backup(path, out),
        StoreLocation::Postgres(_) => Err(StoreError::new(
            ErrorKind::Invalid,
            "a PostgreSQL store is backed up with PostgreSQL's tools (pg_dump, pg_basebackup); \
             see docs/backup.md",
        )),
    }
}

/// Opens the store at `location` under `root`. With `create` it initialises a new store and
/// refuses a location that already holds one (`AlreadyExists`); without, it opens the store
/// `init` made (`NotFound` if there is none).
///
/// Must be called inside a Tokio runtime: the PostgreSQL store's writer is a task of it.
pub async fn open_store(
    location: &StoreLocation,
    root: RootKey,
    create: bool,
) -> StoreResult<Arc<dyn Store>> {
    Ok(match location {
        StoreLocation::Embedded(path) => Arc::new(SqliteStore::open(
            &SqliteOptions {
                path: path.clone(),
                create,
            },
            root,
        )?),
        StoreLocation::Postgres(url) => Arc::new(PostgresStore::open(url, root, create).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_never_show_a_password() {
        let embedded = PathBuf::from("kms.db");
        assert_eq!(
            StoreLocation::parse(None, embedded.clone()).ok(),
            Some(StoreLocation::Embedded(embedded.clone()))
        );
        let pg = StoreLocation::parse(Some("postgres://kms:s3cret@db/kms"), embedded.clone())
            .expect("a postgres url");
        assert!(!pg.describe().contains("s3cret"), "{}", pg.describe());
        assert!(!format!("{pg:?}").contains("s3cret"));
        assert_eq!(
            StoreLocation::parse(Some("mysql://db"), embedded)
                .map_err(|e| e.kind)
                .err(),
            Some(ErrorKind::Invalid)
        );
    }

    #[tokio::test]
    async fn the_embedded_store_opens_by_location_once_initialised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = StoreLocation::Embedded(dir.path().join("kms.db"));
        let root = || RootKey::from_bytes(&[3; 32]);
        let missing = open_store(&location, root(), false).await.err();
        assert_eq!(missing.map(|e| e.kind), Some(ErrorKind::NotFound));
        let store = open_store(&location, root(), true).await.expect("created");
        assert!(store.ready().await);
        drop(store);
        assert_eq!(location.exists(), Some(true));
        open_store(&location, root(), false).await.expect("reopens");
    }
}
