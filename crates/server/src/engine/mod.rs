//! The engine: the host side of PH1.KMS as a library, everything but HTTP and authentication.
//!
//! Selene OS can embed it in-process over the embedded store; the HTTP server is one thin host of
//! it. Requests come in as the core's validated types and answers go out typed, so an embedder
//! never builds or parses JSON, and bytes on the wire stay the HTTP host's business. Each call
//! takes the clock reading as `now_ms`, runs the seed's deterministic sequence with the core and
//! commits the outcome with its audit record in one unit. Nothing material leaves unless the
//! bundle is `OK`.

mod admin;
mod crypto;
mod kms;
mod principals;
mod redeem;
mod replay;

use std::path::Path;
use std::sync::Arc;

use selene_kms_core::{
    AuditRecord, DecisionInputs, PrincipalId, PrincipalName, ReasonCode, Role, TenantId,
    TenantScope,
};
use selene_kms_store::manifest::Manifester;
use selene_kms_store::{
    BatchHistogram, Change, CommitUnit, ErrorKind, Receipt, Store, StoreResult,
};

use crate::auth::Authenticator;

pub(crate) use admin::DEFAULT_AUDIT_PAGE;
pub use admin::{
    AdminError, AuditFilter, AuditPage, CreatedSecret, KeySource, NewSecretRequest, PublicKeys,
    StageRequest, TtlRequest, UpdateSecretRequest, UpdatedSecret, Verification,
};
pub use crypto::CryptoAnswer;
pub use kms::KmsAnswer;
pub use principals::{
    Bootstrapped, CreatedPrincipal, IssuedTokenAnswer, MAX_CREDENTIAL_TTL_MS, NewPrincipalRequest,
    NewTokenRequest, PrincipalView, TokenView, WhoAmI,
};
pub use redeem::Redeemed;

/// Commits lost to a concurrent change are tried this many times in all (a retry re-reads the
/// state, so a stale simulation then fails closed with `KMS_SIMULATION_STALE`).
const MAX_ATTEMPTS: usize = 4;

/// How long idempotency records are kept by default: 24 hours.
pub const DEFAULT_IDEMPOTENCY_RETENTION_MS: u64 = 24 * 3600 * 1000;

/// An authenticated caller: the principal a credential proved. An embedder that runs the engine
/// in-process asserts one itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The principal: named in every audit record it causes, and scoping its idempotency keys.
    pub principal_id: PrincipalId,
    /// Its name.
    pub name: PrincipalName,
    /// Its role.
    pub role: Role,
    /// The tenants it may name.
    pub tenants: TenantScope,
    /// When it stops authenticating, if ever.
    pub expires_at_ms: Option<u64>,
}

impl Caller {
    /// A principal an embedder asserts in process (no credential to check): every tenant, no
    /// expiry.
    pub fn asserted(principal_id: PrincipalId, name: PrincipalName, role: Role) -> Self {
        Self {
            principal_id,
            name,
            role,
            tenants: TenantScope::All,
            expires_at_ms: None,
        }
    }

    /// Refuses a tenant (or the system chain) outside the caller's scope, with the same
    /// answer whether or not that tenant exists.
    pub fn may_name(&self, tenant: &TenantId) -> Result<(), ReasonCode> {
        let allowed = match &self.tenants {
            TenantScope::All => true,
            // The system chain belongs to no tenant: only a principal of every tenant reads it.
            scope => !tenant.is_system() && scope.allows(tenant),
        };
        if allowed {
            Ok(())
        } else {
            Err(ReasonCode::ForbiddenTenant)
        }
    }

    /// Whether the caller may name every tenant (the principal routes need it).
    pub fn is_global(&self) -> bool {
        self.tenants == TenantScope::All
    }
}

/// The engine over one store.
///
/// The store stays inside: hosts get the narrow reads they need ([`Engine::ready`],
/// [`Engine::prune`], [`Engine::batch_histogram`]), never the store itself, so the only way to
/// material through an engine is [`Engine::redeem`] and its checks.
///
/// ```compile_fail
/// fn reach(engine: &selene_kms_server::Engine) {
///     let _ = engine.store();
/// }
/// ```
pub struct Engine {
    store: Arc<dyn Store>,
}

impl Engine {
    /// An engine over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Whether the store can serve (for `/readyz`).
    pub async fn ready(&self) -> bool {
        self.store.ready().await
    }

    /// Removes idempotency records and handle/credential revocations past their retention.
    pub async fn prune(&self, now_ms: u64, idempotency_retention_ms: u64) -> StoreResult<u64> {
        self.store.prune(now_ms, idempotency_retention_ms).await
    }

    /// Sizes of the store's group commits so far (for metrics).
    pub fn batch_histogram(&self) -> &BatchHistogram {
        self.store.batch_histogram()
    }

    /// The store's commit failures and flush durations so far (for metrics).
    pub fn write_health(&self) -> &selene_kms_store::WriteHealth {
        self.store.write_health()
    }

    /// The signer of this store's manifests, copying each to `witness` when given. Refused when
    /// the store's manifests do not hold.
    pub async fn manifester(&self, witness: Option<&Path>) -> StoreResult<Manifester> {
        Manifester::open(self.store.clone(), witness).await
    }

    /// An authenticator over this store's caller tokens, for the HTTP host.
    pub(crate) fn authenticator(&self) -> Authenticator {
        Authenticator::new(self.store.clone())
    }

    /// Commits an audit-only unit (a refusal, a replay, a redemption).
    async fn audit_only(
        &self,
        tenant: &TenantId,
        audit: AuditRecord,
        inputs: Option<DecisionInputs>,
    ) -> StoreResult<u64> {
        self.commit_unchanging(|| CommitUnit {
            tenant: tenant.clone(),
            change: Change::None,
            audit: audit.clone(),
            idempotency: None,
            bundle: None,
            inputs: inputs.clone(),
        })
        .await
        .map(|r| r.audit_seq)
    }

    /// Commits a unit that changes no secret, built afresh by `unit` for each attempt. Such a
    /// unit cannot be stale: a `StateConflict` means the batch it rode in lost a race with
    /// another node's, so it is committed again rather than answered as a stale simulation.
    async fn commit_unchanging(&self, unit: impl Fn() -> CommitUnit) -> StoreResult<Receipt> {
        let mut attempt = 1;
        loop {
            match self.store.commit(unit()).await {
                Err(e) if e.kind == ErrorKind::StateConflict && attempt < MAX_ATTEMPTS => {
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }
}
