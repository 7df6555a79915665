//! Running statements: prepared once per connection (the pool caches them), errors mapped.
//!
//! Every statement text is a `&'static str`: values only ever travel as parameters.

use deadpool_postgres::GenericClient;
use futures_util::future::join_all;
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

/// A statement of a [`flight`]: its text, its parameters, and what it is (for errors).
pub(crate) struct Statement<'a> {
    pub(crate) sql: &'static str,
    pub(crate) params: Vec<Box<dyn ToSql + Sync + Send + 'a>>,
    pub(crate) what: &'static str,
}

impl<'a> Statement<'a> {
    pub(crate) fn new(
        sql: &'static str,
        params: Vec<Box<dyn ToSql + Sync + Send + 'a>>,
        what: &'static str,
    ) -> Self {
        Self { sql, params, what }
    }
}

/// Statements sent at once at most: fewer than the joins' small-set bound, so that they poll
/// them in order.
const MAX_FLIGHT: usize = 16;

/// Runs statements in one round trip rather than one each, and answers their rows in order.
///
/// PostgreSQL runs a connection's statements in the order they arrive, each after the last
/// finished (a statement after a `FOR UPDATE` runs once the lock is held), and an error aborts
/// the transaction, failing every later one. Every statement is prepared first, in one round
/// trip when any is new to the connection; then all are sent in order without waiting for each
/// other's answers (the client sends a request on its first poll, and the join polls them in
/// order). Preparing first keeps that order even when only some statements were cached.
pub(crate) async fn flight(
    client: &impl GenericClient,
    statements: &[Statement<'_>],
) -> StoreResult<Vec<Vec<Row>>> {
    let mut answers = Vec::with_capacity(statements.len());
    for chunk in statements.chunks(MAX_FLIGHT) {
        // Every statement prepared before any runs; the first error in statement order.
        let prepared = join_all(chunk.iter().map(|s| async move {
            client
                .prepare_cached(s.sql)
                .await
                .map_err(|e| pg_error(s.what, &e))
        }))
        .await
        .into_iter()
        .collect::<StoreResult<Vec<_>>>()?;
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = chunk
            .iter()
            .map(|s| s.params.iter().map(|p| &**p as _).collect())
            .collect();
        // Every answer, then the first error in statement order: the statement that failed,
        // not a later one refused because the transaction had already aborted.
        let results = join_all(chunk.iter().zip(&prepared).zip(&params).map(
            |((s, stmt), params)| async move {
                client
                    .query(stmt, params)
                    .await
                    .map_err(|e| pg_error(s.what, &e))
            },
        ))
        .await;
        for result in results {
            answers.push(result?);
        }
    }
    Ok(answers)
}
