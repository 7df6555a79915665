//! Placing an audit record in its tenant's chain, and encoding what a commit stores beside it.
//! No SQL here: each backend stores what this computes, under its own guard of the chain head.

use std::sync::Arc;

use selene_kms_core::audit::answer_digest;
use selene_kms_core::{AuditRecord, Checkpoint, Column, MaterialBundle, ServiceKeys, TenantId};

use crate::error::{ErrorKind, StoreError, StoreResult};

/// A tenant's chain head: the last record's sequence number and digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The last record's sequence number (0 for an empty chain).
    pub seq: u64,
    /// The last record's digest (the genesis digest for an empty chain).
    pub digest: String,
}

impl Head {
    /// The head of an empty chain.
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            digest: selene_kms_core::audit::GENESIS_DIGEST.to_owned(),
        }
    }
}

fn not_the_kms(tenant: &str, seq: u64) -> StoreError {
    StoreError::new(
        ErrorKind::Corrupt,
        format!(
            "the head of {tenant}'s audit chain (record {seq}) was not written by the KMS: \
             run `selene-kms audit verify` (a store from a build before record MACs is \
             adopted once with `selene-kms init`)"
        ),
    )
}

/// The head a chain's last stored record gives, once the record proves to be the KMS's: its
/// content matches its digest and it carries the KMS's MAC. The KMS never chains a record
/// after, nor signs a manifest over, one that whoever can write the store appended.
pub fn head_of(keys: &ServiceKeys, tenant: &TenantId, record: &AuditRecord) -> StoreResult<Head> {
    if record.tenant_id != tenant.as_str()
        || record.compute_digest() != record.digest
        || !record.mac_holds(keys)
    {
        return Err(not_the_kms(tenant.as_str(), record.seq));
    }
    Ok(Head {
        seq: record.seq,
        digest: record.digest.clone(),
    })
}

const HEAD_MAC_TABLE: &str = "chain-head";

/// The MAC a backend that keeps chain heads in rows of their own stores beside each head.
pub fn head_mac(keys: &ServiceKeys, tenant: &TenantId, head: &Head) -> [u8; 32] {
    keys.row_mac(
        HEAD_MAC_TABLE,
        &[
            Column::Text(tenant.as_str()),
            Column::Number(head.seq),
            Column::Text(&head.digest),
        ],
    )
}

/// A chain head read from such a row, once its MAC holds.
pub fn head_of_row(
    keys: &ServiceKeys,
    tenant: &TenantId,
    head: Head,
    mac: Option<&[u8]>,
) -> StoreResult<Head> {
    let columns = [
        Column::Text(tenant.as_str()),
        Column::Number(head.seq),
        Column::Text(&head.digest),
    ];
    match mac {
        Some(mac) if keys.row_mac_holds(HEAD_MAC_TABLE, &columns, mac) => Ok(head),
        _ => Err(not_the_kms(tenant.as_str(), head.seq)),
    }
}

/// An audit record as stored under `(tenant, seq)`: one whose content names another position
/// was moved there, and is corrupt.
pub fn stored_record(tenant: &str, seq: u64, stored: &str) -> StoreResult<AuditRecord> {
    let record: AuditRecord = crate::codec::from_json(stored, "an audit record")?;
    if record.tenant_id != tenant || record.seq != seq {
        return Err(StoreError::new(
            ErrorKind::Corrupt,
            format!("the audit row at {tenant}/{seq} holds another record"),
        ));
    }
    Ok(record)
}

/// The stored records of a store from before records carried MACs, each sealed now. Refused
/// when any of them carries a MAC (the store was written by a build with MACs, and had its
/// manifests removed) or does not match its digest: nothing is sealed then.
pub fn sealed_from_before_macs(keys: &ServiceKeys, stored: &[&str]) -> StoreResult<Vec<String>> {
    let records = stored
        .iter()
        .map(|text| crate::codec::from_json::<AuditRecord>(text, "an audit record"))
        .collect::<StoreResult<Vec<_>>>()?;
    if records.iter().any(|r| r.mac.is_some()) {
        return Err(StoreError::new(
            ErrorKind::Invalid,
            "records of this store carry MACs: it was written by a build with manifests, and \
             its manifests were removed; nothing is sealed",
        ));
    }
    records
        .into_iter()
        .map(|mut record| {
            if record.compute_digest() != record.digest {
                return Err(StoreError::new(
                    ErrorKind::Corrupt,
                    format!(
                        "record {} of {}'s audit chain does not match its digest",
                        record.seq, record.tenant_id
                    ),
                ));
            }
            record.seal(keys);
            serde_json::to_string(&record).map_err(|_| encoding("audit record"))
        })
        .collect()
}

