//! The embedded default backend: one SQLite file in WAL mode.
//!
//! Durability: `journal_mode=WAL`; the writer commits with `synchronous=NORMAL` and a syncer
//! thread runs `fdatasync` on the WAL before any request of the batch is answered, so an
//! acknowledged request survives `kill -9` and power loss. Throughput comes from group commit
//! (one writer thread drains every queued unit into one transaction) and from pipelining (the
//! writer applies the next batch while the syncer flushes the last). WAL checkpoints run on a
//! thread of their own. Reads go to a small pool of reader connections (WAL lets them run beside
//! the writer) behind an in-memory cache of policies and secret snapshots that only the writer
//! updates, after each commit. The data directory is locked so that no second process writes the
//! same file.
#![forbid(unsafe_code)]

mod backup;
mod batch;
mod cache;
mod checkpointer;
mod error;
mod identity;
mod moved;
mod principals;
mod schema;
mod syncer;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use cache::Cache;
use checkpointer::Checkpointer;
pub(crate) use error::db_err;
use selene_kms_core::{
    AuditRecord, ChainHead, Checkpoint, Manifest, ManifestKind, MaterialGrant, PolicyDocument,
    Purpose, RefId, SecretKind, SecretMaterial, SecretName, SecretSnapshot, ServiceKeys,
    ServiceSecret, SpiffeId, TenantId, TtlBounds, VersionState,
};
use selene_kms_store::backend::{
    BatchHistogram, CommitUnit, Credential, DataKey, ErrorKind, FIRST_GENERATION_SECRETS,
    IdempotencyRecord, IdempotencyScope, KeptRecord, MAX_KEPT_INPUTS, PrincipalListing,
    PrincipalRecord, Receipt, RootKey, SecretListing, SharedRoot, Store, StoreError, StoreResult,
    StoredPolicy, TenantSummary, VersionListing, WriteHealth, from_db, from_json, head_of,
    new_service_secret, open_service_secret, purpose_name, resealed_secret_ref, stored_record,
    stored_tenant, to_db, to_db_saturating,
};
use writer::{Job, Maintenance, Writer};

pub use backup::backup;

/// About how long a connection waits for a lock another connection of this store holds.
const BUSY_WAIT: Duration = Duration::from_secs(5);
/// The pause between two attempts to take a busy lock.
const BUSY_PAUSE: Duration = Duration::from_micros(50);

/// Retries a busy lock every [`BUSY_PAUSE`] for up to [`BUSY_WAIT`]. SQLite's own busy timeout
/// backs off to sleeps of 25–100 ms, so a writer that met the checkpointer's lock slept on for
/// tens of milliseconds after the lock was free, and every request of the batch with it.
fn retry_busy(attempts: i32) -> bool {
    let max = BUSY_WAIT.as_micros() / BUSY_PAUSE.as_micros();
    if u128::try_from(attempts).unwrap_or(u128::MAX) >= max {
        return false;
    }
    std::thread::sleep(BUSY_PAUSE);
    true
}

fn configure(conn: &Connection) -> StoreResult<()> {
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -65536;",
    )
    .map_err(db_err)?;
    conn.busy_handler(Some(retry_busy)).map_err(db_err)
}

pub(crate) fn open_connection(path: &Path, read_only: bool) -> StoreResult<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(db_err)?;
    configure(&conn)?;
    Ok(conn)
}

/// Options for opening a SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// The database file.
    pub path: PathBuf,
    /// Initialise a new store (`init`): a database that already holds one is refused, as the
    /// PostgreSQL backend does. Without it, a database that holds none is refused.
    pub create: bool,
}

