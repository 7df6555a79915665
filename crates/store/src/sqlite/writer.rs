//! The single writer of the embedded store and its group commit.
//!
//! The writer owns the read-write connection. It blocks for one job, drains whatever else is
//! queued, applies them all inside one transaction, and, while the syncer is still busy with an
//! earlier flush, keeps draining into the same transaction (up to [`crate::MAX_BATCH`] units):
//! a commit made then would wait for the next flush anyway, and one commit writes each touched
//! page to the log once. It then commits, publishes cache updates, and hands the answers to the
//! syncer, which answers them after the flush (one `fdatasync` for every batch queued by then). A commit unit runs every check
//! before its first write, so a refused unit leaves no trace without the cost of a savepoint; a
//! failed write (disk full, read-only, database gone) rolls the whole batch back and refuses every
//! unit in it, as does a failed final commit. Nothing is published unless the batch committed.
//! A root-key rotation applies to the units after it in the same transaction (they wrap new
//! data keys under the new key) and replaces the store's key once the batch has committed.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};
use selene_kms_core::audit::GENESIS_DIGEST;
use selene_kms_core::state::mark_revoked;
use selene_kms_core::{
    AuditRecord, Policy, SecretKind, SecretName, SecretSnapshot, ServiceKeys, StateChange,
    TenantId, VersionState, refs,
};
use tokio::sync::{mpsc, oneshot};

use super::cache::Cache;
use super::identity::FileIdentity;
use super::syncer::Syncer;
use super::{db_err, load_snapshot, read_data_key};
use crate::chain::{Head, chain};
use crate::envelope::{
    DataKey, RootKey, SERVICE_SECRET_LABEL, SharedRoot, Slot, dek_label, generate_material,
};
use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::model::{Change, CommitUnit, NewSecret, Receipt, Role, StoredPolicy, encode_policy};
use crate::stats::{BatchHistogram, MAX_BATCH, drain, take_queued};

type Reply = oneshot::Sender<StoreResult<Receipt>>;

/// Work for the writer.
pub(crate) enum Job {
    /// A request's commit unit: the hot path, applied without a savepoint.
    Commit { unit: Box<CommitUnit>, reply: Reply },
    /// A rare maintenance task, applied in a savepoint of its own.
    Maintenance { task: Maintenance, reply: Reply },
}

/// Maintenance work for the writer.
pub(crate) enum Maintenance {
    PutToken {
        token_hash: [u8; 32],
        role: Role,
        label: String,
    },
    Prune {
        idempotency_before_ms: u64,
        revocations_before_ms: u64,
    },
    RotateRoot {
        new_root: Box<RootKey>,
    },
}

/// Cache updates that become visible only once their batch has committed.
enum Publish {
    Secret(TenantId, SecretName, Arc<SecretSnapshot>),
    Policy(TenantId, StoredPolicy),
    DataKey(TenantId, Arc<DataKey>),
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

/// Everything a job may touch while the batch's transaction is open.
struct BatchContext<'a> {
    keys: &'a ServiceKeys,
    root: &'a SharedRoot,
    /// A root key rotated earlier in this transaction: what later units wrap and unwrap with.
    rotated_root: Option<Box<RootKey>>,
    cache: &'a Cache,
    committed_heads: &'a HashMap<TenantId, Head>,
    heads: HashMap<TenantId, Head>,
}

