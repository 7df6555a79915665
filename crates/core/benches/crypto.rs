//! Crypto with handles in process, per operation on 1 KiB of data, on one core: the whole core
//! side of a request (parse the body, open the handle, check it, run the operation). The host
//! adds the material read and the audit record.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use selene_kms_core::crypto::{self, CryptoOp, CryptoRequest, Output};
use selene_kms_core::{Purpose, SecretMaterial, ServiceKeys, ServiceSecret, evaluate, issue};
use serde_json::json;
use std::hint::black_box;

mod fixtures;

use fixtures::{NOW, policy, request, snapshot};

const DATA: [u8; 1024] = [0x5a; 1024];

/// A request body with `handle` and the operation's `fields`.
fn body(handle: &str, fields: serde_json::Value) -> Vec<u8> {
    let mut body = json!({"tenant_id": "acme", "secret_handle": handle});
    for (k, v) in fields.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    body.to_string().into_bytes()
}

fn crypto(c: &mut Criterion) {
    use base64::Engine as _;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let keys = ServiceKeys::derive(&ServiceSecret::from_bytes([7; 32]));
    let policy = policy();
    let key = SecretMaterial::from_slice(&[0x42; 32]);
    let handle_for = |purpose: Purpose| {
        let mut secret = snapshot(&keys, 1);
        secret.purpose = purpose;
        let req = request("GET_HANDLE", json!({}));
        let grant = evaluate(&req, Some(&policy), Some(&secret), &keys, NOW).expect("allowed");
        let handle = issue(grant, Some(&secret), &keys)
            .expect("issued")
            .bundle
            .secret_handle
            .expect("a handle");
        (secret, handle)
    };
    let run = |op: CryptoOp, secret: &selene_kms_core::SecretSnapshot, body: &[u8]| {
        let req = CryptoRequest::from_json(op, body).expect("valid");
        let opened = req.open(&keys).expect("opens");
        let grant = crypto::check(&opened, Some(&policy), Some(secret), false, NOW, &req.input)
            .expect("usable");
        let used = crypto::KeyUse::of(&grant);
        crypto::perform(&key, &used, &req.input, [3; crypto::NONCE_LEN]).expect("runs")
    };
    let (mac_key, mac_h) = handle_for(Purpose::HmacSha256);
    let (sig_key, sig_h) = handle_for(Purpose::Ed25519);
    let (enc_key, enc_h) = handle_for(Purpose::Aes256Gcm);
    let data = json!({"data_b64": b64(&DATA)});
    let Output::Signature(signature) = run(CryptoOp::Sign, &sig_key, &body(&sig_h, data.clone()))
    else {
        panic!("a signature");
    };
    let Output::Ciphertext(ciphertext) = run(
        CryptoOp::Encrypt,
        &enc_key,
        &body(&enc_h, json!({"plaintext_b64": b64(&DATA)})),
    ) else {
        panic!("a ciphertext");
    };
    let cases = [
        ("mac", CryptoOp::Mac, &mac_key, body(&mac_h, data.clone())),
        ("sign", CryptoOp::Sign, &sig_key, body(&sig_h, data.clone())),
        (
            "verify",
            CryptoOp::Verify,
            &sig_key,
            body(
                &sig_h,
                json!({"data_b64": b64(&DATA), "signature_b64": b64(&signature)}),
            ),
        ),
        (
            "encrypt",
            CryptoOp::Encrypt,
            &enc_key,
            body(&enc_h, json!({"plaintext_b64": b64(&DATA)})),
        ),
        (
            "decrypt",
            CryptoOp::Decrypt,
            &enc_key,
            body(&enc_h, json!({"ciphertext": ciphertext})),
        ),
    ];
    let mut group = c.benchmark_group("crypto_1KiB");
    group.throughput(Throughput::Elements(1));
    for (name, op, secret, body) in &cases {
        group.bench_with_input(BenchmarkId::from_parameter(name), body, |b, body| {
            b.iter(|| black_box(run(*op, secret, black_box(body))));
        });
    }
    group.finish();
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    crypto(&mut c);
}

criterion_main!(benches);
