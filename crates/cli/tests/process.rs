//! What the serving process guards about itself, and what `init` does on a store from before
//! principals.

mod common;

use common::{Node, selene_kms};

/// `selene-kms init --json` on `dir`.
fn init(dir: &std::path::Path) -> std::process::Output {
    selene_kms()
        .args(["init", "--json", "--data-dir"])
        .arg(dir)
        .output()
        .expect("init runs")
}

/// What a successful `init --json` on `dir` printed.
fn init_ok(dir: &std::path::Path) -> serde_json::Value {
    let out = init(dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// An initialised embedded store in a fresh directory, and what `init --json` printed.
fn initialised() -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let printed = init_ok(dir.path());
    (dir, printed)
}

/// The "Max core file size" line of a process's limits.
fn core_limit(pid: &str) -> Option<String> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(target_os = "linux")]
#[test]
fn a_serving_process_dumps_no_core_unless_allowed() {
    let (dir, _) = initialised();
    let guarded = Node::start(dir.path(), None);
    let pid = guarded.child.id().to_string();
    // An undumpable process's /proc files belong to root: when the test runs as another user,
    // that they cannot be read is the proof.
    match core_limit(&pid) {
        Some(line) => assert_eq!(line, "Max core file size 0 0 bytes"),
        None => assert!(
            std::fs::metadata(format!("/proc/{pid}/limits")).is_ok(),
            "the process serves"
        ),
    }
    drop(guarded);
    let allowed = Node::start_with(dir.path(), None, &["--allow-core-dumps"]);
    assert_eq!(
        core_limit(&allowed.child.id().to_string()),
        core_limit("self"),
        "the inherited limit is kept"
    );
}

