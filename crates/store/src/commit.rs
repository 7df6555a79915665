//! The commit algorithm, written once for every backend.
//!
//! A batch of [`CommitUnit`]s is committed in three steps:
//! 1. the backend reads the committed state the batch [`Needs`] into a [`Committed`], under its
//!    own guard (SQLite: the single writer's `IMMEDIATE` transaction; PostgreSQL: the row locks
//!    of the batch's tenants), so that nothing else can change that state before step 3 commits;
//! 2. [`plan`] decides every unit, in arrival order, without I/O: its checks in one fixed order
//!    (see [`plan`]), then its effects on the working state that later units of the batch see;
//! 3. the backend writes the resulting [`Writes`] in one transaction, in whatever statements suit
//!    it, and answers each unit with its outcome once that transaction is durable.
//!
//! A refused unit produces no writes, so neither backend needs a savepoint per unit; a failed
//! write refuses the whole batch.

mod principals;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use selene_kms_core::{
    DecisionInputs, Policy, PrincipalId, PrincipalName, Purpose, SecretKind, SecretMaterial,
    SecretName, SecretSnapshot, ServiceKeys, SpiffeId, StateChange, TenantId, TokenId, TtlBounds,
    VersionState, keys::Column, refs,
};

pub use principals::TokenRow;
use principals::{AuthEffect, Credentials};

use selene_kms_core::material::MATERIAL_LEN;

use crate::chain::{Head, chain};
use crate::codec::to_db;
use crate::envelope::{DataKey, RootKey, Slot};
use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::model::{
    Change, CommitUnit, IdempotencyScope, MAX_KEPT_INPUTS, NewSecret, PrincipalRecord, Receipt,
    StoredPolicy, encode_policy,
};

/// A secret's identity inside the store.
pub type SecretKey = (TenantId, SecretName);

/// What a batch must read before it can be decided.
#[derive(Debug, Default)]
pub struct Needs {
    /// Every tenant of the batch (chain heads), in byte order, once each.
    pub tenants: Vec<TenantId>,
    /// Tenants whose policy version is needed (a policy change).
    pub policy_tenants: Vec<TenantId>,
    /// Tenants whose data key is needed (material to seal or open).
    pub key_tenants: Vec<TenantId>,
    /// Secrets the batch checks or changes.
    pub secrets: Vec<SecretKey>,
    /// Of `secrets`, those a change seals new material for (a generated rotation, staging),
    /// which must come with their latest version's material when their row has no purpose MAC
    /// (see [`StoredSecret::purpose_mac`]); a backend may leave it out otherwise.
    pub sealing: Vec<SecretKey>,
    /// Secrets the batch only reads the state version of, to check a grant (see
    /// `GrantedRead`), and that are not in `secrets`: a backend that knows the committed
    /// snapshot without a read may give it without its staged material.
    pub grant_secrets: Vec<SecretKey>,
    /// Idempotency keys the batch claims.
    pub idempotency: Vec<IdempotencyScope>,
    /// Principals the batch names by id.
    pub principals: Vec<PrincipalId>,
    /// Names new principals claim.
    pub principal_names: Vec<PrincipalName>,
    /// SPIFFE ids new principals claim.
    pub spiffe_ids: Vec<SpiffeId>,
    /// Tokens the batch revokes.
    pub tokens: Vec<TokenId>,
    /// Whether every unrevoked admin principal scoped to every tenant is needed (a principal
    /// revocation checks that it leaves one).
    pub global_admins: bool,
}

impl Needs {
    /// Whether the batch reads any principal (a principal or token change).
    pub fn reads_principals(&self) -> bool {
        !self.principals.is_empty()
            || !self.principal_names.is_empty()
            || !self.spiffe_ids.is_empty()
            || self.global_admins
    }

    /// What `units` need.
    pub fn of(units: &[CommitUnit]) -> Self {
        let mut needs = Self::default();
        for unit in units {
            let tenant = &unit.tenant;
            needs.tenants.push(tenant.clone());
            if let Some(idem) = &unit.idempotency {
                needs.idempotency.push(idem.scope.clone());
            }
            if unit.idempotency.is_some() || unit.inputs.is_some() {
                // Its stored answer and its decision's inputs are sealed under the tenant's
                // data key.
                needs.key_tenants.push(tenant.clone());
            }
            if let Some(read) = GrantedRead::of(unit) {
                needs.policy_tenants.push(tenant.clone());
                if let Some(name) = read.secret {
                    needs.grant_secrets.push((tenant.clone(), name));
                }
            }
            let (name, keyed, sealing) = match &unit.change {
                Change::None => continue,
                Change::CreatePrincipal(new) => {
                    needs.principal_names.push(new.name.clone());
                    needs.spiffe_ids.extend(new.spiffe_id.clone());
                    continue;
                }
                Change::IssueToken { principal, .. } => {
                    needs.principals.push(principal.clone());
                    continue;
                }
                Change::RevokeToken { principal, token } => {
                    needs.principals.push(principal.clone());
                    needs.tokens.push(token.clone());
                    continue;
                }
                Change::RevokePrincipal(principal) => {
                    needs.principals.push(principal.clone());
                    needs.global_admins = true;
                    continue;
                }
                Change::PutPolicy(_) => {
                    needs.policy_tenants.push(tenant.clone());
                    continue;
                }
                Change::Secret { name, change, .. } => (
                    name,
                    matches!(change, StateChange::Rotate { .. }),
                    matches!(
                        change,
                        StateChange::Rotate {
                            from_staged: false,
                            ..
                        }
                    ),
                ),
                Change::CreateSecret(new) => (&new.name, true, false),
                Change::StageMaterial { name, .. } => (name, true, true),
                Change::SetMinDecryptionVersion { name, .. } => (name, false, false),
            };
            needs.secrets.push((tenant.clone(), name.clone()));
            if sealing {
                needs.sealing.push((tenant.clone(), name.clone()));
            }
            if keyed {
                needs.key_tenants.push(tenant.clone());
            }
        }
        for list in [
            &mut needs.tenants,
            &mut needs.policy_tenants,
            &mut needs.key_tenants,
        ] {
            list.sort();
            list.dedup();
        }
        for list in [&mut needs.secrets, &mut needs.sealing] {
            list.sort();
            list.dedup();
        }
        needs.grant_secrets.sort();
        needs.grant_secrets.dedup();
        let changed = &needs.secrets;
        needs
            .grant_secrets
            .retain(|k| changed.binary_search(k).is_err());
        needs.principals.sort();
        needs.principals.dedup();
        needs.principal_names.sort();
        needs.principal_names.dedup();
        needs.spiffe_ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        needs.spiffe_ids.dedup();
        needs.tokens.sort();
        needs.tokens.dedup();
        needs
    }
}

