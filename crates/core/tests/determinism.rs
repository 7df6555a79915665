//! Property tests: evaluation is deterministic and never panics on arbitrary input.

mod common;

use common::*;
use proptest::prelude::*;
use selene_kms_core::KmsRequest;
use serde_json::{Value, json};

fn arb_text() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z0-9./_-]{0,20}".prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(Value::Null),
        Just(json!("payments/stripe")),
    ]
}

fn arb_request() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just("GET_HANDLE"),
            Just("ISSUE_EPHEMERAL"),
            Just("ROTATE"),
            Just("REVOKE"),
            Just("NOPE")
        ],
        arb_text(),
        prop::option::of(0u64..10_000_000),
        prop::option::of(0u64..5),
        any::<bool>(),
        prop::option::of(prop_oneof![
            (0u64..4).prop_map(|v| json!({"version": v})),
            Just(json!({"all_versions": true})),
            ".{0,30}".prop_map(|h| json!({"secret_handle": h})),
        ]),
        prop_oneof![Just("PH1.CONNECTOR"), Just("PH1.OS"), Just("X")],
        prop::option::of(prop_oneof![Just("u-admin"), Just("u-42")]),
    )
        .prop_map(|(op, name, ttl, prev, dry, target, engine, user)| {
            let mut v = request(op);
            v["secret_name"] = name;
            v["dry_run"] = json!(dry);
            v["requester_engine_id"] = json!(engine);
            if let Some(u) = user {
                v["requester_user_id"] = json!(u);
            }
            if let Some(t) = ttl {
                v["requested_ttl_ms"] = json!(t);
            }
            if let Some(p) = prev {
                v["previous_version"] = json!(p);
            }
            if let Some(t) = target {
                v["revoke_target"] = t;
            }
            v
        })
}

fn bundle_json(body: &[u8], versions: usize) -> String {
    let keys = keys();
    let snapshot = secret(versions);
    let bundle = match KmsRequest::from_json(body) {
        Ok(req) => answer(
            &req,
            Some(&policy()),
            Some(&snapshot).filter(|_| versions > 0),
            &keys,
            NOW,
        ),
        Err(rejected) => rejected.refusal.into_bundle(
            rejected.context.operation,
            rejected.context.dry_run,
            rejected.context.max_diagnostics,
        ),
    };
    serde_json::to_string(&bundle).expect("bundles serialize")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn same_request_state_and_keys_give_the_same_bundle(v in arb_request(), versions in 0usize..4) {
        let body = v.to_string();
        let a = bundle_json(body.as_bytes(), versions);
        let b = bundle_json(body.as_bytes(), versions);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = bundle_json(&bytes, 1);
    }

    #[test]
    fn arbitrary_json_objects_never_panic(
        fields in prop::collection::btree_map("[a-z_]{1,20}", arb_text(), 0..12)
    ) {
        let body = serde_json::to_vec(&fields).expect("serializes");
        let _ = bundle_json(&body, 2);
    }
}
