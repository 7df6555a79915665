//! KMS requests: the seed's deterministic sequence, as DESIGN.md orders it.
//!
//! (2) schema → (3) enablement → (4) access evaluate → (5) idempotency → (6–8) material issue →
//! (9) one atomic commit with the audit record. The first failure wins and is answered with a
//! refusal bundle; every answer after step 2 is audited and stored under its idempotency key.
//! Step 2 is the host's: it turns what it received into a [`KmsRequest`], or hands the
//! [`RejectedRequest`] to [`Engine::kms_rejected`] so that the refusal is audited too.

use std::fmt;
use std::sync::Arc;

use selene_kms_core::replay::{KeySeen, RequestInputs};
use selene_kms_core::{
    AuditRecord, DecisionInputs, KmsRequest, MaterialBundle, ReasonCode, Refusal, RejectedRequest,
    RequestContext, SecretSnapshot, StateChange, evaluate, issue,
};
use selene_kms_store::{
    Change, CommitUnit, ErrorKind, IdempotencyScope, IdempotencyWrite, Receipt, StoreError,
    StoredPolicy,
};

use super::{Caller, Engine, MAX_ATTEMPTS};
use crate::store_error::refusal_for;

/// The answer to a KMS request: the bundle, and the exact bytes that answer it.
///
/// The bytes are what the store keeps under the idempotency key, so a retry of the same request
/// gets the first answer again byte for byte, audit sequence number included; a host forwards
/// them as they are rather than encoding the bundle again. The bundle is the same answer, typed,
/// for an embedder that acts on it. Its `Debug` form is the bundle's (refs hidden) and the
/// bytes' length: the bytes hold the refs in clear.
pub struct KmsAnswer {
    bundle: MaterialBundle,
    bytes: Arc<[u8]>,
}

impl KmsAnswer {
    /// An answer that was never stored: its bytes are the bundle's encoding.
    fn encoded(bundle: MaterialBundle) -> Self {
        // A bundle is plain data; serialization cannot fail.
        let bytes = serde_json::to_vec(&bundle).unwrap_or_default().into();
        Self { bundle, bytes }
    }

    /// An answer committed with its audit record: the store numbered it and kept its bytes.
    fn committed(mut bundle: MaterialBundle, receipt: Receipt) -> Self {
        bundle.audit_seq = Some(receipt.audit_seq);
        match receipt.bundle_json {
            Some(bytes) => Self { bundle, bytes },
            None => Self::encoded(bundle),
        }
    }

    /// A refusal with no diagnostic, for a request whose context is known.
    fn bare_refusal(ctx: &RequestContext, reason: ReasonCode) -> Self {
        Self::encoded(Refusal::bare(reason).into_bundle(
            ctx.operation,
            ctx.dry_run,
            ctx.max_diagnostics,
        ))
    }

    /// A store failure, answered by the one mapping.
    fn store_failure(ctx: &RequestContext, e: &StoreError) -> Self {
        Self::bare_refusal(ctx, refusal_for(e))
    }

    /// The bundle.
    pub fn bundle(&self) -> &MaterialBundle {
        &self.bundle
    }

    /// The bundle's JSON, byte for byte as first answered.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// The reason code (the bundle's).
    pub fn reason(&self) -> ReasonCode {
        self.bundle.reason_code
    }

    /// Whether the OS may forward the bundle's outputs.
    pub fn is_ok(&self) -> bool {
        self.bundle.is_ok()
    }

    /// The bundle and its bytes.
    pub fn into_parts(self) -> (MaterialBundle, Arc<[u8]>) {
        (self.bundle, self.bytes)
    }
}

impl fmt::Debug for KmsAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsAnswer")
            .field("bundle", &self.bundle)
            .field("bytes_len", &self.bytes.len())
            .finish()
    }
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

