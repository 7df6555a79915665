//! The writer of one node and its group commit.
//!
//! Commit units arrive on a channel. The writer takes one, drains whatever else is queued (up to
//! [`crate::MAX_BATCH`]) and applies them all in one transaction: it first takes the row lock of
//! every tenant in the batch (`SELECT … FOR UPDATE` on the chain-head rows, in byte order so
//! that two nodes never wait on each other in a cycle), then runs each unit in its own savepoint,
//! then stores the new chain heads and commits once. Every unit is answered only after that
//! commit: with its receipt, or with its own error if its savepoint was rolled back, or with the
//! batch's error (nothing of it is durable) if the commit failed.
//!
//! The tenant row lock is what keeps several nodes correct: while a batch holds it, no other node
//! can append to that tenant's audit chain, move its secrets' state versions or take its
//! idempotency keys, so `seq` and `prev_digest` are assigned exactly once and every
//! compare-and-set is checked against the latest committed state.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deadpool_postgres::{Client, GenericClient, Pool};
use selene_kms_core::audit::GENESIS_DIGEST;
use selene_kms_core::{ServiceKeys, TenantId};
use tokio::sync::{mpsc, oneshot};

use super::apply::{BatchState, SecretFloors, apply};
use super::codec::{col, col_u64, to_db};
use super::error::{pg, pool_error};
use super::keys::DataKeys;
use super::sql;
use crate::chain::Head;
use crate::envelope::SharedRoot;
use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::health::WriteHealth;
use crate::model::{CommitUnit, Receipt};
use crate::stats::{BatchHistogram, drain};

/// One unit and where to send its answer.
pub(super) struct Job {
    pub(super) unit: CommitUnit,
    pub(super) reply: oneshot::Sender<StoreResult<Receipt>>,
}

/// The writer task's state.
pub(super) struct Writer {
    pub(super) pool: Pool,
    pub(super) keys: Arc<ServiceKeys>,
    pub(super) root: SharedRoot,
    pub(super) data_keys: Arc<DataKeys>,
    pub(super) floors: Arc<SecretFloors>,
    pub(super) batches: Arc<BatchHistogram>,
    pub(super) health: Arc<WriteHealth>,
}

/// The writer's own connection, kept across batches so that readers crowding the pool never
/// delay a commit; replaced when it breaks.
struct Connection {
    pool: Pool,
    client: Option<Client>,
}

impl Connection {
    async fn take(&mut self) -> StoreResult<Client> {
        match self.client.take() {
            Some(client) if !client.is_closed() => Ok(client),
            _ => self.pool.get().await.map_err(pool_error),
        }
    }

    fn keep(&mut self, client: Client) {
        if !client.is_closed() {
            self.client = Some(client);
        }
    }
}

