//! The conformance suite every [`Store`] backend must pass, run by each backend crate's tests
//! (feature `conformance`). Each check takes a fresh, empty store and panics on a violation.

mod keys;
mod manifests;
mod principals;

use std::sync::Arc;

pub use keys::*;
pub use manifests::*;
pub use principals::*;

use crate::verify::verify_store;
use crate::{
    Change, CommitUnit, ErrorKind, IdempotencyScope, IdempotencyWrite, NewSecret, Receipt, Store,
    StoreResult,
};
use selene_kms_core::audit::GENESIS_DIGEST;
use selene_kms_core::replay::{KeySeen, RequestInputs};
use selene_kms_core::{
    AuditAction, AuditRecord, DecisionInputs, KmsRequest, MaterialBundle, Policy, PolicyDocument,
    Purpose, ReasonCode, RefId, RefKind, SecretKind, SecretMaterial, SecretName, SecretSnapshot,
    StateChange, TenantId, TombstoneTarget, TtlBounds, VersionState, evaluate, issue, redeem, refs,
    state::{DEFAULT_HANDLE_TTL_MS, terms_digest},
};

/// A secret value that must never appear anywhere but in redeemed material.
pub const CANARY: &[u8] = b"sk_live_CANARY_7f3a9c1e5b2d4f60";

/// The time every unit of the suite claims: the store reads no clock, so a fixed one keeps the
/// checks deterministic.
pub const NOW_MS: u64 = 1_767_225_600_000;

/// Fills a store with everything a plaintext scan of its files must not find: twenty imported
/// secrets whose value is [`CANARY`], the same value staged, and a stored answer holding
/// [`HANDLE_CANARY`].
pub async fn store_canaries(store: &dyn Store, t: &TenantId) {
    for i in 0..20 {
        create(
            store,
            t,
            &format!("canary/{i}"),
            SecretKind::Imported,
            Some(CANARY),
        )
        .await
        .expect("create");
    }
    stage(store, t, "canary/0", CANARY).await.expect("stage");
    store_a_handle(store, t).await;
}

/// A redeemable-looking handle kept in a stored answer; it must rest in no file in clear.
pub const HANDLE_CANARY: &str = "ksh1_CANARYhandle0123456789abcdefghij";

/// Commits an answer holding [`HANDLE_CANARY`] under an idempotency key, and checks that the
/// store gives it back intact.
pub async fn store_a_handle(store: &dyn Store, t: &TenantId) {
    let scope = IdempotencyScope {
        tenant: t.clone(),
        caller: "os-1".into(),
        key: "handle-canary".into(),
    };
    let mut unit = keyed_unit(&scope, 7);
    if let Some(bundle) = unit.bundle.as_mut() {
        bundle.secret_handle = Some(HANDLE_CANARY.to_owned());
    }
    let receipt = store.commit(unit).await.expect("commit");
    let stored = store
        .idempotency(&scope)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(Some(stored.bundle_json), receipt.bundle_json);
}

/// A tenant id, which must be valid.
pub fn tenant(s: &str) -> TenantId {
    TenantId::try_from(s).expect("valid tenant")
}

/// A secret name, which must be valid.
pub fn name(s: &str) -> SecretName {
    SecretName::try_from(s).expect("valid name")
}

/// The secret's snapshot, which must exist.
pub async fn snapshot(store: &dyn Store, t: &TenantId, n: &str) -> Arc<SecretSnapshot> {
    store
        .secret(t, &name(n))
        .await
        .expect("read")
        .expect("exists")
}

/// Reads one version's material the way a host must: a handle for it, sealed by the pipeline
/// under a policy that allows everyone, opened and passed through redemption's checks, whose
/// grant the read consumes.
pub async fn redeem(
    store: &dyn Store,
    t: &TenantId,
    n: &str,
    version: u64,
) -> StoreResult<SecretMaterial> {
    let keys = store.keys();
    let now = NOW_MS;
    let current = snapshot(store, t, n).await;
    // `issue` seals a handle for the snapshot's current version: show it the secret as it was
    // when `version` was current.
    let mut then = (*current).clone();
    then.versions
        .truncate(usize::try_from(version).expect("a small version"));
    let (opened, everyone) = opened_handle(keys, t, n, &then);
    let revoked = store.is_revoked(t, opened.id()).await?;
    let grant =
        redeem::check(&opened, Some(&everyone), Some(&current), revoked, now).expect("redeemable");
    store.material(grant).await
}

/// An audit record of `action` for tenant `t`, made now.
pub fn record(t: &TenantId, action: AuditAction) -> AuditRecord {
    AuditRecord::for_action(t, action, ReasonCode::OkMaterialIssue, NOW_MS)
}

/// Material as a host would generate it: distinct on every call (a counter, not randomness,
/// so that the suite stays deterministic).
pub fn fresh_material() -> SecretMaterial {
    static DRAWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = DRAWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut bytes = [0x5a_u8; 32];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    SecretMaterial::from_slice(&bytes)
}

