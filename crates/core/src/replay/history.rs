//! The state a tenant's chain determines, folded record by record: every policy version, the
//! recent states of every secret, and the answers kept under idempotency keys.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::audit::{AuditAction, AuditRecord};
use crate::policy::Policy;
use crate::replay::inputs::{DecisionInputs, SecretTerms};
use crate::state::{SecretSnapshot, VersionState, terms_digest};
use crate::wire::{MaterialBundle, TombstoneTarget};

/// How many past states of a secret a decision may still cite: one that read a snapshot and
/// committed after later changes (a read, or a refusal, races no compare-and-set) names an
/// older state version than the chain's latest.
const STATES_KEPT: usize = 64;

/// Why a decision's inputs cannot be re-run against the chain.
pub(crate) type Unreplayable = &'static str;

/// A policy version as the chain has it.
enum PolicyAt {
    /// The document kept beside its SET_POLICY, whose digest the record names.
    Known(Arc<Policy>),
    /// A SET_POLICY without its document, or with one that is not the one the record names.
    Unknown(Unreplayable),
}

/// Every policy version of a tenant's chain.
#[derive(Default)]
pub(crate) struct PolicyHistory {
    versions: HashMap<u64, PolicyAt>,
    latest: Option<u64>,
}

impl PolicyHistory {
    /// Folds a SET_POLICY record and its kept inputs.
    pub(crate) fn set(&mut self, record: &AuditRecord, inputs: Option<&DecisionInputs>) {
        let Some(version) = record.policy_version else {
            return;
        };
        let at = match inputs {
            Some(DecisionInputs::Policy(p)) => {
                if record.policy_digest.as_deref() != Some(p.document.digest().as_str()) {
                    PolicyAt::Unknown(
                        "the policy kept beside its SET_POLICY is not the one the chain names",
                    )
                } else {
                    match Policy::try_from(&p.document) {
                        Ok(policy) => PolicyAt::Known(Arc::new(policy)),
                        Err(_) => PolicyAt::Unknown("the policy the chain names does not validate"),
                    }
                }
            }
            _ => PolicyAt::Unknown("no policy document was kept beside its SET_POLICY"),
        };
        self.versions.insert(version, at);
        self.latest = Some(version);
    }

    /// The version the chain set last (`None`: none yet).
    pub(crate) fn latest(&self) -> Option<u64> {
        self.latest
    }

    /// The policy a decision read at `version` (`None`: it read none).
    pub(crate) fn at(&self, version: Option<u64>) -> Result<Option<Arc<Policy>>, Unreplayable> {
        let Some(version) = version else {
            return Ok(None);
        };
        match self.versions.get(&version) {
            Some(PolicyAt::Known(p)) => Ok(Some(p.clone())),
            Some(PolicyAt::Unknown(why)) => Err(why),
            None => Err("the decision read a policy version the chain does not hold before it"),
        }
    }
}

/// A secret's recent states, newest last.
enum SecretAt {
    Known(VecDeque<Arc<SecretSnapshot>>),
    Unknown(Unreplayable),
}

/// An answer kept under an idempotency key.
pub(crate) struct KeptAnswer {
    /// The request's fingerprint.
    pub(crate) fingerprint: [u8; 32],
    /// The answer, `audit_seq` included.
    pub(crate) bundle: MaterialBundle,
    /// Its bytes' digest.
    pub(crate) digest: String,
}

/// The state a tenant's chain determines, as of the record folded last.
#[derive(Default)]
pub(crate) struct ChainState {
    pub(crate) policies: PolicyHistory,
    secrets: HashMap<String, SecretAt>,
    /// By principal, then by key.
    answers: HashMap<String, HashMap<String, Arc<KeptAnswer>>>,
}

impl ChainState {
    /// The snapshot of the secret at `secret_ref` a decision read at `state_version` (`None`:
    /// it read none).
    pub(crate) fn secret(
        &self,
        secret_ref: &str,
        state_version: Option<u64>,
    ) -> Result<Option<Arc<SecretSnapshot>>, Unreplayable> {
        let Some(version) = state_version else {
            return Ok(None);
        };
        match self.secrets.get(secret_ref) {
            Some(SecretAt::Known(states)) => states
                .iter()
                .rev()
                .find(|s| s.state_version == version)
                .cloned()
                .map(Some)
                .ok_or("the decision read a state of the secret the chain does not hold before it"),
            Some(SecretAt::Unknown(why)) => Err(why),
            None => Err("the decision read a secret the chain has not created before it"),
        }
    }

