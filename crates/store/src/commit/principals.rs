//! The plan's part for principals and tokens: checks and effects of the changes that go to the
//! system chain.

use std::collections::HashMap;

use selene_kms_core::{PrincipalId, TokenId};

use super::{Committed, Writes, refused};
use crate::error::{ErrorKind, StoreResult};
use crate::model::{NewPrincipal, NewToken, PrincipalRecord, TokenRecord};

/// A token row: its metadata and its verifier.
#[derive(Clone, Debug)]
pub struct TokenRow {
    /// The token.
    pub record: TokenRecord,
    /// The keyed MAC it is looked up by.
    pub verifier: [u8; 32],
}

/// What a checked principal or token change does.
pub(super) enum AuthEffect {
    Create(PrincipalRecord, TokenRow),
    Issue(TokenRow),
    RevokeToken(TokenRow),
    RevokePrincipal(PrincipalRecord),
    /// Revoking what is already revoked: audited, changes nothing.
    Unchanged,
}

/// Principals and tokens as the batch has them now: changed by earlier units, or as committed.
#[derive(Default)]
pub(super) struct Credentials {
    principals: HashMap<PrincipalId, PrincipalRecord>,
    tokens: HashMap<TokenId, TokenRow>,
}

impl Credentials {
    fn principal<'a>(
        &'a self,
        committed: &'a Committed,
        id: &PrincipalId,
    ) -> Option<&'a PrincipalRecord> {
        self.principals
            .get(id)
            .or_else(|| committed.principals.get(id))
    }

    fn token<'a>(&'a self, committed: &'a Committed, id: &TokenId) -> Option<&'a TokenRow> {
        self.tokens.get(id).or_else(|| committed.tokens.get(id))
    }

    /// Every principal the batch knows of, as it has them now.
    fn view<'a>(&'a self, committed: &'a Committed) -> impl Iterator<Item = &'a PrincipalRecord> {
        committed
            .principals
            .values()
            .filter(|p| !self.principals.contains_key(&p.principal_id))
            .chain(self.principals.values())
    }

    /// A new principal: its name and SPIFFE id must be free among unrevoked principals.
    pub(super) fn create(
        &self,
        committed: &Committed,
        new: NewPrincipal,
        at_ms: u64,
    ) -> StoreResult<AuthEffect> {
        let taken = self.view(committed).any(|p| {
            p.revoked_at_ms.is_none()
                && (p.name == new.name || (new.spiffe_id.is_some() && p.spiffe_id == new.spiffe_id))
        });
        if taken {
            return Err(refused(
                ErrorKind::AlreadyExists,
                "a live principal has that name or SPIFFE id",
            ));
        }
        let record = PrincipalRecord {
            principal_id: new.principal_id,
            name: new.name,
            role: new.role,
            tenants: new.tenants,
            spiffe_id: new.spiffe_id,
            created_at_ms: at_ms,
            expires_at_ms: new.expires_at_ms,
            revoked_at_ms: None,
        };
        let token = token_row(&record.principal_id, new.token, at_ms);
        Ok(AuthEffect::Create(record, token))
    }

    /// Another token for a live principal.
    pub(super) fn issue(
        &self,
        committed: &Committed,
        principal: &PrincipalId,
        token: NewToken,
        at_ms: u64,
    ) -> StoreResult<AuthEffect> {
        match self.principal(committed, principal) {
            Some(p) if p.live_at(at_ms) => {
                Ok(AuthEffect::Issue(token_row(principal, token, at_ms)))
            }
            _ => Err(not_found()),
        }
    }

    /// Revokes one token of `principal`.
    pub(super) fn revoke_token(
        &self,
        committed: &Committed,
        principal: &PrincipalId,
        token: &TokenId,
        at_ms: u64,
    ) -> StoreResult<AuthEffect> {
        let principal_revoked = self
            .principal(committed, principal)
            .is_some_and(|p| p.revoked_at_ms.is_some());
        match self.token(committed, token) {
            Some(t) if &t.record.principal_id == principal => Ok(match t.record.revoked_at_ms {
                // Revoked itself, or with its principal: nothing to write.
                Some(_) => AuthEffect::Unchanged,
                None if principal_revoked => AuthEffect::Unchanged,
                None => AuthEffect::RevokeToken(TokenRow {
                    record: TokenRecord {
                        revoked_at_ms: Some(at_ms),
                        ..t.record.clone()
                    },
                    verifier: t.verifier,
                }),
            }),
            _ => Err(not_found()),
        }
    }

    /// Revokes a principal, unless it is the last live admin for every tenant.
    pub(super) fn revoke_principal(
        &self,
        committed: &Committed,
        principal: &PrincipalId,
        at_ms: u64,
    ) -> StoreResult<AuthEffect> {
        let target = self.principal(committed, principal).ok_or_else(not_found)?;
        if target.revoked_at_ms.is_some() {
            return Ok(AuthEffect::Unchanged);
        }
        if target.is_global_admin_at(at_ms) {
            let others = self
                .view(committed)
                .any(|p| &p.principal_id != principal && p.administers_for_good(at_ms));
            if !others {
                return Err(refused(
                    ErrorKind::LastAdmin,
                    "the last live admin for every tenant cannot be revoked",
                ));
            }
        }
        Ok(AuthEffect::RevokePrincipal(PrincipalRecord {
            revoked_at_ms: Some(at_ms),
            ..target.clone()
        }))
    }

    /// Records a checked effect in the working state and the writes.
    pub(super) fn record(&mut self, effect: AuthEffect, writes: &mut Writes) {
        match effect {
            AuthEffect::Create(principal, token) => {
                self.tokens
                    .insert(token.record.token_id.clone(), token.clone());
                self.principals
                    .insert(principal.principal_id.clone(), principal.clone());
                writes.principals.push(principal);
                writes.tokens.push(token);
            }
            AuthEffect::Issue(token) => {
                self.tokens
                    .insert(token.record.token_id.clone(), token.clone());
                writes.tokens.push(token);
            }
            AuthEffect::RevokeToken(token) => {
                self.tokens
                    .insert(token.record.token_id.clone(), token.clone());
                writes.revoked_tokens.push(token);
            }
            AuthEffect::RevokePrincipal(principal) => {
                self.principals
                    .insert(principal.principal_id.clone(), principal.clone());
                writes.revoked_principals.push(principal);
            }
            AuthEffect::Unchanged => {}
        }
    }
}

fn not_found() -> crate::error::StoreError {
    refused(ErrorKind::NotFound, "no such principal or token")
}

fn token_row(principal: &PrincipalId, token: NewToken, at_ms: u64) -> TokenRow {
    TokenRow {
        record: TokenRecord {
            token_id: token.token_id,
            principal_id: principal.clone(),
            created_at_ms: at_ms,
            expires_at_ms: token.expires_at_ms,
            revoked_at_ms: None,
        },
        verifier: token.verifier,
    }
}
