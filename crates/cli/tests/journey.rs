//! The command line as a user meets it against a running server: staging, a dry-run rotation,
//! redemption, revocation of one handle, the served public key, completions; refusals with
//! their exit code, their diagnostics in text and `{"error"}` in JSON; a closed pipe.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};

use common::{Api, Node, TENANT, selene_kms};
use serde_json::{Value, json};

const IMPORTED: &str = "payments/imported";

/// The command line as a client of `node` with the tokens `init` printed.
struct Cli<'a> {
    node: &'a Node,
    init: &'a Value,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the command runs")
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let token = |role: &str| {
            self.init["tokens"][role]
                .as_str()
                .expect("token")
                .to_owned()
        };
        let mut command = selene_kms();
        command
            .args(args)
            .env("SELENE_KMS_URL", &self.node.url)
            .env("SELENE_KMS_ADMIN_TOKEN", token("admin"))
            .env("SELENE_KMS_OS_TOKEN", token("os"))
            .env("SELENE_KMS_EXECUTOR_TOKEN", token("executor"));
        command
    }

    /// `args` with `--json`, which must succeed; what it printed.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(&[args, &["--json"]].concat());
        assert!(
            out.status.success(),
            "{args:?}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON on stdout")
    }
}

/// A store made by `init`, served, with the tenant's policy and a secret: its directory, what
/// `init` printed, and the node.
async fn provisioned() -> (tempfile::TempDir, Value, Node) {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("kms");
    let init = common::init(&data);
    let node = Node::start(&data, None);
    Api::from_init(&init).provision(&node.url, &node.url).await;
    (dir, init, node)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path.to_str().expect("UTF-8").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_journey() {
    let (dir, init, node) = provisioned().await;
    let cli = Cli {
        node: &node,
        init: &init,
    };
    let files = dir.path();

    // An imported secret, its next version staged, rotated after a dry run that commits nothing.
    let first = write(files, "first", b"first-material");
    cli.json(&[
        "secret",
        "create",
        TENANT,
        IMPORTED,
        "--material-file",
        &first,
    ]);
    let next = write(files, "next", b"the-next-material");
    let staged = cli.json(&[
        "secret",
        "stage",
        TENANT,
        IMPORTED,
        "--material-file",
        &next,
    ]);
    assert_eq!(staged["staged"], json!(true), "{staged}");
    let rotate = ["secret", "rotate", TENANT, IMPORTED, "--user", "u-admin"];
    let plan = cli.json(&[&rotate[..], &["--dry-run"]].concat());
    assert!(plan["simulation_id"].is_string(), "{plan}");
    let listed = cli.json(&["secret", "list", TENANT]);
    let current = |listed: &Value| {
        listed["secrets"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["secret_name"] == IMPORTED))
            .map(|s| s["current_version"].clone())
    };
    assert_eq!(
        current(&listed),
        Some(json!(1)),
        "a dry run commits nothing"
    );
    let rotated = cli.json(&rotate);
    assert_eq!(rotated["rotated_version"], json!(2), "{rotated}");

    // A handle to it, redeemed by the executor for the staged material, to stdout or a file.
    let mut request = common::request("GET_HANDLE", false);
    request["secret_name"] = json!(IMPORTED);
    request["idempotency_key"] = json!("journey-1");
    let request = write(files, "request.json", request.to_string().as_bytes());
    let bundle = cli.json(&["request", &request]);
    let handle = bundle["secret_handle"].as_str().expect("handle").to_owned();
    let redeemed = cli.run(&["redeem", TENANT, &handle]);
    assert!(redeemed.status.success());
    assert_eq!(redeemed.stdout, b"the-next-material");
    let into = files.join("material");
    let redeemed = cli.run(&[
        "redeem",
        TENANT,
        &handle,
        "--out",
        into.to_str().expect("utf-8"),
    ]);
    assert!(redeemed.status.success());
    assert!(
        redeemed.stdout.is_empty(),
        "the value goes to the file only"
    );
    assert_eq!(std::fs::read(&into).expect("file"), b"the-next-material");
    let taken = cli.run(&[
        "redeem",
        TENANT,
        &handle,
        "--out",
        into.to_str().expect("utf-8"),
    ]);
    assert_eq!(taken.status.code(), Some(2), "a file is never overwritten");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&into).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // That one handle revoked: its redemption is refused, exit 1, with the reason.
    // The ref from stdin, out of the process list.
    let mut revoking = cli
        .command(&[
            "secret", "revoke", TENANT, IMPORTED, "--handle", "-", "--user", "u-admin", "--json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawns");
    std::io::Write::write_all(
        &mut revoking.stdin.take().expect("stdin"),
        handle.as_bytes(),
    )
    .expect("the ref");
    let revoked = revoking.wait_with_output().expect("runs");
    assert!(revoked.status.success());
    let revoked: Value = serde_json::from_slice(&revoked.stdout).expect("JSON");
    assert_eq!(revoked["validation_status"], json!("OK"), "{revoked}");
    let refused = cli.run(&["redeem", TENANT, &handle, "--json"]);
    assert_eq!(refused.status.code(), Some(1));
    let failure: Value = serde_json::from_slice(&refused.stdout).expect("JSON failure");
    let code = failure["error"]["reason_code"]
        .as_str()
        .expect("a reason code");
    assert!(code.starts_with("KMS_"), "{failure}");
    assert!(!String::from_utf8_lossy(&refused.stdout).contains(&handle));

    // A refusal in text mode says why: the reason code and the diagnostics.
    let refused = cli.run(&[
        "secret",
        "rotate",
        TENANT,
        IMPORTED,
        "--engine",
        "PH1.CONNECTOR",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("KMS_NOT_AUTHORIZED (403): "), "{said}");

    // The served key, completions.
    let key = cli.json(&["audit", "public-key"]);
    assert_eq!(key["audit_public_key"], init["audit_public_key"]);
    let bash = cli.run(&["completions", "bash"]);
    assert!(bash.status.success());
    assert!(String::from_utf8_lossy(&bash.stdout).contains("selene-kms"));

    // Every client command speaks JSON with --json, its failures too.
    let key = init["audit_public_key"].as_str().expect("key");
    let policy = write(files, "policy.json", br#"{"rules": []}"#);
    for args in [
        &["whoami", "--role", "admin"][..],
        &["whoami", "--role", "os"],
        &["secret", "list", TENANT],
        &["policy", "get", TENANT],
        &["policy", "simulate", TENANT, &policy],
        &["policy", "set", TENANT, &policy, "--dry-run"],
        &["principal", "list"],
        &["audit", "tail", "--tenant", TENANT],
        &["audit", "verify", "--public-key", key],
        &["audit", "replay", "--tenant", TENANT],
    ] {
        let printed = cli.json(args);
        assert!(printed.is_object(), "{args:?}: {printed}");
    }
    let unknown = cli.run(&["policy", "get", "no-such-tenant", "--json"]);
    assert_eq!(unknown.status.code(), Some(1));
    let failure: Value = serde_json::from_slice(&unknown.stdout).expect("JSON failure");
    assert!(failure["error"]["reason_code"].is_string(), "{failure}");
    assert!(failure["error"]["message"].is_string(), "{failure}");

    // Output into a pipe nobody reads ends quietly.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let closed = cli
        .command(&["audit", "tail", "--tenant", TENANT])
        .stdout(Stdio::from(writer))
        .output()
        .expect("runs");
    assert_eq!(
        closed.status.code(),
        Some(141),
        "as a shell reports SIGPIPE"
    );
    assert!(
        closed.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
}

/// Keys from the command line: created with a purpose, used through handles from files and
/// stdin, their public keys and terms; a key's handle is never redeemed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_through_the_command_line() {
    let (dir, init, node) = provisioned().await;
    let cli = Cli {
        node: &node,
        init: &init,
    };
    let files = dir.path();
    let handle = |name: &str| {
        cli.json(&[
            "secret",
            "create",
            TENANT,
            name,
            "--purpose",
            match name {
                "payments/enc" => "aes-256-gcm",
                "payments/sig" => "ed25519",
                _ => "hmac-sha256",
            },
        ]);
        let mut request = common::request("GET_HANDLE", false);
        request["secret_name"] = json!(name);
        request["idempotency_key"] = json!(format!("keys-{name}"));
        let request = write(files, "request.json", request.to_string().as_bytes());
        cli.json(&["request", &request])["secret_handle"]
            .as_str()
            .expect("a handle")
            .to_owned()
    };
    let (enc, sig, mac) = (
        handle("payments/enc"),
        handle("payments/sig"),
        handle("payments/mac"),
    );
    let message = write(files, "message", b"card 4111 1111 1111 1111");

    // Encrypt from a file, decrypt to stdout and into an owner-only file.
    let encrypted = cli.run(&[
        "crypto", "encrypt", TENANT, &enc, "--in", &message, "--aad", "o-17",
    ]);
    assert!(
        encrypted.status.success(),
        "{}",
        String::from_utf8_lossy(&encrypted.stderr)
    );
    let ciphertext = String::from_utf8(encrypted.stdout)
        .expect("text")
        .trim()
        .to_owned();
    assert!(ciphertext.starts_with("skc1:1:"), "{ciphertext}");
    let decrypted = cli.run(&[
        "crypto",
        "decrypt",
        TENANT,
        &enc,
        &ciphertext,
        "--aad",
        "o-17",
    ]);
    assert_eq!(decrypted.stdout, b"card 4111 1111 1111 1111");
    let into = files.join("plain");
    let into = into.to_str().expect("utf-8");
    let decrypted = cli.run(&[
        "crypto",
        "decrypt",
        TENANT,
        &enc,
        &ciphertext,
        "--aad",
        "o-17",
        "--out",
        into,
    ]);
    assert!(decrypted.status.success() && decrypted.stdout.is_empty());
    assert_eq!(
        std::fs::read(into).expect("file"),
        b"card 4111 1111 1111 1111"
    );
    let wrong = cli.run(&[
        "crypto",
        "decrypt",
        TENANT,
        &enc,
        &ciphertext,
        "--aad",
        "o-18",
        "--json",
    ]);
    assert_eq!(wrong.status.code(), Some(1));
    let failure: Value = serde_json::from_slice(&wrong.stdout).expect("JSON failure");
    assert_eq!(
        failure["error"]["reason_code"],
        "PH1_KMS_INPUT_SCHEMA_INVALID"
    );

    // Sign the data from stdin; verify: exit 0 when it holds, 1 when it does not.
    let mut signing = cli
        .command(&["crypto", "sign", TENANT, &sig])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawns");
    std::io::Write::write_all(&mut signing.stdin.take().expect("stdin"), b"release 1.2")
        .expect("data");
    let signed = signing.wait_with_output().expect("runs");
    assert!(signed.status.success());
    let signature = String::from_utf8(signed.stdout)
        .expect("text")
        .trim()
        .to_owned();
    let release = write(files, "release", b"release 1.2");
    let holds = cli.run(&[
        "crypto",
        "verify",
        TENANT,
        &sig,
        "--in",
        &release,
        "--signature",
        &signature,
    ]);
    assert_eq!(
        holds.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&holds.stdout)
    );
    let other = write(files, "other", b"release 1.3");
    let fails = cli.run(&[
        "crypto",
        "verify",
        TENANT,
        &sig,
        "--in",
        &other,
        "--signature",
        &signature,
    ]);
    assert_eq!(fails.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&fails.stdout).starts_with("invalid"));
    let keys = cli.json(&["secret", "public-key", TENANT, "payments/sig"]);
    assert_eq!(keys["versions"][0]["version"], 1, "{keys}");

    // A MAC and its check; a key's terms; a key's handle is never redeemed.
    let tag = cli.json(&["crypto", "mac", TENANT, &mac, "--in", &message]);
    let tag = tag["mac_b64"].as_str().expect("a tag").to_owned();
    let checked = cli.run(&[
        "crypto", "verify", TENANT, &mac, "--in", &message, "--mac", &tag,
    ]);
    assert_eq!(checked.status.code(), Some(0));
    let updated = cli.json(&[
        "secret",
        "update",
        TENANT,
        "payments/enc",
        "--min-decryption-version",
        "1",
    ]);
    assert_eq!(updated["min_decryption_version"], 1);
    let refused = cli.run(&["redeem", TENANT, &mac, "--json"]);
    assert_eq!(refused.status.code(), Some(1));
    let failure: Value = serde_json::from_slice(&refused.stdout).expect("JSON failure");
    assert_eq!(failure["error"]["reason_code"], "KMS_PURPOSE_MISMATCH");
    let listed = cli.run(&["secret", "list", TENANT]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("aes-256-gcm"));
}

