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
use selene_kms_store::backend::{
    DataKey, ErrorKind, RootKey, SharedRoot, StoreError, StoreResult, new_service_secret,
    open_service_secret, opens_service_secret, rewrap_all,
};

use crate::codec::col;
use crate::error::pg;
use crate::sql;

/// Unwrapped data keys by tenant.
#[derive(Default)]
pub(crate) struct DataKeys {
    keys: RwLock<HashMap<TenantId, Arc<DataKey>>>,
}

impl DataKeys {
    pub(crate) fn get(&self, tenant: &TenantId) -> Option<Arc<DataKey>> {
        self.keys.read().ok()?.get(tenant.as_str()).cloned()
    }

    pub(crate) fn put(&self, tenant: TenantId, key: Arc<DataKey>) {
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
pub(crate) async fn service_secret(
    client: &impl GenericClient,
    root: &RootKey,
    create: bool,
) -> StoreResult<ServiceSecret> {
    if create {
        let (secret, wrapped) = new_service_secret(root)?;
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
        return Ok(secret);
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
    open_service_secret(root, &wrapped)
}

/// The tenant's data key as stored, unwrapped; `None` if it has none yet.
pub(crate) async fn load_data_key(
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
        .map(|w| root.unwrap_data_key(tenant, &w).map(Arc::new))
        .transpose()
}

/// Whether this node's root key is still the store's (another node may have rotated it).
pub(crate) async fn root_is_current(
    client: &impl GenericClient,
    root: &SharedRoot,
) -> StoreResult<bool> {
    let row = sql::row(client, SERVICE_SECRET, &[], "service secret")
        .await?
        .ok_or_else(|| StoreError::new(ErrorKind::Corrupt, "the service secret is gone"))?;
    let service: Vec<u8> = col(&row, 0, "service secret")?;
    Ok(opens_service_secret(root, &service))
}

/// Rewraps every tenant data key and the service secret under `new_root`, in one transaction;
/// material is not touched. Returns the number of data keys rewrapped. On success this node
/// uses the new key; other nodes must be restarted with it.
pub(crate) async fn rotate_root(
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
    let rows = sql::rows(
        &tx,
        "SELECT tenant_id, wrapped_dek FROM tenants WHERE wrapped_dek IS NOT NULL",
        &[],
        WHAT,
    )
    .await?;
    let stored = rows
        .iter()
        .map(|row| Ok((col::<String>(row, 0, WHAT)?, col::<Vec<u8>>(row, 1, WHAT)?)))
        .collect::<StoreResult<Vec<_>>>()?;
    let rewrapped = root.with(|old| rewrap_all(old, &new_root, &service, stored))?;
    sql::execute(
        &tx,
        "UPDATE meta SET value = $1 WHERE key = 'service_secret'",
        &[&rewrapped.service],
        WHAT,
    )
    .await?;
    let tenants: Vec<&str> = rewrapped
        .data_keys
        .iter()
        .map(|(t, _)| t.as_str())
        .collect();
    let wrapped: Vec<&[u8]> = rewrapped
        .data_keys
        .iter()
        .map(|(_, w)| w.as_slice())
        .collect();
    sql::execute(
        &tx,
        "UPDATE tenants SET wrapped_dek = d.wrapped
         FROM unnest($1::text[], $2::bytea[]) AS d(tenant_id, wrapped)
         WHERE tenants.tenant_id = d.tenant_id",
        &[&tenants, &wrapped],
        WHAT,
    )
    .await?;
    // Readers must not meet keys wrapped under the new root while this node still holds the
    // old one: they wait for the commit and the replacement together.
    root.replace_after(new_root, tx.commit())
        .await
        .map_err(pg(WHAT))?;
    data_keys.clear();
    Ok(u64::try_from(rewrapped.data_keys.len()).unwrap_or(u64::MAX))
}
