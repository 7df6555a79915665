//! PostgreSQL's two halves of a commit around the shared algorithm ([`crate::commit`]):
//! reading the committed state a batch needs, and writing the rows it decided, each group of
//! rows in one set-based statement (`unnest` arrays), so that a batch costs a handful of round
//! trips however many units it holds.
//!
//! Both run inside the batch's transaction after it has locked the chain-head rows of every
//! tenant in the batch (see the writer): every other node's writes to those tenants (their
//! secrets, idempotency keys, data keys, policies and chains) wait for that lock, so the state
//! read here stays the committed state until this transaction commits.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deadpool_postgres::GenericClient;
use selene_kms_core::{SecretName, SecretSnapshot, ServiceKeys, TenantId, audit::GENESIS_DIGEST};
use selene_kms_store::backend::{
    Committed, ErrorKind, Head, IdempotencyScope, Item, Needs, SecretKey, SharedRoot, StoreError,
    StoreResult, StoredSecret, Writes, head_mac, head_of_row,
};

use crate::codec::{col, col_u64, stored_tenant, to_db, to_db_saturating};
use crate::keys::{DataKeys, load_data_key, root_is_current};
use crate::reads::{Fresh, corrupt, secret_row, snapshot_columns};
use crate::sql::{self, Statement};
use crate::writer::SecretCache;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Begins the batch's transaction, creates missing tenant rows, locks the rows of
/// `needs.tenants` (sorted, distinct, so that two nodes never wait on each other in a cycle)
/// and reads the committed state the batch needs: all of it in one flight. On an error the
/// transaction is left open, for the caller to roll back.
pub(crate) async fn read_committed(
    client: &impl GenericClient,
    needs: &Needs,
    keys: &ServiceKeys,
    root: &SharedRoot,
    data_keys: &DataKeys,
    cached: &SecretCache,
) -> StoreResult<Committed> {
    const HEADS: &str = "audit head";
    let tenants: Vec<&str> = needs.tenants.iter().map(TenantId::as_str).collect();
    let secrets = SecretReads::of(needs, cached)?;
    let mut flight = vec![
        Statement::new("BEGIN", Vec::new(), "begin"),
        // The batch's statements take arrays of every size: planned once for all of them, not
        // again at each execution.
        Statement::new(
            "SET LOCAL plan_cache_mode = force_generic_plan",
            Vec::new(),
            "begin",
        ),
        Statement::new(
            "INSERT INTO tenants (tenant_id, audit_head)
             SELECT t, $2 FROM unnest($1::text[]) AS t ON CONFLICT DO NOTHING",
            vec![param(tenants.clone()), param(GENESIS_DIGEST)],
            HEADS,
        ),
        Statement::new(
            "SELECT tenant_id, audit_seq, audit_head, policy_version, audit_head_mac FROM tenants
             WHERE tenant_id = ANY($1) ORDER BY tenant_id FOR UPDATE",
            vec![param(tenants)],
            HEADS,
        ),
    ];
    // The answers of the statements before the lock (the beginning, its settings, the tenant
    // rows' creation) say nothing.
    let before_lock = flight.len() - 1;
    flight.extend(secrets.statement());
    flight.extend(taken_statement(&needs.idempotency));
    let mut answers = sql::flight(client, &flight)
        .await?
        .into_iter()
        .skip(before_lock);
    let mut next = || answers.next().unwrap_or_default();
    let rows = next();
    let secret_rows = if secrets.keys.is_empty() {
        Vec::new()
    } else {
        next()
    };
    let taken_rows = next();

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
    secrets.read(&secret_rows, &mut committed)?;
    crate::principals::read_committed(client, keys, needs, &mut committed).await?;
    committed.taken = read_taken(&taken_rows)?;
    Ok(committed)
}

const SECRET_READ: &str = "secret read";

/// The batch's read of its secrets: each with the state version of the snapshot this node
/// holds, so that an unchanged secret costs an index probe and not its versions, and with its
/// latest sealed version only where a change seals new material.
struct SecretReads {
    keys: Vec<SecretKey>,
    held: Vec<i64>,
    sealing: Vec<bool>,
    /// The snapshots held, by key, at the state version sent.
    snapshots: HashMap<SecretKey, (u64, Arc<SecretSnapshot>)>,
}

impl SecretReads {
    fn of(needs: &Needs, cached: &SecretCache) -> StoreResult<Self> {
        let mut reads = Self {
            keys: Vec::new(),
            held: Vec::new(),
            sealing: Vec::new(),
            snapshots: HashMap::new(),
        };
        for key in needs.secrets.iter().chain(&needs.grant_secrets) {
            // Versions start at 1, so -1 matches none.
            let mut held = -1;
            if let Some((version, snapshot)) = cached.entry(key) {
                held = to_db(version)?;
                reads.snapshots.insert(key.clone(), (version, snapshot));
            }
            reads.keys.push(key.clone());
            reads.held.push(held);
            reads.sealing.push(needs.sealing.binary_search(key).is_ok());
        }
        Ok(reads)
    }

