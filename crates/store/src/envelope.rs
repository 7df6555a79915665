//! Envelope encryption at rest.
//!
//! A 256-bit root key (from a 0600 key file or the environment) wraps one random data key per
//! tenant and the store's service secret. Material is sealed with AES-256-GCM under the tenant's
//! data key; the associated data binds tenant, secret and version, so a row moved to another
//! secret, version or tenant fails to open. Rotating the root key rewraps data keys only.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use selene_kms_core::{
    MaterialGrant, Purpose, SecretMaterial, SecretName, ServiceSecret, TenantId,
};
use zeroize::Zeroizing;

use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::model::IdempotencyScope;

const NONCE_LEN: usize = 12;
/// Environment variable that may carry the root key (64 hex characters).
pub const ROOT_KEY_ENV: &str = "SELENE_KMS_ROOT_KEY";

fn random<const N: usize>() -> StoreResult<Zeroizing<[u8; N]>> {
    let mut out = Zeroizing::new([0u8; N]);
    getrandom::fill(out.as_mut())
        .map_err(|_| StoreError::new(ErrorKind::Unavailable, "the OS random source failed"))?;
    Ok(out)
}

/// How far a revocation moves the stored authentication epoch: 1 plus a random 32-bit number.
/// Whoever can write the database could set the counter back by one before a revocation, so
/// that the revocation would land on an epoch a node already remembers authentications at; a
/// random step makes the epoch after a revocation one nobody could have set up. (2^31
/// revocations still fit a 63-bit counter.)
pub fn revocation_step() -> StoreResult<i64> {
    let bytes = random::<4>()?;
    Ok(1 + i64::from(u32::from_le_bytes(*bytes)))
}

/// Fresh random 32 bytes (data keys, the service secret, root keys).
pub(crate) fn random_key() -> StoreResult<Zeroizing<[u8; 32]>> {
    random::<32>()
}

