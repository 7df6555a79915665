//! Replay and policy impact over a store: a tenant's records, page by page with the inputs kept
//! beside each, fed in chain order to the core's folds ([`Replay`], [`Impact`]).

use selene_kms_core::replay::{Impact, PolicyImpact};
use selene_kms_core::{ChainBreak, Policy, Replay, ReplayReport, TenantId, TenantWalk};

use crate::error::StoreResult;
use crate::model::KeptRecord;
use crate::store::Store;

/// Records read per page.
const PAGE: usize = 256;

/// A fold's answer over a tenant's chain, with the chain's head.
#[derive(Clone, Debug, PartialEq)]
pub struct OverChain<T> {
    /// The sequence number of the chain's last record.
    pub head_seq: u64,
    /// The answer.
    pub answer: T,
}

/// What walking a chain found.
struct Walked {
    head_seq: u64,
    broken: Option<ChainBreak>,
}

/// Feeds every record of `tenant`'s chain, in order, to `push`, once it proves to be the KMS's
/// (linked, matching its digest, carrying the KMS's MAC); stops at the first that does not.
/// `None` for a tenant with no chain.
async fn each_record(
    store: &dyn Store,
    tenant: &TenantId,
    mut push: impl FnMut(KeptRecord),
) -> StoreResult<Option<Walked>> {
    let mut walk = TenantWalk::new(tenant.as_str(), Vec::new(), Some(store.keys()));
    let mut after = 0;
    loop {
        let page = store.kept_records(tenant, after, PAGE).await?;
        let full = page.len() == PAGE;
        for kept in page {
            after = kept.record.seq;
            if let Err(broken) = walk.push(&kept.record) {
                return Ok(Some(Walked {
                    head_seq: after,
                    broken: Some(broken),
                }));
            }
            push(kept);
        }
        if !full {
            return Ok((after > 0).then_some(Walked {
                head_seq: after,
                broken: None,
            }));
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
    let walked = each_record(store, tenant, |kept| replay.push(&kept.record, kept.kept)).await?;
    Ok(walked.map(|w| {
        let mut answer = replay.finish();
        answer.broken = w.broken.map(|b| b.to_string());
        OverChain {
            head_seq: w.head_seq,
            answer,
        }
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
    let walked = each_record(store, tenant, |kept| impact.push(&kept.record, kept.kept)).await?;
    Ok(walked.map(|w| {
        let mut answer = impact.finish();
        answer.broken = w.broken.map(|b| b.to_string());
        OverChain {
            head_seq: w.head_seq,
            answer,
        }
    }))
}