impl BatchContext<'_> {
    /// Runs `f` with the root key of this transaction's view of the store.
    fn with_root<T>(&self, f: impl FnOnce(&RootKey) -> T) -> T {
        match &self.rotated_root {
            Some(root) => f(root),
            None => self.root.with(f),
        }
    }
}

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

    fn run_batch(&mut self, first: Job, jobs: &mut mpsc::UnboundedReceiver<Job>) {
        let Self {
            conn,
            keys,
            root,
            cache,
            batches,
            heads,
            syncer,
            file,
        } = self;
        let health = syncer.health();
        let mut chunk = drain(first, jobs);
        let refusal = if health.is_stopped() {
            Some("the store stopped after a failed flush; restart it")
        } else if !file.still_there() {
            Some("the database file was removed or replaced under the store")
        } else {
            None
        };
        if let Some(why) = refusal {
            health.failed();
            let err = StoreError::new(ErrorKind::Unavailable, why);
            for job in chunk {
                answer(job, Err(err.clone()));
            }
            return;
        }
        let changes_before = conn.total_changes();
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                health.failed();
                let err = unavailable("begin")(e);
                for job in chunk {
                    answer(job, Err(err.clone()));
                }
                return;
            }
        };
        let mut ctx = BatchContext {
            keys,
            root,
            rotated_root: None,
            cache,
            committed_heads: heads,
            heads: HashMap::new(),
        };
        let mut results: Vec<(Reply, StoreResult<Receipt>)> = Vec::with_capacity(chunk.len());
        let mut publish: Vec<Publish> = Vec::new();
        let mut fault: Option<StoreError> = None;
        loop {
            for job in chunk.drain(..) {
                let (reply, outcome) = match (job, &fault) {
                    (Job::Commit { reply, .. } | Job::Maintenance { reply, .. }, Some(f)) => {
                        (reply, Err(f.clone()))
                    }
                    (Job::Commit { unit, reply }, None) => {
                        let outcome = match apply_commit(&tx, &mut ctx, *unit) {
                            Ok((receipt, effects)) => {
                                publish.extend(effects);
                                Ok(receipt)
                            }
                            Err(UnitError::Refused(e)) => Err(e),
                            Err(UnitError::Fault(e)) => {
                                fault = Some(e.clone());
                                Err(e)
                            }
                        };
                        (reply, outcome)
                    }
                    (Job::Maintenance { task, reply }, None) => {
                        let outcome = apply_maintenance(&mut tx, &mut ctx, task);
                        // A failed write may have made SQLite roll back the whole transaction
                        // (full disk, I/O error): then nothing after it can join this batch.
                        if let Err(e) = &outcome
                            && (e.kind == ErrorKind::Unavailable || tx.is_autocommit())
                        {
                            fault = Some(e.clone());
                        }
                        (reply, outcome)
                    }
                };
                results.push((reply, outcome));
            }
            // While the syncer is still flushing, a commit made now would wait for the next flush
            // anyway: keep the transaction open for the work already queued, so that one commit
            // writes each touched page once instead of once per chunk.
            if fault.is_some() || results.len() >= MAX_BATCH || !syncer.is_flushing() {
                break;
            }
            match jobs.try_recv() {
                Ok(job) => {
                    chunk.push(job);
                    take_queued(&mut chunk, jobs, MAX_BATCH - results.len());
                }
                Err(_) => break,
            }
        }
        batches.record(results.len());
        let new_heads = std::mem::take(&mut ctx.heads);
        let rotated_root = ctx.rotated_root.take();
        // A batch whose units were all refused writes nothing, so its commit proves nothing
        // about the disk: only one that wrote counts as a success for readiness.
        let wrote = tx.total_changes() != changes_before;
        let committed = match (fault, rotated_root) {
            // A write failed: roll the whole batch back and refuse every unit in it.
            (Some(f), _) => {
                drop(tx);
                Err(f)
            }
            (None, None) => tx.commit().map_err(unavailable("commit")),
            // Readers must not meet keys wrapped under the new root while the store still
            // holds the old one: they wait for the commit and the replacement together.
            (None, Some(new_root)) => root.replace_if(*new_root, || {
                tx.commit().map_err(unavailable("commit"))?;
                cache.forget_data_keys();
                Ok(())
            }),
        };
        match committed {
            Ok(()) => {
                if wrote {
                    health.succeeded();
                }
                heads.extend(new_heads);
                // Safe before the flush: see the ordering argument in `syncer`.
                for p in publish {
                    match p {
                        Publish::Secret(t, n, s) => {
                            cache.offer_secret(&t, &n, s);
                        }
                        Publish::Policy(t, p) => {
                            cache.offer_policy(&t, p);
                        }
                        Publish::DataKey(t, k) => cache.put_data_key(&t, k),
                    }
                }
                syncer.submit(results);
            }
            Err(err) => {
                // Nothing of this batch was committed: forget cached heads, refuse every job.
                health.failed();
                heads.clear();
                for (reply, outcome) in results {
                    let _ = reply.send(outcome.and(Err(err.clone())));
                }
            }
        }
    }
}

