//! Fixtures shared by the core's integration tests.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the fixtures"
)]

use selene_kms_core::{
    KmsRequest, MaterialBundle, Policy, Refusal, SecretKind, SecretSnapshot, ServiceKeys,
    ServiceSecret, StateChange, TtlBounds, VersionState, evaluate, issue,
    state::DEFAULT_HANDLE_TTL_MS,
};
use serde_json::{Value, json};

pub(crate) const NOW: u64 = 1_767_225_600_000;

pub(crate) fn keys() -> ServiceKeys {
    ServiceKeys::derive(&ServiceSecret::from_bytes([7u8; 32]))
}

pub(crate) fn other_keys() -> ServiceKeys {
    ServiceKeys::derive(&ServiceSecret::from_bytes([8u8; 32]))
}

pub(crate) fn policy() -> Policy {
    Policy::from_json(
        json!({
            "rules": [
                {"secret_names": ["payments/*"], "engines": ["PH1.CONNECTOR"],
                 "operations": ["GET_HANDLE", "ISSUE_EPHEMERAL"]},
                {"secret_names": ["*"], "engines": ["PH1.OS"], "operations": ["ROTATE", "REVOKE", "GET_HANDLE"]}
            ],
            "admins": ["u-admin"]
        })
        .to_string()
        .as_bytes(),
    )
    .expect("fixture policy is valid")
}

pub(crate) fn secret(versions: usize) -> SecretSnapshot {
    SecretSnapshot {
        secret_ref: selene_kms_core::refs::secret_ref(
            &keys(),
            &selene_kms_core::TenantId::try_from("acme").expect("valid"),
            &selene_kms_core::SecretName::try_from("payments/stripe").expect("valid"),
        ),
        state_version: versions as u64,
        kind: SecretKind::Generated,
        versions: vec![VersionState::Active; versions],
        staged: false,
        ttl: TtlBounds::DEFAULT,
        handle_ttl_ms: DEFAULT_HANDLE_TTL_MS,
        purpose: selene_kms_core::Purpose::Credential,
        min_decryption_version: 1,
    }
}

pub(crate) fn request(op: &str) -> Value {
    json!({
        "correlation_id": "c-1", "turn_id": "t-1", "idempotency_key": "k-1",
        "tenant_id": "acme", "operation": op, "secret_name": "payments/stripe",
        "requester_engine_id": "PH1.CONNECTOR", "requester_user_id": "u-42"
    })
}

pub(crate) fn admin_request(op: &str) -> Value {
    let mut v = request(op);
    v["requester_engine_id"] = json!("PH1.OS");
    v["requester_user_id"] = json!("u-admin");
    v
}

pub(crate) fn parse(v: &Value) -> KmsRequest {
    KmsRequest::from_json(v.to_string().as_bytes()).expect("fixture request is valid")
}

/// Runs evaluate + issue as a host would, returning the bundle and the change.
pub(crate) fn run(
    req: &KmsRequest,
    policy: Option<&Policy>,
    secret: Option<&SecretSnapshot>,
    keys: &ServiceKeys,
    now: u64,
) -> Result<(MaterialBundle, StateChange), Refusal> {
    let grant = evaluate(req, policy, secret, keys, now)?;
    let issued = issue(grant, secret, keys)?;
    Ok((issued.bundle, issued.change))
}

/// The bundle a host would return: the issued one, or the refusal bundle.
pub(crate) fn answer(
    req: &KmsRequest,
    policy: Option<&Policy>,
    secret: Option<&SecretSnapshot>,
    keys: &ServiceKeys,
    now: u64,
) -> MaterialBundle {
    match run(req, policy, secret, keys, now) {
        Ok((bundle, _)) => bundle,
        Err(r) => r.into_bundle(Some(req.operation), req.dry_run, req.max_diagnostics),
    }
}

/// Dry run then commit, as the seed's ordering requires for mutations.
pub(crate) fn simulate_then_commit(
    v: &Value,
    policy: &Policy,
    secret: &SecretSnapshot,
    keys: &ServiceKeys,
) -> Result<(MaterialBundle, StateChange), Refusal> {
    let mut dry = v.clone();
    dry["dry_run"] = json!(true);
    dry["idempotency_key"] = json!("k-dry");
    let (plan, _) = run(&parse(&dry), Some(policy), Some(secret), keys, NOW)?;
    let mut commit = v.clone();
    commit["simulation_id"] = json!(plan.simulation_id.expect("dry run has a simulation id"));
    run(&parse(&commit), Some(policy), Some(secret), keys, NOW)
}
