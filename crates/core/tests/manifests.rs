//! Record MACs and signed manifests: whoever can write the store but lacks the root key can
//! neither forge or alter a record, nor cut a chain below a signed head, nor remove a chain,
//! without `audit verify` naming the tenant and the first bad record.

mod common;

use common::*;
use selene_kms_core::audit::{GENESIS_DIGEST, VerifyingKey, parse_public_key, public_key_hex};
use selene_kms_core::export::{ExportChecks, ExportError, verify_export};
use selene_kms_core::manifest::{ManifestBreak, Unsigned, Witnessed};
use selene_kms_core::{
    AuditAction, AuditRecord, ChainBreak, ChainHead, ExportLine, Manifest, ManifestChain,
    ManifestKind, ReasonCode, ServiceKeys, TenantId, TenantWalk,
};

fn records(tenant: &str, n: u64) -> Vec<AuditRecord> {
    let t = TenantId::try_from(tenant).expect("tenant");
    let mut prev = GENESIS_DIGEST.to_owned();
    (1..=n)
        .map(|seq| {
            let mut r =
                AuditRecord::for_action(&t, AuditAction::Redeem, ReasonCode::OkMaterialIssue, NOW);
            r.chain(seq, &prev);
            r.seal(&keys());
            prev.clone_from(&r.digest);
            r
        })
        .collect()
}

fn head(r: &AuditRecord) -> ChainHead {
    ChainHead {
        tenant_id: r.tenant_id.clone(),
        seq: r.seq,
        digest: r.digest.clone(),
    }
}

fn manifest(
    keys: &ServiceKeys,
    seq: u64,
    kind: ManifestKind,
    heads: Vec<ChainHead>,
    prev: &str,
) -> Manifest {
    Unsigned {
        seq,
        kind,
        at_ms: NOW + seq,
        tenant_id: None,
        heads,
        prev_digest: prev.to_owned(),
    }
    .sign(keys)
}

/// Chains `a` (10 records) and `b` (5); a full manifest at a@4, b@2; a manifest of changes at
/// a@8; and an export's closing manifest at a@10, b@5.
struct Store {
    a: Vec<AuditRecord>,
    b: Vec<AuditRecord>,
    full: Manifest,
    changes: Manifest,
}

impl Store {
    fn new() -> Self {
        let (a, b) = (records("a", 10), records("b", 5));
        let full = manifest(
            &keys(),
            1,
            ManifestKind::Full,
            vec![head(&a[3]), head(&b[1])],
            GENESIS_DIGEST,
        );
        let changes = manifest(
            &keys(),
            2,
            ManifestKind::Changes,
            vec![head(&a[7])],
            &full.digest,
        );
        Self {
            a,
            b,
            full,
            changes,
        }
    }

    fn closing(&self, a: &[AuditRecord], b: &[AuditRecord]) -> Manifest {
        let heads = [a.last(), b.last()]
            .into_iter()
            .flatten()
            .map(head)
            .collect();
        manifest(
            &keys(),
            3,
            ManifestKind::Export,
            heads,
            &self.changes.digest,
        )
    }

