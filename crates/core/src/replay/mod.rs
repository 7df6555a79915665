//! Replay: every decision of a tenant's chain re-derived from the chain alone (DESIGN.md v2,
//! "Replay and policy impact").
//!
//! [`Replay`] folds a chain's records in order with the inputs kept beside each. For every
//! record of a KMS request it rebuilds, from the state the chain determines, what the decision
//! read (the policy version and secret state the inputs name, the answer under the idempotency
//! key), runs the core again at the record's time, and compares the record the host would have
//! written, answer digest included, with the one the chain holds. Every other record is folded
//! into the state. The host's idempotency rules are mirrored here: a same request under a used
//! key gets the kept answer, another request a conflict.

mod history;
mod impact;
pub mod inputs;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::{AuditAction, AuditRecord};
use crate::ids::TenantId;
use crate::keys::ServiceKeys;
use crate::pipeline::issue;
use crate::policy::evaluate;
use crate::reason::ReasonCode;
use crate::refs;
use crate::refusal::Refusal;
use crate::request::KmsRequest;
use crate::state::{SecretSnapshot, StateChange, VersionState};
use crate::wire::MaterialBundle;
use crate::{Problem, Subject};

use history::{ChainState, KeptAnswer, Unreplayable};
pub use impact::{Access, Impact, ImpactChange, MAX_IMPACT_CHANGES, PolicyImpact};
pub use inputs::{DecisionInputs, KeySeen, PolicyInputs, RequestInputs, SecretTerms};

/// What a store kept beside one record.
#[derive(Clone, Debug, PartialEq)]
pub enum Kept {
    /// Nothing (a record of an earlier build, or of an action that reads nothing).
    Nothing,
    /// The inputs, opened.
    Inputs(DecisionInputs),
    /// Something that does not open or parse: altered, or moved from another record.
    Unreadable,
}

impl Kept {
    fn inputs(&self) -> Option<&DecisionInputs> {
        match self {
            Self::Inputs(i) => Some(i),
            _ => None,
        }
    }
}

/// The first decision that did not replay.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    /// Its record's place in the chain.
    pub seq: u64,
    /// The record as the chain holds it (chain fields aside).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub recorded: Value,
    /// The record the decision gives again, or `null` when it cannot be re-run.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub replayed: Value,
    /// What differs, or why the decision cannot be re-run.
    pub why: String,
}

/// The answer of a replay.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The tenant.
    pub tenant_id: String,
    /// Records of the chain after `after_seq`.
    pub records: u64,
    /// Of those, records of KMS requests.
    pub decisions: u64,
    /// Decisions that gave the recorded record again, byte for byte.
    pub matched: u64,
    /// Decisions that did not.
    pub differ: u64,
    /// The first of those.
    pub first_difference: Option<Difference>,
    /// Where the chain stopped holding (a record altered, moved, forged or gone): nothing from
    /// there on was replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
}

/// A replay of one tenant's chain, fed its records in order.
pub struct Replay<'k> {
    keys: &'k ServiceKeys,
    tenant: TenantId,
    after_seq: u64,
    state: ChainState,
    /// Each secret name's ref, sealed once.
    secret_refs: HashMap<String, String>,
    report: ReplayReport,
}

/// Whether a record is one of a KMS request (allowed, refused or replayed; a request refused
/// before its operation validated names none).
pub fn is_request(record: &AuditRecord) -> bool {
    matches!(
        record.operation,
        None | Some(
            AuditAction::GetHandle
                | AuditAction::IssueEphemeral
                | AuditAction::Rotate
                | AuditAction::Revoke
        )
    )
}

impl<'k> Replay<'k> {
    /// A replay of `tenant`'s chain that compares the decisions after `after_seq` (every
    /// record is folded into the state).
    pub fn new(keys: &'k ServiceKeys, tenant: TenantId, after_seq: u64) -> Self {
        let report = ReplayReport {
            tenant_id: tenant.as_str().to_owned(),
            records: 0,
            decisions: 0,
            matched: 0,
            differ: 0,
            first_difference: None,
            broken: None,
        };
        Self {
            keys,
            tenant,
            after_seq,
            state: ChainState::default(),
            secret_refs: HashMap::new(),
            report,
        }
    }

