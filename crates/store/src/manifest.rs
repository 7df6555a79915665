//! Signing the store's manifests, for every backend alike: the heads of the chains that moved,
//! at least once a second while chains move, once a minute while idle, and when the server
//! stops; each copied to a witness file when one is given.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use selene_kms_core::audit::VerifyingKey;
use selene_kms_core::manifest::{FULL_EVERY, ManifestBreak, Unsigned, Witnessed};
use selene_kms_core::{ChainHead, Manifest, ManifestChain, ManifestKind};

use crate::codec::stored_tenant;
use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::store::Store;

/// While no chain moves, a manifest is still signed this often (milliseconds).
pub const IDLE_MANIFEST_MS: u64 = 60_000;

/// Manifests read per page.
const PAGE: usize = 256;

fn broken(e: &ManifestBreak) -> StoreError {
    StoreError::new(
        ErrorKind::Corrupt,
        format!("the store's manifests do not hold ({e}): run `selene-kms audit verify`"),
    )
}

/// The store's chain of manifests from its latest full one, as far as it holds.
pub struct ReadManifests {
    /// The heads they name.
    pub chain: ManifestChain,
    /// The manifests that hold, in order.
    pub manifests: Vec<Manifest>,
    /// Where they stop holding, if they do.
    pub broken: Option<ManifestBreak>,
}

impl ReadManifests {
    /// All of them, or an error when they do not all hold.
    pub fn holding(self) -> StoreResult<(ManifestChain, Vec<Manifest>)> {
        match self.broken {
            Some(e) => Err(broken(&e)),
            None => Ok((self.chain, self.manifests)),
        }
    }
}

/// Reads the store's chain of manifests from its latest full one, checking each.
pub async fn read_manifests(store: &dyn Store) -> StoreResult<ReadManifests> {
    let key = store.keys().audit_verifying_key();
    let mut read = ReadManifests {
        chain: ManifestChain::default(),
        manifests: Vec::new(),
        broken: None,
    };
    let mut after = store.latest_full_manifest().await?.saturating_sub(1);
    loop {
        let page = store.manifests(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for m in page {
            if let Err(e) = read.chain.push(&m, &key) {
                read.broken = Some(e);
                return Ok(read);
            }
            read.manifests.push(m);
        }
    }
    Ok(read)
}

/// An append-only copy of every manifest, one JSON line each, somewhere the database's writer
/// cannot reach.
struct Witness {
    path: PathBuf,
    file: File,
}

impl Witness {
    fn open(path: &Path) -> StoreResult<Self> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| witness_error(path, &e))?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    fn append(&mut self, manifests: &[Manifest]) -> StoreResult<()> {
        if manifests.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for m in manifests {
            serde_json::to_writer(&mut text, m).map_err(|e| witness_error(&self.path, &e))?;
            text.push(b'\n');
        }
        self.file
            .write_all(&text)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| witness_error(&self.path, &e))
    }
}

fn witness_error(path: &Path, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::new(
        ErrorKind::Unavailable,
        format!("witness file {}: {e}", path.display()),
    )
}

/// Signs the store's manifests. One per serving process; several nodes of one store each run
/// one, and whichever appends a sequence number first wins it.
pub struct Manifester {
    store: Arc<dyn Store>,
    chain: ManifestChain,
    /// This process has signed a full manifest: later ones list only what moved.
    based: bool,
    last_signed_ms: u64,
    witness: Option<Witness>,
}

impl Manifester {
    /// Reads and checks the store's manifests. A store whose manifests do not hold is refused:
    /// signing after them would vouch for whatever was done to it.
    ///
    /// A store with chains but no manifest is refused too: its manifests were removed (a new
    /// chain of them would forget what the old one named), unless it was never signed, which
    /// [`Manifester::first`] is for.
    pub async fn open(store: Arc<dyn Store>, witness: Option<&Path>) -> StoreResult<Self> {
        let signer = Self::unchecked(store, witness).await?;
        // (Any chain will do; the first tick reads every head anyway.)
        if signer.chain.latest_seq() == 0 && !signer.store.audit_tenants().await?.is_empty() {
            return Err(StoreError::new(
                ErrorKind::Corrupt,
                "this store holds audit records but no signed manifest: its manifests were \
                 removed (`selene-kms audit verify --witness-file` shows what else), or it \
                 comes from a build before manifests (run `selene-kms init` on it once)",
            ));
        }
        Ok(signer)
    }

    async fn unchecked(store: Arc<dyn Store>, witness: Option<&Path>) -> StoreResult<Self> {
        let (chain, _) = read_manifests(&*store).await?.holding()?;
        Ok(Self {
            store,
            chain,
            based: false,
            last_signed_ms: 0,
            witness: witness.map(Witness::open).transpose()?,
        })
    }

