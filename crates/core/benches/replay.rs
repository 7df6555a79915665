//! Replaying a tenant's chain in process, as `audit replay` does, with the allocator the
//! `selene-kms` binary ships with (a replay allocates a little for every record it re-derives).

use criterion::{Criterion, Throughput, criterion_main};
use selene_kms_core::{ServiceKeys, ServiceSecret, evaluate, issue};
use serde_json::json;
use std::hint::black_box;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod fixtures;

use fixtures::{NOW, policy, request, snapshot};

/// Replaying a chain of GET_HANDLE decisions in process, as `audit replay` does: every decision
/// re-run from its kept inputs and compared with its record; from opened inputs and parsed
/// records, and from their stored JSON.
fn replay(c: &mut Criterion) {
    use selene_kms_core::audit::GENESIS_DIGEST;
    use selene_kms_core::replay::{KeySeen, PolicyInputs, RequestInputs, SecretTerms};
    use selene_kms_core::{AuditAction, AuditRecord, DecisionInputs, Kept, ReasonCode, Replay};
    const DECISIONS: u64 = 10_000;
    let keys = ServiceKeys::derive(&ServiceSecret::from_bytes([7; 32]));
    let policy = policy();
    let snapshot = snapshot(&keys, 1);
    let tenant = selene_kms_core::TenantId::try_from("acme").expect("valid");
    let mut prev = GENESIS_DIGEST.to_owned();
    let mut chain: Vec<(AuditRecord, Kept)> = Vec::new();
    let mut push = |mut record: AuditRecord, kept: Kept| {
        let seq = chain.len() as u64 + 1;
        record.principal_id = Some("kp_00000000000000000000000000000001".into());
        record.chain(seq, &prev);
        prev.clone_from(&record.digest);
        chain.push((record, kept));
    };
    let mut set = AuditRecord::for_action(
        &tenant,
        AuditAction::SetPolicy,
        ReasonCode::OkMaterialIssue,
        NOW,
    );
    set.policy_version = Some(1);
    set.policy_digest = Some(policy.document().digest());
    let document = policy.document().clone();
    push(
        set,
        Kept::Inputs(DecisionInputs::Policy(PolicyInputs { document })),
    );
    let mut create = AuditRecord::for_action(
        &tenant,
        AuditAction::CreateSecret,
        ReasonCode::OkMaterialIssue,
        NOW,
    );
    create.secret_ref = Some(snapshot.secret_ref.clone());
    create.terms_digest = Some(snapshot.terms_digest());
    let terms = SecretTerms::new(
        snapshot.kind,
        &snapshot.ttl,
        snapshot.handle_ttl_ms,
        snapshot.purpose,
    );
    push(create, Kept::Inputs(DecisionInputs::Secret(terms)));
    for i in 0..DECISIONS {
        // After the SET_POLICY and CREATE_SECRET records.
        let seq = i + 3;
        let req = request("GET_HANDLE", json!({"idempotency_key": format!("k-{i}")}));
        let at = NOW + i;
        let grant = evaluate(&req, Some(&policy), Some(&snapshot), &keys, at).expect("grant");
        let issued = issue(grant, Some(&snapshot), &keys).expect("issued");
        let mut answered = issued.bundle.clone();
        answered.audit_seq = Some(seq);
        let bytes = serde_json::to_vec(&answered).expect("json");
        let record = AuditRecord::for_request(&tenant, &req.context(), &issued.bundle, at, false)
            .making(&issued.change)
            .answered(&bytes);
        let inputs = RequestInputs {
            request: req.to_raw(),
            policy_version: Some(1),
            state_version: Some(1),
            current_version: Some(1),
            key: KeySeen::Free,
            keyed: true,
        };
        push(
            record,
            Kept::Inputs(DecisionInputs::Request(Box::new(inputs))),
        );
    }
    let stored: Vec<(String, Vec<u8>)> = chain
        .iter()
        .map(|(r, kept)| {
            let Kept::Inputs(inputs) = kept else {
                unreachable!("every record keeps inputs")
            };
            (serde_json::to_string(r).expect("json"), inputs.to_bytes())
        })
        .collect();
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(DECISIONS));
    group.sample_size(20);
    group.bench_function("decisions", |b| {
        // The records and inputs come owned, as a store's pages do; their copy is not timed.
        b.iter_batched(
            || chain.clone(),
            |chain| {
                let mut replay = Replay::new(&keys, tenant.clone(), 0);
                for (record, kept) in chain {
                    replay.push(&record, kept);
                }
                let report = replay.finish();
                assert_eq!(report.matched, DECISIONS, "{report:?}");
                black_box(report)
            },
            criterion::BatchSize::LargeInput,
        );
    });
    group.bench_function("stored_json", |b| {
        b.iter(|| {
            let mut replay = Replay::new(&keys, tenant.clone(), 0);
            for (text, inputs) in &stored {
                let record: AuditRecord = serde_json::from_str(text).expect("parses");
                let kept =
                    DecisionInputs::from_bytes(inputs).map_or(Kept::Unreadable, Kept::Inputs);
                replay.push(&record, kept);
            }
            let report = replay.finish();
            assert_eq!(report.matched, DECISIONS, "{report:?}");
            black_box(report)
        });
    });
    group.finish();
}

#[allow(
    missing_docs,
    reason = "criterion_group! generates an undocumented function"
)]
mod group {
    criterion::criterion_group!(benches, super::replay);
}
criterion_main!(group::benches);
