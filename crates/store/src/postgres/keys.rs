//! Envelope keys in PostgreSQL: the wrapped service secret, per-tenant data keys, and root-key
//! rotation, safe with several nodes sharing the database.
//!
//! Unwrapped data keys are cached: a tenant's data key never changes once created (root-key
//! rotation rewraps it, the plaintext key stays the same). Creating one happens under the
//! tenant's row lock, so two nodes cannot both create one. Root-key rotation locks the `tenants`
//! table against writers (`SHARE ROW EXCLUSIVE`, which every commit batch's first statement
//! conflicts with) so no data key can be created or rewrapped beside it, and a node still holding
//! the old root key refuses to create data keys afterwards instead of wrapping one that the
//! other nodes could no longer open.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use deadpool_postgres::{Client, GenericClient};
use selene_kms_core::{ServiceSecret, TenantId};

use super::codec::col;
use super::error::pg;
use super::sql;
use crate::envelope::{DataKey, RootKey, SERVICE_SECRET_LABEL, SharedRoot, dek_label, random_key};
use crate::error::{ErrorKind, StoreError, StoreResult};

/// Unwrapped data keys by tenant.
#[derive(Default)]
pub(super) struct DataKeys {
    keys: RwLock<HashMap<TenantId, Arc<DataKey>>>,
}

impl DataKeys {
    pub(super) fn get(&self, tenant: &TenantId) -> Option<Arc<DataKey>> {
        self.keys.read().ok()?.get(tenant.as_str()).cloned()
    }

    pub(super) fn put(&self, tenant: TenantId, key: Arc<DataKey>) {
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(tenant, key);
        }
    }

    /// Forgets every key, so that the next use proves the new wrapping opens.
    fn clear(&self) {
        if let Ok(mut keys) = self.keys.write() {
            keys.clear();
        }
    }
}

const SERVICE_SECRET: &str = "SELECT value FROM meta WHERE key = 'service_secret'";

/// Reads the service secret; with `create`, initialises a new store instead and refuses a
/// database that already holds one.
pub(super) async fn service_secret(
    client: &impl GenericClient,
    root: &RootKey,
    create: bool,
) -> StoreResult<ServiceSecret> {
    if create {
        let secret = random_key()?;
        let wrapped = root.wrap(SERVICE_SECRET_LABEL, &secret)?;
        let inserted = sql::execute(
            client,
            "INSERT INTO meta (key, value) VALUES ('service_secret', $1) ON CONFLICT DO NOTHING",
            &[&wrapped],
            "service secret",
        )
        .await?;
        if inserted == 0 {
            return Err(StoreError::new(
                ErrorKind::AlreadyExists,
                "the database already holds an initialised store",
            ));
        }
        return Ok(ServiceSecret::from_bytes(*secret));
    }
    let row = sql::row(client, SERVICE_SECRET, &[], "service secret")
        .await?
        .ok_or_else(|| {
            StoreError::new(
                ErrorKind::NotFound,
                "the store is not initialised: run `selene-kms init`",
            )
        })?;
    let wrapped: Vec<u8> = col(&row, 0, "service secret")?;
    Ok(ServiceSecret::from_bytes(
        *root.unwrap(SERVICE_SECRET_LABEL, &wrapped)?,
    ))
}

/// The tenant's data key as stored, unwrapped; `None` if it has none yet.
pub(super) async fn load_data_key(
    client: &impl GenericClient,
    root: &SharedRoot,
    tenant: &TenantId,
) -> StoreResult<Option<Arc<DataKey>>> {
    let row = sql::row(
        client,
        "SELECT wrapped_dek FROM tenants WHERE tenant_id = $1",
        &[&tenant.as_str()],
        "data key",
    )
    .await?;
    let wrapped: Option<Vec<u8>> = match &row {
        Some(row) => col(row, 0, "data key")?,
        None => None,
    };
    wrapped
        .map(|w| root.with(|r| r.unwrap_data_key(tenant, &w)).map(Arc::new))
        .transpose()
}

