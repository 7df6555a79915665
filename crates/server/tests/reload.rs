//! SIGHUP reloads the TLS certificate and key without dropping connections, and keeps the ones
//! in use when the new ones do not load. A test binary of its own: it signals its own process.

mod common;

use common::{Pki, Server, metric};
use reqwest::StatusCode;
use selene_kms_server::ServeOptions;

fn hang_up() {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

async fn healthz(client: &reqwest::Client, url: &str) -> reqwest::Result<StatusCode> {
    Ok(client.get(format!("{url}/healthz")).send().await?.status())
}

/// The `selene_kms_tls_reload…` counter, once it reaches `at_least` (the reload task counts a
/// reload once it is in effect).
async fn reloads(client: &reqwest::Client, url: &str, name: &str, at_least: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = client
            .get(format!("{url}/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text");
        let n = metric(&text, name).expect("the counter");
        if n >= at_least || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_tls_and_keeps_what_works() {
    let first = Pki::new();
    let tls = first.server(false);
    let s = Server::start_with(ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls: Some(tls.clone()),
        ..ServeOptions::default()
    })
    .await;
    let url = s.url.replace("127.0.0.1", "localhost");
    // A client with a connection open under the first certificate.
    let old = first.http(None);
    assert_eq!(healthz(&old, &url).await.expect("https"), StatusCode::OK);

    // A certificate from another CA in the same files, and a hang-up.
    let second = Pki::new();
    let (cert, key) = second.server_pem();
    std::fs::write(&tls.cert, cert).expect("cert");
    std::fs::write(&tls.key, key).expect("key");
    hang_up();
    let new = second.http(None);
    assert_eq!(
        reloads(&new, &url, "selene_kms_tls_reloads_total", 1).await,
        1
    );
    assert_eq!(
        healthz(&new, &url).await.expect("the new certificate"),
        StatusCode::OK
    );
    assert!(
        healthz(&first.http(None), &url).await.is_err(),
        "a new connection meets the new certificate"
    );
    assert_eq!(
        healthz(&old, &url)
            .await
            .expect("the connection opened before the reload"),
        StatusCode::OK,
        "open connections are kept"
    );

    // A certificate that does not load is refused and the one in use kept.
    std::fs::write(&tls.cert, "not a certificate").expect("cert");
    hang_up();
    assert_eq!(
        reloads(&new, &url, "selene_kms_tls_reload_failures_total", 1).await,
        1
    );
    assert_eq!(
        healthz(&second.http(None), &url)
            .await
            .expect("still served"),
        StatusCode::OK
    );
    s.stop().await;
}
