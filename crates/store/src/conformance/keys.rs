//! Keys: a secret's purpose and minimum decryption version, as every backend must keep them.

use std::sync::Arc;

use selene_kms_core::crypto::{self, Input, Output};
use selene_kms_core::{
    AuditAction, AuditRecord, Purpose, SecretKind, SecretMaterial, TenantId, redeem, refs,
};
use zeroize::Zeroizing;

use super::{NOW_MS, create, create_for, name, record, rotate, snapshot, stage, tenant};
use crate::verify::verify_store;
use crate::{Change, CommitUnit, ErrorKind, Receipt, Store, StoreResult};

/// Runs `input` with the current version of key `n`, the way a host must: a handle for it,
/// opened and passed through the crypto checks, whose grant the material read consumes.
pub async fn use_key(
    store: &dyn Store,
    t: &TenantId,
    n: &str,
    input: &Input,
) -> StoreResult<Output> {
    let keys = store.keys();
    let current = snapshot(store, t, n).await;
    let (opened, everyone) = super::opened_handle(keys, t, n, &current);
    let grant = crypto::check(
        &opened,
        Some(&everyone),
        Some(&current),
        false,
        NOW_MS,
        input,
    )
    .expect("usable");
    // A key's handle is never redeemed.
    assert!(redeem::check(&opened, Some(&everyone), Some(&current), false, NOW_MS).is_err());
    let used = crypto::KeyUse::of(&grant);
    let key = store.material(grant).await?;
    Ok(crypto::perform(&key, &used, input, [7; crypto::NONCE_LEN]).expect("performs"))
}

/// A signature of `data`, as an input.
pub fn sign(data: &[u8]) -> Input {
    Input::Sign {
        data: Zeroizing::new(data.to_vec()),
    }
}

/// A key keeps the purpose it was created for, in its snapshot and its listing; its material is
/// exactly 32 bytes, created or staged; and it signs with the material it was given.
pub async fn keys_keep_their_purpose(store: Arc<dyn Store>) {
    let t = tenant("acme");
    let seed = [0x42_u8; 32];
    create_for(
        &*store,
        &t,
        "sig",
        SecretKind::Imported,
        Some(&seed),
        Purpose::Ed25519,
    )
    .await
    .expect("an imported Ed25519 seed");
    create_for(
        &*store,
        &t,
        "mac",
        SecretKind::Generated,
        None,
        Purpose::HmacSha256,
    )
    .await
    .expect("a generated HMAC key");
    create(&*store, &t, "cred", SecretKind::Imported, Some(b"short"))
        .await
        .expect("a credential of any length");
    for (n, purpose) in [
        ("sig", Purpose::Ed25519),
        ("mac", Purpose::HmacSha256),
        ("cred", Purpose::Credential),
    ] {
        let snap = snapshot(&*store, &t, n).await;
        assert_eq!((snap.purpose, snap.min_decryption_version), (purpose, 1));
    }
    let listed = store.list_secrets(&t).await.expect("listing");
    let purposes: Vec<_> = listed
        .iter()
        .map(|s| (s.secret_name.as_str(), s.purpose))
        .collect();
    assert_eq!(
        purposes,
        [
            ("cred", "credential"),
            ("mac", "hmac-sha256"),
            ("sig", "ed25519")
        ]
    );
    let short = [1_u8; 31];
    let refused = create_for(
        &*store,
        &t,
        "aes",
        SecretKind::Imported,
        Some(&short),
        Purpose::Aes256Gcm,
    )
    .await;
    assert_eq!(refused.map_err(|e| e.kind), Err(ErrorKind::Invalid));
    let refused = stage(&*store, &t, "sig", &[1_u8; 33]).await;
    assert_eq!(refused.map_err(|e| e.kind), Err(ErrorKind::Invalid));
    let Output::Signature(signature) = use_key(&*store, &t, "sig", &sign(b"m"))
        .await
        .expect("signs")
    else {
        panic!("a signature");
    };
    let Output::Signature(expected) = crypto::perform(
        &SecretMaterial::from_slice(&seed),
        &used(&t),
        &sign(b"m"),
        [0; 12],
    )
    .expect("signs") else {
        panic!("a signature");
    };
    assert_eq!(signature, expected, "the store's key is the imported seed");
    holds(&*store, &t).await;
}

/// Version 1 of `t`'s `sig`.
fn used(t: &TenantId) -> crypto::KeyUse {
    crypto::KeyUse::new(t.clone(), name("sig"), 1)
}

