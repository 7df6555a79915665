//! Principals and their tokens (admins of every tenant), `whoami`, the tenant listing, and the
//! bootstrap principals of a new store. Principal and token events are audited on the system
//! chain; a token is shown once, in the answer that creates it, and stored only as its keyed
//! verifier.

use std::fmt;

use selene_kms_core::{
    AuditAction, AuditRecord, PrincipalId, PrincipalName, Problem, ReasonCode, Role, SpiffeId,
    Subject, TenantId, TenantScope, TokenId,
};
use selene_kms_store::manifest::Manifester;
use selene_kms_store::{
    Change, CommitUnit, NewPrincipal, PrincipalListing, StoreError, TenantSummary, TokenRecord,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{AdminError, Caller, Engine};
use crate::auth::{IssuedToken, new_principal_id, new_token};
use crate::store_error::principal_refusal_for;

/// Longest lifetime of a principal or token: ten years, in ms.
pub const MAX_CREDENTIAL_TTL_MS: u64 = 10 * 366 * 24 * 3600 * 1000;

/// The names of the principals a new store starts with, by role.
const BOOTSTRAP_NAMES: [(Role, &str); 3] = [
    (Role::Admin, "bootstrap-admin"),
    (Role::Os, "bootstrap-os"),
    (Role::Executor, "bootstrap-executor"),
];

/// `POST /v1/admin/principals`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPrincipalRequest {
    /// `[a-z0-9][a-z0-9._-]{0,63}`, unique among live principals.
    pub name: String,
    /// `admin`, `os` or `executor`.
    pub role: String,
    /// `["*"]` for every tenant, or the tenant ids it may name.
    pub tenants: Vec<String>,
    /// Lifetime in ms (1 ms to 10 years); none: until revoked.
    pub ttl_ms: Option<u64>,
    /// A `spiffe://…` id: a client certificate with this URI SAN authenticates as the principal.
    pub spiffe_id: Option<String>,
}

/// `POST /v1/admin/principals/{principal_id}/tokens`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTokenRequest {
    /// Lifetime in ms (1 ms to 10 years); none: until revoked.
    pub ttl_ms: Option<u64>,
}

/// A token in the one answer that shows it. Its `Debug` form hides it; it is zeroized on drop.
pub struct ShownToken(Zeroizing<String>);

impl ShownToken {
    /// The token, for the one place that hands it on (an answer body, `init`'s output).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ShownToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShownToken(<redacted>)")
    }
}

impl Serialize for ShownToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A principal just created, with its first token (shown once).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = PrincipalCreated)]
pub struct CreatedPrincipal {
    /// Its id (`kp_…`).
    pub principal_id: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// Its tenants (`["*"]` or tenant ids).
    pub tenants: Vec<String>,
    /// When it expires, if ever.
    pub expires_at_ms: Option<u64>,
    /// Its first token's id (`kt_…`).
    pub token_id: String,
    /// The token: shown this once, never again.
    #[schema(value_type = String)]
    pub token: ShownToken,
}

/// A token just issued (shown once).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = TokenIssued)]
pub struct IssuedTokenAnswer {
    /// Its id (`kt_…`).
    pub token_id: String,
    /// The token: shown this once, never again.
    #[schema(value_type = String)]
    pub token: ShownToken,
    /// When it expires, if ever.
    pub expires_at_ms: Option<u64>,
}

/// One token in a listing: never the token or its verifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenView {
    /// Its id.
    pub token_id: String,
    /// When it was created.
    pub created_at_ms: u64,
    /// When it expires, if ever.
    pub expires_at_ms: Option<u64>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// One principal in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PrincipalView {
    /// Its id.
    pub principal_id: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// Its tenants.
    pub tenants: Vec<String>,
    /// The SPIFFE id bound to it.
    pub spiffe_id: Option<String>,
    /// When it was created.
    pub created_at_ms: u64,
    /// When it expires, if ever.
    pub expires_at_ms: Option<u64>,
    /// Whether it was revoked.
    pub revoked: bool,
    /// Its tokens, oldest first.
    pub tokens: Vec<TokenView>,
}

