//! One commit unit, applied inside its own savepoint of a batch's transaction: the idempotency
//! record, the state change under compare-and-set, and the audit record.
//!
//! The batch already holds the row lock of the unit's tenant (see the writer), so every check
//! here (state version, idempotency key, existence) is made against state that no other node can
//! change until the batch commits. Any error leaves the savepoint to be rolled back: the unit
//! leaves no trace, its neighbours are unaffected.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::GenericClient;
use selene_kms_core::{
    PolicyDocument, SecretKind, SecretMaterial, SecretName, ServiceKeys, StateChange, TenantId,
    refs,
};

use super::cache::StateFloors;
use super::codec::{col, col_u64, to_db, to_db_saturating};
use super::error::as_unavailable;
use super::keys::{DataKeys, create_data_key, load_data_key};
use super::sql;
use crate::chain::{Head, chain};
use crate::envelope::SharedRoot;
use crate::envelope::{DataKey, Slot, generate_material};
use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::model::{Change, CommitUnit, IdempotencyWrite, NewSecret, Receipt, encode_policy};

/// Committed state versions by secret.
pub(super) type SecretFloors = StateFloors<(TenantId, SecretName)>;

/// What the units of one batch share.
pub(super) struct BatchState<'a> {
    /// The service keys (checkpoint signatures, secret refs).
    pub(super) keys: &'a ServiceKeys,
    /// This node's root key (data key wrapping).
    pub(super) root: &'a SharedRoot,
    /// Committed data keys.
    pub(super) data_keys: &'a DataKeys,
    /// Committed state versions known to this node.
    pub(super) floors: &'a SecretFloors,
    /// Data keys created by earlier units of this batch: not committed, so not in `data_keys`.
    pub(super) new_keys: HashMap<TenantId, Arc<DataKey>>,
    /// State versions of the secrets that earlier units of this batch changed.
    pub(super) moved: HashMap<(TenantId, SecretName), u64>,
}

impl BatchState<'_> {
    /// Whether `unit` is a compare-and-set already known to be stale: an earlier unit of this
    /// batch moved the secret (the batch holds the tenant's lock, so nothing else can have), or
    /// a newer state version is known committed. It is refused without a round trip, which on a
    /// hot secret keeps a batch's cost at its one winner, not at its many losers.
    pub(super) fn lost_race(&self, unit: &CommitUnit) -> bool {
        let Change::Secret {
            name,
            expected_state_version,
            ..
        } = &unit.change
        else {
            return false;
        };
        let key = (unit.tenant.clone(), name.clone());
        match self.moved.get(&key) {
            Some(now) => now != expected_state_version,
            None => self.floors.is_behind(&key, *expected_state_version),
        }
    }
}

/// What a unit leaves behind once its savepoint is released.
pub(super) struct Applied {
    /// The answer, sent once the batch is durable.
    pub(super) receipt: Receipt,
    /// The tenant's chain head after the unit.
    pub(super) head: Head,
    /// A data key the unit created for its tenant.
    pub(super) new_key: Option<Arc<DataKey>>,
    /// The secret the unit changed, with its new state version.
    pub(super) moved: Option<(SecretName, u64)>,
}

/// The unit's view while it runs: its tenant, and a data key it may create.
struct Scope<'s, 'a, C> {
    client: &'s C,
    batch: &'s BatchState<'a>,
    tenant: &'s TenantId,
    new_key: Option<Arc<DataKey>>,
    moved: Option<(SecretName, u64)>,
}

/// Applies `unit` after the tenant's chain `head`.
pub(super) async fn apply(
    client: &impl GenericClient,
    batch: &BatchState<'_>,
    head: &Head,
    unit: CommitUnit,
) -> StoreResult<Applied> {
    let CommitUnit {
        tenant,
        change,
        audit,
        idempotency,
        bundle,
    } = unit;
    let chained = chain(batch.keys, &tenant, head, audit, bundle)?;
    if let Some(idem) = idempotency {
        let bytes = chained.idempotency_bytes();
        claim_key(client, &idem, bytes, chained.at_ms).await?;
    }
    let mut scope = Scope {
        client,
        batch,
        tenant: &tenant,
        new_key: None,
        moved: None,
    };
    let policy_version = scope.change(change).await?;
    let Scope { new_key, moved, .. } = scope;
    let seq = to_db(chained.head.seq)?;
    sql::execute(
        client,
        "INSERT INTO audit (tenant_id, seq, record) VALUES ($1, $2, $3)",
        &[&tenant.as_str(), &seq, &chained.record],
        "audit write",
    )
    .await
    .map_err(as_unavailable)?;
    if let Some(checkpoint) = &chained.checkpoint {
        sql::execute(
            client,
            "INSERT INTO checkpoints (tenant_id, seq, checkpoint) VALUES ($1, $2, $3)",
            &[&tenant.as_str(), &seq, checkpoint],
            "checkpoint write",
        )
        .await
        .map_err(as_unavailable)?;
    }
    Ok(Applied {
        receipt: Receipt {
            audit_seq: chained.head.seq,
            bundle_json: chained.bundle,
            policy_version,
        },
        head: chained.head,
        new_key,
        moved,
    })
}

