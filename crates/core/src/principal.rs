//! Who calls: principals, their tenant scope, their workload identity, and the ids the KMS gives
//! them and their tokens.
//!
//! Everything here is validated on the way in, like every other id of the core, and a failed
//! validation names the rule that failed, never the value.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::diagnostics::Problem;
use crate::ids::{TenantId, text_id_impls};
use crate::refs::push_hex;

/// A principal's name: `[a-z0-9][a-z0-9._-]{0,63}`, unique in the store.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PrincipalName(String);

/// Longest principal name.
pub const MAX_PRINCIPAL_NAME_LEN: usize = 64;

text_id_impls!(PrincipalName);

impl TryFrom<&str> for PrincipalName {
    type Error = Problem;

    fn try_from(value: &str) -> Result<Self, Problem> {
        // The same alphabet and length as a tenant id.
        TenantId::try_from(value)?;
        Ok(Self(value.to_owned()))
    }
}

/// The tenants a principal may name: every tenant, or a set of them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TenantScope {
    /// `["*"]`.
    All,
    /// Exactly these tenants (never empty).
    Only(BTreeSet<TenantId>),
}

/// Most tenants one scope may list.
pub const MAX_SCOPE_TENANTS: usize = 256;

impl TenantScope {
    /// Validates a scope as sent: `["*"]`, or 1..=[`MAX_SCOPE_TENANTS`] tenant ids (duplicates
    /// collapse). `*` beside a tenant id is refused rather than read as either meaning.
    pub fn from_list<S: AsRef<str>>(list: &[S]) -> Result<Self, Problem> {
        match list {
            [] => Err(Problem::Empty),
            [only] if only.as_ref() == "*" => Ok(Self::All),
            _ if list.len() > MAX_SCOPE_TENANTS => Err(Problem::TooMany),
            _ => list
                .iter()
                .map(|t| TenantId::try_from(t.as_ref()))
                .collect::<Result<BTreeSet<_>, _>>()
                .map(Self::Only),
        }
    }

    /// Whether the scope covers `tenant`.
    pub fn allows(&self, tenant: &TenantId) -> bool {
        match self {
            Self::All => true,
            Self::Only(tenants) => tenants.contains(tenant),
        }
    }

    /// The scope as sent and stored: `["*"]` or the tenant ids in byte order.
    pub fn to_list(&self) -> Vec<String> {
        match self {
            Self::All => vec!["*".to_owned()],
            Self::Only(tenants) => tenants.iter().map(|t| t.as_str().to_owned()).collect(),
        }
    }
}

impl Serialize for TenantScope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_list().serialize(s)
    }
}

impl<'de> Deserialize<'de> for TenantScope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        Self::from_list(&list).map_err(|p| serde::de::Error::custom(format_args!("{p:?}")))
    }
}

/// A SPIFFE id that binds a principal to client certificates carrying it as their URI SAN:
/// `spiffe://` then a trust domain of `[a-z0-9.-_]` and a path of `/`-separated segments of
/// `[A-Za-z0-9.-_]`, with no `.`/`..` segment, query or fragment (the SPIFFE ID standard), at
/// most 2,048 bytes.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
pub struct SpiffeId(String);

/// Longest SPIFFE id.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

text_id_impls!(SpiffeId);

impl TryFrom<&str> for SpiffeId {
    type Error = Problem;

    fn try_from(value: &str) -> Result<Self, Problem> {
        if value.len() > MAX_SPIFFE_ID_LEN {
            return Err(Problem::TooLong);
        }
        let rest = value.strip_prefix("spiffe://").ok_or(Problem::BadShape)?;
        let (domain, path) = rest
            .split_once('/')
            .map_or((rest, None), |(d, p)| (d, Some(p)));
        let domain_ok = !domain.is_empty()
            && domain.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if !domain_ok {
            return Err(Problem::BadCharacter);
        }
        if let Some(path) = path {
            for segment in path.split('/') {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(Problem::BadShape);
                }
                let segment_ok = segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
                if !segment_ok {
                    return Err(Problem::BadCharacter);
                }
            }
        }
        Ok(Self(value.to_owned()))
    }
}

