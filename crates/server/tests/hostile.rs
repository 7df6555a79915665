//! Hostile clients at the HTTP layer: slow headers, huge headers, many idle connections. The
//! server bounds what they can hold and keeps serving everyone else.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use selene_kms_server::ServeOptions;

fn addr(s: &Server) -> String {
    s.url.trim_start_matches("http://").to_owned()
}

/// A health check on a new connection (a pooled one may have been closed as idle).
async fn healthy_fresh(s: &Server) -> bool {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    client
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_and_others_are_served() {
    let s = Server::start_with(ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        header_read_timeout: Duration::from_millis(500),
        ..ServeOptions::default()
    })
    .await;
    let target = addr(&s);
    // The server's 500 ms header timeout is what is tested; the assertion asks who ended the
    // read, not how long it took, so a slow machine cannot fail it. The client's own timeout
    // only bounds a failing run.
    let slow = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(target).expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .expect("partial head");
        c.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        // The server closes the connection (or answers 408) instead of waiting forever.
        c.read(&mut buf).map(|_| ())
    });
    assert!(
        healthy_fresh(&s).await,
        "others are served while the slow client dawdles"
    );
    let ended = slow.await.expect("task");
    assert!(
        !matches!(&ended, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the server held the slow client until the client gave up: {ended:?}"
    );
    assert!(healthy_fresh(&s).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_are_refused_and_the_server_keeps_serving() {
    let s = Server::start().await;
    let target = addr(&s);
    let answer = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(target).expect("connect");
        let big = "a".repeat(256 * 1024);
        let _ = c.write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        );
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .expect("task");
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "a 256 KiB header was accepted"
    );
    assert!(s.healthy().await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_connections_do_not_stop_service() {
    let s = Server::start().await;
    let target = addr(&s);
    let idle: Vec<TcpStream> = (0..500)
        .filter_map(|_| TcpStream::connect(&target).ok())
        .collect();
    assert!(
        idle.len() >= 400,
        "could open only {} connections",
        idle.len()
    );
    for _ in 0..20 {
        assert!(s.healthy().await);
    }
    drop(idle);
    s.stop().await;
}