/// What an answer that grants something (an `OK` bundle decided afresh, not a dry run, which
/// grants nothing and whose plan its commit checks again) was decided from: the tenant's policy
/// version and what it read of the secret. It commits only while the policy version is the
/// committed one and the secret still holds what the grant rests on, so that no grant rests on
/// a state that a later change, or a row set back in the database, had already voided; and a
/// replay holds each grant to the chain's state at its place in the same way.
struct GrantedRead {
    /// The policy version read (0: none).
    policy_version: u64,
    /// The secret named.
    secret: Option<SecretName>,
    /// What of the secret must still hold.
    holds: SecretRead,
}

/// What of a secret a grant needs to still hold.
enum SecretRead {
    /// The state version read, exactly: the grant changes the secret (its compare-and-set
    /// checks the same).
    State(Option<u64>),
    /// The version a handle or credential was issued from is still the secret's current one,
    /// and active: a rotation or a revocation of it since the read voids the grant, so that
    /// no node issues from a version that is no longer current however old its read (a node
    /// may decide from state it remembers and leave the check to this commit). Staging, or
    /// revoking another version, leaves it standing.
    Current(Option<u64>),
}

impl GrantedRead {
    fn of(unit: &CommitUnit) -> Option<Self> {
        unit.bundle.as_ref().filter(|b| b.is_ok() && !b.dry_run)?;
        let Some(DecisionInputs::Request(inputs)) = &unit.inputs else {
            return None;
        };
        let holds = match unit.change {
            Change::None => SecretRead::Current(inputs.current_version),
            _ => SecretRead::State(inputs.state_version),
        };
        Some(Self {
            policy_version: inputs.policy_version.unwrap_or(0),
            secret: inputs
                .request
                .secret_name
                .as_deref()
                .and_then(|n| SecretName::try_from(n).ok()),
            holds,
        })
    }
}

/// A committed secret as the plan needs it.
#[derive(Clone)]
pub struct StoredSecret {
    /// Its snapshot (state version, kind, versions, bounds).
    pub snapshot: Arc<SecretSnapshot>,
    /// Its staged material, sealed, if any.
    pub staged: Option<Vec<u8>>,
    /// The row's MAC over its tenant, name and purpose ([`purpose_mac`]), if it has one. A
    /// change that seals new material first proves the purpose: the purpose is a column
    /// whoever writes the database could edit (a key turned into a credential, to have its next
    /// version sealed as redeemable). The MAC proves it without a read; a row without one
    /// (made before it, or stripped of it) proves it by [`StoredSecret::latest`], and gets one.
    pub purpose_mac: Option<Vec<u8>>,
    /// Its latest version's material, sealed, which opens only under the purpose the KMS
    /// sealed it for. Needed only where a sealing change finds no purpose MAC; `None` where
    /// the backend gives the snapshot alone, for a grant's check.
    pub latest: Option<Vec<u8>>,
}

/// The MAC a secret row keeps over its tenant, name and purpose (see
/// [`StoredSecret::purpose_mac`]).
pub fn purpose_mac(keys: &ServiceKeys, key: &SecretKey, purpose: Purpose) -> Vec<u8> {
    keys.row_mac(PURPOSE_ROW, &purpose_columns(key, purpose))
        .to_vec()
}

const PURPOSE_ROW: &str = "secrets.purpose";

fn purpose_columns(key: &SecretKey, purpose: Purpose) -> [Column<'_>; 3] {
    [
        Column::Text(key.0.as_str()),
        Column::Text(key.1.as_str()),
        Column::Text(purpose.name()),
    ]
}