/// A handle to the current version of `snapshot` (secret `n` of `t`), sealed by the pipeline
/// under a policy that allows everyone, and opened: what a host holds before its checks. The
/// policy comes with it.
pub fn opened_handle(
    keys: &selene_kms_core::ServiceKeys,
    t: &TenantId,
    n: &str,
    snapshot: &SecretSnapshot,
) -> (selene_kms_core::OpenedGrant, Policy) {
    let request = KmsRequest::from_json(
        serde_json::json!({
            "correlation_id": "c", "turn_id": "t", "idempotency_key": "read",
            "tenant_id": t.as_str(), "operation": "GET_HANDLE", "secret_name": n,
            "requester_engine_id": "E",
        })
        .to_string()
        .as_bytes(),
    )
    .expect("valid request");
    let everyone = Policy::from_json(
        br#"{"rules":[{"secret_names":["*"],"engines":["*"],"operations":["GET_HANDLE"]}]}"#,
    )
    .expect("valid policy");
    let access = evaluate(&request, Some(&everyone), Some(snapshot), keys, NOW_MS).expect("ok");
    let handle = issue(access, Some(snapshot), keys)
        .expect("issued")
        .bundle
        .secret_handle
        .expect("a handle");
    let opened = refs::open_grant(keys, RefKind::Handle, t, &handle).expect("opens");
    (opened, everyone)
}

/// Commits the creation of secret `n`, a credential.
pub async fn create(
    store: &dyn Store,
    t: &TenantId,
    n: &str,
    kind: SecretKind,
    material: Option<&[u8]>,
) -> StoreResult<Receipt> {
    create_for(store, t, n, kind, material, Purpose::Credential).await
}

