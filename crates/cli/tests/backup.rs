//! `backup` of a serving embedded store under load, and `restore` of the copy: under the key of
//! the store it came from it serves the same chains and handles; under another key, or into a
//! directory that holds a store, nothing is restored.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{Api, Node, describe, json_of, request, selene_kms};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Notify;

fn cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = selene_kms();
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("the command runs")
}

fn json_out(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A GET_HANDLE under a fresh key; its answer.
async fn get_handle(api: &Api, node: &str, key: &str) -> common::Answer {
    let mut req = request("GET_HANDLE", false);
    req["idempotency_key"] = json!(key);
    api.kms(node, &req).await.expect("sent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_under_load_restores_and_verifies() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("kms");
    let init = json_out(&cli(&["init", "--json", "--data-dir", path(&data)], &[]));
    let node = Node::start(&data, None);
    let api = Arc::new(Api::from_init(&init));
    api.provision(&node.url, &node.url).await;
    let issued = get_handle(&api, &node.url, "before-the-backup").await;
    assert_eq!(issued.0, StatusCode::OK, "{}", describe(&issued));
    let handle = json_of(&issued)["secret_handle"]
        .as_str()
        .expect("handle")
        .to_owned();

    // Load from four clients, until the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let granted = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let load: Vec<_> = (0..4)
        .map(|client| {
            let (api, url) = (api.clone(), node.url.clone());
            let (stop, granted, progress) = (stop.clone(), granted.clone(), progress.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let a = get_handle(&api, &url, &format!("load-{client}-{n}")).await;
                    assert_eq!(a.0, StatusCode::OK, "{}", describe(&a));
                    granted.fetch_add(1, Ordering::Relaxed);
                    progress.notify_waiters();
                }
            })
        })
        .collect();
    while granted.load(Ordering::Relaxed) < 50 {
        progress.notified().await;
    }
    let before = api.verify_audit(&node.url).await;
    let file = dir.path().join("kms.backup");
    let args = [
        "backup",
        "--json",
        "--data-dir",
        path(&data),
        "--out",
        path(&file),
    ];
    let args = args.map(str::to_owned);
    let backed_up = tokio::task::spawn_blocking(move || {
        selene_kms().args(&args).output().expect("backup runs")
    })
    .await
    .expect("joined");
    let backed_up = json_out(&backed_up);
    assert!(
        backed_up["bytes"].as_u64().is_some_and(|b| b > 0),
        "{backed_up}"
    );
    let at_backup = granted.load(Ordering::Relaxed);
    while granted.load(Ordering::Relaxed) < at_backup + 50 {
        progress.notified().await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load");
    }
    let after = api.verify_audit(&node.url).await;
    assert!(after > before, "the load went on during the backup");

    // Under another key nothing is restored.
    let wrong = dir.path().join("wrong");
    let refused = cli(
        &["restore", "--in", path(&file), "--data-dir", path(&wrong)],
        &[("SELENE_KMS_ROOT_KEY", &"07".repeat(32))],
    );
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("root key does not open this backup"),
        "{said}"
    );
    assert!(!wrong.join("kms.db").exists(), "no store is left behind");
    // Without any key it says where the key goes.
    let keyless = dir.path().join("keyless");
    let refused = cli(
        &["restore", "--in", path(&file), "--data-dir", path(&keyless)],
        &[],
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("copy the root.key"));

    // Under the key of the store it came from, it verifies and serves what it held.
    let restored_dir = dir.path().join("restored");
    std::fs::create_dir(&restored_dir).expect("dir");
    std::fs::copy(data.join("root.key"), restored_dir.join("root.key")).expect("key");
    let restore = ["restore", "--json", "--in", path(&file), "--data-dir"];
    let restored = json_out(&cli(&[&restore[..], &[path(&restored_dir)]].concat(), &[]));
    assert_eq!(restored["verified"], json!(true), "{restored}");
    assert_eq!(restored["audit_public_key"], init["audit_public_key"]);
    let again = cli(&[&restore[..], &[path(&restored_dir)]].concat(), &[]);
    assert_eq!(again.status.code(), Some(2), "a store is never overwritten");
    assert!(!restored_dir.join("restoring.db").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| {
            std::fs::metadata(restored_dir.join(f))
                .expect("file")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(
            mode("kms.db"),
            0o600,
            "the restored store is its owner's only"
        );
    }
    // What is left of another store (a log) is never folded into a restore.
    let leftovers = dir.path().join("leftovers");
    std::fs::create_dir(&leftovers).expect("dir");
    std::fs::copy(data.join("root.key"), leftovers.join("root.key")).expect("key");
    std::fs::write(leftovers.join("kms.db-wal"), b"someone else's log").expect("wal");
    let refused = cli(&[&restore[..], &[path(&leftovers)]].concat(), &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(!leftovers.join("kms.db").exists());

    let copy = Node::start(&restored_dir, None);
    let records = api.verify_audit(&copy.url).await;
    assert!(
        (before..after).contains(&records),
        "the copy holds the chain as it was during the backup: {before} <= {records} < {after}"
    );
    let redeemed = api.redeem(&copy.url, &handle).await;
    assert_eq!(redeemed.0, StatusCode::OK, "{}", describe(&redeemed));
    let fresh = get_handle(&api, &copy.url, "after-the-restore").await;
    assert_eq!(fresh.0, StatusCode::OK, "{}", describe(&fresh));
    assert_eq!(api.verify_audit(&copy.url).await, records + 2);
}

#[test]
fn a_postgresql_store_is_left_to_postgresql_tools() {
    let dir = tempfile::tempdir().expect("dir");
    let out = cli(
        &[
            "backup",
            "--data-dir",
            path(dir.path()),
            "--store",
            "postgres://kms@localhost/kms",
            "--out",
            path(&dir.path().join("b")),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pg_dump"));
}