/// Why records are not sealed in a store that has signed manifests.
pub fn sealed_already() -> StoreError {
    StoreError::new(
        ErrorKind::Invalid,
        "this store has signed manifests: its records carry MACs already",
    )
}

/// A record chained after a head, encoded for storage.
pub struct Chained {
    /// The chain's head once the record is stored.
    pub head: Head,
    /// When the record was made.
    pub at_ms: u64,
    /// The record, as JSON.
    pub record: String,
    /// A signed checkpoint at this record, every [`CHECKPOINT_EVERY`] records, as JSON.
    pub checkpoint: Option<String>,
    /// The unit's bundle with its `audit_seq`, as the bytes answered and kept under the key.
    pub bundle: Option<Arc<[u8]>>,
}

impl Chained {
    /// The bytes kept under the unit's idempotency key: its bundle, or JSON `null` without one.
    pub fn idempotency_bytes(&self) -> &[u8] {
        self.bundle.as_deref().unwrap_or(b"null")
    }
}

/// A checkpoint is signed every this many records of a tenant.
pub const CHECKPOINT_EVERY: u64 = 1024;

fn encoding(what: &str) -> StoreError {
    StoreError::new(ErrorKind::Unavailable, format!("{what} encoding"))
}

/// Chains `audit` after `head` (sequence number, previous digest, own digest, MAC), signs a
/// checkpoint when one is due, and stamps the bundle with the record's sequence number; the
/// record names the digest of the bundle's bytes, so that a replay can show it gives them again.
pub fn chain(
    keys: &ServiceKeys,
    tenant: &TenantId,
    head: &Head,
    mut audit: AuditRecord,
    bundle: Option<MaterialBundle>,
) -> StoreResult<Chained> {
    let seq = head
        .seq
        .checked_add(1)
        .filter(|seq| crate::codec::to_db(*seq).is_ok())
        .ok_or_else(|| StoreError::new(ErrorKind::Invalid, "the audit chain is full"))?;
    let bundle = bundle
        .map(|mut b| {
            b.audit_seq = Some(seq);
            serde_json::to_vec(&b)
                .map(Arc::from)
                .map_err(|_| encoding("bundle"))
        })
        .transpose()?;
    if let Some(bytes) = &bundle {
        audit.bundle_digest = Some(answer_digest(bytes));
    }
    audit.chain(seq, &head.digest);
    audit.seal(keys);
    let record = serde_json::to_string(&audit).map_err(|_| encoding("audit record"))?;
    let checkpoint = if seq % CHECKPOINT_EVERY == 0 {
        let cp = Checkpoint::sign(keys, tenant.as_str(), seq, &audit.digest, audit.at_ms);
        Some(serde_json::to_string(&cp).map_err(|_| encoding("checkpoint"))?)
    } else {
        None
    };
    Ok(Chained {
        head: Head {
            seq,
            digest: audit.digest,
        },
        at_ms: audit.at_ms,
        record,
        checkpoint,
        bundle,
    })
}

#[cfg(test)]
mod tests {
    use selene_kms_core::audit::GENESIS_DIGEST;
    use selene_kms_core::{AuditAction, ReasonCode, ServiceSecret};

    use super::*;

    #[test]
    fn records_chain_and_checkpoints_fall_due() {
        let keys = ServiceKeys::derive(&ServiceSecret::from_bytes([4; 32]));
        let tenant = TenantId::try_from("acme").expect("tenant");
        let mut head = Head {
            seq: CHECKPOINT_EVERY - 2,
            digest: GENESIS_DIGEST.to_owned(),
        };
        let mut checkpoints = 0;
        for _ in 0..3 {
            let audit = AuditRecord::for_action(
                &tenant,
                AuditAction::GetHandle,
                ReasonCode::OkMaterialIssue,
                1,
            );
            let chained = chain(&keys, &tenant, &head, audit, None).expect("chains");
            let record: AuditRecord = serde_json::from_str(&chained.record).expect("json");
            assert_eq!(record.seq, head.seq + 1);
            assert_eq!(record.prev_digest, head.digest);
            assert_eq!(record.compute_digest(), chained.head.digest);
            assert!(
                record.mac_holds(&keys),
                "every record carries the KMS's MAC"
            );
            checkpoints += usize::from(chained.checkpoint.is_some());
            head = chained.head;
        }
        assert_eq!(checkpoints, 1, "one checkpoint at seq {CHECKPOINT_EVERY}");
    }
}
