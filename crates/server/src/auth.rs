//! Caller authentication: bearer tokens with one role each, stored hashed.
//!
//! Tokens are 256 bits of randomness, so a plain SHA-256 is a sound, fast storage hash: nothing is
//! gained by stretching, and a stolen table reveals no token. Lookups go by hash, so the raw token
//! is never compared byte by byte.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use selene_kms_core::Role;
use selene_kms_store::{ErrorKind, Store, StoreError, StoreResult};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::engine::Caller;

/// The hash a token is stored under.
pub fn hash_token(token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"selene-kms/caller-token/v1");
    h.update(token.as_bytes());
    h.finalize().into()
}

/// A new random token for `role`; returns it (to show once) and its hash (to store).
pub fn new_token(role: Role) -> StoreResult<(Zeroizing<String>, [u8; 32])> {
    let bytes = crate::random_bytes::<32>()?;
    let token = Zeroizing::new(format!(
        "skms_{}_{}",
        role.name(),
        URL_SAFE_NO_PAD.encode(*bytes)
    ));
    let hash = hash_token(&token);
    Ok((token, hash))
}

/// Creates one token per role in `store`; returns them in role order.
pub async fn provision_tokens(store: &dyn Store) -> StoreResult<Vec<(Role, Zeroizing<String>)>> {
    let mut out = Vec::new();
    for role in Role::ALL {
        let (token, hash) = new_token(role)?;
        store.put_token(hash, role, role.name()).await?;
        out.push((role, token));
    }
    Ok(out)
}

/// Why authentication failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No token, a malformed header, or an unknown token.
    Unauthenticated,
    /// The token could not be looked up; the kind of store failure decides the answer.
    Store(ErrorKind),
}

/// Resolves bearer tokens to callers, caching known ones.
pub struct Authenticator {
    store: Arc<dyn Store>,
    known: RwLock<HashMap<[u8; 32], Caller>>,
}

impl Authenticator {
    /// An authenticator over the tokens of `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            known: RwLock::new(HashMap::new()),
        }
    }

    /// The caller behind an `Authorization` header value.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Caller, AuthError> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or(AuthError::Unauthenticated)?;
        let hash = hash_token(token);
        if let Some(c) = self.known.read().ok().and_then(|k| k.get(&hash).cloned()) {
            return Ok(c);
        }
        let found = self
            .store
            .token_role(&hash)
            .await
            .map_err(|e: StoreError| {
                tracing::warn!(kind = ?e.kind, error = %e.message, "token lookup failed");
                AuthError::Store(e.kind)
            })?;
        let (role, _label) = found.ok_or(AuthError::Unauthenticated)?;
        let caller = Caller {
            role,
            id: format!("tok_{}", hex::encode(&hash[..8])),
        };
        if let Ok(mut k) = self.known.write() {
            k.insert(hash, caller.clone());
        }
        Ok(caller)
    }
}
