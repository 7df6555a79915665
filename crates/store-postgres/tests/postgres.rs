//! The PostgreSQL backend against a real, throwaway PostgreSQL 15 cluster: the conformance
//! suite, several nodes (several `PostgresStore`s) on one database, fault injection, root-key
//! rotation, redaction of connection strings, and the plaintext scan.

mod pg_cluster;

use std::sync::Arc;

use pg_cluster::Cluster;
use selene_kms_core::{AuditAction, RefId, Role, SecretKind, StateChange, TenantId, VersionState};
use selene_kms_store::conformance::*;
use selene_kms_store::verify::verify_tenant;
use selene_kms_store::{
    Change, CommitUnit, ErrorKind, IdempotencyScope, Receipt, RootKey, Store, StoreResult,
};
use selene_kms_store_postgres::PostgresStore;

const ROOT: [u8; 32] = [1; 32];

async fn open(url: &str, root: [u8; 32], create: bool) -> StoreResult<PostgresStore> {
    PostgresStore::open(url, RootKey::from_bytes(&root), create).await
}

/// A cluster with one initialised store, and a second handle ("node") on it.
async fn two_nodes() -> (Cluster, Arc<dyn Store>, Arc<dyn Store>) {
    let cluster = Cluster::start();
    let url = cluster.create_database("kms");
    let a = open(&url, ROOT, true).await.expect("node a initialises");
    let b = open(&url, ROOT, false).await.expect("node b opens");
    (cluster, Arc::new(a), Arc::new(b))
}

/// A fresh store on a cluster of its own.
async fn fresh() -> (Cluster, Arc<dyn Store>) {
    let cluster = Cluster::start();
    let url = cluster.create_database("kms");
    let store: Arc<dyn Store> = Arc::new(open(&url, ROOT, true).await.expect("store opens"));
    (cluster, store)
}

selene_kms_store::conformance_suite!(fresh);