impl Engine {
    /// Answers a request that failed validation (step 2): the refusal bundle, audited when the
    /// tenant is known, never stored under a key (an unvalidated key names nothing). A host
    /// hands every rejection here rather than answering it itself, so none goes unaudited. A
    /// tenant outside the caller's scope gets `KMS_FORBIDDEN_TENANT` and no record in its chain.
    pub async fn kms_rejected(
        &self,
        caller: &Caller,
        rejected: RejectedRequest,
        now_ms: u64,
    ) -> KmsAnswer {
        let RejectedRequest {
            context,
            refusal,
            raw,
        } = rejected;
        if let Some(tenant) = &context.tenant_id
            && let Err(reason) = caller.may_name(tenant)
        {
            return KmsAnswer::bare_refusal(&context, reason);
        }
        let bundle =
            refusal.into_bundle(context.operation, context.dry_run, context.max_diagnostics);
        let Some(tenant) = &context.tenant_id else {
            return KmsAnswer::encoded(bundle);
        };
        let inputs =
            raw.map(|raw| DecisionInputs::Request(Box::new(RequestInputs::rejected(*raw))));
        let unit = || CommitUnit {
            tenant: tenant.clone(),
            change: Change::None,
            audit: AuditRecord::for_request(tenant, &context, &bundle, now_ms, false)
                .by(&caller.principal_id),
            idempotency: None,
            bundle: Some(bundle.clone()),
            inputs: inputs.clone(),
        };
        match self.commit_unchanging(unit).await {
            Ok(receipt) => KmsAnswer::committed(bundle, receipt),
            Err(e) => KmsAnswer::store_failure(&context, &e),
        }
    }

    /// Runs one validated KMS request for an authenticated `os` caller. The caller's principal
    /// scopes the idempotency key, so two principals never see each other's stored answers,
    /// while a principal's retry with a rotated token still finds its own. A tenant outside the
    /// caller's scope gets `KMS_FORBIDDEN_TENANT` and no record in its chain.
    pub async fn kms(&self, caller: &Caller, req: &KmsRequest, now_ms: u64) -> KmsAnswer {
        if let Err(reason) = caller.may_name(&req.tenant_id) {
            return KmsAnswer::bare_refusal(&req.context(), reason);
        }
        let scope = IdempotencyScope {
            tenant: req.tenant_id.clone(),
            caller: caller.principal_id.as_str().to_owned(),
            key: req.idempotency_key.as_str().to_owned(),
        };
        let fingerprint = req.fingerprint();
        let keys = self.store.keys().clone();
        let mut check_key = req.operation.is_mutation();
        // A first decision may be made from what this node remembers: it ends only in a
        // commit, which holds a grant to the committed state; every other ending is decided
        // again from the store. A dry run grants nothing, so its commit checks nothing, and it
        // is decided from the store.
        let mut remembered = match req.dry_run {
            true => None,
            false => self.store.remembered(&req.tenant_id, &req.secret_name),
        };
        let mut attempt = 1;
        loop {
            let from_memory = remembered.is_some();
            let (policy, secret) = match remembered.take() {
                Some(r) => (Some(r.policy), Some(r.secret)),
                None => match self.committed_state(req).await {
                    Ok(state) => state,
                    Err(e) => return KmsAnswer::store_failure(&req.context(), &e),
                },
            };
            let read = Read {
                policy_version: policy.as_ref().map(|p| p.version),
                state_version: secret.as_ref().map(|s| s.state_version),
                current_version: secret.as_ref().map(|s| s.current_version()),
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
                Err(_) if from_memory => continue,
                Err(refusal) => {
                    // A retry refused again for the same reason gets the stored refusal, byte for
                    // byte; a stored success is never handed to a requester who lost access.
                    let mut key = KeySeen::Free;
                    if let Ok(Some(record)) = self.store.idempotency(&scope).await {
                        key = if record.fingerprint == fingerprint {
                            KeySeen::Same
                        } else {
                            KeySeen::Other
                        };
                        if key == KeySeen::Same
                            && stored_reason(&record.bundle_json) == Some(refusal.reason)
                        {
                            let inputs = read.inputs(req, key);
                            return self
                                .answer_again(caller, req, record.bundle_json, inputs, now_ms)
                                .await;
                        }
                    }
                    let inputs = read.inputs(req, key);
                    return self
                        .refuse(caller, req, &scope, fingerprint, refusal, inputs, now_ms)
                        .await;
                }
            };
            // (5) idempotency. A fresh key needs no read: the commit's unique key catches a retry,
            // which then comes round again with `check_key` set. Mutations look first, because
            // their plan is stale once the original commit has landed.
            // From memory, the commit's unique key is the check.
            if check_key
                && !from_memory
                && let Some(reply) = self
                    .answer_from_key(caller, req, &scope, fingerprint, &read, now_ms)
                    .await
            {
                return reply;
            }
            // (6–8) issue.
            let issued = match issue(grant, secret.as_deref(), &keys) {
                Ok(i) => i,
                Err(_) if from_memory => continue,
                Err(refusal) => {
                    if !check_key
                        && let Some(reply) = self
                            .answer_from_key(caller, req, &scope, fingerprint, &read, now_ms)
                            .await
                    {
                        return reply;
                    }
                    let inputs = read.inputs(req, KeySeen::Free);
                    return self
                        .refuse(caller, req, &scope, fingerprint, refusal, inputs, now_ms)
                        .await;
                }
            };
            // (9) commit.
            let change = match (&issued.change, &secret) {
                (StateChange::None, _) | (_, None) => Change::None,
                (change, Some(s)) => Change::Secret {
                    name: req.secret_name.clone(),
                    expected_state_version: s.state_version,
                    change: change.clone(),
                    // A generated rotation's new value is drawn here, by the host.
                    material: match change {
                        StateChange::Rotate {
                            from_staged: false, ..
                        } => match crate::generate_material() {
                            Ok(material) => Some(material),
                            Err(e) => return KmsAnswer::store_failure(&req.context(), &e),
                        },
                        _ => None,
                    },
                },
            };
            let audit = AuditRecord::for_validated(req, &issued.bundle, now_ms, false)
                .making(&issued.change)
                .by(&caller.principal_id);
            let answered = issued.bundle.clone();
            let unit = CommitUnit {
                tenant: req.tenant_id.clone(),
                change,
                audit,
                idempotency: Some(IdempotencyWrite {
                    scope: scope.clone(),
                    fingerprint,
                }),
                bundle: Some(issued.bundle),
                inputs: read.inputs(req, KeySeen::Free),
            };
            match self.store.commit(unit).await {
                Ok(receipt) => return KmsAnswer::committed(answered, receipt),
                // Lost a race: re-read and run again (replay, stale simulation, or success).
                Err(e) if attempt < MAX_ATTEMPTS && e.kind == ErrorKind::IdempotencyTaken => {
                    check_key = true;
                }
                Err(e) if attempt < MAX_ATTEMPTS && e.kind == ErrorKind::StateConflict => {}
                // Out of attempts, the lost race is answered like any other store failure.
                Err(e) => return KmsAnswer::store_failure(&req.context(), &e),
            }
            // A decision from memory is tried once, on top of the attempts from the store.
            if !from_memory {
                attempt += 1;
            }
        }
    }

