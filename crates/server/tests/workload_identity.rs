//! Workload certificates: on a server with a client CA, a certificate whose URI SAN is a
//! principal's SPIFFE id authenticates as that principal without a bearer token; a certificate
//! and a token of two different principals are refused together.

mod common;

use common::Server;
use rcgen::{CertificateParams, Issuer, KeyPair, SanType, string::Ia5String};
use reqwest::StatusCode;
use selene_kms_server::{ServeOptions, TlsOptions};
use serde_json::{Value, json};

const WORKLOAD: &str = "spiffe://example.org/ns/prod/sa/executor";

/// A client certificate and key (one PEM) for `uri`, signed by `issuer`.
fn client_identity(issuer: &Issuer<'_, KeyPair>, uri: &str) -> reqwest::Identity {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(uri).expect("uri"))];
    let cert = params.signed_by(&key, issuer).expect("client cert");
    reqwest::Identity::from_pem(format!("{}{}", cert.pem(), key.serialize_pem()).as_bytes())
        .expect("identity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_bound_to_a_principal_authenticates_as_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("key");
    let server_cert = CertificateParams::new(vec!["localhost".into()])
        .expect("params")
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let tls = TlsOptions {
        cert: write("server.pem", server_cert.pem()),
        key: write("server.key", server_key.serialize_pem()),
        client_ca: Some(write("ca.pem", ca.pem())),
    };
    let s = Server::start_with(ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls: Some(tls),
        ..ServeOptions::default()
    })
    .await;
    let url = s.url.replace("127.0.0.1", "localhost");
    let client = |uri: &str| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("ca"))
            .identity(client_identity(&issuer, uri))
            .build()
            .expect("client")
    };
    let workload = client(WORKLOAD);
    let stranger = client("spiffe://example.org/ns/prod/sa/unknown");
    let whoami = |http: &reqwest::Client, token: Option<&str>| {
        let mut req = http.get(format!("{url}/v1/auth/whoami"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req.send().await.expect("https");
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Before any principal is bound to it, the certificate alone is nobody.
    assert_eq!(whoami(&workload, None).await.0, StatusCode::UNAUTHORIZED);
    let created = stranger
        .post(format!("{url}/v1/admin/principals"))
        .bearer_auth(&s.admin)
        .json(
            &json!({"name": "executor-1", "role": "executor", "tenants": ["acme"],
                      "spiffe_id": WORKLOAD}),
        )
        .send()
        .await
        .expect("https");
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.expect("json");
    let own_token = created["token"].as_str().expect("token").to_owned();

    let (status, me) = whoami(&workload, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["name"], "executor-1");
    assert_eq!(me["principal_id"], created["principal_id"]);
    assert_eq!(me["role"], "executor");
    // The certificate and a token of the same principal agree; of another, they do not.
    assert_eq!(whoami(&workload, Some(&own_token)).await.0, StatusCode::OK);
    assert_eq!(
        whoami(&workload, Some(&s.admin)).await.0,
        StatusCode::UNAUTHORIZED
    );
    // A certificate bound to no principal still lets a bearer token speak for itself.
    assert_eq!(whoami(&stranger, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        whoami(&stranger, Some(&s.admin)).await.1["name"],
        "bootstrap-admin"
    );

    // Revoking the principal revokes the certificate's access at once.
    let id = created["principal_id"].as_str().expect("id");
    let revoked = stranger
        .delete(format!("{url}/v1/admin/principals/{id}"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .expect("https");
    assert_eq!(revoked.status(), StatusCode::OK);
    assert_eq!(whoami(&workload, None).await.0, StatusCode::UNAUTHORIZED);
    s.stop().await;
}