    fn export(&self, a: &[AuditRecord], b: &[AuditRecord], closing: Option<Manifest>) -> String {
        let mut lines = vec![
            ExportLine::Manifest(self.full.clone()),
            ExportLine::Manifest(self.changes.clone()),
        ];
        lines.extend(a.iter().chain(b).cloned().map(ExportLine::Record));
        lines.extend(closing.map(ExportLine::Manifest));
        lines
            .iter()
            .map(|l| serde_json::to_string(l).expect("serializes"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn whole(&self) -> String {
        self.export(&self.a, &self.b, Some(self.closing(&self.a, &self.b)))
    }
}

fn key() -> VerifyingKey {
    parse_public_key(&public_key_hex(&keys())).expect("key")
}

fn verify(text: &str) -> Result<selene_kms_core::export::ExportSummary, ExportError> {
    verify_export(text, &key(), &ExportChecks::default())
}

fn broken(tenant: &str, broken: ChainBreak) -> Result<(), ExportError> {
    Err(ExportError::Chain {
        tenant: tenant.to_owned(),
        broken,
    })
}

#[test]
fn a_fresh_export_verifies_in_full() {
    let store = Store::new();
    let summary = verify(&store.whole()).expect("verifies");
    assert_eq!(
        (summary.records, summary.manifests, summary.uncovered),
        (15, 3, 0)
    );
}

#[test]
fn records_after_the_latest_manifest_are_reported_not_covered() {
    let store = Store::new();
    let text = store.export(&store.a, &store.b, None);
    assert_eq!(
        verify(&text).map(drop),
        broken("a", ChainBreak::Unsigned { seq: 8 })
    );
    let allowed = ExportChecks {
        allow_uncovered: true,
        ..ExportChecks::default()
    };
    let summary = verify_export(&text, &key(), &allowed).expect("verifies when allowed");
    assert_eq!(summary.uncovered, 2 + 3, "a@9..10 and b@3..5");
}

#[test]
fn a_tail_cut_below_a_signed_head_is_named() {
    let store = Store::new();
    let cut = &store.a[..6];
    let text = store.export(cut, &store.b, Some(store.closing(cut, &store.b)));
    assert_eq!(
        verify(&text).map(drop),
        broken("a", ChainBreak::Cut { seq: 7 })
    );
    // Without the export's own manifest (a store rolled back by its writer cannot sign one).
    let text = store.export(cut, &store.b, None);
    assert_eq!(
        verify(&text).map(drop),
        broken("a", ChainBreak::Cut { seq: 7 })
    );
}

#[test]
fn a_whole_chain_gone_is_named() {
    let store = Store::new();
    let text = store.export(&store.a, &[], None);
    let allowed = ExportChecks {
        allow_uncovered: true,
        ..ExportChecks::default()
    };
    assert_eq!(
        verify_export(&text, &key(), &allowed).map(drop),
        broken("b", ChainBreak::Cut { seq: 1 })
    );
}

#[test]
fn a_rewritten_chain_differs_from_its_signed_head() {
    let store = Store::new();
    // Record 3 altered and every later digest recomputed, as a writer without the key can.
    let mut a = store.a.clone();
    a[2].at_ms += 1;
    for i in 2..a.len() {
        let prev = a[i - 1].digest.clone();
        let seq = a[i].seq;
        a[i].chain(seq, &prev);
    }
    let text = store.export(&a, &store.b, None);
    // With the public key alone, the break shows where the latest signed head is; a verifier
    // holding the keys names record 3 itself, by its MAC.
    assert_eq!(
        verify(&text).map(drop),
        broken("a", ChainBreak::Diverges { seq: 8 })
    );
    let k = keys();
    let mut walk = TenantWalk::new("a", Vec::new(), Some(&k));
    assert_eq!(
        a.iter().try_for_each(|r| walk.push(r)),
        Err(ChainBreak::Unauthenticated { seq: 3 })
    );
}

#[test]
fn manifests_must_be_signed_linked_and_never_go_back() {
    let store = Store::new();
    // Signed under another store's key.
    let forged = manifest(
        &other_keys(),
        2,
        ManifestKind::Changes,
        vec![head(&store.a[9])],
        &store.full.digest,
    );
    let mut chain = ManifestChain::default();
    chain.push(&store.full, &key()).expect("full");
    assert_eq!(
        chain.push(&forged, &key()),
        Err(ManifestBreak::BadSignature { seq: 2 })
    );
    // Not linked to the previous manifest.
    let unlinked = manifest(
        &keys(),
        2,
        ManifestKind::Changes,
        vec![head(&store.a[9])],
        GENESIS_DIGEST,
    );
    assert_eq!(
        chain.push(&unlinked, &key()),
        Err(ManifestBreak::Discontinuity { seq: 2 })
    );
    // A head below the one signed before.
    let behind = manifest(
        &keys(),
        2,
        ManifestKind::Changes,
        vec![head(&store.a[2])],
        &store.full.digest,
    );
    assert!(matches!(
        chain.push(&behind, &key()),
        Err(ManifestBreak::Regressed {
            seq: 2,
            head_seq: 4,
            ..
        })
    ));
    // A full manifest that leaves out a chain named before.
    let without_b = manifest(
        &keys(),
        2,
        ManifestKind::Full,
        vec![head(&store.a[9])],
        &store.full.digest,
    );
    assert!(chain.admits(2, &without_b.heads, true).is_err());
    assert!(chain.push(&without_b, &key()).is_err());
    // A verifier starts at a full manifest.
    assert_eq!(
        ManifestChain::default().push(&store.changes, &key()),
        Err(ManifestBreak::Discontinuity { seq: 2 })
    );
    // One dropped from the middle of an export: its closing manifest no longer follows.
    let text = store.whole().replacen(
        &serde_json::to_string(&ExportLine::Manifest(store.changes.clone())).expect("json"),
        "",
        1,
    );
    assert!(matches!(
        verify(&text),
        Err(ExportError::Manifest(ManifestBreak::Discontinuity {
            seq: 3
        }))
    ));
}

#[test]
fn the_closing_manifest_names_exactly_what_the_export_holds() {
    let store = Store::new();
    // An export whose last record was dropped after it was signed.
    let text = store.export(
        &store.a[..9],
        &store.b,
        Some(store.closing(&store.a, &store.b)),
    );
    assert!(matches!(
        verify(&text),
        Err(ExportError::Manifest(ManifestBreak::Discontinuity {
            seq: 3
        }))
    ));
    // Nothing may follow it.
    let mut text = store.whole();
    text.push('\n');
    text.push_str(&serde_json::to_string(&ExportLine::Record(store.a[0].clone())).expect("json"));
    assert!(matches!(verify(&text), Err(ExportError::Malformed { .. })));
}

#[test]
fn a_witness_reveals_a_store_rolled_back_to_an_earlier_signed_state() {
    let store = Store::new();
    let later = manifest(
        &keys(),
        3,
        ManifestKind::Changes,
        vec![head(&store.a[9]), head(&store.b[4])],
        &store.changes.digest,
    );
    let allowed = ExportChecks {
        allow_uncovered: true,
        ..Default::default()
    };
    let with_witness = |witnessed: Witnessed| ExportChecks {
        witnessed,
        ..allowed.clone()
    };
    // The store as it was at manifest 2, consistent in itself.
    let rolled_back = store.export(&store.a[..8], &store.b[..2], None);
    assert!(verify_export(&rolled_back, &key(), &allowed).is_ok());

    // A witness that saw manifest 3: the store no longer holds it.
    let witnessed = Witnessed::read([&store.full, &store.changes, &later], &key()).expect("holds");
    assert_eq!(witnessed.heads.get("a").map(|(seq, _)| *seq), Some(10));
    assert_eq!(witnessed.latest, Some((3, later.digest.clone())));
    assert_eq!(
        verify_export(&rolled_back, &key(), &with_witness(witnessed.clone())).map(drop),
        Err(ExportError::Manifest(ManifestBreak::Discontinuity {
            seq: 3
        }))
    );
    // The store as it is, manifest 3 and all, extends the witness.
    let text = store.export(&store.a, &store.b, None);
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let line = serde_json::to_string(&ExportLine::Manifest(later.clone())).expect("json");
    lines.insert(2, line);
    let current = lines.join("\n");
    assert!(verify_export(&current, &key(), &with_witness(witnessed)).is_ok());

    // A witness that saw manifest 2 only: its heads are what the rolled-back store lacks.
    let witnessed = Witnessed::read([&store.full, &store.changes], &key()).expect("holds");
    let cut = store.export(&store.a[..6], &store.b[..2], None);
    assert_eq!(
        verify_export(&cut, &key(), &with_witness(witnessed)).map(drop),
        broken("a", ChainBreak::Cut { seq: 7 })
    );
    // A witness line signed under another key is refused.
    let forged = manifest(
        &other_keys(),
        4,
        ManifestKind::Changes,
        vec![],
        &later.digest,
    );
    assert!(Witnessed::read([&forged], &key()).is_err());
}

#[test]
fn every_record_carries_a_mac_only_the_kms_can_make() {
    let a = records("a", 3);
    assert!(a.iter().all(|r| r.mac_holds(&keys())));
    assert!(!a[0].mac_holds(&other_keys()), "another store's key");
    let walk = |records: &[AuditRecord]| {
        let k = keys();
        let mut walk = TenantWalk::new("a", Vec::new(), Some(&k));
        records.iter().try_for_each(|r| walk.push(r))
    };
    assert_eq!(walk(&a), Ok(()));
    // A record appended by a writer without the key: linked and digested, but no MAC.
    let mut forged = a.clone();
    let mut extra = a[2].clone();
    extra.chain(4, &a[2].digest);
    extra.mac = None;
    forged.push(extra.clone());
    assert_eq!(walk(&forged), Err(ChainBreak::Unauthenticated { seq: 4 }));
    // ... or with a MAC copied from another record.
    extra.mac = a[2].mac.clone();
    *forged.last_mut().expect("one") = extra;
    assert_eq!(walk(&forged), Err(ChainBreak::Unauthenticated { seq: 4 }));
    // The MAC is not part of the digest: an export verifies without the key.
    let mut unsealed = a[1].clone();
    unsealed.mac = None;
    assert_eq!(unsealed.compute_digest(), a[1].digest);
}
