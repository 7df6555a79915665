//! The single writer of the embedded store and its group commit.
//!
//! The writer owns the read-write connection. It blocks for one job, drains whatever else is
//! queued, and commits the units among them in one transaction, by the shared algorithm
//! ([`crate::commit`]): it reads the state they need, plans them, and writes what the plan
//! decided. While the syncer is still busy with an earlier flush it keeps draining into the same
//! transaction (up to [`crate::MAX_BATCH`] units): a commit made then would wait for the next
//! flush anyway, and one commit writes each touched page to the log once. It then commits,
//! publishes cache updates, and hands the answers to the syncer, which answers them after the
//! flush (one `fdatasync` for every batch queued by then). A failed write (disk full, read-only,
//! database gone) rolls the whole batch back and refuses every unit in it, as does a failed final
//! commit. Nothing is published unless the batch committed; a batch that revoked a principal or
//! token hands its new authentication epoch to the syncer, which publishes it once the batch is
//! durable and before answering it. Maintenance (pruning, root-key rotation) runs after the batch, each task in a transaction of its own; a root-key
//! rotation replaces the store's key together with its commit, so readers never meet a data key
//! wrapped under a root the store does not hold yet.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, TransactionBehavior};
use selene_kms_core::{ServiceKeys, TenantId};
use selene_kms_store::backend::{
    BatchHistogram, CommitUnit, ErrorKind, Head, MAX_BATCH, Needs, Receipt, RootKey, SharedRoot,
    StoreError, StoreResult, Writes, drain, plan, rewrap_all, sealed_already,
    sealed_from_before_macs, take_queued, to_db, to_db_saturating,
};
use tokio::sync::{mpsc, oneshot};

use crate::batch::{Pending, read_committed, write};
use crate::cache::Cache;
use crate::db_err;
use crate::identity::FileIdentity;
use crate::syncer::Syncer;

type Reply = oneshot::Sender<StoreResult<Receipt>>;

/// Work for the writer.
pub(crate) enum Job {
    /// A request's commit unit: the hot path.
    Commit { unit: Box<CommitUnit>, reply: Reply },
    /// A rare maintenance task, committed on its own after the batch it arrived with.
    Maintenance { task: Maintenance, reply: Reply },
}

/// Maintenance work for the writer.
pub(crate) enum Maintenance {
    Prune {
        idempotency_before_ms: u64,
        revocations_before_ms: u64,
    },
    RotateRoot {
        new_root: Box<RootKey>,
    },
    /// Appends a signed manifest unless its sequence number is taken; the receipt's
    /// `audit_seq` is 1 when it was appended.
    AppendManifest {
        seq: u64,
        full: bool,
        json: String,
    },
    /// Seals the records written before records carried MACs; the receipt's `audit_seq` is
    /// how many.
    SealRecordsFromBeforeMacs,
}

pub(crate) struct Writer {
    conn: Connection,
    keys: Arc<ServiceKeys>,
    root: SharedRoot,
    cache: Arc<Cache>,
    batches: Arc<BatchHistogram>,
    heads: HashMap<TenantId, Head>,
    syncer: Syncer,
    file: FileIdentity,
}

fn unavailable(what: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| {
        let inner = db_err(e);
        StoreError::new(ErrorKind::Unavailable, format!("{what}: {}", inner.message))
    }
}