fn seal(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> StoreResult<Vec<u8>> {
    let nonce = random::<NONCE_LEN>()?;
    let ct = cipher
        .encrypt(
            (&*nonce).into(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| StoreError::new(ErrorKind::Invalid, "encryption failed"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(nonce.as_ref());
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> StoreResult<Zeroizing<Vec<u8>>> {
    let corrupt = || StoreError::new(ErrorKind::Corrupt, "sealed data failed authentication");
    if sealed.len() < NONCE_LEN {
        return Err(corrupt());
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| corrupt())?;
    cipher
        .decrypt((&nonce).into(), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| corrupt())
}

/// The root key. No `Debug`, `Clone` or `Serialize`; zeroized on drop.
pub struct RootKey {
    cipher: Aes256Gcm,
}

impl RootKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    /// A new random key, with its hex form for the key file.
    pub fn generate() -> StoreResult<(Self, Zeroizing<String>)> {
        let bytes = random_key()?;
        Ok((
            Self::from_bytes(&bytes),
            Zeroizing::new(hex::encode(*bytes)),
        ))
    }

    /// Parses 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> StoreResult<Self> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut()).map_err(|_| {
            StoreError::new(ErrorKind::Invalid, "the root key is not 64 hex characters")
        })?;
        Ok(Self::from_bytes(&bytes))
    }

    /// Reads a key file, refusing one that others can read.
    pub fn load_file(path: &Path) -> StoreResult<Self> {
        let unavailable =
            |what: &str| StoreError::new(ErrorKind::Unavailable, format!("root key file: {what}"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|_| unavailable("cannot be read"))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(StoreError::new(
                    ErrorKind::Invalid,
                    "root key file: permissions must be 0600 (owner only)",
                ));
            }
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|_| unavailable("cannot be read"))?,
        );
        Self::from_hex(&text)
    }

    /// Creates a new key file with mode 0600; fails if the file exists.
    pub fn create_file(path: &Path) -> StoreResult<Self> {
        let (key, hex) = Self::generate()?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|_| {
            StoreError::new(
                ErrorKind::AlreadyExists,
                "root key file exists or cannot be created",
            )
        })?;
        file.write_all(hex.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(|_| StoreError::new(ErrorKind::Unavailable, "root key file: write failed"))?;
        Ok(key)
    }

    /// The key from [`ROOT_KEY_ENV`], if set.
    pub fn from_env() -> StoreResult<Option<Self>> {
        match std::env::var(ROOT_KEY_ENV) {
            Ok(text) => Self::from_hex(&Zeroizing::new(text)).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Wraps a key under this root key, bound to `label`.
    pub(crate) fn wrap(&self, label: &[u8], key: &[u8; 32]) -> StoreResult<Vec<u8>> {
        seal(&self.cipher, label, key)
    }

    /// Unwraps a key wrapped by [`RootKey::wrap`] with the same label.
    pub(crate) fn unwrap(&self, label: &[u8], wrapped: &[u8]) -> StoreResult<Zeroizing<[u8; 32]>> {
        let plain = open(&self.cipher, label, wrapped).map_err(|_| {
            StoreError::new(
                ErrorKind::Corrupt,
                "a wrapped key does not open: wrong root key, or the store was altered",
            )
        })?;
        let mut out = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return Err(StoreError::new(
                ErrorKind::Corrupt,
                "a wrapped key has the wrong length",
            ));
        }
        out.copy_from_slice(&plain);
        Ok(out)
    }

    /// A new random data key for `tenant`, and its wrapping for storage.
    pub(crate) fn new_data_key(&self, tenant: &TenantId) -> StoreResult<(DataKey, Vec<u8>)> {
        let bytes = random_key()?;
        let wrapped = self.wrap(&dek_label(tenant), &bytes)?;
        Ok((DataKey::from_bytes(&bytes), wrapped))
    }

    /// Opens `tenant`'s stored data key.
    pub(crate) fn unwrap_data_key(
        &self,
        tenant: &TenantId,
        wrapped: &[u8],
    ) -> StoreResult<DataKey> {
        Ok(DataKey::from_bytes(
            &*self.unwrap(&dek_label(tenant), wrapped)?,
        ))
    }

    /// Rewraps a stored key (a data key or the service secret, by `label`) from this root key
    /// to `new`, for a root-key rotation.
    pub(crate) fn rewrap(
        &self,
        new: &RootKey,
        label: &[u8],
        wrapped: &[u8],
    ) -> StoreResult<Vec<u8>> {
        new.wrap(label, &*self.unwrap(label, wrapped)?)
    }
}

/// Every key a root-key rotation rewrites, wrapped under the new root.
pub struct Rewrapped {
    /// The service secret.
    pub service: Vec<u8>,
    /// Each tenant's data key.
    pub data_keys: Vec<(TenantId, Vec<u8>)>,
}

/// Rewraps the stored service secret and tenant data keys (tenant ids as stored) from `old`
/// to `new`; material is not touched. Either backend then stores the result in one transaction.
pub fn rewrap_all(
    old: &RootKey,
    new: &RootKey,
    service: &[u8],
    data_keys: Vec<(String, Vec<u8>)>,
) -> StoreResult<Rewrapped> {
    let data_keys = data_keys
        .into_iter()
        .map(|(tenant, wrapped)| {
            // The system chain has a data key too once a principal change stored an answer.
            let tenant = crate::codec::stored_tenant(&tenant)?;
            let wrapped = old.rewrap(new, &dek_label(&tenant), &wrapped)?;
            Ok((tenant, wrapped))
        })
        .collect::<StoreResult<_>>()?;
    Ok(Rewrapped {
        service: old.rewrap(new, SERVICE_SECRET_LABEL, service)?,
        data_keys,
    })
}

/// The root keys of a running store: the current one, and while a rotation commits without
/// holding readers back (PostgreSQL's commit is awaited), the incoming one.
pub struct RootKeys {
    current: RootKey,
    incoming: Option<RootKey>,
}

/// The root key of a running store, shared by its writer and readers, replaced after a rotation.
/// Both keys sit behind one lock, so a reader always sees the current key together with the
/// incoming one (or the new key alone once installed), never a moment with neither.
#[derive(Clone)]
pub struct SharedRoot(Arc<RwLock<RootKeys>>);

