//! Online backup: a consistent copy of the store's database while it may be serving.
//!
//! `VACUUM INTO` reads the database in one read transaction (WAL mode lets it run beside the
//! writer, which it never blocks) and writes what that snapshot holds into a new file, compacted.
//! The copy holds what the store holds: sealed material, wrapped data keys, MACed principals and
//! the audit chains, all under the root key, which is not in it.

use std::path::Path;

use selene_kms_store::backend::{ErrorKind, StoreError, StoreResult};

use crate::{db_err, open_connection};

/// Copies the store at `db` into `out`, a file this creates owner-only and that must not exist;
/// answers the copy's size in bytes. A failed copy leaves no file behind.
pub fn backup(db: &Path, out: &Path) -> StoreResult<u64> {
    if !db.exists() {
        return Err(StoreError::new(
            ErrorKind::NotFound,
            "no store here: run `selene-kms init` first",
        ));
    }
    // Absolute, so that SQLite reads it as a file name and never as a `file:` URI naming
    // another file than the one created here.
    let out = &std::path::absolute(out)
        .map_err(|_| StoreError::new(ErrorKind::Invalid, "the backup path is not usable"))?;
    let target = out
        .to_str()
        .ok_or_else(|| StoreError::new(ErrorKind::Invalid, "the backup path is not valid UTF-8"))?;
    create_owner_only(out)?;
    let copied = open_connection(db, true)
        .and_then(|conn| conn.execute("VACUUM INTO ?1", [target]).map_err(db_err));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    std::fs::metadata(out)
        .map(|m| m.len())
        .map_err(|_| StoreError::new(ErrorKind::Unavailable, "the backup file is gone"))
}

/// Creates `path` empty and readable by its owner only, so that the copy is never readable by
/// others, not even while it is written (`VACUUM INTO` writes into an empty file).
fn create_owner_only(path: &Path) -> StoreResult<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map(drop).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "the backup file already exists"
        } else {
            "cannot create the backup file"
        };
        StoreError::new(ErrorKind::Unavailable, why)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_never_overwrites_a_file() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("kms.db");
        rusqlite::Connection::open(&db)
            .and_then(|c| c.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v);"))
            .expect("db");
        let out = dir.path().join("copy.db");
        std::fs::write(&out, b"keep me").expect("file");
        let refused = backup(&db, &out).map_err(|e| e.message);
        assert_eq!(refused, Err("the backup file already exists".into()));
        assert_eq!(std::fs::read(&out).expect("kept"), b"keep me");
    }

    #[test]
    fn a_backup_is_a_database_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("kms.db");
        rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.execute_batch(
                    "PRAGMA journal_mode = WAL; CREATE TABLE t (v); INSERT INTO t VALUES (41), (1);",
                )
            })
            .expect("db");
        let out = dir.path().join("copy.db");
        assert!(backup(&db, &out).expect("copied") > 0);
        let sum: i64 = rusqlite::Connection::open(&out)
            .and_then(|c| c.query_row("SELECT SUM(v) FROM t", [], |r| r.get(0)))
            .expect("copy");
        assert_eq!(sum, 42);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let missing = backup(&dir.path().join("none.db"), &dir.path().join("x.db"));
        assert_eq!(missing.map_err(|e| e.kind), Err(ErrorKind::NotFound));
    }
}
