//! The PostgreSQL backend, for several `selene-kms serve` nodes sharing one database.
//!
//! Correctness across nodes comes from the database, never from memory: reads go to the database
//! (a cached policy or secret snapshot is served only when the database confirms, in the same
//! query, that it is still at the cached version; revocations are never cached), except a first
//! decision from what the node remembers, which ends only in a commit that checks it; every
//! commit takes its tenant's chain-head row lock, so `seq` and `prev_digest` are assigned once
//! per tenant across nodes, a grant and a compare-and-set on a secret's state version are checked
//! against the latest committed state, and idempotency keys (the primary key of their table) are
//! honoured by every node. Throughput comes from group commit, as in the embedded store: one
//! writer per node, on a thread of its own, commits every queued unit in one transaction by the
//! shared commit algorithm (one flight that begins, locks and reads the state the batch needs;
//! one set-based statement per group of rows, sent with the COMMIT), and answers after it.
//! Durability is PostgreSQL's (`synchronous_commit` as the server sets it, `on` by default).
//!
//! Material is sealed with the same envelope code as the embedded store: per-tenant data keys
//! wrapped by the root key, the service secret wrapped in the `meta` table. Every node needs
//! the same root key. Connection strings are only ever shown through [`redact`].
#![forbid(unsafe_code)]

mod batch;
mod cache;
mod codec;
mod epoch;
mod error;
mod keys;
mod maintenance;
mod manifests;
mod principals;
mod reads;
mod schema;
mod sql;
mod tls;
mod url;
mod writer;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Client, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};

use error::pool_error;
use keys::DataKeys;
use reads::Fresh;
use selene_kms_core::{
    AuditRecord, ChainHead, Checkpoint, Manifest, MaterialGrant, PolicyDocument, RefId,
    SecretMaterial, SecretName, SecretSnapshot, ServiceKeys, SpiffeId, TenantId,
};
use selene_kms_store::backend::{
    BatchHistogram, CommitUnit, Credential, DataKey, ErrorKind, IdempotencyRecord,
    IdempotencyScope, KeptRecord, PrincipalListing, PrincipalRecord, Receipt, Remembered, RootKey,
    SecretListing, SharedRoot, Store, StoreError, StoreResult, StoredPolicy, TenantSummary,
    WriteHealth,
};
pub use url::redact;
use writer::{Job, PolicyCache, SecretCache, Writer};

