//! The policy document as stored and exchanged (JSON), and its validation into a [`Policy`].

use serde::{Deserialize, Serialize};

use super::{EnginePattern, Policy, Rule, SecretPattern};
use crate::diagnostics::{Diagnostic, Problem, Subject};
use crate::ids::{EngineId, SecretName, UserId};
use crate::reason::ReasonCode;
use crate::refusal::Refusal;
use crate::wire::Operation;

/// Most rules in one policy.
pub const MAX_RULES: usize = 256;
/// Most entries in one list of a rule, and most admins.
pub const MAX_LIST: usize = 256;

const fn yes() -> bool {
    true
}

/// A tenant's policy document (DESIGN.md, "Policy document").
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Allow rules; anything no rule allows is denied.
    pub rules: Vec<RuleDocument>,
    /// Users who may ROTATE and REVOKE when `require_admin_for_rotation` holds.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Whether ROTATE and REVOKE need an admin user (default true).
    #[serde(default = "yes")]
    pub require_admin_for_rotation: bool,
    /// Whether the KMS serves this tenant at all (default true). A disabled tenant's refs are
    /// refused at redemption too.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The tenant-wide emergency brake: handles and credentials issued before this time (ms
    /// since the epoch) are refused at redemption as revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
}

/// One allow rule as written.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDocument {
    /// Exact names, `*`, or `prefix/*`.
    pub secret_names: Vec<String>,
    /// Exact engine ids or `*`.
    pub engines: Vec<String>,
    /// Operations the rule allows.
    pub operations: Vec<Operation>,
}

fn invalid(subject: Subject, problem: Problem) -> Refusal {
    Refusal {
        reason: ReasonCode::InputSchemaInvalid,
        diagnostics: vec![Diagnostic::new(subject, problem)],
    }
}

fn bounded<T>(list: &[T]) -> Result<(), Refusal> {
    match list.len() {
        0 => Err(invalid(Subject::Policy, Problem::Empty)),
        n if n > MAX_LIST => Err(invalid(Subject::Policy, Problem::TooMany)),
        _ => Ok(()),
    }
}

fn secret_pattern(text: &str) -> Result<SecretPattern, Refusal> {
    if text == "*" {
        return Ok(SecretPattern::Any);
    }
    if let Some(prefix) = text.strip_suffix("/*") {
        SecretName::try_from(prefix).map_err(|p| invalid(Subject::Policy, p))?;
        return Ok(SecretPattern::Prefix(format!("{prefix}/")));
    }
    SecretName::try_from(text)
        .map(SecretPattern::Exact)
        .map_err(|p| invalid(Subject::Policy, p))
}

fn engine_pattern(text: &str) -> Result<EnginePattern, Refusal> {
    if text == "*" {
        return Ok(EnginePattern::Any);
    }
    EngineId::try_from(text)
        .map(EnginePattern::Exact)
        .map_err(|p| invalid(Subject::Policy, p))
}

impl PolicyDocument {
    /// Hex SHA-256 of the document's canonical JSON (its fields in their declared order, as the
    /// store keeps it): what a SET_POLICY record names, so that a stored policy edited under
    /// the store shows against the chain.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        // A plain struct of strings, numbers and lists: encoding cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        crate::audit::hex(&Sha256::digest(&json))
    }
}

impl TryFrom<&PolicyDocument> for Policy {
    type Error = Refusal;

    fn try_from(doc: &PolicyDocument) -> Result<Self, Refusal> {
        if doc.rules.len() > MAX_RULES {
            return Err(invalid(Subject::Policy, Problem::TooMany));
        }
        if doc.admins.len() > MAX_LIST {
            return Err(invalid(Subject::Policy, Problem::TooMany));
        }
        let mut rules = Vec::with_capacity(doc.rules.len());
        for r in &doc.rules {
            bounded(&r.secret_names)?;
            bounded(&r.engines)?;
            bounded(&r.operations)?;
            rules.push(Rule {
                secrets: r
                    .secret_names
                    .iter()
                    .map(|s| secret_pattern(s))
                    .collect::<Result<_, _>>()?,
                engines: r
                    .engines
                    .iter()
                    .map(|s| engine_pattern(s))
                    .collect::<Result<_, _>>()?,
                operations: r.operations.iter().fold(0u8, |m, op| m | super::bit(*op)),
            });
        }
        let admins = doc
            .admins
            .iter()
            .map(|a| UserId::try_from(a.as_str()).map_err(|p| invalid(Subject::Policy, p)))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            rules,
            admins,
            require_admin_for_rotation: doc.require_admin_for_rotation,
            enabled: doc.enabled,
            not_before_ms: doc.not_before_ms,
            document: doc.clone(),
        })
    }
}

impl Policy {
    /// Parses and validates a JSON policy document. Parse errors never echo the input.
    pub fn from_json(body: &[u8]) -> Result<Self, Refusal> {
        let doc: PolicyDocument =
            serde_json::from_slice(body).map_err(|_| invalid(Subject::Body, Problem::Malformed))?;
        Self::try_from(&doc)
    }
}
