//! The suite's checks of signed manifests: what each names, when one is due, and several
//! signers (nodes) on one store keeping one chain of them.

use std::sync::Arc;

use selene_kms_core::{AuditAction, ManifestChain, ManifestKind, TenantId};

use super::{NOW_MS, record, tenant};
use crate::manifest::{IDLE_MANIFEST_MS, Manifester, read_manifests};
use crate::verify::verify_store;
use crate::{Change, CommitUnit, Store};

/// Commits one audit-only record to `t`'s chain; returns its sequence number.
pub async fn append_record(store: &dyn Store, t: &TenantId) -> u64 {
    store
        .commit(CommitUnit {
            tenant: t.clone(),
            change: Change::None,
            audit: record(t, AuditAction::Redeem),
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await
        .expect("commit")
        .audit_seq
}

/// The heads the store's latest manifests name: `(tenant, seq)`.
async fn named(store: &dyn Store) -> Vec<(String, u64)> {
    let (chain, _) = read_manifests(store)
        .await
        .expect("read")
        .holding()
        .expect("the manifests hold");
    chain
        .heads()
        .iter()
        .map(|(t, (seq, _))| (t.clone(), *seq))
        .collect()
}

/// A first manifest names every chain; later ones name what moved, one is signed after an idle
/// minute or on demand, and none otherwise.
pub async fn manifests_name_the_chains_that_moved(store: Arc<dyn Store>) {
    let (t, u) = (tenant("acme"), tenant("beta"));
    for _ in 0..3 {
        append_record(&*store, &t).await;
    }
    append_record(&*store, &u).await;
    // The store's first manifest, as `init` (or an embedder's bootstrap) signs it.
    Manifester::first(store.clone(), NOW_MS)
        .await
        .expect("first");
    assert_eq!(
        named(&*store).await,
        vec![("acme".into(), 3), ("beta".into(), 1)]
    );
    assert_eq!(store.latest_full_manifest().await, Ok(1));
    Manifester::first(store.clone(), NOW_MS)
        .await
        .expect("a no-op");
    assert_eq!(store.latest_full_manifest().await, Ok(1), "signed once");
    // A serving process starts with a full manifest of its own, then signs what moves.
    let mut signer = Manifester::open(store.clone(), None).await.expect("opens");
    assert_eq!(signer.tick(NOW_MS, false).await, Ok(Some(2)));
    assert_eq!(
        signer.tick(NOW_MS + 1, false).await,
        Ok(None),
        "nothing moved"
    );

    append_record(&*store, &t).await;
    assert_eq!(signer.tick(NOW_MS + 2, false).await, Ok(Some(3)));
    let third = store.manifests(2, 10).await.expect("read");
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].kind, ManifestKind::Changes);
    let moved: Vec<_> = third[0]
        .heads
        .iter()
        .map(|h| (h.tenant_id.as_str(), h.seq))
        .collect();
    assert_eq!(moved, vec![("acme", 4)], "only the chain that moved");

    let idle = NOW_MS + 2 + IDLE_MANIFEST_MS;
    assert_eq!(
        signer.tick(idle, false).await,
        Ok(Some(4)),
        "an idle minute"
    );
    assert_eq!(signer.tick(idle + 1, true).await, Ok(Some(5)), "forced");

    // A second node: its first manifest is full, and the first node follows on from it.
    let mut other = Manifester::open(store.clone(), None).await.expect("opens");
    append_record(&*store, &u).await;
    assert_eq!(other.tick(idle + 2, false).await, Ok(Some(6)));
    assert_eq!(store.latest_full_manifest().await, Ok(6));
    assert_eq!(signer.tick(idle + 3, false).await, Ok(None));
    append_record(&*store, &t).await;
    assert_eq!(signer.tick(idle + 4, false).await, Ok(Some(7)));
    assert_eq!(
        named(&*store).await,
        vec![("acme".into(), 5), ("beta".into(), 2)]
    );

    let report = verify_store(&*store, None, &Default::default(), NOW_MS)
        .await
        .expect("verify");
    assert!(report.holds(), "{report:?}");
    assert_eq!(report.manifests, 2, "from the latest full one");
}

/// A store with chains but no manifest (its manifests removed) is not signed anew: a new chain
/// of manifests would forget what the old one named. Verification names it too.
pub async fn a_store_whose_manifests_are_gone_is_not_signed_anew(store: Arc<dyn Store>) {
    let t = tenant("acme");
    append_record(&*store, &t).await;
    let refused = Manifester::open(store.clone(), None).await.err();
    assert_eq!(refused.map(|e| e.kind), Some(crate::ErrorKind::Corrupt));
    let report = verify_store(&*store, None, &Default::default(), NOW_MS)
        .await
        .expect("verify");
    assert_eq!(
        report.manifests_broken,
        Some(selene_kms_core::manifest::ManifestBreak::Discontinuity { seq: 1 })
    );
    Manifester::first(store.clone(), NOW_MS)
        .await
        .expect("first");
    assert!(Manifester::open(store, None).await.is_ok());
}

/// Several signers racing while records are appended keep one chain of manifests: each
/// number is taken once, each manifest follows the one before, and no head goes back.
pub async fn racing_signers_keep_one_chain_of_manifests(store: Arc<dyn Store>) {
    let tenants: Vec<TenantId> = (0..4).map(|i| tenant(&format!("t{i}"))).collect();
    Manifester::first(store.clone(), NOW_MS)
        .await
        .expect("first");
    let mut tasks = Vec::new();
    for i in 0..3_u64 {
        let store = store.clone();
        let tenants = tenants.clone();
        tasks.push(tokio::spawn(async move {
            let mut signer = Manifester::open(store.clone(), None).await.expect("opens");
            for round in 0..20_u64 {
                for t in &tenants {
                    append_record(&*store, t).await;
                }
                signer
                    .tick(NOW_MS + round * 10 + i, round % 7 == 0)
                    .await
                    .expect("signs or yields");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let key = store.keys().audit_verifying_key();
    let all = store.manifests(0, 10_000).await.expect("read");
    assert!(all.len() >= 3, "every signer's first manifest at least");
    let mut chain = ManifestChain::default();
    for m in &all {
        chain.push(m, &key).expect("each follows the one before");
    }
    let report = verify_store(&*store, None, &Default::default(), NOW_MS)
        .await
        .expect("verify");
    assert!(report.holds(), "{report:?}");
}
