//! The admin console in a real headless browser: `ui/tests/console.test.mjs` (playwright-core
//! driving Debian's chromium) against a `selene-kms serve` process holding 1,000 secrets and
//! 100,000 audit records. The browser test signs in, walks every view, rotates through the dry
//! run, shows a policy edit's impact, and checks that no value, handle or credential reaches the
//! page or its storage.
//!
//! It needs node (with `ui/node_modules`, which it installs with `npm ci` when missing) and
//! chromium (`$CHROMIUM`, else `/usr/bin/chromium`); `.ci/run` installs both. With
//! `SELENE_KMS_CONSOLE_SHOTS=DIR` it leaves a screenshot of each view in DIR (the README's are in
//! `docs/console`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{Api, Node, TENANT, describe};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRETS: usize = 1_000;
const RECORDS: usize = 100_000;
/// The value of an imported secret: the browser test finds it nowhere in the page.
const CANARY: &str = "sk_console_CANARY_5d1c9e7a";

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ui")
}

/// `node_modules` of the console, installed from the lockfile when missing.
fn node_modules() {
    let dir = ui_dir();
    if dir.join("node_modules/playwright-core").is_dir() {
        return;
    }
    let installed = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status();
    assert!(
        installed.is_ok_and(|s| s.success()),
        "cannot install the console's node modules: this test needs node and npm"
    );
}

fn chromium() -> String {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&path).is_file(),
        "no chromium at {path}: install Debian's (apt-get install chromium) or set $CHROMIUM"
    );
    path
}

/// 1,000 secrets (one imported with the canary), then 100,000 GET_HANDLE records from 32
/// clients at once.
async fn fill(api: &Arc<Api>, url: &str) {
    let create = |body: Value| {
        let (api, url) = (api.clone(), url.to_owned());
        async move {
            let path = format!("/v1/admin/tenants/{TENANT}/secrets");
            let a = api
                .call(&url, Method::POST, &path, Some(&api.admin), Some(&body))
                .await
                .expect("sent");
            assert_eq!(a.0, StatusCode::CREATED, "{}", describe(&a));
        }
    };
    use base64::Engine as _;
    let canary = base64::engine::general_purpose::STANDARD.encode(CANARY);
    create(json!({"secret_name": "payments/imported", "material_b64": canary})).await;
    let mut made = tokio::task::JoinSet::new();
    for i in 0..SECRETS - 2 {
        made.spawn(create(json!({"secret_name": format!("payments/s-{i:04}")})));
        if made.len() == 16
            && let Some(done) = made.join_next().await
        {
            done.expect("created");
        }
    }
    made.join_all().await;
    let clients = 32;
    let mut load = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (api, url) = (api.clone(), url.to_owned());
        load.spawn(async move {
            for i in 0..RECORDS / clients {
                let mut req = common::request("GET_HANDLE", false);
                req["idempotency_key"] = json!(format!("fill-{client}-{i}"));
                req["secret_name"] = json!(format!("payments/s-{:04}", i % (SECRETS - 2)));
                let a = api.kms(&url, &req).await.expect("sent");
                assert_eq!(a.0, StatusCode::OK, "{}", describe(&a));
            }
        });
    }
    load.join_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_headless_browser() {
    node_modules();
    let chromium = chromium();
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("kms");
    let init = common::init(&data);
    // A debug build verifies and simulates over 100,000 records far slower than a release
    // build does: the server gets longer than its default 10 s per request.
    let config = dir.path().join("kms.toml");
    std::fs::write(&config, "[server]\nrequest_timeout_ms = 300000\n").expect("config");
    let config = config.to_str().expect("UTF-8").to_owned();
    let node = Node::start_with(&data, None, &["--config", &config]);
    let api = Arc::new(Api::from_init(&init));
    api.provision(&node.url, &node.url).await;
    fill(&api, &node.url).await;
    let shots = std::env::var("SELENE_KMS_CONSOLE_SHOTS").ok();
    let ran = Command::new("node")
        .args(["--test", "tests/console.test.mjs"])
        .current_dir(ui_dir())
        .env("SELENE_KMS_URL", &node.url)
        .env("SELENE_KMS_ADMIN_TOKEN", &api.admin)
        .env("SELENE_KMS_TENANT", TENANT)
        .env("SELENE_KMS_CANARY", CANARY)
        .env("CHROMIUM", chromium)
        .envs(shots.map(|s| ("SELENE_KMS_SHOTS", s)))
        .output()
        .expect("node runs");
    assert!(
        ran.status.success(),
        "the browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    // The console's rotation and policy change are in the chain like any other.
    assert!(api.verify_audit(&node.url).await as usize > RECORDS);
}
