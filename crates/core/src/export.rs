//! Checking a chain against everything that vouches for it (links, digests, MACs, the heads
//! signed manifests and a witness name), and verifying a JSON Lines export with the public key
//! alone (PH1.EXPORT).

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::audit::{AuditRecord, ChainBreak, ChainVerifier, Checkpoint};
use crate::keys::ServiceKeys;
use crate::manifest::{Manifest, ManifestBreak, ManifestChain, ManifestKind, Witnessed};

/// Heads some signed statement names, latest per chain: `tenant → (seq, digest)`.
pub type NamedHeads = BTreeMap<String, (u64, String)>;

/// What one chain must hold, from several sources of named heads: `(seq, digest)` ascending.
pub fn expectations(sources: &[&NamedHeads]) -> BTreeMap<String, Vec<(u64, String)>> {
    let mut out: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for source in sources {
        for (tenant, head) in *source {
            out.entry(tenant.clone()).or_default().push(head.clone());
        }
    }
    for points in out.values_mut() {
        points.sort();
        points.dedup();
    }
    out
}

/// Walks one chain's records in order: each must link to the one before, match its digest,
/// carry the KMS's MAC (when the walk holds the keys), and be the record a named head says.
pub struct TenantWalk<'k> {
    tenant: String,
    chain: ChainVerifier,
    keys: Option<&'k ServiceKeys>,
    expected: Vec<(u64, String)>,
    met: usize,
    records: u64,
}

impl<'k> TenantWalk<'k> {
    /// A walk of `tenant`'s chain that expects the named heads `expected` (ascending) and
    /// checks MACs with `keys`.
    pub fn new(tenant: &str, expected: Vec<(u64, String)>, keys: Option<&'k ServiceKeys>) -> Self {
        Self {
            tenant: tenant.to_owned(),
            chain: ChainVerifier::default(),
            keys,
            expected,
            met: 0,
            records: 0,
        }
    }

    /// Checks the next record.
    pub fn push(&mut self, record: &AuditRecord) -> Result<(), ChainBreak> {
        if record.tenant_id != self.tenant {
            // Another chain's record, moved under this one.
            return Err(ChainBreak::Discontinuity {
                seq: self.chain.head().0.saturating_add(1),
            });
        }
        self.chain.push(record)?;
        if let Some(keys) = self.keys
            && !record.mac_holds(keys)
        {
            return Err(ChainBreak::Unauthenticated { seq: record.seq });
        }
        while let Some((seq, digest)) = self.expected.get(self.met)
            && *seq == record.seq
        {
            if *digest != record.digest {
                return Err(ChainBreak::Diverges { seq: record.seq });
            }
            self.met += 1;
        }
        self.records += 1;
        Ok(())
    }

    /// After the last record: every named head was met.
    pub fn finish(&self) -> Result<(), ChainBreak> {
        match self.expected.get(self.met) {
            Some(_) => Err(ChainBreak::Cut {
                seq: self.chain.head().0.saturating_add(1),
            }),
            None => Ok(()),
        }
    }

    /// The last record checked: `(seq, digest)`.
    pub fn head(&self) -> (u64, &str) {
        self.chain.head()
    }

    /// Records checked.
    pub fn records(&self) -> u64 {
        self.records
    }
}

/// One line of a JSON Lines export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "lines are parsed one at a time; boxing would only add an allocation per record"
)]
pub enum ExportLine {
    /// An audit record.
    Record(AuditRecord),
    /// A signed checkpoint of the records before it.
    Checkpoint(Checkpoint),
    /// A signed manifest: the store's, from its latest full one, before the records; and the
    /// export's own, last.
    Manifest(Manifest),
}

/// What verifying an export needs besides the key.
#[derive(Clone, Debug, Default)]
pub struct ExportChecks {
    /// Records no signature covers are reported, not refused.
    pub allow_uncovered: bool,
    /// What a witness named: the export must hold each head and the latest manifest.
    pub witnessed: Witnessed,
    /// The export is of this tenant's chain alone: no other chain is expected in it. Without
    /// it, the export's closing manifest says; without that, every chain is expected.
    pub tenant: Option<String>,
}

/// What verifying an export found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Records checked, all tenants.
    pub records: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Manifests checked, the export's own included.
    pub manifests: u64,
    /// Records no signed manifest or checkpoint covers.
    pub uncovered: u64,
}

/// Why an export did not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// A line is not an export line, or stands where it cannot.
    #[error("line {line} is not an export line, or is out of place")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// A chain is broken.
    #[error("tenant {tenant}: {broken}")]
    Chain {
        /// The chain's tenant.
        tenant: String,
        /// How, at the first bad record.
        broken: ChainBreak,
    },
    /// The manifests do not hold.
    #[error(transparent)]
    Manifest(#[from] ManifestBreak),
}

/// One chain of an export as verification goes.
struct Walked<'k> {
    walk: TenantWalk<'k>,
    checkpointed: u64,
}