impl SharedRoot {
    /// Shares `root` as the current key.
    pub fn new(root: RootKey) -> Self {
        Self(Arc::new(RwLock::new(RootKeys {
            current: root,
            incoming: None,
        })))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, RootKeys> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, RootKeys> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Unwraps a tenant's data key with the current root key, or with the incoming one while
    /// a rotation is committing.
    pub fn unwrap_data_key(&self, tenant: &TenantId, wrapped: &[u8]) -> StoreResult<DataKey> {
        let keys = self.read();
        keys.current
            .unwrap_data_key(tenant, wrapped)
            .or_else(|e| match &keys.incoming {
                Some(next) => next.unwrap_data_key(tenant, wrapped),
                None => Err(e),
            })
    }

    /// Awaits `commit` with `new` as the incoming key, and installs it if the commit succeeded.
    /// If the commit fails, or the future is dropped before it settles, the incoming key is
    /// forgotten and the current one stays.
    pub async fn replace_after<E>(
        &self,
        new: RootKey,
        commit: impl Future<Output = Result<(), E>>,
    ) -> Result<(), E> {
        /// Forgets the incoming key unless it was installed.
        struct Incoming<'a>(&'a SharedRoot);
        impl Drop for Incoming<'_> {
            fn drop(&mut self) {
                self.0.write().incoming = None;
            }
        }
        self.write().incoming = Some(new);
        let incoming = Incoming(self);
        let outcome = commit.await;
        if outcome.is_ok() {
            let mut keys = self.write();
            if let Some(new) = keys.incoming.take() {
                keys.current = new;
            }
        }
        drop(incoming);
        outcome
    }

    /// Runs `f` with the current root key. The key is replaced in one move, so a panic elsewhere
    /// cannot leave it half-written: a poisoned lock still holds a whole key, and is used.
    pub fn with<T>(&self, f: impl FnOnce(&RootKey) -> T) -> T {
        f(&self.read().current)
    }

    /// Holds every user of the key back until the guard drops: a backend's tests use it to make
    /// jobs queue up behind a writer that is waiting for the key.
    pub fn hold(&self) -> std::sync::RwLockWriteGuard<'_, RootKeys> {
        self.write()
    }

    /// Runs `commit` with every reader of the key held back, and installs `new` if it
    /// succeeded: no reader sees the rotation's rewrapped keys with the old root.
    pub fn replace_if<E>(
        &self,
        new: RootKey,
        commit: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let mut keys = self.write();
        commit()?;
        keys.current = new;
        Ok(())
    }
}

/// Label binding a tenant's wrapped data key to its tenant.
pub(crate) fn dek_label(tenant: &TenantId) -> Vec<u8> {
    let mut l = b"selene-kms/tenant-data-key/v1/".to_vec();
    l.extend_from_slice(tenant.as_str().as_bytes());
    l
}

/// A new store's service secret, and its wrapping under `root` for storage.
pub fn new_service_secret(root: &RootKey) -> StoreResult<(ServiceSecret, Vec<u8>)> {
    let secret = random_key()?;
    let wrapped = root.wrap(SERVICE_SECRET_LABEL, &secret)?;
    Ok((ServiceSecret::from_bytes(*secret), wrapped))
}

/// The stored service secret, unwrapped with `root` (`Corrupt` if it is not the store's key).
pub fn open_service_secret(root: &RootKey, wrapped: &[u8]) -> StoreResult<ServiceSecret> {
    Ok(ServiceSecret::from_bytes(
        *root.unwrap(SERVICE_SECRET_LABEL, wrapped)?,
    ))
}

/// Whether the current root key opens the stored service secret: whether it is still the
/// store's root key (another node may have rotated it).
pub fn opens_service_secret(root: &SharedRoot, wrapped: &[u8]) -> bool {
    root.with(|r| r.unwrap(SERVICE_SECRET_LABEL, wrapped).is_ok())
}

/// Label of the wrapped service secret.
pub(crate) const SERVICE_SECRET_LABEL: &[u8] = b"selene-kms/service-secret/v1";