/// `GET /v1/auth/whoami`: the caller as the KMS knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// Its id.
    pub principal_id: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// Its tenants.
    pub tenants: Vec<String>,
    /// When it expires, if ever.
    pub expires_at_ms: Option<u64>,
}

/// The principals of a new store, by role, each with its token.
#[derive(Debug)]
pub struct Bootstrapped(pub Vec<(Role, CreatedPrincipal)>);

impl From<&TokenRecord> for TokenView {
    fn from(t: &TokenRecord) -> Self {
        Self {
            token_id: t.token_id.to_string(),
            created_at_ms: t.created_at_ms,
            expires_at_ms: t.expires_at_ms,
            revoked: t.revoked_at_ms.is_some(),
        }
    }
}

impl From<&PrincipalListing> for PrincipalView {
    fn from(listing: &PrincipalListing) -> Self {
        let p = &listing.principal;
        Self {
            principal_id: p.principal_id.to_string(),
            name: p.name.to_string(),
            role: p.role.name().to_owned(),
            tenants: p.tenants.to_list(),
            spiffe_id: p.spiffe_id.as_ref().map(|s| s.as_str().to_owned()),
            created_at_ms: p.created_at_ms,
            expires_at_ms: p.expires_at_ms,
            revoked: p.revoked_at_ms.is_some(),
            tokens: listing.tokens.iter().map(TokenView::from).collect(),
        }
    }
}

/// `now_ms + ttl_ms`, for a TTL within 1 ms..=[`MAX_CREDENTIAL_TTL_MS`].
fn expiry(now_ms: u64, ttl_ms: Option<u64>) -> Result<Option<u64>, AdminError> {
    ttl_ms
        .map(|ttl| {
            (1..=MAX_CREDENTIAL_TTL_MS)
                .contains(&ttl)
                .then(|| now_ms.checked_add(ttl))
                .flatten()
                .ok_or_else(|| AdminError::invalid(Subject::TtlMs, Problem::OutOfRange))
        })
        .transpose()
}

fn principal_id(raw: &str) -> Result<PrincipalId, AdminError> {
    PrincipalId::try_from(raw).map_err(|p| AdminError::invalid(Subject::PrincipalId, p))
}

/// A principal to create, validated, with its first token.
struct Validated {
    new: NewPrincipal,
    token: IssuedToken,
}

fn validate(
    engine: &Engine,
    req: NewPrincipalRequest,
    now_ms: u64,
) -> Result<Validated, AdminError> {
    let name = PrincipalName::try_from(req.name.as_str())
        .map_err(|p| AdminError::invalid(Subject::Name, p))?;
    let role = Role::from_name(&req.role)
        .ok_or_else(|| AdminError::invalid(Subject::Role, Problem::BadShape))?;
    let tenants = TenantScope::from_list(&req.tenants)
        .map_err(|p| AdminError::invalid(Subject::Tenants, p))?;
    let spiffe_id = req
        .spiffe_id
        .as_deref()
        .map(SpiffeId::try_from)
        .transpose()
        .map_err(|p| AdminError::invalid(Subject::SpiffeId, p))?;
    let expires_at_ms = expiry(now_ms, req.ttl_ms)?;
    let token = new_token(engine.store.keys(), expires_at_ms)?;
    let new = NewPrincipal {
        principal_id: new_principal_id()?,
        name,
        role,
        tenants,
        spiffe_id,
        expires_at_ms,
        token: token.stored.clone(),
    };
    Ok(Validated { new, token })
}

/// The system chain's record of a principal or token event by `caller` (none: by the KMS).
fn event(
    caller: Option<&Caller>,
    action: AuditAction,
    principal: &PrincipalId,
    token: Option<&TokenId>,
    now_ms: u64,
) -> AuditRecord {
    let mut record = AuditRecord::for_action(
        &TenantId::system(),
        action,
        ReasonCode::OkMaterialIssue,
        now_ms,
    );
    record.principal_id = caller.map(|c| c.principal_id.to_string());
    record.target_principal_id = Some(principal.to_string());
    record.target_token_id = token.map(ToString::to_string);
    record
}