    /// Signs a store's first manifest, naming every chain it holds, when it has none: for
    /// whoever initialises a store (or adopts one from an earlier build). A no-op otherwise.
    pub async fn first(store: Arc<dyn Store>, now_ms: u64) -> StoreResult<()> {
        let mut signer = Self::unchecked(store, None).await?;
        if signer.chain.latest_seq() == 0 {
            signer.tick(now_ms, true).await?;
        }
        Ok(())
    }

    /// Signs a manifest if one is due at `now_ms`: when chains moved, when none was signed for
    /// a minute, or always with `force` (the server is stopping). Returns the sequence number
    /// signed, if this node signed one.
    pub async fn tick(&mut self, now_ms: u64, force: bool) -> StoreResult<Option<u64>> {
        self.catch_up().await?;
        let (seq, prev) = self.chain.next();
        let full = !self.based || seq % FULL_EVERY == 0;
        let mut heads = self.store.chain_heads(!full).await?;
        if !full {
            // A backend may list more than moved; what is already manifested is left out.
            heads.retain(|h| {
                self.chain
                    .heads()
                    .get(&h.tenant_id)
                    .is_none_or(|(seq, digest)| *seq != h.seq || *digest != h.digest)
            });
        }
        let idle = now_ms.saturating_sub(self.last_signed_ms) >= IDLE_MANIFEST_MS;
        if !full && !force && !idle && heads.is_empty() {
            return Ok(None);
        }
        heads.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        heads.dedup_by(|a, b| a.tenant_id == b.tenant_id);
        // Never vouch for a chain that went back or was rewritten under the store: that is for
        // `audit verify` to name, not for a manifest to hide.
        self.chain
            .admits(seq, &heads, full)
            .map_err(|e| broken(&e))?;
        self.still_holds_what_was_named(&heads).await?;
        let manifest = Unsigned {
            seq,
            kind: if full {
                ManifestKind::Full
            } else {
                ManifestKind::Changes
            },
            at_ms: now_ms,
            tenant_id: None,
            heads,
            prev_digest: prev.to_owned(),
        }
        .sign(self.store.keys());
        if !manifest.verify(&self.store.keys().audit_verifying_key()) {
            return Err(StoreError::new(
                ErrorKind::Corrupt,
                "a manifest about to be signed is malformed",
            ));
        }
        if !self.store.append_manifest(&manifest).await? {
            // Another node took this number; its manifest is read on the next tick.
            return Ok(None);
        }
        self.take(vec![manifest])?;
        self.based = true;
        Ok(Some(seq))
    }

    /// Each chain that moved still holds, at the position the latest manifest named, the
    /// record named there: a chain cut and written anew past its signed head is never signed.
    async fn still_holds_what_was_named(&self, heads: &[ChainHead]) -> StoreResult<()> {
        for head in heads {
            let Some((seq, digest)) = self.chain.heads().get(&head.tenant_id) else {
                continue;
            };
            if head.seq == *seq {
                continue;
            }
            let tenant = stored_tenant(&head.tenant_id)?;
            let named = self
                .store
                .audit_records(&tenant, seq.saturating_sub(1), 1)
                .await?;
            if named
                .first()
                .is_none_or(|r| r.seq != *seq || r.digest != *digest)
            {
                return Err(broken(&ManifestBreak::Regressed {
                    seq: self.chain.next().0,
                    tenant: head.tenant_id.clone(),
                    head_seq: *seq,
                }));
            }
        }
        Ok(())
    }

    /// Takes in the manifests other nodes appended since the last one known here.
    async fn catch_up(&mut self) -> StoreResult<()> {
        loop {
            let page = self.store.manifests(self.chain.latest_seq(), PAGE).await?;
            if page.is_empty() {
                return Ok(());
            }
            self.take(page)?;
        }
    }

    fn take(&mut self, manifests: Vec<Manifest>) -> StoreResult<()> {
        let key = self.store.keys().audit_verifying_key();
        for m in &manifests {
            self.chain.push(m, &key).map_err(|e| broken(&e))?;
            self.last_signed_ms = self.last_signed_ms.max(m.at_ms);
        }
        match &mut self.witness {
            Some(w) => w.append(&manifests),
            None => Ok(()),
        }
    }
}

/// The manifests of a witness file (`serve --witness-file`), one JSON line each.
pub fn read_witness(path: &Path) -> Result<Vec<Manifest>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|_| format!("{} line {}: not a manifest", path.display(), i + 1))
        })
        .collect()
}

/// What a witness names, each manifest's signature checked under `key`.
pub fn witnessed(witness: &[Manifest], key: &VerifyingKey) -> Result<Witnessed, String> {
    Witnessed::read(witness, key).map_err(|e| format!("the witness file does not hold: {e}"))
}