/// Stores the answer under the idempotency key, or refuses the unit if the key is taken (by an
/// earlier request, on any node: the key is the table's primary key).
async fn claim_key(
    client: &impl GenericClient,
    idem: &IdempotencyWrite,
    bundle: &[u8],
    at_ms: u64,
) -> StoreResult<()> {
    let inserted = sql::execute(
        client,
        "INSERT INTO idempotency (tenant_id, caller, key, fingerprint, bundle, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        &[
            &idem.scope.tenant.as_str(),
            &idem.scope.caller.as_str(),
            &idem.scope.key.as_str(),
            &&idem.fingerprint[..],
            &bundle,
            &to_db_saturating(at_ms),
        ],
        "idempotency write",
    )
    .await
    .map_err(as_unavailable)?;
    if inserted == 0 {
        return Err(StoreError::new(
            ErrorKind::IdempotencyTaken,
            "the idempotency key is already taken",
        ));
    }
    Ok(())
}

impl<C: GenericClient> Scope<'_, '_, C> {
    /// Applies the change; returns the new policy version for [`Change::PutPolicy`].
    async fn change(&mut self, change: Change) -> StoreResult<Option<u64>> {
        match change {
            Change::None => Ok(None),
            Change::Secret {
                name,
                expected_state_version,
                change,
            } => self
                .secret_change(&name, expected_state_version, &change)
                .await
                .map(|()| None),
            Change::CreateSecret(new) => self.create_secret(new).await.map(|()| None),
            Change::StageMaterial { name, material } => {
                self.stage(&name, &material).await.map(|()| None)
            }
            Change::PutPolicy(doc) => self.put_policy(&doc).await.map(Some),
        }
    }

    /// The tenant's data key: made earlier in this unit or batch, cached, stored, or new.
    async fn data_key(&mut self) -> StoreResult<Arc<DataKey>> {
        let known = self
            .new_key
            .clone()
            .or_else(|| self.batch.new_keys.get(self.tenant).cloned())
            .or_else(|| self.batch.data_keys.get(self.tenant));
        if let Some(key) = known {
            return Ok(key);
        }
        // Stored keys read here are committed ones: this batch's own are in `new_keys`.
        if let Some(key) = load_data_key(self.client, self.batch.root, self.tenant).await? {
            self.batch.data_keys.put(self.tenant.clone(), key.clone());
            return Ok(key);
        }
        let key = create_data_key(self.client, self.batch.root, self.tenant).await?;
        self.new_key = Some(key.clone());
        Ok(key)
    }

    async fn insert_version(
        &mut self,
        name: &SecretName,
        version: u64,
        material: &SecretMaterial,
    ) -> StoreResult<()> {
        let sealed =
            self.data_key()
                .await?
                .seal(self.tenant, name, Slot::Version(version), material)?;
        sql::execute(
            self.client,
            "INSERT INTO versions (tenant_id, secret_name, version, state, created_at_ms, sealed)
             VALUES ($1, $2, $3, 'ACTIVE', $4, $5)",
            &[
                &self.tenant.as_str(),
                &name.as_str(),
                &to_db(version)?,
                &to_db_saturating(crate::clock::now_ms()),
                &sealed,
            ],
            "version write",
        )
        .await
        .map_err(|e| match e.kind {
            // A duplicate version can only mean a lost compare-and-set.
            ErrorKind::AlreadyExists => {
                StoreError::new(ErrorKind::StateConflict, "the version already exists")
            }
            _ => e,
        })?;
        Ok(())
    }