/// Declares a KMS-assigned id: a prefix and 32 lowercase hex digits (128 random bits).
macro_rules! assigned_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        pub struct $name(String);

        impl $name {
            /// The prefix every such id starts with.
            pub const PREFIX: &'static str = $prefix;

            /// The id made of 128 random bits.
            pub fn from_random(bytes: [u8; 16]) -> Self {
                let mut s = String::with_capacity(Self::PREFIX.len() + 32);
                s.push_str(Self::PREFIX);
                for b in bytes {
                    push_hex(&mut s, b);
                }
                Self(s)
            }
        }

        text_id_impls!($name);

        impl TryFrom<&str> for $name {
            type Error = Problem;

            fn try_from(value: &str) -> Result<Self, Problem> {
                let hex = value.strip_prefix(Self::PREFIX).ok_or(Problem::BadShape)?;
                let ok = hex.len() == 32
                    && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if ok { Ok(Self(value.to_owned())) } else { Err(Problem::BadShape) }
            }
        }
    };
}

assigned_id!(
    /// A principal's id: `kp_` and 32 hex digits.
    PrincipalId,
    "kp_"
);
assigned_id!(
    /// A token's id: `kt_` and 32 hex digits. Not secret: it names the token in listings, audit
    /// records and revocations.
    TokenId,
    "kt_"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_tenant_alphabet() {
        assert!(PrincipalName::try_from("ci-deployer.eu_1").is_ok());
        assert!(PrincipalName::try_from("a".repeat(64).as_str()).is_ok());
        assert_eq!(
            PrincipalName::try_from("a".repeat(65).as_str()),
            Err(Problem::TooLong)
        );
        for bad in ["", "-x", "X", "a b", "a/b", "é"] {
            assert!(PrincipalName::try_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_scope_is_every_tenant_or_a_nonempty_list() {
        let acme = TenantId::try_from("acme").expect("tenant");
        let other = TenantId::try_from("other").expect("tenant");
        assert_eq!(TenantScope::from_list(&["*"]), Ok(TenantScope::All));
        assert!(TenantScope::All.allows(&other));
        let scope = TenantScope::from_list(&["acme", "acme"]).expect("scope");
        assert!(scope.allows(&acme) && !scope.allows(&other));
        assert_eq!(scope.to_list(), vec!["acme".to_owned()]);
        assert_eq!(TenantScope::from_list::<&str>(&[]), Err(Problem::Empty));
        assert!(TenantScope::from_list(&["*", "acme"]).is_err());
        assert!(TenantScope::from_list(&["Acme"]).is_err());
        let many: Vec<String> = (0..=MAX_SCOPE_TENANTS).map(|i| format!("t{i}")).collect();
        assert_eq!(TenantScope::from_list(&many), Err(Problem::TooMany));
    }

    #[test]
    fn scopes_round_trip_through_json() {
        for text in [r#"["*"]"#, r#"["a","b"]"#] {
            let scope: TenantScope = serde_json::from_str(text).expect("parse");
            assert_eq!(serde_json::to_string(&scope).expect("json"), text);
        }
        assert!(serde_json::from_str::<TenantScope>(r#"[]"#).is_err());
    }

    #[test]
    fn spiffe_ids_follow_the_standard() {
        for ok in [
            "spiffe://example.org",
            "spiffe://example.org/ns/prod/sa/executor",
            "spiffe://prod-1.example_org/A.b-c_d",
        ] {
            assert!(SpiffeId::try_from(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://example.org/x",
            "spiffe://",
            "spiffe://Example.org/x",
            "spiffe://example.org/",
            "spiffe://example.org//x",
            "spiffe://example.org/../x",
            "spiffe://example.org/x?y",
            "spiffe://example.org/x#y",
            "spiffe://user@example.org/x",
            "spiffe://example.org:443/x",
        ] {
            assert!(SpiffeId::try_from(bad).is_err(), "{bad}");
        }
        let long = format!("spiffe://e/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert_eq!(SpiffeId::try_from(long.as_str()), Err(Problem::TooLong));
    }

    #[test]
    fn assigned_ids_have_their_prefix_and_128_bits() {
        let id = PrincipalId::from_random([0xab; 16]);
        assert_eq!(id.as_str(), format!("kp_{}", "ab".repeat(16)));
        assert_eq!(PrincipalId::try_from(id.as_str()), Ok(id.clone()));
        assert!(TokenId::try_from(id.as_str()).is_err(), "prefixes differ");
        for bad in ["kp_", "kp_AB", &format!("kp_{}", "g".repeat(32))] {
            assert!(PrincipalId::try_from(bad).is_err(), "{bad}");
        }
    }
}
