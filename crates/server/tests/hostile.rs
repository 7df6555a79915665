//! Hostile clients at the HTTP layer: slow headers, huge headers, many idle connections. The
//! server bounds what they can hold and keeps serving everyone else.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use selene_kms_server::{ConnectionLimits, ServeOptions};

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

/// Limits short enough for a test: silent connections are closed after 300 ms.
fn brief_limits(max_connections: usize) -> ServeOptions {
    ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        connections: ConnectionLimits {
            max_connections,
            first_request: Duration::from_millis(300),
            idle: Duration::from_millis(300),
        },
        ..ServeOptions::default()
    }
}

/// Whether the server ends `c` (end of stream or reset) rather than the client's 60 s guard,
/// which only bounds a failing run.
fn closed_by_server(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_whatever_their_protocol() {
    let s = Server::start_with(brief_limits(64)).await;
    let target = addr(&s);
    let ended = tokio::task::spawn_blocking(move || {
        // Connected, nothing sent; an h2c preface and nothing after it; one request, then
        // silence on the kept-alive connection.
        let mut silent = TcpStream::connect(&target).expect("connect");
        let mut h2c = TcpStream::connect(&target).expect("connect");
        h2c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .expect("preface");
        let mut kept = TcpStream::connect(&target).expect("connect");
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        [
            closed_by_server(&mut silent),
            closed_by_server(&mut h2c),
            closed_by_server(&mut kept),
        ]
    })
    .await
    .expect("task");
    assert_eq!(ended, [true, true, true], "silent, h2c, kept alive");
    assert!(healthy_fresh(&s).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_after_the_tls_handshake_is_closed() {
    let pki = Pki::new();
    let s = Server::start_with(ServeOptions {
        tls: Some(pki.server(false)),
        ..brief_limits(64)
    })
    .await;
    // A client that completes the handshake and then says nothing.
    let target = s.url.trim_start_matches("https://").to_owned();
    let config = pki.rustls_client();
    let ended = tokio::task::spawn_blocking(move || {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut conn = rustls::ClientConnection::new(config, name).expect("tls");
        let mut tcp = TcpStream::connect(target).expect("connect");
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).expect("handshake");
        }
        closed_by_server(&mut tcp)
    })
    .await
    .expect("task");
    assert!(ended, "the server held a silent TLS connection");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_accept() {
    let s = Server::start_with(ServeOptions {
        connections: ConnectionLimits {
            max_connections: 2,
            ..ConnectionLimits::default()
        },
        ..brief_limits(2)
    })
    .await;
    let target = addr(&s);
    let (held, refused) = tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(&target).expect("connect"))
            .collect();
        // Let the server accept both before the third arrives: a request on each answers.
        let mut held = held;
        for c in &mut held {
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("request");
            let mut buf = [0u8; 12];
            c.read_exact(&mut buf).expect("answer");
            assert_eq!(&buf, b"HTTP/1.1 200");
        }
        let mut third = TcpStream::connect(&target).expect("the kernel accepts");
        (held, closed_by_server(&mut third))
    })
    .await
    .expect("task");
    assert!(refused, "a third connection was kept");
    // Close the held connections and wait for the server's end of each: a place is given back
    // before the server closes its side, so then both are free.
    let closed = tokio::task::spawn_blocking(move || {
        held.into_iter().all(|mut c| {
            c.shutdown(std::net::Shutdown::Write).expect("shutdown");
            closed_by_server(&mut c)
        })
    })
    .await
    .expect("task");
    assert!(closed);
    assert!(
        healthy_fresh(&s).await,
        "served again once connections close"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_loses_its_place() {
    let s = Server::start_with(brief_limits(1)).await;
    let target = addr(&s);
    let cut = tokio::task::spawn_blocking(move || {
        let mut greedy = TcpStream::connect(&target).expect("connect");
        greedy
            .set_write_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let burst = "GET /v1/noop HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2048);
        // Pipelined requests, answers never read: the server's writes stall, then its reads,
        // then ours. Only the server closing the connection ends this loop early.
        loop {
            match greedy.write_all(burst.as_bytes()) {
                Ok(()) => {}
                Err(e) => {
                    return !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
                }
            }
        }
    })
    .await
    .expect("task");
    assert!(cut, "the server kept a client that never read");
    assert!(
        healthy_fresh(&s).await,
        "its place is free again (the limit is one connection)"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_of_bytes_that_never_makes_a_request_is_cut() {
    let s = Server::start_with(brief_limits(64)).await;
    let target = addr(&s);
    let cut = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(&target).expect("connect");
        // One byte of a request head at a time: progress for ever, a request never. The read
        // timeout paces the trickle; the 300 ms deadline is what ends it.
        c.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Trickle: ";
        let mut buf = [0u8; 64];
        for byte in head.iter().chain(std::iter::repeat(&b'a')).take(2000) {
            if c.write_all(&[*byte]).is_err() {
                return true;
            }
            match c.read(&mut buf) {
                Ok(0) => return true,
                Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return true;
                }
                _ => {}
            }
        }
        false
    })
    .await
    .expect("task");
    assert!(cut, "a connection that trickled bytes for 100 s was kept");
    assert!(healthy_fresh(&s).await);
    s.stop().await;
}
