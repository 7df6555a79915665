//! What the serving process guards about itself, and what `init` does on a store from before
//! principals.

mod common;

use common::{Node, selene_kms};

/// An initialised embedded store in a fresh directory.
fn initialised() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = selene_kms()
        .args(["init", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("init runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
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
    let dir = initialised();
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
    let dir = initialised();
    // A store from before principals: its unkeyed tokens were dropped by the migration, so it
    // has no principal at all.
    let conn = rusqlite::Connection::open(dir.path().join("kms.db")).expect("opens");
    conn.execute_batch("DELETE FROM principal_tokens; DELETE FROM principals;")
        .expect("emptied");
    drop(conn);
    let upgrade = selene_kms()
        .args(["init", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("init runs");
    assert!(
        upgrade.status.success(),
        "{}",
        String::from_utf8_lossy(&upgrade.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&upgrade.stdout).expect("json");
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
    let again = selene_kms()
        .args(["init", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("init runs");
    assert!(
        !again.status.success(),
        "a store with principals is refused"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already initialised"));
}
