//! The suite's checks of principals, tokens, the authentication epoch and the tenant listing.
//! Every change is a real commit on the system chain, as the host makes it.

use std::sync::Arc;

use selene_kms_core::{
    AuditAction, PolicyDocument, PrincipalId, PrincipalName, Role, SecretKind, SpiffeId, TenantId,
    TenantScope, TokenId,
};

use super::{NOW_MS, create, record, tenant};
use crate::{
    Change, CommitUnit, ErrorKind, IdempotencyScope, IdempotencyWrite, NewPrincipal, NewToken,
    Receipt, RootKey, Store, StoreResult, TenantSummary,
};

/// Principal number `n`'s id.
pub fn principal_id(n: u8) -> PrincipalId {
    PrincipalId::from_random([n; 16])
}

/// Token number `n`'s id; its verifier is `[n; 32]`.
pub fn token_id(n: u8) -> TokenId {
    TokenId::from_random([n; 16])
}

/// Token number `n`, expiring at `expires_at_ms`.
pub fn new_token(n: u8, expires_at_ms: Option<u64>) -> NewToken {
    NewToken {
        token_id: token_id(n),
        verifier: [n; 32],
        expires_at_ms,
    }
}

/// Principal number `n`, with token number `n` as its first token.
pub fn new_principal(
    n: u8,
    name: &str,
    role: Role,
    tenants: &[&str],
    spiffe_id: Option<&str>,
) -> NewPrincipal {
    NewPrincipal {
        principal_id: principal_id(n),
        name: PrincipalName::try_from(name).expect("valid name"),
        role,
        tenants: TenantScope::from_list(tenants).expect("valid scope"),
        spiffe_id: spiffe_id.map(|s| SpiffeId::try_from(s).expect("valid SPIFFE id")),
        expires_at_ms: None,
        token: new_token(n, None),
    }
}

/// Commits a principal or token change on the system chain, audited as `action`.
pub async fn commit_auth(
    store: &dyn Store,
    change: Change,
    action: AuditAction,
) -> StoreResult<Receipt> {
    let system = TenantId::system();
    // The record names what the change acted on, as the host's does.
    let (principal, token) = match &change {
        Change::CreatePrincipal(new) => (Some(&new.principal_id), Some(&new.token.token_id)),
        Change::IssueToken { principal, token } => (Some(principal), Some(&token.token_id)),
        Change::RevokeToken { principal, token } => (Some(principal), Some(token)),
        Change::RevokePrincipal(principal) => (Some(principal), None),
        _ => (None, None),
    };
    let mut audit = record(&system, action);
    audit.target_principal_id = principal.map(ToString::to_string);
    audit.target_token_id = token.map(ToString::to_string);
    store
        .commit(CommitUnit {
            tenant: system.clone(),
            change,
            audit,
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await
}

/// Creates `new`.
pub async fn create_principal(store: &dyn Store, new: NewPrincipal) -> StoreResult<Receipt> {
    commit_auth(
        store,
        Change::CreatePrincipal(Box::new(new)),
        AuditAction::PrincipalCreate,
    )
    .await
}

/// Revokes principal number `n`.
pub async fn revoke_principal(store: &dyn Store, n: u8) -> StoreResult<Receipt> {
    commit_auth(
        store,
        Change::RevokePrincipal(principal_id(n)),
        AuditAction::PrincipalRevoke,
    )
    .await
}

/// Revokes token number `token` of principal number `principal`.
pub async fn revoke_token(store: &dyn Store, principal: u8, token: u8) -> StoreResult<Receipt> {
    commit_auth(
        store,
        Change::RevokeToken {
            principal: principal_id(principal),
            token: token_id(token),
        },
        AuditAction::TokenRevoke,
    )
    .await
}

/// Issues token number `token` to principal number `principal`.
pub async fn issue_token(store: &dyn Store, principal: u8, token: u8) -> StoreResult<Receipt> {
    commit_auth(
        store,
        Change::IssueToken {
            principal: principal_id(principal),
            token: new_token(token, None),
        },
        AuditAction::TokenCreate,
    )
    .await
}

/// A principal with a token is found by the token's verifier, by its SPIFFE id and in the
/// listing, and its creation is on the system chain.
pub async fn principals_and_tokens(store: Arc<dyn Store>) {
    let new = new_principal(
        1,
        "deployer",
        Role::Os,
        &["acme", "umbrella"],
        Some("spiffe://example.org/ns/prod/sa/deployer"),
    );
    let spiffe = new.spiffe_id.clone().expect("bound");
    let receipt = create_principal(&*store, new).await.expect("create");
    let found = store
        .credential(&[1; 32])
        .await
        .expect("read")
        .expect("a credential");
    let principal = &found.principal;
    assert_eq!(principal.principal_id, principal_id(1));
    assert_eq!(principal.name.as_str(), "deployer");
    assert_eq!(principal.role, Role::Os);
    assert_eq!(
        principal.tenants,
        TenantScope::from_list(&["umbrella", "acme"]).expect("scope")
    );
    assert_eq!(principal.spiffe_id.as_ref(), Some(&spiffe));
    assert_eq!(
        (
            principal.created_at_ms,
            principal.expires_at_ms,
            principal.revoked_at_ms
        ),
        (NOW_MS, None, None)
    );
    assert_eq!(found.token.token_id, token_id(1));
    assert_eq!(found.token.principal_id, principal_id(1));
    assert!(found.token.live_at(NOW_MS) && principal.live_at(NOW_MS));
    assert_eq!(store.credential(&[2; 32]).await.expect("read"), None);

    let listing = store.principals().await.expect("list");
    assert_eq!(listing.len(), 1);
    assert_eq!(&listing[0].principal, principal);
    assert_eq!(listing[0].tokens, vec![found.token.clone()]);
    assert_eq!(
        store.principal_by_spiffe(&spiffe).await.expect("read"),
        Some(principal.clone())
    );
    let unbound = SpiffeId::try_from("spiffe://example.org/other").expect("valid");
    assert_eq!(
        store.principal_by_spiffe(&unbound).await.expect("read"),
        None
    );

    assert!(
        store
            .audit_tenants()
            .await
            .expect("tenants")
            .contains(&TenantId::system())
    );
    let records = store
        .audit_records(&TenantId::system(), 0, 10)
        .await
        .expect("read");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].seq, receipt.audit_seq);
    assert_eq!(records[0].operation, Some(AuditAction::PrincipalCreate));
}