    async fn create_secret(&mut self, new: NewSecret) -> StoreResult<()> {
        let secret_ref = refs::secret_ref(self.batch.keys, self.tenant, &new.name);
        let inserted = sql::execute(
            self.client,
            "INSERT INTO secrets (tenant_id, secret_name, secret_ref, kind, state_version,
                                  ttl_min_ms, ttl_max_ms, ttl_default_ms, handle_ttl_ms, staged,
                                  created_at_ms)
             VALUES ($1, $2, $3, $4, 1, $5, $6, $7, $8, NULL, $9) ON CONFLICT DO NOTHING",
            &[
                &self.tenant.as_str(),
                &new.name.as_str(),
                &secret_ref.as_str(),
                &new.kind.name(),
                &to_db(new.ttl.min_ms)?,
                &to_db(new.ttl.max_ms)?,
                &to_db(new.ttl.default_ms)?,
                &to_db(new.handle_ttl_ms)?,
                &to_db_saturating(crate::clock::now_ms()),
            ],
            "secret write",
        )
        .await?;
        if inserted == 0 {
            return Err(StoreError::new(
                ErrorKind::AlreadyExists,
                "the secret already exists",
            ));
        }
        let material = match new.material {
            Some(m) => m,
            None => generate_material()?,
        };
        self.insert_version(&new.name, 1, &material).await?;
        self.moved = Some((new.name, 1));
        Ok(())
    }

    async fn stage(&mut self, name: &SecretName, material: &SecretMaterial) -> StoreResult<()> {
        let row = sql::row(
            self.client,
            "SELECT kind FROM secrets WHERE tenant_id = $1 AND secret_name = $2",
            &[&self.tenant.as_str(), &name.as_str()],
            "secret read",
        )
        .await?
        .ok_or_else(|| StoreError::new(ErrorKind::NotFound, "no such secret"))?;
        if SecretKind::from_name(col(&row, 0, "secret read")?) != Some(SecretKind::Imported) {
            return Err(StoreError::new(
                ErrorKind::Invalid,
                "only imported secrets take staged material",
            ));
        }
        let sealed = self
            .data_key()
            .await?
            .seal(self.tenant, name, Slot::Staged, material)?;
        let row = sql::row(
            self.client,
            "UPDATE secrets SET staged = $3, state_version = state_version + 1
             WHERE tenant_id = $1 AND secret_name = $2 RETURNING state_version",
            &[&self.tenant.as_str(), &name.as_str(), &sealed],
            "staging write",
        )
        .await?
        .ok_or_else(|| StoreError::new(ErrorKind::NotFound, "no such secret"))?;
        self.moved = Some((name.clone(), col_u64(&row, 0, "staging write")?));
        Ok(())
    }

    async fn put_policy(&self, doc: &PolicyDocument) -> StoreResult<u64> {
        let (_, json) = encode_policy(doc)?;
        let row = sql::row(
            self.client,
            "UPDATE tenants SET policy_json = $2, policy_version = policy_version + 1
             WHERE tenant_id = $1 RETURNING policy_version",
            &[&self.tenant.as_str(), &json],
            "policy write",
        )
        .await?
        .ok_or_else(|| StoreError::new(ErrorKind::Unavailable, "the tenant row is missing"))?;
        col_u64(&row, 0, "policy write")
    }

    /// A core state change under compare-and-set on the secret's state version, which every
    /// change advances.
    async fn secret_change(
        &mut self,
        name: &SecretName,
        expected: u64,
        change: &StateChange,
    ) -> StoreResult<()> {
        let tenant = self.tenant.as_str();
        let params: sql::Params<'_> = &[&tenant, &name.as_str()];
        let cas = sql::row(
            self.client,
            "UPDATE secrets SET state_version = state_version + 1
             WHERE tenant_id = $1 AND secret_name = $2 AND state_version = $3
             RETURNING staged",
            &[&tenant, &name.as_str(), &to_db(expected)?],
            "secret write",
        )
        .await?;
        let Some(cas) = cas else {
            let exists = sql::row(
                self.client,
                "SELECT 1 FROM secrets WHERE tenant_id = $1 AND secret_name = $2",
                params,
                "secret read",
            )
            .await?;
            return Err(match exists {
                Some(_) => StoreError::new(
                    ErrorKind::StateConflict,
                    "the secret changed since the snapshot",
                ),
                None => StoreError::new(ErrorKind::NotFound, "no such secret"),
            });
        };
        match change {
            StateChange::None => {}
            StateChange::Rotate {
                new_version,
                from_staged,
            } => {
                let staged: Option<Vec<u8>> = col(&cas, 0, "secret write")?;
                let material = match (&staged, from_staged) {
                    (Some(sealed), true) => {
                        self.data_key()
                            .await?
                            .open(self.tenant, name, Slot::Staged, sealed)?
                    }
                    (None, true) => {
                        return Err(StoreError::new(
                            ErrorKind::StateConflict,
                            "no staged material",
                        ));
                    }
                    (_, false) => generate_material()?,
                };
                self.insert_version(name, *new_version, &material).await?;
                if staged.is_some() {
                    sql::execute(
                        self.client,
                        "UPDATE secrets SET staged = NULL WHERE tenant_id = $1 AND secret_name = $2",
                        params,
                        "secret write",
                    )
                    .await?;
                }
            }
            StateChange::RevokeVersion(v) => {
                sql::execute(
                    self.client,
                    "UPDATE versions SET state = 'REVOKED'
                     WHERE tenant_id = $1 AND secret_name = $2 AND version = $3",
                    &[&tenant, &name.as_str(), &to_db(*v)?],
                    "revocation write",
                )
                .await?;
            }
            StateChange::RevokeAllVersions => {
                sql::execute(
                    self.client,
                    "UPDATE versions SET state = 'REVOKED' WHERE tenant_id = $1 AND secret_name = $2",
                    params,
                    "revocation write",
                )
                .await?;
            }
            StateChange::RevokeHandle { id, expires_at_ms }
            | StateChange::RevokeCredential { id, expires_at_ms } => {
                sql::execute(
                    self.client,
                    "INSERT INTO revoked_refs (tenant_id, ref_id, expires_at_ms)
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&tenant, &id.as_str(), &to_db_saturating(*expires_at_ms)],
                    "revocation write",
                )
                .await?;
            }
        }
        self.moved = Some((name.clone(), expected + 1));
        Ok(())
    }
}
