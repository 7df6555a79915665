//! The PostgreSQL store over TLS, against a real PostgreSQL 15 that serves TLS with a test CA's
//! certificate and accepts TCP logins over TLS only (`hostssl`): so a TCP connection that works
//! was encrypted.

mod pg_cluster;

use std::sync::Arc;

use pg_cluster::{Cluster, TLS_PASSWORD};
use selene_kms_store::conformance::{audit_chain, lifecycle};
use selene_kms_store::{ErrorKind, RootKey, Store, StoreError};
use selene_kms_store_postgres::PostgresStore;

const ROOT: [u8; 32] = [7; 32];

async fn open(url: &str, create: bool) -> Result<PostgresStore, StoreError> {
    PostgresStore::open(url, RootKey::from_bytes(&ROOT), create).await
}

/// Opening fails; the error never shows the password.
async fn refused(url: &str) -> StoreError {
    let err = match open(url, false).await {
        Ok(store) => panic!("opened {store:?}"),
        Err(e) => e,
    };
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(TLS_PASSWORD), "{text}");
    }
    err
}

fn verify(mode: &str, ca: &std::path::Path) -> String {
    format!("sslmode={mode}&sslrootcert={}", ca.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sslmode_require_encrypts_and_the_store_works() {
    let cluster = Cluster::start_tls();
    cluster.create_database("one");
    cluster.create_database("two");
    let url = |db| cluster.tcp_url("localhost", db, "sslmode=require");
    let store: Arc<dyn Store> = Arc::new(open(&url("one"), true).await.expect("opens over TLS"));
    lifecycle(store).await;
    let store: Arc<dyn Store> = Arc::new(open(&url("two"), true).await.expect("opens over TLS"));
    audit_chain(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_and_the_default_use_tls_when_the_server_offers_it() {
    let cluster = Cluster::start_tls();
    cluster.create_database("kms");
    open(&cluster.tcp_url("localhost", "kms", "sslmode=prefer"), true)
        .await
        .expect("prefer opens over TLS");
    open(
        &cluster.tcp_url("127.0.0.1", "kms", "application_name=x"),
        false,
    )
    .await
    .expect("no sslmode opens over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_right_ca_connects_by_name_and_by_address() {
    let cluster = Cluster::start_tls();
    cluster.create_database("kms");
    let ca = cluster.tls_ca();
    let store = open(
        &cluster.tcp_url("localhost", "kms", &verify("verify-full", ca)),
        true,
    )
    .await
    .expect("verify-full opens");
    assert!(store.ready().await);
    for (host, mode) in [
        ("127.0.0.1", "verify-full"),
        ("localhost", "verify-ca"),
        ("127.0.0.1", "require"),
    ] {
        let store = open(&cluster.tcp_url(host, "kms", &verify(mode, ca)), false)
            .await
            .unwrap_or_else(|e| panic!("{host} {mode}: {e}"));
        assert!(store.ready().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_host_name_is_refused_with_a_clear_error_that_hides_the_password() {
    let cluster = Cluster::start_tls();
    cluster.create_database("kms");
    let other = tempfile::tempdir().expect("tempdir");
    let wrong_ca = pg_cluster::make_ca(other.path(), "other");
    for mode in ["verify-full", "verify-ca", "require"] {
        let err = refused(&cluster.tcp_url("localhost", "kms", &verify(mode, &wrong_ca))).await;
        assert_eq!(err.kind, ErrorKind::Unavailable, "{mode}: {err}");
        assert!(
            err.message.contains("TLS handshake") && err.message.contains("UnknownIssuer"),
            "{mode}: {err}"
        );
    }
    // The right CA, but a name the certificate does not hold: the address is the server's.
    let misnamed = |mode| {
        cluster.tcp_url(
            "db.invalid",
            "kms",
            &format!("hostaddr=127.0.0.1&{}", verify(mode, cluster.tls_ca())),
        )
    };
    let err = refused(&misnamed("verify-full")).await;
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("not valid for name"), "{err}");
    // verify-ca checks the chain only.
    open(&misnamed("verify-ca"), true)
        .await
        .expect("verify-ca accepts any name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_by_a_server_that_accepts_only_tls() {
    let cluster = Cluster::start_tls();
    cluster.create_database("kms");
    let err = refused(&cluster.tcp_url("localhost", "kms", "sslmode=disable")).await;
    // 28000: invalid authorization (no pg_hba.conf entry without encryption).
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("SQLSTATE 28000"), "{err}");
    // The same database over TLS.
    open(
        &cluster.tcp_url("localhost", "kms", "sslmode=require"),
        true,
    )
    .await
    .expect("opens over TLS");
}
