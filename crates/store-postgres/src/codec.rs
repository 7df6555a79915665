//! Conversions between store values and PostgreSQL columns: unsigned numbers as `BIGINT`, typed
//! column reads whose failure names what was read.

use selene_kms_store::backend::StoreResult;
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use crate::error::pg_error;
pub(crate) use selene_kms_store::backend::{from_db, stored_tenant, to_db, to_db_saturating};

/// Column `index` of `row` as `T`.
pub(crate) fn col<'a, T: FromSql<'a>>(row: &'a Row, index: usize, what: &str) -> StoreResult<T> {
    row.try_get(index).map_err(|e| pg_error(what, &e))
}

/// Column `index` of `row`, a `BIGINT` holding a `u64`.
pub(crate) fn col_u64(row: &Row, index: usize, what: &str) -> StoreResult<u64> {
    from_db(col(row, index, what)?)
}