/// Names and SPIFFE ids are unique among unrevoked principals, also between creations that
/// race (and may share a batch); a revoked principal's name and SPIFFE id are free again.
pub async fn live_names_and_spiffe_ids_are_unique(store: Arc<dyn Store>) {
    let spiffe = "spiffe://example.org/ci";
    create_principal(
        &*store,
        new_principal(1, "ci", Role::Os, &["acme"], Some(spiffe)),
    )
    .await
    .expect("create");
    let same_name = create_principal(&*store, new_principal(2, "ci", Role::Os, &["acme"], None));
    assert_eq!(
        same_name.await.map_err(|e| e.kind),
        Err(ErrorKind::AlreadyExists)
    );
    let same_spiffe = create_principal(
        &*store,
        new_principal(3, "ci-2", Role::Os, &["acme"], Some(spiffe)),
    );
    assert_eq!(
        same_spiffe.await.map_err(|e| e.kind),
        Err(ErrorKind::AlreadyExists)
    );

    let racing: Vec<_> = (10..26u8)
        .map(|n| {
            let store = store.clone();
            let new = new_principal(n, "racer", Role::Executor, &["acme"], None);
            tokio::spawn(async move { create_principal(&*store, new).await })
        })
        .collect();
    let mut won = 0;
    for creation in racing {
        match creation.await.expect("task") {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}"),
        }
    }
    assert_eq!(won, 1, "exactly one creation of a name wins");

    revoke_principal(&*store, 1).await.expect("revoke");
    create_principal(
        &*store,
        new_principal(4, "ci", Role::Os, &["acme"], Some(spiffe)),
    )
    .await
    .expect("the name and SPIFFE id are free again");
    let bound = store
        .principal_by_spiffe(&SpiffeId::try_from(spiffe).expect("valid"))
        .await
        .expect("read")
        .expect("bound");
    assert_eq!(bound.principal_id, principal_id(4), "the live one");
    assert_eq!(store.principals().await.expect("list").len(), 3);
}

