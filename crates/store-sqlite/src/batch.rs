//! The embedded store's two halves of a commit around the shared algorithm
//! ([`crate::commit`]): reading the committed state a batch needs, and writing the rows it
//! decided. Both run inside the writer's transaction, which no other connection can write beside.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};
use selene_kms_core::{SecretSnapshot, ServiceKeys, TenantId};
use selene_kms_store::backend::{
    Committed, ErrorKind, Head, Item, Needs, SecretKey, SharedRoot, StoreError, StoreResult,
    StoredSecret, Writes, from_db, head_of, stored_record, to_db, to_db_saturating,
};

use crate::cache::Cache;
use crate::{db_err, load_snapshot, read_data_key};

/// What the open transaction holds beyond the cache: the chain heads this writer has committed
/// or written in earlier rounds, and the snapshots of secrets earlier rounds changed (the cache
/// learns of those only after the commit).
#[derive(Clone, Default)]
pub(crate) struct Pending {
    pub(crate) heads: HashMap<TenantId, Head>,
    pub(crate) snapshots: HashMap<SecretKey, Arc<SecretSnapshot>>,
}

impl Pending {
    /// Takes in what a round wrote.
    pub(crate) fn extend(&mut self, writes: &Writes) {
        let heads = writes.heads.iter().map(|(t, h)| (t.clone(), h.clone()));
        self.heads.extend(heads);
        let snapshots = writes.snapshots.iter().map(|(k, s)| (k.clone(), s.clone()));
        self.snapshots.extend(snapshots);
    }
}

