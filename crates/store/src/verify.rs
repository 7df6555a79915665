//! Verification and export of the audit chains held by a store.

use std::collections::BTreeSet;
use std::io::Write;

use selene_kms_core::export::expectations;
use selene_kms_core::manifest::{ManifestBreak, Unsigned, Witnessed};
use selene_kms_core::{
    AuditRecord, ChainBreak, ChainHead, Checkpoint, ExportLine, ManifestKind, TenantId, TenantWalk,
};

use crate::codec::stored_tenant;
use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::manifest::read_manifests;
use crate::state_check::{Told, first_difference};
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
    /// The last record the latest signed manifest names (0 for none).
    pub manifested: u64,
    /// The first bad record, if any.
    pub broken: Option<ChainBreak>,
    /// Where the store holds something other than what the chain says (checked when the
    /// chain holds), if anywhere.
    pub differs: Option<String>,
}

impl ChainReport {
    /// Whether the chain and the state it describes hold.
    pub fn holds(&self) -> bool {
        self.broken.is_none() && self.differs.is_none()
    }
}

/// Verifies one tenant's chain against the store's manifests, at `now_ms` (see
/// [`verify_store`]).
pub async fn verify_tenant(
    store: &dyn Store,
    tenant: &TenantId,
    now_ms: u64,
) -> StoreResult<ChainReport> {
    let report = verify_store(store, Some(tenant), &Witnessed::default(), now_ms).await?;
    report
        .chains
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::new(ErrorKind::NotFound, "no chain was verified"))
}

/// What verification of a store found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreReport {
    /// Manifests verified, from the latest full one.
    pub manifests: u64,
    /// Where the store's manifests stop holding, if they do.
    pub manifests_broken: Option<ManifestBreak>,
    /// Each chain verified.
    pub chains: Vec<ChainReport>,
}

impl StoreReport {
    /// Whether everything held.
    pub fn holds(&self) -> bool {
        self.manifests_broken.is_none() && self.chains.iter().all(ChainReport::holds)
    }
}

/// Verifies a store with its keys: its manifests from the latest full one; every chain (or
/// `tenant`'s): links, digests, record MACs, stored checkpoints, and every head the manifests
/// or a witness (`witnessed`) name, including chains that are gone altogether; and that the
/// store's secrets, versions, policies, principals and (until they expire, at `now_ms`)
/// revocations of handles and credentials are what each chain says.
pub async fn verify_store(
    store: &dyn Store,
    tenant: Option<&TenantId>,
    witnessed: &Witnessed,
    now_ms: u64,
) -> StoreResult<StoreReport> {
    let read = read_manifests(store).await?;
    let chain = read.chain;
    let expected = expectations(&[chain.heads(), &witnessed.heads]);
    let mut manifests_broken = read.broken;
    if manifests_broken.is_none()
        && let Some((seq, _)) = &witnessed.latest
    {
        // The store's manifest at the witness's latest number, wherever its tail starts.
        let held: std::collections::BTreeMap<u64, String> = store
            .manifests(seq.saturating_sub(1), 1)
            .await?
            .into_iter()
            .map(|m| (m.seq, m.digest))
            .collect();
        manifests_broken = witnessed
            .held_by(
                &held,
                chain
                    .latest_seq()
                    .max(held.keys().copied().max().unwrap_or(0)),
            )
            .err();
    }
    let tenants: BTreeSet<TenantId> = match tenant {
        Some(t) => BTreeSet::from([t.clone()]),
        None => {
            let mut all: BTreeSet<TenantId> = store.audit_tenants().await?.into_iter().collect();
            // A tenant the store holds state for must have a chain that tells it.
            all.extend(store.tenants().await?.into_iter().map(|t| t.tenant_id));
            for name in expected.keys() {
                all.insert(stored_tenant(name)?);
            }
            all
        }
    };
    if manifests_broken.is_none() && chain.latest_seq() == 0 && !tenants.is_empty() {
        // Chains no manifest names: the manifests were removed (or never signed).
        manifests_broken = Some(ManifestBreak::Discontinuity { seq: 1 });
    }
    let mut chains = Vec::with_capacity(tenants.len());
    for t in tenants {
        let named = expected.get(t.as_str()).cloned().unwrap_or_default();
        let manifested = chain.heads().get(t.as_str()).map_or(0, |(seq, _)| *seq);
        chains.push(verify_chain(store, t, named, manifested, now_ms).await?);
    }
    Ok(StoreReport {
        manifests: read.manifests.len() as u64,
        manifests_broken,
        chains,
    })
}

