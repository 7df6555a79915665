//! Caller authentication: bearer tokens and workload certificates, resolved to principals.
//!
//! A token is stored only as its keyed verifier ([`ServiceKeys::token_verifier`]), so a row
//! written into the database without the root key authenticates nobody. Authentications are
//! remembered per verifier together with the store's authentication epoch at the time; the
//! epoch advances with every revocation, on every node, and is read again for every request, so
//! a remembered authentication never outlives a revocation. Expiry is checked at every request
//! against the request's own clock reading.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use selene_kms_core::{PrincipalId, ServiceKeys, SpiffeId, TokenId};
use selene_kms_store::{Credential, ErrorKind, NewToken, PrincipalRecord, Store, StoreError};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::engine::Caller;
use crate::random_bytes;

/// Longest bearer token looked at; longer ones are refused unread.
const MAX_TOKEN_LEN: usize = 256;
/// Most authentications remembered; the memory is emptied when it would grow past this.
const MAX_REMEMBERED: usize = 65_536;

/// A token just made: shown once, stored as [`NewToken`].
pub struct IssuedToken {
    /// The token itself; never stored, never logged.
    pub token: Zeroizing<String>,
    /// What the store keeps.
    pub stored: NewToken,
}

/// A new random token (256 bits), expiring at `expires_at_ms`.
pub fn new_token(
    keys: &ServiceKeys,
    expires_at_ms: Option<u64>,
) -> Result<IssuedToken, StoreError> {
    let secret = random_bytes::<32>()?;
    let token = Zeroizing::new(format!("skms_{}", URL_SAFE_NO_PAD.encode(*secret)));
    let stored = NewToken {
        token_id: TokenId::from_random(*random_bytes::<16>()?),
        verifier: keys.token_verifier(&token),
        expires_at_ms,
    };
    Ok(IssuedToken { token, stored })
}

/// What a request presents to prove who it is.
#[derive(Clone, Debug, Default)]
pub struct Presented<'a> {
    /// The `Authorization` header's value.
    pub authorization: Option<&'a str>,
    /// The URI SAN of a verified client certificate.
    pub spiffe_id: Option<&'a SpiffeId>,
}

/// Why authentication failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No credential, a malformed header, an unknown, expired or revoked credential, or two
    /// credentials of different principals.
    Unauthenticated,
    /// The store could not be asked; the kind of failure decides the answer.
    Store(ErrorKind),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(kind = ?e.kind, error = %e.message, "credential lookup failed");
        Self::Store(e.kind)
    }
}

/// An authentication remembered at an epoch.
struct Remembered {
    caller: Arc<Caller>,
    /// The earlier of the token's and the principal's expiry.
    expires_at_ms: Option<u64>,
    epoch: u64,
}

impl Remembered {
    fn good_at(&self, epoch: u64, now_ms: u64) -> bool {
        self.epoch == epoch && self.expires_at_ms.is_none_or(|t| now_ms < t)
    }
}

/// Resolves presented credentials to callers.
pub struct Authenticator {
    store: Arc<dyn Store>,
    /// By token verifier, or by a digest of the SPIFFE id for certificates.
    remembered: RwLock<HashMap<[u8; 32], Remembered>>,
    /// Verifiers of tokens the store does not hold, so that a flood of bad tokens costs no
    /// query each. A token is 256 random bits, so none of these can become valid later.
    unknown: RwLock<HashSet<[u8; 32]>>,
    /// The highest authentication epoch read so far: an epoch lower than this means the stored
    /// counter was set back, and nothing remembered is trusted until it is passed again.
    highest_epoch: AtomicU64,
}

/// The authentication epoch of one request, and whether what was remembered may be used.
#[derive(Clone, Copy)]
struct Epoch {
    value: u64,
    trusted: bool,
}

