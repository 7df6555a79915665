//! Principals and tokens as both databases store them: plain column values in, validated
//! records out. Decoding is written once here so that the backends cannot disagree on what a
//! stored row means, and a row that does not decode is `Corrupt` in both.

use selene_kms_core::{PrincipalId, PrincipalName, Role, SpiffeId, TenantScope, TokenId};

use crate::codec::from_db;
use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::model::{PrincipalListing, PrincipalRecord, TokenRecord};

/// The columns of a `principals` row, as read.
pub struct StoredPrincipal<'a> {
    /// `principal_id`.
    pub principal_id: &'a str,
    /// `name`.
    pub name: &'a str,
    /// `role`: a [`Role::name`].
    pub role: &'a str,
    /// `tenants`: the scope as a JSON list (see [`tenants_column`]).
    pub tenants: &'a str,
    /// `spiffe_id`.
    pub spiffe_id: Option<&'a str>,
    /// `created_at_ms`.
    pub created_at_ms: i64,
    /// `expires_at_ms`.
    pub expires_at_ms: Option<i64>,
    /// `revoked_at_ms`.
    pub revoked_at_ms: Option<i64>,
}

/// The columns of a `principal_tokens` row, as read (the verifier aside).
pub struct StoredToken<'a> {
    /// `token_id`.
    pub token_id: &'a str,
    /// `principal_id`.
    pub principal_id: &'a str,
    /// `created_at_ms`.
    pub created_at_ms: i64,
    /// `expires_at_ms`.
    pub expires_at_ms: Option<i64>,
    /// `revoked_at_ms`.
    pub revoked_at_ms: Option<i64>,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::new(
        ErrorKind::Corrupt,
        format!("a stored {what} does not parse"),
    )
}

fn optional_time(value: Option<i64>) -> StoreResult<Option<u64>> {
    value.map(from_db).transpose()
}

impl PrincipalRecord {
    /// A principal from its stored columns; one that no longer validates is corrupt.
    pub fn from_stored(row: &StoredPrincipal<'_>) -> StoreResult<Self> {
        let bad = || corrupt("principal");
        let tenants: Vec<String> = serde_json::from_str(row.tenants).map_err(|_| bad())?;
        Ok(Self {
            principal_id: PrincipalId::try_from(row.principal_id).map_err(|_| bad())?,
            name: PrincipalName::try_from(row.name).map_err(|_| bad())?,
            role: Role::from_name(row.role).ok_or_else(bad)?,
            tenants: TenantScope::from_list(&tenants).map_err(|_| bad())?,
            spiffe_id: row
                .spiffe_id
                .map(SpiffeId::try_from)
                .transpose()
                .map_err(|_| bad())?,
            created_at_ms: from_db(row.created_at_ms)?,
            expires_at_ms: optional_time(row.expires_at_ms)?,
            revoked_at_ms: optional_time(row.revoked_at_ms)?,
        })
    }
}

impl TokenRecord {
    /// A token from its stored columns; one that no longer validates is corrupt.
    pub fn from_stored(row: &StoredToken<'_>) -> StoreResult<Self> {
        let bad = || corrupt("token");
        Ok(Self {
            token_id: TokenId::try_from(row.token_id).map_err(|_| bad())?,
            principal_id: PrincipalId::try_from(row.principal_id).map_err(|_| bad())?,
            created_at_ms: from_db(row.created_at_ms)?,
            expires_at_ms: optional_time(row.expires_at_ms)?,
            revoked_at_ms: optional_time(row.revoked_at_ms)?,
        })
    }
}

/// A scope as the `tenants` column stores it: the JSON list of [`TenantScope::to_list`]. The
/// encoding is canonical (`["*"]` for every tenant), so a query may compare it as text.
pub fn tenants_column(scope: &TenantScope) -> String {
    serde_json::Value::from(scope.to_list()).to_string()
}

