//! Signed manifests: statements, chained to one another, of every audit chain's head.
//!
//! Record MACs stop whoever can write the store from altering or forging records; manifests
//! stop them from cutting a chain's tail or removing a whole chain unseen. The KMS signs one at
//! least every second while chains move, so such a writer can at most roll the whole store back
//! to an earlier signed state, which a witness (a copy of the manifests kept out of their reach)
//! reveals.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{GENESIS_DIGEST, hex, unhex};
use crate::encode::Encoder;
use crate::keys::ServiceKeys;

/// A chain's head as a manifest names it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainHead {
    /// The chain's tenant (`_system` for the principals' chain).
    pub tenant_id: String,
    /// The last record's sequence number.
    pub seq: u64,
    /// The last record's digest.
    pub digest: String,
}

/// What a manifest lists.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestKind {
    /// Every chain's head. A store's chain of manifests starts with one, and one follows every
    /// [`FULL_EVERY`] manifests, so a verifier starts from the latest.
    Full,
    /// The heads that moved since the previous manifest.
    Changes,
    /// The closing line of an export: exactly the chains the export holds, at the heads it
    /// holds. Chained after the store's latest manifest but never stored in its chain.
    Export,
}

impl ManifestKind {
    const fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Changes => "changes",
            Self::Export => "export",
        }
    }
}

/// A manifest of the store's chain is full at every multiple of this sequence number.
pub const FULL_EVERY: u64 = 600;

/// A manifest before it is signed.
#[derive(Clone, Debug)]
pub struct Unsigned {
    /// Its position in the store's chain of manifests.
    pub seq: u64,
    /// What it lists.
    pub kind: ManifestKind,
    /// Signing time.
    pub at_ms: u64,
    /// For an export of one tenant, that tenant.
    pub tenant_id: Option<String>,
    /// The heads, sorted by tenant, one per chain.
    pub heads: Vec<ChainHead>,
    /// The digest of the previous manifest.
    pub prev_digest: String,
}

impl Unsigned {
    fn message(&self) -> Vec<u8> {
        let mut e = Encoder::with_domain("selene-kms/audit-manifest/v1");
        e.u64(self.seq)
            .str(self.kind.name())
            .u64(self.at_ms)
            .opt_str(self.tenant_id.as_deref())
            .u64(u64::try_from(self.heads.len()).unwrap_or(u64::MAX));
        for h in &self.heads {
            e.str(&h.tenant_id).u64(h.seq).str(&h.digest);
        }
        e.str(&self.prev_digest);
        e.finish()
    }

    /// Signs it with the store's audit signing key.
    pub fn sign(self, keys: &ServiceKeys) -> Manifest {
        let message = self.message();
        let signature = keys.audit_signing.sign(&message);
        Manifest {
            seq: self.seq,
            kind: self.kind,
            at_ms: self.at_ms,
            tenant_id: self.tenant_id,
            heads: self.heads,
            prev_digest: self.prev_digest,
            digest: hex(&Sha256::digest(&message)),
            public_key: hex(keys.audit_verifying_key().as_bytes()),
            signature: hex(&signature.to_bytes()),
        }
    }
}

/// A signed manifest.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Its position in the store's chain of manifests (from 1).
    pub seq: u64,
    /// What it lists.
    pub kind: ManifestKind,
    /// Signing time.
    pub at_ms: u64,
    /// For an export of one tenant, that tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The heads, sorted by tenant.
    pub heads: Vec<ChainHead>,
    /// The previous manifest's digest (all zeros for the first).
    pub prev_digest: String,
    /// SHA-256 of the signed message, hex.
    pub digest: String,
    /// The Ed25519 public key, hex.
    pub public_key: String,
    /// The Ed25519 signature, hex.
    pub signature: String,
}

impl Manifest {
    fn unsigned(&self) -> Unsigned {
        Unsigned {
            seq: self.seq,
            kind: self.kind,
            at_ms: self.at_ms,
            tenant_id: self.tenant_id.clone(),
            heads: self.heads.clone(),
            prev_digest: self.prev_digest.clone(),
        }
    }

    /// Whether it is well formed (heads sorted, one per chain) and signed under `key` (which
    /// must also be the key named inside), and its digest is that of what was signed.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        if self.public_key != hex(key.as_bytes()) {
            return false;
        }
        if !self.heads.windows(2).all(|w| match w {
            [a, b] => a.tenant_id < b.tenant_id,
            _ => true,
        }) {
            return false;
        }
        let Some(sig) = unhex::<64>(&self.signature) else {
            return false;
        };
        let message = self.unsigned().message();
        hex(&Sha256::digest(&message)) == self.digest
            && key.verify(&message, &Signature::from_bytes(&sig)).is_ok()
    }
}

/// Why a run of manifests does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestBreak {
    /// A manifest's signature, digest or form does not hold.
    #[error("manifest {seq}: signature, digest or form does not hold")]
    BadSignature {
        /// The manifest.
        seq: u64,
    },
    /// A manifest is missing, out of order, not linked to the previous one, or of a kind that
    /// cannot stand where it is.
    #[error("manifest {seq}: missing, out of order, or not linked to the previous manifest")]
    Discontinuity {
        /// The manifest.
        seq: u64,
    },
    /// A manifest names a head below, or beside, one an earlier manifest named, or a full
    /// manifest leaves out a chain an earlier one named.
    #[error(
        "manifest {seq}: tenant {tenant}'s chain is behind record {head_seq}, which an earlier manifest named"
    )]
    Regressed {
        /// The manifest.
        seq: u64,
        /// The chain that went back.
        tenant: String,
        /// The head the earlier manifest named.
        head_seq: u64,
    },
}