    /// The tenant's policy and the request's secret as committed.
    async fn committed_state(
        &self,
        req: &KmsRequest,
    ) -> Result<(Option<StoredPolicy>, Option<Arc<SecretSnapshot>>), StoreError> {
        let policy = self.store.policy(&req.tenant_id).await?;
        let secret = self.store.secret(&req.tenant_id, &req.secret_name).await?;
        Ok((policy, secret))
    }

    /// The answer a used idempotency key dictates: the stored one for the same request, a
    /// conflict for another; `None` when the key is free.
    async fn answer_from_key(
        &self,
        caller: &Caller,
        req: &KmsRequest,
        scope: &IdempotencyScope,
        fingerprint: [u8; 32],
        read: &Read,
        now_ms: u64,
    ) -> Option<KmsAnswer> {
        match self.store.idempotency(scope).await {
            Err(e) => Some(KmsAnswer::store_failure(&req.context(), &e)),
            Ok(Some(record)) if record.fingerprint == fingerprint => {
                let inputs = read.inputs(req, KeySeen::Same);
                Some(
                    self.answer_again(caller, req, record.bundle_json, inputs, now_ms)
                        .await,
                )
            }
            Ok(Some(_)) => {
                let refusal = Refusal::new(
                    ReasonCode::IdempotencyConflict,
                    selene_kms_core::Subject::IdempotencyKey,
                    selene_kms_core::Problem::Reused,
                );
                let inputs = read.inputs(req, KeySeen::Other);
                Some(
                    self.refuse_unstored(caller, req, refusal, inputs, now_ms)
                        .await,
                )
            }
            Ok(None) => None,
        }
    }

