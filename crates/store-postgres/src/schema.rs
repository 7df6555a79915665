//! PostgreSQL schema and its migrations, recorded in `schema_migrations`.
//!
//! Several nodes may start at once against one database, so migration runs in one transaction
//! under a transaction-scoped advisory lock: the first node migrates, the others wait and then
//! find nothing left to do. DDL is transactional in PostgreSQL, so a failed migration leaves the
//! schema as it was. Text keys use the `C` collation: byte order, as the embedded store sorts,
//! and the order in which the writer takes tenant row locks.

use deadpool_postgres::Client;
use selene_kms_store::backend::{ErrorKind, StoreError, StoreResult};

use crate::error::pg;

/// Advisory lock key that serialises migrations ("selene-k" in ASCII).
const MIGRATION_LOCK: i64 = 0x7365_6c65_6e65_2d6b;

/// Migrations, in order; index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE tenants (
    tenant_id      TEXT COLLATE "C" PRIMARY KEY,
    wrapped_dek    BYTEA,
    policy_json    TEXT,
    policy_version BIGINT NOT NULL DEFAULT 0,
    audit_seq      BIGINT NOT NULL DEFAULT 0,
    audit_head     TEXT NOT NULL
);

CREATE TABLE secrets (
    tenant_id      TEXT COLLATE "C" NOT NULL,
    secret_name    TEXT COLLATE "C" NOT NULL,
    secret_ref     TEXT NOT NULL,
    kind           TEXT NOT NULL,
    state_version  BIGINT NOT NULL,
    ttl_min_ms     BIGINT NOT NULL,
    ttl_max_ms     BIGINT NOT NULL,
    ttl_default_ms BIGINT NOT NULL,
    handle_ttl_ms  BIGINT NOT NULL,
    staged         BYTEA,
    created_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, secret_name)
);

CREATE TABLE versions (
    tenant_id     TEXT COLLATE "C" NOT NULL,
    secret_name   TEXT COLLATE "C" NOT NULL,
    version       BIGINT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('ACTIVE', 'REVOKED')),
    created_at_ms BIGINT NOT NULL,
    sealed        BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, secret_name, version)
);
-- Snapshots read the revoked versions only: one index probe, however many versions there are.
CREATE INDEX versions_revoked ON versions (tenant_id, secret_name, version)
    WHERE state = 'REVOKED';

CREATE TABLE revoked_refs (
    tenant_id     TEXT COLLATE "C" NOT NULL,
    ref_id        TEXT COLLATE "C" NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, ref_id)
);
CREATE INDEX revoked_refs_expiry ON revoked_refs (expires_at_ms);

CREATE TABLE idempotency (
    tenant_id     TEXT COLLATE "C" NOT NULL,
    caller        TEXT COLLATE "C" NOT NULL,
    key           TEXT COLLATE "C" NOT NULL,
    fingerprint   BYTEA NOT NULL,
    bundle        BYTEA NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, caller, key)
);
CREATE INDEX idempotency_created ON idempotency (created_at_ms);