/// Runs a maintenance task in a savepoint of its own: a failed task leaves no trace and
/// refuses only itself. A rotated root key is what the rest of the batch then works with, and
/// what the store takes once the batch has committed.
fn apply_maintenance(
    tx: &mut Transaction<'_>,
    ctx: &mut BatchContext<'_>,
    task: Maintenance,
) -> StoreResult<Receipt> {
    let mut sp = tx.savepoint().map_err(unavailable("savepoint"))?;
    match run_maintenance(&sp, ctx, task) {
        Ok((receipt, rotated)) => {
            sp.commit().map_err(unavailable("release savepoint"))?;
            if rotated.is_some() {
                ctx.rotated_root = rotated;
            }
            Ok(receipt)
        }
        Err(e) => {
            let _ = sp.rollback();
            Err(e)
        }
    }
}

fn answer(job: Job, outcome: StoreResult<Receipt>) {
    let (Job::Commit { reply, .. } | Job::Maintenance { reply, .. }) = job;
    let _ = reply.send(outcome);
}

fn receipt(audit_seq: u64) -> Receipt {
    Receipt {
        audit_seq,
        bundle_json: None,
        policy_version: None,
    }
}

/// A maintenance task's receipt, and the root key it rotated to, if it was a rotation.
type Maintained = StoreResult<(Receipt, Option<Box<RootKey>>)>;

/// Runs a maintenance task.
fn run_maintenance(conn: &Connection, ctx: &BatchContext<'_>, task: Maintenance) -> Maintained {
    match task {
        Maintenance::PutToken {
            token_hash,
            role,
            label,
        } => conn
            .execute(
                "INSERT INTO tokens (token_hash, role, label) VALUES (?1, ?2, ?3)",
                (&token_hash[..], role.name(), label.as_str()),
            )
            .map(|_| (receipt(0), None))
            .map_err(db_err),
        Maintenance::Prune {
            idempotency_before_ms,
            revocations_before_ms,
        } => {
            let a = conn
                .execute(
                    "DELETE FROM idempotency WHERE created_at_ms < ?1",
                    [idempotency_before_ms as i64],
                )
                .map_err(db_err)?;
            let b = conn
                .execute(
                    "DELETE FROM revoked_refs WHERE expires_at_ms < ?1",
                    [revocations_before_ms as i64],
                )
                .map_err(db_err)?;
            Ok((receipt((a + b) as u64), None))
        }
        Maintenance::RotateRoot { new_root } => rotate_root(conn, ctx, new_root),
    }
}

fn rotate_root(conn: &Connection, ctx: &BatchContext<'_>, new_root: Box<RootKey>) -> Maintained {
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
    let rewrapped = ctx.with_root(|old| -> StoreResult<u64> {
        let mut rewrapped = 0u64;
        for (tenant, wrapped) in &rows {
            let tenant = TenantId::try_from(tenant.as_str())
                .map_err(|_| StoreError::new(ErrorKind::Corrupt, "a tenant id is invalid"))?;
            conn.execute(
                "UPDATE tenants SET wrapped_dek = ?2 WHERE tenant_id = ?1",
                (
                    tenant.as_str(),
                    old.rewrap(&new_root, &dek_label(&tenant), wrapped)?,
                ),
            )
            .map_err(db_err)?;
            rewrapped += 1;
        }
        conn.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'service_secret'",
            [old.rewrap(&new_root, SERVICE_SECRET_LABEL, &service)?],
        )
        .map_err(db_err)?;
        Ok(rewrapped)
    })?;
    Ok((receipt(rewrapped), Some(new_root)))
}