/// What a certificate's SPIFFE id is bound to.
enum Bound {
    /// No principal: the certificate proves nothing and takes nothing away from a token.
    Nobody,
    /// A live principal.
    Live(Arc<Caller>),
    /// A principal that expired: it speaks for no request.
    Expired,
}

/// A stored credential that fails its check was written without the root key: it proves
/// nobody, and says so loudly.
fn forged(e: &StoreError) -> AuthError {
    tracing::error!(error = %e.message, "a stored credential fails its check; refused");
    AuthError::Unauthenticated
}

/// A read of the store's credentials: a row that fails its check refuses the request.
fn checked<T>(read: Result<T, StoreError>) -> Result<T, AuthError> {
    read.map_err(|e| match e.kind {
        ErrorKind::Corrupt => forged(&e),
        _ => AuthError::from(e),
    })
}

impl Authenticator {
    /// An authenticator over the principals of `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            remembered: RwLock::new(HashMap::new()),
            unknown: RwLock::new(HashSet::new()),
            highest_epoch: AtomicU64::new(0),
        }
    }

    /// The store's epoch now, checked against the highest seen.
    async fn epoch(&self) -> Result<Epoch, AuthError> {
        let value = self.store.auth_epoch().await?;
        let highest = self.highest_epoch.fetch_max(value, Ordering::SeqCst);
        let trusted = value >= highest;
        if !trusted {
            tracing::error!(
                stored = value,
                seen = highest,
                "the stored authentication epoch went backwards; remembered authentications are not used"
            );
        }
        Ok(Epoch { value, trusted })
    }

    /// The caller behind what a request presents, at `now_ms`.
    pub async fn authenticate(
        &self,
        presented: &Presented<'_>,
        now_ms: u64,
    ) -> Result<Arc<Caller>, AuthError> {
        let token = match presented.authorization {
            None => None,
            Some(header) => Some(bearer(header).ok_or(AuthError::Unauthenticated)?),
        };
        if token.is_none() && presented.spiffe_id.is_none() {
            return Err(AuthError::Unauthenticated);
        }
        let epoch = self.epoch().await?;
        let by_token = match token {
            Some(token) => Some(self.by_token(token, epoch, now_ms).await?),
            None => None,
        };
        // Under mandatory mTLS every client has a certificate: one bound to no principal proves
        // nothing and takes nothing away from a token presented with it.
        let by_certificate = match presented.spiffe_id {
            Some(id) => self.by_certificate(id, epoch, now_ms).await?,
            None => Bound::Nobody,
        };
        match (by_token, by_certificate) {
            (Some(caller), Bound::Nobody) | (None, Bound::Live(caller)) => Ok(caller),
            (Some(a), Bound::Live(b)) if a.principal_id == b.principal_id => Ok(a),
            // Two different principals, or a certificate of one that expired.
            (_, Bound::Live(_) | Bound::Expired) | (None, Bound::Nobody) => {
                Err(AuthError::Unauthenticated)
            }
        }
    }

    async fn by_token(
        &self,
        token: &str,
        epoch: Epoch,
        now_ms: u64,
    ) -> Result<Arc<Caller>, AuthError> {
        let verifier = self.store.keys().token_verifier(token);
        if let Some(caller) = self.recall(&verifier, epoch, now_ms) {
            return Ok(caller);
        }
        if self.unknown.read().is_ok_and(|u| u.contains(&verifier)) {
            return Err(AuthError::Unauthenticated);
        }
        let Some(Credential { principal, token }) =
            checked(self.store.credential(&verifier).await)?
        else {
            if let Ok(mut unknown) = self.unknown.write() {
                if unknown.len() >= MAX_REMEMBERED {
                    unknown.clear();
                }
                unknown.insert(verifier);
            }
            return Err(AuthError::Unauthenticated);
        };
        if !(principal.live_at(now_ms) && token.live_at(now_ms)) {
            return Err(AuthError::Unauthenticated);
        }
        let expires_at_ms = earliest(principal.expires_at_ms, token.expires_at_ms);
        Ok(self.remember(verifier, principal, expires_at_ms, epoch))
    }

    /// The principal a certificate's SPIFFE id is bound to, if any.
    async fn by_certificate(
        &self,
        spiffe_id: &SpiffeId,
        epoch: Epoch,
        now_ms: u64,
    ) -> Result<Bound, AuthError> {
        let key: [u8; 32] = Sha256::new()
            .chain_update(b"selene-kms/spiffe-id\0")
            .chain_update(spiffe_id.as_str())
            .finalize()
            .into();
        if let Some(caller) = self.recall(&key, epoch, now_ms) {
            return Ok(Bound::Live(caller));
        }
        Ok(
            match checked(self.store.principal_by_spiffe(spiffe_id).await)? {
                None => Bound::Nobody,
                Some(p) if !p.live_at(now_ms) => Bound::Expired,
                Some(p) => {
                    let expires_at_ms = p.expires_at_ms;
                    Bound::Live(self.remember(key, p, expires_at_ms, epoch))
                }
            },
        )
    }

    fn recall(&self, key: &[u8; 32], epoch: Epoch, now_ms: u64) -> Option<Arc<Caller>> {
        if !epoch.trusted {
            return None;
        }
        let remembered = self.remembered.read().ok()?;
        remembered
            .get(key)
            .filter(|r| r.good_at(epoch.value, now_ms))
            .map(|r| r.caller.clone())
    }

    fn remember(
        &self,
        key: [u8; 32],
        principal: PrincipalRecord,
        expires_at_ms: Option<u64>,
        epoch: Epoch,
    ) -> Arc<Caller> {
        let caller = Arc::new(Caller::from(principal));
        if !epoch.trusted {
            return caller;
        }
        if let Ok(mut remembered) = self.remembered.write() {
            if remembered.len() >= MAX_REMEMBERED {
                remembered.clear();
            }
            remembered.insert(
                key,
                Remembered {
                    caller: caller.clone(),
                    expires_at_ms,
                    epoch: epoch.value,
                },
            );
        }
        caller
    }
}

