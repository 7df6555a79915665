//! Verification and export of the audit chains held by a store.

use std::io::Write;

use selene_kms_core::{AuditRecord, ChainBreak, ChainVerifier, Checkpoint, ExportLine, TenantId};

use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::store::Store;

/// Records read per page while walking a chain.
const PAGE: usize = 4096;

/// What verification of one tenant's chain found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    /// The tenant.
    pub tenant: TenantId,
    /// Records verified.
    pub records: u64,
    /// Stored checkpoints verified.
    pub checkpoints: u64,
    /// The first bad record, if any.
    pub broken: Option<ChainBreak>,
}

/// Walks every record of `tenant`'s chain, checking links, digests and stored checkpoints.
pub async fn verify_tenant(store: &dyn Store, tenant: &TenantId) -> StoreResult<ChainReport> {
    let key = store.keys().audit_verifying_key();
    let checkpoints = store.checkpoints(tenant).await?;
    let mut next_checkpoint = checkpoints.iter().peekable();
    let mut verifier = ChainVerifier::default();
    let mut report = ChainReport {
        tenant: tenant.clone(),
        records: 0,
        checkpoints: 0,
        broken: None,
    };
    let mut after = 0;
    loop {
        let page = store.audit_records(tenant, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for record in &page {
            if let Err(b) = verifier.push(record) {
                report.broken = Some(b);
                return Ok(report);
            }
            report.records += 1;
            while let Some(cp) = next_checkpoint.next_if(|cp| cp.seq <= record.seq) {
                if cp.seq != record.seq || cp.digest != record.digest || !cp.verify(&key) {
                    report.broken = Some(ChainBreak::BadCheckpoint { seq: cp.seq });
                    return Ok(report);
                }
                report.checkpoints += 1;
            }
        }
    }
    if let Some(cp) = next_checkpoint.next() {
        // A checkpoint beyond the last record: records were dropped from the end.
        report.broken = Some(ChainBreak::Discontinuity {
            seq: report.records + 1,
        });
        let _ = cp;
    }
    Ok(report)
}

/// Writes every chain (or one tenant's) as JSON Lines: records in order, the stored checkpoints
/// after the records they cover, and a fresh signed checkpoint at each chain's head.
pub async fn export(
    store: &dyn Store,
    tenant: Option<&TenantId>,
    at_ms: u64,
    out: &mut (dyn Write + Send),
) -> StoreResult<u64> {
    let tenants = match tenant {
        Some(t) => vec![t.clone()],
        None => store.audit_tenants().await?,
    };
    let io = |_| StoreError::new(ErrorKind::Unavailable, "export: write failed");
    let mut written = 0;
    for tenant in tenants {
        let checkpoints = store.checkpoints(&tenant).await?;
        let mut stored = checkpoints.into_iter().peekable();
        let mut head: Option<AuditRecord> = None;
        let mut after = 0;
        loop {
            let page = store.audit_records(&tenant, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for record in page {
                let seq = record.seq;
                line(out, &ExportLine::Record(record.clone())).map_err(io)?;
                written += 1;
                while let Some(cp) = stored.next_if(|cp| cp.seq <= seq) {
                    line(out, &ExportLine::Checkpoint(cp)).map_err(io)?;
                }
                head = Some(record);
            }
        }
        if let Some(h) = head {
            let cp = Checkpoint::sign(store.keys(), tenant.as_str(), h.seq, &h.digest, at_ms);
            line(out, &ExportLine::Checkpoint(cp)).map_err(io)?;
        }
    }
    Ok(written)
}

fn line(out: &mut (dyn Write + Send), l: &ExportLine) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, l)?;
    out.write_all(b"\n")
}