/// The committed state a batch is decided from, read by the backend under its guard.
#[derive(Default)]
pub struct Committed {
    /// The chain head of every tenant of the batch (absent: an empty chain).
    pub heads: HashMap<TenantId, Head>,
    /// Policy versions of the tenants that need one (absent: no policy yet, version 0).
    pub policy_versions: HashMap<TenantId, u64>,
    /// Data keys of the tenants that need one and have one.
    pub data_keys: HashMap<TenantId, Arc<DataKey>>,
    /// Whether a missing data key may be created: false when this node's root key is no longer
    /// the store's (another node rotated it), so that it never wraps a key the others cannot open.
    pub may_create_keys: bool,
    /// The secrets of the batch that exist.
    pub secrets: HashMap<SecretKey, StoredSecret>,
    /// The batch's idempotency keys that are already taken.
    pub taken: HashSet<IdempotencyScope>,
    /// Every principal the batch needs that exists: those it names by id, the unrevoked ones
    /// holding a name or SPIFFE id it claims, and, when [`Needs::global_admins`] is set, every
    /// unrevoked admin principal scoped to every tenant.
    pub principals: HashMap<PrincipalId, PrincipalRecord>,
    /// The tokens the batch names that exist.
    pub tokens: HashMap<TokenId, TokenRow>,
    /// Items whose stored form could not be read (a data key that does not open, a secret row
    /// that does not parse): only the units that need them are refused, with this error.
    pub unreadable: HashMap<Item, StoreError>,
}

/// A piece of committed state a unit may need.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Item {
    /// A tenant's data key.
    DataKey(TenantId),
    /// A secret.
    Secret(SecretKey),
}

/// A new secret row, with its state after the whole batch.
pub struct SecretRow {
    /// The tenant.
    pub tenant: TenantId,
    /// The secret.
    pub name: SecretName,
    /// Its opaque ref.
    pub secret_ref: String,
    /// Generated or imported.
    pub kind: SecretKind,
    /// Its state version after the batch.
    pub state_version: u64,
    /// Ephemeral TTL bounds.
    pub ttl: TtlBounds,
    /// Handle lifetime.
    pub handle_ttl_ms: u64,
    /// Staged material, sealed, after the batch.
    pub staged: Option<Vec<u8>>,
    /// When it was made.
    pub created_at_ms: u64,
    /// What it is for.
    pub purpose: Purpose,
    /// Its MAC over tenant, name and purpose (see [`StoredSecret::purpose_mac`]).
    pub purpose_mac: Option<Vec<u8>>,
    /// The oldest version `decrypt` accepts, after the batch.
    pub min_decryption_version: u64,
}

/// The new state of an existing secret row after the whole batch.
pub struct SecretUpdate {
    /// The tenant.
    pub tenant: TenantId,
    /// The secret.
    pub name: SecretName,
    /// Its state version after the batch.
    pub state_version: u64,
    /// Staged material, sealed, after the batch.
    pub staged: Option<Vec<u8>>,
    /// Its MAC over tenant, name and purpose, if it has one (a row without one keeps none).
    pub purpose_mac: Option<Vec<u8>>,
    /// The oldest version `decrypt` accepts, after the batch.
    pub min_decryption_version: u64,
}

/// A new version row (always `ACTIVE`; a later revocation in the batch is a [`Revocation`]).
pub struct VersionRow {
    /// The tenant.
    pub tenant: TenantId,
    /// The secret.
    pub name: SecretName,
    /// The version number.
    pub version: u64,
    /// The material, sealed under the tenant's data key.
    pub sealed: Vec<u8>,
    /// When it was made.
    pub created_at_ms: u64,
}

/// Versions `first..=last` of a secret that become `REVOKED`, whatever their stored state: a
/// revocation is written over the whole range it covers, not only over the versions the
/// snapshot showed active, so a version re-activated behind the store's back is revoked too.
pub struct Revocation {
    /// The tenant.
    pub tenant: TenantId,
    /// The secret.
    pub name: SecretName,
    /// The first version revoked.
    pub first: u64,
    /// The last version revoked.
    pub last: u64,
}

/// A revoked handle or credential, kept until it would have expired anyway.
pub struct RevokedRef {
    /// The tenant.
    pub tenant: TenantId,
    /// The handle or credential id.
    pub id: String,
    /// When it would have expired.
    pub expires_at_ms: u64,
}

/// An idempotency record to insert.
pub struct IdempotencyRow {
    /// Where the key lives.
    pub scope: IdempotencyScope,
    /// The request's fingerprint.
    pub fingerprint: [u8; 32],
    /// The answer, byte for byte, sealed under the tenant's data key and bound to the key and
    /// fingerprint: it may hold a redeemable ref.
    pub sealed: Vec<u8>,
    /// When it was made.
    pub created_at_ms: u64,
}

/// An audit record (or a checkpoint) to insert, encoded.
pub struct ChainRow {
    /// The tenant.
    pub tenant: TenantId,
    /// Its place in the tenant's chain.
    pub seq: u64,
    /// The encoded record, checkpoint or document.
    pub json: String,
    /// A record's decision inputs, sealed under the tenant's data key.
    pub inputs: Option<Vec<u8>>,
}

/// A policy row's new document and version.
pub struct PolicyRow {
    /// The tenant.
    pub tenant: TenantId,
    /// The encoded record, checkpoint or document.
    pub json: String,
    /// The version number.
    pub version: u64,
}