/// Units waiting for the batch's commit, with their answers so far.
type Answers = Vec<(Reply, StoreResult<Receipt>)>;

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        keys: Arc<ServiceKeys>,
        root: SharedRoot,
        cache: Arc<Cache>,
        batches: Arc<BatchHistogram>,
        syncer: Syncer,
        file: FileIdentity,
    ) -> Self {
        Self {
            syncer,
            file,
            conn,
            keys,
            root,
            cache,
            batches,
            heads: HashMap::new(),
        }
    }

    pub(crate) fn run(mut self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        while let Some(first) = jobs.blocking_recv() {
            self.run_batch(first, &mut jobs);
        }
    }

    /// Why nothing can be written now, if so.
    fn refusal(&self) -> Option<StoreError> {
        let why = if self.syncer.health().is_stopped() {
            "the store stopped after a failed flush; restart it"
        } else if !self.file.still_there() {
            "the database file was removed or replaced under the store"
        } else {
            return None;
        };
        Some(StoreError::new(ErrorKind::Unavailable, why))
    }

    fn run_batch(&mut self, first: Job, jobs: &mut mpsc::UnboundedReceiver<Job>) {
        let mut units = Vec::new();
        let mut tasks = Vec::new();
        sort_jobs(drain(first, jobs), &mut units, &mut tasks);
        if let Some(err) = self.refusal() {
            self.syncer.health().failed();
            for (_, reply) in units {
                let _ = reply.send(Err(err.clone()));
            }
            for (_, reply) in tasks {
                let _ = reply.send(Err(err.clone()));
            }
            return;
        }
        if !units.is_empty() {
            self.commit_units(units, jobs, &mut tasks);
        }
        for (task, reply) in tasks {
            self.maintain(task, reply);
        }
    }

    /// Commits `units`, and any queued while the syncer is still flushing, in one transaction.
    /// Maintenance that arrives meanwhile is left in `tasks`.
    fn commit_units(
        &mut self,
        mut units: Vec<(Box<CommitUnit>, Reply)>,
        jobs: &mut mpsc::UnboundedReceiver<Job>,
        tasks: &mut Vec<(Maintenance, Reply)>,
    ) {
        let health = self.syncer.health();
        let tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                health.failed();
                let err = unavailable("begin")(e);
                for (_, reply) in units {
                    let _ = reply.send(Err(err.clone()));
                }
                return;
            }
        };
        let mut answers: Answers = Vec::new();
        let mut published: Vec<Writes> = Vec::new();
        // The authentication epoch the last revoking round advanced to.
        let mut epoch = None;
        // What earlier rounds of this transaction wrote, over what is committed.
        let mut pending = Pending {
            heads: self.heads.clone(),
            ..Pending::default()
        };
        let mut fault = None;
        loop {
            let (batch, replies): (Vec<_>, Vec<_>) =
                units.drain(..).map(|(unit, reply)| (*unit, reply)).unzip();
            match round(&tx, &self.keys, &self.root, &self.cache, &pending, batch) {
                Ok((outcomes, writes, advanced)) => {
                    epoch = advanced.or(epoch);
                    pending.extend(&writes);
                    answers.extend(replies.into_iter().zip(outcomes));
                    published.push(writes);
                }
                Err(e) => {
                    answers.extend(replies.into_iter().map(|r| (r, Err(e.clone()))));
                    fault = Some(e);
                }
            }
            // While the syncer is still flushing, a commit made now would wait for the next
            // flush anyway: keep the transaction open for the work already queued, so that one
            // commit writes each touched page once instead of once per round.
            if fault.is_some() || answers.len() >= MAX_BATCH || !self.syncer.is_flushing() {
                break;
            }
            let mut queued = Vec::new();
            match jobs.try_recv() {
                Ok(job) => {
                    queued.push(job);
                    take_queued(&mut queued, jobs, MAX_BATCH - answers.len());
                }
                Err(_) => break,
            }
            sort_jobs(queued, &mut units, tasks);
            if units.is_empty() {
                break;
            }
        }
        self.batches.record(answers.len());
        // A batch whose units were all refused writes nothing, so its commit proves nothing
        // about the disk: only one that wrote counts as a success for readiness.
        let wrote = published.iter().any(|w| !w.is_empty());
        let committed = match fault {
            Some(f) => {
                drop(tx);
                Err(f)
            }
            None => tx.commit().map_err(unavailable("commit")),
        };
        match committed {
            Ok(()) => {
                if wrote {
                    health.succeeded();
                }
                self.heads = pending.heads;
                // Safe before the flush: see the ordering argument in `syncer`.
                for writes in published {
                    self.publish(writes);
                }
                self.syncer.submit(answers, epoch);
            }
            Err(err) => {
                // Nothing of this batch was committed: refuse every unit.
                health.failed();
                for (reply, outcome) in answers {
                    let _ = reply.send(outcome.and(Err(err.clone())));
                }
            }
        }
    }

    /// Makes a committed batch's state visible to readers.
    fn publish(&self, writes: Writes) {
        self.cache.moved.note(&writes.heads);
        for ((tenant, name), snapshot) in writes.snapshots {
            self.cache.offer_secret(&tenant, &name, snapshot);
        }
        for (tenant, policy) in writes.stored_policies {
            self.cache.offer_policy(&tenant, policy);
        }
        for (tenant, key) in writes.new_keys {
            self.cache.put_data_key(&tenant, key);
        }
    }

    /// Runs one maintenance task in a transaction of its own and answers it after the flush.
    fn maintain(&mut self, task: Maintenance, reply: Reply) {
        let outcome = self.run_task(task);
        match outcome {
            Ok(receipt) => {
                self.syncer.health().succeeded();
                self.syncer.submit(vec![(reply, Ok(receipt))], None);
            }
            Err(e) => {
                if e.kind == ErrorKind::Unavailable {
                    self.syncer.health().failed();
                }
                let _ = reply.send(Err(e));
            }
        }
    }

    fn run_task(&mut self, task: Maintenance) -> StoreResult<Receipt> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable("begin"))?;
        match task {
            Maintenance::Prune {
                idempotency_before_ms,
                revocations_before_ms,
            } => {
                let records = tx
                    .execute(
                        crate::schema::PRUNE_IDEMPOTENCY,
                        [to_db_saturating(idempotency_before_ms)],
                    )
                    .map_err(db_err)?;
                let revocations = tx
                    .execute(
                        "DELETE FROM revoked_refs WHERE expires_at_ms < ?1",
                        [to_db_saturating(revocations_before_ms)],
                    )
                    .map_err(db_err)?;
                tx.commit().map_err(unavailable("commit"))?;
                let pruned = records.saturating_add(revocations);
                Ok(receipt(u64::try_from(pruned).unwrap_or(u64::MAX)))
            }
            Maintenance::AppendManifest { seq, full, json } => {
                let appended = tx
                    .execute(
                        "INSERT INTO manifests (seq, is_full, manifest) VALUES (?1, ?2, ?3)
                         ON CONFLICT (seq) DO NOTHING",
                        (to_db(seq)?, full, json),
                    )
                    .map_err(db_err)?;
                tx.commit().map_err(unavailable("commit"))?;
                Ok(receipt(u64::try_from(appended).unwrap_or(0)))
            }
            Maintenance::SealRecordsFromBeforeMacs => {
                let sealed = seal_records_from_before_macs(&tx, &self.keys)?;
                tx.commit().map_err(unavailable("commit"))?;
                Ok(receipt(sealed))
            }
            Maintenance::RotateRoot { new_root } => {
                let rewrapped = rotate_root(&tx, &self.root, &new_root)?;
                // Readers must not meet keys wrapped under the new root while the store still
                // holds the old one: they wait for the commit and the replacement together.
                self.root.replace_if(*new_root, || {
                    tx.commit().map_err(unavailable("commit"))?;
                    self.cache.forget_data_keys();
                    Ok(())
                })?;
                Ok(receipt(rewrapped))
            }
        }
    }
}

