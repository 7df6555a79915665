//! Writes outside the commit path: retention. It carries no audit record, so it does not go
//! through the writer; each statement runs on a pooled connection.

use deadpool_postgres::GenericClient;
use selene_kms_store::backend::StoreResult;

use crate::codec::to_db_saturating;
use crate::sql;

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