/// Every row a batch writes, and the state it leaves, as decided by [`plan`].
///
/// The groups are independent of the order in which a backend writes them, with one rule:
/// new secrets before new versions before revocations (a revocation may name a version the
/// same batch created).
#[derive(Default)]
pub struct Writes {
    /// New data keys, wrapped under the root key.
    pub data_keys: Vec<(TenantId, Vec<u8>)>,
    /// New secrets.
    pub secrets: Vec<SecretRow>,
    /// Existing secrets, in their new state.
    pub secret_updates: Vec<SecretUpdate>,
    /// New versions.
    pub versions: Vec<VersionRow>,
    /// Versions that become revoked.
    pub revocations: Vec<Revocation>,
    /// Revoked handles and credentials.
    pub revoked_refs: Vec<RevokedRef>,
    /// Policy changes, one per tenant.
    pub policies: Vec<PolicyRow>,
    /// Idempotency records.
    pub idempotency: Vec<IdempotencyRow>,
    /// New principals.
    pub principals: Vec<PrincipalRecord>,
    /// New tokens (after the principals: a token names its principal).
    pub tokens: Vec<TokenRow>,
    /// Principals revoked, in their new state (after new principals and tokens: a batch may
    /// revoke what it created). Their tokens' rows stay as they are: a token authenticates only
    /// for a live principal.
    pub revoked_principals: Vec<PrincipalRecord>,
    /// Tokens revoked, in their new state (after new tokens).
    pub revoked_tokens: Vec<TokenRow>,
    /// Audit records.
    pub audit: Vec<ChainRow>,
    /// Signed checkpoints.
    pub checkpoints: Vec<ChainRow>,
    /// The chain heads that moved.
    pub heads: HashMap<TenantId, Head>,
    /// What readers may see once the batch is durable: snapshots of changed secrets, policies,
    /// and unwrapped new data keys.
    pub snapshots: Vec<(SecretKey, Arc<SecretSnapshot>)>,
    /// The policies the batch stored.
    pub stored_policies: Vec<(TenantId, StoredPolicy)>,
    /// Unwrapped new data keys.
    pub new_keys: Vec<(TenantId, Arc<DataKey>)>,
}

impl Writes {
    /// Whether the batch writes anything at all.
    pub fn is_empty(&self) -> bool {
        self.audit.is_empty()
    }

    /// Whether the batch revokes a principal or a token: the store's authentication epoch must
    /// advance in the same transaction.
    pub fn revokes_credentials(&self) -> bool {
        !self.revoked_principals.is_empty() || !self.revoked_tokens.is_empty()
    }
}

/// A decided batch: each unit's outcome, in order, and what the applied ones write.
pub struct Plan {
    /// Each unit's outcome, in order.
    pub outcomes: Vec<StoreResult<Receipt>>,
    /// What the applied units write.
    pub writes: Writes,
}

/// The working state of a batch: the committed state, as changed by its applied units so far.
struct Working<'a> {
    keys: &'a ServiceKeys,
    root: &'a RootKey,
    /// The time of the unit being applied, as its host read it (its audit record's): what new
    /// rows are stamped with, so the store reads no clock.
    at_ms: u64,
    committed: Committed,
    /// Secrets created or changed by this batch, in their latest state.
    secrets: HashMap<SecretKey, StoredSecret>,
    /// Of those, the ones this batch created, with when.
    created: HashMap<SecretKey, u64>,
    claimed: HashSet<IdempotencyScope>,
    credentials: Credentials,
    writes: Writes,
}

/// Proves the secret's purpose (see [`StoredSecret::purpose_mac`]) by its row's MAC, or, for a
/// row without one, by opening its latest version under it: a purpose that is not the one the
/// KMS gave refuses the change (`Corrupt`) before anything is sealed under it. Returns the MAC
/// the row keeps from then on.
fn prove_purpose(
    keys: &ServiceKeys,
    dek: &DataKey,
    key: &SecretKey,
    current: &StoredSecret,
) -> StoreResult<Vec<u8>> {
    let corrupt = || {
        StoreError::new(
            ErrorKind::Corrupt,
            "the secret's purpose is not the one its material was sealed for",
        )
    };
    let purpose = current.snapshot.purpose;
    let proven = match &current.purpose_mac {
        Some(mac) => keys.row_mac_holds(PURPOSE_ROW, &purpose_columns(key, purpose), mac),
        None => {
            let sealed = current.latest.as_deref().ok_or_else(corrupt)?;
            let slot = Slot::Version(current.snapshot.current_version());
            let (tenant, name) = key;
            dek.open(tenant, name, slot, purpose, sealed).is_ok()
        }
    };
    if !proven {
        return Err(corrupt());
    }
    Ok(purpose_mac(keys, key, purpose))
}

/// Refuses material that does not fit the secret's purpose (a key is exactly 32 bytes).
fn fits(purpose: Purpose, material: &SecretMaterial) -> StoreResult<()> {
    if purpose.fits(material.len()) {
        Ok(())
    } else {
        Err(refused(
            ErrorKind::Invalid,
            "a key's material is exactly 32 bytes",
        ))
    }
}

impl Effect {
    /// An existing secret's new state, with no new version, revocation or revoked ref.
    fn updated(key: SecretKey, next: StoredSecret) -> Self {
        Self::Secret {
            key,
            next,
            versions: Vec::new(),
            revocations: Vec::new(),
            revoked_ref: None,
            created: false,
        }
    }
}

/// What a checked unit's change will do, computed before anything is written.
enum Effect {
    None,
    Secret {
        key: SecretKey,
        next: StoredSecret,
        versions: Vec<VersionRow>,
        revocations: Vec<Revocation>,
        revoked_ref: Option<RevokedRef>,
        created: bool,
    },
    /// The validated policy, its stored JSON, and the version it is stored as.
    Policy(Box<Policy>, String, u64),
    /// A principal or token change.
    Auth(AuthEffect),
}

fn refused(kind: ErrorKind, message: &str) -> StoreError {
    StoreError::new(kind, message)
}

