//! Writes outside the commit path: caller tokens and retention. Neither carries an audit record,
//! so neither goes through the writer; each is one statement on a pooled connection.

use deadpool_postgres::GenericClient;
use selene_kms_core::Role;
use selene_kms_store::backend::StoreResult;

use crate::codec::to_db_saturating;
use crate::sql;

/// Registers a caller token by its hash; a hash already there is `AlreadyExists`.
pub(crate) async fn put_token(
    client: &impl GenericClient,
    token_hash: &[u8; 32],
    role: Role,
    label: &str,
) -> StoreResult<()> {
    sql::execute(
        client,
        "INSERT INTO tokens (token_hash, role, label) VALUES ($1, $2, $3)",
        &[&&token_hash[..], &role.name(), &label],
        "token write",
    )
    .await
    .map(|_| ())
}

/// Removes idempotency records made before `idempotency_before_ms` and revocations of handles
/// and credentials that expired before `revocations_before_ms`; returns how many.
pub(crate) async fn prune(
    client: &impl GenericClient,
    idempotency_before_ms: u64,
    revocations_before_ms: u64,
) -> StoreResult<u64> {
    let records = sql::execute(
        client,
        "DELETE FROM idempotency WHERE created_at_ms < $1",
        &[&to_db_saturating(idempotency_before_ms)],
        "prune",
    )
    .await?;
    let revocations = sql::execute(
        client,
        "DELETE FROM revoked_refs WHERE expires_at_ms < $1",
        &[&to_db_saturating(revocations_before_ms)],
        "prune",
    )
    .await?;
    Ok(records + revocations)
}
