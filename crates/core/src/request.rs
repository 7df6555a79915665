//! The validated KMS request: what the core acts on, built only from a [`RawKmsRequest`].

use std::fmt;

use sha2::{Digest, Sha256};

use crate::diagnostics::{DEFAULT_MAX_DIAGNOSTICS, Diagnostic, MAX_DIAGNOSTICS, Problem, Subject};
use crate::encode::Encoder;
use crate::ids::{CorrelationId, EngineId, IdempotencyKey, SecretName, TenantId, TurnId, UserId};
use crate::reason::ReasonCode;
use crate::redacted::Redacted;
use crate::refusal::Refusal;
use crate::wire::{Operation, RawKmsRequest, RawRevokeTarget};

/// Most engine ids in an OS-supplied `requester_allowlist`.
pub const MAX_ALLOWLIST: usize = 32;
/// Longest opaque ref accepted anywhere.
pub const MAX_REF_LEN: usize = 1024;
/// Largest version number (fits a signed 64-bit column).
pub const MAX_VERSION: u64 = i64::MAX as u64;
/// Longest TTL anyone may ask for: one year. Per-secret bounds are far tighter.
pub const MAX_TTL_MS: u64 = 365 * 24 * 3600 * 1000;

/// Who is asking, as asserted by the authenticated OS caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requester {
    /// The requesting engine.
    pub engine: EngineId,
    /// The user on whose behalf it asks, if any.
    pub user: Option<UserId>,
}

/// What a REVOKE revokes. Its `Debug` form hides a handle or credential ref.
#[derive(Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// One version.
    Version(u64),
    /// Every version.
    AllVersions,
    /// One handle (its opaque ref, opened during issue).
    Handle(String),
    /// One ephemeral credential (its opaque ref, opened during issue).
    Credential(String),
}

impl fmt::Debug for RevokeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Version(v) => f.debug_tuple("Version").field(v).finish(),
            Self::AllVersions => f.write_str("AllVersions"),
            Self::Handle(_) => f.debug_tuple("Handle").field(&Redacted).finish(),
            Self::Credential(_) => f.debug_tuple("Credential").field(&Redacted).finish(),
        }
    }
}

/// A request that passed schema validation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs, reason = "fields mirror the wire contract")]
pub struct KmsRequest {
    pub correlation_id: CorrelationId,
    pub turn_id: TurnId,
    pub idempotency_key: IdempotencyKey,
    pub tenant_id: TenantId,
    pub operation: Operation,
    pub secret_name: SecretName,
    pub requester: Requester,
    pub requested_ttl_ms: Option<u64>,
    pub previous_version: Option<u64>,
    pub revoke_target: Option<RevokeTarget>,
    pub simulation_id: Option<String>,
    pub dry_run: bool,
    pub max_diagnostics: usize,
    pub requester_allowlist: Option<Vec<EngineId>>,
}

/// What could be validated of a request that was refused at schema time: enough to audit it
/// (a tenant is known) without ever recording an unvalidated value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs, reason = "fields mirror the wire contract")]
pub struct RequestContext {
    pub correlation_id: Option<CorrelationId>,
    pub turn_id: Option<TurnId>,
    pub idempotency_key: Option<IdempotencyKey>,
    pub tenant_id: Option<TenantId>,
    pub operation: Option<Operation>,
    pub requester_engine_id: Option<EngineId>,
    pub requester_user_id: Option<UserId>,
    pub dry_run: bool,
    pub max_diagnostics: usize,
}

/// A request refused by schema validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedRequest {
    /// What did validate.
    pub context: RequestContext,
    /// Why it was refused.
    pub refusal: Refusal,
    /// The request as received, when it parsed: what a replay validates again. Its `Debug`
    /// form hides refs.
    pub raw: Option<Box<RawKmsRequest>>,
}

/// Collects diagnostics while validating, so that every problem is reported at once.
#[derive(Default)]
struct Findings {
    invalid: Vec<Diagnostic>,
    missing: Vec<Diagnostic>,
}

impl Findings {
    fn required<T>(
        &mut self,
        subject: Subject,
        raw: Option<String>,
        parse: impl FnOnce(String) -> Result<T, Problem>,
    ) -> Option<T> {
        match raw {
            None => {
                self.missing
                    .push(Diagnostic::new(subject, Problem::Missing));
                None
            }
            Some(v) => self.optional(subject, Some(v), parse),
        }
    }

