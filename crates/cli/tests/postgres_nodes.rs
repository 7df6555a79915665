//! Two `selene-kms serve` processes over one PostgreSQL database, driven over real HTTP as a
//! client would: rotations from both nodes, idempotent retries across nodes, revocation seen by
//! the other node at once, one verifiable audit chain, and a node killed (`kill -9`) mid-load.

#[path = "../../store-postgres/tests/pg_cluster/mod.rs"]
mod pg_cluster;

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Api, Node, TENANT, describe, json_of, json_output, request, selene_kms};
use pg_cluster::Cluster;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A password in the store URL (the test cluster trusts local connections and ignores it): it
/// must appear in no output and no log line.
const PASSWORD: &str = "pg-S3CRET-pw";

/// A cluster, one `init` over it, and two nodes serving it from one data directory.
struct Deployment {
    nodes: [Node; 2],
    api: Arc<Api>,
    _data: tempfile::TempDir,
    _cluster: Cluster,
}

impl Deployment {
    async fn start() -> Self {
        let cluster = Cluster::start();
        let store = cluster.create_database("kms").replacen(
            "postgres@",
            &format!("postgres:{PASSWORD}@"),
            1,
        );
        let data = tempfile::tempdir().expect("tempdir");
        let init = selene_kms()
            .args(["init", "--json", "--store", &store])
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .expect("init runs");
        assert!(
            init.status.success(),
            "init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        for output in [&init.stdout, &init.stderr] {
            assert!(!String::from_utf8_lossy(output).contains(PASSWORD));
        }
        assert!(
            data.path().join("root.key").exists(),
            "the key file is in the data dir"
        );
        assert!(!data.path().join("kms.db").exists(), "no embedded store");
        let out: Value = serde_json::from_slice(&init.stdout).expect("init JSON");
        for role in ["admin", "os", "executor"] {
            let id = out["principals"][role].as_str().unwrap_or_default();
            assert!(
                id.starts_with("kp_"),
                "init names the {role} principal: {out}"
            );
        }
        let again = selene_kms()
            .args(["init", "--store", &store, "--data-dir"])
            .arg(tempfile::tempdir().expect("tempdir").path())
            .output()
            .expect("init runs");
        assert!(
            !again.status.success(),
            "a second init of the database is refused"
        );
        let refusal = String::from_utf8_lossy(&again.stderr);
        assert!(refusal.contains("already initialised"), "{refusal}");
        assert!(!refusal.contains(PASSWORD), "{refusal}");
        let api = Arc::new(Api::from_init(&out));
        let nodes = [
            Node::start(data.path(), Some(&store)),
            Node::start(data.path(), Some(&store)),
        ];
        let deployment = Self {
            nodes,
            api,
            _data: data,
            _cluster: cluster,
        };
        deployment.provision().await;
        deployment
    }

    fn url(&self, i: usize) -> String {
        self.nodes[i].url.clone()
    }