    /// Folds the next record of the chain and what was kept beside it.
    pub fn push(&mut self, record: &AuditRecord, kept: Kept) {
        let counted = record.seq > self.after_seq;
        if counted {
            self.report.records += 1;
        }
        // A request's inputs are its decision's alone; the state folds from its record.
        if !is_request(record) {
            self.state.fold(record, kept.inputs());
            return;
        }
        let replayed = self.decide(record, kept);
        if counted {
            self.report.decisions += 1;
            self.compare(record, replayed);
        }
        self.state.fold(record, None);
    }

    /// The report.
    pub fn finish(self) -> ReplayReport {
        self.report
    }

    fn compare(&mut self, recorded: &AuditRecord, replayed: Result<AuditRecord, Unreplayable>) {
        let (again, why) = match replayed {
            Ok(mut again) => {
                if again.says_the_same_as(recorded) {
                    self.report.matched += 1;
                    return;
                }
                // Who asked is an input, as the record names it.
                again.principal_id.clone_from(&recorded.principal_id);
                let again = view(&again);
                let why = differing_fields(&view(recorded), &again);
                (again, why)
            }
            Err(why) => (Value::Null, why.to_owned()),
        };
        self.report.differ += 1;
        if self.report.first_difference.is_none() {
            self.report.first_difference = Some(Difference {
                seq: recorded.seq,
                recorded: view(recorded),
                replayed: again,
                why,
            });
        }
    }