/// Decides a batch. Each unit is checked in this order, and the first failed check refuses it
/// (alone, with no write):
/// 1. its idempotency key is free: neither committed nor claimed by an earlier unit of the batch
///    (`IdempotencyTaken`);
/// 2. its secret exists, or for a creation does not (`NotFound`, `AlreadyExists`);
/// 3. compare-and-set: the secret is at the state version the change was computed from, and an
///    answer that grants something finds the policy version and secret state its decision read
///    (`StateConflict`; see `GrantedRead`);
/// 4. the change's own precondition: staged material for a rotation from staged material
///    (`StateConflict`), an imported secret for staging (`Invalid`), a valid policy (`Invalid`);
/// 5. the audit chain has room (`Invalid`).
///
/// New rows are stamped with their unit's time (its audit record's `at_ms`); `root` wraps new
/// data keys.
pub fn plan(
    keys: &ServiceKeys,
    root: &RootKey,
    committed: Committed,
    units: Vec<CommitUnit>,
) -> Plan {
    let mut working = Working {
        keys,
        root,
        at_ms: 0,
        committed,
        secrets: HashMap::new(),
        created: HashMap::new(),
        claimed: HashSet::new(),
        credentials: Credentials::default(),
        writes: Writes::default(),
    };
    let outcomes = units.into_iter().map(|u| working.apply(u)).collect();
    Plan {
        outcomes,
        writes: working.finish(),
    }
}

