//! Principals and tokens in PostgreSQL: the rows a batch needs (read after the batch locked the
//! system chain's row, which every principal change takes, so concurrent changes from several
//! nodes are decided one after the other), the rows it writes, and the reads the host
//! authenticates and lists with. Rows are decoded by the shared
//! [`PrincipalRecord::from_stored`] and [`TokenRecord::from_stored`].

use deadpool_postgres::GenericClient;
use selene_kms_core::{PrincipalId, ServiceKeys, SpiffeId, TokenId};
use selene_kms_store::backend::revocation_step;
use selene_kms_store::backend::{
    CREDENTIAL_SQL, Committed, Credential, LISTING_SQL, Needs, PRINCIPAL_COLUMN_COUNT,
    PrincipalListing, PrincipalRecord, StoreResult, StoredPrincipal, StoredToken, TokenRecord,
    TokenRow, Writes, global_admin_columns, group_listing, principal_mac, tenants_column,
    token_mac,
};
use selene_kms_store::{principal_columns, token_columns};
use tokio_postgres::Row;

use crate::codec::{col, col_u64, to_db_saturating};
use crate::reads::corrupt;
use crate::sql;

const WHAT: &str = "principal read";

/// A principal's columns at `at..at + 9` ([`principal_columns!`]).
fn principal_at(keys: &ServiceKeys, row: &Row, at: usize) -> StoreResult<PrincipalRecord> {
    PrincipalRecord::from_stored(
        keys,
        &StoredPrincipal {
            principal_id: col(row, at, WHAT)?,
            name: col(row, at + 1, WHAT)?,
            role: col(row, at + 2, WHAT)?,
            tenants: col(row, at + 3, WHAT)?,
            spiffe_id: col(row, at + 4, WHAT)?,
            created_at_ms: col(row, at + 5, WHAT)?,
            expires_at_ms: col(row, at + 6, WHAT)?,
            revoked_at_ms: col(row, at + 7, WHAT)?,
            mac: col(row, at + 8, WHAT)?,
        },
    )
}

/// A token's columns at `at..at + 7` ([`token_columns!`]), with its verifier.
fn token_at(keys: &ServiceKeys, row: &Row, at: usize) -> StoreResult<TokenRow> {
    let verifier: &[u8] = col(row, at + 2, WHAT)?;
    let record = TokenRecord::from_stored(
        keys,
        &StoredToken {
            token_id: col(row, at, WHAT)?,
            principal_id: col(row, at + 1, WHAT)?,
            verifier,
            created_at_ms: col(row, at + 3, WHAT)?,
            expires_at_ms: col(row, at + 4, WHAT)?,
            revoked_at_ms: col(row, at + 5, WHAT)?,
            mac: col(row, at + 6, WHAT)?,
        },
    )?;
    let verifier = verifier
        .try_into()
        .map_err(|_| corrupt("a token verifier"))?;
    Ok(TokenRow { record, verifier })
}

/// The MACs of principal rows, as a statement binds them.
fn principal_macs(keys: &ServiceKeys, rows: &[PrincipalRecord]) -> Vec<Vec<u8>> {
    rows.iter()
        .map(|p| principal_mac(keys, p).to_vec())
        .collect()
}

/// The MACs of token rows, as a statement binds them.
fn token_macs(keys: &ServiceKeys, rows: &[TokenRow]) -> Vec<Vec<u8>> {
    rows.iter()
        .map(|t| token_mac(keys, &t.record, &t.verifier).to_vec())
        .collect()
}

/// Reads the principals and tokens `needs` asks for into `committed` (see
/// [`Committed::principals`]), one statement each.
pub(crate) async fn read_committed(
    client: &impl GenericClient,
    keys: &ServiceKeys,
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
            concat!(
                "SELECT ",
                principal_columns!(),
                " FROM principals
             WHERE principal_id = ANY($1)
                OR (revoked_at_ms IS NULL
                    AND (name = ANY($2) OR spiffe_id = ANY($3)
                         OR ($4 AND role = $5 AND tenants = $6)))"
            ),
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
            let p = principal_at(keys, row, 0)?;
            committed.principals.insert(p.principal_id.clone(), p);
        }
    }
    if !needs.tokens.is_empty() {
        let ids: Vec<&str> = needs.tokens.iter().map(TokenId::as_str).collect();
        let statement = concat!(
            "SELECT ",
            token_columns!(),
            " FROM principal_tokens WHERE token_id = ANY($1)"
        );
        let rows = sql::rows(client, statement, &[&ids], WHAT).await?;
        for row in &rows {
            let t = token_at(keys, row, 0)?;
            committed.tokens.insert(t.record.token_id.clone(), t);
        }
    }
    Ok(())
}