/// The embedded store.
pub struct SqliteStore {
    path: PathBuf,
    keys: Arc<ServiceKeys>,
    root: SharedRoot,
    cache: Arc<Cache>,
    batches: Arc<BatchHistogram>,
    file: identity::FileIdentity,
    readers: Mutex<Vec<Connection>>,
    jobs: mpsc::UnboundedSender<Job>,
    health: Arc<WriteHealth>,
    /// The authentication epoch: this process alone writes the database, so the epoch it
    /// published (see `syncer`) is the store's, and reading it costs no I/O.
    auth_epoch: Arc<AtomicU64>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    // Dropped after the writer is joined (fields drop in order after `Drop::drop`).
    _checkpointer: Checkpointer,
    _lock: std::fs::File,
}

impl SqliteStore {
    /// Opens (and with `create`, initialises) the store at `options.path`.
    pub fn open(options: &SqliteOptions, root: RootKey) -> StoreResult<Self> {
        let lock_path = options.path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|_| StoreError::new(ErrorKind::Unavailable, "cannot create the lock file"))?;
        lock.try_lock().map_err(|_| {
            StoreError::new(
                ErrorKind::Unavailable,
                "another process has this store open",
            )
        })?;
        if !options.create && !options.path.exists() {
            return Err(StoreError::new(
                ErrorKind::NotFound,
                "no store here: run `selene-kms init` first",
            ));
        }
        let mut conn = open_connection(&options.path, false)?;
        let file = identity::FileIdentity::of(&options.path);
        schema::migrate(&mut conn)?;
        // The writer commits without flushing; the syncer flushes (see `syncer`).
        // A smaller page cache for the writer: SQLite scans the whole cache's hash at the end of
        // every write transaction, which at 64 MiB cost more than the inserts themselves; at
        // 4 MiB the index pages of a million secrets no longer fit and were read again (16 MiB:
        // GET_HANDLE over 1M secrets 21.1k → 22.8k/s, 32 MiB no better).
        conn.execute_batch(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16384;",
        )
            .map_err(db_err)?;
        let health = Arc::new(WriteHealth::default());
        let auth_epoch = Arc::new(AtomicU64::new(principals::stored_epoch(&conn)?));
        let syncer = syncer::Syncer::start(&options.path, health.clone(), auth_epoch.clone())?;
        let checkpointer = Checkpointer::start(&options.path)?;
        let service = load_or_create_service_secret(&conn, &root, options.create)?;
        let keys = Arc::new(ServiceKeys::derive(&service));
        reseal_secret_refs(&conn, &keys)?;
        let root = SharedRoot::new(root);
        let cache = Arc::new(Cache::default());
        let (jobs, rx) = mpsc::unbounded_channel();
        let batches = Arc::new(BatchHistogram::default());
        let writer = Writer::new(
            conn,
            keys.clone(),
            root.clone(),
            cache.clone(),
            batches.clone(),
            syncer,
            file.clone(),
        );
        let handle = std::thread::Builder::new()
            .name("kms-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|_| StoreError::new(ErrorKind::Unavailable, "cannot start the writer"))?;
        Ok(Self {
            path: options.path.clone(),
            keys,
            root,
            cache,
            batches,
            file,
            readers: Mutex::new(Vec::new()),
            jobs,
            health,
            auth_epoch,
            writer: Mutex::new(Some(handle)),
            _checkpointer: checkpointer,
            _lock: lock,
        })
    }

    /// Runs `f` on a pooled reader connection.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let pooled = self.readers.lock().ok().and_then(|mut p| p.pop());
        let conn = match pooled {
            Some(c) => c,
            None => open_connection(&self.path, true)?,
        };
        let result = f(&conn);
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < 16
        {
            pool.push(conn);
        }
        result
    }

    async fn submit(
        &self,
        job: impl FnOnce(oneshot::Sender<StoreResult<Receipt>>) -> Job,
    ) -> StoreResult<Receipt> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(job(tx))
            .map_err(|_| StoreError::new(ErrorKind::Unavailable, "the writer has stopped"))?;
        rx.await
            .map_err(|_| StoreError::new(ErrorKind::Unavailable, "the writer has stopped"))?
    }

    fn data_key(&self, conn: &Connection, tenant: &TenantId) -> StoreResult<Arc<DataKey>> {
        if let Some(k) = self.cache.data_key(tenant) {
            return Ok(k);
        }
        let key = read_data_key(conn, &self.root, tenant)?
            .ok_or_else(|| StoreError::new(ErrorKind::NotFound, "no data key"))?;
        let key = Arc::new(key);
        self.cache.put_data_key(tenant, key.clone());
        Ok(key)
    }
}

