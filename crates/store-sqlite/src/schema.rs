//! SQLite schema and its migrations, applied in order inside one transaction each and recorded
//! in `schema_migrations`.

use rusqlite::Connection;
use selene_kms_store::backend::{ErrorKind, StoreError, StoreResult};

/// Migrations, in order; index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    r"
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
",
    // Every request adds an audit record and most an idempotency record. Keyed by tenant, those
    // rows (hundreds of bytes each) landed on a random page of a large tree per request, and so
    // did the tenant's chain head: with thousands of tenants a request rewrote about eleven
    // pages of WAL. Rows now append in arrival order; only small index entries land at random,
    // and a tenant's head is its last audit record.
    r"
CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    record    TEXT NOT NULL
);
INSERT INTO audit_log (tenant_id, seq, record)
    SELECT tenant_id, seq, record FROM audit ORDER BY tenant_id, seq;
DROP TABLE audit;
ALTER TABLE audit_log RENAME TO audit;
CREATE UNIQUE INDEX audit_chain ON audit (tenant_id, seq);

CREATE TABLE idempotency_log (
    id            INTEGER PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    caller        TEXT NOT NULL,
    key           TEXT NOT NULL,
    fingerprint   BLOB NOT NULL,
    bundle        BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);
INSERT INTO idempotency_log (tenant_id, caller, key, fingerprint, bundle, created_at_ms)
    SELECT tenant_id, caller, key, fingerprint, bundle, created_at_ms FROM idempotency
    ORDER BY created_at_ms;
DROP TABLE idempotency;
ALTER TABLE idempotency_log RENAME TO idempotency;
CREATE UNIQUE INDEX idempotency_scope ON idempotency (tenant_id, caller, key);
CREATE INDEX idempotency_created ON idempotency (created_at_ms);

ALTER TABLE tenants DROP COLUMN audit_seq;
ALTER TABLE tenants DROP COLUMN audit_head;
",
    // Stored answers are sealed under the tenant's data key from now on. Answers stored in
    // clear (they can hold redeemable refs) are dropped rather than kept readable: a retry of a
    // request made before the upgrade is then decided anew (a mutation's plan is stale by then).
    "DELETE FROM idempotency;",
    // Callers are principals with tokens of their own. The legacy `tokens` table is dropped, not
    // converted: its verifiers were unkeyed SHA-256 hashes, so a row anyone could write would
    // authenticate. Re-running `init` on a store without principals creates the bootstrap ones.
    // Names and SPIFFE ids are unique among unrevoked principals: the plan checks it, the
    // indexes are the backstop. The authentication epoch advances with every revocation.
    r"
DROP TABLE tokens;