async fn verify_chain(
    store: &dyn Store,
    tenant: TenantId,
    named: Vec<(u64, String)>,
    manifested: u64,
    now_ms: u64,
) -> StoreResult<ChainReport> {
    let key = store.keys().audit_verifying_key();
    let checkpoints = store.checkpoints(&tenant).await?;
    let mut next_checkpoint = checkpoints.iter().peekable();
    let mut walk = TenantWalk::new(tenant.as_str(), named, Some(store.keys()));
    let mut report = ChainReport {
        tenant,
        records: 0,
        checkpoints: 0,
        manifested,
        broken: None,
        differs: None,
    };
    let mut told = Told::default();
    let mut after = 0;
    loop {
        let page = store.audit_records(&report.tenant, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for record in &page {
            if let Err(b) = walk.push(record) {
                report.broken = Some(b);
                return Ok(report);
            }
            told.take(record);
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
    report.broken = walk.finish().err().or_else(|| {
        // A checkpoint beyond the last record: records were dropped from the end.
        next_checkpoint.next().map(|_| ChainBreak::Cut {
            seq: report.records + 1,
        })
    });
    if report.broken.is_none() {
        report.differs = first_difference(store, &report.tenant, &told, now_ms).await?;
        let moved = !store
            .audit_records(&report.tenant, after, 1)
            .await?
            .is_empty();
        if moved {
            // Another node changed the tenant while it was read: the state read may be newer
            // than the chain walked, so it says nothing either way.
            report.differs = None;
        }
    }
    Ok(report)
}

/// What an export wrote.
#[derive(Clone, Debug, Default)]
pub struct Exported {
    /// Records written.
    pub records: u64,
    /// The first break met (tenant, how): the export has no closing manifest.
    pub broken: Option<(String, ChainBreak)>,
}

/// Writes every chain (or one tenant's) as JSON Lines: the store's manifests from the latest
/// full one; each chain's records in order, its stored checkpoints after the records they
/// cover and a fresh checkpoint at its head; and last a manifest signed now that names exactly
/// the chains and heads written. Records are checked as they are written (MACs, links, named
/// heads): a chain that breaks gets no fresh checkpoint and the export no closing manifest, so
/// that it verifies only as far as the store's own signatures vouch.
pub async fn export(
    store: &dyn Store,
    tenant: Option<&TenantId>,
    at_ms: u64,
    out: &mut (dyn Write + Send),
) -> StoreResult<Exported> {
    let io = |_| StoreError::new(ErrorKind::Unavailable, "export: write failed");
    let (chain, manifests) = read_manifests(store).await?.holding()?;
    for m in manifests {
        line(out, &ExportLine::Manifest(m)).map_err(io)?;
    }
    let expected = expectations(&[chain.heads()]);
    let tenants = match tenant {
        Some(t) => vec![t.clone()],
        None => store.audit_tenants().await?,
    };
    let mut exported = Exported::default();
    let mut closing = Some(Vec::with_capacity(tenants.len()));
    for (name, _) in expected.iter() {
        let listed = tenants.iter().any(|t| t.as_str() == name);
        if !listed && tenant.is_none_or(|t| t.as_str() == name) {
            exported
                .broken
                .get_or_insert((name.clone(), ChainBreak::Cut { seq: 1 }));
            closing = None;
        }
    }
    for tenant in tenants {
        let named = expected.get(tenant.as_str()).cloned().unwrap_or_default();
        let mut walk = TenantWalk::new(tenant.as_str(), named, Some(store.keys()));
        let mut intact = true;
        let checkpoints = store.checkpoints(&tenant).await?;
        let mut stored = checkpoints.into_iter().peekable();
        let mut head: Option<AuditRecord> = None;
        let mut after = 0;
        loop {
            let page = store.audit_records(&tenant, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for record in page {
                if intact && let Err(b) = walk.push(&record) {
                    exported
                        .broken
                        .get_or_insert((tenant.as_str().to_owned(), b));
                    intact = false;
                }
                let seq = record.seq;
                line(out, &ExportLine::Record(record.clone())).map_err(io)?;
                exported.records += 1;
                while let Some(cp) = stored.next_if(|cp| cp.seq <= seq) {
                    line(out, &ExportLine::Checkpoint(cp)).map_err(io)?;
                }
                head = Some(record);
            }
        }
        if intact && let Err(b) = walk.finish() {
            exported
                .broken
                .get_or_insert((tenant.as_str().to_owned(), b));
            intact = false;
        }
        if !intact {
            closing = None;
        }
        // Signatures made now vouch only for a chain that held.
        if let Some(h) = head.filter(|_| intact) {
            let cp = Checkpoint::sign(store.keys(), tenant.as_str(), h.seq, &h.digest, at_ms);
            line(out, &ExportLine::Checkpoint(cp)).map_err(io)?;
            if let Some(heads) = &mut closing {
                heads.push(ChainHead {
                    tenant_id: tenant.as_str().to_owned(),
                    seq: h.seq,
                    digest: h.digest,
                });
            }
        }
    }
    if let Some(mut heads) = closing {
        heads.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        let (seq, prev) = chain.next();
        let manifest = Unsigned {
            seq,
            kind: ManifestKind::Export,
            at_ms,
            tenant_id: tenant.map(|t| t.as_str().to_owned()),
            heads,
            prev_digest: prev.to_owned(),
        }
        .sign(store.keys());
        line(out, &ExportLine::Manifest(manifest)).map_err(io)?;
    }
    Ok(exported)
}

fn line(out: &mut (dyn Write + Send), l: &ExportLine) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, l)?;
    out.write_all(b"\n")
}