impl Working<'_> {
    fn apply(&mut self, unit: CommitUnit) -> StoreResult<Receipt> {
        let granted = GrantedRead::of(&unit);
        let CommitUnit {
            tenant,
            change,
            audit,
            idempotency,
            bundle,
            inputs,
        } = unit;
        self.at_ms = audit.at_ms;
        if let Some(idem) = &idempotency
            && idem.scope.tenant != tenant
        {
            // The batch locks the unit's tenant: a key of another tenant would be unguarded.
            return Err(refused(
                ErrorKind::Invalid,
                "the idempotency key belongs to another tenant",
            ));
        }
        if let Some(idem) = &idempotency
            && (self.committed.taken.contains(&idem.scope) || self.claimed.contains(&idem.scope))
        {
            return Err(refused(
                ErrorKind::IdempotencyTaken,
                "the idempotency key is already taken",
            ));
        }
        if let Some(read) = &granted {
            self.still_read(&tenant, read)?;
        }
        let (effect, mut new_key) = self.effect(&tenant, change)?;
        let mut audit = audit;
        if let Effect::Policy(policy, _, version) = &effect {
            // The record names the version it stored, which only the plan knows, and the
            // document's digest.
            audit.policy_version = Some(*version);
            audit.policy_digest = Some(policy.document().digest());
        }
        let head = self.head(&tenant);
        let chained = chain(self.keys, &tenant, &head, audit, bundle)?;
        let answer = match &idempotency {
            Some(idem) => {
                let dek = self.unit_key(&tenant, &mut new_key)?;
                let bytes = chained.idempotency_bytes();
                Some(dek.seal_answer(&idem.scope, &idem.fingerprint, bytes)?)
            }
            None => None,
        };
        let sealed_inputs = match inputs {
            Some(mut inputs) => {
                if let DecisionInputs::Request(request) = &mut inputs {
                    request.keyed = idempotency.is_some();
                }
                let dek = self.unit_key(&tenant, &mut new_key)?;
                let head = &chained.head;
                let sealed =
                    dek.seal_inputs(&tenant, head.seq, &head.digest, &inputs.to_bytes())?;
                if sealed.len() > MAX_KEPT_INPUTS {
                    return Err(refused(
                        ErrorKind::Invalid,
                        "the decision's inputs are too large to keep beside its record",
                    ));
                }
                Some(sealed)
            }
            None => None,
        };
        // Every check passed: from here on the unit only records what it writes.
        if let Some((key, wrapped)) = new_key {
            self.committed.data_keys.insert(tenant.clone(), key.clone());
            self.writes.data_keys.push((tenant.clone(), wrapped));
            self.writes.new_keys.push((tenant.clone(), key));
        }
        let policy_version = self.record(&tenant, effect);
        if let (Some(idem), Some(sealed)) = (idempotency, answer) {
            self.claimed.insert(idem.scope.clone());
            self.writes.idempotency.push(IdempotencyRow {
                scope: idem.scope,
                fingerprint: idem.fingerprint,
                sealed,
                created_at_ms: chained.at_ms,
            });
        }
        let seq = chained.head.seq;
        self.writes.audit.push(ChainRow {
            tenant: tenant.clone(),
            seq,
            json: chained.record,
            inputs: sealed_inputs,
        });
        if let Some(json) = chained.checkpoint {
            self.writes.checkpoints.push(ChainRow {
                tenant: tenant.clone(),
                seq,
                json,
                inputs: None,
            });
        }
        self.writes.heads.insert(tenant, chained.head);
        Ok(Receipt {
            audit_seq: seq,
            bundle_json: chained.bundle,
            policy_version,
        })
    }

    fn head(&self, tenant: &TenantId) -> Head {
        self.writes
            .heads
            .get(tenant)
            .or_else(|| self.committed.heads.get(tenant))
            .cloned()
            .unwrap_or_else(Head::genesis)
    }

    /// The secret as the batch has it now: changed by an earlier unit, or as committed.
    fn secret(&self, key: &SecretKey) -> StoreResult<Option<&StoredSecret>> {
        if let Some(secret) = self.secrets.get(key) {
            return Ok(Some(secret));
        }
        if let Some(e) = self.committed.unreadable.get(&Item::Secret(key.clone())) {
            return Err(e.clone());
        }
        Ok(self.committed.secrets.get(key))
    }

    /// Whether the policy version and secret state a grant was decided from are still the
    /// committed ones (as this batch has them so far).
    fn still_read(&self, tenant: &TenantId, read: &GrantedRead) -> StoreResult<()> {
        let policy = self.committed.policy_versions.get(tenant).copied();
        let secret = match &read.secret {
            Some(name) => self
                .secret(&(tenant.clone(), name.clone()))?
                .map(|s| s.snapshot.clone()),
            None => None,
        };
        let holds = match read.holds {
            SecretRead::State(version) => secret.map(|s| s.state_version) == version,
            SecretRead::Current(version) => secret.is_some_and(|s| {
                Some(s.current_version()) == version
                    && s.version_state(s.current_version()) == Some(VersionState::Active)
            }),
        };
        if policy.unwrap_or(0) != read.policy_version || !holds {
            return Err(refused(
                ErrorKind::StateConflict,
                "the policy or the secret changed since the decision read them",
            ));
        }
        Ok(())
    }

    /// The data key a unit seals under: the one it created, or the tenant's (perhaps new).
    fn unit_key(&self, tenant: &TenantId, new_key: &mut NewKey) -> StoreResult<Arc<DataKey>> {
        if let Some((key, _)) = new_key {
            return Ok(key.clone());
        }
        let (key, created) = self.data_key(tenant)?;
        *new_key = created;
        Ok(key)
    }

    /// The tenant's data key, or a new one (with its wrapped form) if it has none.
    fn data_key(&self, tenant: &TenantId) -> StoreResult<(Arc<DataKey>, NewKey)> {
        if let Some(key) = self.committed.data_keys.get(tenant) {
            return Ok((key.clone(), None));
        }
        if let Some(e) = self
            .committed
            .unreadable
            .get(&Item::DataKey(tenant.clone()))
        {
            return Err(e.clone());
        }
        if !self.committed.may_create_keys {
            return Err(StoreError::new(
                ErrorKind::Unavailable,
                "the root key was rotated: restart this node with the new key",
            ));
        }
        let (key, wrapped) = self.root.new_data_key(tenant)?;
        let key = Arc::new(key);
        Ok((key.clone(), Some((key, wrapped))))
    }

    /// Checks a change (steps 2–4) and computes its effect, writing nothing.
    fn effect(&self, tenant: &TenantId, change: Change) -> StoreResult<(Effect, NewKey)> {
        match change {
            Change::None => Ok((Effect::None, None)),
            Change::PutPolicy(doc) => {
                let current = self.committed.policy_versions.get(tenant).copied();
                let version =
                    next_storable(current.unwrap_or(0), "the policy version is exhausted")?;
                let (policy, json) = encode_policy(&doc)?;
                Ok((Effect::Policy(Box::new(policy), json, version), None))
            }
            Change::CreateSecret(new) => self.create(tenant, new),
            Change::CreatePrincipal(new) => {
                self.auth(tenant, |c, committed, at| c.create(committed, *new, at))
            }
            Change::IssueToken { principal, token } => self.auth(tenant, |c, committed, at| {
                c.issue(committed, &principal, token, at)
            }),
            Change::RevokeToken { principal, token } => self.auth(tenant, |c, committed, at| {
                c.revoke_token(committed, &principal, &token, at)
            }),
            Change::RevokePrincipal(principal) => self.auth(tenant, |c, committed, at| {
                c.revoke_principal(committed, &principal, at)
            }),
            Change::StageMaterial { name, material } => {
                let key = (tenant.clone(), name);
                let current = self
                    .secret(&key)?
                    .ok_or_else(|| refused(ErrorKind::NotFound, "no such secret"))?;
                if current.snapshot.kind != SecretKind::Imported {
                    return Err(refused(
                        ErrorKind::Invalid,
                        "only imported secrets take staged material",
                    ));
                }
                let purpose = current.snapshot.purpose;
                fits(purpose, &material)?;
                let (dek, new_key) = self.data_key(tenant)?;
                let proof = prove_purpose(self.keys, &dek, &key, current)?;
                let sealed = dek.seal(tenant, &key.1, Slot::Staged, purpose, &material)?;
                let mut snapshot = (*current.snapshot).clone();
                snapshot.state_version = next_state_version(snapshot.state_version)?;
                snapshot.staged = true;
                let next = StoredSecret {
                    snapshot: Arc::new(snapshot),
                    staged: Some(sealed),
                    purpose_mac: Some(proof),
                    latest: current.latest.clone(),
                };
                Ok((Effect::updated(key, next), new_key))
            }
            Change::SetMinDecryptionVersion { name, version } => {
                let key = (tenant.clone(), name);
                let current = self
                    .secret(&key)?
                    .ok_or_else(|| refused(ErrorKind::NotFound, "no such secret"))?;
                if !current.snapshot.purpose.is_key() {
                    return Err(refused(
                        ErrorKind::Invalid,
                        "only keys have a minimum decryption version",
                    ));
                }
                if version == 0 || version > current.snapshot.current_version() {
                    return Err(refused(
                        ErrorKind::Invalid,
                        "the minimum decryption version is not one of the key's versions",
                    ));
                }
                let mut snapshot = (*current.snapshot).clone();
                snapshot.state_version = next_state_version(snapshot.state_version)?;
                snapshot.min_decryption_version = version;
                let next = StoredSecret {
                    snapshot: Arc::new(snapshot),
                    staged: current.staged.clone(),
                    purpose_mac: current.purpose_mac.clone(),
                    latest: current.latest.clone(),
                };
                Ok((Effect::updated(key, next), None))
            }
            Change::Secret {
                name,
                expected_state_version,
                change,
                material,
            } => {
                // Material the change does not use is a host bug: refuse it, never drop it.
                let uses_material = matches!(
                    change,
                    StateChange::Rotate {
                        from_staged: false,
                        ..
                    }
                );
                if material.is_some() != uses_material {
                    return Err(refused(
                        ErrorKind::Invalid,
                        "fresh material is given with exactly a generated rotation",
                    ));
                }
                self.state_change(tenant, name, expected_state_version, &change, material)
            }
        }
    }

    /// A principal or token change: decided on the system chain only.
    fn auth(
        &self,
        tenant: &TenantId,
        decide: impl FnOnce(&Credentials, &Committed, u64) -> StoreResult<AuthEffect>,
    ) -> StoreResult<(Effect, NewKey)> {
        if !tenant.is_system() {
            return Err(refused(
                ErrorKind::Invalid,
                "principal and token events go to the system chain",
            ));
        }
        let effect = decide(&self.credentials, &self.committed, self.at_ms)?;
        Ok((Effect::Auth(effect), None))
    }

    fn create(&self, tenant: &TenantId, new: NewSecret) -> StoreResult<(Effect, NewKey)> {
        let key = (tenant.clone(), new.name);
        if self.secret(&key)?.is_some() {
            return Err(refused(
                ErrorKind::AlreadyExists,
                "the secret already exists",
            ));
        }
        if new.kind == SecretKind::Generated && new.material.len() != MATERIAL_LEN {
            return Err(refused(
                ErrorKind::Invalid,
                "generated material has the wrong length",
            ));
        }
        fits(new.purpose, &new.material)?;
        let material = new.material;
        let (dek, new_key) = self.data_key(tenant)?;
        let version = self.version_row(&dek, &key, 1, new.purpose, &material)?;
        let snapshot = SecretSnapshot {
            secret_ref: refs::secret_ref(self.keys, tenant, &key.1),
            state_version: 1,
            kind: new.kind,
            versions: vec![VersionState::Active],
            staged: false,
            ttl: new.ttl,
            handle_ttl_ms: new.handle_ttl_ms,
            purpose: new.purpose,
            min_decryption_version: 1,
        };
        let next = StoredSecret {
            snapshot: Arc::new(snapshot),
            staged: None,
            purpose_mac: Some(purpose_mac(self.keys, &key, new.purpose)),
            latest: Some(version.sealed.clone()),
        };
        Ok((
            Effect::Secret {
                key,
                next,
                versions: vec![version],
                revocations: Vec::new(),
                revoked_ref: None,
                created: true,
            },
            new_key,
        ))
    }

    fn version_row(
        &self,
        dek: &DataKey,
        key: &SecretKey,
        version: u64,
        purpose: Purpose,
        material: &SecretMaterial,
    ) -> StoreResult<VersionRow> {
        let (tenant, name) = key;
        Ok(VersionRow {
            tenant: tenant.clone(),
            name: name.clone(),
            version,
            sealed: dek.seal(tenant, name, Slot::Version(version), purpose, material)?,
            created_at_ms: self.at_ms,
        })
    }

    /// A core state change, under compare-and-set on the secret's state version.
    fn state_change(
        &self,
        tenant: &TenantId,
        name: SecretName,
        expected: u64,
        change: &StateChange,
        fresh: Option<SecretMaterial>,
    ) -> StoreResult<(Effect, NewKey)> {
        let key = (tenant.clone(), name);
        let current = self
            .secret(&key)?
            .ok_or_else(|| refused(ErrorKind::NotFound, "no such secret"))?;
        if current.snapshot.state_version != expected {
            return Err(refused(
                ErrorKind::StateConflict,
                "the secret changed since the snapshot",
            ));
        }
        let mut snapshot = (*current.snapshot).clone();
        snapshot.state_version = next_state_version(expected)?;
        let mut staged = current.staged.clone();
        let mut latest = current.latest.clone();
        let mut proof = current.purpose_mac.clone();
        let mut versions = Vec::new();
        let mut revocations = Vec::new();
        let mut revoked_ref = None;
        let mut new_key = None;
        match change {
            StateChange::None => {}
            StateChange::Rotate {
                new_version,
                from_staged,
            } => {
                let (dek, created_key) = self.data_key(tenant)?;
                new_key = created_key;
                let purpose = snapshot.purpose;
                let material = match (*from_staged, staged.take()) {
                    (true, Some(sealed)) => {
                        dek.open(tenant, &key.1, Slot::Staged, purpose, &sealed)?
                    }
                    (true, None) => {
                        return Err(refused(ErrorKind::StateConflict, "no staged material"));
                    }
                    (false, _) => {
                        proof = Some(prove_purpose(self.keys, &dek, &key, current)?);
                        fresh.filter(|m| m.len() == MATERIAL_LEN).ok_or_else(|| {
                            refused(ErrorKind::Invalid, "a rotation needs fresh material")
                        })?
                    }
                };
                let expected_version = u64::try_from(snapshot.versions.len())
                    .ok()
                    .and_then(|n| n.checked_add(1));
                if expected_version != Some(*new_version) || to_db(*new_version).is_err() {
                    return Err(refused(
                        ErrorKind::StateConflict,
                        "the new version does not follow the current one",
                    ));
                }
                let row = self.version_row(&dek, &key, *new_version, purpose, &material)?;
                latest = Some(row.sealed.clone());
                versions.push(row);
                snapshot.versions.push(VersionState::Active);
                snapshot.staged = false;
            }
            StateChange::RevokeVersion(v) => {
                let state = snapshot
                    .versions
                    .get_mut(version_index(*v)?)
                    .ok_or_else(|| refused(ErrorKind::NotFound, "no such version"))?;
                *state = VersionState::Revoked;
                revocations.push(revocation(&key, *v, *v));
            }
            StateChange::RevokeAllVersions => {
                // Every version that exists now; one a later unit of the batch adds stays active.
                let last = u64::try_from(snapshot.versions.len())
                    .map_err(|_| refused(ErrorKind::Invalid, "too many versions"))?;
                snapshot.versions.fill(VersionState::Revoked);
                if last > 0 {
                    revocations.push(revocation(&key, 1, last));
                }
            }
            StateChange::RevokeHandle { id, expires_at_ms }
            | StateChange::RevokeCredential { id, expires_at_ms } => {
                revoked_ref = Some(RevokedRef {
                    tenant: tenant.clone(),
                    id: id.as_str().to_owned(),
                    expires_at_ms: *expires_at_ms,
                });
            }
        }
        let next = StoredSecret {
            snapshot: Arc::new(snapshot),
            staged,
            purpose_mac: proof,
            latest,
        };
        Ok((
            Effect::Secret {
                key,
                next,
                versions,
                revocations,
                revoked_ref,
                created: false,
            },
            new_key,
        ))
    }

    /// Records a checked unit's effect in the working state and the writes; returns the new
    /// policy version for a policy change.
    fn record(&mut self, tenant: &TenantId, effect: Effect) -> Option<u64> {
        match effect {
            Effect::None => None,
            Effect::Auth(effect) => {
                self.credentials.record(effect, &mut self.writes);
                None
            }
            Effect::Policy(policy, json, version) => {
                self.committed
                    .policy_versions
                    .insert(tenant.clone(), version);
                // Only the last change of a tenant's policy in a batch is written: a set-based
                // update applies one source row per target row.
                self.writes.policies.retain(|p| &p.tenant != tenant);
                self.writes.stored_policies.retain(|(t, _)| t != tenant);
                self.writes.policies.push(PolicyRow {
                    tenant: tenant.clone(),
                    json,
                    version,
                });
                self.writes.stored_policies.push((
                    tenant.clone(),
                    StoredPolicy {
                        policy: Arc::from(policy),
                        version,
                    },
                ));
                Some(version)
            }
            Effect::Secret {
                key,
                next,
                versions,
                revocations,
                revoked_ref,
                created,
            } => {
                if created {
                    self.created.insert(key.clone(), self.at_ms);
                }
                self.writes.versions.extend(versions);
                self.writes.revocations.extend(revocations);
                self.writes.revoked_refs.extend(revoked_ref);
                self.secrets.insert(key, next);
                None
            }
        }
    }

    /// The rows of every secret the batch changed, in their final state.
    fn finish(mut self) -> Writes {
        let mut secrets: Vec<_> = self.secrets.into_iter().collect();
        secrets.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, secret) in secrets {
            let snapshot = &secret.snapshot;
            let (tenant, name) = key.clone();
            if let Some(&created_at_ms) = self.created.get(&key) {
                self.writes.secrets.push(SecretRow {
                    tenant,
                    name,
                    secret_ref: snapshot.secret_ref.clone(),
                    kind: snapshot.kind,
                    state_version: snapshot.state_version,
                    ttl: snapshot.ttl,
                    handle_ttl_ms: snapshot.handle_ttl_ms,
                    staged: secret.staged.clone(),
                    created_at_ms,
                    purpose: snapshot.purpose,
                    purpose_mac: secret.purpose_mac.clone(),
                    min_decryption_version: snapshot.min_decryption_version,
                });
            } else {
                self.writes.secret_updates.push(SecretUpdate {
                    tenant,
                    name,
                    state_version: snapshot.state_version,
                    staged: secret.staged.clone(),
                    purpose_mac: secret.purpose_mac.clone(),
                    min_decryption_version: snapshot.min_decryption_version,
                });
            }
            self.writes.snapshots.push((key, secret.snapshot));
        }
        self.writes
    }
}

/// A data key created by a unit, and its wrapped form to store.
type NewKey = Option<(Arc<DataKey>, Vec<u8>)>;

/// The next number after `current` that both databases can store.
fn next_storable(current: u64, what: &str) -> StoreResult<u64> {
    current
        .checked_add(1)
        .filter(|next| to_db(*next).is_ok())
        .ok_or_else(|| refused(ErrorKind::Invalid, what))
}

fn next_state_version(current: u64) -> StoreResult<u64> {
    next_storable(current, "the state version is exhausted")
}

fn version_index(version: u64) -> StoreResult<usize> {
    version
        .checked_sub(1)
        .and_then(|i| usize::try_from(i).ok())
        .ok_or_else(|| refused(ErrorKind::NotFound, "no such version"))
}

fn revocation((tenant, name): &SecretKey, first: u64, last: u64) -> Revocation {
    Revocation {
        tenant: tenant.clone(),
        name: name.clone(),
        first,
        last,
    }
}
