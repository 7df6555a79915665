//! Numbers as both databases store them: `u64` in the model, a signed 64-bit integer in SQL.
//! Every conversion is checked: a value too large to store is refused, and a negative stored
//! value (which only tampering or corruption can produce) is never wrapped into a huge one.

use crate::error::{ErrorKind, StoreError, StoreResult};

/// A number to store; one beyond `i64::MAX` is refused.
pub fn to_db(value: u64) -> StoreResult<i64> {
    i64::try_from(value)
        .map_err(|_| StoreError::new(ErrorKind::Invalid, "a number is too large to store"))
}

/// A number to store where "later than can be stored" means "never" (an expiry, a cut-off).
pub fn to_db_saturating(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored number; a negative one is corrupt.
pub fn from_db(value: i64) -> StoreResult<u64> {
    u64::try_from(value)
        .map_err(|_| StoreError::new(ErrorKind::Corrupt, "a stored number is negative"))
}

/// A tenant (or the system chain) as both databases store its id; one that does not parse is
/// corrupt.
pub fn stored_tenant(text: &str) -> StoreResult<selene_kms_core::TenantId> {
    selene_kms_core::TenantId::chain(text)
        .map_err(|_| StoreError::new(ErrorKind::Corrupt, "a stored tenant id is invalid"))
}

/// A value both databases store as JSON text (audit records, checkpoints, manifests); one that
/// does not parse is corrupt.
pub fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> StoreResult<T> {
    serde_json::from_str(text)
        .map_err(|_| StoreError::new(ErrorKind::Corrupt, format!("{what} does not parse")))
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