/// What the `role` and `tenants` columns of an admin for every tenant hold: the rows a batch
/// reads when [`Needs::global_admins`](crate::backend::Needs::global_admins) is set.
pub fn global_admin_columns() -> (&'static str, String) {
    (Role::Admin.name(), tenants_column(&TenantScope::All))
}

/// The one statement both backends list principals with: each principal's columns then its
/// token's (none for a principal without tokens), principals by creation time then id, tokens
/// oldest first; one statement, so one consistent view of both tables.
pub const LISTING_SQL: &str = "SELECT p.principal_id, p.name, p.role, p.tenants, p.spiffe_id,
        p.created_at_ms, p.expires_at_ms, p.revoked_at_ms,
        t.token_id, t.principal_id, t.created_at_ms, t.expires_at_ms, t.revoked_at_ms
    FROM principals p LEFT JOIN principal_tokens t ON t.principal_id = p.principal_id
    ORDER BY p.created_at_ms, p.principal_id, t.created_at_ms, t.token_id";

/// Groups the decoded rows of [`LISTING_SQL`] into one listing per principal: a principal's rows
/// are adjacent, one per token or one without a token.
pub fn group_listing(
    rows: impl IntoIterator<Item = StoreResult<(PrincipalRecord, Option<TokenRecord>)>>,
) -> StoreResult<Vec<PrincipalListing>> {
    let mut out: Vec<PrincipalListing> = Vec::new();
    for row in rows {
        let (principal, token) = row?;
        match out.last_mut() {
            Some(last) if last.principal.principal_id == principal.principal_id => {}
            _ => out.push(PrincipalListing {
                principal,
                tokens: Vec::new(),
            }),
        }
        if let (Some(last), Some(token)) = (out.last_mut(), token) {
            last.tokens.push(token);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use selene_kms_core::TenantId;

    use super::*;

    fn row<'a>(tenants: &'a str, role: &'a str) -> StoredPrincipal<'a> {
        StoredPrincipal {
            principal_id: "kp_0123456789abcdef0123456789abcdef",
            name: "ci",
            role,
            tenants,
            spiffe_id: Some("spiffe://example.org/ci"),
            created_at_ms: 5,
            expires_at_ms: None,
            revoked_at_ms: Some(9),
        }
    }

    #[test]
    fn stored_principals_round_trip_and_bad_rows_are_corrupt() {
        let all = tenants_column(&TenantScope::All);
        assert_eq!(all, r#"["*"]"#);
        let p = PrincipalRecord::from_stored(&row(&all, "admin")).expect("decodes");
        assert_eq!(
            (p.role, p.tenants, p.revoked_at_ms),
            (Role::Admin, TenantScope::All, Some(9))
        );
        let acme = TenantScope::Only([TenantId::try_from("acme").expect("tenant")].into());
        let listed = tenants_column(&acme);
        let p = PrincipalRecord::from_stored(&row(&listed, "os")).expect("decodes");
        assert_eq!(p.tenants, acme);
        for (tenants, role) in [(all.as_str(), "root"), ("[]", "os"), ("*", "os")] {
            let e = PrincipalRecord::from_stored(&row(tenants, role)).expect_err("corrupt");
            assert_eq!(e.kind, ErrorKind::Corrupt, "{tenants} {role}");
        }
        let negative = StoredPrincipal {
            created_at_ms: -1,
            ..row(&all, "admin")
        };
        let e = PrincipalRecord::from_stored(&negative).expect_err("corrupt");
        assert_eq!(e.kind, ErrorKind::Corrupt);
        let token = StoredToken {
            token_id: "kp_0123456789abcdef0123456789abcdef",
            principal_id: "kp_0123456789abcdef0123456789abcdef",
            created_at_ms: 1,
            expires_at_ms: None,
            revoked_at_ms: None,
        };
        let e = TokenRecord::from_stored(&token).expect_err("a token id has its own prefix");
        assert_eq!(e.kind, ErrorKind::Corrupt);
    }
}
