//! Conversions between store values and PostgreSQL columns: unsigned numbers as `BIGINT`, typed
//! column reads whose failure names what was read.

use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use super::error::pg_error;
use crate::error::{ErrorKind, StoreError, StoreResult};

/// A `u64` as a `BIGINT`; values past `i64::MAX` do not fit the schema.
pub(super) fn to_db(value: u64) -> StoreResult<i64> {
    i64::try_from(value)
        .map_err(|_| StoreError::new(ErrorKind::Invalid, "a number is too large to store"))
}

/// A `u64` as a `BIGINT`, saturating: for expiry times, where "never" may be `u64::MAX`.
pub(super) fn to_db_saturating(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored `BIGINT` as a `u64`; a negative one means the row was altered.
pub(super) fn from_db(value: i64) -> StoreResult<u64> {
    u64::try_from(value)
        .map_err(|_| StoreError::new(ErrorKind::Corrupt, "a stored number is negative"))
}

/// Column `index` of `row`.
pub(super) fn col<'a, T: FromSql<'a>>(row: &'a Row, index: usize, what: &str) -> StoreResult<T> {
    row.try_get(index).map_err(|e| pg_error(what, &e))
}

/// Column `index` of `row`, a `BIGINT` holding a `u64`.
pub(super) fn col_u64(row: &Row, index: usize, what: &str) -> StoreResult<u64> {
    from_db(col(row, index, what)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_or_refuse() {
        assert_eq!(to_db(7).and_then(from_db), Ok(7));
        assert_eq!(to_db(u64::MAX).map_err(|e| e.kind), Err(ErrorKind::Invalid));
        assert_eq!(to_db_saturating(u64::MAX), i64::MAX);
        assert_eq!(from_db(-1).map_err(|e| e.kind), Err(ErrorKind::Corrupt));
    }
}