/// The heads a run of manifests names, latest per chain, with each manifest checked against
/// the ones before it: a store's chain of manifests from its latest full manifest on.
#[derive(Clone, Debug, Default)]
pub struct ManifestChain {
    latest: Option<(u64, String)>,
    heads: BTreeMap<String, (u64, String)>,
}

impl ManifestChain {
    /// The next manifest's sequence number and previous digest.
    pub fn next(&self) -> (u64, &str) {
        match &self.latest {
            Some((seq, digest)) => (seq.saturating_add(1), digest),
            None => (1, GENESIS_DIGEST),
        }
    }

    /// The latest manifest's sequence number (0 for none).
    pub fn latest_seq(&self) -> u64 {
        self.latest.as_ref().map_or(0, |(seq, _)| *seq)
    }

    /// The latest head named for each chain: `tenant → (seq, digest)`.
    pub fn heads(&self) -> &BTreeMap<String, (u64, String)> {
        &self.heads
    }

    /// Whether `heads` may be signed next: no chain goes back or forks, and a full list names
    /// every chain named before. The signer checks this before it signs, so a store whose
    /// chains were cut under it gets no manifest that would hide the cut.
    pub fn admits(&self, seq: u64, heads: &[ChainHead], full: bool) -> Result<(), ManifestBreak> {
        let regressed = |tenant: &str, head_seq: u64| ManifestBreak::Regressed {
            seq,
            tenant: tenant.to_owned(),
            head_seq,
        };
        for h in heads {
            if let Some((known, digest)) = self.heads.get(&h.tenant_id)
                && (h.seq < *known || (h.seq == *known && h.digest != *digest))
            {
                return Err(regressed(&h.tenant_id, *known));
            }
        }
        if full {
            for (tenant, (known, _)) in &self.heads {
                if heads
                    .binary_search_by(|h| h.tenant_id.as_str().cmp(tenant))
                    .is_err()
                {
                    return Err(regressed(tenant, *known));
                }
            }
        }
        Ok(())
    }

    /// Checks the next manifest of a store's chain and takes in its heads. The first must be
    /// full; each later one follows the previous by sequence number and digest.
    pub fn push(&mut self, m: &Manifest, key: &VerifyingKey) -> Result<(), ManifestBreak> {
        if !m.verify(key) {
            return Err(ManifestBreak::BadSignature { seq: m.seq });
        }
        let linked = match &self.latest {
            None => m.kind == ManifestKind::Full,
            Some(_) => {
                let (seq, prev) = self.next();
                m.seq == seq && m.prev_digest == prev && m.kind != ManifestKind::Export
            }
        };
        if !linked {
            return Err(ManifestBreak::Discontinuity { seq: m.seq });
        }
        self.admits(m.seq, &m.heads, m.kind == ManifestKind::Full)?;
        self.take(m);
        Ok(())
    }

    fn take(&mut self, m: &Manifest) {
        for h in &m.heads {
            self.heads
                .insert(h.tenant_id.clone(), (h.seq, h.digest.clone()));
        }
        self.latest = Some((m.seq, m.digest.clone()));
    }
}

/// What a witness file names: the latest head of each chain, and its latest manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Witnessed {
    /// The latest head named per chain: `tenant → (seq, digest)`.
    pub heads: BTreeMap<String, (u64, String)>,
    /// The latest manifest: `(seq, digest)`. The store must still hold it.
    pub latest: Option<(u64, String)>,
}

impl Witnessed {
    /// Reads a witness's manifests. A witness may start anywhere in the store's chain of
    /// manifests, so only signatures and the order of heads are checked here; the store must
    /// then hold every head named, and the latest manifest.
    pub fn read<'a>(
        manifests: impl IntoIterator<Item = &'a Manifest>,
        key: &VerifyingKey,
    ) -> Result<Self, ManifestBreak> {
        let mut witnessed = Self::default();
        for m in manifests {
            if !m.verify(key) || m.kind == ManifestKind::Export {
                return Err(ManifestBreak::BadSignature { seq: m.seq });
            }
            for h in &m.heads {
                match witnessed.heads.get(&h.tenant_id) {
                    Some((known, digest))
                        if *known > h.seq || (*known == h.seq && *digest != h.digest) =>
                    {
                        return Err(ManifestBreak::Regressed {
                            seq: m.seq,
                            tenant: h.tenant_id.clone(),
                            head_seq: *known,
                        });
                    }
                    _ => {
                        witnessed
                            .heads
                            .insert(h.tenant_id.clone(), (h.seq, h.digest.clone()));
                    }
                }
            }
            if witnessed
                .latest
                .as_ref()
                .is_none_or(|(seq, _)| m.seq > *seq)
            {
                witnessed.latest = Some((m.seq, m.digest.clone()));
            }
        }
        Ok(witnessed)
    }

    /// Whether a store whose manifests are `held` (`seq → digest`, from its latest full one to
    /// `latest_held`) still holds the latest witnessed manifest: the same digest at its number,
    /// or, for one older than `held` reaches back, nothing to say.
    pub fn held_by(
        &self,
        held: &BTreeMap<u64, String>,
        latest_held: u64,
    ) -> Result<(), ManifestBreak> {
        let Some((seq, digest)) = &self.latest else {
            return Ok(());
        };
        let missing = Err(ManifestBreak::Discontinuity { seq: *seq });
        match held.get(seq) {
            Some(d) if d == digest => Ok(()),
            Some(_) => missing,
            None if *seq > latest_held => missing,
            None => Ok(()),
        }
    }
}