/// Revoking a token or a principal is seen by `credential` and advances the authentication
/// epoch; revoking again changes nothing; what does not exist, or is not the principal's, is
/// `NotFound`.
pub async fn revocations_advance_the_auth_epoch(store: Arc<dyn Store>) {
    create_principal(
        &*store,
        new_principal(1, "ops", Role::Admin, &["acme"], None),
    )
    .await
    .expect("create");
    create_principal(
        &*store,
        new_principal(2, "other", Role::Os, &["acme"], None),
    )
    .await
    .expect("create");
    issue_token(&*store, 1, 3).await.expect("second token");
    for verifier in [[1; 32], [3; 32]] {
        let found = store
            .credential(&verifier)
            .await
            .expect("read")
            .expect("found");
        assert!(found.token.live_at(NOW_MS), "both tokens live");
        assert_eq!(found.principal.principal_id, principal_id(1));
    }
    let tokens = |listing: &[crate::PrincipalListing]| {
        listing[0]
            .tokens
            .iter()
            .map(|t| t.token_id.clone())
            .collect::<Vec<_>>()
    };
    let listing = store.principals().await.expect("list");
    assert_eq!(tokens(&listing), vec![token_id(1), token_id(3)]);

    let epoch = store.auth_epoch().await.expect("epoch");
    revoke_token(&*store, 1, 1).await.expect("revoke token");
    let revoked = store
        .credential(&[1; 32])
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(revoked.token.revoked_at_ms, Some(NOW_MS));
    assert_eq!(revoked.principal.revoked_at_ms, None);
    let other = store
        .credential(&[3; 32])
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(other.token.revoked_at_ms, None);
    let after_token = store.auth_epoch().await.expect("epoch");
    assert!(after_token > epoch, "{after_token} > {epoch}");

    revoke_principal(&*store, 1)
        .await
        .expect("revoke principal");
    for verifier in [[1; 32], [3; 32]] {
        let found = store
            .credential(&verifier)
            .await
            .expect("read")
            .expect("kept");
        assert_eq!(found.principal.revoked_at_ms, Some(NOW_MS));
        assert!(found.token.revoked_at_ms.is_some(), "every token revoked");
    }
    let after_principal = store.auth_epoch().await.expect("epoch");
    assert!(after_principal > after_token);

    let listing = store.principals().await.expect("list");
    revoke_principal(&*store, 1).await.expect("revoking again");
    revoke_token(&*store, 1, 3).await.expect("revoking again");
    assert_eq!(
        store.principals().await.expect("list"),
        listing,
        "nothing changed"
    );
    assert_eq!(store.auth_epoch().await.expect("epoch"), after_principal);

    for refused in [
        revoke_principal(&*store, 9).await,
        revoke_token(&*store, 1, 9).await,
        revoke_token(&*store, 2, 3).await,
        revoke_token(&*store, 1, 2).await,
        issue_token(&*store, 9, 8).await,
        issue_token(&*store, 1, 8).await,
    ] {
        assert_eq!(refused.map_err(|e| e.kind), Err(ErrorKind::NotFound));
    }
    assert_eq!(store.credential(&[8; 32]).await.expect("read"), None);
    let live = store
        .credential(&[2; 32])
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(
        live.token.revoked_at_ms, None,
        "another principal's token untouched"
    );
}

/// The last live admin for every tenant cannot be revoked: one scoped to some tenants, or one
/// that has expired, does not count as another.
pub async fn the_last_global_admin_stays(store: Arc<dyn Store>) {
    create_principal(&*store, new_principal(1, "root", Role::Admin, &["*"], None))
        .await
        .expect("create");
    create_principal(
        &*store,
        new_principal(2, "acme-admin", Role::Admin, &["acme"], None),
    )
    .await
    .expect("create");
    let expired = NewPrincipal {
        expires_at_ms: Some(NOW_MS),
        ..new_principal(3, "expired", Role::Admin, &["*"], None)
    };
    create_principal(&*store, expired).await.expect("create");
    let last = revoke_principal(&*store, 1).await;
    assert_eq!(last.map_err(|e| e.kind), Err(ErrorKind::LastAdmin));

    create_principal(
        &*store,
        new_principal(4, "root-2", Role::Admin, &["*"], None),
    )
    .await
    .expect("create");
    revoke_principal(&*store, 1)
        .await
        .expect("another global admin remains");
    let last = revoke_principal(&*store, 4).await;
    assert_eq!(last.map_err(|e| e.kind), Err(ErrorKind::LastAdmin));
    revoke_principal(&*store, 2)
        .await
        .expect("a scoped admin is not the last");
    let live = store
        .credential(&[4; 32])
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(live.principal.revoked_at_ms, None);
}

