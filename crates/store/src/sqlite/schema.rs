//! SQLite schema and its migrations, applied in order inside one transaction each and recorded
//! in `schema_migrations`.

use rusqlite::Connection;

use crate::error::{ErrorKind, StoreError, StoreResult};

/// Migrations, in order; index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[r"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE tenants (
    tenant_id      TEXT PRIMARY KEY,
    wrapped_dek    BLOB,
    policy_json    TEXT,
    policy_version INTEGER NOT NULL DEFAULT 0,
    audit_seq      INTEGER NOT NULL DEFAULT 0,
    audit_head     TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE secrets (
    tenant_id      TEXT NOT NULL,
    secret_name    TEXT NOT NULL,
    secret_ref     TEXT NOT NULL,
    kind           TEXT NOT NULL,
    state_version  INTEGER NOT NULL,
    ttl_min_ms     INTEGER NOT NULL,
    ttl_max_ms     INTEGER NOT NULL,
    ttl_default_ms INTEGER NOT NULL,
    handle_ttl_ms  INTEGER NOT NULL,
    staged         BLOB,
    created_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, secret_name)
) WITHOUT ROWID;

CREATE TABLE versions (
    tenant_id     TEXT NOT NULL,
    secret_name   TEXT NOT NULL,
    version       INTEGER NOT NULL,
    state         TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    sealed        BLOB NOT NULL,
    PRIMARY KEY (tenant_id, secret_name, version)
) WITHOUT ROWID;

CREATE TABLE revoked_refs (
    tenant_id     TEXT NOT NULL,
    ref_id        TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, ref_id)
) WITHOUT ROWID;

CREATE TABLE idempotency (
    tenant_id     TEXT NOT NULL,
    caller        TEXT NOT NULL,
    key           TEXT NOT NULL,
    fingerprint   BLOB NOT NULL,
    bundle        BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, caller, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_created ON idempotency (created_at_ms);

CREATE TABLE audit (
    tenant_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    record    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
) WITHOUT ROWID;

CREATE TABLE checkpoints (
    tenant_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    checkpoint TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
) WITHOUT ROWID;

CREATE TABLE tokens (
    token_hash    BLOB PRIMARY KEY,
    role          TEXT NOT NULL,
    label         TEXT NOT NULL
) WITHOUT ROWID;
"];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`]; refuses a database from a newer build.
pub(crate) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let unavailable = |_| StoreError::new(ErrorKind::Unavailable, "schema migration failed");
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at_ms INTEGER NOT NULL
        )",
    )
    .map_err(unavailable)?;
    let current: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(unavailable)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::new(
            ErrorKind::Invalid,
            format!(
                "the database has schema version {current}, newer than this build ({SCHEMA_VERSION})"
            ),
        ));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction().map_err(unavailable)?;
        tx.execute_batch(sql).map_err(unavailable)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?1, ?2)",
            (index as i64 + 1, crate::clock::now_ms() as i64),
        )
        .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
    }
    Ok(())
}
