//! Principals and tokens as both databases store them: plain column values in, validated
//! records out. Decoding is written once here so that the backends cannot disagree on what a
//! stored row means, and a row that does not decode is `Corrupt` in both.
//!
//! Every row carries a MAC under a key derived from the service secret
//! ([`ServiceKeys::row_mac`]) over what it says: who the principal is, its role, tenants and
//! lifetime; which principal a token speaks for, under which verifier, and for how long. A row
//! written or edited by someone without the root key fails its MAC and is `Corrupt`: it
//! authenticates nobody and widens nothing. (Putting back an older genuine row is a rollback,
//! which only the audit chain can reveal.)

use selene_kms_core::{
    Column, PrincipalId, PrincipalName, Role, ServiceKeys, SpiffeId, TenantScope, TokenId,
};

use crate::codec::from_db;
use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::model::{Credential, PrincipalListing, PrincipalRecord, TokenRecord};

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
    /// `mac`: see [`principal_mac`].
    pub mac: &'a [u8],
}

/// The columns of a `principal_tokens` row, as read.
pub struct StoredToken<'a> {
    /// `token_id`.
    pub token_id: &'a str,
    /// `principal_id`.
    pub principal_id: &'a str,
    /// `verifier`.
    pub verifier: &'a [u8],
    /// `created_at_ms`.
    pub created_at_ms: i64,
    /// `expires_at_ms`.
    pub expires_at_ms: Option<i64>,
    /// `revoked_at_ms`.
    pub revoked_at_ms: Option<i64>,
    /// `mac`: see [`token_mac`].
    pub mac: &'a [u8],
}

/// The columns of a `principals` row in the order every query selects them, `mac` last, as a
/// literal for `concat!` (statements are `&'static str`).
#[macro_export]
macro_rules! principal_columns {
    () => {
        "principal_id, name, role, tenants, spiffe_id, created_at_ms, expires_at_ms, \
         revoked_at_ms, mac"
    };
}
/// A principal's columns (as `p`) then its token's (as `t`), in the order the decoders read.
macro_rules! joined_columns {
    () => {
        "p.principal_id, p.name, p.role, p.tenants, p.spiffe_id, p.created_at_ms, \
         p.expires_at_ms, p.revoked_at_ms, p.mac, t.token_id, t.principal_id, t.verifier, \
         t.created_at_ms, t.expires_at_ms, t.revoked_at_ms, t.mac"
    };
}

/// How many columns [`principal_columns!`](crate::principal_columns) names.
pub const PRINCIPAL_COLUMN_COUNT: usize = 9;
/// The columns of a `principal_tokens` row in the order every query selects them, `mac` last,
/// as a literal for `concat!`.
#[macro_export]
macro_rules! token_columns {
    () => {
        "token_id, principal_id, verifier, created_at_ms, expires_at_ms, revoked_at_ms, mac"
    };
}

/// What a principal row's MAC covers: every column of it.
pub fn principal_mac(keys: &ServiceKeys, p: &PrincipalRecord) -> [u8; 32] {
    let tenants = tenants_column(&p.tenants);
    keys.row_mac(
        "principals",
        &[
            Column::Text(p.principal_id.as_str()),
            Column::Text(p.name.as_str()),
            Column::Text(p.role.name()),
            Column::Text(&tenants),
            Column::OptText(p.spiffe_id.as_ref().map(SpiffeId::as_str)),
            Column::Number(p.created_at_ms),
            Column::OptNumber(p.expires_at_ms),
            Column::OptNumber(p.revoked_at_ms),
        ],
    )
}

/// What a token row's MAC covers: every column of it, the verifier included, so that no
/// verifier can be moved to another principal's row.
pub fn token_mac(keys: &ServiceKeys, t: &TokenRecord, verifier: &[u8]) -> [u8; 32] {
    keys.row_mac(
        "principal_tokens",
        &[
            Column::Text(t.token_id.as_str()),
            Column::Text(t.principal_id.as_str()),
            Column::Bytes(verifier),
            Column::Number(t.created_at_ms),
            Column::OptNumber(t.expires_at_ms),
            Column::OptNumber(t.revoked_at_ms),
        ],
    )
}

fn forged(what: &str) -> StoreError {
    StoreError::new(
        ErrorKind::Corrupt,
        format!("a stored {what} fails its MAC: written or edited without the root key"),
    )
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
    /// A principal from its stored columns; one that no longer validates, or fails its MAC, is
    /// corrupt.
    pub fn from_stored(keys: &ServiceKeys, row: &StoredPrincipal<'_>) -> StoreResult<Self> {
        let bad = || corrupt("principal");
        let tenants: Vec<String> = serde_json::from_str(row.tenants).map_err(|_| bad())?;
        let principal = Self {
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
        };
        let expected = principal_mac(keys, &principal);
        if bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], row.mac)) {
            Ok(principal)
        } else {
            Err(forged("principal"))
        }
    }
}

