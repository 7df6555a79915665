//! Policy impact: the recorded KMS requests of a chain re-evaluated (enablement and
//! authorization) under a candidate policy, against the access each had under the policy it
//! read.

use serde::{Deserialize, Serialize};

use crate::audit::{AuditAction, AuditRecord};
use crate::policy::{Policy, access};
use crate::replay::history::PolicyHistory;
use crate::replay::{DecisionInputs, Kept, is_request};
use crate::request::KmsRequest;
use crate::wire::Operation;

/// Most changes a simulation lists; its counts are always complete.
pub const MAX_IMPACT_CHANGES: usize = 1000;

/// An access outcome.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Access {
    /// Enabled and authorized.
    Allow,
    /// Refused by enablement or authorization.
    Deny,
}

impl Access {
    fn of(allowed: bool) -> Self {
        if allowed { Self::Allow } else { Self::Deny }
    }
}

/// One recorded request whose access the candidate policy changes.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImpactChange {
    /// Its record's place in the chain.
    pub seq: u64,
    /// Its operation.
    pub operation: Operation,
    /// The secret it named.
    pub secret_name: String,
    /// The requesting engine.
    pub requester_engine_id: String,
    /// The user it asked for.
    pub requester_user_id: Option<String>,
    /// Its access under the policy it read.
    pub was: Access,
    /// Its access under the candidate.
    pub now: Access,
}

/// The impact of a candidate policy on a chain's recorded requests.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyImpact {
    /// Requests re-evaluated: every validated request after `after_seq` whose policy is known.
    pub evaluated: u64,
    /// Of those, allowed then and denied now.
    pub allow_to_deny: u64,
    /// Of those, denied then and allowed now.
    pub deny_to_allow: u64,
    /// The first [`MAX_IMPACT_CHANGES`] changes, in chain order.
    pub changes: Vec<ImpactChange>,
    /// Recorded requests after `after_seq` that could not be re-evaluated: their inputs are
    /// missing (an earlier build), do not open, or name a policy the chain does not keep.
    pub not_evaluated: u64,
    /// Where the chain stopped holding (a record altered, moved, forged or gone): nothing from
    /// there on was evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
}

/// A simulation of `candidate` over one chain, fed its records in order.
pub struct Impact<'p> {
    candidate: &'p Policy,
    after_seq: u64,
    policies: PolicyHistory,
    impact: PolicyImpact,
}

impl<'p> Impact<'p> {
    /// A simulation over the requests recorded after `after_seq`.
    pub fn new(candidate: &'p Policy, after_seq: u64) -> Self {
        Self {
            candidate,
            after_seq,
            policies: PolicyHistory::default(),
            impact: PolicyImpact::default(),
        }
    }

    /// Folds the next record of the chain and what was kept beside it.
    pub fn push(&mut self, record: &AuditRecord, kept: Kept) {
        if record.operation == Some(AuditAction::SetPolicy) && record.reason_code.is_ok() {
            self.policies.set(record, kept.inputs());
            return;
        }
        if record.seq <= self.after_seq || !is_request(record) {
            return;
        }
        let inputs = match kept {
            Kept::Inputs(DecisionInputs::Request(inputs)) => inputs,
            _ => {
                self.impact.not_evaluated += 1;
                return;
            }
        };
        // A request refused at schema time never reached access.
        let Ok(req) = KmsRequest::try_from(inputs.request) else {
            return;
        };
        let Ok(read) = self.policies.at(inputs.policy_version) else {
            self.impact.not_evaluated += 1;
            return;
        };
        let was = Access::of(access(&req, read.as_deref()).is_ok());
        let now = Access::of(access(&req, Some(self.candidate)).is_ok());
        self.impact.evaluated += 1;
        match (was, now) {
            (Access::Allow, Access::Deny) => self.impact.allow_to_deny += 1,
            (Access::Deny, Access::Allow) => self.impact.deny_to_allow += 1,
            _ => return,
        }
        if self.impact.changes.len() < MAX_IMPACT_CHANGES {
            self.impact.changes.push(ImpactChange {
                seq: record.seq,
                operation: req.operation,
                secret_name: req.secret_name.as_str().to_owned(),
                requester_engine_id: req.requester.engine.as_str().to_owned(),
                requester_user_id: req.requester.user.as_ref().map(|u| u.as_str().to_owned()),
                was,
                now,
            });
        }
    }

    /// The impact.
    pub fn finish(self) -> PolicyImpact {
        self.impact
    }
}