/// A tenant's data key. No `Debug` or `Clone`; the cipher zeroizes its key schedule on drop.
pub struct DataKey {
    cipher: Aes256Gcm,
}

/// Which slot of a secret sealed material belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A committed version.
    Version(u64),
    /// Material staged for the next rotation.
    Staged,
}

/// Associated data of material: it opens only in the slot of the secret it was sealed for, and
/// only under the purpose it was sealed for, so a key whose stored purpose was changed to
/// `credential` (to redeem it) opens nothing. A credential's data is as before purposes existed.
fn material_aad(tenant: &TenantId, name: &SecretName, slot: Slot, purpose: Purpose) -> Vec<u8> {
    let mut aad = if purpose.is_key() {
        b"selene-kms/key-material/v1".to_vec()
    } else {
        b"selene-kms/material/v1".to_vec()
    };
    for part in [tenant.as_str(), name.as_str()] {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    match slot {
        Slot::Version(v) => {
            aad.push(1);
            aad.extend_from_slice(&v.to_be_bytes());
        }
        Slot::Staged => aad.push(2),
    }
    if purpose.is_key() {
        aad.extend_from_slice(purpose.name().as_bytes());
    }
    aad
}

/// Associated data of a stored answer: it opens only under the idempotency key (tenant, caller,
/// key) and the request fingerprint it was stored for, so a row moved to another key or request
/// does not open.
fn answer_aad(scope: &IdempotencyScope, fingerprint: &[u8; 32]) -> Vec<u8> {
    let mut aad = b"selene-kms/answer/v1".to_vec();
    for part in [scope.tenant.as_str(), &scope.caller, &scope.key] {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad.extend_from_slice(fingerprint);
    aad
}

/// Associated data of a decision's kept inputs: they open only beside the record they were
/// kept for (its place and its digest, so not beside a record written anew at that place).
fn inputs_aad(tenant: &TenantId, seq: u64, digest: &str) -> Vec<u8> {
    let mut aad = b"selene-kms/decision-inputs/v1".to_vec();
    for part in [tenant.as_str(), digest] {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad.extend_from_slice(&seq.to_be_bytes());
    aad
}

impl DataKey {
    /// Seals what the decision recorded at `(tenant, seq)` was made from: a request may name a
    /// handle or credential ref, which must never rest in clear.
    pub(crate) fn seal_inputs(
        &self,
        tenant: &TenantId,
        seq: u64,
        digest: &str,
        inputs: &[u8],
    ) -> StoreResult<Vec<u8>> {
        seal(&self.cipher, &inputs_aad(tenant, seq, digest), inputs)
    }

    /// Opens inputs sealed beside the record at `(tenant, seq)` with `digest`.
    pub(crate) fn open_inputs(
        &self,
        tenant: &TenantId,
        seq: u64,
        digest: &str,
        sealed: &[u8],
    ) -> StoreResult<Zeroizing<Vec<u8>>> {
        open(&self.cipher, &inputs_aad(tenant, seq, digest), sealed)
    }

    /// Seals the answer kept under an idempotency key: it may hold a redeemable handle or
    /// credential ref, which must never rest in clear.
    pub(crate) fn seal_answer(
        &self,
        scope: &IdempotencyScope,
        fingerprint: &[u8; 32],
        answer: &[u8],
    ) -> StoreResult<Vec<u8>> {
        seal(&self.cipher, &answer_aad(scope, fingerprint), answer)
    }

    /// Opens a stored answer sealed for the same idempotency key and request fingerprint.
    pub fn open_answer(
        &self,
        scope: &IdempotencyScope,
        fingerprint: &[u8; 32],
        sealed: &[u8],
    ) -> StoreResult<Arc<[u8]>> {
        let plain = open(&self.cipher, &answer_aad(scope, fingerprint), sealed)?;
        Ok(Arc::from(plain.as_slice()))
    }

    /// Only unwrapping makes one: a data key never exists outside its root key's wrapping.
    fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    /// Seals material for one slot of one secret of `purpose`.
    pub(crate) fn seal(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        slot: Slot,
        purpose: Purpose,
        material: &SecretMaterial,
    ) -> StoreResult<Vec<u8>> {
        seal(
            &self.cipher,
            &material_aad(tenant, name, slot, purpose),
            material.expose(),
        )
    }

    /// Opens the version a redemption granted: the only way out of the store for material,
    /// and it takes the grant that only redemption's checks make. The caller has read the
    /// sealed bytes stored for the grant's tenant, secret and version.
    pub fn open_granted(&self, grant: MaterialGrant, sealed: &[u8]) -> StoreResult<SecretMaterial> {
        let slot = Slot::Version(grant.version());
        self.open(
            grant.tenant(),
            grant.secret_name(),
            slot,
            grant.purpose(),
            sealed,
        )
    }

    /// Opens material sealed for exactly this slot and purpose.
    pub(crate) fn open(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        slot: Slot,
        purpose: Purpose,
        sealed: &[u8],
    ) -> StoreResult<SecretMaterial> {
        let aad = material_aad(tenant, name, slot, purpose);
        let plain = open(&self.cipher, &aad, sealed)?;
        Ok(SecretMaterial::from_slice(&plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::try_from(s).expect("valid")
    }
    fn n(s: &str) -> SecretName {
        SecretName::try_from(s).expect("valid")
    }

    #[test]
    fn sealed_material_opens_only_in_its_own_slot() {
        let dek = DataKey::from_bytes(&[3u8; 32]);
        let m = SecretMaterial::from_slice(b"value");
        let credential = Purpose::Credential;
        let sealed = dek
            .seal(&t("a"), &n("x"), Slot::Version(2), credential, &m)
            .expect("seals");
        let opened = dek
            .open(&t("a"), &n("x"), Slot::Version(2), credential, &sealed)
            .expect("opens");
        assert_eq!(opened.expose(), b"value");
        for (tenant, name, slot) in [
            ("b", "x", Slot::Version(2)),
            ("a", "y", Slot::Version(2)),
            ("a", "x", Slot::Version(3)),
            ("a", "x", Slot::Staged),
        ] {
            let reopened = dek.open(&t(tenant), &n(name), slot, credential, &sealed);
            assert!(reopened.is_err());
        }
        assert!(!sealed.windows(5).any(|w| w == b"value"));
    }

    #[test]
    fn a_key_opens_only_under_the_purpose_it_was_sealed_for() {
        let dek = DataKey::from_bytes(&[3u8; 32]);
        let key = SecretMaterial::from_slice(&[7u8; 32]);
        let slot = Slot::Version(1);
        for sealed_as in Purpose::ALL {
            let sealed = dek
                .seal(&t("a"), &n("k"), slot, sealed_as, &key)
                .expect("seals");
            for opened_as in Purpose::ALL {
                let opened = dek.open(&t("a"), &n("k"), slot, opened_as, &sealed);
                assert_eq!(opened.is_ok(), opened_as == sealed_as, "{sealed_as:?}");
            }
        }
    }

    #[test]
    fn wrapped_keys_need_the_same_root_key_and_label() {
        let root = RootKey::from_bytes(&[1u8; 32]);
        let wrapped = root.wrap(b"label", &[9u8; 32]).expect("wraps");
        assert_eq!(
            *root.unwrap(b"label", &wrapped).expect("unwraps"),
            [9u8; 32]
        );
        assert!(root.unwrap(b"other", &wrapped).is_err());
        assert!(
            RootKey::from_bytes(&[2u8; 32])
                .unwrap(b"label", &wrapped)
                .is_err()
        );
    }

    #[test]
    fn a_rewrapped_key_opens_under_the_new_root_only() {
        let (old, new) = (RootKey::from_bytes(&[1; 32]), RootKey::from_bytes(&[2; 32]));
        let tenant = t("acme");
        let (key, wrapped) = old.new_data_key(&tenant).expect("new key");
        let sealed = key
            .seal(
                &tenant,
                &n("db/pass"),
                Slot::Version(1),
                Purpose::Credential,
                &SecretMaterial::from_slice(b"v"),
            )
            .expect("seals");
        let rewrapped = old
            .rewrap(&new, &dek_label(&tenant), &wrapped)
            .expect("rewraps");
        assert!(old.unwrap_data_key(&tenant, &rewrapped).is_err());
        assert!(new.unwrap_data_key(&t("other"), &rewrapped).is_err());
        let reopened = new.unwrap_data_key(&tenant, &rewrapped).expect("opens");
        assert!(
            reopened
                .open(
                    &tenant,
                    &n("db/pass"),
                    Slot::Version(1),
                    Purpose::Credential,
                    &sealed,
                )
                .is_ok(),
            "the data key itself is unchanged"
        );
    }

    #[test]
    fn a_poisoned_root_lock_still_serves_and_takes_a_rotated_key() {
        let shared = SharedRoot::new(RootKey::from_bytes(&[1; 32]));
        let lock = shared.0.clone();
        let poisoner = std::thread::spawn(move || {
            let _held = lock.write();
            std::panic::resume_unwind(Box::new("poisons the lock"));
        });
        assert!(poisoner.join().is_err());
        assert!(shared.0.is_poisoned());
        let wrapped = shared
            .with(|r| r.wrap(b"label", &[9; 32]))
            .expect("the old key still serves");
        shared
            .replace_if(RootKey::from_bytes(&[2; 32]), || Ok::<(), ()>(()))
            .expect("replaced");
        assert!(
            shared.with(|r| r.unwrap(b"label", &wrapped)).is_err(),
            "the rotated key is the one in use"
        );
    }

    #[tokio::test]
    async fn an_incoming_root_opens_data_keys_until_its_commit_settles() {
        let tenant = t("acme");
        let shared = SharedRoot::new(RootKey::from_bytes(&[1; 32]));
        let new = RootKey::from_bytes(&[2; 32]);
        let (_, wrapped) = new.new_data_key(&tenant).expect("key");
        let (committed, commit) = tokio::sync::oneshot::channel::<Result<(), ()>>();
        let rotation = {
            let shared = shared.clone();
            tokio::spawn(async move {
                shared
                    .replace_after(new, async { commit.await.unwrap_or(Err(())) })
                    .await
            })
        };
        // While the commit is pending, a key wrapped under the incoming root opens.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while shared.unwrap_data_key(&tenant, &wrapped).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the incoming key never served"
            );
            tokio::task::yield_now().await;
        }
        committed.send(Ok(())).expect("send");
        rotation.await.expect("task").expect("rotated");
        assert!(
            shared
                .with(|r| r.unwrap_data_key(&tenant, &wrapped))
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_failed_rotation_commit_keeps_the_old_root() {
        let tenant = t("acme");
        let shared = SharedRoot::new(RootKey::from_bytes(&[1; 32]));
        let new = RootKey::from_bytes(&[2; 32]);
        let (_, wrapped) = new.new_data_key(&tenant).expect("key");
        let failed = shared.replace_after(new, async { Err::<(), ()>(()) }).await;
        assert!(failed.is_err());
        assert!(
            shared.unwrap_data_key(&tenant, &wrapped).is_err(),
            "the new key is gone"
        );
    }

    #[tokio::test]
    async fn a_rotation_dropped_before_its_commit_settles_forgets_the_new_root() {
        let tenant = t("acme");
        let shared = SharedRoot::new(RootKey::from_bytes(&[1; 32]));
        let new = RootKey::from_bytes(&[2; 32]);
        let (_, wrapped) = new.new_data_key(&tenant).expect("key");
        let pending = shared.replace_after(new, std::future::pending::<Result<(), ()>>());
        // Polled once (the incoming key is set), then dropped.
        assert!(
            tokio::time::timeout(std::time::Duration::ZERO, pending)
                .await
                .is_err()
        );
        assert!(
            shared.unwrap_data_key(&tenant, &wrapped).is_err(),
            "the new key is gone"
        );
    }

    #[test]
    fn key_files_are_created_owner_only_and_refused_otherwise() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("root.key");
        RootKey::create_file(&path).expect("creates");
        assert!(RootKey::create_file(&path).is_err(), "never overwrites");
        assert!(RootKey::load_file(&path).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(RootKey::load_file(&path).is_err());
        }
    }
}