impl TokenRecord {
    /// A token from its stored columns; one that no longer validates, or fails its MAC, is
    /// corrupt.
    pub fn from_stored(keys: &ServiceKeys, row: &StoredToken<'_>) -> StoreResult<Self> {
        let bad = || corrupt("token");
        let token = Self {
            token_id: TokenId::try_from(row.token_id).map_err(|_| bad())?,
            principal_id: PrincipalId::try_from(row.principal_id).map_err(|_| bad())?,
            created_at_ms: from_db(row.created_at_ms)?,
            expires_at_ms: optional_time(row.expires_at_ms)?,
            revoked_at_ms: optional_time(row.revoked_at_ms)?,
        };
        let expected = token_mac(keys, &token, row.verifier);
        if bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], row.mac)) {
            Ok(token)
        } else {
            Err(forged("token"))
        }
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

/// The one statement both backends list principals with: each principal's columns
/// ([`principal_columns!`](crate::principal_columns)) then its token's
/// ([`token_columns!`](crate::token_columns); NULL for a principal without
/// tokens), principals by creation time then id, tokens oldest first; one statement, so one
/// consistent view of both tables.
pub const LISTING_SQL: &str = concat!(
    "SELECT ",
    joined_columns!(),
    " FROM principals p LEFT JOIN principal_tokens t ON t.principal_id = p.principal_id
    ORDER BY p.created_at_ms, p.principal_id, t.created_at_ms, t.token_id"
);

/// The statement both backends look a token verifier up with (`$1`, which SQLite also reads as
/// the first parameter): the principal's columns, then the token's.
pub const CREDENTIAL_SQL: &str = concat!(
    "SELECT ",
    joined_columns!(),
    " FROM principal_tokens t JOIN principals p ON p.principal_id = t.principal_id
    WHERE t.verifier = $1"
);

/// A token as its principal leaves it: revoked when the principal was (revoking a principal
/// ends every token of it without touching their rows).
fn as_revoked_with(mut token: TokenRecord, principal: &PrincipalRecord) -> TokenRecord {
    token.revoked_at_ms = token.revoked_at_ms.or(principal.revoked_at_ms);
    token
}

impl Credential {
    /// A token and its principal as read, the token revoked when the principal was.
    pub fn new(principal: PrincipalRecord, token: TokenRecord) -> Self {
        Self {
            token: as_revoked_with(token, &principal),
            principal,
        }
    }
}