/// Commits the creation of secret `n` for `purpose`.
pub async fn create_for(
    store: &dyn Store,
    t: &TenantId,
    n: &str,
    kind: SecretKind,
    material: Option<&[u8]>,
    purpose: Purpose,
) -> StoreResult<Receipt> {
    let (ttl, handle_ttl_ms) = (TtlBounds::DEFAULT, DEFAULT_HANDLE_TTL_MS);
    store
        .commit(CommitUnit {
            tenant: t.clone(),
            change: Change::CreateSecret(NewSecret {
                name: name(n),
                kind,
                material: material.map_or_else(fresh_material, SecretMaterial::from_slice),
                ttl,
                handle_ttl_ms,
                purpose,
            }),
            audit: AuditRecord {
                secret_ref: Some(refs::secret_ref(store.keys(), t, &name(n))),
                terms_digest: Some(terms_digest(kind, &ttl, handle_ttl_ms, purpose)),
                ..record(t, AuditAction::CreateSecret)
            },
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await
}

/// Commits staged material for the next rotation of secret `n`.
pub async fn stage(
    store: &dyn Store,
    t: &TenantId,
    n: &str,
    material: &[u8],
) -> StoreResult<Receipt> {
    store
        .commit(CommitUnit {
            tenant: t.clone(),
            change: Change::StageMaterial {
                name: name(n),
                material: SecretMaterial::from_slice(material),
            },
            audit: AuditRecord {
                secret_ref: Some(refs::secret_ref(store.keys(), t, &name(n))),
                ..record(t, AuditAction::StageVersion)
            },
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await
}

/// The record a host commits with `change` of secret `n`: what it changed, as the pipeline's
/// bundle tells it.
fn record_of_change(store: &dyn Store, t: &TenantId, n: &str, change: &StateChange) -> AuditRecord {
    let (action, rotated_version, revoked) = match *change {
        StateChange::None => (AuditAction::GetHandle, None, None),
        StateChange::Rotate { new_version, .. } => (AuditAction::Rotate, Some(new_version), None),
        StateChange::RevokeVersion(v) => (
            AuditAction::Revoke,
            None,
            Some((TombstoneTarget::Version, Some(v))),
        ),
        StateChange::RevokeAllVersions => (
            AuditAction::Revoke,
            None,
            Some((TombstoneTarget::AllVersions, None)),
        ),
        StateChange::RevokeHandle { .. } => (
            AuditAction::Revoke,
            None,
            Some((TombstoneTarget::Handle, None)),
        ),
        StateChange::RevokeCredential { .. } => (
            AuditAction::Revoke,
            None,
            Some((TombstoneTarget::EphemeralCredential, None)),
        ),
    };
    AuditRecord {
        secret_ref: Some(refs::secret_ref(store.keys(), t, &name(n))),
        rotated_version,
        revoked_target: revoked.map(|(target, _)| target),
        revoked_version: revoked.and_then(|(_, v)| v),
        ..record(t, action)
    }
    .making(change)
}

/// Commits a state change of secret `n` computed from state version `expected`.
pub async fn change(
    store: &dyn Store,
    t: &TenantId,
    n: &str,
    expected: u64,
    change: StateChange,
) -> StoreResult<Receipt> {
    let audit = record_of_change(store, t, n, &change);
    store
        .commit(CommitUnit {
            tenant: t.clone(),
            change: Change::Secret {
                name: name(n),
                expected_state_version: expected,
                material: matches!(
                    change,
                    StateChange::Rotate {
                        from_staged: false,
                        ..
                    }
                )
                .then(fresh_material),
                change,
            },
            audit,
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await
}

/// What a decision read: the policy version, and the secret's state and current versions.
pub type Read = (Option<u64>, Option<u64>, Option<u64>);

/// A unit answering a GET_HANDLE of `n` with `reason`, decided from `read`, as a host keeps its
/// inputs.
pub fn answered_read(t: &TenantId, n: &str, reason: ReasonCode, read: Read) -> CommitUnit {
    let (policy_version, state_version, current_version) = read;
    let request = selene_kms_core::RawKmsRequest {
        tenant_id: Some(t.as_str().to_owned()),
        secret_name: Some(n.to_owned()),
        ..selene_kms_core::RawKmsRequest::default()
    };
    let mut bundle = MaterialBundle::refusal(reason, Vec::new(), None, false);
    if reason.is_ok() {
        bundle.validation_status = selene_kms_core::ValidationStatus::Ok;
    }
    CommitUnit {
        tenant: t.clone(),
        change: Change::None,
        audit: record(t, AuditAction::GetHandle),
        idempotency: None,
        bundle: Some(bundle),
        inputs: Some(DecisionInputs::Request(Box::new(RequestInputs {
            request,
            policy_version,
            state_version,
            current_version,
            key: KeySeen::Free,
            keyed: false,
        }))),
    }
}

/// A grant commits only while the policy version its decision read is the committed one and
/// what it rests on still holds: the version a handle is issued from is still the current,
/// active one (a rotation since voids it, as a revocation of it does; a revocation of another
/// version does not), and a change to the secret is made from its current state. A refusal or
/// a dry run is not held to its reads.
pub async fn a_grant_commits_only_while_what_it_read_is_committed(store: Arc<dyn Store>) {
    let t = tenant("acme");
    create(&*store, &t, "k", SecretKind::Generated, None)
        .await
        .expect("create");
    let ok = ReasonCode::OkMaterialIssue;
    let grant = |read: Read| answered_read(&t, "k", ok, read);
    store
        .commit(grant((None, Some(1), Some(1))))
        .await
        .expect("as committed");
    change(
        &*store,
        &t,
        "k",
        1,
        StateChange::Rotate {
            new_version: 2,
            from_staged: false,
        },
    )
    .await
    .expect("rotate");
    let voided = store.commit(grant((None, Some(1), Some(1)))).await;
    assert_eq!(
        voided.map_err(|e| e.kind),
        Err(ErrorKind::StateConflict),
        "a rotation voids a grant of the version it replaced"
    );
    change(&*store, &t, "k", 2, StateChange::RevokeVersion(1))
        .await
        .expect("revoke");
    store
        .commit(grant((None, Some(2), Some(2))))
        .await
        .expect("revoking another version leaves the current one grantable");
    let records = audit_len(&*store, &t).await;
    for read in [
        (None, Some(1), Some(1)),
        (Some(1), Some(3), Some(2)),
        (None, None, None),
    ] {
        let voided = store.commit(grant(read)).await;
        assert_eq!(
            voided.map_err(|e| e.kind),
            Err(ErrorKind::StateConflict),
            "{read:?}"
        );
    }
    // A change to the secret is held to the policy version it read, as well as to its state.
    let mut rotation = grant((Some(1), Some(3), Some(2)));
    rotation.change = Change::Secret {
        name: name("k"),
        expected_state_version: 3,
        change: StateChange::Rotate {
            new_version: 3,
            from_staged: false,
        },
        material: Some(fresh_material()),
    };
    let voided = store.commit(rotation).await;
    assert_eq!(voided.map_err(|e| e.kind), Err(ErrorKind::StateConflict));
    assert_eq!(
        audit_len(&*store, &t).await,
        records,
        "refused grants write nothing"
    );
    let refusal = answered_read(&t, "k", ReasonCode::NotAuthorized, (None, Some(1), Some(1)));
    store
        .commit(refusal)
        .await
        .expect("a refusal is not held to its reads");
    let mut dry_run = grant((None, Some(1), Some(1)));
    if let Some(bundle) = &mut dry_run.bundle {
        bundle.dry_run = true;
    }
    store
        .commit(dry_run)
        .await
        .expect("a dry run grants nothing");
    store
        .commit(grant((None, Some(3), Some(2))))
        .await
        .expect("as committed");
}

/// Rotates with compare-and-set, retrying on conflicts, as a host does.
pub async fn rotate(store: &dyn Store, t: &TenantId, n: &str) -> u64 {
    loop {
        let snap = snapshot(store, t, n).await;
        let new_version = snap.current_version() + 1;
        match change(
            store,
            t,
            n,
            snap.state_version,
            StateChange::Rotate {
                new_version,
                from_staged: false,
            },
        )
        .await
        {
            Ok(_) => return new_version,
            Err(e) if e.kind == ErrorKind::StateConflict => continue,
            Err(e) => panic!("rotation failed: {e}"),
        }
    }
}

async fn audit_len(store: &dyn Store, t: &TenantId) -> usize {
    store
        .audit_records(t, 0, 100_000)
        .await
        .expect("audit read")
        .len()
}

/// Create, rotate, revoke and read back, with material sealed per version.
pub async fn lifecycle(store: Arc<dyn Store>) {
    let t = tenant("acme");
    create(
        &*store,
        &t,
        "db/password",
        SecretKind::Imported,
        Some(CANARY),
    )
    .await
    .expect("create");
    create(&*store, &t, "api/key", SecretKind::Generated, None)
        .await
        .expect("create generated");
    let dup = create(&*store, &t, "db/password", SecretKind::Generated, None).await;
    assert_eq!(dup.map_err(|e| e.kind), Err(ErrorKind::AlreadyExists));

    let snap = snapshot(&*store, &t, "db/password").await;
    assert_eq!(snap.versions, vec![VersionState::Active]);
    assert_eq!(snap.kind, SecretKind::Imported);
    assert_eq!(snap.state_version, 1);
    let m = redeem(&*store, &t, "db/password", 1)
        .await
        .expect("material");
    assert_eq!(m.expose(), CANARY);
    let generated = redeem(&*store, &t, "api/key", 1).await.expect("material");
    assert_eq!(generated.len(), 32);
    assert!(
        store
            .secret(&t, &name("nope"))
            .await
            .expect("read")
            .is_none()
    );
    assert!(
        store
            .secret(&tenant("other"), &name("db/password"))
            .await
            .expect("read")
            .is_none()
    );

    let listing = store.list_secrets(&t).await.expect("list");
    assert_eq!(listing.len(), 2);
    assert_eq!(listing[1].secret_name, "db/password");
    assert_eq!(listing[1].current_version, 1);

    // Staging changes nothing current but advances the state version.
    let staged = b"next-value".as_slice();
    stage(&*store, &t, "db/password", staged)
        .await
        .expect("stage");
    let snap = snapshot(&*store, &t, "db/password").await;
    assert!(snap.staged);
    assert_eq!((snap.state_version, snap.current_version()), (2, 1));
    change(
        &*store,
        &t,
        "db/password",
        2,
        StateChange::Rotate {
            new_version: 2,
            from_staged: true,
        },
    )
    .await
    .expect("rotate from staged");
    let m = redeem(&*store, &t, "db/password", 2)
        .await
        .expect("material");
    assert_eq!(m.expose(), staged);
    let snap = snapshot(&*store, &t, "db/password").await;
    assert!(!snap.staged);
    assert_eq!(snap.current_version(), 2);
    // Staging is refused for generated secrets.
    let refused = stage(&*store, &t, "api/key", b"x").await;
    assert_eq!(refused.map_err(|e| e.kind), Err(ErrorKind::Invalid));
}

/// A change computed from a stale state version is refused and changes nothing.
pub async fn compare_and_set(store: Arc<dyn Store>) {
    let t = tenant("acme");
    create(&*store, &t, "k", SecretKind::Generated, None)
        .await
        .expect("create");
    let before = audit_len(&*store, &t).await;
    let stale = change(
        &*store,
        &t,
        "k",
        7,
        StateChange::Rotate {
            new_version: 2,
            from_staged: false,
        },
    )
    .await;
    assert_eq!(stale.map_err(|e| e.kind), Err(ErrorKind::StateConflict));
    assert_eq!(
        audit_len(&*store, &t).await,
        before,
        "a refused commit leaves no record"
    );
    let snap = snapshot(&*store, &t, "k").await;
    assert_eq!((snap.state_version, snap.current_version()), (1, 1));
    let missing = change(&*store, &t, "nope", 1, StateChange::RevokeAllVersions).await;
    assert_eq!(missing.map_err(|e| e.kind), Err(ErrorKind::NotFound));
}

/// Revoked versions, handles and credentials stay revoked until they would have expired.
pub async fn revocation(store: Arc<dyn Store>) {
    let t = tenant("acme");
    create(&*store, &t, "k", SecretKind::Generated, None)
        .await
        .expect("create");
    assert_eq!(rotate(&*store, &t, "k").await, 2);
    change(&*store, &t, "k", 2, StateChange::RevokeVersion(1))
        .await
        .expect("revoke v1");
    let snap = snapshot(&*store, &t, "k").await;
    assert_eq!(
        snap.versions,
        vec![VersionState::Revoked, VersionState::Active]
    );
    let id = RefId::from_stored("hid_0011".into());
    assert!(!store.is_revoked(&t, &id).await.expect("read"));
    change(
        &*store,
        &t,
        "k",
        3,
        StateChange::RevokeHandle {
            id: id.clone(),
            expires_at_ms: u64::MAX,
        },
    )
    .await
    .expect("revoke handle");
    assert!(store.is_revoked(&t, &id).await.expect("read"));
    assert!(!store.is_revoked(&tenant("other"), &id).await.expect("read"));
    change(&*store, &t, "k", 4, StateChange::RevokeAllVersions)
        .await
        .expect("revoke all");
    let snap = snapshot(&*store, &t, "k").await;
    assert!(snap.versions.iter().all(|v| *v == VersionState::Revoked));
    assert_eq!(snap.state_version, 5);
    // Pruning drops expired revocations only.
    let short = RefId::from_stored("hid_0022".into());
    change(
        &*store,
        &t,
        "k",
        5,
        StateChange::RevokeCredential {
            id: short.clone(),
            expires_at_ms: 10,
        },
    )
    .await
    .expect("revoke credential");
    store.prune(1_000, 1).await.expect("prune");
    assert!(store.is_revoked(&t, &id).await.expect("read"));
    assert!(!store.is_revoked(&t, &short).await.expect("read"));
}

/// An answer-only unit stored under `scope` with a fingerprint of `fp` bytes.
pub fn keyed_unit(scope: &IdempotencyScope, fp: u8) -> CommitUnit {
    CommitUnit {
        tenant: scope.tenant.clone(),
        change: Change::None,
        audit: record(&scope.tenant, AuditAction::GetHandle),
        idempotency: Some(IdempotencyWrite {
            scope: scope.clone(),
            fingerprint: [fp; 32],
        }),
        bundle: Some(MaterialBundle::refusal(
            ReasonCode::NotAuthorized,
            Vec::new(),
            None,
            false,
        )),
        inputs: None,
    }
}

/// A key is claimed once, scoped by tenant and caller, and pruned after retention.
pub async fn idempotency(store: Arc<dyn Store>) {
    let t = tenant("acme");
    let scope = IdempotencyScope {
        tenant: t.clone(),
        caller: "os-1".into(),
        key: "k-1".into(),
    };
    let unit = |fp: u8| keyed_unit(&scope, fp);
    let first = store.commit(unit(1)).await.expect("commit");
    let stored = store
        .idempotency(&scope)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(stored.fingerprint, [1; 32]);
    assert_eq!(Some(stored.bundle_json.clone()), first.bundle_json);
    let parsed: MaterialBundle = serde_json::from_slice(&stored.bundle_json).expect("bundle");
    assert_eq!(parsed.audit_seq, Some(first.audit_seq));
    let before = audit_len(&*store, &t).await;
    let again = store.commit(unit(2)).await;
    assert_eq!(again.map_err(|e| e.kind), Err(ErrorKind::IdempotencyTaken));
    assert_eq!(
        audit_len(&*store, &t).await,
        before,
        "the losing commit left no record"
    );
    // Keys are scoped by caller and tenant.
    let other_caller = IdempotencyScope {
        caller: "os-2".into(),
        ..scope.clone()
    };
    assert!(
        store
            .idempotency(&other_caller)
            .await
            .expect("read")
            .is_none()
    );
    // Pruning removes records past retention.
    store.prune(NOW_MS + 10_000, 1).await.expect("prune");
    assert!(store.idempotency(&scope).await.expect("read").is_none());
}

/// Concurrent commits of two tenants leave two unbroken, gap-free chains.
pub async fn audit_chain(store: Arc<dyn Store>) {
    let t = tenant("acme");
    let u = tenant("umbrella");
    create(&*store, &t, "k", SecretKind::Generated, None)
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let store = store.clone();
        let tn = if i % 3 == 0 { u.clone() } else { t.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .commit(CommitUnit {
                    tenant: tn.clone(),
                    change: Change::None,
                    audit: record(&tn, AuditAction::GetHandle),
                    idempotency: None,
                    bundle: None,
                    inputs: None,
                })
                .await
                .expect("commit")
                .audit_seq
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    crate::manifest::Manifester::first(store.clone(), NOW_MS)
        .await
        .expect("a manifest");
    for tn in [&t, &u] {
        let report = verify_store(&*store, Some(tn), &Default::default(), NOW_MS)
            .await
            .expect("verify");
        assert!(report.holds(), "{report:?}");
        let report = &report.chains[0];
        let records = store.audit_records(tn, 0, 10_000).await.expect("read");
        assert_eq!(report.records as usize, records.len());
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<_>>());
        assert_eq!(records[0].prev_digest, GENESIS_DIGEST);
        assert!(records.iter().all(|r| r.tenant_id == tn.as_str()));
    }
    let page = store.audit_records(&t, 5, 3).await.expect("read");
    assert_eq!(
        page.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![6, 7, 8]
    );
    let mut tenants = store.audit_tenants().await.expect("tenants");
    tenants.sort();
    assert_eq!(tenants, vec![t, u]);
}

/// `writers` concurrent rotations of one secret never lose or repeat a version.
pub async fn concurrent_rotations(store: Arc<dyn Store>, writers: usize) {
    let t = tenant("acme");
    create(&*store, &t, "hot", SecretKind::Generated, None)
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let store = store.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(
            async move { rotate(&*store, &t, "hot").await },
        ));
    }
    let mut got = Vec::new();
    for task in tasks {
        got.push(task.await.expect("task"));
    }
    got.sort_unstable();
    assert_eq!(
        got,
        (2..=writers as u64 + 1).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
    let listing = store.list_secrets(&t).await.expect("list");
    let versions: Vec<u64> = listing[0].versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, (1..=writers as u64 + 1).collect::<Vec<_>>());
    let snap = snapshot(&*store, &t, "hot").await;
    assert_eq!(snap.current_version(), writers as u64 + 1);
    for v in 1..=writers as u64 + 1 {
        assert_eq!(
            redeem(&*store, &t, "hot", v).await.expect("material").len(),
            32
        );
    }
}

/// A policy that lets engine `E` get handles of every secret.
pub fn open_policy() -> PolicyDocument {
    serde_json::from_str(
        r#"{"rules":[{"secret_names":["*"],"engines":["E"],"operations":["GET_HANDLE"]}]}"#,
    )
    .expect("doc")
}

/// Stores `doc` as the tenant's policy.
pub async fn put_policy(
    store: &dyn Store,
    t: &TenantId,
    doc: PolicyDocument,
) -> StoreResult<Receipt> {
    store
        .commit(CommitUnit {
            tenant: t.clone(),
            change: Change::PutPolicy(doc),
            audit: record(t, AuditAction::SetPolicy),
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await
}

/// Policies advance their version on every change.
pub async fn policies(store: Arc<dyn Store>) {
    let t = tenant("acme");
    assert!(store.policy(&t).await.expect("read").is_none());
    let doc = open_policy();
    for expected in 1..=2 {
        let receipt = put_policy(&*store, &t, doc.clone())
            .await
            .expect("put policy");
        assert_eq!(receipt.policy_version, Some(expected));
    }
    let stored = store.policy(&t).await.expect("read").expect("present");
    assert_eq!(stored.version, 2);
    assert_eq!(stored.policy.document(), &doc);
    assert_eq!(
        store.policy_document(&t).await.expect("read"),
        Some((doc, 2))
    );

    // A document too large to keep beside its record is refused, and nothing changes.
    let names: Vec<String> = (0..3000).map(|i| format!("payments/{i:0>96}")).collect();
    let huge: PolicyDocument = serde_json::from_value(serde_json::json!({
        "rules": [{"secret_names": names, "engines": ["E"], "operations": ["GET_HANDLE"]}]
    }))
    .expect("doc");
    let refused = store
        .commit(CommitUnit {
            tenant: t.clone(),
            change: Change::PutPolicy(huge.clone()),
            audit: record(&t, AuditAction::SetPolicy),
            idempotency: None,
            bundle: None,
            inputs: Some(DecisionInputs::Policy(
                selene_kms_core::replay::PolicyInputs { document: huge },
            )),
        })
        .await;
    assert_eq!(refused.map_err(|e| e.kind), Err(ErrorKind::Invalid));
    assert_eq!(
        store.policy(&t).await.expect("read").map(|p| p.version),
        Some(2)
    );

    assert!(store.ready().await);
}

/// Regression: the backends checked a unit in different orders, so a unit with both a taken key
/// and a stale state version got `StateConflict` on SQLite and `IdempotencyTaken` on PostgreSQL.
/// The key is checked first everywhere, and the refused unit changes nothing.
pub async fn check_order_key_before_compare_and_set(store: Arc<dyn Store>) {
    let t = tenant("acme");
    create(&*store, &t, "k", SecretKind::Generated, None)
        .await
        .expect("create");
    let scope = IdempotencyScope {
        tenant: t.clone(),
        caller: "os-1".into(),
        key: "k-1".into(),
    };
    store.commit(keyed_unit(&scope, 1)).await.expect("claims");
    let before = snapshot(&*store, &t, "k").await;
    let records = audit_len(&*store, &t).await;
    let stale_and_keyed = CommitUnit {
        tenant: t.clone(),
        change: Change::Secret {
            name: name("k"),
            expected_state_version: before.state_version + 7,
            change: StateChange::Rotate {
                new_version: before.current_version() + 1,
                from_staged: false,
            },
            material: Some(fresh_material()),
        },
        ..keyed_unit(&scope, 2)
    };
    let refused = store.commit(stale_and_keyed).await;
    assert_eq!(
        refused.map_err(|e| e.kind),
        Err(ErrorKind::IdempotencyTaken)
    );
    assert_eq!(snapshot(&*store, &t, "k").await, before, "no state change");
    assert_eq!(audit_len(&*store, &t).await, records, "no audit record");
    // With a free key, the stale version is what refuses it.
    let stale = change(
        &*store,
        &t,
        "k",
        before.state_version + 7,
        StateChange::RevokeAllVersions,
    )
    .await;
    assert_eq!(stale.map_err(|e| e.kind), Err(ErrorKind::StateConflict));
    // And a change to a secret that does not exist is `NotFound`, whatever version it names.
    let missing = change(&*store, &t, "nope", 1, StateChange::RevokeAllVersions).await;
    assert_eq!(missing.map_err(|e| e.kind), Err(ErrorKind::NotFound));
}

/// Units committed together decide against each other as if one after the other: of many
/// concurrent claims of one key exactly one wins, and a creation is seen by the change queued
/// behind it.
pub async fn units_of_one_batch_see_each_other(store: Arc<dyn Store>) {
    let t = tenant("acme");
    let scope = IdempotencyScope {
        tenant: t.clone(),
        caller: "os-1".into(),
        key: "same".into(),
    };
    let claims: Vec<_> = (0..32u8)
        .map(|fp| {
            let store = store.clone();
            let unit = keyed_unit(&scope, fp);
            tokio::spawn(async move { store.commit(unit).await })
        })
        .collect();
    let mut won = 0;
    for claim in claims {
        match claim.await.expect("task") {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e.kind, ErrorKind::IdempotencyTaken, "{e}"),
        }
    }
    assert_eq!(won, 1, "exactly one claim of the key wins");
    assert_eq!(
        audit_len(&*store, &t).await,
        1,
        "only the winner left a record"
    );
    let created = {
        let store = store.clone();
        let t = t.clone();
        tokio::spawn(async move { create(&*store, &t, "new", SecretKind::Generated, None).await })
    };
    let revoked = {
        let store = store.clone();
        let t = t.clone();
        tokio::spawn(async move {
            // Queued right behind the creation: retried until the secret exists.
            loop {
                match change(&*store, &t, "new", 1, StateChange::RevokeVersion(1)).await {
                    Err(e) if e.kind == ErrorKind::NotFound => tokio::task::yield_now().await,
                    other => return other,
                }
            }
        })
    };
    created.await.expect("task").expect("create");
    revoked.await.expect("task").expect("revoke");
    let after = snapshot(&*store, &t, "new").await;
    assert_eq!(after.state_version, 2);
    assert_eq!(after.versions, vec![VersionState::Revoked]);
}

/// A staged rotation consumes the staged material exactly once: a second staged rotation with
/// nothing staged is refused and changes nothing.
pub async fn staged_material_is_used_once(store: Arc<dyn Store>) {
    let t = tenant("acme");
    create(&*store, &t, "api", SecretKind::Imported, Some(b"v1"))
        .await
        .expect("create");
    stage(&*store, &t, "api", CANARY).await.expect("stage");
    let staged = snapshot(&*store, &t, "api").await;
    assert!(staged.staged);
    let rotate = |expected| {
        change(
            &*store,
            &t,
            "api",
            expected,
            StateChange::Rotate {
                new_version: 2,
                from_staged: true,
            },
        )
    };
    rotate(staged.state_version)
        .await
        .expect("rotates to the staged material");
    let rotated = snapshot(&*store, &t, "api").await;
    assert!(!rotated.staged);
    assert_eq!(rotated.current_version(), 2);
    let again = rotate(rotated.state_version).await;
    assert_eq!(again.map_err(|e| e.kind), Err(ErrorKind::StateConflict));
    assert_eq!(snapshot(&*store, &t, "api").await, rotated);
}

/// Policy changes racing on one tenant (several may share a batch) each get their own version,
/// and the store keeps and serves the last one answered. The plan writes one policy row per
/// tenant and batch, because a set-based update applies only one source row to a target row;
/// this race does not reliably put two changes in one batch, so it guards the outcome, not
/// that line.
pub async fn concurrent_policy_changes_keep_the_last(store: Arc<dyn Store>) {
    let t = tenant("acme");
    let changes: Vec<_> = (0..16u32)
        .map(|i| {
            let store = store.clone();
            let t = t.clone();
            let doc: PolicyDocument = serde_json::from_str(&format!(
                r#"{{"rules":[{{"secret_names":["s{i}"],"engines":["E"],"operations":["GET_HANDLE"]}}]}}"#
            ))
            .expect("policy");
            tokio::spawn(async move {
                let receipt = store
                    .commit(CommitUnit {
                        tenant: t.clone(),
                        change: Change::PutPolicy(doc.clone()),
                        audit: record(&t, AuditAction::SetPolicy),
                        idempotency: None,
                        bundle: None,
                        inputs: None,
                    })
                    .await
                    .expect("policy set");
                (receipt.policy_version.expect("a version"), doc)
            })
        })
        .collect();
    let mut answered = Vec::new();
    for change in changes {
        answered.push(change.await.expect("task"));
    }
    let mut versions: Vec<u64> = answered.iter().map(|(v, _)| *v).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=16).collect::<Vec<_>>(), "one version each");
    let (last_version, last_doc) = answered
        .iter()
        .max_by_key(|(v, _)| *v)
        .cloned()
        .expect("some");
    let (stored_doc, stored_version) = store
        .policy_document(&t)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(stored_version, last_version);
    assert_eq!(
        serde_json::to_value(&stored_doc).expect("json"),
        serde_json::to_value(&last_doc).expect("json")
    );
    let served = store.policy(&t).await.expect("read").expect("policy");
    assert_eq!(served.version, last_version);
}

/// Material the host must draw is checked, never guessed: a generated rotation without it, or
/// with the wrong length, a change that does not use it but carries it, and a generated secret
/// created with the wrong length are refused (`Invalid`) and change nothing.
pub async fn host_material_is_checked(store: Arc<dyn Store>) {
    let t = tenant("acme");
    create(&*store, &t, "k", SecretKind::Generated, None)
        .await
        .expect("create");
    let before = snapshot(&*store, &t, "k").await;
    let rotate = StateChange::Rotate {
        new_version: 2,
        from_staged: false,
    };
    let cases = [
        (rotate.clone(), None),
        (rotate, Some(SecretMaterial::from_slice(b"short"))),
        (StateChange::RevokeVersion(1), Some(fresh_material())),
    ];
    for (change, material) in cases {
        let refused = store
            .commit(CommitUnit {
                tenant: t.clone(),
                change: Change::Secret {
                    name: name("k"),
                    expected_state_version: before.state_version,
                    change,
                    material,
                },
                audit: record(&t, AuditAction::Rotate),
                idempotency: None,
                bundle: None,
                inputs: None,
            })
            .await;
        assert_eq!(refused.map_err(|e| e.kind), Err(ErrorKind::Invalid));
    }
    let wrong_length = create(&*store, &t, "g", SecretKind::Generated, Some(b"short")).await;
    assert_eq!(wrong_length.map_err(|e| e.kind), Err(ErrorKind::Invalid));
    assert_eq!(snapshot(&*store, &t, "k").await, before, "nothing changed");
    assert!(store.secret(&t, &name("g")).await.expect("read").is_none());
    assert_eq!(
        audit_len(&*store, &t).await,
        1,
        "only the creation is on record"
    );
}

/// One `#[tokio::test]` per check of the suite, each on a fresh store from `$setup`: an async
/// function returning `(guard, Arc<dyn Store>)`, where the guard (a temporary directory, a
/// database cluster) lives as long as the test. A backend's tests invoke it once, so that every
/// backend runs every check and a new check reaches them all.
#[macro_export]
macro_rules! conformance_suite {
    ($setup:path) => {
        $crate::conformance_suite! { @checks $setup;
            conformance_lifecycle => $crate::conformance::lifecycle;
            conformance_compare_and_set => $crate::conformance::compare_and_set;
            conformance_revocation => $crate::conformance::revocation;
            conformance_idempotency => $crate::conformance::idempotency;
            conformance_audit_chain => $crate::conformance::audit_chain;
            conformance_policies => $crate::conformance::policies;
            conformance_principals_and_tokens => $crate::conformance::principals_and_tokens;
            conformance_live_names_and_spiffe_ids_are_unique =>
                $crate::conformance::live_names_and_spiffe_ids_are_unique;
            conformance_revocations_advance_the_auth_epoch =>
                $crate::conformance::revocations_advance_the_auth_epoch;
            conformance_the_last_global_admin_stays =>
                $crate::conformance::the_last_global_admin_stays;
            conformance_principal_changes_go_to_the_system_chain =>
                $crate::conformance::principal_changes_go_to_the_system_chain;
            conformance_tenants_are_listed_without_the_system_chain =>
                $crate::conformance::tenants_are_listed_without_the_system_chain;
            conformance_the_system_chain_data_key_survives_a_root_rotation =>
                $crate::conformance::the_system_chain_data_key_survives_a_root_rotation;
            conformance_concurrent_rotations =>
                |s| $crate::conformance::concurrent_rotations(s, 64);
            conformance_check_order_key_before_compare_and_set =>
                $crate::conformance::check_order_key_before_compare_and_set;
            conformance_a_grant_commits_only_while_what_it_read_is_committed =>
                $crate::conformance::a_grant_commits_only_while_what_it_read_is_committed;
            conformance_units_of_one_batch_see_each_other =>
                $crate::conformance::units_of_one_batch_see_each_other;
            conformance_staged_material_is_used_once =>
                $crate::conformance::staged_material_is_used_once;
            conformance_concurrent_policy_changes_keep_the_last =>
                $crate::conformance::concurrent_policy_changes_keep_the_last;
            conformance_host_material_is_checked =>
                $crate::conformance::host_material_is_checked;
            conformance_keys_keep_their_purpose => $crate::conformance::keys_keep_their_purpose;
            conformance_min_decryption_version => $crate::conformance::min_decryption_version;
            conformance_manifests_name_the_chains_that_moved =>
                $crate::conformance::manifests_name_the_chains_that_moved;
            conformance_racing_signers_keep_one_chain_of_manifests =>
                $crate::conformance::racing_signers_keep_one_chain_of_manifests;
            conformance_a_store_whose_manifests_are_gone_is_not_signed_anew =>
                $crate::conformance::a_store_whose_manifests_are_gone_is_not_signed_anew;
        }
    };
    (@checks $setup:path; $($name:ident => $check:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let (_guard, store) = $setup().await;
            ($check)(store).await;
        }
    )*};
}