    fn optional<T>(
        &mut self,
        subject: Subject,
        raw: Option<String>,
        parse: impl FnOnce(String) -> Result<T, Problem>,
    ) -> Option<T> {
        match raw.map(parse) {
            Some(Ok(v)) => Some(v),
            Some(Err(p)) => {
                self.invalid.push(Diagnostic::new(subject, p));
                None
            }
            None => None,
        }
    }

    fn invalid(&mut self, subject: Subject, problem: Problem) {
        self.invalid.push(Diagnostic::new(subject, problem));
    }

    fn into_refusal(self) -> Option<Refusal> {
        if !self.invalid.is_empty() {
            let mut diagnostics = self.invalid;
            diagnostics.extend(self.missing);
            Some(Refusal {
                reason: ReasonCode::InputSchemaInvalid,
                diagnostics,
            })
        } else if !self.missing.is_empty() {
            Some(Refusal {
                reason: ReasonCode::UpstreamInputMissing,
                diagnostics: self.missing,
            })
        } else {
            None
        }
    }
}

fn check_version(v: u64) -> Result<u64, Problem> {
    if (1..=MAX_VERSION).contains(&v) {
        Ok(v)
    } else {
        Err(Problem::OutOfRange)
    }
}

fn check_ref(s: String) -> Result<String, Problem> {
    if s.is_empty() {
        Err(Problem::Empty)
    } else if s.len() > MAX_REF_LEN {
        Err(Problem::TooLong)
    } else {
        Ok(s)
    }
}

fn check_simulation_id(s: String) -> Result<String, Problem> {
    if s.len() > 128 {
        Err(Problem::TooLong)
    } else if s.is_empty() {
        Err(Problem::Empty)
    } else {
        Ok(s)
    }
}

fn revoke_target(raw: RawRevokeTarget) -> Result<RevokeTarget, Problem> {
    let set = usize::from(raw.version.is_some())
        + usize::from(raw.all_versions.is_some())
        + usize::from(raw.secret_handle.is_some())
        + usize::from(raw.ephemeral_credential_ref.is_some());
    if set != 1 {
        return Err(Problem::BadShape);
    }
    match raw {
        RawRevokeTarget {
            version: Some(v), ..
        } => check_version(v).map(RevokeTarget::Version),
        RawRevokeTarget {
            all_versions: Some(true),
            ..
        } => Ok(RevokeTarget::AllVersions),
        RawRevokeTarget {
            secret_handle: Some(h),
            ..
        } => check_ref(h).map(RevokeTarget::Handle),
        RawRevokeTarget {
            ephemeral_credential_ref: Some(c),
            ..
        } => check_ref(c).map(RevokeTarget::Credential),
        _ => Err(Problem::BadShape),
    }
}

impl TryFrom<RawKmsRequest> for KmsRequest {
    type Error = RejectedRequest;

