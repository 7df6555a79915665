//! The policy model and `KMS_ACCESS_EVALUATE`.
//!
//! Deny by default: a request is allowed only if some rule matches its secret name, engine and
//! operation, the OS-supplied allowlist (if any) contains the engine, and, for ROTATE and REVOKE
//! under `require_admin_for_rotation`, the user is an admin. The only way to obtain an
//! [`AccessGrant`] is [`evaluate`], and `issue` consumes one: no grant, no material.

mod document;

pub use document::{MAX_LIST, MAX_RULES, PolicyDocument, RuleDocument};

use crate::diagnostics::{Problem, Subject};
use crate::ids::{EngineId, SecretName, UserId};
use crate::keys::ServiceKeys;
use crate::reason::ReasonCode;
use crate::refs;
use crate::refusal::Refusal;
use crate::request::KmsRequest;
use crate::state::{SecretSnapshot, TtlBounds};
use crate::wire::Operation;

/// A secret-name pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SecretPattern {
    Any,
    Exact(SecretName),
    /// Every name under this prefix (which ends in `/`), at any depth.
    Prefix(String),
}

impl SecretPattern {
    fn matches(&self, name: &SecretName) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(n) => n == name,
            Self::Prefix(p) => name.as_str().starts_with(p.as_str()),
        }
    }
}

/// An engine pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum EnginePattern {
    Any,
    Exact(EngineId),
}

impl EnginePattern {
    fn matches(&self, engine: &EngineId) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(e) => e == engine,
        }
    }
}

const fn bit(op: Operation) -> u8 {
    match op {
        Operation::GetHandle => 1,
        Operation::IssueEphemeral => 2,
        Operation::Rotate => 4,
        Operation::Revoke => 8,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    secrets: Vec<SecretPattern>,
    engines: Vec<EnginePattern>,
    operations: u8,
}

impl Rule {
    fn allows(&self, op: Operation, name: &SecretName, engine: &EngineId) -> bool {
        self.operations & bit(op) != 0
            && self.engines.iter().any(|e| e.matches(engine))
            && self.secrets.iter().any(|s| s.matches(name))
    }
}

/// A validated tenant policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
    admins: Vec<UserId>,
    require_admin_for_rotation: bool,
    enabled: bool,
    not_before_ms: Option<u64>,
    document: PolicyDocument,
}

impl Policy {
    /// The document this policy was built from, for `GET …/policy`.
    pub fn document(&self) -> &PolicyDocument {
        &self.document
    }

    /// Whether the tenant is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Refs issued before this time are refused at redemption (the emergency brake).
    pub fn not_before_ms(&self) -> Option<u64> {
        self.not_before_ms
    }

    fn is_admin(&self, user: Option<&UserId>) -> bool {
        user.is_some_and(|u| self.admins.contains(u))
    }
}

/// Proof that `KMS_ACCESS_EVALUATE` allowed a request. Only [`evaluate`] makes one.
#[derive(Debug)]
pub struct AccessGrant<'r> {
    request: &'r KmsRequest,
    secret_ref: String,
    now_ms: u64,
    ttl_ms: Option<u64>,
}

impl<'r> AccessGrant<'r> {
    /// The request that was allowed.
    pub fn request(&self) -> &'r KmsRequest {
        self.request
    }

    /// The resolved opaque `secret_ref`.
    pub fn secret_ref(&self) -> &str {
        &self.secret_ref
    }

    /// The request time, read once by the host.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The ephemeral TTL, inside the secret's bounds (ISSUE_EPHEMERAL only).
    pub fn ttl_ms(&self) -> Option<u64> {
        self.ttl_ms
    }

    pub(crate) fn into_secret_ref(self) -> String {
        self.secret_ref
    }
}

fn not_authorized(problem: Problem) -> Refusal {
    Refusal::new(ReasonCode::NotAuthorized, Subject::Policy, problem)
}

/// Access alone: enablement, then authorization (the OS allowlist, the rules, the admin
/// constraint). What a policy simulation re-evaluates under a candidate policy.
pub fn access(request: &KmsRequest, policy: Option<&Policy>) -> Result<(), Refusal> {
    let policy = match policy {
        Some(p) if p.enabled => p,
        _ => {
            return Err(Refusal::new(
                ReasonCode::Disabled,
                Subject::Policy,
                Problem::Disabled,
            ));
        }
    };
    let engine = &request.requester.engine;
    if let Some(list) = &request.requester_allowlist
        && !list.contains(engine)
    {
        return Err(not_authorized(Problem::NotInAllowlist));
    }
    let op = request.operation;
    if !policy
        .rules
        .iter()
        .any(|r| r.allows(op, &request.secret_name, engine))
    {
        return Err(not_authorized(Problem::NoMatchingRule));
    }
    if op.is_mutation()
        && policy.require_admin_for_rotation
        && !policy.is_admin(request.requester.user.as_ref())
    {
        return Err(not_authorized(Problem::AdminRequired));
    }
    Ok(())
}

