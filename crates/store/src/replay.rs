//! Replay and policy impact over a store: a tenant's records, page by page with the inputs kept
//! beside each, fed in chain order to the core's folds ([`Replay`], [`Impact`]).

use selene_kms_core::replay::{Impact, PolicyImpact};
use selene_kms_core::{Policy, Replay, ReplayReport, TenantId};

use crate::error::StoreResult;
use crate::model::KeptRecord;
use crate::store::Store;

/// Records read per page.
const PAGE: usize = 1000;

/// A fold's answer over a tenant's chain, with the chain's head.
#[derive(Clone, Debug, PartialEq)]
pub struct OverChain<T> {
    /// The sequence number of the chain's last record.
    pub head_seq: u64,
    /// The answer.
    pub answer: T,
}

/// Feeds every record of `tenant`'s chain, in order, to `push`; the head's sequence number, or
/// `None` for a tenant with no chain.
async fn each_record(
    store: &dyn Store,
    tenant: &TenantId,
    mut push: impl FnMut(&KeptRecord),
) -> StoreResult<Option<u64>> {
    let mut after = 0;
    loop {
        let page = store.kept_records(tenant, after, PAGE).await?;
        for kept in &page {
            push(kept);
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = last.record.seq,
            Some(last) => return Ok(Some(last.record.seq)),
            None if after == 0 => return Ok(None),
            None => return Ok(Some(after)),
        }
    }
}

/// Replays every decision of `tenant`'s chain after `after_seq`; `None` for a tenant with no
/// chain.
pub async fn replay(
    store: &dyn Store,
    tenant: &TenantId,
    after_seq: u64,
) -> StoreResult<Option<OverChain<ReplayReport>>> {
    let mut replay = Replay::new(store.keys(), tenant.clone(), after_seq);
    let head = each_record(store, tenant, |kept| replay.push(&kept.record, &kept.kept)).await?;
    Ok(head.map(|head_seq| OverChain {
        head_seq,
        answer: replay.finish(),
    }))
}

/// The impact of `candidate` on the requests of `tenant`'s chain after `after_seq`; `None` for
/// a tenant with no chain.
pub async fn simulate(
    store: &dyn Store,
    tenant: &TenantId,
    candidate: &Policy,
    after_seq: u64,
) -> StoreResult<Option<OverChain<PolicyImpact>>> {
    let mut impact = Impact::new(candidate, after_seq);
    let head = each_record(store, tenant, |kept| impact.push(&kept.record, &kept.kept)).await?;
    Ok(head.map(|head_seq| OverChain {
        head_seq,
        answer: impact.finish(),
    }))
}