/// Groups the decoded rows of [`LISTING_SQL`] into one listing per principal: a principal's rows
/// are adjacent, one per token or one without a token. A revoked principal's tokens are listed
/// as revoked when it was (revoking a principal ends every token of it without touching their
/// rows).
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
            last.tokens.push(as_revoked_with(token, &last.principal));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use selene_kms_core::{ServiceSecret, TenantId};

    use super::*;

    fn keys() -> ServiceKeys {
        ServiceKeys::derive(&ServiceSecret::from_bytes([7; 32]))
    }

    fn row<'a>(tenants: &'a str, role: &'a str, mac: &'a [u8]) -> StoredPrincipal<'a> {
        StoredPrincipal {
            principal_id: "kp_0123456789abcdef0123456789abcdef",
            name: "ci",
            role,
            tenants,
            spiffe_id: Some("spiffe://example.org/ci"),
            created_at_ms: 5,
            expires_at_ms: None,
            revoked_at_ms: Some(9),
            mac,
        }
    }

    /// The MAC a row with these columns would carry, computed from the record it decodes to.
    fn mac_of(keys: &ServiceKeys, tenants: &str, role: &str) -> [u8; 32] {
        let scope = TenantScope::from_list(
            &serde_json::from_str::<Vec<String>>(tenants).unwrap_or_default(),
        )
        .expect("scope");
        let record = PrincipalRecord {
            principal_id: PrincipalId::try_from("kp_0123456789abcdef0123456789abcdef").expect("id"),
            name: PrincipalName::try_from("ci").expect("name"),
            role: Role::from_name(role).expect("role"),
            tenants: scope,
            spiffe_id: Some(SpiffeId::try_from("spiffe://example.org/ci").expect("spiffe")),
            created_at_ms: 5,
            expires_at_ms: None,
            revoked_at_ms: Some(9),
        };
        principal_mac(keys, &record)
    }

    #[test]
    fn stored_principals_round_trip_and_bad_rows_are_corrupt() {
        let keys = keys();
        let all = tenants_column(&TenantScope::All);
        assert_eq!(all, r#"["*"]"#);
        let mac = mac_of(&keys, &all, "admin");
        let p = PrincipalRecord::from_stored(&keys, &row(&all, "admin", &mac)).expect("decodes");
        assert_eq!(
            (p.role, p.tenants, p.revoked_at_ms),
            (Role::Admin, TenantScope::All, Some(9))
        );
        let acme = TenantScope::Only([TenantId::try_from("acme").expect("tenant")].into());
        let listed = tenants_column(&acme);
        let mac = mac_of(&keys, &listed, "os");
        let p = PrincipalRecord::from_stored(&keys, &row(&listed, "os", &mac)).expect("decodes");
        assert_eq!(p.tenants, acme);
        for (tenants, role) in [(all.as_str(), "root"), ("[]", "os"), ("*", "os")] {
            let e = PrincipalRecord::from_stored(&keys, &row(tenants, role, &mac))
                .expect_err("corrupt");
            assert_eq!(e.kind, ErrorKind::Corrupt, "{tenants} {role}");
        }
        let negative = StoredPrincipal {
            created_at_ms: -1,
            ..row(&all, "admin", &mac)
        };
        let e = PrincipalRecord::from_stored(&keys, &negative).expect_err("corrupt");
        assert_eq!(e.kind, ErrorKind::Corrupt);
        let token = StoredToken {
            token_id: "kp_0123456789abcdef0123456789abcdef",
            principal_id: "kp_0123456789abcdef0123456789abcdef",
            verifier: &[1; 32],
            created_at_ms: 1,
            expires_at_ms: None,
            revoked_at_ms: None,
            mac: &[0; 32],
        };
        let e = TokenRecord::from_stored(&keys, &token).expect_err("a token id has its own prefix");
        assert_eq!(e.kind, ErrorKind::Corrupt);
    }

    #[test]
    fn a_row_edited_or_written_without_the_key_fails_its_mac() {
        let keys = keys();
        let listed = tenants_column(&TenantScope::from_list(&["acme"]).expect("scope"));
        let mac = mac_of(&keys, &listed, "os");
        assert!(PrincipalRecord::from_stored(&keys, &row(&listed, "os", &mac)).is_ok());
        // Widened: the role or the scope edited under the old MAC.
        let all = tenants_column(&TenantScope::All);
        for (tenants, role) in [(listed.as_str(), "admin"), (all.as_str(), "os")] {
            let e =
                PrincipalRecord::from_stored(&keys, &row(tenants, role, &mac)).expect_err("edited");
            assert!(e.message.contains("fails its MAC"), "{}", e.message);
        }
        // Un-revoked, or given a MAC of another store.
        let unrevoked = StoredPrincipal {
            revoked_at_ms: None,
            ..row(&listed, "os", &mac)
        };
        assert!(PrincipalRecord::from_stored(&keys, &unrevoked).is_err());
        let other = ServiceKeys::derive(&ServiceSecret::from_bytes([8; 32]));
        assert!(PrincipalRecord::from_stored(&other, &row(&listed, "os", &mac)).is_err());

        // A token's verifier cannot be moved to another token's row.
        let record = TokenRecord {
            token_id: TokenId::try_from("kt_0123456789abcdef0123456789abcdef").expect("id"),
            principal_id: PrincipalId::try_from("kp_0123456789abcdef0123456789abcdef").expect("id"),
            created_at_ms: 1,
            expires_at_ms: None,
            revoked_at_ms: None,
        };
        let mac = token_mac(&keys, &record, &[1; 32]);
        let stored = |verifier: &'static [u8], principal_id| StoredToken {
            token_id: "kt_0123456789abcdef0123456789abcdef",
            principal_id,
            verifier,
            created_at_ms: 1,
            expires_at_ms: None,
            revoked_at_ms: None,
            mac: &mac,
        };
        let own = "kp_0123456789abcdef0123456789abcdef";
        assert_eq!(
            TokenRecord::from_stored(&keys, &stored(&[1; 32], own)).ok(),
            Some(record)
        );
        assert!(TokenRecord::from_stored(&keys, &stored(&[2; 32], own)).is_err());
        let elsewhere = "kp_ffffffffffffffffffffffffffffffff";
        assert!(TokenRecord::from_stored(&keys, &stored(&[1; 32], elsewhere)).is_err());
    }
}