    fn try_from(raw: RawKmsRequest) -> Result<Self, RejectedRequest> {
        let mut f = Findings::default();
        let correlation_id = f.required(Subject::CorrelationId, raw.correlation_id, |v| {
            CorrelationId::try_from(v)
        });
        let turn_id = f.required(Subject::TurnId, raw.turn_id, TurnId::try_from);
        let idempotency_key = f.required(Subject::IdempotencyKey, raw.idempotency_key, |v| {
            IdempotencyKey::try_from(v)
        });
        let tenant_id = f.required(Subject::TenantId, raw.tenant_id, TenantId::try_from);
        let operation = raw.operation;
        if operation.is_none() {
            f.missing
                .push(Diagnostic::new(Subject::Operation, Problem::Missing));
        }
        let secret_name = f.required(Subject::SecretName, raw.secret_name, |v| {
            SecretName::try_from(v)
        });
        let engine = f.required(Subject::RequesterEngineId, raw.requester_engine_id, |v| {
            EngineId::try_from(v)
        });
        let user = f.optional(Subject::RequesterUserId, raw.requester_user_id, |v| {
            UserId::try_from(v)
        });
        let simulation_id = f.optional(
            Subject::SimulationId,
            raw.simulation_id,
            check_simulation_id,
        );
        let dry_run = raw.dry_run.unwrap_or(false);
        let max_diagnostics = match raw.max_diagnostics {
            None => DEFAULT_MAX_DIAGNOSTICS,
            Some(n) => match usize::try_from(n) {
                Ok(n) if n <= MAX_DIAGNOSTICS => n,
                _ => {
                    f.invalid(Subject::MaxDiagnostics, Problem::OutOfRange);
                    DEFAULT_MAX_DIAGNOSTICS
                }
            },
        };

        let requested_ttl_ms = match (raw.requested_ttl_ms, operation) {
            (None, _) => None,
            (Some(_), Some(op)) if op != Operation::IssueEphemeral => {
                f.invalid(Subject::RequestedTtlMs, Problem::NotAllowedForOperation);
                None
            }
            (Some(ttl), _) if ttl == 0 || ttl > MAX_TTL_MS => {
                f.invalid(Subject::RequestedTtlMs, Problem::OutOfRange);
                None
            }
            (Some(ttl), _) => Some(ttl),
        };
        let previous_version = match (raw.previous_version, operation) {
            (None, _) => None,
            (Some(_), Some(op)) if op != Operation::Rotate => {
                f.invalid(Subject::PreviousVersion, Problem::NotAllowedForOperation);
                None
            }
            (Some(v), _) => match check_version(v) {
                Ok(v) => Some(v),
                Err(p) => {
                    f.invalid(Subject::PreviousVersion, p);
                    None
                }
            },
        };
        let revoke_target = match (raw.revoke_target, operation) {
            (None, Some(Operation::Revoke)) => {
                f.missing
                    .push(Diagnostic::new(Subject::RevokeTarget, Problem::Missing));
                None
            }
            (None, _) => None,
            (Some(_), Some(op)) if op != Operation::Revoke => {
                f.invalid(Subject::RevokeTarget, Problem::NotAllowedForOperation);
                None
            }
            (Some(t), _) => match revoke_target(t) {
                Ok(t) => Some(t),
                Err(p) => {
                    f.invalid(Subject::RevokeTarget, p);
                    None
                }
            },
        };
        let requester_allowlist = match raw.requester_allowlist {
            None => None,
            Some(list) if list.len() > MAX_ALLOWLIST => {
                f.invalid(Subject::RequesterAllowlist, Problem::TooMany);
                None
            }
            Some(list) => {
                let parsed: Result<Vec<_>, _> = list.into_iter().map(EngineId::try_from).collect();
                match parsed {
                    Ok(ids) => Some(ids),
                    Err(p) => {
                        f.invalid(Subject::RequesterAllowlist, p);
                        None
                    }
                }
            }
        };

        match (
            f.into_refusal(),
            correlation_id,
            turn_id,
            idempotency_key,
            tenant_id,
            operation,
            secret_name,
            engine,
        ) {
            (
                None,
                Some(correlation_id),
                Some(turn_id),
                Some(idempotency_key),
                Some(tenant_id),
                Some(operation),
                Some(secret_name),
                Some(engine),
            ) => Ok(KmsRequest {
                correlation_id,
                turn_id,
                idempotency_key,
                tenant_id,
                operation,
                secret_name,
                requester: Requester { engine, user },
                requested_ttl_ms,
                previous_version,
                revoke_target,
                simulation_id,
                dry_run,
                max_diagnostics,
                requester_allowlist,
            }),
            (refusal, correlation_id, turn_id, idempotency_key, tenant_id, _, _, engine) => {
                Err(RejectedRequest {
                    raw: None,
                    context: RequestContext {
                        correlation_id,
                        turn_id,
                        idempotency_key,
                        tenant_id,
                        operation,
                        requester_engine_id: engine,
                        requester_user_id: user,
                        dry_run,
                        max_diagnostics,
                    },
                    // Unreachable in practice: every missing required field records a finding.
                    refusal: refusal.unwrap_or_else(|| {
                        Refusal::new(
                            ReasonCode::InputSchemaInvalid,
                            Subject::Body,
                            Problem::Malformed,
                        )
                    }),
                })
            }
        }
    }
}

impl KmsRequest {
    /// Parses and validates a JSON body. Parse errors never echo the body: serde's message can
    /// quote values, so only the fixed diagnostic `body:malformed` comes back.
    pub fn from_json(body: &[u8]) -> Result<Self, RejectedRequest> {
        match serde_json::from_slice::<RawKmsRequest>(body) {
            // Validation consumes what it parsed: a refused body is parsed again, off the hot
            // path, to be kept for replay.
            Ok(raw) => Self::try_from(raw).map_err(|mut rejected| {
                rejected.raw = serde_json::from_slice(body).ok().map(Box::new);
                rejected
            }),
            Err(_) => Err(RejectedRequest {
                raw: None,
                context: RequestContext {
                    max_diagnostics: DEFAULT_MAX_DIAGNOSTICS,
                    ..RequestContext::default()
                },
                refusal: Refusal::new(
                    ReasonCode::InputSchemaInvalid,
                    Subject::Body,
                    Problem::Malformed,
                ),
            }),
        }
    }

