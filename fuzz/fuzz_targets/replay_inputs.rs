//! Any lines as a chain of records and the inputs kept beside them (what whoever can write the
//! database controls): a replay or a policy simulation never panics, and its counts add up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use selene_kms_core::replay::Impact;
use selene_kms_core::{
    AuditRecord, DecisionInputs, Kept, Policy, Replay, ServiceKeys, ServiceSecret, TenantId,
};

/// One line: a record, and what was kept beside it.
#[derive(serde::Deserialize)]
struct Line {
    record: AuditRecord,
    inputs: Option<serde_json::Value>,
}

fuzz_target!(|text: &str| {
    let keys = ServiceKeys::derive(&ServiceSecret::from_bytes([7; 32]));
    let tenant = TenantId::try_from("acme").expect("tenant");
    let candidate =
        Policy::from_json(br#"{"rules": [{"secret_names": ["*"], "engines": ["E"], "operations": ["GET_HANDLE"]}]}"#)
            .expect("policy");
    let mut replay = Replay::new(&keys, tenant, 0);
    let mut impact = Impact::new(&candidate, 0);
    for line in text.lines() {
        let Ok(line) = serde_json::from_str::<Line>(line) else {
            continue;
        };
        let kept = match line.inputs {
            None => Kept::Nothing,
            Some(value) => DecisionInputs::from_bytes(value.to_string().as_bytes())
                .map_or(Kept::Unreadable, Kept::Inputs),
        };
        replay.push(&line.record, kept.clone());
        impact.push(&line.record, kept);
    }
    let report = replay.finish();
    assert_eq!(report.matched + report.differ, report.decisions);
    assert!(report.decisions <= report.records);
    let impact = impact.finish();
    assert!(impact.allow_to_deny + impact.deny_to_allow <= impact.evaluated);
});
