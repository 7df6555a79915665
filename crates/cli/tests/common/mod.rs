//! `selene-kms serve` processes driven over real HTTP as a client would, and the requests
//! the tests send them.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub(crate) const TENANT: &str = "acme";
pub(crate) const SECRET: &str = "payments/stripe";

pub(crate) fn selene_kms() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_selene-kms"));
    cmd.env_remove("SELENE_KMS_ROOT_KEY")
        .env_remove("SELENE_KMS_STORE")
        .env_remove("SELENE_KMS_CONFIG");
    cmd
}

/// `selene-kms init --json` of a new data directory: what it printed (tokens, principals, the
/// audit public key).
pub(crate) fn init(data_dir: &Path) -> Value {
    let out = selene_kms()
        .args(["init", "--json", "--data-dir"])
        .arg(data_dir)
        .output();
    json_output(out, "init")
}

/// What a command that must succeed printed, as JSON; its standard error when it failed.
pub(crate) fn json_output(out: std::io::Result<std::process::Output>, what: &str) -> Value {
    let out = out.unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"))
}

/// One `selene-kms serve` process; killed when dropped.
pub(crate) struct Node {
    pub(crate) child: Child,
    pub(crate) url: String,
    log: Arc<Mutex<Vec<String>>>,
}

/// `selene-kms serve` on a free loopback port, logging JSON to stderr.
fn serve_command(data_dir: &Path, store: Option<&str>) -> Command {
    let mut serve = selene_kms();
    serve
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(store) = store {
        serve.args(["--store", store]);
    }
    serve
}

/// The address in the log line that says the node serves.
fn serving_addr(line: &str) -> Option<String> {
    let entry: Value = serde_json::from_str(line).ok()?;
    if entry["fields"]["message"] != "selene-kms serving" {
        return None;
    }
    entry["fields"]["addr"].as_str().map(str::to_owned)
}

impl Node {
    /// Starts a node on a free loopback port and waits until it serves.
    /// `store` is a `postgres://` URL, or `None` for the embedded store in `data_dir`.
    pub(crate) fn start(data_dir: &Path, store: Option<&str>) -> Self {
        Self::start_with(data_dir, store, &[])
    }

    /// [`Node::start`] with more arguments to `serve`.
    pub(crate) fn start_with(data_dir: &Path, store: Option<&str>, args: &[&str]) -> Self {
        let mut child = serve_command(data_dir, store)
            .args(args)
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
            let addr = serving_addr(&line);
            seen.push(line);
            if let Some(addr) = addr {
                break addr;
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

    /// Starts a node over the embedded store that logs into the file `log` (the operator's
    /// choice that shares a disk's faults with the store), and waits until it serves.
    pub(crate) fn start_logging_to_file(data_dir: &Path, log: &Path) -> Self {
        let file = std::fs::File::create(log).expect("log file");
        let mut child = serve_command(data_dir, None)
            .stderr(file)
            .spawn()
            .expect("serve starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(serving_addr) {
                break addr;
            }
            if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                panic!("serve did not start serving:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            url: format!("http://{addr}"),
            log: Arc::default(),
        }
    }

    /// Every log line so far (none for a node logging to a file).
    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Stops this node as an operator does (SIGTERM) and waits for it to exit; `true` when it
    /// exited cleanly.
    #[cfg(target_os = "linux")]
    pub(crate) fn stop(&mut self) -> bool {
        use rustix::process::{Pid, Signal, kill_process};
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(Pid::from_raw)
            .expect("a child's pid");
        kill_process(pid, Signal::TERM).expect("SIGTERM");
        self.child.wait().expect("reaped").success()
    }

    /// `kill -9` of this node's process.
    pub(crate) fn kill(&mut self) {
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
pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) admin: String,
    pub(crate) os: String,
    pub(crate) executor: String,
    /// The audit public key `init` pinned: what exports are verified with.
    pub(crate) audit_public_key: String,
}

pub(crate) type Answer = (StatusCode, Vec<u8>);

pub(crate) fn json_of(answer: &Answer) -> Value {
    serde_json::from_slice(&answer.1).unwrap_or(Value::Null)
}

pub(crate) fn describe(answer: &Answer) -> String {
    format!("{} {}", answer.0, String::from_utf8_lossy(&answer.1))
}

impl Api {
    /// A client holding the tokens `init --json` printed.
    pub(crate) fn from_init(init: &Value) -> Self {
        let token = |role: &str| init["tokens"][role].as_str().expect("token").to_owned();
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
            admin: token("admin"),
            os: token("os"),
            executor: token("executor"),
            audit_public_key: init["audit_public_key"]
                .as_str()
                .expect("init prints the audit public key")
                .to_owned(),
        }
    }

    /// The tenant's policy through `policy_node`, its secret through `secret_node`.
    pub(crate) async fn provision(&self, policy_node: &str, secret_node: &str) {
        self.provision_policy(policy_node).await;
        let path = format!("/v1/admin/tenants/{TENANT}/secrets");
        let body = json!({"secret_name": SECRET});
        let a = self
            .call(
                secret_node,
                Method::POST,
                &path,
                Some(&self.admin),
                Some(&body),
            )
            .await
            .expect("secret");
        assert_eq!(a.0, StatusCode::CREATED, "{}", describe(&a));
    }

    /// The tenant's policy (connectors get handles, the OS rotates and revokes) through `node`.
    pub(crate) async fn provision_policy(&self, node: &str) {
        let policy = json!({
            "rules": [
                {"secret_names": ["payments/*"], "engines": ["PH1.CONNECTOR"], "operations": ["GET_HANDLE"]},
                {"secret_names": ["*"], "engines": ["PH1.OS"], "operations": ["ROTATE", "REVOKE"]}
            ],
            "admins": ["u-admin"]
        });
        let path = format!("/v1/admin/tenants/{TENANT}/policy");
        let a = self
            .call(node, Method::PUT, &path, Some(&self.admin), Some(&policy))
            .await
            .expect("policy");
        assert_eq!(a.0, StatusCode::OK, "{}", describe(&a));
    }

    pub(crate) async fn call(
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

    pub(crate) async fn kms(&self, node: &str, body: &Value) -> reqwest::Result<Answer> {
        self.call(
            node,
            Method::POST,
            "/v1/kms/requests",
            Some(&self.os),
            Some(body),
        )
        .await
    }

    pub(crate) async fn redeem(&self, node: &str, handle: &str) -> Answer {
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
    pub(crate) async fn plan_and_commit(
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
    pub(crate) async fn rotate(&self, node: &str, id: &str) -> reqwest::Result<u64> {
        let (_, done) = self
            .plan_and_commit(node, &request("ROTATE", true), id)
            .await?;
        assert_eq!(done.0, StatusCode::OK, "rotation: {}", describe(&done));
        Ok(json_of(&done)["rotated_version"]
            .as_u64()
            .expect("rotated_version"))
    }

    /// Every version number of the secret, as the admin listing shows them.
    pub(crate) async fn versions(&self, node: &str) -> Vec<u64> {
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

    /// Exports the tenant's chain through `node` and verifies it with the pinned public key.
    pub(crate) async fn verify_audit(&self, node: &str) -> u64 {
        let public = selene_kms_core::audit::parse_public_key(&self.audit_public_key)
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
        selene_kms_core::export::verify_export(&text, &public, &Default::default())
            .unwrap_or_else(|e| panic!("the audit chain does not verify: {e}"))
            .records
    }
}

pub(crate) fn request(op: &str, admin: bool) -> Value {
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
