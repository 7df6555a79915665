//! `POST /v1/kms/requests`: the seed's deterministic sequence, as DESIGN.md orders it.
//!
//! (2) schema → (3) enablement → (4) access evaluate → (5) idempotency → (6–8) material issue →
//! (9) one atomic commit with the audit record. The first failure wins and is answered with a
//! refusal bundle; every answer after step 2 is audited and stored under its idempotency key.

use std::sync::Arc;

use selene_kms_core::{
    AuditRecord, KmsRequest, MaterialBundle, ReasonCode, Refusal, RejectedRequest, RequestContext,
    StateChange, evaluate, issue,
};
use selene_kms_store::{
    Change, CommitUnit, ErrorKind, IdempotencyScope, IdempotencyWrite, StoreError,
};

use super::{Caller, Engine, MAX_ATTEMPTS, Reply, op_name};
use crate::store_error::refusal_for;

fn bare_refusal_bundle(req: &RequestContext, reason: ReasonCode) -> Arc<[u8]> {
    let bundle = Refusal::bare(reason).into_bundle(req.operation, req.dry_run, req.max_diagnostics);
    encode(&bundle)
}

fn encode(bundle: &MaterialBundle) -> Arc<[u8]> {
    // A bundle is plain data; serialization cannot fail.
    serde_json::to_vec(bundle).unwrap_or_default().into()
}

fn stored_reason(bundle: &[u8]) -> Option<ReasonCode> {
    #[derive(serde::Deserialize)]
    struct Reason {
        reason_code: ReasonCode,
    }
    serde_json::from_slice::<Reason>(bundle)
        .ok()
        .map(|r| r.reason_code)
}

fn store_failure(ctx: &RequestContext, e: &StoreError) -> Reply {
    let reason = refusal_for(e);
    Reply::json(
        reason,
        op_name(ctx.operation),
        bare_refusal_bundle(ctx, reason),
    )
}

impl Engine {
    /// Runs one KMS request for an authenticated `os` caller.
    pub async fn kms_request(&self, caller: &Caller, body: &[u8], now_ms: u64) -> Reply {
        match KmsRequest::from_json(body) {
            Ok(req) => self.run(caller, &req, now_ms).await,
            Err(rejected) => self.reject(rejected, now_ms).await,
        }
    }

    /// Step 2 failed: refuse; audit when the tenant is known, never store under a key.
    async fn reject(&self, rejected: RejectedRequest, now_ms: u64) -> Reply {
        let RejectedRequest { context, refusal } = rejected;
        let reason = refusal.reason;
        let mut bundle =
            refusal.into_bundle(context.operation, context.dry_run, context.max_diagnostics);
        if let Some(tenant) = &context.tenant_id {
            let audit = AuditRecord::for_request(tenant, &context, &bundle, now_ms, false);
            match self.audit_only(tenant, audit).await {
                Ok(seq) => bundle.audit_seq = Some(seq),
                Err(e) => return store_failure(&context, &e),
            }
        }
        Reply::json(reason, op_name(context.operation), encode(&bundle))
    }

    async fn run(&self, caller: &Caller, req: &KmsRequest, now_ms: u64) -> Reply {
        let ctx = req.context();
        let scope = IdempotencyScope {
            tenant: req.tenant_id.clone(),
            caller: caller.id.clone(),
            key: req.idempotency_key.as_str().to_owned(),
        };
        let fingerprint = req.fingerprint();
        let keys = self.store.keys().clone();
        let mut check_key = req.operation.is_mutation();
        let mut attempt = 1;
        loop {
            let policy = match self.store.policy(&req.tenant_id).await {
                Ok(p) => p,
                Err(e) => return store_failure(&ctx, &e),
            };
            let secret = match self.store.secret(&req.tenant_id, &req.secret_name).await {
                Ok(s) => s,
                Err(e) => return store_failure(&ctx, &e),
            };
            // (3) enablement and (4) access.
            let grant = match evaluate(
                req,
                policy.as_ref().map(|p| &*p.policy),
                secret.as_deref(),
                &keys,
                now_ms,
            ) {
                Ok(g) => g,
                Err(refusal) => {
                    // A retry refused again for the same reason gets the stored refusal, byte for
                    // byte; a stored success is never handed to a requester who lost access.
                    if let Ok(Some(record)) = self.store.idempotency(&scope).await
                        && record.fingerprint == fingerprint
                        && stored_reason(&record.bundle_json) == Some(refusal.reason)
                    {
                        return self.replay(req, record.bundle_json, now_ms).await;
                    }
                    return self.refuse(req, &scope, fingerprint, refusal, now_ms).await;
                }
            };
            // (5) idempotency. A fresh key needs no read: the commit's unique key catches a retry,
            // which then comes round again with `check_key` set. Mutations look first, because
            // their plan is stale once the original commit has landed.
            if check_key
                && let Some(reply) = self.answer_from_key(req, &scope, fingerprint, now_ms).await
            {
                return reply;
            }
            // (6–8) issue.
            let issued = match issue(grant, secret.as_deref(), &keys) {
                Ok(i) => i,
                Err(refusal) => {
                    if !check_key
                        && let Some(reply) =
                            self.answer_from_key(req, &scope, fingerprint, now_ms).await
                    {
                        return reply;
                    }
                    return self.refuse(req, &scope, fingerprint, refusal, now_ms).await;
                }
            };
            // (9) commit.
            let change = match (&issued.change, &secret) {
                (StateChange::None, _) | (_, None) => Change::None,
                (change, Some(s)) => Change::Secret {
                    name: req.secret_name.clone(),
                    expected_state_version: s.state_version,
                    change: change.clone(),
                },
            };
            let audit =
                AuditRecord::for_request(&req.tenant_id, &ctx, &issued.bundle, now_ms, false);
            let reason = issued.bundle.reason_code;
            let unit = CommitUnit {
                tenant: req.tenant_id.clone(),
                change,
                audit,
                idempotency: Some(IdempotencyWrite {
                    scope: scope.clone(),
                    fingerprint,
                }),
                bundle: Some(issued.bundle),
            };
            match self.store.commit(unit).await {
                Ok(receipt) => {
                    let body = receipt
                        .bundle_json
                        .unwrap_or_else(|| Arc::from(&b"null"[..]));
                    return Reply::json(reason, Some(req.operation.name()), body);
                }
                // Lost a race: re-read and run again (replay, stale simulation, or success).
                Err(e) if attempt < MAX_ATTEMPTS && e.kind == ErrorKind::IdempotencyTaken => {
                    check_key = true;
                }
                Err(e) if attempt < MAX_ATTEMPTS && e.kind == ErrorKind::StateConflict => {}
                // Out of attempts, the lost race is answered like any other store failure.
                Err(e) => return store_failure(&ctx, &e),
            }
            attempt += 1;
        }
    }