/// Creates the tenant's data key. The caller holds the tenant's row lock and has seen no key.
pub(super) async fn create_data_key(
    client: &impl GenericClient,
    root: &SharedRoot,
    tenant: &TenantId,
) -> StoreResult<Arc<DataKey>> {
    // Is this node's root key still the store's? (Another node may have rotated it.)
    let row = sql::row(client, SERVICE_SECRET, &[], "service secret")
        .await?
        .ok_or_else(|| StoreError::new(ErrorKind::Corrupt, "the service secret is gone"))?;
    let service: Vec<u8> = col(&row, 0, "service secret")?;
    let (key, wrapped) = root.with(|r| {
        r.unwrap(SERVICE_SECRET_LABEL, &service).map_err(|_| {
            StoreError::new(
                ErrorKind::Unavailable,
                "the root key was rotated: restart this node with the new key",
            )
        })?;
        r.new_data_key(tenant)
    })?;
    let updated = sql::execute(
        client,
        "UPDATE tenants SET wrapped_dek = $2 WHERE tenant_id = $1 AND wrapped_dek IS NULL",
        &[&tenant.as_str(), &wrapped],
        "data key",
    )
    .await?;
    if updated != 1 {
        return Err(StoreError::new(
            ErrorKind::StateConflict,
            "the tenant's data key changed beside its row lock",
        ));
    }
    Ok(Arc::new(key))
}

/// Rewraps every tenant data key and the service secret under `new_root`, in one transaction;
/// material is not touched. Returns the number of data keys rewrapped. On success this node
/// uses the new key; other nodes must be restarted with it.
pub(super) async fn rotate_root(
    client: &mut Client,
    root: &SharedRoot,
    data_keys: &DataKeys,
    new_root: RootKey,
) -> StoreResult<u64> {
    const WHAT: &str = "root rotation";
    let tx = client.transaction().await.map_err(pg(WHAT))?;
    tx.batch_execute("LOCK TABLE tenants IN SHARE ROW EXCLUSIVE MODE")
        .await
        .map_err(pg(WHAT))?;
    let row = sql::row(
        &tx,
        "SELECT value FROM meta WHERE key = 'service_secret' FOR UPDATE",
        &[],
        WHAT,
    )
    .await?
    .ok_or_else(|| StoreError::new(ErrorKind::Corrupt, "the service secret is gone"))?;
    let service = col::<Vec<u8>>(&row, 0, WHAT)?;
    let service = root.with(|r| r.rewrap(&new_root, SERVICE_SECRET_LABEL, &service))?;
    sql::execute(
        &tx,
        "UPDATE meta SET value = $1 WHERE key = 'service_secret'",
        &[&service],
        WHAT,
    )
    .await?;
    let rows = sql::rows(
        &tx,
        "SELECT tenant_id, wrapped_dek FROM tenants WHERE wrapped_dek IS NOT NULL",
        &[],
        WHAT,
    )
    .await?;
    let mut rewrapped = 0u64;
    for row in rows {
        let tenant = TenantId::try_from(col::<String>(&row, 0, WHAT)?)
            .map_err(|_| StoreError::new(ErrorKind::Corrupt, "a tenant id is invalid"))?;
        let wrapped = col::<Vec<u8>>(&row, 1, WHAT)?;
        let wrapped = root.with(|r| r.rewrap(&new_root, &dek_label(&tenant), &wrapped))?;
        sql::execute(
            &tx,
            "UPDATE tenants SET wrapped_dek = $2 WHERE tenant_id = $1",
            &[&tenant.as_str(), &wrapped],
            WHAT,
        )
        .await?;
        rewrapped += 1;
    }
    tx.commit().await.map_err(pg(WHAT))?;
    root.replace(new_root);
    data_keys.clear();
    Ok(rewrapped)
}