impl Writer {
    /// Runs until every sender is gone and the queue is drained.
    pub(super) async fn run(self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        let mut connection = Connection {
            pool: self.pool.clone(),
            client: None,
        };
        while let Some(first) = jobs.recv().await {
            let mut batch = drain(first, &mut jobs);
            self.batches.record(batch.len());
            // Tenant order is lock order; units of one tenant keep their arrival order.
            batch.sort_by(|a, b| a.unit.tenant.cmp(&b.unit.tenant));
            let (units, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|job| (job.unit, job.reply)).unzip();
            let outcome = match connection.take().await {
                Ok(mut client) => {
                    let outcome = self.commit(&mut client, units).await;
                    connection.keep(client);
                    outcome
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(outcomes) => {
                    // Only a commit that wrote (an applied unit) shows that writes go through.
                    if outcomes.iter().any(Result::is_ok) {
                        self.health.succeeded();
                    }
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(outcome);
                    }
                }
                Err(err) => {
                    // Contention between nodes is not a failing store.
                    if err.kind != ErrorKind::StateConflict {
                        self.health.failed();
                    }
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// Applies a batch (sorted by tenant) in one transaction; per-unit outcomes, or the error
    /// that refused the whole batch.
    async fn commit(
        &self,
        client: &mut Client,
        units: Vec<CommitUnit>,
    ) -> StoreResult<Vec<StoreResult<Receipt>>> {
        let mut tx = client.transaction().await.map_err(pg("begin"))?;
        let mut tenants: Vec<String> = units.iter().map(|u| u.tenant.as_str().to_owned()).collect();
        tenants.dedup();
        let mut heads = lock_heads(&tx, &tenants).await?;
        let mut state = BatchState {
            keys: &self.keys,
            root: &self.root,
            data_keys: &self.data_keys,
            floors: &self.floors,
            new_keys: HashMap::new(),
            moved: HashMap::new(),
        };
        let mut chained = HashSet::new();
        let mut outcomes = Vec::with_capacity(units.len());
        for unit in units {
            if state.lost_race(&unit) {
                outcomes.push(Err(StoreError::new(
                    ErrorKind::StateConflict,
                    "the secret changed since the snapshot",
                )));
                continue;
            }
            let tenant = unit.tenant.clone();
            let head = heads.get(&tenant).cloned().ok_or_else(|| {
                StoreError::new(
                    ErrorKind::Unavailable,
                    "a tenant's chain head is not locked",
                )
            })?;
            let savepoint = tx.savepoint("unit").await.map_err(pg("savepoint"))?;
            match apply(&savepoint, &state, &head, unit).await {
                Ok(applied) => {
                    savepoint.commit().await.map_err(pg("release savepoint"))?;
                    heads.insert(tenant.clone(), applied.head);
                    if let Some(key) = applied.new_key {
                        state.new_keys.insert(tenant.clone(), key);
                    }
                    if let Some((name, version)) = applied.moved {
                        state.moved.insert((tenant.clone(), name), version);
                    }
                    chained.insert(tenant);
                    outcomes.push(Ok(applied.receipt));
                }
                Err(e) => {
                    savepoint
                        .rollback()
                        .await
                        .map_err(pg("rollback to savepoint"))?;
                    outcomes.push(Err(e));
                }
            }
        }
        let BatchState {
            new_keys,
            moved: secrets,
            ..
        } = state;
        heads.retain(|tenant, _| chained.contains(tenant));
        write_heads(&tx, &heads).await?;
        tx.commit().await.map_err(pg("commit"))?;
        for (tenant, key) in new_keys {
            self.data_keys.put(tenant, key);
        }
        for (secret, version) in secrets {
            self.floors.raise(secret, version);
        }
        Ok(outcomes)
    }
}

/// Creates missing tenant rows, then locks the chain-head rows of `tenants` (sorted, distinct)
/// and reads them.
async fn lock_heads(
    client: &impl GenericClient,
    tenants: &[String],
) -> StoreResult<HashMap<TenantId, Head>> {
    const WHAT: &str = "audit head";
    sql::execute(
        client,
        "INSERT INTO tenants (tenant_id, audit_head)
         SELECT t, $2 FROM unnest($1::text[]) AS t ON CONFLICT DO NOTHING",
        &[&tenants, &GENESIS_DIGEST],
        WHAT,
    )
    .await?;
    let rows = sql::rows(
        client,
        "SELECT tenant_id, audit_seq, audit_head FROM tenants
         WHERE tenant_id = ANY($1) ORDER BY tenant_id FOR UPDATE",
        &[&tenants],
        WHAT,
    )
    .await?;
    rows.iter()
        .map(|row| {
            let tenant = TenantId::try_from(col::<String>(row, 0, WHAT)?)
                .map_err(|_| StoreError::new(ErrorKind::Corrupt, "a tenant id is invalid"))?;
            let head = Head {
                seq: col_u64(row, 1, WHAT)?,
                digest: col(row, 2, WHAT)?,
            };
            Ok((tenant, head))
        })
        .collect()
}

/// Stores the chain heads that moved, in one statement.
async fn write_heads(
    client: &impl GenericClient,
    heads: &HashMap<TenantId, Head>,
) -> StoreResult<()> {
    if heads.is_empty() {
        return Ok(());
    }
    let mut tenants = Vec::with_capacity(heads.len());
    let mut seqs = Vec::with_capacity(heads.len());
    let mut digests = Vec::with_capacity(heads.len());
    for (tenant, head) in heads {
        tenants.push(tenant.as_str());
        seqs.push(to_db(head.seq)?);
        digests.push(head.digest.as_str());
    }
    sql::execute(
        client,
        "UPDATE tenants SET audit_seq = h.seq, audit_head = h.digest
         FROM unnest($1::text[], $2::bigint[], $3::text[]) AS h(tenant_id, seq, digest)
         WHERE tenants.tenant_id = h.tenant_id",
        &[&tenants, &seqs, &digests],
        "audit head",
    )
    .await?;
    Ok(())
}