/// Most connections one node opens (the writer uses one at a time; readers share the rest).
const POOL_SIZE: usize = 16;
/// How long a request waits for a pooled connection before the store answers `Unavailable`.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// The PostgreSQL store of one node.
pub struct PostgresStore {
    /// The connection string, redacted: the only form of it that is kept.
    target: String,
    pool: Pool,
    keys: Arc<ServiceKeys>,
    root: SharedRoot,
    data_keys: Arc<DataKeys>,
    policies: Arc<PolicyCache>,
    secrets: Arc<SecretCache>,
    batches: Arc<BatchHistogram>,
    jobs: mpsc::UnboundedSender<Job>,
    health: Arc<WriteHealth>,
    /// Shares reads of the authentication epoch among concurrent calls.
    auth_epoch: epoch::Coalescer,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` and brings its schema up to date. With `create`, it
    /// initialises a new store there (the service secret, wrapped by `root`) and refuses a
    /// database that already holds one (`AlreadyExists`); without, it opens the store that
    /// `init` made (`NotFound` if none, `Corrupt` if `root` is not its root key).
    ///
    /// Must be called inside a Tokio runtime, which drives the reads; the writer runs on a
    /// thread of its own.
    pub async fn open(url: &str, root: RootKey, create: bool) -> StoreResult<Self> {
        let target = redact(url);
        let parsed = url::parse(url)?;
        let pool = pool_of(&parsed, POOL_SIZE)?;
        // The writer's own connection, made and driven on the writer's thread.
        let writer_pool = pool_of(&parsed, 1)?;
        let mut client = pool.get().await.map_err(|e| {
            let e = pool_error(e);
            StoreError::new(e.kind, format!("{} ({target})", e.message))
        })?;
        schema::migrate(&mut client).await?;
        let service = keys::service_secret(&client, &root, create).await?;
        let keys = Arc::new(ServiceKeys::derive(&service));
        reads::reseal_secret_refs(&client, &keys).await?;
        drop(client);
        let root = SharedRoot::new(root);
        let data_keys = Arc::new(DataKeys::default());
        let policies = Arc::new(PolicyCache::default());
        let secrets = Arc::new(SecretCache::default());
        let batches = Arc::new(BatchHistogram::default());
        let (jobs, rx) = mpsc::unbounded_channel();
        let health = Arc::new(WriteHealth::default());
        let writer = Writer {
            health: health.clone(),
            pool: writer_pool,
            keys: keys.clone(),
            root: root.clone(),
            data_keys: data_keys.clone(),
            secrets: secrets.clone(),
            policies: policies.clone(),
            batches: batches.clone(),
        };
        // A thread and runtime of its own, so that a batch's answers from PostgreSQL, and the
        // plan between its two flights (while it holds its tenants' row locks), never wait
        // behind the requests the host's runtime is serving. It ends when the store is dropped;
        // a runtime that cannot start drops the queue, and every commit answers that the
        // writer has stopped.
        std::thread::Builder::new()
            .name("selene-kms-pg-writer".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(runtime) = runtime {
                    runtime.block_on(writer.run(rx));
                }
            })
            .map_err(|_| {
                StoreError::new(ErrorKind::Unavailable, "the writer's thread cannot start")
            })?;
        Ok(Self {
            target,
            pool,
            keys,
            root,
            data_keys,
            policies,
            secrets,
            batches,
            jobs,
            health,
            auth_epoch: epoch::Coalescer::default(),
        })
    }

    /// The tenant's data key: cached, or read and unwrapped (`NotFound` before its first
    /// material or answer).
    async fn data_key(&self, client: &Client, tenant: &TenantId) -> StoreResult<Arc<DataKey>> {
        if let Some(key) = self.data_keys.get(tenant) {
            return Ok(key);
        }
        let key = keys::load_data_key(client, &self.root, tenant)
            .await?
            .ok_or_else(|| StoreError::new(ErrorKind::NotFound, "no data key"))?;
        self.data_keys.put(tenant.clone(), key.clone());
        Ok(key)
    }

    async fn client(&self) -> StoreResult<Client> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// A pool of at most `size` connections to the parsed URL's database.
fn pool_of(parsed: &url::Target, size: usize) -> StoreResult<Pool> {
    let manager = Manager::from_config(
        parsed.config.clone(),
        tls::connector(&parsed.ssl)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .build()
        .map_err(|_| StoreError::new(ErrorKind::Invalid, "postgres: the pool cannot be built"))
}

#[async_trait]
impl Store for PostgresStore {
    fn keys(&self) -> &Arc<ServiceKeys> {
        &self.keys
    }

    async fn policy(&self, tenant: &TenantId) -> StoreResult<Option<StoredPolicy>> {
        let have = self.policies.version(tenant);
        let read = reads::policy(&self.client().await?, tenant, have).await?;
        let (version, doc) = match read {
            None => return Ok(None),
            Some(Fresh::Unchanged(version)) => match self.policies.get_at(tenant, version) {
                Some(cached) => return Ok(Some(cached)),
                // Replaced by a concurrent read in between: read the document itself.
                None => match reads::policy(&self.client().await?, tenant, None).await? {
                    Some(Fresh::Loaded(version, doc)) => (version, doc),
                    _ => return Ok(None),
                },
            },
            Some(Fresh::Loaded(version, doc)) => (version, doc),
        };
        let stored = StoredPolicy::from_stored(&doc, version)?;
        self.policies.put(tenant.clone(), version, stored.clone());
        Ok(Some(stored))
    }

    async fn policy_document(
        &self,
        tenant: &TenantId,
    ) -> StoreResult<Option<(PolicyDocument, u64)>> {
        match reads::policy(&self.client().await?, tenant, None).await? {
            Some(Fresh::Loaded(version, doc)) => Ok(Some((doc, version))),
            _ => Ok(None),
        }
    }

    async fn secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> StoreResult<Option<Arc<SecretSnapshot>>> {
        let key = (tenant.clone(), name.clone());
        let have = self.secrets.version(&key);
        let client = self.client().await?;
        let snapshot = match reads::secret(&client, tenant, name, have).await? {
            None => return Ok(None),
            Some(Fresh::Unchanged(version)) => match self.secrets.get_at(&key, version) {
                Some(cached) => return Ok(Some(cached)),
                None => match reads::secret(&client, tenant, name, None).await? {
                    Some(Fresh::Loaded(_, s)) => s,
                    _ => return Ok(None),
                },
            },
            Some(Fresh::Loaded(_, s)) => s,
        };
        let snapshot = Arc::new(snapshot);
        self.secrets
            .put(key, snapshot.state_version, snapshot.clone());
        Ok(Some(snapshot))
    }

    fn remembered(&self, tenant: &TenantId, name: &SecretName) -> Option<Remembered> {
        let (_, policy) = self.policies.entry(tenant)?;
        let (_, secret) = self.secrets.entry(&(tenant.clone(), name.clone()))?;
        Some(Remembered { policy, secret })
    }

    async fn list_secrets(&self, tenant: &TenantId) -> StoreResult<Vec<SecretListing>> {
        reads::list_secrets(&self.client().await?, tenant).await
    }

    async fn idempotency(
        &self,
        scope: &IdempotencyScope,
    ) -> StoreResult<Option<IdempotencyRecord>> {
        let client = self.client().await?;
        let Some((fingerprint, sealed)) = reads::idempotency(&client, scope).await? else {
            return Ok(None);
        };
        let dek = self.data_key(&client, &scope.tenant).await?;
        IdempotencyRecord::open(&dek, scope, &fingerprint, &sealed).map(Some)
    }

    async fn is_revoked(&self, tenant: &TenantId, id: &RefId) -> StoreResult<bool> {
        reads::is_revoked(&self.client().await?, tenant, id).await
    }

    async fn material(&self, grant: MaterialGrant) -> StoreResult<SecretMaterial> {
        let client = self.client().await?;
        let sealed = reads::sealed_version(
            &client,
            grant.tenant(),
            grant.secret_name(),
            grant.version(),
        )
        .await?;
        let key = self.data_key(&client, grant.tenant()).await?;
        key.open_granted(grant, &sealed)
    }

    async fn commit(&self, unit: CommitUnit) -> StoreResult<Receipt> {
        let stopped = || StoreError::new(ErrorKind::Unavailable, "the writer has stopped");
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { unit, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn audit_records(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        reads::audit_records(&self.client().await?, tenant, after_seq, limit).await
    }

    async fn kept_records(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<KeptRecord>> {
        let client = self.client().await?;
        let page = reads::sealed_records(&client, tenant, after_seq, limit).await?;
        let dek = if KeptRecord::page_needs_key(&page) {
            Some(self.data_key(&client, tenant).await)
        } else {
            None
        };
        KeptRecord::open_page(page, dek)
    }

    async fn audit_tenants(&self) -> StoreResult<Vec<TenantId>> {
        reads::audit_tenants(&self.client().await?).await
    }

    async fn checkpoints(&self, tenant: &TenantId) -> StoreResult<Vec<Checkpoint>> {
        reads::checkpoints(&self.client().await?, tenant).await
    }

    async fn credential(&self, verifier: &[u8; 32]) -> StoreResult<Option<Credential>> {
        principals::credential(&self.client().await?, &self.keys, verifier).await
    }

    async fn principal_by_spiffe(
        &self,
        spiffe_id: &SpiffeId,
    ) -> StoreResult<Option<PrincipalRecord>> {
        principals::by_spiffe(&self.client().await?, &self.keys, spiffe_id).await
    }

    async fn principals(&self) -> StoreResult<Vec<PrincipalListing>> {
        principals::listing(&self.client().await?, &self.keys).await
    }

    async fn auth_epoch(&self) -> StoreResult<u64> {
        self.auth_epoch
            .get(|| async { principals::epoch(&self.client().await?).await })
            .await
    }

    async fn tenants(&self) -> StoreResult<Vec<TenantSummary>> {
        reads::tenants(&self.client().await?).await
    }

    async fn rotate_root_key(&self, new_root: RootKey) -> StoreResult<u64> {
        let mut client = self.client().await?;
        keys::rotate_root(&mut client, &self.root, &self.data_keys, new_root).await
    }

    async fn prune(&self, now_ms: u64, idempotency_retention_ms: u64) -> StoreResult<u64> {
        maintenance::prune(
            &self.client().await?,
            now_ms.saturating_sub(idempotency_retention_ms),
            now_ms,
        )
        .await
    }

    async fn chain_heads(&self, _moved_only: bool) -> StoreResult<Vec<ChainHead>> {
        manifests::chain_heads(&self.client().await?, &self.keys).await
    }

    async fn append_manifest(&self, manifest: &Manifest) -> StoreResult<bool> {
        manifests::append(&self.client().await?, manifest).await
    }

    async fn seal_records_from_before_macs(&self) -> StoreResult<u64> {
        manifests::seal_records_from_before_macs(&mut self.client().await?, &self.keys).await
    }

    async fn manifests(&self, after_seq: u64, limit: usize) -> StoreResult<Vec<Manifest>> {
        manifests::after(&self.client().await?, after_seq, limit).await
    }

    async fn latest_full_manifest(&self) -> StoreResult<u64> {
        manifests::latest_full(&self.client().await?).await
    }

    fn batch_histogram(&self) -> &BatchHistogram {
        &self.batches
    }

    fn write_health(&self) -> &WriteHealth {
        &self.health
    }

    async fn ready(&self) -> bool {
        if self.jobs.is_closed() || !self.health.is_writable() {
            return false;
        }
        match self.client().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }
}