/// Writes the principal and token rows of a decided batch, one statement per non-empty group:
/// new principals, new tokens, then revocations (a batch may revoke what it created), and
/// advances the authentication epoch in the same transaction when it revoked anything.
pub(crate) async fn write(
    client: &impl GenericClient,
    keys: &ServiceKeys,
    writes: &Writes,
) -> StoreResult<()> {
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
        let macs = principal_macs(keys, rows);
        sql::execute(
            client,
            "INSERT INTO principals (principal_id, name, role, tenants, spiffe_id, created_at_ms,
                                     expires_at_ms, mac)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::bigint[], $7::bigint[], $8::bytea[])",
            &[
                &ids,
                &names,
                &roles,
                &tenants,
                &spiffe_ids,
                &created,
                &expires,
                &macs,
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
        let macs = token_macs(keys, rows);
        sql::execute(
            client,
            "INSERT INTO principal_tokens (token_id, principal_id, verifier, created_at_ms,
                                           expires_at_ms, mac)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bigint[],
                                  $5::bigint[], $6::bytea[])",
            &[&ids, &owners, &verifiers, &created, &expires, &macs],
            "token write",
        )
        .await?;
    }
    if !writes.revoked_principals.is_empty() {
        let rows = &writes.revoked_principals;
        let ids: Vec<&str> = rows.iter().map(|p| p.principal_id.as_str()).collect();
        let at: Vec<Option<i64>> = rows
            .iter()
            .map(|p| p.revoked_at_ms.map(to_db_saturating))
            .collect();
        let macs = principal_macs(keys, rows);
        sql::execute(
            client,
            "UPDATE principals SET revoked_at_ms = r.at, mac = r.mac
             FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS r(id, at, mac)
             WHERE principals.principal_id = r.id AND principals.revoked_at_ms IS NULL",
            &[&ids, &at, &macs],
            "principal revocation",
        )
        .await?;
    }
    if !writes.revoked_tokens.is_empty() {
        let rows = &writes.revoked_tokens;
        let ids: Vec<&str> = rows.iter().map(|t| t.record.token_id.as_str()).collect();
        let at: Vec<Option<i64>> = rows
            .iter()
            .map(|t| t.record.revoked_at_ms.map(to_db_saturating))
            .collect();
        let macs = token_macs(keys, rows);
        sql::execute(
            client,
            "UPDATE principal_tokens SET revoked_at_ms = r.at, mac = r.mac
             FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS r(id, at, mac)
             WHERE principal_tokens.token_id = r.id AND principal_tokens.revoked_at_ms IS NULL",
            &[&ids, &at, &macs],
            "token revocation",
        )
        .await?;
    }
    if writes.revokes_credentials() {
        sql::execute(
            client,
            "UPDATE auth_epoch SET epoch = epoch + $1 WHERE id = 0",
            &[&revocation_step()?],
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
    keys: &ServiceKeys,
    verifier: &[u8; 32],
) -> StoreResult<Option<Credential>> {
    let row = sql::row(client, CREDENTIAL_SQL, &[&&verifier[..]], WHAT).await?;
    row.map(|row| {
        Ok(Credential::new(
            principal_at(keys, &row, 0)?,
            token_at(keys, &row, PRINCIPAL_COLUMN_COUNT)?.record,
        ))
    })
    .transpose()
}

/// The unrevoked principal bound to `spiffe_id`.
pub(crate) async fn by_spiffe(
    client: &impl GenericClient,
    keys: &ServiceKeys,
    spiffe_id: &SpiffeId,
) -> StoreResult<Option<PrincipalRecord>> {
    let row = sql::row(
        client,
        "SELECT principal_id, name, role, tenants, spiffe_id, created_at_ms, expires_at_ms,
                revoked_at_ms, mac
         FROM principals WHERE spiffe_id = $1 AND revoked_at_ms IS NULL",
        &[&spiffe_id.as_str()],
        WHAT,
    )
    .await?;
    row.map(|row| principal_at(keys, &row, 0)).transpose()
}

/// Every principal with its tokens, in one statement ([`LISTING_SQL`]).
pub(crate) async fn listing(
    client: &impl GenericClient,
    keys: &ServiceKeys,
) -> StoreResult<Vec<PrincipalListing>> {
    let rows = sql::rows(client, LISTING_SQL, &[], WHAT).await?;
    group_listing(rows.iter().map(|row| {
        let at = PRINCIPAL_COLUMN_COUNT;
        let token = match col::<Option<&str>>(row, at, WHAT)? {
            Some(_) => Some(token_at(keys, row, at)?.record),
            None => None,
        };
        Ok((principal_at(keys, row, 0)?, token))
    }))
}
