//! Two `selene-kms serve` processes over one PostgreSQL database, driven over real HTTP as a
//! client would: rotations from both nodes, idempotent retries across nodes, revocation seen by
//! the other node at once, one verifiable audit chain, and a node killed (`kill -9`) mid-load.

#[path = "../../store/tests/pg_cluster/mod.rs"]
mod pg_cluster;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pg_cluster::Cluster;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const TENANT: &str = "acme";
const SECRET: &str = "payments/stripe";
/// A password in the store URL (the test cluster trusts local connections and ignores it): it
/// must appear in no output and no log line.
const PASSWORD: &str = "pg-S3CRET-pw";

fn selene_kms() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_selene-kms"));
    cmd.env_remove("SELENE_KMS_ROOT_KEY")
        .env_remove("SELENE_KMS_STORE")
        .env_remove("SELENE_KMS_CONFIG");
    cmd
}

/// One `selene-kms serve` process; killed when dropped.
struct Node {
    child: Child,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    /// Starts a node on a free loopback port and waits until it serves.
    fn start(data_dir: &Path, store: &str) -> Self {
        let mut child = selene_kms()
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--store", store])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("serve exited before serving:\n{}", seen.join("\n"));
            };
            let entry: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            seen.push(line);
            if entry["fields"]["message"] == "selene-kms serving" {
                break entry["fields"]["addr"].as_str().expect("addr").to_owned();
            }
        };
        // Keep reading the log, so that the node never blocks on a full pipe, and keep it.
        let log = Arc::new(Mutex::new(seen));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(mut log) = sink.lock() {
                    log.push(line);
                }
            }
        });
        Self {
            child,
            url: format!("http://{addr}"),
            log,
        }
    }

    /// Every log line so far.
    fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// `kill -9` of this node's process.
    fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tokens `init` printed, and an HTTP client.
struct Api {
    http: reqwest::Client,
    admin: String,
    os: String,
    executor: String,
}

type Answer = (StatusCode, Vec<u8>);

fn json_of(answer: &Answer) -> Value {
    serde_json::from_slice(&answer.1).unwrap_or(Value::Null)
}

fn describe(answer: &Answer) -> String {
    format!("{} {}", answer.0, String::from_utf8_lossy(&answer.1))
}