    /// Digest of every field that defines the request, which is every field but
    /// `correlation_id`, `turn_id` and `max_diagnostics`. Equal fingerprints under one
    /// idempotency key mean "the same request".
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut e = Encoder::with_domain("selene-kms/request-fingerprint/v1");
        e.str(self.idempotency_key.as_str());
        self.encode_defining_fields(&mut e);
        e.opt_u64(self.requested_ttl_ms);
        e.opt_str(self.simulation_id.as_deref());
        e.u8(u8::from(self.dry_run));
        match &self.requester_allowlist {
            None => {
                e.u8(0);
            }
            Some(list) => {
                e.u8(1).u64(list.len() as u64);
                for id in list {
                    e.str(id.as_str());
                }
            }
        }
        Sha256::digest(e.as_slice()).into()
    }

    /// The fields a simulation binds (DESIGN.md: tenant, operation, secret, requester ids,
    /// `previous_version`, `revoke_target`).
    pub(crate) fn encode_defining_fields(&self, e: &mut Encoder) {
        e.str(self.tenant_id.as_str())
            .str(self.operation.name())
            .str(self.secret_name.as_str())
            .str(self.requester.engine.as_str())
            .opt_str(self.requester.user.as_ref().map(UserId::as_str))
            .opt_u64(self.previous_version);
        match &self.revoke_target {
            None => e.u8(0),
            Some(RevokeTarget::Version(v)) => e.u8(1).u64(*v),
            Some(RevokeTarget::AllVersions) => e.u8(2),
            Some(RevokeTarget::Handle(h)) => e.u8(3).str(h),
            Some(RevokeTarget::Credential(c)) => e.u8(4).str(c),
        };
    }

    /// The request as it would be received: validating it again gives this request back (a
    /// test below shows it for every field).
    pub fn to_raw(&self) -> RawKmsRequest {
        let target = |t: &RevokeTarget| match t {
            RevokeTarget::Version(v) => RawRevokeTarget {
                version: Some(*v),
                ..RawRevokeTarget::default()
            },
            RevokeTarget::AllVersions => RawRevokeTarget {
                all_versions: Some(true),
                ..RawRevokeTarget::default()
            },
            RevokeTarget::Handle(h) => RawRevokeTarget {
                secret_handle: Some(h.clone()),
                ..RawRevokeTarget::default()
            },
            RevokeTarget::Credential(c) => RawRevokeTarget {
                ephemeral_credential_ref: Some(c.clone()),
                ..RawRevokeTarget::default()
            },
        };
        RawKmsRequest {
            correlation_id: Some(self.correlation_id.to_string()),
            turn_id: Some(self.turn_id.to_string()),
            idempotency_key: Some(self.idempotency_key.as_str().to_owned()),
            tenant_id: Some(self.tenant_id.as_str().to_owned()),
            operation: Some(self.operation),
            secret_name: Some(self.secret_name.as_str().to_owned()),
            requester_engine_id: Some(self.requester.engine.as_str().to_owned()),
            requester_user_id: self.requester.user.as_ref().map(|u| u.as_str().to_owned()),
            requested_ttl_ms: self.requested_ttl_ms,
            previous_version: self.previous_version,
            revoke_target: self.revoke_target.as_ref().map(target),
            simulation_id: self.simulation_id.clone(),
            // Defaults are left out: validating again gives them back.
            dry_run: self.dry_run.then_some(true),
            max_diagnostics: (self.max_diagnostics != DEFAULT_MAX_DIAGNOSTICS)
                .then(|| u32::try_from(self.max_diagnostics).ok())
                .flatten(),
            requester_allowlist: self
                .requester_allowlist
                .as_ref()
                .map(|list| list.iter().map(|e| e.as_str().to_owned()).collect()),
        }
    }

    /// What of this request an audit record may show when it is refused.
    pub fn context(&self) -> RequestContext {
        RequestContext {
            correlation_id: Some(self.correlation_id.clone()),
            turn_id: Some(self.turn_id.clone()),
            idempotency_key: Some(self.idempotency_key.clone()),
            tenant_id: Some(self.tenant_id.clone()),
            operation: Some(self.operation),
            requester_engine_id: Some(self.requester.engine.clone()),
            requester_user_id: self.requester.user.clone(),
            dry_run: self.dry_run,
            max_diagnostics: self.max_diagnostics,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({
            "correlation_id": "c-1", "turn_id": "t-1", "idempotency_key": "k-1",
            "tenant_id": "acme", "operation": "GET_HANDLE", "secret_name": "payments/stripe",
            "requester_engine_id": "PH1.CONNECTOR"
        })
    }

    fn parse(v: &serde_json::Value) -> Result<KmsRequest, RejectedRequest> {
        KmsRequest::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn a_minimal_request_validates() {
        let r = parse(&base()).map_err(|e| e.refusal);
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn missing_fields_are_upstream_input_missing() {
        let mut v = base();
        v.as_object_mut().map(|o| o.remove("turn_id"));
        let e = parse(&v).err().map(|e| e.refusal);
        assert_eq!(
            e,
            Some(Refusal::new(
                ReasonCode::UpstreamInputMissing,
                Subject::TurnId,
                Problem::Missing
            ))
        );
    }

    #[test]
    fn fields_outside_their_operation_are_schema_errors() {
        let mut v = base();
        v["requested_ttl_ms"] = json!(60000);
        let e = parse(&v).err().map(|e| e.refusal.reason);
        assert_eq!(e, Some(ReasonCode::InputSchemaInvalid));
        let mut v = base();
        v["operation"] = json!("REVOKE");
        let e = parse(&v).err().map(|e| e.refusal);
        assert_eq!(e.map(|r| r.reason), Some(ReasonCode::UpstreamInputMissing));
        v["revoke_target"] = json!({"version": 1, "all_versions": true});
        let e = parse(&v).err().map(|e| e.refusal);
        assert_eq!(
            e,
            Some(Refusal::new(
                ReasonCode::InputSchemaInvalid,
                Subject::RevokeTarget,
                Problem::BadShape
            ))
        );
    }

    #[test]
    fn unknown_and_duplicate_fields_and_wrong_types_are_malformed() {
        let bodies = [
            r#"{"tenant_id":"a","tenant_id":"b"}"#.to_owned(),
            r#"{"nope":1}"#.to_owned(),
            r#"{"dry_run":"yes"}"#.to_owned(),
            r#"[1,2]"#.to_owned(),
            "\u{0}".to_owned(),
        ];
        for body in bodies {
            let e = KmsRequest::from_json(body.as_bytes()).err();
            assert_eq!(
                e.map(|e| e.refusal),
                Some(Refusal::new(
                    ReasonCode::InputSchemaInvalid,
                    Subject::Body,
                    Problem::Malformed
                )),
                "{body}"
            );
        }
    }

    #[test]
    fn allowlist_and_diagnostics_bounds_are_enforced() {
        let mut v = base();
        v["requester_allowlist"] = json!(vec!["E"; 33]);
        assert_eq!(
            parse(&v).err().map(|e| e.refusal.reason),
            Some(ReasonCode::InputSchemaInvalid)
        );
        v["requester_allowlist"] = json!(vec!["E"; 32]);
        assert!(parse(&v).is_ok());
        v["max_diagnostics"] = json!(17);
        assert_eq!(
            parse(&v).err().map(|e| e.refusal.reason),
            Some(ReasonCode::InputSchemaInvalid)
        );
    }

    #[test]
    fn a_request_validated_again_from_its_raw_form_is_the_same() {
        for extra in [
            json!({}),
            json!({"dry_run": true, "max_diagnostics": 3, "requested_ttl_ms": 60000, "operation": "ISSUE_EPHEMERAL"}),
            json!({"operation": "ROTATE", "previous_version": 4, "simulation_id": "kms_sim:00"}),
            json!({"operation": "REVOKE", "revoke_target": {"version": 2}}),
            json!({"operation": "REVOKE", "revoke_target": {"all_versions": true}}),
            json!({"operation": "REVOKE", "revoke_target": {"secret_handle": "ksh2_x"}}),
            json!({"operation": "REVOKE", "revoke_target": {"ephemeral_credential_ref": "kse2_x"}}),
            json!({"requester_allowlist": ["PH1.A", "PH1.B"], "requester_user_id": null}),
        ] {
            let mut v = base();
            for (k, x) in extra.as_object().into_iter().flatten() {
                v[k] = x.clone();
            }
            let req = KmsRequest::from_json(v.to_string().as_bytes()).expect("valid");
            let again = KmsRequest::try_from(req.to_raw()).expect("valid again");
            assert_eq!(again, req, "{v}");
        }
    }

    #[test]
    fn fingerprint_ignores_only_correlation_turn_and_max_diagnostics() {
        let a = parse(&base()).ok().map(|r| r.fingerprint());
        let mut v = base();
        v["correlation_id"] = json!("c-2");
        v["turn_id"] = json!("t-2");
        v["max_diagnostics"] = json!(2);
        assert_eq!(a, parse(&v).ok().map(|r| r.fingerprint()));
        v["requester_user_id"] = json!("u-1");
        assert_ne!(a, parse(&v).ok().map(|r| r.fingerprint()));
    }
}
