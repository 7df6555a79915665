//! Any bytes as a KMS request body: parsing, validation, access evaluation and issue never panic,
//! and a refusal never carries a material field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use selene_kms_core::{
    KmsRequest, Policy, SecretKind, SecretSnapshot, ServiceKeys, ServiceSecret, TtlBounds,
    VersionState, evaluate, issue,
};

fuzz_target!(|body: &[u8]| {
    let keys = ServiceKeys::derive(&ServiceSecret::from_bytes([7; 32]));
    let policy = Policy::from_json(
        br#"{"rules":[{"secret_names":["*"],"engines":["*"],"operations":["GET_HANDLE","ISSUE_EPHEMERAL","ROTATE","REVOKE"]}],"admins":["u-admin"]}"#,
    )
    .expect("fixture policy");
    let Ok(req) = KmsRequest::from_json(body) else { return };
    let snapshot = SecretSnapshot {
        secret_ref: "ksr2_fixture".into(),
        state_version: 3,
        kind: SecretKind::Imported,
        versions: vec![VersionState::Active, VersionState::Revoked, VersionState::Active],
        staged: body.len() % 2 == 0,
        ttl: TtlBounds::DEFAULT,
        handle_ttl_ms: 3_600_000,
    };
    for secret in [Some(&snapshot), None] {
        let outcome = evaluate(&req, Some(&policy), secret, &keys, 1_767_225_600_000)
            .and_then(|grant| issue(grant, secret, &keys));
        if let Err(refusal) = outcome {
            let bundle = refusal.into_bundle(Some(req.operation), req.dry_run, req.max_diagnostics);
            assert!(bundle.secret_handle.is_none() && bundle.ephemeral_credential_ref.is_none());
            assert!(serde_json::to_vec(&bundle).is_ok());
        }
    }
});