/// The node's log lines that say `message`, as JSON, once `count` of them are there.
fn log_lines(node: &Node, message: &str, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lines: Vec<Value> = node
            .log()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["fields"]["message"] == message)
            .collect();
        if lines.len() >= count || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_logs_its_version_and_a_line_per_request() {
    let dir = tempfile::tempdir().expect("dir");
    let out = selene_kms()
        .args(["init", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("init");
    let init: Value = serde_json::from_slice(&out.stdout).expect("init JSON");
    let node = Node::start(dir.path(), None);
    let api = Api::from_init(&init);
    api.provision(&node.url, &node.url).await;
    let mut request = common::request("GET_HANDLE", false);
    request["idempotency_key"] = json!("logged-1");
    let granted = api.kms(&node.url, &request).await.expect("sent");
    let handle = common::json_of(&granted)["secret_handle"]
        .as_str()
        .expect("handle")
        .to_owned();
    let anonymous = api
        .call(
            &node.url,
            reqwest::Method::POST,
            "/v1/kms/requests",
            None,
            Some(&request),
        )
        .await
        .expect("sent");
    assert_eq!(anonymous.0, reqwest::StatusCode::UNAUTHORIZED);

    let started = log_lines(&node, "selene-kms starting", 1);
    assert_eq!(
        started[0]["fields"]["version"],
        json!(env!("CARGO_PKG_VERSION"))
    );
    // The policy, the secret, the grant and the refusal.
    let lines = log_lines(&node, "request", 4);
    let field = |l: &Value, f: &str| l["fields"][f].clone();
    let kms: Vec<&Value> = lines
        .iter()
        .filter(|l| field(l, "route") == "/v1/kms/requests")
        .collect();
    assert_eq!(kms.len(), 2, "{lines:#?}");
    let os = init["principals"]["os"].clone();
    assert_eq!(field(kms[0], "method"), json!("POST"));
    assert_eq!(field(kms[0], "status"), json!(200));
    assert_eq!(
        field(kms[0], "reason_code"),
        json!("PH1_KMS_OK_MATERIAL_ISSUE")
    );
    assert_eq!(field(kms[0], "principal_id"), os);
    assert!(field(kms[0], "duration_ms").as_f64().is_some());
    assert_eq!(field(kms[1], "status"), json!(401));
    assert_eq!(field(kms[1], "reason_code"), json!("KMS_UNAUTHENTICATED"));
    assert_eq!(field(kms[1], "principal_id"), json!("-"));
    let created = lines
        .iter()
        .find(|l| field(l, "status") == json!(201))
        .expect("the secret's creation");
    assert_eq!(
        field(created, "route"),
        json!("/v1/admin/tenants/{tenant_id}/secrets"),
        "the route's template, never the tenant or secret it names"
    );
    // A hang-up does not end a server without TLS: there is nothing to reload.
    let hung_up = std::process::Command::new("kill")
        .args(["-HUP", &node.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(hung_up.success());
    assert_eq!(
        log_lines(&node, "SIGHUP: nothing to reload without TLS", 1).len(),
        1
    );
    let after = api
        .call(&node.url, reqwest::Method::GET, "/healthz", None, None)
        .await
        .expect("still serving");
    assert_eq!(after.0, reqwest::StatusCode::OK);
    let log = node.log().join("\n");
    for never in [
        api.os.as_str(),
        api.admin.as_str(),
        handle.as_str(),
        common::SECRET,
    ] {
        assert!(!log.contains(never), "the log shows {never}");
    }
}