    /// The record the decision gives again.
    fn decide(&mut self, record: &AuditRecord, kept: Kept) -> Result<AuditRecord, Unreplayable> {
        let inputs = match kept {
            Kept::Inputs(DecisionInputs::Request(inputs)) => *inputs,
            Kept::Inputs(_) => {
                return Err("the inputs kept beside this record are not a request's");
            }
            Kept::Nothing => return Err("no decision inputs were kept beside this record"),
            Kept::Unreadable => return Err("the inputs kept beside this record do not open"),
        };
        let principal = record.principal_id.as_deref().unwrap_or_default();
        let seq = record.seq;
        let at_ms = record.at_ms;
        let req = match KmsRequest::try_from(inputs.request) {
            Ok(req) => req,
            Err(rejected) => {
                let ctx = rejected.context;
                let bundle =
                    rejected
                        .refusal
                        .into_bundle(ctx.operation, ctx.dry_run, ctx.max_diagnostics);
                let bytes = answer_bytes(&bundle, seq);
                return Ok(
                    AuditRecord::for_request(&self.tenant, &ctx, &bundle, at_ms, false)
                        .answered(&bytes),
                );
            }
        };
        if req.tenant_id != self.tenant {
            return Err("the kept request names another tenant");
        }
        let policy = self.state.policies.at(inputs.policy_version)?;
        let name = req.secret_name.as_str();
        if !self.secret_refs.contains_key(name) {
            let sealed = refs::secret_ref(self.keys, &self.tenant, &req.secret_name);
            self.secret_refs.insert(name.to_owned(), sealed);
        }
        let secret_ref = self.secret_refs.get(name).map_or("", String::as_str);
        let secret = self.state.secret(secret_ref, inputs.state_version)?;
        // A grant commits only while what it rests on still holds (the store checks it), so one
        // that does not hold against the chain was made from a row set back.
        if record.reason_code.is_ok() && !record.dry_run && !record.replayed {
            let latest = self.state.latest(secret_ref);
            let holds = match record.operation {
                // A handle or credential rests on the version it was issued from.
                Some(AuditAction::GetHandle | AuditAction::IssueEphemeral) => {
                    let read = secret.as_deref().map(SecretSnapshot::current_version);
                    inputs.current_version == read
                        && read.and_then(|v| latest?.version_state(v)) == Some(VersionState::Active)
                }
                _ => inputs.state_version == latest.map(|s| s.state_version),
            };
            if inputs.policy_version != self.state.policies.latest() || !holds {
                return Err(
                    "the grant was decided from a policy or secret state the chain had \
                     already voided (set back in the store)",
                );
            }
        }
        let fingerprint = req.fingerprint();
        let kept_answer = self.state.answer(principal, req.idempotency_key.as_str());
        let same = match (inputs.key, &kept_answer) {
            (KeySeen::Free, _) => None,
            (KeySeen::Same, Some(a)) if a.fingerprint == fingerprint => Some(a.clone()),
            (KeySeen::Other, Some(a)) if a.fingerprint != fingerprint => None,
            _ => {
                return Err(
                    "the decision found under its idempotency key what the chain does not hold",
                );
            }
        };
        let refused = |refusal: Refusal| {
            refusal.into_bundle(Some(req.operation), req.dry_run, req.max_diagnostics)
        };
        let (bundle, change) =
            match evaluate(&req, policy.as_deref(), secret.as_deref(), self.keys, at_ms) {
                Err(refusal) => match same {
                    Some(a) if a.bundle.reason_code == refusal.reason => {
                        return Ok(replayed(&req, &a, at_ms));
                    }
                    _ => (refused(refusal), StateChange::None),
                },
                Ok(grant) => match (inputs.key, same) {
                    (_, Some(a)) => return Ok(replayed(&req, &a, at_ms)),
                    (KeySeen::Other, None) => {
                        let conflict = Refusal::new(
                            ReasonCode::IdempotencyConflict,
                            Subject::IdempotencyKey,
                            Problem::Reused,
                        );
                        (refused(conflict), StateChange::None)
                    }
                    _ => match issue(grant, secret.as_deref(), self.keys) {
                        Ok(issued) => (issued.bundle, issued.change),
                        Err(refusal) => (refused(refusal), StateChange::None),
                    },
                },
            };
        let mut bundle = bundle;
        bundle.audit_seq = Some(seq);
        let bytes = serde_json::to_vec(&bundle).unwrap_or_default();
        let again = AuditRecord::for_validated(&req, &bundle, at_ms, false)
            .making(&change)
            .answered(&bytes);
        if inputs.keyed {
            let digest = again.bundle_digest.clone().unwrap_or_default();
            self.state.keep(
                principal,
                req.idempotency_key.as_str(),
                KeptAnswer {
                    fingerprint,
                    bundle,
                    digest,
                },
            );
        }
        Ok(again)
    }
}

/// The record of an idempotent replay: the kept answer, byte for byte.
fn replayed(req: &KmsRequest, answer: &KeptAnswer, at_ms: u64) -> AuditRecord {
    let mut record = AuditRecord::for_validated(req, &answer.bundle, at_ms, true);
    record.bundle_digest = Some(answer.digest.clone());
    record
}

/// An answer's bytes as the store keeps and the caller receives them.
fn answer_bytes(bundle: &MaterialBundle, seq: u64) -> Vec<u8> {
    let mut bundle = bundle.clone();
    bundle.audit_seq = Some(seq);
    serde_json::to_vec(&bundle).unwrap_or_default()
}

/// A record as shown in a difference: every field but the chain's own.
fn view(record: &AuditRecord) -> Value {
    let mut value = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        for chain_field in ["prev_digest", "digest", "mac"] {
            map.remove(chain_field);
        }
    }
    value
}

/// The names of the fields two records' views differ in.
fn differing_fields(recorded: &Value, replayed: &Value) -> String {
    let (Value::Object(a), Value::Object(b)) = (recorded, replayed) else {
        return "the records differ".to_owned();
    };
    let mut names: Vec<&str> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.as_str())
        .chain(b.keys().filter(|k| !a.contains_key(*k)).map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    format!("the replayed record differs in: {}", names.join(", "))
}