    /// The statement, if the batch reads any secret.
    fn statement(&self) -> Option<Statement<'_>> {
        if self.keys.is_empty() {
            return None;
        }
        Some(Statement::new(
            concat!(
                "SELECT ",
                snapshot_columns!("n.held"),
                ", n.tenant_id, n.secret_name, s.staged,
                    -- The latest version proves the purpose only where no MAC does.
                    CASE WHEN n.sealing AND s.purpose_mac IS NULL THEN (
                        SELECT v.sealed FROM versions v
                        WHERE v.tenant_id = s.tenant_id AND v.secret_name = s.secret_name
                        ORDER BY v.version DESC LIMIT 1) END,
                    s.purpose_mac
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bool[])
                  AS n(tenant_id, secret_name, held, sealing)
             -- One index lookup per name (see the idempotency read).
             CROSS JOIN LATERAL (
                 SELECT * FROM secrets s
                 WHERE s.tenant_id = n.tenant_id AND s.secret_name = n.secret_name
                 LIMIT 1) AS s"
            ),
            vec![
                param(column(&self.keys, |(t, _)| t.as_str())),
                param(column(&self.keys, |(_, n)| n.as_str())),
                param(self.held.as_slice()),
                param(self.sealing.as_slice()),
            ],
            SECRET_READ,
        ))
    }

    /// Reads the batch's secrets into `committed`; a row that does not parse refuses only the
    /// units that need it.
    fn read(&self, rows: &[Row], committed: &mut Committed) -> StoreResult<()> {
        for row in rows {
            // The names asked for, so these parse unless the database answers nonsense.
            let tenant = stored_tenant(col(row, 12, SECRET_READ)?)?;
            let name = SecretName::try_from(col::<String>(row, 13, SECRET_READ)?)
                .map_err(|_| corrupt("a secret name"))?;
            let key = (tenant, name);
            let snapshot = match secret_row(row) {
                Ok(Fresh::Loaded(_, snapshot)) => Ok(Arc::new(snapshot)),
                Ok(Fresh::Unchanged(version)) => match self.snapshots.get(&key) {
                    Some((held, snapshot)) if *held == version => Ok(snapshot.clone()),
                    _ => Err(corrupt("a secret row")),
                },
                Err(e) => Err(e),
            };
            let stored = snapshot.and_then(|snapshot| {
                Ok(StoredSecret {
                    snapshot,
                    staged: col(row, 14, SECRET_READ)?,
                    latest: col(row, 15, SECRET_READ)?,
                    purpose_mac: col(row, 16, SECRET_READ)?,
                })
            });
            match stored {
                Ok(stored) => {
                    committed.secrets.insert(key, stored);
                }
                Err(e) if e.kind == ErrorKind::Corrupt => {
                    committed.unreadable.insert(Item::Secret(key), e);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

const IDEMPOTENCY_READ: &str = "idempotency read";

/// The read of which of the batch's idempotency keys are taken, if it has any.
fn taken_statement(scopes: &[IdempotencyScope]) -> Option<Statement<'_>> {
    if scopes.is_empty() {
        return None;
    }
    Some(Statement::new(
        // One index lookup per key, whatever the table's statistics say: joined as a set, a
        // plan made while the table was small hashed the keys and scanned the whole table at
        // every batch (most of the server's time, growing with the table).
        "SELECT k.tenant_id, k.caller, k.key
         FROM unnest($1::text[], $2::text[], $3::text[]) AS k(tenant_id, caller, key)
         CROSS JOIN LATERAL (
             SELECT 1 FROM idempotency i
             WHERE i.tenant_id = k.tenant_id AND i.caller = k.caller AND i.key = k.key
             LIMIT 1) AS taken",
        vec![
            param(column(scopes, |s| s.tenant.as_str())),
            param(column(scopes, |s| s.caller.as_str())),
            param(column(scopes, |s| s.key.as_str())),
        ],
        IDEMPOTENCY_READ,
    ))
}

fn read_taken(rows: &[Row]) -> StoreResult<HashSet<IdempotencyScope>> {
    rows.iter()
        .map(|row| {
            Ok(IdempotencyScope {
                tenant: stored_tenant(col(row, 0, IDEMPOTENCY_READ)?)?,
                caller: col(row, 1, IDEMPOTENCY_READ)?,
                key: col(row, 2, IDEMPOTENCY_READ)?,
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

/// Boxes a column for a [`Statement`].
fn param<'a, T: ToSql + Sync + Send + 'a>(column: T) -> Box<dyn ToSql + Sync + Send + 'a> {
    Box::new(column)
}

/// Writes every row of a decided batch: one statement per non-empty group, all in one flight
/// (principal changes, rare, first and on their own), and commits in that same flight unless a
/// new data key must first be seen stored. Whether it committed; on an error the transaction
/// is left open (or already ended), for the caller to roll back.
pub(crate) async fn write(
    client: &impl GenericClient,
    keys: &ServiceKeys,
    writes: &Writes,
) -> StoreResult<Ended> {
    crate::principals::write(client, keys, writes).await?;
    let mut flight = Vec::new();
    let data_keys = &writes.data_keys;
    if !data_keys.is_empty() {
        flight.push(Statement::new(
            "UPDATE tenants SET wrapped_dek = d.wrapped
             FROM unnest($1::text[], $2::bytea[]) AS d(tenant_id, wrapped)
             WHERE tenants.tenant_id = d.tenant_id AND tenants.wrapped_dek IS NULL
             RETURNING tenants.tenant_id",
            vec![
                param(column(data_keys, |(t, _)| t.as_str())),
                param(column(data_keys, |(_, w)| w.as_slice())),
            ],
            "data key",
        ));
    }
    let rows = &writes.secrets;
    if !rows.is_empty() {
        flight.push(Statement::new(
            "INSERT INTO secrets (tenant_id, secret_name, secret_ref, kind, state_version,
                                  ttl_min_ms, ttl_max_ms, ttl_default_ms, handle_ttl_ms, staged,
                                  created_at_ms, purpose, min_decryption_version, purpose_mac)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                                  $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[],
                                  $10::bytea[], $11::bigint[], $12::text[], $13::bigint[],
                                  $14::bytea[])",
            vec![
                param(column(rows, |r| r.tenant.as_str())),
                param(column(rows, |r| r.name.as_str())),
                param(column(rows, |r| r.secret_ref.as_str())),
                param(column(rows, |r| r.kind.name())),
                param(numbers(rows, |r| r.state_version)?),
                param(numbers(rows, |r| r.ttl.min_ms)?),
                param(numbers(rows, |r| r.ttl.max_ms)?),
                param(numbers(rows, |r| r.ttl.default_ms)?),
                param(numbers(rows, |r| r.handle_ttl_ms)?),
                param(column(rows, |r| r.staged.as_deref())),
                param(column(rows, |r| to_db_saturating(r.created_at_ms))),
                param(column(rows, |r| r.purpose.name())),
                param(numbers(rows, |r| r.min_decryption_version)?),
                param(column(rows, |r| r.purpose_mac.as_deref())),
            ],
            "secret write",
        ));
    }
    let rows = &writes.versions;
    if !rows.is_empty() {
        flight.push(Statement::new(
            "INSERT INTO versions (tenant_id, secret_name, version, state, created_at_ms, sealed)
             SELECT t, n, v, 'ACTIVE', c, s
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bytea[])
                  AS r(t, n, v, c, s)",
            vec![
                param(column(rows, |r| r.tenant.as_str())),
                param(column(rows, |r| r.name.as_str())),
                param(numbers(rows, |r| r.version)?),
                param(column(rows, |r| to_db_saturating(r.created_at_ms))),
                param(column(rows, |r| r.sealed.as_slice())),
            ],
            "version write",
        ));
    }
    let rows = &writes.secret_updates;
    if !rows.is_empty() {
        flight.push(Statement::new(
            "UPDATE secrets SET state_version = u.state_version, staged = u.staged,
                                min_decryption_version = u.min_decryption_version,
                                purpose_mac = COALESCE(u.purpose_mac, secrets.purpose_mac)
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[], $5::bigint[],
                         $6::bytea[])
                  AS u(tenant_id, secret_name, state_version, staged, min_decryption_version,
                       purpose_mac)
             WHERE secrets.tenant_id = u.tenant_id AND secrets.secret_name = u.secret_name",
            vec![
                param(column(rows, |r| r.tenant.as_str())),
                param(column(rows, |r| r.name.as_str())),
                param(numbers(rows, |r| r.state_version)?),
                param(column(rows, |r| r.staged.as_deref())),
                param(numbers(rows, |r| r.min_decryption_version)?),
                param(column(rows, |r| r.purpose_mac.as_deref())),
            ],
            "secret write",
        ));
    }
    let rows = &writes.revocations;
    if !rows.is_empty() {
        flight.push(Statement::new(
            "UPDATE versions SET state = 'REVOKED'
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
                  AS r(tenant_id, secret_name, first, last)
             WHERE versions.tenant_id = r.tenant_id AND versions.secret_name = r.secret_name
               AND versions.version BETWEEN r.first AND r.last",
            vec![
                param(column(rows, |r| r.tenant.as_str())),
                param(column(rows, |r| r.name.as_str())),
                param(numbers(rows, |r| r.first)?),
                param(numbers(rows, |r| r.last)?),
            ],
            "revocation write",
        ));
    }
    let rows = &writes.revoked_refs;
    if !rows.is_empty() {
        flight.push(Statement::new(
            "INSERT INTO revoked_refs (tenant_id, ref_id, expires_at_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) ON CONFLICT DO NOTHING",
            vec![
                param(column(rows, |r| r.tenant.as_str())),
                param(column(rows, |r| r.id.as_str())),
                param(column(rows, |r| to_db_saturating(r.expires_at_ms))),
            ],
            "revocation write",
        ));
    }
    let rows = &writes.policies;
    if !rows.is_empty() {
        flight.push(Statement::new(
            "UPDATE tenants SET policy_json = p.json, policy_version = p.version
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS p(tenant_id, json, version)
             WHERE tenants.tenant_id = p.tenant_id",
            vec![
                param(column(rows, |r| r.tenant.as_str())),
                param(column(rows, |r| r.json.as_str())),
                param(numbers(rows, |r| r.version)?),
            ],
            "policy write",
        ));
    }
    let rows = &writes.idempotency;
    if !rows.is_empty() {
        flight.push(Statement::new(
            "INSERT INTO idempotency (tenant_id, caller, key, fingerprint, bundle, created_at_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bytea[],
                                  $6::bigint[])",
            vec![
                param(column(rows, |r| r.scope.tenant.as_str())),
                param(column(rows, |r| r.scope.caller.as_str())),
                param(column(rows, |r| r.scope.key.as_str())),
                param(column(rows, |r| &r.fingerprint[..])),
                param(column(rows, |r| r.sealed.as_slice())),
                param(column(rows, |r| to_db_saturating(r.created_at_ms))),
            ],
            "idempotency write",
        ));
    }
    let rows = &writes.audit;
    if !rows.is_empty() {
        flight.push(Statement::new(
            "INSERT INTO audit (tenant_id, seq, record)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])",
            vec![
                param(column(rows, |r| r.tenant.as_str())),
                param(numbers(rows, |r| r.seq)?),
                param(column(rows, |r| r.json.as_str())),
            ],
            "audit write",
        ));
    }
    let kept: Vec<_> = rows.iter().filter(|r| r.inputs.is_some()).collect();
    if !kept.is_empty() {
        flight.push(Statement::new(
            "INSERT INTO decision_inputs (tenant_id, seq, sealed)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])",
            vec![
                param(column(&kept, |r| r.tenant.as_str())),
                param(numbers(&kept, |r| r.seq)?),
                param(column(&kept, |r| r.inputs.as_deref().unwrap_or_default())),
            ],
            "decision inputs write",
        ));
    }
    let rows = &writes.checkpoints;
    if !rows.is_empty() {
        flight.push(Statement::new(
            "INSERT INTO checkpoints (tenant_id, seq, checkpoint)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])",
            vec![
                param(column(rows, |r| r.tenant.as_str())),
                param(numbers(rows, |r| r.seq)?),
                param(column(rows, |r| r.json.as_str())),
            ],
            "checkpoint write",
        ));
    }
    if let Some(heads) = heads_statement(keys, &writes.heads)? {
        flight.push(heads);
    }
    // A commit sent behind the writes runs only if they all succeed: after a failed one,
    // PostgreSQL ends the aborted transaction with a rollback, and the flight reports the
    // failed statement.
    let ended = if data_keys.is_empty() {
        flight.push(Statement::new("COMMIT", Vec::new(), "commit"));
        Ended::Committed
    } else {
        Ended::Open
    };
    let answers = sql::flight(client, &flight).await?;
    if !data_keys.is_empty() && answers.first().map(Vec::len) != Some(data_keys.len()) {
        return Err(StoreError::new(
            ErrorKind::Unavailable,
            "a tenant's data key changed beside its row lock",
        ));
    }
    Ok(ended)
}

/// How [`write`] left the transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Committed with the writes.
    Committed,
    /// Still open: the caller commits.
    Open,
}

/// The statement that stores the chain heads that moved, if any did.
fn heads_statement<'a>(
    keys: &ServiceKeys,
    heads: &'a HashMap<TenantId, Head>,
) -> StoreResult<Option<Statement<'a>>> {
    if heads.is_empty() {
        return Ok(None);
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
    Ok(Some(Statement::new(
        "UPDATE tenants SET audit_seq = h.seq, audit_head = h.digest, audit_head_mac = h.mac
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bytea[])
             AS h(tenant_id, seq, digest, mac)
         WHERE tenants.tenant_id = h.tenant_id",
        vec![param(tenants), param(seqs), param(digests), param(macs)],
        "audit head",
    )))
}
