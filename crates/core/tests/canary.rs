//! Canary: a known secret-looking value is pushed through every operation, refusal and
//! diagnostic path the core has; it must appear in no serialized output.

mod common;

use base64::Engine;
use common::*;
use selene_kms_core::{
    AuditRecord, KmsRequest, Policy, RefGeneration, RefId, SecretMaterial, ServiceKeys,
    ServiceSecret, redeem::RedeemRequest,
};
use serde_json::{Value, json};

/// Valid as a secret name, so it travels the success paths too.
const CANARY_NAME: &str = "payments/sk-live-c4n4ry-9f8e7d6c";
/// Invalid as a name (upper case, space), so it travels the refusal paths.
const CANARY_RAW: &str = "payments/SK_LIVE C4N4RY 9F8E7D6C";

fn forms(value: &str) -> Vec<String> {
    let b = value.as_bytes();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    vec![
        value.to_owned(),
        "c4n4ry".to_owned(),
        "C4N4RY".to_owned(),
        hex,
        base64::engine::general_purpose::STANDARD.encode(b),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
    ]
}

fn assert_clean(text: &str, context: &str) {
    for form in forms(CANARY_NAME).into_iter().chain(forms(CANARY_RAW)) {
        assert!(
            !text.contains(&form),
            "{context}: canary form {form:?} leaked"
        );
    }
}

fn outputs(v: &Value, policy: &Policy) -> String {
    let keys = keys();
    let snapshot = secret(2);
    let body = v.to_string();
    match KmsRequest::from_json(body.as_bytes()) {
        Err(rejected) => {
            let bundle = rejected.refusal.clone().into_bundle(
                rejected.context.operation,
                rejected.context.dry_run,
                16,
            );
            let tenant = selene_kms_core::TenantId::try_from("acme").expect("valid");
            let record = AuditRecord::for_request(&tenant, &rejected.context, &bundle, NOW, false);
            format!(
                "{}\n{}\n{}\n{:?}",
                serde_json::to_string(&bundle).expect("serializes"),
                serde_json::to_string(&record).expect("serializes"),
                rejected.refusal,
                rejected.refusal
            )
        }
        Ok(req) => {
            let mut out = String::new();
            for existing in [Some(&snapshot), None] {
                let bundle = answer(&req, Some(policy), existing, &keys, NOW);
                let record =
                    AuditRecord::for_request(&req.tenant_id, &req.context(), &bundle, NOW, false);
                out.push_str(&serde_json::to_string(&bundle).expect("serializes"));
                out.push_str(&serde_json::to_string(&record).expect("serializes"));
            }
            out
        }
    }
}

#[test]
fn canary_never_appears_in_any_serialized_output() {
    let permissive = Policy::from_json(
        json!({"rules": [{"secret_names": ["*"], "engines": ["*"],
            "operations": ["GET_HANDLE", "ISSUE_EPHEMERAL", "ROTATE", "REVOKE"]}],
            "admins": ["u-admin"]})
        .to_string()
        .as_bytes(),
    )
    .expect("valid");
    let strict = policy();
    let targets = [
        json!({"version": 1}),
        json!({"all_versions": true}),
        json!({"secret_handle": "ksh1_AAAA"}),
        json!({"ephemeral_credential_ref": CANARY_RAW}),
    ];
    let mut checked = 0;
    for name in [CANARY_NAME, CANARY_RAW] {
        for op in ["GET_HANDLE", "ISSUE_EPHEMERAL", "ROTATE", "REVOKE"] {
            for dry in [false, true] {
                for policy in [&permissive, &strict] {
                    let mut v = admin_request(op);
                    v["secret_name"] = json!(name);
                    v["dry_run"] = json!(dry);
                    if op == "ISSUE_EPHEMERAL" {
                        v["requested_ttl_ms"] = json!(1);
                    }
                    let variants: Vec<Value> = if op == "REVOKE" {
                        targets
                            .iter()
                            .map(|t| {
                                let mut w = v.clone();
                                w["revoke_target"] = t.clone();
                                w
                            })
                            .collect()
                    } else {
                        vec![v.clone()]
                    };
                    for w in variants {
                        assert_clean(&outputs(&w, policy), &format!("{op} dry={dry}"));
                        checked += 1;
                    }
                }
            }
        }
    }
    // Malformed bodies and wrong types that carry the canary.
    for body in [
        json!({"secret_name": 5, "tenant_id": CANARY_RAW}),
        json!({"unknown_field": CANARY_RAW}),
        json!({"operation": CANARY_RAW}),
        json!({"simulation_id": CANARY_RAW, "tenant_id": "acme"}),
    ] {
        assert_clean(&outputs(&body, &strict), "malformed");
        checked += 1;
    }
    assert!(checked > 50);
}

#[test]
fn canary_never_appears_in_policy_or_redeem_refusals() {
    for doc in [
        json!({"rules": [{"secret_names": [CANARY_RAW], "engines": ["E"], "operations": ["ROTATE"]}]}),
        json!({"rules": [], "admins": [CANARY_RAW]}),
        json!({"rules": [], CANARY_RAW: 1}),
    ] {
        let refusal = Policy::from_json(doc.to_string().as_bytes()).expect_err("invalid");
        assert_clean(&format!("{refusal} {refusal:?}"), "policy");
    }
    let keys = keys();
    for body in [
        json!({"tenant_id": "acme", "secret_handle": CANARY_RAW}),
        json!({"tenant_id": CANARY_RAW, "secret_handle": "x"}),
        json!({"tenant_id": "acme", "secret_handle": 1, "x": CANARY_RAW}),
    ] {
        let text = match RedeemRequest::from_json(body.to_string().as_bytes()) {
            Ok(r) => format!("{:?}", r.open(&keys).expect_err("canary is no ref")),
            Err(e) => format!("{e} {e:?}"),
        };
        assert_clean(&text, "redeem");
    }
}

#[test]
fn derived_ephemeral_material_does_not_contain_its_parent() {
    let parent = SecretMaterial::from_slice(CANARY_NAME.as_bytes());
    let keys = ServiceKeys::derive(&ServiceSecret::from_bytes([7; 32]));
    let id = RefId::from_stored("cid_0123".to_owned());
    let second = RefGeneration::Second;
    let derived = parent.derive_ephemeral(&keys, &id, second);
    assert_eq!(derived.len(), 32);
    let again = parent.derive_ephemeral(&keys, &id, second);
    assert_eq!(
        derived.expose(),
        again.expose(),
        "derivation is deterministic"
    );
    let other_id = RefId::from_stored("cid_4567".to_owned());
    let other = parent.derive_ephemeral(&keys, &other_id, second);
    assert_ne!(derived.expose(), other.expose());
    // Without the store's key, the id and the parent do not give the value: another store's
    // keys, or the first generation's bare salt, derive something else.
    let elsewhere = ServiceKeys::derive(&ServiceSecret::from_bytes([8; 32]));
    assert_ne!(
        derived.expose(),
        parent.derive_ephemeral(&elsewhere, &id, second).expose()
    );
    assert_ne!(
        derived.expose(),
        parent
            .derive_ephemeral(&keys, &id, RefGeneration::First)
            .expose()
    );
    assert!(
        !derived
            .expose()
            .windows(6)
            .any(|w| CANARY_NAME.as_bytes().windows(6).any(|c| c == w))
    );
}
