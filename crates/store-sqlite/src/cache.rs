//! The read cache of the embedded store: policies, secret snapshots and unwrapped data keys.
//!
//! Only valid because one process owns the file (the data directory is locked). The writer
//! publishes new snapshots after each durable commit; readers fill misses from the database and
//! may only insert a snapshot that is newer than what is there, so a slow reader can never put
//! back a state the writer has already moved past.

use selene_kms_core::{SecretName, SecretSnapshot, TenantId};

use crate::moved::MovedHeads;
use selene_kms_store::backend::{DataKey, StoredPolicy};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Default)]
struct TenantEntry {
    policy: Option<StoredPolicy>,
    secrets: HashMap<SecretName, Arc<SecretSnapshot>>,
    data_key: Option<Arc<DataKey>>,
}

/// Cached state of every tenant touched since start.
#[derive(Default)]
pub(crate) struct Cache {
    tenants: RwLock<HashMap<TenantId, TenantEntry>>,
    /// The chains that moved since the latest manifest.
    pub(crate) moved: MovedHeads,
}

impl Cache {
    fn read<T>(&self, tenant: &TenantId, f: impl FnOnce(&TenantEntry) -> Option<T>) -> Option<T> {
        let map = self.tenants.read().ok()?;
        map.get(tenant.as_str()).and_then(f)
    }

    fn write<T>(&self, tenant: &TenantId, f: impl FnOnce(&mut TenantEntry) -> T) -> Option<T> {
        let mut map = self.tenants.write().ok()?;
        Some(f(map.entry(tenant.clone()).or_default()))
    }

    pub(crate) fn policy(&self, tenant: &TenantId) -> Option<StoredPolicy> {
        self.read(tenant, |t| t.policy.clone())
    }

    /// Inserts a policy read from the database unless a newer one is cached; returns the one
    /// that is cached afterwards.
    pub(crate) fn offer_policy(&self, tenant: &TenantId, p: StoredPolicy) -> StoredPolicy {
        self.write(tenant, |t| match &t.policy {
            Some(current) if current.version >= p.version => current.clone(),
            _ => {
                t.policy = Some(p.clone());
                p.clone()
            }
        })
        .unwrap_or(p)
    }

    pub(crate) fn secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> Option<Arc<SecretSnapshot>> {
        self.read(tenant, |t| t.secrets.get(name.as_str()).cloned())
    }

    /// Inserts a snapshot unless a newer one is cached; returns the cached one afterwards.
    pub(crate) fn offer_secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
        s: Arc<SecretSnapshot>,
    ) -> Arc<SecretSnapshot> {
        self.write(tenant, |t| match t.secrets.get(name.as_str()) {
            Some(current) if current.state_version >= s.state_version => current.clone(),
            _ => {
                t.secrets.insert(name.clone(), s.clone());
                s.clone()
            }
        })
        .unwrap_or(s)
    }

    pub(crate) fn data_key(&self, tenant: &TenantId) -> Option<Arc<DataKey>> {
        self.read(tenant, |t| t.data_key.clone())
    }

    pub(crate) fn put_data_key(&self, tenant: &TenantId, key: Arc<DataKey>) {
        self.write(tenant, |t| t.data_key = Some(key));
    }

    /// Drops every cached data key (after a root-key rotation they are rewrapped; the cached
    /// plaintext keys stay valid, but are reloaded to prove the new wrapping opens).
    pub(crate) fn forget_data_keys(&self) {
        if let Ok(mut map) = self.tenants.write() {
            for t in map.values_mut() {
                t.data_key = None;
            }
        }
    }
}