/// Refuses a caller that may not manage principals: only principals of every tenant may.
fn global(caller: &Caller) -> Result<(), AdminError> {
    if caller.is_global() {
        Ok(())
    } else {
        Err(ReasonCode::ForbiddenTenant.into())
    }
}

impl Engine {
    /// Creates a principal with its first token (shown once in the answer).
    pub async fn create_principal(
        &self,
        caller: &Caller,
        req: NewPrincipalRequest,
        now_ms: u64,
    ) -> Result<CreatedPrincipal, AdminError> {
        global(caller)?;
        self.create(Some(caller), validate(self, req, now_ms)?, now_ms)
            .await
    }

    async fn create(
        &self,
        caller: Option<&Caller>,
        validated: Validated,
        now_ms: u64,
    ) -> Result<CreatedPrincipal, AdminError> {
        let Validated { new, token } = validated;
        let id = new.principal_id.clone();
        let token_id = new.token.token_id.clone();
        self.commit_event(|| CommitUnit {
            tenant: TenantId::system(),
            change: Change::CreatePrincipal(Box::new(new.clone())),
            audit: event(
                caller,
                AuditAction::PrincipalCreate,
                &id,
                Some(&token_id),
                now_ms,
            ),
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await?;
        Ok(CreatedPrincipal {
            principal_id: id.to_string(),
            name: new.name.to_string(),
            role: new.role.name().to_owned(),
            tenants: new.tenants.to_list(),
            expires_at_ms: new.expires_at_ms,
            token_id: token_id.to_string(),
            token: ShownToken(token.token),
        })
    }

    /// Issues another token to a live principal; its older tokens keep working until revoked.
    pub async fn issue_token(
        &self,
        caller: &Caller,
        principal: &str,
        req: NewTokenRequest,
        now_ms: u64,
    ) -> Result<IssuedTokenAnswer, AdminError> {
        global(caller)?;
        let principal = principal_id(principal)?;
        let expires_at_ms = expiry(now_ms, req.ttl_ms)?;
        let IssuedToken { token, stored } = new_token(self.store.keys(), expires_at_ms)?;
        let token_id = stored.token_id.clone();
        self.commit_event(|| CommitUnit {
            tenant: TenantId::system(),
            change: Change::IssueToken {
                principal: principal.clone(),
                token: stored.clone(),
            },
            audit: event(
                Some(caller),
                AuditAction::TokenCreate,
                &principal,
                Some(&token_id),
                now_ms,
            ),
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await?;
        Ok(IssuedTokenAnswer {
            token_id: token_id.to_string(),
            token: ShownToken(token),
            expires_at_ms,
        })
    }

    /// Revokes one token of a principal; from the answer on, it authenticates on no node.
    pub async fn revoke_token(
        &self,
        caller: &Caller,
        principal: &str,
        token: &str,
        now_ms: u64,
    ) -> Result<(), AdminError> {
        global(caller)?;
        let principal = principal_id(principal)?;
        let token =
            TokenId::try_from(token).map_err(|p| AdminError::invalid(Subject::TokenId, p))?;
        self.commit_event(|| CommitUnit {
            tenant: TenantId::system(),
            change: Change::RevokeToken {
                principal: principal.clone(),
                token: token.clone(),
            },
            audit: event(
                Some(caller),
                AuditAction::TokenRevoke,
                &principal,
                Some(&token),
                now_ms,
            ),
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await
    }

    /// Revokes a principal and every token of it, unless it is the last live admin of every
    /// tenant (`KMS_LAST_ADMIN`).
    pub async fn revoke_principal(
        &self,
        caller: &Caller,
        principal: &str,
        now_ms: u64,
    ) -> Result<(), AdminError> {
        global(caller)?;
        let principal = principal_id(principal)?;
        self.commit_event(|| CommitUnit {
            tenant: TenantId::system(),
            change: Change::RevokePrincipal(principal.clone()),
            audit: event(
                Some(caller),
                AuditAction::PrincipalRevoke,
                &principal,
                None,
                now_ms,
            ),
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await
    }

    /// Every principal with its tokens' metadata.
    pub async fn list_principals(&self, caller: &Caller) -> Result<Vec<PrincipalView>, AdminError> {
        global(caller)?;
        let listing = self.store.principals().await?;
        Ok(listing.iter().map(PrincipalView::from).collect())
    }

    /// The tenants the caller may name, with their policy version, state and size.
    pub async fn list_tenants(&self, caller: &Caller) -> Result<Vec<TenantSummary>, AdminError> {
        let mut tenants = self.store.tenants().await?;
        tenants.retain(|t| caller.may_name(&t.tenant_id).is_ok());
        Ok(tenants)
    }

    /// Creates the principals a new store starts with, one per role, for every tenant; the
    /// records name no caller (the KMS writes them on its own).
    pub async fn bootstrap(&self, now_ms: u64) -> Result<Bootstrapped, AdminError> {
        let mut made = Vec::with_capacity(BOOTSTRAP_NAMES.len());
        for (role, name) in BOOTSTRAP_NAMES {
            let req = NewPrincipalRequest {
                name: name.to_owned(),
                role: role.name().to_owned(),
                tenants: vec!["*".to_owned()],
                ttl_ms: None,
                spiffe_id: None,
            };
            let created = self
                .create(None, validate(self, req, now_ms)?, now_ms)
                .await?;
            made.push((role, created));
        }
        // A store starts its chain of manifests with its first chains.
        Manifester::first(self.store.clone(), now_ms).await?;
        Ok(Bootstrapped(made))
    }

    /// Creates an admin of every tenant for nobody: the way back in for whoever holds the root
    /// key (offline, `principal recover`) when no admin credential is left. Its record names no
    /// caller, like the bootstrap principals'.
    pub async fn recover_admin(
        &self,
        name: &str,
        now_ms: u64,
    ) -> Result<CreatedPrincipal, AdminError> {
        let req = NewPrincipalRequest {
            name: name.to_owned(),
            role: Role::Admin.name().to_owned(),
            tenants: vec!["*".to_owned()],
            ttl_ms: None,
            spiffe_id: None,
        };
        self.create(None, validate(self, req, now_ms)?, now_ms)
            .await
    }

    /// Commits a principal or token event, with the principal routes' reason codes.
    async fn commit_event(&self, unit: impl Fn() -> CommitUnit) -> Result<(), AdminError> {
        self.commit_unchanging(unit)
            .await
            .map(drop)
            .map_err(|e: StoreError| principal_refusal_for(&e).into())
    }
}

impl Caller {
    /// What `whoami` answers.
    pub fn whoami(&self) -> WhoAmI {
        WhoAmI {
            principal_id: self.principal_id.to_string(),
            name: self.name.to_string(),
            role: self.role.name().to_owned(),
            tenants: self.tenants.to_list(),
            expires_at_ms: self.expires_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_bounded() {
        assert_eq!(expiry(10, None), Ok(None));
        assert_eq!(expiry(10, Some(5)), Ok(Some(15)));
        assert_eq!(
            expiry(0, Some(MAX_CREDENTIAL_TTL_MS)),
            Ok(Some(MAX_CREDENTIAL_TTL_MS))
        );
        for bad in [0, MAX_CREDENTIAL_TTL_MS + 1] {
            let e = expiry(10, Some(bad)).expect_err("out of range");
            assert_eq!(e.reason_code, ReasonCode::InputSchemaInvalid);
            assert_eq!(e.diagnostics.len(), 1);
        }
    }

    #[test]
    fn a_shown_token_hides_itself_from_debug() {
        let token = ShownToken(Zeroizing::new("skms_os_secretpart".to_owned()));
        assert!(!format!("{token:?}").contains("secretpart"));
        assert_eq!(
            serde_json::to_string(&token).expect("json"),
            "\"skms_os_secretpart\""
        );
    }
}
