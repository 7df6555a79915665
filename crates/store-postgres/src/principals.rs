//! Principals and tokens in PostgreSQL: the rows a batch needs (read after the batch locked the
//! system chain's row, which every principal change takes, so concurrent changes from several
//! nodes are decided one after the other), the rows it writes, and the reads the host
//! authenticates and lists with. Rows are decoded by the shared
//! [`PrincipalRecord::from_stored`] and [`TokenRecord::from_stored`].

use deadpool_postgres::GenericClient;
use selene_kms_core::{PrincipalId, SpiffeId, TokenId};
use selene_kms_store::backend::{
    Committed, Credential, LISTING_SQL, Needs, PrincipalListing, PrincipalRecord, StoreResult,
    StoredPrincipal, StoredToken, TokenRecord, Writes, global_admin_columns, group_listing,
    tenants_column,
};
use tokio_postgres::Row;

use crate::codec::{col, col_u64, to_db_saturating};
use crate::reads::corrupt;
use crate::sql;

const WHAT: &str = "principal read";

/// A principal's columns at `at..at + 8`, in the order every query here selects them:
/// `principal_id, name, role, tenants, spiffe_id, created_at_ms, expires_at_ms, revoked_at_ms`.
fn principal_at(row: &Row, at: usize) -> StoreResult<PrincipalRecord> {
    PrincipalRecord::from_stored(&StoredPrincipal {
        principal_id: col(row, at, WHAT)?,
        name: col(row, at + 1, WHAT)?,
        role: col(row, at + 2, WHAT)?,
        tenants: col(row, at + 3, WHAT)?,
        spiffe_id: col(row, at + 4, WHAT)?,
        created_at_ms: col(row, at + 5, WHAT)?,
        expires_at_ms: col(row, at + 6, WHAT)?,
        revoked_at_ms: col(row, at + 7, WHAT)?,
    })
}

/// A token's columns at `at..at + 5`: `token_id, principal_id, created_at_ms, expires_at_ms,
/// revoked_at_ms`.
fn token_at(row: &Row, at: usize) -> StoreResult<TokenRecord> {
    TokenRecord::from_stored(&StoredToken {
        token_id: col(row, at, WHAT)?,
        principal_id: col(row, at + 1, WHAT)?,
        created_at_ms: col(row, at + 2, WHAT)?,
        expires_at_ms: col(row, at + 3, WHAT)?,
        revoked_at_ms: col(row, at + 4, WHAT)?,
    })
}

/// Reads the principals and tokens `needs` asks for into `committed` (see
/// [`Committed::principals`]), one statement each.
pub(crate) async fn read_committed(
    client: &impl GenericClient,
    needs: &Needs,
    committed: &mut Committed,
) -> StoreResult<()> {
    if needs.reads_principals() {
        let (admin_role, all_tenants) = global_admin_columns();
        let ids: Vec<&str> = needs.principals.iter().map(PrincipalId::as_str).collect();
        let names: Vec<&str> = needs.principal_names.iter().map(|n| n.as_str()).collect();
        let spiffe_ids: Vec<&str> = needs.spiffe_ids.iter().map(SpiffeId::as_str).collect();
        let rows = sql::rows(
            client,
            "SELECT principal_id, name, role, tenants, spiffe_id, created_at_ms, expires_at_ms,
                    revoked_at_ms
             FROM principals
             WHERE principal_id = ANY($1)
                OR (revoked_at_ms IS NULL
                    AND (name = ANY($2) OR spiffe_id = ANY($3)
                         OR ($4 AND role = $5 AND tenants = $6)))",
            &[
                &ids,
                &names,
                &spiffe_ids,
                &needs.global_admins,
                &admin_role,
                &all_tenants,
            ],
            WHAT,
        )
        .await?;
        for row in &rows {
            let p = principal_at(row, 0)?;
            committed.principals.insert(p.principal_id.clone(), p);
        }
    }
    if !needs.tokens.is_empty() {
        let ids: Vec<&str> = needs.tokens.iter().map(TokenId::as_str).collect();
        let rows = sql::rows(
            client,
            "SELECT token_id, principal_id, created_at_ms, expires_at_ms, revoked_at_ms
             FROM principal_tokens WHERE token_id = ANY($1)",
            &[&ids],
            WHAT,
        )
        .await?;
        for row in &rows {
            let t = token_at(row, 0)?;
            committed.tokens.insert(t.token_id.clone(), t);
        }
    }
    Ok(())
}

