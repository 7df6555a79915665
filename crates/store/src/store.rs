//! The `Store` trait: everything the host needs from durable state, shaped so that one request is
//! one atomic commit and so that an embedded and a networked backend fit it alike.

use std::sync::Arc;

use async_trait::async_trait;
use selene_kms_core::{
    AuditRecord, ChainHead, Checkpoint, Manifest, MaterialGrant, PolicyDocument, RefId,
    SecretMaterial, SecretName, SecretSnapshot, ServiceKeys, SpiffeId, TenantId,
};

use crate::envelope::RootKey;
use crate::error::StoreResult;
use crate::health::WriteHealth;
use crate::model::{
    CommitUnit, Credential, IdempotencyRecord, IdempotencyScope, KeptRecord, PrincipalListing,
    PrincipalRecord, Receipt, Remembered, SecretListing, StoredPolicy, TenantSummary,
};
use crate::stats::BatchHistogram;

/// Durable state of the KMS.
///
/// Reads return snapshots; [`Store::commit`] applies one [`CommitUnit`] atomically (state change,
/// idempotency record, audit record), checking the secret's state version (compare-and-set) and
/// the idempotency key's uniqueness. Backends batch concurrent commits into one transaction and
/// answer each only after its batch is durable.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The keys derived from this store's service secret.
    fn keys(&self) -> &Arc<ServiceKeys>;

    /// The tenant's policy, if one was ever set.
    async fn policy(&self, tenant: &TenantId) -> StoreResult<Option<StoredPolicy>>;

    /// The policy document as last stored, with its version.
    async fn policy_document(
        &self,
        tenant: &TenantId,
    ) -> StoreResult<Option<(PolicyDocument, u64)>>;

    /// A snapshot of one secret.
    async fn secret(
        &self,
        tenant: &TenantId,
        name: &SecretName,
    ) -> StoreResult<Option<Arc<SecretSnapshot>>>;

    /// The tenant's policy and the secret as this node last read or committed them, without
    /// asking the database; `None` when it does not hold both, or keeps nothing that its reads
    /// do not already give at no cost. On a store several nodes share they may be stale, so a
    /// decision made from them must end in a commit that holds what it grants to the committed
    /// policy version and to the secret's current state (see [`crate::backend::plan`]): never
    /// a dry run, whose commit checks nothing; any other ending (a refusal, a stored answer) is
    /// decided again from [`Store::policy`] and [`Store::secret`].
    fn remembered(&self, _tenant: &TenantId, _name: &SecretName) -> Option<Remembered> {
        None
    }

    /// Every secret of a tenant, metadata only.
    async fn list_secrets(&self, tenant: &TenantId) -> StoreResult<Vec<SecretListing>>;

    /// The record stored under an idempotency key.
    async fn idempotency(&self, scope: &IdempotencyScope)
    -> StoreResult<Option<IdempotencyRecord>>;

    /// Whether a handle or credential was revoked.
    async fn is_revoked(&self, tenant: &TenantId, id: &RefId) -> StoreResult<bool>;

    /// Decrypts the one version a redemption check allowed. The grant is taken by value and
    /// only [`selene_kms_core::redeem::check`] makes one, so material is read only after
    /// redemption's checks, once per check.
    async fn material(&self, grant: MaterialGrant) -> StoreResult<SecretMaterial>;

    /// Applies one unit atomically and durably.
    async fn commit(&self, unit: CommitUnit) -> StoreResult<Receipt>;

    /// Audit records of a tenant with `seq > after_seq`, in order, at most `limit`.
    async fn audit_records(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>>;

    /// Audit records of a tenant with `seq > after_seq`, each with the inputs of its decision
    /// kept beside it, in order, at most `limit`.
    async fn kept_records(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<KeptRecord>>;

    /// Every tenant that has an audit chain.
    async fn audit_tenants(&self) -> StoreResult<Vec<TenantId>>;

    /// Stored checkpoints of a tenant, in order.
    async fn checkpoints(&self, tenant: &TenantId) -> StoreResult<Vec<Checkpoint>>;

    /// Chains' heads: every chain's, or (`moved_only`) those of the chains that moved since the
    /// latest manifest this store appended, and perhaps more. Sorted by tenant.
    async fn chain_heads(&self, moved_only: bool) -> StoreResult<Vec<ChainHead>>;

    /// Appends a signed manifest at its sequence number. `false` when that number is taken
    /// (another node signed first): nothing is written.
    async fn append_manifest(&self, manifest: &Manifest) -> StoreResult<bool>;

    /// Stored manifests with `seq > after_seq`, in order, at most `limit`.
    async fn manifests(&self, after_seq: u64, limit: usize) -> StoreResult<Vec<Manifest>>;

    /// The sequence number of the latest full manifest (0 for none): verifiers start there.
    async fn latest_full_manifest(&self) -> StoreResult<u64>;

    /// Gives every audit record written before records carried MACs its MAC (and, where heads
    /// are kept in rows of their own, each head its MAC); returns how many records. Only for a
    /// store that has no manifest yet: the operator adopts such a store once, with `init`,
    /// vouching for what it holds. Refused (`Invalid`) on a store with manifests.
    async fn seal_records_from_before_macs(&self) -> StoreResult<u64>;

    /// The token stored under `verifier` and its principal, live or not.
    async fn credential(&self, verifier: &[u8; 32]) -> StoreResult<Option<Credential>>;

    /// The unrevoked principal bound to `spiffe_id`.
    async fn principal_by_spiffe(
        &self,
        spiffe_id: &SpiffeId,
    ) -> StoreResult<Option<PrincipalRecord>>;

    /// Every principal with its tokens, by creation time.
    async fn principals(&self) -> StoreResult<Vec<PrincipalListing>>;

    /// A number that advances with every committed revocation of a principal or token, on
    /// every node of the store: an authentication remembered at an epoch is good only while
    /// the epoch is unchanged. Read afresh on every call (the backend may share one read among
    /// calls that arrive while it is in flight, never one that began before a call did).
    async fn auth_epoch(&self) -> StoreResult<u64>;

    /// Every tenant (never the system chain), by id.
    async fn tenants(&self) -> StoreResult<Vec<TenantSummary>>;

    /// Rewraps every tenant data key and the service secret under `new_root`, in one
    /// transaction; material is not touched. Returns how many data keys were rewrapped. The
    /// caller replaces the key file afterwards (other nodes must be restarted with the new key).
    async fn rotate_root_key(&self, new_root: RootKey) -> StoreResult<u64>;

    /// Removes idempotency records and handle/credential revocations past their retention.
    async fn prune(&self, now_ms: u64, idempotency_retention_ms: u64) -> StoreResult<u64>;

    /// Sizes of the group commits so far.
    fn batch_histogram(&self) -> &BatchHistogram;

    /// Commit failures and flush durations so far.
    fn write_health(&self) -> &WriteHealth;

    /// Whether the store can serve (for `/readyz`).
    async fn ready(&self) -> bool;
}
