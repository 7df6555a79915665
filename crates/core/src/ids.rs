//! Validated identifiers.
//!
//! Every id the core acts on is one of these newtypes, built by `TryFrom<String>` from the raw
//! wire form. A failed validation reports *which rule* failed, never the offending value, so a
//! caller that puts a secret into an id field never sees it echoed back.

use crate::diagnostics::Problem;

/// The text accessors every string id shares: `as_str`, `Borrow<str>` (maps keyed by the id can
/// be queried with a `&str`; `Hash` and `Eq` agree with `str`'s), and `Debug`/`Display` that
/// name the type and show the text.
macro_rules! text_id_impls {
    ($name:ident) => {
        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
pub(crate) use text_id_impls;

/// Declares a validated string newtype with its validation function.
macro_rules! validated_id {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        text_id_impls!($name);

        impl TryFrom<String> for $name {
            type Error = Problem;

            fn try_from(value: String) -> Result<Self, Problem> {
                $check(&value)?;
                Ok(Self(value))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Problem;

            fn try_from(value: &str) -> Result<Self, Problem> {
                $check(value)?;
                Ok(Self(value.to_owned()))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

validated_id!(
    /// A tenant: `[a-z0-9][a-z0-9._-]{0,63}`.
    TenantId,
    check_tenant
);
validated_id!(
    /// A secret name: 1..=128 chars of `/`-separated segments, each `[a-z0-9][a-z0-9._-]*`,
    /// with no `..` anywhere.
    SecretName,
    check_secret_name
);
validated_id!(
    /// A requester engine id: `[A-Za-z0-9][A-Za-z0-9._-]{0,95}`.
    EngineId,
    check_principal
);
validated_id!(
    /// A requester user id: `[A-Za-z0-9][A-Za-z0-9._-]{0,95}`.
    UserId,
    check_principal
);
validated_id!(
    /// An idempotency key: 1..=128 printable ASCII characters without spaces.
    IdempotencyKey,
    check_token
);
validated_id!(
    /// A correlation id supplied by the OS: 1..=128 printable ASCII characters without spaces.
    CorrelationId,
    check_token
);
validated_id!(
    /// A turn id supplied by the OS: 1..=128 printable ASCII characters without spaces.
    TurnId,
    check_token
);

impl TenantId {
    /// The text of the system chain's id: principal and token events are audited there.
    pub const SYSTEM: &'static str = "_system";

    /// The system chain's id. It is no valid tenant id (a tenant id never starts with `_`), so
    /// no request can name it as a tenant; only audit reads and exports reach it.
    pub fn system() -> Self {
        Self(Self::SYSTEM.to_owned())
    }

    /// Whether this is the system chain's id.
    pub fn is_system(&self) -> bool {
        self.0 == Self::SYSTEM
    }

    /// A chain's id as stored or asked for: a tenant id or the system chain's.
    pub fn chain(value: &str) -> Result<Self, Problem> {
        if value == Self::SYSTEM {
            Ok(Self::system())
        } else {
            Self::try_from(value)
        }
    }
}

/// Longest secret name.
pub const MAX_SECRET_NAME_LEN: usize = 128;
/// Longest tenant id.
pub const MAX_TENANT_LEN: usize = 64;
/// Longest engine or user id.
pub const MAX_PRINCIPAL_LEN: usize = 96;
/// Longest idempotency key, correlation id or turn id.
pub const MAX_TOKEN_LEN: usize = 128;

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn check_tenant(s: &str) -> Result<(), Problem> {
    let bytes = s.as_bytes();
    match bytes.first() {
        None => return Err(Problem::Empty),
        Some(&b) if !is_lower_alnum(b) => return Err(Problem::BadCharacter),
        Some(_) => {}
    }
    if bytes.len() > MAX_TENANT_LEN {
        return Err(Problem::TooLong);
    }
    if bytes
        .iter()
        .all(|&b| is_lower_alnum(b) || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(())
    } else {
        Err(Problem::BadCharacter)
    }
}

fn check_secret_name(s: &str) -> Result<(), Problem> {
    if s.is_empty() {
        return Err(Problem::Empty);
    }
    if s.len() > MAX_SECRET_NAME_LEN {
        return Err(Problem::TooLong);
    }
    if s.contains("..") {
        return Err(Problem::BadShape);
    }
    for segment in s.split('/') {
        let bytes = segment.as_bytes();
        match bytes.first() {
            // Empty segment: leading, trailing or doubled `/`.
            None => return Err(Problem::BadShape),
            Some(&b) if !is_lower_alnum(b) => return Err(Problem::BadCharacter),
            Some(_) => {}
        }
        if !bytes
            .iter()
            .all(|&b| is_lower_alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(Problem::BadCharacter);
        }
    }
    Ok(())
}

fn check_principal(s: &str) -> Result<(), Problem> {
    let bytes = s.as_bytes();
    match bytes.first() {
        None => return Err(Problem::Empty),
        Some(&b) if !b.is_ascii_alphanumeric() => return Err(Problem::BadCharacter),
        Some(_) => {}
    }
    if bytes.len() > MAX_PRINCIPAL_LEN {
        return Err(Problem::TooLong);
    }
    if bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Ok(())
    } else {
        Err(Problem::BadCharacter)
    }
}

fn check_token(s: &str) -> Result<(), Problem> {
    if s.is_empty() {
        return Err(Problem::Empty);
    }
    if s.len() > MAX_TOKEN_LEN {
        return Err(Problem::TooLong);
    }
    if s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(Problem::BadCharacter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_follow_the_documented_grammar() {
        for ok in [
            "a",
            "payments/stripe",
            "a/b/c.d_e-f",
            "x1/2y",
            &"a".repeat(128),
        ] {
            assert!(SecretName::try_from(ok).is_ok(), "{ok} should be valid");
        }
        let cases: [(&str, Problem); 9] = [
            ("", Problem::Empty),
            ("/a", Problem::BadShape),
            ("a/", Problem::BadShape),
            ("a//b", Problem::BadShape),
            ("a/../b", Problem::BadShape),
            ("a..b", Problem::BadShape),
            ("Upper", Problem::BadCharacter),
            ("a/.hidden", Problem::BadCharacter),
            ("sp ace", Problem::BadCharacter),
        ];
        for (bad, problem) in cases {
            assert_eq!(SecretName::try_from(bad), Err(problem), "{bad:?}");
        }
        assert_eq!(
            SecretName::try_from("a".repeat(129).as_str()),
            Err(Problem::TooLong)
        );
    }

    #[test]
    fn tenants_principals_and_tokens_are_bounded() {
        assert!(TenantId::try_from("acme").is_ok());
        assert!(TenantId::try_from("a".repeat(64).as_str()).is_ok());
        assert_eq!(
            TenantId::try_from("a".repeat(65).as_str()),
            Err(Problem::TooLong)
        );
        assert_eq!(TenantId::try_from("-acme"), Err(Problem::BadCharacter));
        assert!(EngineId::try_from("PH1.CONNECTOR").is_ok());
        assert_eq!(EngineId::try_from("PH1 X"), Err(Problem::BadCharacter));
        assert!(UserId::try_from("u-42").is_ok());
        assert!(IdempotencyKey::try_from("k:1/2").is_ok());
        assert_eq!(IdempotencyKey::try_from("k 1"), Err(Problem::BadCharacter));
        assert_eq!(IdempotencyKey::try_from("é"), Err(Problem::BadCharacter));
        assert_eq!(
            IdempotencyKey::try_from("k".repeat(129).as_str()),
            Err(Problem::TooLong)
        );
    }
}