/// A principal change committed on a tenant's chain is refused: they are audited on the
/// system chain only.
pub async fn principal_changes_go_to_the_system_chain(store: Arc<dyn Store>) {
    let t = tenant("acme");
    let refused = store
        .commit(CommitUnit {
            tenant: t.clone(),
            change: Change::CreatePrincipal(Box::new(new_principal(
                1,
                "ci",
                Role::Os,
                &["acme"],
                None,
            ))),
            audit: record(&t, AuditAction::PrincipalCreate),
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await;
    assert_eq!(refused.map_err(|e| e.kind), Err(ErrorKind::Invalid));
    assert_eq!(store.credential(&[1; 32]).await.expect("read"), None);
    assert!(store.principals().await.expect("list").is_empty());
}

/// The tenant listing shows every tenant with its policy version, whether its policy is
/// enabled, and how many secrets it has; never the system chain.
pub async fn tenants_are_listed_without_the_system_chain(store: Arc<dyn Store>) {
    create_principal(&*store, new_principal(1, "root", Role::Admin, &["*"], None))
        .await
        .expect("create");
    let (acme, umbrella) = (tenant("acme"), tenant("umbrella"));
    for n in ["a", "b"] {
        create(&*store, &acme, n, SecretKind::Generated, None)
            .await
            .expect("create");
    }
    for (t, enabled, times) in [(&acme, true, 1), (&umbrella, false, 2)] {
        let doc: PolicyDocument = serde_json::from_value(serde_json::json!({
            "enabled": enabled,
            "rules": [{"secret_names": ["*"], "engines": ["E"], "operations": ["GET_HANDLE"]}],
        }))
        .expect("doc");
        for _ in 0..times {
            store
                .commit(CommitUnit {
                    tenant: t.clone(),
                    change: Change::PutPolicy(doc.clone()),
                    audit: record(t, AuditAction::SetPolicy),
                    idempotency: None,
                    bundle: None,
                    inputs: None,
                })
                .await
                .expect("put policy");
        }
    }
    let chain_only = tenant("chain-only");
    store
        .commit(CommitUnit {
            tenant: chain_only.clone(),
            change: Change::None,
            audit: record(&chain_only, AuditAction::GetHandle),
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await
        .expect("audit only");
    assert_eq!(
        store.tenants().await.expect("list"),
        vec![
            TenantSummary {
                tenant_id: acme,
                policy_version: 1,
                enabled: true,
                secrets: 2,
            },
            TenantSummary {
                tenant_id: chain_only,
                policy_version: 0,
                enabled: false,
                secrets: 0,
            },
            TenantSummary {
                tenant_id: umbrella,
                policy_version: 2,
                enabled: false,
                secrets: 0,
            },
        ]
    );
}

/// Regression: root-key rotation parsed every stored tenant id as a tenant's, so once a
/// principal change stored an answer under the system chain's data key, no rotation could
/// run. The system chain's key is rewrapped like any other and its answers stay readable.
pub async fn the_system_chain_data_key_survives_a_root_rotation(store: Arc<dyn Store>) {
    let system = TenantId::system();
    let scope = IdempotencyScope {
        tenant: system.clone(),
        caller: principal_id(9).to_string(),
        key: "create-ci".into(),
    };
    let receipt = store
        .commit(CommitUnit {
            tenant: system.clone(),
            change: Change::CreatePrincipal(Box::new(new_principal(
                1,
                "ci",
                Role::Os,
                &["acme"],
                None,
            ))),
            audit: record(&system, AuditAction::PrincipalCreate),
            idempotency: Some(IdempotencyWrite {
                scope: scope.clone(),
                fingerprint: [3; 32],
            }),
            bundle: None,
            inputs: None,
        })
        .await
        .expect("create");
    assert_eq!(
        store
            .rotate_root_key(RootKey::from_bytes(&[9; 32]))
            .await
            .map_err(|e| e.kind),
        Ok(1),
        "the system chain's data key is rewrapped"
    );
    let stored = store
        .idempotency(&scope)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(stored.fingerprint, [3; 32]);
    let answered = receipt.audit_seq;
    let records = store.audit_records(&system, 0, 10).await.expect("read");
    assert_eq!(records.last().map(|r| r.seq), Some(answered));
}