async fn set_min(store: &dyn Store, t: &TenantId, n: &str, version: u64) -> StoreResult<u64> {
    let audit = AuditRecord {
        secret_ref: Some(refs::secret_ref(store.keys(), t, &name(n))),
        min_decryption_version: Some(version),
        ..record(t, AuditAction::UpdateSecret)
    };
    store
        .commit(CommitUnit {
            tenant: t.clone(),
            change: Change::SetMinDecryptionVersion {
                name: name(n),
                version,
            },
            audit,
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await
        .map(|r| r.audit_seq)
}

/// A key's minimum decryption version is one of its versions, is kept, advances its state
/// version, and is what the chain says; a credential has none.
pub async fn min_decryption_version(store: Arc<dyn Store>) {
    let t = tenant("acme");
    create_for(
        &*store,
        &t,
        "enc",
        SecretKind::Generated,
        None,
        Purpose::Aes256Gcm,
    )
    .await
    .expect("a key");
    create(&*store, &t, "cred", SecretKind::Generated, None)
        .await
        .expect("a credential");
    assert_eq!(rotate(&*store, &t, "enc").await, 2);
    let before = snapshot(&*store, &t, "enc").await;
    for (n, version) in [("enc", 0), ("enc", 3), ("cred", 1)] {
        let refused = set_min(&*store, &t, n, version).await;
        assert_eq!(
            refused.map_err(|e| e.kind),
            Err(ErrorKind::Invalid),
            "{n} {version}"
        );
    }
    let refused = set_min(&*store, &t, "none", 1).await;
    assert_eq!(refused.map_err(|e| e.kind), Err(ErrorKind::NotFound));
    assert_eq!(
        snapshot(&*store, &t, "enc").await,
        before,
        "nothing changed"
    );
    set_min(&*store, &t, "enc", 2).await.expect("sets");
    let after = snapshot(&*store, &t, "enc").await;
    assert_eq!(after.min_decryption_version, 2);
    assert_eq!(after.state_version, before.state_version + 1);
    let listed = store.list_secrets(&t).await.expect("listing");
    let enc = listed
        .iter()
        .find(|s| s.secret_name == "enc")
        .expect("listed");
    assert_eq!(enc.min_decryption_version, 2);
    holds(&*store, &t).await;
}

/// The tenant's chain verifies, and the store's state is what it says (no manifest has been
/// signed: the suite runs no manifester).
async fn holds(store: &dyn Store, t: &TenantId) {
    let report = verify_store(store, Some(t), &Default::default(), NOW_MS)
        .await
        .expect("verify");
    let chain = &report.chains[0];
    assert!(
        chain.broken.is_none() && chain.differs.is_none(),
        "{report:?}"
    );
}

/// Two keys whose purpose a test then rewrites in the database: `gen` (a generated Ed25519 key)
/// and `imp` (an imported AES-256-GCM key). Either is used once, as a key.
pub async fn keys_to_rewrite(store: &dyn Store, t: &TenantId) {
    create_for(
        store,
        t,
        "gen",
        SecretKind::Generated,
        None,
        Purpose::Ed25519,
    )
    .await
    .expect("a generated key");
    let seed = [0x17_u8; 32];
    create_for(
        store,
        t,
        "imp",
        SecretKind::Imported,
        Some(&seed),
        Purpose::Aes256Gcm,
    )
    .await
    .expect("an imported key");
    use_key(store, t, "gen", &sign(b"m")).await.expect("signs");
}

/// Rotates `n` to a generated next version, from its state as stored now.
async fn rotate_generated(store: &dyn Store, t: &TenantId, n: &str) -> StoreResult<Receipt> {
    let before = snapshot(store, t, n).await;
    super::change(
        store,
        t,
        n,
        before.state_version,
        selene_kms_core::StateChange::Rotate {
            new_version: before.current_version() + 1,
            from_staged: false,
        },
    )
    .await
}

/// The keys of [`keys_to_rewrite`] in rows stripped of their purpose MACs, as rows from before
/// them: the purpose is proven by the material instead, so a rotation and staging go through
/// (and the rows get their MACs back, which prove it from then on).
pub async fn rows_without_purpose_macs_prove_by_their_material(store: &dyn Store, t: &TenantId) {
    for (round, fill) in [(1, 0x18), (2, 0x19)] {
        let rotated = rotate_generated(store, t, "gen").await;
        assert!(rotated.is_ok(), "round {round}: {rotated:?}");
        let staged = stage(store, t, "imp", &[fill; 32]).await;
        assert!(staged.is_ok(), "round {round}: {staged:?}");
        use_key(store, t, "gen", &sign(b"m")).await.expect("signs");
    }
}

/// The keys of [`keys_to_rewrite`], their purpose rewritten as `credential` in the database:
/// their material opens as nothing, and nothing new is sealed under the rewritten purpose,
/// neither a rotation's fresh material nor staged material.
pub async fn a_rewritten_purpose_opens_and_seals_nothing(store: &dyn Store, t: &TenantId) {
    let corrupt = Err(ErrorKind::Corrupt);
    for n in ["gen", "imp"] {
        assert_eq!(snapshot(store, t, n).await.purpose, Purpose::Credential);
        let read = super::redeem(store, t, n, 1).await;
        assert_eq!(read.map(drop).map_err(|e| e.kind), corrupt, "{n}");
    }
    let gen_before = snapshot(store, t, "gen").await;
    let rotation = rotate_generated(store, t, "gen").await;
    assert_eq!(rotation.map(drop).map_err(|e| e.kind), corrupt);
    let staged = stage(store, t, "imp", b"redeemable-if-sealed-as-a-credential").await;
    assert_eq!(staged.map(drop).map_err(|e| e.kind), corrupt);
    assert_eq!(
        snapshot(store, t, "gen").await,
        gen_before,
        "nothing changed"
    );
}