#[test]
fn init_gives_a_store_without_principals_its_bootstrap_principals_once() {
    let (dir, _) = initialised();
    // A store from before principals: its unkeyed tokens were dropped by the migration, so it
    // has no principal at all.
    let conn = rusqlite::Connection::open(dir.path().join("kms.db")).expect("opens");
    conn.execute_batch("DELETE FROM principal_tokens; DELETE FROM principals;")
        .expect("emptied");
    drop(conn);
    // A pinned key that is not the store's is refused, never kept.
    let pinned = dir.path().join("audit-public-key");
    let genuine = std::fs::read_to_string(&pinned).expect("pinned at init");
    std::fs::write(&pinned, format!("{}\n", "ab".repeat(32))).expect("planted");
    let planted = init(dir.path());
    assert!(!planted.status.success());
    assert!(
        String::from_utf8_lossy(&planted.stderr).contains("does not hold this store's audit key")
    );
    std::fs::write(&pinned, &genuine).expect("restored");
    let out = init_ok(dir.path());
    for role in ["admin", "os", "executor"] {
        assert!(
            out["tokens"][role]
                .as_str()
                .is_some_and(|t| t.starts_with("skms_"))
        );
        assert!(
            out["principals"][role]
                .as_str()
                .is_some_and(|p| p.starts_with("kp_"))
        );
    }
    let again = init(dir.path());
    assert!(
        !again.status.success(),
        "a store with principals is refused"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already initialised"));
}

/// `selene-kms audit verify` against a node, with these extra arguments.
fn verify(node: &Node, admin: &str, args: &[&str]) -> std::process::Output {
    selene_kms()
        .args(["audit", "verify"])
        .args(args)
        .env("SELENE_KMS_URL", &node.url)
        .env("SELENE_KMS_ADMIN_TOKEN", admin)
        .env_remove("SELENE_KMS_AUDIT_PUBLIC_KEY")
        .output()
        .expect("verify runs")
}

#[test]
fn audit_verify_trusts_the_pinned_key_never_the_servers() {
    let (dir, init) = initialised();
    let pinned = dir.path().join("audit-public-key");
    let written = std::fs::read_to_string(&pinned).expect("init pins the key");
    assert_eq!(
        written.trim(),
        init["audit_public_key"].as_str().expect("printed")
    );
    let admin = init["tokens"]["admin"].as_str().expect("token").to_owned();
    let node = Node::start(dir.path(), None);

    let unpinned = verify(&node, &admin, &[]);
    assert!(!unpinned.status.success(), "no key, no verification");
    assert!(String::from_utf8_lossy(&unpinned.stderr).contains("--public-key-file"));

    let path = pinned.to_str().expect("utf-8 path");
    let ok = verify(&node, &admin, &["--public-key-file", path]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    // The key of another store: its checkpoints do not verify (the system chain holds the
    // bootstrap principals' records).
    let (other, _) = initialised();
    let other_key = std::fs::read_to_string(other.path().join("audit-public-key")).expect("key");
    let wrong = verify(&node, &admin, &["--public-key", other_key.trim()]);
    assert_eq!(
        wrong.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&wrong.stdout)
    );
}

/// The command line as a client of `node` with `admin` as the admin token.
fn client(node: &Node, admin: &str, args: &[&str]) -> std::process::Output {
    selene_kms()
        .arg("--json")
        .args(args)
        .env("SELENE_KMS_URL", &node.url)
        .env("SELENE_KMS_ADMIN_TOKEN", admin)
        .output()
        .expect("the command runs")
}

#[test]
fn the_root_key_holder_recovers_an_admin_when_none_is_left() {
    let (dir, init) = initialised();
    let admin = init["tokens"]["admin"].as_str().expect("token").to_owned();
    let admin_id = init["principals"]["admin"].as_str().expect("id").to_owned();
    let node = Node::start(dir.path(), None);
    // The last admin's last token revoked: nobody can administer the store any more.
    let listed: serde_json::Value =
        serde_json::from_slice(&client(&node, &admin, &["principal", "list"]).stdout)
            .expect("json");
    let token_id = listed["principals"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["principal_id"] == admin_id.as_str())
        .and_then(|p| p["tokens"][0]["token_id"].as_str())
        .expect("the admin's token")
        .to_owned();
    let revoked = client(
        &node,
        &admin,
        &["principal", "token", "revoke", &admin_id, &token_id],
    );
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    assert!(!client(&node, &admin, &["whoami"]).status.success());
    drop(node);

    let recovered = selene_kms()
        .args([
            "--json",
            "principal",
            "recover",
            "ops-recovery",
            "--data-dir",
        ])
        .arg(dir.path())
        .output();
    let recovered = common::json_output(recovered, "recover");
    let token = recovered["token"]
        .as_str()
        .expect("a token, shown once")
        .to_owned();
    let node = Node::start(dir.path(), None);
    let me = client(&node, &token, &["whoami"]);
    assert!(
        me.status.success(),
        "{}",
        String::from_utf8_lossy(&me.stderr)
    );
    let me: serde_json::Value = serde_json::from_slice(&me.stdout).expect("json");
    assert_eq!(me["role"], "admin");
    assert_eq!(me["tenants"], serde_json::json!(["*"]));
    assert_eq!(me["name"], "ops-recovery");
}

/// The embedded store's files in `dir` (database, WAL, shared memory).
fn store_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kms.db"))
        })
        .collect()
}

fn offline_verify(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    selene_kms()
        .args(["--json", "audit", "verify", "--data-dir"])
        .arg(data)
        .args(args)
        .output()
        .expect("verify runs")
}