    /// The answer a used idempotency key dictates: the stored one for the same request, a
    /// conflict for another; `None` when the key is free.
    async fn answer_from_key(
        &self,
        req: &KmsRequest,
        scope: &IdempotencyScope,
        fingerprint: [u8; 32],
        now_ms: u64,
    ) -> Option<Reply> {
        match self.store.idempotency(scope).await {
            Err(e) => Some(store_failure(&req.context(), &e)),
            Ok(Some(record)) if record.fingerprint == fingerprint => {
                Some(self.replay(req, record.bundle_json, now_ms).await)
            }
            Ok(Some(_)) => {
                let refusal = Refusal::new(
                    ReasonCode::IdempotencyConflict,
                    selene_kms_core::Subject::IdempotencyKey,
                    selene_kms_core::Problem::Reused,
                );
                Some(self.refuse_unstored(req, refusal, now_ms).await)
            }
            Ok(None) => None,
        }
    }

    /// A refusal after step 2: audited and stored under the key (if the key is still free).
    async fn refuse(
        &self,
        req: &KmsRequest,
        scope: &IdempotencyScope,
        fingerprint: [u8; 32],
        refusal: Refusal,
        now_ms: u64,
    ) -> Reply {
        let ctx = req.context();
        let reason = refusal.reason;
        let bundle = refusal.into_bundle(Some(req.operation), req.dry_run, req.max_diagnostics);
        let unit = |idempotency| CommitUnit {
            tenant: req.tenant_id.clone(),
            change: Change::None,
            audit: AuditRecord::for_request(&req.tenant_id, &ctx, &bundle, now_ms, false),
            idempotency,
            bundle: Some(bundle.clone()),
        };
        let stored = self
            .commit_unchanging(|| {
                unit(Some(IdempotencyWrite {
                    scope: scope.clone(),
                    fingerprint,
                }))
            })
            .await;
        let receipt = match stored {
            Err(e) if e.kind == ErrorKind::IdempotencyTaken => {
                self.commit_unchanging(|| unit(None)).await
            }
            other => other,
        };
        match receipt {
            Ok(r) => Reply::json(
                reason,
                Some(req.operation.name()),
                r.bundle_json.unwrap_or_else(|| encode(&bundle)),
            ),
            Err(e) => store_failure(&ctx, &e),
        }
    }

    /// A refusal that must not take the key (it is already taken): audited only.
    async fn refuse_unstored(&self, req: &KmsRequest, refusal: Refusal, now_ms: u64) -> Reply {
        let ctx = req.context();
        let reason = refusal.reason;
        let mut bundle = refusal.into_bundle(Some(req.operation), req.dry_run, req.max_diagnostics);
        let audit = AuditRecord::for_request(&req.tenant_id, &ctx, &bundle, now_ms, false);
        match self.audit_only(&req.tenant_id, audit).await {
            Ok(seq) => {
                bundle.audit_seq = Some(seq);
                Reply::json(reason, Some(req.operation.name()), encode(&bundle))
            }
            Err(e) => store_failure(&ctx, &e),
        }
    }

    /// The same request again: the stored answer, byte for byte, and a replay record.
    async fn replay(&self, req: &KmsRequest, stored: Arc<[u8]>, now_ms: u64) -> Reply {
        let ctx = req.context();
        let Ok(bundle) = serde_json::from_slice::<MaterialBundle>(&stored) else {
            tracing::error!("a stored idempotent answer does not parse");
            return Reply::json(
                ReasonCode::InternalPipelineError,
                Some(req.operation.name()),
                bare_refusal_bundle(&ctx, ReasonCode::InternalPipelineError),
            );
        };
        let audit = AuditRecord::for_request(&req.tenant_id, &ctx, &bundle, now_ms, true);
        if let Err(e) = self.audit_only(&req.tenant_id, audit).await {
            return store_failure(&ctx, &e);
        }
        Reply::json(bundle.reason_code, Some(req.operation.name()), stored)
    }
}
