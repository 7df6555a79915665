//! SQLite errors normalised to [`ErrorKind`], by result code and never by message text, in
//! the same kinds as PostgreSQL's (see `postgres::error`).

use selene_kms_store::backend::{ErrorKind, StoreError};

/// Maps a SQLite error to a store error without quoting anything but SQLite's own code.
pub(crate) fn db_err(e: rusqlite::Error) -> StoreError {
    let kind = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            ErrorKind::Corrupt
        }
        // Uniqueness only; other constraints (foreign key, not null, check) mean the value
        // does not fit the schema, as on PostgreSQL.
        Some(rusqlite::ErrorCode::ConstraintViolation) => match e {
            rusqlite::Error::SqliteFailure(ref f, _)
                if matches!(
                    f.extended_code,
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                ) =>
            {
                ErrorKind::AlreadyExists
            }
            _ => ErrorKind::Invalid,
        },
        _ => ErrorKind::Unavailable,
    };
    let code = e
        .sqlite_error_code()
        .map_or_else(|| "non-SQLite error".to_owned(), |c| format!("{c:?}"));
    StoreError::new(kind, format!("sqlite: {code}"))
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;

    fn kind_of(sql: &str) -> ErrorKind {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE p (id INTEGER PRIMARY KEY, u TEXT UNIQUE, n TEXT NOT NULL);
             CREATE TABLE c (p INTEGER REFERENCES p (id));
             INSERT INTO p VALUES (1, 'a', 'x');",
        )
        .expect("schema");
        db_err(conn.execute_batch(sql).expect_err("fails")).kind
    }

    /// Regression: every constraint violation was `AlreadyExists` on SQLite, only uniqueness
    /// on PostgreSQL.
    #[test]
    fn only_uniqueness_is_already_exists() {
        assert_eq!(
            kind_of("INSERT INTO p VALUES (1, 'b', 'x')"),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            kind_of("INSERT INTO p VALUES (2, 'a', 'x')"),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            kind_of("INSERT INTO p VALUES (2, 'b', NULL)"),
            ErrorKind::Invalid
        );
        assert_eq!(kind_of("INSERT INTO c VALUES (9)"), ErrorKind::Invalid);
        assert_eq!(kind_of("SELECT * FROM nowhere"), ErrorKind::Unavailable);
    }

    #[test]
    fn messages_name_the_code_not_the_values() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (v TEXT UNIQUE); INSERT INTO t VALUES ('sk_live_x');")
            .expect("schema");
        let err = db_err(
            conn.execute_batch("INSERT INTO t VALUES ('sk_live_x')")
                .expect_err("duplicate"),
        );
        assert!(!err.message.contains("sk_live_x"), "{}", err.message);
    }
}