CREATE TABLE audit (
    tenant_id TEXT COLLATE "C" NOT NULL,
    seq       BIGINT NOT NULL,
    record    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

CREATE TABLE checkpoints (
    tenant_id  TEXT COLLATE "C" NOT NULL,
    seq        BIGINT NOT NULL,
    checkpoint TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

CREATE TABLE tokens (
    token_hash BYTEA PRIMARY KEY,
    role       TEXT NOT NULL,
    label      TEXT NOT NULL
);
"#,
    // Stored answers are sealed under the tenant's data key from now on. Answers stored in
    // clear (they can hold redeemable refs) are dropped rather than kept readable: a retry of a
    // request made before the upgrade is then decided anew (a mutation's plan is stale by then).
    "DELETE FROM idempotency;",
    // Callers are principals with tokens of their own. The legacy `tokens` table is dropped, not
    // converted: its verifiers were unkeyed SHA-256 hashes, so a row anyone could write would
    // authenticate. Re-running `init` on a store without principals creates the bootstrap ones.
    // Names and SPIFFE ids are unique among unrevoked principals: the plan checks it (under the
    // system chain's row lock), the indexes are the backstop. The authentication epoch, one row,
    // advances with every revocation, in the revoking transaction.
    r#"
DROP TABLE tokens;

CREATE TABLE principals (
    principal_id  TEXT COLLATE "C" PRIMARY KEY,
    name          TEXT COLLATE "C" NOT NULL,
    role          TEXT NOT NULL,
    tenants       TEXT NOT NULL,
    spiffe_id     TEXT COLLATE "C",
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    revoked_at_ms BIGINT,
    -- What the row says, MACed under a key derived from the root key (see stored_principals).
    mac           BYTEA NOT NULL
);
CREATE UNIQUE INDEX principals_live_name ON principals (name) WHERE revoked_at_ms IS NULL;
CREATE UNIQUE INDEX principals_live_spiffe ON principals (spiffe_id) WHERE revoked_at_ms IS NULL;

CREATE TABLE principal_tokens (
    token_id      TEXT COLLATE "C" PRIMARY KEY,
    principal_id  TEXT COLLATE "C" NOT NULL REFERENCES principals (principal_id),
    verifier      BYTEA NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    revoked_at_ms BIGINT,
    mac           BYTEA NOT NULL
);
CREATE INDEX principal_tokens_principal ON principal_tokens (principal_id);

CREATE TABLE auth_epoch (
    id    INTEGER PRIMARY KEY CHECK (id = 0),
    epoch BIGINT NOT NULL
);
INSERT INTO auth_epoch (id, epoch) VALUES (0, 0);
"#,
    // Signed manifests of every chain's head, chained to one another (see the store's
    // `manifest` module); verifiers start from the latest full one.
    r#"
CREATE TABLE manifests (
    seq      BIGINT PRIMARY KEY,
    is_full  BOOLEAN NOT NULL,
    manifest TEXT NOT NULL
);
CREATE INDEX manifests_full ON manifests (seq) WHERE is_full;

-- The MAC of each chain head (see the store's `chain::head_mac`): a node chains after, and
-- signs manifests over, only heads the KMS wrote.
ALTER TABLE tenants ADD COLUMN audit_head_mac BYTEA;
"#,
    // What each decision was made from, sealed under the tenant's data key, beside its record
    // (see the core's `replay` module), in a table of its own so that audit rows stay compact.
    r#"
CREATE TABLE decision_inputs (
    tenant_id TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    sealed    BYTEA NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
"#,
    // Keys: a secret's purpose (every earlier secret is a credential) and the oldest version a
    // key decrypts.
    r#"
ALTER TABLE secrets ADD COLUMN purpose TEXT NOT NULL DEFAULT 'credential';
ALTER TABLE secrets ADD COLUMN min_decryption_version BIGINT NOT NULL DEFAULT 1;
"#,
    // A secret's MAC over its tenant, name and purpose (see the store's
    // `StoredSecret::purpose_mac`); earlier rows get theirs at their next sealing change.
    r#"
ALTER TABLE secrets ADD COLUMN purpose_mac BYTEA;
"#,
];

/// Brings the database to the newest schema; refuses a database from a newer build.
pub(crate) async fn migrate(client: &mut Client) -> StoreResult<()> {
    let tx = client.transaction().await.map_err(pg("migration"))?;
    tx.query_one("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg("migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version       INTEGER PRIMARY KEY,
            applied_at_ms BIGINT NOT NULL
        )",
    )
    .await
    .map_err(pg("migration"))?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(pg("migration"))?
        .try_get(0)
        .map_err(pg("migration"))?;
    let newest = i32::try_from(MIGRATIONS.len())
        .map_err(|_| StoreError::new(ErrorKind::Invalid, "too many migrations"))?;
    if current > newest {
        return Err(StoreError::new(
            ErrorKind::Invalid,
            format!("the database has schema version {current}, newer than this build ({newest})"),
        ));
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(current).unwrap_or(0))
    {
        tx.batch_execute(sql).await.map_err(pg("migration"))?;
        // The database's clock: when a migration ran is for the operator's record only.
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at_ms)
             VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)",
            &[&version],
        )
        .await
        .map_err(pg("migration"))?;
    }
    tx.commit().await.map_err(pg("migration"))
}
