//! The embedded SQLite backend: the conformance suite, plus what only a file-backed store has
//! (plaintext scan, fault injection, tampering with the file, reopen, crash safety).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use selene_kms_core::{ChainBreak, SecretKind, StateChange};
use selene_kms_store::conformance::*;
use selene_kms_store::verify::verify_tenant;
use selene_kms_store::{ErrorKind, RootKey, Store};
use selene_kms_store_sqlite::{SqliteOptions, SqliteStore};

/// Opens the store at `path`. A reopen can find the lock of the store just dropped still held:
/// a child process this binary spawns meanwhile (the kill -9 test) holds a copy of every open
/// descriptor from its fork until its exec closes them. That window ends by itself, so a lock
/// held by no store is waited for; the deadline only bounds a failure.
fn open_at(path: &Path, root: [u8; 32], create: bool) -> Arc<dyn Store> {
    let options = SqliteOptions {
        path: path.to_path_buf(),
        create,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match SqliteStore::open(&options, RootKey::from_bytes(&root)) {
            Ok(store) => return Arc::new(store),
            Err(e)
                if e.message == "another process has this store open"
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("store opens: {e:?}"),
        }
    }
}

fn fresh() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_at(&dir.path().join("kms.db"), [1; 32], true);
    (dir, store)
}

async fn fresh_async() -> (tempfile::TempDir, Arc<dyn Store>) {
    fresh()
}

selene_kms_store::conformance_suite!(fresh_async);

