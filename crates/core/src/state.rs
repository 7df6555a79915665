//! State snapshots the host hands to the core, and the state changes the core hands back.
//!
//! The core never writes: it returns a [`StateChange`] and the host commits it atomically with
//! the audit record and the idempotency record.

use crate::purpose::Purpose;
use crate::refs::RefId;

/// Bounds on the TTL of ephemeral credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlBounds {
    /// Shortest TTL a requester may ask for.
    pub min_ms: u64,
    /// Longest TTL a requester may ask for.
    pub max_ms: u64,
    /// TTL used when the request names none.
    pub default_ms: u64,
}

impl TtlBounds {
    /// The documented defaults: min 30 s, max 1 h, default 5 min.
    pub const DEFAULT: Self = Self {
        min_ms: 30_000,
        max_ms: 3_600_000,
        default_ms: 300_000,
    };

    /// Bounds that make sense: `1 ≤ min ≤ default ≤ max ≤` one year.
    pub fn new(min_ms: u64, max_ms: u64, default_ms: u64) -> Option<Self> {
        (min_ms >= 1
            && min_ms <= default_ms
            && default_ms <= max_ms
            && max_ms <= crate::request::MAX_TTL_MS)
            .then_some(Self {
                min_ms,
                max_ms,
                default_ms,
            })
    }
}

impl Default for TtlBounds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How long a handle stays redeemable when the secret sets nothing else: one hour.
pub const DEFAULT_HANDLE_TTL_MS: u64 = 3_600_000;

/// Where a secret's material comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// 32 random bytes made by the KMS; a rotation makes fresh ones.
    Generated,
    /// Material an admin imported; a rotation uses material staged beforehand.
    Imported,
}

impl SecretKind {
    /// Stable name for storage and listings.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Generated => "GENERATED",
            Self::Imported => "IMPORTED",
        }
    }

    /// Parses [`SecretKind::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "GENERATED" => Some(Self::Generated),
            "IMPORTED" => Some(Self::Imported),
            _ => None,
        }
    }
}

/// State of one version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VersionState {
    /// Usable.
    Active,
    /// Revoked: every later use fails closed.
    Revoked,
}

impl VersionState {
    /// Stable name for storage and listings.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Revoked => "REVOKED",
        }
    }
}

/// Everything the core needs to know about one secret, read by the host in one go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSnapshot {
    /// The secret's opaque `secret_ref`, as [`crate::refs::secret_ref`] computes it. Hosts cache
    /// it with the rest of the snapshot so the hot path seals one ref, not two.
    pub secret_ref: String,
    /// Advances on every committed change to this secret; simulations bind to it.
    pub state_version: u64,
    /// Generated or imported.
    pub kind: SecretKind,
    /// State of versions 1..=n, in order; the last one is current.
    pub versions: Vec<VersionState>,
    /// Whether material is staged for the next rotation.
    pub staged: bool,
    /// Ephemeral TTL bounds.
    pub ttl: TtlBounds,
    /// Lifetime of handles.
    pub handle_ttl_ms: u64,
    /// What the secret is for.
    pub purpose: Purpose,
    /// The oldest version `decrypt` accepts a ciphertext of (1: every version).
    pub min_decryption_version: u64,
}

/// Hex SHA-256 of a secret's terms as it was created (its kind, TTL bounds, handle lifetime and
/// purpose): what a CREATE_SECRET record names, so that terms widened or a purpose changed in
/// the store show against the chain. A credential's purpose is not encoded, so that secrets
/// created before purposes existed keep their digests.
pub fn terms_digest(
    kind: SecretKind,
    ttl: &TtlBounds,
    handle_ttl_ms: u64,
    purpose: Purpose,
) -> String {
    use sha2::{Digest, Sha256};
    let mut e = crate::encode::Encoder::with_domain("selene-kms/secret-terms/v1");
    e.str(kind.name())
        .u64(ttl.min_ms)
        .u64(ttl.max_ms)
        .u64(ttl.default_ms)
        .u64(handle_ttl_ms);
    if purpose.is_key() {
        e.str(purpose.name());
    }
    crate::audit::hex(&Sha256::digest(e.as_slice()))
}

impl SecretSnapshot {
    /// This secret's [`terms_digest`].
    pub fn terms_digest(&self) -> String {
        terms_digest(self.kind, &self.ttl, self.handle_ttl_ms, self.purpose)
    }

    /// The current (highest) version; 0 only for a malformed snapshot.
    pub fn current_version(&self) -> u64 {
        self.versions.len() as u64
    }

    /// The state of `version`, if it exists.
    pub fn version_state(&self, version: u64) -> Option<VersionState> {
        self.versions.get(version_index(version)?).copied()
    }
}

/// Where `version` (numbered from 1) sits in a list of version states.
fn version_index(version: u64) -> Option<usize> {
    usize::try_from(version.checked_sub(1)?).ok()
}

/// Marks `version` revoked in a list of version states; `false` if it is not in the list.
pub fn mark_revoked(versions: &mut [VersionState], version: u64) -> bool {
    match version_index(version).and_then(|i| versions.get_mut(i)) {
        Some(state) => {
            *state = VersionState::Revoked;
            true
        }
        None => false,
    }
}

/// The change a committed request makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateChange {
    /// Nothing changes (handles, credentials, dry runs, refusals).
    None,
    /// Adds `new_version`; its material is the staged one or fresh random bytes from the host.
    Rotate {
        /// The version created.
        new_version: u64,
        /// Use the staged material (imported secrets) rather than fresh random bytes.
        from_staged: bool,
    },
    /// Revokes one version.
    RevokeVersion(u64),
    /// Revokes every version.
    RevokeAllVersions,
    /// Revokes one handle until it would have expired anyway.
    RevokeHandle {
        /// The handle's non-redeemable id.
        id: RefId,
        /// When the handle expires; the revocation can be pruned after.
        expires_at_ms: u64,
    },
    /// Revokes one ephemeral credential.
    RevokeCredential {
        /// The credential's non-redeemable id.
        id: RefId,
        /// When the credential expires; the revocation can be pruned after.
        expires_at_ms: u64,
    },
}

impl StateChange {
    /// Whether the change touches the secret's versions (and so must advance its state version
    /// under compare-and-set).
    pub fn touches_secret(&self) -> bool {
        !matches!(self, Self::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listed_version_is_marked_revoked() {
        let mut versions = vec![VersionState::Active; 2];
        assert!(mark_revoked(&mut versions, 2));
        assert_eq!(versions, [VersionState::Active, VersionState::Revoked]);
        for missing in [0, 3, u64::MAX] {
            assert!(!mark_revoked(&mut versions, missing), "version {missing}");
        }
        assert_eq!(versions, [VersionState::Active, VersionState::Revoked]);
    }
}
