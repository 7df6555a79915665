//! The command line, run as a user runs it.

use std::process::Command;

fn selene_kms() -> Command {
    Command::new(env!("CARGO_BIN_EXE_selene-kms"))
}

/// Runs `selene-kms ARGS --data-dir DATA` with the root key taken from the data directory.
fn on_data_dir(args: &[&str], data: &std::path::Path) -> std::process::Output {
    selene_kms()
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("SELENE_KMS_ROOT_KEY")
        .output()
        .expect("runs")
}

/// The key file in `data` is readable and writable by its owner alone.
#[cfg(unix)]
fn assert_root_key_is_owner_only(data: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("root.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn quickstart_runs_the_whole_job_and_exits_zero() {
    let out = selene_kms().arg("quickstart").output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quickstart failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "GET_HANDLE by PH1.CONNECTOR",
        "KMS_TTL_OUT_OF_BOUNDS",
        "rotated_version 2",
        "KMS_NOT_AUTHORIZED",
        "KMS_REVOKED",
        "(value not shown)",
        "verified",
    ] {
        assert!(
            stdout.contains(expected),
            "quickstart output lacks {expected:?}:\n{stdout}"
        );
    }
    let json = selene_kms()
        .args(["quickstart", "--json"])
        .output()
        .expect("runs");
    assert!(json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON output");
    assert_eq!(v["ok"], true);
    assert!(v["steps"].as_array().is_some_and(|s| s.len() >= 12));
    assert!(!String::from_utf8_lossy(&json.stdout).contains("material_b64"));
}

#[test]
fn init_prints_tokens_once_and_refuses_a_second_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("kms");
    let out = on_data_dir(&["init", "--json"], &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for role in ["admin", "os", "executor"] {
        assert!(
            v["tokens"][role]
                .as_str()
                .is_some_and(|t| t.starts_with("skms_"))
        );
    }
    #[cfg(unix)]
    assert_root_key_is_owner_only(&data);
    let again = on_data_dir(&["init"], &data);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already initialised"));
    // Offline verification of the (empty) chain works on a stopped store.
    let verify = on_data_dir(&["audit", "verify"], &data);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn every_command_has_help_with_examples() {
    for args in [
        vec!["--help"],
        vec!["init", "--help"],
        vec!["serve", "--help"],
        vec!["quickstart", "--help"],
        vec!["secret", "create", "--help"],
        vec!["secret", "rotate", "--help"],
        vec!["secret", "revoke", "--help"],
        vec!["secret", "list", "--help"],
        vec!["policy", "set", "--help"],
        vec!["policy", "get", "--help"],
        vec!["audit", "verify", "--help"],
        vec!["audit", "export", "--help"],
        vec!["audit", "tail", "--help"],
        vec!["audit", "replay", "--help"],
        vec!["policy", "simulate", "--help"],
        vec!["request", "--help"],
        vec!["root-key", "rotate", "--help"],
    ] {
        let out = selene_kms().args(&args).output().expect("runs");
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let wanted = if args.len() == 1 {
            "Start here"
        } else {
            "Example"
        };
        assert!(
            text.contains(wanted),
            "{args:?} help shows no example:\n{text}"
        );
    }
}

#[test]
fn client_commands_fail_clearly_without_a_server_or_token() {
    let out = selene_kms()
        .args(["secret", "list", "acme", "--url", "http://127.0.0.1:9"])
        .env("SELENE_KMS_ADMIN_TOKEN", "skms_admin_x")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(3), "a server not reached is exit 3");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("cannot reach"), "{said}");
    assert!(said.to_lowercase().contains("connection refused"), "{said}");
    let out = selene_kms()
        .args([
            "secret",
            "list",
            "acme",
            "--json",
            "--url",
            "http://127.0.0.1:9",
        ])
        .env("SELENE_KMS_ADMIN_TOKEN", "skms_admin_x")
        .output()
        .expect("runs");
    let failure: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(failure["error"]["reason_code"], serde_json::Value::Null);
    assert!(
        failure["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot reach"))
    );
    let out = selene_kms()
        .args(["secret", "list", "acme"])
        .env_remove("SELENE_KMS_ADMIN_TOKEN")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "a local error is exit 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no admin token"));
    let usage = selene_kms()
        .args(["secret", "list"])
        .output()
        .expect("runs");
    assert_eq!(usage.status.code(), Some(2), "a usage error is exit 2");
}

#[test]
fn a_data_directory_without_a_store_says_to_run_init() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nothing = dir.path().join("nothing-here");
    let out = selene_kms()
        .args(["serve", "--data-dir"])
        .arg(&nothing)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("is not initialised"), "{said}");
    assert!(said.contains("selene-kms init --data-dir"), "{said}");
}

#[test]
fn root_key_rotation_replaces_the_key_file_and_the_store_still_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("kms");
    let init = on_data_dir(&["init", "--json"], &data);
    assert!(init.status.success());
    let before = std::fs::read(data.join("root.key")).expect("key");
    let out = on_data_dir(&["root-key", "rotate", "--json"], &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = std::fs::read(data.join("root.key")).expect("key");
    assert_ne!(before, after);
    assert!(!data.join("root.key.new").exists());
    #[cfg(unix)]
    assert_root_key_is_owner_only(&data);
    let verify = on_data_dir(&["audit", "verify"], &data);
    assert!(
        verify.status.success(),
        "the store opens with the new key: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // The old key no longer opens it.
    let old = String::from_utf8(before).expect("hex");
    let refused = selene_kms()
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .env("SELENE_KMS_ROOT_KEY", old.trim())
        .output()
        .expect("runs");
    assert!(!refused.status.success());
}
