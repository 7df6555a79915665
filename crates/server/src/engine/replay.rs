//! Replay and policy impact (DESIGN.md v2): every decision of a tenant's chain re-derived, and a
//! candidate policy's effect on the recorded requests shown before it is applied.

use selene_kms_core::replay::PolicyImpact;
use selene_kms_core::{AuditAction, AuditRecord, Policy, ReasonCode, ReplayReport, TenantId};
use selene_kms_store::replay::{self, OverChain};

use super::{AdminError, Caller, Engine};

/// `after_seq` must name a record of the chain (or 0); a tenant without a chain is unknown.
fn within<T>(over: Option<OverChain<T>>, after_seq: u64) -> Result<T, AdminError> {
    match over {
        None => Err(ReasonCode::PolicyNotFound.into()),
        Some(over) if after_seq > over.head_seq => Err(ReasonCode::ValidationFailed.into()),
        Some(over) => Ok(over.answer),
    }
}

impl Engine {
    /// Replays every decision of `tenant`'s chain after `after_seq`. Reads only.
    pub async fn replay(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        after_seq: u64,
    ) -> Result<ReplayReport, AdminError> {
        caller.may_name(tenant)?;
        within(
            replay::replay(&*self.store, tenant, after_seq).await?,
            after_seq,
        )
    }

    /// The impact of `candidate` on the requests `tenant`'s chain recorded after `after_seq`.
    /// Changes nothing; the simulation itself is recorded (`POLICY_SIMULATE`, naming the
    /// candidate's digest).
    pub async fn simulate_policy(
        &self,
        caller: &Caller,
        tenant: &TenantId,
        candidate: &Policy,
        after_seq: u64,
        now_ms: u64,
    ) -> Result<PolicyImpact, AdminError> {
        caller.may_name(tenant)?;
        let over = replay::simulate(&*self.store, tenant, candidate, after_seq).await?;
        let impact = within(over, after_seq)?;
        let mut record = AuditRecord::for_action(
            tenant,
            AuditAction::PolicySimulate,
            ReasonCode::OkAccessEvaluate,
            now_ms,
        )
        .by(&caller.principal_id);
        record.policy_digest = Some(candidate.document().digest());
        self.audit_only(tenant, record, None).await?;
        Ok(impact)
    }
}