    /// A refusal after step 2: audited and stored under the key (if the key is still free).
    #[allow(
        clippy::too_many_arguments,
        reason = "one decision's parts, each named"
    )]
    async fn refuse(
        &self,
        caller: &Caller,
        req: &KmsRequest,
        scope: &IdempotencyScope,
        fingerprint: [u8; 32],
        refusal: Refusal,
        inputs: Option<DecisionInputs>,
        now_ms: u64,
    ) -> KmsAnswer {
        let bundle = refusal.into_bundle(Some(req.operation), req.dry_run, req.max_diagnostics);
        let unit = |idempotency| CommitUnit {
            tenant: req.tenant_id.clone(),
            change: Change::None,
            audit: AuditRecord::for_validated(req, &bundle, now_ms, false).by(&caller.principal_id),
            idempotency,
            bundle: Some(bundle.clone()),
            inputs: inputs.clone(),
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
            Ok(r) => KmsAnswer::committed(bundle, r),
            Err(e) => KmsAnswer::store_failure(&req.context(), &e),
        }
    }

    /// A refusal that must not take the key (it is already taken): audited only.
    async fn refuse_unstored(
        &self,
        caller: &Caller,
        req: &KmsRequest,
        refusal: Refusal,
        inputs: Option<DecisionInputs>,
        now_ms: u64,
    ) -> KmsAnswer {
        let bundle = refusal.into_bundle(Some(req.operation), req.dry_run, req.max_diagnostics);
        let unit = || CommitUnit {
            tenant: req.tenant_id.clone(),
            change: Change::None,
            audit: AuditRecord::for_validated(req, &bundle, now_ms, false).by(&caller.principal_id),
            idempotency: None,
            bundle: Some(bundle.clone()),
            inputs: inputs.clone(),
        };
        match self.commit_unchanging(unit).await {
            Ok(receipt) => KmsAnswer::committed(bundle, receipt),
            Err(e) => KmsAnswer::store_failure(&req.context(), &e),
        }
    }

    /// The same request again: the stored answer, byte for byte, and a replay record that
    /// names its digest.
    async fn answer_again(
        &self,
        caller: &Caller,
        req: &KmsRequest,
        stored: Arc<[u8]>,
        inputs: Option<DecisionInputs>,
        now_ms: u64,
    ) -> KmsAnswer {
        let Ok(bundle) = serde_json::from_slice::<MaterialBundle>(&stored) else {
            tracing::error!("a stored idempotent answer does not parse");
            return KmsAnswer::bare_refusal(&req.context(), ReasonCode::InternalPipelineError);
        };
        let audit = AuditRecord::for_validated(req, &bundle, now_ms, true)
            .by(&caller.principal_id)
            .answered(&stored);
        if let Err(e) = self.audit_only(&req.tenant_id, audit, inputs).await {
            return KmsAnswer::store_failure(&req.context(), &e);
        }
        KmsAnswer {
            bundle,
            bytes: stored,
        }
    }
}

/// What a decision read: kept beside its record, so that a replay reads the same.
struct Read {
    policy_version: Option<u64>,
    state_version: Option<u64>,
    current_version: Option<u64>,
}

impl Read {
    /// The inputs of `req`'s decision, which found `key` under its idempotency key.
    fn inputs(&self, req: &KmsRequest, key: KeySeen) -> Option<DecisionInputs> {
        Some(DecisionInputs::Request(Box::new(RequestInputs {
            request: req.to_raw(),
            policy_version: self.policy_version,
            state_version: self.state_version,
            current_version: self.current_version,
            key,
            keyed: false,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_gives_the_bytes_by_their_length_and_hides_the_handle() {
        let mut bundle =
            MaterialBundle::refusal(ReasonCode::OkMaterialIssue, Vec::new(), None, false);
        bundle.secret_handle = Some("ksh1_handle-bytes".to_owned());
        let answer = KmsAnswer::encoded(bundle);
        let shown = format!("{answer:?}");
        assert!(!shown.contains("handle-bytes"), "{shown}");
        let len = answer.bytes().len();
        assert!(shown.contains(&format!("bytes_len: {len}")), "{shown}");
    }
}