fn seal_records_from_before_macs(conn: &Connection, keys: &ServiceKeys) -> StoreResult<u64> {
    let manifests: i64 = conn
        .query_row("SELECT COUNT(*) FROM manifests", [], |r| r.get(0))
        .map_err(db_err)?;
    if manifests > 0 {
        return Err(sealed_already());
    }
    let stored: Vec<(i64, String)> = conn
        .prepare("SELECT id, record FROM audit")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(db_err)?;
    let texts: Vec<&str> = stored.iter().map(|(_, text)| text.as_str()).collect();
    let sealed = sealed_from_before_macs(keys, &texts)?;
    for ((id, _), record) in stored.iter().zip(&sealed) {
        conn.execute("UPDATE audit SET record = ?2 WHERE id = ?1", (id, record))
            .map_err(db_err)?;
    }
    Ok(u64::try_from(sealed.len()).unwrap_or(u64::MAX))
}

/// What a round decided: each unit's outcome, its writes, and the authentication epoch it
/// advanced to, if it revoked a principal or token.
type Round = (Vec<StoreResult<Receipt>>, Writes, Option<u64>);

/// One round of a batch: read, plan, write. An error faults the whole transaction.
fn round(
    conn: &Connection,
    keys: &ServiceKeys,
    root: &SharedRoot,
    cache: &Cache,
    pending: &Pending,
    units: Vec<CommitUnit>,
) -> StoreResult<Round> {
    let needs = Needs::of(&units);
    let committed = read_committed(conn, keys, &needs, cache, pending, root)?;
    let chained: std::collections::HashSet<TenantId> = committed.heads.keys().cloned().collect();
    let decided = root.with(|root| plan(keys, root, committed, units));
    // Rows for tenants whose first record this batch writes; a refused unit creates none.
    let new_tenants: Vec<TenantId> = decided
        .writes
        .heads
        .keys()
        .filter(|t| !chained.contains(*t))
        .cloned()
        .collect();
    let epoch = write(conn, keys, &decided.writes, &new_tenants)?;
    Ok((decided.outcomes, decided.writes, epoch))
}

/// Splits jobs into commit units and maintenance tasks, keeping their order.
fn sort_jobs(
    jobs: Vec<Job>,
    units: &mut Vec<(Box<CommitUnit>, Reply)>,
    tasks: &mut Vec<(Maintenance, Reply)>,
) {
    for job in jobs {
        match job {
            Job::Commit { unit, reply } => units.push((unit, reply)),
            Job::Maintenance { task, reply } => tasks.push((task, reply)),
        }
    }
}

fn receipt(audit_seq: u64) -> Receipt {
    Receipt {
        audit_seq,
        bundle_json: None,
        policy_version: None,
    }
}

/// Rewrites every wrapped key under `new_root`; returns how many data keys.
fn rotate_root(conn: &Connection, root: &SharedRoot, new_root: &RootKey) -> StoreResult<u64> {
    let rows: Vec<(String, Vec<u8>)> = {
        let mut stmt = conn
            .prepare("SELECT tenant_id, wrapped_dek FROM tenants WHERE wrapped_dek IS NOT NULL")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };
    let service: Vec<u8> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'service_secret'",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    let rewrapped = root.with(|old| rewrap_all(old, new_root, &service, rows))?;
    for (tenant, wrapped) in &rewrapped.data_keys {
        conn.execute(
            "UPDATE tenants SET wrapped_dek = ?2 WHERE tenant_id = ?1",
            (tenant.as_str(), wrapped),
        )
        .map_err(db_err)?;
    }
    conn.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'service_secret'",
        [&rewrapped.service],
    )
    .map_err(db_err)?;
    Ok(u64::try_from(rewrapped.data_keys.len()).unwrap_or(u64::MAX))
}