/// A tenant's data key as stored, unwrapped with `root`; `None` before its first material.
pub(crate) fn read_data_key(
    conn: &Connection,
    root: &SharedRoot,
    tenant: &TenantId,
) -> StoreResult<Option<DataKey>> {
    let wrapped: Option<Vec<u8>> = conn
        .query_row(
            "SELECT wrapped_dek FROM tenants WHERE tenant_id = ?1",
            [tenant.as_str()],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?
        .flatten();
    wrapped
        .map(|w| root.unwrap_data_key(tenant, &w))
        .transpose()
}

fn load_or_create_service_secret(
    conn: &Connection,
    root: &RootKey,
    create: bool,
) -> StoreResult<ServiceSecret> {
    let wrapped: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'service_secret'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?;
    match wrapped {
        Some(_) if create => Err(StoreError::new(
            ErrorKind::AlreadyExists,
            "the database already holds an initialised store",
        )),
        Some(w) => open_service_secret(root, &w),
        None if create => {
            let (secret, wrapped) = new_service_secret(root)?;
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('service_secret', ?1)",
                [wrapped],
            )
            .map_err(db_err)?;
            Ok(secret)
        }
        None => Err(StoreError::new(
            ErrorKind::NotFound,
            "the store is not initialised: run `selene-kms init`",
        )),
    }
}

/// Gives every secret whose stored ref is of the first generation its second-generation ref
/// (see [`resealed_secret_ref`]).
fn reseal_secret_refs(conn: &Connection, keys: &ServiceKeys) -> StoreResult<()> {
    let stale: Vec<(String, String)> = conn
        .prepare(FIRST_GENERATION_SECRETS)
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()
        })
        .map_err(db_err)?;
    for (tenant, name) in stale {
        let secret_ref = resealed_secret_ref(keys, &tenant, &name)?;
        conn.execute(
            "UPDATE secrets SET secret_ref = ?3 WHERE tenant_id = ?1 AND secret_name = ?2",
            (&tenant, &name, &secret_ref),
        )
        .map_err(db_err)?;
    }
    Ok(())
}

/// Reads one secret's snapshot.
pub(crate) fn load_snapshot(
    conn: &Connection,
    tenant: &TenantId,
    name: &SecretName,
) -> StoreResult<Option<SecretSnapshot>> {
    let head = conn
        .prepare_cached(
            "SELECT secret_ref, kind, state_version, ttl_min_ms, ttl_max_ms, ttl_default_ms,
                    handle_ttl_ms, staged IS NOT NULL, purpose, min_decryption_version
             FROM secrets WHERE tenant_id = ?1 AND secret_name = ?2",
        )
        .map_err(db_err)?
        .query_row([tenant.as_str(), name.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                (
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ),
                r.get::<_, i64>(6)?,
                r.get::<_, bool>(7)?,
                (r.get::<_, String>(8)?, r.get::<_, i64>(9)?),
            ))
        })
        .optional()
        .map_err(db_err)?;
    let Some((
        secret_ref,
        kind,
        state_version,
        (min, max, default),
        handle_ttl,
        staged,
        (purpose, min_decryption_version),
    )) = head
    else {
        return Ok(None);
    };
    let corrupt = || StoreError::new(ErrorKind::Corrupt, "a secret row does not parse");
    let mut stmt = conn
        .prepare_cached(
            "SELECT state FROM versions WHERE tenant_id = ?1 AND secret_name = ?2 ORDER BY version",
        )
        .map_err(db_err)?;
    let versions = stmt
        .query_map([tenant.as_str(), name.as_str()], |r| r.get::<_, String>(0))
        .map_err(db_err)?
        .map(|s| match s.map_err(db_err)?.as_str() {
            "ACTIVE" => Ok(VersionState::Active),
            "REVOKED" => Ok(VersionState::Revoked),
            _ => Err(corrupt()),
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Some(SecretSnapshot {
        secret_ref,
        state_version: from_db(state_version)?,
        kind: SecretKind::from_name(&kind).ok_or_else(corrupt)?,
        versions,
        staged,
        ttl: TtlBounds::new(from_db(min)?, from_db(max)?, from_db(default)?).ok_or_else(corrupt)?,
        handle_ttl_ms: from_db(handle_ttl)?,
        purpose: Purpose::from_name(&purpose).ok_or_else(corrupt)?,
        min_decryption_version: from_db(min_decryption_version)?,
    }))
}