/// Reads what `needs` asks for, as the open transaction sees it.
pub(crate) fn read_committed(
    conn: &Connection,
    keys: &ServiceKeys,
    needs: &Needs,
    cache: &Cache,
    pending: &Pending,
    root: &SharedRoot,
) -> StoreResult<Committed> {
    let heads = &pending.heads;
    let mut committed = Committed {
        may_create_keys: true,
        ..Committed::default()
    };
    for tenant in &needs.tenants {
        let head = match heads.get(tenant) {
            Some(head) => Some(head.clone()),
            None => last_head(conn, keys, tenant)?,
        };
        if let Some(head) = head {
            committed.heads.insert(tenant.clone(), head);
        }
    }
    for tenant in &needs.policy_tenants {
        let version: Option<i64> = conn
            .prepare_cached("SELECT policy_version FROM tenants WHERE tenant_id = ?1")
            .map_err(db_err)?
            .query_row([tenant.as_str()], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        if let Some(version) = version {
            committed
                .policy_versions
                .insert(tenant.clone(), from_db(version)?);
        }
    }
    for tenant in &needs.key_tenants {
        let key = match cache.data_key(tenant) {
            Some(key) => Ok(Some(key)),
            None => read_data_key(conn, root, tenant).map(|k| k.map(Arc::new)),
        };
        match key {
            Ok(Some(key)) => {
                committed.data_keys.insert(tenant.clone(), key);
            }
            Ok(None) => {}
            // A key that does not open refuses this tenant's units, not the batch.
            Err(e) if e.kind == ErrorKind::Corrupt => {
                committed
                    .unreadable
                    .insert(Item::DataKey(tenant.clone()), e);
            }
            Err(e) => return Err(e),
        }
    }
    for key in &needs.secrets {
        read_secret(conn, cache, pending, key, &mut committed)?;
    }
    // A grant is checked against the snapshot this writer committed last (or, before it
    // committed any, the newest a reader saw), which is what the engine decided from; staged
    // material is not needed for that.
    for key in &needs.grant_secrets {
        let known = pending
            .snapshots
            .get(key)
            .cloned()
            .or_else(|| cache.secret(&key.0, &key.1));
        match known {
            Some(snapshot) => {
                let stored = StoredSecret {
                    snapshot,
                    staged: None,
                    purpose_mac: None,
                    latest: None,
                };
                committed.secrets.insert(key.clone(), stored);
            }
            None => read_secret(conn, cache, pending, key, &mut committed)?,
        }
    }
    crate::principals::read_committed(conn, keys, needs, &mut committed)?;
    for scope in &needs.idempotency {
        let taken = conn
            .prepare_cached(
                "SELECT 1 FROM idempotency WHERE tenant_id = ?1 AND caller = ?2 AND key = ?3",
            )
            .map_err(db_err)?
            .exists([
                scope.tenant.as_str(),
                scope.caller.as_str(),
                scope.key.as_str(),
            ])
            .map_err(db_err)?;
        if taken {
            committed.taken.insert(scope.clone());
        }
    }
    Ok(committed)
}

/// Reads one secret as stored into `committed` (nothing for a secret that does not exist).
fn read_secret(
    conn: &Connection,
    cache: &Cache,
    pending: &Pending,
    key: &SecretKey,
    committed: &mut Committed,
) -> StoreResult<()> {
    let (tenant, name) = key;
    type Row = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);
    let row: Option<Row> = conn
        .prepare_cached(
            // The latest version proves the purpose only where no MAC does.
            "SELECT s.state_version, s.staged, s.purpose_mac,
                    CASE WHEN s.purpose_mac IS NULL THEN
                        (SELECT v.sealed FROM versions v
                         WHERE v.tenant_id = s.tenant_id AND v.secret_name = s.secret_name
                         ORDER BY v.version DESC LIMIT 1) END
             FROM secrets s WHERE s.tenant_id = ?1 AND s.secret_name = ?2",
        )
        .map_err(db_err)?
        .query_row([tenant.as_str(), name.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()
        .map_err(db_err)?;
    let Some((state_version, staged, purpose_mac, latest)) = row else {
        return Ok(());
    };
    match stored_secret(conn, cache, pending, key, state_version) {
        Ok(snapshot) => {
            let stored = StoredSecret {
                snapshot,
                staged,
                purpose_mac,
                latest,
            };
            committed.secrets.insert(key.clone(), stored);
        }
        // A row that does not parse refuses the units that need it, not the batch.
        Err(e) if e.kind == ErrorKind::Corrupt => {
            committed.unreadable.insert(Item::Secret(key.clone()), e);
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// A secret's snapshot at `state_version` as stored: the one an earlier round of this
/// transaction made, or the cached one, when it is at that version (a hot secret's rotations
/// then do not re-read every version), else read anew.
fn stored_secret(
    conn: &Connection,
    cache: &Cache,
    pending: &Pending,
    key: &SecretKey,
    state_version: i64,
) -> StoreResult<Arc<SecretSnapshot>> {
    let state_version = from_db(state_version)?;
    let (tenant, name) = key;
    let known = pending
        .snapshots
        .get(key)
        .cloned()
        .or_else(|| cache.secret(tenant, name));
    match known {
        Some(snapshot) if snapshot.state_version == state_version => Ok(snapshot),
        _ => load_snapshot(conn, tenant, name)?
            .map(Arc::new)
            .ok_or_else(|| StoreError::new(ErrorKind::NotFound, "no such secret")),
    }
}

/// The head of a tenant's chain as stored: its last record; `None` for a tenant without one.
fn last_head(
    conn: &Connection,
    keys: &ServiceKeys,
    tenant: &TenantId,
) -> StoreResult<Option<Head>> {
    let last: Option<(i64, String)> = conn
        .prepare_cached(
            "SELECT seq, record FROM audit WHERE tenant_id = ?1 ORDER BY seq DESC LIMIT 1",
        )
        .map_err(db_err)?
        .query_row([tenant.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(db_err)?;
    last.map(|(seq, json)| {
        let record = stored_record(tenant.as_str(), from_db(seq)?, &json)?;
        head_of(keys, tenant, &record)
    })
    .transpose()
}

/// Runs one prepared statement, naming what failed.
pub(crate) fn exec(
    conn: &Connection,
    sql: &'static str,
    params: impl rusqlite::Params,
    what: &str,
) -> StoreResult<usize> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute(params))
        .map_err(|e| {
            let inner = db_err(e);
            StoreError::new(ErrorKind::Unavailable, format!("{what}: {}", inner.message))
        })
}

/// Writes every row of a decided batch. `new_tenants` are the batch's tenants that had no
/// chain yet (their rows may not exist). Returns the authentication epoch the batch advanced
/// to, if it revoked a principal or token.
pub(crate) fn write(
    conn: &Connection,
    keys: &ServiceKeys,
    writes: &Writes,
    new_tenants: &[TenantId],
) -> StoreResult<Option<u64>> {
    for tenant in new_tenants {
        exec(
            conn,
            "INSERT OR IGNORE INTO tenants (tenant_id) VALUES (?1)",
            [tenant.as_str()],
            "tenant",
        )?;
    }
    for (tenant, wrapped) in &writes.data_keys {
        let updated = exec(
            conn,
            "UPDATE tenants SET wrapped_dek = ?2 WHERE tenant_id = ?1 AND wrapped_dek IS NULL",
            (tenant.as_str(), wrapped),
            "data key",
        )?;
        // Material sealed under a key that was not stored could never be opened again.
        if updated != 1 {
            return Err(StoreError::new(
                ErrorKind::Unavailable,
                "a tenant's data key could not be stored",
            ));
        }
    }
    for s in &writes.secrets {
        exec(
            conn,
            "INSERT INTO secrets (tenant_id, secret_name, secret_ref, kind, state_version,
                                  ttl_min_ms, ttl_max_ms, ttl_default_ms, handle_ttl_ms, staged,
                                  created_at_ms, purpose, min_decryption_version, purpose_mac)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            rusqlite::params![
                s.tenant.as_str(),
                s.name.as_str(),
                s.secret_ref,
                s.kind.name(),
                to_db(s.state_version)?,
                to_db(s.ttl.min_ms)?,
                to_db(s.ttl.max_ms)?,
                to_db(s.ttl.default_ms)?,
                to_db(s.handle_ttl_ms)?,
                s.staged,
                to_db_saturating(s.created_at_ms),
                s.purpose.name(),
                to_db(s.min_decryption_version)?,
                s.purpose_mac,
            ],
            "secret write",
        )?;
    }
    for v in &writes.versions {
        exec(
            conn,
            "INSERT INTO versions (tenant_id, secret_name, version, state, created_at_ms, sealed)
             VALUES (?1, ?2, ?3, 'ACTIVE', ?4, ?5)",
            (
                v.tenant.as_str(),
                v.name.as_str(),
                to_db(v.version)?,
                to_db_saturating(v.created_at_ms),
                &v.sealed,
            ),
            "version write",
        )?;
    }
    for u in &writes.secret_updates {
        exec(
            conn,
            "UPDATE secrets SET state_version = ?3, staged = ?4, min_decryption_version = ?5,
                                purpose_mac = COALESCE(?6, purpose_mac)
             WHERE tenant_id = ?1 AND secret_name = ?2",
            (
                u.tenant.as_str(),
                u.name.as_str(),
                to_db(u.state_version)?,
                &u.staged,
                to_db(u.min_decryption_version)?,
                &u.purpose_mac,
            ),
            "secret write",
        )?;
    }
    for r in &writes.revocations {
        exec(
            conn,
            "UPDATE versions SET state = 'REVOKED'
             WHERE tenant_id = ?1 AND secret_name = ?2 AND version BETWEEN ?3 AND ?4",
            (
                r.tenant.as_str(),
                r.name.as_str(),
                to_db(r.first)?,
                to_db(r.last)?,
            ),
            "revocation write",
        )?;
    }
    for r in &writes.revoked_refs {
        exec(
            conn,
            "INSERT OR IGNORE INTO revoked_refs (tenant_id, ref_id, expires_at_ms)
             VALUES (?1, ?2, ?3)",
            (
                r.tenant.as_str(),
                r.id.as_str(),
                to_db_saturating(r.expires_at_ms),
            ),
            "revocation write",
        )?;
    }
    for p in &writes.policies {
        exec(
            conn,
            "UPDATE tenants SET policy_json = ?2, policy_version = ?3 WHERE tenant_id = ?1",
            (p.tenant.as_str(), p.json.as_str(), to_db(p.version)?),
            "policy write",
        )?;
    }
    let epoch = crate::principals::write(conn, keys, writes)?;
    for i in &writes.idempotency {
        exec(
            conn,
            "INSERT INTO idempotency (tenant_id, caller, key, fingerprint, bundle, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            (
                i.scope.tenant.as_str(),
                i.scope.caller.as_str(),
                i.scope.key.as_str(),
                &i.fingerprint[..],
                &i.sealed,
                to_db_saturating(i.created_at_ms),
            ),
            "idempotency write",
        )?;
    }
    for a in &writes.audit {
        exec(
            conn,
            "INSERT INTO audit (tenant_id, seq, record) VALUES (?1, ?2, ?3)",
            (a.tenant.as_str(), to_db(a.seq)?, a.json.as_str()),
            "audit write",
        )?;
        if let Some(sealed) = &a.inputs {
            exec(
                conn,
                // Beside the record just inserted, by its row id.
                "INSERT INTO decision_inputs (audit_id, sealed) VALUES (last_insert_rowid(), ?1)",
                [sealed.as_slice()],
                "decision inputs write",
            )?;
        }
    }
    for c in &writes.checkpoints {
        exec(
            conn,
            "INSERT INTO checkpoints (tenant_id, seq, checkpoint) VALUES (?1, ?2, ?3)",
            (c.tenant.as_str(), to_db(c.seq)?, c.json.as_str()),
            "checkpoint write",
        )?;
    }
    Ok(epoch)
}
