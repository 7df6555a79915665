//! The audit chain: tampering is found at the record it touches; exports verify with the public
//! key alone.

mod common;

use common::*;
use selene_kms_core::{
    AuditRecord, ChainBreak, ChainVerifier, Checkpoint, ExportLine,
    audit::{GENESIS_DIGEST, parse_public_key, public_key_hex},
    export::{ExportChecks, ExportError, verify_export},
};

fn chain(n: u64) -> Vec<AuditRecord> {
    let req = parse(&request("GET_HANDLE"));
    let bundle = answer(&req, Some(&policy()), Some(&secret(1)), &keys(), NOW);
    let mut prev = GENESIS_DIGEST.to_owned();
    (1..=n)
        .map(|seq| {
            let mut r =
                AuditRecord::for_request(&req.tenant_id, &req.context(), &bundle, NOW + seq, false);
            r.chain(seq, &prev);
            r.seal(&keys());
            prev.clone_from(&r.digest);
            r
        })
        .collect()
}

fn verify(records: &[AuditRecord]) -> Result<(), ChainBreak> {
    let mut v = ChainVerifier::default();
    records.iter().try_for_each(|r| v.push(r))
}

#[test]
fn an_intact_chain_verifies() {
    assert_eq!(verify(&chain(20)), Ok(()));
}

#[test]
fn altering_deleting_or_reordering_a_record_is_found_at_that_record() {
    let records = chain(10);
    let mut altered = records.clone();
    altered[4].reason_code = selene_kms_core::ReasonCode::NotAuthorized;
    assert_eq!(verify(&altered), Err(ChainBreak::DigestMismatch { seq: 5 }));

    let mut deleted = records.clone();
    deleted.remove(6);
    assert_eq!(verify(&deleted), Err(ChainBreak::Discontinuity { seq: 7 }));

    let mut reordered = records.clone();
    reordered.swap(2, 3);
    assert_eq!(
        verify(&reordered),
        Err(ChainBreak::Discontinuity { seq: 3 })
    );

    // Re-chaining an altered record from its own predecessor still breaks the next link.
    let mut rechained = records.clone();
    rechained[4].at_ms += 1;
    let prev = rechained[3].digest.clone();
    rechained[4].chain(5, &prev);
    assert_eq!(
        verify(&rechained),
        Err(ChainBreak::Discontinuity { seq: 6 })
    );
}

fn export(records: &[AuditRecord]) -> String {
    let keys = keys();
    let mut lines: Vec<String> = Vec::new();
    for r in records {
        lines.push(serde_json::to_string(&ExportLine::Record(r.clone())).expect("serializes"));
        if r.seq % 4 == 0 || r.seq == records.len() as u64 {
            let cp = Checkpoint::sign(&keys, &r.tenant_id, r.seq, &r.digest, NOW);
            lines.push(serde_json::to_string(&ExportLine::Checkpoint(cp)).expect("serializes"));
        }
    }
    lines.join("\n")
}

#[test]
fn an_export_verifies_with_the_public_key_alone() {
    let key = parse_public_key(&public_key_hex(&keys())).expect("valid key");
    let text = export(&chain(9));
    let summary = verify_export(&text, &key, &ExportChecks::default()).expect("verifies");
    assert_eq!((summary.records, summary.checkpoints), (9, 3));

    // Another store's key does not verify it.
    let other = parse_public_key(&public_key_hex(&other_keys())).expect("valid key");
    assert!(matches!(
        verify_export(&text, &other, &ExportChecks::default()),
        Err(ExportError::Chain {
            broken: ChainBreak::BadCheckpoint { .. },
            ..
        })
    ));

    // Tampering with one record inside the export is found at that record.
    let tampered = text.replacen("\"seq\":3,\"at_ms\":", "\"seq\":3,\"at_ms\":9", 1);
    assert_eq!(
        verify_export(&tampered, &key, &ExportChecks::default()),
        Err(ExportError::Chain {
            tenant: "acme".into(),
            broken: ChainBreak::DigestMismatch { seq: 3 }
        })
    );
    // Dropping the tail after the last checkpoint is not silently accepted.
    let lines: Vec<&str> = text.lines().collect();
    let without_last_checkpoint = lines[..lines.len() - 1].join("\n");
    assert_eq!(
        verify_export(&without_last_checkpoint, &key, &ExportChecks::default()),
        Err(ExportError::Chain {
            tenant: "acme".into(),
            broken: ChainBreak::Unsigned { seq: 8 }
        })
    );
    assert!(matches!(
        verify_export("{nope", &key, &ExportChecks::default()),
        Err(ExportError::Malformed { line: 1 })
    ));
}

/// Records as earlier builds stored them (before record MACs, and before the
/// fields REVOKE and CREATE_SECRET records gained) keep the digests they were written with.
#[test]
fn records_of_earlier_builds_keep_their_digests() {
    let text = include_str!("../testdata/audit_records_of_earlier_builds.jsonl");
    let records: Vec<AuditRecord> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a record"))
        .collect();
    assert!(records.len() >= 10);
    for r in &records {
        assert_eq!(
            r.compute_digest(),
            r.digest,
            "{} record {}",
            r.tenant_id,
            r.seq
        );
    }
}
