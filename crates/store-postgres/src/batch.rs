//! PostgreSQL's two halves of a commit around the shared algorithm ([`crate::commit`]):
//! reading the committed state a batch needs, and writing the rows it decided, each group of
//! rows in one set-based statement (`unnest` arrays), so that a batch costs a handful of round
//! trips however many units it holds.
//!
//! Both run inside the batch's transaction after it has locked the chain-head rows of every
//! tenant in the batch (see the writer): every other node's writes to those tenants (their
//! secrets, idempotency keys, data keys, policies and chains) wait for that lock, so the state
//! read here stays the committed state until this transaction commits.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::GenericClient;
use selene_kms_core::{SecretName, ServiceKeys, TenantId, audit::GENESIS_DIGEST};
use selene_kms_store::backend::{
    Committed, ErrorKind, Head, IdempotencyScope, Item, Needs, SharedRoot, StoreError, StoreResult,
    StoredSecret, Writes, head_mac, head_of_row,
};

use crate::codec::{col, col_u64, stored_tenant, to_db, to_db_saturating};
use crate::keys::{DataKeys, load_data_key, root_is_current};
use crate::reads::{Fresh, corrupt, secret_row};
use crate::sql;

/// Creates missing tenant rows, locks the rows of `needs.tenants` (sorted, distinct, so that two
/// nodes never wait on each other in a cycle) and reads the committed state the batch needs.
pub(crate) async fn read_committed(
    client: &impl GenericClient,
    needs: &Needs,
    keys: &ServiceKeys,
    root: &SharedRoot,
    data_keys: &DataKeys,
) -> StoreResult<Committed> {
    const HEADS: &str = "audit head";
    let tenants: Vec<&str> = needs.tenants.iter().map(TenantId::as_str).collect();
    sql::execute(
        client,
        "INSERT INTO tenants (tenant_id, audit_head)
         SELECT t, $2 FROM unnest($1::text[]) AS t ON CONFLICT DO NOTHING",
        &[&tenants, &GENESIS_DIGEST],
        HEADS,
    )
    .await?;
    let rows = sql::rows(
        client,
        "SELECT tenant_id, audit_seq, audit_head, policy_version, audit_head_mac FROM tenants
         WHERE tenant_id = ANY($1) ORDER BY tenant_id FOR UPDATE",
        &[&tenants],
        HEADS,
    )
    .await?;
    let mut committed = Committed {
        may_create_keys: true,
        ..Committed::default()
    };
    for row in &rows {
        // Principal changes lock the system chain's row like any tenant's: it is made on first
        // use like theirs, and serializes principal changes across nodes.
        let tenant = stored_tenant(col(row, 0, HEADS)?)?;
        let head = Head {
            seq: col_u64(row, 1, HEADS)?,
            digest: col(row, 2, HEADS)?,
        };
        if needs.policy_tenants.contains(&tenant) {
            let version = col_u64(row, 3, HEADS)?;
            committed.policy_versions.insert(tenant.clone(), version);
        }
        if head.seq > 0 {
            let mac = col::<Option<&[u8]>>(row, 4, HEADS)?;
            let head = head_of_row(keys, &tenant, head, mac)?;
            committed.heads.insert(tenant, head);
        }
    }
    for tenant in &needs.key_tenants {
        let key = match data_keys.get(tenant) {
            Some(key) => Some(key),
            None => match load_data_key(client, root, tenant).await {
                Ok(stored) => {
                    if let Some(key) = &stored {
                        data_keys.put(tenant.clone(), key.clone());
                    }
                    stored
                }
                // A key that does not open refuses this tenant's units, not the batch.
                Err(e) if e.kind == ErrorKind::Corrupt => {
                    committed
                        .unreadable
                        .insert(Item::DataKey(tenant.clone()), e);
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        match key {
            Some(key) => {
                committed.data_keys.insert(tenant.clone(), key);
            }
            // Another node may have rotated the root key: a key wrapped under this node's
            // would be one the others cannot open.
            None if committed.may_create_keys => {
                committed.may_create_keys = root_is_current(client, root).await?;
            }
            None => {}
        }
    }
    let secrets: Vec<_> = needs
        .secrets
        .iter()
        .chain(&needs.grant_secrets)
        .cloned()
        .collect();
    read_secrets(client, &secrets, &mut committed).await?;
    crate::principals::read_committed(client, keys, needs, &mut committed).await?;
    committed.taken = read_taken(client, &needs.idempotency).await?;
    Ok(committed)
}

/// Reads the batch's secrets into `committed`; a row that does not parse refuses only the
/// units that need it.
async fn read_secrets(
    client: &impl GenericClient,
    secrets: &[(TenantId, SecretName)],
    committed: &mut Committed,
) -> StoreResult<()> {
    const WHAT: &str = "secret read";
    if secrets.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = secrets.iter().map(|(t, _)| t.as_str()).collect();
    let names: Vec<&str> = secrets.iter().map(|(_, n)| n.as_str()).collect();
    let rows = sql::rows(
        client,
        "SELECT s.state_version, s.secret_ref, s.kind, s.ttl_min_ms, s.ttl_max_ms,
                s.ttl_default_ms, s.handle_ttl_ms, s.staged IS NOT NULL,
                COALESCE((SELECT max(v.version) FROM versions v
                          WHERE v.tenant_id = s.tenant_id AND v.secret_name = s.secret_name), 0),
                ARRAY(SELECT v.version FROM versions v
                      WHERE v.tenant_id = s.tenant_id AND v.secret_name = s.secret_name
                        AND v.state = 'REVOKED'
                      ORDER BY v.version),
                n.tenant_id, n.secret_name, s.staged
         FROM unnest($1::text[], $2::text[]) AS n(tenant_id, secret_name)
         JOIN secrets s ON s.tenant_id = n.tenant_id AND s.secret_name = n.secret_name",
        &[&tenants, &names],
        WHAT,
    )
    .await?;
    for row in &rows {
        // The names asked for, so these parse unless the database answers nonsense.
        let tenant = stored_tenant(col(row, 10, WHAT)?)?;
        let name = SecretName::try_from(col::<String>(row, 11, WHAT)?)
            .map_err(|_| corrupt("a secret name"))?;
        let stored = match secret_row(row) {
            Ok(Fresh::Loaded(_, snapshot)) => col(row, 12, WHAT).map(|staged| StoredSecret {
                snapshot: Arc::new(snapshot),
                staged,
            }),
            Ok(Fresh::Unchanged(_)) => Err(corrupt("a secret row")),
            Err(e) => Err(e),
        };
        match stored {
            Ok(stored) => {
                committed.secrets.insert((tenant, name), stored);
            }
            Err(e) if e.kind == ErrorKind::Corrupt => {
                committed.unreadable.insert(Item::Secret((tenant, name)), e);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn read_taken(
    client: &impl GenericClient,
    scopes: &[IdempotencyScope],
) -> StoreResult<std::collections::HashSet<IdempotencyScope>> {
    const WHAT: &str = "idempotency read";
    if scopes.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let tenants: Vec<&str> = scopes.iter().map(|s| s.tenant.as_str()).collect();
    let callers: Vec<&str> = scopes.iter().map(|s| s.caller.as_str()).collect();
    let keys: Vec<&str> = scopes.iter().map(|s| s.key.as_str()).collect();
    let rows = sql::rows(
        client,
        "SELECT i.tenant_id, i.caller, i.key
         FROM unnest($1::text[], $2::text[], $3::text[]) AS k(tenant_id, caller, key)
         JOIN idempotency i
           ON i.tenant_id = k.tenant_id AND i.caller = k.caller AND i.key = k.key",
        &[&tenants, &callers, &keys],
        WHAT,
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok(IdempotencyScope {
                tenant: stored_tenant(col(row, 0, WHAT)?)?,
                caller: col(row, 1, WHAT)?,
                key: col(row, 2, WHAT)?,
            })
        })
        .collect()
}

/// Columns of a row group, one array per column.
fn column<'a, T, U>(rows: &'a [T], f: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}

fn numbers<T>(rows: &[T], f: impl Fn(&T) -> u64) -> StoreResult<Vec<i64>> {
    rows.iter().map(|r| to_db(f(r))).collect()
}

/// Writes every row of a decided batch, one statement per non-empty group.
pub(crate) async fn write(
    client: &impl GenericClient,
    keys: &ServiceKeys,
    writes: &Writes,
) -> StoreResult<()> {
    if !writes.data_keys.is_empty() {
        let rows = &writes.data_keys;
        let updated = sql::execute(
            client,
            "UPDATE tenants SET wrapped_dek = d.wrapped
             FROM unnest($1::text[], $2::bytea[]) AS d(tenant_id, wrapped)
             WHERE tenants.tenant_id = d.tenant_id AND tenants.wrapped_dek IS NULL",
            &[
                &column(rows, |(t, _)| t.as_str()),
                &column(rows, |(_, w)| w.as_slice()),
            ],
            "data key",
        )
        .await?;
        if usize::try_from(updated).ok() != Some(rows.len()) {
            return Err(StoreError::new(
                ErrorKind::Unavailable,
                "a tenant's data key changed beside its row lock",
            ));
        }
    }
    if !writes.secrets.is_empty() {
        let rows = &writes.secrets;
        sql::execute(
            client,
            "INSERT INTO secrets (tenant_id, secret_name, secret_ref, kind, state_version,
                                  ttl_min_ms, ttl_max_ms, ttl_default_ms, handle_ttl_ms, staged,
                                  created_at_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                                  $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[],
                                  $10::bytea[], $11::bigint[])",
            &[
                &column(rows, |r| r.tenant.as_str()),
                &column(rows, |r| r.name.as_str()),
                &column(rows, |r| r.secret_ref.as_str()),
                &column(rows, |r| r.kind.name()),
                &numbers(rows, |r| r.state_version)?,
                &numbers(rows, |r| r.ttl.min_ms)?,
                &numbers(rows, |r| r.ttl.max_ms)?,
                &numbers(rows, |r| r.ttl.default_ms)?,
                &numbers(rows, |r| r.handle_ttl_ms)?,
                &column(rows, |r| r.staged.as_deref()),
                &column(rows, |r| to_db_saturating(r.created_at_ms)),
            ],
            "secret write",
        )
        .await?;
    }
    if !writes.versions.is_empty() {
        let rows = &writes.versions;
        sql::execute(
            client,
            "INSERT INTO versions (tenant_id, secret_name, version, state, created_at_ms, sealed)
             SELECT t, n, v, 'ACTIVE', c, s
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bytea[])
                  AS r(t, n, v, c, s)",
            &[
                &column(rows, |r| r.tenant.as_str()),
                &column(rows, |r| r.name.as_str()),
                &numbers(rows, |r| r.version)?,
                &column(rows, |r| to_db_saturating(r.created_at_ms)),
                &column(rows, |r| r.sealed.as_slice()),
            ],
            "version write",
        )
        .await?;
    }
    if !writes.secret_updates.is_empty() {
        let rows = &writes.secret_updates;
        sql::execute(
            client,
            "UPDATE secrets SET state_version = u.state_version, staged = u.staged
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[])
                  AS u(tenant_id, secret_name, state_version, staged)
             WHERE secrets.tenant_id = u.tenant_id AND secrets.secret_name = u.secret_name",
            &[
                &column(rows, |r| r.tenant.as_str()),
                &column(rows, |r| r.name.as_str()),
                &numbers(rows, |r| r.state_version)?,
                &column(rows, |r| r.staged.as_deref()),
            ],
            "secret write",
        )
        .await?;
    }
    if !writes.revocations.is_empty() {
        let rows = &writes.revocations;
        sql::execute(
            client,
            "UPDATE versions SET state = 'REVOKED'
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
                  AS r(tenant_id, secret_name, first, last)
             WHERE versions.tenant_id = r.tenant_id AND versions.secret_name = r.secret_name
               AND versions.version BETWEEN r.first AND r.last",
            &[
                &column(rows, |r| r.tenant.as_str()),
                &column(rows, |r| r.name.as_str()),
                &numbers(rows, |r| r.first)?,
                &numbers(rows, |r| r.last)?,
            ],
            "revocation write",
        )
        .await?;
    }
    if !writes.revoked_refs.is_empty() {
        let rows = &writes.revoked_refs;
        sql::execute(
            client,
            "INSERT INTO revoked_refs (tenant_id, ref_id, expires_at_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) ON CONFLICT DO NOTHING",
            &[
                &column(rows, |r| r.tenant.as_str()),
                &column(rows, |r| r.id.as_str()),
                &column(rows, |r| to_db_saturating(r.expires_at_ms)),
            ],
            "revocation write",
        )
        .await?;
    }
    if !writes.policies.is_empty() {
        let rows = &writes.policies;
        sql::execute(
            client,
            "UPDATE tenants SET policy_json = p.json, policy_version = p.version
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS p(tenant_id, json, version)
             WHERE tenants.tenant_id = p.tenant_id",
            &[
                &column(rows, |r| r.tenant.as_str()),
                &column(rows, |r| r.json.as_str()),
                &numbers(rows, |r| r.version)?,
            ],
            "policy write",
        )
        .await?;
    }
    crate::principals::write(client, keys, writes).await?;
    if !writes.idempotency.is_empty() {
        let rows = &writes.idempotency;
        sql::execute(
            client,
            "INSERT INTO idempotency (tenant_id, caller, key, fingerprint, bundle, created_at_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bytea[],
                                  $6::bigint[])",
            &[
                &column(rows, |r| r.scope.tenant.as_str()),
                &column(rows, |r| r.scope.caller.as_str()),
                &column(rows, |r| r.scope.key.as_str()),
                &column(rows, |r| &r.fingerprint[..]),
                &column(rows, |r| r.sealed.as_slice()),
                &column(rows, |r| to_db_saturating(r.created_at_ms)),
            ],
            "idempotency write",
        )
        .await?;
    }
    let rows = &writes.audit;
    if !rows.is_empty() {
        sql::execute(
            client,
            "INSERT INTO audit (tenant_id, seq, record)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])",
            &[
                &column(rows, |r| r.tenant.as_str()),
                &numbers(rows, |r| r.seq)?,
                &column(rows, |r| r.json.as_str()),
            ],
            "audit write",
        )
        .await?;
    }
    let kept: Vec<_> = rows.iter().filter(|r| r.inputs.is_some()).collect();
    if !kept.is_empty() {
        sql::execute(
            client,
            "INSERT INTO decision_inputs (tenant_id, seq, sealed)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])",
            &[
                &column(&kept, |r| r.tenant.as_str()),
                &numbers(&kept, |r| r.seq)?,
                &column(&kept, |r| r.inputs.as_deref().unwrap_or_default()),
            ],
            "decision inputs write",
        )
        .await?;
    }
    let rows = &writes.checkpoints;
    if !rows.is_empty() {
        sql::execute(
            client,
            "INSERT INTO checkpoints (tenant_id, seq, checkpoint)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])",
            &[
                &column(rows, |r| r.tenant.as_str()),
                &numbers(rows, |r| r.seq)?,
                &column(rows, |r| r.json.as_str()),
            ],
            "checkpoint write",
        )
        .await?;
    }
    write_heads(client, keys, &writes.heads).await
}

/// Stores the chain heads that moved, in one statement.
async fn write_heads(
    client: &impl GenericClient,
    keys: &ServiceKeys,
    heads: &HashMap<TenantId, Head>,
) -> StoreResult<()> {
    if heads.is_empty() {
        return Ok(());
    }
    let mut tenants = Vec::with_capacity(heads.len());
    let mut seqs = Vec::with_capacity(heads.len());
    let mut digests = Vec::with_capacity(heads.len());
    let mut macs = Vec::with_capacity(heads.len());
    for (tenant, head) in heads {
        tenants.push(tenant.as_str());
        seqs.push(to_db(head.seq)?);
        digests.push(head.digest.as_str());
        macs.push(head_mac(keys, tenant, head).to_vec());
    }
    sql::execute(
        client,
        "UPDATE tenants SET audit_seq = h.seq, audit_head = h.digest, audit_head_mac = h.mac
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bytea[])
             AS h(tenant_id, seq, digest, mac)
         WHERE tenants.tenant_id = h.tenant_id",
        &[&tenants, &seqs, &digests, &macs],
        "audit head",
    )
    .await?;
    Ok(())
}