    /// The state the chain gave the secret at `secret_ref` last (`None`: not created, or its
    /// terms are not kept).
    pub(crate) fn latest(&self, secret_ref: &str) -> Option<&SecretSnapshot> {
        match self.secrets.get(secret_ref) {
            Some(SecretAt::Known(states)) => states.back().map(|s| &**s),
            _ => None,
        }
    }

    /// The answer kept under `(principal, key)`.
    pub(crate) fn answer(&self, principal: &str, key: &str) -> Option<Arc<KeptAnswer>> {
        self.answers.get(principal)?.get(key).cloned()
    }

    /// Keeps an answer under `(principal, key)`, as the store did.
    pub(crate) fn keep(&mut self, principal: &str, key: &str, answer: KeptAnswer) {
        let keys = match self.answers.get_mut(principal) {
            Some(keys) => keys,
            None => self.answers.entry(principal.to_owned()).or_default(),
        };
        keys.insert(key.to_owned(), Arc::new(answer));
    }

    /// Folds what a committed record changed, as the record itself says.
    pub(crate) fn fold(&mut self, record: &AuditRecord, inputs: Option<&DecisionInputs>) {
        if !record.reason_code.is_ok() || record.dry_run || record.replayed {
            return;
        }
        if record.operation == Some(AuditAction::SetPolicy) {
            self.policies.set(record, inputs);
            return;
        }
        let Some(secret_ref) = record.secret_ref.as_deref() else {
            return;
        };
        match record.operation {
            Some(AuditAction::CreateSecret) => {
                let at = match inputs {
                    Some(DecisionInputs::Secret(terms)) => created(secret_ref, record, terms),
                    _ => SecretAt::Unknown("no terms were kept beside the secret's CREATE_SECRET"),
                };
                self.secrets.insert(secret_ref.to_owned(), at);
            }
            Some(AuditAction::StageVersion) => self.change(secret_ref, |s| s.staged = true),
            Some(AuditAction::UpdateSecret) => {
                if let Some(min) = record.min_decryption_version {
                    self.change(secret_ref, |s| s.min_decryption_version = min);
                }
            }
            Some(AuditAction::Rotate) => self.change(secret_ref, |s| {
                s.versions.push(VersionState::Active);
                s.staged = false;
            }),
            Some(AuditAction::Revoke) => {
                let version = record.revoked_version;
                match record.revoked_target {
                    Some(TombstoneTarget::Version) => self.change(secret_ref, |s| {
                        if let Some(v) = version {
                            crate::state::mark_revoked(&mut s.versions, v);
                        }
                    }),
                    Some(TombstoneTarget::AllVersions) => {
                        self.change(secret_ref, |s| s.versions.fill(VersionState::Revoked));
                    }
                    // A handle or credential revocation changes no version, and still advances
                    // the secret's state version.
                    _ => self.change(secret_ref, |_| {}),
                }
            }
            _ => {}
        }
    }

    /// The secret's next state: `edit` applied, its state version advanced.
    fn change(&mut self, secret_ref: &str, edit: impl FnOnce(&mut SecretSnapshot)) {
        let Some(SecretAt::Known(states)) = self.secrets.get_mut(secret_ref) else {
            return;
        };
        let Some(latest) = states.back() else {
            return;
        };
        let mut next = (**latest).clone();
        next.state_version = next.state_version.saturating_add(1);
        edit(&mut next);
        if states.len() == STATES_KEPT {
            states.pop_front();
        }
        states.push_back(Arc::new(next));
    }
}

/// A secret's first state, from the terms kept beside its CREATE_SECRET.
fn created(secret_ref: &str, record: &AuditRecord, terms: &SecretTerms) -> SecretAt {
    let Some((kind, ttl)) = terms.parts() else {
        return SecretAt::Unknown(
            "the terms kept beside the secret's CREATE_SECRET do not make sense",
        );
    };
    if record.terms_digest.as_deref()
        != Some(terms_digest(kind, &ttl, terms.handle_ttl_ms, terms.purpose).as_str())
    {
        return SecretAt::Unknown(
            "the terms kept beside the secret's CREATE_SECRET are not the ones the chain names",
        );
    }
    let first = SecretSnapshot {
        secret_ref: secret_ref.to_owned(),
        state_version: 1,
        kind,
        versions: vec![VersionState::Active],
        staged: false,
        ttl,
        handle_ttl_ms: terms.handle_ttl_ms,
        purpose: terms.purpose,
        min_decryption_version: 1,
    };
    SecretAt::Known(VecDeque::from([Arc::new(first)]))
}
