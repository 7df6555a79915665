//! Conversions between store values and PostgreSQL columns: unsigned numbers as `BIGINT`, typed
//! column reads whose failure names what was read.

use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use super::error::pg_error;
pub(super) use crate::codec::{from_db, to_db, to_db_saturating};
use crate::error::StoreResult;

/// Column `index` of `row` as `T`.
pub(super) fn col<'a, T: FromSql<'a>>(row: &'a Row, index: usize, what: &str) -> StoreResult<T> {
    row.try_get(index).map_err(|e| pg_error(what, &e))
}

/// Column `index` of `row`, a `BIGINT` holding a `u64`.
pub(super) fn col_u64(row: &Row, index: usize, what: &str) -> StoreResult<u64> {
    from_db(col(row, index, what)?)
}