fn files_of(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_database_file_holds_a_canary_in_plaintext() {
    let (dir, store) = fresh();
    let t = tenant("acme");
    store_canaries(&*store, &t).await;
    // Scan while open (main, WAL and shm present), then again after close.
    let hex = hex::encode(CANARY);
    let mut store = Some(store);
    for phase in ["open", "closed"] {
        let files = files_of(dir.path());
        if phase == "open" {
            assert!(files.iter().any(|f| f.to_string_lossy().ends_with("-wal")));
        }
        for file in files {
            let bytes = std::fs::read(&file).expect("read");
            for needle in [
                CANARY,
                &CANARY[..12],
                hex.as_bytes(),
                HANDLE_CANARY.as_bytes(),
            ] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{phase}: {} holds the canary",
                    file.display()
                );
            }
        }
        store.take();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_audit_write_refuses_the_commit_and_changes_nothing() {
    let (dir, store) = fresh();
    let t = tenant("acme");
    create(&*store, &t, "k", SecretKind::Generated, None)
        .await
        .expect("create");
    // Fault injection with SQLite itself: a trigger makes every audit insert fail.
    let side = rusqlite::Connection::open(dir.path().join("kms.db")).expect("side connection");
    side.execute_batch(
        "CREATE TRIGGER fail_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'injected'); END;",
    )
    .expect("trigger");
    let refused = rotate_once(&*store, &t).await;
    assert_eq!(refused.map_err(|e| e.kind), Err(ErrorKind::Unavailable));
    let snap = snapshot(&*store, &t, "k").await;
    assert_eq!(
        (snap.state_version, snap.current_version()),
        (1, 1),
        "nothing changed"
    );
    side.execute_batch("DROP TRIGGER fail_audit;")
        .expect("drop trigger");
    // Recovery once the fault is gone.
    rotate_once(&*store, &t)
        .await
        .expect("rotation after recovery");
    assert_eq!(
        verify_tenant(&*store, &t, NOW_MS)
            .await
            .expect("verify")
            .broken,
        None
    );
}

async fn rotate_once(
    store: &dyn Store,
    t: &selene_kms_core::TenantId,
) -> selene_kms_store::StoreResult<selene_kms_store::Receipt> {
    let snap = snapshot(store, t, "k").await;
    change(
        store,
        t,
        "k",
        snap.state_version,
        StateChange::Rotate {
            new_version: snap.current_version() + 1,
            from_staged: false,
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_file_is_found_at_the_record_it_touched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kms.db");
    let t = tenant("acme");
    {
        let store = open_at(&path, [1; 32], true);
        create(&*store, &t, "k", SecretKind::Generated, None)
            .await
            .expect("create");
        for _ in 0..9 {
            rotate(&*store, &t, "k").await;
        }
    }
    let side = rusqlite::Connection::open(&path).expect("side");
    side.execute(
        "UPDATE audit SET record = replace(record, '\"dry_run\":false', '\"dry_run\":true') WHERE seq = 4",
        [],
    )
    .expect("alter");
    let store = open_at(&path, [1; 32], false);
    let report = verify_tenant(&*store, &t, NOW_MS).await.expect("verify");
    assert_eq!(report.broken, Some(ChainBreak::DigestMismatch { seq: 4 }));
    drop(store);
    side.execute("DELETE FROM audit WHERE seq = 4", [])
        .expect("delete");
    let store = open_at(&path, [1; 32], false);
    let report = verify_tenant(&*store, &t, NOW_MS).await.expect("verify");
    assert_eq!(report.broken, Some(ChainBreak::Discontinuity { seq: 4 }));
}

/// Whoever writes the file cannot turn a key into a credential to redeem it, now or at its
/// next version: material opens, and is sealed, only under the purpose the KMS sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rewritten_as_a_credential_opens_and_seals_nothing() {
    // With its purpose MAC kept (which then fails), and stripped (the material then fails).
    for rewrite in [
        "UPDATE secrets SET purpose = 'credential'",
        "UPDATE secrets SET purpose = 'credential', purpose_mac = NULL",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kms.db");
        let t = tenant("acme");
        keys_to_rewrite(&*open_at(&path, [1; 32], true), &t).await;
        let side = rusqlite::Connection::open(&path).expect("side");
        side.execute(rewrite, []).expect("alter");
        let store = open_at(&path, [1; 32], false);
        a_rewritten_purpose_opens_and_seals_nothing(&*store, &t).await;
    }
}

#[tokio::test]
async fn a_secret_row_without_its_purpose_mac_proves_by_its_material_and_gets_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kms.db");
    let t = tenant("acme");
    keys_to_rewrite(&*open_at(&path, [1; 32], true), &t).await;
    let side = rusqlite::Connection::open(&path).expect("side");
    let macs = |side: &rusqlite::Connection| -> i64 {
        side.query_row(
            "SELECT count(*) FROM secrets WHERE purpose_mac IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .expect("count")
    };
    assert_eq!(macs(&side), 2, "every new secret has one");
    side.execute("UPDATE secrets SET purpose_mac = NULL", [])
        .expect("strip");
    let store = open_at(&path, [1; 32], false);
    rows_without_purpose_macs_prove_by_their_material(&*store, &t).await;
    assert_eq!(macs(&side), 2, "proven by their material, given back");
}

/// The audit rows of `tenant` as stored, by sequence number.
fn stored_records(side: &rusqlite::Connection, tenant: &str) -> Vec<(i64, String)> {
    let mut stmt = side
        .prepare("SELECT seq, record FROM audit WHERE tenant_id = ?1 ORDER BY seq")
        .expect("prepare");
    stmt.query_map([tenant], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

fn put_back(side: &rusqlite::Connection, tenant: &str, rows: &[(i64, String)]) {
    for (seq, record) in rows {
        side.execute(
            "INSERT OR REPLACE INTO audit (tenant_id, seq, record) VALUES (?1, ?2, ?3)",
            (tenant, seq, record),
        )
        .expect("put back");
    }
}

async fn verify_all(path: &Path) -> selene_kms_store::verify::StoreReport {
    let store = open_at(path, [1; 32], false);
    selene_kms_store::verify::verify_store(&*store, None, &Default::default(), NOW_MS)
        .await
        .expect("verify")
}

fn broken_chain(
    report: &selene_kms_store::verify::StoreReport,
    tenant: &str,
) -> Option<ChainBreak> {
    report
        .chains
        .iter()
        .find(|c| c.tenant.as_str() == tenant)
        .and_then(|c| c.broken)
}

/// Revokes handle `h-1` of secret `k` until an hour after [`NOW_MS`].
async fn revoke_handle(store: &dyn Store, t: &selene_kms_core::TenantId) {
    let snap = snapshot(store, t, "k").await;
    change(
        store,
        t,
        "k",
        snap.state_version,
        StateChange::RevokeHandle {
            id: selene_kms_core::RefId::from_stored("h-1".into()),
            expires_at_ms: NOW_MS + 3_600_000,
        },
    )
    .await
    .expect("handle revoked");
}

/// The sealed staged material of secret `m` of `acme`, as the file holds it now.
fn store_row_staged(path: &Path) -> Vec<u8> {
    rusqlite::Connection::open(path)
        .expect("side")
        .query_row(
            "SELECT staged FROM secrets WHERE tenant_id = 'acme' AND secret_name = 'm'",
            [],
            |r| r.get(0),
        )
        .expect("staged material")
}

/// Where `tenant`'s state differs from its chain, by a fresh offline verification.
async fn state_differs(path: &Path, tenant: &str) -> Option<String> {
    let report = verify_all(path).await;
    report
        .chains
        .into_iter()
        .find(|c| c.tenant.as_str() == tenant)
        .and_then(|c| c.differs)
}

/// Runs `tamper` on the file, expects offline verification to name `tenant`'s state as
/// differing (`expected` in its words), then runs `restore` and expects it to hold again.
async fn named_then_restored(
    side: &rusqlite::Connection,
    path: &Path,
    (tenant, expected): (&str, &str),
    tamper: &str,
    restore: &str,
) {
    side.execute_batch(tamper).expect("tampered");
    let found = state_differs(path, tenant).await;
    assert!(
        found.as_deref().is_some_and(|d| d.contains(expected)),
        "{tamper}: {found:?}"
    );
    side.execute_batch(restore).expect("restored");
    assert!(verify_all(path).await.holds(), "{restore}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoever_writes_the_file_cannot_forge_cut_or_remove_a_chain_unseen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kms.db");
    let (t, u) = (tenant("acme"), tenant("beta"));
    {
        let store = open_at(&path, [1; 32], true);
        for _ in 0..6 {
            append_record(&*store, &t).await;
        }
        append_record(&*store, &u).await;
        selene_kms_store::manifest::Manifester::first(store.clone(), NOW_MS)
            .await
            .expect("the first manifest");
        // Records after the latest manifest: still covered by their MACs.
        append_record(&*store, &t).await;
    }
    assert!(verify_all(&path).await.holds());
    let side = rusqlite::Connection::open(&path).expect("side");
    let acme = stored_records(&side, "acme");

    // A record appended with a correct link and digest, but no key to MAC it.
    let mut forged: selene_kms_core::AuditRecord =
        serde_json::from_str(&acme[6].1).expect("record");
    let prev = forged.digest.clone();
    forged.chain(8, &prev);
    forged.mac = None;
    let forged = serde_json::to_string(&forged).expect("json");
    put_back(&side, "acme", &[(8, forged)]);
    assert_eq!(
        broken_chain(&verify_all(&path).await, "acme"),
        Some(ChainBreak::Unauthenticated { seq: 8 })
    );
    side.execute("DELETE FROM audit WHERE tenant_id = 'acme' AND seq = 8", [])
        .expect("delete");

    // The tail cut below the head the manifest signed (acme@6).
    side.execute("DELETE FROM audit WHERE tenant_id = 'acme' AND seq > 3", [])
        .expect("cut");
    assert_eq!(
        broken_chain(&verify_all(&path).await, "acme"),
        Some(ChainBreak::Cut { seq: 4 })
    );
    // ... and the signer refuses to vouch for the cut chain, even once it is written anew
    // past the head the manifest named.
    {
        let store = open_at(&path, [1; 32], false);
        let mut signer = selene_kms_store::manifest::Manifester::open(store.clone(), None)
            .await
            .expect("signer");
        let refused = signer.tick(NOW_MS + 1, true).await.expect_err("refused");
        assert_eq!(refused.kind, ErrorKind::Corrupt);
        for _ in 0..5 {
            // Records unlike the ones cut (another action), as a rewrite would be.
            store
                .commit(selene_kms_store::CommitUnit {
                    tenant: t.clone(),
                    change: selene_kms_store::Change::None,
                    audit: record(&t, selene_kms_core::AuditAction::GetHandle),
                    idempotency: None,
                    bundle: None,
                    inputs: None,
                })
                .await
                .expect("commit");
        }
        let refused = signer.tick(NOW_MS + 2, true).await.expect_err("refused");
        assert_eq!(refused.kind, ErrorKind::Corrupt, "{refused:?}");
        let report =
            selene_kms_store::verify::verify_store(&*store, None, &Default::default(), NOW_MS)
                .await
                .expect("verify");
        assert_eq!(
            broken_chain(&report, "acme"),
            Some(ChainBreak::Diverges { seq: 6 })
        );
        drop(signer);
        drop(store);
        side.execute("DELETE FROM audit WHERE tenant_id = 'acme' AND seq > 3", [])
            .expect("cut again");
    }
    put_back(&side, "acme", &acme);
    assert!(verify_all(&path).await.holds());

    // Record 2 deleted and the rest renumbered, links and digests recomputed: the MACs no
    // longer hold from there.
    let mut renumbered: Vec<selene_kms_core::AuditRecord> = acme
        .iter()
        .filter(|(seq, _)| *seq != 2)
        .map(|(_, text)| serde_json::from_str(text).expect("record"))
        .collect();
    let mut prev = renumbered[0].digest.clone();
    for (i, r) in renumbered.iter_mut().enumerate().skip(1) {
        r.chain(i as u64 + 1, &prev);
        prev.clone_from(&r.digest);
    }
    side.execute("DELETE FROM audit WHERE tenant_id = 'acme'", [])
        .expect("deleted");
    let rows: Vec<(i64, String)> = renumbered
        .iter()
        .map(|r| (r.seq as i64, serde_json::to_string(r).expect("json")))
        .collect();
    put_back(&side, "acme", &rows);
    assert_eq!(
        broken_chain(&verify_all(&path).await, "acme"),
        Some(ChainBreak::Unauthenticated { seq: 2 })
    );
    side.execute("DELETE FROM audit WHERE tenant_id = 'acme'", [])
        .expect("deleted");
    put_back(&side, "acme", &acme);
    assert!(verify_all(&path).await.holds());

    // A whole chain removed, its tenant row with it.
    side.execute_batch(
        "DELETE FROM audit WHERE tenant_id = 'beta'; DELETE FROM tenants WHERE tenant_id = 'beta';",
    )
    .expect("remove");
    let report = verify_all(&path).await;
    assert_eq!(
        broken_chain(&report, "beta"),
        Some(ChainBreak::Cut { seq: 1 })
    );
    assert_eq!(broken_chain(&report, "acme"), None);

    // A manifest altered in place no longer holds, and the store is not served.
    side.execute(
        "UPDATE manifests SET manifest = replace(manifest, '\"seq\":6', '\"seq\":3')",
        [],
    )
    .expect("alter");
    assert!(verify_all(&path).await.manifests_broken.is_some());
    let store = open_at(&path, [1; 32], false);
    let refused = selene_kms_store::manifest::Manifester::open(store, None).await;
    assert_eq!(refused.err().map(|e| e.kind), Some(ErrorKind::Corrupt));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_holds_other_than_its_chain_says_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kms.db");
    let t = tenant("acme");
    let staged_blob;
    {
        let store = open_at(&path, [1; 32], true);
        create(&*store, &t, "k", SecretKind::Generated, None)
            .await
            .expect("create");
        rotate(&*store, &t, "k").await;
        let snap = snapshot(&*store, &t, "k").await;
        change(
            &*store,
            &t,
            "k",
            snap.state_version,
            StateChange::RevokeVersion(1),
        )
        .await
        .expect("revoke version 1");
        // A handle revoked until an hour from now.
        revoke_handle(&*store, &t).await;
        let doc: selene_kms_core::PolicyDocument = serde_json::from_value(serde_json::json!({
            "rules": [{"secret_names": ["*"], "engines": ["PH1.OS"], "operations": ["ROTATE"]}],
            "admins": ["u-admin"]
        }))
        .expect("policy");
        store
            .commit(selene_kms_store::CommitUnit {
                tenant: t.clone(),
                change: selene_kms_store::Change::PutPolicy(doc),
                audit: record(&t, selene_kms_core::AuditAction::SetPolicy),
                idempotency: None,
                bundle: None,
                inputs: None,
            })
            .await
            .expect("policy set");
        create_principal(
            &*store,
            new_principal(1, "ci", selene_kms_core::Role::Executor, &["acme"], None),
        )
        .await
        .expect("principal");
        // An imported secret whose staged material a rotation took.
        create(&*store, &t, "m", SecretKind::Imported, Some(b"v1"))
            .await
            .expect("create");
        stage(&*store, &t, "m", b"v2").await.expect("staged");
        staged_blob = store_row_staged(&path);
        let snap = snapshot(&*store, &t, "m").await;
        change(
            &*store,
            &t,
            "m",
            snap.state_version,
            StateChange::Rotate {
                new_version: 2,
                from_staged: true,
            },
        )
        .await
        .expect("rotated from staged");
        selene_kms_store::manifest::Manifester::first(store.clone(), NOW_MS)
            .await
            .expect("the first manifest");
    }
    assert!(verify_all(&path).await.holds());
    let side = rusqlite::Connection::open(&path).expect("side");
    // The principal's row as it is while live, genuine, MAC and all.
    let live: (Option<i64>, Vec<u8>) = side
        .query_row(
            "SELECT revoked_at_ms, mac FROM principals WHERE name = 'ci'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("row");
    {
        let store = open_at(&path, [1; 32], false);
        revoke_principal(&*store, 1).await.expect("revoked");
    }
    assert!(verify_all(&path).await.holds());

    // A revoked version made active again.
    named_then_restored(
        &side,
        &path,
        ("acme", "secret k"),
        "UPDATE versions SET state = 'ACTIVE' WHERE tenant_id = 'acme' AND secret_name = 'k' AND version = 1",
        "UPDATE versions SET state = 'REVOKED' WHERE tenant_id = 'acme' AND secret_name = 'k' AND version = 1",
    )
    .await;

    // A handle's revocation deleted before the handle expires.
    side.execute("DELETE FROM revoked_refs WHERE tenant_id = 'acme'", [])
        .expect("deleted");
    let found = state_differs(&path, "acme").await;
    assert!(
        found
            .as_deref()
            .is_some_and(|d| d.contains("no longer revoked")),
        "{found:?}"
    );
    {
        // Put back as the KMS wrote it.
        let store = open_at(&path, [1; 32], false);
        revoke_handle(&*store, &t).await;
    }
    assert!(verify_all(&path).await.holds());

    // A secret's TTL bounds widened in place.
    named_then_restored(
        &side,
        &path,
        ("acme", "TTL bounds, handle lifetime or purpose"),
        "UPDATE secrets SET ttl_max_ms = 31536000000 WHERE tenant_id = 'acme'",
        "UPDATE secrets SET ttl_max_ms = 3600000 WHERE tenant_id = 'acme'",
    )
    .await;

    // A credential passed off as a key, and a key's minimum decryption version lowered or
    // raised: either is a term the chain set.
    named_then_restored(
        &side,
        &path,
        ("acme", "purpose"),
        "UPDATE secrets SET purpose = 'hmac-sha256' WHERE tenant_id = 'acme'",
        "UPDATE secrets SET purpose = 'credential' WHERE tenant_id = 'acme'",
    )
    .await;
    named_then_restored(
        &side,
        &path,
        ("acme", "minimum decryption version is 2; record"),
        "UPDATE secrets SET min_decryption_version = 2 WHERE tenant_id = 'acme'",
        "UPDATE secrets SET min_decryption_version = 1 WHERE tenant_id = 'acme'",
    )
    .await;

    // The policy edited in place.
    named_then_restored(
        &side,
        &path,
        ("acme", "policy"),
        "UPDATE tenants SET policy_json = replace(policy_json, 'ROTATE', 'REVOKE')
         WHERE tenant_id = 'acme'",
        "UPDATE tenants SET policy_json = replace(policy_json, 'REVOKE', 'ROTATE')
         WHERE tenant_id = 'acme'",
    )
    .await;

    // Staged material a rotation took, put back to be taken again.
    side.execute(
        "UPDATE secrets SET staged = ?1 WHERE tenant_id = 'acme' AND secret_name = 'm'",
        [&staged_blob],
    )
    .expect("put back");
    let found = state_differs(&path, "acme").await;
    assert!(
        found
            .as_deref()
            .is_some_and(|d| d.contains("staged material is there")),
        "{found:?}"
    );
    side.execute(
        "UPDATE secrets SET staged = NULL WHERE tenant_id = 'acme' AND secret_name = 'm'",
        [],
    )
    .expect("restored");
    assert!(verify_all(&path).await.holds());

    // The principal's row put back as it was before its revocation: its MAC holds.
    side.execute(
        "UPDATE principals SET revoked_at_ms = ?1, mac = ?2 WHERE name = 'ci'",
        (live.0, live.1),
    )
    .expect("rolled back");
    let found = state_differs(&path, "_system").await;
    assert!(
        found.as_deref().is_some_and(|d| d.contains("is live")),
        "{found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_reopen_and_a_wrong_root_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kms.db");
    let t = tenant("acme");
    {
        let store = open_at(&path, [1; 32], true);
        create(&*store, &t, "k", SecretKind::Imported, Some(CANARY))
            .await
            .expect("create");
    }
    let wrong = SqliteStore::open(
        &SqliteOptions {
            path: path.clone(),
            create: false,
        },
        RootKey::from_bytes(&[2; 32]),
    );
    assert_eq!(wrong.err().map(|e| e.kind), Some(ErrorKind::Corrupt));
    let again = SqliteStore::open(
        &SqliteOptions {
            path: path.clone(),
            create: true,
        },
        RootKey::from_bytes(&[1; 32]),
    );
    assert_eq!(
        again.err().map(|e| e.kind),
        Some(ErrorKind::AlreadyExists),
        "initialising an initialised store is refused, not taken as an open"
    );
    let missing = SqliteStore::open(
        &SqliteOptions {
            path: dir.path().join("none.db"),
            create: false,
        },
        RootKey::from_bytes(&[1; 32]),
    );
    assert_eq!(missing.err().map(|e| e.kind), Some(ErrorKind::NotFound));
    let store = open_at(&path, [1; 32], false);
    assert_eq!(
        redeem(&*store, &t, "k", 1)
            .await
            .expect("material")
            .expose(),
        CANARY
    );
    // A second process (here: a second open) cannot take the same store.
    let second = SqliteStore::open(
        &SqliteOptions {
            path: path.clone(),
            create: false,
        },
        RootKey::from_bytes(&[1; 32]),
    );
    assert_eq!(second.err().map(|e| e.kind), Some(ErrorKind::Unavailable));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_key_rotation_rewraps_without_touching_material() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kms.db");
    let t = tenant("acme");
    let sealed_before: Vec<u8>;
    {
        let store = SqliteStore::open(
            &SqliteOptions {
                path: path.clone(),
                create: true,
            },
            RootKey::from_bytes(&[1; 32]),
        )
        .expect("open");
        create(&store, &t, "k", SecretKind::Imported, Some(CANARY))
            .await
            .expect("create");
        let side = rusqlite::Connection::open(&path).expect("side");
        sealed_before = side
            .query_row("SELECT sealed FROM versions", [], |r| r.get(0))
            .expect("row");
        assert_eq!(
            store
                .rotate_root_key(RootKey::from_bytes(&[9; 32]))
                .await
                .expect("rotate"),
            1
        );
        assert_eq!(
            redeem(&store, &t, "k", 1).await.expect("material").expose(),
            CANARY
        );
        let sealed_after: Vec<u8> = side
            .query_row("SELECT sealed FROM versions", [], |r| r.get(0))
            .expect("row");
        assert_eq!(sealed_before, sealed_after, "material rows untouched");
    }
    assert!(
        SqliteStore::open(
            &SqliteOptions {
                path: path.clone(),
                create: false
            },
            RootKey::from_bytes(&[1; 32])
        )
        .is_err()
    );
    let store = open_at(&path, [9; 32], false);
    assert_eq!(
        redeem(&*store, &t, "k", 1)
            .await
            .expect("material")
            .expose(),
        CANARY
    );
}

const CHILD_ENV: &str = "SELENE_KMS_CRASH_CHILD_DB";

/// Not a test on its own: the child process of `acknowledged_rotations_survive_kill_9`, which
/// runs it with `--ignored`. It rotates one secret from eight tasks until killed, printing each
/// acknowledged version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of acknowledged_rotations_survive_kill_9"]
async fn crash_child() {
    let path = std::env::var_os(CHILD_ENV).expect("run by acknowledged_rotations_survive_kill_9");
    // The first round initialises the store; it is killed only once that is done ("ready").
    let path = Path::new(&path);
    let store = open_at(path, [1; 32], !path.exists());
    let t = tenant("acme");
    let _ = create(&*store, &t, "k", SecretKind::Generated, None).await;
    println!("ready");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let v = rotate(&*store, &t, "k").await;
                println!("ack {v}");
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

#[test]
fn acknowledged_rotations_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kms.db");
    let exe = std::env::current_exe().expect("test binary");
    let mut acked: Vec<u64> = Vec::new();
    for round in 0..5u64 {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("child starts");
        let stdout = child.stdout.take().expect("stdout");
        // The kill lands after a number of acknowledgements that differs from round to round,
        // so it meets the writer at different points; counting, not a clock, decides when.
        let kill_after = 5 + 7 * round;
        let mut acked_this_round = 0;
        let mut lines = BufReader::new(stdout).lines();
        let mut ready = false;
        while let Some(Ok(line)) = lines.next() {
            if line.ends_with("ready") {
                ready = true;
            }
            if let Some(v) = line.strip_prefix("ack ") {
                acked.push(v.parse().expect("version"));
                acked_this_round += 1;
            }
            if ready && acked_this_round >= kill_after {
                break;
            }
        }
        child.kill().expect("kill -9");
        // Acknowledgements printed before the kill but not read yet are acknowledged too.
        for line in lines.map_while(Result::ok) {
            if let Some(v) = line.strip_prefix("ack ") {
                acked.push(v.parse().expect("version"));
            }
        }
        child.wait().expect("reaped");
        assert!(ready, "round {round}: the child never became ready");
        assert!(
            acked_this_round >= kill_after,
            "round {round}: the child stopped after {acked_this_round} acknowledgements"
        );
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = open_at(&path, [1; 32], false);
        let t = tenant("acme");
        let snap = snapshot(&*store, &t, "k").await;
        let max = *acked.iter().max().expect("some");
        assert!(
            snap.current_version() >= max,
            "acknowledged version {max} lost"
        );
        let listing = store.list_secrets(&t).await.expect("list");
        let versions: Vec<u64> = listing[0].versions.iter().map(|v| v.version).collect();
        assert_eq!(
            versions,
            (1..=snap.current_version()).collect::<Vec<_>>(),
            "no gaps"
        );
        for v in &acked {
            assert!(versions.contains(v));
        }
        let report = verify_tenant(&*store, &t, NOW_MS).await.expect("verify");
        assert_eq!(report.broken, None);
        assert!(report.records >= acked.len() as u64);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_deleted_under_the_store_refuses_every_commit() {
    let (dir, store) = fresh();
    let t = tenant("acme");
    create(&*store, &t, "k", SecretKind::Generated, None)
        .await
        .expect("create");
    assert!(store.ready().await);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("kms.db{suffix}")));
    }
    let refused = rotate_once(&*store, &t).await;
    assert_eq!(refused.map_err(|e| e.kind), Err(ErrorKind::Unavailable));
    assert!(!store.ready().await, "readiness reports the loss");
}

/// Someone who can write the file re-activates a revoked version behind the store's back (its
/// cache still says revoked). Revoking every version then revokes the whole range, not only the
/// versions the snapshot showed active, so the re-activated one is revoked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_every_version_covers_one_reactivated_behind_the_store() {
    let (dir, store) = fresh();
    let t = tenant("acme");
    create(&*store, &t, "k", SecretKind::Generated, None)
        .await
        .expect("create");
    rotate(&*store, &t, "k").await;
    change(&*store, &t, "k", 2, StateChange::RevokeVersion(1))
        .await
        .expect("revoke v1");
    let side = rusqlite::Connection::open(dir.path().join("kms.db")).expect("side connection");
    side.execute(
        "UPDATE versions SET state = 'ACTIVE' WHERE tenant_id = 'acme' AND secret_name = 'k' AND version = 1",
        [],
    )
    .expect("re-activate v1");
    change(&*store, &t, "k", 3, StateChange::RevokeAllVersions)
        .await
        .expect("revoke all");
    let active: i64 = side
        .query_row(
            "SELECT count(*) FROM versions WHERE tenant_id = 'acme' AND state = 'ACTIVE'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(active, 0, "no version is left active");
}

/// A secret whose stored ref an earlier build sealed in the first generation (its nonce an
/// unkeyed hash of the name) is handed out with its second-generation ref once the store is
/// opened by this build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_generation_secret_refs_are_resealed_on_open() {
    let (dir, store) = fresh();
    let t = tenant("acme");
    create(&*store, &t, "k", SecretKind::Generated, None)
        .await
        .expect("create");
    let current = snapshot(&*store, &t, "k").await.secret_ref.clone();
    assert!(current.starts_with("ksr2_"), "{current}");
    drop(store);
    let path = dir.path().join("kms.db");
    let side = rusqlite::Connection::open(&path).expect("side connection");
    side.execute(
        "UPDATE secrets SET secret_ref = 'ksr1_sealed-by-an-earlier-build'",
        [],
    )
    .expect("an earlier build's ref");
    drop(side);
    let store = open_at(&path, [1; 32], false);
    assert_eq!(snapshot(&*store, &t, "k").await.secret_ref, current);
}