/// Writes the principal and token rows of a decided batch, one statement per non-empty group:
/// new principals, new tokens, then revocations (a batch may revoke what it created), and
/// advances the authentication epoch in the same transaction when it revoked anything.
pub(crate) async fn write(client: &impl GenericClient, writes: &Writes) -> StoreResult<()> {
    if !writes.principals.is_empty() {
        let rows = &writes.principals;
        let ids: Vec<&str> = rows.iter().map(|p| p.principal_id.as_str()).collect();
        let names: Vec<&str> = rows.iter().map(|p| p.name.as_str()).collect();
        let roles: Vec<&str> = rows.iter().map(|p| p.role.name()).collect();
        let tenants: Vec<String> = rows.iter().map(|p| tenants_column(&p.tenants)).collect();
        let spiffe_ids: Vec<Option<&str>> = rows
            .iter()
            .map(|p| p.spiffe_id.as_ref().map(SpiffeId::as_str))
            .collect();
        let created: Vec<i64> = rows
            .iter()
            .map(|p| to_db_saturating(p.created_at_ms))
            .collect();
        let expires: Vec<Option<i64>> = rows
            .iter()
            .map(|p| p.expires_at_ms.map(to_db_saturating))
            .collect();
        sql::execute(
            client,
            "INSERT INTO principals (principal_id, name, role, tenants, spiffe_id, created_at_ms,
                                     expires_at_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::bigint[], $7::bigint[])",
            &[
                &ids,
                &names,
                &roles,
                &tenants,
                &spiffe_ids,
                &created,
                &expires,
            ],
            "principal write",
        )
        .await?;
    }
    if !writes.tokens.is_empty() {
        let rows = &writes.tokens;
        let ids: Vec<&str> = rows.iter().map(|t| t.record.token_id.as_str()).collect();
        let owners: Vec<&str> = rows
            .iter()
            .map(|t| t.record.principal_id.as_str())
            .collect();
        let verifiers: Vec<&[u8]> = rows.iter().map(|t| &t.verifier[..]).collect();
        let created: Vec<i64> = rows
            .iter()
            .map(|t| to_db_saturating(t.record.created_at_ms))
            .collect();
        let expires: Vec<Option<i64>> = rows
            .iter()
            .map(|t| t.record.expires_at_ms.map(to_db_saturating))
            .collect();
        sql::execute(
            client,
            "INSERT INTO principal_tokens (token_id, principal_id, verifier, created_at_ms,
                                           expires_at_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bigint[],
                                  $5::bigint[])",
            &[&ids, &owners, &verifiers, &created, &expires],
            "token write",
        )
        .await?;
    }
    if !writes.revoked_principals.is_empty() {
        let (ids, at): (Vec<&str>, Vec<i64>) = writes
            .revoked_principals
            .iter()
            .map(|(p, at_ms)| (p.as_str(), to_db_saturating(*at_ms)))
            .unzip();
        for statement in [
            "UPDATE principals SET revoked_at_ms = r.at
             FROM unnest($1::text[], $2::bigint[]) AS r(id, at)
             WHERE principals.principal_id = r.id AND principals.revoked_at_ms IS NULL",
            "UPDATE principal_tokens SET revoked_at_ms = r.at
             FROM unnest($1::text[], $2::bigint[]) AS r(id, at)
             WHERE principal_tokens.principal_id = r.id AND principal_tokens.revoked_at_ms IS NULL",
        ] {
            sql::execute(client, statement, &[&ids, &at], "principal revocation").await?;
        }
    }
    if !writes.revoked_tokens.is_empty() {
        let (ids, at): (Vec<&str>, Vec<i64>) = writes
            .revoked_tokens
            .iter()
            .map(|(t, at_ms)| (t.as_str(), to_db_saturating(*at_ms)))
            .unzip();
        sql::execute(
            client,
            "UPDATE principal_tokens SET revoked_at_ms = r.at
             FROM unnest($1::text[], $2::bigint[]) AS r(id, at)
             WHERE principal_tokens.token_id = r.id AND principal_tokens.revoked_at_ms IS NULL",
            &[&ids, &at],
            "token revocation",
        )
        .await?;
    }
    if writes.revokes_credentials() {
        sql::execute(
            client,
            "UPDATE auth_epoch SET epoch = epoch + 1 WHERE id = 0",
            &[],
            "auth epoch",
        )
        .await?;
    }
    Ok(())
}

/// The authentication epoch as committed now.
pub(crate) async fn epoch(client: &impl GenericClient) -> StoreResult<u64> {
    let row = sql::row(
        client,
        "SELECT epoch FROM auth_epoch WHERE id = 0",
        &[],
        "auth epoch",
    )
    .await?
    .ok_or_else(|| corrupt("the auth epoch"))?;
    col_u64(&row, 0, "auth epoch")
}

/// The token stored under `verifier` and its principal, live or not.
pub(crate) async fn credential(
    client: &impl GenericClient,
    verifier: &[u8; 32],
) -> StoreResult<Option<Credential>> {
    let row = sql::row(
        client,
        "SELECT p.principal_id, p.name, p.role, p.tenants, p.spiffe_id, p.created_at_ms,
                p.expires_at_ms, p.revoked_at_ms,
                t.token_id, t.principal_id, t.created_at_ms, t.expires_at_ms, t.revoked_at_ms
         FROM principal_tokens t JOIN principals p ON p.principal_id = t.principal_id
         WHERE t.verifier = $1",
        &[&&verifier[..]],
        WHAT,
    )
    .await?;
    row.map(|row| {
        Ok(Credential {
            principal: principal_at(&row, 0)?,
            token: token_at(&row, 8)?,
        })
    })
    .transpose()
}

/// The unrevoked principal bound to `spiffe_id`.
pub(crate) async fn by_spiffe(
    client: &impl GenericClient,
    spiffe_id: &SpiffeId,
) -> StoreResult<Option<PrincipalRecord>> {
    let row = sql::row(
        client,
        "SELECT principal_id, name, role, tenants, spiffe_id, created_at_ms, expires_at_ms,
                revoked_at_ms
         FROM principals WHERE spiffe_id = $1 AND revoked_at_ms IS NULL",
        &[&spiffe_id.as_str()],
        WHAT,
    )
    .await?;
    row.map(|row| principal_at(&row, 0)).transpose()
}

/// Every principal with its tokens, in one statement ([`LISTING_SQL`]).
pub(crate) async fn listing(client: &impl GenericClient) -> StoreResult<Vec<PrincipalListing>> {
    let rows = sql::rows(client, LISTING_SQL, &[], WHAT).await?;
    group_listing(rows.iter().map(|row| {
        let has_token = col::<Option<&str>>(row, 8, WHAT)?.is_some();
        let token = if has_token {
            Some(token_at(row, 8)?)
        } else {
            None
        };
        Ok((principal_at(row, 0)?, token))
    }))
}