fn load_policy(conn: &Connection, tenant: &TenantId) -> StoreResult<Option<(PolicyDocument, u64)>> {
    let row: Option<(Option<String>, i64)> = conn
        .prepare_cached("SELECT policy_json, policy_version FROM tenants WHERE tenant_id = ?1")
        .map_err(db_err)?
        .query_row([tenant.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(db_err)?;
    match row {
        Some((Some(json), version)) => {
            let doc: PolicyDocument = serde_json::from_str(&json).map_err(|_| {
                StoreError::new(ErrorKind::Corrupt, "a stored policy does not parse")
            })?;
            Ok(Some((doc, from_db(version)?)))
        }
        _ => Ok(None),
    }
}

/// Every tenant with a chain (a row is made with its first record), the system chain aside.
fn list_tenants(conn: &Connection) -> StoreResult<Vec<TenantSummary>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT t.tenant_id, t.policy_json, t.policy_version,
                    (SELECT COUNT(*) FROM secrets s WHERE s.tenant_id = t.tenant_id)
             FROM tenants t WHERE t.tenant_id <> ?1 ORDER BY t.tenant_id",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([TenantId::SYSTEM], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(db_err)?;
    rows.map(|row| {
        let (tenant, policy, version, secrets) = row.map_err(db_err)?;
        let tenant = TenantId::try_from(tenant)
            .map_err(|_| StoreError::new(ErrorKind::Corrupt, "a tenant id is invalid"))?;
        TenantSummary::from_stored(
            tenant,
            policy.as_deref(),
            from_db(version)?,
            from_db(secrets)?,
        )
    })
    .collect()
}

#[async_trait]
impl Store for SqliteStore {
    fn keys(&self) -> &Arc<ServiceKeys> {
        &self.keys
    }

    async fn policy(&self, tenant: &TenantId) -> StoreResult<Option<StoredPolicy>> {
        if let Some(p) = self.cache.policy(tenant) {
            return Ok(Some(p));
        }
        let Some((doc, version)) = self.read(|c| load_policy(c, tenant))? else {
            return Ok(None);
        };
        let stored = StoredPolicy::from_stored(&doc, version)?;
        Ok(Some(self.cache.offer_policy(tenant, stored)))
    }

    async fn policy_document(
        &self,
        tenant: &TenantId,
    ) -> StoreResult<Option<(PolicyDocument, u64)>> {
        self.read(|c| load_policy(c, tenant))
    }

    async fn secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> StoreResult<Option<Arc<SecretSnapshot>>> {
        if let Some(s) = self.cache.secret(tenant, name) {
            return Ok(Some(s));
        }
        match self.read(|c| load_snapshot(c, tenant, name))? {
            None => Ok(None),
            Some(s) => Ok(Some(self.cache.offer_secret(tenant, name, Arc::new(s)))),
        }
    }

    async fn list_secrets(&self, tenant: &TenantId) -> StoreResult<Vec<SecretListing>> {
        self.read(|c| {
            let mut secrets = c
                .prepare_cached(
                    "SELECT secret_name, secret_ref, kind, purpose, min_decryption_version
                     FROM secrets WHERE tenant_id = ?1 ORDER BY secret_name",
                )
                .map_err(db_err)?;
            let mut versions = c
                .prepare_cached(
                    "SELECT version, state, created_at_ms FROM versions
                     WHERE tenant_id = ?1 AND secret_name = ?2 ORDER BY version",
                )
                .map_err(db_err)?;
            let rows = secrets
                .query_map([tenant.as_str()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        (r.get::<_, String>(3)?, r.get::<_, i64>(4)?),
                    ))
                })
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            let mut out = Vec::with_capacity(rows.len());
            for (name, secret_ref, kind, (purpose, min_decryption_version)) in rows {
                let vs = versions
                    .query_map([tenant.as_str(), name.as_str()], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)? == "REVOKED",
                            r.get::<_, i64>(2)?,
                        ))
                    })
                    .map_err(db_err)?
                    .map(|row| {
                        let (version, revoked, created_at_ms) = row.map_err(db_err)?;
                        Ok(VersionListing {
                            version: from_db(version)?,
                            state: if revoked {
                                VersionState::Revoked.name()
                            } else {
                                VersionState::Active.name()
                            },
                            created_at_ms: from_db(created_at_ms)?,
                        })
                    })
                    .collect::<StoreResult<Vec<_>>>()?;
                out.push(SecretListing {
                    secret_name: name,
                    secret_ref,
                    kind: SecretKind::from_name(&kind).map_or("UNKNOWN", SecretKind::name),
                    purpose: purpose_name(&purpose),
                    min_decryption_version: from_db(min_decryption_version)?,
                    current_version: vs.last().map_or(0, |v| v.version),
                    versions: vs,
                });
            }
            Ok(out)
        })
    }

    async fn idempotency(
        &self,
        scope: &IdempotencyScope,
    ) -> StoreResult<Option<IdempotencyRecord>> {
        self.read(|c| {
            let row = c
                .prepare_cached(
                    "SELECT fingerprint, bundle FROM idempotency
                     WHERE tenant_id = ?1 AND caller = ?2 AND key = ?3",
                )
                .map_err(db_err)?
                .query_row(
                    [
                        scope.tenant.as_str(),
                        scope.caller.as_str(),
                        scope.key.as_str(),
                    ],
                    |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
                )
                .optional()
                .map_err(db_err)?;
            row.map(|(fingerprint, sealed)| {
                let dek = self.data_key(c, &scope.tenant)?;
                IdempotencyRecord::open(&dek, scope, &fingerprint, &sealed)
            })
            .transpose()
        })
    }

    async fn is_revoked(&self, tenant: &TenantId, id: &RefId) -> StoreResult<bool> {
        self.read(|c| {
            c.prepare_cached("SELECT 1 FROM revoked_refs WHERE tenant_id = ?1 AND ref_id = ?2")
                .map_err(db_err)?
                .exists([tenant.as_str(), id.as_str()])
                .map_err(db_err)
        })
    }

    async fn material(&self, grant: MaterialGrant) -> StoreResult<SecretMaterial> {
        self.read(|c| {
            let (tenant, name) = (grant.tenant(), grant.secret_name());
            let sealed: Vec<u8> = c
                .prepare_cached(
                    "SELECT sealed FROM versions
                     WHERE tenant_id = ?1 AND secret_name = ?2 AND version = ?3",
                )
                .map_err(db_err)?
                .query_row(
                    (tenant.as_str(), name.as_str(), to_db(grant.version())?),
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?
                .ok_or_else(|| StoreError::new(ErrorKind::NotFound, "no such version"))?;
            self.data_key(c, tenant)?.open_granted(grant, &sealed)
        })
    }

    async fn commit(&self, unit: CommitUnit) -> StoreResult<Receipt> {
        self.submit(|reply| Job::Commit {
            unit: Box::new(unit),
            reply,
        })
        .await
    }

    async fn audit_records(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT seq, record FROM audit WHERE tenant_id = ?1 AND seq > ?2
                     ORDER BY seq LIMIT ?3",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(
                    (
                        tenant.as_str(),
                        to_db_saturating(after_seq),
                        i64::try_from(limit).unwrap_or(i64::MAX),
                    ),
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                )
                .map_err(db_err)?;
            rows.map(|r| {
                let (seq, record) = r.map_err(db_err)?;
                stored_record(tenant.as_str(), from_db(seq)?, &record)
            })
            .collect()
        })
    }

    async fn kept_records(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<KeptRecord>> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    // Inputs larger than any the KMS writes, or not a blob, are read as empty,
                    // and so as unreadable, never into memory.
                    "SELECT a.seq, a.record,
                            CASE WHEN i.sealed IS NULL THEN NULL
                                 WHEN typeof(i.sealed) <> 'blob' OR length(i.sealed) > ?4 THEN X''
                                 ELSE i.sealed END
                     FROM audit a
                     LEFT JOIN decision_inputs i ON i.audit_id = a.id
                     WHERE a.tenant_id = ?1 AND a.seq > ?2 ORDER BY a.seq LIMIT ?3",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(
                    (
                        tenant.as_str(),
                        to_db_saturating(after_seq),
                        i64::try_from(limit).unwrap_or(i64::MAX),
                        to_db_saturating(MAX_KEPT_INPUTS as u64),
                    ),
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<Vec<u8>>>(2)?,
                        ))
                    },
                )
                .map_err(db_err)?;
            let page = rows
                .map(|r| {
                    let (seq, record, sealed) = r.map_err(db_err)?;
                    Ok((
                        stored_record(tenant.as_str(), from_db(seq)?, &record)?,
                        sealed,
                    ))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            let dek = KeptRecord::page_needs_key(&page).then(|| self.data_key(c, tenant));
            KeptRecord::open_page(page, dek)
        })
    }

    async fn audit_tenants(&self) -> StoreResult<Vec<TenantId>> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT tenant_id FROM tenants t
                     WHERE EXISTS (SELECT 1 FROM audit a WHERE a.tenant_id = t.tenant_id)
                     ORDER BY tenant_id",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(db_err)?;
            rows.map(|r| stored_tenant(&r.map_err(db_err)?)).collect()
        })
    }

    async fn checkpoints(&self, tenant: &TenantId) -> StoreResult<Vec<Checkpoint>> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT checkpoint FROM checkpoints WHERE tenant_id = ?1 ORDER BY seq",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([tenant.as_str()], |r| r.get::<_, String>(0))
                .map_err(db_err)?;
            rows.map(|r| {
                serde_json::from_str(&r.map_err(db_err)?)
                    .map_err(|_| StoreError::new(ErrorKind::Corrupt, "a checkpoint does not parse"))
            })
            .collect()
        })
    }

    async fn credential(&self, verifier: &[u8; 32]) -> StoreResult<Option<Credential>> {
        self.read(|c| principals::credential(c, &self.keys, verifier))
    }

    async fn principal_by_spiffe(
        &self,
        spiffe_id: &SpiffeId,
    ) -> StoreResult<Option<PrincipalRecord>> {
        self.read(|c| principals::by_spiffe(c, &self.keys, spiffe_id))
    }

    async fn principals(&self) -> StoreResult<Vec<PrincipalListing>> {
        self.read(|c| principals::listing(c, &self.keys))
    }

    async fn auth_epoch(&self) -> StoreResult<u64> {
        Ok(self.auth_epoch.load(Ordering::Acquire))
    }

    async fn tenants(&self) -> StoreResult<Vec<TenantSummary>> {
        self.read(list_tenants)
    }

    async fn rotate_root_key(&self, new_root: RootKey) -> StoreResult<u64> {
        let receipt = self
            .submit(|reply| Job::Maintenance {
                task: Maintenance::RotateRoot {
                    new_root: Box::new(new_root),
                },
                reply,
            })
            .await?;
        Ok(receipt.audit_seq)
    }

    async fn prune(&self, now_ms: u64, idempotency_retention_ms: u64) -> StoreResult<u64> {
        self.submit(|reply| Job::Maintenance {
            task: Maintenance::Prune {
                idempotency_before_ms: now_ms.saturating_sub(idempotency_retention_ms),
                revocations_before_ms: now_ms,
            },
            reply,
        })
        .await
        .map(|r| r.audit_seq)
    }

    async fn chain_heads(&self, moved_only: bool) -> StoreResult<Vec<ChainHead>> {
        if moved_only {
            return Ok(self.cache.moved.list());
        }
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT t.tenant_id, a.seq, a.record FROM tenants t
                     JOIN audit a ON a.tenant_id = t.tenant_id AND a.seq =
                         (SELECT MAX(seq) FROM audit b WHERE b.tenant_id = t.tenant_id)
                     ORDER BY t.tenant_id",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(db_err)?;
            let mut heads = Vec::new();
            for row in rows {
                let (tenant, seq, text) = row.map_err(db_err)?;
                let tenant = stored_tenant(&tenant)?;
                let record = stored_record(tenant.as_str(), from_db(seq)?, &text)?;
                let head = head_of(&self.keys, &tenant, &record)?;
                heads.push(ChainHead {
                    tenant_id: tenant.as_str().to_owned(),
                    seq: head.seq,
                    digest: head.digest,
                });
            }
            Ok(heads)
        })
    }

    async fn append_manifest(&self, manifest: &Manifest) -> StoreResult<bool> {
        let json = serde_json::to_string(manifest)
            .map_err(|_| StoreError::new(ErrorKind::Invalid, "a manifest does not encode"))?;
        let receipt = self
            .submit(|reply| Job::Maintenance {
                task: Maintenance::AppendManifest {
                    seq: manifest.seq,
                    full: manifest.kind == ManifestKind::Full,
                    json,
                },
                reply,
            })
            .await?;
        let appended = receipt.audit_seq == 1;
        if appended {
            self.cache.moved.manifested(&manifest.heads);
        }
        Ok(appended)
    }

    async fn seal_records_from_before_macs(&self) -> StoreResult<u64> {
        self.submit(|reply| Job::Maintenance {
            task: Maintenance::SealRecordsFromBeforeMacs,
            reply,
        })
        .await
        .map(|r| r.audit_seq)
    }

    async fn manifests(&self, after_seq: u64, limit: usize) -> StoreResult<Vec<Manifest>> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT manifest FROM manifests WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(
                    (
                        to_db_saturating(after_seq),
                        i64::try_from(limit).unwrap_or(i64::MAX),
                    ),
                    |r| r.get::<_, String>(0),
                )
                .map_err(db_err)?;
            rows.map(|r| from_json(&r.map_err(db_err)?, "a manifest"))
                .collect()
        })
    }

    async fn latest_full_manifest(&self) -> StoreResult<u64> {
        self.read(|c| {
            let seq: i64 = c
                .query_row(
                    "SELECT COALESCE(MAX(seq), 0) FROM manifests WHERE is_full = 1",
                    [],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            from_db(seq)
        })
    }

    fn batch_histogram(&self) -> &BatchHistogram {
        &self.batches
    }

    fn write_health(&self) -> &WriteHealth {
        &self.health
    }

    async fn ready(&self) -> bool {
        !self.jobs.is_closed()
            && self.health.is_writable()
            && self.file.still_there()
            && self
                .read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err))
                .is_ok()
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        // Replacing the sender closes the channel: the writer drains the queue and stops.
        let (closed, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use selene_kms_core::{AuditAction, ReasonCode, SecretKind, TtlBounds};

    use super::*;
    use selene_kms_store::backend::{Change, CommitUnit, NewSecret};
    use selene_kms_store::conformance::redeem;

    fn create(
        store: &Arc<SqliteStore>,
        tenant: &str,
    ) -> std::pin::Pin<Box<dyn Future<Output = StoreResult<u64>> + Send>> {
        let store = store.clone();
        let tenant = TenantId::try_from(tenant).expect("tenant");
        Box::pin(async move {
            let unit = CommitUnit {
                tenant: tenant.clone(),
                change: Change::CreateSecret(NewSecret {
                    name: SecretName::try_from("k").expect("name"),
                    kind: SecretKind::Imported,
                    material: SecretMaterial::from_slice(b"canary"),
                    ttl: TtlBounds::DEFAULT,
                    handle_ttl_ms: 60_000,
                    purpose: Purpose::Credential,
                }),
                audit: AuditRecord::for_action(
                    &tenant,
                    AuditAction::CreateSecret,
                    ReasonCode::OkMaterialIssue,
                    0,
                ),
                idempotency: None,
                bundle: None,
                inputs: None,
            };
            store.commit(unit).await.map(|r| r.audit_seq)
        })
    }

    /// Whether the writer has a write transaction open: a probe connection cannot take one.
    fn writer_in_batch(path: &Path) -> bool {
        let probe = Connection::open(path).expect("probe");
        probe.busy_timeout(Duration::ZERO).expect("no waiting");
        match probe.execute_batch("BEGIN IMMEDIATE; ROLLBACK;") {
            Ok(()) => false,
            Err(e) => {
                assert_eq!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy)
                );
                true
            }
        }
    }

    /// Polls the first unit of a future once: the store queues its job before it first waits.
    async fn queued<F: Future + Unpin>(mut job: F) -> F {
        tokio::select! {
            biased;
            _ = &mut job => panic!("answered while the writer is held"),
            () = std::future::ready(()) => job,
        }
    }

    /// A unit queued beside a root rotation opens under the new root afterwards: the batch
    /// commits it first, and the rotation that follows in its own transaction rewraps its new
    /// data key. The writer is held inside one batch (waiting for the root key) while the
    /// rotation and then a create queue up behind it, so both are drained together.
    /// Each step waits for the event it needs, not for time to pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(
        clippy::await_holding_lock,
        reason = "the held key is the point: it keeps the writer thread waiting while jobs queue"
    )]
    async fn a_unit_queued_beside_a_rotation_opens_under_the_new_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = SqliteOptions {
            path: dir.path().join("kms.db"),
            create: true,
        };
        let store =
            Arc::new(SqliteStore::open(&options, RootKey::from_bytes(&[1; 32])).expect("open"));
        let held = store.root.hold();
        let first = queued(create(&store, "first")).await;
        // The writer took the first unit alone into a batch, where it waits for the key.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !writer_in_batch(&options.path) {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never began the first batch"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let rotation = queued(Box::pin(
            store.rotate_root_key(RootKey::from_bytes(&[9; 32])),
        ))
        .await;
        let after = queued(create(&store, "after")).await;
        drop(held);
        first.await.expect("first create");
        rotation.await.expect("rotation");
        after.await.expect("create after the rotation");
        let histogram = store.batch_histogram().snapshot();
        assert_eq!(
            (histogram.1, histogram.2),
            (2, 2),
            "two batches of units: the first create, then the create queued with the rotation"
        );
        drop(store);
        let reopened = SqliteStore::open(
            &SqliteOptions {
                path: dir.path().join("kms.db"),
                create: false,
            },
            RootKey::from_bytes(&[9; 32]),
        )
        .expect("opens under the new root");
        for tenant in ["first", "after"] {
            let tenant_id = TenantId::try_from(tenant).expect("tenant");
            let material = redeem(&reopened, &tenant_id, "k", 1)
                .await
                .unwrap_or_else(|e| panic!("{tenant}: {}", e.message));
            assert_eq!(material.expose(), b"canary", "{tenant}");
        }
    }
}
