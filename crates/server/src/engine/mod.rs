//! The engine: the host side of PH1.KMS as a library, everything but HTTP and authentication.
//!
//! Selene OS can embed it in-process over the embedded store; the HTTP server is one thin host of
//! it. Each call reads the clock once (the caller passes `now_ms`), runs the seed's deterministic
//! sequence with the core, commits the outcome with its audit record in one unit, and answers with
//! a status, a reason code and a JSON body. Nothing material leaves unless the bundle is `OK`.

mod admin;
mod kms;
mod redeem;

use std::sync::Arc;

use selene_kms_core::{AuditRecord, Operation, ReasonCode, TenantId};
use selene_kms_store::{
    BatchHistogram, Change, CommitUnit, ErrorKind, Receipt, Role, Store, StoreResult,
};

use crate::auth::Authenticator;

pub use admin::{AdminError, NewSecretRequest, StageRequest, TtlRequest};
pub(crate) use admin::{DEFAULT_AUDIT_PAGE, admin_error};

/// Commits lost to a concurrent change are tried this many times in all (a retry re-reads the
/// state, so a stale simulation then fails closed with `KMS_SIMULATION_STALE`).
const MAX_ATTEMPTS: usize = 4;

/// How long idempotency records are kept by default: 24 hours.
pub const DEFAULT_IDEMPOTENCY_RETENTION_MS: u64 = 24 * 3600 * 1000;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Its role.
    pub role: Role,
    /// A stable, non-secret id of its credential (scopes idempotency keys).
    pub id: String,
}

/// An answer: HTTP-style status, reason code, JSON body. Its `Debug` form gives the body's
/// length, not the body, which may hold a handle or material.
#[derive(Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status a host should answer with.
    pub status: u16,
    /// The reason code (for metrics and logs).
    pub reason: ReasonCode,
    /// The operation, when known (for metrics).
    pub operation: Option<&'static str>,
    /// The JSON body.
    pub body: Arc<[u8]>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("reason", &self.reason)
            .field("operation", &self.operation)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Reply {
    fn json(reason: ReasonCode, operation: Option<&'static str>, body: Arc<[u8]>) -> Self {
        Self {
            status: reason.http_status(),
            reason,
            operation,
            body,
        }
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

    /// An authenticator over this store's caller tokens, for the HTTP host.
    pub(crate) fn authenticator(&self) -> Authenticator {
        Authenticator::new(self.store.clone())
    }

    /// Commits an audit-only unit (a refusal, a replay, a redemption).
    async fn audit_only(&self, tenant: &TenantId, audit: AuditRecord) -> StoreResult<u64> {
        self.commit_unchanging(|| CommitUnit {
            tenant: tenant.clone(),
            change: Change::None,
            audit: audit.clone(),
            idempotency: None,
            bundle: None,
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

fn op_name(op: Option<Operation>) -> Option<&'static str> {
    op.map(Operation::name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_gives_the_body_by_its_length() {
        let reply = Reply::json(
            ReasonCode::OkMaterialIssue,
            Some("GET_HANDLE"),
            Arc::from(&br#"{"secret_handle":"ksh1_handle-bytes"}"#[..]),
        );
        let shown = format!("{reply:?}");
        assert!(!shown.contains("handle-bytes"), "{shown}");
        assert!(shown.contains("body_len: 37"), "{shown}");
    }
}
