//! The whole in-process pipeline (parse is excluded: the request is validated once) — evaluate
//! plus issue — per operation, on one core.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use selene_kms_core::{ServiceKeys, ServiceSecret, evaluate, issue};
use serde_json::json;
use std::hint::black_box;

mod fixtures;

use fixtures::{NOW, policy, request, snapshot};

fn pipeline(c: &mut Criterion) {
    let keys = ServiceKeys::derive(&ServiceSecret::from_bytes([7; 32]));
    let policy = policy();
    let snapshot = snapshot(&keys, 3);
    let dry_rotate = request("ROTATE", json!({"dry_run": true}));
    let sim = {
        let grant = evaluate(&dry_rotate, Some(&policy), Some(&snapshot), &keys, NOW).expect("ok");
        issue(grant, Some(&snapshot), &keys)
            .expect("ok")
            .bundle
            .simulation_id
            .expect("sim")
    };
    let cases = [
        ("GET_HANDLE", request("GET_HANDLE", json!({}))),
        (
            "ISSUE_EPHEMERAL",
            request("ISSUE_EPHEMERAL", json!({"requested_ttl_ms": 60000})),
        ),
        ("ROTATE_DRY_RUN", dry_rotate.clone()),
        (
            "ROTATE_COMMIT",
            request("ROTATE", json!({"simulation_id": sim})),
        ),
        (
            "REVOKE_VERSION_DRY_RUN",
            request(
                "REVOKE",
                json!({"dry_run": true, "revoke_target": {"version": 2}}),
            ),
        ),
    ];
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    for (name, req) in &cases {
        group.bench_with_input(BenchmarkId::from_parameter(name), req, |b, req| {
            b.iter(|| {
                let grant = evaluate(black_box(req), Some(&policy), Some(&snapshot), &keys, NOW)
                    .expect("allowed");
                black_box(issue(grant, Some(&snapshot), &keys).expect("issued"))
            });
        });
    }
    group.finish();

    // Handle verification must not reveal how much of a forged handle was right: opening a handle
    // altered in its first byte and in its last byte should cost the same as any other refusal.
    let grant = evaluate(&cases[0].1, Some(&policy), Some(&snapshot), &keys, NOW).expect("ok");
    let handle = issue(grant, Some(&snapshot), &keys)
        .expect("ok")
        .bundle
        .secret_handle
        .expect("handle");
    let alter = |at: usize| {
        let mut b = handle.clone().into_bytes();
        b[at] = if b[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).expect("ascii")
    };
    let tenant = selene_kms_core::TenantId::try_from("acme").expect("valid");
    let mut group = c.benchmark_group("open_handle");
    for (name, text) in [
        ("valid", handle.clone()),
        ("altered_first_byte", alter(5)),
        ("altered_last_byte", alter(handle.len() - 1)),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(selene_kms_core::refs::open_grant(
                    &keys,
                    selene_kms_core::RefKind::Handle,
                    &tenant,
                    black_box(&text),
                ))
            });
        });
    }
    group.finish();
}

/// Verifying a chain of GET_HANDLE records as `audit verify --data-dir` does: links, digests and
/// MACs, from parsed records and from their stored JSON.
fn audit_verify(c: &mut Criterion) {
    use selene_kms_core::{AuditRecord, TenantWalk, audit::GENESIS_DIGEST};
    const RECORDS: u64 = 10_000;
    let keys = ServiceKeys::derive(&ServiceSecret::from_bytes([7; 32]));
    let req = request("GET_HANDLE", json!({}));
    let snapshot = snapshot(&keys, 3);
    let grant = evaluate(&req, Some(&policy()), Some(&snapshot), &keys, NOW).expect("grant");
    let bundle = issue(grant, Some(&snapshot), &keys).expect("ok").bundle;
    let mut prev = GENESIS_DIGEST.to_owned();
    let records: Vec<AuditRecord> = (1..=RECORDS)
        .map(|seq| {
            let mut r =
                AuditRecord::for_request(&req.tenant_id, &req.context(), &bundle, seq, false);
            r.chain(seq, &prev);
            r.seal(&keys);
            prev.clone_from(&r.digest);
            r
        })
        .collect();
    let stored: Vec<String> = records
        .iter()
        .map(|r| serde_json::to_string(r).expect("json"))
        .collect();
    let mut group = c.benchmark_group("audit_verify");
    group.throughput(Throughput::Elements(RECORDS));
    group.bench_function("records", |b| {
        b.iter(|| {
            let mut walk = TenantWalk::new("acme", Vec::new(), Some(&keys));
            for r in &records {
                walk.push(r).expect("holds");
            }
            black_box(walk.records())
        });
    });
    group.bench_function("stored_json", |b| {
        b.iter(|| {
            let mut walk = TenantWalk::new("acme", Vec::new(), Some(&keys));
            for text in &stored {
                let r: AuditRecord = serde_json::from_str(text).expect("parses");
                walk.push(&r).expect("holds");
            }
            black_box(walk.records())
        });
    });
    group.finish();
}

#[allow(
    missing_docs,
    reason = "criterion_group! generates an undocumented function"
)]
mod group {
    criterion::criterion_group!(benches, super::pipeline, super::audit_verify);
}
criterion_main!(group::benches);