/// The token of an `Authorization: Bearer …` value.
pub(crate) fn bearer(header: &str) -> Option<&str> {
    header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_LEN)
}

fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl From<PrincipalRecord> for Caller {
    fn from(p: PrincipalRecord) -> Self {
        Self {
            principal_id: p.principal_id,
            name: p.name,
            role: p.role,
            tenants: p.tenants,
            expires_at_ms: p.expires_at_ms,
        }
    }
}

/// A principal id drawn from the OS random source.
pub(crate) fn new_principal_id() -> Result<PrincipalId, StoreError> {
    Ok(PrincipalId::from_random(*random_bytes::<16>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values_are_bounded() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("Bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer(&format!("Bearer {}", "a".repeat(257))), None);
    }

    #[test]
    fn the_earlier_expiry_wins() {
        assert_eq!(earliest(None, None), None);
        assert_eq!(earliest(Some(5), None), Some(5));
        assert_eq!(earliest(None, Some(7)), Some(7));
        assert_eq!(earliest(Some(9), Some(7)), Some(7));
    }

    #[test]
    fn a_remembered_authentication_ends_with_its_epoch_or_expiry() {
        let remembered = |expires_at_ms| Remembered {
            caller: Arc::new(Caller {
                principal_id: PrincipalId::from_random([1; 16]),
                name: selene_kms_core::PrincipalName::try_from("p").expect("name"),
                role: selene_kms_core::Role::Os,
                tenants: selene_kms_core::TenantScope::All,
                expires_at_ms,
            }),
            expires_at_ms,
            epoch: 3,
        };
        assert!(remembered(None).good_at(3, u64::MAX));
        assert!(!remembered(None).good_at(4, 0), "a revocation since");
        assert!(remembered(Some(10)).good_at(3, 9));
        assert!(!remembered(Some(10)).good_at(3, 10), "expired");
    }
}