/// `KMS_ACCESS_EVALUATE`: enablement, authorization (with the admin constraint and the OS
/// allowlist), then TTL bounds; resolves the opaque `secret_ref`.
///
/// The answer to an unauthorized requester is the same whether or not the secret exists: the
/// snapshot is consulted only after authorization, and only for TTL bounds.
pub fn evaluate<'r>(
    request: &'r KmsRequest,
    policy: Option<&Policy>,
    secret: Option<&SecretSnapshot>,
    keys: &ServiceKeys,
    now_ms: u64,
) -> Result<AccessGrant<'r>, Refusal> {
    access(request, policy)?;
    let op = request.operation;
    let ttl_ms = if op == Operation::IssueEphemeral {
        let bounds = secret.map_or(TtlBounds::DEFAULT, |s| s.ttl);
        let ttl = request.requested_ttl_ms.unwrap_or(bounds.default_ms);
        if ttl < bounds.min_ms {
            return Err(Refusal::new(
                ReasonCode::TtlOutOfBounds,
                Subject::RequestedTtlMs,
                Problem::BelowMin,
            ));
        }
        if ttl > bounds.max_ms {
            return Err(Refusal::new(
                ReasonCode::TtlOutOfBounds,
                Subject::RequestedTtlMs,
                Problem::AboveMax,
            ));
        }
        Some(ttl)
    } else {
        None
    };
    Ok(AccessGrant {
        request,
        secret_ref: match secret {
            Some(s) => s.secret_ref.clone(),
            None => refs::secret_ref(keys, &request.tenant_id, &request.secret_name),
        },
        now_ms,
        ttl_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Policy {
        match Policy::from_json(json.as_bytes()) {
            Ok(p) => p,
            Err(e) => panic!("policy should parse: {e}"),
        }
    }

    fn name(s: &str) -> SecretName {
        SecretName::try_from(s).unwrap_or_else(|p| panic!("{s}: {p:?}"))
    }

    fn engine(s: &str) -> EngineId {
        EngineId::try_from(s).unwrap_or_else(|p| panic!("{s}: {p:?}"))
    }

    #[test]
    fn prefix_patterns_match_at_any_depth_and_nothing_else() {
        let p = policy(
            r#"{"rules":[{"secret_names":["payments/*"],"engines":["E"],"operations":["GET_HANDLE"]}]}"#,
        );
        let rule = &p.rules[0];
        assert!(rule.allows(Operation::GetHandle, &name("payments/a"), &engine("E")));
        assert!(rule.allows(Operation::GetHandle, &name("payments/a/b"), &engine("E")));
        assert!(!rule.allows(Operation::GetHandle, &name("payments"), &engine("E")));
        assert!(!rule.allows(Operation::GetHandle, &name("paymentsx/a"), &engine("E")));
        assert!(!rule.allows(Operation::Rotate, &name("payments/a"), &engine("E")));
        assert!(!rule.allows(Operation::GetHandle, &name("payments/a"), &engine("F")));
    }

    #[test]
    fn documents_default_to_enabled_and_admin_required() {
        let p = policy(r#"{"rules":[]}"#);
        assert!(p.enabled && p.require_admin_for_rotation);
    }

    #[test]
    fn bad_documents_are_refused_without_echo() {
        for bad in [
            r#"{"rules":[{"secret_names":["Bad Name"],"engines":["E"],"operations":["ROTATE"]}]}"#,
            r#"{"rules":[{"secret_names":[],"engines":["E"],"operations":["ROTATE"]}]}"#,
            r#"{"rules":[],"admins":["no spaces"]}"#,
            r#"{"rules":[],"extra":true}"#,
            r#"{"rules":[{"secret_names":["a"],"engines":["E"],"operations":["FLY"]}]}"#,
        ] {
            let e = Policy::from_json(bad.as_bytes());
            let refusal = e.err().map(|r| r.to_string()).unwrap_or_default();
            assert!(refusal.starts_with("PH1_KMS_INPUT_SCHEMA_INVALID"), "{bad}");
            assert!(!refusal.contains("Bad Name") && !refusal.contains("FLY"));
        }
    }
}
