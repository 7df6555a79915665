//! Caller roles: what an authenticated caller may ask of the KMS. A contract, not a storage
//! detail: the host enforces it, the store only keeps which credential has which.

/// A caller role. Each bearer token has exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Selene OS: sends KMS requests.
    Os,
    /// The executor: redeems handles and credentials for material.
    Executor,
    /// Operators: provisioning and audit.
    Admin,
}

impl Role {
    /// Stable name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Os => "os",
            Self::Executor => "executor",
            Self::Admin => "admin",
        }
    }

    /// Parses [`Role::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "os" => Some(Self::Os),
            "executor" => Some(Self::Executor),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// Every role.
    pub const ALL: [Self; 3] = [Self::Os, Self::Executor, Self::Admin];
}