#[test]
#[cfg(target_os = "linux")]
fn a_witness_reveals_a_store_rolled_back_to_an_earlier_signed_state() {
    let (dir, init) = initialised();
    let admin = init["tokens"]["admin"].as_str().expect("token").to_owned();
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let witness = elsewhere.path().join("witness.jsonl");
    let witness_arg = witness.to_str().expect("utf-8 path");
    let serve = ["--witness-file", witness_arg];

    // A node that serves with the witness, creates a principal and stops cleanly.
    let serve_once = |principal: &str| {
        let mut node = Node::start_with(dir.path(), None, &serve);
        let created = client(
            &node,
            &admin,
            &[
                "principal",
                "create",
                principal,
                "--role",
                "executor",
                "--tenant",
                "acme",
            ],
        );
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
        assert!(node.stop(), "a clean stop");
    };
    serve_once("ci-1");
    let witnessed = std::fs::read_to_string(&witness).expect("the witness file");
    assert!(
        witnessed.lines().count() >= 2,
        "a manifest at start and one at the clean stop:\n{witnessed}"
    );

    // The operator's backup; then the store moves on.
    let backup = tempfile::tempdir().expect("tempdir");
    for file in store_files(dir.path()) {
        std::fs::copy(&file, backup.path().join(file.file_name().expect("name"))).expect("copy");
    }
    serve_once("ci-2");
    let ok = offline_verify(dir.path(), &["--witness-file", witness_arg]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    // Whoever can write the files puts the backup back: a store consistent in itself, signed
    // by its own manifests, but behind what the witness saw.
    for file in store_files(dir.path()) {
        std::fs::remove_file(file).expect("remove");
    }
    for file in store_files(backup.path()) {
        std::fs::copy(&file, dir.path().join(file.file_name().expect("name"))).expect("restore");
    }
    let alone = offline_verify(dir.path(), &[]);
    assert!(
        alone.status.success(),
        "{}",
        String::from_utf8_lossy(&alone.stdout)
    );
    let revealed = offline_verify(dir.path(), &["--witness-file", witness_arg]);
    assert_eq!(revealed.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&revealed.stdout).expect("json");
    let system = report["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .find(|t| t["tenant_id"] == "_system")
        .expect("the system chain");
    assert!(
        system["broken"]
            .as_str()
            .is_some_and(|b| b.contains("gone")),
        "{report}"
    );
}

#[test]
fn init_seals_the_records_of_a_store_from_before_record_macs_once() {
    let (dir, _) = initialised();
    // A store as an earlier build left it: records without MACs, and no manifest.
    let conn = rusqlite::Connection::open(dir.path().join("kms.db")).expect("opens");
    conn.execute_batch(
        "UPDATE audit SET record = json_remove(record, '$.mac'); DELETE FROM manifests;",
    )
    .expect("made old");
    drop(conn);
    // An earlier build did not mark its data directory either.
    std::fs::remove_file(dir.path().join("records-carry-macs")).expect("unmarked");
    let before = offline_verify(dir.path(), &[]);
    assert_eq!(
        before.status.code(),
        Some(1),
        "records without MACs are not the KMS's"
    );

    let out = init_ok(dir.path());
    assert_eq!(
        out["sealed_records"], 3,
        "the bootstrap principals' records"
    );
    assert!(
        out["tokens"]
            .as_object()
            .is_some_and(serde_json::Map::is_empty),
        "{out}"
    );
    let after = offline_verify(dir.path(), &[]);
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stdout)
    );

    // Once the store has a manifest, records are never sealed again: one stripped of its MAC
    // stays unauthenticated, and `init` refuses.
    let conn = rusqlite::Connection::open(dir.path().join("kms.db")).expect("opens");
    conn.execute(
        "UPDATE audit SET record = json_remove(record, '$.mac') WHERE seq = 3",
        [],
    )
    .expect("stripped");
    drop(conn);
    let again = init(dir.path());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already initialised"));
    assert_eq!(offline_verify(dir.path(), &[]).status.code(), Some(1));
    // Nor when the manifests are removed too: the data directory remembers that its KMS wrote
    // MACs, and without that mark the other records' MACs show it.
    let conn = rusqlite::Connection::open(dir.path().join("kms.db")).expect("opens");
    conn.execute("DELETE FROM manifests", []).expect("removed");
    drop(conn);
    for (refusal, then_unmark) in [("has held this store", true), ("carry MACs", false)] {
        let again = init(dir.path());
        assert!(!again.status.success());
        assert!(
            String::from_utf8_lossy(&again.stderr).contains(refusal),
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
        if then_unmark {
            std::fs::remove_file(dir.path().join("records-carry-macs")).expect("unmarked");
        }
    }
    assert_eq!(offline_verify(dir.path(), &[]).status.code(), Some(1));
}

/// The command line as a client of `node` with the tokens `init` printed.
fn as_client(node: &Node, init: &serde_json::Value, args: &[&str]) -> std::process::Output {
    selene_kms()
        .args(args)
        .env("SELENE_KMS_URL", &node.url)
        .env(
            "SELENE_KMS_ADMIN_TOKEN",
            init["tokens"]["admin"].as_str().expect("admin"),
        )
        .env(
            "SELENE_KMS_OS_TOKEN",
            init["tokens"]["os"].as_str().expect("os"),
        )
        .output()
        .expect("the command runs")
}

fn json_out(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "not JSON: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn replay_and_policy_impact_from_the_command_line() {
    let (dir, init) = initialised();
    let files = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, value: serde_json::Value| {
        let path = files.path().join(name);
        std::fs::write(&path, value.to_string()).expect("write");
        path.to_str().expect("utf-8").to_owned()
    };
    let policy = write(
        "policy.json",
        serde_json::json!({"rules": [{"secret_names": ["payments/*"], "engines": ["PH1.CONNECTOR"], "operations": ["GET_HANDLE"]}]}),
    );
    let candidate = write("candidate.json", serde_json::json!({"rules": []}));
    let request = write("request.json", common::request("GET_HANDLE", false));
    let mut node = Node::start(dir.path(), None);
    assert!(
        as_client(&node, &init, &["policy", "set", "acme", &policy])
            .status
            .success()
    );
    let created = as_client(&node, &init, &["secret", "create", "acme", common::SECRET]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(
        as_client(&node, &init, &["request", &request])
            .status
            .success()
    );

    // The impact, from `simulate` and from `set --dry-run` alike; nothing applied.
    let simulated = json_out(&as_client(
        &node,
        &init,
        &["--json", "policy", "simulate", "acme", &candidate],
    ));
    assert_eq!(simulated["evaluated"], serde_json::json!(1), "{simulated}");
    assert_eq!(simulated["allow_to_deny"], serde_json::json!(1));
    let dry = json_out(&as_client(
        &node,
        &init,
        &["--json", "policy", "set", "acme", &candidate, "--dry-run"],
    ));
    assert_eq!(dry, simulated);
    let text = as_client(&node, &init, &["policy", "simulate", "acme", &candidate]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("1 allowed would be denied"), "{text}");
    assert!(text.contains("payments/stripe"), "{text}");
    let stored = json_out(&as_client(&node, &init, &["policy", "get", "acme"]));
    assert_eq!(
        stored["rules"].as_array().map(Vec::len),
        Some(1),
        "nothing applied"
    );

    // Replay through the server, then offline on the stopped store.
    let replayed = json_out(&as_client(
        &node,
        &init,
        &["--json", "audit", "replay", "--tenant", "acme"],
    ));
    assert_eq!(replayed["decisions"], serde_json::json!(1), "{replayed}");
    assert_eq!(replayed["differ"], serde_json::json!(0));
    let text = as_client(&node, &init, &["audit", "replay", "--tenant", "acme"]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("1 matched, 0 differ"));
    assert!(node.stop(), "a clean stop");
    let offline = selene_kms()
        .args([
            "--json",
            "audit",
            "replay",
            "--tenant",
            "acme",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("replay runs");
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    let offline = json_out(&offline);
    assert_eq!(offline["matched"], serde_json::json!(1), "{offline}");
    assert_eq!(offline["records"], replayed["records"]);
    let unknown = selene_kms()
        .args(["audit", "replay", "--tenant", "nobody", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("replay runs");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no audit chain"));

    // A record rewritten in the stopped store: named, and the command fails.
    let db = rusqlite::Connection::open(dir.path().join("kms.db")).expect("database");
    db.execute(
        "UPDATE audit SET record = replace(record, '\"c-1\"', '\"c-2\"') WHERE tenant_id = 'acme'",
        [],
    )
    .expect("rewrite");
    drop(db);
    let tampered = selene_kms()
        .args(["audit", "replay", "--tenant", "acme", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("replay runs");
    assert_eq!(tampered.status.code(), Some(1));
    let text = String::from_utf8_lossy(&tampered.stdout);
    assert!(text.contains("The chain does not hold: record"), "{text}");
}