    /// The policy through node 0, the secret through node 1.
    async fn provision(&self) {
        self.api.provision(&self.url(0), &self.url(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_over_one_database_behave_as_one_kms() {
    let d = Deployment::start().await;
    let (a, b) = (d.url(0), d.url(1));

    // Concurrent rotations of one secret from both nodes: versions 1..=N+1, no gap, no twin.
    let n = 16u64;
    let mut tasks = Vec::new();
    for i in 0..n {
        let api = d.api.clone();
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            api.rotate(&node, &format!("rot-{i}"))
                .await
                .expect("node reachable")
        }));
    }
    let mut got = Vec::new();
    for task in tasks {
        got.push(task.await.expect("task"));
    }
    got.sort_unstable();
    assert_eq!(got, (2..=n + 1).collect::<Vec<_>>());
    for node in [&a, &b] {
        assert_eq!(d.api.versions(node).await, (1..=n + 1).collect::<Vec<_>>());
    }

    // An idempotent retry sent to the other node gets the same bytes.
    let mut get = request("GET_HANDLE", false);
    get["idempotency_key"] = json!("idem-handle");
    let first = d.api.kms(&a, &get).await.expect("sent");
    assert_eq!(first.0, StatusCode::OK, "{}", describe(&first));
    let retry = d.api.kms(&b, &get).await.expect("sent");
    assert_eq!(retry, first, "same status, same bundle bytes");
    let (replay, committed) = d
        .api
        .plan_and_commit(&a, &request("ROTATE", true), "idem-rotate")
        .await
        .expect("sent");
    assert_eq!(committed.0, StatusCode::OK, "{}", describe(&committed));
    let again = d.api.kms(&b, &replay).await.expect("sent");
    assert_eq!(
        again, committed,
        "a committed rotation replays byte for byte elsewhere"
    );
    assert_eq!(
        d.api.versions(&b).await.len() as u64,
        n + 2,
        "and rotates nothing"
    );

    // A handle revoked through one node is refused by the other at once.
    let handle = json_of(&first)["secret_handle"]
        .as_str()
        .expect("handle")
        .to_owned();
    let redeemed = d.api.redeem(&b, &handle).await;
    assert_eq!(redeemed.0, StatusCode::OK, "{}", describe(&redeemed));
    revoke(&d.api, &a, json!({"secret_handle": handle}), "revoke").await;
    let refused = d.api.redeem(&b, &handle).await;
    assert_eq!(refused.0, StatusCode::GONE, "{}", describe(&refused));
    assert_eq!(json_of(&refused)["reason_code"], "KMS_REVOKED");

    // One audit chain for the tenant, written by both nodes, verifiable with the public key.
    let records = d.api.verify_audit(&a).await;
    assert!(records >= 2 * n + 6, "every request was audited: {records}");
    assert_eq!(d.api.verify_audit(&b).await, records);

    // The store URL's password is in no log line of either node.
    for node in &d.nodes {
        let log = node.log();
        assert!(log.iter().any(|l| l.contains("store open")), "{log:?}");
        assert!(log.iter().all(|l| !l.contains(PASSWORD)), "{log:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_node_mid_load_loses_nothing_acknowledged() {
    /// Rotations each node acknowledges before the kill, and the survivor after it.
    const BEFORE_KILL: usize = 10;
    const AFTER_KILL: usize = 20;
    let mut d = Deployment::start().await;
    let urls = [d.url(0), d.url(1)];
    let acked_by: Arc<[AtomicUsize; 2]> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let acked_after_kill = Arc::new(AtomicUsize::new(0));
    // Only a failing run meets this: a healthy one stops once the survivor has done its share.
    let give_up = Instant::now() + Duration::from_secs(120);
    let mut workers = Vec::new();
    for w in 0..8 {
        let api = d.api.clone();
        let node = w % 2;
        let url = urls[node].clone();
        let (acked_by, killed, acked_after_kill) =
            (acked_by.clone(), killed.clone(), acked_after_kill.clone());
        workers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                if acked_after_kill.load(Ordering::SeqCst) >= AFTER_KILL || Instant::now() > give_up
                {
                    break;
                }
                let sent_after_kill = killed.load(Ordering::SeqCst);
                match api.rotate(&url, &format!("load-{w}-{i}")).await {
                    Ok(v) => {
                        acked.push(v);
                        acked_by[node].fetch_add(1, Ordering::SeqCst);
                        if sent_after_kill {
                            acked_after_kill.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    // The node is gone: what it acknowledged is all it acknowledged.
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    // Kill node 0 mid-load: once both nodes have acknowledged rotations, not after some time.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked_by
        .iter()
        .any(|n| n.load(Ordering::SeqCst) < BEFORE_KILL)
    {
        assert!(
            Instant::now() < deadline,
            "the nodes acknowledged only {acked_by:?} rotations"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.nodes[0].kill();
    killed.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    for w in workers {
        acked.extend(w.await.expect("worker"));
    }
    assert!(
        acked_after_kill.load(Ordering::SeqCst) >= AFTER_KILL,
        "the surviving node kept serving: {acked_after_kill:?} rotations sent after the kill"
    );
    let b = &urls[1];
    let versions = d.api.versions(b).await;
    let current = *versions.last().expect("versions");
    assert_eq!(versions, (1..=current).collect::<Vec<_>>(), "no gaps");
    acked.sort_unstable();
    let total = acked.len();
    acked.dedup();
    assert_eq!(acked.len(), total, "no version acknowledged twice");
    for v in &acked {
        assert!(versions.contains(v), "acknowledged version {v} lost");
    }
    // The survivor still rotates, and the chain (with records from the dead node) verifies.
    let next = d
        .api
        .rotate(b, "after-kill")
        .await
        .expect("survivor reachable");
    assert_eq!(next, current + 1);
    assert!(d.api.verify_audit(b).await > 2 * total as u64);
}

/// `selene-kms` as a client of `node` with the bootstrap admin's token; answers its JSON.
fn cli_json(api: &Api, node: &str, args: &[&str]) -> Value {
    let out = selene_kms()
        .arg("--json")
        .args(args)
        .env("SELENE_KMS_URL", node)
        .env("SELENE_KMS_ADMIN_TOKEN", &api.admin)
        .env("SELENE_KMS_OS_TOKEN", &api.os)
        .output();
    json_output(out, &format!("{args:?}"))
}

/// A KMS request to `node` with `token`.
async fn kms_as(api: &Api, node: &str, token: &str, body: &Value) -> (StatusCode, Vec<u8>) {
    api.call(
        node,
        reqwest::Method::POST,
        "/v1/kms/requests",
        Some(token),
        Some(body),
    )
    .await
    .expect("sent")
}

async fn whoami(api: &Api, node: &str, token: &str) -> StatusCode {
    api.call(
        node,
        reqwest::Method::GET,
        "/v1/auth/whoami",
        Some(token),
        None,
    )
    .await
    .expect("sent")
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_through_one_node_holds_on_the_other_at_once() {
    let d = Deployment::start().await;
    let (a, b) = (d.url(0), d.url(1));
    let me = cli_json(&d.api, &a, &["whoami", "--role", "os"]);
    assert_eq!(me["name"], "bootstrap-os");

    // A principal made through node a with the command line, and a second token for it.
    let created = cli_json(
        &d.api,
        &a,
        &[
            "principal",
            "create",
            "payments-os",
            "--role",
            "os",
            "--tenant",
            "acme",
            "--ttl",
            "30d",
        ],
    );
    let id = created["principal_id"].as_str().expect("id").to_owned();
    let first = created["token"].as_str().expect("token").to_owned();
    let first_id = created["token_id"].as_str().expect("token id").to_owned();
    let issued = cli_json(&d.api, &a, &["principal", "token", "create", &id]);
    let second = issued["token"].as_str().expect("token").to_owned();
    let listed = cli_json(&d.api, &a, &["principal", "list"]);
    let listed_text = listed.to_string();
    assert!(listed_text.contains(&id) && !listed_text.contains(&first));

    // Node b remembers both tokens (its authentication memory is warm).
    for token in [&first, &second, &first, &second] {
        assert_eq!(whoami(&d.api, &b, token).await, StatusCode::OK);
    }
    let mut get = request("GET_HANDLE", false);
    get["idempotency_key"] = json!("scoped-handle");
    let sent = kms_as(&d.api, &b, &second, &get).await;
    assert_eq!(sent.0, StatusCode::OK, "{}", describe(&sent));

    // Revoked through node a: the very next request on node b is refused.
    cli_json(
        &d.api,
        &a,
        &["principal", "token", "revoke", &id, &first_id],
    );
    assert_eq!(whoami(&d.api, &b, &first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(whoami(&d.api, &b, &second).await, StatusCode::OK);
    cli_json(&d.api, &a, &["principal", "revoke", &id]);
    assert_eq!(whoami(&d.api, &b, &second).await, StatusCode::UNAUTHORIZED);
    let refused = kms_as(&d.api, &b, &second, &get).await;
    assert_eq!(
        refused.0,
        StatusCode::UNAUTHORIZED,
        "{}",
        describe(&refused)
    );
    // Everything else still works on both nodes.
    for node in [&a, &b] {
        assert_eq!(whoami(&d.api, node, &d.api.os).await, StatusCode::OK);
    }
}

/// A revocation of `target` through `node`, planned and committed.
async fn revoke(api: &Api, node: &str, target: Value, id: &str) {
    let mut revoke = request("REVOKE", true);
    revoke["revoke_target"] = target;
    let (_, revoked) = api.plan_and_commit(node, &revoke, id).await.expect("sent");
    assert_eq!(revoked.0, StatusCode::OK, "{}", describe(&revoked));
}

/// A GET_HANDLE of the connector through `node`, under idempotency key `id`.
async fn get_handle(api: &Api, node: &str, id: &str, dry_run: bool) -> common::Answer {
    let mut get = request("GET_HANDLE", false);
    get["idempotency_key"] = json!(id);
    get["dry_run"] = json!(dry_run);
    api.kms(node, &get).await.expect("sent")
}

/// The status and reason code of a GET_HANDLE through `node`.
async fn refusal(api: &Api, node: &str, id: &str, dry_run: bool) -> (StatusCode, Value) {
    let answer = get_handle(api, node, id, dry_run).await;
    (answer.0, json_of(&answer)["reason_code"].clone())
}

/// The version a handle redeems to through `node`.
async fn handle_version(api: &Api, node: &str, id: &str) -> u64 {
    let sent = get_handle(api, node, id, false).await;
    assert_eq!(sent.0, StatusCode::OK, "{}", describe(&sent));
    let handle = json_of(&sent)["secret_handle"]
        .as_str()
        .expect("handle")
        .to_owned();
    let redeemed = api.redeem(node, &handle).await;
    assert_eq!(redeemed.0, StatusCode::OK, "{}", describe(&redeemed));
    json_of(&redeemed)["version"].as_u64().expect("version")
}

/// A node decides a first attempt from the policy and secret it remembers, and what another
/// node changed since must still decide the answer: a rotation is issued from at once, a policy
/// that now refuses refuses, and one that allows again allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_a_node_remembers_never_outlives_a_change_through_the_other() {
    let d = Deployment::start().await;
    let (a, b) = (d.url(0), d.url(1));
    // Node b remembers the policy and the secret at version 1.
    assert_eq!(handle_version(&d.api, &b, "warm-1").await, 1);
    assert_eq!(handle_version(&d.api, &b, "warm-2").await, 1);

    assert_eq!(
        d.api.rotate(&a, "rotated-elsewhere").await.expect("sent"),
        2
    );
    assert_eq!(
        handle_version(&d.api, &b, "after-rotation").await,
        2,
        "node b issues from the version node a made current"
    );

    let path = format!("/v1/admin/tenants/{TENANT}/policy");
    let closed = json!({
        "rules": [{"secret_names": ["*"], "engines": ["PH1.OS"], "operations": ["ROTATE", "REVOKE"]}],
        "admins": ["u-admin"]
    });
    let put = d
        .api
        .call(
            &a,
            reqwest::Method::PUT,
            &path,
            Some(&d.api.admin),
            Some(&closed),
        )
        .await
        .expect("sent");
    assert_eq!(put.0, StatusCode::OK, "{}", describe(&put));
    // A dry run commits unchecked, so it is never decided from memory.
    let not_authorized = (StatusCode::FORBIDDEN, json!("KMS_NOT_AUTHORIZED"));
    assert_eq!(
        refusal(&d.api, &b, "dry-after-closing", true).await,
        not_authorized
    );
    assert_eq!(
        refusal(&d.api, &b, "after-closing", false).await,
        not_authorized
    );

    // Node b now remembers the closed policy; node a opens it again.
    d.api.provision_policy(&a).await;
    assert_eq!(handle_version(&d.api, &b, "after-opening").await, 2);

    // Node b remembers version 2 as active; node a revokes it.
    revoke(&d.api, &a, json!({"version": 2}), "revoke-current").await;
    assert_eq!(
        refusal(&d.api, &b, "after-revocation", false).await,
        (StatusCode::GONE, json!("KMS_REVOKED"))
    );
    assert_eq!(d.api.verify_audit(&b).await, d.api.verify_audit(&a).await);
}
