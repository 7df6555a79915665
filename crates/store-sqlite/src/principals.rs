//! Principals and tokens in the embedded store: the rows a batch needs, the rows it writes, and
//! the reads the host authenticates and lists with. Rows are decoded by the shared
//! [`PrincipalRecord::from_stored`] and [`TokenRecord::from_stored`].

use rusqlite::{Connection, Row};
use selene_kms_core::{ServiceKeys, SpiffeId};
use selene_kms_store::backend::{
    CREDENTIAL_SQL, Committed, Credential, ErrorKind, LISTING_SQL, Needs, PRINCIPAL_COLUMN_COUNT,
    PrincipalListing, PrincipalRecord, StoreError, StoreResult, StoredPrincipal, StoredToken,
    TokenRecord, TokenRow, Writes, from_db, global_admin_columns, group_listing, principal_mac,
    tenants_column, to_db_saturating, token_mac,
};

use selene_kms_store::backend::revocation_step;
use selene_kms_store::{principal_columns, token_columns};

use crate::batch::exec;
use crate::db_err;

/// A principal's columns at `at..at + 9` ([`principal_columns!`]).
fn principal_at(keys: &ServiceKeys, r: &Row<'_>, at: usize) -> StoreResult<PrincipalRecord> {
    let text = |i: usize| r.get::<_, String>(at + i).map_err(db_err);
    let time = |i: usize| r.get::<_, Option<i64>>(at + i).map_err(db_err);
    PrincipalRecord::from_stored(
        keys,
        &StoredPrincipal {
            principal_id: &text(0)?,
            name: &text(1)?,
            role: &text(2)?,
            tenants: &text(3)?,
            spiffe_id: r
                .get::<_, Option<String>>(at + 4)
                .map_err(db_err)?
                .as_deref(),
            created_at_ms: r.get(at + 5).map_err(db_err)?,
            expires_at_ms: time(6)?,
            revoked_at_ms: time(7)?,
            mac: &r.get::<_, Vec<u8>>(at + 8).map_err(db_err)?,
        },
    )
}

/// A token's columns at `at..at + 7` ([`token_columns!`]), with its verifier.
fn token_at(keys: &ServiceKeys, r: &Row<'_>, at: usize) -> StoreResult<TokenRow> {
    let text = |i: usize| r.get::<_, String>(at + i).map_err(db_err);
    let time = |i: usize| r.get::<_, Option<i64>>(at + i).map_err(db_err);
    let verifier: Vec<u8> = r.get(at + 2).map_err(db_err)?;
    let record = TokenRecord::from_stored(
        keys,
        &StoredToken {
            token_id: &text(0)?,
            principal_id: &text(1)?,
            verifier: &verifier,
            created_at_ms: r.get(at + 3).map_err(db_err)?,
            expires_at_ms: time(4)?,
            revoked_at_ms: time(5)?,
            mac: &r.get::<_, Vec<u8>>(at + 6).map_err(db_err)?,
        },
    )?;
    let verifier = verifier
        .try_into()
        .map_err(|_| StoreError::new(ErrorKind::Corrupt, "a stored token verifier is malformed"))?;
    Ok(TokenRow { record, verifier })
}

/// Every row of `sql` decoded by `decode`.
fn collect<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    decode: impl Fn(&Row<'_>) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).map_err(db_err)?;
    let mut rows = stmt.query(params).map_err(db_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        out.push(decode(row)?);
    }
    Ok(out)
}

/// A list as the JSON array `json_each` reads: SQLite has no array parameters.
fn json_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    serde_json::Value::from(items.collect::<Vec<_>>()).to_string()
}

/// Reads the principals and tokens `needs` asks for into `committed` (see
/// [`Committed::principals`]), in the writer's transaction.
pub(crate) fn read_committed(
    conn: &Connection,
    keys: &ServiceKeys,
    needs: &Needs,
    committed: &mut Committed,
) -> StoreResult<()> {
    if needs.reads_principals() {
        let (admin_role, all_tenants) = global_admin_columns();
        let principals = collect(
            conn,
            concat!(
                "SELECT ",
                principal_columns!(),
                " FROM principals
             WHERE principal_id IN (SELECT value FROM json_each(?1))
                OR (revoked_at_ms IS NULL
                    AND (name IN (SELECT value FROM json_each(?2))
                         OR spiffe_id IN (SELECT value FROM json_each(?3))
                         OR (?4 AND role = ?5 AND tenants = ?6)))"
            ),
            (
                json_list(needs.principals.iter().map(|p| p.as_str())),
                json_list(needs.principal_names.iter().map(|n| n.as_str())),
                json_list(needs.spiffe_ids.iter().map(SpiffeId::as_str)),
                needs.global_admins,
                admin_role,
                all_tenants,
            ),
            |r| principal_at(keys, r, 0),
        )?;
        for p in principals {
            committed.principals.insert(p.principal_id.clone(), p);
        }
    }
    if !needs.tokens.is_empty() {
        let tokens = collect(
            conn,
            concat!(
                "SELECT ",
                token_columns!(),
                " FROM principal_tokens WHERE token_id IN (SELECT value FROM json_each(?1))"
            ),
            [json_list(needs.tokens.iter().map(|t| t.as_str()))],
            |r| token_at(keys, r, 0),
        )?;
        for t in tokens {
            committed.tokens.insert(t.record.token_id.clone(), t);
        }
    }
    Ok(())
}