impl Api {
    async fn call(
        &self,
        node: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> reqwest::Result<Answer> {
        let mut req = self.http.request(method, format!("{node}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        Ok((status, resp.bytes().await?.to_vec()))
    }

    async fn kms(&self, node: &str, body: &Value) -> reqwest::Result<Answer> {
        self.call(
            node,
            Method::POST,
            "/v1/kms/requests",
            Some(&self.os),
            Some(body),
        )
        .await
    }

    async fn redeem(&self, node: &str, handle: &str) -> Answer {
        let body = json!({"tenant_id": TENANT, "secret_handle": handle});
        self.call(
            node,
            Method::POST,
            "/v1/material/redeem",
            Some(&self.executor),
            Some(&body),
        )
        .await
        .expect("redeem sent")
    }

    /// A dry run, then its commit with the plan's `simulation_id`, retried with a fresh dry run
    /// (and fresh keys) while the plan goes stale under concurrent commits. Returns the commit
    /// request as sent and its answer; `Err` only when the node cannot be reached.
    async fn plan_and_commit(
        &self,
        node: &str,
        req: &Value,
        id: &str,
    ) -> reqwest::Result<(Value, Answer)> {
        for attempt in 0.. {
            let key = format!("{id}-{attempt}");
            let mut dry = req.clone();
            dry["dry_run"] = json!(true);
            dry["idempotency_key"] = json!(format!("{key}-plan"));
            let plan = self.kms(node, &dry).await?;
            assert_eq!(plan.0, StatusCode::OK, "dry run: {}", describe(&plan));
            let mut commit = req.clone();
            commit["idempotency_key"] = json!(key);
            commit["simulation_id"] = json_of(&plan)["simulation_id"].clone();
            let done = self.kms(node, &commit).await?;
            if done.0 == StatusCode::CONFLICT
                && json_of(&done)["reason_code"] == "KMS_SIMULATION_STALE"
            {
                continue;
            }
            return Ok((commit, done));
        }
        unreachable!("the loop only ends by returning")
    }

    /// One rotation of the secret through `node`; its `rotated_version`.
    async fn rotate(&self, node: &str, id: &str) -> reqwest::Result<u64> {
        let (_, done) = self
            .plan_and_commit(node, &request("ROTATE", true), id)
            .await?;
        assert_eq!(done.0, StatusCode::OK, "rotation: {}", describe(&done));
        Ok(json_of(&done)["rotated_version"]
            .as_u64()
            .expect("rotated_version"))
    }

    /// Every version number of the secret, as the admin listing shows them.
    async fn versions(&self, node: &str) -> Vec<u64> {
        let path = format!("/v1/admin/tenants/{TENANT}/secrets");
        let answer = self
            .call(node, Method::GET, &path, Some(&self.admin), None)
            .await
            .expect("listing");
        assert_eq!(answer.0, StatusCode::OK, "{}", describe(&answer));
        json_of(&answer)["secrets"][0]["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| v["version"].as_u64().expect("version"))
            .collect()
    }

    /// Exports the tenant's chain through `node` and verifies it with the public key alone.
    async fn verify_audit(&self, node: &str) -> u64 {
        let key = self
            .call(node, Method::GET, "/v1/audit/public-key", None, None)
            .await
            .expect("public key");
        let public = selene_kms_core::audit::parse_public_key(
            json_of(&key)["audit_public_key"].as_str().expect("key"),
        )
        .expect("public key parses");
        let export = self
            .call(
                node,
                Method::GET,
                &format!("/v1/audit/export?tenant_id={TENANT}"),
                Some(&self.admin),
                None,
            )
            .await
            .expect("export");
        assert_eq!(export.0, StatusCode::OK);
        let text = String::from_utf8(export.1).expect("UTF-8");
        selene_kms_core::audit::verify_export(&text, &public)
            .unwrap_or_else(|e| panic!("the audit chain does not verify: {e}"))
            .records
    }
}

fn request(op: &str, admin: bool) -> Value {
    let (engine, user) = if admin {
        ("PH1.OS", "u-admin")
    } else {
        ("PH1.CONNECTOR", "u-42")
    };
    json!({
        "correlation_id": "c-1", "turn_id": "t-1", "idempotency_key": "unset",
        "tenant_id": TENANT, "operation": op, "secret_name": SECRET,
        "requester_engine_id": engine, "requester_user_id": user
    })
}

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
        let token = |role: &str| out["tokens"][role].as_str().expect("token").to_owned();
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
        let api = Arc::new(Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
            admin: token("admin"),
            os: token("os"),
            executor: token("executor"),
        });
        let nodes = [
            Node::start(data.path(), &store),
            Node::start(data.path(), &store),
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
        let policy = json!({
            "rules": [
                {"secret_names": ["payments/*"], "engines": ["PH1.CONNECTOR"], "operations": ["GET_HANDLE"]},
                {"secret_names": ["*"], "engines": ["PH1.OS"], "operations": ["ROTATE", "REVOKE"]}
            ],
            "admins": ["u-admin"]
        });
        let path = format!("/v1/admin/tenants/{TENANT}/policy");
        let a = self
            .api
            .call(
                &self.url(0),
                Method::PUT,
                &path,
                Some(&self.api.admin),
                Some(&policy),
            )
            .await
            .expect("policy");
        assert_eq!(a.0, StatusCode::OK, "{}", describe(&a));
        let path = format!("/v1/admin/tenants/{TENANT}/secrets");
        let body = json!({"secret_name": SECRET});
        let a = self
            .api
            .call(
                &self.url(1),
                Method::POST,
                &path,
                Some(&self.api.admin),
                Some(&body),
            )
            .await
            .expect("secret");
        assert_eq!(a.0, StatusCode::CREATED, "{}", describe(&a));
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
    let mut revoke = request("REVOKE", true);
    revoke["revoke_target"] = json!({"secret_handle": handle});
    let (_, revoked) = d
        .api
        .plan_and_commit(&a, &revoke, "revoke")
        .await
        .expect("sent");
    assert_eq!(revoked.0, StatusCode::OK, "{}", describe(&revoked));
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
    let mut d = Deployment::start().await;
    let (a, b) = (d.url(0), d.url(1));
    let stop_at = Instant::now() + Duration::from_millis(2500);
    let mut workers = Vec::new();
    for w in 0..8 {
        let api = d.api.clone();
        let node = if w % 2 == 0 { a.clone() } else { b.clone() };
        workers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                if Instant::now() > stop_at {
                    break;
                }
                match api.rotate(&node, &format!("load-{w}-{i}")).await {
                    Ok(v) => acked.push((v, Instant::now())),
                    // The node is gone: what it acknowledged is all it acknowledged.
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let killed_at = Instant::now();
    d.nodes[0].kill();
    let mut acked = Vec::new();
    for w in workers {
        acked.extend(w.await.expect("worker"));
    }
    let after_kill = acked.iter().filter(|(_, at)| *at > killed_at).count();
    assert!(after_kill > 0, "the surviving node kept serving");
    let versions = d.api.versions(&b).await;
    let current = *versions.last().expect("versions");
    assert_eq!(versions, (1..=current).collect::<Vec<_>>(), "no gaps");
    let mut acked: Vec<u64> = acked.into_iter().map(|(v, _)| v).collect();
    acked.sort_unstable();
    let total = acked.len();
    acked.dedup();
    assert_eq!(acked.len(), total, "no version acknowledged twice");
    assert!(
        acked.len() > 10,
        "too few rotations acknowledged: {}",
        acked.len()
    );
    for v in &acked {
        assert!(versions.contains(v), "acknowledged version {v} lost");
    }
    // The survivor still rotates, and the chain (with records from the dead node) verifies.
    let next = d
        .api
        .rotate(&b, "after-kill")
        .await
        .expect("survivor reachable");
    assert_eq!(next, current + 1);
    assert!(d.api.verify_audit(&b).await > 2 * total as u64);
}
