//! The writer of one node and its group commit.
//!
//! Commit units arrive on a channel. The writer takes one, drains whatever else is queued (up to
//! [`crate::MAX_BATCH`]) and commits them all in one transaction, by the shared algorithm
//! ([`crate::commit`]): it takes the row lock of every tenant in the batch (`SELECT … FOR
//! UPDATE` on the chain-head rows, in byte order so that two nodes never wait on each other in a
//! cycle) and reads the state the batch needs, plans every unit, writes what the plan decided in
//! a handful of set-based statements, and commits once. Every unit is answered only after that
//! commit: with its receipt, or with its own refusal, or with the batch's error (nothing of it is
//! durable) if a write or the commit failed.
//!
//! The tenant row lock is what keeps several nodes correct: while a batch holds it, no other node
//! can append to that tenant's audit chain, move its secrets' state versions or take its
//! idempotency keys, so `seq` and `prev_digest` are assigned exactly once and every
//! compare-and-set is checked against the latest committed state.

use std::sync::Arc;

use deadpool_postgres::{Client, Pool};
use selene_kms_core::{SecretName, SecretSnapshot, ServiceKeys, TenantId};
use selene_kms_store::backend::{
    BatchHistogram, CommitUnit, ErrorKind, Needs, Receipt, SharedRoot, StoreResult, StoredPolicy,
    WriteHealth, Writes, drain, plan,
};
use tokio::sync::{mpsc, oneshot};

use crate::batch::{Ended, read_committed, write};
use crate::cache::VersionedCache;
use crate::error::{as_unavailable, pg, pool_error};
use crate::keys::DataKeys;

/// Secret snapshots tagged with their state version.
pub(crate) type SecretCache = VersionedCache<(TenantId, SecretName), Arc<SecretSnapshot>>;
/// Policies tagged with their version.
pub(crate) type PolicyCache = VersionedCache<TenantId, StoredPolicy>;

/// One unit and where to send its answer.
pub(crate) struct Job {
    pub(crate) unit: CommitUnit,
    pub(crate) reply: oneshot::Sender<StoreResult<Receipt>>,
}

/// The writer task's state.
pub(crate) struct Writer {
    pub(crate) pool: Pool,
    pub(crate) keys: Arc<ServiceKeys>,
    pub(crate) root: SharedRoot,
    pub(crate) data_keys: Arc<DataKeys>,
    pub(crate) secrets: Arc<SecretCache>,
    pub(crate) policies: Arc<PolicyCache>,
    pub(crate) batches: Arc<BatchHistogram>,
    pub(crate) health: Arc<WriteHealth>,
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
    pub(crate) async fn run(self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        let mut connection = Connection {
            pool: self.pool.clone(),
            client: None,
        };
        while let Some(first) = jobs.recv().await {
            let batch = drain(first, &mut jobs);
            self.batches.record(batch.len());
            let (units, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|job| (job.unit, job.reply)).unzip();
            let outcome = match connection.take().await {
                Ok(client) => {
                    let (outcome, client) = self.commit(client, units).await;
                    if let Some(client) = client {
                        connection.keep(client);
                    }
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

    /// Commits a batch in one transaction, begun with its reads and committed with its writes:
    /// per-unit outcomes, or the error that refused the whole batch (its transaction then
    /// rolled back); and the connection, unless its state is unknown.
    async fn commit(
        &self,
        client: Client,
        units: Vec<CommitUnit>,
    ) -> (StoreResult<Vec<StoreResult<Receipt>>>, Option<Client>) {
        let outcome = self.run_transaction(&client, units).await;
        if outcome.is_err() && client.batch_execute("ROLLBACK").await.is_err() {
            // Taken out of the pool and closed: a connection that may still be inside a
            // transaction is never used again.
            drop(Client::take(client));
            return (outcome, None);
        }
        (outcome, Some(client))
    }

    async fn run_transaction(
        &self,
        client: &Client,
        units: Vec<CommitUnit>,
    ) -> StoreResult<Vec<StoreResult<Receipt>>> {
        let needs = Needs::of(&units);
        let committed = read_committed(
            client,
            &needs,
            &self.keys,
            &self.root,
            &self.data_keys,
            &self.secrets,
        )
        .await?;
        let decided = self
            .root
            .with(|root| plan(&self.keys, root, committed, units));
        // A failed write refuses the batch as "cannot write now", unless it lost a race to
        // another node (serialization failure, deadlock), which the host runs again.
        let writing = std::time::Instant::now();
        let ended = write(client, &self.keys, &decided.writes)
            .await
            .map_err(|e| match e.kind {
                ErrorKind::StateConflict => e,
                _ => as_unavailable(e),
            })?;
        if ended == Ended::Open {
            client.batch_execute("COMMIT").await.map_err(pg("commit"))?;
        }
        self.health.flushed(writing.elapsed());
        let Writes {
            snapshots,
            stored_policies,
            new_keys,
            ..
        } = decided.writes;
        for (tenant, key) in new_keys {
            self.data_keys.put(tenant, key);
        }
        for (key, snapshot) in snapshots {
            self.secrets.put(key, snapshot.state_version, snapshot);
        }
        for (tenant, policy) in stored_policies {
            self.policies.put(tenant, policy.version, policy);
        }
        Ok(decided.outcomes)
    }
}