CREATE TABLE principals (
    principal_id  TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    tenants       TEXT NOT NULL,
    spiffe_id     TEXT,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER,
    -- What the row says, MACed under a key derived from the root key (see stored_principals).
    mac           BLOB NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX principals_live_name ON principals (name) WHERE revoked_at_ms IS NULL;
CREATE UNIQUE INDEX principals_live_spiffe ON principals (spiffe_id) WHERE revoked_at_ms IS NULL;

CREATE TABLE principal_tokens (
    token_id      TEXT PRIMARY KEY,
    principal_id  TEXT NOT NULL REFERENCES principals (principal_id),
    verifier      BLOB NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER,
    -- What the row says, MACed under a key derived from the root key (see stored_principals).
    mac           BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX principal_tokens_principal ON principal_tokens (principal_id);

CREATE TABLE auth_epoch (
    id    INTEGER PRIMARY KEY CHECK (id = 0),
    epoch INTEGER NOT NULL
);
INSERT INTO auth_epoch (id, epoch) VALUES (0, 0);
",
    // Signed manifests of every chain's head, chained to one another (see the store's
    // `manifest` module). Verifiers start from the latest full one.
    r"
CREATE TABLE manifests (
    seq      INTEGER PRIMARY KEY,
    is_full  INTEGER NOT NULL,
    manifest TEXT NOT NULL
);
CREATE INDEX manifests_full ON manifests (seq) WHERE is_full = 1;
",
    // What each decision was made from, sealed under the tenant's data key, beside its record
    // (see the core's `replay` module). A table of its own: in the audit row it would leave two
    // records to a page instead of four.
    r"
CREATE TABLE decision_inputs (
    tenant_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    sealed    BLOB NOT NULL,
    PRIMARY KEY (tenant_id, seq)
) WITHOUT ROWID;
",
    // Every commit rewrites the last pages of each tree it appends to. Keyed by (tenant, seq),
    // a tree without row ids, the inputs split their last page into three half-full ones at
    // each commit (eight pages of log per commit for two pages of inputs); keyed by their
    // record's row id they append, full page after full page. Idempotency records are pruned
    // in row order, which is their creation order, so their index by creation time (another
    // tree rewritten at every commit) goes.
    r"
CREATE TABLE decision_inputs_by_record (
    audit_id INTEGER PRIMARY KEY,
    sealed   BLOB NOT NULL
);
INSERT INTO decision_inputs_by_record (audit_id, sealed)
    SELECT a.id, i.sealed FROM decision_inputs i
    JOIN audit a ON a.tenant_id = i.tenant_id AND a.seq = i.seq ORDER BY a.id;
DROP TABLE decision_inputs;
ALTER TABLE decision_inputs_by_record RENAME TO decision_inputs;
DROP INDEX idempotency_created;
",
    // Keys: a secret's purpose (every earlier secret is a credential) and the oldest version a
    // key decrypts.
    r"
ALTER TABLE secrets ADD COLUMN purpose TEXT NOT NULL DEFAULT 'credential';
ALTER TABLE secrets ADD COLUMN min_decryption_version INTEGER NOT NULL DEFAULT 1;
",
    // A secret's MAC over its tenant, name and purpose (see the store's
    // `StoredSecret::purpose_mac`); earlier rows get theirs at their next sealing change.
    r"
ALTER TABLE secrets ADD COLUMN purpose_mac BLOB;
",
];

/// Removes the idempotency records created before `?1`. Rows append in creation order, give
/// or take the clocks of concurrent requests: everything before the first row still within
/// retention goes, a scan of only the rows it deletes, with no index by creation time to
/// rewrite at every commit. A row created out of order is kept until the rows before it go,
/// never removed early.
pub(crate) const PRUNE_IDEMPOTENCY: &str = "DELETE FROM idempotency WHERE id < COALESCE(
    (SELECT id FROM idempotency WHERE created_at_ms >= ?1 ORDER BY id LIMIT 1),
    (SELECT MAX(id) + 1 FROM idempotency))";