fn head_of(conn: &Connection, ctx: &BatchContext<'_>, tenant: &TenantId) -> StoreResult<Head> {
    if let Some(h) = ctx
        .heads
        .get(tenant.as_str())
        .or_else(|| ctx.committed_heads.get(tenant.as_str()))
    {
        return Ok(h.clone());
    }
    // The head is the tenant's last record; a tenant without one starts its chain.
    let last: Option<String> = conn
        .prepare_cached("SELECT record FROM audit WHERE tenant_id = ?1 ORDER BY seq DESC LIMIT 1")
        .map_err(unavailable("audit head"))?
        .query_row([tenant.as_str()], |r| r.get(0))
        .optional()
        .map_err(unavailable("audit head"))?;
    match last {
        None => Ok(Head {
            seq: 0,
            digest: GENESIS_DIGEST.to_owned(),
        }),
        Some(json) => {
            let record: AuditRecord = serde_json::from_str(&json)
                .map_err(|_| StoreError::new(ErrorKind::Corrupt, "the last audit record"))?;
            Ok(Head {
                seq: record.seq,
                digest: record.digest,
            })
        }
    }
}

/// Why a commit unit did not apply.
enum UnitError {
    /// A check refused it before it wrote anything: only this unit is refused.
    Refused(StoreError),
    /// A write (or a read) failed: the whole batch is rolled back.
    Fault(StoreError),
}

type UnitResult<T> = Result<T, UnitError>;

fn fault(what: &'static str) -> impl Fn(rusqlite::Error) -> UnitError {
    move |e| UnitError::Fault(unavailable(what)(e))
}

fn refused(kind: ErrorKind, message: &str) -> UnitError {
    UnitError::Refused(StoreError::new(kind, message))
}

impl From<StoreError> for UnitError {
    fn from(e: StoreError) -> Self {
        Self::Fault(e)
    }
}

/// A change whose checks passed, holding what the write phase needs.
enum Planned {
    None,
    Secret {
        name: SecretName,
        expected: u64,
        change: StateChange,
        staged: Option<Vec<u8>>,
    },
    Create(NewSecret),
    Stage {
        name: SecretName,
        material: selene_kms_core::SecretMaterial,
        state_version: u64,
    },
    Policy(Box<Policy>, String),
}