async fn audit_only(store: &dyn Store, t: &TenantId) -> StoreResult<Receipt> {
    store
        .commit(CommitUnit {
            tenant: t.clone(),
            change: Change::None,
            audit: record(t, AuditAction::GetHandle),
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_rotating_one_secret_keep_versions_unique_and_gapless() {
    let (_cluster, a, b) = two_nodes().await;
    let t = tenant("acme");
    create(&*a, &t, "hot", SecretKind::Generated, None)
        .await
        .expect("create");
    let per_node = 24u64;
    let mut tasks = Vec::new();
    for i in 0..2 * per_node {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let t = t.clone();
        tasks.push(tokio::spawn(async move { rotate(&*node, &t, "hot").await }));
    }
    let mut got = Vec::new();
    for task in tasks {
        got.push(task.await.expect("task"));
    }
    got.sort_unstable();
    let n = 2 * per_node;
    assert_eq!(
        got,
        (2..=n + 1).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
    for node in [&a, &b] {
        let listing = node.list_secrets(&t).await.expect("list");
        let versions: Vec<u64> = listing[0].versions.iter().map(|v| v.version).collect();
        assert_eq!(versions, (1..=n + 1).collect::<Vec<_>>());
        let snap = snapshot(&**node, &t, "hot").await;
        assert_eq!(snap.current_version(), n + 1);
        assert_eq!(snap.state_version, n + 1);
        // Each node opens material the other sealed.
        for v in [1, n / 2, n + 1] {
            assert_eq!(
                redeem(&**node, &t, "hot", v).await.expect("material").len(),
                32
            );
        }
    }
    let report = verify_tenant(&*b, &t, NOW_MS).await.expect("verify");
    assert_eq!((report.broken, report.records), (None, n + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_through_one_node_is_seen_by_the_other_at_once() {
    let (_cluster, a, b) = two_nodes().await;
    let t = tenant("acme");
    create(&*a, &t, "k", SecretKind::Generated, None)
        .await
        .expect("create");
    // Node b reads (and may cache) the snapshot and the policy-free state first.
    let before = snapshot(&*b, &t, "k").await;
    assert_eq!(before.versions, vec![VersionState::Active]);
    let handle = RefId::from_stored("hid_0042".into());
    assert!(!b.is_revoked(&t, &handle).await.expect("read"));

    change(&*a, &t, "k", 1, StateChange::RevokeVersion(1))
        .await
        .expect("revoke version");
    let after = snapshot(&*b, &t, "k").await;
    assert_eq!(
        after.versions,
        vec![VersionState::Revoked],
        "no stale snapshot"
    );
    assert_eq!(after.state_version, 2);

    change(
        &*a,
        &t,
        "k",
        2,
        StateChange::RevokeHandle {
            id: handle.clone(),
            expires_at_ms: u64::MAX,
        },
    )
    .await
    .expect("revoke handle");
    assert!(
        b.is_revoked(&t, &handle).await.expect("read"),
        "seen at once"
    );
    // A commit computed on b from its (now stale) snapshot loses the compare-and-set.
    let stale = change(
        &*b,
        &t,
        "k",
        before.state_version,
        StateChange::RevokeAllVersions,
    )
    .await;
    assert_eq!(stale.map_err(|e| e.kind), Err(ErrorKind::StateConflict));

    // Policies too: a change through a is what b answers with next.
    let doc = |engine: &str| -> selene_kms_core::PolicyDocument {
        serde_json::from_str(&format!(
            r#"{{"rules":[{{"secret_names":["*"],"engines":["{engine}"],"operations":["GET_HANDLE"]}}]}}"#
        ))
        .expect("doc")
    };
    for (version, engine) in [(1, "E1"), (2, "E2")] {
        a.commit(CommitUnit {
            tenant: t.clone(),
            change: Change::PutPolicy(doc(engine)),
            audit: record(&t, AuditAction::SetPolicy),
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await
        .expect("put policy");
        let seen = b.policy(&t).await.expect("read").expect("present");
        assert_eq!(seen.version, version);
        assert_eq!(seen.policy.document(), &doc(engine));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_through_one_node_is_revoked_on_the_other_at_once() {
    let (_cluster, a, b) = two_nodes().await;
    create_principal(&*a, new_principal(1, "ci", Role::Os, &["acme"], None))
        .await
        .expect("create");
    issue_token(&*a, 1, 2).await.expect("second token");
    // Node b reads first: nothing it remembers may outlive the revocation.
    let before = b.auth_epoch().await.expect("epoch");
    let live = b.credential(&[1; 32]).await.expect("read").expect("found");
    assert_eq!(live.token.revoked_at_ms, None);

    revoke_token(&*a, 1, 1).await.expect("revoke");
    assert!(
        b.auth_epoch().await.expect("epoch") > before,
        "seen at once"
    );
    let revoked = b.credential(&[1; 32]).await.expect("read").expect("kept");
    assert_eq!(revoked.token.revoked_at_ms, Some(NOW_MS));
    let other = b.credential(&[2; 32]).await.expect("read").expect("kept");
    assert_eq!(other.token.revoked_at_ms, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn principal_changes_from_two_nodes_are_decided_one_after_the_other() {
    let (_cluster, a, b) = two_nodes().await;
    let creations: Vec<_> = (10..30u8)
        .map(|n| {
            let node = if n % 2 == 0 { a.clone() } else { b.clone() };
            let new = new_principal(n, "racer", Role::Executor, &["acme"], None);
            tokio::spawn(async move { create_principal(&*node, new).await })
        })
        .collect();
    let mut won = 0;
    for creation in creations {
        match creation.await.expect("task") {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}"),
        }
    }
    assert_eq!(won, 1, "one live principal per name across nodes");
    let report = verify_tenant(&*a, &TenantId::system(), NOW_MS)
        .await
        .expect("verify");
    assert_eq!((report.broken, report.records), (None, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_used_on_one_node_is_taken_on_the_other() {
    let (_cluster, a, b) = two_nodes().await;
    let t = tenant("acme");
    let scope = IdempotencyScope {
        tenant: t.clone(),
        caller: "os-1".into(),
        key: "k-1".into(),
    };
    let unit = |fp: u8| keyed_unit(&scope, fp);
    let first = a.commit(unit(1)).await.expect("commit on a");
    let stored = b.idempotency(&scope).await.expect("read").expect("stored");
    assert_eq!(Some(stored.bundle_json), first.bundle_json);
    let again = b.commit(unit(1)).await;
    assert_eq!(again.map_err(|e| e.kind), Err(ErrorKind::IdempotencyTaken));
    // Racing the same fresh key from both nodes: exactly one wins.
    let race = IdempotencyScope {
        key: "k-2".into(),
        ..scope.clone()
    };
    let racer = |node: Arc<dyn Store>| {
        let unit = keyed_unit(&race, 2);
        tokio::spawn(async move { node.commit(unit).await.map_err(|e| e.kind) })
    };
    let (x, y) = (racer(a.clone()), racer(b.clone()));
    let mut outcomes = vec![
        x.await.expect("task").is_ok(),
        y.await.expect("task").is_ok(),
    ];
    outcomes.sort_unstable();
    assert_eq!(outcomes, vec![false, true]);
    let report = verify_tenant(&*a, &t, NOW_MS).await.expect("verify");
    assert_eq!(
        (report.broken, report.records),
        (None, 2),
        "losers left no record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_chain_per_tenant_written_by_both_nodes_verifies_across_a_checkpoint() {
    let (_cluster, a, b) = two_nodes().await;
    let (t, u) = (tenant("acme"), tenant("umbrella"));
    let total = selene_kms_store::CHECKPOINT_EVERY + 100;
    let mut tasks = Vec::new();
    for i in 0..total + 60 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let tn = if i % 20 == 0 { u.clone() } else { t.clone() };
        tasks.push(tokio::spawn(async move {
            audit_only(&*node, &tn).await.expect("commit").audit_seq
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    for tn in [&t, &u] {
        let report = verify_tenant(&*a, tn, NOW_MS).await.expect("verify");
        assert_eq!(report.broken, None);
        let records = b.audit_records(tn, 0, 100_000).await.expect("read");
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<_>>());
    }
    let report = verify_tenant(&*b, &t, NOW_MS).await.expect("verify");
    assert!(report.records > selene_kms_store::CHECKPOINT_EVERY);
    assert_eq!(
        report.checkpoints, 1,
        "the checkpoint was signed and verifies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_audit_write_refuses_the_commit_and_changes_nothing() {
    let cluster = Cluster::start();
    let url = cluster.create_database("kms");
    let store = open(&url, ROOT, true).await.expect("store");
    let t = tenant("acme");
    create(&store, &t, "k", SecretKind::Generated, None)
        .await
        .expect("create");
    let (side, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("side connection");
    tokio::spawn(connection);
    side.batch_execute(
        "CREATE FUNCTION fail_audit() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'injected'; END $$;
         CREATE TRIGGER fail_audit BEFORE INSERT ON audit
           FOR EACH ROW EXECUTE FUNCTION fail_audit();",
    )
    .await
    .expect("trigger");
    let refused = change(
        &store,
        &t,
        "k",
        1,
        StateChange::Rotate {
            new_version: 2,
            from_staged: false,
        },
    )
    .await;
    let err = refused.expect_err("refused");
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(
        !err.message.contains("injected"),
        "no server text: {}",
        err.message
    );
    let snap = snapshot(&store, &t, "k").await;
    assert_eq!(
        (snap.state_version, snap.current_version()),
        (1, 1),
        "nothing changed"
    );
    side.batch_execute("DROP TRIGGER fail_audit ON audit")
        .await
        .expect("drop trigger");
    rotate(&store, &t, "k").await;
    assert_eq!(
        verify_tenant(&store, &t, NOW_MS)
            .await
            .expect("verify")
            .broken,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_refuses_a_second_init_a_wrong_root_key_and_a_missing_store() {
    let cluster = Cluster::start();
    let url = cluster.create_database("kms");
    let empty = cluster.create_database("empty");
    let missing = open(&empty, ROOT, false).await;
    assert_eq!(missing.err().map(|e| e.kind), Some(ErrorKind::NotFound));
    let t = tenant("acme");
    {
        let store = open(&url, ROOT, true).await.expect("init");
        create(&store, &t, "k", SecretKind::Imported, Some(CANARY))
            .await
            .expect("create");
    }
    let again = open(&url, [7; 32], true).await;
    assert_eq!(again.err().map(|e| e.kind), Some(ErrorKind::AlreadyExists));
    let wrong = open(&url, [2; 32], false).await;
    assert_eq!(wrong.err().map(|e| e.kind), Some(ErrorKind::Corrupt));
    let store = open(&url, ROOT, false).await.expect("reopen");
    assert_eq!(
        redeem(&store, &t, "k", 1).await.expect("material").expose(),
        CANARY
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_key_rotation_rewraps_and_a_node_on_the_old_key_fails_closed() {
    let cluster = Cluster::start();
    let url = cluster.create_database("kms");
    let a = open(&url, ROOT, true).await.expect("node a");
    let b = open(&url, ROOT, false).await.expect("node b");
    let t = tenant("acme");
    create(&a, &t, "k", SecretKind::Imported, Some(CANARY))
        .await
        .expect("create");
    let (side, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("side connection");
    tokio::spawn(connection);
    let sealed = |side: tokio_postgres::Client| async move {
        let row = side
            .query_one("SELECT sealed FROM versions", &[])
            .await
            .expect("row");
        (side, row.get::<_, Vec<u8>>(0))
    };
    let (side, before) = sealed(side).await;
    assert_eq!(
        a.rotate_root_key(RootKey::from_bytes(&[9; 32])).await,
        Ok(1)
    );
    let (_side, after) = sealed(side).await;
    assert_eq!(before, after, "material rows untouched");
    assert_eq!(
        redeem(&a, &t, "k", 1).await.expect("material").expose(),
        CANARY
    );
    // Node b still holds the old root key: it must not wrap a new tenant's data key with it.
    let refused = create(&b, &tenant("newco"), "k", SecretKind::Generated, None).await;
    assert_eq!(refused.map_err(|e| e.kind), Err(ErrorKind::Unavailable));
    create(&a, &tenant("newco"), "k", SecretKind::Generated, None)
        .await
        .expect("node a, on the new key, creates it");
    assert_eq!(
        open(&url, ROOT, false).await.err().map(|e| e.kind),
        Some(ErrorKind::Corrupt)
    );
    let restarted = open(&url, [9; 32], false)
        .await
        .expect("restarted on the new key");
    for tn in ["acme", "newco"] {
        assert!(redeem(&restarted, &tenant(tn), "k", 1).await.is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_strings_never_show_their_password() {
    const PASSWORD: &str = "hunter2-S3CRET";
    let cluster = Cluster::start();
    cluster.create_database("kms");
    let with_password =
        |db: &str, host: &str| format!("postgres://postgres:{PASSWORD}@/{db}?host={host}");
    let socket = cluster.socket_dir().display().to_string();
    // Trust authentication ignores the password: the store opens, and its Debug hides it.
    let store = open(&with_password("kms", &socket), ROOT, true)
        .await
        .expect("opens");
    let debug = format!("{store:?}");
    assert!(debug.contains("postgres:***@"), "{debug}");
    assert!(!debug.contains(PASSWORD));
    // Errors: nobody listening, a connection string that does not parse, a server gone away.
    let nowhere = open(&with_password("kms", "/nonexistent"), ROOT, false)
        .await
        .expect_err("no server");
    let unparsable = open(
        &format!("postgres://postgres:{PASSWORD}@/kms?host={socket}&port=notaport"),
        ROOT,
        false,
    )
    .await
    .expect_err("does not parse");
    assert_eq!(nowhere.kind, ErrorKind::Unavailable);
    assert_eq!(unparsable.kind, ErrorKind::Invalid);
    let mut cluster = cluster;
    cluster.stop();
    let gone = store
        .secret(&tenant("acme"), &name("k"))
        .await
        .expect_err("server stopped");
    assert_eq!(gone.kind, ErrorKind::Unavailable);
    assert!(!store.ready().await);
    let t = tenant("acme");
    let commit = audit_only(&store, &t).await.expect_err("server stopped");
    assert_eq!(commit.kind, ErrorKind::Unavailable);
    for err in [&nowhere, &unparsable, &gone, &commit] {
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(PASSWORD), "{text}");
        }
    }
    // The store comes back with the server.
    cluster.restart();
    // Polled until the pool has replaced its dead connections; the deadline only bounds a
    // failure, so a slow machine waits longer instead of failing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Err(e) = audit_only(&store, &t).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not recover after the server restarted: {e}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(store.ready().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_database_file_holds_a_canary_in_plaintext() {
    let cluster = Cluster::start();
    let url = cluster.create_database("kms");
    let store = open(&url, ROOT, true).await.expect("store");
    let t = tenant("acme");
    store_canaries(&store, &t).await;
    let (side, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("side connection");
    tokio::spawn(connection);
    side.batch_execute("CHECKPOINT").await.expect("checkpoint");
    let hex = hex::encode(CANARY);
    let files = cluster.data_files();
    assert!(files.len() > 100, "scanned the cluster's files");
    for file in files {
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        for needle in [
            CANARY,
            &CANARY[..12],
            hex.as_bytes(),
            HANDLE_CANARY.as_bytes(),
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds the canary",
                file.display()
            );
        }
    }
}

/// A tenant whose stored data key was altered (by someone who can write the database but has no
/// root key) has its own units refused as corrupt; other tenants' units in the same batches
/// commit. A node that starts afresh reads every data key from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_altered_data_key_refuses_only_its_own_tenant() {
    let cluster = Cluster::start();
    let url = cluster.create_database("kms");
    let (good, bad) = (tenant("good"), tenant("bad"));
    {
        let store = open(&url, ROOT, true).await.expect("store");
        for t in [&good, &bad] {
            for i in 0..8 {
                create(&store, t, &format!("k{i}"), SecretKind::Generated, None)
                    .await
                    .expect("create");
            }
        }
    }
    let (side, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("side connection");
    tokio::spawn(connection);
    side.execute(
        "UPDATE tenants SET wrapped_dek = set_byte(wrapped_dek, 20, get_byte(wrapped_dek, 20) # 1)
         WHERE tenant_id = $1",
        &[&bad.as_str()],
    )
    .await
    .expect("alter the key");
    let store: Arc<dyn Store> = Arc::new(open(&url, ROOT, false).await.expect("reopen"));
    let rotations: Vec<_> = [&good, &bad]
        .into_iter()
        .flat_map(|t| (0..8).map(move |i| (t.clone(), format!("k{i}"))))
        .map(|(t, n)| {
            let store = store.clone();
            tokio::spawn(async move {
                let outcome = change(
                    &*store,
                    &t,
                    &n,
                    1,
                    StateChange::Rotate {
                        new_version: 2,
                        from_staged: false,
                    },
                )
                .await;
                (t, outcome)
            })
        })
        .collect();
    for rotation in rotations {
        let (t, outcome) = rotation.await.expect("task");
        if t == good {
            outcome.expect("the untouched tenant rotates");
        } else {
            assert_eq!(outcome.map_err(|e| e.kind), Err(ErrorKind::Corrupt));
        }
    }
    assert!(
        store.ready().await,
        "a corrupt tenant is not a failing store"
    );
}

/// A secret whose stored ref an earlier build sealed in the first generation is handed out with
/// its second-generation ref once a node of this build opens the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_generation_secret_refs_are_resealed_on_open() {
    let cluster = Cluster::start();
    let url = cluster.create_database("kms");
    let t = tenant("acme");
    let current = {
        let store = open(&url, ROOT, true).await.expect("store");
        create(&store, &t, "k", SecretKind::Generated, None)
            .await
            .expect("create");
        snapshot(&store, &t, "k").await.secret_ref.clone()
    };
    assert!(current.starts_with("ksr2_"), "{current}");
    cluster.sql(
        "kms",
        "UPDATE secrets SET secret_ref = 'ksr1_sealed-by-an-earlier-build'",
    );
    let store = open(&url, ROOT, false).await.expect("reopen");
    assert_eq!(snapshot(&store, &t, "k").await.secret_ref, current);
}

/// Whoever writes the database cannot turn a key into a credential to redeem it, now or at its
/// next version: material opens, and is sealed, only under the purpose the KMS sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rewritten_as_a_credential_opens_and_seals_nothing() {
    let cluster = Cluster::start();
    // With its purpose MAC kept (which then fails), and stripped (the material then fails).
    for (db, rewrite) in [
        ("kept", "UPDATE secrets SET purpose = 'credential'"),
        (
            "stripped",
            "UPDATE secrets SET purpose = 'credential', purpose_mac = NULL",
        ),
    ] {
        let url = cluster.create_database(db);
        let t = tenant("acme");
        keys_to_rewrite(&open(&url, ROOT, true).await.expect("store"), &t).await;
        cluster.sql(db, rewrite);
        let store = open(&url, ROOT, false).await.expect("reopen");
        a_rewritten_purpose_opens_and_seals_nothing(&store, &t).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_row_without_its_purpose_mac_proves_by_its_material_and_gets_it_back() {
    let cluster = Cluster::start();
    let url = cluster.create_database("kms");
    let t = tenant("acme");
    keys_to_rewrite(&open(&url, ROOT, true).await.expect("store"), &t).await;
    let macs = || {
        cluster.sql(
            "kms",
            "SELECT count(*) FROM secrets WHERE purpose_mac IS NOT NULL",
        )
    };
    assert_eq!(macs().trim(), "2", "every new secret has one");
    cluster.sql("kms", "UPDATE secrets SET purpose_mac = NULL");
    let store = open(&url, ROOT, false).await.expect("reopen");
    rows_without_purpose_macs_prove_by_their_material(&store, &t).await;
    assert_eq!(macs().trim(), "2", "proven by their material, given back");
}

/// A store from before record MACs: no node chains after its unsealed heads, nor signs a
/// manifest over them, until the operator seals its records, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_before_macs_are_sealed_once_and_never_after_a_manifest() {
    let cluster = Cluster::start();
    let url = cluster.create_database("kms");
    let t = tenant("acme");
    {
        let store = open(&url, ROOT, true).await.expect("store");
        for _ in 0..3 {
            append_record(&store, &t).await;
        }
    }
    let (side, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("side connection");
    tokio::spawn(connection);
    side.batch_execute(
        "UPDATE audit SET record = (record::jsonb - 'mac')::text;
         UPDATE tenants SET audit_head_mac = NULL;",
    )
    .await
    .expect("made old");
    let store: Arc<dyn Store> = Arc::new(open(&url, ROOT, false).await.expect("reopen"));
    let refused = audit_only(&*store, &t).await.expect_err("an unsealed head");
    assert_eq!(refused.kind, ErrorKind::Corrupt);
    assert_eq!(
        store.chain_heads(false).await.map_err(|e| e.kind),
        Err(ErrorKind::Corrupt)
    );

    assert_eq!(store.seal_records_from_before_macs().await, Ok(3));
    assert_eq!(append_record(&*store, &t).await, 4);
    selene_kms_store::manifest::Manifester::first(store.clone(), NOW_MS)
        .await
        .expect("the first manifest");
    assert_eq!(store.latest_full_manifest().await, Ok(1));
    let report = verify_tenant(&*store, &t, NOW_MS).await.expect("verify");
    assert_eq!((report.broken, report.records), (None, 4));

    side.batch_execute("UPDATE audit SET record = (record::jsonb - 'mac')::text WHERE seq = 2")
        .await
        .expect("stripped");
    assert_eq!(
        store
            .seal_records_from_before_macs()
            .await
            .map_err(|e| e.kind),
        Err(ErrorKind::Invalid)
    );
    let report = verify_tenant(&*store, &t, NOW_MS).await.expect("verify");
    assert_eq!(
        report.broken,
        Some(selene_kms_core::ChainBreak::Unauthenticated { seq: 2 })
    );
}

/// The server stopped at once, as a crash would, while 16 writers commit: every commit the
/// store acknowledged is there after the restart, and the chain holds. (A commit that did not
/// wait for the log's flush fails this: such a variant lost the last batches' records here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_crash_under_load_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start();
    let url = cluster.create_database("kms");
    let store: Arc<dyn Store> = Arc::new(open(&url, ROOT, true).await.expect("store"));
    let t = tenant("acme");
    let (acked, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let mut writers = Vec::new();
    for _ in 0..16 {
        let (store, t, acked) = (store.clone(), t.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            while let Ok(receipt) = audit_only(&*store, &t).await {
                if acked.send(receipt.audit_seq).is_err() {
                    break;
                }
            }
        }));
    }
    drop(acked);
    let mut seqs = Vec::new();
    for _ in 0..2_000 {
        seqs.push(answers.recv().await.expect("a writer answers"));
    }
    cluster.stop();
    for writer in writers {
        writer.await.expect("writer");
    }
    while let Some(seq) = answers.recv().await {
        seqs.push(seq);
    }
    drop(store);
    cluster.restart();
    let store = open(&url, ROOT, false).await.expect("reopens");
    let report = verify_tenant(&store, &t, NOW_MS).await.expect("verify");
    assert_eq!(report.broken, None);
    // The chain holds 1..=records without a gap: every acknowledged number is in it, once.
    let acknowledged = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), acknowledged, "no number acknowledged twice");
    let highest = seqs.last().copied().unwrap_or_default();
    assert!(
        report.records >= highest,
        "acknowledged up to seq {highest}, {} records after the restart",
        report.records
    );
}

/// What one node remembers goes stale when the other commits: a grant decided from it is held
/// to what the other node committed, and a fresh read brings the memory up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_from_what_a_node_remembers_is_held_to_the_other_nodes_commits() {
    let (_cluster, a, b) = two_nodes().await;
    let t = tenant("acme");
    put_policy(&*a, &t, open_policy()).await.expect("policy");
    create(&*a, &t, "k", SecretKind::Generated, None)
        .await
        .expect("create");
    assert!(b.remembered(&t, &name("k")).is_none(), "b has read nothing");
    b.policy(&t).await.expect("read").expect("policy");
    snapshot(&*b, &t, "k").await;
    let remembered = b.remembered(&t, &name("k")).expect("b remembers both");
    assert_eq!(remembered.secret.current_version(), 1);
    rotate(&*a, &t, "k").await;
    let stale = b.remembered(&t, &name("k")).expect("still remembered");
    assert_eq!(
        stale.secret.current_version(),
        1,
        "b has not seen the rotation"
    );
    let ok = selene_kms_core::ReasonCode::OkMaterialIssue;
    let read = (
        Some(stale.policy.version),
        Some(stale.secret.state_version),
        Some(1),
    );
    let voided = b.commit(answered_read(&t, "k", ok, read)).await;
    assert_eq!(voided.map_err(|e| e.kind), Err(ErrorKind::StateConflict));
    let fresh = snapshot(&*b, &t, "k").await;
    assert_eq!(fresh.current_version(), 2);
    let remembered = b.remembered(&t, &name("k")).expect("remembered");
    assert_eq!(
        remembered.secret.current_version(),
        2,
        "the fresh read is remembered"
    );
    let read = (
        Some(stale.policy.version),
        Some(fresh.state_version),
        Some(2),
    );
    b.commit(answered_read(&t, "k", ok, read))
        .await
        .expect("a grant from the fresh read commits");
}