/// The schema version this build writes.
#[allow(
    clippy::cast_possible_wrap,
    reason = "a handful of migrations; a const cannot use a checked conversion"
)]
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
    let applied = usize::try_from(current)
        .map_err(|_| StoreError::new(ErrorKind::Corrupt, "the schema version is negative"))?;
    for (version, sql) in (1_i64..).zip(MIGRATIONS.iter()).skip(applied) {
        let tx = conn.transaction().map_err(unavailable)?;
        tx.execute_batch(sql).map_err(unavailable)?;
        // The database's clock: when a migration ran is for the operator's record only.
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at_ms)
             VALUES (?1, CAST(strftime('%s', 'now') AS INTEGER) * 1000)",
            [version],
        )
        .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).expect("query")
    }

    #[test]
    fn a_version_one_store_keeps_its_chains_and_keys_when_migrated() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL);",
        )
        .expect("table");
        conn.execute_batch(MIGRATIONS[0]).expect("version 1");
        conn.execute_batch(
            "INSERT INTO schema_migrations VALUES (1, 0);
             INSERT INTO tenants (tenant_id, audit_seq, audit_head) VALUES ('a', 2, 'h2'), ('b', 1, 'h1');
             INSERT INTO audit VALUES ('b', 1, 'b1'), ('a', 2, 'a2'), ('a', 1, 'a1');
             INSERT INTO idempotency VALUES ('a', 'os', 'k1', x'01', x'02', 5), ('b', 'os', 'k1', x'03', x'04', 3);
             INSERT INTO tokens VALUES (x'0101', 'admin', 'root');",
        )
        .expect("version 1 rows");

        migrate(&mut conn).expect("migrates");

        assert_eq!(
            count(&conn, "SELECT MAX(version) FROM schema_migrations"),
            SCHEMA_VERSION
        );
        let chain: Vec<(String, i64, String)> = conn
            .prepare("SELECT tenant_id, seq, record FROM audit ORDER BY id")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .expect("audit rows");
        let row = |t: &str, seq: i64, r: &str| (t.to_owned(), seq, r.to_owned());
        assert_eq!(
            chain,
            [row("a", 1, "a1"), row("a", 2, "a2"), row("b", 1, "b1")]
        );
        assert!(
            conn.execute(
                "INSERT INTO audit (tenant_id, seq, record) VALUES ('a', 2, 'x')",
                []
            )
            .is_err(),
            "one record per tenant and sequence number"
        );
        assert_eq!(
            count(&conn, "SELECT COUNT(*) FROM idempotency"),
            0,
            "answers stored in clear are dropped, not kept readable"
        );
        let claim = || {
            conn.execute(
                "INSERT INTO idempotency (tenant_id, caller, key, fingerprint, bundle, created_at_ms)
                 VALUES ('a', 'os', 'k1', x'', x'', 9)",
                [],
            )
        };
        assert!(claim().is_ok());
        assert!(
            claim().is_err(),
            "a key is taken once per tenant and caller"
        );
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM tenants"), 2);
        assert!(
            conn.prepare("SELECT audit_head FROM tenants").is_err(),
            "the head is the last record, not a column"
        );
        // Migrating again is a no-op.
        migrate(&mut conn).expect("idempotent");
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM audit"), 3);
    }

    fn migrated_to(version: usize) -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL);",
        )
        .expect("table");
        for (n, sql) in (1_i64..).zip(&MIGRATIONS[..version]) {
            conn.execute_batch(sql).expect("an older version");
            conn.execute("INSERT INTO schema_migrations VALUES (?1, 0)", [n])
                .expect("recorded");
        }
        conn
    }

    /// The number of migrations before the one whose text holds `marker`.
    fn before(marker: &str) -> usize {
        MIGRATIONS
            .iter()
            .position(|m| m.contains(marker))
            .expect("a migration holds the marker")
    }

    #[test]
    fn decision_inputs_stay_beside_their_records_when_keyed_by_row_id() {
        let mut conn = migrated_to(before("decision_inputs_by_record"));
        conn.execute_batch(
            "INSERT INTO audit (tenant_id, seq, record) VALUES ('b', 1, 'b1'), ('a', 1, 'a1'),
                                                           ('a', 2, 'a2');
             INSERT INTO decision_inputs VALUES ('a', 2, x'a2'), ('b', 1, x'b1'),
                                                ('c', 9, x'c9');",
        )
        .expect("rows");

        migrate(&mut conn).expect("migrates");

        let beside: Vec<(String, i64, Vec<u8>)> = conn
            .prepare(
                "SELECT a.tenant_id, a.seq, i.sealed FROM decision_inputs i
                 JOIN audit a ON a.id = i.audit_id ORDER BY i.audit_id",
            )
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .expect("inputs");
        assert_eq!(
            beside,
            [
                ("b".to_owned(), 1, vec![0xb1]),
                ("a".to_owned(), 2, vec![0xa2]),
            ],
            "inputs without a record are not kept"
        );
    }

    #[test]
    fn secrets_from_before_keys_are_credentials_decrypting_every_version() {
        let mut conn = migrated_to(before("min_decryption_version"));
        conn.execute_batch(
            "INSERT INTO secrets (tenant_id, secret_name, secret_ref, kind, state_version,
                                  ttl_min_ms, ttl_max_ms, ttl_default_ms, handle_ttl_ms,
                                  created_at_ms)
             VALUES ('a', 'db/pass', 'ksr2_x', 'GENERATED', 1, 1, 2, 2, 9, 0);",
        )
        .expect("an older secret");
        migrate(&mut conn).expect("migrates");
        let terms: (String, i64) = conn
            .query_row(
                "SELECT purpose, min_decryption_version FROM secrets",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("the secret");
        assert_eq!(terms, ("credential".to_owned(), 1));
    }

    #[test]
    fn idempotency_records_are_pruned_in_row_order_and_never_early() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrate(&mut conn).expect("schema");
        // Created at 10, 30, 20 (a request whose clock lagged), 40.
        for (key, at) in [("k1", 10), ("k2", 30), ("k3", 20), ("k4", 40)] {
            conn.execute(
                "INSERT INTO idempotency (tenant_id, caller, key, fingerprint, bundle,
                                          created_at_ms)
                 VALUES ('a', 'os', ?1, x'', x'', ?2)",
                (key, at),
            )
            .expect("row");
        }
        let keys = |conn: &Connection| -> Vec<String> {
            conn.prepare("SELECT key FROM idempotency ORDER BY id")
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .expect("keys")
        };
        assert_eq!(conn.execute(PRUNE_IDEMPOTENCY, [25]).expect("prune"), 1);
        assert_eq!(keys(&conn), ["k2", "k3", "k4"], "k3 waits for k2");
        assert_eq!(conn.execute(PRUNE_IDEMPOTENCY, [35]).expect("prune"), 2);
        assert_eq!(keys(&conn), ["k4"]);
        assert_eq!(conn.execute(PRUNE_IDEMPOTENCY, [99]).expect("prune"), 1);
        assert_eq!(conn.execute(PRUNE_IDEMPOTENCY, [99]).expect("prune"), 0);
    }

    #[test]
    fn the_legacy_token_table_is_dropped_for_principals() {
        let mut conn = migrated_to(3);
        conn.execute_batch(
            "INSERT INTO tenants (tenant_id, wrapped_dek) VALUES ('a', x'07');
             INSERT INTO tokens VALUES (x'0101', 'admin', 'root');",
        )
        .expect("older rows");

        migrate(&mut conn).expect("migrates");

        assert!(
            conn.prepare("SELECT * FROM tokens").is_err(),
            "unkeyed verifiers are not kept"
        );
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM tenants WHERE wrapped_dek IS NOT NULL"
            ),
            1
        );
        assert_eq!(count(&conn, "SELECT epoch FROM auth_epoch"), 0);
        let principal = |id: &str, name: &str, revoked: Option<i64>| {
            conn.execute(
                "INSERT INTO principals (principal_id, name, role, tenants, spiffe_id,
                                         created_at_ms, revoked_at_ms, mac)
                 VALUES (?1, ?2, 'admin', '[\"*\"]', 'spiffe://e/x', 0, ?3, x'00')",
                (id, name, revoked),
            )
        };
        principal("kp_1", "root", Some(5)).expect("a revoked principal");
        principal("kp_2", "root", None).expect("its name and SPIFFE id are free");
        assert!(principal("kp_3", "root", None).is_err(), "one live name");
        assert!(
            principal("kp_4", "other", None).is_err(),
            "one live SPIFFE id"
        );
        let token = |id: &str, verifier: &[u8]| {
            conn.execute(
                "INSERT INTO principal_tokens (token_id, principal_id, verifier, created_at_ms,
                                               mac)
                 VALUES (?1, 'kp_2', ?2, 0, x'00')",
                (id, verifier),
            )
        };
        token("kt_1", b"v").expect("a token");
        assert!(token("kt_2", b"v").is_err(), "one token per verifier");
    }
}