/// Writes the principal and token rows of a decided batch: new principals, new tokens, then
/// revocations (a batch may revoke what it created). Returns the authentication epoch the
/// batch advanced to, if it revoked anything.
pub(crate) fn write(
    conn: &Connection,
    keys: &ServiceKeys,
    writes: &Writes,
) -> StoreResult<Option<u64>> {
    for p in &writes.principals {
        exec(
            conn,
            "INSERT INTO principals (principal_id, name, role, tenants, spiffe_id, created_at_ms,
                                     expires_at_ms, revoked_at_ms, mac)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8)",
            (
                p.principal_id.as_str(),
                p.name.as_str(),
                p.role.name(),
                tenants_column(&p.tenants),
                p.spiffe_id.as_ref().map(SpiffeId::as_str),
                to_db_saturating(p.created_at_ms),
                p.expires_at_ms.map(to_db_saturating),
                &principal_mac(keys, p)[..],
            ),
            "principal write",
        )?;
    }
    for t in &writes.tokens {
        let r = &t.record;
        exec(
            conn,
            "INSERT INTO principal_tokens (token_id, principal_id, verifier, created_at_ms,
                                           expires_at_ms, revoked_at_ms, mac)
             VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
            (
                r.token_id.as_str(),
                r.principal_id.as_str(),
                &t.verifier[..],
                to_db_saturating(r.created_at_ms),
                r.expires_at_ms.map(to_db_saturating),
                &token_mac(keys, r, &t.verifier)[..],
            ),
            "token write",
        )?;
    }
    for p in &writes.revoked_principals {
        exec(
            conn,
            "UPDATE principals SET revoked_at_ms = ?2, mac = ?3
             WHERE principal_id = ?1 AND revoked_at_ms IS NULL",
            (
                p.principal_id.as_str(),
                p.revoked_at_ms.map(to_db_saturating),
                &principal_mac(keys, p)[..],
            ),
            "principal revocation",
        )?;
    }
    for t in &writes.revoked_tokens {
        let r = &t.record;
        exec(
            conn,
            "UPDATE principal_tokens SET revoked_at_ms = ?2, mac = ?3
             WHERE token_id = ?1 AND revoked_at_ms IS NULL",
            (
                r.token_id.as_str(),
                r.revoked_at_ms.map(to_db_saturating),
                &token_mac(keys, r, &t.verifier)[..],
            ),
            "token revocation",
        )?;
    }
    if !writes.revokes_credentials() {
        return Ok(None);
    }
    let step = revocation_step()?;
    let epoch: i64 = conn
        .prepare_cached("UPDATE auth_epoch SET epoch = epoch + ?1 WHERE id = 0 RETURNING epoch")
        .and_then(|mut stmt| stmt.query_row([step], |r| r.get(0)))
        .map_err(|e| {
            let inner = db_err(e);
            StoreError::new(
                ErrorKind::Unavailable,
                format!("auth epoch: {}", inner.message),
            )
        })?;
    from_db(epoch).map(Some)
}

/// The authentication epoch as stored.
pub(crate) fn stored_epoch(conn: &Connection) -> StoreResult<u64> {
    let epoch: i64 = conn
        .query_row("SELECT epoch FROM auth_epoch WHERE id = 0", [], |r| {
            r.get(0)
        })
        .map_err(db_err)?;
    from_db(epoch)
}

/// The token stored under `verifier` and its principal, live or not.
pub(crate) fn credential(
    conn: &Connection,
    keys: &ServiceKeys,
    verifier: &[u8; 32],
) -> StoreResult<Option<Credential>> {
    let mut stmt = conn.prepare_cached(CREDENTIAL_SQL).map_err(db_err)?;
    let mut rows = stmt.query([&verifier[..]]).map_err(db_err)?;
    rows.next()
        .map_err(db_err)?
        .map(|r| {
            Ok(Credential::new(
                principal_at(keys, r, 0)?,
                token_at(keys, r, PRINCIPAL_COLUMN_COUNT)?.record,
            ))
        })
        .transpose()
}

/// The unrevoked principal bound to `spiffe_id`.
pub(crate) fn by_spiffe(
    conn: &Connection,
    keys: &ServiceKeys,
    spiffe_id: &SpiffeId,
) -> StoreResult<Option<PrincipalRecord>> {
    let found = collect(
        conn,
        "SELECT principal_id, name, role, tenants, spiffe_id, created_at_ms, expires_at_ms,
                revoked_at_ms, mac
         FROM principals WHERE spiffe_id = ?1 AND revoked_at_ms IS NULL",
        [spiffe_id.as_str()],
        |r| principal_at(keys, r, 0),
    )?;
    Ok(found.into_iter().next())
}

/// Every principal with its tokens, in one statement ([`LISTING_SQL`]).
pub(crate) fn listing(conn: &Connection, keys: &ServiceKeys) -> StoreResult<Vec<PrincipalListing>> {
    let mut stmt = conn.prepare_cached(LISTING_SQL).map_err(db_err)?;
    let mut rows = stmt.query([]).map_err(db_err)?;
    let mut decoded = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        let at = PRINCIPAL_COLUMN_COUNT;
        let has_token = row.get::<_, Option<String>>(at).map_err(db_err)?.is_some();
        let token = if has_token {
            Some(token_at(keys, row, at)?.record)
        } else {
            None
        };
        decoded.push(Ok((principal_at(keys, row, 0)?, token)));
    }
    group_listing(decoded)
}
