//! The HTTP layer fed mutated requests: valid requests to every route, with bytes flipped,
//! deleted, inserted, repeated and cut, sent raw over TCP. Whatever arrives, the server answers
//! with a well-formed HTTP response that is never a 500 (or closes the connection), and it
//! keeps serving; afterwards the audit chain still verifies.
//!
//! Deterministic: the cases come from a fixed seed. `SELENE_KMS_HTTP_MUTATIONS=N` runs N cases
//! instead of the default (longer runs by hand).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// xorshift64*: a fixed, dependency-free source of cases.
struct Cases(u64);

impl Cases {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    /// One to four mutations of `seed`.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut out = seed.to_vec();
        for _ in 0..=self.below(4) {
            let at = self.below(out.len() + 1);
            match self.below(6) {
                0 if at < out.len() => out[at] ^= 1 << self.below(8),
                1 => {
                    let end = (at + 1 + self.below(16)).min(out.len());
                    out.drain(at.min(end)..end);
                }
                2 => {
                    let bytes: Vec<u8> = (0..=self.below(8)).map(|_| self.next() as u8).collect();
                    out.splice(at..at, bytes);
                }
                3 => {
                    let end = (at + 1 + self.below(64)).min(out.len());
                    let piece = out[at.min(end)..end].to_vec();
                    out.splice(at..at, piece);
                }
                4 => out.truncate(at),
                _ => {
                    // A structural byte where it hurts most: quotes, braces, CR/LF, UTF-8 lead bytes.
                    let pick = [b'"', b'{', b'}', b'[', b'\r', b'\n', b':', 0xC3, 0xFF, 0x00];
                    out.insert(at, pick[self.below(pick.len())]);
                }
            }
        }
        out
    }
}

fn raw_request(method: &str, path: &str, token: &str, body: Option<&Value>) -> Vec<u8> {
    let body = body.map(Value::to_string).unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: kms\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `bytes` on a new connection, closes the writing half and reads what comes back.
fn exchange(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let Ok(mut c) = TcpStream::connect(addr) else {
        return b"connect failed".to_vec();
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = c.write_all(bytes);
    let _ = c.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_never_get_a_500_and_the_server_keeps_serving() {
    let s = Server::start().await;
    s.provision("payments/stripe", None).await;
    let handle = s.kms(&request("GET_HANDLE", "seed-handle")).await.json()["secret_handle"].clone();
    let redeem = serde_json::json!({"tenant_id": TENANT, "secret_handle": handle});
    let secrets = format!("/v1/admin/tenants/{TENANT}/secrets");
    let seeds = [
        raw_request(
            "POST",
            "/v1/kms/requests",
            &s.os,
            Some(&request("GET_HANDLE", "m")),
        ),
        raw_request(
            "POST",
            "/v1/kms/requests",
            &s.os,
            Some(&admin_request("ROTATE", "m")),
        ),
        raw_request("POST", "/v1/material/redeem", &s.executor, Some(&redeem)),
        raw_request(
            "POST",
            &secrets,
            &s.admin,
            Some(&serde_json::json!({"secret_name": "m/x"})),
        ),
        raw_request("GET", &secrets, &s.admin, None),
        raw_request(
            "GET",
            &format!("/v1/audit/export?tenant_id={TENANT}"),
            &s.admin,
            None,
        ),
        raw_request("GET", "/metrics", "", None),
    ];
    let cases: usize = std::env::var("SELENE_KMS_HTTP_MUTATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5000);
    let addr = s.url.trim_start_matches("http://").to_owned();
    let findings = tokio::task::spawn_blocking(move || {
        let mut cases_from = Cases(0x5E1E_4E00_D15E_A5E5);
        let mut findings = Vec::new();
        for case in 0..cases {
            let seed = &seeds[case % seeds.len()];
            let sent = cases_from.mutate(seed);
            let answer = exchange(&addr, &sent);
            // A mutated version line (HTTP/1.0) is answered in that version.
            let head = String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned();
            let well_formed = answer.is_empty() || head.starts_with("HTTP/1.");
            if !well_formed || head.get(8..12) == Some(" 500") {
                findings.push(format!(
                    "case {case}: sent {:?}\n got {:?}",
                    String::from_utf8_lossy(&sent),
                    String::from_utf8_lossy(&answer)
                ));
            }
        }
        findings
    })
    .await
    .expect("cases ran");
    assert!(findings.is_empty(), "{}", findings.join("\n"));
    assert!(s.healthy().await, "the server keeps serving");
    let export = s
        .call(
            reqwest::Method::GET,
            &format!("/v1/audit/export?tenant_id={TENANT}"),
            &s.admin,
            None,
        )
        .await;
    let key = selene_kms_core::audit::public_key_hex(s.store.keys());
    let public = selene_kms_core::audit::parse_public_key(&key).expect("key");
    let report = selene_kms_core::export::verify_export(
        &String::from_utf8(export.body).expect("UTF-8"),
        &public,
        &Default::default(),
    )
    .expect("the chain verifies after the mutations");
    assert!(report.records > 2);
    s.stop().await;
}