/// Verifies a JSON Lines export with the public key alone: the store's manifests hold and
/// follow one another; every chain links, matches its digests, reaches every head a manifest
/// or the witness names, and has every record covered by a signature (the export's closing
/// manifest covers all it holds), and no chain a manifest names is missing.
pub fn verify_export(
    text: &str,
    key: &VerifyingKey,
    checks: &ExportChecks,
) -> Result<ExportSummary, ExportError> {
    let mut summary = ExportSummary::default();
    let mut stored = ManifestChain::default();
    let mut expected = None;
    let mut chains: BTreeMap<String, Walked<'_>> = BTreeMap::new();
    let mut closing: Option<Manifest> = None;
    let mut held = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = ExportError::Malformed {
            line: index.saturating_add(1),
        };
        let parsed: ExportLine = serde_json::from_str(line).map_err(|_| malformed.clone())?;
        if closing.is_some() {
            return Err(malformed);
        }
        let expected = expected
            .get_or_insert_with(|| expectations(&[stored.heads(), &checks.witnessed.heads]));
        match parsed {
            ExportLine::Manifest(m) if m.kind == ManifestKind::Export => closing = Some(m),
            ExportLine::Manifest(m) => {
                if !chains.is_empty() {
                    return Err(malformed);
                }
                stored.push(&m, key)?;
                held.insert(m.seq, m.digest.clone());
                summary.manifests += 1;
                // Named heads change with every stored manifest; take them in afresh.
                *expected = expectations(&[stored.heads(), &checks.witnessed.heads]);
            }
            ExportLine::Record(r) => {
                let walked = chains.entry(r.tenant_id.clone()).or_insert_with(|| Walked {
                    walk: TenantWalk::new(
                        &r.tenant_id,
                        expected.get(&r.tenant_id).cloned().unwrap_or_default(),
                        None,
                    ),
                    checkpointed: 0,
                });
                walked.walk.push(&r).map_err(|broken| ExportError::Chain {
                    tenant: r.tenant_id.clone(),
                    broken,
                })?;
                summary.records += 1;
            }
            ExportLine::Checkpoint(c) => {
                let holds = chains.get_mut(&c.tenant_id).is_some_and(|walked| {
                    let (seq, digest) = walked.walk.head();
                    let holds = c.seq == seq && c.digest == digest && c.verify(key);
                    if holds {
                        walked.checkpointed = c.seq;
                    }
                    holds
                });
                if !holds {
                    return Err(ExportError::Chain {
                        tenant: c.tenant_id,
                        broken: ChainBreak::BadCheckpoint { seq: c.seq },
                    });
                }
                summary.checkpoints += 1;
            }
        }
    }
    checks.witnessed.held_by(&held, stored.latest_seq())?;
    let closed = match &closing {
        Some(m) => {
            check_closing(m, &stored, &chains, key)?;
            summary.manifests += 1;
            m.heads
                .iter()
                .map(|h| (h.tenant_id.clone(), h.seq))
                .collect()
        }
        None => BTreeMap::new(),
    };
    let scope = checks
        .tenant
        .as_deref()
        .or(closing.as_ref().and_then(|m| m.tenant_id.as_deref()));
    let expected =
        expected.unwrap_or_else(|| expectations(&[stored.heads(), &checks.witnessed.heads]));
    for tenant in expected.keys() {
        if scope.is_none_or(|s| s == tenant) && !chains.contains_key(tenant) {
            return Err(ExportError::Chain {
                tenant: tenant.clone(),
                broken: ChainBreak::Cut { seq: 1 },
            });
        }
    }
    for (tenant, walked) in &chains {
        let broken = |broken| ExportError::Chain {
            tenant: tenant.clone(),
            broken,
        };
        walked.walk.finish().map_err(broken)?;
        let covered = [
            stored.heads().get(tenant).map_or(0, |(seq, _)| *seq),
            walked.checkpointed,
            closed.get(tenant).copied().unwrap_or(0),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let head = walked.walk.head().0;
        if head > covered {
            if !checks.allow_uncovered {
                return Err(broken(ChainBreak::Unsigned { seq: covered }));
            }
            summary.uncovered += head - covered;
        }
    }
    Ok(summary)
}

/// The export's closing manifest follows the store's latest and names exactly the chains and
/// heads the export holds.
fn check_closing(
    m: &Manifest,
    stored: &ManifestChain,
    chains: &BTreeMap<String, Walked<'_>>,
    key: &VerifyingKey,
) -> Result<(), ManifestBreak> {
    if !m.verify(key) {
        return Err(ManifestBreak::BadSignature { seq: m.seq });
    }
    let (seq, prev) = stored.next();
    let held = m.heads.len() == chains.len()
        && m.heads.iter().zip(chains).all(|(h, (tenant, walked))| {
            let (head_seq, digest) = walked.walk.head();
            h.tenant_id == *tenant && h.seq == head_seq && h.digest == digest
        });
    if m.seq != seq || m.prev_digest != prev || !held {
        return Err(ManifestBreak::Discontinuity { seq: m.seq });
    }
    Ok(())
}
