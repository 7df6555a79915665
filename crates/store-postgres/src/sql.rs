//! Running statements: prepared once per connection (the pool caches them), errors mapped.
//!
//! Every statement text is a `&'static str`: values only ever travel as parameters.

use deadpool_postgres::GenericClient;
use selene_kms_store::backend::StoreResult;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::pg_error;

/// Parameters of a statement.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Every row of a query.
pub(crate) async fn rows(
    client: &impl GenericClient,
    sql: &'static str,
    params: Params<'_>,
    what: &str,
) -> StoreResult<Vec<Row>> {
    let stmt = client
        .prepare_cached(sql)
        .await
        .map_err(|e| pg_error(what, &e))?;
    client
        .query(&stmt, params)
        .await
        .map_err(|e| pg_error(what, &e))
}

/// At most one row of a query.
pub(crate) async fn row(
    client: &impl GenericClient,
    sql: &'static str,
    params: Params<'_>,
    what: &str,
) -> StoreResult<Option<Row>> {
    let stmt = client
        .prepare_cached(sql)
        .await
        .map_err(|e| pg_error(what, &e))?;
    client
        .query_opt(&stmt, params)
        .await
        .map_err(|e| pg_error(what, &e))
}

/// Runs a statement; returns the number of rows it touched.
pub(crate) async fn execute(
    client: &impl GenericClient,
    sql: &'static str,
    params: Params<'_>,
    what: &str,
) -> StoreResult<u64> {
    let stmt = client
        .prepare_cached(sql)
        .await
        .map_err(|e| pg_error(what, &e))?;
    client
        .execute(&stmt, params)
        .await
        .map_err(|e| pg_error(what, &e))
}
