//! Durable commit throughput of both backends: rotations per second with 1, 16 and 64
//! concurrent writers on one hot secret and on one secret per writer. Every rotation is a full
//! commit (new version sealed, audit record chained) acknowledged only after its flush: SQLite's
//! `fdatasync` of the WAL, and PostgreSQL's own commit with `fsync` and `synchronous_commit` on
//! (a throwaway cluster on a unix socket, started from the PostgreSQL 15 binaries; without them
//! its table is left out, and the output says so). A writer decides from the state its last
//! rotation left, and reads the secret only first and after losing a race, as the host decides
//! from what it remembers (on PostgreSQL; the embedded store's reads are from memory anyway).
//!
//! `cargo bench -p selene-kms-backends --bench commit` (set `SELENE_KMS_BENCH_SECS` to change the
//! duration of each run, 5 s by default).

#[path = "../../store-postgres/tests/pg_cluster/mod.rs"]
mod pg_cluster;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use selene_kms_backends::{StoreLocation, open_store};
use selene_kms_core::{
    AuditAction, AuditRecord, ReasonCode, SecretKind, SecretMaterial, SecretName, StateChange,
    TenantId, TtlBounds,
};
use selene_kms_store::{Change, CommitUnit, ErrorKind, NewSecret, RootKey, Store};

fn name(i: usize) -> SecretName {
    SecretName::try_from(format!("bench/s{i}")).expect("valid")
}

/// A secret's state version and current version, as a writer last left them.
type Remembered = Option<(u64, u64)>;

async fn rotate(store: &dyn Store, t: &TenantId, n: &SecretName, known: &mut Remembered) -> bool {
    let (state_version, current) = match known.take() {
        Some(known) => known,
        None => {
            let snap = store.secret(t, n).await.expect("read").expect("exists");
            (snap.state_version, snap.current_version())
        }
    };
    let result = store
        .commit(CommitUnit {
            tenant: t.clone(),
            change: Change::Secret {
                name: n.clone(),
                expected_state_version: state_version,
                change: StateChange::Rotate {
                    new_version: current + 1,
                    from_staged: false,
                },
                // The host draws a rotation's material; its cost is not the store's.
                material: Some(SecretMaterial::from_slice(&[7; 32])),
            },
            audit: AuditRecord::for_action(t, AuditAction::Rotate, ReasonCode::OkMaterialIssue, 0),
            idempotency: None,
            bundle: None,
            inputs: None,
        })
        .await;
    match result {
        Ok(_) => {
            *known = Some((state_version + 1, current + 1));
            true
        }
        Err(e) if e.kind == ErrorKind::StateConflict => false,
        Err(e) => panic!("commit failed: {e}"),
    }
}

/// Where a run's store lives.
enum Backend {
    Sqlite,
    Postgres(pg_cluster::Cluster),
}

impl Backend {
    /// A fresh, empty store for one run (a new file, or a new database of the cluster).
    async fn fresh_store(&self, run: usize) -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
        let root = RootKey::from_bytes(&[1; 32]);
        let (location, dir) = match self {
            Self::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                (
                    StoreLocation::Embedded(dir.path().join("kms.db")),
                    Some(dir),
                )
            }
            Self::Postgres(cluster) => (
                StoreLocation::Postgres(cluster.create_database(&format!("bench{run}"))),
                None,
            ),
        };
        let store = open_store(&location, root, true).await.expect("open");
        (store, dir)
    }
}

async fn run(store: Arc<dyn Store>, writers: usize, hot: bool, secs: u64) -> (f64, u64) {
    let t = TenantId::try_from("bench").expect("valid");
    for i in 0..writers {
        store
            .commit(CommitUnit {
                tenant: t.clone(),
                change: Change::CreateSecret(NewSecret {
                    name: name(i),
                    kind: SecretKind::Generated,
                    material: SecretMaterial::from_slice(&[7; 32]),
                    ttl: TtlBounds::DEFAULT,
                    handle_ttl_ms: 3_600_000,
                    purpose: selene_kms_core::Purpose::Credential,
                }),
                audit: AuditRecord::for_action(
                    &t,
                    AuditAction::CreateSecret,
                    ReasonCode::OkMaterialIssue,
                    0,
                ),
                idempotency: None,
                bundle: None,
                inputs: None,
            })
            .await
            .expect("create");
    }
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..writers {
        let (store, t, done, count, conflicts) = (
            store.clone(),
            t.clone(),
            done.clone(),
            count.clone(),
            conflicts.clone(),
        );
        let n = name(if hot { 0 } else { i });
        tasks.push(tokio::spawn(async move {
            let mut known = None;
            while !done.load(Ordering::Relaxed) {
                if rotate(&*store, &t, &n, &mut known).await {
                    count.fetch_add(1, Ordering::Relaxed);
                } else {
                    conflicts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    done.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    (
        count.load(Ordering::Relaxed) as f64 / elapsed,
        conflicts.load(Ordering::Relaxed),
    )
}

fn table(rt: &tokio::runtime::Runtime, backend: &Backend, secs: u64) {
    println!("| writers | secrets | rotations/s | CAS retries |");
    println!("|---:|---|---:|---:|");
    let mut runs = 0;
    for writers in [1, 16, 64] {
        for hot in [false, true] {
            if writers == 1 && hot {
                continue;
            }
            runs += 1;
            let (rate, conflicts) = rt.block_on(async {
                let (store, _dir) = backend.fresh_store(runs).await;
                run(store, writers, hot, secs).await
            });
            let secrets = if hot {
                "one hot secret"
            } else {
                "one per writer"
            };
            println!("| {writers} | {secrets} | {rate:.0} | {conflicts} |");
        }
    }
}

fn main() {
    let secs = std::env::var("SELENE_KMS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("SQLite (embedded):\n");
    table(&rt, &Backend::Sqlite, secs);
    println!("\nPostgreSQL 15 (one node, fsync and synchronous_commit on):\n");
    if pg_cluster::binaries_present() {
        table(
            &rt,
            &Backend::Postgres(pg_cluster::Cluster::start_durable()),
            secs,
        );
    } else {
        println!(
            "left out: the PostgreSQL 15 server binaries are not in {}",
            pg_cluster::PG_BIN
        );
    }
}