/// Applies one unit: every check first (reads only), then the writes. A refused unit has
/// written nothing, so no savepoint is needed; a failed write faults the whole batch.
fn apply_commit(
    conn: &Connection,
    ctx: &mut BatchContext<'_>,
    unit: CommitUnit,
) -> UnitResult<(Receipt, Vec<Publish>)> {
    let CommitUnit {
        tenant,
        change,
        audit,
        idempotency,
        bundle,
    } = unit;
    let planned = plan_change(conn, &tenant, change)?;
    let head = head_of(conn, ctx, &tenant)?;
    let chained = chain(ctx.keys, &tenant, &head, audit, bundle)?;
    // The idempotency record is the first write: when the key is taken, nothing was written.
    if let Some(idem) = idempotency {
        let bytes = chained.idempotency_bytes();
        let inserted = conn
            .prepare_cached(
                "INSERT INTO idempotency (tenant_id, caller, key, fingerprint, bundle, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            )
            .map_err(fault("idempotency write"))?
            .execute((
                idem.scope.tenant.as_str(),
                idem.scope.caller.as_str(),
                idem.scope.key.as_str(),
                &idem.fingerprint[..],
                bytes,
                chained.at_ms as i64,
            ))
            .map_err(fault("idempotency write"))?;
        if inserted == 0 {
            return Err(refused(
                ErrorKind::IdempotencyTaken,
                "the idempotency key is already taken",
            ));
        }
    }
    // A tenant with a chain head in memory has its row already.
    if head.seq == 0 {
        conn.prepare_cached("INSERT OR IGNORE INTO tenants (tenant_id) VALUES (?1)")
            .map_err(fault("tenant"))?
            .execute([tenant.as_str()])
            .map_err(fault("tenant"))?;
    }
    let mut publish = Vec::new();
    let policy_version = write_change(conn, ctx, &tenant, planned, &mut publish)?;
    let seq = chained.head.seq;
    conn.prepare_cached("INSERT INTO audit (tenant_id, seq, record) VALUES (?1, ?2, ?3)")
        .map_err(fault("audit write"))?
        .execute((tenant.as_str(), seq as i64, chained.record.as_str()))
        .map_err(fault("audit write"))?;
    if let Some(checkpoint) = &chained.checkpoint {
        conn.prepare_cached(
            "INSERT INTO checkpoints (tenant_id, seq, checkpoint) VALUES (?1, ?2, ?3)",
        )
        .map_err(fault("checkpoint write"))?
        .execute((tenant.as_str(), seq as i64, checkpoint.as_str()))
        .map_err(fault("checkpoint write"))?;
    }
    // Last, so that only an applied unit moves the head.
    ctx.heads.insert(tenant, chained.head);
    Ok((
        Receipt {
            audit_seq: seq,
            bundle_json: chained.bundle,
            policy_version,
        },
        publish,
    ))
}

fn data_key(
    conn: &Connection,
    ctx: &BatchContext<'_>,
    tenant: &TenantId,
    publish: &mut Vec<Publish>,
) -> StoreResult<Arc<DataKey>> {
    if let Some(k) = ctx.cache.data_key(tenant) {
        return Ok(k);
    }
    let key = ctx.with_root(|root| -> StoreResult<DataKey> {
        if let Some(key) = read_data_key(conn, root, tenant)? {
            return Ok(key);
        }
        let (key, wrapped) = root.new_data_key(tenant)?;
        conn.execute(
            "UPDATE tenants SET wrapped_dek = ?2 WHERE tenant_id = ?1",
            (tenant.as_str(), wrapped),
        )
        .map_err(db_err)?;
        Ok(key)
    })?;
    let key = Arc::new(key);
    publish.push(Publish::DataKey(tenant.clone(), key.clone()));
    Ok(key)
}

/// The check phase: reads only.
fn plan_change(conn: &Connection, tenant: &TenantId, change: Change) -> UnitResult<Planned> {
    Ok(match change {
        Change::None => Planned::None,
        Change::Secret {
            name,
            expected_state_version,
            change,
        } => {
            let (_, state_version) = secret_head(conn, tenant, &name)?;
            if state_version != expected_state_version {
                return Err(refused(
                    ErrorKind::StateConflict,
                    "the secret changed since the snapshot",
                ));
            }
            let staged = match change {
                StateChange::Rotate {
                    from_staged: true, ..
                } => Some(
                    conn.query_row(
                        "SELECT staged FROM secrets WHERE tenant_id = ?1 AND secret_name = ?2",
                        [tenant.as_str(), name.as_str()],
                        |r| r.get::<_, Option<Vec<u8>>>(0),
                    )
                    .map_err(fault("staged read"))?
                    .ok_or_else(|| refused(ErrorKind::StateConflict, "no staged material"))?,
                ),
                _ => None,
            };
            Planned::Secret {
                name,
                expected: expected_state_version,
                change,
                staged,
            }
        }
        Change::CreateSecret(new) => {
            let exists = conn
                .prepare_cached("SELECT 1 FROM secrets WHERE tenant_id = ?1 AND secret_name = ?2")
                .map_err(fault("secret read"))?
                .exists([tenant.as_str(), new.name.as_str()])
                .map_err(fault("secret read"))?;
            if exists {
                return Err(refused(
                    ErrorKind::AlreadyExists,
                    "the secret already exists",
                ));
            }
            Planned::Create(new)
        }
        Change::StageMaterial { name, material } => {
            let (kind, state_version) = secret_head(conn, tenant, &name)?;
            if kind != SecretKind::Imported {
                return Err(refused(
                    ErrorKind::Invalid,
                    "only imported secrets take staged material",
                ));
            }
            Planned::Stage {
                name,
                material,
                state_version,
            }
        }
        Change::PutPolicy(doc) => {
            let (policy, json) = encode_policy(&doc).map_err(UnitError::Refused)?;
            Planned::Policy(Box::new(policy), json)
        }
    })
}

/// The write phase; returns the new policy version for a policy change.
fn write_change(
    conn: &Connection,
    ctx: &BatchContext<'_>,
    tenant: &TenantId,
    planned: Planned,
    publish: &mut Vec<Publish>,
) -> UnitResult<Option<u64>> {
    match planned {
        Planned::None => {}
        Planned::Secret {
            name,
            expected,
            change,
            staged,
        } => {
            let snapshot =
                write_secret_change(conn, ctx, tenant, &name, expected, &change, staged, publish)?;
            publish.push(Publish::Secret(tenant.clone(), name, Arc::new(snapshot)));
        }
        Planned::Create(new) => create_secret(conn, ctx, tenant, new, publish)?,
        Planned::Stage {
            name,
            material,
            state_version,
        } => {
            let dek = data_key(conn, ctx, tenant, publish)?;
            let sealed = dek.seal(tenant, &name, Slot::Staged, &material)?;
            conn.execute(
                "UPDATE secrets SET staged = ?3, state_version = ?4
                 WHERE tenant_id = ?1 AND secret_name = ?2",
                (
                    tenant.as_str(),
                    name.as_str(),
                    sealed,
                    state_version as i64 + 1,
                ),
            )
            .map_err(fault("staging"))?;
            let snapshot = load_snapshot(conn, tenant, &name)?
                .ok_or_else(|| StoreError::new(ErrorKind::NotFound, "no such secret"))?;
            publish.push(Publish::Secret(tenant.clone(), name, Arc::new(snapshot)));
        }
        Planned::Policy(policy, json) => {
            let version: i64 = conn
                .query_row(
                    "UPDATE tenants SET policy_json = ?2, policy_version = policy_version + 1
                     WHERE tenant_id = ?1 RETURNING policy_version",
                    (tenant.as_str(), json.as_str()),
                    |r| r.get(0),
                )
                .map_err(fault("policy write"))?;
            publish.push(Publish::Policy(
                tenant.clone(),
                StoredPolicy {
                    policy: Arc::from(policy),
                    version: version as u64,
                },
            ));
            return Ok(Some(version as u64));
        }
    }
    Ok(None)
}

fn secret_head(
    conn: &Connection,
    tenant: &TenantId,
    name: &SecretName,
) -> UnitResult<(SecretKind, u64)> {
    let row: Option<(String, i64)> = conn
        .prepare_cached(
            "SELECT kind, state_version FROM secrets WHERE tenant_id = ?1 AND secret_name = ?2",
        )
        .map_err(fault("secret read"))?
        .query_row([tenant.as_str(), name.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(fault("secret read"))?;
    let (kind, sv) = row.ok_or_else(|| refused(ErrorKind::NotFound, "no such secret"))?;
    let kind = SecretKind::from_name(&kind)
        .ok_or_else(|| StoreError::new(ErrorKind::Corrupt, "a secret row does not parse"))?;
    Ok((kind, sv as u64))
}

fn create_secret(
    conn: &Connection,
    ctx: &BatchContext<'_>,
    tenant: &TenantId,
    new: NewSecret,
    publish: &mut Vec<Publish>,
) -> UnitResult<()> {
    let secret_ref = refs::secret_ref(ctx.keys, tenant, &new.name);
    let now = crate::clock::now_ms() as i64;
    conn.execute(
        "INSERT INTO secrets (tenant_id, secret_name, secret_ref, kind, state_version, ttl_min_ms,
                              ttl_max_ms, ttl_default_ms, handle_ttl_ms, staged, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7, ?8, NULL, ?9)",
        (
            tenant.as_str(),
            new.name.as_str(),
            secret_ref.as_str(),
            new.kind.name(),
            new.ttl.min_ms as i64,
            new.ttl.max_ms as i64,
            new.ttl.default_ms as i64,
            new.handle_ttl_ms as i64,
            now,
        ),
    )
    .map_err(fault("secret write"))?;
    let material = match new.material {
        Some(m) => m,
        None => generate_material()?,
    };
    let dek = data_key(conn, ctx, tenant, publish)?;
    insert_version(conn, &dek, tenant, &new.name, 1, &material, now)?;
    publish.push(Publish::Secret(
        tenant.clone(),
        new.name,
        Arc::new(SecretSnapshot {
            secret_ref,
            state_version: 1,
            kind: new.kind,
            versions: vec![VersionState::Active],
            staged: false,
            ttl: new.ttl,
            handle_ttl_ms: new.handle_ttl_ms,
        }),
    ));
    Ok(())
}

fn insert_version(
    conn: &Connection,
    dek: &DataKey,
    tenant: &TenantId,
    name: &SecretName,
    version: u64,
    material: &selene_kms_core::SecretMaterial,
    now: i64,
) -> UnitResult<()> {
    let sealed = dek.seal(tenant, name, Slot::Version(version), material)?;
    conn.prepare_cached(
        "INSERT INTO versions (tenant_id, secret_name, version, state, created_at_ms, sealed)
         VALUES (?1, ?2, ?3, 'ACTIVE', ?4, ?5)",
    )
    .map_err(fault("version write"))?
    .execute((tenant.as_str(), name.as_str(), version as i64, now, sealed))
    .map_err(fault("version write"))?;
    Ok(())
}

#[allow(
    clippy::too_many_arguments,
    reason = "the write phase of one secret change needs the whole checked plan"
)]
fn write_secret_change(
    conn: &Connection,
    ctx: &BatchContext<'_>,
    tenant: &TenantId,
    name: &SecretName,
    expected: u64,
    change: &StateChange,
    staged: Option<Vec<u8>>,
    publish: &mut Vec<Publish>,
) -> UnitResult<SecretSnapshot> {
    let now = crate::clock::now_ms() as i64;
    match change {
        StateChange::None => {}
        StateChange::Rotate { new_version, .. } => {
            let dek = data_key(conn, ctx, tenant, publish)?;
            let material = match staged {
                Some(sealed) => dek.open(tenant, name, Slot::Staged, &sealed)?,
                None => generate_material()?,
            };
            insert_version(conn, &dek, tenant, name, *new_version, &material, now)?;
            conn.execute(
                "UPDATE secrets SET staged = NULL WHERE tenant_id = ?1 AND secret_name = ?2",
                [tenant.as_str(), name.as_str()],
            )
            .map_err(fault("secret write"))?;
        }
        StateChange::RevokeVersion(v) => {
            conn.execute(
                "UPDATE versions SET state = 'REVOKED'
                 WHERE tenant_id = ?1 AND secret_name = ?2 AND version = ?3",
                (tenant.as_str(), name.as_str(), *v as i64),
            )
            .map_err(fault("revocation write"))?;
        }
        StateChange::RevokeAllVersions => {
            conn.execute(
                "UPDATE versions SET state = 'REVOKED' WHERE tenant_id = ?1 AND secret_name = ?2",
                [tenant.as_str(), name.as_str()],
            )
            .map_err(fault("revocation write"))?;
        }
        StateChange::RevokeHandle { id, expires_at_ms }
        | StateChange::RevokeCredential { id, expires_at_ms } => {
            conn.execute(
                "INSERT OR IGNORE INTO revoked_refs (tenant_id, ref_id, expires_at_ms)
                 VALUES (?1, ?2, ?3)",
                (
                    tenant.as_str(),
                    id.as_str(),
                    (*expires_at_ms).min(i64::MAX as u64) as i64,
                ),
            )
            .map_err(fault("revocation write"))?;
        }
    }
    conn.prepare_cached(
        "UPDATE secrets SET state_version = ?3 WHERE tenant_id = ?1 AND secret_name = ?2",
    )
    .map_err(fault("secret write"))?
    .execute((tenant.as_str(), name.as_str(), expected as i64 + 1))
    .map_err(fault("secret write"))?;
    // The next snapshot: from the cached one when it is the one the change was made against
    // (so a hot secret's rotation does not re-read every version), else from the database.
    match ctx.cache.secret(tenant, name) {
        Some(cached) if cached.state_version == expected => Ok(next_snapshot(&cached, change)),
        _ => Ok(load_snapshot(conn, tenant, name)?
            .ok_or_else(|| StoreError::new(ErrorKind::NotFound, "no such secret"))?),
    }
}

/// Applies a committed change to a snapshot, as the database now has it.
fn next_snapshot(current: &SecretSnapshot, change: &StateChange) -> SecretSnapshot {
    let mut next = current.clone();
    next.state_version += 1;
    match change {
        StateChange::Rotate { .. } => {
            next.versions.push(VersionState::Active);
            next.staged = false;
        }
        StateChange::RevokeVersion(v) => {
            // The check phase found the version, so it is there.
            mark_revoked(&mut next.versions, *v);
        }
        StateChange::RevokeAllVersions => {
            next.versions.fill(VersionState::Revoked);
        }
        StateChange::None
        | StateChange::RevokeHandle { .. }
        | StateChange::RevokeCredential { .. } => {}
    }
    next
}
